"""Access verdicts: would a read, write or instruction fetch by the guest kernel or guest user fault?

The rules are Intel SDM Vol. 3A §4.6 ("Access Rights") and §4.6.2 ("Protection Keys"):

* a *user-mode address* has U/S=1 at every level; a *supervisor-mode address* has U/S=0 somewhere;
* user-mode accesses (CPL=3) may touch only user-mode addresses; writes need R/W=1 at every level;
  fetches need no XD (with EFER.NXE=1) at any level;
* supervisor-mode accesses (CPL<3): writes need R/W=1 everywhere only when CR0.WP=1; fetches from
  user-mode addresses fault under CR4.SMEP; data accesses to user-mode addresses fault under
  CR4.SMAP unless EFLAGS.AC=1 (implicit supervisor accesses, e.g. to descriptor tables, fault under
  SMAP whatever AC says);
* protection keys govern *data* accesses only: PKRU for user-mode addresses when CR4.PKE=1, IA32_PKRS
  for supervisor-mode addresses when CR4.PKS=1; AD forbids any data access, WD forbids writes by
  user mode, and by supervisor mode only when CR0.WP=1;
* a reserved bit set in any entry on the path raises #PF with RSVD for every access.

Who is "the guest kernel" depends on the domain: CPL0 for HVM and bare metal, ring 1 for a 32-bit
PV kernel, CPL3 for a 64-bit PV kernel (so SMEP/SMAP/PKS never apply to it: it makes *user-mode*
accesses). The CR4 given must be the one the hardware runs the guest with.

Unknown AC or PKRU/PKRS give conditional reasons in brackets (``SMAP[AC=0]``,
``PKEY5-AD[PKRU?]``): the access faults for some values of the unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .arch import CR0, CR4
from .model import ACCESS_KEYS, Effective, Verdict

__all__ = ["Judge", "access_verdict"]


def _key_bits(reg: Optional[int], pkey: int) -> Tuple[Optional[bool], Optional[bool]]:
    """(AD, WD) of ``pkey`` in PKRU/PKRS, or (None, None) when the register is unknown."""
    if reg is None:
        return None, None
    return bool(reg >> (2 * pkey) & 1), bool(reg >> (2 * pkey + 1) & 1)


def access_verdict(eff: Effective, pkey: Optional[int], rsvd: bool, *, cpl: int, access: str,
                   cr0: int, cr4: int, ac: Optional[int] = None, pkru: Optional[int] = None,
                   pkrs: Optional[int] = None) -> Verdict:
    """Judge one access to one mapping.

    :param eff: rights combined across the levels (:class:`~gdb_xenpte.model.Effective`).
    :param pkey: the leaf's protection-key field (None where the format has none).
    :param rsvd: a reserved bit is set somewhere on the path.
    :param cpl: privilege of the accessor (0..3); below 3 is supervisor mode.
    :param access: ``"read"``, ``"write"`` or ``"exec"``.
    :param cr0: CR0 (only WP matters); ``cr4``: the hardware CR4 (SMEP/SMAP/PKE/PKS).
    :param ac: EFLAGS.AC for explicit supervisor data accesses; None = unknown.
    :param pkru: PKRU; ``pkrs``: IA32_PKRS; None = unknown.
    :returns: the verdict with every reason that applies.
    """
    if rsvd:
        return Verdict(False, ("RSVD",))
    hard: List[str] = []
    cond: List[str] = []
    supervisor = cpl < 3
    wp = bool(cr0 & CR0.WP)
    data = access != "exec"
    if not supervisor:
        if not eff.user:
            hard.append("USER-on-SUPERVISOR-page")
        if access == "write" and not eff.write:
            hard.append("RO")
        if access == "exec" and not eff.exec:
            hard.append("NX")
    else:
        if access == "exec":
            if eff.user and cr4 & CR4.SMEP:
                hard.append("SMEP")
            if not eff.exec:
                hard.append("NX")
        else:
            if eff.user and cr4 & CR4.SMAP:
                if ac is None:
                    cond.append("SMAP[AC=0]")
                elif not ac:
                    hard.append("SMAP")
            if access == "write" and not eff.write and wp:
                hard.append("RO+WP")
    if data and pkey is not None:
        reg_name, reg = None, None
        if eff.user and cr4 & CR4.PKE:
            reg_name, reg = "PKRU", pkru
        elif not eff.user and cr4 & CR4.PKS and supervisor:
            reg_name, reg = "PKRS", pkrs
        if reg_name is not None:
            ad, wd = _key_bits(reg, pkey)
            wd_applies = access == "write" and (not supervisor or wp)
            if ad is None:
                cond.append(f"PKEY{pkey}-AD[{reg_name}?]")
                if wd_applies:
                    cond.append(f"PKEY{pkey}-WD[{reg_name}?]")
            elif ad:
                hard.append(f"PKEY{pkey}-AD")
            elif wd and wd_applies:
                hard.append(f"PKEY{pkey}-WD")
    if hard:
        return Verdict(False, tuple(hard + cond))
    if cond:
        return Verdict(None, tuple(cond))
    return Verdict(True)


@dataclass(frozen=True)
class Judge:
    """Verdicts for the six (who x access) pairs of :data:`~gdb_xenpte.model.ACCESS_KEYS`.

    :param cr0: CR0; ``cr4``: the CR4 the hardware runs the guest with (effective CR4).
    :param kernel_cpl: the guest kernel's privilege: 0 (HVM, bare metal), 1 (32-bit PV), 3 (64-bit
        PV). The guest user always runs at CPL3.
    """

    cr0: int
    cr4: int
    kernel_cpl: int = 0
    ac: Optional[int] = None
    pkru: Optional[int] = None
    pkrs: Optional[int] = None

    def judge(self, eff: Effective, pkey: Optional[int], rsvd: bool) -> Dict[str, Verdict]:
        """Return ``{key: Verdict}`` for every key of ACCESS_KEYS."""
        out = {}
        for key in ACCESS_KEYS:
            who, access = key.split("_")
            cpl = self.kernel_cpl if who == "kernel" else 3
            out[key] = access_verdict(eff, pkey, rsvd, cpl=cpl, access=access, cr0=self.cr0,
                                      cr4=self.cr4, ac=self.ac, pkru=self.pkru, pkrs=self.pkrs)
        return out
