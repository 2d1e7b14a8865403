"""Training rows read straight from the stored data, scaled a batch at a time.

A :class:`ScaledRows` stands for the float32 array ``scaler.transform(features[rows])``
without making it: ``gather(indices)`` reads only the batch's rows (through the row
map ``rows``, e.g. a hold-out's training rows) and scales only them. So a memory-mapped
``.npy`` of any size trains with one batch of it in memory, not a float32 copy of
the whole file (four times a uint8 file's size).

Scaling is elementwise, so scaling a batch gives each value exactly as scaling the
whole set would: ``gather`` computes the same operations as
:meth:`~nanoae.scaling.Scaler.transform` (``unit``: one float32 division; ``minmax`` and
``standardize``: float64 subtract and divide, rounded once to float32; ``none``: a
cast), so training from a ScaledRows is bit for bit training from the materialized array.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nanoae.scaling import Scaler, row_chunks

__all__ = ["ScaledRows"]


class ScaledRows:
    """Rows ``rows`` of ``features``, scaled by ``scaler``, gathered on demand.

    features: (n, d) bool, integer or float (a ``np.memmap`` is read, never copied);
    rows: int64 (m,) the row numbers exposed, each in [0, n) (None: all n rows);
    scaler: a fitted :class:`~nanoae.scaling.Scaler` of width d, or None (the values
    only cast to float32).

    ``len(source) == m``, ``source.shape == (m, d)``; row i of the source is
    ``scaler.transform(features[rows[i:i+1]])``.
    """

    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, features: Any, rows: Any = None, scaler: Scaler | None = None):
        if not isinstance(features, np.ndarray):
            features = np.asarray(features)
        if features.ndim != 2 or features.dtype.kind not in "biuf":
            raise ValueError(f"features must be a 2-D numeric array (samples, features), got {features.dtype} {features.shape}")
        n, width = features.shape
        if rows is not None:
            rows = np.asarray(rows)
            if rows.ndim != 1 or rows.dtype.kind not in "iu":
                raise ValueError(f"rows must be a 1-D integer array of row numbers, got {rows.dtype} {rows.shape}")
            rows = rows.astype(np.int64, copy=False)
            if rows.size and (int(rows.min()) < 0 or int(rows.max()) >= n):
                raise ValueError(f"rows must lie in [0, {n}) (the data has {n} rows), got {int(rows.min())}..{int(rows.max())}")
        if rows is not None and rows.size == 0 or rows is None and n == 0:
            raise ValueError("a ScaledRows needs at least one row")
        if scaler is not None:
            scaler.transform(features[:1])  # the scaler's own errors for a wrong width or kind of data
        self.features = features
        self.rows = rows
        self.scaler = scaler
        self.shape = (n if rows is None else int(rows.shape[0]), width)
        self._scratch: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        scaling = "unscaled" if self.scaler is None else self.scaler.description
        return f"ScaledRows({self.shape[0]} of {self.features.shape[0]} rows x {self.shape[1]} {self.features.dtype}, {scaling})"

    def gather(self, indices: Any, out: np.ndarray | None = None) -> np.ndarray:
        """Source rows ``indices`` -> float32 (batch, d): scaler.transform(features[rows[indices]]).

        indices: integer (batch,), each in [-m, m) (negative ones count from the end, as
        in NumPy); IndexError otherwise. out: a float32 (batch, d) C-contiguous array to
        write into; given one, the call reuses scratch kept on this object from call to
        call and allocates nothing once the batch size is steady.
        """
        indices = np.asarray(indices)
        if indices.ndim != 1 or indices.dtype.kind not in "iu":
            raise IndexError(f"indices must be a 1-D integer array, got {indices.dtype} {indices.shape}")
        m, width = self.shape
        if indices.size:
            lowest, highest = int(indices.min()), int(indices.max())
            if lowest < -m or highest >= m:
                raise IndexError(f"index {lowest if lowest < -m else highest} is out of bounds for axis 0 with size {m}")
        batch = indices.shape[0]
        if out is None:
            chosen = indices if self.rows is None else self.rows[indices]
            return self._scaled(self.features[chosen])
        if out.shape != (batch, width) or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous float32 array of shape {(batch, width)}, got {out.dtype} {out.shape}")
        # Checked above, so "wrap" only maps negative numbers to their rows; "raise" would
        # gather into a temporary copy, one allocation per batch.
        chosen = indices
        if self.rows is not None:
            chosen = self._buffer("rows", (batch,), np.int64)
            np.take(self.rows, indices, out=chosen, mode="wrap")
        if self.features.dtype == np.float32 and self._mode in ("none", None):
            np.take(self.features, chosen, axis=0, out=out, mode="wrap")
            return out
        raw = self._buffer("raw", (batch, width), self.features.dtype)
        np.take(self.features, chosen, axis=0, out=raw, mode="wrap")
        self._scale_into(raw, out)
        return out

    def materialize(self) -> np.ndarray:
        """All m rows as one float32 (m, d) array, scaled chunk by chunk (for a GPU, which
        needs the data on the device anyway, and for small sets). Without a row map and
        with nothing to change (float32 data, scaling ``none``) it is ``features`` itself."""
        if self.rows is None and self.features.dtype == np.float32 and self._mode in ("none", None):
            return self.features
        m, width = self.shape
        out = np.empty((m, width), dtype=np.float32)
        for part in row_chunks(m, width):
            chosen = part if self.rows is None else self.rows[part]
            out[part] = self._scaled(self.features[chosen])
        return out

    # ---- the scaling, as Scaler.transform computes it -------------------------------------
    @property
    def _mode(self) -> str | None:
        return None if self.scaler is None else self.scaler.mode

    def _scaled(self, raw: np.ndarray) -> np.ndarray:
        if self.scaler is None:
            return np.asarray(raw, dtype=np.float32)
        return self.scaler.transform(raw)

    def _scale_into(self, raw: np.ndarray, out: np.ndarray) -> None:
        """out = scaler.transform(raw), through the scaler's own block step."""
        if self.scaler is None:
            np.copyto(out, raw, casting="unsafe")
        else:
            work = self._buffer("work", raw.shape, np.float64) if self._mode in ("minmax", "standardize") else None
            self.scaler.transform_into(raw, out, work)

    def _buffer(self, name: str, shape: tuple, dtype) -> np.ndarray:
        kept = self._scratch.get(name)
        if kept is None or kept.shape != shape or kept.dtype != dtype:
            kept = self._scratch[name] = np.empty(shape, dtype=dtype)
        return kept
