"""Shared test set-up.

* Without a GPU the Triton launchers run under ``TRITON_INTERPRET=1`` on CPU tensors; the variable must be
  set before ``triton.jit`` decorates the kernels, i.e. before ``patchmix`` is imported.
* ``triton_launcher(op)`` returns ``patchmix._kernels.<op>.<op>_cuda`` or skips when Triton is missing.
* ``devices()``: devices whose kernels the tests call through the dispatcher (``cpu``, plus ``cuda``).
* ``CodeRunningPayload``: an object whose unpickling runs code (it creates a marker file), for the tests that
  show patchmix never unpickles a file it reads.
"""

import importlib
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import patchmix  # noqa: E402
from patchmix.ops import _registry  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def triton_launcher(op: str):
    """The Triton host launcher of ``op`` (runs on CPU tensors when interpreted)."""
    if not _registry.HAS_TRITON:
        pytest.skip("Triton is not installed")
    module = importlib.import_module(f"patchmix._kernels.{op}")
    return getattr(module, f"{op}_cuda")


def triton_device() -> str:
    """Where Triton launchers are tested: CUDA when present, else the CPU through the interpreter."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny
    convolutions run faster on one thread, and far faster on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_unreported_device_errors():
    """A kernel that finds bad data sets its device's status word (``patchmix.ops.errors``); a test that provokes
    that must read it (``check_errors``), else the error surfaces in whichever test runs next in the process (seen
    on an H200: a label test's error failed a CUDA-graph test)."""
    yield
    from patchmix.ops import errors

    try:
        errors.check_errors()
    except ValueError as e:
        pytest.fail(f"the test left a device error unreported: {e}")


def poison_like(t: torch.Tensor) -> torch.Tensor:
    """Fill ``t`` with a value no kernel writes (NaN for floats, the max for integers)."""
    if t.is_floating_point():
        return t.fill_(float("nan"))
    if t.dtype == torch.bool:
        return t
    return t.fill_(torch.iinfo(t.dtype).max)


class CodeRunningPayload:
    """Unpickling this object calls ``open(marker, "w")``: the marker file appears iff the loader ran code
    named by the file (what a malicious pickle would do with ``os.system`` instead)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


__all__ = ["INTERPRETED", "CodeRunningPayload", "devices", "patchmix", "poison_like", "triton_device",
           "triton_launcher"]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The codegen audit's table, when ``tests/test_codegen.py`` ran in this session."""
    from tests import codegen

    if codegen.LAST_ROWS:
        terminalreporter.write_sep("=", "patchmix: Triton codegen audit (AOT, no GPU)")
        terminalreporter.write_line(codegen.table(codegen.LAST_ROWS))
