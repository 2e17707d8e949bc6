"""An in-memory physical image: for tests, benchmarks, and anything already in RAM."""

from __future__ import annotations

import bisect
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import UnreadableMemory
from .base import PhysSource, VcpuRegs

__all__ = ["MemorySource"]


class MemorySource(PhysSource):
    """Physical memory held as ``{page address: bytes}`` (4 KiB pages).

    :param pages: page-aligned physical address -> 4096 bytes.
    :param translate_frame: optional MFN -> PFN function (PV images keyed by PFN).
    """

    def __init__(self, pages: Dict[int, bytes], name: str = "memory image",
                 translate_frame: Optional[Callable[[int], Optional[int]]] = None,
                 vcpus: Sequence[VcpuRegs] = (), domain: Optional[str] = None):
        self.pages = pages
        self.name = name
        self.translate_frame = translate_frame
        self.domain = domain
        self._vcpus = list(vcpus)
        self.reads = 0

    def read(self, paddr: int, size: int) -> bytes:
        self.reads += 1
        out = bytearray()
        addr = paddr
        end = paddr + size
        while addr < end:
            page = self.pages.get(addr & ~0xFFF)
            if page is None:
                raise UnreadableMemory(self.name, addr, "no such page in the image")
            off = addr & 0xFFF
            take = min(end - addr, 4096 - off)
            out += page[off:off + take]
            addr += take
        return bytes(out)

    def ranges(self) -> List[Tuple[int, int]]:
        out: List[Tuple[int, int]] = []
        for addr in sorted(self.pages):
            if out and out[-1][1] == addr:
                out[-1] = (out[-1][0], addr + 4096)
            else:
                out.append((addr, addr + 4096))
        return out

    def vcpus(self) -> List[VcpuRegs]:
        return list(self._vcpus)
