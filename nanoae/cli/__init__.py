"""The ``nanoae`` command: train, eval, plot, encode, reconstruct, classify, gradcheck, bench.

``nanoae train`` with no arguments runs the tutorial exactly: the ``tutorial`` preset,
1000 steps of batch 256 on MNIST, the loss shown every step, then the figures.
Errors in arguments, data or files print one clear line and exit non-zero:
2 for bad input, 1 for a failed gradient check, 3 for a diverged run, 130 on Ctrl-C.
Any other exception is a bug in nanoae and shows its traceback.

Each command is one ``command_<name>(args)`` function returning the exit code, in a
module of its own job: ``train``, ``use`` (eval, plot, encode, reconstruct, classify),
``data`` (the rows a command works on) and ``common`` (what they share). Here: the
parser (each command's options and their types), main, and gradcheck and bench, a few
lines each.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys

import numpy as np

from nanoae.benchmark.runner import add_arguments as add_bench_arguments
from nanoae.benchmark.runner import run_from_arguments as run_benchmark
from nanoae.cli.common import (
    EXIT_CHECK_FAILED,
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    HIDDEN_ACTIVATIONS,
    OPTIMIZER_CHOICES,
    OUTPUT_ACTIVATIONS,
    USER_ERRORS,
    CLIError,
    as_user_error,
)
from nanoae.cli.parallel import prints_for_the_job
from nanoae.cli.train import command_train
from nanoae.cli.use import command_classify, command_encode, command_eval, command_plot, command_reconstruct
from nanoae.data import DATASETS
from nanoae.gradcheck import gradcheck
from nanoae.presets import PRESETS, get_preset
from nanoae.scaling import SCALE_MODES
from nanoae.version import __version__

__all__ = [
    "main",
    "build_parser",
    "COMMANDS",
    "USER_ERRORS",
    "CLIError",
    "EXIT_OK",
    "EXIT_CHECK_FAILED",
    "EXIT_USAGE",
    "EXIT_DIVERGED",
    "EXIT_INTERRUPTED",
]


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


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def layer_widths(text: str) -> list[int]:
    """--layers 512,128,32: the encoder's widths after the input, each a whole number >= 1."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise argparse.ArgumentTypeError(f"expected widths separated by commas such as 512,128,32, got {text!r} (an empty item)")
    widths = []
    for item in items:
        try:
            width = int(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} in {text!r} is not a whole number; give widths such as 512,128,32") from None
        if width < 1:
            raise argparse.ArgumentTypeError(f"every width must be >= 1, got {width} in {text!r}; give widths such as 512,128,32")
        widths.append(width)
    return widths


def fraction_below_one(text: str) -> float:
    """--val-fraction: a number in [0, 1) (0: no hold-out)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (e.g. 0.1 holds out a tenth of the rows; 0: none), got {text}")
    return value


def column(text: str) -> str | int:
    """--label-column: a 0-based column number, or a header name."""
    try:
        return int(text)
    except ValueError:
        return text


# ---- the parser ---------------------------------------------------------------------
def _add_data_options(parser: argparse.ArgumentParser, dataset_default: str | None = "mnist", own_data: bool = False) -> None:
    parser.add_argument("--dataset", choices=sorted(DATASETS), default=dataset_default, help="a built-in dataset (default: mnist; mnist-sample: the 6,000 + 1,000 MNIST digits shipped with nanoae; fashion: Fashion-MNIST)")
    if own_data:
        parser.add_argument(
            "--data",
            metavar="PATH",
            help="a directory holding the four IDX .gz files (default: $NANOAE_DATA, the cache, a verified download, then for MNIST the shipped sample), "
            "or your own data: a .npy, .npz, .csv or .tsv file, or a folder of same-sized PNG/JPEG images",
        )
        parser.add_argument("--key", metavar="NAME", help="the array of a .npz file to use (default: its only one)")
        parser.add_argument("--label-column", metavar="NAME|INDEX", type=column, help="a CSV/TSV column (header name or 0-based number) that holds labels, not features")
    else:
        parser.add_argument(
            "--data",
            metavar="DIR",
            help="directory holding the four IDX .gz files (default: $NANOAE_DATA, the cache, a verified download, then for MNIST the shipped sample)",
        )
    parser.add_argument("--no-download", action="store_true", help="never download (MNIST then falls back to the shipped sample; Fashion-MNIST fails if no local copy is found)")
    parser.add_argument("--backend", choices=("auto", "numpy", "cupy"), default=None, help="array library (default: $NANOAE_BACKEND or auto)")


def add_train_command(commands) -> None:
    """nanoae train: a preset, its length and optimizer, data, run directory, logging."""
    train = commands.add_parser("train", help="train a preset (default: the tutorial) and draw its figures", description="Train an autoencoder. With no options: the TF1 tutorial exactly (1000 steps, batch 256, loss every step).")
    train.add_argument("--preset", choices=sorted(PRESETS), help="named model + optimizer (default: tutorial)")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, help="total training steps of the run (default: the preset's, 1000 for tutorial)")
    length.add_argument("--epochs", type=positive_float, help="train for this many passes over the data instead of --steps")
    train.add_argument("--batch-size", type=positive_int, help="examples per step (default: the preset's, 256)")
    train.add_argument("--lr", type=positive_float, help="learning rate (default: the preset's, 0.001)")
    train.add_argument("--optimizer", choices=OPTIMIZER_CHOICES, help="rmsprop = TF1 flavor (the presets'); rmsprop-keras, rmsprop-torch, "
                       "adam (the default with --layers), adamw, sgd, momentum, nesterov")
    train.add_argument("--output-activation", choices=OUTPUT_ACTIVATIONS, help="activation of the last layer (tutorial: relu; "
                       "with --layers: sigmoid for data scaled to [0, 1], identity for standardized data)")
    train.add_argument("--code-size", type=positive_int, help="width of the code for the presets past the tutorial (vae: 2; others: 128); the tutorial's is fixed at 128")
    train.add_argument("--seed", type=non_negative_int, help="seed for the initial weights and the batch order (default: 0)")
    train.add_argument("--dtype", choices=("float32", "float64"), help="the model's floating type (default: float32; a resumed run keeps its "
                       "checkpoint's). float64 holds own data's training rows in memory as float64, where float32 reads them from "
                       "the file a batch at a time: a uint8 file needs 8 times its size (12 while it is converted), in every "
                       "process of an mpiexec job")
    _add_data_options(train, dataset_default=None, own_data=True)
    train.add_argument("--scale", choices=SCALE_MODES, help="own data: auto (default: integers / their type's maximum, floats in [0, 1] kept, "
                       "else standardize), unit, minmax, standardize or none; fitted on the training rows, stored in the run")
    train.add_argument("--layers", type=layer_widths, metavar="W1,W2,...", help="the encoder's widths after the input, e.g. 512,128,32 "
                       "(the last is the code; the decoder mirrors them); instead of --preset (own data default: 128,32)")
    train.add_argument("--activation", choices=HIDDEN_ACTIVATIONS, help="with --layers: the hidden layers' activation (default: relu)")
    train.add_argument("--val-fraction", type=fraction_below_one, metavar="F", help="own data: the share of rows held out, seeded by "
                       "--seed, for the validation MSE (default: 0.1; 0: none)")
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
    train.add_argument("--log-every", type=positive_int, help="log the loss every N steps (default: 1, as the tutorial)")
    # Under mpiexec rank 0 evaluates and checkpoints between two steps while the others wait.
    deadline = "at most $NANOAE_MPI_TIMEOUT seconds (default: 300) before they end the job"
    train.add_argument("--eval-every", type=non_negative_int, help="test reconstruction MSE every N steps, 0 for only at the end "
                       f"(default: 100). Under mpiexec the other ranks wait while rank 0 evaluates, {deadline}: raise NANOAE_MPI_TIMEOUT "
                       "for a large held-out set")
    train.add_argument("--checkpoint-every", type=non_negative_int, help="checkpoint every N steps, 0 for only at the end (default: 100). "
                       f"Under mpiexec the other ranks wait while rank 0 writes it, {deadline}: raise NANOAE_MPI_TIMEOUT for a slow disk")
    train.add_argument("--quiet", action="store_true", help="no progress output; print only the summary")


def add_eval_command(commands) -> None:
    """nanoae eval CHECKPOINT: test (or train) reconstruction errors."""
    evaluate = commands.add_parser("eval", help="test (or validation) reconstruction MSE and BCE of a checkpoint")
    evaluate.add_argument("checkpoint", help="a checkpoint.npz written by nanoae train")
    evaluate.add_argument("--split", choices=("test", "train", "all"), help="test (the default; own data: the run's held-out rows, "
                          "every row where it held none out or --data names another file), train, or all (own data)")
    evaluate.add_argument("--json", action="store_true", help="print the numbers as JSON")
    _add_data_options(evaluate, dataset_default=None, own_data=True)


def add_plot_command(commands) -> None:
    """nanoae plot CHECKPOINT: redraw a run's figures."""
    plot = commands.add_parser("plot", help="redraw a run's figures from its checkpoint")
    plot.add_argument("checkpoint", help="a checkpoint.npz written by nanoae train")
    plot.add_argument("--out", metavar="DIR", help="where to write the PNGs (default: beside the checkpoint)")
    _add_data_options(plot, dataset_default=None, own_data=True)


def add_use_commands(commands) -> None:
    """nanoae encode / reconstruct CHECKPOINT --data PATH --out FILE.npy."""
    jobs = {
        "encode": ("write the codes of a trained autoencoder for every row of the data (float32 .npy, rows x code size)", "codes"),
        "reconstruct": ("write a trained autoencoder's reconstructions of the data, in the data's own units (float32 .npy)", "reconstructions"),
    }
    for name, (summary, what) in jobs.items():
        command = commands.add_parser(name, help=summary, description=summary + "; the run's stored scaling is applied first.")
        command.add_argument("checkpoint", help="a checkpoint.npz written by nanoae train")
        command.add_argument("--out", metavar="FILE.npy", required=True, help=f"where to write the {what} (a .npy file)")
        command.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
        command.add_argument("--split", choices=("test", "train", "all"), help="MNIST runs: test (default) or train; own data: all rows "
                             "(default), or the run's training (train) or held-out (test) rows")
        command.add_argument("--batch-size", type=positive_int, default=4096, help="rows per forward pass (default: 4096)")
        _add_data_options(command, dataset_default=None, own_data=True)


def add_classify_command(commands) -> None:
    """nanoae classify: a softmax head on an encoder (scratch, finetune or probe)."""
    classify = commands.add_parser(
        "classify",
        help="train a classifier on an autoencoder's encoder (or from scratch) and report test accuracy",
        description="A linear softmax head on an encoder: --mode scratch (random init), finetune (the "
        "checkpoint's encoder, copied and trained) or probe (copied and frozen; only the head learns).",
    )
    classify.add_argument("--from", dest="source", metavar="CHECKPOINT", help="a trained autoencoder or VAE checkpoint whose encoder is reused")
    classify.add_argument("--mode", choices=("scratch", "finetune", "probe"), help="default: finetune with --from, else scratch")
    classify.add_argument("--labels", type=positive_int, help="labeled training examples used, class-balanced (default: all 60,000)")
    classify.add_argument("--steps", type=positive_int, default=1000, help="training steps (default: 1000)")
    classify.add_argument("--batch-size", type=positive_int, default=128, help="examples per step, at most --labels (default: 128)")
    classify.add_argument("--lr", type=positive_float, default=0.001, help="learning rate (default: 0.001)")
    classify.add_argument("--optimizer", choices=OPTIMIZER_CHOICES, default="adam", help="default: adam")
    classify.add_argument("--seed", type=non_negative_int, default=0, help="seed for the head, the label subset and the batch order (default: 0)")
    _add_data_options(classify)
    classify.add_argument("--out", metavar="DIR", help="also write checkpoint.npz and result.json here")
    classify.add_argument("--overwrite", action="store_true", help="allow --out to be a directory that already holds a run")
    classify.add_argument("--json", action="store_true", help="print the result as JSON")
    classify.add_argument("--quiet", action="store_true", help="no progress output")


def add_bench_command(commands) -> None:
    """nanoae bench: throughput against other frameworks (options from the benchmark runner)."""
    bench = commands.add_parser(
        "bench",
        help="throughput of the tutorial model against TensorFlow, PyTorch and (--gpu) JAX",
        description="Each competitor runs in its own process, alternating, for several rounds; "
        "OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are unset for every one.",
    )
    add_bench_arguments(bench)


def add_gradcheck_command(commands) -> None:
    """nanoae gradcheck: a preset's backward pass against finite differences."""
    check = commands.add_parser("gradcheck", help="check a preset's backward pass against finite differences")
    check.add_argument("--preset", choices=sorted(PRESETS), default="tutorial")
    check.add_argument("--batch-size", type=positive_int, default=4)
    check.add_argument("--max-entries", type=positive_int, default=16, help="entries checked per tensor (default: 16)")
    check.add_argument("--output-activation", choices=OUTPUT_ACTIVATIONS)
    check.add_argument("--seed", type=non_negative_int, default=0)
    check.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="numpy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanoae", description="A from-scratch autoencoder learner (hand-written backprop).")
    parser.add_argument("--version", action="version", version=f"nanoae {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_command in (
        add_train_command,
        add_eval_command,
        add_plot_command,
        add_use_commands,
        add_classify_command,
        add_bench_command,
        add_gradcheck_command,
    ):
        add_command(commands)
    return parser


def command_gradcheck(args) -> int:
    options = {"seed": args.seed, "backend": args.backend}
    if args.output_activation:
        options["output_activation"] = args.output_activation
    model = as_user_error(get_preset(args.preset), **options)
    x = np.random.default_rng(args.seed).uniform(0.05, 0.95, (args.batch_size, model.in_features))
    report = gradcheck(model, x, max_entries=args.max_entries, seed=args.seed)
    print(f"preset {args.preset}, batch {args.batch_size}, float64 copy of the parameters")
    print(report)
    return EXIT_OK if report.passed else EXIT_CHECK_FAILED


def command_bench(args) -> int:
    # Its ValueErrors are refused options (unknown framework, batch sizes, rounds);
    # the competitors themselves run in other processes.
    return as_user_error(run_benchmark, args)


COMMANDS = {
    "train": command_train,
    "eval": command_eval,
    "plot": command_plot,
    "encode": command_encode,
    "reconstruct": command_reconstruct,
    "classify": command_classify,
    "gradcheck": command_gradcheck,
    "bench": command_bench,
}


def _parse(parser: argparse.ArgumentParser, argv):
    """parser.parse_args(argv). Under an MPI launcher every process parses the same
    command line: only rank 0 prints a refusal (or --help); the others exit alike, silent."""
    if prints_for_the_job(os.environ):
        return parser.parse_args(argv)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return parser.parse_args(argv)


def main(argv=None) -> int:
    """Run one command; return its exit code.

    Bad arguments exit 2 through argparse. The errors in :data:`USER_ERRORS` print one
    line and return 2 (``NANOAE_DEBUG=1`` shows their traceback instead). Any other
    exception is a bug in nanoae and propagates with its traceback.
    """
    parser = build_parser()
    args = _parse(parser, argv)
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
