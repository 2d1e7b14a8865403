"""The nanoae command: the tutorial run, resume, eval, plot, gradcheck, and bad arguments."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from nanoae.checkpoint import load_checkpoint
from nanoae.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(args):
    return main([str(arg) for arg in args])


def small_run(out, mnist_dir, steps=20, *extra):
    return run(["train", "--data", mnist_dir, "--out", out, "--steps", steps, "--log-every", 5, "--eval-every", 10, "--checkpoint-every", 10, "--quiet", *extra])


def test_train_writes_the_whole_run_directory(tmp_path, mnist_dir, capsys):
    out = tmp_path / "run"
    assert small_run(out, mnist_dir) == 0
    summary = capsys.readouterr().out
    assert "step 20: final training loss" in summary and "test reconstruction MSE" in summary
    config = json.loads((out / "config.json").read_text())
    assert config["preset"] == "tutorial" and config["steps"] == 20 and config["batch_size"] == 256
    assert config["optimizer_config"] == {"name": "rmsprop", "lr": 0.001, "rho": 0.9, "eps": 1e-10, "momentum": 0.0, "flavor": "tf1"}
    assert config["model"]["type"] == "Autoencoder" and config["seed"] == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(row["step"]) for row in rows] == [5, 10, 15, 20]
    assert [row["test_mse"] != "" for row in rows] == [False, True, False, True]
    assert load_checkpoint(out / "checkpoint.npz").step == 20
    pytest.importorskip("matplotlib")
    for name in ("reconstructions.png", "loss.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, mnist_dir):
    # Batches of 4096 make an epoch 14.6 steps, so the resumed half crosses an epoch
    # boundary: the reshuffle after a resume must match the uninterrupted run's.
    straight, split = tmp_path / "straight", tmp_path / "split"
    big = ["--batch-size", 4096, "--eval-every", 0]
    assert small_run(straight, mnist_dir, 20, *big) == 0
    assert small_run(split, mnist_dir, 10, *big) == 0
    assert run(["train", "--data", mnist_dir, "--resume", split / "checkpoint.npz", "--steps", 20, "--log-every", 5, "--quiet"]) == 0
    first, second = load_checkpoint(straight / "checkpoint.npz"), load_checkpoint(split / "checkpoint.npz")
    assert first.step == second.step == 20
    np.testing.assert_array_equal(first.model.arena.values, second.model.arena.values)
    losses = lambda path: [row["train_loss"] for row in csv.DictReader((path / "metrics.csv").open())]  # noqa: E731
    assert losses(straight) == losses(split)


def test_eval_and_plot(tmp_path, mnist_dir, capsys):
    out = tmp_path / "run"
    assert small_run(out, mnist_dir, 10) == 0
    capsys.readouterr()
    assert run(["eval", out / "checkpoint.npz", "--data", mnist_dir, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == 10 and result["split"] == "test"
    assert 0 < result["mse"] < 0.2 and result["bce"] > 0
    pytest.importorskip("matplotlib")
    redraw = tmp_path / "figures"
    assert run(["plot", out / "checkpoint.npz", "--data", mnist_dir, "--out", redraw]) == 0
    assert (redraw / "reconstructions.png").read_bytes()[:8] == PNG_MAGIC
    assert (redraw / "loss.png").read_bytes()[:8] == PNG_MAGIC


def test_gradcheck_command(capsys):
    assert run(["gradcheck", "--max-entries", 4, "--batch-size", 2]) == 0
    output = capsys.readouterr().out
    assert "encoder.0.weights" in output and "PASS" in output


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, mnist_dir, capsys):
    out = tmp_path / "run"
    code = run(["train", "--data", mnist_dir, "--out", out, "--steps", 200, "--optimizer", "sgd", "--lr", 1e4,
                "--output-activation", "identity", "--checkpoint-every", 1, "--eval-every", 0, "--quiet"])
    assert code == 3
    assert "the loss is" in capsys.readouterr().err
    checkpoint = load_checkpoint(out / "checkpoint.npz")
    assert np.isfinite(checkpoint.model.arena.values).all()
    assert 0 < checkpoint.step < 200


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--preset", "nope"], "invalid choice: 'nope'"),
        (["train", "--steps", "0"], "--steps: must be >= 1"),
        (["train", "--steps", "-5"], "--steps: must be >= 1"),
        (["train", "--lr", "-1"], "--lr: must be a finite number > 0"),
        (["train", "--batch-size", "abc"], "--batch-size: expected a whole number"),
        (["train", "--steps", "5", "--epochs", "1"], "not allowed with argument"),
        (["train", "--optimizer", "lbfgs"], "invalid choice: 'lbfgs'"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_data_directory(tmp_path, capsys):
    assert run(["train", "--data", tmp_path / "nowhere", "--out", tmp_path / "run", "--no-download"]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "does not exist" in err
    assert not (tmp_path / "run").exists()  # nothing created for a run that could not start


def test_unwritable_output_directory(tmp_path, mnist_dir, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert run(["train", "--data", mnist_dir, "--out", blocker / "run", "--steps", 1, "--quiet"]) == 2
    assert "cannot write to the output directory" in capsys.readouterr().err
    assert run(["train", "--data", mnist_dir, "--out", blocker, "--steps", 1, "--quiet"]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_an_existing_run_is_not_overwritten_by_accident(tmp_path, mnist_dir, capsys):
    out = tmp_path / "run"
    assert small_run(out, mnist_dir, 5) == 0
    capsys.readouterr()
    assert small_run(out, mnist_dir, 5) == 2
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err
    assert small_run(out, mnist_dir, 5, "--overwrite") == 0


def test_missing_or_bad_checkpoint(tmp_path, capsys):
    assert run(["eval", tmp_path / "missing.npz"]) == 2
    assert "missing.npz" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    bad.write_text("hello")
    assert run(["eval", bad]) == 2
    assert "bad.npz" in capsys.readouterr().err
    assert run(["train", "--resume", tmp_path / "missing.npz"]) == 2
    assert "no such checkpoint file" in capsys.readouterr().err


def test_errors_print_no_traceback_from_a_real_process(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "nanoae", "train", "--data", str(tmp_path / "nowhere"), "--no-download"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "nanoae train: error:" in result.stderr
    result = subprocess.run([sys.executable, "-m", "nanoae"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "train" in result.stdout


def test_an_internal_error_is_a_bug_not_a_usage_error(tmp_path, mnist_dir, monkeypatch, capsys):
    """A TypeError or RuntimeError deep inside a command propagates with its traceback;
    it is never turned into exit 2 and a one-line 'error:' message."""
    from nanoae import presets
    from nanoae.checkpoint import save_checkpoint
    from nanoae.losses import MSE

    path = save_checkpoint(tmp_path / "model.npz", presets.tutorial(seed=0, backend="numpy"))
    for error in (TypeError("a bug in the model"), RuntimeError("a bug in the loop")):
        def broken_loss(self, output, target, error=error):
            raise error

        monkeypatch.setattr(MSE, "__call__", broken_loss)
        with pytest.raises(type(error), match="a bug in the"):
            run(["eval", path, "--data", mnist_dir])
        assert "error:" not in capsys.readouterr().err


def test_a_batch_larger_than_the_data_is_a_usage_error(tmp_path, mnist_dir, capsys):
    assert run(["train", "--data", mnist_dir, "--out", tmp_path / "run", "--batch-size", 60001, "--steps", 1, "--quiet"]) == 2
    assert "--batch-size 60001: the mnist training set has only 60000 images" in capsys.readouterr().err


def test_resuming_with_another_batch_size_is_a_usage_error(tmp_path, mnist_dir, capsys):
    out = tmp_path / "run"
    assert small_run(out, mnist_dir, 5) == 0
    capsys.readouterr()
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    assert run(["train", "--data", mnist_dir, "--resume", out / "checkpoint.npz", "--steps", 10, "--batch-size", 128, "--quiet"]) == 2
    assert "--batch-size 128 (the run's: 256)" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before  # config.json not rewritten


@pytest.fixture
def narrow_checkpoint(tmp_path):
    """A checkpoint of a 16-feature autoencoder, saved from the Python API, and one of a classifier."""
    from nanoae import Autoencoder, Classifier, Dense
    from nanoae.checkpoint import save_checkpoint

    autoencoder = Autoencoder([Dense(16, 4, "relu")], [Dense(4, 16, "sigmoid")], seed=0)
    classifier = Classifier([Dense(784, 8, "relu")], 10, seed=0)
    return save_checkpoint(tmp_path / "narrow.npz", autoencoder), save_checkpoint(tmp_path / "classifier.npz", classifier)


@pytest.mark.parametrize("command", ["eval", "plot", "resume", "classify"])
def test_a_checkpoint_of_another_width_is_a_usage_error_and_writes_nothing(command, tmp_path, mnist_dir, narrow_checkpoint, capsys):
    narrow, _ = narrow_checkpoint
    out = tmp_path / "out"
    args = {
        "eval": ["eval", narrow, "--data", mnist_dir],
        "plot": ["plot", narrow, "--data", mnist_dir, "--out", out],
        "resume": ["train", "--resume", narrow, "--data", mnist_dir, "--out", out, "--steps", 5, "--quiet"],
        "classify": ["classify", "--from", narrow, "--data", mnist_dir, "--out", out, "--steps", 5, "--quiet"],
    }[command]
    assert run(args) == 2
    err = capsys.readouterr().err
    assert "holds a model of 16 input features, but mnist images have 784" in err and "Traceback" not in err
    assert not out.exists()


def test_resuming_a_classifier_run_with_train_is_a_usage_error(tmp_path, mnist_dir, narrow_checkpoint, capsys):
    _, classifier = narrow_checkpoint
    out = tmp_path / "out"
    assert run(["train", "--resume", classifier, "--data", mnist_dir, "--out", out, "--quiet"]) == 2
    assert "holds a Classifier, not an autoencoder" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--epochs", "1e306"], "--epochs 1e+306: that is more steps than can be counted"),
        (["--code-size", "3"], "--code-size does not apply to the tutorial preset"),
    ],
)
def test_a_run_that_cannot_start_leaves_no_run_directory(extra, message, tmp_path, mnist_dir, capsys):
    out = tmp_path / "run"
    assert run(["train", "--data", mnist_dir, "--out", out, "--quiet", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
