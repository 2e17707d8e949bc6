"""xen-pte-dump: walk (or check) the page tables of many dumps and live guests in one run.

Each target is read by its own gdb, driven over gdb/MI (pygdbmi) with the gdb_xenpte extension
loaded, running ``xen-pte-walk --json`` (``xen-pte-check --json`` with ``--check``/``--what-if``).
Targets run in parallel (``-j``); their records are written in target order as JSON Lines, each
tagged with ``target`` and ``vcpu`` (``vcpus`` lists every vCPU sharing those page tables), or as
CSV. A target that fails — corrupt dump, gdb crash, ``--timeout`` — becomes an
``{"type": "error", "target", "vcpu", "message"}`` record and the run goes on; the exit status
is 1 if any target failed, 2 for bad usage, else 0.

Any option this tool does not know is passed to the gdb command unchanged (``--xen 4.17``,
``--domain pv64``, ``--faults``, ``--verdict kernel-read=fault`` ...; see ``help xen-pte-walk``
in gdb); they are checked once, by the command's own parser, before any target is read.

Examples::

    xen-pte-dump --core 'dumps/*.elf' --vcpu all -o fleet.jsonl --summary
    xen-pte-dump --core dom1.xc --check --what-if pke --what-if xen=4.6
    xen-pte-dump --remote localhost:1234 --faults --format csv -o live.csv
    xen-pte-dump --scheduler tcp://sched:8786 --core '/shared/*.elf' -o out/ --summary
    xen-pte-dump --core vmcore --xen-syms xen-syms --vcpu all -o host.jsonl --summary

A Xen host's dump (``--domid N``, or ``--vcpu all`` with ``--xen-syms``) is walked per pCPU and
per domain vCPU as Xen recorded it (a live host: ``--remote`` with ``--domid N``); those records
carry ``domid`` too.

Memory stays flat however large a walk is: gdb writes each run's JSON Lines to a temporary file
(the command's own ``-o``, not MI console records), which is counted and copied line by line.

``--scheduler ADDRESS`` (or ``$DASK_SCHEDULER_ADDRESS``) runs each target as a task on a Dask
cluster instead of the local pool (:mod:`scripts.cluster`); ``-o DIR/`` writes one file per
target. Every output is written to a temporary file renamed at the end, and an output that is
one of the inputs is refused (:mod:`scripts.output`). ``--summary`` / ``--summary-json`` add a
triage: targets grouped by what they show (:mod:`scripts.summary`).
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import json
import os
import shutil
import sys
import tempfile
import zlib
from typing import IO, Dict, Iterable, List, Optional

from .batch import (Job, Target, TargetResult, adopt_session, expand_targets, init_worker,
                    release_session, run_target)
from .cli import ArgumentParser, UsageError, one_line, run_main
from .mi import GdbFailure, GdbSession
from .output import AtomicFile, refuse_inputs
from .records import CSV_COLUMNS, csv_row, dumps, error_record, tag_line
from .summary import render_summary, summary_json

__all__ = ["build_parser", "main"]

PROG = "xen-pte-dump"


def _vcpu(text: str) -> str:
    if text == "all" or (text.isdigit() and int(text) < 4096):
        return text
    raise UsageError(f"--vcpu {text}: expected a vCPU number or 'all'")


def _regular_file(what: str, path: str) -> None:
    from gdb_xenpte.errors import XenpteError
    from gdb_xenpte.sources.filemap import check_regular_file
    try:
        check_regular_file(os.path.expanduser(path))
    except XenpteError as err:
        raise UsageError(f"{what}: {err}") from None


def _domid(text: str) -> int:
    if text.isdigit() and int(text) < 0x7FF0:
        return int(text)
    raise UsageError(f"--domid {text}: expected a domain id (0-32751)")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise UsageError(f"{text!r} is not a positive number")
    return value


def build_parser() -> ArgumentParser:
    """The tool's own options; everything else is left for the gdb command."""
    p = ArgumentParser(PROG, description=__doc__.split("\n\n")[0], epilog=(
        "Options not listed here go to xen-pte-walk / xen-pte-check unchanged; a VA range\n"
        "(START END) goes before the targets or after --.\n"
        "--summary (or --summary-json) without -o: only the summary; with -o the records go\n"
        "to the file (or DIR/, one file per target).\n"
        "Exit status: 0 all targets read, 1 some target failed, 2 bad usage."))
    t = p.add_argument_group("targets (any mix, at least one)")
    t.add_argument("--core", metavar="FILE", nargs="+", action="extend", default=[],
                   help="dumps: QEMU ELF, kdump-compressed, xl dump-core (globs allowed)")
    t.add_argument("--raw", metavar="FILE@BASE", nargs="+", action="extend", default=[],
                   help="raw memory images starting at guest-physical BASE (give --cr3 ...)")
    t.add_argument("--remote", metavar="HOST:PORT", action="append", default=[],
                   help="a live QEMU gdbstub; the guest is stopped only while it is read")
    t.add_argument("--vcpu", metavar="N|all", type=_vcpu,
                   help="vCPU to walk (default: the source's own), or every vCPU, walking "
                        "each distinct CR3 (with CR0/CR4/EFER) once; a Xen host dump's vCPUs "
                        "are its pCPUs, and with --xen-syms every domain's vCPUs too")
    t.add_argument("--domid", metavar="N", type=_domid,
                   help="a Xen host (a dump, or live with --remote): walk domain N's vCPU "
                        "(--vcpu M, default 0; of a dump also --vcpu all: each of them) as Xen "
                        "recorded it, instead of the pCPUs")
    t.add_argument("--xen-syms", metavar="FILE",
                   help="that Xen's xen-syms (with DWARF): every domain's vCPU state; passed "
                        "to each walk")
    w = p.add_argument_group("what to run")
    w.add_argument("--check", action="store_true",
                   help="run xen-pte-check (anomalies) instead of xen-pte-walk")
    w.add_argument("--what-if", metavar="SCENARIO", action="append", default=[],
                   help="pass --what-if SCENARIO to xen-pte-check (repeatable; implies --check)")
    o = p.add_argument_group("output")
    o.add_argument("-o", "--output", metavar="FILE|DIR/",
                   help="write records here (default stdout); a directory (DIR/, made if "
                        "missing): one file per target, NAME.jsonl or NAME.csv, each written "
                        "whole or not at all")
    o.add_argument("--format", choices=("jsonl", "csv"), default="jsonl",
                   help="JSON Lines (default) or CSV (mapping/anomaly/error rows)")
    o.add_argument("--summary", action="store_true",
                   help="print count tables per target, the fleet, and the triage: targets "
                        "grouped by what they show")
    o.add_argument("--summary-json", metavar="FILE",
                   help="write the summary (per-run counts, triage groups) as JSON to FILE")
    r = p.add_argument_group("running")
    r.add_argument("-j", "--jobs", metavar="N", type=int, default=os.cpu_count() or 1,
                   help="targets read in parallel (default: the CPU count)")
    r.add_argument("--timeout", metavar="S", type=_positive,
                   help="give up on a target after S seconds (an error record; the run goes on)")
    r.add_argument("--scheduler", metavar="ADDRESS",
                   default=os.environ.get("DASK_SCHEDULER_ADDRESS") or None,
                   help="run each target as a task on this Dask cluster (tcp://HOST:8786; "
                        "default: $DASK_SCHEDULER_ADDRESS, else a local process pool, -j; "
                        "-j is then ignored: the cluster's worker threads set the parallelism; "
                        "--scheduler '' : the local pool whatever the environment says)")
    r.add_argument("--progress", action="store_true",
                   help="a progress bar on stderr even when it is not a terminal")
    r.add_argument("--quiet", action="store_true",
                   help="no progress bar, and no line per failed target on stderr")
    r.add_argument("--gdb", metavar="PATH", default=os.environ.get("XEN_PTE_GDB", "gdb"),
                   help="the gdb to run (default: $XEN_PTE_GDB, else gdb on PATH)")
    return p


def _preflight(gdb: str, command: str, options: List[str], keep: bool = False) -> None:
    """Start one gdb, load the extension and parse ``options`` with the command's own parser.

    Options naming gdb values (``--cr3 $cr3``) only mean something once a target is there, so
    with those the parse is left to the per-target runs.

    :param keep: the targets are read inline, in this thread: the gdb serves them too (one gdb
        start-up less, a good part of a small run's time).
    :raises UsageError: when gdb or the extension is unusable or an option is bad, so that a
        typo is one message, not one error record per target.
    """
    try:
        session = GdbSession(gdb)
    except GdbFailure as failure:
        raise UsageError(str(failure)) from None
    try:
        err = None
        if not any("$" in o for o in options):
            err = session.check_options(command, ["--json", *options])
    except GdbFailure as failure:
        session.close()
        raise UsageError(str(failure)) from None
    if err or not keep:
        session.close()
    else:
        adopt_session(session)
    if err:
        raise UsageError(err)


class _Writer:
    """Writes finished targets' records as JSON Lines or CSV: into one stream, in target order
    (the caller's job), or ``per_target`` into a file each, written whole or not at all."""

    def __init__(self, out: Optional[IO[str]], fmt: str,
                 per_target: Optional[Dict[Target, str]] = None):
        self.fmt = fmt
        self.per_target = per_target
        self.out = out
        self.csv = self._csv(out)

    def _csv(self, out):
        if out is None or self.fmt != "csv":
            return None
        writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        return writer

    def write(self, res: TargetResult) -> None:
        if self.per_target is None:
            self._runs(res)
            return
        with AtomicFile(self.per_target[res.target], newline="") as fh:
            self.out, self.csv = fh, self._csv(fh)
            try:
                self._runs(res)
            finally:
                self.out, self.csv = None, None

    def _runs(self, res: TargetResult) -> None:
        for run in res.runs:
            if self.out is not None:
                if run.error:
                    self._line(dumps(error_record(res.target.label, run.vcpu, run.error,
                                                  run.domid)))
                elif run.tagged and self.csv is None and run.data is None:
                    with open(run.path, encoding="utf-8") as fh:
                        shutil.copyfileobj(fh, self.out, 1 << 20)
                elif run.tagged and self.csv is None:
                    self.out.write(zlib.decompress(run.data).decode("utf-8"))
                else:
                    for line in _lines(run):
                        if line.strip():
                            self._line(line.rstrip("\n") if run.tagged else tag_line(
                                line, res.target.label, run.vcpu, run.vcpus, run.domid))
            if run.path:
                os.unlink(run.path)
                run.path = None
            run.data = None

    def _line(self, line: str) -> None:
        if self.csv is None:
            self.out.write(line + "\n")
            return
        row = csv_row(json.loads(line))
        if row is not None:
            self.csv.writerow(row)


def _lines(run) -> Iterable[str]:
    if run.data is not None:
        yield from zlib.decompress(run.data).decode("utf-8").splitlines()
        return
    with open(run.path, encoding="utf-8") as fh:
        yield from fh


def _progress(total: int, quiet: bool, force: bool):
    if quiet or not (force or sys.stderr.isatty()):
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is a nicety: run without it
        return None
    return tqdm(total=total, unit="target", file=sys.stderr, leave=False,
                disable=False, dynamic_ncols=True, mininterval=0.5)


def _results(jobs: List[Job], workers: int) -> Iterable[TargetResult]:
    """Results in completion order (inline for one worker: no pool to start)."""
    if workers <= 1 or len(jobs) <= 1:
        try:
            for job in jobs:
                yield run_target(job)
        finally:
            release_session()
        return
    # Each worker keeps one gdb for its dumps (batch.init_worker closes it with the worker).
    with cf.ProcessPoolExecutor(max_workers=workers, initializer=init_worker) as pool:
        futures = [pool.submit(run_target, job) for job in jobs]
        try:
            for fut in cf.as_completed(futures):
                yield fut.result()
        finally:
            for fut in futures:
                fut.cancel()


def _spill(res: TargetResult, workdir: str) -> None:
    """Move records that came back over the network (a cluster's result) into files."""
    for n, run in enumerate(res.runs):
        if run.data is not None:
            run.path = os.path.join(workdir, f"spill-{id(res)}-{n}.jsonl")
            with open(run.path, "wb") as fh:
                fh.write(zlib.decompress(run.data))
            run.data = None


def _per_target_paths(directory: str, targets: List[Target], fmt: str) -> Dict[Target, str]:
    """``-o DIR/``: one file per target, named after it (``NAME.jsonl``; ``NAME-2.jsonl`` ...
    when two targets share a base name)."""
    paths: Dict[Target, str] = {}
    taken = set()
    for t in targets:
        base = os.path.basename(t.label.rstrip("/")) or "target"
        base = "".join(c if c.isprintable() and c not in "/:\\" else "_" for c in base)
        name, n = f"{base}.{fmt}", 1
        while name in taken:
            n += 1
            name = f"{base}-{n}.{fmt}"
        taken.add(name)
        paths[t] = os.path.join(directory, name)
    return paths


def _inputs(targets: List[Target]) -> List[str]:
    return [t.spec if t.kind == "core" else t.spec.rpartition("@")[0]
            for t in targets if t.kind != "remote"]


def _run(argv: List[str]) -> int:
    parser = build_parser()
    args, passthrough = parser.parse_known_args(argv)
    if args.jobs < 1:
        raise UsageError(f"-j {args.jobs}: need at least 1")
    for bad in ("--json", "--raw", "--core", "--vcpu", "--domid", "--xen-syms"):
        if bad in passthrough:
            raise UsageError(f"{bad} given twice or in the wrong place")
    if args.domid is not None and args.vcpu == "all" and args.remote:
        raise UsageError("--domid N --vcpu all reads a dump's domain list; for a live host give "
                         "--vcpu M")
    if args.xen_syms:
        _regular_file("--xen-syms", args.xen_syms)
        args.xen_syms = os.path.abspath(os.path.expanduser(args.xen_syms))
    targets = expand_targets(args.core, args.raw, args.remote)
    if not targets:
        raise UsageError("no targets: give --core FILE..., --raw FILE@BASE or --remote HOST:PORT")
    check = args.check or bool(args.what_if)
    command = "xen-pte-check" if check else "xen-pte-walk"
    options = list(passthrough)
    for scenario in args.what_if:
        options += ["--what-if", scenario]
    inputs = _inputs(targets)
    per_target = None
    if args.output and (args.output.endswith("/") or os.path.isdir(args.output)):
        if not os.path.isdir(args.output):
            try:  # DIR/ names a directory to write into: made if its parent exists
                os.mkdir(args.output)
            except OSError as err:
                raise UsageError(f"-o {args.output}: {err.strerror or err}") from None
        per_target = _per_target_paths(args.output, targets, args.format)
        for path in per_target.values():
            refuse_inputs(path, inputs)
    elif args.output:
        refuse_inputs(args.output, inputs)
    if args.summary_json:
        refuse_inputs(args.summary_json, inputs, "--summary-json")
        outputs = list(per_target.values()) if per_target else [args.output or ""]
        if any(os.path.abspath(args.summary_json) == os.path.abspath(o) for o in outputs if o):
            raise UsageError(f"--summary-json {args.summary_json}: the records go there too "
                             "(-o); give another file")
    client = None
    if args.scheduler:
        from .cluster import connect
        client = connect(args.scheduler)
    try:
        return _run_targets(args, targets, command, options, per_target, client)
    finally:
        if client is not None:
            client.close()


def _run_targets(args, targets, command, options, per_target, client) -> int:
    if client is None:
        _preflight(args.gdb, command, options, keep=min(args.jobs, len(targets)) <= 1)
    else:
        from .cluster import preflight_task
        try:
            err = client.submit(preflight_task, args.gdb, command, options,
                                pure=False).result()
        except Exception as exc:  # noqa: BLE001 — a worker without the package, ...
            err = f"on the cluster's worker: {type(exc).__name__}: {exc}"
        if err:
            raise UsageError(err)

    workdir = tempfile.mkdtemp(prefix="xen-pte-dump-")
    out = None
    bar = None
    summary = args.summary or bool(args.summary_json)
    try:
        if args.output and per_target is None:
            out = AtomicFile(args.output, newline="")
        elif not args.output and not summary:
            out = sys.stdout
        writer = _Writer(out if per_target is None else None, args.format, per_target)
        workers = min(args.jobs, len(targets))
        writes = out is not None or per_target is not None
        jobs = [Job(t, command, tuple(options), args.vcpu, workdir, i, args.timeout, args.gdb,
                    tally=summary, tag=workers > 1 and writes, domid=args.domid,
                    xen_syms=args.xen_syms)
                for i, t in enumerate(targets)]
        bar = _progress(len(jobs), args.quiet, args.progress)
        if client is not None:
            from .cluster import cluster_results
            results = cluster_results(client, jobs, ordered=per_target is None)
        else:
            results = _results(jobs, workers)
        done: Dict[int, TargetResult] = {}
        ordered: List[TargetResult] = []
        index = {t: i for i, t in enumerate(targets)}
        for res in results:
            if bar is not None:
                bar.update(1)
                for line in _failures(res):  # as they happen; the bar stays below
                    bar.write(line, file=sys.stderr)
            if per_target is not None:  # a file each: written as each target completes
                writer.write(res)
            if index[res.target] != len(ordered):
                _spill(res, workdir)  # waits for an earlier target: on disk, not in memory
            done[index[res.target]] = res
            # Emit in target order as soon as every earlier target is out (files stay small).
            while len(ordered) in done:
                nxt = done.pop(len(ordered))
                if per_target is None:
                    writer.write(nxt)
                ordered.append(nxt)
        if bar is not None:
            bar.close()
        if out is not None and out is not sys.stdout:
            out.commit()
    except BrokenPipeError:
        raise
    except OSError as err:  # the output file, or the temporary directory
        raise UsageError(f"{err.filename or args.output or 'output'}: "
                         f"{err.strerror or err}") from None
    finally:
        if out is not None and out is not sys.stdout:
            out.discard()
        shutil.rmtree(workdir, ignore_errors=True)
    if out is sys.stdout:
        sys.stdout.flush()
    if args.summary:
        print("\n".join(render_summary(ordered)))
    if args.summary_json:
        try:
            with AtomicFile(args.summary_json) as fh:
                json.dump(summary_json(ordered), fh, indent=1)
                fh.write("\n")
        except OSError as err:
            raise UsageError(f"--summary-json {args.summary_json}: "
                             f"{err.strerror or err}") from None
    failed = [line for res in ordered for line in _failures(res)]
    if not args.quiet and bar is None:
        for line in failed:
            print(line, file=sys.stderr)
    return 1 if failed else 0


def _failures(res: TargetResult) -> List[str]:
    """One stderr line per failed run of a target."""
    return [one_line(f"{PROG}: {res.target.label}{_where(run)}: {run.error}")
            for run in res.runs if run.error]


def _where(run) -> str:
    if run.vcpu is None:
        return ""
    return f" vCPU {run.vcpu}" if run.domid is None else f" d{run.domid}v{run.vcpu}"


def main(argv: Optional[List[str]] = None) -> int:
    """Console script entry point."""
    return run_main(PROG, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
