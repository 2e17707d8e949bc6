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

Failure modes: :class:`ValueError` for a line that is neither a tlb line nor blank, or a VA that
QEMU printed twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Tuple

__all__ = ["Comparison", "Leaf", "compare", "leaf_from_record", "parse_info_tlb", "qemu_flags",
           "qemu_pa_mask"]

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
