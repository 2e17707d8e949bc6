"""The one place the tool writes a file: the user's own output (``-o FILE``), never an input.

:class:`AtomicFile` writes a regular file as a temporary file beside it (keeping an existing
file's mode), renamed over the path only when everything was written and closed; a device, FIFO or
``/dev/stdout`` is written directly (it cannot be renamed over), and its write or close errors
(``/dev/full``: ENOSPC) surface as :class:`OSError`. :func:`same_file` compares by device and
inode. The gdb commands' ``-o`` (:func:`replacing`) and the batch tools (``scripts/output.py``)
both use them.

Failure modes: :class:`~gdb_xenpte.errors.OptionError` from :func:`replacing`, one line naming the
file, for an output that is one of the inputs or that cannot be written; :class:`OSError` from
:class:`AtomicFile` (the temporary file is removed and the target left as it was).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from typing import IO, Iterable, Iterator, Optional

from .errors import OptionError

__all__ = ["AtomicFile", "replacing", "same_file"]


def same_file(a: str, b: str) -> bool:
    """Both paths exist and are one file (device and inode equal)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


@contextlib.contextmanager
def replacing(path: str, inputs: Iterable[str] = ()) -> Iterator[IO[str]]:
    """Yield a text file whose content replaces ``path`` only if the block succeeds
    (:class:`AtomicFile`); an output that is one of ``inputs`` is refused before anything is
    opened."""
    path = os.path.expanduser(path)
    for inp in inputs:
        if same_file(path, inp):
            raise OptionError(f"-o {path} is the input {inp}: refusing to overwrite it")
    try:
        out = AtomicFile(path)
    except OSError as err:
        raise OptionError(f"cannot write -o {path}: {err.strerror or err}") from None
    try:
        yield out.fh
    except BaseException:
        out.discard()
        raise
    try:
        out.commit()
    except OSError as err:
        raise OptionError(f"cannot write -o {path}: {err.strerror or err}") from None


class AtomicFile:
    """A text file written whole or not at all; a context manager (``commit`` on success).

    :param path: the file to write; a regular file (or a new path) is written through a
        temporary file in the same directory and renamed at :meth:`commit`.
    """

    def __init__(self, path: str, newline: Optional[str] = None):
        self.path = path
        self.tmp: Optional[str] = None
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):  # /dev/full, a FIFO, /dev/stdout
            self.fh = open(path, "w", encoding="utf-8", newline=newline)
            return
        directory = os.path.dirname(os.path.abspath(path))
        try:
            fd, self.tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                                            suffix=".part")
        except OSError as err:  # name the file asked for, not the temporary one
            raise OSError(err.errno, err.strerror, path) from None
        try:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~_umask())
            self.fh = os.fdopen(fd, "w", encoding="utf-8", newline=newline)
        except BaseException:
            os.close(fd)
            os.unlink(self.tmp)
            raise

    def write(self, text: str) -> int:
        return self.fh.write(text)

    def commit(self) -> None:
        """Close (errors such as ENOSPC surface here) and put the file in place."""
        try:
            self.fh.close()
        except BaseException:
            self.discard()
            raise
        if self.tmp is not None:
            os.replace(self.tmp, self.path)
            self.tmp = None

    def discard(self) -> None:
        """Drop what was written (the path keeps its old content, if any)."""
        try:
            self.fh.close()
        except OSError:
            pass
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
            self.tmp = None

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type, *rest) -> bool:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
