"""Small sample guests for the source tests: a few pages with recognisable bytes and gaps."""

import hashlib

PAGE = 4096


def page_bytes(tag: int) -> bytes:
    """A 4 KiB page whose content is unique to ``tag`` (and compresses, like real memory)."""
    seed = hashlib.sha256(tag.to_bytes(8, "little")).digest()
    return (seed * 8 + bytes(256)) * 8


def sample_pages():
    """Physical address -> page: two runs with a gap, a zero page, and one page above 4 GiB."""
    pages = {addr: page_bytes(addr) for addr in (0x0, 0x1000, 0x2000, 0x5000, 0x6000)}
    pages[0x3000] = bytes(PAGE)  # an all-zero page inside the first run
    pages[0x1_0000_0000] = page_bytes(0x1_0000_0000)
    return pages


def sample_low_pages():
    """Like :func:`sample_pages` but all below 4 GiB (for 32-bit formats)."""
    return {a: d for a, d in sample_pages().items() if a < 1 << 32}


VCPUS = [
    dict(cr0=0x80050033, cr2=0x1234, cr3=0x5000, cr4=0x3506F0, rip=0xFFFFFFFF81000000,
         rflags=0x246, cs=0x10, cs_flags=0xA09B00),
    dict(cr0=0x80050033, cr2=0, cr3=0x6000, cr4=0x3506F0, rip=0x401000, rflags=0x202,
         cs=0x23, cs_flags=0xC0FB00),  # CS.L=0: a compat-mode user process
]
