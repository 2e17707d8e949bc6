"""One small valid image per dump format, for the corruption and fuzz tests.

Each case knows how to write itself, which format to force, and which pages it holds, so a test
can damage the file and then check that reading it yields either the right bytes or one of our
errors, never anything else.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import struct
from dataclasses import dataclass
from typing import Callable, Dict

from gdb_xenpte.errors import UnreadableMemory, XenpteError
from gdb_xenpte.sources.open import open_dump
from samples import PAGE, VCPUS, page_bytes, sample_low_pages, sample_pages
from writers import (EM_386, Layout, build_kdump, write_flattened, write_kdump, write_qemu_elf,
                     write_xc_core)

PV_PFNS = (0, 1, 2, 5)
PV_P2M = {0: 0x1234, 1: 0x99, 2: 0x5000, 5: 0x77}


@dataclass
class Case:
    name: str
    fmt: str
    pages: Dict[int, bytes]  # what a valid file yields (PFN space for PV)
    write: Callable[[pathlib.Path], Layout]


def _small_pages():
    return {a: d for a, d in sample_pages().items() if a < 0x4000 or a == 1 << 32}


def _pv_pages():
    return {pfn * PAGE: page_bytes(pfn) for pfn in PV_PFNS}


def _pv_vcpus():
    return [dict(cr3=0x5000 << 12, user_cr3=0x77 << 12), dict(cr3=0x99 << 12, online=False)]


def cases():
    small, low = _small_pages(), {a: d for a, d in sample_low_pages().items() if a < 0x4000}
    pv = _pv_pages()
    return [
        Case("qemu-elf64", "qemu-elf", small, lambda p: write_qemu_elf(p, small, VCPUS)),
        Case("qemu-elf32", "qemu-elf", low,
             lambda p: write_qemu_elf(p, low, VCPUS, elf_class=32, machine=EM_386)),
        Case("kdump", "kdump", small, lambda p: write_kdump(p, small, VCPUS)),
        Case("kdump32", "kdump", low, lambda p: write_kdump(p, low, VCPUS, elf_class=32)),
        Case("kdump-flat", "kdump", small,
             lambda p: write_kdump(p, small, VCPUS, flattened=True, chunk=2 * PAGE)),
        Case("xc-pv64", "xc-core", pv,
             lambda p: write_xc_core(p, pv, _pv_vcpus(), kind="pv64", p2m=PV_P2M)),
        Case("xc-pv32", "xc-core", pv,
             lambda p: write_xc_core(p, pv, _pv_vcpus()[:1], kind="pv32", p2m=PV_P2M)),
        Case("xc-hvm", "xc-core", low,
             lambda p: write_xc_core(p, low, VCPUS, kind="hvm", shared_info=None)),
    ]


def exercise(path: pathlib.Path, case: Case, fmt=None) -> str:
    """Open a possibly damaged file and use every part of the source.

    :returns: ``"ok"`` if it opened, else the error message (only our errors may escape).
    """
    try:
        src = open_dump(str(path), fmt=fmt)
    except XenpteError as err:
        return str(err)
    with src:
        src.describe()
        src.vcpus()
        for start, end in src.ranges():
            assert start < end
        for addr, data in case.pages.items():
            try:
                got = src.read(addr, PAGE)
            except UnreadableMemory as err:
                assert path.name in str(err) and err.paddr >= addr
                continue
            assert len(got) == PAGE
        if src.translate_frame is not None:
            for mfn in list(PV_P2M.values()) + [0, 0x4242]:
                pfn = src.translate_frame(mfn)
                assert pfn is None or isinstance(pfn, int)
    return "ok"


# ----------------------------------------------------------------------------------------------
# Hostile files (issue 19): the classes that mutating a valid header does not reach. The tests in
# test_hostile_files.py and the long fuzz run (test_fuzz.py) both draw on these.

STORM_RECORDS = 300_000


def write_record_storm(path: pathlib.Path, records: int = STORM_RECORDS) -> Layout:
    """A valid flattened kdump preceded by ``records`` one-byte records in descending offset order
    (zeros, so the dump still means the same: later records win, holes read as zeros)."""
    _image, _layout, pieces = build_kdump(_small_pages(), VCPUS)
    storm = ((off, b"\0") for off in range(records - 1, -1, -1))
    return write_flattened(path, pieces, chunk=2 * PAGE, before=storm)


def write_bitmap_claim(path: pathlib.Path, half: int = 8 << 30) -> int:
    """A small flattened kdump whose header claims two ``half``-byte bitmaps (bitmap_blocks and
    max_mapnr to match) but holds only the header, sub-header and notes, and one record past the
    claimed bitmaps (where the descriptors would start), so that the reassembled file "has room"
    for them: everything in between is holes.

    :returns: the file size.
    """
    _image, layout, pieces = build_kdump(_small_pages(), VCPUS)
    head = bytearray(pieces[0][1])
    mapnr = half * 8
    struct.pack_into("<II", head, 436, 2 * half // PAGE, min(mapnr, 0xFFFFFFFF))
    sub = bytearray(pieces[1][1])
    struct.pack_into("<Q", sub, 96, mapnr)  # max_mapnr_64 (64-bit sub-header, offset 96)
    tail = (layout.offsets["bitmap1"] + 2 * half, bytes(24))
    return write_flattened(path, [(0, bytes(head)), (PAGE, bytes(sub)), pieces[2], tail]).size


def write_sparse_note(path: pathlib.Path, claim: int = 8 << 30) -> int:
    """A QEMU ELF dump whose PT_NOTE claims ``claim`` bytes, extended (sparse) so that the claim
    lies inside the file.

    :returns: the file size.
    """
    layout = write_qemu_elf(path, _small_pages(), VCPUS, note_filesz=claim)
    size = layout.offsets["notes"] + claim
    os.truncate(path, size)
    return size


def shrink_sizes(layout: Layout):
    """Sizes to truncate a written file to while it is open: before each structure, and 1."""
    return sorted({1} | {o for o in layout.boundaries() if 0 < o < layout.size})


# ----------------------------------------------------------------------------------------------
# Files for the read-only audits (tests/unit, tests/gdb test_read_only*)

def fingerprint(path: pathlib.Path):
    """What must not change when a dump is read: content hash, size, mtime, mode."""
    st = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns, st.st_mode


def walkable_dump_files(tmp_path):
    """``(path, format, gdb options)`` for every format, and the CR3 of the tables: the parser
    corpus (PV and 32-bit included; random page contents) and real 4-level tables
    (tests/builder.py) in each HVM format, so walks have leaves to produce."""
    from builder import NX, P, RW, US, Builder
    from writers import write_raw
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
