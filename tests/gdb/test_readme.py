"""Issue 14: the README's examples run as written.

Files the examples name (guest.elf, guest.kdump, domu.core, mem.bin) are written here with the
shapes the text promises (a QEMU ELF and a kdump-compressed dump with two vCPUs, an xl dump-core
file, a raw image whose tables start at 0x1000), and each block's commands run in one gdb whose
working directory holds them. Live blocks run in tests/live (test_gdblive.py, test_xen_dom0.py),
the batch block in tests/batch/test_readme_batch.py.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "sources"))

from builder import A, Builder, G, NX, P, RW, US  # noqa: E402
from gdbrun import run_gdb  # noqa: E402
from readme_examples import CLAIMED, blocks, gdb_lines, inline_commands, shell_lines  # noqa: E402
from writers import write_kdump, write_qemu_elf, write_raw, write_xc_core  # noqa: E402

CR4 = 0x3006A0


def _guest(table_base=0x100000):
    b = Builder("4level", table_base=table_base)
    b.map(0x400000, 0x200000, flags=P | RW | US | A)
    b.map(0xFFFFFFFF81000000, 0x300000, size=1 << 21, flags=P | RW | G | A)
    b.map(0x7F0000000000, 0x400000, flags=P | RW | US | NX | A)
    return b


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("readme")
    b = _guest()
    pages = {a: bytes(p) for a, p in b.image().items()}
    vcpus = [dict(cr0=0x80050033, cr3=b.cr3, cr4=CR4, rip=0xFFFFFFFF81000000, rflags=0x246,
                  cs=0x10, cs_flags=0xA09B00, efer=0xD01),
             dict(cr0=0x80050033, cr3=b.cr3, cr4=CR4, rip=0x400000, rflags=0x202, cs=0x33,
                  cs_flags=0xA0FB00, efer=0xD01)]
    write_qemu_elf(d / "guest.elf", pages, vcpus)
    write_kdump(d / "guest.kdump", pages, vcpus)
    write_xc_core(d / "domu.core", pages, [dict(cr3=b.cr3, cr4=CR4)], kind="hvm",
                  shared_info=None)
    low = _guest(table_base=0x1000)
    write_raw(d / "mem.bin", {a: bytes(p) for a, p in low.image().items()})
    return d


def _run_in(d, commands):
    cwd = os.getcwd()
    os.chdir(d)
    try:
        return run_gdb(*commands)
    finally:
        os.chdir(cwd)


def _clean(res):
    errors = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert not errors and "Traceback" not in res.stdout, errors or res.stdout[-2000:]
    return res.stdout


def test_every_example_block_is_run_by_a_test():
    assert set(blocks()) == set(CLAIMED), set(blocks()) ^ set(CLAIMED)


def test_qemu_dump_examples(files):
    lines = gdb_lines("A QEMU dump")
    assert lines and all(ln.startswith("xen-pte-walk") for ln in lines)
    out = _clean(_run_in(files, lines))
    assert "0x0000000000400000" in out
    recs = [json.loads(ln) for ln in (files / "walk.jsonl").read_text().splitlines()]
    assert recs[0]["type"] == "header" and recs[0]["vcpu"] == 1 and recs[-1]["type"] == "summary"


def test_xl_dump_core_examples(files):
    out = _clean(_run_in(files, gdb_lines("An `xl dump-core` file")))
    assert "effective CR4" in out and "0x0000000000400000" in out


def test_inline_examples(files):
    commands = inline_commands()
    assert any("--raw mem.bin@0x0" in c for c in commands), commands
    out = _clean(_run_in(files, commands))
    assert "0x0000000000400000" in out


def test_two_commands_as_written(tmp_path):
    """The install line's gdb part (the package is installed by .ci/run's pip install)."""
    (line,) = shell_lines("Two commands")[:1]
    assert line.startswith("pip install . && gdb ")
    if shutil.which("xen-pte-gdbinit") is None:
        pytest.skip("xen-pte-gdbinit not installed (bash .ci/run installs it)")
    res = subprocess.run(["bash", "-c", line.split(" && ", 1)[1]], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0 and "Traceback" not in res.stdout + res.stderr, res.stderr
    assert "mappings" in res.stdout and "pml4" in res.stdout


def test_load_it_into_gdb_as_written(tmp_path):
    """`xen-pte-gdbinit >> ~/.gdbinit`, then a plain gdb (reading ~/.gdbinit) has the commands."""
    lines = shell_lines("Load it into gdb")
    assert lines == ["xen-pte-gdbinit >> ~/.gdbinit"], lines
    if shutil.which("xen-pte-gdbinit") is None:
        pytest.skip("xen-pte-gdbinit not installed (bash .ci/run installs it)")
    env = dict(os.environ, HOME=str(tmp_path))
    subprocess.run(["bash", "-c", lines[0]], check=True, env=env, timeout=60)
    res = subprocess.run(["gdb", "-batch", "-iex", "set auto-load safe-path /", "-ex",
                          "help xen-pte-walk"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.stdout.startswith("Walk the guest page tables"), res.stdout[:300] + res.stderr
