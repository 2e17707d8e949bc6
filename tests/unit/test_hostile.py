"""Hostile tables (issue 7): every walk finishes within its budget, says what was cut short and
why, keeps memory flat, and drops nothing below the budget."""

import time
import tracemalloc

import pytest

import hostile
from gdb_xenpte.arch import CR4, EFER
from gdb_xenpte.cpu import CpuState
from gdb_xenpte.sources.memory import MemorySource
from gdb_xenpte.walk import Walker

LM = EFER.LME | EFER.LMA | EFER.NXE


def walker(pages, cr3, mode_cr4=CR4.PAE, efer=LM, **kw):
    return Walker(MemorySource(pages), CpuState(cr3=cr3, cr4=mode_cr4, efer=efer), **kw)


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_self_reference_at_each_level_is_walked_and_bounded(depth):
    pages, cr3 = hostile.self_reference(depth)
    w = walker(pages, cr3, entry_budget=100_000)
    maps = list(w.iter_mappings(coalesce=False))
    # The real leaf is always there, and the recursive entry yields aliases, not silence.
    assert any(m.va == 0x1000 and m.pa == 0x9000 for m in maps)
    assert len(maps) > 1
    assert w.stats.tables_read == 4  # each table page read once


def test_alias_storm_below_budget_drops_nothing():
    pages, cr3 = hostile.alias_storm(fanout=8)
    w = walker(pages, cr3)
    total = sum(m.count for m in w.iter_mappings())
    assert total == 8 ** 4 and w.stats.budget_hit is None


def test_alias_storm_hits_entry_budget_and_says_where():
    pages, cr3 = hostile.alias_storm()
    w = walker(pages, cr3, entry_budget=300_000)
    total = sum(m.count for m in w.iter_mappings(coalesce=False))
    assert w.stats.budget_hit.startswith("entry budget of 300000 entries reached near VA 0x")
    assert 0 < total <= 300_000 + 512


def test_alias_storm_hits_time_budget():
    pages, cr3 = hostile.alias_storm()
    w = walker(pages, cr3, time_budget=0.2)
    t0 = time.monotonic()
    for _ in w.iter_mappings(coalesce=False):
        pass
    assert time.monotonic() - t0 < 5
    assert w.stats.budget_hit.startswith("time budget of 0.2 s reached")


def test_alias_storm_memory_stays_flat():
    pages, cr3 = hostile.alias_storm()
    tracemalloc.start()
    w = walker(pages, cr3, entry_budget=120_000)
    n = 0
    for _ in w.iter_mappings(coalesce=False):
        n += 1
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n > 100_000
    assert peak < 20 * 2**20, peak  # records stream: peak independent of the count


def test_tables_outside_ram_are_reported_per_entry():
    pages, cr3 = hostile.outside_ram()
    w = walker(pages, cr3)
    recs = list(w.iter_mappings())
    assert [(r.kind, r.level) for r in recs] == [("unreadable", "pdpt"), ("unreadable", "pml4"),
                                                 ("unreadable", "pml4")]
    assert "0xfee00000" in recs[1].notes[-1] and "0x10000000000" in recs[2].notes[-1]
    assert len(w.stats.unreadable) == 3


def test_reserved_bits_everywhere():
    pages, cr3 = hostile.reserved_everywhere()
    w = Walker(MemorySource(pages), CpuState(cr3=cr3, cr4=CR4.PAE, efer=LM, maxphyaddr=46),
               entry_budget=200_000)
    recs = list(w.iter_mappings())
    pages_ = [r for r in recs if r.kind == "page"]
    assert pages_ and all(r.rsvd for r in pages_)


def test_pae_pdpte_reserved_bits():
    pages, cr3 = hostile.pae_pdpte_reserved()
    w = walker(pages, cr3, efer=EFER.NXE)
    recs = {r.va: r for r in w.iter_mappings(coalesce=False)}
    assert not recs[0].rsvd
    assert "bit 5" in recs[1 << 30].rsvd[0]
    assert "bit 63" in recs[2 << 30].rsvd[0]
    assert not recs[3 << 30].rsvd
