"""Engine benchmark: full walks of a synthetic 4-level space of >= 1,048,576 present 4 KiB leaves.

Run:  python3 benchmarks/bench_engine.py [--gib 4] [--repeat 3]

Prints leaf entries/s for a full walk (coalesced, no verdicts), a full walk with verdicts, an
uncoalesced walk that materialises one record per leaf, and the same with a filter that matches
nothing (``keep=``: refused runs never become records), with and without numpy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tabulate import tabulate  # noqa: E402

import gdb_xenpte.decode as decode_mod  # noqa: E402
import gdb_xenpte.walk as walk_mod  # noqa: E402
from gdb_xenpte.arch import CR4, EFER  # noqa: E402
from gdb_xenpte.cpu import CpuState  # noqa: E402
from gdb_xenpte.sources.memory import MemorySource  # noqa: E402
from gdb_xenpte.verdicts import Judge  # noqa: E402
from gdb_xenpte.walk import Walker  # noqa: E402
from synthetic import big_space  # noqa: E402


def run(pages, cr3, judge: bool, coalesce: bool, repeat: int, keep=None):
    cpu = CpuState(cr3=cr3, cr4=CR4.PAE | CR4.SMEP | CR4.SMAP, efer=EFER.LMA | EFER.LME | EFER.NXE,
                   ac=0)
    times, leaves, records = [], 0, 0
    for _ in range(repeat):
        src = MemorySource(pages)
        w = Walker(src, cpu, judge=Judge(cpu.cr0, cpu.cr4, 0, ac=0) if judge else None)
        t0 = time.perf_counter()
        records = sum(1 for _ in w.iter_mappings(coalesce=coalesce, keep=keep))
        times.append(time.perf_counter() - t0)
        leaves = w.stats.leaves
        assert w.stats.tables_read == src.reads
    best = statistics.median(times)
    return best, leaves, records


def _NO_KEY_7(m) -> bool:  # like --pkey 7 on a guest without keys: nothing matches
    return m.pkey == 7


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=int, default=4, help="GiB of 4 KiB leaves (262,144 each)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (median reported)")
    args = ap.parse_args(argv)
    pages, cr3s, _ = big_space(args.gib)
    rows = []
    backends = [("numpy", decode_mod.np)] if decode_mod.np is not None else []
    backends.append(("pure Python", None))
    saved = decode_mod.np
    for name, np_mod in backends:
        decode_mod.np = walk_mod.np = np_mod
        for label, judge, coalesce, keep in (
                ("full walk, coalesced", False, True, None),
                ("full walk + verdicts", True, True, None),
                ("per-leaf records + verdicts", True, False, None),
                ("per-leaf + a filter matching nothing", True, False, _NO_KEY_7)):
            if name == "pure Python" and not coalesce:
                continue
            secs, leaves, records = run(pages, cr3s[0], judge, coalesce, args.repeat, keep)
            rows.append((name, label, f"{leaves:,}", f"{records:,}", f"{secs:.3f}",
                         f"{leaves / secs / 1e6:.2f}"))
    decode_mod.np = walk_mod.np = saved
    print(f"synthetic 4-level space: {args.gib} GiB of 4 KiB leaves + 64 x 2 MiB + 4 x 1 GiB; "
          f"{len(pages)} table pages; median of {args.repeat}")
    print(tabulate(rows, headers=("decoder", "walk", "leaves", "records", "seconds",
                                  "M leaves/s")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
