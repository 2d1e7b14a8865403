"""Activation functions as parameter-free modules.

Each activation is differentiated from its output y, so a module keeps only y:

=============  ====================  ==========================
name           y = f(z)              f'(z) written with y
=============  ====================  ==========================
identity       z                     1
relu           max(z, 0)             1 if y > 0 else 0 (0 at z = 0, as TensorFlow)
leaky_relu     z if z > 0 else a z   1 if y > 0 else a           (a >= 0)
sigmoid        1 / (1 + e^-z)        y (1 - y)   (computed without overflow)
tanh           tanh(z)               1 - y^2
=============  ====================  ==========================

A Dense layer fuses its activation (``Dense(..., activation="relu")``); the modules
here also stand alone in a Sequential.
"""

from __future__ import annotations

import math

from nanoae.module import Module
from nanoae.validation import real_number

DEFAULT_LEAKY_ALPHA = 0.2
_ALIASES = {"linear": "identity", "none": "identity", None: "identity", "leaky": "leaky_relu", "lrelu": "leaky_relu"}


class Activation(Module):
    """y = f(z) elementwise; forward keeps y, backward returns f'(z) * dy."""

    name = "identity"

    def __init__(self) -> None:
        super().__init__()
        self.alpha = 0.0
        self._output = None
        self._workspace: dict = {}

    def forward(self, x):
        """x: (batch, features) -> y: same shape."""
        self._output = self.backend.ops.activation_forward(x, self.name, self.alpha, self._workspace)
        return self._output

    def backward(self, grad_output, need_input_grad: bool = True):
        """grad_output: (batch, features) -> dz: same shape."""
        if self._output is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        if not need_input_grad:
            return None
        return self.backend.ops.activation_backward(grad_output, self._output, self.name, self.alpha, self._workspace)

    def config(self) -> dict:
        return {"type": type(self).__name__, "name": self.name, "alpha": self.alpha}

    @classmethod
    def from_config(cls, config: dict, **build_options) -> "Activation":
        return cls()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Identity(Activation):
    name = "identity"


class ReLU(Activation):
    name = "relu"


class Sigmoid(Activation):
    name = "sigmoid"


class Tanh(Activation):
    name = "tanh"


class LeakyReLU(Activation):
    """y = z for z > 0, alpha * z otherwise (alpha >= 0; default 0.2 as tf.nn.leaky_relu)."""

    name = "leaky_relu"

    def __init__(self, alpha: float = DEFAULT_LEAKY_ALPHA) -> None:
        super().__init__()
        alpha = real_number(alpha, "alpha")
        # alpha >= 0 keeps "y > 0 exactly when z > 0", which backward relies on.
        if alpha < 0 or math.isinf(alpha):
            raise ValueError(f"LeakyReLU alpha must be a finite number >= 0, got {alpha!r}")
        self.alpha = alpha

    @classmethod
    def from_config(cls, config: dict, **build_options) -> "LeakyReLU":
        return cls(config["alpha"])

    def __repr__(self) -> str:
        return f"LeakyReLU(alpha={self.alpha})"


ACTIVATIONS = {cls.name: cls for cls in (Identity, ReLU, LeakyReLU, Sigmoid, Tanh)}


def resolve_activation(spec, alpha: float | None = None) -> Activation:
    """An Activation from a name ("relu", ...), an Activation instance or None (identity)."""
    if isinstance(spec, Activation):
        if alpha is not None:
            raise ValueError("pass alpha either in the activation object or as alpha=, not both")
        return type(spec)(spec.alpha) if isinstance(spec, LeakyReLU) else type(spec)()
    if spec is not None and not isinstance(spec, str):
        raise TypeError(f"activation must be a name such as 'relu' or an Activation object, got {spec!r}")
    key = spec.lower() if isinstance(spec, str) else spec
    key = _ALIASES.get(key, key)
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {spec!r}; choose one of {', '.join(ACTIVATIONS)}")
    if key == "leaky_relu":
        return LeakyReLU(DEFAULT_LEAKY_ALPHA if alpha is None else alpha)
    if alpha is not None:
        raise ValueError(f"alpha only applies to 'leaky_relu', not {key!r}")
    return ACTIVATIONS[key]()
