"""The notes of a Xen host's kexec crash dump: every pCPU's registers, Xen's build facts, and
the VMCOREINFO(_XEN) texts; shared by the ELF vmcore reader and the kdump (makedumpfile) reader.

Facts (:data:`gdb_xenpte.xen.FACTS`): per pCPU, a ``CORE`` ``NT_PRSTATUS`` (ELF_Prstatus,
``pr_reg`` at byte 112 in Linux x86_64 order) followed by a ``Xen`` ``XEN_ELFNOTE_CRASH_REGS``
(0x1000002: cr0, cr2, cr3, cr4); once, a ``Xen`` ``XEN_ELFNOTE_CRASH_INFO`` (0x1000001: Xen
version, build strings as machine addresses, tainted, xen_phys_start, dom0's p2m
frame-list-list); a ``VMCOREINFO_XEN`` text note (symbols, sizes, offsets), and usually the dom0
kernel's ``VMCOREINFO``. Every register here is *observed*: read by the pCPU itself when it saved
its state, so CR4 is the hardware value Xen ran with, and CR3 the machine address it had loaded.

pCPU numbers are the order of the CORE notes (kexec-tools writes one PT_NOTE per pCPU in pCPU
order; the crash kernel merges them in that order). A pCPU whose notes are all zero never saved
its state (it did not answer the crash NMI): it is listed offline with no registers.

Failure modes: :class:`~gdb_xenpte.errors.DumpFormatError` for a CRASH_REGS or CRASH_INFO note
too short for its structure (the message names the file offset). Unknown notes are ignored.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import DumpFormatError
from .base import VcpuRegs
from .notes import NT_PRSTATUS, Note

__all__ = [
    "CrashInfo",
    "HostNotes",
    "VmcoreInfo",
    "XEN_ELFNOTE_CRASH_INFO",
    "XEN_ELFNOTE_CRASH_REGS",
    "is_kexec_note",
    "parse_host_notes",
    "parse_vmcoreinfo",
]

XEN_ELFNOTE_CRASH_INFO = 0x1000001
XEN_ELFNOTE_CRASH_REGS = 0x1000002
PR_REG_OFFSET = 112  # ELF_Prstatus.pr_reg on x86_64
GREGS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
         "rsi", "rdi", "orig_rax", "rip", "cs", "rflags", "rsp", "ss", "fs_base", "gs_base", "ds",
         "es", "fs", "gs")
_CRASH_REGS = struct.Struct("<4Q")
_CRASH_INFO_FIELDS = ("major", "minor", "extra_version", "changeset", "compiler", "compile_date",
                      "compile_time", "tainted", "xen_phys_start", "dom0_p2m_frame_list_list")


def is_kexec_note(note: Note) -> bool:
    """True for a note only a kexec crash dump carries (VMCOREINFO, VMCOREINFO_XEN, Xen crash)."""
    return (note.name in ("VMCOREINFO", "VMCOREINFO_XEN")
            or (note.name == "Xen" and note.type in (XEN_ELFNOTE_CRASH_INFO,
                                                     XEN_ELFNOTE_CRASH_REGS)))


@dataclass(frozen=True)
class CrashInfo:
    """XEN_ELFNOTE_CRASH_INFO, decoded. String fields are machine addresses of C strings."""

    major: int
    minor: int
    extra_version: int
    changeset: int
    compiler: int
    compile_date: int
    compile_time: int
    tainted: int
    xen_phys_start: Optional[int]
    dom0_p2m_frame_list_list: Optional[int]
    desc_offset: int = 0


@dataclass
class VmcoreInfo:
    """A VMCOREINFO(_XEN) note's ``KEY=VALUE`` lines, with SYMBOL/SIZE/OFFSET parsed."""

    raw: Dict[str, str] = field(default_factory=dict)
    symbols: Dict[str, int] = field(default_factory=dict)
    sizes: Dict[str, int] = field(default_factory=dict)
    offsets: Dict[str, int] = field(default_factory=dict)


_KEY = re.compile(r"^(SYMBOL|SIZE|OFFSET|LENGTH|NUMBER)\((.+)\)$")


def parse_vmcoreinfo(desc: bytes) -> VmcoreInfo:
    """Parse a VMCOREINFO text (``SYMBOL(x)=hex``, ``SIZE(s)=dec``, ``OFFSET(s.f)=dec``, ...).

    Lines that do not parse are kept in :attr:`VmcoreInfo.raw` only.
    """
    info = VmcoreInfo()
    text = desc.split(b"\0", 1)[0].decode("latin-1")
    for line in text.splitlines():
        key, eq, value = line.partition("=")
        if not eq:
            continue
        info.raw[key] = value
        m = _KEY.match(key)
        try:
            if m and m.group(1) == "SYMBOL":
                info.symbols[m.group(2)] = int(value, 16)
            elif m and m.group(1) == "SIZE":
                info.sizes[m.group(2)] = int(value, 10)
            elif m and m.group(1) == "OFFSET":
                info.offsets[m.group(2)] = int(value, 10)
        except ValueError:
            continue
    return info


@dataclass
class HostNotes:
    """What a Xen host crash dump's notes say.

    :param pcpus: one :class:`VcpuRegs` per pCPU (``index`` = pCPU number), online=False for a
        pCPU that saved nothing.
    :param rsp: each pCPU's saved RSP (None if not saved).
    :param crashing: the pCPU that crashed, or None if the notes do not tell.
    :param crashing_why: how :attr:`crashing` was decided.
    """

    pcpus: List[VcpuRegs] = field(default_factory=list)
    rsp: List[Optional[int]] = field(default_factory=list)
    info: Optional[CrashInfo] = None
    vmcoreinfo_xen: Optional[VmcoreInfo] = None
    vmcoreinfo: Optional[VmcoreInfo] = None
    crashing: Optional[int] = None
    crashing_why: str = ""
    remarks: Tuple[str, ...] = ()

    @property
    def is_xen(self) -> bool:
        return self.info is not None or self.vmcoreinfo_xen is not None or any(
            r.cr3 is not None for r in self.pcpus)

    @property
    def xen_version(self) -> Optional[Tuple[int, int]]:
        return (self.info.major, self.info.minor) if self.info is not None else None


def _gregs(desc: bytes) -> Optional[Dict[str, int]]:
    if len(desc) < PR_REG_OFFSET + 8 * len(GREGS):
        return None
    values = struct.unpack_from(f"<{len(GREGS)}Q", desc, PR_REG_OFFSET)
    return dict(zip(GREGS, values))


def _pcpu(index: int, gregs: Optional[Dict[str, int]], crs: Optional[Tuple[int, ...]],
          what: str) -> VcpuRegs:
    saved = bool((gregs and any(gregs.values())) or (crs and any(crs)))
    origin = f"pCPU {index} of {what} (Xen crash notes: CORE NT_PRSTATUS + CRASH_REGS)"
    if not saved:
        return VcpuRegs(index=index, online=False, origin=origin,
                        notes=("this pCPU saved no state: its crash notes are all zero (it did "
                               "not answer the crash NMI, or was offline)",))
    remarks = ["registers saved by the pCPU itself in Xen's crash path (observed); CR4 is the "
               "hardware value", "EFER not in Xen's crash notes: long mode from Xen being "
               "x86_64-only"]
    cr0 = cr2 = cr3 = cr4 = None
    if crs is None:
        remarks.append("no CRASH_REGS note for this pCPU: CR0/CR3/CR4 unknown")
    else:
        cr0, cr2, cr3, cr4 = crs
    g = gregs or {}
    return VcpuRegs(index=index, cr0=cr0, cr2=cr2, cr3=cr3, cr4=cr4, rip=g.get("rip"),
                    rflags=g.get("rflags"), cs=g.get("cs"), long_mode=True,
                    notes=tuple(remarks), origin=origin)


def parse_host_notes(notes: Sequence[Note], what: str) -> HostNotes:
    """Decode the kexec crash notes among ``notes`` (in file order).

    :param what: the file name, for messages and origins.
    :raises DumpFormatError: for a CRASH_REGS/CRASH_INFO note too short for its structure.
    """
    host = HostNotes()
    entries: List[List] = []  # [gregs or None, crs or None]
    for note in notes:
        if note.name == "CORE" and note.type == NT_PRSTATUS:
            entries.append([_gregs(note.desc), None])
        elif note.name == "Xen" and note.type == XEN_ELFNOTE_CRASH_REGS:
            if len(note.desc) < _CRASH_REGS.size:
                raise DumpFormatError(what, f"Xen CRASH_REGS note at file offset "
                                            f"{note.desc_offset:#x} holds {len(note.desc)} "
                                            f"bytes; crash_xen_core_t needs {_CRASH_REGS.size}")
            crs = _CRASH_REGS.unpack_from(note.desc)
            if entries and entries[-1][1] is None:
                entries[-1][1] = crs
            else:
                entries.append([None, crs])
        elif note.name == "Xen" and note.type == XEN_ELFNOTE_CRASH_INFO:
            host.info = _crash_info(note, what)
        elif note.name == "VMCOREINFO_XEN":
            host.vmcoreinfo_xen = parse_vmcoreinfo(note.desc)
        elif note.name == "VMCOREINFO":
            host.vmcoreinfo = parse_vmcoreinfo(note.desc)
    host.pcpus = [_pcpu(i, g, c, what) for i, (g, c) in enumerate(entries)]
    host.rsp = [g.get("rsp") if g and host.pcpus[i].online else None
                for i, (g, _c) in enumerate(entries)]
    if host.info is None and host.pcpus:
        host.remarks += ("no Xen CRASH_INFO note: Xen version and xen_phys_start unknown",)
    _find_crashing(host)
    if host.crashing is not None:
        regs = host.pcpus[host.crashing]
        host.pcpus[host.crashing] = VcpuRegs(**{
            **regs.__dict__, "notes": regs.notes + (f"the crashing pCPU ({host.crashing_why})",)})
    return host


def _crash_info(note: Note, what: str) -> CrashInfo:
    words = len(note.desc) // 8
    if words < 8:
        raise DumpFormatError(what, f"Xen CRASH_INFO note at file offset {note.desc_offset:#x} "
                                    f"holds {len(note.desc)} bytes; crash_xen_info_t needs at "
                                    "least 64")
    values = list(struct.unpack_from(f"<{min(words, 10)}Q", note.desc))
    values += [None] * (10 - len(values))  # a non-x86 layout lacks the last two
    return CrashInfo(*values, desc_offset=note.desc_offset)


def _find_crashing(host: HostNotes) -> None:
    """The crashing pCPU, when the notes alone tell: only when it is the one pCPU that saved.

    Nothing in the notes names the crashing pCPU (every pCPU saves the same registers from the
    same function); a stack-page inference was tried and does not hold on a real Xen 4.17 dump
    (the NMI'd pCPU saved on its primary stack too). xen-syms' crashing_cpu answers for certain
    (:meth:`gdb_xenpte.xen_host.XenHost.crashing_pcpu`).
    """
    saved = [i for i, r in enumerate(host.rsp) if r is not None]
    if len(saved) == 1:
        host.crashing = saved[0]
        host.crashing_why = ("the only pCPU" if len(host.pcpus) == 1 else
                             "the only pCPU that saved its state")
    elif saved:
        # (True with or without --xen-syms given: this is what the notes say; xen-domains
        # reads Xen's crashing_cpu through xen-syms and says which pCPU it was.)
        host.remarks += ("which pCPU crashed: the notes do not say (Xen's crashing_cpu does: "
                         "xen-domains with xen-syms)",)
