"""Two checkouts side by side on one dump: gdb start-up, a whole walk in gdb (numpy and pure
Python), and xen-pte-dump on vCPU 0 and with ``--vcpu all``, run alternately (best / median of 3).

Run (from the repository root; OLD is ``git archive REV | tar -x -C OLD``, DUMP e.g. the 4 GiB
64-CR3 dump of bench_dump.py: ``python3 -c "import sys; sys.path[:0] = ['benchmarks',
'tests/sources']; import bench_dump; bench_dump.make_dump('/tmp/big4.elf', 4)"``)::

    python3 benchmarks/bench_before_after.py OLD . DUMP
"""

import os
import statistics
import subprocess
import sys
import time

import tabulate

DEPS = os.path.dirname(os.path.dirname(tabulate.__file__))  # tabulate for gdb's Python


def _gdb(root: str, pure: bool, *commands: str) -> float:
    pre = f"import sys; sys.path[:0] = [{root!r}, {DEPS!r}]"
    if pure:
        pre += "; sys.modules['numpy'] = None"
    argv = ["gdb", "-nx", "-batch", "-iex", f"python {pre}",
            "-ex", f"source {root}/gdb_xenpte/gdb_load.py"]
    for c in commands:
        argv += ["-ex", c]
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def _dump_tool(root: str, dump: str, every_vcpu: bool) -> float:
    out = f"/tmp/before-after-{os.getpid()}.jsonl"
    argv = [sys.executable, "-m", "scripts.xen_pte_dump", "--core", dump, "--quiet", "-o", out]
    if every_vcpu:
        argv += ["--vcpu", "all", "-j", "1"]
    start = time.perf_counter()
    subprocess.run(argv, cwd=root, check=True, stdout=subprocess.DEVNULL)
    took = time.perf_counter() - start
    os.unlink(out)
    return took


def main(old: str, new: str, dump: str) -> None:
    walk = f"xen-pte-walk --core {dump} --json"
    cases = (("gdb -batch start-up + load", lambda r: _gdb(r, False)),
             ("gdb walk --json, numpy", lambda r: _gdb(r, False, walk)),
             ("gdb walk --json, pure Python", lambda r: _gdb(r, True, walk)),
             ("gdb start-up + load, pure Python", lambda r: _gdb(r, True)),
             ("xen-pte-dump, vCPU 0", lambda r: _dump_tool(r, dump, False)),
             ("xen-pte-dump --vcpu all -j 1", lambda r: _dump_tool(r, dump, True)))
    rows = []
    for label, run in cases:
        times = {old: [], new: []}
        for _ in range(3):
            for root in (old, new):
                times[root].append(run(root))
        rows.append([label] + [f"{min(times[r]):.2f} / {statistics.median(times[r]):.2f}"
                               for r in (old, new)])
        print(rows[-1], f"load {os.getloadavg()[0]:.2f}", flush=True)
    print(tabulate.tabulate(rows, headers=["wall s (best / median of 3)", "before", "after"],
                            tablefmt="github"))


if __name__ == "__main__":
    main(*sys.argv[1:4])
