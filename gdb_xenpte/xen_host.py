"""A crashed (or stopped) Xen host read from its memory: the domains, their vCPUs, the state Xen
last recorded for each, and the :class:`VcpuRegs` a walk of one vCPU's tables needs.

Inputs: a host source (machine memory: :class:`~gdb_xenpte.sources.kexec_elf.KexecElfSource`, a
makedumpfile copy, a live Xen under QEMU's gdbstub, a QEMU dump of the host, or any source whose
physical addresses are machine addresses) and a layout —
:class:`~gdb_xenpte.xen_syms.XenSyms` (``--xen-syms FILE``: DWARF, every field) or, without it,
:class:`~gdb_xenpte.xen_syms.VmcoreinfoLayout` (the dump's VMCOREINFO_XEN: domain ids only).

Facts used (:data:`gdb_xenpte.xen.FACTS`): ``virt_to_maddr`` (a Xen
VA in the image's GiB is ``xen_phys_start + va - XEN_VIRT_START``; every other VA is translated
through ``idle_pg_table``), ``domain_list``, ``domain_kind``, ``vcpu_pagetables``, ``vcpu_state``,
``curr_vcpu``. Observed values stay observed: a PV vCPU that a pCPU runs (``is_running``) or
holds (``per_cpu(curr_vcpu)``: Xen's lazy switch leaves a vCPU's state on a pCPU that went idle),
where that pCPU's CR3 is the vCPU's ``arch.cr3``, gets that pCPU's CR4 — the hardware value, from
the crash notes or the CPU itself — with an origin saying so; the others get ``ctrlreg[4]`` (what
the guest sees), marked as such, and the session derives the hardware value from Xen's policy.
Without CRASH_INFO (live, a QEMU dump), ``xen_phys_start`` is where a CPU's CR3 maps
``idle_pg_table``'s VA (every L4 carries Xen's slots), stated in :attr:`XenHost.notes`. A
xen-syms with a GNU build-id note (xen/arch/x86/xen.lds.S keeps it in the image between
``__note_gnu_build_id_start`` and ``_end`` when built with BUILD_ID) must find the same bytes at
that place in memory.

HVM/PVH vCPUs are walked from their own CR0/CR3/CR4/EFER (``arch.hvm.guest_cr``), every table
frame translated guest frame -> machine frame through the domain's host p2m
(``d->arch.p2m->phys_table``; EPT or long-mode format); each mapping carries the p2m's own
rights and type for its frames (``second_stage``), beside the guest's.

Failure modes: :class:`~gdb_xenpte.errors.OptionError` for a domain or vCPU that does not exist,
a layout without what is asked (names ``--xen-syms``), an HVM/PVH domain without a host p2m, a
source without CRASH_INFO's xen_phys_start where no CPU's CR3 maps Xen's image either (not a Xen
host), or a xen-syms whose build-id is not the one in memory (another build);
:class:`~gdb_xenpte.errors.UnreadableMemory` (naming the VA and the machine address) for Xen
memory the dump lacks.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .arch import CR4
from .errors import OptionError, UnreadableMemory
from .model import Stage2
from .sources.base import PhysSource, VcpuRegs
from .xen_syms import MissingLayout, VmcoreinfoLayout, XenSyms, first_symbol

__all__ = ["DomainVcpuSource", "HostDomain", "HostVcpu", "P2mEntry", "P2mTrace", "XenHost",
           "open_host", "p2m_trace"]

GIB = 1 << 30
_ADDR = 0x000FFFFFFFFFF000
_P, _US, _PS = 1, 1 << 2, 1 << 7
_RUNSTATES = {0: "running", 1: "runnable", 2: "blocked", 3: "offline"}
_VPF_BLOCKED, _VPF_DOWN = 1 << 0, 1 << 1
_CDF_HVM = 1 << 0
_EMU_PIC = 1 << 5
_TF_KERNEL_MODE = 1 << 0
_EFER_LMA = 1 << 10
_MAX_DOMAINS = 1 << 15


@dataclass(frozen=True)
class HostVcpu:
    """One vCPU as Xen last recorded it.

    :param cr3: PV: machine address of the kernel top-level table (``guest_table``); HVM/PVH:
        the guest's CR3 (guest-physical).
    :param cr4: the CR4 the guest sees (PV ``ctrlreg[4]``, HVM ``guest_cr[4]``).
    :param hw_cr4: the hardware CR4 it ran with, when observed (a pCPU running it saved it).
    :param state: ``running`` (a pCPU runs it), ``paused`` (its or its domain's pause count is
        non-zero), else Xen's runstate: ``runnable``, ``blocked``, ``offline``.
    :param runstate: Xen's ``runstate.state`` as recorded (a paused vCPU is ``offline`` there).
    """

    domid: int
    vcpu: int
    kind: str
    cr3: Optional[int]
    cr4: Optional[int]
    user_cr3: Optional[int] = None
    cr0: Optional[int] = None
    efer: Optional[int] = None
    hw_cr4: Optional[int] = None
    hw_cr4_origin: str = ""
    cs: Optional[int] = None
    state: str = "unknown"
    paused: bool = False
    runstate: str = "unknown"
    running: bool = False
    pcpu: Optional[int] = None
    in_kernel: Optional[bool] = None
    address: int = 0
    notes: Tuple[str, ...] = ()
    hw_cr3: Optional[int] = None  # v->arch.cr3: what Xen loads into CR3 to run it

    def record(self) -> Dict[str, object]:
        """The ``{"type": "vcpu", ...}`` JSON record (addresses as hex strings)."""
        hx = lambda v: None if v is None else f"{v:#x}"
        return {"type": "vcpu", "domid": self.domid, "vcpu": self.vcpu, "kind": self.kind,
                "cr3": hx(self.cr3), "user_cr3": hx(self.user_cr3), "cr4": hx(self.cr4),
                "hw_cr4": hx(self.hw_cr4), "hw_cr4_origin": self.hw_cr4_origin or None,
                "cs": hx(self.cs), "state": self.state, "runstate": self.runstate,
                "paused": self.paused,
                "running": self.running, "pcpu": self.pcpu, "hw_cr3": hx(self.hw_cr3),
                "struct_vcpu": hx(self.address),
                "notes": list(self.notes)}


@dataclass
class HostDomain:
    """One domain: id, kind (``pv64``, ``pv32``, ``hvm``, ``pvh``), state and vCPUs."""

    domid: int
    kind: Optional[str]
    address: int
    max_vcpus: Optional[int] = None
    paused: bool = False
    dying: bool = False
    vcpus: List[HostVcpu] = field(default_factory=list)
    notes: Tuple[str, ...] = ()
    p2m_root: Optional[int] = None  # HVM/PVH: machine address of the host p2m's top table
    p2m_format: Optional[str] = None  # "ept" (Intel VMX HAP) or "pt" (AMD NPT, shadow)


@dataclass(frozen=True)
class P2mEntry:
    """How a guest frame is backed: the host p2m's leaf for it, and the rights of its path.

    :param mfn: the machine frame (None: not mapped; then ``why`` says where the walk stopped).
    :param read/write/exec: the p2m's permissions, combined over its levels (EPT: R/W/X bits;
        NPT: P, R/W, NX, the long-mode format).
    :param type_name: Xen's p2m type of the leaf (``p2m_ram_rw`` ...), from xen-syms' enum.
    """

    gfn: int
    mfn: Optional[int]
    fmt: str
    raw: int = 0
    level: int = 0
    read: bool = False
    write: bool = False
    exec: bool = False
    type_value: Optional[int] = None
    type_name: str = ""
    why: str = ""

    def rwx(self) -> str:
        return ("R" if self.read else "-") + ("W" if self.write else "-") + \
            ("X" if self.exec else "-")

    def record(self) -> Dict[str, object]:
        hx = lambda v: None if v is None else f"{v:#x}"
        return {"type": "p2m", "gfn": hx(self.gfn), "mfn": hx(self.mfn), "format": self.fmt,
                "level": self.level, "raw": hx(self.raw), "rights": self.rwx(),
                "p2m_type": self.type_name or None, "why": self.why or None}


@dataclass(frozen=True)
class P2mTrace:
    """A guest VA through the guest's tables and the host p2m: each guest table's frame and the
    data frame, as the p2m backs them, and the rights both allow together.

    :param tables: ``(level name, P2mEntry)`` for every guest table the walk read (top first).
    :param data: the p2m entry of the frame the VA maps to (None when the guest walk stopped).
    :param read/write/exec: the combined rights: what the guest's tables allow (for the access
        kind) and the p2m allows; a fault in either is a fault.
    """

    va: int
    gpa: Optional[int]
    tables: Tuple[Tuple[str, P2mEntry], ...]
    data: Optional[P2mEntry]
    read: bool = False
    write: bool = False
    exec: bool = False
    user: bool = False

    def rwx(self) -> str:
        return ("R" if self.read else "-") + ("W" if self.write else "-") + \
            ("X" if self.exec else "-") + (" U" if self.user else " S")


def p2m_trace(host: "XenHost", dom: HostDomain, cr3: int, trace) -> P2mTrace:
    """Combine a guest trace (:meth:`gdb_xenpte.walk.Walker.trace` of an HVM/PVH vCPU) with the
    host p2m: every table frame and the data frame looked up, rights ANDed (guest's R/W/X after
    its own levels, p2m's R/W/X; the p2m applies to every access, whatever the CPL)."""
    tables = []
    gfn = (cr3 & _ADDR) >> 12
    for step in trace.steps:
        tables.append((step.level, host.p2m_entry(dom, gfn)))
        gfn = (step.raw & _ADDR) >> 12
    m = trace.mapping
    if m is None:
        return P2mTrace(trace.va, None, tuple(tables), None)
    leaf = trace.steps[-1].raw
    size = m.page_size
    gpa = (leaf & _ADDR & ~(size - 1)) | (trace.va & (size - 1))
    data = host.p2m_entry(dom, gpa >> 12)
    ok = data.mfn is not None
    return P2mTrace(trace.va, gpa, tuple(tables), data, ok and data.read,
                    ok and data.write and m.effective.write,
                    ok and data.exec and m.effective.exec, m.effective.user)


class XenHost:
    """Xen's domains and vCPUs in a host's machine memory.

    :param source: machine memory with the Xen crash notes (``source.host``) or, for a live or
        other host, any source whose addresses are machine addresses.
    :param layout: :class:`XenSyms` or :class:`VmcoreinfoLayout`.
    :param xen_phys_start: override for CRASH_INFO's value.
    """

    def __init__(self, source: PhysSource, layout, xen_phys_start: Optional[int] = None):
        self.source = source
        self.layout = layout
        self.host = getattr(source, "host", None)
        self.notes: List[str] = []
        self._tables: Dict[int, bytes] = {}
        self._curr: Optional[Dict[int, int]] = None
        idle = first_symbol(layout, ("idle_pg_table", "pgd_l4"))
        if idle is None:
            raise OptionError(f"{layout.name} names no idle_pg_table: give --xen-syms FILE")
        base = first_symbol(layout, ("__image_base__", "__XEN_VIRT_START"))
        # XEN_VIRT_START is GiB-aligned and the image lies in that GiB (virt_to_maddr fact).
        self.xen_virt_start = base if base is not None else idle & ~(GIB - 1)
        info = self.host.info if self.host is not None else None
        if xen_phys_start is None and info is not None:
            xen_phys_start = info.xen_phys_start
        self.phys_start_derived = xen_phys_start is None
        if xen_phys_start is None:
            xen_phys_start = self._phys_start_from_cpus(idle)
        self.xen_phys_start = xen_phys_start
        self.idle_pg_table = self._image_maddr(idle)
        self._check_build_id()
        if isinstance(layout, VmcoreinfoLayout):
            self.notes.append("layout from VMCOREINFO_XEN only: domain ids and kinds need "
                              "--xen-syms for vCPU state")

    # -- Xen virtual memory ----------------------------------------------------------------------

    def _walk(self, root: int, va: int, present: int = _P) -> Tuple[Optional[int], str]:
        """``va`` through the 4-level tables at machine address ``root``: ``(address, "")`` or
        ``(None, why)``. ``present``: the bits of which one makes an entry present (EPT: R/W/X)."""
        table = root & _ADDR
        try:
            for level, shift in ((4, 39), (3, 30), (2, 21), (1, 12)):
                entry = self._entry(table, va >> shift & 511)
                if not entry & present:
                    return None, f"L{level} entry {entry:#x} is not present"
                if level in (3, 2) and entry & _PS:
                    size = 1 << shift
                    return (entry & _ADDR & ~(size - 1)) | (va & (size - 1)), ""
                table = entry & _ADDR
        except UnreadableMemory as err:
            return None, str(err)
        return table | (va & 0xFFF), ""

    def _phys_start_from_cpus(self, idle: int) -> int:
        """No CRASH_INFO (a QEMU dump of a Xen host, a live Xen): every L4 carries Xen's slots,
        so any CPU's CR3 maps Xen's image; where ``idle_pg_table`` lands gives xen_phys_start."""
        for regs in self.source.vcpus():
            # Xen (4.17) runs with 4-level paging only: a CPU in 5-level paging runs no Xen.
            if regs.cr3 is None or regs.long_mode is False or (regs.cr4 or 0) & CR4.LA57:
                continue
            maddr, _why = self._walk(regs.cr3, idle)
            if maddr is not None:
                self.notes.append(f"xen_phys_start {maddr - (idle - self.xen_virt_start):#x} "
                                  f"found by walking idle_pg_table's VA through CPU "
                                  f"{regs.index}'s CR3 {regs.cr3:#x} (no Xen CRASH_INFO note)")
                return maddr - (idle - self.xen_virt_start)
        raise OptionError(f"{self.source.name}: xen_phys_start unknown (no Xen CRASH_INFO note, "
                          "and no CPU's CR3 maps Xen's image)")

    def _check_build_id(self) -> None:
        """The xen-syms must be the running Xen's: its GNU build-id note (read-only data, never
        patched at boot) must be the bytes at the same place in the host's memory.

        :raises OptionError: naming the file, the source and both ids, if they differ.
        """
        note = getattr(self.layout, "build_id_note", lambda: None)()
        if note is None:
            return
        va, data = note
        try:
            seen = self.source.read(self._image_maddr(va), len(data))
        except UnreadableMemory as err:
            if self.phys_start_derived:  # a CR3 mapped idle_pg_table's VA, but not to Xen
                raise OptionError(f"{self.layout.name} does not fit {self.source.name}: with "
                                  f"xen_phys_start {self.xen_phys_start:#x} (derived through a "
                                  f"CPU's CR3) its build-id note is unreadable ({err})") from None
            self.notes.append(f"build-id not checked: {err}")
            return
        if seen != data:
            raise OptionError(f"{self.layout.name} is not the Xen running in {self.source.name}: "
                              f"its build-id note at VA {va:#x} (machine address "
                              f"{self._image_maddr(va):#x}) reads {seen[-20:].hex()} there, the "
                              f"file has {data[-20:].hex()}")
        self.notes.append(f"{self.layout.name} matches: build-id {data[16:].hex()} found at "
                          f"machine address {self._image_maddr(va):#x}")

    def _image_maddr(self, va: int) -> int:
        return va - self.xen_virt_start + self.xen_phys_start

    def _entry(self, table: int, index: int) -> int:
        page = self._tables.get(table)
        if page is None:
            page = self.source.read(table, 4096)
            self._tables[table] = page
        return struct.unpack_from("<Q", page, index * 8)[0]

    def maddr(self, va: int) -> int:
        """The machine address of Xen virtual address ``va``.

        :raises UnreadableMemory: if a table on the way is not in the dump or ``va`` is unmapped.
        """
        if va >> 30 == self.xen_virt_start >> 30:
            return self._image_maddr(va)
        maddr, why = self._walk(self.idle_pg_table, va)
        if maddr is None:
            raise UnreadableMemory(self.source.name, va, f"Xen VA {va:#x} is not mapped in "
                                   f"idle_pg_table ({why})")
        return maddr

    def read(self, va: int, size: int) -> bytes:
        """``size`` bytes at Xen VA ``va`` (page by page through :meth:`maddr`)."""
        out = []
        while size > 0:
            take = min(size, 4096 - (va & 0xFFF))
            maddr = self.maddr(va)
            try:
                out.append(self.source.read(maddr, take))
            except UnreadableMemory as err:
                reason = err.detail.rsplit(" at physical address", 1)[0]
                raise UnreadableMemory(err.what, err.paddr, f"Xen VA {va:#x}: {reason}") from None
            va += take
            size -= take
        return b"".join(out)

    def _u(self, va: int, size: int = 8) -> int:
        return int.from_bytes(self.read(va, size), "little")

    # -- domains ---------------------------------------------------------------------------------

    def _get(self, struct_name: str, path: str, data: bytes, index: int = 0,
             missing=None):
        try:
            return self.layout.field(struct_name, path).decode(data, index)
        except MissingLayout:
            return missing

    def domains(self) -> List[HostDomain]:
        """Every domain on ``domain_list``, in list order (by domain id), with its vCPUs."""
        head = self.layout.symbol("domain_list")
        next_field = self.layout.field("domain", "next_in_list")
        try:
            size = self.layout.size("domain")
        except MissingLayout:
            size = next_field.offset + 8
        out: List[HostDomain] = []
        seen = set()
        d = self._u(head)
        while d and d not in seen and len(out) < _MAX_DOMAINS:
            seen.add(d)
            data = self.read(d, size)
            out.append(self._domain(d, data))
            d = next_field.decode(data)
        return out

    def _domain(self, address: int, data: bytes) -> HostDomain:
        g = lambda path: self._get("domain", path, data)
        domid = g("domain_id")
        options = g("options")
        kind = None
        if options is not None:
            if options & _CDF_HVM:
                emu = g("arch.emulation_flags")
                kind = "hvm" if emu is None or emu & _EMU_PIC else "pvh"
            else:
                kind = "pv32" if g("arch.pv.is_32bit") else "pv64"
        paused = bool(g("pause_count") or g("controller_pause_count"))
        dom = HostDomain(domid, kind, address, g("max_vcpus"), paused, bool(g("is_dying")))
        if kind in ("hvm", "pvh"):
            self._p2m(dom, g("arch.p2m"))
        vcpu_array = g("vcpu")
        if vcpu_array is None or dom.max_vcpus is None:
            return dom
        for i in range(min(dom.max_vcpus, 4096)):
            try:
                v = self._u(vcpu_array + 8 * i)
            except UnreadableMemory as err:
                dom.notes += (f"d->vcpu[{i}] unreadable: {err}",)
                break
            if v:
                dom.vcpus.append(self._vcpu(dom, v))
        return dom

    def _p2m(self, dom: HostDomain, p2m: Optional[int]) -> None:
        """The host p2m's root and entry format (``p2m_domain.phys_table``; EPT when
        ``ept.eptp`` is set, which Xen does only for VMX with HAP)."""
        if not p2m:
            dom.notes += ("no host p2m (d->arch.p2m): guest-physical tables cannot be walked",)
            return
        try:
            data = self.read(p2m, self.layout.size("p2m_domain"))
            root = self._get("p2m_domain", "phys_table", data)
            eptp = self._get("p2m_domain", "ept.eptp", data)
        except (UnreadableMemory, MissingLayout) as err:
            dom.notes += (f"host p2m unreadable: {err}",)
            return
        if root:
            dom.p2m_root = root << 12
            dom.p2m_format = "ept" if eptp else "pt"

    def p2m_entry(self, dom: HostDomain, gfn: int) -> P2mEntry:
        """The host p2m's view of guest frame ``gfn``: machine frame (None: unmapped), combined
        rights, type; the one p2m lookup (walks translate their frames through it too).

        EPT entries are present when any of R/W/X (bits 2:0) is set, others when P (bit 0) is;
        bit 7 makes an L3/L2 entry a leaf (1 GiB / 2 MiB); frames are bits 51:12 (SDM Vol. 3C
        §29.3.2 for EPT; AMD APM Vol. 2 §15.25 for NPT, which uses the long-mode format).

        EPT bit positions (r, w, x, sa_p2mt) are read from xen-syms' ``ept_entry_t``; the NPT
        (p2m-pt) type is PTE bits 58:52 (``p2m_flags_to_type``: flags >> 12 & 0x7f, flag bit 12 =
        PTE bit 52) and its rights the long-mode P/RW/NX bits.
        """
        fmt = dom.p2m_format or "none"
        if dom.p2m_root is None:
            return P2mEntry(gfn, None, fmt, why="no host p2m")
        ept = fmt == "ept"
        if ept:
            fields = {n: self.layout.field("ept_entry_t", n) for n in ("r", "w", "x", "sa_p2mt")}
            get = lambda raw, n: fields[n].decode(raw.to_bytes(8, "little"))
        read = write = execute = True
        table, gpa = dom.p2m_root, gfn << 12
        for level, shift in ((4, 39), (3, 30), (2, 21), (1, 12)):
            try:
                raw = self._entry(table, gpa >> shift & 511)
            except UnreadableMemory as err:
                return P2mEntry(gfn, None, fmt, level=level, why=str(err))
            if ept:
                r, w, x = get(raw, "r"), get(raw, "w"), get(raw, "x")
                present = r or w or x
            else:
                # NPT: the long-mode format, every nested access a user access (U/S=1 needed).
                r, w, x = raw & _P and raw & _US, raw & 2, not raw >> 63 & 1
                present = raw & _P
            if not present:
                return P2mEntry(gfn, None, fmt, raw, level, why=f"L{level} entry {raw:#x} is "
                                                                 "not present")
            read, write, execute = read and bool(r), write and bool(w), execute and bool(x)
            if level == 1 or (level in (3, 2) and raw & _PS):
                size = 1 << shift
                mfn = ((raw & _ADDR & ~(size - 1)) | (gpa & (size - 1))) >> 12
                value = get(raw, "sa_p2mt") if ept else raw >> 52 & 0x7F
                try:
                    name = self.layout.enum_names("p2m_type_t").get(value, "")
                except (MissingLayout, AttributeError):
                    name = ""
                return P2mEntry(gfn, mfn, fmt, raw, level, read, write, execute, value, name)
            table = raw & _ADDR
        raise AssertionError("unreachable")

    def _vcpu(self, dom: HostDomain, address: int) -> HostVcpu:
        data = self.read(address, self.layout.size("vcpu"))
        g = lambda path, i=0: self._get("vcpu", path, data, i)
        vid, pcpu = g("vcpu_id"), g("processor")
        runstate = _RUNSTATES.get(g("runstate.state"), "unknown")
        running = bool(g("is_running"))
        paused = dom.paused or bool(g("pause_count"))
        notes: List[str] = []
        cs = g("arch.user_regs.cs")
        if dom.kind in ("pv64", "pv32"):
            cr3 = (g("arch.guest_table") or 0) << 12 or None
            user = (g("arch.guest_table_user") or 0) << 12 or None if dom.kind == "pv64" else None
            cr4, cr0, efer = g("arch.pv.ctrlreg", 4), g("arch.pv.ctrlreg", 0), None
            flags = g("arch.flags")
            in_kernel = None if flags is None else bool(flags & _TF_KERNEL_MODE)
        else:
            cr0, cr3, cr4 = g("arch.hvm.guest_cr", 0), g("arch.hvm.guest_cr", 3), \
                g("arch.hvm.guest_cr", 4)
            efer, user, in_kernel = g("arch.hvm.guest_efer"), None, None
            notes.append("guest-physical tables: walked through the host p2m"
                         + (f" ({dom.p2m_format})" if dom.p2m_format else " (none found)"))
        hw_cr3 = g("arch.cr3")
        held = self._held_by().get(address)
        hw_cr4, hw_origin = self._observed_cr4(hw_cr3, running or held is not None,
                                               pcpu if held is None else held,
                                               "running" if running else "holding")
        if running and hw_cr4 is None:
            notes.append("marked running, but no pCPU's crash-note CR3 is its arch.cr3")
        state = "running" if running else "paused" if paused else runstate
        return HostVcpu(dom.domid, vid, dom.kind or "unknown", cr3, cr4, user, cr0, efer, hw_cr4,
                        hw_origin, cs, state, paused, runstate, running, pcpu, in_kernel, address,
                        tuple(notes), hw_cr3)

    def _observed_cr4(self, arch_cr3: Optional[int], running: bool, pcpu: Optional[int],
                      how: str = "running") -> Tuple[Optional[int], str]:
        if not running or arch_cr3 is None or pcpu is None:
            return None, ""
        what = ("was running this vCPU" if how == "running" else
                "holds this vCPU's state (per_cpu curr_vcpu: Xen's lazy switch, e.g. idle)")
        for regs in self._cpus():
            if regs.index == pcpu and regs.cr3 is not None and regs.cr4 is not None \
                    and regs.cr3 & _ADDR == arch_cr3 & _ADDR:
                return regs.cr4, (f"{regs.origin or f'pCPU {pcpu}'}: that pCPU {what} "
                                  f"(its CR3 {regs.cr3:#x} is v->arch.cr3)")
        return None, ""

    def _held_by(self) -> Dict[int, int]:
        """``struct vcpu`` address -> the pCPU whose state it is (``per_cpu(curr_vcpu)``, fact
        ``curr_vcpu``), for the pCPUs the source has registers of; empty without xen-syms."""
        if self._curr is not None:
            return self._curr
        self._curr = {}
        layout = self.layout
        if not (isinstance(layout, XenSyms) and layout.has_symbol("per_cpu__curr_vcpu")
                and layout.has_symbol("__per_cpu_offset")):
            return self._curr
        var, offsets = layout.symbol("per_cpu__curr_vcpu"), layout.symbol("__per_cpu_offset")
        for regs in self._cpus():
            try:
                v = self._u((var + self._u(offsets + 8 * regs.index)) & (1 << 64) - 1)
            except UnreadableMemory:
                continue
            if v:
                self._curr[v] = regs.index
        return self._curr

    def holder(self, cr3: Optional[int],
               domains: Sequence[HostDomain]) -> Optional[Tuple[HostDomain, HostVcpu]]:
        """The vCPU whose ``arch.cr3`` (what Xen loads to run it) a pCPU's CR3 is, if any."""
        if cr3 is None:
            return None
        frame = cr3 & _ADDR
        for d in domains:
            for v in d.vcpus:
                if v.hw_cr3 is not None and v.hw_cr3 & _ADDR == frame:
                    return d, v
        return None

    @staticmethod
    def on_kernel_l4(cr3: Optional[int], dom: HostDomain, v: HostVcpu) -> bool:
        """A PV64 vCPU's kernel L4 (``guest_table``, the root a walk of it starts from) is
        ``cr3``: a pCPU holding it walks as that vCPU does."""
        return (dom.kind == "pv64" and cr3 is not None and v.cr3 is not None
                and cr3 & _ADDR == v.cr3 & _ADDR)

    def tables_of(self, cr3: Optional[int], domains: Sequence[HostDomain]) -> str:
        """Whose page tables a pCPU's CR3 holds: ``"d2v0"`` (a vCPU's ``arch.cr3``; ``user``
        or ``kernel`` L4 said for PV64), ``"idle"`` (``idle_pg_table``), else ``""``."""
        if cr3 is None:
            return ""
        if cr3 & _ADDR == self.idle_pg_table & _ADDR:
            return "idle"
        held = self.holder(cr3, domains)
        if held is None:
            return ""
        d, v = held
        if d.kind != "pv64":
            return f"d{v.domid}v{v.vcpu}"
        which = ("user L4" if cr3 & _ADDR == (v.user_cr3 or -1) else
                 "kernel L4" if self.on_kernel_l4(cr3, d, v) else "arch.cr3")
        return f"d{v.domid}v{v.vcpu} {which}"

    def crashing_pcpu(self) -> Tuple[Optional[int], str]:
        """The crashing pCPU: xen-syms' ``crashing_cpu`` if readable, else the notes' inference."""
        if isinstance(self.layout, XenSyms) and self.layout.has_symbol("crashing_cpu"):
            try:
                value = int.from_bytes(self.read(self.layout.symbol("crashing_cpu"), 4),
                                       "little", signed=True)
                if value >= 0:
                    return value, "Xen's crashing_cpu (xen-syms)"
            except UnreadableMemory:
                pass
        if self.host is not None and self.host.crashing is not None:
            return self.host.crashing, self.host.crashing_why
        return None, ""

    def xen_cr4(self) -> Optional[int]:
        """Xen's own CR4 (``mmu_cr4_features``) read from the dump, or None (no xen-syms, or
        not in the dump): an observation the PV CR4 derivation can start from."""
        if not isinstance(self.layout, XenSyms) or not self.layout.has_symbol("mmu_cr4_features"):
            return None
        try:
            return self._u(self.layout.symbol("mmu_cr4_features"))
        except UnreadableMemory:
            return None

    def find(self, domid: int, vcpu: int) -> Tuple[HostDomain, HostVcpu]:
        """Domain ``domid``'s vCPU ``vcpu``.

        :raises OptionError: naming the domains or vCPUs there are.
        """
        doms = self.domains()
        dom = next((d for d in doms if d.domid == domid), None)
        if dom is None:
            raise OptionError(f"no domain {domid} on {self.source.name} (domains: "
                              f"{', '.join(str(d.domid) for d in doms) or 'none'})")
        v = next((x for x in dom.vcpus if x.vcpu == vcpu), None)
        if v is None:
            if not dom.vcpus:
                raise OptionError(f"domain {domid}: no vCPU state ({self.layout.name} lacks "
                                  "struct vcpu: give --xen-syms FILE)")
            raise OptionError(f"domain {domid} has no vCPU {vcpu} (vCPUs: "
                              f"{', '.join(str(x.vcpu) for x in dom.vcpus)})")
        return dom, v

    def vcpu_regs(self, v: HostVcpu) -> VcpuRegs:
        """The registers a walk of ``v``'s tables starts from, with their origin.

        :raises OptionError: for an HVM/PVH vCPU (guest-physical tables) or one with no CR3.
        """
        if v.kind in ("hvm", "pvh"):
            return self._hvm_regs(v)
        if v.kind not in ("pv64", "pv32"):
            raise OptionError(f"d{v.domid}v{v.vcpu}: domain kind unknown ({self.layout.name} "
                              "lacks struct domain's options): give --xen-syms FILE")
        if v.cr3 is None:
            raise OptionError(f"d{v.domid}v{v.vcpu} has no guest_table (vCPU not initialised)")
        where = f"d{v.domid}v{v.vcpu} in {self.source.name} ({self.layout.name})"
        cr0, cr0_from = self._xen_cr0(v.pcpu)
        notes = list(v.notes) + [f"CR3 is v->arch.guest_table (the guest's kernel L4), state "
                                 f"{v.state}{', paused' if v.paused else ''}"
                                 + (f", pCPU {v.pcpu}" if v.pcpu is not None else "")]
        if cr0_from:
            notes.append(f"CR0 {cr0:#x} is Xen's (a PV guest runs under it), from {cr0_from}")
        if v.hw_cr4 is not None and v.kind == "pv64":
            notes.append(f"CR4 {v.hw_cr4:#x} observed: {v.hw_cr4_origin}; the guest sees "
                         f"{v.cr4:#x}")
            return VcpuRegs(index=v.vcpu, cr0=cr0, cr3=v.cr3, cr4=v.hw_cr4, cs=0xE008,
                            long_mode=True, user_cr3=v.user_cr3,
                            notes=tuple(notes), origin=where + ", CR4 from the crash notes",
                            xen_cr4=self.xen_cr4())
        if v.hw_cr4 is not None:
            notes.append(f"pCPU {v.pcpu} ran it with CR4 {v.hw_cr4:#x} ({v.hw_cr4_origin}); a "
                         "32-bit PV walk starts from the guest's own L3, so the guest view is "
                         "used")
        notes.append("CR4 is the guest-visible ctrlreg[4]; the hardware value is derived")
        xen_cr4 = self.xen_cr4()
        if xen_cr4 is not None:
            notes.append(f"Xen's own CR4 in this dump: {xen_cr4:#x} (mmu_cr4_features, read "
                         "through xen-syms)")
        return VcpuRegs(index=v.vcpu, cr0=cr0, cr3=v.cr3, cr4=v.cr4, cs=v.cs,
                        long_mode=True if v.kind == "pv64" else False, user_cr3=v.user_cr3,
                        cr4_is_guest_view=True, notes=tuple(notes), origin=where,
                        xen_cr4=xen_cr4)


    def _hvm_regs(self, v: HostVcpu) -> VcpuRegs:
        """An HVM/PVH vCPU's own control registers (arch.hvm.guest_cr, guest_efer)."""
        if v.cr0 is None or v.cr3 is None:
            raise OptionError(f"d{v.domid}v{v.vcpu} has no recorded guest CR0/CR3")
        where = f"d{v.domid}v{v.vcpu} in {self.source.name} ({self.layout.name})"
        long_mode = None if v.efer is None else bool(v.efer & _EFER_LMA)
        notes = list(v.notes) + [
            f"CR0/CR3/CR4/EFER are the guest's own (v->arch.hvm.guest_cr[], guest_efer), state "
            f"{v.state}", "table frames are guest frames, each translated to a machine frame "
            "through the domain's host p2m; a large guest page is located by its first frame",
            "each mapping's p2m rights and type are its own (JSON 'p2m'; the table's rights "
            "column says 'p2m R-X ...' where the p2m denies what the guest allows); one address "
            "through every level of both: xen-pte-p2m"]
        return VcpuRegs(index=v.vcpu, cr0=v.cr0, cr3=v.cr3, cr4=v.cr4, efer=v.efer,
                        long_mode=long_mode, notes=tuple(notes), origin=where)

    def _cpus(self) -> List[VcpuRegs]:
        """The physical CPUs' registers: a crash dump's pCPUs, a QEMU dump's or a live Xen's
        vCPUs (which are Xen's pCPUs)."""
        return [r for r in self.source.vcpus() if r.online]

    def _xen_cr0(self, pcpu: Optional[int]) -> Tuple[Optional[int], str]:
        """Xen's CR0 from the crash notes: the vCPU's pCPU's, else the first saved one's."""
        saved = [r for r in self._cpus() if r.cr0]
        saved.sort(key=lambda r: r.index != pcpu)
        if not saved:
            return None, ""
        return saved[0].cr0, saved[0].origin or f"pCPU {saved[0].index}"


class DomainVcpuSource(PhysSource):
    """The host's machine memory seen as one PV vCPU's: reads go to the host source, the only
    vCPU is the one asked for, the domain kind and Xen version are the host's facts.

    :param host: the :class:`XenHost`.
    :param dom: the domain; :param vcpu: its vCPU.
    """

    second_stage = None  # HVM/PVH: gfn -> the host p2m's rights (walk.Walker shows them)

    def __init__(self, host: XenHost, dom: HostDomain, vcpu: HostVcpu):
        self._host = host
        self.host_view = host  # the XenHost (p2m lookups for HVM/PVH)
        self.host_domain = dom
        self._src = host.source
        self._regs = host.vcpu_regs(vcpu)
        self.domain = dom.kind
        self.xen_version = self._src.xen_version
        self.translate_frame = None  # PV: tables hold MFNs and the dump is machine memory
        if dom.kind in ("hvm", "pvh"):
            if dom.p2m_root is None:
                raise OptionError(f"domain {dom.domid} ({dom.kind}): no host p2m found, so its "
                                  "guest-physical tables cannot be walked")
            self.domain = "hvm"  # PVH is an HVM container: the guest's own CR4 governs
            # The walker asks for a leaf's frame and then its p2m rights: one p2m walk for both.
            entry = functools.lru_cache(maxsize=4096)(lambda gfn: host.p2m_entry(dom, gfn))
            self.translate_frame = lambda gfn: entry(gfn).mfn
            self.second_stage = lambda gfn: _stage2(entry(gfn))
        self.current_vcpu = vcpu.vcpu
        self.name = f"domain {dom.domid} vCPU {vcpu.vcpu} of {self._src.name}"

    @property
    def identity(self) -> Optional[tuple]:
        """The host's, per domain: an HVM/PVH domain's frames go through its own p2m."""
        host = self._src.identity
        return None if host is None else host + ("domain", self.host_domain.domid)

    def read(self, paddr: int, size: int) -> bytes:
        return self._src.read(paddr, size)

    def ranges(self) -> Sequence[Tuple[int, int]]:
        return self._src.ranges()

    def vcpus(self) -> List[VcpuRegs]:
        return [self._regs]

    def describe(self) -> str:
        return f"{self.name} (as Xen recorded it, {self._host.layout.name}); " + \
            self._src.describe()

    def close(self) -> None:
        """Close the host source and the xen-syms file."""
        self._host.layout.close()
        self._src.close()

    def __enter__(self):
        self._held = self._src.hold()
        self._held.__enter__()  # a live host: PhyMemMode on for the whole walk
        return self

    def __exit__(self, *exc):
        try:
            held, self._held = getattr(self, "_held", None), None
            if held is not None:
                held.__exit__(*exc)
        finally:
            self.close()
        return False


def _stage2(entry: P2mEntry) -> Optional[Stage2]:
    """A p2m entry's rights and type as a mapping carries them (None: the frame is unmapped)."""
    if entry.mfn is None:
        return None
    return Stage2(entry.read, entry.write, entry.exec, entry.type_name)


def open_host(source: PhysSource, xen_syms: Optional[str] = None) -> XenHost:
    """A :class:`XenHost` for ``source``: DWARF layouts from ``xen_syms`` if given, else the
    dump's VMCOREINFO_XEN. Any source of machine memory works with ``xen_syms`` (a QEMU dump of
    a Xen host: xen_phys_start is then found through a CPU's CR3).

    :raises OptionError: if neither is available.
    """
    if xen_syms:
        return XenHost(source, XenSyms(xen_syms))
    host = getattr(source, "host", None)
    if host is None or host.vmcoreinfo_xen is None:
        raise OptionError(f"{source.name} has no VMCOREINFO_XEN note: give --xen-syms FILE")
    return XenHost(source, VmcoreinfoLayout(host.vmcoreinfo_xen))

