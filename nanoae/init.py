"""Weight initializers: Glorot/Xavier, He, zeros.

An initializer is a function ``init(shape, rng) -> numpy.ndarray`` (float64, on the
host); the parameter arena casts the result to the model's dtype and copies it to the
device. Drawing on the host with the model's one generator keeps runs reproducible
across backends and dtypes.

Fans follow TensorFlow's rule (``_compute_fans``), which matters for biases:

* 2-D shape (in, out): fan_in = in, fan_out = out;
* 1-D shape (n,):      fan_in = fan_out = n;
* 0-D shape ():        fan_in = fan_out = 1.

So ``glorot_uniform`` on a bias of length n draws from U(-sqrt(3/n), +sqrt(3/n)): this
is exactly what the tutorial's ``tf.contrib.layers.xavier_initializer()`` does to its
biases (the alias ``"tf1_xavier"`` names that use).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

Initializer = Callable[[tuple, np.random.Generator], np.ndarray]

# The standard deviation of a unit normal truncated to [-2, 2]. Dividing by it makes a
# truncated normal's variance equal the target variance (Keras does the same).
_TRUNCATED_NORMAL_STD = 0.87962566103423978


def compute_fans(shape: tuple) -> tuple[int, int]:
    """(fan_in, fan_out) of a parameter shape, by TensorFlow's rule (see module doc)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _truncated_normal(shape, stddev: float, rng: np.random.Generator) -> np.ndarray:
    """Normal(0, stddev^2) redrawn until every value lies within two stddevs."""
    values = rng.standard_normal(shape)
    outside = np.abs(values) > 2.0
    while outside.any():
        values[outside] = rng.standard_normal(int(outside.sum()))
        outside = np.abs(values) > 2.0
    return values * stddev


def glorot_uniform(shape, rng: np.random.Generator) -> np.ndarray:
    """U(-limit, limit), limit = sqrt(6 / (fan_in + fan_out)); variance 2 / (fan_in + fan_out)."""
    fan_in, fan_out = compute_fans(shape)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


def glorot_normal(shape, rng: np.random.Generator) -> np.ndarray:
    """Truncated normal (at 2 sigma) with variance 2 / (fan_in + fan_out)."""
    fan_in, fan_out = compute_fans(shape)
    stddev = math.sqrt(2.0 / (fan_in + fan_out)) / _TRUNCATED_NORMAL_STD
    return _truncated_normal(shape, stddev, rng)


def he_uniform(shape, rng: np.random.Generator) -> np.ndarray:
    """U(-limit, limit), limit = sqrt(6 / fan_in); variance 2 / fan_in."""
    fan_in, _ = compute_fans(shape)
    limit = math.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, size=shape)


def he_normal(shape, rng: np.random.Generator) -> np.ndarray:
    """Truncated normal (at 2 sigma) with variance 2 / fan_in."""
    fan_in, _ = compute_fans(shape)
    stddev = math.sqrt(2.0 / fan_in) / _TRUNCATED_NORMAL_STD
    return _truncated_normal(shape, stddev, rng)


def zeros(shape, rng: np.random.Generator | None = None) -> np.ndarray:
    """All zeros (draws nothing from rng)."""
    return np.zeros(shape)


INITIALIZERS: dict[str, Initializer] = {
    "glorot_uniform": glorot_uniform,
    "xavier_uniform": glorot_uniform,
    "tf1_xavier": glorot_uniform,
    "glorot_normal": glorot_normal,
    "xavier_normal": glorot_normal,
    "he_uniform": he_uniform,
    "he_normal": he_normal,
    "zeros": zeros,
}


def get_initializer(spec: str | Initializer) -> Initializer:
    """Resolve a name from :data:`INITIALIZERS` or pass a callable through."""
    if callable(spec):
        return spec
    if isinstance(spec, str) and spec in INITIALIZERS:
        return INITIALIZERS[spec]
    raise ValueError(
        f"unknown initializer {spec!r}; use one of {', '.join(sorted(INITIALIZERS))} "
        "or a function init(shape, rng) -> array"
    )


def initializer_name(spec: str | Initializer) -> str:
    """A JSON-friendly name for configs (callables are named by their __name__)."""
    if isinstance(spec, str):
        return spec
    return getattr(spec, "__name__", repr(spec))
