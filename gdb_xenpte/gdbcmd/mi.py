"""``-xen-pte-walk``: the walk as an MI command, for pygdbmi and other MI front ends.

Takes exactly the options of ``xen-pte-walk`` (``--json`` is implied) and returns the same records
as an MI result, ``^done,records=[...]``, so batch scripts get structured data without scraping
the console stream. MI carries strings only: numbers become decimal strings, booleans
``true``/``false`` and null the empty string. Only exists where gdb has ``gdb.MICommand`` (13+).
"""

from __future__ import annotations

from typing import Any, Dict, List

import gdb

from ..errors import XenpteError
from .walkout import collect_records

__all__ = ["XenPteWalkMICommand", "register", "to_mi"]


def to_mi(value: Any) -> Any:
    """A JSON-like value as MI can carry it (dicts, lists, strings)."""
    if isinstance(value, dict):
        return {k: to_mi(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_mi(v) for v in value]
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


if hasattr(gdb, "MICommand"):
    class XenPteWalkMICommand(gdb.MICommand):
        """Walk the guest page tables and return header, mapping/trace and summary records."""

        def __init__(self, cli: gdb.Command):
            self.cli = cli
            super().__init__("-xen-pte-walk")

        def invoke(self, argv: List[str]) -> Dict[str, Any]:
            args = self.cli.parser.parse_args(list(argv) + ["--json"])
            try:
                return {"records": to_mi(collect_records(args))}
            except XenpteError as err:
                raise gdb.GdbError(f"-xen-pte-walk: {err}") from None
else:  # pragma: no cover - gdb < 13
    XenPteWalkMICommand = None


def register(cli: gdb.Command) -> list:
    """Create the MI command when this gdb supports MI commands in Python."""
    return [XenPteWalkMICommand(cli)] if XenPteWalkMICommand is not None else []
