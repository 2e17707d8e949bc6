"""Writers for a Xen host's kexec crash dump: the ELF vmcore a crash kernel's /proc/vmcore gives,
and a makedumpfile (kdump-compressed) copy of it.

Layouts are written from Xen's and kexec-tools' definitions (cited in
gdb_xenpte/xen/facts.py, CRASH_KEYS), independently of the readers:

* per pCPU: ``CORE`` NT_PRSTATUS, 336 bytes, ``pr_reg`` (27 u64 in Linux x86_64 order) at byte
  112; then ``Xen`` type 0x1000002 {cr0, cr2, cr3, cr4}; pCPU 0 also ``Xen`` type 0x1000001
  crash_xen_info_t (10 u64). A pCPU that never saved has the notes, zero-filled;
* ``VMCOREINFO_XEN`` (type 0) text, and the dom0 kernel's ``VMCOREINFO``;
* PT_LOADs: p_paddr = machine address, p_vaddr = page_offset + p_paddr; optionally one
  kernel-text segment aliasing part of RAM at another p_vaddr.
"""

from __future__ import annotations

import struct
from typing import Dict, Optional, Sequence, Tuple

from writers import (EM_X86_64, NT_PRSTATUS, PAGE, PT_LOAD, PT_NOTE, Layout, _note, coalesce,
                      write_kdump)

LINUX_PAGE_OFFSET = 0xFFFF888000000000  # x86_64 Linux 4-level direct map (dom0's)
GREG_ORDER = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
              "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "rflags", "rsp", "ss", "fs_base",
              "gs_base", "ds", "es", "fs", "gs")
STACK_BASE = 0xFFFF830000A00000  # an 8-page (32 KiB) aligned Xen stack


def primary_rsp(cpu: int) -> int:
    """An RSP on pCPU ``cpu``'s primary stack (page 7 of 8): where the crashing pCPU saves."""
    return STACK_BASE + cpu * 0x8000 + 7 * PAGE + 0xE80


def nmi_rsp(cpu: int) -> int:
    """An RSP on pCPU ``cpu``'s NMI IST stack (page 2 in Xen 4.14+): where NMI'd pCPUs save."""
    return STACK_BASE + cpu * 0x8000 + 2 * PAGE + 0xF00


def prstatus(regs: dict) -> bytes:
    out = bytearray(336)
    values = [regs.get(name, 0) for name in GREG_ORDER]
    struct.pack_into(f"<{len(values)}Q", out, 112, *values)
    return bytes(out)


def crash_info(major: int = 4, minor: int = 17, extra_maddr: int = 0, tainted: int = 0,
               xen_phys_start: int = 0x7E00000, p2m_fll: int = 0x12345) -> bytes:
    return struct.pack("<10Q", major, minor, extra_maddr, 0, 0, 0, 0, tainted, xen_phys_start,
                       p2m_fll)


def vmcoreinfo_xen(symbols: Dict[str, int], offsets: Optional[Dict[str, int]] = None,
                   sizes: Optional[Dict[str, int]] = None) -> bytes:
    lines = ["PAGESIZE=4096"]
    lines += [f"SYMBOL({k})={v:x}" for k, v in symbols.items()]
    lines += [f"SIZE({k})={v}" for k, v in (sizes or {}).items()]
    lines += [f"OFFSET({k})={v}" for k, v in (offsets or {}).items()]
    return ("\n".join(lines) + "\n").encode()


def xen_crash_notes(pcpus: Sequence[Optional[dict]], info: Optional[bytes] = None,
                    vmcoreinfo: Optional[bytes] = None, linux_vmcoreinfo: Optional[bytes] = None,
                    short_regs: bool = False) -> bytes:
    """The merged note stream of a Xen host's vmcore.

    :param pcpus: per pCPU a dict of register names (GREG_ORDER plus cr0 cr2 cr3 cr4), or None
        for a pCPU that never saved (its notes zero-filled).
    :param short_regs: write a truncated CRASH_REGS note (16 bytes) for pCPU 0.
    """
    out = b""
    for cpu, regs in enumerate(pcpus):
        regs = regs or {}
        out += _note(b"CORE", NT_PRSTATUS, prstatus(regs))
        crs = struct.pack("<4Q", *(regs.get(r, 0) for r in ("cr0", "cr2", "cr3", "cr4")))
        out += _note(b"Xen", 0x1000002, crs[:16] if short_regs and cpu == 0 else crs)
        if cpu == 0 and info is not None:
            out += _note(b"Xen", 0x1000001, info)
    if vmcoreinfo is not None:
        out += _note(b"VMCOREINFO_XEN", 0, vmcoreinfo)
    if linux_vmcoreinfo is not None:
        out += _note(b"VMCOREINFO", 0, linux_vmcoreinfo)
    return out


def write_kexec_elf(path, pages: Dict[int, bytes], notes: bytes, *,
                    page_offset: int = LINUX_PAGE_OFFSET,
                    alias: Optional[Tuple[int, int, int]] = None) -> Layout:
    """Write an ELF64 vmcore as the crash kernel's /proc/vmcore presents it.

    :param pages: machine address -> 4096 bytes.
    :param alias: ``(paddr, length, vaddr)`` of a kernel-text segment aliasing RAM.
    """
    loads = [(p, (page_offset + p) & (2 ** 64 - 1), d) for p, d in coalesce(pages)]
    if alias is not None:
        a_paddr, a_len, a_vaddr = alias
        data = b"".join(pages.get(a_paddr + i, bytes(PAGE)) for i in range(0, a_len, PAGE))
        loads.insert(0, (a_paddr, a_vaddr, data))
    phnum = 1 + len(loads)
    layout = Layout()
    note_off = 64 + phnum * 56
    layout.offsets.update(ehdr=0, phdrs=64, notes=note_off)
    data_off = note_off + len(notes)
    data_off += -data_off % PAGE
    ph = struct.pack("<IIQQQQQQ", PT_NOTE, 0, note_off, 0, 0, len(notes), len(notes), 0)
    body = bytearray()
    for i, (paddr, vaddr, data) in enumerate(loads):
        off = data_off + len(body)
        layout.offsets[f"load{i}"] = off
        ph += struct.pack("<IIQQQQQQ", PT_LOAD, 7, off, vaddr, paddr, len(data), len(data), 0)
        body += data
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 4, EM_X86_64, 1, 0, 64, 0, 0, 64, 56, phnum,
                       64, 0, 0)
    head = ehdr + ph + notes
    blob = head + bytes(data_off - len(head)) + bytes(body)
    layout.size = len(blob)
    with open(path, "wb") as fh:
        fh.write(blob)
    return layout


def write_makedumpfile(path, pages: Dict[int, bytes], notes: bytes, **kw) -> Layout:
    """Write a kdump-compressed copy whose sub-header note area holds the vmcore's notes."""
    return write_kdump(path, pages, [], notes=notes, **kw)
