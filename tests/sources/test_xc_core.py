"""Xen xl dump-core files: PV64, PV32 and HVM, written by the test writer and read back."""

import pytest

from gdb_xenpte.errors import DumpFormatError, OptionError, UnreadableMemory
from gdb_xenpte.sources.open import detect_format, open_dump, pick_vcpu
from gdb_xenpte.sources.xc_core import XcCoreSource
from samples import PAGE, page_bytes
from writers import write_xc_core

# A PV guest: PFNs 0..5 (pfn 3 missing), machine frames scattered.
PFNS = [0, 1, 2, 4, 5, 6]
P2M = {0: 0x1234, 1: 0x99, 2: 0x5000, 4: 0x77, 5: 0xABCDE, 6: 0x100000}


def pv_pages():
    return {pfn * PAGE: page_bytes(pfn) for pfn in PFNS}


PV_VCPUS = [
    dict(cr3=0x5000 << 12, user_cr3=0x77 << 12, cr4=0x6F0, cr0=0x8005003B, rip=0xFFFFFFFF81000000,
         cs=0xE033),
    dict(cr3=0x99 << 12, cr4=0x6F0, online=False, in_kernel=False),
]


def test_pv64(tmp_path):
    path = tmp_path / "pv64.core"
    write_xc_core(path, pv_pages(), PV_VCPUS, kind="pv64", p2m=P2M, xen_version=(4, 17))
    assert detect_format(str(path)) == "xc-core"
    with open_dump(str(path)) as src:
        assert isinstance(src, XcCoreSource)
        assert src.domain == "pv64" and src.xen_version == (4, 17)
        for pfn in PFNS:
            assert src.read(pfn * PAGE, PAGE) == page_bytes(pfn)
        assert list(src.ranges()) == [(0, 3 * PAGE), (4 * PAGE, 7 * PAGE)]
        with pytest.raises(UnreadableMemory) as err:
            src.read(3 * PAGE, 8)
        assert err.value.paddr == 3 * PAGE and "pv64.core" in str(err.value)
        for pfn, mfn in P2M.items():
            assert src.translate_frame(mfn) == pfn
        assert src.translate_frame(0x4242) is None  # e.g. a granted or Xen-owned frame
        v0, v1 = src.vcpus()
        assert v0.cr3 == 0x5000 << 12 and v0.user_cr3 == 0x77 << 12
        assert v0.cr4 == 0x6F0 and v0.cr4_is_guest_view and v0.long_mode is True
        assert v0.online and v0.rip == 0xFFFFFFFF81000000 and v0.cs == 0xE033
        assert not v1.online and v1.user_cr3 is None
        assert any("user mode" in n for n in v1.notes)
        assert src.shared_info == b"\x5a" * PAGE
        assert pick_vcpu(src, 1) == v1
        with pytest.raises(OptionError) as err:
            pick_vcpu(src, 2)
        assert "pv64.core" in str(err.value) and "0..1" in str(err.value)


def test_pv32_folded_cr3(tmp_path):
    path = tmp_path / "pv32.core"
    # An MFN above 2^20 exercises the fold: its top bits move to the low bits of CR3.
    p2m = {**P2M, 6: 0x1234567}
    vcpus = [dict(cr3=0x1234567 << 12, cr4=0x6F0)]
    write_xc_core(path, pv_pages(), vcpus, kind="pv32", p2m=p2m)
    with open_dump(str(path)) as src:
        assert src.domain == "pv32"
        (v0,) = src.vcpus()
        assert v0.cr3 == 0x1234567 << 12 and v0.long_mode is False and v0.cr4_is_guest_view
        assert src.translate_frame(v0.cr3 >> 12) == 6


def test_hvm(tmp_path):
    pages = {pfn * PAGE: page_bytes(pfn) for pfn in (0, 1, 0xC0, 0xC1, 0x100000)}
    path = tmp_path / "hvm.core"
    write_xc_core(path, pages, [dict(cr3=0xC1000, cr4=0x3506F0)], kind="hvm", shared_info=None)
    with open_dump(str(path)) as src:
        assert src.domain == "hvm" and src.translate_frame is None
        assert src.shared_info is None
        for addr, data in pages.items():
            assert src.read(addr, PAGE) == data
        (v0,) = src.vcpus()
        assert v0.cr3 == 0xC1000 and not v0.cr4_is_guest_view and v0.long_mode is None


def test_p2m_entry_past_xen_pages(tmp_path):
    path = tmp_path / "past.core"
    write_xc_core(path, pv_pages(), PV_VCPUS, kind="pv64", p2m=P2M, extra_entries=[(9, 0x999)])
    with pytest.raises(DumpFormatError) as err:
        XcCoreSource(str(path))
    assert "past.core" in str(err.value) and "past .xen_pages" in str(err.value)


def test_duplicate_mfn(tmp_path):
    path = tmp_path / "dup.core"
    write_xc_core(path, pv_pages(), PV_VCPUS, kind="pv64", p2m={**P2M, 2: 0x99})
    with pytest.raises(DumpFormatError) as err:
        XcCoreSource(str(path))
    assert "0x99" in str(err.value)


def test_wrong_magic(tmp_path):
    path = tmp_path / "magic.core"
    write_xc_core(path, pv_pages(), PV_VCPUS, kind="pv64", p2m=P2M, magic=0xF00FEBEF)
    with pytest.raises(DumpFormatError) as err:
        XcCoreSource(str(path))
    assert "0xf00febef" in str(err.value) and "file offset" in str(err.value)


def test_reverse_index_without_numpy(tmp_path, monkeypatch):
    """numpy only speeds up sorting the p2m; the pure-Python path must give the same answers."""
    import sys
    monkeypatch.setitem(sys.modules, "numpy", None)
    path = tmp_path / "nonumpy.core"
    write_xc_core(path, pv_pages(), PV_VCPUS, kind="pv64", p2m=P2M)
    with XcCoreSource(str(path)) as src:
        for pfn, mfn in P2M.items():
            assert src.translate_frame(mfn) == pfn
        assert src.translate_frame(0x4242) is None


def test_vcpu_contexts_truncated(tmp_path):
    path = tmp_path / "ctx.core"
    layout = write_xc_core(path, pv_pages(), PV_VCPUS, kind="pv64", p2m=P2M)
    data = bytearray(path.read_bytes())
    # Shrink .xen_prstatus (section header 3, sh_size at +32) below two contexts.
    import struct
    struct.pack_into("<Q", data, 64 + 64 * 3 + 32, 5168 + 100)
    path.write_bytes(bytes(data))
    with pytest.raises(DumpFormatError) as err:
        XcCoreSource(str(path))
    assert "announces 2" in str(err.value) and f"{layout.offsets['.xen_prstatus']:#x}" in str(
        err.value)
