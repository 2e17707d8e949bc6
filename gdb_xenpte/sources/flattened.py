"""makedumpfile's "flattened" stream format, read in place as the file it stands for.

A flattened file is what a dump writer produces when it cannot seek (``makedumpfile -F``, and QEMU's
``dump-guest-memory -z/-l/-s``, i.e. ``kdump-zlib``/``-lzo``/``-snappy``; QEMU 8.2 added separate
``kdump-raw-*`` formats for the plain layout). Layout (QEMU ``include/sysemu/dump.h``,
``dump/dump.c`` ``write_start_flat_header``/``write_buffer``):

* a 4096-byte header: ``"makedumpfile"`` NUL-padded to 16 bytes, big-endian int64 type (1) and
  version (1);
* records: big-endian int64 ``offset`` and ``buf_size`` followed by ``buf_size`` bytes that belong
  at ``offset`` of the reassembled file;
* an end record whose offset and size are both -1.

Later records win where they overlap (makedumpfile rewrites its sub-header at the end); bytes no
record covers read as zeros, as in the sparse file ``makedumpfile -R`` would build.

Failure modes: :class:`~gdb_xenpte.errors.DumpFormatError` for a bad header, a record running past
the end of the file or with a negative offset/size, or a read past the reassembled end.
"""

from __future__ import annotations

import struct
import heapq
from array import array
from bisect import bisect_right
from typing import List, Tuple

from ..errors import DumpFormatError
from .filemap import ByteView, DumpFile

__all__ = ["FLAT_SIGNATURE", "FlattenedView", "is_flattened"]

FLAT_SIGNATURE = b"makedumpfile"
FLAT_HEADER_SIZE = 4096
_RECORD = struct.Struct(">qq")
_END = -1
_WINDOW = 64 << 10  # record headers are read in windows of this many bytes


class _Records:
    """The data records of a flattened file in file order, as three compact arrays (a record storm
    of millions costs 24 bytes a record, not a tuple's ~150)."""

    def __init__(self):
        self.starts = array("Q")
        self.ends = array("Q")
        self.offs = array("Q")

    def add(self, start: int, end: int, off: int) -> None:
        self.starts.append(start)
        self.ends.append(end)
        self.offs.append(off)

    def __len__(self) -> int:
        return len(self.starts)


def _paint(recs: _Records) -> Tuple[array, array, array]:
    """Lay the records over each other, later ones winning, in O(n log n) for n records.

    Sorted by start, records that do not overlap (what dump writers produce, and record storms of
    disjoint bytes) are the pieces as they are. Otherwise one sweep over the sorted record edges
    keeps the records covering the current position in a heap ordered by recency; between two
    edges the most recent one supplies the bytes. (Painting each record into a sorted list as it
    is read is quadratic for a storm of small records in descending order.)

    :returns: sorted disjoint pieces as three arrays: starts, ends, file offsets.
    """
    starts, ends, offs = recs.starts, recs.ends, recs.offs
    order = array("Q", sorted(range(len(recs)), key=starts.__getitem__))
    out_s, out_e, out_o = array("Q"), array("Q"), array("Q")

    def emit(x: int, x_end: int, fileoff: int) -> None:
        if out_e and out_e[-1] == x and out_o[-1] + (x - out_s[-1]) == fileoff:
            out_e[-1] = x_end  # the same record (or a contiguous one) continues
        else:
            out_s.append(x)
            out_e.append(x_end)
            out_o.append(fileoff)

    if all(starts[order[i]] >= ends[order[i - 1]] for i in range(1, len(order))):
        for k in order:
            emit(starts[k], ends[k], offs[k])
        return out_s, out_e, out_o
    # Edges: the sorted starts and the sorted ends, merged without duplicates.
    by_end = array("Q", sorted(ends))
    live: List[int] = []  # -(record index): the most recent record is on top
    nxt = 0
    i = j = 0
    x = None
    while i < len(order) or j < len(by_end):
        a = starts[order[i]] if i < len(order) else None
        b = by_end[j] if j < len(by_end) else None
        edge = a if b is None or (a is not None and a <= b) else b
        if edge == a:
            i += 1
        else:
            j += 1
        if edge == x:
            continue
        if x is not None:  # the stretch [x, edge) between two consecutive edges
            while nxt < len(order) and starts[order[nxt]] <= x:
                heapq.heappush(live, -order[nxt])
                nxt += 1
            while live and ends[-live[0]] <= x:
                heapq.heappop(live)  # ended before x: dropped lazily, only when it would win
            if live:  # else a hole: no record covers [x, edge)
                k = -live[0]
                emit(x, edge, offs[k] + (x - starts[k]))
        x = edge
    return out_s, out_e, out_o


def is_flattened(head: bytes) -> bool:
    """Return True if ``head`` starts with the flattened-format signature."""
    return head[:16] == FLAT_SIGNATURE.ljust(16, b"\0")


class FlattenedView(ByteView):
    """The reassembled file of a flattened dump, served from the flattened file.

    :param file: the flattened file.
    :raises DumpFormatError: see the module docstring.
    """

    def __init__(self, file: DumpFile):
        self._file = file
        self.name = file.name
        self.remarks: List[str] = []
        head = file.slice(0, FLAT_HEADER_SIZE, "flattened-format header")
        if not is_flattened(head):
            raise DumpFormatError(file.name, "no 'makedumpfile' signature at file offset 0")
        ftype, version = struct.unpack_from(">qq", head, 16)
        if ftype != 1:
            raise DumpFormatError(file.name, f"flattened header type {ftype} at file offset 0x10: "
                                             "expected 1")
        if version != 1:
            self.remarks.append(f"flattened format version {version} (expected 1)")
        records = self._read_records(file)
        # Disjoint pieces of the logical file, sorted: logical start/end and file offset.
        self._starts, self._ends, self._fileoffs = _paint(records)
        self.size = self._ends[-1] if self._ends else 0

    def _read_records(self, file: DumpFile) -> _Records:
        """Return every data record as ``(logical start, logical end, file offset of its data)``,
        in file order. Record headers are read in blocks, not one call each."""
        records = _Records()
        pos = FLAT_HEADER_SIZE
        window_at, window = 0, b""
        while True:
            if pos == file.size:
                self.remarks.append("no end record: the flattened file may be truncated")
                return records
            if not window_at <= pos <= window_at + len(window) - _RECORD.size:
                window_at = pos
                window = file.slice(pos, max(min(_WINDOW, file.size - pos), _RECORD.size),
                                    "flattened record header")
            offset, size = _RECORD.unpack_from(window, pos - window_at)
            if offset == _END and size == _END:
                return records
            if offset < 0 or size < 0:
                raise DumpFormatError(file.name, f"flattened record at file offset {pos:#x} has "
                                                 f"offset {offset} and size {size}")
            file.check_range(pos + _RECORD.size, size, f"flattened record data (record at {pos:#x})")
            if size:
                records.add(offset, offset + size, pos + _RECORD.size)
            pos += _RECORD.size + size

    def slice(self, offset: int, length: int, what: str) -> bytes:
        self.check_range(offset, length, what)
        out = []
        addr, end = offset, offset + length
        i = bisect_right(self._ends, addr)
        while addr < end:
            if i < len(self._starts) and self._starts[i] <= addr:
                take = min(end, self._ends[i]) - addr
                out.append(self._file.slice(self._fileoffs[i] + addr - self._starts[i], take, what))
                i += 1
            else:  # a hole: never written, reads as zeros
                nxt = self._starts[i] if i < len(self._starts) else end
                take = min(end, nxt) - addr
                out.append(bytes(take))
            addr += take
        return b"".join(out)

    def pieces(self) -> int:
        """Number of disjoint pieces the logical file is made of."""
        return len(self._starts)
