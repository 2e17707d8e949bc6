"""Raw images, format probing, forced formats and the errors of opening."""

import pytest

from gdb_xenpte.errors import DumpFormatError, OptionError, SourceError, UnreadableMemory
from gdb_xenpte.sources.open import FORMATS, open_dump
from gdb_xenpte.sources.raw import RawSource, parse_raw_spec
from samples import PAGE, VCPUS, sample_low_pages
from writers import write_kdump, write_qemu_elf, write_raw


def test_raw_image_at_base(tmp_path):
    pages = {a + 0x100000: d for a, d in sample_low_pages().items()}
    path = tmp_path / "ram.bin"
    size = write_raw(path, pages, base=0x100000)
    with open_dump(str(path), fmt="raw", base=0x100000) as src:
        assert isinstance(src, RawSource)
        for addr, data in pages.items():
            assert src.read(addr, PAGE) == data
        assert list(src.ranges()) == [(0x100000, 0x100000 + size)]
        assert src.vcpus() == []
        with pytest.raises(UnreadableMemory) as err:
            src.read(0xFFFFC, 8)
        assert err.value.paddr == 0xFFFFC and "ram.bin" in str(err.value)
        with pytest.raises(UnreadableMemory) as err:
            src.read(0x100000 + size - 4, 8)
        assert err.value.paddr == 0x100000 + size


@pytest.mark.parametrize("spec,expected", [
    ("ram.bin@0x0", ("ram.bin", 0)),
    ("a@b.bin@4096", ("a@b.bin", 4096)),
    ("/x/ram@0x100000000", ("/x/ram", 1 << 32)),
])
def test_parse_raw_spec(spec, expected):
    assert parse_raw_spec(spec) == expected


@pytest.mark.parametrize("spec", ["ram@zero", "ram@0x123", "@0x1000", "ram@-4096", "ram.bin"])
def test_parse_raw_spec_errors(spec):
    with pytest.raises(OptionError) as err:
        parse_raw_spec(spec)
    assert spec in str(err.value)


def test_unknown_file_and_format(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"hello world" * 100)
    with pytest.raises(DumpFormatError) as err:
        open_dump(str(path))
    assert "junk" in str(err.value) and "--raw" in str(err.value)
    with pytest.raises(OptionError):
        open_dump(str(path), fmt="vmware")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(DumpFormatError):
        open_dump(str(empty))
    with pytest.raises(SourceError) as err:
        open_dump(str(tmp_path / "missing"))
    assert "missing" in str(err.value)


def test_forced_format_mismatch(tmp_path):
    path = tmp_path / "guest.elf"
    write_qemu_elf(path, sample_low_pages(), VCPUS)
    for fmt in ("kdump", "xc-core"):
        with pytest.raises(DumpFormatError) as err:
            open_dump(str(path), fmt=fmt)
        assert "guest.elf" in str(err.value)
    kd = tmp_path / "g.kdump"
    write_kdump(kd, sample_low_pages(), VCPUS)
    with pytest.raises(DumpFormatError):
        open_dump(str(kd), fmt="qemu-elf")


def test_every_format_named():
    assert set(FORMATS) == {"kdump", "xc-core", "kexec-elf", "qemu-elf", "raw"}


def test_vcpu_index_that_does_not_exist(tmp_path):
    from gdb_xenpte.sources.open import pick_vcpu
    elf = tmp_path / "two.elf"
    write_qemu_elf(elf, sample_low_pages(), VCPUS)
    with open_dump(str(elf)) as src:
        assert pick_vcpu(src, 1).index == 1
        for bad in (2, -1):
            with pytest.raises(OptionError) as err:
                pick_vcpu(src, bad)
            assert "two.elf" in str(err.value) and "vCPUs 0..1" in str(err.value)
    raw = tmp_path / "ram.bin"
    write_raw(raw, sample_low_pages())
    with open_dump(str(raw), fmt="raw") as src:
        with pytest.raises(OptionError) as err:
            pick_vcpu(src, 0)
        assert "ram.bin" in str(err.value) and "no vCPU registers" in str(err.value)
