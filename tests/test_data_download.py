"""Verified downloads over real HTTP, from servers started on 127.0.0.1."""

import functools
import hashlib
import shutil
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nanoae.data import DATASETS, DataError, DownloadError, datasets, load_dataset, sources
from nanoae.data import download as dl

pytestmark = pytest.mark.network

MNIST = DATASETS["mnist"]
SHIPPED_SAMPLE = sources.SAMPLE_DIR  # the autouse fixture hides it; one test puts it back
TIMEOUT = 5.0  # every network wait in these tests is bounded by this


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep test output clean
        pass


@pytest.fixture
def serve():
    """serve(directory) -> base URL of an HTTP server for it; all stopped at teardown."""
    servers = []

    def start(directory: Path) -> str:
        handler = functools.partial(QuietHandler, directory=str(directory))
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=TIMEOUT)


@pytest.fixture
def dead_url():
    """A URL on a port where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def silent_url():
    """A URL whose server accepts the connection and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4)  # the kernel completes the handshake; nobody ever reads or replies
    yield f"http://127.0.0.1:{s.getsockname()[1]}/"
    s.close()


@pytest.fixture(scope="module")
def mirror_dir(tmp_path_factory, mnist_dir):
    """A copy of the real MNIST .gz files, to serve (tests may copy; the repo holds none)."""
    d = tmp_path_factory.mktemp("mirror")
    for f in MNIST.files:
        shutil.copy(mnist_dir / f.gz_name, d / f.gz_name)
    return d


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.delenv("NANOAE_DATA", raising=False)
    monkeypatch.delenv("NANOAE_MIRRORS", raising=False)
    monkeypatch.setenv("NANOAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(sources, "SAMPLE_DIR", tmp_path / "no-sample")  # no stand-in: failures surface
    monkeypatch.setattr(datasets, "_FAILED_DOWNLOADS", {})
    monkeypatch.setattr(datasets, "_ANNOUNCED", set())


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_verifies_and_loads(serve, mirror_dir, tmp_path):
    url = serve(mirror_dir)
    ds = load_dataset("mnist", "test", mirrors=[url], quiet=True, timeout=TIMEOUT)
    cache = tmp_path / "cache" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(f.gz_name for f in MNIST.files)
    for f in MNIST.files:
        assert md5(cache / f.gz_name) == f.gz_md5[0]
    assert len(ds) == 10000 and ds.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert "download" in ds.source and url in ds.source
    # Next time the cache serves it; no server needed.
    again = load_dataset("mnist", "train", download=False)
    assert len(again) == 60000 and "cache" in again.source


def test_corrupted_file_is_rejected_and_nothing_is_left(serve, mirror_dir, tmp_path):
    bad = tmp_path / "bad-mirror"
    shutil.copytree(mirror_dir, bad)
    target = bad / "train-images-idx3-ubyte.gz"  # the first file fetched
    blob = bytearray(target.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    target.write_bytes(bytes(blob))
    url = serve(bad)

    with pytest.raises(DownloadError) as e:
        dl.download_dataset(MNIST, tmp_path / "cache" / "mnist", mirrors=[url], quiet=True, timeout=TIMEOUT)
    msg = str(e.value)
    assert "checksum mismatch" in msg and "train-images-idx3-ubyte.gz" in msg
    assert "f68b3c2dcbeaaa9fbdd348bbdeb94873" in msg  # expected
    assert hashlib.md5(bytes(blob)).hexdigest() in msg  # got
    assert "discarded" in msg
    assert list((tmp_path / "cache" / "mnist").iterdir()) == []  # no partial or temp files

    # Through load_dataset the failure is part of the "nothing available" error.
    with pytest.raises(DataError) as e:
        load_dataset("mnist", mirrors=[url], quiet=True, timeout=TIMEOUT)
    assert "checksum mismatch" in str(e.value) and "Ways to get the data" in str(e.value)


def test_bad_first_mirror_good_second(serve, mirror_dir, tmp_path, dead_url):
    empty = tmp_path / "empty"
    empty.mkdir()
    not_found = serve(empty)
    good = serve(mirror_dir)
    paths = dl.download_dataset(MNIST, tmp_path / "c1", mirrors=[dead_url, not_found, good], quiet=True, timeout=TIMEOUT)
    assert {p.name for p in paths.values()} == {f.gz_name for f in MNIST.files}
    assert all(p.parent == tmp_path / "c1" for p in paths.values())


def test_corrupt_first_mirror_good_second(serve, mirror_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in MNIST.files:
        (bad / f.gz_name).write_bytes(b"not the file")
    ds = load_dataset("mnist", "test", mirrors=[serve(bad), serve(mirror_dir)], quiet=True, timeout=TIMEOUT)
    assert len(ds) == 10000
    assert not [p for p in (tmp_path / "cache" / "mnist").iterdir() if p.name.startswith(".")]


def test_every_mirror_failing_lists_each(serve, tmp_path, dead_url):
    empty = tmp_path / "empty"
    empty.mkdir()
    not_found = serve(empty)
    with pytest.raises(DownloadError) as e:
        dl.download_dataset(MNIST, tmp_path / "c", mirrors=[dead_url, not_found], quiet=True, timeout=TIMEOUT)
    msg = str(e.value)
    assert "every mirror failed" in msg
    assert f"{dead_url}train-images-idx3-ubyte.gz: cannot connect" in msg
    assert f"{not_found}train-images-idx3-ubyte.gz: HTTP 404" in msg
    assert len(e.value.attempts) == 2


def test_silent_server_times_out(tmp_path, silent_url):
    with pytest.raises(DownloadError, match=r"timed out after 0\.5 s"):
        dl.download_dataset(MNIST, tmp_path / "c", mirrors=[silent_url], quiet=True, timeout=0.5)
    assert list((tmp_path / "c").iterdir()) == []


def test_mirrors_from_env_with_dataset_placeholder(serve, mirror_dir, tmp_path, monkeypatch):
    root = tmp_path / "root"
    shutil.copytree(mirror_dir, root / "mnist")
    url = serve(root)
    monkeypatch.setenv("NANOAE_MIRRORS", f" http://127.0.0.1:1/nothing , {url}{{dataset}}")
    assert dl.mirrors_for(MNIST) == ["http://127.0.0.1:1/nothing/", f"{url}mnist/"]
    ds = load_dataset("mnist", "test", quiet=True, timeout=TIMEOUT)
    assert len(ds) == 10000
    # The argument beats the environment.
    assert dl.mirrors_for(MNIST, ["https://example.invalid/x"]) == ["https://example.invalid/x/"]


def test_mirror_must_be_http(monkeypatch):
    with pytest.raises(DataError, match="not an http"):
        dl.mirrors_for(MNIST, ["ftp://example.invalid/"])
    monkeypatch.setenv("NANOAE_MIRRORS", "/some/dir")
    with pytest.raises(DataError, match="NANOAE_MIRRORS"):
        dl.mirrors_for(MNIST)


def test_download_false_never_connects(tmp_path, dead_url):
    with pytest.raises(DataError, match="download=False"):
        load_dataset("mnist", download=False, mirrors=[dead_url])
    assert not (tmp_path / "cache" / "mnist").exists()


def test_progress_lines_and_quiet(serve, mirror_dir, tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(dl, "_load_tqdm", lambda: None)  # the plain-text path
    url = serve(mirror_dir)
    dl.download_dataset(MNIST, tmp_path / "loud", mirrors=[url], quiet=False, timeout=TIMEOUT)
    err = capfd.readouterr().err
    assert f"downloading {url}train-images-idx3-ubyte.gz" in err
    assert "train-images-idx3-ubyte.gz: 50%" in err
    assert len(err.splitlines()) < 40  # a few lines, not one per block
    dl.download_dataset(MNIST, tmp_path / "quiet", mirrors=[url], quiet=True, timeout=TIMEOUT)
    assert capfd.readouterr().err == ""


def test_existing_cache_files_are_kept(serve, mirror_dir, tmp_path):
    cache = tmp_path / "cache" / "mnist"
    cache.mkdir(parents=True)
    shutil.copy(mirror_dir / "train-labels-idx1-ubyte.gz", cache)
    before = (cache / "train-labels-idx1-ubyte.gz").stat().st_mtime_ns
    dl.download_dataset(MNIST, cache, mirrors=[serve(mirror_dir)], quiet=True, timeout=TIMEOUT)
    assert (cache / "train-labels-idx1-ubyte.gz").stat().st_mtime_ns == before
    assert len(list(cache.iterdir())) == 4


def test_failed_download_leaves_the_sample_once(tmp_path, monkeypatch, dead_url, capfd):
    monkeypatch.setattr(sources, "SAMPLE_DIR", SHIPPED_SAMPLE)
    train = load_dataset("mnist", "train", mirrors=[dead_url], timeout=TIMEOUT)
    test = load_dataset("mnist", "test", mirrors=[dead_url], timeout=TIMEOUT)
    assert (len(train), len(test)) == (6000, 1000) and "standing in" in test.source
    err = capfd.readouterr().err
    assert len(err.splitlines()) == 1 and "cannot connect" in err and "MNIST sample shipped with nanoae" in err, err
