"""Where the batch tools write: never over an input, never a half-written file (the writing is
the engine's, :mod:`gdb_xenpte.outfile`, which the gdb commands' ``-o`` uses too).

:func:`refuse_inputs` stops a run whose output path is one of its inputs (the same path, a glob
that matched it, a symlink or hard link: compared by device and inode), before anything is read
or truncated. :class:`AtomicFile` writes a regular file as a temporary file beside it, renamed over
the path only when everything was written and closed; a device, FIFO or ``/dev/stdout`` is
written directly (it cannot be renamed over), and its write or close errors (``/dev/full``:
ENOSPC) surface as :class:`OSError` for the caller's one-line message.

Failure modes: :class:`~scripts.cli.UsageError` from :func:`refuse_inputs`; :class:`OSError`
from :class:`AtomicFile` (the temporary file is removed and the target left as it was).
"""

from __future__ import annotations

import os
from typing import Iterable

from gdb_xenpte.outfile import AtomicFile, same_file

from .cli import UsageError

__all__ = ["AtomicFile", "refuse_inputs", "same_file"]


def refuse_inputs(output: str, inputs: Iterable[str], option: str = "-o") -> None:
    """:raises UsageError: if ``output`` is (or resolves to) one of ``inputs``."""
    if not os.path.exists(output):
        return
    for path in inputs:
        if same_file(output, path):
            also = "" if os.path.abspath(output) == os.path.abspath(path) else f" ({path})"
            raise UsageError(f"{option} {output}: is an input{also}; refusing to overwrite it")
