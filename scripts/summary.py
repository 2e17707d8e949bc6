"""``xen-pte-dump --summary``: tabulate tables per target and for the whole fleet.

Per target (per vCPU run), one table of counts: ``what``, ``name``, ``records``, ``pages``
(a record is one coalesced mapping or one anomaly; pages count 4 KiB, 2 MiB ... leaves alike).
Then an overview with one row per run and a ``fleet total`` row, and the fleet-wide table.

Failure modes: none; runs that failed show their error instead of counts.
"""

from __future__ import annotations

from typing import List, Sequence

from tabulate import tabulate

from .records import Tally

__all__ = ["OVERVIEW", "detail_table", "render_summary"]

# Row order of the detail tables; within a group, names sort.
WHAT_ORDER = ("mappings", "faulting", "fault class", "kernel SMEP/SMAP", "verdict", "W+X", "Xen bit", "pkey",
              "disallowed", "anomaly", "what-if", "record")
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
    return str(run.vcpu) + (f" (+{','.join(map(str, shared))})" if shared else "")


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


def render_summary(results: Sequence) -> List[str]:
    """All summary lines for ``results`` (:class:`~scripts.batch.TargetResult`, in order)."""
    lines: List[str] = []
    fleet = Tally()
    overview = []
    for res in results:
        for run in res.runs:
            title = f"{res.target.label} vCPU {_vcpu_text(run)}"
            if run.error:
                lines += [f"== {title}: FAILED: {run.error}", ""]
                overview.append([res.target.label, _vcpu_text(run), "FAILED"]
                                + ["-"] * len(OVERVIEW))
                continue
            tally = run.tally or Tally()
            fleet.merge(tally)
            extra = []
            if tally.unreadable:
                extra.append(f"{tally.unreadable} tables unreadable")
            if tally.budget_hit:
                extra.append("walk stopped early (--limit or budget)")
            lines += [f"== {title}" + (f" ({'; '.join(extra)})" if extra else "")]
            lines += detail_table(tally) + [""]
            overview.append([res.target.label, _vcpu_text(run), "ok"]
                            + _overview_counts(tally))
        if res.skipped:
            lines += [f"== {res.target.label}: not walked: " + ", ".join(
                f"vCPU {index} ({why})" for index, why in res.skipped), ""]
    failed = sum(1 for row in overview if row[2] == "FAILED")
    overview.append(["fleet total", f"{len(overview)} runs",
                     f"{failed} failed" if failed else "ok"]
                    + _overview_counts(fleet))
    lines += ["== fleet"]
    heads = ["target", "vCPU", "status"] + [h for h, *_rest in OVERVIEW]
    lines += tabulate(overview, headers=heads,
                      tablefmt="simple", disable_numparse=True).splitlines()
    lines += ["", "== fleet total"] + detail_table(fleet)
    return lines
