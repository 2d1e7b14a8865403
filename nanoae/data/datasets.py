"""``load_dataset``: MNIST, Fashion-MNIST or the MNIST sample as float32 arrays, from wherever they are.

Sources are tried in order: an explicit directory, ``$NANOAE_DATA``, the
cache, Debian's Fashion-MNIST package (see :mod:`nanoae.data.sources`), a
verified download into the cache (:mod:`nanoae.data.download`), and for MNIST
last the MNIST sample shipped with nanoae (6,000 training and 1,000 test
digits), announced by one plain line on stderr. Without any of these, a
:class:`DataError` lists every way to get the data.

Once per process: a download that failed is not tried again for the same
dataset, cache and mirrors (loading "test" after "train" does not wait on
the network twice), and the sample's notice is printed once. When the sample
can stand in, the attempt is quick: a short connect timeout, and it ends at
the first file no mirror delivers.

Parsed arrays are kept in memory for the life of the process, keyed by the
files' resolved paths, so repeated loads (tests, notebooks) are cheap. The
arrays handed out are shared and therefore **read-only**
(``writeable=False``): writing to them raises instead of silently changing
what the next caller gets. Use ``.copy()`` for a private, writeable copy.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .download import DEFAULT_TIMEOUT, DownloadError, download_dataset, mirrors_for
from .errors import DataError
from .idx import read_idx
from .registry import SPLITS, DatasetSpec, get_spec
from .sources import ENV_DATA, Located, cache_root, locate, locate_embedded, scan_dir, search_report, ways_to_get

__all__ = ["STAND_IN_CONNECT_TIMEOUT", "Dataset", "load_dataset", "clear_memory_cache"]

# Seconds to wait for a mirror to accept a connection when a stand-in exists:
# offline, the sample should follow in seconds, not after 30 s per mirror.
STAND_IN_CONNECT_TIMEOUT = 5.0

# (images path, labels path, their sizes and mtimes) -> (images, labels), both read-only.
_MEMORY: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

# (dataset, cache directory, mirrors) -> this process's failed download of it.
_FAILED_DOWNLOADS: dict[tuple[str, str, tuple[str, ...]], DownloadError] = {}

# Datasets whose stand-in notice this process has printed.
_ANNOUNCED: set[str] = set()


@dataclass(frozen=True, eq=False)
class Dataset:
    """One split of a dataset, ready for training.

    Attributes:
        images: float32 (n, 784), pixels scaled to [0, 1], C order, read-only.
        labels: int64 (n,), digits / classes 0..9, read-only.
        name: the dataset read: ``"mnist"``, ``"fashion"`` or
            ``"mnist-sample"`` (also when the sample stood in for MNIST).
        split: ``"train"`` or ``"test"``.
        source: where the data came from, in words (a directory, a download,
            or the sample shipped with nanoae, and whether it stood in).
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
    """Forget the parsed arrays kept in memory (frees about 220 MB per dataset),
    and this process's failed downloads and notices, so the next load searches,
    downloads and speaks as if it were the first."""
    _MEMORY.clear()
    _FAILED_DOWNLOADS.clear()
    _ANNOUNCED.clear()


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


def _download_summary(failure: DownloadError) -> str:
    """What went wrong with a download, short: each distinct problem once."""
    distinct = list(dict.fromkeys(failure.problems or failure.attempts))
    mirrors = len(failure.attempts)
    return f"the download failed ({'; '.join(distinct)}{f', {mirrors} mirrors' if mirrors > 1 else ''})"


def _stand_in(spec: DatasetSpec, split: str, download: bool, failure: DownloadError | None, quiet: bool) -> Dataset:
    """``spec``'s embedded stand-in (the MNIST sample for MNIST), announced once.

    Raises:
        DataError: the stand-in is missing or damaged: the "nothing available"
            error, whose list says to reinstall nanoae.
    """
    sample = get_spec(spec.stand_in)
    cache = cache_root() / spec.name
    # Reached only with no data_dir and $NANOAE_DATA unset: a wrong one is an error.
    found, _ = scan_dir(cache, spec) if cache.is_dir() else ({}, None)
    in_cache = f"{len(found)} of its {len(spec.files)} files in the cache {cache}" if found else f"nothing in the cache {cache}"
    reason = f"${ENV_DATA} unset, {in_cache}, "
    if failure is not None:
        reason += _download_summary(failure)
        network = "or a network connection"
    else:
        reason += "downloads are off (download=False / --no-download)"
        network = "or allow the download (leave out --no-download)"
    get_full = f"For full {spec.title}: --data DIR, {ENV_DATA}=DIR, {network}."
    try:
        located = locate_embedded(sample)
    except DataError as e:
        raise _nothing_available(spec, download, failure, f"the {sample.title} shipped with nanoae: {e}") from None
    images, labels = _read_pair(located, split)
    n_train, n_test = (sample.file(s, "labels").shape[0] for s in SPLITS)
    if not quiet and spec.name not in _ANNOUNCED:
        _ANNOUNCED.add(spec.name)
        print(
            f"nanoae: full {spec.title} not found or downloadable ({reason}); using the "
            f"{n_train:,}-digit {sample.title} shipped with nanoae ({n_test:,} test digits). {get_full}",
            file=sys.stderr,
            flush=True,
        )
    source = (
        f"{sample.title} {split}: {len(labels):,} digits shipped with nanoae (in {located.directory}), "
        f"standing in for full {spec.title}, which was not found or downloadable"
    )
    return Dataset(images, labels, sample.name, split, source)


def _nothing_available(
    spec: DatasetSpec, download: bool, failure: DownloadError | None, stand_in_problem: str | None = None
) -> DataError:
    """The error for "no source had the data", listing what was tried and every fix."""
    looked = search_report(spec)
    if not download:
        looked.append("download: not allowed (download=False)")
    elif failure is not None:
        looked.append("download: failed:\n      " + "\n      ".join(failure.attempts))
    if stand_in_problem is not None:
        looked.append(stand_in_problem)
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
    """Load one split of MNIST, Fashion-MNIST or the MNIST sample.

    Args:
        name: ``"mnist"``, ``"fashion"`` or ``"mnist-sample"`` (the first
            6,000 training and 1,000 test MNIST digits, shipped with nanoae).
        split: ``"train"`` (60,000 images; 6,000 in the sample) or ``"test"``
            (10,000; 1,000 in the sample).
        data_dir: a directory holding the four IDX files (``.gz`` or not), or
            a parent of a sub-folder named after the dataset. When given it
            must be right: nothing else is tried.
        download: allow fetching missing files into the cache. MNIST without
            one (or when it fails) is the MNIST sample.
        quiet: no download progress output and no notice that the sample
            stands in.
        mirrors: base URLs to download from (default: ``$NANOAE_MIRRORS``,
            else the published mirrors).
        timeout: seconds to wait on a mirror's data (and its connection,
            unless the sample can stand in: then at most
            :data:`STAND_IN_CONNECT_TIMEOUT`).

    Returns:
        A :class:`Dataset`: images float32 (n, 784) in [0, 1] and labels
        int64 (n,), both read-only and shared between calls.

    Raises:
        DataError: a bad name/split, a wrong ``data_dir`` / ``$NANOAE_DATA``,
            a corrupt or mismatched file, or no data to be had (the message
            lists every way to get it), or a missing or damaged MNIST sample
            (the message says to reinstall nanoae).
    """
    spec = get_spec(name)
    _check_split(split)

    located = locate(spec, data_dir)
    failure: DownloadError | None = None
    if located is None and download:
        dest = cache_root() / spec.name
        bases = mirrors_for(spec, mirrors)
        attempt = (spec.name, str(dest), tuple(bases))
        failure = _FAILED_DOWNLOADS.get(attempt)
        if failure is None:
            quick = spec.stand_in is not None
            try:
                paths = download_dataset(
                    spec, dest, mirrors=bases, quiet=quiet, timeout=timeout,
                    connect_timeout=min(timeout, STAND_IN_CONNECT_TIMEOUT) if quick else None,
                    report_failures=not quick,  # the stand-in's notice says why, in one line
                )
            except DownloadError as e:
                failure = _FAILED_DOWNLOADS[attempt] = e
            else:
                located = Located(spec, dest, paths, "download", f"mirrors: {', '.join(bases)}")

    if located is None:
        if spec.stand_in is not None:
            return _stand_in(spec, split, download, failure, quiet)
        raise _nothing_available(spec, download, failure)

    images, labels = _read_pair(located, split)
    return Dataset(images, labels, spec.name, split, f"{spec.title} {split} from {located.description}")
