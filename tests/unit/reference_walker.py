"""A deliberately simple reference walker, written straight from the SDM text.

One entry read at a time, no caching, no numpy, no coalescing: for every present leaf it returns
``(va, pa, page_size, user, write, exec, rsvd)``. It exists only to be compared with the fast walker
on random tables (test_walker_vs_reference.py). Sections: Intel SDM Vol. 3A §4.3 (32-bit), §4.4
(PAE), §4.5 (4/5-level), §4.6.1 (rights).
"""

import struct

from gdb_xenpte.errors import UnreadableMemory

MODES = {
    # name: (entry bytes, [(VA shift, index bits, may map a page with PS=1)], VA bits, IA-32e)
    "32bit": (4, [(22, 10, True), (12, 10, False)], 32, False),
    "pae": (8, [(30, 2, False), (21, 9, True), (12, 9, False)], 32, False),
    "4level": (8, [(39, 9, False), (30, 9, True), (21, 9, True), (12, 9, False)], 48, True),
    "5level": (8, [(48, 9, False), (39, 9, False), (30, 9, True), (21, 9, True), (12, 9, False)],
               57, True),
}


def _read(src, addr, size):
    return struct.unpack("<Q" if size == 8 else "<I", src.read(addr, size))[0]


def _mask(hi, lo):
    return ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1) if hi >= lo else 0


def leaves(src, mode, cr3, cr4_pse=True, nxe=True, m=52):
    esize, levels, va_bits, ia32e = MODES[mode]
    out = []
    if mode == "32bit":
        root = cr3 & 0xFFFFF000
    elif mode == "pae":
        root = cr3 & 0xFFFFFFE0
    else:
        root = cr3 & _mask(m - 1, 12)

    def canon(va):
        if va_bits > 32 and va >> (va_bits - 1) & 1:
            return va | (((1 << 64) - 1) ^ ((1 << va_bits) - 1))
        return va

    def visit(table, depth, base, user, write, nx, rsvd):
        shift, bits, may_be_page = levels[depth]
        last = depth == len(levels) - 1
        for i in range(1 << bits):
            try:
                e = _read(src, table + i * esize, esize)
            except UnreadableMemory:
                return  # a table outside memory yields no pages

            if not e & 1:  # P=0: not present
                continue
            va = base + (i << shift)
            r = rsvd
            is_pdpte_pae = mode == "pae" and depth == 0
            if is_pdpte_pae:
                # Table 4-8: no R/W, U/S or XD; bits 2:1, 8:5, 63:M reserved.
                r = r or bool(e & (_mask(2, 1) | _mask(8, 5) | _mask(63, m)))
                u, w, x = user, write, nx
            else:
                u = user and bool(e & 4)
                w = write and bool(e & 2)
                x = nx
                if esize == 8:
                    if nxe:
                        x = nx or bool(e >> 63)
                    else:
                        r = r or bool(e >> 63)  # XD reserved when EFER.NXE=0
                    # Bits M..51 (IA-32e) or M..62 (PAE) are reserved.
                    r = r or bool(e & (_mask(51, m) if ia32e else _mask(62, m)))
            ps = bool(e & 0x80)
            if esize == 8 and ia32e and not may_be_page and not last and ps:
                continue  # PS in a PML4E/PML5E: RSVD, no page (reported separately by ours)
            page = last or (may_be_page and ps and (cr4_pse or esize == 8))
            if page:
                if esize == 4 and not last:
                    m32 = min(m, 40)
                    pa = (e & 0xFFC00000) | (((e >> 13) & ((1 << (m32 - 32)) - 1)) << 32)
                    r = r or bool(e & _mask(21, 13 + (m32 - 32)))
                elif esize == 4:
                    pa = e & 0xFFFFF000
                else:
                    pa = e & _mask(m - 1, shift)
                    if not last:
                        r = r or bool(e & _mask(shift - 1, 13))
                out.append((canon(va), pa, 1 << shift, u, w, not x, r))
            else:
                nxt = e & (0xFFFFF000 if esize == 4 else _mask(m - 1, 12))
                visit(nxt, depth + 1, va, u, w, x, r)

    visit(root, 0, 0, True, True, False, False)
    return out
