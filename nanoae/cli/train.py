"""nanoae train: resume checks, run directory, data, model, callbacks, the run, its report.

Every check (options, run directory, data, model, step count) comes before anything is
written; each step is one helper of :func:`command_train`.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanoae.atomic import write_json_atomically
from nanoae.callbacks import Checkpointer, Evaluator, MetricsCSV, NonFiniteLossWarning, ProgressBar
from nanoae.checkpoint import Checkpoint, CheckpointError, load_checkpoint, restore_sampler
from nanoae.cli.common import (
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CLIError,
    as_user_error,
    make_optimizer,
    preset_default,
    require_autoencoder,
    require_width,
    data_dir_used,
    flag,
    saved_config,
    say,
)
from nanoae.cli.figures import draw_figures
from nanoae.cli.parallel import (
    StopRank,
    agree_on_the_run,
    checked_on_every_rank,
    is_leader,
    job_communicator,
    job_text,
    require_data_parallel,
    run_or_abort,
)
from nanoae.cli.data import (
    DEFAULT_VAL_FRACTION,
    OWN_DEFAULT_LAYERS,
    TrainingData,
    mnist_training_data,
    own_training_data,
    reconstruction_report,
    recorded_own_file,
    uses_own_data,
)
from nanoae.data import BatchSampler
from nanoae.models import Model
from nanoae.plot import PlotUnavailable
from nanoae.presets import TUTORIAL_TRAINING, autoencoder_from_widths, get_preset
from nanoae.rundir import RUN_FILES, RUN_MARKER, RunDirectory, plan_run_directory, prepare_run_directory, read_run_config
from nanoae.train import train
from nanoae.version import __version__


# ---- nanoae train -------------------------------------------------------------------
# The defaults of the options a resumed run takes from its checkpoint instead; argparse
# leaves them None so that a flag the user gave can be told from one left out.
TRAIN_DEFAULTS = {
    "preset": "tutorial", "dataset": "mnist", "seed": 0, "dtype": "float32", "log_every": 1, "eval_every": 100, "checkpoint_every": 100,
}  # fmt: skip
# What the checkpoint defines: on --resume each may only be repeated with the run's value.
# (--key and --label-column describe the file read: cli.data checks them against the run
# when it resumes on its recorded file, by what they read, a column by number or name alike.)
_RUN_DEFINING = (
    "preset", "dataset", "seed", "batch_size", "optimizer", "output_activation", "code_size",
    "layers", "activation", "scale", "val_fraction", "dtype",
)  # fmt: skip
# Where the run's own value is known only if it recorded it (a config.json written by nanoae train).
_MODEL_DEFINING = ("preset", "optimizer", "output_activation", "layers", "activation")
# The options that only mean something for the user's own data files.
_OWN_DATA_ONLY = ("key", "label_column", "scale", "val_fraction")
# What a resumed run keeps from its config unless given again.
_RUN_SETTINGS = ("log_every", "eval_every", "checkpoint_every")
_MAY_CHANGE_ON_RESUME = "--steps/--epochs, --lr, --log-every, --eval-every, --checkpoint-every, --quiet, --backend, --data, --out"


def _refuse_changed_options(args, resumed, saved: dict) -> None:
    """Take each run-defining option the command line leaves out from the run; refuse,
    naming each, the ones given with another value than the run's."""
    recorded = dict(saved)
    if recorded.get("code_size") is None and hasattr(resumed.model, "code_size"):
        recorded["code_size"] = resumed.model.code_size  # the checkpoint's model says it
    recorded["dtype"] = np.dtype(resumed.model.backend.dtype).name  # the checkpoint's arrays are the run's dtype
    differing = []
    for key in _RUN_DEFINING:
        given, known = getattr(args, key), recorded.get(key)
        if given is None:
            if known is not None:
                setattr(args, key, known)
        elif known is not None and given != known:
            differing.append(f"{flag(key)} {given} (the run's: {known})")
        elif known is None and key in _MODEL_DEFINING:
            differing.append(f"{flag(key)} {given} (the checkpoint does not record one; its model and optimizer are used)")
    if differing:
        raise CLIError(
            f"--resume {args.resume}: the checkpoint defines the model, the optimizer and the dataset, and these "
            f"options differ from the run: {'; '.join(differing)}. Leave them out (on resume only "
            f"{_MAY_CHANGE_ON_RESUME} may change), or start a new run with another --out"
        )


def _load_resume_checkpoint(args):
    """The checkpoint named by --resume (None without it); options the command line
    leaves out are taken from the run's saved config, and a run-defining option given
    with another value is refused."""
    if not args.resume:
        return None
    path = Path(args.resume)
    if not path.is_file():
        raise CLIError(f"--resume {path}: no such checkpoint file")
    resumed = load_checkpoint(path, backend=args.backend)
    require_autoencoder(resumed, path, "nanoae train resumes autoencoder runs (a classifier's run: nanoae classify)")
    saved = saved_config(resumed)
    _refuse_changed_options(args, resumed, saved)
    for key in _RUN_SETTINGS:
        if getattr(args, key) is None and isinstance(saved.get(key), int):
            setattr(args, key, saved[key])
    return resumed


def _is_own_data_run(args, saved: dict) -> bool:
    """Own data: --data names a file (or an image folder), or a resumed run recorded one."""
    if saved.get("dataset") is not None or (args.dataset is not None and args.data is not None and Path(args.data).is_dir()):
        return False  # a built-in dataset's run: --data is its directory
    if args.data is not None:
        return uses_own_data(args.data)
    return saved.get("data_path") is not None


def _refuse_other_kind_of_data(args, own: bool, saved: dict) -> None:
    """A resumed run continues on data of its own kind: an own-data run on a file of its
    width, a built-in dataset's run on that dataset."""
    if saved.get("data_path") is not None and not own:
        raise CLIError(
            f"--resume {args.resume}: this run trained on your own data ({saved['data_path']}, {saved.get('features')} "
            f"features per row), but --data {args.data} is a built-in dataset's folder; --data must be a file of that "
            "width (or leave it out for the run's file)"
        )
    if saved.get("dataset") is not None and args.data is not None and not Path(args.data).is_dir() and uses_own_data(args.data):
        raise CLIError(
            f"--resume {args.resume}: this run trained on {saved['dataset']}, so --data must be the folder holding its "
            f"files, but {args.data} is your own data; train a new run on it (without --resume)"
        )


def _check_model_and_data_options(args, own: bool, resuming: bool, saved: dict | None = None) -> None:
    """Refuse the combinations that say two things at once, before anything is read (a
    resumed run's model options come from the run, checked against it already)."""
    if resuming:
        _refuse_other_kind_of_data(args, own, saved or {})
    if own and args.dataset is not None:
        raise CLIError(f"--dataset {args.dataset} names a built-in dataset, but --data {args.data} is your own data; leave --dataset out")
    given = [flag(key) for key in _OWN_DATA_ONLY if getattr(args, key) is not None]
    if not own and given:
        verb = "applies" if len(given) == 1 else "apply"
        raise CLIError(f"{', '.join(given)} {verb} to your own data files (--data FILE); the built-in datasets need none of them")
    if resuming:
        return
    if own and args.code_size is not None and args.layers is None and args.preset is None:
        raise CLIError(
            f"--code-size is for the presets; own data trains an autoencoder of --layers (default "
            f"{','.join(map(str, OWN_DEFAULT_LAYERS))}), whose last width is the code: give e.g. --layers 128,{args.code_size}"
        )
    if args.layers is not None and args.preset is not None:
        raise CLIError(f"--preset {args.preset} and --layers both define the model; give one (--layers builds a plain autoencoder of those widths)")
    if args.layers is not None and args.code_size is not None:
        raise CLIError("--code-size is for the presets; with --layers the code is the last width (e.g. --layers 128,32 codes 32 wide)")
    if args.activation is not None and args.layers is None and (args.preset is not None or not own):
        raise CLIError(f"--activation goes with --layers; the {args.preset or 'tutorial'} preset fixes its own activations")


def _apply_train_defaults(args, resumed, own: bool) -> None:
    """The defaults of the options still unset (a resumed run without a recorded
    preset keeps none: the checkpoint's model is not a preset's). A model given by
    --layers, or own data, takes no preset: own data gets the default layers."""
    for key, value in TRAIN_DEFAULTS.items():
        if key == "preset" and (resumed is not None or own or args.layers is not None or args.activation is not None):
            continue
        if key == "dataset" and own:
            continue
        if getattr(args, key) is None:
            setattr(args, key, value)
    if own:
        args.scale = args.scale or "auto"
        args.val_fraction = DEFAULT_VAL_FRACTION if args.val_fraction is None else args.val_fraction
    if resumed is None and args.preset is None and args.layers is None:
        args.layers = list(OWN_DEFAULT_LAYERS)


def _run_directory(args) -> Path:
    if args.out:
        return Path(args.out)
    if args.resume:
        return Path(args.resume).parent
    return Path("runs") / f"{args.preset or 'autoencoder'}-{time.strftime('%Y%m%d-%H%M%S')}"


def _same_directory(first: Path, second: Path) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        return first.resolve() == second.resolve()


def _plan_out_dir(args):
    """The checked run directory (nothing written): see :mod:`nanoae.rundir`."""
    out_dir = _run_directory(args)
    continuing = bool(args.resume) and _same_directory(out_dir, Path(args.resume).parent)
    hint = f"continue it with --resume {out_dir / 'checkpoint.npz'}, "
    return plan_run_directory(out_dir, overwrite=args.overwrite, continuing=continuing, resume_hint=hint)


def _metrics_history(args, plan) -> Path | None:
    """The metrics file whose rows a resumed run written elsewhere starts from: its
    source run's, when that directory is a nanoae run."""
    if not args.resume:
        return None
    source = Path(args.resume).parent
    if plan.path.exists() and _same_directory(plan.path, source):
        return None
    return source / "metrics.csv" if read_run_config(source) is not None else None


def _model_from_widths(args, data):
    """--layers: a plain autoencoder of those widths on the data's width; Adam(0.001)
    unless --optimizer/--lr say otherwise (it needs no tuning of its step to the scale
    of the data, which standardized own data makes larger than MNIST's [0, 1])."""
    args.activation = args.activation or "relu"
    args.output_activation = args.output_activation or ("sigmoid" if data.output_range == "unit" else "identity")
    args.optimizer = args.optimizer or "adam"
    optimizer = make_optimizer(args.optimizer, args.lr or 0.001)
    width = data.train.shape[1]
    return as_user_error(
        autoencoder_from_widths, width, args.layers, args.activation, args.output_activation,
        seed=args.seed, backend=args.backend, optimizer=optimizer, dtype=args.dtype,
    )  # fmt: skip


def _new_model(args, data):
    """The preset's model (or --layers'), with the command line's output activation,
    code size, optimizer and learning rate."""
    if args.layers is not None:
        return _model_from_widths(args, data)
    options = {"seed": args.seed, "backend": args.backend, "dtype": args.dtype}
    if args.output_activation:
        options["output_activation"] = args.output_activation
    if args.code_size:
        if preset_default(args.preset, "code_size", None) is None:
            raise CLIError(f"--code-size does not apply to the {args.preset} preset (its code is fixed at 128)")
        options["code_size"] = args.code_size
    model = as_user_error(get_preset(args.preset), **options)
    if model.in_features != data.train.shape[1]:
        raise CLIError(
            f"--preset {args.preset} is built for 784-wide MNIST images; this data has {data.train.shape[1]} features per row: "
            "give --layers W1,W2,... (e.g. --layers 128,32) instead"
        )
    if args.optimizer or args.lr:
        model.optimizer = make_optimizer(args.optimizer or "rmsprop", args.lr or model.optimizer.lr).bind(model.arena)
    return model


def _model_and_sampler(args, resumed, data, batch_size: int):
    """(model, sampler): restored from --resume, or a new model and no sampler yet."""
    images = data.train
    if resumed is None:
        return _new_model(args, data), None
    require_width(resumed.model.in_features, args.resume, images.shape[1], dataset=args.dataset or "the data")
    rows = len(images)
    sampler = restore_sampler(resumed)  # None when the checkpoint holds no sampler
    if sampler is not None and (sampler.n, sampler.batch_size) != (rows, batch_size):
        raise CLIError(
            f"--resume {args.resume}: the run drew batches of {sampler.batch_size} from {sampler.n} rows; "
            f"this one would draw {batch_size} from {rows}. Resume with --batch-size {sampler.batch_size} "
            "on the run's data"
        )
    return resumed.model, sampler


def _override_lr(args, model, resumed, saved: dict) -> list:
    """A resumed run's --lr replaces the checkpoint's learning rate; returns the run's
    list of such overrides (step, lr, previous lr), this one appended."""
    overrides = list(saved.get("lr_overrides") or [])
    if resumed is not None and args.lr is not None and args.lr != model.optimizer.lr:
        overrides.append({"step": model.steps_trained, "lr": args.lr, "previous": model.optimizer.lr})
        model.optimizer.lr = args.lr
    return overrides


def _train_config(args, model, data, total_steps: int, batch_size: int, data_dir, lr_overrides: list, ranks: int) -> dict:
    """The run's config.json (also stored in every checkpoint's extra). ``nanoae_run``
    and ``files`` mark the run's own files (see :mod:`nanoae.rundir`); ``ranks``: the
    processes that train it data-parallel (1: one process)."""
    fallback_activation = None if args.preset is None else "relu"
    return {
        RUN_MARKER: 1,
        "files": list(RUN_FILES),
        "preset": args.preset,
        "steps": total_steps,
        "batch_size": batch_size,
        "lr": model.optimizer.lr,
        "lr_overrides": lr_overrides,
        "optimizer": args.optimizer or (None if args.resume else "rmsprop"),
        "optimizer_config": model.optimizer.config(),
        "output_activation": args.output_activation or preset_default(args.preset, "output_activation", fallback_activation),
        "code_size": getattr(model, "code_size", None),
        "layers": args.layers,
        "activation": args.activation,
        "seed": args.seed,
        "data_source": data.source,
        "data_dir": data_dir,
        **data.record,
        "backend": model.backend.name,
        "dtype": np.dtype(model.backend.dtype).name,
        "ranks": ranks,
        "ops": repr(model.backend),
        "log_every": args.log_every,
        "eval_every": args.eval_every,
        "checkpoint_every": args.checkpoint_every,
        "model": model.config(),
        "nanoae_version": __version__,
        "resumed_from": str(args.resume) if args.resume else None,
        "command": "nanoae " + " ".join(sys.argv[1:]),
    }


def _train_callbacks(args, test_images, out_dir: Path, config: dict, resume_step, history) -> list:
    """Evaluator first (its MSE, test or validation, lands in the metrics row's test_mse),
    then progress, metrics, checkpoints. No held-out rows: no Evaluator."""
    callbacks = [] if test_images is None else [Evaluator(test_images, every=args.eval_every or None)]
    if not args.quiet:
        callbacks.append(ProgressBar())
    metrics = MetricsCSV(out_dir / "metrics.csv", resume_step=resume_step, history=history, sync_every=args.checkpoint_every or None)
    return callbacks + [metrics, Checkpointer(out_dir / "checkpoint.npz", every=args.checkpoint_every or None, extra={"config": config})]


def run_training(model, images, steps: int, batch_size: int, args, callbacks, sampler, comm=None):
    """train(...), with a diverging run reported once by the caller, not as numpy or
    warnings noise; data-parallel with ``comm`` (a Communicator of more than one rank)."""
    with np.errstate(over="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteLossWarning)
        return train(
            model, images, steps=steps, batch_size=batch_size, log_every=args.log_every, callbacks=callbacks, sampler=sampler, comm=comm
        )


def _report_run(model, history, data, out_dir: Path, preset: str) -> None:
    """Test (or validation) errors, figures (when matplotlib is there) and the summary lines."""
    figures = []
    try:
        figures = draw_figures(model, data.figure_rows, out_dir, out_dir / "metrics.csv", title=f"nanoae {preset}, step {model.steps_trained}")
    except PlotUnavailable as exc:
        say(f"no figures: {exc}")
    final_loss = f"{history[-1]:.6f}" if history else "n/a"
    if data.evaluation is None:
        measured = "no rows held out"
    else:  # figure_rows are the held-out rows (the test set), in the model's units
        errors = reconstruction_report(model, data.figure_rows)
        measured = f"{data.eval_name} reconstruction MSE {errors['mse']:.6f}" + (f", BCE {errors['bce']:.6f}" if "bce" in errors else "")
    print(f"step {model.steps_trained}: final training loss {final_loss}, {measured}")
    print(f"run directory: {out_dir}  (config.json, metrics.csv, checkpoint.npz{''.join(', ' + p.name for p in figures)})")


def _train_data(args, recorded: dict, own: bool):
    """(the TrainingData, the batch size): --batch-size, else 256 (own data: at most
    its training rows), checked against the rows there are."""
    if own:
        data = own_training_data(args, recorded, args.data or recorded_own_file(recorded))
    else:
        data = mnist_training_data(args, recorded)
    rows = len(data.train)
    batch_size = args.batch_size or (min(TUTORIAL_TRAINING["batch_size"], rows) if own else TUTORIAL_TRAINING["batch_size"])
    if batch_size > rows:
        what = "your data has only {} training rows" if own else f"the {args.dataset} training set has only {{}} images"
        raise CLIError(f"--batch-size {batch_size}: {what.format(rows)}")
    say(f"data: {data.source}", args.quiet)
    return data, batch_size


def _total_steps(args, rows: int, batch_size: int, done: int, saved: dict) -> int:
    """The run's total steps: --steps, --epochs, a resumed run's recorded total, or the
    tutorial's; always beyond ``done``, the steps the checkpoint has taken."""
    if args.epochs is not None:
        steps = args.epochs * rows / batch_size
        if not math.isfinite(steps) or steps > 2**53:
            raise CLIError(f"--epochs {args.epochs}: that is more steps than can be counted; give fewer epochs")
        steps, given = math.ceil(steps), f"--epochs {args.epochs} ({math.ceil(steps)} steps in total)"
    elif args.steps:
        steps, given = args.steps, f"--steps {args.steps}"
    elif args.resume and isinstance(saved.get("steps"), int):
        steps, given = saved["steps"], f"the run's {saved['steps']} steps"
    else:
        steps, given = TUTORIAL_TRAINING["steps"], f"the default {TUTORIAL_TRAINING['steps']} steps"
    if steps <= done:
        raise CLIError(
            f"{given}: the checkpoint is already at step {done}; --steps is the run's total, so give one "
            f"beyond it (e.g. --steps {done + TUTORIAL_TRAINING['steps']})"
        )
    return steps


def _last_checkpoint(path: Path) -> str:
    """Which checkpoint a stopped run leaves, as read from the file itself (the step it
    holds), or that none was written."""
    if not path.exists():
        return f"no checkpoint was written (none at {path})"
    try:
        step = load_checkpoint(path, backend="numpy").step
    except CheckpointError as exc:
        return f"the file at {path} is not a usable checkpoint ({exc.problem})"
    return (
        f"the last checkpoint is {path} (step {step}, read from the file; its parameters are finite, though the "
        "run may already have been diverging by then)"
    )


@dataclass
class _CheckedRun:
    """What the checks of nanoae train found, before anything is written. plan and
    history_file are rank 0's alone (None on the other ranks of a data-parallel job);
    job: what the ranks compare (:func:`~nanoae.cli.parallel.job_text`; None in one
    process). model: the autoencoder to train (a new one, or the checkpoint's);
    sampler: the checkpoint's batch order, None for a new one."""

    resumed: Checkpoint | None
    data: TrainingData
    batch_size: int
    model: Model
    sampler: BatchSampler | None
    total_steps: int
    config: dict
    plan: RunDirectory | None
    history_file: Path | None
    job: str | None


def _check_run(args, comm) -> _CheckedRun:
    """Every check (options, run directory, data, model, step count); nothing written."""
    resumed = _load_resume_checkpoint(args)
    saved = saved_config(resumed) if resumed is not None else {}
    own = _is_own_data_run(args, saved)
    _check_model_and_data_options(args, own, resumed is not None, saved)
    _apply_train_defaults(args, resumed, own)
    leader = is_leader(comm)
    plan = _plan_out_dir(args) if leader else None  # rank 0 alone writes the run directory
    data, batch_size = _train_data(args, saved, own)
    model, sampler = _model_and_sampler(args, resumed, data, batch_size)
    what = f"the checkpoint's {type(model).__name__}" if resumed is not None else f"--preset {args.preset}"
    require_data_parallel(comm, model, batch_size, what)
    total_steps = _total_steps(args, len(data.train), batch_size, model.steps_trained, saved)
    lr_overrides = _override_lr(args, model, resumed, saved)
    data_dir = None if own else data_dir_used(args.dataset, args, saved)
    ranks = 1 if comm is None else comm.size
    config = _train_config(args, model, data, total_steps, batch_size, data_dir, lr_overrides, ranks)
    history_file = _metrics_history(args, plan) if leader else None
    if own and np.dtype(model.backend.dtype) == np.float64:
        _say_float64_rows(data.train.shape, args.quiet)
    job = job_text(comm, config, data.train)
    return _CheckedRun(resumed, data, batch_size, model, sampler, total_steps, config, plan, history_file, job)


def _say_float64_rows(shape: tuple, quiet: bool) -> None:
    """A float64 model holds own data's training rows in memory (float32 reads them from
    the file a batch at a time): say how much, since it is per process."""
    rows, width = shape
    size = rows * width * 8
    held = f"{size / 2**30:,.1f} GiB" if size >= 2**30 else f"{size / 2**20:,.1f} MiB"
    say(f"--dtype float64: the {rows:,} x {width} training rows are held in memory as float64, {held} in each process", quiet)


def _start_run_directory(args, run: _CheckedRun) -> tuple[Path, list]:
    """The run directory prepared, config.json written, the callbacks that write the rest."""
    out_dir = prepare_run_directory(run.plan)
    write_json_atomically(out_dir / "config.json", run.config)
    resume_step = run.model.steps_trained if run.resumed is not None else None
    return out_dir, _train_callbacks(args, run.data.evaluation, out_dir, run.config, resume_step, run.history_file)


def command_train(args) -> int:
    """nanoae train; under an MPI launcher of N > 1 processes, data-parallel on N ranks
    (:mod:`nanoae.cli.parallel`): rank 0 alone prints and writes, the others are silent."""
    try:
        comm = job_communicator(os.environ)
        if not is_leader(comm):
            args.quiet = True
        return _train_checked_and_agreed(args, comm)
    except StopRank as stop:
        return stop.code


def _train_checked_and_agreed(args, comm) -> int:
    # Every check (options, run directory, data, model, step count) before anything is
    # written, on every rank, and the ranks agree before rank 0 writes.
    run = checked_on_every_rank(comm, lambda: _check_run(args, comm))
    agree_on_the_run(comm, run.job)
    leader = is_leader(comm)
    out_dir, callbacks = checked_on_every_rank(comm, lambda: _start_run_directory(args, run) if leader else (None, []))
    model, batch_size, total_steps = run.model, run.batch_size, run.total_steps
    remaining = total_steps - model.steps_trained
    what = args.preset or (f"layers {','.join(map(str, args.layers))}" if args.layers else "the checkpoint")
    where = "" if comm is None else f" on {comm.size} ranks"
    say(f"training {what} for {total_steps} steps of batch {batch_size}{where} on {model.backend!r}; run directory {out_dir}", args.quiet)
    try:
        history = run_or_abort(comm, lambda: run_training(model, run.data.train, remaining, batch_size, args, callbacks, run.sampler, comm))
    except KeyboardInterrupt:
        if leader:
            print(f"nanoae: interrupted at step {model.steps_trained}; {_last_checkpoint(out_dir / 'checkpoint.npz')}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if history.stopped:
        if leader:
            print(f"nanoae: {history.stop_reason}; {_last_checkpoint(out_dir / 'checkpoint.npz')}", file=sys.stderr)
        return EXIT_DIVERGED
    if leader:
        _report_run(model, history, run.data, out_dir, args.preset or "model")
    return EXIT_OK
