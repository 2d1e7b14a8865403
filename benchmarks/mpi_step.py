"""Data-parallel step benchmark on MPI: the allreduce of the tutorial's arena, and the
tutorial's training step on one and two processes, buckets off and on.

    python benchmarks/mpi_step.py --out benchmarks/results/mpi-step.json
    python benchmarks/mpi_step.py --rounds 1 --windows 2 --window-steps 2 --warmup-steps 1 --allreduce-repeats 20 --out /tmp/mpi-step.json

What it measures, each in its own process (``mpiexec -n 2`` for the MPI ones), the
processes of one round started in the same order every round so that they alternate
A B C D A B C D, medians over rounds with their min-max:

* ``allreduce``: an in-place float32 Allreduce (sum) of an array the size of the
  tutorial's parameter arena (1,100,320 values, 4.4 MB) between 2 ranks: after a
  warm-up, many Allreduces, each after a Barrier; a repeat's time is the slowest rank's;
  the process reports the median repeat.
* the training step of the tutorial model (float32, RMSProp, random inputs in [0, 1),
  the same on every rank) at each global batch (default 256 and 1024), one competitor
  per process: ``n1-1blas`` (one process, no MPI, one BLAS thread), ``n1-2blas`` (one
  process, two BLAS threads), ``n2`` (2 ranks of one BLAS thread, one Allreduce a
  step), ``n2-buckets`` (the same with ``Communicator(bucket_bytes=...)``). A step's
  time is read between consecutive ``on_step_end`` calls of one ``fit`` (no fit setup
  inside it), after warm-up steps; the steps are cut into windows and the process
  reports the median window's mean step.

Ratios are of same-round medians, then their median over rounds: each competitor's step
time against ``n1-1blas`` and ``n1-2blas``, and ``n2`` against ``n2-buckets``. ``--async-progress`` adds ``n2-buckets-async``: the
bucketed ranks with ``MPIR_CVAR_ASYNC_PROGRESS=1`` (MPICH's progress thread; otherwise a
non-blocking collective moves only inside MPI calls, which the buckets make after each
layer). ``--bucket-env NAME=VALUE`` sets a variable for the bucketed ranks only, such as
``MPIR_CVAR_IALLREDUCE_INTRA_ALGORITHM=sched_recursive_doubling`` (on 2 ranks it needs
3 progress calls where MPICH's default choice needed 5-7).
``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` are removed from every worker's
environment; ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` and
``NUMBA_NUM_THREADS`` are set to each competitor's threads (the optimizer's Numba kernels
are parallel and would otherwise use every core, so a "one thread" rank would not be one).
It prints a table and writes every measurement as JSON (``--out``): each row with the
threads BLAS and Numba ran with and the ops table, the report with the commit
(``git describe --always --dirty``) and the CPU model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from nanoae import presets
from nanoae.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parent))  # provenance.py sits beside this script
import provenance  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
_UNSET = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
# name -> (ranks, BLAS threads per rank, through MPI, bucketed)
COMPETITORS = {
    "n1-1blas": (1, 1, False, False),
    "n1-2blas": (1, 2, False, False),
    "n2": (2, 1, True, False),
    "n2-buckets": (2, 1, True, True),
}
# With --async-progress: buckets, and MPICH's progress thread moving them between MPI calls.
ASYNC = ("n2-buckets-async", (2, 1, True, True))
ASYNC_ENV = {"MPIR_CVAR_ASYNC_PROGRESS": "1"}
MARK = "NANOAE-MPI-STEP "


# ---- workers (one measurement each; rank 0 prints one JSON line) --------------------------


def _allreduce_worker(args) -> dict:
    from mpi4py import MPI  # noqa: PLC0415

    comm = MPI.COMM_WORLD
    size = presets.tutorial(seed=0).arena.size
    buffer = np.random.default_rng(comm.Get_rank()).random(size, dtype=np.float32)
    times = np.empty(args.allreduce_repeats, dtype=np.float64)
    for repeat in range(args.allreduce_warmup + args.allreduce_repeats):
        buffer[:] = 1.0 / (comm.Get_rank() + 2)  # same values each repeat: no overflow, no subnormals
        comm.Barrier()
        start = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        elapsed = time.perf_counter() - start
        if repeat >= args.allreduce_warmup:
            times[repeat - args.allreduce_warmup] = elapsed
    comm.Allreduce(MPI.IN_PLACE, times, op=MPI.MAX)  # each repeat: the slowest rank
    if comm.Get_rank() != 0:
        return {}
    return {
        "what": "allreduce",
        "ranks": comm.Get_size(),
        "values": int(size),
        "bytes": int(size * 4),
        "median_ms": float(np.median(times) * 1e3),
        "min_ms": float(times.min() * 1e3),
        "max_ms": float(times.max() * 1e3),
        "repeats": int(args.allreduce_repeats),
        "numba_threads": provenance.numba_threads(),
    }


class _StepClock(Callback):
    """on_step_end times: the gaps between them are the steps' times."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_begin(self, state) -> None:
        self.stamps.append(time.perf_counter())

    def on_step_end(self, state) -> None:
        self.stamps.append(time.perf_counter())


def _step_worker(args) -> dict:
    comm = None
    if args.mpi:
        from nanoae.distributed import Communicator  # noqa: PLC0415

        comm = Communicator(bucket_bytes=args.bucket_bytes if args.buckets else None)
    batch = args.batch
    # Random inputs in [0, 1), never zeros; 8 batches' worth, so no step repeats a batch soon.
    x = np.random.default_rng(1).random((8 * batch, 784), dtype=np.float32)
    model = presets.tutorial(seed=0)
    clock = _StepClock()
    steps = args.warmup_steps + args.windows * args.window_steps
    model.fit(x, steps=steps, batch_size=batch, log_every=steps, callbacks=[clock], comm=comm)
    gaps = np.diff(np.asarray(clock.stamps))[args.warmup_steps :]  # one gap a step
    windows = [float(part.mean()) for part in np.array_split(gaps, args.windows) if part.size]
    if comm is not None and comm.rank != 0:
        return {}
    return {
        "what": "step",
        "competitor": args.competitor,
        "batch": batch,
        "ranks": 1 if comm is None else comm.size,
        "blas_threads": int(os.environ.get("OPENBLAS_NUM_THREADS", "0")),
        "numba_threads": provenance.numba_threads(),
        "ops": repr(model.backend),
        "bucket_bytes": args.bucket_bytes if args.buckets else None,
        "step_ms": float(np.median(windows) * 1e3),
        "window_ms": [w * 1e3 for w in windows],
        "timed_steps": int(gaps.size),
    }


def _worker(args) -> int:
    result = _allreduce_worker(args) if args.worker == "allreduce" else _step_worker(args)
    if result:
        print(MARK + json.dumps(result), flush=True)
    return 0


# ---- the runner ---------------------------------------------------------------------------


def _mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        raise SystemExit('mpiexec not found: pip install "nanoae[mpi]" into this environment')
    return found


def _environment(threads: int, extra: dict) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in _UNSET}
    env.update(extra)
    for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[key] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(part for part in (str(ROOT), env.get("PYTHONPATH", "")) if part)
    return env


def _launch(ranks: int, threads: int, mpi: bool, worker_args: list[str], timeout: float, extra_env=None) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), *worker_args]
    if mpi:
        command = [_mpiexec(), "-n", str(ranks), *command]
    result = subprocess.run(command, env=_environment(threads, extra_env or {}), capture_output=True, text=True, timeout=timeout)
    lines = [line for line in result.stdout.splitlines() if line.startswith(MARK)]
    if result.returncode != 0 or len(lines) != 1:
        raise SystemExit(f"worker {' '.join(command)} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(lines[0][len(MARK) :])


def _spread(values) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def run(args) -> dict:
    rows = []
    settings = {key: value for key, value in vars(args).items() if key not in ("worker", "competitor", "batch", "mpi", "buckets")}
    timing = [
        "--warmup-steps", str(args.warmup_steps), "--windows", str(args.windows), "--window-steps", str(args.window_steps)
    ]
    for round_number in range(args.rounds):
        row = _launch(2, 1, True, [
            "--worker", "allreduce", "--allreduce-repeats", str(args.allreduce_repeats),
            "--allreduce-warmup", str(args.allreduce_warmup),
        ], args.timeout)
        rows.append({**row, "round": round_number})
        print(f"round {round_number + 1}: allreduce {row['median_ms']:.3f} ms", flush=True)
        for batch in args.batches:
            for name, (ranks, threads, mpi, buckets) in _competitors(args).items():
                worker = ["--worker", "step", "--competitor", name, "--batch-size", str(batch), *timing]
                if mpi:
                    worker.append("--mpi")
                if buckets:
                    worker += ["--buckets", "--bucket-bytes", str(args.bucket_bytes)]
                extra = {**(dict(args.bucket_env) if buckets else {}), **(ASYNC_ENV if name == ASYNC[0] else {})}
                row = _launch(ranks, threads, mpi, worker, args.timeout, extra)
                rows.append({**row, "round": round_number})
                print(f"round {round_number + 1}: batch {batch} {name} {row['step_ms']:.2f} ms/step", flush=True)
    return {"settings": settings, "machine": _machine(), "rows": rows, "summary": summarize(rows, args.batches, _competitors(args))}


def _competitors(args) -> dict:
    return {**COMPETITORS, ASYNC[0]: ASYNC[1]} if args.async_progress else dict(COMPETITORS)


def _machine() -> dict:
    import numpy  # noqa: PLC0415

    return {
        "commit": provenance.commit(),
        "cpu_model": provenance.cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "mpiexec": _mpiexec(),
    }


def summarize(rows, batches, competitors) -> dict:
    """Medians over rounds, and same-round ratios' medians."""
    reduce = [row for row in rows if row["what"] == "allreduce"]
    summary = {
        "allreduce": {
            "bytes": reduce[0]["bytes"],
            "median_ms": statistics.median(row["median_ms"] for row in reduce),
            "rounds_ms": [row["median_ms"] for row in reduce],
        },
        "steps": [],
    }
    for batch in batches:
        by_round: dict = {}
        for row in rows:
            if row["what"] == "step" and row["batch"] == batch:
                by_round.setdefault(row["round"], {})[row["competitor"]] = row["step_ms"]
        for name in competitors:
            times = [measured[name] for measured in by_round.values()]
            entry = {
                "batch": batch,
                "competitor": name,
                "ranks": competitors[name][0],
                "blas_threads": competitors[name][1],
                "step_ms": statistics.median(times),
                "rounds_ms": times,
                "samples_per_s": batch / statistics.median(times) * 1e3,
            }
            for base in ("n1-1blas", "n1-2blas"):
                entry[f"speedup_vs_{base}"] = statistics.median(c[base] / c[name] for c in by_round.values())
            summary["steps"].append(entry)
        for name in competitors:
            if competitors[name][3]:
                speedup = statistics.median(c["n2"] / c[name] for c in by_round.values())
                summary.setdefault("buckets_speedup", {}).setdefault(name, {})[str(batch)] = speedup
    return summary


def table(report: dict) -> str:
    summary = report["summary"]
    reduce = summary["allreduce"]
    lines = [
        f"Allreduce of the tutorial's float32 arena ({reduce['bytes']:,} bytes), 2 ranks: "
        f"median {reduce['median_ms']:.3f} ms (rounds {_spread(reduce['rounds_ms'])} ms), "
        f"{reduce['bytes'] / reduce['median_ms'] / 1e6:.2f} GB/s",
        "",
        "| batch | competitor | ranks | BLAS threads/rank | step ms (median) | min-max | samples/s | x n1-1blas | x n1-2blas |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for entry in summary["steps"]:
        lines.append(
            f"| {entry['batch']} | {entry['competitor']} | {entry['ranks']} | {entry['blas_threads']} | "
            f"{entry['step_ms']:.2f} | {_spread(entry['rounds_ms'])} | {entry['samples_per_s']:,.0f} | "
            f"{entry['speedup_vs_n1-1blas']:.2f} | {entry['speedup_vs_n1-2blas']:.2f} |"
        )
    lines.append("")
    bucket_bytes = report["settings"]["bucket_bytes"]
    bucket_env = "".join(f", {name}={value}" for name, value in report["settings"].get("bucket_env", []))
    for name, ratios in summary["buckets_speedup"].items():
        for batch, ratio in ratios.items():
            lines.append(
                f"batch {batch}: {name} ({bucket_bytes:,}-byte buckets{bucket_env}) vs n2 (one allreduce): {ratio:.3f}x "
                "(n2 step time / its, median of same-round ratios)"
            )
    return "\n".join(lines)


def _setting(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write every measurement and the summary as JSON here")
    parser.add_argument("--rounds", type=provenance.positive_count, default=5)
    parser.add_argument("--batch", dest="batches", type=provenance.positive_count, action="append", help="global batch (repeatable; default 256 and 1024)")
    parser.add_argument("--warmup-steps", type=provenance.positive_count, default=10)
    parser.add_argument("--windows", type=provenance.positive_count, default=5)
    parser.add_argument("--window-steps", type=provenance.positive_count, default=20)
    parser.add_argument("--bucket-bytes", type=provenance.positive_count, default=1 << 18, help="n2-buckets' bucket size (default 256 KiB)")
    parser.add_argument("--allreduce-repeats", type=provenance.positive_count, default=200)
    parser.add_argument("--allreduce-warmup", type=provenance.positive_count, default=20)
    parser.add_argument(
        "--bucket-env", type=_setting, action="append", default=[], metavar="NAME=VALUE",
        help="an environment variable for the bucketed ranks only (repeatable), e.g. "
        "MPIR_CVAR_IALLREDUCE_INTRA_ALGORITHM=sched_recursive_doubling",
    )
    parser.add_argument("--async-progress", action="store_true", help="also n2-buckets-async: MPIR_CVAR_ASYNC_PROGRESS=1")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one worker process may take")
    # worker side
    parser.add_argument("--worker", choices=("allreduce", "step"), help=argparse.SUPPRESS)
    parser.add_argument("--competitor", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", dest="batch", type=provenance.positive_count, help=argparse.SUPPRESS)
    parser.add_argument("--mpi", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--buckets", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return _worker(args)
    args.batches = args.batches or [256, 1024]
    report = run(args)
    print()
    print(table(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
