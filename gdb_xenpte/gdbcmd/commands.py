"""The xen-pte commands: each parses, makes one engine call, renders and writes.

Bit meanings, walks and verdicts all come from the engine; this module only wires options to it.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import List

import gdb

from .. import render, whatif, xen
from ..arch import MODES
from ..decode import explain_entry, level_rules
from ..domain_cpu import derive, first_given
from ..errors import OptionError, XenpteError
from ..findings import group as find_anomalies
from ..sources.base import NoMemory, VcpuRegs
from ..sources.open import pick_vcpu
from ..xenview import XenView
from . import params
from .args import GdbArgumentParser, address, choice_of, int_in, limit_count, verdict_spec
from . import walkout
from .base import XenPteCommand, style, write_lines
from .context import (add_cpu_options, add_source_options, add_xen_options, open_source, options,
                      setup)
from .hostargs import add_host_options

__all__ = [
    "XenCr4Command",
    "XenPteCheckCommand",
    "XenPteDecodeCommand",
    "XenPteWalkCommand",
    "register",
    "scenario",
]

LEVEL_NAMES = ("pt", "pd", "pdpt", "pml4", "pml5")  # index + 1 = the level number


class XenPteWalkCommand(XenPteCommand):
    """Walk the guest page tables and explain every entry.

    With one ADDR, trace that virtual address level by level: index, table address, raw entry,
    every bit named, the rights so far and the rule that ends the walk. With START END, list the
    mappings in [START, END) (END 0: to the top); with no address, the whole address space.
    Addresses are gdb expressions ($rsp, symbols, 0x...). Tables are read from the live target
    (QEMU gdbstub) or from --core/--raw.

    Observed over assumed: registers read from the CPU or the dump are used as they are, and a
    Xen version, domain type or `set xen-pte` value never rewrites them; where the two disagree,
    the header says so. Ask for the hypothetical with --cr4 or xen-pte-check --what-if."""

    command = "xen-pte-walk"
    takes_address = True

    def build_parser(self) -> GdbArgumentParser:
        p = GdbArgumentParser(self.command, "", epilog=(
            "examples:\n  xen-pte-walk $rip\n  xen-pte-walk --faults --user\n"
            "  xen-pte-walk --core guest.elf --json 0xffff800000000000 0xffff810000000000\n\n"
            + textwrap.fill(render.LEGEND, 99)))
        p.add_argument("addr", metavar="ADDR | START END", nargs="*", type=address,
                       help="one VA to trace, or a VA range to list (end exclusive; END 0: to "
                            "the top of the address space)")
        add_source_options(p)
        add_cpu_options(p)
        add_xen_options(p)
        f = p.add_argument_group("filters (all given must hold)")
        f.add_argument("--user", action="store_true", help="only user-accessible mappings")
        f.add_argument("--kernel", action="store_true", help="only supervisor mappings")
        f.add_argument("--writable", action="store_true", help="only writable mappings")
        f.add_argument("--exec", action="store_true", help="only executable mappings")
        f.add_argument("--wx", action="store_true", help="only writable and executable mappings")
        f.add_argument("--pkey", metavar="N", type=int_in(0, 15),
                       help="only mappings with protection key N")
        f.add_argument("--xen-bits", action="store_true", help="only leaves with Xen bits set")
        p.value_only_with_equals("--faults", "beyond")
        f.add_argument("--faults", metavar="all", nargs="?", type=choice_of("beyond", "all"),
                       help="only mappings where some access faults beyond the guest's own "
                            "choices: a protection imposed on it (Xen's SMEP/SMAP on a ring-1 "
                            "kernel, a what-if) or a reserved bit; --faults=all: also faults the "
                            "guest chose (its SMEP/SMAP/keys) and conditional ones")
        f.add_argument("--verdict", metavar="KIND=ok|fault[:REASON]", type=verdict_spec,
                       action="append", default=[],
                       help="only mappings with this verdict, e.g. kr=fault:SMAP (KIND: kr kw "
                            "kx ur uw ux, or kernel-read ...; repeatable)")
        o = p.add_argument_group("output")
        c = o.add_mutually_exclusive_group()
        c.add_argument("--coalesce", dest="coalesce", action="store_true", default=None,
                       help="merge neighbouring pages with equal attributes (default: "
                            "set xen-pte coalesce)")
        c.add_argument("--no-coalesce", dest="coalesce", action="store_false",
                       help="one row per page")
        o.add_argument("--phys", action="store_true",
                       help="merge only where physical addresses are contiguous too")
        o.add_argument("--expand", action="store_true",
                       help="one row per copy of a repeated subtree (default: one row with "
                            "'xN every STRIDE', e.g. Linux's espfix area)")
        o.add_argument("--json", action="store_true",
                       help="JSON Lines: header, mapping records, summary "
                            "(schema: gdb_xenpte/data/xen-pte-walk.schema.json)")
        o.add_argument("--limit", metavar="N", type=limit_count,
                       help="stop after N mappings; 0 or unlimited: no limit (default: set "
                            "xen-pte limit)")
        return p

    def run(self, args: argparse.Namespace) -> None:
        walkout.write(args)


class XenPteDecodeCommand(XenPteCommand):
    """Explain one raw page-table entry bit by bit.

    VALUE is the entry (a gdb expression). The level and paging mode say which format applies;
    with a Xen domain or version, Xen's own bits are named too (bit 52 _PAGE_GUEST_KERNEL, bit 62
    or 11 _PAGE_GNTTAB in debug builds), with the protection-key collision and PV disallow-mask
    violations."""

    command = "xen-pte-decode"
    takes_address = True

    def build_parser(self) -> GdbArgumentParser:
        p = GdbArgumentParser(self.command, "", epilog=(
            "examples:\n  xen-pte-decode 0x8010000012345067\n"
            "  xen-pte-decode 0x4000000012345067 --domain pv64 --xen 4.17 --xen-debug\n"
            "  xen-pte-decode 0x1e3 --level pd --mode pae"))
        p.add_argument("value", metavar="VALUE", type=address, help="the raw entry")
        p.add_argument("--level", metavar="LEVEL", type=choice_of(*LEVEL_NAMES, "1", "2", "3",
                                                                   "4", "5"), default="pt",
                       help="pt, pd, pdpt, pml4 or pml5 (or 1..5 with 1 = pt); default pt")
        p.add_argument("--mode", metavar="MODE", type=choice_of(*MODES), default=None,
                       help=f"paging mode: {', '.join(MODES)} (default: 4level, or 5level for "
                            "--level pml5, pv32 for --domain pv32)")
        p.add_argument("--nxe", metavar="0|1", type=choice_of("0", "1"), default="1",
                       help="EFER.NXE: bit 63 is XD (1, default) or reserved (0)")
        p.add_argument("--vendor", metavar="intel|amd", type=choice_of("intel", "amd"),
                       default="intel", help="CPU vendor (AMD reserves more PML4E bits)")
        p.add_argument("--maxphyaddr", metavar="N", type=int_in(32, 52),
                       help="physical-address width in bits (default: set xen-pte maxphyaddr, "
                            "else 52)")
        add_xen_options(p)
        return p

    def run(self, args: argparse.Namespace) -> None:
        level = LEVEL_NAMES[int(args.level) - 1] if args.level.isdigit() else args.level
        # The domain and Xen build as every command derives them (no registers: options only).
        state = derive(NoMemory(), VcpuRegs(-1), options(args))
        domain, policy = state.domain, state.policy
        mode_key = args.mode or ("pv32" if domain == "pv32" else
                                 "5level" if level == "pml5" else "4level")
        names = [lv.name for lv in MODES[mode_key].levels]
        if level not in names:
            raise OptionError(f"{MODES[mode_key].name} paging has no {level} level "
                              f"(it has {', '.join(names)})")
        maxphyaddr = first_given(args.maxphyaddr, params.value("maxphyaddr"), 52)
        rule = level_rules(MODES[mode_key], args.nxe == "1", maxphyaddr,
                           vendor=args.vendor)[names.index(level)]
        bits = list(explain_entry(args.value, rule))
        if policy is not None:
            view = XenView(policy, mode_key != "pv32")
            bits += [(name, 1, meaning) for name, meaning in
                     view.explain_bits(args.value, level, rule.is_leaf(args.value))]
        head = (f"{level} entry {args.value:#018x} ({MODES[mode_key].name} paging, "
                f"NXE={args.nxe}, MAXPHYADDR {maxphyaddr}, domain {domain}"
                + (f", Xen {xen.version_text(policy.version)}{' debug' if policy.debug else ''}"
                   f" ({state.origins['xen']})" if policy is not None else "") + ")")
        write_lines([head] + render.bits_table(bits, style()))


class XenCr4Command(XenPteCommand):
    """Show the CR4 the hardware runs the domain with, bit by bit, and what it means.

    VALUE is the guest's CR4 (HVM: its own; Xen PV: the value the guest sees); without it, the
    current target's (or --core vCPU's) CR4 is used. Each bit is explained as it is in the value
    shown, with where it came from: the CPU, the dump, an option, or Xen's policy. Then which ring
    the guest kernel runs in, whether SMEP, SMAP, PKE and PKS bind it, and whose choice each is.
    With nothing naming Xen (a Xen selector, a Xen dump, --domain, --xen, set xen-pte), no Xen
    policy applies and the CPU's CR4 is shown as it is.

    Observed over assumed: a CR4 read from the CPU or the dump is never rewritten by a Xen
    version or domain type; where they disagree, a note says so."""

    command = "xen-cr4"
    takes_address = True

    def build_parser(self) -> GdbArgumentParser:
        p = GdbArgumentParser(self.command, "", epilog=(
            "examples:\n  xen-cr4 --domain pv64 --xen 4.17\n"
            "  xen-cr4 0x660 --domain pv32 --xen 4.6\n  xen-cr4 --core guest.xc"))
        p.add_argument("value", metavar="VALUE", type=address, nargs="?",
                       help="the guest's CR4 (default: from the target or dump)")
        g = p.add_argument_group("source (when VALUE is not given)")
        g.add_argument("--core", metavar="FILE", help="take CR4 from a dump's vCPU")
        g.add_argument("--vcpu", metavar="N", type=int_in(0, 4095), help="which vCPU's CR4")
        add_host_options(p)  # --domid N, --xen-syms FILE (issue 16)
        add_xen_options(p)
        p.add_argument("--xen-cr4", metavar="VALUE", type=address,
                       help="Xen's own CR4 (mmu_cr4_features) when known, e.g. read in Xen's "
                            "idle loop (default: derived from version and hardware)")
        p.add_argument("--context", metavar="kernel|user|xen",
                       type=choice_of("kernel", "user", "xen"), default="kernel",
                       help="whose code runs on the vCPU: the guest kernel (default), guest "
                            "user space, or Xen on the guest's behalf")
        return p

    def run(self, args: argparse.Namespace) -> None:
        args.raw = args.direct_map = None  # xen-cr4 reads registers only
        opts = options(args)
        if args.value is not None:
            opts = opts.with_(cr4=args.value, origins=opts.origins + (("cr4", "VALUE"),))
        # VALUE alone needs no target; otherwise the dump's or the live vCPU's registers.
        if args.value is not None and not args.core:
            source = NoMemory()
        elif args.core:
            source = open_source(args)
        else:
            try:
                source = open_source(args)
            except XenpteError:
                if args.domid is not None:
                    raise  # the live Xen host's own answer (no xen-syms, no such domain ...)
                raise OptionError("no CR4 to explain: give VALUE, --core FILE, or connect to a "
                                  "target") from None
        with source:
            state = derive(source, pick_vcpu(source, opts.vcpu), opts)
        write_lines(render.cr4_text(state, style()))


class XenPteCheckCommand(XenPteCommand):
    """Report the anomalies of the whole address space, grouped and counted, worst first.

    Reserved bits, guest-kernel accesses that fault under SMEP/SMAP (the infinite-#PF-loop
    candidates, with the access kind), bits Xen's PV disallow masks refuse, W+X mappings,
    user-accessible kernel-half mappings (HVM), Xen bits the CPU would read as a protection key,
    and tables that could not be read. With --what-if, also what a policy change would break and
    fix for this guest, entry by entry."""

    command = "xen-pte-check"

    def build_parser(self) -> GdbArgumentParser:
        p = GdbArgumentParser(self.command, "", epilog=(
            "examples:\n  xen-pte-check\n  xen-pte-check --core dom1.xc --examples 50\n"
            "  xen-pte-check --core dom0.xc --what-if pke --what-if xen=4.6 --json"))
        add_source_options(p)
        add_cpu_options(p)
        add_xen_options(p)
        p.add_argument("--what-if", metavar="SCENARIO", type=scenario, action="append",
                       default=[], help="also compare with a changed policy (repeatable): "
                                        + ", ".join(whatif.SCENARIOS))
        o = p.add_argument_group("output")
        o.add_argument("--examples", metavar="N", type=int_in(0, 1 << 30), default=10,
                       help="mappings listed per category or scenario, in text and JSON "
                            "(default 10; all are counted)")
        o.add_argument("--json", action="store_true",
                       help="JSON Lines: header, anomaly records, what-if and change records, "
                            "summary (schema: gdb_xenpte/data/xen-pte-check.schema.json)")
        return p

    def run(self, args: argparse.Namespace) -> None:
        with open_source(args) as src:
            s = setup(args, src)
            walker = s.walker()
            header = s.header()
            groups = find_anomalies(walker.iter_mappings(), s.domain, s.xen_view, args.examples)
            stats = walker.stats
            results = [whatif.what_if(s, name, options(args)) for name in args.what_if]
        if args.json:
            recs = [header] + [render.anomaly_record(g.key, f) for g in groups
                               for f in g.examples]
            for r in results:
                recs += render.what_if_records(r)
            recs.append(render.check_summary_record(groups, stats, results))
            return write_lines(render.dumps(r) for r in recs)
        lines = render.header_lines(header) + render.check_text(groups, args.examples, style())
        for r in results:
            lines += render.what_if_text(r, args.examples, style())
        write_lines(lines)


def scenario(text: str) -> str:
    """A --what-if scenario name, checked by the engine."""
    try:
        return whatif.parse_scenario(text)
    except OptionError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


COMMANDS = (XenPteWalkCommand, XenPteDecodeCommand, XenCr4Command, XenPteCheckCommand)


def register() -> List[gdb.Command]:
    """Create every command (and ``-xen-pte-walk`` where gdb has MI commands in Python)."""
    from . import mi
    made = [cls() for cls in COMMANDS]
    return made + mi.register(made[0])
