"""nanoae's Xavier/Glorot uniform against TensorFlow's, weights and the 1-D bias rule.

The tutorial initializes weights *and biases* with ``tf.contrib.layers.xavier_initializer()``
(variance scaling, fan average, uniform). On a 1-D bias of length n TensorFlow's fan rule
gives fan_in = fan_out = n, so U(+-sqrt(3/n)). nanoae's ``glorot_uniform`` claims the same
distribution, for weights and biases; here a two-sample Kolmogorov-Smirnov test on large
draws checks it against Keras 3's ``GlorotUniform`` and against the TF1 rules still in
TensorFlow 2 (``tf.compat.v1.glorot_uniform_initializer`` and the contrib xavier's
``variance_scaling(scale=1, mode="fan_avg", distribution="uniform")``).

Every draw has a fixed seed, so the statistics are the same on every run. A sample
passes when its KS statistic D is below the critical value at significance 1e-3
(p > 1e-3; docs/fidelity.md lists D / critical D, which must stay below 1); a control shows the test tells a wrong fan rule apart.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from nanoae import presets
from nanoae.init import glorot_uniform

pytestmark = pytest.mark.oracle

ALPHA = 1e-3
SAMPLES = 100_000  # values per side


def critical_d(n: int, m: int, alpha: float = ALPHA) -> float:
    """Two-sample KS critical value: D above it means p < alpha (asymptotic formula)."""
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


def nanoae_draws(shape, total: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    size = math.prod(shape)
    return np.concatenate([glorot_uniform(shape, rng).ravel() for _ in range(-(-total // size))])


def tf_draws(make, shape, total: int) -> np.ndarray:
    """Repeated draws of one shape, each initializer with its own fixed seed."""
    size = math.prod(shape)
    return np.concatenate([np.asarray(make(seed)(shape=shape, dtype="float64")).ravel() for seed in range(-(-total // size))])


def tf_rules(tf):
    return {
        "keras GlorotUniform": lambda seed: tf.keras.initializers.GlorotUniform(seed=seed),
        "tf1 glorot_uniform_initializer": lambda seed: tf.compat.v1.glorot_uniform_initializer(seed=seed),
        "tf1 contrib xavier (variance_scaling fan_avg uniform)": lambda seed: tf.compat.v1.initializers.variance_scaling(
            scale=1.0, mode="fan_avg", distribution="uniform", seed=seed
        ),
    }


@pytest.mark.parametrize(
    "shape",
    [(784, 256), (128, 128), (784,), (128,)],
    ids=["weights-784x256", "weights-128x128", "bias-784", "bias-128"],
)
def test_glorot_uniform_has_tensorflows_distribution(tf, scipy_stats, fidelity, shape):
    ours = nanoae_draws(shape, SAMPLES, seed=12345)
    fan_in, fan_out = (shape[0], shape[0]) if len(shape) == 1 else shape
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    assert np.abs(ours).max() <= limit
    for rule, make in tf_rules(tf).items():
        theirs = tf_draws(make, shape, SAMPLES)
        assert np.abs(theirs).max() <= limit * (1 + 1e-12), f"{rule} exceeds the limit {limit} for {shape}"
        result = scipy_stats.ks_2samp(ours, theirs)
        bound = critical_d(ours.size, theirs.size)
        fidelity(f"init glorot_uniform {shape} vs {rule} (KS D / critical D)", "tensorflow", "float64", result.statistic / bound, 1.0)
        assert result.statistic < bound and result.pvalue > ALPHA, (
            f"{shape}: nanoae vs {rule}: KS D={result.statistic:.2e} (critical {bound:.2e}), p={result.pvalue:.2e}"
        )
    # Both against the exact law U(-limit, limit).
    uniform = scipy_stats.uniform(loc=-limit, scale=2 * limit).cdf
    assert scipy_stats.kstest(ours, uniform).pvalue > ALPHA


def test_the_test_tells_a_wrong_bias_rule_apart(tf, scipy_stats):
    """Control: a bias drawn as a (1, n) matrix (fan_in 1, limit sqrt(6/(n+1)), 1.41 times wider)
    must fail the same test, or the test above proves nothing."""
    ours = nanoae_draws((784,), SAMPLES, seed=12345)
    wrong = tf_draws(lambda seed: tf.keras.initializers.GlorotUniform(seed=seed), (1, 784), SAMPLES)
    result = scipy_stats.ks_2samp(ours, wrong)
    assert result.statistic > 10 * critical_d(ours.size, wrong.size) and result.pvalue < 1e-100


def test_tutorial_preset_tensors_follow_tf1_xavier(tf, scipy_stats, fidelity):
    """Each of the tutorial model's 12 tensors (seed 0) against a TF1 xavier draw of its shape."""
    model = presets.tutorial(seed=0, backend="numpy", dtype="float64")
    for index, (name, view) in enumerate(model.parameters().items()):
        ours = np.asarray(view).ravel()
        theirs = np.asarray(tf.compat.v1.glorot_uniform_initializer(seed=index)(shape=view.shape, dtype=tf.float64)).ravel()
        result = scipy_stats.ks_2samp(ours, theirs)
        bound = critical_d(ours.size, theirs.size)
        fidelity("init tutorial preset, 12 tensors vs tf1 xavier (KS D / critical D)", "tensorflow", "float64", result.statistic / bound, 1.0)
        assert result.pvalue > ALPHA, f"{name}: KS D={result.statistic:.2e}, p={result.pvalue:.2e}"
