"""Using what nanoae trained: nanoae eval, plot and classify (an encoder under a softmax head)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from nanoae.atomic import json_text, write_json_atomically
from nanoae.callbacks import ProgressBar
from nanoae.checkpoint import load_checkpoint, save_checkpoint
from nanoae.classifier import Classifier, labeled_subset
from nanoae.cli.common import (
    EXIT_OK,
    CLIError,
    as_user_error,
    draw_figures,
    load_split,
    make_optimizer,
    require_autoencoder,
    require_width,
    saved_config,
    say,
    writable_directory,
)
from nanoae.evaluation import reconstruction_errors
from nanoae.plot import written_by_nanoae
from nanoae.presets import tutorial_encoder
from nanoae.rundir import CLASSIFY_RUN, RUN_MARKER, own_files, plan_run_directory, prepare_run_directory, read_run_config


# ---- nanoae eval / plot ---------------------------------------------------------------
def _dataset_of(checkpoint, args) -> str:
    return args.dataset or saved_config(checkpoint).get("dataset", "mnist")


def _refuse_foreign_figures(out_dir: Path) -> None:
    """plot replaces figures nanoae wrote (a run's own, or any PNG whose metadata names
    nanoae), never a user's file of the same name."""
    config = read_run_config(out_dir)
    own = own_files(config) if config is not None else set()
    foreign = [
        name
        for name in ("reconstructions.png", "samples.png", "loss.png")
        if (out_dir / name).exists() and name not in own and not written_by_nanoae(out_dir / name)
    ]
    if foreign:
        raise CLIError(f"{out_dir} holds {', '.join(foreign)}, which nanoae did not write and will not replace; move them away or give another --out")


def command_eval(args) -> int:
    checkpoint = load_checkpoint(args.checkpoint, backend=args.backend)
    require_autoencoder(checkpoint, args.checkpoint, "eval measures reconstructions")
    dataset = _dataset_of(checkpoint, args)
    data = load_split(dataset, args.split, args, saved_config(checkpoint))
    require_width(checkpoint.model, args.checkpoint, data.images, dataset)
    with np.errstate(over="ignore", invalid="ignore"):  # said once below, not as NumPy noise
        errors = reconstruction_errors(checkpoint.model, data.images)
    if not all(math.isfinite(value) for value in errors.values()):
        say(f"nanoae eval: {args.checkpoint}'s weights are finite but its reconstructions overflow "
             "(a diverging run's last checkpoint?); an earlier checkpoint or a smaller learning rate may help")
    if args.json:
        print(json_text({"checkpoint": str(args.checkpoint), "step": checkpoint.step, "dataset": dataset, "split": args.split, **errors}))
    else:
        print(f"{args.checkpoint} (step {checkpoint.step}) on {dataset} {args.split} ({len(data.images)} images):")
        print(f"  reconstruction MSE {errors['mse']:.6f}")
        print(f"  reconstruction BCE {errors['bce']:.6f}")
    return EXIT_OK


def command_plot(args) -> int:
    checkpoint = load_checkpoint(args.checkpoint, backend=args.backend)
    require_autoencoder(checkpoint, args.checkpoint, "plot draws reconstructions")
    dataset = _dataset_of(checkpoint, args)
    data = load_split(dataset, "test", args, saved_config(checkpoint))
    require_width(checkpoint.model, args.checkpoint, data.images, dataset)
    out_dir = Path(args.out) if args.out else Path(args.checkpoint).parent
    if out_dir.is_dir():
        _refuse_foreign_figures(out_dir)
    out_dir = writable_directory(out_dir)
    metrics = Path(args.checkpoint).parent / "metrics.csv"
    preset = saved_config(checkpoint).get("preset") or "model"
    figures = draw_figures(checkpoint.model, data.images, out_dir, metrics, title=f"nanoae {preset}, step {checkpoint.step}")
    for figure in figures:
        print(figure)
    return EXIT_OK


# ---- nanoae classify -------------------------------------------------------------------
def _classify_source(args, mode: str):
    """The autoencoder named by --from (None without it), checked against --mode."""
    if mode != "scratch" and not args.source:
        raise CLIError(f"--mode {mode} reuses a trained encoder: give --from CHECKPOINT (an autoencoder's checkpoint.npz)")
    if not args.source:
        return None
    path = Path(args.source)
    if not path.is_file():
        raise CLIError(f"--from {path}: no such checkpoint file")
    source = load_checkpoint(path, backend=args.backend).model
    if not hasattr(source, "encode"):
        raise CLIError(f"--from {path}: holds a {type(source).__name__}, not an autoencoder; train one with nanoae train")
    return source


def _new_classifier(args, source, mode: str, optimizer):
    options = {"optimizer": optimizer, "seed": args.seed, "backend": args.backend}
    if source is not None:
        return as_user_error(Classifier.from_autoencoder, source, 10, mode=mode, **options)
    return Classifier(tutorial_encoder(), 10, **options)  # from scratch, on the tutorial's encoder


def _classify_data_and_out_dir(args, source):
    """(dataset name, train set, test set, labels used, --out directory or None); the
    directory is made only once the data fits the --from model."""
    plan = None
    if args.out:
        plan = plan_run_directory(args.out, overwrite=args.overwrite, continuing=False, kind=CLASSIFY_RUN)
    dataset = args.dataset or "mnist"
    train_set = load_split(dataset, "train", args)
    test_set = load_split(dataset, "test", args)
    n_labels = args.labels or len(train_set.images)
    if n_labels > len(train_set.images):
        raise CLIError(f"--labels {n_labels}: the {dataset} training set has only {len(train_set.images)} images")
    if source is not None:
        require_width(source, args.source, train_set.images, dataset)
    out_dir = prepare_run_directory(plan) if plan is not None else None
    return dataset, train_set, test_set, n_labels, out_dir


def command_classify(args) -> int:
    mode = args.mode or ("finetune" if args.source else "scratch")
    source = _classify_source(args, mode)
    dataset, train_set, test_set, n_labels, out_dir = _classify_data_and_out_dir(args, source)
    optimizer = make_optimizer(args.optimizer, args.lr)
    model = _new_classifier(args, source, mode, optimizer)
    picked = labeled_subset(train_set.labels, n_labels, np.random.default_rng(args.seed))
    x, y = train_set.images[picked], train_set.labels[picked]
    batch_size = min(args.batch_size, n_labels)
    say(f"classify: mode {mode}, {n_labels} labels, {args.steps} steps of batch {batch_size}, {args.optimizer} lr {args.lr}", args.quiet)
    callbacks = [] if args.quiet else [ProgressBar()]
    history = model.fit(x, y, steps=args.steps, batch_size=batch_size, log_every=max(1, args.steps // 20), callbacks=callbacks)
    result = {
        "mode": mode,
        "from": str(args.source) if args.source else None,
        "dataset": dataset,
        "labels": n_labels,
        "steps": args.steps,
        "batch_size": batch_size,
        "optimizer": optimizer.config(),
        "seed": args.seed,
        "final_train_loss": history[-1] if history else None,
        "train_accuracy": model.accuracy(x, y),
        "test_accuracy": model.accuracy(test_set.images, test_set.labels),
    }
    _write_classify_outputs(args, out_dir, model, result)
    return EXIT_OK


def _write_classify_outputs(args, out_dir: Path | None, model, result: dict) -> None:
    if out_dir is not None:  # the record first: it lists the checkpoint as nanoae's
        write_json_atomically(out_dir / "result.json", {RUN_MARKER: 1, "files": list(CLASSIFY_RUN.files), **result})
        save_checkpoint(out_dir / "checkpoint.npz", model, extra={"config": result})
    if args.json:
        print(json_text(result))
    else:
        print(
            f"{result['mode']}: test accuracy {result['test_accuracy']:.4f} (train {result['train_accuracy']:.4f}) "
            f"with {result['labels']} labels, {result['steps']} steps of batch {result['batch_size']}"
        )
