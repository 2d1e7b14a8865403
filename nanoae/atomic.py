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
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = [
    "DirectoryNotWritable",
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


def write_json_atomically(path, document: dict) -> Path:
    """Replace ``path`` with ``document`` as indented JSON (sorted keys, final newline)."""
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"  # fails before any file is made
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
