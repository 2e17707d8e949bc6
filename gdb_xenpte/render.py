"""Turn walk results into text tables (tabulate) and JSON Lines records.

The only module that formats results. It takes the plain :mod:`gdb_xenpte.model` types and returns
strings or dicts; it never prints, so gdb's pager, a file or a test can take the output. Colours are
ANSI SGR sequences, emitted only when the caller says so (the gdb glue asks gdb's ``style enabled``,
which batch mode turns off).

JSON records follow ``gdb_xenpte/data/xen-pte-walk.schema.json``: a ``header``, then ``mapping``
records, then a ``summary``. Addresses and raw entries are ``"0x..."`` strings; sizes are integers.

Failure modes: none of its own; a missing optional value renders as ``-`` (text) or ``null`` (JSON).
"""

from __future__ import annotations

import functools
import json
import operator
import re
from typing import Any, Dict, Iterable, List, Mapping as TMapping, Optional, Sequence, Tuple

from tabulate import tabulate

from .model import ACCESS_KEYS, Effective, EntryRef, Mapping, Trace, Verdict

__all__ = [
    "FLAG_ORDER",
    "OWN_RIGHTS_REASONS",
    "RecordCounter",
    "Style",
    "anomaly_record",
    "bits_table",
    "check_summary_record",
    "check_text",
    "cr4_text",
    "dumps",
    "has_extra_fault",
    "header_lines",
    "hexa",
    "human_size",
    "mapping_json",
    "mapping_record",
    "mapping_table",
    "summary_record",
    "summary_text",
    "trace_record",
    "trace_text",
    "verdict_summary",
    "what_if_records",
    "what_if_text",
]

# The leaf's architectural flag names, in bit order, as the JSON schema spells them.
FLAG_ORDER = ("P", "RW", "US", "PWT", "PCD", "A", "D", "PS", "G", "PAT", "NX")
# Short column labels for verdict keys: k/u = guest kernel/user, r/w/x = access kind.
_SHORT = dict(zip(ACCESS_KEYS, ("kr", "kw", "kx", "ur", "uw", "ux")))
# Fault reasons that only restate a page's own rights (verdicts.py): a user access to a supervisor
# page, a write to a read-only page, a fetch from an NX page. Every mapping has some, so the
# "faulting" count (and xen-pte-walk --faults) looks past them to SMEP/SMAP/key/RSVD faults.
OWN_RIGHTS_REASONS = ("USER-on-SUPERVISOR-page", "RO", "RO+WP", "NX")


class Style:
    """ANSI colours, or nothing when ``enabled`` is False (batch mode, style off, no terminal)."""

    _CODES = {"bad": "31;1", "warn": "33", "user": "36", "kernel": "35", "dim": "2", "head": "1"}

    def __init__(self, enabled: bool = False):
        self.enabled = enabled

    def __call__(self, kind: str, text: str) -> str:
        if not self.enabled or not text:
            return text
        return f"\x1b[{self._CODES[kind]}m{text}\x1b[0m"


def hexa(value: Optional[int]) -> Optional[str]:
    """``"0x..."`` for an address or raw value, None stays None."""
    return None if value is None else f"{value:#x}"


@functools.lru_cache(maxsize=1024)  # a walk has few distinct sizes; called twice per row
def human_size(n: int) -> str:
    """Bytes as ``4K``/``2M``/``1G``/``12K`` (exact multiples only, else bytes)."""
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n}B"


def verdict_summary(verdicts: TMapping[str, Verdict]) -> str:
    """One short text for a mapping's verdicts: ``ok`` or the faulting kinds, e.g. ``kx:SMEP``."""
    if not verdicts:
        return "-"
    faults = [f"{_SHORT[k]}:{','.join(verdicts[k].reasons)}"
              for k in ACCESS_KEYS if k in verdicts and not verdicts[k].ok]
    return " ".join(faults) if faults else "ok"


def has_extra_fault(m: Mapping) -> bool:
    """Some access to ``m`` faults for a reason other than the page's own rights."""
    return _extra_fault(m.verdicts)


def _extra_fault(verdicts: TMapping[str, Verdict]) -> bool:
    return any(r not in OWN_RIGHTS_REASONS for v in verdicts.values() for r in v.reasons)


def _rights(effective: Effective, style: Style) -> str:
    text = effective.rwx()
    if effective.write and effective.exec:
        return style("bad", text)
    return style("user" if effective.user else "kernel", text)


def _va_range(m: Mapping) -> str:
    return "%#018x-%#018x" % (m.va, m.va + m.size - 1)  # %: faster than an f-string, per row


_KIND_TEXT = {"rsvd": "(#PF RSVD)", "unreadable": "(table unreadable)",
              "not-in-dump": "(table not in dump)"}


def _pa_range(m: Mapping) -> str:
    kind = getattr(m, "kind", "page")
    if kind != "page":
        return _KIND_TEXT.get(kind, f"({kind})")
    if m.pa is None:
        return "not in source"
    if m.count > 1 and m.size != m.page_size:
        return f"{m.pa:#x}-{m.pa + m.size - 1:#x}"
    return hex(m.pa)


class _ByIdentity:
    """Memoise ``fn(obj)`` by the object's identity, holding the object so its id stays unique.

    The walker hands every mapping with equal attributes the same verdicts dict (its attribute
    cache), so a walk of 65,000 records has a handful of distinct ones: the texts are made once.
    """

    def __init__(self, fn):
        self.fn = fn
        self.memo: Dict[int, Tuple[Any, Any]] = {}

    def __call__(self, obj):
        hit = self.memo.get(id(obj))
        if hit is None or hit[0] is not obj:
            if len(self.memo) >= 4096:
                self.memo.clear()  # hostile walks: every dict distinct; stay small
            hit = self.memo[id(obj)] = (obj, self.fn(obj))
        return hit[1]


# Shared by every record: json.dumps only reads the dict it is given.
_VERDICT_TEXTS = _ByIdentity(lambda verdicts: _verdict_texts(verdicts))
# A mapping's flag names in FLAG_ORDER; records share the walker's flag sets.
_FLAG_NAMES = _ByIdentity(lambda flags: tuple(f for f in FLAG_ORDER if f in flags))


def mapping_table(mappings: Iterable[Mapping], style: Style = Style()) -> List[str]:
    """Return the lines of a table of mappings (header first), one row per (coalesced) mapping.

    Columns: VA range, PA (range), size, page size, effective rights, pkey, Xen bits (or the Xen
    area that owns the mapping), verdicts.
    """
    rows = []
    # Records share their Effective and verdicts objects (the walker's attribute cache): make
    # each distinct cell once.
    rights = _ByIdentity(lambda effective: _rights(effective, style))
    verdict_cell = _ByIdentity(lambda verdicts: _verdict_cell(verdicts, style))
    for m in mappings:
        xen = " ".join(m.xen_bits) or _xen_owner(m)
        rows.append([
            _va_range(m), _pa_range(m), human_size(m.size),
            human_size(m.page_size) if getattr(m, "kind", "page") == "page" else "-",
            rights(m.effective), "-" if m.pkey is None else m.pkey,
            style("warn", xen) if m.xen_bits else xen, verdict_cell(m.verdicts),
        ])
    head = ["VA range", "PA", "size", "page", "rights", "pkey", "Xen bits", "verdicts"]
    return _simple_table(rows, head)


def _verdict_cell(verdicts: TMapping[str, Verdict], style: Style) -> str:
    text = verdict_summary(verdicts)
    return style("bad", text) if text not in ("ok", "-") else text


def _xen_owner(m: Mapping) -> str:
    """The Xen bits cell of a mapping without Xen bits: who owns it when Xen does (its L4 slot),
    so a Xen area's supervisor-only rows do not read as the guest's own (the label is in notes)."""
    if not getattr(m, "xen_owned", False):
        return "-"
    top = m.entries[0] if m.entries else None
    if top is not None and top.level == "pml4":
        return f"Xen L4[{top.index}]"
    return "Xen's area"


_SGR = re.compile(r"\x1b\[[0-9;]*m")


def _simple_table(rows: List[List[Any]], head: List[str]) -> List[str]:
    """The lines ``tabulate(rows, head, tablefmt="simple", disable_numparse=True)`` gives for
    single-line ASCII cells (stripped, left-aligned, columns at least header + 2 wide, ANSI colours
    not counted, trailing blanks stripped), written directly: tabulate types every cell, ~60 us a
    row, which made a walk with Linux's 65,536 espfix aliases spend seconds in the table alone.
    """
    # Cells are made column by column (a C-level map over each column, not a list per row).
    cols = [list(map(str.strip, map(str, col))) for col in zip(*rows)] or [[] for _ in head]
    cells = list(zip(*cols))
    if not any("\x1b" in "".join(col) for col in cols):
        widths = [max(len(h) + 2, max(map(len, col), default=0)) for h, col in zip(head, cols)]
        out = ["  ".join(map(str.ljust, head, widths)).rstrip(),
               "  ".join("-" * w for w in widths)]
        # One %-format per row ("%-Ns" is ljust(N)): a third cheaper than joining ljust cells.
        line = "  ".join("%%-%ds" % w for w in widths)
        out += [(line % row).rstrip() for row in cells]
        return out
    seen = [[len(_SGR.sub("", c)) for c in row] for row in cells]
    widths = [max(len(h) + 2, *col) for h, col in zip(head, zip(*seen))]
    out = ["  ".join(map(str.ljust, head, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    for row, lens in zip(cells, seen):
        # ljust would count the colour codes: pad by visible width instead.
        out.append("  ".join([c + " " * (w - n) for c, n, w in zip(row, lens, widths)]).rstrip())
    return out


def trace_text(trace: Trace, style: Style = Style()) -> List[str]:
    """Return the lines of a single-address trace: one block per level, then the outcome."""
    lines = [style("head", f"VA {trace.va:#x}")]
    for s in trace.steps:
        lines.append(f"  {s.level}[{s.index}] at {s.entry_pa:#x} (table {s.table_pa:#x}) = "
                     f"{s.raw:#018x}   effective so far: {s.effective.rwx()}")
        rows = [[name, hex(value) if name == "frame" or value > 9 else value, meaning]
                for name, value, meaning in s.bits]
        lines += ["      " + ln for ln in tabulate(rows, tablefmt="plain",
                                                     disable_numparse=True).splitlines()]
        lines.append(f"      -> {s.rule}")
    m = trace.mapping
    if m is None:
        lines.append(style("bad", f"  stop: {trace.stop}"))
        return lines
    pa = "not in source" if m.pa is None else f"{m.pa + (trace.va - m.va):#x}"
    lines.append(f"  maps {human_size(m.page_size)} page: VA {trace.va:#x} -> PA {pa}, "
                 f"{m.effective.rwx()}, pkey {'-' if m.pkey is None else m.pkey}, "
                 f"memtype {m.memtype}")
    if m.xen_bits:
        lines.append("  Xen bits: " + style("warn", " ".join(m.xen_bits)))
    for r in m.rsvd:
        lines.append("  " + style("bad", "reserved: " + r))
    for k in ACCESS_KEYS:
        if k in m.verdicts:
            v = str(m.verdicts[k])
            lines.append(f"  {k:<13} {style('bad', v) if v != 'ok' else v}")
    lines += [f"  note: {n}" for n in m.notes]
    return lines


def _verdict_texts(verdicts: TMapping[str, Verdict]) -> Dict[str, str]:
    return {k: str(verdicts[k]) for k in ACCESS_KEYS if k in verdicts}


def _entry_record(e: EntryRef) -> Dict[str, Any]:
    return {"level": e.level, "index": e.index, "table_pa": hex(e.table_pa), "raw": hex(e.raw)}


def mapping_record(m: Mapping) -> Dict[str, Any]:
    """Return the ``mapping`` record of one (coalesced) mapping."""
    return {
        "type": "mapping", "kind": getattr(m, "kind", "page"), "va": hexa(m.va),
        "pa": hexa(m.pa), "size": m.size,
        "page_size": m.page_size, "level": m.level, "count": m.count,
        "entries": [_entry_record(e) for e in m.entries],
        "flags": list(_FLAG_NAMES(m.flags)),
        "effective": {"user": m.effective.user, "write": m.effective.write,
                      "exec": m.effective.exec},
        "pkey": m.pkey, "xen_bits": list(m.xen_bits), "rsvd": list(m.rsvd),
        "disallowed": list(getattr(m, "disallowed", ())),
        "memtype": m.memtype,
        "verdicts": _VERDICT_TEXTS(m.verdicts),
        "notes": list(m.notes),
    }


def mapping_json(m: Mapping) -> str:
    """``dumps(mapping_record(m))``, the same bytes, made from cached JSON fragments.

    The hot path of ``--json``: the json encoder was most of a record's cost, and most of a record
    is shared with its neighbours (the walker hands equal mappings the same flags, rights, verdicts,
    Xen bits and path entries), so those parts are encoded once.
    """
    entries = ",".join([_entry_json(e) for e in m.entries])
    return ('{"type":"mapping","kind":%s,"va":%s,"pa":%s,"size":%d,"page_size":%d,"level":%s,'
            '"count":%d,"entries":[%s],%s}' % (
                _ENCODER.encode(getattr(m, "kind", "page")), _ENCODER.encode(hexa(m.va)),
                _ENCODER.encode(hexa(m.pa)), m.size, m.page_size, _ENCODER.encode(m.level),
                m.count, entries, _tail_json(m)))


# Path entries are shared objects (the walker's context path, its leaf-ref cache).
_entry_json = _ByIdentity(lambda e: _ENCODER.encode(_entry_record(e)))

_TAIL_FIELDS = ("flags", "effective", "pkey", "xen_bits", "rsvd", "disallowed", "memtype",
                "verdicts", "notes")
_tail_memo: Dict[Tuple[int, ...], Tuple[Tuple[Any, ...], str]] = {}


def _tail_json(m: Mapping) -> str:
    """The record's fields after ``entries``, encoded once per distinct set of objects."""
    objs = (m.flags, m.effective, m.pkey, m.xen_bits, m.rsvd, getattr(m, "disallowed", ()),
            m.memtype, m.verdicts, m.notes)
    key = tuple(map(id, objs))
    hit = _tail_memo.get(key)
    if hit is not None and all(map(operator.is_, hit[0], objs)):
        return hit[1]
    rec = mapping_record(m)
    text = _ENCODER.encode({k: rec[k] for k in _TAIL_FIELDS})[1:-1]
    if len(_tail_memo) >= 4096:
        _tail_memo.clear()  # hostile walks: every record distinct; stay small
    _tail_memo[key] = (objs, text)  # holding the objects keeps their ids unique
    return text


class RecordCounter:
    """Counts what a walk emitted, for the ``summary`` record."""

    def __init__(self):
        self.mappings = 0
        self.pages = 0
        self.bytes = 0
        self.faulting = 0
        self._extra = _ByIdentity(_extra_fault)

    def add(self, m: Mapping) -> None:
        self.mappings += 1
        if getattr(m, "kind", "page") == "page":  # RSVD/unreadable records map nothing
            self.pages += m.count
            self.bytes += m.size
        self.faulting += self._extra(m.verdicts)


def summary_record(counter: RecordCounter, budget_hit: bool,
                   unreadable: Sequence[Tuple[int, str]] = (), interrupted: bool = False,
                   **extra: Any) -> Dict[str, Any]:
    """Return the ``summary`` record.

    :param unreadable: ``(physical address, reason)`` of tables the walk could not read.
    :param budget_hit: True when ``--limit`` stopped the walk early.
    """
    rec = {
        "type": "summary",
        "counts": {"mappings": counter.mappings, "pages": counter.pages,
                   "bytes": counter.bytes, "faulting": counter.faulting},
        "budget_hit": bool(budget_hit), "interrupted": bool(interrupted),
        "unreadable": [{"pa": hexa(pa), "reason": why} for pa, why in unreadable],
    }
    rec.update(extra)
    return rec


def header_lines(header: Dict[str, Any]) -> List[str]:
    """The text form of a header record: one line of registers and source, then its notes."""
    xen = header.get("xen")
    xen_text = f", Xen {xen['version']}{' debug' if xen['debug'] else ''}" if xen else ""
    cr4 = header["effective_cr4"]
    if header["cr4"] != cr4:
        cr4 = f"{cr4} (guest view {header['cr4']})"
    return ([f"{header['mode']} paging, CR3 {header['cr3']}, CR4 {cr4}, domain "
             f"{header['domain']}{xen_text}; {header['source']}"]
            + [f"note: {n}" for n in header["notes"]])


def bits_table(bits: Sequence[Tuple[str, int, str]], style: Style = Style()) -> List[str]:
    """Lines of a ``name value meaning`` table for one entry's fields."""
    rows = [[style("warn", name) if name.startswith(("_PAGE", "PKEY", "XEN", "RSVD")) else name,
             f"{value:#x}" if name == "frame" or value > 9 else value, meaning]
            for name, value, meaning in bits]
    return ["  " + ln for ln in tabulate(rows, headers=["field", "value", "meaning"],
                                         tablefmt="simple", disable_numparse=True).splitlines()]


def cr4_text(policy: Any, cr4: int, guest_view: bool, effective: Any, visible: Any, prot: Any,
             context: str, style: Style = Style()) -> List[str]:
    """Lines explaining a domain's effective CR4 (``xen.Cr4``), its guest view and the kernel's
    protections (``xen.KernelProtections``).

    :param cr4: the CR4 given or read; ``guest_view``: it is the guest's own CR4 (else a CPU's,
        from which a PV context's CR4 is derived).
    """
    v = policy.version
    sm = lambda x: "hvm" if x == "hvm" else ("on" if x else "off")
    lines = [style("head", f"Xen {v[0]}.{v[1]}{'.' + str(v[2]) if v[2] else ''} "
                           f"({'debug' if policy.debug else 'release'} build), {policy.domain} "
                           f"domain, smep={sm(policy.smep)} smap={sm(policy.smap)}"),
             f"guest CR4 {cr4:#x}" if guest_view or not policy.is_pv else
             f"CPU CR4 {cr4:#x} (Xen's own or the PV context's: the guest's is derived from it)",
             f"effective CR4 {effective.value:#x} (what the hardware runs while the guest "
             f"{context if context != 'xen' else 'is served by Xen'} runs):"]
    lines += ["  " + ln for ln in effective.explanation]
    if visible is not None:
        lines.append(f"guest-visible CR4 {visible.value:#x} (what the guest reads back):")
        lines += ["  " + ln for ln in visible.explanation]
    yes = lambda b: style("warn", "applies") if b else "does not apply"
    lines.append(f"guest kernel: CPL {prot.cpl}; SMEP {yes(prot.smep)}, SMAP {yes(prot.smap)}, "
                 f"PKE {yes(prot.pke)}, PKS {yes(prot.pks)}")
    lines += ["  " + n for n in prot.notes]
    return lines


def anomaly_record(key: str, finding: Any) -> Dict[str, Any]:
    """One ``anomaly`` record of ``xen-pte-check --json``."""
    m = finding.mapping
    return {"type": "anomaly", "category": key, "va": hexa(m.va), "size": m.size,
            "pa": hexa(m.pa), "level": m.level, "rights": m.effective.rwx(),
            "detail": finding.detail,
            "verdicts": {k: str(m.verdicts[k]) for k in ACCESS_KEYS if k in m.verdicts}}


def check_summary_record(groups: Sequence[Tuple[str, str, Sequence[Any]]], stats: Any,
                         what_ifs: Sequence[Any] = ()) -> Dict[str, Any]:
    """The closing record of ``xen-pte-check --json``: findings per category, what-if totals."""
    return {"type": "summary", "counts": {key: len(found) for key, _t, found in groups},
            "budget_hit": bool(getattr(stats, "budget_hit", None)),
            "unreadable": [{"pa": hexa(pa), "reason": why}
                           for pa, why in getattr(stats, "unreadable", ())],
            "what_if": {r.scenario: _what_if_counts(r) for r in what_ifs}}


def _what_if_counts(r: Any) -> Dict[str, int]:
    return {"breaks": sum(c.count for c in r.broken), "fixes": sum(c.count for c in r.fixed),
            "changed": sum(c.count for c in r.changes), "ranges": len(r.changes),
            "mappings_seen": r.mappings_seen}


def what_if_records(r: Any) -> List[Dict[str, Any]]:
    """A ``what-if`` record (headline, description, notes, totals) and one ``change`` record per
    changed range of a :class:`~gdb_xenpte.whatif.WhatIf`."""
    recs: List[Dict[str, Any]] = [{
        "type": "what-if", "scenario": r.scenario, "headline": r.headline(),
        "description": r.description, "notes": list(r.notes), **_what_if_counts(r)}]
    for c in r.changes:
        recs.append({"type": "change", "scenario": r.scenario, "va": hexa(c.va), "size": c.size,
                     "count": c.count, "level": c.level, "breaks": c.breaks, "fixes": c.fixes,
                     "what": list(c.what), "before": c.before, "after": c.after})
    return recs


def what_if_text(r: Any, examples: int, style: Style = Style()) -> List[str]:
    """Lines of one what-if comparison: the headline first, then the changed ranges."""
    lines = [style("head", f"what-if {r.headline()}"), f"  scenario: {r.description}"]
    lines += [f"  note: {n}" for n in r.notes]
    rows = [[f"{c.va:#018x}-{c.va + c.size - 1:#018x}", human_size(c.size),
             style("bad", "breaks") if c.breaks else "fixes" if c.fixes else "changes",
             "; ".join(c.what)] for c in r.changes[:examples]]
    if rows:
        lines += ["  " + ln for ln in tabulate(rows, headers=["VA range", "size", "effect",
                                                               "before -> after"],
                                               tablefmt="simple", disable_numparse=True)
                  .splitlines()]
    if len(r.changes) > examples:
        lines.append(f"  ... and {len(r.changes) - examples} more ranges")
    return lines


def check_text(groups: Sequence[Tuple[str, str, Sequence[Any]]], examples: int,
               style: Style = Style()) -> List[str]:
    """Lines of the anomaly report: per category a count, then up to ``examples`` mappings."""
    if not groups:
        return ["no anomalies found."]
    lines = []
    for key, title, found in groups:
        pages = sum(f.mapping.count for f in found)
        lines.append(style("bad", f"[{key}] {title}: {len(found)} ranges, {pages} pages"))
        rows = [[_va_range(f.mapping), human_size(f.mapping.size), f.mapping.effective.rwx(),
                 f.detail] for f in found[:examples]]
        if rows:
            lines += ["  " + ln for ln in tabulate(
                rows, headers=["VA range", "size", "rights", "detail"], tablefmt="simple",
                disable_numparse=True).splitlines()]
        if len(found) > examples:
            lines.append(f"  ... and {len(found) - examples} more")
    return lines


def trace_record(trace: Trace) -> Dict[str, Any]:
    """Return the ``trace`` record of a single-address walk: every level visited."""
    return {
        "type": "trace", "va": hexa(trace.va), "stop": trace.stop,
        "steps": [{"level": s.level, "index": s.index, "table_pa": hexa(s.table_pa),
                   "entry_pa": hexa(s.entry_pa), "raw": hexa(s.raw),
                   "bits": [{"name": n, "value": v, "meaning": t} for n, v, t in s.bits],
                   "effective": {"user": s.effective.user, "write": s.effective.write,
                                 "exec": s.effective.exec},
                   "rule": s.rule} for s in trace.steps],
    }


def summary_text(counter: RecordCounter, stats: Any, limited: bool, interrupted: bool) -> str:
    """The closing line of a text walk: counts, and why it stopped early if it did."""
    parts = [f"{counter.mappings} mappings", f"{counter.pages} pages",
             f"{human_size(counter.bytes) if counter.bytes else '0B'} mapped",
             f"{counter.faulting} with SMEP/SMAP/key/RSVD faults"]
    if getattr(stats, "unreadable", None):
        parts.append(f"{len(stats.unreadable)} tables unreadable")
    if limited:
        parts.append("stopped at --limit")
    if getattr(stats, "budget_hit", None):
        parts.append(f"stopped: {stats.budget_hit}")
    if interrupted:
        parts.append("interrupted")
    return "; ".join(parts) + "."


# json.dumps with any option builds a new encoder per call; a walk dumps one record per mapping.
# Records are acyclic (plain dicts, lists and strings): the cycle check would only cost (~10 %).
_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)


def dumps(record: Dict[str, Any]) -> str:
    """One JSON Lines line (no trailing newline), keys in insertion order."""
    return _ENCODER.encode(record)
