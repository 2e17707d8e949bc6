"""Where tests keep build products and downloads: outside the checkout, shared by every clone.

``$XENPTE_CACHE_ROOT`` when set, else ``$XDG_CACHE_HOME/gdb_xenpte`` (``~/.cache/gdb_xenpte``).
Each user of it (packages, the oracle guest, the rebuilt Xen, hypothesis' example database) gets
a sub-folder; a run of ``.ci/run`` leaves ``git status --ignored`` clean.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root(name: str) -> Path:
    """Return the cache folder ``name`` (created if missing).

    :param name: the sub-folder, e.g. ``"debs"``.
    """
    base = os.environ.get("XENPTE_CACHE_ROOT")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "gdb_xenpte")
    path = Path(base) / name
    path.mkdir(parents=True, exist_ok=True)
    return path
