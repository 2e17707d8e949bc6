"""Hypothesis fuzzing of the walker over random memory (issue 7): only XenpteError may escape.

A guest controls its page tables and its registers, so every input here is random: a few pages at
addresses drawn from a small pool (so that random entries often point at other random pages, PAE
PDPTs and self-maps included), random CR0/CR3/CR4/EFER, PV or HVM domain, Xen version, forced mode,
MAXPHYADDR, vendor, and sometimes an MFN -> PFN translator with holes. The walk goes through the
same path as the commands (:func:`gdb_xenpte.session.prepare`, the walker, then the JSON and text
renderers) under a small budget, so it ends quickly however hostile the tables.

``XENPTE_WALKER_FUZZ_EXAMPLES`` sets the number of examples (default 150, a few seconds). Long run::

    nice XENPTE_WALKER_FUZZ_EXAMPLES=100000 python3 -m pytest -q tests/unit/test_walker_fuzz.py \\
        --timeout 0 \\
        --hypothesis-show-statistics
"""

import os
import random
import struct

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gdb_xenpte import render
from gdb_xenpte.errors import XenpteError
from gdb_xenpte.session import Options, prepare
from gdb_xenpte.sources.base import VcpuRegs
from gdb_xenpte.sources.memory import MemorySource

EXAMPLES = int(os.environ.get("XENPTE_WALKER_FUZZ_EXAMPLES", "150"))
# Pages live in the low 64 MiB and at a few high addresses, so random frames hit them often.
POOL = [i << 12 for i in range(16)] + [0x200000, 0x3FF000, 0xFFFFF000, 1 << 32, (1 << 40) - 4096]
# Entry flag patterns worth over-sampling: present table entries, PS leaves, reserved/Xen bits.
FLAG_BITS = [0x1, 0x3, 0x7, 0x67, 0x87, 0xE7, 0x1E7, 1 << 63 | 0x7, 1 << 52 | 0x7, 1 << 62 | 0x7,
             0x7 | 0xF << 59, 0x7 | 1 << 51, 0x7 | 0x7FF << 52]


@st.composite
def entry(draw):
    """A random 64-bit entry, usually pointing at a pool page (or a random frame) with flags."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.integers(0, (1 << 64) - 1))
    frame = draw(st.sampled_from(POOL) if draw(st.integers(0, 4))
                 else st.integers(0, (1 << 52) - 1))
    flags = draw(st.sampled_from(FLAG_BITS) if draw(st.integers(0, 3)) else st.integers(0, 0xFFF))
    return (frame & ~0xFFF | flags) & ((1 << 64) - 1)


@st.composite
def page(draw):
    """A page: random bytes, or a table whose slots hold random entries (4- or 8-byte)."""
    kind = draw(st.sampled_from(["table8", "table8", "table4", "bytes", "fill", "dense"]))
    if kind == "bytes":
        return draw(st.binary(min_size=4096, max_size=4096))
    buf = bytearray(4096)
    if kind in ("fill", "dense"):  # the 512**n alias storm; a few entries repeated everywhere
        choice = draw(st.lists(entry(), min_size=1, max_size=1 if kind == "fill" else 4))
        pick = random.Random(draw(st.integers(0, 1 << 32))).choice  # cheap: one draw, not 512
        struct.pack_into("<512Q", buf, 0, *(pick(choice) for _ in range(512)))
        return bytes(buf)
    width = 8 if kind == "table8" else 4
    for slot, raw in draw(st.lists(st.tuples(st.integers(0, 4096 // width - 1), entry()),
                                   max_size=12)):
        struct.pack_into("<Q" if width == 8 else "<I", buf, slot * width,
                         raw if width == 8 else raw & 0xFFFFFFFF)
    return bytes(buf)


cr4 = st.one_of(st.sampled_from([0x20, 0x30, 0x1020, 0x3506F0, 0x751EF0, 0x10, 0x6F0]),
                st.integers(0, (1 << 32) - 1))
efer = st.one_of(st.sampled_from([0xD00, 0x500, 0x800, 0]), st.none(), st.integers(0, 0xFFFF))
cr0 = st.one_of(st.just(0x80050033), st.integers(0, (1 << 32) - 1).map(lambda v: v | 1 << 31),
                st.integers(0, (1 << 32) - 1))


@st.composite
def space(draw):
    """Pages, and a CR3 that usually names one of them (low bits random: PCID, PWT/PCD, LAM)."""
    pages = draw(st.dictionaries(st.sampled_from(POOL), page(), min_size=1, max_size=6))
    if draw(st.integers(0, 4)):
        cr3 = draw(st.sampled_from(sorted(pages))) | draw(st.integers(0, 0xFFF))
        if draw(st.booleans()):
            cr3 |= draw(st.integers(0, 7)) << 61
    else:
        cr3 = draw(st.integers(0, (1 << 64) - 1))
    return pages, cr3


@settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 150,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.large_base_example])
@given(mem=space(), cr0=cr0, cr4=cr4, efer=efer,
       cs=st.sampled_from([None, 0x10, 0xE033, 0xE019, 0xE008]),
       domain=st.sampled_from([None, "hvm", "pv64", "pv32"]),
       xen=st.sampled_from([None, "3.0", "4.6", "4.11", "4.17"]),
       mode=st.sampled_from([None, None, "32bit", "pae", "4level", "5level", "pv32"]),
       maxphyaddr=st.sampled_from([None, 36, 46, 52]),
       vendor=st.sampled_from([None, "amd"]),
       m2p=st.one_of(st.none(), st.none(), st.dictionaries(
           st.sampled_from([a >> 12 for a in POOL]) | st.integers(0, 1 << 40),
           st.sampled_from([a >> 12 for a in POOL]) | st.integers(0, 1 << 40), max_size=8)),
       coalesce=st.booleans(), phys=st.booleans(),
       vas=st.lists(st.integers(0, (1 << 64) - 1), max_size=3))
def test_random_memory_walk_raises_only_our_errors(mem, cr0, cr4, efer, cs, domain, xen, mode,
                                                   maxphyaddr, vendor, m2p, coalesce, phys, vas):
    pages, cr3 = mem
    # PV frames: identity for the pool (so walks go deep) with random overrides and holes.
    translate = None if m2p is None else {**{a >> 12: a >> 12 for a in POOL}, **m2p}.get
    regs = VcpuRegs(0, cr0=cr0, cr3=cr3, cr4=cr4, efer=efer, cs=cs)
    src = MemorySource(pages, name="fuzz", translate_frame=translate, vcpus=[regs])
    try:
        session = prepare(src, Options(domain=domain, xen=xen, mode=mode, maxphyaddr=maxphyaddr,
                                       vendor=vendor))
        walker = session.walker(entry_budget=3000, time_budget=2.0)
        render.header_lines(session.header())
        kept = []
        for m in walker.iter_mappings(coalesce=coalesce, phys=phys):
            render.dumps(render.mapping_record(m))
            if len(kept) < 50:
                kept.append(m)
        render.mapping_table(kept)
        assert walker.stats.tables_read == len({k for k in walker._pages})
        for va in vas:
            trace = walker.trace(va)
            render.dumps(render.trace_record(trace))
            render.trace_text(trace)
        # Statistics only (--hypothesis-show-statistics): how deep the random inputs got.
        event(f"walked: {'budget hit' if walker.stats.budget_hit else 'complete'}, "
              f"{'some' if walker.stats.leaves else 'no'} leaves")
    except XenpteError as err:
        assert str(err)  # one clear line, never empty
        event(f"refused: {type(err).__name__}")
