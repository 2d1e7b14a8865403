"""Where and on what a benchmark ran: the commit and the machine, for every result file
(and :func:`positive_count`, the one check of the scripts' count arguments).

Each script that writes measured figures records these beside them, so a figure can be
traced to the code and the CPU that produced it without anyone adding them by hand.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """`git describe --always --dirty` of the checkout ("...-dirty" when files were changed
    and not committed: the figures then belong to no commit); "unknown" outside git."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line: logical CPUs and their model, e.g. "2 CPUs, AMD EPYC"."""
    return f"{os.cpu_count()} CPUs, {cpu_model()}"


def numba_threads() -> int | None:
    """The threads Numba's parallel kernels use in this process (None without Numba).

    Set by NUMBA_NUM_THREADS before Numba is imported; the default is every core, so a
    "one thread" run must set it as well as the BLAS variables."""
    try:
        import numba  # noqa: PLC0415
    except ImportError:
        return None
    return int(numba.get_num_threads())


def positive_count(text: str) -> int:
    """argparse type of a count (rounds, repeats, steps, bytes): a whole number of 1 or more."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more; pass e.g. 5")
    return value
