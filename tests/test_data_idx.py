"""IDX reading: real MNIST, hand-made good files, and every kind of broken one."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nanoae.data import DataError, load_dataset, read_idx

# dtype -> IDX type code, for the writer below.
CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype(">i2"): 0x0B,
         np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def idx_bytes(arr: np.ndarray) -> bytes:
    """The IDX encoding of ``arr`` (its dtype must be big-endian or 1 byte)."""
    arr = np.asarray(arr)
    big = arr.dtype.newbyteorder(">") if arr.dtype.itemsize > 1 else arr.dtype
    header = bytes([0, 0, CODES[big], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(big).tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


# --- real MNIST ----------------------------------------------------------------

@pytest.fixture(scope="module")
def train_images(mnist_dir):
    return read_idx(mnist_dir / "train-images-idx3-ubyte.gz")


def test_real_shapes_and_dtypes(mnist_dir, train_images):
    assert train_images.shape == (60000, 28, 28) and train_images.dtype == np.uint8
    train_labels = read_idx(mnist_dir / "train-labels-idx1-ubyte.gz")
    test_images = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    test_labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert train_labels.shape == (60000,) and train_labels.dtype == np.uint8
    assert test_images.shape == (10000, 28, 28) and test_images.dtype == np.uint8
    assert test_labels.shape == (10000,) and test_labels.dtype == np.uint8


def test_real_sanity_values(mnist_dir, train_images):
    assert train_images.mean(dtype=np.float64) == pytest.approx(33.3184, abs=1e-4)
    assert train_images.std(dtype=np.float64) == pytest.approx(78.5675, abs=1e-4)
    train_labels = read_idx(mnist_dir / "train-labels-idx1-ubyte.gz")
    test_labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_loaded_images_are_float32_in_unit_range(mnist_dir, train_images):
    ds = load_dataset("mnist", "train", data_dir=mnist_dir, download=False)
    assert ds.images.dtype == np.float32 and ds.images.shape == (60000, 784)
    assert ds.labels.dtype == np.int64 and ds.labels.shape == (60000,)
    assert ds.images.min() == 0.0 and ds.images.max() == 1.0
    np.testing.assert_array_equal(ds.images[:100], train_images[:100].reshape(100, 784) / np.float32(255))


# --- hand-made files -----------------------------------------------------------

def test_raw_and_gzip_read_equal(tmp_path):
    arr = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    raw = read_idx(write_idx(tmp_path / "a.idx", arr))
    # Detection is by content: a gzip'd file without a .gz name still reads.
    gz = read_idx(write_idx(tmp_path / "b.idx", arr, gz=True))
    np.testing.assert_array_equal(raw, arr)
    np.testing.assert_array_equal(gz, arr)
    assert raw.dtype == gz.dtype == np.uint8


def test_multibyte_types_come_back_native(tmp_path):
    arr = np.array([[1.5, -2.0], [3.25, 1e30]], dtype=">f4")
    out = read_idx(write_idx(tmp_path / "f.idx", arr))
    assert out.dtype == np.dtype("float32") and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


def good_bytes(shape=(4, 3)) -> bytes:
    return idx_bytes(np.ones(shape, dtype=np.uint8))


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_truncated_payload(tmp_path, gz):
    path = tmp_path / "trunc.idx"
    data = good_bytes()[:-5]
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError) as e:
        read_idx(path)
    msg = str(e.value)
    assert str(path) in msg and "truncated" in msg
    assert "need 12 bytes" in msg or "need exactly 12 bytes" in msg
    assert "got 7" in msg


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_trailing_bytes(tmp_path, gz):
    path = tmp_path / "long.idx"
    data = good_bytes() + b"\x00garbage"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError) as e:
        read_idx(path)
    msg = str(e.value)
    assert str(path) in msg and "trailing bytes" in msg and "got 20" in msg


def test_bad_magic(tmp_path):
    path = tmp_path / "magic.idx"
    path.write_bytes(b"\x01\x02" + good_bytes()[2:])
    with pytest.raises(DataError, match="bad magic number") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_text_file_is_not_idx(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not IDX\n")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(path)


def test_unsupported_type_code(tmp_path):
    path = tmp_path / "code.idx"
    path.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 2) + b"ab")
    with pytest.raises(DataError, match=r"unsupported IDX type code 0x07") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_zero_ndim(tmp_path):
    path = tmp_path / "ndim0.idx"
    path.write_bytes(b"\x00\x00\x08\x00")
    with pytest.raises(DataError, match="ndim = 0") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_ndim_larger_than_the_header(tmp_path):
    # ndim says 3 but only one dimension follows: the header is cut short.
    path = tmp_path / "ndim3.idx"
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">I", 2))
    with pytest.raises(DataError, match="truncated IDX header: ndim = 3 needs 12 bytes") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_ndim_smaller_than_the_data(tmp_path):
    # A (4, 3) array relabeled as ndim 1: dims (4,) then 3 * 4 bytes that read as extra.
    path = tmp_path / "ndim1.idx"
    data = bytearray(good_bytes((4, 3)))
    data[3] = 1
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="trailing bytes"):
        read_idx(path)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.idx"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty") as e:
        read_idx(empty)
    assert str(empty) in str(e.value)
    with pytest.raises(DataError, match="cannot read") as e:
        read_idx(tmp_path / "nope.idx")
    assert "nope.idx" in str(e.value)


def test_absurd_dims_in_gzip_header(tmp_path):
    # A corrupt header promising ~2^96 bytes must fail fast, not try to allocate.
    path = tmp_path / "huge.idx.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\xff" * 12))
    with pytest.raises(DataError, match="header is corrupt"):
        read_idx(path)


def test_corrupt_gzip_cut_short(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.arange(4000, dtype=np.uint8) % 7))[:-20])
    with pytest.raises(DataError, match="corrupt gzip stream") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_corrupt_gzip_flipped_byte(tmp_path):
    rng = np.random.default_rng(0)
    blob = bytearray(gzip.compress(idx_bytes(rng.integers(0, 256, (50, 28, 28), dtype=np.uint8))))
    blob[len(blob) // 2] ^= 0xFF
    path = tmp_path / "flip.gz"
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="corrupt gzip stream") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_corrupt_gzip_header(tmp_path):
    path = tmp_path / "header.gz"
    path.write_bytes(b"\x1f\x8b\x63" + b"\x00" * 20)  # compression method 0x63 does not exist
    with pytest.raises(DataError, match="corrupt gzip stream"):
        read_idx(path)


# --- round trip ----------------------------------------------------------------

dtypes = st.sampled_from([np.dtype("u1"), np.dtype("i1"), np.dtype(">i2"),
                          np.dtype(">i4"), np.dtype(">f4"), np.dtype(">f8")])
small_arrays = dtypes.flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5)))


@settings(max_examples=60, deadline=None)
@given(arr=small_arrays, gz=st.booleans())
def test_round_trip(tmp_path_factory, arr, gz):
    path = tmp_path_factory.mktemp("rt") / "x.idx"
    write_idx(path, arr, gz=gz)
    out = read_idx(path)
    assert out.shape == arr.shape
    assert out.dtype == arr.dtype.newbyteorder("=")
    np.testing.assert_array_equal(out, arr)  # NaN equals NaN here


@settings(max_examples=40, deadline=None)
@given(arr=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6)), cut=st.integers(1, 30))
def test_any_truncation_is_a_data_error(tmp_path_factory, arr, cut):
    data = idx_bytes(arr)
    path = tmp_path_factory.mktemp("cut") / "x.idx"
    path.write_bytes(data[: max(0, len(data) - cut)])
    with pytest.raises(DataError):
        read_idx(path)
