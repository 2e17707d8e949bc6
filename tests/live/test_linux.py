"""Debian's Linux 6.1 under QEMU TCG: our live walk against QEMU's own, and dumps against live.

For each paging mode (``-cpu max``: 5-level; ``-cpu max,la57=off``: 4-level) one guest is booted
per session. With the guest stopped under gdb, the test session

1. runs ``xen-pte-walk --no-coalesce --json`` live (QEMU gdbstub source),
2. asks QEMU for ``info tlb`` (its own walk of the same CR3),
3. takes ``dump-guest-memory`` as an ELF core (no ``-p``) and as a ``-z`` kdump, and walks both
   with ``xen-pte-walk --core``,

then compares: every present leaf QEMU prints must be one of ours with the same PA and flags, and
vice versa (aliases included: counts match exactly); every mapping record of the dump walks must
equal the live one field by field (VA, PA, entries, flags, rights, verdicts...).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, Optional

import pytest

from gdb_xenpte.arch import CR4
from targets.gdb import GdbMi
from targets.linux import boot_linux
from targets.livewalk import WalkOutput, compare_walks, load_extension, read_walk, run_to_file
from targets.tlb import compare, parse_info_tlb

pytestmark = [pytest.mark.live, pytest.mark.slow]

WALK = "xen-pte-walk --no-coalesce --json"


@dataclass
class LinuxCapture:
    """Everything taken from one stopped Linux guest."""

    la57: bool
    boot_seconds: float
    registers: Dict[str, int] = field(default_factory=dict)
    tlb_text: str = ""
    live: Optional[WalkOutput] = None
    dumps: Dict[str, WalkOutput] = field(default_factory=dict)  # "elf", "kdump"
    seconds: Dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "5-level" if self.la57 else "4-level"


@pytest.fixture(scope="session", params=[True, False], ids=["5level", "4level"])
def linux_capture(request, tmp_path_factory) -> LinuxCapture:
    """Boot Linux once per mode, stop it under gdb, and take the live walk, info tlb and dumps."""
    la57 = request.param
    workdir = tmp_path_factory.mktemp("linux5" if la57 else "linux4")
    with boot_linux(workdir, la57=la57) as guest:
        vm = guest.vm
        time.sleep(1.0)  # let init's sleep loop get going: stop in a running system
        cap = LinuxCapture(la57, guest.boot_seconds)
        files = {}
        with GdbMi(vm.gdb_port, timeout=120) as gdb:
            load_extension(gdb)
            cap.registers = {r: gdb.evaluate(f"${r}") for r in ("cr0", "cr3", "cr4", "efer")}
            files["live"] = workdir / "live.jsonl"
            cap.seconds["live walk"] = run_to_file(gdb, WALK, files["live"])
            start = time.monotonic()
            cap.tlb_text = vm.monitor("info tlb", timeout=300)
            cap.seconds["info tlb"] = time.monotonic() - start
            # Dumps are taken while gdb holds the guest stopped: same state as the live walk.
            for kind, flag in (("elf", ""), ("kdump", "-z ")):
                dump = workdir / f"guest.{kind}"
                start = time.monotonic()
                reply = vm.monitor(f"dump-guest-memory {flag}{dump}", timeout=300)
                cap.seconds[f"dump {kind}"] = time.monotonic() - start
                assert dump.exists(), f"dump-guest-memory {flag}failed: {reply!r}"
                files[kind] = workdir / f"{kind}.jsonl"
                cap.seconds[f"{kind} walk"] = run_to_file(gdb, f"{WALK} --core {dump}",
                                                          files[kind])
                dump.unlink()  # ~512 MB for the ELF: never leave it behind
    # QEMU is gone by now: reading the outputs does not keep a guest alive.
    cap.live = read_walk(files.pop("live"))
    cap.dumps = {kind: read_walk(path) for kind, path in files.items()}
    print(f"\nLinux {cap.label}: boot {guest.boot_seconds:.1f} s; " +
          ", ".join(f"{k} {v:.1f} s" for k, v in cap.seconds.items()))
    return cap


def test_paging_mode_and_protections(linux_capture):
    """The guest runs the paging mode the CPU model selects, with SMEP, SMAP and PKE on."""
    regs = linux_capture.registers
    assert bool(regs["cr4"] & CR4.LA57) == linux_capture.la57, hex(regs["cr4"])
    for bit in (CR4.SMEP, CR4.SMAP, CR4.PKE):
        assert regs["cr4"] & bit, f"CR4 {regs['cr4']:#x} lacks {CR4.NAMES[bit]}"
    header, summary = linux_capture.live.header, linux_capture.live.summary
    assert header["mode"] == linux_capture.label
    assert int(header["cr3"], 16) == regs["cr3"]
    assert int(header["effective_cr4"], 16) == regs["cr4"]  # HVM-style: no Xen in between
    assert not summary["unreadable"] and not summary["budget_hit"], summary


def test_live_walk_equals_info_tlb(linux_capture):
    """Every present leaf: our VA, PA and leaf flags equal QEMU's; counts match exactly."""
    theirs = parse_info_tlb(linux_capture.tlb_text)
    result = compare(linux_capture.live.leaves(), theirs)
    print(f"\n{linux_capture.label} live vs info tlb: {result.report(0)}")
    assert not linux_capture.live.stops(), linux_capture.live.stops()[:3]
    assert len(theirs) > 10_000, "QEMU printed suspiciously few leaves"
    assert result.agree, result.report()


@pytest.mark.parametrize("kind", ["elf", "kdump"])
def test_dump_walk_equals_live(linux_capture, kind):
    """The offline walk of each dump equals the live walk, record by record."""
    live, walk = linux_capture.live, linux_capture.dumps[kind]
    assert not walk.summary["unreadable"], walk.summary["unreadable"][:3]
    assert walk.header["mode"] == live.header["mode"]
    assert int(walk.header["cr3"], 16) == int(live.header["cr3"], 16)
    equal, problems = compare_walks(live, walk)
    print(f"\n{linux_capture.label} {kind} vs live: {len(live.mappings)} live records, "
          f"{len(walk.mappings)} from the dump, {equal} equal")
    assert not problems, "\n".join(problems)
