"""Reuse the tutorial autoencoder's encoder to start a classifier: test accuracy vs labels.

The budget (full mode):

* pretraining: the ``tutorial`` preset exactly, 1,000 steps of batch 256 of the tutorial's
  RMSProp on the 60,000 unlabeled training images (or ``--from CHECKPOINT``);
* classifiers: the tutorial's encoder (784-784-256-128, ReLU) and a linear softmax head
  of 10; 1,000 steps of Adam(lr 0.001), batch min(128, labels), on a class-balanced
  subset of 100, 1,000 or 60,000 labeled training images (drawn with the seed);
  (a) scratch: random init; (b) finetune: the pretrained encoder, copied, all weights
  trained; (c) probe: the pretrained encoder frozen, only the head trained.
* 100 labels: three label draws (seeds 0, 1, 2), mean and range; otherwise seed 0.

Accuracy on all 10,000 test images.

    python examples/encoder_to_classifier.py --data ../shared/data/mnist     # ~3 min on 2 cores
    python examples/encoder_to_classifier.py --quick
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _study  # noqa: E402

from nanoae import Adam, presets  # noqa: E402
from nanoae.checkpoint import load_checkpoint  # noqa: E402
from nanoae.classifier import MODES, Classifier, labeled_subset  # noqa: E402
from nanoae.evaluation import reconstruction_errors  # noqa: E402

FULL = {"pretrain_steps": 1000, "steps": 1000, "batch_size": 128, "lr": 0.001, "labels": (100, 1000, 60000), "seeds": {100: (0, 1, 2)}}
QUICK = {"pretrain_steps": 10, "steps": 10, "batch_size": 64, "lr": 0.001, "labels": (100, 1000, 2000), "seeds": {}}


def add_options(parser) -> None:
    parser.add_argument("--from", dest="source", metavar="CHECKPOINT", help="a trained autoencoder to take the encoder from (default: pretrain the tutorial preset)")


def main(argv=None) -> int:
    args = _study.parse_args(__doc__.splitlines()[0], argv, add_options)
    budget = QUICK if args.quick else FULL
    train_x, train_y, test_x, test_y = _study.load_mnist(args)
    clock = _study.Stopwatch()
    if args.source:
        autoencoder = load_checkpoint(args.source, backend="numpy").model
        pretraining = f"loaded from {args.source}"
    else:
        autoencoder = presets.tutorial(seed=args.seed)
        autoencoder.fit(train_x, steps=budget["pretrain_steps"], batch_size=256 if not args.quick else 64, log_every=100)
        pretraining = f"the tutorial preset, {budget['pretrain_steps']:,} steps of batch {256 if not args.quick else 64} ({clock():.0f} s)"
    pretrained_mse = reconstruction_errors(autoencoder, test_x)["mse"]
    _study.say(f"pretrained encoder: {pretraining}; test reconstruction MSE {pretrained_mse:.5f}")

    numbers = {"budget": {k: v for k, v in budget.items() if k != "seeds"}, "pretraining": pretraining, "pretrained_test_mse": pretrained_mse, "runs": []}
    for n_labels in budget["labels"]:
        for seed in budget["seeds"].get(n_labels, (args.seed,)):
            picked = labeled_subset(train_y, n_labels, np.random.default_rng(seed))
            x, y = train_x[picked], train_y[picked]
            for mode in MODES:
                start = clock()
                model = Classifier.from_autoencoder(autoencoder, 10, mode=mode, optimizer=Adam(budget["lr"]), seed=seed)
                model.fit(x, y, steps=budget["steps"], batch_size=min(budget["batch_size"], n_labels), log_every=budget["steps"])
                run = {"labels": n_labels, "seed": seed, "mode": mode, "test_accuracy": model.accuracy(test_x, test_y),
                       "train_accuracy": model.accuracy(x, y), "train_s": clock() - start}
                numbers["runs"].append(run)
                _study.say(f"{n_labels:>6} labels, seed {seed}, {mode:<8}: test accuracy {run['test_accuracy']:.4f} ({run['train_s']:.0f} s)")

    def accuracies(n_labels, mode):
        return [run["test_accuracy"] for run in numbers["runs"] if run["labels"] == n_labels and run["mode"] == mode]

    def cell(values):
        if len(values) == 1:
            return f"{100 * values[0]:.1f} %"
        return f"{100 * np.mean(values):.1f} % ({100 * min(values):.1f}-{100 * max(values):.1f})"

    rows = [[f"{n:,}", *[cell(accuracies(n, mode)) for mode in MODES]] for n in budget["labels"]]
    best = {n: max(MODES, key=lambda mode: np.mean(accuracies(n, mode))) for n in budget["labels"]}
    text = "\n".join([
        f"Test accuracy on {test_x.shape[0]:,} MNIST test images. Pretraining: {pretraining} "
        f"(test reconstruction MSE {pretrained_mse:.5f}). Each classifier: {budget['steps']:,} steps of Adam(lr {budget['lr']}), "
        f"batch min({budget['batch_size']}, labels), class-balanced labeled subset; "
        + ("three label draws for 100 labels (mean, and min-max in brackets)." if budget["seeds"] else "one label draw each."),
        "",
        _study.table(["labels", "(a) scratch", "(b) pretrained, fine-tuned", "(c) linear probe (frozen)"], rows),
        "",
        "Best per row: " + "; ".join(f"{n:,} labels: {best[n]}" for n in budget["labels"]) + ".",
        "",
        f"Machine: {_study.machine()}; total {clock():.0f} s.",
    ])
    _study.write_fragment(args, "encoder_to_classifier", text, numbers)
    try:
        from nanoae import plot  # noqa: PLC0415

        curves = {label: [np.mean(accuracies(n, mode)) for n in budget["labels"]] for label, mode in
                  (("scratch", "scratch"), ("pretrained, fine-tuned", "finetune"), ("linear probe", "probe"))}
        plot.plot_curves(list(budget["labels"]), curves, args.out / "encoder_to_classifier.png", "labeled training images",
                         "test accuracy", title="Classifier from the autoencoder's encoder", log_y=False)
    except ImportError as exc:
        _study.say(f"no figure: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
