"""What nanoae knows about each dataset: files, shapes, checksums, mirrors.

This module only describes; finding, hashing and downloading live elsewhere.

Three datasets: MNIST and Fashion-MNIST, found locally or downloaded, and the
MNIST sample (``"mnist-sample"``): the first 6,000 training and 1,000 test
digits of MNIST, shipped inside the package (``nanoae/data/sample/``), never
downloaded. It is MNIST's stand-in: used, with a notice, when full MNIST can
be neither found nor downloaded.

Checksums: every file has the MD5 of its uncompressed content (``raw_md5``)
and the accepted MD5s of its ``.gz`` form (``gz_md5``). The ``.gz`` digests
are a fast path: a file matches when either its ``.gz`` bytes or its
uncompressed bytes match. The content digest is the authoritative one,
because repackagers re-gzip files (Debian's Fashion-MNIST ``.gz`` files
differ from upstream's, the content is identical).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from .errors import DataError

__all__ = ["FileSpec", "DatasetSpec", "DATASETS", "SPLITS", "KINDS", "get_spec", "identify_digest"]

SPLITS = ("train", "test")
KINDS = ("images", "labels")


@dataclass(frozen=True)
class FileSpec:
    """One of a dataset's four IDX files.

    Attributes:
        split: ``"train"`` or ``"test"``.
        kind: ``"images"`` (shape (n, 28, 28)) or ``"labels"`` (shape (n,)).
        name: the uncompressed file name, e.g. ``"train-images-idx3-ubyte"``.
        shape: the array shape the file must hold.
        gz_md5: accepted MD5s of the ``.gz`` file (upstream first, then known
            repacks).
        raw_md5: MD5 of the uncompressed file.
    """

    split: str
    kind: str
    name: str
    shape: tuple[int, ...]
    gz_md5: tuple[str, ...]
    raw_md5: str

    @property
    def gz_name(self) -> str:
        """The compressed file name, as mirrors serve it."""
        return self.name + ".gz"


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: its four files, where to download them, how to call it.

    Attributes:
        name: the key used in the API and on disk (``"mnist"``).
        title: the name for people (``"MNIST"``).
        files: the four :class:`FileSpec` (train/test x images/labels).
        mirrors: base URLs tried in turn; a file's URL is base + ``gz_name``.
        subdirs: sub-folder names accepted under a data root directory.
        embedded: the files ship inside the nanoae package (no mirrors).
        stand_in: the name of an embedded dataset used in this one's place
            when it can be neither found nor downloaded (None: no stand-in).
    """

    name: str
    title: str
    files: tuple[FileSpec, ...]
    mirrors: tuple[str, ...]
    subdirs: tuple[str, ...]
    embedded: bool = False
    stand_in: str | None = None

    def file(self, split: str, kind: str) -> FileSpec:
        """The file for ``split`` ("train"/"test") and ``kind`` ("images"/"labels")."""
        for f in self.files:
            if f.split == split and f.kind == kind:
                return f
        raise KeyError((split, kind))

    def file_list(self) -> str:
        """The four ``.gz`` names, comma separated, for messages."""
        return ", ".join(f.gz_name for f in self.files)


def _files(n_train: int, n_test: int, digests: dict[str, tuple[tuple[str, ...], str]]) -> tuple[FileSpec, ...]:
    """The four FileSpecs of an MNIST-layout dataset, in download order."""
    layout = [
        ("train", "images", "train-images-idx3-ubyte", (n_train, 28, 28)),
        ("train", "labels", "train-labels-idx1-ubyte", (n_train,)),
        ("test", "images", "t10k-images-idx3-ubyte", (n_test, 28, 28)),
        ("test", "labels", "t10k-labels-idx1-ubyte", (n_test,)),
    ]
    return tuple(
        FileSpec(split, kind, name, shape, digests[name][0], digests[name][1])
        for split, kind, name, shape in layout
    )


MNIST = DatasetSpec(
    name="mnist",
    title="MNIST",
    files=_files(60000, 10000, {
        "train-images-idx3-ubyte": (("f68b3c2dcbeaaa9fbdd348bbdeb94873",), "6bbc9ace898e44ae57da46a324031adb"),
        "train-labels-idx1-ubyte": (("d53e105ee54ea40749a09fcbcd1e9432",), "a25bea736e30d166cdddb491f175f624"),
        "t10k-images-idx3-ubyte": (("9fb629c4189551a2d022fa330f9573f3",), "2646ac647ad5339dbf082846283269ea"),
        "t10k-labels-idx1-ubyte": (("ec29112dd5afa0611ce80d1b7f02629c",), "27ae3e4e09519cfbb04c329615203637"),
    }),
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    subdirs=("mnist",),
    stand_in="mnist-sample",
)

# The second .gz digest of each Fashion-MNIST file is Debian's re-gzipped copy
# (package dataset-fashion-mnist 0.0~git20200523.55506a9-1); listing it saves
# decompressing 26 MB just to confirm the content.
FASHION = DatasetSpec(
    name="fashion",
    title="Fashion-MNIST",
    files=_files(60000, 10000, {
        "train-images-idx3-ubyte": (
            ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "cf8536b0aa1a6ac5fa3f23001093305c"),
            "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        ),
        "train-labels-idx1-ubyte": (
            ("25c81989df183df01b3e8a0aad5dffbe", "10bea18fdb374794d4bb42e356e600c9"),
            "9018921c3c673c538a1fc5bad174d6f9",
        ),
        "t10k-images-idx3-ubyte": (
            ("bef4ecab320f06d8554ea6380940ec79", "f78720b4224f21cce2f2ccf2d7a94c9a"),
            "8181f5470baa50b63fa0f6fddb340f0a",
        ),
        "t10k-labels-idx1-ubyte": (
            ("bb300cfdad3c16e7a12a480ee83cd310", "0d30e22e447f3c33dab9ed536400ac01"),
            "15d484375f8d13e6eb1aabb0c3f46965",
        ),
    }),
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
    ),
    subdirs=("fashion", "fashion-mnist"),
)

# The first 6,000 training and 1,000 test records of MNIST, each file's header
# rewritten to the new count, gzip'd with mtime 0 (tests/test_data_sample.py
# rebuilds them from real MNIST and compares). The .gz digests are those of the
# shipped files; another zlib may compress differently, the content digest holds.
MNIST_SAMPLE = DatasetSpec(
    name="mnist-sample",
    title="MNIST sample",
    files=_files(6000, 1000, {
        "train-images-idx3-ubyte": (("1ac03de7ecb10d80269b8abd182afbd4",), "e5745bbfadcc33b878fede0ec121d742"),
        "train-labels-idx1-ubyte": (("59fdc8a419aa8ad3df0ff5c74064416a",), "13b93db4247929e07df96478a06f95de"),
        "t10k-images-idx3-ubyte": (("c3379f275b566375ab4528689c1795c4",), "bac4371a484d0b5651e81d99305acb5a"),
        "t10k-labels-idx1-ubyte": (("1d88dbe1fbee9022616057ede4463181",), "556860b2f10365a8f7444c1e79c7e9af"),
    }),
    mirrors=(),
    subdirs=("mnist-sample",),
    embedded=True,
)

DATASETS: Mapping[str, DatasetSpec] = MappingProxyType({"mnist": MNIST, "fashion": FASHION, "mnist-sample": MNIST_SAMPLE})


def get_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` called ``name``; a clear DataError otherwise."""
    if not isinstance(name, str):
        raise DataError(f"dataset name must be a string, got {type(name).__name__}; choose one of: {', '.join(DATASETS)}.")
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}.") from None


def identify_digest(digest: str) -> tuple[DatasetSpec, FileSpec] | None:
    """Which known file has this MD5 (of its .gz or its content), if any.

    Used for messages such as "this is MNIST's train-images, not
    Fashion-MNIST's" when someone points one dataset at the other's files.
    """
    for spec in DATASETS.values():
        for f in spec.files:
            if digest == f.raw_md5 or digest in f.gz_md5:
                return spec, f
    return None
