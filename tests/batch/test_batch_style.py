"""House style for scripts/: sorted, complete ``__all__``, docstrings on public names and modules,
and no ``import gdb`` (the tools drive gdb over MI; they never run inside it)."""

import ast
import importlib
import pathlib

import pytest

MODULES = ["batch", "cli", "mi", "records", "summary", "xen_pte_diff", "xen_pte_dump"]


@pytest.mark.parametrize("name", MODULES)
def test_all_sorted_complete_documented(name):
    module = importlib.import_module(f"scripts.{name}")
    assert module.__all__ == sorted(module.__all__)
    tree = ast.parse(pathlib.Path(module.__file__).read_text())
    assert ast.get_docstring(tree), f"{name} has no module docstring"
    public = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
              and not n.name.startswith("_")]
    assert {n.name for n in public} <= set(module.__all__)
    for node in public:
        assert ast.get_docstring(node), f"{name}.{node.name} has no docstring"
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module}
    assert "gdb" not in imported
