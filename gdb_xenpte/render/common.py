"""What every renderer shares: colours, hex and size texts, the flag order, identity memos."""

from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Tuple

from ..arch import PTE_BIT_NAMES

__all__ = [
    "ByIdentity",
    "FLAG_ORDER",
    "Style",
    "hexa",
    "human_size",
]


# The leaf's architectural flag names, in bit order, as the JSON schema spells them.
FLAG_ORDER = tuple(name for name, _bit in PTE_BIT_NAMES)  # arch's names, in its order



class Style:
    """ANSI colours, or nothing when ``enabled`` is False (batch mode, style off, no terminal)."""

    _CODES = {"bad": "31;1", "warn": "33", "user": "36", "kernel": "35", "dim": "2", "head": "1"}

    def __init__(self, enabled: bool = False):
        self.enabled = enabled

    def __call__(self, kind: str, text: str) -> str:
        if not self.enabled or not text:
            return text
        return f"\x1b[{self._CODES[kind]}m{text}\x1b[0m"



def hexa(value: Optional[int]) -> Optional[str]:
    """``"0x..."`` for an address or raw value, None stays None."""
    return None if value is None else f"{value:#x}"



@functools.lru_cache(maxsize=1024)  # a walk has few distinct sizes; called twice per row
def human_size(n: int) -> str:
    """Bytes as ``4K``/``2M``/``1G``/``12K`` (exact multiples only, else bytes)."""
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n}B"



class ByIdentity:
    """Memoise ``fn(obj)`` by the object's identity, holding the object so its id stays unique.

    The walker hands every mapping with equal attributes the same verdicts dict (its attribute
    cache), so a walk of 65,000 records has a handful of distinct ones: the texts are made once.
    """

    def __init__(self, fn):
        self.fn = fn
        self.memo: Dict[int, Tuple[Any, Any]] = {}

    def __call__(self, obj):
        hit = self.memo.get(id(obj))
        if hit is None or hit[0] is not obj:
            if len(self.memo) >= 4096:
                self.memo.clear()  # hostile walks: every dict distinct; stay small
            hit = self.memo[id(obj)] = (obj, self.fn(obj))
        return hit[1]
