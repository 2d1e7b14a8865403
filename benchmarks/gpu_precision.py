"""What TF32 and bfloat16 do to the tutorial: its 1000-step loss and test MSE in each.

    python benchmarks/gpu_precision.py [--steps 1000] [--data DIR] [--mode float32 --mode tf32 --mode bf16]

TF32 (``get_backend("cupy", allow_tf32=True)``) runs float32 matmuls on tensor cores with a
10-bit mantissa for the products, bfloat16 (``allow_bf16=True``) with an 8-bit one; the
sums stay float32, and so do the parameters, the optimizer and every other kernel. Neither
is ever the default. Each mode trains the tutorial's
model (seed 0, batch 256, RMSProp tf1 at 0.001) on the MNIST training images, then scores
the test images. Printed, one JSON line per mode: the mean of the last 50 step losses, the
test MSE, and seconds for the training. ``--backend numpy`` runs the float32 mode on the CPU
(for the tests; TF32 and bfloat16 need a GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from nanoae import presets  # noqa: E402 (after the path above)
from nanoae.backend import get_backend  # noqa: E402
from nanoae.data import load_dataset  # noqa: E402
from nanoae.evaluation import reconstruction_errors  # noqa: E402

MODES = ("float32", "tf32", "bf16")


def run(mode: str, steps: int, data_dir, backend_name: str = "cupy", dataset: str = "mnist") -> dict:
    """Train the tutorial ``steps`` steps in ``mode`` and score it on the test split."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
    if mode != "float32" and backend_name != "cupy":
        raise ValueError(f"{mode} is a GPU mode: use --backend cupy")
    options = {"allow_tf32": mode == "tf32", "allow_bf16": mode == "bf16"} if backend_name == "cupy" else {}
    backend = get_backend(backend_name, **options)  # first: no GPU fails before the data is read
    try:
        train = load_dataset(dataset, "train", data_dir=data_dir, download=False, quiet=True)
        test = load_dataset(dataset, "test", data_dir=data_dir, download=False, quiet=True)
        model = presets.tutorial(seed=0, backend=backend)
        started = time.perf_counter()
        history = model.fit(train.images, steps=steps, batch_size=256, log_every=1)
        seconds = time.perf_counter() - started
        test_mse = reconstruction_errors(model, test.images)["mse"]
    finally:
        if mode != "float32":
            get_backend(backend_name)  # the switches are per process: back to plain float32
    return {
        "mode": mode,
        "backend": backend.name,
        "dataset": train.name,
        "steps": steps,
        "final_loss": float(np.mean(list(history)[-50:])),
        "test_mse": float(test_mse),
        "train_seconds": seconds,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--data", default=None, help="MNIST directory (default: $NANOAE_DATA, then the cache)")
    parser.add_argument("--mode", action="append", choices=MODES)
    parser.add_argument("--backend", default="cupy", choices=("cupy", "numpy"))
    parser.add_argument("--dataset", default="mnist", help=argparse.SUPPRESS)  # the tests' small sample
    args = parser.parse_args(argv)
    for mode in args.mode or list(MODES):
        print("NANOAE-PRECISION " + json.dumps(run(mode, args.steps, args.data, args.backend, args.dataset)), flush=True)


if __name__ == "__main__":
    main()
