"""kdump-compressed dumps (QEMU ``dump-guest-memory -z/-l/-s``, makedumpfile), plain or flattened.

Layout (QEMU ``include/sysemu/dump.h`` and ``dump/dump.c``, which follow makedumpfile's
``diskdump_mod.h``; header version 6), all little-endian, in blocks of ``block_size`` bytes:

* block 0: ``disk_dump_header`` ("KDUMP   " or "DISKDUMP", version, utsname, timestamp, status,
  block_size, sub_hdr_size, bitmap_blocks, max_mapnr, ..., nr_cpus). The 64-bit variant has a
  22-byte timestamp and block_size at offset 428, the 32-bit one a 10-byte timestamp and block_size
  at 416; we take the variant whose fields are consistent;
* block 1..: ``kdump_sub_header`` (phys_base, dump_level, ..., offset_note/note_size, ...,
  max_mapnr_64) followed by the ELF notes QEMU embeds (the same stream as in its ELF dumps);
* ``bitmap_blocks`` blocks: two bitmaps of equal size, bit ``pfn % 8`` of byte ``pfn / 8``; the
  first marks RAM, the second the pages stored in the dump;
* one 24-byte page descriptor ``{u64 offset, u32 size, u32 flags, u64 page_flags}`` per set bit of
  the second bitmap, in pfn order; flags 0x1 zlib, 0x2 lzo, 0x4 snappy, 0x20 zstd (makedumpfile),
  0 stored as is (QEMU also points every all-zero page at one shared zero page).

Failure modes: :class:`~gdb_xenpte.errors.DumpFormatError` at open for a wrong signature, an
inconsistent or truncated header, bitmap or descriptor table; :class:`UnreadableMemory` from
:meth:`KdumpSource.read` for a page not in the dump, a page whose data lies outside the file, one
that does not decompress to exactly one block, or one compressed with a method whose Python package
is not installed (the message names the page and the package).
"""

from __future__ import annotations

import struct
import zlib
from array import array
from collections import OrderedDict
from typing import Callable, List, Optional, Sequence, Tuple

from ..errors import DumpFormatError, UnreadableMemory
from .base import FileSource, VcpuRegs
from .filemap import ByteView
from .flattened import FlattenedView, is_flattened
from .notes import check_note_area, iter_notes, lma_hint_from_prstatus, qemu_vcpus
from .xen_crash import HostNotes, is_kexec_note, parse_host_notes

__all__ = ["KdumpSource"]

SIGNATURES = (b"KDUMP   ", b"DISKDUMP")
DESCRIPTOR = struct.Struct("<QIIQ")  # offset, size, flags, page_flags

# Header variants: (name, offset of status..nr_cpus block, sub-header struct, its field names).
_HEADER_TAIL = struct.Struct("<10I")  # status, block_size, sub_hdr_size, bitmap_blocks, max_mapnr,
                                      # total_ram_blocks, device_blocks, written_blocks,
                                      # current_cpu, nr_cpus
_VARIANTS = (
    (64, 424, struct.Struct("<QIIQQQQQQQQQQQ")),
    (32, 412, struct.Struct("<IIIIIQIQIQIQQQ")),
)
# Sub-header field order is the same in both variants.
_SUB_FIELDS = ("phys_base", "dump_level", "split", "start_pfn", "end_pfn", "offset_vmcoreinfo",
               "size_vmcoreinfo", "offset_note", "note_size", "offset_eraseinfo",
               "size_eraseinfo", "start_pfn_64", "end_pfn_64", "max_mapnr_64")

COMPRESS_ZLIB, COMPRESS_LZO, COMPRESS_SNAPPY, COMPRESS_ZSTD = 0x1, 0x2, 0x4, 0x20
_CHUNK_BITS = 4096  # pfns per rank-table entry
_CACHE_PAGES = 256
# The most pfns whose bitmaps we read into memory: 2**32 bits (2 x 512 MiB of bitmap, 16 TiB of RAM
# in 4 KiB pages). A header claiming more is refused before anything is allocated.
MAX_MAPNR = 1 << 32


def _popcount(data: bytes) -> int:
    return int.from_bytes(data, "little").bit_count()


def _zlib_page(data: bytes, size: int) -> bytes:
    """Inflate at most one byte more than a page, so a hostile page cannot balloon."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, size + 1)
    if not inflater.eof:
        raise ValueError("stream incomplete or longer than a page")
    return out


def _decompressor(flags: int) -> Tuple[str, Optional[Callable[[bytes, int], bytes]], str]:
    """Return (method name, function(data, out_size) or None, package to install)."""
    if flags & COMPRESS_ZLIB:
        return "zlib", _zlib_page, ""
    if flags & COMPRESS_LZO:
        try:
            import lzo  # python-lzo
        except ImportError:
            return "lzo", None, "python-lzo"
        # python-lzo expects a 5-byte header; raw LZO1X data needs header=False + buflen.
        return "lzo", lambda data, size: lzo.decompress(data, False, size), "python-lzo"
    if flags & COMPRESS_SNAPPY:
        try:
            import snappy  # python-snappy
        except ImportError:
            return "snappy", None, "python-snappy"
        return "snappy", lambda data, size: snappy.uncompress(data), "python-snappy"
    if flags & COMPRESS_ZSTD:
        try:
            import zstandard
        except ImportError:
            return "zstd", None, "zstandard"
        return "zstd", (lambda data, size:
                        zstandard.ZstdDecompressor().decompress(data, max_output_size=size)), ""
    return f"unknown method (flags {flags:#x})", None, ""


class KdumpSource(FileSource):
    """Physical memory and vCPU registers of a kdump-compressed dump.

    :param path: the dump file (plain or flattened); opened read-only (never mapped: see filemap).
    :raises DumpFormatError: see the module docstring.
    """

    format_name = "kdump"

    @classmethod
    def probe(cls, head: bytes) -> bool:
        """Return True if ``head`` starts a kdump-compressed file, plain or flattened."""
        return head[:8] in SIGNATURES or is_flattened(head)

    def _open(self) -> None:
        file = self._file
        self.notes: Tuple[str, ...] = ()
        self.host: Optional[HostNotes] = None  # a kexec crash dump's notes (Xen host: pCPUs)
        self.flattened = is_flattened(file.head(16))
        view: ByteView = FlattenedView(file) if self.flattened else file
        if self.flattened:
            self.notes += tuple(view.remarks)
        self._view = view
        kind = "flattened kdump" if self.flattened else "kdump"
        self.name = f"{kind} {file.name}"
        sig = view.slice(0, 8, "kdump signature")
        if self.flattened and sig[:4] == b"\x7fELF":
            raise DumpFormatError(file.name, "flattened ELF dump (makedumpfile -E -F): reassemble "
                                             "it first with 'makedumpfile -R out.elf < FILE' "
                                             "(the ELF header starts at offset 0 of the stream)")
        if sig not in SIGNATURES:
            raise DumpFormatError(file.name, f"signature {sig!r} at offset 0: expected 'KDUMP   '"
                                             " or 'DISKDUMP'")
        (self.header_version,) = view.unpack("<I", 8, "kdump header version")
        self.bits, tail, sub_struct = self._header_variant(view)
        (_status, bs, sub_blocks, bitmap_blocks, max_mapnr32, _t, _d, _w, _cur, nr_cpus) = tail
        self.block_size = bs
        sub = dict(zip(_SUB_FIELDS, view.unpack(sub_struct.format, bs, "kdump sub-header")))
        if self.header_version >= 6 and sub["max_mapnr_64"]:
            self.max_mapnr = sub["max_mapnr_64"]
        else:
            self.max_mapnr = max_mapnr32
        # Bitmaps: two halves of bitmap_blocks blocks, right after header + sub-header blocks.
        bitmap_off = (1 + sub_blocks) * bs
        half = bitmap_blocks // 2 * bs
        if half * 8 < self.max_mapnr:
            raise DumpFormatError(file.name, f"bitmaps at offset {bitmap_off:#x} hold "
                                             f"{half * 8} pfns but max_mapnr is {self.max_mapnr}")
        # Only the bits below max_mapnr mean anything: read those, however many blocks the header
        # claims, and only after checking that they can be in the file at all.
        used = -(-self.max_mapnr // 8)
        if self.max_mapnr > MAX_MAPNR:
            raise DumpFormatError(file.name, f"max_mapnr {self.max_mapnr:#x} (kdump header) is "
                                             f"more pfns than {MAX_MAPNR:#x}, the most this reader "
                                             f"holds bitmaps for ({MAX_MAPNR >> 28} TiB of RAM in "
                                             "4 KiB pages): corrupt header")
        if self.flattened and 2 * used > file.size:
            raise DumpFormatError(file.name, f"the two bitmaps at offset {bitmap_off:#x} need "
                                             f"{2 * used:#x} bytes for max_mapnr {self.max_mapnr}, "
                                             f"but the whole flattened file holds {file.size:#x}: "
                                             "corrupt header")
        view.check_range(bitmap_off, 2 * half, f"bitmaps ({bitmap_blocks} blocks)")
        # The RAM bitmap only words a miss ("excluded" vs "not in dump"): read a byte of it then.
        self._bitmap_ram_off = bitmap_off
        self._bitmap = view.slice(bitmap_off + half, used, "second (dumped pages) bitmap")
        self._build_rank()
        self._desc_off = (1 + sub_blocks + bitmap_blocks) * bs
        view.check_range(self._desc_off, self._nr_dumped * DESCRIPTOR.size,
                         f"page descriptor table ({self._nr_dumped} descriptors)")
        self._vcpus = self._read_vcpus(sub, view)
        self._cache: "OrderedDict[int, bytes]" = OrderedDict()

    def _header_variant(self, view: ByteView):
        """Pick the 64- or 32-bit header layout: the one whose block size and counts make sense."""
        problems = []
        for bits, tail_at, sub_struct in _VARIANTS:
            try:
                tail = view.unpack(_HEADER_TAIL.format, tail_at, f"{bits}-bit kdump header")
            except DumpFormatError as err:
                problems.append(str(err.detail))
                continue
            bs, sub_blocks, bitmap_blocks = tail[1], tail[2], tail[3]
            if (bs >= 512 and bs & (bs - 1) == 0 and bs <= 1 << 20 and sub_blocks >= 1
                    and bitmap_blocks >= 2 and bitmap_blocks % 2 == 0):
                return bits, tail, sub_struct
            problems.append(f"{bits}-bit layout: block_size {bs} at offset {tail_at + 4:#x}, "
                            f"sub_hdr_size {sub_blocks}, bitmap_blocks {bitmap_blocks}")
        raise DumpFormatError(self._file.name, "inconsistent kdump header (" + "; ".join(problems)
                              + "): expected a power-of-two block size, a sub-header and two "
                                "bitmaps")

    def _build_rank(self) -> None:
        """Count set bits of the second bitmap per chunk, so a pfn's descriptor index is cheap."""
        chunk = _CHUNK_BITS // 8
        bitmap = self._bitmap
        self._rank = array("Q")
        total = 0
        for at in range(0, len(bitmap), chunk):
            self._rank.append(total)
            total += _popcount(bitmap[at:at + chunk])
        self._nr_dumped = total

    def _read_vcpus(self, sub: dict, view: ByteView) -> List[VcpuRegs]:
        if self.header_version < 4 or not sub["note_size"]:
            self.notes += ("no ELF notes in the sub-header: registers unknown",)
            return []
        off, size = sub["offset_note"], sub["note_size"]
        check_note_area(self._file.name, off, size, "the sub-header's note area")
        blob = view.slice(off, size, "ELF note area of the sub-header")
        notes = list(iter_notes(blob, off, self._file.name))
        if any(is_kexec_note(n) for n in notes) and not any(n.name == "QEMU" for n in notes):
            # makedumpfile's copy of a kexec crash vmcore: pages are machine frames, CPU state
            # is in the crash notes (a Xen host's pCPUs).
            self.host = parse_host_notes(notes, self._file.name)
            self.notes += self.host.remarks
            if self.host.is_xen:
                self.name = f"Xen host {self.name} (makedumpfile)"
            if self.host.xen_version is not None:
                self.xen_version = self.host.xen_version
            return list(self.host.pcpus)
        vcpus = qemu_vcpus(notes, self._file.name, lma_hint_from_prstatus(notes))
        if not vcpus:
            self.notes += ("no QEMU CPU notes: registers unknown (give --cr3/--cr4)",)
        return vcpus

    def _is_dumped(self, pfn: int) -> bool:
        return pfn < len(self._bitmap) * 8 and bool(self._bitmap[pfn >> 3] >> (pfn & 7) & 1)

    def _descriptor_index(self, pfn: int) -> int:
        chunk_bytes = _CHUNK_BITS // 8
        first = pfn // _CHUNK_BITS * chunk_bytes
        partial = _popcount(self._bitmap[first:pfn >> 3])
        partial += _popcount(bytes([self._bitmap[pfn >> 3] & ((1 << (pfn & 7)) - 1)]))
        return self._rank[pfn // _CHUNK_BITS] + partial

    def _page(self, pfn: int) -> bytes:
        """Return the whole decompressed page ``pfn``; see :meth:`read` for errors."""
        cached = self._cache.get(pfn)
        if cached is not None:
            self._cache.move_to_end(pfn)
            return cached
        paddr = pfn * self.block_size
        what = self._file.name
        if pfn < 0 or pfn >= self.max_mapnr or not self._is_dumped(pfn):
            in_ram = 0 <= pfn < self.max_mapnr and self._view.slice(
                self._bitmap_ram_off + (pfn >> 3), 1, "first (RAM) bitmap")[0] >> (pfn & 7) & 1
            raise UnreadableMemory(what, paddr, "page excluded from the dump" if in_ram
                                   else "not in dump")
        index = self._descriptor_index(pfn)
        desc_at = self._desc_off + index * DESCRIPTOR.size
        offset, size, flags, _pf = DESCRIPTOR.unpack(
            self._view.slice(desc_at, DESCRIPTOR.size, "page descriptor"))
        where = f"page data (descriptor at offset {desc_at:#x}: offset {offset:#x}, size {size})"
        if offset + size > self._view.size:
            raise UnreadableMemory(what, paddr, f"{where} lies outside the file")
        if size > 2 * self.block_size:
            raise UnreadableMemory(what, paddr, f"{where} is larger than any stored page can be")
        data = self._view.slice(offset, size, where)
        if flags & (COMPRESS_ZLIB | COMPRESS_LZO | COMPRESS_SNAPPY | COMPRESS_ZSTD):
            method, decompress, package = _decompressor(flags)
            if decompress is None:
                raise UnreadableMemory(
                    what, paddr, f"{where} is compressed with {method}; install {package} "
                                 "(pip install 'gdb_xenpte[compress]') to read it")
            try:
                data = decompress(data, self.block_size)
            except Exception as err:  # each library has its own error type; all mean "corrupt"
                raise UnreadableMemory(what, paddr, f"{where} does not decompress ({method}: "
                                                    f"{err})") from None
        elif flags:
            raise UnreadableMemory(what, paddr, f"{where} has unknown flags {flags:#x}")
        if len(data) != self.block_size:
            raise UnreadableMemory(what, paddr, f"{where} holds {len(data)} bytes after "
                                                f"decompression, expected {self.block_size}")
        self._cache[pfn] = data
        if len(self._cache) > _CACHE_PAGES:
            self._cache.popitem(last=False)
        return data

    def read(self, paddr: int, size: int) -> bytes:
        """Return ``size`` bytes of guest-physical memory at ``paddr``.

        :raises UnreadableMemory: naming the first page that is not in the dump or is unreadable.
        """
        out = []
        addr, end = paddr, paddr + size
        bs = self.block_size
        while addr < end:
            pfn, within = divmod(addr, bs)
            take = min(end - addr, bs - within)
            page = self._page(pfn)
            out.append(page[within:within + take])
            addr += take
        return b"".join(out)

    def ranges(self) -> Sequence[Tuple[int, int]]:
        """Return the stored physical ranges (runs of set bits in the second bitmap)."""
        out: List[Tuple[int, int]] = []
        bs = self.block_size
        bitmap = self._bitmap
        limit = self.max_mapnr
        run_start = None
        for byte_at, byte in enumerate(bitmap):
            if byte == 0 and run_start is None:
                continue
            if byte == 0xFF and run_start is not None:
                continue
            for bit in range(8):
                pfn = byte_at * 8 + bit
                if pfn >= limit:
                    break
                if byte >> bit & 1:
                    if run_start is None:
                        run_start = pfn
                elif run_start is not None:
                    out.append((run_start * bs, pfn * bs))
                    run_start = None
        if run_start is not None:
            out.append((run_start * bs, min(len(bitmap) * 8, limit) * bs))
        return out

    def vcpus(self) -> List[VcpuRegs]:
        return list(self._vcpus)

    def describe(self) -> str:
        cpus = "pCPU(s)" if self.host is not None else "vCPU(s)"
        text = (f"{self.name}: {self.bits}-bit header v{self.header_version}, block size "
                f"{self.block_size}, {self._nr_dumped} page(s) stored, {len(self._vcpus)} {cpus}")
        extra: Tuple[str, ...] = ()
        if self.host is not None:
            from .kexec_elf import describe_host
            extra = describe_host(self.host, self)
        return "; ".join((text,) + extra + self.notes)

