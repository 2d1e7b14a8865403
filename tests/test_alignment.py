"""Buffers the matmuls write into start on a 64-byte boundary: the arena and the CPU table's workspaces."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nanoae import presets
from nanoae.backend import get_backend
from nanoae.ops import cpu
from nanoae.params import BYTE_ALIGNMENT, aligned_empty

KERNELS = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(not cpu.numba_available()[0], reason="no Numba"))]


@given(
    shape=st.lists(st.integers(0, 40), min_size=0, max_size=3),
    dtype=st.sampled_from([np.float32, np.float64, np.bool_, np.int64]),
    zeroed=st.booleans(),
)
def test_aligned_empty_is_a_writable_c_ordered_array_on_a_cache_line(shape, dtype, zeroed):
    array = aligned_empty(tuple(shape), dtype, zeroed=zeroed)
    assert array.shape == tuple(shape) and array.dtype == np.dtype(dtype)
    assert array.flags.c_contiguous and array.flags.writeable
    assert array.size == 0 or array.ctypes.data % BYTE_ALIGNMENT == 0  # an empty array has no first element
    if zeroed:
        assert not array.any()
    array[...] = 1  # every element is its own, inside the buffer
    assert array.size == 0 or array.all()


def test_many_aligned_arrays_do_not_overlap():
    arrays = [aligned_empty((3, 5), np.float32) for _ in range(50)]
    for index, array in enumerate(arrays):
        array[...] = index
    assert [int(array[0, 0]) for array in arrays] == list(range(50))


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_matmul_output_of_a_step_starts_on_a_cache_line(kernels, dtype):
    """The tutorial's step writes y, dx (workspace buffers) and dW (arena views) aligned."""
    model = presets.tutorial(seed=0, backend=get_backend("numpy", fast=True, kernels=kernels), dtype=dtype)
    x = np.random.default_rng(0).random((64, 784)).astype(dtype)
    model._train_step(x, x)
    assert model.arena.values.ctypes.data % BYTE_ALIGNMENT == 0
    assert model.arena.grads.ctypes.data % BYTE_ALIGNMENT == 0
    assert [state.ctypes.data % BYTE_ALIGNMENT for state in model.optimizer.state.values()] == [0] * len(model.optimizer.state)
    assert len(model.optimizer.state) >= 1  # RMSProp's mean square
    outputs = []
    for module in model.modules():
        workspace = getattr(module, "_workspace", None)
        if workspace and hasattr(module, "grad_weights"):
            outputs += [workspace["y"], workspace.get("dx", workspace["y"]), module.grad_weights, module.weights]
    assert len(outputs) == 4 * 6  # six Dense layers
    assert [array.ctypes.data % BYTE_ALIGNMENT for array in outputs] == [0] * len(outputs)


def test_workspace_buffers_are_reused_while_the_shape_stays():
    table = cpu.load("numpy")
    workspace = {}
    x = np.ones((5, 3), np.float32)
    weights, bias = np.ones((3, 4), np.float32), np.zeros(4, np.float32)
    first = table.dense_forward(x, weights, bias, "relu", 0.0, workspace)
    again = table.dense_forward(x, weights, bias, "relu", 0.0, workspace)
    assert again is first and first.ctypes.data % BYTE_ALIGNMENT == 0
    np.testing.assert_array_equal(first, np.full((5, 4), 3.0, np.float32))
    bigger = table.dense_forward(np.ones((7, 3), np.float32), weights, bias, "relu", 0.0, workspace)
    assert bigger is not first and bigger.shape == (7, 4) and bigger.ctypes.data % BYTE_ALIGNMENT == 0
