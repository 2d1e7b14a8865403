"""Data-parallel training on MPI: N ranks take the steps one process takes.

The equivalence tests start ``mpiexec -n N`` on tests/mpi_fit_script.py (one BLAS thread
per rank) and compare rank 0's parameters after 20 steps with one process's fit of the
same seed and global batch. The sharding and the refusals are checked in this process,
which never imports mpi4py (no MPI is started inside pytest).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nanoae import presets
from nanoae.distributed import Communicator, shard_bounds

pytestmark = pytest.mark.mpi

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().parent / "mpi_fit_script.py"
STEPS = 20


def _mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def _has_mpi4py() -> bool:
    import importlib.util

    return importlib.util.find_spec("mpi4py") is not None


needs_mpi = pytest.mark.skipif(
    _mpiexec() is None or not _has_mpi4py(), reason='needs mpi4py and mpiexec: pip install "nanoae[mpi]"'
)


def _data(dtype: str) -> np.ndarray:
    return np.random.default_rng(7).random((300, 784)).astype(dtype)  # what the script trains on


def _run(ranks: int, tmp_path: Path, dtype: str, batch_size: int, preset: str = "tutorial", seed: str = "0"):
    out = tmp_path / f"params-{ranks}-{dtype}-{batch_size}-{preset}.npy"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    command = [_mpiexec(), "-n", str(ranks), sys.executable, str(SCRIPT), str(out), dtype, str(batch_size), str(STEPS), preset, seed]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    return result, out


def _one_process(dtype: str, batch_size: int, preset: str = "tutorial"):
    model = getattr(presets, preset)(seed=0, dtype=dtype)
    history = model.fit(_data(dtype), steps=STEPS, batch_size=batch_size, log_every=5)
    return model, np.asarray(history, dtype=np.float64)


@needs_mpi
@pytest.mark.parametrize(
    ("ranks", "batch_size", "preset"),
    [(1, 64, "tutorial"), (2, 64, "tutorial"), (3, 64, "tutorial"), (2, 50, "tutorial"), (3, 50, "tutorial"),
     (3, 50, "sparse"), (2, 50, "weight_decay")],
)
def test_ranks_take_the_steps_of_one_process_in_float64(tmp_path, ranks, batch_size, preset):
    result, out = _run(ranks, tmp_path, "float64", batch_size, preset)
    assert result.returncode == 0, result.stderr[-3000:]
    reference, losses = _one_process("float64", batch_size, preset)
    start = getattr(presets, preset)(seed=0, dtype="float64").arena.values
    params = np.load(out, allow_pickle=False)
    # The steps moved the parameters (by 8e-6 to 2e-4) far beyond the tolerance, so a missing or
    # misweighted gradient exchange (e.g. a plain mean of 17-, 17- and 16-row shards) fails.
    assert np.abs(reference.arena.values - start).max() > 1e-6
    assert np.abs(params - reference.arena.values).max() <= 1e-12
    np.testing.assert_allclose(np.load(out.with_name(out.stem + "-loss.npy"), allow_pickle=False), losses, rtol=0, atol=1e-12)


@needs_mpi
def test_float32_ranks_stay_within_rounding_of_one_process(tmp_path):
    # Measured: after 20 steps at batch 50, the largest difference is 7.5e-9 (2 ranks) to
    # 1.5e-8 (3 ranks); the losses differ by 3e-8. The parameters moved by about 1.9e-4.
    result, out = _run(3, tmp_path, "float32", 50)
    assert result.returncode == 0, result.stderr[-3000:]
    reference, losses = _one_process("float32", 50)
    params = np.load(out, allow_pickle=False)
    assert params.dtype == np.float32
    assert np.abs(params - reference.arena.values).max() <= 1e-7
    np.testing.assert_allclose(np.load(out.with_name(out.stem + "-loss.npy"), allow_pickle=False), losses, rtol=0, atol=1e-6)


@needs_mpi
def test_ranks_started_with_different_seeds_all_stop_with_one_clear_error(tmp_path):
    result, out = _run(2, tmp_path, "float64", 64, seed="rank")
    assert result.returncode != 0
    reports = sorted(out.parent.glob(out.stem + "-rank*.txt"))
    lines = [path.read_text().strip() for path in reports]
    assert [line.split(":")[0] for line in lines] == ["rank 0", "rank 1"]
    for line in lines:
        assert "ranks [1] of 2 were started with a different configuration" in line
        assert "same command, seed and data" in line
    assert not out.exists()


@given(batch_size=st.integers(1, 2000), size=st.integers(1, 300))
def test_shards_are_contiguous_cover_the_batch_and_differ_by_at_most_one(batch_size, size):
    bounds = [shard_bounds(batch_size, size, rank) for rank in range(size)]
    expected = np.array_split(np.arange(batch_size), size)
    assert [list(range(start, stop)) for start, stop in bounds] == [list(part) for part in expected]
    sizes = [stop - start for start, stop in bounds]
    assert sum(sizes) == batch_size and max(sizes) - min(sizes) <= 1


def test_shard_bounds_by_hand():
    assert [shard_bounds(50, 3, rank) for rank in range(3)] == [(0, 17), (17, 34), (34, 50)]
    assert [shard_bounds(64, 2, rank) for rank in range(2)] == [(0, 32), (32, 64)]


class _TwoRanks:
    """A communicator's shape, for refusals that happen before any message is sent."""

    rank, size = 0, 2


@pytest.mark.parametrize("preset", ["vae", "denoising"])
def test_models_that_draw_noise_each_step_are_refused(preset):
    model = getattr(presets, preset)(seed=0)
    with pytest.raises(ValueError, match="draws random noise each training step.*without comm="):
        model.fit(_data("float32"), steps=1, batch_size=8, comm=_TwoRanks())
    assert model.steps_trained == 0


def test_a_batch_smaller_than_the_ranks_is_refused():
    model = presets.tutorial(seed=0)
    with pytest.raises(ValueError, match="batch_size 1 is smaller than the 2 ranks: pass batch_size >= 2"):
        model.fit(_data("float32"), steps=1, batch_size=1, comm=_TwoRanks())


def test_a_missing_mpi4py_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "nanoae\[mpi\]"'):
        Communicator()
