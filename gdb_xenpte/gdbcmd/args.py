"""Argument parsing for the commands: argparse that speaks gdb.

:class:`GdbArgumentParser` lexes with gdb's own ``buildargv`` (``gdb.string_to_argv``) and turns
every argparse complaint into one ``gdb.GdbError`` line prefixed with the command name, instead of
printing usage and exiting gdb. Value types evaluate gdb expressions, so ``$cr3``, ``$rsp`` or a
symbol work wherever an address or register value is expected.
"""

from __future__ import annotations

import argparse
from typing import List, Optional, Sequence, Tuple

import gdb

__all__ = [
    "GdbArgumentParser",
    "address",
    "choice_of",
    "int_in",
    "limit_count",
    "verdict_spec",
]


class GdbArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are ``gdb.GdbError`` (pwndbg swallowed them; gdb must see failure)."""

    def __init__(self, prog: str, description: str, epilog: Optional[str] = None):
        super().__init__(prog=prog, description=description, epilog=epilog, add_help=False,
                         allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
        self._bare = {}  # option -> its value when given bare (see value_only_with_equals)

    def value_only_with_equals(self, option: str, bare: str) -> None:
        """``option`` takes a value only as ``option=VALUE``; bare, it means ``bare``. So
        ``--faults 0x1000 0x2000`` keeps both addresses (argparse's ``nargs="?"`` would eat one)."""
        self._bare[option] = bare

    def error(self, message: str):
        raise gdb.GdbError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: Optional[str] = None):
        raise gdb.GdbError(f"{self.prog}: {(message or 'exit').strip()}")

    def parse(self, argument: str) -> argparse.Namespace:
        """Parse a command's argument string as gdb lexes it."""
        argv = [f"{a}={self._bare[a]}" if a in self._bare else a
                for a in gdb.string_to_argv(argument)]
        return self.parse_args(argv)

    def option_strings(self) -> List[str]:
        """Every option string, for completion."""
        return sorted(s for a in self._actions for s in a.option_strings)

    def takes_file(self) -> List[str]:
        """Options whose value is a file path."""
        return [s for a in self._actions if a.metavar in ("FILE", "FILE@BASE")
                for s in a.option_strings]

    def choices_of(self, option: str) -> Sequence[str]:
        for a in self._actions:
            if option in a.option_strings:
                return [str(c) for c in a.choices or getattr(a.type, "choices", ())]
        return ()


def address(text: str) -> int:
    """An address or register value: any gdb expression (``0x1000``, ``$cr3``, ``&sym``)."""
    try:
        value = gdb.parse_and_eval(text)
        if value.type.code == gdb.TYPE_CODE_VOID:
            raise argparse.ArgumentTypeError(f"'{text}' has no value here")
        return int(value) & 0xFFFFFFFFFFFFFFFF
    except gdb.error as err:
        raise argparse.ArgumentTypeError(f"'{text}' is not an address or number: {err}") from None


def int_in(lo: int, hi: int):
    """An integer in ``[lo, hi]``, decimal or 0x-hex."""
    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is not in {lo}..{hi}")
        return value
    parse.__name__ = "integer"
    return parse


def limit_count(text: str) -> int:
    """A mapping count: N >= 0, or ``unlimited``; 0 means unlimited, as ``set xen-pte limit 0``."""
    if text.strip().lower() == "unlimited":
        return 0
    try:
        value = int(text, 0)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a count (N >= 0, or unlimited; 0 "
                                         f"means unlimited)")
    return value


def choice_of(*names: str):
    """A case-insensitive choice (kept as an argparse type so the error names the choices)."""
    def parse(text: str) -> str:
        if text.lower() not in names:
            raise argparse.ArgumentTypeError(f"'{text}' is not one of {', '.join(names)}")
        return text.lower()
    parse.choices = names
    return parse


# --verdict KEY=WANT: KEY as the user writes it (kernel-read), WANT ok / fault / fault:REASON.
def verdict_spec(text: str) -> Tuple[str, str]:
    """``kr=fault`` / ``kernel-read=fault:SMAP`` style filter: ``(verdict key, wanted outcome)``;
    the access in any spelling :func:`gdb_xenpte.model.access_key` accepts."""
    from ..model import access_key
    name, eq, want = text.partition("=")
    try:
        key = access_key(name)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"'{text}' is not KIND=ok|fault[:REASON]: {err}") from None
    if not eq:
        raise argparse.ArgumentTypeError(f"'{text}' is not KIND=ok|fault[:REASON] (no '=')")
    if not (want == "ok" or want == "fault" or want.startswith("fault:")):
        raise argparse.ArgumentTypeError(f"'{want}' is not ok, fault or fault:REASON")
    return key, want
