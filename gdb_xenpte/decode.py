"""Entry formats per level: which bits mean what, which are reserved, where the frame is.

One :class:`LevelRule` per level of a paging mode, computed once per walk from the mode and the CPU
(EFER.NXE, MAXPHYADDR, CR4.PSE, vendor). The walker and the single-entry explainer both read these
rules, so the SDM's entry tables (Vol. 3A Tables 4-4..4-6 for 32-bit paging, 4-8..4-11 for PAE,
4-14..4-20 for 4/5-level paging) are encoded exactly once, here.

:func:`decode_table` turns a whole table (4 KiB, or PAE's 32-byte PDPT) into index lists in one
call: numpy when it is importable, ``struct`` otherwise; both give identical results.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from .arch import DEFAULT_PAT, MEMORY_TYPES, PagingMode

try:  # numpy is optional: the engine is correct without it, only slower.
    import numpy as np
except Exception:  # pragma: no cover - depends on the Python gdb embeds
    np = None

__all__ = [
    "DecodedTable",
    "KIND_LEAF",
    "KIND_RSVD_STOP",
    "KIND_TABLE",
    "LevelRule",
    "bit_range",
    "bits_text",
    "decode_table",
    "explain_entry",
    "level_rules",
    "memory_type",
    "numpy_available",
]

KIND_TABLE, KIND_LEAF, KIND_RSVD_STOP = 0, 1, 2


def numpy_available() -> bool:
    """True when whole tables are decoded with numpy (else with ``struct``, same results)."""
    return np is not None


def bit_range(hi: int, lo: int) -> int:
    """Mask of bits hi..lo inclusive (empty when hi < lo)."""
    if hi < lo:
        return 0
    return ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1)


@dataclass(frozen=True)
class LevelRule:
    """How to read an entry at one level of one mode under one CPU.

    :param table_rsvd: reserved bits of an entry that references a table.
    :param leaf_rsvd: reserved bits of an entry that maps a page (PS=1, or any PT entry).
    :param can_leaf: PS=1 maps a page here; at the last level every entry maps a page.
    :param ps_reserved: PS=1 is itself a reserved-bit violation (PML4E/PML5E); the walk stops.
    :param has_rights: R/W and U/S exist here (PAE PDPTEs have neither: treated as 1).
    :param has_xd: bit 63 is XD here (EFER.NXE=1 and the format has it).
    :param pat_bit: position of PAT in a leaf at this level (7 in PTEs, 12 in large-page entries).
    :param has_pkey: bits 62:59 of a leaf are a protection key (IA-32e formats).
    """

    name: str
    depth: int
    shift: int
    index_bits: int
    entry_size: int
    last: bool
    can_leaf: bool
    ps_reserved: bool
    table_rsvd: int
    leaf_rsvd: int
    table_frame_mask: int
    leaf_frame_mask: int
    has_rights: bool
    has_xd: bool
    pat_bit: int
    has_pkey: bool
    pse36_bits: int = 0  # 32-bit 4-MiB pages: address bits above 31 held in bits 20:13

    @property
    def page_size(self) -> int:
        return 1 << self.shift

    def frame(self, raw: int, leaf: bool) -> int:
        """Physical address the entry points at (a table or a page), from the format's bits."""
        if leaf and self.pse36_bits:
            high = (raw >> 13) & ((1 << self.pse36_bits) - 1)
            return (raw & self.leaf_frame_mask) | (high << 32)
        return raw & (self.leaf_frame_mask if leaf else self.table_frame_mask)

    def reserved(self, raw: int, leaf: bool) -> int:
        """Reserved bits set in the entry (0 when none)."""
        return raw & (self.leaf_rsvd if leaf else self.table_rsvd)

    def is_leaf(self, raw: int) -> bool:
        return self.last or (self.can_leaf and bool(raw & 0x80))

    def rights(self, raw: int, user: bool, write: bool, nx: bool) -> Tuple[bool, bool, bool]:
        """Rights after this entry from the rights above it (SDM Vol. 3A §4.6.1): user and write
        need U/S=1 and R/W=1 at every level that has them; XD=1 at any level forbids execution."""
        if self.has_rights:
            user = user and bool(raw & 4)
            write = write and bool(raw & 2)
        if self.has_xd and raw >> 63:
            nx = True
        return user, write, nx


def level_rules(mode: PagingMode, nxe: bool, maxphyaddr: int = 52, pse: bool = True,
                vendor: str = "intel") -> Tuple[LevelRule, ...]:
    """Build the per-level rules of ``mode`` for a CPU with these properties.

    :param nxe: EFER.NXE: bit 63 is XD when set and reserved when clear (Tables 4-9..4-20).
    :param maxphyaddr: physical-address width; bits from it to 51 (62 in PAE) are reserved.
    :param pse: CR4.PSE; only 32-bit paging consults it (4-MiB pages).
    :param vendor: ``"amd"`` also reserves bit 8 of non-leaf PML5Es/PML4Es/PDPEs (AMD APM Vol. 2
        §5.3.3).
    """
    m = maxphyaddr
    rules = []
    n = len(mode.levels)
    for depth, lv in enumerate(mode.levels):
        last = depth == n - 1
        if mode.entry_size == 4:
            # 32-bit paging (§4.3): no XD, no reserved bits except in 4-MiB PDEs.
            m32 = min(m, 40)
            can_leaf = last or (lv.large_ok == "pse" and pse)
            pse36 = max(0, m32 - 32)
            rules.append(LevelRule(
                lv.name, depth, lv.shift, lv.index_bits, 4, last, can_leaf, False,
                table_rsvd=0,
                leaf_rsvd=0 if last else bit_range(21, 13 + pse36),
                table_frame_mask=0xFFFFF000,
                leaf_frame_mask=0xFFFFF000 if last else 0xFFC00000,
                has_rights=True, has_xd=False, pat_bit=7 if last else 12, has_pkey=False,
                pse36_bits=0 if last else pse36))
            continue
        xd_rsvd = 0 if nxe else 1 << 63
        if mode.ia32e:
            phys_rsvd = bit_range(51, m)
        else:
            phys_rsvd = bit_range(62, m)  # PAE: bits 62:MAXPHYADDR reserved (Tables 4-8..4-11)
        can_leaf = last or bool(lv.large_ok)
        leaf_low_rsvd = 0 if last else bit_range(lv.shift - 1, 13)  # between PAT and the frame
        if not mode.ia32e and depth == 0 and mode.name == "PAE":
            # PAE PDPTE (Table 4-8): bits 2:1 and 8:5 reserved, 63:M reserved; no rights, no XD.
            rules.append(LevelRule(
                lv.name, depth, lv.shift, lv.index_bits, 8, last, False, False,
                table_rsvd=bit_range(2, 1) | bit_range(8, 5) | bit_range(63, m),
                leaf_rsvd=0, table_frame_mask=bit_range(m - 1, 12), leaf_frame_mask=0,
                has_rights=False, has_xd=False, pat_bit=12, has_pkey=False))
            continue
        ps_reserved = mode.ia32e and not lv.large_ok and not last
        table_rsvd = phys_rsvd | xd_rsvd
        if ps_reserved:
            table_rsvd |= 1 << 7
        if vendor == "amd" and lv.name in ("pml5", "pml4", "pdpt"):
            # AMD APM Vol. 2 §5.3.3 (Figures 5-18/5-19): bit 8 of non-leaf PML4Es and PDPEs is
            # MBZ; Intel ignores it. (QEMU TCG does not enforce this; KVM's MMU does.)
            table_rsvd |= 1 << 8
        rules.append(LevelRule(
            lv.name, depth, lv.shift, lv.index_bits, 8, last, can_leaf, ps_reserved,
            table_rsvd=table_rsvd,
            leaf_rsvd=phys_rsvd | xd_rsvd | leaf_low_rsvd,
            table_frame_mask=bit_range(m - 1, 12),
            leaf_frame_mask=bit_range(m - 1, lv.shift),
            has_rights=True, has_xd=nxe, pat_bit=7 if last else 12, has_pkey=mode.ia32e))
    return tuple(rules)


def memory_type(raw: int, rule: LevelRule, pat: Optional[int] = None) -> str:
    """Memory type of a leaf: PAT/PCD/PWT select an IA32_PAT entry (SDM Vol. 3A §11.12.3)."""
    index = (((raw >> rule.pat_bit) & 1) << 2) | (((raw >> 4) & 1) << 1) | ((raw >> 3) & 1)
    value = ((DEFAULT_PAT if pat is None else pat) >> (8 * index)) & 0x7
    return MEMORY_TYPES.get(value, f"reserved({value})")


def explain_entry(raw: int, rule: LevelRule) -> Tuple[Tuple[str, int, str], ...]:
    """Name every field of one entry: ``(name, value, meaning)`` in bit order.

    Xen's meaning of software bits is added by the caller from :mod:`gdb_xenpte.xen`.
    """
    present = raw & 1
    leaf = bool(present) and rule.is_leaf(raw)
    out: List[Tuple[str, int, str]] = [("P", present, "present" if present else "not present")]
    if not present:
        return tuple(out)
    if rule.has_rights:
        out.append(("RW", (raw >> 1) & 1, "writable" if raw & 2 else "read-only"))
        out.append(("US", (raw >> 2) & 1, "user" if raw & 4 else "supervisor"))
    out.append(("PWT", (raw >> 3) & 1, "write-through" if raw & 8 else "write-back"))
    out.append(("PCD", (raw >> 4) & 1, "cache disabled" if raw & 16 else "cacheable"))
    if rule.has_rights:
        out.append(("A", (raw >> 5) & 1, "accessed" if raw & 32 else "not accessed"))
    if leaf:
        out.append(("D", (raw >> 6) & 1, "dirty" if raw & 64 else "clean"))
        if rule.last:
            out.append(("PAT", (raw >> 7) & 1, "PAT index bit 2"))
        else:
            out.append(("PS", 1, f"maps a {_size(rule.page_size)} page"))
        out.append(("G", (raw >> 8) & 1, "global" if raw & 0x100 else "not global"))
        if not rule.last:
            out.append(("PAT", (raw >> 12) & 1, "PAT index bit 2"))
    elif rule.can_leaf or rule.ps_reserved:
        out.append(("PS", (raw >> 7) & 1, "references a table" if not raw & 0x80
                    else "reserved here: #PF with RSVD"))
    avail = (raw >> 9) & 7
    out.append(("AVL[11:9]", avail, "software-available"))
    out.append(("frame", rule.frame(raw, leaf), "page" if leaf else "next table"))
    if rule.entry_size == 8:
        if rule.has_pkey and leaf:
            out.append(("AVL[58:52]", (raw >> 52) & 0x7F, "software-available"))
            out.append(("PK", (raw >> 59) & 0xF, "protection key (used under CR4.PKE/PKS)"))
        elif rule.has_pkey:
            out.append(("AVL[62:52]", (raw >> 52) & 0x7FF, "software-available"))
        if rule.has_xd:
            out.append(("XD", (raw >> 63) & 1, "no execute" if raw >> 63 else "executable"))
    rsvd = rule.reserved(raw, leaf)
    if rsvd:
        out.append(("RSVD", rsvd, "reserved bits set " + bits_text(rsvd) + ": #PF with RSVD"))
    return tuple(out)


def bits_text(mask: int) -> str:
    """``"bits 62,51"`` style list of the set bits of ``mask``, high first."""
    bits = [str(b) for b in range(63, -1, -1) if mask >> b & 1]
    return ("bit " if len(bits) == 1 else "bits ") + ",".join(bits)


def _size(n: int) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


@dataclass
class DecodedTable:
    """The present entries of one table, classified once and reused wherever the table recurs.

    Sequences are numpy arrays when numpy is available, lists otherwise; index order ascending.

    :param index: indices of present entries.
    :param raw: their raw values.
    :param kind: KIND_TABLE / KIND_LEAF / KIND_RSVD_STOP per present entry.
    :param rsvd: reserved bits set per present entry (0 when none).
    """

    index: Sequence[int]
    raw: Sequence[int]
    kind: Sequence[int]
    rsvd: Sequence[int]
    all_raw: Sequence[int]

    def __len__(self) -> int:
        return len(self.index)


def decode_table(data: bytes, rule: LevelRule) -> DecodedTable:
    """Classify every entry of a table in one pass.

    :param data: the table's bytes (``entries * entry_size``).
    """
    if np is not None:
        return _decode_numpy(data, rule)
    return _decode_python(data, rule)


# Shared, never written: the index and kind arrays of a full last-level table.
_POSITIONS = np.arange(1024) if np is not None else None
_LEAF_KINDS = np.full(1024, KIND_LEAF, dtype=np.int8) if np is not None else None
if np is not None:
    _POSITIONS.flags.writeable = False
    _LEAF_KINDS.flags.writeable = False


def _decode_numpy(data: bytes, rule: LevelRule) -> DecodedTable:
    # 8-byte entries: a read-only view of the bytes, no copy (nothing writes a decoded table).
    arr = np.frombuffer(data, dtype="<u8" if rule.entry_size == 8 else "<u4").astype(
        np.uint64, copy=False)
    present = arr & np.uint64(1)
    if rule.last and np.count_nonzero(present) == len(arr):
        # A full last-level table (most of a big walk): every entry a leaf, no index to gather.
        count = len(arr)
        return DecodedTable(_POSITIONS[:count], arr, _LEAF_KINDS[:count],
                            arr & np.uint64(rule.leaf_rsvd), arr)
    idx = np.flatnonzero(present)
    raw = arr[idx]
    if rule.last:
        # Every present entry of a last-level table is a leaf (and PS is not reserved there).
        return DecodedTable(idx, raw, np.full(len(raw), KIND_LEAF, dtype=np.int8),
                            raw & np.uint64(rule.leaf_rsvd), arr)
    if rule.can_leaf or rule.ps_reserved:
        leaf = (raw & np.uint64(0x80)) != 0
    else:
        leaf = np.zeros(len(raw), dtype=bool)
    kind = leaf.astype(np.int8)
    if rule.ps_reserved:
        kind[leaf] = KIND_RSVD_STOP
        leaf = np.zeros(len(raw), dtype=bool)
    rsvd = np.where(leaf, raw & np.uint64(rule.leaf_rsvd), raw & np.uint64(rule.table_rsvd))
    return DecodedTable(idx, raw, kind, rsvd, arr)


_P_OF_BYTE = bytes(b & 1 for b in range(256))


def _decode_python(data: bytes, rule: LevelRule) -> DecodedTable:
    count = len(data) // rule.entry_size
    arr = struct.unpack("<%d%s" % (count, "Q" if rule.entry_size == 8 else "I"), data)
    # Comprehensions over the whole table (no per-entry loop body): most of the pure path's time.
    low = data[::rule.entry_size]  # each entry's low byte, P in bit 0 (a C-level slice)
    present = low.translate(_P_OF_BYTE).count(1)
    index = list(range(count)) if present == count else [] if present == 0 else \
        [i for i, b in enumerate(low) if b & 1]
    raws = [arr[i] for i in index] if len(index) < count else list(arr)
    if rule.last:
        leaf_rsvd = rule.leaf_rsvd
        return DecodedTable(index, raws, [KIND_LEAF] * len(raws), [e & leaf_rsvd for e in raws],
                            arr)
    big = KIND_RSVD_STOP if rule.ps_reserved else KIND_LEAF
    if rule.can_leaf or rule.ps_reserved:
        kinds = [big if e & 0x80 else KIND_TABLE for e in raws]
    else:
        kinds = [KIND_TABLE] * len(raws)
    leaf_rsvd, table_rsvd = rule.leaf_rsvd, rule.table_rsvd
    rsvds = [e & (leaf_rsvd if k == KIND_LEAF else table_rsvd) for e, k in zip(raws, kinds)]
    return DecodedTable(index, raws, kinds, rsvds, arr)
