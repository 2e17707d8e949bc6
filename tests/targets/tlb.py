"""Compare our walk with QEMU's own: parse ``info tlb`` and put walk records in its terms.

QEMU's ``info tlb`` (``target/i386/monitor.c`` in 7.2, ``tlb_info_la48``/``tlb_info_la57``) walks
the current CR3 itself and prints one line per *present leaf*::

    ffffffff81000000: 0000000001000000 XG-DA--UW
                                       XGPDACTUW   NX, G, PS, D, A, PCD, PWT, U/S, R/W

What it shows, and what we normalise our side to before comparing:

* the VA, sign-extended from bit 47 (4-level) or 56 (5-level);
* the PA as the leaf entry ANDed with a mask of bits 12–49 (4 KiB), 21–49 (2 MiB) or 30–49
  (1 GiB): so the PAT bit of a large page and bits 50–63 never show;
* the leaf's own bits only (no AND of U/W across levels), ``P`` only on 2 MiB/1 GiB leaves;
* every present leaf, aliases included (the same table reached twice prints twice, under each VA);
  QEMU does not check reserved bits (a leaf below a reserved-bit entry still prints, and PS in a
  PML4E/PML5E is ignored), and follows table addresses masked to bits 12–49 too.

Our side is put in the same terms: the walk's PA under the same mask, its decoded leaf flags
(``NX G PS D A PCD PWT US RW``) as letters. Records of walks stopped at a reserved bit or an
unreadable table are not leaves and are compared separately (tests expect none).

The default walk's records (coalesced runs, ``repeat`` copies) are compared by expanding them
(:func:`compare_expanded`): a run's pages at ``va + i * page_size``, copy ``k`` of a repeat at
``va + k * stride``. What such a record does not carry is checked as what it claims: its A and D
are those set on *every* page of the run (so they must equal the AND of QEMU's), and a run marked
``pa_contiguous: false`` gives only its first frame (so QEMU's frames there must indeed not be
contiguous).

Failure modes: :class:`ValueError` for a line that is neither a tlb line nor blank, or a VA that
QEMU printed twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Tuple

__all__ = ["Comparison", "Expansion", "Leaf", "compare", "compare_expanded", "leaf_from_record",
           "parse_info_tlb", "qemu_flags", "qemu_pa_mask"]

_LINE = re.compile(r"^([0-9a-f]{16}): ([0-9a-f]{16}) ([X-][G-][P-][D-][A-][C-][T-][U-][W-])$")
# Engine flag name for each column of QEMU's flag string, in QEMU's order.
_COLUMNS = (("X", "NX"), ("G", "G"), ("P", "PS"), ("D", "D"), ("A", "A"), ("C", "PCD"),
            ("T", "PWT"), ("U", "US"), ("W", "RW"))
_TOP_PA_BIT = 49  # QEMU 7.2 masks table and leaf addresses with 0x3fffffffff000 (bits 12-49)


@dataclass(frozen=True)
class Leaf:
    """One present leaf as QEMU prints it.

    :param va: canonical virtual address (bytes).
    :param pa: physical address after QEMU's mask (bytes).
    :param flags: the nine-letter ``XGPDACTUW`` string.
    """

    va: int
    pa: int
    flags: str


def qemu_pa_mask(page_size: int) -> int:
    """Return the mask QEMU applies to a leaf of ``page_size`` bytes before printing its PA."""
    return ((1 << (_TOP_PA_BIT + 1)) - 1) & ~(page_size - 1)


def parse_info_tlb(text: str) -> Dict[int, Leaf]:
    """Parse ``info tlb`` output into ``{va: Leaf}``.

    :raises ValueError: on an unexpected line or a repeated VA.
    """
    leaves: Dict[int, Leaf] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        match = _LINE.match(line)
        if not match:
            raise ValueError(f"info tlb line {number}: unexpected {line[:80]!r}")
        va = int(match.group(1), 16)
        if va in leaves:
            raise ValueError(f"info tlb line {number}: VA {va:#x} printed twice")
        leaves[va] = Leaf(va, int(match.group(2), 16), match.group(3))
    return leaves


def qemu_flags(engine_flags: Iterable[str]) -> str:
    """Return QEMU's ``XGPDACTUW`` string for a set of engine flag names."""
    names = set(engine_flags)
    return "".join(letter if name in names else "-" for letter, name in _COLUMNS)


def leaf_from_record(rec: dict) -> Leaf:
    """Return QEMU's view of one ``mapping`` record of a page (PA masked, leaf flags).

    :raises ValueError: if the record covers several pages (coalesced).
    """
    if rec["count"] != 1:
        raise ValueError(f"record at {rec['va']} covers {rec['count']} pages: walk with "
                         f"--no-coalesce")
    pa = int(rec["pa"], 16) if rec["pa"] is not None else -1
    return Leaf(int(rec["va"], 16), pa & qemu_pa_mask(rec["page_size"]), qemu_flags(rec["flags"]))


@dataclass
class Comparison:
    """Outcome of comparing two leaf sets.

    :param ours: leaves our walk found; :param theirs: leaves QEMU printed.
    :param equal: leaves with the same VA, PA and flags on both sides.
    :param only_ours / only_theirs / differ: the disagreements (a few kept for the message).
    """

    ours: int
    theirs: int
    equal: int
    only_ours: List[Leaf] = field(default_factory=list)
    only_theirs: List[Leaf] = field(default_factory=list)
    differ: List[Tuple[Leaf, Leaf]] = field(default_factory=list)

    @property
    def agree(self) -> bool:
        return self.ours == self.theirs == self.equal

    def report(self, limit: int = 12) -> str:
        """Return a multi-line account of the disagreements (first ``limit`` of each kind)."""
        out = [f"ours {self.ours} leaves, QEMU {self.theirs}, equal {self.equal}; "
               f"only ours {len(self.only_ours)}, only QEMU {len(self.only_theirs)}, "
               f"different {len(self.differ)}"]
        out += [f"  only ours:  {l.va:#018x} -> {l.pa:#x} {l.flags}" for l in self.only_ours[:limit]]
        out += [f"  only QEMU:  {l.va:#018x} -> {l.pa:#x} {l.flags}"
                for l in self.only_theirs[:limit]]
        out += [f"  different:  {a.va:#018x} ours -> {a.pa:#x} {a.flags}, QEMU -> {b.pa:#x} "
                f"{b.flags}" for a, b in self.differ[:limit]]
        return "\n".join(out)


def compare(ours: Dict[int, Leaf], theirs: Dict[int, Leaf]) -> Comparison:
    """Compare leaf sets keyed by VA (exact: counts must match, aliases included)."""
    result = Comparison(len(ours), len(theirs), 0)
    for va, leaf in ours.items():
        other = theirs.get(va)
        if other is None:
            result.only_ours.append(leaf)
        elif other == leaf:
            result.equal += 1
        else:
            result.differ.append((leaf, other))
    result.only_theirs = [leaf for va, leaf in theirs.items() if va not in ours]
    return result


_D, _A = 3, 4  # columns of QEMU's flag string that a coalesced record ANDs over its pages


def _without_ad(flags: str) -> str:
    return flags[:_D] + "--" + flags[_A + 1:]


@dataclass
class Expansion:
    """Outcome of expanding default-walk records against QEMU's leaves.

    :param records: mapping records expanded; :param ours: leaves they stand for;
    :param theirs: leaves QEMU printed; :param pa_checked: leaves whose PA the record gives (all
        but the pages after the first of a scattered run) and that equal QEMU's;
    :param scattered: runs marked ``pa_contiguous: false``; :param problems: the first
        disagreements, described (``count`` of them in all).
    """

    records: int = 0
    ours: int = 0
    theirs: int = 0
    pa_checked: int = 0
    scattered: int = 0
    count: int = 0
    problems: List[str] = field(default_factory=list)

    @property
    def agree(self) -> bool:
        return self.count == 0 and self.ours == self.theirs

    def problem(self, text: str, limit: int = 12) -> None:
        self.count += 1
        if len(self.problems) < limit:
            self.problems.append(text)

    def report(self) -> str:
        return "\n".join([f"{self.records} records -> {self.ours} leaves, QEMU {self.theirs}; "
                          f"PA checked {self.pa_checked}; scattered runs {self.scattered}; "
                          f"{self.count} problems"] + [f"  {p}" for p in self.problems])


def compare_expanded(records: Iterable[dict], theirs: Dict[int, Leaf]) -> Expansion:
    """Expand default ``xen-pte-walk --json`` mapping records (runs and ``repeat`` copies) and
    compare them with QEMU's leaves: the same VAs, each once; the same leaf flags (A and D as the
    AND over the run); the same PA wherever the record gives it; scattered runs really scattered.
    """
    out = Expansion(theirs=len(theirs))
    seen = set()
    for rec in records:
        out.records += 1
        if rec.get("kind", "page") != "page":
            out.problem(f"{rec['va']}: a {rec.get('kind')} record, not a page")
            continue
        va, size, count = int(rec["va"], 16), rec["page_size"], rec["count"]
        pa = int(rec["pa"], 16) if rec["pa"] is not None else None
        contiguous = rec.get("pa_contiguous", True)
        repeat = rec.get("repeat") or {"count": 1, "stride": 0}
        want = qemu_flags(rec["flags"])
        out.scattered += not contiguous
        for k in range(repeat["count"]):
            base = va + k * repeat["stride"]
            frames, all_a, all_d = [], True, True
            for i in range(count):
                page_va = base + i * size
                out.ours += 1
                if page_va in seen:
                    out.problem(f"{page_va:#x}: stood for twice (record {rec['va']})")
                    continue
                seen.add(page_va)
                leaf = theirs.get(page_va)
                if leaf is None:
                    out.problem(f"{page_va:#x}: not printed by QEMU (record {rec['va']}, "
                                f"copy {k}, page {i})")
                    continue
                if _without_ad(leaf.flags) != _without_ad(want):
                    out.problem(f"{page_va:#x}: flags {want} (A/D aside), QEMU {leaf.flags}")
                all_a &= leaf.flags[_A] == "A"
                all_d &= leaf.flags[_D] == "D"
                frames.append(leaf.pa)
                if contiguous or i == 0:
                    expect = -1 if pa is None else (pa + i * size) & qemu_pa_mask(size)
                    if leaf.pa == expect:
                        out.pa_checked += 1
                    else:
                        out.problem(f"{page_va:#x}: PA {expect:#x}, QEMU {leaf.pa:#x}")
            for col, bit, every in ((_A, "A", all_a), (_D, "D", all_d)):
                if (want[col] == bit) != every:
                    out.problem(f"record {rec['va']} copy {k}: {bit} "
                                f"{'shown' if want[col] == bit else 'not shown'}, set on every "
                                f"page per QEMU: {every}")
            if not contiguous and len(frames) == count and all(
                    b == a + size for a, b in zip(frames, frames[1:])):
                out.problem(f"record {rec['va']} copy {k}: pa_contiguous false, but QEMU's "
                            f"frames are contiguous")
    for va in sorted(set(theirs) - seen)[:12]:
        out.problem(f"{va:#x}: printed by QEMU, in no record")
    out.count += max(0, len(set(theirs) - seen) - 12)
    return out
