"""Text reports of the other commands: ``xen-cr4``, ``xen-pte-check`` and its what-ifs."""

from __future__ import annotations

from typing import Any, List, Sequence

from tabulate import tabulate

from .common import Style, human_size
from .table import va_range

__all__ = [
    "check_text",
    "cr4_text",
    "what_if_text",
]



def cr4_text(state: Any, style: Style = Style()) -> List[str]:
    """Lines explaining the CPU state a domain runs with (a ``DomainCpu``): the effective CR4 bit
    by bit as it is in the value printed, the guest's view (PV), which protections bind the
    kernel and whose choice each is, and where every value came from."""
    o = state.origins
    policy = state.policy
    sm = lambda x: "hvm" if x == "hvm" else ("on" if x else "off")
    if policy is None:
        lines = [style("head", f"no Xen policy applies: domain native ({o['domain']}); the "
                               f"CPU's own CR4 governs")]
    else:
        v = policy.version
        lines = [style("head", f"Xen {v[0]}.{v[1]}{'.' + str(v[2]) if v[2] else ''} "
                               f"({'debug' if policy.debug else 'release'} build; {o['xen']}), "
                               f"{policy.domain} domain ({o['domain']}), smep={sm(policy.smep)} "
                               f"smap={sm(policy.smap)}")]
    if state.cr4_read is not None:
        # Read from a CPU it is the CPU's (for PV: Xen's or the PV context's, the guest's view
        # being derived); given, or a PV dump's ctrlreg[4], it is the guest's own.
        what = ("CPU CR4" if o["cr4"].kind == "observed" and not (
            policy is not None and policy.is_pv and state.guest_view is not None
            and state.guest_view.value == state.cr4_read) else "guest CR4")
        lines.append(f"{what} {state.cr4_read:#x} ({o['cr4']})")
    who = {"kernel": "the guest kernel runs", "user": "guest user space runs",
           "xen": "Xen runs on the guest's behalf"}[state.context]
    lines.append(f"effective CR4 {state.cr4.value:#x} (what the hardware runs while {who}; "
                 f"{o['effective_cr4']}):")
    lines += ["  " + ln for ln in state.cr4.explanation]
    if state.guest_view is not None:
        lines.append(f"guest-visible CR4 {state.guest_view.value:#x} (what the guest reads back):")
        lines += ["  " + ln for ln in state.guest_view.explanation]
    whose = {"guest": "the guest's own choice", "xen": "imposed by Xen",
             "what-if": "imposed by the what-if"}
    binds = lambda p: (style("warn", f"applies ({whose.get(p.chooser, p.chooser)})")
                       if p.applies else "does not apply")
    lines.append(f"guest kernel: CPL {state.kernel_cpl}; "
                 + ", ".join(f"{name.upper()} {binds(p)}"
                             for name, p in state.protections.items()))
    lines.append(f"  CPL {state.kernel_cpl}: {o['kernel_cpl']}")
    lines += [f"  {name.upper()}: {p.why}" for name, p in state.protections.items()]
    lines += [f"note: {n}" for n in state.notes]
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



def check_text(groups: Sequence[Any], examples: int, style: Style = Style()) -> List[str]:
    """Lines of the anomaly report: per category (:class:`gdb_xenpte.findings.Group`) its counts,
    then up to ``examples`` mappings."""
    if not groups:
        return ["no anomalies found."]
    lines = []
    for g in groups:
        lines.append(style("bad" if g.key in _ALARMS else "head",
                           f"[{g.key}] {g.title}: {g.ranges} ranges, {g.pages} pages"))
        rows = [[va_range(f.mapping), human_size(f.mapping.size), f.mapping.effective.rwx(),
                 f.detail] for f in g.examples[:examples]]
        if rows:
            lines += ["  " + ln for ln in tabulate(
                rows, headers=["VA range", "size", "rights", "detail"], tablefmt="simple",
                disable_numparse=True).splitlines()]
        if g.ranges > len(rows):
            lines.append(f"  ... and {g.ranges - len(rows)} more")
    return lines


# Categories that break or loop the guest (red); the others are findings to read (not alarms).
_ALARMS = ("rsvd", "pf-loop", "pv-disallowed", "unreadable")
