"""L2 weight decay, L1 on the code, denoising corruption: values, gradients, training, MNIST."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nanoae import Adam, Autoencoder, Dense, Sequential, gradcheck, presets
from nanoae.checkpoint import load_checkpoint, save_checkpoint
from nanoae.ops import REFERENCE_TABLE, cpu, reference
from nanoae.regularizers import ActivityL1, GaussianNoise, MaskingNoise, get_corruption, set_weight_decay

TOLERANCE = 1e-7


def tiny(corruption=None, l1=None, decay=0.0, seed=0, backend="numpy"):
    encoder = [Dense(20, 12, "tanh", weight_decay=decay), Dense(12, 4, "tanh", weight_decay=decay)]
    if l1 is not None:
        encoder.append(ActivityL1(l1))
    return Autoencoder(
        encoder, [Dense(4, 12, "tanh"), Dense(12, 20, "sigmoid")], optimizer=Adam(0.01), corruption=corruption, seed=seed, backend=backend
    )


def data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    codes = rng.uniform(-1, 1, (n, 3))
    return (0.5 + codes @ rng.normal(0, 0.2, (3, 20))).clip(0, 1).astype(np.float32)


# ---- L2 weight decay ------------------------------------------------------------------------
def test_weight_decay_penalty_and_gradient_by_hand():
    layer = Dense(3, 2, weight_decay=0.5).build(dtype="float64", seed=0)
    w = layer.weights.copy()
    assert float(layer.penalty()) == pytest.approx(0.25 * float((w * w).sum()))
    x = np.ones((1, 3))
    layer.forward(x)
    layer.backward(np.zeros((1, 2)))
    np.testing.assert_allclose(layer.grad_weights, 0.5 * w)  # data gradient 0: only lambda W
    np.testing.assert_array_equal(layer.grad_bias, 0)  # biases are not decayed
    assert Dense(3, 2).build(seed=0).penalty() == 0.0


@given(st.floats(1e-4, 2.0), st.sampled_from(["relu", "tanh", "identity"]), st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_weight_decay_gradcheck(strength, activation, batch, seed):
    model = Sequential([Dense(6, 5, activation, weight_decay=strength), Dense(5, 3, weight_decay=strength / 3)], loss="mse")
    model.build(dtype="float64", seed=seed)
    rng = np.random.default_rng(seed)
    report = gradcheck(model, rng.normal(size=(batch, 6)), rng.uniform(size=(batch, 3)), max_entries=12, seed=seed)
    assert report.passed, str(report)


def test_train_step_reports_loss_plus_penalty_and_set_weight_decay():
    model = tiny()
    x = data(16)
    plain = float(model.loss(model.forward(x), x))
    set_weight_decay(model, 1e-2)
    assert all(layer.weight_decay == 1e-2 for layer in [*model.encoder, *model.decoder])
    expected = plain + sum(0.5e-2 * float((layer.weights.astype(np.float64) ** 2).sum()) for layer in [*model.encoder, *model.decoder])
    loss = model.train_step(x)
    assert loss.dtype == np.float32
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_weight_decay_shrinks_the_weights():
    x = data()
    free, decayed = tiny(seed=1), tiny(decay=0.05, seed=1)
    free.fit(x, steps=200, batch_size=32)
    decayed.fit(x, steps=200, batch_size=32)
    norm = lambda m: sum(float((layer.weights**2).sum()) for layer in m.encoder)  # noqa: E731
    assert norm(decayed) < 0.7 * norm(free)


# ---- L1 on the code -------------------------------------------------------------------------
def test_l1_penalty_by_hand():
    h = np.array([[1.0, -2.0], [0.0, 3.0]])
    penalty, grad = reference.l1_penalty_and_grad(h, 0.4)
    assert float(penalty) == pytest.approx(0.4 * 6 / 4)
    np.testing.assert_allclose(grad, 0.4 / 4 * np.array([[1, -1], [0, 1]]))


def test_activity_l1_gradcheck_alone_and_in_a_model():
    x = np.random.default_rng(0).normal(size=(5, 6))
    report = gradcheck(ActivityL1(0.3), x, max_entries=None)
    assert report.passed and report.worst <= TOLERANCE, str(report)
    model = tiny(l1=0.2, decay=0.01)
    report = gradcheck(model, data(6).astype(np.float64), max_entries=None)
    assert report.passed and report.worst <= TOLERANCE, str(report)


def test_l1_makes_the_code_smaller():
    x = data()
    plain, sparse = tiny(seed=2), tiny(l1=0.05, seed=2)
    plain.fit(x, steps=300, batch_size=32)
    sparse.fit(x, steps=300, batch_size=32)
    assert np.abs(sparse.encode(x)).mean() < 0.5 * np.abs(plain.encode(x)).mean()
    assert sparse.code_size == 4


# ---- corruption -----------------------------------------------------------------------------
def test_gaussian_noise_stays_in_range_is_seeded_and_float32():
    from nanoae.backend import get_backend

    backend = get_backend("numpy")
    x = np.random.default_rng(0).uniform(0, 1, (50, 30)).astype(np.float32)
    noisy = GaussianNoise(0.5).corrupt(x, np.random.default_rng(3), backend)
    assert noisy.dtype == np.float32 and noisy.min() >= 0 and noisy.max() <= 1
    np.testing.assert_array_equal(noisy, GaussianNoise(0.5).corrupt(x, np.random.default_rng(3), backend))
    middle = np.full((100, 100), 0.5, dtype=np.float32)  # far from the clip at 0 and 1
    spread = GaussianNoise(0.1).corrupt(middle, np.random.default_rng(4), backend) - middle
    assert abs(float(spread.mean())) < 0.005 and 0.095 < float(spread.std()) < 0.105


def test_masking_noise_drops_the_right_share():
    from nanoae.backend import get_backend

    x = np.ones((200, 100), dtype=np.float32)
    noisy = MaskingNoise(0.3).corrupt(x, np.random.default_rng(0), get_backend("numpy"))
    assert noisy.dtype == np.float32
    assert set(np.unique(noisy).tolist()) == {0.0, 1.0}
    assert abs(float((noisy == 0).mean()) - 0.3) < 0.01


@pytest.mark.parametrize(
    "spec, expected",
    [("gaussian", GaussianNoise(0.5)), ("gaussian:0.2", GaussianNoise(0.2)), ("mask:0.25", MaskingNoise(0.25)), ({"kind": "mask", "p": 0.1}, MaskingNoise(0.1))],
)
def test_corruption_specs(spec, expected):
    assert get_corruption(spec).config() == expected.config()


@pytest.mark.parametrize(
    "spec, message",
    [("salt", "unknown corruption 'salt'"), ("gaussian:x", "not a number"), ("mask:1.5", r"p must lie in \(0, 1\)"), ("gaussian:-1", "std must be a finite number > 0")],
)
def test_bad_corruption_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        get_corruption(spec)


def test_denoising_trains_on_corrupted_inputs_against_clean_targets():
    model = tiny(corruption=MaskingNoise(0.5), seed=4)
    x = data(16)
    state = model.rng.bit_generator.state
    keep = np.random.default_rng(0)
    keep.bit_generator.state = state
    noisy = x * (keep.random(x.shape, dtype=np.float32) >= 0.5)
    expected = float(model.loss(model.forward(noisy), x))
    assert float(model.train_step(x)) == pytest.approx(expected, rel=1e-6)
    assert not model.static_train_step and tiny().static_train_step
    np.testing.assert_array_equal(model.reconstruct(x), model.reconstruct(x))  # no noise at inference


def test_checkpoint_keeps_every_regularizer(tmp_path):
    model = tiny(corruption=GaussianNoise(0.3), l1=0.01, decay=1e-3)
    model.fit(data(), steps=5, batch_size=32)
    save_checkpoint(tmp_path / "reg.npz", model)
    loaded = load_checkpoint(tmp_path / "reg.npz", backend="numpy").model
    assert loaded.config() == model.config()
    assert loaded.corruption.config() == {"kind": "gaussian", "std": 0.3}
    assert isinstance(loaded.encoder[2], ActivityL1) and loaded.encoder[0].weight_decay == 1e-3
    np.testing.assert_array_equal(loaded.reconstruct(data(8)), model.reconstruct(data(8)))


def test_presets_build_and_train_one_step():
    x = np.random.default_rng(0).uniform(0, 1, (4, 784)).astype(np.float32)
    for name in ("denoising", "denoising-mask", "sparse", "weight-decay"):
        model = presets.get_preset(name)(seed=0, code_size=16)
        assert model.code_size == 16
        assert np.isfinite(float(model.train_step(x)))


def test_on_every_backend(backend_name):
    model = tiny(corruption=GaussianNoise(0.2), l1=0.01, decay=1e-3, backend=backend_name)
    history = model.fit(data(), steps=40, batch_size=32)
    assert history[-1] < history[0]


# ---- real MNIST -----------------------------------------------------------------------------
def test_denoising_autoencoder_learns_on_mnist(mnist_dir):
    from nanoae.backend import get_backend
    from nanoae.data import load_dataset

    train = load_dataset("mnist", "train", data_dir=mnist_dir)
    test = load_dataset("mnist", "test", data_dir=mnist_dir).images[:2000]
    model = Autoencoder(
        [Dense(784, 256, "relu"), Dense(256, 32, "relu")],
        [Dense(32, 256, "relu"), Dense(256, 784, "sigmoid")],
        optimizer=Adam(0.001),
        corruption=GaussianNoise(0.5),
        seed=0,
    )
    model.fit(train.images, steps=300, batch_size=128, log_every=50)
    noisy = GaussianNoise(0.5).corrupt(test, np.random.default_rng(123), get_backend("numpy"))
    noisy_error = float(np.mean((noisy - test) ** 2))
    denoised_error = float(np.mean((model.reconstruct(noisy) - test) ** 2))
    mean_image = float(np.mean((test - train.images.mean(axis=0)) ** 2))
    print(f"denoising, 300 steps: noisy input {noisy_error:.4f}, denoised {denoised_error:.4f}, mean image {mean_image:.4f}")
    assert denoised_error < 0.4 * noisy_error  # the mean image would give 0.55 of it
    assert denoised_error < 0.7 * mean_image  # it reads the digit, not just the average


def test_fast_cpu_ops_compute_the_reference_functions():
    """Each table's L2 penalty and gradient (the CPU table's own code, with and without a
    workspace) against the formulas evaluated in float64: R = s/2 sum W^2, dR/dW = s W."""
    rng = np.random.default_rng(0)
    tables = [REFERENCE_TABLE, cpu.load("numpy")] + ([cpu.load("numba")] if cpu.numba_available()[0] else [])
    for dtype, rtol in ((np.float32, 1e-6), (np.float64, 1e-13)):
        weights = rng.normal(size=(7, 5)).astype(dtype)
        start = rng.normal(size=(7, 5)).astype(dtype)
        expected_grad = start.astype(np.float64) + 0.3 * weights.astype(np.float64)
        expected_penalty = 0.15 * float((weights.astype(np.float64) ** 2).sum())
        for table in tables:
            for workspace in (None, {}):
                got = start.copy()
                table.l2_penalty_grad(weights, got, 0.3, workspace)
                assert got.dtype == dtype
                # atol: where start and 0.3 W nearly cancel, the rounding of terms of size ~1 remains
                np.testing.assert_allclose(got, expected_grad, rtol=rtol, atol=4 * rtol, err_msg=table.name)
            penalty = table.l2_penalty(weights, 0.3)
            assert isinstance(penalty, np.generic | np.ndarray) and penalty.dtype == dtype, table.name
            assert float(penalty) == pytest.approx(expected_penalty, rel=rtol), table.name
