"""The user's own data files: every format on small files made here, and every bad input.

Each bad input must be a DataError whose message names the problem and the fix; the
checks assert the message's key words.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nanoae.data import ArrayData, DataError, is_own_data, load_data_file
from nanoae.data import files as files_module

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402


def write_npy_header(path: Path, shape: tuple[int, ...], dtype: str, body: bytes = b"") -> None:
    """A .npy file whose header declares ``shape`` but whose body is only ``body``."""
    with open(path, "wb") as stream:
        np.lib.format.write_array_header_1_0(stream, {"descr": dtype, "fortran_order": False, "shape": shape})
        stream.write(body)


class Marker:
    """Unpickling this object creates ``path``: the file appears only if something unpickled."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# ---- .npy ----------------------------------------------------------------------------------------
def test_npy_2d_is_memory_mapped_read_only_and_exact(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(4, 3) / 7
    np.save(tmp_path / "x.npy", x)
    data = load_data_file(tmp_path / "x.npy")
    assert isinstance(data, ArrayData) and data.format == "npy" and len(data) == 4
    assert isinstance(data.features, np.memmap)
    assert data.features.dtype == np.float32 and not data.features.flags.writeable
    np.testing.assert_array_equal(data.features, x)
    assert data.labels is None and data.key is None and data.image_shape is None
    assert data.path == (tmp_path / "x.npy").resolve()
    assert data.source == f"4 rows x 3 features from {data.path} (.npy float32, memory-mapped)"


@pytest.mark.parametrize("shape", [(5, 4, 3), (5, 4, 3, 3)])
def test_npy_images_are_flattened_as_a_view_of_the_map(tmp_path, shape):
    x = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    np.save(tmp_path / "x.npy", x)
    data = load_data_file(tmp_path / "x.npy")
    assert data.image_shape == shape[1:]
    assert data.features.shape == (5, int(np.prod(shape[1:])))
    assert isinstance(data.features, np.memmap)
    np.testing.assert_array_equal(data.features, x.reshape(5, -1))
    assert data.features.base is not None  # a view, not a copy


def _resident_bytes() -> int:
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads resident memory from /proc")
def test_a_200_mb_npy_is_mapped_not_read(tmp_path):
    path = tmp_path / "big.npy"
    rows, width = 200_000, 1000  # 200 MB of uint8, a sparse file: cheap to make
    write_npy_header(path, (rows, width), "|u1")
    with open(path, "r+b") as stream:
        stream.seek(0, os.SEEK_END)
        stream.truncate(stream.tell() + rows * width)
    before = _resident_bytes()
    data = load_data_file(path)
    grown = _resident_bytes() - before
    assert data.features.shape == (rows, width) and isinstance(data.features, np.memmap)
    assert grown < 20 * 2**20, f"loading grew resident memory by {grown / 2**20:.0f} MB: the file was read"
    assert int(data.features[-1].sum()) == 0  # the last row is reachable through the map


def test_npy_declaring_a_huge_shape_is_refused_before_mapping(tmp_path):
    path = tmp_path / "huge.npy"
    write_npy_header(path, (10**12, 784), "<f4", b"\0" * 64)
    with pytest.raises(DataError) as caught:
        load_data_file(path)
    message = str(caught.value)
    assert "declares shape (1000000000000, 784)" in message and "3,136,000,000,000,000 bytes" in message
    assert "holds 64" in message and "truncated" in message and "numpy.save" in message


def test_npy_truncated_by_one_byte_is_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((10, 10), dtype=np.float32))
    raw = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[:-1])
    with pytest.raises(DataError, match=r"holds 399;.*truncated"):
        load_data_file(tmp_path / "cut.npy")


def test_1d_array_is_refused_with_the_reshape_fix(tmp_path):
    np.save(tmp_path / "v.npy", np.arange(1000.0))
    with pytest.raises(DataError) as caught:
        load_data_file(tmp_path / "v.npy")
    assert "1-D array of 1000 values" in str(caught.value) and "x.reshape(-1, 1)" in str(caught.value)


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.float32(3.0), "single value"),
        (np.zeros((0, 5), dtype=np.float32), "no samples"),
        (np.zeros((4, 0), dtype=np.float32), "no features"),
        (np.zeros((2, 2, 2, 2, 2), dtype=np.float32), "x.reshape(len(x), -1)"),
        (np.ones((3, 2), dtype=np.complex64), "complex numbers"),
        (np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]), "structured array (fields: a, b)"),
        (np.array([["a", "b"]]), "text"),
        (np.array([["2020-01-01"]], dtype="datetime64[D]"), "dates or times"),
    ],
)
def test_npy_shapes_and_dtypes_nanoae_cannot_use_are_refused(tmp_path, array, words):
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(DataError, match="x.npy") as caught:
        load_data_file(tmp_path / "x.npy")
    assert words in str(caught.value)


def test_object_npy_is_refused_and_nothing_is_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    array = np.empty((1, 1), dtype=object)
    array[0, 0] = Marker(marker)
    np.save(tmp_path / "obj.npy", array, allow_pickle=True)
    with pytest.raises(DataError, match="Python objects"):
        load_data_file(tmp_path / "obj.npy")
    assert not marker.exists()


def test_bool_npy_is_kept_as_bool(tmp_path):
    x = np.array([[True, False], [False, True]])
    np.save(tmp_path / "b.npy", x)
    data = load_data_file(tmp_path / "b.npy")
    assert data.features.dtype == np.bool_
    np.testing.assert_array_equal(data.features, x)


def test_big_endian_npy_reads_its_values(tmp_path):
    x = np.arange(6, dtype=">f8").reshape(3, 2) / 3
    np.save(tmp_path / "be.npy", x)
    np.testing.assert_array_equal(load_data_file(tmp_path / "be.npy").features, x.astype(np.float64))


def test_small_fortran_npy_is_copied_into_row_order(tmp_path):
    x = np.asfortranarray(np.arange(20, dtype=np.float32).reshape(4, 5))
    np.save(tmp_path / "f.npy", x)
    data = load_data_file(tmp_path / "f.npy")
    assert data.features.flags.c_contiguous and not data.features.flags.writeable
    np.testing.assert_array_equal(data.features, x)
    assert "Fortran order copied into row order" in data.source


def test_large_fortran_npy_is_refused_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(files_module, "FORTRAN_COPY_LIMIT", 40)
    np.save(tmp_path / "f.npy", np.asfortranarray(np.ones((4, 5), dtype=np.float32)))
    with pytest.raises(DataError, match=r"Fortran \(column\) order.*np\.ascontiguousarray"):
        load_data_file(tmp_path / "f.npy")


def test_nan_in_a_later_chunk_is_found_with_its_row(tmp_path, monkeypatch):
    monkeypatch.setattr(files_module, "FINITE_CHUNK_VALUES", 6)  # two rows of 3 per chunk
    x = np.zeros((9, 3), dtype=np.float32)
    x[7, 2] = np.inf
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(DataError) as caught:
        load_data_file(tmp_path / "x.npy")
    assert "sample 7 (0-based), feature 2 is inf" in str(caught.value) and "fill or drop" in str(caught.value)


@pytest.mark.parametrize("content", [b"", b"not a numpy file at all", b"\x93NUMPY\x01\x00\x10\x00{'descr': garbage"])
def test_files_that_are_not_npy_are_refused(tmp_path, content):
    (tmp_path / "x.npy").write_bytes(content)
    with pytest.raises(DataError, match=r"x\.npy .*(magic bytes|damaged \.npy header).*numpy\.save"):
        load_data_file(tmp_path / "x.npy")


# ---- .npz ----------------------------------------------------------------------------------------
def test_npz_with_one_array_needs_no_key(tmp_path):
    x = np.arange(6, dtype=np.int16).reshape(3, 2)
    np.savez_compressed(tmp_path / "d.npz", pixels=x)
    data = load_data_file(tmp_path / "d.npz")
    assert data.format == "npz" and data.key == "pixels" and data.features.dtype == np.int16
    np.testing.assert_array_equal(data.features, x)
    assert not data.features.flags.writeable


def test_npz_key_chooses_among_several_and_is_needed_then(tmp_path):
    np.savez(tmp_path / "d.npz", train=np.ones((2, 3)), test=np.zeros((4, 3, 1)))
    with pytest.raises(DataError) as caught:
        load_data_file(tmp_path / "d.npz")
    assert "holds 2 arrays (test, train)" in str(caught.value) and "--key NAME" in str(caught.value)
    data = load_data_file(tmp_path / "d.npz", key="test")
    assert data.key == "test" and data.features.shape == (4, 3) and data.image_shape == (3, 1)


def test_npz_missing_key_lists_the_keys(tmp_path):
    np.savez(tmp_path / "d.npz", a=np.ones((2, 3)), b=np.ones((2, 3)))
    with pytest.raises(DataError) as caught:
        load_data_file(tmp_path / "d.npz", key="c")
    assert "no array named 'c'" in str(caught.value) and "a, b" in str(caught.value) and "--key NAME" in str(caught.value)


def test_object_npz_is_refused_and_nothing_is_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    array = np.empty((2, 1), dtype=object)
    array[:, 0] = [Marker(marker), Marker(marker)]
    np.savez(tmp_path / "o.npz", x=array)
    with pytest.raises(DataError) as caught:
        load_data_file(tmp_path / "o.npz")
    assert "Python objects" in str(caught.value) and "astype(np.float32)" in str(caught.value)
    assert not marker.exists()


def test_npz_member_declaring_a_huge_shape_is_refused(tmp_path):
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**9, 10**3)})
    with zipfile.ZipFile(tmp_path / "h.npz", "w") as archive:
        archive.writestr("x.npy", header.getvalue() + b"\0" * 80)
    with pytest.raises(DataError, match=r"\['x'\] declares shape \(1000000000, 1000\).*truncated"):
        load_data_file(tmp_path / "h.npz")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 broken", b"plain text"])
def test_files_that_are_not_npz_are_refused(tmp_path, content):
    (tmp_path / "d.npz").write_bytes(content)
    with pytest.raises(DataError, match=r"not a readable \.npz archive.*numpy\.savez"):
        load_data_file(tmp_path / "d.npz")


def test_npz_without_arrays_is_refused(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "e.npz", "w") as archive:
        archive.writestr("readme.txt", "nothing")
    with pytest.raises(DataError, match="holds no arrays"):
        load_data_file(tmp_path / "e.npz")


# ---- .csv / .tsv -----------------------------------------------------------------------------------
def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_header_is_detected_and_skipped(tmp_path):
    data = load_data_file(write(tmp_path / "t.csv", "x1,x2,x3\n1,2,3\n4,5.5,-6e-1\n"))
    assert data.format == "csv" and data.feature_names == ["x1", "x2", "x3"]
    assert data.features.dtype == np.float64 and not data.features.flags.writeable
    np.testing.assert_array_equal(data.features, [[1, 2, 3], [4, 5.5, -0.6]])
    assert data.source.endswith("(CSV, header skipped)")


def test_csv_without_header_reads_every_row(tmp_path):
    data = load_data_file(write(tmp_path / "t.csv", "1,2\n3,4\n"))
    assert data.feature_names is None and data.source.endswith("(CSV, no header)")
    np.testing.assert_array_equal(data.features, [[1, 2], [3, 4]])


def test_label_column_by_name_is_removed_and_returned(tmp_path):
    data = load_data_file(write(tmp_path / "t.csv", "a,label,b\n1,7,2\n3,0,4\n"), label_column="label")
    np.testing.assert_array_equal(data.features, [[1, 2], [3, 4]])
    assert data.labels.dtype == np.int64 and data.labels.tolist() == [7, 0]
    assert data.label_column == "label" and data.feature_names == ["a", "b"]
    assert "label column 'label'" in data.source


@pytest.mark.parametrize(("given", "resolved"), [(0, "y"), (-1, "b"), ("0", "y")])
def test_label_column_by_index_resolves_to_the_header_name(tmp_path, given, resolved):
    data = load_data_file(write(tmp_path / "t.csv", "y,a,b\n0.5,2,3\n1.5,5,6\n"), label_column=given)
    assert data.label_column == resolved
    expected_labels = {"y": [0.5, 1.5], "b": [3, 6]}[resolved]
    np.testing.assert_array_equal(data.labels, expected_labels)
    assert data.labels.dtype == (np.float64 if resolved == "y" else np.int64)
    assert data.features.shape == (2, 2)


def test_label_column_index_without_header(tmp_path):
    data = load_data_file(write(tmp_path / "t.csv", "1,2,9\n3,4,8\n"), label_column="-1")
    assert data.label_column == 2 and data.labels.tolist() == [9, 8]
    np.testing.assert_array_equal(data.features, [[1, 2], [3, 4]])


def test_unknown_label_column_lists_the_columns(tmp_path):
    path = write(tmp_path / "t.csv", "a,b,c\n1,2,3\n")
    with pytest.raises(DataError) as caught:
        load_data_file(path, label_column="target")
    assert "no column named 'target'" in str(caught.value) and "a, b, c" in str(caught.value)
    with pytest.raises(DataError, match=r"3 columns, so no column 3; pass 0\.\.2"):
        load_data_file(path, label_column=3)


def test_ragged_csv_names_the_row_and_both_counts(tmp_path):
    rows = ["a,b,c"] + ["1,2,3"] * 15 + ["1,2"] + ["1,2,3"]
    with pytest.raises(DataError) as caught:
        load_data_file(write(tmp_path / "t.csv", "\n".join(rows) + "\n"))
    assert "row 17 has 2 cells, the first row has 3" in str(caught.value)


def test_non_numeric_cell_names_row_column_and_value(tmp_path):
    with pytest.raises(DataError) as caught:
        load_data_file(write(tmp_path / "t.csv", "x1,x2,x3\n1,2,3\n4,5,6\n7,8,9\n1,2,abc\n"))
    assert "row 5, column 'x3': 'abc' is not a number" in str(caught.value)


def test_empty_cell_is_refused_with_the_fix(tmp_path):
    with pytest.raises(DataError) as caught:
        load_data_file(write(tmp_path / "t.csv", "1,2,3\n4,,6\n"))
    assert "row 2, column 1 is empty: fill or drop those rows" in str(caught.value)


@pytest.mark.parametrize(("cell", "shown"), [("nan", "nan"), ("NaN", "nan"), ("inf", "inf"), ("-Infinity", "-inf")])
def test_nan_and_infinite_cells_are_refused_with_their_row(tmp_path, cell, shown):
    # a blank line before the bad row: the row number is still the file's line number
    with pytest.raises(DataError) as caught:
        load_data_file(write(tmp_path / "t.csv", f"a,b\n1,2\n\n3,{cell}\n"))
    assert f"row 4, column 'b' is {shown}" in str(caught.value) and "fill or drop" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "words"),
    [("", "is empty (0 bytes)"), ("\n\n  \n", "holds no rows"), ("a,b,c\n", "has a header row (a, b, c) but no data rows")],
)
def test_empty_and_header_only_csv_are_refused(tmp_path, text, words):
    with pytest.raises(DataError, match="t.csv") as caught:
        load_data_file(write(tmp_path / "t.csv", text))
    assert words in str(caught.value)


def test_label_column_leaving_no_features_is_refused(tmp_path):
    with pytest.raises(DataError, match="no features are left"):
        load_data_file(write(tmp_path / "t.csv", "y\n1\n2\n"), label_column="y")


def test_tsv_quoted_cells_byte_order_mark_and_blank_lines(tmp_path):
    (tmp_path / "t.tsv").write_bytes('\ufeff"first"\t"second"\n"1.5"\t2\n\n3\t"4"\n'.encode("utf-8"))
    data = load_data_file(tmp_path / "t.tsv")
    assert data.format == "tsv" and data.feature_names == ["first", "second"]
    np.testing.assert_array_equal(data.features, [[1.5, 2], [3, 4]])


def test_windows_line_endings_and_one_column(tmp_path):
    data = load_data_file(write(tmp_path / "t.csv", "v\r\n1\r\n2.5\r\n"))
    assert data.feature_names == ["v"]
    np.testing.assert_array_equal(data.features, [[1.0], [2.5]])


def test_underscored_numbers_are_not_numbers(tmp_path):
    with pytest.raises(DataError, match=r"row 2, column 1: '1_000' is not a number"):
        load_data_file(write(tmp_path / "t.csv", "1,2\n3,1_000\n"))


def test_semicolon_separated_csv_is_named_as_such(tmp_path):
    with pytest.raises(DataError) as caught:
        load_data_file(write(tmp_path / "t.csv", "1;2;3\n4;5;6\n"))
    message = str(caught.value)
    assert "one cell holding ';'" in message and "separated by commas (.csv)" in message and "tabs as .tsv" in message


def test_not_utf8_csv_is_refused(tmp_path):
    (tmp_path / "t.csv").write_bytes(b"1,2\n3,\xff\n")
    with pytest.raises(DataError, match="not UTF-8"):
        load_data_file(tmp_path / "t.csv")


@settings(max_examples=40, deadline=None)
@given(
    values=hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=6),
        elements=st.floats(-1e12, 1e12, allow_nan=False, allow_infinity=False),
    ),
    header=st.booleans(),
    delimiter=st.sampled_from([",", "\t"]),
)
def test_csv_round_trips_random_numeric_arrays(tmp_path_factory, values, header, delimiter):
    path = tmp_path_factory.mktemp("csv") / ("t.csv" if delimiter == "," else "t.tsv")
    names = [f"f{j}" for j in range(values.shape[1])]
    np.savetxt(path, values, fmt="%.17g", delimiter=delimiter, header=delimiter.join(names) if header else "", comments="")
    data = load_data_file(path)
    np.testing.assert_array_equal(data.features, values)
    assert data.feature_names == (names if header else None)


# ---- image folders ------------------------------------------------------------------------------------
def save_images(folder: Path, arrays: dict[str, np.ndarray], mode: str | None = None) -> Path:
    folder.mkdir(exist_ok=True)
    for name, array in arrays.items():
        image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
        image.save(folder / name)
    return folder


def test_grey_images_in_name_order(tmp_path):
    rng = np.random.default_rng(0)
    pictures = {name: rng.integers(0, 256, (6, 8), dtype=np.uint8) for name in ("b.png", "a.PNG", "c.png")}
    folder = save_images(tmp_path / "imgs", pictures)
    (folder / "notes.txt").write_text("ignored")
    save_images(folder / "sub", {"d.png": np.zeros((3, 3), dtype=np.uint8)})  # sub-folders are not read
    data = load_data_file(folder)
    assert data.format == "images" and data.image_shape == (6, 8) and data.features.dtype == np.uint8
    expected = np.stack([pictures[name].reshape(-1) for name in ("a.PNG", "b.png", "c.png")])
    np.testing.assert_array_equal(data.features, expected)
    assert data.source == f"3 rows x 48 features from {folder.resolve()} (8x6 grey images, uint8)"


def test_rgb_and_rgba_and_palette_images_become_rgb(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((4, 5, 1), 7, dtype=np.uint8)], axis=2)
    folder = save_images(tmp_path / "imgs", {"1.png": rgb, "2.png": rgba})
    Image.fromarray(rgb).quantize(8).save(folder / "3.png")  # palette ("P")
    Image.fromarray(rgb).save(folder / "4.JPEG", quality=95)
    data = load_data_file(folder)
    assert data.image_shape == (4, 5, 3) and data.features.shape == (4, 60)
    np.testing.assert_array_equal(data.features[0], rgb.reshape(-1))
    np.testing.assert_array_equal(data.features[1], rgb.reshape(-1))  # alpha dropped
    palette = np.asarray(Image.open(folder / "3.png").convert("RGB"))
    np.testing.assert_array_equal(data.features[2], palette.reshape(-1))
    decoded = np.asarray(Image.open(folder / "4.JPEG").convert("RGB"))  # JPEG is lossy: Pillow's own decoding
    np.testing.assert_array_equal(data.features[3], decoded.reshape(-1))


def test_sixteen_bit_grey_png_keeps_its_depth(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    pixels = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    Image.fromarray(pixels).save(folder / "deep.png")
    data = load_data_file(folder)
    assert data.features.dtype == np.uint16 and data.image_shape == (2, 2)
    np.testing.assert_array_equal(data.features[0], pixels.reshape(-1))


def test_images_of_different_sizes_are_refused(tmp_path):
    folder = save_images(tmp_path / "imgs", {"a.png": np.zeros((8, 8), np.uint8), "b.png": np.zeros((8, 9), np.uint8)})
    with pytest.raises(DataError) as caught:
        load_data_file(folder)
    assert "a.png is 8x8, b.png is 9x8 (width x height): resize them to one size" in str(caught.value)


def test_grey_and_colour_images_together_are_refused(tmp_path):
    folder = save_images(tmp_path / "imgs", {"a.png": np.zeros((4, 4), np.uint8), "b.png": np.zeros((4, 4, 3), np.uint8)})
    with pytest.raises(DataError, match=r"a\.png is grey \(L\), b\.png is RGB: save them all in one mode"):
        load_data_file(folder)


def test_a_broken_image_is_named(tmp_path):
    folder = save_images(tmp_path / "imgs", {"a.png": np.zeros((4, 4), np.uint8)})
    (folder / "b.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"b\.png could not be read as an image .*remove or replace it"):
        load_data_file(folder)


def test_folder_without_images_or_mnist_says_what_it_looked_for(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError) as caught:
        load_data_file(tmp_path)
    message = str(caught.value)
    assert "no image files (.png, .jpg, .jpeg" in message and "train-images-idx3-ubyte.gz" in message


def test_missing_pillow_is_a_clear_error(tmp_path, monkeypatch):
    folder = save_images(tmp_path / "imgs", {"a.png": np.zeros((4, 4), np.uint8)})
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(DataError, match=r"^reading images needs Pillow: pip install pillow$"):
        load_data_file(folder)


# ---- dispatch ---------------------------------------------------------------------------------------------
def test_unknown_suffix_lists_the_formats(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(DataError) as caught:
        load_data_file(tmp_path / "x.parquet")
    assert "cannot read .parquet files" in str(caught.value)
    assert all(word in str(caught.value) for word in (".npy", ".npz", ".csv", ".tsv", ".png"))


def test_missing_file_says_so(tmp_path):
    with pytest.raises(DataError, match=r"nope\.npy does not exist: check the path given to --data"):
        load_data_file(tmp_path / "nope.npy")


def test_options_of_other_formats_are_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((2, 2)))
    with pytest.raises(DataError, match="--label-column chooses a column of a CSV/TSV file"):
        load_data_file(tmp_path / "x.npy", label_column=0)
    with pytest.raises(DataError, match=r"--key chooses an array inside a \.npz file"):
        load_data_file(write(tmp_path / "t.csv", "1\n"), key="x")


def test_is_own_data_tells_files_and_image_folders_from_mnist_folders(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((2, 2)))
    assert is_own_data(tmp_path / "x.npy")
    assert is_own_data(tmp_path / "missing.csv")  # so the file loader says it does not exist
    assert not is_own_data(tmp_path / "missing-folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert is_own_data(empty)  # the loader's error lists images and MNIST files
    images = save_images(tmp_path / "imgs", {"a.png": np.zeros((2, 2), np.uint8)})
    assert is_own_data(images)
    mnist = tmp_path / "m"
    mnist.mkdir()
    (mnist / "t10k-labels-idx1-ubyte.gz").write_bytes(b"")
    assert not is_own_data(mnist)  # even one MNIST file: the MNIST search reports what is missing
    root = tmp_path / "root"
    (root / "fashion").mkdir(parents=True)
    (root / "fashion" / "train-images-idx3-ubyte").write_bytes(b"")
    assert not is_own_data(root)


def test_is_own_data_on_the_real_mnist_folder(mnist_dir):
    assert not is_own_data(mnist_dir)
