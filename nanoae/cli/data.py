"""The rows a command works on: an MNIST split, or the user's own file, held out and scaled.

Own data (a .npy, .npz, .csv or .tsv file, or a folder of images: :mod:`nanoae.data.files`)
is split once into training and held-out rows (``holdout_rows``, seeded by the run's
seed), and a :class:`~nanoae.scaling.Scaler` is fitted on the training rows. The run
records the file, its key and label column, the split and the fitted scaler, so every
later use (``--resume``, ``eval``, ``plot``, ``encode``, ``reconstruct``) reads the same
rows and applies the stored scaler, refitted never. The recorded key and label column go
only with the recorded file: another file given by --data takes its own. A stored
scaler is applied only to data of the kind it was fitted on (:func:`require_scalable`).
A run on MNIST has no stored scaler: own data given to it is put in MNIST's units
(:func:`mnist_units`: integers 0..255 divided by 255, floats in [0, 1] kept), anything
else refused, never refitted.

Memory: a ``.npy`` file is memory-mapped, and nothing copies it whole. The scaler is
fitted over the training rows a chunk at a time; training reads them through the map a
batch at a time, scaling each batch as it goes (:class:`~nanoae.data.rows.ScaledRows`);
only the held-out rows are scaled into memory, for the validation MSE. The other
commands scale ``batch`` rows at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanoae.cli.common import DATASET_WIDTH, CLIError, flag, load_split, require_width
from nanoae.data import ScaledRows, holdout_rows, is_own_data, load_data_file
from nanoae.evaluation import reconstruction_errors, reconstruction_mse
from nanoae.scaling import Scaler

DEFAULT_VAL_FRACTION = 0.1
OWN_DEFAULT_LAYERS = (128, 32)
# Values per chunk of the min/max pass of mnist_units (about 4M).
RANGE_CHUNK_VALUES = 1 << 22


class RecordedDataMissing(CLIError):
    """The data file a run recorded is gone and no --data was given (plot still draws
    the loss curve, which needs only the metrics)."""


@dataclass(frozen=True, eq=False)
class Rows:
    """Rows of one data set as a model sees them.

    features: (n, d) the data as stored (the file's dtype; a memory map for .npy; MNIST's
    float32 pixels); rows: the row numbers used (sorted int64), None for all; scaler: the
    run's, None where the features already are the model's units (MNIST); labels: (len,)
    for the rows used, or None; image_shape: (h, w) or (h, w, c) when the rows are images;
    description: the rows in words ("mnist test (10000 images)", "the held-out rows (180) of /x.csv");
    path: the own data file read (None for a built-in dataset).
    """

    features: np.ndarray
    rows: np.ndarray | None
    scaler: Scaler | None
    labels: np.ndarray | None
    image_shape: tuple | None
    description: str
    dataset: str | None = None  # the built-in dataset's name, None for own data
    path: Path | None = None

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


def same_file(first, second) -> bool:
    """Whether two paths name one file (links and other spellings included)."""
    try:
        return os.path.samefile(first, second)
    except OSError:
        return Path(first).expanduser().resolve() == Path(second).expanduser().resolve()


def _dtype_kind(dtype: np.dtype) -> str:
    return {"b": "bool", "i": "integer", "u": "integer", "f": "float"}[dtype.kind]


def require_scalable(scaler: Scaler, dtype: np.dtype, path) -> None:
    """A stored scaler applies to data of the kind it was fitted on: bool, integers or
    floats (floats of any width: float32 and float64 hold the same units), and for
    ``unit`` integers of the type whose maximum it divides by (uint8 / 255 is not
    uint16 / 65535). Other data would be scaled into units the model never saw."""
    fitted = np.dtype(scaler.fitted_dtype)
    same_kind = _dtype_kind(fitted) == _dtype_kind(dtype)
    if same_kind and not (scaler.mode == "unit" and dtype.kind in "iu" and np.iinfo(dtype).max != scaler.integer_max):
        return
    raise CLIError(
        f"{path} holds {dtype.name} values, but the run's scaling ({scaler.description}) was fitted on "
        f"{scaler.fitted_dtype} data: other types hold other units; pass {scaler.fitted_dtype} data as the run was "
        f"trained on (np.save(path, x.astype(np.{scaler.fitted_dtype})) when the values are in the same units)"
    )


def _value_range(features: np.ndarray) -> tuple[float, float]:
    """(min, max) of every value, read a chunk of rows at a time (a memmap is never copied)."""
    step = max(1, RANGE_CHUNK_VALUES // max(1, features.shape[1]))
    low, high = np.inf, -np.inf
    for start in range(0, features.shape[0], step):
        chunk = features[start : start + step]
        low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
    return low, high


def mnist_units(features: np.ndarray, path) -> Scaler:
    """The scaler that puts own data in the units of a model trained on MNIST (pixels
    0..255 divided by 255): integers within 0..255 divided by 255, bool as 0/1, floats
    within [0, 1] kept; anything else refused with the scaling to do first."""
    dtype, width = features.dtype, int(features.shape[1])
    if dtype.kind == "b":
        return Scaler("unit", width, fitted_dtype=dtype.name, output_range="unit", integer_max=1)
    low, high = _value_range(features)
    if dtype.kind in "iu":
        if low < 0 or high > 255:
            raise CLIError(
                f"the run was trained on MNIST (pixels 0..255 divided by 255), but {path} holds {dtype.name} values in "
                f"[{low:g}, {high:g}]: map them to 0..255 first (or to floats in [0, 1])"
            )
        return Scaler("unit", width, fitted_dtype=dtype.name, output_range="unit", integer_max=255)
    if low < 0 or high > 1:
        raise CLIError(
            f"the run was trained on MNIST's pixels in [0, 1], but {path} holds {dtype.name} values in [{low:g}, {high:g}]: "
            "divide pixels 0..255 by 255 (or scale the data to [0, 1]) first"
        )
    return Scaler("none", width, fitted_dtype=dtype.name, output_range="unit")


def reconstruction_report(model, rows: Rows, batch_size: int = 1000) -> dict:
    """{"mse": m} or {"mse": m, "bce": b}: mean reconstruction errors over the rows and
    features, in the model's units, ``batch_size`` rows at a time. BCE (outputs clipped
    to [1e-7, 1 - 1e-7]) is reported only for data scaled to [0, 1] (MNIST, ``unit``,
    ``minmax``, ``none`` on data in [0, 1]) whose every target does lie in [0, 1], where
    it is defined: rows scaled by statistics of other rows (a minmax scaler's held-out
    rows) may lie beyond."""
    totals = {"mse": 0.0, "bce": 0.0}
    with_bce = rows.scaler is None or rows.scaler.output_range == "unit"
    for start, stop in rows.chunks(batch_size):
        x = rows.scaled(start, stop)
        with_bce = with_bce and bool(x.min() >= 0.0 and x.max() <= 1.0)
        chunk = reconstruction_errors(model, x, batch_size) if with_bce else {"mse": reconstruction_mse(model, x, batch_size=batch_size)}
        for name, value in chunk.items():
            totals[name] += value * (stop - start)
    names = ("mse", "bce") if with_bce else ("mse",)
    return {name: totals[name] / len(rows) for name in names}


def _missing_recorded_file(path) -> RecordedDataMissing:
    return RecordedDataMissing(
        f"the run's data file {path} no longer exists (moved or deleted): pass --data PATH, the file or another "
        "of the same width"
    )


def _changed_rows(data, recorded_rows: int, same: bool, recorded) -> CLIError:
    if same:
        return CLIError(
            f"{data.path} has {len(data)} rows, the run had {recorded_rows}: the file changed since, so its "
            "hold-out no longer applies; restore the file, or train a new run on it"
        )
    return CLIError(
        f"--resume: the run trained on the {recorded_rows} rows of {recorded}; {data.path} has {len(data)}: resume "
        f"on a file of {recorded_rows} rows (the hold-out is drawn by row number), or train a new run on it"
    )


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
    data = _resumed_file(args, saved, path) if saved else load_own_file(path, args.key, args.label_column)
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


def _resumed_file(args, saved: dict, path):
    """The own data file a resumed run continues on, checked against the run: still there
    (the recorded one), the recorded --key/--label-column (for the recorded file: another
    file takes its own), the width, the row count and the kind of data its scaler fits."""
    recorded = recorded_own_file(saved)
    if args.data is None and recorded is not None and not Path(recorded).exists():
        raise _missing_recorded_file(recorded)
    same = recorded is not None and same_file(path, recorded)
    key = args.key if args.key is not None or not same else saved.get("key")
    label_column = args.label_column if args.label_column is not None or not same else saved.get("label_column")
    data = load_own_file(path, key, label_column)
    if same:  # given again, they must name what the run read (a column by number or by name alike)
        for option, read, run in (("key", data.key, saved.get("key")), ("label_column", data.label_column, saved.get("label_column"))):
            if read != run:
                raise CLIError(
                    f"--resume {args.resume}: {flag(option)} {getattr(args, option)} reads {read!r} of {data.path}, the run read "
                    f"{run!r}; leave {flag(option)} out, or train a new run with another --out"
                )
    if saved.get("features") is not None:
        require_width(saved["features"], f"--resume {args.resume}", int(data.features.shape[1]), place=data.path)
    if saved.get("rows") is not None and saved["rows"] != len(data):
        raise _changed_rows(data, saved["rows"], same, recorded)
    if saved.get("scaler") is not None:
        require_scalable(stored_scaler(saved["scaler"]), data.features.dtype, data.path)
    return data


# ---- using a run: eval, plot, encode, reconstruct ------------------------------------------
def recorded_own_file(config: dict) -> str | None:
    path = config.get("data_path")
    return path if isinstance(path, str) else None


def run_rows(args, config: dict, split: str | None, own_default: str = "all", *, model_width: int | None = None, checkpoint=None) -> Rows:
    """The rows a command uses a run's model on, checked against the model's width
    (``model_width``, of ``checkpoint``) as soon as the data's width is known.

    An own-data run reads --data when given, else its recorded file (with its recorded
    --key and --label-column unless given) and applies its stored scaler.
    ``split`` "test" means the run's held-out rows and "train" its training rows (every
    row where it held none out), of the recorded file only; "all" every row; None takes
    ``own_default``, or every row where the run held none out or --data names another
    file. An MNIST run: the split (default test) of --dataset or the run's dataset, from
    --data, the recorded directory or the search; own data given to it is put in
    MNIST's units (:func:`mnist_units`).
    """
    recorded = recorded_own_file(config)
    own_path = args.data if uses_own_data(args.data) else None
    if own_path is None and args.data is None and args.dataset is None and recorded is not None:
        if not Path(recorded).exists():
            raise _missing_recorded_file(recorded)
        own_path = recorded
    if own_path is None:
        return _mnist_rows(args, config, split or "test", model_width, checkpoint)
    same = recorded is not None and same_file(own_path, recorded)
    key = args.key if args.key is not None or not same else config.get("key")
    label_column = args.label_column if args.label_column is not None or not same else config.get("label_column")
    data = load_own_file(own_path, key, label_column)
    if model_width is not None:
        require_width(model_width, checkpoint, int(data.features.shape[1]), place=data.path)
    if config.get("scaler") is not None:
        scaler = stored_scaler(config["scaler"])
        require_scalable(scaler, data.features.dtype, data.path)
    else:
        scaler = mnist_units(data.features, data.path)
    fraction = config.get("val_fraction") or 0.0
    wanted = split or (own_default if same and fraction > 0 else "all")
    rows, what = None, "every row"
    if wanted in ("test", "train"):
        if not same:
            trained_on = f"its file {recorded}" if recorded else f"{config.get('dataset') or 'a built-in dataset'}, not a file"
            raise CLIError(
                f"--split {wanted} picks the run's held-out or training rows of the file it trained on ({trained_on}); "
                f"{data.path} is another file: leave --split out to use every row"
            )
        if len(data) != config.get("rows", len(data)):
            raise _changed_rows(data, config.get("rows"), True, recorded)
        if fraction == 0 and wanted == "test":
            raise CLIError(f"--split test: the run held out no rows of {data.path} (--val-fraction 0); leave --split out to use every row")
        if fraction > 0:
            train_rows, val_rows = split_rows(len(data), fraction, config.get("seed") or 0)
            rows, what = (val_rows, "the held-out rows") if wanted == "test" else (train_rows, "the training rows")
        else:
            what = "every row (the run trained on all)"
    labels = data.labels if (data.labels is None or rows is None) else data.labels[rows]
    count = len(data) if rows is None else len(rows)
    return Rows(data.features, rows, scaler, labels, _image_shape(data.image_shape), f"{what} ({count}) of {data.path}", path=data.path)


def require_the_runs_dataset(data, dataset: str, what: str) -> None:
    """A run on ``dataset`` is never used on another one that stood in for it (the
    shipped MNIST sample, where full MNIST is not found): that would misstate its numbers."""
    if data.name != dataset:
        raise CLIError(
            f"{what}: the run used {dataset}, which is not found here, and only {data.name} could stand in; "
            f"pass --data DIR (the directory holding {dataset}'s files), or --dataset {data.name} to use it deliberately"
        )


def _mnist_rows(args, config: dict, split: str, model_width: int | None, checkpoint) -> Rows:
    if split == "all":
        raise CLIError("--split all is for own data; an MNIST run takes --split test or --split train")
    dataset = args.dataset or config.get("dataset") or "mnist"
    if model_width is not None:  # before the data is looked for (or downloaded)
        require_width(model_width, checkpoint, DATASET_WIDTH, dataset=dataset)
    data = load_split(dataset, split, args, config)
    require_the_runs_dataset(data, dataset, f"{split} images")
    return Rows(data.images, None, None, data.labels, (28, 28), f"{dataset} {split} ({len(data.images)} images)", dataset)

