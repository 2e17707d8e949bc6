"""The one walk -> records pipeline of ``xen-pte-walk`` and ``-xen-pte-walk``.

Opens the source, derives the session, filters, applies the limit, counts and ends with the
summary: :func:`write` streams it (text table or JSON Lines) through gdb's pager or ``-o``,
:func:`collect_records` returns the same JSON records as a list (the MI command).
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Iterator, List, Optional

from .. import render
from ..domain_cpu import first_given
from ..errors import OptionError, XenpteError
from ..filters import build_filter
from ..model import Mapping, PageBatch
from ..walk import Walker
from . import params
from .base import style, write_lines
from .context import open_source, setup

__all__ = ["collect_records", "write"]


def write(args: argparse.Namespace) -> None:
    """Run the walk ``args`` describe and write it (trace, table or JSON Lines)."""
    with _walk(args, repeats=not args.expand, batches=args.json) as (walker, header, rows):
        if rows is None:
            return _write_trace(walker.trace(args.addr[0]), header, args.json)
        _write_walk(rows, walker, header, args.json, _limit(args))


def _limit(args: argparse.Namespace) -> Optional[int]:
    """The mapping limit: --limit, else ``set xen-pte limit``; 0 or None means unlimited."""
    return first_given(args.limit, params.value("limit")) or None


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
            yield walker, s.header(), None
            return
        start, end = (args.addr + [None])[:2] if args.addr else (0, None)
        keep = build_filter(args.user, args.kernel, args.writable, args.exec, args.wx,
                            args.pkey, args.xen_bits, args.faults, args.verdict)
        coalesce = params.value("coalesce") if args.coalesce is None else args.coalesce
        # The filter is asked once per distinct set of attributes, not once per record.
        rows = walker.iter_mappings(start, end, coalesce=coalesce, phys=args.phys,
                                    repeats=repeats, keep=keep, batches=batches)
        yield walker, s.header(), rows


def collect_records(args: argparse.Namespace) -> List[dict]:
    """The JSON records ``xen-pte-walk --json --expand`` prints, as a list (for the MI command).

    Expanded: the batch tools read ``count`` and ``size`` per record (one record per copy).
    """
    with _walk(args) as (walker, header, rows):
        if rows is None:
            trace = walker.trace(args.addr[0])
            return [header, render.trace_record(trace)] + (
                [render.mapping_record(trace.mapping)] if trace.mapping else [])
        limit = _limit(args)
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
                                                tables_read=stats.tables)]


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
    failed: Optional[XenpteError] = None
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
    except XenpteError as err:  # e.g. the target vanished: what was found, then the error
        failed = err
    stats = walker.stats
    if as_json:
        extra = {"error": str(failed)} if failed is not None else {}
        write_lines(pending + [render.dumps(render.summary_record(
            counter, limited or bool(stats.budget_hit), stats.unreadable, interrupted,
            budget=stats.budget_hit, tables_read=stats.tables, **extra))])
    else:
        write_lines(pending + table.finish()
                    + [render.summary_text(counter, stats, limited, interrupted)])
    if interrupted:
        raise KeyboardInterrupt
    if failed is not None:
        raise failed
