"""Shared pytest fixtures."""

import os
from pathlib import Path

import numpy as np
import pytest

# --- real MNIST files (nanoae.data tests) ------------------------------------

_MNIST_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# Read once, at import: data tests change NANOAE_DATA with monkeypatch, and
# mnist_dir must still see the value the test run started with.
_NANOAE_DATA_AT_START = os.environ.get("NANOAE_DATA", "").strip()


def _mnist_candidates() -> list[Path]:
    """Where real MNIST may be: $NANOAE_DATA (itself or its mnist/ sub-folder),
    else ../shared/data/mnist beside the repository checkout."""
    if _NANOAE_DATA_AT_START:
        root = Path(_NANOAE_DATA_AT_START).expanduser()
        return [root / "mnist", root]
    return [Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"]


def _has_mnist(d: Path) -> bool:
    return all((d / f"{n}.gz").is_file() or (d / n).is_file() for n in _MNIST_NAMES)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """Directory holding the four real MNIST files (.gz or raw).

    Skips when they are absent, except under CI=true, where missing data is a
    failure rather than a silently skipped test.
    """
    candidates = _mnist_candidates()
    for d in candidates:
        if _has_mnist(d):
            return d.resolve()
    reason = (
        "real MNIST files not found in " + ", ".join(str(d) for d in candidates)
        + "; set NANOAE_DATA to the directory holding the four MNIST .gz files"
    )
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


# --- backends -----------------------------------------------------------------

from hypothesis import HealthCheck, settings  # noqa: E402

import nanoae.backend as _backend  # noqa: E402
from nanoae.ops import cpu as _cpu_ops  # noqa: E402

# CI: a fixed, database-free hypothesis run; locally the default profile.
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile(
    "thorough", deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile("ci" if os.environ.get("CI", "").strip().lower() == "true" else "dev")

_CUPY_OK, _CUPY_WHY = _backend.cupy_status()
BACKENDS = [
    "numpy",
    pytest.param("cupy", marks=[pytest.mark.gpu, pytest.mark.skipif(not _CUPY_OK, reason=f"no GPU backend here: {_CUPY_WHY}")]),
]


@pytest.fixture(params=BACKENDS)
def backend_name(request) -> str:
    """Each test using this runs on NumPy, and on CuPy where a GPU is usable (on each
    library's default table; :func:`ops_backend` runs on every table instead)."""
    return request.param


_NUMBA_OK, _NUMBA_WHY = _cpu_ops.numba_available()
#: Every ops table, as (array library, table name); the GPU one where a GPU is usable.
OPS_TABLES = [
    pytest.param(("numpy", "reference"), id="reference"),
    pytest.param(("numpy", "cpu-numpy"), id="cpu-numpy"),
    pytest.param(("numpy", "cpu-numba"), id="cpu-numba", marks=pytest.mark.skipif(not _NUMBA_OK, reason=f"no Numba kernels: {_NUMBA_WHY}")),
    pytest.param(
        ("cupy", "gpu-cupy"),
        id="gpu",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not _CUPY_OK, reason=f"no GPU backend here: {_CUPY_WHY}")],
    ),
]


@pytest.fixture(params=OPS_TABLES)
def ops_backend(request) -> _backend.Backend:
    """A float32 Backend on each ops table in turn: the reference (the math students read),
    the CPU table on NumPy and on Numba kernels, and the GPU table where a GPU is usable.
    Build models on it with ``backend=ops_backend, dtype=...``."""
    library, table = request.param
    if table == "reference":
        backend = _backend.get_backend(library, fast=False)
    else:
        backend = _backend.get_backend(library, fast=True, kernels=table.removeprefix("cpu-") if library == "numpy" else "auto")
    assert backend.ops.name == table, (backend.ops.name, table)
    return backend


@pytest.fixture
def to_host():
    """Copy any backend array to NumPy."""

    def convert(array):
        if type(array).__module__.startswith("cupy"):
            import cupy

            return cupy.asnumpy(array)
        return np.asarray(array)

    return convert

