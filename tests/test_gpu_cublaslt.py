"""The cuBLASLt plans, checked on the CPU: row-major products translated to cuBLASLt's
column-major calls, run through a NumPy reading of cuBLASLt's rules, must give the
row-major results; and the GPU table's first-use check keeps a plan only when it agrees.

What the GPU itself does with these plans is tested in tests/test_gpu.py (skipped
without a GPU); here nothing needs CuPy.
"""

import dataclasses
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nanoae import Dense, RMSProp, Sequential
from nanoae.backend import get_backend
from nanoae.ops import gpu as gpu_module
from nanoae.ops import gpu_cublaslt as lt
from nanoae.ops import reference
from nanoae.ops.codes import ACTIVATION_CODES
from nanoae.ops.gpu import FusedGemmUnavailable, GpuOps
from nanoae.regularizers import ActivityL1


def column_major(array, layout: lt.MatrixLayout):
    """The memory at ``array``'s first element read as cuBLASLt reads it: column-major,
    ``layout.rows x layout.cols``, column stride ``layout.ld`` elements."""
    item = array.itemsize
    return np.lib.stride_tricks.as_strided(array, shape=(layout.rows, layout.cols), strides=(item, layout.ld * item))


def mask_bits(plan: lt.ProductPlan, aux):
    """The ReLU bit mask in ``aux`` as a boolean (m, n) matrix: one bit per element of D,
    column-major, columns ``aux_ld`` bits apart. (cuBLASLt calls the mask's format its
    own; only the epilogue that writes it and the one that reads it must agree.)"""
    bits = np.unpackbits(aux[: plan.aux_bytes], bitorder="little").astype(bool)
    return bits.reshape(plan.n, plan.aux_ld)[:, : plan.m].T


def run_plan(plan: lt.ProductPlan, left, right, out, bias=None, aux=None) -> None:
    """cuBLASLt's matmul as its documentation states it, on NumPy memory:
    D = epilogue(op_a(A) op_b(B)); A is ``right``'s memory, B ``left``'s, D ``out``'s."""
    a = column_major(right, plan.layout_a)
    b = column_major(left, plan.layout_b)
    a = a.T if plan.op_a == lt.OP_T else a
    b = b.T if plan.op_b == lt.OP_T else b
    assert a.shape == (plan.m, plan.k) and b.shape == (plan.k, plan.n)
    d = a @ b
    if plan.epilogue in (lt.EPILOGUE_BIAS, lt.EPILOGUE_RELU_BIAS, lt.EPILOGUE_RELU_AUX_BIAS):
        d = d + bias[:, None]  # one entry per row of D, broadcast over its columns
    if plan.epilogue in (lt.EPILOGUE_RELU_BIAS, lt.EPILOGUE_RELU_AUX_BIAS):
        positive = d > 0
        d = np.where(positive, d, 0)
        if plan.epilogue == lt.EPILOGUE_RELU_AUX_BIAS:
            bits = np.zeros((plan.n, plan.aux_ld), dtype=bool)
            bits[:, : plan.m] = positive.T
            aux[: plan.aux_bytes] = np.packbits(bits.reshape(-1), bitorder="little")
    if plan.epilogue == lt.EPILOGUE_DRELU:
        d = np.where(mask_bits(plan, aux), d, 0)
    if plan.epilogue == lt.EPILOGUE_BGRADA:
        bias[...] = a.sum(axis=1)  # A summed over k: one entry per row of D
    target = np.lib.stride_tricks.as_strided(out, shape=(plan.m, plan.n), strides=(out.itemsize, plan.layout_d.ld * out.itemsize))
    target[...] = d


def integers(rng, shape):
    """Small integers as float32: every product and sum below is exact, in any order."""
    return rng.integers(-4, 5, size=shape).astype(np.float32)


def operand(rng, shape, transposed: bool, pad: int):
    """A (rows, cols) float32 operand: row-major with ``pad`` spare columns, or a
    transposed view of a row-major (cols, rows + pad) array."""
    rows, cols = shape
    if transposed:
        return integers(rng, (cols, rows + pad))[:, :rows].T
    return integers(rng, (rows, cols + pad))[:, :cols]


shapes = st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9))


@given(shapes, st.booleans(), st.booleans(), st.integers(0, 3), st.integers(0, 3), st.integers(0, 2**31 - 1))
def test_a_plain_product_is_the_row_major_product(shape, left_transposed, right_transposed, left_pad, out_pad, seed):
    rows, inner, cols = shape
    rng = np.random.default_rng(seed)
    left = operand(rng, (rows, inner), left_transposed, left_pad)
    right = operand(rng, (inner, cols), right_transposed, 0)
    out = np.full((rows, cols + out_pad), np.nan, dtype=np.float32)[:, :cols]
    plan = lt.plan_product(left, right, out)
    assert plan.bias_length == 0 and (plan.m, plan.n, plan.k) == (cols, rows, inner)
    run_plan(plan, left, right, out)
    np.testing.assert_array_equal(out, left @ right)


@given(shapes, st.sampled_from(["relu", "identity"]), st.booleans(), st.integers(0, 2**31 - 1))
def test_the_forward_epilogue_is_bias_then_activation(shape, activation, weights_transposed, seed):
    """y = f(x W + b) for a (batch, in) x and (in, out) W, W also as a tied (transposed) view."""
    batch, fan_in, fan_out = shape
    rng = np.random.default_rng(seed)
    x = integers(rng, (batch, fan_in))
    weights = operand(rng, (fan_in, fan_out), weights_transposed, 0)
    bias = integers(rng, (fan_out,))
    y = np.empty((batch, fan_out), dtype=np.float32)
    epilogue = lt.EPILOGUE_RELU_BIAS if activation == "relu" else lt.EPILOGUE_BIAS
    plan = lt.plan_product(x, weights, y, epilogue)
    assert plan.bias_length == fan_out
    run_plan(plan, x, weights, y, bias)
    expected = x @ weights + bias
    np.testing.assert_array_equal(y, np.maximum(expected, 0) if activation == "relu" else expected)


@given(shapes, st.integers(0, 2**31 - 1))
def test_the_bias_gradient_epilogue_sums_dz_over_the_batch(shape, seed):
    """grad_weights = x^T dz, and grad_bias = the column sums of dz, in one plan."""
    batch, fan_in, fan_out = shape
    rng = np.random.default_rng(seed)
    x = integers(rng, (batch, fan_in))
    dz = integers(rng, (batch, fan_out))
    grad_weights = np.empty((fan_in, fan_out), dtype=np.float32)
    grad_bias = np.full(fan_out, np.nan, dtype=np.float32)
    plan = lt.plan_product(x.T, dz, grad_weights, lt.EPILOGUE_BGRADA)
    assert plan.bias_length == fan_out and plan.k == batch and plan.op_a == lt.OP_N
    run_plan(plan, x.T, dz, grad_weights, grad_bias)
    np.testing.assert_array_equal(grad_weights, x.T @ dz)
    np.testing.assert_array_equal(grad_bias, dz.sum(axis=0))


@given(shapes, st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_a_relu_mask_written_forward_gives_the_slope_in_the_product_above(shape, fan_above, seed):
    """Layer l: y = relu(x W + b), keeping the mask. Layer l+1 (W2: out -> fan_above):
    dx = (dz W2^T) * relu'(y) in one product, reading that mask."""
    batch, fan_in, fan_out = shape
    rng = np.random.default_rng(seed)
    x, weights, bias = integers(rng, (batch, fan_in)), integers(rng, (fan_in, fan_out)), integers(rng, (fan_out,))
    y = np.empty((batch, fan_out), dtype=np.float32)
    forward = lt.plan_product(x, weights, y, lt.EPILOGUE_RELU_AUX_BIAS)
    assert forward.aux_ld % 128 == 0 and forward.aux_ld >= fan_out and forward.aux_bytes == forward.aux_ld * batch // 8
    aux = np.zeros(forward.aux_bytes, dtype=np.uint8)
    run_plan(forward, x, weights, y, bias, aux)
    np.testing.assert_array_equal(y, np.maximum(x @ weights + bias, 0))
    np.testing.assert_array_equal(mask_bits(forward, aux), (y > 0).T)
    weights_above, dz = integers(rng, (fan_out, fan_above)), integers(rng, (batch, fan_above))
    dx = np.empty((batch, fan_out), dtype=np.float32)
    backward = lt.plan_product(dz, weights_above.T, dx, lt.EPILOGUE_DRELU)
    assert (backward.m, backward.n, backward.aux_ld, backward.bias_length) == (forward.m, forward.n, forward.aux_ld, 0)
    run_plan(backward, dz, weights_above.T, dx, aux=aux)
    np.testing.assert_array_equal(dx, (dz @ weights_above.T) * (y > 0))


def test_the_plans_of_the_tutorial_layer_are_those_worked_by_hand():
    """784 -> 256 at batch 64, written out: cuBLASLt sees y^T (256 x 64) = W^T x^T."""
    x = np.empty((64, 784), dtype=np.float32)
    weights = np.empty((784, 256), dtype=np.float32)
    y = np.empty((64, 256), dtype=np.float32)
    forward = lt.plan_product(x, weights, y, lt.EPILOGUE_RELU_BIAS)
    assert (forward.m, forward.n, forward.k) == (256, 64, 784)
    assert (forward.op_a, forward.op_b) == (lt.OP_N, lt.OP_N)
    assert forward.layout_a == lt.MatrixLayout(256, 784, 256)  # W's memory: W^T, column-major
    assert forward.layout_b == lt.MatrixLayout(784, 64, 784)  # x's memory: x^T
    assert forward.layout_d == lt.MatrixLayout(256, 64, 256)
    assert forward.bias_length == 256
    grad = lt.plan_product(x.T, y, weights, lt.EPILOGUE_BGRADA)  # dW = x^T dz, dz shaped like y
    assert (grad.m, grad.n, grad.k) == (256, 784, 64)
    assert (grad.op_a, grad.op_b) == (lt.OP_N, lt.OP_T)
    assert grad.layout_a == lt.MatrixLayout(256, 64, 256)  # dz^T: the bias gradient sums its 64 columns
    assert grad.layout_b == lt.MatrixLayout(784, 64, 784)  # x^T as it lies, read transposed
    dx = lt.plan_product(y, weights.T, x)  # dx = dz W^T
    assert (dx.m, dx.n, dx.k, dx.op_a, dx.op_b) == (784, 64, 256, lt.OP_T, lt.OP_N)


def test_what_cublaslt_cannot_take_has_no_plan():
    a = np.zeros((4, 6), dtype=np.float32)
    b = np.zeros((6, 5), dtype=np.float32)
    out = np.zeros((4, 5), dtype=np.float32)
    assert lt.plan_product(a[:, ::2], b[:3], out) is None  # strides neither row- nor column-major
    assert lt.plan_product(a, b, np.zeros((5, 4), dtype=np.float32).T) is None  # a transposed output
    assert lt.plan_product(a[:, :0], b[:0], out) is None  # an empty sum
    assert lt.plan_product(a, b, out, epilogue=lt.EPILOGUE_RELU) is None  # not an epilogue the table uses
    assert lt.plan_product(a, np.zeros((5, 6), dtype=np.float32).T, out, lt.EPILOGUE_BGRADA) is None
    with pytest.raises(ValueError, match=r"\(4, 6\) @ \(5, 5\)"):
        lt.plan_product(a, np.zeros((5, 5), dtype=np.float32), out)


def test_alignment_is_the_largest_power_of_two_up_to_256():
    assert [lt._alignment(p) for p in (0, 4, 12, 48, 64, 512 + 16, 4096)] == [256, 4, 4, 16, 64, 16, 256]


# ---- the GPU table's first-use check, on NumPy stand-ins --------------------------------


class FakeLt:
    """CublasLt's interface over NumPy: plans run through :func:`run_plan`, optionally
    corrupted (a wrong reading of cuBLASLt, which the first-use check must catch)."""

    def __init__(self, corrupt=False, refuse=False):
        self.corrupt, self.refuse = corrupt, refuse
        self.calls = []

    def key(self, left, right, out, epilogue, bias=None, aux=None):
        plan = lt.plan_product(left, right, out, epilogue)
        return None if plan is None else (plan, lt.COMPUTE_32F, (256,) * 4, 0)

    def matmul(self, left, right, out, epilogue=lt.EPILOGUE_DEFAULT, bias=None, capturing=False, aux=None):
        self.calls.append((epilogue, capturing))
        if self.refuse:
            return False
        run_plan(lt.plan_product(left, right, out, epilogue), left, right, out, bias, aux)
        if self.corrupt:
            out *= 2
        return True


def numpy_table(fake, capturing=False):
    """A GpuOps whose array library is NumPy and whose cuBLASLt is ``fake`` (no CuPy)."""
    ops = GpuOps.__new__(GpuOps)
    ops.cp, ops._lt, ops._lt_verdicts = np, fake, {}
    ops._capturing = lambda: capturing
    return ops


def forward_case(seed=0):
    rng = np.random.default_rng(seed)
    x, weights, bias = rng.random((8, 5), dtype=np.float32), rng.random((5, 3), dtype=np.float32) - 0.5, rng.random(3, dtype=np.float32)
    return x, weights, bias, np.empty((8, 3), dtype=np.float32)


def test_a_plan_that_agrees_is_checked_once_then_runs_alone():
    fake = FakeLt()
    ops = numpy_table(fake)
    x, weights, bias, y = forward_case()
    plain_calls = []

    def plain():
        plain_calls.append(1)
        np.maximum(x @ weights + bias, 0, out=y)

    ops._lt_matmul(x, weights, y, lt.EPILOGUE_RELU_BIAS, bias, plain)
    assert plain_calls == [1] and list(ops._lt_verdicts.values()) == [True]
    for _ in range(3):
        y[...] = np.nan
        ops._lt_matmul(x, weights, y, lt.EPILOGUE_RELU_BIAS, bias, plain)
    assert plain_calls == [1] and len(fake.calls) == 4
    np.testing.assert_allclose(y, np.maximum(x @ weights + bias, 0), rtol=1e-6)


def test_a_plan_that_disagrees_is_dropped_with_a_warning_and_the_plain_result_stands():
    fake = FakeLt(corrupt=True)
    ops = numpy_table(fake)
    x, weights, bias, y = forward_case()
    expected = x @ weights + bias

    def plain():
        y[...] = expected

    with pytest.warns(FusedGemmUnavailable, match=r"\(8, 5\) @ \(5, 3\)"):
        ops._lt_matmul(x, weights, y, lt.EPILOGUE_BIAS, bias, plain)
    np.testing.assert_array_equal(y, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        y[...] = np.nan
        ops._lt_matmul(x, weights, y, lt.EPILOGUE_BIAS, bias, plain)
    np.testing.assert_array_equal(y, expected)
    assert len(fake.calls) == 1 and list(ops._lt_verdicts.values()) == [False]


def test_the_bias_gradient_is_checked_too():
    """A plan whose grad_weights agree but whose grad_bias does not is dropped."""

    class WrongBias(FakeLt):
        def matmul(self, left, right, out, epilogue=lt.EPILOGUE_DEFAULT, bias=None, capturing=False, aux=None):
            super().matmul(left, right, out, epilogue, bias, capturing, aux)
            bias += 1
            return True

    rng = np.random.default_rng(1)
    x, dz = rng.random((16, 5), dtype=np.float32), rng.random((16, 3), dtype=np.float32)
    grad_weights, grad_bias = np.empty((5, 3), dtype=np.float32), np.empty(3, dtype=np.float32)

    def plain():
        grad_weights[...] = x.T @ dz
        grad_bias[...] = dz.sum(axis=0)

    for fake, verdict in ((FakeLt(), True), (WrongBias(), False)):
        ops = numpy_table(fake)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FusedGemmUnavailable)
            ops._lt_matmul(x.T, dz, grad_weights, lt.EPILOGUE_BGRADA, grad_bias, plain)
        assert list(ops._lt_verdicts.values()) == [verdict]
        np.testing.assert_allclose(grad_bias, dz.sum(axis=0), rtol=1e-6)


def test_a_prologue_runs_before_the_fused_matmul_only():
    order = []
    fake = FakeLt()
    ops = numpy_table(fake)
    x, weights, bias, y = forward_case()

    def plain():
        order.append("plain")
        y[...] = x @ weights + bias

    ops._lt_matmul(x, weights, y, lt.EPILOGUE_BIAS, bias, plain, prologue=lambda: order.append("prologue"))
    ops._lt_matmul(x, weights, y, lt.EPILOGUE_BIAS, bias, plain, prologue=lambda: order.append("prologue"))
    assert order == ["prologue", "plain", "prologue"]


def test_no_plan_is_tried_for_the_first_time_while_a_graph_is_captured():
    fake = FakeLt()
    ops = numpy_table(fake, capturing=True)
    x, weights, bias, y = forward_case()
    ops._lt_matmul(x, weights, y, lt.EPILOGUE_BIAS, bias, lambda: y.fill(1.0))
    assert fake.calls == [] and ops._lt_verdicts == {} and (y == 1.0).all()
    ops._capturing = lambda: False
    ops._lt_matmul(x, weights, y, lt.EPILOGUE_BIAS, bias, lambda: np.add(x @ weights, bias, out=y))
    ops._capturing = lambda: True
    ops._lt_matmul(x, weights, y, lt.EPILOGUE_BIAS, bias, lambda: y.fill(1.0))
    assert fake.calls == [(lt.EPILOGUE_BIAS, False), (lt.EPILOGUE_BIAS, True)]  # checked eagerly, then captured


def test_without_cublaslt_or_a_plan_the_plain_path_runs():
    x, weights, bias, y = forward_case()
    for ops, args in (
        (numpy_table(None), (x, weights, y)),
        (numpy_table(FakeLt(refuse=True)), (x, weights, y)),
        (numpy_table(FakeLt()), (x[:, ::2], weights[::2], y)),  # strides cuBLASLt cannot take
    ):
        y[...] = 0
        ops._lt_matmul(*args, lt.EPILOGUE_DEFAULT, None, lambda: y.fill(7.0))
        assert (y == 7.0).all()
        assert all(verdict is False for verdict in ops._lt_verdicts.values())


def test_the_ctypes_declarations_match_cublaslt_h():
    """Values and the heuristic result's layout as cublasLt.h (CUDA 13.0 / cuBLAS 13.1)
    declares them; a C program compiled against that header printed the same."""
    import ctypes

    assert ctypes.sizeof(lt._HeuristicResult) == 96
    assert lt._HeuristicResult.workspace_size.offset == 64 and lt._HeuristicResult.state.offset == 72
    assert (lt.EPILOGUE_DEFAULT, lt.EPILOGUE_RELU, lt.EPILOGUE_BIAS, lt.EPILOGUE_RELU_BIAS, lt.EPILOGUE_BGRADA) == (1, 2, 4, 6, 256)
    assert (lt._DESC_TRANSA, lt._DESC_TRANSB, lt._DESC_EPILOGUE, lt._DESC_BIAS_POINTER) == (3, 4, 7, 8)
    assert lt._PREF_MAX_WORKSPACE_BYTES == 1 and lt._PREF_MIN_ALIGNMENT == {"a": 5, "b": 6, "c": 7, "d": 8}
    assert (lt.COMPUTE_32F, lt.COMPUTE_32F_FAST_TF32, lt.CUDA_R_32F, lt.OP_N, lt.OP_T) == (68, 77, 0, 0, 1)


# ---- the GPU table's dense layers, on NumPy stand-ins -------------------------------------


class NumpyKernels:
    """The GPU table's elementwise kernels, as the reference math on NumPy."""

    names = {code: name for name, code in ACTIVATION_CODES.items()}

    def bias_activation(self, x, bias, code, alpha, out):
        out[...] = reference.activation_forward(x + bias, self.names[code], alpha)

    def slope(self, dy, y, code, alpha, out):
        out[...] = reference.activation_backward(dy, y, self.names[code], alpha)

    def column_sum(self, x, axis, out):
        out[...] = x.sum(axis=axis)


def numpy_gpu_backend(fake, monkeypatch):
    """A float32 NumPy backend whose table is the GPU table's own Python (dense forward,
    chained backward, first-use checks, ReLU masks) over NumPy kernels and ``fake``."""
    ops = numpy_table(fake)
    ops.kernels = NumpyKernels()
    ops._blas = None  # the plain products: numpy.matmul into the output
    ops._slope_and_bias_grad = lambda dy, y, code, alpha, dz, grad_bias, workspace: (
        ops.kernels.slope(dy, y, code, alpha, dz),
        ops.kernels.column_sum(dz, 0, grad_bias),
    )
    monkeypatch.setattr(gpu_module, "_address", lambda array: array.__array_interface__["data"][0])
    return dataclasses.replace(get_backend("numpy", dtype="float32", fast=False), ops=ops)


def build(kinds, backend, width=6):
    layers = [ActivityL1(0.01) if kind == "l1" else Dense(width, width, kind) for kind in kinds]
    return Sequential(layers, loss="mse", optimizer=RMSProp(0.01), backend=backend, seed=4).build()


STACKS = {
    "tutorial-like": ["relu", "relu", "relu", "relu"],
    "mixed": ["relu", "tanh", "relu", "sigmoid"],
    "identity code": ["relu", "identity", "relu", "relu"],
    "with an L1 on the code": ["relu", "relu", "l1", "relu", "sigmoid"],
}


@pytest.mark.parametrize("corrupt", [False, True], ids=["cublaslt agrees", "cublaslt is wrong"])
@pytest.mark.parametrize("stack", sorted(STACKS))
def test_the_gpu_tables_dense_path_equals_the_reference(stack, corrupt, monkeypatch):
    """Forward and backward twice (first use: every plan checked; then the plans alone),
    against the reference table: the same outputs and gradients, whether cuBLASLt's
    results are right (fused plans kept, the ReLU masks carry the slopes up) or wrong
    (every plan dropped, the plain path)."""
    rng = np.random.default_rng(5)
    x, grad = rng.normal(size=(7, 6)), rng.normal(size=(7, 6))
    reference_model = build(STACKS[stack], get_backend("numpy", dtype="float32", fast=False))
    fake = FakeLt(corrupt=corrupt)
    model = build(STACKS[stack], numpy_gpu_backend(fake, monkeypatch))
    expected_output = reference_model.forward(x)
    expected_dx = reference_model.backward(grad.copy())
    expected_grads = reference_model.arena.grads.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FusedGemmUnavailable)
        for _ in range(2):
            fake.calls.clear()
            for layer in model.layers:  # every gradient must be written (the arena's padding never is)
                if isinstance(layer, Dense):
                    layer.grad_weights[...] = np.nan
                    layer.grad_bias[...] = np.nan
            output = model.forward(x)
            dx = model.backward(grad.copy())
            np.testing.assert_allclose(output, expected_output, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(dx, expected_dx, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(model.arena.grads, expected_grads, rtol=1e-5, atol=1e-6)
    verdicts = model.backend.ops._lt_verdicts
    assert verdicts and all(verdict is (not corrupt) for verdict in verdicts.values())
    # The second pass, every plan already judged: cuBLASLt alone where it agreed (the
    # forward's mask, the bias gradients, the slopes moved into the products above),
    # not at all where it did not.
    kinds = STACKS[stack]
    slopes_moved = any(kinds[i] != "l1" and kinds[i - 1] == "relu" for i in range(1, len(kinds)))
    expected = {lt.EPILOGUE_RELU_AUX_BIAS, lt.EPILOGUE_BGRADA} | ({lt.EPILOGUE_DRELU} if slopes_moved else set())
    assert {call[0] for call in fake.calls} >= (set() if corrupt else expected)
    if corrupt:
        assert fake.calls == []


def test_a_stale_relu_mask_is_never_read(monkeypatch):
    """After a forward on another batch size, the layer's mask belongs to that batch: the
    layer above must apply the slope itself, not read the mask."""
    fake = FakeLt()
    model = build(["relu", "relu"], numpy_gpu_backend(fake, monkeypatch))
    reference_model = build(["relu", "relu"], get_backend("numpy", dtype="float32", fast=False))
    rng = np.random.default_rng(6)
    x, grad = rng.normal(size=(7, 6)), rng.normal(size=(7, 6))
    model.forward(x)
    lower = model.layers[0]
    lower._workspace["relu_aux_of"] = None  # as after a forward whose fused product did not run
    fake.calls.clear()
    model.backward(grad.copy())
    assert lt.EPILOGUE_DRELU not in {call[0] for call in fake.calls}
    reference_model.forward(x)
    reference_model.backward(grad.copy())
    np.testing.assert_allclose(model.arena.grads, reference_model.arena.grads, rtol=1e-5, atol=1e-6)


def test_the_tutorial_shaped_autoencoder_moves_every_slope_but_the_top_one(monkeypatch):
    """Encoder relu, relu; decoder relu, relu: three of the four ReLU slopes go into the
    DRELU products above them (the code layer's across the encoder/decoder boundary);
    the decoder's top layer keeps its slope kernel. Same numbers as the reference."""
    from nanoae import Autoencoder

    fake = FakeLt()
    rng = np.random.default_rng(8)
    x = rng.random((9, 6))
    results = []
    for backend in (get_backend("numpy", dtype="float32", fast=False), numpy_gpu_backend(fake, monkeypatch)):
        encoder, decoder = build(["relu", "relu"], backend).layers, build(["relu", "relu"], backend).layers
        model = Autoencoder(list(encoder), list(decoder), optimizer=RMSProp(0.01), backend=backend, seed=4)
        for _ in range(2):  # first use (checks), then the plans alone
            fake.calls.clear()
            output = model.forward(x.astype(np.float32))
            _, grad = reference.mse_loss_and_grad(output, x.astype(np.float32))  # the loss's GPU kernel is CUDA only
            model.backward(grad, need_input_grad=False)
        results.append((np.array(output), model.arena.grads.copy()))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-5, atol=1e-6)
    epilogues = [call[0] for call in fake.calls]
    assert epilogues.count(lt.EPILOGUE_DRELU) == 3 and epilogues.count(lt.EPILOGUE_RELU_AUX_BIAS) == 4
    assert epilogues.count(lt.EPILOGUE_BGRADA) == 4
