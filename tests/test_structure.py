"""The code's shape: packages import top-down with no cycle, files hold one job (<= 500 lines), and
functions stay readable (<= 80 lines). Measured on the source with `ast`, so a violation names the
file and the line."""

from __future__ import annotations

import ast
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80
# spelled in pieces so that this file does not match itself
OUTSIDE_DOCUMENTS = ("DESIGN" + ".md", "../" + "shared/")


def _modules() -> dict[str, Path]:
    """Every module of the installed package, named as it is imported, read from pyproject's package-dir."""
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    found: dict[str, Path] = {}
    for package, folder in package_dir.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            found[name] = path
    return found


def _target(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imported(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `module` imports anywhere in its body (top level and inside functions),
    with the packages whose __init__ such an import runs."""
    is_package = path.stem == "__init__"
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    own_packages = {module.rsplit(".", i)[0] for i in range(module.count(".") + 1)}
    out: set[str] = set()
    for name in names:
        if not name.startswith("ftscale"):
            continue
        target = _target(name, modules)
        while target:  # importing a.b.c runs a.b's __init__ too, unless we are inside a.b already
            if target not in own_packages:
                out.add(target)
            target = target.rpartition(".")[0]
    out.discard(module)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_counting_function_level_imports():
    modules = _modules()
    assert len(modules) > 50, sorted(modules)
    graph = {m: _imported(m, p, modules) for m, p in modules.items()}
    assert graph["ftscale.cli"], "the walker found no imports in ftscale.cli"
    cycles = _cycles(graph)
    details = []
    for cycle in cycles:
        edges = [f"{a} -> {b}" for a in cycle for b in sorted(graph[a]) if b in cycle]
        details.append("; ".join(edges))
    assert not cycles, "import cycles:\n" + "\n".join(details)


def test_files_and_functions_stay_small():
    too_long = []
    for module, path in _modules().items():
        rel = path.relative_to(ROOT)
        lines = path.read_text().count("\n")
        if lines > MAX_FILE_LINES:
            too_long.append(f"{rel}: {lines} lines (at most {MAX_FILE_LINES})")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{rel}:{node.lineno}: {node.name} is {length} lines (at most {MAX_FUNCTION_LINES})")
    assert not too_long, "\n".join(too_long)


def test_nothing_refers_to_documents_outside_the_repository():
    """Every document a file points at is in the repository (a design card kept elsewhere is not)."""
    offenders = []
    for path in sorted(ROOT.glob("**/*")):
        rel = path.relative_to(ROOT)
        if not path.is_file() or rel.parts[0] in (".git", ".venv", "build", "models", "runs") or \
                rel.suffix not in (".py", ".md", ".yaml", ".toml", ".cfg", ".txt") or "egg-info" in str(rel):
            continue
        text = path.read_text(errors="replace")
        if any(name in text for name in OUTSIDE_DOCUMENTS):
            offenders.append(str(rel))
    assert not offenders, f"these files refer to documents outside the repository: {offenders}"
