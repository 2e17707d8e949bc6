"""Generators of hostile page tables (issue 7): what a misbehaving guest can put in its tables.

Each returns ``(pages, cr3)`` for a 4-level space (PAE where named), built from raw entries so that
no engine code is involved in making them. Hostile *files* (issue 19: files that shrink, lying size
fields, record storms, process cores) are written with the dump corpus in tests/sources/corpus.py
and writers.py, the one place the fuzzers and tests/sources/test_hostile_files.py draw from.
"""

import random
import struct

P, RW, US, PS = 1, 2, 4, 0x80
BASE = 0x200000


def _page(entries):
    buf = bytearray(4096)
    for i, raw in entries:
        struct.pack_into("<Q", buf, 8 * i, raw)
    return bytes(buf)


def self_reference(level_depth: int):
    """A 4-level space with one real leaf, plus an entry at ``level_depth`` (0 = PML4) that points
    back at its own table (recursive maps: Windows' self-map, Xen's linear slot)."""
    pml4, pdpt, pd, pt = BASE, BASE + 0x1000, BASE + 0x2000, BASE + 0x3000
    tables = {pml4: [(0, pdpt | P | RW)], pdpt: [(0, pd | P | RW)], pd: [(0, pt | P | RW)],
              pt: [(1, 0x9000 | P | RW)]}
    own = (pml4, pdpt, pd, pt)[level_depth]
    tables[own].append((77, own | P | RW))
    return {a: _page(e) for a, e in tables.items()}, pml4


def alias_storm(fanout: int = 512):
    """Every table's first ``fanout`` entries point at one next-level table; the PT maps one page
    ``fanout`` times: fanout**4 aliases of a single frame."""
    pml4, pdpt, pd, pt = BASE, BASE + 0x1000, BASE + 0x2000, BASE + 0x3000
    pages = {
        pml4: _page([(i, pdpt | P | RW) for i in range(fanout)]),
        pdpt: _page([(i, pd | P | RW) for i in range(fanout)]),
        pd: _page([(i, pt | P | RW) for i in range(fanout)]),
        pt: _page([(i, 0x9000 | P | RW) for i in range(fanout)]),
    }
    return pages, pml4


def outside_ram():
    """Tables pointing outside the image (unbacked addresses, a typical MMIO hole, past 4 GiB)."""
    pml4, pdpt = BASE, BASE + 0x1000
    pages = {
        pml4: _page([(0, pdpt | P | RW), (1, 0xFEE00000 | P | RW), (2, (1 << 40) | P | RW)]),
        pdpt: _page([(3, 0xC0000000 | P | RW)]),
    }
    return pages, pml4


def reserved_everywhere(seed: int = 1, per_table: int = 48):
    """Present entries with random flag and software bits, each also setting bit 51 (reserved
    under a MAXPHYADDR below 52): every path carries a reserved bit."""
    rnd = random.Random(seed)
    addrs = [BASE + i * 0x1000 for i in range(4)]
    pages = {}
    for a in addrs:
        pages[a] = _page([(rnd.randrange(512), rnd.choice(addrs) | (1 << 51) | P
                           | rnd.getrandbits(64) & ~0x000FFFFFFFFFF000)
                          for _ in range(per_table)])
    return pages, addrs[0]


def pae_pdpte_reserved():
    """PAE: PDPTEs with their reserved bits (2:1, 8:5, 63) set, one clean."""
    pdpt, pd = BASE, BASE + 0x1000
    pages = {
        pdpt: _page([(0, pd | P), (1, pd | P | 0x20), (2, pd | P | (1 << 63)), (3, pd | P)]),
        pd: _page([(0, 0x400000 | P | RW | PS)]),
    }
    return pages, pdpt
