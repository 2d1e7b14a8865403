"""The Dense layer: a fully connected layer with its activation fused in.

Like every :class:`~nanoae.module.Module`, a layer declares its parameters and is
bound to views into a model-wide :class:`~nanoae.params.ParameterArena`.
"""

from __future__ import annotations

from nanoae.activations import resolve_activation
from nanoae.init import get_initializer, initializer_name
from nanoae.module import Module
from nanoae.params import ParameterArena, ParamSpec
from nanoae.validation import non_negative_float, positive_int


class Dense(Module):
    """Fully connected layer: y = act(x @ W + b).

    x: (batch, in_features), W: (in_features, out_features) as TensorFlow's kernel
    (PyTorch's Linear stores the transpose), b: (out_features,), y: (batch, out_features).

    Forward keeps x and y; backward, with dz = act'(z) * dy computed from y, writes
    dW = x^T dz and db = sum_batch dz, and returns dx = dz W^T (unless not needed).

    activation: "identity" (default), "relu", "leaky_relu", "sigmoid", "tanh", or an
                activation object such as ``LeakyReLU(0.1)``
    init:       weight initializer name or function (default "glorot_uniform")
    bias_init:  bias initializer (default "zeros"; the tutorial uses "glorot_uniform",
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
        return self.backward_in_chain(grad_output, need_input_grad, grad_is_slope=False)

    def backward_in_chain(self, grad_output, need_input_grad: bool, grad_is_slope: bool, below=None):
        """backward inside a chain of Dense layers (see ``OpsTable.dense_backward_chain``);
        with grad_is_slope False and no ``below`` it is the plain backward.

        grad_is_slope: grad_output is already this layer's dz (the layer above applied
        the slope). below: the ReLU Dense layer whose output is this layer's input, or
        None; the returned gradient is then already that layer's dz.
        """
        if self._output is None:
            raise RuntimeError("Dense.backward called before forward")
        ops, activation = self.backend.ops, self.activation
        arguments = (
            grad_output, self._input, self._output, self.weights, activation.name, activation.alpha,
            self.grad_weights, self.grad_bias, need_input_grad, self._workspace,
        )  # fmt: skip
        if grad_is_slope or below is not None:
            grad_input = ops.dense_backward_chain(*arguments, grad_is_slope, None if below is None else (below._output, below._workspace))
        else:
            grad_input = ops.dense_backward(*arguments)
        if self.weight_decay:
            ops.l2_penalty_grad(self.weights, self.grad_weights, self.weight_decay, self._workspace)
        return grad_input

    def penalty(self):
        """lambda/2 * sum(W^2) when weight_decay is set, else 0.0."""
        if not self.weight_decay or self.weights is None:
            return 0.0
        return self.backend.ops.l2_penalty(self.weights, self.weight_decay)

    def config(self) -> dict:
        return {
            "type": type(self).__name__,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "activation": self.activation.name,
            "alpha": self.activation.alpha,
            "init": initializer_name(self.init),
            "bias_init": initializer_name(self.bias_init),
            **({"weight_decay": self.weight_decay} if self.weight_decay else {}),
        }

    @classmethod
    def from_config(cls, config: dict, **build_options) -> "Dense":
        # alpha is stored for every activation but only leaky_relu takes one
        alpha = config.get("alpha") if config.get("activation") == "leaky_relu" else None
        return cls(
            config["in_features"],
            config["out_features"],
            config.get("activation", "identity"),
            init=config.get("init", "glorot_uniform"),
            bias_init=config.get("bias_init", "zeros"),
            alpha=alpha,
            weight_decay=config.get("weight_decay", 0.0),
        )

    def __repr__(self) -> str:
        return f"Dense({self.in_features}, {self.out_features}, activation={self.activation.name!r})"
