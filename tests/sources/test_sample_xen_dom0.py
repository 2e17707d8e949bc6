"""The bundled README sample: a trimmed QEMU ELF dump of Xen 4.17 with a 64-bit PV dom0.

Made by ``python3 tests/targets/make_sample.py`` from a real boot (see that script); these tests
check that the file walks as dom0's address space should look, without booting anything.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from gdb_xenpte.errors import UnreadableMemory
from gdb_xenpte.session import Options, prepare
from gdb_xenpte.sources.qemu_elf import QemuElfSource

SAMPLE = Path(__file__).resolve().parents[2] / "gdb_xenpte" / "data" / "sample-xen-dom0.elf"
XEN_SLOTS = range(256, 272)


@pytest.fixture(scope="module")
def sample_walk():
    """The sample walked as dom0 (pv64, Xen 4.17): (mapping, L4 slot) pairs, equal pages merged."""
    with QemuElfSource(str(SAMPLE)) as source:
        walker = prepare(source, Options(domain="pv64", xen="4.17")).walker()
        pages = [(m, m.entries[0].index) for m in walker.iter_mappings(coalesce=True)]
        yield source, walker, pages


def test_sample_is_small_and_holds_only_tables(sample_walk):
    source, walker, _pages = sample_walk
    assert SAMPLE.stat().st_size < 2 * 1024 * 1024
    kept = sum(end - start for start, end in source.ranges())
    assert kept == walker.stats.tables_read * 4096  # exactly the tables a walk reads
    assert not walker.stats.unreadable


def test_sample_dom0_kernel_pages_carry_bit52_and_user(sample_walk):
    _source, _walker, pages = sample_walk
    regions = Counter()
    for m, slot in pages:
        if slot >= 272:
            regions["kernel"] += m.count
            assert "_PAGE_GUEST_KERNEL" in m.xen_bits and "US" in m.flags, (hex(m.va), m)
            assert "G" not in m.flags, hex(m.va)
        elif slot in XEN_SLOTS:
            regions["xen"] += m.count
            assert any(n.startswith(f"Xen L4 slot {slot}:") for n in m.notes), hex(m.va)
    assert regions["kernel"] > 10_000 and regions["xen"] > 0, regions


def test_sample_data_pages_are_not_in_the_dump(sample_walk):
    source, _walker, pages = sample_walk
    kernel_page = next(m for m, slot in pages if slot == 511)
    with pytest.raises(UnreadableMemory):
        source.read(kernel_page.pa, 8)
