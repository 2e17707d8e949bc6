"""The one place the tool writes a file: the user's own output (``-o FILE``), never an input.

Failure modes: :class:`~gdb_xenpte.errors.OptionError`, one line naming the file, for an output
that is one of the inputs (the same inode too) or that cannot be written (ENOSPC, EACCES, ...).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from typing import IO, Iterable, Iterator

from .errors import OptionError

__all__ = ["replacing"]


@contextlib.contextmanager
def replacing(path: str, inputs: Iterable[str] = ()) -> Iterator[IO[str]]:
    """Yield a text file whose content replaces ``path`` only if the block succeeds.

    A regular file (or a new one) is written to a temporary file beside it and renamed over it at
    the end, so a failed or interrupted command leaves an old file intact and a reader never sees
    half of it; a device or pipe (``/dev/stdout``, a FIFO) is written directly. An output that is
    one of ``inputs`` is refused before anything is opened.
    """
    path = os.path.expanduser(path)
    for inp in inputs:
        with contextlib.suppress(OSError):
            if os.path.samefile(path, inp):
                raise OptionError(f"-o {path} is the input {inp}: refusing to overwrite it")
    tmp = None
    try:
        if not os.path.exists(path) or stat.S_ISREG(os.stat(path).st_mode):
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                                       prefix="." + os.path.basename(path) + ".")
            f = os.fdopen(fd, "w", encoding="utf-8")
        else:
            f = open(path, "w", encoding="utf-8")
    except OSError as err:
        raise OptionError(f"cannot write -o {path}: {err.strerror or err}") from None
    done = False
    try:
        yield f
        try:
            f.close()
            if tmp is not None:
                os.replace(tmp, path)
        except OSError as err:
            raise OptionError(f"cannot write -o {path}: {err.strerror or err}") from None
        done = True
    finally:
        with contextlib.suppress(OSError):
            f.close()
        if tmp is not None and not done:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
