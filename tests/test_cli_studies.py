"""The command line past the tutorial: the new presets, --code-size, and nanoae classify."""

import json

import pytest

from nanoae.checkpoint import load_checkpoint
from nanoae.classifier import Classifier
from nanoae.cli import main
from nanoae.vae import VariationalAutoencoder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(args):
    return main([str(arg) for arg in args])


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("vae") / "run"
    code = run(["train", "--preset", "vae", "--data", mnist_dir, "--out", out, "--steps", 6, "--batch-size", 64,
                "--log-every", 3, "--eval-every", 0, "--checkpoint-every", 0, "--quiet"])
    assert code == 0
    return out


def test_train_vae_preset(vae_run):
    config = json.loads((vae_run / "config.json").read_text())
    assert config["preset"] == "vae" and config["model"]["type"] == "VariationalAutoencoder"
    assert config["output_activation"] == "identity"
    checkpoint = load_checkpoint(vae_run / "checkpoint.npz")
    assert isinstance(checkpoint.model, VariationalAutoencoder) and checkpoint.step == 6
    pytest.importorskip("matplotlib")
    assert (vae_run / "samples.png").read_bytes()[:8] == PNG_MAGIC


def test_train_denoising_preset_with_a_code_size(tmp_path, mnist_dir, capsys):
    out = tmp_path / "run"
    code = run(["train", "--preset", "denoising-mask", "--code-size", 16, "--data", mnist_dir, "--out", out, "--steps", 3,
                "--batch-size", 64, "--eval-every", 0, "--checkpoint-every", 0, "--quiet"])
    assert code == 0
    model = load_checkpoint(out / "checkpoint.npz").model
    assert model.code_size == 16 and model.corruption.config() == {"kind": "mask", "p": 0.5}
    assert "test reconstruction MSE" in capsys.readouterr().out


def test_classify_probe_from_a_checkpoint(vae_run, tmp_path, mnist_dir, capsys):
    out = tmp_path / "clf"
    code = run(["classify", "--from", vae_run / "checkpoint.npz", "--mode", "probe", "--labels", 100, "--steps", 20,
                "--data", mnist_dir, "--out", out, "--json", "--quiet"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mode"] == "probe" and result["labels"] == 100 and result["batch_size"] == 100
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert json.loads((out / "result.json").read_text())["test_accuracy"] == result["test_accuracy"]
    model = load_checkpoint(out / "checkpoint.npz").model
    assert isinstance(model, Classifier) and model.freeze_encoder


def test_classify_from_scratch_learns(mnist_dir, capsys):
    assert run(["classify", "--labels", 500, "--steps", 60, "--batch-size", 100, "--data", mnist_dir, "--quiet"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("scratch: test accuracy")
    assert float(line.split()[3]) > 0.6  # 60 steps on 500 labels; chance is 0.1


@pytest.mark.parametrize(
    "args, message",
    [
        (["classify", "--mode", "probe"], "--mode probe reuses a trained encoder: give --from CHECKPOINT"),
        (["classify", "--mode", "finetune"], "--mode finetune reuses a trained encoder"),
        (["classify", "--from", "nowhere.npz"], "--from nowhere.npz: no such checkpoint file"),
        (["train", "--preset", "tutorial", "--code-size", "16"], "--code-size does not apply to the tutorial preset"),
        (["train", "--preset", "vae", "--output-activation", "sigmoid"], "the vae preset's decoder outputs logits"),
    ],
)
def test_bad_arguments_print_one_line_and_exit_2(args, message, tmp_path, mnist_dir, capsys):
    if args[0] == "train":
        args = [*args, "--data", mnist_dir, "--out", tmp_path / "run", "--steps", 1, "--quiet"]
    assert run(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["classify", "--labels", "0"], "--labels: must be >= 1"),
        (["classify", "--mode", "frozen"], "invalid choice: 'frozen'"),
        (["classify", "--steps", "x"], "--steps: expected a whole number"),
        (["train", "--code-size", "-3"], "--code-size: must be >= 1"),
    ],
)
def test_bad_values_are_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_classify_refuses_too_many_labels_and_non_autoencoders(vae_run, tmp_path, mnist_dir, capsys):
    assert run(["classify", "--labels", 70000, "--data", mnist_dir, "--quiet"]) == 2
    assert "--labels 70000: the mnist training set has only 60000 images" in capsys.readouterr().err
    out = tmp_path / "clf"
    assert run(["classify", "--from", vae_run / "checkpoint.npz", "--labels", 20, "--steps", 2, "--data", mnist_dir, "--out", out, "--quiet"]) == 0
    capsys.readouterr()
    assert run(["classify", "--from", out / "checkpoint.npz", "--data", mnist_dir, "--quiet"]) == 2
    assert "holds a Classifier, not an autoencoder" in capsys.readouterr().err
    assert run(["eval", out / "checkpoint.npz", "--data", mnist_dir]) == 2
    assert "not an autoencoder" in capsys.readouterr().err
    assert run(["plot", out / "checkpoint.npz", "--data", mnist_dir, "--out", tmp_path / "figures"]) == 2
    assert "not an autoencoder" in capsys.readouterr().err
    assert run(["classify", "--from", vae_run / "checkpoint.npz", "--mode", "probe", "--optimizer", "adamw",
                "--labels", 20, "--steps", 1, "--data", mnist_dir, "--quiet"]) == 2
    assert "would move the frozen encoder" in capsys.readouterr().err


def test_gradcheck_the_vae_preset(capsys):
    assert run(["gradcheck", "--preset", "vae", "--batch-size", 2, "--max-entries", 3]) == 0
    assert "PASS" in capsys.readouterr().out


def test_classify_out_replaces_only_its_own_result_and_checkpoint(vae_run, tmp_path, mnist_dir, capsys):
    classify = ["classify", "--labels", 20, "--steps", 1, "--data", mnist_dir, "--quiet", "--out"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "checkpoint.npz").write_bytes(b"my own model")
    for overwrite in ([], ["--overwrite"]):
        assert run([*classify, mine, *overwrite]) == 2
        assert "checkpoint.npz, which nanoae did not write and will not replace" in capsys.readouterr().err
    assert (mine / "checkpoint.npz").read_bytes() == b"my own model"
    # An autoencoder's run directory is not classify's: its checkpoint is never replaced.
    before = (vae_run / "checkpoint.npz").read_bytes()
    assert run([*classify, vae_run, "--overwrite"]) == 2
    assert (vae_run / "checkpoint.npz").read_bytes() == before
    capsys.readouterr()
    out = tmp_path / "clf"
    assert run([*classify, out]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["nanoae_run"] == 1 and set(result["files"]) == {"result.json", "checkpoint.npz"}
    assert run([*classify, out]) == 2
    assert "already holds a run" in capsys.readouterr().err
    (out / "notes.txt").write_text("keep")
    assert run([*classify, out, "--overwrite", "--seed", 1]) == 0
    assert json.loads((out / "result.json").read_text())["seed"] == 1 and (out / "notes.txt").read_text() == "keep"


def test_resuming_a_preset_run_checks_its_code_size_and_keeps_its_preset(vae_run, tmp_path, mnist_dir, capsys):
    resume = ["train", "--resume", vae_run / "checkpoint.npz", "--data", mnist_dir, "--steps", 7, "--quiet", "--out"]
    assert run([*resume, tmp_path / "wider", "--code-size", 5]) == 2
    assert "--code-size 5 (the run's: 2)" in capsys.readouterr().err and not (tmp_path / "wider").exists()
    assert run([*resume, tmp_path / "same", "--code-size", 2, "--preset", "vae"]) == 0
    config = json.loads((tmp_path / "same" / "config.json").read_text())
    assert (config["preset"], config["code_size"], config["output_activation"], config["batch_size"]) == ("vae", 2, "identity", 64)
    assert isinstance(load_checkpoint(tmp_path / "same" / "checkpoint.npz").model, VariationalAutoencoder)
