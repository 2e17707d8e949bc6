"""Xen ``xl dump-core`` files (the xc_core ELF format) of PV and HVM guests.

Facts (Xen ``tools/libs/guest/xg_core.c``, ``docs/misc/dump-core-format.txt``;
shared/reference/xen-pte-abi.md §6–7):

* ELF64 ``ET_CORE`` with **no program headers**; sections found by name. ``e_machine`` is EM_386 for
  a 32-bit PV guest, else EM_X86_64;
* ``.note.Xen``: notes named "Xen": header ``{u64 magic, nr_vcpus, nr_pages, page_size}`` (magic
  0xF00FEBED PV, 0xF00FEBEE HVM), Xen version ``{u64 major, minor, ...}``, format version;
* ``.xen_prstatus``: one ``vcpu_guest_context`` per initialised vCPU, packed, ``sh_entsize`` apart
  (5168, the size of the union, on an x86_64 toolstack); the vCPU id is not stored. Offsets of
  flags, user_regs and ctrlreg[] differ between the x86_64 and the x86_32 (compat) layout;
* ``.xen_pages``: ``nr_pages`` pages; page *i* is described by entry *i* of ``.xen_p2m`` (PV:
  ``{u64 pfn, u64 gmfn}``, gmfn being the MFN) or ``.xen_pfn`` (HVM: ``u64 pfn``); ~0 = invalid;
* CR3: PV64 ``ctrlreg[3] = mfn << 12`` (``ctrlreg[1]`` the user table); PV32 stores the MFN folded
  into 32 bits (``xen_cr3_to_pfn``: ``cr3 >> 12 | cr3 << 20``); HVM the guest's raw CR3;
* PV ``ctrlreg[4]`` is the CR4 the guest sees, not the one the hardware runs it with.

For PV guests :meth:`XcCoreSource.read` works in PFN space and :attr:`translate_frame` maps the MFNs
found in page tables back to PFNs through a reverse index built once at open; frames the dump lacks
(grants, foreign pages, Xen's own L4 slots) translate to ``None``.

Failure modes: :class:`~gdb_xenpte.errors.DumpFormatError` at open for a truncated file or
section, a missing section, a wrong magic, a page size other than 4096, a p2m/pfn entry pointing past
``.xen_pages``, or a pfn/MFN listed twice; :class:`UnreadableMemory` from :meth:`read` for PFNs not
in the dump.
"""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_left
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from ..errors import DumpFormatError
from .base import FileSource, VcpuRegs
from .elfutil import elf_errors, open_elf, probe_elf_core
from .notes import check_note_area, iter_notes
from .runs import RunMap

__all__ = ["XcCoreSource"]

XC_CORE_MAGIC = 0xF00FEBED       # PV (tools/include/xenctrl.h)
XC_CORE_MAGIC_HVM = 0xF00FEBEE   # HVM
NOTE_HEADER = 0x2000001          # XEN_ELFNOTE_DUMPCORE_HEADER (public/elfnote.h)
NOTE_XEN_VERSION = 0x2000002
NOTE_FORMAT_VERSION = 0x2000003
FORMAT_VERSION_CURRENT = 1
INVALID = 0xFFFFFFFFFFFFFFFF
PAGE_SIZE = 4096
VGCF_IN_KERNEL = 1 << 2
VGCF_ONLINE = 1 << 5
_TABLE_CHUNK = 1 << 16  # p2m/pfn entries parsed per slice of the file


class _ContextLayout:
    """Byte offsets inside one vcpu_guest_context (values from xen-pte-abi.md §7)."""

    def __init__(self, size, flags, word, rip, cs, rflags, ctrlreg):
        self.size, self.flags, self.word = size, flags, word
        self.rip, self.cs, self.rflags, self.ctrlreg = rip, cs, rflags, ctrlreg


# user_regs starts at 520 (x86_64) / 516 (x86_32); rip/eip, cs, rflags/eflags are inside it.
LAYOUT_X86_64 = _ContextLayout(5168, 512, 8, 520 + 128, 520 + 136, 520 + 144, 4984)
LAYOUT_X86_32 = _ContextLayout(2800, 512, 4, 516 + 32, 516 + 36, 516 + 40, 2716)


def _u64_array(data: bytes) -> array:
    values = array("Q")
    values.frombytes(data[:len(data) // 8 * 8])
    if sys.byteorder != "little":
        values.byteswap()
    return values


def _sorted_pairs(keys: array, values: array) -> Tuple[array, array]:
    """Sort two parallel arrays by ``keys`` (numpy when present: large dumps have millions)."""
    try:
        import numpy as np
    except ImportError:
        order = sorted(range(len(keys)), key=keys.__getitem__)
        return array("Q", (keys[i] for i in order)), array("Q", (values[i] for i in order))
    k = np.frombuffer(keys.tobytes(), dtype=np.uint64)
    v = np.frombuffer(values.tobytes(), dtype=np.uint64)
    order = np.argsort(k, kind="stable")
    return array("Q", k[order].tobytes()), array("Q", v[order].tobytes())


class XcCoreSource(FileSource):
    """Physical memory (PFN space), vCPU contexts and Xen facts of an xl dump-core file.

    :param path: the dump file; opened read-only (never mapped: see filemap).
    :raises DumpFormatError: see the module docstring.
    """

    format_name = "xc-core"

    @classmethod
    def probe(cls, head: bytes) -> bool:
        """Return True if ``head`` starts an x86 ELF64 core with sections and no program headers."""
        info = probe_elf_core(head)
        return bool(info and info["class"] == 64 and not info["phnum"] and info["shnum"])

    # -- opening ---------------------------------------------------------------------------------

    def _open(self) -> None:
        file = self._file
        self.name = f"xl dump-core {file.name}"
        self.notes: Tuple[str, ...] = ()
        elf = open_elf(file)
        if elf.elfclass != 64:
            raise DumpFormatError(file.name, "ELF class 32 at file offset 4: xl dump-core files "
                                             "are always ELF64")
        sections = self._sections(elf)
        where = (f"among the {elf.num_sections()} section headers at file offset "
                 f"{elf.header['e_shoff']:#x}")
        for required in (".note.Xen", ".xen_prstatus", ".xen_pages"):
            if required not in sections:
                raise DumpFormatError(file.name, f"no {required} section {where}: not an xl "
                                                 "dump-core file, or a damaged one")
        magic, nr_vcpus, nr_pages = self._read_notes(sections[".note.Xen"])
        machine = elf.header["e_machine"]
        if magic == XC_CORE_MAGIC_HVM:
            self.domain = "hvm"
        else:
            self.domain = "pv32" if machine == "EM_386" else "pv64"
        table = ".xen_pfn" if self.domain == "hvm" else ".xen_p2m"
        if table not in sections:
            raise DumpFormatError(file.name, f"{self.domain.upper()} dump (magic {magic:#x}) "
                                             f"without its {table} section {where}")
        pages_off, pages_size, _ = sections[".xen_pages"]
        if pages_size < nr_pages * PAGE_SIZE:
            raise DumpFormatError(file.name, f".xen_pages at file offset {pages_off:#x} holds "
                                             f"{pages_size:#x} bytes, less than nr_pages "
                                             f"({nr_pages}) pages: truncated")
        self._runs = RunMap(file, file.name)
        self.translate_frame = None
        stored = pages_size // PAGE_SIZE
        if self.domain == "hvm":
            self._index_pfn_table(sections[table], pages_off, stored, nr_pages)
        else:
            self._index_p2m_table(sections[table], pages_off, stored, nr_pages)
        self._runs.finish()
        self._vcpus = self._read_prstatus(sections[".xen_prstatus"], nr_vcpus,
                                          LAYOUT_X86_32 if self.domain == "pv32" else LAYOUT_X86_64)
        self.shared_info: Optional[bytes] = None
        if ".xen_shared_info" in sections:
            off, size, _ = sections[".xen_shared_info"]
            self.shared_info = file.slice(off, min(size, PAGE_SIZE), ".xen_shared_info")
        elif self.domain != "hvm":
            self.notes += ("no .xen_shared_info section (xl always writes it for PV guests)",)

    def _sections(self, elf) -> Dict[str, Tuple[int, int, int]]:
        """Return name -> (offset, size, entsize) for every section, checked against the file."""
        file = self._file
        header = elf.header
        with elf_errors(file.name, "section header table", header["e_shoff"]):
            count = elf.num_sections()
        if count == 0:
            raise DumpFormatError(file.name, "ELF file has neither program nor section headers")
        if header["e_shentsize"] != 64:
            raise DumpFormatError(file.name, f"e_shentsize {header['e_shentsize']} at file offset "
                                             "0x3a: ELF64 section headers are 64 bytes")
        file.check_range(header["e_shoff"], count * header["e_shentsize"], "section header table")
        # Check the name table before pyelftools seeks into it to name each section.
        with elf_errors(file.name, "section header table", header["e_shoff"]):
            shstrndx = elf.get_shstrndx()
        if not 0 < shstrndx < count:
            raise DumpFormatError(file.name, f"e_shstrndx {shstrndx} at file offset 0x3e: the file "
                                             f"has {count} section headers")
        names_at = header["e_shoff"] + shstrndx * header["e_shentsize"]
        names_off, names_size = file.unpack("<QQ", names_at + 24, "section name table header")
        file.check_range(names_off, names_size, f".shstrtab (section header at {names_at:#x})")
        out: Dict[str, Tuple[int, int, int]] = {}
        for i in range(1, count):
            at = header["e_shoff"] + i * header["e_shentsize"]
            with elf_errors(file.name, f"section header {i}", at):
                section = elf.get_section(i)
                name = section.name
                sh = section.header
                offset, size, entsize, sh_type = (sh["sh_offset"], sh["sh_size"],
                                                  sh["sh_entsize"], sh["sh_type"])
            if sh_type == "SHT_NOBITS" or name in out:
                continue
            file.check_range(offset, size, f"section {name or i} (header {i})")
            out[name] = (offset, size, entsize)
        return out

    def _read_notes(self, note_section) -> Tuple[int, int, int]:
        file = self._file
        off, size, _ = note_section
        check_note_area(file.name, off, size, ".note.Xen")
        notes = {n.type: n for n in iter_notes(file.slice(off, size, ".note.Xen"), off, file.name)
                 if n.name == "Xen"}
        header = notes.get(NOTE_HEADER)
        if header is None or len(header.desc) < 32:
            raise DumpFormatError(file.name, f".note.Xen at file offset {off:#x} lacks the 32-byte "
                                             "dump-core header note (type 0x2000001)")
        magic, nr_vcpus, nr_pages, page_size = struct.unpack_from("<4Q", header.desc)
        if magic not in (XC_CORE_MAGIC, XC_CORE_MAGIC_HVM):
            raise DumpFormatError(file.name, f"dump-core magic {magic:#x} at file offset "
                                             f"{header.desc_offset:#x}: expected "
                                             f"{XC_CORE_MAGIC:#x} (PV) or {XC_CORE_MAGIC_HVM:#x} "
                                             "(HVM)")
        if page_size != PAGE_SIZE:
            raise DumpFormatError(file.name, f"page size {page_size} at file offset "
                                             f"{header.desc_offset + 24:#x}: only 4096 is "
                                             "supported")
        version = notes.get(NOTE_XEN_VERSION)
        if version is not None and len(version.desc) >= 16:
            self.xen_version = struct.unpack_from("<QQ", version.desc)
        else:
            self.notes += ("no Xen version note: Xen version unknown",)
        fmt = notes.get(NOTE_FORMAT_VERSION)
        if fmt is not None and len(fmt.desc) >= 8:
            (self.format_version,) = struct.unpack_from("<Q", fmt.desc)
            if self.format_version != FORMAT_VERSION_CURRENT:
                self.notes += (f"dump-core format version {self.format_version:#x} (this reader "
                               "knows 0.1)",)
        return magic, nr_vcpus, nr_pages

    def _table_chunks(self, table, entry_size: int, pages_off: int, stored: int, nr_pages: int,
                      name: str) -> Iterator[Tuple[int, array]]:
        """Yield ``(first entry index, u64 words)`` chunks of a p2m/pfn table.

        Chunked so that a 64 GiB guest's table (16 M entries) is never held twice in memory.
        Checks first that every entry has a page behind it in ``.xen_pages``.

        :param stored: pages ``.xen_pages`` holds; :param nr_pages: pages the header announces.
        """
        off, size, _ = table
        entries = size // entry_size
        if entries > stored:
            raise DumpFormatError(
                self._file.name, f"{name} entry {stored} at file offset "
                                 f"{off + stored * entry_size:#x} points past .xen_pages, which "
                                 f"holds {stored} pages (at {pages_off:#x})")
        if entries < nr_pages:
            self.notes += (f"{name} lists {entries} of {nr_pages} pages: the rest are "
                           "unaddressable",)
        for first in range(0, entries, _TABLE_CHUNK):
            count = min(_TABLE_CHUNK, entries - first)
            yield first, _u64_array(self._file.slice(off + first * entry_size, count * entry_size,
                                                     name))

    def _index_pfn_table(self, table, pages_off: int, stored: int, nr_pages: int) -> None:
        add = self._runs.add
        for first, pfns in self._table_chunks(table, 8, pages_off, stored, nr_pages, ".xen_pfn"):
            for i, pfn in enumerate(pfns, first):
                if pfn != INVALID:
                    self._check_pfn(pfn, i, table[0] + 8 * i, ".xen_pfn")
                    add(pfn * PAGE_SIZE, pages_off + i * PAGE_SIZE, PAGE_SIZE,
                        f".xen_pfn entry {i}")

    def _index_p2m_table(self, table, pages_off: int, stored: int, nr_pages: int) -> None:
        add = self._runs.add
        valid_pfns, valid_mfns = array("Q"), array("Q")
        for first, pairs in self._table_chunks(table, 16, pages_off, stored, nr_pages, ".xen_p2m"):
            for j in range(len(pairs) // 2):
                pfn, mfn = pairs[2 * j], pairs[2 * j + 1]
                if pfn == INVALID or mfn == INVALID:
                    continue
                i = first + j
                self._check_pfn(pfn, i, table[0] + 16 * i, ".xen_p2m")
                add(pfn * PAGE_SIZE, pages_off + i * PAGE_SIZE, PAGE_SIZE, f".xen_p2m entry {i}")
                valid_pfns.append(pfn)
                valid_mfns.append(mfn)
        self._mfns, self._pfns = _sorted_pairs(valid_mfns, valid_pfns)
        for j in range(1, len(self._mfns)):
            if self._mfns[j] == self._mfns[j - 1]:
                raise DumpFormatError(
                    self._file.name, f".xen_p2m maps MFN {self._mfns[j]:#x} to two pfns "
                                     f"({self._pfns[j - 1]:#x} and {self._pfns[j]:#x})")
        self.translate_frame = self._mfn_to_pfn

    def _check_pfn(self, pfn: int, index: int, at: int, name: str) -> None:
        if pfn >= 1 << 52:
            raise DumpFormatError(self._file.name, f"{name} entry {index} at file offset {at:#x}: "
                                                   f"pfn {pfn:#x} is beyond any physical address")

    def _read_prstatus(self, section, nr_vcpus: int, layout: _ContextLayout) -> List[VcpuRegs]:
        file = self._file
        off, size, entsize = section
        stride = entsize or LAYOUT_X86_64.size
        if stride < layout.size:
            raise DumpFormatError(file.name, f".xen_prstatus entry size {stride} is smaller than "
                                             f"the {layout.size}-byte vcpu_guest_context layout")
        if nr_vcpus * stride > size:
            raise DumpFormatError(file.name, f".xen_prstatus at file offset {off:#x} holds "
                                             f"{size // stride} contexts, the header announces "
                                             f"{nr_vcpus}")
        return [self._decode_context(file.slice(off + i * stride, layout.size,
                                                f".xen_prstatus entry {i}"), i, layout)
                for i in range(nr_vcpus)]

    def _decode_context(self, ctx: bytes, index: int, layout: _ContextLayout) -> VcpuRegs:
        word = "<Q" if layout.word == 8 else "<I"
        (flags,) = struct.unpack_from(word, ctx, layout.flags)
        (rip,) = struct.unpack_from(word, ctx, layout.rip)
        (cs,) = struct.unpack_from("<H", ctx, layout.cs)
        (rflags,) = struct.unpack_from(word, ctx, layout.rflags)
        ctrl = struct.unpack_from("<8" + word[1], ctx, layout.ctrlreg)
        remarks = ["EFER not in xl dump-core", "vCPU ids are not stored: index = position among "
                                               "the initialised vCPUs"]
        user_cr3 = None
        if self.domain == "pv64":
            cr3 = ctrl[3] >> 12 << 12          # xen_cr3_to_pfn (x86_64): cr3 >> 12
            user_cr3 = (ctrl[1] >> 12 << 12) or None
            long_mode: Optional[bool] = True
            if not flags & VGCF_IN_KERNEL:
                remarks.append("vCPU was in guest user mode: the hardware ran user_cr3")
        elif self.domain == "pv32":
            mfn = ((ctrl[3] >> 12) | (ctrl[3] << 20)) & 0xFFFFFFFF  # xen_cr3_to_pfn (x86_32)
            cr3 = mfn << 12
            long_mode = False
            remarks.append("32-bit PV: the guest's tables are PAE; Xen supplies the top level")
        else:
            cr3 = ctrl[3]
            long_mode = None
        pv = self.domain != "hvm"
        if pv:
            remarks.append("CR4 is the guest-visible ctrlreg[4], not the hardware value")
        return VcpuRegs(index=index, cr0=ctrl[0], cr2=ctrl[2], cr3=cr3, cr4=ctrl[4], rip=rip,
                        rflags=rflags, cs=cs, long_mode=long_mode,
                        online=bool(flags & VGCF_ONLINE), cr4_is_guest_view=pv,
                        user_cr3=user_cr3, notes=tuple(remarks))

    # -- the source interface --------------------------------------------------------------------

    def _mfn_to_pfn(self, mfn: int) -> Optional[int]:
        """Return the PFN whose page is machine frame ``mfn``, or None if the dump lacks it."""
        i = bisect_left(self._mfns, mfn)
        if i < len(self._mfns) and self._mfns[i] == mfn:
            return self._pfns[i]
        return None

    def read(self, paddr: int, size: int) -> bytes:
        """Return ``size`` bytes at pseudo-physical address ``paddr`` (PFN space for PV).

        :raises UnreadableMemory: for any byte whose page is not in the dump.
        """
        return self._runs.read(paddr, size)

    def ranges(self) -> Sequence[Tuple[int, int]]:
        return self._runs.ranges()

    def vcpus(self) -> List[VcpuRegs]:
        return list(self._vcpus)

    def describe(self) -> str:
        version = "Xen %d.%d" % self.xen_version if self.xen_version else "Xen version unknown"
        text = (f"{self.name}: {self.domain} guest, {version}, {len(self._vcpus)} vCPU "
                f"context(s), {sum(e - s for s, e in self.ranges()) // PAGE_SIZE} page(s)")
        return "; ".join((text,) + self.notes)

