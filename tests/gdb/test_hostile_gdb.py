"""Hostile input files through real gdb (issue 19): the gdb commands end with one error line where
they used to block forever (a FIFO), lose the whole session (SIGBUS on a dump truncated during a
walk) or guess (``--raw FILE`` without ``@BASE``). The engine-side tests per class are
tests/sources/test_hostile_files.py; the inputs come from the shared corpus.
"""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT / "tests" / "sources") not in sys.path:  # the shared corpus (corpus.py)
    sys.path.insert(0, str(ROOT / "tests" / "sources"))

from corpus import walkable_dump_files  # noqa: E402
from tests.gdb.gdbrun import run_gdb  # noqa: E402


def _errors(res):
    return [ln for ln in res.stderr.splitlines() if ln.startswith("xen-pte")]


@pytest.mark.parametrize("kind", ["fifo", "chardev", "directory"])
def test_not_a_regular_file_is_one_error_line_not_a_hang(tmp_path, kind):
    path = {"fifo": tmp_path / "dump.fifo", "chardev": "/dev/zero", "directory": tmp_path}[kind]
    if kind == "fifo":
        os.mkfifo(path)  # no writer: open() would block, and gdb then ignores SIGTERM
    res = run_gdb(f"xen-pte-walk --core {path}", f"xen-pte-check --raw {path}@0 --cr3 0x1000",
                  timeout=60)
    text = {"fifo": "a FIFO", "chardev": "a character device", "directory": "a directory"}[kind]
    assert _errors(res) == [f"xen-pte-walk: {path}: not a regular file ({text}): dumps and raw "
                            "images are read from regular files; copy it to one first",
                            f"xen-pte-check: {path}: not a regular file ({text}): dumps and raw "
                            "images are read from regular files; copy it to one first"], res.stderr


def test_raw_without_base_is_refused_with_the_fix(tmp_path):
    raw = tmp_path / "mem.bin"
    raw.write_bytes(bytes(8192))
    res = run_gdb(f"xen-pte-walk --raw {raw} --cr3 0x1000")
    assert _errors(res) == [f"xen-pte-walk: --raw {raw}: no base address: give FILE@BASE, the "
                            f"guest-physical address of the file's first byte (e.g. {raw}@0x0 "
                            "for memory from address 0)"]


# Truncate the dump to one page just before the walk's third table read (what another process
# or a dump still being written does); a mapped read would then kill gdb with SIGBUS.
_TRUNCATE_AT_THIRD_READ = (
    "python exec(\"import os\\nfrom gdb_xenpte.sources import filemap as F\\nn = [0]\\n"
    "_r = F.DumpFile.slice\\n"
    "def _cut(self, *a):\\n if a[2].startswith(('data of physical', 'page descriptor')):\\n"
    "  n[0] += 1\\n  if n[0] == 3: os.truncate(self.path, 4096)\\n return _r(self, *a)\\n"
    "F.DumpFile.slice = _cut\")")


@pytest.mark.parametrize("fmt", ["tables-qemu-elf", "tables-kdump", "tables-kdump-flat",
                                 "tables-xc-hvm"])
def test_dump_truncated_during_a_walk_ends_with_the_file_and_offset(tmp_path, fmt):
    files, _cr3 = walkable_dump_files(tmp_path)
    path, _f, opts = next(f for f in files if f[0].name == f"{fmt}.dump")
    res = run_gdb(_TRUNCATE_AT_THIRD_READ, f"xen-pte-walk --json {opts}", "echo still-alive\\n")
    assert res.returncode == 0 and "still-alive" in res.stdout, res.stderr[-2000:]
    assert "Fatal signal" not in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]
    records = res.json_lines()
    assert records[-1]["type"] == "summary", res.stdout[-2000:]
    reasons = [u["reason"] for u in records[-1]["unreadable"]]
    assert reasons and all(f"{path.name}: file shrank while being read: " in r
                           and "at file offset 0x" in r for r in reasons), reasons
