"""Checkpoints: save, load and resume a model, as one ``.npz`` file with no pickle.

    from nanoae.checkpoint import save_checkpoint, load_checkpoint, restore_sampler

    save_checkpoint("runs/ae.npz", model, sampler=sampler, extra={"lr": 0.001})
    ckpt = load_checkpoint("runs/ae.npz")            # a new model, ready to train on
    model, sampler = ckpt.model, restore_sampler(ckpt)

The file format (format_version 1)
----------------------------------
A checkpoint is an ordinary NumPy ``.npz`` archive (a zip of ``.npy`` files, written
uncompressed) holding only numeric arrays:

========================  ===============  ===================================================
array                     dtype, shape     what
========================  ===============  ===================================================
``header``                uint8 (n,)       UTF-8 bytes of a JSON document (below)
``params``                float (size,)    the whole flat parameter arena; float32 or float64,
                                           as the header's ``dtype``; size = ``arena_size``
``optimizer/<buffer>``    float (size,)    one per optimizer state buffer (``mean_square``,
                                           ``momentum``, ``first_moment``, ``velocity``...)
``sampler/permutation``   int64 (n,)       the batch sampler's current epoch order; only
                                           when a sampler was saved
========================  ===============  ===================================================

The JSON header::

    {"format": "nanoae-checkpoint", "format_version": 1, "nanoae_version": "0.1.0",
     "dtype": "float32", "arena_size": 1100320,
     "layout": {"encoder.0.weights": [0, [784, 784]], ...},   # name -> [offset, shape]
     "model": {...model.config()...},  "step": 1000,          # model.steps_trained
     "optimizer": {"config": {...}, "steps": 1000} | null,    # optimizer.update_count
     "rng_state": {...model.rng.bit_generator.state...},      # PCG64: 128-bit ints
     "sampler": {"n": 60000, "batch_size": 256, "epoch": 4, "position": 1536,
                 "rng_state": {...the sampler's own generator state...}} | null,
     "extra": {...whatever JSON the caller passed: training config, metrics...}}

The sampler's ``rng_state`` is its own generator's state (the sampler shares no
generator with the model). Files written before samplers owned a generator lack it;
they still load, and :func:`restore_sampler` resumes them as it describes.

Everything in it is backend-neutral host data: a checkpoint written on a GPU loads on
a CPU and the other way round. Python's ``json`` writes and reads integers of any
size, so the generator's 128-bit state survives exactly; arrays inside a generator's
state (e.g. MT19937's key) are stored as ``{"__ndarray__": [...], "dtype": ...}``.
The ``extra`` document may hold NaN or infinity (Python's ``json`` extension): a
diverged run can still record its last loss.

Why no pickle
-------------
Unpickling runs arbitrary code chosen by whoever wrote the file, and
checkpoints get shared, downloaded and attached to bug reports, so
loading one must be safe: the archive is read with ``np.load(allow_pickle=False)``,
every array must be a plain numeric array, the metadata is JSON, and the model is
rebuilt from its JSON config by :func:`nanoae.module.module_from_config`. An object
array, a hostile or garbled file or a wrong shape is refused with a
:class:`CheckpointError` before anything of it is used.

Atomic writes
-------------
:func:`save_checkpoint` creates the parent directories, then writes through
:func:`nanoae.atomic.write_atomically`: the whole archive goes to a temporary file
in the same directory (``.<name>.tmp-<pid>-<random hex>``), is fsynced and renamed
over the target with ``os.replace``. A process killed at any moment therefore leaves
either the previous checkpoint or the new one at the target path, never a mixture or
a half-written file; at worst a stray temporary file stays behind, which
:func:`load_checkpoint` never reads (it reads only the path it is given) and
:func:`remove_stale_temp_files` cleans up.

Errors
------
Every problem with a checkpoint file (missing, unreadable, not a checkpoint, corrupt,
inconsistent, from a newer nanoae) and every failure to write one raises
:class:`CheckpointError`, a :class:`ValueError` whose message names the file and what
is wrong (``.path`` holds the path; the low-level exception, if any, is chained as
``__cause__``). It is a ValueError rather than an OSError because most failures are
about a file's *content* (a bad value handed to nanoae), not the operating system;
I/O failures (no such file, no permission, disk full) keep their OSError as the cause.
Problems that are not about the file pass through unchanged: asking for a backend
that cannot run here raises :class:`~nanoae.backend.BackendUnavailable`, a bad
``backend`` name a ValueError.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nanoae.atomic import DirectoryNotWritable, remove_stale_temp_files, write_atomically
from nanoae.backend import get_backend
from nanoae.data.batching import BatchSampler
from nanoae.module import module_from_config
from nanoae.version import __version__

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "load_checkpoint",
    "remove_stale_temp_files",
    "restore_into",
    "restore_sampler",
    "save_checkpoint",
]

FORMAT = "nanoae-checkpoint"
FORMAT_VERSION = 1
_FLOAT_DTYPES = ("float32", "float64")
_BIT_GENERATORS = {  # the only names a header may ask for: never getattr a name from a file
    cls.__name__: cls
    for cls in (np.random.PCG64, np.random.PCG64DXSM, np.random.MT19937, np.random.Philox, np.random.SFC64)
}
_HEADER_FIELDS = (
    "format",
    "format_version",
    "nanoae_version",
    "dtype",
    "arena_size",
    "layout",
    "model",
    "step",
    "optimizer",
    "rng_state",
    "sampler",
    "extra",
)


class CheckpointError(ValueError):
    """A checkpoint cannot be read or written; the message names the file and why.

    path: the checkpoint's path (a :class:`pathlib.Path`), or None.
    """

    def __init__(self, path, problem: str) -> None:
        self.path = Path(path) if path is not None else None
        self.problem = problem
        super().__init__(f"checkpoint {str(path)!r}: {problem}" if path is not None else problem)


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns.

    model:         the rebuilt model, parameters, optimizer state, step and RNG restored
    step:          ``model.steps_trained`` when saved (training steps taken)
    sampler_state: ``BatchSampler.state_dict()`` as saved (``permutation`` an int64
                   array, ``rng_state`` the sampler's generator state), or None; see
                   :func:`restore_sampler`
    extra:         the caller's JSON document (a dict; empty when none was given)
    header:        the whole JSON header
    path:          the file read
    """

    model: Any
    step: int
    sampler_state: dict | None
    extra: dict
    header: dict
    path: Path


# ---- JSON helpers ------------------------------------------------------------------
def _json_default(value):
    """Let numpy scalars and arrays-in-generator-states through json.dumps."""
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def _encode_rng_state(state):
    """bit_generator.state -> JSON-able (ndarrays become {"__ndarray__", "dtype"})."""
    if isinstance(state, dict):
        return {key: _encode_rng_state(value) for key, value in state.items()}
    if isinstance(state, np.ndarray):
        return {"__ndarray__": state.tolist(), "dtype": state.dtype.name}
    if isinstance(state, np.generic):
        return state.item()
    return state


def _decode_rng_state(state, path: Path, owner: str):
    """The inverse of :func:`_encode_rng_state`; a garbled array is the file's fault."""
    if isinstance(state, dict):
        if set(state) == {"__ndarray__", "dtype"}:
            try:
                dtype = np.dtype(state["dtype"])
                if dtype.kind not in "biu":
                    raise TypeError(f"dtype {dtype} is not an integer type")
                return np.asarray(state["__ndarray__"], dtype=dtype)
            except (TypeError, ValueError, OverflowError) as exc:
                raise CheckpointError(path, f"invalid header: the {owner}'s rng_state holds a bad array ({exc})") from exc
        return {key: _decode_rng_state(value, path, owner) for key, value in state.items()}
    return state


def _dumps(document: dict) -> bytes:
    return json.dumps(document, default=_json_default, ensure_ascii=False).encode("utf-8")


def _check_extra(extra) -> dict:
    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        raise CheckpointError(None, f"extra must be a dict of JSON data, got {type(extra).__name__}")
    try:
        text = json.dumps(dict(extra), default=_json_default)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            None,
            f"extra must be JSON-serializable (dicts, lists, str, int, float, bool, None): {exc}; "
            "convert arrays with .tolist() and other objects to plain values",
        ) from exc
    return json.loads(text)


# ---- saving ------------------------------------------------------------------------
def _host(model, array) -> np.ndarray:
    return np.ascontiguousarray(model.backend.to_host(array))


def _sampler_state(sampler) -> dict | None:
    if sampler is None:
        return None
    if hasattr(sampler, "state_dict"):
        state = sampler.state_dict()
    elif isinstance(sampler, Mapping):
        state = dict(sampler)
    else:
        raise CheckpointError(
            None, f"sampler must be a BatchSampler or its state_dict(), got {type(sampler).__name__}"
        )
    return state


def _build_contents(model, sampler, extra) -> tuple[dict, dict]:
    """(header, {array name: host array}) for a model."""
    if getattr(model, "arena", None) is None:
        if getattr(model, "built", False):
            raise CheckpointError(
                None, f"this {type(model).__name__} is part of a bigger model, which owns its parameters; save that model"
            )
        raise CheckpointError(None, f"this {type(model).__name__} is not built yet; build or train it before saving")
    arena = model.arena
    dtype = np.dtype(arena.backend.dtype).name
    arrays = {"params": _host(model, arena.values)}
    optimizer = getattr(model, "optimizer", None)
    optimizer_header = None
    if optimizer is not None:
        optimizer_header = {"config": optimizer.config(), "steps": int(optimizer.update_count)}
        for name, buffer in optimizer.state.items():
            arrays[f"optimizer/{name}"] = _host(model, buffer)
    sampler_header = None
    state = _sampler_state(sampler)
    if state is not None:
        sampler_header = {}
        for key, value in state.items():  # arrays to the archive, scalars to the header
            if isinstance(value, np.ndarray) and value.ndim > 0:
                arrays[f"sampler/{key}"] = np.ascontiguousarray(value)
            elif key == "rng_state":
                sampler_header[key] = _encode_rng_state(value)
            else:
                sampler_header[key] = value.item() if isinstance(value, (np.ndarray, np.generic)) else value
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "nanoae_version": __version__,
        "dtype": dtype,
        "arena_size": int(arena.size),
        "layout": {name: [int(offset), [int(d) for d in shape]] for name, (offset, shape) in arena.layout.items()},
        "model": model.config(),
        "step": int(getattr(model, "steps_trained", 0)),
        "optimizer": optimizer_header,
        "rng_state": _encode_rng_state(model.rng.bit_generator.state) if model.rng is not None else None,
        "sampler": sampler_header,
        "extra": _check_extra(extra),
    }
    return header, arrays


def _refuse_nonfinite(target: Path, model) -> None:
    """A CheckpointError when the model's parameters hold a NaN or an infinity."""
    arena = getattr(model, "arena", None)
    if arena is None:
        return  # not built: _build_contents says so
    bad = int((~np.isfinite(model.backend.to_host(arena.values))).sum())
    if bad:
        raise CheckpointError(
            target,
            f"not written: {bad} of the model's parameters are NaN or infinite (a diverged model); "
            "save an earlier state, or pass allow_nonfinite=True to keep this one for inspection",
        )


def save_checkpoint(path, model, *, sampler=None, extra=None, allow_nonfinite: bool = False) -> Path:
    """Write ``model`` (parameters, optimizer state, step, RNG) to ``path`` atomically.

    path:    the file to write (exactly this name: no suffix is added; ``.npz`` is the
             convention). Parent directories are created. An existing file is
             replaced only once the new one is complete and on disk.
    model:   a built model (or module with its own arena)
    sampler: a :class:`~nanoae.data.batching.BatchSampler` (or its ``state_dict()``)
             to save beside the model, so training resumes on the same batches
    extra:   a JSON-serializable dict stored in the header (training config, metrics)
    allow_nonfinite: write parameters that hold NaN or infinity (for inspection);
             without it such a model is refused, so a checkpoint is a finite model
    Returns the path as a :class:`pathlib.Path`. Raises :class:`CheckpointError`.
    """
    target = Path(os.fspath(path))
    if not allow_nonfinite:
        _refuse_nonfinite(target, model)
    try:
        header, arrays = _build_contents(model, sampler, extra)
        header_bytes = _dumps(header)
    except CheckpointError as exc:
        raise CheckpointError(target, exc.problem) from exc.__cause__
    except (TypeError, ValueError) as exc:
        raise CheckpointError(target, f"cannot describe the model in JSON: {exc}") from exc
    arrays = {"header": np.frombuffer(header_bytes, dtype=np.uint8), **arrays}

    if target.is_dir():
        raise CheckpointError(target, "is a directory; give a file name such as 'model.npz'")
    directory = target.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(target, f"cannot create the directory {str(directory)!r}: {exc.strerror or exc}") from exc

    try:
        write_atomically(target, lambda handle: np.savez(handle, **arrays))
    except DirectoryNotWritable as exc:
        raise CheckpointError(
            target, f"cannot write in the directory {str(directory)!r}: {exc.strerror or exc}"
        ) from exc.__cause__
    except OSError as exc:
        raise CheckpointError(target, f"writing failed: {exc.strerror or exc}") from exc
    return target


# ---- loading -----------------------------------------------------------------------
def _read_archive(path: Path) -> tuple[dict, dict]:
    """Read and validate a file: (header, {name: host array}). Touches no model."""
    if not path.exists():
        raise CheckpointError(path, "no such file (FileNotFoundError)")
    if path.is_dir():
        raise CheckpointError(path, "is a directory, not a checkpoint file")
    try:
        empty = path.stat().st_size == 0
    except OSError as exc:
        raise CheckpointError(path, f"cannot be read: {exc.strerror or exc}") from exc
    if empty:
        raise CheckpointError(path, "not a nanoae checkpoint: the file is empty")
    try:
        archive = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise CheckpointError(path, f"cannot be read: {exc.strerror or exc}") from exc
    except zipfile.BadZipFile as exc:
        raise CheckpointError(path, f"corrupt or truncated checkpoint (not a readable .npz zip archive): {exc}") from exc
    except ValueError as exc:  # not .npy / .npz: np.load would have to unpickle it
        raise CheckpointError(path, "not a nanoae checkpoint (not an .npz archive)") from exc
    except Exception as exc:  # EOFError and friends
        raise CheckpointError(path, f"not a nanoae checkpoint (unreadable: {type(exc).__name__}: {exc})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise CheckpointError(path, "not a nanoae checkpoint (a single .npy array, not an .npz archive)")
    with archive:
        names = list(archive.files)
        if "header" not in names:
            raise CheckpointError(path, "not a nanoae checkpoint (the archive has no 'header' array)")
        header = _parse_header(path, _read_array(path, archive, "header"))
        arrays = {}
        for name in names:
            if name == "header":
                continue
            known = name == "params" or name.startswith(("optimizer/", "sampler/"))
            if not known:
                raise CheckpointError(path, f"unexpected array {name!r} in the archive (not part of format {FORMAT_VERSION})")
            arrays[name] = _read_array(path, archive, name)
    _check_arrays(path, header, arrays)
    return header, arrays


def _read_array(path: Path, archive, name: str) -> np.ndarray:
    try:
        array = archive[name]
    except ValueError as exc:  # "Object arrays cannot be loaded when allow_pickle=False"
        if "pickle" in str(exc) or "Object arrays" in str(exc):
            raise CheckpointError(
                path, f"array {name!r} holds Python objects (pickled data); refused, nothing was unpickled"
            ) from exc
        raise CheckpointError(path, f"array {name!r} is corrupt: {exc}") from exc
    except Exception as exc:  # BadZipFile (CRC), EOFError, zlib.error, ...
        raise CheckpointError(path, f"corrupt or truncated checkpoint: array {name!r} cannot be read ({exc})") from exc
    if array.dtype.kind not in "biuf":
        raise CheckpointError(path, f"array {name!r} has dtype {array.dtype}, not a plain numeric array")
    return array


def _parse_header(path: Path, raw: np.ndarray) -> dict:
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(path, f"not a nanoae checkpoint (header is {raw.dtype} {raw.shape}, expected uint8 bytes)")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(path, f"not a nanoae checkpoint (the header is not UTF-8 JSON: {exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise CheckpointError(path, f"not a nanoae checkpoint (header format is {found!r}, expected {FORMAT!r})")
    version = header.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(path, f"invalid header: format_version is {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            path,
            f"written by a newer nanoae (format {version}); upgrade nanoae (this one, {__version__}, "
            f"reads formats up to {FORMAT_VERSION}; the file comes from nanoae {header.get('nanoae_version', '?')})",
        )
    missing = [name for name in _HEADER_FIELDS if name not in header]
    if missing:
        raise CheckpointError(path, f"invalid header: missing {', '.join(missing)}")

    def bad(what: str):
        return CheckpointError(path, f"invalid header: {what}")

    def is_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if header["dtype"] not in _FLOAT_DTYPES:
        raise bad(f"dtype {header['dtype']!r} is not one of {', '.join(_FLOAT_DTYPES)}")
    if not is_int(header["arena_size"]) or header["arena_size"] < 0:
        raise bad(f"arena_size {header['arena_size']!r} is not a size")
    if not is_int(header["step"]) or header["step"] < 0:
        raise bad(f"step {header['step']!r} is not a step count")
    layout = header["layout"]
    if not isinstance(layout, dict):
        raise bad("layout is not a {name: [offset, shape]} object")
    parsed = {}
    for name, entry in layout.items():
        ok = (
            isinstance(entry, list)
            and len(entry) == 2
            and is_int(entry[0])
            and isinstance(entry[1], list)
            and all(is_int(d) and d >= 0 for d in entry[1])
        )
        if not ok:
            raise bad(f"layout entry {name!r} is {entry!r}, expected [offset, [shape...]]")
        offset, shape = entry[0], tuple(entry[1])
        if offset < 0 or offset + int(np.prod(shape, dtype=np.int64)) > header["arena_size"]:
            raise bad(f"layout entry {name!r} lies outside the arena of {header['arena_size']} values")
        parsed[name] = (offset, shape)
    header["_layout"] = parsed
    if not isinstance(header["model"], dict):
        raise bad("model is not a config object")
    optimizer = header["optimizer"]
    if optimizer is not None and not (
        isinstance(optimizer, dict)
        and isinstance(optimizer.get("config"), dict)
        and is_int(optimizer.get("steps"))
        and optimizer["steps"] >= 0
    ):
        raise bad(f"optimizer is {optimizer!r}, expected {{'config': {{...}}, 'steps': int}} or null")
    if header["rng_state"] is not None and not (
        isinstance(header["rng_state"], dict) and isinstance(header["rng_state"].get("bit_generator"), str)
    ):
        raise bad("rng_state is not a numpy bit generator state")
    if header["sampler"] is not None and not isinstance(header["sampler"], dict):
        raise bad("sampler is not an object or null")
    if not isinstance(header["extra"], dict):
        raise bad("extra is not an object")
    return header


def _check_arrays(path: Path, header: dict, arrays: dict) -> None:
    """Shapes and dtypes of the arrays against the header."""
    dtype, size = header["dtype"], header["arena_size"]
    if "params" not in arrays:
        raise CheckpointError(path, "the archive has no 'params' array")
    for name, array in arrays.items():
        if name == "params" or name.startswith("optimizer/"):
            if array.shape != (size,) or array.dtype.name != dtype:
                raise CheckpointError(
                    path,
                    f"array {name!r} is {array.dtype.name} {array.shape}; the header says {dtype} ({size},)",
                )
    optimizer_names = sorted(name for name in arrays if name.startswith("optimizer/"))
    if header["optimizer"] is None and optimizer_names:
        raise CheckpointError(path, f"optimizer arrays {optimizer_names} but the header has no optimizer")
    sampler_names = [name for name in arrays if name.startswith("sampler/")]
    if header["sampler"] is None and sampler_names:
        raise CheckpointError(path, f"sampler arrays {sampler_names} but the header has no sampler")
    if header["sampler"] is not None:
        n = header["sampler"].get("n")
        permutation = arrays.get("sampler/permutation")
        if permutation is None:
            raise CheckpointError(path, "the header has a sampler but the archive has no 'sampler/permutation'")
        if permutation.dtype.kind not in "iu" or (isinstance(n, int) and permutation.shape != (n,)):
            raise CheckpointError(
                path, f"array 'sampler/permutation' is {permutation.dtype} {permutation.shape}, expected int ({n},)"
            )


def _restore(path: Path, model, header: dict, arrays: dict) -> None:
    """Check ``model`` against the file, then copy everything in. Mutates only on success."""
    arena = model.arena
    model_dtype = np.dtype(arena.backend.dtype).name
    if model_dtype != header["dtype"]:
        raise CheckpointError(path, f"holds {header['dtype']} parameters; the model is {model_dtype}")
    layout = {name: (int(offset), tuple(int(d) for d in shape)) for name, (offset, shape) in arena.layout.items()}
    if layout != header["_layout"] or arena.size != header["arena_size"]:
        ours, theirs = set(layout), set(header["_layout"])
        detail = ""
        if ours != theirs:
            detail = f" (only in the file: {sorted(theirs - ours)[:5]}; only in the model: {sorted(ours - theirs)[:5]})"
        else:
            diff = [name for name in layout if layout[name] != header["_layout"][name]]
            if diff:
                name = diff[0]
                detail = f" ({name!r}: file {list(header['_layout'][name])}, model {list(layout[name])})"
        raise CheckpointError(
            path, f"parameter layout differs from the rebuilt model's (arena {header['arena_size']} vs {arena.size}){detail}"
        )
    optimizer = getattr(model, "optimizer", None)
    buffers = {name[len("optimizer/"):]: array for name, array in arrays.items() if name.startswith("optimizer/")}
    if optimizer is not None:
        if header["optimizer"] is None:
            raise CheckpointError(path, "holds no optimizer state but the model has an optimizer")
        expected = set(optimizer.state)
        if set(buffers) != expected:
            missing = sorted(expected - set(buffers))
            surplus = sorted(set(buffers) - expected)
            parts = []
            if missing:
                parts.append("missing optimizer buffer(s) " + ", ".join(f"'optimizer/{n}'" for n in missing))
            if surplus:
                parts.append("unexpected optimizer buffer(s) " + ", ".join(f"'optimizer/{n}'" for n in surplus))
            raise CheckpointError(path, f"{'; '.join(parts)} for {optimizer!r}")
    elif header["optimizer"] is not None:
        raise CheckpointError(path, "holds optimizer state but the model has no optimizer")
    rng_state = _decode_rng_state(header["rng_state"], path, "model") if header["rng_state"] is not None else None
    new_rng = None
    if rng_state is not None:
        kind = rng_state["bit_generator"]
        if kind not in _BIT_GENERATORS:
            raise CheckpointError(path, f"invalid header: unknown bit generator {kind!r}")
        try:
            bit_generator = _BIT_GENERATORS[kind]()
            bit_generator.state = rng_state
        except Exception as exc:
            raise CheckpointError(path, f"invalid header: rng_state cannot be restored ({exc})") from exc
        new_rng = bit_generator

    # Everything checked: now write.
    backend = arena.backend
    arena.values[...] = backend.asarray(arrays["params"], dtype=arena.values.dtype)
    if optimizer is not None:
        optimizer.load_state_dict({"steps": header["optimizer"]["steps"], **buffers})
    if hasattr(model, "steps_trained"):
        model.steps_trained = header["step"]
    if new_rng is not None:
        current = model.rng
        if current is not None and type(current.bit_generator) is type(new_rng):
            current.bit_generator.state = new_rng.state  # in place: whoever holds model.rng follows
        else:
            model.rng = np.random.Generator(new_rng)


def _sampler_state_from(path: Path, header: dict, arrays: dict) -> dict | None:
    if header["sampler"] is None:
        return None
    state = dict(header["sampler"])
    if "rng_state" in state:
        state["rng_state"] = _decode_rng_state(state["rng_state"], path, "sampler")
    for name, array in arrays.items():
        if name.startswith("sampler/"):
            state[name[len("sampler/"):]] = array.astype(np.int64, copy=True) if array.dtype.kind in "iu" else array
    return state


def _public_header(header: dict) -> dict:
    return {key: value for key, value in header.items() if not key.startswith("_")}


def load_checkpoint(path, backend=None) -> Checkpoint:
    """Rebuild the saved model and restore its parameters, optimizer, step and RNG.

    path:    a file written by :func:`save_checkpoint`
    backend: "numpy" | "cupy" | "auto" | a Backend; None: ``$NANOAE_BACKEND`` (default
             auto). The dtype is the checkpoint's. Any backend reads any checkpoint.
    Returns a :class:`Checkpoint`. Raises :class:`CheckpointError` for every problem
    with the file (the message names it), BackendUnavailable for a backend that
    cannot run here.
    """
    path = Path(os.fspath(path))
    resolved = get_backend(backend)  # a bad name or a missing GPU: the caller's error, raised first
    header, arrays = _read_archive(path)
    target_backend = get_backend(resolved, dtype=header["dtype"])
    try:
        model = module_from_config(header["model"], backend=target_backend, dtype=header["dtype"])
    except Exception as exc:
        raise CheckpointError(
            path, f"cannot rebuild the model from the header's config ({type(exc).__name__}: {exc})"
        ) from exc
    if not model.built:
        model.build(backend=target_backend, dtype=header["dtype"])
    _restore(path, model, header, arrays)
    return Checkpoint(
        model=model,
        step=header["step"],
        sampler_state=_sampler_state_from(path, header, arrays),
        extra=header["extra"],
        header=_public_header(header),
        path=path,
    )


def restore_into(path, model) -> Checkpoint:
    """Load a checkpoint's state into an existing model of the same architecture.

    The model's config (layers, loss, optimizer) and dtype must match the file's;
    its backend may differ. On any error the model is left untouched.
    Returns a :class:`Checkpoint` whose ``model`` is ``model``.
    """
    path = Path(os.fspath(path))
    header, arrays = _read_archive(path)
    if getattr(model, "arena", None) is None:
        if getattr(model, "built", False):
            raise CheckpointError(
                path, f"this {type(model).__name__} is part of a bigger model; restore into that model"
            )
        model.build()
    config = json.loads(_dumps(model.config()))  # compare as JSON sees it
    if config != header["model"]:
        raise CheckpointError(
            path, f"was saved from a different model: file config {header['model']!r}, model config {config!r}"
        )
    _restore(path, model, header, arrays)
    return Checkpoint(
        model=model,
        step=header["step"],
        sampler_state=_sampler_state_from(path, header, arrays),
        extra=header["extra"],
        header=_public_header(header),
        path=path,
    )


def restore_sampler(checkpoint: Checkpoint):
    """The BatchSampler saved in ``checkpoint``, positioned exactly where it was saved,
    its own generator included; None when no sampler was saved.

    Checkpoints written before samplers owned their generator hold no ``rng_state``
    for it. They still resume: the saved epoch's order is kept exactly, and the later
    epochs are shuffled by a new generator seeded with one draw from the checkpoint
    model's generator (so such a run no longer matches an unstopped one after the
    current epoch).
    """
    state = checkpoint.sampler_state
    if state is None:
        return None
    if "rng_state" not in state:
        seed = int(checkpoint.model.rng.integers(2**63))
        state = {**state, "rng_state": np.random.Generator(np.random.PCG64(seed)).bit_generator.state}
    try:
        return BatchSampler.from_state_dict(state)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(checkpoint.path, f"the saved sampler state cannot be restored: {exc}") from exc
