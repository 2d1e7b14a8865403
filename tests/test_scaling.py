"""Scaler: hand-worked cases per mode, auto's choices, inverses, chunking, JSON round trips."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nanoae.scaling import SCALE_MODES, Scaler


def through_json(scaler: Scaler) -> Scaler:
    return Scaler.from_config(json.loads(json.dumps(scaler.config())))


def bits(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)


# ---- hand-worked cases --------------------------------------------------------------------------------
def test_unit_divides_uint8_by_255_in_float32():
    x = np.array([[0, 255], [51, 102]], dtype=np.uint8)
    scaler = Scaler.fit(x, "unit")
    y = scaler.transform(x)
    assert scaler.mode == "unit" and scaler.integer_max == 255 and scaler.output_range == "unit"
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, np.array([[0, 1], [0.2, 0.4]], dtype=np.float32))
    np.testing.assert_array_equal(bits(y), bits(x.astype(np.float32) / np.float32(255)))  # as the MNIST loader does
    np.testing.assert_array_equal(scaler.inverse_transform(y), x.astype(np.float32))


def test_minmax_per_feature_and_a_constant_feature_maps_to_zero():
    x = np.array([[1, 10, -2], [3, 10, 0], [5, 10, 2]], dtype=np.float64)
    scaler = Scaler.fit(x, "minmax")
    np.testing.assert_array_equal(scaler.shift, [1, 10, -2])
    np.testing.assert_array_equal(scaler.scale, [4, 1, 4])
    np.testing.assert_array_equal(scaler.transform(x), [[0, 0, 0], [0.5, 0, 0.5], [1, 0, 1]])
    assert scaler.output_range == "unit"


def test_standardize_uses_the_population_std_and_keeps_constants_at_zero():
    x = np.array([[1, 0.3], [2, 0.3], [3, 0.3], [4, 0.3]], dtype=np.float32)
    scaler = Scaler.fit(x, "standardize")
    std = np.sqrt(1.25)  # mean 2.5; squared deviations 2.25, 0.25, 0.25, 2.25 over n = 4
    np.testing.assert_allclose(scaler.shift, [2.5, np.float32(0.3)], rtol=0, atol=0)
    np.testing.assert_allclose(scaler.scale, [std, 1.0], rtol=1e-15)
    expected = np.array([[-1.5 / std, 0], [-0.5 / std, 0], [0.5 / std, 0], [1.5 / std, 0]], dtype=np.float32)
    np.testing.assert_array_equal(scaler.transform(x), expected)  # 0.3 maps to exactly 0, not to rounding noise
    assert scaler.output_range == "real"


def test_none_returns_float32_input_itself_and_casts_others():
    x = np.array([[0.5, 2.0]], dtype=np.float32)
    scaler = Scaler.fit(x, "none")
    assert scaler.transform(x) is x and scaler.inverse_transform(x) is x
    assert scaler.output_range == "real"  # 2.0 lies outside [0, 1]
    ints = np.array([[3, 300]], dtype=np.int32)
    y = Scaler.fit(ints, "none").transform(ints)
    assert y.dtype == np.float32 and y.tolist() == [[3.0, 300.0]]


# ---- auto ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "dtype", "mode", "integer_max", "output_range"),
    [
        ([[0, 200]], np.uint8, "unit", 255, "unit"),
        ([[0, 4000]], np.uint16, "unit", 65535, "unit"),
        ([[0, 100]], np.int8, "unit", 127, "unit"),
        ([[0, 100]], np.int16, "unit", 32767, "unit"),
        ([[True, False]], np.bool_, "unit", 1, "unit"),
        ([[-5, 100]], np.int8, "standardize", None, "real"),  # negatives: x / 127 would not land in [0, 1]
        ([[0, 100]], np.int32, "standardize", None, "real"),  # 32-bit maxima say nothing about the range
        ([[0, 100]], np.int64, "standardize", None, "real"),
        ([[0, 100]], np.uint32, "standardize", None, "real"),
        ([[0.0, 1.0], [0.25, 0.5]], np.float32, "none", None, "unit"),
        ([[0.0, 1.0], [0.25, 0.5]], np.float16, "none", None, "unit"),
        ([[0.0, 1.5], [0.25, 0.5]], np.float64, "standardize", None, "real"),
        ([[-0.1, 0.5], [0.25, 0.5]], np.float32, "standardize", None, "real"),
    ],
)
def test_auto_chooses_by_dtype_and_range(values, dtype, mode, integer_max, output_range):
    scaler = Scaler.fit(np.array(values, dtype=dtype), "auto")
    assert (scaler.mode, scaler.integer_max, scaler.output_range) == (mode, integer_max, output_range)
    assert scaler.requested_mode == "auto" and scaler.description.startswith("auto: ")


def test_descriptions_say_what_was_done():
    assert Scaler.fit(np.array([[1, 2]], np.uint8)).description == "auto: uint8 values divided by 255"
    assert Scaler.fit(np.array([[0.1, 0.2]], np.float32)).description == "auto: float32 values already within [0, 1], kept"
    assert Scaler.fit(np.array([[1.0], [3.0]]), "minmax").description == "minmax: each feature mapped to [0, 1] by its min and max"


def test_explicit_unit_on_floats_within_unit_is_none_and_outside_is_refused():
    assert Scaler.fit(np.array([[0.0, 1.0]]), "unit").mode == "none"
    with pytest.raises(ValueError, match=r"spanning \[-1, 3\], not within \[0, 1\]: use --scale minmax"):
        Scaler.fit(np.array([[-1.0, 3.0]]), "unit")
    with pytest.raises(ValueError, match=r"include negatives \(down to -3\): use --scale minmax"):
        Scaler.fit(np.array([[-3, 5]], dtype=np.int16), "unit")


def test_unit_refuses_float_input_it_would_divide_twice():
    scaler = Scaler.fit(np.array([[0, 255]], dtype=np.uint8), "auto")
    with pytest.raises(TypeError, match=r"divides integer data by 255 \(it was fitted on uint8\); got float32"):
        scaler.transform(np.array([[0.0, 1.0]], dtype=np.float32))


@pytest.mark.parametrize(
    ("x", "error", "words"),
    [
        (np.array([[1.0, np.nan]]), ValueError, "row 0, feature 1 is nan; scaling needs finite numbers"),
        (np.array([[0.0, 0.0], [1.0, -np.inf]]), ValueError, "row 1, feature 1 is -inf"),
        (np.array([1.0, 2.0]), ValueError, "must be 2-D"),
        (np.zeros((0, 3)), ValueError, "at least one row"),
        (np.array([["a"]]), TypeError, "scaling needs numbers"),
        (np.array([[1 + 2j]]), TypeError, "scaling needs numbers"),
    ],
)
def test_fit_refuses_bad_data(x, error, words):
    with pytest.raises(error, match=words):
        Scaler.fit(x)


def test_unknown_mode_lists_the_modes():
    with pytest.raises(ValueError, match="unknown scaling 'log'; choose one of: auto, unit, minmax, standardize, none"):
        Scaler.fit(np.ones((2, 2)), "log")
    assert SCALE_MODES == ("auto", "unit", "minmax", "standardize", "none")


def test_transform_refuses_another_width():
    scaler = Scaler.fit(np.ones((2, 3)), "standardize")
    with pytest.raises(ValueError, match="has 4 features per row but this scaling was fitted on 3"):
        scaler.transform(np.ones((2, 4)))


# ---- inverses, chunks, memory maps -----------------------------------------------------------------------
finite_floats = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=8), elements=finite_floats),
    mode=st.sampled_from(["minmax", "standardize", "none", "auto"]),
)
def test_inverse_undoes_transform_for_floats(x, mode):
    scaler = Scaler.fit(x, mode)
    back = scaler.inverse_transform(scaler.transform(x))
    assert back.dtype == np.float32
    span = np.maximum(np.abs(x).max(axis=0), 1e-3)
    np.testing.assert_allclose(back, x, rtol=1e-5, atol=float(span.max()) * 1e-6)


@settings(max_examples=40, deadline=None)
@given(
    x=hnp.arrays(
        st.sampled_from([np.uint8, np.uint16, np.int16]),
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=8),
        elements=st.integers(0, 255),
    ),
    mode=st.sampled_from(["unit", "minmax", "standardize", "none"]),
)
def test_inverse_undoes_transform_for_integers(x, mode):
    scaler = Scaler.fit(x, mode)
    back = scaler.inverse_transform(scaler.transform(x))
    np.testing.assert_allclose(back, x.astype(np.float64), rtol=0, atol=1e-3 * max(1, int(x.max())))


@settings(max_examples=40, deadline=None)
@given(
    x=hnp.arrays(np.float64, st.tuples(st.integers(1, 40), st.integers(1, 5)), elements=st.floats(-1e3, 1e3)),
    chunk_rows=st.integers(1, 7),
    mode=st.sampled_from(["minmax", "standardize", "auto", "none"]),
)
def test_chunked_equals_unchunked(x, chunk_rows, mode):
    whole = Scaler.fit(x, mode, chunk_rows=len(x))
    chunked = Scaler.fit(x, mode, chunk_rows=chunk_rows)
    assert chunked.mode == whole.mode
    if whole.shift is not None:
        np.testing.assert_allclose(chunked.shift, whole.shift, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(chunked.scale, whole.scale, rtol=1e-9, atol=1e-12)
    # the same scaler transforms identically whatever the chunk size (elementwise math)
    np.testing.assert_array_equal(bits(whole.transform(x, chunk_rows=chunk_rows)), bits(whole.transform(x)))
    y = whole.transform(x)
    np.testing.assert_array_equal(bits(whole.inverse_transform(y, chunk_rows=chunk_rows)), bits(whole.inverse_transform(y)))


def test_minmax_chunked_statistics_are_exact():
    x = np.random.default_rng(3).normal(size=(101, 4))
    a, b = Scaler.fit(x, "minmax", chunk_rows=101), Scaler.fit(x, "minmax", chunk_rows=10)
    np.testing.assert_array_equal(a.shift, b.shift)
    np.testing.assert_array_equal(a.scale, b.scale)


def test_a_memmap_scales_exactly_like_the_array_in_memory(tmp_path):
    x = np.random.default_rng(4).integers(0, 256, size=(500, 30), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    for mode in ("auto", "minmax", "standardize"):
        from_map, from_memory = Scaler.fit(mapped, mode, chunk_rows=64), Scaler.fit(x, mode, chunk_rows=64)
        assert from_map.config() == from_memory.config()
        np.testing.assert_array_equal(bits(from_map.transform(mapped, chunk_rows=64)), bits(from_memory.transform(x)))


def test_fit_and_transform_never_hold_a_float64_copy_of_the_whole_set():
    n, d, chunk_rows = 40_000, 50, 1000
    x = np.random.default_rng(5).integers(0, 256, size=(n, d), dtype=np.uint8)
    whole_float64 = n * d * 8
    tracemalloc.start()
    try:
        scaler = Scaler.fit(x, "standardize", chunk_rows=chunk_rows)
        _, fit_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        y = scaler.transform(x, chunk_rows=chunk_rows)
        _, transform_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert fit_peak < whole_float64 / 4, f"fit peaked at {fit_peak:,} bytes"
    # the float32 output itself plus a chunk of float64 scratch, far below a float64 copy
    assert transform_peak - before < y.nbytes + whole_float64 / 4, f"transform peaked at {transform_peak - before:,} bytes"


# ---- stored configs ----------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    x=hnp.arrays(
        st.sampled_from([np.float32, np.float64]),
        st.tuples(st.integers(1, 12), st.integers(1, 4)),
        elements=st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32),
    ),
    mode=st.sampled_from(["auto", "minmax", "standardize", "none"]),
)
def test_json_round_trip_transforms_bit_for_bit(x, mode):
    fitted = Scaler.fit(x, mode)
    rebuilt = through_json(fitted)
    assert rebuilt.config() == fitted.config()
    np.testing.assert_array_equal(bits(rebuilt.transform(x)), bits(fitted.transform(x)))
    y = fitted.transform(x)
    np.testing.assert_array_equal(bits(rebuilt.inverse_transform(y)), bits(fitted.inverse_transform(y)))


def test_unit_round_trips_through_json():
    x = np.array([[0, 65535], [7, 9]], dtype=np.uint16)
    fitted = Scaler.fit(x)
    rebuilt = through_json(fitted)
    assert rebuilt.mode == "unit" and rebuilt.integer_max == 65535 and rebuilt.fitted_dtype == "uint16"
    np.testing.assert_array_equal(bits(rebuilt.transform(x)), bits(fitted.transform(x)))


GOOD = {
    "mode": "standardize",
    "requested_mode": "auto",
    "n_features": 2,
    "fitted_dtype": "float64",
    "output_range": "real",
    "shift": [0.5, -1.0],
    "scale": [2.0, 3.0],
}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"mode": "auto"}, "'mode' must be one of unit, minmax, standardize, none, got 'auto'"),
        ({"mode": 3}, "'mode' must be one of"),
        ({"shift": None}, "missing 'shift' for mode 'standardize'"),
        ({"shift": [1.0]}, "'shift' must be a list of 2 numbers (one per feature), got 1"),
        ({"scale": [1.0, 0.0]}, "'scale'[1] must be > 0"),
        ({"scale": [1.0, float("nan")]}, "'scale'[1] must be a finite number"),
        ({"shift": [True, 1.0]}, "'shift'[0] must be a finite number"),
        ({"shift": ["1", 1.0]}, "'shift'[0] must be a finite number"),
        ({"n_features": 0}, "'n_features' must be a positive integer"),
        ({"n_features": True}, "'n_features' must be a positive integer"),
        ({"fitted_dtype": "object"}, "'fitted_dtype' must name a numeric dtype"),
        ({"fitted_dtype": "not-a-type"}, "'fitted_dtype' must name a numeric dtype"),
        ({"output_range": "unit"}, "'output_range' must be 'real' for mode 'standardize'"),
        ({"requested_mode": "log"}, "'requested_mode' must be one of"),
        ({"extra": 1}, "unexpected 'extra'"),
        ({"integer_max": 255}, "unexpected 'integer_max'"),
    ],
)
def test_bad_configs_are_refused_naming_the_key(change, words):
    config = {**GOOD, **change}
    config = {key: value for key, value in config.items() if value is not None}
    with pytest.raises(ValueError) as caught:
        Scaler.from_config(config)
    message = str(caught.value)
    assert message.startswith("scaling config: ") and words in message and "train again" in message


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ([1, 2], "expected a JSON object, got list"),
        ({"mode": "unit", "requested_mode": "auto", "n_features": 2, "fitted_dtype": "uint8", "output_range": "unit"}, "missing 'integer_max'"),
        (
            {"mode": "unit", "requested_mode": "auto", "n_features": 2, "fitted_dtype": "uint8", "output_range": "unit", "integer_max": True},
            "'integer_max' must be a positive integer",
        ),
        ({"mode": "none", "requested_mode": "none", "n_features": 2, "fitted_dtype": "uint8", "output_range": "sideways"}, "'output_range'"),
    ],
)
def test_more_bad_configs(config, words):
    with pytest.raises(ValueError, match="scaling config") as caught:
        Scaler.from_config(config)
    assert words in str(caught.value)


def test_a_good_config_is_accepted():
    scaler = Scaler.from_config(GOOD)
    np.testing.assert_array_equal(scaler.transform(np.array([[2.5, 2.0]])), [[1.0, 1.0]])
    np.testing.assert_array_equal(scaler.inverse_transform(np.array([[1.0, 1.0]], dtype=np.float32)), [[2.5, 2.0]])


def test_bool_data_scales_as_zero_and_one():
    x = np.array([[True, False], [False, False]])
    np.testing.assert_array_equal(Scaler.fit(x).transform(x), [[1, 0], [0, 0]])
    standardized = Scaler.fit(x, "standardize")
    np.testing.assert_array_equal(standardized.transform(x), [[1, 0], [-1, 0]])  # mean 0.5, std 0.5; constant -> 0
    np.testing.assert_array_equal(standardized.inverse_transform(standardized.transform(x)), x.astype(np.float32))
