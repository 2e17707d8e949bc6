"""Text reports of the other commands: ``xen-cr4``, ``xen-pte-check`` and its what-ifs."""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple

from tabulate import tabulate

from .common import Style, human_size
from .table import va_range

__all__ = [
    "check_text",
    "cr4_text",
    "what_if_text",
]



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
        rows = [[va_range(f.mapping), human_size(f.mapping.size), f.mapping.effective.rwx(),
                 f.detail] for f in found[:examples]]
        if rows:
            lines += ["  " + ln for ln in tabulate(
                rows, headers=["VA range", "size", "rights", "detail"], tablefmt="simple",
                disable_numparse=True).splitlines()]
        if len(found) > examples:
            lines.append(f"  ... and {len(found) - examples} more")
    return lines
