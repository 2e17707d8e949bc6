"""Fetch the Debian packages the real-target tests boot, without installing anything.

Each package is downloaded with ``apt-get download`` and unpacked with ``dpkg -x`` into a cache
folder (``$XENPTE_CACHE``, default: the shared test cache's ``debs``, tests/targets/cachedir.py); nothing touches the system's package
database or ``/boot``. A second call finds the unpacked tree and only asks ``apt-cache`` which
version is current, so it costs a few tens of milliseconds.

Layout of the cache::

    <cache>/<name>_<version>_<arch>.deb     the downloaded package
    <cache>/root/<name>_<version>/          its unpacked tree (complete once ``.unpacked`` exists)
    <cache>/xen-<version>.elf               Xen's gunzipped multiboot image

Failure modes: :class:`TargetSetupError` when ``apt-get``/``apt-cache``/``dpkg`` is missing, a
package is unknown to apt, a download or unpack fails, or an expected file is not in a package.

Run ``python3 -m tests.targets.packages`` from the repository root to fetch everything and print
the paths.
"""

from __future__ import annotations

import fcntl
import gzip
import os
import re
import shutil
import subprocess
from pathlib import Path
from contextlib import contextmanager
from typing import Dict, Iterable, Iterator, List, Optional

from .cachedir import cache_root

__all__ = [
    "TargetSetupError",
    "busybox_static",
    "cache_dir",
    "candidate_version",
    "kernel_package",
    "linux_kernel",
    "linux_modules_dir",
    "unpack",
    "xen_hypervisor",
]

REPO = Path(__file__).resolve().parents[2]
KERNEL_META = "linux-image-amd64"
XEN_PACKAGE = "xen-hypervisor-4.17-amd64"
BUSYBOX_PACKAGE = "busybox-static"
# A marker written last, so an interrupted unpack is redone rather than trusted.
UNPACKED_MARK = ".unpacked"


class TargetSetupError(RuntimeError):
    """The machine lacks something a real-target test needs (a tool, a package, a file)."""


def cache_dir() -> Path:
    """Return the package cache folder (created if missing).

    :returns: ``$XENPTE_CACHE`` when set, else the shared cache's ``debs`` (tests/cachedir.py).
    """
    if not os.environ.get("XENPTE_CACHE"):
        return cache_root("debs")
    path = Path(os.environ["XENPTE_CACHE"])
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def _cache_lock() -> Iterator[None]:
    """Hold an exclusive lock on the cache: test runs sharing a checkout may fetch at once."""
    with open(cache_dir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(argv: List[str], cwd: Optional[Path] = None) -> str:
    """Run one apt/dpkg command and return its stdout.

    :raises TargetSetupError: if the program is missing or exits non-zero (stderr is quoted).
    """
    if shutil.which(argv[0]) is None:
        raise TargetSetupError(
            f"{argv[0]} not found: the real-target tests fetch Debian packages with apt-get "
            f"download + dpkg -x and need a Debian/Ubuntu host with apt")
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise TargetSetupError(f"{' '.join(argv)} failed (exit {proc.returncode}): "
                               f"{proc.stderr.strip()[-800:]}")
    return proc.stdout


# Candidate versions found so far in this process: apt's lists do not change under a test session,
# and each apt-cache run costs ~0.4 s here, so one run answers for all the packages we boot.
_versions: Dict[str, str] = {}
# Meta package -> the versioned package its candidate depends on exactly.
_pinned_by: Dict[str, str] = {}


def _learn_versions(packages: Iterable[str]) -> None:
    """Record the candidate versions of ``packages`` (one ``apt-cache show`` run).

    :raises TargetSetupError: if apt knows one of them not at all.
    """
    # --no-all-versions: only the candidate's record, i.e. the version apt-get would fetch.
    out = _run(["apt-cache", "show", "--no-all-versions", *packages])
    for record in out.split("\n\n"):
        fields = dict(re.findall(r"^([\w-]+): (.*)$", record, re.MULTILINE))
        if "Package" in fields and "Version" in fields:
            _versions[fields["Package"]] = fields["Version"]
            # The meta package pins its kernel exactly: "Depends: linux-image-X (= V)".
            for name, version in re.findall(r"(linux-image-\d\S*) \(= ([^)]+)\)",
                                            fields.get("Depends", "")):
                _versions[name] = version
                _pinned_by.setdefault(fields["Package"], name)


def candidate_version(package: str) -> str:
    """Return the version apt would download for ``package``.

    :raises TargetSetupError: if apt knows no installable version (run ``apt-get update``?).
    """
    if package not in _versions:
        _learn_versions([package])
    if package not in _versions:
        raise TargetSetupError(f"apt knows no installable version of {package} (is the Debian "
                               f"archive in sources.list, and apt-get update run?)")
    return _versions[package]


def kernel_package() -> str:
    """Return the versioned kernel package ``linux-image-amd64`` depends on.

    :returns: e.g. ``"linux-image-6.1.0-56-amd64"``.
    :raises TargetSetupError: if the dependency cannot be found.
    """
    if KERNEL_META not in _pinned_by:
        _learn_versions([KERNEL_META, BUSYBOX_PACKAGE, XEN_PACKAGE])
    if KERNEL_META not in _pinned_by:
        raise TargetSetupError(f"{KERNEL_META} names no exact linux-image-* dependency")
    return _pinned_by[KERNEL_META]


def _deb_file(package: str, version: str) -> Path:
    """Return the cached .deb of ``package`` at ``version``, downloading it if absent."""
    cache = cache_dir()
    # apt-get download names files NAME_VERSION_ARCH.deb with ':' in the epoch escaped as %3a.
    pattern = f"{package}_{version.replace(':', '%3a')}_*.deb"
    found = sorted(cache.glob(pattern))
    if not found:
        _run(["apt-get", "download", "-q", f"{package}={version}"], cwd=cache)
        found = sorted(cache.glob(pattern))
    if not found:
        raise TargetSetupError(f"apt-get download {package}={version} left no {pattern} in {cache}")
    return found[0]


def unpack(package: str) -> Path:
    """Download ``package`` (current candidate version) and unpack it, once.

    :param package: a Debian binary package name.
    :returns: the root of the unpacked tree (contains e.g. ``boot/``, ``usr/``).
    :raises TargetSetupError: on any apt/dpkg failure.
    """
    version = candidate_version(package)
    root = cache_dir() / "root" / f"{package}_{version.replace(':', '%3a')}"
    if (root / UNPACKED_MARK).exists():
        return root
    with _cache_lock():
        if (root / UNPACKED_MARK).exists():  # another run finished it while we waited
            return root
        deb = _deb_file(package, version)
        if root.exists():
            shutil.rmtree(root)  # a half-done unpack from an interrupted run
        root.mkdir(parents=True)
        _run(["dpkg", "-x", str(deb), str(root)])
        (root / UNPACKED_MARK).write_text(f"{deb.name}\n")
    return root


def _one(root: Path, pattern: str, package: str) -> Path:
    """Return the single file matching ``pattern`` under ``root``.

    :raises TargetSetupError: if none (or several) match.
    """
    found = sorted(root.glob(pattern))
    if len(found) != 1:
        raise TargetSetupError(f"expected one {pattern} in package {package}, found {len(found)}")
    return found[0]


def linux_kernel() -> Path:
    """Return the path of Debian's current amd64 kernel image (a bzImage), fetching it once."""
    package = kernel_package()
    return _one(unpack(package), "boot/vmlinuz-*", package)


def linux_modules_dir() -> Path:
    """Return the kernel's ``lib/modules/<release>`` folder (for initramfs builders needing .ko)."""
    package = kernel_package()
    return _one(unpack(package), "lib/modules/*", package)


def busybox_static() -> Path:
    """Return the path of the statically linked busybox binary, fetching it once."""
    return _one(unpack(BUSYBOX_PACKAGE), "bin/busybox", BUSYBOX_PACKAGE)


def xen_hypervisor() -> Path:
    """Return Xen 4.17 as an ELF32 multiboot image QEMU's ``-kernel`` can boot.

    The package ships ``boot/xen-4.17-amd64.gz``; QEMU's multiboot loader needs it uncompressed.

    :returns: ``<cache>/xen-<version>.elf``.
    """
    version = candidate_version(XEN_PACKAGE)
    target = cache_dir() / f"xen-{version.replace(':', '%3a')}.elf"
    if not target.exists():
        compressed = _one(unpack(XEN_PACKAGE), "boot/xen-4.17-amd64.gz", XEN_PACKAGE)
        with _cache_lock():
            partial = target.with_suffix(".part")
            with gzip.open(compressed, "rb") as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.replace(target)  # atomic: a reader never sees half a file
    return target


if __name__ == "__main__":
    kernel_package()  # one apt-cache run for all three
    for label, getter in (("kernel", linux_kernel), ("busybox", busybox_static),
                          ("xen", xen_hypervisor)):
        print(f"{label}: {getter()}")
