"""What the bounded wait costs: one sum of the tutorial's gradient arena over the ranks,
done three ways, each timed the same way.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \
        mpiexec -n 2 python benchmarks/mpi_wait.py --rounds 20 --calls 200 --out benchmarks/results/mpi-wait.json

- ``blocking``: ``Allreduce(IN_PLACE, grads)``, MPI's own wait (no deadline);
- ``nonblocking``: ``Iallreduce`` then ``Test`` polled with a deadline check (a new
  request each call);
- ``persistent``: what :class:`nanoae.distributed.Communicator` does each step: a
  persistent ``Allreduce_init`` request made once, then ``Start`` and the same polling
  (``Communicator._wait_all``).

The three alternate in rounds (A B C, A B C, ...) after a warm-up, each round timing
``--calls`` calls after a barrier; the table gives each way's median time per call over
the rounds with its min-max, and its ratio to ``blocking``. The same for the 8-byte loss
sum (``--what loss``). Rank 0 prints the table; ``--out`` writes the rows as JSON with the
commit (``git describe --always --dirty``), the machine and the MPI library.

The calls within a round run back to back, with no Barrier between them (unlike
``mpi_step.py``'s Allreduce, timed alone after a Barrier), so a round's time per call
includes whatever one rank's late arrival at the next call costs the other.

It calls ``Communicator._wait_all`` and ``_start_sum``, which are private: the point is
to time exactly the wait ``Communicator`` runs each step, which no public call exposes
on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from pathlib import Path

import numpy as np
from mpi4py import MPI

from nanoae import presets
from nanoae.distributed import Communicator

sys.path.insert(0, str(Path(__file__).resolve().parent))  # provenance.py sits beside this script
import provenance  # noqa: E402


def _blocking(comm: Communicator, buffer: np.ndarray):
    def call():
        comm.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)

    return call


def _nonblocking(comm: Communicator, buffer: np.ndarray):
    def call():
        comm._wait_all((comm.comm.Iallreduce(MPI.IN_PLACE, buffer, op=MPI.SUM),), "the benchmark's allreduce")

    return call


def _persistent(comm: Communicator, buffer: np.ndarray):
    def call():
        comm._wait_all(comm._start_sum("benchmark", buffer), "the benchmark's allreduce")

    return call


WAYS = {"blocking": _blocking, "nonblocking": _nonblocking, "persistent": _persistent}


def _time_round(comm: Communicator, call, calls: int) -> float:
    comm.comm.Barrier()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    elapsed = time.perf_counter() - start
    # The slowest rank's time is the job's time.
    return comm.comm.allreduce(elapsed, op=MPI.MAX) / calls


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=provenance.positive_count, default=20)
    parser.add_argument("--calls", type=provenance.positive_count, default=200, help="calls timed per round")
    parser.add_argument("--warmup", type=provenance.positive_count, default=50, help="untimed calls of each way first")
    parser.add_argument("--what", choices=["gradients", "loss", "both"], default="both")
    parser.add_argument("--out", help="write the rows as JSON here (rank 0)")
    args = parser.parse_args(argv)
    comm = Communicator()
    # Zeros: a sum of zeros costs what a sum of anything does, and never overflows over many calls.
    buffers = {
        "gradients": np.zeros_like(presets.tutorial(seed=0).arena.grads),
        "loss": np.zeros(1, dtype=np.float64),
    }
    rows = []
    for what in ["gradients", "loss"] if args.what == "both" else [args.what]:
        calls = {name: make(comm, buffers[what]) for name, make in WAYS.items()}
        for call in calls.values():
            for _ in range(args.warmup):
                call()
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, call in calls.items():
                times[name].append(_time_round(comm, call, args.calls))
        reference = statistics.median(times["blocking"])
        for name, measured in times.items():
            median = statistics.median(measured)
            rows.append(
                {
                    "what": what,
                    "bytes": int(buffers[what].nbytes),
                    "way": name,
                    "ranks": comm.size,
                    "median_us": median * 1e6,
                    "min_us": min(measured) * 1e6,
                    "max_us": max(measured) * 1e6,
                    "ratio_to_blocking": median / reference,
                    "rounds": args.rounds,
                    "calls_per_round": args.calls,
                }
            )
    if comm.rank == 0:
        print(f"{'sum of':<10} {'bytes':>9} {'way':<12} {'median us':>10} {'min-max us':>19} {'vs blocking':>11}")
        for row in rows:
            spread = f"{row['min_us']:.1f}-{row['max_us']:.1f}"
            print(
                f"{row['what']:<10} {row['bytes']:>9} {row['way']:<12} {row['median_us']:>10.1f} {spread:>19} {row['ratio_to_blocking']:>10.3f}x"
            )
        if args.out:
            with open(args.out, "w") as out:
                report = {
                    "commit": provenance.commit(),
                    "machine": provenance.machine(),
                    "numba_threads": provenance.numba_threads(),
                    "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
                    "ranks": comm.size,
                    "mpi": MPI.Get_library_version().splitlines()[0],
                    "rows": rows,
                }
                json.dump(report, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
