"""Reader for IDX files, the format MNIST and Fashion-MNIST ship in.

An IDX file is a 4-byte magic number, the dimensions, then the payload::

    bytes 0-1   0x00 0x00
    byte  2     type code (0x08 = uint8, see ``IDX_TYPES``)
    byte  3     number of dimensions, ndim >= 1
    4 * ndim    each dimension as a big-endian uint32
    payload     prod(dims) items, big-endian, C order

Files may be gzip-compressed; that is detected from the content (the gzip
magic bytes 1f 8b), never from the file name, because a ``.gz`` name on a
raw file (or the reverse) is a common mix-up.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import DataError

__all__ = ["IDX_TYPES", "GZIP_MAGIC", "read_idx", "is_gzip"]

# IDX type code -> big-endian dtype of the payload.
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

GZIP_MAGIC = b"\x1f\x8b"

# Deflate cannot compress better than about 1032:1, so a gzip'd header that
# promises more payload than that is corrupt; checking it first avoids trying
# to allocate terabytes because of one flipped header byte.
_MAX_DEFLATE_RATIO = 1032


def is_gzip(path: str | os.PathLike) -> bool:
    """True when the file starts with the gzip magic bytes 1f 8b."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzip'd or raw, into a new array.

    Args:
        path: the file.

    Returns:
        An array of shape ``dims`` (as stored in the header) with the dtype of
        the type code in native byte order (``uint8`` for MNIST). The array
        is freshly allocated and writeable; the caller owns it.

    Raises:
        DataError: the file cannot be read, is not IDX, has an unsupported
            type code, is truncated, has trailing bytes, or is a corrupt gzip
            stream. The message names the file and the problem.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        compressed = is_gzip(path)
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror or e}).") from None

    try:
        f: BinaryIO = gzip.open(path, "rb") if compressed else open(path, "rb")
        with f:
            return _read_stream(f, path, size, compressed)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        # EOFError is how gzip reports a stream cut short; zlib.error a
        # damaged deflate block. Either way the .gz file itself is broken.
        raise DataError(
            f"{path}: corrupt gzip stream ({type(e).__name__}: {e}). "
            "The file is damaged or incomplete; fetch it again."
        ) from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror or e}).") from None


def _read_stream(f: BinaryIO, path: Path, size: int, compressed: bool) -> np.ndarray:
    """Parse header and payload from an open (possibly decompressing) stream."""
    what = "decompressed data" if compressed else "file"
    magic = f.read(4)
    if len(magic) == 0:
        raise DataError(f"{path}: the {what} is empty; expected an IDX file.")
    if len(magic) < 4:
        raise DataError(
            f"{path}: truncated IDX header: the {what} has {len(magic)} bytes, "
            "the magic number alone needs 4."
        )
    if magic[0] != 0 or magic[1] != 0:
        raise DataError(
            f"{path}: not an IDX file: bad magic number {magic.hex(' ')} "
            "(an IDX file starts with two zero bytes, a type code and ndim)."
        )
    code, ndim = magic[2], magic[3]
    if code not in IDX_TYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_TYPES)
        raise DataError(
            f"{path}: unsupported IDX type code 0x{code:02X} (supported: {known})."
        )
    if ndim == 0:
        raise DataError(f"{path}: IDX header says ndim = 0; an IDX array needs at least 1 dimension.")

    raw_dims = f.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DataError(
            f"{path}: truncated IDX header: ndim = {ndim} needs {4 * ndim} bytes "
            f"of dimensions, got {len(raw_dims)}."
        )
    dims = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4"))
    dtype = IDX_TYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    header = 4 + 4 * ndim

    # Catch impossible sizes before allocating: for a raw file the size is
    # known exactly; for gzip, deflate's maximum ratio bounds it.
    if not compressed and header + expected != size:
        got = size - header
        problem = "truncated" if got < expected else "has trailing bytes"
        raise DataError(
            f"{path}: IDX file {problem}: header dims {dims} need exactly "
            f"{expected} bytes of data, got {got}."
        )
    if compressed and expected > size * _MAX_DEFLATE_RATIO + 1024:
        raise DataError(
            f"{path}: IDX header dims {dims} claim {expected} bytes of data, more "
            f"than a {size}-byte gzip file can hold; the header is corrupt."
        )

    data = np.empty(math.prod(dims), dtype=dtype)
    got = _read_into(f, memoryview(data.view(np.uint8)))
    if got < expected:
        raise DataError(
            f"{path}: IDX {what} truncated: header dims {dims} need {expected} "
            f"bytes of data, got {got}."
        )
    extra = len(f.read(1 << 20))
    if extra:
        # Count the rest only for the message; it is never kept.
        while chunk := f.read(1 << 20):
            extra += len(chunk)
        raise DataError(
            f"{path}: IDX {what} has trailing bytes: header dims {dims} need "
            f"exactly {expected} bytes of data, got {expected + extra}."
        )

    data = data.reshape(dims)
    if not dtype.isnative:
        data = data.astype(dtype.newbyteorder("="))
    return data


def _read_into(f: BinaryIO, buf: memoryview) -> int:
    """Fill ``buf`` from ``f``; return how many bytes arrived before EOF."""
    # readinto may return short counts (gzip in particular), so loop.
    filled = 0
    while filled < len(buf):
        n = f.readinto(buf[filled:])
        if not n:
            break
        filled += n
    return filled
