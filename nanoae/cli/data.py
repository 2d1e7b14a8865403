"""The rows a command works on: an MNIST split, or the user's own file, held out and scaled.

Own data (a .npy, .npz, .csv or .tsv file, or a folder of images: :mod:`nanoae.data.files`)
is split once into training and held-out rows (``holdout_rows``, seeded by the run's
seed), and a :class:`~nanoae.scaling.Scaler` is fitted on the training rows. The run
records the file, its key and label column, the split and the fitted scaler, so every
later use (``--resume``, ``eval``, ``plot``, ``encode``, ``reconstruct``) reads the same
rows and applies the stored scaler; nothing is refitted.

Memory: a ``.npy`` file is memory-mapped, and nothing copies it whole. The scaler is
fitted over the training rows a chunk at a time; training reads them through the map a
batch at a time, scaling each batch as it goes (:class:`~nanoae.data.rows.ScaledRows`);
only the held-out rows are scaled into memory, for the validation MSE. The other
commands scale ``batch`` rows at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanoae.cli.common import CLIError, load_split
from nanoae.data import ScaledRows, holdout_rows, is_own_data, load_data_file
from nanoae.scaling import Scaler

DEFAULT_VAL_FRACTION = 0.1
OWN_DEFAULT_LAYERS = (128, 32)


@dataclass(frozen=True, eq=False)
class Rows:
    """Rows of one data set as a model sees them.

    features: (n, d) the data as stored (the file's dtype; a memory map for .npy; MNIST's
    float32 pixels); rows: the row numbers used (sorted int64), None for all; scaler: the
    run's, None where the features already are the model's units (MNIST); labels: (len,)
    for the rows used, or None; image_shape: (h, w) or (h, w, c) when the rows are images;
    description: the rows in words ("mnist test (10000 images)", "the held-out rows (180) of /x.csv").
    """

    features: np.ndarray
    rows: np.ndarray | None
    scaler: Scaler | None
    labels: np.ndarray | None
    image_shape: tuple | None
    description: str
    dataset: str | None = None  # the built-in dataset's name, None for own data

    def __len__(self) -> int:
        return int(self.features.shape[0] if self.rows is None else self.rows.shape[0])

    @property
    def width(self) -> int:
        return int(self.features.shape[1])

    def raw(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows start..stop of the ones used, as stored: (stop - start, d)."""
        if self.rows is None:
            return self.features[start:stop]
        return self.features[self.rows[start:stop]]

    def scaled(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows start..stop in the model's units, float32 (the map itself where nothing changes)."""
        part = self.raw(start, stop)
        if self.scaler is None:
            return np.asarray(part, dtype=np.float32)
        return self.scaler.transform(part)

    def unscale(self, y: np.ndarray) -> np.ndarray:
        """The model's output back in the data's units, float32."""
        y = np.asarray(y, dtype=np.float32)
        return y if self.scaler is None else self.scaler.inverse_transform(y)

    def chunks(self, size: int):
        """(start, stop) bounds of consecutive chunks of at most ``size`` rows."""
        return [(start, min(start + size, len(self))) for start in range(0, len(self), size)]


def uses_own_data(path) -> bool:
    """True when --data names the user's own data (a file, or a folder of images)."""
    return path is not None and is_own_data(path)


def load_own_file(path, key=None, label_column=None):
    """The ArrayData of an own data file; a refused file is one DataError/CLIError line."""
    try:
        return load_data_file(path, key=key, label_column=label_column)
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def split_rows(n: int, fraction: float, seed: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(training rows, held-out rows) of n, or (None, None) for no hold-out (fraction 0)."""
    if not fraction:
        return None, None
    try:
        return holdout_rows(n, fraction, seed)
    except ValueError as exc:
        raise CLIError(f"--val-fraction {fraction}: {exc}") from None


def stored_scaler(config) -> Scaler:
    """The scaler a run recorded, checked (the file is untrusted)."""
    try:
        return Scaler.from_config(config)
    except (ValueError, TypeError, KeyError) as exc:
        raise CLIError(f"the run's recorded scaler is not valid ({exc}); its config was edited or damaged") from None


def fit_scaler(features: np.ndarray, mode: str, rows: np.ndarray | None = None) -> Scaler:
    try:
        return Scaler.fit(features, mode, rows=rows)
    except ValueError as exc:
        raise CLIError(f"--scale {mode}: {exc}") from None


def _image_shape(value) -> tuple | None:
    return None if value is None else tuple(int(side) for side in value)


# ---- training ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TrainingData:
    """What nanoae train trains on: train (n, d) float32 in the model's units (own data: a
    ScaledRows, read and scaled a batch at a time); evaluation
    (m, d) or None; eval_name "test" or "validation"; output_range "unit" | "real" (the
    default output activation follows it); record: the config.json fields that let every
    later command find, split and scale the same rows; figure_rows: the rows the run's
    figures show (the held-out ones, or all)."""

    train: np.ndarray | ScaledRows
    evaluation: np.ndarray | None
    eval_name: str
    output_range: str
    source: str
    record: dict
    figure_rows: Rows


def mnist_training_data(args, saved: dict) -> TrainingData:
    train_set = load_split(args.dataset, "train", args, saved)
    test_set = load_split(args.dataset, "test", args, saved)
    if saved.get("dataset") is not None:
        require_the_runs_dataset(train_set, saved["dataset"], "--resume")
    elif train_set.name != args.dataset:
        # The shipped sample stood in for MNIST: the run is recorded as a run on the sample,
        # so eval, plot and --resume use the sample even where full MNIST appears later.
        args.dataset = train_set.name
    record = {"dataset": args.dataset, "features": int(train_set.images.shape[1]), "image_shape": [28, 28], "scaler": None}
    figure_rows = Rows(test_set.images, None, None, test_set.labels, (28, 28), f"{args.dataset} test", args.dataset)
    return TrainingData(train_set.images, test_set.images, "test", "unit", train_set.source, record, figure_rows)


def own_training_data(args, saved: dict, path) -> TrainingData:
    """The training rows (and held-out ones) of an own data file: a resumed run's from its
    recorded split and stored scaler, a new run's split and scaler made here."""
    data = load_own_file(path, args.key, args.label_column)
    width = int(data.features.shape[1])
    if saved.get("features") is not None and saved["features"] != width:
        raise CLIError(
            f"--resume {args.resume} holds a model of {saved['features']} input features, but {data.path} has {width} "
            "per row; use it on data of the width it was trained on"
        )
    train_rows, val_rows = split_rows(len(data), args.val_fraction, args.seed)
    if saved.get("scaler") is not None:
        scaler = stored_scaler(saved["scaler"])
    else:
        scaler = fit_scaler(data.features, args.scale, train_rows)
    try:
        train = ScaledRows(data.features, train_rows, scaler)
    except (ValueError, TypeError) as exc:
        raise CLIError(f"{data.path}: {exc}") from None
    evaluation = None if val_rows is None else scaler.transform(data.features[val_rows])
    record = {
        "dataset": None,
        "data_path": str(data.path),
        "data_format": data.format,
        "key": data.key,
        "label_column": data.label_column,
        "scale": args.scale,
        "scaler": scaler.config(),
        "val_fraction": args.val_fraction,
        "features": int(data.features.shape[1]),
        "rows": len(data),
        "image_shape": None if data.image_shape is None else list(data.image_shape),
    }
    held = f", {len(val_rows)} held out for validation" if val_rows is not None else ", none held out"
    source = f"{data.source}; scaled: {scaler.mode}{held}"
    labels = data.labels if (data.labels is None or val_rows is None) else data.labels[val_rows]
    figure_rows = Rows(data.features, val_rows, scaler, labels, _image_shape(data.image_shape), "the held-out rows")
    return TrainingData(train, evaluation, "validation", scaler.output_range, source, record, figure_rows)


# ---- using a run: eval, plot, encode, reconstruct ------------------------------------------
def recorded_own_file(config: dict) -> str | None:
    path = config.get("data_path")
    return path if isinstance(path, str) else None


def run_rows(args, config: dict, split: str | None, own_default: str = "all") -> Rows:
    """The rows a command uses a run's model on.

    An own-data run reads --data when given, else its recorded file (--key and
    --label-column default to the recorded ones) and applies its stored scaler. ``split``
    "test" means the run's held-out rows and "train" its training rows (of the recorded
    file only), "all" every row; None takes ``own_default``, or every row where the
    run held none out or --data names another file. An MNIST run: the split (default
    test) of --dataset or the run's dataset, from --data, the recorded directory or the
    search; own data given to an MNIST run is scaled by ``auto`` (integers / their maximum:
    MNIST's units).
    """
    own_path = args.data if uses_own_data(args.data) else None
    if own_path is None and args.data is None and args.dataset is None and recorded_own_file(config) is not None:
        own_path = recorded_own_file(config)
    if own_path is None:
        return _mnist_rows(args, config, split or "test")
    key = args.key if args.key is not None else config.get("key")
    label_column = args.label_column if args.label_column is not None else config.get("label_column")
    data = load_own_file(own_path, key, label_column)
    if config.get("scaler") is not None:
        scaler = stored_scaler(config["scaler"])
    else:
        scaler = fit_scaler(data.features, "auto")
    recorded = recorded_own_file(config)
    fraction = config.get("val_fraction") or 0.0
    splittable = recorded is not None and Path(data.path) == Path(recorded) and fraction > 0
    wanted = split or (own_default if splittable else "all")
    rows, what = None, "every row"
    if wanted in ("test", "train"):
        if not splittable:
            raise CLIError(f"--split {wanted}: the run held out no rows of {data.path}; leave --split out to use every row")
        if len(data) != config.get("rows", len(data)):
            raise CLIError(f"{data.path} has {len(data)} rows, the run had {config.get('rows')}: the file changed since, so its split no longer applies")
        train_rows, val_rows = split_rows(len(data), fraction, config.get("seed") or 0)
        rows, what = (val_rows, "the held-out rows") if wanted == "test" else (train_rows, "the training rows")
    labels = data.labels if (data.labels is None or rows is None) else data.labels[rows]
    count = len(data) if rows is None else len(rows)
    return Rows(data.features, rows, scaler, labels, _image_shape(data.image_shape), f"{what} ({count}) of {data.path}")


def require_the_runs_dataset(data, dataset: str, what: str) -> None:
    """A run on ``dataset`` is never used on another one that stood in for it (the
    shipped MNIST sample, where full MNIST is not found): that would misstate its numbers."""
    if data.name != dataset:
        raise CLIError(
            f"{what}: the run used {dataset}, which is not found here, and only {data.name} could stand in; "
            f"pass --data DIR (the directory holding {dataset}'s files), or --dataset {data.name} to use it deliberately"
        )


def _mnist_rows(args, config: dict, split: str) -> Rows:
    if split == "all":
        raise CLIError("--split all is for own data; an MNIST run takes --split test or --split train")
    dataset = args.dataset or config.get("dataset") or "mnist"
    data = load_split(dataset, split, args, config)
    require_the_runs_dataset(data, dataset, f"{split} images")
    return Rows(data.images, None, None, data.labels, (28, 28), f"{dataset} {split} ({len(data.images)} images)", dataset)

