"""benchmarks/cpu_ablation.py: its variants compute what they claim, and one tiny real run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from script_loader import load_script

from nanoae import presets
from nanoae.backend import get_backend
from nanoae.ops import cpu as cpu_ops

pytestmark = pytest.mark.skipif(not cpu_ops.numba_available()[0], reason="the ablation's variants are Numba kernels")

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "cpu_ablation.py"
TINY = np.float32(np.finfo(np.float32).tiny)


def _load():
    return load_script(SCRIPT)


def _arrays(seed=0, size=5000):
    rng = np.random.default_rng(seed)
    params = rng.uniform(-1, 1, size).astype(np.float32)
    grads = rng.uniform(-1e-2, 1e-2, size).astype(np.float32)
    grads[: size // 3] = 0
    mean_square = rng.uniform(0.1, 1, size).astype(np.float32)
    mean_square[: size // 3] = np.float32(4 * np.finfo(np.float32).smallest_subnormal)  # stuck, as dead units leave it
    return params, grads, mean_square


def test_flushing_variants_equal_the_shipped_update_and_the_others_keep_subnormals():
    bench = _load()
    kernels = bench._kernels()
    f32 = np.float32
    shipped = []
    params, grads, mean_square = _arrays()
    cpu_ops.load("numba").rmsprop_update(params, grads, mean_square, None, 1e-3, float(f32(0.9)), 1e-10, 0.0, "tf1", {})
    shipped = (params.view(np.uint32).copy(), mean_square.view(np.uint32).copy())
    for (parallel, flush), kernel in kernels.items():
        params, grads, mean_square = _arrays()
        kernel(params, grads, mean_square, f32(1e-3), f32(1) - f32(0.9), f32(1e-10), TINY)
        np.testing.assert_array_equal(params.view(np.uint32), shipped[0])  # the weights never notice
        subnormal = (mean_square > 0) & (mean_square < TINY)
        if flush:
            np.testing.assert_array_equal(mean_square.view(np.uint32), shipped[1])
            assert not subnormal.any()
        else:
            assert subnormal.sum() == 5000 // 3, (parallel, flush)


def test_the_per_layer_variant_trains_the_same_weights_as_the_update_at_the_end():
    bench = _load()
    base = get_backend("numpy", fast=True, kernels="numba")
    data = np.random.default_rng(3).random((256, 784), dtype=np.float32)
    batches = [np.arange(k * 32, (k + 1) * 32) for k in range(8)]
    trained = []
    for per_layer in (False, True):
        ops = bench._Unguarded()
        model = presets.tutorial(seed=0, backend=replace(base, ops=ops))
        if per_layer:
            bench._per_layer(model)
        step = ops.compile_train_step(model, data, None, {})
        for indices in batches:
            step(indices)
        trained.append(model.arena.values.copy())
    np.testing.assert_array_equal(trained[0].view(np.uint32), trained[1].view(np.uint32))
    assert not np.array_equal(trained[0], presets.tutorial(seed=0, backend=base).arena.values)  # it did train


def test_a_tiny_run_reports_every_variant(tmp_path):
    bench = _load()
    json_path, markdown_path = tmp_path / "a.json", tmp_path / "a.md"
    assert bench.main(["--batches", "8", "--rounds", "2", "--warm-steps", "3", "--block-s", "0.002",
                       "--json", str(json_path), "--markdown", str(markdown_path)]) == 0  # fmt: skip
    text = markdown_path.read_text()
    for name in ("before", "flush", "serial", "flush+serial", "shipped", "end, no guard", "per layer, no guard"):
        assert f"| {name} |" in text
    assert "x of end" in text  # the per-layer row is a ratio to the unguarded end update
    assert '"step_ms"' in json_path.read_text()
