"""benchmarks/mpi_step.py: the report's arithmetic, and one tiny real run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from mpi_helpers import needs_mpi, run_job
from script_loader import load_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "mpi_step.py"


def _load():
    return load_script(SCRIPT)


def _step(round_number, competitor, step_ms, batch=256):
    return {"what": "step", "round": round_number, "competitor": competitor, "batch": batch, "step_ms": step_ms}


def test_medians_over_rounds_and_same_round_ratios():
    bench = _load()
    rows = []
    # step ms per round: n1-1blas, n1-2blas, n2, n2-buckets
    for round_number, times in enumerate([(12.0, 8.0, 8.0, 6.0), (10.0, 7.0, 9.0, 9.0), (14.0, 6.0, 6.0, 5.0)]):
        rows.append({"what": "allreduce", "round": round_number, "bytes": 4_401_280, "median_ms": [0.5, 0.4, 0.6][round_number]})
        rows += [_step(round_number, name, value) for name, value in zip(bench.COMPETITORS, times)]
    summary = bench.summarize(rows, [256], bench.COMPETITORS)
    assert summary["allreduce"]["median_ms"] == 0.5
    entries = {entry["competitor"]: entry for entry in summary["steps"]}
    assert entries["n1-1blas"]["step_ms"] == 12.0 and entries["n1-1blas"]["rounds_ms"] == [12.0, 10.0, 14.0]
    assert entries["n2"]["step_ms"] == 8.0
    assert entries["n2"]["samples_per_s"] == pytest.approx(256 / 8.0e-3)
    # same-round ratios 12/8, 10/9, 14/6 -> median 1.5 (the ratio of the medians would also be 1.5,
    # but n1-2blas against n2: 8/8, 7/9, 6/6 -> median 1.0, while 7/8 is the ratio of medians)
    assert entries["n2"]["speedup_vs_n1-1blas"] == pytest.approx(1.5)
    assert entries["n2"]["speedup_vs_n1-2blas"] == pytest.approx(1.0)
    # buckets: 8/6, 9/9, 6/5 -> median 1.2
    assert summary["buckets_speedup"] == {"n2-buckets": {"256": pytest.approx(1.2)}}
    table = bench.table({"summary": summary, "settings": {"bucket_bytes": 1 << 18}})
    assert "| 256 | n2 | 2 | 1 | 8.00 | 6.00-9.00 | 32,000 | 1.50 | 1.00 |" in table
    assert "(4,401,280 bytes), 2 ranks: median 0.500 ms (rounds 0.40-0.60 ms), 8.80 GB/s" in table
    assert "batch 256: n2-buckets (262,144-byte buckets) vs n2 (one allreduce): 1.200x" in table


@needs_mpi
def test_a_tiny_run_measures_every_competitor_and_writes_json(tmp_path):
    out = tmp_path / "mpi-step.json"
    command = [
        sys.executable, str(SCRIPT), "--rounds", "1", "--batch", "16", "--windows", "2", "--window-steps", "2",
        "--warmup-steps", "1", "--allreduce-repeats", "3", "--allreduce-warmup", "1", "--timeout", "120", "--out", str(out),
    ]
    result = run_job(command, limit=400)  # NANOAE_MPI_TIMEOUT=30 reaches every rank it starts
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    steps = [row for row in report["rows"] if row["what"] == "step"]
    assert [row["competitor"] for row in steps] == ["n1-1blas", "n1-2blas", "n2", "n2-buckets"]
    assert [row["ranks"] for row in steps] == [1, 1, 2, 2] and [row["blas_threads"] for row in steps] == [1, 2, 1, 1]
    assert [row["bucket_bytes"] for row in steps] == [None, None, None, 1 << 18]
    assert all(row["step_ms"] > 0 and row["timed_steps"] == 4 for row in steps)
    # Numba's threads follow each competitor's (the optimizer's kernels are parallel), and the ops table is named
    numba = importlib.util.find_spec("numba") is not None
    assert [row["numba_threads"] for row in steps] == ([1, 2, 1, 1] if numba else [None] * 4)
    assert all("ops=" in row["ops"] for row in steps)
    assert report["machine"]["commit"] not in ("", "unknown") and report["machine"]["cpu_model"]
    (reduce,) = [row for row in report["rows"] if row["what"] == "allreduce"]
    assert reduce["bytes"] == 4 * 1_100_320 and reduce["ranks"] == 2 and reduce["median_ms"] > 0
    assert "| 16 | n2-buckets | 2 | 1 |" in result.stdout
