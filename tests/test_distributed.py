"""Data-parallel training on MPI: N ranks take the steps one process takes.

The equivalence tests start ``mpiexec -n N`` on tests/mpi_fit_script.py (one BLAS thread
per rank, see tests/mpi_helpers.py) and compare rank 0's parameters after 20 steps with
one process's fit of the same seed and global batch, and every rank's with rank 0's.
The sharding and the refusals are checked in this process, which never imports mpi4py
(no MPI is started inside pytest).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mpi_helpers import mpiexec_path, needs_mpi, run_job
from script_loader import load_script

from nanoae import presets
from nanoae.distributed import Communicator, RankMismatchError, shard_bounds

SCRIPT = Path(__file__).resolve().parent / "mpi_fit_script.py"
STEPS = 20
fit_script = load_script(SCRIPT)  # its build() and restore_apart(), for the one-process reference


def _data(dtype: str) -> np.ndarray:
    return np.random.default_rng(7).random((300, 784)).astype(dtype)  # what the script trains on


def _run(ranks: int, tmp_path: Path, dtype: str, batch_size: int, preset: str = "tutorial", seed: str = "0",
         start: str = "same"):
    out = tmp_path / f"params-{ranks}-{dtype}-{batch_size}-{preset}-{start}.npy"
    command = [mpiexec_path(), "-n", ranks, sys.executable, SCRIPT, out, dtype, batch_size, STEPS, preset, seed, "none", start]
    return run_job(command), out


def _every_rank(out: Path, ranks: int) -> list[np.ndarray]:
    return [np.load(out.with_name(f"{out.stem}-rank{rank}.npy"), allow_pickle=False) for rank in range(ranks)]


def _assert_ranks_equal(out: Path, ranks: int) -> None:
    """Every rank ends bit-for-bit equal to rank 0: parameters are sent only at the start,
    so a rank whose updates differed (a weight applied twice, a bucket skipped) drifts."""
    params = _every_rank(out, ranks)
    for rank in range(1, ranks):
        np.testing.assert_array_equal(params[rank], params[0], err_msg=f"rank {rank} differs from rank 0")


def _one_process(dtype: str, batch_size: int, preset: str = "tutorial", start: str = "same"):
    model = fit_script.build(preset, 0, dtype)
    if start == "restored-apart":
        fit_script.restore_apart(model, 0, dtype)
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
    _assert_ranks_equal(out, ranks)


@needs_mpi
@pytest.mark.parametrize(("ranks", "preset"), [(2, "tutorial"), (3, "adam")])
def test_ranks_restored_from_different_optimizer_states_take_rank_0s_steps(tmp_path, ranks, preset):
    # Each rank first trains alone on its own rows (and ranks >= 1 count more updates), so
    # parameters, optimizer buffers and update counts differ at one step; rank 0's are sent
    # to all, and the job then takes the steps one process takes from rank 0's state.
    result, out = _run(ranks, tmp_path, "float64", 50, preset, start="restored-apart")
    assert result.returncode == 0, result.stderr[-3000:]
    reference, losses = _one_process("float64", 50, preset, start="restored-apart")
    params = np.load(out, allow_pickle=False)
    assert np.abs(params - reference.arena.values).max() <= 1e-12
    np.testing.assert_allclose(np.load(out.with_name(out.stem + "-loss.npy"), allow_pickle=False), losses, rtol=0, atol=1e-12)
    _assert_ranks_equal(out, ranks)
    # Rank 1's own start would have given other parameters: the broadcast mattered.
    apart = fit_script.build(preset, 0, "float64")
    fit_script.restore_apart(apart, 1, "float64")
    apart.fit(_data("float64"), steps=STEPS, batch_size=50, log_every=5)
    assert np.abs(apart.arena.values - reference.arena.values).max() > 1e-6


@needs_mpi
def test_float32_ranks_stay_within_rounding_of_one_process(tmp_path):
    # The bound is about 7 times the largest difference seen here (1.5e-8 on 3 ranks after 20
    # steps at batch 50, MPICH 5.0.2; the parameters moved by about 1.9e-4): rounding, while a
    # wrong exchange moves them by the steps' own size.
    result, out = _run(3, tmp_path, "float32", 50)
    assert result.returncode == 0, result.stderr[-3000:]
    reference, losses = _one_process("float32", 50)
    params = np.load(out, allow_pickle=False)
    assert params.dtype == np.float32
    assert np.abs(params - reference.arena.values).max() <= 1e-7
    np.testing.assert_allclose(np.load(out.with_name(out.stem + "-loss.npy"), allow_pickle=False), losses, rtol=0, atol=1e-6)
    _assert_ranks_equal(out, 3)


@needs_mpi
def test_ranks_started_with_different_seeds_all_stop_with_one_clear_error(tmp_path):
    result, out = _run(2, tmp_path, "float64", 64, seed="rank")
    assert result.returncode == 3, result.stderr[-3000:]
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
    """A communicator's shape for refusals made before any data is sent: its all_ok
    answers for this rank alone, as if rank 1 had passed."""

    rank, size = 0, 2

    def all_ok(self, error):
        return None if error is None else (self.rank, error)


@pytest.mark.parametrize("preset", ["vae", "denoising"])
def test_models_that_draw_noise_each_step_are_refused(preset):
    model = getattr(presets, preset)(seed=0)
    with pytest.raises(RankMismatchError, match="^rank 0 of 2: .* draws random noise each training step.*without comm=$"):
        model.fit(_data("float32"), steps=1, batch_size=8, comm=_TwoRanks())
    assert model.steps_trained == 0


def test_a_batch_smaller_than_the_ranks_is_refused():
    model = presets.tutorial(seed=0)
    with pytest.raises(RankMismatchError, match="^rank 0 of 2: batch_size 1 is smaller than the 2 ranks: pass batch_size >= 2$"):
        model.fit(_data("float32"), steps=1, batch_size=1, comm=_TwoRanks())


class _RankZeroOfTwoWhereRank1Failed:
    """Rank 0 of a job where rank 1's own checks failed: all_ok says so, and no other
    exchange may be reached (the first one would wait for rank 1 forever)."""

    rank, size, bucket_bytes = 0, 2, None

    def __init__(self) -> None:
        self.checked = []

    def all_ok(self, error):
        self.checked.append(error)
        return 1, "x has 100 features per row but the model expects 784 (got shape (300, 100))"

    def __getattr__(self, name):
        raise AssertionError(f"{name} reached after a failed check")


def test_a_check_failing_on_another_rank_raises_here_before_any_other_exchange():
    model = presets.tutorial(seed=0)
    comm = _RankZeroOfTwoWhereRank1Failed()
    before = model.arena.values.copy()
    with pytest.raises(RankMismatchError, match=re.escape(
        "rank 1 of 2: x has 100 features per row but the model expects 784 (got shape (300, 100))"
    )) as raised:
        model.fit(_data("float32"), steps=3, batch_size=64, comm=comm)
    assert comm.checked == [None]  # this rank's own checks passed, and it said so
    assert raised.value.__cause__ is None
    assert model.steps_trained == 0
    np.testing.assert_array_equal(model.arena.values, before)


def test_this_ranks_failed_check_is_the_cause_of_the_error_on_every_rank():
    comm = _TwoRanks()
    message = "rank 0 of 2: batch_size 64 is larger than the dataset (40 rows)"
    with pytest.raises(RankMismatchError, match=re.escape(message)) as raised:
        presets.tutorial(seed=0).fit(_data("float32")[:40], steps=1, batch_size=64, comm=comm)
    assert isinstance(raised.value.__cause__, ValueError)


def test_a_missing_mpi4py_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "nanoae\[mpi\]"'):
        Communicator()


def test_an_mpi4py_without_an_mpi_library_names_the_extra_to_install(monkeypatch):
    # mpi4py's binary wheel installs without an MPI library; ``from mpi4py import MPI`` then
    # raises RuntimeError, which must become the install hint, not a traceback.
    package = type(sys)("mpi4py")
    package.__path__ = []

    def no_library(name):
        raise RuntimeError("cannot load MPI library")

    package.__getattr__ = no_library  # what ``from mpi4py import MPI`` reaches first
    monkeypatch.setitem(sys.modules, "mpi4py", package)
    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
    hint = 'data-parallel training needs mpi4py and an MPI library: pip install "nanoae[mpi]" (cannot load MPI library)'
    with pytest.raises(ImportError, match=f"^{re.escape(hint)}$"):
        Communicator()
