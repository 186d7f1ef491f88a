"""The shape of the code: no import cycles (lazy, function-level imports included), no module over
350 lines, and the layering the README states (the core never imports exporters or runtimes
except through ``cap_edge.deploy``, ``cap_edge.cli`` and the pytest plugin)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cap_edge", "exporters", "runtimes", "device_profiles")
MAX_LINES = 350


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """Every module of ours that ``name`` imports, anywhere in the file except under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def target(mod: str) -> str | None:
        while mod and mod not in modules:
            mod = mod.rpartition(".")[0]
        return mod or None

    def visit(node):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for n in node.orelse:
                visit(n)
            return
        if isinstance(node, ast.Import):
            for a in node.names:
                if (t := target(a.name)):
                    found.add(t)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name if is_pkg else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                base = f"{pkg}.{base}" if base else pkg
            for a in node.names:  # `from pkg import submodule` imports the submodule
                if f"{base}.{a.name}" in modules:
                    found.add(f"{base}.{a.name}")
            if (t := target(base)):
                found.add(t)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(name)
    return found


def _graph():
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_a_module_that_imports_it_back():
    graph = _graph()
    assert len(graph) > 40  # the walk found the code
    assert "cap_edge.scoring.engine" in graph["cap_edge.distributed"]
    assert _cycles(graph) == []


def test_core_reaches_exporters_and_runtimes_only_through_deploy():
    allowed = ("cap_edge.deploy", "cap_edge.cli", "cap_edge.pytest_plugin")
    for mod, deps in _graph().items():
        if mod.startswith("cap_edge") and not mod.startswith(allowed):
            bad = sorted(d for d in deps if d.split(".")[0] in ("exporters", "runtimes"))
            assert not bad, f"{mod} imports {bad}"


@pytest.mark.parametrize("pkg", PACKAGES + ("benchmarks",))
def test_no_module_over_350_lines(pkg):
    long = {str(f.relative_to(ROOT)): n for f in (ROOT / pkg).rglob("*.py")
            if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert not long, long
