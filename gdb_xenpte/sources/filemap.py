"""Read-only access to a dump file with bounds-checked, truncation-safe reads.

Every dump reader goes through :class:`DumpFile` so that every out-of-range offset becomes one clear
:class:`DumpFormatError` naming the file and the offset instead of a short read or an ``IndexError``.

Reads are ``os.pread`` calls, never loads from an ``mmap``: a file truncated while it is being read
(by another process, or a dump still being written) would make a mapped load fault with SIGBUS and
kill the whole gdb session. With ``pread`` a vanished range is a short read, which becomes one
:class:`SourceError` naming the file, the offset and the new size. A 64 GiB dump still costs no RAM:
only the bytes asked for are read.

Only regular files are opened (:func:`check_regular_file`): ``open()`` of a FIFO blocks until a
writer appears (gdb then ignores SIGTERM), and a character device or directory is never a dump. The
check runs before ``open()``, and the opened descriptor is checked again, so nothing can swap the
file in between.

Failure modes: :class:`~gdb_xenpte.errors.SourceError` when the file is not a regular file, cannot be
opened, or shrinks while it is read; :class:`~gdb_xenpte.errors.DumpFormatError` from
:meth:`DumpFile.slice` and :meth:`DumpFile.unpack` when a structure runs past the end of the file.
"""

from __future__ import annotations

import os
import stat
import struct
from typing import Tuple

from ..errors import DumpFormatError, SourceError

__all__ = ["ByteView", "DumpFile", "MappedFile", "check_regular_file"]

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"),
          (stat.S_ISSOCK, "a socket"))


def _not_regular(mode: int) -> str:
    """Name the kind of a non-regular file (empty for a regular one)."""
    if stat.S_ISREG(mode):
        return ""
    return next((text for test, text in _KINDS if test(mode)), f"file type {stat.S_IFMT(mode):#o}")


def check_regular_file(path: str) -> os.stat_result:
    """Refuse anything but a regular file, without opening it (one rule for every command).

    :returns: the file's ``stat`` (symlinks followed).
    :raises SourceError: naming the path and what it is instead (a FIFO, a device, a directory), or
        why it cannot be examined.
    """
    try:
        st = os.stat(path)
    except OSError as err:
        raise SourceError(path, f"cannot open: {err.strerror or err}") from None
    kind = _not_regular(st.st_mode)
    if kind:
        raise SourceError(path, f"not a regular file ({kind}): dumps and raw images are read "
                                "from regular files; copy it to one first")
    return st


class ByteView:
    """A byte-addressed view that readers parse from: a dump file or a reassembled stream.

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


class DumpFile(ByteView):
    """A dump file opened read-only (regular files only) and read with ``pread``.

    :param path: the file to open.
    :raises SourceError: if it is not a regular file or cannot be opened.
    """

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self.name = os.path.basename(self.path) or self.path
        before = check_regular_file(self.path)
        try:
            # O_NONBLOCK: should a FIFO be swapped in after the check, open() still returns.
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as err:
            raise SourceError(self.path, f"cannot open: {err.strerror or err}") from None
        st = os.fstat(fd)
        if _not_regular(st.st_mode) or (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            os.close(fd)
            raise SourceError(self.path, "changed while being opened (no longer the regular "
                                         "file it was a moment before)")
        os.set_blocking(fd, True)
        self.fh = os.fdopen(fd, "rb")  # a stream for pyelftools; our own reads use pread
        self._fd = fd
        self.size = st.st_size
        # Which file this is, in which state: two opens with the same identity read the same
        # bytes (the tool never writes its inputs), so what one walk learnt serves the next.
        self.identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _pread(self, offset: int, length: int, what: str) -> bytes:
        try:
            data = os.pread(self._fd, length, offset)
        except OSError as err:
            raise SourceError(self.name, f"cannot read {what} at file offset {offset:#x}: "
                                         f"{err.strerror or err}") from None
        if len(data) != length:
            try:
                now = os.fstat(self._fd).st_size
            except OSError:
                now = offset + len(data)
            raise SourceError(
                self.name, f"file shrank while being read: {what} at file offset "
                           f"{offset + len(data):#x} is gone (size was {self.size:#x} when "
                           f"opened, is {now:#x} now); was the dump still being written?")
        return data

    def slice(self, offset: int, length: int, what: str) -> bytes:
        self.check_range(offset, length, what)
        if length == 0:
            return b""
        # Buffers larger than this are pread in pieces (pread returns at most ~2 GiB at once).
        if length <= 1 << 30:
            return self._pread(offset, length, what)
        return b"".join(self._pread(at, min(1 << 30, offset + length - at), what)
                        for at in range(offset, offset + length, 1 << 30))

    def head(self, length: int) -> bytes:
        """Return up to ``length`` bytes from the start of the file (for format probing)."""
        length = min(length, self.size)
        return self._pread(0, length, "file header") if length else b""

    def close(self) -> None:
        """Close; safe to call twice."""
        self.fh.close()


MappedFile = DumpFile  # the name before reads moved from mmap to pread; kept for other branches
