"""Where a training step's time goes: matmuls, elementwise kernels, the optimizer.

    python -m nanoae.benchmark.profile --batch 256 [--reference] [--kernels numpy] [--warm-steps 1500]

Three measurements on the tutorial model, each a median over repeats, taken in turn
in each of several rounds (``--rounds``) and reported as medians over the rounds:

* the whole step (``model._train_step``);
* the step's 17 matmuls alone, same shapes, into preallocated outputs: the floor any
  implementation on this BLAS pays;
* each ops-table function, timed through a thin wrapper (the optimizer's one pass,
  the fused bias+activation, slope+bias-gradient and loss kernels are inside these).

What the step costs beyond the matmul floor is what fusion and buffer reuse can
still win; the report prints both and their ratio. A fourth number, the float32 peak
of a 2048^3 product in the same process, shows the ceiling: the matmul floor's share
of that peak is the most any implementation of this step can reach on this BLAS.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from dataclasses import replace

import numpy as np

from nanoae import presets
from nanoae.backend import get_backend
from nanoae.benchmark.competitors import matmul_peak
from nanoae.benchmark.flops import TUTORIAL_WIDTHS, layer_shapes, train_step_flops
from nanoae.params import aligned_empty


def _median_time(function, repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _random_aligned(rng, shape):
    array = aligned_empty(shape, np.float32)
    array[...] = rng.random(shape, dtype=np.float32)
    return array


def _matmul_jobs(batch: int):
    """The step's matmuls (forward, dW, dx but the first layer's) on random operands,
    every array on a 64-byte boundary as the step's arena and workspaces are."""
    rng = np.random.default_rng(0)
    jobs = []
    for index, (fan_in, fan_out) in enumerate(layer_shapes(TUTORIAL_WIDTHS)):
        x = _random_aligned(rng, (batch, fan_in))
        w = _random_aligned(rng, (fan_in, fan_out))
        dz = _random_aligned(rng, (batch, fan_out))
        jobs.append((x, w, aligned_empty((batch, fan_out), np.float32)))  # forward
        jobs.append((x.T, dz, aligned_empty((fan_in, fan_out), np.float32)))  # dW
        if index:
            jobs.append((dz, w.T, aligned_empty((batch, fan_in), np.float32)))  # dx

    def run():
        for a, b, out in jobs:
            np.matmul(a, b, out=out)

    return run


class _TimedOps:
    """Forwards to an ops table, adding up the time spent in each function."""

    def __init__(self, ops) -> None:
        self._ops = ops
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)

    def __getattr__(self, name):
        target = getattr(self._ops, name)
        if not callable(target) or name == "compile_train_step":
            return target

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return target(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
                self.calls[name] += 1

        return timed


def _timed_model(backend, timed):
    """A tutorial model whose layers, loss and arena call ``timed`` instead of the ops table."""
    model = presets.tutorial(seed=0, backend=backend)
    object.__setattr__(model, "backend", replace(backend, ops=timed))
    for module in model.modules():
        module.backend = model.backend
    model.loss.backend = model.backend
    model.arena.backend = model.backend
    return model


def profile(batch: int = 256, fast: bool = True, kernels: str = "auto", steps: int = 30, rounds: int = 5, warm_steps: int = 0) -> dict:
    """Medians over ``rounds`` rounds; each round measures, one after the other, the whole
    step, the step through the timed ops table, the matmul floor and the 2048^3 peak, so
    that a slow phase of a shared machine lands on all four rather than on one.

    ``warm_steps`` trains both models that many steps first (on 8 random batches in turn),
    so that the optimizer state is what a long run has: dead ReLU units' mean squares
    reach zero (subnormal, before nanoae flushed them) after about 830 steps at rho 0.9.
    The count of subnormal state entries at the start is in the result."""
    backend = get_backend("numpy", fast=fast, kernels=kernels)
    model = presets.tutorial(seed=0, backend=backend)
    timed = _TimedOps(backend.ops)
    timed_model = _timed_model(backend, timed)
    rng = np.random.default_rng(0)
    x = rng.random((batch, 784), dtype=np.float32)
    pool = [rng.random((batch, 784), dtype=np.float32) for _ in range(8)]
    for index in range(warm_steps):
        for trained in (model, timed_model):
            trained._train_step(pool[index % len(pool)], pool[index % len(pool)])
    subnormal, warmed = _subnormal_state(model), model.steps_trained
    floor_jobs = _matmul_jobs(batch)
    step_times, floors, peaks, per_op_rounds = [], [], [], []
    for _ in range(rounds):
        step_times.append(_median_time(lambda: model._train_step(x, x), steps))
        timed_model._train_step(x, x)  # warm
        timed.seconds.clear()
        for _ in range(steps):
            timed_model._train_step(x, x)
        per_op_rounds.append({name: seconds / steps for name, seconds in timed.seconds.items()})
        floors.append(_median_time(floor_jobs, steps))
        peaks.append(matmul_peak(repeats=3))
    per_op = {name: float(np.median([entry.get(name, 0.0) for entry in per_op_rounds])) for name in per_op_rounds[0]}
    return {
        "batch": batch,
        "ops": backend.ops.name,
        "rounds": rounds,
        "step_s": float(np.median(step_times)),
        "matmul_floor_s": float(np.median(floors)),
        "per_op_s": per_op,
        "gflop": train_step_flops(batch) / 1e9,
        "peak_gflops": float(np.median(peaks)),
        "warm_steps": warmed,  # the steps the timed model had trained when the rounds began
        "subnormal_state": subnormal,
    }


def _subnormal_state(model) -> int:
    """Entries of the optimizer's state buffers that are subnormal numbers."""
    count = 0
    for buffer in model.optimizer.state.values():
        magnitude = np.abs(buffer)
        count += int(np.count_nonzero((magnitude > 0) & (magnitude < np.finfo(buffer.dtype).tiny)))
    return count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="profile one training step of the tutorial model")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--reference", action="store_true")
    parser.add_argument("--kernels", default="auto", choices=("auto", "numba", "numpy"))
    parser.add_argument("--steps", type=int, default=30, help="timed steps (and matmul-floor repeats) per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the four measurements, alternating; medians")
    parser.add_argument(
        "--warm-steps", type=int, default=0, help="train this many steps first, so the optimizer state is a long run's (try 1500)"
    )
    args = parser.parse_args(argv)
    result = profile(args.batch, not args.reference, args.kernels, args.steps, args.rounds, args.warm_steps)
    step, floor = result["step_s"], result["matmul_floor_s"]
    print(f"tutorial model, batch {result['batch']}, ops {result['ops']}: {1 / step:.1f} steps/s (medians of {result['rounds']} rounds)")
    if result["warm_steps"]:
        print(f"  after {result['warm_steps']} warm-up steps; subnormal optimizer state entries: {result['subnormal_state']:,}")
    peak, gflop = result["peak_gflops"], result["gflop"]
    print(f"  float32 matmul peak (2048^3)          {peak:7.1f} GFLOP/s")
    print(f"  whole step            {1e3 * step:8.2f} ms   {gflop / step:7.1f} GFLOP/s = {100 * gflop / step / peak:3.0f} % of peak")
    print(
        f"  its matmuls alone     {1e3 * floor:8.2f} ms   {gflop / floor:7.1f} GFLOP/s = {100 * gflop / floor / peak:3.0f} % of peak"
        f" (the ceiling on this BLAS; {100 * floor / step:.0f} % of the step)"
    )
    print(f"  everything else       {1e3 * (step - floor):8.2f} ms")
    print("  per ops function (ms per step; dense_* include their matmuls):")
    for name, seconds in sorted(result["per_op_s"].items(), key=lambda item: -item[1]):
        print(f"    {name:<26} {1e3 * seconds:8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
