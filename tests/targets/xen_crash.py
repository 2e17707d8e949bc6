"""A crashed Xen host's dump, made for real: Xen 4.17's kexec crash path under QEMU TCG.

What a support engineer holds after a Xen host died is the ``/proc/vmcore`` that Xen's
``kexec_crash()`` hands to a crash kernel, often also run through ``makedumpfile``, plus the
``xen-syms`` of that build. This generator makes exactly that, once per set of inputs:

* Xen 4.17 rebuilt from Debian's source with ``CONFIG_PV32`` and ``CONFIG_DEBUG_INFO`` (the build
  the PV32 target uses too: :func:`tests.pv32.xen_pv32.xen_build`, so ``xen-syms`` has DWARF), on
  two pCPUs (``-smp 2``) with ``crashkernel=256M``; Debian's Linux 6.1 as 64-bit PV dom0 (one vCPU
  pinned to pCPU 0) with Debian's toolstack and ``kexec-tools`` (built with Xen support: it loads
  the crash kernel through libxenctrl's kexec hypercalls);
* dom0's ``/init`` (``xencrash/dom0-init.sh``) loads the crash kernel (``kexec -p``: the same
  Debian kernel, ``xencrash/crash-init.sh`` as its init), creates two 64-bit PV domUs pinned to
  pCPU 1 — ``xenpte-paused`` (left paused) and ``xenpte-running`` (left spinning in user mode) —
  each running ``xencrash/marker.c``, which fills one page with content naming its domain and
  prints the page's VA and PFN; then records, before the crash, ``xenctx -a`` (vCPU context: CR3
  as Xen holds it), ``xenctx -m`` at the marker VA, ``xen-mfndump dump-p2m`` (PFN -> MFN, pinned
  L4s), ``xl list -l``, ``xl vcpu-list``, ``xl dump-core`` of the paused domU (its vCPU
  context has both L4s: ctrlreg[3] kernel, ctrlreg[1] user), and Xen's ``xl debug-keys d``
  (per-pCPU registers) and ``q`` (domains, vCPU -> pCPU); writes them as a tar onto the second
  virtio disk; and runs ``xl debug-keys C``: Xen goes down ``kexec_crash()`` on pCPU 0;
* the crash kernel boots natively in the reserved region and ``dd``\\ s ``/proc/vmcore`` onto the
  first virtio disk (QEMU ``detect-zeroes=unmap``: the host file stays sparse);
* on the host: the disk cut to the vmcore's size is ``vmcore.elf``; Debian's ``makedumpfile``
  (1.7.2, run from its unpacked package) makes the kdump-compressed ``vmcore.kdump``
  (``makedumpfile -c -d 0 --xen-syms xen-syms vmcore.elf vmcore.kdump``, what a user runs on
  the copied vmcore; -d 0 keeps every page, domUs' included); the marker page's machine frame is
  looked up in xen-mfndump's p2m and by a content scan; everything goes in ``manifest.json``.

The result lives in ``<cache>/xencrash/<key>/`` (tests/targets/cachedir.py), ``<key>`` a hash of
every input (Xen build, package versions, the scripts in ``xencrash/``, the machine's parameters,
``FORMAT``), built under a lock, so a CI run boots it once and later runs only read it. The
vmcore is ~1.3 GB of address space but sparse (370-500 MB on disk; the makedumpfile copy 105-125
MB, paused.core 130 MB); only the ``KEEP_ENTRIES`` newest sets are kept.

manifest.json (``FORMAT`` 1): ``vmcore_elf``, ``vmcore_kdump``, ``xen_syms``, ``xen_image``,
``dom0_kernel``, ``serial_log`` (absolute paths; :func:`load` re-bases them on the manifest's
folder if the cache moved); ``xen_version`` (Xen's banner), ``xen_build`` (Debian source version,
config delta); ``crashed_pcpu`` (Xen's "Executing kexec image on cpuN"), ``pcpus``;
``debug_key_d`` (per pCPU: context, domid/vcpu, cr3, cr4, cs, rip as Xen printed them);
``domains``: per domain ``domid``, ``name``, ``kind`` (``pv64``; ``pvh``), ``state``
(``running``/``paused``), ``vcpus`` (per vCPU: ``pcpu`` and ``has`` from debug-key q, and for
domUs ``xenctx``: the registers ``xenctx -a`` printed, cr3 = the kernel L4 as a machine address;
for the paused domU also ``dump_core``: kernel_cr3, user_cr3, cr4 from its ``xl dump-core``
context, kept as ``xl_dump_core``; ``user_cr3`` and ``user_cr3_from``: that context's, or for the
running domU the CR3 debug-key d printed with the vCPU in user mode),
``pinned_l4_mfns`` (xen-mfndump), ``marker`` (tag, va, pfn, mfn, maddr, sha256, file, found_at,
mfn_from) and the
text files by name (``texts``); ``seconds`` (measured times), ``steps`` (dom0's and the crash
kernel's step lines with their uptimes).

Measured here (2 cores, QEMU 7.2 TCG): 100 s for a whole generation at load average ~2 (QEMU
start to the crash kernel's done line 91 s: toolstack up at dom0 uptime 8 s, each domU ~13 s to
its marker, records and tar 5 s, crash kernel up 2 s after the crash, ``dd`` of 1.34 GB 30 s;
makedumpfile 8 s), 150-155 s at load 6-10 (the paused domU's ``xl dump-core`` adds ~10 s); a
cached set is found in 1-3 s (apt-cache, for the key).
The Xen build it shares with the PV32 target: 94 s cold. The host's makedumpfile needs liblzo2-2
(via liblzo2-dev) and libdw1/libelf1 (via gdb), both from .ci/apt-packages.txt.

With ``XENPTE_XENCRASH_PVH=1`` (or ``pvh=True``) a third domU is made before the running one:
the same kernel as a PVH guest (an HVM container under Xen's SVM + NPT), left paused; its own
cache key. xen-mfndump cannot read a PVH p2m, so its marker's machine frame is the only page of
the vmcore holding the marker (:func:`find_pages`, recorded for every domU as ``found_at``; a PV
marker can have copies: the paused domU's is also in dom0's tmpfs copy of its xl dump-core).

Run ``python3 -m tests.targets.xen_crash [--force] [--pvh]`` from the repository root to make
(or find) the artefacts and print the manifest's path and the times.

Failure modes: :class:`~tests.targets.packages.TargetSetupError` (no apt/gcc/ldd, a package or
library missing, makedumpfile failing), :class:`~tests.targets.qemu.QemuSetupError` (no QEMU),
:class:`~tests.targets.qemu.QemuError` (QEMU died, dom0 reported ``XENPTE-XENCRASH-FAILED``, the
crash kernel reported ``XENPTE-VMCORE-FAILED``, or a step timed out; the message carries the
serial log's tail).
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tarfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from . import packages, xl_dumpcore
from .cachedir import cache_root
from .initramfs import busybox_initramfs
from .packages import TargetSetupError
from .qemu import QemuError
from .xen import boot_xen

__all__ = ["FORMAT", "artefacts", "build_dom0_initramfs", "cache_key", "domains",
           "dump_core_ctrlregs", "find_pages", "generate", "load", "marker_page",
           "parse_debug_key_d", "parse_debug_key_q", "parse_marker_line", "parse_p2m"]

HERE = Path(__file__).resolve().parent / "xencrash"
SCRIPTS = ("dom0-init.sh", "domu-init.sh", "crash-init.sh", "marker.c")
# Bump when the manifest or the generation changes in a way the inputs below do not show.
FORMAT = 1
# Artefact sets kept in the cache (other keys: other branches or script versions); older ones go.
KEEP_ENTRIES = 4
MACHINE_MEMORY = "1536M"
PCPUS = 2
DOM0_MEMORY = "512M"
CRASHKERNEL = "256M"
# dom0 on pCPU 0 only; the console ring big enough for debug-keys d and q.
XEN_ARGS = ("dom0_max_vcpus=1", "dom0_vcpus_pin", f"crashkernel={CRASHKERNEL}", "conring_size=1m")
# The crash kernel: native, one CPU, devices reset (kexec-tools adds elfcorehdr= and the memmap).
CRASH_APPEND = "console=ttyS0,115200 nr_cpus=1 irqpoll reset_devices panic=-1"
# (tag, name, state, xl type) in creation order: the paused ones first, so they boot without a
# spinning neighbour on pCPU 1. With PVH_OPT_IN=1 a PVH domU (an HVM container: Xen uses the SVM +
# NPT QEMU TCG offers; see tests/targets/xl_dumpcore.py) is made too, left paused.
DOMAINS = (("paused", "xenpte-paused", "paused", "pv"),
           ("running", "xenpte-running", "running", "pv"))
PVH_DOMAIN = ("pvh", "xenpte-pvh", "paused", "pvh")
PVH_OPT_IN = "XENPTE_XENCRASH_PVH"
# Domains whose vCPU context is also taken by `xl dump-core` (both L4s of a PV64 vCPU).
DUMPCORE = ("paused",)
KINDS = {"pv": "pv64", "pvh": "pvh"}
DOMU_MEMORY_MB = 128
# The live-host target's domUs (tests/targets/xen_live.py): less, for a faster `xl create`,
# xen-mfndump and QEMU dump.
LIVE_DOMU_MEMORY_MB = 96
DOMU_PCPU = 1
KEXEC_PACKAGE = "kexec-tools"
MAKEDUMPFILE_PACKAGE = "makedumpfile"
MAKEDUMPFILE_ARGS = ("-c", "-d", "0")
DOM0_TOOLS = xl_dumpcore.XEN_TOOLS + ("xen-mfndump",)
CRASH_MODULES = ("virtio_pci", "virtio_blk")
TRIGGER = "XENPTE-XENCRASH-TRIGGER"
FAILED = "XENPTE-XENCRASH-FAILED|XENPTE-VMCORE-FAILED"
DONE = "XENPTE-VMCORE-DONE"
PAGE_SIZE = 4096
MARKER_MAGIC = b"XENPTE-XENCRASH-MARKER-v1 "


def marker_page(tag: str) -> bytes:
    """Return the 4096 bytes the marker program of the domU tagged ``tag`` writes (marker.c)."""
    head = MARKER_MAGIC + tag.encode()[:64] + b"\n"
    s = sum(tag.encode()[:64])
    return head + bytes((i * 7 + 13 + 31 * s) & 0xFF for i in range(len(head), PAGE_SIZE))


# -- inputs and the cache ---------------------------------------------------------------------

def domains(pvh: Optional[bool] = None) -> Tuple[Tuple[str, str, str, str], ...]:
    """The domUs to make: :data:`DOMAINS`, plus :data:`PVH_DOMAIN` before the running one if
    ``pvh`` (default: ``$XENPTE_XENCRASH_PVH`` is ``1``)."""
    if pvh is None:
        pvh = os.environ.get(PVH_OPT_IN) == "1"
    return (DOMAINS[0], PVH_DOMAIN, DOMAINS[1]) if pvh else DOMAINS


def _inputs(pvh: Optional[bool] = None) -> Dict[str, object]:
    """Everything the artefacts depend on (versions, hashes, parameters), for the cache key."""
    from tests.pv32 import xen_pv32

    build = xen_pv32.xen_build()
    names = (*xl_dumpcore.TOOLSTACK_PACKAGES, KEXEC_PACKAGE, MAKEDUMPFILE_PACKAGE,
             packages.BUSYBOX_PACKAGE)
    packages._learn_versions(names)  # one apt-cache run (as xl_dumpcore does)
    kernel = packages.kernel_package()
    versions = {name: packages.candidate_version(name) for name in (*names, kernel)}
    scripts = {name: hashlib.sha256((HERE / name).read_bytes()).hexdigest()[:16]
               for name in SCRIPTS}
    return {
        "format": FORMAT, "xen_build": build.elf.parent.name, "kernel": kernel,
        "packages": versions, "scripts": scripts,
        "machine": {"memory": MACHINE_MEMORY, "pcpus": PCPUS, "dom0_mem": DOM0_MEMORY,
                    "xen_args": list(XEN_ARGS), "crash_append": CRASH_APPEND,
                    "domains": [list(d) for d in domains(pvh)], "domu_mb": DOMU_MEMORY_MB,
                    "dumpcore": list(DUMPCORE),
                    "makedumpfile": list(MAKEDUMPFILE_ARGS)},
    }


def cache_key(inputs: Dict[str, object]) -> str:
    """Return the 12-hex-digit key of ``inputs`` (see :func:`_inputs`)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def artefacts(force: bool = False, timeout: float = 1200.0, pvh: Optional[bool] = None) -> Path:
    """Return the path of ``manifest.json`` of the crash artefacts, generating them if not cached.

    :param force: generate again even if cached.
    :param timeout: seconds from QEMU start to the crash kernel's done line.
    :param pvh: also a PVH domU (default: ``$XENPTE_XENCRASH_PVH`` is ``1``); its own cache key.
    """
    inputs = _inputs(pvh)
    root = cache_root("xencrash")
    final = root / cache_key(inputs)
    with _locked(root):
        complete = all((final / name).is_file() for name in
                       ("manifest.json", "vmcore.elf", "vmcore.kdump", "xen-syms"))
        if complete and not force:
            return final / "manifest.json"
        work = final.with_name(final.name + ".tmp")
        shutil.rmtree(work, ignore_errors=True)
        generate(work, inputs, timeout=timeout, pvh=pvh)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(work, final)
        manifest = final / "manifest.json"
        _rebase_manifest(manifest)
        _prune(root, keep=final)
        return manifest


def _prune(root: Path, keep: Path) -> None:
    """Remove all but the ``KEEP_ENTRIES`` newest artefact sets (~500 MB each; ``keep`` stays)."""
    done = sorted((d for d in root.iterdir() if (d / "manifest.json").is_file() and d != keep),
                  key=lambda d: (d / "manifest.json").stat().st_mtime, reverse=True)
    for stale in done[KEEP_ENTRIES - 1:]:
        shutil.rmtree(stale, ignore_errors=True)


# -- building the images ----------------------------------------------------------------------

def _gcc_marker(workdir: Path) -> Path:
    out = workdir / "marker"
    proc = subprocess.run([xl_dumpcore._require("gcc", "gcc"), "-static", "-nostdlib",
                           "-ffreestanding", "-fno-stack-protector", "-fno-pie", "-no-pie", "-O2",
                           "-o", str(out), str(HERE / "marker.c")], capture_output=True, text=True)
    if proc.returncode != 0:
        raise TargetSetupError(f"gcc failed on xencrash/marker.c: {proc.stderr.strip()[-800:]}")
    return out


def _domu_config(tag: str, name: str, kind: str, memory_mb: int = DOMU_MEMORY_MB) -> str:
    return "\n".join([
        f'name = "{name}"', f'type = "{kind}"', 'kernel = "/boot/vmlinuz"',
        'ramdisk = "/boot/domu-initrd.cpio"',
        f'extra = "console=hvc0 panic=-1 xenpte_tag={tag}"', f"memory = {memory_mb}",
        "vcpus = 1", f'cpus = "{DOMU_PCPU}"',
        # PVH under Xen's SVM on QEMU TCG (as in xl_dumpcore.domu_config): no RDTSCP, no PKU
        *(['cpuid = "host,rdtscp=0,pku=0"'] if kind == "pvh" else []),
        'on_crash = "preserve"', 'on_poweroff = "preserve"', ""])


def _crash_initramfs(busybox: Path, modules_dir: Path) -> bytes:
    """The crash kernel's initramfs (gzip): busybox, virtio modules, ``crash-init.sh``."""
    archive = busybox_initramfs(busybox, (HERE / "crash-init.sh").read_text())
    archive.directory("/lib")
    archive.directory("/lib/modules")
    names = []
    for ko in xl_dumpcore.modules_in_load_order(modules_dir, CRASH_MODULES):
        names.append(f"/lib/modules/{ko.name}")
        archive.file(names[-1], ko.read_bytes())
    archive.file("/etc/xenpte-modules.txt", ("\n".join(names) + "\n").encode())
    return gzip.compress(archive.finish(), compresslevel=6, mtime=0)


def build_dom0_initramfs(workdir: Path, pvh: Optional[bool] = None, live: bool = False) -> Path:
    """Write dom0's initramfs (uncompressed cpio): toolstack, kexec, domU and crash images.

    :param live: for the live-host target (tests/targets/xen_live.py): dom0's init runs in
        ``MODE=live`` (no crash kernel, no ``xl dump-core``; every domU created before waiting
        for the first; idles once the records are on the only virtio disk, ``/dev/vda``), the
        domUs get :data:`LIVE_DOMU_MEMORY_MB`.
    """
    roots = {name: packages.unpack(name) for name in xl_dumpcore.TOOLSTACK_PACKAGES}
    kexec = packages.unpack(KEXEC_PACKAGE) / "sbin" / "kexec"
    bin_dir = roots["xen-utils-4.17"] / xl_dumpcore.XEN_BIN.lstrip("/")
    xenstore = roots["xenstore-utils"] / "usr/bin/xenstore"
    tools = [bin_dir / name for name in DOM0_TOOLS]
    for path in tools + [xenstore, kexec]:
        if not path.is_file():
            raise TargetSetupError(f"{path} is missing from the unpacked packages")
    lib_dirs = sorted({p.parent for root in roots.values()
                       for p in root.glob("usr/lib/**/lib*.so*")})
    libs = xl_dumpcore.shared_libraries(tools + [xenstore, kexec], lib_dirs)
    for soname in xl_dumpcore.DLOPENED_LIBS:
        found = [d / soname for d in xl_dumpcore.HOST_LIB_DIRS if (d / soname).exists()]
        if not found:
            raise TargetSetupError(f"{soname} not found in the host's library folders")
        libs[soname] = found[0]
    modules_dir = packages.linux_modules_dir()
    busybox = packages.busybox_static()
    kernel = packages.linux_kernel()

    domu = busybox_initramfs(busybox, (HERE / "domu-init.sh").read_text())
    domu.file("/marker", _gcc_marker(workdir).read_bytes(), 0o755)

    # xl_dumpcore's tree helper (mkdir -p for the toolstack's paths)
    tree = xl_dumpcore._Tree(busybox_initramfs(busybox, (HERE / "dom0-init.sh").read_text()))
    for soname, host in sorted(libs.items()):
        folder = "/lib64/" if soname.startswith("ld-linux") else "/lib/x86_64-linux-gnu/"
        tree.file(folder + soname, host.read_bytes(), 0o755)
    for tool in tools:
        tree.file(f"{xl_dumpcore.XEN_BIN}/{tool.name}", tool.read_bytes(), 0o755)
    tree.file("/sbin/kexec", kexec.read_bytes(), 0o755)
    tree.file("/usr/bin/xenstore", xenstore.read_bytes(), 0o755)
    for name in xl_dumpcore.XENSTORE_NAMES:
        tree.symlink(f"/usr/bin/{name}", "xenstore")
    common = roots["xen-utils-common"]
    for conf in ("etc/xen/xl.conf", "etc/xen/oxenstored.conf"):
        tree.file("/" + conf, (common / conf).read_bytes())
    guest_modules = []
    for ko in xl_dumpcore.modules_in_load_order(modules_dir, xl_dumpcore.DOM0_MODULES):
        guest_modules.append(f"/lib/modules/{ko.name}")
        tree.file(guest_modules[-1], ko.read_bytes())
    tree.file("/etc/xenpte-modules.txt", ("\n".join(guest_modules) + "\n").encode())
    tree.file("/boot/vmlinuz", kernel.read_bytes())
    tree.file("/boot/domu-initrd.cpio", domu.finish())
    if not live:
        tree.file("/boot/crash-initrd.cpio.gz", _crash_initramfs(busybox, modules_dir))
    for tag, name, _state, kind in domains(pvh):
        memory = LIVE_DOMU_MEMORY_MB if live else DOMU_MEMORY_MB
        tree.file(f"/etc/xen/{tag}.cfg", _domu_config(tag, name, kind, memory).encode())
    words = " ".join(f"{tag}:{name}:{state}" for tag, name, state, _kind in domains(pvh))
    conf = (f"XEN_BIN={xl_dumpcore.XEN_BIN}\nRESULTS_DISK=/dev/vd{'a' if live else 'b'}\n"
            f"CRASH_APPEND='{CRASH_APPEND}'\nDOMAINS='{words}'\n"
            f"DUMPCORE='{'' if live else ' '.join(DUMPCORE)}'\n"
            f"MODE={'live' if live else 'crash'}\n")
    tree.file("/etc/xenpte.conf", conf.encode())
    path = workdir / "dom0-initramfs.cpio"
    path.write_bytes(tree.archive.finish())
    return path


# -- parsing what Xen and its tools printed ---------------------------------------------------

def parse_debug_key_d(text: str) -> List[Dict[str, object]]:
    """Return one record per ``*** Dumping CPUn ... state`` block of ``xl debug-keys d``.

    :returns: ``[{"pcpu", "context": "host"|"guest", "domid", "vcpu" (guest blocks; else None),
        "cr0", "cr3", "cr4", "cs", "rip"}]`` in the order printed.
    """
    text = re.sub(r"^\(XEN\) ", "", text, flags=re.M)
    heads = list(re.finditer(r"^\*\*\* Dumping CPU(\d+) (host|guest) state"
                             r"(?: \(d(\d+)v(\d+)\))?: \*\*\*$", text, re.M))
    records = []
    for i, head in enumerate(heads):
        body = text[head.end():heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        regs = {name: int(value, 16) for name, value in
                re.findall(r"\b(cr[0-4]): ([0-9a-f]{16})\b", body)}
        rip = re.search(r"^RIP:\s+([0-9a-f]{4}):\[<([0-9a-f]{16})>\]", body, re.M)
        records.append({
            "pcpu": int(head.group(1)), "context": head.group(2),
            "domid": int(head.group(3)) if head.group(3) else None,
            "vcpu": int(head.group(4)) if head.group(4) else None,
            "cr0": regs.get("cr0"), "cr3": regs.get("cr3"), "cr4": regs.get("cr4"),
            "cs": int(rip.group(1), 16) if rip else None,
            "rip": int(rip.group(2), 16) if rip else None})
    return records


def parse_debug_key_q(text: str) -> Dict[int, Dict[str, object]]:
    """Return ``{domid: {"pause_count", "vcpus": {vcpu: {"pcpu", "has", "pause_count"}}}}``
    from ``xl debug-keys q`` (Xen's dump_domains)."""
    text = re.sub(r"^\(XEN\) ", "", text, flags=re.M)
    domains: Dict[int, Dict[str, object]] = {}
    for m in re.finditer(r"^General information for domain (\d+):\n\s+refcnt=\d+ dying=\d+ "
                         r"pause_count=(\d+)", text, re.M):
        domains[int(m.group(1))] = {"pause_count": int(m.group(2)), "vcpus": {}}
    for block in re.finditer(r"^VCPU information and callbacks for domain (\d+):\n"
                             r"(.*?)(?=^\S|\Z)", text, re.M | re.S):
        vcpus = domains.setdefault(int(block.group(1)), {"vcpus": {}})["vcpus"]
        for m in re.finditer(r"VCPU(\d+): CPU(\d+) \[has=(\w)\].*?\n(?:.*\n)*?\s+pause_count="
                             r"(\d+)", block.group(2)):
            vcpus[int(m.group(1))] = {"pcpu": int(m.group(2)), "has": m.group(3) == "T",
                                      "pause_count": int(m.group(4))}
    return domains


def parse_marker_line(console: str, tag: str, where: str) -> Tuple[int, int]:
    """Return ``(va, pfn)`` from the marker line domU ``tag`` printed (marker.c) in ``console``.

    :raises QemuError: if there is none, or its head is not :func:`marker_page` of ``tag``.
    """
    line = re.search(r"XENPTE-XENCRASH-MARKER tag=(\S+) va=0x([0-9a-f]+) pfn=0x([0-9a-f]+) "
                     r"head=([0-9a-f]+)", console)
    if line is None or line.group(1) != tag:
        raise QemuError(f"no marker line of domU {tag} in {where}")
    if bytes.fromhex(line.group(4)) != marker_page(tag)[:32]:
        raise QemuError(f"{where}: marker head {line.group(4)} is not marker_page({tag!r})")
    return int(line.group(2), 16), int(line.group(3), 16)


def parse_p2m(text: str) -> Dict[int, Dict[str, object]]:
    """Return ``{pfn: {"mfn", "type"}}`` from ``xen-mfndump dump-p2m`` (type: the text after
    the type word, e.g. ``"pinned L4"``, or ``""``)."""
    return {int(pfn, 16): {"mfn": int(mfn, 16), "type": rest.strip()}
            for pfn, mfn, rest in re.findall(
                r"^\s*pfn=0x([0-9a-f]+) ==> mfn=0x([0-9a-f]+) \(type 0x[0-9a-f]+\)(.*)$",
                text, re.M)}


# -- generating -------------------------------------------------------------------------------

def _unpack_tar(disk: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(disk, mode="r:") as tar:
        for member in tar:
            name = Path(member.name).name
            if member.isfile() and name and not name.startswith("."):
                with open(dest / name, "wb") as f:
                    shutil.copyfileobj(tar.extractfile(member), f)


def _makedumpfile(elf: Path, syms: Path, out: Path) -> float:
    """Run Debian's makedumpfile (unpacked, host libraries) on the ELF vmcore; return seconds."""
    root = packages.unpack(MAKEDUMPFILE_PACKAGE)
    binary = root / "usr/bin/makedumpfile"
    log = out.with_suffix(".log")
    t0 = time.monotonic()
    with open(log, "w") as handle:
        proc = subprocess.run([str(binary), *MAKEDUMPFILE_ARGS, "--xen-syms", str(syms),
                               str(elf), str(out)], stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not out.is_file():
        raise TargetSetupError(f"makedumpfile failed (exit {proc.returncode}): "
                               f"{log.read_text(errors='replace')[-1500:]}")
    return time.monotonic() - t0


# struct vcpu_guest_context, x86_64 (xen/include/public/arch-x86/xen.h, xen-x86_64.h): fpu_ctxt
# 512, flags 8, cpu_user_regs 200, trap_info[256] 4096, ldt_base, ldt_ents, gdt_frames[16],
# gdt_ents, kernel_ss, kernel_sp, then ctrlreg[8].
VCPU_CONTEXT_SIZE = 5168            # sizeof(vcpu_guest_context_any_t), x86_64 toolstack
CTRLREG_OFFSET = 512 + 8 + 200 + 4096 + 8 * (2 + 16 + 1 + 2)


def dump_core_ctrlregs(core: Path) -> List[List[int]]:
    """Return each vCPU's ``ctrlreg[0..7]`` from an ``xl dump-core`` file's ``.xen_prstatus``."""
    from elftools.elf.elffile import ELFFile

    with open(core, "rb") as f:
        section = ELFFile(f).get_section_by_name(".xen_prstatus")
        if section is None:
            raise QemuError(f"{core}: no .xen_prstatus section (not an xl dump-core file?)")
        data = section.data()
    return [list(struct.unpack_from("<8Q", data, base + CTRLREG_OFFSET))
            for base in range(0, len(data) - VCPU_CONTEXT_SIZE + 1, VCPU_CONTEXT_SIZE)]


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def generate(workdir: Path, inputs: Optional[Dict[str, object]] = None,
             timeout: float = 1200.0, pvh: Optional[bool] = None) -> Path:
    """Boot, crash, copy, convert; write ``manifest.json`` into ``workdir`` and return its path.

    QEMU is killed (by pid) before this returns, whatever happens.
    """
    from tests.pv32 import xen_pv32

    started = time.monotonic()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    inputs = inputs or _inputs(pvh)
    build = xen_pv32.xen_build()
    initramfs = build_dom0_initramfs(workdir, pvh)
    vmcore_disk = workdir / "vmcore.disk"
    results_disk = workdir / "results.disk"
    mem_mb = int(MACHINE_MEMORY.rstrip("M"))
    with open(vmcore_disk, "wb") as f:
        f.truncate((mem_mb + 64) << 20)
    with open(results_disk, "wb") as f:  # the small files and the paused domU's dump-core
        f.truncate((DOMU_MEMORY_MB + 64) << 20)
    built = time.monotonic()
    # zeros become holes in the host file (the vmcore is mostly free memory)
    drive = "format=raw,if=virtio,cache=unsafe,discard=unmap,detect-zeroes=unmap"
    extra = ["-smp", str(PCPUS), "-drive", f"file={vmcore_disk},{drive}",
             "-drive", f"file={results_disk},{drive}"]
    seconds: Dict[str, float] = {"images": built - started}
    with boot_xen(workdir, memory=MACHINE_MEMORY, dom0_mem=DOM0_MEMORY, initramfs=initramfs,
                  extra_args=extra, xen_args=XEN_ARGS, xen=build.elf,
                  ready=f"{DONE}.*|{FAILED}.*", timeout=timeout) as guest:
        serial = guest.vm.serial_text()
        if re.search(FAILED, serial):
            time.sleep(3)  # the failing script prints its logs after the line
            serial = guest.vm.serial_text()
            raise QemuError(f"the crash target failed; serial log tail: {serial[-5000:]}")
        trigger = serial.find(TRIGGER)
        seconds["qemu_to_vmcore_done"] = guest.boot_seconds
        cmdline = guest.xen_cmdline
        kernel = guest.kernel
    size = int(re.search(rf"{DONE} size=(\d+)", serial).group(1))
    _unpack_tar(results_disk, workdir / "out")
    results_disk.unlink()
    elf = workdir / "vmcore.elf"
    os.truncate(vmcore_disk, size)
    os.replace(vmcore_disk, elf)
    syms = workdir / "xen-syms"
    _link_or_copy(build.syms, syms)
    seconds["makedumpfile"] = _makedumpfile(elf, syms, workdir / "vmcore.kdump")
    initramfs.unlink()
    (workdir / "marker").unlink(missing_ok=True)
    manifest = _manifest(workdir, serial, trigger, cmdline, build, kernel, inputs, pvh)
    seconds["total"] = time.monotonic() - started
    manifest["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    path = workdir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return path


def _steps(serial: str) -> Dict[str, float]:
    """dom0's and the crash kernel's step lines as uptime seconds (for the timing notes)."""
    steps = {}
    for crash, up, text in re.findall(r"^XENPTE-(CRASH-)?STEP ([\d.]+) ([^\r\n]*)", serial,
                                      re.M):
        steps[f"{'crash kernel' if crash else 'dom0'}: {text.strip()}"] = float(up)
    return steps


def find_pages(elf: Path, content: bytes) -> List[int]:
    """Return the machine addresses of every page of the ELF vmcore ``elf`` equal to ``content``
    (a brute-force scan by p_paddr, independent of any page table or p2m)."""
    import mmap

    from elftools.elf.elffile import ELFFile

    found = []
    with open(elf, "rb") as f:
        loads = [(s["p_paddr"], s["p_offset"], s["p_filesz"]) for s in ELFFile(f).iter_segments()
                 if s["p_type"] == "PT_LOAD"]
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mem:
            for paddr, offset, size in loads:
                at = mem.find(content[:64], offset, offset + size)
                while at >= 0:
                    if (at - offset) % PAGE_SIZE == 0 and mem[at:at + PAGE_SIZE] == content:
                        found.append(paddr + at - offset)
                    at = mem.find(content[:64], at + 1, offset + size)
    return found


def _manifest(workdir: Path, serial: str, trigger: int, cmdline: str, build, kernel: Path,
              inputs: Dict[str, object], pvh: Optional[bool] = None) -> Dict[str, object]:
    out = workdir / "out"
    texts = {p.name: p for p in sorted(out.iterdir()) if p.is_file() and p.suffix != ".core"}
    read = lambda name: texts[name].read_text(errors="replace") if name in texts else ""
    before, after = serial[:trigger], serial[trigger:]
    crashed = re.search(r"Executing kexec image on cpu(\d+)", after)
    version = re.search(r"Xen version (\S+) \(", serial)
    kdump = re.search(r"Kdump: (\d+)MB \(\d+kB\) at (0x[0-9a-f]+)", serial)
    keys = read("xl-debug-keys.txt")
    q = parse_debug_key_q(keys)
    key_d = parse_debug_key_d(keys)
    records: List[Dict[str, object]] = [{
        "domid": 0, "name": "Domain-0", "kind": "pv64", "state": "running",
        "pause_count": q.get(0, {}).get("pause_count"),
        "vcpus": [{"vcpu": v, **info} for v, info in sorted(q.get(0, {}).get("vcpus", {}).items())],
    }]
    for tag, name, state, xl_type in domains(pvh):
        domid = int(read(f"{tag}-domid"))
        ctx = xl_dumpcore.parse_xenctx(read(f"{tag}-xenctx.txt"))
        p2m = parse_p2m(read(f"{tag}-p2m.txt"))
        va, pfn = parse_marker_line(read(f"{tag}-console.log"), tag,
                                    str(texts.get(f"{tag}-console.log")))
        content = marker_page(tag)
        found = find_pages(workdir / "vmcore.elf", content)
        if xl_type == "pv":
            if pfn not in p2m:
                raise QemuError(f"{name}'s marker PFN {pfn:#x} is not in xen-mfndump's p2m")
            mfn = p2m[pfn]["mfn"]
        elif len(found) == 1:  # PVH: xen-mfndump cannot read its p2m; the page is unique
            mfn = found[0] // PAGE_SIZE
        else:
            raise QemuError(f"{name}'s marker page is at {len(found)} machine frames: "
                            f"{[hex(a) for a in found]}")
        (workdir / f"{tag}-marker.bin").write_bytes(content)
        qv = q.get(domid, {}).get("vcpus", {})
        vcpu: Dict[str, object] = {"vcpu": 0, **qv.get(0, {}),
                                   "xenctx": {k: ctx[k] for k in sorted(ctx)},
                                   "cr3": ctx.get("cr3"), "cr4": ctx.get("cr4")}
        core = out / f"{tag}.core"
        if core.is_file():
            ctrlreg = dump_core_ctrlregs(core)[0]
            if ctrlreg[3] != ctx.get("cr3"):  # the layout check: the same context as xenctx's
                raise QemuError(f"{core}: ctrlreg[3] {ctrlreg[3]:#x} is not xenctx's cr3 "
                                f"{ctx.get('cr3')}: wrong vcpu_guest_context layout?")
            vcpu["dump_core"] = {"kernel_cr3": ctrlreg[3], "user_cr3": ctrlreg[1],
                                 "cr4": ctrlreg[4]}
            os.replace(core, workdir / f"{tag}.core")
        # The user L4 (PV64): the toolstack's context has it; else debug-key d's CR3 of this
        # vCPU caught in user mode is it (a PV64 vCPU in user mode runs its user L4)
        seen = [r for r in key_d if r["domid"] == domid and r["vcpu"] == 0]
        if "dump_core" in vcpu:
            vcpu["user_cr3"] = vcpu["dump_core"]["user_cr3"]
            vcpu["user_cr3_from"] = "xl dump-core: ctrlreg[1]"
        elif seen and seen[0]["cs"] & 3 == 3 and seen[0]["cr3"] != ctx.get("cr3"):
            vcpu["user_cr3"] = seen[0]["cr3"]
            vcpu["user_cr3_from"] = f"xl debug-keys d: pCPU {seen[0]['pcpu']} in user mode"
        records.append({
            "domid": domid, "name": name, "tag": tag, "kind": KINDS[xl_type], "state": state,
            "memory_mb": DOMU_MEMORY_MB, "pcpu_affinity": [DOMU_PCPU],
            "pause_count": q.get(domid, {}).get("pause_count"),
            "vcpus": [vcpu],
            "xl_dump_core": str(workdir / f"{tag}.core") if "dump_core" in vcpu else None,
            "pinned_l4_mfns": sorted(e["mfn"] for e in p2m.values() if e["type"] == "pinned L4"),
            "p2m_entries": len(p2m),
            "marker": {"tag": tag, "va": va, "pfn": pfn, "mfn": mfn, "maddr": mfn * PAGE_SIZE,
                       "sha256": hashlib.sha256(content).hexdigest(),
                       "found_at": found,
                       "mfn_from": "xen-mfndump dump-p2m" if xl_type == "pv" else
                       "the only page of the vmcore with the marker's content",
                       "file": str(workdir / f"{tag}-marker.bin")},
        })
    return {
        "format": FORMAT,
        "key": cache_key(inputs),
        "inputs": inputs,
        "vmcore_elf": str(workdir / "vmcore.elf"),
        "vmcore_kdump": str(workdir / "vmcore.kdump"),
        "makedumpfile": " ".join(["makedumpfile", *MAKEDUMPFILE_ARGS, "--xen-syms", "xen-syms",
                                  "vmcore.elf", "vmcore.kdump"]),
        "xen_syms": str(workdir / "xen-syms"),
        "xen_image": str(build.elf),
        "dom0_kernel": str(kernel),
        "serial_log": str(workdir / "serial.log"),
        "xen_version": version.group(1) if version else None,
        "xen_build": {"debian_version": build.version,
                      "config_delta": [l for l in build.config.read_text().splitlines()
                                       if l in ("CONFIG_PV32=y", "CONFIG_EXPERT=y",
                                                "CONFIG_DEBUG_INFO=y")]},
        "xen_cmdline": cmdline,
        "crash_kernel_cmdline": CRASH_APPEND,
        "crashkernel": {"mb": int(kdump.group(1)), "start": int(kdump.group(2), 16)}
        if kdump else None,
        "pcpus": PCPUS,
        "crashed_pcpu": int(crashed.group(1)) if crashed else None,
        "crash_trigger": "xl debug-keys C",
        "debug_key_d": key_d,
        "domains": records,
        "texts": {name: str(path) for name, path in texts.items()},
        "steps": _steps(before + after),
    }


# -- reading ----------------------------------------------------------------------------------

def _rebase(value, old: str, new: str):
    if isinstance(value, str) and value.startswith(old + "/"):
        return new + value[len(old):]
    if isinstance(value, dict):
        return {k: _rebase(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebase(v, old, new) for v in value]
    return value


def _rebase_manifest(path: Path) -> None:
    """Rewrite the paths of a manifest written in ``<key>.tmp`` to its final folder."""
    data = json.loads(path.read_text())
    old = str(Path(data["vmcore_elf"]).parent)
    new = str(path.parent)
    if old != new:
        path.write_text(json.dumps(_rebase(data, old, new), indent=1, sort_keys=True) + "\n")


def load(path: Path) -> Dict[str, object]:
    """Read a manifest; paths under its original folder are re-based on where it is now.

    :raises FileNotFoundError: if the manifest or its vmcore is missing.
    """
    path = Path(path)
    data = json.loads(path.read_text())
    old = str(Path(data["vmcore_elf"]).parent)
    data = _rebase(data, old, str(path.parent))
    if not Path(data["vmcore_elf"]).is_file():
        raise FileNotFoundError(f"{path}: its vmcore {data['vmcore_elf']} is missing")
    return data


if __name__ == "__main__":
    import sys

    t0 = time.monotonic()
    manifest = artefacts(force="--force" in sys.argv, pvh="--pvh" in sys.argv or None)
    data = load(manifest)
    print(f"manifest: {manifest} ({time.monotonic() - t0:.1f} s)")
    print("seconds: " + ", ".join(f"{k} {v}" for k, v in data.get("seconds", {}).items()))
