"""The CR4 Xen's policy gives a domain: the hardware value per context, the guest's view, and why.

These are the *policy's* answers (what Xen would load); :mod:`gdb_xenpte.domain_cpu` decides
between them and what the CPU or a dump shows.

Failure modes: :class:`~gdb_xenpte.errors.OptionError` for an unknown context, or an HVM CR4
asked for without the guest's CR4.
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Tuple

from ..arch import CR4
from ..errors import OptionError
from .facts import cite
from .layout import kernel_cpl
from .policy import XenPolicy

__all__ = ["Cr4", "PAGING_BITS", "PV_CR4_GUEST_MASK", "PV_CR4_GUEST_VISIBLE_MASK",
           "XEN_CR4_PV32_BITS", "default_xen_cr4", "effective_cr4", "explain_bits",
           "guest_visible_cr4", "hvm_valid_bits"]

PV_CR4_GUEST_MASK = CR4.TSD | CR4.DE | CR4.FSGSBASE | CR4.OSXSAVE       # 0x5000C
PV_CR4_GUEST_VISIBLE_MASK = CR4.PAE | CR4.MCE | CR4.OSFXSR | CR4.OSXMMEXCPT  # 0x660
XEN_CR4_PV32_BITS = CR4.SMEP | CR4.SMAP                                  # 0x300000

# Bits explained even when clear: the ones that decide how a walk is judged.
PAGING_BITS = (CR4.PSE, CR4.PAE, CR4.PGE, CR4.LA57, CR4.PCIDE, CR4.SMEP, CR4.SMAP, CR4.PKE,
                CR4.PKS)


class Cr4(NamedTuple):
    """A CR4 value and how it was derived.

    :param value: the CR4 value.
    :param explanation: one line per relevant bit, ``"NAME=v: where it came from"``, in bit
        order; extra ``"note: ..."`` lines at the end.
    :param reasons: bit -> why it has its value (the text after ``"NAME=v: "``).
    :param notes: remarks on the derivation as a whole (the ``note:`` lines).
    """

    value: int
    explanation: Tuple[str, ...]
    reasons: Dict[int, str] = {}
    notes: Tuple[str, ...] = ()


def explain_bits(value: int, reasons: Dict[int, str], notes: Tuple[str, ...] = ()) -> Cr4:
    """A :class:`Cr4` of ``value`` whose lines are ``reasons`` (every paging bit gets one).

    :param reasons: bit -> why; each must describe the bit as it is in ``value``.
    """
    reasons = dict(reasons)
    for bit in PAGING_BITS:
        reasons.setdefault(bit, "not set")
    lines = [f"{CR4.NAMES.get(bit, hex(bit))}={int(bool(value & bit))}: {why}"
             for bit, why in sorted(reasons.items())]
    return Cr4(value, tuple(lines + [f"note: {n}" for n in notes]), reasons, tuple(notes))


class _Cr4Builder:
    """Accumulates a CR4 value with one reason per bit touched."""

    def __init__(self, value: int, reason: str):
        self.value = value
        self.reasons: Dict[int, str] = {}
        self.notes: List[str] = []
        for bit in _bits(value):
            self.reasons[bit] = reason

    def set(self, bit: int, on: bool, reason: str):
        self.value = (self.value | bit) if on else (self.value & ~bit)
        self.reasons[bit] = reason

    def result(self) -> Cr4:
        return explain_bits(self.value, self.reasons, tuple(self.notes))


def _bits(value: int) -> List[int]:
    return [1 << i for i in range(value.bit_length()) if value >> i & 1]


def default_xen_cr4(policy: XenPolicy) -> Cr4:
    """Derive a plausible ``mmu_cr4_features`` (Xen's own CR4) from the version and hardware.

    Use the real value when known (e.g. CR4 read while the CPU is in Xen's idle loop, HVM
    context); this is only what setup code would set on such hardware. Not modelled: CET (Xen's
    shadow stacks/IBT), FRED, UMIP and LASS.

    :param policy: the Xen build (its domain is irrelevant here).
    :returns: the value and one line per bit.
    """
    hw = policy.hw
    pse = policy.has("minimal_cr4_pse")
    b = _Cr4Builder(0, "")
    minimal = "minimal_cr4_pse" if pse else "minimal_cr4"
    for bit in ((CR4.PSE,) if pse else ()) + (CR4.PGE, CR4.PAE):
        b.set(bit, True, f"Xen's minimal CR4 ({cite(minimal)})")
    for bit in (CR4.OSFXSR, CR4.OSXMMEXCPT):
        b.set(bit, True, f"set by Xen at boot ({cite('cr4_fxsr')})")
    for bit, has_hw, key in ((CR4.MCE, hw.mce, "cr4_mce"), (CR4.OSXSAVE, hw.xsave, "cr4_osxsave"),
                             (CR4.FSGSBASE, hw.fsgsbase, "cr4_fsgsbase"),
                             (CR4.VMXE, hw.vmx, "cr4_vmxe")):
        if has_hw and policy.has(key):
            b.set(bit, True, f"hardware has it ({cite(key)})")
    for bit, name in ((CR4.SMEP, "smep"), (CR4.SMAP, "smap")):
        in_xen, _, why = policy._feature(name)
        b.set(bit, in_xen, why)
    if hw.pku and policy.has("xen_pke"):
        b.set(CR4.PKE, True, f"hardware has PKU ({cite('xen_pke')})")
    else:
        b.set(CR4.PKE, False, "no PKU" if not hw.pku else
              f"Xen runs with PKE clear before 4.16 ({cite('xen_pke')})")
    b.notes.append("derived from version and hardware, not read from the machine")
    return b.result()


def _start(policy: XenPolicy, xen_cr4: Optional[int]) -> Tuple[_Cr4Builder, int]:
    """A builder seeded with Xen's CR4 (given, or derived), plus that CR4."""
    given = xen_cr4 is not None
    x = int(xen_cr4) if given else default_xen_cr4(policy).value
    how = "given" if given else "derived from version/hardware"
    b = _Cr4Builder(x, f"from Xen's CR4 (mmu_cr4_features, {how})")
    for bit, name in ((CR4.SMEP, "smep"), (CR4.SMAP, "smap")):
        in_xen, _, why = policy._feature(name)
        has = "has" if x & bit else "lacks"
        if bool(x & bit) == in_xen:
            b.reasons[bit] = f"Xen's own CR4 {has} it ({how}): {why}"
        else:
            b.reasons[bit] = (f"Xen's own CR4 as given {has} it, which the policy would not "
                              f"expect ({why}); the given value is used")
    return b, x


def _pv_cr4(policy: XenPolicy, guest_cr4: int, xen_cr4: Optional[int]) -> _Cr4Builder:
    """The CR4 Xen loads for a PV vCPU (pv_make_cr4 and its predecessors)."""
    b, x = _start(policy, xen_cr4)
    v = policy.version
    pv64 = policy.domain == "pv64"
    # 32-bit PV domains never get XPTI or PCID (switch_compat).
    xpti = policy.xpti and pv64
    pcid = policy.pcid and pv64
    if v >= (4, 12, 0):
        why = cite("pv_make_cr4")
        for bit in (CR4.PCIDE, CR4.PGE, CR4.TSD):
            b.set(bit, False, f"pv_make_cr4 clears it ({why})")
    elif v >= (4, 11, 0):
        why = cite("pv_cr4_xpti")
        for bit in (CR4.PCIDE, CR4.PGE):
            b.set(bit, False, f"not taken from Xen's CR4 ({why})")
    else:
        why = cite("pv_cr4_macro")
        for bit in (CR4.PGE, CR4.PSE):
            if x & bit:
                b.set(bit, True, f"Xen's, ORed in by pv_guest_cr4_to_real_cr4 ({why})")
        if policy.xpti or policy.pcid:
            b.notes.append("xpti/pcid are not modelled before 4.11 (stable backports differ)")
    if v >= (4, 11, 0):
        if pcid:
            b.set(CR4.PCIDE, True, f"the domain uses PCID ({why})")
        elif xpti:
            b.set(CR4.PGE, False, f"XPTI is active: no global pages ({why})")
        elif not policy.global_pages and policy.has("global_pages"):
            b.set(CR4.PGE, False, f"global-pages=0 ({cite('global_pages')})")
        else:
            b.set(CR4.PGE, True, f"no PCID, no XPTI: global pages on ({why})")
        if not pv64 and (policy.xpti or policy.pcid):
            b.notes.append(f"xpti/pcid ignored: 32-bit PV never uses them "
                           f"({cite('pv32_no_xpti')})")
    if policy.vtsc or guest_cr4 & CR4.TSD:
        b.set(CR4.TSD, True, "Xen virtualises the TSC (vtsc)" if policy.vtsc
              else f"the guest set TSD in its CR4 view ({why})")
    if CR4.DE & (x | guest_cr4):
        b.set(CR4.DE, False, f"DE is emulated for PV, never in the real CR4 ({why})")
    if v >= (4, 12, 0) and pv64:
        want = bool(guest_cr4 & CR4.FSGSBASE) and bool(x & CR4.FSGSBASE)
        if want or x & CR4.FSGSBASE:
            b.set(CR4.FSGSBASE, want, ("the 64-bit PV guest set FSGSBASE" if want else
                                       "a 64-bit PV guest keeps FSGSBASE only if it sets it")
                  + f" ({why})")
    # PKE: cleared by pv_make_cr4 since 4.16; before, Xen's own CR4 never had it.
    if policy.has("pv_pke"):
        b.set(CR4.PKE, False, f"pv_make_cr4 clears it: no protection keys for PV guests "
                              f"({cite('pv_pke')})")
    else:
        b.set(CR4.PKE, False, f"never set for PV guests: Xen's own CR4 has no PKE before 4.16 "
                              f"({cite('xen_pke')})")
    return b


def hvm_valid_bits(policy: XenPolicy) -> Dict[int, Tuple[bool, str]]:
    """For the paging-relevant CR4 bits an HVM guest may or may not set: (valid, why)."""
    hw = policy.hw
    _, smep, smep_why = policy._feature("smep")
    _, smap, smap_why = policy._feature("smap")
    valid = {
        CR4.SMEP: (smep and policy.has("hvm_smep"), smep_why if not smep else cite("hvm_smep")),
        CR4.SMAP: (smap and policy.has("hvm_smap"), smap_why if not smap else cite("hvm_smap")),
        CR4.LA57: (False, f"never valid for HVM guests ({cite('hvm_cr4')})"),
    }
    pke_why = cite("hvm_pke")
    if not policy.has("hvm_pke"):
        valid[CR4.PKE] = (False, f"not before 4.7 ({pke_why})")
    elif not hw.pku:
        valid[CR4.PKE] = (False, "the CPU has no PKU")
    elif not policy.hap:
        valid[CR4.PKE] = (False, f"only with HAP, this guest is shadow-paged ({pke_why})")
    else:
        valid[CR4.PKE] = (True, pke_why)
    pks_why = cite("hvm_pks")
    if not policy.has("hvm_pks"):
        valid[CR4.PKS] = (False, f"not before 4.18 ({pks_why})")
    elif not hw.pks:
        valid[CR4.PKS] = (False, "the CPU has no PKS")
    elif not (policy.hap and hw.vmx):
        valid[CR4.PKS] = (False, f"only for HAP guests on VMX ({pks_why})")
    else:
        valid[CR4.PKS] = (True, pks_why)
    return valid


def _hvm_cr4(policy: XenPolicy, guest_cr4: int) -> _Cr4Builder:
    """The CR4 that governs an HVM guest's page tables: its own, within the valid bits."""
    b = _Cr4Builder(guest_cr4, f"the guest's own CR4 ({cite('hvm_cr4')})")
    for bit, (ok, why) in hvm_valid_bits(policy).items():
        if guest_cr4 & bit:
            if ok:
                b.set(bit, True, f"the guest's own CR4 ({why})")
            else:
                b.set(bit, False, f"the guest cannot set it, hvm_set_cr4 raises #GP: {why}")
        elif not ok:
            b.set(bit, False, f"the guest's own CR4; not available to it: {why}")
    b.notes.append("Xen also ORs host-owned bits (VMXE, MCE) into the hardware CR4 of a VMX "
                   "guest; they do not affect paging and are not shown")
    return b


def effective_cr4(policy: XenPolicy, guest_cr4: Optional[int] = None,
                  xen_cr4: Optional[int] = None, context: str = "kernel") -> Cr4:
    """Return the CR4 the hardware really runs with while this vCPU's code runs, and why.

    * HVM: the guest's own CR4 governs its tables (only bits ``hvm_cr4_guest_valid_bits``
      allows: PKE with PKU on HAP 4.7+, PKS with PKS on HAP+VMX 4.18+, never LA57).
    * 64-bit PV: ``pv_make_cr4`` (4.12+) or its predecessors: Xen's CR4 with PKE cleared, PGE or
      PCIDE per XPTI/PCID/global-pages, TSD, FSGSBASE rules. SMEP/SMAP are there as Xen set them,
      but do not apply to the CPL3 kernel (:func:`gdb_xenpte.domain_cpu.derive` says which
      protections bind a kernel, and whose choice each is).
    * 32-bit PV: the same, but since 4.7 SMEP and SMAP are cleared while ring 1 (the kernel)
      runs; before 4.7 they stay set (the regression in the "Xen PV PTE ABI" mail).

    :param policy: the Xen build and domain.
    :param guest_cr4: for HVM, the guest's CR4 (required); for PV, the guest's CR4 *view*
        (``ctrlreg[4]``), whose TSD/DE/FSGSBASE/OSXSAVE choices matter; ``None`` means 0.
    :param xen_cr4: Xen's own CR4 (``mmu_cr4_features``, e.g. read in Xen's idle loop) when
        known; otherwise :func:`default_xen_cr4` is used and the explanation says so.
    :param context: ``"kernel"`` (the guest kernel runs), ``"user"`` (guest user space runs) or
        ``"xen"`` (Xen runs on this vCPU's behalf, e.g. in a hypercall or fault handler).
    :returns: the value and one explanation line per relevant bit.
    :raises OptionError: for an unknown context, or HVM without ``guest_cr4``.
    """
    if context not in ("kernel", "user", "xen"):
        raise OptionError(f"unknown CR4 context {context!r}: expected kernel, user or xen")
    if not policy.is_pv:
        if context == "xen":
            b, _ = _start(policy, xen_cr4)
            b.notes.append("Xen runs HVM and idle context with mmu_cr4_features")
            return b.result()
        if guest_cr4 is None:
            raise OptionError("an HVM guest's page tables follow its own CR4: give the guest's "
                              "CR4")
        return _hvm_cr4(policy, int(guest_cr4)).result()
    b = _pv_cr4(policy, int(guest_cr4 or 0), xen_cr4)
    if policy.domain == "pv32" and context == "kernel":
        if policy.has("pv32_cr4"):
            for bit in (CR4.SMEP, CR4.SMAP):
                if b.value & bit:
                    b.set(bit, False, "cleared by Xen on return to ring 1 (the 32-bit PV kernel) "
                                      f"({cite('pv32_cr4')})")
        else:
            for bit in (CR4.SMEP, CR4.SMAP):
                if b.value & bit:
                    b.reasons[bit] += ("; still set in ring 1: Xen clears it for 32-bit PV "
                                       "guest code only since 4.7")
    elif policy.domain == "pv64":
        for bit in (CR4.SMEP, CR4.SMAP):
            if b.value & bit:
                b.reasons[bit] += ("; does not apply to the 64-bit PV kernel, which runs at CPL3 "
                                   "(it keeps Xen off guest memory, all of which is U=1)")
    elif policy.domain == "pv32" and policy.has("pv32_cr4"):
        where = "guest user space (ring 3)" if context == "user" else "Xen"
        b.notes.append(f"SMEP/SMAP as in Xen's CR4 while {where} runs: Xen clears them only "
                       f"for ring 1/2 ({cite('pv32_cr4')})")
    return b.result()


def guest_visible_cr4(policy: XenPolicy, guest_choice: int = 0,
                      xen_cr4: Optional[int] = None) -> Cr4:
    """Return the CR4 the guest reads back (MOV from CR4, ``ctrlreg[4]`` in dumps), and why.

    Kept apart from :func:`effective_cr4`: a PV guest never sees SMEP, SMAP, PKE, PGE, PCIDE or
    PSE, whatever the hardware runs with.

    :param policy: the Xen build and domain.
    :param guest_choice: the CR4 value the guest last wrote (HVM: its CR4).
    :param xen_cr4: Xen's own CR4 when known, else :func:`default_xen_cr4`.
    :returns: the value and one line per bit.
    """
    if not policy.is_pv:
        b = _Cr4Builder(int(guest_choice), "HVM: the guest reads its own CR4 (read shadow)")
        return b.result()
    b, x = _start(policy, xen_cr4)
    pv64 = policy.domain == "pv64"
    # Guest-controllable bits, each dropped when the CPUID policy lacks the feature.
    controllable = CR4.TSD | CR4.DE
    if policy.hw.xsave:
        controllable |= CR4.OSXSAVE
    if policy.hw.fsgsbase and (pv64 or policy.version >= (4, 12, 0)):
        controllable |= CR4.FSGSBASE
    if policy.version >= (4, 12, 0):
        why = cite("pv_cr4_view")
        for bit in _bits(x & ~PV_CR4_GUEST_VISIBLE_MASK):
            b.set(bit, False, f"not in PV_CR4_GUEST_VISIBLE_MASK ({why})")
        for bit in _bits(x & PV_CR4_GUEST_VISIBLE_MASK):
            b.set(bit, True, f"read-only copy of Xen's ({why})")
    else:
        why = cite("pv_cr4_view_old")
        hidden = (CR4.PGE | CR4.PSE | CR4.TSD | CR4.OSXSAVE | CR4.SMEP | CR4.SMAP |
                  CR4.FSGSBASE | CR4.PCIDE | CR4.PKE)
        for bit in _bits(x & hidden):
            b.set(bit, False, f"hidden from PV guests ({why})")
        for bit in _bits(x & ~hidden & ~controllable):
            b.set(bit, True, f"copy of Xen's ({why})")
    for bit in _bits(controllable):
        if guest_choice & bit:
            b.set(bit, True, f"the guest's choice ({why})")
        elif b.value & bit:
            b.set(bit, False, f"guest-controlled, not chosen ({why})")
    for bit in _bits(guest_choice & ~controllable):
        if not x & bit:
            b.set(bit, False, f"the guest cannot set it ({why})")
    hidden_why = ("not in PV_CR4_GUEST_VISIBLE_MASK" if policy.version >= (4, 12, 0)
                  else "hidden from PV guests")
    for bit in PAGING_BITS:
        if not b.value & bit and not controllable & bit:
            # Explain the bit as it is in the guest's view, not as it is in Xen's CR4.
            b.reasons[bit] = f"{hidden_why} ({why})" if x & bit else "not set"
    b.reasons = {bit: r for bit, r in b.reasons.items() if b.value & bit or bit in PAGING_BITS}
    return b.result()


