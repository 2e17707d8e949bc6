"""The xen-pte commands: each parses, makes one engine call, renders and writes.

Bit meanings, walks and verdicts all come from the engine; this module only wires options to it.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Iterator, List

import gdb

from .. import render, whatif, xen
from ..arch import MODES
from ..decode import explain_entry, level_rules
from ..errors import OptionError
from ..model import Mapping, PageBatch
from ..walk import Walker
from ..xenview import XenView
from . import anomalies, params
from .args import GdbArgumentParser, address, choice_of, int_in, verdict_spec
from .base import XenPteCommand, style, write_lines
from .context import (add_cpu_options, add_source_options, add_xen_options, domain_and_xen,
                      guest_cr4_of, make_policy, open_source, options, setup)
from .filters import build_filter

__all__ = [
    "XenCr4Command",
    "XenPteCheckCommand",
    "XenPteDecodeCommand",
    "XenPteWalkCommand",
    "collect_records",
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
    (QEMU gdbstub) or from --core/--raw."""

    command = "xen-pte-walk"
    takes_address = True

    def build_parser(self) -> GdbArgumentParser:
        p = GdbArgumentParser(self.command, "", epilog=(
            "examples:\n  xen-pte-walk $rip\n  xen-pte-walk --faults --user\n"
            "  xen-pte-walk --core guest.elf --json 0xffff800000000000 0xffff810000000000"))
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
        f.add_argument("--faults", action="store_true",
                       help="only mappings where some guest access faults for a reason beyond "
                            "the page's own R/W, U/S and NX bits (SMEP, SMAP, protection keys, "
                            "reserved bits)")
        f.add_argument("--verdict", metavar="KIND=ok|fault[:REASON]", type=verdict_spec,
                       action="append", default=[],
                       help="only mappings with this verdict, e.g. kernel-read=fault:SMAP "
                            "(repeatable)")
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
        o.add_argument("--limit", metavar="N", type=int_in(1, 1 << 62),
                       help="stop after N mappings (default: set xen-pte limit)")
        return p

    def run(self, args: argparse.Namespace) -> None:
        with _walk(args, repeats=not args.expand, batches=args.json) as (walker, header, rows):
            if rows is None:
                return _write_trace(walker.trace(args.addr[0]), header, args.json)
            _write_walk(rows, walker, header, args.json, _first(args.limit,
                                                                params.value("limit")))


@contextlib.contextmanager
def _walk(args: argparse.Namespace, repeats: bool = False, batches: bool = False):
    """Open the source and yield ``(walker, header, rows)``; rows is None for a single ADDR.

    :param repeats: a subtree reached again at VAs in arithmetic progression is one record with
        ``repeat`` copies (see :meth:`~gdb_xenpte.walk.Walker.iter_mappings`).
    :param batches: per-page rows may come as :class:`~gdb_xenpte.model.PageBatch` (JSON output).

    The source stays open (and a live QEMU in PhyMemMode) exactly as long as the block runs.
    """
    if len(args.addr) > 2:
        raise OptionError("give one ADDR or START END, not more")
    if len(args.addr) == 2:
        start, end = args.addr
        if end != 0 and end <= start:
            # An empty table would look like "nothing mapped here": say the range is the problem.
            raise OptionError(f"empty range: END {end:#x} is not above START {start:#x} (the "
                              f"range is [START, END); END 0 means the top)")
    with open_source(args) as src:
        s = setup(args, src)
        walker = s.walker()
        if len(args.addr) == 1:
            yield walker, _header(s, walker), None
            return
        start, end = (args.addr + [None])[:2] if args.addr else (0, None)
        keep = build_filter(args.user, args.kernel, args.writable, args.exec, args.wx,
                            args.pkey, args.xen_bits, args.faults, args.verdict)
        coalesce = params.value("coalesce") if args.coalesce is None else args.coalesce
        # The filter is asked once per distinct set of attributes, not once per record.
        rows = walker.iter_mappings(start, end, coalesce=coalesce, phys=args.phys,
                                    repeats=repeats, keep=keep, batches=batches)
        yield walker, _header(s, walker), rows


def collect_records(args: argparse.Namespace) -> List[dict]:
    """The JSON records ``xen-pte-walk --json --expand`` prints, as a list (for the MI command).

    Expanded: the batch tools read ``count`` and ``size`` per record (one record per copy).
    """
    with _walk(args) as (walker, header, rows):
        if rows is None:
            trace = walker.trace(args.addr[0])
            return [header, render.trace_record(trace)] + (
                [render.mapping_record(trace.mapping)] if trace.mapping else [])
        limit = _first(args.limit, params.value("limit"))
        counter, records = render.RecordCounter(), [header]
        for m in rows:
            if limit is not None and counter.mappings >= limit:
                break
            counter.add(m)
            records.append(render.mapping_record(m))
        stats = walker.stats
        hit = (limit is not None and counter.mappings >= limit) or bool(stats.budget_hit)
        return records + [render.summary_record(counter, hit, stats.unreadable,
                                                budget=stats.budget_hit,
                                                tables_read=stats.tables_read)]


def _first(*values):
    return next((v for v in values if v is not None), None)


def _header(s, walker: Walker) -> dict:
    """The header record of a walk (:meth:`~gdb_xenpte.session.Session.header`)."""
    del walker
    return s.header()


def _write_trace(trace, header: dict, as_json: bool) -> None:
    if as_json:
        recs = [header, render.trace_record(trace)]
        if trace.mapping is not None:
            recs.append(render.mapping_record(trace.mapping))
        return write_lines(render.dumps(r) for r in recs)
    write_lines(render.header_lines(header) + render.trace_text(trace, style()))


def _write_walk(rows: Iterator[Mapping], walker: Walker, header: dict, as_json: bool,
                limit) -> None:
    counter = render.RecordCounter()
    # Both stream: JSON in chunks, the table once its column widths are known (its first rows).
    table = None if as_json else render.TableStream(style())
    pending: List[str] = [render.dumps(header)] if as_json else render.header_lines(header)
    interrupted = limited = False
    try:
        for m in rows:
            if limit is not None and counter.mappings >= limit:
                limited = True
                break
            if isinstance(m, PageBatch):  # --json --no-coalesce: n records encoded in bulk
                take = m.n if limit is None else limit - counter.mappings
                counter.add_batch(m, take)
                pending += render.batch_lines(m, take)
                if len(pending) >= 256:
                    write_lines(pending)
                    pending.clear()
                continue
            counter.add(m)
            if table is not None:
                pending += table.add(m)
            else:
                pending.append(render.mapping_json(m))
            if len(pending) >= 256:
                write_lines(pending)
                pending.clear()
    except KeyboardInterrupt:
        interrupted = True  # Ctrl-C: stop walking, still report what was found
    stats = walker.stats
    if as_json:
        write_lines(pending + [render.dumps(render.summary_record(
            counter, limited or bool(stats.budget_hit), stats.unreadable, interrupted,
            budget=stats.budget_hit, tables_read=stats.tables_read))])
    else:
        write_lines(pending + table.finish()
                    + [render.summary_text(counter, stats, limited, interrupted)])
    if interrupted:
        raise KeyboardInterrupt


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
        domain, version, debug = domain_and_xen(args)
        mode_key = args.mode or ("pv32" if domain == "pv32" else
                                 "5level" if level == "pml5" else "4level")
        names = [lv.name for lv in MODES[mode_key].levels]
        if level not in names:
            raise OptionError(f"{MODES[mode_key].name} paging has no {level} level "
                              f"(it has {', '.join(names)})")
        maxphyaddr = _first(args.maxphyaddr, params.value("maxphyaddr"), 52)
        rule = level_rules(MODES[mode_key], args.nxe == "1", maxphyaddr,
                           vendor=args.vendor)[names.index(level)]
        bits = list(explain_entry(args.value, rule))
        if domain != "hvm" or version is not None:
            view = XenView(make_policy(args, domain, version, debug), mode_key != "pv32")
            bits += [(name, 1, meaning) for name, meaning in
                     view.explain_bits(args.value, level, rule.is_leaf(args.value))]
        head = (f"{level} entry {args.value:#018x} ({MODES[mode_key].name} paging, "
                f"NXE={args.nxe}, MAXPHYADDR {maxphyaddr}, domain {domain}"
                + (f", Xen {version or 'newest'}{' debug' if debug else ''}"
                   if domain != "hvm" or version else "") + ")")
        write_lines([head] + render.bits_table(bits, style()))


class XenCr4Command(XenPteCommand):
    """Show the CR4 the hardware runs the domain with, bit by bit, and what it means.

    VALUE is the guest's CR4 (HVM: its own; Xen PV: the value the guest sees); without it, the
    current target's (or --core/--raw vCPU's) CR4 is used. Each bit says where it came from: Xen's
    policy, the guest's CR4, the domain type. Then which ring the guest kernel runs in and whether
    SMEP, SMAP, PKE and PKS apply to it."""

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
        source, sess = None, None
        args.raw = args.direct_map = None
        if args.value is None and args.core:
            source = open_source(args)
        try:
            cr4, guest_view = ((args.value, True) if args.value is not None
                               else guest_cr4_of(source, args.vcpu))
            domain, version, debug = domain_and_xen(args, source)
            if not guest_view and args.xen_cr4 is None and args.context == "kernel":
                # A CPU's CR4: read it as the walk does (session.prepare), one rule for both.
                if source is None:
                    source = open_source(args)
                sess = setup(args, source)
                domain = sess.domain
        finally:
            if source is not None:
                source.close()
        policy = (sess.policy if sess is not None and sess.policy is not None
                  else make_policy(args, domain, version, debug))
        # A CPU's CR4 under a PV guest is Xen's own or the PV context's, never the guest's view.
        guest, xen_cr4 = ((None, _first(args.xen_cr4, cr4)) if policy.is_pv and not guest_view
                          else (cr4, args.xen_cr4))
        if sess is not None and policy.is_pv:
            eff = xen.Cr4(sess.effective_cr4, sess.cr4_explanation)
            xen_cr4 = sess.effective_cr4
        else:
            eff = xen.effective_cr4(policy, guest, xen_cr4, args.context)
        seen = xen.guest_visible_cr4(policy, guest or 0, xen_cr4) if policy.is_pv else None
        prot = xen.kernel_protections(policy, guest, xen_cr4)
        write_lines(render.cr4_text(policy, cr4, guest_view, eff, seen, prot, args.context,
                                    style()))


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
                       help="mappings listed per category or scenario (default 10; all are "
                            "counted)")
        o.add_argument("--json", action="store_true",
                       help="JSON Lines: header, anomaly records, what-if and change records, "
                            "summary (schema: gdb_xenpte/data/xen-pte-check.schema.json)")
        return p

    def run(self, args: argparse.Namespace) -> None:
        with open_source(args) as src:
            s = setup(args, src)
            walker = s.walker()
            header = _header(s, walker)
            groups = anomalies.group(walker.iter_mappings(), s.domain, s.xen_view)
            stats = walker.stats
            results = [whatif.what_if(s, name, options(args)) for name in args.what_if]
        if args.json:
            recs = [header] + [render.anomaly_record(key, f) for key, _t, fs in groups
                               for f in fs]
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
