"""Start a QEMU guest for the live tests, talk to its monitor, read its serial log, kill it.

Every guest runs ``qemu-system-x86_64 -accel tcg`` with its gdbstub on a free loopback TCP port,
its HMP monitor on a unix socket in a private temporary directory, and its first serial port
written to a log file. Whatever happens in the test, the process is killed by its pid when the
``with`` block ends (as a last resort at interpreter exit, and by the kernel if the test process
is killed outright).

How colleagues use it (boot once per pytest session, from a session-scoped fixture)::

    from tests.targets.qemu import Qemu

    @pytest.fixture(scope="session")
    def linux_vm(tmp_path_factory):
        args = ["-kernel", str(kernel), "-initrd", str(initrd), "-append", "console=ttyS0"]
        with Qemu(args, memory="512M", workdir=tmp_path_factory.mktemp("linux")) as vm:
            vm.wait_for_serial(r"~ # ", timeout=60)   # raises with the log tail on timeout
            yield vm

    vm.gdb_port                  # `target remote 127.0.0.1:<port>` (see tests/targets/gdb.py)
    vm.monitor("info tlb")       # one HMP command, its reply as text (echo and prompt removed)
    vm.pmemsave(0x1000, 4096)    # guest-physical bytes (pmemsave_file: to a file)
    vm.serial_text()             # everything the guest printed so far
    vm.pid, vm.workdir           # the QEMU process; where serial.log and qemu.stderr live

A missing ``qemu-system-x86_64`` raises :class:`QemuSetupError` (a setup error, never a skip).
Failure modes: :class:`QemuSetupError` for missing binaries; :class:`QemuError` when QEMU exits
early, a monitor command times out, or ``wait_for_serial`` times out (the message carries the
tail of the serial log and QEMU's stderr).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence, Set

__all__ = ["Monitor", "Qemu", "QemuError", "QemuSetupError", "free_tcp_port", "require_binary"]

QEMU_BINARY = "qemu-system-x86_64"
# The HMP prompt that ends every reply.
_PROMPT = b"(qemu) "


class QemuSetupError(RuntimeError):
    """A tool the live tests need is not installed; the message says which package provides it."""


class QemuError(RuntimeError):
    """A guest did not start, stopped early, or did not answer in time."""


def require_binary(name: str, package: str) -> str:
    """Return the path of ``name`` on PATH.

    :raises QemuSetupError: naming the Debian ``package`` to install (``.ci/run`` installs it).
    """
    path = shutil.which(name)
    if path is None:
        raise QemuSetupError(f"{name} not found on PATH: install the Debian package {package!r} "
                             f"(bash .ci/run installs everything the live tests need)")
    return path


def free_tcp_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (QEMU binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Monitor:
    """A client of QEMU's human monitor (HMP) on a unix socket.

    HMP echoes each typed character back with terminal escapes, so a reply is everything after the
    first CR LF (the end of the echo) up to the next prompt.
    """

    def __init__(self, path: Path, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.connect(str(path))
                break
            except OSError:
                self._sock.close()
                if time.monotonic() > deadline:
                    raise QemuError(f"no QEMU monitor at {path} after {timeout:.0f} s")
                time.sleep(0.02)
        self._read_until_prompt(timeout, banner=True)

    def _read_until_prompt(self, timeout: float, banner: bool = False) -> bytes:
        self._sock.settimeout(timeout)
        buf = b""
        while True:
            # The reply is complete at a prompt that follows the echo line (the banner has none).
            body = buf if banner else buf.partition(b"\r\n")[2]
            if body.endswith(_PROMPT):
                return body[: -len(_PROMPT)]
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                raise QemuError(f"QEMU monitor: no prompt after {timeout:.0f} s "
                                f"(got {buf[-200:]!r})") from None
            if not chunk:
                raise QemuError("QEMU monitor closed the connection (QEMU exited?)")
            buf += chunk

    def command(self, line: str, timeout: float = 60.0) -> str:
        """Run one HMP command and return its output (``\\n`` line ends, no trailing prompt)."""
        self._sock.sendall(line.encode() + b"\n")
        return self._read_until_prompt(timeout).decode(errors="replace").replace("\r\n", "\n")

    def close(self) -> None:
        self._sock.close()


def _die_with_parent() -> None:
    """In the child before exec: have the kernel SIGKILL QEMU if the test process dies first
    (pytest killed by a signal runs neither ``finally`` blocks nor atexit handlers)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


# Guests still running, killed at interpreter exit if a with-block never got to do it.
_LIVE: Set["Qemu"] = set()


@atexit.register
def _kill_leftovers() -> None:
    for vm in list(_LIVE):
        vm.stop()


class Qemu:
    """One ``qemu-system-x86_64`` process; use it as a context manager.

    :param args: extra QEMU arguments (``-kernel``, ``-append``, drives ...).
    :param memory: guest RAM (``-m``).
    :param cpu: CPU model (``-cpu``); ``max`` offers SMEP, SMAP, PKU, 1 GiB pages and LA57 under
        TCG, with MAXPHYADDR 40.
    :param workdir: where ``serial.log`` and ``qemu.stderr`` go (kept after the run); by default
        the private temporary directory, removed at stop.
    :param start_timeout: seconds to wait for the monitor to answer.
    :raises QemuSetupError: if qemu-system-x86_64 is not installed.
    """

    def __init__(self, args: Sequence[str] = (), *, memory: str = "64M", cpu: str = "max",
                 workdir: Optional[Path] = None, start_timeout: float = 20.0):
        require_binary(QEMU_BINARY, "qemu-system-x86")  # before anything is created
        self.args: List[str] = list(args)
        self.memory = memory
        self.cpu = cpu
        self.start_timeout = start_timeout
        self._tmp = Path(tempfile.mkdtemp(prefix="xpq-"))  # short: unix socket paths are limited
        self.workdir = Path(workdir) if workdir is not None else self._tmp
        self.serial_log = self.workdir / "serial.log"
        self.monitor_path = self._tmp / "monitor.sock"
        self.gdb_port = 0
        self.started_at = 0.0
        self._proc: Optional[subprocess.Popen] = None
        self._monitor: Optional[Monitor] = None

    @property
    def pid(self) -> int:
        """The QEMU process id (0 before start)."""
        return self._proc.pid if self._proc else 0

    def command_line(self) -> List[str]:
        """The full QEMU command line this guest runs with."""
        return [
            QEMU_BINARY, "-accel", "tcg", "-cpu", self.cpu, "-m", self.memory,
            "-display", "none", "-nodefaults", "-no-reboot",
            "-serial", f"file:{self.serial_log}",
            "-monitor", f"unix:{self.monitor_path},server=on,wait=off",
            "-gdb", f"tcp:127.0.0.1:{self.gdb_port}",
            *self.args,
        ]

    def start(self) -> "Qemu":
        """Start QEMU and connect to its monitor; retries if the gdb port was taken meanwhile.

        :raises QemuError: if QEMU exits or its monitor does not answer.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):
            self.gdb_port = free_tcp_port()
            self.serial_log.write_bytes(b"")
            stderr = open(self.workdir / "qemu.stderr", "wb")
            self.started_at = time.monotonic()
            self._proc = subprocess.Popen(self.command_line(), stdin=subprocess.DEVNULL,
                                          stdout=stderr, stderr=stderr,
                                          preexec_fn=_die_with_parent)
            stderr.close()
            _LIVE.add(self)
            try:
                self._monitor = self._connect_monitor()
                return self
            except QemuError:
                port_taken = "in use" in self.stderr_text() or "bind" in self.stderr_text()
                self.stop(remove_tmp=not port_taken)
                if not port_taken:
                    raise
        self.stop()
        raise QemuError("QEMU could not bind a free gdb port in three attempts")

    def _connect_monitor(self) -> Monitor:
        deadline = time.monotonic() + self.start_timeout
        while not self.monitor_path.exists():
            if self._proc.poll() is not None:
                raise QemuError(f"QEMU exited with status {self._proc.returncode}: "
                                f"{self.stderr_text()}")
            if time.monotonic() > deadline:
                raise QemuError(f"QEMU monitor socket missing after {self.start_timeout:.0f} s")
            time.sleep(0.01)
        return Monitor(self.monitor_path, timeout=max(1.0, deadline - time.monotonic()))

    def stop(self, remove_tmp: bool = True) -> None:
        """Kill QEMU by its pid (SIGTERM, then SIGKILL) and wait for it; safe to call twice."""
        if self._monitor is not None:
            self._monitor.close()
            self._monitor = None
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
        _LIVE.discard(self)
        if remove_tmp and self._tmp.exists():
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "Qemu":
        return self.start()

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def seconds_since_start(self) -> float:
        """Seconds since QEMU was started (for boot-time measurements)."""
        return time.monotonic() - self.started_at

    # ---- talking to the guest ------------------------------------------------------------

    def monitor(self, line: str, timeout: float = 60.0) -> str:
        """Run one HMP command (e.g. ``"info tlb"``) and return its output text.

        :raises QemuError: if the guest is not running or the command does not finish in time.
        """
        if self._monitor is None:
            raise QemuError("QEMU is not running")
        return self._monitor.command(line, timeout)

    def pmemsave(self, paddr: int, size: int) -> bytes:
        """Return ``size`` bytes of guest-physical memory at ``paddr`` (through HMP ``pmemsave``).

        Bytes outside guest RAM read as whatever QEMU returns there (zeros or 0xff), not errors.
        """
        path = self.pmemsave_file(paddr, size, self._tmp / f"pmem-{paddr:x}-{size:x}.bin")
        data = path.read_bytes()
        path.unlink()
        return data

    def pmemsave_file(self, paddr: int, size: int, path: Path) -> Path:
        """Write ``size`` bytes of guest-physical memory at ``paddr`` to ``path``; return it.

        :raises QemuError: if QEMU did not write the whole range.
        """
        path = Path(path)
        reply = self.monitor(f'pmemsave {paddr:#x} {size:#x} "{path}"')
        if not path.exists() or path.stat().st_size != size:
            raise QemuError(f"pmemsave {paddr:#x} {size:#x} failed: {reply.strip()}")
        return path

    def serial_text(self) -> str:
        """Everything the guest wrote to its first serial port so far."""
        try:
            return self.serial_log.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def stderr_text(self) -> str:
        try:
            return (self.workdir / "qemu.stderr").read_text(errors="replace").strip()
        except FileNotFoundError:
            return ""

    def wait_for_serial(self, pattern: str, timeout: float) -> "re.Match[str]":
        """Wait until the serial log matches ``pattern`` (a regex, MULTILINE) and return the match.

        :raises QemuError: on timeout or if QEMU exits first; the message holds the log's tail.
        """
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            text = self.serial_text()
            match = regex.search(text)
            if match:
                return match
            if not self.is_running():
                raise QemuError(f"QEMU exited before the serial log matched {pattern!r}; "
                                f"stderr: {self.stderr_text()!r}; log tail: {text[-2000:]!r}")
            if time.monotonic() > deadline:
                raise QemuError(f"serial log did not match {pattern!r} within {timeout:.0f} s; "
                                f"log tail: {text[-2000:]!r}")
            time.sleep(0.02)
