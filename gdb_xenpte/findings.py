"""What ``xen-pte-check`` reports: anomaly categories over walked mappings, worst first.

Every test reads what the engine already decided — verdicts and their fault class, effective
rights, reserved-bit findings, record kinds — or asks :class:`~gdb_xenpte.xenview.XenView` about
Xen's disallow masks and key collisions; nothing here decodes bits itself. Findings are counted as
they stream past and only the first few of each category are kept, so a check of millions of
leaves holds a bounded number of mappings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple

from .model import Mapping

__all__ = [
    "CATEGORIES",
    "Finding",
    "Group",
    "classify",
    "group",
]

# (key, title), worst first: what breaks every access, then what loops the kernel, then what Xen
# would refuse, then hardening problems, then what the walk could not see. The #PF-loop category
# holds only faults the guest did not choose (imposed: verdicts.Verdict.imposed): a kernel that
# set SMAP itself handles its SMAP faults; one that never asked for it loops on them.
CATEGORIES: Tuple[Tuple[str, str], ...] = (
    ("rsvd", "reserved bits set: every access raises #PF with RSVD"),
    ("pf-loop", "guest-kernel accesses that fault under a protection imposed on the guest, not "
                "chosen by it (#PF-loop candidates)"),
    ("pv-disallowed", "bits Xen's PV disallow masks refuse (Xen cannot have validated these)"),
    ("wx", "writable and executable mappings"),
    ("user-kernel-half", "user-accessible mappings in the kernel half (HVM)"),
    ("pkey-xen-bit", "Xen bits the CPU would read as a protection key"),
    ("unreadable", "tables the walk could not read"),
)
_KERNEL_KEYS = ("kernel_read", "kernel_write", "kernel_exec")
_HALF = 1 << 63  # canonical kernel-half VAs have the top bit set


class Finding(NamedTuple):
    """One anomaly: its category key, the mapping it is about, and a one-line detail."""

    category: str
    mapping: Mapping
    detail: str


@dataclass
class Group:
    """One category's findings: counted in full, the first ``examples`` kept.

    :param ranges: findings (mapping records) counted; ``pages``: the pages they cover.
    """

    key: str
    title: str
    ranges: int = 0
    pages: int = 0
    examples: List[Finding] = field(default_factory=list)


def classify(m: Mapping, domain: str, xen_view=None) -> List[Finding]:
    """Return every anomaly of one mapping (empty when it is clean)."""
    out: List[Finding] = []
    kind = getattr(m, "kind", "page")
    if kind in ("unreadable", "not-in-dump"):
        return [Finding("unreadable", m, "; ".join(m.notes) or kind)]
    if m.rsvd or kind == "rsvd":
        out.append(Finding("rsvd", m, "; ".join(m.rsvd) or "; ".join(m.notes)))
    imposed = [f"{k}: {','.join(m.verdicts[k].imposed)}" for k in _KERNEL_KEYS
               if k in m.verdicts and m.verdicts[k].imposed]
    if imposed:
        out.append(Finding("pf-loop", m, "; ".join(imposed)))
    if m.disallowed:  # the walker asked XenView about every entry on the path
        detail = "; ".join(m.disallowed)
        if all(d.endswith(("(PWT)", "(PCD)", "(PAT)")) for d in m.disallowed):
            # l1_disallow_mask(): cache attributes are fine for I/O-capable domains (dom0).
            detail += " — allowed if the domain is I/O-capable (dom0, passthrough): --io-capable"
        out.append(Finding("pv-disallowed", m, detail))
    if kind == "page" and m.effective.write and m.effective.exec:
        out.append(Finding("wx", m, m.effective.rwx()))
    if domain in ("hvm", "native") and kind == "page" and m.effective.user and m.va >= _HALF:
        out.append(Finding("user-kernel-half", m, m.effective.rwx()))
    if xen_view is not None and m.entries:
        leaf = m.entries[-1]
        clash = xen_view.pkey_collision(leaf.raw, leaf.level)
        if clash:
            out.append(Finding("pkey-xen-bit", m, clash))
    return out


def group(mappings: Iterable[Mapping], domain: str, xen_view=None,
          examples: Optional[int] = 10) -> List[Group]:
    """Count findings by category, keeping the first ``examples`` of each (None: all).

    :returns: the non-empty categories, worst first.
    """
    found: Dict[str, Group] = {}
    titles = dict(CATEGORIES)
    for m in mappings:
        for f in classify(m, domain, xen_view):
            g = found.get(f.category)
            if g is None:
                g = found[f.category] = Group(f.category, titles[f.category])
            g.ranges += 1
            g.pages += m.count
            if examples is None or len(g.examples) < examples:
                g.examples.append(f)
    return [found[key] for key, _title in CATEGORIES if key in found]
