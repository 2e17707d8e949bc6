"""Read-only, memory-mapped access to a dump file with bounds-checked slicing.

Every dump reader goes through :class:`MappedFile` so that a 64 GiB dump costs address space, not
RAM, and so that every out-of-range offset becomes one clear :class:`DumpFormatError` naming the file
and the offset instead of a short read or an ``IndexError``.

Failure modes: :class:`~gdb_xenpte.errors.SourceError` when the file cannot be opened or mapped;
:class:`~gdb_xenpte.errors.DumpFormatError` from :meth:`MappedFile.slice` and
:meth:`MappedFile.unpack` when a structure runs past the end of the file.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Tuple

from ..errors import DumpFormatError, SourceError

__all__ = ["ByteView", "MappedFile"]


class ByteView:
    """A byte-addressed view that readers parse from: a mapped file or a reassembled stream.

    Subclasses provide :attr:`size`, :attr:`name` and :meth:`slice`.
    """

    name: str = "file"
    size: int = 0

    def slice(self, offset: int, length: int, what: str) -> bytes:
        """Return ``length`` bytes at file offset ``offset``.

        :param what: the structure being read, for the error message (e.g. ``"ELF header"``).
        :raises DumpFormatError: if the range does not lie inside the view.
        """
        raise NotImplementedError

    def unpack(self, fmt: str, offset: int, what: str) -> Tuple:
        """Unpack ``struct`` format ``fmt`` at ``offset``; see :meth:`slice` for errors."""
        return struct.unpack(fmt, self.slice(offset, struct.calcsize(fmt), what))

    def check_range(self, offset: int, length: int, what: str) -> None:
        """Raise :class:`DumpFormatError` unless ``[offset, offset+length)`` lies in the view."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise DumpFormatError(
                self.name, f"{what} at file offset {offset:#x} (+{length:#x} bytes) runs past "
                           f"the end of the file (size {self.size:#x}): truncated or corrupt")


class MappedFile(ByteView):
    """A dump file opened read-only and mapped with ``mmap`` (never read whole).

    :param path: the file to open.
    :raises SourceError: if it cannot be opened or mapped.
    """

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self.name = os.path.basename(self.path) or self.path
        try:
            self.fh = open(self.path, "rb")
        except OSError as err:
            raise SourceError(self.path, f"cannot open: {err.strerror or err}") from None
        try:
            self.size = os.fstat(self.fh.fileno()).st_size
            # mmap refuses empty files; an empty dump is simply "truncated at offset 0".
            self._map = (mmap.mmap(self.fh.fileno(), 0, access=mmap.ACCESS_READ)
                         if self.size else b"")
        except (OSError, ValueError) as err:
            self.fh.close()
            raise SourceError(self.path, f"cannot map the file read-only: {err}") from None

    def slice(self, offset: int, length: int, what: str) -> bytes:
        self.check_range(offset, length, what)
        return self._map[offset:offset + length]

    def head(self, length: int) -> bytes:
        """Return up to ``length`` bytes from the start of the file (for format probing)."""
        return self._map[:length]

    def close(self) -> None:
        """Unmap and close; safe to call twice."""
        if isinstance(self._map, mmap.mmap):
            self._map.close()
        self._map = b""
        self.fh.close()
