"""The engine must import no gdb (style.md house rule 1): parse every engine module's AST."""

import ast
import pathlib

PKG = pathlib.Path(__file__).resolve().parents[2] / "gdb_xenpte"


def _engine_modules():
    for path in sorted(PKG.rglob("*.py")):
        # The glue: the command layer and the loader file gdb sources.
        if "gdbcmd" in path.parts or path.name == "gdb_load.py":
            continue
        yield path


def test_engine_modules_exist():
    names = {p.name for p in _engine_modules()}
    assert {"arch.py", "cpu.py", "errors.py"} <= names


def test_no_engine_module_imports_gdb():
    offenders = []
    for path in _engine_modules():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            else:
                continue
            if any(m == "gdb" or m.startswith("gdb.") for m in mods):
                offenders.append(f"{path.relative_to(PKG.parent)}:{node.lineno}")
    assert not offenders, offenders
