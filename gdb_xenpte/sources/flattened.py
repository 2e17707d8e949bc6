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


def _paint(records: List[Tuple[int, int, int]]) -> Tuple[List[int], List[int], List[int]]:
    """Lay the records over each other, later ones winning, in O(n log n) for n records.

    One sweep over the sorted record edges keeps the records covering the current position in a
    heap ordered by recency; between two edges the most recent one supplies the bytes. (Painting
    each record into a sorted list as it is read is quadratic for a storm of small records in
    descending order.)

    :param records: ``(start, end, file offset)`` in file order.
    :returns: sorted disjoint pieces as three lists: starts, ends, file offsets.
    """
    starts: List[int] = []
    ends: List[int] = []
    offs: List[int] = []
    order = sorted(range(len(records)), key=lambda k: records[k][0])
    edges = sorted({e for r in records for e in r[:2]})
    live: List[Tuple[int, int]] = []  # (-sequence, record index)
    nxt = 0
    for x, x_next in zip(edges, edges[1:]):
        while nxt < len(order) and records[order[nxt]][0] <= x:
            heapq.heappush(live, (-order[nxt], order[nxt]))
            nxt += 1
        while live and records[live[0][1]][1] <= x:
            heapq.heappop(live)  # ended before x: drop lazily, only when it would win
        if not live:
            continue  # a hole: no record covers [x, x_next)
        start, _end, off = records[live[0][1]]
        fileoff = off + (x - start)
        if ends and ends[-1] == x and offs[-1] + (x - starts[-1]) == fileoff:
            ends[-1] = x_next  # the same record (or a contiguous one) continues
        else:
            starts.append(x)
            ends.append(x_next)
            offs.append(fileoff)
    return starts, ends, offs


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

    def _read_records(self, file: DumpFile) -> List[Tuple[int, int, int]]:
        """Return every data record as ``(logical start, logical end, file offset of its data)``,
        in file order. Record headers are read in blocks, not one call each."""
        records: List[Tuple[int, int, int]] = []
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
                records.append((offset, offset + size, pos + _RECORD.size))
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
