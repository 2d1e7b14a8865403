"""Load a script that is not part of the package (a benchmark, an MPI test script) as a module."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def load_script(path: Path, name: str | None = None):
    """The module run from ``path``, registered in ``sys.modules`` under ``name`` (default:
    the file's stem) so that dataclasses and pickling-free lookups of its own names work."""
    name = name or path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
