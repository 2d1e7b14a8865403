"""The flat parameter arena: every parameter of a model in one contiguous buffer.

Each layer's weights and bias are *views* into ``arena.values``; their gradients are
views into ``arena.grads``, a buffer of the same shape. Consequences:

* an optimizer step is one pass over two or three flat arrays (one kernel on a GPU);
* a checkpoint is a handful of arrays;
* a data-parallel all-reduce would be one call on ``arena.grads``.

Each tensor starts at a multiple of :data:`ALIGNMENT` elements (64 bytes in float32)
from a base that is itself on a 64-byte boundary (NumPy backends allocate through
:func:`aligned_empty`),
so every view starts on a cache line. The padding between tensors is zero in
``values`` and ``grads``; every optimizer maps a zero gradient on a zero weight to a
zero update, so the padding stays zero.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from nanoae.init import get_initializer

ALIGNMENT = 16
BYTE_ALIGNMENT = 64  # a cache line, one AVX-512 register


def aligned_empty(shape, dtype, zeroed: bool = False) -> np.ndarray:
    """A C-ordered NumPy array of ``shape`` whose first element sits on a 64-byte boundary.

    A view into a buffer 64 bytes longer than needed. NumPy's own allocations start
    16 bytes into a cache line on glibc, and OpenBLAS writes a small product (the
    tutorial's 128-wide layers at batch 64) 1.2-1.6x faster into an output that starts
    on a cache line, with the same bits (benchmarks/matmul_shapes.py)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    raw = (np.zeros if zeroed else np.empty)(count * dtype.itemsize + BYTE_ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % BYTE_ALIGNMENT
    return raw[start : start + count * dtype.itemsize].view(dtype).reshape(shape)


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


def _human_bytes(count: int) -> str:
    """1536 -> "1.5 KiB"; binary units, as memory is counted."""
    value = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _physical_memory() -> int | None:
    """The host's physical memory in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


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
        self.values, self.grads = self._allocate(backend)
        self.views = self._make_views(self.values)
        self.grad_views = self._make_views(self.grads)

    def _largest(self) -> str:
        spec = max(self.specs, key=lambda spec: spec.size, default=None)
        return f"the largest tensor is {spec.name!r} with shape {tuple(spec.shape)}" if spec else "no tensors"

    def _allocate(self, backend):
        """(values, grads), zeroed; a MemoryError that names the size when they cannot fit.

        Checked against the host's physical memory first (NumPy only): calloc may
        promise far more than exists, and the initializer would then die writing it."""
        itemsize = np.dtype(backend.dtype).itemsize
        needed = 2 * self.size * itemsize
        physical = _physical_memory() if backend.name == "numpy" else None
        asked = (
            f"{self.size:,} {np.dtype(backend.dtype).name} values ({_human_bytes(self.size * itemsize)}) "
            f"and as many gradients, {_human_bytes(needed)} ({needed:,} bytes) in all; {self._largest()}"
        )
        if physical is not None and needed > physical:
            raise MemoryError(
                f"cannot allocate the model's parameters: {asked}, more than this machine's "
                f"{_human_bytes(physical)} of memory; use smaller layers"
            )
        try:
            return backend.zeros((self.size,)), backend.zeros((self.size,))
        except MemoryError:
            raise MemoryError(
                f"cannot allocate the model's parameters: {asked}; the memory is not available; "
                "use smaller layers or free memory"
            ) from None

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
                try:
                    host = np.asarray(get_initializer(spec.initializer)(tuple(spec.shape), rng))
                except MemoryError:
                    raise MemoryError(
                        f"cannot draw the initial values of {spec.name!r} with shape {tuple(spec.shape)}: "
                        f"{_human_bytes(spec.size * 8)} of float64 on the host are not available; "
                        "use smaller layers or free memory"
                    ) from None
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
