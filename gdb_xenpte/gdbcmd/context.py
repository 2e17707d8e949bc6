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

from ..domain_cpu import DOMAINS, Options, first_given
from ..errors import OptionError
from ..replay import SubtreeMemo
from ..session import Session, prepare
from ..sources.base import PhysSource
from . import params
from .args import GdbArgumentParser, address, choice_of, int_in
from .hostargs import add_host_options, host_view
from .live import open_live_source

__all__ = [
    "add_cpu_options",
    "add_source_options",
    "add_xen_options",
    "kept_memo",
    "kept_memo_stats",
    "open_source",
    "options",
    "setup",
]


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
    g.add_argument("--domain", metavar="native|hvm|pv64|pv32", type=choice_of(*DOMAINS),
                   help="kind of domain: native (no Xen: bare metal, KVM ...), a Xen hvm, pv64 "
                        "or pv32 domain (default: what the source shows, else set xen-pte "
                        "domain, else native unless something names Xen)")
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
    if getattr(args, "domid", None) is not None and args.direct_map is not None:
        raise OptionError("--domid reads Xen's structures in machine memory: not with "
                          "--direct-map (the live target's physical reads are needed)")
    src = open_live_source(direct_map=args.direct_map, domain=first_given(
        args.domain, params.value("domain")), fast=bool(params.value("fast-path")), pkru=None)
    thread = gdb.selected_thread()
    src.current_vcpu = thread.num - 1 if thread is not None else 0
    return host_view(args, src)  # --domid: that vCPU of the live Xen host


# Options that a `set xen-pte` parameter backs: (option attribute, parameter name).
_PARAMS = (("pkru", "pkru"), ("pkrs", "pkrs"), ("ac", "ac"), ("maxphyaddr", "maxphyaddr"),
           ("domain", "domain"), ("xen", "xen-version"), ("xen_debug", "xen-debug"),
           ("smep", "smep"), ("smap", "smap"))


def options(args: argparse.Namespace) -> Options:
    """The engine's :class:`~gdb_xenpte.domain_cpu.Options`: command options, else parameters.

    Values taken from a ``set xen-pte`` parameter carry that origin, so headers can name them.
    """
    opt = lambda name: getattr(args, name, None)
    values, origins = {}, []
    for name, param in _PARAMS:
        value = opt(name)
        if value is None:
            value = params.value(param)
            if name == "xen_debug" and not value:
                value = None  # the parameter's default (off) says nothing
            if value is not None:
                origins.append((name, f"set xen-pte {param}"))
        values[name] = value
    ac = values.pop("ac")
    return Options(
        vcpu=opt("vcpu"), cr0=opt("cr0"), cr3=opt("cr3"), cr4=opt("cr4"), efer=opt("efer"),
        ac=None if ac is None else int(ac),
        global_pages=None if opt("global_pages") is None else opt("global_pages") == "on",
        io_capable=opt("io_capable"), vendor=opt("vendor"), xen_cr4=opt("xen_cr4"),
        context=opt("context") or "kernel", origins=tuple(origins), **values)


def setup(args: argparse.Namespace, source: PhysSource) -> Session:
    """Combine options, parameters and the source's registers (:func:`session.prepare`);
    walks of a dump share subtrees with earlier commands' walks of it (:func:`kept_memo`).

    :raises OptionError: if no CR3 is known, or a value is inconsistent.
    """
    session = prepare(source, options(args))
    session.memo = kept_memo(source)
    return session


# What walks of the last dump learnt about its subtrees, kept from one command to the next:
# `xen-pte-dump --vcpu all` runs one command per CR3 in one gdb, and every CR3's kernel half is
# the same tables. Keyed by the file's identity (device, inode, size, mtime: a dump replaced or
# rewritten is walked afresh) and the memo binds to the walk's rules too. One file at a time,
# and the memo is bounded, so what gdb keeps between commands stays small.
_kept: Optional[Tuple[tuple, SubtreeMemo]] = None


def kept_memo_stats() -> dict:
    """What the kept memo has served so far (for tests and curious users)."""
    memo = _kept[1] if _kept is not None else None
    return {"subtrees": memo.hits if memo else 0, "tables": memo.tables if memo else 0}


def kept_memo(source: PhysSource) -> Optional[SubtreeMemo]:
    """The memo for walks of ``source``, or None for a source that can change (a live guest)."""
    global _kept
    identity = getattr(source, "identity", None)
    if identity is None:
        return None
    if _kept is None or _kept[0] != identity:
        _kept = (identity, SubtreeMemo())
    return _kept[1]
