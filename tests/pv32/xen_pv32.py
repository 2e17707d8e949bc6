"""Build the PV32 test target: Xen 4.17 with ``CONFIG_PV32=y`` and our 32-bit PAE PV kernel.

Debian 12's ``xen-hypervisor-4.17-amd64`` is built without ``CONFIG_PV32`` and panics on a 32-bit
PV dom0, so Xen is rebuilt from Debian's own source package: ``apt-get source xen``, Debian's
hypervisor config (``debian/xen-kconfig`` + ``olddefconfig``) with ``CONFIG_PV32=y`` and
``CONFIG_DEBUG_INFO=y`` added (the latter is offered only under ``CONFIG_EXPERT``, Kconfig.debug),
a release build of the hypervisor alone (``make -C xen``, no tools). The same build serves the PV32
target and the crashed-host target (tests/targets/xen_crash.py), which needs ``xen-syms`` with
DWARF. The guest kernel is assembled from ``guest/pv32.s`` with GNU as and ld.

Both products are cached under ``$XENPTE_PV32_CACHE`` (default: the shared test cache's ``pv32``):
Xen in ``xen-<debian version>-<hash of CONFIG_DELTA>/`` (``xen.elf``, ``xen-syms``, ``config``,
``version``, ``build.log``), the guest keyed by a hash of its sources, so a CI run builds Xen once.

Side effect on the host: if apt knows no source package for ``xen``, a ``deb-src`` entry for the
release suite (``bookworm``; the security suite's sources may be missing from the mirror) is written
to ``/etc/apt/sources.list.d/gdb-xenpte-src.sources``, copying the URI of the machine's own
``deb`` entry, and ``apt-get update`` runs.

Failure modes: :class:`TargetSetupError` when a build tool (``bison``/``flex``, see
``.ci/apt-packages.txt``) or apt is missing, no Xen 4.17 source can be fetched, or a build step
fails (the log's tail is quoted; the full log stays in the cache).

Run ``python3 tests/pv32/xen_pv32.py`` to build both and print the paths and timings.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional

REPO = Path(__file__).resolve().parents[2]
try:
    from tests.targets.cachedir import cache_root
    from tests.targets.packages import TargetSetupError
except ImportError:  # run as a script: the repository root is not on sys.path yet
    sys.path.insert(0, str(REPO))
    from tests.targets.cachedir import cache_root
    from tests.targets.packages import TargetSetupError

__all__ = [
    "CONFIG_DELTA",
    "GUEST_DIR",
    "XenBuild",
    "build_guest",
    "build_xen",
    "build_xen_syms",
    "xen_build",
    "cache_dir",
    "ensure_deb_src",
    "guest_symbols",
    "xen_source_versions",
]

GUEST_DIR = Path(__file__).resolve().parent / "guest"
GUEST_SOURCES = ("pv32.s", "pv32.ld")
SRC_LIST = Path("/etc/apt/sources.list.d/gdb-xenpte-src.sources")
# The changes to Debian's hypervisor config: 32-bit PV guest support (xen/arch/x86/Kconfig), and
# DWARF in xen-syms (xen/Kconfig.debug: DEBUG_INFO sits inside "if DEBUG || EXPERT"; DEBUG would
# change Xen's behaviour, EXPERT only exposes options, whose defaults olddefconfig keeps).
CONFIG_DELTA = "CONFIG_PV32=y\nCONFIG_EXPERT=y\nCONFIG_DEBUG_INFO=y\n"
XEN_SERIES = "4.17"
# Tools the hypervisor-only build needs beyond the base image (gcc, make, dpkg-dev, python3):
# Xen's Kconfig is built from lexer.l/parser.y at configure time.
BUILD_TOOLS = ("bison", "flex", "gcc", "make", "dpkg-source", "as", "ld")


def cache_dir() -> Path:
    """Return the PV32 cache folder (created if missing).

    :returns: ``$XENPTE_PV32_CACHE`` when set, else the shared cache's ``pv32``
        (tests/cachedir.py).
    """
    if not os.environ.get("XENPTE_PV32_CACHE"):
        return cache_root("pv32")
    path = Path(os.environ["XENPTE_PV32_CACHE"])
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def _locked(name: str) -> Iterator[None]:
    """Hold an exclusive lock file in the cache, so parallel sessions build once."""
    with open(cache_dir() / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(argv: List[str], cwd: Optional[Path] = None, log: Optional[Path] = None,
         env: Optional[Dict[str, str]] = None) -> str:
    """Run a build command; return stdout, or append stdout+stderr to ``log`` if given.

    :raises TargetSetupError: if the program is missing or exits non-zero.
    """
    if shutil.which(argv[0]) is None:
        raise TargetSetupError(f"{argv[0]} not found: install it (see .ci/apt-packages.txt)")
    if log is None:
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
        tail = proc.stderr
    else:
        with open(log, "a") as out:
            out.write(f"$ {' '.join(argv)}\n")
            out.flush()
            proc = subprocess.run(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  text=True)
        tail = log.read_text(errors="replace")
    if proc.returncode != 0:
        where = f" (full log: {log})" if log else ""
        raise TargetSetupError(f"{' '.join(argv)} failed (exit {proc.returncode}){where}: "
                               f"{tail.strip()[-1500:]}")
    return proc.stdout if log is None else ""


def _check_tools() -> None:
    missing = [tool for tool in BUILD_TOOLS if shutil.which(tool) is None]
    if missing:
        raise TargetSetupError(
            f"missing build tools for the PV32 Xen rebuild: {', '.join(missing)} "
            f"(apt-get install --no-install-recommends bison flex gcc make dpkg-dev binutils)")


def xen_source_versions() -> List[str]:
    """Return the versions of Debian's ``xen`` source package apt knows, newest first.

    Only the ``XEN_SERIES`` (4.17) versions are returned; the list is empty without deb-src.
    """
    proc = subprocess.run(["apt-cache", "showsrc", "xen"], capture_output=True, text=True)
    versions = re.findall(r"^Version: (\S+)$", proc.stdout, re.M)
    versions = [v for v in versions if v.startswith(XEN_SERIES + ".")]
    if len(versions) > 1 and shutil.which("dpkg"):
        # dpkg knows Debian version ordering; a plain string sort gets "4.17.10" wrong
        import functools

        def compare(a: str, b: str) -> int:
            if a == b:
                return 0
            newer = subprocess.run(["dpkg", "--compare-versions", a, "gt", b]).returncode == 0
            return -1 if newer else 1
        versions = sorted(set(versions), key=functools.cmp_to_key(compare))
    return versions


def _release_codename() -> str:
    """Return the host's Debian codename (``bookworm``) from /etc/os-release."""
    text = Path("/etc/os-release").read_text()
    match = re.search(r"^VERSION_CODENAME=\"?(\w+)", text, re.M)
    if not match:
        raise TargetSetupError("cannot tell the Debian release from /etc/os-release")
    return match.group(1)


def _deb_entry(codename: str) -> Dict[str, str]:
    """Find the machine's own ``deb`` entry for the release suite (deb822 or one-line format).

    :returns: ``{"URIs": ..., "Signed-By": ...}`` (Signed-By may be absent).
    :raises TargetSetupError: if no entry for ``codename`` is configured.
    """
    apt = Path("/etc/apt")
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        if path == SRC_LIST:
            continue
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = dict(re.findall(r"^([\w-]+):\s*(.*)$", stanza, re.M))
            if "deb" in fields.get("Types", "").split() and \
                    codename in fields.get("Suites", "").split():
                return {k: fields[k] for k in ("URIs", "Signed-By") if k in fields}
    lists = [apt / "sources.list"] + sorted((apt / "sources.list.d").glob("*.list"))
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            match = re.match(r"^deb\s+(?:\[(.*?)\]\s+)?(\S+)\s+(\S+)\s", line)
            if match and match.group(3) == codename:
                entry = {"URIs": match.group(2)}
                signed = re.search(r"signed-by=(\S+)", match.group(1) or "")
                if signed:
                    entry["Signed-By"] = signed.group(1)
                return entry
    raise TargetSetupError(f"no apt 'deb' entry for {codename}: cannot derive a deb-src entry")


def ensure_deb_src() -> List[str]:
    """Make apt know Debian's ``xen`` source package, adding a deb-src entry if needed.

    :returns: the Xen 4.17 source versions, newest first.
    :raises TargetSetupError: if apt is missing or still knows no Xen 4.17 source afterwards.
    """
    if shutil.which("apt-get") is None:
        raise TargetSetupError("apt-get not found: the PV32 Xen is rebuilt from Debian's source")
    versions = xen_source_versions()
    if versions:
        return versions
    codename = _release_codename()
    entry = _deb_entry(codename)
    lines = ["Types: deb-src", f"URIs: {entry['URIs']}", f"Suites: {codename}",
             "Components: main"]
    if "Signed-By" in entry:
        lines.append(f"Signed-By: {entry['Signed-By']}")
    try:
        SRC_LIST.write_text("# gdb_xenpte tests/pv32: Xen is rebuilt from Debian's source\n"
                            + "\n".join(lines) + "\n")
    except OSError as err:
        raise TargetSetupError(f"cannot add a deb-src entry ({SRC_LIST}: {err.strerror}): run as "
                               f"root, or add a deb-src line for {codename} yourself") from None
    _run(["apt-get", "update", "-qq"])
    versions = xen_source_versions()
    if not versions:
        raise TargetSetupError(f"apt knows no xen {XEN_SERIES} source even with {SRC_LIST}")
    return versions


def _fetch_source(workdir: Path, log: Path) -> tuple:
    """Fetch and unpack the newest fetchable Xen 4.17 source; return (version, source dir)."""
    errors = []
    for version in ensure_deb_src():
        upstream = version.split(":")[-1].rsplit("-", 1)[0]
        tree = workdir / f"xen-{upstream}"
        if (tree / "debian" / "xen-kconfig").is_file():
            return version, tree
        try:
            _run(["apt-get", "source", "-qq", "--only-source", f"xen={version}"], cwd=workdir,
                 log=log)
        except TargetSetupError as err:  # e.g. a security version whose source is gone
            errors.append(str(err)[:300])
            continue
        if (tree / "debian" / "xen-kconfig").is_file():
            return version, tree
        errors.append(f"{version}: unpacked, but no {tree}/debian/xen-kconfig")
    raise TargetSetupError("cannot fetch Debian's xen source: " + " | ".join(errors))


@dataclass(frozen=True)
class XenBuild:
    """One cached Xen build: the boot image and the ELF64 it was made from.

    :ivar elf: the multiboot ELF32 image QEMU's ``-kernel`` boots.
    :ivar syms: ``xen-syms``, the linked hypervisor with symbols and DWARF.
    :ivar config: the ``.config`` it was built with.
    :ivar version: Debian's source version, e.g. ``4.17.5+72-g01140da4e8-1``.
    """

    elf: Path
    syms: Path
    config: Path
    version: str


def _delta_key() -> str:
    return hashlib.sha256(CONFIG_DELTA.encode()).hexdigest()[:12]


def _cached_build(folder: Path) -> Optional[XenBuild]:
    """Return the build in ``folder`` if it is complete and has every CONFIG_DELTA line."""
    names = ("xen.elf", "xen-syms", "config", "version")
    if not all((folder / name).is_file() for name in names):
        return None
    lines = set((folder / "config").read_text().splitlines())
    if not set(CONFIG_DELTA.splitlines()) <= lines:
        return None
    return XenBuild(folder / "xen.elf", folder / "xen-syms", folder / "config",
                    (folder / "version").read_text().strip())


def xen_build(jobs: Optional[int] = None) -> XenBuild:
    """Return Xen 4.17 built with ``CONFIG_DELTA``, building it if not cached.

    :param jobs: parallel make jobs (default: the CPU count).
    :raises TargetSetupError: as described in the module docstring.
    """
    cache = cache_dir()
    key = _delta_key()
    with _locked("xen"):
        done = [b for b in map(_cached_build, sorted(cache.glob(f"xen-*-{key}"))) if b]
        if done:
            return done[-1]
        _check_tools()
        log = cache / "xen-build.log"
        log.write_text("")
        src_root = cache / "src"
        src_root.mkdir(exist_ok=True)
        version, tree = _fetch_source(src_root, log)
        # XEN_TARGET_ARCH as in debian/rules; no downloads at build time (also as there)
        env = dict(os.environ, WGET="/bin/false", GIT="/bin/false")
        args = ["XEN_TARGET_ARCH=x86_64", "PYTHON=python3"]
        # the shared tree may hold objects of another config: start clean
        _run(["make", "-C", "xen", "clean"] + args, cwd=tree, log=log, env=env)
        config = tree / "xen" / ".config"
        config.write_text((tree / "debian" / "xen-kconfig").read_text() + CONFIG_DELTA)
        _run(["make", "-C", "xen", "olddefconfig"] + args, cwd=tree, log=log, env=env)
        lost = set(CONFIG_DELTA.splitlines()) - set(config.read_text().splitlines())
        if lost:
            raise TargetSetupError(f"{config}: olddefconfig dropped {', '.join(sorted(lost))}")
        jobs = jobs or os.cpu_count() or 1
        _run(["make", "-C", "xen", f"-j{jobs}"] + args, cwd=tree, log=log, env=env)
        out = cache / f"xen-{version.replace(':', '_')}-{key}"
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        shutil.copyfile(tree / "xen" / "xen", tmp / "xen.elf")
        shutil.copyfile(tree / "xen" / "xen-syms", tmp / "xen-syms")
        shutil.copyfile(config, tmp / "config")
        shutil.copyfile(log, tmp / "build.log")
        (tmp / "version").write_text(version + "\n")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        built = _cached_build(out)
        assert built is not None
        return built


def build_xen(jobs: Optional[int] = None) -> Path:
    """Return the bootable image of :func:`xen_build` (multiboot ELF32)."""
    return xen_build(jobs).elf


def build_xen_syms(jobs: Optional[int] = None) -> Path:
    """Return ``xen-syms`` (ELF64 with DWARF) of the same build as :func:`build_xen`."""
    return xen_build(jobs).syms


def build_guest() -> Path:
    """Return the PV32 guest kernel ELF, assembling and linking it if its sources changed.

    :returns: path of ``<cache>/guest-<hash>/pv32.elf``.
    :raises TargetSetupError: if ``as``/``ld`` are missing or fail.
    """
    digest = hashlib.sha256()
    for name in GUEST_SOURCES:
        digest.update((GUEST_DIR / name).read_bytes())
    outdir = cache_dir() / f"guest-{digest.hexdigest()[:12]}"
    elf = outdir / "pv32.elf"
    with _locked("guest"):
        if elf.is_file():
            return elf
        outdir.mkdir(exist_ok=True)
        obj = outdir / "pv32.o"
        _run(["as", "--32", "-o", str(obj), str(GUEST_DIR / "pv32.s")])
        _run(["ld", "-m", "elf_i386", "-T", str(GUEST_DIR / "pv32.ld"), "--build-id=none",
              "-o", str(elf.with_suffix(".tmp")), str(obj)])
        os.replace(elf.with_suffix(".tmp"), elf)
        return elf


def guest_symbols(elf: Path) -> Dict[str, int]:
    """Return the guest's global symbols (name → VA), e.g. ``spin_ring1``, ``user_data``.

    :param elf: the guest kernel from :func:`build_guest`.
    """
    from elftools.elf.elffile import ELFFile

    with open(elf, "rb") as handle:
        symtab = ELFFile(handle).get_section_by_name(".symtab")
        return {sym.name: sym["st_value"] for sym in symtab.iter_symbols()
                if sym.name and sym["st_info"]["bind"] == "STB_GLOBAL"}


if __name__ == "__main__":
    t0 = time.monotonic()
    print("guest:", build_guest(), f"({time.monotonic() - t0:.1f} s)")
    t0 = time.monotonic()
    xb = xen_build()
    print("xen:  ", xb.elf, f"({time.monotonic() - t0:.1f} s)")
    print("syms: ", xb.syms)
