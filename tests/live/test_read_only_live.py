"""Read-only guarantee (issue 7) on a live guest: walks, traces and checks over both read paths
(/proc fast path and PhyMemMode) leave guest RAM byte-identical (QEMU ``pmemsave`` before and after)
and PhyMemMode as it was. The static audit is tests/unit/test_read_only.py.
"""

from __future__ import annotations

import hashlib

import pytest


@pytest.mark.live
def test_live_walks_leave_guest_ram_and_phymemmode_unchanged(tmp_path):
    from tests.gdb.gdbrun import run_gdb
    from tests.targets.gdb import connect_commands
    from tests.targets.oracle import RAM_BYTES, boot_oracle

    def phymemmode(vm) -> str:
        res = run_gdb(*connect_commands(vm.gdb_port), "maintenance packet qqemu.PhyMemMode",
                      load=False)
        return res.stdout.rsplit('received: "', 1)[1].split('"')[0]

    with boot_oracle(4, tmp_path) as run:
        vm, h = run.vm, run.header
        regs = (f"--cr3 {h['cr3']:#x} --cr0 {h['final_cr0']:#x} --cr4 {h['final_cr4']:#x} "
                f"--efer {h['final_efer']:#x} --maxphyaddr {h['maxphyaddr']}")
        ram_before = hashlib.sha256(vm.pmemsave(0, RAM_BYTES)).hexdigest()
        mode_before = phymemmode(vm)
        commands = []
        for fast in ("on", "off"):
            commands += [f"set xen-pte fast-path {fast}", f"xen-pte-walk {regs}",
                         f"xen-pte-walk {regs} --json --no-coalesce",
                         f"xen-pte-walk {regs} 0x1000", f"xen-pte-check {regs}",
                         "xen-cr4"]
        res = run_gdb(*connect_commands(vm.gdb_port), *commands, "detach", timeout=600)
        assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
        assert "/proc/" in res.stdout and "PhyMemMode" in res.stdout  # both paths were used
        assert hashlib.sha256(vm.pmemsave(0, RAM_BYTES)).hexdigest() == ram_before
        assert phymemmode(vm) == mode_before
