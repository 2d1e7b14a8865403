"""The training loop: batches, logging, callbacks, a guard against NaN, checkpoints.

``train(model, x, ...)`` (and ``model.fit``, which calls it) runs::

    for each block of steps (up to the next log step, MAX_INDEX_BLOCK at most):
        draw the block's indices with sampler.next_indices()   # TF1 next_batch order
        for each step of the block:
            loss = model._train_step(x[indices], target[indices])
        at a log step (a multiple of log_every, or the last step):
            read the loss on the host, call on_log callbacks

The loss is read back to the host only on log steps, so a GPU is never made to wait
per step unless you log every step (the tutorial does). Each block's indices are
drawn at once, so inside a block (in ``on_step_end``) the sampler is already past the
step being trained; at a log step, and after ``train`` returns or raises, it is
exactly where the steps taken leave it, so a stopped run continues with the batches
it would have had (see :func:`train`).

Callbacks are objects with any of ``on_train_begin(state)``, ``on_step_end(state)``,
``on_log(state)``, ``on_train_end(state)``; they may set ``state.stop`` (with a
``state.stop_reason``) to end training early. Built in:

* :class:`ProgressBar`   tqdm when installed, else one plain line per log step
* :class:`MetricsCSV`    step, epoch, train loss, samples/s, wall time, test MSE
* :class:`Evaluator`     test reconstruction MSE every N steps and at the end
* :class:`Checkpointer`  an atomic checkpoint every N steps and at the end, only of
                         finite parameters, so the last one is always good
* :class:`StopOnNonFinite` ends training when the loss is NaN or infinite (always on)
"""

from __future__ import annotations

import copy
import csv
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanoae.validation import as_batch, positive_int


MAX_INDEX_BLOCK = 1024  # steps of batch indices sent to the device at once, at most


class NonFiniteLossWarning(RuntimeWarning):
    """Training stopped because the loss became NaN or infinite."""


@dataclass
class TrainingState:
    """What callbacks see. ``loss`` is a float on log steps and None otherwise."""

    model: object
    sampler: object
    batch_size: int
    total_steps: int
    step: int = 0
    loss: float | None = None
    loss_array: object = None
    epoch: float = 0.0
    samples_per_s: float = 0.0
    wall_time: float = 0.0
    test_mse: float | None = None
    stop: bool = False
    stop_reason: str = ""
    start_step: int = 0
    history: "History" = None


class History(list):
    """The logged training losses (a list of floats), with their steps and the rest.

    steps:      the step number of each logged loss
    test_mse:   (step, value) pairs from an Evaluator
    stopped:    True when a callback ended training early; stop_reason says why
    sampler:    the BatchSampler used (pass it back to continue the same order)
    """

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[int] = []
        self.test_mse: list[tuple[int, float]] = []
        self.stopped = False
        self.stop_reason = ""
        self.sampler = None


class Callback:
    """Base class with no-op hooks."""

    def on_train_begin(self, state: TrainingState) -> None:
        pass

    def on_step_end(self, state: TrainingState) -> None:
        pass

    def on_log(self, state: TrainingState) -> None:
        pass

    def on_train_end(self, state: TrainingState) -> None:
        pass


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ProgressBar(Callback):
    """Step, loss, samples/s and ETA: a tqdm bar when tqdm is installed, else plain lines."""

    def __init__(self, stream=None, use_tqdm: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.use_tqdm = use_tqdm
        self._bar = None

    def on_train_begin(self, state: TrainingState) -> None:
        if self.use_tqdm is not False:
            try:
                from tqdm.auto import tqdm  # noqa: PLC0415 (optional)
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(
                    total=state.total_steps, initial=state.start_step, file=self.stream, unit="step", dynamic_ncols=True
                )
        self._last_step = state.start_step

    def on_log(self, state: TrainingState) -> None:
        remaining = state.total_steps - state.step
        rate = state.samples_per_s / state.batch_size if state.samples_per_s else float("nan")
        eta = remaining / rate if rate and rate > 0 else float("nan")
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{state.loss:.5f}", samples_s=f"{state.samples_per_s:,.0f}", refresh=False)
            self._bar.update(state.step - self._last_step)
        else:
            width = len(str(state.total_steps))
            print(
                f"step {state.step:>{width}}/{state.total_steps} | loss {state.loss:.6f} | "
                f"{state.samples_per_s:,.0f} samples/s | ETA {_format_duration(eta)}",
                file=self.stream,
                flush=True,
            )
        self._last_step = state.step

    def on_train_end(self, state: TrainingState) -> None:
        if self._bar is not None:
            self._bar.close()


class Evaluator(Callback):
    """Test reconstruction MSE (mean over pixels and images) every ``every`` steps and at the end.

    x_test: (n, features); target_test: defaults to x_test (an autoencoder's target).
    The value lands in ``state.test_mse`` before the other on_log callbacks run, so
    put the Evaluator before a MetricsCSV.
    """

    def __init__(self, x_test, target_test=None, every: int | None = None, batch_size: int = 1000) -> None:
        self.x_test = x_test
        self.target_test = target_test
        self.every = every
        self.batch_size = batch_size
        self._last = None

    def evaluate(self, model) -> float:
        x = as_batch(self.x_test, model.in_features, model.backend, "x_test")
        target = x if self.target_test is None else as_batch(self.target_test, model.out_features, model.backend, "target_test")
        total = 0.0
        for start in range(0, x.shape[0], self.batch_size):
            stop = start + self.batch_size
            difference = model.inference(x[start:stop]) - target[start:stop]
            total += float((difference * difference).sum())
        return total / (x.shape[0] * x.shape[1])

    def _run(self, state: TrainingState) -> None:
        state.test_mse = self.evaluate(state.model)
        self._last = state.step
        state.history.test_mse.append((state.step, state.test_mse))

    def on_log(self, state: TrainingState) -> None:
        state.test_mse = None
        due = self.every and state.step % self.every == 0
        if due or state.step == state.total_steps:
            self._run(state)

    def on_train_end(self, state: TrainingState) -> None:
        if self._last != state.step:
            self._run(state)


class MetricsCSV(Callback):
    """Append one row per log step to a CSV file (flushed, so a crash loses nothing)."""

    COLUMNS = ("step", "epoch", "train_loss", "samples_per_s", "wall_time_s", "test_mse")

    def __init__(self, path, append: bool = False) -> None:
        self.path = Path(path)
        self.append = append
        self._file = None
        self._writer = None
        self._written_step = None

    def on_train_begin(self, state: TrainingState) -> None:
        exists = self.path.exists() and self.path.stat().st_size > 0
        self._file = open(self.path, "a" if self.append else "w", newline="")
        self._writer = csv.writer(self._file)
        if not (self.append and exists):
            self._writer.writerow(self.COLUMNS)

    def _row(self, state: TrainingState) -> None:
        test = "" if state.test_mse is None else f"{state.test_mse:.8g}"
        loss = "" if state.loss is None else f"{state.loss:.8g}"
        self._writer.writerow(
            [state.step, f"{state.epoch:.4f}", loss, f"{state.samples_per_s:.1f}", f"{state.wall_time:.3f}", test]
        )
        self._file.flush()
        self._written_step = state.step

    def on_log(self, state: TrainingState) -> None:
        self._row(state)

    def on_train_end(self, state: TrainingState) -> None:
        if self._file is None:
            return
        if state.test_mse is not None and self._written_step == state.step:
            pass  # the last row already has it
        elif state.test_mse is not None:
            self._row(state)
        self._file.close()
        self._file = None


class Checkpointer(Callback):
    """Save an atomic checkpoint every ``every`` steps (on log steps) and at the end.

    A checkpoint is written only when the last loss and every parameter are finite,
    so after a divergence the file on disk is the last good state.
    extra: a JSON-able dict stored in the header (e.g. the run's config)
    """

    def __init__(self, path, every: int | None = None, extra: dict | None = None) -> None:
        self.path = Path(path)
        self.every = every
        self.extra = extra or {}
        self.saved_step: int | None = None

    def _save(self, state: TrainingState) -> None:
        from nanoae.checkpoint import save_checkpoint  # noqa: PLC0415

        model = state.model
        if state.loss is not None and not math.isfinite(state.loss):
            return
        if not bool(model.backend.xp.isfinite(model.arena.values).all()):
            return
        save_checkpoint(self.path, model, sampler=state.sampler, extra=self.extra)
        self.saved_step = state.step

    def on_log(self, state: TrainingState) -> None:
        if self.every and state.step % self.every == 0 and not state.stop:
            self._save(state)

    def on_train_end(self, state: TrainingState) -> None:
        if self.saved_step != state.step and not state.stop:
            self._save(state)


class StopOnNonFinite(Callback):
    """End training at the first logged loss that is NaN or infinite."""

    def on_log(self, state: TrainingState) -> None:
        if not math.isfinite(state.loss):
            state.stop = True
            state.stop_reason = (
                f"training stopped at step {state.step}: the loss is {state.loss} "
                "(diverged; try a smaller learning rate)"
            )


def _same_rng_state(a, b) -> bool:
    """Equal ``bit_generator.state`` values (dicts that may hold arrays, as MT19937's do)."""
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and all(
            _same_rng_state(a[key], b[key]) for key in a
        )
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    return a == b


class _BlockStart:
    """Where the sampler stood before a block of indices was drawn, so that a run that
    stops (or fails) part-way through the block can put it where the steps taken leave it.

    Cheap enough to take every block: a shallow copy of the sampler (it rebinds its
    permutation at each reshuffle and never writes into it) and the generator's state.
    """

    def __init__(self, sampler, step: int) -> None:
        self.step = step
        self.sampler = copy.copy(sampler)
        self.rng_before = sampler._rng.bit_generator.state
        self.rng_after = None

    def drawn(self, sampler) -> None:
        self.rng_after = sampler._rng.bit_generator.state

    def rewind(self, sampler, taken: int) -> None:
        """Leave ``sampler`` as if it had handed out only ``taken`` batches of the block."""
        rng = sampler._rng
        if _same_rng_state(rng.bit_generator.state, self.rng_after):
            # Only the block's draws used the generator: give back the reshuffles of steps
            # not taken too, so continuing draws the very batches an unstopped run would.
            replay_rng = rng
        else:
            # Something else drew from it since (a VAE's noise, a denoiser's corruption):
            # leave it be, never hand out those numbers twice; replay on a copy.
            replay_rng = np.random.Generator(copy.deepcopy(rng.bit_generator))
        replay_rng.bit_generator.state = self.rng_before
        replay = self.sampler
        replay._rng = replay_rng
        for _ in range(taken):
            replay.next_indices()
        sampler.load_state_dict(replay.state_dict())


def train(
    model,
    x,
    target=None,
    *,
    steps: int | None = None,
    epochs: float | None = None,
    batch_size: int = 256,
    log_every: int = 1,
    callbacks=(),
    sampler=None,
) -> History:
    """Train ``model`` on mini-batches of ``x``; return the :class:`History`.

    x: (n, in_features); target: (n, out_features) or None (the model decides: an
    autoencoder reconstructs x). steps or epochs: how many more steps to take (epochs
    may be fractional: steps = ceil(epochs n / batch_size)); step numbers continue from
    ``model.step``, so a model restored from a checkpoint counts on from there.
    sampler: a :class:`~nanoae.data.BatchSampler` to continue (from a checkpoint);
    by default a new one shuffled by the model's generator.

    The loss is logged (and on_log called) at multiples of log_every and at the last
    step. When a callback stops training, or a step raises, part-way through a block
    of drawn indices, the sampler is put back to exactly the steps taken: its batches
    not trained are handed out again next time (``history.sampler``, which
    ``model.fit`` keeps, continues from the stop). Reshuffles drawn for the untaken
    steps are given back to the generator too, unless something else drew from it
    meanwhile; then it is left alone and later epochs get fresh shuffles.
    """
    from nanoae.data.batching import BatchSampler  # noqa: PLC0415

    model._require_training_parts()
    x = as_batch(x, model.in_features, model.backend, "x")
    target = model._target_for(x, target)
    batch_size = positive_int(batch_size, "batch_size")
    log_every = positive_int(log_every, "log_every")
    if batch_size > x.shape[0]:
        raise ValueError(f"batch_size {batch_size} is larger than the dataset ({x.shape[0]} rows)")
    if (steps is None) == (epochs is None):
        raise ValueError("pass exactly one of steps= or epochs=")
    if steps is None:
        if not (isinstance(epochs, (int, float)) and epochs > 0):
            raise ValueError(f"epochs must be a number > 0, got {epochs!r}")
        steps = math.ceil(epochs * x.shape[0] / batch_size)
    total_steps = model.step + positive_int(steps, "steps")
    if sampler is None:
        sampler = BatchSampler(x.shape[0], batch_size, model.rng)
    elif sampler.n != x.shape[0] or sampler.batch_size != batch_size:
        raise ValueError(
            f"the batch sampler was made for {sampler.n} rows in batches of {sampler.batch_size}, "
            f"but this run has {x.shape[0]} rows in batches of {batch_size}"
        )

    callbacks = [*callbacks]
    if not any(isinstance(callback, StopOnNonFinite) for callback in callbacks):
        callbacks.insert(0, StopOnNonFinite())
    history = History()
    history.sampler = sampler
    state = TrainingState(model, sampler, batch_size, total_steps, step=model.step, start_step=model.step, history=history)

    run_step = model.backend.ops.compile_train_step(model, x, None if target is x else target, {})
    start_time = time.perf_counter()
    last_log_time, last_log_step = start_time, model.step
    for callback in callbacks:
        callback.on_train_begin(state)
    rewindable = isinstance(sampler, BatchSampler)
    block_start, block_end = None, model.step
    try:
        while model.step < total_steps and not state.stop:
            # The row numbers of every step up to the next log step (MAX_INDEX_BLOCK steps
            # at most), sent to the device in one copy. Blocks end at every log step, so
            # there the sampler's state is exactly the trained state; a stop inside a
            # block is undone in the finally below.
            block_end = min(total_steps, (model.step // log_every + 1) * log_every, model.step + MAX_INDEX_BLOCK)
            block_start = _BlockStart(sampler, model.step) if rewindable else None
            block = np.stack([sampler.next_indices() for _ in range(block_end - model.step)])
            if block_start is not None:
                block_start.drawn(sampler)
            block = model.backend.asarray(block)
            for row in range(block.shape[0]):
                state.loss_array = run_step(block[row])
                state.step = model.step
                state.loss = None
                for callback in callbacks:
                    callback.on_step_end(state)
                if state.stop:
                    break
            if state.step % log_every and state.step != total_steps:
                continue  # a block cut at MAX_INDEX_BLOCK or by a stop: not a log step
            state.loss = float(state.loss_array)  # the one host sync per log step
            now = time.perf_counter()
            state.samples_per_s = (state.step - last_log_step) * batch_size / max(now - last_log_time, 1e-12)
            state.wall_time = now - start_time
            state.epoch = sampler.progress
            last_log_time, last_log_step = now, state.step
            history.append(state.loss)
            history.steps.append(state.step)
            for callback in callbacks:
                callback.on_log(state)
    finally:
        if block_start is not None and model.step < block_end:
            block_start.rewind(sampler, model.step - block_start.step)
        state.epoch = sampler.progress
        for callback in callbacks:
            callback.on_train_end(state)
    if state.stop:
        history.stopped = True
        history.stop_reason = state.stop_reason
        if any(isinstance(callback, StopOnNonFinite) for callback in callbacks) and "loss is" in state.stop_reason:
            warnings.warn(state.stop_reason, NonFiniteLossWarning, stacklevel=2)
    return history


def reconstruction_errors(model, x, batch_size: int = 1000) -> dict:
    """Test-set reconstruction MSE and BCE (outputs clipped to [1e-7, 1 - 1e-7]) as floats."""
    from nanoae.losses import BCE, MSE  # noqa: PLC0415

    x = as_batch(x, model.in_features, model.backend, "x")
    mse, bce = MSE().bind(model.backend), BCE().bind(model.backend)
    totals = {"mse": 0.0, "bce": 0.0}
    for start in range(0, x.shape[0], batch_size):
        chunk = x[start : start + batch_size]
        output = model.inference(chunk)  # images, not logits; a VAE's mean code, no noise
        totals["mse"] += float(mse(output, chunk)) * chunk.shape[0]
        totals["bce"] += float(bce(output, chunk)) * chunk.shape[0]
    return {name: value / x.shape[0] for name, value in totals.items()}


__all__ = [
    "Callback",
    "Checkpointer",
    "Evaluator",
    "History",
    "MetricsCSV",
    "NonFiniteLossWarning",
    "ProgressBar",
    "StopOnNonFinite",
    "TrainingState",
    "reconstruction_errors",
    "train",
]
