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

Cached (tests/targets/cachedir.py ``xenlive/<key>/``): dom0's initramfs, keyed by the crash
target's inputs (:func:`tests.targets.xen_crash._inputs`: Xen build, package versions, scripts).
The boot itself is not cacheable; measured in the module's ``__main__``.

Failure modes: as :mod:`tests.targets.xen_crash` (TargetSetupError, QemuSetupError, QemuError
carrying the serial log's tail when dom0 reports ``XENPTE-XENCRASH-FAILED`` or times out).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List

from . import xen_crash, xl_dumpcore
from .cachedir import cache_root
from .qemu import QemuError
from .xen import XenGuest, boot_xen

__all__ = ["READY", "XenLiveHost", "boot_live_host", "dom0_initramfs"]

READY = "XENPTE-XENLIVE-READY"
MACHINE_MEMORY = "1024M"   # no crash region to reserve: smaller than the crash target's
DOM0_MEMORY = "384M"
XEN_ARGS = ("dom0_max_vcpus=1", "dom0_vcpus_pin", "conring_size=1m")
FORMAT = 3


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


def dom0_initramfs() -> Path:
    """Return dom0's live-mode initramfs, building it once per set of inputs."""
    inputs = {"format": FORMAT, "crash_target": xen_crash._inputs(False)}
    folder = cache_root("xenlive") / xen_crash.cache_key(inputs)
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


@contextmanager
def boot_live_host(workdir: Path, timeout: float = 600.0) -> Iterator[XenLiveHost]:
    """Boot the host and yield once dom0 has recorded its domUs; QEMU is killed on exit."""
    from tests.pv32 import xen_pv32

    started = time.monotonic()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    build = xen_pv32.xen_build()
    initramfs = dom0_initramfs()
    results = workdir / "results.disk"
    with open(results, "wb") as f:
        f.truncate(64 << 20)
    seconds = {"images": time.monotonic() - started}
    drive = "format=raw,if=virtio,cache=unsafe"
    with boot_xen(workdir, memory=MACHINE_MEMORY, dom0_mem=DOM0_MEMORY, initramfs=initramfs,
                  extra_args=["-smp", str(xen_crash.PCPUS), "-drive", f"file={results},{drive}"],
                  xen_args=XEN_ARGS, xen=build.elf,
                  ready=f"{READY}|{xen_crash.FAILED}", timeout=timeout) as guest:
        serial = guest.vm.serial_text()
        if re.search(xen_crash.FAILED, serial):
            time.sleep(3)  # the failing script prints its logs after the line
            raise QemuError(f"the live Xen host failed; serial log tail: "
                            f"{guest.vm.serial_text()[-5000:]}")
        seconds["qemu_to_ready"] = guest.boot_seconds
        # dom0 synced the tar before printing READY: QEMU has written it to the host file
        xen_crash._unpack_tar(results, workdir / "out")
        domains, key_d, key_q = _records(workdir / "out")
        yield XenLiveHost(guest, workdir, build.syms, domains, key_d, key_q, seconds)


if __name__ == "__main__":
    import sys
    import tempfile

    t0 = time.monotonic()
    with boot_live_host(Path(tempfile.mkdtemp(prefix="xenlive-"))) as host:
        print(json.dumps({"domains": host.domains, "seconds": host.seconds,
                          "total": round(time.monotonic() - t0, 1)}, indent=1, default=str))
    sys.exit(0)
