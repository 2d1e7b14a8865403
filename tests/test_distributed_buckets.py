"""The bucketed allreduce: buckets of whole layers, each started as soon as the backward
pass has finished them, sum to what the one Allreduce gives.

The MPI tests start ``mpiexec -n N`` on tests/mpi_fit_script.py with a bucket size (one
BLAS thread per rank, see tests/mpi_helpers.py) and compare rank 0's parameters after 20
steps with one process, and with the unbucketed run, and every rank's with rank 0's.
The rest runs in this process on a one-rank stand-in for MPI that records when each
bucket starts (no MPI is started inside pytest).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mpi_helpers import mpiexec_path, needs_mpi, run_job

from nanoae import presets
from nanoae.callbacks import Callback
from nanoae.distributed import Communicator
from nanoae.gradient_buckets import GradientBuckets, bucket_bounds

SCRIPT = Path(__file__).resolve().parent / "mpi_fit_script.py"
STEPS = 20
MIB = 1 << 20


def _data(dtype: str) -> np.ndarray:
    return np.random.default_rng(7).random((300, 784)).astype(dtype)  # what the script trains on


def _run(ranks: int, tmp_path: Path, dtype: str, batch_size: int, preset: str, buckets: str):
    """Rank 0's parameters and losses; every other rank's parameters are checked equal to
    rank 0's bit for bit (a bucket skipped or scaled twice on rank >= 1 alone fails)."""
    out = tmp_path / f"params-{ranks}-{dtype}-{batch_size}-{preset}-{buckets}.npy"
    command = [mpiexec_path(), "-n", ranks, sys.executable, SCRIPT, out, dtype, batch_size, STEPS, preset, "0", buckets]
    result = run_job(command)
    assert result.returncode == 0, result.stderr[-3000:]
    params = np.load(out, allow_pickle=False)
    for rank in range(ranks):
        other = np.load(out.with_name(f"{out.stem}-rank{rank}.npy"), allow_pickle=False)
        np.testing.assert_array_equal(other, params, err_msg=f"rank {rank} differs from rank 0")
    return params, np.load(out.with_name(out.stem + "-loss.npy"), allow_pickle=False)


def _one_process(dtype: str, batch_size: int, preset: str):
    model = getattr(presets, preset)(seed=0, dtype=dtype)
    history = model.fit(_data(dtype), steps=STEPS, batch_size=batch_size, log_every=5)
    return model.arena.values, np.asarray(history, dtype=np.float64)


@needs_mpi
@pytest.mark.parametrize(
    ("ranks", "batch_size", "preset", "bucket_bytes"),
    [(1, 64, "tutorial", MIB), (2, 64, "tutorial", MIB), (3, 64, "tutorial", 1), (2, 50, "tutorial", 1),
     (3, 50, "tutorial", MIB), (3, 50, "sparse", 1 << 18), (2, 50, "weight_decay", 1)],
)
def test_bucketed_ranks_take_the_steps_of_one_process_in_float64(tmp_path, ranks, batch_size, preset, bucket_bytes):
    # 1 byte: every layer its own bucket (six); 1 MiB: three buckets of the float64 arena.
    params, losses = _run(ranks, tmp_path, "float64", batch_size, preset, str(bucket_bytes))
    reference, reference_losses = _one_process("float64", batch_size, preset)
    start = getattr(presets, preset)(seed=0, dtype="float64").arena.values
    assert np.abs(reference - start).max() > 1e-6  # the steps moved far beyond the tolerance
    assert np.abs(params - reference).max() <= 1e-12
    np.testing.assert_allclose(losses, reference_losses, rtol=0, atol=1e-12)


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_bucketed_ranks_equal_unbucketed_ranks_in_float32(tmp_path, ranks):
    # Two ranks add two numbers per element, in either order the same float: so the buckets
    # must give exactly the one Allreduce's parameters (a bucket summed twice, skipped or
    # scaled twice would not), even in float32 where one process differs by about 1e-8.
    # Three ranks may add in another order per bucket size: within rounding there.
    bucketed, bucketed_losses = _run(ranks, tmp_path, "float32", 50, "tutorial", str(1 << 18))
    single, single_losses = _run(ranks, tmp_path, "float32", 50, "tutorial", "none")
    assert bucketed.dtype == np.float32
    if ranks == 2:
        np.testing.assert_array_equal(bucketed, single)
        np.testing.assert_array_equal(bucketed_losses, single_losses)
    else:
        assert np.abs(bucketed - single).max() <= 1e-7
    assert np.abs(bucketed - presets.tutorial(seed=0).arena.values).max() > 1e-5


# ---- in this process: a one-rank stand-in for MPI --------------------------------------


class _Recorder:
    """Stands in for mpi4py's MPI module (IN_PLACE, SUM, Exception, Is_finalized, Waitall)
    and for a one-rank communicator (Allreduce_init: a persistent sum over one rank
    leaves the buffer as it is), recording each bucket's start (its range in the arena
    and a copy of what it held then), each progress test and each wait."""

    IN_PLACE = object()
    SUM = object()
    Exception = RuntimeError

    def __init__(self) -> None:
        self.events: list = []
        self.grads = None
        self.Request = self
        self.made: list = []

    def Allreduce_init(self, sendbuf, recvbuf, op=None):
        assert sendbuf is self.IN_PLACE and op is self.SUM
        request = _PersistentRequest(self, recvbuf)
        self.made.append(request)
        return request

    def Is_finalized(self):
        return False

    def Waitall(self, requests):
        self.events.append(("wait", self.grads.copy()))
        return True


class _PersistentRequest:
    def __init__(self, recorder: _Recorder, view: np.ndarray) -> None:
        self.recorder, self.view, self.active, self.freed = recorder, view, False, False

    def Start(self):
        assert not self.active and not self.freed
        offset = (self.view.ctypes.data - self.recorder.grads.ctypes.data) // self.view.itemsize
        self.recorder.events.append(("start", (offset, offset + self.view.size), self.view.copy()))
        self.active = True

    def Test(self):
        self.recorder.events.append(("progress",))
        self.active = False
        return True

    def Free(self):
        assert not self.active
        self.freed = True


class _OneRank:
    """A Communicator's interface for one rank, bucketing through the recorder."""

    rank, size = 0, 1

    def __init__(self, bucket_bytes: int, recorder: _Recorder) -> None:
        self.bucket_bytes = bucket_bytes
        self._mpi = self.comm = recorder
        self.freed = 0

    def all_ok(self, error):
        return None if error is None else (self.rank, error)

    def agree(self, text, what="configuration"):
        pass

    def broadcast_parameters(self, arena):
        pass

    def broadcast_optimizer_state(self, optimizer):
        pass

    def shard(self, batch_size):
        return 0, batch_size

    def allreduce_gradients(self, arena, weight, step=None):
        raise AssertionError("a bucketing communicator never takes the one Allreduce")

    def weighted_sum(self, value, weight, step=None):
        return float(value) * weight

    def _wait_all(self, requests, what, step=None):  # the deadline is not what this file tests
        for request in requests:
            request.active = False
        self._mpi.Request.Waitall(requests)

    def persistent_sum(self, name, buffer):
        return self.comm.Allreduce_init(self._mpi.IN_PLACE, buffer, op=self._mpi.SUM)

    def free(self):
        for request in self.comm.made:
            request.Free()
        self.freed += 1

    def gradient_buckets(self, arena, layers, weight):
        self.comm.grads = arena.grads
        return GradientBuckets(self, arena.grads, layers, weight, self.bucket_bytes)


def _fit_recording(bucket_bytes: int, steps: int = 3):
    recorder = _Recorder()
    model = presets.tutorial(seed=0)
    first_layer = model.encoder.layers[0]
    backward = first_layer.backward

    def recorded_backward(*args, **kwargs):
        recorder.events.append(("first layer backward",))
        return backward(*args, **kwargs)

    first_layer.backward = recorded_backward
    comm = _OneRank(bucket_bytes, recorder)
    model.fit(_data("float32"), steps=steps, batch_size=32, log_every=1, comm=comm)
    # The run's persistent requests are freed once, at its end.
    assert comm.freed == 1 and all(request.freed for request in recorder.made)
    per_step, step = [], []
    for event in recorder.events:
        step.append(event)
        if event[0] == "wait":
            per_step.append(step)
            step = []
    assert step == []
    return model, per_step, len(recorder.made)


@pytest.mark.parametrize(
    ("bucket_bytes", "expected"),
    [
        # The tutorial's float32 arena (alignment 16; every tensor's size a multiple of 16):
        # encoder.0 [0, 615440), encoder.1 [615440, 816400), encoder.2 [816400, 849296),
        # decoder.0 [849296, 865808), decoder.1 [865808, 898832), decoder.2 [898832, 1100320).
        # 1 MiB: decoder.2 (805,952 bytes) + decoder.1 + decoder.0 + encoder.2 reach it; the rest.
        (MIB, [(816400, 1100320), (0, 816400)]),
        # 256 KiB: decoder.2 alone; decoder.1 + decoder.0 + encoder.2 (329,728 bytes); encoder.1; encoder.0.
        (1 << 18, [(898832, 1100320), (816400, 898832), (615440, 816400), (0, 615440)]),
        # more than the arena: one bucket, started when the backward pass is over
        (1 << 30, [(0, 1100320)]),
    ],
)
def test_each_bucket_starts_once_its_layers_are_final_last_layer_first(bucket_bytes, expected):
    model, per_step, made = _fit_recording(bucket_bytes)
    assert len(per_step) == 3
    assert made == len(expected)  # one persistent request per bucket for the whole run, none per step
    for events in per_step:
        kinds = [event[0] for event in events]
        starts = [event for event in events if event[0] == "start"]
        assert [event[1] for event in starts] == expected
        # Every bucket but the one holding the first layer started before that layer's
        # backward ran, so its exchange overlaps the rest of the pass; MPI got calls
        # to progress on them meanwhile.
        first = kinds.index("first layer backward")
        assert kinds[:first].count("start") == len(expected) - 1
        assert len(expected) == 1 or "progress" in kinds[:first]
        # What each bucket held when it started is the step's final gradient (one rank:
        # the exchange leaves it as it is); a bucket started early would hold the
        # previous step's (or the zeros before the first).
        final = events[-1][1]
        for _, (start, stop), held in starts:
            np.testing.assert_array_equal(held, final[start:stop])
    assert all(module._gradients_ready is None for module in model.modules())


def test_bucketed_fit_on_one_rank_equals_plain_fit_bit_for_bit():
    bucketed, _, _ = _fit_recording(1 << 18, steps=5)
    plain = presets.tutorial(seed=0)
    plain.fit(_data("float32"), steps=5, batch_size=32, log_every=1)
    np.testing.assert_array_equal(bucketed.arena.values, plain.arena.values)
    assert np.abs(plain.arena.values - presets.tutorial(seed=0).arena.values).max() > 1e-5


class _InterruptAtStep2(Callback):
    def on_step_end(self, state) -> None:
        if state.step == 2:
            raise KeyboardInterrupt


def test_a_run_that_raises_keeps_its_persistent_requests_and_one_that_ends_frees_them():
    # Freeing is collective, and a rank that raised may be out of step with the others (or
    # hold a request still active): only a run that ends without an exception frees.
    recorder = _Recorder()
    comm = _OneRank(1 << 18, recorder)
    model = presets.tutorial(seed=0)
    with pytest.raises(KeyboardInterrupt):
        model.fit(_data("float32"), steps=5, batch_size=32, comm=comm, callbacks=[_InterruptAtStep2()])
    assert model.steps_trained == 2 and len(recorder.made) == 4
    assert comm.freed == 0 and not any(request.freed for request in recorder.made)
    comm.free()  # what the caller does before its next fit, on every rank
    model.fit(_data("float32"), steps=2, batch_size=32, comm=comm)
    assert comm.freed == 2 and len(recorder.made) == 8 and all(request.freed for request in recorder.made)


def test_bucket_bounds_by_hand():
    assert bucket_bounds([(0, 10), (16, 20), (32, 40)], 48, 8, 64) == [(32, 48), (0, 32)]
    assert bucket_bounds([(0, 10), (16, 20), (32, 40)], 48, 8, 1) == [(32, 48), (16, 32), (0, 16)]
    assert bucket_bounds([(0, 10), (16, 20), (32, 40)], 48, 8, 10**9) == [(0, 48)]
    assert bucket_bounds([], 0, 4, 8) == [(0, 0)]


@given(
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=12),
    gaps=st.lists(st.integers(0, 15), min_size=13, max_size=13),
    itemsize=st.sampled_from([4, 8]),
    bucket_bytes=st.integers(1, 3000),
)
def test_buckets_cover_the_arena_once_in_whole_layers_each_as_small_as_the_target_allows(sizes, gaps, itemsize, bucket_bytes):
    layers, offset = [], gaps[0]
    for size, gap in zip(sizes, gaps[1:]):
        layers.append((offset, offset + size))
        offset += size + gap
    bounds = bucket_bounds(layers, offset, itemsize, bucket_bytes)
    # contiguous, last layer first, covering [0, size) once
    assert bounds[0][1] == offset and bounds[-1][0] == 0
    assert all(bounds[i][0] == bounds[i + 1][1] for i in range(len(bounds) - 1))
    for start, stop in bounds:
        inside = [(lo, hi) for lo, hi in layers if start <= lo and hi <= stop]
        cut = [(lo, hi) for lo, hi in layers if lo < stop and hi > start and (lo, hi) not in inside]
        assert cut == []  # whole layers only
        held = sum(hi - lo for lo, hi in inside) * itemsize
        if (start, stop) != bounds[-1]:
            # closed as soon as it reached the target: without its first layer it had not
            assert held >= bucket_bytes
            assert held - (inside[0][1] - inside[0][0]) * itemsize < bucket_bytes


@pytest.mark.parametrize("bad", [0, -1, 1.5, "1MB", True])
def test_a_bucket_size_that_is_not_a_positive_number_of_bytes_is_refused(bad):
    with pytest.raises(ValueError, match=r"bucket_bytes must be a positive whole number of bytes such as 1 << 20 .*pass None"):
        Communicator(bucket_bytes=bad)
