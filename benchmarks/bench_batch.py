"""Batch benchmark: xen-pte-dump over 16 dumps with -j 2 vs -j 1, gdb's start-up cost per dump,
and how a big walk's records should leave gdb (a file vs MI records) for flat memory.

Run:  python3 benchmarks/bench_batch.py [--pages 5000] [--mi 20000] [--big 100000] [--repeat 2]

Prints three tables:

1. 16 QEMU ELF dumps of ``--pages`` 4 KiB user pages each, walked with ``--no-coalesce`` (one
   record per page) by the real ``python3 -m scripts.xen_pte_dump``, with ``-j 1`` and ``-j 2``
   (best of ``--repeat``; wall time, CPU time of the tool and all its processes, speed-up).
2. The per-dump overhead of starting gdb: gdb + loading the extension (``GdbSession``), the walk
   of a one-page dump inside that gdb, and the whole tool on 16 one-page dumps divided by 16.
3. One ``--mi``-record walk moved out of gdb three ways — the command's ``-o`` into a file
   (``GdbSession.to_file``, what xen-pte-dump does; gdb's ``pipe`` into ``cat`` before issue
   15), MI console records read through pygdbmi, and the ``-xen-pte-walk`` MI command (where
   the glue has it) — with wall time and the peak RSS of the Python side and of
   gdb (the MI ways are slow, hence the smaller size); then xen-pte-dump's own peak RSS and its
   gdb's for a ``--big``-record walk and one a tenth of that size.

Timings are noisy on a shared 2-core machine; compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, os.path.join(ROOT, "tests"), os.path.join(ROOT, "tests", "sources")):
    sys.path.insert(0, _p)

from tabulate import tabulate  # noqa: E402

from builder import P, RW, US, Builder  # noqa: E402
from writers import write_qemu_elf  # noqa: E402


def make_dump(path: str, pages: int, seed: int = 0) -> None:
    """A QEMU ELF dump whose page tables map ``pages`` user 4 KiB pages (tables only in RAM)."""
    b = Builder("4level")
    base = 0x400000 + seed * (1 << 30)
    for i in range(pages):
        b.map(base + i * 0x1000, 0x200000 + i * 0x1000, flags=P | RW | US)
    write_qemu_elf(path, b.image(), [dict(cr0=0x80050033, cr3=b.cr3, cr4=0x3506F0,
                                          cs_flags=0xA09B00)])


def tool(*args: str) -> float:
    """Run xen-pte-dump; return its wall time (it must succeed)."""
    return tool_times(*args)[0]


def tool_times(*args: str) -> tuple:
    """Run xen-pte-dump; return (wall s, CPU s of it and every process it started)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    subprocess.run([sys.executable, "-m", "scripts.xen_pte_dump", *args, "--quiet"], cwd=ROOT,
                   check=True, stdin=subprocess.DEVNULL)
    wall = time.monotonic() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def bench_jobs(tmp: str, pages: int, repeat: int) -> list:
    dumps = []
    for i in range(16):
        dumps.append(os.path.join(tmp, f"d{i:02d}.elf"))
        make_dump(dumps[-1], pages, seed=i)
    rows = []
    out = os.path.join(tmp, "fleet.jsonl")
    for jobs in (1, 2):
        wall, cpu = min(tool_times("--core", *dumps, "--no-coalesce", "-j", str(jobs), "-o", out)
                        for _ in range(repeat))
        rows.append([f"-j {jobs}", f"{wall:.2f}", f"{cpu:.2f}", f"{16 * pages / wall:,.0f}"])
    rows[1].append(f"{float(rows[0][1]) / float(rows[1][1]):.2f}x")
    rows[0].append("1.00x")
    return rows


def bench_startup(tmp: str, repeat: int) -> list:
    from scripts.mi import GdbSession
    one = os.path.join(tmp, "one.elf")
    make_dump(one, 1)
    starts, walks = [], []
    for _ in range(max(3, repeat * 2)):
        t = time.monotonic()
        with GdbSession() as gdb:
            t1 = time.monotonic()
            gdb.to_file(f"xen-pte-walk --json --core {one}", os.path.join(tmp, "one.jsonl"))
            walks.append(time.monotonic() - t1)
        starts.append(t1 - t)
    ones = []
    for i in range(16):
        ones.append(os.path.join(tmp, f"one{i}.elf"))
        make_dump(ones[-1], 1, seed=i)
    whole = min(tool("--core", *ones, "-j", "1", "-o", os.path.join(tmp, "ones.jsonl"))
                for _ in range(repeat))
    return [["gdb start + extension load (GdbSession)", f"{min(starts) * 1000:.0f}",
             f"{sorted(starts)[len(starts) // 2] * 1000:.0f}"],
            ["walk of a 1-page dump inside that gdb", f"{min(walks) * 1000:.0f}",
             f"{sorted(walks)[len(walks) // 2] * 1000:.0f}"],
            ["xen-pte-dump -j 1 on 16 one-page dumps, per dump", f"{whole / 16 * 1000:.0f}",
             "-"]]


# ---- transports (each measured in a fresh interpreter: ru_maxrss is a high-water mark) ----

def _transport(method: str, dump: str, out: str) -> dict:
    from scripts.mi import GdbSession, _mi_quote
    cmd = f"xen-pte-walk --json --no-coalesce --core {dump}"
    t = time.monotonic()
    lines = 0
    with GdbSession() as gdb:
        if method == "pipe":
            gdb.to_file(cmd, out)
            with open(out) as fh:
                lines = sum(1 for _ in fh)
        elif method == "console":
            # Stream the console records as pygdbmi hands them over, writing each one out.
            with open(out, "w") as fh:
                gdb._token += 1
                token = gdb._token
                gdb._ctl.write(f"{token}-interpreter-exec console {_mi_quote(cmd)}",
                               read_response=False)
                done = False
                while not done:
                    for rec in gdb._ctl.get_gdb_response(timeout_sec=1,
                                                         raise_error_on_timeout=False):
                        if rec.get("type") == "console":
                            fh.write(rec["payload"])
                            lines += rec["payload"].count("\n")
                        elif rec.get("type") == "result" and rec.get("token") == token:
                            done = True
        elif method == "mi-command":
            recs = gdb.mi(f"-xen-pte-walk --no-coalesce --core {dump}")
            result = recs[-1]["payload"]["records"]
            with open(out, "w") as fh:
                for r in result:
                    fh.write(json.dumps(r) + "\n")
            lines = len(result)
        gdb_rss = None
        pid = gdb._ctl.gdb_process.pid
        with open(f"/proc/{pid}/status") as fh:
            gdb_rss = next(int(ln.split()[1]) for ln in fh if ln.startswith("VmHWM:"))
    return {"seconds": time.monotonic() - t, "lines": lines,
            "python_peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "gdb_peak_kib": gdb_rss}


def bench_transports(tmp: str, big: int) -> list:
    dump = os.path.join(tmp, "big.elf")
    make_dump(dump, big)
    rows = []
    for method in ("pipe", "console", "mi-command"):
        proc = subprocess.run([sys.executable, __file__, "--_transport", method, dump,
                               os.path.join(tmp, f"{method}.jsonl")], capture_output=True,
                              text=True, cwd=ROOT, timeout=1800)
        if proc.returncode != 0:
            rows.append([method, "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1],
                         "", "", ""])
            continue
        r = json.loads(proc.stdout.splitlines()[-1])
        rows.append([method, f"{r['seconds']:.1f}", r["lines"],
                     f"{r['python_peak_kib'] / 1024:.0f}", f"{r['gdb_peak_kib'] / 1024:.0f}"])
    return rows


def _tool_rss(args: list) -> tuple:
    """Peak RSS (MiB) of xen-pte-dump's Python (run in-process, -j 1: the worker runs inline)
    and of the largest gdb it started."""
    code = ("import resource, sys; from scripts.xen_pte_dump import main; "
            f"rc = main({args!r}); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
            "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    me, gdb, rc = proc.stdout.split()[-3:]
    assert rc == "0", proc.stderr
    return int(me) / 1024, int(gdb) / 1024


def bench_tool_memory(tmp: str, big: int) -> list:
    rows = []
    for n in (big // 10, big):
        dump = os.path.join(tmp, f"mem{n}.elf")
        make_dump(dump, n)
        out = os.path.join(tmp, f"mem{n}.jsonl")
        for extra in ([], ["--summary"]):
            me, gdb = _tool_rss(["--core", dump, "--no-coalesce", "-o", out, "--quiet", "-j",
                                 "1", *extra])
            rows.append([n, " ".join(extra) or "-", f"{os.path.getsize(out) / 2**20:.0f}",
                         f"{me:.0f}", f"{gdb:.0f}"])
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=5000, help="pages per dump for -j (5000)")
    ap.add_argument("--mi", type=int, default=20000, help="records for the transports (20000)")
    ap.add_argument("--big", type=int, default=100000, help="records of the big walk (100000)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per timing, best kept (2)")
    ap.add_argument("--_transport", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._transport:
        print(json.dumps(_transport(*args._transport)))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        print(f"1. 16 dumps x {args.pages} pages (--no-coalesce: one record per page)")
        print(tabulate(bench_jobs(tmp, args.pages, args.repeat),
                       headers=["jobs", "wall s", "CPU s", "records/s", "speed-up"],
                       tablefmt="simple"))
        print(f"   (load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: CPU s is "
              "the part other users cannot change)")
        print("\n2. per-dump overhead of starting gdb")
        print(tabulate(bench_startup(tmp, args.repeat), headers=["", "best ms", "median ms"],
                       tablefmt="simple"))
        print(f"\n3. getting a {args.mi}-record walk out of gdb")
        print(tabulate(bench_transports(tmp, args.mi),
                       headers=["transport", "wall s", "records", "python peak MiB",
                                "gdb peak MiB"], tablefmt="simple"))
        print("\n   xen-pte-dump's own peak RSS (-j 1) and its gdb's, small vs big walk")
        print(tabulate(bench_tool_memory(tmp, args.big),
                       headers=["records", "options", "output MiB", "python peak MiB",
                                "gdb peak MiB"], tablefmt="simple"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
