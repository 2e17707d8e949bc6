"""The gdb half of the live sources: a :class:`~gdb_xenpte.sources.qemu_live.Stub` over gdb.

Everything here only relays: monitor commands, maintenance packets, memory reads and registers.
The logic (RAM layout, fast path, PhyMemMode save/restore, a vanished target) is in
:mod:`gdb_xenpte.sources.qemu_live`, the direct map and M2P in :mod:`gdb_xenpte.sources.directmap`
(neither imports gdb).

Failure modes: :class:`~gdb_xenpte.errors.OptionError` when there is no live target or it offers no
physical access and no ``--direct-map``; gdb's own errors become
:class:`~gdb_xenpte.errors.SourceError`/:class:`~gdb_xenpte.errors.UnreadableMemory`.
"""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

import gdb

from ..errors import OptionError, SourceError, UnreadableMemory
from ..sources.base import PhysSource, VcpuRegs
from ..sources.directmap import DirectMapSource
from ..xen import M2P_PV32, M2P_PV64
from ..sources.qemu_live import QemuLiveSource, Stub

__all__ = ["GdbStub", "open_live_source"]

# Control registers QEMU's x86 gdbstub exposes (target/i386/gdbstub.c IDX_CTL_*); PKRU is not one.
# CS and RIP say where the vCPU stopped (its ring: Xen's CR4 vs a PV guest context's), RFLAGS
# carries AC.
_REGISTERS = ("cr0", "cr2", "cr3", "cr4", "efer", "cs", "rip")


class GdbStub(Stub):
    """Relay to gdb's current inferior and its remote connection."""

    def __init__(self):
        self.inferior = gdb.selected_inferior()
        conn = getattr(self.inferior, "connection", None)
        self.conn_type = conn.type if conn is not None else None
        self.details = (conn.details or "") if conn is not None else ""
        self.description = self.details or "native"

    def monitor(self, command: str) -> str:
        try:
            return gdb.execute(f"monitor {command}", to_string=True)
        except gdb.error as err:
            raise SourceError("QEMU monitor", f"'{command}': {err}") from None

    def packet(self, payload: str) -> str:
        try:
            out = gdb.execute(f"maintenance packet {payload}", to_string=True)
        except gdb.error as err:
            raise SourceError("gdb remote", f"packet {payload!r}: {err}") from None
        m = re.search(r'received: "(.*)"', out)
        return m.group(1) if m else ""

    def read_memory(self, addr: int, size: int) -> bytes:
        try:
            return bytes(self.inferior.read_memory(addr, size))
        except gdb.MemoryError:
            raise UnreadableMemory(self.description, addr, "target refused the read") from None
        except gdb.error as err:  # e.g. "Remote connection closed": the source asks alive()
            raise SourceError(self.description, f"read at {addr:#x}: {err}") from None

    def alive(self) -> bool:
        inf = self.inferior
        conn = getattr(inf, "connection", None)
        return (inf.is_valid() and inf.pid != 0
                and (conn is None or not hasattr(conn, "is_valid") or conn.is_valid()))

    def tcp_peer(self) -> Optional[Tuple[str, int]]:
        # "host:port", ":port", "tcp:host:port"; pipes ("| cmd") and unix sockets are not TCP.
        m = re.fullmatch(r"(?:tcp\d?:)?(.*):(\d+)", self.details)
        return (m.group(1) or "localhost", int(m.group(2))) if m else None

    def vcpus(self) -> List[VcpuRegs]:
        # QEMU presents one gdb thread per vCPU; reading a thread's registers needs selecting it.
        threads = sorted(self.inferior.threads(), key=lambda t: t.num)
        if not threads:
            return []
        current = gdb.selected_thread()
        out = []
        try:
            for th in threads:
                th.switch()
                regs = {r: _register(r) for r in _REGISTERS}
                out.append(VcpuRegs(th.num - 1, rflags=_register("eflags"), **regs))
        finally:
            if current is not None and current.is_valid():
                current.switch()
        return out


def _register(name: str) -> Optional[int]:
    """A register as int (QEMU's CR registers are flag-typed), None when the target lacks it."""
    try:
        value = gdb.parse_and_eval(f"${name}")
        return None if value.type.code == gdb.TYPE_CODE_VOID else int(value)
    except gdb.error:
        return None


def _has_phymem(stub: GdbStub) -> bool:
    try:
        return "PhyMemMode" in stub.packet("qqemu.Supported")
    except SourceError:
        return False


def open_live_source(direct_map: Optional[int] = None, domain: Optional[str] = None,
                     fast: bool = True, pkru: Optional[int] = None) -> PhysSource:
    """Open the live target as a memory source.

    :param direct_map: read tables through the guest direct map at this VA instead of physically.
    :param domain: ``pv64``/``pv32`` also translate frames through Xen's M2P (direct map only).
    :param fast: allow the ``/proc/<qemu>/mem`` fast path.
    :raises OptionError: if there is no live target, or no way to read it physically.
    """
    if gdb.selected_inferior().pid == 0:
        raise OptionError("no live target: connect with 'target remote HOST:PORT', "
                          "or give --core FILE / --raw FILE@BASE")
    stub = GdbStub()
    if direct_map is not None:
        m2p = {"pv64": M2P_PV64, "pv32": M2P_PV32}.get(domain or "")
        return DirectMapSource(stub.read_memory, direct_map, m2p, domain, stub.vcpus())
    # gdb < 11 has no Inferior.connection (conn_type None): let the stub's answer decide.
    if stub.conn_type not in ("remote", "extended-remote", None) or not _has_phymem(stub):
        raise OptionError(f"target '{stub.description}' offers no physical memory access "
                          "(QEMU's gdbstub does): give --direct-map BASE, --core FILE or --raw "
                          "FILE@BASE")
    return QemuLiveSource(stub, fast=fast, pkru=pkru)
