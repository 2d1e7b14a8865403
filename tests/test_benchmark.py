"""The benchmark harness: FLOP counts, the report's arithmetic, and a real worker run."""

import json
import subprocess
import sys

import numpy as np
import pytest

from nanoae.benchmark import flops, runner


def test_tutorial_flops_match_the_hand_count():
    # sum of in*out over the six layers = 1,097,984; forward and dW for all, dx for five
    assert flops.train_step_flops(256) == 1_371_799_552
    assert flops.train_step_flops(64) == 342_949_888
    assert flops.inference_flops(256) == 2 * 256 * 1_097_984


def test_summary_medians_ratios_and_peak_share():
    rows = []
    for round_index, (ours, theirs) in enumerate([(300.0, 150.0), (280.0, 160.0), (320.0, 140.0)], start=1):
        for name, rate in (("nanoae", ours), ("tf-function", theirs)):
            # round 1 ran the memory steps: its growth is the one reported, with its step count
            memory = {"rss_growth_mib": 0.25, "rss_steps": 1000} if round_index == 1 else {"rss_growth_mib": 1.5, "rss_steps": 300}
            rows.append({"framework": name, "mode": "train", "batch": 256, "round": round_index, "steps_per_s": rate, "peak_rss_mib": 100.0, **memory})
    summary = {entry["framework"]: entry for entry in runner.summarize(rows, peak_gflops=500.0)}
    assert summary["nanoae"]["steps_per_s"] == 300.0 and summary["nanoae"]["steps_per_s_min"] == 280.0
    assert summary["nanoae"]["vs_tf_function"] == pytest.approx(2.0)
    assert summary["nanoae"]["gflops"] == pytest.approx(300.0 * 1.371799552)
    assert summary["nanoae"]["peak_fraction"] == pytest.approx(300.0 * 1.371799552 / 500.0)
    assert summary["nanoae"]["rss_growth_mib"] == 0.25 and summary["nanoae"]["rss_steps"] == 1000
    table = runner.markdown_table({"summary": list(summary.values()), "matmul_peak_gflops": 500.0, "matmul_peaks": [500.0]})
    assert "| train | 256 | nanoae | 300.0 | 280.0-320.0 |" in table and "2.00" in table and "| 0.2 (1,000) |" in table


def test_a_worker_that_dies_part_way_reports_the_batches_it_did_not_reach(monkeypatch):
    # A several-batch GPU worker that measured batch 256 and then ran out of memory.
    measured = {"steps_per_s": 10.0, "peak_rss_mib": 1.0, "rss_growth_mib": 0.0, "rss_steps": 5}
    stdout = "NANOAE-BENCH " + json.dumps(measured) + "\n"
    died = subprocess.CompletedProcess([], 1, stdout=stdout, stderr="Traceback ...\nMemoryError: out of memory\n")
    monkeypatch.setattr(runner.subprocess, "run", lambda *args, **kwargs: died)
    monkeypatch.setattr(runner, "available", lambda name: True)
    logged = []
    result = runner.run(["nanoae"], batches=(256, 1024, 8192), rounds=1, log=logged.append, batches_per_process=True)
    rows = [row for row in result["rows"] if row["framework"] == "nanoae"]
    assert [row["batch"] for row in rows] == [256, 1024, 8192]
    assert rows[0]["steps_per_s"] == 10.0 and "error" not in rows[0]
    assert all("exit 1" in row["error"] and "out of memory" in row["error"] for row in rows[1:])
    assert sum("FAILED" in line for line in logged) == 2
    assert [entry["batch"] for entry in result["summary"]] == [256]


def test_summary_ratios_against_another_baseline():
    rows = [
        {"framework": name, "mode": "train", "batch": 256, "round": 1, "steps_per_s": rate, "peak_rss_mib": 1.0, "rss_growth_mib": 0.0, "rss_steps": 1}
        for name, rate in (("nanoae-cupy", 300.0), ("torch-cuda-eager", 100.0))
    ]
    summary = {entry["framework"]: entry for entry in runner.summarize(rows, 1000.0, baseline="torch-cuda-eager")}
    assert summary["nanoae-cupy"]["vs_baseline"] == pytest.approx(3.0)
    assert summary["torch-cuda-eager"]["vs_baseline"] == pytest.approx(1.0)
    assert summary["nanoae-cupy"]["vs_tf_function"] is None


def test_worker_measures_nanoae_in_its_own_process():
    command = [sys.executable, "-m", "nanoae.benchmark.worker", "--framework", "nanoae", "--batch", "32", "--warmup", "0.1", "--windows", "2", "--window", "0.1", "--memory-steps", "200"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    line = [text for text in result.stdout.splitlines() if text.startswith("NANOAE-BENCH ")][-1]
    measured = json.loads(line.split(" ", 1)[1])
    assert measured["framework"] == "nanoae" and measured["batch"] == 32
    assert measured["steps_per_s"] > 0 and len(measured["window_rates"]) == 2
    assert measured["timed_steps"] >= 6  # at least 3 steps a window
    assert measured["rss_steps"] >= 200  # the memory steps ran on past the timed ones (20 s budget)
    assert measured["peak_rss_mib"] > 10
    assert measured["info"]["ops"].startswith("cpu-")


def test_bench_command_writes_json_rows(tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "nanoae", "bench", "--quick", "--framework", "nanoae", "--rounds", "1", "--batch-size", "16", "--memory-steps", "50", "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())
    assert {"framework", "batch", "steps_per_s", "samples_per_s", "gflops", "peak_fraction", "peak_rss_mib", "round"} <= set(rows[0])
    assert "| train | 16 | nanoae |" in result.stdout
    assert rows[0]["rss_steps"] >= 50 and f"({rows[0]['rss_steps']:,}) |" in result.stdout


def test_bench_rejects_unknown_frameworks(capsys):
    from nanoae.cli import main

    assert main(["bench", "--framework", "mxnet"]) == 2
    assert "unknown framework" in capsys.readouterr().err


def test_profile_splits_the_step_into_matmuls_and_the_rest(capsys):
    from nanoae.benchmark import profile

    result = profile.profile(batch=16, steps=2, rounds=2)
    assert result["step_s"] > 0 and result["matmul_floor_s"] > 0 and result["peak_gflops"] > 0
    assert result["gflop"] == pytest.approx(flops.train_step_flops(16) / 1e9)
    # every kind of work in the step was seen through the ops table
    assert {"dense_forward", "dense_backward", "mse_loss_and_grad", "rmsprop_update"} <= set(result["per_op_s"])
    assert profile.main(["--batch", "16", "--steps", "2", "--rounds", "1"]) == 0
    report = capsys.readouterr().out
    assert "its matmuls alone" in report and "% of peak" in report and "rmsprop_update" in report


def test_profile_can_start_from_a_long_runs_optimizer_state(capsys):
    from nanoae.benchmark import profile

    # 900 steps: past the ~830 at which dead units' mean squares would turn subnormal
    result = profile.profile(batch=16, steps=2, rounds=1, warm_steps=900)
    assert result["warm_steps"] == 900  # the model's own step count when timing began
    assert result["subnormal_state"] == 0  # flushed as written (reference.flush_subnormals)
    assert profile.main(["--batch", "16", "--steps", "2", "--rounds", "1", "--warm-steps", "5"]) == 0
    assert "after 5 warm-up steps; subnormal optimizer state entries: 0" in capsys.readouterr().out


def test_the_profile_counts_subnormal_optimizer_state():
    from nanoae import presets
    from nanoae.benchmark import profile

    model = presets.tutorial(seed=0)
    state = model.optimizer.state["mean_square"]
    state[:5] = np.float32(1e-40)  # subnormal
    state[5:8] = 0.0  # zero: not counted
    state[8] = np.float32(np.finfo(np.float32).tiny)  # the smallest normal: not counted
    assert profile._subnormal_state(model) == 5
