"""What every command needs before calling the engine: a source and a session.

Options shared by the commands are declared here once (``add_*_options``); :func:`open_source`
opens the source they name, and :func:`options` turns parsed options plus ``set xen-pte``
parameters into the engine's :class:`~gdb_xenpte.session.Options`, which
:func:`gdb_xenpte.session.prepare` combines with the source's registers. Precedence: command
option, then parameter, then what the source says, then the engine's default.
"""

from __future__ import annotations

import argparse
from typing import Optional, Tuple

import gdb

from .. import xen
from ..errors import OptionError
from ..session import NEWEST_XEN, Options, Session, pick_regs, prepare
from ..sources.base import PhysSource
from . import params
from .args import GdbArgumentParser, address, choice_of, int_in
from .hostargs import add_host_options, host_view
from .live import open_live_source

__all__ = [
    "add_cpu_options",
    "add_source_options",
    "add_xen_options",
    "domain_and_xen",
    "guest_cr4_of",
    "make_policy",
    "open_source",
    "options",
    "setup",
]

DOMAINS = xen.DOMAIN_TYPES


def add_source_options(p: GdbArgumentParser) -> None:
    """Add the options naming where tables are read from (dump, raw image, vCPU, direct map)."""
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
    add_host_options(p)  # --domid N, --xen-syms FILE (issue 16)


def add_cpu_options(p: GdbArgumentParser) -> None:
    """Add the options that override the CPU state the source reports."""
    g = p.add_argument_group("CPU state (overrides what the source reports)")
    for reg, what in (("cr0", "CR0"), ("cr3", "CR3 (PV: machine address of the L4/L3)"),
                      ("cr4", "guest CR4 (Xen PV: the guest-visible value)"),
                      ("efer", "IA32_EFER"), ("pkru", "PKRU for user-page key verdicts"),
                      ("pkrs", "IA32_PKRS for supervisor-page key verdicts")):
        g.add_argument(f"--{reg}", metavar="VALUE", type=address, help=f"use VALUE as {what}")
    g.add_argument("--maxphyaddr", metavar="N", type=int_in(32, 52),
                   help="physical-address width in bits (default: set xen-pte maxphyaddr, else 52)")
    g.add_argument("--vendor", metavar="intel|amd", type=choice_of("intel", "amd"),
                   help="CPU vendor whose reserved-bit rules apply (AMD also reserves bit 8 of "
                        "non-leaf PML5/PML4/PDPT entries; default intel)")
    g.add_argument("--ac", metavar="0|1", type=choice_of("0", "1"),
                   help="EFLAGS.AC for SMAP verdicts (default: unknown, both outcomes)")


def add_xen_options(p: GdbArgumentParser) -> None:
    """Add the options describing the Xen build, its boot options and the domain."""
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
    g.add_argument("--io-capable", action="store_true", default=None,
                   help="the PV domain has I/O capabilities (dom0, passthrough): Xen lets it set "
                        "PWT/PCD/PAT on L1 entries")
    g.add_argument("--global-pages", metavar="on|off", type=choice_of("on", "off"),
                   help="Xen's global-pages= option (default on; Xen turns it off when it runs "
                        "virtualised on AMD, e.g. under QEMU -cpu max)")


def open_source(args: argparse.Namespace) -> PhysSource:
    """Open the source the options name: a dump, a raw image, or the live target.

    :raises XenpteError: if the file is bad or there is no usable target.
    """
    if args.core and args.raw:
        raise OptionError("give --core or --raw, not both")
    if args.core:
        from ..sources.open import open_dump
        return host_view(args, open_dump(args.core))  # --domid: that vCPU of a Xen host dump
    if args.raw:
        from ..sources.raw import RawSource, parse_raw_spec
        return RawSource(*parse_raw_spec(args.raw))
    src = open_live_source(direct_map=args.direct_map, domain=_first(args.domain,
                           params.value("domain")), fast=bool(params.value("fast-path")),
                           pkru=None)
    thread = gdb.selected_thread()
    src.current_vcpu = thread.num - 1 if thread is not None else 0
    return src


def _first(*values):
    return next((v for v in values if v is not None), None)


def options(args: argparse.Namespace) -> Options:
    """The engine's :class:`~gdb_xenpte.session.Options`: command options, else parameters."""
    opt = lambda name: getattr(args, name, None)
    ac = _first(opt("ac"), params.value("ac"))
    return Options(
        vcpu=opt("vcpu"), cr0=opt("cr0"), cr3=opt("cr3"), cr4=opt("cr4"), efer=opt("efer"),
        pkru=_first(opt("pkru"), params.value("pkru")),
        pkrs=_first(opt("pkrs"), params.value("pkrs")),
        ac=None if ac is None else int(ac),
        maxphyaddr=_first(opt("maxphyaddr"), params.value("maxphyaddr")),
        domain=_first(opt("domain"), params.value("domain")),
        xen=_first(opt("xen"), params.value("xen-version")),
        xen_debug=_first(opt("xen_debug"), params.value("xen-debug") or None),
        smep=_first(opt("smep"), params.value("smep")),
        smap=_first(opt("smap"), params.value("smap")),
        global_pages=None if opt("global_pages") is None else opt("global_pages") == "on",
        io_capable=opt("io_capable"),
        vendor=opt("vendor"))


def setup(args: argparse.Namespace, source: PhysSource) -> Session:
    """Combine options, parameters and the source's registers (:func:`session.prepare`).

    :raises OptionError: if no CR3 is known, or a value is inconsistent.
    """
    return prepare(source, options(args))


def make_policy(args: argparse.Namespace, domain: str, version: Optional[str], debug: bool):
    """The Xen policy the options and parameters describe (newest Xen when no version is known).

    :raises OptionError: for an unknown version or an option the version lacks.
    """
    o = options(args)
    return xen.XenPolicy(version or NEWEST_XEN, domain, debug,
                         smep=True if o.smep is None else o.smep,
                         smap=True if o.smap is None else o.smap,
                         global_pages=True if o.global_pages is None else o.global_pages,
                         io_capable=bool(o.io_capable))


def domain_and_xen(args: argparse.Namespace, source: Optional[PhysSource] = None):
    """``(domain, version, debug)`` from options, parameters and the source, in that order."""
    o = options(args)
    sv = source.xen_version if source is not None else None
    return (_first(o.domain, source and source.domain, "hvm"),
            _first(o.xen, ".".join(map(str, sv)) if sv else None), bool(o.xen_debug))


def guest_cr4_of(source: Optional[PhysSource], vcpu: Optional[int]) -> Tuple[int, bool]:
    """The CR4 of a dump's vCPU, or of the live target's selected (or given) vCPU, and whether
    it is the guest's own view (``ctrlreg[4]`` of a PV dump) rather than a CPU's CR4.

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
        regs = pick_regs(source, vcpu)
        where = f"vCPU {regs.index} of {source.name}" if regs.index >= 0 else source.name
    if regs.cr4 is None:
        raise OptionError(f"{where} has no CR4: give VALUE")
    return regs.cr4, regs.cr4_is_guest_view
