"""Domains and vCPUs of a Xen host, read through a real xen-syms' DWARF from a synthetic crash dump.

The dump's struct domain / struct vcpu bytes are placed at the offsets gdb reports for the same
xen-syms (``print &((struct vcpu *)0)->arch.pv.ctrlreg``), an oracle independent of our
pyelftools reader; the facts checked are Xen's (gdb_xenpte.xen.FACTS: domain_list, vcpu_pagetables,
vcpu_state, domain_kind, virt_to_maddr). Skipped when no Xen build with DWARF is cached (the pv32
tier builds one) or gdb is missing.
"""

import functools
import json
import re
import shutil
import struct
import subprocess

import pytest

from builder import P, PS, RW, US, Builder
from gdb_xenpte import render
from gdb_xenpte.errors import OptionError
from gdb_xenpte.session import Options, prepare
from gdb_xenpte.sources.open import open_dump
from gdb_xenpte.xen_host import DomainVcpuSource, open_host, p2m_trace
from gdb_xenpte.xen_syms import XenSyms
from writers import PAGE, write_qemu_elf
from writers_kexec import (crash_info, nmi_rsp, primary_rsp, vmcoreinfo_xen, write_kexec_elf,
                           write_makedumpfile, xen_crash_notes)

FIELDS = {
    "domain": ["domain_id", "next_in_list", "vcpu", "max_vcpus", "options", "arch.pv.is_32bit",
               "arch.emulation_flags", "pause_count", "controller_pause_count", "arch.p2m"],
    "vcpu": ["vcpu_id", "processor", "is_running", "pause_count", "runstate.state",
             "arch.guest_table", "arch.guest_table_user", "arch.pv.ctrlreg", "arch.hvm.guest_cr",
             "arch.hvm.guest_efer", "arch.user_regs.cs", "arch.cr3", "arch.flags"],
    "p2m_domain": ["phys_table", "ept.eptp"],
}
SYMBOLS = ("domain_list", "idle_pg_table", "__image_base__")


@functools.lru_cache(maxsize=None)
def xen_syms() -> str:
    """The xen-syms (with DWARF) of the one Xen build the PV32 and crashed-host targets share:
    built here when no run has built it yet (a fresh machine), never skipped."""
    from tests.pv32.xen_pv32 import build_xen_syms
    return str(build_xen_syms())


pytestmark = pytest.mark.skipif(shutil.which("gdb") is None,
                                reason="gdb is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def gdb_layout():
    """Offsets, sizes and symbols as gdb reads them from the same xen-syms."""
    cmds = []
    for st, fields in FIELDS.items():
        cmds.append(f"print sizeof(struct {st})")
        cmds += [f"print/x (unsigned long)&((struct {st} *)0)->{f}" for f in fields]
    cmds += [f"print/x (unsigned long)&{s}" for s in SYMBOLS]
    out = subprocess.run(["gdb", "-nx", "-batch"] + [a for c in cmds for a in ("-ex", c)]
                         + [xen_syms()], capture_output=True, text=True, timeout=120).stdout
    values = [int(v, 0) for v in re.findall(r"^\$\d+ = (\S+)$", out, re.M)]
    assert len(values) == len(cmds), out
    it = iter(values)
    layout = {}
    for st, fields in FIELDS.items():
        layout[st] = next(it)
        for f in fields:
            layout[f"{st}.{f}"] = next(it)
    for s in SYMBOLS:
        layout[s] = next(it)
    return layout


DM = 0xFFFF830000000000  # a directmap VA base, mapped below by one 1 GiB page
PHYS_START = 0x1000000   # xen_phys_start
MARKER = b"MARKER-d1-v0".ljust(PAGE, b"\x5a")


class Host:
    """Machine memory of a tiny Xen host: dom0 (PV64, running on pCPU 0), d1 (PV64, paused),
    d2 (HVM), laid out with gdb's offsets."""

    def __init__(self, lay, eptp=0):
        self.lay = lay
        self.eptp = eptp
        self.mem = {}
        self.image_base = lay["__image_base__"]
        # idle_pg_table: slot for DM -> an L3 whose entry 0 maps 1 GiB at machine 0.
        idle = self.m_image(lay["idle_pg_table"])
        l3 = 0x00F00000
        self.put(idle + 8 * (DM >> 39 & 511), struct.pack("<Q", l3 | P | RW))
        self.put(l3, struct.pack("<Q", 0 | P | RW | PS))
        # The image's GiB (Xen's L4 slot, in every L4): the 2 MiB around idle_pg_table.
        va = lay["idle_pg_table"]
        l3x, l2x = 0x00F02000, 0x00F03000
        self.put(idle + 8 * (va >> 39 & 511), struct.pack("<Q", l3x | P | RW))
        self.put(l3x + 8 * (va >> 30 & 511), struct.pack("<Q", l2x | P | RW))
        self.put(l2x + 8 * (va >> 21 & 511),
                 struct.pack("<Q", (self.m_image(va) & ~0x1FFFFF) | P | RW | PS))
        # A PV64 guest's L4 for d1 mapping the marker page; dom0's a separate L4.
        d1 = Builder(table_base=0x200000)
        d1.map(0x7F0000000000, 0x300000, flags=P | RW | US)
        for addr, page in d1.image().items():
            self.mem[addr] = bytearray(page)
        self.mem[0x300000] = bytearray(MARKER)
        self.d1_l4 = d1.cr3
        self.d0_l4 = 0x280000
        self.mem.setdefault(self.d0_l4, bytearray(PAGE))

    def m_image(self, va):
        return va - self.image_base + PHYS_START

    def put(self, maddr, data):
        for i, b in enumerate(data):
            page = self.mem.setdefault((maddr + i) & ~0xFFF, bytearray(PAGE))
            page[(maddr + i) & 0xFFF] = b

    def field(self, st, base, name, value, size, index=0):
        self.put(base + self.lay[f"{st}.{name}"] + index * size,
                 value.to_bytes(size, "little", signed=value < 0))

    def domain(self, maddr, domid, nxt, vcpus, hvm=False, paused=0, p2m=0):
        f = lambda n, v, s: self.field("domain", maddr, n, v, s)
        f("arch.p2m", DM + p2m if p2m else 0, 8)
        f("domain_id", domid, 2)
        f("next_in_list", DM + nxt if nxt else 0, 8)
        f("max_vcpus", len(vcpus), 4)
        f("options", 1 if hvm else 0, 4)
        f("arch.emulation_flags", 0x7FF if hvm else 0, 4)
        f("controller_pause_count", paused, 4)
        array = maddr + 0x3000
        f("vcpu", DM + array, 8)
        for i, v in enumerate(vcpus):
            self.put(array + 8 * i, struct.pack("<Q", DM + v))

    def vcpu(self, maddr, vid, pcpu, running, state, l4=0, user_l4=0, cr4=0, arch_cr3=0,
             hvm_cr3=0, hvm_cr0=0, hvm_cr4=0, hvm_efer=0):
        f = lambda n, v, s, i=0: self.field("vcpu", maddr, n, v, s, i)
        f("vcpu_id", vid, 4)
        f("processor", pcpu, 4)
        f("is_running", int(running), 1)
        f("runstate.state", state, 4)
        f("arch.guest_table", l4 >> 12, 8)
        f("arch.guest_table_user", user_l4 >> 12, 8)
        f("arch.pv.ctrlreg", cr4, 8, 4)
        f("arch.user_regs.cs", 0xE033, 2)
        f("arch.cr3", arch_cr3, 8)
        if hvm_cr3:
            f("arch.hvm.guest_cr", hvm_cr0, 8, 0)
            f("arch.hvm.guest_cr", hvm_cr3, 8, 3)
            f("arch.hvm.guest_cr", hvm_cr4, 8, 4)
            f("arch.hvm.guest_efer", hvm_efer, 8)

    def hvm_memory(self):
        """d2's host p2m maps guest-physical 0-2 MiB to machine 0x600000 (one 2 MiB entry, in
        NPT's long-mode format, which EPT reads the same: bits 2:0 = R/W/X); its guest tables
        live there and hold guest frames; VA 0x400000 -> gpa 0x80000 (machine 0x680000)."""
        p2m = Builder(table_base=0x700000)
        p2m.map(0x0, 0x600000, size=1 << 21, flags=P | RW | US)
        guest = Builder(table_base=0x601000, frame_of=lambda mfn: mfn - 0x600)
        guest.map(0x400000, 0x680000, flags=P | RW | US)
        for addr, page in {**p2m.image(), **guest.image()}.items():
            self.mem[addr] = bytearray(page)
        self.mem[0x680000] = bytearray(MARKER)
        P2M = 0x430000
        self.field("p2m_domain", P2M, "phys_table", p2m.cr3 >> 12, 8)
        self.field("p2m_domain", P2M, "ept.eptp", self.eptp, 8)
        for off in range(0, self.lay["p2m_domain"] + PAGE, PAGE):
            self.mem.setdefault((P2M + off) & ~0xFFF, bytearray(PAGE))
        return P2M, guest.cr3

    def build(self):
        lay = self.lay
        D0, D1, D2 = 0x400000, 0x410000, 0x420000
        V00, V10, V11, V20 = 0x500000, 0x510000, 0x518000, 0x520000
        self.put(self.m_image(lay["domain_list"]), struct.pack("<Q", DM + D0))
        self.domain(D0, 0, D1, [V00])
        self.domain(D1, 1, D2, [V10, V11], paused=1)
        p2m, guest_cr3 = self.hvm_memory()
        self.domain(D2, 2, 0, [V20], hvm=True, p2m=p2m)
        self.vcpu(V00, 0, 0, True, 0, self.d0_l4, 0x281000, 0x6F0, arch_cr3=self.d0_l4)
        self.vcpu(V10, 0, 1, False, 1, self.d1_l4, 0x211000, 0x6F0, arch_cr3=self.d1_l4)
        self.vcpu(V11, 1, 1, False, 2, self.d1_l4, 0, 0x6F0)
        self.vcpu(V20, 0, 1, False, 2, hvm_cr3=guest_cr3, hvm_cr0=0x80000011, hvm_cr4=0x20,
                  hvm_efer=0x500)
        # Pad the structs so every byte of struct domain / vcpu is in the dump.
        for base, st in ((D0, "domain"), (D1, "domain"), (D2, "domain"), (V00, "vcpu"),
                         (V10, "vcpu"), (V11, "vcpu"), (V20, "vcpu")):
            for off in range(0, lay[st] + PAGE, PAGE):
                self.mem.setdefault((base + off) & ~0xFFF, bytearray(PAGE))
        return {k: bytes(v) for k, v in self.mem.items()}


def _notes(host, lay):
    pcpus = [dict(cr0=0x80050033, cr3=host.d0_l4, cr4=0x3526E0, cs=0xE008, rsp=primary_rsp(0)),
             dict(cr3=0x00F01000, cr4=0x3526E0, cs=0xE008, rsp=nmi_rsp(1))]
    return xen_crash_notes(pcpus, crash_info(xen_phys_start=PHYS_START),
                           vmcoreinfo_xen({"domain_list": lay["domain_list"],
                                           "pgd_l4": lay["idle_pg_table"]},
                                          {"domain.domain_id": lay["domain.domain_id"],
                                           "domain.next_in_list": lay["domain.next_in_list"]}))


@pytest.fixture(params=["elf", "makedumpfile"])
def dump(tmp_path, gdb_layout, request):
    host = Host(gdb_layout)
    pages = host.build()
    path = tmp_path / "host.dump"
    notes = _notes(host, gdb_layout)
    if request.param == "elf":
        write_kexec_elf(path, pages, notes)
    else:
        write_makedumpfile(path, pages, notes)
    return str(path), host


def test_dwarf_offsets_agree_with_gdb(gdb_layout):
    syms = XenSyms(xen_syms())
    for key, want in gdb_layout.items():
        st, _, path = key.partition(".")
        if key in SYMBOLS:
            assert syms.symbol(key) == want, key
        elif not path:
            assert syms.size(st) == want, key
        else:
            assert syms.field(st, path).offset == want, key


def test_domains_and_vcpus_as_xen_recorded_them(dump):
    path, host = dump
    with open_dump(path) as src:
        xh = open_host(src, xen_syms())
        doms = xh.domains()
        assert [(d.domid, d.kind) for d in doms] == [(0, "pv64"), (1, "pv64"), (2, "hvm")]
        d0, d1, d2 = doms
        (v00,) = d0.vcpus
        assert (v00.cr3, v00.user_cr3, v00.cr4, v00.pcpu, v00.running, v00.state) == \
            (host.d0_l4, 0x281000, 0x6F0, 0, True, "running")
        # Running on pCPU 0, whose crash-note CR3 is its arch.cr3: the hardware CR4 is observed.
        assert v00.hw_cr4 == 0x3526E0 and "pCPU 0" in v00.hw_cr4_origin
        v10, v11 = d1.vcpus
        assert d1.paused and v10.paused and (v10.state, v11.state) == ("paused", "paused")
        assert (v10.runstate, v11.runstate) == ("runnable", "blocked")
        assert d2.vcpus[0].state == "blocked" and not d2.vcpus[0].paused
        assert v10.cr3 == host.d1_l4 and v10.hw_cr4 is None and v10.cs == 0xE033
        assert d2.vcpus[0].cr3 == 0x1000 and d2.vcpus[0].kind == "hvm"  # guest-physical
        assert (d2.p2m_root, d2.p2m_format) == (0x700000, "pt")
        # Whose tables each pCPU's CR3 holds: matched against every vCPU's arch.cr3.
        assert xh.tables_of(host.d0_l4, doms) == "d0v0 kernel L4"
        assert xh.tables_of(host.m_image(host.lay["idle_pg_table"]), doms) == "idle"
        assert xh.tables_of(0x00F01000, doms) == ""
        rec = v10.record()
        assert rec["type"] == "vcpu" and rec["domid"] == 1 and rec["cr3"] == hex(host.d1_l4)


def test_domid_walk_reaches_the_marker_page(dump):
    path, host = dump
    with open_dump(path) as src:
        xh = open_host(src, xen_syms())
        dom, v = xh.find(1, 0)
        view = DomainVcpuSource(xh, dom, v)
        s = prepare(view, Options(vcpu=0))
        assert s.domain == "pv64" and s.regs.cr4_is_guest_view and "d1v0" in s.regs.origin
        m = s.walker().trace(0x7F0000000000).mapping
        assert m is not None and m.pa == 0x300000
        assert view.read(m.pa, 12) == MARKER[:12]


def test_errors_name_what_exists(dump):
    path, _host = dump
    with open_dump(path) as src:
        xh = open_host(src, xen_syms())
        with pytest.raises(OptionError, match=r"no domain 7 .*domains: 0, 1, 2"):
            xh.find(7, 0)
        with pytest.raises(OptionError, match=r"no vCPU 5 \(vCPUs: 0, 1\)"):
            xh.find(1, 5)
        dom, v = xh.find(2, 0)
        dom.p2m_root = None
        with pytest.raises(OptionError, match="no host p2m found"):
            DomainVcpuSource(xh, dom, v)


def test_vmcoreinfo_alone_lists_domain_ids(dump):
    path, _host = dump
    with open_dump(path) as src:
        xh = open_host(src)
        assert [d.domid for d in xh.domains()] == [0, 1, 2]
        with pytest.raises(OptionError, match="--xen-syms"):
            xh.find(1, 0)


def test_crashing_pcpu_from_xen_syms(tmp_path, gdb_layout):
    """kexec.c's static crashing_cpu (nm names it crashing_cpu.N) says which pCPU crashed."""
    if shutil.which("nm") is None:
        pytest.skip("no nm")
    nm = subprocess.run(["nm", xen_syms()], capture_output=True, text=True, timeout=60).stdout
    (addr,) = [int(line.split()[0], 16) for line in nm.splitlines()
               if line.split()[-1].split(".")[0] == "crashing_cpu"]
    host = Host(gdb_layout)
    pages = host.build()
    host.mem = {k: bytearray(v) for k, v in pages.items()}
    host.put(host.m_image(addr), struct.pack("<i", 1))
    path = tmp_path / "c.vmcore"
    write_kexec_elf(path, {k: bytes(v) for k, v in host.mem.items()}, _notes(host, gdb_layout))
    with open_dump(str(path)) as src:
        assert src.host.crashing is None  # two pCPUs saved: the notes alone cannot tell
        assert open_host(src, xen_syms()).crashing_pcpu() == (1, "Xen's crashing_cpu (xen-syms)")
        assert open_host(src).crashing_pcpu() == (None, "")


def _build_id_note():
    """(VA, bytes) of xen-syms' GNU build-id note, read with pyelftools (its section)."""
    from elftools.elf.elffile import ELFFile

    with open(xen_syms(), "rb") as f:
        section = ELFFile(f).get_section_by_name(".note.gnu.build-id")
        return section["sh_addr"], section.data()


def _qemu_dump_of(host, path, build_id=True, flip=False, cr4=0x3526E0, cr3=None):
    """The host as QEMU's dump-guest-memory would have it: no crash notes, one CPU in Xen with
    idle_pg_table (or ``cr3``) loaded; Xen's build-id note in its image unless not ``build_id``
    (``flip``: one byte of it changed, another build's)."""
    pages = host.build()
    host.mem = {k: bytearray(v) for k, v in pages.items()}
    va, note = _build_id_note()
    if build_id:
        host.put(host.m_image(va), note[:-1] + bytes([note[-1] ^ (0xFF if flip else 0)]))
    if cr3 is None:
        cr3 = host.m_image(host.lay["idle_pg_table"])
    host.mem.setdefault(cr3, bytearray(PAGE))  # another CR3: an L4 mapping nothing
    write_qemu_elf(path, {k: bytes(v) for k, v in host.mem.items()},
                   [dict(cr3=cr3, cr4=cr4, cr0=0x80050033, cs_flags=1 << 21)])
    return path


def test_qemu_dump_of_a_xen_host(tmp_path, gdb_layout):
    """No crash notes (QEMU dump-guest-memory of a Xen host): xen_phys_start is found by walking
    idle_pg_table's VA through a CPU's CR3 (Xen's image is in every L4), the xen-syms' build-id is
    where it says in memory, then the same domains."""
    host = Host(gdb_layout)
    path = _qemu_dump_of(host, tmp_path / "xenhost.elf")
    with open_dump(str(path)) as src:
        xh = open_host(src, xen_syms())
        assert xh.xen_phys_start == PHYS_START
        assert any("found by walking idle_pg_table" in n for n in xh.notes)
        va, note = _build_id_note()
        assert f"matches: build-id {note[16:].hex()} found at machine address " \
               f"{host.m_image(va):#x}" in " ".join(xh.notes)
        assert [(d.domid, d.kind) for d in xh.domains()] == [(0, "pv64"), (1, "pv64"),
                                                              (2, "hvm")]
        dom, v = xh.find(1, 0)
        s = prepare(DomainVcpuSource(xh, dom, v), Options(vcpu=0))
        assert s.walker().trace(0x7F0000000000).mapping.pa == 0x300000


@pytest.mark.parametrize("case, expected", [
    ("other build", r"xen-syms \S+ is not the Xen running in QEMU ELF dump xenhost\.elf: its "
                    r"build-id note at VA 0x[0-9a-f]+ \(machine address 0x[0-9a-f]+\) reads "
                    r"[0-9a-f]{40} there, the file has [0-9a-f]{40}"),
    ("no note there", r"xen-syms \S+ does not fit QEMU ELF dump xenhost\.elf: with "
                      r"xen_phys_start 0x1000000 \(derived through a CPU's CR3\) its build-id "
                      r"note is unreadable \(.*\)"),
    ("not a Xen host", r"QEMU ELF dump xenhost\.elf: xen_phys_start unknown \(no Xen CRASH_INFO "
                       r"note, and no CPU's CR3 maps Xen's image\)"),
    ("5-level paging", r"QEMU ELF dump xenhost\.elf: xen_phys_start unknown \(no Xen CRASH_INFO "
                       r"note, and no CPU's CR3 maps Xen's image\)"),
])
def test_a_host_that_is_not_this_xen_is_one_line(tmp_path, gdb_layout, case, expected):
    """A xen-syms of another build (same symbols, other build-id), a derived load address where
    the image is not, a guest with no Xen in its address space (an empty L4), a CPU in 5-level
    paging (which Xen 4.17 never uses): one line naming the file, the source and the values."""
    host = Host(gdb_layout)
    kwargs = {"other build": dict(flip=True), "no note there": dict(build_id=False),
              "not a Xen host": dict(cr3=0x00F05000),
              "5-level paging": dict(cr4=0x3526E0 | 1 << 12)}[case]
    path = _qemu_dump_of(host, tmp_path / "xenhost.elf", **kwargs)
    with open_dump(str(path)) as src:
        with pytest.raises(OptionError) as err:
            open_host(src, xen_syms())
    assert re.fullmatch(expected, str(err.value)), str(err.value)


@pytest.mark.parametrize("eptp", [0, 0x70001E], ids=["npt", "ept"])
def test_hvm_walk_through_the_host_p2m(tmp_path, gdb_layout, eptp):
    """An HVM vCPU's tables hold guest frames: each is translated through the domain's host p2m
    (d->arch.p2m->phys_table; EPT when ept.eptp is set) to the machine frame the dump holds."""
    host = Host(gdb_layout, eptp=eptp)
    pages = host.build()
    path = tmp_path / "hvm.vmcore"
    write_kexec_elf(path, pages, _notes(host, gdb_layout))
    with open_dump(str(path)) as src:
        xh = open_host(src, xen_syms())
        dom, v = xh.find(2, 0)
        assert dom.p2m_format == ("ept" if eptp else "pt")
        assert xh.p2m_entry(dom, 0x80).mfn == 0x680 and xh.p2m_entry(dom, 0x200).mfn is None
        s = prepare(DomainVcpuSource(xh, dom, v), Options(vcpu=0))
        assert s.domain == "hvm" and s.cpu.cr3 == 0x1000 and s.regs.efer == 0x500
        m = s.walker().trace(0x400000).mapping
        assert m is not None and m.pa == 0x680000
        assert src.read(m.pa, 12) == MARKER[:12]


def _p2m_type(name: str) -> int:
    """The value of Xen's p2m type ``name`` in this xen-syms (gdb reads the enumerator)."""
    out = subprocess.run(["gdb", "-nx", "-batch", "-ex", f"print/d {name}", xen_syms()],
                         capture_output=True, text=True, timeout=60).stdout
    return int(re.search(r"= (\d+)", out).group(1))


def _gfn_0x80_read_only(pages: dict) -> dict:
    """The host's pages with the HVM domain's p2m 2 MiB entry split: an L1 table whose entry for
    gfn 0x80 is read-only and typed p2m_ram_ro, the others p2m_ram_rw (EPT: sa_p2mt, bits 57:52
    per vmx.h; NPT: bits 58:52 per p2m_flags_to_type)."""
    ram_ro, ram_rw = _p2m_type("p2m_ram_ro"), _p2m_type("p2m_ram_rw")
    l2 = 0x700000 + 0x2000  # Builder: root, L3, L2 at 0x700000.. (one table each)
    l1 = bytearray(PAGE)
    for i in range(512):
        flags = P | US if i == 0x80 else P | RW | US
        struct.pack_into("<Q", l1, 8 * i, (0x600000 + i * PAGE) | flags
                         | (ram_ro if i == 0x80 else ram_rw) << 52)
    pages = dict(pages)
    pages[0x780000] = bytes(l1)
    l2page = bytearray(pages[l2])
    struct.pack_into("<Q", l2page, 0, 0x780000 | P | RW | US)
    pages[l2] = bytes(l2page)
    return pages


@pytest.mark.parametrize("eptp", [0, 0x70001E], ids=["npt", "ept"])
def test_whole_walk_shows_the_p2m_rights_of_each_mapping(tmp_path, gdb_layout, eptp):
    """A whole walk of an HVM vCPU (issue 16): the guest maps gfns 0x80-0x82 alike (one run of
    contiguous frames), but the host p2m makes 0x80 read-only (p2m_ram_ro): two records, each
    with the p2m's own rights and type; the guest's rights and verdicts stay the guest's."""
    host = Host(gdb_layout, eptp=eptp)
    pages = _gfn_0x80_read_only(host.build())
    pt = 0x604000  # the guest's PT (machine address; Builder at 0x601000: root, PDPT, PD, PT)
    leaf = struct.unpack_from("<Q", pages[pt], 0)[0]
    assert leaf >> 12 & 0xFFFFFFFFFF == 0x80
    table = bytearray(pages[pt])
    for k in (1, 2):
        struct.pack_into("<Q", table, 8 * k, leaf + k * PAGE)
    pages[pt] = bytes(table)
    path = tmp_path / "walk.vmcore"
    write_kexec_elf(path, pages, _notes(host, gdb_layout))
    with open_dump(str(path)) as src:
        xh = open_host(src, xen_syms())
        dom, v = xh.find(2, 0)
        s = prepare(DomainVcpuSource(xh, dom, v), Options(vcpu=0))
        found = list(s.walker().iter_mappings())
    maps = [(m.va, m.pa, m.size, m.effective.rwx(), m.p2m.rwx(), m.p2m.type_name)
            for m in found]
    assert maps == [(0x400000, 0x680000, PAGE, "RWX U", "R-X", "p2m_ram_ro"),
                    (0x401000, 0x681000, 2 * PAGE, "RWX U", "RWX", "p2m_ram_rw")]
    # JSON carries it (mapping_json, the --json path, and mapping_record agree); the table names
    # what the p2m denies beyond the guest's own rights, and only that.
    recs = [json.loads(render.mapping_json(m)) for m in found]
    assert recs == [render.mapping_record(m) for m in found]
    assert [r["p2m"] for r in recs] == [{"rights": "R-X", "type": "p2m_ram_ro"},
                                        {"rights": "RWX", "type": "p2m_ram_rw"}]
    rows = render.mapping_table(found)[2:]
    assert "RWX U p2m R-X p2m_ram_ro" in rows[0] and "p2m" not in rows[1], rows


@pytest.mark.parametrize("eptp", [0, 0x70001E], ids=["npt", "ept"])
def test_p2m_rights_and_type_beside_the_guests(tmp_path, gdb_layout, eptp):
    """xen-pte-p2m's engine: every guest table frame and the data frame through the host p2m,
    the p2m's rights ANDed with the guest's. The data page's p2m entry is made read-only and
    given Xen's p2m_ram_ro type (value from gdb: the enumerator in this xen-syms)."""
    out = subprocess.run(["gdb", "-nx", "-batch", "-ex", "print/d p2m_ram_ro", xen_syms()],
                         capture_output=True, text=True, timeout=60).stdout
    host = Host(gdb_layout, eptp=eptp)
    pages = _gfn_0x80_read_only(host.build())
    path = tmp_path / "p2m.vmcore"
    write_kexec_elf(path, pages, _notes(host, gdb_layout))
    with open_dump(str(path)) as src:
        xh = open_host(src, xen_syms())
        dom, v = xh.find(2, 0)
        e = xh.p2m_entry(dom, 0x80)
        assert (e.mfn, e.level, e.rwx(), e.type_name) == (0x680, 1, "R-X", "p2m_ram_ro")
        view = DomainVcpuSource(xh, dom, v)
        s = prepare(view, Options(vcpu=0))
        trace = s.walker().trace(0x400000)
        pt = p2m_trace(xh, dom, s.cpu.cr3, trace)
        assert [lvl for lvl, _e in pt.tables] == ["pml4", "pdpt", "pd", "pt"]
        assert pt.tables[0][1].gfn == 1 and all(x.mfn == x.gfn + 0x600 for _l, x in pt.tables)
        assert pt.gpa == 0x80000 and pt.data.mfn == 0x680
        # The guest maps it RW (user, NX clear); the p2m makes it read-only: combined R-X.
        assert trace.mapping.effective.write and pt.rwx() == "R-X U"
