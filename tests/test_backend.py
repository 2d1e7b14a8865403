"""Backend selection, the ops tables and host/device copies."""

import inspect

import numpy as np
import pytest

import nanoae.backend as backend_module
from nanoae.backend import BackendUnavailable, get_backend, make_rng
from nanoae.ops import OPS_API, REFERENCE_TABLE, OpsTable, cpu, reference
from nanoae.ops.gpu import GpuOps
from nanoae.ops.table import HOOKS


def test_numpy_backend_defaults():
    backend = get_backend("numpy")
    assert backend.name == "numpy" and backend.xp is np
    assert backend.dtype is np.float32
    assert backend.fast and backend.ops.name.startswith("cpu-")  # the fast path by default
    assert get_backend("numpy", fast=False).ops is REFERENCE_TABLE
    assert REFERENCE_TABLE.name == "reference" and type(REFERENCE_TABLE) is OpsTable
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
    """Every table has every name of OPS_API, with the reference function's parameters
    (plus ``workspace`` last for those that take one), and so does the reference module
    for all but the non-math hooks."""
    tables = [REFERENCE_TABLE, cpu.load("numpy"), GpuOps]  # the GPU table's methods, checked without a GPU
    if cpu.numba_available()[0]:
        tables.append(cpu.load("numba"))
    for name in OPS_API:
        if name not in HOOKS:
            assert hasattr(reference, name), name
        base = list(inspect.signature(getattr(OpsTable, name)).parameters)[1:] if callable(getattr(OpsTable, name)) else None
        if base is not None and name not in HOOKS:
            math_parameters = list(inspect.signature(getattr(reference, name)).parameters)
            assert base in (math_parameters, [*math_parameters, "workspace"]), name
        for table in tables:
            assert hasattr(table, name), (table, name)
            if base is not None:
                parameters = list(inspect.signature(getattr(table, name)).parameters)
                if parameters[:1] == ["self"]:
                    parameters = parameters[1:]
                assert parameters == base, (table, name)


def test_every_reference_function_is_in_the_tables():
    """A function added to the reference math must reach the tables (OPS_API and OpsTable),
    else the layers could not call it through ``backend.ops``. Three are helpers only (the
    optimizer updates call ``flush_subnormals`` on their state)."""
    public = {name for name, value in vars(reference).items() if inspect.isfunction(value) and not name.startswith("_")}
    assert public - set(OPS_API) == {"array_module", "sigmoid", "flush_subnormals"}


def test_the_fast_tables_take_the_rest_from_the_reference_table():
    assert issubclass(cpu.CpuOps, OpsTable) and issubclass(GpuOps, OpsTable)
    assert cpu.CpuOps.softmax is OpsTable.softmax and GpuOps.bce_loss is OpsTable.bce_loss
    assert cpu.CpuOps.adam_update is not OpsTable.adam_update and GpuOps.adam_update is not OpsTable.adam_update


def test_the_reference_module_stands_alone():
    """reference.py imports nothing of nanoae: a student can copy the file alone."""
    source = inspect.getsource(reference)
    imports = [line.strip() for line in source.splitlines() if line.lstrip().startswith(("import ", "from "))]
    assert imports == ["from __future__ import annotations", "import sys", "from types import ModuleType", "import numpy as np"]
    assert "workspace" not in str([inspect.signature(f) for f in vars(reference).values() if inspect.isfunction(f)])


def test_host_device_copies(backend_name):
    backend = get_backend(backend_name)
    host = np.arange(6, dtype=np.float32).reshape(2, 3)
    device = backend.asarray(host)
    assert isinstance(device, backend.xp.ndarray) and reference.array_module(device) is backend.xp
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


def test_one_reduced_precision_at_a_time():
    with pytest.raises(ValueError, match="ask for one of them"):
        get_backend("numpy", allow_tf32=True, allow_bf16=True)


def test_the_bfloat16_switch_picks_the_compute_type():
    """nanoae's own switch, read by every direct cuBLAS and cuBLASLt float32 call (its
    TF32 branch reads CuPy's switch, which needs CuPy: tests/test_gpu.py)."""
    from nanoae.ops.gpu_cublas import float32_compute, set_bfloat16

    try:
        set_bfloat16(True)
        assert float32_compute() == 75  # CUBLAS_COMPUTE_32F_FAST_16BF
    finally:
        set_bfloat16(False)
    assert float32_compute() in (68, 77)  # CUBLAS_COMPUTE_32F, or TF32 where CuPy's switch says so
