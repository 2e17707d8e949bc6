"""Observe the PV32 guest on real Xen through QEMU's monitor: its report, and the CPU caught in it.

The guest (``guest/pv32.s``) prints ``pv32: key=value`` lines on the Xen console; the CPU is caught
by stopping the machine repeatedly (``stop`` / ``info registers`` / ``cont``) until it has been seen
both in the guest's ring-1 code (CS 0xe019, RPL 1) and in Xen (CS 0xe008) with SMEP/SMAP set again.
A hypercall in the guest's spin loop makes Xen samples common (about 1 in 60 here).

Everything takes a ``vm`` with ``monitor(cmd) -> str`` and ``pmemsave(paddr, size) -> bytes``
(:class:`tests.targets.qemu.Qemu`), so it runs without gdb.

Failure modes: :class:`ValueError` for ``info registers`` text without CS/CR3/CR4, and
:class:`TimeoutError` when the CPU is not caught in both places in time.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from gdb_xenpte.errors import UnreadableMemory
from gdb_xenpte.sources.base import PhysSource, VcpuRegs

__all__ = ["Caught", "PmemSource", "Regs", "catch", "parse_all_registers", "parse_guest_report",
           "parse_registers", "stop_in_ring1"]

# Selectors from Xen's public headers: FLAT_RING1_CS (arch-x86/xen-x86_32.h) and Xen's own
# __HYPERVISOR_CS (xen/arch/x86/include/asm/config.h:276).
RING1_CS = 0xE019
XEN_CS = 0xE008
SMEP_SMAP = (1 << 20) | (1 << 21)


def parse_guest_report(serial: str) -> Dict[str, object]:
    """Return what the guest printed on the Xen console, by key.

    ``pv32: cr4=0x00000660`` gives ``{"cr4": 0x660}`` (hex values become ints, others stay text);
    ``pv32: user-data va=0x.. pte=0x..`` gives ``{"user-data": {"va": .., "pte": ..}}``;
    a line without ``=`` (``pv32: spinning``) gives ``{"spinning": True}``.
    """
    out: Dict[str, object] = {}
    for line in serial.splitlines():
        if not line.startswith("pv32: "):
            continue
        tokens = line[6:].split()
        if len(tokens) == 1 and "=" in tokens[0]:
            key, value = tokens[0].split("=", 1)
            out[key] = _num(value)
        elif len(tokens) > 1 and all("=" in t for t in tokens[1:]):
            out[tokens[0]] = {k: _num(v) for k, v in (t.split("=", 1) for t in tokens[1:])}
        else:
            out[" ".join(tokens)] = True
    return out


def _num(text: str):
    """Hex text as an int, anything else unchanged."""
    return int(text, 16) if text.startswith("0x") else text


@dataclass(frozen=True)
class Regs:
    """One vCPU as ``info registers`` shows it (QEMU 7.2, i386 target)."""

    cs: int
    ip: int
    rflags: int
    cpl: int
    cr0: int
    cr3: int
    cr4: int
    efer: int

    @property
    def rpl(self) -> int:
        return self.cs & 3

    @property
    def in_ring1(self) -> bool:
        return self.cs == RING1_CS

    @property
    def in_xen(self) -> bool:
        return self.cs == XEN_CS

    def vcpu(self, index: int = 0) -> VcpuRegs:
        """These registers as a source's :class:`VcpuRegs` (hardware values, long mode)."""
        return VcpuRegs(index, cr0=self.cr0, cr3=self.cr3, cr4=self.cr4, efer=self.efer,
                        rflags=self.rflags, rip=self.ip, cs=self.cs,
                        long_mode=bool(self.efer & (1 << 10)))


def parse_registers(text: str) -> Regs:
    """Parse the first CPU of ``info registers`` text (32- and 64-bit dump formats).

    :raises ValueError: if CS, the instruction pointer or a control register is missing.
    """
    def field_(pattern: str) -> int:
        m = re.search(pattern, text)
        if not m:
            raise ValueError(f"info registers: no match for {pattern!r} in {text[:300]!r}")
        return int(m.group(1), 16)
    return Regs(cs=field_(r"\bCS =([0-9a-f]+)"), ip=field_(r"\b[RE]IP=([0-9a-f]+)"),
                rflags=field_(r"\b[RE]FL=([0-9a-f]+)"),
                cpl=int(re.search(r"\bCPL=(\d)", text).group(1)),
                cr0=field_(r"\bCR0=([0-9a-f]+)"), cr3=field_(r"\bCR3=([0-9a-f]+)"),
                cr4=field_(r"\bCR4=([0-9a-f]+)"), efer=field_(r"\bEFER=([0-9a-f]+)"))


def parse_all_registers(text: str) -> Dict[int, Regs]:
    """Parse ``info registers -a`` text into ``{cpu index: Regs}``."""
    parts = re.split(r"^CPU#(\d+)\n", text, flags=re.M)
    return {int(n): parse_registers(body) for n, body in zip(parts[1::2], parts[2::2])}


@dataclass
class Caught:
    """Register samples of the stopped machine, by where the CPU was.

    :param ring1: samples in guest ring-1 code; :param xen: samples in Xen;
        :param other: anything else (none expected); :param stops: stops made.
    """

    ring1: List[Regs] = field(default_factory=list)
    xen: List[Regs] = field(default_factory=list)
    other: List[Regs] = field(default_factory=list)
    stops: int = 0
    seconds: float = 0.0

    def cr4_values(self, where: str) -> Dict[int, int]:
        """Return ``{CR4: samples}`` for ``"ring1"`` or ``"xen"``."""
        counts: Dict[int, int] = {}
        for regs in getattr(self, where):
            counts[regs.cr4] = counts.get(regs.cr4, 0) + 1
        return counts


def _sample(vm, cpu: int = 0) -> Regs:
    """Stop the machine, read CPU ``cpu``, and leave it stopped."""
    vm.monitor("stop")
    vm.monitor(f"cpu {cpu}")
    return parse_registers(vm.monitor("info registers"))


def catch(vm, timeout: float = 60.0, min_xen_with_smep: int = 1,
          pause: Tuple[float, float] = (0.0, 0.01)) -> Caught:
    """Stop and resume the machine at random moments until the CPU was caught in both places.

    "Both places" means at least one ring-1 sample and ``min_xen_with_smep`` Xen samples with
    SMEP|SMAP set (Xen's entry stub runs a few instructions with the ring-1 CR4 first). The
    machine is left running.

    :raises TimeoutError: if that has not happened within ``timeout`` seconds.
    """
    caught = Caught()
    t0 = time.monotonic()
    while True:
        regs = _sample(vm)
        vm.monitor("cont")
        caught.stops += 1
        (caught.ring1 if regs.in_ring1 else caught.xen if regs.in_xen else caught.other).append(
            regs)
        xen_smep = sum(1 for r in caught.xen if r.cr4 & SMEP_SMAP == SMEP_SMAP)
        caught.seconds = time.monotonic() - t0
        if caught.ring1 and xen_smep >= min_xen_with_smep:
            return caught
        if caught.seconds > timeout:
            raise TimeoutError(
                f"after {caught.stops} stops in {timeout:.0f} s: {len(caught.ring1)} in ring 1, "
                f"{len(caught.xen)} in Xen ({xen_smep} with SMEP|SMAP), {len(caught.other)} else")
        time.sleep(random.uniform(*pause))


def stop_in_ring1(vm, timeout: float = 30.0) -> Regs:
    """Stop the machine while the CPU runs guest ring-1 code and leave it stopped there.

    :raises TimeoutError: if no stop lands in ring 1 within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        regs = _sample(vm)
        if regs.in_ring1:
            return regs
        vm.monitor("cont")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no stop in ring 1 within {timeout:.0f} s")
        time.sleep(random.uniform(0.0, 0.005))


class PmemSource(PhysSource):
    """Guest-physical memory of a *stopped* QEMU, read page by page with ``pmemsave``.

    Pages are cached: valid only while the machine stays stopped. Reads outside the RAM ranges
    given raise :class:`UnreadableMemory` (QEMU itself would return zeros there).

    :param vm: the QEMU guest (``pmemsave``); :param ram: ``[(start, end)]`` guest RAM in bytes.
    :param regs: the registers to report as vCPU 0.
    """

    def __init__(self, vm, ram: Sequence[Tuple[int, int]], regs: Optional[Regs] = None,
                 domain: Optional[str] = None):
        self.vm = vm
        self.ram = list(ram)
        self.regs = regs
        self.name = f"QEMU pid {getattr(vm, 'pid', '?')} (pmemsave)"
        self.domain = domain
        self.xen_version = None
        self.translate_frame = None
        self._pages: Dict[int, bytes] = {}
        self.reads = 0

    def _page(self, addr: int) -> bytes:
        page = self._pages.get(addr)
        if page is None:
            if not any(lo <= addr and addr + 4096 <= hi for lo, hi in self.ram):
                raise UnreadableMemory(self.name, addr, "outside guest RAM")
            page = self._pages[addr] = self.vm.pmemsave(addr, 4096)
            self.reads += 1
        return page

    def read(self, paddr: int, size: int) -> bytes:
        out = bytearray()
        while size > 0:
            base, off = paddr & ~0xFFF, paddr & 0xFFF
            n = min(size, 4096 - off)
            out += self._page(base)[off:off + n]
            paddr += n
            size -= n
        return bytes(out)

    def ranges(self) -> Sequence[Tuple[int, int]]:
        return list(self.ram)

    def vcpus(self) -> List[VcpuRegs]:
        return [self.regs.vcpu(0)] if self.regs else []

    def describe(self) -> str:
        return self.name
