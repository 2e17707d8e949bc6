"""Open a dump by probing its format, or as the format the user names.

Probing reads the first 4 KiB and asks each reader's ``probe(head)`` in :data:`READERS` order:
kdump (plain or flattened) first (signatures at offset 0), then xl dump-core (ELF, sections only),
then kexec crash vmcores (ELF whose notes are VMCOREINFO/Xen crash notes: ``probe_file`` reads
the note segments), then QEMU ELF (ELF with program headers). Raw images have no signature and are
only opened on request (``fmt="raw"`` with a base address).

Failure modes: :class:`~gdb_xenpte.errors.OptionError` for an unknown ``fmt`` or a vCPU index the
source does not have; :class:`~gdb_xenpte.errors.DumpFormatError` when no reader recognises the file
or the chosen reader rejects it; :class:`~gdb_xenpte.errors.SourceError` if it cannot be opened.
"""

from __future__ import annotations

from typing import Dict, Optional, Type

from ..errors import DumpFormatError, OptionError
from .base import PhysSource, VcpuRegs
from .elfutil import describe_elf_head
from .filemap import DumpFile, check_regular_file  # the "regular files only" rule, for tools
from .kdump import KdumpSource
from .kexec_elf import KexecElfSource
from .qemu_elf import QemuElfSource
from .raw import RawSource
from .xc_core import XcCoreSource

__all__ = ["FORMATS", "READERS", "check_regular_file", "detect_format", "open_dump", "pick_vcpu"]

READERS = (KdumpSource, XcCoreSource, KexecElfSource, QemuElfSource)
FORMATS: Dict[str, Type[PhysSource]] = {r.format_name: r for r in READERS + (RawSource,)}
PROBE_BYTES = 4096


def detect_format(path: str) -> str:
    """Return the format name of the dump at ``path`` (a key of :data:`FORMATS`).

    :raises DumpFormatError: if no reader recognises it.
    """
    file = DumpFile(path)
    try:
        head = file.head(PROBE_BYTES)
        for reader in READERS:
            probe_file = getattr(reader, "probe_file", None)
            if reader.probe(head) or (probe_file is not None and probe_file(file, head)):
                return reader.format_name
        elf = describe_elf_head(head)
        if elf:
            raise DumpFormatError(file.name, f"not a recognised dump: {elf}")
        raise DumpFormatError(file.name, f"not a recognised dump: the first bytes {head[:8]!r} "
                                         "match no QEMU ELF, kdump or xl dump-core header; for a "
                                         "raw memory image use --raw FILE@BASE")
    finally:
        file.close()


def open_dump(path: str, fmt: Optional[str] = None, base: int = 0) -> PhysSource:
    """Open a dump file as a memory source.

    :param path: the dump file.
    :param fmt: force a format (``"kdump"``, ``"xc-core"``, ``"kexec-elf"``, ``"qemu-elf"``,
        ``"raw"``); probe if
        None.
    :param base: guest-physical address of a raw image's first byte (``fmt="raw"`` only).
    :returns: an open source; close it (or use it as a context manager) when done.
    :raises OptionError: for an unknown ``fmt``.
    :raises DumpFormatError: if the file is not (a valid file) of that format.
    """
    if fmt is None:
        fmt = detect_format(path)
    reader = FORMATS.get(fmt)
    if reader is None:
        raise OptionError(f"unknown dump format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if reader is RawSource:
        return RawSource(path, base)
    return reader(path)


def pick_vcpu(source: PhysSource, index: Optional[int] = None) -> VcpuRegs:
    """Return vCPU ``index`` of ``source``; with ``index`` None, the source's current vCPU, else
    its first, else (a raw image, gdbsx) empty registers that options must fill in.

    :raises OptionError: naming the source and the vCPUs it has, if there is no such vCPU.
    """
    vcpus = source.vcpus()
    if index is None:
        if not vcpus:
            return VcpuRegs(-1)
        index = getattr(source, "current_vcpu", None)
        if index is None:
            index = vcpus[0].index
    for vcpu in vcpus:
        if vcpu.index == index:
            return vcpu
    have = [v.index for v in vcpus]
    held = ("no vCPU registers" if not have else
            f"vCPUs 0..{len(have) - 1}" if have == list(range(len(have))) else
            "vCPUs " + ", ".join(map(str, have)))
    raise OptionError(f"{source.name}: no vCPU {index}; the dump holds {held}")
