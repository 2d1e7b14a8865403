"""Run directories: which files nanoae wrote, and what it may replace.

``nanoae train`` writes a run directory: ``config.json``, ``metrics.csv``,
``checkpoint.npz`` and the figures (:data:`RUN_FILES`). nanoae never overwrites or
deletes a file it did not write, so it must know its own files. It knows them by the
run's ``config.json``, which carries the marker ``"nanoae_run": 1`` and ``"files"``,
the names the run writes. config.json is written first, after a check that none of
those names is held by a file nanoae did not write, so a file under a listed name is
nanoae's. (A config.json written before the marker existed is recognised by its
``nanoae_version`` and ``command`` fields; its files are :data:`RUN_FILES`.)
``nanoae classify --out`` follows the same rules with ``result.json`` as its record
(:data:`CLASSIFY_RUN`), written before its checkpoint.

The rules, checked by :func:`plan_run_directory` before anything is written:

* a missing or empty directory takes a new run;
* a run's own directory takes the run's continuation (``--resume``);
* a directory holding another run is refused, unless ``overwrite``: then that run's
  files are deleted before the new run starts, and nothing else;
* a non-empty directory that is not a run is refused, unless ``overwrite``: then the
  new run writes beside the files there, which it never touches;
* in every case a file under one of :data:`RUN_FILES` that nanoae did not write is
  refused, ``overwrite`` or not: the user must move it or choose another directory.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from nanoae.atomic import remove_stale_temp_files

__all__ = [
    "CLASSIFY_RUN",
    "RUN_FILES",
    "RUN_MARKER",
    "TRAIN_RUN",
    "RunDirectory",
    "RunDirectoryError",
    "RunKind",
    "own_files",
    "plan_run_directory",
    "prepare_run_directory",
    "read_run_config",
]

RUN_MARKER = "nanoae_run"
RUN_FILES = ("config.json", "metrics.csv", "checkpoint.npz", "reconstructions.png", "loss.png", "samples.png", "codes.png")


@dataclass(frozen=True)
class RunKind:
    """What one command writes in its directory.

    record:      the JSON file that marks the directory as nanoae's and lists its files
    files:       the names that command writes (and owns once its record lists them)
    legacy_keys: the keys by which a record written before the marker is known
    """

    record: str
    files: tuple
    legacy_keys: tuple


TRAIN_RUN = RunKind("config.json", RUN_FILES, ("nanoae_version", "command"))
CLASSIFY_RUN = RunKind("result.json", ("result.json", "checkpoint.npz"), ("mode", "test_accuracy"))
_ALL_FILES = tuple(dict.fromkeys(TRAIN_RUN.files + CLASSIFY_RUN.files))


class RunDirectoryError(Exception):
    """A run directory that nanoae may not write in; the message says why and the fix."""


def read_run_config(directory, kind: RunKind = TRAIN_RUN) -> dict | None:
    """The run's record (config.json) in ``directory`` when nanoae wrote it, else None."""
    path = Path(directory) / kind.record
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    if config.get(RUN_MARKER) == 1 or all(key in config for key in kind.legacy_keys):
        return config
    return None


def own_files(config: dict, kind: RunKind = TRAIN_RUN) -> set[str]:
    """The names a run's record lists as its own (a record without a list: all of ``kind``'s)."""
    files = config.get("files", kind.files)
    if not isinstance(files, list | tuple):
        return set()
    return {name for name in files if name in kind.files}  # never more than the command writes


def _is_nanoae_temporary(name: str) -> bool:
    """A temporary file of nanoae's writers (removed at the next write)."""
    return name.startswith(".write-test-") or any(name.startswith(f".{run_file}.tmp-") for run_file in _ALL_FILES)


@dataclass
class RunDirectory:
    """The checked plan for a run directory.

    path:      the directory
    config:    its run's config.json (None: not a run, or absent)
    replacing: names of the previous run's files to delete first (``overwrite``)
    kind:      what the run writes
    """

    path: Path
    config: dict | None = None
    replacing: list[str] = field(default_factory=list)
    kind: RunKind = TRAIN_RUN


def plan_run_directory(path, *, overwrite: bool, continuing: bool, resume_hint: str = "", kind: RunKind = TRAIN_RUN) -> RunDirectory:
    """Check that a run may be written to ``path``; write nothing.

    continuing: the run resumes from a checkpoint in ``path`` (its own directory)
    resume_hint: words for the refusal of an existing run (e.g. "continue it with --resume X, ")
    Raises :class:`RunDirectoryError`.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"--out {path} exists and is not a directory")
    if not path.is_dir():
        return RunDirectory(path, kind=kind)
    entries = sorted(entry.name for entry in path.iterdir() if not _is_nanoae_temporary(entry.name))
    config = read_run_config(path, kind)
    own = own_files(config, kind) if config is not None else set()
    foreign_run_files = [name for name in kind.files if name in entries and name not in own]
    if foreign_run_files:
        raise RunDirectoryError(
            f"{path} holds {', '.join(foreign_run_files)}, which nanoae did not write and will not replace; "
            "move them away or choose another --out"
        )
    if not entries or (config is not None and continuing):
        return RunDirectory(path, config, kind=kind)
    if config is not None:
        if not overwrite:
            hint = resume_hint if (path / "checkpoint.npz").exists() else ""
            raise RunDirectoryError(f"{path} already holds a run; {hint}choose another --out, or pass --overwrite")
        return RunDirectory(path, config, sorted(name for name in own if name in entries), kind)
    if not overwrite:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise RunDirectoryError(
            f"{path} is not empty ({shown}) and is not a nanoae run; choose a new or empty --out, "
            "or pass --overwrite to write the run beside those files (nanoae never touches them)"
        )
    return RunDirectory(path, kind=kind)


def prepare_run_directory(plan: RunDirectory) -> Path:
    """Make the directory, check it takes a file, and delete the previous run's files
    that ``plan`` replaces (and stale temporaries of nanoae's files). Raises
    :class:`RunDirectoryError` (not a bare OSError) when the directory cannot be written."""
    path = plan.path
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
        for name in plan.replacing:
            (path / name).unlink(missing_ok=True)
        for name in plan.kind.files:
            remove_stale_temp_files(path / name)
    except OSError as exc:
        raise RunDirectoryError(f"cannot write to the output directory {path}: {exc.strerror or exc}") from None
    return path
