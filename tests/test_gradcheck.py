"""Backward passes against finite differences in float64 (worst relative error <= 1e-7), on every ops table."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanoae import MSE, Dense, LeakyReLU, ReLU, Sequential, Sigmoid, Tanh, gradcheck, presets
from nanoae.activations import Identity
from nanoae.module import Module
from nanoae.params import ParamSpec

TOLERANCE = 1e-7
ACTIVATION_NAMES = ["identity", "relu", "leaky_relu", "sigmoid", "tanh"]


@pytest.mark.parametrize("activation", [Identity(), ReLU(), LeakyReLU(0.3), Sigmoid(), Tanh()], ids=repr)
def test_each_activation(activation, ops_backend):
    x = np.random.default_rng(0).normal(0, 2, (6, 5))
    report = gradcheck(activation, x, max_entries=None, backend=ops_backend)
    assert report.passed and report.worst <= TOLERANCE, str(report)


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_dense_every_entry(activation, ops_backend):
    layer = Dense(7, 5, activation)
    x = np.random.default_rng(1).normal(0, 1, (4, 7))
    report = gradcheck(layer, x, max_entries=None, backend=ops_backend)
    assert report.passed, str(report)
    assert {row.name for row in report.rows} == {"weights", "bias", "input"}
    assert all(row.checked > 0 for row in report.rows)


@st.composite
def networks(draw):
    depth = draw(st.integers(1, 5))
    widths = draw(st.lists(st.integers(1, 64), min_size=depth + 1, max_size=depth + 1))
    activations = draw(st.lists(st.sampled_from(ACTIVATION_NAMES), min_size=depth, max_size=depth))
    loss = draw(st.sampled_from(["mse", "bce", "bce_logits"]))
    if loss == "bce":  # BCE on probabilities needs outputs in (0, 1)
        activations[-1] = "sigmoid"
    batch = draw(st.integers(1, 33))
    seed = draw(st.integers(0, 2**31 - 1))
    return widths, activations, loss, batch, seed


# The fixture's Backend is immutable, so sharing it across examples is safe.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(networks())
def test_random_networks(ops_backend, spec):
    widths, activations, loss, batch, seed = spec
    layers = [Dense(a, b, act) for a, b, act in zip(widths, widths[1:], activations)]
    model = Sequential(layers, loss=loss).build(backend=ops_backend, dtype="float64", seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (batch, widths[0]))
    target = rng.uniform(0, 1, (batch, widths[-1]))
    report = gradcheck(model, x, target, max_entries=6, seed=seed)
    assert report.passed, str(report)
    # Rows excused by float64 resolution carry differences of at most ~1e-11 here.
    assert all(row.rel_error <= TOLERANCE or row.max_abs_error <= 1e-10 for row in report.rows), str(report)
    checked = sum(row.checked for row in report.rows)
    skipped = sum(row.skipped_at_kinks for row in report.rows)
    assert checked > 0 and skipped <= checked, str(report)


def test_tutorial_model_in_float64_leaves_the_float32_model_untouched():
    model = presets.tutorial(seed=0)
    before = model.arena.values.copy()
    x = np.random.default_rng(0).random((3, 784))
    report = gradcheck(model, x, max_entries=8)
    assert report.worst <= TOLERANCE, str(report)
    assert model.arena.values.dtype == np.float32
    np.testing.assert_array_equal(model.arena.values, before)
    assert model.encoder[0].weights.dtype == np.float32


class ScaleShift(Module):
    """A student's own layer: y = x * scale + shift (elementwise, per feature)."""

    def __init__(self, features, broken=False):
        super().__init__()
        self.in_features = self.out_features = features
        self.broken = broken

    def parameter_specs(self, prefix=""):
        return [ParamSpec(prefix + "scale", (self.in_features,), "glorot_uniform"), ParamSpec(prefix + "shift", (self.in_features,), "glorot_uniform")]

    def bind(self, arena, prefix=""):
        super().bind(arena, prefix)
        self.scale, self.shift = arena.views[prefix + "scale"], arena.views[prefix + "shift"]
        self.grad_scale, self.grad_shift = arena.grad_views[prefix + "scale"], arena.grad_views[prefix + "shift"]

    def forward(self, x):
        self._input = x
        return x * self.scale + self.shift

    def backward(self, grad_output, need_input_grad=True):
        self.grad_scale[...] = (grad_output * self._input).sum(axis=0)
        self.grad_shift[...] = grad_output.sum(axis=0) * (2.0 if self.broken else 1.0)
        return grad_output * self.scale if need_input_grad else None


def test_a_students_own_layer_passes():
    report = gradcheck(ScaleShift(4), np.random.default_rng(2).normal(size=(5, 4)))
    assert report.passed, str(report)


def test_a_broken_backward_is_caught_and_named():
    report = gradcheck(ScaleShift(4, broken=True), np.random.default_rng(2).normal(size=(5, 4)))
    assert not report.passed
    failing = {row.name for row in report.rows if row.rel_error > TOLERANCE}
    assert failing == {"shift"}
    assert "FAIL" in str(report)
    with pytest.raises(AssertionError, match="gradient check failed"):
        report.assert_ok()


def test_a_missing_activation_derivative_is_caught():
    class ForgetfulDense(Dense):
        def backward(self, grad_output, need_input_grad=True):  # drops act'(z)
            self.grad_weights[...] = self._input.T @ grad_output
            self.grad_bias[...] = grad_output.sum(axis=0)
            return grad_output @ self.weights.T

    report = gradcheck(ForgetfulDense(3, 4, "tanh"), np.random.default_rng(0).normal(size=(5, 3)))
    assert not report.passed


def test_report_table_lists_every_tensor():
    model = Sequential([Dense(3, 4, "tanh"), Dense(4, 2)], loss="mse")
    report = gradcheck(model, np.ones((2, 3)) * 0.3, np.zeros((2, 2)))
    text = str(report)
    for name in ("0.weights", "0.bias", "1.weights", "1.bias", "input", "mse loss", "PASS"):
        assert name in text


def test_gradcheck_argument_errors():
    with pytest.raises(TypeError, match="Module or Loss"):
        gradcheck(lambda x: x, np.ones((1, 1)))
    with pytest.raises(ValueError, match="features"):
        gradcheck(Dense(3, 2), np.ones((1, 4)))
    with pytest.raises(ValueError, match="needs a target"):
        gradcheck(MSE(), np.ones((1, 2)))
