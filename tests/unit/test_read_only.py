"""Read-only guarantee (issue 7): no code path writes target memory or a dump file.

Static (AST over ``gdb_xenpte/``): nothing calls ``write_memory``/``write_register``/``pwrite``/
``os.write``/``os.truncate``; every ``gdb.execute`` is a ``monitor``, ``maintenance packet`` or
``help`` command; the monitor commands sent are the read-only queries ``info mtree -f`` and
``gpa2hva``; the only remote packets are ``qqemu.Supported``, ``qqemu.PhyMemMode`` and the
PhyMemMode switch ``Qqemu.PhyMemMode:`` (gdbstub state, restored: tests/live/test_gdblive.py);
in ``gdb_xenpte/sources/`` every ``open`` is a read mode, every ``os.open`` read-only, every
``mmap`` ``ACCESS_READ``, and no write-like method is called at all.

Dynamic: every test dump format is walked by the engine under an audit of ``open``, ``os.open``
and ``mmap`` and must keep its bytes and mtime. The same through real gdb is
tests/gdb/test_read_only_gdb.py; a live walk of the oracle guest leaving guest RAM and PhyMemMode
unchanged is tests/live/test_read_only_live.py (this tier runs no processes).
"""

from __future__ import annotations

import ast
import builtins
import mmap
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "gdb_xenpte"
SOURCES = PACKAGE / "sources"
for _p in (ROOT / "tests" / "sources", ROOT / "tests"):  # the shared corpus (corpus.py)
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

WRITE_CALLS = {"write_memory", "write_register", "pwrite", "pwritev", "truncate", "ftruncate"}
EXECUTE_PREFIXES = ("monitor ", "maintenance packet ", "help ")
MONITOR_COMMANDS = ("info mtree -f", "gpa2hva ")
PACKETS = ("qqemu.Supported", "qqemu.PhyMemMode", "Qqemu.PhyMemMode:")
READ_FLAGS = {"O_RDONLY", "O_CLOEXEC", "O_NOFOLLOW", "O_NOATIME", "O_NONBLOCK", "O_NOCTTY",
              "O_BINARY"}


def _modules(folder: pathlib.Path):
    for path in sorted(folder.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def _calls(tree):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def _name(func) -> str:
    """``a.b.c`` for an attribute chain, ``f`` for a name, else ''."""
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _static_prefix(node) -> str:
    """The text a string argument starts with, as far as it is known statically."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        text = ""
        for part in node.values:
            if not (isinstance(part, ast.Constant) and isinstance(part.value, str)):
                return text + "\0"  # a formatted value: only the prefix is known
            text += part.value
        return text
    return "\0"  # not a literal: a parameter (checked where its callers pass literals)


def _where(path, node) -> str:
    return f"{path.relative_to(ROOT)}:{node.lineno}"


# -- static ---------------------------------------------------------------------------------------

# The one module that writes a file: the user's own -o output (it refuses an input as output).
OUTPUT_WRITER = "outfile.py"


def test_no_code_writes_target_memory_registers_or_files():
    bad = []
    for path, tree in _modules(PACKAGE):
        if path.name == OUTPUT_WRITER and path.parent == PACKAGE:
            continue
        for call in _calls(tree):
            name = _name(call.func)
            last = name.rsplit(".", 1)[-1]
            if last in WRITE_CALLS or name in ("os.write", "os.writev", "os.remove",
                                               "os.unlink", "os.rename", "shutil.copy"):
                bad.append(f"{_where(path, call)}: {name}()")
    assert not bad, bad


def test_gdb_is_only_asked_read_only_things():
    """gdb.execute runs monitor/maint-packet/help only, with allow-listed payloads."""
    bad, monitors, packets = [], [], []
    for path, tree in _modules(PACKAGE):
        for call in _calls(tree):
            name = _name(call.func)
            if not call.args:
                continue
            text = _static_prefix(call.args[0])
            if name == "gdb.execute" and not text.startswith(EXECUTE_PREFIXES):
                bad.append(f"{_where(path, call)}: gdb.execute({text!r})")
            elif name.endswith(".monitor") and not text.startswith("\0"):
                monitors.append(text)
                if not text.startswith(MONITOR_COMMANDS):
                    bad.append(f"{_where(path, call)}: monitor {text!r}")
            elif name.endswith(".packet") and not text.startswith("\0"):
                packets.append(text)
                if not text.startswith(PACKETS) or (text.startswith("Q")
                                                    and "PhyMemMode:" not in text):
                    bad.append(f"{_where(path, call)}: packet {text!r}")
    assert not bad, bad
    # The scan saw the live source's real traffic (guards against a scan that matches nothing).
    assert any(m.startswith("info mtree") for m in monitors) and any(
        p.startswith("Qqemu.PhyMemMode:") for p in packets), (monitors, packets)


def test_sources_open_files_read_only():
    bad, opens = [], 0
    for path, tree in _modules(SOURCES):
        for call in _calls(tree):
            name = _name(call.func)
            kw = {k.arg: k.value for k in call.keywords}
            if name == "open":
                opens += 1
                mode = call.args[1] if len(call.args) > 1 else kw.get("mode")
                text = "r" if mode is None else _static_prefix(mode)
                if "\0" in text or set(text) & set("wax+"):
                    bad.append(f"{_where(path, call)}: open(..., {text!r})")
            elif name == "os.open":
                opens += 1
                flags = {n.attr for n in ast.walk(call.args[1]) if isinstance(n, ast.Attribute)}
                if not flags or flags - READ_FLAGS:
                    bad.append(f"{_where(path, call)}: os.open flags {sorted(flags)}")
            elif name == "mmap.mmap":
                opens += 1
                access = _name(kw["access"]) if "access" in kw else ""
                prot = _name(kw["prot"]) if "prot" in kw else ""
                if access != "mmap.ACCESS_READ" and prot != "mmap.PROT_READ":
                    bad.append(f"{_where(path, call)}: mmap without ACCESS_READ")
            elif name.rsplit(".", 1)[-1] in ("write", "writelines", "truncate", "flush"):
                bad.append(f"{_where(path, call)}: {name}()")
    assert not bad, bad
    assert opens >= 3  # dump files, /proc/<pid>/mem, the mapping


# -- dynamic: dump files --------------------------------------------------------------------------

class _OpenAudit:
    """Record every open/os.open/mmap made while active, with how it was asked for."""

    def __init__(self, monkeypatch):
        self.seen = []
        real_open, real_os_open, real_mmap = builtins.open, os.open, mmap.mmap

        def audited_open(file, mode="r", *a, **kw):
            self.seen.append(("open", str(file), mode))
            return real_open(file, mode, *a, **kw)

        def audited_os_open(file, flags, *a, **kw):
            self.seen.append(("os.open", str(file), flags))
            return real_os_open(file, flags, *a, **kw)

        class AuditedMmap(real_mmap):
            def __new__(cls, fileno, length, *a, **kw):
                self.seen.append(("mmap", fileno, kw.get("access", mmap.ACCESS_DEFAULT)))
                return real_mmap.__new__(real_mmap, fileno, length, *a, **kw)

        monkeypatch.setattr(builtins, "open", audited_open)
        monkeypatch.setattr(os, "open", audited_os_open)
        monkeypatch.setattr(mmap, "mmap", AuditedMmap)

    def writes(self):
        bad = []
        for kind, what, how in self.seen:
            if kind == "open" and set(how) & set("wax+"):
                bad.append((kind, what, how))
            elif kind == "os.open" and how & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC
                                              | os.O_APPEND):
                bad.append((kind, what, how))
            elif kind == "mmap" and how != mmap.ACCESS_READ:
                bad.append((kind, what, how))
        return bad


def test_walking_every_dump_format_leaves_the_file_untouched(tmp_path, monkeypatch):
    from gdb_xenpte.errors import XenpteError
    from gdb_xenpte.session import Options, prepare
    from gdb_xenpte.sources.open import open_dump
    from corpus import fingerprint, walkable_dump_files
    files, cr3 = walkable_dump_files(tmp_path)
    before = {p: fingerprint(p) for p, _f, _o in files}
    audit = _OpenAudit(monkeypatch)
    walked = 0
    for path, fmt, _opts in files:
        raw = fmt == "raw"
        with open_dump(str(path), fmt="raw" if raw else None) as src:
            vcpus = [v.index for v in src.vcpus()] or [None]
            for vcpu in vcpus:
                opts = Options(vcpu=vcpu, cr3=cr3 if raw else None, cr4=0x3506F0 if raw
                               else None, efer=0xD01 if raw else None)
                try:
                    walker = prepare(src, opts).walker()
                    walked += sum(m.count for m in walker.iter_mappings(coalesce=False))
                    walker.trace(0xFFFFFFFF81000000)
                except XenpteError:
                    pass  # e.g. an offline vCPU: refusing is fine, writing is not
    monkeypatch.undo()
    assert walked >= 5 * 9  # the tables of each HVM format and the raw image were walked
    assert not audit.writes(), audit.writes()
    opened = {what for kind, what, _h in audit.seen if kind == "os.open"}
    assert opened >= {str(p) for p, _f, _o in files}  # the audit saw every source open its file
    assert {p: fingerprint(p) for p, _f, _o in files} == before
