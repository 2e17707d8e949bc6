"""Xen 4.17 with Debian's Linux 6.1 as 64-bit PV dom0: our live walk of dom0's L4 against QEMU.

One machine is booted per session with two pCPUs; dom0 has one vCPU pinned to pCPU 0
(``dom0_max_vcpus=1 dom0_vcpus_pin``), so

* pCPU 0 always holds dom0's context: stopped in dom0 or in Xen's idle loop (Xen switches to the
  idle vCPU lazily), its CR3 is one of dom0's L4 tables and its CR4 is the PV-context CR4;
* pCPU 1 only ever runs Xen's idle vCPU: its CR4 is Xen's own (``mmu_cr4_features``).

With the machine stopped under gdb, ``xen-pte-walk --no-coalesce --json --domain pv64 --xen 4.17``
walks dom0's kernel L4 live, and QEMU's ``info tlb`` walks the same CR3. The tests check leaf for
leaf agreement, ``_PAGE_GUEST_KERNEL`` (bit 52) with U=1 on every dom0 kernel leaf, Xen's labels on
L4 slots 256-271, no SMEP/SMAP verdict against the CPL3 kernel, and the effective CR4 against the
CPU's. A ``dump-guest-memory`` (ELF) taken at the same stop is walked the default way (coalesced
runs, repeat records) and with ``--phys`` for pCPU 0: few records, expanding to QEMU's leaves
(issue 15).
"""

from __future__ import annotations

import json
import re
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List

import pytest

from gdb_xenpte import xen
from gdb_xenpte.arch import CR4
from readme_examples import gdb_lines
from targets.gdb import GdbError, GdbMi
from targets.initramfs import default_init_script
from targets.livewalk import WalkOutput, load_extension, read_walk, run_to_file
from targets.tlb import Leaf, compare, compare_expanded, leaf_from_record, parse_info_tlb
from targets.xen import boot_xen

pytestmark = [pytest.mark.live, pytest.mark.slow]

WALK = "xen-pte-walk --no-coalesce --json --domain pv64 --xen 4.17"
FLAT_RING3_CS64 = 0xE033  # dom0 kernel and user code run at CPL3 (xen-x86_64.h)
XEN_SLOTS = range(256, 272)
KERNEL_TEXT_SLOT = 511  # Linux's kernel image at 0xffffffff80000000: only in kernel L4s
GUEST_KERNEL = "_PAGE_GUEST_KERNEL"
# Issue 15: the default walk of dom0's L4 in a real dump is at most this many records.
MAX_DEFAULT_RECORDS = 2000
REGS = ("cs", "rip", "cr0", "cr3", "cr4", "efer")
# dom0 reports whether its kernel enabled FSGSBASE: a 64-bit PV guest's choice that Xen copies into
# the hardware CR4 of its context (pv_make_cr4), which the host cannot see otherwise.
FSGSBASE_REPORT = ('grep -qw fsgsbase /proc/cpuinfo && echo "XENPTE-DOM0-FSGSBASE=1" || '
                   'echo "XENPTE-DOM0-FSGSBASE=0"')


@dataclass
class XenCapture:
    """What one stop of the Xen machine gave, digested (the 300 MB walk output is not kept)."""

    boot_seconds: float
    cpu0: Dict[str, int] = field(default_factory=dict)  # dom0's pCPU
    cpu1: Dict[str, int] = field(default_factory=dict)  # Xen's idle pCPU
    header: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    leaves: Dict[int, Leaf] = field(default_factory=dict)
    tlb_text: str = ""
    cr4_text: str = ""  # what `xen-cr4 --domain pv64 --xen 4.17` says live
    readme: Dict[str, str] = field(default_factory=dict)  # README's Xen block: line -> output
    serial: str = ""
    attempts: int = 0
    regions: Counter = field(default_factory=Counter)  # (region, property) -> leaf count
    offenders: Dict[str, List[str]] = field(default_factory=dict)  # check -> first few VAs
    seconds: Dict[str, float] = field(default_factory=dict)
    dump_walks: Dict[str, WalkOutput] = field(default_factory=dict)  # "default", "phys": pCPU 0


def _region(slot: int) -> str:
    if slot < 256:
        return "user"
    return "xen" if slot in XEN_SLOTS else "kernel"


def _digest(cap: XenCapture, mappings: List[str]) -> None:
    """One pass over the walk's records: QEMU's view of each leaf, and the per-region checks."""
    offenders: Dict[str, List[str]] = {}

    def offend(check: str, rec: dict) -> None:
        offenders.setdefault(check, [])
        if len(offenders[check]) < 5:
            offenders[check].append(f"{rec['va']} {rec['level']} raw "
                                    f"{rec['entries'][-1]['raw']} notes {rec['notes']}")

    for line in mappings:
        rec = json.loads(line)
        if rec.get("kind", "page") != "page":
            offend("not a page", rec)
            continue
        leaf = leaf_from_record(rec)
        cap.leaves[leaf.va] = leaf
        slot = rec["entries"][0]["index"]
        region = _region(slot)
        cap.regions[(region, "leaves")] += 1
        guest_kernel = GUEST_KERNEL in rec["xen_bits"]
        labels = [n for n in rec["notes"] if n.startswith("Xen L4 slot")]
        if region == "kernel":
            if not (guest_kernel and "US" in rec["flags"] and rec["effective"]["user"]):
                offend("kernel leaf without bit 52 and U=1", rec)
            if "G" in rec["flags"]:
                offend("kernel leaf with G", rec)
        elif region == "user" and guest_kernel:
            offend("user leaf with bit 52", rec)
        if region == "xen":
            if not any(l.startswith(f"Xen L4 slot {slot}:") for l in labels):
                offend("Xen slot leaf without its label", rec)
        elif labels:
            offend("guest leaf with a Xen slot label", rec)
        for kind, verdict in rec["verdicts"].items():
            if "SMEP" in verdict or "SMAP" in verdict:
                offend(f"SMEP/SMAP verdict ({kind})", rec)
    cap.offenders = offenders


def _bit_names(value: int) -> str:
    return ", ".join(CR4.NAMES.get(1 << b, f"bit {b}") for b in range(64) if value >> b & 1)


def _is_kernel_l4(vm, cr3: int) -> bool:
    """True if the L4 at ``cr3`` maps Linux's kernel image (a user L4 of PV64 does not)."""
    entry = struct.unpack("<Q", vm.pmemsave((cr3 & ~0xFFF) + 8 * KERNEL_TEXT_SLOT, 8))[0]
    return bool(entry & 1)


def _walk_dump(cap: XenCapture, vm, gdb: GdbMi, workdir) -> None:
    """Dump the stopped machine (ELF; gdb holds it, so the state of info tlb) and walk pCPU 0."""
    dump = workdir / "xen.elf"
    start = time.monotonic()
    reply = vm.monitor(f"dump-guest-memory {dump}", timeout=600)
    cap.seconds["dump elf"] = time.monotonic() - start
    assert dump.exists(), f"dump-guest-memory failed: {reply!r}"
    try:
        for how, opts in (("default", ""), ("phys", " --phys")):
            out = workdir / f"{how}.jsonl"
            cap.seconds[f"dump {how} walk"] = run_to_file(
                gdb, f"xen-pte-walk --json{opts} --domain pv64 --xen 4.17 --core {dump} "
                     f"--vcpu 0", out)
            cap.dump_walks[how] = read_walk(out)
    finally:
        dump.unlink()  # 2 GiB: never leave it behind


@pytest.fixture(scope="session")
def xen_capture(tmp_path_factory) -> XenCapture:
    """Boot Xen + dom0 once, stop it with dom0's kernel L4 in pCPU 0's CR3, and walk it."""
    workdir = tmp_path_factory.mktemp("xen")
    with boot_xen(workdir, extra_args=["-smp", "2"],
                  xen_args=["dom0_max_vcpus=1", "dom0_vcpus_pin"],
                  init_script=default_init_script(before_ready=FSGSBASE_REPORT)) as guest:
        vm = guest.vm
        cap = XenCapture(guest.boot_seconds)
        time.sleep(1.0)  # let dom0's init loop run
        walk_file = workdir / "live.jsonl"
        # In dom0 user mode (or Xen entered from it) CR3 is the process's *user* L4, which has
        # no kernel half: stop again until pCPU 0 holds a kernel L4 (idle or kernel: the norm).
        for cap.attempts in range(1, 21):
            with GdbMi(vm.gdb_port, timeout=120) as gdb:
                gdb.cli("thread 2")
                cap.cpu1 = {r: gdb.evaluate(f"${r}") for r in REGS}
                gdb.cli("thread 1")
                cap.cpu0 = {r: gdb.evaluate(f"${r}") for r in REGS}
                if not _is_kernel_l4(vm, cap.cpu0["cr3"]):
                    continue
                load_extension(gdb)
                cap.seconds["live walk"] = run_to_file(gdb, WALK, walk_file)
                start = time.monotonic()
                cap.tlb_text = vm.monitor("info tlb", timeout=300)
                cap.seconds["info tlb"] = time.monotonic() - start
                _walk_dump(cap, vm, gdb, workdir)
                cap.cr4_text = gdb.cli("xen-cr4 --domain pv64 --xen 4.17")
                for line in gdb_lines("A Xen host under QEMU"):  # the README, as written
                    try:
                        cap.readme[line] = gdb.cli(line, timeout=600)
                    except GdbError as err:
                        cap.readme[line] = f"ERROR: {err}"
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"pCPU 0 never stopped with a dom0 kernel L4 in CR3 "
                        f"(last CR3 {cap.cpu0.get('cr3', 0):#x}, CS {cap.cpu0.get('cs', 0):#x})")
        cap.serial = vm.serial_text()
    start = time.monotonic()
    walk = read_walk(walk_file)
    cap.header, cap.summary = walk.header, walk.summary
    _digest(cap, walk.mappings)
    del walk
    cap.seconds["digest"] = time.monotonic() - start
    print(f"\nXen + PV dom0: boot {cap.boot_seconds:.1f} s, {cap.attempts} stop(s); " +
          ", ".join(f"{k} {v:.1f} s" for k, v in cap.seconds.items()))
    return cap


def test_stopped_with_dom0_kernel_l4(xen_capture):
    """pCPU 0 runs dom0's context (Xen or CPL3 code); the walk is 4-level PV64, kernel CPL3."""
    cpu0, header = xen_capture.cpu0, xen_capture.header
    assert cpu0["cs"] in (0xE008, FLAT_RING3_CS64), hex(cpu0["cs"])  # Xen, or dom0 kernel
    assert int(header["cr3"], 16) == cpu0["cr3"]
    assert header["mode"] == "4-level" and header["domain"] == "pv64"
    assert header.get("kernel_cpl") == 3, header
    assert not xen_capture.summary["unreadable"] and not xen_capture.summary["budget_hit"]


def test_live_walk_equals_info_tlb(xen_capture):
    """Every present leaf under dom0's L4 (Xen's slots included): VA, PA, flags equal QEMU's."""
    theirs = parse_info_tlb(xen_capture.tlb_text)
    result = compare(xen_capture.leaves, theirs)
    print(f"\nXen dom0 live vs info tlb: {result.report(0)}")
    assert "not a page" not in xen_capture.offenders, xen_capture.offenders["not a page"]
    assert result.agree, result.report()


def test_every_dom0_kernel_leaf_is_guest_kernel_and_user(xen_capture):
    """dom0 kernel leaves (L4 slots 272-511) carry bit 52 and U=1, and no G; user ones no bit 52."""
    regions = xen_capture.regions
    print(f"\nleaves by region: { {k[0]: v for k, v in regions.items()} }")
    assert regions[("kernel", "leaves")] > 10_000
    assert regions[("user", "leaves")] > 0
    for check in ("kernel leaf without bit 52 and U=1", "kernel leaf with G",
                  "user leaf with bit 52"):
        assert check not in xen_capture.offenders, (check, xen_capture.offenders[check])


def test_xen_l4_slots_are_labelled(xen_capture):
    """Leaves under L4 slots 256-271 carry Xen's label for their slot; guest leaves carry none."""
    assert xen_capture.regions[("xen", "leaves")] > 0
    for check in ("Xen slot leaf without its label", "guest leaf with a Xen slot label"):
        assert check not in xen_capture.offenders, (check, xen_capture.offenders[check])


def test_smep_smap_do_not_apply_to_the_cpl3_kernel(xen_capture):
    """SMEP is on in the CPU, yet no verdict blames SMEP/SMAP, and xen-cr4 reports them as not
    applicable: the PV64 kernel runs at CPL3."""
    assert xen_capture.cpu0["cr4"] & CR4.SMEP, hex(xen_capture.cpu0["cr4"])
    bad = {k: v for k, v in xen_capture.offenders.items() if k.startswith("SMEP/SMAP")}
    assert not bad, bad
    # ... and xen-cr4 says so in words.
    assert re.search(r"guest kernel: CPL 3; SMEP does not apply, SMAP does not apply",
                     xen_capture.cr4_text), xen_capture.cr4_text


def test_walk_header_effective_cr4_matches_the_cpu(xen_capture):
    """The walk's header gives dom0's effective CR4 as pCPU 0's hardware CR4: with dom0's L4
    loaded the CPU runs dom0's context CR4, in Xen too (lazy switch), so the CPU's value is used
    rather than re-derived (which would add PGE and drop dom0's FSGSBASE)."""
    cpu0_cr4 = xen_capture.cpu0["cr4"]
    header_cr4 = int(xen_capture.header["effective_cr4"], 16)
    assert header_cr4 == cpu0_cr4, (
        f"walk header: effective CR4 {header_cr4:#x}, CPU in dom0 context {cpu0_cr4:#x}; differ "
        f"in {_bit_names(header_cr4 ^ cpu0_cr4)}; notes {xen_capture.header['notes']}")


def test_xen_py_effective_cr4_matches_the_cpu(xen_capture):
    """xen.py derives pCPU 0's hardware CR4 (dom0 context) from Xen's own CR4 (pCPU 1, idle
    only) and dom0's CR4 choices, under the policy this boot's log states."""
    cpu0_cr4, xen_cr4 = xen_capture.cpu0["cr4"], xen_capture.cpu1["cr4"]
    log = xen_capture.serial
    assert re.search(r"XPTI \(64-bit PV only\): Dom0 disabled", log), "XPTI state not in the log"
    assert "CPU Vendor: AMD" in log  # QEMU's TCG 'max' CPU; Xen runs virtualised there
    policy = xen.XenPolicy(
        "4.17", "pv64", io_capable=True, xpti=False,
        # global-pages= defaults to off when Xen itself runs virtualised on AMD (Xen's
        # pv/domain.c opt_global_pages): QEMU's CPUID says "hypervisor" and "AMD".
        global_pages=False,
        hw=xen.Hardware(smep=True, smap=False, pku=True, vmx=False))  # -cpu max,-smap
    choice = re.search(r"XENPTE-DOM0-FSGSBASE=([01])", log)
    assert choice, "dom0 did not report its FSGSBASE choice"
    guest_view = xen.guest_visible_cr4(
        policy, CR4.FSGSBASE if choice.group(1) == "1" else 0, xen_cr4=xen_cr4).value
    derived = xen.effective_cr4(policy, guest_view, xen_cr4=xen_cr4, context="kernel")
    assert derived.value == cpu0_cr4, (
        f"xen.effective_cr4 from Xen's CR4 {xen_cr4:#x} and dom0's view {guest_view:#x}: "
        f"{derived.value:#x}; CPU in dom0 context {cpu0_cr4:#x}; differ in "
        f"{_bit_names(derived.value ^ cpu0_cr4)}\n" +
        "\n".join(derived.explanation))


def test_readme_xen_host_examples(xen_capture):
    """Issue 14: the README's Xen block runs as written on a live Xen 4.17 dom0; dom0's kernel
    runs at CPL3, so the Xen 4.6 what-if changes nothing it chose and no #PF loop is found."""
    assert len(xen_capture.readme) == 3, xen_capture.readme.keys()
    for line, out in xen_capture.readme.items():
        assert out.strip() and not out.startswith("ERROR") and "Traceback" not in out, (line,
                                                                                       out[:500])
    check = next(o for ln, o in xen_capture.readme.items() if "xen=4.6" in ln)
    assert "what-if xen=4.6" in check and "[pf-loop]" not in check, check[-2000:]


def test_default_dump_walk_is_compact_and_expands_to_info_tlb(xen_capture):
    """Issue 15: on the ELF dump, the default walk of dom0's L4 (pCPU 0) is at most
    MAX_DEFAULT_RECORDS records, and expanding its runs and repeat copies gives QEMU's leaves:
    every VA once, leaf flags, PA wherever a record gives it (A/D and scattered frames as the
    record claims them); with --phys every leaf's PA is checked."""
    theirs = parse_info_tlb(xen_capture.tlb_text)
    for how, walk in xen_capture.dump_walks.items():
        assert int(walk.header["cr3"], 16) == xen_capture.cpu0["cr3"], walk.header
        assert walk.header["domain"] == "pv64"
        result = compare_expanded(map(json.loads, walk.mappings), theirs)
        print(f"\nXen dom0 dump, {how} walk: {result.report()}")
        assert result.agree, result.report()
        if how == "phys":
            assert result.pa_checked == len(theirs), result.report()
    records = len(xen_capture.dump_walks["default"].mappings)
    assert records <= MAX_DEFAULT_RECORDS, f"{records} records"
