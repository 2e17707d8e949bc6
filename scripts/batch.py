"""One batch target read by one gdb: what to walk, which vCPUs, and where the records went.

:func:`expand_targets` turns ``--core`` globs, ``--raw FILE@BASE`` and ``--remote HOST:PORT`` into
:class:`Target` objects; :func:`run_target` (run in a worker process) starts gdb, loads the
extension, runs ``xen-pte-walk --json`` (or ``xen-pte-check --json``) once per distinct vCPU
and leaves each run's JSON Lines, tagged with target and vCPU, in a file of its own, counting
them on the way if asked. A
live target is attached only for the walks themselves: the extension is loaded first, and gdb
detaches (the guest runs on) before anything is counted.

Failure modes: :class:`~scripts.cli.UsageError` from :func:`expand_targets` for a glob that
matches nothing or a malformed spec; :func:`run_target` never raises for a bad target — a
corrupt dump, a gdb that dies or a timeout becomes the ``error`` of the runs concerned.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import shlex
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

from gdb_xenpte.errors import XenpteError
from gdb_xenpte.sources.filemap import check_regular_file
from gdb_xenpte.sources.raw import parse_raw_spec

from .cli import UsageError
from .mi import CommandError, GdbFailure, GdbSession, GdbTimeout
from .records import RecordError, Tally, parse_line, tag_line

__all__ = ["ConnectFailure", "Job", "Planned", "Run", "Skipped", "Target", "TargetResult",
           "adopt_session", "expand_targets", "init_worker", "release_session", "run_target"]


@dataclass(frozen=True)
class Target:
    """A dump (``core``), a raw image (``raw``: ``FILE@BASE``) or a gdbstub (``remote``)."""

    kind: str
    spec: str

    @property
    def label(self) -> str:
        """The name records are tagged with (the path or HOST:PORT as given)."""
        return self.spec


@dataclass(frozen=True)
class Job:
    """Everything a worker needs for one target (plain data: it crosses a process boundary).

    :param vcpu: ``None`` (the source's default vCPU), ``"all"``, or a number as text.
    :param options: options passed through to the gdb command unchanged.
    :param domid: a Xen host dump's domain whose vCPU(s) to walk instead of the pCPUs.
    :param xen_syms: the host's xen-syms: with ``vcpu="all"``, every domain's vCPUs are walked
        too (each distinct page-table root once).
    :param deadline_s: seconds the whole target may take (None: no limit).
    """

    target: Target
    command: str
    options: Tuple[str, ...]
    vcpu: Optional[str]
    workdir: str
    index: int
    deadline_s: Optional[float] = None
    gdb: str = "gdb"
    tally: bool = True
    tag: bool = True  # tag records here (parallel workers); else the parent tags as it copies
    domid: Optional[int] = None
    xen_syms: Optional[str] = None


@dataclass
class Run:
    """One command run: a vCPU (plus the vCPUs sharing its page tables) and its records;
    ``domid``: a vCPU of that domain of a Xen host dump (else the source's own vCPU/pCPU)."""

    vcpu: Optional[int]
    vcpus: List[int] = field(default_factory=list)
    path: Optional[str] = None
    error: Optional[str] = None
    tally: Optional[Tally] = None
    tagged: bool = False
    data: Optional[bytes] = None  # the records, zlib-compressed, when they crossed a network
    domid: Optional[int] = None


@dataclass
class TargetResult:
    """What a worker hands back: the runs, and the vCPUs ``--vcpu all`` left out and why."""

    target: Target
    runs: List[Run]
    seconds: float
    skipped: List["Skipped"] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(r.error for r in self.runs)


def _regular(what: str, path: str) -> None:
    """The engine's one rule for input files (no FIFO, device or directory), as a usage error."""
    try:
        check_regular_file(path)
    except XenpteError as err:
        raise UsageError(f"{what}: {err}") from None


def expand_targets(cores: Sequence[str], raws: Sequence[str],
                   remotes: Sequence[str]) -> List[Target]:
    """Targets in the order given; globs expanded (sorted), duplicates dropped.

    :raises UsageError: for a pattern matching no file or a malformed HOST:PORT / FILE@BASE.
    """
    out: List[Target] = []
    for pattern in cores:
        found = sorted(glob.glob(os.path.expanduser(pattern))) if glob.has_magic(pattern) \
            else [pattern]
        if not found:
            raise UsageError(f"--core {pattern}: no file matches")
        for path in found:
            _regular(f"--core {path}", path)
            out.append(Target("core", path))
    for spec in raws:
        try:  # the gdb commands' rule: BASE is required, a multiple of 4 KiB
            path, _base = parse_raw_spec(spec)
        except XenpteError as err:
            raise UsageError(str(err)) from None
        _regular(f"--raw {spec}", path)
        out.append(Target("raw", spec))
    for spec in remotes:
        host, colon, port = spec.rpartition(":")
        if not colon or not port.isdigit():
            raise UsageError(f"--remote {spec}: expected HOST:PORT (e.g. localhost:1234)")
        out.append(Target("remote", spec))
    seen, unique = set(), []
    for t in out:
        if t not in seen:
            seen.add(t)
            unique.append(t)
    return unique


# ---- vCPU plans --------------------------------------------------------------------------------

class Planned(NamedTuple):
    """One run to make: the vCPU to walk, every vCPU it stands for, and (a Xen host dump) the
    domain they belong to (None: the source's own vCPUs, a host dump's pCPUs)."""

    vcpu: Optional[int]
    members: List[int]
    domid: Optional[int] = None


class Skipped(NamedTuple):
    """A vCPU ``--vcpu all`` did not walk, and why (``domid`` as in :class:`Planned`)."""

    vcpu: int
    why: str
    domid: Optional[int] = None

    @property
    def label(self) -> str:
        return f"vCPU {self.vcpu}" if self.domid is None else f"d{self.domid}v{self.vcpu}"


Plan = List[Planned]
CR0_PG = 1 << 31


def _plan_all(vcpus: Sequence[tuple], domid: Optional[int] = None) -> Tuple[Plan, List[Skipped]]:
    """``--vcpu all``: one run per distinct (CR3, CR0, CR4, EFER), and the vCPUs left out.

    vCPUs sharing page tables walk identically unless their control registers differ (then the
    verdicts differ too). Offline vCPUs and vCPUs with paging off (an AP still waiting for its
    start-up IPI) have nothing to walk and are skipped — unless every vCPU is, in which case the
    first is walked so that the command says why.

    :param vcpus: ``(index, cr3, cr0, cr4, efer, online)`` per vCPU.
    """
    groups: dict = {}
    skipped: List[Skipped] = []
    for index, cr3, cr0, cr4, efer, online in vcpus:
        if not online:
            skipped.append(Skipped(index, "offline", domid))
        elif cr3 is None:
            skipped.append(Skipped(index, "no CR3", domid))
        elif cr0 is not None and not cr0 & CR0_PG:
            skipped.append(Skipped(index, "paging off", domid))
        else:
            groups.setdefault((cr3, cr0, cr4, efer), []).append(index)
    plan: Plan = [Planned(members[0], members, domid) for members in groups.values()]
    if not plan and vcpus:
        return [Planned(vcpus[0][0], [vcpus[0][0]], domid)], []
    return plan, skipped


def _dump_plan(job: Job) -> Tuple[Plan, List[Skipped]]:
    """The runs for a dump, from the engine's reader (registers only, no page read)."""
    target, vcpu = job.target, job.vcpu
    if target.kind == "raw":
        return [Planned(None, [])], []  # a raw image has no registers: --cr3 etc. come from options
    from gdb_xenpte.sources.open import open_dump
    with open_dump(target.spec) as src:
        if job.domid is not None or (job.xen_syms and vcpu == "all"):
            return _host_plan(src, job)
        regs = src.vcpus()
        if vcpu == "all" and regs:
            return _plan_all([(r.index, r.cr3, r.cr0, r.cr4, r.efer, r.online) for r in regs])
        if vcpu not in (None, "all"):
            return [Planned(int(vcpu), [int(vcpu)])], []
        default = getattr(src, "current_vcpu", None)
        if default is None and regs:
            default = regs[0].index
        return [Planned(default, [default] if default is not None else [])], []


def _host_plan(src, job: Job) -> Tuple[Plan, List[Skipped]]:
    """A Xen host dump: ``--domid N`` (its vCPU ``--vcpu M``, default 0, or all of them), or
    with ``--vcpu all --xen-syms``, every pCPU and then every domain's every vCPU.

    Within a domain, vCPUs with the same recorded CR3/CR4 are one run. A pCPU whose CR3 is the
    kernel L4 of a PV vCPU it was running is walked as that vCPU (the view with what Xen recorded
    for it), not twice; a pCPU in guest user mode or in Xen's idle tables has tables of its own.
    """
    from gdb_xenpte.xen_host import open_host
    host = open_host(src, job.xen_syms)
    try:
        domains = host.domains()
        if job.domid is not None:
            dom = next((d for d in domains if d.domid == job.domid), None)
            if dom is None or job.vcpu != "all":
                host.find(job.domid, int(job.vcpu or 0))  # the engine's error if none
                return [Planned(int(job.vcpu or 0), [int(job.vcpu or 0)], job.domid)], []
            return _domain_plan(dom)
        plan: Plan = []
        skipped: List[Skipped] = []
        cpus = []
        for r in src.vcpus():
            held = host.holder(r.cr3, domains) if r.online else None
            if held is not None and host.on_kernel_l4(r.cr3, *held):
                name = f"d{held[1].domid}v{held[1].vcpu}"
                skipped.append(Skipped(r.index, f"its CR3 is {name}'s kernel L4: walked as "
                                                f"{name}"))
            else:
                cpus.append((r.index, r.cr3, r.cr0, r.cr4, r.efer, r.online))
        if cpus:
            plan, skipped_cpus = _plan_all(cpus)
            skipped = skipped_cpus + skipped
        for dom in domains:
            more, left = _domain_plan(dom)
            plan += more
            skipped += left
        return plan, skipped
    finally:
        host.layout.close()


def _domain_plan(dom) -> Tuple[Plan, List[Skipped]]:
    """Every vCPU of one domain, as Xen recorded it: one run per distinct recorded CR3/CR4."""
    groups: dict = {}
    skipped: List[Skipped] = []
    for v in dom.vcpus:
        if v.cr3 is None:
            skipped.append(Skipped(v.vcpu, f"no page tables recorded (state {v.state})",
                                   dom.domid))
        else:
            groups.setdefault((v.cr3, v.cr4, v.hw_cr4, v.cr0, v.efer), []).append(v.vcpu)
    if not dom.vcpus:
        skipped.append(Skipped(0, "no vCPU state (the layout lacks struct vcpu: give "
                                  "--xen-syms FILE)", dom.domid))
    return [Planned(m[0], m, dom.domid) for m in groups.values()], skipped


def _remote_plan(gdb: GdbSession, vcpu: Optional[str],
                 domid: Optional[int] = None) -> Tuple[Plan, List[Skipped]]:
    """The vCPU runs for a live target: QEMU shows one gdb thread per vCPU (vCPU = id - 1);
    with ``domid``, that domain's vCPU of a live Xen host."""
    if domid is not None:
        return [Planned(int(vcpu or 0), [int(vcpu or 0)], domid)], []
    if vcpu not in (None, "all"):
        return [Planned(int(vcpu), [int(vcpu)])], []
    info = gdb.mi("-thread-info")[-1]["payload"]
    if vcpu is None:
        current = int(info.get("current-thread-id", "1")) - 1
        return [Planned(current, [current])], []
    regs = []
    for th in info.get("threads", []):
        tid = int(th["id"])
        cr3, cr0, cr4, efer = (int(gdb.evaluate(f"(unsigned long long)${r}", tid), 0)
                               for r in ("cr3", "cr0", "cr4", "efer"))
        regs.append((tid - 1, cr3, cr0, cr4, efer, True))
    return _plan_all(regs)


# ---- the worker --------------------------------------------------------------------------------

def _source_options(job: Job, run: Planned) -> List[str]:
    target = job.target
    opts = {"core": ["--core", target.spec], "raw": ["--raw", target.spec]}.get(target.kind, [])
    opts += ["--vcpu", str(run.vcpu)] if run.vcpu is not None else []
    opts += ["--domid", str(run.domid)] if run.domid is not None else []
    return opts + (["--xen-syms", job.xen_syms] if job.xen_syms else [])


def _command_line(job: Job, run: Planned) -> str:
    # The walk's own default: a repeated subtree is one record with "repeat" {count, stride},
    # which the tally, CSV and xen-pte-diff count per copy (--expand passes through if given).
    argv = [job.command, "--json", *_source_options(job, run), *job.options]
    return " ".join(shlex.quote(a) for a in argv)  # gdb's buildargv reads shell-style quoting


# A gdbstub that accepts the connection but never answers (another gdb holds it: QEMU serves one
# client and leaves the next in the listen queue) is given this long before the target fails.
CONNECT_S = 4.0


class ConnectFailure(GdbFailure):
    """No connection to a gdbstub (nothing attached: no detach needed)."""


def _connect(gdb: GdbSession, spec: str, connect_s: float = CONNECT_S) -> None:
    """``target remote spec``, failing within ``connect_s`` seconds with a message that does
    not repeat the target (records and stderr lines name it already).

    :raises ConnectFailure: refused (at once: no auto-retry), or no answer in time.
    """
    # A 32-bit guest must not make gdb reject QEMU's 64-bit register packet.
    gdb.mi("-gdb-set architecture i386:x86-64")
    # gdb retries a refused connection for `tcp connect-timeout` (15 s) unless told not to.
    gdb.console("set tcp auto-retry off")
    gdb.console("set remotetimeout 2")
    saved = gdb.deadline
    limit = time.monotonic() + connect_s
    gdb.deadline = limit if saved is None else min(saved, limit)
    try:
        gdb.mi(f"-target-select remote {spec}", label=f"target remote {spec}")
    except GdbTimeout:
        if saved is not None and saved <= limit:
            raise  # the user's --timeout came first: say that
        raise ConnectFailure(f"the gdbstub does not answer within {connect_s:g} s "
                             "(is another debugger attached to it?)") from None
    except CommandError as err:
        text = str(err)
        if text.startswith(spec + ":"):
            text = text[len(spec) + 1:].strip()
        raise ConnectFailure(f"cannot connect: {text}") from None
    finally:
        gdb.deadline = saved


# This thread's gdb, kept from one dump to the next: starting gdb and loading the extension
# costs more than a small walk (benchmarks/bench_batch.py). Dropped after any gdb failure and
# after live targets (connection state), so a fresh gdb serves the next target then. Per thread:
# a Dask worker runs several tasks at once in threads of one process.
_LOCAL = threading.local()
_ALL: "weakref.WeakSet[GdbSession]" = weakref.WeakSet()


def _session(job: Job, deadline: Optional[float]) -> GdbSession:
    session = getattr(_LOCAL, "session", None)
    if session is not None and (session.gdb != job.gdb or not session.alive()):
        release_session()
        session = None
    if session is None:
        session = _LOCAL.session = GdbSession(job.gdb, deadline)
        _ALL.add(session)
    session.deadline = deadline
    session.cancelled = None  # the last task's question is not this one's
    return session


def adopt_session(session: GdbSession) -> None:
    """Make ``session`` (a gdb with the extension loaded) this thread's kept gdb."""
    release_session()
    _LOCAL.session = session
    _ALL.add(session)


def release_session(detach: bool = False) -> None:
    """Close this thread's kept gdb, if any (``detach``: let a live guest run on first)."""
    session = getattr(_LOCAL, "session", None)
    if session is not None:
        _LOCAL.session = None
        session.abort(detach)


def _release_all() -> None:
    for session in list(_ALL):
        session.close()


atexit.register(_release_all)  # a Dask worker process ending closes its threads' gdbs


def init_worker() -> None:
    """Pool initializer: close the worker's gdb when the pool shuts the worker down."""
    from multiprocessing import util
    util.Finalize(None, release_session, exitpriority=10)  # atexit does not run in workers


def run_target(job: Job, cancelled: Optional[Callable[[], bool]] = None) -> TargetResult:
    """Read one target; every failure is recorded in the runs, nothing raises.

    :param cancelled: asked while gdb works; True stops the target (a live guest is detached).
    """
    start = time.monotonic()
    deadline = start + job.deadline_s if job.deadline_s else None
    runs: List[Run] = []
    plan: Plan = []
    skipped: List[Skipped] = []
    finished = 0  # runs whose command has returned (with records or its own error)
    keep = False
    connected = job.target.kind == "remote"  # a live target to detach from if we fail
    try:
        if job.target.kind != "remote":
            plan, skipped = _dump_plan(job)
        gdb = _session(job, deadline)
        gdb.cancelled = cancelled
        if job.target.kind == "remote":
            _connect(gdb, job.target.spec)
            plan, skipped = _remote_plan(gdb, job.vcpu, job.domid)
        for n, planned in enumerate(plan):
            run = Run(planned.vcpu, planned.members,
                      os.path.join(job.workdir, f"t{job.index}-{n}.jsonl"), domid=planned.domid)
            runs.append(run)
            try:
                gdb.to_file(_command_line(job, planned), run.path)
            except CommandError as err:
                run.error = str(err)
            finished += 1
        if job.target.kind == "remote":
            gdb.mi("-target-detach")  # the guest runs on while we count
        keep = job.target.kind != "remote"
    except ConnectFailure as err:
        connected = False
        _fail_rest(runs, plan, finished, str(err))
    except GdbFailure as err:
        _fail_rest(runs, plan, finished, str(err))
    except (XenpteError, OSError) as err:  # a dump the engine's reader refuses
        keep = True  # gdb was not involved
        _fail_rest(runs, plan, finished, _one_line(err))
    except Exception as err:  # noqa: BLE001 — one target's bug must not stop the fleet
        _fail_rest(runs, plan, finished, f"internal error: {type(err).__name__}: "
                                         f"{_one_line(err)}")
    finally:
        if not keep:
            release_session(detach=connected)
    for run in runs:
        if run.error is None:
            try:
                _tag_and_count(run, job)
            except (OSError, RecordError) as err:
                run.error = f"unreadable output from gdb: {err}"
        if run.error is not None and run.path is not None:
            if os.path.exists(run.path):
                os.unlink(run.path)
            run.path = None
    return TargetResult(job.target, runs, time.monotonic() - start, skipped)


def _tag_and_count(run: Run, job: Job) -> None:
    """Tag a run's records (``job.tag``: rewrite its file) and count them (``job.tally``).

    One pass over the file. Tagging here, in a pool worker, runs in parallel with the other
    workers and leaves the parent a plain file copy; a lone inline worker leaves it to the
    parent instead, which saves writing the file twice.
    """
    if not (job.tag or job.tally):
        return
    tally = Tally() if job.tally else None
    tagged = run.path + ".tagged"
    with open(run.path, encoding="utf-8") as src, \
            (open(tagged, "w", encoding="utf-8") if job.tag else contextlib.nullcontext()) as dst:
        for number, line in enumerate(src, 1):
            if not line.strip():
                continue
            if tally is not None:
                tally.add(parse_line(line, run.path, number))
            if job.tag:
                dst.write(tag_line(line, job.target.label, run.vcpu, run.vcpus, run.domid)
                          + "\n")
    if job.tag:
        os.replace(tagged, run.path)
        run.tagged = True
    run.tally = tally


def _fail_rest(runs: List[Run], plan, finished: int, message: str) -> None:
    """Fail the run in progress and every planned run not started, with ``message``."""
    for run in runs[finished:]:
        run.error = message
    for planned in plan[len(runs):]:
        runs.append(Run(planned.vcpu, planned.members, None, message, domid=planned.domid))
    if not runs:
        runs.append(Run(None, [], None, message))


def _one_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
