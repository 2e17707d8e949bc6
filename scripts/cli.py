"""What both console scripts share: argparse that reports one line, and the exit codes.

Exit status: 0 success, 1 some target failed (``xen-pte-dump``) or the walks differ
(``xen-pte-diff``, like diff(1)), 2 bad usage or unreadable input. A bad option, file or record is
one line ``PROG: what: where``, never a traceback; Ctrl-C exits 130 quietly.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, List, Optional

__all__ = ["ArgumentParser", "EXIT_USAGE", "UsageError", "one_line", "run_main"]

EXIT_USAGE = 2


def one_line(text: str) -> str:
    """``text`` as one line: a newline (a file name may hold one) is shown as ``\\n``."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


class UsageError(Exception):
    """Bad options or input: the message is shown as ``PROG: message``."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with ``allow_abbrev=False`` (an unknown walk option must never be read as an
    abbreviation of one of ours) whose errors raise :class:`UsageError`."""

    def __init__(self, prog: str, **kw):
        super().__init__(prog=prog, allow_abbrev=False,
                         formatter_class=argparse.RawDescriptionHelpFormatter, **kw)

    def error(self, message: str):
        raise UsageError(message)


def run_main(prog: str, body: Callable[[List[str]], int], argv: Optional[List[str]]) -> int:
    """Run ``body(argv)``, turning :class:`UsageError` into one line on stderr and exit 2."""
    try:
        return body(sys.argv[1:] if argv is None else argv)
    except UsageError as err:
        print(one_line(f"{prog}: {err}"), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `xen-pte-dump ... | head`: the reader went away; exit as if SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 128 + 13
