"""Which local process is at the other end of gdb's TCP connection: /proc socket discovery.

The live QEMU source reads guest RAM through ``/proc/<qemu-pid>/mem`` when it can (see
:mod:`gdb_xenpte.sources.qemu_live`); this module finds that pid from the kernel's socket tables.

Failure modes: none raised. Every unreadable table or vanished process means "not found"
(:func:`find_peer_pid` returns None), and the caller falls back to the gdbstub.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

__all__ = ["find_peer_pid"]


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
