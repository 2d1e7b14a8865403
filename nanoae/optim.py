"""Optimizers that update the flat parameter arena in place.

An optimizer is bound to a model's :class:`~nanoae.params.ParameterArena`; its state
(running averages, momentum) lives in flat buffers of the same shape, allocated once.
``step()`` applies one update from ``arena.grads`` to ``arena.values`` through the
backend's ops table: one pass over the arena, no arrays kept between steps.

The exact update of each optimizer is in its docstring and in
:mod:`nanoae.ops.reference`. Three RMSProp conventions exist in the wild and nanoae
names them:

========  ======  ========  ===================  =================
flavor    rho     eps       eps sits              mean square starts
========  ======  ========  ===================  =================
"tf1"     0.9     1e-10     inside the root       at ones
"keras"   0.9     1e-7      inside the root       at zeros
"torch"   0.99    1e-8      outside the root      at zeros
========  ======  ========  ===================  =================
"""

from __future__ import annotations

import numpy as np

from nanoae.validation import choice, fraction, non_negative_float, positive_float, register_class

# name -> Optimizer subclass, in definition order; filled by Optimizer.__init_subclass__
OPTIMIZERS: dict[str, type] = {}


class Optimizer:
    """Base class: hyper-parameters, state buffers over the arena, state_dict.

    A subclass that sets its own ``name`` registers under it, so :func:`get_optimizer`
    and :func:`optimizer_from_config` find it.
    """

    name = "optimizer"

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:  # a subclass that keeps its parent's name does not replace it
            register_class(OPTIMIZERS, cls.name, cls, "optimizer")

    def __init__(self, lr: float) -> None:
        self.lr = positive_float(lr, "learning rate (lr)")
        self.arena = None
        self.state: dict = {}
        self.update_count = 0
        self._workspace: dict = {}

    def bind(self, arena) -> "Optimizer":
        """Allocate state buffers shaped like ``arena.values``."""
        self.arena = arena
        self.state = {name: self._new_buffer(arena, fill) for name, fill in self._state_fills().items()}
        self.update_count = 0
        return self

    def _state_fills(self) -> dict:
        """name -> initial value of each state buffer."""
        return {}

    @staticmethod
    def _new_buffer(arena, fill: float):
        buffer = arena.backend.zeros((arena.size,))
        if fill:
            buffer[...] = fill
        return buffer

    def step(self) -> None:
        """Apply one update to the bound arena from its gradients."""
        if self.arena is None:
            raise RuntimeError(f"{type(self).__name__} is not bound to a model; build the model first")
        self.update_count += 1
        self._update(self.arena.backend.ops, self.arena.values, self.arena.grads)

    def _update(self, ops, params, grads) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """{"steps": int, "<buffer>": array, ...} (arrays are the live buffers)."""
        return {"steps": self.update_count, **self.state}

    def load_state_dict(self, state: dict) -> None:
        if self.arena is None:
            raise RuntimeError(f"{type(self).__name__} is not bound to a model; build the model before loading state")
        for name, buffer in self.state.items():
            if name not in state:
                raise ValueError(f"optimizer state is missing {name!r}")
            if tuple(state[name].shape) != tuple(buffer.shape):
                raise ValueError(
                    f"optimizer state {name!r} has shape {tuple(state[name].shape)}, expected {tuple(buffer.shape)}"
                )
            buffer[...] = self.arena.backend.asarray(state[name], dtype=buffer.dtype)
        self.update_count = int(state.get("steps", 0))
        self._workspace = {}  # a fast path may cache step-dependent values (GPU Adam)

    CONFIG_FIELDS: tuple = ("lr",)

    def config(self) -> dict:
        """name and hyper-parameters: enough to rebuild the optimizer (see CONFIG_FIELDS)."""
        return {"name": self.name, **{field: getattr(self, field) for field in self.CONFIG_FIELDS}}

    @classmethod
    def from_config(cls, config: dict) -> "Optimizer":
        """A new, unbound optimizer with the hyper-parameters of ``config`` (see :meth:`config`)."""
        return cls(**{key: value for key, value in config.items() if key != "name"})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class RMSProp(Optimizer):
    """RMSProp in one of three conventions (``flavor``), with optional momentum.

    tf1 (default; tf.compat.v1.train.RMSPropOptimizer, the tutorial's):
        ms <- ms + (g^2 - ms)(1 - rho),  ms starting at ones
        mom <- momentum * mom + lr g / sqrt(ms + eps);  w <- w - mom
    keras (tf.keras.optimizers.RMSprop):
        ms <- rho ms + (1 - rho) g^2,  ms starting at zeros
        inc = lr g / sqrt(ms + eps);  w <- w - inc  (momentum: mom <- momentum mom + inc; w <- w - mom)
    torch (torch.optim.RMSprop):
        ms <- rho ms + (1 - rho) g^2,  ms starting at zeros
        d = g / (sqrt(ms) + eps);  w <- w - lr d  (momentum: mom <- momentum mom + d; w <- w - lr mom)

    rho and eps default to the flavor's own values (table in the module doc). Note
    torch's default learning rate is 0.01; nanoae's is 0.001 for every flavor.
    """

    name = "rmsprop"
    CONFIG_FIELDS = ("lr", "rho", "eps", "momentum", "flavor")
    FLAVORS = {"tf1": (0.9, 1e-10, 1.0), "keras": (0.9, 1e-7, 0.0), "torch": (0.99, 1e-8, 0.0)}

    def __init__(
        self,
        lr: float = 0.001,
        rho: float | None = None,
        eps: float | None = None,
        momentum: float = 0.0,
        flavor: str = "tf1",
    ) -> None:
        super().__init__(lr)
        self.flavor = choice(flavor, "RMSProp flavor", tuple(self.FLAVORS))
        default_rho, default_eps, self._initial_mean_square = self.FLAVORS[flavor]
        self.rho = fraction(default_rho if rho is None else rho, "rho")
        self.eps = positive_float(default_eps if eps is None else eps, "eps")
        self.momentum = fraction(momentum, "momentum")

    def _state_fills(self) -> dict:
        fills = {"mean_square": self._initial_mean_square}
        if self.momentum:
            fills["momentum"] = 0.0
        return fills

    def _update(self, ops, params, grads) -> None:
        rho = self.rho
        if self.flavor == "tf1":
            # TF1's kernel gets rho as a tensor of the variables' dtype and computes 1 - rho
            # in that dtype: in float32 1 - float32(0.9) = 0.100000024, not float32(0.1) =
            # 0.1000000015. Rounding rho first makes the ops' 1 - rho that same number, and
            # the update bit-for-bit TensorFlow's (tests/oracles/test_optimizers.py).
            rho = float(params.dtype.type(rho))
        ops.rmsprop_update(
            params,
            grads,
            self.state["mean_square"],
            self.state.get("momentum"),
            self.lr,
            rho,
            self.eps,
            self.momentum,
            self.flavor,
            self._workspace,
        )



class SGD(Optimizer):
    """Stochastic gradient descent, torch.optim.SGD's rule (dampening 0).

        g <- g + weight_decay w
        v <- momentum v + g            (v starts at zeros)
        w <- w - lr (g + momentum v)   with nesterov, else w <- w - lr v
    Without momentum: w <- w - lr g.
    """

    name = "sgd"
    CONFIG_FIELDS = ("lr", "momentum", "nesterov", "weight_decay")

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(lr)
        self.momentum = fraction(momentum, "momentum")
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov must be True or False, got {nesterov!r}")
        nesterov = bool(nesterov)
        if nesterov and not self.momentum:
            raise ValueError("nesterov=True needs momentum > 0")
        self.nesterov = nesterov
        self.weight_decay = non_negative_float(weight_decay, "weight_decay")

    def _state_fills(self) -> dict:
        return {"velocity": 0.0} if self.momentum else {}

    def _update(self, ops, params, grads) -> None:
        ops.sgd_update(
            params, grads, self.state.get("velocity"), self.lr, self.momentum, self.nesterov, self.weight_decay, self._workspace
        )



class Adam(Optimizer):
    """Adam with bias correction; weight decay added to the gradient (L2).

    flavor "torch" (default, eps 1e-8):
        m <- m + (1 - b1)(g - m);  v <- b2 v + (1 - b2) g^2
        w <- w - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    flavor "keras" (eps 1e-7):
        m <- m + (g - m)(1 - b1);  v <- v + (g^2 - v)(1 - b2)
        w <- w - lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
    With weight_decay > 0: g <- g + weight_decay w first (see :class:`AdamW` for decoupled).
    """

    name = "adam"
    CONFIG_FIELDS = ("lr", "beta1", "beta2", "eps", "weight_decay", "flavor")
    decoupled = False
    EPS = {"torch": 1e-8, "keras": 1e-7}

    def __init__(
        self,
        lr: float = 0.001,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float | None = None,
        weight_decay: float = 0.0,
        flavor: str = "torch",
    ) -> None:
        super().__init__(lr)
        self.flavor = choice(flavor, "Adam flavor", tuple(self.EPS))
        self.beta1 = fraction(beta1, "beta1")
        self.beta2 = fraction(beta2, "beta2")
        self.eps = positive_float(self.EPS[flavor] if eps is None else eps, "eps")
        self.weight_decay = non_negative_float(weight_decay, "weight_decay")

    def _state_fills(self) -> dict:
        return {"first_moment": 0.0, "second_moment": 0.0}

    def _update(self, ops, params, grads) -> None:
        ops.adam_update(
            params,
            grads,
            self.state["first_moment"],
            self.state["second_moment"],
            self.lr,
            self.beta1,
            self.beta2,
            self.eps,
            self.update_count,
            self.weight_decay,
            self.decoupled,
            self.flavor,
            self._workspace,
        )



class AdamW(Adam):
    """Adam with decoupled weight decay: w <- w (1 - lr weight_decay), then the Adam step.

    Default weight_decay 0.01 (as torch.optim.AdamW). The decay applies to every
    parameter in the arena, biases included.
    """

    name = "adamw"
    decoupled = True

    def __init__(self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999, eps=None, weight_decay: float = 0.01, flavor: str = "torch"):
        super().__init__(lr, beta1, beta2, eps, weight_decay, flavor)


def get_optimizer(spec, **kwargs) -> Optimizer:
    """An Optimizer from a name ("rmsprop", "sgd", "adam", "adamw") and keyword
    arguments, or an Optimizer instance passed through."""
    if isinstance(spec, Optimizer):
        if kwargs:
            raise ValueError("pass options to the optimizer's constructor, not alongside an instance")
        return spec
    if isinstance(spec, str):
        for name in (spec, spec.lower()):  # "Adam" finds adam; a user's "MyOpt" finds itself
            if name in OPTIMIZERS:
                return OPTIMIZERS[name](**kwargs)
    raise ValueError(f"unknown optimizer {spec!r}; choose one of {', '.join(OPTIMIZERS)} or pass an Optimizer")


def optimizer_from_config(config: dict) -> Optimizer:
    """Rebuild an unbound optimizer from :meth:`Optimizer.config` output."""
    name = config.get("name") if isinstance(config, dict) else None
    if name not in OPTIMIZERS:
        raise ValueError(
            f"cannot rebuild an optimizer named {name!r} from its config; known optimizers: {', '.join(OPTIMIZERS)}"
        )
    return OPTIMIZERS[name].from_config(config)
