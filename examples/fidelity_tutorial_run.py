"""The tutorial's training run in nanoae and in TensorFlow 1 semantics, side by side.

Both start from the same initial weights (nanoae's ``tutorial`` preset, seed 0) and
see the same MNIST batches in the same order. TensorFlow runs the tutorial's own
program shape: a ``tf.compat.v1`` graph with a placeholder, ``tf.nn.relu(x @ W + b)``
layers, ``tf.reduce_mean(tf.square(x_hat - x))`` and
``tf.compat.v1.train.RMSPropOptimizer(0.001).minimize(loss)``, run step by step in a
``tf.compat.v1.Session``. nanoae runs ``model.train_step`` on the same arrays.

Writes into ``--out`` (default ``docs/``):

* ``tf-vs-nanoae-loss.png``  both loss curves, and their relative difference per step
  beside that of nanoae against itself started from weights moved by one float32 ulp;
* ``tf-vs-nanoae-loss.csv``  step, nanoae loss, TensorFlow loss, relative difference, nudged loss;

and prints the largest differences (loss per step, weights at the end).

    python examples/fidelity_tutorial_run.py --data ../shared/data/mnist

Needs ``pip install -e ".[oracle,viz]"`` (TensorFlow and matplotlib).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the output

import nanoae  # noqa: E402
from nanoae.data import BatchSampler, load_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def tutorial_batches(images: np.ndarray, steps: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """The batch order both sides use: TF1 next_batch order from a seeded generator."""
    sampler = BatchSampler(images.shape[0], batch_size, seed=seed)
    return [np.ascontiguousarray(images[sampler.next_indices()]) for _ in range(steps)]


def run_nanoae(batches, seed: int = 0, fast=None, nudge: bool = False):
    """(initial parameters, losses per step, final parameters) of nanoae's tutorial preset.

    nudge: move every initial parameter by about one float32 ulp (times 1 +- 2^-23, signs
    drawn at random) first: the yardstick for how far float32 rounding alone carries a run.
    """
    model = nanoae.presets.tutorial(seed=seed, backend="numpy", fast=fast)
    if nudge:
        signs = np.random.default_rng(seed + 1).choice([-1.0, 1.0], size=model.arena.size)
        model.arena.values *= (1 + signs * 2.0**-23).astype(model.arena.values.dtype)
    initial = {name: np.array(view) for name, view in model.parameters().items()}
    losses = [float(model.train_step(x)) for x in batches]
    final = {name: np.array(view) for name, view in model.parameters().items()}
    return initial, np.array(losses), final


def run_tf1(batches, initial: dict, lr: float = 0.001, momentum: float = 0.0):
    """(losses per step, final parameters) of the tutorial model in a TF1 graph and session.

    initial: nanoae's parameters by name ("encoder.0.weights" (in, out), "encoder.0.bias", ...),
    taken as the initial values of the graph's variables, in nanoae's layer order.
    """
    import tensorflow as tf  # noqa: PLC0415

    names = list(initial)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, shape=(None, 784))
        variables = [tf.Variable(initial[name], name=name.replace(".", "_")) for name in names]
        hidden = x
        for index in range(0, len(variables), 2):
            hidden = tf.nn.relu(tf.matmul(hidden, variables[index]) + variables[index + 1])
        loss = tf.reduce_mean(tf.square(hidden - x))
        train_op = tf.compat.v1.train.RMSPropOptimizer(lr, momentum=momentum).minimize(loss)
        init = tf.compat.v1.global_variables_initializer()
    losses = []
    with tf.compat.v1.Session(graph=graph) as session:
        session.run(init)
        for batch in batches:
            value, _ = session.run([loss, train_op], feed_dict={x: batch})  # the loss before the update
            losses.append(float(value))
        final = dict(zip(names, session.run(variables)))
    return np.array(losses), final


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected| (the tensor-wise measure of docs/fidelity.md)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = float(np.max(np.abs(expected)))
    difference = float(np.max(np.abs(actual - expected)))
    return difference / scale if scale else difference


def compare(steps: int, batch_size: int, data_dir=None, seed: int = 0, fast=None, nudged: bool = False) -> dict:
    """Run both sides (and, with nudged=True, nanoae from nudged weights) and return the curves."""
    train = load_dataset("mnist", "train", data_dir=data_dir)
    batches = tutorial_batches(train.images, steps, batch_size, seed)
    started = time.perf_counter()
    initial, nanoae_losses, nanoae_final = run_nanoae(batches, seed=seed, fast=fast)
    nanoae_seconds = time.perf_counter() - started
    started = time.perf_counter()
    tf_losses, tf_final = run_tf1(batches, initial)
    tf_seconds = time.perf_counter() - started
    per_step = np.abs(nanoae_losses - tf_losses) / np.abs(tf_losses)
    weights = {name: relative_error(nanoae_final[name], tf_final[name]) for name in nanoae_final}
    extra = {}
    if nudged:
        _, nudged_losses, nudged_final = run_nanoae(batches, seed=seed, fast=fast, nudge=True)
        extra = {
            "nudged": nudged_losses,
            "nudged_relative": np.abs(nudged_losses - nanoae_losses) / np.abs(nanoae_losses),
            "nudged_weights": {name: relative_error(nudged_final[name], nanoae_final[name]) for name in nanoae_final},
        }
    return {
        **extra,
        "steps": steps,
        "batch_size": batch_size,
        "nanoae": nanoae_losses,
        "tensorflow": tf_losses,
        "relative": per_step,
        "weights": weights,
        "seconds": (nanoae_seconds, tf_seconds),
    }


def first_step_above(relative: np.ndarray, threshold: float) -> int | None:
    above = np.nonzero(relative > threshold)[0]
    return int(above[0]) + 1 if above.size else None


def write_outputs(result: dict, out: Path) -> tuple[Path, Path]:
    from nanoae.plot import require_matplotlib  # noqa: PLC0415

    out.mkdir(parents=True, exist_ok=True)
    steps = np.arange(1, result["steps"] + 1)
    table = out / "tf-vs-nanoae-loss.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        nudged = result.get("nudged", np.full(len(steps), np.nan))
        writer.writerow(["step", "nanoae_loss", "tensorflow_loss", "relative_difference", "nanoae_nudged_loss"])
        for row in zip(steps, result["nanoae"], result["tensorflow"], result["relative"], nudged):
            writer.writerow([int(row[0]), f"{row[1]:.9g}", f"{row[2]:.9g}", f"{row[3]:.3e}", f"{row[4]:.9g}"])

    plt = require_matplotlib()
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    top.plot(steps, result["tensorflow"], color="tab:orange", linewidth=2.4, label="TensorFlow 2.21, tf.compat.v1 graph + RMSPropOptimizer")
    top.plot(steps, result["nanoae"], color="tab:blue", linewidth=1.0, label="nanoae, tutorial preset (RMSProp tf1)")
    top.set_ylabel("training loss (MSE, batch of %d)" % result["batch_size"])
    top.set_title("The tutorial run, same initial weights and batches: nanoae vs TensorFlow")
    top.legend()
    top.grid(alpha=0.3)
    bottom.semilogy(steps, np.maximum(result["relative"], 1e-12), color="tab:green", linewidth=1.0, label="nanoae vs TensorFlow")
    if "nudged_relative" in result:
        bottom.semilogy(
            steps, np.maximum(result["nudged_relative"], 1e-12), color="tab:purple", linewidth=0.8, alpha=0.7,
            label="nanoae vs nanoae with its initial weights moved by one float32 ulp",
        )
        bottom.legend(loc="lower right", fontsize=8)
    bottom.axhline(1e-7, color="grey", linestyle=":", linewidth=1.0)
    bottom.text(steps[-1], 1.3e-7, "float32 resolution ", ha="right", va="bottom", color="grey", fontsize=8)
    bottom.set_ylabel("relative loss difference")
    bottom.set_xlabel("step")
    bottom.set_ylim(1e-10, 1)
    bottom.grid(alpha=0.3, which="both")
    figure.tight_layout()
    picture = out / "tf-vs-nanoae-loss.png"
    figure.savefig(picture, dpi=110)
    plt.close(figure)
    return picture, table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="directory of the MNIST files (default: $NANOAE_DATA, cache, download)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0, help="initial weights and batch order")
    parser.add_argument("--reference", action="store_true", help="nanoae's readable reference ops instead of the fast path")
    parser.add_argument("--no-nudge", action="store_true", help="skip the third run (nanoae from weights nudged by one ulp)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args(argv)
    result = compare(
        args.steps, args.batch_size, args.data, args.seed, fast=False if args.reference else None, nudged=not args.no_nudge
    )
    picture, table = write_outputs(result, args.out)
    relative = result["relative"]
    worst = int(np.argmax(relative))
    print(f"{args.steps} steps, batch {args.batch_size}, seed {args.seed}")
    print(f"loss, step 1 -> {args.steps}: nanoae {result['nanoae'][0]:.6f} -> {result['nanoae'][-1]:.6f}, "
          f"TensorFlow {result['tensorflow'][0]:.6f} -> {result['tensorflow'][-1]:.6f}")
    print(f"largest relative loss difference: {relative[worst]:.3e} at step {worst + 1} "
          f"(absolute {abs(result['nanoae'][worst] - result['tensorflow'][worst]):.3e})")
    for limit in (100, 200, 500):
        if limit <= args.steps:
            print(f"  over steps 1-{limit}: {relative[:limit].max():.3e}")
    for threshold in (1e-6, 1e-5, 1e-4, 1e-3):
        print(f"  first step above {threshold:g}: {first_step_above(relative, threshold)}")
    print(f"final weights, largest relative difference (max|a-b|/max|b|): {max(result['weights'].values()):.3e}")
    if "nudged" in result:
        nudged = result["nudged_relative"]
        print(f"nanoae vs nanoae nudged by one ulp: largest relative loss difference {nudged.max():.3e}, "
              f"first step above 1e-6: {first_step_above(nudged, 1e-6)}, above 1e-3: {first_step_above(nudged, 1e-3)}, "
              f"final weights {max(result['nudged_weights'].values()):.3e}")
    print(f"seconds: nanoae {result['seconds'][0]:.1f}, TensorFlow {result['seconds'][1]:.1f}")
    print(f"wrote {picture} and {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
