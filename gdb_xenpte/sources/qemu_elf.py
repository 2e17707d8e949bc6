"""QEMU ``dump-guest-memory`` ELF cores (taken without ``-p``): guest-physical memory + vCPU notes.

Facts (QEMU ``dump/dump.c``, ``target/i386/arch_dump.c``; shared/reference/prior-art.md §9):

* each ``PT_LOAD`` holds guest-physical memory at ``p_paddr``; QEMU writes ``p_vaddr = p_paddr``
  (older QEMU: 0) for such segments, and ``p_filesz = 0`` or ``< p_memsz`` for memory it did not
  store (``begin``/``length`` filters), which we report as "not in dump", never as zeros;
* e_machine is EM_X86_64 iff CPU 0 had EFER.LMA when the dump was taken, else EM_386 (an ELF32 or,
  with RAM above 4 GiB, ELF64 file);
* vCPU registers come from the per-CPU ``QEMU`` notes (:mod:`.notes`); they carry CR0–CR4 and the
  segments but no EFER;
* with ``-p`` (paging) QEMU writes segments keyed by guest *virtual* address whose "physical"
  addresses keep PTE bits 52–62 and whose lower-half VAs are mangled, so such segments are unusable
  for a page-table walk. They are recognised by ``p_vaddr`` differing from ``p_paddr`` (and not 0).

Failure modes: :class:`~gdb_xenpte.errors.DumpFormatError` when the file is truncated, not an x86
ELF core (the message names its machine and byte order), has overlapping or out-of-file segments,
note segments beyond the note-area limit, or holds only virtual segments (a ``-p`` dump, or a
user process's core, each named as such);
:class:`~gdb_xenpte.errors.UnreadableMemory` from :meth:`QemuElfSource.read` for addresses that no
segment stores.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

from ..errors import DumpFormatError
from .base import FileSource, VcpuRegs
from .elfutil import elf_errors, open_elf, probe_elf_core, program_header_count
from .notes import PROCESS_NOTE_TYPES, Note, check_note_area, iter_notes, qemu_vcpus
from .xen_crash import is_kexec_note
from .runs import RunMap

__all__ = ["QemuElfSource"]


def _is_physical_segment(vaddr: int, paddr: int) -> bool:
    """True for a segment keyed by physical address (QEMU without ``-p``, or identity-mapped)."""
    return vaddr == paddr or vaddr == 0


def _is_process_core(loads, notes) -> bool:
    """True for the core of a user process: Linux (``fill_note_info``) and gdb's ``gcore`` write
    prpsinfo, auxv or mapped-file notes and leave ``p_paddr`` 0; QEMU's ``-p`` dumps carry QEMU
    notes and real physical addresses."""
    process_notes = any(n.name == "CORE" and n.type in PROCESS_NOTE_TYPES for n in notes)
    qemu = any(n.name == "QEMU" for n in notes)
    return process_notes and not qemu and all(seg[3] == 0 for seg in loads)


class QemuElfSource(FileSource):
    """Physical memory and vCPU registers of a QEMU ELF guest-memory dump.

    :param path: the dump file; opened read-only (never mapped: see filemap).
    :raises DumpFormatError: see the module docstring.
    """

    format_name = "qemu-elf"

    @classmethod
    def probe(cls, head: bytes) -> bool:
        """Return True if ``head`` (the first bytes of a file) starts an x86 ELF core with
        program headers (an xl dump-core has none)."""
        info = probe_elf_core(head)
        return bool(info and info["phnum"])

    def _open(self) -> None:
        self.name = f"QEMU ELF dump {self._file.name}"
        self.notes: Tuple[str, ...] = ()
        loads, notes = self._parse_elf()
        self._runs = self._build_runs(loads, notes)
        lma_hint = {"EM_X86_64": True, "EM_386": False}.get(self.machine)
        self._vcpus = qemu_vcpus(notes, self._file.name, lma_hint)
        if not self._vcpus:
            self.notes += ("no QEMU CPU notes: registers unknown (give --cr3/--cr4)",)

    def _parse_elf(self) -> Tuple[List[Tuple[int, int, int, int, int, int]], List[Note]]:
        """Read the program headers: ``(PT_LOADs as (index, offset, vaddr, paddr, filesz,
        memsz), notes of every PT_NOTE in order)``; sets ``elf_class`` and ``machine``."""
        file = self._file
        elf = open_elf(file)
        header = elf.header
        phnum = program_header_count(elf, file)
        entsize = 56 if elf.elfclass == 64 else 32
        if header["e_phentsize"] != entsize:
            raise DumpFormatError(file.name, f"e_phentsize {header['e_phentsize']} at file offset "
                                             f"{0x36 if entsize == 56 else 0x2a:#x}: ELF"
                                             f"{elf.elfclass} program headers are {entsize} bytes")
        file.check_range(header["e_phoff"], phnum * entsize, "program header table")
        self.elf_class = elf.elfclass
        self.machine = header["e_machine"]
        loads: List[Tuple[int, int, int, int, int, int]] = []
        note_blobs: List[Tuple[bytes, int]] = []
        note_bytes = 0
        for i in range(phnum):
            at = header["e_phoff"] + i * header["e_phentsize"]
            with elf_errors(file.name, f"program header {i}", at):
                ph = elf.get_segment(i).header
                p_type, offset = ph["p_type"], ph["p_offset"]
                vaddr, paddr, filesz, memsz = (ph["p_vaddr"], ph["p_paddr"], ph["p_filesz"],
                                               ph["p_memsz"])
            if p_type == "PT_LOAD":
                loads.append((i, offset, vaddr, paddr, filesz, memsz))
            elif p_type == "PT_NOTE":
                note_bytes += filesz  # the limit holds for all note segments together
                check_note_area(file.name, offset, note_bytes, f"PT_NOTE segment {i}" + (
                    " with the note segments before it" if note_blobs else ""))
                note_blobs.append((file.slice(offset, filesz, f"PT_NOTE segment {i}"), offset))
        notes = [n for blob, off in note_blobs for n in iter_notes(blob, off, file.name)]
        return loads, notes

    def _build_runs(self, loads, notes: Sequence[Note] = ()) -> RunMap:
        file = self._file
        physical = [seg for seg in loads if _is_physical_segment(seg[2], seg[3])]
        virtual = len(loads) - len(physical)
        if virtual and not physical:
            i, _off, vaddr, paddr = loads[0][:4]
            if any(is_kexec_note(n) for n in notes):
                raise DumpFormatError(
                    file.name, f"PT_LOADs keyed by p_paddr with p_vaddr in a direct map (e.g. "
                               f"program header {i}: p_vaddr {vaddr:#x}, p_paddr {paddr:#x}) and "
                               "VMCOREINFO/Xen crash notes: this is a kexec crash vmcore; open "
                               "it without forcing the QEMU ELF format (format kexec-elf)")
            if _is_process_core(loads, notes):
                raise DumpFormatError(
                    file.name,
                    f"a core dump of a user process (gcore or a kernel core dump: CORE "
                    f"prpsinfo/auxv/file notes, and every PT_LOAD keyed by the process's virtual "
                    f"address with p_paddr 0, e.g. program header {i} at p_vaddr {vaddr:#x}), not "
                    "a guest-memory dump; xen-pte needs guest-physical memory: QEMU "
                    "dump-guest-memory (without -p), xl dump-core or a kdump")
            raise DumpFormatError(
                file.name,
                f"every PT_LOAD is keyed by guest virtual address (e.g. program header {i}: "
                f"p_vaddr {vaddr:#x}, p_paddr {paddr:#x}): this is a 'dump-guest-memory -p' dump. "
                "QEMU (up to 9.x) builds it from the guest's own page tables, drops entries with "
                "bits 52-62 set and mangles lower-half addresses, so it cannot be walked; take the "
                "dump again without -p")
        if virtual:
            self.notes += (f"{virtual} PT_LOAD segment(s) keyed by virtual address (-p) ignored; "
                           f"{len(physical)} physical segment(s) used",)
        return self._load_runs(physical)

    def _load_runs(self, segments) -> RunMap:
        """The run map of PT_LOAD ``segments`` keyed by ``p_paddr`` (a short segment noted)."""
        file = self._file
        runs = RunMap(file, file.name)
        short = 0
        for i, offset, _vaddr, paddr, filesz, memsz in segments:
            if filesz > memsz:
                raise DumpFormatError(
                    file.name, f"program header {i}: p_filesz {filesz:#x} exceeds p_memsz "
                               f"{memsz:#x}")
            if filesz < memsz:
                short += 1
            runs.add(paddr, offset, filesz, f"PT_LOAD (program header {i})")
        runs.finish()
        if short:
            self.notes += (f"{short} segment(s) store less than they span (p_filesz < p_memsz): "
                           "the rest is not in the dump",)
        return runs

    def read(self, paddr: int, size: int) -> bytes:
        """Return ``size`` bytes of guest-physical memory at ``paddr``.

        :raises UnreadableMemory: for any byte no segment stores.
        """
        return self._runs.read(paddr, size)

    def ranges(self) -> Sequence[Tuple[int, int]]:
        return self._runs.ranges()

    def vcpus(self) -> List[VcpuRegs]:
        return list(self._vcpus)

    def describe(self) -> str:
        text = (f"{self.name}: ELF{self.elf_class} {self.machine}, {len(self._runs)} physical "
                f"segment(s), {len(self._vcpus)} vCPU(s)")
        return "; ".join((text,) + self.notes)

