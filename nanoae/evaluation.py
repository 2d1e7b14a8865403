"""Reconstruction errors of a trained model on a data set, computed in chunks.

Both functions feed ``model.inference`` (images, not logits; a VAE's mean code, no
noise) ``batch_size`` rows at a time, so a whole test set never has to pass at once.
"""

from __future__ import annotations

from nanoae.losses import BCE, MSE
from nanoae.validation import as_batch

__all__ = ["reconstruction_errors", "reconstruction_mse"]


def reconstruction_mse(model, x, target=None, batch_size: int = 1000) -> float:
    """mean((inference(x) - target)^2) over every row and feature, as a float.

    x: (n, in_features); target: (n, out_features), default x (an autoencoder's target).
    """
    x = as_batch(x, model.in_features, model.backend, "x_test")
    target = x if target is None else as_batch(target, model.out_features, model.backend, "target_test")
    total = 0.0
    for start in range(0, x.shape[0], batch_size):
        stop = start + batch_size
        difference = model.inference(x[start:stop]) - target[start:stop]
        total += float((difference * difference).sum())
    return total / (x.shape[0] * x.shape[1])


def reconstruction_errors(model, x, batch_size: int = 1000) -> dict:
    """{"mse": float, "bce": float}: the mean reconstruction errors of x: (n, features).

    BCE clips the outputs to [1e-7, 1 - 1e-7]; both are means over rows and features.
    """
    x = as_batch(x, model.in_features, model.backend, "x")
    mse, bce = MSE().bind(model.backend), BCE().bind(model.backend)
    totals = {"mse": 0.0, "bce": 0.0}
    for start in range(0, x.shape[0], batch_size):
        chunk = x[start : start + batch_size]
        output = model.inference(chunk)
        totals["mse"] += float(mse(output, chunk)) * chunk.shape[0]
        totals["bce"] += float(bce(output, chunk)) * chunk.shape[0]
    return {name: value / x.shape[0] for name, value in totals.items()}
