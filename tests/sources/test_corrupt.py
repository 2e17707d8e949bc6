"""Damaged dumps: truncations, flipped magics, bogus offsets. Only our errors may escape, and each
names the file and where the problem is."""

import re
import struct

import pytest

from gdb_xenpte.errors import DumpFormatError, XenpteError
from gdb_xenpte.sources.open import open_dump
from corpus import cases, exercise

CASES = {c.name: c for c in cases()}
WHERE = re.compile(r"0x[0-9a-f]+|offset \d+|address")


def _write(tmp_path, case):
    path = tmp_path / f"{case.name}.dump"
    layout = case.write(path)
    return path, layout, path.read_bytes()


@pytest.mark.parametrize("name", CASES)
def test_valid_image_reads_back(tmp_path, name):
    case = CASES[name]
    path, _, _ = _write(tmp_path, case)
    with open_dump(str(path)) as src:
        for addr, data in case.pages.items():
            assert src.read(addr, len(data)) == data


@pytest.mark.parametrize("name", CASES)
def test_truncated_at_every_boundary(tmp_path, name):
    case = CASES[name]
    path, layout, image = _write(tmp_path, case)
    cut_points = set()
    for b in layout.boundaries():
        cut_points.update({b - 1, b, b + 1, b + 16})
    cut_points = sorted(c for c in cut_points if 0 <= c < len(image))
    assert len(cut_points) >= 8
    for cut in cut_points:
        path.write_bytes(image[:cut])
        for fmt in (None, case.fmt):
            outcome = exercise(path, case, fmt)
            if outcome != "ok":
                assert path.name in outcome, (cut, outcome)
                if fmt is not None:
                    assert WHERE.search(outcome), (cut, outcome)


@pytest.mark.parametrize("name", CASES)
def test_flipped_magic(tmp_path, name):
    case = CASES[name]
    path, layout, image = _write(tmp_path, case)
    damaged = bytearray(image)
    damaged[1] ^= 0xFF  # 'E' of \x7fELF, 'D' of KDUMP, 'a' of makedumpfile
    path.write_bytes(bytes(damaged))
    with pytest.raises(DumpFormatError) as err:
        open_dump(str(path))
    assert path.name in str(err.value)
    with pytest.raises(DumpFormatError) as err:
        open_dump(str(path), fmt=case.fmt)
    assert path.name in str(err.value) and WHERE.search(str(err.value))


def _patch(image, fmt, offset, value):
    out = bytearray(image)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def _bogus_offset_images(case, layout, image):
    """Yield (label, damaged image) pairs pointing a structure's offset far outside the file."""
    huge = 1 << 40
    if case.fmt in ("qemu-elf", "xc-core"):
        is64 = image[4] == 2
        if is64:
            yield "e_phoff", _patch(image, "<Q", 32, huge)
            yield "e_shoff", _patch(image, "<Q", 40, huge)
        else:
            yield "e_phoff", _patch(image, "<I", 28, 0xFFFFFF00)
    if case.fmt == "qemu-elf":
        is64 = image[4] == 2
        ph = layout.offsets["phdrs"]
        entsize = 56 if is64 else 32
        off_field = (ph + entsize + 8, "<Q") if is64 else (ph + entsize + 4, "<I")
        yield "p_offset", _patch(image, off_field[1], off_field[0], 0xFFFFF000)
        yield "note p_filesz", _patch(image, "<Q" if is64 else "<I",
                                      ph + (32 if is64 else 16), 0xFFFFFF)
        # The second segment moved onto the first: overlapping physical ranges.
        vaddr_at = ph + 2 * entsize + (16 if is64 else 8)
        word = "<Q" if is64 else "<I"
        yield "overlap", _patch(_patch(image, word, vaddr_at, 0), word,
                                vaddr_at + (8 if is64 else 4), 0)
    if case.fmt == "xc-core":
        shoff = 64
        for i in range(1, struct.unpack_from("<H", image, 60)[0]):
            yield f"sh_offset[{i}]", _patch(image, "<Q", shoff + 64 * i + 24, huge)
            yield f"sh_size[{i}]", _patch(image, "<Q", shoff + 64 * i + 32, huge)
            yield f"sh_name[{i}]", _patch(image, "<I", shoff + 64 * i, 0xFFFF)
    if case.name in ("kdump", "kdump32"):
        tail = 424 if case.name == "kdump" else 412
        yield "block_size", _patch(image, "<I", tail + 4, 3000)
        yield "sub_hdr_size", _patch(image, "<I", tail + 8, 0x7FFFFFFF)
        yield "bitmap_blocks", _patch(image, "<I", tail + 12, 0x7FFFFFFE)
        sub = layout.offsets["sub_header"]
        note_at = sub + (56 if case.name == "kdump" else 32)
        yield "offset_note", _patch(image, "<Q", note_at, huge)
        yield "max_mapnr_64", _patch(image, "<Q", sub + (96 if case.name == "kdump" else 72),
                                     1 << 50)
        desc = layout.offsets["descriptors"]
        yield "descriptor offset", _patch(image, "<Q", desc, huge)
        yield "descriptor size", _patch(image, "<I", desc + 8, 0xFFFFFFFF)
    if case.name == "kdump-flat":
        rec = layout.offsets["rec0"]
        yield "record size", _patch(image, ">q", rec + 8, huge)
        yield "record offset", _patch(image, ">q", rec, -5)
        yield "flat type", _patch(image, ">q", 16, 7)


@pytest.mark.parametrize("name", CASES)
def test_bogus_offsets(tmp_path, name):
    case = CASES[name]
    path, layout, image = _write(tmp_path, case)
    labels = []
    for label, damaged in _bogus_offset_images(case, layout, image):
        labels.append(label)
        path.write_bytes(damaged)
        outcome = exercise(path, case, case.fmt)
        if outcome != "ok":
            assert path.name in outcome and WHERE.search(outcome), (label, outcome)
    assert labels


def test_overlapping_segments_message(tmp_path):
    case = CASES["qemu-elf64"]
    path, layout, image = _write(tmp_path, case)
    labels = dict(_bogus_offset_images(case, layout, image))
    path.write_bytes(labels["overlap"])
    with pytest.raises(DumpFormatError) as err:
        open_dump(str(path))
    assert "overlaps" in str(err.value)


def test_only_our_errors_type():
    assert issubclass(DumpFormatError, XenpteError)
