"""The package's import graph: layers, no cycle, no ``lsst`` under the engine.

Read from the source with `ast` (imports inside functions count too: a
lazy import is still a dependency), so the test needs none of the optional
packages.
"""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = "lsst.meas.crowdsource"
ROOT = Path(__file__).resolve().parents[1] / "python" / "lsst" / "meas" / "crowdsource"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([PACKAGE, *parts])


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names), at any depth of the file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            found.add(mod)
            # "from . import x" / "from .io import afw" may name submodules.
            found.update(f"{mod}.{a.name}" for a in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as a list of modules, or `None` (ancestors of a module are
    not counted: importing ``a.b`` runs ``a/__init__`` first, but that is not a cycle
    of the code's own dependencies)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_package_has_no_import_cycle():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_engine_imports_nothing_from_lsst():
    for path in (ROOT / "engine").rglob("*.py"):
        for mod in _imports(path):
            outside = mod.startswith("lsst") and not mod.startswith(f"{PACKAGE}.engine")
            assert not outside, f"{path.relative_to(ROOT)} imports {mod}"


def test_layers_point_one_way():
    """engine <- io <- tasks; test support is never imported by the library."""
    graph = _graph()
    for name, deps in graph.items():
        rel = name[len(PACKAGE) + 1 :]
        for dep in deps:
            drel = dep[len(PACKAGE) + 1 :]
            if rel.startswith("engine"):
                assert drel.startswith("engine"), f"{name} imports {dep}"
            if not rel.startswith("testing"):
                assert not drel.startswith("testing"), f"library module {name} imports {dep}"
            if rel.startswith("io"):
                assert drel.startswith(("io", "engine", "catalog")), f"{name} imports {dep}"


def test_package_import_loads_no_test_support_or_plotting():
    code = (
        "import sys, lsst.meas.crowdsource as m; "
        "bad = [k for k in sys.modules if k.startswith(('matplotlib', 'galsim', "
        f"'{PACKAGE}.testing'))]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _io_graph() -> dict[str, set[str]]:
    """The graph restricted to io/, by short module name."""
    prefix = f"{PACKAGE}.io."
    return {
        name[len(prefix) :]: {d[len(prefix) :] for d in deps if d.startswith(prefix)}
        for name, deps in _graph().items()
        if name.startswith(prefix)
    }


def test_io_shared_pieces_import_no_adapter():
    graph = _io_graph()
    for module in ("inputs", "planes", "psf"):
        assert graph[module] <= {"inputs", "planes", "psf"}, (module, graph[module])


def test_io_codec_imports_the_conventions_not_the_reverse():
    graph = _io_graph()
    assert "ccddata" in graph["calexp_fits"]
    assert "calexp_fits" not in graph["ccddata"]


def test_io_no_adapter_imports_the_dispatch():
    graph = _io_graph()
    assert [m for m, deps in graph.items() if "exposure" in deps] == []
