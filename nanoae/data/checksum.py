"""MD5 checks of data files against the published checksums.

A file passes when its bytes match one of the accepted ``.gz`` digests, or
when its content (decompressed if it is gzip'd) matches the uncompressed
digest. Files that passed are remembered per process by (path, size,
mtime), so loading the same data again does not hash it again.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path

from .errors import DataError
from .idx import is_gzip
from .registry import DatasetSpec, FileSpec, identify_digest

__all__ = ["md5_file", "md5_content", "check_file", "verify_file"]

_CHUNK = 1 << 20

# (resolved path, size, mtime_ns, expected content MD5) of files that passed.
_VERIFIED: set[tuple[str, int, int, str]] = set()


def md5_file(path: str | os.PathLike) -> str:
    """Hex MD5 of the file's bytes as stored."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def md5_content(path: str | os.PathLike) -> str:
    """Hex MD5 of the file's content: decompressed if it is gzip'd, else as stored.

    Raises:
        DataError: the file is gzip'd but the stream is corrupt.
    """
    if not is_gzip(path):
        return md5_file(path)
    h = hashlib.md5()
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt gzip stream ({type(e).__name__}: {e}).") from None
    return h.hexdigest()


def check_file(path: str | os.PathLike, fspec: FileSpec) -> str | None:
    """Compare a file with ``fspec``'s checksums.

    Returns:
        None when the file matches, else a one-line description of the
        mismatch (digests found vs expected, and which known file it is if
        it is one, e.g. the other dataset's).
    """
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, fspec.raw_md5)
    if key in _VERIFIED:
        return None

    stored = md5_file(path)
    content: str | None = stored
    ok = stored in fspec.gz_md5 or stored == fspec.raw_md5
    if not ok and is_gzip(path):
        # Maybe re-gzipped by a repackager: the content is what counts.
        try:
            content = md5_content(path)
        except DataError:
            content = None
        ok = content == fspec.raw_md5
    if ok:
        _VERIFIED.add(key)
        return None

    if content is None:
        got = f"MD5 {stored}, and its gzip stream is corrupt"
    elif content != stored:
        got = f"MD5 {stored} (uncompressed {content})"
    else:
        got = f"MD5 {stored}"
    expected = " or ".join(fspec.gz_md5)
    msg = (
        f"checksum mismatch for {path.name}: expected MD5 {expected} (.gz) "
        f"or {fspec.raw_md5} (uncompressed), got {got}"
    )
    for digest in (stored, content):
        known = identify_digest(digest) if digest else None
        if known is not None:
            kspec, kfile = known
            msg += f"; this is {kspec.title}'s {kfile.split}-{kfile.kind} file"
            break
    return msg


def verify_file(path: str | os.PathLike, fspec: FileSpec, spec: DatasetSpec, fix: str) -> None:
    """Raise a DataError naming the file and ``fix`` unless it matches ``fspec``."""
    problem = check_file(path, fspec)
    if problem is not None:
        raise DataError(f"{path}: {problem}, expected {spec.title}'s {fspec.split}-{fspec.kind}. {fix}")
