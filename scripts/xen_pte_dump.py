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

Memory stays flat however large a walk is: gdb writes each run's JSON Lines to a temporary file
(through gdb's ``pipe`` command, not MI console records), which is counted and copied line by line.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import json
import os
import shutil
import sys
import tempfile
from typing import IO, Dict, Iterable, List, Optional

from .batch import (Job, TargetResult, expand_targets, init_worker, release_session,
                    run_target)
from .cli import ArgumentParser, UsageError, run_main
from .mi import GdbFailure, GdbSession
from .records import CSV_COLUMNS, csv_row, dumps, error_record, tag_line
from .summary import render_summary

__all__ = ["build_parser", "main"]

PROG = "xen-pte-dump"


def _vcpu(text: str) -> str:
    if text == "all" or (text.isdigit() and int(text) < 4096):
        return text
    raise UsageError(f"--vcpu {text}: expected a vCPU number or 'all'")


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
        "--summary without -o prints only the tables; with -o the records go to the file.\n"
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
                        "each distinct CR3 (with CR0/CR4/EFER) once")
    w = p.add_argument_group("what to run")
    w.add_argument("--check", action="store_true",
                   help="run xen-pte-check (anomalies) instead of xen-pte-walk")
    w.add_argument("--what-if", metavar="SCENARIO", action="append", default=[],
                   help="pass --what-if SCENARIO to xen-pte-check (repeatable; implies --check)")
    o = p.add_argument_group("output")
    o.add_argument("-o", "--output", metavar="FILE", help="write records here (default stdout)")
    o.add_argument("--format", choices=("jsonl", "csv"), default="jsonl",
                   help="JSON Lines (default) or CSV (mapping/anomaly/error rows)")
    o.add_argument("--summary", action="store_true",
                   help="print count tables per target and for the fleet")
    r = p.add_argument_group("running")
    r.add_argument("-j", "--jobs", metavar="N", type=int, default=os.cpu_count() or 1,
                   help="targets read in parallel (default: the CPU count)")
    r.add_argument("--timeout", metavar="S", type=_positive,
                   help="give up on a target after S seconds (an error record; the run goes on)")
    r.add_argument("--quiet", action="store_true",
                   help="no progress bar, and no line per failed target on stderr")
    r.add_argument("--gdb", metavar="PATH", default=os.environ.get("XEN_PTE_GDB", "gdb"),
                   help="the gdb to run (default: $XEN_PTE_GDB, else gdb on PATH)")
    return p


def _preflight(gdb: str, command: str, options: List[str]) -> None:
    """Start one gdb, load the extension and parse ``options`` with the command's own parser.

    Options naming gdb values (``--cr3 $cr3``) only mean something once a target is there, so
    with those the parse is left to the per-target runs.

    :raises UsageError: when gdb or the extension is unusable or an option is bad, so that a
        typo is one message, not one error record per target.
    """
    try:
        with GdbSession(gdb) as session:
            if any("$" in o for o in options):
                return
            err = session.check_options(command, ["--json", *options])
    except GdbFailure as failure:
        raise UsageError(str(failure)) from None
    if err:
        raise UsageError(err)


class _Writer:
    """Writes finished targets' records, in target order, as JSON Lines or CSV."""

    def __init__(self, out: Optional[IO[str]], fmt: str):
        self.out = out
        self.csv = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore") \
            if out is not None and fmt == "csv" else None
        if self.csv is not None:
            self.csv.writeheader()

    def write(self, res: TargetResult) -> None:
        for run in res.runs:
            if self.out is not None:
                if run.error:
                    self._line(dumps(error_record(res.target.label, run.vcpu, run.error)))
                elif run.tagged and self.csv is None:
                    with open(run.path, encoding="utf-8") as fh:
                        shutil.copyfileobj(fh, self.out, 1 << 20)
                else:
                    with open(run.path, encoding="utf-8") as fh:
                        for line in fh:
                            if line.strip():
                                self._line(line if run.tagged else tag_line(
                                    line, res.target.label, run.vcpu, run.vcpus))
            if run.path:
                os.unlink(run.path)
                run.path = None

    def _line(self, line: str) -> None:
        if self.csv is None:
            self.out.write(line + "\n")
            return
        row = csv_row(json.loads(line))
        if row is not None:
            self.csv.writerow(row)


def _progress(total: int, quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is a nicety: run without it
        return None
    return tqdm(total=total, unit="target", file=sys.stderr, leave=False)


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


def _run(argv: List[str]) -> int:
    parser = build_parser()
    args, passthrough = parser.parse_known_args(argv)
    if args.jobs < 1:
        raise UsageError(f"-j {args.jobs}: need at least 1")
    for bad in ("--json", "--raw", "--core", "--vcpu"):
        if bad in passthrough:
            raise UsageError(f"{bad} given twice or in the wrong place")
    targets = expand_targets(args.core, args.raw, args.remote)
    if not targets:
        raise UsageError("no targets: give --core FILE..., --raw FILE@BASE or --remote HOST:PORT")
    check = args.check or bool(args.what_if)
    command = "xen-pte-check" if check else "xen-pte-walk"
    options = list(passthrough)
    for scenario in args.what_if:
        options += ["--what-if", scenario]
    _preflight(args.gdb, command, options)

    workdir = tempfile.mkdtemp(prefix="xen-pte-dump-")
    out: Optional[IO[str]] = None
    bar = None
    try:
        if args.output:
            out = open(args.output, "w", encoding="utf-8", newline="")
        elif not args.summary:
            out = sys.stdout
        writer = _Writer(out, args.format)
        workers = min(args.jobs, len(targets))
        jobs = [Job(t, command, tuple(options), args.vcpu, workdir, i, args.timeout, args.gdb,
                    tally=args.summary, tag=workers > 1 and out is not None)
                for i, t in enumerate(targets)]
        bar = _progress(len(jobs), args.quiet)
        done: Dict[int, TargetResult] = {}
        ordered: List[TargetResult] = []
        index = {t: i for i, t in enumerate(targets)}
        for res in _results(jobs, workers):
            done[index[res.target]] = res
            if bar is not None:
                bar.update(1)
                for line in _failures(res):  # as they happen; the bar stays below
                    bar.write(line, file=sys.stderr)
            # Emit in target order as soon as every earlier target is out (files stay small).
            while len(ordered) in done:
                nxt = done.pop(len(ordered))
                writer.write(nxt)
                ordered.append(nxt)
        if bar is not None:
            bar.close()
    except BrokenPipeError:
        raise
    except OSError as err:  # the output file, or the temporary directory
        raise UsageError(f"{err.filename or 'output'}: {err.strerror or err}") from None
    finally:
        if out is not None and out is not sys.stdout:
            out.close()
        shutil.rmtree(workdir, ignore_errors=True)
    if out is sys.stdout:
        sys.stdout.flush()
    if args.summary:
        print("\n".join(render_summary(ordered)))
    failed = [line for res in ordered for line in _failures(res)]
    if not args.quiet and bar is None:
        for line in failed:
            print(line, file=sys.stderr)
    return 1 if failed else 0


def _failures(res: TargetResult) -> List[str]:
    """One stderr line per failed run of a target."""
    return [f"{PROG}: {res.target.label}{'' if run.vcpu is None else f' vCPU {run.vcpu}'}: "
            f"{run.error}" for run in res.runs if run.error]


def main(argv: Optional[List[str]] = None) -> int:
    """Console script entry point."""
    return run_main(PROG, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
