"""Principal component analysis: the linear baseline an autoencoder is measured against.

PCA is the best *linear* code of a given size in the squared-error sense: among all
k-dimensional affine subspaces, the one spanned by the top k principal directions
leaves the smallest mean squared reconstruction error (Eckart-Young). A linear
autoencoder trained to convergence on MSE finds the same subspace; a nonlinear one
can only be judged by whether it does better than this.

    pca = PCA(32).fit(train_images)               # (n, 784) -> mean and 32 directions
    codes = pca.transform(test_images)            # (m, 32)
    images = pca.inverse_transform(codes)         # (m, 784)

It runs on the host with NumPy (CuPy arrays are copied over), in float64:

    mean       mu = mean of the rows of x                              (features,)
    centered   X = x - mu                                              (n, features)
    SVD        X = U S V^T (thin, ``np.linalg.svd``); the rows of V^T are the
               principal directions, sorted by singular value
    transform  c = (x - mu) V_k                                        (m, k)
    inverse    x_hat = c V_k^T + mu                                    (m, features)

Only ``fit`` is heavy: the SVD of an (n, features) matrix costs O(n features^2)
(about 10-20 s for the 60,000 MNIST training images on two cores).
"""

from __future__ import annotations

import numpy as np

from nanoae.validation import positive_int


def _host(x, name: str = "x") -> np.ndarray:
    if type(x).__module__.startswith("cupy"):
        import cupy  # noqa: PLC0415

        x = cupy.asnumpy(x)
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, features), got shape {x.shape}")
    if x.dtype.kind != "f":
        raise TypeError(f"{name} has dtype {x.dtype}; PCA needs floating-point data")
    return x


class PCA:
    """PCA with ``n_components`` directions: ``fit``, ``transform``, ``inverse_transform``.

    After fit: ``mean_`` (features,), ``components_`` (n_components, features) with
    orthonormal rows, ``explained_variance_`` (n_components,) and
    ``explained_variance_ratio_``. Outputs have the input's floating dtype.
    """

    def __init__(self, n_components: int) -> None:
        self.n_components = positive_int(n_components, "n_components")
        self.mean_ = None
        self.components_ = None
        self.explained_variance_ = None
        self.explained_variance_ratio_ = None

    def fit(self, x) -> "PCA":
        """Learn the mean and the top directions of x: (n, features). Returns self."""
        x = _host(x)
        rows, features = x.shape
        if self.n_components > min(rows, features):
            raise ValueError(
                f"n_components={self.n_components} exceeds min(rows, features) = {min(rows, features)} for data of shape {x.shape}"
            )
        centered = x.astype(np.float64)
        self.mean_ = centered.mean(axis=0)
        centered -= self.mean_
        _, singular_values, directions = np.linalg.svd(centered, full_matrices=False)
        variance = singular_values**2 / max(rows - 1, 1)
        self.components_ = directions[: self.n_components]
        self.explained_variance_ = variance[: self.n_components]
        self.explained_variance_ratio_ = self.explained_variance_ / variance.sum()
        return self

    def _check_fitted(self) -> None:
        if self.components_ is None:
            raise RuntimeError("this PCA is not fitted yet; call fit(x) first")

    def truncated(self, n_components: int) -> "PCA":
        """A fitted PCA keeping only the first n_components directions (no refit)."""
        self._check_fitted()
        n_components = positive_int(n_components, "n_components")
        if n_components > self.n_components:
            raise ValueError(f"cannot keep {n_components} of {self.n_components} fitted components")
        smaller = PCA(n_components)
        smaller.mean_ = self.mean_
        smaller.components_ = self.components_[:n_components]
        smaller.explained_variance_ = self.explained_variance_[:n_components]
        smaller.explained_variance_ratio_ = self.explained_variance_ratio_[:n_components]
        return smaller

    def transform(self, x) -> np.ndarray:
        """x: (m, features) -> codes (m, n_components) = (x - mean) V_k."""
        self._check_fitted()
        x = _host(x)
        if x.shape[1] != self.mean_.shape[0]:
            raise ValueError(f"x has {x.shape[1]} features but the PCA was fitted on {self.mean_.shape[0]}")
        return ((x - self.mean_) @ self.components_.T).astype(x.dtype)

    def inverse_transform(self, codes) -> np.ndarray:
        """codes: (m, n_components) -> (m, features) = codes V_k^T + mean."""
        self._check_fitted()
        codes = _host(codes, "codes")
        if codes.shape[1] != self.n_components:
            raise ValueError(f"codes have {codes.shape[1]} columns but the PCA has {self.n_components} components")
        return (codes @ self.components_ + self.mean_).astype(codes.dtype)

    def reconstruct(self, x) -> np.ndarray:
        """inverse_transform(transform(x))."""
        return self.inverse_transform(self.transform(x))

    def reconstruction_mse(self, x, batch_size: int = 10000) -> float:
        """Mean over rows and features of (x - reconstruct(x))^2, in float64."""
        x = _host(x)
        total = 0.0
        for start in range(0, x.shape[0], batch_size):
            chunk = x[start : start + batch_size].astype(np.float64)
            difference = chunk - ((chunk - self.mean_) @ self.components_.T) @ self.components_ - self.mean_
            total += float((difference * difference).sum())
        return total / x.size

    def __repr__(self) -> str:
        state = "fitted" if self.components_ is not None else "not fitted"
        return f"PCA({self.n_components}, {state})"
