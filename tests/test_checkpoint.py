"""Checkpoints: exact round trips, bit-for-bit resume, atomic writes, hostile files."""

import io
import json
import os
import pathlib
import select
import signal
import struct
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nanoae
from nanoae import SGD, Adam, AdamW, Autoencoder, Dense, RMSProp, Sequential, presets
from nanoae import checkpoint as ckpt_module
from nanoae.atomic import json_text, write_json_atomically
from nanoae.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    remove_stale_temp_files,
    restore_into,
    restore_sampler,
    save_checkpoint,
)
from nanoae.data.batching import BatchSampler
from nanoae.cli import main
from nanoae.params import ParameterArena

REPO = pathlib.Path(__file__).resolve().parents[1]

OPTIMIZERS = {
    "rmsprop-tf1-momentum": lambda: RMSProp(0.01, flavor="tf1", momentum=0.9),
    "rmsprop-tf1": lambda: RMSProp(0.01, flavor="tf1"),
    "rmsprop-torch": lambda: RMSProp(0.01, flavor="torch", momentum=0.5),
    "sgd-nesterov": lambda: SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "adam": lambda: Adam(0.01),
    "adamw-keras": lambda: AdamW(0.01, flavor="keras"),
}


def small_autoencoder(optimizer=None, seed=0, backend="numpy", dtype=None):
    return Autoencoder(
        [Dense(20, 8, "relu"), Dense(8, 3, "tanh")],
        [Dense(3, 8, "leaky_relu", alpha=0.1), Dense(8, 20, "sigmoid")],
        optimizer=optimizer or Adam(0.01),
        backend=backend,
        dtype=dtype,
        seed=seed,
    )


def data(n, features, seed=0):
    """Fixed random float32 data in [0.01, 1): never exact zeros."""
    return np.random.default_rng(seed).uniform(0.01, 1.0, (n, features)).astype(np.float32)


def host(array):
    if type(array).__module__.startswith("cupy"):
        import cupy

        return cupy.asnumpy(array)
    return np.asarray(array)


def assert_same_state(a, b):
    """Parameters, optimizer buffers, steps, RNG and config: equal exactly."""
    assert a.config() == b.config()
    assert np.dtype(a.arena.values.dtype) == np.dtype(b.arena.values.dtype)
    assert np.array_equal(host(a.arena.values), host(b.arena.values))
    assert a.arena.layout == b.arena.layout
    assert a.steps_trained == b.steps_trained
    assert a.optimizer.update_count == b.optimizer.update_count
    assert set(a.optimizer.state) == set(b.optimizer.state)
    for name in a.optimizer.state:
        assert np.array_equal(host(a.optimizer.state[name]), host(b.optimizer.state[name])), name
    assert a.rng.bit_generator.state == b.rng.bit_generator.state


# ---- 1. round trip -----------------------------------------------------------------
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_round_trip_is_exact(tmp_path, name):
    model = small_autoencoder(OPTIMIZERS[name]())
    model.fit(data(200, 20), steps=7, batch_size=32)
    extra = {"lr": 0.01, "losses": [0.5, 0.25], "name": "run-1", "ok": True, "nothing": None}
    path = save_checkpoint(tmp_path / "ae.npz", model, extra=extra)
    assert path == tmp_path / "ae.npz" and path.is_file()

    loaded = load_checkpoint(path, backend="numpy")
    assert isinstance(loaded, Checkpoint)
    assert loaded.model is not model
    assert_same_state(loaded.model, model)
    assert loaded.step == model.steps_trained == 7
    assert loaded.extra == extra
    assert loaded.sampler_state is None
    assert loaded.path == path
    header = loaded.header
    assert header["format"] == "nanoae-checkpoint"
    assert header["format_version"] == FORMAT_VERSION
    assert header["nanoae_version"] == nanoae.__version__
    assert header["dtype"] == "float32"
    assert header["arena_size"] == model.arena.size
    assert header["model"] == model.config()
    assert header["optimizer"] == {"config": model.optimizer.config(), "steps": 7}
    assert {k: (o, tuple(s)) for k, (o, s) in header["layout"].items()} == model.arena.layout

    # Both continue identically.
    x = data(64, 20, seed=5)
    for _ in range(3):
        assert float(model.train_step(x)) == float(loaded.model.train_step(x))
    assert np.array_equal(model.arena.values, loaded.model.arena.values)


def test_rng_state_with_128_bit_integers_survives_json(tmp_path):
    model = small_autoencoder(seed=12345)
    model.rng.random(3)
    state = model.rng.bit_generator.state
    assert state["bit_generator"] == "PCG64"
    assert state["state"]["state"] > 2**64 or state["state"]["inc"] > 2**64  # really 128-bit
    path = save_checkpoint(tmp_path / "rng.npz", model)
    loaded = load_checkpoint(path, backend="numpy")
    assert loaded.model.rng.bit_generator.state == state
    assert np.array_equal(loaded.model.rng.random(5), model.rng.random(5))


def test_other_bit_generators_round_trip(tmp_path):
    """MT19937's state holds an array: stored as JSON, restored with its dtype."""
    model = small_autoencoder(seed=np.random.Generator(np.random.MT19937(7)))
    model.rng.random(10)
    path = save_checkpoint(tmp_path / "mt.npz", model)
    loaded = load_checkpoint(path, backend="numpy")
    assert isinstance(loaded.model.rng.bit_generator, np.random.MT19937)
    assert np.array_equal(loaded.model.rng.random(5), model.rng.random(5))


def test_sequential_and_float64_round_trip(tmp_path):
    model = Sequential(
        [Dense(6, 5, "tanh"), Dense(5, 2)], loss="mse", optimizer=RMSProp(0.01, flavor="keras", momentum=0.9)
    ).build(backend="numpy", dtype="float64", seed=3)
    x = np.random.default_rng(0).uniform(0.1, 1, (40, 6))
    y = np.random.default_rng(1).uniform(0.1, 1, (40, 2))
    model.fit(x, y, steps=4, batch_size=8)
    loaded = load_checkpoint(save_checkpoint(tmp_path / "seq.npz", model), backend="numpy")
    assert isinstance(loaded.model, Sequential)
    assert loaded.model.arena.values.dtype == np.float64
    assert loaded.header["dtype"] == "float64"
    assert_same_state(loaded.model, model)


def test_save_keeps_the_exact_name_and_creates_parents(tmp_path):
    model = small_autoencoder()
    path = save_checkpoint(tmp_path / "a" / "b" / "model.ckpt", model)
    assert path == tmp_path / "a" / "b" / "model.ckpt"
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.ckpt"]  # no temp file left
    assert load_checkpoint(str(path), backend="numpy").step == 0


def test_the_file_is_plain_arrays_and_json(tmp_path):
    model = small_autoencoder(RMSProp(flavor="tf1", momentum=0.9))
    sampler = BatchSampler(50, 10, seed=7)
    path = save_checkpoint(tmp_path / "m.npz", model, sampler=sampler)
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == [
            "header", "optimizer/mean_square", "optimizer/momentum", "params", "sampler/permutation",
        ]
        header = json.loads(archive["header"].tobytes().decode("utf-8"))
        assert archive["header"].dtype == np.uint8
        assert archive["params"].shape == (model.arena.size,)
        assert archive["sampler/permutation"].dtype == np.int64
    assert set(header) >= {
        "format", "format_version", "nanoae_version", "dtype", "arena_size", "layout",
        "model", "step", "optimizer", "rng_state", "sampler", "extra",
    }
    rng_state = header["sampler"].pop("rng_state")
    assert header["sampler"] == {"n": 50, "batch_size": 10, "epoch": 0, "position": 0}
    assert rng_state == json.loads(json.dumps(sampler.state_dict()["rng_state"]))  # the sampler's own generator
    assert "_layout" not in header


def test_extra_must_be_json(tmp_path):
    model = small_autoencoder()
    with pytest.raises(CheckpointError, match="extra must be JSON-serializable") as info:
        save_checkpoint(tmp_path / "x.npz", model, extra={"weights": np.zeros(3)})
    assert str(tmp_path / "x.npz") in str(info.value)
    with pytest.raises(CheckpointError, match="extra must be a dict"):
        save_checkpoint(tmp_path / "x.npz", model, extra=[1, 2])
    assert not (tmp_path / "x.npz").exists()
    # numpy scalars (a metric computed with numpy) are fine
    path = save_checkpoint(tmp_path / "x.npz", model, extra={"loss": np.float32(0.5), "step": np.int64(3)})
    assert load_checkpoint(path, backend="numpy").extra == {"loss": 0.5, "step": 3}
    # a diverged run can still record its last loss
    path = save_checkpoint(tmp_path / "x.npz", model, extra={"loss": float("nan"), "best": float("inf")})
    extra = load_checkpoint(path, backend="numpy").extra
    assert np.isnan(extra["loss"]) and extra["best"] == float("inf")


# ---- 2. exact resume ---------------------------------------------------------------
def train(model, sampler, x, steps):
    losses = []
    for _ in range(steps):
        idx = sampler.next_indices()
        batch = x[idx]
        losses.append(float(model._train_step(batch, batch)))
    return losses


@pytest.mark.parametrize(
    "make, n, features, batch, steps",
    [
        # 1,000 rows in batches of 64: an epoch is 15.6 steps, so the resumed half crosses
        # an epoch boundary and its reshuffle must come from the restored generator.
        (lambda: presets.tutorial(seed=0, backend="numpy"), 1000, 784, 64, 12),
        (lambda: small_autoencoder(Adam(0.01), seed=4), 300, 20, 32, 15),
    ],
    ids=["tutorial-rmsprop", "small-adam"],
)
def test_resume_is_bit_for_bit(tmp_path, make, n, features, batch, steps):
    x = data(n, features, seed=1)
    assert x.min() > 0

    straight = make()
    sampler = BatchSampler(n, batch, seed=3)
    losses_straight = train(straight, sampler, x, 2 * steps)

    first = make()
    sampler = BatchSampler(n, batch, seed=3)
    losses_first = train(first, sampler, x, steps)
    path = save_checkpoint(tmp_path / "resume.npz", first, sampler=sampler, extra={"batch_size": batch})
    saved_permutation = sampler.state_dict()["permutation"]
    del first, sampler

    loaded = load_checkpoint(path, backend="numpy")
    assert loaded.step == steps
    assert np.array_equal(loaded.sampler_state["permutation"], saved_permutation)
    resumed_sampler = restore_sampler(loaded)
    assert resumed_sampler.position == loaded.sampler_state["position"]
    losses_second = train(loaded.model, resumed_sampler, x, steps)

    assert losses_first + losses_second == losses_straight
    assert np.array_equal(loaded.model.arena.values, straight.arena.values)
    assert loaded.model.steps_trained == straight.steps_trained == 2 * steps
    assert loaded.model.rng.bit_generator.state == straight.rng.bit_generator.state


def test_restore_sampler_continues_the_samplers_own_generator(tmp_path):
    """The saved sampler state holds its generator: later epochs shuffle as before,
    and restoring it draws nothing from the model's generator."""
    model = small_autoencoder()
    sampler = BatchSampler(40, 8, seed=11)
    for _ in range(7):
        sampler.next_indices()
    loaded = load_checkpoint(save_checkpoint(tmp_path / "s.npz", model, sampler=sampler), backend="numpy")
    before = loaded.model.rng.bit_generator.state
    again = restore_sampler(loaded)
    assert loaded.model.rng.bit_generator.state == before
    assert again.state_dict()["epoch"] == sampler.epoch == 1
    for _ in range(12):  # over two more epoch boundaries
        assert np.array_equal(again.next_indices(), sampler.next_indices())
    assert restore_sampler(load_checkpoint(save_checkpoint(tmp_path / "n.npz", model), backend="numpy")) is None


def test_a_sampler_saved_without_its_generator_still_resumes(tmp_path):
    """Checkpoints from before samplers owned a generator: the saved epoch's order is
    kept exactly; later epochs come from a generator seeded by the model's."""
    model = small_autoencoder()
    sampler = BatchSampler(40, 8, seed=11)
    for _ in range(7):  # epoch 1, position 16
        sampler.next_indices()
    path = save_checkpoint(tmp_path / "old.npz", model, sampler=sampler)
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    header = json.loads(arrays["header"].tobytes())
    del header["sampler"]["rng_state"]
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(tmp_path / "old.npz", **arrays)

    loaded = load_checkpoint(tmp_path / "old.npz", backend="numpy")
    model_rng = loaded.model.rng.bit_generator.state
    restored = restore_sampler(loaded)
    assert loaded.model.rng.bit_generator.state != model_rng  # one seed drawn from it
    assert (restored.epoch, restored.position) == (1, 16)
    for _ in range(3):  # the rest of the saved epoch: the very same batches
        assert np.array_equal(restored.next_indices(), sampler.next_indices())
    assert (restored.epoch, restored.position) == (2, 0)
    next_epoch = np.concatenate([restored.next_indices() for _ in range(5)])
    assert sorted(next_epoch) == list(range(40))  # a whole fresh permutation


def test_restore_into_existing_model(tmp_path):
    source = small_autoencoder(RMSProp(0.01, momentum=0.9), seed=1)
    source.fit(data(100, 20), steps=5, batch_size=20)
    path = save_checkpoint(tmp_path / "r.npz", source, extra={"k": 1})
    target = small_autoencoder(RMSProp(0.01, momentum=0.9), seed=2)
    rng = target.rng
    result = restore_into(path, target)
    assert result.model is target and result.extra == {"k": 1}
    assert target.rng is rng  # restored in place: samplers holding it follow
    assert_same_state(target, source)

    other = small_autoencoder(Adam(0.01), seed=2)
    before = other.arena.values.copy()
    with pytest.raises(CheckpointError, match="different model") as info:
        restore_into(path, other)
    assert str(path) in str(info.value)
    assert np.array_equal(other.arena.values, before)  # untouched

    wider = small_autoencoder(RMSProp(0.01, momentum=0.9), seed=2, dtype="float64")
    with pytest.raises(CheckpointError, match="float32 parameters; the model is float64"):
        restore_into(path, wider)


# ---- 3. killed mid-write -----------------------------------------------------------
# The child saves a ~49 MB model (3500x3500 Dense, plain SGD: no optimizer buffers)
# to the same path, over and over, stamping each save with its iteration number in
# the first and last parameters, the step and `extra`. Its loop does almost nothing
# but write (and fsync) the temporary file, so a SIGKILL at a random moment lands
# mid-write nearly every time; no test hook in the library is needed. A kill that
# lands mid-write leaves a temporary file behind, which proves the case was hit: we
# require at least one such round (adding rounds when, by chance, none was).
CHILD = textwrap.dedent(
    """
    import sys
    from nanoae import Dense, Sequential, SGD
    from nanoae.checkpoint import save_checkpoint

    model = Sequential([Dense(3500, 3500)], loss="mse", optimizer=SGD(0.1)).build(backend="numpy", seed=0)
    i = 0
    while True:
        model.arena.values[:8] = i
        model.arena.values[-8:] = i
        model.steps_trained = i
        save_checkpoint(sys.argv[1], model, extra={"iteration": i})
        if i == 0:
            print("saved", flush=True)
        i += 1
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_killed_writer_leaves_a_valid_checkpoint(tmp_path):
    target = tmp_path / "big.npz"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "NANOAE_BACKEND": "numpy"}
    delays = [0.0, 0.03, 0.08, 0.13, 0.21, 0.05, 0.1, 0.17, 0.02, 0.25]
    mid_write_rounds = 0
    for round_index, delay in enumerate(delays):
        if round_index >= 5 and mid_write_rounds:
            break
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(target)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            ready, _, _ = select.select([child.stdout], [], [], 60)
            assert ready and child.stdout.readline() == b"saved\n", child.stderr.read().decode()
            time.sleep(delay)
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            child.stdout.close()
            child.stderr.close()
        assert child.returncode == -signal.SIGKILL

        strays = [p for p in tmp_path.iterdir() if p != target]
        for stray in strays:  # only the writer's own temporaries, never at the target name
            assert stray.name.startswith(f".{target.name}.tmp-{child.pid}-"), stray.name
        mid_write_rounds += bool(strays)

        loaded = load_checkpoint(target, backend="numpy")  # reads the target, never a temporary
        i = loaded.extra["iteration"]
        params = loaded.model.arena.values
        assert loaded.step == i
        assert np.all(params[:8] == i) and np.all(params[-8:] == i)
        assert params.shape == (3500 * 3500 + 3504,)

        assert sorted(remove_stale_temp_files(target)) == sorted(strays)
        assert list(tmp_path.iterdir()) == [target]
    assert mid_write_rounds >= 1, "no kill landed during a write; the test did not exercise its case"


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = small_autoencoder()
    path = save_checkpoint(tmp_path / "keep.npz", model, extra={"version": 1})
    before = path.read_bytes()

    def broken_savez(handle, **arrays):
        handle.write(b"PK\x03\x04 half an archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_module.np, "savez", broken_savez)
    model.fit(data(64, 20), steps=2, batch_size=32)
    with pytest.raises(CheckpointError, match="No space left on device") as info:
        save_checkpoint(path, model, extra={"version": 2})
    assert str(path) in str(info.value)

    def interrupted_savez(handle, **arrays):
        handle.write(b"PK")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_module.np, "savez", interrupted_savez)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, extra={"version": 3})
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]  # temporaries removed
    assert load_checkpoint(path, backend="numpy").extra == {"version": 1}


def test_stale_temp_files_of_live_processes_are_kept(tmp_path):
    target = tmp_path / "m.npz"
    mine = tmp_path / f".m.npz.tmp-{os.getpid()}-abcd1234"
    unrelated = tmp_path / ".other.npz.tmp-1-abcd1234"
    mine.write_bytes(b"x")
    unrelated.write_bytes(b"x")
    assert remove_stale_temp_files(target) == []
    assert mine.exists() and unrelated.exists()


# ---- 4. bad files ------------------------------------------------------------------
@pytest.fixture
def good(tmp_path):
    """A valid checkpoint's arrays, and a helper to write variants of it."""
    model = small_autoencoder(RMSProp(0.01, momentum=0.9))
    model.fit(data(64, 20), steps=2, batch_size=32)
    path = save_checkpoint(tmp_path / "good.npz", model, sampler=BatchSampler(64, 32, seed=7))
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    header = json.loads(arrays["header"].tobytes())

    def write(name, arrays=arrays, header=header, **changes):
        """Write the arrays with ``changes``; the header's checksums follow the arrays
        written (as a consistent writer's would), unless the header has none."""
        out = {**arrays, **changes}
        if "checksums" in header:
            kept = {k: v for k, v in out.items() if k != "header" and v is not None}
            header = {**header, "checksums": {k: ckpt_module._checksum(np.asarray(v)) for k, v in kept.items()}}
        out["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        target = tmp_path / name
        with open(target, "wb") as handle:
            np.savez(handle, **{k: v for k, v in out.items() if v is not None})
        return target

    return path, arrays, header, write


def expect_error(path, *fragments):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, backend="numpy")
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    assert info.value.path == pathlib.Path(path)
    return info.value


def test_text_file(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("these are not the weights you are looking for\n")
    expect_error(path, "not a nanoae checkpoint")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    expect_error(path, "not a nanoae checkpoint", "empty")


def test_truncated_file(good, tmp_path):
    path = good[0]
    blob = path.read_bytes()
    half = tmp_path / "half.npz"
    half.write_bytes(blob[: len(blob) // 2])
    expect_error(half, "corrupt or truncated")


def test_corrupted_bytes(good, tmp_path):
    path = good[0]
    blob = bytearray(path.read_bytes())
    start = blob.index(b"params.npy") + 200  # inside the params member's data
    blob[start:start + 64] = bytes(64)
    bad = tmp_path / "flipped.npz"
    bad.write_bytes(bytes(blob))
    expect_error(bad, "corrupt")


def test_npy_instead_of_npz(tmp_path):
    path = tmp_path / "one.npy"
    np.save(path, np.ones(3))
    expect_error(path, "not a nanoae checkpoint", ".npy")


def test_no_header(good, tmp_path):
    _, arrays, _, _ = good
    path = tmp_path / "noheader.npz"
    np.savez(path, params=arrays["params"])
    expect_error(path, "not a nanoae checkpoint", "no 'header'")


def test_garbled_header(good, tmp_path):
    _, arrays, _, _ = good
    path = tmp_path / "garbled.npz"
    np.savez(path, **{**arrays, "header": np.frombuffer(b"{not json", dtype=np.uint8)})
    expect_error(path, "not a nanoae checkpoint", "JSON")


def test_header_of_the_wrong_dtype(good, tmp_path):
    _, arrays, _, _ = good
    path = tmp_path / "floathdr.npz"
    np.savez(path, **{**arrays, "header": arrays["header"].astype(np.float32)})
    expect_error(path, "not a nanoae checkpoint", "uint8")


def test_wrong_format(good):
    _, _, header, write = good
    expect_error(write("fmt.npz", header={**header, "format": "keras-h5"}), "not a nanoae checkpoint", "keras-h5")


def test_newer_format_version(good):
    _, _, header, write = good
    expect_error(write("v99.npz", header={**header, "format_version": 99}),
                 "written by a newer nanoae (format 99)", "upgrade nanoae")


def test_missing_header_field(good):
    _, _, header, write = good
    header = {k: v for k, v in header.items() if k != "layout"}
    expect_error(write("nolayout.npz", header=header), "invalid header", "layout")


def test_params_of_the_wrong_shape(good):
    _, arrays, _, write = good
    expect_error(write("shape.npz", params=arrays["params"][:-16]), "'params'", "header says float32")


def test_params_of_the_wrong_dtype(good):
    _, arrays, _, write = good
    expect_error(write("dtype.npz", params=arrays["params"].astype(np.float64)), "'params'", "float64")


def test_layout_that_does_not_match_the_model(good):
    _, _, header, write = good
    layout = dict(header["layout"])
    layout["encoder.0.weights"] = [layout["encoder.0.weights"][0], [8, 20]]  # transposed
    expect_error(write("layout.npz", header={**header, "layout": layout}), "layout differs", "encoder.0.weights")


def test_missing_optimizer_buffer(good):
    _, _, _, write = good
    expect_error(write("noopt.npz", **{"optimizer/momentum": None}), "missing optimizer buffer", "optimizer/momentum")


def test_unknown_array(good):
    _, _, _, write = good
    expect_error(write("more.npz", surprise=np.ones(3)), "unexpected array 'surprise'")


def test_unknown_bit_generator_name_is_not_looked_up(good):
    _, _, header, write = good
    state = np.random.get_state()
    rng_state = {**header["rng_state"], "bit_generator": "seed"}  # np.random.seed would reseed
    expect_error(write("bitgen.npz", header={**header, "rng_state": rng_state}), "unknown bit generator 'seed'")
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), state))


@pytest.mark.parametrize("owner", ["model", "sampler"])
@pytest.mark.parametrize("dtype", ["nonsense", "float64", "object"])
def test_a_garbled_array_in_an_rng_state_is_the_files_fault(good, owner, dtype):
    _, _, header, write = good
    bad = {"__ndarray__": [1, 2], "dtype": dtype}
    if owner == "model":
        changed = {**header, "rng_state": {**header["rng_state"], "state": bad}}
    else:
        sampler = header["sampler"]
        changed = {**header, "sampler": {**sampler, "rng_state": {**sampler["rng_state"], "state": bad}}}
    expect_error(write(f"rng-{owner}-{dtype}.npz", header=changed), f"the {owner}'s rng_state holds a bad array")


def test_model_config_that_cannot_be_rebuilt(good):
    _, _, header, write = good
    expect_error(write("cfg.npz", header={**header, "model": {"type": "Transformer"}}),
                 "cannot rebuild the model", "Transformer")


class Evil:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.parametrize("slot", ["params", "header", "extra_member"])
def test_object_arrays_are_never_unpickled(good, tmp_path, slot):
    _, arrays, _, write = good
    marker = tmp_path / f"pwned-{slot}"
    evil = np.array([Evil(marker), 1], dtype=object)
    name = {"params": "params", "header": "header", "extra_member": "sampler/permutation"}[slot]
    path = tmp_path / f"evil-{slot}.npz"
    np.savez(path, **{**arrays, name: evil})  # np.savez pickles object arrays

    expect_error(path, f"array {name!r} holds Python objects (pickled data)", "nothing was unpickled")
    assert not marker.exists()
    # The test has teeth: unpickling the same file does run the payload.
    with np.load(path, allow_pickle=True) as archive:
        archive[name]
    assert marker.exists()


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.npz", "no such file")


def test_directory_instead_of_a_file(tmp_path):
    expect_error(tmp_path, "is a directory")


def test_save_where_the_parent_is_a_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    target = blocker / "model.npz"
    with pytest.raises(CheckpointError, match="cannot create the directory") as info:
        save_checkpoint(target, small_autoencoder())
    assert str(target) in str(info.value)
    assert info.value.path == target


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores directory permissions")
def test_save_into_a_read_only_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match="cannot write in the directory") as info:
            save_checkpoint(locked / "model.npz", small_autoencoder())
        assert str(locked / "model.npz") in str(info.value)
    finally:
        locked.chmod(0o700)


def test_save_when_the_directory_refuses_new_files(tmp_path, monkeypatch):
    """The read-only case above, also for root: the temporary file cannot be created."""
    real_open = os.open

    def refusing_open(path, flags, *args):
        if ".tmp-" in os.fspath(path):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(ckpt_module.os, "open", refusing_open)
    with pytest.raises(CheckpointError, match="cannot write in the directory .*Permission denied") as info:
        save_checkpoint(tmp_path / "model.npz", small_autoencoder())
    assert str(tmp_path / "model.npz") in str(info.value)
    assert isinstance(info.value.__cause__, PermissionError)


def test_save_onto_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        save_checkpoint(tmp_path, small_autoencoder())


def test_unbuilt_model_cannot_be_saved(tmp_path):
    model = Sequential([Dense(3, 2)], loss="mse", optimizer="sgd")
    with pytest.raises(CheckpointError, match="not built"):
        save_checkpoint(tmp_path / "u.npz", model)


# ---- 5. dtypes and backends --------------------------------------------------------
def test_float32_stays_float32(tmp_path):
    model = small_autoencoder()
    loaded = load_checkpoint(save_checkpoint(tmp_path / "f.npz", model), backend="numpy")
    assert loaded.model.arena.values.dtype == np.float32
    assert all(buf.dtype == np.float32 for buf in loaded.model.optimizer.state.values())
    with np.load(tmp_path / "f.npz", allow_pickle=False) as archive:
        assert archive["params"].dtype == np.float32


def test_checkpoints_cross_backends(tmp_path, backend_name):
    """Host arrays and JSON only: NumPy -> backend_name and backend_name -> NumPy."""
    x = data(64, 20)
    cpu = small_autoencoder(Adam(0.01), backend="numpy")
    cpu.fit(x, steps=3, batch_size=32)
    on_device = load_checkpoint(save_checkpoint(tmp_path / "cpu.npz", cpu), backend=backend_name)
    assert on_device.model.backend.name == backend_name
    assert np.dtype(on_device.model.arena.values.dtype) == np.float32
    assert_same_state(on_device.model, cpu)
    assert "backend" not in on_device.header

    device = small_autoencoder(RMSProp(0.01, momentum=0.9), backend=backend_name)
    device.fit(x, steps=3, batch_size=32)
    back = load_checkpoint(save_checkpoint(tmp_path / "dev.npz", device), backend="numpy")
    assert back.model.backend.name == "numpy"
    assert_same_state(back.model, device)


# ---- 5. files written by earlier code ----------------------------------------------
FIXTURES = pathlib.Path(__file__).resolve().parent / "data"


def test_a_checkpoint_written_before_the_sampler_owned_its_generator_still_loads():
    """tests/data/checkpoint-9ef28b8.npz was written by the code of commit 9ef28b8 (a
    denoising Autoencoder with LeakyReLU, weight decay, an L1 code penalty, BCE and Adam,
    after 3 steps), with that code's outputs beside it: today's code rebuilds the same
    model, gives the same outputs and continues the saved epoch where it stopped."""
    restored = load_checkpoint(FIXTURES / "checkpoint-9ef28b8.npz", backend="numpy")
    model = restored.model
    with np.load(FIXTURES / "checkpoint-9ef28b8-outputs.npz") as saved:
        expected = {name: saved[name] for name in saved.files}
    assert type(model) is Autoencoder and model.steps_trained == 3 and model.optimizer.update_count == 3
    assert [type(layer).__name__ for layer in model.encoder] == ["Dense", "LeakyReLU", "Dense", "ActivityL1"]
    assert model.encoder[0].weight_decay == 1e-3 and model.corruption.config() == {"kind": "mask", "p": 0.2}
    np.testing.assert_allclose(model.reconstruct(expected["x"]), expected["reconstruction"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(model.encode(expected["x"]), expected["code"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(restore_sampler(restored).next_indices(), expected["next_batch"])


# ---- 6. untrusted input: sizes checked before anything is inflated or allocated -------
def npy_bytes(array) -> bytes:
    """``array`` as the bytes of a .npy file (what np.savez puts in each member)."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def raw_zip(path, members):
    """Write a zip by hand, so that its directory may lie.

    members: (name, method, stored_bytes, declared_size, crc), method 0 (stored) or
    8 (raw deflate data). Nothing is checked: that is the point.
    """
    local, directory = bytearray(), bytearray()
    for name, method, stored, declared, crc in members:
        encoded = name.encode()
        offset = len(local)
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(stored), declared, len(encoded), 0)
        local += encoded + stored
        directory += struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, len(stored), declared,
            len(encoded), 0, 0, 0, 0, 0, offset,
        )
        directory += encoded
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(directory), len(local), 0)
    pathlib.Path(path).write_bytes(bytes(local + directory + end))


def stored(name, content: bytes):
    return (name, 0, content, len(content), zlib.crc32(content))


def deflated_zeros(prefix: bytes, zeros: int) -> bytes:
    """Raw deflate data of ``prefix`` then ``zeros`` zero bytes, built from one
    compressed 1 MiB block repeated (each ends in a full flush, so copies join):
    4 GB of zeros costs about 4 MB and no time."""
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = [head.compress(prefix) + head.flush(zlib.Z_FULL_FLUSH)]
    block_size = 2**20
    block = zlib.compressobj(9, zlib.DEFLATED, -15)
    one = block.compress(bytes(block_size)) + block.flush(zlib.Z_FULL_FLUSH)
    out.append(one * (zeros // block_size))
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    out.append(tail.compress(bytes(zeros % block_size)) + tail.flush(zlib.Z_FINISH))
    return b"".join(out)


def test_deflated_zeros_really_inflate():
    """The bomb helper makes what it says: 3 MiB + 5 zeros after the prefix."""
    data_ = deflated_zeros(b"abc", 3 * 2**20 + 5)
    assert zlib.decompress(data_, -15) == b"abc" + bytes(3 * 2**20 + 5)


BOMB_BYTES = 4_000_000_000  # a params member inflating to 4 GB (a zip without ZIP64 holds < 2**32)

BOMB_CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    from nanoae.checkpoint import CheckpointError, load_checkpoint
    results = []
    for path in sys.argv[1:]:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        try:
            load_checkpoint(path, backend="numpy")
            outcome = "loaded"
        except CheckpointError as exc:
            outcome = "CheckpointError: " + str(exc)
        seconds = time.perf_counter() - start
        growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB on Linux
        results.append({"path": path, "outcome": outcome, "seconds": seconds, "peak_growth_kib": growth})
    print(json.dumps(results))
    """
)


def make_bombs(good, tmp_path) -> dict:
    """Each way of hiding 4 GB behind ~4 MB: a header for the small model, a header whose
    layout matches the huge member, and a directory that understates the inflated size."""
    _, arrays, header, _ = good
    def header_member(document):
        return stored("header.npy", npy_bytes(np.frombuffer(json.dumps(document).encode(), dtype=np.uint8)))

    count = (BOMB_BYTES - 128) // 4
    preamble = npy_bytes(np.zeros(0, np.float32))  # the 128-byte preamble of a float32 array...
    preamble = preamble.replace(b"(0,)", f"({count},)".encode()).replace(b" " * (len(str(count)) - 1) + b"\n", b"\n")
    assert len(preamble) == 128 and f"({count},)".encode() in preamble
    data_ = deflated_zeros(preamble, count * 4)
    inflated = len(preamble) + count * 4
    others = [stored(f"{name}.npy", npy_bytes(value)) for name, value in arrays.items() if name not in ("header", "params")]
    huge = {**header, "arena_size": count, "layout": {"encoder.0.weights": [0, [count]]}}
    small_size = len(npy_bytes(arrays["params"]))
    bombs = {
        "small header": [header_member(header), ("params.npy", 8, data_, inflated, 0), *others],
        "matching huge layout": [header_member(huge), ("params.npy", 8, data_, inflated, 0)],
        "understated size": [header_member(header), ("params.npy", 8, data_, small_size, 0), *others],
    }
    paths = {}
    for name, members in bombs.items():
        paths[name] = tmp_path / (name.replace(" ", "-") + ".npz")
        raw_zip(paths[name], members)
        assert paths[name].stat().st_size < 8_000_000
    return paths


@pytest.mark.skipif(sys.platform != "linux", reason="reads peak RSS in KiB as Linux reports it")
def test_a_deflate_bomb_is_refused_fast_and_small(good, tmp_path):
    """A ~4 MB file whose params member inflates to 4 GB: refused in under 1 s with under
    100 MB of peak memory growth, however its header describes the model. (The reader
    before these checks inflated all 4 GB: 16 s and 4 GB of RSS.)"""
    paths = make_bombs(good, tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "NANOAE_BACKEND": "numpy"}
    done = subprocess.run([sys.executable, "-c", BOMB_CHILD, *map(str, paths.values())],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for name, result in zip(paths, results):
        assert result["outcome"].startswith("CheckpointError"), (name, result)
        assert result["seconds"] < 1.0, (name, result)
        assert result["peak_growth_kib"] < 100 * 1024, (name, result)
    assert "decompression bomb" in results[0]["outcome"] and "decompression bomb" in results[1]["outcome"]
    assert "'params'" in results[2]["outcome"]


def test_a_member_whose_data_lies_beyond_the_file_is_refused_before_reading(good, tmp_path):
    _, arrays, header, _ = good
    content = npy_bytes(np.frombuffer(json.dumps(header).encode(), dtype=np.uint8))
    params = npy_bytes(arrays["params"])
    name, method, data_, _, crc = stored("params.npy", params)
    path = tmp_path / "beyond.npz"
    raw_zip(path, [stored("header.npy", content), (name, method, data_, 2**31, crc)])
    expect_error(path, "'params'")


def test_a_header_describing_a_huge_model_is_refused_before_building_it(good, monkeypatch):
    """The config asks for a 200k-unit model (tens of GB) while the arena holds the small
    one: refused from the config alone, and no model is ever built."""
    _, _, header, write = good
    model_config = json.loads(json.dumps(header["model"]))
    model_config["encoder"]["layers"][0]["out_features"] = 200_000
    model_config["encoder"]["layers"][1]["in_features"] = 200_000
    path = write("huge-config.npz", header={**header, "model": model_config})
    arenas = []
    real_init = ParameterArena.__init__
    monkeypatch.setattr(ParameterArena, "__init__", lambda self, *a, **k: arenas.append(1) or real_init(self, *a, **k))
    expect_error(path, "the model config declares", "refused before building the model")
    assert arenas == []
    load_checkpoint(good[0], backend="numpy")  # the spy does see a model being built
    assert arenas == [1]


def test_a_layout_bigger_than_the_stored_arrays_is_refused(good):
    """arena_size and layout claim a bigger model than the stored params array holds."""
    _, arrays, header, write = good
    size = header["arena_size"] * 1000
    layout = {**header["layout"], "encoder.0.weights": [0, [20, 8000]]}
    expect_error(write("bigger.npz", header={**header, "arena_size": size, "layout": layout}),
                 "'params'", f"the header says float32 ({size},)")


def test_duplicated_member_is_refused(good, tmp_path):
    path, arrays, _, _ = good
    twice = tmp_path / "twice.npz"
    with zipfile.ZipFile(twice, "w") as archive:
        for name in arrays:
            archive.writestr(f"{name}.npy", npy_bytes(arrays[name]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
            archive.writestr("params.npy", npy_bytes(np.zeros_like(arrays["params"])))
    expect_error(twice, "holds array 'params' twice")


@pytest.mark.parametrize("first, second", [("params", "optimizer/momentum"), ("optimizer/mean_square", "optimizer/momentum")])
def test_members_swapped_whole_are_refused_by_their_checksums(good, tmp_path, first, second):
    """Same shape, same dtype, each member intact (its CRC fine): only the header's
    checksums tell that the arrays were exchanged."""
    _, arrays, _, _ = good
    path = tmp_path / "swapped.npz"
    np.savez(path, **{**arrays, first: arrays[second], second: arrays[first]})
    expect_error(path, "does not match the header's checksum")


def test_checksums_name_exactly_the_arrays(good, tmp_path):
    _, arrays, header, _ = good
    path = tmp_path / "more-checksums.npz"
    listed = {**header["checksums"], "optimizer/velocity": "sha256:00"}
    np.savez(path, **{**arrays, "header": np.frombuffer(json.dumps({**header, "checksums": listed}).encode(), dtype=np.uint8)})
    expect_error(path, "the header has checksums for")


def test_a_recompressed_checkpoint_still_loads(good, tmp_path):
    """savez_compressed of a real checkpoint: float parameters shrink little, so it loads."""
    path, arrays, _, _ = good
    squeezed = tmp_path / "squeezed.npz"
    np.savez_compressed(squeezed, **arrays)
    a, b = load_checkpoint(path, backend="numpy").model, load_checkpoint(squeezed, backend="numpy").model
    assert_same_state(a, b)


@pytest.mark.parametrize("dtype", ["int32", "float16", "complex64", "bool", "<U4"])
def test_params_of_other_dtypes_are_refused_from_their_npy_header(good, dtype):
    _, arrays, _, write = good
    expect_error(write(f"dtype-{dtype.strip('<>')}.npz", params=arrays["params"].astype(dtype)), "'params'")


def test_big_endian_params_load_as_the_same_numbers(good):
    path, arrays, _, write = good
    swapped = write("big-endian.npz", params=arrays["params"].astype(">f4"))
    assert_same_state(load_checkpoint(path, backend="numpy").model, load_checkpoint(swapped, backend="numpy").model)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("member", ["params", "optimizer/mean_square"])
def test_non_finite_parameters_are_refused_unless_asked_for(good, bad, member):
    _, arrays, header, write = good
    values = arrays[member].copy()
    offset = header["layout"]["decoder.1.weights"][0]
    values[offset + 3] = bad
    path = write("nonfinite.npz", **{member: values})
    error = expect_error(path, f"array {member!r} holds 1 non-finite value(s)", "allow_non_finite=True")
    if member == "params":
        assert "'decoder.1.weights'" in str(error)
    loaded = load_checkpoint(path, backend="numpy", allow_non_finite=True)
    state = loaded.model.arena.values if member == "params" else loaded.model.optimizer.state["mean_square"]
    assert np.array_equal(host(state), values, equal_nan=True)


# ---- 7. JSON out: strict, never NaN or Infinity ----------------------------------------
def strict_loads(text):
    """json.loads that refuses the NaN/Infinity tokens instead of reading them."""
    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token!r} in {text!r}")

    return json.loads(text, parse_constant=refuse)


finite_or_not = st.floats(allow_nan=True, allow_infinity=True, width=32) | st.floats()
json_documents = st.recursive(
    finite_or_not | st.integers() | st.text(max_size=5) | st.none() | st.booleans(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text("abc", max_size=3), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text("xyz", min_size=1, max_size=3), json_documents, max_size=5))
def test_json_text_is_strict_and_names_each_non_finite_number(document):
    parsed = strict_loads(json_text(document))
    named = parsed.pop("non_finite", {})

    def walk(original, back, where):
        if isinstance(original, dict):
            assert set(back) == {str(k) for k in original}
            for key, value in original.items():
                walk(value, back[str(key)], f"{where}.{key}" if where else str(key))
        elif isinstance(original, (list, tuple)):
            assert len(back) == len(original)
            for index, value in enumerate(original):
                walk(value, back[index], f"{where}.{index}" if where else str(index))
        elif isinstance(original, float) and not np.isfinite(original):
            assert back is None and named.pop(where) == ("nan" if np.isnan(original) else "inf" if original > 0 else "-inf")
        else:
            assert back == original

    walk(document, parsed, "")
    assert named == {}  # nothing named that was not replaced


def test_write_json_atomically_writes_strict_json(tmp_path):
    target = write_json_atomically(tmp_path / "result.json", {"loss": float("nan"), "history": [1.0, np.float32("inf")], "ok": 2})
    assert strict_loads(target.read_text()) == {
        "loss": None, "history": [1.0, None], "ok": 2, "non_finite": {"loss": "nan", "history.1": "inf"},
    }


def test_eval_refuses_a_checkpoint_with_non_finite_parameters(tmp_path, capsys):
    model = Autoencoder([Dense(784, 4, "relu")], [Dense(4, 784, "sigmoid")], seed=0)
    model.arena.values[5] = np.nan
    path = save_checkpoint(tmp_path / "nan.npz", model, allow_non_finite=True)  # written for inspection
    assert main(["eval", str(path), "--data", str(tmp_path), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "non-finite" in captured.err and "'encoder.0.weights'" in captured.err and "Traceback" not in captured.err


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_eval_json_of_an_overflowing_model_is_strict(tmp_path, mnist_dir, capsys):
    """Finite parameters so large the reconstruction overflows: eval --json prints null
    for the infinite MSE and says why, never the token Infinity."""
    model = Autoencoder([Dense(784, 4, "identity")], [Dense(4, 784, "identity")], loss="mse", seed=0)
    model.arena.values[...] = 1e30
    path = save_checkpoint(tmp_path / "huge.npz", model)
    assert main(["eval", str(path), "--data", str(mnist_dir), "--json"]) == 0
    result = strict_loads(capsys.readouterr().out)
    assert result["mse"] is None and result["non_finite"]["mse"] == "inf"
