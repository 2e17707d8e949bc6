"""Hostile and accidental input files (issue 19): one test per class, on files the tests write.

Classes: files that are not what they seem (FIFO, device, directory), files that shrink while they
are read, headers that promise gigabytes, record storms, and valid input that was misdiagnosed
(process cores, other machines and byte orders, PN_XNUM). The promise each test checks: one of our
errors naming the file and where, no hang, no crash, memory bounded by what the file holds, the
input never modified. The generators live with the fuzz corpus (corpus.py, writers.py).
"""

import os
import signal
import time
import tracemalloc

import pytest

from builder import P, RW, Builder
from corpus import (STORM_RECORDS, cases, shrink_sizes, write_bitmap_claim, write_record_storm,
                    write_sparse_note, _small_pages)
from gdb_xenpte.arch import CR0, CR4, EFER
from gdb_xenpte.cpu import CpuState
from gdb_xenpte.errors import DumpFormatError, SourceError, UnreadableMemory
from gdb_xenpte.sources.open import detect_format, open_dump
from gdb_xenpte.sources.raw import RawSource
from gdb_xenpte.walk import Walker
from samples import PAGE, VCPUS
from writers import (EM_386, EM_X86_64, write_elf_core_header, write_kdump, write_process_core,
                     write_qemu_elf, write_raw, write_xc_core)

CASES = {c.name: c for c in cases()}


@pytest.fixture
def deadline():
    """Fail (instead of hanging the run) if the test blocks for 20 s."""
    def expired(*_):
        raise TimeoutError("blocked for 20 s")
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


# -- files that are not what they seem ----------------------------------------------------------

@pytest.mark.parametrize("kind, text", [("fifo", "a FIFO"), ("chardev", "a character device"),
                                        ("directory", "a directory")])
def test_not_a_regular_file_is_refused_before_open(tmp_path, deadline, kind, text):
    if kind == "fifo":
        path = tmp_path / "dump.fifo"
        os.mkfifo(path)  # no writer: open() for reading would block forever
    else:
        path = {"chardev": "/dev/zero", "directory": tmp_path}[kind]
    openers = [lambda: detect_format(str(path)), lambda: open_dump(str(path)),
               lambda: open_dump(str(path), fmt="qemu-elf"), lambda: RawSource(str(path), 0)]
    for opener in openers:
        with pytest.raises(SourceError) as err:
            opener()
        assert f"{path}: not a regular file ({text}" in str(err.value)
        assert "\n" not in str(err.value)


# -- files that change under us ------------------------------------------------------------------

@pytest.mark.parametrize("name", CASES)
def test_file_truncated_while_open_is_an_error_naming_file_and_offset(tmp_path, name):
    case = CASES[name]
    path = tmp_path / f"{name}.dump"
    for cut in shrink_sizes(case.write(path)):
        case.write(path)
        with open_dump(str(path), fmt=case.fmt) as src:
            os.truncate(path, cut)
            shrank = 0
            for addr, data in case.pages.items():
                try:
                    assert src.read(addr, PAGE) == data  # still inside what is left (or cached)
                except UnreadableMemory as err:
                    assert path.name in str(err)  # e.g. a kdump descriptor now out of range
                except SourceError as err:
                    text = str(err)
                    assert text.startswith(f"{path.name}: file shrank while being read: ")
                    assert f"is {cut:#x} now" in text and "at file offset 0x" in text
                    shrank += 1
        if cut == 1:  # nothing but one byte is left: every page read says so
            assert shrank == len(case.pages), cut


HVM_WRITERS = {
    "qemu-elf": lambda p, img, regs: write_qemu_elf(p, img, [regs]),
    "kdump": lambda p, img, regs: write_kdump(p, img, [regs]),
    "kdump-flat": lambda p, img, regs: write_kdump(p, img, [regs], flattened=True),
    "xc-hvm": lambda p, img, regs: write_xc_core(p, img, [regs], kind="hvm"),
    "raw": lambda p, img, regs: write_raw(p, img),
}


def _space():
    """Eight 4 KiB pages, each under its own page table (so a walk reads tables as it goes)."""
    b = Builder("4level")
    for i in range(8):
        b.map(0xFFFFFFFF80000000 + i * (2 << 20), 0x200000 + i * PAGE, flags=P | RW)
    return b, b.image()


@pytest.mark.parametrize("fmt", HVM_WRITERS)
@pytest.mark.parametrize("when", ["before", "during"])
def test_walk_of_a_file_truncated_under_it_names_file_and_offset(tmp_path, fmt, when):
    b, image = _space()
    cr4 = CR4.PAE | CR4.PGE
    cpu = CpuState(cr0=CR0.PG | CR0.PE, cr3=b.cr3, cr4=cr4, efer=EFER.LME | EFER.LMA | EFER.NXE)
    path = tmp_path / f"g.{fmt}"
    HVM_WRITERS[fmt](path, image, dict(cr0=CR0.PG | CR0.PE, cr3=b.cr3, cr4=cr4))
    keep = 4096 if fmt != "raw" else 1  # the headers stay, every table is gone
    with open_dump(str(path), fmt="raw" if fmt == "raw" else None) as src:
        walker = Walker(src, cpu)
        if when == "before":  # the top-level table is gone: the walk ends with one error
            os.truncate(path, keep)
            with pytest.raises(SourceError) as err:
                list(walker.iter_mappings(coalesce=False))
            problems = [str(err.value)]
        else:  # gone after the first mapping: the rest is reported unreadable, the walk ends
            walk = walker.iter_mappings(coalesce=False)
            first = next(walk)
            os.truncate(path, keep)
            rest = list(walk)
            # Never dropped: a PT not read before the cut is one "unreadable" row saying why.
            assert first.va == 0xFFFFFFFF80000000 and first.kind == "page" and len(rest) == 7
            assert "unreadable" in [m.kind for m in rest]
            problems = [text for _pa, text in walker.stats.unreadable]
    assert problems and all("file shrank while being read" in t and "file offset 0x" in t
                            and path.name in t for t in problems), problems


# -- headers that promise gigabytes --------------------------------------------------------------

@pytest.mark.parametrize("make, expected", [
    (lambda p: write_sparse_note(p, 8 << 30), "PT_NOTE segment 0 at file offset 0x"),
    (lambda p: write_bitmap_claim(p, 8 << 30), "max_mapnr 0x1000000000 (kdump header) is more "
                                               "pfns than 0x100000000"),
    (lambda p: write_bitmap_claim(p, 256 << 20), "the two bitmaps at offset 0x2000 need "
                                                 "0x20000000 bytes"),
])
def test_sizes_from_headers_are_checked_before_allocating(tmp_path, make, expected):
    path = tmp_path / "liar.dump"
    make(path)
    tracemalloc.start()
    try:
        with pytest.raises(DumpFormatError) as err:
            open_dump(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(err.value).startswith("liar.dump: ") and expected in str(err.value)
    assert peak < 4 << 20, f"{peak} bytes allocated for a refused header"


# -- quadratic or unbounded work -----------------------------------------------------------------

def test_record_storm_before_a_valid_flattened_dump_is_read_in_near_linear_time(tmp_path):
    path = tmp_path / "storm.flat"
    write_record_storm(path, STORM_RECORDS)
    start = time.perf_counter()
    with open_dump(str(path)) as src:
        opened = time.perf_counter() - start
        for addr, data in _small_pages().items():
            assert src.read(addr, PAGE) == data
        assert src.vcpus()[0].cr3 == VCPUS[0]["cr3"]
    # Painting each record into a sorted list took > 60 s for these 300k records (quadratic);
    # sorting once takes about a second. The bound is loose for a loaded machine.
    assert opened < 30, f"{STORM_RECORDS} records took {opened:.1f} s"


# -- valid input refused or misdiagnosed ---------------------------------------------------------

def test_process_core_is_named_a_process_core(tmp_path):
    path = tmp_path / "core.1234"
    write_process_core(path, _small_pages())
    with pytest.raises(DumpFormatError) as err:
        open_dump(str(path))
    text = str(err.value)
    assert text.startswith("core.1234: a core dump of a user process")
    assert "'dump-guest-memory -p' dump" not in text


@pytest.mark.parametrize("machine, big, expected", [
    (183, False, "an ELF64 little-endian core dump for EM_AARCH64 (e_machine 183)"),
    (183, True, "an ELF64 big-endian core dump for EM_AARCH64 (e_machine 183)"),
    (EM_X86_64, True, "an ELF64 big-endian core dump for EM_X86_64 (e_machine 62)"),
    (21, True, "an ELF64 big-endian core dump for EM_PPC64 (e_machine 21)"),
])
def test_other_machines_and_byte_orders_are_named(tmp_path, machine, big, expected):
    path = tmp_path / "other.core"
    write_elf_core_header(path, machine=machine, big_endian=big)
    for fmt in (None, "qemu-elf"):
        with pytest.raises(DumpFormatError) as err:
            open_dump(str(path), fmt=fmt)
        assert str(err.value).startswith("other.core: ") and expected in str(err.value)


@pytest.mark.parametrize("elf_class, machine", [(64, EM_X86_64), (32, EM_386)])
def test_pn_xnum_program_header_count_comes_from_section_zero(tmp_path, elf_class, machine):
    pages = {a: d for a, d in _small_pages().items() if elf_class == 64 or a < 1 << 32}
    path = tmp_path / "xnum.elf"
    write_qemu_elf(path, pages, VCPUS, elf_class=elf_class, machine=machine, pn_xnum=True)
    assert path.read_bytes()[0x38 if elf_class == 64 else 0x2C:][:2] == b"\xff\xff"
    with open_dump(str(path)) as src:
        for addr, data in pages.items():
            assert src.read(addr, PAGE) == data
        assert len(src.vcpus()) == len(VCPUS)


def test_pn_xnum_without_section_headers_says_so(tmp_path):
    path = tmp_path / "xnum.elf"
    layout = write_qemu_elf(path, _small_pages(), VCPUS, pn_xnum=True)
    data = bytearray(path.read_bytes())
    data[0x28:0x30] = bytes(8)  # e_shoff 0
    path.write_bytes(bytes(data))
    with pytest.raises(DumpFormatError) as err:
        open_dump(str(path))
    assert "e_phnum 0xffff (PN_XNUM) at file offset 0x38" in str(err.value)
    assert "no section header table (e_shoff 0)" in str(err.value) and layout.size
