"""Round trip: build page tables, write them in every dump format, walk the dump back, and get the
same mappings as the in-memory walk of the same tables."""

import pytest

from builder import NX, P, RW, US, Builder
from gdb_xenpte.arch import CR0, CR4, EFER
from gdb_xenpte.cpu import CpuState
from gdb_xenpte.sources.memory import MemorySource
from gdb_xenpte.sources.open import open_dump, pick_vcpu
from gdb_xenpte.walk import Walker
from samples import PAGE, page_bytes
from writers import EM_386, write_kdump, write_qemu_elf, write_raw, write_xc_core

CR0_ON = CR0.PG | CR0.PE | CR0.WP
CR4_64 = CR4.PAE | CR4.PGE | CR4.SMEP | CR4.SMAP
CR4_PAE = CR4.PAE | CR4.PGE


def _tables(mode="4level", frame_of=None):
    """A small address space: 4 KiB, 2 MiB and 1 GiB leaves, a missing data frame, NX, user."""
    b = Builder(mode, frame_of=frame_of)
    high = mode in ("4level", "5level")
    kernel = 0xFFFFFFFF81000000 if high else 0xC1000000
    for i in range(3):
        b.map(kernel + i * PAGE, 0x200000 + i * PAGE, flags=P | RW)
    b.map(0x400000, 0x203000, flags=P | US)
    b.map(0x401000, 0x7FF000, flags=P | RW | US, extra=NX if mode != "32bit" else 0)  # not in dump
    b.map(0x600000, 0x800000 if mode != "32bit" else 0xC00000, size=1 << 21 if mode != "32bit"
          else 1 << 22, flags=P | RW)
    if high:
        b.map(0xFFFF888000000000, 0x40000000, size=1 << 30, flags=P | RW, extra=NX)
    image = b.image()
    for i in range(4):
        image[0x200000 + i * PAGE] = page_bytes(i)
    return b, image


def _walk(source, cpu, **kw):
    return [(m.va, m.pa, m.size, m.page_size, m.level, m.flags, m.effective, m.rsvd, m.count,
             tuple((e.level, e.index, e.table_pa, e.raw) for e in m.entries))
            for m in Walker(source, cpu, **kw).iter_mappings()]


def _cpu_from(vcpu, efer):
    return CpuState(cr0=vcpu.cr0, cr3=vcpu.cr3, cr4=vcpu.cr4, efer=efer, long_mode=vcpu.long_mode)


HVM_FORMATS = ["qemu-elf", "kdump", "kdump-flat", "raw", "xc-hvm"]


def _write(fmt, path, image, regs):
    if fmt == "qemu-elf":
        write_qemu_elf(path, image, [regs])
    elif fmt == "qemu-elf32":
        write_qemu_elf(path, image, [regs], elf_class=32, machine=EM_386)
    elif fmt == "kdump":
        write_kdump(path, image, [regs])
    elif fmt == "kdump-flat":
        write_kdump(path, image, [regs], flattened=True)
    elif fmt == "raw":
        write_raw(path, image)
    elif fmt == "xc-hvm":
        write_xc_core(path, image, [regs], kind="hvm")


@pytest.mark.parametrize("mode", ["4level", "5level"])
@pytest.mark.parametrize("fmt", HVM_FORMATS)
def test_long_mode_roundtrip(tmp_path, fmt, mode):
    b, image = _tables(mode)
    efer = EFER.LME | EFER.LMA | EFER.NXE
    cr4 = CR4_64 | (CR4.LA57 if mode == "5level" else 0)
    cpu = CpuState(cr0=CR0_ON, cr3=b.cr3, cr4=cr4, efer=efer)
    expected = _walk(MemorySource(image), cpu)
    assert len(expected) >= 5 and any(m[1] == 0x7FF000 for m in expected)
    path = tmp_path / f"g.{fmt}"
    _write(fmt, path, image, dict(cr0=CR0_ON, cr3=b.cr3, cr4=cr4))
    with open_dump(str(path), fmt="raw" if fmt == "raw" else None) as src:
        if fmt != "raw":
            cpu = _cpu_from(pick_vcpu(src, 0), efer)
        assert _walk(src, cpu) == expected
        # The leaf whose frame is not in the dump stays unreadable, not zeros.
        if fmt != "raw":
            with pytest.raises(Exception) as err:
                src.read(0x7FF000, 8)
            assert type(err.value).__name__ == "UnreadableMemory"


@pytest.mark.parametrize("fmt", ["qemu-elf32", "kdump"])
@pytest.mark.parametrize("mode", ["pae", "32bit"])
def test_32bit_modes_roundtrip(tmp_path, fmt, mode):
    b, image = _tables(mode)
    cr4 = CR4_PAE if mode == "pae" else CR4.PSE
    cpu = CpuState(cr0=CR0_ON, cr3=b.cr3, cr4=cr4, efer=0)
    expected = _walk(MemorySource(image), cpu)
    assert expected
    path = tmp_path / f"g32.{fmt}"
    regs = dict(cr0=CR0_ON, cr3=b.cr3, cr4=cr4, cs_flags=0xC09B00)
    if fmt == "kdump":
        write_kdump(path, image, [regs], elf_class=32, lma=False)
    else:
        _write(fmt, path, image, regs)
    with open_dump(str(path)) as src:
        vcpu = pick_vcpu(src, 0)
        assert vcpu.long_mode is False
        assert _walk(src, _cpu_from(vcpu, 0)) == expected


@pytest.mark.parametrize("kind", ["pv64", "pv32"])
def test_pv_roundtrip_through_p2m(tmp_path, kind):
    """PV tables hold MFNs; the dump is in PFN space; translate_frame joins the two."""
    mode = "4level" if kind == "pv64" else "pv32"
    pfn_to_mfn = lambda pfn: 0x80000 + (pfn * 7919) % 0x10000  # noqa: E731 (scatter frames)
    b, image = _tables(mode, frame_of=pfn_to_mfn)
    p2m = {addr // PAGE: pfn_to_mfn(addr // PAGE) for addr in image}
    reverse = {mfn: pfn for pfn, mfn in p2m.items()}
    efer = EFER.LME | EFER.LMA | EFER.NXE
    cr4 = CR4_64 if kind == "pv64" else CR4_PAE
    cpu = CpuState(cr0=CR0_ON, cr3=b.cr3, cr4=cr4, efer=efer if kind == "pv64" else None,
                   long_mode=kind == "pv64")
    root = reverse[b.cr3 >> 12] << 12
    walk_kw = dict(root=root, mode="pv32" if kind == "pv32" else None)
    expected = _walk(MemorySource(image, translate_frame=reverse.get), cpu, **walk_kw)
    assert expected
    path = tmp_path / f"{kind}.core"
    write_xc_core(path, image, [dict(cr3=b.cr3, cr4=cr4, cr0=CR0_ON)], kind=kind, p2m=p2m)
    with open_dump(str(path)) as src:
        assert src.domain == kind
        vcpu = pick_vcpu(src, 0)
        assert vcpu.cr3 == b.cr3  # the machine address, decoded from Xen's encoding
        root = src.translate_frame(vcpu.cr3 >> 12) << 12
        dump_cpu = CpuState(cr0=vcpu.cr0, cr3=vcpu.cr3, cr4=vcpu.cr4, efer=cpu.efer,
                            long_mode=vcpu.long_mode)
        got = _walk(src, dump_cpu, root=root, mode=walk_kw["mode"])
        assert got == expected
