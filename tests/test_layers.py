"""Dense and activations on numbers worked out by hand, on every ops table."""

import numpy as np
import pytest

from nanoae import Dense, LeakyReLU, ReLU, Sigmoid, Tanh
from nanoae.activations import Identity, resolve_activation

X = np.array([[1.0, 2.0], [3.0, -1.0]])
W = np.array([[1.0, 0.0, -1.0], [2.0, 1.0, 0.5]])
B = np.array([0.5, -1.0, 0.0])
DY = np.array([[1.0, -1.0, 2.0], [0.5, 2.0, -1.0]])
# z = x W + b = [[5.5, 1, 0], [1.5, -2, -3.5]] (by hand: row 0 is [1+4, 0+2, -1+1] + b)


def _dense(ops_backend, activation, dtype="float64"):
    layer = Dense(2, 3, activation).build(backend=ops_backend, dtype=dtype, seed=0)
    layer.weights[...] = layer.backend.asarray(W)
    layer.bias[...] = layer.backend.asarray(B)
    return layer


def test_dense_2x3_identity_by_hand(ops_backend, to_host):
    layer = _dense(ops_backend, "identity")
    backend = layer.backend
    y = layer.forward(backend.asarray(X))
    np.testing.assert_array_equal(to_host(y), [[5.5, 1.0, 0.0], [1.5, -2.0, -3.5]])
    dx = layer.backward(backend.asarray(DY))
    # dW = x^T dy: row 0 = 1*[1,-1,2] + 3*[0.5,2,-1]; row 1 = 2*[1,-1,2] - [0.5,2,-1]
    np.testing.assert_array_equal(to_host(layer.grad_weights), [[2.5, 5.0, -1.0], [1.5, -4.0, 5.0]])
    np.testing.assert_array_equal(to_host(layer.grad_bias), [1.5, 1.0, 1.0])
    # dx = dy W^T: row 0 = [1,2] - [0,1] + 2*[-1,0.5]; row 1 = 0.5*[1,2] + 2*[0,1] - [-1,0.5]
    np.testing.assert_array_equal(to_host(dx), [[-1.0, 2.0], [1.5, 2.5]])


def test_dense_2x3_relu_by_hand_zero_has_zero_slope(ops_backend, to_host):
    layer = _dense(ops_backend, "relu")
    backend = layer.backend
    y = layer.forward(backend.asarray(X))
    np.testing.assert_array_equal(to_host(y), [[5.5, 1.0, 0.0], [1.5, 0.0, 0.0]])
    dx = layer.backward(backend.asarray(DY))
    # mask z > 0 = [[1,1,0],[1,0,0]]: z = 0 at (0, 2) gets slope 0 (TensorFlow's convention)
    # dz = [[1,-1,0],[0.5,0,0]]
    np.testing.assert_array_equal(to_host(layer.grad_weights), [[2.5, -1.0, 0.0], [1.5, -2.0, 0.0]])
    np.testing.assert_array_equal(to_host(layer.grad_bias), [1.5, -1.0, 0.0])
    np.testing.assert_array_equal(to_host(dx), [[1.0, 1.0], [0.5, 1.0]])


def test_dense_skips_input_gradient_when_not_needed(ops_backend):
    layer = _dense(ops_backend, "relu")
    layer.forward(layer.backend.asarray(X))
    assert layer.backward(layer.backend.asarray(DY), need_input_grad=False) is None
    assert float(abs(layer.grad_weights).sum()) > 0


def test_backward_writes_gradients_instead_of_adding(ops_backend, to_host):
    layer = _dense(ops_backend, "identity")
    for _ in range(3):
        layer.forward(layer.backend.asarray(X))
        layer.backward(layer.backend.asarray(DY))
    np.testing.assert_array_equal(to_host(layer.grad_bias), [1.5, 1.0, 1.0])


def test_backward_before_forward_is_a_clear_error():
    layer = Dense(2, 3).build(backend="numpy")
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.ones((1, 3), np.float32))


Z = np.array([[-2.0, -0.5, 0.0, 0.5, 2.0]])
CASES = {
    "identity": (Identity(), Z, np.ones_like(Z)),
    "relu": (ReLU(), [[0.0, 0.0, 0.0, 0.5, 2.0]], [[0.0, 0.0, 0.0, 1.0, 1.0]]),
    "leaky_relu": (LeakyReLU(0.2), [[-0.4, -0.1, 0.0, 0.5, 2.0]], [[0.2, 0.2, 0.2, 1.0, 1.0]]),
    # sigmoid(0.5) = 0.6224593312018546, sigmoid(2) = 0.8807970779778823; s' = s (1 - s)
    "sigmoid": (
        Sigmoid(),
        [[0.11920292202211755, 0.3775406687981454, 0.5, 0.6224593312018546, 0.8807970779778823]],
        [[0.10499358540350652, 0.2350037122015945, 0.25, 0.2350037122015945, 0.10499358540350652]],
    ),
    # tanh(0.5) = 0.46211715726000974, tanh(2) = 0.9640275800758169; tanh' = 1 - tanh^2
    "tanh": (
        Tanh(),
        [[-0.9640275800758169, -0.46211715726000974, 0.0, 0.46211715726000974, 0.9640275800758169]],
        [[0.07065082485316443, 0.7864477329659274, 1.0, 0.7864477329659274, 0.07065082485316443]],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_activation_at_chosen_points(name, ops_backend, to_host):
    activation, expected_y, expected_slope = CASES[name]
    activation.build(backend=ops_backend, dtype="float64")
    backend = activation.backend
    y = activation.forward(backend.asarray(Z))
    np.testing.assert_allclose(to_host(y), expected_y, rtol=1e-15, atol=1e-16)
    slope = activation.backward(backend.asarray(np.ones_like(Z)))
    np.testing.assert_allclose(to_host(slope), expected_slope, rtol=1e-14, atol=1e-16)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_is_stable_for_huge_inputs(dtype, ops_backend, to_host):
    activation = Sigmoid().build(backend=ops_backend, dtype=dtype)
    z = activation.backend.asarray(np.array([[-1e4, -100.0, -30.0, 30.0, 100.0, 1e4]], dtype=dtype))
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = to_host(activation.forward(z))
    assert np.all(np.isfinite(y))
    assert y[0, 0] == 0.0 and y[0, -1] == 1.0
    np.testing.assert_allclose(y[0, 2], 9.357622968840175e-14, rtol=1e-5)  # e^-30 / (1 + e^-30)


def test_dense_fused_activation_equals_separate_layers(ops_backend, to_host):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4))
    for name in ["relu", "leaky_relu", "sigmoid", "tanh", "identity"]:
        fused = Dense(4, 3, name).build(backend=ops_backend, dtype="float64", seed=1)
        plain = Dense(4, 3).build(backend=ops_backend, dtype="float64", seed=1)
        activation = resolve_activation(name).build(backend=ops_backend, dtype="float64")
        xb = fused.backend.asarray(x)
        expected = to_host(activation.forward(plain.forward(xb)))
        np.testing.assert_allclose(to_host(fused.forward(xb)), expected, rtol=1e-15)


def test_weights_are_in_by_out_like_tensorflow():
    layer = Dense(5, 2).build(backend="numpy", seed=0)
    assert layer.weights.shape == (5, 2) and layer.bias.shape == (2,)
    assert layer.parameters().keys() == {"weights", "bias"}


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"activation": "swish"}, ValueError, "unknown activation 'swish'"),
        ({"activation": 3}, TypeError, "activation must be a name"),
        ({"init": "orthogonal"}, ValueError, "unknown initializer 'orthogonal'"),
        ({"bias_init": "ones"}, ValueError, "unknown initializer 'ones'"),
        ({"activation": "relu", "alpha": 0.1}, ValueError, "alpha only applies"),
        ({"activation": "leaky_relu", "alpha": -0.1}, ValueError, "alpha must be a finite number >= 0"),
    ],
)
def test_bad_layer_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        Dense(3, 2, **kwargs)


@pytest.mark.parametrize("sizes", [(0, 2), (2, -1), (2.5, 2), (True, 2)])
def test_bad_layer_sizes(sizes):
    with pytest.raises((ValueError, TypeError), match="features"):
        Dense(*sizes)


def test_layer_call_validates_input():
    layer = Dense(3, 2)
    with pytest.raises(ValueError, match="has 4 features per row but the model expects 3"):
        layer(np.ones((2, 4), np.float32))
    assert layer(np.ones((2, 3))).dtype == np.float32  # float64 input is narrowed to the model's dtype
