"""The package's layers (issue 11 §6): no module imports from a layer above its own.

bottom (certified numbers): ``implreg.numerics``, ``errors``, ``certify``, ``preconditions``
models (two wings that never import each other): ``implreg.matrix``, ``implreg.relu``
harness: ``implreg.harness``; then ``implreg.strategies``; ``theorems/`` on top (never imported by implreg).

Every import statement counts, including the lazy ones inside functions.  The top-level façades
(``implreg/claims.py`` …, which alias a moved module under the name the README shows) are exempt: they exist
to be imported from above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "implreg"
BOTTOM = {"numerics", "errors", "certify", "preconditions"}
RANK = {"bottom": 0, "matrix": 1, "relu": 1, "harness": 2, "strategies": 3, "theorems": 4}
FACADES = {"claims", "evidence", "stats", "measures", "problems", "factorization", "flow", "capacity"}


def _layer(module: str) -> str | None:
    """The layer of a dotted module name inside the project, or None for anything outside it."""
    parts = module.split(".")
    if parts[0] == "theorems":
        return "theorems"
    if parts[0] != "implreg" or len(parts) == 1:
        return None
    top = parts[1]
    if top in BOTTOM:
        return "bottom"
    if top in RANK:
        return top
    if top in FACADES:
        return "facade"
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in the file; ``from implreg import x`` counts as ``implreg.x``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "implreg":
                out += [(node.lineno, f"implreg.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, node.module))
    return out


SOURCES = sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_has_a_layer():
    lost = [str(p.relative_to(PKG)) for p in SOURCES
            if _module_name(p) != "implreg" and _layer(_module_name(p)) is None]
    assert not lost, f"modules outside every layer (add them to a wing): {lost}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PKG)))
def test_no_import_from_a_layer_above(path):
    own = _layer(_module_name(path))
    if own in (None, "facade"):
        return
    bad = []
    for line, mod in _imports(path):
        layer = _layer(mod)
        if layer is None:
            continue
        if layer == "facade":
            bad.append(f"line {line}: {mod} (a README façade: import the module where it lives)")
        elif RANK[layer] > RANK[own] or (RANK[layer] == RANK[own] == 1 and layer != own):
            bad.append(f"line {line}: {mod} ({layer} is {'beside' if RANK[layer] == 1 else 'above'} {own})")
    assert not bad, f"{path.relative_to(PKG)} ({own}) imports upward:\n" + "\n".join(bad)


def test_the_layer_check_catches_an_upward_import(tmp_path):
    """The checker itself: a bottom-layer file importing the harness is reported."""
    f = tmp_path / "x.py"
    f.write_text("def g():\n    from implreg.harness import claims\n")
    assert (2, "implreg.harness") in _imports(f)
    assert RANK[_layer("implreg.harness")] > RANK[_layer("implreg.numerics.ops")]
    assert _layer("implreg.relu.capacity") != _layer("implreg.matrix.measures")
