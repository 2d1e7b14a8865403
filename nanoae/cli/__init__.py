"""The ``nanoae`` command: train, eval, plot, encode, reconstruct, classify, gradcheck, bench.

``nanoae train`` with no arguments runs the tutorial exactly: the ``tutorial`` preset,
1000 steps of batch 256 on MNIST, the loss shown every step, then the figures.
Errors in arguments, data or files print one clear line and exit non-zero:
2 for bad input, 1 for a failed gradient check, 3 for a diverged run, 130 on Ctrl-C.
Any other exception is a bug in nanoae and shows its traceback.

Each command is one ``command_<name>(args)`` function returning the exit code, in a
module of its own job: ``arguments`` (the parser's pieces), ``train``, ``use`` (eval,
plot, classify) and ``common`` (what they share); gradcheck and bench, a few lines
each, are here.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from nanoae.backend import BackendUnavailable
from nanoae.benchmark.runner import run_from_arguments as run_benchmark
from nanoae.checkpoint import CheckpointError
from nanoae.cli.arguments import (
    add_bench_command,
    add_classify_command,
    add_eval_command,
    add_gradcheck_command,
    add_plot_command,
    add_train_command,
    add_use_commands,
)
from nanoae.cli.common import (
    EXIT_CHECK_FAILED,
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CLIError,
    as_user_error,
)
from nanoae.cli.train import command_train
from nanoae.cli.use import command_classify, command_encode, command_eval, command_plot, command_reconstruct
from nanoae.data import DataError
from nanoae.gradcheck import gradcheck
from nanoae.plot import PlotUnavailable
from nanoae.presets import get_preset
from nanoae.rundir import RunDirectoryError
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

# The errors that mean "fix your input" (arguments, data, files, the machine's
# abilities): one line and exit 2. Anything else is a bug and shows its traceback.
USER_ERRORS = (CLIError, CheckpointError, DataError, BackendUnavailable, PlotUnavailable, RunDirectoryError, OSError)


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
