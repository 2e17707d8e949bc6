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
from bisect import bisect_right
from typing import List

from ..errors import DumpFormatError
from .filemap import ByteView, DumpFile

__all__ = ["FLAT_SIGNATURE", "FlattenedView", "is_flattened"]

FLAT_SIGNATURE = b"makedumpfile"
FLAT_HEADER_SIZE = 4096
_RECORD = struct.Struct(">qq")
_END = -1


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
        # Disjoint pieces of the logical file, sorted: logical start/end and file offset.
        self._starts: List[int] = []
        self._ends: List[int] = []
        self._fileoffs: List[int] = []
        pos = FLAT_HEADER_SIZE
        while True:
            if pos == file.size:
                self.remarks.append("no end record: the flattened file may be truncated")
                break
            offset, size = file.unpack(">qq", pos, "flattened record header")
            if offset == _END and size == _END:
                break
            if offset < 0 or size < 0:
                raise DumpFormatError(file.name, f"flattened record at file offset {pos:#x} has "
                                                 f"offset {offset} and size {size}")
            file.check_range(pos + _RECORD.size, size, f"flattened record data (record at {pos:#x})")
            if size:
                self._paint(offset, offset + size, pos + _RECORD.size)
            pos += _RECORD.size + size
        self.size = self._ends[-1] if self._ends else 0

    def _paint(self, start: int, end: int, fileoff: int) -> None:
        """Lay ``[start, end)`` over the pieces recorded so far (later records win)."""
        i = bisect_right(self._ends, start)  # first piece ending after start
        if i == len(self._starts) or self._starts[i] >= end:
            self._starts.insert(i, start)
            self._ends.insert(i, end)
            self._fileoffs.insert(i, fileoff)
            return
        new_s, new_e, new_f = [], [], []
        j = i
        while j < len(self._starts) and self._starts[j] < end:
            s, e, f = self._starts[j], self._ends[j], self._fileoffs[j]
            if s < start:  # keep the head of an overlapped piece
                new_s.append(s)
                new_e.append(start)
                new_f.append(f)
            j += 1
        new_s.append(start)
        new_e.append(end)
        new_f.append(fileoff)
        s, e, f = self._starts[j - 1], self._ends[j - 1], self._fileoffs[j - 1]
        if e > end:  # keep the tail of the last overlapped piece
            new_s.append(end)
            new_e.append(e)
            new_f.append(f + (end - s))
        self._starts[i:j] = new_s
        self._ends[i:j] = new_e
        self._fileoffs[i:j] = new_f

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
