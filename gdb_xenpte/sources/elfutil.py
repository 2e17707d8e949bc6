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

from ..errors import DumpFormatError
from .filemap import DumpFile

__all__ = ["EM_386", "EM_X86_64", "ET_CORE", "elf_errors", "open_elf", "probe_elf_core"]

ET_CORE = 4
EM_386 = 3
EM_X86_64 = 62
MACHINES = {EM_386: "EM_386", EM_X86_64: "EM_X86_64"}

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
    if e_type != "ET_CORE":
        raise DumpFormatError(file.name, f"ELF e_type {e_type} at file offset 0x10: expected "
                                         "ET_CORE (a core dump)")
    if e_machine not in ("EM_X86_64", "EM_386"):
        raise DumpFormatError(file.name, f"ELF e_machine {e_machine} at file offset 0x12: "
                                         "expected an x86 guest (EM_X86_64 or EM_386)")
    if elf.little_endian is not True:
        raise DumpFormatError(file.name, "big-endian ELF at file offset 5: x86 dumps are "
                                         "little-endian")
    return elf
