"""The crashed-Xen-host artefacts themselves are genuine (tests/targets/xen_crash.py).

These tests check the test target, not gdb_xenpte's reader: the files are read here with
pyelftools, ``struct`` and ``zlib`` only, and every expectation comes from Xen's, kexec-tools' or
makedumpfile's own definitions, cross-checked against what Xen's tools printed before the crash.

* ``vmcore.elf``: an ELF64 ET_CORE for x86-64 with PT_LOADs keyed by machine address (p_paddr)
  and p_vaddr = the crash kernel's direct map 0xffff888000000000 + p_paddr (kexec-tools); the
  region Xen reserved for the crash kernel (``crashkernel=``, "Kdump: ... at" on Xen's console)
  is not in it;
* its notes (xen/common/kexec.c, xen/include/xen/elfcore.h): per pCPU one ``CORE`` NT_PRSTATUS
  (RIP in Xen's text, per xen-syms) and one ``Xen`` XEN_ELFNOTE_CRASH_REGS 0x1000002 (cr0, cr2,
  cr3, cr4); one XEN_ELFNOTE_CRASH_INFO 0x1000001 whose version and extra-version string (read
  through the dump at the machine address Xen stored) spell Xen's banner; one VMCOREINFO_XEN whose
  SYMBOL(domain_list) is xen-syms' ``domain_list``;
* the pCPU that ran the running domU (pinned to pCPU 1, spinning in user mode) crashed with one
  of that domU's pinned L4s (xen-mfndump) in CR3: its marker process's kernel L4 (xenctx) or
  user L4 (the CR3 ``xl debug-keys d`` printed for it in user mode) — both were seen;
* ``xenctx`` CR3 of each domU is one of its pinned L4s, unchanged up to the crash for the running
  one; each domU's marker page lies at the MFN xen-mfndump's p2m gives for the PFN the domU's own
  pagemap reported, and holds that domain's marker (distinct per domain), in the ELF and in the
  makedumpfile copy alike, and in what ``xenctx -m`` read through libxc's page walk;
* the paused domU's ``xl dump-core``: its context's kernel L4 is xenctx's, its user L4 another
  pinned L4 of the domain; its own p2m and page data agree on the marker page;
* ``vmcore.kdump``: makedumpfile's kdump-compressed format (``KDUMP   ``, dump level 0), carrying
  the ELF's notes byte for byte;
* ``xen-syms``: ELF64 with DWARF;
* with ``XENPTE_XENCRASH_PVH=1``, a PVH domU too: its marker is the vmcore's only page with that
  content, where libxc's walk through its guest-physical tables found it; its CR3 is
  guest-physical.
"""

from __future__ import annotations

import bisect
import struct
import zlib
from functools import lru_cache
from pathlib import Path
from typing import List, Tuple

import pytest
from elftools.elf.elffile import ELFFile

from targets import xen_crash as xen_crash_target
from targets.xen_crash import dump_core_ctrlregs, marker_page, parse_debug_key_d, parse_p2m
from targets.xl_dumpcore import parse_xenctx, parse_xenctx_memory

pytestmark = [pytest.mark.live, pytest.mark.slow]

DIRECT_MAP = 0xFFFF888000000000     # Linux x86-64 PAGE_OFFSET (4-level), the crash kernel's map
XEN_ELFNOTE_CRASH_INFO = 0x1000001  # xen/include/public/elfnote.h
XEN_ELFNOTE_CRASH_REGS = 0x1000002
NT_PRSTATUS = 1
PRSTATUS_RIP = 112 + 16 * 8         # ELF_Prstatus.pr_reg (after 112 bytes), rip = 17th word
CR0_PG, CR4_PAE = 1 << 31, 1 << 5
PAGE = 4096
DUMP_DH_COMPRESSED_ZLIB = 0x1       # makedumpfile diskdump_mod.h


@lru_cache(maxsize=None)
def _segments(path: str) -> Tuple[List[Tuple[int, int, int, int]], bytes]:
    """Return ([(p_paddr, p_vaddr, p_offset, p_filesz)] of the PT_LOADs sorted, PT_NOTE bytes)."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        assert elf["e_type"] == "ET_CORE" and elf["e_machine"] == "EM_X86_64"
        assert elf.elfclass == 64 and elf.little_endian
        loads = sorted((s["p_paddr"], s["p_vaddr"], s["p_offset"], s["p_filesz"])
                       for s in elf.iter_segments() if s["p_type"] == "PT_LOAD")
        notes = b"".join(s.data() for s in elf.iter_segments() if s["p_type"] == "PT_NOTE")
    return loads, notes


def _notes(blob: bytes) -> List[Tuple[str, int, bytes]]:
    """Split an ELF note segment into (name, type, desc)."""
    out, pos = [], 0
    while pos + 12 <= len(blob):
        namesz, descsz, ntype = struct.unpack_from("<III", blob, pos)
        pos += 12
        name = blob[pos:pos + namesz].rstrip(b"\0").decode()
        pos += (namesz + 3) & ~3
        out.append((name, ntype, blob[pos:pos + descsz]))
        pos += (descsz + 3) & ~3
    return out


def _read_maddr(path: str, maddr: int, size: int) -> bytes:
    """Read ``size`` bytes at machine address ``maddr`` of the ELF vmcore, by p_paddr."""
    loads, _ = _segments(path)
    i = bisect.bisect_right([l[0] for l in loads], maddr) - 1
    assert i >= 0, f"{maddr:#x} below every PT_LOAD"
    paddr, _vaddr, offset, filesz = loads[i]
    assert maddr + size <= paddr + filesz, f"{maddr:#x} not in the dump"
    with open(path, "rb") as f:
        f.seek(offset + maddr - paddr)
        return f.read(size)


def _kdump_page(path: str, pfn: int) -> bytes:
    """Read one page of a kdump-compressed file (makedumpfile's diskdump_mod.h layout)."""
    with open(path, "rb") as f:
        head = f.read(PAGE)
        assert head[:8] == b"KDUMP   "
        # signature[8] header_version utsname[6*65] (pad) timeval[16] status (at 424) block_size
        # sub_hdr_size bitmap_blocks max_mapnr ...
        block_size, sub_hdr_size, bitmap_blocks = struct.unpack_from("<iiI", head, 428)
        bitmap2 = (1 + sub_hdr_size + bitmap_blocks // 2) * block_size
        f.seek(bitmap2)
        bits = f.read(pfn // 8 + 1)
        assert bits[pfn // 8] >> (pfn % 8) & 1, f"pfn {pfn:#x} was not dumped"
        index = sum(bin(b).count("1") for b in bits[:pfn // 8])
        index += bin(bits[pfn // 8] & ((1 << (pfn % 8)) - 1)).count("1")
        f.seek((1 + sub_hdr_size + bitmap_blocks) * block_size + 24 * index)
        offset, size, flags, _page_flags = struct.unpack("<qIIQ", f.read(24))
        f.seek(offset)
        data = f.read(size)
    return zlib.decompress(data) if flags & DUMP_DH_COMPRESSED_ZLIB else data


def _domus(crash) -> List[dict]:
    return [d for d in crash["domains"] if d["domid"] != 0]


def _domain(crash, tag: str) -> dict:
    (dom,) = [d for d in _domus(crash) if d["tag"] == tag]
    return dom


def _text(crash, name: str) -> str:
    return Path(crash["texts"][name]).read_text(errors="replace")


# ---- the ELF vmcore ------------------------------------------------------------------------

def test_elf_is_keyed_by_machine_address_with_the_direct_map_as_vaddr(xen_crash):
    loads, _ = _segments(xen_crash["vmcore_elf"])
    assert len(loads) >= 2
    for paddr, vaddr, _offset, filesz in loads:
        assert vaddr == DIRECT_MAP + paddr and filesz > 0
    for (p1, _v1, _o1, s1), (p2, _v2, _o2, _s2) in zip(loads, loads[1:]):
        assert p1 + s1 <= p2  # no overlap
    reserved = xen_crash["crashkernel"]
    start, end = reserved["start"], reserved["start"] + (reserved["mb"] << 20)
    assert all(p + s <= start or p >= end for p, _v, _o, s in loads), "crash region dumped"
    # everything else of the machine's RAM below the reserved region is there
    assert any(p <= 0x100000 < p + s for p, _v, _o, s in loads)


def test_notes_per_pcpu_and_once(xen_crash):
    _, blob = _segments(xen_crash["vmcore_elf"])
    notes = _notes(blob)
    kinds = [(name, ntype) for name, ntype, _ in notes]
    assert kinds.count(("CORE", NT_PRSTATUS)) == xen_crash["pcpus"]
    assert kinds.count(("Xen", XEN_ELFNOTE_CRASH_REGS)) == xen_crash["pcpus"]
    assert kinds.count(("Xen", XEN_ELFNOTE_CRASH_INFO)) == 1
    assert sum(name == "VMCOREINFO_XEN" for name, _ in kinds) == 1
    for _, _, desc in (n for n in notes if n[:2] == ("Xen", XEN_ELFNOTE_CRASH_REGS)):
        cr0, _cr2, cr3, cr4 = struct.unpack("<4Q", desc[:32])
        assert cr0 & CR0_PG and cr4 & CR4_PAE and cr3 & ~0xFFF


def test_crash_info_spells_xens_banner(xen_crash):
    _, blob = _segments(xen_crash["vmcore_elf"])
    (desc,) = [d for name, t, d in _notes(blob) if (name, t) == ("Xen", XEN_ELFNOTE_CRASH_INFO)]
    major, minor, extra_maddr = struct.unpack_from("<3Q", desc)
    extra = _read_maddr(xen_crash["vmcore_elf"], extra_maddr, 64).split(b"\0")[0].decode()
    assert f"{major}.{minor}{extra}" == xen_crash["xen_version"]


def test_vmcoreinfo_xen_names_this_xen_syms(xen_crash):
    _, blob = _segments(xen_crash["vmcore_elf"])
    (info,) = [d for name, _t, d in _notes(blob) if name == "VMCOREINFO_XEN"]
    fields = dict(line.split("=", 1) for line in info.rstrip(b"\0").decode().splitlines())
    with open(xen_crash["xen_syms"], "rb") as f:
        elf = ELFFile(f)
        assert elf.has_dwarf_info() and elf.get_section_by_name(".debug_info") is not None
        symtab = elf.get_section_by_name(".symtab")
        (domain_list,) = symtab.get_symbol_by_name("domain_list")
        (stext,) = symtab.get_symbol_by_name("_stext")
        (etext,) = symtab.get_symbol_by_name("_etext")
    assert int(fields["SYMBOL(domain_list)"], 16) == domain_list["st_value"]
    # every pCPU's saved registers are Xen's own, at kexec_crash_save_cpu or the NMI handler
    for name, ntype, desc in _notes(blob):
        if (name, ntype) == ("CORE", NT_PRSTATUS):
            (rip,) = struct.unpack_from("<Q", desc, PRSTATUS_RIP)
            assert stext["st_value"] <= rip < etext["st_value"], hex(rip)


def test_the_crashed_pcpu_is_dom0s(xen_crash):
    """``xl debug-keys C`` ran in dom0, whose only vCPU is pinned to pCPU 0."""
    assert xen_crash["crashed_pcpu"] == 0


def test_running_domus_pcpu_crashed_in_its_address_space(xen_crash):
    _, blob = _segments(xen_crash["vmcore_elf"])
    cr3s = [struct.unpack_from("<4Q", d)[2] for name, t, d in _notes(blob)
            if (name, t) == ("Xen", XEN_ELFNOTE_CRASH_REGS)]
    (running,) = [d for d in _domus(xen_crash) if d["state"] == "running"]
    pinned = set(running["pinned_l4_mfns"])
    hits = [cr3 for cr3 in cr3s if (cr3 >> 12) in pinned]
    assert len(hits) == 1, [hex(c) for c in cr3s]
    # ...and it is the marker process's: its kernel L4 (xenctx) if the crash NMI caught the vCPU
    # in its kernel (a tick) or Xen, else its user L4, which debug-key d showed just before when
    # it caught the vCPU in user mode
    (rec,) = [r for r in parse_debug_key_d(_text(xen_crash, "xl-debug-keys.txt"))
              if r["domid"] == running["domid"]]
    # (CPL3 in its kernel too: a 64-bit PV kernel runs in ring 3, so CS cannot tell which.)
    assert rec["pcpu"] in running["pcpu_affinity"] and rec["cs"] & 3 == 3
    kernel_l4 = running["vcpus"][0]["cr3"]
    assert (rec["cr3"] >> 12) in pinned
    if rec["cr3"] != kernel_l4:  # debug-key d caught it in user mode: its user L4 is known
        assert hits[0] in (kernel_l4, rec["cr3"])


# ---- what Xen's tools said, and the marker pages --------------------------------------------

def test_two_pv_domus_one_paused(xen_crash):
    domus = _domus(xen_crash)
    pv = [d for d in domus if d["kind"] == "pv64"]
    assert sorted((d["tag"], d["state"]) for d in pv) == [("paused", "paused"),
                                                          ("running", "running")]
    assert len({d["domid"] for d in domus}) == len(domus)
    for d in domus:
        assert d["pause_count"] == (1 if d["state"] == "paused" else 0)  # debug-key q
        assert d["vcpus"][0]["has"] == (d["state"] == "running")


@pytest.mark.parametrize("tag", ["paused", "running"])  # the PV domUs, tagged by their state
def test_xenctx_cr3_is_a_pinned_l4_of_the_domain(xen_crash, tag):
    dom = _domain(xen_crash, tag)
    ctx = parse_xenctx(_text(xen_crash, f"{dom['tag']}-xenctx.txt"))
    assert ctx["cr3"] == dom["vcpus"][0]["cr3"] and ctx["cr3"] & 0xFFF == 0
    assert (ctx["cr3"] >> 12) in dom["pinned_l4_mfns"]
    p2m = parse_p2m(_text(xen_crash, f"{dom['tag']}-p2m.txt"))
    assert ctx["cr3"] >> 12 in {e["mfn"] for e in p2m.values()}
    assert ctx["cs"] & 3 == 3  # the marker spins in user mode
    if tag == "running":
        late = parse_xenctx(_text(xen_crash, "running-xenctx-late.txt"))
        assert late["cr3"] == ctx["cr3"]


@pytest.mark.parametrize("tag", ["paused", "running"])
def test_marker_page_at_its_mfn_in_both_dumps(xen_crash, tag):
    dom = _domain(xen_crash, tag)
    marker = dom["marker"]
    # among the vmcore's pages with this content (the paused domU's also sits in dom0's copy
    # of its xl dump-core, in tmpfs)
    assert marker["maddr"] in marker["found_at"]
    p2m = parse_p2m(_text(xen_crash, f"{dom['tag']}-p2m.txt"))
    assert p2m[marker["pfn"]]["mfn"] == marker["mfn"] and marker["maddr"] == marker["mfn"] * PAGE
    expected = marker_page(marker["tag"])
    assert Path(marker["file"]).read_bytes() == expected
    assert _read_maddr(xen_crash["vmcore_elf"], marker["maddr"], PAGE) == expected
    assert _kdump_page(xen_crash["vmcore_kdump"], marker["mfn"]) == expected
    va, data = parse_xenctx_memory(_text(xen_crash, f"{dom['tag']}-xenctx-marker.txt"))
    assert va == marker["va"] and len(data) >= 256 and expected.startswith(data)


def test_paused_domus_xl_dump_core_agrees(xen_crash):
    """The toolstack's own dump of the paused domU: same L4s, same p2m, same marker page."""
    dom = _domain(xen_crash, "paused")
    vcpu = dom["vcpus"][0]
    kernel_l4, user_l4 = vcpu["cr3"] >> 12, vcpu["dump_core"]["user_cr3"] >> 12
    ctrlreg = dump_core_ctrlregs(Path(dom["xl_dump_core"]))[0]
    assert ctrlreg[3] >> 12 == kernel_l4 and ctrlreg[1] >> 12 == user_l4
    assert user_l4 != kernel_l4 and {user_l4, kernel_l4} <= set(dom["pinned_l4_mfns"])
    with open(dom["xl_dump_core"], "rb") as f:
        elf = ELFFile(f)
        p2m = elf.get_section_by_name(".xen_p2m").data()
        pages = elf.get_section_by_name(".xen_pages")
        pairs = [struct.unpack_from("<QQ", p2m, i) for i in range(0, len(p2m), 16)]
        marker = dom["marker"]
        (index,) = [i for i, (pfn, _mfn) in enumerate(pairs) if pfn == marker["pfn"]]
        assert pairs[index][1] == marker["mfn"]
        f.seek(pages["sh_offset"] + index * PAGE)
        assert f.read(PAGE) == marker_page(marker["tag"])


def test_markers_differ_between_domains(xen_crash):
    markers = [d["marker"] for d in _domus(xen_crash)]
    assert len({m["mfn"] for m in markers}) == len({m["sha256"] for m in markers}) == len(markers)


def test_pvh_domu_marker_found_by_content_and_by_libxc(xen_crash):
    """The PVH domU (opt-in): its tables are guest-physical, its p2m is Xen's NPT. xen-mfndump
    cannot read that p2m, so the marker's frame is the vmcore's only page with its content."""
    pvh = [d for d in _domus(xen_crash) if d["kind"] == "pvh"]
    if not pvh:
        pytest.skip(f"no PVH domU: set {xen_crash_target.PVH_OPT_IN}=1 to make one (own cache key)")
    (dom,) = pvh
    marker, expected = dom["marker"], marker_page(dom["marker"]["tag"])
    assert dom["state"] == "paused" and dom["pause_count"] == 1 and not dom["pinned_l4_mfns"]
    assert marker["found_at"] == [marker["maddr"]] == [marker["mfn"] * PAGE]
    assert _read_maddr(xen_crash["vmcore_elf"], marker["maddr"], PAGE) == expected
    assert _kdump_page(xen_crash["vmcore_kdump"], marker["mfn"]) == expected
    va, data = parse_xenctx_memory(_text(xen_crash, "pvh-xenctx-marker.txt"))
    assert va == marker["va"] and len(data) >= 256 and expected.startswith(data)
    ctx = parse_xenctx(_text(xen_crash, "pvh-xenctx.txt"))
    # an HVM guest's CR3 is guest-physical: inside its own RAM, not a machine frame of Xen's
    assert ctx["cr0"] & CR0_PG and ctx["cr4"] & CR4_PAE
    assert 0 < ctx["cr3"] < dom["memory_mb"] << 20 and ctx["cr3"] == dom["vcpus"][0]["cr3"]


# ---- the makedumpfile copy ----------------------------------------------------------------

def test_kdump_copy_is_makedumpfile_format_with_the_elf_notes(xen_crash):
    _, blob = _segments(xen_crash["vmcore_elf"])
    with open(xen_crash["vmcore_kdump"], "rb") as f:
        head = f.read(PAGE)
        assert head[:8] == b"KDUMP   "
        block_size, sub_hdr_size = struct.unpack_from("<ii", head, 428)
        assert block_size == PAGE and sub_hdr_size >= 1
        f.seek(block_size)
        sub = f.read(block_size)
        # kdump_sub_header: phys_base, dump_level, split, start_pfn, end_pfn, offset_vmcoreinfo,
        # size_vmcoreinfo, offset_note, size_note, ...
        _phys, dump_level, _split, _s, _e, _ov, _sv, off_note, size_note = struct.unpack_from(
            "<QiiQQqQqQ", sub)
        assert dump_level == 0
        f.seek(off_note)
        assert f.read(size_note) == blob


def test_readme_steps_are_the_ones_this_target_takes():
    """Issue 14: the README's crashed-host commands are the ones this target runs: its dom0 loads
    the crash kernel with `kexec -p KERNEL --initrd=... --append=...`, and the host makes the
    compressed copy with `makedumpfile -c -d 0 --xen-syms`. (They need a Xen host; the target
    is where they run.)"""
    from pathlib import Path

    from readme_examples import shell_lines
    lines = shell_lines("A crashed Xen host")
    assert lines[0].startswith("kexec -p /boot/vmlinuz") and "--initrd=" in lines[0], lines
    assert lines[1].startswith("--append="), lines
    here = Path(__file__).resolve().parents[1] / "targets"
    init = (here / "xencrash" / "dom0-init.sh").read_text()
    assert "kexec -p /boot/vmlinuz --initrd=" in init and '--append="$CRASH_APPEND"' in init
    readme = Path(__file__).resolve().parents[2].joinpath("README.md").read_text()
    assert "makedumpfile -c -d 0 --xen-syms xen-syms" in readme
    target = (here / "xen_crash.py").read_text()
    assert all(f in target for f in ('"-c"', '"-d", "0"', '"--xen-syms"')), "flags drifted"
