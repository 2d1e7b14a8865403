"""Shared plumbing of the study scripts in examples/: arguments, data, timing, Markdown.

Each study runs in two modes:

* full (default): the budget stated in its docstring, on all of MNIST; figures (PNG)
  and a Markdown fragment go to ``docs/results/`` (``--out`` to change);
* ``--quick``: a few steps on 2,000 training and 500 test images, the same code path,
  into ``runs/quick/`` -- what CI runs to keep the scripts working. Its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def parse_args(description: str, argv=None, extra=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a tiny budget on a data subset (for CI; the numbers mean nothing)")
    parser.add_argument("--data", metavar="DIR", help="directory with the MNIST files (default: $NANOAE_DATA, the cache, a download)")
    parser.add_argument("--out", metavar="DIR", help="where figures and the Markdown fragment go (default: docs/results, or runs/quick with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every model and draw (default: 0)")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    args.out = Path(args.out) if args.out else ROOT / ("runs/quick" if args.quick else "docs/results")
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def load_mnist(args):
    """(train images, train labels, test images, test labels); a subset with --quick."""
    from nanoae.data import load_dataset  # noqa: PLC0415

    train = load_dataset("mnist", "train", data_dir=args.data, quiet=True)
    test = load_dataset("mnist", "test", data_dir=args.data, quiet=True)
    if train.name != "mnist" and not args.quick:
        # A study's numbers are recorded as full MNIST's: never from the stand-in sample.
        sys.exit(f"{sys.argv[0]}: full MNIST not found ({train.source}); pass --data DIR or set NANOAE_DATA (--quick runs on the sample)")
    if args.quick:
        return train.images[:2000], train.labels[:2000], test.images[:500], test.labels[:500]
    return train.images, train.labels, test.images, test.labels


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def machine() -> str:
    """One line naming what ran the study."""
    import nanoae  # noqa: PLC0415
    from nanoae.backend import get_backend  # noqa: PLC0415

    return f"nanoae {nanoae.__version__}, {get_backend('numpy')!r}, NumPy {np.__version__}, Python {platform.python_version()}, {platform.machine()}"


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_fragment(args, name: str, text: str, numbers: dict) -> Path:
    """<out>/<name>.md (the Markdown fragment) and <name>.json (the raw numbers)."""
    path = args.out / f"{name}.md"
    path.write_text(text.rstrip() + "\n")
    (args.out / f"{name}.json").write_text(json.dumps(numbers, indent=2, sort_keys=True) + "\n")
    say(f"wrote {path} and {name}.json")
    return path


def pick_digits(labels: np.ndarray, per_class: int = 1, start: int = 0) -> np.ndarray:
    """Indices of the first ``per_class`` examples of each digit 0..9 (from ``start``)."""
    picked = []
    for digit in range(10):
        picked.extend(np.flatnonzero(labels[start:] == digit)[:per_class] + start)
    return np.asarray(picked)
