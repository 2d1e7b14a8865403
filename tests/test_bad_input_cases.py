"""Bad input a user met, each as it must now be met (the rows of docs/reliability.md
that no other test module covers): resume options, run directories, diverging runs,
untrusted checkpoints, BCE targets, huge layers, and commands that find a run's data
on their own."""

from __future__ import annotations

import io
import json
import shutil
import time
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nanoae import SGD, Autoencoder, Dense, RMSProp, Sequential
from nanoae.atomic import write_json_atomically
from nanoae.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from nanoae.cli import main

STEPS = 3


def run(args) -> int:
    return main([str(arg) for arg in args])


def train_args(out, mnist_dir, *extra) -> list:
    return ["train", "--data", mnist_dir, "--out", out, "--steps", STEPS, "--batch-size", 32, "--log-every", 1,
            "--eval-every", 0, "--checkpoint-every", 1, "--quiet", "--backend", "numpy", *extra]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, mnist_dir) -> Path:
    """A 3-step tutorial run (batch 32, a checkpoint every step); copy it before changing it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert run(train_args(out, mnist_dir)) == 0
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def snapshot(directory: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def resume(run_dir: Path, mnist_dir, *extra, steps=STEPS + 2) -> int:
    return run(["train", "--resume", run_dir / "checkpoint.npz", "--data", mnist_dir, "--steps", steps, "--quiet",
                "--eval-every", 0, *extra])


def rewrite(path: Path, change) -> None:
    """Rewrite a checkpoint's arrays through ``change(header dict, arrays dict)``,
    bypassing save_checkpoint (whose checks would refuse what we write)."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    header = json.loads(arrays["header"].tobytes().decode("utf-8"))
    header.pop("checksums", None)  # as a file written before checksums were stored
    change(header, arrays)
    arrays["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


# ---- resume ----------------------------------------------------------------------------
def test_resume_refuses_each_flag_that_differs_from_the_run_and_writes_nothing(run_copy, mnist_dir, capsys):
    before = snapshot(run_copy)
    code = resume(run_copy, mnist_dir, "--optimizer", "sgd", "--preset", "sparse", "--output-activation", "sigmoid", "--seed", 5)
    err = capsys.readouterr().err
    assert code == 2
    for flag in ("--optimizer", "--preset", "--output-activation", "--seed"):
        assert flag in err, (flag, err)
    assert snapshot(run_copy) == before


def test_resume_refuses_another_dataset(run_copy, mnist_dir, capsys):
    before = snapshot(run_copy)
    assert resume(run_copy, mnist_dir, "--dataset", "fashion") == 2
    assert "--dataset" in capsys.readouterr().err
    assert snapshot(run_copy) == before


def test_a_fashion_run_resumed_without_dataset_stays_on_fashion(run_copy, mnist_dir, capsys):
    """The checkpoint's dataset is the run's: given MNIST files, a Fashion-MNIST run refuses
    them (they fail Fashion-MNIST's checksums) instead of training on MNIST."""
    def to_fashion(header, arrays):
        header["extra"]["config"]["dataset"] = "fashion"

    rewrite(run_copy / "checkpoint.npz", to_fashion)
    config = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps({**config, "dataset": "fashion"}))
    before = snapshot(run_copy)
    assert resume(run_copy, mnist_dir) == 2
    assert "Fashion-MNIST" in capsys.readouterr().err
    assert snapshot(run_copy) == before


def test_resume_to_a_total_not_beyond_the_checkpoint_is_a_usage_error(run_copy, mnist_dir, capsys):
    before = snapshot(run_copy)
    assert resume(run_copy, mnist_dir, steps=2) == 2
    err = capsys.readouterr().err
    assert "--steps" in err and str(STEPS) in err, err
    assert snapshot(run_copy) == before


def test_resume_with_another_batch_size_changes_nothing(run_copy, mnist_dir, capsys):
    before = snapshot(run_copy)
    assert resume(run_copy, mnist_dir, "--batch-size", 64) == 2
    assert "--batch-size" in capsys.readouterr().err
    assert snapshot(run_copy) == before  # config.json included


def test_resume_accepts_a_flag_given_with_the_runs_own_value(run_copy, mnist_dir):
    assert resume(run_copy, mnist_dir, "--batch-size", 32, "--preset", "tutorial", "--seed", 0) == 0
    assert load_checkpoint(run_copy / "checkpoint.npz", backend="numpy").step == STEPS + 2


def test_resume_lr_override_is_used_and_recorded(run_copy, mnist_dir):
    assert resume(run_copy, mnist_dir, "--lr", 0.002) == 0
    resumed = load_checkpoint(run_copy / "checkpoint.npz", backend="numpy")
    assert resumed.model.optimizer.lr == pytest.approx(0.002)
    config = json.loads((run_copy / "config.json").read_text())
    assert config["lr"] == pytest.approx(0.002)
    assert type(resumed.model.optimizer).__name__ == "RMSProp"  # the run's optimizer kind, kept


def test_resume_keeps_each_metrics_step_once(tmp_path, mnist_dir):
    """Rows past the checkpoint's step (logged after its last save) are dropped on resume."""
    out = tmp_path / "run"
    assert run(train_args(out, mnist_dir, "--steps", 2)) == 0  # the later --steps wins
    early = (out / "checkpoint.npz").read_bytes()
    assert resume(out, mnist_dir, "--checkpoint-every", 1, "--log-every", 1, steps=4) == 0
    (out / "checkpoint.npz").write_bytes(early)  # as if steps 3 and 4 were logged but never saved
    assert resume(out, mnist_dir, "--checkpoint-every", 1, "--log-every", 1, steps=6) == 0
    steps = [int(line.split(",")[0]) for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]


# ---- run directories ---------------------------------------------------------------------
def test_a_non_empty_directory_that_is_not_a_run_is_refused(tmp_path, mnist_dir, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me\n")
    assert run(train_args(out, mnist_dir)) == 2
    assert str(out) in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_overwrite_replaces_only_nanoaes_own_files(run_copy, mnist_dir):
    (run_copy / "notes.txt").write_text("keep me\n")
    assert run(train_args(run_copy, mnist_dir, "--overwrite")) == 0
    assert (run_copy / "notes.txt").read_text() == "keep me\n"


def test_stale_temporaries_are_removed_at_the_next_save(run_copy, mnist_dir):
    # Named like write_atomically's temporaries, by a process id that no longer runs.
    stale = [run_copy / f".{name}.tmp-999999999-0badf00d" for name in ("checkpoint.npz", "config.json", "metrics.csv")]
    for path in stale:
        path.write_bytes(b"half a file")
    assert resume(run_copy, mnist_dir) == 0
    assert not [p for p in stale if p.exists()]


def test_resume_into_another_runs_directory_needs_overwrite(run_copy, finished_run, tmp_path, mnist_dir, capsys):
    other = Path(shutil.copytree(finished_run, tmp_path / "other"))
    before = snapshot(other)
    assert resume(run_copy, mnist_dir, "--out", other) == 2
    assert str(other) in capsys.readouterr().err
    assert snapshot(other) == before


def test_json_files_never_hold_nan_or_infinity(tmp_path):
    path = tmp_path / "result.json"
    try:
        write_json_atomically(path, {"mse": float("nan"), "bce": float("inf")})
    except ValueError:
        assert not path.exists()  # refused: nothing written
    else:
        strict_json(path.read_text())


# ---- divergence ----------------------------------------------------------------------------
DIVERGING = ["--optimizer", "sgd", "--lr", 1e4, "--output-activation", "identity"]


def test_a_run_diverging_before_any_checkpoint_says_none_was_written(tmp_path, mnist_dir, capsys):
    out = tmp_path / "run"
    args = train_args(out, mnist_dir, *DIVERGING, "--steps", 200, "--checkpoint-every", 0)
    assert run(args) == 3
    err = capsys.readouterr().err
    assert not (out / "checkpoint.npz").exists()
    assert "no checkpoint" in err and "last good checkpoint is kept" not in err, err


def test_a_diverged_runs_message_names_the_checkpoint_that_exists(tmp_path, mnist_dir, capsys):
    out = tmp_path / "run"
    assert run(train_args(out, mnist_dir, *DIVERGING, "--steps", 200)) == 3
    err = capsys.readouterr().err
    saved = load_checkpoint(out / "checkpoint.npz", backend="numpy")
    assert str(out / "checkpoint.npz") in err and f"step {saved.step}" in err, err
    assert np.isfinite(saved.model.arena.values).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw NumPy overflow warning reaches the user
        assert run(["eval", out / "checkpoint.npz", "--data", mnist_dir, "--json"]) == 0
    captured = capsys.readouterr()
    result = strict_json(captured.out)
    assert result["step"] == saved.step
    if result.get("non_finite"):  # the overflow is said once, in words
        assert "reconstructions overflow" in captured.err


def overflowing_model():
    model = Autoencoder([Dense(8, 4, "identity")], [Dense(4, 8, "identity")], loss="mse", optimizer=RMSProp(0.001),
                        backend="numpy", seed=0)
    model.train_step(np.full((4, 8), 0.5, np.float32))  # one good step: the optimizer has state
    model.arena.values[:] = 1e30  # the forward pass overflows float32: the loss is inf
    return model


def host_copy(value):
    return {k: host_copy(v) for k, v in value.items()} if isinstance(value, dict) else np.array(value, copy=True)


def test_a_non_finite_step_is_not_applied():
    model = overflowing_model()
    values, steps, state = model.arena.values.copy(), model.steps_trained, host_copy(model.optimizer.state_dict())
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError) as caught:
        model.train_step(np.ones((4, 8), np.float32))
    assert type(caught.value) is not FloatingPointError  # nanoae's own, documented subclass
    assert "not applied" in str(caught.value) or "learning rate" in str(caught.value)
    np.testing.assert_array_equal(model.arena.values, values)
    assert model.steps_trained == steps == 1
    after = host_copy(model.optimizer.state_dict())
    assert after.keys() == state.keys()
    for key in state:
        if isinstance(state[key], dict):
            for name in state[key]:
                np.testing.assert_array_equal(after[key][name], state[key][name])
        else:
            np.testing.assert_array_equal(after[key], state[key])


def test_a_checkpoint_is_never_written_from_non_finite_parameters(tmp_path):
    model = Autoencoder([Dense(8, 4)], [Dense(4, 8)], backend="numpy", seed=0)
    model.arena.values[3] = np.nan
    with pytest.raises((ValueError, FloatingPointError), match="finite|NaN"):
        save_checkpoint(tmp_path / "c.npz", model)
    assert not (tmp_path / "c.npz").exists()


# ---- untrusted checkpoints -------------------------------------------------------------------
def small_checkpoint(path: Path) -> Path:
    model = Autoencoder([Dense(8, 4)], [Dense(4, 8)], optimizer=SGD(0.1), backend="numpy", seed=0)
    return save_checkpoint(path, model)


def bounded(call, seconds=1.0, megabytes=100):
    """``call()``'s exception, checked to come within the time and memory bounds."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(CheckpointError) as caught:
            call()
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < seconds, f"{elapsed:.2f} s"
    assert peak < megabytes * 2**20, f"{peak / 2**20:.0f} MB"
    return caught.value


def test_an_inflating_params_member_is_refused_before_it_is_read(tmp_path):
    """A deflate bomb: 'params' claims (and inflates to) 400 MB for a 100-number model."""
    path = small_checkpoint(tmp_path / "c.npz")
    bomb = tmp_path / "bomb.npz"
    n = 100 * 2**20
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (n,)})
    with zipfile.ZipFile(path) as good, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as out:
        for info in good.infolist():
            if info.filename != "params.npy":
                out.writestr(info.filename, good.read(info.filename))
                continue
            with out.open("params.npy", "w", force_zip64=True) as member:
                member.write(header.getvalue())
                zeros = bytes(2**22)
                for _ in range(n * 4 // len(zeros)):
                    member.write(zeros)
    assert bomb.stat().st_size < 2**21
    error = bounded(lambda: load_checkpoint(bomb, backend="numpy"))
    assert "params" in str(error)


def test_a_header_describing_a_bigger_model_is_refused_before_building_it(tmp_path):
    path = small_checkpoint(tmp_path / "c.npz")

    def widen(header, arrays):
        """The config claims 8 -> 2,000,000 -> 8 (32 million parameters, 128 MB, twice that
        with gradients); the layout and the arrays stay those of the 100-number model."""
        header["model"]["encoder"]["layers"][0]["out_features"] = 2_000_000
        header["model"]["decoder"]["layers"][0]["in_features"] = 2_000_000

    rewrite(path, widen)
    bounded(lambda: load_checkpoint(path, backend="numpy"))


def test_non_finite_parameters_are_refused_unless_asked_for(tmp_path):
    path = small_checkpoint(tmp_path / "c.npz")

    def poison(header, arrays):
        arrays["params"] = arrays["params"].copy()
        arrays["params"][0] = np.nan

    rewrite(path, poison)
    with pytest.raises(CheckpointError, match="finite|NaN"):
        load_checkpoint(path, backend="numpy")
    inspected = load_checkpoint(path, backend="numpy", allow_non_finite=True)
    assert np.isnan(inspected.model.arena.values[0])


def test_eval_of_a_non_finite_checkpoint_is_an_error_and_never_prints_nan(run_copy, mnist_dir, capsys):
    def poison(header, arrays):
        arrays["params"] = np.full_like(arrays["params"], np.nan)

    rewrite(run_copy / "checkpoint.npz", poison)
    assert run(["eval", run_copy / "checkpoint.npz", "--data", mnist_dir, "--json"]) == 2
    out, err = capsys.readouterr()
    assert "NaN" not in out and "Infinity" not in out
    assert str(run_copy / "checkpoint.npz") in err


def strict_json(text: str):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_eval_json_is_strict_json(finished_run, mnist_dir, capsys):
    assert run(["eval", finished_run / "checkpoint.npz", "--data", mnist_dir, "--json"]) == 0
    result = strict_json(capsys.readouterr().out)
    assert result["step"] == STEPS and np.isfinite(result["mse"])


# ---- other bad input --------------------------------------------------------------------------
def test_bce_targets_outside_the_unit_interval_are_refused():
    model = Autoencoder([Dense(8, 4)], [Dense(4, 8, "sigmoid")], loss="bce", backend="numpy", seed=0)
    before = model.arena.values.copy()
    target = np.full((4, 8), 0.5, np.float32)
    target[1, 2] = 1.5
    with pytest.raises(ValueError, match=r"\[0, 1\]") as caught:
        model.train_step(np.full((4, 8), 0.5, np.float32), target)
    assert "1.5" in str(caught.value)
    np.testing.assert_array_equal(model.arena.values, before)


def test_a_layer_too_big_for_memory_names_the_size_asked_for():
    with pytest.raises(MemoryError) as caught:  # 10**10 float32 parameters: 40 GB
        Sequential([Dense(10**9, 10)], loss="mse", optimizer=SGD(0.1)).build(backend="numpy", seed=0)
    message = str(caught.value)
    assert "Unable to allocate" not in message  # nanoae's message, not NumPy's
    assert "parameters" in message and any(unit in message for unit in ("GB", "GiB", "bytes")), message


# ---- a run's data, found from its record ---------------------------------------------------------
@pytest.mark.parametrize("command", ["eval", "plot"])
def test_eval_and_plot_find_the_runs_data_without_data(command, run_copy, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("NANOAE_DATA", raising=False)
    monkeypatch.setenv("NANOAE_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("NANOAE_MIRRORS", "http://127.0.0.1:9/{dataset}")  # nothing answers there
    monkeypatch.setattr("nanoae.data.sources.SAMPLE_DIR", tmp_path / "no-sample")  # only the recorded data will do
    assert run([command, run_copy / "checkpoint.npz"]) == 0, capsys.readouterr().err
    if command == "eval":
        assert "10000 images" in capsys.readouterr().out
