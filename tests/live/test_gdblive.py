"""The live QEMU source under the real gdb: PhyMemMode save/restore, the /proc fast path.

One oracle guest (tests/guests/oracle: long mode, real page tables, halted) is booted for the
module. QEMU's PhyMemMode is global gdbstub state that outlives a gdb session, so every test
checks it from a *fresh* gdb afterwards: restored after a walk that succeeded, failed, or was
interrupted (Ctrl-C arrives in Python as KeyboardInterrupt). The fast path must give the bytes
QEMU's own ``pmemsave`` gives, and a live walk the records a walk of the RAM image gives.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.gdb.gdbrun import DEPS, GDB, LOADER, ROOT, run_gdb
from tests.targets.gdb import connect_commands
from tests.targets.oracle import boot_oracle
from tests.targets.qemu import Qemu

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    with boot_oracle(4, tmp_path_factory.mktemp("gdblive")) as run:
        yield run


def _regs(guest):
    h = guest.header
    return (f"--cr3 {h['cr3']:#x} --cr0 {h['final_cr0']:#x} --cr4 {h['final_cr4']:#x} "
            f"--efer {h['final_efer']:#x} --maxphyaddr {h['maxphyaddr']}")


def _live(guest, *commands, **kw):
    return run_gdb(*connect_commands(guest.vm.gdb_port), *commands, **kw)


def _mode(guest) -> str:
    """PhyMemMode as QEMU has it now, asked by a fresh gdb."""
    res = run_gdb(*connect_commands(guest.vm.gdb_port),
                  "maintenance packet qqemu.PhyMemMode", load=False)
    return res.stdout.rsplit('received: "', 1)[1].split('"')[0]


def _set_mode(guest, mode: str) -> None:
    run_gdb(*connect_commands(guest.vm.gdb_port), f"maintenance packet Qqemu.PhyMemMode:{mode}",
            load=False)
    assert _mode(guest) == mode


SNIPPET = r'''
import gdb, json, time
from gdb_xenpte.gdbcmd.live import open_live_source
out = {}
for fast in (True, False):
    src = open_live_source(fast=fast)
    with src:
        t = time.perf_counter()
        data = b"".join(src.read(a, 4096) for a in range(0x100000, 0x100000 + (256 << 12), 4096))
        per_page = (time.perf_counter() - t) / 256
        low = src.read(0, 0x1000)
    out["fast" if fast else "slow"] = {"path": src.path, "describe": src.describe(),
        "pid": src.pid, "us_per_4k": per_page * 1e6, "data": data.hex(), "low": low.hex(),
        "ranges": src.ranges()}
    src.close()
print(json.dumps(out))
'''


def test_fast_path_finds_qemu_from_the_connection_and_reads_identical_bytes(guest, tmp_path):
    # A second QEMU runs meanwhile: the pid must come from gdb's connection, not from pgrep.
    with Qemu(memory="32M", workdir=tmp_path) as other:
        got = _snippet(guest)
        assert other.pid != guest.vm.pid
    fast, slow = got["fast"], got["slow"]
    assert fast["path"] == f"/proc/{guest.vm.pid}/mem" and fast["pid"] == guest.vm.pid
    assert "(fast path)" in fast["describe"]
    assert slow["path"] == "PhyMemMode" and "fast path off (xen-pte fast-path)" in slow["describe"]
    expected = guest.vm.pmemsave(0x100000, 256 << 12)
    assert bytes.fromhex(fast["data"]) == expected
    assert bytes.fromhex(slow["data"]) == expected
    assert fast["low"] == slow["low"]
    # RAM layout from `info mtree -f`: the first block starts at 0, the IOAPIC is no memory
    assert fast["ranges"][0][0] == 0 and not any(s <= 0xFEC00000 < e for s, e in fast["ranges"])
    print(f"\nper 4 KiB: /proc {fast['us_per_4k']:.1f} us, PhyMemMode {slow['us_per_4k']:.1f} us")
    assert fast["us_per_4k"] < slow["us_per_4k"]
    assert _mode(guest) == "0"


def _snippet(guest):
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(SNIPPET)
    try:
        res = _live(guest, f"source {f.name}")
    finally:
        os.unlink(f.name)
    assert res.returncode == 0, res.stderr
    return json.loads([ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1])


def test_live_walk_equals_the_walk_of_the_ram_image(guest):
    regs = _regs(guest)
    live = _live(guest, f"xen-pte-walk --json {regs}").json_lines()
    image = run_gdb(f"xen-pte-walk --json --raw {guest.ram_path}@0 {regs}").json_lines()
    maps = lambda recs: [r for r in recs if r["type"] == "mapping"]
    assert maps(live) and maps(live) == maps(image)
    assert "/proc/" in live[0]["source"]
    slow = _live(guest, "set xen-pte fast-path off", f"xen-pte-walk --json {regs}").json_lines()
    assert maps(slow) == maps(live) and "PhyMemMode" in slow[0]["source"]
    assert _mode(guest) == "0"


@pytest.mark.parametrize("before", ["0", "1"])
def test_mode_restored_after_success(guest, before):
    _set_mode(guest, before)
    try:
        res = _live(guest, "set xen-pte fast-path off", f"xen-pte-walk {_regs(guest)}")
        assert res.returncode == 0 and "mappings;" in res.stdout, res.stderr
        assert _mode(guest) == before
    finally:
        _set_mode(guest, "0")


def test_mode_restored_after_error(guest):
    # A read fails with an unexpected error in the middle of the walk (after the mode switched).
    res = _live(guest, "set xen-pte fast-path off",
                "python from gdb_xenpte.gdbcmd import live as L; n = [0]; "
                "_r = L.GdbStub.read_memory",
                "python exec('def _bad(self, a, s):\\n n[0] += 1\\n if n[0] == 3: raise "
                "RuntimeError(\"boom\")\\n return _r(self, a, s)'); L.GdbStub.read_memory = _bad",
                f"xen-pte-walk {_regs(guest)}")
    assert "boom" in res.stderr
    assert _mode(guest) == "0"


def test_mode_restored_after_interrupt(guest):
    res = _live(guest, "set xen-pte fast-path off",
                "python from gdb_xenpte.gdbcmd import live as L; n = [0]; "
                "_r = L.GdbStub.read_memory",
                "python exec('def _int(self, a, s):\\n n[0] += 1\\n if n[0] == 3: raise "
                "KeyboardInterrupt\\n return _r(self, a, s)'); L.GdbStub.read_memory = _int",
                f"xen-pte-walk --json {_regs(guest)}")
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("xen-pte-walk")]
    assert errors == ["xen-pte-walk: interrupted"] and "Traceback" not in res.stderr
    assert res.json_lines()[-1]["interrupted"] is True
    assert _mode(guest) == "0"


# Walks over and over through PhyMemMode. A SIGINT that lands between two walks (in this loop or
# in gdb's own dispatch, outside our command) is ignored so that the test can signal again; one
# that lands in a walk ends the loop with the command's own message.
_SIGINT_LOOP = """\
import sys
import gdb
while True:
    try:
        gdb.execute({command!r}, to_string=True)
    except gdb.error as err:
        print(err, file=sys.stderr)
        break
    except KeyboardInterrupt:
        pass
"""


def test_mode_restored_after_a_real_sigint(guest, tmp_path):
    # SIGINT as Ctrl-C would send it, until one lands inside a walk.
    script = tmp_path / "sigint_loop.py"
    script.write_text(_SIGINT_LOOP.format(command=f"xen-pte-walk --json {_regs(guest)}"))
    argv = [GDB, "-batch", "-nx", "-iex", f"python import sys; sys.path[:0] = "
            f"{[str(ROOT), str(DEPS)]!r}", "-ex", f"source {LOADER}"]
    for c in connect_commands(guest.vm.gdb_port) + ["set xen-pte fast-path off",
                                                    f"source {script}"]:
        argv += ["-ex", c]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    time.sleep(3)
    assert proc.poll() is None, proc.communicate()
    for _ in range(50):
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        proc.kill()
        pytest.fail(f"50 SIGINTs did not stop a walk: {proc.communicate()[1][-2000:]}")
    assert "xen-pte-walk: interrupted" in err, err  # the walk stopped cleanly
    assert "Traceback" not in err
    assert _mode(guest) == "0"


def test_reads_outside_guest_ram_are_reported(guest):
    res = _live(guest, f"xen-pte-walk {_regs(guest)} --cr3 0x80000000 0x1000")
    assert "outside guest RAM at physical address 0x80000000" in res.stdout + res.stderr
    assert "Traceback" not in res.stderr


def test_direct_map_source_reads_tables_through_guest_virtual_memory(guest):
    # The oracle guest identity-maps its first 16 MiB (VA == PA), where its tables live: a walk
    # through that "direct map" with gdb's ordinary (virtual) reads equals the physical walk.
    regs = _regs(guest)
    phys = _live(guest, f"xen-pte-walk --json {regs}").json_lines()
    virt = _live(guest, f"xen-pte-walk --json --direct-map 0 {regs}").json_lines()
    maps = lambda recs: [r for r in recs if r["type"] == "mapping"]
    assert maps(virt) == maps(phys)
    assert virt[0]["source"].startswith("direct map at 0x0")
    assert _mode(guest) == "0"


@pytest.mark.slow
def test_direct_map_with_m2p_on_a_real_pv_dom0(tmp_path):
    """Xen 4.17 + 64-bit PV dom0: reading dom0's tables through its direct map (PFN space) and
    translating every frame MFN -> PFN through Xen's read-only M2P gives the same entries as the
    physical walk, with PAs in dom0's PFN space instead of machine addresses."""
    import struct
    from tests.targets.gdb import GdbMi
    from tests.targets.livewalk import load_extension, run_to_file
    from tests.targets.xen import boot_xen
    walk = "xen-pte-walk --json --domain pv64 --xen 4.17 0xffffffff80000000 0xffffffffa0000000"
    direct_map = "--direct-map 0xffff888000000000"  # Linux's page_offset_base (no KASLR in PV)
    with boot_xen(tmp_path, extra_args=["-smp", "2"],
                  xen_args=["dom0_max_vcpus=1", "dom0_vcpus_pin"]) as guest:
        time.sleep(1.0)
        for _attempt in range(20):
            with GdbMi(guest.vm.gdb_port, timeout=300) as gdb:
                gdb.cli("thread 1")
                cr3 = gdb.evaluate("$cr3") & ~0xFFF
                # a kernel L4 (slot 511 maps the kernel image); a user L4 of PV64 has none
                if struct.unpack("<Q", guest.vm.pmemsave(cr3 + 8 * 511, 8))[0] & 1:
                    load_extension(gdb)
                    run_to_file(gdb, walk, tmp_path / "phys.jsonl")
                    run_to_file(gdb, f"{walk} {direct_map}", tmp_path / "dm.jsonl")
                    break
            time.sleep(0.3)
        else:
            pytest.fail("pCPU 0 never stopped with a dom0 kernel L4 in CR3")
    phys, dm = ([json.loads(ln) for ln in open(tmp_path / f"{n}.jsonl")] for n in ("phys", "dm"))
    assert dm[0]["source"].startswith("direct map at 0xffff888000000000, M2P at "
                                      "0xffff800000000000")
    keys = ("va", "size", "level", "flags", "effective", "xen_bits", "verdicts")
    same = lambda recs: [({k: r[k] for k in keys}, [e["raw"] for e in r["entries"]])
                         for r in recs if r["type"] == "mapping"]
    assert same(dm) and same(dm) == same(phys)
    pas = [(p["pa"], d["pa"]) for p, d in zip(phys, dm) if p["type"] == "mapping"]
    assert all(d is not None and d != p for p, d in pas)  # machine -> pseudo-physical
    assert dm[-1]["unreadable"] == [] and dm[-1]["counts"]["pages"] > 1000


def test_extended_remote_connections_work_too(guest):
    res = run_gdb("set architecture i386:x86-64",
                  f"target extended-remote 127.0.0.1:{guest.vm.gdb_port}",
                  f"xen-pte-walk --json {_regs(guest)} --limit 1", "detach")
    recs = res.json_lines()
    assert recs and "/proc/" in recs[0]["source"], res.stderr
    assert _mode(guest) == "0"


def test_readme_live_qemu_examples(guest):
    """Issue 14: the README's live block runs as written (its `target remote :1234` aimed at
    this guest's port): no error line, no traceback, each command prints."""
    from tests.readme_examples import gdb_lines
    lines = gdb_lines("Live QEMU")
    assert lines[0] == "target remote :1234", lines
    res = _live(guest, *[f"echo @@{ln}\\n" if i % 2 else ln for ln in lines[1:]
                         for i in (1, 0)])
    # gdb's own warnings about connecting without a file are not ours.
    errors = [ln for ln in res.stderr.splitlines() if ln.strip()
              and not ln.startswith(("warning: No executable", "determining executable"))]
    assert not errors and "Traceback" not in res.stdout, errors
    outputs = res.stdout.split("@@")[1:]
    assert len(outputs) == len(lines) - 1
    for text in outputs:
        command, _, printed = text.partition("\n")
        assert printed.strip(), f"{command!r} printed nothing"
