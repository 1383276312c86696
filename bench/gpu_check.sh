#!/usr/bin/env bash
# The GPU check: one run on a fresh CUDA machine without network, at most GPU_CHECK_SECONDS (default 285 s).
#
#   bash bench/gpu_check.sh --fetch-wheels   # beforehand, on a machine with network: the missing wheels -> .whl/
#   bash bench/gpu_check.sh                  # on the CUDA machine (the repository with .whl/ beside it)
#
# Order (a timeout loses nothing: every result is written to $OUT as it is produced, and the deadline sends
# SIGINT, which the Python steps catch, never SIGTERM):
#   1. install .whl/*.whl into the interpreter (not a --target dir: a test replaces PYTHONPATH), then fail fast
#      unless `import deap.tools` works; install patchmix without compiling C++ (CUDA runs the Triton kernels)
#   2. benchmarks first (bench/gpu_bench.py): grid_mix, clone and a preallocated copy at the key shapes, the
#      loss against its clone floor, a ResNet-32 training step under torch.cuda.set_sync_debug_mode
#      and the guided search's forward passes (the interaction build at K = 100, one exact-fitness generation)
#   3. the tests that exercise CUDA, Triton, graph capture and compile (-k), with pytest-xdist
#   4. the CLI on CUDA: `patchmix run` (digits, one seed, 2 epochs) and `patchmix train --method mix --amp`
#   5. eager / compiled / Kornia providers, only if time remains (GPU_CHECK_EXTRAS=0: never)
#   6. the targets table (device time, % of copy, syncs per step)
# Writes $OUT (default ./gpu-out): gpu_results.jsonl, bench.log, tests.log, tests.xml, cli.log, summary.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ "${1:-}" = "--fetch-wheels" ]; then
  exec "$PY" bench/gpu_wheels.py fetch --dir .whl
fi

DEADLINE=${GPU_CHECK_SECONDS:-285}
start=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - start) )); }
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=1 TRITON_DEFAULT_FP_FUSION=1
log() { echo "[gpu_check $(( $(date +%s) - start ))s] $*" | tee -a "$OUT/summary.txt"; }
# run SECONDS CMD...: the command with the time left (at most SECONDS), interrupted by SIGINT at the deadline
run() {
  local cap=$1; shift
  local t; t=$(left); [ "$cap" -lt "$t" ] && t=$cap
  if [ "$t" -le 5 ]; then log "skipped (deadline): $*"; return 124; fi
  timeout -s INT -k 10 "$t" "$@"
}

log "start: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"
if ls .whl/*.whl > /dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade .whl/*.whl 2>&1 | tail -3
fi
"$PY" -c "import deap.tools" || { log "FAIL: deap is not importable; run bash bench/gpu_check.sh --fetch-wheels where there is network and carry .whl"; exit 1; }
PATCHMIX_NO_EXTENSION=1 "$PY" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3
"$PY" -c "import torch, triton, patchmix; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name()); print(patchmix.backends()['ops'])" 2>&1 | tee -a "$OUT/summary.txt" | tail -2 || exit 1
log "installed"

log "benchmarks"
run 150 "$PY" bench/gpu_bench.py --out "$OUT" 2>&1 | tee "$OUT/bench.log" | grep -v '^{' | tail -20
log "benchmarks done"

log "CUDA tests"
run 120 "$PY" -m pytest -q -p no:cacheprovider -n 8 -rfE --junitxml="$OUT/tests.xml" \
  -k "cuda or triton or reduce_overhead or pinned" \
  tests/test_grid_mix.py tests/test_patchmix_cross_entropy.py tests/test_population_fitness.py \
  tests/test_checks.py tests/test_augment.py tests/test_losses.py 2>&1 | tee "$OUT/tests.log" | tail -15
log "tests done"

# the whole program on CUDA: the search (population_fitness), five methods, the loader's mixing, evaluation
log "the CLI on CUDA"
run 50 "$PY" -m patchmix run --device cuda --seeds 0 --epochs 2 --out /tmp/pm-run --quiet 2>&1 | tee "$OUT/cli.log" | tail -9
run 30 "$PY" -m patchmix train --method mix --device cuda --amp --epochs 2 --seeds 0 --out /tmp/pm-mix --quiet 2>&1 | tee -a "$OUT/cli.log" | tail -3
log "CLI done"

if [ "${GPU_CHECK_EXTRAS:-1}" = 1 ] && [ "$(left)" -gt 60 ]; then
  log "extra providers (eager, compiled, Kornia)"
  run 90 "$PY" bench/gpu_bench.py --out "$OUT" --extras 2>&1 | tee -a "$OUT/bench.log" | grep -v '^{' | tail -5
fi

"$PY" bench/gpu_bench.py --summary --out "$OUT" | tee -a "$OUT/summary.txt"
log "total $(( $(date +%s) - start )) s"
