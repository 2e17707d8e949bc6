"""What the walker asks about Xen, answered from :mod:`gdb_xenpte.xen` for one policy.

The walker knows nothing of Xen; a :class:`XenView` (or ``None`` for bare metal) is handed to it and
asked, per entry, which Xen-owned bits are set, which bits Xen's PV disallow masks forbid, what a
Xen L4 slot is, and how a protection key collides with a Xen bit. Levels Xen does not validate (a
PV32 guest's compat L4 is Xen's own; 5-level tables) carry no Xen bits.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Tuple

from . import xen
from .errors import OptionError

__all__ = ["XenView", "disallowed_texts"]


class XenView:
    """Xen's view of one domain's entries.

    :param policy: a :class:`~gdb_xenpte.xen.XenPolicy`.
    :param root_is_xen_l4: the walk's top table is a PV L4 whose slots 256-271 are Xen's (true for
        a PV64 guest L4 and for the hardware CR3 of a PV32 vCPU; false when walking a PV32
        guest's own L3).
    """

    def __init__(self, policy, root_is_xen_l4: bool = True):
        self.policy = policy
        self.root_is_xen_l4 = root_is_xen_l4 and policy.is_pv

    def _bits(self, raw: int, level: str):
        try:
            return xen.xen_bits(raw, level, self.policy)
        except OptionError:  # a level Xen does not validate for this domain
            return ()

    def xen_bits(self, raw: int, level: str, leaf: bool) -> List[str]:
        """Names of Xen-owned bits set in a leaf, e.g. ``["_PAGE_GUEST_KERNEL"]``."""
        return [name for _bit, name, _meaning in self._bits(raw, level)]

    def explain_bits(self, raw: int, level: str, leaf: bool) -> List[Tuple[str, str]]:
        """``(name, meaning)`` lines for single-entry explanations (traces, xen-pte-decode)."""
        out = [(name, f"bit {bit}: {meaning}") for bit, name, meaning in self._bits(raw, level)]
        clash = self.pkey_collision(raw, level)
        if clash:
            out.append(("PKEY-COLLISION", clash))
        for bit, name in self.disallowed(raw, level):
            out.append(("XEN-DISALLOWED", f"bit {bit} ({name}) is refused by Xen's "
                                          f"{level} disallow mask"))
        return out

    def pkey_collision(self, raw: int, level: str) -> Optional[str]:
        try:
            return xen.pkey_collision(raw, level, self.policy)
        except OptionError:
            return None

    def disallowed(self, raw: int, level: str) -> List[Tuple[int, str]]:
        """Bits of a present PV entry that Xen's disallow mask for ``level`` refuses."""
        if not self.policy.is_pv:
            return []
        try:
            return xen.disallow_violations(raw, level, self.policy)
        except OptionError:
            return []

    def slot_label(self, level: str, index: int) -> Optional[str]:
        """Label of a Xen-owned top-level (L4) slot, or None."""
        if level != "pml4" or not self.root_is_xen_l4:
            return None
        return xen.l4_slot_label(index, self.policy)

    def xen_area(self, level: str, index: int, va: int, span: int) -> Optional[str]:
        """Label an entry whose whole span is Xen's (a Xen L4 slot, a PV32 guest's hypervisor
        area), or None. Entries below it are Xen's, not the guest's: no guest ABI applies."""
        if not self.policy.is_pv:
            return None
        return self.slot_label(level, index) or xen.pv32_hypervisor_area(va, span, self.policy)


def disallowed_texts(level: str, index: int, bits: Iterable[Tuple[int, str]]) -> Tuple[str, ...]:
    """The one spelling of disallow-mask violations on a path: ``"pd[0]: bit 7 (PSE)"`` for each
    ``(bit, name)`` of the entry at ``level[index]`` (records, what-if, check all show these)."""
    return tuple(f"{level}[{index}]: bit {bit} ({name})" for bit, name in bits)
