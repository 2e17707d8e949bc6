"""Physical memory read through a guest's direct map, with Xen's M2P for PV guests.

For targets that offer no physical access (a gdbserver, a non-QEMU stub): guest-physical ``pa`` is
read at virtual ``base + pa``, and a PV guest's machine frames are translated MFN -> PFN through the
read-only M2P Xen maps into every PV guest.

Failure modes: :class:`~gdb_xenpte.errors.UnreadableMemory` naming the physical address and the
direct-map VA when the target refuses a read; an M2P entry that cannot be read or holds
INVALID_M2P_ENTRY/SHARED_M2P_ENTRY translates to None (the walker reports that frame).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import UnreadableMemory
from .base import PhysSource, VcpuRegs

__all__ = ["DirectMapSource"]

# INVALID_M2P_ENTRY (~0UL) and SHARED_M2P_ENTRY (~0UL - 1), xen/include/public/xen.h.
_M2P_INVALID_FROM = {8: (1 << 64) - 2, 4: (1 << 32) - 2}


class DirectMapSource(PhysSource):
    """Physical memory read through a guest's direct map, for targets without physical access.

    Guest-physical address ``pa`` is read at virtual address ``base + pa`` (e.g. a Linux guest's
    ``page_offset_base``). For a PV guest, page-table entries hold machine frames: ``m2p`` names
    Xen's read-only M2P (:data:`gdb_xenpte.xen.M2P_PV64` or ``M2P_PV32``) and every frame is
    translated MFN -> PFN through it before it is read.

    :param read_virt: reads ``size`` bytes at a guest virtual address; raises UnreadableMemory.
    :param base: virtual address of guest-physical 0 (bytes).
    :param m2p: ``(virtual base, entry bytes)`` of the M2P, or None for HVM/native guests.
    """

    def __init__(self, read_virt: Callable[[int, int], bytes], base: int,
                 m2p: Optional[Tuple[int, int]] = None, domain: Optional[str] = None,
                 vcpus: Sequence[VcpuRegs] = ()):
        self._read_virt = read_virt
        self.base = base
        self.m2p = m2p
        self.domain = domain
        self._vcpus = list(vcpus)
        self._m2p_cache: Dict[int, Optional[int]] = {}  # one walk's lifetime: the source's
        self.name = f"direct map at {base:#x}" + (
            f", M2P at {m2p[0]:#x}" if m2p else "")
        if m2p:
            self.translate_frame = self._mfn_to_pfn

    def _mfn_to_pfn(self, mfn: int) -> Optional[int]:
        if mfn not in self._m2p_cache:
            vbase, width = self.m2p
            try:
                raw = self._read_virt(vbase + mfn * width, width)
            except UnreadableMemory:
                self._m2p_cache[mfn] = None
            else:
                pfn = int.from_bytes(raw, "little")
                self._m2p_cache[mfn] = None if pfn >= _M2P_INVALID_FROM[width] else pfn
        return self._m2p_cache[mfn]

    def read(self, paddr: int, size: int) -> bytes:
        try:
            return self._read_virt(self.base + paddr, size)
        except UnreadableMemory as err:
            raise UnreadableMemory(self.name, paddr, f"direct-map VA {self.base + paddr:#x} "
                                                     f"not readable") from err

    def ranges(self) -> Sequence[Tuple[int, int]]:
        return [(0, 1 << 52)]

    def vcpus(self) -> List[VcpuRegs]:
        return list(self._vcpus)

    def describe(self) -> str:
        return f"{self.name} (no physical access: tables read through guest virtual memory)"
