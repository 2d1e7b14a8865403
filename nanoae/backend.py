"""Which array library runs the math: NumPy on the CPU or CuPy on a GPU.

A :class:`Backend` bundles four things the rest of nanoae needs and nothing else:

* ``xp``     the array module (``numpy`` or ``cupy``);
* ``ops``    the table of math functions (see :mod:`nanoae.ops`), reference or fast;
* ``dtype``  the floating type of parameters and activations (float32 by default);
* explicit host <-> device copies (:meth:`Backend.asarray`, :meth:`Backend.to_host`).

Layers, models and the training loop only ever talk to a backend, so the same model
code runs on either library. Random numbers are drawn on the host with one seeded
NumPy generator per model (:func:`make_rng`), which makes runs reproducible across
backends and makes the generator's state easy to checkpoint.

The backend is chosen by argument or by ``$NANOAE_BACKEND``: ``"numpy"``, ``"cupy"`` or
``"auto"`` (CuPy when a GPU is usable, else NumPy).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from nanoae.ops import REFERENCE_TABLE, OpsTable, load_ops
from nanoae.params import aligned_empty

BACKEND_NAMES = ("numpy", "cupy", "auto")
_DTYPES = {"float32": np.float32, "float64": np.float64}

_CUPY_INSTALL_HINT = (
    "install the CuPy build that matches your CUDA toolkit, e.g. "
    "`pip install 'nanoae[gpu]'` (cupy-cuda12x) or `pip install cupy-cuda13x`"
)


class BackendUnavailable(RuntimeError):
    """Raised when the requested array library cannot run here."""


def _probe_cupy() -> tuple[ModuleType | None, str]:
    """Import CuPy and run one tiny kernel; return (module, "") or (None, why not)."""
    try:
        import cupy  # noqa: PLC0415 (optional dependency)
    except ImportError as exc:
        return None, f"CuPy is not installed ({exc}); {_CUPY_INSTALL_HINT}"
    except Exception as exc:  # a broken CUDA install can raise anything on import
        return None, f"CuPy failed to import: {exc!r}; {_CUPY_INSTALL_HINT}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return None, f"CuPy is installed but cannot talk to a GPU driver: {exc!r}"
    if count < 1:
        return None, "CuPy is installed but no CUDA GPU is visible"
    try:
        # A real kernel launch catches toolkit/driver mismatches that import does not.
        float((cupy.arange(4, dtype=cupy.float32) * 2).sum())
    except Exception as exc:
        return None, f"CuPy is installed but a test kernel failed on the GPU: {exc!r}"
    return cupy, ""


def cupy_status() -> tuple[bool, str]:
    """(True, "") when CuPy can run here, else (False, the reason)."""
    module, why = _probe_cupy()
    return module is not None, why


@dataclass(frozen=True)
class Backend:
    """An array library, its math table and a floating dtype.

    Build one with :func:`get_backend`; it is immutable and cheap to share.
    """

    name: str
    xp: ModuleType
    ops: OpsTable
    dtype: Any
    fast: bool = False

    # ---- host <-> device -------------------------------------------------------
    def asarray(self, array, dtype=None):
        """Copy host data to this backend's device (no copy when already there)."""
        return self.xp.asarray(array, dtype=dtype)

    def to_host(self, array) -> np.ndarray:
        """Return a NumPy copy of a device array (a no-op view for NumPy arrays)."""
        if self.name == "cupy":
            return self.xp.asnumpy(array)
        return np.asarray(array)

    # ---- allocation ------------------------------------------------------------
    def zeros(self, shape, dtype=None):
        """Zeros; on NumPy starting on a 64-byte boundary (the arena and optimizer state:
        OpenBLAS writes small products faster there, see :func:`nanoae.params.aligned_empty`)."""
        if self.name == "numpy":
            return aligned_empty(shape, dtype or self.dtype, zeroed=True)
        return self.xp.zeros(shape, dtype=dtype or self.dtype)

    def empty(self, shape, dtype=None):
        return self.xp.empty(shape, dtype=dtype or self.dtype)

    def with_dtype(self, dtype) -> "Backend":
        """The same library and ops with another floating dtype (e.g. float64 checks)."""
        return Backend(self.name, self.xp, self.ops, _resolve_dtype(dtype), self.fast)

    def synchronize(self) -> None:
        """Wait for all queued device work, on every stream (a no-op on NumPy)."""
        if self.name == "cupy":
            self.xp.cuda.Device().synchronize()

    def __repr__(self) -> str:
        return f"Backend(name={self.name!r}, dtype={np.dtype(self.dtype).name}, ops={self.ops.name!r})"


def _resolve_dtype(dtype) -> Any:
    if dtype is None:
        return np.float32
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}: use 'float32' (default) or 'float64'")
        return _DTYPES[dtype]
    resolved = np.dtype(dtype).type
    if resolved not in (np.float32, np.float64):
        raise ValueError(
            f"nanoae computes in float32 or float64, not {np.dtype(dtype).name}; "
            "pass dtype='float32' (default) or dtype='float64'"
        )
    return resolved


def get_backend(
    name: str | Backend | None = None,
    dtype=None,
    fast: bool | None = None,
    kernels: str = "auto",
    allow_tf32: bool = False,
    allow_bf16: bool = False,
) -> Backend:
    """Return a :class:`Backend`.

    name:  "numpy", "cupy" or "auto"; None reads ``$NANOAE_BACKEND`` (default "auto").
           A Backend passes through (with ``dtype`` applied when given).
    dtype: "float32" (default) or "float64".
    fast:  use the fast ops for this library when they exist; False forces the
           readable reference ops; None means "fast when available".
    kernels: for the fast CPU path, "numba", "numpy" or "auto" (Numba when installed).
    allow_tf32: on CuPy, let cuBLAS run float32 matmuls on TF32 tensor cores (faster,
           ~10 mantissa bits). Off by default: float32 means float32. CuPy keeps this
           switch per process, so the last CuPy backend made sets it for every model.
    allow_bf16: on CuPy, let nanoae's own cuBLAS and cuBLASLt calls run float32 matmuls on
           bfloat16 tensor cores (inputs rounded to 8 mantissa bits, sums in float32;
           CUBLAS_COMPUTE_32F_FAST_16BF). Off by default; per process, like allow_tf32;
           not with allow_tf32. ``cupy.matmul`` (the path without direct cuBLAS) ignores it.
    """
    if allow_tf32 and allow_bf16:
        raise ValueError("allow_tf32 and allow_bf16 are two different precisions: ask for one of them")
    if isinstance(name, Backend):
        return name if dtype is None else name.with_dtype(dtype)
    requested = name if name is not None else os.environ.get("NANOAE_BACKEND", "auto")
    requested = str(requested).strip().lower()
    if requested not in BACKEND_NAMES:
        raise ValueError(
            f"unknown backend {requested!r}: choose one of {', '.join(BACKEND_NAMES)} "
            "(by argument or the NANOAE_BACKEND environment variable)"
        )
    resolved_dtype = _resolve_dtype(dtype)

    if requested in ("cupy", "auto"):
        cupy, why = _probe_cupy()
        if cupy is None:
            if requested == "cupy":
                raise BackendUnavailable(f"backend 'cupy' was requested but cannot run: {why}")
        else:
            _set_tf32(cupy, allow_tf32)
            from nanoae.ops.gpu_cublas import set_bfloat16  # noqa: PLC0415 (GPU only)

            set_bfloat16(allow_bf16)
            ops = load_ops("cupy", fast)
            return Backend("cupy", cupy, ops, resolved_dtype, ops is not REFERENCE_TABLE)

    ops = load_ops("numpy", fast, kernels)
    return Backend("numpy", np, ops, resolved_dtype, ops is not REFERENCE_TABLE)


def _set_tf32(cupy, allow: bool) -> None:
    """Choose cuBLAS's float32 compute type: TF32 tensor cores, or plain float32.

    CuPy's switch is ``cupy._core._routines_linalg.set_compute_type`` (the same one its
    ``CUPY_TF32`` variable sets): COMPUTE_TYPE_TF32 gives cuBLAS CUBLAS_COMPUTE_32F_FAST_TF32,
    COMPUTE_TYPE_DEFAULT gives CUBLAS_COMPUTE_32F.
    """
    try:
        from cupy._core import _routines_linalg as linalg  # noqa: PLC0415 (CuPy's switch)

        switch, tf32, default = linalg.set_compute_type, linalg.COMPUTE_TYPE_TF32, linalg.COMPUTE_TYPE_DEFAULT
    except (ImportError, AttributeError) as exc:
        if allow:
            raise BackendUnavailable(f"this CuPy has no compute-type switch, so TF32 cannot be enabled ({exc})") from exc
        return
    switch(np.float32, tf32 if allow else default)


def make_rng(seed=None) -> np.random.Generator:
    """One seeded host generator (PCG64). Same seed, same numbers, on every backend."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None and not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if seed is not None and seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return np.random.default_rng(seed)
