"""A Xen host's kexec crash dump (ELF vmcore and its makedumpfile copy), written from Xen's and
kexec-tools' layouts by writers_kexec: memory keyed by machine address, every pCPU's registers
from the crash notes, CRASH_INFO, the crashing pCPU, and walks with the notes' CR3/CR4."""

import struct

import pytest

from builder import NX, P, RW, US, Builder
from gdb_xenpte.errors import DumpFormatError
from gdb_xenpte.session import Options, prepare
from gdb_xenpte.sources.kdump import KdumpSource
from gdb_xenpte.sources.kexec_elf import KexecElfSource
from gdb_xenpte.sources.open import detect_format, open_dump
from gdb_xenpte.sources.xen_crash import parse_vmcoreinfo
from gdb_xenpte.xen.facts import CRASH_KEYS, FACTS, cite
from writers import PAGE, write_qemu_elf
from writers_kexec import (crash_info, nmi_rsp, primary_rsp, vmcoreinfo_xen, write_kexec_elf,
                           write_makedumpfile, xen_crash_notes)

MARKER = b"XENPTE-MARKER-d1".ljust(PAGE, b"\xa5")
EXTRA = 0x5000  # machine address of the ".5-pre" extra-version string
XEN_CR4 = 0x3526E0   # a hardware CR4 Xen runs with (PAE PGE ... SMEP SMAP PKE)
GUEST_CR4 = 0x1506E0  # the CR4 of a PV context (no PGE: XPTI)


def _host():
    """Machine memory: an idle L4 (pCPU 0) and a domU's L4 (pCPU 1) mapping a marker page."""
    idle = Builder(table_base=0x100000)
    idle.map(0xFFFF830000000000, 0x0, size=1 << 21, flags=P | RW, extra=NX)
    domu = Builder(table_base=0x200000)
    domu.map(0x400000, 0x300000, flags=P | RW | US)
    pages = {**idle.image(), **domu.image()}
    pages[0x300000] = MARKER
    pages[0x0] = bytes(PAGE)
    pages[EXTRA] = b".5-pre\0".ljust(PAGE, b"\0")
    return pages, idle.cr3, domu.cr3


def _notes(idle_cr3, domu_cr3, **kw):
    pcpus = [dict(cr0=0x80050033, cr3=idle_cr3, cr4=XEN_CR4, rip=0xFFFF82D040212345, cs=0xE008,
                  rflags=0x46, rsp=primary_rsp(0)),
             dict(cr0=0x80050033, cr3=domu_cr3, cr4=GUEST_CR4, rip=0xFFFF82D040212345,
                  cs=0xE008, rflags=0x2, rsp=nmi_rsp(1)),
             None]
    return xen_crash_notes(pcpus, crash_info(extra_maddr=EXTRA, xen_phys_start=0x7E00000),
                           vmcoreinfo_xen({"domain_list": 0xFFFF82D0405A7400,
                                           "pgd_l4": 0xFFFF82D040499000},
                                          {"domain.domain_id": 0, "domain.next_in_list": 0x30}),
                           b"OSRELEASE=6.1.0-xen\n", **kw)


def _write(tmp_path, kind, pages, notes):
    path = tmp_path / ("host.vmcore" if kind == "elf" else "host.kdump")
    if kind == "elf":
        # The kernel text segment aliases the first 2 MiB of RAM at __START_KERNEL_map.
        write_kexec_elf(path, pages, notes, alias=(0x0, 0x2000, 0xFFFFFFFF80000000))
    else:
        write_makedumpfile(path, pages, notes)
    return str(path)


@pytest.fixture(params=["elf", "makedumpfile"])
def host_dump(tmp_path, request):
    pages, idle_cr3, domu_cr3 = _host()
    path = _write(tmp_path, request.param, pages, _notes(idle_cr3, domu_cr3))
    return request.param, path, pages, idle_cr3, domu_cr3


def test_opens_by_machine_address(host_dump):
    kind, path, pages, _i, _d = host_dump
    assert detect_format(path) == ("kexec-elf" if kind == "elf" else "kdump")
    with open_dump(path) as src:
        assert isinstance(src, KexecElfSource if kind == "elf" else KdumpSource)
        for addr, data in pages.items():
            assert src.read(addr, PAGE) == data
        assert src.xen_version == (4, 17)
        text = src.describe()
        assert "Xen 4.17.5-pre (CRASH_INFO)" in text and "xen_phys_start 0x7e00000" in text
        assert "pCPU(s) 2 saved no state" in text
        assert "which pCPU crashed: the notes do not say" in text
        if kind == "elf":
            assert "alias RAM" in text  # the kernel-text segment, left out, said


def test_every_pcpu_from_the_crash_notes(host_dump):
    _kind, path, _p, idle_cr3, domu_cr3 = host_dump
    with open_dump(path) as src:
        p0, p1, p2 = src.vcpus()
        assert [p.index for p in (p0, p1, p2)] == [0, 1, 2]
        assert (p0.cr3, p0.cr4, p0.cr0, p0.cs) == (idle_cr3, XEN_CR4, 0x80050033, 0xE008)
        assert (p1.cr3, p1.cr4, p1.rflags) == (domu_cr3, GUEST_CR4, 0x2)
        assert p0.long_mode is True and not p0.cr4_is_guest_view  # the hardware CR4
        assert "pCPU 1" in p1.origin and "CRASH_REGS" in p1.origin
        assert p2.online is False and p2.cr3 is None and "saved no state" in p2.notes[0]
        host = src.host
        assert host.crashing is None  # two pCPUs saved: the notes cannot tell which crashed
        assert host.info.xen_phys_start == 0x7E00000 and host.info.dom0_p2m_frame_list_list
        assert host.vmcoreinfo_xen.symbols["pgd_l4"] == 0xFFFF82D040499000
        assert host.vmcoreinfo_xen.offsets["domain.next_in_list"] == 0x30
        assert host.vmcoreinfo.raw["OSRELEASE"] == "6.1.0-xen"


def test_each_pcpu_walks_with_its_notes_cr3_and_cr4(host_dump):
    _kind, path, _p, _i, _d = host_dump
    with open_dump(path) as src:
        s1 = prepare(src, Options(vcpu=1))
        trace = s1.walker().trace(0x400000)
        assert trace.mapping is not None and trace.mapping.pa == 0x300000
        assert src.read(trace.mapping.pa, 16) == MARKER[:16]
        # The hardware CR4 the pCPU saved is a fact: read and used as is, not rewritten by policy.
        assert s1.cpu.cr3 == s1.regs.cr3 and s1.state.cr4_read == GUEST_CR4
        assert s1.effective_cr4 == GUEST_CR4
        s0 = prepare(src, Options(vcpu=0))
        assert s0.walker().trace(0xFFFF830000000000).mapping.pa == 0


def test_the_only_pcpu_that_saved_is_the_crashing_one(tmp_path):
    """The crashing pCPU always saves (kexec_crash); one that did not answer the NMI saves
    nothing: so a lone saved pCPU is the crashing one."""
    pages, idle_cr3, _d = _host()
    path = tmp_path / "h.vmcore"
    write_kexec_elf(path, pages, xen_crash_notes([None, dict(cr3=idle_cr3, cr4=XEN_CR4,
                                                             rsp=primary_rsp(1))], crash_info()))
    with open_dump(str(path)) as src:
        assert src.host.crashing == 1
        assert any("the crashing pCPU" in n for n in src.vcpus()[1].notes)
        assert "pCPU 1 crashed (the only pCPU that saved its state)" in src.describe()


def test_short_crash_regs_is_one_clear_error(tmp_path):
    pages, idle_cr3, domu_cr3 = _host()
    path = tmp_path / "bad.vmcore"
    write_kexec_elf(path, pages, xen_crash_notes([dict(cr3=idle_cr3)], short_regs=True))
    with pytest.raises(DumpFormatError) as err:
        open_dump(str(path))
    assert "CRASH_REGS note at file offset 0x" in str(err.value) and "bad.vmcore" in str(err.value)


def test_forcing_qemu_format_names_the_kexec_vmcore(tmp_path):
    pages, idle_cr3, domu_cr3 = _host()
    path = _write(tmp_path, "elf", pages, _notes(idle_cr3, domu_cr3))
    with pytest.raises(DumpFormatError) as err:
        open_dump(path, fmt="qemu-elf")
    assert "kexec crash vmcore" in str(err.value)


def test_qemu_paging_dump_keeps_its_diagnosis(tmp_path):
    """QEMU's -p dump: virtual segments and QEMU notes: still refused as such."""
    path = tmp_path / "p.elf"
    pages = {0x1000: bytes(PAGE)}
    write_qemu_elf(path, pages, [dict(cr3=0x1000)], vaddr=lambda p: 0xFFFF888000000000 + p)
    assert detect_format(str(path)) == "qemu-elf"
    with pytest.raises(DumpFormatError) as err:
        open_dump(str(path))
    assert "dump-guest-memory -p" in str(err.value)


def test_linux_kexec_vmcore_opens_without_cr3(tmp_path):
    """A plain Linux kdump: VMCOREINFO, CORE notes, no Xen: memory by p_paddr, CR3 unknown."""
    from writers import _note, NT_PRSTATUS
    notes = _note(b"CORE", NT_PRSTATUS, bytes(336)) + _note(b"VMCOREINFO", 0, b"PAGESIZE=4096\n")
    path = tmp_path / "linux.vmcore"
    write_kexec_elf(path, {0x1000: MARKER}, notes)
    with open_dump(str(path)) as src:
        assert src.read(0x1000, 16) == MARKER[:16]
        assert src.name.startswith("kexec crash vmcore")
        assert "give --cr3" in src.describe()


def test_vmcoreinfo_lines():
    info = parse_vmcoreinfo(b"SYMBOL(domain_list)=ffff82d0405a7400\nSIZE(domain)=4096\n"
                            b"OFFSET(page_info._domain)=24\nbogus\nSYMBOL(x)=zz\n\0junk")
    assert info.symbols == {"domain_list": 0xFFFF82D0405A7400}
    assert info.sizes == {"domain": 4096} and info.offsets == {"page_info._domain": 24}


def test_facts_cite_a_source():
    for key in CRASH_KEYS:  # in the one table of Xen facts, cited like every other
        fact = FACTS[key]
        assert fact.key == key and fact.source and cite(key).startswith(fact.source)
    assert "elfnote.h" in cite("crash_regs")


def test_prstatus_layout_matches_xen():
    """The writer's NT_PRSTATUS is Xen's ELF_Prstatus: 336 bytes, pr_reg at 112 (x86_64)."""
    from writers_kexec import prstatus
    blob = prstatus({"rip": 0x1234, "cs": 0xE008})
    assert len(blob) == 336 and struct.unpack_from("<Q", blob, 112 + 16 * 8)[0] == 0x1234


def test_truncated_vmcore_is_one_clear_error(tmp_path):
    """Cut at every structure boundary: the reader opens what is whole or raises one
    DumpFormatError naming the file; never another exception."""
    pages, idle_cr3, domu_cr3 = _host()
    path = tmp_path / "cut.vmcore"
    layout = write_kexec_elf(path, pages, _notes(idle_cr3, domu_cr3),
                             alias=(0x0, 0x2000, 0xFFFFFFFF80000000))
    blob = path.read_bytes()
    for cut in layout.boundaries()[:-1] + [layout.offsets["notes"] + 30]:
        path.write_bytes(blob[:cut])
        try:
            open_dump(str(path)).close()
        except DumpFormatError as err:
            assert "cut.vmcore" in str(err)


def test_small_ram_segment_still_beats_a_larger_count_of_text_segments(tmp_path):
    """The direct-map offset is the one covering the most bytes: one RAM segment of 3 pages
    listed after a one-page kernel-text alias is still RAM."""
    pages = {0x1000 * i: bytes([i]) * PAGE for i in range(1, 4)}
    path = tmp_path / "one.vmcore"
    write_kexec_elf(path, pages, xen_crash_notes([dict(cr3=0x1000)], crash_info()),
                    alias=(0x1000, 0x1000, 0xFFFFFFFF81000000))
    with open_dump(str(path)) as src:
        assert src.page_offset == 0xFFFF888000000000
        assert [src.read(a, 1) for a in sorted(pages)] == [b"\x01", b"\x02", b"\x03"]
        assert "alias RAM" in src.describe()


def test_flattened_makedumpfile_copy(tmp_path):
    """makedumpfile -F (the flattened stream): the same pCPUs and memory."""
    pages, idle_cr3, domu_cr3 = _host()
    path = tmp_path / "host.flat"
    write_makedumpfile(path, pages, _notes(idle_cr3, domu_cr3), flattened=True)
    with open_dump(str(path)) as src:
        assert src.flattened and [p.cr3 for p in src.vcpus()[:2]] == [idle_cr3, domu_cr3]
        assert src.read(0x300000, PAGE) == MARKER and src.xen_version == (4, 17)


def test_short_crash_info_is_one_clear_error(tmp_path):
    from writers import _note
    path = tmp_path / "info.vmcore"
    notes = xen_crash_notes([dict(cr3=0x1000)]) + _note(b"Xen", 0x1000001, bytes(40))
    write_kexec_elf(path, {0x1000: MARKER}, notes)
    with pytest.raises(DumpFormatError) as err:
        open_dump(str(path))
    assert "CRASH_INFO note at file offset 0x" in str(err.value) and "needs at least 64" in \
        str(err.value)
