"""``xen-pte-dump --summary``: tabulate tables per target and for the whole fleet, and a triage.

Per target (per vCPU run), one table of counts: ``what``, ``name``, ``records``, ``pages``
(a record is one coalesced mapping or one anomaly; pages count 4 KiB, 2 MiB ... leaves alike).
Then an overview with one row per run and a ``fleet total`` row, the fleet-wide table, and the
triage: targets grouped by what they show (W+X, kernel SMEP/SMAP, each xen-pte-check category,
each what-if scenario that breaks something, ...), naming the targets in each group — the answer
to "which of these dumps show the same thing". :func:`summary_json` is all of it as JSON.
One target's summary is its table once, not again as the fleet's.

Failure modes: none; runs that failed show their error instead of counts.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from tabulate import tabulate

from .cli import one_line
from .records import Tally

__all__ = ["OVERVIEW", "detail_table", "render_summary", "summary_json", "triage",
           "triage_table"]

# Row order of the detail tables; within a group, names sort.
WHAT_ORDER = ("mappings", "faulting", "fault class", "kernel SMEP/SMAP", "verdict", "W+X",
              "Xen bit", "pkey", "disallowed", "anomaly", "what-if", "record")
# Overview columns: (heading, what, names left out, name suffix) — records counted under
# ``what``; a mapping with several Xen bits counts once per bit. Key 0 is every page's default,
# so "pkeys" counts the others; "what-if breaks" adds up the change ranges every scenario breaks.
OVERVIEW = (("mappings", "mappings", (), ""), ("faulting", "faulting", (), ""),
            ("kernel SMEP/SMAP", "kernel SMEP/SMAP", (), ""), ("W+X", "W+X", (), ""),
            ("Xen bits", "Xen bit", (), ""), ("pkeys", "pkey", ("0",), ""),
            ("disallowed", "disallowed", (), ""), ("anomalies", "anomaly", (), ""),
            ("what-if breaks", "what-if", (), ": breaks"))


def _vcpu_text(run) -> str:
    if run.vcpu is None:
        return "-"
    shared = [v for v in run.vcpus if v != run.vcpu]
    name = str(run.vcpu) if run.domid is None else f"d{run.domid}v{run.vcpu}"
    return name + (f" (+{','.join(map(str, shared))})" if shared else "")


def _overview_counts(tally: Tally) -> List[int]:
    return [tally.get(what, but=but, suffix=end) for _h, what, but, end in OVERVIEW]


def detail_table(tally: Tally) -> List[str]:
    """Lines of one tally's table."""
    rank = {w: i for i, w in enumerate(WHAT_ORDER)}
    rows = [[what, name, n, pages] for (what, name), (n, pages)
            in sorted(tally.counts.items(), key=lambda kv: (rank.get(kv[0][0], 99), kv[0]))]
    if not rows:
        return ["  (no records)"]
    return tabulate(rows, headers=["what", "name", "records", "pages"], tablefmt="simple",
                    disable_numparse=True).splitlines()


# Runs past this many: no per-run detail tables on the terminal (the overview has a row per run,
# --summary-json every run's counts).
DETAIL_MAX = 50
# Triage: how many target names a group's table cell shows (the JSON lists them all).
NAMES_SHOWN = 4


def _findings(tally: Tally) -> List[str]:
    """What one run shows, as triage group names (none: nothing worth a look)."""
    out = []
    for heading, what, but, end in OVERVIEW:
        if what in ("mappings", "anomaly", "what-if"):
            continue
        if tally.get(what, but=but, suffix=end):
            out.append(heading)
    for (what, name), (n, _pages) in sorted(tally.counts.items()):
        if what == "anomaly" and n:
            out.append(f"anomaly: {name}")
        elif what == "what-if" and name.endswith(": breaks") and n:
            out.append(f"what-if {name}")
    return out


def triage(results: Sequence) -> List[Tuple[str, List[str]]]:
    """Targets grouped by what they show: ``[(group, [target labels in order])]``.

    A target is in every group one of its runs shows (a finding of any vCPU is the target's);
    ``FAILED`` holds targets some run of which failed, ``nothing found`` those with neither.
    Groups come most common first.
    """
    groups: Dict[str, List[str]] = {}
    for res in results:
        found: List[str] = []
        for run in res.runs:
            names = ["FAILED"] if run.error else _findings(run.tally or Tally())
            found += [n for n in names if n not in found]
        for name in found or ["nothing found"]:
            groups.setdefault(name, []).append(res.target.label)
    return sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))


def triage_table(groups: List[Tuple[str, List[str]]], total: int) -> List[str]:
    """The triage as a tabulate table: group, how many targets, which."""
    rows = []
    for name, labels in groups:
        shown = ", ".join(one_line(lab) for lab in labels[:NAMES_SHOWN])
        if len(labels) > NAMES_SHOWN:
            shown += f", ... (+{len(labels) - NAMES_SHOWN} more)"
        rows.append([name, f"{len(labels)}/{total}", shown])
    return tabulate(rows, headers=["group", "targets", "which"], tablefmt="simple",
                    disable_numparse=True).splitlines()


def render_summary(results: Sequence) -> List[str]:
    """All summary lines for ``results`` (:class:`~scripts.batch.TargetResult`, in order).

    One run: its table once (the fleet would repeat it). Several: a table per run (up to
    :data:`DETAIL_MAX` runs), the overview with a ``fleet total`` row, the fleet-wide table
    and the triage.
    """
    lines: List[str] = []
    fleet = Tally()
    overview = []
    runs = sum(len(res.runs) for res in results)
    details = runs <= DETAIL_MAX
    for res in results:
        for run in res.runs:
            title = one_line(f"{res.target.label} "
                             f"{'vCPU ' if run.domid is None else ''}{_vcpu_text(run)}")
            if run.error:
                if details:
                    lines += [one_line(f"== {title}: FAILED: {run.error}"), ""]
                overview.append([one_line(res.target.label), _vcpu_text(run), "FAILED"]
                                + ["-"] * len(OVERVIEW))
                continue
            tally = run.tally or Tally()
            fleet.merge(tally)
            if details:
                lines += [f"== {title}" + _extra(tally)] + detail_table(tally) + [""]
            overview.append([one_line(res.target.label), _vcpu_text(run), "ok"]
                            + _overview_counts(tally))
        if res.skipped:
            lines += [one_line(f"== {res.target.label}: not walked: ") + ", ".join(
                f"{skip.label} ({skip.why})" for skip in res.skipped), ""]
    if not details:
        lines += [f"(per-run tables left out: {runs} runs; --summary-json FILE has every "
                  "run's counts)", ""]
    failed = sum(1 for row in overview if row[2] == "FAILED")
    single = runs == 1
    if not single:
        overview.append(["fleet total", f"{len(overview)} runs",
                         f"{failed} failed" if failed else "ok"]
                        + _overview_counts(fleet))
    lines += ["== fleet"]
    heads = ["target", "vCPU", "status"] + [h for h, *_rest in OVERVIEW]
    lines += tabulate(overview, headers=heads,
                      tablefmt="simple", disable_numparse=True).splitlines()
    if not single:
        lines += ["", "== fleet total" + _extra(fleet)] + detail_table(fleet)
        lines += ["", f"== triage: {len(results)} targets by what they show"]
        lines += triage_table(triage(results), len(results))
    return lines


def _extra(tally: Tally) -> str:
    extra = []
    if tally.unreadable:
        extra.append(f"{tally.unreadable} tables unreadable")
    if tally.budget_hit:
        extra.append("walk stopped early (--limit or budget)")
    return f" ({'; '.join(extra)})" if extra else ""


def summary_json(results: Sequence) -> dict:
    """The summary as one JSON document: every run's counts, the fleet's, and the triage."""
    fleet = Tally()
    runs = []
    for res in results:
        for run in res.runs:
            entry = {"target": res.target.label, "vcpu": run.vcpu, "vcpus": list(run.vcpus)}
            if run.domid is not None:
                entry["domid"] = run.domid
            if run.error:
                entry["error"] = run.error
            else:
                tally = run.tally or Tally()
                fleet.merge(tally)
                entry.update(overview=dict(zip((h for h, *_r in OVERVIEW),
                                               _overview_counts(tally))),
                             counts=_counts(tally), unreadable=tally.unreadable,
                             budget_hit=tally.budget_hit)
            runs.append(entry)
        for skip in res.skipped:
            runs.append({"target": res.target.label, "vcpu": skip.vcpu, "skipped": skip.why,
                         **({} if skip.domid is None else {"domid": skip.domid})})
    return {"type": "xen-pte-dump-summary", "targets": len(results),
            "failed": sum(1 for res in results if res.failed),
            "fleet": {"overview": dict(zip((h for h, *_r in OVERVIEW),
                                           _overview_counts(fleet))),
                      "counts": _counts(fleet)},
            "triage": [{"group": name, "count": len(labels), "targets": labels}
                       for name, labels in triage(results)],
            "runs": runs}


def _counts(tally: Tally) -> List[dict]:
    rank = {w: i for i, w in enumerate(WHAT_ORDER)}
    return [{"what": what, "name": name, "records": n, "pages": pages}
            for (what, name), (n, pages)
            in sorted(tally.counts.items(), key=lambda kv: (rank.get(kv[0][0], 99), kv[0]))]
