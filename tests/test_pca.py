"""PCA: exactness on low-rank data, orthonormal directions, optimality, errors, MNIST."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nanoae.pca import PCA


def low_rank(n=200, features=30, rank=4, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, rank)) @ rng.normal(size=(rank, features)) + rng.normal(size=features)).astype(dtype)


def test_rank_k_data_is_reproduced_exactly_with_k_components():
    x = low_rank(rank=4)
    pca = PCA(4).fit(x)
    assert pca.reconstruction_mse(x) < 1e-10
    np.testing.assert_allclose(pca.inverse_transform(pca.transform(x)), x, atol=1e-4)
    assert PCA(3).fit(x).reconstruction_mse(x) > 1e-3


def test_directions_are_orthonormal_and_variances_sorted_and_correct():
    x = np.random.default_rng(1).normal(size=(300, 10)) * np.arange(1, 11)
    pca = PCA(6).fit(x)
    np.testing.assert_allclose(pca.components_ @ pca.components_.T, np.eye(6), atol=1e-12)
    assert np.all(np.diff(pca.explained_variance_) <= 0)
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1]
    np.testing.assert_allclose(pca.explained_variance_, eigenvalues[:6], rtol=1e-10)
    np.testing.assert_allclose(pca.explained_variance_ratio_, eigenvalues[:6] / eigenvalues.sum(), rtol=1e-10)
    np.testing.assert_allclose(pca.mean_, x.mean(axis=0))


def test_shapes_dtypes_and_truncation():
    x = low_rank(rank=8)
    pca = PCA(6).fit(x)
    codes = pca.transform(x[:5])
    assert codes.shape == (5, 6) and codes.dtype == np.float32
    assert pca.inverse_transform(codes).shape == (5, 30) and pca.inverse_transform(codes).dtype == np.float32
    smaller = pca.truncated(3)
    refit = PCA(3).fit(x)
    assert smaller.reconstruction_mse(x) == pytest.approx(refit.reconstruction_mse(x), rel=1e-9)
    np.testing.assert_allclose(np.abs(smaller.components_), np.abs(refit.components_), atol=1e-8)


@given(st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_no_other_k_dimensional_projection_does_better(k, seed):
    """Eckart-Young: PCA's subspace beats a random orthonormal one of the same size."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(80, 8)) * rng.uniform(0.1, 3.0, size=8)
    pca = PCA(k).fit(x)
    basis, _ = np.linalg.qr(rng.normal(size=(8, k)))
    centered = x - x.mean(axis=0)
    other = float(np.mean((centered - centered @ basis @ basis.T) ** 2))
    assert pca.reconstruction_mse(x) <= other + 1e-12


def test_errors():
    with pytest.raises(RuntimeError, match="not fitted"):
        PCA(2).transform(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="exceeds min"):
        PCA(5).fit(np.zeros((4, 3)))
    pca = PCA(2).fit(low_rank())
    with pytest.raises(ValueError, match="x has 7 features but the PCA was fitted on 30"):
        pca.transform(np.zeros((2, 7)))
    with pytest.raises(ValueError, match="codes have 3 columns"):
        pca.inverse_transform(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="floating-point"):
        PCA(2).fit(np.zeros((5, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="cannot keep 3 of 2"):
        pca.truncated(3)


def test_mnist_components_explain_more_with_more_directions(mnist_dir):
    from nanoae.data import load_dataset

    train = load_dataset("mnist", "train", data_dir=mnist_dir).images[:3000]
    test = load_dataset("mnist", "test", data_dir=mnist_dir).images[:1000]
    pca = PCA(32).fit(train)
    errors = [pca.truncated(k).reconstruction_mse(test) for k in (2, 8, 32)]
    mean_image = float(np.mean((test - train.mean(axis=0)) ** 2))
    assert mean_image > errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.4 * mean_image
