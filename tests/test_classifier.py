"""Softmax cross-entropy, the Classifier (scratch / finetune / probe), label subsets, MNIST."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nanoae
from nanoae import Autoencoder, Dense, RMSProp, SGD, Sequential, gradcheck
from nanoae.checkpoint import load_checkpoint, save_checkpoint
from nanoae.classifier import Classifier, labeled_subset
from nanoae.losses import SoftmaxCrossEntropy
from nanoae.ops import reference

TOLERANCE = 1e-7


def small_autoencoder(seed=0):
    return Autoencoder([Dense(12, 8, "tanh"), Dense(8, 4, "tanh")], [Dense(4, 8, "tanh"), Dense(8, 12, "sigmoid")], seed=seed)


def clustered(n=120, seed=0):
    """Three well separated clusters in 12 dimensions, labels 0..2."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centers = rng.uniform(0, 1, (3, 12))
    return (centers[labels] + rng.normal(0, 0.05, (n, 12))).astype(np.float32), labels


# ---- the loss ------------------------------------------------------------------------------
def test_softmax_cross_entropy_by_hand():
    logits = np.array([[0.0, 0.0], [math.log(3.0), 0.0]])
    labels = np.array([0, 1])
    # p = (1/2, 1/2) and (3/4, 1/4): L = (log 2 + log 4) / 2
    assert float(reference.softmax_cross_entropy_loss(logits, labels)) == pytest.approx((math.log(2) + math.log(4)) / 2)
    _, grad = reference.softmax_cross_entropy_loss_and_grad(logits, labels)
    np.testing.assert_allclose(grad, [[(0.5 - 1) / 2, 0.5 / 2], [0.75 / 2, (0.25 - 1) / 2]])
    np.testing.assert_allclose(reference.softmax(logits).sum(axis=1), 1.0)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, -1000.0, 0.0], [-1e4, 1e4, 3.0]], dtype=np.float32)
    labels = np.array([1, 1])
    loss, grad = reference.softmax_cross_entropy_loss_and_grad(logits, labels)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    assert float(loss) == pytest.approx(2000.0 / 2, rel=1e-6)
    assert loss.dtype == grad.dtype == np.float32


@given(st.integers(1, 12), st.integers(2, 11), st.floats(0.1, 30.0), st.integers(0, 2**31 - 1))
def test_softmax_cross_entropy_gradient(batch, classes, scale, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, scale, (batch, classes))
    labels = rng.integers(0, classes, batch)
    report = gradcheck(SoftmaxCrossEntropy(), logits, labels, max_entries=None)
    assert report.passed, str(report)


def test_loss_rejects_bad_labels():
    loss = SoftmaxCrossEntropy()
    with pytest.raises(TypeError, match="labels must be integers"):
        loss(np.zeros((2, 3)), np.zeros(2))
    with pytest.raises(ValueError, match=r"need \(2,\)"):
        loss(np.zeros((2, 3)), np.zeros((2, 3), dtype=np.int64))


# ---- the classifier ------------------------------------------------------------------------------
def test_whole_classifier_in_float64():
    model = Classifier(Sequential([Dense(12, 7, "tanh"), Dense(7, 5, "sigmoid")]), 4, seed=0)
    x = np.random.default_rng(0).normal(size=(6, 12))
    labels = np.array([0, 3, 2, 1, 3, 0])
    report = gradcheck(model, x, labels, max_entries=None)
    assert report.passed and report.worst <= TOLERANCE, str(report)
    assert {row.name for row in report.rows} >= {"encoder.0.weights", "head.weights", "head.bias", "input"}


def test_finetune_copies_the_encoder_and_leaves_the_autoencoder_intact():
    ae = small_autoencoder()
    x, y = clustered()
    ae.fit(x, steps=10, batch_size=16)
    before = ae.arena.values.copy()
    reconstruction = ae.reconstruct(x)
    model = Classifier.from_autoencoder(ae, 3, mode="finetune", seed=0)
    for name, view in model.encoder.parameters().items():
        np.testing.assert_array_equal(view, ae.encoder.parameters()[name])  # starts from the trained weights
    model.fit(x, y, steps=30, batch_size=16)
    np.testing.assert_array_equal(ae.arena.values, before)  # the autoencoder is untouched ...
    np.testing.assert_array_equal(ae.reconstruct(x), reconstruction)  # ... and still works
    ae.fit(x, steps=2, batch_size=16)
    assert not np.shares_memory(model.arena.values, ae.arena.values)
    moved = [not np.array_equal(view, ae.encoder.parameters()[name]) for name, view in model.encoder.parameters().items()]
    assert all(moved)


def test_scratch_has_the_same_architecture_with_fresh_weights():
    ae = small_autoencoder()
    model = Classifier.from_autoencoder(ae, 3, mode="scratch", seed=5)
    assert model.encoder.config() == ae.encoder.config()
    assert not np.array_equal(model.encoder[0].weights, ae.encoder[0].weights)
    assert model.mode == "finetune" and not model.freeze_encoder
    with pytest.raises(ValueError, match="unknown mode 'frozen'"):
        Classifier.from_autoencoder(ae, 3, mode="frozen")


@pytest.mark.parametrize(
    "optimizer",
    [nanoae.Adam(0.01), nanoae.Adam(0.01, flavor="keras"), RMSProp(0.01, momentum=0.9), RMSProp(0.01, flavor="torch"), SGD(0.1, momentum=0.9, nesterov=True)],
    ids=repr,
)
def test_probe_trains_only_the_head(optimizer):
    ae = small_autoencoder()
    x, y = clustered()
    model = Classifier.from_autoencoder(ae, 3, mode="probe", optimizer=optimizer, seed=0)
    assert model.mode == "probe"
    encoder_before = {name: view.copy() for name, view in model.encoder.parameters().items()}
    head_before = model.head.weights.copy()
    history = model.fit(x, y, steps=40, batch_size=16)
    for name, view in model.encoder.parameters().items():
        np.testing.assert_array_equal(view, encoder_before[name])  # bit for bit
        assert not np.any(model.encoder.gradients()[name])
    assert not np.array_equal(model.head.weights, head_before)
    assert history[-1] < history[0]


def test_probe_gradients_match_the_finetuned_head_and_dx_is_still_available():
    ae = small_autoencoder()
    x, y = clustered(10)
    probe = Classifier.from_autoencoder(ae, 3, mode="probe", seed=0)
    tuned = Classifier.from_autoencoder(ae, 3, mode="finetune", seed=0)
    for model in (probe, tuned):
        _, grad = model.loss.loss_and_grad(model.forward(x), y)
        model.backward(grad, need_input_grad=False)
    np.testing.assert_array_equal(probe.head.grad_weights, tuned.head.grad_weights)
    _, grad = probe.loss.loss_and_grad(probe.forward(x), y)
    assert probe.backward(grad, need_input_grad=True).shape == (10, 12)
    assert not np.any(probe.encoder[0].grad_weights)


@pytest.mark.parametrize("optimizer", [nanoae.AdamW(), SGD(0.1, weight_decay=1e-4), nanoae.Adam(weight_decay=1e-3)], ids=repr)
def test_probe_refuses_an_optimizer_that_decays_frozen_weights(optimizer):
    with pytest.raises(ValueError, match="would move the frozen encoder"):
        Classifier.from_autoencoder(small_autoencoder(), 3, mode="probe", optimizer=optimizer)
    model = Classifier.from_autoencoder(small_autoencoder(), 3, mode="probe")
    model.optimizer = optimizer.bind(model.arena)  # swapped after building: refused at the first step
    x, y = clustered(32)
    with pytest.raises(ValueError, match="would move the frozen encoder"):
        model.train_step(x, y)


def test_predictions_and_accuracy():
    x, y = clustered(300)
    model = Classifier(Sequential([Dense(12, 16, "relu")]), 3, seed=0)
    model.fit(x, y, steps=150, batch_size=32)
    probabilities = model.predict_proba(x)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    classes = model.predict_classes(x, batch_size=7)
    np.testing.assert_array_equal(classes, probabilities.argmax(axis=1))
    assert model.accuracy(x, y) > 0.95
    assert model.evaluate(x, y) < 0.5 * math.log(3)  # well below chance


@pytest.mark.parametrize(
    "labels, error, message",
    [
        (np.zeros(10), TypeError, "labels must be integers"),
        (np.zeros((10, 1), dtype=np.int64), ValueError, r"pass shape \(10,\)"),
        (np.arange(10), ValueError, r"labels must lie in \[0, 3\)"),
        (-np.ones(10, dtype=np.int32), ValueError, r"labels must lie in \[0, 3\)"),
    ],
)
def test_bad_labels(labels, error, message):
    model = Classifier(Sequential([Dense(12, 4, "relu")]), 3, seed=0)
    x = np.zeros((10, 12), dtype=np.float32)
    with pytest.raises(error, match=message):
        model.fit(x, labels, steps=1, batch_size=5)
    with pytest.raises(ValueError, match="a classifier needs labels"):
        model.fit(x, steps=1, batch_size=5)


def test_bad_construction():
    with pytest.raises(ValueError, match="n_classes >= 2"):
        Classifier(Sequential([Dense(12, 4)]), 1)


@pytest.mark.parametrize("mode", ["finetune", "probe"])
def test_checkpoint_round_trip(tmp_path, mode):
    x, y = clustered()
    model = Classifier.from_autoencoder(small_autoencoder(), 3, mode=mode, seed=0)
    history = model.fit(x, y, steps=12, batch_size=16)
    save_checkpoint(tmp_path / "clf.npz", model, sampler=history.sampler)
    loaded = load_checkpoint(tmp_path / "clf.npz", backend="numpy").model
    assert isinstance(loaded, Classifier) and loaded.mode == mode and loaded.n_classes == 3
    np.testing.assert_array_equal(loaded.arena.values, model.arena.values)
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))


def test_on_every_backend(backend_name):
    x, y = clustered(64)
    model = Classifier(Sequential([Dense(12, 8, "relu")]), 3, seed=0, backend=backend_name)
    before = model.evaluate(x, y)  # the whole set: one minibatch's loss is too noisy to compare
    model.fit(x, y, steps=30, batch_size=16)
    assert model.evaluate(x, y) < 0.9 * before
    assert model.predict_classes(x).shape == (64,)


# ---- label subsets ------------------------------------------------------------------------------
def test_labeled_subset_is_balanced_and_seeded():
    labels = np.repeat(np.arange(10), 50)
    picked = labeled_subset(labels, 100, np.random.default_rng(0))
    assert len(np.unique(picked)) == 100
    np.testing.assert_array_equal(np.bincount(labels[picked]), np.full(10, 10))
    np.testing.assert_array_equal(picked, labeled_subset(labels, 100, np.random.default_rng(0)))
    uneven = labeled_subset(labels, 105, np.random.default_rng(1))
    assert sorted(np.bincount(labels[uneven]).tolist()) == [10] * 5 + [11] * 5
    np.testing.assert_array_equal(labeled_subset(labels, 500, np.random.default_rng(0)), np.arange(500))
    almost_all = labeled_subset(labels, 499, np.random.default_rng(0))  # 49 or 50 a class: still balanced
    assert len(almost_all) == 499 and sorted(np.bincount(labels[almost_all]).tolist()) == [49] + [50] * 9
    # class 9 holds 5 examples but 100 // 10 = 10 are wanted from each: a uniform draw instead
    short = np.concatenate([np.repeat(np.arange(9), 50), np.full(5, 9)])
    uniform = labeled_subset(short, 100, np.random.default_rng(0))
    np.testing.assert_array_equal(uniform, np.sort(np.random.default_rng(0).choice(455, size=100, replace=False)))
    with pytest.raises(ValueError, match="only 500"):
        labeled_subset(labels, 501, np.random.default_rng(0))


# ---- real MNIST -----------------------------------------------------------------------------
def test_classifier_learns_on_mnist(mnist_dir):
    from nanoae.data import load_dataset

    train = load_dataset("mnist", "train", data_dir=mnist_dir)
    test = load_dataset("mnist", "test", data_dir=mnist_dir)
    picked = labeled_subset(train.labels, 1000, np.random.default_rng(0))
    model = Classifier(Sequential([Dense(784, 128, "relu")]), 10, seed=0)
    model.fit(train.images[picked], train.labels[picked], steps=200, batch_size=100, log_every=50)
    accuracy = model.accuracy(test.images[:2000], test.labels[:2000])
    print(f"classifier from scratch, 1000 labels, 200 steps: test accuracy {accuracy:.3f}")
    assert accuracy > 0.8  # chance is 0.1; a broken backward stays near it
