"""From a source and the user's options to everything a walk needs: one place for every front end.

:func:`prepare` picks the vCPU, merges option overrides with the registers the source reports,
decides whether Xen is in the picture, derives the CR4 the hardware really runs the guest with
(:func:`gdb_xenpte.xen.effective_cr4`), chooses who "the guest kernel" is (CPL0, ring 1 or CPL3)
and returns a :class:`Session` that makes walkers and describes itself (the JSON header, the
``xen-cr4`` explanation). The gdb commands, the batch tool and the what-if comparison all use it.

Precedence, always: option, then what the source says, then the default.

Failure modes: :class:`~gdb_xenpte.errors.OptionError` for a missing CR3, an unknown vCPU, a bad
Xen version or option value.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Union

from . import xen
from .arch import CR4, MODES
from .cpu import CpuState, paging_mode
from .errors import OptionError
from .sources.base import PhysSource, VcpuRegs
from .verdicts import Judge
from .walk import Walker
from .xenview import XenView

__all__ = ["NEWEST_XEN", "Options", "Session", "pick_regs", "prepare"]

# Xen version assumed for a PV domain when nothing names one: the newest behaviour the facts
# table distinguishes (said in the notes).
NEWEST_XEN = max(f.since for f in xen.FACTS.values())


@dataclass(frozen=True)
class Options:
    """What the user may override; ``None`` means "not given".

    :param cr4: the guest's CR4 (for Xen PV: the guest-visible value).
    :param smep: Xen's ``smep=`` option: True/False/"hvm" (also "on"/"off").
    :param mode: force a paging mode (a key of :data:`gdb_xenpte.arch.MODES`).
    """

    vcpu: Optional[int] = None
    cr0: Optional[int] = None
    cr3: Optional[int] = None
    cr4: Optional[int] = None
    efer: Optional[int] = None
    pkru: Optional[int] = None
    pkrs: Optional[int] = None
    ac: Optional[int] = None
    maxphyaddr: Optional[int] = None
    domain: Optional[str] = None
    xen: Optional[str] = None
    xen_debug: Optional[bool] = None
    smep: Union[None, bool, str] = None
    smap: Union[None, bool, str] = None
    global_pages: Optional[bool] = None
    io_capable: Optional[bool] = None
    vendor: Optional[str] = None
    mode: Optional[str] = None
    derive_cr4: bool = False  # what-if: derive the PV context's CR4 even from a guest-context stop

    def with_(self, **changes) -> "Options":
        return replace(self, **changes)


def _first(*values):
    return next((v for v in values if v is not None), None)


XEN_PV32 = CR4.SMEP | CR4.SMAP  # what Xen toggles around a 32-bit PV guest's ring 1


def _names(mask: int) -> str:
    return ", ".join(name for bit, name in sorted(CR4.NAMES.items()) if mask & bit) or "nothing"


def _sm(value) -> Union[bool, str]:
    if value is None:
        return True  # Xen's default: on where the hardware has it
    if isinstance(value, str) and value.lower() in ("on", "off"):
        return value.lower() == "on"
    return value


def pick_regs(source: PhysSource, index: Optional[int]) -> VcpuRegs:
    """The vCPU ``index`` of the source (default: the source's current one, else 0).

    :raises OptionError: if the source has vCPUs and none has that index.
    """
    vcpus = source.vcpus()
    if not vcpus:
        if index not in (None, 0):
            raise OptionError(f"{source.name} has no vCPU registers, so no vCPU {index}")
        return VcpuRegs(-1)  # raw images, gdbsx: registers must come from options
    if index is None:
        index = getattr(source, "current_vcpu", None)
        if index is None:
            index = vcpus[0].index
    for regs in vcpus:
        if regs.index == index:
            return regs
    known = ", ".join(str(r.index) for r in vcpus)
    raise OptionError(f"{source.name} has no vCPU {index} (it has: {known})")


@dataclass
class Session:
    """Inputs of one walk, and how they were derived.

    :param cpu: CPU state whose ``cr4`` is the effective (hardware) CR4.
    :param guest_cr4: the CR4 the registers or options gave (PV dumps: the guest's view).
    :param cr4_explanation: one line per CR4 bit that matters, saying where it came from.
    :param policy: the Xen policy, or None when Xen is not in the picture.
    :param mode: paging-mode override for the walker (e.g. ``"pv32"``), or None.
    """

    source: PhysSource
    regs: VcpuRegs
    cpu: CpuState
    guest_cr4: int
    cr4_explanation: List[str]
    domain: str
    policy: Optional["xen.XenPolicy"]
    judge: Judge
    xen_view: Optional[XenView]
    mode: Optional[str]
    kernel_notes: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def effective_cr4(self) -> int:
        return self.cpu.cr4

    def walker(self, **kw) -> Walker:
        """A :class:`~gdb_xenpte.walk.Walker` for this session (``kw``: budgets, root)."""
        return Walker(self.source, self.cpu, mode=self.mode, domain=self.xen_view,
                      judge=self.judge, **kw)

    def header(self) -> Dict[str, object]:
        """The JSON header record's fields (addresses as hex strings)."""
        choice = paging_mode(self.cpu)
        mode = MODES[self.mode].name if self.mode else choice.mode.name  # "4-level", as the SDM
        hx = lambda v: None if v is None else f"{v:#x}"
        return {
            "type": "header",
            "source": self.source.describe(),
            "vcpu": self.regs.index if self.regs.index >= 0 else None,
            "cr0": hx(self.cpu.cr0), "cr3": hx(self.cpu.cr3), "cr4": hx(self.guest_cr4),
            "efer": hx(self.cpu.efer), "effective_cr4": hx(self.cpu.cr4),
            "pkru": hx(self.cpu.pkru), "pkrs": hx(self.cpu.pkrs), "ac": self.cpu.ac,
            "mode": mode, "domain": self.domain, "kernel_cpl": self.judge.kernel_cpl,
            "xen": None if self.policy is None else {
                "version": ".".join(map(str, self.policy.version[:2])),
                "debug": self.policy.debug},
            "notes": list(self.notes) + list(self.kernel_notes) + list(choice.notes),
        }


def prepare(source: PhysSource, opts: Options = Options()) -> Session:
    """Combine options and the source's registers into a :class:`Session`.

    :raises OptionError: if no CR3 is known or an option value is inconsistent.
    """
    regs = pick_regs(source, opts.vcpu)
    cr3 = _first(opts.cr3, regs.cr3)
    if cr3 is None:
        raise OptionError(f"{source.name} gives no CR3: give --cr3 VALUE")
    guest_cr4 = _first(opts.cr4, regs.cr4)
    notes = list(regs.notes)
    if guest_cr4 is None:
        notes.append("CR4 unknown: taken as 0 (give --cr4)")
        guest_cr4 = 0
    domain = _first(opts.domain, source.domain)
    if domain is None:
        guess = xen.domain_from_cs(regs.cs)
        if guess is not None:
            domain = guess[0]
            notes.append(f"domain {domain} assumed: {guess[1]} (give --domain to override)")
        else:
            domain = "hvm"
    if domain not in xen.DOMAIN_TYPES:
        raise OptionError(f"unknown domain type {domain!r} (use one of "
                          f"{', '.join(xen.DOMAIN_TYPES)})")
    version = _first(opts.xen, ".".join(map(str, source.xen_version))
                     if source.xen_version else None)
    cpu = CpuState(
        cr0=_first(opts.cr0, regs.cr0, CpuState.cr0), cr3=cr3, cr4=guest_cr4,
        efer=_first(opts.efer, regs.efer), pkru=_first(opts.pkru, regs.pkru),
        pkrs=_first(opts.pkrs, regs.pkrs), ac=opts.ac,
        maxphyaddr=_first(opts.maxphyaddr, getattr(source, "maxphyaddr", None), 52),
        long_mode=regs.long_mode, vendor=_first(opts.vendor, "intel"))
    policy = None
    xen_view = None
    mode = opts.mode
    effective = guest_cr4
    explanation = [f"CR4={guest_cr4:#x}: the guest's own CR4 governs (no Xen in the picture)"]
    kernel_notes: List[str] = []
    if domain != "hvm" or version is not None:
        if version is None:
            version = ".".join(map(str, NEWEST_XEN[:2]))
            notes.append(f"Xen version unknown: assuming {version} (give --xen VERSION)")
        # An HVM guest's CR4 is evidence: it could only set PKE/PKS if the CPU had PKU/PKS.
        hw = xen.Hardware(pku=bool(guest_cr4 & CR4.PKE), pks=bool(guest_cr4 & CR4.PKS))
        hardware_cr4 = domain != "hvm" and not regs.cr4_is_guest_view and opts.cr4 is None
        in_guest = hardware_cr4 and regs.cs is not None and regs.cs & 3 != 0
        global_pages = opts.global_pages
        if global_pages is None and in_guest and not guest_cr4 & CR4.PGE and domain == "pv32":
            global_pages = False  # PV32 never uses XPTI/PCID: no PGE means global-pages off
            notes.append("PGE clear in the PV context the CPU shows: global-pages off assumed")
        policy = xen.XenPolicy(version, domain, bool(opts.xen_debug), smep=_sm(opts.smep),
                               smap=_sm(opts.smap), hw=hw,
                               global_pages=True if global_pages is None else global_pages,
                               io_capable=bool(opts.io_capable))
        if not hardware_cr4:
            # Xen's own CR4 when the source observed it (a host dump's mmu_cr4_features).
            derived = xen.effective_cr4(policy, guest_cr4, xen_cr4=regs.xen_cr4)
            if regs.xen_cr4 is not None:
                notes.append(f"derived from Xen's own CR4 {regs.xen_cr4:#x} as observed "
                             "(mmu_cr4_features), not from the version's defaults")
        else:
            xen_cr4 = guest_cr4
            if in_guest:
                # Stopped in guest code (CS RPL != 0): the CPU shows the PV context's CR4, which
                # lacks what Xen strips on exit to the guest; put back Xen's SMEP/SMAP choice.
                xen_cr4 |= xen.default_xen_cr4(policy).value & (CR4.SMEP | CR4.SMAP)
            if opts.derive_cr4:
                notes.append(f"the PV context's CR4 is derived as Xen {version} would from the "
                             f"CPU's {guest_cr4:#x}" + (f" (Xen's own taken as {xen_cr4:#x}: "
                                                        f"SMEP/SMAP as smep=/smap= say)"
                                                        if in_guest else ""))
            derived = xen.effective_cr4(policy, None, xen_cr4=xen_cr4)
            if not opts.derive_cr4:
                # With a PV guest's tables loaded the CPU runs that guest's context CR4, in Xen too
                # (lazy switch) -- except SMEP/SMAP, which Xen sets again on entry from a 32-bit
                # PV guest (entry.S cr4_pv32_restore): those the policy decides.
                value = guest_cr4
                pv32_in_xen = domain == "pv32" and not in_guest
                if pv32_in_xen:
                    value = (value & ~XEN_PV32) | (derived.value & XEN_PV32)
                notes.append(f"CR4 {guest_cr4:#x} read from the CPU with this guest's tables "
                             f"loaded is the guest context's (Xen switches CR4 lazily)"
                             + ("; SMEP/SMAP as Xen sets them in ring 1" if pv32_in_xen else ""))
                if derived.value != value:
                    notes.append(f"the policy alone would give {derived.value:#x}; the CPU's CR4 "
                                 f"is used (differs in {_names(derived.value ^ value)})")
                where = f"CS {regs.cs:#x}" if regs.cs is not None else "CS unknown"
                first = (f"CR4={value:#x}: the CPU's ({guest_cr4:#x}, {where})"
                         + ("; SMEP/SMAP as Xen sets them on return to ring 1" if pv32_in_xen
                            else ""))
                derived = xen.Cr4(value, [first] + list(derived.explanation))
        effective = derived.value
        explanation = list(derived.explanation)
        kernel_notes = list(xen.kernel_protections(
            policy, None if hardware_cr4 else guest_cr4,
            xen_cr4 if hardware_cr4 else regs.xen_cr4).notes)
        if mode is None and domain == "pv32" and regs.cr4_is_guest_view:
            mode = "pv32"  # a dump's PV32 CR3 names the guest's own PAE L3
        xen_view = XenView(policy, root_is_xen_l4=mode != "pv32")
    cpu = cpu.with_(cr4=effective)
    judge = Judge(cpu.cr0, effective, xen.kernel_cpl(domain), cpu.ac, cpu.pkru, cpu.pkrs)
    if cpu.ac is None and effective & CR4.SMAP:
        notes.append("EFLAGS.AC unknown: SMAP verdicts say 'unless AC=1' (give --ac)")
    return Session(source, regs, cpu, guest_cr4, explanation, domain, policy, judge, xen_view,
                   mode, kernel_notes, notes)
