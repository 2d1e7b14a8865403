"""The variational autoencoder: reparameterization, KL, gradients, sampling, checkpoints, MNIST."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nanoae import Dense, gradcheck, presets
from nanoae.checkpoint import load_checkpoint, restore_sampler, save_checkpoint
from nanoae.ops import reference
from nanoae.optim import Adam
from nanoae.evaluation import reconstruction_errors
from nanoae.vae import GaussianSample, VariationalAutoencoder

TOLERANCE = 1e-7


def small_vae(latent=3, loss="bce_logits", beta=1.0, seed=0, backend="numpy", features=12):
    output = "identity" if loss == "bce_logits" else "sigmoid"
    return VariationalAutoencoder(
        [Dense(features, 9, "tanh"), Dense(9, 2 * latent)],
        [Dense(latent, 9, "tanh"), Dense(9, features, output)],
        loss=loss,
        beta=beta,
        seed=seed,
        backend=backend,
    )


# ---- the math, by hand -------------------------------------------------------------------
def test_reparameterization_and_its_backward_by_hand():
    mean = np.array([[1.0, -2.0]])
    log_variance = np.array([[math.log(4.0), 0.0]])
    noise = np.array([[0.5, -1.0]])
    z = reference.gaussian_sample(mean, log_variance, noise)
    np.testing.assert_allclose(z, [[1.0 + 2.0 * 0.5, -2.0 - 1.0]])
    grad_mean, grad_log_variance = reference.gaussian_sample_backward(np.array([[1.0, 3.0]]), log_variance, noise)
    np.testing.assert_allclose(grad_mean, [[1.0, 3.0]])
    # dz/dlv = eps * sigma / 2: 0.5 * 2 / 2 = 0.5 and -1 * 1 / 2 * 3 = -1.5
    np.testing.assert_allclose(grad_log_variance, [[0.5, -1.5]])


def test_kl_by_hand():
    # KL(N(mu, s^2) || N(0, 1)) = (mu^2 + s^2 - 1 - log s^2) / 2 per unit; summed, then batch mean.
    mean = np.array([[0.0, 1.0], [2.0, 0.0]])
    log_variance = np.array([[0.0, 0.0], [math.log(2.0), math.log(0.5)]])
    per_row = [0.5, (4 + 2 - 1 - math.log(2)) / 2 + (0.5 - 1 - math.log(0.5)) / 2]
    expected = sum(per_row) / 2
    assert float(reference.gaussian_kl_loss(mean, log_variance)) == pytest.approx(expected)
    kl, grad_mean, grad_log_variance = reference.gaussian_kl_loss_and_grad(mean, log_variance)
    assert float(kl) == pytest.approx(expected)
    np.testing.assert_allclose(grad_mean, mean / 2)
    np.testing.assert_allclose(grad_log_variance, (np.exp(log_variance) - 1) / 4)
    assert float(reference.gaussian_kl_loss(np.zeros((3, 4)), np.zeros((3, 4)))) == 0.0


def test_the_objective_is_reconstruction_plus_beta_kl_over_pixels():
    vae = small_vae(beta=2.5)
    x = np.random.default_rng(0).uniform(0.05, 0.95, (6, 12)).astype(np.float32)
    noise = np.random.default_rng(1).standard_normal((6, 3)).astype(np.float32)
    with vae.hold_noise(noise=noise):
        logits = vae.forward(x)
        h = vae.encoder.forward(x)
        mean, log_variance = h[:, :3], h[:, 3:]
        z = mean + np.exp(0.5 * log_variance) * noise
        np.testing.assert_allclose(vae.decoder.forward(z), logits, rtol=1e-5, atol=1e-6)
        reconstruction = float(reference.bce_logits_loss(logits, x))
        kl = float(reference.gaussian_kl_loss(mean, log_variance))
        assert float(vae.penalty()) == pytest.approx(2.5 * kl / 12, rel=1e-5)
        loss = vae.train_step(x)
    assert loss.dtype == np.float32
    assert float(loss) == pytest.approx(reconstruction + 2.5 * kl / 12, rel=1e-5)


# ---- gradients ---------------------------------------------------------------------------
def test_gaussian_sample_layer_every_entry():
    layer = GaussianSample(4, kl_weight=0.7)
    h = np.random.default_rng(2).normal(0, 1, (5, 8))
    report = gradcheck(layer, h, max_entries=None)
    assert report.passed and report.worst <= TOLERANCE, str(report)


@st.composite
def vaes(draw):
    features = draw(st.integers(2, 20))
    hidden = draw(st.integers(1, 16))
    latent = draw(st.integers(1, 5))
    activation = draw(st.sampled_from(["tanh", "sigmoid", "leaky_relu", "relu"]))
    loss = draw(st.sampled_from(["bce_logits", "mse", "bce"]))
    beta = draw(st.sampled_from([0.0, 0.5, 1.0, 4.0]))
    batch = draw(st.integers(1, 9))
    seed = draw(st.integers(0, 2**31 - 1))
    return features, hidden, latent, activation, loss, beta, batch, seed


@given(vaes())
def test_whole_vae_in_float64_with_the_noise_held(spec):
    features, hidden, latent, activation, loss, beta, batch, seed = spec
    output = {"bce_logits": "identity", "mse": "identity", "bce": "sigmoid"}[loss]
    vae = VariationalAutoencoder(
        [Dense(features, hidden, activation), Dense(hidden, 2 * latent)],
        [Dense(latent, hidden, activation), Dense(hidden, features, output)],
        loss=loss,
        beta=beta,
        dtype="float64",
        seed=seed,
    )
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.05, 0.95, (batch, features))
    report = gradcheck(vae, x, max_entries=8, seed=seed)
    assert report.passed, str(report)
    assert all(row.rel_error <= TOLERANCE or row.max_abs_error <= 1e-10 for row in report.rows), str(report)


def test_gradcheck_sees_a_broken_kl_gradient(monkeypatch):
    vae = small_vae(beta=1.0)
    x = np.random.default_rng(0).uniform(0.05, 0.95, (4, 12))
    assert gradcheck(vae, x, max_entries=None).passed

    right = reference.gaussian_kl_loss_and_grad

    def wrong(mean, log_variance, workspace=None):
        kl, grad_mean, grad_log_variance = right(mean, log_variance)
        return kl, grad_mean, grad_log_variance * 0.5  # half the true dKL/dlv

    monkeypatch.setattr(reference, "gaussian_kl_loss_and_grad", wrong)  # the fast table delegates here too
    report = gradcheck(small_vae(beta=50.0), x, max_entries=None)
    assert not report.passed, str(report)


def test_noise_held_and_free():
    vae = small_vae()
    x = np.random.default_rng(0).uniform(0, 1, (4, 12)).astype(np.float32)
    first, second = vae.forward(x).copy(), vae.forward(x).copy()
    assert not np.allclose(first, second)  # fresh noise each pass
    with vae.hold_noise(batch=4) as noise:
        assert noise.shape == (4, 3) and noise.dtype == np.float32
        a, b = vae.forward(x).copy(), vae.forward(x).copy()
        np.testing.assert_array_equal(a, b)
        assert vae.noise_is_held and vae.static_train_step
    assert not vae.noise_is_held and not vae.static_train_step
    with pytest.raises(ValueError, match="batch= .* or noise="):
        with vae.hold_noise():
            pass
    with pytest.raises(ValueError, match=r"noise must have shape \(batch, 3\)"):
        with vae.hold_noise(noise=np.zeros((4, 2))):
            pass


# ---- inference, sampling, errors ---------------------------------------------------------
def test_encode_decode_reconstruct_and_sample():
    vae = small_vae(seed=3)
    x = np.random.default_rng(0).uniform(0, 1, (5, 12)).astype(np.float32)
    mean, log_variance = vae.encode_distribution(x)
    np.testing.assert_array_equal(vae.encode(x), mean)
    assert mean.shape == log_variance.shape == (5, 3)
    images = vae.reconstruct(x)
    np.testing.assert_allclose(images, vae.decode(mean), rtol=1e-6)
    assert images.dtype == np.float32 and images.min() >= 0 and images.max() <= 1
    state = vae.rng.bit_generator.state
    np.testing.assert_array_equal(vae.reconstruct(x), images)  # no noise at inference ...
    assert vae.rng.bit_generator.state == state  # ... and the generator untouched
    samples = vae.sample(7)
    assert samples.shape == (7, 12) and 0 <= samples.min() and samples.max() <= 1
    assert np.array_equal(small_vae(seed=3).sample(7), samples)  # seeded
    terms = vae.loss_terms(x)
    assert terms["kl"] >= 0 and terms["loss"] == pytest.approx(terms["reconstruction"] + terms["kl"] / 12)
    assert vae.evaluate(x) == pytest.approx(terms["loss"])


@pytest.mark.parametrize(
    "encoder, decoder, message",
    [
        ([Dense(12, 5)], [Dense(3, 12)], r"outputs 5 features but a VAE with a 3-unit code .* needs 2 x 3 = 6"),
        ([Dense(12, 6)], [Dense(3, 10)], "must reproduce its 12 input features"),
    ],
)
def test_bad_shapes(encoder, decoder, message):
    with pytest.raises(ValueError, match=message):
        VariationalAutoencoder(encoder, decoder)


def test_bad_beta():
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        small_vae(beta=-1.0)


# ---- checkpoints ---------------------------------------------------------------------------
def test_checkpoint_round_trip(tmp_path):
    vae = small_vae(beta=0.5, seed=1)
    x = np.random.default_rng(0).uniform(0, 1, (64, 12)).astype(np.float32)
    history = vae.fit(x, steps=5, batch_size=16)
    save_checkpoint(tmp_path / "vae.npz", vae, sampler=history.sampler)
    checkpoint = load_checkpoint(tmp_path / "vae.npz", backend="numpy")
    loaded = checkpoint.model
    assert isinstance(loaded, VariationalAutoencoder)
    assert loaded.beta == 0.5 and loaded.latent_size == 3 and loaded.steps_trained == 5
    np.testing.assert_array_equal(loaded.arena.values, vae.arena.values)
    np.testing.assert_array_equal(loaded.reconstruct(x), vae.reconstruct(x))
    assert loaded.rng.bit_generator.state == vae.rng.bit_generator.state
    # Continuing training from the file (same batches, same noise) matches the original.
    loaded.fit(x, steps=3, batch_size=16, sampler=restore_sampler(checkpoint))
    vae.fit(x, steps=3, batch_size=16)
    np.testing.assert_array_equal(loaded.arena.values, vae.arena.values)
    np.testing.assert_array_equal(loaded.sample(4), vae.sample(4))  # the generators agree too


def test_float32_stays_float32():
    vae = presets.vae(seed=0)
    x = np.random.default_rng(0).uniform(0, 1, (8, 784)).astype(np.float32)
    loss = vae.train_step(x)
    assert loss.dtype == np.float32
    assert vae.arena.values.dtype == vae.arena.grads.dtype == np.float32
    assert vae.sample(2).dtype == vae.reconstruct(x).dtype == vae.encode(x).dtype == np.float32


def test_on_every_backend(backend_name, to_host):
    vae = small_vae(backend=backend_name)
    x = np.random.default_rng(0).uniform(0, 1, (32, 12)).astype(np.float32)
    history = vae.fit(x, steps=20, batch_size=8)
    assert np.isfinite(history).all()
    assert to_host(vae.sample(3)).shape == (3, 12)


# ---- real MNIST ----------------------------------------------------------------------------
def test_vae_learns_on_mnist(mnist_dir):
    from nanoae.data import load_dataset

    train = load_dataset("mnist", "train", data_dir=mnist_dir)
    test = load_dataset("mnist", "test", data_dir=mnist_dir)
    vae = VariationalAutoencoder(
        [Dense(784, 256, "relu"), Dense(256, 16)], [Dense(8, 256, "relu"), Dense(256, 784)], optimizer=Adam(0.001), seed=0
    )
    vae.fit(train.images, steps=300, batch_size=128, log_every=50)
    errors = reconstruction_errors(vae, test.images[:2000])
    mean_image = train.images.mean(axis=0, dtype=np.float64)
    baseline = float(np.mean((test.images[:2000] - mean_image) ** 2))
    terms = vae.loss_terms(test.images[:2000])
    print(f"VAE, 300 steps: test MSE {errors['mse']:.4f} (mean image {baseline:.4f}), KL {terms['kl']:.2f} nats")
    # A decoder that learned but an encoder that did not (a broken backward through the
    # sample) can do no better than the mean image: the code would carry no information.
    assert errors["mse"] < 0.7 * baseline
    assert 1.0 < terms["kl"] < 100.0  # the code carries information, and the prior pulls on it


def test_changing_beta_changes_the_kl_weight_the_sampler_adds():
    model = presets.vae(seed=0, code_size=2, beta=1.0)
    assert model.sampling.kl_weight == pytest.approx(1.0 / 784)
    model.beta = 4.0
    assert model.beta == 4.0 and model.sampling.kl_weight == pytest.approx(4.0 / 784)
    assert model.config()["beta"] == 4.0
    with pytest.raises(ValueError, match="beta"):
        model.beta = -1.0
