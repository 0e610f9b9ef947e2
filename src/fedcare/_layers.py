"""The declared layers of fedcare and a reader of its import graph.

Dependencies point one way: a module imports only from its own layer or from the layers
above it in :data:`LAYERS` (core is the top; apps may import everything). Where a lower
layer needs something from a higher one, the higher layer declares a protocol (see
:mod:`fedcare.protocols`) and the lower one implements it. ``tests/test_layering.py`` and
``python scripts/import_graph.py`` check the rule and the absence of import cycles between
packages; the graph is read from the source with :mod:`ast` (imports at module level, in
functions and under ``TYPE_CHECKING`` alike), nothing is imported.

A new module is placed by the longest package prefix that names it, so a new file inside
an existing package is covered; a new top-level module or package must be added here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = "fedcare"

#: Ordered from the top (core) to the bottom (apps). Each entry names a module or a package
#: (which covers every module inside it). ``fedcare`` itself is the public facade and
#: matches only the package's own ``__init__``.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "core",
        (
            "fedcare._layers",
            "fedcare.errors",
            "fedcare.types",
            "fedcare.serde",
            "fedcare.task",
            "fedcare.task_manifest",
            "fedcare.protocols",
            "fedcare.compression",
            "fedcare.strategies",
            "fedcare.secure",
            "fedcare.privacy",
            "fedcare.evaluation",
            "fedcare.personal",
        ),
    ),
    (
        "runtime",
        ("fedcare.runtime",),
    ),
    (
        "adapters",
        (
            "fedcare.transport",
            "fedcare.store",
            "fedcare.data",
            "fedcare.datasets",
            "fedcare.tasks",
            # OpenFHE engine process (threshold CKKS) behind fedcare.secure.ckks.CkksBackend
            "fedcare.he",
        ),
    ),
    (
        "assembly",
        (
            # study.toml / site.toml: parsed into the data layer's schema and connector configs
            "fedcare.study",
            "fedcare.build",
            "fedcare.experiment",
            "fedcare.simulate",
            "fedcare.demos",
            "fedcare.runconfig",
            "fedcare.deploy",
            # Wires the in-process transport to the runtime; its callers move to the run
            # builder (fedcare.build).
            "fedcare.runtime.simulation",
            # Wires DP plans, ledgers and site policies into a private run.
            "fedcare.privacy.setup",
            # The task contract suite: runs a task package in real in-process federations.
            "fedcare.testing",
        ),
    ),
    (
        "apps",
        (
            "fedcare",
            "fedcare.__main__",
            "fedcare.cli",
            "fedcare.report",
            "fedcare.release",
            "fedcare.dashboard",
            "fedcare.console",
        ),
    ),
)

LAYER_NAMES: tuple[str, ...] = tuple(name for name, _ in LAYERS)

#: Libraries that open sockets, databases or web servers: the core never imports them
#: (that is what the adapters are for).
IO_LIBRARIES: frozenset[str] = frozenset(
    {"grpc", "sqlalchemy", "psycopg", "sqlite3", "socket", "ssl", "http", "urllib", "httpx", "requests"}
    | {"fastapi", "uvicorn", "starlette", "ray", "mlflow", "tensorboard"}
)


@dataclass(frozen=True)
class Edge:
    """One import: ``source`` (a module) imports ``target`` (a module) at ``line``."""

    source: str
    target: str
    line: int


def duplicates() -> list[str]:
    """Return the entries declared more than once in :data:`LAYERS` (each belongs in one place)."""
    seen: list[str] = [entry for _, entries in LAYERS for entry in entries]
    return sorted({entry for entry in seen if seen.count(entry) > 1})


def layer_of(module: str) -> str | None:
    """Return the layer a module belongs to (longest declared prefix), or None if undeclared."""
    best: tuple[int, str] | None = None
    for layer, entries in LAYERS:
        for entry in entries:
            if entry == ROOT:
                hit = module == ROOT
            else:
                hit = module == entry or module.startswith(entry + ".")
            if hit and (best is None or len(entry) > best[0]):
                best = (len(entry), layer)
    return None if best is None else best[1]


def package_of(module: str) -> str:
    """Return the unit cycles are counted between: the declared entry that places ``module``.

    That is its package (``fedcare.runtime``) or top-level module (``fedcare.task``), or a
    module declared on its own (``fedcare.runtime.simulation``); ``fedcare.<first part>``
    for an undeclared module.
    """
    best = ""
    for _, entries in LAYERS:
        for entry in entries:
            hit = module == entry if entry == ROOT else module == entry or module.startswith(entry + ".")
            if hit and len(entry) > len(best):
                best = entry
    return best or ".".join(module.split(".")[:2])


def module_names(src: Path) -> dict[str, Path]:
    """Map every module under ``src/fedcare`` to its file."""
    out: dict[str, Path] = {}
    for path in sorted((src / ROOT).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, known: Mapping[str, Path]) -> str | None:
    """Return the longest known module that ``name`` is or lies inside, or None."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def _imported(tree: ast.AST, module: str, is_package: bool) -> Iterable[tuple[str, int]]:
    """Yield (dotted name, line) for every import anywhere in ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for alias in node.names:
                yield f"{prefix}.{alias.name}", node.lineno
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.args[0].value, node.lineno


def import_edges(src: Path) -> list[Edge]:
    """Read every fedcare-internal import edge under ``src/fedcare`` (no code is run)."""
    known = module_names(src)
    edges: set[Edge] = set()
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name, line in _imported(tree, module, path.name == "__init__.py"):
            if name != ROOT and not name.startswith(ROOT + "."):
                continue
            target = _resolve(name, known)
            if target is not None and target != module:
                edges.add(Edge(module, target, line))
    return sorted(edges, key=lambda e: (e.source, e.line, e.target))


def undeclared(modules: Iterable[str]) -> list[str]:
    """Return the modules that no entry of :data:`LAYERS` places."""
    return sorted(m for m in modules if layer_of(m) is None)


def violations(edges: Iterable[Edge]) -> list[Edge]:
    """Return the edges that point from a higher layer down to a lower one."""
    rank = {name: i for i, name in enumerate(LAYER_NAMES)}
    bad = []
    for edge in edges:
        src_layer, dst_layer = layer_of(edge.source), layer_of(edge.target)
        if src_layer is None or dst_layer is None:
            continue
        if rank[dst_layer] > rank[src_layer]:
            bad.append(edge)
    return bad


def package_cycles(edges: Iterable[Edge]) -> list[list[str]]:
    """Return the strongly connected groups (more than one package) of the package graph."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        a, b = package_of(edge.source), package_of(edge.target)
        graph.setdefault(a, set())
        graph.setdefault(b, set())
        if a != b:
            graph[a].add(b)
    # Tarjan's algorithm, iterative so deep graphs cannot overflow the stack.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop(0)
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph[nxt])))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return sorted(groups)


def cycle_edges(edges: Iterable[Edge], group: Iterable[str]) -> list[Edge]:
    """Return the module edges that join the packages of one cycle group."""
    members = set(group)
    return [
        e
        for e in edges
        if package_of(e.source) in members
        and package_of(e.target) in members
        and package_of(e.source) != package_of(e.target)
    ]


def core_io_imports(src: Path) -> list[tuple[str, str, int]]:
    """Return (module, library, line) for every import of an I/O library in the core layer."""
    out = []
    for module, path in module_names(src).items():
        if layer_of(module) != "core":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name, line in _imported(tree, module, path.name == "__init__.py"):
            top = name.split(".")[0]
            if top in IO_LIBRARIES:
                out.append((module, top, line))
    return sorted(set(out))


def report(src: Path) -> tuple[list[str], list[str]]:
    """Return (problems, summary lines) for the package under ``src``.

    Problems are undeclared modules, edges against the layers and cycles between packages.
    """
    edges = import_edges(src)
    problems: list[str] = []
    where = "fedcare._layers.LAYERS (src/fedcare/_layers.py)"
    for entry in duplicates():
        problems.append(f"{entry} is declared more than once in {where}")
    for module in undeclared(module_names(src)):
        problems.append(f"undeclared module {module}: add it (or its package) to a layer in {where}")
    for edge in violations(edges):
        problems.append(
            f"layer violation: {edge.source} ({layer_of(edge.source)}) imports {edge.target} "
            f"({layer_of(edge.target)}) at line {edge.line}"
        )
    for module, library, line in core_io_imports(src):
        problems.append(f"core module {module} imports {library} at line {line}: I/O belongs to the adapters")
    for group in package_cycles(edges):
        joins = ", ".join(f"{e.source} -> {e.target}:{e.line}" for e in cycle_edges(edges, group))
        problems.append(f"import cycle between {' <-> '.join(group)}: {joins}")
    summary = [f"{len(module_names(src))} modules, {len(edges)} internal import edges"]
    for layer, entries in LAYERS:
        summary.append(f"  {layer:9s} {' '.join(entries)}")
    return problems, summary
