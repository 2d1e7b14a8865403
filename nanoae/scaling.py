"""Feature scaling fitted on a data set, stored as JSON, reapplied wherever the model is used.

Every mode is a per-feature affine map done in chunks of rows, so a memory-mapped
``.npy`` is read once per pass and never copied whole into float64:

    unit         y = x / M                    M = the integer dtype's maximum (uint8: 255)
    minmax       y = (x - min_j) / (max_j - min_j)        per feature j; a constant
                                                          feature gets scale 1 (maps to 0)
    standardize  y = (x - mean_j) / std_j                 population std; a constant
                                                          feature gets scale 1 (maps to 0)
    none         y = x                                    only cast to float32

``auto`` picks one from the data at fit time (never stored as "auto"):

- ``bool`` and integer dtypes of at most 16 bits with no negative value -> ``unit``
  (uint8 / 255, uint16 / 65535, int8 / 127, int16 / 32767, bool / 1): pixels and the like;
- integers with negative values, and integers of 32 or 64 bits -> ``standardize``: a
  wide type's maximum (2**63 - 1 for int64) says nothing about the data's range, and
  dividing by it would squash every value to about 0;
- floats already within [0, 1] -> ``none`` (kept as they are);
- anything else -> ``standardize``.

Explicit ``unit`` on float data already within [0, 1] resolves to ``none``; on other
float data, or on signed integers with negatives, it is refused (use ``minmax`` or
``standardize``). A CSV file has no integer type: its values are float64, so ``auto``
keeps them when within [0, 1] and standardises them otherwise.

Statistics are accumulated in float64 over chunks of rows (means and squared
deviations merged chunk by chunk, Chan's parallel formula). They are stored as
Python floats, which JSON writes and reads back exactly, so a scaler rebuilt with
:meth:`Scaler.from_config` transforms bit for bit like the one that was fitted.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterator, Mapping

import numpy as np

__all__ = ["SCALE_MODES", "Scaler", "row_chunks"]

SCALE_MODES = ("auto", "unit", "minmax", "standardize", "none")
STORED_MODES = ("unit", "minmax", "standardize", "none")
OUTPUT_RANGES = ("unit", "real")
# Rows per chunk are chosen so a chunk holds about this many values: 4M values are
# 32 MB of float64 scratch, small next to any data set worth chunking.
CHUNK_VALUES = 1 << 22


def row_chunks(n_rows: int, n_features: int, chunk_rows: int | None = None) -> Iterator[slice]:
    """Slices of consecutive rows covering ``range(n_rows)``, about ``CHUNK_VALUES``
    values each (or ``chunk_rows`` rows each when given)."""
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_VALUES // max(1, n_features))
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, numbers.Integral) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    for start in range(0, n_rows, int(chunk_rows)):
        yield slice(start, min(start + int(chunk_rows), n_rows))


def _numeric_2d(x: Any, name: str) -> np.ndarray:
    """``x`` as a 2-D NumPy array of bool, integer or real float dtype; clear errors otherwise."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{name} has dtype {x.dtype}; scaling needs numbers (bool, integer or float)")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples, features), got shape {x.shape}; flatten with {name}.reshape(len({name}), -1)")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} has shape {x.shape}: it needs at least one row and one feature")
    return x


class _FeatureStats:
    """Per-feature min, max, mean and sum of squared deviations of ``x: (n, d)``, in
    float64, accumulated over row chunks (Chan et al.'s pairwise merge)."""

    def __init__(self, x: np.ndarray, chunk_rows: int | None, rows: np.ndarray | None = None):
        n, d = (x.shape[0] if rows is None else rows.shape[0]), x.shape[1]
        self.count = 0
        self.minimum = np.full(d, np.inf)
        self.maximum = np.full(d, -np.inf)
        self.mean = np.zeros(d)
        self.m2 = np.zeros(d)
        for part in row_chunks(n, d, chunk_rows):
            chunk = np.asarray(x[part] if rows is None else x[rows[part]], dtype=np.float64)
            finite = np.isfinite(chunk)
            if not finite.all():
                row, feature = (int(v) for v in np.argwhere(~finite)[0])
                raise ValueError(
                    f"row {part.start + row if rows is None else int(rows[part.start + row])}, feature {feature} is "
                    f"{chunk[row, feature]}; scaling needs finite numbers: fill or drop those rows"
                )
            self._merge(chunk)

    def _merge(self, chunk: np.ndarray) -> None:
        np.minimum(self.minimum, chunk.min(axis=0), out=self.minimum)
        np.maximum(self.maximum, chunk.max(axis=0), out=self.maximum)
        n_b = chunk.shape[0]
        mean_b = chunk.mean(axis=0)
        m2_b = np.square(chunk - mean_b).sum(axis=0)
        n_a = self.count
        total = n_a + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / total)
        self.m2 = self.m2 + m2_b + np.square(delta) * (n_a * n_b / total)
        self.count = total

    @property
    def constant(self) -> np.ndarray:
        """bool (d,): features whose every value is the same."""
        return self.maximum == self.minimum

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation per feature, float64 (d,)."""
        return np.sqrt(self.m2 / self.count)

    @property
    def within_unit(self) -> bool:
        return bool(self.minimum.min() >= 0.0 and self.maximum.max() <= 1.0)


def _span(stats: _FeatureStats) -> str:
    return f"[{stats.minimum.min():.6g}, {stats.maximum.max():.6g}]"


class Scaler:
    """A fitted feature scaling: ``transform`` (x -> y, float32) and its inverse.

    Make one with :meth:`fit` (from data) or :meth:`from_config` (from a stored run).

    Attributes:
        mode: the resolved mode, one of ``"unit"``, ``"minmax"``, ``"standardize"``,
            ``"none"`` (never ``"auto"``).
        requested_mode: what was asked for (``"auto"`` or the mode itself).
        n_features: the width ``d`` of the data it was fitted on.
        fitted_dtype: the dtype of the data it was fitted on (a string, e.g. ``"uint8"``).
        integer_max: M of ``unit`` (``y = x / M``), else None.
        shift, scale: float64 (d,) of ``minmax`` and ``standardize`` (``y = (x - shift) / scale``),
            else None.
        output_range: ``"unit"`` when the fitted data map into [0, 1] (``unit``, ``minmax``,
            ``none`` on data within [0, 1]), ``"real"`` otherwise; it decides the default
            output activation (sigmoid for ``"unit"``, identity for ``"real"``).
    """

    def __init__(
        self,
        mode: str,
        n_features: int,
        *,
        fitted_dtype: str,
        output_range: str,
        requested_mode: str | None = None,
        integer_max: int | None = None,
        shift: np.ndarray | None = None,
        scale: np.ndarray | None = None,
    ):
        self.mode = mode
        self.requested_mode = requested_mode if requested_mode is not None else mode
        self.n_features = int(n_features)
        self.fitted_dtype = fitted_dtype
        self.output_range = output_range
        self.integer_max = integer_max
        self.shift = None if shift is None else np.array(shift, dtype=np.float64)
        self.scale = None if scale is None else np.array(scale, dtype=np.float64)
        for array in (self.shift, self.scale):
            if array is not None:
                array.flags.writeable = False

    # ---- fitting ----------------------------------------------------------------------
    @classmethod
    def fit(cls, features: Any, mode: str = "auto", *, chunk_rows: int | None = None, rows: Any = None) -> "Scaler":
        """Fit the scaling ``mode`` (one of :data:`SCALE_MODES`) to ``features: (n, d)``,
        or to its rows ``rows`` (int (m,), each in [0, n)) when given.

        One chunked float64 pass gathers every statistic; ``features`` may be a
        read-only memmap, and ``rows`` are read chunk by chunk, never gathered into one
        copy: fitting ``features`` with ``rows`` gives bit for bit the scaler fitted on
        ``features[rows]`` (the same chunks, merged in the same order). Raises
        ValueError for an unknown mode, non-finite values (naming the row of
        ``features``), or a mode that does not fit the data (``unit`` on floats outside
        [0, 1] or on negative integers), with the mode to use instead.
        """
        if mode not in SCALE_MODES:
            raise ValueError(f"unknown scaling {mode!r}; choose one of: {', '.join(SCALE_MODES)}")
        x = _numeric_2d(features, "features")
        if rows is not None:
            rows = np.asarray(rows)
            if rows.ndim != 1 or rows.dtype.kind not in "iu" or rows.size == 0:
                raise ValueError(f"rows must be a non-empty 1-D integer array of row numbers, got {rows.dtype} {rows.shape}")
            if int(rows.min()) < 0 or int(rows.max()) >= x.shape[0]:
                raise ValueError(f"rows must lie in [0, {x.shape[0]}), got {int(rows.min())}..{int(rows.max())}")
        dtype = x.dtype
        stats = _FeatureStats(x, chunk_rows, rows)
        d = x.shape[1]
        common = {"fitted_dtype": dtype.name, "requested_mode": mode}

        if mode == "auto":
            if dtype.kind == "b" or (dtype.kind in "iu" and dtype.itemsize <= 2 and stats.minimum.min() >= 0):
                mode = "unit"
            elif dtype.kind == "f" and stats.within_unit:
                mode = "none"
            else:
                mode = "standardize"
        elif mode == "unit" and dtype.kind == "f":
            if not stats.within_unit:
                raise ValueError(
                    f"unit scaling divides integers by their type's maximum, but these are {dtype.name} values "
                    f"spanning {_span(stats)}, not within [0, 1]: use --scale minmax (each feature to [0, 1]) "
                    "or --scale standardize"
                )
            mode = "none"  # floats already within [0, 1] are unit-scaled as they are
        elif mode == "unit" and dtype.kind in "iu" and stats.minimum.min() < 0:
            raise ValueError(
                f"unit scaling maps {dtype.name} values into [0, 1] by dividing by {np.iinfo(dtype).max}, but these "
                f"include negatives (down to {stats.minimum.min():.6g}): use --scale minmax or --scale standardize"
            )

        if mode == "unit":
            integer_max = 1 if dtype.kind == "b" else int(np.iinfo(dtype).max)
            return cls("unit", d, integer_max=integer_max, output_range="unit", **common)
        if mode == "none":
            return cls("none", d, output_range="unit" if stats.within_unit else "real", **common)
        constant = stats.constant
        if mode == "minmax":
            scale = np.where(constant, 1.0, stats.maximum - stats.minimum)
            return cls("minmax", d, shift=stats.minimum, scale=scale, output_range="unit", **common)
        # standardize: a constant feature is shifted by its own value, so it maps to exactly 0
        shift = np.where(constant, stats.minimum, stats.mean)
        scale = np.where(constant, 1.0, stats.std)
        scale = np.where(scale > 0, scale, 1.0)  # a std that underflowed to 0
        if not np.isfinite(scale).all():
            raise ValueError(
                f"values up to {np.abs(stats.maximum).max():.3g} are too large to standardise in float64: "
                "divide them by a constant first, or use --scale minmax"
            )
        return cls("standardize", d, shift=shift, scale=scale, output_range="real", **common)

    # ---- applying -----------------------------------------------------------------------
    def _checked(self, x: Any, name: str) -> np.ndarray:
        x = _numeric_2d(x, name)
        if x.shape[1] != self.n_features:
            raise ValueError(
                f"{name} has {x.shape[1]} features per row but this scaling was fitted on {self.n_features}; "
                "pass data of the width the model was trained on"
            )
        return x

    def transform(self, x: Any, *, chunk_rows: int | None = None) -> np.ndarray:
        """``x: (n, d)`` -> ``y: (n, d)`` float32, row chunk by row chunk.

        ``none`` returns ``x`` itself (no copy) when it is float32 already. ``unit``
        divides in float32 (exact for uint8/uint16 inputs, as the MNIST loader does);
        ``minmax`` and ``standardize`` compute each chunk in float64 and round once to
        float32. ``unit`` needs integer (or bool) input: float input would be divided
        by M a second time, so it is refused.
        """
        x = self._checked(x, "x")
        if self.mode == "none" and x.dtype == np.float32:
            return x
        if self.mode == "unit" and x.dtype.kind == "f":
            raise TypeError(
                f"this scaling divides integer data by {self.integer_max} (it was fitted on {self.fitted_dtype}); "
                f"got {x.dtype.name} values: pass data of the kind the model was trained on"
            )
        return self._by_chunks(x, chunk_rows, self.transform_into)

    def inverse_transform(self, y: Any, *, chunk_rows: int | None = None) -> np.ndarray:
        """``y: (n, d)`` (the model's outputs, scaled) -> float32 (n, d) in the data's units.

        ``unit``: ``y * M`` in float32 (not rounded to integers); ``minmax`` and
        ``standardize``: ``y * scale + shift`` in float64 per chunk, rounded once to
        float32; ``none``: ``y`` itself when float32, else a float32 copy.
        """
        y = self._checked(y, "y")
        if self.mode == "none" and y.dtype == np.float32:
            return y
        return self._by_chunks(y, chunk_rows, self.inverse_transform_into)

    def transform_into(self, raw: np.ndarray, out: np.ndarray, work: np.ndarray | None = None) -> None:
        """One block of :meth:`transform`, unchecked: out = transform(raw).

        raw: (k, d) of the fitted kind; out: float32 (k, d); work: float64 (k, d) scratch for
        ``minmax`` / ``standardize`` (made when None). Every path that scales data (the
        chunks of :meth:`transform`, the batches of ``nanoae.data.ScaledRows``) goes through
        here, so they agree bit for bit.
        """
        if self.mode == "none":
            np.copyto(out, raw, casting="unsafe")
        elif self.mode == "unit":
            np.divide(raw, np.float32(self.integer_max), out=out, dtype=np.float32)
        else:
            work = np.empty(raw.shape, dtype=np.float64) if work is None else work
            np.subtract(raw, self.shift, out=work, dtype=np.float64)
            np.divide(work, self.scale, out=work)
            np.copyto(out, work, casting="unsafe")

    def inverse_transform_into(self, y: np.ndarray, out: np.ndarray, work: np.ndarray | None = None) -> None:
        """One block of :meth:`inverse_transform`, unchecked: out = inverse_transform(y)."""
        if self.mode == "none":
            np.copyto(out, y, casting="unsafe")
        elif self.mode == "unit":
            np.multiply(y, np.float32(self.integer_max), out=out, dtype=np.float32)
        else:
            work = np.empty(y.shape, dtype=np.float64) if work is None else work
            np.multiply(y, self.scale, out=work, dtype=np.float64)
            np.add(work, self.shift, out=work)
            np.copyto(out, work, casting="unsafe")

    def _by_chunks(self, x: np.ndarray, chunk_rows: int | None, block) -> np.ndarray:
        """float32 (n, d) made by ``block(x[rows], out[rows], work)`` over row chunks, with
        one float64 scratch reused where the mode needs one (a memory map is never
        converted whole)."""
        out = np.empty(x.shape, dtype=np.float32)
        scratch = None
        for rows in row_chunks(x.shape[0], x.shape[1], chunk_rows):
            chunk = x[rows]
            if self.mode in ("minmax", "standardize") and (scratch is None or scratch.shape[0] < chunk.shape[0]):
                scratch = np.empty(chunk.shape, dtype=np.float64)
            block(chunk, out[rows], None if scratch is None else scratch[: chunk.shape[0]])
        return out

    # ---- words and storage ------------------------------------------------------------------
    @property
    def description(self) -> str:
        """One line for people, e.g. ``"auto: uint8 values divided by 255"``."""
        what = {
            "unit": f"{self.fitted_dtype} values divided by {self.integer_max}",
            "minmax": "each feature mapped to [0, 1] by its min and max",
            "standardize": "each feature standardised (mean 0, population std 1)",
            "none": (
                f"{self.fitted_dtype} values already within [0, 1], kept"
                if self.output_range == "unit"
                else f"{self.fitted_dtype} values kept as they are"
            ),
        }[self.mode]
        return f"{self.requested_mode}: {what}"

    def config(self) -> dict:
        """A JSON-able dict that :meth:`from_config` turns back into this scaler exactly."""
        config: dict[str, Any] = {
            "mode": self.mode,
            "requested_mode": self.requested_mode,
            "n_features": self.n_features,
            "fitted_dtype": self.fitted_dtype,
            "output_range": self.output_range,
        }
        if self.mode == "unit":
            config["integer_max"] = int(self.integer_max)
        if self.mode in ("minmax", "standardize"):
            config["shift"] = [float(v) for v in self.shift]
            config["scale"] = [float(v) for v in self.scale]
        return config

    @classmethod
    def from_config(cls, config: Any) -> "Scaler":
        """Rebuild a scaler from :meth:`config`'s dict (as read from a run's JSON).

        The input is untrusted: every key is checked, and anything wrong raises
        ValueError naming the key.
        """
        fix = "the stored scaling is damaged: restore the run's files or train again"

        def bad(what: str) -> ValueError:
            return ValueError(f"scaling config: {what}; {fix}")

        if not isinstance(config, Mapping):
            raise bad(f"expected a JSON object, got {type(config).__name__}")
        mode = config.get("mode")
        if mode not in STORED_MODES:
            raise bad(f"'mode' must be one of {', '.join(STORED_MODES)}, got {mode!r}")
        wanted = {"mode", "requested_mode", "n_features", "fitted_dtype", "output_range"}
        if mode == "unit":
            wanted.add("integer_max")
        if mode in ("minmax", "standardize"):
            wanted |= {"shift", "scale"}
        missing = sorted(wanted - set(config))
        extra = sorted(set(config) - wanted, key=str)
        if missing:
            raise bad(f"missing {', '.join(map(repr, missing))} for mode {mode!r}")
        if extra:
            raise bad(f"unexpected {', '.join(map(repr, extra))} for mode {mode!r}")

        requested = config["requested_mode"]
        if requested not in SCALE_MODES:
            raise bad(f"'requested_mode' must be one of {', '.join(SCALE_MODES)}, got {requested!r}")
        n_features = config["n_features"]
        if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
            raise bad(f"'n_features' must be a positive integer, got {n_features!r}")
        fitted_dtype = config["fitted_dtype"]
        try:
            kind = np.dtype(fitted_dtype).kind if isinstance(fitted_dtype, str) else None
        except TypeError:
            kind = None
        if kind is None or kind not in "biuf":
            raise bad(f"'fitted_dtype' must name a numeric dtype, got {fitted_dtype!r}")
        output_range = config["output_range"]
        expected_range = {"unit": ("unit",), "minmax": ("unit",), "standardize": ("real",), "none": OUTPUT_RANGES}[mode]
        if output_range not in expected_range:
            raise bad(f"'output_range' must be {' or '.join(map(repr, expected_range))} for mode {mode!r}, got {output_range!r}")

        kwargs: dict[str, Any] = {}
        if mode == "unit":
            integer_max = config["integer_max"]
            if isinstance(integer_max, bool) or not isinstance(integer_max, int) or integer_max < 1:
                raise bad(f"'integer_max' must be a positive integer, got {integer_max!r}")
            kwargs["integer_max"] = integer_max
        if mode in ("minmax", "standardize"):
            for key in ("shift", "scale"):
                values = config[key]
                if not isinstance(values, list) or len(values) != n_features:
                    size = len(values) if isinstance(values, list) else type(values).__name__
                    raise bad(f"{key!r} must be a list of {n_features} numbers (one per feature), got {size}")
                for j, v in enumerate(values):
                    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                        raise bad(f"{key!r}[{j}] must be a finite number, got {v!r}")
                    if key == "scale" and v <= 0:
                        raise bad(f"'scale'[{j}] must be > 0, got {v!r}")
                kwargs[key] = np.array(values, dtype=np.float64)
        return cls(
            mode,
            n_features,
            fitted_dtype=np.dtype(fitted_dtype).name,
            output_range=output_range,
            requested_mode=requested,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"Scaler({self.description!r}, n_features={self.n_features})"
