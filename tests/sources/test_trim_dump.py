"""tests/targets/trim_dump.py on synthetic QEMU ELF dumps: keeps exactly the tables, walks the same."""

from __future__ import annotations

import struct

import pytest

from gdb_xenpte.arch import CR4
from gdb_xenpte.cpu import CpuState
from gdb_xenpte.sources.qemu_elf import QemuElfSource
from gdb_xenpte.walk import Walker
from sources.writers import write_qemu_elf
from targets.trim_dump import collect_table_pages, trim_qemu_elf

P, RW, US, PS = 1, 2, 4, 0x80
TABLE = P | RW | US


def _page(entries: dict) -> bytes:
    out = bytearray(4096)
    for index, value in entries.items():
        struct.pack_into("<Q", out, 8 * index, value)
    return bytes(out)


def _guest(la57: bool):
    """A small address space: 4K, 2M and 1G leaves, a self-map, and a data page that looks like a
    table (it must not be followed). Returns (pages, cr3, table pages)."""
    top = 0x1000
    pages = {
        0x2000: _page({0: 0x3000 | TABLE, 1: (1 << 30) | P | PS}),       # PDPT: 1 GiB leaf at 1
        0x3000: _page({0: 0x4000 | TABLE, 1: 0x200000 | P | RW | PS}),   # PD: 2 MiB leaf at 1
        0x4000: _page({0: 0x10000 | P | RW, 1: 0x11000 | P}),            # PT: 4 KiB leaves
        0x10000: _page({i: 0x5000 | TABLE for i in range(512)}),          # data, table-looking
        0x11000: b"\xab" * 4096,
    }
    if la57:
        pages[top] = _page({0: 0x6000 | TABLE, 1: top | TABLE})          # PML5 (+ self-map)
        pages[0x6000] = _page({0: 0x2000 | TABLE})                        # PML4
        tables = {top, 0x6000, 0x2000, 0x3000, 0x4000}
    else:
        pages[top] = _page({0: 0x2000 | TABLE, 511: top | TABLE})        # PML4 (+ self-map)
        tables = {top, 0x2000, 0x3000, 0x4000}
    return pages, top, tables


def _walk(path, cr4: int):
    with QemuElfSource(str(path)) as source:
        regs = source.vcpus()[0]
        cpu = CpuState(cr0=regs.cr0, cr3=regs.cr3, cr4=cr4, long_mode=True)
        return [(m.va, m.pa, m.size, m.flags, tuple(e.raw for e in m.entries))
                for m in Walker(source, cpu).iter_mappings()]


@pytest.mark.parametrize("la57", [False, True], ids=["4level", "5level"])
def test_trim_keeps_the_tables_and_the_walk(tmp_path, la57):
    pages, cr3, tables = _guest(la57)
    cr4 = 0x20 | (CR4.LA57 if la57 else 0)
    full, trimmed = tmp_path / "full.elf", tmp_path / "trimmed.elf"
    write_qemu_elf(full, pages, [{"cr3": cr3, "cr4": cr4}])
    with QemuElfSource(str(full)) as source:
        assert collect_table_pages(source, cr3, 5 if la57 else 4) == tables
        full_vcpus = source.vcpus()
    figures = trim_qemu_elf(full, trimmed)
    assert figures["tables"] == len(tables) and figures["vcpus"] == 1
    with QemuElfSource(str(trimmed)) as source:
        kept = {page for start, end in source.ranges() for page in range(start, end, 4096)}
        assert kept == tables
        assert source.vcpus() == full_vcpus  # the notes are copied byte for byte
    assert _walk(trimmed, cr4) == _walk(full, cr4)
