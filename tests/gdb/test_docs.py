"""docs/COMMANDS.md is gdb's own help for every command and parameter, so it cannot drift.

Regenerate after changing a command: ``XENPTE_UPDATE_DOCS=1 python3 -m pytest tests/gdb/test_docs.py``.
"""

import os
import pathlib

from gdbrun import run_gdb

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "COMMANDS.md"
COMMANDS = ("xen-pte-walk", "xen-pte-check", "xen-pte-decode", "xen-cr4", "xen-domains",
            "xen-pte-p2m")

INTRO = """# Command reference

Generated from gdb's `help` for each command (`tests/gdb/test_docs.py` checks it is current).
Every option value is a gdb expression (`$cr3`, symbols, `0x...`). Defaults for many options can be
set for a session with `set xen-pte ...` (listed at the end).
"""


PRE = ("import os; os.environ['COLUMNS'] = '100'",)  # argparse wraps to this width


def render() -> str:
    parts = [INTRO]
    for cmd in COMMANDS:
        out = run_gdb(f"help {cmd}", pre=PRE).stdout.rstrip()
        parts.append(f"\n## `{cmd}`\n\n```\n{out}\n```\n")
    out = run_gdb("help set xen-pte", pre=PRE).stdout.rstrip()
    parts.append(f"\n## `set xen-pte` / `show xen-pte`\n\n```\n{out}\n```\n")
    return "".join(parts)


def test_command_reference_is_current():
    text = render()
    if os.environ.get("XENPTE_UPDATE_DOCS"):
        DOC.write_text(text)
    assert DOC.read_text() == text, "docs/COMMANDS.md is stale: regenerate it (see the docstring)"
