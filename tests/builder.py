"""Page-table builder for tests: declare mappings, get a physical image and a CR3.

Entries are composed from the SDM's entry formats directly (bit positions below), not from the
engine's tables, so tests built with it check the engine against the manual.
"""

from __future__ import annotations

import struct
from typing import Dict, Optional

P, RW, US, PWT, PCD, A, D, PS, G = 1, 2, 4, 8, 16, 32, 64, 128, 256
PAT_4K, PAT_LARGE = 1 << 7, 1 << 12
NX = 1 << 63
BIT52, BIT62 = 1 << 52, 1 << 62

# (name, VA shift, index bits) per mode, top first (SDM Vol. 3A Table 4-1, Figures 4-2..4-11).
SHAPES = {
    "32bit": (4, [("pd", 22, 10), ("pt", 12, 10)]),
    "pae": (8, [("pdpt", 30, 2), ("pd", 21, 9), ("pt", 12, 9)]),
    "4level": (8, [("pml4", 39, 9), ("pdpt", 30, 9), ("pd", 21, 9), ("pt", 12, 9)]),
    "5level": (8, [("pml5", 48, 9), ("pml4", 39, 9), ("pdpt", 30, 9), ("pd", 21, 9),
                   ("pt", 12, 9)]),
    "pv32": (8, [("pdpt", 30, 2), ("pd", 21, 9), ("pt", 12, 9)]),
}


class Builder:
    """Build page tables in a dict of 4 KiB pages.

    :param mode: a key of SHAPES.
    :param table_base: physical address where table pages are allocated from.
    :param upper: flags for non-leaf entries the builder creates (PAE PDPTEs get only P).
    :param frame_of: optional PFN -> frame-number function used when writing frames into entries
        (PV guests: tables hold MFNs while the image is keyed by PFN).
    """

    def __init__(self, mode: str = "4level", table_base: int = 0x100000,
                 upper: int = P | RW | US | A, frame_of=None):
        self.mode = mode
        self.esize, self.levels = SHAPES[mode]
        self.pages: Dict[int, bytearray] = {}
        self.next_free = table_base
        self.upper = upper
        self.frame_of = frame_of or (lambda pfn: pfn)
        self.root = self.alloc()

    def alloc(self) -> int:
        addr = self.next_free
        self.next_free += 4096
        self.pages[addr] = bytearray(4096)
        return addr

    def frame(self, pa: int) -> int:
        """The address to store in an entry for physical address ``pa`` (MFN space for PV)."""
        return (self.frame_of(pa >> 12) << 12) | (pa & 0xFFF)

    def _get(self, table: int, index: int) -> int:
        off = index * self.esize
        fmt = "<Q" if self.esize == 8 else "<I"
        return struct.unpack_from(fmt, self.pages[table], off)[0]

    def _put(self, table: int, index: int, value: int) -> None:
        fmt = "<Q" if self.esize == 8 else "<I"
        struct.pack_into(fmt, self.pages[table], index * self.esize, value)

    def _table_of(self, entry: int) -> int:
        """PFN-space address of the table an entry references (inverse of frame())."""
        addr = entry & 0x000FFFFFFFFFF000 if self.esize == 8 else entry & 0xFFFFF000
        if self.frame_of is not None:
            for pfn_addr in self.pages:
                if self.frame(pfn_addr) == addr:
                    return pfn_addr
        return addr

    def slot(self, va: int, level: str):
        """(table address, index) of the entry for ``va`` at ``level``, creating tables above."""
        table = self.root
        for name, shift, bits in self.levels:
            index = (va >> shift) & ((1 << bits) - 1)
            if name == level:
                return table, index
            entry = self._get(table, index)
            if not entry & P:
                new = self.alloc()
                flags = P if self.mode == "pae" and name == "pdpt" else self.upper
                self._put(table, index, self.frame(new) | flags)
                table = new
            else:
                table = self._table_of(entry)
        raise ValueError(f"no level {level!r} in mode {self.mode}")

    def map(self, va: int, pa: int, size: int = 4096, flags: int = P | RW, *, pkey: int = 0,
            extra: int = 0) -> None:
        """Map ``size`` bytes at ``va`` to ``pa`` with one leaf of that page size.

        :param flags: low flag bits of the leaf (PS is added for large pages).
        :param pkey: protection key for bits 62:59; ``extra``: raw bits ORed in (e.g. BIT52).
        """
        level = {4096: self.levels[-1][0], 1 << 21: "pd", 1 << 22: "pd", 1 << 30: "pdpt"}[size]
        table, index = self.slot(va, level)
        entry = self.frame(pa) | flags | extra | (pkey << 59)
        if size != 4096:
            entry |= PS
            if self.mode == "32bit":
                entry = (pa & 0xFFC00000) | ((pa >> 32) << 13) | flags | PS | extra
        self._put(table, index, entry)

    def set(self, va: int, level: str, value: int) -> None:
        """Write a raw entry at ``level`` for ``va`` (hostile or unusual entries)."""
        table, index = self.slot(va, level)
        self._put(table, index, value)

    def update(self, va: int, level: str, set_bits: int = 0, clear_bits: int = 0) -> None:
        """Set/clear bits of an existing entry at ``level`` for ``va``."""
        table, index = self.slot(va, level)
        self._put(table, index, (self._get(table, index) | set_bits) & ~clear_bits)

    @property
    def cr3(self) -> int:
        return self.frame(self.root)

    def image(self) -> Dict[int, bytes]:
        return {k: bytes(v) for k, v in self.pages.items()}

    def source(self, translate=None):
        from gdb_xenpte.sources.memory import MemorySource
        return MemorySource(self.image(), "builder image", translate_frame=translate)
