"""Row filters of ``xen-pte-walk``: predicates over :class:`~gdb_xenpte.model.Mapping` fields.

Each filter only reads what the engine already decided (effective rights, pkey, Xen bit names,
verdicts and their fault class, :mod:`gdb_xenpte.verdicts`); none looks at raw bits.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

from .model import Mapping, Verdict
from .verdicts import fault_class, is_faulting

__all__ = ["FAULTS_MODES", "build_filter", "verdict_matches"]

# --faults: "beyond" (the default) keeps faults beyond the guest's own choices (imposed, invalid:
# verdicts.is_faulting); "all" also those the guest chose and conditional ones.
FAULTS_MODES = ("beyond", "all")


def verdict_matches(v: Optional[Verdict], want: str) -> bool:
    """``want`` is ``ok``, ``fault`` (any fault, also conditional) or ``fault:REASON``, where
    REASON matches a reason with or without its ``[...]`` condition."""
    if v is None:
        return False
    if want == "ok":
        return not v.reasons
    if want == "fault":
        return bool(v.reasons)
    reason = want.split(":", 1)[1]
    return any(r == reason or r.startswith(reason + "[") for r in v.reasons)


def build_filter(user: bool = False, kernel: bool = False, writable: bool = False,
                 exec_: bool = False, wx: bool = False, pkey: Optional[int] = None,
                 xen_bits: bool = False, faults: Optional[str] = None,
                 verdicts: Sequence[Tuple[str, str]] = ()) -> Callable[[Mapping], bool]:
    """Return a predicate that keeps a mapping when every given condition holds (AND).

    :param faults: None, or one of :data:`FAULTS_MODES`.
    :param verdicts: ``(access key, want)`` pairs (:func:`verdict_matches`).
    """
    tests: List[Callable[[Mapping], bool]] = []
    if user:
        tests.append(lambda m: m.effective.user)
    if kernel:
        tests.append(lambda m: not m.effective.user)
    if writable:
        tests.append(lambda m: m.effective.write)
    if exec_:
        tests.append(lambda m: m.effective.exec)
    if wx:
        tests.append(lambda m: m.effective.write and m.effective.exec)
    if pkey is not None:
        tests.append(lambda m: m.pkey == pkey)
    if xen_bits:
        tests.append(lambda m: bool(m.xen_bits))
    if faults == "all":
        tests.append(lambda m: fault_class(m.verdicts) != "none")
    elif faults is not None:
        tests.append(lambda m: is_faulting(m.verdicts))
    for key, want in verdicts:
        tests.append(lambda m, k=key, w=want: verdict_matches(m.verdicts.get(k), w))
    return lambda m: all(t(m) for t in tests)
