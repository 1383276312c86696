#!/usr/bin/env bash
# The GPU check: build with CUDA, run the CUDA tests, print the benchmark ratio tables, in under 8 minutes.
#
# On the lent GPU machine (torch with CUDA already installed, no network):
#   bash bench/gpu_check.sh               # wheels for missing packages are read from .whl/ if present
# On a machine with network, beforehand, to fill .whl/ (deap is required; kornia is the optional peer):
#   bash bench/gpu_check.sh --fetch-wheels
# Writes tests.log, bench.log and bench.json under $OUT (default: ./gpu-out).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ "${1:-}" = "--fetch-wheels" ]; then
  mkdir -p .whl
  exec "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl deap==1.4.4 kornia==0.9.0 kornia-rs==0.2.0
fi

OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
start=$(date +%s)
if ls .whl/*.whl > /dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"

echo "== build (no deps, no network) =="
MAX_JOBS=16 "$PY" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -5
"$PY" -c "import patchmix, json; print(json.dumps(patchmix.backends()['ops'], indent=1))" || exit 1
echo "build: $(( $(date +%s) - start )) s"

echo "== C++ errors must reach Python as exceptions (torch 2.11 + Triton 3.6 was seen to segfault) =="
# Each probe runs in its own process so that one crash does not hide the others. If torch's own error
# (view) also crashes, the fault is in the environment (c10's backtrace capture, cf. pytorch issue 117645).
probe() {  # probe IMPORTS STATEMENT: prints the exception type the statement raised, or the crash
  "$PY" -c "
$1
try:
    $2
    print('no error')
except Exception as e:
    print(type(e).__name__)
" > /tmp/probe.out 2>&1
  echo "probe [$1] [${2:0:50}]: rc=$? $(tail -1 /tmp/probe.out)"
}
probe "import torch" "torch.empty(2).view(3)"
probe "import torch, patchmix" "torch.empty(2).view(3)"
probe "import torch, patchmix" "torch.ops.patchmix.grid_mix(torch.rand(3, 2, 8, 8), torch.ones(3, 2, 2, dtype=torch.bool), None, torch.tensor([0, 3, 1]))"

echo "== CUDA tests =="
# xdist: a crashing test is reported as failed and the other tests still run
timeout 240 "$PY" -m pytest -q -p no:cacheprovider -n 8 -rfE \
  tests/test_grid_mix.py tests/test_checks.py $(ls tests/test_patchmix_cross_entropy.py tests/test_population_fitness.py 2>/dev/null) \
  2>&1 | tee "$OUT/tests.log" | grep -E "passed|failed|FAILED|ERROR|crashed|Error" | tail -30
echo "tests: $(( $(date +%s) - start )) s"

echo "== benchmarks (CUDA rows) =="
timeout 220 "$PY" -m pytest -q -p no:cacheprovider bench/bench_grid_mix.py \
  $(ls bench/bench_patchmix_cross_entropy.py 2>/dev/null) -k cuda \
  --benchmark-enable --benchmark-min-rounds=10 --benchmark-max-time=0.3 --benchmark-columns=median,rounds \
  --benchmark-json="$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" | sed -n '/ratios measured/,/x eager: speed-up/p'
echo "total: $(( $(date +%s) - start )) s"
