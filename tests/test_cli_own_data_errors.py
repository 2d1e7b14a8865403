"""Own data on the command line, at the edges: a stored scaling meeting data it was not
fitted on, held-out rows beyond the training range, files that moved, another file given
to a run, CSV first rows that only look like headers, outputs that would replace inputs.

Every refusal is one line, exit 2, nothing written; every run that should go through
goes through with the numbers checked.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from nanoae.checkpoint import load_checkpoint
from nanoae.cli import main
from nanoae.data import holdout_rows, load_data_file
from nanoae.data.errors import DataError


def run(args):
    return main([str(arg) for arg in args])


def refused(capsys, args, *words, out=None, absent=()):
    """Run args; assert exit 2, one error line holding each of ``words`` and none of
    ``absent``, and ``out`` not created."""
    try:
        code = run(args)
    except SystemExit as exc:  # argparse refuses before main's handler
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0 or err.startswith("usage:"), err
    for word in words:
        assert word in err, (word, err)
    for word in absent:
        assert word not in err, (word, err)
    if out is not None:
        assert not out.exists(), f"{out} was written"
    return err


def train(out, data, *extra, steps=20):
    args = ["train", "--data", data, "--steps", steps, "--out", out, "--quiet", "--eval-every", 10, "--checkpoint-every", 10, *extra]
    assert run(args) == 0
    return out / "checkpoint.npz"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """u8.npy (300 x 12 uint8 0..255), f32.npy (the same / 255 in float32), u16.npy
    (the same x 257 in uint16), and table.csv (the same pixels plus a label column)."""
    root = tmp_path_factory.mktemp("edges")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (300, 6))
    u8 = np.concatenate([base, 255 - base], axis=1).astype(np.uint8)  # redundant halves: a model can learn it
    np.save(root / "u8.npy", u8)
    np.save(root / "f32.npy", (u8 / 255).astype(np.float32))
    np.save(root / "u16.npy", u8.astype(np.uint16) * 257)
    labels = rng.integers(0, 3, 300)
    rows = [",".join(map(str, row)) + f",{label}" for row, label in zip(u8.tolist(), labels)]
    (root / "table.csv").write_text(",".join(f"p{j}" for j in range(12)) + ",label\n" + "\n".join(rows) + "\n")
    np.savez(root / "table.npz", x=u8.astype(np.float64))
    return root


@pytest.fixture(scope="module")
def runs(root, tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    return {
        "u8": train(base / "u8", root / "u8.npy", "--layers", "8,4"),
        "f32": train(base / "f32", root / "f32.npy", "--layers", "8,4"),
        "csv": train(base / "csv", root / "table.csv", "--layers", "8,4", "--label-column", "label"),
    }


# ---- held-out rows beyond [0, 1]: MSE, and BCE only where it is defined ----------------------
def _reference_errors(model, x):
    y = np.asarray(model.reconstruct(x), dtype=np.float64)
    x = x.astype(np.float64)
    clipped = np.clip(y, 1e-7, 1 - 1e-7)
    bce = -np.mean(x * np.log(clipped) + (1 - x) * np.log(1 - clipped))
    return float(np.mean((y - x) ** 2)), float(bce)


def test_minmax_with_held_out_rows_beyond_the_training_range(tmp_path, capsys):
    """minmax fitted on training rows in [0, 1]; the held-out rows reach 2, so they scale
    past 1: train's summary and eval report the MSE (equal to a hand computation) and no
    BCE; on the training rows, all within [0, 1], eval reports both, each as computed by hand."""
    rng = np.random.default_rng(1)
    x = rng.random((200, 5)).astype(np.float32)
    _, val_rows = holdout_rows(200, 0.1, 0)
    x[val_rows[0]] = 2.0
    np.save(tmp_path / "wide.npy", x)
    assert run(["train", "--data", tmp_path / "wide.npy", "--scale", "minmax", "--steps", 30, "--out", tmp_path / "run", "--quiet"]) == 0
    summary = capsys.readouterr().out
    assert "validation reconstruction MSE" in summary and "BCE" not in summary
    checkpoint = tmp_path / "run" / "checkpoint.npz"
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["scaler"]["mode"] == "minmax"
    shift, scale = np.array(config["scaler"]["shift"]), np.array(config["scaler"]["scale"])
    model = load_checkpoint(checkpoint).model
    scaled = ((x - shift) / scale).astype(np.float32)
    assert scaled[val_rows].max() > 1.5

    assert run(["eval", checkpoint, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "bce" not in result
    assert result["mse"] == pytest.approx(_reference_errors(model, scaled[val_rows])[0], rel=1e-5)

    train_rows = np.setdiff1d(np.arange(200), val_rows)
    assert run(["eval", checkpoint, "--split", "train", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    mse, bce = _reference_errors(model, scaled[train_rows])
    assert result["mse"] == pytest.approx(mse, rel=1e-5) and result["bce"] == pytest.approx(bce, rel=1e-5)


# ---- a stored scaling on data of another dtype ---------------------------------------------------
@pytest.mark.parametrize("command", ["eval", "encode", "reconstruct", "plot", "resume"])
def test_a_stored_scaling_on_data_of_another_dtype(tmp_path, root, runs, capsys, command):
    """The uint8 run (divided by 255) given float32 data of the same width: refused,
    naming both dtypes; no output, not even plot's empty directory."""
    out = tmp_path / ("out.npy" if command in ("encode", "reconstruct") else "out")
    if command == "resume":
        args = ["train", "--resume", runs["u8"], "--data", root / "f32.npy", "--steps", 40, "--out", out]
    elif command == "eval":
        args = ["eval", runs["u8"], "--data", root / "f32.npy"]
    else:
        args = [command, runs["u8"], "--data", root / "f32.npy", "--out", out]
    refused(capsys, args, "uint8", "float32", out=out, absent=["Traceback"])


@pytest.mark.parametrize("run_name, data, words", [
    ("f32", "u8.npy", ["float32", "uint8"]),
    ("u8", "u16.npy", ["uint8", "uint16"]),
    ("csv", "u8.npy", ["float64", "uint8"]),
])  # fmt: skip
def test_other_dtypes_are_refused_for_every_stored_scaling(tmp_path, root, runs, capsys, run_name, data, words):
    out = tmp_path / "recon.npy"
    refused(capsys, ["reconstruct", runs[run_name], "--data", root / data, "--out", out], *words, out=out)


def test_floats_of_another_width_in_bytes_are_the_same_units(tmp_path, root, runs):
    """A CSV run (float64) on a float32 .npy of the same values: accepted, same codes."""
    np.save(tmp_path / "as32.npy", np.load(root / "table.npz")["x"].astype(np.float32))
    assert run(["encode", runs["csv"], "--data", tmp_path / "as32.npy", "--out", tmp_path / "a.npy"]) == 0
    assert run(["encode", runs["csv"], "--out", tmp_path / "b.npy"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"), rtol=1e-5, atol=1e-5)


# ---- model options on own data -------------------------------------------------------------------
def test_code_size_without_layers_on_own_data(tmp_path, root, capsys):
    out = tmp_path / "run"
    refused(capsys, ["train", "--data", root / "u8.npy", "--code-size", 8, "--out", out], "--code-size", "--layers", out=out)


def test_huge_layers_are_one_line(tmp_path, root, capsys):
    out = tmp_path / "run"
    refused(capsys, ["train", "--data", root / "u8.npy", "--layers", "1000000,1000000", "--steps", 1, "--out", out, "--quiet"],
            "cannot allocate", "smaller layers", out=out)  # fmt: skip


@pytest.mark.parametrize("channels, image", [(1, True), (2, False), (3, True), (4, True), (5, False)])
def test_only_one_three_or_four_channels_are_images(tmp_path, channels, image):
    """(n, h, w, c): c of 1, 3 or 4 are images (grey, RGB, RGBA); other c are plain
    features, drawn as a code map after training."""
    x = np.random.default_rng(0).integers(0, 256, (80, 4, 3, channels), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    data = load_data_file(tmp_path / "x.npy")
    assert data.features.shape == (80, 12 * channels)
    assert data.image_shape == ((4, 3, channels) if image else None)
    if channels in (2, 4):
        path = train(tmp_path / "run", tmp_path / "x.npy", "--layers", "6,2", "--batch-size", 16, steps=5)
        figure = "reconstructions.png" if image else "codes.png"
        assert (path.parent / figure).exists() and (path.parent / "loss.png").exists()


# ---- encode / reconstruct never write over what they read ----------------------------------------
def test_out_is_never_the_data_or_a_run_file(tmp_path, root, runs, capsys):
    copy = tmp_path / "copy.npy"
    copy.write_bytes((root / "u8.npy").read_bytes())
    before = copy.read_bytes()
    refused(capsys, ["encode", runs["u8"], "--data", copy, "--out", copy, "--overwrite"], "--out", "data", out=None)
    assert copy.read_bytes() == before
    recorded = json.loads((runs["u8"].parent / "config.json").read_text())["data_path"]
    before = (root / "u8.npy").read_bytes()
    refused(capsys, ["reconstruct", runs["u8"], "--out", recorded, "--overwrite"], "--out", "data")  # the run's recorded file
    refused(capsys, ["reconstruct", runs["u8"], "--data", copy, "--out", tmp_path / ".." / tmp_path.name / "copy.npy", "--overwrite"], "--out", "data")  # another spelling
    assert (root / "u8.npy").read_bytes() == before and copy.read_bytes() == before
    link = tmp_path / "checkpoint-link.npy"
    link.symlink_to(runs["u8"])
    checkpoint_bytes = runs["u8"].read_bytes()
    refused(capsys, ["encode", runs["u8"], "--out", link, "--overwrite"], "--out", "checkpoint")
    assert runs["u8"].read_bytes() == checkpoint_bytes


def test_out_suffix_in_any_case(tmp_path, runs):
    assert run(["encode", runs["u8"], "--out", tmp_path / "CODES.NPY"]) == 0
    assert np.load(tmp_path / "CODES.NPY").shape == (300, 4)


# ---- an MNIST run on own data: MNIST's units, never refitted ---------------------------------------
@pytest.fixture(scope="module")
def mnist_run(mnist_dir, tmp_path_factory):
    from nanoae.data import load_dataset

    root = tmp_path_factory.mktemp("mnist-run")
    assert run(["train", "--data", mnist_dir, "--out", root / "run", "--steps", 3, "--batch-size", 32, "--quiet",
                "--eval-every", 0, "--checkpoint-every", 0]) == 0  # fmt: skip
    images = load_dataset("mnist", "test", data_dir=mnist_dir).images[:300]
    pixels = np.rint(images * 255).astype(np.uint8)
    np.save(root / "m8.npy", pixels)
    np.save(root / "m1.npy", (pixels / 255).astype(np.float32))
    np.save(root / "m255.npy", pixels.astype(np.float32))
    return root


def test_an_mnist_run_on_own_data_uses_mnists_units(mnist_run, capsys):
    """uint8 pixels are divided by 255 and floats in [0, 1] kept: the same MSE for both,
    equal to a hand computation; float pixels 0..255 are refused with the division to do."""
    checkpoint = mnist_run / "run" / "checkpoint.npz"
    results = {}
    for name in ("m8", "m1"):
        assert run(["eval", checkpoint, "--data", mnist_run / f"{name}.npy", "--json"]) == 0
        results[name] = json.loads(capsys.readouterr().out)
    model = load_checkpoint(checkpoint).model
    x = np.load(mnist_run / "m1.npy")
    mse, bce = _reference_errors(model, x)
    for result in results.values():
        assert result["mse"] == pytest.approx(mse, rel=1e-5) and result["bce"] == pytest.approx(bce, rel=1e-5)
    refused(capsys, ["eval", checkpoint, "--data", mnist_run / "m255.npy"], "[0, 1]", "255")


# ---- another file given to a run: its own --key and --label-column ----------------------------------
def test_another_file_does_not_inherit_the_recorded_key_or_label_column(tmp_path, root, runs, capsys):
    assert run(["encode", runs["csv"], "--data", root / "table.npz", "--out", tmp_path / "codes.npy"]) == 0
    assert np.load(tmp_path / "codes.npy").shape == (300, 4)
    assert run(["eval", runs["csv"], "--data", root / "table.npz"]) == 0
    assert run(["train", "--resume", runs["csv"], "--data", root / "table.npz", "--steps", 30, "--out", tmp_path / "resumed", "--quiet"]) == 0
    config = json.loads((tmp_path / "resumed" / "config.json").read_text())
    assert config["data_format"] == "npz" and config["label_column"] is None and config["key"] == "x"


def test_resume_takes_the_label_column_by_number_or_name(tmp_path, capsys):
    rng = np.random.default_rng(2)
    rows = ["label\t" + "\t".join(f"f{j}" for j in range(4))]
    rows += [f"{rng.integers(0, 3)}\t" + "\t".join(f"{v:.3f}" for v in rng.random(4)) for _ in range(100)]
    (tmp_path / "t.tsv").write_text("\n".join(rows) + "\n")
    path = train(tmp_path / "run", tmp_path / "t.tsv", "--label-column", 0, "--layers", "3")
    assert json.loads((path.parent / "config.json").read_text())["label_column"] == "label"
    assert run(["train", "--resume", path, "--label-column", 0, "--steps", 30, "--quiet"]) == 0
    assert run(["train", "--resume", path, "--label-column", "label", "--steps", 40, "--quiet"]) == 0
    refused(capsys, ["train", "--resume", path, "--label-column", 1, "--steps", 50], "--label-column", "'label'")


def test_resume_on_a_file_whose_rows_changed(tmp_path, root, capsys):
    np.save(tmp_path / "d.npy", np.load(root / "u8.npy")[:200])
    path = train(tmp_path / "run", tmp_path / "d.npy", "--layers", "4")
    np.save(tmp_path / "d.npy", np.load(root / "u8.npy"))
    refused(capsys, ["train", "--resume", path, "--steps", 30], "300 rows", "200", absent=["--dataset", "--batch-size"])


def test_resume_across_mnist_and_own_data_names_the_runs_data(tmp_path, root, runs, mnist_dir, mnist_run, capsys):
    err = refused(capsys, ["train", "--resume", runs["u8"], "--data", mnist_dir, "--steps", 30, "--out", tmp_path / "a"],
                  "your own data", "u8.npy", absent=["--scale", "--val-fraction"], out=tmp_path / "a")  # fmt: skip
    assert "--data" in err
    refused(capsys, ["train", "--resume", mnist_run / "run" / "checkpoint.npz", "--data", root / "u8.npy", "--steps", 30, "--out", tmp_path / "b"],
            "mnist", "--data", absent=["not a directory"], out=tmp_path / "b")  # fmt: skip


def test_a_moved_data_file_is_named_as_the_runs(tmp_path, root, capsys):
    np.save(tmp_path / "moved.npy", np.load(root / "u8.npy"))
    path = train(tmp_path / "run", tmp_path / "moved.npy", "--layers", "4")
    (tmp_path / "moved.npy").unlink()
    for args in (["eval", path], ["encode", path, "--out", tmp_path / "c.npy"], ["train", "--resume", path, "--steps", 30]):
        refused(capsys, args, "the run's data file", "no longer exists", "--data", absent=["given to --data"])


def test_plot_without_the_runs_data_still_draws_the_loss(tmp_path, root, capsys):
    np.save(tmp_path / "moved.npy", np.load(root / "u8.npy"))
    path = train(tmp_path / "run", tmp_path / "moved.npy", "--layers", "4")
    (tmp_path / "moved.npy").unlink()
    capsys.readouterr()
    assert run(["plot", path, "--out", tmp_path / "figures"]) == 0
    captured = capsys.readouterr()
    assert (tmp_path / "figures" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "figures" / "codes.png").exists()
    assert "no longer exists" in captured.err and "loss.png" in captured.out


def test_the_loss_figure_calls_held_out_rows_validation(tmp_path, root, monkeypatch):
    import nanoae.cli.figures as figures

    labels = []
    real = figures.plot_loss
    monkeypatch.setattr(figures, "plot_loss", lambda *a, **k: labels.append(k.get("test_label")) or real(*a, **k))
    train(tmp_path / "run", root / "u8.npy", "--layers", "4")
    assert labels == ["validation reconstruction MSE"]


# ---- splits ----------------------------------------------------------------------------------------
def test_split_train_of_a_run_without_hold_out_is_every_row(tmp_path, root, capsys):
    path = train(tmp_path / "run", root / "u8.npy", "--layers", "4", "--val-fraction", 0)
    assert run(["encode", path, "--split", "train", "--out", tmp_path / "codes.npy"]) == 0
    assert np.load(tmp_path / "codes.npy").shape == (300, 4)
    refused(capsys, ["encode", path, "--split", "test", "--out", tmp_path / "t.npy"], "held out no rows", out=tmp_path / "t.npy")


# ---- messages -------------------------------------------------------------------------------------
def test_the_width_is_checked_before_mnist_is_looked_for(tmp_path, runs, capsys, monkeypatch):
    import nanoae.cli.common as common

    def never(*args, **kwargs):
        raise AssertionError("MNIST was looked for")

    monkeypatch.setattr(common, "load_dataset", never)
    err = refused(capsys, ["encode", runs["u8"], "--dataset", "mnist", "--out", tmp_path / "c.npy"], "12 input features", "784")
    assert "per row" not in err


def test_a_width_message_reads_as_a_sentence(tmp_path, runs, capsys):
    np.save(tmp_path / "narrow.npy", np.zeros((5, 3), np.uint8))
    err = refused(capsys, ["eval", runs["u8"], "--data", tmp_path / "narrow.npy"], "12 input features", "3 features per row")
    assert "has 3 per row" not in err


def test_one_own_data_option_on_mnist_applies_in_the_singular(tmp_path, mnist_dir, capsys):
    refused(capsys, ["train", "--data", mnist_dir, "--scale", "minmax", "--out", tmp_path / "run"], "--scale applies to", out=tmp_path / "run")


def test_a_file_without_a_suffix(tmp_path, root, capsys):
    (tmp_path / "nosuffix").write_bytes((root / "u8.npy").read_bytes())
    err = refused(capsys, ["train", "--data", tmp_path / "nosuffix", "--out", tmp_path / "run"], "files without a suffix;", out=tmp_path / "run")
    assert "suffix files" not in err


def test_npz_member_errors_are_not_wrapped(tmp_path):
    np.savez(tmp_path / "multi.npz", x=np.zeros((4, 3), np.float32), y=np.arange(4))
    with pytest.raises(DataError) as caught:
        load_data_file(tmp_path / "multi.npz", key="y")
    message = str(caught.value)
    assert "1-D array" in message and "reshape(-1, 1)" in message
    assert "could not be read" not in message and message.count("multi.npz") == 1


def test_a_text_label_column_says_labels_must_be_numbers(tmp_path, capsys):
    (tmp_path / "iris.csv").write_text("a,b,species\n1,2,setosa\n3,4,virginica\n")
    refused(capsys, ["train", "--data", tmp_path / "iris.csv", "--label-column", "species", "--out", tmp_path / "run"],
            "'species'", "label column", "numbers", out=tmp_path / "run")  # fmt: skip


# ---- CSV first rows that only look like headers ------------------------------------------------------
@pytest.mark.parametrize("text, words", [
    ('"1,000",2\n3,4\n', ["row 1", "'1,000'", "thousands"]),
    ("NA,2\n3,4\n", ["row 1", "'NA'", "missing"]),
    ("1,n/a\n3,4\n", ["row 1", "'n/a'", "missing"]),
])  # fmt: skip
def test_a_first_row_of_values_is_not_taken_for_a_header(tmp_path, text, words):
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(DataError) as caught:
        load_data_file(tmp_path / "t.csv")
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


@pytest.mark.parametrize("text, names", [
    ("a,b\n1,2\n", ["a", "b"]),
    ("0,1,label\n5,6,1\n", ["0", "1", "label"]),  # pandas' numbered columns and a named one
    (",x\n0,2\n", ["column 0", "x"]),  # pandas' unnamed index column
])  # fmt: skip
def test_headers_are_still_headers(tmp_path, text, names):
    (tmp_path / "t.csv").write_text(text)
    data = load_data_file(tmp_path / "t.csv")
    assert data.feature_names == names and data.features.shape == (1, 2 if len(names) == 2 else 3)
