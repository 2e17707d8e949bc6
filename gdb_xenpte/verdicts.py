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
``PKEY5-AD[PKRU?]``): the access faults for some values of the unknown. Key 0 under an unknown
PKRU/PKRS is taken as allowed: every PKRU that Linux (``init_pkru_value``) or Xen loads, and the
reset value 0, allow key 0.

Whose choice a fault enforces (:func:`fault_class`, the one definition every count uses): a
page's own U/S, R/W and NX bits and the guest's own CR4/PKRU are the guest's choices; SMEP, SMAP
or a key that Xen (or a what-if) imposes on a PV guest is not; a reserved bit makes the entry
invalid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

from .arch import CR0, CR4
from .model import ACCESS_KEYS, Effective, Verdict

__all__ = ["FAULTING_CLASSES", "FAULT_CLASSES", "Judge", "OWN_RIGHTS_REASONS", "access_verdict",
           "fault_class", "is_conditional", "is_faulting", "reason_class"]

# Fault reasons that only restate a page's own rights: a user access to a supervisor page, a
# write to a read-only page, a fetch from an NX page. Every mapping has some.
OWN_RIGHTS_REASONS = ("USER-on-SUPERVISOR-page", "RO", "RO+WP", "NX")
# A mapping's fault classes, worst first (fault_class returns the worst that applies):
# invalid: a reserved bit, every access faults; imposed: a protection the guest did not choose
# (Xen's SMEP/SMAP on a ring-1 kernel, a what-if) faults an access; guest: a protection the guest
# chose (its SMEP/SMAP/keys) faults an access for sure; conditional: only for some value of an
# unknown (AC, PKRU, PKRS); none: nothing beyond the page's own rights.
FAULT_CLASSES = ("invalid", "imposed", "guest", "conditional", "none")
# Faults beyond the guest's own choices: what `--faults` shows and what "faulting" counts.
FAULTING_CLASSES = ("invalid", "imposed")


def _key_bits(reg: Optional[int], pkey: int) -> Tuple[Optional[bool], Optional[bool]]:
    """(AD, WD) of ``pkey`` in PKRU/PKRS, or (None, None) when the register is unknown."""
    if reg is None:
        return None, None
    return bool(reg >> (2 * pkey) & 1), bool(reg >> (2 * pkey + 1) & 1)


def access_verdict(eff: Effective, pkey: Optional[int], rsvd: bool, *, cpl: int, access: str,
                   cr0: int, cr4: int, ac: Optional[int] = None, pkru: Optional[int] = None,
                   pkrs: Optional[int] = None, imposed: int = 0) -> Verdict:
    """Judge one access to one mapping.

    :param eff: rights combined across the levels (:class:`~gdb_xenpte.model.Effective`).
    :param pkey: the leaf's protection-key field (None where the format has none).
    :param rsvd: a reserved bit is set somewhere on the path.
    :param cpl: privilege of the accessor (0..3); below 3 is supervisor mode.
    :param access: ``"read"``, ``"write"`` or ``"exec"``.
    :param cr0: CR0 (only WP matters); ``cr4``: the hardware CR4 (SMEP/SMAP/PKE/PKS).
    :param ac: EFLAGS.AC for explicit supervisor data accesses; None = unknown.
    :param pkru: PKRU; ``pkrs``: IA32_PKRS; None = unknown (key 0 is then taken as allowed).
    :param imposed: CR4 bits (SMEP/SMAP/PKE/PKS) whose protection the guest did not choose; the
        reasons they cause are listed in ``Verdict.imposed`` too.
    :returns: the verdict with every reason that applies.
    """
    if rsvd:
        return Verdict(False, ("RSVD",))
    imposed_hit: List[str] = []
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
                if imposed & CR4.SMEP:
                    imposed_hit.append("SMEP")
            if not eff.exec:
                hard.append("NX")
        else:
            if eff.user and cr4 & CR4.SMAP:
                reason = "SMAP[AC=0]" if ac is None else "SMAP" if not ac else None
                if reason:
                    (cond if ac is None else hard).append(reason)
                    if imposed & CR4.SMAP:
                        imposed_hit.append(reason)
            if access == "write" and not eff.write and wp:
                hard.append("RO+WP")
    if data and pkey is not None:
        reg_name, reg, bit = None, None, 0
        if eff.user and cr4 & CR4.PKE:
            reg_name, reg, bit = "PKRU", pkru, CR4.PKE
        elif not eff.user and cr4 & CR4.PKS and supervisor:
            reg_name, reg, bit = "PKRS", pkrs, CR4.PKS
        if reg_name is not None and not (reg is None and pkey == 0):
            ad, wd = _key_bits(reg, pkey)
            wd_applies = access == "write" and (not supervisor or wp)
            found = []
            if ad is None:
                cond.append(f"PKEY{pkey}-AD[{reg_name}?]")
                found.append(cond[-1])
                if wd_applies:
                    cond.append(f"PKEY{pkey}-WD[{reg_name}?]")
                    found.append(cond[-1])
            elif ad:
                hard.append(f"PKEY{pkey}-AD")
                found.append(hard[-1])
            elif wd and wd_applies:
                hard.append(f"PKEY{pkey}-WD")
                found.append(hard[-1])
            if imposed & bit:
                imposed_hit += found
    if hard:
        return Verdict(False, tuple(hard + cond), tuple(imposed_hit))
    if cond:
        return Verdict(None, tuple(cond), tuple(imposed_hit))
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
    imposed: int = 0  # CR4 bits whose protections are imposed (domain_cpu.DomainCpu.imposed_cr4)

    def judge(self, eff: Effective, pkey: Optional[int], rsvd: bool) -> Dict[str, Verdict]:
        """Return ``{key: Verdict}`` for every key of ACCESS_KEYS."""
        out = {}
        for key in ACCESS_KEYS:
            who, access = key.split("_")
            cpl = self.kernel_cpl if who == "kernel" else 3
            out[key] = access_verdict(eff, pkey, rsvd, cpl=cpl, access=access, cr0=self.cr0,
                                      cr4=self.cr4, ac=self.ac, pkru=self.pkru, pkrs=self.pkrs,
                                      imposed=self.imposed)
        return out


def is_conditional(reason: str) -> bool:
    """A reason that holds only for some value of an unknown (``SMAP[AC=0]``, ``[PKRU?]``)."""
    return reason.endswith("]")


def reason_class(reason: str, verdict: Verdict) -> str:
    """``"rights"`` (the page's own bits), ``"invalid"``, ``"imposed"``, ``"guest"`` or
    ``"conditional"`` for one reason of ``verdict``."""
    if reason == "RSVD":
        return "invalid"
    if reason in OWN_RIGHTS_REASONS:
        return "rights"
    if reason in verdict.imposed:
        return "imposed"
    return "conditional" if is_conditional(reason) else "guest"


def fault_class(verdicts: Mapping[str, Verdict]) -> str:
    """The worst :data:`FAULT_CLASSES` entry among a mapping's verdicts.

    An imposed protection counts even where it depends on an unknown: a kernel that never chose
    SMAP has no reason to set AC for it (the #PF loop of the seed mail).
    """
    seen = {reason_class(r, v) for v in verdicts.values() for r in v.reasons}
    return next((c for c in FAULT_CLASSES[:-1] if c in seen), "none")


def is_faulting(verdicts: Mapping[str, Verdict]) -> bool:
    """Some access faults beyond the guest's own choices (imposed, or a reserved bit): what the
    walk summary, ``--faults``, ``xen-pte-dump --summary``, CSV and diff all count."""
    return fault_class(verdicts) in FAULTING_CLASSES
