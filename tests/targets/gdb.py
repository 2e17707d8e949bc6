"""Run gdb against a QEMU gdbstub: one-shot batch runs, or a pygdbmi session for many commands.

How colleagues use it::

    from tests.targets.gdb import GdbMi, gdb_batch, read_registers

    out = gdb_batch(vm.gdb_port, ["info registers cr3"]).stdout   # plain text, one gdb run
    regs = read_registers(vm.gdb_port, ["cr0", "cr3", "cr4", "efer"])  # {name: int}

    with GdbMi(vm.gdb_port) as gdb:                  # one gdb kept open (MI3 through pygdbmi)
        gdb.cli("source gdb_xenpte/gdbcmd/loader.py")  # console output of a CLI command, as text
        value = gdb.evaluate("$cr3")                   # an expression as an int

Both connect with ``set architecture i386:x86-64`` first (a 32-bit guest ELF must never be loaded
as gdb's executable: gdb would switch to i386 and reject QEMU's 64-bit register packet) and detach
at the end, so the guest carries on. While gdb is attached the guest's vCPUs are stopped.

Failure modes: :class:`~tests.targets.qemu.QemuSetupError` when gdb is not installed;
:class:`GdbError` when gdb exits non-zero, an MI command fails, or gdb does not answer in time.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from typing import Dict, List, Sequence

from .qemu import require_binary

__all__ = ["GdbError", "GdbMi", "GdbResult", "connect_commands", "gdb_batch", "read_registers"]


class GdbError(RuntimeError):
    """gdb failed, or a command run under it failed."""


def connect_commands(port: int) -> List[str]:
    """The gdb commands that attach to the gdbstub on ``127.0.0.1:port`` as a 64-bit x86 target."""
    return ["set pagination off", "set confirm off", "set architecture i386:x86-64",
            f"target remote 127.0.0.1:{port}"]


@dataclass(frozen=True)
class GdbResult:
    """What a batch gdb run printed (every batch gdb driver of the tests returns one)."""

    argv: List[str]
    returncode: int
    stdout: str
    stderr: str

    def json_lines(self) -> List[dict]:
        """The JSON records among the printed lines."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]

    def ok(self) -> "GdbResult":
        """This result, after asserting gdb exited 0 and printed no Python traceback."""
        assert self.returncode == 0 and "Traceback" not in self.stderr, self.stderr
        return self


def gdb_batch(port: int, commands: Sequence[str], *, timeout: float = 120.0,
              check: bool = True) -> GdbResult:
    """Attach gdb to ``127.0.0.1:port``, run ``commands`` (each as ``-ex``), detach, exit.

    :param check: raise when gdb exits non-zero (gdb -batch does so when its last command fails).
    :raises GdbError: on a non-zero exit (with ``check``) or when gdb runs longer than ``timeout``.
    """
    argv = [require_binary("gdb", "gdb"), "-batch", "-nx"]
    for command in [*connect_commands(port), *commands, "detach"]:
        argv += ["-ex", command]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:  # subprocess.run has killed gdb by then
        raise GdbError(f"gdb did not finish within {timeout:.0f} s: {exc.stdout!r}") from None
    result = GdbResult(argv, proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise GdbError(f"gdb exited with {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return result


_MARK = "XPT-REGS:"


def read_registers(port: int, names: Sequence[str], timeout: float = 60.0) -> Dict[str, int]:
    """Read registers (e.g. ``cr3``, ``efer``) as unsigned ints in one gdb run.

    Uses gdb's Python (``int(gdb.parse_and_eval("$cr4"))``) rather than parsing ``info
    registers``, whose layout gdb may change.
    """
    expr = "{" + ", ".join(f"{n!r}: int(gdb.parse_and_eval('${n}'))" for n in names) + "}"
    out = gdb_batch(port, [f"python import json; print({_MARK!r} + json.dumps({expr}))"],
                    timeout=timeout).stdout
    for line in out.splitlines():
        if line.startswith(_MARK):
            return {k: v & (1 << 64) - 1 for k, v in json.loads(line[len(_MARK):]).items()}
    raise GdbError(f"gdb printed no register values: {out[-2000:]!r}")


def _mi_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class GdbMi:
    """One gdb process driven over MI3 with pygdbmi, attached to ``127.0.0.1:port``.

    Use as a context manager: gdb detaches and is killed at the end.
    """

    def __init__(self, port: int, *, timeout: float = 60.0):
        from pygdbmi.gdbcontroller import GdbController  # imported here: only MI users need it

        gdb = require_binary("gdb", "gdb")
        self.timeout = timeout
        self._token = 0
        self._ctl = GdbController(command=[gdb, "--nx", "--quiet", "--interpreter=mi3"])
        try:
            for command in connect_commands(port):
                self.cli(command)
        except Exception:
            self._ctl.exit()
            raise

    def mi(self, command: str, timeout: float = 0) -> List[dict]:
        """Run one MI command; return every record up to and including its result record.

        :raises GdbError: if the result is ``^error`` or none arrives within ``timeout`` seconds.
        """
        self._token += 1
        token = self._token
        self._ctl.write(f"{token}{command}", read_response=False)
        deadline = time.monotonic() + (timeout or self.timeout)
        records: List[dict] = []
        while time.monotonic() < deadline:
            for record in self._ctl.get_gdb_response(timeout_sec=0.1, raise_error_on_timeout=False):
                records.append(record)
                if record.get("type") == "result" and record.get("token") == token:
                    if record.get("message") == "error":
                        raise GdbError(f"{command}: {record['payload'].get('msg')}")
                    return records
        raise GdbError(f"{command}: no result from gdb within {timeout or self.timeout:.0f} s")

    def cli(self, line: str, timeout: float = 0) -> str:
        """Run a CLI command and return what it printed to the console."""
        records = self.mi(f"-interpreter-exec console {_mi_quote(line)}", timeout)
        return "".join(r["payload"] for r in records
                       if r.get("type") == "console" and isinstance(r.get("payload"), str))

    def evaluate(self, expr: str) -> int:
        """Evaluate a gdb expression to an unsigned int (``$cr3``, ``*(long *)0x1000`` ...)."""
        out = self.cli(f"python print(int(gdb.parse_and_eval({expr!r})) & ((1 << 64) - 1))")
        return int(out.strip().splitlines()[-1])

    def close(self) -> None:
        """Detach (the guest resumes) and end gdb."""
        try:
            self.cli("detach", timeout=10)
        except GdbError:
            pass
        finally:
            self._ctl.exit()

    def __enter__(self) -> "GdbMi":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False
