"""gdb's pager on an interactive terminal: a long walk stops at a screenful, 'q' ends it cleanly.

gdb pages only when it talks to a terminal, so gdb runs on a pseudo-terminal here (no -batch).
"""

import os
import pty
import select
import subprocess
import time

from gdbrun import DEPS, GDB, LOADER, ROOT


class Terminal:
    """An interactive gdb on a pseudo-terminal."""

    def __init__(self, *commands: str):
        self.master, slave = pty.openpty()
        argv = [GDB, "-nx", "-q", "-iex", f"python import sys; sys.path[:0] = "
                f"{[str(ROOT), str(DEPS)]!r}", "-ex", f"source {LOADER}"]
        for c in commands:
            argv += ["-ex", c]
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                                     env=dict(os.environ, TERM="xterm"), start_new_session=True)
        os.close(slave)

    def read_until(self, marker: bytes, timeout: float = 60) -> str:
        buf, end = b"", time.monotonic() + timeout
        while marker not in buf and time.monotonic() < end:
            if select.select([self.master], [], [], 0.2)[0]:
                try:
                    buf += os.read(self.master, 65536)
                except OSError:
                    break
        assert marker in buf, buf[-500:]
        return buf.decode(errors="replace")

    def send(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        os.close(self.master)


def test_pager_stops_a_long_walk_and_q_ends_it(image):
    term = Terminal("set height 5", "set width 0", "set style enabled off")
    try:
        term.read_until(b"(gdb) ")
        term.send(f"xen-pte-walk --no-coalesce {image} 0 0x800000000000")
        first = term.read_until(b"--Type <RET> for more")
        assert "VA range" in first and first.count("\n") < 8
        term.send("q")
        rest = term.read_until(b"(gdb) ")
        assert "xen-pte-walk: interrupted" in rest and "Traceback" not in rest
        term.send("show xen-pte limit")  # gdb is still fine
        assert "unlimited." in term.read_until(b"(gdb) ")
    finally:
        term.close()


def test_enter_does_not_repeat_a_walk(image):
    term = Terminal("set height 0", "set style enabled off")
    try:
        term.read_until(b"(gdb) ")
        term.send(f"xen-pte-walk {image}")
        assert "4 mappings;" in term.read_until(b"(gdb) ")
        term.send("")  # Enter on an empty line repeats the last command unless dont_repeat()
        again = term.read_until(b"(gdb) ")
        assert "mappings;" not in again and "VA range" not in again
    finally:
        term.close()
