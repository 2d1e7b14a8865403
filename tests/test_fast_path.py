"""The fast CPU path computes the reference path's function (bit for bit where it can)."""

import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nanoae import SGD, Adam, AdamW, Autoencoder, Dense, RMSProp, Sequential, gradcheck, presets
from nanoae.backend import get_backend
from nanoae.ops import cpu
from nanoae.callbacks import Callback

KERNELS = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(not cpu.numba_available()[0], reason="numba not installed"))]
OPTIMIZERS = {
    "rmsprop-tf1": lambda: RMSProp(0.01, flavor="tf1"),
    "rmsprop-tf1-momentum": lambda: RMSProp(0.01, flavor="tf1", momentum=0.9),
    "rmsprop-keras": lambda: RMSProp(0.01, flavor="keras"),
    "rmsprop-keras-momentum": lambda: RMSProp(0.01, flavor="keras", momentum=0.5),
    "rmsprop-torch": lambda: RMSProp(0.01, flavor="torch"),
    "rmsprop-torch-momentum": lambda: RMSProp(0.01, flavor="torch", momentum=0.9),
    "sgd": lambda: SGD(0.1),
    "sgd-momentum-decay": lambda: SGD(0.1, momentum=0.9, weight_decay=1e-3),
    "sgd-nesterov": lambda: SGD(0.1, momentum=0.9, nesterov=True),
    "adam-torch": lambda: Adam(0.01),
    "adam-torch-l2": lambda: Adam(0.01, weight_decay=1e-2),
    "adam-keras": lambda: Adam(0.01, flavor="keras"),
    "adamw": lambda: AdamW(0.01, weight_decay=0.1),
    "adamw-keras": lambda: AdamW(0.01, weight_decay=0.1, flavor="keras"),
}
ACTIVATIONS = ["identity", "relu", "leaky_relu", "sigmoid", "tanh"]
EXACT_ACTIVATIONS = {"identity", "relu", "leaky_relu"}  # no exp/tanh: every operation rounds as NumPy's


def fast_backend(kernels, dtype="float32"):
    return get_backend("numpy", dtype=dtype, fast=True, kernels=kernels)


def twin_models(spec, kernels, optimizer_name, dtype="float32"):
    widths, activations, loss, seed = spec
    made = []
    for backend in (get_backend("numpy", dtype=dtype, fast=False), fast_backend(kernels, dtype)):
        layers = [Dense(a, b, act) for a, b, act in zip(widths, widths[1:], activations)]
        made.append(Sequential(layers, loss=loss, optimizer=OPTIMIZERS[optimizer_name](), backend=backend, seed=seed).build())
    return made


@st.composite
def networks(draw):
    depth = draw(st.integers(1, 5))
    widths = draw(st.lists(st.integers(1, 64), min_size=depth + 1, max_size=depth + 1))
    activations = draw(st.lists(st.sampled_from(ACTIVATIONS), min_size=depth, max_size=depth))
    loss = draw(st.sampled_from(["mse", "bce", "bce_logits"]))
    if loss == "bce":
        activations[-1] = "sigmoid"
    return widths, activations, loss, draw(st.integers(0, 2**31 - 1))


def _relative_gap(got, expected):
    scale = max(float(np.max(np.abs(expected))), 1e-30)
    return float(np.max(np.abs(got - expected))) / scale


@pytest.mark.parametrize("kernels", KERNELS)
@given(spec=networks(), batch=st.integers(1, 33))
def test_fast_forward_and_every_gradient_match_reference_in_float32(kernels, spec, batch):
    reference_model, fast_model = twin_models(spec, kernels, "sgd")
    rng = np.random.default_rng(spec[3])
    x = rng.random((batch, spec[0][0]), dtype=np.float32)
    target = rng.random((batch, spec[0][-1]), dtype=np.float32)
    results = []
    for model in (reference_model, fast_model):
        output = model.forward(model.backend.asarray(x))
        loss, grad_output = model.loss.loss_and_grad(output, target)
        grad_input = model.backward(grad_output, need_input_grad=True)
        results.append((output.copy(), float(loss), grad_input.copy(), {k: v.copy() for k, v in model.gradients().items()}))
    (out_r, loss_r, dx_r, grads_r), (out_f, loss_f, dx_f, grads_f) = results
    assert out_f.dtype == dx_f.dtype == np.float32
    assert _relative_gap(out_f, out_r) <= 1e-6
    assert loss_f == pytest.approx(loss_r, rel=1e-5)
    # Relative to each tensor's largest entry: float32 rounding, a few ulps through 5 layers.
    assert _relative_gap(dx_f, dx_r) <= 1e-5
    for name in grads_r:
        assert _relative_gap(grads_f[name], grads_r[name]) <= 1e-5, name


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("optimizer_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_optimizer_update_is_bit_identical_given_the_same_gradients(kernels, optimizer_name, dtype):
    updates = []
    for backend in (get_backend("numpy", dtype=dtype, fast=False), fast_backend(kernels, dtype)):
        model = Sequential([Dense(37, 29, "relu"), Dense(29, 5)], optimizer=OPTIMIZERS[optimizer_name](), loss="mse")
        model.build(backend=backend, seed=1)
        gradient_rng = np.random.default_rng(3)
        for _ in range(4):
            # gradients over many magnitudes, exact zeros included (the arena's padding too)
            model.arena.grads[...] = gradient_rng.normal(size=model.arena.size) * 10.0 ** gradient_rng.integers(-9, 2, model.arena.size)
            model.arena.grads[::7] = 0
            model.optimizer.step()
        updates.append((model.arena.values.copy(), {k: v.copy() for k, v in model.optimizer.state.items()}))
    np.testing.assert_array_equal(updates[1][0], updates[0][0])
    for name in updates[0][1]:
        np.testing.assert_array_equal(updates[1][1][name], updates[0][1][name])


@pytest.mark.parametrize("kernels", KERNELS)
@given(spec=networks(), batch=st.integers(1, 33), optimizer_name=st.sampled_from(sorted(OPTIMIZERS)))
def test_fast_training_equals_reference_on_random_networks_in_float64(kernels, spec, batch, optimizer_name):
    """Whole steps (forward, loss, backward, update) in float64, where rounding cannot be
    amplified by adaptive optimizers dividing tiny gradients by their own size."""
    reference_model, fast_model = twin_models(spec, kernels, optimizer_name, dtype="float64")
    rng = np.random.default_rng(spec[3])
    for _ in range(3):
        x = rng.random((batch, spec[0][0]))
        target = rng.random((batch, spec[0][-1]))
        assert float(fast_model.train_step(x, target)) == pytest.approx(float(reference_model.train_step(x, target)), rel=1e-12, abs=1e-15)
    np.testing.assert_allclose(fast_model.arena.values, reference_model.arena.values, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("optimizer_name", sorted(OPTIMIZERS))
def test_bit_exact_where_the_same_operations_run_in_the_same_order(kernels, optimizer_name):
    """Piecewise-linear activations, MSE: matmuls, adds and the optimizer's arithmetic
    are the same IEEE operations in the same order on both paths."""
    spec = ([12, 20, 7, 12], ["relu", "leaky_relu", "identity"], "mse", 5)
    reference_model, fast_model = twin_models(spec, kernels, optimizer_name)
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.random((16, 12), dtype=np.float32)
        reference_model.train_step(x, x)
        fast_model.train_step(x, x)
    np.testing.assert_array_equal(fast_model.arena.values, reference_model.arena.values)
    for name in reference_model.optimizer.state:
        np.testing.assert_array_equal(fast_model.optimizer.state[name], reference_model.optimizer.state[name])


@pytest.mark.parametrize("kernels", KERNELS)
def test_tutorial_model_fast_equals_reference_bit_for_bit(kernels):
    data = np.random.default_rng(1).random((512, 784), dtype=np.float32)
    reference_model = presets.tutorial(seed=0, backend=get_backend("numpy", fast=False))
    fast_model = presets.tutorial(seed=0, backend=fast_backend(kernels))
    reference_losses = reference_model.fit(data, steps=6, batch_size=64)
    fast_losses = fast_model.fit(data, steps=6, batch_size=64)
    np.testing.assert_array_equal(fast_model.arena.values, reference_model.arena.values)
    np.testing.assert_allclose(fast_losses, reference_losses, rtol=1e-6)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_kernels_match_reference(kernels, activation):
    rng = np.random.default_rng(2)
    z = rng.normal(0, 3, (9, 13)).astype(np.float32)
    z[0, :3] = [0.0, -0.0, 1e-30]
    z[1, :2] = [80.0, -80.0]
    table, reference = fast_backend(kernels).ops, get_backend("numpy", fast=False).ops
    expected = reference.activation_forward(z, activation, 0.2)
    got = table.activation_forward(z, activation, 0.2, {})
    np.testing.assert_allclose(got, expected, rtol=2e-7, atol=1e-38)
    dy = rng.normal(size=z.shape).astype(np.float32)
    np.testing.assert_allclose(
        table.activation_backward(dy, expected, activation, 0.2, {}),
        reference.activation_backward(dy, expected, activation, 0.2),
        rtol=2e-7,
        atol=1e-38,
    )


@pytest.mark.parametrize("kernels", KERNELS)
def test_float64_fast_path_is_gradient_checked(kernels):
    model = Sequential([Dense(6, 9, "tanh"), Dense(9, 4, "relu"), Dense(4, 3, "sigmoid")], loss="mse")
    model.build(backend=fast_backend(kernels, "float64"), seed=3)
    x = np.random.default_rng(0).normal(size=(5, 6))
    report = gradcheck(model, x, np.random.default_rng(1).random((5, 3)))
    assert report.passed, str(report)


class AllocationMeter(Callback):
    """tracemalloc from the first step to the last (after fit's one-off input checks)."""

    def __init__(self, skip_steps):
        self.skip_steps = skip_steps

    def on_step_end(self, state):
        if state.step - state.start_step == self.skip_steps:
            tracemalloc.start()
            self.before, _ = tracemalloc.get_traced_memory()

    def on_train_end(self, state):
        self.after, self.peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()


@pytest.mark.parametrize("preset", ["tutorial", "weight-decay"])  # weight decay: an L2 term on every Dense layer
@pytest.mark.parametrize("kernels", KERNELS)
def test_steady_state_allocates_nothing_per_step(kernels, preset):
    model = presets.get_preset(preset)(seed=0, backend=fast_backend(kernels))
    if preset == "weight-decay":
        assert all(layer.weight_decay for layer in model.modules() if isinstance(layer, Dense))
    data = np.random.default_rng(0).random((2048, 784), dtype=np.float32)
    meter = AllocationMeter(skip_steps=3)  # warm-up: buffers, kernel compilation
    model.fit(data, steps=13, batch_size=256, log_every=5, callbacks=[meter])
    # One batch of activations is 256 x 784 x 4 B = 800 KB; the reference path allocates
    # tens of MB per step. What remains is bookkeeping (index arrays, a loss scalar).
    assert meter.peak - meter.before < 100_000, (meter.before, meter.peak)
    assert meter.after - meter.before < 50_000, (meter.before, meter.after)


def test_reference_path_does_allocate_per_step():
    """The meter above can see allocations: the reference path makes them."""
    model = presets.tutorial(seed=0, backend=get_backend("numpy", fast=False))
    data = np.random.default_rng(0).random((1024, 784), dtype=np.float32)
    meter = AllocationMeter(skip_steps=1)
    model.fit(data, steps=3, batch_size=256, callbacks=[meter])
    assert meter.peak - meter.before > 5_000_000


def test_outputs_handed_to_users_are_not_reused_buffers():
    model = Autoencoder([Dense(8, 3, "relu")], [Dense(3, 8, "sigmoid")], backend=fast_backend("numpy"), seed=0)
    rng = np.random.default_rng(0)
    first_input, second_input = rng.random((4, 8)), rng.random((4, 8))
    first = model.reconstruct(first_input)
    kept = first.copy()
    model.reconstruct(second_input)
    model.encode(second_input)
    np.testing.assert_array_equal(first, kept)


def test_without_numba_the_numpy_kernels_are_chosen():
    code = "import nanoae; b = nanoae.get_backend('numpy'); print(b.ops.name)"
    environment = {**os.environ, "NANOAE_NUMBA": "0"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "cpu-numpy"


def test_reference_flag():
    assert get_backend("numpy", fast=False).ops.name == "reference"
    with pytest.raises(ValueError, match="unknown kernel set"):
        get_backend("numpy", kernels="fortran")
