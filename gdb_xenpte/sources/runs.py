"""Physical-address runs: sorted ``(phys, file offset, length)`` triples searched with bisect.

Every uncompressed dump format (QEMU ELF PT_LOADs, xl dump-core pages, a raw image) reduces to such a
run list; :class:`RunMap` validates it once (no overlaps, every run inside the file) and then serves
reads that may span adjacent runs.

Failure modes: :meth:`RunMap.finish` raises :class:`~gdb_xenpte.errors.DumpFormatError` for runs that
overlap or lie outside the file; :meth:`RunMap.read` raises
:class:`~gdb_xenpte.errors.UnreadableMemory` naming the first physical address the dump lacks.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from typing import List, Sequence, Tuple

from ..errors import DumpFormatError, UnreadableMemory
from .filemap import ByteView

__all__ = ["RunMap"]


class RunMap:
    """Physical ranges of a dump and where their bytes lie in the file.

    :param view: the file the runs point into.
    :param what: the source name used in error messages.
    """

    def __init__(self, view: ByteView, what: str):
        self._view = view
        self._what = what
        self._pending: List[Tuple[int, int, int, str]] = []
        self._starts = array("Q")
        self._ends = array("Q")
        self._offsets = array("Q")

    def add(self, phys: int, offset: int, length: int, label: str) -> None:
        """Record ``length`` bytes of physical memory at ``phys`` stored at file ``offset``.

        Adjacent additions that continue the previous run (in both spaces) are merged, which keeps
        page-per-entry formats (xc_core) down to a handful of runs.

        :param label: names the run's origin in error messages, e.g. ``"PT_LOAD[3]"``.
        """
        if length <= 0:
            return
        if self._pending:
            p, o, n, first = self._pending[-1]
            if p + n == phys and o + n == offset:
                self._pending[-1] = (p, o, n + length, first)
                return
        self._pending.append((phys, offset, length, label))

    def finish(self) -> None:
        """Sort and validate the runs; call once after the last :meth:`add`.

        :raises DumpFormatError: if a run lies outside the file or two runs overlap.
        """
        runs = sorted(self._pending)
        self._pending = []
        prev_end, prev_label = -1, ""
        for phys, offset, length, label in runs:
            self._view.check_range(offset, length, f"{label} (physical {phys:#x})")
            if phys < prev_end:
                raise DumpFormatError(
                    self._what, f"{label} at physical {phys:#x} overlaps {prev_label}, which "
                                f"ends at {prev_end:#x}")
            if phys + length >= 1 << 64:
                raise DumpFormatError(self._what, f"{label} at physical {phys:#x} (+{length:#x}) "
                                                  "runs past the 64-bit physical address space")
            self._starts.append(phys)
            self._ends.append(phys + length)
            self._offsets.append(offset)
            prev_end, prev_label = phys + length, label

    def read(self, paddr: int, size: int) -> bytes:
        """Return ``size`` bytes at ``paddr``, possibly across adjacent runs.

        :raises UnreadableMemory: naming the first address that no run covers.
        """
        if size <= 0:
            return b""
        out = []
        addr, end = paddr, paddr + size
        while addr < end:
            i = bisect_right(self._starts, addr) - 1 if addr < 1 << 64 else -1
            if i < 0 or addr >= self._ends[i]:
                raise UnreadableMemory(self._what, addr, "not in dump")
            take = min(end, self._ends[i]) - addr
            out.append(self._view.slice(self._offsets[i] + addr - self._starts[i], take,
                                        f"data of physical {addr:#x}"))
            addr += take
        return b"".join(out)

    def file_offset(self, paddr: int) -> int:
        """Return the file offset holding ``paddr``.

        :raises UnreadableMemory: if no run covers it.
        """
        i = bisect_right(self._starts, paddr) - 1
        if i < 0 or paddr >= self._ends[i]:
            raise UnreadableMemory(self._what, paddr, "not in dump")
        return self._offsets[i] + paddr - self._starts[i]

    def ranges(self) -> Sequence[Tuple[int, int]]:
        """Return covered physical ranges, adjacent runs merged, sorted, end exclusive."""
        out: List[Tuple[int, int]] = []
        for start, end in zip(self._starts, self._ends):
            if out and out[-1][1] == start:
                out[-1] = (out[-1][0], end)
            else:
                out.append((start, end))
        return out

    def __len__(self) -> int:
        return len(self._starts)
