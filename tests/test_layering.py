"""The layering of docs/architecture.md, read from the imports of every module.

Every `import` counts: at the top, inside functions, under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("server", "client_demo", "training")
IO = ("asyncio", "socket", "selectors", "ssl", "websockets", "picows", "redis", "uvloop")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports(name: str) -> set[str]:
    """Every module `name` imports (project modules resolved to the module, not the
    package, where `from package import module` names one)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            for a in node.names:
                if f"{mod}.{a.name}" in MODULES:
                    out.add(f"{mod}.{a.name}")
    return out


GRAPH = {name: imports(name) for name in MODULES}


def reaches(name: str, prefixes: tuple[str, ...]) -> list[str]:
    """The imports of `name` that are, or are inside, one of `prefixes`."""
    return sorted(m for m in GRAPH[name] if any(m == p or m.startswith(p + ".") for p in prefixes))


def test_the_modules_are_found():
    assert "server.core.engine" in MODULES and "server.serve.app" in MODULES
    assert "training.train" in MODULES and "client_demo.client" in MODULES
    assert "asyncio" in GRAPH["server.serve.app"]  # the reader sees imports


CORE = [m for m in MODULES if m.startswith("server.core.")]


@pytest.mark.parametrize("name", CORE)
def test_the_pure_core_does_no_io_and_knows_no_service(name):
    assert reaches(name, IO) == [], "the pure layers import no asyncio or sockets"
    assert reaches(name, ("server.serve", "server.cluster", "training", "client_demo")) == []


@pytest.mark.parametrize(
    "name", ["server.core.protocol", "server.core.messages", "server.core.field_checks"]
)
def test_the_protocol_knows_no_torch(name):
    assert reaches(name, ("torch",)) == []


@pytest.mark.parametrize("name", [m for m in MODULES if m.split(".")[0] == "server"])
def test_server_imports_neither_training_nor_client_demo(name):
    assert reaches(name, ("training", "client_demo")) == []


def test_the_cli_helper_imports_no_project_module():
    assert reaches("server.cli", PACKAGES) == []


def cycles() -> list[list[str]]:
    """Import circles among the project's modules (packages' own files left out: they
    import nothing of the project here), by Tarjan's strongly connected components."""
    edges = {n: sorted(m for m in GRAPH[n] if m in MODULES and m not in PACKAGES) for n in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges[v]:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert cycles() == []


def test_a_circle_would_be_seen(monkeypatch):
    monkeypatch.setitem(
        GRAPH, "server.core.priors", GRAPH["server.core.priors"] | {"server.core.blend"}
    )
    assert any({"server.core.blend", "server.core.priors"} <= set(c) for c in cycles())


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_source_module_over_500_lines(name):
    lines = MODULES[name].read_text().count("\n")
    assert lines <= 500, f"{MODULES[name].relative_to(ROOT)}: {lines} lines"
