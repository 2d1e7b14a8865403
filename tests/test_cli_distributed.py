"""``mpiexec -n N nanoae train``: data-parallel from the command line, and ``--dtype``.

The MPI tests start ``mpiexec`` on ``python -m nanoae train`` (one BLAS thread per rank,
a limit so that a hang fails the test: tests/mpi_helpers.py) and check what the job prints and
writes: rank 0 alone prints and writes, a checkpoint resumes with any number of ranks,
and a check that fails on one rank ends every rank with one message. The launcher's
environment and the missing-mpi4py message are checked in this process, with mpi4py
blocked (no MPI is started inside pytest).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mpi_helpers import mpi_env, mpiexec_path, needs_mpi, run_job

from nanoae.checkpoint import load_checkpoint
from nanoae.cli import main
from nanoae.cli.parallel import job_communicator, launcher_size


def _nanoae(*args) -> list[str]:
    return [sys.executable, "-m", "nanoae", "train", *map(str, args)]


def mpiexec(ranks: int, *args, cwd: Path) -> subprocess.CompletedProcess:
    """``mpiexec -n ranks nanoae train args`` in ``cwd``."""
    command = [mpiexec_path(), "-n", str(ranks), *_nanoae(*args)]
    return run_job(command, cwd=cwd, env=mpi_env())


def one_process(*args, cwd: Path) -> subprocess.CompletedProcess:
    """``nanoae train args`` without a launcher."""
    return run_job(_nanoae(*args), cwd=cwd, env=mpi_env())


def _ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def _params(run: Path) -> np.ndarray:
    return load_checkpoint(run / "checkpoint.npz", backend="numpy").model.arena.values


def _tree(directory: Path) -> list[str]:
    return sorted(path.relative_to(directory).as_posix() for path in directory.rglob("*"))


def _own_data(path: Path, rows: int = 240, width: int = 12) -> Path:
    """A small own data file: integers 0..255 (scaled to [0, 1] by --scale auto)."""
    np.save(path, np.random.default_rng(3).integers(0, 256, (rows, width)).astype(np.uint8))
    return path


RUN_FILES = {"config.json", "metrics.csv", "checkpoint.npz"}


# ---- the launcher, read from the environment (no MPI started) ----------------------------
def test_the_launchers_process_count_is_read_from_its_environment():
    assert launcher_size({}) is None  # no launcher
    assert launcher_size({"PMI_SIZE": "3", "PMI_RANK": "1"}) == 3  # MPICH's hydra (what mpiexec sets here)
    assert launcher_size({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "0"}) == 4  # Open MPI
    assert launcher_size({"PMIX_RANK": "0"}) == 0  # PMIx alone: MPI must say
    assert launcher_size({"PMI_SIZE": "1"}) == 1
    assert launcher_size({"PMI_SIZE": "many"}) is None  # not a launcher's value


def test_one_process_under_a_launcher_trains_as_without_one(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # it must not even be imported
    assert job_communicator({"PMI_SIZE": "1", "PMI_RANK": "0"}) is None
    monkeypatch.setenv("PMI_SIZE", "1")
    data = _own_data(tmp_path / "rows.npy")
    assert main(["train", "--data", str(data), "--layers", "6,3", "--steps", "3", "--batch-size", "40", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["ranks"] == 1
    assert "step 3: final training loss" in capsys.readouterr().out


def test_a_launch_of_several_processes_without_mpi4py_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setenv("PMI_RANK", "0")
    data = _own_data(tmp_path / "rows.npy")
    code = main(["train", "--data", str(data), "--layers", "6,3", "--steps", "3", "--out", str(tmp_path / "run")])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        "nanoae train: error: nanoae train was started by an MPI launcher as one of 2 processes, but mpi4py is not "
        'installed: pip install "nanoae[mpi]" (mpi4py and an MPI library), or start nanoae train without the launcher'
    )
    assert _tree(tmp_path) == ["rows.npy"]


# ---- --dtype (one process) -----------------------------------------------------------------
def test_dtype_float64_trains_records_and_checkpoints_float64(tmp_path):
    data = _own_data(tmp_path / "rows.npy")
    common = ["train", "--data", str(data), "--layers", "6,3", "--steps", "6", "--batch-size", "40", "--quiet"]
    assert main([*common, "--dtype", "float64", "--out", str(tmp_path / "f64")]) == 0
    assert main([*common, "--out", str(tmp_path / "f32")]) == 0
    config = json.loads((tmp_path / "f64" / "config.json").read_text())
    assert config["dtype"] == "float64" and json.loads((tmp_path / "f32" / "config.json").read_text())["dtype"] == "float32"
    checkpoint = load_checkpoint(tmp_path / "f64" / "checkpoint.npz", backend="numpy")
    assert checkpoint.model.arena.values.dtype == np.float64 and checkpoint.extra["config"]["dtype"] == "float64"
    assert checkpoint.step == 6
    # The own rows (read as float32 and scaled a batch at a time in float32) reach the
    # float64 model as the same batches: the two runs differ by float32's rounding only,
    # far less than the 6 steps moved the parameters.
    f64, f32 = checkpoint.model.arena.values, _params(tmp_path / "f32")
    assert f32.dtype == np.float32
    assert 0.0 < np.abs(f64 - f32).max() < 1e-5


def test_dtype_is_the_checkpoints_on_resume_and_another_is_refused(tmp_path, capsys):
    data = _own_data(tmp_path / "rows.npy")
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--layers", "6,3", "--steps", "3", "--batch-size", "40", "--out", str(run), "--quiet"]) == 0
    before = (run / "checkpoint.npz").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(run / "checkpoint.npz"), "--steps", "6", "--dtype", "float64", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "--dtype float64 (the run's: float32)" in error and "start a new run with another --out" in error
    assert (run / "checkpoint.npz").read_bytes() == before
    assert main(["train", "--resume", str(run / "checkpoint.npz"), "--steps", "6", "--dtype", "float32", "--quiet"]) == 0
    resumed = load_checkpoint(run / "checkpoint.npz", backend="numpy")
    assert resumed.step == 6 and resumed.model.arena.values.dtype == np.float32


# ---- under mpiexec ---------------------------------------------------------------------------
@needs_mpi
@pytest.mark.parametrize(("model", "what"), [(["--layers", "32"], "layers 32"), (["--preset", "tutorial"], "tutorial")])
def test_mpiexec_trains_mnist_with_rank_0_alone_printing_and_writing(tmp_path, mnist_dir, model, what):
    work = tmp_path / "work"
    work.mkdir()
    options = ["--data", mnist_dir, *model, "--steps", "6", "--batch-size", "64", "--log-every", "2", "--eval-every", "3", "--checkpoint-every", "3"]
    result = mpiexec(2, *options, "--out", "run", cwd=work)
    _ok(result)
    # Rank 0's files, nothing else anywhere (the other rank writes nothing at all).
    assert set(_tree(work)) - {"run/reconstructions.png", "run/loss.png"} == {"run", *(f"run/{name}" for name in RUN_FILES)}
    assert result.stdout.count("step 6: final training loss") == 1 and result.stdout.count("run directory:") == 1
    assert result.stderr.count(f"training {what} for 6 steps of batch 64 on 2 ranks") == 1
    assert result.stderr.count("step 6/6") == 1 and result.stderr.count("data: ") == 1
    config = json.loads((work / "run" / "config.json").read_text())
    checkpoint = load_checkpoint(work / "run" / "checkpoint.npz", backend="numpy")
    assert config["ranks"] == 2 and checkpoint.extra["config"]["ranks"] == 2 and checkpoint.step == 6
    assert [line.split(",")[0] for line in (work / "run" / "metrics.csv").read_text().splitlines()[1:]] == ["2", "4", "6"]
    # The same steps as one process, up to float32 rounding of the shards' weighted sum
    # (measured: 7.5e-8 after 6 steps; a gradient of one shard alone differs by ~1e-3).
    _ok(one_process(*options, "--out", "one", "--quiet", cwd=tmp_path))
    difference = np.abs(checkpoint.model.arena.values - _params(tmp_path / "one")).max()
    assert difference <= 1e-6, difference


@needs_mpi
def test_a_checkpoint_of_2_ranks_resumes_on_3_and_on_1_as_one_process_in_float64(tmp_path):
    data = _own_data(tmp_path / "rows.npy")
    first = ["--data", data, "--dtype", "float64", "--layers", "8,3", "--batch-size", "50", "--log-every", "5", "--quiet"]
    _ok(mpiexec(2, *first, "--steps", "10", "--out", "two", cwd=tmp_path))
    _ok(mpiexec(3, "--resume", "two/checkpoint.npz", "--steps", "20", "--out", "three", "--quiet", cwd=tmp_path))
    _ok(one_process("--resume", "two/checkpoint.npz", "--steps", "20", "--out", "one", cwd=tmp_path))
    _ok(one_process(*first, "--steps", "20", "--out", "alone", cwd=tmp_path))
    alone = _params(tmp_path / "alone")
    assert alone.dtype == np.float64
    # 10 more steps moved the parameters by far more than the tolerance (measured: 9.9e-3
    # moved; 1.1e-16 from one process on 3 ranks and on 1).
    assert np.abs(alone - _params(tmp_path / "two")).max() > 1e-4
    for run, ranks in (("three", 3), ("one", 1)):
        checkpoint = load_checkpoint(tmp_path / run / "checkpoint.npz", backend="numpy")
        assert checkpoint.step == 20 and checkpoint.extra["config"]["ranks"] == ranks
        assert np.abs(checkpoint.model.arena.values - alone).max() <= 1e-12, run
    assert json.loads((tmp_path / "two" / "config.json").read_text())["ranks"] == 2


@needs_mpi
def test_own_data_on_3_ranks_takes_the_steps_of_one_process(tmp_path):
    # 50 rows a step on 3 ranks: shards of 17, 17 and 16 rows, read and scaled from the
    # memory-mapped file a batch at a time (float32). Measured: 6.0e-8 from one process
    # after 8 steps, while steps 5 to 8 alone moved the parameters by 4.0e-3.
    data = _own_data(tmp_path / "rows.npy")
    options = ["--data", data, "--layers", "8,3", "--batch-size", "50", "--steps", "8", "--quiet"]
    work = tmp_path / "work"
    work.mkdir()
    result = mpiexec(3, *options, "--out", "run", cwd=work)
    _ok(result)
    assert result.stdout.count("step 8: final training loss") == 1 and result.stderr == ""
    assert set(_tree(work)) - {"run/codes.png", "run/loss.png"} == {"run", *(f"run/{name}" for name in RUN_FILES)}
    _ok(one_process(*options, "--out", "alone", cwd=tmp_path))
    difference = np.abs(_params(work / "run") - _params(tmp_path / "alone")).max()
    assert difference <= 1e-6, difference
    assert json.loads((work / "run" / "config.json").read_text())["ranks"] == 3


@needs_mpi
def test_a_run_directory_refused_on_rank_0_alone_stops_every_rank_with_one_message(tmp_path):
    data = _own_data(tmp_path / "rows.npy")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("not a run")
    result = mpiexec(2, "--data", data, "--layers", "6,3", "--steps", "3", "--out", "taken", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == [line for line in errors if line.startswith("nanoae train: error: taken ")] and len(errors) == 1
    assert "--overwrite" in errors[0]
    assert _tree(tmp_path) == ["rows.npy", "taken", "taken/notes.txt"]


@needs_mpi
def test_a_check_failing_on_rank_1_alone_is_reported_once_by_rank_0(tmp_path):
    # Two programs in one job (MPMD): rank 1 is given a file that is not there.
    data = _own_data(tmp_path / "rows.npy")
    options = ["--layers", "6,3", "--steps", "3", "--out", "run"]
    command = [mpiexec_path(), "-n", "1", *_nanoae("--data", data, *options), ":", "-n", "1", *_nanoae("--data", "missing.npy", *options)]
    result = run_job(command, cwd=tmp_path, env=mpi_env())
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == ["nanoae train: error: rank 1 of 2: missing.npy does not exist: check the path given to --data"]
    assert _tree(tmp_path) == ["rows.npy"]


@needs_mpi
@pytest.mark.parametrize("preset", ["vae", "denoising"])
def test_presets_that_draw_noise_are_refused_on_every_rank_before_anything_is_written(tmp_path, preset):
    data = tmp_path / "images.npy"
    np.save(data, np.random.default_rng(0).random((64, 784)).astype(np.float32))
    result = mpiexec(2, "--preset", preset, "--data", data, "--steps", "2", "--batch-size", "16", "--out", "run", cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith(f"nanoae train: error: --preset {preset} draws random noise each training step")
    assert "start nanoae train without mpiexec" in errors[0]
    assert _tree(tmp_path) == ["images.npy"]


_FAILING_CHECKPOINT = """
import sys
from mpi4py import MPI
from nanoae import callbacks
from nanoae.cli import main

write = callbacks.Checkpointer.on_step_end

def full_disk_on_rank_0(self, state):
    if MPI.COMM_WORLD.Get_rank() == 0 and state.step == 2:
        raise OSError(28, "No space left on device", str(self.path))
    return write(self, state)

callbacks.Checkpointer.on_step_end = full_disk_on_rank_0
sys.exit(main(sys.argv[1:]))
"""


@needs_mpi
def test_an_error_on_rank_0_during_training_ends_every_rank(tmp_path):
    data = _own_data(tmp_path / "rows.npy")
    args = ["train", "--data", str(data), "--layers", "6,3", "--steps", "50", "--batch-size", "40", "--checkpoint-every", "1", "--out", "run", "--quiet"]
    command = [mpiexec_path(), "-n", "2", sys.executable, "-c", _FAILING_CHECKPOINT, *args]
    result = run_job(command, cwd=tmp_path, env=mpi_env())
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("nanoae train: error")]
    assert errors == ["nanoae train: error on rank 0 of 2: [Errno 28] No space left on device: 'run/checkpoint.npz'; ending every rank"]
    assert load_checkpoint(tmp_path / "run" / "checkpoint.npz").step == 1  # the last one written


_RECORDING_SHARDS = """
import os, sys
from mpi4py import MPI
from nanoae.models import Autoencoder
from nanoae.cli import main

step = Autoencoder._train_step
rows = []

def recording(self, x, target):
    rows.append(int(x.shape[0]))
    return step(self, x, target)

Autoencoder._train_step = recording
code = main(sys.argv[2:])
with open(os.path.join(sys.argv[1], f"rank{MPI.COMM_WORLD.Get_rank()}.txt"), "w") as out:
    out.write(" ".join(map(str, rows)))
sys.exit(code)
"""


@needs_mpi
def test_each_rank_trains_on_its_shard_of_every_global_batch(tmp_path):
    # A run that did not split the batch would train all 50 rows on each rank (and still
    # match one process): the rows each rank's training steps saw show the split.
    data = _own_data(tmp_path / "rows.npy")
    seen = tmp_path / "seen"
    seen.mkdir()
    args = ["train", "--data", str(data), "--layers", "6,3", "--steps", "4", "--batch-size", "50", "--out", "run", "--quiet"]
    command = [mpiexec_path(), "-n", "3", sys.executable, "-c", _RECORDING_SHARDS, str(seen), *args]
    _ok(run_job(command, cwd=tmp_path, env=mpi_env()))
    assert [(seen / f"rank{rank}.txt").read_text() for rank in range(3)] == ["17 17 17 17", "17 17 17 17", "16 16 16 16"]


@needs_mpi
def test_ranks_started_with_different_options_all_stop_before_anything_is_written(tmp_path):
    data = _own_data(tmp_path / "rows.npy")
    options = ["--data", data, "--layers", "6,3", "--steps", "3", "--out", "run"]
    command = [mpiexec_path(), "-n", "1", *_nanoae(*options), ":", "-n", "1", *_nanoae(*options, "--seed", "1")]
    result = run_job(command, cwd=tmp_path, env=mpi_env())
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == [
        "nanoae train: error: ranks [1] of 2 were started with a different configuration (options, data or checkpoint) "
        "than rank 0: start every rank with the same command, seed and data"
    ]
    assert _tree(tmp_path) == ["rows.npy"]


@needs_mpi
def test_a_diverging_run_stops_every_rank_at_the_same_step_with_exit_3(tmp_path):
    # Every rank sees the combined (global) loss, so all stop at the same step; rank 0 says so once.
    data = _own_data(tmp_path / "rows.npy")
    options = ["--data", data, "--layers", "6,3", "--optimizer", "sgd", "--lr", "1e30", "--steps", "20", "--batch-size", "40", "--out", "run", "--quiet"]
    result = mpiexec(2, *options, cwd=tmp_path)
    assert result.returncode == 3
    lines = [line for line in result.stderr.splitlines() if line.startswith("nanoae:")]
    assert len(lines) == 1 and lines[0].startswith("nanoae: training stopped at step 1: training step 2 was not applied")
    assert _tree(tmp_path / "run") == ["config.json", "metrics.csv"]


def _mpi_is_the_mpich_wheel() -> bool:
    import importlib.metadata

    try:
        return bool(importlib.metadata.version("mpich"))
    except importlib.metadata.PackageNotFoundError:
        return False


@needs_mpi
@pytest.mark.skipif(not _mpi_is_the_mpich_wheel(), reason="Open MPI's variables stand in for another library only beside MPICH")
def test_a_launcher_of_another_mpi_library_is_refused_not_run_as_independent_processes(tmp_path):
    # Open MPI's variables with mpi4py on MPICH: MPI sees a job of 1 where the launcher says 2,
    # so each process would otherwise train alone and write the same run directory.
    data = _own_data(tmp_path / "rows.npy")
    env = {**mpi_env(), "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0"}
    command = _nanoae("--data", data, "--layers", "6,3", "--steps", "3", "--out", "run")
    result = run_job(command, cwd=tmp_path, env=env)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("nanoae train: error")]
    assert errors == [
        "nanoae train: error: the MPI launcher started 2 processes, but MPI sees 1 in this job: mpiexec and mpi4py come "
        "from different MPI libraries; start nanoae with the mpiexec of the MPI mpi4py was built with (the one that "
        'pip install "nanoae[mpi]" puts beside this Python)'
    ]
    assert _tree(tmp_path) == ["rows.npy"]


_AGREEING = """
import os, sys
from nanoae.distributed import Communicator

comm = Communicator()
passed = comm.all_ok(None)
# Ranks 1 and 2 fail, with messages of different lengths (one not ASCII); rank 0 passes.
failed = comm.all_ok(None if comm.rank == 0 else f"rank {comm.rank} failed: données " * comm.rank)
with open(os.path.join(sys.argv[1], f"rank{comm.rank}.txt"), "w", encoding="utf-8") as out:
    out.write(repr((passed, failed)))
"""


@needs_mpi
def test_all_ok_gives_every_rank_the_lowest_failing_ranks_message(tmp_path):
    command = [mpiexec_path(), "-n", "3", sys.executable, "-c", _AGREEING, str(tmp_path)]
    _ok(run_job(command, env=mpi_env()))
    expected = repr((None, (1, "rank 1 failed: données ")))
    assert [(tmp_path / f"rank{rank}.txt").read_text(encoding="utf-8") for rank in range(3)] == [expected] * 3
