"""benchmarks/matmul_shapes.py: the step's products, the verdict arithmetic, and one tiny real run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from script_loader import load_script

from nanoae.benchmark.flops import train_step_flops

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "matmul_shapes.py"


def _load():
    return load_script(SCRIPT)


@pytest.mark.parametrize("batch", [1, 64, 256])
def test_the_products_are_the_steps_seventeen_matmuls(batch):
    bench = _load()
    products = bench.step_products(batch)
    assert len(products) == 17  # 6 forward, 6 weight gradients, 5 input gradients (none for layer 1)
    assert sum(p["gflop"] for p in products) * 1e9 == pytest.approx(train_step_flops(batch))
    by_name = {(p["layer"], p["kind"].split(" ")[0]): (p["m"], p["k"], p["n"]) for p in products}
    assert by_name[(1, "y")] == (batch, 784, 784)
    assert by_name[(1, "dW")] == (784, batch, 784)
    assert (1, "dx") not in by_name
    assert by_name[(4, "dx")] == (batch, 128, 128)
    assert by_name[(6, "dx")] == (batch, 784, 256)  # dz (B, 784) by W.T (784, 256)


def test_operands_are_laid_out_as_the_step_lays_them_out():
    bench = _load()
    rng = np.random.default_rng(0)
    weight_grad, input_grad = [p for p in bench.step_products(8) if p["layer"] == 2 and p["kind"] != "y = x @ W"]
    x_t, dz = bench.operands(weight_grad, rng)
    assert x_t.shape == (784, 8) and x_t.flags.f_contiguous and not x_t.flags.c_contiguous  # x.T of a (8, 784) x
    assert dz.shape == (8, 256) and dz.flags.c_contiguous
    dz, w_t = bench.operands(input_grad, rng)
    assert w_t.shape == (256, 784) and w_t.flags.f_contiguous  # W.T of a (784, 256) W
    assert 0.0 <= min(x_t.min(), dz.min(), w_t.min()) and max(x_t.max(), dz.max(), w_t.max()) < 1.0
    assert np.count_nonzero(x_t) == x_t.size  # random values, never a zero matrix


def test_verdict_compares_quartile_ranges():
    bench = _load()
    base = [1.0, 2.0, 3.0, 4.0, 5.0]  # quartiles 2, 3, 4
    assert bench.quartiles(base) == (2.0, 3.0, 4.0)
    assert bench.verdict(base, [0.5, 1.0, 1.5, 1.9]) == "wins"  # 75th percentile 1.6 < 2
    assert bench.verdict(base, [1.0, 1.5, 2.5, 3.0]) == "within spread"  # 1.375-2.625 overlaps 2-4
    assert bench.verdict(base, [4.5, 5.0, 6.0]) == "loses"  # 25th percentile 4.75 > 4


def test_ratios_are_medians_of_same_repeat_ratios():
    bench = _load()
    row = {
        "gflop": 2.0,
        "times_s": {
            "as-is": [2.0, 4.0, 3.0],
            "out-view": [1.0, 4.0, 6.0],  # ratios 2, 1, 0.5 -> 1 (the ratio of the medians, 3/4, is not it)
            "other-orientation": [1.0, 1.0, 1.0],
            "transpose-copy": [1.0, 2.0, 0.5],  # with the product: 2, 3, 1.5 -> ratios 1, 4/3, 2 -> 4/3
        },
    }
    summary = bench.summarize_product(row)
    assert summary["as-is"]["median_s"] == 3.0 and summary["as-is"]["gflops"] == pytest.approx(2.0 / 3.0)
    assert summary["out-view"]["ratio_to_as_is"] == 1.0
    assert summary["other-orientation"]["ratio_to_as_is"] == 3.0 and summary["other-orientation"]["verdict"] == "wins"
    assert summary["transpose-copy"]["gflops"] is None and "verdict" not in summary["transpose-copy"]
    assert summary["other-orientation+copy"]["ratio_to_as_is"] == pytest.approx(4.0 / 3.0)
    assert summary["other-orientation+copy"]["median_s"] == 2.0


def test_a_tiny_run_writes_every_product_and_its_checks(tmp_path):
    bench = _load()
    json_path, markdown_path = tmp_path / "shapes.json", tmp_path / "shapes.md"
    argv = ["--batches", "3", "--repeats", "2", "--block-ms", "0.01", "--peak-size", "32"]
    assert bench.main([*argv, "--json", str(json_path), "--markdown", str(markdown_path)]) == 0
    report = json.loads(json_path.read_text())
    assert len(report["rows"]) == 17 and report["settings"]["repeats"] == 2
    for row in report["rows"]:
        assert set(row["times_s"]) >= {"as-is", "out-view", "other-orientation", "transpose-copy"}
        assert all(len(times) == 2 and min(times) > 0 for times in row["times_s"].values())
        # The transposed output view is the same BLAS product, written in place: same bits, no copy.
        assert row["checks"]["out_view_bit_equal"] is True
        assert row["checks"]["out_view_traced_bytes"] < 4 * row["m"] * row["n"] or row["m"] * row["n"] < 1024
        # The other orientation sums in another order: equal to rounding only.
        assert row["checks"]["other_orientation_max_rel_diff"] < 1e-5
    assert report["batches"]["3"]["products"] == 17
    assert report["batches"]["3"]["gflop"] * 1e9 == pytest.approx(train_step_flops(3))
    text = markdown_path.read_text()
    assert text.count("\n| 3 | L") == 17
    assert f"Commit {report['machine']['commit']}" in text
    assert "out-view equal to as-is bit for bit: 17/17" in text


def test_bad_arguments_are_refused_in_one_line(capsys):
    bench = _load()
    with pytest.raises(SystemExit) as stop:
        bench.main(["--repeats", "0"])
    assert stop.value.code == 2
    assert "--repeats, --batches and --peak-size must be at least 1" in capsys.readouterr().err
