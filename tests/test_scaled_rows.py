"""ScaledRows: stored rows scaled a batch at a time equal the whole set scaled, and
training from them equals training from the materialized array, bit for bit."""

from __future__ import annotations


import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_fast_path import AllocationMeter

from nanoae import Autoencoder, Dense, RMSProp, Sequential
from nanoae.backend import cupy_status, get_backend
from nanoae.data import ScaledRows
from nanoae.ops import cpu
from nanoae.scaling import Scaler

DTYPES = [np.uint8, np.uint16, np.float32, np.float64, np.bool_]
MODES = ["auto", "unit", "minmax", "standardize", "none"]
BACKENDS = {
    "reference": lambda: get_backend("numpy", fast=False),
    "cpu-numpy": lambda: get_backend("numpy", fast=True, kernels="numpy"),
    "cpu-numba": lambda: get_backend("numpy", fast=True, kernels="numba"),
}
BACKEND_PARAMS = [
    "reference",
    "cpu-numpy",
    pytest.param("cpu-numba", marks=pytest.mark.skipif(not cpu.numba_available()[0], reason="numba not installed")),
]


def bits(array: np.ndarray) -> np.ndarray:
    """float32 values as their bit patterns, so -0.0 and 0.0 differ."""
    assert array.dtype == np.float32
    return np.ascontiguousarray(array).view(np.uint32)


@st.composite
def stored_data(draw):
    """(features (n, d) of one of DTYPES, a fitted scaler or None, rows or None)."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    n, d = draw(st.integers(1, 40)), draw(st.integers(1, 6))
    if dtype.kind == "f":
        # in [0, 1] (auto keeps them, unit resolves to none) or spread wide (standardised)
        high = draw(st.sampled_from([1.0, 1e3]))
        elements = st.floats(-high if high > 1 else 0.0, high, width=32 if dtype == np.float32 else 64)
    else:
        elements = None
    features = draw(hnp.arrays(dtype, (n, d), elements=elements))
    mode = draw(st.sampled_from(MODES + ["no scaler"]))
    scaler = None
    if mode != "no scaler":
        try:
            scaler = Scaler.fit(features, mode)
        except ValueError:
            assume(False)  # unit scaling on floats outside [0, 1]: refused at fit, tested elsewhere
    rows = None
    if draw(st.booleans()):
        rows = np.sort(draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=2 * n))).astype(np.int64)
    return features, scaler, rows


def transformed(features, scaler, rows):
    """What the source stands for: the whole set scaled, then the rows taken."""
    whole = np.asarray(features, dtype=np.float32) if scaler is None else scaler.transform(features)
    return whole if rows is None else whole[rows]


@settings(max_examples=300, deadline=None)
@given(data=stored_data(), draw=st.data())
def test_gather_equals_transform_then_index(data, draw):
    features, scaler, rows = data
    source = ScaledRows(features, rows, scaler)
    expected = transformed(features, scaler, rows)
    assert source.shape == expected.shape and len(source) == expected.shape[0]
    m = len(source)
    indices = np.array(draw.draw(st.lists(st.integers(-m, m - 1), min_size=1, max_size=12)), dtype=np.int64)
    fresh = source.gather(indices)
    assert fresh.dtype == np.float32
    np.testing.assert_array_equal(bits(fresh), bits(expected[indices]))
    out = np.full((len(indices), source.shape[1]), np.nan, dtype=np.float32)
    assert source.gather(indices, out=out) is out
    np.testing.assert_array_equal(bits(out), bits(expected[indices]))
    np.testing.assert_array_equal(bits(source.materialize()), bits(expected))


def test_gather_hand_worked():
    features = np.array([[0, 255], [51, 102], [255, 0]], dtype=np.uint8)
    source = ScaledRows(features, np.array([2, 0]), Scaler.fit(features, "unit"))
    np.testing.assert_array_equal(source.gather(np.array([0, 1, -1])), [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    standardize = Scaler.fit(np.array([[1.0], [3.0]]), "standardize")  # mean 2, std 1
    np.testing.assert_array_equal(ScaledRows(np.array([[1.0], [3.0], [5.0]]), None, standardize).gather(np.array([2, 0])), [[3.0], [-1.0]])


def test_gather_reads_a_memory_map_without_copying_it(tmp_path):
    features = np.random.default_rng(0).integers(0, 256, (50, 7), dtype=np.uint8)
    np.save(tmp_path / "x.npy", features)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    source = ScaledRows(mapped, np.arange(1, 50, 3), Scaler.fit(mapped, "auto"))
    assert source.features is mapped
    np.testing.assert_array_equal(source.gather(np.array([0, 16])), features[[1, 49]] / np.float32(255))


def test_materialize_hands_back_float32_data_that_needs_no_scaling():
    features = np.random.default_rng(0).random((5, 3), dtype=np.float32)
    assert ScaledRows(features, None, Scaler.fit(features, "auto")).materialize() is features


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda f, s: ScaledRows(f[0], None, s), ValueError, "2-D numeric array"),
        (lambda f, s: ScaledRows(f, np.array([0, 4]), s), ValueError, r"rows must lie in \[0, 4\)"),
        (lambda f, s: ScaledRows(f, np.array([], dtype=np.int64), s), ValueError, "at least one row"),
        (lambda f, s: ScaledRows(f, np.array([0.5]), s), ValueError, "integer array of row numbers"),
        (lambda f, s: ScaledRows(f[:, :2], None, s), ValueError, "fitted on 3"),
        (lambda f, s: ScaledRows(f.astype(np.float32), None, s), TypeError, "divides integer data by 255"),
        (lambda f, s: ScaledRows(f, None, s).gather(np.array([4])), IndexError, "index 4 is out of bounds"),
        (lambda f, s: ScaledRows(f, None, s).gather(np.array([-5])), IndexError, "index -5 is out of bounds"),
        (lambda f, s: ScaledRows(f, None, s).gather(np.array([0]), out=np.empty((1, 3))), ValueError, "float32"),
    ],
)
def test_bad_use_is_one_clear_error(make, error, words):
    features = np.arange(12, dtype=np.uint8).reshape(4, 3)
    with pytest.raises(error, match=words):
        make(features, Scaler.fit(features, "unit"))


# ---- fitting on rows ------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(data=stored_data(), mode=st.sampled_from(MODES), chunk_rows=st.integers(1, 50))
def test_fit_on_rows_equals_fit_on_the_gathered_rows(data, mode, chunk_rows):
    features, _, rows = data
    rows = np.arange(features.shape[0]) if rows is None else rows
    try:
        expected = Scaler.fit(features[rows], mode, chunk_rows=chunk_rows).config()
    except ValueError as exc:
        with pytest.raises(ValueError, match=str(exc).split(";")[0][:40].replace("[", r"\[").replace("(", r"\(")):
            Scaler.fit(features, mode, chunk_rows=chunk_rows, rows=rows)
        return
    assert Scaler.fit(features, mode, chunk_rows=chunk_rows, rows=rows).config() == expected


def test_fit_on_rows_names_the_row_of_the_data():
    features = np.zeros((6, 2))
    features[4, 1] = np.nan
    with pytest.raises(ValueError, match="row 4, feature 1 is nan"):
        Scaler.fit(features, "auto", rows=np.array([1, 4, 5]), chunk_rows=2)
    assert Scaler.fit(features, "standardize", rows=np.array([0, 5])).mode == "standardize"  # row 4 unread
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 6\)"):
        Scaler.fit(features, "auto", rows=np.array([6]))


# ---- training from a source -----------------------------------------------------------------
def autoencoder(backend, output="sigmoid", seed=5):
    return Autoencoder(
        [Dense(12, 6, "tanh"), Dense(6, 3, "relu")], [Dense(3, 6, "relu"), Dense(6, 12, output)],
        optimizer=RMSProp(0.01), backend=backend, seed=seed,
    )  # fmt: skip


def stored(kind):
    """(features, rows, scaler): uint8 pixels scaled by unit, or float64 standardised."""
    rng = np.random.default_rng(1)
    if kind == "uint8-unit":
        features = rng.integers(0, 256, (300, 12), dtype=np.uint8)
    else:
        features = rng.normal(3.0, 7.0, (300, 12))
    rows = np.sort(rng.choice(300, 270, replace=False)).astype(np.int64)
    return features, rows, Scaler.fit(features, "auto", rows=rows)


@pytest.mark.parametrize("kind", ["uint8-unit", "float64-standardize"])
@pytest.mark.parametrize("backend_name", BACKEND_PARAMS)
def test_training_from_a_source_equals_training_from_its_array(backend_name, kind):
    features, rows, scaler = stored(kind)
    output = "sigmoid" if scaler.output_range == "unit" else "identity"
    source = ScaledRows(features, rows, scaler)
    models = [autoencoder(BACKENDS[backend_name](), output) for _ in range(2)]
    initial = models[1].arena.values.copy()
    histories = [models[0].fit(source.materialize(), steps=20, batch_size=32), models[1].fit(source, steps=20, batch_size=32)]
    np.testing.assert_array_equal(models[0].arena.values, models[1].arena.values)
    assert list(histories[0]) == list(histories[1])
    assert len(histories[1]) == 20 and not np.array_equal(models[1].arena.values, initial)  # it did train
    # and a second fit continues the same batch order: 20 + 10 steps from the source
    models[0].fit(source.materialize(), steps=10, batch_size=32)
    models[1].fit(source, steps=10, batch_size=32)
    np.testing.assert_array_equal(models[0].arena.values, models[1].arena.values)


def test_a_float64_model_trains_on_the_materialized_source():
    features, rows, scaler = stored("uint8-unit")
    source = ScaledRows(features, rows, scaler)
    models = [autoencoder(get_backend("numpy", dtype="float64", fast=False)) for _ in range(2)]
    models[0].fit(source.materialize(), steps=5, batch_size=16)
    models[1].fit(source, steps=5, batch_size=16)
    np.testing.assert_array_equal(models[0].arena.values, models[1].arena.values)


@pytest.mark.parametrize("kind", ["uint8-unit", "float64-standardize"])
@pytest.mark.parametrize("kernels", [b for b in BACKEND_PARAMS if b != "reference"])
def test_the_fast_cpu_gather_allocates_nothing_per_step(kernels, kind):
    rng = np.random.default_rng(0)
    features = rng.integers(0, 256, (4096, 784), dtype=np.uint8) if kind == "uint8-unit" else rng.normal(size=(4096, 784))
    rows = np.arange(0, 4096, 2)
    source = ScaledRows(features, rows, Scaler.fit(features, "auto", rows=rows))
    model = Autoencoder([Dense(784, 64, "relu")], [Dense(64, 784, "identity")], optimizer=RMSProp(0.001), backend=BACKENDS[kernels](), seed=0)
    meter = AllocationMeter(skip_steps=3)
    model.fit(source, steps=13, batch_size=256, log_every=5, callbacks=[meter])
    # One scaled batch is 256 x 784 x 4 B = 800 KB (its float64 scratch 1.6 MB): none of
    # it may be made per step. What remains is bookkeeping (index arrays, a loss scalar).
    assert meter.peak - meter.before < 100_000, (meter.before, meter.peak)
    assert meter.after - meter.before < 50_000, (meter.before, meter.after)


def test_the_reference_gather_scales_a_fresh_batch_each_step():
    """The meter above sees a gather's allocations: the reference table makes them."""
    features = np.random.default_rng(0).integers(0, 256, (1024, 784), dtype=np.uint8)
    source = ScaledRows(features, None, Scaler.fit(features, "unit"))
    model = Autoencoder([Dense(784, 16, "relu")], [Dense(16, 784, "sigmoid")], optimizer=RMSProp(0.001), backend=BACKENDS["reference"](), seed=0)
    meter = AllocationMeter(skip_steps=1)
    model.fit(source, steps=3, batch_size=256, callbacks=[meter])
    assert meter.peak - meter.before > 800_000


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda s, b: (autoencoder(b), s, np.zeros((270, 12), np.float32)), "pass target=None"),
        (lambda s, b: (Autoencoder([Dense(11, 3)], [Dense(3, 11)], optimizer=RMSProp(0.01), backend=b), s, None), "expects 11"),
        (lambda s, b: (Sequential([Dense(12, 12)], loss="mse", optimizer=RMSProp(0.01), backend=b), s, None), "needs a target array"),
        (
            lambda s, b: (Autoencoder([Dense(12, 3)], [Dense(3, 12, "sigmoid")], loss="bce", optimizer=RMSProp(0.01), backend=b),
                          ScaledRows(s.features, s.rows), None),
            r"needs targets in \[0, 1\] \(probabilities\), but they range over \[0, 255\]",
        ),  # unscaled pixels: refused as the array would be
    ],
)
def test_bad_training_from_a_source_is_one_clear_error(make, words):
    features, rows, scaler = stored("uint8-unit")
    model, x, target = make(ScaledRows(features, rows, scaler), get_backend("numpy", fast=True))
    with pytest.raises(ValueError, match=words):
        model.fit(x, target, steps=1, batch_size=8)
    assert model.steps_trained == 0


def test_non_finite_rows_are_refused_before_training():
    features = np.random.default_rng(0).random((40, 12))
    features[33, 2] = np.inf
    model = autoencoder(get_backend("numpy", fast=True), "identity")
    with pytest.raises(ValueError, match="x contains 1 NaN or infinite value"):
        model.fit(ScaledRows(features, np.arange(20, 40)), steps=1, batch_size=4)
    model.fit(ScaledRows(features, np.arange(0, 20)), steps=1, batch_size=4)  # the row is not among these
    assert model.steps_trained == 1


@pytest.mark.gpu
@pytest.mark.skipif(not cupy_status()[0], reason=f"no GPU backend here: {cupy_status()[1]}")
def test_a_gpu_trains_on_the_source_materialized_on_the_device():
    features, rows, scaler = stored("uint8-unit")
    source = ScaledRows(features, rows, scaler)
    models = [autoencoder(get_backend("cupy")) for _ in range(2)]
    models[0].fit(source.materialize(), steps=10, batch_size=32)
    models[1].fit(source, steps=10, batch_size=32)
    np.testing.assert_array_equal(models[0].arena.values.get(), models[1].arena.values.get())
