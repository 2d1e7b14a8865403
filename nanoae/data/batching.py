"""Shuffled mini-batch indices that run on across epoch boundaries.

:class:`BatchSampler` behaves like TensorFlow 1's ``mnist.train.next_batch``
with shuffling: every epoch is a fresh permutation of ``range(n)``, every
batch has exactly ``batch_size`` indices, and a batch that reaches the end
of an epoch is completed from the start of the next, freshly shuffled, one.
So each index appears exactly once per epoch and no batch is short.

The sampler owns its random generator (a PCG64 made from the ``seed`` it is
given) and shares it with nothing, so no other draw (a VAE's noise, a denoiser's
corruption) can change which batches come next. Its whole state (position, epoch,
the current permutation and the generator's state) round-trips through
:meth:`BatchSampler.state_dict` as plain ints, one int64 array and the generator's
JSON-able state dict, which a ``.npz`` checkpoint stores without pickle.

:func:`holdout_rows` is the other way rows are chosen: a seeded, once-for-all split
into training and validation rows, for data without a test split (the same rows for
the same ``(n, fraction, seed)`` on any machine: NumPy's PCG64 permutation is stable).
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any, Mapping

import numpy as np

__all__ = ["BatchSampler", "holdout_rows"]


def _as_int(value: Any, what: str) -> int:
    """A Python int from an int or a 0-d integer array (as ``np.load`` gives)."""
    try:
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value[()]
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {value!r} ({type(value).__name__}).") from None


def _generator_from(seed: Any) -> np.random.Generator:
    """A new PCG64 generator from an int >= 0 or a ``numpy.random.SeedSequence``."""
    if isinstance(seed, np.random.SeedSequence):
        return np.random.Generator(np.random.PCG64(seed))
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TypeError(
            f"seed must be an integer >= 0 or a numpy.random.SeedSequence, got {seed!r} "
            f"({type(seed).__name__}); the sampler makes and owns its generator, so pass a seed, not a generator."
        )
    return np.random.Generator(np.random.PCG64(int(seed)))


class BatchSampler:
    """Endless shuffled batches of indices into a data set of ``n`` rows.

    Args:
        n: number of rows, >= 1.
        batch_size: indices per batch, 1..n.
        seed: an int >= 0 or a ``numpy.random.SeedSequence``; the sampler's own
            PCG64 generator is made from it and draws every permutation, the
            first one included (drawn here, in the constructor). The same seed
            gives the same batches as ``numpy.random.default_rng(seed)`` would.

    Attributes:
        epoch: completed epochs: the number of full passes over the data
            handed out so far.
        progress: epochs as a float (``epoch + position / n``).
        position: how many indices of the current epoch were handed out.
    """

    def __init__(self, n: int, batch_size: int, seed: int | np.random.SeedSequence):
        n = _as_int(n, "n")
        batch_size = _as_int(batch_size, "batch_size")
        if n < 1:
            raise ValueError(f"n must be at least 1 (the number of rows to sample from), got {n}.")
        if not 1 <= batch_size <= n:
            raise ValueError(
                f"batch_size must lie in 1..{n} (the number of rows), got {batch_size}; "
                "use a smaller batch or more data."
            )
        self._n = n
        self._batch_size = batch_size
        self._rng = _generator_from(seed)
        self._epoch = 0
        self._position = 0
        self._perm = self._shuffle()

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "BatchSampler":
        """A sampler positioned exactly as ``state`` (from :meth:`state_dict`) says,
        its generator included, so later epochs shuffle as in an unstopped run."""
        sampler = cls(_as_int(state.get("n"), "state['n']"), _as_int(state.get("batch_size"), "state['batch_size']"), 0)
        sampler.load_state_dict(state)
        return sampler

    def _shuffle(self) -> np.ndarray:
        """A fresh permutation of range(n), int64."""
        return self._rng.permutation(self._n).astype(np.int64, copy=False)

    @property
    def n(self) -> int:
        return self._n

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def position(self) -> int:
        return self._position

    @property
    def progress(self) -> float:
        return self._epoch + self._position / self._n

    @property
    def batches_per_epoch(self) -> float:
        """n / batch_size: batches per pass over the data (not always whole)."""
        return self._n / self._batch_size

    def next_indices(self) -> np.ndarray:
        """The next batch: int64 (batch_size,), a new array the caller owns.

        When fewer than ``batch_size`` indices remain in this epoch, the batch
        is the rest of it followed by the start of the next epoch's fresh
        permutation.
        """
        out = np.empty(self._batch_size, dtype=np.int64)
        filled = 0
        while filled < self._batch_size:
            take = min(self._batch_size - filled, self._n - self._position)
            out[filled:filled + take] = self._perm[self._position:self._position + take]
            filled += take
            self._position += take
            if self._position == self._n:
                # Epoch done: reshuffle now, so the saved state never needs a
                # "shuffle pending" flag and position always lies in 0..n-1.
                self._epoch += 1
                self._position = 0
                self._perm = self._shuffle()
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly.

        Returns:
            ``{"n", "batch_size", "epoch", "position"}`` as Python ints,
            ``"permutation"``: int64 (n,), a copy of the current epoch's order, and
            ``"rng_state"``: the generator's ``bit_generator.state`` (a dict of ints).
        """
        return {**self.snapshot(), "permutation": self._perm.copy()}

    def snapshot(self) -> dict[str, Any]:
        """:meth:`state_dict` without copying the permutation, for a training loop that
        may have to come back to this point (``load_state_dict`` takes it).

        Cheap enough for every step: the sampler never writes into a permutation, it
        draws a new array at each reshuffle, so holding the current one is safe.
        """
        return {
            "n": self._n,
            "batch_size": self._batch_size,
            "epoch": self._epoch,
            "position": self._position,
            "permutation": self._perm,
            "rng_state": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict` output (values may be 0-d arrays).

        ``n`` and ``batch_size`` must match this sampler's. The generator's state
        is restored too, so the following epochs shuffle as they would have.
        """
        keys = {"n", "batch_size", "epoch", "position", "permutation", "rng_state"}
        missing = keys - set(state)
        if missing:
            raise ValueError(f"BatchSampler state lacks {', '.join(sorted(missing))}; expected keys {sorted(keys)}.")
        n = _as_int(state["n"], "state['n']")
        batch_size = _as_int(state["batch_size"], "state['batch_size']")
        epoch = _as_int(state["epoch"], "state['epoch']")
        position = _as_int(state["position"], "state['position']")
        if n != self._n or batch_size != self._batch_size:
            raise ValueError(
                f"BatchSampler state is for n={n}, batch_size={batch_size}; this sampler has "
                f"n={self._n}, batch_size={self._batch_size}. Build the sampler with the saved sizes."
            )
        if epoch < 0 or not 0 <= position < n:
            raise ValueError(f"BatchSampler state has epoch={epoch}, position={position}; need epoch >= 0 and 0 <= position < {n}.")
        perm = np.asarray(state["permutation"])
        if perm.shape != (n,) or perm.dtype.kind not in "iu":
            raise ValueError(f"BatchSampler state's permutation must be an integer array of shape ({n},), got {perm.dtype} {perm.shape}.")
        if not np.array_equal(np.sort(perm), np.arange(n)):
            raise ValueError(f"BatchSampler state's permutation is not a permutation of 0..{n - 1}.")
        rng_state = state["rng_state"]
        if not (isinstance(rng_state, Mapping) and rng_state.get("bit_generator") == "PCG64"):
            raise ValueError(f"BatchSampler state's rng_state must be a PCG64 bit_generator.state dict, got {rng_state!r}.")
        generator = np.random.PCG64()
        try:
            generator.state = dict(rng_state)
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"BatchSampler state's rng_state cannot be restored: {exc}.") from exc
        self._epoch, self._position = epoch, position
        self._perm = perm.astype(np.int64, copy=True)
        self._rng = np.random.Generator(generator)


def holdout_rows(n_rows: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n_rows)`` into (train rows, validation rows), each sorted int64.

    The validation set has ``k = floor(fraction * n_rows + 1/2)`` rows (rounded half
    up), drawn as the first ``k`` of ``default_rng(seed).permutation(n_rows)``.

    Raises:
        ValueError: ``fraction`` not in (0, 1), a seed that is not an int >= 0, or a
            split that would leave either side empty (the message gives the smallest
            and largest fraction that work for ``n_rows``).
    """
    if isinstance(n_rows, bool) or not isinstance(n_rows, numbers.Integral) or n_rows < 0:
        raise ValueError(f"n_rows must be an integer >= 0, got {n_rows!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not math.isfinite(fraction):
        raise ValueError(f"the validation fraction must be a number in (0, 1), got {fraction!r}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the validation fraction must lie strictly between 0 and 1 (e.g. 0.1), got {fraction!r}")
    n_rows = int(n_rows)
    if n_rows < 2:
        raise ValueError(
            f"holding out validation rows needs at least 2 rows (one to train on, one to validate), the data has {n_rows}"
        )
    k = math.floor(float(fraction) * n_rows + 0.5)
    if not 1 <= k <= n_rows - 1:
        low, high = 1 / n_rows, (n_rows - 1) / n_rows
        side = "no row to validate on" if k < 1 else "no row to train on"
        raise ValueError(
            f"a validation fraction of {fraction!r} of {n_rows} rows leaves {side}; "
            f"use a fraction from {low:.4g} to {high:.4g} for this data"
        )
    order = np.random.default_rng(int(seed)).permutation(n_rows)
    validation = np.sort(order[:k]).astype(np.int64, copy=False)
    train = np.sort(order[k:]).astype(np.int64, copy=False)
    return train, validation
