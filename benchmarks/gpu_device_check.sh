#!/usr/bin/env bash
# The GPU checks in one prepared script, for a session that is lent a GPU machine.
#
# Here (this machine), once:  mkdir -p .device-data && cp ../shared/data/mnist/*.gz .device-data/
#                             echo /.device-data/ >> .git/info/exclude
# Then run this script on the device with `.device-data` carried (about 5.5 minutes in all
# when nothing hangs). Steps, each under its own `timeout` so that one failing step hides
# nothing of the others; those limits add up to 240 + 90 + 120 + 330 = 780 s, over one
# call's 600 s, so where a step may run to its limit split the run in two calls:
# GPU_STEPS="tests profile precision", then GPU_STEPS=bench.
#   1. versions (nvidia-smi, numpy, cupy, torch, jax);
#   2. the test suite's GPU part: every backend_name test's cupy case, tests/test_gpu.py
#      (fused kernels against the reference, the CUDA graph against eager launches,
#      TF32, checkpoints, the tutorial on MNIST), float64 gradient checks; no -x, so
#      every failure shows;
#   3. a step profile (graph vs eager vs the graph without cuBLASLt vs the matmuls alone,
#      and the cuBLASLt plans kept with their timed algorithms), benchmarks/gpu_profile.py;
#   3b. float32, TF32 and bfloat16: the tutorial's 1000-step loss and test MSE in each,
#      benchmarks/gpu_precision.py;
#   4. the GPU benchmark: nanoae-cupy vs PyTorch CUDA eager and CUDA graphs vs JAX jit,
#      batches 256, 1024, 8192, against a cuBLAS float32 matmul measured in the same run.
# Logs and results go under $OUT (or ./gpu-results without it); at most 8 files.
# Knobs: GPU_STEPS="tests profile precision bench" (which steps), BENCH_ROUNDS (default 3),
#        PYTEST_K (the -k expression), PYTEST_WORKERS (default 8).
set -uo pipefail
OUT="${OUT:-gpu-results}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NANOAE_DATA="$PWD/.device-data" PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
STEPS="${GPU_STEPS:-tests profile precision bench}"
PYTHON="${PYTHON:-python3}"
started=$(date +%s)
stamp() { echo "[$(( $(date +%s) - started )) s] $*"; }

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PYTHON" - <<'PY'
import importlib
for name in ("numpy", "cupy", "torch", "jax", "numba", "hypothesis", "pytest", "xdist"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as exc:
        print(name, "missing:", exc)
try:
    import tensorflow  # noqa: F401
    print("tensorflow", tensorflow.__version__)
except Exception as exc:
    print("tensorflow missing:", type(exc).__name__)
PY
} 2>&1 | tee "$OUT/versions.txt"

if [[ " $STEPS " == *" tests "* ]]; then
    stamp "tests"
    workers=()
    if "$PYTHON" -c "import xdist" 2>/dev/null; then workers=(-n "${PYTEST_WORKERS:-8}"); fi
    if "$PYTHON" -c "import pytest_timeout" 2>/dev/null; then workers+=(--timeout=150); fi
    timeout 240 "$PYTHON" -m pytest tests -p no:cacheprovider -q -rfEs --tb=short "${workers[@]}" \
        --ignore=tests/oracles -k "${PYTEST_K:-cupy or gpu}" 2>&1 | tee "$OUT/pytest.txt" | tail -40
    echo "pytest exit: ${PIPESTATUS[0]}" | tee -a "$OUT/pytest.txt"
fi

if [[ " $STEPS " == *" profile "* ]]; then
    stamp "profile"
    timeout 90 "$PYTHON" benchmarks/gpu_profile.py 2>&1 | tee "$OUT/profile.txt"
    echo "profile exit: ${PIPESTATUS[0]}"
fi

if [[ " $STEPS " == *" precision "* ]]; then
    stamp "precision"
    timeout 120 "$PYTHON" benchmarks/gpu_precision.py --data "$NANOAE_DATA" 2>&1 | tee "$OUT/precision.txt"
    echo "precision exit: ${PIPESTATUS[0]}"
fi

if [[ " $STEPS " == *" bench "* ]]; then
    stamp "bench"
    timeout 330 "$PYTHON" -m nanoae bench --gpu --rounds "${BENCH_ROUNDS:-3}" --mode train \
        --json "$OUT/gpu-bench.json" --markdown "$OUT/gpu-bench.md" 2>&1 | tee "$OUT/bench.txt" | tail -25
    echo "bench exit: ${PIPESTATUS[0]}"
fi

stamp "summary"
grep -E "^(FAILED|ERROR)" "$OUT/pytest.txt" 2>/dev/null | cut -c1-220 | head -40
grep -E "passed|failed|error" "$OUT/pytest.txt" 2>/dev/null | tail -2
grep -E "NANOAE-PROFILE|Error" "$OUT/profile.txt" 2>/dev/null
grep -E "NANOAE-PRECISION|Error" "$OUT/precision.txt" 2>/dev/null
cat "$OUT/gpu-bench.md" 2>/dev/null
stamp "done"
