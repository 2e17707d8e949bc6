"""Cluster benchmark: xen-pte-dump over a generated fleet on the local process pool and on a Dask
LocalCluster, the per-target overhead of each, and a 1,000-dump run's memory.

Run:  python3 benchmarks/bench_cluster.py [--targets 200] [--pages 200] [--fleet 1000]

Prints four tables (same machine, same run, same dumps; the real ``python3 -m
scripts.xen_pte_dump`` each time):

1. ``--targets`` QEMU ELF dumps of ``--pages`` user pages each, walked with ``--no-coalesce``:
   local pool ``-j 2`` vs ``--scheduler`` on a ``LocalCluster`` of 2 worker processes × 1 thread
   (the same parallelism), and that cluster with Dask's worker profiler off; wall time and per
   target, and on the cluster the CPU the client (xen-pte-dump) and the scheduler spend per
   target: the serial part that no number of workers divides.
2. Scaling on the cluster: 1 and 2 workers × N/4, N/2 and N targets; a least-squares fit
   ``wall = a + b·N/W`` (a: fixed cost — tool start, connect, first gdb per worker; b: the cost
   of one target on one worker).
3. Per-target overhead: a no-op Dask task's round trip (submit -> result) on the running cluster,
   the task's own walk time on a worker (its gdb kept), and the whole tool divided by N.
4. ``--fleet`` one-page dumps with ``--summary --progress`` on the cluster and on the pool:
   wall, and the tool's peak RSS (sampled every 50 ms with psutil; the pool's worker and gdb
   processes are not counted, the client is what must stay bounded).

Timings are noisy on a shared 2-core machine; compare within one run.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE, os.path.join(ROOT, "tests"), os.path.join(ROOT, "tests", "sources")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from tabulate import tabulate  # noqa: E402

from bench_batch import make_dump  # noqa: E402


def run_tool(*args: str) -> tuple:
    """Run xen-pte-dump to completion; return (wall s, peak RSS MiB of the tool process,
    CPU s of the tool process alone, CPU s of this process meanwhile — a LocalCluster's
    scheduler runs here)."""
    import psutil
    me = psutil.Process()
    mine = sum(me.cpu_times()[:2])
    t = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "scripts.xen_pte_dump", *args], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    peak, cpu = 0, 0.0
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
            cpu = sum(ps.cpu_times()[:2])
        except psutil.Error:
            pass
        time.sleep(0.05)
    wall = time.monotonic() - t
    if proc.returncode != 0:
        raise SystemExit(f"xen-pte-dump {' '.join(args[:6])} ... exited {proc.returncode}")
    return wall, peak / (1 << 20), cpu, sum(me.cpu_times()[:2]) - mine


def cluster(workers: int, profile: bool = True):
    """A LocalCluster of ``workers`` processes × 1 thread (``profile``: Dask's default statistical
    profiler in each worker, sampling every thread's stack every 10 ms)."""
    import dask
    from distributed import LocalCluster
    with dask.config.set({"distributed.worker.profile.enabled": profile}):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                            dashboard_address=":0", silence_logs=logging.ERROR)


def dumps(tmp: str, n: int, pages: int, tag: str) -> list:
    out = []
    for i in range(n):
        out.append(os.path.join(tmp, f"{tag}{i:04d}.elf"))
        make_dump(out[-1], pages, seed=i % 64)
    return out


def bench_pool_vs_cluster(tmp: str, fleet: list) -> list:
    out = os.path.join(tmp, "out.jsonl")
    args = ["--core", *fleet, "--no-coalesce", "-o", out, "--quiet"]
    n = len(fleet)
    wall, _rss, _cpu, _sched = run_tool(*args, "-j", "2")
    rows = [["local pool -j 2", f"{wall:.2f}", f"{wall / n * 1000:.0f}", "-", "-"]]
    for name, profile in (("LocalCluster 2 workers x 1 thread", True),
                          ("LocalCluster 2 x 1, worker profiler off", False)):
        with cluster(2, profile) as c:
            wall, _rss, cpu, sched = run_tool(*args, "--scheduler", c.scheduler_address)
        rows.append([name, f"{wall:.2f}", f"{wall / n * 1000:.0f}", f"{cpu / n * 1000:.1f}",
                     f"{sched / n * 1000:.1f}"])
    return rows


def bench_scaling(tmp: str, fleet: list) -> tuple:
    import numpy as np
    out = os.path.join(tmp, "out.jsonl")
    sizes = sorted({max(1, len(fleet) // 4), len(fleet) // 2, len(fleet)})
    rows, points = [], []
    for workers in (1, 2):
        with cluster(workers) as c:
            for n in sizes:
                wall, *_rest = run_tool("--core", *fleet[:n], "--no-coalesce", "-o", out,
                                        "--quiet", "--scheduler", c.scheduler_address)
                rows.append([workers, n, f"{wall:.2f}", f"{wall / n * 1000:.0f}"])
                points.append((n / workers, wall))
    x = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points])
    b, a = np.polyfit(x, y, 1)
    return rows, a, b


def bench_overhead(tmp: str, fleet: list) -> list:
    from distributed import Client

    from scripts.batch import Job, Target
    from scripts.cluster import run_task
    one = os.path.join(tmp, "overhead-one.elf")
    make_dump(one, 1)
    rows = []
    with cluster(1) as c, Client(c.scheduler_address) as client:
        trips = []
        for i in range(30):
            t = time.monotonic()
            client.submit(int, i, pure=False).result()
            trips.append(time.monotonic() - t)
        trips.sort()
        rows.append(["no-op Dask task round trip", f"{trips[0] * 1000:.1f}",
                     f"{trips[len(trips) // 2] * 1000:.1f}"])
        walks = []
        for i in range(12):
            job = Job(Target("core", one), "xen-pte-walk", (), None, "", i)
            t = time.monotonic()
            res = client.submit(run_task, job, pure=False).result()
            walks.append(time.monotonic() - t)
            assert not res.failed
        first, rest = walks[0], sorted(walks[1:])
        rows.append(["run_task, 1-page dump, first on the worker (gdb start)",
                     f"{first * 1000:.0f}", "-"])
        rows.append(["run_task, 1-page dump, gdb kept", f"{rest[0] * 1000:.0f}",
                     f"{rest[len(rest) // 2] * 1000:.0f}"])
    return rows


def bench_fleet(tmp: str, n: int) -> list:
    ones = dumps(tmp, n, 1, "one")
    out = os.path.join(tmp, "fleet-out")
    os.makedirs(out, exist_ok=True)
    rows = []
    args = ["--core", *ones, "--summary", "--progress", "-o", out + "/"]
    with cluster(2) as c:
        wall, rss, *_rest = run_tool(*args, "--scheduler", c.scheduler_address)
        rows.append([f"{n} one-page dumps, LocalCluster 2x1, -o DIR/ --summary", f"{wall:.1f}",
                     f"{wall / n * 1000:.0f}", f"{rss:.0f}"])
        wall, rss, *_rest = run_tool("--core", *ones[:n // 10], "--summary", "-o", out + "/",
                                     "--scheduler", c.scheduler_address)
        rows.append([f"{n // 10} one-page dumps, LocalCluster 2x1 (memory baseline)",
                     f"{wall:.1f}", f"{wall / (n // 10) * 1000:.0f}", f"{rss:.0f}"])
    wall, rss, *_rest = run_tool(*args, "-j", "2")
    rows.append([f"{n} one-page dumps, local pool -j 2, -o DIR/ --summary", f"{wall:.1f}",
                 f"{wall / n * 1000:.0f}", f"{rss:.0f}"])
    wall, rss, *_rest = run_tool("--core", *ones[:n // 10], "--summary", "-o", out + "/",
                         "-j", "2")
    rows.append([f"{n // 10} one-page dumps, local pool -j 2 (memory baseline)", f"{wall:.1f}",
                 f"{wall / (n // 10) * 1000:.0f}", f"{rss:.0f}"])
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=int, default=200)
    ap.add_argument("--pages", type=int, default=200)
    ap.add_argument("--fleet", type=int, default=1000)
    args = ap.parse_args()
    os.environ.pop("DASK_SCHEDULER_ADDRESS", None)
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load {load:.2f}, {when}")
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        fleet = dumps(tmp, args.targets, args.pages, "d")
        print(f"\n1. {args.targets} dumps x {args.pages} pages (--no-coalesce)")
        print(tabulate(bench_pool_vs_cluster(tmp, fleet),
                       headers=["where", "wall s", "ms/target", "client CPU ms/target",
                                "scheduler CPU ms/target"], tablefmt="github"))
        rows, a, b = bench_scaling(tmp, fleet)
        print(f"\n2. Scaling on the cluster (wall = {a:.2f} s + {b * 1000:.0f} ms x N/W)")
        print(tabulate(rows, headers=["workers", "targets", "wall s", "ms/target"],
                       tablefmt="github"))
        print("\n3. Per-target overhead on the cluster")
        print(tabulate(bench_overhead(tmp, fleet), headers=["what", "best ms", "median ms"],
                       tablefmt="github"))
        print(f"\n4. {args.fleet} one-page dumps")
        print(tabulate(bench_fleet(tmp, args.fleet),
                       headers=["run", "wall s", "ms/target", "tool peak RSS MiB"],
                       tablefmt="github"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
