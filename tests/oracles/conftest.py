"""Fixtures for the oracle tests: the frameworks themselves, skipped or failed by one rule.

Locally a missing TensorFlow or PyTorch skips these tests with the reason and the
command that installs it. Under ``CI=true`` it is a failure: CI installs the
``oracle`` extra, so a missing framework there means the proof did not run.
"""

from __future__ import annotations

import importlib
import os

import pytest

IN_CI = os.environ.get("CI", "").strip().lower() == "true"
INSTALL_HINT = 'pip install -e ".[oracle]" (tensorflow-cpu and the CPU build of torch==2.13.0)'


def require(module_name: str):
    """Import an oracle framework, or skip (locally) / fail (CI=true) saying why."""
    if module_name == "tensorflow":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no start-up chatter in the test log
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        reason = f"oracle {module_name} is not importable ({exc}); install it with {INSTALL_HINT}"
        if IN_CI:
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)


def require_tf():
    return require("tensorflow")


def require_torch():
    return require("torch")


@pytest.fixture(scope="session")
def tf():
    """The tensorflow module (TensorFlow 2.x; tf.keras is Keras 3)."""
    return require_tf()


@pytest.fixture(scope="session")
def torch():
    """The torch module (CPU build)."""
    return require_torch()


@pytest.fixture(scope="session")
def scipy_stats():
    """scipy.stats, for the distribution tests (installed with the oracle extra)."""
    return require("scipy.stats")


# ---- measured errors, for docs/fidelity.md ------------------------------------------
_MEASURED: dict = {}


@pytest.fixture(scope="session")
def fidelity():
    """record(comparison, framework, dtype, error, tolerance): keep the worst error seen.

    With NANOAE_FIDELITY_REPORT=path.json set, the worst error of every comparison is
    written there at the end of the session (the numbers in docs/fidelity.md).
    """

    def record(comparison: str, framework: str, dtype: str, error: float, tolerance: float) -> None:
        key = f"{comparison} | {framework} | {dtype}"
        entry = _MEASURED.setdefault(key, {"worst": 0.0, "tolerance": tolerance, "cases": 0})
        entry["worst"] = max(entry["worst"], float(error))
        entry["cases"] += 1

    return record


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("NANOAE_FIDELITY_REPORT", "").strip()
    if path and _MEASURED:
        import json  # noqa: PLC0415

        with open(path, "w") as handle:
            json.dump(dict(sorted(_MEASURED.items())), handle, indent=1)
