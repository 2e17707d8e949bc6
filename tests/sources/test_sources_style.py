"""House style for the source modules: sorted, complete ``__all__``; docstrings on public names."""

import ast
import importlib
import pathlib

import pytest

MODULES = ["elfutil", "filemap", "flattened", "kdump", "notes", "open", "qemu_elf", "raw", "runs",
           "xc_core"]


@pytest.mark.parametrize("name", MODULES)
def test_all_sorted_complete_documented(name):
    module = importlib.import_module(f"gdb_xenpte.sources.{name}")
    assert module.__all__ == sorted(module.__all__)
    tree = ast.parse(pathlib.Path(module.__file__).read_text())
    assert ast.get_docstring(tree), f"{name} has no module docstring"
    public = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
              and not n.name.startswith("_")]
    assert {n.name for n in public} <= set(module.__all__)
    for node in public:
        assert ast.get_docstring(node), f"{name}.{node.name} has no docstring"
