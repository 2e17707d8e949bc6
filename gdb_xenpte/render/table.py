"""Walk results as text: the mapping table, single-address traces, headers and summary lines.

Every function returns lines; none prints, so gdb's pager, a file or a test can take them.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, List, Sequence, Tuple

from tabulate import tabulate

from ..model import ACCESS_KEYS, Effective, Mapping, Trace
from .common import ByIdentity, Style, human_size
from .verdict_text import verdict_cell

__all__ = [
    "TableStream",
    "bits_table",
    "header_lines",
    "mapping_table",
    "repeat_text",
    "summary_text",
    "trace_text",
    "va_range",
]



def _rights(effective: Effective, style: Style) -> str:
    text = effective.rwx()
    if effective.write and effective.exec:
        return style("bad", text)
    return style("user" if effective.user else "kernel", text)



def _p2m_text(m: Mapping) -> str:
    """`` p2m R-X`` when a host p2m's rights are known and it denies what the guest allows."""
    p2m = getattr(m, "p2m", None)
    if p2m is None:
        return ""
    eff = m.effective
    if p2m.read and (p2m.write or not eff.write) and (p2m.exec or not eff.exec):
        return ""  # nothing more than the guest's own rights: no noise
    return f" p2m {p2m.rwx()}" + (f" {p2m.type_name}" if p2m.type_name else "")


def va_range(m: Mapping) -> str:
    """``0x...-0x...``: the first and last byte of a mapping's VA range, 16 hex digits each."""
    return "%#018x-%#018x" % (m.va, m.va + m.size - 1)  # %: faster than an f-string, per row



_KIND_TEXT = {"rsvd": "(#PF RSVD)", "unreadable": "(table unreadable)",
              "not-in-dump": "(table not in dump)"}



def _pa_range(m: Mapping) -> str:
    """The PA cell: a range only where the run's frames are contiguous, else the first frame and
    "scattered" (a coalesced run of 124K can be 31 frames from all over memory)."""
    kind = getattr(m, "kind", "page")
    if kind != "page":
        return _KIND_TEXT.get(kind, f"({kind})")
    if m.pa is None:
        return "not in source"
    if m.count > 1 and m.size != m.page_size:
        if not getattr(m, "pa_contiguous", True):
            return f"{m.pa:#x} scattered"
        return f"{m.pa:#x}-{m.pa + m.size - 1:#x}"
    return hex(m.pa)


# Areas a repeat record is known to fill, by canonical VA range (first, last byte).
_KNOWN_AREAS = (
    # Linux x86-64: ESPFIX_BASE_ADDR = ESPFIX_PGD_ENTRY (-2) << P4D_SHIFT (39), one P4D entry
    # (arch/x86/include/asm/pgtable_64_types.h, since Linux 3.16): per-CPU espfix stacks, one
    # page aliased every 64K.
    (0xFFFFFF0000000000, 0xFFFFFF7FFFFFFFFF, "Linux espfix area"),
)


def repeat_text(m: Mapping) -> str:
    """``"x65536 every 64K"`` for a repeat record (with the area it fills where known; a Xen
    area is named in the Xen bits column), else ``""``."""
    n = getattr(m, "repeat", 1)
    if n <= 1:
        return ""
    text = f"x{n} every {human_size(m.stride)}"
    last = m.va + (n - 1) * m.stride + m.size - 1
    area = next((name for lo, hi, name in _KNOWN_AREAS if lo <= m.va and last <= hi), None)
    return f"{text} ({area})" if area else text



class TableStream:
    """The mapping table, a few rows at a time, for output that starts while the walk goes on.

    Column widths come from the first ``first`` rows (and the headings); a later, wider cell
    widens its own row only. With no more than ``first`` rows the lines are exactly
    :func:`mapping_table`'s. Feed mappings to :meth:`add`, which returns the lines ready to print
    (none until the widths are known), then take the rest from :meth:`finish`.
    """

    def __init__(self, style: Style = Style(), first: int = 1000):
        self.style = style
        self.first = first
        self.rows: List[List[Any]] = []
        self.widths: List[int] = []
        self._cells = _row_maker(style)

    def add(self, m: Mapping) -> List[str]:
        row = self._cells(m)
        if not self.widths:
            self.rows.append(row)
            return self._start() if len(self.rows) >= self.first else []
        return _format_rows([row], self.widths)

    def finish(self) -> List[str]:
        """The lines not yet returned (the whole table when it had fewer than ``first`` rows)."""
        return self._start() if not self.widths else []

    def _start(self) -> List[str]:
        lines = _simple_table(self.rows, _HEAD)
        self.widths = _widths(self.rows, _HEAD) or [len(h) + 2 for h in _HEAD]
        self.rows = []
        return lines


_HEAD = ["VA range", "PA", "size", "page", "rights", "pkey", "Xen bits", "verdicts"]


def _row_maker(style: Style):
    # Records share their Effective and verdicts objects (the walker's attribute cache): make
    # each distinct cell once.
    rights = ByIdentity(lambda effective: _rights(effective, style))
    verdict_cells = ByIdentity(lambda verdicts: verdict_cell(verdicts, style))

    def cells(m: Mapping) -> List[Any]:
        xen = " ".join(m.xen_bits) or _xen_owner(m)
        return [
            va_range(m), _pa_range(m),
            human_size(m.size) + (" " + repeat_text(m) if getattr(m, "repeat", 1) > 1 else ""),
            human_size(m.page_size) if getattr(m, "kind", "page") == "page" else "-",
            rights(m.effective) + _p2m_text(m), "-" if m.pkey is None else m.pkey,
            style("warn", xen) if m.xen_bits else xen, verdict_cells(m.verdicts),
        ]
    return cells


def _widths(rows: List[List[Any]], head: List[str]) -> List[int]:
    """Column widths :func:`_simple_table` gives these rows (visible characters)."""
    if not rows:
        return []
    cols = [[_SGR.sub("", str(c).strip()) for c in col] for col in zip(*rows)]
    return [max(len(h) + 2, max(map(len, col), default=0)) for h, col in zip(head, cols)]


def _format_rows(rows: List[List[Any]], widths: List[int]) -> List[str]:
    out = []
    for row in rows:
        cells = [str(c).strip() for c in row]
        out.append("  ".join([c + " " * max(0, w - len(_SGR.sub("", c)))
                              for c, w in zip(cells, widths)]).rstrip())
    return out


def mapping_table(mappings: Iterable[Mapping], style: Style = Style()) -> List[str]:
    """Return the lines of a table of mappings (header first), one row per (coalesced) mapping.

    Columns: VA range, PA (range), size, page size, effective rights, pkey, Xen bits (or the Xen
    area that owns the mapping), verdicts. A repeat record is one row: its first copy, and in the
    size column how many copies and how far apart (:func:`repeat_text`).
    """
    cells = _row_maker(style)
    return _simple_table([cells(m) for m in mappings], _HEAD)



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



def summary_text(counter: Any, stats: Any, limited: bool, interrupted: bool) -> str:
    """The closing line of a text walk: counts, and why it stopped early if it did."""
    parts = [f"{counter.mappings} mappings", f"{counter.pages} pages",
             f"{human_size(counter.bytes) if counter.bytes else '0B'} mapped",
             f"{counter.faulting} faulting beyond the guest's own choices (imposed or "
             f"reserved bits)"]
    chosen = getattr(counter, "classes", {}).get("guest", 0)
    if chosen:
        parts.append(f"{chosen} where the guest's own SMEP/SMAP/keys fault an access")
    if getattr(stats, "unreadable", None):
        parts.append(f"{len(stats.unreadable)} tables unreadable")
    if limited:
        parts.append("stopped at --limit")
    if getattr(stats, "budget_hit", None):
        parts.append(f"stopped: {stats.budget_hit}")
    if interrupted:
        parts.append("interrupted")
    return "; ".join(parts) + "."
