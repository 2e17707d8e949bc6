"""A small fleet of test dumps for the batch tools, written with tests/builder.py + writers.py.

``write_fleet(dir)`` writes:

* ``hvm-a.elf`` — QEMU ELF, three vCPUs: 0 and 1 share CR3 (one walk for both with
  ``--vcpu all``), 2 has a table of its own; user RWX pages (SMEP/SMAP kernel faults, W+X), a
  kernel 2 MiB page, a key-5 user page.
* ``hvm-b.kdump`` — kdump-compressed, one vCPU: hvm-a's vCPU-0 space with one page added, one
  removed and one made read-only (what ``xen-pte-diff`` should find).
* ``pv64.xc`` — xl dump-core of a PV64 guest under Xen 4.17: kernel pages carrying bit 52
  (``_PAGE_GUEST_KERNEL``) and one L1 entry with a bit Xen's disallow mask refuses.
* ``corrupt.elf`` — hvm-a.elf cut short: its PT_LOAD runs past the end of the file.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Dict

ROOT = pathlib.Path(__file__).resolve().parents[2]
for _p in (ROOT, ROOT / "tests", ROOT / "tests" / "sources"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from builder import BIT52, G, NX, P, PCD, PWT, RW, US, Builder  # noqa: E402
from writers import write_kdump, write_qemu_elf, write_xc_core  # noqa: E402

CR0 = 0x80050033
CR4_HVM = 0x3506F0  # PAE PGE SMEP SMAP PKE ...
CS_LONG = 0xA09B00  # QEMU segment flags with CS.L=1: long mode


def _user_space(b: Builder, extra_pages: int = 0, drop: int = -1, readonly: int = -1) -> None:
    for i in range(6 + extra_pages):
        if i == drop:
            continue
        flags = P | US | (0 if i == readonly else RW)
        b.map(0x400000 + i * 0x2000, 0x200000 + i * 0x1000, flags=flags)
    b.map(0xFFFF800000000000, 0x0, size=1 << 21, flags=P | RW | G)
    b.map(0x7F0000000000, 0x400000, flags=P | RW | US | NX, pkey=5)


def write_fleet(directory: pathlib.Path) -> Dict[str, pathlib.Path]:
    """Write the fleet into ``directory``; return name -> path."""
    directory = pathlib.Path(directory)
    out = {}

    a = Builder("4level")
    _user_space(a)
    other = Builder("4level", table_base=0x180000)
    other.map(0x400000, 0x200000, flags=P | RW | US | NX)
    pages = {**a.image(), **other.image()}
    regs = dict(cr0=CR0, cr3=a.cr3, cr4=CR4_HVM, cs_flags=CS_LONG)
    out["hvm-a.elf"] = directory / "hvm-a.elf"
    write_qemu_elf(out["hvm-a.elf"], pages, [regs, dict(regs), dict(regs, cr3=other.cr3)])

    b = Builder("4level")
    _user_space(b, extra_pages=1, drop=2, readonly=4)
    out["hvm-b.kdump"] = directory / "hvm-b.kdump"
    write_kdump(out["hvm-b.kdump"], b.image(), [dict(regs, cr3=b.cr3)])

    # PV64: tables hold machine frames; the dump is keyed by PFN with a p2m beside it.
    mfn = lambda pfn: 0x80000 + pfn * 3  # noqa: E731 (scattered machine frames)
    pv = Builder("4level", frame_of=mfn)
    for i in range(4):
        pv.map(0xFFFFFFFF81000000 + i * 0x1000, 0x300000 + i * 0x1000, flags=P | RW,
               extra=BIT52)
    pv.map(0x400000, 0x310000, flags=P | RW | US)
    pv.map(0x401000, 0x311000, flags=P | RW | US | PWT | PCD)  # cache bits: refused on L1
    image = pv.image()
    p2m = {addr // 4096: mfn(addr // 4096) for addr in image}
    out["pv64.xc"] = directory / "pv64.xc"
    write_xc_core(out["pv64.xc"], image, [dict(cr3=pv.cr3, cr4=0x6F0, cr0=0x8005003B)],
                  kind="pv64", p2m=p2m, xen_version=(4, 17))

    whole = out["hvm-a.elf"].read_bytes()
    out["corrupt.elf"] = directory / "corrupt.elf"
    out["corrupt.elf"].write_bytes(whole[:len(whole) // 3])
    return out


if __name__ == "__main__":
    for name, path in write_fleet(pathlib.Path(sys.argv[1])).items():
        print(name, path)
