"""Synthetic address spaces for benchmarks: big 4-level spaces built directly as table pages.

Building a million leaves one ``Builder.map`` call at a time would dominate the run, so tables are
laid out here in bulk: whole page tables of 512 consecutive 4 KiB leaves, then 2 MiB and 1 GiB
regions, with an optional set of process page tables sharing one kernel half.
"""

from __future__ import annotations

import struct
from typing import Dict, List, Tuple

P, RW, US, A, D, PS, G = 1, 2, 4, 32, 64, 128, 256
NX = 1 << 63
KERNEL_FLAGS = P | RW | A | D | G


class SpaceBuilder:
    """Allocate table pages from ``base`` upward and fill them with packed entries."""

    def __init__(self, base: int = 0x1000_0000):
        self.next = base
        self.pages: Dict[int, bytes] = {}

    def table(self, entries: List[Tuple[int, int]]) -> int:
        """A new table with ``(index, raw)`` entries; returns its physical address."""
        buf = bytearray(4096)
        for i, raw in entries:
            struct.pack_into("<Q", buf, 8 * i, raw)
        addr = self.next
        self.next += 4096
        self.pages[addr] = bytes(buf)
        return addr

    def full_pt(self, first_pa: int, flags: int) -> int:
        """A page table of 512 present 4 KiB leaves mapping ``first_pa`` onward."""
        raw = struct.pack("<512Q", *((first_pa + i * 4096) | flags for i in range(512)))
        addr = self.next
        self.next += 4096
        self.pages[addr] = raw
        return addr


def direct_map_pdpt(sb: SpaceBuilder, gib: int, flags: int = KERNEL_FLAGS | NX) -> int:
    """A PDPT mapping ``gib`` GiB of physical memory in 4 KiB pages (512 PTs per GiB)."""
    pdpt_entries = []
    for g in range(gib):
        pd_entries = []
        for j in range(512):
            pt = sb.full_pt((g << 30) + (j << 21), flags)
            pd_entries.append((j, pt | P | RW | A))
        pdpt_entries.append((g, sb.table(pd_entries) | P | RW | A))
    return sb.table(pdpt_entries)


def big_space(leaf_gib: int = 2, processes: int = 1) -> Tuple[Dict[int, bytes], List[int], int]:
    """A 4-level space: ``leaf_gib`` GiB of 4 KiB leaves (262,144 per GiB) in the direct map, 64
    2 MiB kernel-text pages, 4 1 GiB pages, and ``processes`` PML4s sharing that kernel half (each
    with a small user part of its own).

    :returns: (pages, list of CR3 values, 4 KiB leaves per CR3).
    """
    sb = SpaceBuilder()
    direct = direct_map_pdpt(sb, leaf_gib)
    text_pd = sb.table([(i, ((1 << 24) + (i << 21)) | KERNEL_FLAGS | PS) for i in range(64)])
    huge = sb.table([(i, ((i + 8) << 30) | KERNEL_FLAGS | PS | NX) for i in range(4)]
        + [(510, text_pd | P | RW | A)])
    cr3s = []
    for p in range(processes):
        user_pt = sb.table([(i, (0x4000_0000 + (p << 24) + i * 4096) | P | RW | US | A)
                            for i in range(16)])
        user_pd = sb.table([(0, user_pt | P | RW | US | A)])
        user_pdpt = sb.table([(0, user_pd | P | RW | US | A)])
        cr3s.append(sb.table([(0, user_pdpt | P | RW | US | A), (273, direct | P | RW | A),
                              (511, huge | P | RW | A)]))
    return sb.pages, cr3s, leaf_gib * 262144 + 16


def table_pages(pages: Dict[int, bytes], cr3: int) -> List[int]:
    """The distinct table pages a 4-level walk from ``cr3`` must read, found without the engine.

    Present non-leaf entries (PS clear in PDPTEs and PDEs) are followed; PTs are not looked into.
    """
    seen, todo = {cr3 & ~0xFFF: 0}, [(cr3 & ~0xFFF, 0)]
    while todo:
        addr, depth = todo.pop()
        if depth == 3:
            continue
        for raw in struct.unpack("<512Q", pages[addr]):
            if raw & P and not (depth in (1, 2) and raw & PS):
                child = raw & 0x000F_FFFF_FFFF_F000
                if child not in seen:
                    seen[child] = depth + 1
                    todo.append((child, depth + 1))
    return sorted(seen)
