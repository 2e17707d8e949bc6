"""Dump writers for the tests: small files in the documented formats, from pages and registers.

Each writer takes ``pages`` (physical address -> 4096 bytes; for Xen PV, keyed by PFN * 4096 with a
separate pfn -> mfn map) and a list of register dicts, writes one file, and returns a
:class:`Layout` naming the file offset of every structure (used by the truncation and corruption
tests). The formats follow the sources cited in each reader's docstring; nothing here is shared with
the readers, so a misunderstanding on one side shows up as a failing test.

Register dict keys (all optional): ``cr0 cr2 cr3 cr4 rip rflags cs`` and, per format, ``cs_flags``
(QEMU segment flags), ``online``, ``in_kernel``, ``user_cr3`` (Xen). For Xen PV, ``cr3`` and
``user_cr3`` are *machine* addresses (MFN << 12); the writer encodes them as Xen does.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

PAGE = 4096
EM_386 = 3
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
NT_PRSTATUS = 1


@dataclass
class Layout:
    """Where a writer put things: ``offsets`` maps a structure name to its file offset."""

    size: int = 0
    offsets: Dict[str, int] = field(default_factory=dict)

    def boundaries(self) -> List[int]:
        """Every interesting truncation point (structure starts and the end), sorted, unique."""
        return sorted({o for o in self.offsets.values() if 0 <= o <= self.size} | {self.size})


def coalesce(pages: Dict[int, bytes]) -> List[Tuple[int, bytes]]:
    """Group pages into ``(start, bytes)`` runs of physically contiguous pages."""
    runs: List[Tuple[int, bytearray]] = []
    for addr in sorted(pages):
        data = pages[addr]
        assert len(data) == PAGE and addr % PAGE == 0
        if runs and runs[-1][0] + len(runs[-1][1]) == addr:
            runs[-1][1].extend(data)
        else:
            runs.append((addr, bytearray(data)))
    return [(a, bytes(d)) for a, d in runs]


def _note(name: bytes, ntype: int, desc: bytes) -> bytes:
    name_z = name + b"\0"
    pad = lambda b: b + b"\0" * (-len(b) % 4)  # noqa: E731 (tiny local helper)
    return struct.pack("<III", len(name_z), len(desc), ntype) + pad(name_z) + pad(desc)


# ----------------------------------------------------------------------------------------------
# QEMU notes (QEMUCPUState v1, 440 bytes; see gdb_xenpte/sources/notes.py for the citation)

def qemu_cpu_state(regs: dict) -> bytes:
    """Pack one QEMUCPUState (version 1) from a register dict."""
    out = bytearray(440)
    struct.pack_into("<II", out, 0, regs.get("version", 1), 440)
    struct.pack_into("<QQ", out, 136, regs.get("rip", 0), regs.get("rflags", 0x2))
    # cs is the first of 10 segments {u32 selector, limit, flags, pad; u64 base}.
    struct.pack_into("<IIIIQ", out, 152, regs.get("cs", 0x10), 0xFFFFFFFF,
                     regs.get("cs_flags", 1 << 21), 0, 0)
    struct.pack_into("<5Q", out, 392, regs.get("cr0", 0x80050033), 0, regs.get("cr2", 0),
                     regs.get("cr3", 0), regs.get("cr4", 0x20))
    return bytes(out)


def qemu_notes(vcpus: Sequence[dict], lma: bool = True) -> bytes:
    """The note stream QEMU writes: one CORE prstatus per CPU, then one QEMU note per CPU."""
    prstatus_size = 336 if lma else 144
    out = b"".join(_note(b"CORE", NT_PRSTATUS, bytes(prstatus_size)) for _ in vcpus)
    return out + b"".join(_note(b"QEMU", 0, qemu_cpu_state(r)) for r in vcpus)


# ----------------------------------------------------------------------------------------------
# QEMU dump-guest-memory ELF

def write_qemu_elf(path, pages: Dict[int, bytes], vcpus: Sequence[dict], *, elf_class: int = 64,
                   machine: int = EM_X86_64,
                   vaddr: Callable[[int], int] = lambda paddr: paddr,
                   loads: Optional[Iterable[Tuple[int, int, bytes, int]]] = None,
                   notes: Optional[bytes] = None, note_filesz: Optional[int] = None,
                   pn_xnum: bool = False) -> Layout:
    """Write a QEMU-style ELF core: ELF header, PT_NOTE + PT_LOADs, notes, then segment data.

    :param vaddr: p_vaddr for a segment at a physical address (identity = QEMU >= 2.x without -p).
    :param loads: explicit ``(paddr, vaddr, data, memsz)`` segments instead of ``pages``.
    :param notes: the note stream instead of QEMU's (e.g. :func:`process_notes`).
    :param note_filesz: the PT_NOTE size to claim instead of the real one (a lying header).
    :param pn_xnum: write e_phnum as PN_XNUM (0xffff) and the real count in the sh_info of section
        header 0, as the ELF gABI allows (and Linux does past 65534 segments).
    """
    if loads is None:
        loads = [(p, vaddr(p), d, len(d)) for p, d in coalesce(pages)]
    loads = list(loads)
    if notes is None:
        notes = qemu_notes(vcpus, lma=(machine == EM_X86_64))
    note_claim = len(notes) if note_filesz is None else note_filesz
    ehsize, phentsize = (64, 56) if elf_class == 64 else (52, 32)
    phnum = 1 + len(loads)
    layout = Layout()
    layout.offsets["ehdr"] = 0
    layout.offsets["phdrs"] = ehsize
    note_off = ehsize + phnum * phentsize
    layout.offsets["notes"] = note_off
    data_off = note_off + len(notes)
    phdrs = []
    body = bytearray()
    for i, (paddr, va, data, memsz) in enumerate(loads):
        off = data_off + len(body)
        layout.offsets[f"load{i}"] = off
        phdrs.append((PT_LOAD, off, va, paddr, len(data), memsz))
        body.extend(data)
    ident = b"\x7fELF" + bytes([2 if elf_class == 64 else 1, 1, 1]) + bytes(9)
    shoff = data_off + len(body) if pn_xnum else 0
    e_phnum, shnum = (0xFFFF, 1) if pn_xnum else (phnum, 0)
    if elf_class == 64:
        ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 4, machine, 1, 0, ehsize, shoff, 0, ehsize,
                           phentsize, e_phnum, 64, shnum, 0)
        ph = struct.pack("<IIQQQQQQ", PT_NOTE, 0, note_off, 0, 0, note_claim, note_claim, 0)
        for t, off, va, pa, fs, ms in phdrs:
            ph += struct.pack("<IIQQQQQQ", t, 7, off, va, pa, fs, ms, 0)
        # Section header 0 (SHT_NULL): sh_info (at +44) holds the real program header count.
        shdr = struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, phnum, 0, 0)
    else:
        ehdr = struct.pack("<16sHHIIIIIHHHHHH", ident, 4, machine, 1, 0, ehsize, shoff, 0, ehsize,
                           phentsize, e_phnum, 40, shnum, 0)
        ph = struct.pack("<IIIIIIII", PT_NOTE, note_off, 0, 0, note_claim, note_claim, 0, 0)
        for t, off, va, pa, fs, ms in phdrs:
            ph += struct.pack("<IIIIIIII", t, off, va, pa, fs, ms, 7, 0)
        shdr = struct.pack("<IIIIIIIIII", 0, 0, 0, 0, 0, 0, 0, phnum, 0, 0)
    blob = ehdr + ph + notes + bytes(body) + (shdr if pn_xnum else b"")
    layout.size = len(blob)
    with open(path, "wb") as fh:
        fh.write(blob)
    return layout


NT_PRPSINFO = 3
NT_AUXV = 6
NT_FILE = 0x46494C45  # "FILE"


def process_notes() -> bytes:
    """The notes a Linux process core carries (kernel ``fill_note_info``, gdb ``gcore``): CORE
    prstatus, prpsinfo, auxv and the mapped-files table; no QEMU note."""
    return (_note(b"CORE", NT_PRSTATUS, bytes(336)) + _note(b"CORE", NT_PRPSINFO, bytes(136))
            + _note(b"CORE", NT_AUXV, bytes(16)) + _note(b"CORE", NT_FILE, bytes(16)))


def write_process_core(path, pages: Dict[int, bytes]) -> Layout:
    """A ``gcore``-like core of a user process: PT_LOADs keyed by user virtual address with
    ``p_paddr`` 0 (what Linux and gdb write), process notes."""
    loads = [(0, 0x400000 + p, d, len(d)) for p, d in coalesce(pages)]
    return write_qemu_elf(path, {}, [], loads=loads, notes=process_notes())


def write_elf_core_header(path, *, machine: int, big_endian: bool = False,
                          elf_class: int = 64) -> int:
    """Just an ELF ``ET_CORE`` header (and nothing else) for another machine or byte order.

    :returns: the file size.
    """
    order = ">" if big_endian else "<"
    ident = b"\x7fELF" + bytes([2 if elf_class == 64 else 1, 2 if big_endian else 1, 1]) + bytes(9)
    if elf_class == 64:
        ehdr = struct.pack(order + "16sHHIQQQIHHHHHH", ident, 4, machine, 1, 0, 64, 0, 0, 64,
                           56, 0, 64, 0, 0)
    else:
        ehdr = struct.pack(order + "16sHHIIIIIHHHHHH", ident, 4, machine, 1, 0, 52, 0, 0, 52,
                           32, 0, 40, 0, 0)
    with open(path, "wb") as fh:
        fh.write(ehdr)
    return len(ehdr)


# ----------------------------------------------------------------------------------------------
# kdump-compressed (QEMU include/sysemu/dump.h; makedumpfile diskdump_mod.h)

def _compress(data: bytes, method: str) -> Tuple[bytes, int]:
    """Compress one page as QEMU does (raw streams, no headers); store as is if it grows."""
    if method == "zlib":
        packed, flag = zlib.compress(data, 1), 0x1
    elif method == "lzo":
        import lzo  # python-lzo; raw LZO1X-1 like QEMU's lzo1x_1_compress
        packed, flag = lzo.compress(data, 1, False), 0x2
    elif method == "snappy":
        import snappy  # python-snappy; raw (unframed) snappy like QEMU's snappy_compress
        packed, flag = snappy.compress(data), 0x4
    else:
        return data, 0
    return (packed, flag) if len(packed) < len(data) else (data, 0)


Pieces = List[Tuple[int, bytes]]


def build_kdump(pages: Dict[int, bytes], vcpus: Sequence[dict], *, elf_class: int = 64,
                compress: str = "zlib", lma: bool = True,
                page_flags: Optional[Dict[int, Tuple[int, bytes]]] = None,
                notes: Optional[bytes] = None) -> Tuple[bytes, Layout, Pieces]:
    """Build a plain (seekable) kdump-compressed image in memory, QEMU-style (header version 6).

    :param page_flags: pfn -> (descriptor flags, stored bytes) overriding a page's compression,
        e.g. to store an undecompressable or lzo page.
    :param notes: the ELF note stream for the sub-header (default: QEMU's, from ``vcpus``), e.g.
        a kexec crash dump's notes as makedumpfile copies them.
    :returns: the image, its layout, and the ``(offset, bytes)`` pieces in the order a streaming
        writer would emit them (used for the flattened form).
    """
    block = PAGE
    if notes is None:
        notes = qemu_notes(vcpus, lma=lma)
    max_mapnr = (max(pages) // PAGE + 1) if pages else 1
    bitmap_len = -(-max_mapnr // 8)
    bitmap_blocks = -(-bitmap_len // block) * 2
    sub_size = 104 if elf_class == 64 else 80
    sub_hdr_blocks = -(-(sub_size + len(notes)) // block)
    offset_note = block + sub_size
    # Header.
    if elf_class == 64:
        head = struct.pack("<8sI390s22sIIIIIIIIII", b"KDUMP   ", 6, b"x86_64".ljust(390, b"\0"),
                           bytes(22), 0x1, block, sub_hdr_blocks, bitmap_blocks,
                           min(max_mapnr, 0xFFFFFFFF), 0, 0, 0, 0, len(vcpus))
        sub = struct.pack("<QIIQQQQQQQQQQQ", 0, 1, 0, 0, 0, 0, 0, offset_note, len(notes), 0, 0,
                          0, 0, max_mapnr)
    else:
        head = struct.pack("<8sI390s10sIIIIIIIIII", b"KDUMP   ", 6, b"x86_64".ljust(390, b"\0"),
                           bytes(10), 0x1, block, sub_hdr_blocks, bitmap_blocks,
                           min(max_mapnr, 0xFFFFFFFF), 0, 0, 0, 0, len(vcpus))
        sub = struct.pack("<IIIIIQIQIQIQQQ", 0, 1, 0, 0, 0, 0, 0, offset_note, len(notes), 0, 0,
                          0, 0, max_mapnr)
    assert len(sub) == sub_size
    bitmap = bytearray(bitmap_blocks // 2 * block)
    for addr in pages:
        pfn = addr // PAGE
        bitmap[pfn // 8] |= 1 << (pfn % 8)
    bitmap_off = (1 + sub_hdr_blocks) * block
    desc_off = bitmap_off + bitmap_blocks * block
    nr = len(pages)
    data_off = desc_off + 24 * nr
    descs = bytearray()
    data = bytearray(bytes(block))  # shared zero page, as QEMU writes it
    for addr in sorted(pages):
        pfn = addr // PAGE
        if page_flags and pfn in page_flags:
            flags, stored = page_flags[pfn]
        elif pages[addr] == bytes(PAGE):
            descs += struct.pack("<QIIQ", data_off, block, 0, 0)
            continue
        else:
            stored, flags = _compress(pages[addr], compress)
        descs += struct.pack("<QIIQ", data_off + len(data), len(stored), flags, 0)
        data += stored
    layout = Layout()
    layout.offsets.update(header=0, sub_header=block, notes=offset_note, bitmap1=bitmap_off,
                          bitmap2=bitmap_off + len(bitmap), descriptors=desc_off,
                          page_data=data_off)
    pieces = [(0, head), (block, sub), (offset_note, notes), (bitmap_off, bytes(bitmap)),
              (bitmap_off + len(bitmap), bytes(bitmap)), (desc_off, bytes(descs)),
              (data_off, bytes(data))]
    image = bytearray(data_off + len(data))
    for off, piece in pieces:
        image[off:off + len(piece)] = piece
    layout.size = len(image)
    return bytes(image), layout, pieces


def write_kdump(path, pages: Dict[int, bytes], vcpus: Sequence[dict], *,
                flattened: bool = False, chunk: int = 3 * PAGE, **kw) -> Layout:
    """Write a kdump-compressed file, plain or in makedumpfile's flattened stream form.

    The flattened form (QEMU's ``dump-guest-memory -z`` up to 8.1, and ``kdump-zlib`` since) is a
    4096-byte header {"makedumpfile", be64 type=1, be64 version=1} and then records
    {be64 offset, be64 size, data}, ending with a record whose offset and size are -1.
    For flattened files the layout names the record headers (``rec<N>``).
    """
    image, layout, pieces = build_kdump(pages, vcpus, **kw)
    if not flattened:
        with open(path, "wb") as fh:
            fh.write(image)
        return layout
    return write_flattened(path, pieces, chunk=chunk)


def write_flattened(path, pieces: Pieces, *, chunk: int = 3 * PAGE,
                    before: Iterable[Tuple[int, bytes]] = ()) -> Layout:
    """Write ``(offset, bytes)`` pieces as a flattened stream, each cut into ``chunk``-byte records.

    :param before: records written first, one each, uncut (later records win where they overlap).
    """
    out = bytearray(b"makedumpfile".ljust(16, b"\0") + struct.pack(">qq", 1, 1))
    out.extend(bytes(PAGE - len(out)))
    flat = Layout()
    flat.offsets["flat_header"] = 0
    for off, data in before:
        out += struct.pack(">qq", off, len(data)) + data
    n = 0
    for off, piece in pieces:
        for start in range(0, max(len(piece), 1), chunk):
            part = piece[start:start + chunk]
            if not part:
                continue
            flat.offsets[f"rec{n}"] = len(out)
            flat.offsets[f"rec{n}_data"] = len(out) + 16
            out += struct.pack(">qq", off + start, len(part)) + part
            n += 1
    flat.offsets["end_marker"] = len(out)
    out += struct.pack(">qq", -1, -1)
    flat.size = len(out)
    with open(path, "wb") as fh:
        fh.write(out)
    return flat


# ----------------------------------------------------------------------------------------------
# Xen xl dump-core (tools/libs/guest/xg_core.c; shared/reference/xen-pte-abi.md §7)

XC_CORE_MAGIC = 0xF00FEBED
XC_CORE_MAGIC_HVM = 0xF00FEBEE
CTXT_SIZE = 5168  # sizeof(vcpu_guest_context_any_t) on an x86_64 toolstack
VGCF_IN_KERNEL = 1 << 2
VGCF_ONLINE = 1 << 5
INVALID = 0xFFFFFFFFFFFFFFFF


def xen_vcpu_context(regs: dict, kind: str) -> bytes:
    """Pack one vcpu_guest_context (x86_64 layout, or x86_32 for ``pv32``) into 5168 bytes."""
    out = bytearray(CTXT_SIZE)
    flags = (VGCF_ONLINE if regs.get("online", True) else 0) | (
        VGCF_IN_KERNEL if regs.get("in_kernel", True) else 0)
    cr3 = regs.get("cr3", 0)
    if kind == "pv32":
        mfn = cr3 >> 12
        folded = ((mfn << 12) | (mfn >> 20)) & 0xFFFFFFFF  # compat_pfn_to_cr3
        struct.pack_into("<I", out, 512, flags)
        struct.pack_into("<I", out, 516 + 32, regs.get("rip", 0))
        struct.pack_into("<H", out, 516 + 36, regs.get("cs", 0xE019))
        struct.pack_into("<I", out, 516 + 40, regs.get("rflags", 0x202))
        struct.pack_into("<8I", out, 2716, regs.get("cr0", 0x8005003B), 0, regs.get("cr2", 0),
                         regs.get("ctrlreg3", folded), regs.get("cr4", 0x6F0), 0, 0, 0)
    else:
        struct.pack_into("<Q", out, 512, flags)
        struct.pack_into("<Q", out, 520 + 128, regs.get("rip", 0))
        struct.pack_into("<H", out, 520 + 136, regs.get("cs", 0xE033))
        struct.pack_into("<Q", out, 520 + 144, regs.get("rflags", 0x202))
        struct.pack_into("<8Q", out, 4984, regs.get("cr0", 0x8005003B),
                         regs.get("user_cr3", 0), regs.get("cr2", 0),
                         regs.get("ctrlreg3", cr3), regs.get("cr4", 0x6F0), 0, 0, 0)
    return bytes(out)


def write_xc_core(path, pages: Dict[int, bytes], vcpus: Sequence[dict], *, kind: str = "pv64",
                  p2m: Optional[Dict[int, int]] = None, xen_version: Tuple[int, int] = (4, 17),
                  shared_info: Optional[bytes] = b"\x5a" * PAGE, magic: Optional[int] = None,
                  extra_entries: Sequence[Tuple[int, int]] = (),
                  page_count_override: Optional[int] = None) -> Layout:
    """Write an xl dump-core file (section-only ELF64) for a ``pv64``, ``pv32`` or ``hvm`` guest.

    :param pages: PFN * 4096 -> page bytes.
    :param p2m: PV only, pfn -> mfn for every page.
    :param extra_entries: extra (pfn, mfn) p2m pairs (or pfns for HVM, mfn ignored) appended
        without a page behind them: to build "p2m entry past .xen_pages" files.
    :param page_count_override: nr_pages written into the header note.
    """
    pv = kind in ("pv64", "pv32")
    machine = EM_386 if kind == "pv32" else EM_X86_64
    pfns = sorted(a // PAGE for a in pages)
    nr_pages = len(pfns) if page_count_override is None else page_count_override
    if magic is None:
        magic = XC_CORE_MAGIC if pv else XC_CORE_MAGIC_HVM
    # .note.Xen: none, header, xen version (1280 bytes), format version.
    version_desc = bytearray(1280)
    struct.pack_into("<QQ", version_desc, 0, *xen_version)
    struct.pack_into("<Q", version_desc, 1268 if kind == "pv32" else 1272, PAGE)
    note = b"".join([
        _note(b"Xen", 0x2000000, b""),
        _note(b"Xen", 0x2000001, struct.pack("<QQQQ", magic, len(vcpus), nr_pages, PAGE)),
        _note(b"Xen", 0x2000002, bytes(version_desc)),
        _note(b"Xen", 0x2000003, struct.pack("<Q", 1)),
    ])
    prstatus = b"".join(xen_vcpu_context(r, kind) for r in vcpus)
    if pv:
        table = b"".join(struct.pack("<QQ", pfn, p2m[pfn]) for pfn in pfns)
        table += b"".join(struct.pack("<QQ", pfn, mfn) for pfn, mfn in extra_entries)
        table_name, table_entsize = b".xen_p2m", 16
    else:
        table = b"".join(struct.pack("<Q", pfn) for pfn in pfns)
        table += b"".join(struct.pack("<Q", pfn) for pfn, _ in extra_entries)
        table_name, table_entsize = b".xen_pfn", 8
    names = [b"", b".shstrtab", b".note.Xen", b".xen_prstatus"]
    if shared_info is not None:
        names.append(b".xen_shared_info")
    names += [b".xen_pages", table_name]
    strtab = b"\0" + b"".join(n + b"\0" for n in names[1:])
    name_off = {}
    pos = 1
    for n in names[1:]:
        name_off[n] = pos
        pos += len(n) + 1
    shnum = len(names)
    layout = Layout()
    layout.offsets["ehdr"] = 0
    layout.offsets["shdrs"] = 64
    off = 64 + 64 * shnum
    sections = {}
    for n, blob in ((b".note.Xen", note), (b".xen_prstatus", prstatus),
                    (b".xen_shared_info", shared_info)):
        if blob is None:
            continue
        sections[n] = (off, blob)
        layout.offsets[n.decode()] = off
        off += len(blob)
    off = -(-off // PAGE) * PAGE
    page_blob = b"".join(pages[pfn * PAGE] for pfn in pfns)
    sections[b".xen_pages"] = (off, page_blob)
    layout.offsets[".xen_pages"] = off
    off += len(page_blob)
    sections[table_name] = (off, table)
    layout.offsets[table_name.decode()] = off
    off += len(table)
    sections[b".shstrtab"] = (off, strtab)
    layout.offsets[".shstrtab"] = off
    off += len(strtab)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0, 1]) + bytes(7)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 4, machine, 1, 0, 0, 64, 0, 64, 56, 0, 64,
                       shnum, 1)
    entsize = {b".xen_prstatus": CTXT_SIZE, b".xen_shared_info": PAGE, b".xen_pages": PAGE,
               table_name: table_entsize}
    shdrs = bytes(64)
    for n in names[1:]:
        s_off, blob = sections[n]
        s_type = 3 if n == b".shstrtab" else 7 if n == b".note.Xen" else 1
        shdrs += struct.pack("<IIQQQQIIQQ", name_off[n], s_type, 0, 0, s_off, len(blob), 0, 0, 8,
                             entsize.get(n, 0))
    image = bytearray(off)
    image[0:64] = ehdr
    image[64:64 + len(shdrs)] = shdrs
    for s_off, blob in sections.values():
        image[s_off:s_off + len(blob)] = blob
    layout.size = len(image)
    with open(path, "wb") as fh:
        fh.write(image)
    return layout


def write_raw(path, pages: Dict[int, bytes], base: int = 0) -> int:
    """Write a flat image of ``pages`` from ``base`` (holes zero-filled); returns its size."""
    end = max(pages) + PAGE
    image = bytearray(end - base)
    for addr, data in pages.items():
        image[addr - base:addr - base + PAGE] = data
    with open(path, "wb") as fh:
        fh.write(image)
    return len(image)
