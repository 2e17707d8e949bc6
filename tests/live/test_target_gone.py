"""A live target that goes away mid-walk (issue 19): QEMU is killed between two reads of a walk.

The walk must say that the target disappeared (not that PhyMemMode could not be restored, which is
what gdb's "packets can only be sent to a remote target" used to turn into), never a traceback, and
a ``--json`` stream must still end with its summary record. Each test boots its own oracle guest,
since it kills it.
"""

from __future__ import annotations

import pytest

from tests.gdb.gdbrun import run_gdb
from tests.targets.gdb import connect_commands
from tests.targets.oracle import boot_oracle

pytestmark = pytest.mark.live

# Kill QEMU (SIGKILL: no goodbye on the connection) just before the walk's third read, on the read
# path in use: the gdbstub (PhyMemMode) or /proc/<qemu>/mem (the fast path).
_HOOKS = {"off": ("gdb_xenpte.gdbcmd.live", "GdbStub", "read_memory"),
          "on": ("gdb_xenpte.sources.qemu_live", "QemuLiveSource", "_pread")}
_KILL_AT_THIRD_READ = (
    "python exec(\"import importlib, os, signal\\nn = [0]\\n"
    "C = getattr(importlib.import_module({module!r}), {cls!r})\\n_r = C.{method}\\n"
    "def _die(self, *a):\\n n[0] += 1\\n if n[0] == 3: os.kill({pid}, signal.SIGKILL)\\n"
    " return _r(self, *a)\\nC.{method} = _die\")")


@pytest.mark.parametrize("fast", ["off", "on"])
def test_qemu_killed_mid_walk_is_named_and_json_ends_with_a_summary(tmp_path, fast):
    with boot_oracle(4, tmp_path) as run:
        h = run.header
        regs = (f"--cr3 {h['cr3']:#x} --cr0 {h['final_cr0']:#x} --cr4 {h['final_cr4']:#x} "
                f"--efer {h['final_efer']:#x} --maxphyaddr {h['maxphyaddr']}")
        res = run_gdb(*connect_commands(run.vm.gdb_port), f"set xen-pte fast-path {fast}",
                      _KILL_AT_THIRD_READ.format(pid=run.vm.pid, module=_HOOKS[fast][0],
                                                 cls=_HOOKS[fast][1], method=_HOOKS[fast][2]),
                      f"xen-pte-walk --json --no-coalesce {regs}", timeout=300)
    text = res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "the target disappeared" in text, text[-3000:]
    assert "Packets can only be sent" not in text and "could not restore" not in text, text[-3000:]
    records = res.json_lines()
    assert records and records[-1]["type"] == "summary", res.stdout[-2000:]
    # The walk stops at the first read that finds the target gone (errors.SourceGone): its
    # summary names the error once, instead of one unreadable row per remaining table.
    assert "the target disappeared" in records[-1].get("error", ""), records[-1]
    assert len(records[-1]["unreadable"]) <= 1, records[-1]["unreadable"]
    assert [ln for ln in res.stderr.splitlines() if "disappeared" in ln][:1], res.stderr[-2000:]
