"""Build initramfs images for the test guests: a newc cpio writer and a busybox-static builder.

This machine has no ``cpio`` binary, and the format is simple: each member is a 110-byte ASCII
header (magic ``070701`` then 13 eight-digit hex fields), the NUL-terminated name padded to a
multiple of 4 bytes, then the data padded likewise; a member named ``TRAILER!!!`` ends the archive
(the kernel's reader: ``init/initramfs.c``; format: cpio(5), "New ASCII Format").

The default guest image holds only busybox and an ``/init`` that mounts proc, sysfs and devtmpfs,
prints a ready marker on the console, and then keeps userspace busy with a ``sleep`` loop, so the
kernel is really scheduling processes when a test stops it.

Failure modes: :class:`ValueError` for a bad member (relative or duplicate path, missing parent).
"""

from __future__ import annotations

import gzip
import stat
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional

__all__ = ["READY_MARKER", "NewcArchive", "busybox_initramfs", "default_init_script",
           "write_busybox_initramfs", "write_initramfs"]

# Printed by /init once the guest is up; the launchers wait for this line on the serial console.
READY_MARKER = "XENPTE-GUEST-READY"
NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"


def _pad4(length: int) -> bytes:
    """Return the NUL padding that brings ``length`` bytes up to a multiple of 4."""
    return b"\0" * (-length % 4)


class NewcArchive:
    """An in-memory newc ("SVR4 without CRC") cpio archive, built member by member.

    Paths are absolute guest paths (``/bin/sh``); each parent directory must be added first, as the
    kernel creates members in archive order. All members are owned by root, mtime 0, so the same
    inputs always give the same bytes.
    """

    def __init__(self) -> None:
        self._chunks: List[bytes] = []
        self._paths: Dict[str, int] = {}  # path -> mode, to check parents and duplicates
        self._next_inode = 1
        self._closed = False

    def _add(self, path: str, mode: int, data: bytes = b"", rdev: tuple = (0, 0)) -> None:
        """Append one member.

        :param path: absolute guest path.
        :param mode: full st_mode (type and permission bits).
        :param data: file contents, or a symlink's target.
        :param rdev: ``(major, minor)`` for device nodes.
        :raises ValueError: for a relative or duplicate path, or a parent not added yet.
        """
        if self._closed:
            raise ValueError("archive already finished")
        posix = PurePosixPath(path)
        if not posix.is_absolute() or path in self._paths:
            raise ValueError(f"bad or duplicate initramfs path {path!r}")
        parent = str(posix.parent)
        if parent != "/" and not stat.S_ISDIR(self._paths.get(parent, 0)):
            raise ValueError(f"initramfs path {path!r}: add directory {parent!r} first")
        self._paths[path] = mode
        self._append(path.lstrip("/"), mode, data, rdev, nlink=2 if stat.S_ISDIR(mode) else 1)

    def _append(self, name: str, mode: int, data: bytes, rdev: tuple, nlink: int) -> None:
        """Encode a header, name and data (the fields of cpio(5) "New ASCII Format", in order)."""
        name_bytes = name.encode() + b"\0"
        fields = (self._next_inode, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(name_bytes), 0)  # ino mode uid gid nlink mtime size dev(2) rdev(2) namesize check
        self._next_inode += 1
        header = NEWC_MAGIC + b"".join(b"%08x" % value for value in fields)
        self._chunks += [header, name_bytes, _pad4(len(header) + len(name_bytes)),
                         data, _pad4(len(data))]

    def directory(self, path: str, perm: int = 0o755) -> None:
        """Add a directory."""
        self._add(path, stat.S_IFDIR | perm)

    def directories(self, *paths: str) -> None:
        """Add several directories in the order given."""
        for path in paths:
            self.directory(path)

    def file(self, path: str, data: bytes, perm: int = 0o644) -> None:
        """Add a regular file with contents ``data``."""
        self._add(path, stat.S_IFREG | perm, data)

    def symlink(self, path: str, target: str) -> None:
        """Add a symbolic link at ``path`` pointing at ``target``."""
        self._add(path, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, path: str, major: int, minor: int, perm: int = 0o600) -> None:
        """Add a character device node (e.g. ``/dev/console`` = 5:1)."""
        self._add(path, stat.S_IFCHR | perm, rdev=(major, minor))

    def tree(self, host_dir: Path, dest: str) -> None:
        """Add a host directory tree under guest path ``dest`` (created; its parent must exist).

        Regular files, directories and symlinks are copied; other file types are skipped.
        """
        self.directory(dest)
        for child in sorted(Path(host_dir).iterdir()):
            guest = f"{dest.rstrip('/')}/{child.name}"
            if child.is_symlink():
                self.symlink(guest, str(child.readlink()))
            elif child.is_dir():
                self.tree(child, guest)
            elif child.is_file():
                self.file(guest, child.read_bytes(), child.stat().st_mode & 0o7777)

    def finish(self) -> bytes:
        """Append the trailer and return the archive's bytes (the archive is then closed)."""
        if not self._closed:
            self._append(TRAILER, 0, b"", (0, 0), nlink=1)
            self._closed = True
        return b"".join(self._chunks)


def default_init_script(marker: str = READY_MARKER, before_ready: str = "") -> str:
    """Return the default ``/init``: mount the pseudo filesystems, announce, idle in userspace.

    :param marker: the line printed on ``/dev/console`` once the mounts are done.
    :param before_ready: shell lines run just before the marker (e.g. to report guest facts on
        the console for the host to check).
    """
    return f"""#!/bin/sh
# Test guest init: no root filesystem, everything lives in this initramfs.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
{before_ready}
echo "{marker}" > /dev/console
# Keep userspace scheduling: a process that wakes every second (not a busy loop, which would
# steal host CPU from the other guests and tests under TCG).
while true; do sleep 1; done
"""


def busybox_initramfs(busybox: Path, init_script: Optional[str] = None,
                      extra: Optional[Dict[str, bytes]] = None) -> NewcArchive:
    """Return an (unfinished) archive with busybox, the base directories and ``/init``.

    Callers may add more members (modules, tools) before :meth:`NewcArchive.finish`.

    :param busybox: path of a statically linked busybox on the host.
    :param init_script: the text of ``/init`` (default :func:`default_init_script`).
    :param extra: guest path -> contents of further regular files (their directories must be
        among the base ones: ``/bin /dev /etc /proc /root /run /sbin /sys /tmp /var``).
    """
    archive = NewcArchive()
    archive.directories("/bin", "/dev", "/etc", "/proc", "/root", "/run", "/sbin", "/sys", "/tmp",
                        "/var")
    # The kernel opens /dev/console for init's stdio *before* init could mount devtmpfs.
    archive.char_device("/dev/console", 5, 1)
    archive.file("/bin/busybox", Path(busybox).read_bytes(), 0o755)
    archive.symlink("/bin/sh", "busybox")  # for the #! line of /init
    archive.file("/init", (init_script or default_init_script()).encode(), 0o755)
    for path, data in sorted((extra or {}).items()):
        archive.file(path, data, 0o755 if data.startswith(b"#!") else 0o644)
    return archive


def write_initramfs(dest: Path, archive: NewcArchive) -> Path:
    """Finish ``archive`` and write it gzip-compressed to ``dest`` (only when its bytes changed).

    :param dest: the file to write (e.g. ``<workdir>/initramfs.cpio.gz``).
    :returns: ``dest``.
    """
    # mtime=0 keeps the gzip bytes reproducible; level 6 takes well under a second for ~2 MB.
    packed = gzip.compress(archive.finish(), compresslevel=6, mtime=0)
    dest = Path(dest)
    if not dest.exists() or dest.read_bytes() != packed:
        partial = dest.with_name(dest.name + ".part")
        partial.write_bytes(packed)
        partial.replace(dest)
    return dest


def write_busybox_initramfs(dest: Path, busybox: Path, init_script: Optional[str] = None,
                            extra: Optional[Dict[str, bytes]] = None) -> Path:
    """Write a gzip-compressed busybox initramfs (see :func:`busybox_initramfs`) to ``dest``.

    For more than a few files (kernel modules, a toolstack), build the archive with
    :func:`busybox_initramfs`, add trees with :meth:`NewcArchive.tree`, then
    :func:`write_initramfs`.

    :returns: ``dest``.
    """
    return write_initramfs(dest, busybox_initramfs(busybox, init_script, extra))
