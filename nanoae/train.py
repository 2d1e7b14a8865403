"""The training loop: batches, logging, callbacks, a guard against NaN.

``train(model, x, ...)`` (and ``model.fit``, which calls it) runs::

    for each block of steps (up to the next log step, MAX_INDEX_BLOCK at most):
        snapshot = sampler.snapshot()
        draw the block's indices with sampler.next_indices()   # TF1 next_batch order
        for each step of the block:
            loss = model._train_step(x[indices], target[indices])
        at a log step (a multiple of log_every, or the last step):
            read the loss on the host, call on_log callbacks

The loss is read back to the host only on log steps, so a GPU is never made to wait
per step unless you log every step (the tutorial does). Each block's indices are
drawn at once, so inside a block (in ``on_step_end``) the sampler is already past the
step being trained. When a run stops (or a step raises) part-way through a block,
the sampler is put back to its snapshot and advanced by the steps actually taken;
since it owns its generator, that is exact, and a stopped run continues with the
batches an unstopped one gets.

The batch order: a new :class:`~nanoae.data.BatchSampler` is seeded with one integer
drawn from the model's generator, so the run's seed fixes it, yet the sampler's
stream is its own (that integer is hashed by a SeedSequence into a fresh PCG64): the
model's generator (a VAE's noise, a denoiser's corruption) and the sampler's are
independent streams, and drawing from one never moves the other.
The snapshot per block holds the current permutation without copying it (the sampler
never writes into one) and the generator's state: microseconds beside a training step.

Callbacks: see :mod:`nanoae.callbacks`. A :class:`~nanoae.callbacks.StopOnNonFinite`
always runs (first, unless the caller passed one).

Divergence: a step whose loss or gradient is NaN or infinite raises
:class:`~nanoae.errors.NonFiniteStepError` without being applied; the loop then stops
(``history.stopped``, ``stop_reason`` naming the step) and warns once with a
:class:`~nanoae.callbacks.NonFiniteLossWarning`. The model is left at the last step
applied, with finite parameters. (On a GPU's captured graph the step cannot be
checked before it is applied; StopOnNonFinite then stops the run at the next log step.)
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass

import numpy as np

from nanoae.callbacks import Evaluator, MetricsCSV, NonFiniteLossWarning, StopOnNonFinite
from nanoae.data.batching import BatchSampler
from nanoae.data.rows import ScaledRows
from nanoae.distributed import RankMismatchError, data_fingerprint
from nanoae.errors import NonFiniteStepError
from nanoae.ops.table import OpsTable
from nanoae.scaling import row_chunks
from nanoae.validation import as_batch, positive_int

__all__ = ["MAX_INDEX_BLOCK", "History", "TrainingState", "train"]

MAX_INDEX_BLOCK = 1024  # steps of batch indices sent to the device at once, at most
_SEED_BOUND = 2**63  # the sampler's seed is drawn from [0, 2**63)


@dataclass
class TrainingState:
    """What callbacks see. ``loss`` is a float on log steps and None otherwise;
    ``loss_array`` is the last step's loss as the step left it, on the device: on a GPU
    (and in data-parallel runs) a buffer the next step writes again, so read it
    (``float``) rather than keep it.

    step: ``model.steps_trained`` after the step just taken; start_step: where this
    run began; total_steps: where it ends; epoch: the sampler's progress in epochs;
    test_mse: set by an Evaluator on the log steps it evaluates, else None;
    aborted: True in ``on_train_end`` when an exception (Ctrl-C included) ended the run,
    which may have landed part-way through a step.
    diverged: True when a step found a NaN or infinite loss or gradient and was not
    applied (:class:`~nanoae.errors.NonFiniteStepError`); the run then stops with
    ``stop`` set and ``step`` at the last step applied.
    """

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
    aborted: bool = False
    diverged: bool = False
    start_step: int = 0
    history: "History" = None


class History(list):
    """The logged training losses (a list of floats), with their steps and the rest.

    steps:      the step number of each logged loss
    test_mse:   (step, value) pairs from an Evaluator
    stopped:    True when a callback ended training early, or a step diverged (its
                update not applied); stop_reason says why
    sampler:    the BatchSampler used (pass it back to continue the same order)
    """

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[int] = []
        self.test_mse: list[tuple[int, float]] = []
        self.stopped = False
        self.stop_reason = ""
        self.sampler = None


def _steps_to_take(x_rows: int, batch_size: int, steps, epochs) -> int:
    """steps, or ceil(epochs * rows / batch_size); exactly one of them is given."""
    if (steps is None) == (epochs is None):
        raise ValueError("pass exactly one of steps= or epochs=")
    if steps is None:
        if not (isinstance(epochs, (int, float)) and epochs > 0):
            raise ValueError(f"epochs must be a number > 0, got {epochs!r}")
        steps = math.ceil(epochs * x_rows / batch_size)
    return positive_int(steps, "steps")


def _sampler_for(model, rows: int, batch_size: int, sampler) -> BatchSampler:
    """The given sampler, checked against the data, or a new one seeded from model.rng."""
    if sampler is None:
        return BatchSampler(rows, batch_size, int(model.rng.integers(_SEED_BOUND)))
    if sampler.n != rows or sampler.batch_size != batch_size:
        raise ValueError(
            f"the batch sampler was made for {sampler.n} rows in batches of {sampler.batch_size}, "
            f"but this run has {rows} rows in batches of {batch_size}"
        )
    return sampler


def _with_nan_guard(callbacks) -> list:
    """The callbacks, with a StopOnNonFinite first unless one is there already.

    An Evaluator must come before a MetricsCSV: its test MSE is what that step's row
    records, so the other order would write each value on the next log step's row.
    """
    callbacks = [*callbacks]
    kinds = [type(callback) for callback in callbacks]
    evaluators = [i for i, kind in enumerate(kinds) if issubclass(kind, Evaluator)]
    metrics = [i for i, kind in enumerate(kinds) if issubclass(kind, MetricsCSV)]
    if evaluators and metrics and max(evaluators) > min(metrics):
        raise ValueError("put the Evaluator before the MetricsCSV in callbacks, so each test MSE lands on its own step's row")
    if not any(isinstance(callback, StopOnNonFinite) for callback in callbacks):
        callbacks.insert(0, StopOnNonFinite())
    return callbacks


class _LogClock:
    """Wall time since the start and samples/s since the previous log step."""

    def __init__(self, step: int) -> None:
        self.start = self.last_time = time.perf_counter()
        self.last_step = step

    def tick(self, state: TrainingState) -> None:
        now = time.perf_counter()
        steps = state.step - self.last_step
        state.samples_per_s = steps * state.batch_size / max(now - self.last_time, 1e-12)
        state.wall_time = now - self.start
        self.last_time, self.last_step = now, state.step


def _train_block(block, run_step, state: TrainingState, callbacks) -> None:
    """One training step per row of ``block`` (batch_size indices each), with
    on_step_end after each; ends early when a callback stops the run, or when a step
    diverges (that step was not applied: the run stops at the step before it)."""
    for row in range(block.shape[0]):
        try:
            state.loss_array = run_step(block[row])
        except NonFiniteStepError as exc:
            state.stop, state.diverged = True, True
            state.stop_reason = f"training stopped at step {exc.step - 1}: {exc}"
            return
        state.step = state.model.steps_trained
        state.loss = None
        for callback in callbacks:
            callback.on_step_end(state)
        if state.stop:
            return


def _log(state: TrainingState, clock: _LogClock, callbacks) -> None:
    """A log step: read the loss on the host (the one sync), record it, call on_log."""
    state.loss = float(state.loss_array)
    state.test_mse = None  # an Evaluator sets it when this step is one it evaluates
    clock.tick(state)
    state.epoch = state.sampler.progress
    state.history.append(state.loss)
    state.history.steps.append(state.step)
    for callback in callbacks:
        callback.on_log(state)


def _put_back(sampler, snapshot: dict, taken: int) -> None:
    """Leave ``sampler`` as if only ``taken`` batches were drawn since ``snapshot``."""
    sampler.load_state_dict(snapshot)
    for _ in range(taken):
        sampler.next_indices()


def _rows_to_train_on(model, source: ScaledRows, target):
    """(x, target) for a :class:`~nanoae.data.rows.ScaledRows`, checked once as an array
    would be (width, finite values, targets the loss can score), a chunk at a time.

    On NumPy in float32 the source itself is returned: the ops table gathers and scales
    each batch from it. On any other backend (a GPU, which needs the data on the device
    anyway; a float64 model) it is materialized once here and goes the array's way.
    """
    if target is not None:
        raise ValueError("a ScaledRows is an autoencoder's input and target at once: pass target=None")
    backend = model.backend
    if backend.name != "numpy" or np.dtype(backend.dtype) != np.float32:
        x = as_batch(source.materialize(), model.in_features, backend, "x")
        return x, model._training_target(x, None)
    if source.shape[1] != model.in_features:
        raise ValueError(f"x has {source.shape[1]} features per row but the model expects {model.in_features} (got shape {source.shape})")
    try:
        reconstructs = model._target_for(source, None) is source
    except ValueError:  # a model that needs a target of its own
        reconstructs = False
    if not reconstructs:
        raise ValueError(f"a ScaledRows trains a model that reconstructs its input; {type(model).__name__} needs a target array")
    # One pass over the scaled rows, a chunk at a time into one reused buffer: what
    # as_batch and the loss check on an array (a few times the array's check, once per run).
    bad, buffer = 0, None
    for part in row_chunks(len(source), source.shape[1]):
        if buffer is None or buffer.shape[0] != part.stop - part.start:
            buffer = np.empty((part.stop - part.start, source.shape[1]), dtype=np.float32)
        rows = source.gather(np.arange(part.start, part.stop), out=buffer)
        if not np.isfinite(rows).all():
            bad += rows.size - int(np.isfinite(rows).sum())
        elif not bad and model.loss is not None:
            model.loss.check_target(rows)
    if bad:
        raise ValueError(f"x contains {bad} NaN or infinite value(s); clean or impute them before training")
    return source, source


def _gradient_layers(model):
    """The arena's tensors grouped by the module whose backward writes their gradients.

    Returns (layers, owned): layers, [(start, stop)] in arena order, each a run of
    adjacent tensors of one module (the module with the longest name prefix); owned,
    id(module) -> the indices of the layers inside that module, for every module of the
    model (a Sequential owns its layers'; a module without parameters, none).
    """
    modules = list(model.modules())
    layout = model.arena.layout
    layers, owners = [], []
    for name in sorted(layout, key=lambda name: layout[name][0]):
        offset, shape = layout[name]
        stop = offset + int(np.prod(shape, dtype=np.int64))
        owner = max((module for module in modules if name.startswith(module._prefix)), key=lambda module: len(module._prefix))
        if owners and owners[-1] is owner:
            layers[-1] = (layers[-1][0], stop)
        else:
            layers.append((offset, stop))
            owners.append(owner)
    owned = {
        id(module): tuple(index for index, owner in enumerate(owners) if owner._prefix.startswith(module._prefix))
        for module in modules
    }
    return layers, owned


def _set_gradients_ready(model, ready) -> None:
    """Give every module of model the callback its backward calls once that module's
    layers have their final gradients (ready(module); None: no callback)."""
    for module in model.modules():
        module._gradients_ready = ready


@dataclass
class _Prepared:
    """train()'s arguments checked and the run's plan: x: (n, in_features) and target on
    the device (or a ScaledRows), the batch size, log interval, steps and sampler."""

    x: object
    target: object
    batch_size: int
    log_every: int
    steps_to_take: int
    sampler: BatchSampler


def _prepare(model, x, target, steps, epochs, batch_size, log_every, sampler, comm) -> _Prepared:
    """Every check of train()'s input that runs before the first step (each rank's own
    under comm: no message is sent here)."""
    model._require_training_parts()
    if isinstance(x, ScaledRows):
        x, target = _rows_to_train_on(model, x, target)
    else:
        x = as_batch(x, model.in_features, model.backend, "x")
        target = model._training_target(x, target)  # checked once here, never per step
    batch_size = positive_int(batch_size, "batch_size")
    log_every = positive_int(log_every, "log_every")
    if batch_size > x.shape[0]:
        raise ValueError(f"batch_size {batch_size} is larger than the dataset ({x.shape[0]} rows)")
    steps_to_take = _steps_to_take(x.shape[0], batch_size, steps, epochs)
    sampler = _sampler_for(model, x.shape[0], batch_size, sampler)
    if comm is not None:
        if not model.static_train_step:
            raise ValueError(
                f"{type(model).__name__} draws random noise each training step (a VAE's sample, a denoiser's "
                "corruption), which differs between one process and several: train it without comm="
            )
        if batch_size < comm.size:
            raise ValueError(f"batch_size {batch_size} is smaller than the {comm.size} ranks: pass batch_size >= {comm.size}")
    return _Prepared(x, target, batch_size, log_every, steps_to_take, sampler)


def _prepare_on_every_rank(model, comm, *arguments) -> _Prepared:
    """:func:`_prepare` on every rank, then one :meth:`~nanoae.distributed.Communicator.all_ok`
    before any other message: a check that fails on some ranks only (other data, another
    batch size) raises :class:`~nanoae.distributed.RankMismatchError` on every rank at
    once, naming the first failing rank and its message, instead of leaving the others
    to wait out the timeout in the next collective."""
    own_error = None
    try:
        prepared = _prepare(model, *arguments, comm)
    except Exception as exc:  # noqa: BLE001 - any failure here must reach the other ranks
        own_error = exc
    failed = comm.all_ok(None if own_error is None else " ".join(str(own_error).split()) or type(own_error).__name__)
    if failed is not None:
        rank, message = failed
        raise RankMismatchError(f"rank {rank} of {comm.size}: {message}") from own_error
    return prepared


def _data_parallel(model, comm, x, target, batch_size: int, steps_to_take: int, log_every: int, sampler):
    """Check that every rank runs the same job on the same data and give every rank
    rank 0's parameters and optimizer state; return this rank's shard of each batch (a
    slice), the model's gradient hook, its layers' gradients-ready callback (None
    unless comm buckets the allreduce) and ``release`` (frees the run's persistent
    requests; collective, so called on every rank at the same point).

    The job (model, dtype, data and target shapes and dtypes, batch size, steps, the
    sampler's state) is compared by its hash; the data's content by
    :func:`~nanoae.distributed.data_fingerprint` (its shape, dtype and 1024 rows spread
    evenly over it, first and last included: a memory-mapped file is not read whole),
    and the target's too where it is not the input.

    Every rank draws the same global batch (its sampler seeded alike), trains on its
    contiguous shard of it, and the hook combines the shards' gradients (and losses),
    weighted by shard size / batch size, before the update. With buckets, the callback
    starts each bucket's allreduce once the backward pass has finished its layers, and
    the hook waits for them all.
    """
    state = sampler.snapshot()
    sampler_state = hashlib.sha256(np.ascontiguousarray(state["permutation"]).tobytes() + repr(state).encode()).hexdigest()
    separate_target = target is not None and target is not x
    job = json.dumps(
        {
            "model": model.config(),
            "backend": model.backend.name,
            "dtype": str(np.dtype(model.backend.dtype)),
            "data_shape": list(x.shape),
            "data_dtype": str(np.dtype(x.dtype)),
            "target": [list(target.shape), str(np.dtype(target.dtype))] if separate_target else None,
            "batch_size": batch_size,
            "steps": steps_to_take,
            "steps_trained": model.steps_trained,
            "log_every": log_every,
            "sampler": sampler_state,
            "bucket_bytes": getattr(comm, "bucket_bytes", None),
        },
        sort_keys=True,
        default=str,
    )
    comm.agree(job, "configuration (model, seed, data shape, batch size or steps)")
    data = data_fingerprint(x) + (" " + data_fingerprint(target) if separate_target else "")
    comm.agree(data, "data set (same shape and dtype, other values: another file, row order or scaling)")
    comm.broadcast_parameters(model.arena)
    comm.broadcast_optimizer_state(model.optimizer)
    start, stop = comm.shard(batch_size)
    weight = (stop - start) / batch_size
    backend = model.backend
    buckets = owned = None
    if getattr(comm, "bucket_bytes", None) is not None:
        layers, owned = _gradient_layers(model)
        buckets = comm.gradient_buckets(model.arena, layers, weight)  # None for arrays on a GPU
    loss_out = backend.zeros(())  # the global loss, one buffer for every step

    def combine(objective):
        step = model.steps_trained + 1  # the step being trained, for a timeout's message
        if buckets is None:
            comm.allreduce_gradients(model.arena, weight, step)
        else:
            buckets.wait(step)
        # A second, 8-byte allreduce (see nanoae.distributed): the logged loss is the global batch's.
        loss_out[...] = comm.weighted_sum(objective, weight, step)
        return loss_out

    def ready(module):
        buckets.layers_ready(owned.get(id(module), ()))

    return slice(start, stop), combine, None if buckets is None else ready, comm.free


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
    comm=None,
) -> History:
    """Train ``model`` on mini-batches of ``x``; return the :class:`History`.

    x: (n, in_features), an array or a :class:`~nanoae.data.rows.ScaledRows` (rows read
    and scaled a batch at a time, e.g. from a memory-mapped file: the same batches,
    bit for bit, as its materialized array; autoencoders only); target: (n,
    out_features) or None (the model decides: an autoencoder reconstructs x). steps or epochs: how many more steps to take (epochs
    may be fractional: steps = ceil(epochs n / batch_size)); step numbers continue from
    ``model.steps_trained``, so a model restored from a checkpoint counts on from there.
    sampler: a :class:`~nanoae.data.BatchSampler` to continue (from a checkpoint, or
    ``history.sampler``); by default a new one seeded by one draw from the model's
    generator.

    The loss is logged (and on_log called) at multiples of log_every and at the last
    step. When a callback stops training, or a step raises, the sampler is left
    exactly where the steps taken leave it, so continuing with it trains on the
    batches an unstopped run would have had.

    comm: a :class:`~nanoae.distributed.Communicator` to train data-parallel, one
    process per rank, each started with the same arguments and seed: every rank
    draws the same global batch of batch_size rows, trains on its contiguous shard
    (sizes differ by at most one), and one allreduce of the gradient arena, each
    shard weighted by its share of the batch, gives every rank the global batch's
    gradient before the update, so N ranks take the steps one process would (equal
    up to rounding). A comm made with ``bucket_bytes`` splits that allreduce into
    buckets of whole layers, each started as soon as the backward pass has finished
    them (the same sums). The logged loss is the global batch's: a second, 8-byte
    allreduce per step sums the shards' weighted losses (one more allreduce latency per
    step). Models that draw noise each step (VAE, denoising) are refused. Callbacks run
    on every rank: give callbacks that write (MetricsCSV, Checkpointer, ProgressBar) on
    rank 0 only; one that stops the run must stop it on every rank.

    Before the first step the ranks agree on their input checks (a check that fails on
    any rank raises :class:`~nanoae.distributed.RankMismatchError` on every rank,
    naming that rank and its message), compare their job and a fingerprint of their
    data (see :func:`_data_parallel`; RankMismatchError on every rank where they
    differ), and take rank 0's parameters and optimizer state. Every exchange waits at
    most ``comm.timeout`` seconds, then ends the whole job. A run that ends without an
    exception frees comm's persistent requests on every rank (see
    :meth:`~nanoae.distributed.Communicator.free`).
    """
    arguments = (x, target, steps, epochs, batch_size, log_every, sampler)
    prepared = _prepare(model, *arguments, None) if comm is None else _prepare_on_every_rank(model, comm, *arguments)
    x, target, batch_size, log_every = prepared.x, prepared.target, prepared.batch_size, prepared.log_every
    steps_to_take, sampler = prepared.steps_to_take, prepared.sampler
    total_steps = model.steps_trained + steps_to_take
    shard = hook = ready = release = None
    if comm is not None:
        shard, hook, ready, release = _data_parallel(model, comm, x, target, batch_size, steps_to_take, log_every, sampler)
    callbacks = _with_nan_guard(callbacks)
    history = History()
    history.sampler = sampler
    start = model.steps_trained
    state = TrainingState(model, sampler, batch_size, total_steps, step=start, start_step=start, history=history)

    ops = model.backend.ops
    # Data-parallel steps call MPI between backward and the update, which a recorded
    # (CUDA graph) step could not: they take the table's plain, per-call step.
    compile_step = ops.compile_train_step if comm is None else OpsTable.compile_train_step.__get__(ops)
    run_step = compile_step(model, x, None if target is x else target, {})
    clock = _LogClock(start)
    for callback in callbacks:
        callback.on_train_begin(state)
    snapshot, block_start, block_end = None, start, start
    model._gradient_hook = hook
    if ready is not None:
        _set_gradients_ready(model, ready)
    try:
        while model.steps_trained < total_steps and not state.stop:
            # The row numbers of every step up to the next log step (MAX_INDEX_BLOCK steps
            # at most), sent to the device in one copy. Blocks end at every log step, so
            # there the sampler stands exactly at the steps trained. One assignment, so
            # an interrupt never leaves a snapshot of one block beside another's bounds.
            snapshot, block_start, block_end = (
                sampler.snapshot(),
                model.steps_trained,
                min(total_steps, (model.steps_trained // log_every + 1) * log_every, model.steps_trained + MAX_INDEX_BLOCK),
            )
            block = np.stack([sampler.next_indices() for _ in range(block_end - block_start)])
            if shard is not None:
                block = np.ascontiguousarray(block[:, shard])  # this rank's rows of each global batch
            _train_block(model.backend.asarray(block), run_step, state, callbacks)
            if state.diverged:
                break  # the step before the bad one was logged if it was a log step
            if state.step % log_every == 0 or state.step == total_steps:
                _log(state, clock, callbacks)  # not at a block cut at MAX_INDEX_BLOCK or by a stop
    except BaseException:
        state.aborted = True  # callbacks see it in on_train_end; the exception goes on
        raise
    finally:
        model._gradient_hook = None
        if ready is not None:
            _set_gradients_ready(model, None)
        if release is not None and not state.aborted:
            # Every rank ends a run that did not raise at the same step (a stop or a
            # divergence is seen alike on every rank), so freeing there is collective.
            # After an exception a rank may be mid-collective (Ctrl-C in a wait leaves a
            # request active) or out of step with the others: its requests are kept,
            # and freed when the communicator is dropped or at exit.
            release()
        if snapshot is not None and model.steps_trained < block_end:
            _put_back(sampler, snapshot, model.steps_trained - block_start)
        state.epoch = sampler.progress
        for callback in callbacks:
            callback.on_train_end(state)
    if state.stop:
        history.stopped = True
        history.stop_reason = state.stop_reason
        if state.diverged or any(isinstance(callback, StopOnNonFinite) and callback.stopped for callback in callbacks):
            warnings.warn(state.stop_reason, NonFiniteLossWarning, stacklevel=2)
    return history
