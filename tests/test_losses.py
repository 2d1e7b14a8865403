"""Losses at chosen points and their gradients, on every ops table; their argument checks."""

import math
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nanoae import BCE, MSE, Autoencoder, BCEWithLogits, Dense, Sequential, gradcheck
from nanoae.backend import get_backend
from nanoae.losses import get_loss


def _run(loss, prediction, target, ops_backend, to_host):
    backend = get_backend(ops_backend, dtype="float64")
    loss.bind(backend)
    value, grad = loss.loss_and_grad(backend.asarray(prediction), backend.asarray(target))
    return float(value), to_host(grad)


def test_mse_by_hand(ops_backend, to_host):
    # differences 0, 2, 2, 3 -> squares 0, 4, 4, 9 -> mean 17/4
    value, grad = _run(MSE(), np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[1.0, 0.0], [1.0, 1.0]]), ops_backend, to_host)
    assert value == 4.25
    np.testing.assert_array_equal(grad, [[0.0, 1.0], [1.0, 1.5]])  # 2 (p - t) / 4


def test_bce_by_hand(ops_backend, to_host):
    # L = -(log 0.5 + log 0.2) / 2
    value, grad = _run(BCE(), np.array([[0.5, 0.8]]), np.array([[1.0, 0.0]]), ops_backend, to_host)
    assert value == pytest.approx((math.log(2) + math.log(5)) / 2, rel=1e-15)
    # (p - t) / (p (1 - p)) / N: (-0.5 / 0.25) / 2 = -1, (0.8 / 0.16) / 2 = 2.5
    np.testing.assert_allclose(grad, [[-1.0, 2.5]], rtol=1e-14)


def test_bce_clips_probabilities_and_gives_no_gradient_there(ops_backend, to_host):
    value, grad = _run(BCE(), np.array([[0.0, 1.0]]), np.array([[1.0, 0.0]]), ops_backend, to_host)
    assert value == pytest.approx(-math.log(1e-7), rel=1e-9)  # both terms clipped to eps = 1e-7
    np.testing.assert_array_equal(grad, [[0.0, 0.0]])


def test_bce_with_logits_by_hand(ops_backend, to_host):
    # z = 0, t = 1: log 2; z = 2, t = 0: 2 + log(1 + e^-2)
    value, grad = _run(BCEWithLogits(), np.array([[0.0, 2.0]]), np.array([[1.0, 0.0]]), ops_backend, to_host)
    assert value == pytest.approx((math.log(2) + 2 + math.log1p(math.exp(-2))) / 2, rel=1e-15)
    np.testing.assert_allclose(grad, [[-0.25, 0.8807970779778823 / 2]], rtol=1e-15)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bce_with_logits_is_stable_for_huge_logits(dtype, ops_backend, to_host):
    z = np.array([[1e4, -1e4, 1e4, -1e4]], dtype=dtype)
    t = np.array([[1.0, 0.0, 0.0, 1.0]], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        value, grad = _run(BCEWithLogits(), z, t, ops_backend, to_host)
    assert value == pytest.approx(1e4 / 2, rel=1e-6)  # two perfect answers, two off by 1e4
    np.testing.assert_allclose(grad, [[0.0, 0.0, 0.25, -0.25]], atol=1e-7)


def test_bce_on_probabilities_matches_bce_on_logits():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (8, 5))
    t = rng.uniform(0, 1, (8, 5))
    p = 1 / (1 + np.exp(-z))
    assert float(BCE()(p, t)) == pytest.approx(float(BCEWithLogits()(z, t)), rel=1e-9)


@pytest.mark.parametrize("loss", [MSE(), BCE(), BCEWithLogits()], ids=["mse", "bce", "bce_logits"])
def test_loss_gradients_match_finite_differences(loss):
    rng = np.random.default_rng(1)
    prediction = rng.uniform(0.05, 0.95, (9, 7))
    target = rng.uniform(0, 1, (9, 7))
    report = gradcheck(loss, prediction, target, max_entries=None)
    assert report.worst <= 1e-7, str(report)


@pytest.mark.parametrize("loss", [MSE(), BCE(), BCEWithLogits()], ids=["mse", "bce", "bce_logits"])
def test_each_tables_loss_gradient_matches_central_differences(loss, ops_backend, to_host):
    """dL/dp of every entry against (L(p + h) - L(p - h)) / 2h in float64, on each table."""
    backend = ops_backend.with_dtype("float64")
    loss.bind(backend)
    rng = np.random.default_rng(1)
    prediction = rng.uniform(0.05, 0.95, (6, 5))
    target = backend.asarray(rng.uniform(0, 1, (6, 5)))
    _, analytic = loss.loss_and_grad(backend.asarray(prediction), target)
    analytic = to_host(analytic).copy()
    numeric = np.empty_like(prediction)
    h = 1e-6
    for index in np.ndindex(prediction.shape):
        values = []
        for sign in (1, -1):
            moved = prediction.copy()
            moved[index] += sign * h
            values.append(float(loss(backend.asarray(moved), target)))
        numeric[index] = (values[0] - values[1]) / (2 * h)
    assert np.max(np.abs(analytic - numeric)) <= 1e-7 * np.max(np.abs(analytic)), (analytic, numeric)


def test_forward_backward_interface():
    loss = MSE()
    value = loss.forward(np.array([[1.0, 3.0]]), np.array([[0.0, 0.0]]))
    assert float(value) == 5.0
    np.testing.assert_array_equal(loss.backward(), [[1.0, 3.0]])
    np.testing.assert_array_equal(loss.backward(2.0), [[2.0, 6.0]])


def test_float32_loss_stays_float32():
    p = np.random.default_rng(2).random((4, 3), dtype=np.float32)
    for loss in (MSE(), BCE(), BCEWithLogits()):
        value, grad = loss.loss_and_grad(p, p[::-1].copy())
        assert value.dtype == np.float32 and grad.dtype == np.float32, loss


def test_loss_errors():
    with pytest.raises(ValueError, match="target has shape"):
        MSE()(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        get_loss("hinge")
    with pytest.raises(ValueError, match="eps must lie in"):
        BCE(eps=0.0)
    with pytest.raises(RuntimeError, match="before forward"):
        MSE().backward()


# ---- BCE targets must be probabilities ---------------------------------------------------
OUTSIDE = st.one_of(st.floats(-1e6, -1e-6), st.floats(1 + 1e-6, 1e6), st.sampled_from([-1.0, 2.0, 255.0]))


@pytest.mark.parametrize("loss", ["bce", "bce_logits"])
@given(bad=OUTSIDE, row=st.integers(0, 5), column=st.integers(0, 3))
def test_bce_targets_outside_0_1_are_refused_where_they_enter(loss, bad, row, column):
    """A target outside [0, 1] anywhere: a ValueError naming the range found, from
    train_step, fit, evaluate and the loss called alone; nothing trained."""
    target = np.random.default_rng(row).random((6, 4)).astype(np.float32)
    target[row, column] = np.float32(bad)
    lowest, highest = min(float(target.min()), 0.0), float(target.max())
    found = re.escape(f"range over [{float(target.min()):g}, {highest:g}]")
    model = Sequential([Dense(3, 4, "sigmoid" if loss == "bce" else "identity")], loss=loss, optimizer="sgd", seed=0)
    x = np.zeros((6, 3), np.float32)
    model.build()
    before = model.arena.values.copy()
    for call in (
        lambda: model.train_step(x, target),
        lambda: model.fit(x, target, steps=2, batch_size=3),
        lambda: model.evaluate(x, target),
        lambda: model.loss(np.full((6, 4), 0.5, np.float32), target),
    ):
        with pytest.raises(ValueError, match=rf"needs targets in \[0, 1\] \(probabilities\), but they {found}; scale the data"):
            call()
    assert lowest <= 0.0 and model.steps_trained == 0
    np.testing.assert_array_equal(model.arena.values, before)


@pytest.mark.parametrize("loss", ["bce", "bce_logits"])
def test_bce_targets_at_the_edges_are_accepted(loss):
    target = np.array([[0.0, 1.0, 0.5, 1.0]] * 4, np.float32)
    model = Sequential([Dense(3, 4, "sigmoid" if loss == "bce" else "identity")], loss=loss, optimizer="sgd", seed=0)
    history = model.fit(np.ones((4, 3), np.float32), target, steps=2, batch_size=2)
    assert len(history) == 2 and np.isfinite(model.evaluate(np.ones((4, 3), np.float32), target))


def test_an_autoencoder_on_bce_refuses_0_to_255_images():
    model = Autoencoder([Dense(4, 2)], [Dense(2, 4, "sigmoid")], loss="bce", seed=0)
    images = np.array([[0, 128, 255, 3]] * 8, np.float32)
    with pytest.raises(ValueError, match=r"range over \[0, 255\]; scale the data into \[0, 1\] \(e\.g\. divide 8-bit pixels by 255\)"):
        model.fit(images, steps=1, batch_size=4)
    model.fit(images / 255, steps=1, batch_size=4)
    assert model.steps_trained == 1
