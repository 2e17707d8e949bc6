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

__all__ = ["GdbArgumentParser", "address", "choice_of", "int_in", "verdict_spec"]


class GdbArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are ``gdb.GdbError`` (pwndbg swallowed them; gdb must see failure)."""

    def __init__(self, prog: str, description: str, epilog: Optional[str] = None):
        super().__init__(prog=prog, description=description, epilog=epilog, add_help=False,
                         allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)

    def error(self, message: str):
        raise gdb.GdbError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: Optional[str] = None):
        raise gdb.GdbError(f"{self.prog}: {(message or 'exit').strip()}")

    def parse(self, argument: str) -> argparse.Namespace:
        """Parse a command's argument string as gdb lexes it."""
        return self.parse_args(gdb.string_to_argv(argument))

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
    """``kernel-read=fault`` style filter: ``(verdict key, wanted outcome)``."""
    key, eq, want = text.partition("=")
    key = key.replace("-", "_")
    from ..model import ACCESS_KEYS
    if not eq or key not in ACCESS_KEYS:
        names = ", ".join(k.replace("_", "-") for k in ACCESS_KEYS)
        raise argparse.ArgumentTypeError(f"'{text}' is not KIND=ok|fault[:REASON] "
                                         f"with KIND one of {names}")
    if not (want == "ok" or want == "fault" or want.startswith("fault:")):
        raise argparse.ArgumentTypeError(f"'{want}' is not ok, fault or fault:REASON")
    return key, want
