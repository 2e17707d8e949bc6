"""The gdb-free half of the live sources (sources.qemu_live, .procpeer, .directmap), with a fake
gdb stub and real child processes; no gdb runs here (so the tier is tests/sources).

The real gdb and QEMU are exercised in tests/live/test_gdblive.py; here every branch is driven
deterministically: RAM layout parsing, PhyMemMode save/restore on success, error and Ctrl-C,
reads outside guest RAM, fast-path fallbacks, a target that disappears mid-walk (gdbstub and
/proc paths), the TCP-peer pid lookup, and the M2P translation of the direct-map source.
"""

import os
import socket
import subprocess
import sys

import pytest

from gdb_xenpte.errors import SourceError, UnreadableMemory
from gdb_xenpte.sources.base import PhysSource, VcpuRegs
from gdb_xenpte.sources.directmap import DirectMapSource
from gdb_xenpte.xen import M2P_PV64
from gdb_xenpte.sources.procpeer import find_peer_pid
from gdb_xenpte.sources.qemu_live import (QemuLiveSource, Stub, TargetGone, parse_gpa2hva,
                                          parse_mtree)

MTREE = """FlatView #0
 AS "memory", root: system
 AS "cpu-memory-0", root: system
 Root memory region: system
  0000000000000000-00000000000bffff (prio 0, ram): pc.ram
  00000000000c0000-00000000000dffff (prio 1, rom): pc.rom
  0000000000100000-00000000bfffffff (prio 0, ram): pc.ram @0000000000100000
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios
  0000000100000000-00000001467fffff (prio 0, ram): pc.ram @00000000c0000000

FlatView #1
 AS "I/O", root: io
 Root memory region: io
  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan
  0000000000000010-000000000000001f (prio 0, ram): not-system-memory
"""


def test_parse_mtree_keeps_host_backed_blocks_of_system_memory():
    blocks = parse_mtree(MTREE)
    assert [(b.start, b.end, b.kind, b.name) for b in blocks] == [
        (0, 0xC0000, "ram", "pc.ram"), (0xC0000, 0xE0000, "rom", "pc.rom"),
        (0x100000, 0xC0000000, "ram", "pc.ram"), (0xFFFC0000, 0x100000000, "rom", "pc.bios"),
        (0x100000000, 0x146800000, "ram", "pc.ram")]


def test_parse_mtree_without_system_view_is_an_error():
    with pytest.raises(SourceError, match="no flat view of system memory"):
        parse_mtree("FlatView #0\n AS \"I/O\", root: io\n")


def test_parse_gpa2hva():
    assert parse_gpa2hva("Host virtual address for 0x100000 (pc.ram) is 0x7f55b1700000\r\n") \
        == 0x7F55B1700000
    assert parse_gpa2hva("Error: No memory is mapped at address 0xfec00000") is None


class FakeStub(Stub):
    """QEMU as the source sees it: memory, a monitor, a PhyMemMode flag, a packet log."""

    description = "fake:1234"

    def __init__(self, mode="0", fail_at=None, interrupt_at=None, peer=None, dies_at=None,
                 mem=None):
        self.mode = mode
        self.mem = bytearray(os.urandom(0x20000) if mem is None else mem)
        self.packets = []
        self.reads = 0
        self.fail_at, self.interrupt_at, self.peer = fail_at, interrupt_at, peer
        self.dies_at, self.dead = dies_at, False
        self.hva = {}  # guest-physical block start -> host address, for gpa2hva

    def monitor(self, command):
        if command == "info mtree -f":
            return ('FlatView #0\n AS "memory", root: system\n'
                    "  0000000000000000-000000000000ffff (prio 0, ram): pc.ram\n"
                    "  0000000000010000-000000000001ffff (prio 0, ram): pc.ram @0000000000010000\n")
        if command.startswith("gpa2hva ") and self.hva:
            gpa = int(command.split()[1], 0)
            return f"Host virtual address for {gpa:#x} (pc.ram) is {self.hva[gpa]:#x}\r\n"
        raise AssertionError(command)

    def alive(self):
        return not self.dead

    def packet(self, payload):
        if self.dead:  # what gdb says once the remote end has closed the connection
            raise SourceError("gdb remote", f"packet {payload!r}: Packets can only be sent to a "
                                            "remote target")
        self.packets.append(payload)
        if payload == "qqemu.PhyMemMode":
            return self.mode
        if payload.startswith("Qqemu.PhyMemMode:"):
            self.mode = payload[-1]
            return "OK"
        raise AssertionError(payload)

    def read_memory(self, addr, size):
        if self.dead:
            raise SourceError(self.description, f"read at {addr:#x}: Remote connection closed")
        assert self.mode == "1", "read while not in physical mode"
        self.reads += 1
        if self.reads == self.dies_at:
            self.dead = True
            raise SourceError(self.description, f"read at {addr:#x}: Remote connection closed")
        if self.reads == self.fail_at:
            raise RuntimeError("boom")
        if self.reads == self.interrupt_at:
            raise KeyboardInterrupt
        return bytes(self.mem[addr:addr + size])

    def tcp_peer(self):
        return self.peer

    def vcpus(self):
        return [VcpuRegs(0, cr3=0x1000, cr4=0x20)]


def test_phymem_session_switches_once_and_restores():
    stub = FakeStub()
    src = QemuLiveSource(stub, fast=False)
    with src:
        assert src.read(0x1000, 16) == bytes(stub.mem[0x1000:0x1010])
        assert src.read(0xFFF8, 16) == bytes(stub.mem[0xFFF8:0x10008])  # spans two blocks
        assert stub.mode == "1"
    assert stub.mode == "0"
    assert stub.packets == ["qqemu.PhyMemMode", "Qqemu.PhyMemMode:1", "Qqemu.PhyMemMode:0"]
    assert src.path == "PhyMemMode" and "fast path off (xen-pte fast-path)" in src.describe()


def test_hold_is_one_phymem_session_and_closes_nothing():
    """hold(): what a Xen host's many small reads (domains, vCPUs, then the walk) run under: one
    mode switch for all of them, restored at the end; the source stays usable afterwards."""
    stub = FakeStub()
    src = QemuLiveSource(stub, fast=False)
    with src.hold():
        for addr in range(0, 0x4000, 0x100):
            src.read(addr, 8)
    assert stub.packets == ["qqemu.PhyMemMode", "Qqemu.PhyMemMode:1", "Qqemu.PhyMemMode:0"]
    assert src.read(0, 8) == bytes(stub.mem[:8])  # not closed

    class Closing(PhysSource):
        closed = False

        def close(self):
            self.closed = True

    other = Closing()
    with other.hold() as held:
        assert held is other
    assert not other.closed


def test_a_read_outside_a_session_restores_at_once():
    stub = FakeStub()
    src = QemuLiveSource(stub, fast=False)
    src.read(0, 8)
    assert stub.mode == "0"


def test_mode_one_set_by_the_user_is_left_alone():
    stub = FakeStub(mode="1")
    with QemuLiveSource(stub, fast=False) as src:
        src.read(0, 8)
    assert stub.mode == "1" and stub.packets == ["qqemu.PhyMemMode"]


@pytest.mark.parametrize("kind, exc", [("fail_at", RuntimeError), ("interrupt_at",
                                                                  KeyboardInterrupt)])
def test_mode_restored_on_error_and_ctrl_c(kind, exc):
    stub = FakeStub(**{kind: 2})
    src = QemuLiveSource(stub, fast=False)
    with pytest.raises(exc):
        with src:
            src.read(0, 8)
            src.read(8, 8)
    assert stub.mode == "0"


def test_outside_guest_ram_is_an_error_not_zeros():
    src = QemuLiveSource(FakeStub(), fast=False)
    with pytest.raises(UnreadableMemory, match="outside guest RAM at physical address 0x20000"):
        src.read(0x1FFF0, 0x20)
    assert src.ranges() == [(0, 0x10000), (0x10000, 0x20000)]


def test_gdbstub_without_phymemmode_is_a_clear_error():
    stub = FakeStub(mode="")
    with pytest.raises(SourceError, match="gdbstub has no PhyMemMode"):
        QemuLiveSource(stub, fast=False).read(0, 8)


def test_fast_path_fallbacks_say_why():
    assert QemuLiveSource(FakeStub(peer=None)).fallback_reason == "the gdb connection is not TCP"
    src = QemuLiveSource(FakeStub(peer=("localhost", 1)))
    assert src.path == "PhyMemMode"
    assert src.fallback_reason == "no process on this host owns the peer of port 1"


def test_pkru_option_reaches_every_vcpu():
    assert QemuLiveSource(FakeStub(), fast=False, pkru=0x55).vcpus()[0].pkru == 0x55


def test_find_peer_pid_follows_our_tcp_connection():
    # A child process listens; we connect; the peer of our socket is the child, not us.
    child = subprocess.Popen([sys.executable, "-c",
                              "import socket,sys,time\n"
                              "s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(1)\n"
                              "print(s.getsockname()[1], flush=True)\n"
                              "c,_=s.accept(); time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())
        with socket.create_connection(("127.0.0.1", port)):
            for _ in range(100):  # the child's accept() may lag a moment
                pid = find_peer_pid(port)
                if pid:
                    break
            assert pid == child.pid
    finally:
        child.kill()
        child.wait()


def test_direct_map_reads_through_the_base_and_translates_mfns():
    mem = {}
    m2p_base, width = M2P_PV64
    mem[m2p_base + 7 * 8] = (3).to_bytes(8, "little")             # MFN 7 -> PFN 3
    mem[m2p_base + 9 * 8] = ((1 << 64) - 1).to_bytes(8, "little")  # INVALID_M2P_ENTRY

    def read_virt(va, size):
        if va in mem:
            return mem[va][:size]
        if 0xFFFF888000000000 <= va < 0xFFFF888000000000 + 0x10000:
            return bytes([va & 0xFF]) * size
        raise UnreadableMemory("fake", va)

    src = DirectMapSource(read_virt, 0xFFFF888000000000, M2P_PV64, "pv64")
    assert src.read(0x42, 4) == b"\x42" * 4
    assert src.translate_frame(7) == 3 and src.translate_frame(9) is None
    assert src.translate_frame(11) is None  # M2P slot unreadable
    with pytest.raises(UnreadableMemory, match="direct-map VA 0xffff888000020000 not readable"):
        src.read(0x20000, 8)
    assert DirectMapSource(read_virt, 0xFFFF888000000000).translate_frame is None


def _walk_reads(src, addrs):
    """Read like a walk does: every failure is noted and the walk goes on."""
    errors = []
    for a in addrs:
        try:
            src.read(a, 8)
        except SourceError as err:
            errors.append(err)
    return errors


def test_target_gone_mid_walk_is_named_and_nothing_masks_it():
    # QEMU dies at the third gdbstub read: that read and every later one say the target
    # disappeared; leaving the session does not try (and fail) to restore PhyMemMode.
    stub = FakeStub(dies_at=3)
    src = QemuLiveSource(stub, fast=False)
    with src:
        errors = _walk_reads(src, range(0, 0x60, 8))
    src.close()
    assert len(errors) == 10 and all(isinstance(e, TargetGone) for e in errors)
    assert "the target disappeared while physical address 0x10 was being read" in str(errors[0])
    assert all("PhyMemMode" not in str(e) for e in errors)
    assert stub.reads == 3  # nothing was sent to a dead target after it was noticed


_CHILD_RAM = bytes(range(256)) * 64  # 16 KiB the child holds at a known host address
_CHILD = ("import ctypes,socket,time\n"
          f"ram=ctypes.create_string_buffer({_CHILD_RAM!r}, {len(_CHILD_RAM)})\n"
          "s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(1)\n"
          "print(s.getsockname()[1], ctypes.addressof(ram), flush=True)\n"
          "c,_=s.accept(); time.sleep(60)")


def test_target_gone_on_the_fast_path_is_named():
    # A child process plays QEMU: it serves a TCP port (so the peer lookup finds it) and holds
    # guest RAM in its own memory; the source reads it through /proc/<child>/mem, then the child
    # is killed mid-walk.
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True)
    try:
        port, hva = map(int, child.stdout.readline().split())
        with socket.create_connection(("127.0.0.1", port)):
            stub = FakeStub(peer=("127.0.0.1", port), mem=_CHILD_RAM * 8)
            stub.hva = {0: hva, 0x10000: hva}  # both blocks at the child's buffer
            for _ in range(100):  # the child's accept() may lag a moment
                src = QemuLiveSource(stub)
                if src.pid:
                    break
            assert src.pid == child.pid, src.fallback_reason
            with src:
                assert src.read(0x100, 8) == _CHILD_RAM[0x100:0x108]
                child.kill()
                child.wait()
                errors = _walk_reads(src, range(0, 0x40, 8))
            src.close()
    finally:
        child.kill()
        child.wait()
    assert errors and all(isinstance(e, TargetGone) for e in errors)
    assert "the target disappeared" in str(errors[0])


def test_target_gone_before_the_mode_switch_names_the_read():
    stub = FakeStub()
    src = QemuLiveSource(stub, fast=False)
    stub.dead = True  # QEMU went away between opening the source and the first read
    with pytest.raises(TargetGone, match="while physical address 0x40 was being read"):
        src.read(0x40, 8)
    src.close()  # nothing to restore, nothing raised
    assert stub.packets == []
