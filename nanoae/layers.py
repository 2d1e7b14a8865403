"""Modules and the Dense layer.

A :class:`Module` has ``forward(x)`` and ``backward(grad_output, need_input_grad)``.
Forward keeps what backward needs; backward writes parameter gradients into the
module's gradient views and returns the gradient with respect to its input (or
``None`` when the caller does not need it: the first layer of a model).

Parameters are not owned by layers: a layer declares them (:meth:`Module.parameter_specs`)
and is *bound* to views into a model-wide :class:`~nanoae.params.ParameterArena`.
Calling :meth:`Module.build` on a module gives it an arena of its own; a model builds
one arena for all its layers.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from nanoae.backend import Backend, get_backend, make_rng
from nanoae.init import get_initializer, initializer_name
from nanoae.params import ParameterArena, ParamSpec
from nanoae.validation import as_batch, positive_int


def sum_penalties(terms):
    """Add penalty terms, skipping the Python 0.0 of modules without one (so a model
    with no regulariser returns exactly 0.0 and its loss is left untouched)."""
    total = None
    for term in terms:
        if type(term) is float and term == 0.0:
            continue
        total = term if total is None else total + term
    return 0.0 if total is None else total


class Module:
    """Base of layers and models: parameter declaration, binding, forward/backward."""

    in_features: int | None = None
    out_features: int | None = None

    def __init__(self) -> None:
        self.backend: Backend | None = None
        self.arena: ParameterArena | None = None
        self.rng: np.random.Generator | None = None
        self._prefix = ""
        self._bound_arena: ParameterArena | None = None

    # ---- parameters --------------------------------------------------------------
    def parameter_specs(self, prefix: str = "") -> list[ParamSpec]:
        """Declare this module's parameters (names prefixed), children included."""
        return []

    def bind(self, arena: ParameterArena, prefix: str = "") -> None:
        """Attach to views of ``arena`` (and its backend) for this module's names."""
        self.backend = arena.backend
        self._prefix = prefix
        self._bound_arena = arena
        for child_prefix, child in self.children(prefix):
            child.bind(arena, child_prefix)

    def children(self, prefix: str = "") -> list[tuple[str, "Module"]]:
        """(prefix, module) for each direct sub-module."""
        return []

    def modules(self) -> Iterator["Module"]:
        """This module and every sub-module, depth first."""
        yield self
        for _, child in self.children():
            yield from child.modules()

    @property
    def built(self) -> bool:
        return self.backend is not None

    def build(self, backend=None, dtype=None, seed=None, fast=None) -> "Module":
        """Give this module an arena of its own and initialise its parameters.

        backend: "numpy" | "cupy" | "auto" | a Backend (default: $NANOAE_BACKEND or auto)
        dtype:   "float32" (default) or "float64"
        seed:    int for a reproducible initialisation (and, in models, batch order)
        Sub-modules that were already built keep their current values.
        """
        resolved = get_backend(backend, dtype=dtype, fast=fast)
        self.rng = make_rng(seed)
        arena = ParameterArena(self.parameter_specs(), resolved)
        arena.initialize(self.rng)
        for module in self.modules():  # children built on their own give up their old arena
            module.arena = None
        self.bind(arena)
        self.arena = arena
        return self

    def parameters(self) -> dict:
        """name -> parameter view of this module (live: writing to it changes the model)."""
        return self._own(self._bound_arena.views) if self._bound_arena is not None else {}

    def gradients(self) -> dict:
        """name -> gradient view of this module, filled by the last backward pass."""
        return self._own(self._bound_arena.grad_views) if self._bound_arena is not None else {}

    def _own(self, views: dict) -> dict:
        start = len(self._prefix)
        return {name[start:]: view for name, view in views.items() if name.startswith(self._prefix)}

    def _ensure_built(self) -> None:
        if not self.built:
            self.build()

    # ---- regularisation terms ------------------------------------------------------
    def penalty(self):
        """The terms this module adds to the training objective, summed (children too).

        Evaluated at the current parameters and the last forward pass: an L2 weight
        penalty (:class:`Dense` with ``weight_decay``), an L1 penalty on activations,
        a VAE's KL term. Returns 0.0 when there are none, else a 0-d array. Each
        module's ``backward`` already adds the gradient of its own term, so
        objective = loss(output, target) + penalty() is what training minimises.
        """
        return sum_penalties(child.penalty() for _, child in self.children())

    # ---- computation -------------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError

    def backward(self, grad_output, need_input_grad: bool = True):
        raise NotImplementedError

    def __call__(self, x):
        """Validated forward pass: checks x, builds with defaults if needed."""
        self._ensure_built()
        return self._handed_out(self.forward(as_batch(x, self.in_features, self.backend)))

    def _handed_out(self, array):
        """What users receive: a fast path's reused buffer would be overwritten by the
        next call, so they get a copy of it."""
        return array.copy() if self.backend.fast else array

    def config(self) -> dict:
        """A JSON-friendly description from which the module can be rebuilt."""
        return {"type": type(self).__name__}


class Dense(Module):
    """Fully connected layer: y = act(x @ W + b).

    x: (batch, in_features), W: (in_features, out_features) as TensorFlow's kernel
    (PyTorch's Linear stores the transpose), b: (out_features,), y: (batch, out_features).

    Forward keeps x and y; backward, with dz = act'(z) * dy computed from y, writes
    dW = x^T dz and db = sum_batch dz, and returns dx = dz W^T (unless not needed).

    activation: "identity" (default), "relu", "leaky_relu", "sigmoid", "tanh", or an
                activation object such as ``LeakyReLU(0.1)``
    init:       weight initialiser name or function (default "glorot_uniform")
    bias_init:  bias initialiser (default "zeros"; the tutorial uses "glorot_uniform",
                which on a 1-D bias of length n draws U(+-sqrt(3/n)))
    alpha:      slope for z < 0 when activation is "leaky_relu" (default 0.2)
    weight_decay: lambda >= 0 of an L2 term on the weights (not the bias) added to the
                objective: R = lambda/2 * sum(W^2) (TensorFlow's ``l2_loss``), so backward
                adds dR/dW = lambda W to dW. It is a term of the loss (it shows in
                ``penalty()`` and in the reported loss), not an optimizer rule.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation="identity",
        init="glorot_uniform",
        bias_init="zeros",
        alpha: float | None = None,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        from nanoae.activations import resolve_activation  # noqa: PLC0415 (cycle)
        from nanoae.validation import non_negative_float  # noqa: PLC0415

        self.in_features = positive_int(in_features, "in_features")
        self.out_features = positive_int(out_features, "out_features")
        self.activation = resolve_activation(activation, alpha)
        get_initializer(init)  # fail now, not at build time, on a bad name
        get_initializer(bias_init)
        self.init = init
        self.bias_init = bias_init
        self.weight_decay = non_negative_float(weight_decay, "weight_decay")
        self.weights = None
        self.bias = None
        self.grad_weights = None
        self.grad_bias = None
        self._input = None
        self._output = None
        self._workspace: dict = {}

    def parameter_specs(self, prefix: str = "") -> list[ParamSpec]:
        current_weights = current_bias = None
        if self.weights is not None:  # already built: carry the values over
            current_weights = self.backend.to_host(self.weights).copy()
            current_bias = self.backend.to_host(self.bias).copy()
        return [
            ParamSpec(prefix + "weights", (self.in_features, self.out_features), self.init, current_weights),
            ParamSpec(prefix + "bias", (self.out_features,), self.bias_init, current_bias),
        ]

    def bind(self, arena: ParameterArena, prefix: str = "") -> None:
        super().bind(arena, prefix)
        self.weights = arena.views[prefix + "weights"]
        self.bias = arena.views[prefix + "bias"]
        self.grad_weights = arena.grad_views[prefix + "weights"]
        self.grad_bias = arena.grad_views[prefix + "bias"]
        self._workspace = {}

    def forward(self, x):
        """x: (batch, in_features) -> y: (batch, out_features); keeps x and y."""
        activation = self.activation
        self._input = x
        self._output = self.backend.ops.dense_forward(
            x, self.weights, self.bias, activation.name, activation.alpha, self._workspace
        )
        return self._output

    def backward(self, grad_output, need_input_grad: bool = True):
        """grad_output: (batch, out_features) -> dx: (batch, in_features) or None."""
        if self._output is None:
            raise RuntimeError("Dense.backward called before forward")
        activation = self.activation
        grad_input = self.backend.ops.dense_backward(
            grad_output,
            self._input,
            self._output,
            self.weights,
            activation.name,
            activation.alpha,
            self.grad_weights,
            self.grad_bias,
            need_input_grad,
            self._workspace,
        )
        if self.weight_decay:
            self.backend.ops.l2_penalty_grad(self.weights, self.grad_weights, self.weight_decay, self._workspace)
        return grad_input

    def penalty(self):
        """lambda/2 * sum(W^2) when weight_decay is set, else 0.0."""
        if not self.weight_decay or self.weights is None:
            return 0.0
        return self.backend.ops.l2_penalty(self.weights, self.weight_decay)

    def config(self) -> dict:
        return {
            "type": "Dense",
            "in_features": self.in_features,
            "out_features": self.out_features,
            "activation": self.activation.name,
            "alpha": self.activation.alpha,
            "init": initializer_name(self.init),
            "bias_init": initializer_name(self.bias_init),
            **({"weight_decay": self.weight_decay} if self.weight_decay else {}),
        }

    def __repr__(self) -> str:
        return f"Dense({self.in_features}, {self.out_features}, activation={self.activation.name!r})"
