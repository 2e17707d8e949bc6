"""``render.mapping_json`` is the fast path of ``--json``: it must give exactly the bytes of
``dumps(mapping_record(m))`` for every record, whatever the walker shared between records."""

from __future__ import annotations

from pathlib import Path

import pytest

import hostile
from gdb_xenpte import render
from gdb_xenpte.arch import CR4, EFER
from gdb_xenpte.cpu import CpuState
from gdb_xenpte.model import PageBatch
from gdb_xenpte.session import Options, prepare
from gdb_xenpte.sources.memory import MemorySource
from gdb_xenpte.sources.qemu_elf import QemuElfSource
from gdb_xenpte.verdicts import Judge
from gdb_xenpte.walk import Walker

SAMPLE = Path(__file__).resolve().parents[2] / "gdb_xenpte" / "data" / "sample-xen-dom0.elf"


@pytest.mark.parametrize("opts, coalesce", [
    (Options(domain="pv64", xen="4.17"), True),
    (Options(domain="pv64", xen="4.17", xen_debug=True), False),
    (Options(domain="hvm"), True),
])
def test_sample_records_are_byte_identical(opts, coalesce):
    with QemuElfSource(str(SAMPLE)) as source:
        walker = prepare(source, opts).walker()
        n = 0
        for m in walker.iter_mappings(coalesce=coalesce):
            assert render.mapping_json(m) == render.dumps(render.mapping_record(m)), hex(m.va)
            n += 1
    assert n > 60_000  # the whole space, Xen slots and not-in-dump records included


@pytest.mark.parametrize("space", [hostile.outside_ram, hostile.reserved_everywhere,
                                   lambda: hostile.alias_storm(fanout=8)])
def test_hostile_records_are_byte_identical(space):
    """Unreadable tables, reserved bits (rsvd lists, stop records) and aliases."""
    pages, cr3 = space()
    cpu = CpuState(cr3=cr3, cr4=CR4.PAE | CR4.SMAP, efer=EFER.LMA | EFER.LME | EFER.NXE,
                   maxphyaddr=46)
    walker = Walker(MemorySource(pages), cpu, judge=Judge(cpu.cr0, cpu.cr4, 0),
                    entry_budget=20_000)
    records = list(walker.iter_mappings(coalesce=False))
    assert records
    for m in records:
        assert render.mapping_json(m) == render.dumps(render.mapping_record(m)), hex(m.va)


def test_sample_page_batches_with_mixed_accessed_dirty_are_byte_identical():
    """Issue 15: per-page JSON made in bulk (``render.batch_lines``, one template per A/D state)
    gives the bytes of one ``dumps(mapping_record)`` per page, where a table's leaves differ in
    A and D (dom0's direct map in the sample), also when a limit cuts a batch."""
    start, end = 0xFFFF888000000000, 0xFFFF888008000000
    with QemuElfSource(str(SAMPLE)) as source:
        walker = prepare(source, Options(domain="pv64", xen="4.17")).walker()
        expected = [render.dumps(render.mapping_record(m))
                    for m in walker.iter_mappings(start, end, coalesce=False)]
        batches = list(walker.iter_mappings(start, end, coalesce=False, batches=True))
    assert any(isinstance(b, PageBatch) and len(b.protos) > 1 for b in batches)
    got = []
    for b in batches:
        if isinstance(b, PageBatch):
            got += render.batch_lines(b)
            assert render.batch_lines(b, 9) == got[len(got) - b.n:][:9]
        else:
            got.append(render.mapping_json(b))
    assert got == expected and len(got) > 10_000
