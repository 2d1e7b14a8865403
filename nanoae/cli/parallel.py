"""nanoae train under an MPI launcher: ``mpiexec -n N nanoae train ...`` trains data-parallel.

A launcher is recognised by what it puts in each process's environment (MPICH's hydra
sets ``PMI_SIZE`` and ``PMI_RANK``, checked here; Open MPI sets ``OMPI_COMM_WORLD_SIZE``;
a PMIx launch sets ``PMIX_RANK``, and the size is then asked of MPI itself). A launch of
one process trains exactly as without a launcher, without importing mpi4py (where the
launcher says it is one; a PMIx launch has to ask MPI).

The job must never hang on one rank's error. So the command runs in phases:

1. every rank runs its checks (options, data, model, resume; rank 0 also the run
   directory) and all agree in one :meth:`~nanoae.distributed.Communicator.all_ok`:
   if any rank failed, every rank exits 2 and rank 0 alone prints the first failing
   rank's message;
2. the ranks compare their run's configuration (``Communicator.agree``);
3. rank 0 alone prepares the run directory and writes config.json, then one more
   ``all_ok`` (rank 0's disk may refuse);
4. training: an exception on any rank prints its message there and aborts the whole job
   (``MPI_Abort``), since the other ranks wait in the next gradient exchange.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

from nanoae.cli.common import EXIT_USAGE, USER_ERRORS, CLIError
from nanoae.distributed import Communicator, RankMismatchError, data_fingerprint

# Launcher variables that give the number of processes, in the order they are read.
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
# Set by a PMIx launch, which may give no size of its own.
PMIX_RANK = "PMIX_RANK"
# The config.json fields that may differ between hosts of one job (where the data was
# found, the ops table built there, the command's spelling); the rest must agree.
HOST_FIELDS = ("data_source", "data_dir", "ops", "command")
_MPI_HINT = 'pip install "nanoae[mpi]" (mpi4py and an MPI library), or start nanoae train without the launcher'


class StopRank(Exception):
    """Another rank failed and rank 0 reports it: this rank exits with ``code``, silent."""

    def __init__(self, code: int = EXIT_USAGE) -> None:
        super().__init__(code)
        self.code = code


def launcher_size(environ) -> int | None:
    """The number of processes the launcher started: None without a launcher, 0 when a
    launcher (PMIx) did not say (MPI then knows)."""
    for name in SIZE_VARIABLES:
        value = environ.get(name, "").strip()
        if value.isdigit() and int(value) >= 1:
            return int(value)
    return 0 if environ.get(PMIX_RANK) is not None else None


def job_communicator(environ) -> Communicator | None:
    """The job's :class:`~nanoae.distributed.Communicator` when a launcher started more
    than one process, else None (one process: no MPI at all)."""
    size = launcher_size(environ)
    if size is None or size == 1:
        return None
    try:
        comm = Communicator()
    except ImportError:
        started = f"as one of {size} processes" if size else f"({PMIX_RANK} is set)"
        raise CLIError(f"nanoae train was started by an MPI launcher {started}, but mpi4py is not installed: {_MPI_HINT}") from None
    except ValueError as exc:  # a bad NANOAE_MPI_TIMEOUT, refused before MPI starts
        raise CLIError(str(exc)) from None
    if size and comm.size != size:
        # Each process would train alone as rank 0 of 1, all writing one run directory.
        raise CLIError(
            f"the MPI launcher started {size} processes, but MPI sees {comm.size} in this job: mpiexec and mpi4py come "
            "from different MPI libraries; start nanoae with the mpiexec of the MPI mpi4py was built with (the one "
            'that pip install "nanoae[mpi]" puts beside this Python)'
        )
    return comm if comm.size > 1 else None


def _one_line(error: BaseException) -> str:
    if isinstance(error, USER_ERRORS):
        return str(error)
    return f"{type(error).__name__}: {error} (an error inside nanoae; its traceback is on that rank's output)"


def checked_on_every_rank(comm: Communicator | None, check):
    """``check()`` on this rank, then every rank agrees whether all passed.

    Returns check()'s result when every rank passed. Otherwise rank 0 raises: its own
    error when it failed first, else a CLIError naming the first failing rank and its
    message; every other rank raises :class:`StopRank` (exit 2, nothing printed).
    Without ``comm``: ``check()`` as it is.
    """
    if comm is None:
        return check()
    try:
        result, failed = check(), None
    except Exception as exc:  # any failure, or the other ranks would wait for this one forever
        result, failed = None, exc
    first = comm.all_ok(None if failed is None else _one_line(failed))
    if first is None:
        return result
    if failed is not None and not isinstance(failed, USER_ERRORS) and comm.rank != 0:
        traceback.print_exception(failed)  # a bug: its traceback where it happened
    if comm.rank != 0:
        raise StopRank(EXIT_USAGE)
    rank, message = first
    if rank == 0:
        raise failed
    raise CLIError(f"rank {rank} of {comm.size}: {message}")


def agree_on_the_run(comm: Communicator | None, config: dict, rows) -> None:
    """Every rank runs the same job: its config (less what differs between hosts) and
    training rows (their count and :func:`~nanoae.distributed.data_fingerprint`: shape,
    dtype and 1024 rows spread over them), compared by hash; a mismatch is rank 0's one
    error, every rank exits 2, before anything is written."""
    if comm is None:
        return
    job = {key: value for key, value in config.items() if key not in HOST_FIELDS}
    job.update(training_rows=len(rows), training_data=data_fingerprint(rows))
    try:
        comm.agree(json.dumps(job, sort_keys=True, default=str), "configuration (options, data or checkpoint)")
    except RankMismatchError as exc:
        if comm.rank != 0:
            raise StopRank(EXIT_USAGE) from None
        raise CLIError(str(exc)) from None


def run_or_abort(comm: Communicator | None, run):
    """``run()``; under a data-parallel job an exception on this rank (rank 0 failing to
    write a checkpoint, a bug) prints its message here and aborts every rank with exit 2
    (a user's problem) or 1, since the others would wait for this rank forever.
    KeyboardInterrupt passes as without MPI (the launcher sends it to every rank)."""
    if comm is None:
        return run()
    try:
        return run()
    except Exception as exc:
        print(f"nanoae train: error on rank {comm.rank} of {comm.size}: {_one_line(exc)}; ending every rank", file=sys.stderr, flush=True)
        if not isinstance(exc, USER_ERRORS):
            traceback.print_exception(exc)
        code = EXIT_USAGE if isinstance(exc, USER_ERRORS) else 1
        comm.comm.Abort(code)
        os._exit(code)  # MPICH's Abort may return to the caller once it has told the launcher


def require_data_parallel(comm: Communicator | None, model, batch_size: int, what: str) -> None:
    """What train() would refuse under ``comm``, refused before anything is written:
    models that draw noise each step (VAE, denoising) and batches smaller than the ranks."""
    if comm is None:
        return
    if not model.static_train_step:
        raise CLIError(
            f"{what} draws random noise each training step (a VAE's sample, a denoiser's corruption), so it trains "
            f"in one process only: start nanoae train without mpiexec, or train another preset on {comm.size} ranks"
        )
    if batch_size < comm.size:
        raise CLIError(f"--batch-size {batch_size} is smaller than the {comm.size} ranks: give --batch-size {comm.size} or more")
