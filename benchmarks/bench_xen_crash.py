"""Xen host crash dump benchmark (issue 16): our readers against libkdumpfile on the real files.

Run:  python3 benchmarks/bench_xen_crash.py MANIFEST [--reads 20000] [--repeat 3]

MANIFEST is the xen_crash target's manifest.json (tests/targets/xen_crash.py; path listed in
/work/wt/xencrash-artefacts.txt on the team machine). For the ELF vmcore and its makedumpfile
copy, printed as medians of ``--repeat`` runs:

1. open time, and ``--reads`` random 8-byte reads at machine addresses below 1.25 GiB (the same
   addresses, seeded), for our reader (:func:`gdb_xenpte.sources.open.open_dump`) and for
   libkdumpfile (Debian ``python3-libkdumpfile``, importable only by /usr/bin/python3, so it runs
   in a child process); how many succeeded; whether every address both read gives equal bytes;
2. what each reader says about the CPUs: our per-pCPU CR0/CR3/CR4 (CRASH_REGS) against the
   ``cpu.N.reg.*`` attributes libkdumpfile exposes, and the Xen facts (version, xen_phys_start);
3. ``xen-domains`` data (our engine with xen-syms): time to list every domain and vCPU.

libkdumpfile reads are run one address per child-process chunk of 1000 so that a crash in the
library (seen: SIGSEGV on the makedumpfile copy) is reported, not fatal to the benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

LIBKDUMPFILE_CHILD = r"""
import json, sys, time
import kdumpfile
path, addrs = sys.argv[1], json.loads(sys.stdin.read())
t = time.perf_counter()
k = kdumpfile.kdumpfile(path)
opened = time.perf_counter() - t
out, errors = {}, {}
t = time.perf_counter()
for a in addrs:
    try:
        out[a] = k.read(kdumpfile.KDUMP_MACHPHYSADDR, a, 8).hex()
    except Exception as e:
        key = type(e).__name__ + ": " + str(e)[:40]
        errors[key] = errors.get(key, 0) + 1
took = time.perf_counter() - t
attrs = {}
def walk(a, prefix=""):
    for key in a.keys():
        try:
            v = a[key]
        except Exception:
            continue
        if hasattr(v, "keys"):
            walk(v, prefix + key + ".")
        elif isinstance(v, (int, str)):
            attrs[prefix + key] = v
walk(k.attr)
print(json.dumps({"open": opened, "reads": took, "data": out, "errors": errors, "attrs": attrs}))
"""


def _addresses(n: int) -> list:
    rnd = random.Random(1)
    return [rnd.randrange(0, 0x50000000 >> 12) << 12 | rnd.randrange(0, 4088) for _ in range(n)]


def ours(path: str, addrs: list) -> dict:
    from gdb_xenpte.errors import UnreadableMemory
    from gdb_xenpte.sources.open import open_dump
    t = time.perf_counter()
    src = open_dump(path)
    opened = time.perf_counter() - t
    out, errors = {}, 0
    t = time.perf_counter()
    for a in addrs:
        try:
            out[a] = src.read(a, 8).hex()
        except UnreadableMemory:
            errors += 1
    took = time.perf_counter() - t
    cpus = [(r.index, r.cr0, r.cr3, r.cr4) for r in src.vcpus()]
    info = src.host.info
    src.close()
    return {"open": opened, "reads": took, "data": out, "errors": errors, "cpus": cpus,
            "version": (info.major, info.minor), "phys_start": info.xen_phys_start}


def libkdumpfile(path: str, addrs: list) -> dict:
    merged = {"open": 0.0, "reads": 0.0, "data": {}, "errors": {}, "attrs": {}, "crashes": 0}
    for i in range(0, len(addrs), 1000):
        proc = subprocess.run(["/usr/bin/python3", "-c", LIBKDUMPFILE_CHILD, path],
                              input=json.dumps(addrs[i:i + 1000]), capture_output=True, text=True)
        if proc.returncode != 0:
            merged["crashes"] += 1
            merged["errors"][f"child exit {proc.returncode}"] = \
                merged["errors"].get(f"child exit {proc.returncode}", 0) + 1
            continue
        res = json.loads(proc.stdout)
        merged["open"] = max(merged["open"], res["open"])
        merged["reads"] += res["reads"]
        merged["data"].update({int(k): v for k, v in res["data"].items()})
        for k, v in res["errors"].items():
            merged["errors"][k] = merged["errors"].get(k, 0) + v
        merged["attrs"] = res["attrs"]
    return merged


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("manifest")
    ap.add_argument("--reads", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    m = json.load(open(args.manifest))
    base = os.path.dirname(os.path.abspath(args.manifest))
    addrs = _addresses(args.reads)
    for key in ("vmcore_elf", "vmcore_kdump"):
        path = os.path.join(base, os.path.basename(m[key]))
        runs = [ours(path, addrs) for _ in range(args.repeat)]
        o = runs[0]
        lk = libkdumpfile(path, addrs)
        both = set(o["data"]) & set(lk["data"])
        equal = all(o["data"][a] == lk["data"][a] for a in both)
        print(f"{os.path.basename(path)} ({os.path.getsize(path) / 2**20:.0f} MiB)")
        print(f"  ours:         open {statistics.median(r['open'] for r in runs) * 1e3:.1f} ms, "
              f"{len(addrs)} reads {statistics.median(r['reads'] for r in runs):.3f} s, "
              f"{len(addrs) - o['errors']} ok, {o['errors']} not in dump")
        lk_ok = sum(1 for a in addrs if a in lk["data"])
        print(f"  libkdumpfile: open {lk['open'] * 1e3:.1f} ms, reads {lk['reads']:.3f} s "
              f"(chunks that completed), {lk_ok} ok; errors {lk['errors']}")
        print(f"  bytes equal on the {len(both)} addresses both read: {equal}")
        lk_cpus = sorted({k.split('.')[1] for k in lk["attrs"] if k.startswith("cpu.")
                          and k.split(".")[1].isdigit()})
        lk_cr = [k for k in lk["attrs"] if k.startswith("cpu.") and ".cr" in k]
        print(f"  CPUs: ours {[(i, hex(c3), hex(c4)) for i, _c0, c3, c4 in o['cpus']]}; "
              f"libkdumpfile cpu.N: {lk_cpus}, control registers: {lk_cr or 'none'}")
        print(f"  Xen: ours {o['version']} phys_start {o['phys_start']:#x}; libkdumpfile "
              f"xen.version {lk['attrs'].get('xen.version.major')}."
              f"{lk['attrs'].get('xen.version.minor')} xen.phys_start "
              f"{lk['attrs'].get('xen.phys_start', 'absent')}")
        from gdb_xenpte.sources.open import open_dump
        from gdb_xenpte.xen_host import open_host
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            with open_dump(path) as src:
                host = open_host(src, os.path.join(base, "xen-syms"))
                n = sum(len(d.vcpus) for d in host.domains())
                host.layout.close()
            times.append(time.perf_counter() - t)
        print(f"  xen-domains engine (xen-syms DWARF + domain list): "
              f"{statistics.median(times):.2f} s, {n} vCPUs")


if __name__ == "__main__":
    main()
