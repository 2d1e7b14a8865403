"""Callbacks: objects the training loop calls at fixed points of a run.

A callback has any of ``on_train_begin(state)``, ``on_step_end(state)``,
``on_log(state)`` and ``on_train_end(state)``, where ``state`` is the loop's
:class:`~nanoae.train.TrainingState`; it may set ``state.stop`` (with a
``state.stop_reason``) to end training early. Built in:

* :class:`ProgressBar`     tqdm when installed, else one plain line per log step
* :class:`MetricsCSV`      step, epoch, train loss, samples/s, wall time, test MSE
* :class:`Evaluator`       test reconstruction MSE every N steps and at the end
* :class:`Checkpointer`    an atomic checkpoint every N steps and at the end, only of
                           finite parameters, so the last one is always good
* :class:`StopOnNonFinite` ends training when a logged loss is NaN or infinite (the
                           loop always runs one)

A step whose loss or gradient is NaN or infinite is normally caught before this guard
sees it: the model does not apply it and raises
:class:`~nanoae.errors.NonFiniteStepError`, on which the loop stops. StopOnNonFinite
catches what that check cannot (a GPU's captured graph, which is not checked per step).
"""

from __future__ import annotations

import csv
import math
import os
import sys
from pathlib import Path

from nanoae.atomic import write_atomically
from nanoae.checkpoint import save_checkpoint
from nanoae.evaluation import reconstruction_mse

__all__ = [
    "Callback",
    "Checkpointer",
    "Evaluator",
    "MetricsCSV",
    "NonFiniteLossWarning",
    "ProgressBar",
    "StopOnNonFinite",
]


class NonFiniteLossWarning(RuntimeWarning):
    """Training stopped because the loss (or a gradient) became NaN or infinite."""


class Callback:
    """Base class with no-op hooks."""

    def on_train_begin(self, state) -> None:
        pass

    def on_step_end(self, state) -> None:
        pass

    def on_log(self, state) -> None:
        pass

    def on_train_end(self, state) -> None:
        pass


def _format_duration(seconds: float) -> str:
    """h:mm:ss, or "?" for an unknown (non-finite) duration."""
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

    def on_train_begin(self, state) -> None:
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

    def on_log(self, state) -> None:
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

    def on_train_end(self, state) -> None:
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
        return reconstruction_mse(model, self.x_test, self.target_test, self.batch_size)

    def _run(self, state) -> None:
        state.test_mse = self.evaluate(state.model)
        self._last = state.step
        state.history.test_mse.append((state.step, state.test_mse))

    def on_log(self, state) -> None:
        due = self.every and state.step % self.every == 0
        if due or state.step == state.total_steps:
            self._run(state)

    def on_train_end(self, state) -> None:
        if self._last != state.step:
            self._run(state)


class MetricsCSV(Callback):
    """One row per log step in a CSV file: step, epoch, train loss, samples/s, wall time, test MSE.

    How the file stays whole. At the start of a run the file is replaced atomically
    (through :mod:`nanoae.atomic`) by its header and the rows it keeps; after that each
    row is appended as one whole line and flushed (one ``write``), so a killed process
    leaves every flushed row on disk and at worst a torn last line after a power loss.
    Every ``sync_every`` steps (a run's checkpoint interval) and at the end the file is
    also ``fsync``-ed, so the rows up to a checkpoint are on disk before it is written.
    An atomic rewrite per row would cost a file per log step; appending costs one line.

    path:        the CSV file
    append:      keep the complete rows already in the file (a torn last line is dropped)
    resume_step: continuing a run from a checkpoint of this step: keep only the rows
                 through it, so each step is in the file once (rows a killed run logged
                 after its last checkpoint are dropped; the resumed run logs them again)
    history:     the metrics file those kept rows come from (default: ``path``); a
                 resumed run written to another directory starts from its source's rows
    sync_every:  fsync every this many steps (None: only at the end)
    """

    COLUMNS = ("step", "epoch", "train_loss", "samples_per_s", "wall_time_s", "test_mse")

    def __init__(self, path, append: bool = False, resume_step: int | None = None, history=None, sync_every: int | None = None) -> None:
        self.path = Path(path)
        self.append = append
        self.resume_step = resume_step
        self.history = Path(history) if history is not None else self.path
        self.sync_every = sync_every
        self._file = None
        self._writer = None
        self._written_step = None

    def _kept_lines(self) -> list[str]:
        """The complete rows of the history file that this run keeps, as text lines."""
        if not (self.append or self.resume_step is not None) or not self.history.is_file():
            return []
        text = self.history.read_text(encoding="utf-8", errors="replace")
        lines = text.split("\n")
        lines.pop()  # after the last newline: empty, or a line torn by a crash
        kept = []
        for line in lines[1:]:  # the header is written anew
            fields = next(csv.reader([line]), [])
            if len(fields) != len(self.COLUMNS):
                continue
            try:
                step = int(fields[0])
            except ValueError:
                continue
            if self.resume_step is None or step <= self.resume_step:
                kept.append(line.rstrip("\r") + "\r\n")
        return kept

    def on_train_begin(self, state) -> None:
        header = ",".join(self.COLUMNS) + "\r\n"  # what csv.writer writes
        content = (header + "".join(self._kept_lines())).encode("utf-8")
        write_atomically(self.path, lambda handle: handle.write(content))
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)

    def _row(self, state) -> None:
        test = "" if state.test_mse is None else f"{state.test_mse:.8g}"
        loss = "" if state.loss is None else f"{state.loss:.8g}"
        self._writer.writerow(
            [state.step, f"{state.epoch:.4f}", loss, f"{state.samples_per_s:.1f}", f"{state.wall_time:.3f}", test]
        )
        self._file.flush()
        if self.sync_every and state.step % self.sync_every == 0:
            os.fsync(self._file.fileno())
        self._written_step = state.step

    def on_log(self, state) -> None:
        self._row(state)

    def on_train_end(self, state) -> None:
        if self._file is None:
            return
        if state.test_mse is not None and self._written_step != state.step:
            self._row(state)  # the final evaluation came after the last log row
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None


class Checkpointer(Callback):
    """Save an atomic checkpoint every ``every`` steps (on log steps) and at the end.

    A checkpoint is written only when the last loss and every parameter are finite,
    so after a divergence the file on disk is the last good state. The batch
    sampler is saved with the model, so a resumed run gets the batches an unstopped
    one would.
    extra: a JSON-able dict stored in the header (e.g. the run's config)
    """

    def __init__(self, path, every: int | None = None, extra: dict | None = None) -> None:
        self.path = Path(path)
        self.every = every
        self.extra = extra or {}
        self.saved_step: int | None = None

    def _save(self, state) -> None:
        model = state.model
        if state.loss is not None and not math.isfinite(state.loss):
            return
        if not bool(model.backend.xp.isfinite(model.arena.values).all()):
            return
        save_checkpoint(self.path, model, sampler=state.sampler, extra=self.extra)
        self.saved_step = state.step

    def on_log(self, state) -> None:
        if self.every and state.step % self.every == 0 and not state.stop:
            self._save(state)

    def on_train_end(self, state) -> None:
        # Not after an exception: it may have struck between an update and the step
        # count, and the checkpoint from the last log step stays the good one.
        if self.saved_step != state.step and not state.stop and not state.aborted:
            self._save(state)


class StopOnNonFinite(Callback):
    """End training at the first logged loss that is NaN or infinite.

    stopped: True once it has ended a run (the loop then warns once, with a
    :class:`NonFiniteLossWarning`).
    """

    def __init__(self) -> None:
        self.stopped = False

    def on_train_begin(self, state) -> None:
        self.stopped = False

    def on_log(self, state) -> None:
        if not math.isfinite(state.loss):
            self.stopped = True
            state.stop = True
            state.stop_reason = (
                f"training stopped at step {state.step}: the loss is {state.loss} "
                "(diverged; try a smaller learning rate)"
            )
