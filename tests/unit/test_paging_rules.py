"""Paging-mode selection, entry formats and reserved bits, checked against the Intel SDM.

Section and table numbers refer to Intel SDM Vol. 3A, chapter 4 ("Paging"), order no. 253668-08x.
Each test also names the prior-art pitfall (prior-art.md §9) it guards against, where there is one.
"""

import pytest

from builder import A, BIT52, BIT62, D, G, NX, P, PAT_4K, PAT_LARGE, PCD, PS, PWT, RW, US, Builder
from gdb_xenpte.arch import CR0, CR4, EFER
from gdb_xenpte.cpu import CpuState, paging_mode
from gdb_xenpte.errors import OptionError
from gdb_xenpte.walk import Walker

LM = EFER.LME | EFER.LMA | EFER.NXE
KiB4, MiB2, MiB4, GiB1 = 4096, 1 << 21, 1 << 22, 1 << 30


def walk_all(b, cpu, **kw):
    w = Walker(b.source(), cpu, **kw)
    return w, list(w.iter_mappings(coalesce=False))


# -- mode selection (§4.1.1, Table 4-1) --------------------------------------------------------

def test_paging_off_is_an_error():
    with pytest.raises(OptionError, match="paging is disabled"):
        paging_mode(CpuState(cr0=CR0.PE, cr4=CR4.PAE))


@pytest.mark.parametrize("cr4, efer, expect", [
    (0, 0, "32-bit"),
    (CR4.PSE, 0, "32-bit"),
    (CR4.PAE, EFER.NXE, "PAE"),
    (CR4.PAE, LM, "4-level"),
    (CR4.PAE | CR4.LA57, LM, "5-level"),
    # Pitfall: gdb-pt-dump tests LME. LME=1 with LMA=0 (paging not yet enabled in long mode when
    # the registers were sampled) is not IA-32e paging: LMA decides (§4.1.1, §9.8.5).
    (CR4.PAE, EFER.LME | EFER.NXE, "PAE"),
])
def test_mode_from_registers(cr4, efer, expect):
    assert paging_mode(CpuState(cr4=cr4, efer=efer)).mode.name == expect


def test_unknown_efer_is_inferred_and_reported():
    choice = paging_mode(CpuState(cr4=CR4.PAE, efer=None, long_mode=True))
    assert choice.mode.name == "4-level" and choice.nxe
    assert any("EFER unknown" in n and "code-segment" in n for n in choice.notes)
    choice = paging_mode(CpuState(cr4=CR4.PAE, efer=None, long_mode=False))
    assert choice.mode.name == "PAE"


# -- CR3 (§4.5.2 Table 4-12/4-13, §4.4.1 Table 4-7) -------------------------------------------

def test_cr3_pcid_and_high_control_bits_are_not_address_bits():
    """Pitfalls: CR3 low bits are a PCID under CR4.PCIDE; bit 63 (no-flush) and the LAM bits
    62:61 are not address bits."""
    b = Builder("4level")
    b.map(0x1000, 0x5000, flags=P | RW)
    cr3 = b.cr3 | 0x123 | (1 << 63) | (3 << 61)
    cpu = CpuState(cr3=cr3, cr4=CR4.PAE | CR4.PCIDE, efer=LM)
    _, maps = walk_all(b, cpu)
    assert [(m.va, m.pa) for m in maps] == [(0x1000, 0x5000)]


def test_pae_pdpt_is_32_byte_aligned():
    """Pitfall: gdb-pt-dump masks CR3 to 4 KiB in PAE; the PDPT is 32-byte aligned (§4.4.1)."""
    b = Builder("pae")
    b.map(0x40001000, 0x7000, flags=P | RW)
    # Move the four PDPTEs to offset 0x60 inside the same page and point CR3 there.
    page = b.pages[b.root]
    page[0x60:0x80] = page[0:0x20]
    page[0:0x20] = bytes(0x20)
    cpu = CpuState(cr3=b.root + 0x60, cr4=CR4.PAE, efer=EFER.NXE)
    _, maps = walk_all(b, cpu)
    assert [(m.va, m.pa) for m in maps] == [(0x40001000, 0x7000)]


# -- 32-bit paging (§4.3, Tables 4-4..4-6) ----------------------------------------------------

def test_32bit_4mib_page_with_pse36_high_bits_and_pat_bit_12():
    b = Builder("32bit")
    pa = (0x3 << 32) | 0x00C00000  # PSE-36: PA bits 39:32 live in PDE bits 20:13
    b.map(0x80000000, pa, size=MiB4, flags=P | RW | PAT_LARGE)
    cpu = CpuState(cr4=CR4.PSE, cr3=b.cr3, maxphyaddr=40)
    _, maps = walk_all(b, cpu)
    (m,) = maps
    assert (m.va, m.pa, m.page_size, m.level) == (0x80000000, pa, MiB4, "pd")
    assert "PAT" in m.flags and "PS" in m.flags and m.pkey is None
    # PAT=1, PCD=0, PWT=0 selects PAT entry 4: WB in the power-on PAT (SDM Table 11-12).
    assert m.memtype == "WB"


def test_32bit_ps_is_ignored_without_cr4_pse():
    """With CR4.PSE=0 a PDE always references a page table (§4.3, Table 4-5 note)."""
    b = Builder("32bit")
    b.map(0x00400000, 0x9000, flags=P | RW)  # creates a PT under PDE[1]
    b.update(0x00400000, "pd", set_bits=PS)
    _, maps = walk_all(b, CpuState(cr4=0, cr3=b.cr3))
    assert [(m.va, m.pa, m.page_size) for m in maps] == [(0x400000, 0x9000, KiB4)]
    _, maps = walk_all(b, CpuState(cr4=CR4.PSE, cr3=b.cr3))
    assert maps[0].page_size == MiB4


def test_32bit_has_no_xd_and_no_reserved_bits_in_4k_entries():
    b = Builder("32bit")
    b.map(0x1000, 0xFFFFF000, flags=P | RW | US | 0xE00)
    _, (m,) = walk_all(b, CpuState(cr3=b.cr3))
    assert not m.rsvd and m.effective.exec and "NX" not in m.flags


# -- PAE (§4.4, Tables 4-8..4-11) -------------------------------------------------------------

def test_pae_pdpte_reserved_bits():
    """PAE PDPTEs have no R/W or U/S: bits 2:1 and 8:5 are reserved (Table 4-8)."""
    b = Builder("pae")
    b.map(0x1000, 0x2000, flags=P | RW | US)
    b.update(0x1000, "pdpt", set_bits=RW)
    _, (m,) = walk_all(b, CpuState(cr4=CR4.PAE, cr3=b.cr3, efer=EFER.NXE))
    assert m.rsvd and "pdpt[0]: bit 1 reserved" in m.rsvd[0]


def test_pae_pdpte_contributes_no_rights():
    b = Builder("pae")
    b.map(0x1000, 0x2000, flags=P | RW | US)
    _, (m,) = walk_all(b, CpuState(cr4=CR4.PAE, cr3=b.cr3, efer=EFER.NXE))
    assert m.effective.user and m.effective.write and not m.rsvd


def test_pae_bits_62_to_maxphyaddr_are_reserved():
    """Unlike IA-32e entries, PAE PDEs/PTEs reserve bits 62:MAXPHYADDR (Tables 4-9..4-11)."""
    b = Builder("pae")
    b.map(0x1000, 0x2000, flags=P | RW, extra=BIT52)
    _, (m,) = walk_all(b, CpuState(cr4=CR4.PAE, cr3=b.cr3, efer=EFER.NXE, maxphyaddr=36))
    assert m.rsvd and m.pkey is None


# -- 4/5-level (§4.5, Tables 4-14..4-20) ------------------------------------------------------

def test_ps_in_pml4e_is_a_reserved_bit_not_a_page():
    b = Builder("4level")
    b.set(0x0000008000000000, "pml4", 0x40000000 | P | RW | PS)
    cpu = CpuState(cr4=CR4.PAE, cr3=b.cr3, efer=LM)
    w, maps = walk_all(b, cpu)
    (m,) = maps
    assert m.kind == "rsvd" and m.size == 1 << 39 and m.va == 1 << 39
    assert w.trace(0x8000001000).stop == "reserved bit"


def test_large_page_low_reserved_bits_and_pat_bit_12():
    """2-MiB PDEs reserve bits 20:13 (Table 4-18); bit 12 is PAT there, bit 7 is PS."""
    b = Builder("4level")
    b.map(0x200000, 0x400000, size=MiB2, flags=P | RW | PAT_LARGE | PWT)
    b.map(0x400000, 0x600000 | (1 << 13), size=MiB2, flags=P | RW)
    cpu = CpuState(cr4=CR4.PAE, cr3=b.cr3, efer=LM)
    _, (m1, m2) = walk_all(b, cpu)
    assert "PAT" in m1.flags and "PS" in m1.flags and not m1.rsvd
    # PAT index 5 (PAT=1,PCD=0,PWT=1): WT in the power-on PAT.
    assert m1.memtype == "WT"
    assert m2.rsvd and "bit 13" in m2.rsvd[0]


def test_bit_7_of_a_pte_is_pat_not_ps():
    """Pitfall (QEMU strips it; mycelium #547): bit 7 of a 4-KiB PTE is PAT (Table 4-20)."""
    b = Builder("4level")
    b.map(0x1000, 0x2000, flags=P | RW | PAT_4K | PCD)
    _, (m,) = walk_all(b, CpuState(cr4=CR4.PAE, cr3=b.cr3, efer=LM))
    assert "PAT" in m.flags and "PS" not in m.flags and m.page_size == KiB4
    assert m.memtype == "UC-" or m.memtype == "UC"  # PAT index 6: UC- at power-on


def test_xen_pat_selects_documented_types():
    """Xen's PAT 0x0000050100070406: PAT4 WC, PAT5 WP (xen-pte-abi.md §2, XEN_MSR_PAT)."""
    b = Builder("4level")
    b.map(0x1000, 0x2000, flags=P | PAT_4K)
    b.map(0x2000, 0x3000, flags=P | PAT_4K | PWT)
    cpu = CpuState(cr4=CR4.PAE, cr3=b.cr3, efer=LM, pat=0x0000050100070406)
    _, (m1, m2) = walk_all(b, cpu)
    assert (m1.memtype, m2.memtype) == ("WC", "WP")


def test_maxphyaddr_reserved_bits():
    """Bits MAXPHYADDR..51 are reserved (pitfall: pwndbg masks with VA bits)."""
    b = Builder("4level")
    b.map(0x1000, (1 << 45) | 0x2000, flags=P | RW)
    cpu = CpuState(cr4=CR4.PAE, cr3=b.cr3, efer=LM, maxphyaddr=40)
    _, (m,) = walk_all(b, cpu)
    assert m.rsvd and "bit 45" in m.rsvd[0]
    _, (m,) = walk_all(b, cpu.with_(maxphyaddr=46))
    assert not m.rsvd and m.pa == (1 << 45) | 0x2000


def test_xd_is_reserved_when_nxe_clear_and_ored_when_set():
    b = Builder("4level")
    b.map(0x1000, 0x2000, flags=P | RW)
    b.update(0x1000, "pd", set_bits=NX)
    cpu = CpuState(cr4=CR4.PAE, cr3=b.cr3, efer=EFER.LME | EFER.LMA | EFER.NXE)
    _, (m,) = walk_all(b, cpu)
    assert not m.effective.exec and not m.rsvd
    _, (m,) = walk_all(b, cpu.with_(efer=EFER.LME | EFER.LMA))
    assert m.rsvd and "pd[0]: bit 63 reserved" in m.rsvd[0]


def test_rights_are_anded_across_levels():
    """Pitfall (gdb-pt-dump, pwndbg): rights are not leaf-only. U/S=0 or R/W=0 at any level
    makes the address supervisor / read-only (§4.6.1)."""
    for level in ("pml4", "pdpt", "pd", "pt"):
        b = Builder("4level")
        b.map(0x1000, 0x2000, flags=P | RW | US)
        b.update(0x1000, level, clear_bits=US)
        b.map(0x40000000, 0x3000, flags=P | RW | US)
        b.update(0x40000000, level if level != "pml4" else "pdpt", clear_bits=RW)
        _, maps = walk_all(b, CpuState(cr4=CR4.PAE, cr3=b.cr3, efer=LM))
        by_va = {m.va: m for m in maps}
        assert not by_va[0x1000].effective.user, level
        assert not by_va[0x40000000].effective.write, level


@pytest.mark.parametrize("level", ["pml4", "pdpt"])
def test_amd_reserves_bit_8_in_non_leaf_pml4e_and_pdpe(level):
    """AMD APM Vol. 2 §5.3.3: bit 8 of non-leaf PML4Es and PDPEs is MBZ; Intel ignores it
    (SDM Tables 4-15, 4-17). Pitfall: littlekernel PR #298. In a leaf it is G on both."""
    b = Builder("4level")
    b.map(0x1000, 0x2000, flags=P | RW)
    b.update(0x1000, level, set_bits=G)
    b.map(0x8040000000, 0x40000000, size=GiB1, flags=P | RW | G)  # under another PML4E
    cpu = CpuState(cr4=CR4.PAE, cr3=b.cr3, efer=LM)
    _, (m, big) = walk_all(b, cpu)
    assert not m.rsvd
    _, (m, big) = walk_all(b, cpu.with_(vendor="amd"))
    assert m.rsvd and f"{level}[0]: bit 8 reserved" in m.rsvd[0]
    assert not big.rsvd and "G" in big.flags


def test_5level_canonical_addresses():
    b = Builder("5level")
    va = 0xFF11000000001000  # upper half of a 57-bit space
    b.map(va, 0x2000, flags=P | RW)
    cpu = CpuState(cr4=CR4.PAE | CR4.LA57, cr3=b.cr3, efer=LM)
    w, (m,) = walk_all(b, cpu)
    assert m.va == va and m.level == "pt" and len(m.entries) == 5
    assert w.trace(va).mapping.pa == 0x2000
    assert w.trace(0x0100000000000000).stop == "non-canonical"  # bit 56 not extended


def test_pkey_field_from_leaf():
    b = Builder("4level")
    b.map(0x1000, 0x2000, flags=P | RW | US, pkey=9)
    _, (m,) = walk_all(b, CpuState(cr4=CR4.PAE, cr3=b.cr3, efer=LM))
    assert m.pkey == 9


# -- walker behaviour ---------------------------------------------------------------------------

def test_shared_subtree_is_read_once_and_never_dropped():
    """Two PML4 slots referencing one PDPT: both VA ranges are reported, the table read once."""
    b = Builder("4level")
    b.map(0x1000, 0x2000, flags=P | RW)
    b.map(0x2000, 0x3000, flags=P | RW)
    pml4 = b.pages[b.root]
    pml4[8 * 5:8 * 6] = pml4[0:8]
    w, maps = walk_all(b, CpuState(cr4=CR4.PAE, cr3=b.cr3, efer=LM))
    assert [m.va for m in maps] == [0x1000, 0x2000, (5 << 39) + 0x1000, (5 << 39) + 0x2000]
    assert w.stats.tables_read == 4 and w.stats.leaves == 4


def test_self_map_is_bounded_by_the_budget_and_says_so():
    """A recursive PML4 slot (Windows' self-map, Xen's linear slot) aliases every table at every
    level; the budget bounds it and the stats say where it stopped."""
    b = Builder("4level")
    b.map(0x1000, 0x2000, flags=P | RW)
    b.set(0xFFFFFF0000000000, "pml4", b.root | P | RW)  # slot 510 -> the PML4 itself
    w = Walker(b.source(), CpuState(cr4=CR4.PAE, cr3=b.cr3, efer=LM), entry_budget=1000)
    maps = list(w.iter_mappings(coalesce=False))
    assert w.stats.budget_hit is None or "budget" in w.stats.budget_hit
    # Through slot 510 each table is seen one level lower: PD[0] read as a PTE maps the PT page,
    # and 510/510/510/510 maps the PML4 page itself (the classic self-map address).
    by_va = {m.va: m for m in maps}
    assert by_va[0x1000].pa == 0x2000
    assert by_va[0xFFFFFF0000000000].level == "pt"
    assert by_va[0xFFFFFF7FBFDFE000].pa == b.root
    assert w.stats.tables_read == 4


def test_entry_budget_stops_a_hostile_alias_storm():
    b = Builder("4level")
    pt = b.alloc()
    for i in range(512):  # one PT whose 512 entries map one page
        b.pages[pt][8 * i:8 * i + 8] = (0x9000 | P | RW).to_bytes(8, "little")
    pd = b.alloc()
    pdpt = b.alloc()
    for i in range(512):  # every PD/PDPT/PML4 entry points at the same next table
        b.pages[pd][8 * i:8 * i + 8] = (pt | P | RW).to_bytes(8, "little")
        b.pages[pdpt][8 * i:8 * i + 8] = (pd | P | RW).to_bytes(8, "little")
        b.pages[b.root][8 * i:8 * i + 8] = (pdpt | P | RW).to_bytes(8, "little")
    # One record per page: the work is per page, and the budget stops it.
    w = Walker(b.source(), CpuState(cr4=CR4.PAE, cr3=b.cr3, efer=LM), entry_budget=200_000)
    n = sum(m.count for m in w.iter_mappings(coalesce=False))
    assert w.stats.budget_hit and "entry budget" in w.stats.budget_hit
    assert 100_000 <= n <= 200_512 and w.stats.tables_read == 4
    # Coalesced, each table is walked once and its copies replayed: the whole space (512**4
    # aliases of one page, every one counted) well within the same budget, as one record.
    w = Walker(b.source(), CpuState(cr4=CR4.PAE, cr3=b.cr3, efer=LM), entry_budget=200_000)
    recs = list(w.iter_mappings())
    assert w.stats.budget_hit is None and w.stats.entries < 200_000
    assert [(r.va, r.pa, r.count) for r in recs] == [(0, 0x9000, 512 ** 4)]


def test_unreadable_table_is_reported_per_entry():
    b = Builder("4level")
    b.map(0x1000, 0x2000, flags=P | RW)
    b.set(1 << 39, "pml4", 0x7777000 | P | RW)  # table outside the image
    w, maps = walk_all(b, CpuState(cr4=CR4.PAE, cr3=b.cr3, efer=LM))
    kinds = [(m.kind, m.va) for m in maps]
    assert kinds == [("page", 0x1000), ("unreadable", 1 << 39)]
    assert "0x7777000" in maps[1].notes[-1]
    assert w.stats.unreadable and w.stats.unreadable[0][0] == 0x7777000


def test_coalescing_merges_equal_contiguous_leaves_only():
    b = Builder("4level")
    for i in range(8):
        b.map(0x10000 + i * KiB4, 0x80000 + i * KiB4, flags=P | RW | A | (D if i % 2 else 0))
    b.map(0x18000, 0x90000, flags=P)  # read-only: breaks the run
    b.map(0x19000, 0x91000, flags=P | RW)
    w = Walker(b.source(), CpuState(cr4=CR4.PAE, cr3=b.cr3, efer=LM))
    maps = list(w.iter_mappings())
    assert [(m.va, m.count) for m in maps] == [(0x10000, 8), (0x18000, 1), (0x19000, 1)]
    assert "A" in maps[0].flags and "D" not in maps[0].flags  # D not on every page
    maps = list(w.iter_mappings(phys=True))
    assert [(m.va, m.count) for m in maps][0] == (0x10000, 8)


def test_coalescing_with_phys_requires_pa_contiguity():
    b = Builder("4level")
    b.map(0x1000, 0x5000, flags=P | RW)
    b.map(0x2000, 0x9000, flags=P | RW)
    w = Walker(b.source(), CpuState(cr4=CR4.PAE, cr3=b.cr3, efer=LM))
    assert [m.count for m in w.iter_mappings()] == [2]
    assert [m.count for m in w.iter_mappings(phys=True)] == [1, 1]


def test_ranged_walk():
    b = Builder("4level")
    for va in (0x1000, 0x40000000, 0xFFFF888000000000, 0xFFFFFFFF81000000):
        b.map(va, 0x2000, flags=P | RW)
    w = Walker(b.source(), CpuState(cr4=CR4.PAE, cr3=b.cr3, efer=LM))
    got = [m.va for m in w.iter_mappings(0xFFFF800000000000, 0xFFFFFFFF80000000)]
    assert got == [0xFFFF888000000000]
    got = [m.va for m in w.iter_mappings(0x2000, 0x40001000)]
    assert got == [0x40000000]


def test_translated_frames_for_pv_dumps():
    """PV tables hold MFNs; the walker translates every frame through the source (MFN->PFN)."""
    mfn_of = lambda pfn: pfn + 0x1000
    b = Builder("4level", frame_of=mfn_of)
    b.map(0xFFFF880000001000, 0x5000, flags=P | RW | US, extra=BIT52)
    b.map(0x2000, 0xABC000, flags=P | RW)  # PFN 0xABC: no page in the image, still translates
    pfn_of = {mfn_of(pfn >> 12): pfn >> 12 for pfn in b.pages}
    pfn_of[mfn_of(5)] = 5
    src = b.source(translate=pfn_of.get)
    w = Walker(src, CpuState(cr4=CR4.PAE, cr3=b.root, efer=LM), root=b.root)
    maps = {m.va: m for m in w.iter_mappings()}
    assert maps[0xFFFF880000001000].pa == 0x5000
    assert maps[0x2000].pa is None and "frame not in source" in maps[0x2000].notes


def test_trace_explains_every_level():
    b = Builder("4level")
    b.map(0x1000, 0x2000, flags=P | RW | US | A | D, pkey=3, extra=BIT62)
    w = Walker(b.source(), CpuState(cr4=CR4.PAE, cr3=b.cr3, efer=LM))
    t = w.trace(0x1234)
    assert [s.level for s in t.steps] == ["pml4", "pdpt", "pd", "pt"]
    assert t.stop == "leaf" and t.mapping.pa == 0x2000
    leaf = dict((n, v) for n, v, _ in t.steps[-1].bits)
    assert leaf["PK"] == 3 | 8 and leaf["D"] == 1 and leaf["PAT"] == 0
    assert w.trace(0x5000).stop == "not present"


def test_pv_cr3_is_a_machine_address_translated_like_any_frame():
    """A PV dump's CR3 names the top table by MFN (xen-pte-abi.md §7): the walker translates it
    through the source like every other frame; an untranslatable root is one clear error."""
    from gdb_xenpte.errors import SourceError
    mfn_of = lambda pfn: pfn + 0x1000
    b = Builder("4level", frame_of=mfn_of)
    b.map(0x1000, 0x5000, flags=P | RW)
    pfn_of = {mfn_of(a >> 12): a >> 12 for a in b.pages}
    cpu = CpuState(cr4=CR4.PAE, cr3=b.cr3, efer=LM)
    assert b.cr3 != b.root
    w = Walker(b.source(translate=pfn_of.get), cpu)
    assert [(m.va, m.pa) for m in w.iter_mappings()] == [(0x1000, None)]
    w = Walker(b.source(translate=lambda mfn: None), cpu)
    with pytest.raises(SourceError, match="top-level table's machine frame 0x1100 is not in"):
        list(w.iter_mappings())
    assert w.trace(0x1000).stop.startswith("unreadable: CR3")
