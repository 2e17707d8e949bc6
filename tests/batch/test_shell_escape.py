"""crash users: Debian's crash cannot load Python extensions, but its ``!`` shell escape runs the
installed ``xen-pte-dump`` on the dump it has open (README, "crash users"). gdb's ``!`` escape is
the same mechanism; a script of such commands, as a crash user would write, gets our walk."""

import json
import shutil
import subprocess

from gdb_xenpte.gdb_load import SAMPLE


def test_shell_escape_runs_the_installed_batch_tool(tmp_path):
    tool = shutil.which("xen-pte-dump")
    assert tool, "xen-pte-dump is not on PATH: install the package (pip install .) first"
    script = tmp_path / "crash-commands"
    script.write_text(f"!xen-pte-dump --core {SAMPLE} --xen 4.17 --summary\n"
                      f"!xen-pte-dump --core {SAMPLE} --xen 4.17 -- 0xffffffff81000000 "
                      f"0xffffffff81001000\n")
    res = subprocess.run(["gdb", "-nx", "-batch", "-x", str(script)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "_PAGE_GUEST_KERNEL" in res.stdout  # the summary names dom0's Xen bit
    records = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]
    mapping = [r for r in records if r["type"] == "mapping"]
    assert [m["va"] for m in mapping] == ["0xffffffff81000000"]
    assert mapping[0]["xen_bits"] == ["_PAGE_GUEST_KERNEL"]
