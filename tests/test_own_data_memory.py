"""nanoae train on a large uint8 .npy reads it through its memory map: the run's extra
memory stays far below the file's size in float32 (what a scaled copy would take)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

# Runs `nanoae train` in a fresh interpreter and reports how far memory grew during it:
# the resident set's high-water mark (file pages of the map included) over the resident
# set before, and the peak of what Python and NumPy allocated (memory-mapped pages are
# not allocations). matplotlib is imported first, so its own memory is not counted.
MEASURE = """
import json, sys, tracemalloc
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
from nanoae.cli import main
try:
    import matplotlib.pyplot
except ImportError:
    pass
before = status("VmRSS")
tracemalloc.start()
code = main(sys.argv[1:])
print(json.dumps({"code": code, "rss_growth": status("VmHWM") - before, "allocated_peak": tracemalloc.get_traced_memory()[1]}))
"""


def test_a_200_mb_uint8_file_trains_without_a_float32_copy(tmp_path):
    rows, width = 255_000, 784  # 200 MB of uint8; 800 MB once scaled to float32
    path = tmp_path / "big.npy"
    stored = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows, width))
    stored[:3000] = np.random.default_rng(0).integers(0, 256, (3000, width), dtype=np.uint8)  # the rest stays a hole
    stored.flush()
    del stored
    float32_size = rows * width * 4
    args = ["train", "--data", path, "--steps", 20, "--layers", 16, "--out", tmp_path / "run", "--quiet"]
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, *map(str, args)], capture_output=True, text=True, timeout=600,
        cwd=Path(__file__).resolve().parents[1],  # this checkout's nanoae
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["code"] == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["val_fraction"] == 0.1 and config["scaler"]["mode"] == "unit"  # the default hold-out, scaled
    # A scaled copy of the training rows alone would be 0.9 x float32_size (the code before
    # this one allocated 1.25 x and grew by 1.5 x). What remains is the held-out tenth in
    # float32 and its reconstructions (0.2 x), and the map's pages once read (0.25 x).
    assert measured["allocated_peak"] < 0.25 * float32_size, measured
    assert measured["rss_growth"] < 0.75 * float32_size, measured


def test_the_training_rows_are_the_map_itself_behind_the_hold_out(tmp_path):
    """With the default hold-out, train's rows read the memory map through the split's
    row numbers, and the scaler is the one fitted on the gathered training rows."""
    from argparse import Namespace

    from nanoae.cli.data import own_training_data
    from nanoae.data import ScaledRows, holdout_rows
    from nanoae.scaling import Scaler

    x = np.random.default_rng(3).normal(5.0, 2.0, (500, 9))
    np.save(tmp_path / "x.npy", x)
    args = Namespace(key=None, label_column=None, val_fraction=0.1, seed=4, scale="auto", resume=None)
    data = own_training_data(args, {}, tmp_path / "x.npy")
    train_rows, val_rows = holdout_rows(500, 0.1, 4)
    assert isinstance(data.train, ScaledRows) and isinstance(data.train.features, np.memmap)
    np.testing.assert_array_equal(data.train.rows, train_rows)
    assert data.record["scaler"] == Scaler.fit(x[train_rows], "auto").config()
    assert data.record["scaler"]["mode"] == "standardize"
    scaler = Scaler.from_config(data.record["scaler"])
    np.testing.assert_array_equal(data.train.materialize(), scaler.transform(x[train_rows]))
    np.testing.assert_array_equal(data.evaluation, scaler.transform(x[val_rows]))
