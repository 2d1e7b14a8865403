"""Run under mpiexec by tests/test_distributed_faults.py: train the tutorial model
data-parallel for many steps, so the test can kill or stop a rank mid-training.

argv: workdir steps data_seed [raise] [buckets] [wide-on-1] [few-rows-on-1], where
data_seed "rank" gives each rank different data of the same shape (a job started
wrongly: every rank must report the mismatch and exit 3), "raise" makes rank 1 raise an
OSError after its 10th step (as a callback that cannot write its file would), "buckets"
sums the gradients in 256 KiB buckets during the backward pass, and "wide-on-1" (100
columns) or "few-rows-on-1" (40 rows, fewer than the batch of 64) give rank 1 data its
own checks refuse (every rank must report rank 1's error and exit 3).
Each rank writes workdir/begun-<rank> when training begins (after the start-up checks,
before any step), workdir/pid-<rank> (its process id) once it has trained 5 steps, and
workdir/done-<rank> if training ends.
"""

import os
import sys
from pathlib import Path

import numpy as np

from nanoae import presets
from nanoae.callbacks import Callback
from nanoae.distributed import Communicator, RankMismatchError


class _FailAfterStep10(Callback):
    def on_step_end(self, state) -> None:
        if state.step == 10:
            raise OSError("a callback failed on this rank only (simulated)")


class _MarkBegun(Callback):
    """Write workdir/begun-<rank> in on_train_begin: the start-up checks have passed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_begin(self, state) -> None:
        self.path.write_text("begun\n")


class _WritePidWhenTraining(Callback):
    """Write this process's id once steps are being taken (renamed into place: never half-written)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_step_end(self, state) -> None:
        if state.step == 5:
            partial = self.path.with_suffix(".partial")
            partial.write_text(str(os.getpid()))
            partial.replace(self.path)


def main() -> None:
    workdir, steps, data_seed = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    options = sys.argv[4:]
    comm = Communicator(bucket_bytes=1 << 18 if "buckets" in options else None)
    callbacks = [_MarkBegun(workdir / f"begun-{comm.rank}"), _WritePidWhenTraining(workdir / f"pid-{comm.rank}")]
    if "raise" in options and comm.rank == 1:
        callbacks.append(_FailAfterStep10())
    rows, width = 300, 784
    if comm.rank == 1:
        width = 100 if "wide-on-1" in options else width
        rows = 40 if "few-rows-on-1" in options else rows
    x = np.random.default_rng(comm.rank if data_seed == "rank" else int(data_seed)).random((rows, width)).astype(np.float32)
    model = presets.tutorial(seed=0)
    try:
        model.fit(x, steps=steps, batch_size=64, log_every=50, comm=comm, callbacks=callbacks)
    except RankMismatchError as exc:
        # Into a file as well: mpiexec ends the job at the first rank's exit and may drop
        # output it has not forwarded yet; the Barrier lets every rank write first.
        (workdir / f"error-{comm.rank}.txt").write_text(f"rank {comm.rank}: {exc}\n")
        comm.comm.Barrier()
        sys.exit(3)
    (workdir / f"done-{comm.rank}").write_text("done\n")


if __name__ == "__main__":
    main()
