"""cuBLAS GEMMs through ctypes, for the GPU table's matmuls.

CuPy's own cuBLAS wrappers refuse to run while a stream captures a CUDA graph, and
the GPU table captures whole training steps (:mod:`nanoae.ops.gpu_graph`), so its
matmuls call libcublas directly: :class:`Cublas` binds ``cublasGemmEx`` and keeps a
handle and workspaces of its own. Needs CuPy at run time; imports without it.
"""

from __future__ import annotations

import ctypes
import os
import weakref

import numpy

_CUBLAS_OP_N, _CUBLAS_OP_T = 0, 1
_CUDA_R = {"f": 0, "d": 1}  # cudaDataType: CUDA_R_32F, CUDA_R_64F
_CUBLAS_COMPUTE = {"f": 68, "d": 70, "tf32": 77, "bf16": 75}  # CUBLAS_COMPUTE_32F, _64F, _32F_FAST_TF32, _32F_FAST_16BF
_CUBLAS_GEMM_DEFAULT = -1

# nanoae's own float32 switch for bfloat16 tensor cores (CuPy has none): set by
# get_backend("cupy", allow_bf16=True), read by every direct cuBLAS and cuBLASLt call.
_BFLOAT16 = {"on": False}


def set_bfloat16(on: bool) -> None:
    """Let the direct float32 matmuls run on bfloat16 tensor cores (inputs rounded to
    bfloat16's 8-bit mantissa, sums in float32), or not."""
    _BFLOAT16["on"] = bool(on)


def float32_compute() -> int:
    """The cuBLAS compute type for a float32 matmul now: bfloat16 tensor cores when
    nanoae's switch says so, TF32 when CuPy's compute-type switch does, else plain
    float32 (CUBLAS_COMPUTE_32F)."""
    if _BFLOAT16["on"]:
        return _CUBLAS_COMPUTE["bf16"]
    try:
        from cupy._core import _routines_linalg as linalg  # noqa: PLC0415

        if linalg.get_compute_type(numpy.float32) == linalg.COMPUTE_TYPE_TF32:
            return _CUBLAS_COMPUTE["tf32"]
    except (ImportError, AttributeError):
        pass
    return _CUBLAS_COMPUTE["f"]


def load_mapped_library(prefix: str, fallbacks):
    """The shared library whose file name starts with ``prefix`` that this process has
    already mapped (found in /proc/self/maps: the one CuPy loaded), else the first of
    ``fallbacks`` that loads."""
    candidates = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and os.path.basename(parts[5].strip()).startswith(prefix):
                    candidates.append(parts[5].strip())
    except OSError:
        pass
    errors = []
    for candidate in dict.fromkeys([*candidates, *fallbacks]):
        try:
            return ctypes.CDLL(candidate)
        except OSError as exc:
            errors.append(str(exc))
    raise OSError(f"{prefix.split('.')[0]} not found: " + "; ".join(errors))


def load_cublas(cupy):
    """The libcublas CuPy itself loaded, else one by name."""
    from cupy_backends.cuda.libs import cublas  # noqa: F401, PLC0415 (makes CuPy load libcublas)

    cupy.cuda.device.get_cublas_handle()
    return load_mapped_library("libcublas.so", ["libcublas.so.13", "libcublas.so.12", "libcublas.so"])


def layout_of(array):
    """(leading dimension, transposed) of a 2-D array read as a row-major matrix, or None
    when its strides are neither row-major nor those of a transposed row-major array.
    Works on NumPy and CuPy arrays alike (strides only)."""
    if array.ndim != 2:
        return None
    item = array.itemsize
    rows, cols = array.shape
    first, second = array.strides
    if second == item and first % item == 0 and first // item >= max(1, cols):
        return first // item, False
    if first == item and second % item == 0 and second // item >= max(1, rows):
        return second // item, True
    return None


def _operand(array):
    """(pointer, leading dimension, transposed) of a 2-D array as a row-major matrix, or
    None when its strides are neither row- nor column-major."""
    layout = layout_of(array)
    return None if layout is None else (array.data.ptr, *layout)


class Cublas:
    """cuBLAS GEMMs called through ctypes, on a handle and workspaces of our own.

    CuPy's cuBLAS wrappers refuse to run while a stream is capturing a CUDA graph
    (``cupy_backends.cuda.libs.cublas.setStream`` raises NotImplementedError, CuPy 13
    and 14), although cuBLAS itself supports capture. The training step must be captured
    with its matmuls, so they go to libcublas directly: ``cublasGemmEx`` with the
    coefficients in host memory (captured by value) and a workspace per stream set with
    ``cublasSetWorkspace`` (so cuBLAS never allocates while capturing, and concurrent
    streams never share one). float32 runs CUBLAS_COMPUTE_32F unless CuPy's compute-type
    switch says TF32 (``get_backend("cupy", allow_tf32=True)``) or nanoae's says bfloat16
    (``allow_bf16=True``): :func:`float32_compute`; float64 runs _64F.
    """

    WORKSPACE_BYTES = 32 << 20

    def __init__(self, cupy) -> None:
        self.cp = cupy
        lib = load_cublas(cupy)
        handle_p = ctypes.c_void_p
        lib.cublasCreate_v2.argtypes = [ctypes.POINTER(handle_p)]
        lib.cublasCreate_v2.restype = ctypes.c_int
        lib.cublasSetStream_v2.argtypes = [handle_p, ctypes.c_void_p]
        lib.cublasSetStream_v2.restype = ctypes.c_int
        lib.cublasSetWorkspace_v2.argtypes = [handle_p, ctypes.c_void_p, ctypes.c_size_t]
        lib.cublasSetWorkspace_v2.restype = ctypes.c_int
        c_int, c_void_p = ctypes.c_int, ctypes.c_void_p
        lib.cublasGemmEx.argtypes = [
            handle_p, c_int, c_int, c_int, c_int, c_int, c_void_p,
            c_void_p, c_int, c_int, c_void_p, c_int, c_int, c_void_p,
            c_void_p, c_int, c_int, c_int, c_int,
        ]  # fmt: skip
        lib.cublasGemmEx.restype = c_int
        self.lib = lib
        self._handles: dict = {}  # device id -> handle
        self._bound: dict = {}  # device id -> (stream pointer, workspace) its handle is set to
        self._workspaces = weakref.WeakKeyDictionary()  # stream -> workspace array
        self._null_workspaces: dict = {}  # device id -> workspace of the default stream
        self._one = {"f": ctypes.c_float(1.0), "d": ctypes.c_double(1.0)}
        self._zero = {"f": ctypes.c_float(0.0), "d": ctypes.c_double(0.0)}
        self._one_p = {k: ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for k, v in self._one.items()}
        self._zero_p = {k: ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for k, v in self._zero.items()}

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what} failed with cuBLAS status {status}")

    def _handle_for_current_stream(self):
        cp = self.cp
        device = cp.cuda.runtime.getDevice()
        handle = self._handles.get(device)
        if handle is None:
            handle = ctypes.c_void_p()
            self._check(self.lib.cublasCreate_v2(ctypes.byref(handle)), "cublasCreate")
            self._handles[device] = handle
        stream = cp.cuda.get_current_stream()
        if stream.ptr == 0:
            workspace = self._null_workspaces.get(device)
            if workspace is None:
                workspace = self._null_workspaces[device] = cp.empty(self.WORKSPACE_BYTES, dtype=cp.uint8)
        else:
            # Keyed by the stream object (weakly): a new stream that reuses a dead one's
            # pointer gets a new workspace, and the handle is bound again.
            workspace = self._workspaces.get(stream)
            if workspace is None:
                workspace = self._workspaces[stream] = cp.empty(self.WORKSPACE_BYTES, dtype=cp.uint8)
        bound = self._bound.get(device)
        if bound is None or bound[0] != stream.ptr or bound[1] is not workspace:
            # cublasSetStream resets the workspace to cuBLAS's own pool: set ours after it.
            self._check(self.lib.cublasSetStream_v2(handle, ctypes.c_void_p(stream.ptr)), "cublasSetStream")
            self._check(self.lib.cublasSetWorkspace_v2(handle, ctypes.c_void_p(workspace.data.ptr), workspace.nbytes), "cublasSetWorkspace")
            self._bound[device] = (stream.ptr, workspace)  # holds the bound workspace alive
        return handle

    def matmul(self, a, b, out) -> bool:
        """out = a @ b for 2-D arrays of one float dtype; False when the layout is not
        one cuBLAS takes as is (the caller then uses cupy.matmul)."""
        kind = out.dtype.char
        if kind not in "fd" or a.dtype.char != kind or b.dtype.char != kind:
            return False
        left, right, result = _operand(a), _operand(b), _operand(out)
        if left is None or right is None or result is None or result[2]:
            return False
        rows, inner = a.shape
        cols = b.shape[1]
        if b.shape[0] != inner or out.shape != (rows, cols):
            raise ValueError(f"matmul shapes {a.shape} @ {b.shape} -> {out.shape} do not fit")
        if rows == 0 or cols == 0:
            return True
        if inner == 0:
            out.fill(0)
            return True
        handle = self._handle_for_current_stream()
        compute = float32_compute() if kind == "f" else _CUBLAS_COMPUTE[kind]
        data = _CUDA_R[kind]
        # Row-major C = A B is column-major C^T = B^T A^T: B's memory is B^T (op N) unless
        # B is itself a transposed view (op T), and likewise for A.
        status = self.lib.cublasGemmEx(
            handle,
            _CUBLAS_OP_T if right[2] else _CUBLAS_OP_N,
            _CUBLAS_OP_T if left[2] else _CUBLAS_OP_N,
            cols, rows, inner,
            self._one_p[kind],
            right[0], data, right[1],
            left[0], data, left[1],
            self._zero_p[kind],
            result[0], data, result[1],
            compute, _CUBLAS_GEMM_DEFAULT,
        )  # fmt: skip
        self._check(status, "cublasGemmEx")
        return True
