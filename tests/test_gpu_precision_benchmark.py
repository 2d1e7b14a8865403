"""benchmarks/gpu_precision.py: its float32 run on the CPU (the TF32 run needs a GPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from script_loader import load_script

from nanoae import presets
from nanoae.data import load_dataset
from nanoae.evaluation import reconstruction_errors

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_precision.py"


def test_a_float32_run_reports_the_tutorials_loss_and_test_mse(capsys):
    bench = load_script(SCRIPT)
    bench.main(["--backend", "numpy", "--steps", "60", "--mode", "float32", "--dataset", "mnist-sample"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("NANOAE-PRECISION ")]
    assert len(lines) == 1
    result = json.loads(lines[0].split(" ", 1)[1])
    assert (result["mode"], result["steps"], result["dataset"]) == ("float32", 60, "mnist-sample")
    # The same run by hand: the numbers are the model's, not made up by the script.
    train = load_dataset("mnist-sample", "train", download=False, quiet=True)
    test = load_dataset("mnist-sample", "test", download=False, quiet=True)
    model = presets.tutorial(seed=0, backend="numpy")
    history = model.fit(train.images, steps=60, batch_size=256)
    assert result["final_loss"] == pytest.approx(float(np.mean(list(history)[-50:])), rel=1e-6)
    assert result["test_mse"] == pytest.approx(reconstruction_errors(model, test.images)["mse"], rel=1e-6)


def test_reduced_precisions_are_refused_off_the_gpu():
    bench = load_script(SCRIPT)
    for mode in ("tf32", "bf16"):
        with pytest.raises(ValueError, match=f"{mode} is a GPU mode"):
            bench.run(mode, 1, None, backend_name="numpy", dataset="mnist-sample")
    with pytest.raises(ValueError, match="unknown mode 'fp16'"):
        bench.run("fp16", 1, None, backend_name="numpy")
