"""Verified downloads of a dataset's files into the cache.

Each file is fetched into a temporary file inside the destination
directory, hashed while it streams, and checked against the published
checksums; only a match is moved into place (``os.replace``, atomic on one
file system), so the cache never holds a partial or unverified file under a
real name. A mismatch deletes the temporary file and the next mirror is
tried. When every mirror fails, a :class:`DownloadError` lists what each
one said.

Mirrors: the ``mirrors`` argument, else ``$NANOAE_MIRRORS`` (comma-separated
base URLs), else the dataset's published mirrors. A file's URL is the base
URL plus its ``.gz`` name; ``{dataset}`` in a base URL is replaced by the
dataset's name, so one local server can host several datasets.

Two timeouts: ``timeout`` bounds every wait (connecting, then each block of
data); ``connect_timeout``, when given, bounds connecting alone, so a caller
with something to fall back on learns quickly that a mirror is unreachable
without cutting short a slow but working transfer.
"""

from __future__ import annotations

import functools
import http.client
import os
import socket
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Sequence

from .checksum import check_file, verify_file
from .errors import DataError
from .registry import DatasetSpec, FileSpec
from .sources import scan_dir

__all__ = ["ENV_MIRRORS", "DEFAULT_TIMEOUT", "DownloadError", "mirrors_for", "download_dataset"]

ENV_MIRRORS = "NANOAE_MIRRORS"

# Seconds to wait for a connection or for the next block of data; a dead or
# black-holed mirror must not hang a training script.
DEFAULT_TIMEOUT = 30.0

_CHUNK = 1 << 16


class DownloadError(DataError):
    """Every mirror failed for some file.

    Attributes:
        attempts: one line per try, ``"URL: problem"``.
        problems: the problem of each try alone, in words, in the same order.
    """

    def __init__(self, message: str, attempts: Sequence[str], problems: Sequence[str] = ()):
        super().__init__(message)
        self.attempts = list(attempts)
        self.problems = list(problems)


class _NoConnection(OSError):
    """Connecting took longer than the connect timeout."""


class _QuickConnect:
    """An HTTP(S) connection that waits at most ``connect_timeout`` seconds to
    connect (and for a TLS handshake), then ``timeout`` for each read."""

    connect_timeout: float
    timeout: float
    sock: Any

    def connect(self) -> None:
        read_timeout = self.timeout
        if not isinstance(read_timeout, (int, float)):  # urllib's "no timeout given" sentinel
            read_timeout = socket.getdefaulttimeout()
        wait = self.connect_timeout if read_timeout is None else min(self.connect_timeout, read_timeout)
        self.timeout = wait
        try:
            super().connect()  # type: ignore[misc]
        except (socket.timeout, TimeoutError):
            raise _NoConnection(f"no connection within {wait:g} s") from None
        finally:
            self.timeout = read_timeout
        self.sock.settimeout(read_timeout)


class _QuickHTTPConnection(_QuickConnect, http.client.HTTPConnection):
    pass


class _QuickHTTPSConnection(_QuickConnect, http.client.HTTPSConnection):
    pass


def _quick(connection_class: type, connect_timeout: float) -> Callable[..., Any]:
    """A factory urllib calls as ``factory(host, timeout=..., **kwargs)``."""

    def make(host: str, **kwargs: Any) -> Any:
        connection = connection_class(host, **kwargs)
        connection.connect_timeout = connect_timeout
        return connection

    return make


class _QuickHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, connect_timeout: float):
        super().__init__()
        self.connect_timeout = connect_timeout

    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(_quick(_QuickHTTPConnection, self.connect_timeout), req)


class _QuickHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, connect_timeout: float):
        super().__init__()
        self.connect_timeout = connect_timeout

    def https_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(_quick(_QuickHTTPSConnection, self.connect_timeout), req, context=self._context)


@functools.lru_cache(maxsize=8)
def _opener(connect_timeout: float | None) -> urllib.request.OpenerDirector:
    """urllib's usual opener (proxies from the environment included), with
    connections that give up connecting after ``connect_timeout`` when given."""
    if connect_timeout is None:
        return urllib.request.build_opener()
    return urllib.request.build_opener(_QuickHTTPHandler(connect_timeout), _QuickHTTPSHandler(connect_timeout))


def mirrors_for(spec: DatasetSpec, mirrors: Sequence[str] | str | None = None) -> list[str]:
    """The base URLs to try for ``spec``, in order, each ending in "/".

    ``mirrors`` (a list, or one comma-separated string) beats
    ``$NANOAE_MIRRORS``, which beats the dataset's published mirrors.
    """
    if mirrors is None:
        mirrors = os.environ.get(ENV_MIRRORS, "").strip() or spec.mirrors
    if isinstance(mirrors, str):
        mirrors = mirrors.split(",")
    out = []
    for base in mirrors:
        base = base.strip().replace("{dataset}", spec.name)
        if not base:
            continue
        scheme = urllib.parse.urlsplit(base).scheme
        if scheme not in ("http", "https"):
            raise DataError(
                f"mirror {base!r} is not an http:// or https:// URL; fix the mirrors "
                f"argument or ${ENV_MIRRORS} (comma-separated base URLs)."
            )
        out.append(base if base.endswith("/") else base + "/")
    if not out:
        raise DataError(f"no download mirrors given; set ${ENV_MIRRORS} to comma-separated base URLs or unset it.")
    return out


def download_dataset(
    spec: DatasetSpec,
    dest: str | os.PathLike,
    *,
    mirrors: Sequence[str] | str | None = None,
    quiet: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    connect_timeout: float | None = None,
    report_failures: bool = True,
) -> dict[FileSpec, Path]:
    """Download whichever of ``spec``'s four files ``dest`` lacks.

    Files already in ``dest`` are checked, not fetched again. The first file
    that no mirror can deliver ends the attempt.

    Args:
        quiet: no progress output and no failure lines.
        timeout: seconds to wait for a connection or for each block of data.
        connect_timeout: seconds to wait for a connection, when shorter.
        report_failures: print a line on stderr for each failed mirror
            (unless ``quiet``); off when the caller reports failures itself.

    Returns:
        Each FileSpec's verified file in ``dest``.

    Raises:
        DownloadError: every mirror failed for a file (the message lists
            each attempt; files fetched before it stay, verified), or
            ``dest`` cannot be created.
        DataError: a file already in ``dest`` fails its checksum.
    """
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        # A DownloadError: nothing could be fetched, so a stand-in may serve.
        problem = f"cannot create the cache directory {dest} ({e.strerror or e}); set NANOAE_CACHE to a writable directory"
        raise DownloadError(problem + ".", [problem], [problem]) from None
    bases = mirrors_for(spec, mirrors)
    found, missing = scan_dir(dest, spec)
    for f, path in found.items():
        verify_file(path, f, spec, "Delete that file from the cache; it will be downloaded again.")
    opener = _opener(None if connect_timeout is None else float(connect_timeout))
    for f in missing:
        found[f] = _download_file(f, dest, bases, quiet, timeout, opener, report_failures)
    return found


def _download_file(
    f: FileSpec, dest: Path, bases: list[str], quiet: bool, timeout: float, opener: Any, report_failures: bool
) -> Path:
    """Fetch one file, trying ``bases`` in turn; reorders ``bases`` so the
    mirror that worked is tried first for the next file."""
    attempts: list[str] = []
    problems: list[str] = []
    for base in list(bases):
        url = base + f.gz_name
        problem = _fetch_verified(url, f, dest, quiet, timeout, opener)
        if problem is None:
            bases.remove(base)
            bases.insert(0, base)
            return dest / f.gz_name
        attempts.append(f"{url}: {problem}")
        problems.append(problem)
        if report_failures and not quiet:
            print(f"nanoae: {url}: {problem}", file=sys.stderr)
    raise DownloadError(
        f"could not download {f.gz_name}; every mirror failed:\n  " + "\n  ".join(attempts),
        attempts,
        problems,
    )


def _fetch_verified(url: str, f: FileSpec, dest: Path, quiet: bool, timeout: float, opener: Any) -> str | None:
    """Download ``url`` to a temp file in ``dest``; keep it only if it verifies.

    Returns None on success (the file is at ``dest / f.gz_name``), else what
    went wrong, in words.
    """
    # A dot-name in the destination so os.replace stays on one file system
    # and nothing else mistakes it for a data file.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{f.gz_name}.", suffix=".part", dir=dest)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            problem = _fetch(url, out, quiet, timeout, opener)
        if problem is not None:
            return problem
        mismatch = check_file(tmp, f)
        if mismatch is not None:
            return mismatch + "; the download was discarded"
        os.replace(tmp, dest / f.gz_name)
        return None
    finally:
        # Covers every failure, including KeyboardInterrupt mid-download.
        tmp.unlink(missing_ok=True)


def _fetch(url: str, out: Any, quiet: bool, timeout: float, opener: Any) -> str | None:
    """Stream ``url`` into the open file ``out``; None or the problem in words."""
    request = urllib.request.Request(url, headers={"User-Agent": "nanoae"})
    try:
        with opener.open(request, timeout=timeout) as response:
            total = response.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            progress = _progress(url, total, quiet)
            received = 0
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    progress(len(chunk))
            finally:
                progress(None)
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code} {e.reason}"
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, _NoConnection):
            return str(reason)
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return f"timed out after {timeout:g} s"
        return f"cannot connect ({reason})"
    except (socket.timeout, TimeoutError):
        return f"timed out after {timeout:g} s"
    except http.client.IncompleteRead as e:
        return f"connection closed early after {len(e.partial)} bytes"
    except (http.client.HTTPException, OSError) as e:
        return f"download failed ({type(e).__name__}: {e})"
    if total is not None and received != total:
        return f"connection closed early: got {received} of {total} bytes"
    return None


def _load_tqdm() -> Callable[..., Any] | None:
    """tqdm's progress bar class when tqdm is installed, else None."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def _progress(url: str, total: int | None, quiet: bool) -> Callable[[int | None], None]:
    """A callback fed byte counts, then None when the transfer ends.

    Shows a tqdm bar when tqdm is importable, else a few plain lines on
    stderr (start, each quarter, end); nothing when ``quiet``.
    """
    if quiet:
        return lambda n: None
    name = url.rsplit("/", 1)[-1]
    tqdm = _load_tqdm()
    if tqdm is not None:
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, leave=False, file=sys.stderr)

        def update(n: int | None) -> None:
            if n is None:
                bar.close()
            else:
                bar.update(n)

        return update

    size = f" ({total / 1e6:.1f} MB)" if total else ""
    print(f"nanoae: downloading {url}{size}", file=sys.stderr, flush=True)
    state = {"got": 0, "quarter": 0}

    def plain(n: int | None) -> None:
        if n is None:
            print(f"nanoae: {name}: {state['got'] / 1e6:.1f} MB received", file=sys.stderr, flush=True)
            return
        state["got"] += n
        if total:
            quarter = 4 * state["got"] // total
            if 0 < quarter < 4 and quarter > state["quarter"]:
                state["quarter"] = quarter
                print(f"nanoae: {name}: {25 * quarter}%", file=sys.stderr, flush=True)

    return plain
