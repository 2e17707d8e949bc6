"""The CPU state a domain's kernel runs with: one derivation, observed values over assumed ones.

Every command that needs to know which CR4, EFER and CPL a guest kernel runs with — and so which
protections bind it — asks :func:`derive`; none re-derives. Its inputs are what was *observed* (the
registers a live CPU or a dump reports, the dump's own domain kind and Xen version) and what was
*assumed* (command options, ``set xen-pte`` parameters, defaults; :class:`Options`). Its output, a
:class:`DomainCpu`, says for every value where it came from.

The rules, in the order they apply:

1. **Observed beats assumed.** A register read from the CPU or a dump is never rewritten by a Xen
   policy. Where an assumption contradicts an observation (a domain type whose ring does not match
   CS; a Xen version under which an HVM guest could not have set a CR4 bit it has; a version other
   than the dump's), the observation is kept and a note names both.
2. **A register given as an option is the user's hypothetical** (``--cr4`` ...) and is used as
   given; for a Xen PV domain ``--cr4`` is the guest-visible CR4, from which the hardware value is
   derived. A what-if (:attr:`Options.what_if`) applies the policy over the observation on purpose.
3. **Derived values say they are derived**: a PV guest's hardware CR4 computed from Xen's policy
   when only the guest's view is known; a 32-bit PV kernel's SMEP/SMAP when the CPU was stopped in
   Xen or in guest user space (Xen clears them only for ring 1/2, :mod:`gdb_xenpte.xen.cr4`).
4. **No Xen unless something says Xen**: the domain is ``native`` (bare metal, KVM, any non-Xen
   guest) unless a Xen code selector, the dump (xl dump-core, Xen crash notes), ``--domain``,
   ``--xen`` or a ``set xen-pte`` value names Xen.

Failure modes: :class:`~gdb_xenpte.errors.OptionError` for an unknown domain or Xen version, or
a bad option value.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Tuple, Union

from . import xen
from .arch import CR4
from .cpu import CpuState
from .errors import OptionError
from .sources.base import PhysSource, VcpuRegs

__all__ = [
    "DOMAINS",
    "DomainCpu",
    "NEWEST_XEN",
    "Options",
    "Origin",
    "Protection",
    "derive",
    "first_given",
]

DOMAINS = ("native",) + xen.DOMAIN_TYPES  # native: no Xen in the picture
# Xen version assumed when Xen is in the picture but nothing names one: the newest behaviour the
# facts table distinguishes (said in the notes).
NEWEST_XEN = max(f.since for f in xen.FACTS.values())
_SMX = CR4.SMEP | CR4.SMAP


def first_given(*values):
    """The first of ``values`` that is not None (option, then parameter, then source, ...)."""
    return next((v for v in values if v is not None), None)


@dataclass(frozen=True)
class Origin:
    """Where a value came from.

    :param kind: ``"observed"`` (read from the CPU or a dump), ``"given"`` (a register option),
        ``"assumed"`` (an option or parameter naming Xen's version, build, domain ...),
        ``"derived"`` (computed from others by a rule) or ``"default"``.
    :param where: a short phrase, e.g. ``"vCPU 0 of QEMU ELF dump x.elf"``, ``"--cr4"``,
        ``"set xen-pte xen-version"``, ``"Xen 4.17's policy"``.
    """

    kind: str
    where: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.where}"


@dataclass(frozen=True)
class Options:
    """What the user may say; ``None`` means "not given".

    :param cr4: the guest's CR4 (for Xen PV: the guest-visible value).
    :param domain: ``native``, ``hvm``, ``pv64`` or ``pv32``.
    :param smep: Xen's ``smep=`` option: True/False/"hvm" (also "on"/"off").
    :param mode: force a paging mode (a key of :data:`gdb_xenpte.arch.MODES`).
    :param xen_cr4: Xen's own CR4 (``mmu_cr4_features``) when known.
    :param context: whose code the CR4 is asked for: ``kernel`` (default), ``user`` or ``xen``.
    :param what_if: a what-if scenario: Xen's policy is applied even over the CPU's CR4.
    :param force_cr4: CR4 bits a what-if switches on in the effective CR4 (e.g. PKE).
    :param origins: ``(field, where)`` pairs for values that did not come from the command's own
        option, e.g. ``("xen", "set xen-pte xen-version")``; headers name them.
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
    xen_cr4: Optional[int] = None
    context: str = "kernel"
    what_if: Optional[str] = None
    force_cr4: int = 0
    origins: Tuple[Tuple[str, str], ...] = ()

    def with_(self, **changes) -> "Options":
        """Return a copy with some fields changed."""
        return replace(self, **changes)

    def origin(self, name: str) -> str:
        """Where option ``name`` came from: its option spelling unless ``origins`` says."""
        return dict(self.origins).get(name, "--" + name.replace("_", "-"))


@dataclass(frozen=True)
class Protection:
    """Whether one CR4 protection binds the guest kernel's own accesses, and whose choice it is.

    :param applies: it binds the kernel (CR4 has it and the kernel's ring is subject to it).
    :param chooser: ``"guest"`` (its own CR4), ``"xen"`` (imposed: a PV guest cannot choose it),
        ``"what-if"`` (imposed by a hypothetical) or ``"-"`` when it does not apply.
    :param why: one sentence.
    """

    applies: bool
    chooser: str
    why: str


@dataclass
class DomainCpu:
    """The CPU state a domain's kernel runs with, and where every value came from.

    :param domain: ``native``, ``hvm``, ``pv64`` or ``pv32``.
    :param policy: the Xen policy (None for ``native``).
    :param cpu: registers the walk uses; ``cpu.cr4`` is the *effective* CR4.
    :param cr4_read: the CR4 as the source or option gave it (PV dumps: the guest's view), or
        None when nothing gave one.
    :param cr4: the effective CR4 with one line per bit saying where it came from.
    :param guest_view: for PV, the CR4 the guest reads back (observed, or derived).
    :param kernel_cpl: the ring the guest kernel runs in.
    :param protections: ``"smep"``/``"smap"``/``"pke"``/``"pks"`` -> :class:`Protection`.
    :param imposed_cr4: the CR4 bits whose protections are imposed on the kernel, not chosen by it.
    :param origins: ``"cr4"``, ``"effective_cr4"``, ``"domain"``, ``"xen"``, ``"kernel_cpl"``,
        ``"cr3"`` ... -> :class:`Origin`.
    :param mode: paging-mode override for the walker (``"pv32"`` for a PV32 guest's own L3).
    :param notes: contradictions, inferences and assumptions, one sentence each.
    """

    domain: str
    policy: Optional[xen.XenPolicy]
    cpu: CpuState
    cr4_read: Optional[int]
    cr4: xen.Cr4
    guest_view: Optional[xen.Cr4]
    kernel_cpl: int
    protections: Dict[str, Protection]
    imposed_cr4: int
    origins: Dict[str, Origin]
    mode: Optional[str] = None
    context: str = "kernel"
    notes: List[str] = field(default_factory=list)

    @property
    def effective_cr4(self) -> int:
        return self.cpu.cr4

    def provenance(self) -> Dict[str, str]:
        """``{value name: "kind: where"}`` for headers."""
        return {k: str(v) for k, v in self.origins.items()}


# ---- the domain -------------------------------------------------------------------------------

def _domain(source: PhysSource, regs: VcpuRegs, opts: Options,
            notes: List[str]) -> Tuple[str, Origin, Optional[xen.Selector]]:
    """The domain type: observed (the dump, a Xen code selector) over assumed (options)."""
    sel_hit = xen.domain_from_cs(regs.cs)
    sel, sel_why = sel_hit if sel_hit else (None, "")
    observed: Optional[Tuple[str, Origin]] = None
    if source.domain in xen.DOMAIN_TYPES:
        observed = (source.domain, Origin("observed", f"the dump ({source.name})"))
    elif sel is not None and sel.domain is not None:
        observed = (sel.domain, Origin("observed", f"CS {regs.cs & 0xFFFF:#x}"))
    elif regs.cs is not None and sel is None and regs.cs & 3 == 0:
        observed = ("not-pv", Origin("observed", f"CS {regs.cs & 0xFFFF:#x}"))
    given = opts.domain
    if given is not None and given not in DOMAINS:
        raise OptionError(f"unknown domain type {given!r} (use one of {', '.join(DOMAINS)})")
    if given is not None:
        kind, origin = given, Origin("assumed", opts.origin("domain"))
        if observed is not None:
            seen, seen_origin = observed
            if seen == "not-pv" and given in ("pv64", "pv32"):
                notes.append(f"{origin.where} {given} contradicts {seen_origin.where}: ring 0 "
                             f"with a selector that is not Xen's is no PV guest's (a PV kernel "
                             f"never runs in ring 0); walked as an HVM guest of Xen")
                return "hvm", seen_origin, sel
            if seen not in ("not-pv", given) and given != "native":
                notes.append(f"{origin.where} {given} contradicts {seen_origin.where}, which says "
                             f"{seen}" + (f" ({sel_why})" if sel is not None else "")
                             + f": the observation is kept, walked as {seen}")
                return seen, seen_origin, sel
            if seen not in ("not-pv", given) and given == "native":
                notes.append(f"{origin.where} native: no Xen policy is applied although "
                             f"{seen_origin.where} says {seen}")
        return kind, origin, sel
    if observed is not None and observed[0] != "not-pv":
        kind, origin = observed
        if sel is not None and origin.where.startswith("CS"):
            notes.append(f"domain {kind}: {sel_why} (give --domain to override)")
        return kind, origin, sel
    if sel is not None:  # Xen's own CS: the guest's kind is not told by it
        notes.append(f"domain pv64 assumed: {sel_why}; the loaded tables are taken as a 64-bit "
                     f"PV guest's (give --domain pv32 for a 32-bit guest's)")
        return "pv64", Origin("assumed", "Xen's CS with a guest's tables loaded"), sel
    if opts.xen is not None or source.xen_version:
        return "hvm", Origin("default", "Xen is named, no domain kind: HVM"), sel
    return "native", Origin("default", "nothing says Xen"), sel


def _version(source: PhysSource, opts: Options, notes: List[str]) -> Tuple[str, Origin]:
    seen = ".".join(map(str, source.xen_version)) if source.xen_version else None
    if opts.xen is not None:
        origin = Origin("assumed", opts.origin("xen"))
        if seen is not None and xen.parse_version(seen)[:2] != xen.parse_version(opts.xen)[:2]:
            notes.append(f"{origin.where} {opts.xen} contradicts the dump, which says Xen {seen}: "
                         f"the dump's version is used (--what-if xen={opts.xen} asks the "
                         f"hypothetical)")
            return seen, Origin("observed", f"the dump ({source.name})")
        return opts.xen, origin
    if seen is not None:
        return seen, Origin("observed", f"the dump ({source.name})")
    version = f"{NEWEST_XEN[0]}.{NEWEST_XEN[1]}"
    notes.append(f"Xen version unknown: {version} assumed (give --xen VERSION)")
    return version, Origin("default", f"newest known, {version}")


def _sm(value) -> Union[bool, str]:
    """``smep=``/``smap=``: Xen's default (on where the hardware has it) when not given; the
    policy parses the rest (on/off/hvm, xen.policy)."""
    return True if value is None else value


# ---- CR4 --------------------------------------------------------------------------------------

def _bits(value: int) -> List[int]:
    return [1 << i for i in range(value.bit_length()) if value >> i & 1]


def _names(mask: int) -> str:
    return ", ".join(CR4.NAMES.get(b, hex(b)) for b in _bits(mask)) or "nothing"


def _where_cpu(regs: VcpuRegs, source: PhysSource) -> str:
    who = regs.origin or (f"vCPU {regs.index} of {source.name}" if regs.index >= 0
                          else source.name)
    return who + (f", CS {regs.cs & 0xFFFF:#x}" if regs.cs is not None else "")


def _compare(value: int, policy_cr4: xen.Cr4, reasons: Dict[int, str], label: str) -> None:
    """Append to each paging bit's reason what the policy alone would do, where it differs."""
    for bit in xen.PAGING_BITS:
        if bool(value & bit) != bool(policy_cr4.value & bit):
            verb = "set" if policy_cr4.value & bit else "clear"
            why = policy_cr4.reasons.get(bit, "")
            reasons[bit] += f"; {label} alone would {verb} it" + (f" ({why})" if why else "")


def _hvm_contradictions(value: int, policy: xen.XenPolicy, what: str, assumed: str,
                        reasons: Dict[int, str], notes: List[str]) -> None:
    """Note each bit an HVM guest has that this Xen would not let it set (the value is kept)."""
    for bit, (ok, why) in xen.hvm_valid_bits(policy).items():
        if value & bit and not ok:
            name = CR4.NAMES[bit]
            reasons[bit] += (f"; Xen {xen.version_text(policy.version)} would not let an HVM "
                             f"guest set it ({why}), yet it is set")
            notes.append(f"CR4.{name}=1 {what} contradicts {assumed}: an HVM guest cannot set "
                         f"{name} under it ({why}); the {what.split()[0]} value is used")


def _pv32_ring1(value: int, policy: xen.XenPolicy) -> Tuple[int, Optional[str]]:
    """SMEP/SMAP as Xen sets them on return to ring 1, from a CR4 read elsewhere."""
    if policy.has("pv32_cr4"):
        return value & ~_SMX, (f"cleared by Xen on return to ring 1, the 32-bit PV kernel's "
                               f"({xen.cite('pv32_cr4')})")
    return value, None


def _context_cr4(value: int, reasons: Dict[int, str], policy: Optional[xen.XenPolicy],
                 domain: str, runs: str, context: str) -> int:
    """Move SMEP/SMAP of a PV32 CR4 read while ``runs`` ran to what ``context`` runs with."""
    if domain != "pv32" or policy is None or runs == context:
        return value
    if context == "kernel":
        new, why = _pv32_ring1(value, policy)
        if why:
            for bit in _bits(value & _SMX):
                reasons[bit] = f"{why}; the CPU showed it set while {runs} ran"
        return new
    if runs == "kernel" and policy.has("pv32_cr4"):
        xen_bits = xen.default_xen_cr4(policy).value & _SMX
        for bit in (CR4.SMEP, CR4.SMAP):
            on = bool(xen_bits & bit)
            reasons[bit] = (f"Xen's {'own' if on else 'policy leaves it clear'}: it clears "
                            f"SMEP/SMAP only for ring 1/2 ({xen.cite('pv32_cr4')}); derived, the "
                            f"CPU ran the kernel")
        return (value & ~_SMX) | xen_bits
    return value


def _effective_cr4(domain: str, policy: Optional[xen.XenPolicy], regs: VcpuRegs,
                   source: PhysSource, opts: Options, sel: Optional[xen.Selector],
                   assumed: str, notes: List[str]) -> Tuple[xen.Cr4, Origin, Optional[int]]:
    """The effective CR4 for ``opts.context``, its per-bit reasons and its origin; also the CR4
    as read or given."""
    context = opts.context
    if opts.cr4 is not None:
        read, read_origin = opts.cr4, Origin("given", opts.origin("cr4"))
        is_view = policy is not None and policy.is_pv
    elif regs.cr4 is not None:
        read, read_origin = regs.cr4, Origin("observed", _where_cpu(regs, source))
        is_view = regs.cr4_is_guest_view and policy is not None and policy.is_pv
    else:
        read, read_origin, is_view = None, None, False
    label = f"Xen {xen.version_text(policy.version)}'s policy" if policy else ""
    if policy is None or not policy.is_pv:  # native or HVM: the guest's own CR4 governs
        if read is None:
            notes.append("CR4 unknown: taken as 0 (give --cr4)")
            value, origin = 0, Origin("default", "unknown, taken as 0")
        else:
            value, origin = read, read_origin
        if policy is not None and context == "xen":
            return xen.effective_cr4(policy, value, opts.xen_cr4, "xen"), Origin(
                "derived", f"{label} (Xen's own CR4 in HVM context)"), read
        what = ("read from the CPU" if origin.kind == "observed" else
                f"given with {origin.where}" if origin.kind == "given" else "unknown")
        reasons = {bit: f"{what} ({origin.where})" if origin.kind == "observed" else what
                   for bit in _bits(value)}
        clear = {"observed": f"clear in the CPU's CR4 ({origin.where})",
                 "given": f"clear in the CR4 given with {origin.where}"}.get(origin.kind,
                                                                            "CR4 unknown")
        for bit in xen.PAGING_BITS:
            reasons.setdefault(bit, clear)
        if policy is not None and opts.what_if is None and origin.kind != "default":
            _hvm_contradictions(value, policy, f"{origin.kind} {origin.where}", assumed,
                                reasons, notes)
        if policy is not None and opts.what_if is not None:
            derived = xen.effective_cr4(policy, value, opts.xen_cr4, context)
            return derived, Origin("derived", f"{label}, for what-if {opts.what_if}"), read
        return xen.explain_bits(value, reasons), origin, read
    # A Xen PV domain.
    if read is None:
        notes.append("CR4 unknown: the PV context's CR4 is derived from Xen's policy with a "
                     "guest CR4 view of 0 (give --cr4)")
        derived = xen.effective_cr4(policy, 0, opts.xen_cr4, context)
        return derived, Origin("derived", f"{label}, guest view unknown"), None
    if is_view:
        derived = xen.effective_cr4(policy, read, opts.xen_cr4, context)
        return derived, Origin("derived", f"{label}, from the guest's view {read:#x} "
                                          f"({read_origin.kind}: {read_origin.where})"), read
    # The CPU's own CR4 with this PV guest's tables loaded (in the guest, or in Xen: CR4 is
    # switched lazily): the PV context's CR4, except what Xen toggles around ring 1.
    runs = {"kernel or user": "kernel"}.get(sel.runs, sel.runs) if sel is not None else "xen"
    if regs.cs is not None and sel is None:
        runs = {1: "kernel", 3: "user"}.get(regs.cs & 3, "kernel")
    if domain == "pv64":
        runs = "kernel"  # one CR4 for the CPL3 kernel and its user space
    if opts.what_if is not None:
        xen_cr4 = read
        if runs == "kernel" and domain == "pv32":
            # In ring 1 the CPU lacks what Xen strips on exit to the guest: put back Xen's.
            xen_cr4 |= xen.default_xen_cr4(policy).value & _SMX
        notes.append(f"the PV context's CR4 is derived as Xen {xen.version_text(policy.version)} "
                     f"would from the CPU's {read:#x}, for what-if {opts.what_if}")
        derived = xen.effective_cr4(policy, None, xen_cr4=xen_cr4, context=context)
        return derived, Origin("derived", f"{label}, for what-if {opts.what_if}"), read
    where = _where_cpu(regs, source)
    reasons = {bit: f"read from the CPU ({where})" for bit in _bits(read)}
    for bit in xen.PAGING_BITS:
        reasons.setdefault(bit, f"clear in the CPU's CR4 ({where})")
    value = _context_cr4(read, reasons, policy, domain, runs, context)
    policy_cr4 = xen.effective_cr4(policy, None, xen_cr4=read if runs == "xen" else None,
                                   context=context)
    _compare(value, policy_cr4, reasons, label)
    if policy_cr4.value != value:
        notes.append(f"{label} alone would give {policy_cr4.value:#x}; the CPU's CR4 is kept "
                     f"(differs in {_names(policy_cr4.value ^ value)})")
    kind = "observed" if value == read else "derived"
    origin = Origin(kind, where if kind == "observed" else
                    f"the CPU's {read:#x} ({where}) with SMEP/SMAP as Xen sets them for ring 1")
    notes.append(f"CR4 {read:#x} read from the CPU with this guest's tables loaded is the guest "
                 f"context's (Xen switches CR4 lazily)"
                 + (f"; SMEP/SMAP as Xen sets them for the {context}" if value != read else ""))
    return xen.explain_bits(value, reasons), origin, read


# ---- protections ------------------------------------------------------------------------------

def _protections(domain: str, cpl: int, cr4: int, forced: int,
                 what_if: Optional[str]) -> Tuple[Dict[str, Protection], int]:
    """Which of SMEP/SMAP/PKE/PKS bind the kernel, and whose choice each is."""
    out: Dict[str, Protection] = {}
    imposed = 0
    # A PV guest cannot set SMEP, SMAP, PKE or PKS: whatever binds it, Xen chose.
    base = "xen" if domain in ("pv64", "pv32") else "guest"
    for name, bit in (("smep", CR4.SMEP), ("smap", CR4.SMAP), ("pke", CR4.PKE),
                      ("pks", CR4.PKS)):
        if not cr4 & bit:
            out[name] = Protection(False, "-", f"CR4.{name.upper()} is clear")
            continue
        if name != "pke" and cpl == 3:
            out[name] = Protection(False, "-", f"CR4.{name.upper()} is set, but the kernel runs "
                                               f"at CPL3: its accesses are user-mode accesses")
            continue
        chooser = "what-if" if forced & bit else base
        who = {"guest": "the guest's own choice", "xen": "imposed by Xen: a PV guest cannot "
               "choose it", "what-if": f"imposed by the what-if {what_if}"}[chooser]
        out[name] = Protection(True, chooser, f"CR4.{name.upper()} is set: {who}")
        if chooser != "guest":
            imposed |= bit
    return out, imposed


# ---- the derivation ---------------------------------------------------------------------------

def derive(source: PhysSource, regs: VcpuRegs, opts: Options = Options()) -> DomainCpu:
    """Derive the CPU state the domain's kernel (or ``opts.context``) runs with.

    :param source: the memory source (its ``domain``, ``xen_version``, ``name`` are observations).
    :param regs: the vCPU's registers as the source read them (``VcpuRegs(-1)`` when none).
    :param opts: what the user said (options and parameters) and where each came from.
    :returns: the state, each value with its origin.
    :raises OptionError: for an unknown domain or version, a bad option value. A CR3 that
        nothing gives is not an error here (``origins`` then has no ``"cr3"``).
    """
    notes = list(regs.notes)
    origins: Dict[str, Origin] = {}
    seen_xen_cr4 = getattr(regs, "xen_cr4", None)  # a host dump's mmu_cr4_features
    if opts.xen_cr4 is not None:
        origins["xen_cr4"] = Origin("given", opts.origin("xen_cr4"))
    elif seen_xen_cr4 is not None:
        # Observed: a PV vCPU's hardware CR4 is derived from it, not from the version's defaults.
        opts = opts.with_(xen_cr4=seen_xen_cr4)
        origins["xen_cr4"] = Origin("observed", f"Xen's mmu_cr4_features "
                                                f"({_where_cpu(regs, source)})")
    cr3 = first_given(opts.cr3, regs.cr3)
    where = _where_cpu(regs, source)
    if cr3 is not None:  # xen-cr4 needs none; a walk checks (session.prepare)
        origins["cr3"] = (Origin("given", opts.origin("cr3")) if opts.cr3 is not None
                          else Origin("observed", where))
    domain, origins["domain"], sel = _domain(source, regs, opts, notes)
    policy = None
    assumed = ""
    unused = [f"{opts.origin(n)} {_show(getattr(opts, n))}" for n in ("xen", "xen_debug", "smep",
                                                                      "smap")
              if getattr(opts, n) is not None]
    if domain == "native" and unused:
        notes.append(f"{', '.join(unused)} not applied: domain native has no Xen policy")
    if domain != "native":
        version, origins["xen"] = _version(source, opts, notes)
        assumed = f"Xen {version} ({origins['xen']})"
        evidence = [v for v in (opts.cr4, regs.cr4) if v is not None]
        # A CPU whose CR4 has PKE/PKS has PKU/PKS: observed, so the policy follows it.
        hw = xen.Hardware(pku=any(v & CR4.PKE for v in evidence),
                          pks=any(v & CR4.PKS for v in evidence))
        global_pages = opts.global_pages
        in_ring1 = sel is not None and sel.domain == "pv32" and sel.runs == "kernel"
        if (global_pages is None and in_ring1 and domain == "pv32" and regs.cr4 is not None
                and opts.cr4 is None and not regs.cr4 & CR4.PGE):
            global_pages = False  # PV32 never uses XPTI/PCID: no PGE means global-pages off
            notes.append("PGE clear in the PV context the CPU shows: global-pages off assumed")
        policy = xen.XenPolicy(version, domain, bool(opts.xen_debug), smep=_sm(opts.smep),
                               smap=_sm(opts.smap), hw=hw,
                               global_pages=True if global_pages is None else global_pages,
                               io_capable=bool(opts.io_capable))
    cr4, origins["effective_cr4"], read = _effective_cr4(domain, policy, regs, source, opts, sel,
                                                         assumed, notes)
    if read is not None:
        origins["cr4"] = (Origin("given", opts.origin("cr4")) if opts.cr4 is not None
                          else Origin("observed", where))
    guest_view = None
    if policy is not None and policy.is_pv:
        if read is not None and (opts.cr4 is not None or regs.cr4_is_guest_view):
            guest_view = xen.explain_bits(read, {b: f"the guest's view ({origins['cr4']})"
                                                 for b in _bits(read)})
        else:
            guest_view = xen.guest_visible_cr4(policy, 0, read if read is not None else None)
    cpl = 0 if policy is None else xen.kernel_cpl(domain)
    origins["kernel_cpl"] = Origin("derived", f"domain {domain}" + (
        ": PV64 kernels run at CPL3" if cpl == 3 else ": PV32 kernels run in ring 1" if cpl == 1
        else ""))
    switched = opts.force_cr4 & ~cr4.value  # a what-if's bits the CR4 lacked
    if switched:
        forced = {b: f"switched on by the what-if {opts.what_if}" for b in _bits(switched)}
        cr4 = xen.explain_bits(cr4.value | switched, {**cr4.reasons, **forced}, cr4.notes)
        origins["effective_cr4"] = Origin("derived", f"{origins['effective_cr4']} with "
                                                     f"{_names(switched)} from what-if "
                                                     f"{opts.what_if}")
    protections, imposed = _protections(domain, cpl, cr4.value, switched, opts.what_if)
    efer = first_given(opts.efer, regs.efer)
    cpu = CpuState(
        cr0=first_given(opts.cr0, regs.cr0, CpuState.cr0), cr3=cr3 or 0, cr4=cr4.value, efer=efer,
        pkru=first_given(opts.pkru, regs.pkru), pkrs=first_given(opts.pkrs, regs.pkrs),
        ac=opts.ac, maxphyaddr=first_given(opts.maxphyaddr, getattr(source, "maxphyaddr", None),
                                           52),
        long_mode=regs.long_mode, vendor=first_given(opts.vendor, "intel"))
    for name in ("cr0", "efer", "pkru", "pkrs"):
        given, seen = getattr(opts, name), getattr(regs, name)
        if given is not None:
            origins[name] = Origin("given", opts.origin(name))
        elif seen is not None:
            origins[name] = Origin("observed", where)
    mode = opts.mode
    if mode is None and domain == "pv32" and regs.cr4_is_guest_view and opts.cr4 is None:
        mode = "pv32"  # a dump's PV32 CR3 names the guest's own PAE L3
    if cpu.ac is None and protections["smap"].applies:
        notes.append("EFLAGS.AC unknown: SMAP verdicts say '[AC=0]' (give --ac)")
    if cpu.pkru is None and cr4.value & CR4.PKE:
        notes.append("PKRU unknown: key 0 taken as allowed (every PKRU Linux and Xen load allow "
                     "it); other keys' verdicts say '[PKRU?]' (give --pkru)")
    for name in ("xen", "domain", "smep", "smap", "xen_debug"):
        spot = opts.origin(name)
        if getattr(opts, name) is not None and spot.startswith("set xen-pte"):
            notes.append(f"{spot.split()[-1]} {_show(getattr(opts, name))} from `{spot}`")
    return DomainCpu(domain, policy, cpu, read, cr4, guest_view, cpl, protections, imposed,
                     origins, mode, opts.context, notes)


def _show(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)
