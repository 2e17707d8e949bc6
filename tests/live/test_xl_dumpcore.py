"""Real ``xl dump-core`` files of a 64-bit PV domU, walked, and checked against independent views.

One session-scoped run of :func:`targets.xl_dumpcore.generate` (44-120 s measured here: Xen 4.17 +
dom0 toolstack under QEMU TCG; the module ~1 min in all) gives two dumps Xen's own tools wrote,
``running.core`` and ``paused.core``, plus what dom0 and the domU said about the domU. Every dump
test runs on both.

What must hold, and against what (so that a wrong MFN->PFN translation cannot pass):

* the file itself, read with pyelftools rather than our reader: PV magic, one vCPU, the p2m;
  ``xl list -l`` for the memory size and vCPU count;
* the vCPU context: CR3 is a machine address (an MFN the p2m lists), CR4 the guest-visible value;
  in the paused dump every register equals ``xenctx -a`` taken before and after that dump;
* every frame in every walked entry goes MFN->PFN exactly as the raw ``.xen_p2m`` says, and the
  frames missing from the dump are Xen's (Xen L4 slots) or Xen-owned pages mapped by the kernel;
  the domU's own p2m list, read through our walk at ``shared_info.arch.p2m_vaddr``, equals it;
* the marker page: its user VA (printed by the domU) walks to the PFN that the domU's own
  ``/proc/self/pagemap`` gave and holds the marker bytes; the same bytes are found through
  Linux's direct map at ``PAGE_OFFSET + pfn * 4096``, and match what ``xenctx -m`` read through
  libxc's own page walk; the code bytes at RIP match xenctx's "Code" line;
* ``_text``..``_etext`` from the domU's ``/proc/kallsyms`` is mapped, executable, read-only,
  U=1 with bit 52 ``_PAGE_GUEST_KERNEL`` on every L1 leaf, and its first bytes match xenctx's;
* Xen's L4 slots 256-271 carry their labels; those whose frames are Xen's are "not in dump",
  slot 258 is the L4's self-map (its frame is CR3's).

With ``XENPTE_XL_PVH=1`` the same kernel also runs as a PVH domU (an HVM container: Xen uses the
SVM + NPT QEMU TCG offers) and its HVM-format dump is checked the same way (magic, ``.xen_pfn``,
guest-physical CR3, registers == xenctx, marker and memory == the guest's and libxc's). It is
opt-in because that one ``xl dump-core`` takes ~200 s here.
"""

from __future__ import annotations

import os
import struct
from functools import cached_property
from typing import Dict, Iterator, List, Tuple

import pytest
from elftools.elf.elffile import ELFFile

from gdb_xenpte.arch import CR4
from gdb_xenpte.session import Options, prepare
from gdb_xenpte.sources.open import open_dump
from gdb_xenpte.walk import Walker
from targets import xl_dumpcore
from targets.xl_dumpcore import (XlDumps, marker_page, parse_xenctx, parse_xenctx_code,
                                 parse_xenctx_memory)

pytestmark = [pytest.mark.live, pytest.mark.slow]

XC_CORE_MAGIC_PV = 0xF00FEBED       # XEN_ELFNOTE_DUMPCORE_HEADER magic (tools/include/xenctrl.h)
NOTE_DUMPCORE_HEADER = 0x2000001
NOTE_FORMAT_VERSION = 0x2000003
CONTEXT_SIZE_X86_64 = 5168          # sizeof(vcpu_guest_context_any_t), x86_64 toolstack
INVALID = 0xFFFFFFFFFFFFFFFF
XEN_SLOTS = range(256, 272)
LINEAR_SLOT = 258                   # Xen's linear self-map of the guest's L4
PAGE_OFFSET = 0xFFFF888000000000    # Linux x86-64 direct map, 4-level; no KASLR in a PV guest
PTE_FRAME = 0x000FFFFFFFFFF000      # PTE_FRAME_MASK (xg_sr_common_x86_pv.h)
GUEST_KERNEL = "_PAGE_GUEST_KERNEL"
# struct shared_info (x86_64): vcpu_info[32] (64 bytes each), evtchn_pending[64], evtchn_mask[64],
# wc_version/wc_sec/wc_nsec/wc_sec_hi, then arch_shared_info {max_pfn,
# pfn_to_mfn_frame_list_list, nmi_reason, p2m_cr3, p2m_vaddr, p2m_generation} (public/xen.h,
# public/arch-x86/xen.h).
SHARED_INFO_ARCH = 32 * 64 + 64 * 8 + 64 * 8 + 4 * 4
DUMPS = ("running", "paused")
# The PVH (HVM-format) dump costs ~200 s more: made only when this variable is "1".
PVH_OPT_IN = "XENPTE_XL_PVH"
XC_CORE_MAGIC_HVM = 0xF00FEBEE


@pytest.fixture(scope="session")
def xl_dumps(tmp_path_factory) -> Iterator[XlDumps]:
    """Generate the dumps once per session; afterwards drop the big files (logs stay for triage)."""
    dumps = xl_dumpcore.generate(tmp_path_factory.mktemp("xl-dumpcore"),
                                 pvh=os.environ.get(PVH_OPT_IN) == "1")
    yield dumps
    for big in [dumps.running, dumps.paused, dumps.pvh, *dumps.workdir.glob("*.cpio")]:
        if big is not None:
            big.unlink(missing_ok=True)


class Walked:
    """One dump opened and its session prepared; the whole-space walk (~5 s) done on first use."""

    def __init__(self, path):
        self.source = open_dump(str(path))
        self.session = prepare(self.source, Options())
        self.regs = self.session.regs
        self.walker = self.session.walker()
        self.p2m = raw_p2m(path)

    @cached_property
    def mappings(self):
        """Every leaf and every entry that could not be followed, one record per 4 KiB page."""
        return list(self.session.walker().iter_mappings(coalesce=False))

    def read_va(self, va: int, size: int) -> bytes:
        """Bytes at guest VA through our walk (page by page)."""
        out = b""
        while size:
            trace = self.walker.trace(va)
            assert trace.mapping is not None and trace.mapping.pa is not None, \
                f"{va:#x}: {trace.stop}"
            offset = va - trace.mapping.va
            chunk = min(size, trace.mapping.page_size - offset)
            out += self.source.read(trace.mapping.pa + offset, chunk)
            va, size = va + chunk, size - chunk
        return out


@pytest.fixture(scope="module", params=DUMPS)
def walked(request, xl_dumps):
    dump = Walked(getattr(xl_dumps, request.param))
    yield dump
    dump.source.close()


def raw_p2m(path) -> Dict[int, int]:
    """pfn -> MFN straight from ``.xen_p2m`` with pyelftools (independent of our reader); empty
    for an HVM-format dump, which has none."""
    with open(path, "rb") as f:
        section = ELFFile(f).get_section_by_name(".xen_p2m")
        data = section.data() if section is not None else b""
    pairs = struct.unpack(f"<{len(data) // 8}Q", data)
    return {pfn: mfn for pfn, mfn in zip(pairs[::2], pairs[1::2])
            if pfn != INVALID and mfn != INVALID}


def _frame(raw: int, page_size: int) -> int:
    """Machine frame number a leaf or table entry names (large leaves: the first 4 KiB frame)."""
    return (raw & PTE_FRAME & ~(page_size - 1 if page_size > 4096 else 0)) >> 12


def _domu_record(xl_dumps: XlDumps) -> dict:
    return next(d for d in xl_dumps.xl_list if d["domid"] == xl_dumps.domid)


# -- the file and the registers -------------------------------------------------------------------

@pytest.mark.parametrize("name", DUMPS)
def test_file_layout_read_independently(xl_dumps, name):
    """ELF64 core without program headers; notes and sections as Xen's writer lays them out."""
    with open(getattr(xl_dumps, name), "rb") as f:
        elf = ELFFile(f)
        assert elf.elfclass == 64 and elf.header["e_type"] == "ET_CORE"
        assert elf.header["e_machine"] == "EM_X86_64" and elf.header["e_phnum"] == 0
        notes = {n["n_type"]: n for n in elf.get_section_by_name(".note.Xen").iter_notes()}
        desc = lambda t: notes[t]["n_descdata"]
        magic, nr_vcpus, nr_pages, page_size = struct.unpack_from("<4Q", desc(NOTE_DUMPCORE_HEADER))
        assert struct.unpack_from("<Q", desc(NOTE_FORMAT_VERSION)) == (1,)
        prstatus = elf.get_section_by_name(".xen_prstatus")
        pages = elf.get_section_by_name(".xen_pages")
        p2m = elf.get_section_by_name(".xen_p2m")
        shared = elf.get_section_by_name(".xen_shared_info")
    assert magic == XC_CORE_MAGIC_PV and page_size == 4096
    record = _domu_record(xl_dumps)["config"]["b_info"]
    assert nr_vcpus == record["max_vcpus"] == 1
    assert nr_pages == record["max_memkb"] // 4 == xl_dumpcore.DOMU_MEMORY_MB * 256
    assert prstatus["sh_entsize"] == CONTEXT_SIZE_X86_64 == prstatus["sh_size"] // nr_vcpus
    assert pages["sh_size"] == nr_pages * 4096 and pages["sh_offset"] % 4096 == 0
    assert p2m["sh_size"] == nr_pages * 16 and shared["sh_size"] == 4096


def test_reader_agrees_on_the_basics(walked, xl_dumps):
    src = walked.source
    assert src.domain == "pv64" and src.xen_version == (4, 17) and not src.notes
    assert len(src.vcpus()) == 1 and src.vcpus()[0].online
    # The domU's pfns are 0..nr_pages-1, all present; the reader's ranges say the same.
    nr_pages = xl_dumpcore.DOMU_MEMORY_MB * 256
    assert sorted(walked.p2m) == list(range(nr_pages))
    assert list(src.ranges()) == [(0, nr_pages * 4096)]
    assert all(src.translate_frame(mfn) == pfn for pfn, mfn in walked.p2m.items())


def test_cr3_is_an_mfn_and_cr4_the_guest_view(walked):
    regs = walked.regs
    mfn = regs.cr3 >> 12
    assert mfn in walked.p2m.values()  # a machine frame the p2m maps some pfn to
    assert walked.walker.root == walked.source.translate_frame(mfn) << 12
    assert regs.user_cr3 is not None and (regs.user_cr3 >> 12) in walked.p2m.values()
    assert regs.cr4_is_guest_view and regs.long_mode
    # pv_fixup_guest_cr4: PAE|MCE|OSFXSR|OSXMMEXCPT (0x660) shown; PGE, SMEP, SMAP, PKE never.
    assert regs.cr4 & 0x660 == 0x660
    assert not regs.cr4 & (CR4.PGE | CR4.SMEP | CR4.SMAP | CR4.PKE)
    assert walked.session.state.cr4_read == walked.session.state.guest_view.value == regs.cr4
    assert walked.session.domain == "pv64" and walked.session.judge.kernel_cpl == 3


@pytest.mark.parametrize("after", [False, True], ids=["before-dump", "after-dump"])
def test_paused_context_equals_xenctx(xl_dumps, after):
    """``xenctx -a`` (XEN_DOMCTL_getvcpucontext, paused) prints the context the dump stores."""
    ctx = parse_xenctx(xl_dumps.texts["xenctx-paused-after.txt" if after
                                      else "xenctx-paused.txt"])
    with open_dump(str(xl_dumps.paused)) as src:
        regs = src.vcpus()[0]
    ours = {"rip": regs.rip, "flags": regs.rflags, "cs": regs.cs, "cr0": regs.cr0, "cr2": regs.cr2,
            "cr3": regs.cr3, "cr4": regs.cr4}
    assert {k: ctx[k] for k in ours} == ours


# -- MFN -> PFN on every entry --------------------------------------------------------------------

def _path_entries(walked) -> List[Tuple[str, int, int, int]]:
    """(level, L4 slot, raw, page size below) of every distinct entry on every walked path."""
    seen = {}
    sizes = {"pml4": 1 << 39, "pdpt": 1 << 30, "pd": 1 << 21, "pt": 1 << 12}
    for m in walked.mappings:
        for ref in m.entries:
            is_leaf = ref is m.entries[-1] and m.kind == "page"
            key = (ref.table_pa, ref.index)
            seen[key] = (ref.level, m.entries[0].index, ref.raw,
                         m.page_size if is_leaf else 4096)
    return list(seen.values())


def test_every_entry_frame_translates_as_the_p2m_says(walked):
    mfn_to_pfn = {mfn: pfn for pfn, mfn in walked.p2m.items()}
    missing = []
    for level, slot, raw, page_size in _path_entries(walked):
        mfn = _frame(raw, page_size)
        assert walked.source.translate_frame(mfn) == mfn_to_pfn.get(mfn), (level, hex(raw))
        if mfn not in mfn_to_pfn:
            missing.append((level, slot, raw))
    # Frames outside the dump: Xen's own (L4 slots 256-271 and what they lead to), and the few
    # Xen-owned pages the kernel maps (shared info, grant table frames): kernel leaves, bit 52.
    kernel_only = [(lvl, s, hex(r)) for lvl, s, r in missing if s not in XEN_SLOTS]
    assert all(lvl == "pt" and r >> 52 & 1 for lvl, _s, r in missing if _s not in XEN_SLOTS), \
        kernel_only
    assert len(kernel_only) <= 32, kernel_only
    assert any(s in XEN_SLOTS for _l, s, _r in missing)


def test_every_leaf_pa_is_the_p2m_pfn_of_its_mfn(walked):
    mfn_to_pfn = {mfn: pfn for pfn, mfn in walked.p2m.items()}
    pages = [m for m in walked.mappings if m.kind == "page"]
    assert len(pages) > 10000
    for m in pages:
        mfn = _frame(m.entries[-1].raw, m.page_size)
        pfn = mfn_to_pfn.get(mfn)
        if pfn is None:
            assert m.pa is None and any("not in" in note for note in m.notes), hex(m.va)
        else:
            assert m.pa == pfn << 12, hex(m.va)


def test_direct_map_is_pfn_for_pfn(walked):
    """Linux maps pseudo-physical page N at PAGE_OFFSET + N*4096: a wrong translation breaks it."""
    nr_pages = xl_dumpcore.DOMU_MEMORY_MB * 256
    direct = [m for m in walked.mappings
              if m.kind == "page" and PAGE_OFFSET <= m.va < PAGE_OFFSET + nr_pages * 4096]
    assert len(direct) > nr_pages // 2  # the kernel maps (nearly) all its memory there
    assert all(m.pa == m.va - PAGE_OFFSET for m in direct)


def test_guest_p2m_list_read_through_the_walk_equals_xen_p2m(walked):
    """The domU's own linear p2m list (``arch_shared_info.p2m_vaddr``, in its vmalloc area), read
    through our walk, gives every pfn the same MFN as the dump's ``.xen_p2m``."""
    shared = walked.source.shared_info
    max_pfn, _frame_list, _nmi, p2m_cr3, p2m_vaddr = struct.unpack_from(
        "<5Q", shared, SHARED_INFO_ARCH)
    assert max_pfn == len(walked.p2m)
    data = walked.read_va(p2m_vaddr, max_pfn * 8)
    assert dict(enumerate(struct.unpack(f"<{max_pfn}Q", data))) == walked.p2m
    # p2m_cr3 (xen_pfn_to_cr3 format) names a kernel L4 the dump holds; it maps the list too.
    root = walked.source.translate_frame(p2m_cr3 >> 12) << 12
    kernel = Walker(walked.source, walked.session.cpu, root=root)
    assert kernel.trace(p2m_vaddr).mapping.pa == walked.walker.trace(p2m_vaddr).mapping.pa


# -- the marker page and kallsyms: the domU's and libxc's views ---------------------------------

def test_marker_found_through_the_user_va(walked, xl_dumps):
    marker = xl_dumps.marker
    assert marker.head == marker_page()[:32]  # the domU wrote what we expect
    trace = walked.walker.trace(marker.va)
    m = trace.mapping
    assert trace.stop == "leaf" and m.pa == marker.pfn << 12  # pagemap's pfn, not the p2m's
    assert walked.source.read(m.pa, 4096) == marker_page()
    assert m.effective.user and m.effective.write and not m.effective.exec
    assert GUEST_KERNEL not in m.xen_bits and "G" in m.flags  # Xen adds G to PV user leaves


def test_marker_found_through_the_user_page_table(walked, xl_dumps):
    """ctrlreg[1], the PV64 user L4 the hardware runs in user mode, maps the marker too."""
    root = walked.source.translate_frame(walked.regs.user_cr3 >> 12) << 12
    user = Walker(walked.source, walked.session.cpu, root=root)
    m = user.trace(xl_dumps.marker.va).mapping
    assert m is not None and m.pa == xl_dumps.marker.pfn << 12
    assert user.trace(xl_dumps.kallsyms["_text"]).mapping is None  # no kernel half


def test_marker_found_through_the_direct_map(walked, xl_dumps):
    m = walked.walker.trace(PAGE_OFFSET + xl_dumps.marker.pfn * 4096).mapping
    assert m.pa == xl_dumps.marker.pfn << 12
    assert walked.source.read(m.pa, 4096) == marker_page()
    assert GUEST_KERNEL in m.xen_bits and not m.effective.exec


@pytest.mark.parametrize("what", ["marker", "text"])
def test_memory_equals_libxc_page_walk(walked, xl_dumps, what):
    """``xenctx -m VA`` reads through xc_translate_foreign_address: same bytes as our walk."""
    va, data = parse_xenctx_memory(xl_dumps.texts[f"xenctx-{what}.txt"])
    assert va == (xl_dumps.marker.va if what == "marker" else xl_dumps.kallsyms["_text"])
    assert len(data) == 512
    assert walked.read_va(va, len(data)) == data


def test_code_at_rip_equals_xenctx(xl_dumps):
    rip, code, at = parse_xenctx_code(xl_dumps.texts["xenctx-paused.txt"])
    paused = Walked(xl_dumps.paused)
    try:
        assert rip == paused.regs.rip
        assert paused.read_va(rip - at, len(code)) == code
    finally:
        paused.source.close()


def test_kernel_text_is_mapped_as_pv_kernel_pages(walked, xl_dumps):
    start, end = xl_dumps.kallsyms["_text"], xl_dumps.kallsyms["_etext"]
    text = [m for m in walked.mappings if m.kind == "page" and start <= m.va < end]
    assert sum(m.size for m in text) >= (end - start) // 4096 * 4096
    for m in text:
        assert m.pa is not None and m.effective.exec and not m.effective.write, hex(m.va)
        # Xen runs a PV64 kernel at CPL3: it sets U and bit 52 on the kernel's L1 entries.
        assert m.level == "pt" and GUEST_KERNEL in m.xen_bits and "US" in m.flags, hex(m.va)
        assert "G" not in m.flags, hex(m.va)


# -- Xen's L4 slots --------------------------------------------------------------------------------

def test_xen_l4_slots_labelled_and_not_in_dump(walked):
    top = [m for m in walked.mappings if len(m.entries) == 1]  # stopped at the L4 entry
    xen_top = {m.entries[0].index: m for m in top}
    assert set(xen_top) <= set(XEN_SLOTS) and {256, 261} <= set(xen_top)
    for slot, m in xen_top.items():
        assert m.kind == "not-in-dump", slot
        assert m.notes[0].startswith(f"Xen L4 slot {slot}:"), m.notes
    for slot in XEN_SLOTS:
        assert walked.walker.xen_view.slot_label("pml4", slot), slot


def test_linear_slot_is_the_l4_self_map(walked):
    l4 = walked.source.read(walked.walker.root, 4096)
    entry = struct.unpack_from("<Q", l4, LINEAR_SLOT * 8)[0]
    assert entry & 1 and _frame(entry, 4096) == walked.regs.cr3 >> 12
    linear = [m for m in walked.mappings if m.entries[0].index == LINEAR_SLOT]
    assert linear and all(m.notes[0].startswith(f"Xen L4 slot {LINEAR_SLOT}:") for m in linear)


# -- the PVH domU: an HVM-format dump (opt-in) --------------------------------------------------

@pytest.fixture(scope="module")
def pvh(xl_dumps):
    if xl_dumps.pvh is None:
        pytest.skip(f"the PVH dump adds ~200 s: set {PVH_OPT_IN}=1 to make and check it")
    dump = Walked(xl_dumps.pvh)
    yield dump
    dump.source.close()


def _pvh_marker(xl_dumps):
    return xl_dumpcore._parse_marker(xl_dumps.texts["pvh-domu-console.log"])


def test_pvh_dump_is_hvm_format(pvh, xl_dumps):
    with open(xl_dumps.pvh, "rb") as f:
        elf = ELFFile(f)
        notes = {n["n_type"]: n["n_descdata"] for n in
                 elf.get_section_by_name(".note.Xen").iter_notes()}
        assert elf.get_section_by_name(".xen_pfn") is not None
        assert elf.get_section_by_name(".xen_p2m") is None
    assert struct.unpack_from("<Q", notes[NOTE_DUMPCORE_HEADER])[0] == XC_CORE_MAGIC_HVM
    src = pvh.source
    assert src.domain == "hvm" and src.translate_frame is None  # frames are guest-physical
    regs = pvh.regs
    assert not regs.cr4_is_guest_view and regs.cr4 & (CR4.PAE | CR4.PGE) == CR4.PAE | CR4.PGE
    ctx = parse_xenctx(xl_dumps.texts["pvh-xenctx-paused.txt"])
    ours = {"rip": regs.rip, "flags": regs.rflags, "cs": regs.cs, "cr0": regs.cr0,
            "cr2": regs.cr2, "cr3": regs.cr3, "cr4": regs.cr4}
    assert {k: ctx[k] for k in ours} == ours


def test_pvh_marker_and_memory_equal_the_guest_and_libxc(pvh, xl_dumps):
    marker = _pvh_marker(xl_dumps)
    m = pvh.walker.trace(marker.va).mapping
    assert m.pa == marker.pfn << 12 and pvh.source.read(m.pa, 4096) == marker_page()
    for what in ("marker", "text"):
        va, data = parse_xenctx_memory(xl_dumps.texts[f"pvh-xenctx-{what}.txt"])
        assert len(data) == 512 and pvh.read_va(va, len(data)) == data
    # An HVM kernel runs at CPL0: no Xen bits, no U on kernel text (va is now _text).
    text = pvh.walker.trace(va).mapping
    assert text.effective.exec and not text.effective.user and not text.xen_bits
