"""Dump benchmark ("dump, big", issue 7): a generated QEMU ELF dump of a 4-level guest walked end to
end by the CLI (real gdb), by xen-pte-dump, and by the engine directly.

Run:  python3 benchmarks/bench_dump.py [--gib 4,16] [--stream-gib 1,4] [--repeat 3] [--workdir D]

For each ``--gib`` size the dump holds only table pages (leaf frames need not be in a dump): a
direct map of GIB GiB in 4 KiB pages (262,144 leaves per GiB; 16 GiB = 4,194,304), 64 2 MiB and
4 1 GiB pages, and 64 vCPUs whose PML4s share that kernel half (each with 16 user pages of its
own). Printed, as medians of ``--repeat`` runs:

1. engine: ``Walker.iter_mappings`` over vCPU 0 from the dump file (QemuElfSource), coalesced,
   without and with verdicts; leaves/s; table pages read vs the distinct table pages a walk must
   read (found by a separate BFS); the time to merely ``pread`` those table pages from the file
   (the physical limit) and the ratio; peak RSS of that child process;
   the engine's own floor (each table read and decoded once, nothing emitted);
2. gdb: ``gdb -nx -batch`` loading the extension and running ``xen-pte-walk --core`` (coalesced
   text, and ``--json`` to a file), wall time minus gdb's own start-up, leaves/s, gdb's peak RSS;
   ``--no-coalesce --json`` (one record per page) at the ``--stream-gib`` sizes to show that gdb's
   peak RSS does not grow with the number of records, once through gdb's stdout (``gdb.write``)
   and once with ``-o FILE`` (written by the command itself);
3. 64 CR3s (smallest ``--gib`` only): the engine walking every vCPU with a fresh walker each, and
   with one :class:`~gdb_xenpte.replay.SubtreeMemo` shared by the walks (the kernel half walked
   once), and ``xen-pte-dump --vcpu all`` on the same dump.

The extension is loaded from this working tree (``source gdb_xenpte/gdb_load.py``, the line
``xen-pte-gdbinit`` prints for an installed copy). Timings are noisy on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE, os.path.join(ROOT, "tests", "sources")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import tabulate  # noqa: E402
from tabulate import tabulate as table  # noqa: E402

CR0, CR4, CS_FLAGS = 0x80050033, 0x3506F0, 0xA09B00  # long mode, PAE/PGE/SMEP/SMAP/PKE
DEPS = os.path.dirname(os.path.dirname(os.path.abspath(tabulate.__file__)))


# -- the dump ---------------------------------------------------------------------------------

def make_dump(path: str, gib: int, processes: int = 64) -> dict:
    """Write the dump; return what the measurements need to know about it."""
    from synthetic import big_space, table_pages
    from writers import write_qemu_elf
    pages, cr3s, leaves = big_space(gib, processes)
    layout = write_qemu_elf(path, pages, [dict(cr0=CR0, cr3=c, cr4=CR4, cs_flags=CS_FLAGS)
                                          for c in cr3s])
    base = min(pages)
    assert max(pages) - base == 4096 * (len(pages) - 1), "one contiguous PT_LOAD expected"
    return dict(path=path, gib=gib, cr3s=cr3s, leaves=leaves + 64 + 4, file_pages=len(pages),
                size=os.path.getsize(path), load_offset=layout.offsets["load0"], load_pa=base,
                tables=table_pages(pages, cr3s[0]))


# -- engine, in a child process (its own peak RSS) ---------------------------------------------

def _child_engine(spec: dict) -> dict:
    """Walk vCPU 0 ``repeat`` times each way; pread the table pages; the 64-CR3 experiment."""
    import resource

    from gdb_xenpte.cpu import CpuState
    from gdb_xenpte.sources.qemu_elf import QemuElfSource
    from gdb_xenpte.verdicts import Judge
    from gdb_xenpte.walk import Walker

    class Counting(QemuElfSource):
        def read(self, paddr, size):
            self.addrs.append(paddr)
            return super().read(paddr, size)

    src = Counting(spec["path"])
    src.addrs = []
    cpus = [CpuState(cr0=CR0, cr3=c, cr4=CR4, efer=0xD01, ac=0) for c in spec["cr3s"]]
    out = {}
    for _m in Walker(src, cpus[0]).iter_mappings():  # warm-up: imports, numpy's first calls
        pass
    for label, judged in (("coalesced, no verdicts", False), ("coalesced + verdicts", True)):
        times = []
        for _ in range(spec["repeat"]):
            src.addrs = []
            w = Walker(src, cpus[0], judge=Judge(CR0, CR4, 0, ac=0) if judged else None)
            t0 = time.perf_counter()
            records = sum(1 for _ in w.iter_mappings())
            times.append(time.perf_counter() - t0)
        out[label] = dict(seconds=statistics.median(times), leaves=w.stats.leaves,
                          records=records, tables_read=w.stats.tables_read,
                          distinct_reads=len(set(src.addrs)))
    # The physical limit: the same table pages, each read once, straight from the page cache.
    fd = os.open(spec["path"], os.O_RDONLY)
    offsets = [spec["load_offset"] + a - spec["load_pa"] for a in sorted(set(src.addrs))]
    times = []
    for _ in range(max(3, spec["repeat"])):
        t0 = time.perf_counter()
        for off in offsets:
            os.pread(fd, 4096, off)
        times.append(time.perf_counter() - t0)
    os.close(fd)
    out["raw pread"] = statistics.median(times)
    # The engine's own floor: read and decode each table once (Walker._table), emit nothing.
    keys = list(w._tables) + list(w._pt_lru)  # upper levels + the PTs the LRU still holds
    times = []
    for _ in range(max(3, spec["repeat"])):
        floor = Walker(src, cpus[0])
        t0 = time.perf_counter()
        for key in keys:
            floor._table(*key)
        times.append(time.perf_counter() - t0)
    out["read+decode"] = statistics.median(times)
    if spec["multi"]:
        out.update(_multi_cr3(src, cpus, spec["repeat"]))
    out["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return out


def _multi_cr3(src, cpus, repeat: int) -> dict:
    """Walk every CR3: a fresh walker each (what the tools do), then with shared decodings."""
    from gdb_xenpte.walk import Walker

    from gdb_xenpte.replay import SubtreeMemo

    out = {}
    for label, shared in (("64 CR3s, fresh walker each", False),
                          ("64 CR3s, subtrees shared (SubtreeMemo)", True)):
        times, reads = [], 0
        for _ in range(repeat):
            memo = SubtreeMemo() if shared else None
            reads = leaves = 0
            t0 = time.perf_counter()
            for cpu in cpus:
                w = Walker(src, cpu, memo=memo)
                for _m in w.iter_mappings():
                    pass
                reads += w.stats.tables_read
                leaves += w.stats.leaves
            times.append(time.perf_counter() - t0)
        out[label] = dict(seconds=statistics.median(times), leaves=leaves, tables_read=reads)
    return out


def engine_rows(info: dict, repeat: int, multi: bool) -> tuple:
    spec = dict(path=info["path"], cr3s=info["cr3s"], repeat=repeat, multi=multi,
                load_offset=info["load_offset"], load_pa=info["load_pa"])
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], check=True,
                          capture_output=True, text=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    raw = res["raw pread"]
    distinct = len(info["tables"])
    rows = []
    for label in ("coalesced, no verdicts", "coalesced + verdicts"):
        r = res[label]
        rows.append([f"{info['gib']} GiB", label, f"{r['leaves']:,}", r["records"],
                     f"{r['seconds']:.3f}", f"{r['leaves'] / r['seconds'] / 1e6:.2f}",
                     f"{r['tables_read']:,} / {r['distinct_reads']:,} / {distinct:,}",
                     f"{raw * 1e3:.1f} ms", f"{r['seconds'] / raw:.0f}x",
                     f"{res['read+decode'] * 1e3:.0f} ms",
                     f"{res['maxrss_kib'] / 1024:.0f}"])
    shared = []
    for label in ("64 CR3s, fresh walker each",
                  "64 CR3s, subtrees shared (SubtreeMemo)")[:2 * multi]:
        r = res[label]
        shared.append([f"{info['gib']} GiB", label, f"{r['leaves']:,}", f"{r['seconds']:.2f}",
                      f"{r['leaves'] / r['seconds'] / 1e6:.2f}", f"{r['tables_read']:,}"])
    return rows, shared


# -- gdb and xen-pte-dump, as child processes with their own rusage ---------------------------

def run_measured(argv, stdout_path: str) -> tuple:
    """Run ``argv`` with stdout to a file; return (wall seconds, peak RSS MiB of it + children)."""
    with open(stdout_path, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                cwd=ROOT)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0 or "Traceback" in err or "Python Exception" in err:
        raise RuntimeError(f"{argv[:3]}... failed ({proc.returncode}): {err[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def gdb_argv(*commands: str) -> list:
    load = [f"python import sys; sys.path[:0] = [p for p in {[ROOT, DEPS]!r} if p not in "
            f"sys.path]", f"source {os.path.join(ROOT, 'gdb_xenpte', 'gdb_load.py')}"]
    argv = ["gdb", "-nx", "-batch"]
    for c in load + list(commands):
        argv += ["-ex", c]
    return argv


def summary_of(path: str) -> dict:
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 65536))
        last = f.read().splitlines()[-1]
    return json.loads(last)


def gdb_rows(info: dict, repeat: int, workdir: str, startup: float, stream: bool) -> list:
    core = info["path"]
    runs = [("text, coalesced", f"xen-pte-walk --core {core}", "txt"),
            ("--json, coalesced", f"xen-pte-walk --core {core} --json", "jsonl")]
    out_o = os.path.join(workdir, f"walk-{info['gib']}-o.jsonl")
    if stream:
        # Through gdb.write (stdout of gdb -batch) and straight to a file (-o: no gdb.write).
        runs = [("--json --no-coalesce", f"xen-pte-walk --core {core} --json --no-coalesce",
                 "jsonl"),
                ("--json --no-coalesce -o FILE",
                 f"xen-pte-walk --core {core} --json --no-coalesce -o {out_o}", "jsonl")]
    rows = []
    for label, command, ext in runs:
        out = os.path.join(workdir, f"walk-{info['gib']}.{ext}")
        results = [run_measured(gdb_argv(command), out) for _ in range(1 if stream else repeat)]
        if " -o " in command:
            os.replace(out_o, out)  # what gdb printed itself (nothing) makes way for the file
        wall = statistics.median(r[0] for r in results)
        rss = max(r[1] for r in results)
        walk = wall - startup
        tables = "-"
        if ext == "jsonl":
            s = summary_of(out)
            tables = f"{s.get('tables_read', 0):,}"
            pages = s["counts"]["pages"]
        else:
            pages = info["leaves"]
        rows.append([f"{info['gib']} GiB", label, f"{pages:,}", f"{wall:.2f}", f"{walk:.2f}",
                     f"{pages / walk / 1e6:.2f}", tables, f"{os.path.getsize(out) / 1e6:.1f}",
                     f"{rss:.0f}"])
        os.unlink(out)
    return rows


def xen_pte_dump_row(info: dict, workdir: str) -> list:
    out = os.path.join(workdir, "fleet.jsonl")
    wall, rss = run_measured([sys.executable, "-m", "scripts.xen_pte_dump", "--core", info["path"],
                              "--vcpu", "all", "-j", "1", "--quiet", "-o", out], os.devnull)
    with open(out) as f:
        walks = sum(1 for line in f if '"summary"' in line
                    and json.loads(line).get("type") == "summary")
    os.unlink(out)
    return [f"{info['gib']} GiB", "xen-pte-dump --vcpu all -j 1 (64 walks in one gdb)",
            f"{64 * info['leaves']:,}", f"{wall:.2f}", f"{64 * info['leaves'] / wall / 1e6:.2f}",
            f"{walks} summaries", f"{rss:.0f}"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", default="4,16", help="direct-map sizes in GiB (comma-separated)")
    ap.add_argument("--stream-gib", default="1,4",
                    help="sizes for the one-record-per-page --json run (comma-separated; '' none)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (median reported)")
    ap.add_argument("--workdir", help="where dumps go (default: a temporary directory)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child_engine(json.loads(args.child))))
        return 0
    sizes = [int(x) for x in args.gib.split(",") if x]
    stream_sizes = [int(x) for x in args.stream_gib.split(",") if x]
    tmp = tempfile.TemporaryDirectory(prefix="xenpte-bench-dump-", dir=args.workdir)
    workdir = tmp.name
    print(f"load: {os.getloadavg()[0]:.2f} (1-min) on {os.cpu_count()} CPUs; median of "
          f"{args.repeat}")
    startups = [run_measured(gdb_argv("python import gdb_xenpte.walk"), os.devnull)
                for _ in range(args.repeat)]
    startup = statistics.median(s[0] for s in startups)
    print(f"gdb -batch + loading the extension: {startup:.2f} s, "
          f"{max(s[1] for s in startups):.0f} MiB peak RSS")
    engine, multi, cli, dump_rows = [], [], [], []
    for gib in sorted(set(sizes) | set(stream_sizes)):
        path = os.path.join(workdir, f"big-{gib}.elf")
        t0 = time.perf_counter()
        info = make_dump(path, gib)
        print(f"{gib} GiB: {info['leaves']:,} leaves per CR3, {info['file_pages']:,} table pages "
              f"({len(info['tables']):,} per CR3), file {info['size'] / 1e6:.1f} MB, written in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        if gib in sizes:
            e, m = engine_rows(info, args.repeat, multi=gib == min(sizes))
            engine += e
            multi += m
            cli += gdb_rows(info, args.repeat, workdir, startup, stream=False)
            if gib == min(sizes):
                dump_rows.append(xen_pte_dump_row(info, workdir))
        if gib in stream_sizes:
            cli += gdb_rows(info, args.repeat, workdir, startup, stream=True)
        os.unlink(path)
    print("\nEngine on the dump file (vCPU 0), child process:")
    print(table(engine, headers=("dump", "walk", "leaves", "records", "seconds", "M leaves/s",
                                 "tables read / distinct reads / needed", "raw pread",
                                 "walk / raw", "read+decode", "peak RSS MiB")))
    print("\ngdb -batch, xen-pte-walk --core (walk = wall - gdb start-up):")
    print(table(cli, headers=("dump", "output", "pages", "wall s", "walk s", "M leaves/s",
                              "tables read", "output MB", "gdb peak RSS MiB")))
    print("\nAll 64 CR3s (kernel half shared):")
    print(table(multi, headers=("dump", "engine", "leaves", "seconds", "M leaves/s",
                                "tables read")))
    print(table(dump_rows, headers=("dump", "batch", "leaves", "wall s", "M leaves/s", "walks",
                                    "peak RSS MiB")))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
