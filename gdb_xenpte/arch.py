"""Architectural facts: control-register bits, page-table entry bits, paging modes.

Each fact names its source: Intel SDM Vol. 3A chapter 4 ("Paging", order no. 253668) and
chapter 2.5 (control registers), AMD APM Vol. 2 chapter 5 where AMD differs. Xen's own facts live in
:mod:`gdb_xenpte.xen`, not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

__all__ = [
    "CR0",
    "CR4",
    "DEFAULT_PAT",
    "EFER",
    "Level",
    "MEMORY_TYPES",
    "MODES",
    "PAGE_SIZE",
    "PTE",
    "PTE_BIT_NAMES",
    "PagingMode",
]

PAGE_SIZE = 4096


class CR0:
    """CR0 bits (SDM Vol. 3A §2.5, Figure 2-7)."""
    PE = 1 << 0
    WP = 1 << 16
    PG = 1 << 31


class CR4:
    """CR4 bits (SDM Vol. 3A §2.5, Figure 2-8)."""
    VME = 1 << 0
    PVI = 1 << 1
    TSD = 1 << 2
    DE = 1 << 3
    PSE = 1 << 4
    PAE = 1 << 5
    MCE = 1 << 6
    PGE = 1 << 7
    PCE = 1 << 8
    OSFXSR = 1 << 9
    OSXMMEXCPT = 1 << 10
    UMIP = 1 << 11
    LA57 = 1 << 12
    VMXE = 1 << 13
    SMXE = 1 << 14
    FSGSBASE = 1 << 16
    PCIDE = 1 << 17
    OSXSAVE = 1 << 18
    KL = 1 << 19
    SMEP = 1 << 20
    SMAP = 1 << 21
    PKE = 1 << 22
    CET = 1 << 23
    PKS = 1 << 24
    UINTR = 1 << 25
    LAM_SUP = 1 << 28
    FRED = 1 << 32

    NAMES: Dict[int, str] = {}


CR4.NAMES = {v: k for k, v in vars(CR4).items() if k.isupper() and isinstance(v, int)}


class EFER:
    """IA32_EFER bits (SDM Vol. 3A §2.2.1, Figure 2-4)."""
    SCE = 1 << 0
    LME = 1 << 8
    LMA = 1 << 10
    NXE = 1 << 11


class PTE:
    """Page-table entry bit positions (SDM Vol. 3A Tables 4-4..4-6, 4-8..4-11, 4-14..4-20)."""
    P = 0
    RW = 1
    US = 2
    PWT = 3
    PCD = 4
    A = 5
    D = 6
    PS = 7          # in entries that may map a page above the PT level
    PAT_4K = 7      # in a 4-KByte PTE, bit 7 is PAT
    G = 8
    PAT_LARGE = 12  # in an entry mapping a 2-MByte/4-MByte/1-GByte page
    AVAIL_LOW = (9, 10, 11)
    AVAIL_HIGH = tuple(range(52, 59))
    PKEY_SHIFT = 59  # bits 62:59, used only under CR4.PKE/PKS in leaves (§4.6.2)
    PKEY_MASK = 0xF << 59
    XD = 63


# Names of the architectural flag bits, as the JSON schema spells them.
PTE_BIT_NAMES: Tuple[Tuple[str, int], ...] = (
    ("P", 0), ("RW", 1), ("US", 2), ("PWT", 3), ("PCD", 4), ("A", 5), ("D", 6), ("PS", 7),
    ("G", 8), ("PAT", -1), ("NX", 63),
)

# IA32_PAT at power-on (SDM Vol. 3A §11.12.4, Table 11-12): WB WT UC- UC WB WT UC- UC.
DEFAULT_PAT = 0x0007040600070406
# PAT memory-type encodings (SDM Vol. 3A Table 11-10).
MEMORY_TYPES = {0: "UC", 1: "WC", 4: "WT", 5: "WP", 6: "WB", 7: "UC-"}


@dataclass(frozen=True)
class Level:
    """One paging-structure level of a mode.

    :param name: SDM-style name (``pml5``, ``pml4``, ``pdpt``, ``pd``, ``pt``).
    :param shift: log2 of the bytes of VA one entry covers.
    :param index_bits: bits of VA that index this table.
    :param large_ok: an entry here may map a page with PS=1 (``"pse"``: only when CR4.PSE=1).
    """

    name: str
    shift: int
    index_bits: int
    large_ok: object = False

    @property
    def entries(self) -> int:
        return 1 << self.index_bits

    @property
    def span(self) -> int:
        """Bytes of VA covered by one entry of this level."""
        return 1 << self.shift


@dataclass(frozen=True)
class PagingMode:
    """A paging mode as a table of levels, top first (SDM Vol. 3A §4.1.1, Table 4-1).

    :param entry_size: bytes per entry (4 or 8).
    :param va_bits: linear-address width translated (32, 48 or 57).
    :param table_align: alignment of the top table addressed by CR3 (PAE PDPT: 32 bytes).
    :param ia32e: entries follow IA-32e (4/5-level) formats: protection keys in bits 62:59,
        bits 58:52 ignored, R/W and U/S in every level. False for PAE's legacy formats, where
        bits 62:MAXPHYADDR are reserved and PDPTEs carry no rights (SDM Tables 4-8..4-11).
    """

    name: str
    levels: Tuple[Level, ...]
    entry_size: int
    va_bits: int
    table_align: int = PAGE_SIZE
    ia32e: bool = False

    @property
    def depth(self) -> int:
        return len(self.levels)

    @property
    def canonical(self) -> bool:
        return self.va_bits > 32


MODES: Dict[str, PagingMode] = {
    # §4.3: 32-bit paging. A PDE with PS=1 maps 4 MiB only when CR4.PSE=1.
    "32bit": PagingMode("32-bit", (Level("pd", 22, 10, "pse"), Level("pt", 12, 10)), 4, 32),
    # §4.4: PAE paging. Four PDPTEs, loaded on CR3 write; the PDPT is 32-byte aligned.
    "pae": PagingMode("PAE", (Level("pdpt", 30, 2), Level("pd", 21, 9, True), Level("pt", 12, 9)),
                      8, 32, table_align=32),
    # §4.5: 4-level paging; 1-GByte pages at PDPT level.
    "4level": PagingMode("4-level", (Level("pml4", 39, 9), Level("pdpt", 30, 9, True),
                                     Level("pd", 21, 9, True), Level("pt", 12, 9)), 8, 48,
                         ia32e=True),
    # §4.5: 5-level paging (CR4.LA57=1).
    "5level": PagingMode("5-level", (Level("pml5", 48, 9), Level("pml4", 39, 9),
                                     Level("pdpt", 30, 9, True), Level("pd", 21, 9, True),
                                     Level("pt", 12, 9)), 8, 57, ia32e=True),
    # A 32-bit PV guest's own PAE tables as the hardware walks them: Xen runs the vCPU in long
    # mode with slot 0 of a per-vCPU compat L4 pointing at the guest's L3, so the guest's L3/L2/L1
    # are IA-32e PDPT/PD/PT entries over a 4 GiB space (xen-pte-abi.md §7, real-targets.md).
    "pv32": PagingMode("PV32 (compat, from the guest L3)", (Level("pdpt", 30, 2, True),
                                                          Level("pd", 21, 9, True),
                                                          Level("pt", 12, 9)), 8, 32,
                       ia32e=True),
}
