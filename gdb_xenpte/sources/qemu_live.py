"""The live QEMU source: guest-physical memory of a QEMU guest behind gdb's remote target.

This module holds the gdb-free half of the source: parsing QEMU's RAM layout (``info mtree -f``)
and ``gpa2hva`` replies, reading ``/proc/<pid>/mem`` (the pid comes from
:mod:`gdb_xenpte.sources.procpeer`), and switching QEMU's gdbstub into physical mode and back.
Everything that talks to gdb is passed in as a :class:`Stub` (the adapter lives in
:mod:`gdb_xenpte.gdbcmd.live`), so all of it runs and is tested without gdb. Targets without
physical access are read through a guest direct map instead (:mod:`gdb_xenpte.sources.directmap`).

Failure modes: :class:`~gdb_xenpte.errors.UnreadableMemory` for a read outside guest RAM (QEMU would
return zeros there, which a walk must not mistake for empty tables) or a read the target refuses;
:class:`TargetGone` when the target disappears (QEMU exits, the connection drops) in the middle of a
walk: every later read says so, and there is then no PhyMemMode left to restore;
:class:`~gdb_xenpte.errors.SourceError` when the gdbstub lacks PhyMemMode or its mode cannot be
restored. The fast path never fails a walk: any problem with it falls back to PhyMemMode and
:attr:`QemuLiveSource.fallback_reason` says why. Nothing here writes target memory.
"""

from __future__ import annotations

import os
import re
from bisect import bisect_right
from dataclasses import dataclass, replace
from typing import Iterator, List, Optional, Sequence, Tuple

from ..errors import SourceError, SourceGone, UnreadableMemory
from .base import PhysSource, VcpuRegs
from .procpeer import find_peer_pid

__all__ = [
    "QemuLiveSource",
    "RamBlock",
    "Stub",
    "TargetGone",
    "parse_gpa2hva",
    "parse_mtree",
]

# Region kinds of `info mtree -f` (QEMU memory.c memory_region_type) backed by host memory that a
# gdbstub or /proc read returns as-is. "ramd" (device RAM, e.g. VFIO BARs) is left out: its reads
# go to the device. Everything else ("i/o", holes) is "outside guest RAM".
READABLE_KINDS = ("ram", "rom", "romd")

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


class TargetGone(SourceGone):
    """The live target went away during the walk (QEMU exited or the connection dropped).

    :param what: the source name.
    :param paddr: the physical address being read when it was noticed.
    """

    def __init__(self, what: str, paddr: int):
        self.paddr = paddr
        super().__init__(what, f"the target disappeared while physical address {paddr:#x} was "
                               "being read (QEMU exited or the gdb connection closed); nothing "
                               "further can be read from it")


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
        :raises SourceError: if the read fails otherwise (e.g. the connection is gone).
        """
        raise NotImplementedError

    def alive(self) -> bool:
        """Return False once the target has gone away (process exited, connection closed)."""
        return True

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
        self.gone = False  # the target disappeared: every later read raises TargetGone
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

    def _qemu_alive(self) -> bool:
        """Is QEMU (the fast path's pid) still a live process, and gdb still connected?"""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X", "x") and self.stub.alive()

    def _fast_read(self, block: RamBlock, paddr: int, size: int) -> bytes:
        """One /proc read; a short read or error means QEMU died (TargetGone) or the page is
        unreadable."""
        try:
            data = self._pread(block, paddr, size)
        except OSError as err:
            data, why = b"", err.strerror
        else:
            why = f"short read ({len(data)} of {size} bytes)"
        if len(data) == size:
            return data
        if not self._qemu_alive():
            self._gone(paddr)
        raise UnreadableMemory(self.name, paddr, f"/proc/{self.pid}/mem: {why}")

    def _gone(self, paddr: int) -> None:
        self.gone = True
        self._saved_mode = None  # nothing left to restore
        raise TargetGone(self.name, paddr)

    @property
    def path(self) -> str:
        """How reads are done: ``/proc/<pid>/mem`` or ``PhyMemMode``."""
        return f"/proc/{self.pid}/mem" if self._mem is not None else "PhyMemMode"

    def describe(self) -> str:
        if self._mem is not None:
            return f"{self.name}, reads via {self.path} (fast path)"
        return f"{self.name}, reads via PhyMemMode ({self.fallback_reason})"

    # -- PhyMemMode session ----------------------------------------------------------------
    def hold(self):
        """This source as the session context manager (PhyMemMode on until the outermost exit)."""
        return self

    def __enter__(self):
        self._depth += 1
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            self._restore_mode()
        return False

    def _ensure_phys_mode(self, paddr: int) -> None:
        """Switch PhyMemMode on (once per session) before the gdbstub read at ``paddr``."""
        if self._saved_mode is not None:
            return
        try:
            old = self.stub.packet("qqemu.PhyMemMode")
        except SourceError:
            if not self.stub.alive():
                self._gone(paddr)
            raise
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
            if self.gone or not self.stub.alive():
                return  # the target (and its PhyMemMode) is gone: nothing to restore
            reply = self.stub.packet(f"Qqemu.PhyMemMode:{saved}")
            if reply != "OK":
                raise SourceError(self.name, f"could not restore PhyMemMode {saved}: {reply!r}")

    def _stub_read(self, paddr: int, size: int) -> bytes:
        if self.gone:
            raise TargetGone(self.name, paddr)
        self._ensure_phys_mode(paddr)
        try:
            return self.stub.read_memory(paddr, size)
        except SourceError:
            if not self.stub.alive():
                self._gone(paddr)
            raise

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
        if self.gone:
            raise TargetGone(self.name, paddr)
        chunks = list(self._chunks(paddr, size))
        if self._mem is not None:
            return b"".join(self._fast_read(b, a, n) for b, a, n in chunks)
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
        return [replace(r, pkru=self.pkru) for r in regs]

    def close(self) -> None:
        try:
            self._restore_mode()
        finally:
            if self._mem is not None:
                self._mem.close()
                self._mem = None


