"""What ``xen-pte-check`` reports: anomaly categories over walked mappings, worst first.

Pure Python (no gdb). Every test reads what the engine already decided — verdicts, effective
rights, reserved-bit findings, record kinds — or asks :class:`~gdb_xenpte.xenview.XenView` about
Xen's disallow masks and key collisions; nothing here decodes bits itself.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, NamedTuple, Tuple

from ..model import Mapping

__all__ = [
    "CATEGORIES",
    "Finding",
    "classify",
    "group",
]

# (key, title), worst first: what breaks every access, then what loops or traps the kernel, then
# what Xen would refuse, then hardening problems, then what the walk could not see.
CATEGORIES: Tuple[Tuple[str, str], ...] = (
    ("rsvd", "reserved bits set: every access raises #PF with RSVD"),
    ("kernel-smep-smap", "guest-kernel accesses that fault under SMEP/SMAP (#PF-loop candidates)"),
    ("pv-disallowed", "bits Xen's PV disallow masks refuse (Xen cannot have validated these)"),
    ("wx", "writable and executable mappings"),
    ("user-kernel-half", "user-accessible mappings in the kernel half (HVM)"),
    ("pkey-xen-bit", "Xen bits the CPU would read as a protection key"),
    ("unreadable", "tables the walk could not read"),
)
_RANK = {key: i for i, (key, _title) in enumerate(CATEGORIES)}
_KERNEL_KEYS = ("kernel_read", "kernel_write", "kernel_exec")
_HALF = 1 << 63  # canonical kernel-half VAs have the top bit set


class Finding(NamedTuple):
    """One anomaly: its category key, the mapping it is about, and a one-line detail."""

    category: str
    mapping: Mapping
    detail: str


def classify(m: Mapping, domain: str, xen_view=None) -> List[Finding]:
    """Return every anomaly of one mapping (empty when it is clean)."""
    out: List[Finding] = []
    kind = getattr(m, "kind", "page")
    if kind in ("unreadable", "not-in-dump"):
        return [Finding("unreadable", m, "; ".join(m.notes) or kind)]
    if m.rsvd or kind == "rsvd":
        out.append(Finding("rsvd", m, "; ".join(m.rsvd) or "; ".join(m.notes)))
    smx = [f"{k}: {','.join(r for r in m.verdicts[k].reasons if 'SMEP' in r or 'SMAP' in r)}"
           for k in _KERNEL_KEYS if k in m.verdicts
           and any("SMEP" in r or "SMAP" in r for r in m.verdicts[k].reasons)]
    if smx:
        out.append(Finding("kernel-smep-smap", m, "; ".join(smx)))
    if m.disallowed:  # the walker asked XenView about every entry on the path
        detail = "; ".join(m.disallowed)
        if all(d.endswith(("(PWT)", "(PCD)", "(PAT)")) for d in m.disallowed):
            # l1_disallow_mask(): cache attributes are fine for I/O-capable domains (dom0).
            detail += " — allowed if the domain is I/O-capable (dom0, passthrough): --io-capable"
        out.append(Finding("pv-disallowed", m, detail))
    if kind == "page" and m.effective.write and m.effective.exec:
        out.append(Finding("wx", m, m.effective.rwx()))
    if domain == "hvm" and kind == "page" and m.effective.user and m.va >= _HALF:
        out.append(Finding("user-kernel-half", m, m.effective.rwx()))
    if xen_view is not None and m.entries:
        leaf = m.entries[-1]
        clash = xen_view.pkey_collision(leaf.raw, leaf.level)
        if clash:
            out.append(Finding("pkey-xen-bit", m, clash))
    return out


def group(mappings: Iterable[Mapping], domain: str,
          xen_view=None) -> List[Tuple[str, str, List[Finding]]]:
    """Group findings by category: ``(key, title, findings)`` worst first, empty ones left out."""
    found: Dict[str, List[Finding]] = {}
    for m in mappings:
        for f in classify(m, domain, xen_view):
            found.setdefault(f.category, []).append(f)
    return [(key, title, found[key]) for key, title in CATEGORIES if key in found]
