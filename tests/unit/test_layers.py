"""The layers of DESIGN.md, checked on the source: who may import whom.

How this works. Every module of ``rabbit_ha_driver/`` is parsed, never
imported, and every import statement in it becomes an edge ``importer ->
imported``: at module level, inside a function (a lazy import still ties the
two modules together) and under ``if TYPE_CHECKING:``. Each module belongs to
one layer of :data:`LAYERS`, bottom up; the tests then check four rules:

(a) no module imports a module of a higher layer;
(b) no cycle of imports between modules (``TYPE_CHECKING`` imports aside:
    they never run, and naming a type both ways is not a dependency loop);
(c) ``oslo_config`` is imported only at the options layer and above, and
    ``oslo_messaging`` only by the adapters;
(d) above the connection layer, modules use the names
    ``rabbit_ha_driver.connection`` exports, never its submodules.

Why the options layer sits where it does. DESIGN.md draws ``options`` at the
bottom because the frozen settings it produces are read by every layer; here
that layer is split in two. Its values (:mod:`rabbit_ha_driver.settings`, no
oslo.config) are near the bottom; its oslo.config half (``options`` and the
``*_options`` modules it gathers, ``precedence``: the ``cfg.Opt`` lists and
reading a ``ConfigOpts`` into settings) is the edge where configuration comes
in, above the connection and RPC layers and below the adapters. "Nothing
below ``options`` imports ``oslo_config``" then means: not the foundation, not
settings, not connection, not rpc.

A new module must be given a layer here; an exception to a rule must be listed
in :data:`ALLOWED` with its reason, and the test fails once it is no longer
needed.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import pathlib
from collections.abc import Iterator

import pytest

PACKAGE = "rabbit_ha_driver"
ROOT = pathlib.Path(__file__).resolve().parents[2] / PACKAGE

#: Bottom up. A module is in the layer of the longest prefix that names it
#: (the prefix itself, or a module below it); the package's own
#: ``__init__`` (the public API) re-exports every layer and sits on top.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("clock", "exceptions", "event_stream", "connection_events", "rpc_events",
                    "events", "forks", "optional")),
    ("settings", ("settings",)),
    ("observers", ("metric_series", "metrics", "prometheus")),
    ("connection", ("connection", "testing")),
    ("rpc", ("rpc",)),
    ("options", ("connection_options", "queue_options", "rpc_options", "options", "precedence")),
    ("adapters", ("oslo", "cli")),
)
API = "api"

#: Third-party packages only some layers may import: package -> lowest layer.
RESTRICTED = {"oslo_config": "options", "oslo_messaging": "adapters"}

#: Imports that break a rule on purpose: (importer, imported, enclosing
#: function) -> why. Each must still exist (else remove it here).
ALLOWED: dict[tuple[str, str, str], str] = {}

_RANK = {name: rank for rank, (name, _) in enumerate(LAYERS)}
_RANK[API] = len(LAYERS)


@dataclasses.dataclass(frozen=True)
class Import:
    """One import statement's target, where it is and how it runs."""

    importer: str
    imported: str  # a module of the package, or a top-level third-party name
    path: pathlib.Path
    line: int
    scope: str  # the enclosing function, or "<module>"
    type_checking: bool

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT.parent)}:{self.line}"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


MODULES = _modules()


def layer_of(module: str) -> str | None:
    """The layer of a module of the package, or None when :data:`LAYERS` lacks it."""
    if module == PACKAGE:
        return API
    best: tuple[int, str] | None = None
    for layer, prefixes in LAYERS:
        for prefix in prefixes:
            full = f"{PACKAGE}.{prefix}"
            if (module == full or module.startswith(full + ".")) and (
                    best is None or len(full) > best[0]):
                best = (len(full), layer)
    return best[1] if best else None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> Iterator[str]:
    """The modules an import statement loads: package modules by full name, others by top name."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name if alias.name.startswith(PACKAGE) else alias.name.split(".")[0]
        return
    if node.level:  # relative: resolve against the importer's package
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        source = ".".join([*base, node.module] if node.module else base)
    else:
        source = node.module or ""
    if not source.startswith(PACKAGE):
        yield source.split(".")[0]
        return
    for alias in node.names:
        sub = f"{source}.{alias.name}"
        # ``from pkg import submodule`` loads the submodule; any other name comes from pkg.
        yield sub if sub in MODULES else source


def imports_of(module: str, path: pathlib.Path) -> list[Import]:
    """Every import statement of one module, wherever it stands."""
    found: list[Import] = []
    is_package = path.name == "__init__.py"

    def visit(node: ast.AST, scope: str, type_checking: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in _targets(node, module, is_package):
                found.append(Import(module, target, path, node.lineno, scope, type_checking))
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            scope = node.name if scope == "<module>" else f"{scope}.{node.name}"
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, scope, True)
            for child in node.orelse:
                visit(child, scope, type_checking)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, scope, type_checking)

    visit(ast.parse(path.read_text(), str(path)), "<module>", False)
    return list(dict.fromkeys(found))  # ``from m import a, b`` is one import of m


ALL_IMPORTS = [imp for module, path in MODULES.items() for imp in imports_of(module, path)]


def _allowed(imp: Import) -> bool:
    return (imp.importer, imp.imported, imp.scope) in ALLOWED


def _check(problems: list[str]) -> None:
    """Fail with one line per problem, or pass."""
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if layer_of(m) is None]
    _check([f"{m} has no layer: add it to LAYERS in {__name__}" for m in missing])


def test_no_module_imports_a_higher_layer():
    problems = []
    for imp in ALL_IMPORTS:
        if imp.imported not in MODULES or _allowed(imp):
            continue
        low, high = layer_of(imp.importer), layer_of(imp.imported)
        if low and high and _RANK[high] > _RANK[low]:
            problems.append(f"{imp.where}: {imp.importer} ({low} layer) imports {imp.imported} "
                            f"({high} layer), a higher layer (in {imp.scope})")
    _check(problems)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
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

    for v in sorted(edges):
        if v not in index:
            connect(v)
    cycles = []
    for group in groups:  # the shortest way from the group's first module back to it
        members, start = set(group), group[0]
        paths = {start: [start]}
        frontier = [start]
        cycle: list[str] | None = None
        while frontier and cycle is None:
            nxt = []
            for v in frontier:
                for w in sorted(edges[v] & members):
                    if w == start:
                        cycle = [*paths[v], start]
                        break
                    if w not in paths:
                        paths[w] = [*paths[v], w]
                        nxt.append(w)
                if cycle:
                    break
            frontier = nxt
        cycles.append(cycle or group)
    return cycles


def test_no_import_cycles():
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    where: dict[tuple[str, str], str] = {}
    for imp in ALL_IMPORTS:
        if imp.imported in MODULES and not imp.type_checking and not _allowed(imp) \
                and imp.imported != imp.importer:
            edges[imp.importer].add(imp.imported)
            where.setdefault((imp.importer, imp.imported), imp.where)
    problems = [
        "import cycle: " + " -> ".join(cycle) + " ("
        + ", ".join(where[a, b] for a, b in itertools.pairwise(cycle)) + ")"
        for cycle in _cycles(edges)
    ]
    _check(problems)


def test_oslo_libraries_only_at_their_layers():
    problems = []
    for imp in ALL_IMPORTS:
        lowest = RESTRICTED.get(imp.imported)
        layer = layer_of(imp.importer)
        if lowest and layer and _RANK[layer] < _RANK[lowest] and not _allowed(imp):
            problems.append(f"{imp.where}: {imp.importer} ({layer} layer) imports {imp.imported} "
                            f"(only the {lowest} layer and above may; in {imp.scope})")
    _check(problems)


def test_upper_layers_use_the_connection_package_not_its_modules():
    connection = f"{PACKAGE}.connection"
    problems = []
    for imp in ALL_IMPORTS:
        layer = layer_of(imp.importer)
        if (layer and _RANK[layer] > _RANK["connection"]
                and imp.imported.startswith(connection + ".") and not _allowed(imp)):
            problems.append(f"{imp.where}: {imp.importer} ({layer} layer) imports {imp.imported}; "
                            f"import what it needs from {connection} (export it there)")
    _check(problems)


def test_allowed_exceptions_are_still_needed():
    used = {(imp.importer, imp.imported, imp.scope) for imp in ALL_IMPORTS}
    stale = [key for key in ALLOWED if key not in used]
    _check([f"ALLOWED lists {key}, which no longer happens: remove it"
                               for key in stale])


# -- the checker itself --------------------------------------------------------


def test_the_checker_sees_lazy_relative_and_type_checking_imports(tmp_path):
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import _retry\n"
        "from .. import rpc\n"
        "if TYPE_CHECKING:\n"
        "    from rabbit_ha_driver.options import GROUP\n"
        "def f():\n"
        "    import oslo_config.cfg\n"
    )
    fake = tmp_path / "hosts.py"
    fake.write_text(source)
    found = {(i.imported, i.scope, i.type_checking)
             for i in imports_of(f"{PACKAGE}.connection.hosts", fake)}
    assert found == {
        ("typing", "<module>", False),
        (f"{PACKAGE}.connection._retry", "<module>", False),
        (f"{PACKAGE}.rpc", "<module>", False),
        (f"{PACKAGE}.options", "<module>", True),
        ("oslo_config", "f", False),
    }


def test_the_checker_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_layers_name_modules_that_exist():
    prefixes = [f"{PACKAGE}.{p}" for _, ps in LAYERS for p in ps]
    unused = [p for p in prefixes if not any(m == p or m.startswith(p + ".") for m in MODULES)]
    _check([f"LAYERS names {p}, which is no module: remove it" for p in unused])
