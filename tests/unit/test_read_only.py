"""Read-only guarantee (issue 7): no code path writes target memory or a dump file.

Static (AST over ``gdb_xenpte/``): nothing calls ``write_memory``/``write_register``/``pwrite``/
``os.write``/``os.truncate``; every ``gdb.execute`` is a ``monitor``, ``maintenance packet`` or
``help`` command; the monitor commands sent are the read-only queries ``info mtree -f`` and
``gpa2hva``; the only remote packets are ``qqemu.Supported``, ``qqemu.PhyMemMode`` and the
PhyMemMode switch ``Qqemu.PhyMemMode:`` (gdbstub state, restored: tests/live/test_gdblive.py);
in ``gdb_xenpte/sources/`` every ``open`` is a read mode, every ``os.open`` read-only, every
``mmap`` ``ACCESS_READ``, and no write-like method is called at all.

Dynamic: every test dump format is walked (engine and real gdb) under an audit of ``open``,
``os.open`` and ``mmap`` and must keep its bytes and mtime; a live walk of the oracle guest (both
read paths, walks, traces, checks) leaves guest RAM byte-identical (QEMU ``pmemsave`` before and
after) and PhyMemMode as it was.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import mmap
import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "gdb_xenpte"
SOURCES = PACKAGE / "sources"
for _p in (ROOT / "tests" / "sources", ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

WRITE_CALLS = {"write_memory", "write_register", "pwrite", "pwritev", "truncate", "ftruncate"}
EXECUTE_PREFIXES = ("monitor ", "maintenance packet ", "help ")
MONITOR_COMMANDS = ("info mtree -f", "gpa2hva ")
PACKETS = ("qqemu.Supported", "qqemu.PhyMemMode", "Qqemu.PhyMemMode:")
READ_FLAGS = {"O_RDONLY", "O_CLOEXEC", "O_NOFOLLOW", "O_NOATIME", "O_NONBLOCK", "O_BINARY"}


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

def _fingerprint(path: pathlib.Path):
    st = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns, st.st_mode


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


def _dump_files(tmp_path):
    """Every format: the parser corpus (PV and 32-bit included; random page contents) and real
    4-level tables (tests/builder.py) in each HVM format, so walks have leaves to produce."""
    from builder import NX, P, RW, US, Builder
    from corpus import cases
    from writers import write_kdump, write_qemu_elf, write_raw, write_xc_core
    files = []
    for case in cases():
        path = tmp_path / f"{case.name}.dump"
        case.write(path)
        files.append((path, case.fmt, f"--core {path}"))
    b = Builder("4level")
    for i in range(8):
        b.map(0xFFFFFFFF81000000 + i * 4096, 0x200000 + i * 4096, flags=P | RW)
    b.map(0x400000, 0x300000, flags=P | US, extra=NX)
    b.map(0xFFFF888000000000, 0x40000000, size=1 << 30, flags=P | RW, extra=NX)
    image = b.image()
    regs = [dict(cr0=0x80050033, cr3=b.cr3, cr4=0x3506F0, cs_flags=0xA09B00)]
    writers = {"qemu-elf": lambda p: write_qemu_elf(p, image, regs),
               "kdump": lambda p: write_kdump(p, image, regs),
               "kdump-flat": lambda p: write_kdump(p, image, regs, flattened=True),
               "xc-hvm": lambda p: write_xc_core(p, image, regs, kind="hvm")}
    for name, write in writers.items():
        path = tmp_path / f"tables-{name}.dump"
        write(path)
        files.append((path, name, f"--core {path}"))
    raw = tmp_path / "tables.raw"
    write_raw(raw, image)
    files.append((raw, "raw", f"--raw {raw}@0 --cr3 {b.cr3:#x} --cr4 0x3506f0 --efer 0xd01"))
    return files, b.cr3


def test_walking_every_dump_format_leaves_the_file_untouched(tmp_path, monkeypatch):
    from gdb_xenpte.errors import XenpteError
    from gdb_xenpte.session import Options, prepare
    from gdb_xenpte.sources.open import open_dump
    files, cr3 = _dump_files(tmp_path)
    before = {p: _fingerprint(p) for p, _f, _o in files}
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
    assert any(kind == "mmap" for kind, _w, _h in audit.seen)  # the audit saw the sources
    assert {p: _fingerprint(p) for p, _f, _o in files} == before


def test_gdb_commands_on_every_dump_format_leave_the_file_untouched(tmp_path):
    from tests.gdb.gdbrun import run_gdb
    files, _cr3 = _dump_files(tmp_path)
    before = {p: _fingerprint(p) for p, _f, _o in files}
    for path, _fmt, opts in files:
        res = run_gdb(f"xen-pte-walk {opts}", f"xen-pte-walk {opts} --json --no-coalesce",
                      f"xen-pte-walk {opts} 0xffffffff81000000", f"xen-pte-check {opts}")
        assert "Traceback" not in res.stderr, res.stderr
        if "tables" in path.name:
            assert '"type":"mapping"' in res.stdout, res.stdout[-2000:] + res.stderr
    assert {p: _fingerprint(p) for p, _f, _o in files} == before


# -- dynamic: a live guest ------------------------------------------------------------------------

@pytest.mark.live
def test_live_walks_leave_guest_ram_and_phymemmode_unchanged(tmp_path):
    from tests.gdb.gdbrun import run_gdb
    from tests.targets.gdb import connect_commands
    from tests.targets.oracle import RAM_BYTES, boot_oracle

    def phymemmode(vm) -> str:
        res = run_gdb(*connect_commands(vm.gdb_port), "maintenance packet qqemu.PhyMemMode",
                      load=False)
        return res.stdout.rsplit('received: "', 1)[1].split('"')[0]

    with boot_oracle(4, tmp_path) as run:
        vm, h = run.vm, run.header
        regs = (f"--cr3 {h['cr3']:#x} --cr0 {h['final_cr0']:#x} --cr4 {h['final_cr4']:#x} "
                f"--efer {h['final_efer']:#x} --maxphyaddr {h['maxphyaddr']}")
        ram_before = hashlib.sha256(vm.pmemsave(0, RAM_BYTES)).hexdigest()
        mode_before = phymemmode(vm)
        commands = []
        for fast in ("on", "off"):
            commands += [f"set xen-pte fast-path {fast}", f"xen-pte-walk {regs}",
                         f"xen-pte-walk {regs} --json --no-coalesce",
                         f"xen-pte-walk {regs} 0x1000", f"xen-pte-check {regs}",
                         "xen-cr4"]
        res = run_gdb(*connect_commands(vm.gdb_port), *commands, "detach", timeout=600)
        assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
        assert "/proc/" in res.stdout and "PhyMemMode" in res.stdout  # both paths were used
        assert hashlib.sha256(vm.pmemsave(0, RAM_BYTES)).hexdigest() == ram_before
        assert phymemmode(vm) == mode_before
