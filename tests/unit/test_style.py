"""House style (style.md §10) for every module of the package and of scripts/: a module
docstring; a sorted ``__all__`` naming every public function and class; a docstring on each.
Read from the source (AST), so gdb glue modules are checked without gdb. scripts/ drives gdb over
MI and never runs inside it: it imports no ``gdb``."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FILES = sorted(p for p in (ROOT / "gdb_xenpte").rglob("*.py") if p.name != "__init__.py") + \
    sorted(p for p in (ROOT / "scripts").glob("*.py") if p.name != "__init__.py")


def _all(tree):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__"
                                                 for t in node.targets):
            return [ast.literal_eval(e) for e in node.value.elts]
    return None


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_style(path):
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), "no module docstring"
    names = _all(tree)
    public = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
              and not n.name.startswith("_")]
    if path.name == "gdb_load.py" or names is None and not public:
        return  # the loader file gdb sources, and modules with nothing public
    assert names == sorted(names), "__all__ is not sorted"
    assert {n.name for n in public} <= set(names), "public names missing from __all__"
    undocumented = [n.name for n in public if not ast.get_docstring(n)]
    assert not undocumented, f"no docstring: {undocumented}"


@pytest.mark.parametrize("path", [p for p in FILES if p.parent.name == "scripts"],
                         ids=lambda p: p.name)
def test_scripts_never_import_gdb(path):
    tree = ast.parse(path.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module}
    assert "gdb" not in imported
