"""Initializers: empirical statistics, TensorFlow's fan rule for biases, the tutorial preset."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nanoae
from nanoae.init import (
    INITIALIZERS,
    compute_fans,
    get_initializer,
    glorot_normal,
    glorot_uniform,
    he_normal,
    he_uniform,
    initializer_name,
    zeros,
)
from nanoae.layers import Dense
from nanoae.models import Sequential
from nanoae.optim import RMSProp

TRUNC_STD = 0.87962566103423978  # std of N(0, 1) truncated to [-2, 2]


def rng(seed=0):
    return np.random.default_rng(seed)


# ---- empirical statistics on large shapes ---------------------------------------------
@pytest.mark.parametrize("shape", [(1000, 1000), (4000, 500)])
def test_glorot_uniform_statistics(shape):
    fan_in, fan_out = shape
    limit = math.sqrt(6.0 / (fan_in + fan_out))  # (1000, 1000): sqrt(0.003) = 0.0547722...
    x = glorot_uniform(shape, rng(0))
    assert x.shape == shape and x.dtype == np.float64
    assert x.max() <= limit and x.min() >= -limit
    assert x.max() > 0.999 * limit and x.min() < -0.999 * limit  # reaches the bounds
    target = 2.0 / (fan_in + fan_out)
    assert x.var() == pytest.approx(target, rel=0.02)
    assert abs(x.mean()) < 5 * math.sqrt(target / x.size)
    # uniform: a quarter of the draws in each quarter of [-limit, limit]
    counts = np.histogram(x, bins=4, range=(-limit, limit))[0] / x.size
    np.testing.assert_allclose(counts, 0.25, atol=0.005)


@pytest.mark.parametrize("shape", [(1000, 1000), (4000, 500)])
def test_he_uniform_statistics(shape):
    fan_in = shape[0]
    limit = math.sqrt(6.0 / fan_in)
    x = he_uniform(shape, rng(1))
    assert x.max() <= limit and x.min() >= -limit
    assert x.max() > 0.999 * limit and x.min() < -0.999 * limit
    assert x.var() == pytest.approx(2.0 / fan_in, rel=0.02)
    assert abs(x.mean()) < 5 * math.sqrt(2.0 / fan_in / x.size)


@pytest.mark.parametrize(
    "init, target_variance",
    [
        (glorot_normal, lambda fi, fo: 2.0 / (fi + fo)),
        (he_normal, lambda fi, fo: 2.0 / fi),
    ],
    ids=["glorot_normal", "he_normal"],
)
@pytest.mark.parametrize("shape", [(1000, 1000), (4000, 500)])
def test_truncated_normal_statistics(init, target_variance, shape):
    fan_in, fan_out = shape
    target = target_variance(fan_in, fan_out)
    sigma = math.sqrt(target) / TRUNC_STD  # the untruncated normal's std
    x = init(shape, rng(2))
    assert x.shape == shape and x.dtype == np.float64
    assert np.abs(x).max() <= 2 * sigma  # truncated at two sigma
    assert np.abs(x).max() > 0.99 * 2 * sigma  # ... and not narrower
    assert x.var() == pytest.approx(target, rel=0.02)
    assert abs(x.mean()) < 5 * math.sqrt(target / x.size)
    # a normal, not a uniform: P(|z| < 1 | |z| <= 2) = 0.682689 / 0.954500 = 0.715233
    inside_one_sigma = np.mean(np.abs(x) < sigma)
    assert inside_one_sigma == pytest.approx(0.682689492 / 0.954499736, abs=0.005)


def test_zeros_is_zeros_and_draws_nothing():
    generator = rng(3)
    before = generator.bit_generator.state
    x = zeros((40, 7), generator)
    assert x.shape == (40, 7) and x.dtype == np.float64
    assert not np.any(x)
    assert generator.bit_generator.state == before
    assert not np.any(zeros((5,)))


# ---- fans and the 1-D bias rule -----------------------------------------------------------
def test_compute_fans_examples():
    assert compute_fans(()) == (1, 1)
    assert compute_fans((7,)) == (7, 7)
    assert compute_fans((784,)) == (784, 784)
    assert compute_fans((3, 5)) == (3, 5)
    assert compute_fans((784, 256)) == (784, 256)
    # 3-D and up: receptive field times the last two dimensions
    assert compute_fans((2, 3, 4, 5)) == (4 * 6, 5 * 6)
    assert compute_fans(np.array([3, 5]).tolist()) == (3, 5)
    assert all(type(f) is int for f in compute_fans((np.int64(3), np.int64(5))))


@given(st.integers(1, 10_000))
def test_compute_fans_1d(n):
    assert compute_fans((n,)) == (n, n)


@given(st.integers(1, 10_000), st.integers(1, 10_000))
def test_compute_fans_2d(fan_in, fan_out):
    assert compute_fans((fan_in, fan_out)) == (fan_in, fan_out)


def test_bias_limit_784():
    limit = math.sqrt(3.0 / 784)
    assert limit == pytest.approx(0.0618589574, rel=1e-9)
    for name in ("glorot_uniform", "tf1_xavier", "xavier_uniform"):
        b = get_initializer(name)((784,), rng(4))
        assert b.shape == (784,)
        assert np.abs(b).max() <= limit
        assert np.abs(b).max() > 0.95 * limit  # 784 draws come close to the edge
        assert np.any(b)


def test_bias_rule_statistics_on_a_long_vector():
    n = 400_000
    limit = math.sqrt(3.0 / n)  # fan_in = fan_out = n: sqrt(6 / 2n)
    b = glorot_uniform((n,), rng(5))
    assert np.abs(b).max() <= limit and np.abs(b).max() > 0.999 * limit
    assert b.var() == pytest.approx(1.0 / n, rel=0.02)


def test_scalar_shape():
    x = glorot_uniform((), rng(6))
    assert np.shape(x) == ()
    assert abs(float(x)) <= math.sqrt(3.0)  # fans (1, 1): sqrt(6 / 2)


shapes_2d = st.tuples(st.integers(1, 60), st.integers(1, 60))
shapes_any = st.one_of(st.tuples(st.integers(1, 300)), shapes_2d)


@given(shape=shapes_any, seed=st.integers(0, 2**32 - 1))
def test_uniform_initializers_stay_in_bounds(shape, seed):
    fan_in, fan_out = (shape[0], shape[0]) if len(shape) == 1 else shape
    x = glorot_uniform(shape, rng(seed))
    assert x.shape == shape and x.dtype == np.float64
    assert np.all(np.abs(x) <= math.sqrt(6.0 / (fan_in + fan_out)))
    y = he_uniform(shape, rng(seed))
    assert np.all(np.abs(y) <= math.sqrt(6.0 / fan_in))


@given(shape=shapes_any, seed=st.integers(0, 2**32 - 1))
def test_normal_initializers_truncate(shape, seed):
    fan_in, fan_out = (shape[0], shape[0]) if len(shape) == 1 else shape
    x = glorot_normal(shape, rng(seed))
    assert x.shape == shape and np.all(np.isfinite(x))
    assert np.all(np.abs(x) <= 2 * math.sqrt(2.0 / (fan_in + fan_out)) / TRUNC_STD)
    y = he_normal(shape, rng(seed))
    assert np.all(np.abs(y) <= 2 * math.sqrt(2.0 / fan_in) / TRUNC_STD)


@given(shape=shapes_2d, seed=st.integers(0, 2**32 - 1))
def test_same_generator_state_same_draws(shape, seed):
    for init in (glorot_uniform, glorot_normal, he_uniform, he_normal):
        np.testing.assert_array_equal(init(shape, rng(seed)), init(shape, rng(seed)))


# ---- the tutorial preset -------------------------------------------------------------------
@pytest.fixture(scope="module")
def tutorial():
    return nanoae.presets.tutorial(seed=0)


def test_tutorial_architecture(tutorial):
    encoder = [(layer.in_features, layer.out_features) for layer in tutorial.encoder]
    decoder = [(layer.in_features, layer.out_features) for layer in tutorial.decoder]
    assert encoder == [(784, 784), (784, 256), (256, 128)]
    assert decoder == [(128, 128), (128, 256), (256, 784)]
    for layer in [*tutorial.encoder, *tutorial.decoder]:
        assert isinstance(layer, Dense)
        assert layer.activation.name == "relu"
    assert (tutorial.in_features, tutorial.code_size, tutorial.out_features) == (784, 128, 784)
    assert tutorial.loss.name == "mse"
    opt = tutorial.optimizer
    assert isinstance(opt, RMSProp)
    assert (opt.flavor, opt.lr, opt.rho, opt.eps, opt.momentum) == ("tf1", 0.001, 0.9, 1e-10, 0.0)
    assert opt.arena is tutorial.arena
    assert np.all(tutorial.backend.to_host(opt.state["mean_square"]) == 1.0)
    n_params = 784 * 784 + 784 + 784 * 256 + 256 + 256 * 128 + 128 + 128 * 128 + 128 + 128 * 256 + 256 + 256 * 784 + 784
    assert tutorial.arena.count == n_params


def test_tutorial_initial_values_are_within_the_xavier_bounds(tutorial):
    to_host = tutorial.backend.to_host
    params = tutorial.parameters()
    assert len(params) == 12
    for layer_name, layer in [*(("encoder." + str(i), l) for i, l in enumerate(tutorial.encoder)),
                              *(("decoder." + str(i), l) for i, l in enumerate(tutorial.decoder))]:
        w = to_host(params[layer_name + ".weights"])
        b = to_host(params[layer_name + ".bias"])
        fan_in, fan_out = layer.in_features, layer.out_features
        assert w.shape == (fan_in, fan_out) and b.shape == (fan_out,)
        w_limit = np.float32(math.sqrt(6.0 / (fan_in + fan_out)))  # model dtype is float32
        b_limit = np.float32(math.sqrt(3.0 / fan_out))
        assert np.abs(w).max() <= w_limit, layer_name
        assert np.abs(w).max() > 0.99 * w_limit, layer_name
        assert np.abs(b).max() <= b_limit, layer_name
        assert np.any(b != 0), f"{layer_name}: the tutorial's biases are Xavier-drawn, not zeros"
        assert np.abs(b).max() > 0.8 * b_limit, layer_name  # drawn from the 1-D rule's range
        assert w.var() == pytest.approx(2.0 / (fan_in + fan_out), rel=0.1), layer_name
    first_bias = to_host(params["encoder.0.bias"])
    assert np.abs(first_bias).max() <= 0.0618589574  # n = 784


def test_tutorial_same_seed_same_parameters(tutorial):
    again = nanoae.presets.tutorial(seed=0)
    np.testing.assert_array_equal(tutorial.backend.to_host(tutorial.arena.values), again.backend.to_host(again.arena.values))
    other = nanoae.presets.tutorial(seed=1)
    a = tutorial.backend.to_host(tutorial.arena.values)
    b = other.backend.to_host(other.arena.values)
    real = a != 0
    assert not np.array_equal(a, b)
    assert np.mean(a[real] == b[real]) < 0.001


# ---- seeds and reproducibility --------------------------------------------------------------
def small(seed, dtype="float64", backend="numpy", init="glorot_uniform", bias_init="glorot_uniform"):
    return Sequential([Dense(13, 7, init=init, bias_init=bias_init), Dense(7, 3, "relu", init="he_normal")]).build(
        backend=backend, dtype=dtype, seed=seed
    )


@given(seed=st.integers(0, 2**32 - 1))
def test_same_seed_same_initial_parameters(seed):
    a, b = small(seed), small(seed)
    np.testing.assert_array_equal(a.arena.values, b.arena.values)
    c = small(seed + 1)
    assert not np.array_equal(a.arena.values, c.arena.values)


def test_same_seed_same_parameters_on_every_backend(backend_name, to_host):
    ref = small(11)
    other = small(11, backend=backend_name)
    np.testing.assert_array_equal(to_host(other.arena.values), ref.arena.values)


def test_float32_model_gets_the_float64_draws_rounded():
    a64 = small(7, "float64")
    a32 = small(7, "float32")
    assert a32.arena.values.dtype == np.float32
    np.testing.assert_array_equal(a32.arena.values, a64.arena.values.astype(np.float32))


def test_draws_follow_spec_order_from_one_generator():
    net = small(21)
    generator = np.random.default_rng(21)
    w0 = glorot_uniform((13, 7), generator)
    b0 = glorot_uniform((7,), generator)
    w1 = he_normal((7, 3), generator)
    params = net.parameters()
    np.testing.assert_array_equal(params["0.weights"], w0)
    np.testing.assert_array_equal(params["0.bias"], b0)
    np.testing.assert_array_equal(params["1.weights"], w1)
    assert not np.any(params["1.bias"])  # Dense's default bias_init is zeros


# ---- names and custom initializers ------------------------------------------------------------
@pytest.mark.parametrize("name", ["glorot", "Glorot_Uniform", "xavier", "lecun_normal", ""])
def test_unknown_initializer_name(name):
    with pytest.raises(ValueError, match=f"unknown initializer {name!r}"):
        get_initializer(name)
    with pytest.raises(ValueError, match="unknown initializer"):
        Dense(3, 4, init=name)
    with pytest.raises(ValueError, match="unknown initializer"):
        Dense(3, 4, bias_init=name)


def test_non_callable_non_string_initializer():
    with pytest.raises(ValueError, match="unknown initializer"):
        get_initializer(3)


def test_registry_names():
    assert get_initializer("tf1_xavier") is glorot_uniform
    assert get_initializer("xavier_uniform") is glorot_uniform
    assert get_initializer("xavier_normal") is glorot_normal
    assert set(INITIALIZERS) >= {"glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "zeros", "tf1_xavier"}


def test_custom_callable_initializer(backend_name, to_host):
    calls = []

    def ramp(shape, generator):
        calls.append((shape, type(generator)))
        return np.arange(math.prod(shape), dtype=np.float64).reshape(shape) / 10

    def halves(shape, generator):
        return np.full(shape, 0.5)

    layer = Dense(3, 4, init=ramp, bias_init=halves)
    net = Sequential([layer]).build(backend=backend_name, dtype="float64", seed=0)
    np.testing.assert_array_equal(to_host(net.parameters()["0.weights"]), np.arange(12.0).reshape(3, 4) / 10)
    np.testing.assert_array_equal(to_host(net.parameters()["0.bias"]), np.full(4, 0.5))
    assert calls == [((3, 4), np.random.Generator)]
    assert get_initializer(ramp) is ramp
    assert initializer_name(ramp) == "ramp"
    assert layer.config()["init"] == "ramp" and layer.config()["bias_init"] == "halves"


def test_custom_initializer_can_use_the_generator():
    def normal(shape, generator):
        return generator.normal(0.0, 0.01, size=shape)

    a = Sequential([Dense(5, 6, init=normal)]).build(backend="numpy", dtype="float64", seed=3)
    b = Sequential([Dense(5, 6, init=normal)]).build(backend="numpy", dtype="float64", seed=3)
    np.testing.assert_array_equal(a.parameters()["0.weights"], b.parameters()["0.weights"])
    np.testing.assert_array_equal(a.parameters()["0.weights"], np.random.default_rng(3).normal(0.0, 0.01, (5, 6)))
