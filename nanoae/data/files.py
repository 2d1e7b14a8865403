"""The user's own data: one file (or a folder of images) read as a (samples, features) array.

Formats, by suffix (case-insensitive):

- ``.npy``: memory-mapped read-only, never copied (its header is checked against the
  file's size first); numeric dtypes only (bool, integers, real floats);
  (n, d) as it is, (n, h, w) and (n, h, w, c) flattened to (n, h*w*c) as a view;
  the image shape is kept for the figures when c is 1, 3 or 4 (other c are plain features).
  A Fortran-ordered file is copied into row order when it holds at most
  ``FORTRAN_COPY_LIMIT`` bytes (rows of a column-ordered file are scattered over the
  whole file) and refused, with the fix, above that.
- ``.npz``: the array named by ``key`` (default: the only one), read into memory
  (a zip member cannot be memory-mapped); the same dtype and shape rules.
- ``.csv`` (comma) / ``.tsv`` (tab): numbers only, read as float64. A first row with a
  cell that is not a number is a header: skipped, its names kept. ``label_column``
  (a header name or a 0-based index; negative indices count from the end as in
  Python) is removed from the features and returned as labels. Blank lines are skipped.
- a folder: every ``.png``, ``.jpg`` and ``.jpeg`` file directly inside it (suffix in
  any case; sub-folders and other files ignored), in order of file name, read with
  Pillow (an optional dependency, imported only then); all of one size and one mode:

  - grey ``L`` -> (h, w) uint8; bilevel ``1`` -> grey 0/255; grey with alpha ``LA`` ->
    grey (alpha dropped);
  - ``RGB`` -> (h, w, 3) uint8; ``RGBA``, palette (``P``, ``PA``), ``CMYK`` and the other
    colour modes -> converted to RGB (alpha dropped, not blended);
  - 16-bit grey (``I;16`` and its byte orders, or ``I`` with values in 0..65535) ->
    (h, w) uint16, kept at full depth (``auto`` scaling then divides by 65535);
  - other modes (32-bit integer or float pixels) are refused.

Nothing is unpickled. Float data are checked for NaN and infinity chunk by chunk
(memory-mapped files are read, never copied). Every problem is a :class:`DataError`
naming the file, the place in it and the fix.
"""

from __future__ import annotations

import csv
import math
import re
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import DataError
from .registry import DATASETS
from .sources import scan_dir

__all__ = ["ArrayData", "load_data_file", "is_own_data", "read_image_folder", "FORMATS", "FORTRAN_COPY_LIMIT", "IMAGE_SUFFIXES"]

TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t"}
FORMATS = (
    ".npy, .npz (--key NAME), .csv or .tsv (numbers, optional header row, --label-column), "
    "or a folder of same-sized .png/.jpg images"
)
FORTRAN_COPY_LIMIT = 1 << 30
# The channel counts of (n, h, w, c) arrays drawn as images: grey, RGB, RGBA.
IMAGE_CHANNELS = (1, 3, 4)
# Rows per chunk of the NaN/inf scan: about 4M values per chunk.
FINITE_CHUNK_VALUES = 1 << 22


@dataclass(frozen=True, eq=False)
class ArrayData:
    """One data set read from the user's file.

    Attributes:
        features: (n, d), read-only, the file's own dtype (not scaled): a ``np.memmap``
            view for ``.npy``; float64 for CSV/TSV; uint8 (uint16 for 16-bit grey) for images.
        labels: (n,) the label column's values (int64 when all are whole numbers,
            else float64), or None.
        path: the resolved path read.
        format: ``"npy"``, ``"npz"``, ``"csv"``, ``"tsv"`` or ``"images"``.
        key: the ``.npz`` array used, else None.
        label_column: the label column as given, resolved to its header name when the
            file has a header (else a non-negative index); None without one.
        feature_names: the CSV/TSV header names of the feature columns, else None.
        image_shape: (h, w) or (h, w, c) for image folders and (n, h, w[, c]) arrays, else None.
        source: one line for people, e.g. ``"1797 rows x 64 features from /x/digits.csv (CSV, header skipped)"``.
    """

    features: np.ndarray
    labels: np.ndarray | None
    path: Path
    format: str
    key: str | None
    label_column: str | int | None
    feature_names: list[str] | None
    image_shape: tuple[int, ...] | None
    source: str

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def __repr__(self) -> str:
        return f"ArrayData({self.source!r}, dtype={self.features.dtype})"


# ---- helpers shared by the formats ---------------------------------------------------------
def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + (",)" if len(shape) == 1 else ")")


def _check_dtype(dtype: np.dtype, where: str) -> None:
    """Refuse every dtype but bool, integers and real floats, saying how to convert."""
    kind = dtype.kind
    if kind in "biuf":
        return
    if kind == "c":
        problem, fix = "complex numbers", "save x.real, np.abs(x), or both side by side"
    elif kind == "O":
        problem, fix = "Python objects (reading them would need unpickling)", "save a numeric array, e.g. np.save(path, x.astype(np.float32))"
    elif kind == "V":
        names = ", ".join(dtype.names or ()) or "raw bytes"
        problem = f"a structured array (fields: {names})"
        fix = "save the fields as one numeric 2-D array (numpy.lib.recfunctions.structured_to_unstructured)"
    elif kind in "SU":
        problem, fix = "text", "convert it to numbers before saving"
    elif kind in "mM":
        problem, fix = "dates or times", "convert them to numbers (e.g. seconds) before saving"
    else:
        problem, fix = f"dtype {dtype}", "save a numeric array"
    raise DataError(f"{where} holds {problem} (dtype {dtype}); nanoae needs numbers (integers or floats): {fix}")


def _check_shape(shape: tuple[int, ...], where: str) -> tuple[int, ...] | None:
    """Refuse shapes nanoae cannot read as (samples, features); the image shape of (n, h, w[, c])."""
    if len(shape) == 0:
        raise DataError(f"{where} holds a single value (a 0-d array); nanoae needs (n_samples, n_features)")
    if len(shape) == 1:
        raise DataError(
            f"{where} is a 1-D array of {shape[0]} values: nanoae needs (n_samples, n_features); "
            "for one feature save x.reshape(-1, 1), for one sample x.reshape(1, -1)"
        )
    if len(shape) > 4:
        raise DataError(
            f"{where} has shape {_shape_text(shape)}; nanoae reads (n, features), (n, h, w) or (n, h, w, channels): "
            "flatten each sample with x.reshape(len(x), -1)"
        )
    if shape[0] == 0:
        raise DataError(f"{where} has shape {_shape_text(shape)}: no samples; it needs at least one row")
    if 0 in shape[1:]:
        raise DataError(f"{where} has shape {_shape_text(shape)}: no features; each sample needs at least one value")
    if len(shape) == 4 and shape[3] not in IMAGE_CHANNELS:
        return None  # (n, h, w, c) with c of 2 or 5+: plain features, not pictures
    return tuple(shape[1:]) if len(shape) > 2 else None


def _read_header(stream, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from a .npy header; the stream is left at the data."""
    try:
        version = np.lib.format.read_magic(stream)
    except ValueError:
        raise DataError(f"{where} is not a .npy array (it lacks NumPy's magic bytes): write it with numpy.save") from None
    try:
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise DataError(
                f"{where} is .npy format version {version[0]}.{version[1]}, used for structured arrays with "
                "non-Latin field names; nanoae needs a numeric array written by numpy.save"
            )
    except DataError:
        raise
    except Exception as exc:  # NumPy parses the header with Python's tokenizer: any of its errors
        raise DataError(f"{where} has a damaged .npy header ({exc}); write it again with numpy.save") from None
    return tuple(int(s) for s in shape), bool(fortran), dtype


def _check_declared_size(shape, dtype, header_bytes: int, available: int, where: str) -> None:
    """A header declaring more data than the file holds would map (or allocate) garbage."""
    declared = math.prod(shape) * dtype.itemsize
    if header_bytes + declared > available:
        raise DataError(
            f"{where} declares shape {_shape_text(shape)} of {dtype} = {declared:,} bytes but the file holds "
            f"{max(0, available - header_bytes):,}; the file is truncated or not a .npy written by numpy.save"
        )


def _check_finite(features: np.ndarray, place: Callable[[int, int], str]) -> None:
    """Raise a DataError at the first NaN or infinity of float ``features: (n, d)``,
    scanning chunks of rows (a memmap is read, never copied whole)."""
    if features.dtype.kind != "f":
        return
    n, d = features.shape
    step = max(1, FINITE_CHUNK_VALUES // d)
    for start in range(0, n, step):
        chunk = features[start : start + step]
        finite = np.isfinite(chunk)
        if not finite.all():
            row, column = (int(v) for v in np.argwhere(~finite)[0])
            value = chunk[row, column]
            raise DataError(f"{place(start + row, column)} is {value}: nanoae needs finite numbers; fill or drop those rows")


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _words(n: int, d: int, path: Path, detail: str) -> str:
    return f"{n} rows x {d} features from {path} ({detail})"


def _sample_place(where: str) -> Callable[[int, int], str]:
    return lambda row, column: f"{where}: sample {row} (0-based), feature {column}"


# ---- .npy ---------------------------------------------------------------------------------------
def _load_npy(path: Path) -> ArrayData:
    where = str(path)
    size = path.stat().st_size
    with open(path, "rb") as stream:
        shape, fortran, dtype = _read_header(stream, where)
        header_bytes = stream.tell()
    _check_dtype(dtype, where)
    image_shape = _check_shape(shape, where)
    _check_declared_size(shape, dtype, header_bytes, size, where)
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    n = shape[0]
    detail = f".npy {dtype}, memory-mapped"
    if fortran and not array.flags.c_contiguous:
        if array.nbytes > FORTRAN_COPY_LIMIT:
            raise DataError(
                f"{where} is stored in Fortran (column) order and holds {array.nbytes:,} bytes; its rows would be read "
                f"scattered over the whole file: save it in row order with np.save(path, np.ascontiguousarray(x))"
            )
        array = _frozen(np.ascontiguousarray(array))
        detail = f".npy {dtype}, Fortran order copied into row order"
    features = array.reshape(n, -1)  # a view: the memmap is C-contiguous
    _check_finite(features, _sample_place(where))
    return ArrayData(features, None, path, "npy", None, None, None, image_shape, _words(n, features.shape[1], path, detail))


# ---- .npz -----------------------------------------------------------------------------------------
def _load_npz(path: Path, key: str | None) -> ArrayData:
    where = str(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{where} is not a readable .npz archive ({exc}); write it with numpy.savez") from None
    with archive:
        members = {name[: -len(".npy")]: name for name in archive.namelist() if name.endswith(".npy")}
        if not members:
            raise DataError(f"{where} holds no arrays; write one with numpy.savez(path, x=x)")
        listed = ", ".join(sorted(members))
        if key is None:
            if len(members) > 1:
                raise DataError(f"{where} holds {len(members)} arrays ({listed}): choose one with --key NAME")
            key = next(iter(members))
        elif key not in members:
            raise DataError(f"{where} has no array named {key!r}; its arrays: {listed}: pass one of them with --key NAME")
        member = f"{where}[{key!r}]"
        info = archive.getinfo(members[key])
        try:
            with archive.open(info) as stream:
                shape, fortran, dtype = _read_header(stream, member)
                header_bytes = stream.tell()
            _check_dtype(dtype, member)
            image_shape = _check_shape(shape, member)
            _check_declared_size(shape, dtype, header_bytes, info.file_size, member)
            with archive.open(info) as stream:
                array = np.lib.format.read_array(stream, allow_pickle=False)
        except DataError:
            raise  # a DataError is a ValueError: the checks' own message, not wrapped below
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise DataError(f"{member} could not be read ({exc}); the archive is damaged: write it again with numpy.savez") from None
        except ValueError as exc:  # data shorter than its header says, and the like
            raise DataError(f"{member} could not be read ({exc}); write it again with numpy.savez") from None
    n = shape[0]
    features = _frozen(np.ascontiguousarray(array).reshape(n, -1))
    _check_finite(features, _sample_place(member))
    detail = f".npz array {key!r}, {dtype}"
    return ArrayData(features, None, path, "npz", key, None, None, image_shape, _words(n, features.shape[1], path, detail))


# ---- .csv / .tsv ----------------------------------------------------------------------------------
def _is_number(cell: str) -> bool:
    text = cell.strip()
    if not text or "_" in text:  # float() takes "1_000"; a spreadsheet does not
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True


# Cells that are values, not column names, though float() refuses them: a first row
# holding one is data (and refused as such), never a header silently dropped.
MISSING_MARKERS = frozenset({"na", "n/a", "#n/a", "nan", "null", "none", "nil", "missing", "?", "-"})
_GROUPED_NUMBER = re.compile(r"[-+]?\d{1,3}([,' \u00a0]\d{3})+(\.\d+)?")
_PERCENTAGE = re.compile(r"[-+]?\d+(\.\d+)?\s*%")


def _value_problem(cell: str) -> str | None:
    """Why a cell that is not a plain number still looks like a value (a missing-value
    marker, a number with thousands separators or a percent sign), or None for a name."""
    text = cell.strip()
    if text.lower() in MISSING_MARKERS:
        return "marks a missing value: nanoae needs finite numbers; fill or drop those rows"
    if _GROUPED_NUMBER.fullmatch(text):
        return "is a number written with thousands separators: save the numbers without them (1000, not 1,000)"
    if _PERCENTAGE.fullmatch(text):
        return "is a percentage: save it as a plain number (0.5 or 50, not 50%)"
    return None


class _Table:
    """Where the numbers of a CSV/TSV file start, and its header names.

    The first row is a header when a cell of it is not a number and none of its cells
    looks like a value (``_value_problem``): a first row ``"1,000",2`` or ``NA,2`` is
    data, refused with its row and cell, not dropped as a header.
    """

    def __init__(self, path: Path, delimiter: str):
        self.path = path
        self.delimiter = delimiter
        self.names: list[str] | None = None
        self.skip_lines = 0  # physical lines before the first data row
        self.label_index: int | None = None  # set by the reader once the label column is known
        first, second = None, None
        with self._open() as stream:
            reader = csv.reader(stream, delimiter=delimiter)
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                if first is None:
                    first = row
                    lines_after_first = reader.line_num
                else:
                    second = row
                    break
        if first is None:
            raise DataError(f"{path} holds no rows (it is empty or blank): nothing to train on")
        self.width = len(first)
        others = [mark for mark in (";", "\t", ",", "|") if mark != delimiter and mark in first[0]]
        if self.width == 1 and others:
            expected = {",": "commas (.csv)", "\t": "tabs (.tsv)"}[delimiter]
            raise DataError(
                f"{path}: its first row {first[0][:60]!r} is one cell holding {others[0]!r}, but a {path.suffix} file is "
                f"read as separated by {expected}: save the table with commas as .csv or with tabs as .tsv"
            )
        names = [cell for cell in first if cell.strip() and not _is_number(cell)]
        if names and not any(_value_problem(cell) for cell in names):
            self.names = [cell.strip() or f"column {j}" for j, cell in enumerate(first)]
            self.skip_lines = lines_after_first
            if second is None:
                raise DataError(f"{path} has a header row ({', '.join(self.names[:5])}{', ...' if self.width > 5 else ''}) but no data rows")

    def _open(self):
        return open(self.path, newline="", encoding="utf-8-sig")

    def column_name(self, j: int) -> str:
        return repr(self.names[j]) if self.names else str(j)

    def data_rows(self):
        """(file row number, cells) of every non-blank data row, 1-based like an editor's lines."""
        with self._open() as stream:
            reader = csv.reader(stream, delimiter=self.delimiter)
            for row in reader:
                if reader.line_num <= self.skip_lines or not any(cell.strip() for cell in row):
                    continue
                yield reader.line_num, row

    def file_row(self, index: int) -> int:
        """The file row number of data row ``index`` (0-based)."""
        for i, (line, _) in enumerate(self.data_rows()):
            if i == index:
                return line
        raise IndexError(index)

    def read(self) -> np.ndarray:
        """All data rows as float64 (rows, width): NumPy's fast parser, and on any
        refusal a row-by-row pass that finds the exact cell and says what is wrong."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table = np.loadtxt(
                    self.path,
                    delimiter=self.delimiter,
                    skiprows=self.skip_lines,
                    dtype=np.float64,
                    ndmin=2,
                    comments=None,
                    encoding="utf-8-sig",
                )
            if table.shape[1] == self.width:
                return table
        except (ValueError, UnicodeDecodeError):
            pass
        return self._read_slowly()

    def _read_slowly(self) -> np.ndarray:
        rows = []
        for line, cells in self.data_rows():
            if len(cells) != self.width:
                raise DataError(
                    f"{self.path}: row {line} has {len(cells)} cells, the first row has {self.width}; "
                    "every row needs the same number of cells"
                )
            try:
                if "_" in "".join(cells):  # float() takes "1_000"; a spreadsheet and NumPy do not
                    raise ValueError
                rows.append(np.array(list(map(float, cells)), dtype=np.float64))
            except ValueError:
                self._refuse_row(line, cells)
        return np.stack(rows)

    def _refuse_row(self, line: int, cells: list[str]) -> None:
        """Raise the DataError for the first cell of a row that is not a number."""
        for j, cell in enumerate(cells):
            text = cell.strip()
            if not text:
                raise DataError(f"{self.path}: row {line}, column {self.column_name(j)} is empty: fill or drop those rows")
            if not _is_number(text) and j == self.label_index:
                raise DataError(
                    f"{self.path}: row {line}, column {self.column_name(j)} (the label column) holds {text[:40]!r}: "
                    "labels must be numbers; encode the classes as numbers (0, 1, 2, ...)"
                )
            if not _is_number(text) and _value_problem(text):
                raise DataError(f"{self.path}: row {line}, column {self.column_name(j)}: {text[:40]!r} {_value_problem(text)}")
            if not _is_number(text):
                raise DataError(
                    f"{self.path}: row {line}, column {self.column_name(j)}: {text[:40]!r} is not a number; "
                    "nanoae reads numeric tables only (encode categories as numbers, or drop the column)"
                )
        raise AssertionError(f"row {line} of {self.path} was refused but every cell is a number")  # unreachable


def _resolve_label_column(table: _Table, label_column: str | int) -> int:
    """The 0-based index of the label column, given as a header name or an index."""
    columns = ", ".join(table.names) if table.names else f"0..{table.width - 1}"
    if isinstance(label_column, str):
        if table.names and label_column in table.names:
            if table.names.count(label_column) > 1:
                raise DataError(f"{table.path}: the header names column {label_column!r} more than once; rename one or pass its index")
            return table.names.index(label_column)
        try:
            label_column = int(label_column.strip())
        except ValueError:
            what = f"no column named {label_column!r}" if table.names else f"no header row, so no column named {label_column!r}"
            raise DataError(f"{table.path} has {what}; its columns: {columns} (a name or a 0-based index)") from None
    if isinstance(label_column, bool) or not isinstance(label_column, (int, np.integer)):
        raise DataError(f"label column must be a column name or a 0-based index, got {label_column!r}")
    index = int(label_column)
    if not -table.width <= index < table.width:
        raise DataError(
            f"{table.path} has {table.width} columns, so no column {index}; pass 0..{table.width - 1} "
            f"(or -1 for the last), or a name: {columns}"
        )
    return index % table.width


def _load_table(path: Path, fmt: str, label_column: str | int | None) -> ArrayData:
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes): nothing to train on")
    try:
        table = _Table(path, TABLE_DELIMITERS["." + fmt])
        label_index = None if label_column is None else _resolve_label_column(table, label_column)
        if label_index is not None and table.width == 1:
            raise DataError(f"{path} has one column, the label column: no features are left to train on")
        table.label_index = label_index
        values = table.read()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 CSV") from None
    except csv.Error as exc:
        raise DataError(f"{path} is not a well-formed table ({exc}); save it as plain CSV") from None

    finite = np.isfinite(values)
    if not finite.all():
        row, column = (int(v) for v in np.argwhere(~finite)[0])
        raise DataError(
            f"{path}: row {table.file_row(row)}, column {table.column_name(column)} is {values[row, column]}: "
            "nanoae needs finite numbers; fill or drop those rows"
        )

    labels = None
    names = table.names
    resolved_label = None
    if label_index is not None:
        labels = values[:, label_index]
        if np.all(labels == np.round(labels)) and np.all(np.abs(labels) < 2.0**53):
            labels = labels.astype(np.int64)
        labels = _frozen(np.ascontiguousarray(labels))
        values = np.delete(values, label_index, axis=1)
        resolved_label = names[label_index] if names else label_index
        if names:
            names = names[:label_index] + names[label_index + 1 :]
    features = _frozen(np.ascontiguousarray(values))
    detail = fmt.upper() + (", header skipped" if table.names else ", no header")
    if label_index is not None:
        detail += f", label column {resolved_label!r}"
    return ArrayData(
        features, labels, path, fmt, None, resolved_label, names, None, _words(len(features), features.shape[1], path, detail)
    )


# ---- image folders -----------------------------------------------------------------------------------
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GREY_MODES = ("L", "1", "LA")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
COLOUR_MODES = ("RGB", "RGBA", "RGBX", "RGBa", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")
MODE_WORDS = {"L": "grey (L)", "RGB": "RGB", "I;16": "16-bit grey"}


def image_files(directory: Path) -> list[Path]:
    """The image files directly inside ``directory``, sorted by name."""
    return sorted(
        (p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
        key=lambda p: p.name,
    )


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading images needs Pillow: pip install pillow") from None
    return Image


def _pixels(image, path: Path) -> tuple[np.ndarray, str]:
    """(pixels (h, w) or (h, w, 3), the mode they are in) for one opened image."""
    mode = image.mode
    if mode in GREY_MODES:
        return np.asarray(image.convert("L"), dtype=np.uint8), "L"
    if mode in COLOUR_MODES:
        return np.asarray(image.convert("RGB"), dtype=np.uint8), "RGB"
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        pixels = np.asarray(image)
        if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
            raise DataError(
                f"{path} holds 32-bit integer pixels outside 0..65535; nanoae reads 8-bit and 16-bit images: "
                "save it as an 8-bit or 16-bit PNG"
            )
        return pixels.astype(np.uint16), "I;16"
    raise DataError(
        f"{path} has pixel mode {mode!r}, which nanoae does not read; save it as an 8-bit grey or RGB "
        "PNG/JPEG (or 16-bit grey PNG)"
    )


def read_image_folder(directory: Path) -> tuple[np.ndarray, tuple[int, ...], list[Path]]:
    """Read every image of ``directory`` into ``(features, image_shape, files)``.

    Returns:
        features: (n, h*w) or (n, h*w*3), uint8 (uint16 for 16-bit grey), read-only;
            row i is ``files[i]`` flattened row-major (channels last).
        image_shape: (h, w) for grey, (h, w, 3) for RGB.
        files: the image files, sorted by name.

    Raises:
        DataError: no image files; Pillow missing; an unreadable file; images of
            different sizes or modes.
    """
    files = image_files(directory)
    if not files:
        raise DataError(f"{directory} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    Image = _pillow()
    features = None
    first: tuple[Path, tuple[int, ...], str] | None = None
    for i, path in enumerate(files):
        try:
            with Image.open(path) as image:
                image.load()
                pixels, mode = _pixels(image, path)
        except DataError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # Pillow's "not an image"
            raise DataError(f"{path} could not be read as an image ({exc}); remove or replace it") from None
        if first is None:
            first = (path, pixels.shape, mode)
            features = np.empty((len(files), pixels.size), dtype=pixels.dtype)
        else:
            first_path, first_shape, first_mode = first
            if pixels.shape[:2] != first_shape[:2]:
                raise DataError(
                    f"{first_path.name} is {first_shape[1]}x{first_shape[0]}, {path.name} is "
                    f"{pixels.shape[1]}x{pixels.shape[0]} (width x height): resize them to one size"
                )
            if mode != first_mode:
                raise DataError(
                    f"{first_path.name} is {MODE_WORDS[first_mode]}, {path.name} is {MODE_WORDS[mode]}: "
                    "save them all in one mode (all grey or all colour)"
                )
        features[i] = pixels.reshape(-1)
    features.flags.writeable = False
    return features, tuple(int(s) for s in first[1]), files


# ---- folders -------------------------------------------------------------------------------------------
def _holds_dataset_files(directory: Path) -> bool:
    """Whether ``directory`` (or a dataset sub-folder of it) holds any MNIST / Fashion-MNIST file."""
    for spec in DATASETS.values():
        for folder in [directory] + [directory / sub for sub in spec.subdirs]:
            if folder.is_dir() and scan_dir(folder, spec)[0]:
                return True
    return False


def _load_folder(path: Path) -> ArrayData:
    if not image_files(path):
        names = ", ".join(f.gz_name for f in DATASETS["mnist"].files)
        raise DataError(
            f"{path} holds no image files ({', '.join(IMAGE_SUFFIXES)}, any case) and no MNIST files ({names}): "
            f"pass a folder of same-sized images, an MNIST folder, or a data file: {FORMATS}"
        )
    features, image_shape, files = read_image_folder(path)
    kind = {2: "grey", 3: "RGB"}[len(image_shape)]
    detail = f"{image_shape[1]}x{image_shape[0]} {kind} images, {features.dtype}"
    return ArrayData(features, None, path, "images", None, None, None, image_shape, _words(len(files), features.shape[1], path, detail))


# ---- the entry points ---------------------------------------------------------------------------------
def is_own_data(path: Any) -> bool:
    """Whether ``--data path`` names the user's own data (:func:`load_data_file`) rather
    than an MNIST folder: True for an existing file, for a folder holding no MNIST or
    Fashion-MNIST file (images, or an error that lists both), and for a missing path
    with a suffix (so the error says the file does not exist); False for a folder with
    dataset files and for a missing path without a suffix (a would-be MNIST folder)."""
    p = Path(path).expanduser()
    if p.is_dir():
        return not _holds_dataset_files(p)
    if p.exists():
        return True
    return p.suffix != ""


def load_data_file(path: Any, *, key: str | None = None, label_column: str | int | None = None) -> ArrayData:
    """Read the user's data file (or image folder) as an :class:`ArrayData`.

    Args:
        path: a ``.npy``, ``.npz``, ``.csv`` or ``.tsv`` file, or a folder of images.
        key: the ``.npz`` array to use (default: the only one). Only for ``.npz``.
        label_column: a CSV/TSV column (header name or 0-based index, negative from the
            end) removed from the features and returned as ``labels``. Only for CSV/TSV.

    Raises:
        DataError: a missing or unreadable path, an unknown format, or a file nanoae
            cannot read as (samples, features) numbers; the message says the fix.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p} does not exist: check the path given to --data")
    p = p.resolve()
    fmt = "images" if p.is_dir() else {".npy": "npy", ".npz": "npz", ".csv": "csv", ".tsv": "tsv"}.get(p.suffix.lower())
    if fmt is None:
        what = f"{p.suffix} files" if p.suffix else "files without a suffix"
        raise DataError(f"{p}: nanoae cannot read {what}; it reads {FORMATS}")
    if key is not None and fmt != "npz":
        raise DataError(f"--key chooses an array inside a .npz file; {p} is not one: drop --key")
    if label_column is not None and fmt not in ("csv", "tsv"):
        raise DataError(f"--label-column chooses a column of a CSV/TSV file; {p} is not one: drop --label-column")
    try:
        if fmt == "npy":
            return _load_npy(p)
        if fmt == "npz":
            return _load_npz(p, key)
        if fmt in ("csv", "tsv"):
            return _load_table(p, fmt, label_column)
        return _load_folder(p)
    except PermissionError:
        raise DataError(f"{p} cannot be read (permission denied): check its permissions") from None
    except IsADirectoryError:
        raise DataError(f"{p} is a folder, not a {fmt} file") from None
