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
(4-level): slot 0 points at the guest's PAE L3, slots 4, 258, 260, 261, 262 are Xen's.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from typing import Dict, List

import pytest

from gdb_xenpte import xen
from gdb_xenpte.arch import CR4
from gdb_xenpte.cpu import CpuState
from gdb_xenpte.model import Mapping
from gdb_xenpte.sources.qemu_live import parse_mtree
from gdb_xenpte.verdicts import Judge
from gdb_xenpte.walk import Walker
from pv32 import observe, xen_pv32
from targets.qemu import Qemu
from targets.tlb import Leaf, compare, parse_info_tlb, qemu_flags, qemu_pa_mask

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
    seconds: Dict[str, float] = field(default_factory=dict)


def _leaves(maps: List[Mapping]) -> Dict[int, Leaf]:
    """Our walk in ``info tlb`` terms (QEMU's PA mask, the leaf's own flags)."""
    return {m.va: Leaf(m.va, m.pa & qemu_pa_mask(m.page_size), qemu_flags(m.flags))
            for m in maps if m.kind == "page"}


def _record(vm: Qemu, seconds: Dict[str, float]) -> Recording:
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
    return Recording(report, serial, caught, idle, ring1, l4, guest_l3, tlb, walk, guest_walk,
                     seconds)


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
        recording = _record(vm, seconds)
    print(f"pv32 timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    return recording


def _policy(version: str) -> xen.XenPolicy:
    # QEMU TCG's "max" CPU is an AMD with the hypervisor bit: Xen then defaults global-pages off
    # (docs/misc/xen-command-line.pandoc), so PV context runs without PGE.
    return xen.XenPolicy(version, domain="pv32", global_pages=False)


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
    assert data["pte"] & 0x7 == 0x7  # P RW US
    assert code["pte"] & 0x7 == 0x5  # P US, read-only


def test_guest_visible_cr4_is_not_the_effective_one(rec):
    assert rec.report["cr4"] == CR4_GUEST_VIEW
    assert not rec.report["cr4"] & (CR4.SMEP | CR4.SMAP | CR4.PGE | CR4.PKE)
    assert rec.report["cr4"] == rec.ring1.cr4 & xen.PV_CR4_GUEST_VISIBLE_MASK != rec.ring1.cr4


# ---- what the CPU showed ---------------------------------------------------------------------

def test_cpu_caught_in_ring1_and_in_xen(rec):
    assert rec.caught.ring1 and rec.caught.xen and not rec.caught.other
    for regs in rec.caught.ring1:
        assert (regs.cs, regs.cpl, regs.rpl) == (0xE019, 1, 1)
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
    prot = xen.kernel_protections(pol, rec.report["cr4"], rec.idle.cr4)
    assert (prot.cpl, prot.smep, prot.smap) == (1, False, False)


def test_effective_cr4_46_keeps_smep_smap(rec):
    pol = _policy("4.6")
    eff = xen.effective_cr4(pol, guest_cr4=rec.report["cr4"], xen_cr4=rec.idle.cr4)
    assert eff.value & xen.XEN_CR4_PV32_BITS == xen.XEN_CR4_PV32_BITS
    assert any(line.startswith("SMEP=1") and "4.7" in line for line in eff.explanation)
    prot = xen.kernel_protections(pol, rec.report["cr4"], rec.idle.cr4)
    assert (prot.cpl, prot.smep, prot.smap) == (1, True, True)


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
