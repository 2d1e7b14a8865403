"""cuBLASLt GEMMs with fused epilogues and a per-shape algorithm, for the GPU table.

A dense layer's forward is ``y = f(x W + b)`` and its backward needs
``grad_bias = sum over the batch of dz``. cuBLASLt can do the bias and a ReLU in the
GEMM's epilogue (the output tile is still in registers), and the bias gradient while
it reads ``dz`` for ``grad_weights = x^T dz``, so those passes over the activations
cost no kernel and no memory traffic of their own. It also offers several algorithms
per shape; :class:`CublasLt` asks its heuristic for a few and, at a shape's first
use, times them and keeps the fastest.

**Row-major to column-major.** cuBLASLt, like all of cuBLAS, reads matrices
column-major. A row-major ``(r, c)`` array with row stride ``ld`` is, in the same
memory, a column-major ``(c, r)`` matrix with leading dimension ``ld``; and a
transposed view (``x.T``) of a row-major array is column-major as it stands. So the
row-major product ``out = a @ b`` is the column-major ``out^T = b^T a^T``: cuBLASLt's
``A`` is ``b``'s memory, its ``B`` is ``a``'s, ``m`` = out's columns, ``n`` = out's
rows, ``k`` the shared dimension, and an operand that is a transposed view is passed
with ``op = T`` instead of being copied. In that frame:

* forward, ``y = x W + b``: ``D`` is ``(out, batch)``, the bias has ``m = out``
  entries, one per row of ``D``: exactly cuBLASLt's ``BIAS`` epilogue (``RELU_BIAS``
  for a ReLU layer, which applies the bias first);
* ``grad_weights = x^T dz``: ``A`` is ``dz``'s memory, ``(out, batch)`` with op N,
  and the ``BGRADA`` epilogue sums ``A`` over ``k`` = the batch into ``m = out``
  entries: ``grad_bias``;
* a ReLU's slope: the forward's ``RELU_AUX_BIAS`` also writes a bit mask of where
  ``x W + b > 0``, and the layer above computes its ``dx = dz W_above^T`` with
  ``DRELU``, which multiplies by that mask. That product's ``D`` is ``(out, batch)``
  like the forward's, so both read the mask with the same leading dimension (bits,
  padded to a multiple of 128). Where the heuristic offers nothing for DRELU alone,
  DRELU_BGRAD stands in, its bias gradient sent to a scratch buffer.

:func:`plan_product` does this translation and nothing else (no CuPy, no pointers),
so the tests check it on the CPU by running the plans through a NumPy reading of
cuBLASLt's column-major rules. :class:`CublasLt` binds ``libcublasLt`` with ctypes
(like :mod:`nanoae.ops.gpu_cublas`: CuPy's wrappers refuse to run while a CUDA graph
is captured) and runs the plans; the GPU table uses a plan only after checking its
first result against the plain path (:meth:`nanoae.ops.gpu.GpuOps._lt_matmul`).

Needs CuPy and a GPU at run time; this module imports without them.
"""

from __future__ import annotations

import ctypes
import os
import weakref
from dataclasses import dataclass

from nanoae.ops.gpu_cublas import float32_compute, layout_of, load_mapped_library

OP_N, OP_T = 0, 1
CUDA_R_32F = 0
COMPUTE_32F, COMPUTE_32F_FAST_16BF, COMPUTE_32F_FAST_TF32 = 68, 75, 77

#: cublasLtEpilogue_t values (cublasLt.h).
EPILOGUE_DEFAULT = 1
EPILOGUE_RELU = 2
EPILOGUE_BIAS = 4
EPILOGUE_RELU_BIAS = 6
EPILOGUE_RELU_AUX_BIAS = 134  # RELU_BIAS, and the ReLU's bit mask written to an aux buffer
EPILOGUE_DRELU = 136  # D = (op(A) op(B)) times the ReLU slope read from that bit mask
EPILOGUE_DRELU_BGRAD = 152  # DRELU, and the sums of D's rows into the bias buffer
EPILOGUE_BGRADA = 256
_AUX_EPILOGUES = (EPILOGUE_RELU_AUX_BIAS, EPILOGUE_DRELU, EPILOGUE_DRELU_BGRAD)

#: cublasLtMatmulDescAttributes_t
_DESC_TRANSA, _DESC_TRANSB, _DESC_EPILOGUE, _DESC_BIAS_POINTER = 3, 4, 7, 8
_DESC_EPILOGUE_AUX_POINTER, _DESC_EPILOGUE_AUX_LD = 11, 12
#: cublasLtMatmulPreferenceAttributes_t
_PREF_MAX_WORKSPACE_BYTES = 1
_PREF_MIN_ALIGNMENT = {"a": 5, "b": 6, "c": 7, "d": 8}

#: How many algorithms the heuristic is asked for, and timed at a shape's first use.
CANDIDATES = 4
TIMED_REPEATS = 5


@dataclass(frozen=True)
class MatrixLayout:
    """A matrix as stored, in cuBLASLt's terms: column-major, ``rows x cols``, column
    stride ``ld`` (elements)."""

    rows: int
    cols: int
    ld: int


@dataclass(frozen=True)
class ProductPlan:
    """One cuBLASLt matmul ``D = epilogue(op_a(A) op_b(B))``, D ``m x n``, k shared.

    A is the memory of the row-major product's right operand, B that of its left one, D
    the output's; ``bias_length`` is the bias (or bias-gradient) vector's length, 0
    without one.
    """

    m: int
    n: int
    k: int
    op_a: int
    op_b: int
    layout_a: MatrixLayout
    layout_b: MatrixLayout
    layout_d: MatrixLayout
    epilogue: int
    bias_length: int
    aux_ld: int = 0  # the ReLU bit mask's leading dimension in bits (a multiple of 128), 0: none

    @property
    def aux_bytes(self) -> int:
        """Bytes of the ReLU bit mask an aux epilogue writes or reads (0: none)."""
        return self.aux_ld * self.n // 8


def plan_product(left, right, out, epilogue: int = EPILOGUE_DEFAULT):
    """The plan for the row-major ``out = epilogue(left @ right)``, or None when cuBLASLt
    cannot take the operands as they lie (strides neither row- nor column-major, an
    output that is a transposed view, an empty product) or the epilogue has no meaning
    here.

    left: (rows, inner); right: (inner, cols); out: (rows, cols). Epilogues:
    ``EPILOGUE_DEFAULT``; ``EPILOGUE_BIAS`` / ``EPILOGUE_RELU_BIAS`` (a bias of ``cols``
    entries added to every row of ``out``, then the ReLU); ``EPILOGUE_BGRADA`` (the
    sums of ``right`` over its rows, ``cols`` entries: with ``right = dz`` that is the
    bias gradient); ``EPILOGUE_RELU_AUX_BIAS`` (as RELU_BIAS, and the ReLU's bit mask
    into an aux buffer of ``aux_bytes``); ``EPILOGUE_DRELU`` (the product times the ReLU
    slope of such a mask, written by a product whose output had this one's shape).
    Raises ValueError when the shapes do not fit.
    """
    if left.ndim != 2 or right.ndim != 2 or out.ndim != 2:
        return None
    rows, inner = left.shape
    cols = right.shape[1]
    if right.shape[0] != inner or out.shape != (rows, cols):
        raise ValueError(f"matmul shapes {left.shape} @ {right.shape} -> {out.shape} do not fit")
    if rows == 0 or cols == 0 or inner == 0:
        return None
    left_layout, right_layout, out_layout = layout_of(left), layout_of(right), layout_of(out)
    if left_layout is None or right_layout is None or out_layout is None or out_layout[1]:
        return None
    if epilogue not in (EPILOGUE_DEFAULT, EPILOGUE_BIAS, EPILOGUE_RELU_BIAS, EPILOGUE_BGRADA, *_AUX_EPILOGUES):
        return None
    # Column-major: out^T (cols x rows) = right^T (cols x inner) @ left^T (inner x rows).
    m, n, k = cols, rows, inner
    # right's memory read column-major is right^T (m x k) when right is row-major (op N),
    # and right itself (k x m) when right is a transposed view (op T).
    op_a = OP_T if right_layout[1] else OP_N
    layout_a = MatrixLayout(k, m, right_layout[0]) if op_a == OP_T else MatrixLayout(m, k, right_layout[0])
    op_b = OP_T if left_layout[1] else OP_N
    layout_b = MatrixLayout(n, k, left_layout[0]) if op_b == OP_T else MatrixLayout(k, n, left_layout[0])
    layout_d = MatrixLayout(m, n, out_layout[0])
    if epilogue == EPILOGUE_BGRADA and op_a != OP_N:
        return None  # the bias gradient of A is over k: only for A as it lies
    with_bias = (EPILOGUE_BIAS, EPILOGUE_RELU_BIAS, EPILOGUE_RELU_AUX_BIAS, EPILOGUE_BGRADA, EPILOGUE_DRELU_BGRAD)
    bias_length = m if epilogue in with_bias else 0
    # The mask has one bit per element of D, column-major, columns padded to 128 bits.
    aux_ld = -(-m // 128) * 128 if epilogue in _AUX_EPILOGUES else 0
    return ProductPlan(m, n, k, op_a, op_b, layout_a, layout_b, layout_d, epilogue, bias_length, aux_ld)


def _alignment(pointer: int) -> int:
    """The largest power of two (at most 256) that divides a device address."""
    alignment = 1
    while alignment < 256 and pointer % (alignment * 2) == 0:
        alignment *= 2
    return alignment


class _HeuristicResult(ctypes.Structure):
    # cublasLtMatmulHeuristicResult_t: cublasLtMatmulAlgo_t (8 x uint64), size_t
    # workspaceSize, cublasStatus_t state, float wavesCount, int reserved[4].
    _fields_ = [
        ("algo", ctypes.c_uint64 * 8),
        ("workspace_size", ctypes.c_size_t),
        ("state", ctypes.c_int),
        ("waves_count", ctypes.c_float),
        ("reserved", ctypes.c_int * 4),
    ]


def load_cublaslt(cupy):
    """The libcublasLt CuPy's process already mapped, else one by name."""
    cupy.cuda.device.get_cublas_handle()  # loads libcublas, which loads libcublasLt
    return load_mapped_library("libcublasLt.so", ["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"])


@dataclass
class _Prepared:
    """A plan's cuBLASLt objects: its descriptors and the algorithm chosen for it."""

    desc: ctypes.c_void_p
    layouts: tuple  # (A, B, D) layout handles
    algorithms: list  # heuristic results, best first
    chosen: int = 0
    timed: bool = False
    times_ms: tuple = ()
    scratch_bias: object = None  # where a stand-in epilogue's unwanted bias gradient goes


class CublasLt:
    """cuBLASLt matmuls through ctypes: plans prepared once per shape, run on the current stream.

    ``matmul(left, right, out, epilogue, bias)`` runs ``out = epilogue(left @ right)``
    (float32 only) and returns False when it cannot (no plan, no algorithm from the
    heuristic, a failing status at the first try): the caller then takes its plain path.
    """

    WORKSPACE_BYTES = 32 << 20

    def __init__(self, cupy, tune: bool | None = None) -> None:
        self.cp = cupy
        lib = load_cublaslt(cupy)
        vp, c_int, c_size = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
        signatures = {
            "cublasLtCreate": [ctypes.POINTER(vp)],
            "cublasLtMatmulDescCreate": [ctypes.POINTER(vp), c_int, c_int],
            "cublasLtMatmulDescSetAttribute": [vp, c_int, vp, c_size],
            "cublasLtMatrixLayoutCreate": [ctypes.POINTER(vp), c_int, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int64],
            "cublasLtMatmulPreferenceCreate": [ctypes.POINTER(vp)],
            "cublasLtMatmulPreferenceSetAttribute": [vp, c_int, vp, c_size],
            "cublasLtMatmulAlgoGetHeuristic": [vp, vp, vp, vp, vp, vp, vp, c_int, ctypes.POINTER(_HeuristicResult), ctypes.POINTER(c_int)],
            "cublasLtMatmul": [vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, c_size, vp],
        }
        for name, argtypes in signatures.items():
            function = getattr(lib, name)
            function.argtypes = argtypes
            function.restype = c_int
        self.lib = lib
        self.tune = tune if tune is not None else os.environ.get("NANOAE_GPU_GEMM_TUNE", "1") != "0"
        handle = ctypes.c_void_p()
        self._check(lib.cublasLtCreate(ctypes.byref(handle)), "cublasLtCreate")
        self.handle = handle
        self._prepared: dict = {}  # key -> _Prepared, or None where no algorithm fits
        self._keys: dict = {}  # what a call looks like (shapes, strides, addresses) -> its key
        self.errors: list = []  # why plans were given up (a failing cuBLASLt call), for reports
        self._workspaces = weakref.WeakKeyDictionary()  # stream -> workspace array
        self._null_workspace = None
        self._one = ctypes.c_float(1.0)
        self._zero = ctypes.c_float(0.0)

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what} failed with cuBLAS status {status}")

    def _workspace(self, stream):
        if stream.ptr == 0:
            if self._null_workspace is None:
                self._null_workspace = self.cp.empty(self.WORKSPACE_BYTES, dtype=self.cp.uint8)
            return self._null_workspace
        workspace = self._workspaces.get(stream)
        if workspace is None:
            workspace = self._workspaces[stream] = self.cp.empty(self.WORKSPACE_BYTES, dtype=self.cp.uint8)
        return workspace

    def describe(self, key) -> dict:
        """What was chosen for one prepared plan (for profiles and tests)."""
        prepared = self._prepared.get(key)
        if prepared is None:
            return {"algorithms": 0}
        return {"algorithms": len(prepared.algorithms), "chosen": prepared.chosen, "timed": prepared.timed, "times_ms": prepared.times_ms}

    def _prepare(self, plan: ProductPlan, compute: int, alignments: tuple):
        lib = self.lib
        desc = ctypes.c_void_p()
        self._check(lib.cublasLtMatmulDescCreate(ctypes.byref(desc), compute, CUDA_R_32F), "cublasLtMatmulDescCreate")
        attributes = [(_DESC_TRANSA, ctypes.c_int32(plan.op_a)), (_DESC_TRANSB, ctypes.c_int32(plan.op_b))]
        attributes.append((_DESC_EPILOGUE, ctypes.c_uint32(plan.epilogue)))
        if plan.aux_ld:
            attributes.append((_DESC_EPILOGUE_AUX_LD, ctypes.c_int64(plan.aux_ld)))
        for attribute, value in attributes:
            self._check(
                lib.cublasLtMatmulDescSetAttribute(desc, attribute, ctypes.byref(value), ctypes.sizeof(value)),
                "cublasLtMatmulDescSetAttribute",
            )
        layouts = []
        for layout in (plan.layout_a, plan.layout_b, plan.layout_d):
            handle = ctypes.c_void_p()
            self._check(
                lib.cublasLtMatrixLayoutCreate(ctypes.byref(handle), CUDA_R_32F, layout.rows, layout.cols, layout.ld),
                "cublasLtMatrixLayoutCreate",
            )
            layouts.append(handle)
        preference = ctypes.c_void_p()
        self._check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(preference)), "cublasLtMatmulPreferenceCreate")
        # The heuristic assumes 256-byte aligned buffers unless told otherwise; arena views
        # may start anywhere on a 4-byte boundary, so it is told the truth.
        settings = [(_PREF_MAX_WORKSPACE_BYTES, ctypes.c_uint64(self.WORKSPACE_BYTES))]
        settings += [(_PREF_MIN_ALIGNMENT[name], ctypes.c_uint32(alignment)) for name, alignment in zip("abcd", alignments)]
        for attribute, value in settings:
            self._check(
                lib.cublasLtMatmulPreferenceSetAttribute(preference, attribute, ctypes.byref(value), ctypes.sizeof(value)),
                "cublasLtMatmulPreferenceSetAttribute",
            )
        results = (_HeuristicResult * CANDIDATES)()
        found = ctypes.c_int(0)
        status = lib.cublasLtMatmulAlgoGetHeuristic(
            self.handle, desc, layouts[0], layouts[1], layouts[2], layouts[2], preference, CANDIDATES, results, ctypes.byref(found)
        )
        algorithms = [results[i] for i in range(found.value) if results[i].state == 0] if status == 0 else []
        if not algorithms:
            return None
        return _Prepared(desc, tuple(layouts), algorithms)

    def _prepare_drelu_with_bgrad(self, plan: ProductPlan, compute: int, alignments: tuple):
        """DRELU where cuBLASLt offers no algorithm for it alone: DRELU_BGRAD, the same
        product and slope, with the bias gradient it adds written to a scratch buffer of
        its own and never read (the layer below computes its own in its weight product)."""
        stand_in = ProductPlan(**{**plan.__dict__, "epilogue": EPILOGUE_DRELU_BGRAD, "bias_length": plan.m})
        prepared = self._prepare(stand_in, compute, alignments)
        if prepared is not None:
            prepared.scratch_bias = self.cp.empty(plan.m, dtype=self.cp.float32)
        return prepared

    def _launch(self, prepared: _Prepared, index: int, pointers: dict, stream) -> int:
        lib = self.lib
        # The descriptor is shared by every call of the plan: its buffers are set per call.
        for attribute, name in ((_DESC_BIAS_POINTER, "bias"), (_DESC_EPILOGUE_AUX_POINTER, "aux")):
            if pointers.get(name):
                pointer = ctypes.c_void_p(pointers[name])
                self._check(
                    lib.cublasLtMatmulDescSetAttribute(prepared.desc, attribute, ctypes.byref(pointer), ctypes.sizeof(pointer)),
                    f"cublasLtMatmulDescSetAttribute({name})",
                )
        workspace = self._workspace(stream)
        result = prepared.algorithms[index]
        a_layout, b_layout, d_layout = prepared.layouts
        return lib.cublasLtMatmul(
            self.handle, prepared.desc,
            ctypes.byref(self._one), ctypes.c_void_p(pointers["a"]), a_layout,
            ctypes.c_void_p(pointers["b"]), b_layout,
            ctypes.byref(self._zero), ctypes.c_void_p(pointers["d"]), d_layout,
            ctypes.c_void_p(pointers["d"]), d_layout,
            ctypes.byref(result.algo), ctypes.c_void_p(workspace.data.ptr), workspace.nbytes, ctypes.c_void_p(stream.ptr),
        )  # fmt: skip

    def _time_candidates(self, prepared: _Prepared, pointers: dict, stream) -> None:
        """Run each candidate a few times on the real buffers and keep the fastest (the
        caller's own call comes after, so what these runs write does not matter)."""
        cp = self.cp
        times = []
        for index in range(len(prepared.algorithms)):
            if self._launch(prepared, index, pointers, stream) != 0:
                times.append(float("inf"))
                continue
            start, stop = cp.cuda.Event(), cp.cuda.Event()
            start.record(stream)
            for _ in range(TIMED_REPEATS):
                self._launch(prepared, index, pointers, stream)
            stop.record(stream)
            stop.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, stop) / TIMED_REPEATS)
        best = min(range(len(times)), key=times.__getitem__)
        prepared.chosen, prepared.timed, prepared.times_ms = best, True, tuple(times)

    def key(self, left, right, out, epilogue: int, bias=None, aux=None):
        """The cache key of one call: its plan, compute type and buffer alignments (None: no plan).

        Memoized on the call's look (shapes, strides, addresses, dtypes, epilogue), so an
        eager step pays a dictionary lookup per matmul, not a plan."""
        compute = float32_compute()
        look = (
            left.shape, left.strides, left.dtype.char, left.data.ptr,
            right.shape, right.strides, right.dtype.char, right.data.ptr,
            out.shape, out.strides, out.dtype.char, out.data.ptr,
            epilogue, compute,
            None if bias is None else (bias.shape, bias.strides, bias.dtype.char, bias.data.ptr),
            None if aux is None else (aux.nbytes, aux.data.ptr),
        )  # fmt: skip
        try:
            return self._keys[look]
        except KeyError:
            key = self._keys[look] = self._key(left, right, out, epilogue, bias, aux, compute)
            return key

    def _key(self, left, right, out, epilogue: int, bias, aux, compute: int):
        if out.dtype.char != "f" or left.dtype.char != "f" or right.dtype.char != "f":
            return None
        if bias is not None and (bias.dtype.char != "f" or bias.ndim != 1 or not bias.flags.c_contiguous):
            return None
        plan = plan_product(left, right, out, epilogue)
        if plan is None or (plan.bias_length and (bias is None or bias.shape[0] != plan.bias_length)):
            return None
        if plan.aux_ld and (aux is None or aux.nbytes < plan.aux_bytes or aux.data.ptr % 16):
            return None
        pointers = (right.data.ptr, left.data.ptr, out.data.ptr, out.data.ptr)
        alignments = tuple(_alignment(pointer) for pointer in pointers)
        bias_alignment = _alignment(bias.data.ptr) if bias is not None else 0
        return (plan, compute, alignments, bias_alignment)

    def matmul(self, left, right, out, epilogue: int = EPILOGUE_DEFAULT, bias=None, capturing: bool = False, aux=None) -> bool:
        """out = epilogue(left @ right) (bias: the epilogue's bias, or where the bias
        gradient goes; aux: the ReLU bit mask an aux epilogue writes or reads). False
        when cuBLASLt cannot run it (see the class docstring)."""
        key = self.key(left, right, out, epilogue, bias, aux)
        if key is None:
            return False
        plan, compute, alignments, _ = key
        if key not in self._prepared:
            if capturing:
                return False  # preparing and timing need the host: only on an eager call
            try:
                prepared = self._prepare(plan, compute, alignments)
                if prepared is None and plan.epilogue == EPILOGUE_DRELU:
                    prepared = self._prepare_drelu_with_bgrad(plan, compute, alignments)
                self._prepared[key] = prepared
            except RuntimeError as exc:  # a descriptor cuBLASLt refuses: the plain path
                self.errors.append(str(exc))
                self._prepared[key] = None
        prepared = self._prepared[key]
        if prepared is None:
            return False
        stream = self.cp.cuda.get_current_stream()
        pointers = {"a": right.data.ptr, "b": left.data.ptr, "d": out.data.ptr}
        pointers["bias"] = bias.data.ptr if bias is not None else 0
        if prepared.scratch_bias is not None:
            pointers["bias"] = prepared.scratch_bias.data.ptr
        pointers["aux"] = aux.data.ptr if aux is not None else 0
        try:
            if self.tune and not prepared.timed and not capturing and len(prepared.algorithms) > 1:
                self._time_candidates(prepared, pointers, stream)
            status = self._launch(prepared, prepared.chosen, pointers, stream)
        except RuntimeError as exc:
            self.errors.append(str(exc))
            status = -1
        if status != 0:
            self._prepared[key] = None  # never again for this key: the plain path
            return False
        return True

