"""The study scripts in examples/ run end to end in their --quick mode (CI keeps them working)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDIES = {
    "pca_vs_autoencoder": ["pca_vs_autoencoder_mse.png", "pca_vs_autoencoder_reconstructions.png", "latent_maps_2d.png"],
    "vae_vs_autoencoder": ["vae_vs_autoencoder_reconstructions.png", "vae_samples.png", "autoencoder_random_codes.png",
                           "latent_maps_vae_vs_autoencoder.png", "interpolation.png"],
    "encoder_to_classifier": ["encoder_to_classifier.png"],
    "denoising": ["denoising.png"],
}


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_study_runs_quick(study, tmp_path, mnist_dir):
    pytest.importorskip("matplotlib")
    # One BLAS thread: the quick runs use tiny batches, and on a busy 2-core CI machine
    # two spinning BLAS threads per process make them several times slower.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / f"{study}.py"), "--quick", "--data", str(mnist_dir), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    fragment = (tmp_path / f"{study}.md").read_text()
    assert fragment.count("|") > 10 and "Machine:" in fragment  # a table and the machine line
    json.loads((tmp_path / f"{study}.json").read_text())
    for figure in STUDIES[study]:
        assert (tmp_path / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure


def test_sklearn_pipeline_runs_quick(tmp_path, mnist_dir):
    pytest.importorskip("sklearn")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "sklearn_pipeline.py"), "--quick", "--data", str(mnist_dir), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| nanoae autoencoder, 20 steps | 32 |" in result.stdout and "| PCA (scikit-learn) | 32 |" in result.stdout
    numbers = json.loads((tmp_path / "sklearn_pipeline.json").read_text())
    assert numbers["train_rows"] == 2000 and len(numbers["methods"]) == 4
    # Accuracies are fractions of the 500 test images; chance is 0.1 and any fitted row is above it.
    assert all(0.1 < row["test_accuracy"] <= 1 and abs(row["test_accuracy"] * 500 - round(row["test_accuracy"] * 500)) < 1e-9 for row in numbers["methods"].values())
    assert "Machine:" in (tmp_path / "sklearn_pipeline.md").read_text()
