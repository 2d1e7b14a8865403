"""Data-parallel faults: a rank that dies or hangs ends the job in bounded time; ranks
given different data stop at the start.

The job tests start ``mpiexec -n 2`` on tests/mpi_fault_script.py (one BLAS thread per
rank, see tests/mpi_helpers.py), wait until both ranks are training, then kill or stop
rank 1, or give rank 1 data its checks refuse. Every wait on the
job has a limit (a hang fails the test instead of hanging the suite) and every process
the test started is ended in a ``finally``. The timeout's parsing and the data
fingerprint are checked in this process, which never imports mpi4py.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mpi_helpers import mpi_env, mpiexec_path, needs_mpi, stop

from nanoae.data.rows import ScaledRows
from nanoae.distributed import DEFAULT_TIMEOUT, TIMEOUT_EXIT_CODE, Communicator, data_fingerprint, mpi_timeout
from nanoae.scaling import Scaler

SCRIPT = Path(__file__).resolve().parent / "mpi_fault_script.py"
JOB_LIMIT = 60  # seconds any wait on a job may take before the test fails


def _start(workdir: Path, timeout: str, steps: int = 100_000, data_seed: str = "7", *fault: str) -> subprocess.Popen:
    command = [mpiexec_path(), "-n", "2", sys.executable, str(SCRIPT), str(workdir), str(steps), data_seed, *fault]
    return subprocess.Popen(command, env=mpi_env(timeout), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _training_pids(job: subprocess.Popen, workdir: Path) -> list[int]:
    """The ranks' process ids, once both have trained 5 steps."""
    deadline = time.monotonic() + JOB_LIMIT
    paths = [workdir / f"pid-{rank}" for rank in range(2)]
    while not all(path.exists() for path in paths):
        if job.poll() is not None:
            pytest.fail(f"the job ended (code {job.returncode}) before both ranks trained: {job.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"the ranks did not start training within {JOB_LIMIT} s")
        time.sleep(0.05)
    return [int(path.read_text()) for path in paths]


def _is_our_rank(pid: int) -> bool:
    try:
        return SCRIPT.name in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _end(job: subprocess.Popen, workdir: Path) -> None:
    """End whatever is left of the job: continue and kill our ranks, then the launcher."""
    for path in workdir.glob("pid-*"):
        pid = int(path.read_text())
        if _is_our_rank(pid):  # not a process id reused since
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
    stop(job)  # SIGTERM first: hydra ends its own ranks
    job.stdout.close()


def _finish(job: subprocess.Popen) -> str:
    """The job's output once it has ended (fails the test past JOB_LIMIT: a hang)."""
    try:
        output, _ = job.communicate(timeout=JOB_LIMIT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the job was still running {JOB_LIMIT} s after the fault: it hangs")
    return output


def _gone(pid: int) -> bool:
    """True once the rank has ended (within 10 s: the launcher's kill lands a moment after it returns)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if not _is_our_rank(pid) or Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


@needs_mpi
def test_a_killed_rank_is_ended_by_the_launcher_not_by_nanoae(tmp_path):
    # A deadline far beyond the test's limit: what ends this job is MPICH's launcher (hydra),
    # which sees rank 1 die; nanoae's part is only not to get in its way (no line of ours).
    job = _start(tmp_path, timeout="600")
    try:
        first, second = _training_pids(job, tmp_path)
        os.kill(second, signal.SIGKILL)
        output = _finish(job)
        # Only MPICH's launcher speaks here: it sees rank 1 die and ends rank 0 at once,
        # before any wait of ours could run out.
        assert job.returncode != 0
        assert "BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES" in output, output[-3000:]
        assert "nanoae: rank" not in output
        assert _gone(first)
        assert not list(tmp_path.glob("done-*"))
    finally:
        _end(job, tmp_path)


@needs_mpi
@pytest.mark.parametrize("buckets", [(), ("buckets",)], ids=["one-allreduce", "buckets"])
def test_a_hung_rank_ends_the_job_after_the_timeout_with_one_clear_line(tmp_path, buckets):
    job = _start(tmp_path, "3", 100_000, "7", *buckets)  # the 3 s read by Communicator() from the environment
    try:
        first, second = _training_pids(job, tmp_path)
        os.kill(second, signal.SIGSTOP)  # alive but silent: the launcher sees nothing wrong
        output = _finish(job)
        assert job.returncode == TIMEOUT_EXIT_CODE, output[-3000:]
        ours = [line for line in output.splitlines() if line.startswith("nanoae:")]
        assert len(ours) == 1, output[-3000:]
        found = re.fullmatch(
            r"nanoae: rank 0 of 2 waited 3 s at the (gradient|loss) allreduce of step (\d+) for the other ranks "
            r"\(a rank died or hung, a host is unreachable, or rank 0 spent that long evaluating or checkpointing "
            r"between steps\); ending the job \(set NANOAE_MPI_TIMEOUT to wait longer\)",
            ours[0],
        )
        assert found, ours[0]
        assert int(found.group(2)) > 5  # rank 1 was stopped after its 5th step, so rank 0 waited later
        assert _gone(first)
        assert not list(tmp_path.glob("done-*"))
    finally:
        _end(job, tmp_path)


@needs_mpi
def test_an_exception_on_one_rank_ends_the_job_after_the_timeout(tmp_path):
    # The raising rank's Python exits through MPI_Finalize, which waits for the others, while
    # they wait for it in the next allreduce: without the deadline this job never ends.
    # (``python -m mpi4py script.py`` aborts the job at the exception instead.)
    job = _start(tmp_path, "3", 100_000, "7", "raise")
    try:
        output = _finish(job)
        assert job.returncode == TIMEOUT_EXIT_CODE, output[-3000:]
        assert "OSError: a callback failed on this rank only (simulated)" in output
        ours = [line for line in output.splitlines() if line.startswith("nanoae:")]
        assert ours == [
            "nanoae: rank 0 of 2 waited 3 s at the gradient allreduce of step 11 for the other ranks "
            "(a rank died or hung, a host is unreachable, or rank 0 spent that long evaluating or checkpointing "
            "between steps); ending the job (set NANOAE_MPI_TIMEOUT to wait longer)"
        ], output[-3000:]
        assert not list(tmp_path.glob("done-*"))
    finally:
        _end(job, tmp_path)


def _no_training_begun(workdir: Path) -> bool:
    """No rank reached on_train_begin (written before the first step), so none trained."""
    return not list(workdir.glob("begun-*")) and not list(workdir.glob("pid-*")) and not list(workdir.glob("done-*"))


@needs_mpi
def test_ranks_given_different_data_of_one_shape_all_stop_naming_the_data(tmp_path):
    job = _start(tmp_path, timeout="600", steps=20, data_seed="rank")
    try:
        output = _finish(job)
        assert job.returncode == 3, output[-3000:]
        lines = [(tmp_path / f"error-{rank}.txt").read_text().strip() for rank in range(2)]
        for rank, line in enumerate(lines):
            assert line.startswith(f"rank {rank}: ranks [1] of 2 were started with a different data set (same shape and dtype")
            assert line.endswith("start every rank with the same command, seed and data")
        assert _no_training_begun(tmp_path)
    finally:
        _end(job, tmp_path)


@needs_mpi
@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("wide-on-1", "x has 100 features per row but the model expects 784 (got shape (300, 100))"),
        ("few-rows-on-1", "batch_size 64 is larger than the dataset (40 rows)"),
    ],
)
def test_a_check_failing_on_one_rank_stops_every_rank_at_once_naming_it(tmp_path, fault, message):
    # The other rank must not go on into the job's first exchange and wait there for the
    # failed one: with a 600 s deadline, that job would outlive the test's 60 s limit.
    job = _start(tmp_path, "600", 20, "7", fault)
    try:
        output = _finish(job)
        assert job.returncode == 3, output[-3000:]
        lines = [(tmp_path / f"error-{rank}.txt").read_text().strip() for rank in range(2)]
        assert lines == [f"rank {rank}: rank 1 of 2: {message}" for rank in range(2)]
        assert "nanoae: rank" not in output  # no wait ran out
        assert _no_training_begun(tmp_path)
    finally:
        _end(job, tmp_path)


@needs_mpi
def test_ranks_given_the_same_data_train_to_the_end(tmp_path):
    # The check above refuses only what differs: the same job with one data set runs.
    job = _start(tmp_path, timeout="60", steps=8)
    try:
        output = _finish(job)
        assert job.returncode == 0, output[-3000:]
        assert sorted(path.name for path in tmp_path.glob("done-*")) == ["done-0", "done-1"]
        assert "persistent request" not in output  # MPI's warning for a request never freed
    finally:
        _end(job, tmp_path)


# The timeout: argument, environment, default.


def test_the_default_timeout_is_300_seconds(monkeypatch):
    monkeypatch.delenv("NANOAE_MPI_TIMEOUT", raising=False)
    assert mpi_timeout() == DEFAULT_TIMEOUT == 300.0
    monkeypatch.setenv("NANOAE_MPI_TIMEOUT", "  ")
    assert mpi_timeout() == 300.0


@given(seconds=st.floats(min_value=1e-3, max_value=1e9))
def test_the_timeout_is_read_from_the_environment(seconds):
    previous = os.environ.get("NANOAE_MPI_TIMEOUT")
    os.environ["NANOAE_MPI_TIMEOUT"] = repr(seconds)
    try:
        assert mpi_timeout() == seconds
        assert mpi_timeout(2.5) == 2.5  # an argument wins over the environment
    finally:
        if previous is None:
            del os.environ["NANOAE_MPI_TIMEOUT"]
        else:
            os.environ["NANOAE_MPI_TIMEOUT"] = previous


def test_inf_waits_forever(monkeypatch):
    monkeypatch.setenv("NANOAE_MPI_TIMEOUT", "inf")
    assert mpi_timeout() == math.inf
    assert mpi_timeout(math.inf) == math.inf


@pytest.mark.parametrize("value", ["abc", "-1", "0", "nan", "-inf", "3s"])
def test_a_bad_timeout_in_the_environment_names_the_variable_and_the_fix(monkeypatch, value):
    monkeypatch.setenv("NANOAE_MPI_TIMEOUT", value)
    message = re.escape(f"NANOAE_MPI_TIMEOUT='{value}' is not a positive number of seconds: set it to e.g. 300 (inf waits forever), or unset it for the default 300")
    with pytest.raises(ValueError, match=f"^{message}$"):
        mpi_timeout()
    # Before MPI is even imported: no MPI library is needed to hear about it.
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ValueError, match=f"^{message}$"):
        Communicator()


def test_nanoae_train_under_a_launcher_refuses_a_bad_timeout_with_exit_2(tmp_path):
    # What hydra puts in each rank's environment; the check runs before MPI would start.
    env = {**mpi_env("-1"), "PMI_SIZE": "2", "PMI_RANK": "0"}
    command = [sys.executable, "-m", "nanoae", "train", "--preset", "tutorial", "--steps", "1", "--out", "run"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=JOB_LIMIT)
    assert result.returncode == 2
    assert result.stderr == (
        "nanoae train: error: NANOAE_MPI_TIMEOUT='-1' is not a positive number of seconds: "
        "set it to e.g. 300 (inf waits forever), or unset it for the default 300\n"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", [0, -1, -0.5, math.nan, "300", True])
def test_a_bad_timeout_argument_names_the_fix(monkeypatch, value):
    message = re.escape(f"timeout={value!r} is not a positive number of seconds: pass e.g. timeout=300 (math.inf waits forever)")
    with pytest.raises(ValueError, match=f"^{message}$"):
        mpi_timeout(value)
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ValueError, match=f"^{message}$"):
        Communicator(timeout=value)


# The data fingerprint.


def test_fingerprint_of_a_small_array_by_hand():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    expected = hashlib.sha256(b"(3, 2) <f4 3" + x.tobytes()).hexdigest()
    assert data_fingerprint(x) == expected


class _CountingRows:
    """An array's rows, counting which are read (as a memory map's pages would be)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.shape, self.dtype, self.read = array, array.shape, array.dtype, set()

    def __getitem__(self, index):
        self.read.update(np.asarray(index).tolist())
        return self.array[index]


@given(rows=st.integers(1, 5000))
def test_the_fingerprint_reads_at_most_1024_rows_first_and_last_included(rows):
    data = _CountingRows(np.zeros((rows, 3), dtype=np.float32))
    data_fingerprint(data)
    assert len(data.read) == min(rows, 1024)
    assert {0, rows - 1} <= data.read


def test_the_fingerprint_sees_the_sampled_rows_shape_and_dtype_only():
    x = np.random.default_rng(0).random((5000, 4)).astype(np.float32)
    reference = data_fingerprint(x)
    # Rows 0 and 4999 are sampled; 2500 lies between the sampled rows 2497 and 2502.
    for row in (0, 4999, 2500):
        changed = x.copy()
        changed[row, 1] += 1
        assert (data_fingerprint(changed) != reference) == (row != 2500)
    assert data_fingerprint(x.astype(np.float64)) != reference
    assert data_fingerprint(x.reshape(2500, 8)) != reference
    assert data_fingerprint(x[::-1]) != reference  # another row order


def test_a_memory_map_and_a_scaled_rows_fingerprint_as_the_array_they_hold(tmp_path):
    raw = np.random.default_rng(1).integers(10, 200, size=(2000, 16), dtype=np.uint8)  # minmax then differs from unit
    np.save(tmp_path / "raw.npy", raw)
    mapped = np.load(tmp_path / "raw.npy", mmap_mode="r", allow_pickle=False)
    assert data_fingerprint(mapped) == data_fingerprint(raw)
    scaler = Scaler.fit(raw, "minmax")
    rows = np.arange(100, 1900)
    source = ScaledRows(mapped, rows=rows, scaler=scaler)
    assert data_fingerprint(source) == data_fingerprint(source.materialize())
    assert data_fingerprint(source) != data_fingerprint(ScaledRows(mapped, rows=rows, scaler=Scaler.fit(raw, "unit")))
