"""The README's examples, as the tests that run them read them (issue 14: every example runs).

A block is an indented code block; its title is the bold phrase (``**A QEMU dump**``) or heading
that last came before it. ``(gdb) `` lines are gdb commands (their ``# ...`` comments dropped);
other lines are shell commands. Every block is claimed by a test (:data:`CLAIMED`), so a new
example without a test fails ``tests/gdb/test_readme.py``.
"""

from __future__ import annotations

import pathlib
import re
from typing import Dict, List

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"

# Block title -> the test file that runs its lines as written.
CLAIMED = {
    "Two commands": "tests/gdb/test_readme.py",
    "Load it into gdb": "tests/gdb/test_readme.py",
    "Live QEMU": "tests/live/test_gdblive.py",
    "A Xen host under QEMU": "tests/live/test_xen_dom0.py",
    "Every domain of a Xen host": "tests/live/test_xen_host_live.py",
    "A QEMU dump": "tests/gdb/test_readme.py",
    "An `xl dump-core` file": "tests/gdb/test_readme.py",
    "Batch, many dumps": "tests/batch/test_readme_batch.py",
    "A fleet on a Dask cluster": "tests/batch/test_readme_batch.py",
    "A crashed Xen host": "tests/live/test_xen_crash_target.py",
    "Reading a host dump": "tests/live/test_xen_crash_reader.py",
}


def blocks() -> Dict[str, List[str]]:
    """Title -> the block's commands in order (several blocks under one title are joined)."""
    out: Dict[str, List[str]] = {}
    title = ""
    for line in README.read_text().splitlines():
        heading = re.match(r"^#+ (.*)", line)
        bold = re.match(r"^\*\*(.+?)\*\*", line)
        if heading:
            title = heading.group(1).strip()
        elif bold:
            title = bold.group(1).strip()
        elif line.startswith("    ") and line.strip():
            text = line.strip()
            out.setdefault(title, []).append(text)
    return out


def gdb_lines(title: str) -> List[str]:
    """The ``(gdb)`` commands of the block ``title``, without prompts and comments."""
    return [re.sub(r"\s+#.*$", "", ln[len("(gdb) "):]).strip()
            for ln in blocks()[title] if ln.startswith("(gdb) ")]


def shell_lines(title: str) -> List[str]:
    """The shell commands of the block ``title``."""
    return [ln for ln in blocks()[title] if not ln.startswith("(gdb) ")]


def inline_commands(prefix: str = "xen-pte-") -> List[str]:
    """Commands given inline in the text as ```xen-pte-... ...``` spans (with options)."""
    return [c for c in re.findall(r"`([^`]+)`", README.read_text())
            if c.startswith(prefix) and " --" in c]
