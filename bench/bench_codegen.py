"""The Triton codegen audit (``tests/test_codegen.py``): every kernel compiled ahead of time for sm_80 and sm_90
at the benchmark shapes; ``./dev bench`` prints its table (registers, spills, vector widths, integer divisions,
SASS size) after the timing tables. No GPU needed."""

import pytest

from tests import codegen
from tests.conftest import INTERPRETED, triton_launcher


@pytest.mark.skipif(not INTERPRETED, reason="records launches through the Triton interpreter")
def test_codegen_audit(request):
    if request.config.getoption("benchmark_disable", False):  # `./dev test`: tests/test_codegen.py has compiled it
        pytest.skip("the audit runs in tests/test_codegen.py; ./dev bench prints it here")
    from tests.test_codegen import record_benchmark_launches

    triton_launcher("grid_mix")  # skips without Triton
    rows = codegen.compile_launches(record_benchmark_launches())
    codegen.LAST_ROWS[:] = rows
    assert rows and not any(r["spill_bytes"] for r in rows)
