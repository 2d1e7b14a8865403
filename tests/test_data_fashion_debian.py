"""Fashion-MNIST from Debian's dataset-fashion-mnist package, for real (re-gzipped files)."""

from pathlib import Path

import numpy as np
import pytest

from nanoae.cli import main
from nanoae.data import load_dataset

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(
    not (DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz").exists(),
    reason="Debian's Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist; .ci/run does)",
)


def test_fashion_from_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.delenv("NANOAE_DATA", raising=False)
    monkeypatch.setenv("NANOAE_CACHE", str(tmp_path / "empty-cache"))
    test = load_dataset("fashion", "test", download=False)
    train = load_dataset("fashion", "train", download=False)
    assert "Debian" in test.source
    assert test.images.shape == (10000, 784) and train.images.shape == (60000, 784)
    assert test.images.dtype == np.float32 and 0.0 <= test.images.min() and test.images.max() <= 1.0
    assert test.labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]  # ankle boot, pullover, trouser, ...
    assert np.bincount(train.labels).tolist() == [6000] * 10


def test_train_on_fashion_from_the_command_line(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("NANOAE_DATA", raising=False)
    monkeypatch.setenv("NANOAE_CACHE", str(tmp_path / "empty-cache"))
    code = main(["train", "--dataset", "fashion", "--no-download", "--steps", "5", "--out", str(tmp_path / "run"), "--quiet", "--eval-every", "0"])
    assert code == 0
    assert "step 5: final training loss" in capsys.readouterr().out
