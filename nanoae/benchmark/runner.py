"""Run the benchmark: competitors in separate processes, alternating, several rounds.

For each round, every competitor runs in its own process, in the same order each
round so that neighbours alternate, plus a float32 matmul-peak probe. On the CPU a
process measures one batch size; with ``batches_per_process`` (the GPU benchmark) one
process per competitor measures every batch size. The environment of every process
has ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` removed (they force a slower
OpenBLAS kernel on some CPUs). The report gives, per competitor and batch: the median
steps/s over rounds and its min-max, samples/s, the ratio to the baseline competitor
(TensorFlow's ``tf.function`` on the CPU, PyTorch CUDA eager on the GPU), the achieved
GFLOP/s and its share of the measured matmul peak, and peak memory.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from nanoae.benchmark.competitors import FRAMEWORKS
from nanoae.benchmark.flops import inference_flops, train_step_flops
from nanoae.plot import require_matplotlib

DEFAULT_FRAMEWORKS = ("nanoae", "nanoae-reference", "tf-function", "tf-xla", "keras", "torch-eager", "torch-compile")
QUICK_FRAMEWORKS = ("nanoae", "nanoae-reference", "tf-function", "torch-eager")
_UNSET = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
GPU_DEFAULT_FRAMEWORKS = ("nanoae-cupy", "torch-cuda-eager", "torch-cuda-graphs", "jax-jit")
_REQUIRES = {
    "tf-function": "tensorflow",
    "tf-xla": "tensorflow",
    "keras": "tensorflow",
    "torch-eager": "torch",
    "torch-compile": "torch",
    "nanoae-cupy": "cupy",
    "torch-cuda-eager": "torch",
    "torch-cuda-graphs": "torch",
    "jax-jit": "jax",
}


def available(framework: str) -> bool:
    module = _REQUIRES.get(framework)
    return module is None or importlib.util.find_spec(module) is not None


def _worker_results(arguments: list[str], timeout: float, expected: int = 1) -> list[dict]:
    """The NANOAE-BENCH lines of one worker process, padded to ``expected`` entries with
    {"error": ...} for the measurements it did not report (a crash part-way through a
    several-batch worker loses only the batches it had not reached)."""
    environment = {key: value for key, value in os.environ.items() if key not in _UNSET}
    command = [sys.executable, "-m", "nanoae.benchmark.worker", *arguments]
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [{"error": f"timed out after {timeout:.0f} s"} for _ in range(expected)]
    found = [json.loads(line[len("NANOAE-BENCH ") :]) for line in result.stdout.splitlines() if line.startswith("NANOAE-BENCH ")]
    if len(found) < expected:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        error = f"exit {result.returncode}: " + " | ".join(tail)
        found += [{"error": error} for _ in range(expected - len(found))]
    return found


def _worker(arguments: list[str], timeout: float) -> dict:
    return _worker_results(arguments, timeout)[0]


def machine_description() -> dict:
    description = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    description["cpu"] = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    description["simd"] = "avx512f" if "avx512f" in flags else ("avx2" if "avx2" in flags else "other")
                    break
    except OSError:
        pass
    description["numpy"] = np.__version__
    return description


def run(
    frameworks=DEFAULT_FRAMEWORKS,
    batches=(64, 256, 1024, 4096),
    modes=("train",),
    rounds: int = 3,
    warmup: float = 2.0,
    windows: int = 5,
    window: float = 1.0,
    log=print,
    peak_probe: str = "matmul-peak",
    baseline: str = "tf-function",
    batches_per_process: bool = False,
    memory_steps: int = 0,
) -> dict:
    """Measure; return {"machine", "rows" (one per measurement), "summary" (medians)}.

    memory_steps: in round 1 only (memory does not need alternating), each worker keeps
    stepping after its timed windows until its RSS growth covers that many steps (or 20 s
    have passed; the row's ``rss_steps`` says how many).

    batches_per_process: one process per competitor and round measures every batch size
    (the GPU benchmark: it saves a framework start-up and CUDA initialization per batch).
    """
    frameworks = list(frameworks)
    missing = [name for name in frameworks if not available(name)]
    for name in missing:
        log(f"skipping {name}: {_REQUIRES[name]} is not installed (pip install 'nanoae[bench]')")
    frameworks = [name for name in frameworks if name not in missing]
    rows, peaks = [], []
    for round_index in range(1, rounds + 1):
        peak = _worker(["--framework", peak_probe], timeout=300)
        if "gflops" in peak:
            peaks.append(peak["gflops"])
            log(f"round {round_index}: float32 matmul peak ({peak_probe}) {peak['gflops']:.0f} GFLOP/s")
        timing = ["--warmup", str(warmup), "--windows", str(windows), "--window", str(window)]
        if round_index == 1 and memory_steps:
            timing += ["--memory-steps", str(memory_steps)]
        for mode in modes:
            if batches_per_process:
                jobs = [(framework, list(batches)) for framework in frameworks]
            else:
                jobs = [(framework, [batch]) for batch in batches for framework in frameworks]
            for framework, job_batches in jobs:
                arguments = ["--framework", framework, "--mode", mode, *[part for batch in job_batches for part in ("--batch", str(batch))], *timing]
                results = _worker_results(arguments, timeout=600, expected=len(job_batches))
                for batch, result in zip(job_batches, results):
                    result.update({"framework": framework, "mode": mode, "batch": batch, "round": round_index})
                    rows.append(result)
                    if "error" in result:
                        log(f"round {round_index} {mode} batch {batch} {framework}: FAILED {result['error']}")
                    else:
                        log(f"round {round_index} {mode} batch {batch} {framework}: {result['steps_per_s']:.1f} steps/s {result.get('info', {})}")
    peak_gflops = statistics.median(peaks) if peaks else float("nan")
    return {
        "machine": machine_description(),
        "matmul_peak_gflops": peak_gflops,
        "matmul_peaks": peaks,
        "peak_probe": peak_probe,
        "baseline": baseline,
        "rows": _finish_rows(rows, peak_gflops),
        "summary": summarize(rows, peak_gflops, baseline),
    }


def _flops(mode: str, batch: int) -> int:
    return train_step_flops(batch) if mode == "train" else inference_flops(batch)


def _finish_rows(rows: list[dict], peak_gflops: float) -> list[dict]:
    """Fill the per-measurement fields the JSON promises."""
    for row in rows:
        if "error" in row:
            continue
        row["samples_per_s"] = row["steps_per_s"] * row["batch"]
        row["gflops"] = row["steps_per_s"] * _flops(row["mode"], row["batch"]) / 1e9
        row["peak_fraction"] = row["gflops"] / peak_gflops if peak_gflops == peak_gflops else None
    return rows


def summarize(rows: list[dict], peak_gflops: float, baseline: str = "tf-function") -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if "error" not in row:
            groups.setdefault((row["mode"], row["batch"], row["framework"]), []).append(row)
    summary = []
    for (mode, batch, framework), measured in groups.items():
        rates = [row["steps_per_s"] for row in measured]
        memory = max(measured, key=lambda row: row["rss_steps"])
        median = statistics.median(rates)
        gflops = median * _flops(mode, batch) / 1e9
        summary.append(
            {
                "framework": framework,
                "mode": mode,
                "batch": batch,
                "rounds": len(rates),
                "steps_per_s": median,
                "steps_per_s_min": min(rates),
                "steps_per_s_max": max(rates),
                "samples_per_s": median * batch,
                "gflops": gflops,
                "peak_fraction": gflops / peak_gflops if peak_gflops == peak_gflops else None,
                "peak_rss_mib": statistics.median(row["peak_rss_mib"] for row in measured),
                # from the measurement that covers the most steps (round 1's memory run)
                "rss_growth_mib": memory["rss_growth_mib"],
                "rss_steps": memory["rss_steps"],
                "info": measured[0].get("info", {}),
            }
        )
    for entry in summary:
        reference = [other for other in summary if other["framework"] == baseline and other["mode"] == entry["mode"] and other["batch"] == entry["batch"]]
        entry["vs_baseline"] = entry["steps_per_s"] / reference[0]["steps_per_s"] if reference else None
        entry["vs_tf_function"] = entry["vs_baseline"] if baseline == "tf-function" else None
    order = {name: index for index, name in enumerate(DEFAULT_FRAMEWORKS + GPU_DEFAULT_FRAMEWORKS)}
    summary.sort(key=lambda e: (e["mode"], e["batch"], order.get(e["framework"], 99), e["framework"]))
    return summary


def markdown_table(result: dict) -> str:
    probe = result.get("peak_probe", "matmul-peak")
    what = "cuBLAS through CuPy, 8192^3" if probe == "cublas-peak" else "NumPy, 2048^3"
    baseline = result.get("baseline", "tf-function")
    lines = [
        f"float32 matmul peak ({what}, median of {len(result['matmul_peaks'])} probes): "
        f"{result['matmul_peak_gflops']:.0f} GFLOP/s",
        "",
        f"| mode | batch | framework | steps/s (median) | min-max | samples/s | x {baseline} | GFLOP/s | % of matmul peak | peak RSS MiB | RSS growth MiB (over steps) |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for entry in result["summary"]:
        ratio = f"{entry['vs_baseline']:.2f}" if entry.get("vs_baseline") else "-"
        share = f"{100 * entry['peak_fraction']:.0f} %" if entry["peak_fraction"] is not None else "-"
        lines.append(
            f"| {entry['mode']} | {entry['batch']} | {entry['framework']} | {entry['steps_per_s']:.1f} | "
            f"{entry['steps_per_s_min']:.1f}-{entry['steps_per_s_max']:.1f} | {entry['samples_per_s']:,.0f} | {ratio} | "
            f"{entry['gflops']:.0f} | {share} | {entry['peak_rss_mib']:.0f} | {entry['rss_growth_mib']:.1f} ({entry.get('rss_steps', 0):,}) |"
        )
    return "\n".join(lines)


def chart(result: dict, path) -> Path:
    plt = require_matplotlib()
    train = [entry for entry in result["summary"] if entry["mode"] == "train"] or result["summary"]
    batches = sorted({entry["batch"] for entry in train})
    frameworks = [name for name in DEFAULT_FRAMEWORKS if any(entry["framework"] == name for entry in train)]
    frameworks += sorted({entry["framework"] for entry in train} - set(frameworks))
    figure, axis = plt.subplots(figsize=(9, 4.8))
    width = 0.8 / max(1, len(frameworks))
    for index, name in enumerate(frameworks):
        values, errors_low, errors_high = [], [], []
        for batch in batches:
            found = [entry for entry in train if entry["framework"] == name and entry["batch"] == batch]
            median = found[0]["samples_per_s"] if found else 0.0
            values.append(median)
            errors_low.append(median - found[0]["steps_per_s_min"] * batch if found else 0.0)
            errors_high.append(found[0]["steps_per_s_max"] * batch - median if found else 0.0)
        positions = np.arange(len(batches)) + (index - (len(frameworks) - 1) / 2) * width
        axis.bar(positions, values, width, label=name, yerr=[errors_low, errors_high], capsize=2)
    axis.set_xticks(np.arange(len(batches)), [str(batch) for batch in batches])
    axis.set_xlabel("batch size")
    axis.set_ylabel("training samples / s (median, min-max)")
    machine = result["machine"]
    if result.get("peak_probe") == "cublas-peak":
        devices = {entry.get("info", {}).get("device") for entry in result["summary"]} - {None}
        where = ", ".join(sorted(devices)) or "GPU"
    else:
        where = f"{machine.get('cpus')} CPUs ({machine.get('cpu', '?')}, {machine.get('simd', '?')})"
    axis.set_title(f"tutorial autoencoder, float32, {where}")
    axis.legend(fontsize=8, ncol=2)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="nanoae bench", description="nanoae against TensorFlow, PyTorch and (on a GPU) JAX on the tutorial model")
    add_arguments(parser)
    return run_from_arguments(parser.parse_args(argv))


def add_arguments(parser) -> None:
    parser.add_argument("--gpu", action="store_true", help="the GPU competitors (nanoae-cupy, torch CUDA eager and graphs, JAX jit) against a cuBLAS peak; default batches 256 1024 8192")
    parser.add_argument("--quick", action="store_true", help="batch 256, 2 rounds, short windows, 4 competitors: under two minutes")
    parser.add_argument("--batch-size", type=int, action="append", dest="batch_sizes", help="batch size (repeatable; default 64 256 1024 4096)")
    parser.add_argument("--framework", action="append", dest="frameworks", help=f"competitor (repeatable; default: {' '.join(DEFAULT_FRAMEWORKS)})")
    parser.add_argument("--mode", choices=("train", "infer", "both"), default=None, help="training steps, inference (encode + decode), or both (default: both; --quick: train)")
    parser.add_argument("--rounds", type=int, help="rounds of alternating runs (default 3; --quick 2)")
    parser.add_argument("--json", metavar="PATH", help="write every measurement as JSON")
    parser.add_argument("--chart", metavar="PATH", help="write a PNG bar chart")
    parser.add_argument("--markdown", metavar="PATH", help="write the table as Markdown")
    parser.add_argument("--memory-steps", type=int, help="round 1 measures RSS growth over at least this many steps, up to 20 s more a worker (default 1000; --quick and --gpu: 0)")


def run_from_arguments(args) -> int:
    gpu = getattr(args, "gpu", False)
    frameworks = args.frameworks or (GPU_DEFAULT_FRAMEWORKS if gpu else (QUICK_FRAMEWORKS if args.quick else DEFAULT_FRAMEWORKS))
    unknown = [name for name in frameworks if name not in FRAMEWORKS]
    if unknown:
        raise ValueError(f"unknown framework(s) {unknown}; choose from {', '.join(FRAMEWORKS)}")
    batches = args.batch_sizes or ((256,) if args.quick else ((256, 1024, 8192) if gpu else (64, 256, 1024, 4096)))
    if any(batch < 1 for batch in batches):
        raise ValueError("batch sizes must be >= 1")
    mode = args.mode or ("train" if args.quick else "both")
    modes = ("train", "infer") if mode == "both" else (mode,)
    rounds = args.rounds or (2 if args.quick else 3)
    if rounds < 1:
        raise ValueError("--rounds must be >= 1")
    if args.quick:
        timing = {"warmup": 0.5, "windows": 3, "window": 0.4}
    elif gpu:  # a GPU step takes microseconds: short windows still time hundreds of steps
        timing = {"warmup": 0.5, "windows": 3, "window": 0.3}
    else:
        timing = {"warmup": 2.0, "windows": 5, "window": 1.0}
    memory_steps = args.memory_steps if getattr(args, "memory_steps", None) is not None else (0 if args.quick or gpu else 1000)
    if memory_steps < 0:
        raise ValueError("--memory-steps must be >= 0")
    started = time.time()
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    result = run(
        frameworks,
        batches,
        modes,
        rounds,
        log=log,
        peak_probe="cublas-peak" if gpu else "matmul-peak",
        baseline="torch-cuda-eager" if gpu else "tf-function",
        batches_per_process=gpu,
        memory_steps=memory_steps,
        **timing,
    )
    result["settings"] = {
        "frameworks": list(frameworks),
        "batches": list(batches),
        "modes": list(modes),
        "rounds": rounds,
        **timing,
        "memory_steps": memory_steps,
        "quick": bool(args.quick),
    }
    result["elapsed_s"] = time.time() - started
    print(markdown_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result["rows"], indent=1) + "\n")
        Path(args.json).with_suffix(".full.json").write_text(json.dumps(result, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown_table(result) + "\n")
    if args.chart:
        chart(result, args.chart)
    log(f"done in {result['elapsed_s']:.0f} s")
    return 0
