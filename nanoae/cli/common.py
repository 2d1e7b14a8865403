"""What the commands share: CLIError, exit codes, messages, checks, where data comes from,
and a run's recorded config read back (every value checked first). The figures: cli/figures.py."""

from __future__ import annotations

import inspect
import sys
import tempfile
from pathlib import Path

from nanoae.backend import BackendUnavailable
from nanoae.checkpoint import CheckpointError
from nanoae.data import DataError, find_data_dir, load_dataset
from nanoae.optim import SGD, Adam, AdamW, RMSProp
from nanoae.plot import PlotUnavailable
from nanoae.presets import PRESETS
from nanoae.rundir import RunDirectoryError
from nanoae.scaling import SCALE_MODES

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

OPTIMIZER_CHOICES = ("rmsprop", "rmsprop-keras", "rmsprop-torch", "adam", "adamw", "sgd", "momentum", "nesterov")
OUTPUT_ACTIVATIONS = ("relu", "sigmoid", "identity", "leaky_relu", "tanh")
HIDDEN_ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "identity")
# Every built-in dataset is 28x28 images: a model's width is checked before one is looked for.
DATASET_WIDTH = 28 * 28


class CLIError(Exception):
    """A problem the user can fix; printed as one line."""


# The errors that mean "fix your input" (arguments, data, files, the machine's
# abilities): one line and exit 2. Anything else is a bug and shows its traceback.
USER_ERRORS = (CLIError, CheckpointError, DataError, BackendUnavailable, PlotUnavailable, RunDirectoryError, OSError)


def make_optimizer(name: str, lr: float):
    """The optimizer a CLI name stands for, at learning rate lr."""
    table = {
        "rmsprop": lambda: RMSProp(lr, flavor="tf1"),
        "rmsprop-keras": lambda: RMSProp(lr, flavor="keras"),
        "rmsprop-torch": lambda: RMSProp(lr, flavor="torch"),
        "adam": lambda: Adam(lr),
        "adamw": lambda: AdamW(lr),
        "sgd": lambda: SGD(lr),
        "momentum": lambda: SGD(lr, momentum=0.9),
        "nesterov": lambda: SGD(lr, momentum=0.9, nesterov=True),
    }
    return table[name]()


def say(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def writable_directory(path: Path) -> Path:
    """``path`` made if missing and checked to take a file (plot's --out)."""
    if path.exists() and not path.is_dir():
        raise CLIError(f"--out {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise CLIError(f"cannot write to the output directory {path}: {exc.strerror or exc}") from None
    return path


def preset_default(preset: str, option: str, fallback):
    """The default value of one of a preset factory's options."""
    parameter = inspect.signature(PRESETS[preset]).parameters.get(option) if preset in PRESETS else None
    return fallback if parameter is None else parameter.default


def as_user_error(build, *args, **kwargs):
    """``build(*args, **kwargs)``, its ValueError (a refused combination of the
    user's options, such as a preset's) and MemoryError (a model too large for this
    machine: nanoae's own message names the size and says to use smaller layers)
    reported as a CLIError."""
    try:
        return build(*args, **kwargs)
    except (ValueError, MemoryError) as exc:
        raise CLIError(str(exc) or f"out of memory building the model ({type(exc).__name__}); use smaller layers") from exc


def require_autoencoder(checkpoint, path, purpose: str) -> None:
    if not hasattr(checkpoint.model, "reconstruct"):
        raise CLIError(f"{path} holds a {type(checkpoint.model).__name__}, not an autoencoder; {purpose}")


def require_width(model_width: int, path, width: int, *, dataset: str | None = None, place=None) -> None:
    """A saved model (``model_width`` inputs, from checkpoint ``path``) takes rows of
    the width it was trained on: ``width``, the rows of built-in ``dataset`` or of the
    file ``place``."""
    if model_width != width:
        data = f"{dataset} images have {width}" if dataset else f"{place} has {width} features per row"
        raise CLIError(f"{path} holds a model of {model_width} input features, but {data}; use it on data of the width it was trained on")


# ---- where a command's data comes from ------------------------------------------------
def _recorded_data_dir(config: dict, dataset: str) -> str | None:
    """The directory a run read ``dataset`` from, when it recorded one that still holds it."""
    place = config.get("data_dir") if isinstance(config, dict) else None
    if not isinstance(place, str) or config.get("dataset", dataset) != dataset:
        return None
    try:
        return place if find_data_dir(dataset, place) is not None else None
    except DataError:
        return None  # moved or changed since: the normal search


def load_split(dataset: str, split: str, args, recorded: dict | None = None) -> object:
    """One split from --data, else the directory the run recorded (``recorded``: its
    config), else the normal search ($NANOAE_DATA, the cache, a download)."""
    data_dir = args.data or _recorded_data_dir(recorded or {}, dataset)
    return load_dataset(dataset, split, data_dir=data_dir, download=not args.no_download, quiet=getattr(args, "quiet", False))


def data_dir_used(dataset: str, args, recorded: dict | None = None) -> str | None:
    """The directory the data was read from (recorded in config.json), or None."""
    try:
        place = find_data_dir(dataset, args.data or _recorded_data_dir(recorded or {}, dataset))
    except DataError:
        return None
    return None if place is None else str(Path(place).resolve())


# ---- a run's recorded config ------------------------------------------------------------
def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def is_int(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


# What a run's recorded config may hold for the keys the command line reads back: the
# file is untrusted input, so an edited or damaged value is refused, never used.
_SAVED_VALUE_CHECKS = {
    "preset": lambda value: value in PRESETS,
    "dataset": lambda value: isinstance(value, str) and bool(value),
    "seed": lambda value: is_int(value, 0),
    "batch_size": lambda value: is_int(value, 1),
    "optimizer": lambda value: value in OPTIMIZER_CHOICES,
    "output_activation": lambda value: value in OUTPUT_ACTIVATIONS,
    "code_size": lambda value: is_int(value, 1),
    "log_every": lambda value: is_int(value, 1),
    "eval_every": lambda value: is_int(value, 0),
    "checkpoint_every": lambda value: is_int(value, 0),
    "data_dir": lambda value: isinstance(value, str),
    "lr_overrides": lambda value: isinstance(value, list) and all(isinstance(item, dict) for item in value),
    "layers": lambda value: isinstance(value, list) and bool(value) and all(is_int(item, 1) for item in value),
    "activation": lambda value: value in HIDDEN_ACTIVATIONS,
    "scale": lambda value: value in SCALE_MODES,
    "scaler": lambda value: isinstance(value, dict),  # its contents: Scaler.from_config checks them
    "val_fraction": lambda value: isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1,
    "data_path": lambda value: isinstance(value, str) and bool(value),
    "data_format": lambda value: isinstance(value, str),
    "key": lambda value: isinstance(value, str),
    "label_column": lambda value: isinstance(value, str) or is_int(value, -(2**31)),
    "features": lambda value: is_int(value, 1),
    "rows": lambda value: is_int(value, 1),
    "image_shape": lambda value: isinstance(value, list) and len(value) in (2, 3) and all(is_int(item, 1) for item in value),
}


def saved_config(checkpoint) -> dict:
    """The run's config recorded in the checkpoint ({} when none), each value the
    command line reads back checked first: a bad one is a clear error, not a crash."""
    config = checkpoint.extra.get("config") if isinstance(checkpoint.extra, dict) else None
    if not isinstance(config, dict):
        return {}
    for key, valid in _SAVED_VALUE_CHECKS.items():
        if config.get(key) is not None and not valid(config[key]):
            raise CLIError(
                f"{checkpoint.path}: the run's recorded {key} ({config[key]!r}) is not a valid value; "
                "its config was edited or damaged (give the option explicitly on a new run)"
            )
    return config
