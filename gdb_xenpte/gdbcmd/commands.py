"""The xen-pte commands: each parses, makes one engine call, renders and writes.

Bit meanings, walks and verdicts all come from the engine; this module only wires options to it.
"""

from __future__ import annotations

import argparse
from typing import Iterator, List

import gdb

from .. import render
from ..errors import OptionError
from ..model import Mapping
from ..walk import Walker
from . import params
from .args import GdbArgumentParser, address, int_in, verdict_spec
from .base import XenPteCommand, style, write_lines
from .context import add_cpu_options, add_source_options, add_xen_options, open_source, setup
from .filters import build_filter

__all__ = ["XenPteWalkCommand", "register"]


class XenPteWalkCommand(XenPteCommand):
    """Walk the guest page tables and explain every entry.

    With one ADDR, trace that virtual address level by level: index, table address, raw entry,
    every bit named, the rights so far and the rule that ends the walk. With START END, list the
    mappings in [START, END); with no address, the whole address space. Addresses are gdb
    expressions ($rsp, symbols, 0x...). Tables are read from the live target (QEMU gdbstub) or
    from --core/--raw."""

    command = "xen-pte-walk"
    takes_address = True

    def build_parser(self) -> GdbArgumentParser:
        p = GdbArgumentParser(self.command, "", epilog=(
            "examples:\n  xen-pte-walk $rip\n  xen-pte-walk --faults --user\n"
            "  xen-pte-walk --core guest.elf --json 0xffff800000000000 0xffff810000000000"))
        p.add_argument("addr", metavar="ADDR | START END", nargs="*", type=address,
                       help="one VA to trace, or a VA range to list (end exclusive)")
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
                       help="only mappings where some access by the guest faults")
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
        o.add_argument("--json", action="store_true",
                       help="JSON Lines: header, mapping records, summary "
                            "(schema: gdb_xenpte/data/xen-pte-walk.schema.json)")
        o.add_argument("--limit", metavar="N", type=int_in(1, 1 << 62),
                       help="stop after N mappings (default: set xen-pte limit)")
        return p

    def run(self, args: argparse.Namespace) -> None:
        if len(args.addr) > 2:
            raise OptionError("give one ADDR or START END, not more")
        with open_source(args) as src:
            s = setup(args, src)
            walker = Walker(src, s.cpu, mode=s.mode, domain=s.xen_view, judge=s.judge)
            header = render.header_record(s.cpu, s.guest_cr4, s.effective_cr4, walker.mode.name, s.domain,
                                          s.xen_version, s.xen_debug, src.describe(),
                                          list(walker.notes) + s.notes)
            if len(args.addr) == 1:
                return _write_trace(walker.trace(args.addr[0]), header, args.json)
            start, end = (args.addr + [None])[:2] if args.addr else (0, None)
            keep = build_filter(args.user, args.kernel, args.writable, args.exec, args.wx,
                                args.pkey, args.xen_bits, args.faults, args.verdict)
            coalesce = params.value("coalesce") if args.coalesce is None else args.coalesce
            limit = _first(args.limit, params.value("limit"))
            rows = (m for m in walker.iter_mappings(start, end, coalesce=coalesce, phys=args.phys)
                    if keep(m))
            _write_walk(rows, walker, header, args.json, limit)


def _first(*values):
    return next((v for v in values if v is not None), None)


def _write_trace(trace, header: dict, as_json: bool) -> None:
    if as_json:
        recs = [header, render.trace_record(trace)]
        if trace.mapping is not None:
            recs.append(render.mapping_record(trace.mapping))
        return write_lines(render.dumps(r) for r in recs)
    st = style()
    write_lines([f"{header['mode']} paging, CR3 {header['cr3']}, CR4 {header['effective_cr4']}, "
                 f"domain {header['domain']}; {header['source']}"] +
                [f"note: {n}" for n in header["notes"]] + render.trace_text(trace, st))


def _write_walk(rows: Iterator[Mapping], walker: Walker, header: dict, as_json: bool,
                limit) -> None:
    counter = render.RecordCounter()
    kept: List[Mapping] = []
    interrupted = limited = False
    try:
        if as_json:
            write_lines([render.dumps(header)])
        for m in rows:
            if limit is not None and counter.mappings >= limit:
                limited = True
                break
            counter.add(m)
            if as_json:
                write_lines([render.dumps(render.mapping_record(m))])
            else:
                kept.append(m)
    except KeyboardInterrupt:
        interrupted = True  # Ctrl-C: stop walking, still report what was found
    stats = walker.stats
    if as_json:
        write_lines([render.dumps(render.summary_record(
            counter, limited or bool(stats.budget_hit), stats.unreadable, interrupted,
            budget=stats.budget_hit, tables_read=stats.tables_read))])
    else:
        st = style()
        write_lines([f"{header['mode']} paging, CR3 {header['cr3']}, CR4 "
                     f"{header['effective_cr4']}, domain {header['domain']}; {header['source']}"]
                    + [f"note: {n}" for n in header["notes"]]
                    + render.mapping_table(kept, st)
                    + [render.summary_text(counter, stats, limited, interrupted)])
    if interrupted:
        raise KeyboardInterrupt


COMMANDS = (XenPteWalkCommand,)


def register() -> List[gdb.Command]:
    """Create every command."""
    return [cls() for cls in COMMANDS]
