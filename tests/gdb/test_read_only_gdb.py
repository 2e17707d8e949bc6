"""Read-only guarantee (issue 7) through real gdb: the commands on every dump format leave the file
untouched (bytes, size, mtime, mode). The static audit and the engine walk are
tests/unit/test_read_only.py; the live guest is tests/live/test_read_only_live.py.
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT / "tests" / "sources") not in sys.path:  # the shared corpus (corpus.py)
    sys.path.insert(0, str(ROOT / "tests" / "sources"))

from corpus import fingerprint, walkable_dump_files  # noqa: E402
from tests.gdb.gdbrun import run_gdb  # noqa: E402


def test_gdb_commands_on_every_dump_format_leave_the_file_untouched(tmp_path):
    files, _cr3 = walkable_dump_files(tmp_path)
    before = {p: fingerprint(p) for p, _f, _o in files}
    for path, _fmt, opts in files:
        res = run_gdb(f"xen-pte-walk {opts}", f"xen-pte-walk {opts} --json --no-coalesce",
                      f"xen-pte-walk {opts} 0xffffffff81000000", f"xen-pte-check {opts}")
        assert "Traceback" not in res.stderr, res.stderr
        if "tables" in path.name:
            assert '"type":"mapping"' in res.stdout, res.stdout[-2000:] + res.stderr
    assert {p: fingerprint(p) for p, _f, _o in files} == before
