"""kdump-compressed dumps, plain and flattened, 64- and 32-bit headers."""

import struct
import sys
import zlib

import pytest

from gdb_xenpte.errors import DumpFormatError, UnreadableMemory
from gdb_xenpte.sources.kdump import KdumpSource
from gdb_xenpte.sources.open import detect_format, open_dump
from samples import PAGE, VCPUS, sample_low_pages, sample_pages
from writers import build_kdump, write_kdump


@pytest.mark.parametrize("flattened", [False, True], ids=["plain", "flattened"])
@pytest.mark.parametrize("elf_class", [64, 32])
def test_roundtrip(tmp_path, flattened, elf_class):
    pages = sample_pages() if elf_class == 64 else sample_low_pages()
    path = tmp_path / "guest.kdump"
    write_kdump(path, pages, VCPUS, flattened=flattened, elf_class=elf_class)
    assert detect_format(str(path)) == "kdump"
    with open_dump(str(path)) as src:
        assert isinstance(src, KdumpSource) and src.flattened is flattened
        assert src.bits == elf_class
        for addr, data in pages.items():
            assert src.read(addr, PAGE) == data
        assert src.read(0x1800, PAGE) == pages[0x1000][0x800:] + pages[0x2000][:0x800]
        expected = [(0, 0x4000), (0x5000, 0x7000)]
        if elf_class == 64:
            expected.append((1 << 32, (1 << 32) + PAGE))
        assert list(src.ranges()) == expected
        v0, v1 = src.vcpus()
        assert (v0.cr3, v0.cr4, v1.cr3, v0.long_mode) == (0x5000, 0x3506F0, 0x6000, True)
        with pytest.raises(UnreadableMemory) as err:
            src.read(0x4000, 1)
        assert err.value.paddr == 0x4000 and "guest.kdump" in str(err.value)
        with pytest.raises(UnreadableMemory):
            src.read(1 << 40, 1)


def test_lma_hint_from_i386_prstatus(tmp_path):
    path = tmp_path / "g.kdump"
    write_kdump(path, sample_low_pages(), [dict(VCPUS[1])], lma=False, elf_class=32)
    with KdumpSource(str(path)) as src:
        (v0,) = src.vcpus()
        assert v0.long_mode is False


def test_uncompressed_pages(tmp_path):
    pages = sample_pages()
    path = tmp_path / "raw.kdump"
    write_kdump(path, pages, VCPUS, compress="none")
    with KdumpSource(str(path)) as src:
        for addr, data in pages.items():
            assert src.read(addr, PAGE) == data


def test_page_that_does_not_decompress(tmp_path):
    pages = sample_pages()
    path = tmp_path / "bad.kdump"
    write_kdump(path, pages, VCPUS, page_flags={1: (0x1, b"this is not zlib data")})
    with KdumpSource(str(path)) as src:
        with pytest.raises(UnreadableMemory) as err:
            src.read(0x1000, 8)
        assert err.value.paddr == 0x1000 and "decompress" in str(err.value)
        assert "bad.kdump" in str(err.value)
        # The rest of the dump is still readable.
        assert src.read(0x2000, PAGE) == pages[0x2000]


def test_page_that_decompresses_to_the_wrong_size(tmp_path):
    path = tmp_path / "short.kdump"
    write_kdump(path, sample_pages(), VCPUS, page_flags={2: (0x1, zlib.compress(b"x" * 100))})
    with KdumpSource(str(path)) as src:
        with pytest.raises(UnreadableMemory) as err:
            src.read(0x2000, 8)
        assert "100 bytes" in str(err.value)


@pytest.mark.parametrize("flag,package", [(0x2, "python-lzo"), (0x4, "python-snappy")])
def test_missing_compression_package_names_page(tmp_path, monkeypatch, flag, package):
    # Hide the package even where it is installed: None in sys.modules makes import fail.
    monkeypatch.setitem(sys.modules, {"python-lzo": "lzo", "python-snappy": "snappy"}[package],
                        None)
    path = tmp_path / "lzo.kdump"
    write_kdump(path, sample_pages(), VCPUS, page_flags={5: (flag, b"\x01\x02\x03")})
    with KdumpSource(str(path)) as src:
        with pytest.raises(UnreadableMemory) as err:
            src.read(0x5000, 8)
        assert package in str(err.value) and err.value.paddr == 0x5000


def test_descriptor_pointing_outside_file(tmp_path):
    pages = sample_pages()
    image, layout, _ = build_kdump(pages, VCPUS)
    image = bytearray(image)
    # The second stored page (pfn 1) has descriptor index 1.
    at = layout.offsets["descriptors"] + 24
    struct.pack_into("<Q", image, at, 1 << 40)
    path = tmp_path / "off.kdump"
    path.write_bytes(bytes(image))
    with KdumpSource(str(path)) as src:
        with pytest.raises(UnreadableMemory) as err:
            src.read(0x1000, 8)
        assert "outside the file" in str(err.value) and f"{at:#x}" in str(err.value)


def test_flattened_later_records_win_and_holes_read_zero(tmp_path):
    """makedumpfile rewrites its sub-header at the end of a flattened stream."""
    from gdb_xenpte.sources.filemap import MappedFile
    from gdb_xenpte.sources.flattened import FlattenedView

    out = bytearray(b"makedumpfile".ljust(16, b"\0") + struct.pack(">qq", 1, 1))
    out += bytes(4096 - len(out))
    for off, data in ((0, b"A" * 10), (20, b"B" * 10), (5, b"C" * 10), (0, b"D" * 2),
                      (26, b"E" * 10)):
        out += struct.pack(">qq", off, len(data)) + data
    out += struct.pack(">qq", -1, -1)
    path = tmp_path / "f.flat"
    path.write_bytes(bytes(out))
    file = MappedFile(str(path))
    view = FlattenedView(file)
    assert view.size == 36
    assert view.slice(0, 36, "all") == (b"DD" + b"AAA" + b"C" * 10 + b"\0" * 5 + b"B" * 6
                                         + b"E" * 10)
    file.close()


def test_negative_address_is_unreadable(tmp_path):
    path = tmp_path / "g.kdump"
    write_kdump(path, sample_pages(), VCPUS)
    with KdumpSource(str(path)) as src:
        with pytest.raises(UnreadableMemory):
            src.read(-PAGE, 8)


def test_flattened_elf_gets_a_hint(tmp_path):
    out = bytearray(b"makedumpfile".ljust(16, b"\0") + struct.pack(">qq", 1, 1))
    out += bytes(4096 - len(out))
    out += struct.pack(">qq", 0, 64) + b"\x7fELF" + bytes(60) + struct.pack(">qq", -1, -1)
    path = tmp_path / "elf.flat"
    path.write_bytes(bytes(out))
    with pytest.raises(DumpFormatError) as err:
        open_dump(str(path))
    assert "makedumpfile -R" in str(err.value) and "elf.flat" in str(err.value)


@pytest.mark.parametrize("method", ["lzo", "snappy"])
@pytest.mark.parametrize("flattened", [False, True], ids=["plain", "flattened"])
def test_lzo_and_snappy_pages(tmp_path, method, flattened):
    """Only where the optional packages are installed (pip install 'gdb_xenpte[compress]')."""
    pytest.importorskip(method)
    pages = sample_pages()
    path = tmp_path / f"g.{method}"
    write_kdump(path, pages, VCPUS, compress=method, flattened=flattened)
    with KdumpSource(str(path)) as src:
        for addr, data in pages.items():
            assert src.read(addr, PAGE) == data
    write_kdump(path, pages, VCPUS, page_flags={1: ({"lzo": 2, "snappy": 4}[method], b"garbage")})
    with KdumpSource(str(path)) as src:
        with pytest.raises(UnreadableMemory) as err:
            src.read(0x1000, 8)
        assert "does not decompress" in str(err.value) and method in str(err.value)


def test_ram_but_not_dumped_is_told_apart_from_not_ram(tmp_path):
    # First bitmap: RAM; second: stored pages (makedumpfile's dump_level filters the difference).
    pages = sample_low_pages()  # pfns 0-3, 5, 6
    image, layout, _ = build_kdump(pages, VCPUS)
    data = bytearray(image)
    data[layout.offsets["bitmap1"]] |= 1 << 4  # pfn 4 is RAM, filtered out of the dump
    path = tmp_path / "filtered.kdump"
    path.write_bytes(bytes(data))
    with open_dump(str(path)) as src:
        with pytest.raises(UnreadableMemory, match="page excluded from the dump at physical "
                                                   "address 0x4000"):
            src.read(0x4000, 8)
        with pytest.raises(UnreadableMemory, match="not in dump at physical address 0x7000"):
            src.read(0x7000, 8)
