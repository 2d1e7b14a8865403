"""Backend selection, the ops tables and host/device copies."""

import numpy as np
import pytest

import nanoae.backend as backend_module
from nanoae.backend import BackendUnavailable, get_backend, make_rng
from nanoae.ops import OPS_API, reference


def test_numpy_backend_defaults():
    backend = get_backend("numpy")
    assert backend.name == "numpy" and backend.xp is np
    assert backend.dtype is np.float32
    assert backend.fast and backend.ops.name.startswith("cpu-")  # the fast path by default
    assert get_backend("numpy", fast=False).ops is reference
    assert not get_backend("numpy", fast=False).fast
    assert get_backend("numpy", dtype="float64").dtype is np.float64


def test_environment_variable_chooses(monkeypatch):
    monkeypatch.setenv("NANOAE_BACKEND", "numpy")
    assert get_backend().name == "numpy"
    monkeypatch.setenv("NANOAE_BACKEND", "gpu")
    with pytest.raises(ValueError, match="unknown backend 'gpu'.*NANOAE_BACKEND"):
        get_backend()


def test_auto_falls_back_to_numpy_without_a_gpu(monkeypatch):
    monkeypatch.setattr(backend_module, "_probe_cupy", lambda: (None, "no GPU in this test"))
    assert get_backend("auto").name == "numpy"


def test_asking_for_cupy_where_it_cannot_run_says_why_and_how(monkeypatch):
    monkeypatch.setattr(backend_module, "_probe_cupy", lambda: (None, "CuPy is not installed; pip install 'nanoae[gpu]'"))
    with pytest.raises(BackendUnavailable, match=r"backend 'cupy' was requested but cannot run: .*pip install"):
        get_backend("cupy")


def test_real_cupy_probe_gives_a_reason_when_unavailable():
    ok, why = backend_module.cupy_status()
    if ok:
        pytest.skip("CuPy works here")
    assert "CuPy" in why and ("install" in why or "GPU" in why)


@pytest.mark.parametrize("dtype, match", [("float16", "unknown dtype"), (np.int32, "float32 or float64"), ("bf16", "unknown dtype")])
def test_bad_dtype(dtype, match):
    with pytest.raises(ValueError, match=match):
        get_backend("numpy", dtype=dtype)


def test_every_ops_table_offers_the_same_functions():
    import inspect

    from nanoae.ops import cpu

    from nanoae.ops.gpu import GpuOps

    tables = [cpu.load("numpy"), GpuOps]  # the GPU table's methods, checked without a GPU
    if cpu.numba_available()[0]:
        tables.append(cpu.load("numba"))
    for name in OPS_API:
        assert hasattr(reference, name), name
        for table in tables:
            assert hasattr(table, name), (table, name)
            if callable(getattr(reference, name)):
                expected = list(inspect.signature(getattr(reference, name)).parameters)
                parameters = list(inspect.signature(getattr(table, name)).parameters)
                if parameters[:1] == ["self"]:
                    parameters = parameters[1:]
                assert parameters == expected, (table, name)


def test_host_device_copies(backend_name):
    backend = get_backend(backend_name)
    host = np.arange(6, dtype=np.float32).reshape(2, 3)
    device = backend.asarray(host)
    assert backend.is_device_array(device)
    back = backend.to_host(device)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, host)


def test_seeded_generators():
    assert make_rng(3).random() == make_rng(3).random()
    generator = np.random.default_rng(1)
    assert make_rng(generator) is generator
    with pytest.raises(TypeError, match="seed must be an int"):
        make_rng("3")
    with pytest.raises(ValueError, match="non-negative"):
        make_rng(-1)
