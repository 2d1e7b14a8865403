"""Runs a user can trust: what --resume may change, what a run directory may replace,
metrics.csv holding each step once, stale temporaries, and the data a run recorded."""

import csv
import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanoae.callbacks import MetricsCSV
from nanoae.checkpoint import load_checkpoint, restore_sampler, save_checkpoint
from nanoae.cli import main
from nanoae.data import sources
from nanoae.rundir import RUN_FILES, RunDirectoryError, plan_run_directory

DEAD_PID = 2**22 + 12345  # above Linux's default pid_max: no such process


def run(args):
    return main([str(arg) for arg in args])


def train(out, mnist_dir, steps, *extra):
    return run(["train", "--data", mnist_dir, "--out", out, "--steps", steps, "--log-every", 1, "--eval-every", 0,
                "--checkpoint-every", 5, "--batch-size", 64, "--quiet", *extra])


def resume(checkpoint, mnist_dir, *extra):
    return run(["train", "--data", mnist_dir, "--resume", checkpoint, "--quiet", *extra])


def snapshot(directory):
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def metric_steps(directory):
    return [int(row["step"]) for row in csv.DictReader((directory / "metrics.csv").open())]


@pytest.fixture
def finished_run(tmp_path, mnist_dir, capsys):
    """A 5-step run (batch 64, a checkpoint at step 5)."""
    out = tmp_path / "run"
    assert train(out, mnist_dir, 5) == 0
    capsys.readouterr()
    return out


# ---- resume: the checkpoint defines the run ------------------------------------------
def test_resume_refuses_every_run_defining_flag_that_differs_and_writes_nothing(finished_run, mnist_dir, capsys):
    before = snapshot(finished_run)
    code = resume(finished_run / "checkpoint.npz", mnist_dir, "--steps", 10, "--lr", 0.5, "--optimizer", "sgd",
                  "--preset", "sparse", "--output-activation", "sigmoid", "--dataset", "fashion", "--seed", 3)
    assert code == 2
    err = capsys.readouterr().err
    for named in ("--optimizer sgd (the run's: rmsprop)", "--preset sparse (the run's: tutorial)",
                  "--output-activation sigmoid (the run's: relu)", "--dataset fashion (the run's: mnist)", "--seed 3 (the run's: 0)"):
        assert named in err
    assert "--lr" not in err.split("Leave them out")[0]  # --lr is allowed: not among the refused
    assert snapshot(finished_run) == before


def test_resume_accepts_flags_repeated_with_the_runs_values(finished_run, mnist_dir):
    assert resume(finished_run / "checkpoint.npz", mnist_dir, "--steps", 7, "--preset", "tutorial", "--seed", 0,
                  "--dataset", "mnist", "--batch-size", 64, "--optimizer", "rmsprop", "--code-size", 128) == 0
    assert load_checkpoint(finished_run / "checkpoint.npz").step == 7


def test_resume_takes_the_dataset_from_the_run_not_the_default(tmp_path, finished_run, mnist_dir, capsys):
    """A run recorded as Fashion-MNIST must not continue on MNIST; faked by editing the
    recorded dataset, which the resumed run then asks for (and here cannot find)."""
    checkpoint = load_checkpoint(finished_run / "checkpoint.npz")
    config = dict(checkpoint.extra["config"], dataset="fashion", data_dir=None)
    shutil.copytree(finished_run, tmp_path / "fashion")
    (tmp_path / "fashion" / "config.json").write_text(json.dumps(config))
    fashion = save_checkpoint(tmp_path / "fashion" / "checkpoint.npz", checkpoint.model, sampler=restore_sampler(checkpoint), extra={"config": config})
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(["train", "--resume", fashion, "--data", empty, "--steps", 10, "--quiet"]) == 2
    assert "Fashion-MNIST" in capsys.readouterr().err


def test_lr_on_resume_is_an_override_recorded_in_config(finished_run, mnist_dir):
    assert resume(finished_run / "checkpoint.npz", mnist_dir, "--steps", 7, "--lr", 0.0005) == 0
    config = json.loads((finished_run / "config.json").read_text())
    assert config["lr"] == 0.0005 and config["optimizer_config"]["lr"] == 0.0005
    assert config["lr_overrides"] == [{"step": 5, "lr": 0.0005, "previous": 0.001}]
    assert load_checkpoint(finished_run / "checkpoint.npz").model.optimizer.lr == 0.0005


@pytest.mark.parametrize("extra, message", [
    (["--steps", 5], "--steps 5: the checkpoint is already at step 5"),
    (["--steps", 3], "--steps 3: the checkpoint is already at step 5"),
    (["--epochs", 0.001], "--epochs 0.001 (1 steps in total): the checkpoint is already at step 5"),
    ([], "the run's 5 steps: the checkpoint is already at step 5"),
])
def test_a_total_not_beyond_the_checkpoint_is_an_error_that_writes_nothing(finished_run, mnist_dir, capsys, extra, message):
    before = snapshot(finished_run)
    assert resume(finished_run / "checkpoint.npz", mnist_dir, *extra) == 2
    assert message in capsys.readouterr().err
    assert snapshot(finished_run) == before


def test_resume_keeps_the_runs_logging_settings(tmp_path, mnist_dir):
    out = tmp_path / "run"
    assert run(["train", "--data", mnist_dir, "--out", out, "--steps", 4, "--log-every", 2, "--eval-every", 0,
                "--checkpoint-every", 2, "--batch-size", 64, "--quiet"]) == 0
    assert resume(out / "checkpoint.npz", mnist_dir, "--steps", 8) == 0
    assert metric_steps(out) == [2, 4, 6, 8]
    config = json.loads((out / "config.json").read_text())
    assert (config["log_every"], config["checkpoint_every"], config["eval_every"]) == (2, 2, 0)


# ---- metrics.csv: each step once -----------------------------------------------------
def test_a_resume_after_a_kill_keeps_each_step_once_and_matches_an_unbroken_run(tmp_path, mnist_dir):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert train(straight, mnist_dir, 10) == 0
    assert train(broken, mnist_dir, 5) == 0
    at_five = (broken / "checkpoint.npz").read_bytes()
    assert resume(broken / "checkpoint.npz", mnist_dir, "--steps", 8) == 0
    # As if killed after logging steps 6..8 (and half of a row) but before their checkpoint:
    (broken / "checkpoint.npz").write_bytes(at_five)
    with (broken / "metrics.csv").open("a") as handle:
        handle.write("9,0.0096,0.07")
    (broken / f".checkpoint.npz.tmp-{DEAD_PID}-0badf00d").write_bytes(at_five[:100])
    assert resume(broken / "checkpoint.npz", mnist_dir, "--steps", 10) == 0
    assert metric_steps(broken) == list(range(1, 11))
    losses = lambda path: [row["train_loss"] for row in csv.DictReader((path / "metrics.csv").open())]  # noqa: E731
    assert losses(broken) == losses(straight)
    np.testing.assert_array_equal(load_checkpoint(broken / "checkpoint.npz").model.arena.values,
                                  load_checkpoint(straight / "checkpoint.npz").model.arena.values)
    assert not [path.name for path in broken.iterdir() if ".tmp-" in path.name]


ROW = st.tuples(st.integers(1, 50), st.floats(0, 10, allow_nan=False), st.one_of(st.none(), st.floats(0, 1, allow_nan=False)))


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(ROW, max_size=12), torn=st.text(alphabet="0123456789.,", max_size=12), resume_step=st.integers(0, 50))
def test_metrics_keep_exactly_the_complete_rows_through_the_checkpoint(tmp_path_factory, rows, torn, resume_step):
    path = tmp_path_factory.mktemp("metrics") / "metrics.csv"
    lines = ["step,epoch,train_loss,samples_per_s,wall_time_s,test_mse"]
    lines += [f"{step},0.1000,{loss:.8g},10.0,0.100,{'' if test is None else f'{test:.8g}'}" for step, loss, test in rows]
    path.write_text("\r\n".join(lines) + "\r\n" + torn)
    metrics = MetricsCSV(path, resume_step=resume_step)
    metrics.on_train_begin(None)
    metrics._file.close()
    kept = list(csv.reader(path.open(newline="")))
    assert kept[0] == list(MetricsCSV.COLUMNS)
    assert [int(row[0]) for row in kept[1:]] == [step for step, _, _ in rows if step <= resume_step]
    assert not [p for p in path.parent.iterdir() if p != path]  # no temporary left


# ---- run directories -----------------------------------------------------------------
def test_a_directory_with_the_users_own_config_and_metrics_is_never_overwritten(tmp_path, mnist_dir, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "settings"}')
    (out / "metrics.csv").write_text("my,numbers\n1,2\n")
    before = snapshot(out)
    for overwrite in ([], ["--overwrite"]):
        assert train(out, mnist_dir, 2, *overwrite) == 2
        assert "config.json, metrics.csv, which nanoae did not write and will not replace" in capsys.readouterr().err
    assert snapshot(out) == before


def test_a_non_empty_directory_that_is_not_a_run_needs_overwrite_which_leaves_its_files(tmp_path, mnist_dir, capsys):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    assert train(out, mnist_dir, 2) == 2
    assert "is not empty (notes.txt) and is not a nanoae run" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt"]
    assert train(out, mnist_dir, 2, "--overwrite") == 0
    assert (out / "notes.txt").read_text() == "my notes" and load_checkpoint(out / "checkpoint.npz").step == 2
    config = json.loads((out / "config.json").read_text())
    assert config["nanoae_run"] == 1 and set(config["files"]) == set(RUN_FILES)


def test_overwrite_replaces_only_the_previous_runs_files(finished_run, mnist_dir, capsys):
    (finished_run / "notes.txt").write_text("keep me")
    (finished_run / "samples.png").write_bytes(b"a run's figure")  # a file the run owns (listed)
    assert train(finished_run, mnist_dir, 3) == 2
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err
    assert train(finished_run, mnist_dir, 3, "--overwrite") == 0
    assert (finished_run / "notes.txt").read_text() == "keep me"
    assert not (finished_run / "samples.png").exists()  # the old run's, not written by this one
    assert metric_steps(finished_run) == [1, 2, 3] and load_checkpoint(finished_run / "checkpoint.npz").step == 3


def test_resume_into_another_runs_directory_needs_overwrite(tmp_path, finished_run, mnist_dir, capsys):
    other = tmp_path / "other"
    assert train(other, mnist_dir, 2) == 0
    before = snapshot(other)
    assert resume(finished_run / "checkpoint.npz", mnist_dir, "--steps", 7, "--out", other) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert snapshot(other) == before
    assert resume(finished_run / "checkpoint.npz", mnist_dir, "--steps", 7, "--out", other, "--overwrite") == 0
    assert metric_steps(other) == [1, 2, 3, 4, 5, 6, 7]  # the source run's rows, then this one's
    assert load_checkpoint(other / "checkpoint.npz").step == 7 and load_checkpoint(finished_run / "checkpoint.npz").step == 5


def test_resume_into_a_new_directory_starts_from_the_source_runs_metrics(tmp_path, finished_run, mnist_dir):
    fresh = tmp_path / "continued"
    assert resume(finished_run / "checkpoint.npz", mnist_dir, "--steps", 7, "--out", fresh) == 0
    assert metric_steps(fresh) == list(range(1, 8)) and metric_steps(finished_run) == list(range(1, 6))
    assert json.loads((fresh / "config.json").read_text())["resumed_from"] == str(finished_run / "checkpoint.npz")


def test_a_config_written_before_the_marker_still_marks_a_run(finished_run, mnist_dir, capsys):
    config = json.loads((finished_run / "config.json").read_text())
    for key in ("nanoae_run", "files"):
        del config[key]
    (finished_run / "config.json").write_text(json.dumps(config))
    assert resume(finished_run / "checkpoint.npz", mnist_dir, "--steps", 6) == 0
    assert train(finished_run, mnist_dir, 2) == 2
    assert "already holds a run" in capsys.readouterr().err


@settings(max_examples=40, deadline=None)
@given(names=st.sets(st.sampled_from([*RUN_FILES, "notes.txt", "data.npz"]), max_size=5), overwrite=st.booleans(),
       marked=st.booleans())
def test_a_plan_never_claims_a_file_nanoae_did_not_write(tmp_path_factory, names, overwrite, marked):
    directory = tmp_path_factory.mktemp("out")
    own = set(RUN_FILES) if marked else set()
    for name in names - {"config.json"}:
        (directory / name).write_text("x")
    if marked:
        (directory / "config.json").write_text(json.dumps({"nanoae_run": 1, "files": list(RUN_FILES)}))
    elif "config.json" in names:
        (directory / "config.json").write_text("{}")
    present = {path.name for path in directory.iterdir()}
    try:
        plan = plan_run_directory(directory, overwrite=overwrite, continuing=False)
    except RunDirectoryError:
        refused = True
    else:
        refused = False
        assert set(plan.replacing) <= own & present
    foreign = (present & set(RUN_FILES)) - own
    if foreign or (present and not overwrite):
        assert refused
    else:
        assert not refused


# ---- stale temporaries, recorded data ---------------------------------------------------
def test_stale_temporaries_from_an_interrupted_save_are_removed_by_the_next_run(finished_run, mnist_dir):
    for name in ("checkpoint.npz", "config.json", "metrics.csv"):
        (finished_run / f".{name}.tmp-{DEAD_PID}-0badf00d").write_bytes(b"half")
    assert resume(finished_run / "checkpoint.npz", mnist_dir, "--steps", 6, "--checkpoint-every", 1) == 0
    assert sorted(path.name for path in finished_run.iterdir() if path.name.startswith(".")) == []


@pytest.fixture
def no_other_data(monkeypatch, tmp_path):
    """Only the directory a run recorded can hold the data: no $NANOAE_DATA, an empty cache, no sample."""
    monkeypatch.delenv("NANOAE_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("NANOAE_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(sources, "DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(sources, "SAMPLE_DIR", tmp_path / "no-sample")


def test_eval_and_plot_find_the_data_the_run_recorded(tmp_path, mnist_dir, no_other_data, capsys):
    copy = tmp_path / "my-mnist"
    shutil.copytree(mnist_dir, copy)
    out = tmp_path / "run"
    assert train(out, copy, 5) == 0
    assert json.loads((out / "config.json").read_text())["data_dir"] == str(copy.resolve())
    capsys.readouterr()
    assert run(["eval", out / "checkpoint.npz", "--no-download", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == 5 and 0 < result["mse"] < 0.2
    assert run(["train", "--resume", out / "checkpoint.npz", "--steps", 6, "--no-download", "--quiet"]) == 0
    pytest.importorskip("matplotlib")
    assert run(["plot", out / "checkpoint.npz", "--no-download"]) == 0
    assert (out / "reconstructions.png").exists()
    shutil.rmtree(copy)  # moved away: the normal search, which here finds nothing
    assert run(["eval", out / "checkpoint.npz", "--no-download"]) == 2
    assert "no MNIST data available" in capsys.readouterr().err


def test_plot_never_replaces_a_users_figure(tmp_path, finished_run, mnist_dir, capsys):
    pytest.importorskip("matplotlib")
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "loss.png").write_bytes(b"my plot")
    assert run(["plot", finished_run / "checkpoint.npz", "--data", mnist_dir, "--out", figures]) == 2
    assert "loss.png, which nanoae did not write" in capsys.readouterr().err
    assert (figures / "loss.png").read_bytes() == b"my plot"


def edited_checkpoint(source, target, **changes):
    """A copy of ``source`` whose recorded run config has ``changes`` (the arrays, and so
    their checksums, untouched): what an edited or damaged header looks like."""
    with np.load(source, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    header = json.loads(arrays["header"].tobytes())
    header["extra"]["config"].update(changes)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as handle:
        np.savez(handle, **arrays)
    return target


@pytest.mark.parametrize(
    "changes",
    [{"log_every": 0}, {"log_every": True}, {"batch_size": "abc"}, {"batch_size": 0}, {"lr_overrides": 5},
     {"seed": -1}, {"preset": "transformer"}, {"checkpoint_every": 2.5}, {"data_dir": 7}],
    ids=lambda changes: "-".join(f"{k}={v!r}" for k, v in changes.items()),
)
def test_a_damaged_run_config_in_the_checkpoint_is_refused_before_anything_is_written(changes, tmp_path, mnist_dir, capsys):
    assert train(tmp_path / "run", mnist_dir, 3) == 0
    damaged = edited_checkpoint(tmp_path / "run" / "checkpoint.npz", tmp_path / "damaged" / "checkpoint.npz", **changes)
    out = tmp_path / "resumed"
    assert resume(damaged, mnist_dir, "--steps", 5, "--out", out) == 2
    err = capsys.readouterr().err
    key = next(iter(changes))
    assert f"the run's recorded {key}" in err and "edited or damaged" in err and "Traceback" not in err
    assert not out.exists()
    assert run(["eval", damaged, "--data", mnist_dir]) == 2  # eval reads the same config


def test_plot_into_the_same_directory_twice_replaces_its_own_figures_only(tmp_path, mnist_dir, capsys):
    pytest.importorskip("matplotlib")
    from nanoae.plot import written_by_nanoae

    assert train(tmp_path / "run", mnist_dir, 3) == 0
    out = tmp_path / "figures"
    checkpoint = tmp_path / "run" / "checkpoint.npz"
    assert run(["plot", checkpoint, "--data", mnist_dir, "--out", out]) == 0
    assert written_by_nanoae(out / "reconstructions.png")
    assert run(["plot", checkpoint, "--data", mnist_dir, "--out", out]) == 0  # its own figures: replaced
    (out / "loss.png").write_bytes((out / "reconstructions.png").read_bytes().replace(b"Software\x00nanoae", b"Software\x00pixels"))
    mine = (out / "loss.png").read_bytes()
    assert not written_by_nanoae(out / "loss.png")
    capsys.readouterr()
    assert run(["plot", checkpoint, "--data", mnist_dir, "--out", out]) == 2  # a user's loss.png: refused
    assert "loss.png, which nanoae did not write" in capsys.readouterr().err
    assert (out / "loss.png").read_bytes() == mine


@pytest.mark.parametrize(
    "text",
    [b"step,epoch,train_loss\n1,0.1,0.5\nabc,0.2,0.4\n3,0.3,x\n4,0.4,0.3\n", b"\xff\xfe\x00garbage\n1,2\n", b"loss\n0.5\n"],
    ids=["bad-values", "not-utf8", "no-step-column"],
)
def test_plot_reads_a_damaged_metrics_file_without_crashing(text, tmp_path):
    from nanoae.plot import read_metrics

    path = tmp_path / "metrics.csv"
    path.write_bytes(text)
    metrics = read_metrics(path)
    if text.startswith(b"step"):
        assert metrics["step"].tolist() == [1, 4] and metrics["train_loss"].tolist() == [0.5, 0.3]
    else:
        assert metrics["step"].size == 0
