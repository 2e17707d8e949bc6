"""Boot Debian's Xen 4.17 with Debian's Linux 6.1 as a 64-bit PV dom0 under QEMU TCG.

QEMU's multiboot loader takes Xen's ELF32 image as ``-kernel`` and the dom0 kernel and initramfs
as two modules in ``-initrd`` (``'vmlinuz ARGS,initramfs'``: a comma separates modules, the first
word of each is the file). Xen prints on COM1 (our serial log), dom0 on ``hvc0``, which Xen copies
to COM1 too, so the ready marker of dom0's ``/init`` shows up in the same log.

Why ``-cpu max,-smap``: QEMU 7.2's TCG checks SMAP on the stack reads of an ``iretq`` executed at
CPL3 as if they were supervisor accesses (fixed upstream in 2024, "target/i386: Allow IRET from user
mode to user mode with SMAP"). A 64-bit PV kernel runs at CPL3 and Xen returns to it with
``iretq`` there, so with SMAP offered dom0 dies at boot (``d0v0 Unhandled: vec 14, #PF[0001]`` in
``create_bounce_frame``). Xen's ``smap=hvm`` would also avoid it; hiding SMAP keeps Xen's defaults.

Measured here: dom0 userspace in ~6.5 s from QEMU start with ``-m 2048M`` and 256 MiB dom0.

Use from a session-scoped fixture (one boot per pytest session)::

    from targets.xen import boot_xen

    @pytest.fixture(scope="session")
    def xen_dom0(tmp_path_factory):
        with boot_xen(tmp_path_factory.mktemp("xen")) as guest:
            yield guest          # guest.vm is a tests.targets.qemu.Qemu; killed on exit

For other dom0 payloads (e.g. a toolstack for ``xl dump-core``) pass ``init_script`` and
``extra_files`` (guest path -> bytes) or a ready-made ``initramfs``, ``extra_args`` for QEMU (a
second drive), ``xen_args`` for Xen's command line and ``dom0_args`` for the dom0 kernel.

Failure modes: :class:`~tests.targets.packages.TargetSetupError` (no apt, package missing, a
path QEMU cannot take in ``-initrd``), :class:`~tests.targets.qemu.QemuSetupError` (no QEMU),
:class:`~tests.targets.qemu.QemuError` (QEMU died, or no ready marker within ``timeout``; the
message carries the serial log's tail, where Xen's panic text is).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from . import packages
from .initramfs import READY_MARKER, write_busybox_initramfs
from .packages import TargetSetupError
from .qemu import Qemu

__all__ = ["XEN_CPU_MODEL", "XenGuest", "boot_xen", "xen_command_line", "xen_qemu_args"]

# See the module docstring: SMAP hidden from Xen because of QEMU 7.2's CPL3 iretq SMAP check.
XEN_CPU_MODEL = "max,-smap"
# noreboot: a panic stays on screen (in the log) instead of rebooting into a loop.
XEN_BASE_ARGS = ("console=com1", "com1=115200,8n1", "loglvl=all", "guest_loglvl=all", "noreboot")
DOM0_BASE_ARGS = "console=hvc0 earlyprintk=xen panic=-1"


@dataclass
class XenGuest:
    """A running Xen with its dom0.

    :param vm: the QEMU process (monitor, gdb port, serial log).
    :param boot_seconds: from QEMU start to dom0's ready marker.
    :param xen: Xen's multiboot image; :param kernel: dom0's bzImage; :param initrd: its initramfs.
    :param xen_cmdline: Xen's command line; :param dom0_mem: dom0's memory as given to Xen.
    """

    vm: Optional[Qemu]
    boot_seconds: float
    xen: Path
    kernel: Path
    initrd: Path
    xen_cmdline: str
    dom0_mem: str


def xen_command_line(dom0_mem: str, xen_args: Sequence[str] = ()) -> str:
    """Return Xen's command line: COM1 console, full logging, fixed dom0 memory, ``xen_args``."""
    # "X,max:X" pins dom0 at X: no ballooning, so its page tables stay put between walks.
    return " ".join([*XEN_BASE_ARGS, f"dom0_mem={dom0_mem},max:{dom0_mem}", *xen_args])


def _module(path: Path, args: str = "") -> str:
    """Return one multiboot module for ``-initrd``, refusing paths QEMU would split."""
    text = str(path)
    if "," in text or " " in text:
        raise TargetSetupError(f"{text}: QEMU's -initrd splits multiboot modules at ',' and their "
                               f"arguments at ' '; use a cache/work path without either")
    return f"{text} {args}".strip()


@contextmanager
def boot_xen(workdir: Path, *, memory: str = "2048M", dom0_mem: str = "256M",
             init_script: Optional[str] = None, extra_files: Optional[Dict[str, bytes]] = None,
             initramfs: Optional[Path] = None, extra_args: Sequence[str] = (),
             xen_args: Sequence[str] = (), dom0_args: str = "", ready: str = READY_MARKER,
             timeout: float = 180.0, xen: Optional[Path] = None) -> Iterator[XenGuest]:
    """Boot Xen + PV dom0 and yield once dom0's ``/init`` has printed ``ready``.

    :param workdir: where the initramfs, ``serial.log`` and ``qemu.stderr`` are written.
    :param memory: machine RAM (``-m``); Xen keeps what dom0 does not get.
    :param dom0_mem: dom0's fixed memory (Xen's ``dom0_mem``).
    :param init_script: dom0's ``/init`` (default: mount, print the marker, sleep loop).
    :param extra_files: more files for the default busybox initramfs.
    :param initramfs: a ready-made initramfs instead (then ``init_script``/``extra_files`` unused).
    :param extra_args: more QEMU arguments; :param xen_args: more Xen options;
    :param dom0_args: more dom0 kernel options.
    :param ready: the console text that says dom0 is up.
    :param timeout: seconds to wait for ``ready``.
    :param xen: Xen's multiboot image (default: Debian's, :func:`packages.xen_hypervisor`).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if initramfs is None:
        initramfs = write_busybox_initramfs(workdir / "dom0-initramfs.cpio.gz",
                                            packages.busybox_static(), init_script, extra_files)
    args, guest = xen_qemu_args(initramfs, dom0_mem=dom0_mem, extra_args=extra_args,
                                xen_args=xen_args, dom0_args=dom0_args, xen=xen)
    with Qemu(args, memory=memory, cpu=XEN_CPU_MODEL, workdir=workdir) as vm:
        vm.wait_for_serial(ready, timeout=timeout)
        guest.vm, guest.boot_seconds = vm, time.monotonic() - vm.started_at
        yield guest


def xen_qemu_args(initramfs: Path, *, dom0_mem: str = "256M", extra_args: Sequence[str] = (),
                  xen_args: Sequence[str] = (), dom0_args: str = "",
                  xen: Optional[Path] = None) -> Tuple[List[str], XenGuest]:
    """QEMU's arguments (besides memory and CPU model) that boot Xen with dom0, and the
    :class:`XenGuest` to fill in (``vm`` None, ``boot_seconds`` 0): what :func:`boot_xen` runs,
    and what a machine restored from a migration stream of it must be started with."""
    xen = Path(xen) if xen is not None else packages.xen_hypervisor()
    kernel = packages.linux_kernel()
    cmdline = xen_command_line(dom0_mem, xen_args)
    modules = ",".join([_module(kernel, f"{DOM0_BASE_ARGS} {dom0_args}"), _module(initramfs)])
    args = ["-kernel", str(xen), "-append", cmdline, "-initrd", modules, *extra_args]
    return args, XenGuest(None, 0.0, xen, kernel, Path(initramfs), cmdline, dom0_mem)
