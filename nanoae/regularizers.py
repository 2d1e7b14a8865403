"""Regularizers: L2 weight decay, sparse codes (L1 on activations), denoising noise.

Three ways to keep an autoencoder from simply copying its input, each written as a
term of the loss or a change of the input, never as an optimizer trick:

* **L2 weight decay** (the tutorial's "regularization term"): ``Dense(...,
  weight_decay=lam)`` adds R = lam/2 * sum(W^2) per layer (biases excluded);
  :func:`set_weight_decay` sets it on every Dense layer of a model.
* **Sparse codes**: :class:`ActivityL1` placed after the code layer adds
  R = lam * mean(|h|) (mean over batch and code units, the same per-element
  normalization as nanoae's losses) and passes h through unchanged.
* **Denoising**: an :class:`~nanoae.models.Autoencoder` given ``corruption=`` trains on
  corrupted inputs against the clean images: :class:`GaussianNoise` (x + std * eps,
  clipped to [0, 1]) or :class:`MaskingNoise` (each pixel zeroed with probability p).
  The noise comes from the model's seeded generator, so runs stay reproducible.

Every term's gradient is written by hand in :mod:`nanoae.ops.reference`.
"""

from __future__ import annotations

import numpy as np

from nanoae.layers import Dense
from nanoae.module import Module
from nanoae.validation import fraction, non_negative_float, positive_float


class ActivityL1(Module):
    """Identity in the forward pass; adds strength * mean(|h|) to the objective.

    h: (batch, units) -> h. Backward returns dy + strength * sign(h) / h.size.
    Place it after the code layer: ``Sequential([Dense(784, 128, "relu"), ActivityL1(1e-3)])``.

    Forward only keeps h (inference pays nothing for the term); backward and
    :meth:`penalty` compute the gradient and the value from it, one call to the ops
    table's ``l1_penalty_and_grad`` per forward pass between them.
    """

    def __init__(self, strength: float) -> None:
        super().__init__()
        self.strength = non_negative_float(strength, "strength")
        self._input = None
        self._penalty = None  # the last forward pass's term, once computed

    def forward(self, x):
        """x: (batch, units) -> x itself; keeps x for backward and penalty."""
        self._input = x
        self._penalty = None
        return x

    def backward(self, grad_output, need_input_grad: bool = True):
        if self._input is None:
            raise RuntimeError("ActivityL1.backward called before forward")
        if not need_input_grad:
            return None
        if not self.strength:
            return grad_output
        self._penalty, grad = self.backend.ops.l1_penalty_and_grad(self._input, self.strength)
        return grad_output + grad

    def penalty(self):
        """strength * mean(|h|) of the last forward pass (0.0 before any)."""
        if not self.strength or self._input is None:
            return 0.0
        if self._penalty is None:
            self._penalty, _ = self.backend.ops.l1_penalty_and_grad(self._input, self.strength)
        return self._penalty

    def config(self) -> dict:
        return {"type": type(self).__name__, "strength": self.strength}

    @classmethod
    def from_config(cls, config: dict, **build_options) -> "ActivityL1":
        return cls(config["strength"])

    def __repr__(self) -> str:
        return f"ActivityL1({self.strength})"


def set_weight_decay(module: Module, strength: float) -> Module:
    """Give every Dense layer inside ``module`` an L2 term lam/2 * sum(W^2); returns module."""
    strength = non_negative_float(strength, "weight_decay")
    for sub in module.modules():
        if isinstance(sub, Dense):
            sub.weight_decay = strength
    return module


# ---- input corruption (denoising) ------------------------------------------------------
class Corruption:
    """Base of input corruptions: ``corrupt(x, rng, backend)`` -> a corrupted copy of x."""

    kind = "none"

    def corrupt(self, x, rng: np.random.Generator, backend):
        raise NotImplementedError

    def config(self) -> dict:
        raise NotImplementedError


class GaussianNoise(Corruption):
    """x~ = clip(x + std * eps, 0, 1), eps ~ N(0, 1) drawn in float32 on the host."""

    kind = "gaussian"

    def __init__(self, std: float = 0.5) -> None:
        self.std = positive_float(std, "std")

    def corrupt(self, x, rng, backend):
        noise = backend.asarray(rng.standard_normal(x.shape, dtype=np.float32), dtype=x.dtype)
        return backend.ops.gaussian_corruption(x, noise, self.std)

    def config(self) -> dict:
        return {"kind": self.kind, "std": self.std}

    def __repr__(self) -> str:
        return f"GaussianNoise(std={self.std})"


class MaskingNoise(Corruption):
    """x~ = x * keep, each pixel dropped (set to 0) with probability ``p``."""

    kind = "mask"

    def __init__(self, p: float = 0.5) -> None:
        self.p = fraction(p, "p", allow_zero=False)

    def corrupt(self, x, rng, backend):
        keep = backend.asarray(rng.random(x.shape, dtype=np.float32) >= self.p)
        return backend.ops.masking_corruption(x, keep)

    def config(self) -> dict:
        return {"kind": self.kind, "p": self.p}

    def __repr__(self) -> str:
        return f"MaskingNoise(p={self.p})"


CORRUPTIONS = {"gaussian": GaussianNoise, "mask": MaskingNoise}


def get_corruption(spec) -> Corruption | None:
    """A Corruption from an object, a config dict, or "gaussian[:std]" / "mask[:p]"; None passes."""
    if spec is None or isinstance(spec, Corruption):
        return spec
    if isinstance(spec, dict):
        options = {key: value for key, value in spec.items() if key != "kind"}
        kind = spec.get("kind")
    elif isinstance(spec, str):
        kind, _, level = spec.partition(":")
        options = {}
        if level:
            try:
                value = float(level)
            except ValueError:
                raise ValueError(f"corruption {spec!r}: {level!r} is not a number") from None
            options = {"std": value} if kind == "gaussian" else {"p": value}
    else:
        raise TypeError(f"corruption must be a Corruption, a dict or a string such as 'gaussian:0.5', got {spec!r}")
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; choose one of {', '.join(CORRUPTIONS)}")
    return CORRUPTIONS[kind](**options)
