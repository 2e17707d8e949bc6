"""Kexec crash vmcores (``/proc/vmcore`` of a crash kernel, copied with ``cp``/``dd``, or
``makedumpfile -E``): machine memory keyed by ``p_paddr``, registers from the crash notes.

Facts (:data:`gdb_xenpte.xen.FACTS` ``kexec_vmcore_phdrs``): kexec-tools writes
``p_paddr`` = the physical (on a Xen host: machine) address and ``p_vaddr`` = page_offset +
``p_paddr``, the first kernel's direct map, for every RAM range; one kernel-text segment may alias
part of RAM at another ``p_vaddr``. Such a file differs from a QEMU ``dump-guest-memory -p`` dump
(segments keyed by guest VA, unusable) by its notes: VMCOREINFO, VMCOREINFO_XEN or Xen's crash
notes, and no QEMU CPU notes. We key memory by ``p_paddr``; a segment whose ``p_vaddr`` is not on
the common direct-map offset and that overlaps a direct-map segment is an alias and is left out
(said in :meth:`describe`).

On a Xen host, :meth:`vcpus` are the pCPUs (:mod:`.xen_crash`): CR0-CR4 from CRASH_REGS, RIP/CS/
RFLAGS from NT_PRSTATUS; :attr:`host` keeps the rest (CRASH_INFO, VMCOREINFO_XEN, crashing pCPU)
for :mod:`gdb_xenpte.xen_host`. A Linux (non-Xen) kexec vmcore opens too, with no CR3 (its CORE
notes carry none: give ``--cr3``).

Failure modes: as :class:`~.qemu_elf.QemuElfSource` (bad ELF, segments outside the file or
overlapping where neither is an alias), plus :mod:`.xen_crash`'s for short Xen notes.
"""

from __future__ import annotations

import struct
from collections import Counter
from typing import List, Optional, Tuple

from ..errors import DumpFormatError, UnreadableMemory
from .filemap import MappedFile
from .notes import check_note_area, iter_notes
from .qemu_elf import QemuElfSource
from .runs import RunMap
from .xen_crash import HostNotes, is_kexec_note, parse_host_notes

__all__ = ["KexecElfSource", "describe_host", "read_c_string"]

_MASK64 = (1 << 64) - 1
_PHDR64 = struct.Struct("<IIQQQQQQ")  # type, flags, offset, vaddr, paddr, filesz, memsz, align
_PHDR32 = struct.Struct("<IIIIIIII")  # type, offset, vaddr, paddr, filesz, memsz, flags, align
PT_LOAD, PT_NOTE = 1, 4


def _note_segments(file: MappedFile, head: bytes):
    """Yield ``(offset, bytes)`` of each PT_NOTE, reading only the program headers."""
    elf_class = head[4]
    if elf_class == 2:
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        fmt = _PHDR64
    else:
        phoff, = struct.unpack_from("<I", head, 28)
        phentsize, phnum = struct.unpack_from("<HH", head, 42)
        fmt = _PHDR32
    if phentsize != fmt.size:
        return
    total = 0
    for i in range(phnum):
        ph = fmt.unpack(file.slice(phoff + i * phentsize, fmt.size, f"program header {i}"))
        if ph[0] != PT_NOTE:
            continue
        offset, size = (ph[2], ph[5]) if fmt is _PHDR64 else (ph[1], ph[4])
        total += size  # the limit holds for all note segments together
        check_note_area(file.name, offset, total, f"PT_NOTE segment {i}")
        yield offset, file.slice(offset, size, f"PT_NOTE segment {i}")


def read_c_string(source, maddr: int, limit: int = 128) -> Optional[str]:
    """The NUL-terminated string at ``maddr`` (at most ``limit`` bytes), or None if unreadable."""
    out = b""
    while len(out) < limit:
        try:
            chunk = source.read(maddr + len(out), min(16, 4096 - (maddr + len(out)) % 4096))
        except UnreadableMemory:
            return None
        if b"\0" in chunk:
            return (out + chunk.split(b"\0", 1)[0]).decode("latin-1")
        out += chunk
    return out.decode("latin-1")


class KexecElfSource(QemuElfSource):
    """Machine memory and per-pCPU registers of a kexec crash vmcore (ELF).

    :param path: the vmcore; opened read-only and mapped.
    :raises DumpFormatError: see the module docstring.
    """

    format_name = "kexec-elf"

    @classmethod
    def probe(cls, head: bytes) -> bool:
        return False  # needs the notes: see probe_file

    @classmethod
    def probe_file(cls, file: MappedFile, head: bytes) -> bool:
        """True if the ELF core's notes are a kexec crash dump's (and no QEMU CPU notes)."""
        if not QemuElfSource.probe(head):
            return False
        try:
            notes = [n for off, blob in _note_segments(file, head)
                     for n in iter_notes(blob, off, file.name)]
        except DumpFormatError:
            return False
        return any(is_kexec_note(n) for n in notes) and not any(n.name == "QEMU" for n in notes)

    def _open(self) -> None:
        self.notes: Tuple[str, ...] = ()
        loads, notes = self._parse_elf()
        self.host: HostNotes = parse_host_notes(notes, self._file.name)
        kind = "Xen host kexec crash vmcore" if self.host.is_xen else "kexec crash vmcore"
        self.name = f"{kind} {self._file.name}"
        self.notes += self.host.remarks
        self._runs = self._kexec_runs(loads)
        self._vcpus = list(self.host.pcpus)
        if self.host.xen_version is not None:
            self.xen_version = self.host.xen_version
        if not self._vcpus:
            self.notes += ("no CPU notes: registers unknown (give --cr3/--cr4)",)
        elif all(v.cr3 is None for v in self._vcpus):
            self.notes += ("the CORE notes carry no CR3 (a Linux kdump): give --cr3",)

    def _kexec_runs(self, loads) -> RunMap:
        # The direct map's offset: the p_vaddr - p_paddr that covers the most bytes (a lone
        # kernel-text segment never outweighs RAM).
        deltas: Counter = Counter()
        for _i, _o, vaddr, paddr, filesz, _m in loads:
            if vaddr != _MASK64:
                deltas[(vaddr - paddr) & _MASK64] += filesz
        delta = deltas.most_common(1)[0][0] if deltas else 0
        self.page_offset = delta
        linear = [s for s in loads if (s[2] - s[3]) & _MASK64 == delta or s[2] == _MASK64]
        others = [s for s in loads if s not in linear]
        covered = sorted((s[3], s[3] + s[4]) for s in linear if s[4])
        kept, aliases = list(linear), 0
        for seg in others:
            start, end = seg[3], seg[3] + seg[4]
            if any(a < end and start < b for a, b in covered):
                aliases += 1
            else:
                kept.append(seg)
        if aliases:
            self.notes += (f"{aliases} PT_LOAD segment(s) alias RAM at another virtual address "
                           "(the kernel text): left out, their bytes are in the direct-map "
                           "segments",)
        return self._load_runs(sorted(kept, key=lambda s: s[3]))

    def describe(self) -> str:
        text = (f"{self.name}: ELF{self.elf_class} {self.machine}, {len(self._runs)} segment(s) "
                f"by p_paddr (direct map at {self.page_offset:#x}), {len(self._vcpus)} pCPU(s)")
        return "; ".join((text,) + describe_host(self.host, self) + self.notes)


def describe_host(host: HostNotes, source) -> Tuple[str, ...]:
    """Phrases saying what the Xen crash notes tell (version, xen_phys_start, crashing pCPU)."""
    out: List[str] = []
    info = host.info
    if info is not None:
        extra = read_c_string(source, info.extra_version) if info.extra_version else None
        out.append(f"Xen {info.major}.{info.minor}{extra or ''} (CRASH_INFO)")
        if info.xen_phys_start is not None:
            out.append(f"xen_phys_start {info.xen_phys_start:#x}")
        if info.tainted:
            out.append(f"tainted {info.tainted:#x}")
    if host.crashing is not None:
        out.append(f"pCPU {host.crashing} crashed ({host.crashing_why})")
    offline = [r.index for r in host.pcpus if not r.online]
    if offline:
        out.append(f"pCPU(s) {', '.join(map(str, offline))} saved no state")
    return tuple(out)
