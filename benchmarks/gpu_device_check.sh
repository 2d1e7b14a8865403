#!/usr/bin/env bash
# The GPU checks in one prepared script, for a session that is lent a GPU machine.
#
# Here (this machine), once:  mkdir -p .device-data && cp ../shared/data/mnist/*.gz .device-data/
#                             echo /.device-data/ >> .git/info/exclude
# Then run this script on the device with `.device-data` carried, e.g. a 540 s timeout.
# It writes its logs and results under $OUT (or ./gpu-results without it).
set -uo pipefail
OUT="${OUT:-gpu-results}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NANOAE_DATA="$PWD/.device-data"
python3 - <<'PY' 2>&1 | tee "$OUT/versions.txt"
import importlib
for name in ("numpy", "cupy", "torch", "jax", "numba"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as exc:
        print(name, "missing:", exc)
PY
# nanoae itself needs only NumPy; install it without touching the device's packages.
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
# 1. The test suite: every backend_name test gets a cupy case, plus tests/test_gpu.py.
timeout 300 python3 -m pytest tests -q -x -p no:cacheprovider --ignore=tests/oracles \
    -k "cupy or gpu or fast_path or gradcheck" 2>&1 | tee "$OUT/pytest.txt" | tail -5
# 2. The GPU benchmark: nanoae-cupy vs torch CUDA eager / graphs vs JAX jit, cuBLAS peak.
timeout 200 python3 -m nanoae bench --gpu --rounds 3 --mode train \
    --json "$OUT/gpu-bench.json" --markdown "$OUT/gpu-bench.md" 2>&1 | tee "$OUT/bench.txt" | tail -12
