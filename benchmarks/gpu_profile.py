"""Where a nanoae-CuPy training step's time goes, on the tutorial model (GPU only).

    python benchmarks/gpu_profile.py [--batch 256 --batch 8192] [--steps 200]

For each batch size: microseconds per step with the captured CUDA graph, with eager
launches, and with the graph but without cuBLASLt (no fused epilogues, cuBLAS's default
algorithm: what the epilogues and the per-shape choice buy), wall clock, synchronized;
the same step's 17 matmuls alone (captured as a graph, so launch cost is out); the
achieved float32 TFLOP/s; and the cuBLASLt plans kept, with the algorithm timed fastest. The difference between
the full step and its matmuls is the elementwise work plus per-kernel overhead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from nanoae import presets  # noqa: E402 (after the path above)
from nanoae.backend import get_backend  # noqa: E402
from nanoae.benchmark.flops import TUTORIAL_WIDTHS, layer_shapes, train_step_flops  # noqa: E402
from nanoae.ops.gpu import GpuOps  # noqa: E402


def _time(run, steps: int, sync) -> float:
    for _ in range(5):
        run()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        run()
    sync()
    return (time.perf_counter() - start) / steps


def profile(batch: int, steps: int) -> dict:
    import cupy  # noqa: PLC0415 (optional: this script needs a GPU)

    backend = get_backend("cupy")
    sync = cupy.cuda.Device().synchronize
    data = cupy.asarray(np.random.default_rng(0).random((batch, 784), dtype=np.float32))
    rows = cupy.arange(batch)
    result = {
        "batch": batch,
        "blas": "cuBLAS direct" if backend.ops._blas is not None else f"cupy.matmul ({backend.ops.blas_error})",
        "cublaslt": "on" if backend.ops._lt is not None else f"off ({backend.ops.lt_error or 'NANOAE_GPU_CUBLASLT=0'})",
    }
    # The same step without cuBLASLt: bias, activation and bias gradient as nanoae's own
    # kernels, every product through cublasGemmEx's default algorithm.
    unfused = dataclasses.replace(backend, ops=GpuOps(cupy, cublaslt=False))
    for label, graphs, on in (("graph", True, backend), ("eager", False, backend), ("graph_unfused", True, unfused)):
        model = presets.tutorial(seed=0, backend=on)
        run = on.ops.compile_train_step(model, data, None, {})
        run.enabled = run.enabled and graphs
        seconds = _time(lambda: run(rows), steps, sync)
        result[f"{label}_us"] = seconds * 1e6
        if graphs:
            result[f"{label}_graph_used"], result[f"{label}_why_not"] = run.graph_used, run.why_not
    verdicts = backend.ops._lt_verdicts
    result["cublaslt_plans_kept"] = sum(1 for kept in verdicts.values() if kept)
    result["cublaslt_plans_dropped"] = sum(1 for kept in verdicts.values() if not kept)
    if backend.ops._lt is not None:
        result["cublaslt_algorithms"] = [
            {"mnk": (key[0].m, key[0].n, key[0].k), "epilogue": key[0].epilogue, **backend.ops._lt.describe(key)}
            for key in verdicts
        ]
    # The step's matmuls alone: forward x W, backward x^T dz and dz W^T (no dx for layer 1).
    shapes = layer_shapes(TUTORIAL_WIDTHS)
    xs = [cupy.random.random((batch, fan_in), dtype=cupy.float32) for fan_in, _ in shapes]
    ws = [cupy.random.random((fan_in, fan_out), dtype=cupy.float32) for fan_in, fan_out in shapes]
    ys = [cupy.empty((batch, fan_out), dtype=cupy.float32) for _, fan_out in shapes]
    dws = [cupy.empty_like(w) for w in ws]
    dxs = [cupy.empty_like(x) for x in xs]

    matmul = backend.ops._matmul  # the step's own path: cuBLASLt where checked, else cuBLAS

    def matmuls():
        for index, (x, w, y, dw, dx) in enumerate(zip(xs, ws, ys, dws, dxs)):
            matmul(x, w, y)
            matmul(x.T, y, dw)
            if index:
                matmul(y, w.T, dx)

    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        matmuls()
        stream.synchronize()
        stream.begin_capture()
        matmuls()
        graph = stream.end_capture()
    with stream:
        result["matmuls_us"] = _time(lambda: graph.launch(stream), steps, stream.synchronize) * 1e6
    flops = train_step_flops(batch)
    for key in ("graph", "eager", "graph_unfused", "matmuls"):
        result[f"{key}_tflops"] = flops / (result[f"{key}_us"] * 1e-6) / 1e12
    result["matmul_share_of_graph_step"] = result["matmuls_us"] / result["graph_us"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, action="append")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    for batch in args.batch or [256, 1024, 8192]:
        print("NANOAE-PROFILE " + json.dumps(profile(batch, args.steps if batch < 8192 else max(20, args.steps // 4))), flush=True)


if __name__ == "__main__":
    main()
