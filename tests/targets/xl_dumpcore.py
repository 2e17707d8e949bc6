"""Real ``xl dump-core`` files: Debian's Xen 4.17 toolstack dumps a 64-bit PV domU under QEMU TCG.

The generator boots Xen + PV dom0 (:func:`tests.targets.xen.boot_xen`) with a dom0 initramfs that
carries the toolstack from Debian's packages: ``xl``, ``oxenstored``, ``xen-init-dom0``,
``xenconsoled``, ``xenctx`` and the ``xenstore-*`` tools, the ``libxen*`` libraries and whatever
else ``ldd`` says they load (libc, libuuid, zlib... from this host, which is the same Debian
release), and the kernel modules for ``/dev/xen/*`` and virtio-blk, loaded with ``insmod`` in the
order their ``.modinfo`` ``depends=`` fields give (the kernel package ships no ``modules.dep``).
dom0's ``/init`` (``dumpcore/dom0-init.sh``) starts xenstored, ``xen-init-dom0`` and xenconsoled,
``xl create``\\ s a PV domU (the same Debian kernel, a busybox initramfs whose ``/init`` is
``dumpcore/domu-init.sh``), waits for the domU's marker line in its console log, then takes

* ``running.core``: ``xl dump-core`` of the running domU,
* ``xenctx-paused.txt``: ``xenctx -a`` of vCPU 0 after ``xl pause`` (again after the dump:
  ``xenctx-paused-after.txt``), ``xenctx-marker.txt`` / ``xenctx-text.txt``: ``xenctx -m VA``,
  512 bytes at the marker VA and at ``_text`` through libxc's own page walk,
* ``paused.core``: ``xl dump-core`` of the paused domU (same vCPU context as xenctx saw),
* ``xl-list-l.json``, ``xl-info.txt``, ``domu-console.log``, ``xl-dmesg.txt``,

and writes them as a tar onto a second virtio disk (``/dev/vda``: the only disk), which the host
unpacks after QEMU is killed.

The domU's marker program (``dumpcore/marker.c``, built here with gcc, freestanding) fills a
page-aligned ``.bss`` page with :func:`marker_page`, prints its VA and its PFN (from
``/proc/self/pagemap``) and spins in user mode, so the paused vCPU runs its address space. The
domU's ``/init`` also prints ``_text``/``_etext`` from ``/proc/kallsyms``. These are the
independent views the tests check the dump walk against.

Guest kinds: a 64-bit PV domU always. With ``pvh=True`` the same kernel also runs as a PVH domU:
Xen 4.17 under QEMU TCG ``-cpu max`` has SVM with nested paging (``xl dmesg``: "HVM: SVM enabled",
"HAP detected"), so HVM containers work; PVH needs no device model (a full HVM guest would need
qemu-xen, which is not in this initramfs). Its dump is the HVM format (``.xen_pfn``, magic
0xF00FEBEE), but ``xl dump-core`` of it takes ~200 s here, hence opt-in. No 32-bit PV domU:
Debian 12 has no 32-bit PV kernel and its Xen is built without ``CONFIG_PV32``.

Measured here (2 cores, QEMU 7.2 TCG, one pCPU for Xen): 44 s from call to return inside pytest
(images ~2 s; dom0 userspace ~6 s after QEMU starts; toolstack up and ``xl create`` ~6 s; domU
marker ~6 s later; running dump ~9 s, paused dump ~8 s, each 128 MiB; tar onto the disk ~5 s),
60-120 s with other QEMUs on the same cores (load average up to 7). A first run also downloads
the 14 toolstack packages (~35 s).

Use from a session-scoped fixture (nothing is cached across runs)::

    from targets.xl_dumpcore import generate

    @pytest.fixture(scope="session")
    def xl_dumps(tmp_path_factory):
        return generate(tmp_path_factory.mktemp("xl-dumpcore"))   # QEMU is gone on return

Run ``python3 -m tests.targets.xl_dumpcore [--pvh] [DIR]`` from the repository root to generate
once and print the measured times.

Failure modes: :class:`~tests.targets.packages.TargetSetupError` (no apt/gcc/ldd, a package or
library missing), :class:`~tests.targets.qemu.QemuSetupError` (no QEMU),
:class:`~tests.targets.qemu.QemuError` (QEMU died, or dom0 reported ``XENPTE-DUMPCORE-FAILED``
or timed out; the message carries the serial log's tail, where dom0's step log is).
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from elftools.elf.elffile import ELFFile

from . import packages
from .initramfs import busybox_initramfs
from .packages import TargetSetupError
from .qemu import QemuError
from .xen import boot_xen

__all__ = ["DOMU_NAME", "Marker", "XlDumps", "generate", "load", "marker_page", "parse_xenctx",
           "parse_xenctx_code", "parse_xenctx_memory"]

HERE = Path(__file__).resolve().parent / "dumpcore"
DOMU_NAME = "xenpte-domu"
PVH_NAME = "xenpte-pvh"
# Debian's 6.1 kernel needs 0x3a00 pages (58 MiB) laid out by the domain builder, which refuses a
# 64 MiB domU ("segment kernel too large"); 128 MiB boots.
DOMU_MEMORY_MB = 128
# Holds the toolstack initramfs unpacked, the domU kernel and all the dumps in tmpfs.
DOM0_MEMORY = "768M"
XEN_BIN = "/usr/lib/xen-4.17/bin"
TOOLSTACK_PACKAGES = (
    "xen-utils-4.17", "xen-utils-common", "xenstore-utils", "libxencall1", "libxenevtchn1",
    "libxenforeignmemory1", "libxengnttab1", "libxenmisc4.17", "libxenstore4", "libxentoollog1",
    "libxenhypfs1", "libxentoolcore1", "libxendevicemodel1", "libyajl2",
)
XEN_TOOLS = ("xl", "oxenstored", "xen-init-dom0", "xenconsoled", "xenctx")
# One binary, many names: xenstore-utils' tools pick their action from argv[0].
XENSTORE_NAMES = ("xenstore-read", "xenstore-write", "xenstore-ls", "xenstore-list",
                  "xenstore-exists", "xenstore-rm")
# /dev/xen/{privcmd,evtchn,gntdev,gntalloc}, /proc/xen, and the disk that carries results back.
DOM0_MODULES = ("xen-privcmd", "xen-evtchn", "xenfs", "xen-gntdev", "xen-gntalloc", "virtio_pci",
                "virtio_blk")
# dlopen()ed by glibc for pthread_cancel (xl aborts without it), so ldd does not list it.
DLOPENED_LIBS = ("libgcc_s.so.1",)
HOST_LIB_DIRS = (Path("/lib/x86_64-linux-gnu"), Path("/usr/lib/x86_64-linux-gnu"))
DONE = "XENPTE-DUMPCORE-DONE"
FAILED = "XENPTE-DUMPCORE-FAILED"
PAGE_SIZE = 4096
MARKER_MAGIC = b"XENPTE-DUMPCORE-MARKER-PAGE-v1\n"


def marker_page() -> bytes:
    """Return the 4096 bytes the domU's marker program writes into its page (see marker.c)."""
    tail = bytes((i * 7 + 13) & 0xFF for i in range(len(MARKER_MAGIC), PAGE_SIZE))
    return MARKER_MAGIC + tail


@dataclass(frozen=True)
class Marker:
    """What the domU's marker program printed: the page's user VA and its PFN (pseudo-physical)."""

    va: int
    pfn: int
    head: bytes


@dataclass
class XlDumps:
    """The files dom0 handed back and what the domU and dom0 said about the domU.

    :param running: ``xl dump-core`` of the running domU; :param paused: of the paused domU.
    :param pvh: of the paused PVH domU when asked for (its texts are ``pvh-*``), else None.
    :param domid: the domU's domain id.
    :param xl_list: ``xl list -l`` parsed (a list with one record per domain).
    :param texts: the small text files by name: ``xenctx-paused.txt`` (``xenctx -a``, paused,
        before the paused dump), ``xenctx-paused-after.txt`` (after it), ``xenctx-marker.txt`` and
        ``xenctx-text.txt`` (``xenctx -m VA``: 512 bytes at the marker VA and at ``_text`` through
        libxc's own page walk), ``xenctx-help.txt``, ``xl-info.txt``, ``xl-dmesg.txt``...
    :param console: the domU's console log (xenconsoled's file).
    :param marker: the marker line; :param kallsyms: ``_text``/``_stext``/``_etext`` -> VA.
    :param seconds: measured times (``build``: images, ``qemu``: QEMU start to dom0's done line,
        ``total``: the whole call).
    """

    workdir: Path
    running: Path
    paused: Path
    pvh: Optional[Path]
    domid: int
    xl_list: list
    texts: Dict[str, str]
    console: str
    marker: Marker
    kallsyms: Dict[str, int]
    serial: str
    seconds: Dict[str, float] = field(default_factory=dict)


# -- building the initramfs images ------------------------------------------------------------

def _require(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise TargetSetupError(f"{tool} not found: install the Debian package {package!r} "
                               f"(bash .ci/run installs it)")
    return path


def build_marker(workdir: Path) -> Path:
    """Compile ``dumpcore/marker.c`` into a static, libc-free x86-64 executable.

    :raises TargetSetupError: without gcc, or if it fails.
    """
    out = Path(workdir) / "marker"
    proc = subprocess.run([_require("gcc", "gcc"), "-static", "-nostdlib", "-ffreestanding",
                           "-fno-stack-protector", "-fno-pie", "-no-pie", "-O2", "-o", str(out),
                           str(HERE / "marker.c")], capture_output=True, text=True)
    if proc.returncode != 0:
        raise TargetSetupError(f"gcc failed on marker.c: {proc.stderr.strip()[-800:]}")
    return out


def shared_libraries(binaries: Iterable[Path], lib_dirs: Sequence[Path]) -> Dict[str, Path]:
    """Return soname -> host file of every library ``binaries`` load, as ``ldd`` resolves them.

    :param lib_dirs: unpacked package library folders, searched before the host's.
    :raises TargetSetupError: if ``ldd`` is missing or a library is "not found".
    """
    env = {"LD_LIBRARY_PATH": ":".join(map(str, lib_dirs)), "PATH": "/usr/bin:/bin"}
    libs: Dict[str, Path] = {}
    for binary in binaries:
        proc = subprocess.run([_require("ldd", "libc-bin"), str(binary)], capture_output=True,
                              text=True, env=env)
        if proc.returncode != 0:
            raise TargetSetupError(f"ldd {binary} failed: {proc.stderr.strip()}")
        for line in proc.stdout.splitlines():
            line = line.strip()
            if "not found" in line:
                raise TargetSetupError(f"{binary.name} needs {line.split()[0]}, which neither the "
                                       f"unpacked packages nor this host provide")
            match = re.match(r"(\S+) => (/\S+)", line) or re.match(r"(/\S+ld-linux\S*)", line)
            if match:
                path = Path(match.groups()[-1])
                libs[Path(match.group(1)).name] = path
    return libs


def _modinfo_depends(ko: Path) -> List[str]:
    """The ``depends=`` list in a module's ``.modinfo`` section (module names, ``-`` or ``_``)."""
    with open(ko, "rb") as f:
        section = ELFFile(f).get_section_by_name(".modinfo")
        data = section.data() if section is not None else b""
    for item in data.split(b"\0"):
        if item.startswith(b"depends="):
            return [name for name in item[8:].decode().split(",") if name]
    return []


def modules_in_load_order(modules_dir: Path, wanted: Iterable[str]) -> List[Path]:
    """Return the ``.ko`` files of ``wanted`` and their dependencies, dependencies first.

    :raises TargetSetupError: if a module is neither a file nor built in.
    """
    norm = lambda name: name.replace("-", "_")
    files = {norm(ko.name[:-3]): ko for ko in modules_dir.rglob("*.ko")}
    builtin = {norm(Path(line).name[:-3])
               for line in (modules_dir / "modules.builtin").read_text().split()}
    order: List[Path] = []
    seen = set()

    def visit(name: str) -> None:
        name = norm(name)
        if name in seen:
            return
        seen.add(name)
        if name in builtin:
            return
        if name not in files:
            raise TargetSetupError(f"kernel module {name} not in {modules_dir}")
        for dep in _modinfo_depends(files[name]):
            visit(dep)
        order.append(files[name])

    for name in wanted:
        visit(name)
    return order


class _Tree:
    """A busybox archive plus ``mkdir -p`` for the extra paths the toolstack needs."""

    def __init__(self, archive):
        self.archive = archive
        self.dirs = {"/", "/bin", "/dev", "/etc", "/proc", "/root", "/run", "/sbin", "/sys", "/tmp",
                     "/var"}

    def mkdirs(self, path: str) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            d = "/" + "/".join(parts[:i])
            if d not in self.dirs:
                self.archive.directory(d)
                self.dirs.add(d)

    def file(self, path: str, data: bytes, perm: int = 0o644) -> None:
        self.mkdirs(path.rsplit("/", 1)[0] or "/")
        self.archive.file(path, data, perm)

    def symlink(self, path: str, target: str) -> None:
        self.mkdirs(path.rsplit("/", 1)[0] or "/")
        self.archive.symlink(path, target)


def build_domu_initramfs(workdir: Path, marker: Path) -> Path:
    """Write the domU's initramfs (busybox, ``/init``, ``/marker``), uncompressed cpio."""
    archive = busybox_initramfs(packages.busybox_static(), (HERE / "domu-init.sh").read_text())
    archive.file("/marker", marker.read_bytes(), 0o755)
    path = Path(workdir) / "domu-initramfs.cpio"
    path.write_bytes(archive.finish())
    return path


def domu_config(name: str, kind: str, kernel: str, ramdisk: str) -> str:
    """Return an ``xl create`` config for a one-vCPU domU of ``kind`` ``"pv"`` or ``"pvh"``.

    :param kernel: the kernel's path inside dom0; :param ramdisk: the initramfs's.
    """
    return "\n".join([
        f'name = "{name}"', f'type = "{kind}"', f'kernel = "{kernel}"', f'ramdisk = "{ramdisk}"',
        'extra = "console=hvc0 panic=-1"', f"memory = {DOMU_MEMORY_MB}", "vcpus = 1",
        # PVH under Xen's SVM on QEMU TCG: RDTSCP traps and Xen cannot emulate it ("SVM Insn
        # len emulation failed"), and the kernel's FPU init dies with PKU offered.
        *(['cpuid = "host,rdtscp=0,pku=0"'] if kind == "pvh" else []),
        # Keep a crashed domU around (its console log says why) instead of a silent restart.
        'on_crash = "preserve"', 'on_poweroff = "preserve"', ""])


def build_dom0_initramfs(workdir: Path, pvh: bool = False) -> Path:
    """Write dom0's initramfs: busybox, the toolstack, modules, domU kernel and initramfs.

    :param pvh: also make and dump a PVH domU (see :func:`generate`).

    Uncompressed: QEMU copies the module as is and dom0 unpacks it faster than gunzip under TCG.
    """
    workdir = Path(workdir)
    # One apt-cache run for all 14 packages instead of one each (~1 s apiece on a busy machine).
    # packages.py has no public batch call yet: its private one, as kernel_package() uses it.
    packages._learn_versions(TOOLSTACK_PACKAGES)
    roots = {name: packages.unpack(name) for name in TOOLSTACK_PACKAGES}
    bin_dir = roots["xen-utils-4.17"] / XEN_BIN.lstrip("/")
    xenstore = roots["xenstore-utils"] / "usr/bin/xenstore"
    tools = [bin_dir / name for name in XEN_TOOLS]
    for path in tools + [xenstore]:
        if not path.is_file():
            raise TargetSetupError(f"{path} is missing from the unpacked toolstack packages")
    lib_dirs = sorted({p.parent for root in roots.values()
                       for p in root.glob("usr/lib/**/lib*.so*")})
    libs = shared_libraries(tools + [xenstore], lib_dirs)
    for soname in DLOPENED_LIBS:
        found = [d / soname for d in HOST_LIB_DIRS if (d / soname).exists()]
        if not found:
            raise TargetSetupError(f"{soname} not found in {', '.join(map(str, HOST_LIB_DIRS))}")
        libs[soname] = found[0]
    modules_dir = packages.linux_modules_dir()
    modules = modules_in_load_order(modules_dir, DOM0_MODULES)
    domu_initrd = build_domu_initramfs(workdir, build_marker(workdir))

    tree = _Tree(busybox_initramfs(packages.busybox_static(),
                                   (HERE / "dom0-init.sh").read_text()))
    for soname, host in sorted(libs.items()):
        if soname.startswith("ld-linux"):
            tree.file("/lib64/" + soname, host.read_bytes(), 0o755)
        else:
            tree.file("/lib/x86_64-linux-gnu/" + soname, host.read_bytes(), 0o755)
    for tool in tools:
        tree.file(f"{XEN_BIN}/{tool.name}", tool.read_bytes(), 0o755)
    tree.file("/usr/bin/xenstore", xenstore.read_bytes(), 0o755)
    for name in XENSTORE_NAMES:
        tree.symlink(f"/usr/bin/{name}", "xenstore")
    common = roots["xen-utils-common"]
    for conf in ("etc/xen/xl.conf", "etc/xen/oxenstored.conf"):
        tree.file("/" + conf, (common / conf).read_bytes())
    guest_modules = []
    for ko in modules:
        guest_modules.append(f"/lib/modules/{ko.name}")
        tree.file(guest_modules[-1], ko.read_bytes())
    tree.file("/etc/xenpte-modules.txt", ("\n".join(guest_modules) + "\n").encode())
    tree.file("/domu/vmlinuz", packages.linux_kernel().read_bytes())
    tree.file("/domu/initrd.cpio", domu_initrd.read_bytes())
    for name, kind, cfg in ((DOMU_NAME, "pv", "domu.cfg"), (PVH_NAME, "pvh", "pvh.cfg")):
        tree.file(f"/etc/xen/{cfg}",
                  domu_config(name, kind, "/domu/vmlinuz", "/domu/initrd.cpio").encode())
    tree.file("/etc/xenpte.conf", (f"DOMU_NAME={DOMU_NAME}\nPVH_NAME={PVH_NAME if pvh else ''}\n"
                                   f"XEN_BIN={XEN_BIN}\nDISK=/dev/vda\n").encode())
    path = workdir / "dom0-initramfs.cpio"
    path.write_bytes(tree.archive.finish())
    return path


# -- reading the results ----------------------------------------------------------------------

def _unpack_disk(disk: Path, dest: Path) -> None:
    """Extract the tar dom0 wrote at the start of ``disk`` (regular files only, flat names)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(disk, mode="r:") as tar:
        for member in tar:
            name = Path(member.name).name
            if not member.isfile() or not name or name.startswith("."):
                continue
            src = tar.extractfile(member)
            with open(dest / name, "wb") as f:
                shutil.copyfileobj(src, f, 1 << 20)


def _parse_marker(console: str) -> Marker:
    m = re.search(r"XENPTE-MARKER va=0x([0-9a-f]+) pfn=0x([0-9a-f]+) head=([0-9a-f]+)", console)
    if m is None:
        raise QemuError(f"no marker line in the domU console log: {console[-1500:]!r}")
    return Marker(int(m.group(1), 16), int(m.group(2), 16), bytes.fromhex(m.group(3)))


def parse_xenctx(text: str) -> Dict[str, int]:
    """Return register name -> value from ``xenctx -a`` output (``name: hex`` pairs, lower case).

    Segment lines such as ``gs: 0000 @ base/base`` give only the selector.
    """
    regs: Dict[str, int] = {}
    for name, value in re.findall(r"\b([a-z][a-z0-9]*): +([0-9a-f]{4,16})\b", text):
        regs.setdefault(name, int(value, 16))
    return regs


def parse_xenctx_memory(text: str) -> Tuple[int, bytes]:
    """Return ``(VA, bytes)`` of a ``xenctx -m VA`` dump (lines of little-endian 64-bit words).

    :raises ValueError: if the text holds no "Memory (address ...)" header.
    """
    m = re.search(r"Memory \(address ([0-9a-f]+)\):\n(.*)", text, re.DOTALL)
    if m is None:
        raise ValueError(f"no xenctx memory dump in {text[:200]!r}")
    words = re.findall(r"\b[0-9a-f]{16}\b", m.group(2))
    return int(m.group(1), 16), b"".join(struct.pack("<Q", int(w, 16)) for w in words)


def parse_xenctx_code(text: str) -> Tuple[int, bytes, int]:
    """Return ``(rip, code bytes, index of the byte at rip)`` from xenctx's "Code" line."""
    m = re.search(r"Code \(instr addr ([0-9a-f]+)\)\n([^\n]*)", text)
    if m is None:
        raise ValueError("no Code line in the xenctx output")
    tokens = m.group(2).split()
    at = next(i for i, tok in enumerate(tokens) if tok.startswith("<"))
    return int(m.group(1), 16), bytes(int(tok.strip("<>"), 16) for tok in tokens), at


def generate(workdir: Path, timeout: float = 600.0, pvh: bool = False) -> XlDumps:
    """Boot Xen + dom0, make the domU, dump it twice, and return what came back.

    QEMU is killed (by pid) before this returns, whatever happens.

    :param workdir: where images, the serial log, the disk and the unpacked results go.
    :param timeout: seconds from QEMU start to dom0's done line.
    :param pvh: afterwards also boot the same kernel as a PVH domU (an HVM container: Xen uses
        the SVM + NPT that QEMU TCG offers) and dump it paused (``pvh-*`` files, HVM format).
        Off by default: that one ``xl dump-core`` takes ~200 s here.
    :raises QemuError: if dom0 reports a failed step (its step log is in the message).
    """
    started = time.monotonic()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    initramfs = build_dom0_initramfs(workdir, pvh)
    disk = workdir / "results.disk"
    with open(disk, "wb") as f:  # sparse: room for three dumps and the small files
        f.truncate(((3 if pvh else 2) * DOMU_MEMORY_MB + 64) << 20)
    built = time.monotonic()
    drive = ["-drive", f"file={disk},format=raw,if=virtio,cache=unsafe"]
    ready = f"{DONE}|{FAILED}.*"
    with boot_xen(workdir, dom0_mem=DOM0_MEMORY, initramfs=initramfs, extra_args=drive,
                  ready=ready, timeout=timeout) as guest:
        qemu_seconds = guest.boot_seconds
        if FAILED in guest.vm.serial_text():
            time.sleep(3)  # let dom0 print its logs after the failure line
        serial = guest.vm.serial_text()
        if FAILED in serial:
            raise QemuError(f"dom0 reported a failed step; serial log tail: {serial[-4000:]}")
    _unpack_disk(disk, workdir / "out")
    disk.unlink()  # 270-400 MB, nearly all of it the dumps again
    result = load(workdir)
    result.seconds = {"build": built - started, "qemu": qemu_seconds,
                      "total": time.monotonic() - started}
    return result


def load(workdir: Path) -> XlDumps:
    """Read the results :func:`generate` left in ``workdir`` (``out/`` and ``serial.log``).

    :raises QemuError: if a file dom0 should have written is missing.
    """
    workdir = Path(workdir)
    files = {p.name: p for p in (workdir / "out").iterdir() if p.is_file()}
    for name in ("running.core", "paused.core", "xl-list-l.json", "domu-console.log", "domid"):
        if name not in files:
            raise QemuError(f"dom0's results lack {name} (have {sorted(files)})")
    texts = {name: path.read_text(errors="replace") for name, path in files.items()
             if not name.endswith(".core")}
    console = texts["domu-console.log"].replace("\r\n", "\n")
    kallsyms = {name: int(addr, 16) for addr, name in
                re.findall(r"XENPTE-KALLSYMS ([0-9a-f]+) \w (\w+)", console)}
    serial = (workdir / "serial.log").read_text(errors="replace")
    return XlDumps(
        workdir=workdir, running=files["running.core"], paused=files["paused.core"],
        pvh=files.get("pvh-paused.core"), domid=int(texts["domid"]),
        xl_list=json.loads(texts["xl-list-l.json"]), texts=texts,
        console=console, marker=_parse_marker(console), kallsyms=kallsyms, serial=serial)


if __name__ == "__main__":
    import sys
    import tempfile

    args = [a for a in sys.argv[1:] if a != "--pvh"]
    out_dir = Path(args[0]) if args else Path(tempfile.mkdtemp(prefix="xlcore-"))
    result = generate(out_dir, pvh="--pvh" in sys.argv)
    print(f"results in {result.workdir}: domid {result.domid}, marker {result.marker}")
    print(f"kallsyms {({k: hex(v) for k, v in result.kallsyms.items()})}")
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
