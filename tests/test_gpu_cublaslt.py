"""The cuBLASLt plans, checked on the CPU: row-major products translated to cuBLASLt's
column-major calls, run through a NumPy reading of cuBLASLt's rules, must give the
row-major results; and the GPU table's first-use check keeps a plan only when it agrees.

What the GPU itself does with these plans is tested in tests/test_gpu.py (skipped
without a GPU); here nothing needs CuPy.
"""

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nanoae.ops import gpu_cublaslt as lt
from nanoae.ops.gpu import FusedGemmUnavailable, GpuOps


def column_major(array, layout: lt.MatrixLayout):
    """The memory at ``array``'s first element read as cuBLASLt reads it: column-major,
    ``layout.rows x layout.cols``, column stride ``layout.ld`` elements."""
    item = array.itemsize
    return np.lib.stride_tricks.as_strided(array, shape=(layout.rows, layout.cols), strides=(item, layout.ld * item))


def run_plan(plan: lt.ProductPlan, left, right, out, bias=None) -> None:
    """cuBLASLt's matmul as its documentation states it, on NumPy memory:
    D = epilogue(op_a(A) op_b(B)); A is ``right``'s memory, B ``left``'s, D ``out``'s."""
    a = column_major(right, plan.layout_a)
    b = column_major(left, plan.layout_b)
    a = a.T if plan.op_a == lt.OP_T else a
    b = b.T if plan.op_b == lt.OP_T else b
    assert a.shape == (plan.m, plan.k) and b.shape == (plan.k, plan.n)
    d = a @ b
    if plan.epilogue in (lt.EPILOGUE_BIAS, lt.EPILOGUE_RELU_BIAS):
        d = d + bias[:, None]  # one entry per row of D, broadcast over its columns
    if plan.epilogue == lt.EPILOGUE_RELU_BIAS:
        d = np.maximum(d, 0)
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

    def key(self, left, right, out, epilogue, bias=None):
        plan = lt.plan_product(left, right, out, epilogue)
        return None if plan is None else (plan, lt.COMPUTE_32F, (256,) * 4, 0)

    def matmul(self, left, right, out, epilogue=lt.EPILOGUE_DEFAULT, bias=None, capturing=False):
        self.calls.append((epilogue, capturing))
        if self.refuse:
            return False
        run_plan(lt.plan_product(left, right, out, epilogue), left, right, out, bias)
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
        def matmul(self, left, right, out, epilogue=lt.EPILOGUE_DEFAULT, bias=None, capturing=False):
            super().matmul(left, right, out, epilogue, bias, capturing)
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
