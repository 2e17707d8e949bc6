"""Plain result types of a walk: what the walker finds and what the verdicts say.

These are the only shapes the glue, the renderers and the batch tools consume. All addresses are
bytes; ``pa``/``table_pa`` are in the source's physical space (PFN space for PV dumps, after MFN->PFN
translation); raw entries are exactly as read.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, FrozenSet, Optional, Tuple

__all__ = ["ACCESS_KEYS", "ACCESS_SHORT", "Effective", "EntryRef", "Mapping", "PageBatch",
           "Stage2", "Step", "Trace", "Verdict", "access_key"]

# Verdict keys, in output order: who (guest kernel / guest user) x access kind. One vocabulary:
# JSON says kernel_read, the table kr, options accept all three spellings (access_key).
ACCESS_KEYS = ("kernel_read", "kernel_write", "kernel_exec", "user_read", "user_write", "user_exec")
ACCESS_SHORT = dict(zip(ACCESS_KEYS, ("kr", "kw", "kx", "ur", "uw", "ux")))
_ACCESS_NAMES = {**{k: k for k in ACCESS_KEYS}, **{k.replace("_", "-"): k for k in ACCESS_KEYS},
                 **{short: k for k, short in ACCESS_SHORT.items()}}


def access_key(text: str) -> str:
    """The JSON key of an access named ``kr``, ``kernel-read`` or ``kernel_read`` (any case).

    :raises ValueError: naming the accepted spellings, for anything else.
    """
    key = _ACCESS_NAMES.get(text.strip().lower())
    if key is None:
        raise ValueError(f"'{text}' is not an access: one of "
                         + ", ".join(f"{ACCESS_SHORT[k]}/{k.replace('_', '-')}"
                                     for k in ACCESS_KEYS))
    return key


@dataclass(frozen=True)
class EntryRef:
    """One paging-structure entry on the path to a mapping.

    :param level: level name (``pml5``, ``pml4``, ``pdpt``, ``pd``, ``pt``).
    :param index: index of the entry in its table.
    :param table_pa: physical address of the table holding the entry.
    :param raw: the entry's raw value.
    :param frame: the frame (machine frame for PV) the entry points at, shifted to an address.
    """

    level: str
    index: int
    table_pa: int
    raw: int


@dataclass(frozen=True)
class Effective:
    """Rights after combining every level (SDM Vol. 3A §4.6.1).

    :param user: U/S=1 at every level (a user-mode address).
    :param write: R/W=1 at every level.
    :param exec: no XD at any level while EFER.NXE=1.
    """

    user: bool
    write: bool
    exec: bool

    def rwx(self) -> str:
        return "R" + ("W" if self.write else "-") + ("X" if self.exec else "-") + (
            " U" if self.user else " S")


@dataclass(frozen=True)
class Stage2:
    """What the host's second-stage translation (Xen's p2m: EPT or NPT) allows for a guest
    frame, beside the guest's own rights. A denied access exits to Xen (an EPT violation or
    nested #PF), not a #PF the guest sees: it is shown, never folded into the verdicts.

    :param type_name: Xen's p2m type (``p2m_ram_rw``, ``p2m_ram_logdirty`` ...), "" if unknown.
    """

    read: bool
    write: bool
    exec: bool
    type_name: str = ""

    def rwx(self) -> str:
        return ("R" if self.read else "-") + ("W" if self.write else "-") + \
            ("X" if self.exec else "-")


@dataclass(frozen=True)
class Verdict:
    """Whether one access succeeds, and every reason it faults.

    :param ok: True: the access succeeds; False: it faults whatever the unknowns (AC, PKRU,
        PKRS) are; None: it faults only for some values of an unknown.
    :param reasons: fault reasons, e.g. ``("SMAP",)``; a reason that holds only for some value of
        an unknown carries it in brackets, e.g. ``"SMAP[AC=0]"``.
    :param imposed: the reasons that enforce a protection imposed on the guest (by Xen or a
        what-if) rather than one it chose; a subset of ``reasons``.
    """

    ok: Optional[bool]
    reasons: Tuple[str, ...] = ()
    imposed: Tuple[str, ...] = ()

    def __str__(self) -> str:
        return "fault:" + ",".join(self.reasons) if self.reasons else "ok"


@dataclass(eq=False)  # not frozen: frozen __init__ costs ~1 us per record on big walks
class Mapping:
    """One present leaf (or a coalesced run of equal leaves): a VA range and what it means.

    :param va: first virtual address (canonical).
    :param pa: first physical address (PFN space); ``None`` when the frame is not in the source.
    :param size: bytes of VA covered (a multiple of ``page_size`` when coalesced).
    :param page_size: bytes per page (4 KiB, 2/4 MiB, 1 GiB).
    :param level: the leaf's level name.
    :param entries: the path, top to leaf, for the first page of the range.
    :param flags: architectural bits set in the leaf, named ``P RW US PWT PCD A D PS G PAT NX``.
    :param effective: rights combined across levels.
    :param pkey: protection key in bits 62:59 of the leaf (None where the mode has no key field).
    :param xen_bits: names of Xen-owned bits set in the leaf (e.g. ``_PAGE_GUEST_KERNEL``).
    :param rsvd: reserved-bit violations on the path (each a short text); any makes every access
        raise #PF with RSVD.
    :param memtype: memory type through IA32_PAT (``WB``, ``UC`` ...).
    :param count: leaves in this record (1 unless coalesced).
    :param verdicts: access-kind key (see ``ACCESS_KEYS``) -> verdict, once judged.
    :param notes: extra per-mapping remarks (e.g. "frame not in dump", "alias of pml4[258]").
    :param disallowed: bits on the path that Xen's PV disallow masks refuse, e.g.
        ``"pt[3]: bit 62 (_PAGE_GNTTAB)"`` (PV domains only).
    :param xen_owned: reached through an entry that is Xen's, not the guest's (the guest PV ABI
        does not apply: no Xen bits, no disallow masks).
    :param repeat: copies this record stands for (1 unless the walk found the same subtree again
        at VAs in arithmetic progression); copy ``k`` lies at ``va + k * stride`` with the same
        ``pa``, flags, rights, key, Xen bits and verdicts; ``entries`` describe copy 0.
    :param stride: bytes between copies (0 when ``repeat`` is 1).
    :param pa_contiguous: the frames of a coalesced run are contiguous, so ``pa`` .. ``pa +
        size`` is its physical range; when False only ``pa`` (the first frame) is meaningful.
    :param kind: ``"page"`` for a real leaf; ``"rsvd"`` for a present entry that raises #PF RSVD
        instead of mapping (e.g. PS=1 in a PML4E); ``"unreadable"`` when the next table cannot be
        read; ``"not-in-dump"`` when the next table's frame is not in the source. Non-page records
        cover the whole span of the entry that could not be followed (``size``), ``pa`` None.
    """

    va: int
    pa: Optional[int]
    size: int
    page_size: int
    level: str
    entries: Tuple[EntryRef, ...]
    flags: FrozenSet[str]
    effective: Effective
    pkey: Optional[int] = None
    xen_bits: Tuple[str, ...] = ()
    rsvd: Tuple[str, ...] = ()
    memtype: str = "WB"
    count: int = 1
    verdicts: Dict[str, Verdict] = field(default_factory=dict)
    notes: Tuple[str, ...] = ()
    kind: str = "page"
    disallowed: Tuple[str, ...] = ()
    xen_owned: bool = False  # reached through a Xen-owned entry (Xen L4 slot, PV32 Xen area)
    repeat: int = 1
    stride: int = 0
    pa_contiguous: bool = True
    p2m: Optional[Stage2] = None  # HVM/PVH through a host p2m: its rights for these frames

    @property
    def end(self) -> int:
        """End of copy 0 (exclusive); :attr:`last_end` for the last copy."""
        return self.va + self.size

    @property
    def last_end(self) -> int:
        """End (exclusive) of the last copy."""
        return self.va + (self.repeat - 1) * self.stride + self.size

    @property
    def total_pages(self) -> int:
        """Pages over every copy (``count * repeat``); 0 for a record that maps nothing."""
        return self.count * self.repeat

    @property
    def total_bytes(self) -> int:
        """Bytes of VA over every copy (``size * repeat``)."""
        return self.size * self.repeat

    def copies(self):
        """One mapping per copy (``repeat`` 1), copy 0 first: the same record at ``va + k *
        stride``. ``entries`` stay copy 0's (a walk with ``expand=True`` gives each copy's own)."""
        if self.repeat <= 1:
            yield self
            return
        for k in range(self.repeat):
            yield replace(self, va=self.va + k * self.stride, repeat=1, stride=0)


@dataclass(eq=False)
class PageBatch:
    """``n`` one-page mappings of one table that differ only in VA, frame, leaf index and raw
    entry (and A/D flags): what a per-page walk (``coalesce=False``) gives in bulk, for encoders
    that write them without a :class:`Mapping` each (``render.batch_lines``).

    :param protos: A/D bits (``raw & 0x60``) -> the mapping of the first page with those bits
        (its attributes are every page's with the same bits; its VA, PA and entries are its own).
    :param vas: canonical VA per page; ``pas`` frame per page; ``indices``/``raws`` the leaf
        entries.
    """

    protos: Dict[int, Mapping]
    vas: list
    pas: list
    indices: list
    raws: list

    @property
    def n(self) -> int:
        return len(self.vas)

    def mappings(self):
        """One :class:`Mapping` per page."""
        for va, pa, index, raw in zip(self.vas, self.pas, self.indices, self.raws):
            proto = self.protos[raw & 0x60]
            leaf = proto.entries[-1]
            yield replace(proto, va=va, pa=pa, entries=proto.entries[:-1] + (
                EntryRef(leaf.level, index, leaf.table_pa, raw),))


@dataclass(frozen=True)
class Step:
    """One level of a single-address trace.

    :param entry_pa: physical address of the entry read.
    :param bits: ``(name, value, meaning)`` for every field of the entry.
    :param effective: rights combined down to and including this level.
    :param rule: why the walk continued or stopped at this level.
    """

    level: str
    index: int
    table_pa: int
    entry_pa: int
    raw: int
    bits: Tuple[Tuple[str, int, str], ...]
    effective: Effective
    rule: str


@dataclass(frozen=True)
class Trace:
    """A single-address walk: every level visited and the outcome.

    :param mapping: the mapping found, or None when the walk stopped early.
    :param stop: why the walk ended (``"leaf"``, ``"not present"``, ``"reserved bit"``,
        ``"unreadable"``, ``"not in dump"``, ``"non-canonical"``).
    """

    va: int
    steps: Tuple[Step, ...]
    mapping: Optional[Mapping]
    stop: str
