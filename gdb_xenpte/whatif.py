"""What-if: the same guest's page tables judged under a changed Xen policy, entry by entry.

The seed mail (xen-pv-pte-abi-thread.txt) proposes hiding Xen's PTE bits, letting a "nominated
safe" PV domain set more CR4 bits (PKE first), and ending the SMEP/SMAP regressions. For one guest,
:func:`what_if` says what each such change would break and what it would fix.

Scenarios (:data:`SCENARIOS`):

* ``pke`` / ``pks``: the effective CR4 gains PKE / PKS. Entries whose leaf has a non-zero key field
  start to be governed by PKRU / PKRS; the report says whether the key comes from Xen's debug bit
  62 (``_PAGE_GNTTAB``) or from the guest's own software bits. PKRU/PKRS default to the guest's
  value, else "all keys allowed" (0), with a note.
* ``smap`` / ``smep``: the effective CR4 keeps SMAP / SMEP while the guest kernel runs (a 32-bit PV
  kernel in ring 1 on Xen before 4.7): the infinite-#PF-loop candidates.
* ``no-guest-kernel-bit``: Xen stops setting bit 52 (``_PAGE_GUEST_KERNEL``).
* ``release`` / ``debug``: the other build type (bit 62 and the L1 disallow mask).
* ``xen=VERSION``: another Xen version's policy.

The walk is done once; the "after" view is computed per coalesced range from the same entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Tuple

from .arch import CR4
from .errors import OptionError
from .model import ACCESS_KEYS, Mapping, Verdict
from .session import Options, Session, prepare
from .xenview import XenView, disallowed_texts

__all__ = [
    "Change",
    "SCENARIOS",
    "WhatIf",
    "parse_scenario",
    "what_if",
]

SCENARIOS = ("pke", "pks", "smap", "smep", "no-guest-kernel-bit", "release", "debug",
             "xen=VERSION")


@dataclass(frozen=True)
class Change:
    """A VA range whose verdicts, key or Xen bits differ under the scenario.

    :param before: / ``after``: ``{"verdicts": {...}, "key": int|None, "xen_bits": [...],
        "disallowed": [...]}`` with verdicts as strings.
    :param what: short texts: ``"breaks kernel_read (ok -> fault:SMAP)"``, ``"key 8 from Xen
        bit 62"`` ...
    """

    va: int
    size: int
    count: int
    level: str
    before: Dict[str, object]
    after: Dict[str, object]
    what: Tuple[str, ...]
    breaks: bool
    fixes: bool


@dataclass
class WhatIf:
    """The comparison of one scenario with the current state.

    :param changes: changed ranges in VA order (merged where before/after agree).
    """

    scenario: str
    description: str
    notes: List[str]
    changes: List[Change] = field(default_factory=list)
    mappings_seen: int = 0  # mapping records compared
    pages_seen: int = 0  # the pages they cover

    @property
    def broken(self) -> List[Change]:
        return [c for c in self.changes if c.breaks]

    @property
    def fixed(self) -> List[Change]:
        return [c for c in self.changes if c.fixes]

    def headline(self) -> str:
        """One line first: how many pages this change breaks / fixes, and the first one."""
        if not self.changes:
            return (f"{self.scenario}: nothing changes for this guest ({self.pages_seen} pages "
                    f"in {self.mappings_seen} mappings checked)")
        parts = []
        for label, group in (("breaks", self.broken), ("fixes", self.fixed)):
            if group:
                n = sum(c.count for c in group)
                parts.append(f"{label} {n} page{'s' * (n != 1)} in {len(group)} "
                             f"range{'s' * (len(group) != 1)}")
        other = [c for c in self.changes if not c.breaks and not c.fixes]
        if other:
            n = sum(c.count for c in other)
            parts.append(f"changes the meaning of {n} more in {len(other)} range"
                         f"{'s' * (len(other) != 1)}")
        first = (self.broken or self.fixed or self.changes)[0]
        return (f"{self.scenario}: this change {', '.join(parts)}; first: {first.va:#x} "
                f"({'; '.join(first.what)})")


def parse_scenario(text: str) -> str:
    """Validate a scenario name (``xen=4.6`` style for versions).

    :raises OptionError: for an unknown scenario.
    """
    name = text.strip().lower()
    if name in SCENARIOS[:-1] or (name.startswith("xen=") and len(name) > 4):
        return name
    raise OptionError(f"unknown what-if scenario {text!r} (known: {', '.join(SCENARIOS)})")


class _NoGuestKernelBit(XenView):
    """Xen's view if it stopped setting (and owning) bit 52."""

    def xen_bits(self, raw, level, leaf):
        return [n for n in super().xen_bits(raw, level, leaf) if n != "_PAGE_GUEST_KERNEL"]


def _after_session(session: Session, scenario: str, base: Options) -> Tuple[Session, str,
                                                                            List[str]]:
    """A new session for the same source under ``scenario``, a description, and notes.

    Every scenario is an :class:`Options` change (``what_if`` names it, so the derivation applies
    Xen's policy even over the CPU's CR4 and marks what it switches on as imposed); none patches
    a prepared session.
    """
    notes: List[str] = []
    what = base.with_(what_if=scenario)
    if scenario.startswith("xen="):
        version = scenario[4:]
        return (prepare(session.source, what.with_(xen=version)),
                f"the same guest under Xen {version}'s policy", notes)
    if scenario in ("release", "debug"):
        return (prepare(session.source, what.with_(xen_debug=scenario == "debug")),
                f"the same guest on a {scenario} build of Xen", notes)
    if scenario == "no-guest-kernel-bit":
        after = prepare(session.source, what)
        if after.policy is None or after.domain != "pv64":
            notes.append("bit 52 is Xen's only on 64-bit PV L1 entries: nothing to change here")
        else:
            after = replace(after, xen_view=_NoGuestKernelBit(after.policy,
                                                              after.xen_view.root_is_xen_l4))
            notes.append("Xen sets bit 52 only where the guest wrote U=0; a guest that set bit 52 "
                         "itself looks the same today, so each such entry would keep bit 52 as "
                         "the guest's own")
        return after, "Xen stops setting bit 52 (_PAGE_GUEST_KERNEL) on PV64 L1 entries", notes
    bit = {"pke": CR4.PKE, "pks": CR4.PKS, "smap": CR4.SMAP, "smep": CR4.SMEP}[scenario]
    if scenario == "pke" and base.pkru is None and session.cpu.pkru is None:
        what = what.with_(pkru=0)
        notes.append("PKRU unknown: all keys allowed assumed (give --pkru to judge accesses)")
    if scenario == "pks" and base.pkrs is None and session.cpu.pkrs is None:
        what = what.with_(pkrs=0)
        notes.append("PKRS unknown: all keys allowed assumed (give --pkrs to judge accesses)")
    after = prepare(session.source, what.with_(force_cr4=bit))
    desc = {"pke": "the domain's effective CR4 gains PKE (protection keys for user pages)",
            "pks": "the domain's effective CR4 gains PKS (protection keys for supervisor pages)",
            "smap": "SMAP stays on while the guest kernel runs (as for a ring-1 kernel before "
                    "Xen 4.7)",
            "smep": "SMEP stays on while the guest kernel runs (as for a ring-1 kernel before "
                    "Xen 4.7)"}[scenario]
    if scenario in ("smap", "smep", "pks") and after.judge.kernel_cpl == 3:
        notes.append("the 64-bit PV kernel runs at CPL3: supervisor-only checks cannot reach it")
    return after, desc, notes


def _active_key(m: Mapping, cr4: int, kernel_cpl: int) -> Optional[int]:
    """The leaf's non-zero key if the CPU would use it (SDM §4.6.2), else None. Key 0 is every
    page's key: what PKRU/PKRS do to it shows in the verdicts, not as a key appearing."""
    if not m.pkey:
        return None
    if m.effective.user and cr4 & CR4.PKE:
        return m.pkey
    if not m.effective.user and cr4 & CR4.PKS and kernel_cpl < 3:
        return m.pkey
    return None


def _state(m: Mapping, session: Session, verdicts: Dict[str, Verdict], xen_bits, disallowed):
    return {"verdicts": {k: str(verdicts[k]) for k in ACCESS_KEYS},
            "key": _active_key(m, session.cpu.cr4, session.judge.kernel_cpl),
            "xen_bits": list(xen_bits), "disallowed": list(disallowed)}


def _worse(before: str, after: str) -> bool:
    return before == "ok" and after != "ok"


def what_if(session: Session, scenario: str, base: Options = Options(), *,
            entry_budget: Optional[int] = None) -> WhatIf:
    """Compare every mapping of ``session``'s address space with its state under ``scenario``.

    :param base: the options ``session`` was prepared with (so the scenario changes only one
        thing).
    :raises OptionError: for an unknown scenario or one that does not fit the options.
    """
    scenario = parse_scenario(scenario)
    after, desc, notes = _after_session(session, scenario, base)
    result = WhatIf(scenario, desc, notes)
    kw = {} if entry_budget is None else {"entry_budget": entry_budget}
    walker = session.walker(**kw)
    memo: Dict[tuple, tuple] = {}
    pending: Optional[Change] = None
    for m in walker.iter_mappings():
        if m.kind != "page":
            continue
        result.mappings_seen += 1
        result.pages_seen += m.count
        leaf = m.entries[-1].raw
        key = (m.level, leaf & ~0x000FFFFFFFFFF060, m.effective, bool(m.rsvd), m.disallowed,
               m.xen_bits, m.xen_owned, tuple(str(m.verdicts[k]) for k in ACCESS_KEYS))
        hit = memo.get(key)
        if hit is None:
            before = _state(m, session, m.verdicts, m.xen_bits, m.disallowed)
            a_verdicts = after.judge.judge(m.effective, m.pkey, bool(m.rsvd))
            own = after.xen_view is not None and not m.xen_owned
            a_bits = after.xen_view.xen_bits(leaf, m.level, True) if own else ()
            a_dis = _disallowed(after, m)
            a_state = _state(m, after, a_verdicts, a_bits, a_dis)
            hit = (before, a_state, _describe(m, before, a_state, session))
            memo[key] = hit
        before, a_state, what = hit
        if before == a_state:
            continue
        breaks = any(_worse(before["verdicts"][k], a_state["verdicts"][k]) for k in ACCESS_KEYS)
        fixes = any(_worse(a_state["verdicts"][k], before["verdicts"][k]) for k in ACCESS_KEYS)
        change = Change(m.va, m.size, m.count, m.level, before, a_state, what, breaks, fixes)
        if (pending is not None and pending.va + pending.size == m.va
                and (pending.before, pending.after, pending.level) == (before, a_state, m.level)):
            pending = Change(pending.va, pending.size + m.size, pending.count + m.count,
                             m.level, before, a_state, what, breaks, fixes)
            continue
        if pending is not None:
            result.changes.append(pending)
        pending = change
    if pending is not None:
        result.changes.append(pending)
    if walker.stats.budget_hit:
        result.notes.append(f"walk cut short: {walker.stats.budget_hit}")
    return result


def _disallowed(after: Session, m: Mapping) -> List[str]:
    """Disallow-mask violations on the path under ``after``'s policy, as the walker finds them
    (Xen-owned entries and what lies below them are Xen's: no guest ABI applies)."""
    if after.xen_view is None or m.xen_owned:
        return []
    return [t for ref in m.entries
            for t in disallowed_texts(ref.level, ref.index,
                                      after.xen_view.disallowed(ref.raw, ref.level))]


def _describe(m: Mapping, before, after, session: Session) -> Tuple[str, ...]:
    out = []
    for k in ACCESS_KEYS:
        b, a = before["verdicts"][k], after["verdicts"][k]
        if b != a:
            verb = "breaks" if _worse(b, a) else "fixes" if _worse(a, b) else "changes"
            out.append(f"{verb} {k} ({b} -> {a})")
    if before["key"] != after["key"] and after["key"] is not None:
        leaf = m.entries[-1].raw
        if leaf >> 62 & 1 and "_PAGE_GNTTAB" in m.xen_bits:
            src = "includes Xen's bit 62 (_PAGE_GNTTAB, debug build)"
        else:
            src = "from the guest's own software bits 62:59"
        out.append(f"key {after['key']} becomes active ({src})")
    lost = [b for b in before["xen_bits"] if b not in after["xen_bits"]]
    gained = [b for b in after["xen_bits"] if b not in before["xen_bits"]]
    if lost:
        out.append("no longer Xen's: " + ", ".join(lost))
    if gained:
        out.append("becomes Xen's: " + ", ".join(gained))
    if before["disallowed"] != after["disallowed"]:
        out.append(f"disallowed bits {before['disallowed'] or 'none'} -> "
                   f"{after['disallowed'] or 'none'}")
    return tuple(out)
