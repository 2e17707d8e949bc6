"""Live benchmark (issue 7): full walks of real guests over QEMU's gdbstub, next to ``info tlb``.

Run:  python3 benchmarks/bench_live.py [--repeat 5] [--targets linux4,linux5,xen] [--profile DIR]
      [--gdb-pt-dump DIR]

Boots each target under QEMU TCG (Debian's Linux 6.1, 4- and 5-level, 512 MiB; Xen 4.17 with a
PV dom0, stopped with dom0's kernel L4 in pCPU 0's CR3), stops it under one gdb (pygdbmi) with
the extension loaded from this working tree, and measures inside gdb's Python, medians of
``--repeat``:

* ``xen-pte-walk`` of the whole space (coalesced text, verdicts on: the default command; and
  ``--json``) with
  ``set xen-pte fast-path on`` (reads through ``/proc/<qemu>/mem``) and ``off`` (PhyMemMode);
* the read-once floor of each path: the same source reading each table page of that walk once
  (inside one PhyMemMode session), nothing decoded;
* the number of table reads (``Walker.stats.tables_read``), of reads the source asked of gdb
  (``GdbStub.read_memory``) and of gdb remote ``m`` packets for one walk (a separate ``gdb -batch``
  with ``set debug remote 1`` after the measuring gdb detached, same CR3; its log counted);
* QEMU's own ``monitor info tlb`` on the same stopped guest, from this process (HMP socket).

With ``--gdb-pt-dump DIR`` (a checkout of github.com/martinradev/gdb-pt-dump, kept outside this
repository) its ``pt`` command is sourced into the same gdb and timed on the same stopped guest:
its lossy default (``pt``: a table entry whose value was already seen in the same table is not
walked again, so aliases such as espfix's 512 identical PMD entries are dropped) and its complete
mode (``pt -force_traverse_all``), with the ranges it prints and the bytes they cover.

With ``--profile DIR`` each path's walk is also profiled once with pyinstrument (if importable
in gdb) and the text reports are written to DIR. Timings are noisy on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MARK = "XENPTE-BENCH:"


# -- run inside gdb's Python (this file is imported there; gdb_xenpte from the working tree) ---

def in_gdb(opts: str, fast: bool, repeat: int, profile: str) -> None:
    """Measure one path; print ``MARK + json`` for the driver."""
    import gdb

    from gdb_xenpte.gdbcmd.live import GdbStub, open_live_source
    from gdb_xenpte.session import Options, prepare

    gdb.execute(f"set xen-pte fast-path {'on' if fast else 'off'}")
    command = f"xen-pte-walk {opts}"
    gdb.execute(command, to_string=True)  # warm-up: imports, first use of the stub
    times, json_times = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        text = gdb.execute(command, to_string=True)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        gdb.execute(command + " --json", to_string=True)
        json_times.append(time.perf_counter() - t0)
    # The walk's table set, read by the engine through the same kind of source.
    domain = "pv64" if "pv64" in opts else None
    counts = {"read_memory": 0}
    real_read = GdbStub.read_memory

    def counted(self, addr, size):
        counts["read_memory"] += 1
        return real_read(self, addr, size)

    GdbStub.read_memory = counted
    try:
        src = open_live_source(domain=None, fast=fast)
        with src:
            s = prepare(src, Options(domain=domain, xen="4.17" if domain else None,
                                     vcpu=gdb.selected_thread().num - 1))
            w = s.walker()
            leaves = records = covered = 0
            for m in w.iter_mappings():
                records += 1
                leaves += m.count
                covered += m.size
            keys = list(w._pages)  # (table address, size) of each table read, in read order
            stats = w.stats
        path = src.path
        reads_per_walk = counts["read_memory"]
        floors = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            with src:
                for pa, size in keys:
                    src.read(pa, size)
            floors.append(time.perf_counter() - t0)
        src.close()
    finally:
        GdbStub.read_memory = real_read
    if profile:
        try:
            from pyinstrument import Profiler
        except ImportError:
            Profiler = None
        if Profiler is not None:
            prof = Profiler(interval=0.0005)
            prof.start()
            gdb.execute(command, to_string=True)
            prof.stop()
            with open(profile, "w") as f:
                f.write(prof.output_text(unicode=False, color=False, show_all=False))
    print(MARK + json.dumps(dict(
        path=path, seconds=statistics.median(times), all_seconds=times,
        json_seconds=statistics.median(json_times),
        floor=statistics.median(floors), tables=stats.tables_read, leaves=leaves,
        engine_records=records, covered=covered, text_lines=text.count("\n"),
        stub_reads_engine_walk=reads_per_walk,
        budget_hit=stats.budget_hit, unreadable=len(stats.unreadable))))


PT_RANGE = re.compile(r"(0x[0-9a-f]+) : +(0x[0-9a-f]+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def in_gdb_ptdump(repeat: int) -> None:
    """Time gdb-pt-dump's ``pt`` (sourced by the driver) on the selected CPU's CR3; print
    ``MARK + json``: median seconds, ranges printed and bytes covered per mode."""
    import gdb
    res = {}
    for mode, command in (("lossy", "pt"), ("complete", "pt -force_traverse_all")):
        gdb.execute(command, to_string=True)  # warm-up: its lazy set-up (QEMU pid, backend)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = gdb.execute(command, to_string=True)
            times.append(time.perf_counter() - t0)
        out = ANSI.sub("", out)
        if "Exception" in out:  # pt prints its exceptions instead of raising them
            raise RuntimeError(f"{command}: {out[-2000:]}")
        ranges = PT_RANGE.findall(out)
        res[mode] = dict(seconds=statistics.median(times), all_seconds=times,
                         ranges=len(ranges), covered=sum(int(n, 16) for _va, n in ranges))
    print(MARK + json.dumps(res))


# -- the driver ---------------------------------------------------------------------------------

def _measure(gdb, vm, label: str, opts: str, repeat: int, profile_dir) -> tuple:
    """Both paths and info tlb for one stopped target."""
    res = {}
    for fast in (True, False):
        prof = os.path.join(profile_dir, f"{label}-{'proc' if fast else 'gdbstub'}.txt") \
            if profile_dir else ""
        out = gdb.cli(f"python import bench_live; bench_live.in_gdb({opts!r}, {fast}, {repeat}, "
                      f"{prof!r})", timeout=1800)
        line = next((x for x in out.splitlines() if x.startswith(MARK)), None)
        if line is None:
            raise RuntimeError(f"{label}: no result from gdb: {out[-3000:]}")
        res[fast] = json.loads(line[len(MARK):])
    tlb = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        text = vm.monitor("info tlb", timeout=600)
        tlb.append(time.perf_counter() - t0)
    tlb_s = statistics.median(tlb)
    tlb_leaves = sum(1 for x in text.splitlines() if x.strip())
    if PT_DUMP["dir"]:
        out = gdb.cli(f"python bench_live.in_gdb_ptdump({repeat})", timeout=1800)
        line = next((x for x in out.splitlines() if x.startswith(MARK)), None)
        if line is None:
            raise RuntimeError(f"{label}: no result from gdb-pt-dump: {out[-3000:]}")
        PT_DUMP["rows"].append((label, res[True], tlb_s, json.loads(line[len(MARK):])))
    return res, tlb_s, tlb_leaves


def _rows(label: str, res: dict, tlb_s: float, tlb_leaves: int) -> list:
    rows = []
    for fast in (True, False):
        r = res[fast]
        rows.append([label, r["path"], f"{r['tables']:,} / {r['leaves']:,}",
                     f"{r['engine_records']:,}", f"{r['seconds']:.3f}", f"{r['json_seconds']:.3f}",
            f"{r['floor']:.4f}", f"{r['seconds'] / r['floor']:.1f}x", f"{tlb_s:.3f}",
            f"{tlb_s / r['seconds']:.2f}x", f"{tlb_leaves:,}",
            f"{r['stub_reads_engine_walk']:,}", f"{r['packets']['m']:,}"])
    print(f"{label}: " + json.dumps(res), flush=True)
    return rows


def _count_packets(port: int, opts: str, fast: bool) -> dict:
    """gdb remote packets sent by one whole ``xen-pte-walk`` (source set-up included), counted in
    a separate ``gdb -batch`` with ``set debug remote 1`` (its log goes to stderr; from gdb's
    Python, to_string and pipe swallow it). Run after the measuring gdb has detached: the
    gdbstub takes one client at a time; ``opts`` names the CR3 that was measured."""
    from tests.gdb.gdbrun import run_gdb
    from tests.targets.gdb import connect_commands
    res = run_gdb(*connect_commands(port), f"set xen-pte fast-path {'on' if fast else 'off'}",
                  "set debug remote 1", f"xen-pte-walk {opts}",
                  "set debug remote 0", "detach", timeout=1800)
    sent = [line for line in res.stderr.splitlines() if "Sending packet: $" in line]
    # Only the m packets are certain: the monitor/maint packets the source sends run inside
    # gdb.execute(to_string=True), which captures their debug lines too.
    return {"m": sum(1 for x in sent if "Sending packet: $m" in x)}


def _linux(la57: bool, repeat: int, workdir: str, profile_dir) -> list:
    from targets.gdb import GdbMi
    from targets.linux import boot_linux
    from targets.livewalk import load_extension
    label = f"Linux 6.1 {'5' if la57 else '4'}-level"
    with boot_linux(os.path.join(workdir, "linux5" if la57 else "linux4"), la57=la57) as guest:
        time.sleep(1.0)  # stop in a running system (init's sleep loop)
        with GdbMi(guest.vm.gdb_port, timeout=600) as gdb:
            _load(gdb, load_extension)
            cr3 = gdb.evaluate("$cr3")
            res, tlb_s, tlb_leaves = _measure(gdb, guest.vm, label, "", repeat, profile_dir)
        return _rows(label, _with_packets(res, guest.vm.gdb_port, f"--cr3 {cr3:#x}"), tlb_s,
                     tlb_leaves)


def _xen(repeat: int, workdir: str, profile_dir) -> list:
    import struct

    from targets.gdb import GdbMi
    from targets.livewalk import load_extension
    from targets.xen import boot_xen
    with boot_xen(os.path.join(workdir, "xen"), extra_args=["-smp", "2"],
                  xen_args=["dom0_max_vcpus=1", "dom0_vcpus_pin"]) as guest:
        vm = guest.vm
        time.sleep(1.0)
        for _attempt in range(20):
            with GdbMi(vm.gdb_port, timeout=600) as gdb:
                gdb.cli("thread 1")  # pCPU 0: dom0's context
                cr3 = gdb.evaluate("$cr3")
                # A kernel L4 maps Linux's image in slot 511; a PV user L4 does not.
                if not struct.unpack("<Q", vm.pmemsave((cr3 & ~0xFFF) + 8 * 511, 8))[0] & 1:
                    continue
                _load(gdb, load_extension)
                opts = "--domain pv64 --xen 4.17"
                res, tlb_s, tlb_leaves = _measure(gdb, vm, XEN_LABEL, opts, repeat, profile_dir)
            return _rows(XEN_LABEL, _with_packets(res, vm.gdb_port, f"{opts} --cr3 {cr3:#x}"),
                         tlb_s, tlb_leaves)
            time.sleep(0.3)
    raise RuntimeError("pCPU 0 never stopped with dom0's kernel L4 in CR3")


XEN_LABEL = "Xen 4.17 idle, dom0 L4"


def _with_packets(res: dict, port: int, opts: str) -> dict:
    for fast in (True, False):
        res[fast]["packets"] = _count_packets(port, opts, fast)
    return res


def _load(gdb, load_extension) -> None:
    load_extension(gdb)
    gdb.cli(f"python import sys; sys.path.insert(0, {HERE!r})")
    if PT_DUMP["dir"]:
        gdb.cli(f"source {os.path.join(PT_DUMP['dir'], 'pt.py')}")


# --gdb-pt-dump: its checkout, and per target (label, our /proc-path result, info tlb s, its).
PT_DUMP = {"dir": None, "rows": []}


def _pt_table() -> list:
    rows = []
    for label, ours, tlb_s, pt in PT_DUMP["rows"]:
        walk = ours["seconds"]
        for mode in ("lossy", "complete"):
            p = pt[mode]
            rows.append([label, f"pt {mode}", f"{p['seconds']:.3f}", f"{p['ranges']:,}",
                         f"{p['covered']:#x}", f"{walk:.3f}", f"{ours['covered']:#x}",
                         f"{p['seconds'] / walk:.1f}x", f"{tlb_s:.3f}"])
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="runs per figure (median reported)")
    ap.add_argument("--targets", default="linux4,linux5,xen",
                    help="comma-separated: linux4, linux5, xen")
    ap.add_argument("--profile", metavar="DIR", help="write pyinstrument reports here")
    ap.add_argument("--gdb-pt-dump", metavar="DIR",
                    help="also time gdb-pt-dump's pt (DIR holds its pt.py) in the same gdb")
    args = ap.parse_args(argv)
    if args.gdb_pt_dump:
        if not os.path.isfile(os.path.join(args.gdb_pt_dump, "pt.py")):
            ap.error(f"--gdb-pt-dump {args.gdb_pt_dump}: no pt.py there")
        PT_DUMP["dir"] = os.path.abspath(args.gdb_pt_dump)
    sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
    from tabulate import tabulate
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="xenpte-bench-live-") as workdir:
        for target in args.targets.split(","):
            print(f"{target}: load {os.getloadavg()[0]:.2f}", flush=True)
            if target.startswith("linux"):
                rows += _linux(target == "linux5", args.repeat, workdir, args.profile)
            elif target == "xen":
                rows += _xen(args.repeat, workdir, args.profile)
            else:
                ap.error(f"unknown target {target!r}")
    print(f"\nmedian of {args.repeat}; load at the end {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} CPUs")
    print(tabulate(rows, headers=(
        "target", "path", "tables / VA-path leaves", "records", "walk s", "--json s",
        "read-once floor s",
        "walk / floor", "info tlb s", "info tlb / walk", "info tlb lines", "stub reads",
        "remote m packets")))
    if PT_DUMP["rows"]:
        print(f"\ngdb-pt-dump ({PT_DUMP['dir']}), same gdb, same stopped guest, median of "
              f"{args.repeat}; our walk: default xen-pte-walk, /proc path")
        print(tabulate(_pt_table(), headers=(
            "target", "mode", "pt s", "ranges printed", "bytes covered", "our walk s",
            "our bytes covered (expanded)", "pt / our walk", "info tlb s")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
