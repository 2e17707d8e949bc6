"""Verdicts as short texts: the table's verdicts column and the "faulting" classification."""

from __future__ import annotations

from typing import Mapping as TMapping

from ..model import ACCESS_KEYS, Mapping, Verdict
from .common import Style

__all__ = [
    "OWN_RIGHTS_REASONS",
    "SHORT",
    "extra_fault",
    "has_extra_fault",
    "verdict_cell",
    "verdict_summary",
]


# Short column labels for verdict keys: k/u = guest kernel/user, r/w/x = access kind.
SHORT = dict(zip(ACCESS_KEYS, ("kr", "kw", "kx", "ur", "uw", "ux")))


# Fault reasons that only restate a page's own rights (verdicts.py): a user access to a supervisor
# page, a write to a read-only page, a fetch from an NX page. Every mapping has some, so the
# "faulting" count (and xen-pte-walk --faults) looks past them to SMEP/SMAP/key/RSVD faults.
OWN_RIGHTS_REASONS = ("USER-on-SUPERVISOR-page", "RO", "RO+WP", "NX")



def verdict_summary(verdicts: TMapping[str, Verdict]) -> str:
    """One short text for a mapping's verdicts: ``ok`` or the faulting kinds, e.g. ``kx:SMEP``."""
    if not verdicts:
        return "-"
    faults = [f"{SHORT[k]}:{','.join(verdicts[k].reasons)}"
              for k in ACCESS_KEYS if k in verdicts and not verdicts[k].ok]
    return " ".join(faults) if faults else "ok"



def has_extra_fault(m: Mapping) -> bool:
    """Some access to ``m`` faults for a reason other than the page's own rights."""
    return extra_fault(m.verdicts)



def extra_fault(verdicts: TMapping[str, Verdict]) -> bool:
    """Some verdict faults for a reason other than the page's own rights."""
    return any(r not in OWN_RIGHTS_REASONS for v in verdicts.values() for r in v.reasons)



def verdict_cell(verdicts: TMapping[str, Verdict], style: Style) -> str:
    """The verdicts cell of a table row: :func:`verdict_summary`, in red when something faults."""
    text = verdict_summary(verdicts)
    return style("bad", text) if text not in ("ok", "-") else text
