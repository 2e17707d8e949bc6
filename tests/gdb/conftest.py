"""Fixtures of the gdb tests: a raw guest-RAM image with known page tables."""

import pytest

from builder import BIT52, G, NX, P, RW, US, Builder

# Registers of the image below: 4-level paging, SMEP+SMAP, NXE, WP.
REGS = "--cr3 0x100000 --cr4 0x3006a0 --efer 0xd01 --cr0 0x80010033"


@pytest.fixture(scope="session")
def image(tmp_path_factory):
    """``--raw FILE@0`` plus register options of a 4-level image with five leaves."""
    b = Builder("4level")
    b.map(0x400000, 0x200000, flags=P | RW | US)
    b.map(0x401000, 0x201000, flags=P | RW | US)
    b.map(0xFFFF800000000000, 0x0, size=1 << 21, flags=P | RW | G)
    b.map(0xFFFFFFFF80000000, 0x300000, flags=P | G, extra=BIT52)
    b.map(0x7F0000000000, 0x400000, flags=P | RW | US | NX, pkey=5)
    assert b.cr3 == 0x100000
    img = bytearray(0x800000)
    for addr, page in b.image().items():
        img[addr:addr + 4096] = page
    path = tmp_path_factory.mktemp("img") / "guest.raw"
    path.write_bytes(bytes(img))
    return f"--raw {path}@0 {REGS}"
