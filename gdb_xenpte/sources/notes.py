"""ELF notes and QEMU's per-CPU ``QEMU`` note, shared by the QEMU ELF and kdump readers.

QEMU writes the same note stream into both of its dump formats (``dump/dump.c``: the PT_NOTE segment
of an ELF dump, the ``offset_note``/``note_size`` area of a kdump sub-header): one ``CORE``
``NT_PRSTATUS`` per CPU, then one ``QEMU`` note per CPU in CPU order carrying ``QEMUCPUState``
(``target/i386/arch_dump.c``; version 1, 440 bytes). Elf32 and Elf64 note headers are the same
three 32-bit words, padded to 4 bytes.

Failure modes: :class:`~gdb_xenpte.errors.DumpFormatError` for a note that runs past its area or a
``QEMU`` note too short for ``QEMUCPUState``; the message names the file offset.
"""

from __future__ import annotations

import struct
from typing import Iterator, List, NamedTuple, Optional

from ..errors import DumpFormatError
from .base import VcpuRegs

__all__ = ["NOTE_AREA_LIMIT", "Note", "PROCESS_NOTE_TYPES", "QEMU_CPU_STATE_SIZE",
           "check_note_area", "iter_notes", "lma_hint_from_prstatus", "qemu_vcpus"]

NOTE_HEADER = struct.Struct("<III")  # n_namesz, n_descsz, n_type

NT_PRSTATUS = 1
# Notes only a process core carries (Linux include/uapi/linux/elf.h: NT_PRPSINFO 3, NT_AUXV 6,
# NT_FILE 0x46494c45), never a machine dump.
PROCESS_NOTE_TYPES = (3, 6, 0x46494C45)
# sizeof(struct elf_prstatus) for the two x86 flavours QEMU writes (x86_64 and i386 layouts).
PRSTATUS_SIZE_X86_64 = 336
PRSTATUS_SIZE_I386 = 144

# QEMUCPUState (target/i386/arch_dump.c): version, size, 16 GPRs, rip, rflags, 10 segments of
# {u32 selector, limit, flags, pad; u64 base}, cr[5], kernel_gs_base.
QEMU_CPU_STATE_SIZE = 440
_OFF_RIP = 136
_OFF_RFLAGS = 144
_OFF_CS = 152          # first segment; selector at +0, flags at +8
_OFF_CR = 392          # cr[0..4], 8 bytes each
DESC_L_MASK = 1 << 21  # CS descriptor flags: 64-bit code segment (QEMU target/i386/cpu.h)


# The largest note area we read into memory. QEMU writes ~0.9 KiB of notes per vCPU (prstatus 336
# + QEMUCPUState 440 + headers) and Linux ~0.5 KiB per CPU plus a few KiB of VMCOREINFO, so even
# 8192 CPUs stay under 8 MiB; a header claiming more is corrupt or hostile, and is refused before
# anything is allocated (a sparse file can make any size "fit" the file).
NOTE_AREA_LIMIT = 16 << 20


def check_note_area(what: str, offset: int, size: int, where: str) -> None:
    """Refuse a note area larger than :data:`NOTE_AREA_LIMIT` before reading it.

    :param where: names the area for the message, e.g. ``"PT_NOTE segment 0"``.
    :raises DumpFormatError: naming the file offset and the size claimed.
    """
    if size > NOTE_AREA_LIMIT:
        raise DumpFormatError(what, f"{where} at file offset {offset:#x} claims {size:#x} bytes of "
                                    f"notes; no dump has more than {NOTE_AREA_LIMIT >> 20} MiB "
                                    "(QEMU writes about 1 KiB per vCPU): corrupt header")


class Note(NamedTuple):
    """One ELF note: name without NUL, type, descriptor bytes and its file offset."""

    name: str
    type: int
    desc: bytes
    desc_offset: int


def _align4(n: int) -> int:
    return (n + 3) & ~3


def iter_notes(blob: bytes, base_offset: int, what: str) -> Iterator[Note]:
    """Yield the notes in ``blob`` (a PT_NOTE segment or note area), in order.

    Trailing zero padding (QEMU sizes its note buffer generously) ends the walk quietly.

    :param base_offset: file offset of ``blob[0]``, for messages and :attr:`Note.desc_offset`.
    :param what: file name for messages.
    :raises DumpFormatError: if a note's name or descriptor runs past the end of ``blob``.
    """
    pos = 0
    while pos + NOTE_HEADER.size <= len(blob):
        namesz, descsz, ntype = NOTE_HEADER.unpack_from(blob, pos)
        if namesz == 0 and descsz == 0 and ntype == 0:
            return
        name_at = pos + NOTE_HEADER.size
        desc_at = name_at + _align4(namesz)
        end = desc_at + _align4(descsz)
        if desc_at + descsz > len(blob):
            raise DumpFormatError(
                what, f"ELF note at file offset {base_offset + pos:#x} (namesz {namesz}, "
                      f"descsz {descsz}) runs past the end of its note area "
                      f"({base_offset + len(blob):#x})")
        name = blob[name_at:name_at + namesz].split(b"\0", 1)[0].decode("latin-1")
        yield Note(name, ntype, blob[desc_at:desc_at + descsz], base_offset + desc_at)
        pos = end


def lma_hint_from_prstatus(notes: List[Note]) -> Optional[bool]:
    """Return EFER.LMA of CPU 0 as QEMU saw it, from the size of the ``CORE`` prstatus notes.

    QEMU writes x86_64 prstatus notes when CPU 0 has EFER.LMA and i386 ones otherwise
    (``x86_cpu_write_elf64_note``); ``None`` if there is no such note.
    """
    for note in notes:
        if note.name == "CORE" and note.type == NT_PRSTATUS:
            if len(note.desc) == PRSTATUS_SIZE_X86_64:
                return True
            if len(note.desc) == PRSTATUS_SIZE_I386:
                return False
    return None


def qemu_vcpus(notes: List[Note], what: str, lma_hint: Optional[bool]) -> List[VcpuRegs]:
    """Decode every ``QEMU`` note into :class:`VcpuRegs`, numbered in note order (= CPU order).

    QEMUCPUState has no EFER: long mode comes from the CS descriptor's L flag, else from
    ``lma_hint`` (CPU 0's EFER.LMA as recorded in the dump's machine type); the vCPU's notes say
    which.

    :param lma_hint: True/False from the dump's machine type, None if unknown.
    :raises DumpFormatError: if a ``QEMU`` note is shorter than QEMUCPUState.
    """
    vcpus = []
    for note in notes:
        if note.name != "QEMU":
            continue
        desc = note.desc
        if len(desc) < QEMU_CPU_STATE_SIZE:
            raise DumpFormatError(
                what, f"QEMU CPU note at file offset {note.desc_offset:#x} holds {len(desc)} "
                      f"bytes; QEMUCPUState needs {QEMU_CPU_STATE_SIZE}")
        version, size = struct.unpack_from("<II", desc, 0)
        rip, rflags = struct.unpack_from("<QQ", desc, _OFF_RIP)
        cs_selector, _limit, cs_flags = struct.unpack_from("<III", desc, _OFF_CS)
        cr0, _cr1, cr2, cr3, cr4 = struct.unpack_from("<5Q", desc, _OFF_CR)
        remarks = ["EFER not in a QEMU dump: NXE and LMA are inferred"]
        if version != 1:
            remarks.append(f"QEMUCPUState version {version} (expected 1): layout assumed v1")
        if cs_flags & DESC_L_MASK:
            long_mode: Optional[bool] = True
            remarks.append("long mode from CS.L=1")
        elif lma_hint is not None:
            long_mode = lma_hint
            remarks.append(f"CS.L=0; long mode {'on' if lma_hint else 'off'} taken from the dump's "
                           "machine type (CPU 0's EFER.LMA when QEMU wrote it)")
        else:
            long_mode = None
            remarks.append("CS.L=0 and no machine-type hint: long mode unknown")
        vcpus.append(VcpuRegs(index=len(vcpus), cr0=cr0, cr2=cr2, cr3=cr3, cr4=cr4,
                              rflags=rflags, rip=rip, cs=cs_selector, long_mode=long_mode,
                              notes=tuple(remarks)))
    return vcpus
