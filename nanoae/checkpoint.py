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
     "extra": {...whatever JSON the caller passed: training config, metrics...},
     "checksums": {"params": "sha256:<hex>", ...}}             # one per array

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
loading one must be safe: nanoae reads the archive itself (see below) and refuses
any member whose ``.npy`` preamble declares Python objects, so every array is a
plain numeric array, the metadata is JSON, and the model is
rebuilt from its JSON config by :func:`nanoae.module.module_from_config`. An object
array, a hostile or garbled file or a wrong shape is refused with a
:class:`CheckpointError` before anything of it is used.

Untrusted files
---------------
A checkpoint may be hostile, so no size in it is trusted before it is checked against
another, and nothing is inflated or allocated before the checks:

1. the zip directory: only ``.npy`` members of known names, none twice, each lying
   inside the file; a compressed member may inflate at most 64-fold (beyond 1 MiB), so
   a deflate bomb is refused from its directory entry;
2. the JSON header (at most 64 MiB, nested at most 64 deep), then each member's
   ``.npy`` preamble (its first bytes only): dtype and shape against the header's
   ``dtype`` and ``arena_size``, and the member's declared size against both;
3. the model config: the parameters its layers declare must fit in ``arena_size``,
   so a header describing a huge model is refused before that model is built;
4. only then the data, each member read in 1 MiB chunks into one array of exactly
   its checked size (the zip CRC verified at its end), then each array against the
   header's ``checksums`` (files written before checksums existed have none; they
   catch members swapped or replaced whole, which sizes and CRCs cannot);
5. parameters and optimizer state must be finite (``allow_non_finite=True`` loads a
   diverged run's file for inspection).

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

import hashlib
import json
import math
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
def _checksum(array: np.ndarray) -> str:
    """SHA-256 of an array's values as little-endian bytes in C order."""
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return "sha256:" + hashlib.sha256(memoryview(little).cast("B")).hexdigest()


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
        "checksums": {name: _checksum(array) for name, array in arrays.items()},
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
            "save an earlier state, or pass allow_non_finite=True to keep this one for inspection",
        )


def save_checkpoint(path, model, *, sampler=None, extra=None, allow_non_finite: bool = False) -> Path:
    """Write ``model`` (parameters, optimizer state, step, RNG) to ``path`` atomically.

    path:    the file to write (exactly this name: no suffix is added; ``.npz`` is the
             convention). Parent directories are created. An existing file is
             replaced only once the new one is complete and on disk.
    model:   a built model (or module with its own arena)
    sampler: a :class:`~nanoae.data.batching.BatchSampler` (or its ``state_dict()``)
             to save beside the model, so training resumes on the same batches
    extra:   a JSON-serializable dict stored in the header (training config, metrics)
    allow_non_finite: write parameters that hold NaN or infinity (for inspection);
             without it such a model is refused, so a checkpoint is a finite model
    Returns the path as a :class:`pathlib.Path`. Raises :class:`CheckpointError`.
    """
    target = Path(os.fspath(path))
    if not allow_non_finite:
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
# A checkpoint is untrusted input (it may come from anywhere), so the reader trusts no
# size in it until it has been checked against another: the zip directory's sizes
# against the file's length, each member's .npy header against the JSON header's
# layout, the layout against the model config. Only then is any array data read, each
# member into one array of exactly the checked size, in bounded chunks.
_HEADER_LIMIT = 64 * 2**20  # bytes of JSON header: far beyond any real model's config
_NPY_HEADER_LIMIT = 4096  # bytes of a member's .npy preamble (NumPy writes 128)
_MAX_MEMBERS = 1024
#: A compressed member may inflate at most this many times its stored size (once over
#: :data:`_SMALL_MEMBER` bytes). nanoae writes members uncompressed; a recompressed file
#: of real float parameters shrinks by far less, while a deflate bomb expands 1000-fold.
_MAX_INFLATION = 64
_SMALL_MEMBER = 2**20
_READ_CHUNK = 2**20
_NPY_MAGIC = b"\x93NUMPY"


@dataclass
class _Member:
    """One checked .npy member of the archive: its zip entry, dtype, shape and where
    its data starts (the length of its .npy preamble)."""

    info: zipfile.ZipInfo
    dtype: np.dtype
    shape: tuple
    data_offset: int

    @property
    def count(self) -> int:
        return math.prod(self.shape)


def _open_archive(path: Path) -> zipfile.ZipFile:
    if not path.exists():
        raise CheckpointError(path, "no such file (FileNotFoundError)")
    if path.is_dir():
        raise CheckpointError(path, "is a directory, not a checkpoint file")
    try:
        with open(path, "rb") as handle:
            start = handle.read(8)
    except OSError as exc:
        raise CheckpointError(path, f"cannot be read: {exc.strerror or exc}") from exc
    if not start:
        raise CheckpointError(path, "not a nanoae checkpoint: the file is empty")
    if start.startswith(_NPY_MAGIC):
        raise CheckpointError(path, "not a nanoae checkpoint (a single .npy array, not an .npz archive)")
    try:
        return zipfile.ZipFile(path)
    except OSError as exc:
        raise CheckpointError(path, f"cannot be read: {exc.strerror or exc}") from exc
    except Exception as exc:  # BadZipFile, and whatever a garbled directory raises
        if start.startswith(b"PK"):
            raise CheckpointError(
                path, f"corrupt or truncated checkpoint (not a readable .npz zip archive): {exc}"
            ) from exc
        raise CheckpointError(path, "not a nanoae checkpoint (not an .npz archive)") from exc


def _check_directory(path: Path, archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """{array name: zip entry}, each entry's sizes checked against the file's length
    and the inflation bound: nothing in the archive is decompressed yet."""
    file_size = path.stat().st_size
    infos = archive.infolist()
    if len(infos) > _MAX_MEMBERS:
        raise CheckpointError(path, f"the archive lists {len(infos)} members; a checkpoint has a handful")
    entries: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        if not info.filename.endswith(".npy"):
            raise CheckpointError(path, f"unexpected member {info.filename!r} in the archive (not a .npy array)")
        name = info.filename[: -len(".npy")]
        if name in entries:
            raise CheckpointError(path, f"the archive holds array {name!r} twice; refused (which one is meant?)")
        known = name in ("header", "params") or name.startswith(("optimizer/", "sampler/"))
        if not known:
            raise CheckpointError(path, f"unexpected array {name!r} in the archive (not part of format {FORMAT_VERSION})")
        if info.flag_bits & 0x1:
            raise CheckpointError(path, f"array {name!r} is encrypted; a checkpoint is never encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CheckpointError(
                path, f"array {name!r} uses zip compression method {info.compress_type}; only stored or deflated members are read"
            )
        if info.header_offset + info.compress_size > file_size:
            raise CheckpointError(
                path,
                f"corrupt or truncated checkpoint: array {name!r} claims {info.compress_size} bytes beyond the "
                f"file's {file_size}",
            )
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise CheckpointError(
                path, f"corrupt checkpoint: stored array {name!r} declares {info.file_size} bytes but holds {info.compress_size}"
            )
        if info.file_size > _SMALL_MEMBER and info.file_size > _MAX_INFLATION * info.compress_size:
            raise CheckpointError(
                path,
                f"array {name!r} would inflate from {info.compress_size} to {info.file_size} bytes (over "
                f"{_MAX_INFLATION}-fold): refused as a decompression bomb; nanoae writes checkpoints uncompressed "
                "(re-save it with numpy.savez, not savez_compressed)",
            )
        entries[name] = info
    if "header" not in entries:
        raise CheckpointError(path, "not a nanoae checkpoint (the archive has no 'header' array)")
    return entries


def _open_member(path: Path, archive: zipfile.ZipFile, name: str, info: zipfile.ZipInfo):
    try:
        return archive.open(info)
    except Exception as exc:  # BadZipFile (a garbled local header), NotImplementedError, ...
        raise CheckpointError(path, f"corrupt or truncated checkpoint: array {name!r} cannot be read ({exc})") from exc


def _read_npy_preamble(path: Path, archive: zipfile.ZipFile, name: str, info: zipfile.ZipInfo) -> _Member:
    """A member's dtype and shape from the first bytes of its .npy header only."""
    with _open_member(path, archive, name, info) as member:
        try:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(member, max_header_size=_NPY_HEADER_LIMIT)
            elif version in ((2, 0), (3, 0)):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(member, max_header_size=_NPY_HEADER_LIMIT)
            else:
                raise ValueError(f".npy format version {version} is not supported")
            offset = member.tell()
        except Exception as exc:  # ValueError (bad magic, header), zlib.error, BadZipFile, EOFError
            raise CheckpointError(path, f"corrupt or truncated checkpoint: array {name!r} has no valid .npy header ({exc})") from exc
    if dtype.hasobject:
        raise CheckpointError(path, f"array {name!r} holds Python objects (pickled data); refused, nothing was unpickled")
    if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise CheckpointError(path, f"array {name!r} has dtype {dtype}, not a plain numeric array")
    if len(shape) > 1 and fortran_order:
        raise CheckpointError(path, f"array {name!r} is stored in Fortran order; a checkpoint holds flat arrays")
    member_info = _Member(info, dtype, tuple(shape), offset)
    expected = offset + member_info.count * dtype.itemsize
    if info.file_size != expected:
        raise CheckpointError(
            path,
            f"corrupt checkpoint: array {name!r} ({dtype.name} {tuple(shape)}) should take {expected} bytes; "
            f"the archive declares {info.file_size}",
        )
    return member_info


def _read_member(path: Path, archive: zipfile.ZipFile, name: str, checked: _Member) -> np.ndarray:
    """The member's data, into one array of the checked dtype and shape (native byte
    order), read in bounded chunks; the zip CRC is verified at the end."""
    array = np.empty(checked.count, dtype=checked.dtype)
    view = memoryview(array).cast("B") if array.nbytes else memoryview(b"")
    with _open_member(path, archive, name, checked.info) as member:
        try:
            member.read(checked.data_offset)
            position = 0
            while position < array.nbytes:
                chunk = member.read(min(_READ_CHUNK, array.nbytes - position))
                if not chunk:
                    raise EOFError(f"the data ends after {position} of {array.nbytes} bytes")
                view[position : position + len(chunk)] = chunk
                position += len(chunk)
            if member.read(1):
                raise ValueError("more data than its header declares")
        except CheckpointError:
            raise
        except Exception as exc:  # BadZipFile (CRC), EOFError, zlib.error, ...
            raise CheckpointError(path, f"corrupt or truncated checkpoint: array {name!r} cannot be read ({exc})") from exc
    array = array.reshape(checked.shape)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def _declared_parameter_count(config) -> int:
    """How many parameters the model config's layers declare, without building anything.

    Each leaf layer (a config with ``in_features`` and ``out_features``) is rebuilt
    alone (a layer allocates nothing until a model binds it) and asked for its
    parameter shapes. A layer that cannot be rebuilt counts 0: rebuilding the whole
    model will report it.
    """
    total = 0
    stack = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            leaf = isinstance(item.get("in_features"), int) and isinstance(item.get("out_features"), int)
            if leaf and isinstance(item.get("type"), str):
                try:
                    layer = module_from_config(item)
                    if getattr(layer, "arena", None) is None and not getattr(layer, "built", False):
                        total += sum(math.prod(int(d) for d in spec.shape) for spec in layer.parameter_specs())
                        continue
                except Exception:  # reported by the full rebuild
                    pass
            stack.extend(item.values())
    return total


def _read_archive(path: Path, allow_non_finite: bool = False) -> tuple[dict, dict]:
    """Read and validate a file: (header, {name: host array}). Touches no model.

    Order: zip directory (sizes against the file), the JSON header (bounded), each
    member's .npy preamble against the header's layout, the model config's parameter
    count against the arena; then the data, each array allocated at its checked size;
    then finiteness.
    """
    archive = _open_archive(path)
    with archive:
        try:
            entries = _check_directory(path, archive)
        except OSError as exc:
            raise CheckpointError(path, f"cannot be read: {exc.strerror or exc}") from exc
        header_member = _read_npy_preamble(path, archive, "header", entries["header"])
        if header_member.dtype != np.uint8 or len(header_member.shape) != 1:
            raise CheckpointError(
                path,
                f"not a nanoae checkpoint (header is {header_member.dtype} {header_member.shape}, expected uint8 bytes)",
            )
        if header_member.count > _HEADER_LIMIT:
            raise CheckpointError(path, f"the JSON header is {header_member.count} bytes; refused (over {_HEADER_LIMIT})")
        header = _parse_header(path, _read_member(path, archive, "header", header_member))
        members = {
            name: _read_npy_preamble(path, archive, name, info) for name, info in entries.items() if name != "header"
        }
        _check_arrays(path, header, {name: (member.dtype, member.shape) for name, member in members.items()})
        declared = _declared_parameter_count(header["model"])
        if declared > header["arena_size"]:
            raise CheckpointError(
                path,
                f"the model config declares {declared} parameters but the arena holds {header['arena_size']}; "
                "refused before building the model",
            )
        arrays = {name: _read_member(path, archive, name, member) for name, member in members.items()}
    _check_checksums(path, header, arrays)
    if not allow_non_finite:
        _check_finite(path, header, arrays)
    return header, arrays


def _check_checksums(path: Path, header: dict, arrays: dict) -> None:
    """Each array against the header's checksum of it (files written before checksums
    were recorded have none). The zip CRC catches damage inside a member; this catches
    members exchanged or replaced whole, which sizes and CRCs cannot."""
    checksums = header.get("checksums")
    if checksums is None:
        return
    if set(checksums) != set(arrays):
        raise CheckpointError(
            path, f"the header has checksums for {sorted(checksums)}, the archive holds arrays {sorted(arrays)}"
        )
    for name, array in arrays.items():
        if _checksum(array) != checksums[name]:
            raise CheckpointError(
                path, f"array {name!r} does not match the header's checksum: the file was altered (members replaced or exchanged)"
            )


def _check_finite(path: Path, header: dict, arrays: dict) -> None:
    for name, array in arrays.items():
        if not (name == "params" or name.startswith("optimizer/")):
            continue
        bad = ~np.isfinite(array)
        count = int(np.count_nonzero(bad))
        if count:
            first = int(np.argmax(bad))
            tensor = next(
                (t for t, (offset, shape) in header["_layout"].items() if offset <= first < offset + math.prod(shape)),
                None,
            )
            where = f" (the first in {tensor!r})" if tensor is not None and name == "params" else ""
            raise CheckpointError(
                path,
                f"array {name!r} holds {count} non-finite value(s) (NaN or infinity){where}: the run diverged "
                "before this was saved; refused (load_checkpoint(path, allow_non_finite=True) loads it for inspection)",
            )


_MAX_HEADER_DEPTH = 64  # a real header nests about 6 levels; deeper ones would make readers recurse


def _nesting_depth(document) -> int:
    """How deeply lists and dicts nest in a parsed JSON document (no recursion)."""
    deepest, stack = 0, [(document, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _parse_header(path: Path, raw: np.ndarray) -> dict:
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(path, f"not a nanoae checkpoint (header is {raw.dtype} {raw.shape}, expected uint8 bytes)")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(path, f"not a nanoae checkpoint (the header is not UTF-8 JSON: {exc})") from exc
    if _nesting_depth(header) > _MAX_HEADER_DEPTH:
        raise CheckpointError(path, f"invalid header: nested more than {_MAX_HEADER_DEPTH} levels deep")
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
        if offset < 0 or offset + math.prod(shape) > header["arena_size"]:
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
    checksums = header.get("checksums")
    if checksums is not None and not (
        isinstance(checksums, dict) and all(isinstance(value, str) for value in checksums.values())
    ):
        raise bad("checksums is not an object of {array name: 'sha256:<hex>'}")
    return header


def _check_arrays(path: Path, header: dict, arrays: dict) -> None:
    """Dtypes and shapes of the arrays ({name: (dtype, shape)}) against the header."""
    dtype, size = header["dtype"], header["arena_size"]
    if "params" not in arrays:
        raise CheckpointError(path, "the archive has no 'params' array")
    for name, (array_dtype, shape) in arrays.items():
        if name == "params" or name.startswith("optimizer/"):
            if shape != (size,) or array_dtype.name != dtype:
                raise CheckpointError(
                    path,
                    f"array {name!r} is {array_dtype.name} {shape}; the header says {dtype} ({size},)",
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
        permutation_dtype, permutation_shape = permutation
        if permutation_dtype.kind not in "iu" or permutation_dtype.itemsize > 8 or permutation_shape != (n,):
            raise CheckpointError(
                path, f"array 'sampler/permutation' is {permutation_dtype} {permutation_shape}, expected int ({n},)"
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


def load_checkpoint(path, backend=None, *, allow_non_finite: bool = False) -> Checkpoint:
    """Rebuild the saved model and restore its parameters, optimizer, step and RNG.

    path:    a file written by :func:`save_checkpoint`
    backend: "numpy" | "cupy" | "auto" | a Backend; None: ``$NANOAE_BACKEND`` (default
             auto). The dtype is the checkpoint's. Any backend reads any checkpoint.
    allow_non_finite: load parameters or optimizer state holding NaN or infinity (a
             diverged run's), for inspection; by default such a file is refused.
    Returns a :class:`Checkpoint`. Raises :class:`CheckpointError` for every problem
    with the file (the message names it), BackendUnavailable for a backend that
    cannot run here.
    """
    path = Path(os.fspath(path))
    resolved = get_backend(backend)  # a bad name or a missing GPU: the caller's error, raised first
    header, arrays = _read_archive(path, allow_non_finite)
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


def restore_into(path, model, *, allow_non_finite: bool = False) -> Checkpoint:
    """Load a checkpoint's state into an existing model of the same architecture.

    The model's config (layers, loss, optimizer) and dtype must match the file's;
    its backend may differ. On any error the model is left untouched.
    ``allow_non_finite`` as for :func:`load_checkpoint`.
    Returns a :class:`Checkpoint` whose ``model`` is ``model``.
    """
    path = Path(os.fspath(path))
    header, arrays = _read_archive(path, allow_non_finite)
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
