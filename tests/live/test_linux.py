"""Debian's Linux 6.1 under QEMU TCG: our live walk against QEMU's own, and dumps against live.

For each paging mode (``-cpu max``: 5-level; ``-cpu max,la57=off``: 4-level) one guest is booted
per session. With the guest stopped under gdb, the test session

1. runs ``xen-pte-walk --no-coalesce --json`` live (QEMU gdbstub source),
2. asks QEMU for ``info tlb`` (its own walk of the same CR3),
3. takes ``dump-guest-memory`` as an ELF core (no ``-p``) and as a ``-z`` kdump, and walks both
   with ``xen-pte-walk --core``,

then compares: every present leaf QEMU prints must be one of ours with the same PA and flags, and
vice versa (aliases included: counts match exactly); every mapping record of the dump walks must
equal the live one field by field (VA, PA, entries, flags, rights, verdicts...). The ELF dump is
also walked the default way (coalesced runs, repeat records) and with ``--phys`` for every vCPU,
next to ``info tlb`` of that vCPU (issue 15: few records, and they expand to QEMU's leaves).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import pytest

from gdb_xenpte.arch import CR4
from targets.gdb import GdbMi
from targets.linux import boot_linux
from targets.livewalk import WalkOutput, compare_walks, load_extension, read_walk, run_to_file
from targets.tlb import compare, compare_expanded, parse_info_tlb

pytestmark = [pytest.mark.live, pytest.mark.slow]

WALK = "xen-pte-walk --no-coalesce --json"
# Issue 15: the default walk of a real Linux dump (every vCPU) is at most this many records.
MAX_DEFAULT_RECORDS = 1000


@dataclass
class LinuxCapture:
    """Everything taken from one stopped Linux guest."""

    la57: bool
    boot_seconds: float
    registers: Dict[str, int] = field(default_factory=dict)
    tlb_text: str = ""
    live: Optional[WalkOutput] = None
    dumps: Dict[str, WalkOutput] = field(default_factory=dict)  # "elf", "kdump"
    leftover: Optional[WalkOutput] = None  # walked after `set xen-pte xen-version 4.17`
    default: Optional[WalkOutput] = None  # the default (coalesced) walk
    cr4_text: str = ""  # `xen-cr4` with nothing naming Xen
    check: List[dict] = field(default_factory=list)  # `xen-pte-check --json`
    # Per vCPU of the ELF dump: `info tlb` with that CPU current, and the default / --phys walks.
    tlb_by_cpu: Dict[int, str] = field(default_factory=dict)
    dump_default: Dict[int, WalkOutput] = field(default_factory=dict)
    dump_phys: Dict[int, WalkOutput] = field(default_factory=dict)
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
            # Issue 13: a setting left from a Xen session must not rewrite what the CPU shows.
            gdb.cli("set xen-pte xen-version 4.17")
            files["leftover"] = workdir / "leftover.jsonl"
            run_to_file(gdb, WALK, files["leftover"])
            gdb.cli("set xen-pte xen-version auto")
            files["default"] = workdir / "default.jsonl"
            run_to_file(gdb, "xen-pte-walk --json", files["default"])
            files["check"] = workdir / "check.jsonl"
            run_to_file(gdb, "xen-pte-check --json", files["check"])
            cap.cr4_text = gdb.cli("xen-cr4")
            start = time.monotonic()
            cap.tlb_text = vm.monitor("info tlb", timeout=300)
            cap.seconds["info tlb"] = time.monotonic() - start
            cpus = re.findall(r"CPU #(\d+)", vm.monitor("info cpus"))
            for cpu in map(int, cpus):
                vm.monitor(f"cpu {cpu}")
                cap.tlb_by_cpu[cpu] = vm.monitor("info tlb", timeout=300)
            vm.monitor(f"cpu {cpus[0]}")
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
                if kind == "elf":
                    for cpu in cap.tlb_by_cpu:
                        for how, opts in (("default", ""), ("phys", " --phys")):
                            files[(how, cpu)] = workdir / f"{how}-{cpu}.jsonl"
                            run_to_file(gdb, f"xen-pte-walk --json{opts} --core {dump} "
                                        f"--vcpu {cpu}", files[(how, cpu)])
                dump.unlink()  # ~512 MB for the ELF: never leave it behind
    # QEMU is gone by now: reading the outputs does not keep a guest alive.
    cap.live = read_walk(files.pop("live"))
    cap.leftover = read_walk(files.pop("leftover"))
    cap.default = read_walk(files.pop("default"))
    cap.check = [json.loads(ln) for ln in files.pop("check").read_text().splitlines() if ln]
    for cpu in cap.tlb_by_cpu:
        cap.dump_default[cpu] = read_walk(files.pop(("default", cpu)))
        cap.dump_phys[cpu] = read_walk(files.pop(("phys", cpu)))
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


def test_leftover_xen_setting_keeps_what_the_cpu_shows(linux_capture):
    """Issue 13: after `set xen-pte xen-version 4.17` a bare Linux guest is still walked with
    the CR4 the CPU runs (5-level stays 5-level), leaf for leaf as QEMU's info tlb; the header
    names the setting, and, where an HVM guest of Xen 4.17 could not have set a bit it has
    (LA57), the contradiction."""
    walk, regs = linux_capture.leftover, linux_capture.registers
    assert walk.header["mode"] == linux_capture.label
    assert int(walk.header["effective_cr4"], 16) == regs["cr4"]
    notes = walk.header["notes"]
    assert any("xen-version 4.17 from `set xen-pte xen-version`" in n for n in notes), notes
    if linux_capture.la57:
        assert any("LA57" in n and "contradicts" in n for n in notes), notes
    result = compare(walk.leaves(), parse_info_tlb(linux_capture.tlb_text))
    assert result.agree, result.report()


def test_xen_cr4_on_bare_linux_says_no_xen_policy_applies(linux_capture):
    """Issue 13: nothing names Xen, so xen-cr4 shows the CPU's own CR4 bit by bit."""
    text, cr4 = linux_capture.cr4_text, linux_capture.registers["cr4"]
    assert text.startswith("no Xen policy applies"), text[:300]
    assert f"effective CR4 {cr4:#x} " in text
    la57 = "LA57=1: read from the CPU" if linux_capture.la57 else "LA57=0: clear in the CPU"
    assert la57 in text, text


def test_healthy_linux_has_no_alarms(linux_capture):
    """Issue 14: the guest chose SMEP/SMAP/PKE itself: no #PF-loop finding, nothing counted as
    faulting beyond its own choices, while its own protections are still counted per class."""
    counts = linux_capture.default.summary["counts"]
    assert counts["faulting"] == 0 and counts["fault_classes"]["imposed"] == 0, counts
    assert counts["fault_classes"]["guest"] + counts["fault_classes"]["conditional"] > 0, counts
    assert linux_capture.default.header["domain"] == "native"
    assert not [r for r in linux_capture.check if r.get("category") == "pf-loop"]
    assert linux_capture.check[-1]["type"] == "summary"


def test_default_dump_walk_is_compact_and_expands_to_info_tlb(linux_capture):
    """Issue 15: on the ELF dump, every vCPU's default walk is at most MAX_DEFAULT_RECORDS records
    (espfix's 65,536 aliases are one repeat record), and expanding its runs and repeat copies gives
    QEMU's leaves of that vCPU: every VA once, leaf flags, PA wherever a record gives it (A/D and
    scattered frames as the record claims them). With --phys every run is PA-contiguous, so every
    leaf's PA is checked."""
    assert linux_capture.tlb_by_cpu, "no vCPU listed by info cpus"
    for cpu, tlb_text in linux_capture.tlb_by_cpu.items():
        theirs = parse_info_tlb(tlb_text)
        for how, walk in (("default", linux_capture.dump_default[cpu]),
                          ("--phys", linux_capture.dump_phys[cpu])):
            result = compare_expanded(map(json.loads, walk.mappings), theirs)
            print(f"\n{linux_capture.label} vCPU {cpu} {how}: {result.report()}")
            assert walk.header["mode"] == linux_capture.label
            assert result.agree, result.report()
            if how == "--phys":
                assert result.pa_checked == len(theirs), result.report()
        records = len(linux_capture.dump_default[cpu].mappings)
        assert records <= MAX_DEFAULT_RECORDS, f"vCPU {cpu}: {records} records"
