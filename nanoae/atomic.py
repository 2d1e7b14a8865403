"""Atomic file writes: a reader sees the old file or the complete new one, never a mix.

:func:`write_atomically` never writes the target in place:

1. write the whole content to a new temporary file in the *same* directory, named
   ``.<name>.tmp-<pid>-<random hex>`` (opened with ``O_EXCL``: never shared);
2. flush and ``os.fsync`` it, so its bytes are on disk;
3. ``os.replace`` it over the target: one atomic rename on POSIX and Windows;
4. ``fsync`` the directory (where the OS allows it) so the rename itself is durable.

On any exception (``KeyboardInterrupt`` included) the temporary file is removed and
the target is left as it was. A process killed at any moment leaves either the old
file or the new one at the target; at worst a stray temporary file stays behind,
which the next write of the same target removes (:func:`remove_stale_temp_files`).

JSON written here (and printed by the command line) is strict JSON: NaN and infinity
are not JSON numbers, and Python's ``json`` would write them as the non-standard
tokens ``NaN``/``Infinity`` that other readers reject. :func:`finite_json` turns each
into ``null`` and names it under ``"non_finite"`` (path -> ``"nan"``/``"inf"``/``"-inf"``).
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = [
    "DirectoryNotWritable",
    "finite_json",
    "json_text",
    "remove_stale_temp_files",
    "temp_name",
    "write_atomically",
    "write_json_atomically",
]

_TEMP_PATTERN = r"\.{name}\.tmp-(\d+)-[0-9a-f]+"


class DirectoryNotWritable(OSError):
    """The temporary file cannot be created beside the target (no permission, no
    space, no such directory); the original OSError is chained as ``__cause__``."""


def temp_name(target: Path) -> Path:
    """The temporary file a writer of ``target`` uses: ``.<name>.tmp-<pid>-<8 hex>``."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable; not possible on every OS (Windows), so best effort."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(directory, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomically(path, write: Callable[[BinaryIO], None]) -> Path:
    """Replace ``path`` with what ``write(handle)`` writes to a binary file handle.

    The parent directory must exist. Temporary files of ``path`` that killed writers
    left behind are removed first (:func:`remove_stale_temp_files`). Raises :class:`DirectoryNotWritable` when the
    temporary file cannot be created, the OSError of a failed write or rename, and
    anything ``write`` raises; the target is then untouched and the temporary file
    removed. Returns the target as a :class:`pathlib.Path`.
    """
    target = Path(os.fspath(path))
    remove_stale_temp_files(target)
    temp = temp_name(target)
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise DirectoryNotWritable(exc.errno, exc.strerror or str(exc), os.fspath(temp)) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:  # KeyboardInterrupt too: never leave the temp file
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    _fsync_directory(target.parent)
    return target


def _replace_non_finite(value, where: str, found: dict):
    """A copy of ``value`` with every NaN/infinite float (NumPy's too) turned into None;
    ``found[path] = "nan" | "inf" | "-inf"`` for each."""
    if isinstance(value, dict):
        return {key: _replace_non_finite(item, f"{where}.{key}" if where else str(key), found) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_replace_non_finite(item, f"{where}.{index}" if where else str(index), found) for index, item in enumerate(value)]
    numpy_float = type(value).__module__ == "numpy" and getattr(getattr(value, "dtype", None), "kind", "") == "f"
    if isinstance(value, float) or (numpy_float and getattr(value, "ndim", 1) == 0):  # NumPy not imported here
        number = float(value)
        if not math.isfinite(number):
            found[where] = "nan" if math.isnan(number) else ("inf" if number > 0 else "-inf")
            return None
        return number
    return value


def finite_json(document: dict) -> dict:
    """``document`` with non-finite numbers replaced by ``null``, ready for strict JSON.

    Each replaced number is named in ``document["non_finite"]``: its dotted path (list
    items by index) -> ``"nan"``, ``"inf"`` or ``"-inf"``. Without any, the document
    is returned unchanged (as a copy, NumPy floats as Python floats).
    """
    found: dict = {}
    clean = _replace_non_finite(document, "", found)
    if found:
        if "non_finite" in clean:
            raise ValueError("a JSON document with non-finite numbers cannot also hold a 'non_finite' key")
        clean["non_finite"] = found
    return clean


def json_text(document: dict, **options) -> str:
    """Strict JSON for ``document`` (``json.dumps`` options pass through): never the
    non-standard ``NaN``/``Infinity`` tokens; see :func:`finite_json`."""
    return json.dumps(finite_json(document), allow_nan=False, **options)


def write_json_atomically(path, document: dict) -> Path:
    """Replace ``path`` with ``document`` as indented strict JSON (sorted keys, final
    newline); non-finite numbers become ``null``, named under ``"non_finite"``."""
    text = json_text(document, indent=2, sort_keys=True) + "\n"  # fails before any file is made
    return write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix":
        return True  # cannot tell cheaply: keep the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's live process
        return True
    return True


def remove_stale_temp_files(path) -> list[Path]:
    """Delete temporary files that killed writers left beside ``path``; return them.

    Only files named like :func:`write_atomically`'s temporaries for this target
    (``.<name>.tmp-<pid>-<hex>``) whose writing process no longer runs are removed
    (on non-POSIX systems nothing is removed: liveness cannot be checked).
    """
    target = Path(os.fspath(path))
    pattern = re.compile(_TEMP_PATTERN.format(name=re.escape(target.name)))
    removed = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match and not _process_alive(int(match.group(1))):
            try:
                entry.unlink()
                removed.append(entry)
            except OSError:
                pass
    return sorted(removed)
