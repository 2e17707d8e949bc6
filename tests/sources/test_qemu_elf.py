"""QEMU ELF dumps: write with the test writer, read back through QemuElfSource."""

import pytest

from gdb_xenpte.errors import DumpFormatError, UnreadableMemory
from gdb_xenpte.sources.open import open_dump
from gdb_xenpte.sources.qemu_elf import QemuElfSource
from samples import PAGE, VCPUS, sample_low_pages, sample_pages
from writers import EM_386, write_qemu_elf


def check_pages(src, pages):
    for addr, data in pages.items():
        assert src.read(addr, PAGE) == data
    # A read spanning two adjacent pages of one run.
    assert src.read(0x1800, PAGE) == pages[0x1000][0x800:] + pages[0x2000][:0x800]


def test_roundtrip_elf64(tmp_path):
    pages = sample_pages()
    path = tmp_path / "guest.elf"
    write_qemu_elf(path, pages, VCPUS)
    with QemuElfSource(str(path)) as src:
        check_pages(src, pages)
        assert list(src.ranges()) == [(0, 0x4000), (0x5000, 0x7000), (1 << 32, (1 << 32) + PAGE)]
        v0, v1 = src.vcpus()
        assert (v0.index, v0.cr0, v0.cr2, v0.cr3) == (0, 0x80050033, 0x1234, 0x5000)
        assert v0.cr4 == 0x3506F0
        assert (v0.rip, v0.rflags, v0.cs) == (0xFFFFFFFF81000000, 0x246, 0x10)
        assert v0.efer is None and v0.long_mode is True
        assert any("EFER" in n for n in v0.notes)
        # CS.L=0 but the dump is EM_X86_64: long mode from the machine type, and it says so.
        assert v1.long_mode is True and any("machine type" in n for n in v1.notes)
        assert "2 vCPU" in src.describe()


def test_missing_bytes_are_errors_not_zeros(tmp_path):
    path = tmp_path / "guest.elf"
    write_qemu_elf(path, sample_pages(), VCPUS)
    with QemuElfSource(str(path)) as src:
        with pytest.raises(UnreadableMemory) as err:
            src.read(0x4000, 8)
        assert err.value.paddr == 0x4000 and "guest.elf" in str(err.value)
        with pytest.raises(UnreadableMemory) as err:
            src.read(0x3FF8, 16)  # starts inside a run, ends in the gap
        assert err.value.paddr == 0x4000
        with pytest.raises(UnreadableMemory):
            src.read(1 << 63, 8)


def test_elf32_em386(tmp_path):
    pages = sample_low_pages()
    path = tmp_path / "guest32.elf"
    regs = [dict(VCPUS[0], cs_flags=0xC09B00, cr4=0x6F0)]
    write_qemu_elf(path, pages, regs, elf_class=32, machine=EM_386)
    with open_dump(str(path)) as src:
        assert isinstance(src, QemuElfSource)
        check_pages(src, pages)
        (v0,) = src.vcpus()
        assert v0.long_mode is False


def test_old_qemu_vaddr_zero(tmp_path):
    pages = sample_pages()
    path = tmp_path / "old.elf"
    write_qemu_elf(path, pages, VCPUS, vaddr=lambda p: 0)
    with QemuElfSource(str(path)) as src:
        check_pages(src, pages)


def test_paging_dump_rejected(tmp_path):
    pages = sample_pages()
    path = tmp_path / "p.elf"
    write_qemu_elf(path, pages, VCPUS, vaddr=lambda p: 0xFFFF888000000000 + p)
    with pytest.raises(DumpFormatError) as err:
        QemuElfSource(str(path))
    text = str(err.value)
    assert "p.elf" in text and "-p" in text and "virtual" in text


def test_paging_dump_with_physical_segments_used(tmp_path):
    pages = sample_pages()
    data = pages[0x1000]
    loads = [(0x1000, 0xFFFF888000001000, data, PAGE),   # virtual (ignored)
             (0x1000, 0x1000, data, PAGE),               # physical
             (0x5000, 0x5000, pages[0x5000], PAGE)]
    path = tmp_path / "mixed.elf"
    write_qemu_elf(path, {}, VCPUS, loads=loads)
    with QemuElfSource(str(path)) as src:
        assert src.read(0x1000, PAGE) == data
        assert "ignored" in src.describe()


def test_short_segment_is_not_zero_filled(tmp_path):
    data = sample_pages()[0x1000]
    path = tmp_path / "short.elf"
    write_qemu_elf(path, {}, VCPUS, loads=[(0x10000, 0x10000, data, 4 * PAGE)])
    with QemuElfSource(str(path)) as src:
        assert src.read(0x10000, PAGE) == data
        with pytest.raises(UnreadableMemory) as err:
            src.read(0x11000, 8)
        assert err.value.paddr == 0x11000
        assert list(src.ranges()) == [(0x10000, 0x11000)]


def test_overlapping_segments_rejected(tmp_path):
    data = sample_pages()[0x1000]
    path = tmp_path / "overlap.elf"
    write_qemu_elf(path, {}, VCPUS, loads=[(0x1000, 0x1000, data + data, 2 * PAGE),
                                           (0x2000, 0x2000, data, PAGE)])
    with pytest.raises(DumpFormatError) as err:
        QemuElfSource(str(path))
    assert "overlap" in str(err.value) and "0x2000" in str(err.value)


def test_no_qemu_notes(tmp_path):
    path = tmp_path / "nonotes.elf"
    write_qemu_elf(path, sample_pages(), [])
    with QemuElfSource(str(path)) as src:
        assert src.vcpus() == []
        assert "registers unknown" in src.describe()
