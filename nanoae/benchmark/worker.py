"""One competitor, one process, one measurement; prints a JSON line.

    python -m nanoae.benchmark.worker --framework nanoae --mode train --batch 256

Warm-up first (compilation, buffers, caches), then several timed windows; the
result is the median window. The runner starts one such process per competitor and
round, so no framework's threads or allocator state leak into another's numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

from nanoae.benchmark.competitors import FRAMEWORKS, cublas_peak, matmul_peak


def _rss_mib() -> float:
    """Resident memory now, from /proc (Linux), in MiB; NaN elsewhere."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")


def measure(
    framework: str,
    mode: str,
    batch: int,
    warmup: float,
    windows: int,
    window: float,
    seed: int = 0,
    competitor=None,
    memory_steps: int = 0,
    memory_seconds: float = 20.0,
) -> dict:
    """One measurement; ``competitor`` (already built) lets one process measure several batches.

    The RSS growth is measured from the end of the warm-up over the timed steps and, when
    ``memory_steps`` is larger, over untimed steps until that many have run or
    ``memory_seconds`` have passed (``rss_steps`` says how many it covers).
    """
    started = time.perf_counter()
    if framework == "matmul-peak":
        return {"framework": framework, "gflops": matmul_peak(), "seconds": time.perf_counter() - started}
    if framework == "cublas-peak":
        return {"framework": framework, "gflops": cublas_peak(), "seconds": time.perf_counter() - started}
    if competitor is None:
        competitor = FRAMEWORKS[framework](mode)
    rng = np.random.default_rng(seed)
    # Random inputs in [0, 1), never zeros; a pool of batches so no step is a cache replay.
    pool = [competitor.prepare(rng.random((batch, 784), dtype=np.float32)) for _ in range(8)]
    step, sync = competitor.step, competitor.sync
    count = 0
    warm_start = time.perf_counter()
    while count < 3 or time.perf_counter() - warm_start < warmup:
        step(pool[count % len(pool)])
        count += 1
    sync()
    warmup_seconds = time.perf_counter() - warm_start
    rss_before = _rss_mib()
    rates = []
    timed_steps = 0  # the steps the RSS growth below is measured over
    for _ in range(windows):
        steps = 0
        window_start = time.perf_counter()
        while True:
            step(pool[steps % len(pool)])
            steps += 1
            if steps >= 3 and time.perf_counter() - window_start >= window:
                break
        sync()
        rates.append(steps / (time.perf_counter() - window_start))
        timed_steps += steps
    rss_steps = timed_steps
    deadline = time.perf_counter() + memory_seconds
    while rss_steps < memory_steps and time.perf_counter() < deadline:
        step(pool[rss_steps % len(pool)])
        rss_steps += 1
    sync()
    return {
        "framework": competitor.name,
        "mode": mode,
        "batch": batch,
        "steps_per_s": float(np.median(rates)),
        "window_rates": rates,
        "warmup_s": warmup_seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_growth_mib": _rss_mib() - rss_before,
        "timed_steps": timed_steps,
        "rss_steps": rss_steps,
        "info": dict(competitor.info),
        "seconds": time.perf_counter() - started,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", required=True)
    parser.add_argument("--mode", choices=("train", "infer"), default="train")
    parser.add_argument("--batch", type=int, action="append", help="batch size (repeatable: one line each, one competitor; default 256)")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--window", type=float, default=1.0)
    parser.add_argument("--memory-steps", type=int, default=0, help="measure RSS growth over at least this many steps")
    parser.add_argument("--memory-seconds", type=float, default=20.0, help="time budget for the untimed memory steps")
    args = parser.parse_args(argv)
    batches = args.batch or [256]
    competitor = None
    if len(batches) > 1 and args.framework not in ("matmul-peak", "cublas-peak"):
        competitor = FRAMEWORKS[args.framework](args.mode)
    for batch in batches:
        result = measure(
            args.framework,
            args.mode,
            batch,
            args.warmup,
            args.windows,
            args.window,
            competitor=competitor,
            memory_steps=args.memory_steps,
            memory_seconds=args.memory_seconds,
        )
        print("NANOAE-BENCH " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
