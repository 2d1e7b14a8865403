"""The flat parameter arena: every parameter of a model in one contiguous buffer.

Each layer's weights and bias are *views* into ``arena.values``; their gradients are
views into ``arena.grads``, a buffer of the same shape. Consequences:

* an optimizer step is one pass over two or three flat arrays (one kernel on a GPU);
* a checkpoint is a handful of arrays;
* a data-parallel all-reduce would be one call on ``arena.grads``.

Each tensor starts at a multiple of :data:`ALIGNMENT` elements (64 bytes in float32),
so every view is aligned for SIMD loads. The padding between tensors is zero in
``values`` and ``grads``; every optimizer maps a zero gradient on a zero weight to a
zero update, so the padding stays zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nanoae.init import get_initializer

ALIGNMENT = 16


@dataclass(frozen=True)
class ParamSpec:
    """What a layer declares about one parameter tensor.

    name:        dotted path, e.g. "encoder.0.weights"
    shape:       tensor shape, e.g. (784, 256)
    initializer: a name or function init(shape, rng) -> array
    value:       a host array to start from instead of drawing (used when an already
                 built module is moved into a bigger model)
    """

    name: str
    shape: tuple
    initializer: Any = "zeros"
    value: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def _aligned(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT


class ParameterArena:
    """Contiguous storage for a model's parameters and their gradients.

    values: flat (total,) array of the backend's dtype
    grads:  flat (total,) array, same shape and dtype
    views / grad_views: name -> shaped view into values / grads
    layout: name -> (offset, shape), enough to rebuild the views from a checkpoint
    """

    def __init__(self, specs: list[ParamSpec], backend):
        names = [spec.name for spec in specs]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate parameter names in one model: {duplicates}")
        self.backend = backend
        self.specs = list(specs)
        self.layout: dict[str, tuple[int, tuple]] = {}
        offset = 0
        for spec in self.specs:
            offset = _aligned(offset)
            self.layout[spec.name] = (offset, tuple(int(d) for d in spec.shape))
            offset += spec.size
        self.size = _aligned(offset)
        self.values = backend.zeros((self.size,))
        self.grads = backend.zeros((self.size,))
        self.views = self._make_views(self.values)
        self.grad_views = self._make_views(self.grads)

    def _make_views(self, flat) -> dict:
        views = {}
        for name, (offset, shape) in self.layout.items():
            count = int(np.prod(shape, dtype=np.int64))
            views[name] = flat[offset : offset + count].reshape(shape)
        return views

    def initialize(self, rng: np.random.Generator) -> None:
        """Fill every tensor: from its spec's value if given, else by its initializer.

        Tensors are drawn in spec order from the one generator, in float64 on the
        host, then cast to the arena's dtype.
        """
        for spec in self.specs:
            if spec.value is not None:
                host = np.asarray(spec.value)
                if host.shape != tuple(spec.shape):
                    raise ValueError(
                        f"parameter {spec.name!r}: starting value has shape {host.shape}, "
                        f"expected {tuple(spec.shape)}"
                    )
            else:
                host = np.asarray(get_initializer(spec.initializer)(tuple(spec.shape), rng))
                if host.shape != tuple(spec.shape):
                    raise ValueError(
                        f"parameter {spec.name!r}: its initializer returned shape {host.shape}, "
                        f"expected {tuple(spec.shape)}"
                    )
            self.views[spec.name][...] = self.backend.asarray(host.astype(self.backend.dtype))

    @property
    def count(self) -> int:
        """Number of real parameters (padding excluded)."""
        return sum(spec.size for spec in self.specs)

    def __repr__(self) -> str:
        return f"ParameterArena({len(self.specs)} tensors, {self.count} parameters, dtype={np.dtype(self.backend.dtype).name})"
