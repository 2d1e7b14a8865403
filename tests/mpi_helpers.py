"""What the tests that start ``mpiexec`` share: finding it, the ``needs_mpi`` mark, the
ranks' environment and a run that ends a hung job cleanly.

Every job gets ``NANOAE_MPI_TIMEOUT=30`` (unless the test sets its own), so a rank that
waits on a lost one ends the job with nanoae's one line well inside the test's own
limit, and one BLAS thread per rank, so N ranks on a 2-core CI machine do not fight over
cores. A job still running at the limit is sent SIGTERM first (MPICH's hydra then ends
its ranks) and SIGKILL only if that does not end it: a killed launcher would leave its
ranks polling at full CPU for the rest of the suite.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
JOB_LIMIT_S = 120  # a job that hangs fails its test after this long instead of hanging the suite
RANK_TIMEOUT_S = "30"  # NANOAE_MPI_TIMEOUT in every job: a hung collective ends the job inside JOB_LIMIT_S
# What a launcher puts in its ranks' environment: never passed on from the test's own.
LAUNCHER_VARIABLES = (
    "PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_LOCAL_RANK", "PMIX_RANK", "PMIX_LOCAL_RANK",
)  # fmt: skip


def mpiexec_path() -> str | None:
    """The mpiexec beside this Python (what the mpich wheel installs), else on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def has_mpi4py() -> bool:
    return importlib.util.find_spec("mpi4py") is not None


_skip_without_mpi = pytest.mark.skipif(
    mpiexec_path() is None or not has_mpi4py(), reason='needs mpi4py and mpiexec: pip install "nanoae[mpi]"'
)


def needs_mpi(test):
    """A test that starts mpiexec: marked ``mpi``, skipped with the install hint without MPI."""
    return pytest.mark.mpi(_skip_without_mpi(test))


def mpi_env(timeout: str = RANK_TIMEOUT_S) -> dict:
    """The environment of a job: this one without launcher variables, one BLAS thread,
    this checkout first on PYTHONPATH, NANOAE_MPI_TIMEOUT=timeout."""
    env = {key: value for key, value in os.environ.items() if key not in LAUNCHER_VARIABLES}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["NANOAE_MPI_TIMEOUT"] = timeout
    return env


def stop(job: subprocess.Popen) -> None:
    """End a job still running: SIGTERM (hydra ends its ranks), SIGKILL after 10 s."""
    if job.poll() is None:
        job.terminate()
        try:
            job.wait(10)
        except subprocess.TimeoutExpired:
            job.kill()
            job.wait()


def run_job(command, *, env: dict | None = None, cwd=None, limit: float = JOB_LIMIT_S) -> subprocess.CompletedProcess:
    """Run command (mpiexec or a script that starts it) to its end, output captured as
    text; past ``limit`` seconds the job is stopped (see :func:`stop`) and the test fails."""
    job = subprocess.Popen(
        [str(part) for part in command], env=mpi_env() if env is None else env, cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        stdout, stderr = job.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        stop(job)
        stdout, stderr = job.communicate()
        pytest.fail(f"the job was still running after {limit} s (a hang): {stderr[-3000:]}")
    return subprocess.CompletedProcess(job.args, job.returncode, stdout, stderr)
