"""The ctypes binding to cuBLASLt (:class:`nanoae.ops.gpu_cublaslt.CublasLt`), on the CPU.

No GPU here, so the library is a stand-in: eight C-callable functions (ctypes callbacks
with cublasLt.h's signatures) that keep the descriptors, layouts and preferences they
are given and carry out ``cublasLtMatmul`` on host memory the way cuBLASLt's
documentation describes it (column-major, ``op(A) op(B)``, then the epilogue). Every
argument crosses a real ctypes boundary both ways, so what is checked is the binding's
own work: which attribute gets which value of which width, which pointer goes where,
the heuristic's results read back, the timed choice, and the ways a plan is given up.
Device arrays are NumPy arrays behind CuPy's few attributes the binding reads.
"""

import ctypes
import types

import numpy as np
import pytest

from nanoae.ops import gpu_cublaslt as lt


class DeviceArray:
    """A NumPy array seen through the attributes CublasLt reads from a CuPy array."""

    def __init__(self, array):
        self.array = array
        self.data = types.SimpleNamespace(ptr=array.__array_interface__["data"][0])

    def __getattr__(self, name):  # shape, strides, ndim, itemsize, dtype, flags, nbytes
        return getattr(self.array, name)

    @property
    def T(self):
        return DeviceArray(self.array.T)


class FakeCupy:
    """The corner of CuPy the binding touches: allocation, the current stream, events."""

    uint8 = np.uint8
    float32 = np.float32

    def __init__(self):
        self.cuda = types.SimpleNamespace(
            get_current_stream=lambda: types.SimpleNamespace(ptr=0),
            Event=FakeEvent,
            get_elapsed_time=lambda start, stop: (stop.at - start.at) * 1e3,
        )

    def empty(self, size, dtype):
        return DeviceArray(np.empty(size, dtype=dtype))


class FakeEvent:
    clock = [0.0]

    def record(self, stream=None):
        FakeEvent.clock[0] += 1.0
        self.at = FakeEvent.clock[0]

    def synchronize(self):
        pass


VP = ctypes.c_void_p

#: The width of each attribute's value, as cublasLt.h declares it (int32_t / uint32_t: 4,
#: void *, int64_t, uint64_t: 8); the stand-in refuses any other.
DESC_ATTRIBUTE_BYTES = {
    lt._DESC_TRANSA: 4,
    lt._DESC_TRANSB: 4,
    lt._DESC_EPILOGUE: 4,
    lt._DESC_BIAS_POINTER: 8,
    lt._DESC_EPILOGUE_AUX_POINTER: 8,
    lt._DESC_EPILOGUE_AUX_LD: 8,
}
PREFERENCE_ATTRIBUTE_BYTES = {lt._PREF_MAX_WORKSPACE_BYTES: 8, **{code: 4 for code in lt._PREF_MIN_ALIGNMENT.values()}}


def _column_major(address, rows, cols, ld):
    """float32 memory at ``address`` read column-major, rows x cols, column stride ld."""
    if rows == 0 or cols == 0:
        return np.zeros((rows, cols), dtype=np.float32)
    flat = np.ctypeslib.as_array(ctypes.cast(address, ctypes.POINTER(ctypes.c_float)), shape=(ld * (cols - 1) + rows,))
    return np.lib.stride_tricks.as_strided(flat, shape=(rows, cols), strides=(4, ld * 4))


class FakeLibrary:
    """cublasLt's eight entry points as ctypes callbacks over host memory."""

    def __init__(self, algorithms=2, fail_matmul=False, slower_first=True, unsupported=()):
        self.algorithms, self.fail_matmul, self.slower_first = algorithms, fail_matmul, slower_first
        self.unsupported = unsupported  # epilogues the heuristic offers no algorithm for
        self.objects = {}  # handle -> what it describes
        self.preferences_seen = []
        self.matmuls = []  # (algorithm id, epilogue) per call
        prototypes = {
            "cublasLtCreate": (VP,),
            "cublasLtMatmulDescCreate": (VP, ctypes.c_int, ctypes.c_int),
            "cublasLtMatmulDescSetAttribute": (VP, ctypes.c_int, VP, ctypes.c_size_t),
            "cublasLtMatrixLayoutCreate": (VP, ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int64),
            "cublasLtMatmulPreferenceCreate": (VP,),
            "cublasLtMatmulPreferenceSetAttribute": (VP, ctypes.c_int, VP, ctypes.c_size_t),
            "cublasLtMatmulAlgoGetHeuristic": (VP, VP, VP, VP, VP, VP, VP, ctypes.c_int, VP, VP),
            "cublasLtMatmul": (VP,) * 14 + (ctypes.c_size_t, VP),
        }
        self._keep = []
        for name, arguments in prototypes.items():
            callback = ctypes.CFUNCTYPE(ctypes.c_int, *arguments)(getattr(self, "_" + name))
            self._keep.append(callback)
            setattr(self, name, callback)

    def _new(self, out_address, what):
        handle = len(self.objects) + 0x1000
        self.objects[handle] = what
        VP.from_address(out_address).value = handle
        return 0

    def _cublasLtCreate(self, out):
        return self._new(out, {"kind": "handle"})

    def _cublasLtMatmulDescCreate(self, out, compute, scale):
        return self._new(out, {"kind": "desc", "compute": compute, "scale": scale, "attributes": {}})

    def _cublasLtMatmulDescSetAttribute(self, desc, attribute, buffer, size):
        if DESC_ATTRIBUTE_BYTES.get(attribute) != size:
            return 7  # CUBLAS_STATUS_INVALID_VALUE
        raw = ctypes.string_at(buffer, size)
        self.objects[desc]["attributes"][attribute] = int.from_bytes(raw, "little", signed=size == 4 and raw[-1] >= 0x80)
        return 0

    def _cublasLtMatrixLayoutCreate(self, out, data_type, rows, cols, ld):
        return self._new(out, {"kind": "layout", "type": data_type, "rows": rows, "cols": cols, "ld": ld})

    def _cublasLtMatmulPreferenceCreate(self, out):
        return self._new(out, {"kind": "preference", "attributes": {}})

    def _cublasLtMatmulPreferenceSetAttribute(self, preference, attribute, buffer, size):
        if PREFERENCE_ATTRIBUTE_BYTES.get(attribute) != size:
            return 7
        self.objects[preference]["attributes"][attribute] = int.from_bytes(ctypes.string_at(buffer, size), "little")
        return 0

    def _cublasLtMatmulAlgoGetHeuristic(self, handle, desc, a, b, c, d, preference, requested, results, found):
        self.preferences_seen.append(dict(self.objects[preference]["attributes"]))
        epilogue = self.objects[desc]["attributes"].get(lt._DESC_EPILOGUE, lt.EPILOGUE_DEFAULT)
        count = 0 if epilogue in self.unsupported else min(requested, self.algorithms)
        array = (lt._HeuristicResult * requested).from_address(results)
        for index in range(count):
            array[index].algo[0] = 100 + index
            array[index].state = 0
        ctypes.c_int.from_address(found).value = count
        return 0

    def _cublasLtMatmul(self, handle, desc, alpha, a, a_layout, b, b_layout, beta, c, c_layout, d, d_layout, algo, workspace, size, stream):
        if self.fail_matmul:
            return 7  # CUBLAS_STATUS_INVALID_VALUE
        attributes = self.objects[desc]["attributes"]
        algorithm = ctypes.c_uint64.from_address(algo).value
        epilogue = attributes.get(lt._DESC_EPILOGUE, lt.EPILOGUE_DEFAULT)
        self.matmuls.append((algorithm, epilogue))
        if self.slower_first and algorithm == 100:
            FakeEvent.clock[0] += 10.0  # the heuristic's first pick is the slow one here
        layouts = [self.objects[handle] for handle in (a_layout, b_layout, d_layout)]
        a_matrix = _column_major(a, layouts[0]["rows"], layouts[0]["cols"], layouts[0]["ld"])
        b_matrix = _column_major(b, layouts[1]["rows"], layouts[1]["cols"], layouts[1]["ld"])
        a_op = a_matrix.T if attributes[lt._DESC_TRANSA] == lt.OP_T else a_matrix
        b_op = b_matrix.T if attributes[lt._DESC_TRANSB] == lt.OP_T else b_matrix
        alpha_value, beta_value = ctypes.c_float.from_address(alpha).value, ctypes.c_float.from_address(beta).value
        assert alpha_value == 1.0 and beta_value == 0.0 and c == d and c_layout == d_layout
        result = a_op.astype(np.float64) @ b_op.astype(np.float64)
        m, n = result.shape
        if epilogue in (lt.EPILOGUE_BIAS, lt.EPILOGUE_RELU_BIAS, lt.EPILOGUE_RELU_AUX_BIAS):
            result += _column_major(attributes[lt._DESC_BIAS_POINTER], m, 1, m)
        if epilogue in (lt.EPILOGUE_RELU_BIAS, lt.EPILOGUE_RELU_AUX_BIAS):
            positive = result > 0
            result = np.where(positive, result, 0)
            if epilogue == lt.EPILOGUE_RELU_AUX_BIAS:
                ld = attributes[lt._DESC_EPILOGUE_AUX_LD]
                bits = np.zeros((n, ld), dtype=bool)
                bits[:, :m] = positive.T
                packed = np.packbits(bits.reshape(-1), bitorder="little")
                ctypes.memmove(attributes[lt._DESC_EPILOGUE_AUX_POINTER], packed.ctypes.data, packed.nbytes)
        if epilogue in (lt.EPILOGUE_DRELU, lt.EPILOGUE_DRELU_BGRAD):
            ld = attributes[lt._DESC_EPILOGUE_AUX_LD]
            raw = np.frombuffer(ctypes.string_at(attributes[lt._DESC_EPILOGUE_AUX_POINTER], ld * n // 8), dtype=np.uint8)
            mask = np.unpackbits(raw, bitorder="little").astype(bool).reshape(n, ld)[:, :m].T
            result = np.where(mask, result, 0)
            if epilogue == lt.EPILOGUE_DRELU_BGRAD:  # the bias gradient: D's rows summed
                _column_major(attributes[lt._DESC_BIAS_POINTER], m, 1, m)[:, 0] = result.sum(axis=1)
        if epilogue == lt.EPILOGUE_BGRADA:
            _column_major(attributes[lt._DESC_BIAS_POINTER], m, 1, m)[:, 0] = a_op.astype(np.float64).sum(axis=1)
        _column_major(d, layouts[2]["rows"], layouts[2]["cols"], layouts[2]["ld"])[...] = result
        return 0


def binding(monkeypatch, tune=True, **library_options):
    library = FakeLibrary(**library_options)
    monkeypatch.setattr(lt, "load_cublaslt", lambda cupy: library)
    return lt.CublasLt(FakeCupy(), tune=tune), library


def device(array):
    return DeviceArray(np.ascontiguousarray(array, dtype=np.float32))


def integers(rng, shape):
    return rng.integers(-3, 4, size=shape).astype(np.float32)


def test_a_product_and_its_transposed_operands_cross_the_binding(monkeypatch):
    cublaslt, library = binding(monkeypatch)
    rng = np.random.default_rng(0)
    x, w = integers(rng, (5, 7)), integers(rng, (7, 3))
    out = device(np.full((5, 3), np.nan))
    assert cublaslt.matmul(device(x), device(w), out)
    np.testing.assert_array_equal(out.array, x @ w)
    # x^T dz and dz W^T: transposed views are a flag, not a copy
    dz = integers(rng, (5, 3))
    grad = device(np.full((7, 3), np.nan))
    assert cublaslt.matmul(device(x).T, device(dz), grad)
    np.testing.assert_array_equal(grad.array, x.T @ dz)
    dx = device(np.full((5, 7), np.nan))
    assert cublaslt.matmul(device(dz), device(w).T, dx)
    np.testing.assert_array_equal(dx.array, dz @ w.T)
    descs = [what for what in library.objects.values() if what["kind"] == "desc"]
    assert all(desc["compute"] == lt.COMPUTE_32F and desc["scale"] == lt.CUDA_R_32F for desc in descs)


def test_a_relu_layer_and_the_layer_above_it_through_the_binding(monkeypatch):
    """Forward with RELU_AUX_BIAS, then grad_weights with BGRADA and dx with DRELU."""
    cublaslt, library = binding(monkeypatch)
    rng = np.random.default_rng(1)
    batch, fan_in, fan_out, fan_above = 6, 5, 4, 3
    x, w, b = integers(rng, (batch, fan_in)), integers(rng, (fan_in, fan_out)), integers(rng, (fan_out,))
    y = device(np.full((batch, fan_out), np.nan))
    aux = DeviceArray(np.zeros(128 * batch // 8, dtype=np.uint8))
    bias = device(b)
    assert cublaslt.matmul(device(x), device(w), y, lt.EPILOGUE_RELU_AUX_BIAS, bias, aux=aux)
    np.testing.assert_array_equal(y.array, np.maximum(x @ w + b, 0))
    w_above, dz = integers(rng, (fan_out, fan_above)), integers(rng, (batch, fan_above))
    dx = device(np.full((batch, fan_out), np.nan))
    assert cublaslt.matmul(device(dz), device(w_above).T, dx, lt.EPILOGUE_DRELU, aux=aux)
    np.testing.assert_array_equal(dx.array, (dz @ w_above.T) * (y.array > 0))
    grad_weights, grad_bias = device(np.full((fan_in, fan_out), np.nan)), device(np.full(fan_out, np.nan))
    assert cublaslt.matmul(device(x).T, dx, grad_weights, lt.EPILOGUE_BGRADA, grad_bias)
    np.testing.assert_array_equal(grad_weights.array, x.T @ dx.array)
    np.testing.assert_array_equal(grad_bias.array, dx.array.sum(axis=0))
    epilogues = {desc["attributes"][lt._DESC_EPILOGUE] for desc in library.objects.values() if desc["kind"] == "desc"}
    assert epilogues == {lt.EPILOGUE_RELU_AUX_BIAS, lt.EPILOGUE_DRELU, lt.EPILOGUE_BGRADA}


def test_the_fastest_candidate_is_kept_and_the_heuristic_is_told_the_truth(monkeypatch):
    cublaslt, library = binding(monkeypatch)
    rng = np.random.default_rng(2)
    x, w = device(integers(rng, (4, 4))), device(integers(rng, (4, 4)))
    out = device(np.empty((4, 4)))
    assert cublaslt.matmul(x, w, out)
    key = cublaslt.key(x, w, out, lt.EPILOGUE_DEFAULT)
    chosen = cublaslt.describe(key)
    assert chosen["algorithms"] == 2 and chosen["timed"] and chosen["chosen"] == 1  # the first is slower here
    assert chosen["times_ms"][0] > chosen["times_ms"][1]
    assert library.matmuls[-1][0] == 101  # the real call used the chosen one
    library.matmuls.clear()
    assert cublaslt.matmul(x, w, out)
    assert library.matmuls == [(101, lt.EPILOGUE_DEFAULT)]  # timed once, then the choice alone
    preference = library.preferences_seen[0]
    assert preference[lt._PREF_MAX_WORKSPACE_BYTES] == lt.CublasLt.WORKSPACE_BYTES
    for name, array in (("a", w), ("b", x), ("c", out), ("d", out)):
        assert preference[lt._PREF_MIN_ALIGNMENT[name]] == lt._alignment(array.data.ptr)


def test_without_tuning_the_heuristics_first_pick_runs(monkeypatch):
    cublaslt, library = binding(monkeypatch, tune=False)
    x, w, out = device(np.ones((3, 3))), device(np.ones((3, 3))), device(np.empty((3, 3)))
    assert cublaslt.matmul(x, w, out)
    assert library.matmuls == [(100, lt.EPILOGUE_DEFAULT)]


def test_a_plan_is_given_up_when_no_algorithm_fits_or_a_launch_fails(monkeypatch):
    x, w, out = device(np.ones((3, 3))), device(np.ones((3, 3))), device(np.empty((3, 3)))
    cublaslt, _ = binding(monkeypatch, algorithms=0)
    assert not cublaslt.matmul(x, w, out)
    cublaslt, library = binding(monkeypatch, fail_matmul=True)
    assert not cublaslt.matmul(x, w, out)
    assert cublaslt._prepared[cublaslt.key(x, w, out, lt.EPILOGUE_DEFAULT)] is None
    assert not cublaslt.matmul(x, w, out) and library.matmuls == []  # never tried again


def test_what_the_binding_refuses_before_calling_cublaslt(monkeypatch):
    cublaslt, library = binding(monkeypatch)
    x, w, out = device(np.ones((3, 4))), device(np.ones((4, 2))), device(np.empty((3, 2)))
    as_double = DeviceArray(np.ones((3, 4)))
    assert not cublaslt.matmul(as_double, w, out)  # float32 only
    assert not cublaslt.matmul(x, w, out, lt.EPILOGUE_BIAS, device(np.ones(3)))  # a bias of the wrong length
    assert not cublaslt.matmul(x, w, out, lt.EPILOGUE_RELU_AUX_BIAS, device(np.ones(2)))  # no mask buffer
    small = DeviceArray(np.zeros(4, dtype=np.uint8))
    assert not cublaslt.matmul(x, w, out, lt.EPILOGUE_RELU_AUX_BIAS, device(np.ones(2)), aux=small)  # too small
    assert library.matmuls == []
    with pytest.raises(ValueError, match="do not fit"):
        cublaslt.matmul(x, device(np.ones((3, 2))), out)


def test_a_refused_attribute_gives_the_plan_up(monkeypatch):
    cublaslt, library = binding(monkeypatch)
    monkeypatch.setitem(PREFERENCE_ATTRIBUTE_BYTES, lt._PREF_MAX_WORKSPACE_BYTES, 4)  # now every 8-byte value is refused
    x, w, out = device(np.ones((3, 3))), device(np.ones((3, 3))), device(np.empty((3, 3)))
    assert not cublaslt.matmul(x, w, out)
    assert library.matmuls == [] and "cublasLtMatmulPreferenceSetAttribute" in cublaslt.errors[0]


def test_the_bfloat16_switch_reaches_both_bindings(monkeypatch):
    """get_backend("cupy", allow_bf16=True) sets one switch; cublasGemmEx and cuBLASLt's
    descriptors both take CUBLAS_COMPUTE_32F_FAST_16BF from it, and plain float32 after."""
    from nanoae.ops import gpu_cublas

    gemm_computes = []

    class FakeCublasLibrary:
        def __init__(self):
            self._keep = []
            for name, arguments in {
                "cublasCreate_v2": (VP,),
                "cublasSetStream_v2": (VP, VP),
                "cublasSetWorkspace_v2": (VP, VP, ctypes.c_size_t),
                "cublasGemmEx": (VP,) + (ctypes.c_int,) * 5 + (VP, VP, ctypes.c_int, ctypes.c_int, VP, ctypes.c_int, ctypes.c_int, VP, VP)
                + (ctypes.c_int,) * 4,
            }.items():
                callback = ctypes.CFUNCTYPE(ctypes.c_int, *arguments)(getattr(self, "_" + name))
                self._keep.append(callback)
                setattr(self, name, callback)

        def _cublasCreate_v2(self, out):
            VP.from_address(out).value = 0x2000
            return 0

        def _cublasSetStream_v2(self, handle, stream):
            return 0

        def _cublasSetWorkspace_v2(self, handle, workspace, size):
            return 0

        def _cublasGemmEx(self, *arguments):
            gemm_computes.append(arguments[-2])  # computeType, then the algorithm
            return 0

    monkeypatch.setattr(gpu_cublas, "load_cublas", lambda cupy: FakeCublasLibrary())
    cupy = FakeCupy()
    cupy.cuda.runtime = types.SimpleNamespace(getDevice=lambda: 0)
    gemm = gpu_cublas.Cublas(cupy)
    cublaslt, library = binding(monkeypatch)
    x, w, out = device(np.ones((3, 3))), device(np.ones((3, 3))), device(np.empty((3, 3)))
    try:
        gpu_cublas.set_bfloat16(True)
        assert gemm.matmul(x, w, out) and cublaslt.matmul(x, w, out)
    finally:
        gpu_cublas.set_bfloat16(False)
    assert gemm.matmul(x, w, out) and cublaslt.matmul(x, w, out)
    assert gemm_computes == [lt.COMPUTE_32F_FAST_16BF, lt.COMPUTE_32F]
    computes = [what["compute"] for what in library.objects.values() if what["kind"] == "desc"]
    assert computes == [lt.COMPUTE_32F_FAST_16BF, lt.COMPUTE_32F]  # one plan per compute type


def test_drelu_falls_back_to_drelu_bgrad_where_cublaslt_offers_only_that(monkeypatch):
    """If the heuristic has nothing for DRELU alone, the binding runs DRELU_BGRAD (same
    product, same slope) with the bias gradient going to a scratch buffer of its own."""
    cublaslt, library = binding(monkeypatch, unsupported=(lt.EPILOGUE_DRELU,))
    rng = np.random.default_rng(3)
    x, w, b = integers(rng, (6, 5)), integers(rng, (5, 4)), integers(rng, (4,))
    y = device(np.empty((6, 4)))
    aux = DeviceArray(np.zeros(128 * 6 // 8, dtype=np.uint8))
    assert cublaslt.matmul(device(x), device(w), y, lt.EPILOGUE_RELU_AUX_BIAS, device(b), aux=aux)
    w_above, dz = integers(rng, (4, 3)), integers(rng, (6, 3))
    dx = device(np.full((6, 4), np.nan))
    assert cublaslt.matmul(device(dz), device(w_above).T, dx, lt.EPILOGUE_DRELU, aux=aux)
    expected = (dz @ w_above.T) * (y.array > 0)
    np.testing.assert_array_equal(dx.array, expected)
    assert library.matmuls[-1][1] == lt.EPILOGUE_DRELU_BGRAD
    key = cublaslt.key(device(dz), device(w_above).T, dx, lt.EPILOGUE_DRELU, aux=aux)
    np.testing.assert_array_equal(cublaslt._prepared[key].scratch_bias.array, expected.sum(axis=0))


def test_a_library_is_found_where_the_process_mapped_it_else_by_name():
    from nanoae.ops.gpu_cublas import load_mapped_library

    assert load_mapped_library("libc.so", []) is not None  # mapped by Python itself
    assert load_mapped_library("libnothing-nanoae.so", ["libc.so.6"]) is not None  # the fallback
    with pytest.raises(OSError, match="libnothing-nanoae not found"):
        load_mapped_library("libnothing-nanoae.so", ["libnothing-nanoae.so.1"])
