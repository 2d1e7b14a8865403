"""End to end on real MNIST: the tutorial preset learns as the tutorial's does."""

import numpy as np
import pytest

from nanoae import presets
from nanoae.data import load_dataset
from nanoae.evaluation import reconstruction_errors


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return load_dataset("mnist", "train", data_dir=mnist_dir), load_dataset("mnist", "test", data_dir=mnist_dir)


def test_tutorial_preset_learns_in_300_steps(mnist, record_property):
    train, test = mnist
    model = presets.tutorial(seed=0)
    history = model.fit(train.images, steps=300, batch_size=256)
    start, end = float(np.mean(history[:10])), float(np.mean(history[-10:]))
    errors = reconstruction_errors(model, test.images)
    # The best input-independent answer is the mean training image. A backward pass that
    # only trained the output bias (or nothing) could not beat it; the network must.
    mean_image = train.images.mean(axis=0, dtype=np.float64)
    baseline = float(np.mean((test.images - mean_image) ** 2))
    record_property("start_loss", start)
    record_property("end_loss", end)
    record_property("test_mse", errors["mse"])
    record_property("mean_image_mse", baseline)
    print(f"tutorial, 300 steps: loss {start:.4f} -> {end:.4f}; test MSE {errors['mse']:.4f} (mean image {baseline:.4f})")
    assert 0.09 < start < 0.13  # the tutorial's starting point for this init on MNIST
    assert end < 0.6 * start
    assert errors["mse"] < 0.75 * baseline
    assert np.isfinite(model.arena.values).all()
