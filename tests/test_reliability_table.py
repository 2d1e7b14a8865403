"""docs/reliability.md and the tests agree: every row of its bad-input tables has a
unique id and names tests that exist, and every test written for those rows is named
by one."""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "reliability.md"
ROW = re.compile(r"^\| (?P<id>[A-Z]+-\d{2}) \|(?P<rest>.*)\|\s*$")
TEST = re.compile(r"`(?P<file>tests/[\w/]+\.py)::(?P<name>test_\w+)`")
AREAS = {"API", "DATA", "CLI", "CKPT", "RUN", "OWN"}
# Modules whose every test exists for rows of the page: each must be named by a row.
ROW_MODULES = ("tests/test_bad_input_cases.py", "tests/test_fault_injection.py")


def rows(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """(id, [(test file, test name), ...]) for each table row with an id."""
    found = []
    for line in text.splitlines():
        match = ROW.match(line)
        if match:
            cells = match.group("rest").split(" | ")
            found.append((match.group("id"), [(m.group("file"), m.group("name")) for m in TEST.finditer(cells[-1])]))
    return found


def defined_tests(path: Path) -> set[str]:
    """Names of the test functions a file defines (module level or in a class)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_the_rows_parse_and_check_themselves():
    text = "| API-01 | x | y | `tests/test_a.py::test_one`, `tests/test_b.py::test_two` |\n| nope | a | b | c |\n"
    assert rows(text) == [("API-01", [("tests/test_a.py", "test_one"), ("tests/test_b.py", "test_two")])]


@pytest.fixture(scope="module")
def table():
    return rows(PAGE.read_text())


def test_at_least_60_rows_in_every_area_with_unique_ids(table):
    ids = [row_id for row_id, _ in table]
    assert len(ids) >= 60, len(ids)
    assert len(set(ids)) == len(ids), sorted({i for i in ids if ids.count(i) > 1})
    assert {row_id.split("-")[0] for row_id in ids} == AREAS


def test_every_row_names_tests_that_exist(table):
    defined: dict[str, set[str]] = {}
    missing = []
    for row_id, tests in table:
        if not tests:
            missing.append(f"{row_id}: names no test")
        for file, name in tests:
            path = REPO / file
            if file not in defined:
                defined[file] = defined_tests(path) if path.is_file() else set()
            if name not in defined[file]:
                missing.append(f"{row_id}: {file}::{name} does not exist")
    assert not missing, "\n".join(missing)


def test_every_test_written_for_the_rows_is_named_by_a_row(table):
    named = {(file, name) for _, tests in table for file, name in tests}
    orphans = [f"{module}::{name}" for module in ROW_MODULES for name in sorted(defined_tests(REPO / module))
               if (module, name) not in named]
    assert not orphans, "tests with no row in docs/reliability.md:\n" + "\n".join(orphans)


def test_the_fault_injection_figures_are_on_the_page():
    text = PAGE.read_text()
    header = "| when (commit, machine) | kills | kills inside a save | chains | runs with bit-identical parameters | runs lost |"
    assert header in text
    figures = text.split(header, 1)[1].split("\n\n", 1)[0].strip().splitlines()[1:]
    assert figures, "no row of figures"
    for line in figures:
        kills = int(line.split("|")[2])
        assert kills >= 20, line
