"""The ``nanoae`` command: train, eval, plot, classify, gradcheck, bench.

``nanoae train`` with no arguments runs the tutorial exactly: the ``tutorial`` preset,
1000 steps of batch 256 on MNIST, the loss shown every step, then the figures.
Errors in arguments, data or files print one clear line and exit non-zero:
2 for bad input, 1 for a failed gradient check, 3 for a diverged run, 130 on Ctrl-C.
Any other exception is a bug in nanoae and shows its traceback.

Each command is one ``command_<name>(args)`` function returning the exit code; the
train command's steps (resume, data, model, callbacks, run, report) are helpers.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from nanoae.atomic import json_text, write_json_atomically
from nanoae.backend import BackendUnavailable
from nanoae.benchmark.runner import add_arguments as add_bench_arguments
from nanoae.benchmark.runner import run_from_arguments as run_benchmark
from nanoae.callbacks import Checkpointer, Evaluator, MetricsCSV, NonFiniteLossWarning, ProgressBar
from nanoae.checkpoint import CheckpointError, load_checkpoint, restore_sampler, save_checkpoint
from nanoae.classifier import Classifier, labeled_subset
from nanoae.data import DataError, find_data_dir, load_dataset
from nanoae.evaluation import reconstruction_errors
from nanoae.gradcheck import gradcheck
from nanoae.optim import SGD, Adam, AdamW, RMSProp
from nanoae.plot import PlotUnavailable, plot_image_grid, plot_loss, plot_reconstructions, read_metrics, written_by_nanoae
from nanoae.presets import PRESETS, TUTORIAL_TRAINING, get_preset, tutorial_encoder
from nanoae.rundir import (
    CLASSIFY_RUN,
    RUN_FILES,
    RUN_MARKER,
    RunDirectoryError,
    own_files,
    plan_run_directory,
    prepare_run_directory,
    read_run_config,
)
from nanoae.train import train
from nanoae.version import __version__

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

OPTIMIZER_CHOICES = ("rmsprop", "rmsprop-keras", "rmsprop-torch", "adam", "adamw", "sgd", "momentum", "nesterov")
OUTPUT_ACTIVATIONS = ("relu", "sigmoid", "identity", "leaky_relu", "tanh")


class CLIError(Exception):
    """A problem the user can fix; printed as one line."""


# The errors that mean "fix your input" (arguments, data, files, the machine's
# abilities): one line and exit 2. Anything else is a bug and shows its traceback.
USER_ERRORS = (CLIError, CheckpointError, DataError, BackendUnavailable, PlotUnavailable, RunDirectoryError, OSError)


# ---- argument types ----------------------------------------------------------------
def _int_at_least(minimum: int):
    """An argparse type: a whole number >= minimum, else a one-line error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def make_optimizer(name: str, lr: float):
    """The optimizer a CLI name stands for, at learning rate lr."""
    table = {
        "rmsprop": lambda: RMSProp(lr, flavor="tf1"),
        "rmsprop-keras": lambda: RMSProp(lr, flavor="keras"),
        "rmsprop-torch": lambda: RMSProp(lr, flavor="torch"),
        "adam": lambda: Adam(lr),
        "adamw": lambda: AdamW(lr),
        "sgd": lambda: SGD(lr),
        "momentum": lambda: SGD(lr, momentum=0.9),
        "nesterov": lambda: SGD(lr, momentum=0.9, nesterov=True),
    }
    return table[name]()


# ---- the parser ---------------------------------------------------------------------
def _add_data_options(parser: argparse.ArgumentParser, dataset_default: str | None = "mnist") -> None:
    parser.add_argument("--dataset", choices=("mnist", "fashion"), default=dataset_default, help="mnist (default) or fashion (Fashion-MNIST)")
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="directory holding the four IDX .gz files (default: $NANOAE_DATA, the cache, then a verified download)",
    )
    parser.add_argument("--no-download", action="store_true", help="never download; fail if no local copy is found")
    parser.add_argument("--backend", choices=("auto", "numpy", "cupy"), default=None, help="array library (default: $NANOAE_BACKEND or auto)")


def _add_train_command(commands) -> None:
    """nanoae train: a preset, its length and optimizer, data, run directory, logging."""
    train = commands.add_parser("train", help="train a preset (default: the tutorial) and draw its figures", description="Train an autoencoder. With no options: the TF1 tutorial exactly (1000 steps, batch 256, loss every step).")
    train.add_argument("--preset", choices=sorted(PRESETS), help="named model + optimizer (default: tutorial)")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--steps", type=_positive_int, help="total training steps of the run (default: the preset's, 1000 for tutorial)")
    length.add_argument("--epochs", type=_positive_float, help="train for this many passes over the data instead of --steps")
    train.add_argument("--batch-size", type=_positive_int, help="examples per step (default: the preset's, 256)")
    train.add_argument("--lr", type=_positive_float, help="learning rate (default: the preset's, 0.001)")
    train.add_argument("--optimizer", choices=OPTIMIZER_CHOICES, help="rmsprop = TF1 flavor (the tutorial's); rmsprop-keras, rmsprop-torch, adam, adamw, sgd, momentum, nesterov")
    train.add_argument("--output-activation", choices=OUTPUT_ACTIVATIONS, help="activation of the last layer (tutorial: relu; sigmoid avoids pixels stuck at 0)")
    train.add_argument("--code-size", type=_positive_int, help="width of the code for the presets past the tutorial (vae: 2; others: 128); the tutorial's is fixed at 128")
    train.add_argument("--seed", type=_non_negative_int, help="seed for the initial weights and the batch order (default: 0)")
    _add_data_options(train, dataset_default=None)
    train.add_argument("--out", metavar="DIR", help="run directory (default: runs/<preset>-<date>-<time>)")
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="let --out be a directory holding another run (its files are replaced) or other files (left untouched); "
        "a file named like nanoae's that nanoae did not write is never replaced",
    )
    train.add_argument(
        "--resume",
        metavar="CHECKPOINT",
        help="continue a run from its checkpoint.npz (to --steps in total); the checkpoint defines the model, "
        "optimizer and dataset: only --steps/--epochs, --lr, --log-every, --eval-every, --checkpoint-every, "
        "--quiet, --backend, --data and --out may change",
    )
    train.add_argument("--log-every", type=_positive_int, help="log the loss every N steps (default: 1, as the tutorial)")
    train.add_argument("--eval-every", type=_non_negative_int, help="test reconstruction MSE every N steps, 0 for only at the end (default: 100)")
    train.add_argument("--checkpoint-every", type=_non_negative_int, help="checkpoint every N steps, 0 for only at the end (default: 100)")
    train.add_argument("--quiet", action="store_true", help="no progress output; print only the summary")


def _add_eval_command(commands) -> None:
    """nanoae eval CHECKPOINT: test (or train) reconstruction errors."""
    evaluate = commands.add_parser("eval", help="test reconstruction MSE and BCE of a checkpoint")
    evaluate.add_argument("checkpoint", help="a checkpoint.npz written by nanoae train")
    evaluate.add_argument("--split", choices=("test", "train"), default="test")
    evaluate.add_argument("--json", action="store_true", help="print the numbers as JSON")
    _add_data_options(evaluate, dataset_default=None)


def _add_plot_command(commands) -> None:
    """nanoae plot CHECKPOINT: redraw a run's figures."""
    plot = commands.add_parser("plot", help="redraw a run's figures from its checkpoint")
    plot.add_argument("checkpoint", help="a checkpoint.npz written by nanoae train")
    plot.add_argument("--out", metavar="DIR", help="where to write the PNGs (default: beside the checkpoint)")
    _add_data_options(plot, dataset_default=None)


def _add_classify_command(commands) -> None:
    """nanoae classify: a softmax head on an encoder (scratch, finetune or probe)."""
    classify = commands.add_parser(
        "classify",
        help="train a classifier on an autoencoder's encoder (or from scratch) and report test accuracy",
        description="A linear softmax head on an encoder: --mode scratch (random init), finetune (the "
        "checkpoint's encoder, copied and trained) or probe (copied and frozen; only the head learns).",
    )
    classify.add_argument("--from", dest="source", metavar="CHECKPOINT", help="a trained autoencoder or VAE checkpoint whose encoder is reused")
    classify.add_argument("--mode", choices=("scratch", "finetune", "probe"), help="default: finetune with --from, else scratch")
    classify.add_argument("--labels", type=_positive_int, help="labeled training examples used, class-balanced (default: all 60,000)")
    classify.add_argument("--steps", type=_positive_int, default=1000, help="training steps (default: 1000)")
    classify.add_argument("--batch-size", type=_positive_int, default=128, help="examples per step, at most --labels (default: 128)")
    classify.add_argument("--lr", type=_positive_float, default=0.001, help="learning rate (default: 0.001)")
    classify.add_argument("--optimizer", choices=OPTIMIZER_CHOICES, default="adam", help="default: adam")
    classify.add_argument("--seed", type=_non_negative_int, default=0, help="seed for the head, the label subset and the batch order (default: 0)")
    _add_data_options(classify)
    classify.add_argument("--out", metavar="DIR", help="also write checkpoint.npz and result.json here")
    classify.add_argument("--overwrite", action="store_true", help="allow --out to be a directory that already holds a run")
    classify.add_argument("--json", action="store_true", help="print the result as JSON")
    classify.add_argument("--quiet", action="store_true", help="no progress output")


def _add_bench_command(commands) -> None:
    """nanoae bench: throughput against other frameworks (options from the benchmark runner)."""
    bench = commands.add_parser(
        "bench",
        help="throughput of the tutorial model against TensorFlow, PyTorch and (--gpu) JAX",
        description="Each competitor runs in its own process, alternating, for several rounds; "
        "OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are unset for every one.",
    )
    add_bench_arguments(bench)


def _add_gradcheck_command(commands) -> None:
    """nanoae gradcheck: a preset's backward pass against finite differences."""
    check = commands.add_parser("gradcheck", help="check a preset's backward pass against finite differences")
    check.add_argument("--preset", choices=sorted(PRESETS), default="tutorial")
    check.add_argument("--batch-size", type=_positive_int, default=4)
    check.add_argument("--max-entries", type=_positive_int, default=16, help="entries checked per tensor (default: 16)")
    check.add_argument("--output-activation", choices=OUTPUT_ACTIVATIONS)
    check.add_argument("--seed", type=_non_negative_int, default=0)
    check.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="numpy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanoae", description="A from-scratch autoencoder learner (hand-written backprop).")
    parser.add_argument("--version", action="version", version=f"nanoae {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_command in (
        _add_train_command,
        _add_eval_command,
        _add_plot_command,
        _add_classify_command,
        _add_bench_command,
        _add_gradcheck_command,
    ):
        add_command(commands)
    return parser


# ---- helpers ------------------------------------------------------------------------
def _say(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def _writable_directory(path: Path) -> Path:
    """``path`` made if missing and checked to take a file (plot's --out)."""
    if path.exists() and not path.is_dir():
        raise CLIError(f"--out {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise CLIError(f"cannot write to the output directory {path}: {exc.strerror or exc}") from None
    return path


def _preset_default(preset: str, option: str, fallback):
    """The default value of one of a preset factory's options."""
    parameter = inspect.signature(PRESETS[preset]).parameters.get(option) if preset in PRESETS else None
    return fallback if parameter is None else parameter.default


def _recorded_data_dir(config: dict, dataset: str) -> str | None:
    """The directory a run read ``dataset`` from, when it recorded one that still holds it."""
    place = config.get("data_dir") if isinstance(config, dict) else None
    if not isinstance(place, str) or config.get("dataset", dataset) != dataset:
        return None
    try:
        return place if find_data_dir(dataset, place) is not None else None
    except DataError:
        return None  # moved or changed since: the normal search


def _load_split(dataset: str, split: str, args, recorded: dict | None = None) -> object:
    """One split from --data, else the directory the run recorded (``recorded``: its
    config), else the normal search ($NANOAE_DATA, the cache, a download)."""
    data_dir = args.data or _recorded_data_dir(recorded or {}, dataset)
    return load_dataset(dataset, split, data_dir=data_dir, download=not args.no_download, quiet=getattr(args, "quiet", False))


def _data_dir_used(dataset: str, args, recorded: dict | None = None) -> str | None:
    """The directory the data was read from (recorded in config.json), or None."""
    try:
        place = find_data_dir(dataset, args.data or _recorded_data_dir(recorded or {}, dataset))
    except DataError:
        return None
    return None if place is None else str(Path(place).resolve())


def _as_user_error(build, *args, **kwargs):
    """``build(*args, **kwargs)``, its ValueError (a refused combination of the
    user's options, such as a preset's) reported as a CLIError."""
    try:
        return build(*args, **kwargs)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc


def _require_autoencoder(checkpoint, path, purpose: str) -> None:
    if not hasattr(checkpoint.model, "reconstruct"):
        raise CLIError(f"{path} holds a {type(checkpoint.model).__name__}, not an autoencoder; {purpose}")


def _require_width(model, path, images, dataset: str) -> None:
    """A saved model takes rows of the width it was trained on."""
    if model.in_features != images.shape[1]:
        raise CLIError(
            f"{path} holds a model of {model.in_features} input features, but {dataset} images have "
            f"{images.shape[1]}; use it on data of the width it was trained on"
        )


def draw_figures(model, test_images, out_dir: Path, metrics_path: Path | None, title: str = "") -> list[Path]:
    """reconstructions.png (16 test digits beside the model's output), samples.png (a VAE:
    64 draws from the prior) and loss.png (when the metrics file has rows); returns the paths."""
    originals = test_images[:16]
    reconstructions = model.backend.to_host(model.reconstruct(originals))
    written = [plot_reconstructions(originals, reconstructions, out_dir / "reconstructions.png", title=title)]
    if hasattr(model, "sample"):  # a VAE: new digits from the prior
        samples = model.backend.to_host(model.sample(64))
        written.append(plot_image_grid(samples, out_dir / "samples.png", rows=8, cols=8, title=f"{title}: samples from N(0, I)"))
    if metrics_path is not None and metrics_path.exists():
        metrics = read_metrics(metrics_path)
        if len(metrics["step"]):
            written.append(
                plot_loss(
                    metrics["step"], metrics["train_loss"], out_dir / "loss.png", metrics["test_step"], metrics["test_mse"], title=title
                )
            )
    return written


# ---- nanoae train -------------------------------------------------------------------
# The defaults of the options a resumed run takes from its checkpoint instead; argparse
# leaves them None so that a flag the user gave can be told from one left out.
TRAIN_DEFAULTS = {"preset": "tutorial", "dataset": "mnist", "seed": 0, "log_every": 1, "eval_every": 100, "checkpoint_every": 100}
# What the checkpoint defines: on --resume each may only be repeated with the run's value.
_RUN_DEFINING = ("preset", "dataset", "seed", "batch_size", "optimizer", "output_activation", "code_size")
# Where the run's own value is known only if it recorded it (a config.json written by nanoae train).
_MODEL_DEFINING = ("preset", "optimizer", "output_activation")
# What a resumed run keeps from its config unless given again.
_RUN_SETTINGS = ("log_every", "eval_every", "checkpoint_every")
_MAY_CHANGE_ON_RESUME = "--steps/--epochs, --lr, --log-every, --eval-every, --checkpoint-every, --quiet, --backend, --data, --out"


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _is_int(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


# What a run's recorded config may hold for the keys the command line reads back: the
# file is untrusted input, so an edited or damaged value is refused, never used.
_SAVED_VALUE_CHECKS = {
    "preset": lambda value: value in PRESETS,
    "dataset": lambda value: isinstance(value, str) and bool(value),
    "seed": lambda value: _is_int(value, 0),
    "batch_size": lambda value: _is_int(value, 1),
    "optimizer": lambda value: value in OPTIMIZER_CHOICES,
    "output_activation": lambda value: value in OUTPUT_ACTIVATIONS,
    "code_size": lambda value: _is_int(value, 1),
    "log_every": lambda value: _is_int(value, 1),
    "eval_every": lambda value: _is_int(value, 0),
    "checkpoint_every": lambda value: _is_int(value, 0),
    "data_dir": lambda value: isinstance(value, str),
    "lr_overrides": lambda value: isinstance(value, list) and all(isinstance(item, dict) for item in value),
}


def _saved_config(checkpoint) -> dict:
    """The run's config recorded in the checkpoint ({} when none), each value the
    command line reads back checked first: a bad one is a clear error, not a crash."""
    config = checkpoint.extra.get("config") if isinstance(checkpoint.extra, dict) else None
    if not isinstance(config, dict):
        return {}
    for key, valid in _SAVED_VALUE_CHECKS.items():
        if config.get(key) is not None and not valid(config[key]):
            raise CLIError(
                f"{checkpoint.path}: the run's recorded {key} ({config[key]!r}) is not a valid value; "
                "its config was edited or damaged (give the option explicitly on a new run)"
            )
    return config


def _refuse_changed_options(args, resumed, saved: dict) -> None:
    """Take each run-defining option the command line leaves out from the run; refuse,
    naming each, the ones given with another value than the run's."""
    recorded = dict(saved)
    if recorded.get("code_size") is None and hasattr(resumed.model, "code_size"):
        recorded["code_size"] = resumed.model.code_size  # the checkpoint's model says it
    differing = []
    for key in _RUN_DEFINING:
        given, known = getattr(args, key), recorded.get(key)
        if given is None:
            if known is not None:
                setattr(args, key, known)
        elif known is not None and given != known:
            differing.append(f"{_flag(key)} {given} (the run's: {known})")
        elif known is None and key in _MODEL_DEFINING:
            differing.append(f"{_flag(key)} {given} (the checkpoint does not record one; its model and optimizer are used)")
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
    _require_autoencoder(resumed, path, "nanoae train resumes autoencoder runs (a classifier's run: nanoae classify)")
    saved = _saved_config(resumed)
    _refuse_changed_options(args, resumed, saved)
    for key in _RUN_SETTINGS:
        if getattr(args, key) is None and isinstance(saved.get(key), int):
            setattr(args, key, saved[key])
    return resumed


def _apply_train_defaults(args, resumed) -> None:
    """The defaults of the options still unset (a resumed run without a recorded
    preset keeps none: the checkpoint's model is not a preset's)."""
    for key, value in TRAIN_DEFAULTS.items():
        if getattr(args, key) is None and not (key == "preset" and resumed is not None):
            setattr(args, key, value)


def _run_directory(args) -> Path:
    if args.out:
        return Path(args.out)
    if args.resume:
        return Path(args.resume).parent
    return Path("runs") / f"{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}"


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


def _new_model(args):
    """The preset's model, with the command line's output activation, code size,
    optimizer and learning rate."""
    options = {"seed": args.seed, "backend": args.backend}
    if args.output_activation:
        options["output_activation"] = args.output_activation
    if args.code_size:
        if _preset_default(args.preset, "code_size", None) is None:
            raise CLIError(f"--code-size does not apply to the {args.preset} preset (its code is fixed at 128)")
        options["code_size"] = args.code_size
    model = _as_user_error(get_preset(args.preset), **options)
    if args.optimizer or args.lr:
        model.optimizer = make_optimizer(args.optimizer or "rmsprop", args.lr or model.optimizer.lr).bind(model.arena)
    return model


def _model_and_sampler(args, resumed, images, batch_size: int):
    """(model, sampler): restored from --resume, or a new model and no sampler yet."""
    if resumed is None:
        return _new_model(args), None
    _require_width(resumed.model, args.resume, images, args.dataset)
    rows = len(images)
    sampler = restore_sampler(resumed)  # None when the checkpoint holds no sampler
    if sampler is not None and (sampler.n, sampler.batch_size) != (rows, batch_size):
        raise CLIError(
            f"--resume {args.resume}: the run drew batches of {sampler.batch_size} from {sampler.n} rows; "
            f"this one would draw {batch_size} from {rows}. Resume with --batch-size {sampler.batch_size} "
            "and the same --dataset"
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


def _train_config(args, model, train_set, total_steps: int, batch_size: int, data_dir, lr_overrides: list) -> dict:
    """The run's config.json (also stored in every checkpoint's extra). ``nanoae_run``
    and ``files`` mark the run's own files (see :mod:`nanoae.rundir`)."""
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
        "output_activation": args.output_activation or _preset_default(args.preset, "output_activation", fallback_activation),
        "code_size": getattr(model, "code_size", None),
        "seed": args.seed,
        "dataset": args.dataset,
        "data_source": train_set.source,
        "data_dir": data_dir,
        "backend": model.backend.name,
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
    """Evaluator first (its MSE lands in the metrics row), then progress, metrics, checkpoints."""
    callbacks = [Evaluator(test_images, every=args.eval_every or None)]
    if not args.quiet:
        callbacks.append(ProgressBar())
    metrics = MetricsCSV(out_dir / "metrics.csv", resume_step=resume_step, history=history, sync_every=args.checkpoint_every or None)
    return callbacks + [metrics, Checkpointer(out_dir / "checkpoint.npz", every=args.checkpoint_every or None, extra={"config": config})]


def _run_training(model, images, steps: int, batch_size: int, args, callbacks, sampler):
    """train(...), with a diverging run reported once by the caller, not as numpy or
    warnings noise."""
    with np.errstate(over="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteLossWarning)
        return train(
            model, images, steps=steps, batch_size=batch_size, log_every=args.log_every, callbacks=callbacks, sampler=sampler
        )


def _report_run(model, history, test_images, out_dir: Path, preset: str) -> None:
    """Test errors, figures (when matplotlib is there) and the summary lines."""
    errors = reconstruction_errors(model, test_images)
    figures = []
    try:
        figures = draw_figures(model, test_images, out_dir, out_dir / "metrics.csv", title=f"nanoae {preset}, step {model.steps_trained}")
    except PlotUnavailable as exc:
        _say(f"no figures: {exc}")
    final_loss = f"{history[-1]:.6f}" if history else "n/a"
    print(f"step {model.steps_trained}: final training loss {final_loss}, test reconstruction MSE {errors['mse']:.6f}, BCE {errors['bce']:.6f}")
    print(f"run directory: {out_dir}  (config.json, metrics.csv, checkpoint.npz{''.join(', ' + p.name for p in figures)})")


def _train_data(args, batch_size: int, recorded: dict):
    """(train set, test set), checked against the batch size."""
    train_set = _load_split(args.dataset, "train", args, recorded)
    test_set = _load_split(args.dataset, "test", args, recorded)
    rows = len(train_set.images)
    if batch_size > rows:
        raise CLIError(f"--batch-size {batch_size}: the {args.dataset} training set has only {rows} images")
    _say(f"data: {train_set.source}", args.quiet)
    return train_set, test_set


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


def command_train(args) -> int:
    # Every check (options, run directory, data, model, step count) before anything is written.
    resumed = _load_resume_checkpoint(args)
    saved = _saved_config(resumed) if resumed is not None else {}
    _apply_train_defaults(args, resumed)
    batch_size = args.batch_size or TUTORIAL_TRAINING["batch_size"]
    plan = _plan_out_dir(args)
    train_set, test_set = _train_data(args, batch_size, saved)
    model, sampler = _model_and_sampler(args, resumed, train_set.images, batch_size)
    total_steps = _total_steps(args, len(train_set.images), batch_size, model.steps_trained, saved)
    lr_overrides = _override_lr(args, model, resumed, saved)
    config = _train_config(args, model, train_set, total_steps, batch_size, _data_dir_used(args.dataset, args, saved), lr_overrides)
    history_file = _metrics_history(args, plan)
    out_dir = prepare_run_directory(plan)
    write_json_atomically(out_dir / "config.json", config)
    checkpoint_path = out_dir / "checkpoint.npz"
    remaining = total_steps - model.steps_trained
    resume_step = model.steps_trained if resumed is not None else None
    callbacks = _train_callbacks(args, test_set.images, out_dir, config, resume_step, history_file)
    _say(f"training {args.preset or 'the checkpoint'} for {total_steps} steps of batch {batch_size} on {model.backend!r}; run directory {out_dir}", args.quiet)
    try:
        history = _run_training(model, train_set.images, remaining, batch_size, args, callbacks, sampler)
    except KeyboardInterrupt:
        print(f"nanoae: interrupted at step {model.steps_trained}; {_last_checkpoint(checkpoint_path)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if history.stopped:
        print(f"nanoae: {history.stop_reason}; {_last_checkpoint(checkpoint_path)}", file=sys.stderr)
        return EXIT_DIVERGED
    _report_run(model, history, test_set.images, out_dir, args.preset or "model")
    return EXIT_OK


# ---- nanoae eval / plot / gradcheck ---------------------------------------------------
def _dataset_of(checkpoint, args) -> str:
    return args.dataset or _saved_config(checkpoint).get("dataset", "mnist")


def _refuse_foreign_figures(out_dir: Path) -> None:
    """plot replaces figures nanoae wrote (a run's own, or any PNG whose metadata names
    nanoae), never a user's file of the same name."""
    config = read_run_config(out_dir)
    own = own_files(config) if config is not None else set()
    foreign = [
        name
        for name in ("reconstructions.png", "samples.png", "loss.png")
        if (out_dir / name).exists() and name not in own and not written_by_nanoae(out_dir / name)
    ]
    if foreign:
        raise CLIError(f"{out_dir} holds {', '.join(foreign)}, which nanoae did not write and will not replace; move them away or give another --out")


def command_eval(args) -> int:
    checkpoint = load_checkpoint(args.checkpoint, backend=args.backend)
    _require_autoencoder(checkpoint, args.checkpoint, "eval measures reconstructions")
    dataset = _dataset_of(checkpoint, args)
    data = _load_split(dataset, args.split, args, _saved_config(checkpoint))
    _require_width(checkpoint.model, args.checkpoint, data.images, dataset)
    with np.errstate(over="ignore", invalid="ignore"):  # said once below, not as NumPy noise
        errors = reconstruction_errors(checkpoint.model, data.images)
    if not all(math.isfinite(value) for value in errors.values()):
        _say(f"nanoae eval: {args.checkpoint}'s weights are finite but its reconstructions overflow "
             "(a diverging run's last checkpoint?); an earlier checkpoint or a smaller learning rate may help")
    if args.json:
        print(json_text({"checkpoint": str(args.checkpoint), "step": checkpoint.step, "dataset": dataset, "split": args.split, **errors}))
    else:
        print(f"{args.checkpoint} (step {checkpoint.step}) on {dataset} {args.split} ({len(data.images)} images):")
        print(f"  reconstruction MSE {errors['mse']:.6f}")
        print(f"  reconstruction BCE {errors['bce']:.6f}")
    return EXIT_OK


def command_plot(args) -> int:
    checkpoint = load_checkpoint(args.checkpoint, backend=args.backend)
    _require_autoencoder(checkpoint, args.checkpoint, "plot draws reconstructions")
    dataset = _dataset_of(checkpoint, args)
    data = _load_split(dataset, "test", args, _saved_config(checkpoint))
    _require_width(checkpoint.model, args.checkpoint, data.images, dataset)
    out_dir = Path(args.out) if args.out else Path(args.checkpoint).parent
    if out_dir.is_dir():
        _refuse_foreign_figures(out_dir)
    out_dir = _writable_directory(out_dir)
    metrics = Path(args.checkpoint).parent / "metrics.csv"
    preset = _saved_config(checkpoint).get("preset") or "model"
    figures = draw_figures(checkpoint.model, data.images, out_dir, metrics, title=f"nanoae {preset}, step {checkpoint.step}")
    for figure in figures:
        print(figure)
    return EXIT_OK


def command_gradcheck(args) -> int:
    options = {"seed": args.seed, "backend": args.backend}
    if args.output_activation:
        options["output_activation"] = args.output_activation
    model = _as_user_error(get_preset(args.preset), **options)
    x = np.random.default_rng(args.seed).uniform(0.05, 0.95, (args.batch_size, model.in_features))
    report = gradcheck(model, x, max_entries=args.max_entries, seed=args.seed)
    print(f"preset {args.preset}, batch {args.batch_size}, float64 copy of the parameters")
    print(report)
    return EXIT_OK if report.passed else EXIT_CHECK_FAILED


# ---- nanoae classify -------------------------------------------------------------------
def _classify_source(args, mode: str):
    """The autoencoder named by --from (None without it), checked against --mode."""
    if mode != "scratch" and not args.source:
        raise CLIError(f"--mode {mode} reuses a trained encoder: give --from CHECKPOINT (an autoencoder's checkpoint.npz)")
    if not args.source:
        return None
    path = Path(args.source)
    if not path.is_file():
        raise CLIError(f"--from {path}: no such checkpoint file")
    source = load_checkpoint(path, backend=args.backend).model
    if not hasattr(source, "encode"):
        raise CLIError(f"--from {path}: holds a {type(source).__name__}, not an autoencoder; train one with nanoae train")
    return source


def _new_classifier(args, source, mode: str, optimizer):
    options = {"optimizer": optimizer, "seed": args.seed, "backend": args.backend}
    if source is not None:
        return _as_user_error(Classifier.from_autoencoder, source, 10, mode=mode, **options)
    return Classifier(tutorial_encoder(), 10, **options)  # from scratch, on the tutorial's encoder


def _classify_data_and_out_dir(args, source):
    """(dataset name, train set, test set, labels used, --out directory or None); the
    directory is made only once the data fits the --from model."""
    plan = None
    if args.out:
        plan = plan_run_directory(args.out, overwrite=args.overwrite, continuing=False, kind=CLASSIFY_RUN)
    dataset = args.dataset or "mnist"
    train_set = _load_split(dataset, "train", args)
    test_set = _load_split(dataset, "test", args)
    n_labels = args.labels or len(train_set.images)
    if n_labels > len(train_set.images):
        raise CLIError(f"--labels {n_labels}: the {dataset} training set has only {len(train_set.images)} images")
    if source is not None:
        _require_width(source, args.source, train_set.images, dataset)
    out_dir = prepare_run_directory(plan) if plan is not None else None
    return dataset, train_set, test_set, n_labels, out_dir


def command_classify(args) -> int:
    mode = args.mode or ("finetune" if args.source else "scratch")
    source = _classify_source(args, mode)
    dataset, train_set, test_set, n_labels, out_dir = _classify_data_and_out_dir(args, source)
    optimizer = make_optimizer(args.optimizer, args.lr)
    model = _new_classifier(args, source, mode, optimizer)
    picked = labeled_subset(train_set.labels, n_labels, np.random.default_rng(args.seed))
    x, y = train_set.images[picked], train_set.labels[picked]
    batch_size = min(args.batch_size, n_labels)
    _say(f"classify: mode {mode}, {n_labels} labels, {args.steps} steps of batch {batch_size}, {args.optimizer} lr {args.lr}", args.quiet)
    callbacks = [] if args.quiet else [ProgressBar()]
    history = model.fit(x, y, steps=args.steps, batch_size=batch_size, log_every=max(1, args.steps // 20), callbacks=callbacks)
    result = {
        "mode": mode,
        "from": str(args.source) if args.source else None,
        "dataset": dataset,
        "labels": n_labels,
        "steps": args.steps,
        "batch_size": batch_size,
        "optimizer": optimizer.config(),
        "seed": args.seed,
        "final_train_loss": history[-1] if history else None,
        "train_accuracy": model.accuracy(x, y),
        "test_accuracy": model.accuracy(test_set.images, test_set.labels),
    }
    _write_classify_outputs(args, out_dir, model, result)
    return EXIT_OK


def _write_classify_outputs(args, out_dir: Path | None, model, result: dict) -> None:
    if out_dir is not None:  # the record first: it lists the checkpoint as nanoae's
        write_json_atomically(out_dir / "result.json", {RUN_MARKER: 1, "files": list(CLASSIFY_RUN.files), **result})
        save_checkpoint(out_dir / "checkpoint.npz", model, extra={"config": result})
    if args.json:
        print(json_text(result))
    else:
        print(
            f"{result['mode']}: test accuracy {result['test_accuracy']:.4f} (train {result['train_accuracy']:.4f}) "
            f"with {result['labels']} labels, {result['steps']} steps of batch {result['batch_size']}"
        )


def command_bench(args) -> int:
    # Its ValueErrors are refused options (unknown framework, batch sizes, rounds);
    # the competitors themselves run in other processes.
    return _as_user_error(run_benchmark, args)


COMMANDS = {
    "train": command_train,
    "eval": command_eval,
    "plot": command_plot,
    "classify": command_classify,
    "gradcheck": command_gradcheck,
    "bench": command_bench,
}


def main(argv=None) -> int:
    """Run one command; return its exit code.

    Bad arguments exit 2 through argparse. The errors in :data:`USER_ERRORS` print one
    line and return 2 (``NANOAE_DEBUG=1`` shows their traceback instead). Any other
    exception is a bug in nanoae and propagates with its traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as exc:
        if os.environ.get("NANOAE_DEBUG"):
            raise  # the full traceback, for bug reports
        print(f"nanoae {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("nanoae: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
