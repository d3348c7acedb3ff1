"""No import circle between the project's modules: no module imports one that imports it
back, directly or through others, at the top of the file or inside a function.

The graph is read from the sources with `ast`: every `import` statement anywhere in a file
(module level, functions, `if TYPE_CHECKING:` blocks) is an edge to the project module it
names. The project's modules are the lab (`lab/`) and the product (`tasks/`, `fleetctl/`,
`config.py`, `deploy.py`, imported as `ollama_fleet.*`: `ollama_fleet/` links to them).
`import pkg.mod` is an edge to `pkg.mod`; `from pkg import name` to `pkg` (the module the
statement names) and to `pkg.name` when that is a module; a name a script imports from
its own directory (the NVIDIA stand-ins' `fleetlab_common`, the Ollama launcher's
`standin`) is that sibling. That `import pkg.mod` also runs `pkg/__init__.py` is no edge,
or every package that re-exports its own modules would be a circle.
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAB = ("lab",)
PRODUCT = ("tasks", "fleetctl", "config.py", "deploy.py", "ollama_fleet")
# the names the product is imported under: ollama_fleet.X is the top-level X
ALIASES = {"tasks": "ollama_fleet.tasks", "fleetctl": "ollama_fleet.fleetctl"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts[0] in ("tasks", "fleetctl", "config", "deploy"):
        parts.insert(0, "ollama_fleet")
    return ".".join(parts)


def project_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the lab and of the product."""
    files: dict[str, Path] = {}
    for top in (*LAB, *PRODUCT):
        root = REPO / top
        if root.suffix == ".py":
            files[_module_name(root)] = root
            continue
        for folder, dirs, names in os.walk(root):  # not into ollama_fleet/'s links
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for filename in sorted(names):
                path = Path(folder) / filename
                if path.suffix == ".py" and not path.is_symlink():
                    files[_module_name(path)] = path
    return files


def _canonical(name: str) -> str:
    head, _, rest = name.partition(".")
    return ALIASES[head] + ("." + rest if rest else "") if head in ALIASES else name


def _deepest(name: str, modules: dict[str, Path]) -> str | None:
    """NAME when it is a project module, else its closest enclosing one (None: not ours)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _sibling(name: str, path: Path, modules: dict[str, Path]) -> str | None:
    """A script's import of a module in its own directory (sys.path[0] when it runs)."""
    head = name.split(".")[0]
    if head in sys.stdlib_module_names:
        return None
    for candidate in (path.parent / f"{head}.py", path.parent / head / "__init__.py"):
        if candidate.is_file():
            base = _module_name(candidate)
            return _deepest(base + name[len(head):], modules) or base
    return None


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(project module, line) of every import in the file, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # the package the statement names runs too: `from pkg import mod` imports pkg
            targets = [module] + [f"{module}.{a.name}" for a in node.names if a.name != "*"]
        for target in targets:
            if isinstance(node, ast.ImportFrom) and node.level:
                found = _deepest(target, modules)
            else:
                canonical = _canonical(target)
                head = canonical.split(".")[0]
                found = (_deepest(canonical, modules) if head in ("lab", "ollama_fleet")
                         else _sibling(target, path, modules))
            if found and found != name:
                out.append((found, node.lineno))
    return out


def import_graph() -> tuple[dict[str, dict[str, int]], dict[str, Path]]:
    """module -> {module it imports: line of the first such import}, and the files."""
    modules = project_files()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for target, line in imports_of(name, path, modules):
            edges.setdefault(target, line)
        graph[name] = edges
    return graph, modules


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that reach each other (size > 1)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(groups)


def a_cycle(group: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """One circle through the group's first module: A -> B -> ... -> A (shortest)."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v]):
            if w == start:
                return paths[v] + [start]
            if w in members and w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    raise AssertionError(f"no circle through {start} in {group}")


def describe(groups: list[list[str]], graph: dict[str, dict[str, int]],
             modules: dict[str, Path]) -> str:
    lines = []
    for group in groups:
        cycle = a_cycle(group, graph)
        lines.append(f"circle of {len(group)} modules ({', '.join(group)}):")
        for a, b in zip(cycle, cycle[1:], strict=False):
            where = modules[a].relative_to(REPO)
            lines.append(f"    {a} imports {b}  ({where}:{graph[a][b]})")
    return "\n".join(lines)


def _is_lab(name: str) -> bool:
    return name == "lab" or name.startswith("lab.")


def test_the_graph_sees_every_kind_of_import():
    """The reader finds what the tests rely on: a function-level import, a script's
    sibling, relative imports, `from pkg import mod`, the product's ollama_fleet names."""
    graph, modules = import_graph()
    assert "lab.nvidia.repo" in graph["lab.fleet"]  # inside Lab._build_apt_repo
    assert "lab.ollama.standin.cli" in graph["lab.ollama.ollama"]  # the launcher's sibling
    assert "lab.ollama.standin.state" in graph["lab.ollama.standin.routes"]  # from . import
    # from lab.nvidia import packages: the package and its module
    assert {"lab.nvidia", "lab.nvidia.packages"} <= set(graph["lab.nvidia.repo"])
    assert "ollama_fleet.tasks.kit.settings" in graph["ollama_fleet.tasks.kit.fleet"]
    assert modules["ollama_fleet.config"] == REPO / "config.py"


def test_the_lab_has_no_import_circle():
    graph, modules = import_graph()
    groups = [g for g in strongly_connected(graph) if any(_is_lab(m) for m in g)]
    assert not groups, "import circles in the lab:\n" + describe(groups, graph, modules)


def test_the_product_has_no_import_circle():
    graph, modules = import_graph()
    groups = [g for g in strongly_connected(graph) if not any(_is_lab(m) for m in g)]
    assert not groups, "import circles in the product:\n" + describe(groups, graph, modules)
