"""How ftlight's modules depend on each other: no import cycles, tasks free of speed code, the
core free of peft."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import ftlight

PACKAGE = Path(ftlight.__file__).parent


def _modules() -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its own name)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["ftlight", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules ``name`` imports, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {n for n in found if n in known and n != name}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return groups


def test_the_cycle_finder_finds_a_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]


def test_no_module_imports_itself_back() -> None:
    """No cycle of imports between ftlight's modules, lazy imports inside functions included
    (they hide a cycle from the import system, not from a reader)."""
    modules = _modules()
    known = set(modules)
    edges = {name: _imports(name, path, known) for name, path in modules.items()}
    assert edges["ftlight.measure.throughput"] >= {"ftlight.measure.hardware"}  # edges are read
    assert _cycles(edges) == []


def test_tasks_load_no_speed_code() -> None:
    """A task says what a pass means; how the model is called cheaply lives in the speed
    parts, which a task imports nothing of."""
    code = (
        "import sys\n"
        "from ftlight.tasks import CausalLMTask, ClassificationTask, Task\n"
        "print(sorted(m for m in sys.modules if m.startswith(('ftlight.speed', 'peft'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_the_core_imports_no_peft() -> None:
    """peft's internals (its merged adapters, its layers) are the lora plugin's business: no
    product module outside the testing kit imports peft."""
    importing = []
    for name, path in _modules().items():
        if name.startswith("ftlight.testing"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import) and any(
                a.name.split(".")[0] == "peft" for a in node.names
            ):
                importing.append(name)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "peft":
                importing.append(name)
    assert importing == []


def test_test_files_have_unique_names() -> None:
    """pytest imports test files by their base name (no packages under tests/): two files of
    one name stop the whole suite at collection."""
    root = PACKAGE.parent
    names: dict[str, list[str]] = {}
    for path in [*(root / "tests").rglob("test_*.py"), *(root / "plugins").rglob("test_*.py")]:
        names.setdefault(path.name, []).append(str(path.relative_to(root)))
    assert {n: p for n, p in names.items() if len(p) > 1} == {}
