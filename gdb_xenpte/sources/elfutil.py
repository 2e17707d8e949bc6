"""pyelftools behind one door: open an ELF dump and turn every parser failure into our error.

pyelftools parses lazily and, on hostile input, can raise its own ``ELFError`` family, construct
errors, or plain ``struct``/``ValueError``/``IndexError`` exceptions. The ELF-based readers call it
only inside :func:`elf_errors`, so callers see a :class:`~gdb_xenpte.errors.DumpFormatError` that
names the file and what was being parsed.
"""

from __future__ import annotations

import struct
from contextlib import contextmanager
from typing import Iterator, Optional

from elftools.common.exceptions import ELFError
from elftools.construct import ConstructError
from elftools.elf.elffile import ELFFile
from elftools.elf.enums import ENUM_E_MACHINE

from ..errors import DumpFormatError
from .filemap import DumpFile

__all__ = ["EM_386", "EM_X86_64", "ET_CORE", "PN_XNUM", "describe_elf_head", "elf_errors",
           "open_elf", "probe_elf_core", "program_header_count"]

ET_CORE = 4
EM_386 = 3
EM_X86_64 = 62
MACHINES = {EM_386: "EM_386", EM_X86_64: "EM_X86_64"}
# e_phnum value meaning "the real count is in sh_info of section header 0" (ELF gABI, "Sections").
PN_XNUM = 0xFFFF
_TYPE_TEXT = {1: "relocatable object", 2: "executable", 3: "shared object", 4: "core dump"}

# OSError: pyelftools seeks to offsets taken from the file; a wild one fails the seek itself.
_PARSER_ERRORS = (ELFError, ConstructError, struct.error, ValueError, KeyError, IndexError,
                  UnicodeDecodeError, OverflowError, EOFError, OSError)


@contextmanager
def elf_errors(what: str, stage: str, offset: int) -> Iterator[None]:
    """Re-raise pyelftools failures inside the block as :class:`DumpFormatError`.

    :param what: the file name.
    :param stage: what was being parsed, e.g. ``"program header 3"``.
    :param offset: file offset of that structure, for the message.
    """
    try:
        yield
    except _PARSER_ERRORS as err:
        raise DumpFormatError(what, f"corrupt ELF {stage} at file offset {offset:#x}: "
                                    f"{err}") from None


def probe_elf_core(head: bytes) -> Optional[dict]:
    """Return the few ELF header fields format probing needs, or None if ``head`` is no x86 core.

    :param head: the first bytes of the file (at least 64).
    :returns: ``{"class": 32|64, "machine": int, "phnum": int, "shnum": int}``.
    """
    if len(head) < 52 or head[:4] != b"\x7fELF" or head[5] != 1:  # little-endian only
        return None
    elf_class = {1: 32, 2: 64}.get(head[4])
    if elf_class is None:
        return None
    e_type, e_machine = struct.unpack_from("<HH", head, 16)
    if e_type != ET_CORE or e_machine not in MACHINES:
        return None
    if elf_class == 64:
        if len(head) < 64:
            return None
        phnum, _shentsize, shnum = struct.unpack_from("<HHH", head, 56)
    else:
        phnum, _shentsize, shnum = struct.unpack_from("<HHH", head, 44)
    return {"class": elf_class, "machine": e_machine, "phnum": phnum, "shnum": shnum}


def _enum_name(table: dict, value: int) -> str:
    return next((k for k, v in table.items() if v == value and not k.startswith("_")), "")


def describe_elf_head(head: bytes) -> Optional[str]:
    """Say what an ELF file that is no x86 core is, from its first bytes; None if not ELF.

    Names the class, byte order, type and machine, e.g. "an ELF64 big-endian core dump for
    EM_AARCH64 (e_machine 183)", and what xen-pte reads instead.
    """
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    elf_class = {1: "ELF32", 2: "ELF64"}.get(head[4], f"ELF (class {head[4]})")
    order = {1: "little-endian", 2: "big-endian"}.get(head[5])
    if order is None:
        return (f"an {elf_class} file with byte order {head[5]} at file offset 5 (neither "
                "little- nor big-endian): not a dump xen-pte reads")
    e_type, e_machine = struct.unpack_from("<HH" if head[5] == 1 else ">HH", head, 16)
    kind = _TYPE_TEXT.get(e_type, f"file of e_type {e_type:#x}")
    machine = _enum_name(ENUM_E_MACHINE, e_machine) or "an unknown machine"
    text = f"an {elf_class} {order} {kind} for {machine} (e_machine {e_machine})"
    if e_type != ET_CORE:
        return (f"{text}: not a core dump; give the guest-memory dump (QEMU dump-guest-memory, "
                "xl dump-core, kdump), not a binary")
    return (f"{text}: not a dump xen-pte reads (little-endian EM_X86_64 and EM_386 cores "
            "of x86 guests)")


def program_header_count(elf: ELFFile, file: DumpFile) -> int:
    """The number of program headers, PN_XNUM resolved, or a clear error if there are none.

    :raises DumpFormatError: when the count is 0, naming where it was read (e_phnum, or the
        sh_info of section header 0 when e_phnum is PN_XNUM).
    """
    header = elf.header
    e_phnum, e_shoff = header["e_phnum"], header["e_shoff"]
    at = 0x38 if elf.elfclass == 64 else 0x2C
    if e_phnum != PN_XNUM:
        count, where = e_phnum, f"e_phnum 0 at file offset {at:#x}"
    elif not e_shoff:
        raise DumpFormatError(file.name, f"e_phnum {PN_XNUM:#x} (PN_XNUM) at file offset {at:#x} "
                                         "says the program header count is in section header 0, "
                                         "but there is no section header table (e_shoff 0)")
    else:
        with elf_errors(file.name, "section header 0 (PN_XNUM program header count)", e_shoff):
            count = elf.num_segments()
        where = (f"e_phnum {PN_XNUM:#x} (PN_XNUM) at file offset {at:#x}, and sh_info 0 in "
                 f"section header 0 at file offset {e_shoff:#x}")
    if count == 0:
        raise DumpFormatError(file.name, f"ELF core has no program headers ({where}): no memory "
                                         "segments")
    return count


def open_elf(file: DumpFile) -> ELFFile:
    """Parse the ELF header of ``file`` with pyelftools and check it is an x86 core dump.

    :raises DumpFormatError: if the header is truncated, not ELF, not ``ET_CORE``, or not x86.
    """
    file.check_range(0, 16, "ELF identification")
    head = file.head(64)
    if head[:4] != b"\x7fELF":
        raise DumpFormatError(file.name, f"no ELF magic at file offset 0 (found {head[:4]!r})")
    if head[4] not in (1, 2):
        raise DumpFormatError(file.name, f"ELF class {head[4]} at file offset 0x4: expected 1 "
                                         "(ELF32) or 2 (ELF64)")
    file.check_range(0, 64 if head[4] == 2 else 52, "ELF header")
    with elf_errors(file.name, "header", 0):
        file.fh.seek(0)
        elf = ELFFile(file.fh)
        header = elf.header
        e_type, e_machine = header["e_type"], header["e_machine"]
    if e_type != "ET_CORE" or e_machine not in ("EM_X86_64", "EM_386") or not elf.little_endian:
        raise DumpFormatError(file.name, f"{describe_elf_head(head)} (ELF header e_type at file "
                                         "offset 0x10, e_machine at 0x12, byte order at 0x5)")
    return elf
