"""Trim a QEMU ``dump-guest-memory`` ELF core to its notes and the page tables reachable from CR3.

The result is still a QEMU-format ELF core (what :class:`gdb_xenpte.sources.qemu_elf.QemuElfSource`
reads): the ELF header, the original ``PT_NOTE`` segment byte for byte (``CORE`` ``NT_PRSTATUS``
and ``QEMU`` CPU-state notes: registers, CR3, CR4), and one ``PT_LOAD`` per run of consecutive
kept pages with ``p_paddr = p_vaddr`` = guest-physical address, as QEMU writes them. Only the
paging-structure pages a walk from each vCPU's CR3 visits are kept (4- or 5-level per that vCPU's
CR4.LA57); every other page, data pages included, is simply absent, so a walk of the trimmed file
yields the same mappings and a reader reports anything else as "not in dump".

Usage: ``python3 tests/targets/trim_dump.py FULL.elf TRIMMED.elf``

Failure modes: :class:`ValueError` for a file that is not a 64-bit little-endian ELF core with a
note segment, or whose notes name no vCPU with long-mode paging; reader errors of
:mod:`gdb_xenpte.sources.qemu_elf` (truncated file, unreadable CR3 page) pass through.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Set, Tuple

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gdb_xenpte.arch import CR4
from gdb_xenpte.errors import UnreadableMemory
from gdb_xenpte.sources.qemu_elf import QemuElfSource

__all__ = ["collect_table_pages", "trim_qemu_elf", "write_qemu_elf_core"]

PAGE = 4096
ELF64_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
ELF64_PHDR = struct.Struct("<IIQQQQQQ")
PT_LOAD, PT_NOTE = 1, 4
PRESENT, PAGE_SIZE_BIT = 1 << 0, 1 << 7
# Entry bits 51:12 address the next table (SDM Vol. 3A Tables 4-15..4-19); bits above are
# XD/pkey/software bits (Xen's bit 52 included) and never part of the address.
TABLE_ADDRESS = ((1 << 52) - 1) & ~(PAGE - 1)


def collect_table_pages(source, cr3: int, levels: int) -> Set[int]:
    """Return the physical addresses of every paging-structure page reachable from ``cr3``.

    A table is followed through each present entry that is not a leaf: the last level holds only
    leaves, and PS=1 makes a PDPTE (1 GiB) or PDE (2 MiB) a leaf. A table seen again at the same
    depth (shared kernel halves, Xen's linear slot) is visited once.

    :param source: a memory source with ``read(paddr, size)``.
    :param cr3: the CR3 value (low 12 bits ignored).
    :param levels: 4 or 5.
    :returns: the set of table page addresses (bytes); unreadable tables are left out.
    """
    pages: Set[int] = set()
    seen: Set[Tuple[int, int]] = set()
    todo: List[Tuple[int, int]] = [(cr3 & TABLE_ADDRESS, 0)]
    while todo:
        table, depth = todo.pop()
        if (table, depth) in seen:
            continue
        seen.add((table, depth))
        try:
            data = source.read(table, PAGE)
        except UnreadableMemory:
            continue
        pages.add(table)
        if depth == levels - 1:
            continue  # page tables: every entry is a leaf
        # PS=1 makes a leaf only in a PDPTE or PDE (the last two levels above the page table).
        large_ok = depth >= levels - 3
        for (entry,) in struct.iter_unpack("<Q", data):
            if entry & PRESENT and not (large_ok and entry & PAGE_SIZE_BIT):
                todo.append((entry & TABLE_ADDRESS, depth + 1))
    return pages


def _runs(pages: Iterable[int]) -> List[Tuple[int, int]]:
    """Group page addresses into ``(start, length)`` runs of consecutive pages."""
    runs: List[Tuple[int, int]] = []
    for page in sorted(pages):
        if runs and runs[-1][0] + runs[-1][1] == page:
            runs[-1] = (runs[-1][0], runs[-1][1] + PAGE)
        else:
            runs.append((page, PAGE))
    return runs


def write_qemu_elf_core(out_path: Path, ident_header: bytes, notes: bytes,
                        pages: Dict[int, bytes]) -> int:
    """Write an ELF64 core in QEMU's layout: header, program headers, notes, then memory runs.

    :param ident_header: the original 64-byte ELF header (ident, type, machine, flags are kept).
    :param notes: the PT_NOTE segment's bytes.
    :param pages: guest-physical page address -> its 4096 bytes.
    :returns: the size of the file written (bytes).
    """
    (ident, e_type, machine, version, entry, _phoff, _shoff, flags, ehsize, phentsize,
     _phnum, _shentsize, _shnum, _shstrndx) = ELF64_HEADER.unpack(ident_header)
    runs = _runs(pages)
    phnum = 1 + len(runs)
    offset = ELF64_HEADER.size + phnum * ELF64_PHDR.size
    phdrs = [ELF64_PHDR.pack(PT_NOTE, 0, offset, 0, 0, len(notes), len(notes), 0)]
    offset += len(notes)
    body = [notes]
    for start, length in runs:
        # QEMU 7.2 writes p_vaddr = p_paddr for guest-physical segments; flags 0, align 0.
        phdrs.append(ELF64_PHDR.pack(PT_LOAD, 0, offset, start, start, length, length, 0))
        body.extend(pages[page] for page in range(start, start + length, PAGE))
        offset += length
    header = ELF64_HEADER.pack(ident, e_type, machine, version, entry, ELF64_HEADER.size, 0,
                               flags, ehsize, phentsize, phnum, 0, 0, 0)
    data = b"".join([header, *phdrs, *body])
    Path(out_path).write_bytes(data)
    return len(data)


def _note_segment(path: Path) -> Tuple[bytes, bytes]:
    """Return the ELF header and the bytes of the (single) PT_NOTE segment of ``path``."""
    with open(path, "rb") as f:
        header = f.read(ELF64_HEADER.size)
        if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            raise ValueError(f"{path}: not a 64-bit little-endian ELF file")
        fields = ELF64_HEADER.unpack(header)
        phoff, phentsize, phnum = fields[5], fields[9], fields[10]
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            p_type, _f, p_offset, _v, _p, p_filesz, _m, _a = ELF64_PHDR.unpack(
                f.read(ELF64_PHDR.size))
            if p_type == PT_NOTE:
                f.seek(p_offset)
                return header, f.read(p_filesz)
    raise ValueError(f"{path}: no PT_NOTE segment (not a QEMU dump-guest-memory core?)")


def trim_qemu_elf(full: Path, out: Path) -> Dict[str, int]:
    """Write ``out``: ``full`` reduced to its notes and the tables reachable from each vCPU's CR3.

    :returns: figures: ``vcpus``, ``tables`` (pages kept), ``bytes`` (size of ``out``).
    :raises ValueError: if no vCPU in the notes runs long-mode paging.
    """
    header, notes = _note_segment(Path(full))
    with QemuElfSource(str(full)) as source:
        pages: Set[int] = set()
        vcpus = [v for v in source.vcpus() if v.cr3 is not None and v.long_mode]
        if not vcpus:
            raise ValueError(f"{full}: no vCPU with long-mode paging in the QEMU notes")
        for vcpu in vcpus:
            levels = 5 if (vcpu.cr4 or 0) & CR4.LA57 else 4
            pages |= collect_table_pages(source, vcpu.cr3, levels)
        contents = {page: source.read(page, PAGE) for page in pages}
    size = write_qemu_elf_core(Path(out), header, notes, contents)
    return {"vcpus": len(vcpus), "tables": len(pages), "bytes": size}


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("Usage: ")[1].split("\n")[0])
    print(trim_qemu_elf(Path(sys.argv[1]), Path(sys.argv[2])))
