"""Verdicts as short texts: the table's verdicts column.

The column shows only what the page's own bits do not already say (its U/S, R/W and NX show in
the rights column): faults from SMEP, SMAP, protection keys and reserved bits, grouped by reason,
e.g. ``kr,kw:SMAP? kx:SMEP`` for a user page of a Linux guest. ``?`` marks a fault that depends on
an unknown (EFLAGS.AC, PKRU, PKRS); ``!`` marks a protection imposed on the guest (by Xen or a
what-if) rather than chosen by it. Only imposed faults and reserved bits are painted as alarms;
conditional ones are dimmed. Which class a mapping falls in is :func:`gdb_xenpte.verdicts.fault_class`.
"""

from __future__ import annotations

from typing import Dict, List, Mapping as TMapping

from ..model import ACCESS_KEYS, ACCESS_SHORT, Verdict
from ..verdicts import fault_class, is_conditional, reason_class
from .common import Style

__all__ = ["LEGEND", "verdict_cell", "verdict_summary"]

LEGEND = ("verdicts: faults beyond the page's own U/S, R/W and NX bits; kr/kw/kx/ur/uw/ux = "
          "guest kernel/user read/write/exec; ? = depends on an unknown (AC, PKRU, PKRS); "
          "! = imposed on the guest, not its choice; - = none")


def _short_reason(reason: str) -> str:
    """``SMAP[AC=0]`` -> ``SMAP?``: the condition's detail is in the trace and the JSON."""
    return reason.split("[", 1)[0] + "?" if is_conditional(reason) else reason


def verdict_summary(verdicts: TMapping[str, Verdict]) -> str:
    """One short text for a mapping's verdicts: the faults beyond its own bits, grouped by reason
    (``kr,kw:SMAP? kx:SMEP``), ``RSVD`` when a reserved bit faults every access, else ``-``."""
    groups: Dict[str, List[str]] = {}
    for key in ACCESS_KEYS:
        v = verdicts.get(key)
        if v is None:
            continue
        for reason in v.reasons:
            kind = reason_class(reason, v)
            if kind == "rights":
                continue
            if kind == "invalid":
                return "RSVD"
            text = _short_reason(reason) + ("!" if kind == "imposed" else "")
            groups.setdefault(text, []).append(ACCESS_SHORT[key])
    return " ".join(f"{','.join(keys)}:{text}" for text, keys in groups.items()) or "-"


_STYLE = {"invalid": "bad", "imposed": "bad", "conditional": "dim"}


def verdict_cell(verdicts: TMapping[str, Verdict], style: Style) -> str:
    """The verdicts cell of a table row: :func:`verdict_summary`, red only for faults the guest
    did not choose (imposed) or reserved bits, dim when every fault depends on an unknown."""
    text = verdict_summary(verdicts)
    kind = _STYLE.get(fault_class(verdicts))
    return style(kind, text) if kind else text
