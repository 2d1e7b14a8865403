"""nanoae train under an MPI launcher: ``mpiexec -n N nanoae train ...`` trains data-parallel.

A launcher is recognised by what it puts in each process's environment (MPICH's hydra
sets ``PMI_SIZE`` and ``PMI_RANK``, checked here; Open MPI sets ``OMPI_COMM_WORLD_SIZE``;
a PMIx launch sets ``PMIX_RANK``, and the size is then asked of MPI itself). A launch of
one process trains exactly as without a launcher, without importing mpi4py (where the
launcher says it is one; a PMIx launch has to ask MPI).

The job must never hang on one rank's error, nor print it N times. So the command runs
in phases:

0. before MPI starts (the command line, mpi4py, MPI itself): a failure is printed by one
   process (rank 0 for the command line, the first process on each host for what depends
   on the host) and every process exits 2;
1. every rank runs its checks (options, data, model, resume, the data's fingerprint;
   rank 0 also the run directory) and all agree in one
   :meth:`~nanoae.distributed.Communicator.all_ok`: if any rank failed, every rank exits
   with that error's code (2: bad input, 1: a bug) and rank 0 alone prints the first
   failing rank's message;
2. the ranks compare their run's configuration and data (``Communicator.agree``);
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
# This process's number in the job, and on its host, as the launchers set them (MPICH's
# hydra, Open MPI, PMIx), read before MPI starts.
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", PMIX_RANK)
LOCAL_RANK_VARIABLES = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "PMIX_LOCAL_RANK")
# The config.json fields that may differ between hosts of one job (where the data was
# found and the path it resolved to, the ops table built there, the command's spelling);
# the rest must agree. The data's content is compared by its fingerprint instead.
HOST_FIELDS = ("data_source", "data_dir", "data_path", "ops", "command")
_MPI_HINT = 'pip install "nanoae[mpi]" (mpi4py and an MPI library), or start nanoae train without the launcher'


class StopRank(Exception):
    """Another process reports the failure: this one exits with ``code``, silent."""

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


def _launcher_number(environ, names) -> int | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def prints_for_the_job(environ) -> bool:
    """Whether this process prints the errors every process of the job finds alike before
    MPI starts (a bad command line): the launcher's rank 0, or the one process without a
    launcher. The others exit with the same code, silent, so ``mpiexec -n 8`` prints one
    line, not eight."""
    return (_launcher_number(environ, RANK_VARIABLES) or 0) == 0


def prints_for_its_host(environ) -> bool:
    """Whether this process prints the errors that depend on its host's installation
    (mpi4py missing or broken there, MPI failing to start, NANOAE_MPI_TIMEOUT): the first
    process on each host (the launcher's local rank 0), else as :func:`prints_for_the_job`.
    One line per host: a host whose processes fail alone still says why."""
    local = _launcher_number(environ, LOCAL_RANK_VARIABLES)
    return prints_for_the_job(environ) if local is None else local == 0


def is_leader(comm: Communicator | None) -> bool:
    """Rank 0 of a data-parallel job, or the one process without one: the process that
    prints and writes."""
    return comm is None or comm.rank == 0


def job_communicator(environ) -> Communicator | None:
    """The job's :class:`~nanoae.distributed.Communicator` when a launcher started more
    than one process, else None (one process: no MPI at all).

    A failure (mpi4py missing or broken, MPI not starting, a bad NANOAE_MPI_TIMEOUT, a
    launcher of another MPI library) is a CLIError on the first process of each host
    (:func:`prints_for_its_host`) and a silent :class:`StopRank` on the others.
    """
    try:
        return _communicator(environ)
    except CLIError:
        if not prints_for_its_host(environ):
            raise StopRank(EXIT_USAGE) from None
        raise


def _mpi_failure(started: str, error: BaseException) -> str:
    """The line for mpi4py or MPI failing to load or start; ``error``: the ImportError
    (its cause, when nanoae.distributed wrapped one) or RuntimeError raised."""
    cause = error.__cause__ if isinstance(error, ImportError) and error.__cause__ is not None else error
    if isinstance(cause, ModuleNotFoundError) and cause.name == "mpi4py":
        return f"nanoae train was started by an MPI launcher {started}, but mpi4py is not installed: {_MPI_HINT}"
    what = "mpi4py cannot be imported" if isinstance(error, ImportError) else "MPI did not start"
    return f"nanoae train was started by an MPI launcher {started}, but {what} ({type(cause).__name__}: {cause}): {_MPI_HINT}"


def _communicator(environ) -> Communicator | None:
    size = launcher_size(environ)
    if size is None or size == 1:
        return None
    started = f"as one of {size} processes" if size else f"({PMIX_RANK} is set)"
    try:
        comm = Communicator()
    except (ImportError, RuntimeError) as exc:  # mpi4py's MPI.Exception is a RuntimeError
        raise CLIError(_mpi_failure(started, exc)) from None
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


def _exit_code(error: BaseException) -> int:
    """2 for the user's problem (bad input), 1 for a bug."""
    return EXIT_USAGE if isinstance(error, USER_ERRORS) else 1


def checked_on_every_rank(comm: Communicator | None, check):
    """``check()`` on this rank, then every rank agrees whether all passed.

    Returns check()'s result when every rank passed. Otherwise every rank exits with the
    code of the first failing rank's error (2: the user's problem; 1: a bug) and rank 0
    alone says why: it raises its own error when it failed first; else it raises a
    CLIError naming the first failing rank and its message (a user error), or prints
    that line and raises :class:`StopRank` (a bug). Every other rank raises StopRank,
    silent, except that a rank whose check hit a bug prints its traceback first.
    Without ``comm``: ``check()`` as it is.
    """
    if comm is None:
        return check()
    try:
        result, failed = check(), None
    except Exception as exc:  # any failure, or the other ranks would wait for this one forever
        result, failed = None, exc
    # The exit code travels as the message's first character: all_ok carries text only.
    first = comm.all_ok(None if failed is None else f"{_exit_code(failed)}{_one_line(failed)}")
    if first is None:
        return result
    if failed is not None and not isinstance(failed, USER_ERRORS) and comm.rank != 0:
        traceback.print_exception(failed)  # a bug: its traceback where it happened
    rank, sent = first
    code, message = int(sent[0]), sent[1:]
    if comm.rank != 0:
        raise StopRank(code)
    if rank == 0:
        raise failed
    if code == EXIT_USAGE:
        raise CLIError(f"rank {rank} of {comm.size}: {message}")
    print(f"nanoae train: error: rank {rank} of {comm.size}: {message}", file=sys.stderr, flush=True)
    raise StopRank(code)


def job_text(comm: Communicator | None, config: dict, rows) -> str | None:
    """What every rank of the job must have alike, as text: the config (less
    :data:`HOST_FIELDS`) and the training rows (their count and
    :func:`~nanoae.distributed.data_fingerprint`: shape, dtype and 1024 rows spread over
    them). None without ``comm``. It reads rows, so it runs among the checks (inside
    :func:`checked_on_every_rank`): a read failing on one rank ends every rank there."""
    if comm is None:
        return None
    job = {key: value for key, value in config.items() if key not in HOST_FIELDS}
    job.update(training_rows=len(rows), training_data=data_fingerprint(rows))
    return json.dumps(job, sort_keys=True, default=str)


def agree_on_the_run(comm: Communicator | None, job: str | None) -> None:
    """Every rank runs the same job: the ranks' :func:`job_text` compared by hash; a
    mismatch is rank 0's one error, every rank exits 2. It runs before anything is
    written, which is why it repeats the fingerprint check train() makes under comm."""
    if comm is None:
        return
    try:
        comm.agree(job, "configuration (options, data or checkpoint)")
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
        code = _exit_code(exc)
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
