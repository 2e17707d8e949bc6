"""Live sources: a QEMU guest under gdb's remote target, or any target through a guest direct map.

This module holds the gdb-free half of the live sources: parsing QEMU's RAM layout
(``info mtree -f``) and ``gpa2hva`` replies, finding QEMU's pid from gdb's TCP connection, reading
``/proc/<pid>/mem``, switching QEMU's gdbstub into physical mode and back, and the M2P translation
of a PV guest. Everything that talks to gdb is passed in as a :class:`Stub` (the adapter lives in
:mod:`gdb_xenpte.gdbcmd.live`), so all of it runs and is tested without gdb.

Failure modes: :class:`~gdb_xenpte.errors.UnreadableMemory` for a read outside guest RAM (QEMU would
return zeros there, which a walk must not mistake for empty tables) or a read the target refuses;
:class:`~gdb_xenpte.errors.SourceError` when the gdbstub lacks PhyMemMode or its mode cannot be
restored. The fast path never fails a walk: any problem with it falls back to PhyMemMode and
:attr:`QemuLiveSource.fallback_reason` says why. Nothing here writes target memory.
"""

from __future__ import annotations

import os
import re
from bisect import bisect_right
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ..errors import SourceError, UnreadableMemory
from .base import PhysSource, VcpuRegs

__all__ = [
    "DirectMapSource",
    "M2P_PV32",
    "M2P_PV64",
    "QemuLiveSource",
    "RamBlock",
    "Stub",
    "find_peer_pid",
    "parse_gpa2hva",
    "parse_mtree",
]

# Region kinds of `info mtree -f` (QEMU memory.c memory_region_type) backed by host memory that a
# gdbstub or /proc read returns as-is. "ramd" (device RAM, e.g. VFIO BARs) is left out: its reads
# go to the device. Everything else ("i/o", holes) is "outside guest RAM".
READABLE_KINDS = ("ram", "rom", "romd")

# Xen's read-only M2P as mapped into every PV guest: (virtual base, entry size in bytes).
# 64-bit: RO_MPT_VIRT_START (xen/include/public/arch-x86/xen-x86_64.h, 0xFFFF800000000000).
M2P_PV64 = (0xFFFF800000000000, 8)
# 32-bit PV on 64-bit Xen: the compat M2P at HYPERVISOR_COMPAT_VIRT_START's default 0xF5800000
# (xen/include/public/arch-x86/xen-x86_32.h MACH2PHYS_VIRT_START_PAE).
M2P_PV32 = (0xF5800000, 4)
# INVALID_M2P_ENTRY (~0UL) and SHARED_M2P_ENTRY (~0UL - 1), xen/include/public/xen.h.
_M2P_INVALID_FROM = {8: (1 << 64) - 2, 4: (1 << 32) - 2}


@dataclass(frozen=True)
class RamBlock:
    """One guest-physical range backed by host memory.

    :param start: first guest-physical address (bytes).
    :param end: first address past the block (bytes, exclusive).
    :param kind: ``ram``, ``rom`` or ``romd`` as QEMU prints it.
    :param name: QEMU memory region name, e.g. ``pc.ram``.
    :param hva: QEMU's host virtual address of ``start``, once known (fast path only).
    """

    start: int
    end: int
    kind: str
    name: str
    hva: Optional[int] = None


class Stub:
    """What the live source needs from gdb; :mod:`gdb_xenpte.gdbcmd.live` implements it.

    Every method raises :class:`~gdb_xenpte.errors.XenpteError` subclasses, never gdb's own errors.
    """

    description: str = "gdb target"

    def monitor(self, command: str) -> str:
        """Return the text QEMU's monitor prints for ``command``."""
        raise NotImplementedError

    def packet(self, payload: str) -> str:
        """Send one remote-protocol packet and return the reply payload (unquoted)."""
        raise NotImplementedError

    def read_memory(self, addr: int, size: int) -> bytes:
        """Read target memory through gdb (guest-physical while PhyMemMode is on).

        :raises UnreadableMemory: if the target refuses the read.
        """
        raise NotImplementedError

    def tcp_peer(self) -> Optional[Tuple[str, int]]:
        """Return ``(host, port)`` of the remote connection, or None if it is not TCP."""
        return None

    def vcpus(self) -> List[VcpuRegs]:
        """Return the registers of every vCPU (gdb thread)."""
        return []


_MTREE_LINE = re.compile(
    r"^\s*([0-9a-fA-F]+)-([0-9a-fA-F]+) \(prio -?\d+, ([a-z/ ]+)\): (\S+)")


def parse_mtree(text: str) -> List[RamBlock]:
    """Return the host-backed blocks of the system address space from ``info mtree -f`` text.

    Only the flat view whose address spaces include ``memory`` (what the CPU and the gdbstub see)
    is used; adjacent lines of the same region stay separate blocks, since each may sit at its own
    host address.

    :raises SourceError: if the text has no such flat view.
    """
    blocks: List[RamBlock] = []
    in_view = found = False
    for line in text.splitlines():
        if line.startswith("FlatView"):
            if found:
                break
            in_view = False
        elif line.startswith(' AS "'):
            in_view = in_view or line.split('"')[1] in ("memory", "cpu-memory-0")
            found = found or in_view
        elif in_view:
            m = _MTREE_LINE.match(line)
            if m and m.group(3) in READABLE_KINDS:
                blocks.append(RamBlock(int(m.group(1), 16), int(m.group(2), 16) + 1,
                                       m.group(3), m.group(4)))
    if not found:
        raise SourceError("QEMU monitor", "'info mtree -f' shows no flat view of system memory")
    return sorted(blocks, key=lambda b: b.start)


_GPA2HVA = re.compile(r"Host virtual address for 0x([0-9a-fA-F]+) \(.*\) is 0x([0-9a-fA-F]+)")


def parse_gpa2hva(text: str) -> Optional[int]:
    """Return the host virtual address in a ``gpa2hva`` reply, or None if QEMU gave none."""
    m = _GPA2HVA.search(text)
    return int(m.group(2), 16) if m else None


def _tcp_table(proc: str) -> List[Tuple[Tuple[str, int], Tuple[str, int], int]]:
    """Return ``(local, remote, inode)`` of every TCP socket in ``proc``/net/tcp{,6}."""
    rows = []
    for name in ("tcp", "tcp6"):
        try:
            with open(f"{proc}/net/{name}") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10:
                continue
            (lip, lport), (rip, rport) = (c.split(":") for c in cols[1:3])
            rows.append(((lip, int(lport, 16)), (rip, int(rport, 16)), int(cols[9])))
    return rows


def _socket_inodes(fd_dir: str) -> Dict[int, str]:
    """Return ``{inode: fd path}`` for the sockets open in one ``/proc/<pid>/fd`` directory."""
    found = {}
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return found
    for fd in names:
        try:
            link = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            found[int(link[8:-1])] = fd
    return found


def find_peer_pid(port: int, proc: str = "/proc", me: str = "self") -> Optional[int]:
    """Return the pid at the other end of this process's TCP connection to ``port``.

    Why not ``pgrep qemu``: several QEMUs may run (gdb-pt-dump #22, pwndbg #1587). Our socket to
    ``port`` is found among our own fds in ``/proc/net/tcp``; the peer socket is the row with the
    local and remote ends swapped; its owner is the process holding that inode. Returns None when
    the peer is not on this host or not visible (another PID or network namespace).
    """
    table = _tcp_table(proc)
    mine = _socket_inodes(f"{proc}/{me}/fd")
    ends = [(lo, ro) for lo, ro, ino in table if ino in mine and ro[1] == port]
    if not ends:
        return None
    local, remote = ends[0]
    peer = [ino for lo, ro, ino in table if lo == remote and ro == local and ino]
    if not peer:
        return None
    my_pid = os.getpid() if me == "self" else int(me)
    for entry in os.listdir(proc):
        if entry.isdigit() and int(entry) != my_pid and peer[0] in _socket_inodes(
                f"{proc}/{entry}/fd"):
            return int(entry)
    return None


class QemuLiveSource(PhysSource):
    """Guest-physical memory of a QEMU guest behind gdb's remote target.

    Reads go through ``/proc/<qemu-pid>/mem`` at each RAM block's host address when that works
    (the fast path), else through the gdbstub in PhyMemMode. Use the source as a context manager
    around a whole walk: PhyMemMode is switched on at the first gdbstub read inside it and the old
    mode is restored on exit, also on error and Ctrl-C. A read outside such a session switches and
    restores around that one read.

    :param stub: the gdb adapter.
    :param fast: try the ``/proc`` fast path (False forces PhyMemMode).
    :param pkru: PKRU to report for every vCPU (QEMU does not expose it), or None.
    :raises SourceError: if QEMU's monitor cannot describe guest RAM.
    """

    def __init__(self, stub: Stub, fast: bool = True, pkru: Optional[int] = None):
        self.stub = stub
        self.pkru = pkru
        self.blocks: List[RamBlock] = parse_mtree(stub.monitor("info mtree -f"))
        self._starts = [b.start for b in self.blocks]
        self._mem = None  # file object of /proc/<pid>/mem on the fast path
        self.pid: Optional[int] = None
        self.fallback_reason: Optional[str] = None if fast else "fast path off (xen-pte fast-path)"
        self._depth = 0
        self._saved_mode: Optional[str] = None  # old PhyMemMode while ours is on
        if fast:
            self._try_fast_path()
        self.name = f"QEMU gdbstub {stub.description}"

    # -- fast path -------------------------------------------------------------------------
    def _try_fast_path(self) -> None:
        peer = self.stub.tcp_peer()
        if peer is None:
            self.fallback_reason = "the gdb connection is not TCP"
            return
        pid = find_peer_pid(peer[1])
        if pid is None:
            self.fallback_reason = f"no process on this host owns the peer of port {peer[1]}"
            return
        try:
            mem = open(f"/proc/{pid}/mem", "rb", buffering=0)
        except OSError as err:
            self.fallback_reason = f"/proc/{pid}/mem: {err.strerror}"
            return
        blocks = []
        for b in self.blocks:
            hva = parse_gpa2hva(self.stub.monitor(f"gpa2hva {b.start:#x}"))
            if hva is None:
                mem.close()
                self.fallback_reason = f"QEMU gave no host address for {b.name} at {b.start:#x}"
                return
            blocks.append(RamBlock(b.start, b.end, b.kind, b.name, hva))
        self.blocks, self._mem, self.pid = blocks, mem, pid
        reason = self._check_fast_path()
        if reason:
            self._mem.close()
            self._mem, self.pid, self.fallback_reason = None, None, reason

    def _check_fast_path(self) -> Optional[str]:
        """Return why the fast path is unusable: compare one small read with the gdbstub's."""
        ram = [b for b in self.blocks if b.kind == "ram"] or self.blocks
        if not ram:
            return None
        probe = ram[0].start + min(0x1000, ram[0].end - ram[0].start - 64)
        try:
            fast = self._pread(ram[0], probe, 64)
        except OSError as err:
            return f"/proc/{self.pid}/mem: {err.strerror}"
        with self:
            slow = self._stub_read(probe, 64)
        return None if fast == slow else "/proc bytes differ from the gdbstub's"

    def _pread(self, block: RamBlock, paddr: int, size: int) -> bytes:
        return os.pread(self._mem.fileno(), size, block.hva + (paddr - block.start))

    @property
    def path(self) -> str:
        """How reads are done: ``/proc/<pid>/mem`` or ``PhyMemMode``."""
        return f"/proc/{self.pid}/mem" if self._mem is not None else "PhyMemMode"

    def describe(self) -> str:
        if self._mem is not None:
            return f"{self.name}, reads via {self.path} (fast path)"
        return f"{self.name}, reads via PhyMemMode ({self.fallback_reason})"

    # -- PhyMemMode session ----------------------------------------------------------------
    def __enter__(self):
        self._depth += 1
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            self._restore_mode()
        return False

    def _ensure_phys_mode(self) -> None:
        if self._saved_mode is not None:
            return
        old = self.stub.packet("qqemu.PhyMemMode")
        if old not in ("0", "1"):
            raise SourceError(self.name, f"gdbstub has no PhyMemMode (QEMU >= 4.1 needed); "
                                         f"'qqemu.PhyMemMode' replied {old!r}")
        if old != "1":
            reply = self.stub.packet("Qqemu.PhyMemMode:1")
            if reply != "OK":
                raise SourceError(self.name, f"'Qqemu.PhyMemMode:1' replied {reply!r}")
        self._saved_mode = old

    def _restore_mode(self) -> None:
        saved, self._saved_mode = self._saved_mode, None
        if saved is not None and saved != "1":
            reply = self.stub.packet(f"Qqemu.PhyMemMode:{saved}")
            if reply != "OK":
                raise SourceError(self.name, f"could not restore PhyMemMode {saved}: {reply!r}")

    def _stub_read(self, paddr: int, size: int) -> bytes:
        self._ensure_phys_mode()
        return self.stub.read_memory(paddr, size)

    # -- PhysSource --------------------------------------------------------------------------
    def _chunks(self, paddr: int, size: int) -> Iterator[Tuple[RamBlock, int, int]]:
        """Split a read at block edges; raise for the first byte outside guest RAM."""
        end = paddr + size
        while paddr < end:
            i = bisect_right(self._starts, paddr) - 1
            if i < 0 or paddr >= self.blocks[i].end:
                raise UnreadableMemory(self.name, paddr, "outside guest RAM")
            n = min(end, self.blocks[i].end) - paddr
            yield self.blocks[i], paddr, n
            paddr += n

    def read(self, paddr: int, size: int) -> bytes:
        chunks = list(self._chunks(paddr, size))
        if self._mem is not None:
            return b"".join(self._pread(b, a, n) for b, a, n in chunks)
        if self._depth:
            return b"".join(self._stub_read(a, n) for _, a, n in chunks)
        with self:
            return b"".join(self._stub_read(a, n) for _, a, n in chunks)

    def ranges(self) -> Sequence[Tuple[int, int]]:
        return [(b.start, b.end) for b in self.blocks]

    def vcpus(self) -> List[VcpuRegs]:
        regs = self.stub.vcpus()
        if self.pkru is None:
            return regs
        from dataclasses import replace
        return [replace(r, pkru=self.pkru) for r in regs]

    def close(self) -> None:
        try:
            self._restore_mode()
        finally:
            if self._mem is not None:
                self._mem.close()
                self._mem = None


class DirectMapSource(PhysSource):
    """Physical memory read through a guest's direct map, for targets without physical access.

    Guest-physical address ``pa`` is read at virtual address ``base + pa`` (e.g. a Linux guest's
    ``page_offset_base``). For a PV guest, page-table entries hold machine frames: ``m2p`` names
    Xen's read-only M2P (:data:`M2P_PV64` or :data:`M2P_PV32`) and every frame is translated
    MFN -> PFN through it before it is read.

    :param read_virt: reads ``size`` bytes at a guest virtual address; raises UnreadableMemory.
    :param base: virtual address of guest-physical 0 (bytes).
    :param m2p: ``(virtual base, entry bytes)`` of the M2P, or None for HVM/native guests.
    """

    def __init__(self, read_virt: Callable[[int, int], bytes], base: int,
                 m2p: Optional[Tuple[int, int]] = None, domain: Optional[str] = None,
                 vcpus: Sequence[VcpuRegs] = ()):
        self._read_virt = read_virt
        self.base = base
        self.m2p = m2p
        self.domain = domain
        self._vcpus = list(vcpus)
        self._m2p_cache: Dict[int, Optional[int]] = {}  # one walk's lifetime: the source's
        self.name = f"direct map at {base:#x}" + (
            f", M2P at {m2p[0]:#x}" if m2p else "")
        if m2p:
            self.translate_frame = self._mfn_to_pfn

    def _mfn_to_pfn(self, mfn: int) -> Optional[int]:
        if mfn not in self._m2p_cache:
            vbase, width = self.m2p
            try:
                raw = self._read_virt(vbase + mfn * width, width)
            except UnreadableMemory:
                self._m2p_cache[mfn] = None
            else:
                pfn = int.from_bytes(raw, "little")
                self._m2p_cache[mfn] = None if pfn >= _M2P_INVALID_FROM[width] else pfn
        return self._m2p_cache[mfn]

    def read(self, paddr: int, size: int) -> bytes:
        try:
            return self._read_virt(self.base + paddr, size)
        except UnreadableMemory as err:
            raise UnreadableMemory(self.name, paddr, f"direct-map VA {self.base + paddr:#x} "
                                                     f"not readable") from err

    def ranges(self) -> Sequence[Tuple[int, int]]:
        return [(0, 1 << 52)]

    def vcpus(self) -> List[VcpuRegs]:
        return list(self._vcpus)

    def describe(self) -> str:
        return f"{self.name} (no physical access: tables read through guest virtual memory)"
