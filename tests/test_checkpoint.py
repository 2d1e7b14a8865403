"""Checkpoints: exact round trips, bit-for-bit resume, atomic writes, hostile files."""

import json
import os
import pathlib
import select
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import nanoae
from nanoae import SGD, Adam, AdamW, Autoencoder, Dense, RMSProp, Sequential, presets
from nanoae import checkpoint as ckpt_module
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
        out = dict(arrays)
        out["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        out.update(changes)
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
