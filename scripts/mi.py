"""One gdb process driven over gdb/MI (pygdbmi), with the extension loaded.

:class:`GdbSession` starts ``gdb --interpreter=mi3``, loads gdb_xenpte through its loader file,
and runs commands with a deadline. A command whose output may be huge (a whole-space walk) runs
with its own ``-o FILE`` so its JSON Lines go straight to a file: as MI console records every
line would be escaped by gdb and parsed character by character by pygdbmi (slow, and pygdbmi
gathers a command's records in a list) — see benchmarks/bench_batch.py for the measurement —
and through gdb's ``pipe`` they would pass ``gdb.write`` (benchmarks/RESULTS.md, issue 15).

Failure modes (all :class:`GdbFailure`): gdb is missing or dies, a command reports ``^error``
(:class:`CommandError`, carrying gdb's one-line message), or the deadline passes
(:class:`GdbTimeout`; :meth:`GdbSession.abort` then detaches a live target and kills gdb).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import time
from typing import Callable, Dict, List, Optional

__all__ = ["CommandError", "GdbCancelled", "GdbFailure", "GdbSession", "GdbTimeout", "deps_dir",
           "loader_path"]


class GdbFailure(Exception):
    """gdb could not do what was asked; ``str()`` is one line for an error record."""


class CommandError(GdbFailure):
    """A command ended in MI ``^error``; the message is gdb's."""


class GdbTimeout(GdbFailure):
    """The deadline passed before gdb answered."""


class GdbCancelled(GdbFailure):
    """The session's ``cancelled()`` said stop (the cluster cancelled the task)."""


def loader_path() -> str:
    """The extension's loader file (what ``xen-pte-gdbinit`` tells users to source)."""
    from gdb_xenpte import gdb_load
    return os.path.join(gdb_load.HERE, "gdb_load.py")


def deps_dir() -> str:
    """The directory this interpreter imports tabulate from.

    gdb embeds its own Python (Debian's /usr/bin/python3), which may lack the extension's
    dependency; the loader adds only the package's own directory, so we offer this one too.
    """
    import tabulate
    return os.path.dirname(os.path.dirname(os.path.abspath(tabulate.__file__)))


_MI_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _mi_quote(text: str) -> str:
    """An MI c-string: a newline (a file name may hold one) must not end the MI command."""
    return '"' + "".join(_MI_ESCAPES.get(c, c) for c in text) + '"'


class GdbSession:
    """A gdb with the extension loaded; use as a context manager (gdb is killed at the end).

    :param gdb: the gdb binary.
    :param deadline: ``time.monotonic()`` value after which every wait raises :class:`GdbTimeout`.
    :raises GdbFailure: if gdb is not found or the extension does not load.
    """

    def __init__(self, gdb: str = "gdb", deadline: Optional[float] = None):
        from pygdbmi.gdbcontroller import GdbController  # only the batch tools need pygdbmi
        path = shutil.which(gdb)
        if path is None:
            raise GdbFailure(f"gdb not found: {gdb!r} (install Debian's 'gdb' or give --gdb PATH)")
        self.gdb = gdb
        self.deadline = deadline
        # Asked about twice a second while gdb works; True ends the wait (GdbCancelled).
        self.cancelled: Optional[Callable[[], bool]] = None
        self._token = 0
        self._pending: Optional[int] = None  # token of a command still running
        # A short grace period: pygdbmi otherwise waits 0.2 s after the last output per read.
        self._ctl = GdbController(command=[path, "--nx", "--quiet", "--interpreter=mi3"],
                                  time_to_check_for_additional_output_sec=0.01)
        try:
            self.console(f"python import sys; sys.path.append({deps_dir()!r})")
            for setting in ("pagination off", "confirm off", "width 0", "style enabled off"):
                self.mi(f"-gdb-set {setting}")
            said = self.mi(f"-interpreter-exec console {_mi_quote('source ' + loader_path())}")
            try:
                # The loader writes one line and registers nothing when a dependency is missing.
                self.console("help xen-pte-walk")
            except CommandError:
                why = "".join(r["payload"] for r in said if r.get("type") == "log").strip()
                raise GdbFailure(f"the gdb_xenpte extension did not load into gdb: "
                                 f"{why or 'xen-pte-walk is not defined'}") from None
        except GdbFailure:
            self.close()
            raise

    # ---- running commands --------------------------------------------------------------------

    def mi(self, command: str, label: Optional[str] = None) -> List[Dict]:
        """Run one MI command; return its records up to and including the result record.

        :param label: how messages name the command (default: the MI command itself).

        :raises CommandError: on ``^error``; :class:`GdbTimeout` (gdb is left running: see
            :meth:`abort`); :class:`GdbFailure` if gdb dies.
        """
        self._token += 1
        token = self._token
        try:
            self._ctl.write(f"{token}{command}", read_response=False)
        except (OSError, ValueError) as err:  # broken pipe: gdb is gone
            raise GdbFailure(f"gdb exited (status {self._ctl.gdb_process.poll()}) before "
                             f"{_short(label or command)}: {err}") from None
        self._pending = token
        try:
            records = self._wait(token, label or command)
        except CommandError:
            self._pending = None  # finished, with an error; a timeout leaves it pending
            raise
        self._pending = None
        return records

    def _wait(self, token: int, command: str) -> List[Dict]:
        proc = self._ctl.gdb_process
        records: List[Dict] = []
        while True:
            left = None if self.deadline is None else self.deadline - time.monotonic()
            if left is not None and left <= 0:
                raise GdbTimeout(f"timed out (--timeout) during: {_short(command)}")
            if self.cancelled is not None and self.cancelled():
                raise GdbCancelled(f"cancelled during: {_short(command)}")
            batch = self._ctl.get_gdb_response(timeout_sec=min(0.5, left or 0.5),
                                               raise_error_on_timeout=False)
            for rec in batch:
                records.append(rec)
                if rec.get("type") == "result" and rec.get("token") == token:
                    if rec.get("message") == "error":
                        raise CommandError((rec.get("payload") or {}).get("msg", "error"))
                    return records
            if not batch and proc.poll() is not None:
                # pygdbmi busy-loops on a closed pipe; the process status is the real signal.
                raise GdbFailure(f"gdb exited with status {proc.returncode} during "
                                 f"{_short(command)}")

    def abort(self, detach: bool, grace: float = 10.0) -> None:
        """Stop gdb; with ``detach``, first interrupt the running command and detach.

        Why: QEMU keeps a guest paused when its gdb vanishes without detaching, so a live
        target must be let go before gdb is killed (timeout, Ctrl-C, a failed walk).
        """
        if detach and self.alive():
            self.deadline = time.monotonic() + grace
            self.cancelled = None
            try:
                if self._pending is not None:
                    # gdb turns SIGINT into an interrupted command (the glue restores
                    # QEMU's PhyMemMode on its way out); wait for that command's result.
                    os.kill(self._ctl.gdb_process.pid, signal.SIGINT)
                    try:
                        self._wait(self._pending, "the interrupted command")
                    except CommandError:
                        pass
                    self._pending = None
                self.mi("-target-detach")
            except GdbFailure:
                pass
        self.close()

    def console(self, line: str, label: Optional[str] = None) -> str:
        """Run a CLI command; return what it wrote to the console (small outputs only)."""
        records = self.mi(f"-interpreter-exec console {_mi_quote(line)}", label)
        return "".join(r["payload"] for r in records
                       if r.get("type") == "console" and isinstance(r.get("payload"), str))

    def to_file(self, line: str, path: str) -> None:
        """Run a xen-pte command with its output written to ``path`` by the command itself
        (its ``-o``: straight to the file, neither through gdb's pager nor MI; 1.8x faster than
        gdb's ``pipe`` into ``cat`` for per-page JSON, benchmarks/RESULTS.md).

        :raises CommandError: if the command fails (``path`` is then left as it was).
        """
        command, _, rest = line.partition(" ")
        # Right after the command name: a "--" in the rest would make -o a positional argument.
        self.console(f"{command} -o {shlex.quote(path)} {rest}".rstrip(), line)

    def check_options(self, command: str, argv: List[str]) -> Optional[str]:
        """Parse ``argv`` with ``command``'s own option parser; return its error, or None.

        Runs in gdb's Python against the registered command (so the batch tool never keeps a
        second copy of the options); the answer comes back as one JSON console line.
        """
        code = ("import json, gdb, gdb_xenpte.gdbcmd as g\n"
                f"c = {{getattr(x, 'command', None): x for x in g.register()}}.get({command!r})\n"
                "try:\n"
                "    c.parser.parse_args(ARGV); err = None\n"
                "except gdb.GdbError as e:\n"
                "    err = str(e)\n"
                "except AttributeError:\n"
                f"    err = {command + ' is not defined in this gdb_xenpte'!r}\n"
                "print(json.dumps({'xpd_options_error': err}))")
        code = code.replace("ARGV", repr(list(argv)))
        out = self.console(f"python exec({code!r})")
        for line in out.splitlines():
            if line.startswith('{"xpd_options_error"'):
                return json.loads(line)["xpd_options_error"]
        raise GdbFailure(f"no answer from gdb when checking the {command} options: {out!r}")

    def evaluate(self, expr: str, thread: Optional[int] = None) -> str:
        """An expression's value as gdb prints it (MI ``-data-evaluate-expression``)."""
        where = f"--thread {thread} --frame 0 " if thread is not None else ""
        recs = self.mi(f"-data-evaluate-expression {where}{_mi_quote(expr)}")
        return recs[-1]["payload"]["value"]

    # ---- lifetime --------------------------------------------------------------------------

    def alive(self) -> bool:
        """gdb is still running."""
        return self._ctl.gdb_process is not None and self._ctl.gdb_process.poll() is None

    def close(self) -> None:
        """Kill gdb (safe to call twice)."""
        if self._ctl.gdb_process is not None:
            try:
                self._ctl.gdb_process.kill()
            except OSError:
                pass
            self._ctl.gdb_process.wait()
            self._ctl.gdb_process = None

    def __enter__(self) -> "GdbSession":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def _short(command: str, width: int = 120) -> str:
    return command if len(command) <= width else command[:width - 3] + "..."
