"""Boot Debian's Linux 6.1 under QEMU TCG with a busybox initramfs: the live Linux test target.

``-cpu max`` gives 5-level paging with SMEP, SMAP and PKE on (CR4 0x751ef0 measured); ``-cpu
max,la57=off`` gives 4-level paging with the same protections. There is no root filesystem: the
initramfs's ``/init`` (:mod:`tests.targets.initramfs`) mounts proc/sys/devtmpfs, prints
:data:`~tests.targets.initramfs.READY_MARKER` and keeps a ``sleep`` loop running, so at any stop the
kernel has real processes. Measured here: ready in ~4 s from QEMU start.

Use from a session-scoped fixture (one boot per pytest session)::

    from targets.linux import boot_linux

    @pytest.fixture(scope="session")
    def linux5(tmp_path_factory):
        with boot_linux(tmp_path_factory.mktemp("linux5"), la57=True) as guest:
            yield guest          # guest.vm is a tests.targets.qemu.Qemu; killed on exit

Failure modes: :class:`~tests.targets.packages.TargetSetupError` (no apt, package missing),
:class:`~tests.targets.qemu.QemuSetupError` (no QEMU), :class:`~tests.targets.qemu.QemuError`
(QEMU died, or no ready marker within ``timeout``; the message carries the serial log's tail).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

from . import packages
from .initramfs import READY_MARKER, write_busybox_initramfs
from .qemu import Qemu

__all__ = ["LinuxGuest", "boot_linux", "linux_cpu_model"]

# The kernel's own console on the first serial port; panic=-1 plus QEMU's -no-reboot turns a
# panic into a QEMU exit, which wait_for_serial reports at once instead of timing out.
KERNEL_ARGS = "console=ttyS0 panic=-1"


@dataclass
class LinuxGuest:
    """A running Linux guest.

    :param vm: the QEMU process (monitor, gdb port, serial log).
    :param la57: True when booted with LA57 offered (5-level paging).
    :param boot_seconds: from QEMU start to the ready marker on the console.
    :param kernel: the bzImage booted; :param initrd: the initramfs booted.
    """

    vm: Qemu
    la57: bool
    boot_seconds: float
    kernel: Path
    initrd: Path


def linux_cpu_model(la57: bool) -> str:
    """Return the ``-cpu`` model: ``max`` (5-level capable) or ``max,la57=off`` (4-level)."""
    return "max" if la57 else "max,la57=off"


@contextmanager
def boot_linux(workdir: Path, *, la57: bool = True, memory: str = "512M",
               init_script: Optional[str] = None, extra_args: Sequence[str] = (),
               kernel_args: str = KERNEL_ARGS, timeout: float = 120.0) -> Iterator[LinuxGuest]:
    """Boot Linux and yield it once its ``/init`` has printed the ready marker.

    :param workdir: where the initramfs, ``serial.log`` and ``qemu.stderr`` are written.
    :param la57: offer 5-level paging (Linux then uses it).
    :param memory: guest RAM (``-m``).
    :param init_script: a custom ``/init`` (it must print ``READY_MARKER`` on /dev/console).
    :param extra_args: more QEMU arguments (drives, ``-smp`` ...).
    :param timeout: seconds to wait for the marker.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    kernel = packages.linux_kernel()
    initrd = write_busybox_initramfs(workdir / "initramfs.cpio.gz", packages.busybox_static(),
                                     init_script)
    args = ["-kernel", str(kernel), "-initrd", str(initrd), "-append", kernel_args, *extra_args]
    with Qemu(args, memory=memory, cpu=linux_cpu_model(la57), workdir=workdir) as vm:
        vm.wait_for_serial(READY_MARKER, timeout=timeout)
        yield LinuxGuest(vm, la57, time.monotonic() - vm.started_at, kernel, initrd)
