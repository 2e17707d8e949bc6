"""Xen and guest page-table entries: the flags word, Xen-owned bits, key collisions, disallow masks.

Failure modes: :class:`~gdb_xenpte.errors.OptionError` for a level the domain has no
Xen-validated table for, or a disallow mask asked of an HVM policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from ..arch import PTE, PTE_BIT_NAMES
from ..errors import OptionError
from .facts import Version, cite
from .policy import XenPolicy

__all__ = ["disallow_mask", "disallow_violations", "get_pte_flags", "pkey_collision",
           "put_pte_flags", "xen_bits"]

def get_pte_flags(raw: int) -> int:
    """Return Xen's 24-bit flags word of a PTE: bits 11:0 stay, bits 63:52 become 23:12.

    :param raw: the 64-bit entry.
    :returns: the flags word (:data:`FACTS` ``pte_flags``).
    """
    return ((raw >> 40) & 0xFFF000) | (raw & 0xFFF)


def put_pte_flags(flags: int) -> int:
    """Return the PTE bits of a flags word (the inverse of :func:`get_pte_flags`).

    Bits 24-31 of Xen's ``uint32`` masks have no PTE position and are dropped.

    :param flags: a flags word or disallow mask.
    :returns: the corresponding 64-bit PTE mask.
    """
    return ((flags & 0xFFF000) << 40) | (flags & 0xFFF)


_LEVEL_ALIASES = {"pt": 1, "l1": 1, "pd": 2, "l2": 2, "pdpt": 3, "l3": 3, "pml4": 4, "l4": 4}


def _xen_level(level_name: str, policy: XenPolicy) -> int:
    """Map an SDM (``pt``/``pd``/``pdpt``/``pml4``) or Xen (``l1``..``l4``) name to Xen's level."""
    level = _LEVEL_ALIASES.get(str(level_name).strip().lower())
    top = 3 if policy.domain == "pv32" else 4
    if level is None or level > top:
        raise OptionError(f"level {level_name!r} has no Xen-validated table in a "
                          f"{policy.domain} guest: expected one of pt/pd/pdpt"
                          + ("" if top == 3 else "/pml4"))
    return level


def _gnttab_flag(policy: XenPolicy) -> Tuple[int, str]:
    """``_PAGE_GNTTAB`` as a flags bit for this build (0 in release builds), and its fact key."""
    if not policy.debug:
        return 0, ""
    if policy.has("gnttab_bit11"):
        return 1 << 11, "gnttab_bit11"
    return 1 << 22, "gnttab_bit62"


def xen_bits(raw: int, level_name: str, policy: XenPolicy) -> Tuple[Tuple[int, str, str], ...]:
    """Name the Xen-owned bits set in one guest entry.

    Only present L1 entries of PV guests carry Xen's bits: bit 52 (64-bit PV, 3.0.3+) and, in
    debug builds, ``_PAGE_GNTTAB`` (bit 11 before 3.4, bit 62 since). HVM guest entries hold
    GFNs and nothing of Xen's. A bit in the guest-available range that Xen does not own in this
    policy is the guest's and is not listed.

    :param raw: the 64-bit entry as read from the guest's table.
    :param level_name: ``pt``/``pd``/``pdpt``/``pml4`` (or ``l1``..``l4``).
    :param policy: the Xen build and domain.
    :returns: ``(pte_bit, name, meaning)`` per Xen-owned bit set, in bit order.
    :raises OptionError: for a level the domain has no table for.
    """
    if not policy.is_pv:
        return ()
    if _xen_level(level_name, policy) != 1 or not raw & (1 << PTE.P):
        return ()
    found = []
    gnt, gnt_key = _gnttab_flag(policy)
    gnt_bit = 11 if gnt == 1 << 11 else 62
    if gnt and raw & (1 << gnt_bit):
        found.append((gnt_bit, "_PAGE_GNTTAB",
                      f"Xen debug build: grant mapping ({cite(gnt_key)})"))
    if policy.domain == "pv64" and policy.has("guest_kernel") and raw & (1 << 52):
        if raw & (1 << PTE.G):
            meaning = ("Xen: guest-kernel page, but G is set too: Xen warns 'Global bit is set "
                       "in kernel page' when an entry is written so, and leaves G: this kernel "
                       f"mapping is global ({cite('guest_kernel_global')})")
        else:
            meaning = ("Xen: guest-kernel page (written with U=0; Xen forced U=1, no G) "
                       f"({cite('guest_kernel')})")
        found.append((52, "_PAGE_GUEST_KERNEL", meaning))
    return tuple(sorted(found))


def pkey_collision(raw: int, level_name: str, policy: XenPolicy) -> Optional[str]:
    """Say when an entry's protection key (PTE bits 62:59) is really, in part, a Xen bit.

    That happens on present L1 entries of PV guests in debug builds since 3.4, where bit 62 is
    ``_PAGE_GNTTAB``. (PV context never has CR4.PKE, so the field is never a key for PV guests.)

    :param raw: the 64-bit entry.
    :param level_name: ``pt``/``pd``/``pdpt``/``pml4`` (or ``l1``..``l4``).
    :param policy: the Xen build and domain.
    :returns: one line explaining the collision, or None when there is none.
    :raises OptionError: for a level the domain has no table for.
    """
    for bit, name, _ in xen_bits(raw, level_name, policy):
        if bit in range(PTE.PKEY_SHIFT, PTE.PKEY_SHIFT + 4):
            key = (raw & PTE.PKEY_MASK) >> PTE.PKEY_SHIFT
            return (f"protection key {key} is not a key: PTE bit {bit} (key bit "
                    f"{bit - PTE.PKEY_SHIFT}) is Xen's {name} in this debug build, and CR4.PKE "
                    f"is never set for PV guests ({cite('pkey_bits')})")
    return None


@dataclass(frozen=True)
class _MaskEra:
    """The x86_64 disallow-mask rules from one release on (flags-word masks, NX hardware)."""

    since: Version
    fact: str
    base: int                 # with NX hardware
    nx_needs_hw: bool         # without NX hardware the base also disallows NX (flag bit 23)
    l1_allows_g: bool
    gnttab_everywhere: bool   # 3.0.0-3.0.2: _PAGE_GNTTAB is in the base mask of every level
    io_relax: bool            # l1_disallow_mask() relaxes PAGE_CACHE_ATTRS
    compat_l3: Optional[int]  # 32-bit PV L3 (PAE PDPTE) mask


_NX_FLAG = 1 << 23
_G_FLAG = 1 << PTE.G
_PSE_FLAG = 1 << PTE.PS
_CACHE_ATTRS = (1 << PTE.PWT) | (1 << PTE.PCD) | (1 << PTE.PAT_4K)

_MASK_ERAS = (
    _MaskEra((3, 0, 0), "mask_3_0", 0xFF7FF180, True, False, True, False, None),
    _MaskEra((3, 0, 3), "mask_3_0_3", 0xFF000180, False, True, False, False, None),
    _MaskEra((3, 1, 0), "mask_3_1", 0xFF000180, True, True, False, False, 0xFFFFF1E6),
    _MaskEra((3, 2, 0), "mask_3_2", 0xFF000198, True, True, False, True, 0xFFFFF1FE),
    _MaskEra((3, 4, 0), "mask_3_4", 0xFF000198, True, True, False, True, 0xFFFFF198),
)


def _mask_era(version: Version) -> _MaskEra:
    return [era for era in _MASK_ERAS if era.since <= version][-1]


def disallow_mask(level_name: str, policy: XenPolicy) -> int:
    """Return the flags-word mask Xen rejects in a present PV guest entry at this level.

    The mask applies to :func:`get_pte_flags` of the entry (use :func:`put_pte_flags` for the PTE
    bits). It depends on the version, the build (debug adds ``_PAGE_GNTTAB`` on L1), NX hardware,
    I/O capability (cache attributes on L1), and 32-bit PV (its L3 is a PAE PDPT).

    :param level_name: ``pt``/``pd``/``pdpt``/``pml4`` (or ``l1``..``l4``).
    :param policy: a PV policy.
    :returns: the mask as Xen's ``uint32`` (bits 24-31 have no PTE meaning).
    :raises OptionError: for an HVM policy (Xen does not validate HVM guest tables) or a level
        the domain has no table for.
    """
    if not policy.is_pv:
        raise OptionError("Xen validates only PV guest page tables; this policy is for HVM")
    level = _xen_level(level_name, policy)
    era = _mask_era(policy.version)
    gnt, _ = _gnttab_flag(policy)
    base = era.base
    if era.nx_needs_hw and not policy.hw.nx:
        base |= _NX_FLAG
    if era.gnttab_everywhere:
        base |= gnt
    if level == 3 and policy.domain == "pv32":
        return era.compat_l3
    if level == 1:
        mask = (base | gnt) & ~(_G_FLAG if era.l1_allows_g else 0)
        if era.io_relax and policy.io_capable:
            mask &= ~_CACHE_ATTRS
        return mask
    if level == 2 and policy.superpages:
        return base & ~_PSE_FLAG
    return base


def _pte_bit_name(bit: int, level: int, policy: XenPolicy) -> str:
    gnt, _ = _gnttab_flag(policy)
    if gnt and bit == (11 if gnt == 1 << 11 else 62):
        return "_PAGE_GNTTAB"
    if bit == PTE.PS:
        return "PAT" if level == 1 else "PSE"
    names = {b: name for name, b in PTE_BIT_NAMES if b >= 0}  # one spelling: arch's
    names.update({b: f"AVAIL{i}" for i, b in enumerate(PTE.AVAIL_LOW)})
    return names.get(bit, f"bit{bit}")


def disallow_violations(raw: int, level_name: str, policy: XenPolicy) -> List[Tuple[int, str]]:
    """Name the bits of a present PV entry that Xen's disallow mask rejects.

    Such an entry cannot have been installed by Xen (``-EINVAL``, "Bad L1 flags"); finding one in
    a live table means the table was never validated or was corrupted. Non-present entries are not
    checked by Xen, so none is reported for them; HVM guests have no masks and get ``[]``.

    :param raw: the 64-bit entry.
    :param level_name: ``pt``/``pd``/``pdpt``/``pml4`` (or ``l1``..``l4``).
    :param policy: the Xen build and domain.
    :returns: ``(pte_bit, name)`` per violating bit, in bit order.
    :raises OptionError: for a level the domain has no table for.
    """
    if not policy.is_pv:
        return []
    level = _xen_level(level_name, policy)
    if not raw & (1 << PTE.P):
        return []
    bad = put_pte_flags(get_pte_flags(raw) & disallow_mask(level_name, policy))
    return [(bit, _pte_bit_name(bit, level, policy)) for bit in range(64) if bad >> bit & 1]

