"""A live Xen host under QEMU's gdbstub: the crashed-host target's machine, left running.

The same pieces as :mod:`tests.targets.xen_crash` (imported, not copied): Xen 4.17 rebuilt with
``CONFIG_PV32`` and DWARF (:func:`tests.pv32.xen_pv32.xen_build`), on two pCPUs; Debian's Linux as
64-bit PV dom0 (one vCPU pinned to pCPU 0) whose ``/init`` is ``xencrash/dom0-init.sh`` in
``MODE=live``: it brings up the toolstack, creates the same two 64-bit PV domUs pinned to pCPU 1 —
``xenpte-paused`` (left paused) and ``xenpte-running`` (spinning in user mode in its marker
process, ``xencrash/marker.c``) — records ``xenctx -a``, ``xen-mfndump dump-p2m``, ``xl debug-keys
d`` and ``q`` onto the only virtio disk, prints ``XENPTE-XENLIVE-READY`` and idles. No crash kernel
(no ``crashkernel=``, no ``kexec -p``) and no ``xl dump-core``.

:func:`boot_live_host` yields a :class:`XenLiveHost`: the running QEMU (its gdbstub), the path of
``xen-syms``, and per domU what Xen's tools said before gdb stopped anything (domid, xenctx's
CR3, the marker's VA, PFN and machine frame from the p2m). QEMU is killed on exit.

Cached (tests/targets/cachedir.py ``xenlive/<key>/``, ``<key>`` a hash of the crash target's
inputs — :func:`tests.targets.xen_crash._inputs`: Xen build, package versions, scripts — and
:data:`FORMAT`): dom0's initramfs, and in ``machine-<hash of QEMU's arguments and version>/`` the
booted machine itself, saved once dom0 is ready: QEMU's migration stream (``state``, what
``migrate "exec:cat > FILE"`` writes), the disk and the records. A later run starts QEMU with
``-incoming`` from it: the same host (same domids, page tables, records) running again, without
the boot. Measured here at load 2-6 (another QEMU running): a boot 63-85 s to dom0's ready
line, saving the machine 3 s (a 273 MB stream), a restore 1.5-1.7 s.

Run ``python3 -m tests.targets.xen_live [--boot]`` from the repository root to start the host
(from the cache; ``--boot``: boot it, cache untouched), print its records and times, and stop it.

Failure modes: as :mod:`tests.targets.xen_crash` (TargetSetupError, QemuSetupError, QemuError
carrying the serial log's tail when dom0 reports ``XENPTE-XENCRASH-FAILED`` or times out).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List

from . import xen_crash, xl_dumpcore
from .cachedir import cache_root
from .qemu import QEMU_BINARY, Qemu, QemuError
from .xen import XEN_CPU_MODEL, XenGuest, xen_qemu_args

__all__ = ["READY", "XenLiveHost", "boot_live_host", "dom0_initramfs"]

READY = "XENPTE-XENLIVE-READY"
MACHINE_MEMORY = "1024M"   # no crash region to reserve: smaller than the crash target's
DOM0_MEMORY = "384M"
XEN_ARGS = ("dom0_max_vcpus=1", "dom0_vcpus_pin", "conring_size=1m")
FORMAT = 3
KEEP_ENTRIES = 2


@dataclass
class XenLiveHost:
    """A running Xen host and what Xen's own tools said about it before it was stopped.

    :param guest: the booted machine (``guest.vm.gdb_port``, ``guest.vm.monitor``).
    :param xen_syms: the running Xen's xen-syms (DWARF).
    :param domains: per domU ``{"tag", "name", "state", "domid", "cr3" (xenctx), "xenctx",
        "pcpu" (debug-key q), "marker": {"va", "pfn", "mfn", "mfn_from"}}``.
    :param key_d: ``xl debug-keys d`` records (:func:`xen_crash.parse_debug_key_d`).
    :param key_q: ``xl debug-keys q`` (:func:`xen_crash.parse_debug_key_q`).
    """

    guest: XenGuest
    workdir: Path
    xen_syms: Path
    domains: List[Dict[str, object]]
    key_d: List[Dict[str, object]]
    key_q: Dict[int, Dict[str, object]]
    seconds: Dict[str, float] = field(default_factory=dict)
    restored_from: str = ""  # the cached migration stream it was started from, if any


def _initramfs_key() -> str:
    return xen_crash.cache_key({"format": FORMAT, "crash_target": xen_crash._inputs(False)})


def dom0_initramfs(key: str) -> Path:
    """Return dom0's live-mode initramfs (cached under ``key``), building it if missing."""
    folder = cache_root("xenlive") / key
    path = folder / "dom0-initramfs.cpio"
    if path.is_file():
        return path
    work = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    built = xen_crash.build_dom0_initramfs(work, pvh=False, live=True)
    folder.mkdir(exist_ok=True)
    os.replace(built, path)
    shutil.rmtree(work, ignore_errors=True)
    return path


def _records(out: Path) -> tuple:
    read = lambda name: (out / name).read_text(errors="replace") if (out / name).is_file() else ""
    keys = read("xl-debug-keys.txt")
    key_q = xen_crash.parse_debug_key_q(keys)
    domains = []
    for tag, name, state, _kind in xen_crash.domains(False):
        domid = int(read(f"{tag}-domid"))
        ctx = xl_dumpcore.parse_xenctx(read(f"{tag}-xenctx.txt"))
        p2m = xen_crash.parse_p2m(read(f"{tag}-p2m.txt"))
        va, pfn = xen_crash.parse_marker_line(read(f"{tag}-console.log"), tag,
                                              str(out / f"{tag}-console.log"))
        if pfn not in p2m:
            raise QemuError(f"{name}'s marker PFN {pfn:#x} is not in xen-mfndump's p2m")
        vcpu0 = key_q.get(domid, {}).get("vcpus", {}).get(0, {})
        domains.append({"tag": tag, "name": name, "state": state, "domid": domid,
                        "cr3": ctx.get("cr3"), "xenctx": ctx, "pcpu": vcpu0.get("pcpu"),
                        "marker": {"va": va, "pfn": pfn, "mfn": p2m[pfn]["mfn"],
                                   "mfn_from": "xen-mfndump dump-p2m"}})
    return domains, xen_crash.parse_debug_key_d(keys), key_q


def _resume_incoming(vm, timeout: float) -> None:
    """Wait for the incoming migration to finish, then run the machine (it was saved stopped,
    so QEMU leaves it paused)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        status = vm.monitor("info status")
        if "inmigrate" not in status:
            if "paused" in status:
                vm.monitor("cont")
            if "running" in vm.monitor("info status"):
                return
        time.sleep(0.2)
    raise QemuError(f"QEMU did not run after its incoming migration within {timeout:.0f} s: "
                    f"{vm.monitor('info status')!r}; {vm.monitor('info migrate')[-500:]!r}")


def _save(vm, folder: Path, results: Path, records: Dict[str, object]) -> float:
    """Write the stopped machine's migration stream, its disk and the records into ``folder``
    (each under a temporary name, then renamed); the machine runs on. Returns the seconds."""
    t0 = time.monotonic()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = f".tmp{os.getpid()}"
    vm.monitor("stop")
    try:
        vm.monitor(f'migrate "exec:cat > {folder / ("state" + tmp)}"', timeout=300)
        status = vm.monitor("info migrate")
        if "Migration status: completed" not in status:
            raise QemuError(f"migration to the cache failed: {status[-800:]}")
        shutil.copyfile(results, folder / ("results.disk" + tmp))
        (folder / ("records.json" + tmp)).write_text(json.dumps(records))
        for name in ("results.disk", "records.json", "state"):  # state last: it marks complete
            os.replace(folder / (name + tmp), folder / name)
        _prune(folder)
    finally:
        vm.monitor("cont")
    return time.monotonic() - t0


def _prune(keep: Path) -> None:
    """Keep the ``KEEP_ENTRIES`` newest key folders (``keep``'s among them): other keys are other
    branches or script versions, each ~400 MB with its saved machine."""
    folders = sorted((d for d in cache_root("xenlive").iterdir() if d.is_dir()),
                     key=lambda d: d.stat().st_mtime, reverse=True)
    for stale in [d for d in folders if d != keep.parent][KEEP_ENTRIES - 1:]:
        shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def boot_live_host(workdir: Path, timeout: float = 600.0,
                   cached: bool = True) -> Iterator[XenLiveHost]:
    """Yield the running host once dom0 has recorded its domUs; QEMU is killed on exit.

    A first run boots it (~60-90 s here) and saves the machine as it was then (QEMU's migration
    stream, ~1-5 s more) with its disk and records in the cache; later runs start QEMU from that
    stream (``-incoming``): the same host, domids, page tables and records, in seconds.

    :param cached: use (and fill) the cache; False always boots.
    """
    from tests.pv32 import xen_pv32

    started = time.monotonic()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    build = xen_pv32.xen_build()
    key = _initramfs_key()
    initramfs = dom0_initramfs(key)
    results = workdir / "results.disk"
    drive = "format=raw,if=virtio,cache=unsafe"
    extra = ["-smp", str(xen_crash.PCPUS), "-drive", f"file={results},{drive}"]
    args, guest = xen_qemu_args(initramfs, dom0_mem=DOM0_MEMORY, extra_args=extra,
                                xen_args=XEN_ARGS, xen=build.elf)
    version = subprocess.run([QEMU_BINARY, "--version"], capture_output=True,
                             text=True).stdout.splitlines()[:1]
    machine = [a if a != f"file={results},{drive}" else f"file=RESULTS,{drive}" for a in args]
    snap = cache_root("xenlive") / key / ("machine-" + xen_crash.cache_key(
        {"args": machine, "memory": MACHINE_MEMORY, "cpu": XEN_CPU_MODEL, "qemu": version}))
    seconds = {"images": time.monotonic() - started}
    if cached and (snap / "state").is_file():
        shutil.copyfile(snap / "results.disk", results)
        with Qemu([*args, "-incoming", f"exec:cat {snap / 'state'}"], memory=MACHINE_MEMORY,
                  cpu=XEN_CPU_MODEL, workdir=workdir) as vm:
            _resume_incoming(vm, timeout=120)
            seconds["qemu_restored"] = vm.seconds_since_start()
            guest.vm = vm
            rec = json.loads((snap / "records.json").read_text())
            key_q = {int(k): {**v, "vcpus": {int(i): x for i, x in v["vcpus"].items()}}
                     for k, v in rec["key_q"].items()}
            yield XenLiveHost(guest, workdir, build.syms, rec["domains"], rec["key_d"], key_q,
                              seconds, restored_from=str(snap / "state"))
        return
    with open(results, "wb") as f:
        f.truncate(64 << 20)
    with Qemu(args, memory=MACHINE_MEMORY, cpu=XEN_CPU_MODEL, workdir=workdir) as vm:
        vm.wait_for_serial(f"{READY}|{xen_crash.FAILED}", timeout=timeout)
        serial = vm.serial_text()
        if re.search(xen_crash.FAILED, serial):
            time.sleep(3)  # the failing script prints its logs after the line
            raise QemuError(f"the live Xen host failed; serial log tail: "
                            f"{vm.serial_text()[-5000:]}")
        seconds["qemu_to_ready"] = vm.seconds_since_start()
        guest.vm, guest.boot_seconds = vm, seconds["qemu_to_ready"]
        # dom0 synced the tar before printing READY: QEMU has written it to the host file
        xen_crash._unpack_tar(results, workdir / "out")
        domains, key_d, key_q = _records(workdir / "out")
        if cached:
            seconds["saved_to_cache"] = _save(vm, snap, results, {
                "domains": domains, "key_d": key_d, "key_q": key_q})
        yield XenLiveHost(guest, workdir, build.syms, domains, key_d, key_q, seconds)


if __name__ == "__main__":
    import sys
    import tempfile

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="xenlive-") as tmp:
        with boot_live_host(Path(tmp), cached="--boot" not in sys.argv) as host:
            print(json.dumps({"domains": host.domains, "seconds": host.seconds,
                              "restored_from": host.restored_from,
                              "total": round(time.monotonic() - t0, 1)}, indent=1, default=str))
