"""Help texts and names of every command and parameter, checked inside the real gdb.

gdb's own selftest rules (style.md §5.1): the first line of a doc ends with '.', and the doc has no
trailing newline. House rules: one imperative sentence first, kebab-case command names, snake-free
class names, a non-empty help for every option, and ``help CMD`` prints exactly the docstring.
"""

import re

from gdbrun import gdb_python, run_gdb

INFO = r'''
import json, gdb, argparse
from gdb_xenpte.gdbcmd import register
out = []
for obj in register():
    cls = type(obj)
    entry = {"class": cls.__name__, "doc": cls.__doc__}
    if isinstance(obj, gdb.Parameter):
        entry.update(kind="param", name=obj.spec.name if hasattr(obj, "spec") else None,
                     set_doc=obj.set_doc, show_doc=obj.show_doc)
    else:
        parser = getattr(obj, "parser", None)
        entry.update(kind="command", name=getattr(obj, "command", None),
                     options=[[a.option_strings or [a.dest], a.help] for a in parser._actions]
                     if parser else [],
                     help=gdb.execute("help " + obj.command, to_string=True)
                     if getattr(obj, "command", None) else None)
    out.append(entry)
print(json.dumps(out))
'''


def _registry():
    return gdb_python(INFO)


def test_commands_exist():
    names = {e["name"] for e in _registry() if e["kind"] == "command" and e["name"]}
    assert {"xen-pte-walk"} <= names


def test_command_docs_follow_gdb_rules():
    for e in _registry():
        doc = e["doc"]
        first = doc.split("\n", 1)[0]
        assert first.endswith("."), (e["class"], first)
        assert not doc.endswith("\n"), e["class"]
        # one sentence: no full stop inside the first line
        assert ". " not in first, first
        # imperative: "Walk ...", not "Walks ..." / "This command ..."
        word = first.split()[0]
        assert not word.lower().startswith("this"), first
        assert not re.fullmatch(r"[A-Z][a-z]+[^s]s", word), first


def test_help_prints_the_docstring():
    for e in _registry():
        if e["kind"] == "command" and e["name"]:
            assert e["help"].rstrip("\n") == e["doc"], e["name"]


def test_every_option_has_help():
    for e in _registry():
        for names, text in e.get("options", []):
            assert text and text.strip(), (e["name"], names)


def test_names_are_kebab_case_and_classes_camel_case():
    for e in _registry():
        if e["kind"] == "command" and e["name"]:
            assert re.fullmatch(r"xen-[a-z0-9]+(-[a-z0-9]+)*", e["name"]), e["name"]
            assert re.fullmatch(r"XenPte[A-Za-z0-9]*Command|XenCr4Command", e["class"]), e["class"]
        if e["kind"] == "param":
            assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", e["name"]), e["name"]
            assert e["set_doc"].startswith("Set ") and e["set_doc"].endswith(".")
            assert e["show_doc"].startswith("Show ") and e["show_doc"].endswith(".")


def test_nothing_registers_at_import():
    res = run_gdb("python import gdb_xenpte.gdbcmd, gdb_xenpte.gdbcmd.commands",
                  "help xen-pte-walk", load=False)
    assert 'Undefined command: "xen-pte-walk"' in res.stderr


def test_loading_twice_is_harmless():
    from gdbrun import LOADER
    res = run_gdb(f"source {LOADER}", "help xen-pte-walk")
    assert res.returncode == 0 and "Walk the guest page tables" in res.stdout, res.stderr
