"""Run the batch tools as a user would (``python3 -m scripts.xen_pte_dump``), from the repo root."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import List

from tests.gdb.gdbrun import validators  # noqa: F401 (re-exported: the one schema loader)

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT / "gdb_xenpte" / "data"


def run_tool(module: str, *args, timeout: float = 300, env=None) -> subprocess.CompletedProcess:
    """Run ``python3 -m scripts.<module> ARGS`` in the repo root; stdout and stderr as text."""
    return subprocess.run([sys.executable, "-m", f"scripts.{module}", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=dict(os.environ, **(env or {})))


def read_jsonl(path) -> List[dict]:
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line]
