"""Using what nanoae trained: nanoae eval, plot, encode, reconstruct and classify (an encoder
under a softmax head). eval, plot, encode and reconstruct read their rows through cli.data:
an own-data run's stored scaler is applied, reconstructions are unscaled to the data's units."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from nanoae.atomic import json_text, write_atomically, write_json_atomically
from nanoae.callbacks import ProgressBar
from nanoae.checkpoint import load_checkpoint, save_checkpoint
from nanoae.classifier import Classifier, labeled_subset
from nanoae.cli.common import (
    EXIT_OK,
    CLIError,
    as_user_error,
    load_split,
    make_optimizer,
    require_autoencoder,
    require_width,
    saved_config,
    say,
    writable_directory,
)
from nanoae.cli.data import RecordedDataMissing, reconstruction_report, recorded_own_file, run_rows, same_file
from nanoae.cli.figures import draw_figures, draw_loss
from nanoae.plot import written_by_nanoae
from nanoae.presets import tutorial_encoder
from nanoae.rundir import CLASSIFY_RUN, RUN_FILES, RUN_MARKER, own_files, plan_run_directory, prepare_run_directory, read_run_config


# ---- nanoae eval / plot ---------------------------------------------------------------
def _loaded(args, purpose: str):
    """(checkpoint, its recorded config): an autoencoder's, or a clear error."""
    checkpoint = load_checkpoint(args.checkpoint, backend=args.backend)
    require_autoencoder(checkpoint, args.checkpoint, purpose)
    return checkpoint, saved_config(checkpoint)


def _refuse_foreign_figures(out_dir: Path) -> None:
    """plot replaces figures nanoae wrote (a run's own, or any PNG whose metadata names
    nanoae), never a user's file of the same name."""
    config = read_run_config(out_dir)
    own = own_files(config) if config is not None else set()
    foreign = [
        name
        for name in ("reconstructions.png", "samples.png", "loss.png", "codes.png")
        if (out_dir / name).exists() and name not in own and not written_by_nanoae(out_dir / name)
    ]
    if foreign:
        raise CLIError(f"{out_dir} holds {', '.join(foreign)}, which nanoae did not write and will not replace; move them away or give another --out")


def command_eval(args) -> int:
    checkpoint, config = _loaded(args, "eval measures reconstructions")
    rows = run_rows(args, config, args.split, own_default="test", model_width=checkpoint.model.in_features, checkpoint=args.checkpoint)
    with np.errstate(over="ignore", invalid="ignore"):  # said once below, not as NumPy noise
        errors = reconstruction_report(checkpoint.model, rows)
    if not all(math.isfinite(value) for value in errors.values()):
        say(f"nanoae eval: {args.checkpoint}'s weights are finite but its reconstructions overflow "
             "(a diverging run's last checkpoint?); an earlier checkpoint or a smaller learning rate may help")
    if args.json:
        where = {"dataset": rows.dataset, "split": args.split or "test"} if rows.dataset else {"data": rows.description}
        print(json_text({"checkpoint": str(args.checkpoint), "step": checkpoint.step, **where, **errors}))
    else:
        print(f"{args.checkpoint} (step {checkpoint.step}) on {rows.description}:")
        print(f"  reconstruction MSE {errors['mse']:.6f}")
        if "bce" in errors:
            print(f"  reconstruction BCE {errors['bce']:.6f}")
    return EXIT_OK


def command_plot(args) -> int:
    """The run's figures; where its recorded data file is gone, the loss curve alone
    (it needs only metrics.csv), saying what could not be drawn."""
    checkpoint, config = _loaded(args, "plot draws reconstructions")
    missing = None
    metrics = Path(args.checkpoint).parent / "metrics.csv"
    try:
        rows = run_rows(args, config, None, own_default="test", model_width=checkpoint.model.in_features, checkpoint=args.checkpoint)
    except RecordedDataMissing as exc:
        if not metrics.exists():
            raise
        rows, missing = None, exc
    out_dir = Path(args.out) if args.out else Path(args.checkpoint).parent
    if out_dir.is_dir():
        _refuse_foreign_figures(out_dir)
    out_dir = writable_directory(out_dir)
    title = f"nanoae {config.get('preset') or 'model'}, step {checkpoint.step}"
    if rows is None:
        figures = draw_loss(metrics, out_dir, title, "validation")
        say(f"nanoae plot: drew the loss curve only; no reconstructions or code map: {missing}")
    else:
        figures = draw_figures(checkpoint.model, rows, out_dir, metrics, title=title)
    for figure in figures:
        print(figure)
    return EXIT_OK


# ---- nanoae encode / reconstruct -------------------------------------------------------
def _checked_out_file(args) -> Path:
    """--out: a .npy path in an existing directory, not an existing file without --overwrite."""
    out = Path(args.out)
    if out.suffix.lower() != ".npy":
        raise CLIError(f"--out {out}: give a file name ending in .npy (the output is a NumPy array)")
    if out.is_dir():
        raise CLIError(f"--out {out} is a directory; give a file name such as {out / 'codes.npy'}")
    if out.exists() and not args.overwrite:
        raise CLIError(f"--out {out} already exists; give another name or --overwrite to replace it")
    if not out.parent.is_dir():
        raise CLIError(f"--out {out}: the directory {out.parent} does not exist")
    return out


def _write_rows(out: Path, rows, width: int, batch_size: int, compute) -> None:
    """Stream ``compute(scaled chunk) -> (chunk rows, width) float32`` over the rows into
    a float32 .npy at ``out``, atomically (a temporary file renamed over it at the end)."""

    def write(handle) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": (len(rows), width)}
        # Format 1.0 limits the header's own length (65,535 bytes), not the data's: a
        # two-number shape always fits, and 1.0 is the version every NumPy reads.
        np.lib.format.write_array_header_1_0(handle, header)
        for start, stop in rows.chunks(batch_size):
            handle.write(np.ascontiguousarray(compute(rows.scaled(start, stop)), dtype="<f4").tobytes())

    write_atomically(out, write)


def _refuse_out_over_inputs(out: Path, args, config: dict, rows) -> None:
    """--out is never a file the command reads or the run holds, --overwrite or not: the
    data file, the run's recorded data file, the checkpoint or another of the run's files."""
    if not out.exists():
        return
    run_dir = Path(args.checkpoint).parent
    inputs = [(rows.path, "the data file read"), (recorded_own_file(config), "the run's recorded data file"), (args.checkpoint, "the checkpoint")]
    inputs += [(run_dir / name, "one of the run's files") for name in RUN_FILES]
    for path, what in inputs:
        if path is not None and Path(path).exists() and same_file(out, path):
            raise CLIError(f"--out {out} is {what} ({path}); nanoae never writes over what it reads, even with --overwrite: give another file name")


def _use_model(args, job: str) -> int:
    out = _checked_out_file(args)
    checkpoint, config = _loaded(args, f"{job} needs an autoencoder")
    rows = run_rows(args, config, args.split, model_width=checkpoint.model.in_features, checkpoint=args.checkpoint)
    _refuse_out_over_inputs(out, args, config, rows)
    model = checkpoint.model
    if job == "encode":
        width = model.code_size
        compute = lambda x: model.backend.to_host(model.encode(x))  # noqa: E731
    else:
        width = model.in_features
        compute = lambda x: rows.unscale(model.backend.to_host(model.reconstruct(x)))  # noqa: E731
    with np.errstate(over="ignore", invalid="ignore"):
        _write_rows(out, rows, width, args.batch_size, compute)
    what = "codes" if job == "encode" else "reconstructions (in the data's units)"
    print(f"{out}: the {what} of {rows.description}, float32 ({len(rows)}, {width})")
    return EXIT_OK


def command_encode(args) -> int:
    return _use_model(args, "encode")


def command_reconstruct(args) -> int:
    return _use_model(args, "reconstruct")


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
    train_set = load_split(args.dataset or "mnist", "train", args)
    test_set = load_split(args.dataset or "mnist", "test", args)
    dataset = train_set.name  # "mnist-sample" where the shipped sample stood in for MNIST
    n_labels = args.labels or len(train_set.images)
    if n_labels > len(train_set.images):
        raise CLIError(f"--labels {n_labels}: the {dataset} training set has only {len(train_set.images)} images")
    if source is not None:
        require_width(source.in_features, args.source, train_set.images.shape[1], dataset=dataset)
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
