"""Forward, loss and every gradient of nanoae against tf.GradientTape and torch autograd.

The same network (identical weights: PyTorch's Linear holds W transposed) and the same
batch go through nanoae, TensorFlow and PyTorch; the output, the loss, dW and db of
every layer and dx must agree to 1e-10 (float64) and 1e-5 (float32) by the measure of
docs/fidelity.md: max|a - b| / max|b| per tensor, b the framework's value.

Kinks: ReLU and leaky ReLU have a kink at 0, where all three libraries take the
derivative from the z <= 0 side (0 for ReLU, alpha for leaky ReLU; shown below on
exact zeros). Drawn networks avoid pre-activations so close to 0 that rounding could put
them on different sides in different libraries: an example is rejected when some
|z| (computed in float64) lies within 10 times the float32 rounding error of that
layer (float32 runs) or within 1e-9 of the layer's largest |z| (float64 runs).

Ill-conditioned float32 draws: a gradient can be a nearly cancelling sum (db = Σ dz over a
batch of 2), or pass through an activation derivative written through a saturated output
(1 - y² with y near ±1); float32 rounding then moves the result by more than the tolerance in
every library, each in its own way. A drawn float32 network is therefore rejected when
TensorFlow's or PyTorch's own float32 gradients lie further than half the tolerance from the
exact gradients (a float64 backward pass written out below, independent of nanoae): the
comparison is then of the libraries' rounding, not of the math. Seen before this rule:
widths 49-1-1, tanh, batch 2, where nanoae's bias gradient was 2.1e-5 from TensorFlow's.
A wrong float64 pass here would reject every draw, which hypothesis reports as a failure.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nanoae.layers import Dense
from nanoae.models import Sequential

from .twins import (
    ACTIVATIONS,
    LEAKY_ALPHA,
    LOSSES,
    relative_error,
    tf_forward_and_gradients,
    torch_forward_and_gradients,
    worst,
)

pytestmark = pytest.mark.oracle

TOLERANCE = {"float64": 1e-10, "float32": 1e-5}


def build_case(widths, activations, loss, batch, dtype, seed, fast):
    """A nanoae network (biases drawn too, so db is not trivially shaped), a batch and a target."""
    layers = [
        Dense(fan_in, fan_out, act, bias_init="glorot_uniform", alpha=LEAKY_ALPHA if act == "leaky_relu" else None)
        for fan_in, fan_out, act in zip(widths, widths[1:], activations)
    ]
    model = Sequential(layers, loss=loss).build(backend="numpy", dtype=dtype, seed=seed, fast=fast)
    rng = np.random.default_rng(seed + 1)
    x = rng.uniform(-1.0, 1.0, size=(batch, widths[0])).astype(dtype)
    if loss == "mse":
        target = rng.normal(size=(batch, widths[-1])).astype(dtype)
    else:
        target = rng.uniform(0.0, 1.0, size=(batch, widths[-1])).astype(dtype)
    return model, x, target


def kink_safe(model, x, dtype) -> bool:
    """False when a ReLU / leaky ReLU pre-activation is too close to 0 to have one side.

    Pre-activations are recomputed in float64 from the (rounded) parameters; in float32 the
    noise scale of a layer is the largest difference between nanoae's float32 chain and
    that float64 chain.
    """
    exact = np.asarray(x, dtype=np.float64)
    rounded = np.asarray(x)
    for layer in model.layers:
        weights, bias = np.asarray(layer.weights), np.asarray(layer.bias)
        z_exact = exact @ weights.astype(np.float64) + bias.astype(np.float64)
        z_rounded = rounded @ weights + bias
        if layer.activation.name in ("relu", "leaky_relu"):
            if dtype == "float32":
                noise = float(np.max(np.abs(z_rounded.astype(np.float64) - z_exact)))
                threshold = 10 * noise + 1e-30
            else:
                threshold = 1e-9 * float(np.max(np.abs(z_exact)))
            if np.any(np.abs(z_exact) <= threshold):
                return False
        exact = _activate(z_exact, layer.activation.name)
        rounded = _activate(z_rounded, layer.activation.name).astype(dtype)
    return True


def _derivative_from_output(y, name):
    """act'(z) written through y = act(z)."""
    if name == "relu":
        return (y > 0).astype(np.float64)
    if name == "leaky_relu":
        return np.where(y > 0, 1.0, LEAKY_ALPHA)
    if name == "sigmoid":
        return y * (1 - y)
    if name == "tanh":
        return 1 - y * y
    return np.ones_like(y)


def exact_gradients(model, x, target, loss) -> dict:
    """dx and every layer's dW, db in float64, from the model's (rounded) parameters.

    Forward h_{l+1} = act(h_l W_l + b_l); the loss is the mean over every entry; backward
    dz = act'(z) * dh, dW = h_lᵀ dz, db = Σ_batch dz, dh_l = dz W_lᵀ.
    """
    inputs, outputs = [], []
    h = np.asarray(x, dtype=np.float64)
    for layer in model.layers:
        inputs.append(h)
        z = h @ np.asarray(layer.weights, dtype=np.float64) + np.asarray(layer.bias, dtype=np.float64)
        h = _activate(z, layer.activation.name)
        outputs.append(h)
    target = np.asarray(target, dtype=np.float64)
    if loss == "mse":
        grad = 2 * (h - target) / target.size
    elif loss == "bce":
        grad = (h - target) / (h * (1 - h)) / target.size
    else:  # bce_logits: the output is the logit
        grad = (1 / (1 + np.exp(-h)) - target) / target.size
    gradients = {}
    for index in reversed(range(len(model.layers))):
        layer = model.layers[index]
        dz = grad * _derivative_from_output(outputs[index], layer.activation.name)
        gradients[f"{index}.weights"] = inputs[index].T @ dz
        gradients[f"{index}.bias"] = dz.sum(axis=0)
        grad = dz @ np.asarray(layer.weights, dtype=np.float64).T
    gradients["dx"] = grad
    return gradients


def probabilities_inside(model, x) -> bool:
    """BCE on probabilities: every p away from the clip at [1e-7, 1 - 1e-7] (PyTorch has no such clip)."""
    p = np.asarray(model.forward(x), dtype=np.float64)
    return bool(np.all((p > 1e-6) & (p < 1 - 1e-6)))


def _activate(z, name):
    if name == "relu":
        return np.maximum(z, 0)
    if name == "leaky_relu":
        return np.where(z > 0, z, LEAKY_ALPHA * z)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    return z


def nanoae_results(model, x, target):
    output = model.forward(x)
    loss, grad_output = model.loss.loss_and_grad(output, target)
    dx = model.backward(grad_output, need_input_grad=True)
    gradients = {"dx": np.array(dx)}
    gradients.update({name: np.array(view) for name, view in model.gradients().items()})
    return np.array(output), float(loss), gradients


def compare(tf, torch, widths, activations, loss, batch, dtype, seed, fast, check_assumptions=None):
    model, x, target = build_case(widths, activations, loss, batch, dtype, seed, fast)
    if check_assumptions is not None:
        check_assumptions(kink_safe(model, x, dtype))
        if loss == "bce":
            check_assumptions(probabilities_inside(model, x))
    params = {name: np.array(view) for name, view in model.parameters().items()}
    output, value, gradients = nanoae_results(model, x, target)
    exact = exact_gradients(model, x, target, loss) if check_assumptions is not None and dtype == "float32" else None
    report = {}
    for framework, run in (("tensorflow", tf_forward_and_gradients), ("torch", torch_forward_and_gradients)):
        module = tf if framework == "tensorflow" else torch
        f_output, f_value, f_gradients = run(module, params, activations, loss, x, target)
        if exact is not None:  # the framework itself far from the exact result: ill-conditioned
            check_assumptions(all(relative_error(f_gradients[name], exact[name]) <= TOLERANCE[dtype] / 2 for name in exact))
        assert set(f_gradients) == set(gradients)
        errors = {"output": relative_error(output, f_output), "loss": relative_error(value, f_value)}
        for name in gradients:
            assert f_gradients[name].dtype == np.dtype(dtype), (framework, name, f_gradients[name].dtype)
            errors[name] = relative_error(gradients[name], f_gradients[name])
        report[framework] = errors
    return report


def assert_within(report, dtype, context, record=None, comparison=""):
    for framework, errors in report.items():
        name, value = worst(errors)
        if record is not None:
            record(comparison, framework, dtype, value, TOLERANCE[dtype])
        assert value <= TOLERANCE[dtype], (
            f"{framework}: {name} differs by {value:.3e} (> {TOLERANCE[dtype]:g}) for {context}; all: {errors}"
        )


# ---- drawn networks ------------------------------------------------------------------
@st.composite
def networks(draw):
    depth = draw(st.integers(1, 6))
    widths = draw(st.lists(st.integers(1, 128), min_size=depth + 1, max_size=depth + 1))
    activations = draw(st.lists(st.sampled_from(ACTIVATIONS), min_size=depth, max_size=depth))
    loss = draw(st.sampled_from(LOSSES))
    if loss == "bce":
        activations[-1] = "sigmoid"  # BCE takes probabilities
    batch = draw(st.integers(1, 64))
    seed = draw(st.integers(0, 2**31 - 1))
    fast = draw(st.sampled_from([False, None]))  # the reference ops, and the default (fast) path
    return widths, activations, loss, batch, seed, fast


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@settings(deadline=None)
@given(case=networks())
def test_drawn_networks_match_tensorflow_and_torch(tf, torch, fidelity, dtype, case):
    widths, activations, loss, batch, seed, fast = case
    report = compare(tf, torch, widths, activations, loss, batch, dtype, seed, fast, check_assumptions=assume)
    context = f"widths={widths} activations={activations} loss={loss} batch={batch} fast={fast}"
    assert_within(report, dtype, context, fidelity, "gradients, drawn networks")


# ---- every activation with every loss, fixed ----------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_each_activation_with_each_loss(tf, torch, fidelity, activation, loss, dtype):
    """Three hidden layers of one activation, then the loss's output layer."""
    last = "sigmoid" if loss == "bce" else activation
    widths, activations = [37, 64, 48, 29], [activation, activation, last]
    for seed in range(20):  # the first seed whose pre-activations keep clear of the kinks
        model, x, _ = build_case(widths, activations, loss, 33, dtype, seed, None)
        if kink_safe(model, x, dtype) and (loss != "bce" or probabilities_inside(model, x)):
            break
    report = compare(tf, torch, widths, activations, loss, 33, dtype, seed, None)
    assert_within(report, dtype, f"{activation} / {loss}", fidelity, "gradients, each activation x loss")


# ---- conventions, shown on both sides -----------------------------------------------
@pytest.mark.parametrize("activation, slope", [("relu", 0.0), ("leaky_relu", LEAKY_ALPHA)])
def test_derivative_at_the_kink_is_the_left_one_everywhere(tf, torch, activation, slope):
    """z exactly 0 (zero weights and bias): nanoae, TF and torch all use the z <= 0 slope."""
    model = Sequential([Dense(3, 2, activation, alpha=LEAKY_ALPHA if activation == "leaky_relu" else None)], loss="mse")
    model.build(backend="numpy", dtype="float64", seed=0)
    model.parameters()["0.weights"][...] = 0.0
    model.parameters()["0.bias"][...] = 0.0
    x = np.array([[1.0, -2.0, 0.5], [0.25, 3.0, -1.0]])
    target = np.array([[1.0, -1.0], [0.5, 2.0]])
    params = {name: np.array(view) for name, view in model.parameters().items()}
    _, _, ours = nanoae_results(model, x, target)
    # dL/dy = 2 (0 - t) / N with y = 0, so dL/dz = slope * dL/dy, db = sum over rows of that
    expected_db = slope * (2 * (0 - target) / target.size).sum(axis=0)
    np.testing.assert_allclose(ours["0.bias"], expected_db, rtol=1e-15, atol=0)
    for run, module in ((tf_forward_and_gradients, tf), (torch_forward_and_gradients, torch)):
        _, _, theirs = run(module, params, [activation], "mse", x, target)
        for name in ours:
            np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-15, atol=0)


def test_tensorflow_leaky_relu_keeps_alpha_in_float32(tf):
    """A TensorFlow convention, not a nanoae one: tf.nn.leaky_relu's alpha is a float32
    attribute, so on float64 data alpha=0.2 is 0.20000000298...; nanoae keeps the float64
    0.2. With alpha rounded to float32 on nanoae's side the two agree exactly."""
    z = np.linspace(-3.0, 3.0, 13)
    theirs = tf.nn.leaky_relu(tf.constant(z), alpha=0.2).numpy()
    gap = abs(float(np.float32(0.2)) - 0.2)  # 2.98e-9: the largest |z| here is 3, so max|a-b|/max|b| = gap
    for alpha, expected_error in ((0.2, gap), (float(np.float32(0.2)), 0.0)):
        layer = Sequential([Dense(1, 13, "leaky_relu", alpha=alpha)]).build(backend="numpy", dtype="float64", seed=0)
        layer.parameters()["0.weights"][...] = z[None, :]
        layer.parameters()["0.bias"][...] = 0.0
        ours = np.asarray(layer.forward(np.ones((1, 1))))[0]
        error = relative_error(ours, theirs)
        assert error == pytest.approx(expected_error, rel=1e-6, abs=1e-20), (alpha, error)


# ---- the float64 pass that judges float32 draws ----------------------------------------
@pytest.mark.parametrize("loss", LOSSES)
def test_exact_gradients_match_tensorflow_in_float64(tf, loss):
    """The independent float64 backward pass used to reject ill-conditioned float32 draws."""
    activations = ["tanh", "leaky_relu", "sigmoid" if loss == "bce" else "identity"]
    model, x, target = build_case([9, 7, 5, 4], activations, loss, 6, "float64", 3, False)
    params = {name: np.array(view) for name, view in model.parameters().items()}
    _, _, expected = tf_forward_and_gradients(tf, params, activations, loss, x, target)
    for name, value in exact_gradients(model, x, target, loss).items():
        assert relative_error(value, expected[name]) <= 1e-12, name
