"""Checks on user input at the public edges (model calls, losses, optimizers).

Hot paths never call these: a model validates what it is given once, then runs its
layers on trusted arrays. Every failure names the problem and the fix.
"""

from __future__ import annotations

import math
import numbers

import numpy as np


def _describe(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + (",)" if len(shape) == 1 else ")")


def as_batch(x, features: int | None, backend, name: str = "x", check_finite: bool = True):
    """Return ``x`` as a (batch, features) array of the backend's dtype, on its device.

    Accepts NumPy arrays (copied to the device for CuPy), arrays of the backend, and
    nested lists. Floating inputs of another precision are cast to the model's dtype
    (float64 data into a float32 model is narrowed, never the other way round).
    Raises TypeError for non-floating or foreign-device data and ValueError for a wrong
    rank, a wrong width, an empty batch or non-finite values.
    """
    if backend.name == "numpy" and type(x).__module__.startswith("cupy"):
        raise TypeError(f"{name} is a CuPy (GPU) array but this model runs on NumPy; pass cupy.asnumpy({name})")
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        try:
            x = np.asarray(x)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"{name} could not be read as an array ({exc}); pass a 2-D float array") from exc
    kind = np.dtype(x.dtype).kind
    if kind != "f":
        hint = ""
        if kind in "iub":
            hint = f"; convert with {name}.astype(np.float32)"
            if np.dtype(x.dtype) == np.uint8:
                hint += " / 255 (uint8 pixels are 0..255; nanoae expects [0, 1])"
        raise TypeError(f"{name} has dtype {np.dtype(x.dtype).name}, but nanoae needs floating-point input{hint}")
    if x.ndim != 2:
        if x.ndim == 1:
            fix = f"for one example use {name}.reshape(1, -1)"
        elif x.ndim > 2:
            fix = f"flatten each example with {name}.reshape(len({name}), -1)"
        else:
            fix = "pass a 2-D array"
        raise ValueError(f"{name} must be 2-D (batch, features), got shape {_describe(x.shape)}: {fix}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {_describe(x.shape)}); pass at least one row")
    if features is not None and x.shape[1] != features:
        raise ValueError(
            f"{name} has {x.shape[1]} features per row but the model expects {features} "
            f"(got shape {_describe(x.shape)})"
        )
    x = backend.asarray(x, dtype=backend.dtype)
    if check_finite and not all_finite(x, backend.xp):
        bad = int(x.size - int(backend.xp.isfinite(x).sum()))
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s); clean or impute them before training")
    return x


def all_finite(x, xp, chunk_elements: int = 1 << 20) -> bool:
    """True when x holds no NaN or inf; checked in row chunks so a big dataset needs
    no full-size boolean temporary."""
    rows = max(1, chunk_elements // max(1, x.shape[1]))
    for start in range(0, x.shape[0], rows):
        if not bool(xp.isfinite(x[start : start + rows]).all()):
            return False
    return True


def check_same_shape(target, output_shape, name: str = "target") -> None:
    if tuple(target.shape) != tuple(output_shape):
        raise ValueError(
            f"{name} has shape {_describe(target.shape)} but the model's output has shape "
            f"{_describe(output_shape)}; they must match"
        )


def positive_float(value, name: str) -> float:
    """A finite float > 0 (e.g. a learning rate), else a clear error."""
    number = real_number(value, name)
    if not number > 0 or math.isinf(number):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def real_number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    number = float(value)
    if math.isnan(number):
        raise ValueError(f"{name} must be a number, got NaN")
    return number


def fraction(value, name: str, *, allow_zero: bool = True) -> float:
    """A float in [0, 1) (or (0, 1) when allow_zero is False), e.g. a decay rate."""
    number = real_number(value, name)
    low_ok = number >= 0 if allow_zero else number > 0
    if not (low_ok and number < 1):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return number


def non_negative_float(value, name: str) -> float:
    number = real_number(value, name)
    if number < 0 or math.isinf(number):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def choice(value, name: str, options) -> str:
    if value not in options:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, options))}")
    return value


def register_class(registry: dict, key: str, cls: type, kind: str) -> None:
    """Put ``cls`` in a name -> class registry (modules, losses, optimizers) under ``key``.

    Checkpoints and configs find classes by these names, so a class from outside
    nanoae may not take a name that one of nanoae's own classes holds: it would change
    how every saved nanoae model rebuilds. Any other redefinition (a class run again in
    a notebook, a test's local class) replaces the earlier one.
    """
    held = registry.get(key)
    ours = held is not None and held.__module__.startswith("nanoae.")
    if ours and held is not cls and not cls.__module__.startswith("nanoae."):
        raise TypeError(
            f"a {kind} named {key!r} is already nanoae's ({held.__module__}.{held.__qualname__}), and "
            f"configs and checkpoints find {kind}s by that name; give {cls.__qualname__} another one"
        )
    registry[key] = cls
