"""Build, boot and read the verdict oracle guest (sources in ``tests/guests/oracle``).

The guest builds page tables for every case the engine distinguishes, performs every access
(read/write/exec at CPL0 with AC=0 and 1, and at CPL3) under a list of CR0/CR4/EFER/PKRU/PKRS
configurations, records whether the CPU faulted, and halts. There are two images: long mode
(4- and 5-level paging) and legacy protected mode (32-bit and PAE paging). This module builds them
(nasm, gcc, ld, objcopy; cached under the shared test cache's ``oracle/<hash of sources and tools>``), boots
one under QEMU, and hands back the recorded table, the tables' root and a raw image of guest RAM
to walk::

    from tests.targets.oracle import boot_oracle

    with boot_oracle(levels=5, workdir=tmp_path) as run:
        run.cases         # [{"id", "name", "va", "leaf_level"}]
        run.records       # [{"case_id", "kind", "cpl", "ac", "faulted", "vector", "error_code",
                          #   "cr0", "cr4", "efer", "pkru", "pkrs", "va", "cr2", "rip"}]
        run.header["cr3"], run.header["maxphyaddr"], run.header["vendor"], run.header["has_pks"],
        run.header["final_cr0"], ["final_cr4"], ["final_efer"], ["final_pkru"]  # at the halt
        run.ram_path      # pmemsave of all guest RAM (byte i = guest-physical address i)
        run.vm            # the Qemu, still running (halted guest) until the block ends

``python3 -m tests.targets.oracle [--levels 2|3|4|5] [--cpu max]`` boots it once and prints per case how
many accesses faulted.

Failure modes: :class:`~tests.targets.qemu.QemuSetupError` when a build tool or QEMU is missing;
:class:`OracleError` when the build fails, the guest reports FATAL, or its results are malformed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from .cachedir import cache_root
from .qemu import Qemu, require_binary

__all__ = ["KINDS", "OracleError", "OracleRun", "RAM_BYTES", "boot_oracle", "build_guest"]

REPO = Path(__file__).resolve().parents[2]
GUEST_DIR = REPO / "tests" / "guests" / "oracle"
RAM_BYTES = 32 << 20

# Freestanding 64-bit code at 1 MiB: no SSE (the guest never enables it), no red zone (exceptions
# push onto the current stack), no PIC/PIE, no stack protector or CET (no runtime behind them).
CFLAGS = ("-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-ffreestanding",
          "-fno-builtin", "-fno-pic", "-fno-pie", "-mno-red-zone", "-mgeneral-regs-only",
          "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-fcf-protection=none")
LDFLAGS = ("-nostdlib", "-no-pie", "-z", "max-page-size=4096",
           "-z", "noexecstack", "--no-warn-rwx-segments")
# Tool -> Debian package, for the setup error.
BUILD_TOOLS = {"nasm": "nasm", "gcc": "gcc", "ld": "binutils", "objcopy": "binutils",
               "nm": "binutils"}

KINDS = ("read", "write", "exec")  # KIND_* in oracle.h
VEC_COMPLETED = 0x81
ORACLE_MAGIC = 0x4C4352414F545058
ORACLE_VERSION = 2
STATE_DONE = 2

# struct oracle_header / oracle_case / oracle_record of oracle.h, field for field.
_HEADER = struct.Struct("<QIIIIIIQQQQQQII16sII")
_HEADER_FIELDS = ("magic", "version", "state", "n_cases", "n_records", "n_configs", "maxphyaddr",
                  "cases_pa", "records_pa", "cr3", "final_cr0", "final_cr4", "final_efer",
                  "levels", "record_size", "vendor", "has_pks", "final_pkru")
_CASE = struct.Struct("<QIB3x48s")
_RECORD = struct.Struct("<IBBBBQQQQIIQQII")
_RECORD_FIELDS = ("case_id", "kind", "cpl", "ac", "vector", "va", "cr0", "cr4", "efer", "pkru",
                  "error_code", "cr2", "rip", "pkrs", "reserved")


class OracleError(RuntimeError):
    """The oracle guest could not be built or run, or its results are malformed."""


def _tool_versions() -> bytes:
    out = b""
    for tool in ("nasm", "gcc", "ld"):
        out += subprocess.run([tool, "--version" if tool != "nasm" else "-v"],
                              capture_output=True).stdout.split(b"\n")[0]
    return out


def _run(argv: List[str], cwd: Path) -> None:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise OracleError(f"building the oracle guest failed: {' '.join(argv)}\n"
                          f"{proc.stdout}{proc.stderr}")


# The two guest images: long mode (4/5-level paging) and legacy protected mode (32-bit/PAE).
# Per image: assembly source, nasm output format, C source, gcc -m flag, ld emulation, and whether
# the linked ELF64 must be converted to the ELF32 that QEMU's multiboot loader takes.
_IMAGES = {
    "long": ("boot.asm", "elf64", "oracle.c", "-m64", "elf_x86_64", True),
    "legacy": ("boot32.asm", "elf32", "oracle32.c", "-m32", "elf_i386", False),
}


def build_guest(image: str = "long", cache_dir: Optional[Path] = None) -> Path:
    """Build a guest image (or reuse the cached build); return the ELF32 for ``-kernel``.

    :param image: ``"long"`` (4- and 5-level paging) or ``"legacy"`` (32-bit and PAE paging).
    The cache key hashes the sources, the flags and the tool versions, so an edit rebuilds.

    :raises QemuSetupError: if nasm, gcc or binutils is missing.
    :raises OracleError: if a build step fails (its output is in the message).
    """
    for tool, package in BUILD_TOOLS.items():
        require_binary(tool, package)
    asm, asm_format, c_source, m_flag, emulation, to_elf32 = _IMAGES[image]
    cflags = (m_flag, *CFLAGS)
    ldflags = ("-m", emulation, *LDFLAGS)
    digest = hashlib.sha256(image.encode())
    for name in (asm, c_source, "oracle.h", "link.ld"):
        digest.update(name.encode() + b"\0" + (GUEST_DIR / name).read_bytes())
    digest.update(repr((cflags, ldflags)).encode() + _tool_versions())
    cache = Path(cache_dir) if cache_dir else cache_root("oracle")
    out_dir = cache / digest.hexdigest()[:16]
    elf = out_dir / "oracle.elf"
    if elf.exists():
        return elf
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=cache))
    try:
        _run(["nasm", "-f", asm_format, "-Werror", "-o", "boot.o", str(GUEST_DIR / asm)], work)
        _run(["gcc", *cflags, "-c", "-o", "oracle.o", str(GUEST_DIR / c_source)], work)
        _run(["ld", *ldflags, "-T", str(GUEST_DIR / "link.ld"), "-o", "linked.elf",
              "boot.o", "oracle.o"], work)
        if to_elf32:
            # QEMU's multiboot loader refuses ELF64 images; the code sits below 4 GiB, so an
            # ELF32 copy works.
            _run(["objcopy", "-O", "elf32-i386", "linked.elf", "oracle.elf"], work)
        else:
            os.rename(work / "linked.elf", work / "oracle.elf")
        try:
            os.rename(work, out_dir)  # atomic: a concurrent build of the same key just loses
        except OSError:
            if not elf.exists():
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return elf


def _symbol(elf: Path, name: str) -> int:
    out = subprocess.run(["nm", str(elf)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16)
    raise OracleError(f"symbol {name} not in {elf}")


@dataclass
class OracleRun:
    """One completed run of the oracle guest.

    :param levels: paging levels the guest ran with: 2 (32-bit paging), 3 (PAE), 4 or 5.
    :param cpu: the QEMU CPU model it ran on.
    :param header: the results header (``cr3`` = root of the tables under test, ``maxphyaddr``,
        ``vendor``, ``final_cr0/cr4/efer`` = registers left loaded at the halt, counts).
    :param cases: the mappings under test, indexed by ``id``.
    :param records: every access performed, in order.
    :param ram_path: raw image of all guest RAM, taken after the halt.
    :param boot_seconds: from QEMU's start to the guest's "done" line (boot + every probe).
    """

    levels: int
    cpu: str
    vm: Qemu
    elf: Path
    header: Dict[str, object]
    cases: List[Dict[str, object]]
    records: List[Dict[str, object]]
    ram_path: Path
    boot_seconds: float


def _read_results(vm: Qemu, header_pa: int) -> tuple:
    raw = vm.pmemsave(header_pa, _HEADER.size)
    header = dict(zip(_HEADER_FIELDS, _HEADER.unpack(raw)))
    header["vendor"] = header["vendor"].rstrip(b"\0").decode(errors="replace")
    if header["magic"] != ORACLE_MAGIC or header["version"] != ORACLE_VERSION:
        raise OracleError(f"oracle header at {header_pa:#x} has magic {header['magic']:#x} "
                          f"version {header['version']}: guest and oracle.py disagree")
    if header["record_size"] != _RECORD.size or header["state"] != STATE_DONE:
        raise OracleError(f"oracle header: record size {header['record_size']}, "
                          f"state {header['state']} (expected {_RECORD.size}, {STATE_DONE})")
    raw = vm.pmemsave(header["cases_pa"], header["n_cases"] * _CASE.size)
    cases = []
    for va, case_id, leaf_level, name in _CASE.iter_unpack(raw):
        cases.append({"id": case_id, "va": va, "leaf_level": leaf_level,
                      "name": name.split(b"\0")[0].decode()})
    raw = vm.pmemsave(header["records_pa"], header["n_records"] * _RECORD.size)
    records = []
    for values in _RECORD.iter_unpack(raw):
        rec = dict(zip(_RECORD_FIELDS, values))
        rec["kind"] = KINDS[rec["kind"]]
        rec["faulted"] = rec["vector"] != VEC_COMPLETED
        rec["case"] = cases[rec["case_id"]]["name"]
        records.append(rec)
    return header, cases, records


_PAGING_ARG = {2: "32", 3: "pae", 4: "4", 5: "5"}


@contextlib.contextmanager
def boot_oracle(levels: int, workdir: Path, *, cpu: str = "max", timeout: float = 60.0,
                cache_dir: Optional[Path] = None) -> Iterator[OracleRun]:
    """Boot the oracle guest with ``levels``-level paging, wait for it, read its results.

    ``levels`` 4 or 5 boots the long-mode image; 2 (32-bit paging) or 3 (PAE) the legacy one.

    :param cpu: QEMU CPU model; it must offer SMEP, SMAP, PKU and 1 GiB pages (and LA57 for 5
        levels). ``max`` reports vendor AuthenticAMD under TCG; add ``,vendor=GenuineIntel`` for
        Intel (the engine's reserved-bit rules differ by vendor).

    The guest stays up (halted) until the block ends, so gdb can attach to ``run.vm.gdb_port``;
    then QEMU is killed by its pid, also when the block raises.

    :raises OracleError: if the guest reports FATAL or its results are malformed.
    :raises QemuError: if it does not finish within ``timeout`` seconds.
    """
    if levels not in _PAGING_ARG:
        raise ValueError(f"levels must be 2, 3, 4 or 5, not {levels}")
    elf = build_guest("long" if levels >= 4 else "legacy", cache_dir)
    workdir = Path(workdir)
    # The paging mode is chosen before paging is enabled (LA57 cannot change in long mode), so
    # the guest reads it from its command line.
    args = ["-kernel", str(elf), "-append", f"paging={_PAGING_ARG[levels]}"]
    with Qemu(args, memory=f"{RAM_BYTES >> 20}M", cpu=cpu, workdir=workdir) as vm:
        match = vm.wait_for_serial(r"^ORACLE: (done|FATAL).*$", timeout)
        boot_seconds = vm.seconds_since_start()
        if match.group(1) == "FATAL":
            raise OracleError(f"oracle guest ({levels}-level): {match.group(0)}")
        header, cases, records = _read_results(vm, _symbol(elf, "oracle_results"))
        if header["levels"] != levels:
            raise OracleError(f"asked for {levels}-level paging, the guest ran {header['levels']}")
        ram_path = vm.pmemsave_file(0, RAM_BYTES, workdir / "ram.bin")
        yield OracleRun(levels, cpu, vm, elf, header, cases, records, ram_path, boot_seconds)


def main(argv: Optional[List[str]] = None) -> int:
    """Boot the guest once and print, per case, how many of its accesses faulted."""
    import argparse

    parser = argparse.ArgumentParser(prog="python3 -m tests.targets.oracle",
                                     description=main.__doc__)
    parser.add_argument("--levels", type=int, choices=(2, 3, 4, 5), default=4,
                        help="2: 32-bit paging, 3: PAE, 4/5: 4-/5-level paging")
    parser.add_argument("--cpu", default="max", help="QEMU CPU model (default: max)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, \
            boot_oracle(args.levels, Path(tmp), cpu=args.cpu) as run:
        print(f"{run.elf}: {run.levels}-level, {run.header['vendor']}, "
              f"{len(run.cases)} cases x {run.header['n_configs']} configurations, "
              f"{len(run.records)} accesses, done {run.boot_seconds:.2f} s after start")
        faults: Dict[int, int] = {}
        for rec in run.records:
            faults[rec["case_id"]] = faults.get(rec["case_id"], 0) + rec["faulted"]
        per_case = len(run.records) // len(run.cases)
        for case in run.cases:
            print(f"  {case['name']:<24} {case['va']:#018x}  {faults.get(case['id'], 0):4} of "
                  f"{per_case} accesses faulted")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
