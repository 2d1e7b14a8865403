"""Each change to the CPU training step alone, timed inside one process, variants taking turns.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/cpu_ablation.py \
        --json benchmarks/results/cpu-ablation.json --markdown benchmarks/results/cpu-ablation.md
    python benchmarks/cpu_ablation.py --batches 16 --rounds 2 --warm-steps 20 --block-s 0.02   # runs?

The tutorial model (784-784-256-128-128-256-784, ReLU, MSE, RMSProp tf1, float32) trains
on random data in [0, 1) under several variants of its CPU ops table. They differ only in
the RMSProp update and in where it runs:

* ``before``: the update as it was: one pass over the arena on Numba's threads
  (``parallel=True``), subnormal state kept;
* ``flush``: the same pass, flushing subnormal state to +0 (what ships);
* ``serial``: the update on one thread, subnormal state kept;
* ``flush+serial``: both;
* ``shipped``: the ops table as nanoae ships it (:func:`nanoae.ops.cpu.load`), which
  must time like the variant it equals;
* ``end, no guard`` and ``per layer, no guard``: an upper bound on updating each layer
  while its fresh gradient is still in cache. ``per layer`` runs the shipped update on
  each Dense layer's slice of the arena from the gradients-ready callback that backward
  makes after each layer, and none at the end; ``end`` is the shipped step. Both skip
  the finiteness guard, which a per-layer update could not honour (a layer updated
  before an earlier layer's gradient is known cannot be left unchanged when that
  gradient is not finite), so the pair shows what the idea would win if it could.

Why one process: on this shared VM whole processes fall into a mode about 1.5x slower
for their lifetime, which swamps a 5 % effect between processes. Here every variant is a
model of its own in the same process; first each trains ``--warm-steps`` steps (long
enough for dead units' mean squares to reach the subnormals, about 830 steps at
rho 0.9), then the variants take turns: each round times a block of steps of each
(``--block-s`` long), the order rotated every round. A variant's figure is the median
over rounds of its block's mean step time; its ratio to ``before`` is the median of the
same-round ratios. The subnormal count of each variant's mean square is recorded after
the warm-up and at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

try:
    from numba import prange
except ImportError:  # main() says Numba is needed; the module still imports
    prange = range

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import commit, cpu_model  # noqa: E402

from nanoae import presets  # noqa: E402
from nanoae.backend import get_backend  # noqa: E402
from nanoae.layers import Dense  # noqa: E402
from nanoae.ops import cpu as cpu_ops  # noqa: E402

TINY = np.float32(np.finfo(np.float32).tiny)


def _rmsprop_tf1(params, grads, mean_square, lr, complement, eps, tiny, flush):
    """RMSProp tf1 without momentum, as the shipped kernel computes it; ``flush`` False
    keeps subnormal mean squares (the update before the flush). ``prange`` is ``range``
    when compiled without ``parallel``, and Numba lifts the loop-invariant branch."""
    for k in prange(params.shape[0]):
        g = grads[k]
        ms = mean_square[k] + (g * g - mean_square[k]) * complement
        if flush and abs(ms) < tiny:
            ms = ms - ms
        mean_square[k] = ms
        params[k] = params[k] - lr * g / math.sqrt(ms + eps)


def _kernels():
    """(parallel, flush) -> an update(params, grads, mean_square, lr, complement, eps, tiny):
    the function above compiled for Numba's threads and for one, each flushing or not."""
    from numba import njit  # noqa: PLC0415

    compiled = {parallel: njit(error_model="numpy", nogil=True, parallel=parallel)(_rmsprop_tf1) for parallel in (True, False)}

    def bound(parallel, flush):
        kernel = compiled[parallel]
        return lambda params, grads, mean_square, lr, complement, eps, tiny: kernel(
            params, grads, mean_square, lr, complement, eps, tiny, flush
        )

    return {(parallel, flush): bound(parallel, flush) for parallel in (True, False) for flush in (True, False)}


class _VariantOps(cpu_ops.CpuOps):
    """The Numba CPU table with its RMSProp tf1 update replaced by one of the kernels above."""

    def __init__(self, kernel) -> None:
        super().__init__(cpu_ops.load("numba").kernels)
        self._kernel = kernel

    def rmsprop_update(self, params, grads, mean_square, momentum_buffer, lr, rho, eps, momentum, flavor, workspace=None):
        assert flavor == "tf1" and not momentum
        dtype = params.dtype.type
        self._kernel(params, grads, mean_square, dtype(lr), dtype(1 - rho), dtype(eps), TINY)


def _per_layer(model) -> None:
    """Update each Dense layer's slice of the arena from backward's gradients-ready callback."""
    arena, optimizer, ops = model.arena, model.optimizer, model.backend.ops
    start_of = arena.values.ctypes.data
    itemsize = arena.values.itemsize
    slices = {}
    for module in model.modules():
        if isinstance(module, Dense):
            first = (module.weights.ctypes.data - start_of) // itemsize
            last = (module.bias.ctypes.data - start_of) // itemsize + module.bias.size
            slices[id(module)] = slice(first, last)
    mean_square = optimizer.state["mean_square"]
    rho = float(np.float32(optimizer.rho))

    def ready(module):
        part = slices.get(id(module))
        if part is not None:
            ops.rmsprop_update(arena.values[part], arena.grads[part], mean_square[part], None,
                               optimizer.lr, rho, optimizer.eps, 0.0, "tf1", optimizer._workspace)  # fmt: skip

    for module in model.modules():
        module._gradients_ready = ready
    optimizer.step = lambda: None


class _Unguarded(cpu_ops.CpuOps):
    """The shipped Numba table whose finiteness guard always passes."""

    def __init__(self) -> None:
        super().__init__(cpu_ops.load("numba").kernels)

    def step_is_finite(self, loss, grads, workspace=None) -> bool:
        return True


def _variants(kernels):
    return {
        "before": _VariantOps(kernels[(True, False)]),
        "flush": _VariantOps(kernels[(True, True)]),
        "serial": _VariantOps(kernels[(False, False)]),
        "flush+serial": _VariantOps(kernels[(False, True)]),
        "shipped": cpu_ops.load("numba"),
        "end, no guard": _Unguarded(),
        "per layer, no guard": _Unguarded(),
    }


def _subnormals(model) -> int:
    ms = model.optimizer.state["mean_square"]
    return int(np.count_nonzero((ms != 0) & (np.abs(ms) < TINY)))


def measure(batch: int, rounds: int, warm_steps: int, block_s: float, seed: int = 0) -> dict:
    base = get_backend("numpy", fast=True, kernels="numba")
    rng = np.random.default_rng(seed)
    data = rng.random((max(8 * batch, 4096), 784), dtype=np.float32)
    batches = [rng.integers(0, data.shape[0], batch) for _ in range(16)]
    runs = {}
    for name, ops in _variants(_kernels()).items():
        model = presets.tutorial(seed=0, backend=replace(base, ops=ops))
        if name == "per layer, no guard":
            _per_layer(model)
        step = ops.compile_train_step(model, data, None, {})
        for index in range(warm_steps):
            step(batches[index % len(batches)])
        runs[name] = {"model": model, "step": step, "subnormals_after_warmup": _subnormals(model), "times": []}
    names = list(runs)
    steps_per_block = _steps_per_block(runs[names[0]]["step"], batches, block_s)
    for round_index in range(rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            step = runs[name]["step"]
            start = time.perf_counter()
            for index in range(steps_per_block):
                step(batches[index % len(batches)])
            runs[name]["times"].append((time.perf_counter() - start) / steps_per_block)
    before = runs["before"]["times"]
    end = runs["end, no guard"]["times"]
    result = {"batch": batch, "rounds": rounds, "warm_steps": warm_steps, "steps_per_block": steps_per_block, "variants": {}}
    for name, run in runs.items():
        reference_times = end if name == "per layer, no guard" else before
        result["variants"][name] = {
            "step_ms": 1e3 * statistics.median(run["times"]),
            "quartiles_ms": [1e3 * q for q in np.percentile(run["times"], [25, 75])],
            "speedup": statistics.median(r / t for r, t in zip(reference_times, run["times"])),
            "against": "end, no guard" if name == "per layer, no guard" else "before",
            "subnormals_after_warmup": run["subnormals_after_warmup"],
            "subnormals_at_end": _subnormals(run["model"]),
        }
    return result


def _steps_per_block(step, batches, block_s: float) -> int:
    start = time.perf_counter()
    for index in range(5):
        step(batches[index % len(batches)])
    per_step = (time.perf_counter() - start) / 5
    return max(3, round(block_s / per_step))


def markdown(results: list[dict], header: str) -> str:
    lines = [header, "", "| variant | " + " | ".join(f"batch {r['batch']}: ms/step (x before)" for r in results) + " |",
             "| --- |" + " ---: |" * len(results)]  # fmt: skip
    for name in results[0]["variants"]:
        cells = []
        for result in results:
            entry = result["variants"][name]
            against = "" if entry["against"] == "before" else " of end"
            cells.append(f"{entry['step_ms']:.3f} ({entry['speedup']:.3f}x{against})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Subnormal mean squares after the warm-up / at the end (of 1,100,320): " + "; ".join(
        f"batch {r['batch']}: " + ", ".join(f"{n} {v['subnormals_after_warmup']:,}/{v['subnormals_at_end']:,}" for n, v in r["variants"].items())
        for r in results))  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warm-steps", type=int, default=1500)
    parser.add_argument("--block-s", type=float, default=0.3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    if not cpu_ops.numba_available()[0]:
        print("needs Numba (pip install 'nanoae[fast]')", file=sys.stderr)
        return 2
    results = []
    for batch in args.batches:
        results.append(measure(batch, args.rounds, args.warm_steps, args.block_s))
        print(json.dumps(results[-1]), flush=True)
    header = (f"Measured at commit {commit()} on {cpu_model()}: one process, variants taking turns, "
              f"{args.rounds} rounds of {args.block_s} s blocks after {args.warm_steps} warm-up steps each; medians.")  # fmt: skip
    text = markdown(results, header)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"commit": commit(), "cpu": cpu_model(), "results": results}, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
