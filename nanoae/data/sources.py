"""Where a dataset's files come from, without downloading anything.

Local sources, in the order tried by :func:`locate`:

1. an explicit directory (``data_dir=``, the CLI's ``--data DIR``);
2. ``$NANOAE_DATA``;
3. the cache directory, :func:`cache_dir` (``$NANOAE_CACHE/<dataset>``, else
   ``$XDG_CACHE_HOME/nanoae/<dataset>``, else ``~/.cache/nanoae/<dataset>``);
4. for Fashion-MNIST only, the files of Debian's ``dataset-fashion-mnist``
   package (:data:`DEBIAN_FASHION_DIR`).

An embedded dataset (the MNIST sample) is read from the package itself,
:data:`SAMPLE_DIR`, after an explicit directory only: ``$NANOAE_DATA`` and the
cache hold full datasets, whose file names are the same. When it stands in
for MNIST (:mod:`nanoae.data.datasets` decides that, after a download),
:func:`locate_embedded` finds it.

An explicit directory or ``$NANOAE_DATA`` that is missing, incomplete or
holds the wrong files is an error, never silently skipped: the user asked
for it. Such a directory may hold the four files itself or in a sub-folder
named after the dataset (``mnist``, ``fashion`` or ``fashion-mnist``), so
one root can serve both datasets. Every directory used is checked against
the published checksums, which also stops MNIST files being used as
Fashion-MNIST (their names are the same); the embedded files are checked too.

A directory counts when it holds all four files, each as ``name.gz`` or
uncompressed ``name`` (``.gz`` preferred when both are there).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .checksum import verify_file
from .errors import DataError
from .registry import DatasetSpec, FileSpec, get_spec

__all__ = [
    "DEBIAN_FASHION_DIR",
    "SAMPLE_DIR",
    "ENV_DATA",
    "ENV_CACHE",
    "Located",
    "cache_root",
    "cache_dir",
    "scan_dir",
    "locate",
    "locate_embedded",
    "find_data_dir",
    "ways_to_get",
    "search_report",
]

# Where Debian's dataset-fashion-mnist package installs the four .gz files.
# A module constant so tests can point it elsewhere.
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

# The MNIST sample's four .gz files, shipped as package data. A module
# constant so tests can point it at a damaged copy.
SAMPLE_DIR = Path(__file__).resolve().parent / "sample"

ENV_DATA = "NANOAE_DATA"
ENV_CACHE = "NANOAE_CACHE"


@dataclass(frozen=True)
class Located:
    """A complete, checksum-verified set of a dataset's four files.

    Attributes:
        spec: the dataset.
        directory: the directory that holds the files.
        paths: each FileSpec's file (``.gz`` or uncompressed).
        origin: how it was found: ``"data_dir"``, ``"NANOAE_DATA"``,
            ``"cache"``, ``"debian"``, ``"download"`` or ``"package"``.
        detail: extra words for :attr:`description` (e.g. the mirror used).
    """

    spec: DatasetSpec
    directory: Path
    paths: Mapping[FileSpec, Path] = field(repr=False)
    origin: str
    detail: str = ""

    def path(self, split: str, kind: str) -> Path:
        """The file holding ``split``'s ``kind`` ("images" or "labels")."""
        return self.paths[self.spec.file(split, kind)]

    @property
    def description(self) -> str:
        """Where the data came from, in words."""
        how = {
            "data_dir": "the data_dir argument",
            "NANOAE_DATA": f"${ENV_DATA}",
            "cache": "the nanoae cache",
            "debian": "Debian's dataset-fashion-mnist package",
            "download": "a download into the nanoae cache",
            "package": "the nanoae package",
        }.get(self.origin, self.origin)
        text = f"{self.spec.title} files in {self.directory} (from {how}"
        return text + (f", {self.detail})" if self.detail else ")")


def _env_path(var: str) -> Path | None:
    """The path in environment variable ``var``; None when unset or empty."""
    value = os.environ.get(var, "").strip()
    return Path(value).expanduser() if value else None


def cache_root() -> Path:
    """Root of nanoae's download cache: ``$NANOAE_CACHE``, else
    ``$XDG_CACHE_HOME/nanoae``, else ``~/.cache/nanoae``."""
    explicit = _env_path(ENV_CACHE)
    if explicit is not None:
        return explicit
    xdg = _env_path("XDG_CACHE_HOME")
    # The XDG spec says relative values are invalid and must be ignored.
    if xdg is not None and xdg.is_absolute():
        return xdg / "nanoae"
    return Path.home() / ".cache" / "nanoae"


def cache_dir(name: str) -> Path:
    """The cache directory of dataset ``name`` (it may not exist yet)."""
    return cache_root() / get_spec(name).name


def scan_dir(directory: Path, spec: DatasetSpec) -> tuple[dict[FileSpec, Path], list[FileSpec]]:
    """Which of ``spec``'s files ``directory`` holds.

    Returns:
        (found, missing): found maps each present FileSpec to its path
        (``name.gz`` preferred over ``name``); missing lists the others.
    """
    found: dict[FileSpec, Path] = {}
    missing: list[FileSpec] = []
    for f in spec.files:
        for candidate in (directory / f.gz_name, directory / f.name):
            if candidate.is_file():
                found[f] = candidate
                break
        else:
            missing.append(f)
    return found, missing


def _verified(spec: DatasetSpec, directory: Path, found: dict[FileSpec, Path], origin: str, fix: str) -> Located:
    """Check every file's checksum (labels first: small, so a wrong dataset fails fast)."""
    for f in sorted(found, key=lambda f: f.kind != "labels"):
        verify_file(found[f], f, spec, fix)
    return Located(spec, directory, dict(found), origin)


def _user_dir(spec: DatasetSpec, root: Path, label: str, fix: str, origin: str) -> Located:
    """Use a directory the user named; any problem is an error, never skipped."""
    if not root.exists():
        raise DataError(f"{label}: {root} does not exist. {fix}")
    if not root.is_dir():
        raise DataError(f"{label}: {root} is not a directory. {fix}")
    # The dataset's sub-folder first, so a root holding MNIST files and a
    # fashion/ sub-folder serves both datasets.
    candidates = [root / sub for sub in spec.subdirs] + [root]
    partial: list[str] = []
    for d in candidates:
        if not d.is_dir():
            continue
        found, missing = scan_dir(d, spec)
        if not missing:
            return _verified(spec, d, found, origin, fix)
        if found:
            partial.append(f"{d} lacks {', '.join(f.gz_name for f in missing)}")
    looked = ", ".join(str(d) for d in candidates)
    detail = f" ({'; '.join(partial)})" if partial else ""
    raise DataError(
        f"{label}: no complete set of {spec.title} files found; looked in {looked}{detail}. {fix}"
    )


def _user_fix(spec: DatasetSpec, what: str) -> str:
    """How to fix a wrong data_dir / NANOAE_DATA, for messages."""
    return (
        f"{what} must be the directory holding the four {spec.title} files "
        f"({spec.file_list()}; uncompressed is fine too) or a parent of a "
        f"{' or '.join(repr(s) for s in spec.subdirs)} sub-folder holding them."
    )


def locate(spec: DatasetSpec, data_dir: str | os.PathLike | None = None) -> Located | None:
    """The first local, complete, verified copy of ``spec``'s files, or None.

    An embedded dataset is read from the package after ``data_dir``; it is
    never None for one.

    Raises:
        DataError: ``data_dir`` or ``$NANOAE_DATA`` is given but wrong, or a
            cached / system / embedded copy fails its checksum.
    """
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        return _user_dir(spec, root, f"data_dir={str(root)!r}", _user_fix(spec, "data_dir (--data)"), "data_dir")

    if spec.embedded:
        return locate_embedded(spec)

    env_root = _env_path(ENV_DATA)
    if env_root is not None:
        fix = _user_fix(spec, ENV_DATA) + f" Or unset {ENV_DATA}."
        return _user_dir(spec, env_root, f"{ENV_DATA}={str(env_root)!r}", fix, "NANOAE_DATA")

    cache = cache_root() / spec.name
    found, missing = scan_dir(cache, spec) if cache.is_dir() else ({}, list(spec.files))
    if not missing:
        fix = "Delete that file from the cache; it will be downloaded again."
        return _verified(spec, cache, found, "cache", fix)

    if spec.name == "fashion" and DEBIAN_FASHION_DIR.is_dir():
        found, missing = scan_dir(DEBIAN_FASHION_DIR, spec)
        if not missing:
            fix = "Reinstall the package: apt-get install --reinstall dataset-fashion-mnist."
            return _verified(spec, DEBIAN_FASHION_DIR, found, "debian", fix)
    return None


def locate_embedded(spec: DatasetSpec) -> Located:
    """The copy of embedded dataset ``spec`` shipped in the package, verified.

    Raises:
        DataError: a file is missing or fails its checksum; the message says
            to reinstall nanoae.
    """
    fix = (
        f"The {spec.title} shipped with nanoae is damaged: reinstall nanoae "
        f"(in a clone of its repository: git checkout -- nanoae/data/sample, then reinstall)."
    )
    found, missing = scan_dir(SAMPLE_DIR, spec) if SAMPLE_DIR.is_dir() else ({}, list(spec.files))
    if missing:
        raise DataError(f"{SAMPLE_DIR} lacks {', '.join(f.gz_name for f in missing)}. {fix}")
    return _verified(spec, SAMPLE_DIR, found, "package", fix)


def find_data_dir(name: str = "mnist", data_dir: str | os.PathLike | None = None) -> Path | None:
    """The directory :func:`locate` would read dataset ``name`` from, or None.

    Nothing is downloaded. Raises DataError as :func:`locate` does.
    """
    located = locate(get_spec(name), data_dir)
    return None if located is None else located.directory


def search_report(spec: DatasetSpec) -> list[str]:
    """One line per local source, saying what was found there (for errors)."""
    lines = ["data_dir / --data: not given"]
    env_root = _env_path(ENV_DATA)
    lines.append(f"${ENV_DATA}: {'not set' if env_root is None else env_root}")
    cache = cache_root() / spec.name
    found, missing = scan_dir(cache, spec) if cache.is_dir() else ({}, list(spec.files))
    if not found:
        lines.append(f"cache {cache}: no files")
    else:
        lines.append(f"cache {cache}: {len(found)} of 4 files, missing {', '.join(f.gz_name for f in missing)}")
    if spec.name == "fashion":
        state = "present but incomplete" if DEBIAN_FASHION_DIR.is_dir() else "not installed"
        lines.append(f"Debian package dir {DEBIAN_FASHION_DIR}: {state}")
    return lines


def ways_to_get(spec: DatasetSpec) -> list[str]:
    """Every way to make ``spec``'s data available, for messages."""
    first = spec.subdirs[0]
    ways = [
        "pass the directory holding the four files: --data DIR on the command line, data_dir=DIR in Python",
        f"set {ENV_DATA}=DIR (the files themselves, or a DIR/{first} sub-folder)",
        f"put the four files ({spec.file_list()}) in the cache directory {cache_root() / spec.name}"
        f" (set {ENV_CACHE} to move the cache)",
    ]
    if spec.name == "fashion":
        ways.append(f"on Debian/Ubuntu: apt-get install dataset-fashion-mnist (files go to {DEBIAN_FASHION_DIR})")
    ways.append(
        "allow the download (download=True, the default) on a machine with network access; "
        "mirrors: " + ", ".join(spec.mirrors)
    )
    return ways
