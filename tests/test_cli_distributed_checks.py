"""``mpiexec -n N nanoae train``: the checks before training, each failure said once.

Errors found before MPI starts (the command line, mpi4py missing or broken, MPI failing
to start, a bad NANOAE_MPI_TIMEOUT) are printed by one process, not N; a check that
fails on one rank, a bug included, ends every rank with that error's exit code (2 for
bad input, 1 for a bug); ranks given different data of the same shape are told apart by
the data's fingerprint, while the same data under another path trains. The launcher's
environment and mpi4py's failures are checked in this process with a stand-in mpi4py
(no MPI is started inside pytest); the rest starts ``mpiexec`` with one BLAS thread a
rank, ``NANOAE_MPI_TIMEOUT=30`` and a subprocess timeout, so a hang fails the test.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from mpi_helpers import LAUNCHER_VARIABLES, mpi_env, mpiexec_path, needs_mpi, run_job
from test_cli_distributed import _nanoae as _train
from test_cli_distributed import _own_data, _tree

from nanoae.checkpoint import load_checkpoint
from nanoae.cli import main
from nanoae.cli.parallel import HOST_FIELDS, job_text, prints_for_its_host, prints_for_the_job
from nanoae.distributed import TIMEOUT_EXIT_CODE

HINT = 'pip install "nanoae[mpi]" (mpi4py and an MPI library), or start nanoae train without the launcher'


def _env(**extra: str) -> dict:
    """A job's environment (tests/mpi_helpers.py), with ``extra`` on top."""
    return {**mpi_env(), **extra}


def _run(command: list, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return run_job(command, cwd=cwd, env=_env(**env))


def mpiexec(ranks: int, *args, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return _run([mpiexec_path(), "-n", str(ranks), *_train(*args)], cwd, **env)


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if "error" in line]


def _image_folder(path: Path, seed: int, count: int = 40) -> Path:
    """``count`` 8x8 grey PNGs named alike in every folder; their pixels drawn from ``seed``."""
    image = pytest.importorskip("PIL.Image")
    path.mkdir()
    pixels = np.random.default_rng(seed).integers(0, 256, (count, 8, 8)).astype(np.uint8)
    for index, picture in enumerate(pixels):
        image.fromarray(picture).save(path / f"digit{index:03d}.png")
    return path


# ---- which process prints an error found before MPI starts ---------------------------------
def test_rank_0_prints_for_the_job_and_the_first_process_of_each_host_for_its_host():
    assert prints_for_the_job({}) and prints_for_its_host({})  # no launcher: the one process
    assert prints_for_the_job({"PMI_RANK": "0"}) and not prints_for_the_job({"PMI_RANK": "3"})
    assert not prints_for_the_job({"OMPI_COMM_WORLD_RANK": "1"}) and not prints_for_the_job({"PMIX_RANK": "2"})
    # hydra numbers each host's processes from 0: rank 4 is the first on the second host
    assert prints_for_its_host({"PMI_RANK": "4", "MPI_LOCALRANKID": "0"})
    assert not prints_for_its_host({"PMI_RANK": "5", "MPI_LOCALRANKID": "1"})
    assert prints_for_its_host({"OMPI_COMM_WORLD_RANK": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "0"})
    assert not prints_for_its_host({"PMI_RANK": "2"})  # no local rank given: rank 0 alone


def _launched_as(monkeypatch, rank: int, local_rank: int, size: int = 4) -> None:
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PMI_SIZE", str(size))
    monkeypatch.setenv("PMI_RANK", str(rank))
    monkeypatch.setenv("MPI_LOCALRANKID", str(local_rank))


def test_a_refused_command_line_is_printed_by_rank_0_alone(monkeypatch, capsys):
    _launched_as(monkeypatch, rank=2, local_rank=2)
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--steps", "zero"])
    assert stopped.value.code == 2 and capsys.readouterr() == ("", "")
    _launched_as(monkeypatch, rank=0, local_rank=0)
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--steps", "zero"])
    assert stopped.value.code == 2
    assert "argument --steps: expected a whole number, got 'zero'" in capsys.readouterr().err


@pytest.mark.parametrize(("rank", "local_rank", "printed"), [(0, 0, True), (1, 1, False), (2, 0, True)])
def test_a_missing_mpi4py_is_said_once_per_host(monkeypatch, tmp_path, capsys, rank, local_rank, printed):
    # Ranks 0 and 1 on the first host, rank 2 the first on the second: each host says it once.
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    _launched_as(monkeypatch, rank, local_rank)
    data = _own_data(tmp_path / "rows.npy")
    assert main(["train", "--data", str(data), "--layers", "6,3", "--steps", "3", "--out", str(tmp_path / "run")]) == 2
    expected = f"nanoae train: error: nanoae train was started by an MPI launcher as one of 4 processes, but mpi4py is not installed: {HINT}\n"
    assert capsys.readouterr().err == (expected if printed else "")
    assert _tree(tmp_path) == ["rows.npy"]


def _broken_mpi4py(error: Exception) -> types.ModuleType:
    """A stand-in mpi4py whose ``MPI`` raises ``error`` on import, as a real one does when
    its MPI library is missing (ImportError) or fails to start (RuntimeError)."""
    module = types.ModuleType("mpi4py")

    def missing(name):
        raise error

    module.__getattr__ = missing
    return module


@pytest.mark.parametrize(
    "error",
    [ImportError("libmpi.so.12: cannot open shared object file: No such file or directory"), RuntimeError("MPI_Init_thread failed")],
    ids=["library-missing", "start-up-fails"],
)
def test_an_mpi4py_that_is_there_but_fails_is_said_with_its_cause(monkeypatch, tmp_path, capsys, error):
    monkeypatch.setitem(sys.modules, "mpi4py", _broken_mpi4py(error))
    _launched_as(monkeypatch, rank=0, local_rank=0, size=2)
    data = _own_data(tmp_path / "rows.npy")
    assert main(["train", "--data", str(data), "--layers", "6,3", "--steps", "3", "--out", str(tmp_path / "run")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("nanoae train: error: nanoae train was started by an MPI launcher as one of 2 processes, but ")
    assert f"({type(error).__name__}: {error})" in lines[0] and lines[0].endswith(HINT)
    assert "not installed" not in lines[0]
    assert _tree(tmp_path) == ["rows.npy"]


# ---- what the ranks compare ------------------------------------------------------------------
def test_the_job_text_holds_the_datas_content_and_not_where_each_host_found_it():
    comm = object()  # job_text needs only to know that a job has one
    rows = np.arange(2000 * 3, dtype=np.float32).reshape(2000, 3)
    config = {"seed": 0, "batch_size": 64, "data_path": "/mnt/a/rows.npy", "data_dir": None, "data_source": "a", "ops": "x", "command": "nanoae train"}
    elsewhere = {**config, "data_path": "/scratch/rows.npy", "data_source": "b", "ops": "y", "command": "nanoae train --quiet"}
    assert set(elsewhere) - {key for key in config if config[key] == elsewhere[key]} <= set(HOST_FIELDS)
    assert job_text(comm, config, rows) == job_text(comm, elsewhere, rows.copy())
    assert job_text(None, config, rows) is None  # one process: nothing to compare
    changed = rows.copy()
    changed[-1, 0] += 1  # the last row is always among the sampled ones
    assert job_text(comm, config, changed) != job_text(comm, config, rows)
    assert job_text(comm, {**config, "seed": 1}, rows) != job_text(comm, config, rows)


# ---- what the help and the run say about memory and the deadline -------------------------------
def test_float64_on_own_data_says_the_memory_its_rows_take(tmp_path, capsys):
    data = _own_data(tmp_path / "rows.npy", rows=100_000, width=12)  # 90,000 training rows after the 10 % hold-out
    common = ["train", "--data", str(data), "--layers", "6,3", "--steps", "1", "--batch-size", "40"]
    assert main([*common, "--dtype", "float64", "--out", str(tmp_path / "f64")]) == 0
    assert "--dtype float64: the 90,000 x 12 training rows are held in memory as float64, 8.2 MiB in each process" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "f32")]) == 0  # float32 reads them a batch at a time: nothing to say
    assert "held in memory" not in capsys.readouterr().err


def test_the_help_names_float64s_memory_and_the_deadline_rank_0s_evaluation_counts_against(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "float64 holds own data's training rows in memory as float64" in text
    assert "a uint8 file needs 8 times its size (12 while it is converted), in every process" in text
    for option, waits in (("--eval-every", "while rank 0 evaluates"), ("--checkpoint-every", "while rank 0 writes it")):
        described = text[text.index(f"{option} {option[2:].upper().replace('-', '_')} ") :][:400]
        assert f"Under mpiexec the other ranks wait {waits}, at most $NANOAE_MPI_TIMEOUT seconds (default: 300)" in described, option


# ---- under mpiexec: one line for the job ----------------------------------------------------
@needs_mpi
def test_a_refused_option_under_mpiexec_is_printed_once(tmp_path):
    result = mpiexec(3, "--steps", "zero", cwd=tmp_path)
    assert result.returncode == 2
    assert _error_lines(result) == ["nanoae train: error: argument --steps: expected a whole number, got 'zero'"]
    assert result.stderr.count("usage: nanoae train") == 1
    assert _tree(tmp_path) == []


@needs_mpi
def test_a_bad_mpi_timeout_under_mpiexec_is_printed_once(tmp_path):
    data = _own_data(tmp_path / "rows.npy")
    result = mpiexec(3, "--data", data, "--layers", "6,3", "--steps", "3", "--out", "run", cwd=tmp_path, NANOAE_MPI_TIMEOUT="soon")
    assert result.returncode == 2
    assert _error_lines(result) == [
        "nanoae train: error: NANOAE_MPI_TIMEOUT='soon' is not a positive number of seconds: set it to e.g. 300 "
        "(inf waits forever), or unset it for the default 300"
    ]
    assert _tree(tmp_path) == ["rows.npy"]


@needs_mpi
def test_a_batch_smaller_than_the_ranks_is_refused_on_every_rank_before_anything_is_written(tmp_path):
    data = _own_data(tmp_path / "rows.npy")
    result = mpiexec(3, "--data", data, "--layers", "6,3", "--steps", "3", "--batch-size", "2", "--out", "run", cwd=tmp_path)
    assert result.returncode == 2
    assert _error_lines(result) == ["nanoae train: error: --batch-size 2 is smaller than the 3 ranks: give --batch-size 3 or more"]
    assert _tree(tmp_path) == ["rows.npy"]


# ---- the data each rank reads: its content compared, not its path ---------------------------------
_OPTIONS = ("--layers", "6,3", "--steps", "4", "--batch-size", "16", "--quiet")


def _two_programs(first_data: Path, second_data: Path, out: str) -> list[str]:
    """An MPMD job: rank 0 trains on first_data, rank 1 on second_data, all else alike."""
    return [
        mpiexec_path(), "-n", "1", *_train("--data", first_data, *_OPTIONS, "--out", out),
        ":", "-n", "1", *_train("--data", second_data, *_OPTIONS, "--out", out),
    ]  # fmt: skip


@needs_mpi
def test_ranks_given_image_folders_of_other_pictures_stop_before_anything_is_written(tmp_path):
    # Same names, count and size, so the same config but for the folder's path (which may
    # differ between hosts): only the data's fingerprint tells the pictures apart.
    first, second = _image_folder(tmp_path / "dirA", seed=1), _image_folder(tmp_path / "dirB", seed=2)
    result = _run(_two_programs(first, second, "run"), tmp_path)
    assert result.returncode == 2
    assert _error_lines(result) == [
        "nanoae train: error: ranks [1] of 2 were started with a different configuration (options, data or checkpoint) "
        "than rank 0: start every rank with the same command, seed and data"
    ]
    assert not (tmp_path / "run").exists()


@needs_mpi
def test_the_same_pictures_under_another_path_train_as_one_process(tmp_path):
    # As on two hosts that mount the data at different places: the content agrees, so it trains.
    first = _image_folder(tmp_path / "dirA", seed=1)
    copy = shutil.copytree(first, tmp_path / "elsewhere" / "dirA")
    result = _run(_two_programs(first, copy, "run"), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    alone = _run(_train("--data", first, *_OPTIONS, "--out", "alone"), tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    two = load_checkpoint(tmp_path / "run" / "checkpoint.npz", backend="numpy")
    assert two.step == 4 and two.extra["config"]["ranks"] == 2
    # float32 rounding of the shards' weighted sum only (the 4 steps moved them far more)
    one = load_checkpoint(tmp_path / "alone" / "checkpoint.npz", backend="numpy").model.arena.values
    assert np.abs(two.model.arena.values - one).max() <= 1e-6


_FAILING_ON_ONE_RANK = """
import os, sys
import nanoae.cli.parallel
import nanoae.cli.train
from nanoae.cli import main

where, what = sys.argv[1], sys.argv[2]

def failing(*args, **kwargs):
    if what == "read":  # one host's copy of the data cannot be read
        raise OSError(5, "Input/output error", "rows.npy")
    raise ZeroDivisionError(f"a bug on rank {where} (simulated)")

if os.environ["PMI_RANK"] == where:
    if what == "read":
        nanoae.cli.parallel.data_fingerprint = failing
    else:
        nanoae.cli.train._total_steps = failing
sys.exit(main(sys.argv[3:]))
"""


def _failing_job(tmp_path: Path, rank: int, what: str) -> subprocess.CompletedProcess:
    data = _own_data(tmp_path / "rows.npy")
    args = ["train", "--data", str(data), "--layers", "6,3", "--steps", "3", "--batch-size", "40", "--out", "run", "--quiet"]
    return _run([mpiexec_path(), "-n", "2", sys.executable, "-c", _FAILING_ON_ONE_RANK, str(rank), what, *args], tmp_path)


@needs_mpi
def test_a_data_read_failing_on_one_rank_while_fingerprinting_ends_every_rank_with_its_message(tmp_path):
    # Among the rank-wide checks: every rank exits 2 at once, not after the deadline with 75.
    result = _failing_job(tmp_path, 1, "read")
    assert result.returncode == 2, result.stderr[-3000:]
    assert _error_lines(result) == ["nanoae train: error: rank 1 of 2: [Errno 5] Input/output error: 'rows.npy'"]
    assert result.returncode != TIMEOUT_EXIT_CODE and "waited" not in result.stderr
    assert _tree(tmp_path) == ["rows.npy"]


@needs_mpi
def test_a_bug_on_rank_1_during_the_checks_ends_every_rank_with_exit_1(tmp_path):
    result = _failing_job(tmp_path, 1, "bug")
    assert result.returncode == 1, result.stderr[-3000:]
    assert _error_lines(result) == [
        "nanoae train: error: rank 1 of 2: ZeroDivisionError: a bug on rank 1 (simulated) (an error inside nanoae; "
        "its traceback is on that rank's output)"
    ]
    assert result.stderr.count("Traceback (most recent call last)") == 1  # rank 1's own
    assert _tree(tmp_path) == ["rows.npy"]


@needs_mpi
def test_a_bug_on_rank_0_during_the_checks_ends_every_rank_with_exit_1(tmp_path):
    result = _failing_job(tmp_path, 0, "bug")
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.count("Traceback (most recent call last)") == 1
    assert "ZeroDivisionError: a bug on rank 0 (simulated)" in result.stderr
    assert _error_lines(result) == []  # the traceback is rank 0's report; rank 1 exits silent
    assert _tree(tmp_path) == ["rows.npy"]
