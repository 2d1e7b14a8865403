"""Fault injection: ``nanoae train`` killed with SIGKILL at random moments, and saves
that hit a file-size limit or a full disk.

The killed runs
---------------
A child ``nanoae train`` (the tutorial model on real MNIST, batch 32, a checkpoint and
a metrics row every step, so saves are a large share of its time) is killed with
SIGKILL at seeded random moments: the parent waits until the child's metrics show a
randomly chosen step, then a random 0-30 ms more, and kills. Each kill is followed by
``nanoae train --resume RUN/checkpoint.npz`` to the run's total, which may itself be
killed again (a chain of kills ends with a resume that runs to the end). After each
chain:

- the final checkpoint's parameters and optimizer state are bit-identical to those
  of an uninterrupted run with the same options;
- ``metrics.csv`` holds every step exactly once, with the uninterrupted run's
  training loss at every step (the resumed batches are the same ones);
- no temporary file is left in the run directory.

A kill that leaves a temporary file beside the run's files (``.<name>.tmp-...``)
landed inside a save; the test counts them and requires at least one.

CI runs 20 kills (``NANOAE_FAULT_TRIALS``, default 20; about a minute on 2 cores).
The long mode, documented in docs/reliability.md, runs 200:

    NANOAE_FAULT_TRIALS=200 NANOAE_FAULT_SEED=1 python -m pytest tests/test_fault_injection.py -k killed

``NANOAE_FAULT_REPORT=PATH`` appends the figures of a run (trials, kills inside a
save, runs lost) as one JSON line to PATH.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nanoae import cli
from nanoae.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
STEPS = 40  # the run's total
KILLS_PER_CHAIN = 5
TRIALS = int(os.environ.get("NANOAE_FAULT_TRIALS", "20"))
SEED = int(os.environ.get("NANOAE_FAULT_SEED", "0"))
TEMP_NAME = re.compile(r"^\..*\.tmp-\d+-[0-9a-f]+$|^\.write-test-")

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL") or os.name != "posix", reason="needs POSIX signals")


def _env() -> dict:
    """The child's environment: this checkout first on the path, one BLAS thread (the
    bit-exact comparison needs the same summation order in every process)."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NANOAE_BACKEND": "numpy",
    }


def _common(mnist_dir: Path) -> list[str]:
    """Options every run and resume here shares (all of them allowed on --resume)."""
    return [
        "--steps", str(STEPS), "--data", str(mnist_dir), "--backend", "numpy", "--quiet",
        "--log-every", "1", "--checkpoint-every", "1", "--eval-every", "0",
    ]


def _first_run(run: Path, mnist_dir: Path) -> list[str]:
    return [sys.executable, "-m", "nanoae", "train", "--out", str(run), "--batch-size", "32", *_common(mnist_dir)]


def _resume(run: Path, mnist_dir: Path) -> list[str]:
    return [sys.executable, "-m", "nanoae", "train", "--resume", str(run / "checkpoint.npz"), *_common(mnist_dir)]


def _last_logged_step(metrics: Path) -> int:
    """The step of the last complete row of metrics.csv (0 when there is none)."""
    try:
        text = metrics.read_text()
    except OSError:
        return 0
    rows = [line for line in text.split("\n")[1:-1] if line]  # the last piece may be a half-written row
    try:
        return int(rows[-1].split(",")[0]) if rows else 0
    except ValueError:
        return 0


def _temp_files(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if TEMP_NAME.match(p.name))


def _run_to_end(command: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(command)}\nexit {done.returncode}\n{done.stderr}"
    return done


def _run_and_kill(command: list[str], metrics: Path, kill_step: int, delay: float) -> bool:
    """Start ``command``; once metrics.csv shows ``kill_step``, wait ``delay`` s and SIGKILL
    it. Returns False when the child finished before it could be killed."""
    child = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while child.poll() is None and _last_logged_step(metrics) < kill_step:
            assert time.monotonic() < deadline, "the child made no progress"
            time.sleep(0.002)
        if child.poll() is None:
            time.sleep(delay)
        if child.poll() is not None:
            stderr = child.stderr.read().decode()
            assert child.returncode == 0, f"{' '.join(command)}\nexit {child.returncode}\n{stderr}"
            return False
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        return True
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stderr.close()


def _read_metrics(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _arrays(checkpoint: Path) -> dict:
    with np.load(checkpoint, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files if name != "header"}


def _assert_same_run(run: Path, reference: Path, ended_at: tuple = ()) -> None:
    """``run`` ended exactly where the uninterrupted ``reference`` did. ``ended_at``: steps
    where an earlier part of ``run`` finished, whose rows hold that part's final test MSE."""
    ours, theirs = _arrays(run / "checkpoint.npz"), _arrays(reference / "checkpoint.npz")
    assert sorted(ours) == sorted(theirs)
    for name in theirs:  # params, optimizer state, sampler permutation: bit for bit
        assert ours[name].dtype == theirs[name].dtype and np.array_equal(ours[name], theirs[name]), name
    assert load_checkpoint(run / "checkpoint.npz", backend="numpy").step == STEPS

    rows, expected = _read_metrics(run / "metrics.csv"), _read_metrics(reference / "metrics.csv")
    steps = [int(row["step"]) for row in rows]
    assert steps == list(range(1, STEPS + 1)), f"metrics.csv steps: {steps}"
    for row, want in zip(rows, expected):
        assert (row["epoch"], row["train_loss"]) == (want["epoch"], want["train_loss"]), row["step"]
        if int(row["step"]) not in ended_at:
            assert row["test_mse"] == want["test_mse"], row["step"]
    assert _temp_files(run) == [], f"temporary files left in {run}: {_temp_files(run)}"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, mnist_dir) -> Path:
    """An uninterrupted run with the options every killed run uses."""
    run = tmp_path_factory.mktemp("reference") / "run"
    _run_to_end(_first_run(run, mnist_dir))
    return run


def _report(figures: dict) -> None:
    target = os.environ.get("NANOAE_FAULT_REPORT")
    if target:
        with open(target, "a") as handle:
            handle.write(json.dumps(figures) + "\n")


# ---- SIGKILL at random moments ------------------------------------------------------
def test_killed_training_resumes_bit_identical(tmp_path, mnist_dir, reference_run):
    rng = random.Random(SEED)
    kills = kills_in_save = chains = runs_lost = 0
    failures = []
    params_identical = 0
    while kills < TRIALS:
        chains += 1
        assert chains <= 2 * TRIALS + 5, f"the children finished before they could be killed: {kills} kills"
        run = tmp_path / f"chain-{chains}"
        metrics = run / "metrics.csv"
        command = _first_run(run, mnist_dir)
        for _ in range(min(KILLS_PER_CHAIN, TRIALS - kills)):
            start = _last_logged_step(metrics)
            if start >= STEPS - 2:
                break
            kill_step = min(start + rng.randint(1, 8), STEPS - 2)  # small steps: many kills per chain
            if not _run_and_kill(command, metrics, kill_step, rng.uniform(0.0, 0.03)):
                break
            kills += 1
            left = _temp_files(run)
            kills_in_save += bool(left)
            if not (run / "checkpoint.npz").exists():  # killed before the first checkpoint
                break
            loaded = load_checkpoint(run / "checkpoint.npz", backend="numpy")  # always loadable
            assert 1 <= loaded.step <= STEPS
            command = _resume(run, mnist_dir)
        if not (run / "checkpoint.npz").exists():
            command = _first_run(run, mnist_dir) + ["--overwrite"]
        _run_to_end(command)
        ours, theirs = _arrays(run / "checkpoint.npz"), _arrays(reference_run / "checkpoint.npz")
        params_identical += all(np.array_equal(ours.get(name), theirs[name]) for name in theirs)
        try:
            _assert_same_run(run, reference_run)
        except AssertionError as lost:  # count every lost run, then fail with the first ones
            runs_lost += 1
            failures.append(f"{run.name}: {str(lost).splitlines()[0]}")
    figures = {"trials": kills, "kills_in_save": kills_in_save, "chains": chains, "runs_lost": runs_lost,
               "runs_with_identical_parameters": params_identical, "seed": SEED}
    _report(figures)
    print(f"fault injection: {figures}")
    assert runs_lost == 0, f"{figures}\n" + "\n".join(failures[:5])
    assert kills >= TRIALS
    assert kills_in_save >= 1, f"no kill landed inside a save: {figures}"


# ---- saves that cannot be written -----------------------------------------------------
def _limit_file_size(limit: int):
    """For the child: files may not grow past ``limit`` bytes, and a write past it fails
    with EFBIG instead of killing the process with SIGXFSZ."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE and SIGXFSZ")
def test_file_size_limit_keeps_the_previous_checkpoint(tmp_path, mnist_dir, reference_run):
    run = tmp_path / "run"
    first = _first_run(run, mnist_dir)
    first[first.index("--steps") + 1] = "5"
    _run_to_end(first)
    before = (run / "checkpoint.npz").read_bytes()

    # The tutorial's checkpoint is ~9 MB; 1 MB lets config.json and metrics.csv through.
    command = _resume(run, mnist_dir)
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size(2**20))
    assert done.returncode == 2  # a user's error: one line, exit 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # one line, no traceback
    assert str(run / "checkpoint.npz") in lines[0] and "File too large" in lines[0], lines[0]

    assert (run / "checkpoint.npz").read_bytes() == before  # the previous checkpoint, untouched
    assert load_checkpoint(run / "checkpoint.npz", backend="numpy").step == 5
    assert _temp_files(run) == []

    _run_to_end(_resume(run, mnist_dir))  # without the limit the run goes on, as if never stopped
    _assert_same_run(run, reference_run, ended_at=(5,))


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, mnist_dir, monkeypatch, capsys):
    """ENOSPC from the file system, simulated: every write of a checkpoint's temporary
    file fails once it has written 64 KiB (a real full disk fails the same call)."""
    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--batch-size", "32", *_common(mnist_dir)]
    args[args.index("--steps") + 1] = "3"
    assert cli.main(args) == 0
    before = (run / "checkpoint.npz").read_bytes()
    capsys.readouterr()

    real_fdopen = os.fdopen

    class FullDisk:
        """A file whose disk fills after 64 KiB."""

        def __init__(self, handle):
            self.handle, self.written = handle, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 2**16:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.handle.write(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

    def fdopen(fd, mode="r", *a, **k):
        handle = real_fdopen(fd, mode, *a, **k)
        return FullDisk(handle) if "w" in mode else handle

    monkeypatch.setattr(os, "fdopen", fdopen)
    code = cli.main(["train", "--resume", str(run / "checkpoint.npz"), *_common(mnist_dir)[2:], "--steps", "6"])
    monkeypatch.undo()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and str(run / "checkpoint.npz") in err[0] and "No space left on device" in err[0], err
    assert (run / "checkpoint.npz").read_bytes() == before
    assert load_checkpoint(run / "checkpoint.npz", backend="numpy").step == 3
    assert _temp_files(run) == []
