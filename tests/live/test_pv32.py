"""A 32-bit PV kernel in ring 1 on real Xen: the effective CR4, and the SMEP/SMAP story, observed.

Xen 4.17 rebuilt with ``CONFIG_PV32=y`` (``tests/pv32/xen_pv32.py``) boots our own PAE PV kernel
(``tests/pv32/guest/pv32.s``) as dom0 under QEMU TCG ``-cpu max`` (SMEP and SMAP on), with two
pCPUs: dom0's only vCPU is pinned to CPU 0, CPU 1 stays in Xen's idle loop. The guest reports
start_info and its own CR3/CR4 view, makes two pages U=1, reads, writes and executes them from
ring 1 without a fault, and spins. The machine is then stopped repeatedly until CPU 0 was caught
both in ring-1 guest code and in Xen; at one ring-1 stop, memory and ``info tlb`` are recorded.
QEMU is killed before the first test runs: every test asserts on that one recording.

What was measured here (the facts the assertions encode): CR4 0x50660 in ring 1, 0x350660 in Xen
on the same CPU (SMEP|SMAP set again on entry), 0x7506e0 in the idle loop (PGE, PKE: never in PV
context), 0x660 as the guest reads it; hardware CR3 in guest context is Xen's per-vCPU compat L4
(4-level): slot 0 points at the guest's PAE L3, slots 4, 258, 260, 261, 262 are Xen's (slot 4:
PERDOMAIN_ALT_VIRT_START, the per-domain mirror for the compat xlat area, asm/config.h:208-209).

The gdb commands are run too (one batch gdb at the same stop).
"""

from __future__ import annotations

import json
import re
import struct
import time
from dataclasses import dataclass, field
from typing import Dict, List

import pytest

from gdb_xenpte import xen
from gdb_xenpte.arch import CR4
from gdb_xenpte.cpu import CpuState
from gdb_xenpte.domain_cpu import Options, derive
from gdb_xenpte.model import Mapping
from gdb_xenpte.sources.base import NoMemory, VcpuRegs
from gdb_xenpte.sources.qemu_live import parse_mtree
from gdb_xenpte.verdicts import Judge
from gdb_xenpte.walk import Walker
from tests.gdb.gdbrun import run_gdb
from tests.pv32 import observe, xen_pv32
from tests.targets.gdb import connect_commands
from tests.targets.qemu import Qemu
from tests.targets.tlb import Leaf, compare, parse_info_tlb, qemu_flags, qemu_pa_mask

pytestmark = pytest.mark.live

XEN_CMDLINE = ("loglvl=all guest_loglvl=all console=com1 com1=115200 dom0_mem=32M "
               "dom0_max_vcpus=1 dom0_vcpus_pin noreboot")
# CPUID.80000008H:EAX[7:0] of QEMU TCG -cpu max (real-targets.md).
MAXPHYADDR = 40
# The observed values (real-targets.md, "A 32-bit PV guest (ring 1) on real Xen").
CR4_RING1 = 0x50660
CR4_XEN_PV = 0x350660
CR4_IDLE = 0x7506E0
CR4_GUEST_VIEW = 0x660
XEN_L4_SLOTS = {4, 258, 260, 261, 262}
LINEAR_SLOT = 258
# Xen's PV32 L3 disallow mask 0xFFFFF198 as PTE bits: 3, 4, 7, 8 and 52-63 (xen-pte-abi.md §2).
PV32_L3_DISALLOWED = 0xFFF0000000000198


@dataclass
class Recording:
    """Everything observed in one boot; the tests assert on it after QEMU is gone."""

    report: Dict[str, object]
    serial: str
    caught: observe.Caught
    idle: observe.Regs
    ring1: observe.Regs
    l4: List[int]
    guest_l3: List[int]
    tlb: Dict[int, Leaf]
    walk: List[Mapping]
    guest_walk: List[Mapping]
    gdb: Dict[str, str]
    symbols: Dict[str, int]
    seconds: Dict[str, float] = field(default_factory=dict)


def _leaves(maps: List[Mapping]) -> Dict[int, Leaf]:
    """Our walk in ``info tlb`` terms (QEMU's PA mask, the leaf's own flags)."""
    return {m.va: Leaf(m.va, m.pa & qemu_pa_mask(m.page_size), qemu_flags(m.flags))
            for m in maps if m.kind == "page"}


def _record(vm: Qemu, symbols: Dict[str, int], seconds: Dict[str, float]) -> Recording:
    """Catch the CPU in ring 1 and in Xen, then stop in ring 1 and record tables and TLB view."""
    serial = vm.serial_text()
    report = observe.parse_guest_report(serial)
    t0 = time.monotonic()
    caught = observe.catch(vm, timeout=120)
    seconds["catch"] = time.monotonic() - t0
    vm.monitor("stop")
    idle = observe.parse_all_registers(vm.monitor("info registers -a"))[1]
    vm.monitor("cont")
    ring1 = observe.stop_in_ring1(vm)
    # The machine stays stopped from here on: memory, registers and info tlb are one instant.
    ram = [(b.start, b.end) for b in parse_mtree(vm.monitor("info mtree -f")) if b.kind == "ram"]
    src = observe.PmemSource(vm, ram, ring1, domain="pv32")
    l4 = list(struct.unpack("<512Q", src.read(ring1.cr3 & ~0xFFF, 4096)))
    guest_l3_pa = l4[0] & 0x000FFFFFFFFFF000
    guest_l3 = list(struct.unpack("<4Q", src.read(guest_l3_pa, 32)))
    t0 = time.monotonic()
    tlb = parse_info_tlb(vm.monitor("info tlb"))
    cpu = CpuState(cr0=ring1.cr0, cr3=ring1.cr3, cr4=ring1.cr4, efer=ring1.efer,
                   maxphyaddr=MAXPHYADDR, vendor="amd")
    walk = list(Walker(src, cpu).iter_mappings(coalesce=False))
    folded = report["cr3"]
    l3_mfn = ((folded >> 12) | (folded << 20)) & 0xFFFFFFFF  # xen_cr3_to_pfn (xen-x86_32.h)
    guest_walk = list(Walker(src, cpu, mode="pv32", root=l3_mfn << 12).iter_mappings(
        coalesce=False))
    seconds["walks"] = time.monotonic() - t0
    t0 = time.monotonic()
    gdb = _run_commands(vm, idle.cr4)
    seconds["gdb"] = time.monotonic() - t0
    return Recording(report, serial, caught, idle, ring1, l4, guest_l3, tlb, walk, guest_walk,
                     gdb, symbols, seconds)


# What the gdb commands are asked, by name; "{xen_cr4}" is the CR4 read in Xen's idle loop.
# --cr4 gives the guest-visible CR4 so that the effective one is derived per Xen version.
_GUEST = "--domain pv32 --cr4 0x660 --ac 0"
_USER_PAGES = "0xc0002000 0xc0004000"
GDB_COMMANDS = {
    # Xen runs virtualised on AMD here (QEMU -cpu max), so its global-pages default is off.
    "cr4-4.17": "xen-cr4 0x660 --domain pv32 --xen 4.17 --global-pages off --xen-cr4 {xen_cr4}",
    "cr4-4.6": "xen-cr4 0x660 --domain pv32 --xen 4.6 --xen-cr4 {xen_cr4}",
    "walk-hw": f"xen-pte-walk --domain pv32 --xen 4.17 --json {_USER_PAGES}",
    # From the ring-1 stop without --cr4: the CPU's CR4 is this Xen's; 4.6 is a what-if.
    "whatif-hw-4.6": "xen-pte-check --domain pv32 --xen 4.17 --ac 0 --what-if xen=4.6 --json",
    "walk-4.17": f"xen-pte-walk {_GUEST} --xen 4.17 --no-coalesce --json",
    "walk-4.6": f"xen-pte-walk {_GUEST} --xen 4.6 --no-coalesce --json {_USER_PAGES}",
    "check-4.17": f"xen-pte-check {_GUEST} --xen 4.17 --json",
    "check-4.6": f"xen-pte-check {_GUEST} --xen 4.6 --json",
}


def _run_commands(vm: Qemu, xen_cr4: int) -> Dict[str, str]:
    """Run GDB_COMMANDS in one batch gdb on the stopped machine (CPU 0 = thread 1).

    :returns: ``{name: what the command printed}``; gdb's errors are kept under ``"stderr"``.
    """
    cmds = ["thread 1"]
    for name, command in GDB_COMMANDS.items():
        cmds += [f"echo @@{name}\\n", command.format(xen_cr4=hex(xen_cr4))]
    res = run_gdb(*connect_commands(vm.gdb_port), *cmds, "detach", timeout=300)
    parts = re.split(r"^@@(\S+)\n", res.stdout, flags=re.M)
    out = dict(zip(parts[1::2], parts[2::2]))
    out["stderr"] = res.stderr
    return out


@pytest.fixture(scope="session")
def rec(tmp_path_factory) -> Recording:
    """Build (cached), boot once, record, kill QEMU; return the recording."""
    seconds: Dict[str, float] = {}
    t0 = time.monotonic()
    hypervisor = xen_pv32.build_xen()
    guest = xen_pv32.build_guest()
    seconds["build"] = time.monotonic() - t0
    args = ["-smp", "2", "-kernel", str(hypervisor), "-append", XEN_CMDLINE,
            "-initrd", str(guest)]
    t0 = time.monotonic()
    with Qemu(args, memory="256M", workdir=tmp_path_factory.mktemp("pv32")) as vm:
        end = vm.wait_for_serial(r"^pv32: (spinning|error[^\r\n]*)\r?$", timeout=180)
        seconds["boot"] = time.monotonic() - t0
        assert end.group(1) == "spinning", f"the guest failed: {end.group(0)}"
        recording = _record(vm, xen_pv32.guest_symbols(guest), seconds)
    print("pv32 timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    return recording


def _policy(version: str) -> xen.XenPolicy:
    # QEMU TCG's "max" CPU is an AMD with the hypervisor bit: Xen then defaults global-pages off
    # (docs/misc/xen-command-line.pandoc), so PV context runs without PGE.
    return xen.XenPolicy(version, domain="pv32", global_pages=False)


def _kernel_state(version: str, rec: "Recording"):
    """What binds the ring-1 kernel, by the one derivation every command uses (domain_cpu)."""
    return derive(NoMemory(), VcpuRegs(-1), Options(
        domain="pv32", xen=version, cr4=rec.report["cr4"], xen_cr4=rec.idle.cr4,
        global_pages=False))


def _mapping(rec: Recording, va: int) -> Mapping:
    found = [m for m in rec.walk if m.va == va and m.kind == "page"]
    assert len(found) == 1, f"no single 4 KiB leaf at {va:#x}"
    return found[0]


# ---- what the guest reported -----------------------------------------------------------------

def test_guest_booted_in_ring1_and_saw_no_fault(rec):
    r = rec.report
    assert str(r["magic"]).startswith("xen-3.0-x86_32p")  # 32-bit PAE guest on this Xen
    assert r["cs"] == 0xE019  # FLAT_RING1_CS: RPL 1
    assert r["no-fault"] == {"read": 0xFEEDF00D, "exec": 0x600DC0DE}
    assert r.get("spinning") is True
    assert "CPU Vendor: AMD" in rec.serial  # the basis of global-pages=0 in _policy


def test_guest_made_its_pages_user(rec):
    data, code = rec.report["user-data"], rec.report["user-code"]
    assert (data["va"], code["va"]) == (rec.symbols["user_data"], rec.symbols["user_code"])
    lo, hi = (int(x, 16) for x in _USER_PAGES.split())  # the range the gdb commands look at
    assert lo <= code["va"] < hi and lo <= data["va"] < hi
    assert data["pte"] & 0x7 == 0x7  # P RW US
    assert code["pte"] & 0x7 == 0x5  # P US, read-only


def test_guest_visible_cr4_is_not_the_effective_one(rec):
    assert rec.report["cr4"] == CR4_GUEST_VIEW
    assert not rec.report["cr4"] & (CR4.SMEP | CR4.SMAP | CR4.PGE | CR4.PKE)
    assert rec.report["cr4"] == rec.ring1.cr4 & xen.PV_CR4_GUEST_VISIBLE_MASK != rec.ring1.cr4


# ---- what the CPU showed ---------------------------------------------------------------------

def test_cpu_caught_in_ring1_and_in_xen(rec):
    assert rec.caught.ring1 and rec.caught.xen and not rec.caught.other
    sym = rec.symbols
    for regs in rec.caught.ring1:
        assert (regs.cs, regs.cpl, regs.rpl) == (0xE019, 1, 1)
        # the spin loop, or the hypercall stub it calls (still ring 1 until int $0x82/syscall)
        assert sym["spin_ring1"] <= regs.ip < sym["spin_ring1_end"] or \
            sym["hypercall_page"] <= regs.ip < sym["hypercall_page"] + 4096
        assert regs.efer & (1 << 10)  # EFER.LMA: compatibility mode under a 64-bit Xen


def test_cr4_in_ring1_lacks_smep_smap(rec):
    assert rec.caught.cr4_values("ring1").keys() == {CR4_RING1}


def test_cr4_in_xen_has_smep_smap_again(rec):
    # Xen's entry stub runs a few instructions with the ring-1 CR4 before restoring it.
    xen_cr4 = rec.caught.cr4_values("xen")
    assert CR4_XEN_PV in xen_cr4 and set(xen_cr4) <= {CR4_XEN_PV, CR4_RING1}
    assert CR4_XEN_PV ^ CR4_RING1 == xen.XEN_CR4_PV32_BITS == CR4.SMEP | CR4.SMAP


def test_cr4_in_idle_loop(rec):
    assert rec.idle.in_xen and rec.idle.cr4 == CR4_IDLE
    assert rec.idle.cr4 & ~CR4_XEN_PV == CR4.PGE | CR4.PKE


# ---- the engine's effective CR4 --------------------------------------------------------------

def test_effective_cr4_417_equals_ring1(rec):
    pol = _policy("4.17")
    eff = xen.effective_cr4(pol, guest_cr4=rec.report["cr4"], xen_cr4=rec.idle.cr4)
    assert eff.value == rec.ring1.cr4 == CR4_RING1
    explained = [line for line in eff.explanation if line.startswith(("SMEP=0", "SMAP=0"))]
    assert len(explained) == 2 and all("ring 1" in line for line in explained)
    in_xen = xen.effective_cr4(pol, guest_cr4=rec.report["cr4"], xen_cr4=rec.idle.cr4,
                               context="xen")
    assert in_xen.value == CR4_XEN_PV
    assert xen.guest_visible_cr4(pol, 0, xen_cr4=rec.idle.cr4).value == rec.report["cr4"]
    state = _kernel_state("4.17", rec)
    assert state.kernel_cpl == 1 and not any(p.applies for p in state.protections.values())


def test_effective_cr4_46_keeps_smep_smap(rec):
    pol = _policy("4.6")
    eff = xen.effective_cr4(pol, guest_cr4=rec.report["cr4"], xen_cr4=rec.idle.cr4)
    assert eff.value & xen.XEN_CR4_PV32_BITS == xen.XEN_CR4_PV32_BITS
    assert any(line.startswith("SMEP=1") and "4.7" in line for line in eff.explanation)
    state = _kernel_state("4.6", rec)
    assert state.kernel_cpl == 1
    assert {n: p.chooser for n, p in state.protections.items() if p.applies} == \
        {"smep": "xen", "smap": "xen"}


# ---- CR3: Xen's compat L4 over the guest's PAE L3 --------------------------------------------

def test_cr3_is_xens_compat_l4_over_the_guest_l3(rec):
    folded = rec.report["cr3"]
    l3_mfn = ((folded >> 12) | (folded << 20)) & 0xFFFFFFFF
    present = {i for i, e in enumerate(rec.l4) if e & 1}
    assert present == {0} | XEN_L4_SLOTS
    assert rec.l4[0] & 0x000FFFFFFFFFF000 == l3_mfn << 12 != rec.ring1.cr3 & ~0xFFF
    # slot 258 maps the L4 itself (linear page tables); slot 4 mirrors the per-domain slot 260
    assert rec.l4[LINEAR_SLOT] & 0x000FFFFFFFFFF000 == rec.ring1.cr3 & ~0xFFF
    assert rec.l4[4] == rec.l4[260]


def test_guest_l3_entries_as_xen_wrote_them(rec):
    assert rec.guest_l3 == [rec.report[f"l3e{i}"] for i in range(4)]
    pol = _policy("4.17")
    for raw in rec.guest_l3:
        assert raw & 0xFFF == 0x067  # Xen adds U and RW to 32-bit PV L3 entries
        assert raw & PV32_L3_DISALLOWED == 0
        assert xen.disallow_violations(raw, "pdpt", pol) == []


# ---- the walker and verdicts -----------------------------------------------------------------

def test_walk_agrees_with_info_tlb(rec):
    result = compare(_leaves(rec.walk), rec.tlb)
    assert result.agree, result.report()


def test_guest_own_tables_walk_like_slot0(rec):
    below_4g = _leaves([m for m in rec.walk if m.va < 1 << 32])
    assert _leaves(rec.guest_walk) == below_4g
    assert not [m for m in rec.guest_walk if m.rsvd]


def _kernel_verdicts(rec: Recording, version: str, va: int) -> Dict[str, str]:
    pol = _policy(version)
    cr4 = xen.effective_cr4(pol, guest_cr4=rec.report["cr4"], xen_cr4=rec.idle.cr4).value
    ac = rec.ring1.rflags >> 18 & 1
    m = _mapping(rec, va)
    judged = Judge(rec.ring1.cr0, cr4, xen.kernel_cpl("pv32"), ac=ac).judge(
        m.effective, m.pkey, bool(m.rsvd))
    return {k: str(v) for k, v in judged.items() if k.startswith("kernel_")}


def test_user_pages_are_ok_for_the_ring1_kernel_under_417(rec):
    data, code = rec.report["user-data"]["va"], rec.report["user-code"]["va"]
    assert _mapping(rec, data).effective.user and _mapping(rec, code).effective.user
    assert _kernel_verdicts(rec, "4.17", data) == {
        "kernel_read": "ok", "kernel_write": "ok", "kernel_exec": "ok"}
    assert _kernel_verdicts(rec, "4.17", code)["kernel_exec"] == "ok"


def test_user_pages_fault_for_the_ring1_kernel_under_46(rec):
    # Before Xen 4.7 these are the accesses that looped on #PF forever.
    data, code = rec.report["user-data"]["va"], rec.report["user-code"]["va"]
    got = _kernel_verdicts(rec, "4.6", data)
    assert got["kernel_read"] == got["kernel_write"] == "fault:SMAP"
    assert _kernel_verdicts(rec, "4.6", code)["kernel_exec"] == "fault:SMEP"


# ---- the same through the gdb commands on the live target ------------------------------------

def _json(rec: Recording, name: str) -> List[dict]:
    text = rec.gdb.get(name, "")
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert records, f"{GDB_COMMANDS[name]!r} printed no JSON: {text[-500:]!r} " \
                    f"{rec.gdb['stderr'][-1500:]!r}"
    return records


def _effective_line(rec: Recording, name: str) -> int:
    match = re.search(r"^effective CR4 (0x[0-9a-f]+)", rec.gdb.get(name, ""), re.M)
    assert match, f"{GDB_COMMANDS[name]!r}: {rec.gdb.get(name)!r} {rec.gdb['stderr'][-1500:]!r}"
    return int(match.group(1), 16)


def test_xen_cr4_command_417_clears_smep_smap_for_ring1(rec):
    text = rec.gdb["cr4-4.17"]
    assert not _effective_line(rec, "cr4-4.17") & xen.XEN_CR4_PV32_BITS
    assert re.search(r"^  SMEP=0: cleared by Xen on return to ring 1", text, re.M)
    assert re.search(r"^  SMAP=0: cleared by Xen on return to ring 1", text, re.M)
    assert f"guest-visible CR4 {CR4_GUEST_VIEW:#x}" in text
    assert "guest kernel: CPL 1; SMEP does not apply, SMAP does not apply" in text


def test_xen_cr4_command_417_equals_ring1_exactly(rec):
    assert _effective_line(rec, "cr4-4.17") == rec.ring1.cr4


def test_xen_cr4_command_46_keeps_smep_smap(rec):
    text = rec.gdb["cr4-4.6"]
    eff = _effective_line(rec, "cr4-4.6")
    assert eff & xen.XEN_CR4_PV32_BITS == xen.XEN_CR4_PV32_BITS
    assert ("guest kernel: CPL 1; SMEP applies (imposed by Xen), SMAP applies (imposed by Xen)"
            in text)


def test_walk_header_shows_hardware_and_guest_cr4_apart(rec):
    hw = _json(rec, "walk-hw")[0]  # no --cr4: the CR4 read from the CPU stopped in ring 1
    assert int(hw["cr4"], 16) == rec.ring1.cr4
    # A CPU stopped in guest code (CS 0xe019) runs the PV context: its CR4 is the effective one.
    assert int(hw["effective_cr4"], 16) == rec.ring1.cr4
    derived = _json(rec, "walk-4.17")[0]
    assert int(derived["cr4"], 16) == CR4_GUEST_VIEW != int(derived["effective_cr4"], 16)
    assert not int(derived["effective_cr4"], 16) & xen.XEN_CR4_PV32_BITS


def test_live_walk_agrees_with_info_tlb_and_labels_xen_slots(rec):
    records = _json(rec, "walk-4.17")
    pages = [r for r in records if r.get("type") == "mapping" and r.get("kind") == "page"]
    ours = {int(r["va"], 16): Leaf(int(r["va"], 16),
                                   int(r["pa"], 16) & qemu_pa_mask(r["page_size"]),
                                   qemu_flags(r["flags"])) for r in pages}
    result = compare(ours, rec.tlb)
    assert result.agree, result.report()
    labelled = {int(n.split()[3].rstrip(":")) for r in pages for n in r.get("notes", ())
                if n.startswith("Xen L4 slot ")}
    assert labelled == XEN_L4_SLOTS


def test_live_walk_labels_slot4(rec):
    """Slot 4 is Xen's PERDOMAIN_ALT_VIRT_START, a mirror of slot 260 (asm/config.h:208-209)."""
    pages = [r for r in _json(rec, "walk-4.17") if r.get("kind") == "page"]
    assert any(n.startswith("Xen L4 slot 4") for r in pages if int(r["va"], 16) >> 39 == 4
               for n in r.get("notes", ()))


def _verdicts(records: List[dict], va: int) -> Dict[str, str]:
    found = [r for r in records if r.get("type") == "mapping" and int(r["va"], 16) == va]
    assert len(found) == 1
    return found[0]["verdicts"]


def test_live_walk_user_pages_ok_under_417_fault_under_46(rec):
    data, code = rec.report["user-data"]["va"], rec.report["user-code"]["va"]
    new, old = _json(rec, "walk-4.17"), _json(rec, "walk-4.6")
    assert {k: _verdicts(new, data)[k] for k in ("kernel_read", "kernel_write", "kernel_exec")} \
        == {"kernel_read": "ok", "kernel_write": "ok", "kernel_exec": "ok"}
    assert _verdicts(new, code)["kernel_exec"] == "ok"
    assert _verdicts(old, data)["kernel_read"] == _verdicts(old, data)["kernel_write"] == \
        "fault:SMAP"
    assert _verdicts(old, code)["kernel_exec"] == "fault:SMEP"


def test_what_if_46_from_a_ring1_stop_without_cr4(rec):
    """CS RPL 1 says the CPU's CR4 had SMEP/SMAP stripped on the way to ring 1: the 4.6 what-if
    puts Xen's back and finds both user pages (the #PF-loop candidates)."""
    records = _json(rec, "whatif-hw-4.6")
    broken = {int(r["va"], 16): r for r in records if r.get("type") == "change" and r["breaks"]}
    data, code = rec.report["user-data"]["va"], rec.report["user-code"]["va"]
    assert {data, code} <= set(broken)
    assert broken[data]["after"]["verdicts"]["kernel_read"] == "fault:SMAP"
    assert broken[code]["after"]["verdicts"]["kernel_exec"] == "fault:SMEP"


def test_check_lists_the_pf_loop_candidates_only_under_46(rec):
    def smep_smap(name):
        return {int(r["va"], 16) for r in _json(rec, name)
                if r.get("type") == "anomaly" and r["category"] == "pf-loop"}
    assert smep_smap("check-4.6") == {rec.report["user-data"]["va"], rec.report["user-code"]["va"]}
    assert smep_smap("check-4.17") == set()


def test_check_finds_nothing_disallowed_in_xen_owned_entries(rec):
    """Xen's own entries (compat L4 slots 4/256-271, the compat M2P Xen puts in the guest's top
    L2 from 0xf5800000) are not the guest's: the PV disallow masks do not judge them."""
    flagged = [r for r in _json(rec, "check-4.17")
               if r.get("type") == "anomaly" and r["category"] == "pv-disallowed"]
    assert flagged == []
