"""The Module base class, and building modules from their configs.

A :class:`Module` has ``forward(x)`` and ``backward(grad_output, need_input_grad)``.
Forward keeps what backward needs; backward writes parameter gradients into the
module's gradient views and returns the gradient with respect to its input (or
``None`` when the caller does not need it: the first layer of a model).

Parameters are not owned by modules: a module declares them (:meth:`Module.parameter_specs`)
and is *bound* to views into a model-wide :class:`~nanoae.params.ParameterArena`.
Calling :meth:`Module.build` on a module gives it an arena of its own; a model builds
one arena for all its layers.

Rebuilding from a config
------------------------
``module.config()`` is a JSON-friendly dict whose ``"type"`` is the class name. Every
subclass of Module registers itself under its class name when it is defined, and
rebuilds itself in its ``from_config`` classmethod; :func:`module_from_config` looks
the type up in that registry. So this module imports none of the classes built on it,
and a user's own Module subclass is rebuilt (from a checkpoint, say) like nanoae's.
Importing ``nanoae`` imports every module that defines a Module, Loss or Optimizer, so
the registries are then complete. A class from outside nanoae may not take the name of
one of nanoae's own (it would change how every saved nanoae model rebuilds).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from nanoae.backend import Backend, get_backend, make_rng
from nanoae.params import ParameterArena, ParamSpec
from nanoae.validation import as_batch, register_class

# class name -> Module subclass; filled by Module.__init_subclass__
_MODULE_TYPES: dict[str, type] = {}


def sum_penalties(terms):
    """Add penalty terms, skipping the Python 0.0 of modules without one (so a model
    with no regularizer returns exactly 0.0 and its loss is left untouched)."""
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
    # ready(module), called by a container's backward (Sequential, Autoencoder) right after
    # a child's backward has written all of that child's parameter gradients, which nothing
    # later in the pass changes. Set on every module of a model by a data-parallel train()
    # that starts each bucket's allreduce as soon as its gradients are final; None (one
    # check per layer) otherwise.
    _gradients_ready = None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        # Keyed by class name, as config()["type"] is.
        register_class(_MODULE_TYPES, cls.__name__, cls, "Module")

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
        """Give this module an arena of its own and initialize its parameters.

        backend: "numpy" | "cupy" | "auto" | a Backend (default: $NANOAE_BACKEND or auto)
        dtype:   "float32" (default) or "float64"
        seed:    int for a reproducible initialization (and, in models, batch order)
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

    # ---- regularization terms ------------------------------------------------------
    def penalty(self):
        """The terms this module adds to the training objective, summed (children too).

        Evaluated at the current parameters and the last forward pass: an L2 weight
        penalty (:class:`Dense` with ``weight_decay``), an L1 penalty on activations,
        a VAE's KL term. Returns 0.0 when there are none, else a 0-d array. Each
        module's ``backward`` already adds the gradient of its own term, so
        objective = loss(output, target) + penalty() is what training minimizes.
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

    @classmethod
    def from_config(cls, config: dict, **build_options) -> "Module":
        """The module described by ``config`` (the output of :meth:`config`).

        build_options (backend, dtype, seed, fast) are for models, which build with
        them; layers build as part of a model and ignore them.
        """
        raise TypeError(
            f"{cls.__name__} cannot be rebuilt from a config: give it a from_config classmethod"
        )


def known_module_types() -> list[str]:
    """The config types :func:`module_from_config` can rebuild (those with a
    ``from_config`` of their own, not bases such as Model), sorted."""
    return sorted(name for name, cls in _MODULE_TYPES.items() if cls.from_config.__func__ is not Module.from_config.__func__)


def module_from_config(config: dict, **build_options) -> Module:
    """Rebuild a module from :meth:`Module.config` output.

    The config's ``"type"`` (a class name) picks the class; its ``from_config`` does the
    rest. build_options (backend, dtype, seed, fast) go to the model: an Autoencoder
    builds at once with them; a Sequential stores them for when it builds.
    """
    if not isinstance(config, dict):
        raise TypeError(f"a module config is a dict such as {{'type': 'Dense', ...}}, got {type(config).__name__}")
    kind = config.get("type")
    cls = _MODULE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(
            f"cannot rebuild a module of type {kind!r} from its config; known types: {', '.join(known_module_types())}"
        )
    return cls.from_config(config, **build_options)


def clone_module(module: Module, **build_options) -> Module:
    """An independent copy of a built module: same config, same parameter values, its
    own arena (so training the copy leaves the original untouched).

    build_options (backend, dtype, seed, fast) default to the original's backend and dtype.
    """
    if not module.built:
        return module_from_config(module.config())
    options = {"backend": module.backend, "dtype": module.backend.dtype, **build_options}
    copy = module_from_config(module.config(), **options)  # models that build at once do so with them
    if not copy.built:
        copy.build(**options)
    source = module.parameters()
    for name, view in copy.parameters().items():
        view[...] = copy.backend.asarray(module.backend.to_host(source[name]), dtype=view.dtype)
    return copy


def count_parameters(module: Module) -> int:
    """Number of trainable numbers in a module."""
    return int(sum(np.prod(spec.shape) for spec in module.parameter_specs()))
