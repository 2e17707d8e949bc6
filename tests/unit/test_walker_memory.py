"""A walk's memory stays bounded in decoded last-level tables, and tables are still read once.

The walker keeps every table's bytes for the walk (each table is read once, issue 7) but only a
bounded number of *decoded* page tables: a PT evicted and reached again through another entry (an
alias, as Linux's espfix PT under 512 PD entries) is decoded again from the bytes it already read.
Here the bound is lowered to 4 so that a small space exercises eviction and re-decoding.
"""

import struct

import pytest

import gdb_xenpte.walk as walk_mod
from gdb_xenpte.arch import CR4, EFER
from gdb_xenpte.cpu import CpuState
from gdb_xenpte.sources.memory import MemorySource
from gdb_xenpte.walk import Walker

PML4, PDPT, PD = 0x1000, 0x2000, 0x3000
PT0 = 0x10000          # PTs at PT0 + i * 0x1000
N_PTS = 10
DATA = 0x800000        # leaf frames
TABLE = 0x067          # P RW US A D
LEAF = 0x063           # P RW A D (supervisor)


def _page(entries):
    buf = bytearray(4096)
    for index, value in entries.items():
        struct.pack_into("<Q", buf, index * 8, value)
    return bytes(buf)


def _space():
    """PD entries 0..9 -> ten distinct PTs (each maps two pages); PD entries 100 and 200 -> PT 0
    and PT 1 again, reached long after they have been evicted."""
    pages = {PML4: _page({0: PDPT | TABLE}), PDPT: _page({0: PD | TABLE})}
    pd = {i: (PT0 + i * 0x1000) | TABLE for i in range(N_PTS)}
    pd.update({100: PT0 | TABLE, 200: (PT0 + 0x1000) | TABLE})
    pages[PD] = _page(pd)
    for i in range(N_PTS):
        pages[PT0 + i * 0x1000] = _page({3: (DATA + i * 0x2000) | LEAF,
                                         7: (DATA + i * 0x2000 + 0x1000) | LEAF})
    return pages


def _expected():
    out = []
    for pd_index, pt in [(i, i) for i in range(N_PTS)] + [(100, 0), (200, 1)]:
        for pt_index, frame in ((3, DATA + pt * 0x2000), (7, DATA + pt * 0x2000 + 0x1000)):
            out.append(((pd_index << 21) | (pt_index << 12), frame))
    return out


@pytest.fixture
def small_bound(monkeypatch):
    monkeypatch.setattr(walk_mod, "_DECODED_PT_MAX", 4)
    decoded = []
    real = walk_mod.decode_table
    monkeypatch.setattr(walk_mod, "decode_table",
                        lambda data, rule: decoded.append(rule.name) or real(data, rule))
    return decoded


def test_evicted_page_tables_are_decoded_again_not_read_again(small_bound):
    src = MemorySource(_space())
    cpu = CpuState(cr3=PML4, cr4=CR4.PAE, efer=EFER.LMA | EFER.LME | EFER.NXE)
    walker = Walker(src, cpu)
    got = [(m.va, m.pa) for m in walker.iter_mappings(coalesce=False)]
    assert got == _expected()
    distinct = 3 + N_PTS
    assert walker.stats.tables_read == distinct and src.reads == distinct
    assert small_bound.count("pt") == N_PTS + 2      # PT 0 and PT 1 decoded a second time
    assert len(walker._pt_lru) <= 4


def test_same_walk_without_the_bound():
    src = MemorySource(_space())
    cpu = CpuState(cr3=PML4, cr4=CR4.PAE, efer=EFER.LMA | EFER.LME | EFER.NXE)
    walker = Walker(src, cpu)
    assert [(m.va, m.pa) for m in walker.iter_mappings(coalesce=False)] == _expected()
    assert walker.stats.tables_read == 3 + N_PTS
