"""The documentation's promises that can be checked mechanically.

The README opens with the two commands (the test one is what CI runs), its layout block
lists exactly the package's modules, its code imports names that exist, links between the
documents resolve, and no document speaks in tracker language or cites files outside
the project.
"""

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nanoae"
README = ROOT / "README.md"
README_MAX_LINES = 345


def _fenced_blocks(text, language):
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def _documents():
    """Every Markdown document of the project, and the plain-text results beside them."""
    found = [README, *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "benchmarks").rglob("*.md"))]
    found += sorted((ROOT / "benchmarks" / "results").glob("*.txt"))
    return [path for path in found if path.is_file()]


def _layout_entries(readme_text):
    """Paths (relative to nanoae/) listed in the fenced block under the README's "## Layout".

    The block's first line is ``nanoae/``; every other line starts with a path: a module
    (``ops/cpu.py``) or a package (``ops/``), then its one-line job.
    """
    section = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", readme_text, flags=re.S | re.M)
    assert section, 'README has no "## Layout" section'
    blocks = re.findall(r"```\n(.*?)```", section.group(1), flags=re.S)
    assert blocks, 'README\'s "## Layout" section has no fenced block'
    lines = [line for line in blocks[0].splitlines() if line.strip()]
    assert lines[0].strip() == "nanoae/", f"the layout block must start with 'nanoae/', not {lines[0]!r}"
    return [line.split()[0] for line in lines[1:]]


def _package_paths():
    """Every module and subpackage of nanoae/ that the layout must name, relative to nanoae/."""
    wanted = set()
    for path in PACKAGE.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        relative = path.relative_to(PACKAGE)
        if path.name == "__init__.py" and relative.parent != Path("."):
            wanted.add(relative.parent.as_posix() + "/")
        elif path.name not in ("__init__.py", "__main__.py"):
            wanted.add(relative.as_posix())
    return wanted


def _exists_in_package(entry):
    if entry.endswith("/"):
        return (PACKAGE / entry / "__init__.py").is_file()
    return (PACKAGE / entry).is_file()


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    readme = README.read_text()
    blocks = _fenced_blocks(readme, "bash")
    train_command, test_command = blocks[0].strip(), blocks[1].strip()
    assert "nanoae train" in train_command and train_command.startswith("python3 -m venv .venv")
    assert "pytest" in test_command and test_command.startswith("python3 -m venv .venv")
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; keep it at most {README_MAX_LINES} (details go to docs/ or benchmarks/)"


def test_readme_layout_lists_every_module_and_only_modules_that_exist():
    entries = _layout_entries(README.read_text())
    duplicates = sorted({entry for entry in entries if entries.count(entry) > 1})
    assert not duplicates, f"README's layout lists these more than once: {duplicates}"
    missing = sorted(_package_paths() - set(entries))
    assert not missing, f"README's layout block does not list {missing}: add a line for each (its path inside nanoae/, then its job)"
    stale = sorted(entry for entry in entries if not _exists_in_package(entry))
    assert not stale, f"README's layout block lists {stale}, which do not exist under nanoae/: remove or rename them"


def test_layout_parser_sees_what_is_missing_and_what_is_stale():
    # The check above must be able to fail both ways: a block naming a file that is not
    # there, and a block leaving out one that is.
    text = "## Layout\n\n```\nnanoae/\n  ops/          the math\n  nothing_here.py   gone\n```\n"
    entries = _layout_entries(text)
    assert entries == ["ops/", "nothing_here.py"]
    assert _exists_in_package("ops/") and not _exists_in_package("nothing_here.py")
    assert "ops/reference.py" in _package_paths() - set(entries)


def _readme_imports():
    """(module, name or None) for every nanoae import in the README's Python blocks."""
    found = []
    for block in _fenced_blocks(README.read_text(), "python"):
        for match in re.finditer(r"^\s*from (nanoae[\w.]*) import ([^\n#]+)", block, flags=re.M):
            names = match.group(2).replace("(", " ").replace(")", " ").split(",")
            found += [(match.group(1), name.strip()) for name in names if name.strip()]
        for match in re.finditer(r"^\s*import (nanoae[\w.]*)", block, flags=re.M):
            found.append((match.group(1), None))
    return found


@pytest.mark.parametrize(("module", "name"), _readme_imports())
def test_readme_code_imports_names_that_exist(module, name):
    imported = importlib.import_module(module)
    if name is not None:
        assert hasattr(imported, name), f"README imports {name} from {module}, which has no such name"


def test_relative_links_in_the_documents_resolve():
    broken = []
    for document in _documents():
        if document.suffix != ".md":
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", document.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (document.parent / target.split("#")[0]).exists():
                broken.append(f"{document.relative_to(ROOT)} -> {target}")
    assert not broken, f"links to files that do not exist: {broken}"


TRACKER_WORDS = re.compile(r"\bissue[\s#-]*\d|\bissues? \d|\bblocked\b|\btickets?\b", flags=re.I)


def test_documents_speak_of_the_project_not_of_a_tracker():
    offending = []
    for document in _documents():
        for number, line in enumerate(document.read_text().splitlines(), start=1):
            if TRACKER_WORDS.search(line) or "DESIGN.md" in line:
                offending.append(f"{document.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offending, "documents must state targets and results, not ticket status, and cite only the project's own files:\n" + "\n".join(offending)


def test_tracker_word_pattern_catches_what_it_should():
    for line in ("as issue 5 asks", "the issue-5 targets", "Issue #12", "marked blocked", "see the ticket"):
        assert TRACKER_WORDS.search(line), line
    for line in ("the issues of float32 rounding", "blocks of 1024 steps", "an unblocked thread"):
        assert not TRACKER_WORDS.search(line), line


def test_readme_python_runs_as_written_with_fewer_steps(mnist_dir, tmp_path, monkeypatch):
    """The README's Python blocks, run in order in one namespace, on real MNIST. Only the
    step counts are cut (to 3) and the data path pointed at the test data; everything
    else runs as a reader would paste it."""
    pytest.importorskip("numba")  # the README's model runs on the default (fast) table
    monkeypatch.chdir(tmp_path)  # its metrics.csv and checkpoint.npz land here
    monkeypatch.setenv("NANOAE_DATA", str(mnist_dir))  # where load_dataset's search finds MNIST
    code = "\n".join(_fenced_blocks(README.read_text(), "python"))
    code = re.sub(r"steps=\d+", "steps=3", code).replace('"../shared/data/mnist"', repr(str(mnist_dir)))
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (the README's own code)
    assert namespace["model"].steps_trained == 1 + 3 + 3  # train_step, fit, fit with callbacks
    assert namespace["codes"].shape == (10, 32) and namespace["images"].shape == (10, 784)
    assert (tmp_path / "metrics.csv").exists() and (tmp_path / "checkpoint.npz").exists()
