"""The io subpackage imports one way: dispatch -> adapters -> shared pieces (lazy imports count)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lsst.meas.crowdsource.io as io_package

IO_DIR = Path(io_package.__file__).parent
MODULES = sorted(p.stem for p in IO_DIR.glob("*.py") if p.stem != "__init__")


def _io_imports(module: str) -> set[str]:
    """io modules ``module`` imports anywhere in its source (inside functions too)."""
    tree = ast.parse((IO_DIR / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif (node.module or "").startswith("lsst.meas.crowdsource.io."):
                found.add(node.module.split(".")[4])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("lsst.meas.crowdsource.io."):
                    found.add(alias.name.split(".")[4])
    return found & set(MODULES)


GRAPH = {module: _io_imports(module) for module in MODULES}


def test_no_import_cycle_in_io():
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            pytest.fail(f"import cycle: {' -> '.join((*path, module))}")
        if module in done:
            return
        for target in GRAPH[module]:
            visit(target, (*path, module))
        done.add(module)

    for module in MODULES:
        visit(module, ())


@pytest.mark.parametrize("module", ["inputs", "planes", "psf"])
def test_shared_pieces_import_no_adapter(module):
    assert GRAPH[module] <= {"inputs", "planes", "psf"}, GRAPH[module]


def test_codec_imports_the_conventions_not_the_reverse():
    assert "ccddata" in GRAPH["calexp_fits"]
    assert "calexp_fits" not in GRAPH["ccddata"]


def test_no_adapter_imports_the_dispatch():
    assert [m for m in MODULES if "exposure" in GRAPH[m]] == []
