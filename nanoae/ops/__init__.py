"""The math of nanoae, as interchangeable tables of functions.

* :mod:`nanoae.ops.reference` -- the math as plain array code that reads like a
  textbook; runs on NumPy or CuPy.
* :mod:`nanoae.ops.table` -- :class:`OpsTable`, the calling convention every table
  shares; the plain class is the reference table.
* :mod:`nanoae.ops.cpu` (with :mod:`~nanoae.ops.kernels_numba` or
  :mod:`~nanoae.ops.kernels_numpy`) and :mod:`nanoae.ops.gpu` (with
  :mod:`~nanoae.ops.gpu_kernels`, :mod:`~nanoae.ops.gpu_cublas` and
  :mod:`~nanoae.ops.gpu_graph`) -- the fast tables: fused kernels and reused buffers,
  tested to compute the reference functions.
* :mod:`nanoae.ops.codes` -- the activation codes the fused kernels share.

A :class:`nanoae.backend.Backend` holds one table; layers call only that table, so no
layer, model or training loop ever branches on the array library.
"""

from __future__ import annotations

from nanoae.ops import cpu, gpu
from nanoae.ops.table import OPS_API, OpsTable

#: The reference math in the table calling convention.
REFERENCE_TABLE = OpsTable()

__all__ = ["OPS_API", "REFERENCE_TABLE", "OpsTable", "load_ops"]


def load_ops(library: str, fast: bool | None, kernels: str = "auto") -> OpsTable:
    """The ops table for ``library`` ("numpy" or "cupy"); its ``name`` says which it is.

    fast=False: the reference table. fast=None or True: the library's fast table
    (for CuPy, :mod:`nanoae.ops.gpu`; for NumPy, :mod:`nanoae.ops.cpu` on Numba kernels
    when Numba is installed, else on NumPy kernels; ``$NANOAE_NUMBA=0`` or
    kernels="numpy" forces the latter).
    """
    if fast is False:
        return REFERENCE_TABLE
    return gpu.load() if library == "cupy" else cpu.load(kernels)
