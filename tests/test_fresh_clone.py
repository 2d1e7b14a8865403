"""The README's first command, in a fresh clone, on a machine with no MNIST and no network.

The committed HEAD of this checkout is cloned into a temporary directory with no
``../shared`` beside it; ``NANOAE_DATA`` is unset, the caches point at empty
directories and downloads go to a closed local port. Then the README's first bash
block runs, read from the clone's README.md, with bash, in the clone. It must install
nanoae, train on the MNIST sample shipped with nanoae, and leave the figures.

Its ``pip install`` needs the package index (CI reaches it); the pip cache of this
machine is passed on (``PIP_CACHE_DIR``) so wheels are not fetched again. Only when
the install fails for want of the index is the test skipped.
"""

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
NOTICE = "using the 6,000-digit MNIST sample shipped with nanoae"
RUN_FILES = ("reconstructions.png", "loss.png", "config.json", "metrics.csv", "checkpoint.npz")
# pip's words when it cannot reach an index (it retries, then finds no version).
OFFLINE_PIP = re.compile(r"NewConnectionError|connection broken by|Temporary failure in name resolution|Network is unreachable")


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=120).stdout.strip()


def closed_port_url() -> str:
    """A base URL on a local port that was bound, then released: nothing listens there."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def first_bash_block(readme: Path) -> str:
    blocks = re.findall(r"```bash\n(.*?)```", readme.read_text(), flags=re.S)
    assert blocks, f"{readme} has no bash block"
    return blocks[0].strip()


def pip_cache_dir() -> str | None:
    """This machine's pip cache, so the clone's install reuses what it holds."""
    try:
        found = subprocess.run(["python3", "-m", "pip", "cache", "dir"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    path = found.stdout.strip()
    return path if found.returncode == 0 and path and Path(path).is_dir() else None


def test_the_readmes_first_command_in_a_fresh_clone_offline_trains_on_the_sample(tmp_path):
    if shutil.which("git") is None or shutil.which("python3") is None or shutil.which("bash") is None:
        pytest.skip("needs git, python3 and bash on PATH")
    try:
        head = git("rev-parse", "HEAD", cwd=REPO)
    except subprocess.CalledProcessError:
        pytest.skip(f"{REPO} is not a git checkout")

    workspace = tmp_path / "workspace"
    workspace.mkdir()
    clone = workspace / "nanoae"
    git("clone", "-q", "--no-checkout", str(REPO), str(clone), cwd=tmp_path)
    git("checkout", "-q", head, cwd=clone)
    assert not (clone.parent / "shared").exists()

    env = {k: v for k, v in os.environ.items() if k not in ("NANOAE_DATA", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["NANOAE_CACHE"] = str(tmp_path / "empty-nanoae-cache")
    env["XDG_CACHE_HOME"] = str(tmp_path / "empty-xdg-cache")
    env["NANOAE_MIRRORS"] = closed_port_url()
    pip_cache = pip_cache_dir()
    if pip_cache is not None:
        env["PIP_CACHE_DIR"] = pip_cache

    command = first_bash_block(clone / "README.md")
    assert "nanoae train" in command and "NANOAE_DATA" not in command and "shared" not in command
    started = time.perf_counter()
    done = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True, timeout=1500)
    seconds = time.perf_counter() - started
    print(f"the README's first command took {seconds:.0f} s in a fresh clone of {head[:7]}")
    output = done.stdout + done.stderr
    if done.returncode != 0 and not (clone / ".venv" / "bin" / "nanoae").exists() and OFFLINE_PIP.search(output):
        pytest.skip("the package index is unreachable, so the README's pip install cannot run: " + OFFLINE_PIP.search(output).group(0))
    assert done.returncode == 0, output[-4000:]

    run_dir = clone / "runs" / "tutorial"
    for name in RUN_FILES:
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    for figure in ("reconstructions.png", "loss.png"):
        assert (run_dir / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
    config = json.loads((run_dir / "config.json").read_text())
    assert "shipped with nanoae" in config["data_source"] and "standing in for full MNIST" in config["data_source"]
    assert str(clone.resolve() / "nanoae" / "data" / "sample") in config["data_source"]  # the clone's own package

    assert done.stderr.count(NOTICE) == 1, done.stderr[-4000:]  # once, though two splits load
    assert "Warning" not in done.stderr, done.stderr[-4000:]

    # It learnt: the tutorial's loss falls from about 0.107 to about 0.02 on the sample too.
    with open(run_dir / "metrics.csv", newline="") as f:
        losses = [float(row["train_loss"]) for row in csv.DictReader(f) if row.get("train_loss")]
    assert len(losses) == 1000 and losses[0] > 0.09 and losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
