"""Losses: a scalar from (prediction, target) and its gradient in one pass.

Every loss is a mean over all elements (batch times features), so its gradient
carries a 1/N. ``loss.forward(prediction, target)`` returns the value and keeps the
gradient; ``loss.backward()`` returns it (the chain-rule start, dL/dprediction).

* :class:`MSE`           L = mean((p - t)^2)
* :class:`BCE`           L = -mean(t log p + (1 - t) log(1 - p)), p clipped to [eps, 1 - eps]
* :class:`BCEWithLogits` the same on logits z with p = sigmoid(z), stable for any z
* :class:`SoftmaxCrossEntropy` multi-class cross-entropy on logits, integer labels
  (a mean over examples, not elements)

The VAE's KL term is not a loss of (prediction, target): it lives in the sampling layer
(:class:`nanoae.vae.GaussianSample`) as a penalty on the code.
"""

from __future__ import annotations

from nanoae.backend import get_backend
from nanoae.validation import check_same_shape, fraction, register_class

# name -> Loss subclass, in definition order; filled by Loss.__init_subclass__
LOSSES: dict[str, type] = {}


class Loss:
    """Base class: subclasses implement ``_value`` and ``_value_and_grad`` via the ops table.

    A subclass that sets its own ``name`` registers under it, so :func:`get_loss` and
    :func:`loss_from_config` find it.
    """

    name = "loss"

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:  # a subclass that keeps its parent's name does not replace it
            register_class(LOSSES, cls.name, cls, "loss")

    def __init__(self) -> None:
        self.backend = None
        self._grad = None
        self._workspace: dict = {}

    def bind(self, backend) -> "Loss":
        self.backend = backend
        self._workspace = {}
        return self

    def _ops_for(self, prediction):
        if self.backend is None:  # a loss used on its own takes its backend from the data
            library = "cupy" if type(prediction).__module__.startswith("cupy") else "numpy"
            self.bind(get_backend(library, dtype=prediction.dtype))
        return self.backend.ops

    def _checked(self, prediction, target):
        if not hasattr(target, "shape"):
            raise TypeError(f"target must be an array, got {type(target).__name__}")
        check_same_shape(target, prediction.shape)
        self.check_target(target)
        return prediction, target

    def check_target(self, target) -> None:
        """Raise ValueError for targets this loss cannot score (once per dataset, where
        targets enter from the user: ``train_step``, ``fit``, ``evaluate``; never inside
        the training loop). Any finite target suits the base class and MSE."""

    def __call__(self, prediction, target):
        """The loss value only (no gradient kept): a 0-d array."""
        prediction, target = self._checked(prediction, target)
        return self._value(self._ops_for(prediction), prediction, target)

    def forward(self, prediction, target):
        """Value of the loss; keeps dL/dprediction for :meth:`backward`."""
        value, self._grad = self.loss_and_grad(prediction, target)
        return value

    def backward(self, grad_output=1.0):
        """dL/dprediction, scaled by the upstream gradient (1 for a final loss)."""
        if self._grad is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return self._grad if grad_output == 1.0 else self._grad * grad_output

    def loss_and_grad(self, prediction, target):
        """(value: 0-d array, dL/dprediction: same shape as prediction)."""
        ops = self._ops_for(prediction)
        return self._value_and_grad(ops, prediction, target)

    def config(self) -> dict:
        return {"name": self.name}

    @classmethod
    def from_config(cls, config: dict) -> "Loss":
        """The loss described by ``config`` (the output of :meth:`config`)."""
        return cls(**{key: value for key, value in config.items() if key != "name"})

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def check_probability_targets(target, loss_name: str) -> None:
    """ValueError naming the range found, unless every target lies in [0, 1].

    Cross-entropy reads targets as probabilities; outside [0, 1] it has no minimum at
    the target and training silently drifts (a 0..255 image, for one)."""
    if getattr(target, "size", 0) == 0:
        return
    lowest, highest = float(target.min()), float(target.max())
    if not (lowest >= 0.0 and highest <= 1.0):
        raise ValueError(
            f"{loss_name} needs targets in [0, 1] (probabilities), but they range over [{lowest:g}, {highest:g}]; "
            "scale the data into [0, 1] (e.g. divide 8-bit pixels by 255) or use loss='mse'"
        )


class MSE(Loss):
    """Mean squared error, L = mean((p - t)^2); dL/dp = 2 (p - t) / N."""

    name = "mse"

    def _value(self, ops, prediction, target):
        return ops.mse_loss(prediction, target)

    def _value_and_grad(self, ops, prediction, target):
        return ops.mse_loss_and_grad(prediction, target, self._workspace)


class BCE(Loss):
    """Binary cross-entropy on probabilities p in [0, 1].

    p is clipped to [eps, 1 - eps] (eps = 1e-7 by default, as Keras) so that log stays
    finite; where the clip is active the gradient is 0. Prefer :class:`BCEWithLogits`
    after a linear output layer: it is exact and stable everywhere.
    """

    name = "bce"

    def __init__(self, eps: float = 1e-7) -> None:
        super().__init__()
        self.eps = fraction(eps, "eps", allow_zero=False)

    def check_target(self, target) -> None:
        check_probability_targets(target, "the BCE loss")

    def _value(self, ops, prediction, target):
        return ops.bce_loss(prediction, target, self.eps)

    def _value_and_grad(self, ops, prediction, target):
        return ops.bce_loss_and_grad(prediction, target, self.eps, self._workspace)

    def config(self) -> dict:
        return {"name": self.name, "eps": self.eps}


class BCEWithLogits(Loss):
    """Binary cross-entropy on logits z: L = mean(max(z, 0) - z t + log(1 + e^-|z|)).

    dL/dz = (sigmoid(z) - t) / N.
    """

    name = "bce_logits"

    def check_target(self, target) -> None:
        check_probability_targets(target, "the BCE-on-logits loss")

    def _value(self, ops, prediction, target):
        return ops.bce_logits_loss(prediction, target)

    def _value_and_grad(self, ops, prediction, target):
        return ops.bce_logits_loss_and_grad(prediction, target, self._workspace)


class SoftmaxCrossEntropy(Loss):
    """Cross-entropy of softmax(z) against integer class labels, on logits z.

    L = mean_b [logsumexp_k(z_bk) - z_b,y_b]  (log-sum-exp: stable for any logits)
    dL/dz = (softmax(z) - onehot(y)) / batch.
    prediction: (batch, classes) logits; target: (batch,) integer labels in [0, classes).
    The mean is over examples only (the classes of one example form one distribution).
    """

    name = "softmax_cross_entropy"

    def _checked(self, prediction, target):
        if not hasattr(target, "shape") or not hasattr(target, "dtype"):
            raise TypeError(f"labels must be an integer array, got {type(target).__name__}")
        if target.dtype.kind not in "iu":
            raise TypeError(f"labels must be integers (class indices), got dtype {target.dtype}")
        if tuple(target.shape) != (prediction.shape[0],):
            raise ValueError(
                f"labels have shape {tuple(target.shape)} but the logits {tuple(prediction.shape)} need ({prediction.shape[0]},)"
            )
        return prediction, target

    def _value(self, ops, prediction, target):
        return ops.softmax_cross_entropy_loss(prediction, target)

    def _value_and_grad(self, ops, prediction, target):
        return ops.softmax_cross_entropy_loss_and_grad(prediction, target, self._workspace)


def get_loss(spec) -> Loss:
    """A Loss from a name ("mse", "bce", "bce_logits") or a Loss instance."""
    if isinstance(spec, Loss):
        return spec
    if isinstance(spec, str):
        for name in (spec, spec.lower()):  # "MSE" finds mse; a user's "MyLoss" finds itself
            if name in LOSSES:
                return LOSSES[name]()
    raise ValueError(f"unknown loss {spec!r}; choose one of {', '.join(LOSSES)} or pass a Loss object")


def loss_from_config(config: dict) -> Loss:
    """Rebuild a loss from :meth:`Loss.config` output, e.g. {"name": "bce", "eps": 1e-7}."""
    name = config.get("name") if isinstance(config, dict) else None
    if name not in LOSSES:
        raise ValueError(f"cannot rebuild a loss named {name!r} from its config; known losses: {', '.join(LOSSES)}")
    return LOSSES[name].from_config(config)
