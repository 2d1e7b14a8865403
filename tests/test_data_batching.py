"""BatchSampler: shuffled batches that run on across epochs, resumable exactly; holdout_rows."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanoae.data import BatchSampler, holdout_rows


def draw(sampler: BatchSampler, batches: int) -> np.ndarray:
    return np.concatenate([sampler.next_indices() for _ in range(batches)])


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 60), data=st.data())
def test_every_index_once_per_epoch(n, data):
    batch_size = data.draw(st.integers(1, n))
    seed = data.draw(st.integers(0, 2**32 - 1))
    sampler = BatchSampler(n, batch_size, seed=seed)
    epochs = 3
    batches = -(-epochs * n // batch_size)  # enough to cover three epochs
    flat = np.concatenate([sampler.next_indices() for _ in range(batches)])
    assert flat.dtype == np.int64
    # The stream of indices is a concatenation of permutations of range(n).
    for e in range(epochs):
        assert sorted(flat[e * n:(e + 1) * n].tolist()) == list(range(n))
    assert sampler.epoch == len(flat) // n
    assert sampler.progress == pytest.approx(len(flat) / n)


def test_batches_cross_epoch_boundaries():
    n, bs = 10, 4
    sampler = BatchSampler(n, bs, seed=7)
    # Replay the generator's draws to know the permutations it makes.
    replay = np.random.default_rng(7)
    first, second = replay.permutation(n), replay.permutation(n)
    b1, b2, b3 = sampler.next_indices(), sampler.next_indices(), sampler.next_indices()
    np.testing.assert_array_equal(b1, first[:4])
    np.testing.assert_array_equal(b2, first[4:8])
    # The last 2 of epoch 0, then the first 2 of a fresh shuffle.
    np.testing.assert_array_equal(b3, np.concatenate([first[8:], second[:2]]))
    assert len(b3) == bs and sampler.epoch == 1 and sampler.position == 2
    assert sampler.progress == pytest.approx(1.2)


def test_whole_batches_fill_epochs_exactly():
    sampler = BatchSampler(8, 4, seed=0)
    sampler.next_indices()
    assert sampler.epoch == 0
    sampler.next_indices()
    assert sampler.epoch == 1 and sampler.position == 0
    assert sampler.batches_per_epoch == 2


def test_batch_size_equal_to_n():
    sampler = BatchSampler(5, 5, seed=3)
    for epoch in range(4):
        assert sorted(sampler.next_indices().tolist()) == [0, 1, 2, 3, 4]
        assert sampler.epoch == epoch + 1


def test_same_seed_same_sequence_other_seed_differs():
    a = draw(BatchSampler(100, 32, seed=42), 20)
    b = draw(BatchSampler(100, 32, seed=42), 20)
    c = draw(BatchSampler(100, 32, seed=43), 20)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("stop_after", [0, 1, 3, 4, 7])
def test_state_dict_round_trip_resumes_exactly(tmp_path, stop_after):
    n, bs = 50, 16
    reference = BatchSampler(n, bs, seed=5)
    expected = [reference.next_indices() for _ in range(stop_after + 12)]

    first = BatchSampler(n, bs, seed=5)
    for _ in range(stop_after):
        first.next_indices()
    state = first.state_dict()
    assert {k for k, v in state.items() if type(v) is int} == {"n", "batch_size", "epoch", "position"}
    assert state["permutation"].dtype == np.int64
    assert state["rng_state"]["bit_generator"] == "PCG64"

    # As a checkpoint stores it, with no pickle: the array in an .npz, the rest as JSON.
    np.savez(tmp_path / "ckpt.npz", permutation=state["permutation"])
    scalars = json.loads(json.dumps({k: v for k, v in state.items() if k != "permutation"}))
    with np.load(tmp_path / "ckpt.npz", allow_pickle=False) as f:
        loaded = {**scalars, "permutation": f["permutation"]}

    resumed = BatchSampler(n, bs, seed=999)
    resumed.load_state_dict(loaded)
    assert resumed.epoch == first.epoch and resumed.position == first.position
    for want in expected[stop_after:]:  # the next epochs too: the generator came back
        np.testing.assert_array_equal(resumed.next_indices(), want)
    again = BatchSampler.from_state_dict(loaded)
    np.testing.assert_array_equal(draw(again, 12), np.concatenate(expected[stop_after:]))


def test_a_seed_gives_the_stream_of_default_rng_of_that_seed():
    sampler = BatchSampler(30, 7, seed=3)
    replay = np.random.default_rng(3)
    first, second = replay.permutation(30), replay.permutation(30)
    np.testing.assert_array_equal(draw(sampler, 8)[:56], np.concatenate([first, second[:26]]))
    spawned = np.random.SeedSequence(3).spawn(1)[0]
    np.testing.assert_array_equal(draw(BatchSampler(30, 30, spawned), 1), np.random.default_rng(spawned).permutation(30))


def test_state_dict_is_a_copy():
    sampler = BatchSampler(10, 3, seed=0)
    state = sampler.state_dict()
    state["permutation"][:] = 0
    assert sorted(sampler.state_dict()["permutation"].tolist()) == list(range(10))


def test_returned_batches_are_independent_arrays():
    sampler = BatchSampler(10, 3, seed=0)
    b = sampler.next_indices()
    b[:] = -1
    assert sorted(sampler.state_dict()["permutation"].tolist()) == list(range(10))


@pytest.mark.parametrize("batch_size", [0, -1, 11])
def test_bad_batch_sizes(batch_size):
    with pytest.raises(ValueError, match=r"batch_size must lie in 1\.\.10"):
        BatchSampler(10, batch_size, seed=0)


@pytest.mark.parametrize("batch_size", [2.5, "4", None, True])
def test_batch_size_must_be_an_int(batch_size):
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        BatchSampler(10, batch_size, seed=0)


def test_bad_n_and_seed():
    with pytest.raises(ValueError, match="n must be at least 1"):
        BatchSampler(0, 1, seed=0)
    with pytest.raises(TypeError, match="pass a seed, not a generator"):
        BatchSampler(10, 2, np.random.default_rng(0))
    with pytest.raises(TypeError, match="seed must be an integer >= 0"):
        BatchSampler(10, 2, -1)
    # NumPy integers are fine.
    assert BatchSampler(np.int64(10), np.int32(2), seed=0).batch_size == 2


def test_bad_states_are_refused():
    sampler = BatchSampler(10, 3, seed=0)
    good = sampler.state_dict()
    with pytest.raises(ValueError, match="lacks permutation"):
        sampler.load_state_dict({k: v for k, v in good.items() if k != "permutation"})
    with pytest.raises(ValueError, match="n=11, batch_size=3"):
        sampler.load_state_dict({**good, "n": 11})
    with pytest.raises(ValueError, match="not a permutation"):
        sampler.load_state_dict({**good, "permutation": np.zeros(10, np.int64)})
    with pytest.raises(ValueError, match="position=10"):
        sampler.load_state_dict({**good, "position": 10})
    with pytest.raises(ValueError, match=r"shape \(10,\)"):
        sampler.load_state_dict({**good, "permutation": np.arange(10.0)})
    with pytest.raises(ValueError, match="lacks rng_state"):
        sampler.load_state_dict({k: v for k, v in good.items() if k != "rng_state"})
    with pytest.raises(ValueError, match="must be a PCG64"):
        sampler.load_state_dict({**good, "rng_state": np.random.MT19937(0).state})
    with pytest.raises(ValueError, match="rng_state cannot be restored"):
        sampler.load_state_dict({**good, "rng_state": {"bit_generator": "PCG64", "state": "garbage"}})
    # A refused state changes nothing.
    assert sampler.state_dict()["position"] == good["position"]
    assert sampler.state_dict()["rng_state"] == good["rng_state"]
    np.testing.assert_array_equal(sampler.state_dict()["permutation"], good["permutation"])


def test_snapshot_returns_to_the_same_batches_without_copying_the_permutation():
    sampler = BatchSampler(10, 4, seed=3)
    sampler.next_indices()
    snapshot = sampler.snapshot()
    assert snapshot["permutation"] is sampler.snapshot()["permutation"]  # held, not copied
    assert sampler.state_dict()["permutation"] is not snapshot["permutation"]  # a checkpoint copies
    kept = snapshot["permutation"].copy()
    ahead = [sampler.next_indices() for _ in range(7)]  # crosses two reshuffles
    assert sampler.snapshot()["permutation"] is not snapshot["permutation"]
    np.testing.assert_array_equal(snapshot["permutation"], kept)  # the reshuffles left it alone
    sampler.load_state_dict(snapshot)
    again = [sampler.next_indices() for _ in range(7)]
    for first, second in zip(ahead, again):
        np.testing.assert_array_equal(first, second)


# ---- holdout_rows -------------------------------------------------------------------------------
def test_holdout_splits_rows_into_sorted_disjoint_int64_parts():
    train, validation = holdout_rows(10, 0.3, seed=0)
    assert train.dtype == np.int64 and validation.dtype == np.int64
    assert len(validation) == 3 and len(train) == 7
    assert np.all(np.diff(train) > 0) and np.all(np.diff(validation) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, validation])), np.arange(10))
    # the first 3 of default_rng(0).permutation(10), sorted
    np.testing.assert_array_equal(validation, np.sort(np.random.default_rng(0).permutation(10)[:3]))


def test_holdout_is_deterministic_per_seed():
    a, b, c = holdout_rows(1000, 0.1, 7), holdout_rows(1000, 0.1, 7), holdout_rows(1000, 0.1, 8)
    np.testing.assert_array_equal(a[1], b[1])
    assert len(c[1]) == 100 and not np.array_equal(a[1], c[1])


@pytest.mark.parametrize(("n", "fraction", "size"), [(5, 0.1, 1), (20, 0.025, 1), (3, 0.5, 2), (10, 0.05, 1), (7, 0.85, 6)])
def test_holdout_size_rounds_half_up(n, fraction, size):
    assert len(holdout_rows(n, fraction, 0)[1]) == size


@pytest.mark.parametrize(
    ("n", "fraction", "words"),
    [
        (20, 0.01, "a validation fraction of 0.01 of 20 rows leaves no row to validate on; use a fraction from 0.05 to 0.95"),
        (10, 0.99, "leaves no row to train on; use a fraction from 0.1 to 0.9"),
        (1, 0.5, "needs at least 2 rows"),
        (10, 0.0, "strictly between 0 and 1"),
        (10, 1.0, "strictly between 0 and 1"),
        (10, float("nan"), "must be a number in (0, 1)"),
        (10, "0.1", "must be a number in (0, 1)"),
    ],
)
def test_holdout_refuses_splits_that_leave_a_side_empty(n, fraction, words):
    with pytest.raises(ValueError) as caught:
        holdout_rows(n, fraction, 0)
    assert words in str(caught.value)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(2, 400), fraction=st.floats(0.001, 0.999), seed=st.integers(0, 2**32))
def test_holdout_sizes_follow_the_rounding_or_refuse(n, fraction, seed):
    k = int(np.floor(fraction * n + 0.5))
    if not 1 <= k <= n - 1:
        with pytest.raises(ValueError, match="leaves no row"):
            holdout_rows(n, fraction, seed)
        return
    train, validation = holdout_rows(n, fraction, seed)
    assert len(validation) == k and len(train) == n - k
    assert np.intersect1d(train, validation).size == 0
