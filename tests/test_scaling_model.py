"""benchmarks/scaling_model.py: the ring-allreduce cost model, and docs/scaling.md built from it.

The formula is checked against hand-worked cases and against the sum of its rounds; the
crossover against a case worked on paper; the document's tables against the script's
output for the recorded inputs, so the page cannot drift from the model.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from script_loader import load_script

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "scaling.md"
INPUTS = ROOT / "benchmarks" / "results" / "scaling-inputs.json"


def _load_script():
    return load_script(ROOT / "benchmarks" / "scaling_model.py")  # registered: its dataclasses look it up


model = _load_script()

# What a number in the document may be: its own model's output, a measurement (here or by
# someone else, named), a line or link fitted to measurements, a vendor's peak, or an
# assumption stated as such. The first cell of every row of numbers says which.
LABELS = ("modelled", "measured", "fitted", "vendor peak", "assumed")


def test_ring_allreduce_by_hand():
    # N = 2: 2 rounds of alpha, and each rank sends half of M twice: M / beta in all.
    assert model.ring_allreduce_seconds(2, 1000, 1e-6, 1e6) == pytest.approx(2e-6 + 1e-3, rel=1e-12)
    # N = 4: 6 rounds, each moving M/4 = 1000 bytes: 6 alpha + 6 * 1000 / beta.
    assert model.ring_allreduce_seconds(4, 4000, 1e-6, 1e6) == pytest.approx(6e-6 + 6e-3, rel=1e-12)
    # The tutorial's arena on 10 GbE between 2 ranks: 20 us + 4,401,280 / 1.25e9 s = 3.541 ms.
    assert model.ring_allreduce_seconds(2, 4_401_280, 10e-6, 1.25e9) == pytest.approx(3.541024e-3, rel=1e-9)
    assert model.ring_allreduce_seconds(1, 4_401_280, 10e-6, 1.25e9) == 0.0


@given(
    ranks=st.integers(1, 1024),
    message=st.floats(0, 1e10),
    alpha=st.floats(0, 1e-3),
    beta=st.floats(1e6, 1e12),
)
def test_ring_allreduce_is_its_rounds_summed(ranks, message, alpha, beta):
    # reduce-scatter then allgather: N-1 rounds each, every round one message of M/N bytes
    rounds = [alpha + message / ranks / beta] * (2 * (ranks - 1))
    assert model.ring_allreduce_seconds(ranks, message, alpha, beta) == pytest.approx(sum(rounds), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize(("ranks", "message", "alpha", "beta"), [(0, 1, 0, 1), (2, -1, 0, 1), (2, 1, -1e-6, 1), (2, 1, 0, 0)])
def test_ring_allreduce_refuses_impossible_inputs(ranks, message, alpha, beta):
    with pytest.raises(ValueError, match="bytes and times in seconds"):
        model.ring_allreduce_seconds(ranks, message, alpha, beta)


def test_crossover_worked_on_paper():
    # compute(N) = 1 ms x 1024 / N; allreduce(N) = 2 (N-1)/N x 0.1 s (alpha = 0, M / beta = 0.1 s)
    # N = 2: 512 ms vs 100 ms; N = 4: 256 vs 150; N = 8: 128 vs 175 -> 8.
    compute = model.Compute(0.0, 1e-3)
    link = model.Link("paper", 0.0, 1e6, "cpu", "", "")
    assert model.crossover(1024, compute, link, 1e5) == 8
    # a link 100 times faster never crosses up to 256 ranks: 4 ms vs 2 ms at N = 256
    fast = model.Link("fast", 0.0, 1e8, "cpu", "", "")
    assert model.crossover(1024, compute, fast, 1e5) is None


@given(batch=st.sampled_from(model.GLOBAL_BATCHES), link=st.sampled_from(model.DEFAULT_LINKS))
def test_crossover_is_the_first_rank_count_where_communication_wins(batch, link):
    compute = model.Compute(1.75e-3, 26e-6)
    found = model.crossover(batch, compute, link, 4_401_280)
    wins = [n for n in model.RANKS if model.ring_allreduce_seconds(n, 4_401_280, link.alpha, link.beta) > compute.seconds(batch / n)]
    assert found == (wins[0] if wins else None)


def test_step_and_overlap_by_hand():
    # 1 ms fixed + 30 us x 100 local samples (B = 200, N = 2): forward 1 ms, backward 2 ms, overhead 1 ms
    compute = model.Compute(1e-3, 30e-6)
    link = model.Link("l", 0.0, 1e6, "cpu", "", "")  # N = 2: allreduce of m bytes takes m / 1e6 s
    plain = model.step_seconds(2, 200, compute, link, 3000)
    assert plain["step"] == pytest.approx(4e-3 + 3e-3) and plain["samples_per_s"] == pytest.approx(200 / 7e-3)
    # buckets of 1000 and 2000 bytes: 1 ms hides behind 2 ms of backward, the last 2 ms are
    # exposed, and the overhead (the optimizer's pass) comes after them -> 1 + 2 + 2 + 1
    overlap = model.overlapped_step_seconds(2, 200, compute, link, [1000, 2000])
    assert overlap["step"] == pytest.approx(6e-3) and overlap["exposed"] == pytest.approx(2e-3)
    # buckets of 2500 and 500: 2.5 ms outlasts backward by 0.5 -> 1 + 2.5 + 0.5 + 1, exposed 1 ms in all
    # (not just the last bucket's 0.5 ms)
    late = model.overlapped_step_seconds(2, 200, compute, link, [2500, 500])
    assert late["step"] == pytest.approx(5e-3) and late["exposed"] == pytest.approx(1e-3)
    assert late["last_bucket"] == pytest.approx(0.5e-3)


def test_overlapped_crossover_worked_on_paper():
    # per-sample part 1 us x 6000 / N: backward = 4/N ms; the hideable bucket of 1500 bytes
    # (alpha = 0, beta = 1e6) takes 2 (N-1)/N x 1.5 ms = 3 (N-1)/N ms.
    # N = 2: backward 2 ms vs 1.5 ms; N = 4: 1 ms vs 2.25 ms -> 4.
    # The 10 ms overhead must not widen the window: counted as backward (2/3 of it), it
    # would hide 6.7 ms and nothing would cross up to 256 ranks.
    compute = model.Compute(10e-3, 1e-6)
    link = model.Link("paper", 0.0, 1e6, "cpu", "", "")
    assert model.overlapped_crossover(6000, compute, link, [1500, 500]) == 4
    # the plain criterion on the same model: 4 (N-1)/N ms never outlasts 10 ms + 6/N ms
    assert model.crossover(6000, compute, link, 2000) is None
    # no hideable bytes at all: the last bucket is the whole arena, nothing can outlast backward
    assert model.overlapped_crossover(6000, compute, link, [2000]) is None


def test_what_buckets_change_without_latency_and_without_bandwidth_cost():
    compute = model.Compute(1e-3, 1e-6)
    # alpha = 0: the buckets' allreduces add up to the whole arena's, and some of it hides, so
    # overlap never loses; it gains most where the hideable part fills backward exactly
    free_latency = model.Link("bandwidth only", 0.0, 1e6, "cpu", "", "")
    gain, loss = model._bucket_effect(compute, free_latency, 4000, [1000, 1000, 2000])
    assert loss[2] >= loss[3] and gain[2] > gain[3]
    # bandwidth free (beta huge), alpha > 0: every extra bucket only adds 2 (N-1) alpha, so overlap
    # never gains, and it loses most with the most rounds (N = 256) on the shortest compute (B = 256)
    free_bandwidth = model.Link("latency only", 10e-6, 1e30, "cpu", "", "")
    gain, loss = model._bucket_effect(compute, free_bandwidth, 4, [1, 1, 1, 1])
    assert gain[2] <= gain[3] * (1 + 1e-12) and loss[:2] == (256, 256)  # at best a tie (up to rounding)


@given(sizes=st.lists(st.integers(1, 10_000), min_size=1, max_size=20), target=st.integers(1, 20_000))
def test_buckets_keep_every_byte_in_order(sizes, target):
    found = model.buckets(sizes, target)
    assert sum(found) == sum(sizes)
    assert all(size >= target for size in found[:-1])
    assert model.buckets([3, 1, 1, 4], 2) == [3, 2, 4]


@given(
    points=st.lists(
        st.tuples(st.integers(1, 8192), st.floats(1e-4, 1.0)), min_size=3, max_size=10, unique_by=lambda point: point[0]
    )
)
def test_the_line_fit_minimises_the_relative_error(points):
    # at the minimum of sum ((overhead + per_sample b - t) / t)^2 both partial derivatives vanish:
    # sum r_i / t_i^2 = 0 and sum r_i b_i / t_i^2 = 0 with r_i the residual
    batches = np.array([b for b, _ in points], dtype=np.float64)
    times = np.array([t for _, t in points])
    line = model.fit_line(batches, times)
    relative = (line.overhead + line.per_sample * batches - times) / times
    scale = np.sqrt(np.sum(1 / times**2)) * np.sqrt(np.sum((batches / times) ** 2))
    assert abs(np.sum(relative / times)) <= 1e-8 * scale
    assert abs(np.sum(relative * batches / times)) <= 1e-8 * scale


def test_the_line_fit_weighs_small_batches_like_large_ones():
    # points on 1 ms + 10 us x b, but the step at 4,096 measured 10 % slow (46.06 instead of 41.96 ms):
    # an unweighted fit follows that point and misses batch 1 by 9 % (0.92 ms for 1.01 ms), the
    # relative fit spreads the error over the points and misses batch 1 by 1 % (worked with lstsq)
    batches = [1, 16, 256, 4096]
    times = [1e-3 + 10e-6 * b for b in batches]
    times[-1] *= 1.1
    line = model.fit_line(batches, times)
    assert abs(line.seconds(1) / times[0] - 1) < 0.02
    design = np.column_stack([np.ones(4), batches])
    (overhead, per_sample), *_ = np.linalg.lstsq(design, np.array(times), rcond=None)
    assert abs((overhead + per_sample) / times[0] - 1) > 0.08


def test_fits_recover_the_line_and_the_link():
    line = model.fit_line([64, 256, 1024], [1e-3 + 64 * 2e-5, 1e-3 + 256 * 2e-5, 1e-3 + 1024 * 2e-5])
    assert line.overhead == pytest.approx(1e-3, rel=1e-9) and line.per_sample == pytest.approx(2e-5, rel=1e-9)
    times = [model.ring_allreduce_seconds(2, size, 1.5e-6, 1e10) for size in (8, 1 << 20)]
    alpha, beta = model.fit_alpha_beta(2, [8, 1 << 20], times)
    assert alpha == pytest.approx(1.5e-6, rel=1e-6) and beta == pytest.approx(1e10, rel=1e-6)
    with pytest.raises(ValueError, match="measure again"):
        model.fit_alpha_beta(2, [8, 1 << 20], [5e-6, 4e-6])


def test_recorded_arena_is_the_tutorials():
    inputs = json.loads(INPUTS.read_text())
    arena_bytes, layer_bytes = model.tutorial_arena()
    assert inputs["arena_bytes"] == arena_bytes == 4_401_280
    assert inputs["layer_bytes_backward"] == layer_bytes and sum(layer_bytes) == arena_bytes
    assert layer_bytes[-1] == (784 * 784 + 784) * 4  # the first layer's gradients, written last


def test_recorded_lines_are_the_fits_of_their_points():
    inputs = json.loads(INPUTS.read_text())
    for profile in inputs["compute"].values():
        line = model.fit_line([b for b, _ in profile["points"]], [t for _, t in profile["points"]])
        assert profile["line"] == {"overhead": pytest.approx(line.overhead, rel=1e-12), "per_sample": pytest.approx(line.per_sample, rel=1e-12)}


def test_the_documents_tables_are_the_scripts_output():
    inputs = json.loads(INPUTS.read_text())
    assert model.generated_part(DOC.read_text()) == model.markdown(inputs), (
        "docs/scaling.md's tables differ from the model's: run "
        "python benchmarks/scaling_model.py --inputs benchmarks/results/scaling-inputs.json --update-doc docs/scaling.md"
    )


SEPARATOR = re.compile(r"\|[\s\-:|]+\|")


def _unlabelled_rows(text):
    """Table rows holding a digit whose first cell starts with none of the labels; a header
    (the row above a separator) and the separator itself are not rows of numbers."""
    lines = text.splitlines()
    found = []
    for index, line in enumerate(lines):
        if not line.startswith("|") or SEPARATOR.fullmatch(line):
            continue
        if index + 1 < len(lines) and SEPARATOR.fullmatch(lines[index + 1]):
            continue
        first_cell = line.strip("|").split("|")[0].strip()
        if re.search(r"\d", line) and not first_cell.startswith(LABELS):
            found.append(line)
    return found


def test_every_number_in_the_documents_tables_says_what_it_is():
    assert _unlabelled_rows(DOC.read_text()) == []


def test_the_label_check_finds_an_unlabelled_row():
    text = "| kind | N |\n| --- | ---: |\n| modelled | 2 |\n| | 4 |\n"
    assert _unlabelled_rows(text) == ["| | 4 |"]
    # a label further along the row (here in the "what" cell) does not label it
    assert _unlabelled_rows("| kind | what |\n| --- | --- |\n| | measured by hand: 4 |\n") == ["| | measured by hand: 4 |"]
    assert _unlabelled_rows("| kind | N |\n| --- | ---: |\n| TO-MEASURE | 4 |\n") == ["| TO-MEASURE | 4 |"]


def test_command_line_models_from_a_given_line(capsys):
    assert model.main(["--overhead-ms", "2", "--per-sample-us", "25"]) == 0
    out = capsys.readouterr().out
    assert "| modelled | 2 |" in out and "### Where communication outweighs computation" in out
    # N = 1 at batch 256 on that line: 2 ms + 256 x 25 us = 8.4 ms, 30,476 samples/s
    assert "| modelled | 1 | 0 | 8.4 / 30,476 |" in out


def test_command_line_without_a_compute_line_says_what_to_pass(capsys):
    with pytest.raises(SystemExit) as stop:
        model.main([])
    assert stop.value.code == 2
    assert "pass --measure, --overhead-ms and --per-sample-us, or --inputs" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--inputs", "no-such-file.json"], "cannot read --inputs no-such-file.json"),
        (["--measure", "--batches", "64,x"], "is not a comma-separated list of whole numbers"),
        (["--measure", "--batches", "64"], "needs at least two batch sizes"),
        (["--measure", "--rounds", "0"], "is not a whole number of 1 or more"),
    ],
)
def test_command_line_refuses_bad_input_with_the_fix(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        model.main(argv)
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_command_line_refuses_inputs_that_are_not_the_recorded_kind(tmp_path, capsys):
    broken, partial = tmp_path / "broken.json", tmp_path / "partial.json"
    broken.write_text("{not json")
    partial.write_text(json.dumps({"arena_bytes": 1}))
    for path, message in ((broken, "is not JSON"), (partial, "lacks ['layer_bytes_backward'")):
        with pytest.raises(SystemExit) as stop:
            model.main(["--inputs", str(path)])
        assert stop.value.code == 2 and message in capsys.readouterr().err


def test_measure_times_every_batch_in_a_one_thread_child():
    # the plumbing only (one window of one step): which batches came back and that a line was fitted
    profile = model.measure_compute([8, 16], rounds=1, window_steps=1, warmup_steps=1, timeout=120)
    assert [batch for batch, _ in profile["points"]] == [8, 16]
    assert all(seconds > 0 for _, seconds in profile["points"])
    assert set(profile["line"]) == {"overhead", "per_sample"} and "one BLAS thread" in profile["what"]
    # the optimizer's Numba kernels ran on one thread too, and the result says on what
    assert profile["numba_threads"] in (1, None) and "ops=" in profile["ops"]
    assert profile["commit"] in profile["source"] and profile["machine"] in profile["source"]


def _has_mpi() -> bool:
    beside = Path(sys.executable).parent / "mpiexec"
    return (beside.exists() or shutil.which("mpiexec") is not None) and importlib.util.find_spec("mpi4py") is not None


@pytest.mark.mpi
@pytest.mark.skipif(not _has_mpi(), reason='needs mpi4py and mpiexec: pip install "nanoae[mpi]"')
def test_measure_mpi_fits_shared_memory_from_two_ranks():
    fitted = model.measure_shared_memory(model.MPI_FIT_BYTES, repeats=5, timeout=120)
    assert [size for size, _ in fitted["points"]] == list(model.MPI_FIT_BYTES)
    # the fit passes through both points (two sizes, two unknowns)
    for size, seconds in fitted["points"]:
        assert model.ring_allreduce_seconds(2, size, fitted["alpha"], fitted["beta"]) == pytest.approx(seconds, rel=1e-6)
