"""``xen-domains`` output: the host's pCPUs and every domain's vCPUs, as text or JSON records.

Text: a header (source, Xen version, crashing pCPU and how that is known), one row per pCPU (CR3,
CR4 from the crash notes) and one row per vCPU (domain, kind, state, pCPU, CR3, user CR3, the CR4
the guest sees and the hardware CR4 where observed). JSON: one ``{"type": "pcpu", ...}`` record
per pCPU, one ``{"type": "vcpu", ...}`` per vCPU
(:meth:`gdb_xenpte.xen_host.HostVcpu.record`), then ``{"type": "domain", ...}`` per domain,
after one ``{"type": "host", ...}`` record (source, layout, Xen's own CR4, crashing pCPU).

Failure modes: none of its own; an unknown value renders as ``-`` (text) or ``null`` (JSON).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from .common import hexa

__all__ = ["domain_records", "domains_text", "p2m_records", "p2m_text"]


def _h(value: Optional[int]) -> str:
    return "-" if value is None else f"{value:#x}"


def _table(rows: List[List[str]], head: List[str]) -> List[str]:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return [line(head), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]


def domain_records(pcpus: Sequence, domains: Sequence, crashing: Optional[int],
                   crashing_why: str, host: Optional[Dict[str, Any]] = None,
                   tables: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """The JSON records: a ``host`` record (``host`` fields plus the crashing pCPU), pCPUs
    (``tables``: whose page tables each pCPU's CR3 holds), vCPUs, then domains."""
    tables = list(tables) + [""] * (len(pcpus) - len(tables))
    out: List[Dict[str, Any]] = [{"type": "host", **(host or {}), "crashed_pcpu": crashing,
                                  "crashed_how": crashing_why or None}]
    for r, t in zip(pcpus, tables):
        out.append({"type": "pcpu", "pcpu": r.index, "online": r.online, "cr0": hexa(r.cr0),
                    "cr3": hexa(r.cr3), "cr3_tables": t or None, "cr4": hexa(r.cr4),
                    "cs": hexa(r.cs), "rip": hexa(r.rip),
                    "crashed": r.index == crashing if crashing is not None else None,
                    "origin": r.origin})
    for d in domains:
        out += [v.record() for v in d.vcpus]
    for d in domains:
        out.append({"type": "domain", "domid": d.domid, "kind": d.kind, "paused": d.paused,
                    "dying": d.dying, "max_vcpus": d.max_vcpus, "vcpus": len(d.vcpus),
                    "struct_domain": hexa(d.address), "notes": list(d.notes)})
    return out


def domains_text(source_line: str, layout_name: str, pcpus: Sequence, domains: Sequence,
                 crashing: Optional[int], crashing_why: str, notes: Sequence[str] = (),
                 tables: Sequence[str] = (), pcpu_from: str = "Xen crash notes") -> List[str]:
    """The ``xen-domains`` text: header, pCPU table, vCPU table, notes.

    :param pcpu_from: where the pCPUs' registers come from (a live host: the CPUs' own; then
        no "crashed" line unless a crashing pCPU is known).
    """
    tables = list(tables) + [""] * (len(pcpus) - len(tables))
    out = [f"source: {source_line}", f"layout: {layout_name}"]
    if crashing is not None or pcpu_from == "Xen crash notes":
        out.append("crashed: " + (f"pCPU {crashing} ({crashing_why})" if crashing is not None
                                  else "unknown"))
    if pcpus:
        rows = [[str(r.index), "yes" if r.online else "no", _h(r.cr3), t or "-", _h(r.cr4),
                 _h(r.cs), "*" if r.index == crashing else ""] for r, t in zip(pcpus, tables)]
        out += ["", f"pCPUs ({pcpu_from}):"] + _table(rows, ["pcpu", "saved", "cr3",
                                                                 "tables", "cr4", "cs",
                                                                 "crashed"])
    rows = []
    for d in domains:
        if not d.vcpus:
            rows.append([str(d.domid), "-", d.kind or "?", "paused" if d.paused else "-", "-",
                         "-", "-", "-", "-"])
        for v in d.vcpus:
            rows.append([str(v.domid), str(v.vcpu), v.kind, v.state,
                         "-" if v.pcpu is None else str(v.pcpu), _h(v.cr3), _h(v.user_cr3),
                         _h(v.cr4), _h(v.hw_cr4)])
    out += ["", "vCPUs (as Xen recorded them):"] + _table(
        rows, ["domid", "vcpu", "kind", "state", "pcpu", "cr3", "user_cr3", "guest_cr4",
               "hw_cr4"])
    out += [f"note: {n}" for n in notes]
    if any(v.hw_cr4 is not None for d in domains for v in d.vcpus):
        out.append("note: hw_cr4 is observed (the CR4 of the pCPU running that vCPU or holding "
                   "its state, as " + ("it saved it in its crash notes" if pcpu_from ==
                                       "Xen crash notes" else "read from it") +
                   "); elsewhere the walk derives it from Xen's policy")
    return out


def p2m_text(pt) -> List[str]:
    """The p2m half of ``xen-pte-p2m``: each guest table frame and the data frame as the host
    p2m backs them (:class:`gdb_xenpte.xen_host.P2mTrace`), then the combined rights."""
    out = ["host p2m (guest frame -> machine frame, the p2m's rights and type):"]
    for level, e in pt.tables:
        out.append(f"  {level} table  " + _p2m_line(e))
    if pt.data is None:
        out.append("  data: the guest's walk stopped: no data frame")
        return out
    out.append(f"  data GPA {pt.gpa:#x}  " + _p2m_line(pt.data))
    out.append(f"combined: {pt.rwx()} (guest tables AND p2m; the p2m binds every access, "
               "kernel or user)")
    return out


def _p2m_line(e) -> str:
    if e.mfn is None:
        return f"GFN {e.gfn:#x} -> not mapped ({e.why})"
    return (f"GFN {e.gfn:#x} -> MFN {e.mfn:#x}  {e.rwx()}  {e.type_name or '?'}  "
            f"({e.fmt} L{e.level} entry {e.raw:#x})")


def p2m_records(pt) -> List[Dict[str, Any]]:
    """JSON: one ``p2m`` record per guest table frame (``role``: the level), one for the data
    frame, then ``{"type": "p2m_combined", "rights"}``."""
    out = [{**e.record(), "role": f"{level} table"} for level, e in pt.tables]
    if pt.data is not None:
        out.append({**pt.data.record(), "role": "data", "gpa": hexa(pt.gpa)})
        out.append({"type": "p2m_combined", "va": hexa(pt.va), "rights": pt.rwx()})
    return out
