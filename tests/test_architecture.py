"""The shape of the package: no import circles, a self-contained reference, no private imports.

Every module of ``nanoae/`` is read with ``ast`` (nothing is imported), and every
``import`` and ``from ... import`` in it counts, at module level or inside a function:
a function-level import is still a dependency, it only runs later.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "nanoae"


def module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under ``package_dir``."""
    root = package_dir.parent
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imported_names(module: str, path: Path, known: set[str]) -> set[str]:
    """Every module ``module`` imports, as dotted names, anywhere in its file.

    ``import a.b`` imports a.b; ``from a import b`` imports a.b when that is a module
    (in ``known``), else a; relative imports are resolved against the module's package.
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                found.add(candidate if candidate in known else source)
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports (itself excluded)."""
    files = module_files(package_dir)
    known = set(files)
    return {module: (imported_names(module, path, known) & known) - {module} for module, path in files.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other in a circle (strongly connected
    components of more than one module, or one that imports itself), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph[node]:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def describe_cycles(graph: dict[str, set[str]], cycles: list[list[str]]) -> str:
    lines = []
    for group in cycles:
        lines.append("circle: " + ", ".join(group))
        lines.extend(f"  {module} -> {', '.join(sorted(graph[module] & set(group)))}" for module in group)
    return "\n".join(lines)


# ---- the checker itself, on a package made for it ------------------------------------------
def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_checker_finds_a_circle_through_a_function_level_relative_import(tmp_path):
    package = write_package(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import thing\n",
            "pkg/a.py": "from pkg import b\nthing = 1\n",
            "pkg/b.py": "def late():\n    from .a import thing\n    return thing\n",
            "pkg/c.py": "import pkg.b\nimport os\n",
        },
    )
    graph = import_graph(package)
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.b"}}
    assert import_cycles(graph) == [["pkg.a", "pkg.b"]]


def test_checker_counts_a_package_import_of_a_name_as_the_package(tmp_path):
    package = write_package(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.sub import helper\nVERSION = 1\n",
            "pkg/sub/__init__.py": "from .tools import helper\n",
            "pkg/sub/tools.py": "from .. import VERSION\n\ndef helper():\n    return VERSION\n",
        },
    )
    graph = import_graph(package)
    assert graph["pkg.sub.tools"] == {"pkg"}  # VERSION is a name, not a module: the package itself
    assert import_cycles(graph) == [["pkg", "pkg.sub", "pkg.sub.tools"]]


# ---- nanoae ---------------------------------------------------------------------------------
def test_no_import_circles_in_nanoae():
    graph = import_graph(PACKAGE_DIR)
    assert "nanoae.module" in graph and "nanoae.ops.reference" in graph  # the walk saw the package
    cycles = import_cycles(graph)
    assert not cycles, "modules of nanoae import each other in a circle:\n" + describe_cycles(graph, cycles)


def test_reference_ops_need_only_numpy_and_the_standard_library():
    """nanoae/ops/reference.py is the readable specification of every operation: it must
    work when copied out alone, so it may import numpy and the standard library only."""
    path = PACKAGE_DIR / "ops" / "reference.py"
    tops = {name.partition(".")[0] for name in imported_names("nanoae.ops.reference", path, set())}
    outside = sorted(tops - set(sys.stdlib_module_names) - {"numpy"})
    assert not outside, f"nanoae/ops/reference.py imports {outside}; it may import only numpy and the standard library"


def private_imports(package_dir: Path, exempt: str | None = None) -> list[str]:
    """Each import of a private name (``_name``, not ``__dunder__``) or private module
    from the package, by a module of the package outside ``exempt`` (a subpackage)."""

    def private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__")

    top = package_dir.name
    offenders = []
    for module, path in module_files(package_dir).items():
        if exempt is not None and (module == exempt or module.startswith(exempt + ".")):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == top):
                source = "." * node.level + (node.module or "")
                names = [alias.name for alias in node.names if private(alias.name)]
                if any(private(part) for part in (node.module or "").split(".")):
                    names = [alias.name for alias in node.names]
                offenders.extend(f"{module} (line {node.lineno}) imports {name} from {source}" for name in names)
            elif isinstance(node, ast.Import):
                offenders.extend(
                    f"{module} (line {node.lineno}) imports {alias.name}"
                    for alias in node.names
                    if alias.name.split(".")[0] == top and any(private(part) for part in alias.name.split("."))
                )
    return offenders


def test_private_import_checker(tmp_path):
    package = write_package(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import public\nfrom pkg.version import __version__\n",
            "pkg/version.py": "__version__ = '1'\n",
            "pkg/a.py": "def public():\n    from ._impl import go\n    return go\n",
            "pkg/_impl.py": "from cupy._core import thing\ngo = 1\n",
            "pkg/b.py": "from pkg.a import _hidden\n",
            "pkg/inner/__init__.py": "from pkg.a import _hidden\n",
        },
    )
    assert private_imports(package, exempt="pkg.inner") == [
        "pkg.a (line 2) imports go from ._impl",
        "pkg.b (line 1) imports _hidden from pkg.a",
    ]


def test_no_module_imports_a_private_name_from_another():
    """A leading underscore means "this module's own business": no other module imports
    such a name (what the ops tables share, such as the activation codes, is public)."""
    offenders = private_imports(PACKAGE_DIR)
    assert not offenders, "private names imported across modules:\n" + "\n".join(offenders)


# ---- the layering drawn in docs/architecture.md ---------------------------------------------
ARCHITECTURE = PACKAGE_DIR.parent / "docs" / "architecture.md"


def drawn_layers(text: str) -> list[list[str]]:
    """The rows of the import-order figure (the first fenced block), top row first: each row
    the names it lists (``models.py``, ``ops/``), the words that describe them left out."""
    block = text.split("```")[1]
    rows = []
    for line in block.strip("\n").splitlines():
        names = [word for word in line.split() if word.endswith((".py", "/"))]
        rows.append(names)
    return rows


def drawn_name(module: str) -> str:
    """The name a module goes by in the figure: ``nanoae.ops.cpu`` -> ``ops/``,
    ``nanoae.models`` -> ``models.py``."""
    parts = module.split(".")[1:]
    return f"{parts[0]}/" if len(parts) > 1 or (PACKAGE_DIR / parts[0]).is_dir() else f"{parts[0]}.py"


def layering_violations(graph: dict[str, set[str]], rows: list[list[str]]) -> list[str]:
    """Every import that points to the same row or a row above (rows are listed top down),
    and every module the figure leaves out."""
    row_of = {name: index for index, row in enumerate(rows) for name in row}
    problems = []
    for module in sorted(graph):
        if module == "nanoae":  # the package's __init__ gathers everything; it is no layer
            continue
        name = drawn_name(module)
        if name not in row_of:
            problems.append(f"{name} is not in the figure")
            continue
        for target in sorted(graph[module] - {"nanoae"}):
            target_name = drawn_name(target)
            if target_name != name and row_of.get(target_name, -1) <= row_of[name]:
                problems.append(f"{module} imports {target}, which the figure draws on the same row or above")
    return problems


def test_the_import_order_drawn_in_the_architecture_doc_is_true():
    rows = drawn_layers(ARCHITECTURE.read_text())
    assert ["models.py"] in rows and ["ops/"] in rows[-4:-2], "the figure's rows are not where they should be"
    problems = layering_violations(import_graph(PACKAGE_DIR), rows)
    assert not problems, "docs/architecture.md's import-order figure is out of date:\n" + "\n".join(problems)


def test_the_layering_check_catches_an_import_upward():
    graph = {"nanoae.layers": {"nanoae.models"}, "nanoae.models": {"nanoae.layers"}}
    rows = [["models.py"], ["layers.py"]]
    assert layering_violations(graph, rows) == ["nanoae.layers imports nanoae.models, which the figure draws on the same row or above"]
    assert layering_violations({"nanoae.extra": set()}, rows) == ["extra.py is not in the figure"]
