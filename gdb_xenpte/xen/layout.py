"""Where Xen lives in a guest's address space, and which code ran: L4 slots, areas, selectors, rings.

Failure modes: :func:`kernel_cpl` raises :class:`~gdb_xenpte.errors.OptionError` for an unknown
domain type.
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Tuple

from ..errors import OptionError
from .facts import FACTS, cite
from .policy import XenPolicy

__all__ = ["M2P_PV32", "M2P_PV64", "PV32_HYPERVISOR_START", "SELECTORS", "Selector",
           "domain_from_cs", "kernel_cpl", "l4_slot_label", "pv32_hypervisor_area"]

def kernel_cpl(domain: str) -> int:
    """Return the privilege level the guest kernel runs at: 0 (HVM), 3 (64-bit PV), 1 (32-bit PV).

    :param domain: ``"hvm"``, ``"pv64"`` or ``"pv32"``.
    :returns: the CPL.
    :raises OptionError: for an unknown domain type.
    """
    cpl = {"hvm": 0, "pv64": 3, "pv32": 1}.get(str(domain).strip().lower())
    if cpl is None:
        raise OptionError(f"unknown domain type {domain!r}: expected hvm, pv64 or pv32")
    return cpl


# Xen's L4 slots, from the virtual memory map comment in config.h (x86_64, 4.x).
_L4_SLOTS = {
    256: "read-only M2P (guest-visible machine-to-phys table)",
    257: "PCI MMCFG ioremap",
    258: "linear page table (self-map of this L4)",
    259: "shadow linear page table",
    260: "per-domain mappings (GDT/LDT, XPTI)",
    261: "M2P, vmap/fixmap, Xen text and frame table",
}


def l4_slot_label(index: int, policy: XenPolicy) -> Optional[str]:
    """Name the Xen-owned slot ``index`` of a PV L4 table, or None for a guest slot.

    :param index: L4 index (0..511).
    :param policy: the domain (only PV L4s carry Xen slots; HVM tables hold nothing of Xen's).
    :returns: a label such as ``"Xen L4 slot 258: linear page table ..."``.
    """
    if policy.domain == "pv32" and index == 4:
        return (f"Xen L4 slot 4: per-domain area mirror (compat translation area) "
                f"({cite('compat_alt_slot')})")
    if not policy.is_pv or not 256 <= index <= 271:
        return None
    what = _L4_SLOTS.get(index, "1:1 direct map of all memory")
    return f"Xen L4 slot {index}: {what} ({cite('xen_l4_slots')})"


PV32_HYPERVISOR_START = 0xF5800000


def pv32_hypervisor_area(va: int, span: int, policy: XenPolicy) -> Optional[str]:
    """Label an entry of a 32-bit PV guest's tables that lies wholly in Xen's area, else None.

    :param va: first guest VA the entry covers (32-bit); ``span``: bytes it covers.
    """
    if policy.domain != "pv32" or va < PV32_HYPERVISOR_START or va + span > 1 << 32:
        return None
    return (f"Xen's area of a 32-bit PV guest (VA >= {PV32_HYPERVISOR_START:#x}) "
            f"({cite('pv32_hv_area')})")


class Selector(NamedTuple):
    """What a stopped CPU's CS selector says about whose code ran.

    :param domain: ``"pv64"``/``"pv32"`` when the selector is a PV guest's, None for Xen's own.
    :param ring: the guest code's ring (1 for a 32-bit PV kernel, 3 otherwise), 0 for Xen.
    :param runs: ``"kernel"``, ``"user"``, ``"kernel or user"`` (a 64-bit PV kernel and its user
        space share FLAT_RING3_CS64) or ``"xen"``.
    :param fact: the key of the :data:`~gdb_xenpte.xen.facts.FACTS` row it comes from.
    """

    domain: Optional[str]
    ring: int
    runs: str
    fact: str


# Xen's flat code selectors (each a FACTS row with the header that defines it). A CPU state with
# one of them is a Xen machine, and the selector tells whose code was running.
SELECTORS: Dict[int, Selector] = {
    0xE033: Selector("pv64", 3, "kernel or user", "sel_ring3_cs64"),
    0xE023: Selector("pv64", 3, "user", "sel_ring3_cs32"),
    0xE019: Selector("pv32", 1, "kernel", "sel_compat_ring1_cs"),
    0xE02B: Selector("pv32", 3, "user", "sel_compat_ring3_cs"),
    0xE008: Selector(None, 0, "xen", "sel_hypervisor_cs"),
}


def domain_from_cs(cs: Optional[int]) -> Optional[Tuple[Selector, str]]:
    """Say what a stopped CPU's CS selector is, if it is one of Xen's: ``(selector, why)``.

    :param cs: the CS selector (None when unknown).
    :returns: None for a selector that is not Xen's (bare metal, HVM guests, unknown).
    """
    if cs is None:
        return None
    sel = SELECTORS.get(cs & 0xFFFF)
    if sel is None:
        return None
    fact = FACTS[sel.fact]
    return sel, f"CS {cs & 0xFFFF:#x} is {fact.text} ({cite(sel.fact)})"


# Xen's read-only M2P as a PV guest sees it: (VA, bytes per entry).
M2P_PV64 = (0xFFFF800000000000, 8)  # RO_MPT_VIRT_START (FACTS "m2p_pv64")
M2P_PV32 = (0xF5800000, 4)          # compat M2P at HYPERVISOR_COMPAT_VIRT_START (FACTS "m2p_pv32")
