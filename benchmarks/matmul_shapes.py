"""Each matmul of the tutorial model's training step, timed in the forms that give the same product.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/matmul_shapes.py \
        --json benchmarks/results/cpu-matmul-shapes.json --markdown benchmarks/results/cpu-matmul-shapes.md
    python benchmarks/matmul_shapes.py --batches 8 --repeats 3 --block-ms 0.1   # a quick check that it runs

The step of the tutorial model (784-784-256-128-128-256-784, float32) makes, per layer
with (in, out) weights W on a batch B, ``y = x @ W`` (forward, (B, in) by (in, out)),
``dW = x.T @ dz`` (weight gradient, (in, B) by (B, out)) and ``dx = dz @ W.T`` (input
gradient, (B, out) by (out, in); not for the first layer): 17 products per batch.
Each product is timed in these forms, on random float32 operands in [0, 1):

* ``as-is``: ``np.matmul(a, b, out=c)`` as :mod:`nanoae.ops.cpu` calls it, with the
  process's BLAS threads (2 on a 2-core machine);
* ``out-view``: ``np.matmul(b.T, a.T, out=c.T)``, the same product written through a
  transposed view of the same output (``x.T @ dz`` as ``dz.T @ x`` into ``dW.T``);
* ``other-orientation``: ``np.matmul(b.T, a.T, out=ct)`` into a contiguous (n, m) buffer:
  the product's transpose, which BLAS computes with the operands' roles swapped. The step
  could use it only with its arrays stored transposed, or after the transposing copy:
* ``transpose-copy``: ``np.copyto(c, ct.T)`` alone, that copy's price;
* ``1-thread``: ``as-is`` with BLAS limited to one thread (threadpoolctl; skipped, and
  said so, without it or when the process has one BLAS thread anyway);
* ``out-16`` and ``out-64``: ``as-is`` into an output that starts 16 bytes past a 64-byte
  boundary (where NumPy's allocations start on glibc) and on one: the output's alignment
  alone (``as-is``, ``out-view`` and ``other-orientation`` write where NumPy allocated,
  recorded per product).

Method: every form is called once to warm up; a form's time is a block of calls long
enough to last ``--block-ms``, divided by its calls. The forms take turns (A B C D E A B
C D E ..., the order rotated by one every repeat so that none always follows the same
one), ``--repeats`` times; each form's figure is the median over repeats, its spread the
25th-75th percentiles, and its ratio to ``as-is`` the median of the same-repeat ratios
(above 1: faster than ``as-is``). A form *wins* on a product when its 75th percentile
is below ``as-is``'s 25th (the quartile ranges do not overlap), *loses* in the mirror
case, and is *within spread* otherwise.

Checks recorded beside the times, per product: whether ``out-view`` and ``1-thread``
give ``as-is``'s result bit for bit (the same BLAS products), the bytes traced by
tracemalloc during one ``out-view`` call (a copy of the output would show there), and
the largest difference of ``other-orientation`` from ``as-is`` relative to the largest
entry. Also the price of switching BLAS to one thread and back (the per-call cost of
a per-shape thread choice), and the float32 peak of a 2048^3 product before and after.

The machine is recorded with the figures: the CPU model (lscpu), AVX-512 or not, NumPy,
OpenBLAS's version and kernel (threadpoolctl), the BLAS threads, whether
``OPENBLAS_CORETYPE`` or ``OPENBLAS_L2_SIZE`` were set (they should not be: run with
``env -u``), and the commit (``git describe --always --dirty``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from nanoae.benchmark.competitors import matmul_peak
from nanoae.benchmark.flops import TUTORIAL_WIDTHS, layer_shapes

sys.path.insert(0, str(Path(__file__).resolve().parent))  # provenance.py sits beside this script
import provenance  # noqa: E402

FORMS = ("as-is", "out-view", "other-orientation", "transpose-copy", "1-thread", "out-16", "out-64")
COMPARED = ("out-view", "other-orientation", "1-thread", "out-16", "out-64")  # forms that compute the product themselves
_UNSET = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


# ---- the products ------------------------------------------------------------------------


def step_products(batch: int, widths=TUTORIAL_WIDTHS) -> list[dict]:
    """The step's matmuls: name, layer, kind and (m, k, n) of an (m, k) by (k, n) product.

    ``a_transposed`` / ``b_transposed``: whether the step hands BLAS that operand as a
    transposed view of a C-ordered array (x.T in dW, W.T in dx)."""
    products = []
    for layer, (fan_in, fan_out) in enumerate(layer_shapes(widths), start=1):
        products.append({"layer": layer, "kind": "y = x @ W", "m": batch, "k": fan_in, "n": fan_out, "a_t": False, "b_t": False})
        products.append({"layer": layer, "kind": "dW = x.T @ dz", "m": fan_in, "k": batch, "n": fan_out, "a_t": True, "b_t": False})
        if layer > 1:
            products.append({"layer": layer, "kind": "dx = dz @ W.T", "m": batch, "k": fan_out, "n": fan_in, "a_t": False, "b_t": True})
    for product in products:
        product["batch"] = batch
        product["gflop"] = 2 * product["m"] * product["k"] * product["n"] / 1e9
    return products


def operands(product: dict, rng) -> tuple[np.ndarray, np.ndarray]:
    """Random operands in [0, 1) laid out as the step lays them out (a transposed view
    where the step passes one)."""
    m, k, n = product["m"], product["k"], product["n"]
    a = rng.random((k, m), dtype=np.float32).T if product["a_t"] else rng.random((m, k), dtype=np.float32)
    b = rng.random((n, k), dtype=np.float32).T if product["b_t"] else rng.random((k, n), dtype=np.float32)
    return a, b


def at_offset(shape, offset: int) -> np.ndarray:
    """An uninitialized float32 array whose first element is ``offset`` bytes past a 64-byte boundary."""
    count = int(np.prod(shape))
    raw = np.empty(count * 4 + 128, np.uint8)
    start = -raw.ctypes.data % 64 + offset
    return raw[start : start + count * 4].view(np.float32).reshape(shape)


# ---- BLAS threads ------------------------------------------------------------------------


class BlasThreads:
    """Sets the BLAS libraries' threads through threadpoolctl's controllers (one call
    into each library, no re-scan of the loaded libraries per switch)."""

    def __init__(self) -> None:
        try:
            from threadpoolctl import ThreadpoolController  # noqa: PLC0415
        except ImportError:
            self.controllers, self.why = [], "threadpoolctl is not installed"
            return
        self.controllers = ThreadpoolController().select(user_api="blas").lib_controllers
        self.why = "" if self.controllers else "threadpoolctl finds no BLAS library"

    @property
    def available(self) -> bool:
        return bool(self.controllers)

    def get(self) -> int:
        return min(controller.get_num_threads() for controller in self.controllers) if self.controllers else 1

    def set(self, count: int) -> None:
        for controller in self.controllers:
            controller.set_num_threads(count)

    def info(self) -> list[dict]:
        return [controller.info() for controller in self.controllers]


# ---- timing --------------------------------------------------------------------------------


def _block_seconds(function, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - start) / calls


def _calls_for(function, block_s: float) -> int:
    """Calls that make a block of about ``block_s`` (from a few timed calls after a warm-up)."""
    function()
    one = min(_block_seconds(function, 1) for _ in range(3))
    return max(1, math.ceil(block_s / max(one, 1e-9)))


def quartiles(values) -> tuple[float, float, float]:
    """25th, 50th and 75th percentiles (linear interpolation, as np.percentile)."""
    q25, q50, q75 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return float(q25), float(q50), float(q75)


def verdict(base_times, form_times) -> str:
    """"wins" when the form's 75th percentile is below the baseline's 25th, "loses" in
    the mirror case, else "within spread" (the quartile ranges overlap)."""
    base_q25, _, base_q75 = quartiles(base_times)
    form_q25, _, form_q75 = quartiles(form_times)
    if form_q75 < base_q25:
        return "wins"
    if form_q25 > base_q75:
        return "loses"
    return "within spread"


def _thread_switch_seconds(threads: BlasThreads, base: int, repeats: int = 2001) -> float:
    """Median seconds of one switch to one thread and back."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        threads.set(1)
        threads.set(base)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_product(product: dict, rng, threads: BlasThreads, base_threads: int, repeats: int, block_s: float) -> dict:
    a, b = operands(product, rng)
    m, n = product["m"], product["n"]
    c, c_view_target, ct = np.empty((m, n), np.float32), np.empty((m, n), np.float32), np.empty((n, m), np.float32)
    c16, c64 = at_offset((m, n), 16), at_offset((m, n), 0)
    single = threads.available and base_threads > 1

    def as_is():
        np.matmul(a, b, out=c)

    def out_view():
        np.matmul(b.T, a.T, out=c_view_target.T)

    def other_orientation():
        np.matmul(b.T, a.T, out=ct)

    def transpose_copy():
        np.copyto(c, ct.T)

    def one_thread():
        np.matmul(a, b, out=c)

    def out_16():
        np.matmul(a, b, out=c16)

    def out_64():
        np.matmul(a, b, out=c64)

    functions = {
        "as-is": as_is, "out-view": out_view, "other-orientation": other_orientation, "transpose-copy": transpose_copy,
        "out-16": out_16, "out-64": out_64,
    }  # fmt: skip
    if single:
        functions["1-thread"] = one_thread

    # Checks, before any timing.
    as_is()
    reference = c.copy()
    tracemalloc.start()
    out_view()
    out_view_traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    other_orientation()
    scale = float(np.max(np.abs(reference)))
    checks = {
        "out_view_bit_equal": bool(np.array_equal(c_view_target, reference)),
        "out_view_traced_bytes": int(out_view_traced),
        "other_orientation_max_rel_diff": float(np.max(np.abs(ct.T - reference)) / scale) if scale else 0.0,
        # Where each buffer starts, in bytes past a 64-byte boundary (NumPy's allocator decides
        # for all but out-16 and out-64).
        "offsets_mod_64": {
            "a": a.ctypes.data % 64, "b": b.ctypes.data % 64, "as-is out": c.ctypes.data % 64,
            "out-view out": c_view_target.ctypes.data % 64, "other-orientation out": ct.ctypes.data % 64,
        },
    }
    out_16()
    out_64()
    checks["aligned_outputs_bit_equal"] = bool(np.array_equal(c16, reference) and np.array_equal(c64, reference))
    if single:
        threads.set(1)
        one_thread()
        threads.set(base_threads)
        checks["one_thread_bit_equal"] = bool(np.array_equal(c, reference))

    calls = {}
    for name, function in functions.items():
        if name == "1-thread":
            threads.set(1)
        calls[name] = _calls_for(function, block_s)
        if name == "1-thread":
            threads.set(base_threads)
    times = {name: [] for name in functions}
    names = list(functions)
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            if name == "1-thread":
                threads.set(1)
            times[name].append(_block_seconds(functions[name], calls[name]))
            if name == "1-thread":
                threads.set(base_threads)
    return {**product, "calls_per_block": calls, "times_s": times, "checks": checks}


def summarize_product(row: dict) -> dict:
    """Medians, quartiles, GFLOP/s, same-repeat ratios to as-is and verdicts of one product."""
    times, gflop = row["times_s"], row["gflop"]
    forms = {}
    for name, values in times.items():
        q25, q50, q75 = quartiles(values)
        entry = {"median_s": q50, "q25_s": q25, "q75_s": q75, "gflops": gflop / q50 if name != "transpose-copy" else None}
        if name != "as-is":
            entry["ratio_to_as_is"] = statistics.median(base / value for base, value in zip(times["as-is"], values))
            if name in COMPARED:
                entry["verdict"] = verdict(times["as-is"], values)
        forms[name] = entry
    if "other-orientation" in times:  # what the step would pay: that product plus the copy back
        with_copy = [o + t for o, t in zip(times["other-orientation"], times["transpose-copy"])]
        forms["other-orientation+copy"] = {
            "median_s": statistics.median(with_copy),
            "ratio_to_as_is": statistics.median(base / value for base, value in zip(times["as-is"], with_copy)),
            "verdict": verdict(times["as-is"], with_copy),
        }
    if "out-16" in times and "out-64" in times:  # the output's alignment alone
        forms["out-64"]["ratio_to_out_16"] = statistics.median(o16 / o64 for o16, o64 in zip(times["out-16"], times["out-64"]))
        forms["out-64"]["verdict_vs_out_16"] = verdict(times["out-16"], times["out-64"])
    return forms


def summarize_batch(rows: list[dict]) -> dict:
    """Per batch: the 17 products' as-is medians summed, and what choosing the faster of
    two and one threads for each product (ignoring the switching) would have summed to."""
    batch_summary = {}
    for batch in sorted({row["batch"] for row in rows}):
        mine = [row for row in rows if row["batch"] == batch]
        gflop = sum(row["gflop"] for row in mine)
        as_is = sum(row["summary"]["as-is"]["median_s"] for row in mine)
        entry = {"products": len(mine), "gflop": gflop, "as_is_s": as_is, "as_is_gflops": gflop / as_is}
        for name in ("out-16", "out-64"):
            if all(name in row["summary"] for row in mine):
                entry[f"{name}_s"] = sum(row["summary"][name]["median_s"] for row in mine)
        if all("1-thread" in row["summary"] for row in mine):
            best = sum(min(row["summary"]["as-is"]["median_s"], row["summary"]["1-thread"]["median_s"]) for row in mine)
            only_wins = sum(
                row["summary"]["1-thread"]["median_s"] if row["summary"]["1-thread"]["verdict"] == "wins" else row["summary"]["as-is"]["median_s"]
                for row in mine
            )
            entry.update(best_threads_s=best, one_thread_where_it_wins_s=only_wins)
        batch_summary[str(batch)] = entry
    return batch_summary


# ---- the machine ---------------------------------------------------------------------------


def machine(threads: BlasThreads) -> dict:
    lscpu_model = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                lscpu_model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    flags = ""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        pass
    blas = threads.info()
    return {
        "commit": provenance.commit(),
        "cpu_model": lscpu_model or provenance.cpu_model(),
        "cpus": os.cpu_count(),
        "avx512f": " avx512f" in flags,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": [{key: entry.get(key) for key in ("internal_api", "version", "architecture", "threading_layer", "num_threads", "filepath")} for entry in blas],
        "blas_note": threads.why,
        "environment": {name: os.environ.get(name) for name in (*_UNSET, "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")},
    }


# ---- the report ----------------------------------------------------------------------------


def run(batches, repeats: int, block_ms: float, seed: int = 0, peak_size: int = 2048, progress=print) -> dict:
    threads = BlasThreads()
    base_threads = threads.get()
    rng = np.random.default_rng(seed)
    peaks = [matmul_peak(peak_size, repeats=5)]
    rows = []
    for batch in batches:
        for product in step_products(batch):
            row = measure_product(product, rng, threads, base_threads, repeats, block_ms / 1e3)
            row["summary"] = summarize_product(row)
            rows.append(row)
            progress(_progress_line(row))
    peaks.append(matmul_peak(peak_size, repeats=5))
    switch = _thread_switch_seconds(threads, base_threads) if threads.available and base_threads > 1 else None
    return {
        "machine": machine(threads),
        "settings": {
            "batches": list(batches), "repeats": repeats, "block_ms": block_ms, "seed": seed,
            "peak_size": peak_size, "base_blas_threads": base_threads,
        },
        "peak_gflops": statistics.median(peaks),
        "peaks_gflops": peaks,
        "thread_switch_s": switch,
        "rows": rows,
        "batches": summarize_batch(rows),
    }


def _label(row: dict) -> str:
    return f"L{row['layer']} {row['kind'].split(' ')[0]}"


def _progress_line(row: dict) -> str:
    summary = row["summary"]
    parts = [f"batch {row['batch']:>5} {_label(row):<6} {row['m']}x{row['k']}x{row['n']}: as-is {summary['as-is']['gflops']:6.1f} GFLOP/s"]
    for name in (*COMPARED, "other-orientation+copy"):
        if name in summary:
            parts.append(f"{name} x{summary[name]['ratio_to_as_is']:.2f} ({summary[name]['verdict']})")
    return "; ".join(parts)


def _count(values) -> dict:
    counts: dict = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def _short(verdict_text: str) -> str:
    return {"wins": "**wins**", "loses": "loses", "within spread": "="}[verdict_text]


def markdown(report: dict, command: str = "") -> str:
    mach, settings = report["machine"], report["settings"]
    blas = mach["blas"][0] if mach["blas"] else {}
    lines = [
        "# The tutorial step's matmuls, form by form",
        "",
        f"Commit {mach['commit']}; {mach['cpus']} CPUs, {mach['cpu_model']} (AVX-512: {'yes' if mach['avx512f'] else 'no'}); "
        f"Python {mach['python']}, NumPy {mach['numpy']}, "
        + (f"{blas.get('internal_api')} {blas.get('version')} ({blas.get('architecture')} kernel, {blas.get('threading_layer')}, "
           f"{settings['base_blas_threads']} threads)" if blas else f"BLAS unknown ({mach['blas_note']})")
        + f"; OPENBLAS_CORETYPE={mach['environment']['OPENBLAS_CORETYPE']}, OPENBLAS_L2_SIZE={mach['environment']['OPENBLAS_L2_SIZE']}.",
        f"float32 matmul peak ({settings['peak_size']}^3, before and after): {' / '.join(f'{p:.0f}' for p in report['peaks_gflops'])} GFLOP/s.",
        f"Method: random float32 operands in [0, 1); warm-up; blocks of about {settings['block_ms']} ms; forms alternated, "
        f"order rotated each repeat; {settings['repeats']} repeats; medians. `x` columns: median of the same-repeat ratios "
        "as-is time / form time (above 1 = faster than as-is). Verdict: **wins** / loses when the form's and as-is's "
        "25th-75th percentile ranges do not overlap, `=` when they do.",
    ]
    if command:
        lines.append(f"Command: `{command}`")
    if report["thread_switch_s"] is not None:
        lines.append(f"Switching BLAS to one thread and back (threadpoolctl controller calls): {report['thread_switch_s'] * 1e6:.1f} µs.")
    elif mach["blas_note"]:
        lines.append(f"1-thread form skipped: {mach['blas_note']}.")
    lines += [
        "",
        "| batch | product | m x k x n | as-is GFLOP/s (p25-p75) | out-view x | other-orientation x | its copy back ms "
        "| orientation + copy x | 1-thread x | 1-thread GFLOP/s | out-16 GFLOP/s | out-64 GFLOP/s | out-64 vs out-16 x |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["rows"]:
        s, gflop = row["summary"], row["gflop"]
        as_is = s["as-is"]

        def form(name):
            return f"{s[name]['ratio_to_as_is']:.2f} {_short(s[name]['verdict'])}" if name in s else "–"

        one_thread = f"{form('1-thread')} | {s['1-thread']['gflops']:.0f}" if "1-thread" in s else "– | –"
        aligned = (
            f"{s['out-16']['gflops']:.0f} | {s['out-64']['gflops']:.0f} | "
            f"{s['out-64']['ratio_to_out_16']:.2f} {_short(s['out-64']['verdict_vs_out_16'])}"
        )
        lines.append(
            f"| {row['batch']} | {_label(row)} | {row['m']}x{row['k']}x{row['n']} | "
            f"{as_is['gflops']:.0f} ({gflop / as_is['q75_s']:.0f}-{gflop / as_is['q25_s']:.0f}) | "
            f"{form('out-view')} | {form('other-orientation')} | {s['transpose-copy']['median_s'] * 1e3:.3f} | "
            f"{form('other-orientation+copy')} | {one_thread} | {aligned} |"
        )
    lines += ["", "Per batch, the 17 products' medians summed:", ""]
    lines += [
        "| batch | GFLOP | as-is ms | as-is GFLOP/s | faster of 2/1 threads per product ms | 1 thread only where it wins ms | all out-16 ms | all out-64 ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for batch, entry in report["batches"].items():
        best = f"{entry['best_threads_s'] * 1e3:.3f}" if "best_threads_s" in entry else "–"
        wins = f"{entry['one_thread_where_it_wins_s'] * 1e3:.3f}" if "one_thread_where_it_wins_s" in entry else "–"
        lines.append(
            f"| {batch} | {entry['gflop']:.3f} | {entry['as_is_s'] * 1e3:.3f} | {entry['as_is_gflops']:.0f} | {best} | {wins} | "
            f"{entry['out-16_s'] * 1e3:.3f} | {entry['out-64_s'] * 1e3:.3f} |"
        )
    checks = [row["checks"] for row in report["rows"]]
    lines += [
        "",
        "Checks over all products: out-view equal to as-is bit for bit: "
        f"{sum(c['out_view_bit_equal'] for c in checks)}/{len(checks)}; bytes traced during one out-view call: "
        f"at most {max(c['out_view_traced_bytes'] for c in checks)}; 1-thread equal bit for bit: "
        + (f"{sum(c['one_thread_bit_equal'] for c in checks if 'one_thread_bit_equal' in c)}/{sum('one_thread_bit_equal' in c for c in checks)}"
           if any("one_thread_bit_equal" in c for c in checks) else "not measured")
        + f"; other-orientation's largest difference from as-is, relative to the largest entry: {max(c['other_orientation_max_rel_diff'] for c in checks):.1e}"
        + f"; out-16 and out-64 equal bit for bit: {sum(c['aligned_outputs_bit_equal'] for c in checks)}/{len(checks)}"
        + "; as-is output's offset past a 64-byte boundary (bytes: products): "
        + ", ".join(f"{offset}: {count}" for offset, count in sorted(_count(c["offsets_mod_64"]["as-is out"] for c in checks).items()))
        + ".",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="time each matmul of the tutorial step in the forms that give the same product")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=41, help="turns of every form per product (medians over these)")
    parser.add_argument("--block-ms", type=float, default=2.0, help="length of one timed block of calls")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-size", type=int, default=2048, help="n of the n^3 product that measures the peak")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.block_ms <= 0 or min(args.batches) < 1 or args.peak_size < 1:
        parser.error("--repeats, --batches and --peak-size must be at least 1 and --block-ms above 0")
    for name in _UNSET:
        if os.environ.get(name) is not None:
            print(f"warning: {name}={os.environ[name]} is set; OpenBLAS may not pick this CPU's kernel (run with env -u {name})", file=sys.stderr)
    report = run(args.batches, args.repeats, args.block_ms, args.seed, args.peak_size)
    command = "python benchmarks/matmul_shapes.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report["command"] = command
    text = markdown(report, command)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
