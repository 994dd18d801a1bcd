"""The package's layers: no import cycles among lpt's modules, counting imports inside functions too (a local
import hides a cycle from Python, not from the design); the code passes the linter's checks (pyproject.toml); no
module over 400 lines and no function over 60."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LPT = ROOT / "lpt"


def test_the_code_passes_ruff():
    """`ruff check lpt tests scripts` with the rules of pyproject.toml (ruff comes with the test extra)."""
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "lpt", "tests", "scripts"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module name → the package's modules it imports anywhere in its source (``from a.b import c`` counts a.b and,
    if it is a module, a.b.c)."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                found.update([base, *(f"{base}.{alias.name}" for alias in node.names)])
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph = import_graph(LPT)
    assert len(graph) > 50 and "lpt.mgrit.training" in graph["lpt.train.solver"]
    assert cycles(graph) == []


def test_the_check_finds_a_cycle_hidden_in_a_function(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    assert cycles(import_graph(pkg)) == [["pkg.a", "pkg.sub.b"]]


MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60


def size_offenders(package: Path) -> list[str]:
    """Every module of ``package`` over MAX_FILE_LINES lines and every function (or method) over
    MAX_FUNCTION_LINES, counted from its ``def`` line to its last line (decorators left out)."""
    found = []
    for path in sorted(package.rglob("*.py")):
        text, where = path.read_text(), path.relative_to(package.parent)
        if (n := len(text.splitlines())) > MAX_FILE_LINES:
            found.append(f"{where}: {n} lines")
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES:
                    found.append(f"{where}::{node.name}: {n} lines")
    return found


def test_no_file_over_400_lines_and_no_function_over_60():
    """Sizes a reader can take in at once: no module of lpt over 400 lines, no function over 60."""
    offenders = size_offenders(LPT)
    assert not offenders, "too long:\n" + "\n".join(offenders)
