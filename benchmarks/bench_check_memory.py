"""xen-pte-check's memory over a space where every leaf is a finding (issue 19).

Run:  python3 benchmarks/bench_check_memory.py [--gib 4] [--examples 10]

A 4-level space of GIB GiB in 4 KiB leaves whose flags alternate page by page between W+X and
read-only, so no two neighbours coalesce and every other leaf is a W+X finding (2 GiB: 524,288
findings in 1,048,576 records). The engine's check (:func:`gdb_xenpte.findings.group`, what the
command calls) runs over the walk; printed: records, findings counted, examples kept, seconds and
the peak of Python allocations (tracemalloc) during the check — which must not grow with the
number of findings.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gdb_xenpte.arch import CR4, EFER  # noqa: E402
from gdb_xenpte.findings import group  # noqa: E402
from gdb_xenpte.session import Options, prepare  # noqa: E402
from gdb_xenpte.sources.base import VcpuRegs  # noqa: E402
from gdb_xenpte.sources.memory import MemorySource  # noqa: E402
from synthetic import A, KERNEL_FLAGS, NX, P, RW, SpaceBuilder  # noqa: E402


def space(gib: int):
    sb = SpaceBuilder()
    pt_flags = (KERNEL_FLAGS, KERNEL_FLAGS & ~RW | NX)  # W+X, then R-only NX: never coalesce
    pdpt = []
    for g in range(gib):
        pds = []
        for j in range(512):
            first = (g << 30) + (j << 21)
            raw = struct.pack("<512Q", *((first + i * 4096) | pt_flags[i & 1]
                                         for i in range(512)))
            addr = sb.next
            sb.next += 4096
            sb.pages[addr] = raw
            pds.append((j, addr | P | RW | A))
        pdpt.append((g, sb.table(pds) | P | RW | A))
    cr3 = sb.table([(273, sb.table(pdpt) | P | RW | A)])
    return sb.pages, cr3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gib", type=int, default=4)
    ap.add_argument("--examples", type=int, default=10)
    args = ap.parse_args(argv)
    pages, cr3 = space(args.gib)
    regs = VcpuRegs(0, cr0=0x80050033, cr3=cr3, cr4=CR4.PAE | CR4.PGE,
                    efer=EFER.LME | EFER.LMA | EFER.NXE)
    s = prepare(MemorySource(pages, "synthetic", vcpus=[regs]), Options())
    tracemalloc.start()
    start = time.perf_counter()
    records = [0]

    def counted(it):
        for m in it:
            records[0] += 1
            yield m

    groups = group(counted(s.walker().iter_mappings()), s.domain, s.xen_view, args.examples)
    seconds = time.perf_counter() - start
    _cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    for g in groups:
        print(f"{args.gib} GiB: {records[0]:,} records; [{g.key}] {g.ranges:,} findings, "
              f"{g.pages:,} pages, {len(g.examples)} examples kept; {seconds:.1f} s; "
              f"peak Python allocations during the check {peak / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
