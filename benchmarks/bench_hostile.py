"""Hostile-file costs (issue 19): what a lying or stormy dump costs to open, and what a dump read
costs now that reads are ``pread`` calls (no ``mmap``, so truncation cannot SIGBUS).

Run:  python3 benchmarks/bench_hostile.py [--storm 300000,1000000] [--repeat 5]
                                          [--claims bitmaps:256M,bitmaps:8G,note:8G]
                                          [--tree DIR] [--workdir D]

``--tree`` runs the same measurements against another checkout's ``gdb_xenpte`` (e.g. one made
with ``git archive <commit> gdb_xenpte | tar -x -C DIR``) to compare before and after. Each figure
is measured in a fresh child process (its own peak RSS); files are written by the test corpus
(tests/sources/corpus.py, writers.py) in a separate child first.

1. record storm: a valid flattened kdump preceded by N one-byte records in descending order:
   seconds to open, peak RSS of the opening process;
2. header claims: a flattened kdump claiming two 256 MiB / 8 GiB bitmaps in ~6 KiB, and a QEMU ELF
   whose PT_NOTE claims 8 GiB (sparse file): seconds to refuse, bytes allocated (tracemalloc peak);
3. reads: the 4 GiB dump of bench_dump.py (tables only), median seconds of an engine walk of
   vCPU 0 (coalesced) and microseconds per 4 KiB ``source.read`` at 20,000 random pages.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORPUS = [os.path.join(ROOT, "tests", "sources"), os.path.join(ROOT, "tests"), HERE]


def _child(tree: str, task: dict) -> dict:
    code = ("import json, sys; sys.path[:0] = " + repr([tree] + CORPUS) +
            "; import bench_hostile as b; print(json.dumps(b._run(json.loads(sys.argv[1]))))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(task)], capture_output=True,
                         text=True, cwd=HERE, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _run(task: dict) -> dict:
    """In the child: do one task; return its figures."""
    import pathlib
    import resource
    import time
    import tracemalloc
    kind, path = task["kind"], task["path"]
    if kind == "write-storm":
        from corpus import write_record_storm
        write_record_storm(pathlib.Path(path), task["n"])
        return {}
    if kind == "write-claim":
        from corpus import write_bitmap_claim, write_sparse_note
        if task["what"] == "note":
            write_sparse_note(pathlib.Path(path), task["bytes"])
        else:
            write_bitmap_claim(pathlib.Path(path), task["bytes"])
        return {}
    if kind == "write-big":
        import bench_dump
        bench_dump.make_dump(path, 4)
        return {}
    from gdb_xenpte.errors import XenpteError
    from gdb_xenpte.sources.open import open_dump
    if kind == "open":
        if task.get("trace"):  # tracemalloc slows allocation-heavy code: only where asked
            tracemalloc.start()
        t0 = time.perf_counter()
        try:
            with open_dump(path):
                outcome = "opened"
        except XenpteError as err:
            outcome = str(err)
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] if task.get("trace") else 0
        return dict(seconds=seconds, outcome=outcome, alloc=peak,
                    rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    if kind == "reads":
        import random
        from gdb_xenpte.cpu import CpuState
        from gdb_xenpte.walk import Walker
        src = open_dump(path)
        v = src.vcpus()[0]
        cpu = CpuState(cr0=0x80050033, cr3=v.cr3, cr4=0x3506F0, efer=0xD01, ac=0)
        sum(1 for _ in Walker(src, cpu).iter_mappings())  # warm-up
        rnd = random.Random(1)
        ranges = src.ranges()
        addrs = []
        for _ in range(20000):
            start, end = rnd.choice(ranges)
            addrs.append(start + rnd.randrange((end - start) // 4096) * 4096)
        walks, reads = [], []
        for _ in range(task["repeat"]):
            t0 = time.perf_counter()
            sum(1 for _ in Walker(src, cpu).iter_mappings())
            walks.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for a in addrs:
                src.read(a, 4096)
            reads.append((time.perf_counter() - t0) / len(addrs) * 1e6)
        return dict(walk_s=statistics.median(walks), read_us=statistics.median(reads))
    raise ValueError(kind)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--storm", default="300000,1000000", help="record counts (comma-separated)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per read figure (median)")
    ap.add_argument("--claims", default="bitmaps:256M,bitmaps:8G,note:8G",
                    help="header claims to open; against an old tree keep to what its RAM use "
                         "allows (it allocated the claims: 8G ones cost 8-16 GiB)")
    ap.add_argument("--tree", default=ROOT, help="checkout whose gdb_xenpte is measured")
    ap.add_argument("--workdir", help="where files go (default: a temporary directory)")
    args = ap.parse_args()
    temp = None if args.workdir else tempfile.TemporaryDirectory(prefix="bench-hostile-")
    work = args.workdir or temp.name
    tree = os.path.abspath(args.tree)
    print(f"tree: {tree}")
    for n in (int(x) for x in args.storm.split(",")):
        path = os.path.join(work, f"storm-{n}.flat")
        _child(ROOT, dict(kind="write-storm", path=path, n=n))
        r = _child(tree, dict(kind="open", path=path))
        print(f"storm {n:,} records ({os.path.getsize(path):,} bytes): open {r['seconds']:.2f} s, "
              f"peak RSS {r['rss_mib']} MiB, {r['outcome'][:60]}")
        os.unlink(path)
    units = {"M": 20, "G": 30}
    claims = [(c.split(":")[0], int(c.split(":")[1][:-1]) << units[c[-1]])
              for c in args.claims.split(",") if c]
    for what, size in claims:
        path = os.path.join(work, f"claim-{what}-{size}")
        _child(ROOT, dict(kind="write-claim", path=path, what=what, bytes=size))
        r = _child(tree, dict(kind="open", path=path, trace=True))
        print(f"{what} claiming {size >> 20:,} MiB: {r['seconds'] * 1e3:.1f} ms, "
              f"{r['alloc'] / 1024:.0f} KiB allocated: {r['outcome'][:110]}")
        os.unlink(path)
    path = os.path.join(work, "big4.elf")
    _child(ROOT, dict(kind="write-big", path=path))
    r = _child(tree, dict(kind="reads", path=path, repeat=args.repeat))
    print(f"4 GiB dump: walk {r['walk_s']:.3f} s, {r['read_us']:.2f} us per 4 KiB read")
    os.unlink(path)


if __name__ == "__main__":
    main()
