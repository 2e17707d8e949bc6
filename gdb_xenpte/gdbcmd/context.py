"""What every command needs before calling the engine: a source, a CPU state, a Xen view.

Options shared by the commands are declared here once (``add_*_options``); :func:`open_source`
and :func:`setup` turn parsed options plus ``set xen-pte`` parameters into engine inputs. The
order of precedence is always: command option, then parameter, then what the source says, then
the engine's default.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import List, Optional

import gdb

from ..cpu import CpuState
from ..errors import OptionError
from ..sources.base import PhysSource, VcpuRegs
from ..sources.open import pick_vcpu
from .. import xen
from ..verdicts import Judge
from ..xenview import XenView
from . import params
from .args import GdbArgumentParser, address, choice_of, int_in
from .live import open_live_source

__all__ = ["Setup", "add_cpu_options", "add_source_options", "add_xen_options", "open_source",
           "setup"]

DOMAINS = xen.DOMAIN_TYPES
# "auto" Xen version for a PV domain when neither options nor the source name one: the newest
# release whose behaviour the facts table distinguishes.
NEWEST_XEN = max(f.since for f in xen.FACTS.values())


def add_source_options(p: GdbArgumentParser) -> None:
    g = p.add_argument_group("source (default: the live target)")
    g.add_argument("--core", metavar="FILE",
                   help="walk a dump (QEMU ELF, kdump-compressed, xl dump-core) without making it "
                        "gdb's target")
    g.add_argument("--raw", metavar="FILE@BASE",
                   help="walk a raw memory image whose first byte is guest-physical BASE")
    g.add_argument("--vcpu", metavar="N", type=int_in(0, 4095),
                   help="take registers from vCPU N (default: the selected thread, or vCPU 0 of "
                        "a dump)")
    g.add_argument("--direct-map", metavar="BASE", type=address,
                   help="live targets without physical access: read tables through the guest "
                        "direct map at VA BASE (PV: frames translated through Xen's M2P)")


def add_cpu_options(p: GdbArgumentParser, registers: bool = True) -> None:
    g = p.add_argument_group("CPU state (overrides what the source reports)")
    if registers:
        for reg, what in (("cr0", "CR0"), ("cr3", "CR3 (PV: machine address of the L4/L3)"),
                          ("cr4", "guest CR4 (Xen PV: the guest-visible value)"),
                          ("efer", "IA32_EFER"), ("pkru", "PKRU for user-page key verdicts"),
                          ("pkrs", "IA32_PKRS for supervisor-page key verdicts")):
            g.add_argument(f"--{reg}", metavar="VALUE", type=address, help=f"use VALUE as {what}")
    g.add_argument("--maxphyaddr", metavar="N", type=int_in(32, 52),
                   help="physical-address width in bits (default: set xen-pte maxphyaddr, else 52)")
    g.add_argument("--ac", metavar="0|1", type=choice_of("0", "1"),
                   help="EFLAGS.AC for SMAP verdicts (default: unknown, both outcomes)")


def add_xen_options(p: GdbArgumentParser) -> None:
    g = p.add_argument_group("Xen")
    g.add_argument("--domain", metavar="hvm|pv64|pv32", type=choice_of(*DOMAINS),
                   help="kind of domain (default: from the source, else set xen-pte domain, "
                        "else hvm)")
    g.add_argument("--xen", metavar="VERSION",
                   help="Xen version MAJOR.MINOR whose PTE ABI and CR4 policy apply")
    g.add_argument("--xen-debug", action="store_true", default=None,
                   help="Xen is a debug build")
    g.add_argument("--smep", metavar="on|off|hvm", type=choice_of("on", "off", "hvm"),
                   help="Xen's smep= boot option (default: Xen's default)")
    g.add_argument("--smap", metavar="on|off|hvm", type=choice_of("on", "off", "hvm"),
                   help="Xen's smap= boot option (default: Xen's default)")


def open_source(args: argparse.Namespace) -> PhysSource:
    """Open the source the options name: a dump, a raw image, or the live target.

    :raises XenpteError: if the file is bad or there is no usable target.
    """
    if args.core and args.raw:
        raise OptionError("give --core or --raw, not both")
    if args.core:
        from ..sources.open import open_dump
        return open_dump(args.core)
    if args.raw:
        from ..sources.raw import RawSource, parse_raw_spec
        return RawSource(*parse_raw_spec(args.raw))
    src = open_live_source(direct_map=args.direct_map, domain=_first(args.domain,
                           params.value("domain")), fast=bool(params.value("fast-path")),
                           pkru=None)
    thread = gdb.selected_thread()
    src.current_vcpu = thread.num - 1 if thread is not None else 0
    return src


@dataclass
class Setup:
    """Engine inputs for one command run.

    :param cpu: the CPU state with the *effective* CR4 (what the hardware runs the guest with).
    :param guest_cr4: the CR4 the registers or options gave (for PV: the guest's view).
    """

    source: PhysSource
    cpu: CpuState
    guest_cr4: int
    effective_cr4: int
    domain: str
    xen_version: Optional[str]
    xen_debug: bool
    judge: Judge
    xen_view: object = None
    mode: Optional[str] = None
    notes: List[str] = field(default_factory=list)
    policy: object = None


def _first(*values):
    return next((v for v in values if v is not None), None)


def _vcpu(source: PhysSource, index: Optional[int]) -> VcpuRegs:
    """The vCPU the options name, else the selected thread's (live) or vCPU 0 (dumps)."""
    if index is None:
        if not source.vcpus():
            return VcpuRegs(-1)  # no registers at all (raw image, gdbsx): options must say
        index = getattr(source, "current_vcpu", 0)
    return pick_vcpu(source, index)


def setup(args: argparse.Namespace, source: PhysSource) -> Setup:
    """Combine options, parameters and the source's registers into engine inputs.

    :raises OptionError: if no CR3 is known, or a value is inconsistent.
    """
    regs = _vcpu(source, getattr(args, "vcpu", None))
    opt = lambda name: getattr(args, name, None)
    cr3 = _first(opt("cr3"), regs.cr3)
    if cr3 is None:
        raise OptionError(f"{source.name} gives no CR3: give --cr3 VALUE")
    cr4 = _first(opt("cr4"), regs.cr4, 0)
    domain, version, debug = domain_and_xen(args, source)
    ac = _first(opt("ac"), params.value("ac"))
    cpu = CpuState(
        cr0=_first(opt("cr0"), regs.cr0, CpuState.cr0), cr3=cr3, cr4=cr4,
        efer=_first(opt("efer"), regs.efer),
        pkru=_first(opt("pkru"), params.value("pkru"), regs.pkru),
        pkrs=_first(opt("pkrs"), params.value("pkrs"), regs.pkrs),
        ac=None if ac is None else int(ac),
        maxphyaddr=_first(opt("maxphyaddr"), params.value("maxphyaddr"), 52),
        long_mode=regs.long_mode)
    notes = list(regs.notes)
    effective, xen_view, mode, policy = cr4, None, None, None
    if domain != "hvm" or version is not None:  # Xen is in the picture
        policy = make_policy(args, domain, version, debug)
        if version is None:
            notes.append(f"Xen version unknown: assuming the newest behaviour known "
                         f"({policy.version[0]}.{policy.version[1]}+; give --xen VERSION)")
        if regs.cr4_is_guest_view or opt("cr4") is not None or domain == "hvm":
            derived = xen.effective_cr4(policy, cr4)
            effective = derived.value
            notes += [ln for ln in derived.explanation if ln.startswith("note: ")]
        else:
            notes.append("CR4 is the hardware value read from the vCPU (used as the effective CR4)")
        if domain == "pv32" and regs.cr4_is_guest_view:
            mode = "pv32"  # a dump's pv32 CR3 is the guest's own PAE L3
        xen_view = XenView(policy, root_is_xen_l4=mode != "pv32")
    cpu = cpu.with_(cr4=effective)
    judge = Judge(cpu.cr0, effective, xen.kernel_cpl(domain), cpu.ac, cpu.pkru, cpu.pkrs)
    return Setup(source, cpu, cr4, effective, domain, version, debug, judge, xen_view, mode,
                 notes, policy)


def make_policy(args: argparse.Namespace, domain: str, version: Optional[str], debug: bool):
    """The Xen policy the options and parameters describe (newest Xen when no version is known).

    :raises OptionError: for an unknown version or an option the version lacks.
    """
    opt = lambda name: getattr(args, name, None)
    return xen.XenPolicy(version or NEWEST_XEN, domain, debug,
                         smep=_sm(_first(opt("smep"), params.value("smep"))),
                         smap=_sm(_first(opt("smap"), params.value("smap"))))


def domain_and_xen(args: argparse.Namespace, source: Optional[PhysSource] = None):
    """``(domain, version, debug)`` from options, parameters and the source, in that order."""
    opt = lambda name: getattr(args, name, None)
    domain = _first(opt("domain"), params.value("domain"), source and source.domain, "hvm")
    sv = source.xen_version if source is not None else None
    version = _first(opt("xen"), params.value("xen-version"),
                     ".".join(map(str, sv)) if sv else None)
    return domain, version, bool(_first(opt("xen_debug"), params.value("xen-debug")))


def _sm(value: Optional[str]):
    """smep=/smap= as XenPolicy takes it; None (auto) means Xen's default, which is on."""
    return True if value is None else value


def guest_cr4_of(source: Optional[PhysSource], vcpu: Optional[int]) -> int:
    """The CR4 of a dump's vCPU, or of the live target's selected (or given) vCPU.

    :raises OptionError: when there is no target, or the vCPU's CR4 is unknown.
    """
    if source is None:
        if gdb.selected_inferior().pid == 0:
            raise OptionError("no CR4 to explain: give VALUE, --core FILE, or connect to a target")
        from .live import GdbStub
        vcpus = GdbStub().vcpus()
        thread = gdb.selected_thread()
        index = vcpu if vcpu is not None else (thread.num - 1 if thread else 0)
        regs = next((v for v in vcpus if v.index == index), None)
        if regs is None:
            raise OptionError(f"vCPU {index} does not exist (vCPUs: "
                              f"{', '.join(str(v.index) for v in vcpus) or 'none'})")
        where = f"vCPU {index} of the target"
    else:
        regs = _vcpu(source, vcpu)
        where = f"vCPU {regs.index} of {source.name}" if regs.index >= 0 else source.name
    if regs.cr4 is None:
        raise OptionError(f"{where} has no CR4: give VALUE")
    return regs.cr4
