"""examples/tutorial.py, the article's script step by step, runs and learns."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_article_script_runs(tmp_path, mnist_dir):
    pytest.importorskip("matplotlib")
    figure = tmp_path / "tutorial.png"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tutorial.py"), "--data", str(mnist_dir), "--steps", "200", "--out", str(figure)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    losses = [float(value) for value in re.findall(r"Minibatch Loss: ([0-9.]+)", result.stdout)]
    assert len(losses) == 200  # the loss of every step, as the article prints it
    assert sum(losses[-10:]) / 10 < 0.9 * sum(losses[:10]) / 10
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
