"""The page-table walker: single-address traces and whole-space (or ranged) walks.

One loop serves every paging mode: it follows the mode's table of levels (:mod:`gdb_xenpte.arch`)
and the per-level entry rules (:mod:`gdb_xenpte.decode`). Each table page is read once per walk and
decoded once (a last-level table evicted from the bounded cache of decoded PTs is decoded again
from its bytes); a table reached again (the kernel half shared by processes, Xen's linear slot, a
self-map) reuses that decoding — its mappings are still produced for every VA that reaches them,
never dropped. A subtree reached from consecutive entries with the same context is walked once and
its runs replayed shifted, or (``repeats=True``) given once with ``repeat`` copies; a
:class:`~gdb_xenpte.replay.SubtreeMemo` shares subtrees across the walks of one dump. The runs, blocks
of copies and the merge that coalesces them live in :mod:`gdb_xenpte.replay`. A caller-set budget of
entries (examined or replayed) and seconds bounds every walk, whatever its options; a walk that hits
it says so in :attr:`Walker.stats`.

Failure modes: a table that cannot be read (outside RAM, not in the dump) becomes a record of kind
``"unreadable"``/``"not-in-dump"`` for the entry that referenced it, and the walk goes on. Only a
bad root (CR3 unreadable) is an error, raised as :class:`~gdb_xenpte.errors.SourceError`.
"""

from __future__ import annotations

import bisect
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from .arch import CR4, MODES
from .cpu import CpuState, paging_mode
from .decode import (KIND_LEAF, KIND_RSVD_STOP, KIND_TABLE, DecodedTable, LevelRule, bits_text,
                     decode_table, explain_entry, level_rules, memory_type, np)
from .errors import OptionError, SourceError, SourceGone, UnreadableMemory, XenpteError
from .model import Effective, EntryRef, Mapping, PageBatch, Step, Trace
from .replay import (A_D, Block, Ctx, Dim, Run, SubtreeMemo, fold, fold_list, merge, new_run,
                     pse36_mask, rebase, shift)
from .xenview import disallowed_texts

__all__ = ["DEFAULT_ENTRY_BUDGET", "DEFAULT_TIME_BUDGET", "WalkStats", "Walker", "cr3_root"]

DEFAULT_ENTRY_BUDGET = 50_000_000
DEFAULT_TIME_BUDGET = 300.0

_CACHE_MAX = 65536  # entries in each per-walker cache (leaf attributes, leaf EntryRefs)
# Decoded last-level tables kept at once. A decoded table costs ~5x its bytes (index, kind and
# reserved-bit arrays); keeping every one made a walk's memory grow ~21 KiB per table (0.9 GiB for
# a 64 GiB guest in 4 KiB pages). Their bytes stay (read once per walk); a PT evicted and reached
# again (an alias) is decoded again from them. Upper-level tables are few and always kept.
_DECODED_PT_MAX = 1024
# Positions 0..1023 (the most entries a table has): a whole table's positions as a free slice.
_POSITIONS = np.arange(1024) if np is not None else None


def cr3_root(cr3: int, mode_key: str, maxphyaddr: int) -> int:
    """Physical address of the top table named by CR3 (SDM Vol. 3A §4.5.2, Table 4-12/4-13).

    Low bits are PCID (CR4.PCIDE=1) or PWT/PCD; bit 63 (no-flush) and the LAM bits 62:61 are not
    address bits. PAE's PDPT is 32-byte aligned (§4.4.1, Table 4-7); 32-bit paging uses bits 31:12.
    """
    if mode_key == "32bit":
        return cr3 & 0xFFFFF000
    if mode_key == "pae":
        return cr3 & 0xFFFFFFE0
    return cr3 & ((1 << maxphyaddr) - 1) & ~0xFFF


@dataclass
class WalkStats:
    """What a walk did: counts for benchmarks and the summary record.

    :param tables_read: table reads issued to the source (each distinct table once).
    :param tables_shared: tables below subtrees replayed from an earlier walk of the same dump
        (:class:`~gdb_xenpte.replay.SubtreeMemo`): read by that walk, not again by this one.
    :param entries: present entries examined, counted against the entry budget.
    :param leaves: leaf entries (pages) produced.
    :param unreadable: ``(table address, reason)`` for each table that could not be read.
    :param budget_hit: None, or why the walk stopped early and where.
    """

    tables_read: int = 0
    tables_shared: int = 0
    entries: int = 0
    leaves: int = 0
    unreadable: List[Tuple[int, str]] = field(default_factory=list)
    budget_hit: Optional[str] = None
    seconds: float = 0.0

    @property
    def tables(self) -> int:
        """The tables the walk's records rest on, read now or by an earlier walk of the dump:
        what a fresh walk reads (the summary's ``tables_read``, whatever walked before)."""
        return self.tables_read + self.tables_shared



class _BudgetHit(Exception):
    pass


class Walker:
    """Walk one address space.

    :param source: a :class:`~gdb_xenpte.sources.base.PhysSource`.
    :param cpu: registers and CPU properties; ``cpu.cr4`` must be the CR4 the hardware runs the
        guest with (for Xen PV: the effective CR4 from :mod:`gdb_xenpte.xen`).
    :param mode: a key of :data:`~gdb_xenpte.arch.MODES` to override the mode the registers select
        (e.g. ``"pv32"`` to walk a 32-bit PV guest's own tables from its L3).
    :param root: override the top table's physical/machine address (default: from CR3).
    :param xen_view: optional Xen view of the domain with ``xen_bits(raw, level, leaf)`` and
        ``xen_area(level, index, va, span)`` and ``disallowed(raw, level)`` (see
        :class:`gdb_xenpte.xenview.XenView`), for Xen annotations.
    :param judge: optional :class:`~gdb_xenpte.verdicts.Judge`; mappings then carry verdicts.
    :param entry_budget: stop after this many present entries (hostile/aliased tables).
    :param time_budget: stop after this many seconds.
    :param memo: a :class:`~gdb_xenpte.replay.SubtreeMemo` shared by the walkers of one source
        that cannot change (a dump): subtrees below the top table (the kernel half every CR3
        shares) are walked once across them all.
    :raises OptionError: if the registers select no paging mode.
    """

    def __init__(self, source, cpu: CpuState, *, mode: Optional[str] = None,
                 root: Optional[int] = None, xen_view=None, judge=None,
                 entry_budget: int = DEFAULT_ENTRY_BUDGET,
                 time_budget: float = DEFAULT_TIME_BUDGET, memo: Optional[SubtreeMemo] = None):
        self.source = source
        self.cpu = cpu
        choice = paging_mode(cpu)
        self.notes: Tuple[str, ...] = choice.notes
        if mode is not None:
            if mode not in MODES:
                raise OptionError(f"unknown paging mode {mode!r} (known: {', '.join(MODES)})")
            self.mode_key = mode
        else:
            self.mode_key = next(k for k, v in MODES.items() if v is choice.mode)
        self.mode = MODES[self.mode_key]
        self.nxe = choice.nxe if self.mode.entry_size == 8 else False
        self.rules: Tuple[LevelRule, ...] = level_rules(
            self.mode, self.nxe, cpu.maxphyaddr, pse=bool(cpu.cr4 & CR4.PSE), vendor=cpu.vendor)
        self.xen_view = xen_view
        self.judge = judge
        self.entry_budget = entry_budget
        self.time_budget = time_budget
        self.stats = WalkStats()
        self._tables: Dict[Tuple[int, int], object] = {}
        self._pt_lru: "OrderedDict[Tuple[int, int], object]" = OrderedDict()
        self._pages: Dict[Tuple[int, int], object] = {}
        self._attr_cache: Dict[tuple, tuple] = {}
        self._ref_cache: Dict[tuple, EntryRef] = {}
        self._translate = getattr(source, "translate_frame", None)
        # HVM/PVH through a host p2m: gfn -> the p2m's rights (model.Stage2), or None.
        self._stage2 = getattr(source, "second_stage", None)
        self._va_mask = (1 << self.mode.va_bits) - 1
        # For canonical(), called once per record: the sign bit (0 where the mode has no canonical
        # form, e.g. 32-bit VAs) and the bits it extends into.
        self._sign_bit = 1 << (self.mode.va_bits - 1) if self.mode.canonical else 0
        self._sign_ext = ~self._va_mask & 0xFFFFFFFFFFFFFFFF
        self._root_error: Optional[str] = None
        # Xen's areas are labelled by top-level slot (XenView.xen_area), except a PV32 guest's
        # hypervisor area, labelled by VA at every level (xen.pv32_hypervisor_area): only there
        # can a leaf be labelled, or copies of a subtree be labelled differently (so there only
        # subtrees that are wholly Xen's are taken as repeats).
        self._va_labels = getattr(getattr(xen_view, "policy", None), "domain", None) == "pv32"
        self._expand = False
        self._coalesce = True
        self._phys = False
        self.memo = memo
        # Subtrees remembered in the memo: those whose top table is above the last level (a
        # subtree too big to hold is still shared through its own subtrees one level down).
        self._memo_depth = len(self.rules) - 2
        if root is not None:
            self.root = root
        else:
            # CR3 holds a frame like any entry: a machine address for PV dumps, so translate it.
            machine = cr3_root(cpu.cr3, self.mode_key, cpu.maxphyaddr)
            self.root = self._frame_to_pa(machine)
            if self.root is None:
                self.root = machine
                self._root_error = (f"CR3 {cpu.cr3:#x}: the top-level table's machine frame "
                                    f"{machine >> 12:#x} is not in {source.name}")

    # -- addresses --------------------------------------------------------------------------

    def canonical(self, lin: int) -> int:
        """Sign-extend a linear address from the mode's VA width (non-canonical-free form)."""
        return lin | self._sign_ext if lin & self._sign_bit else lin

    def is_canonical(self, va: int) -> bool:
        return self.canonical(va & self._va_mask) == va

    def _frame_to_pa(self, addr: int) -> Optional[int]:
        """Translate a frame address from an entry (MFN space for PV) to the source's PA space."""
        if self._translate is None:
            return addr
        pfn = self._translate(addr >> 12)
        if pfn is None:
            return None
        return (pfn << 12) | (addr & 0xFFF)

    # -- table access -----------------------------------------------------------------------

    def _table(self, table_pa: int, depth: int):
        """Decoded table at ``table_pa`` (read once per walk), or the XenpteError reading it."""
        key = (table_pa, depth)
        rule = self.rules[depth]
        cache = self._pt_lru if rule.last else self._tables
        hit = cache.get(key)
        if hit is not None:
            if rule.last:
                self._pt_lru.move_to_end(key)
            return hit
        size = (1 << rule.index_bits) * rule.entry_size
        data = self._pages.get((table_pa, size))
        if data is None:
            # A page seen at several depths (self-maps, Xen's linear slot) is read only once.
            try:
                data = self.source.read(table_pa, size)
                if len(data) != size:
                    raise UnreadableMemory(self.source.name, table_pa,
                                           f"short read ({len(data)} of {size} bytes)")
            except SourceGone:
                raise  # nothing more can be read: stop, not one unreadable row per table
            except XenpteError as err:
                data = err
                self.stats.unreadable.append((table_pa, str(err)))
            self.stats.tables_read += 1
            self._pages[(table_pa, size)] = data
        hit = data if isinstance(data, XenpteError) else decode_table(data, rule)
        cache[key] = hit
        if rule.last and len(cache) > _DECODED_PT_MAX:
            self._pt_lru.popitem(last=False)
        return hit

    # -- per-entry semantics ----------------------------------------------------------------

    def _child_ctx(self, ctx: Ctx, rule: LevelRule, index: int, table_pa: int, raw: int,
                   rsvd: int, va: int = 0) -> Ctx:
        user, write, nx = rule.rights(raw, ctx.user, ctx.write, ctx.nx)
        rs = ctx.rsvd
        if rsvd:
            rs = rs + (f"{rule.name}[{index}]: {bits_text(rsvd)} reserved",)
        notes = ctx.notes
        dis = ctx.disallowed
        owned = ctx.xen_owned
        if self.xen_view is not None and not owned:
            label = self.xen_view.xen_area(rule.name, index, va, rule.page_size)
            if label:
                notes = notes + (label,)
                owned = True
            else:
                dis = dis + disallowed_texts(rule.name, index,
                                             self.xen_view.disallowed(raw, rule.name))
        return Ctx(user, write, nx, rs, ctx.path + (EntryRef(rule.name, index, table_pa, raw),),
                   notes, dis, owned)

    def _attrs(self, rule: LevelRule, raw: int, ctx_key: tuple, rsvd_here: int):
        """Derived attributes of a leaf, cached by everything they depend on."""
        key = (rule.depth, raw & ~(rule.leaf_frame_mask | A_D), ctx_key, rsvd_here)
        hit = self._attr_cache.get(key)
        if hit is not None:
            return hit
        user, write, nx, has_rsvd, xen_owned = ctx_key
        user, write, nx = rule.rights(raw, user, write, nx)
        eff = Effective(user, write, not nx)
        flags = set()
        for name, bit in (("P", 0), ("RW", 1), ("US", 2), ("PWT", 3), ("PCD", 4), ("G", 8)):
            if raw >> bit & 1:
                flags.add(name)
        if not rule.last:
            flags.add("PS")
        if raw >> rule.pat_bit & 1:
            flags.add("PAT")
        if rule.entry_size == 8 and raw >> 63:
            flags.add("NX")
        pkey = (raw >> 59) & 0xF if rule.has_pkey else None
        xen_bits: Tuple[str, ...] = ()
        dis: Tuple[str, ...] = ()
        if self.xen_view is not None and not xen_owned:
            xen_bits = tuple(self.xen_view.xen_bits(raw, rule.name, True))
            dis = tuple((bit, name) for bit, name in self.xen_view.disallowed(raw, rule.name))
        mt = memory_type(raw, rule, self.cpu.pat)
        verdicts = {}
        if self.judge is not None:
            verdicts = self.judge.judge(eff, pkey, has_rsvd or bool(rsvd_here))
        base = frozenset(flags)
        # One flags set per A/D state, indexed by the leaf's A/D bits >> 5 (A = 1, D = 2), so a
        # record with A or D set shares a set instead of building its own.
        flags_by_ad = (base, base | {"A"}, base | {"D"}, base | {"A", "D"})
        hit = (eff, flags_by_ad, pkey, xen_bits, mt, verdicts, dis)
        if len(self._attr_cache) >= _CACHE_MAX:
            self._attr_cache.clear()  # hostile tables: every entry distinct; keep memory flat
        self._attr_cache[key] = hit
        return hit

    def _make_mapping(self, rule: LevelRule, ctx: Ctx, va_lin: int, index: int, table_pa: int,
                      raw: int, rsvd: int, count: int, and_ad: int, pa: Optional[int],
                      notes: Tuple[str, ...] = ()) -> Mapping:
        owned = ctx.xen_owned
        if self._va_labels and not owned:
            # A leaf can be Xen's too (the compat M2P superpages in a PV32 guest's top L2).
            label = self.xen_view.xen_area(rule.name, index, va_lin, rule.page_size)
            if label:
                owned, notes = True, (label,) + notes
        ctx_key = ctx.key if owned == ctx.xen_owned else (ctx.user, ctx.write, ctx.nx,
                                                          bool(ctx.rsvd), owned)
        eff, flags_by_ad, pkey, xen_bits, mt, verdicts, dis = self._attrs(rule, raw, ctx_key,
                                                                          rsvd)
        rs = ctx.rsvd
        if rsvd:
            rs = rs + (f"{rule.name}[{index}]: {bits_text(rsvd)} reserved",)
        if pa is None:
            notes = notes + ("frame not in source",)
        disallowed = ctx.disallowed
        if dis:  # rare: skip building an empty tuple per record
            disallowed = disallowed + disallowed_texts(rule.name, index, dis)
        page = rule.page_size
        return Mapping(
            va=self.canonical(va_lin), pa=pa, size=count * page, page_size=page, level=rule.name,
            entries=ctx.path + (self._leaf_ref(rule.name, index, table_pa, raw),),
            flags=flags_by_ad[and_ad >> 5], effective=eff, pkey=pkey, xen_bits=xen_bits, rsvd=rs,
            memtype=mt, count=count, verdicts=verdicts, notes=ctx.notes + notes,
            disallowed=disallowed, xen_owned=owned)

    def _leaf_ref(self, level: str, index: int, table_pa: int, raw: int) -> EntryRef:
        """The leaf's EntryRef, made once per table entry: a table reached again (Linux's espfix
        PT, aliased by 512 PD entries) gives the same entries at every VA that reaches it."""
        key = (level, index, table_pa, raw)
        ref = self._ref_cache.get(key)
        if ref is None:
            if len(self._ref_cache) >= _CACHE_MAX:
                self._ref_cache.clear()  # a walk of all-distinct leaves: keep memory flat
            ref = self._ref_cache[key] = EntryRef(level, index, table_pa, raw)
        return ref

    def _stop_record(self, kind: str, rule: LevelRule, ctx: Ctx, va_lin: int, index: int,
                     table_pa: int, raw: int, rsvd: int, why: str) -> Mapping:
        """A record for a present entry the walk cannot follow (RSVD stop, unreadable table)."""
        child = self._child_ctx(ctx, rule, index, table_pa, raw, rsvd, va_lin)
        eff = Effective(child.user, child.write, not child.nx)
        verdicts = {}
        if self.judge is not None and kind == "rsvd":
            verdicts = self.judge.judge(eff, None, True)
        return Mapping(
            va=self.canonical(va_lin), pa=None, size=rule.page_size, page_size=rule.page_size,
            level=rule.name, entries=child.path, flags=frozenset(), effective=eff,
            rsvd=child.rsvd, count=0, verdicts=verdicts, notes=child.notes + (why,), kind=kind,
            disallowed=child.disallowed, xen_owned=child.xen_owned)

    # -- single address ---------------------------------------------------------------------

    def trace(self, va: int) -> Trace:
        """Walk one virtual address level by level, explaining every entry read.

        A reserved bit in a non-leaf entry does not end the trace: the CPU would raise #PF with
        RSVD, and the levels below are still shown with that fault carried into the mapping.
        """
        va &= 0xFFFFFFFFFFFFFFFF
        if not self.is_canonical(va):
            return Trace(va, (), None, "non-canonical")
        lin = va & self._va_mask
        if self._root_error:
            return Trace(va, (), None, f"unreadable: {self._root_error}")
        self._deadline = time.monotonic() + self.time_budget
        ctx = Ctx(True, True, False, (), (), ())
        table_pa = self.root
        steps: List[Step] = []
        for rule in self.rules:
            index = (lin >> rule.shift) & ((1 << rule.index_bits) - 1)
            dt = self._table(table_pa, rule.depth)
            entry_pa = table_pa + index * rule.entry_size
            if isinstance(dt, XenpteError):
                return Trace(va, tuple(steps), None, f"unreadable: {dt}")
            raw = int(dt.all_raw[index])
            bits = explain_entry(raw, rule)
            if self.xen_view is not None and raw & 1 and not ctx.xen_owned:
                leaf_now = rule.is_leaf(raw)
                bits = bits + tuple((name, 1, meaning) for name, meaning in
                                    self.xen_view.explain_bits(raw, rule.name, leaf_now))
            if not raw & 1:
                eff = Effective(ctx.user, ctx.write, not ctx.nx)
                steps.append(Step(rule.name, index, table_pa, entry_pa, raw, bits, eff,
                                  "P=0: not present, every access raises #PF (P=0)"))
                return Trace(va, tuple(steps), None, "not present")
            leaf = rule.is_leaf(raw)
            rsvd = rule.reserved(raw, leaf)
            entry_lin = (lin >> rule.shift) << rule.shift
            child = self._child_ctx(ctx, rule, index, table_pa, raw, rsvd, entry_lin)
            eff = Effective(child.user, child.write, not child.nx)
            if rule.ps_reserved and raw & 0x80:
                steps.append(Step(rule.name, index, table_pa, entry_pa, raw, bits, eff,
                                  f"PS=1 is reserved in a {rule.name} entry: #PF with RSVD"))
                rec = self._stop_record("rsvd", rule, ctx, (lin >> rule.shift) << rule.shift,
                                        index, table_pa, raw, rsvd, "PS=1 reserved")
                return Trace(va, tuple(steps), rec, "reserved bit")
            why = f"; {bits_text(rsvd)} reserved: #PF with RSVD" if rsvd else ""
            if leaf:
                steps.append(Step(rule.name, index, table_pa, entry_pa, raw, bits, eff,
                                  f"leaf: maps a {rule.page_size >> 10} KiB page{why}"))
                page_lin = (lin >> rule.shift) << rule.shift
                pa = self._frame_to_pa(rule.frame(raw, True))
                m = self._make_mapping(rule, ctx, page_lin, index, table_pa, raw, rsvd, 1,
                                       raw & A_D, pa)
                return Trace(va, tuple(steps), m, "reserved bit" if m.rsvd else "leaf")
            nxt = self._frame_to_pa(rule.frame(raw, False))
            steps.append(Step(rule.name, index, table_pa, entry_pa, raw, bits, eff,
                              f"references the next table at {rule.frame(raw, False):#x}{why}"))
            if nxt is None:
                return Trace(va, tuple(steps), None, "not in dump")
            table_pa = nxt
            ctx = child
        raise AssertionError("a walk ends at the last level")  # pragma: no cover

    # -- whole-space walk -------------------------------------------------------------------

    def iter_mappings(self, start: int = 0, end: Optional[int] = None, *, coalesce: bool = True,
                      phys: bool = False, repeats: bool = False,
                      keep: Optional[Callable[[Mapping], bool]] = None,
                      batches: bool = False) -> Iterator[Mapping]:
        """Yield mappings in VA order over ``[start, end)`` (canonical VAs; end exclusive).

        :param coalesce: merge VA-contiguous leaves of one level with equal attributes (rights,
            key, Xen bits, memory type, software bits); A and D are kept only if set on every page.
            Without it (one record per page) copies are always expanded.
        :param phys: also require PA contiguity when merging.
        :param repeats: a subtree reached again at VAs in arithmetic progression (Linux's espfix
            area, aliases of one table) is one record per run with ``repeat`` copies ``stride``
            bytes apart (records are then in VA order of their first copy; ``Mapping.copies()``
            expands one). Without it, one record per copy: every consumer that sums ``count``
            stays right.
        :param batches: with ``coalesce=False``, leaves of one table that differ only in frame
            and A/D come as one :class:`~gdb_xenpte.model.PageBatch` (``n`` records) for bulk
            encoders; only for consumers that handle them.
        :param keep: a predicate over a mapping's attributes (rights, key, Xen bits, verdicts,
            flags, notes; not its addresses or counts): records it refuses are not built, and it
            is asked once per distinct set of attributes.
        """
        lo = start & self._va_mask
        hi = (self._va_mask + 1) if end is None else (((end - 1) & self._va_mask) + 1)
        if hi <= lo:
            return
        # Each walk reads the target afresh (a live guest may have changed since the last one).
        self.stats = WalkStats()
        self._pages.clear()
        self._tables.clear()
        self._pt_lru.clear()
        self._expand = not repeats or not coalesce
        self._coalesce = coalesce
        self._phys = phys
        self._batches = (batches and not coalesce and self._translate is None
                         and not self._va_labels)
        if self.memo is not None:
            policy = getattr(self.xen_view, "policy", None)
            # A dump opened again by the next command is the same source: bind by identity.
            self.memo.bind((getattr(self.source, "identity", None) or self.source, self.rules,
                            self.mode_key, policy, getattr(self.xen_view, "root_is_xen_l4", None),
                            self._expand, coalesce, phys))
        t0 = time.monotonic()
        self._deadline = t0 + self.time_budget
        root_ctx = Ctx(True, True, False)
        keep_memo: Dict[tuple, bool] = {}
        try:
            if self._root_error:
                raise SourceError(self.source.name, self._root_error)
            top = self._table(self.root, 0)
            if isinstance(top, XenpteError):
                raise SourceError(self.source.name,
                                  f"the top-level table (CR3 {self.cpu.cr3:#x}) cannot be read: "
                                  f"{getattr(top, 'detail', top)}")
            items = fold(_until_budget(self._walk_table(self.root, 0, 0, root_ctx, lo, hi)),
                         coalesce, phys)
            for item in items:
                if type(item) is Block:
                    for run in item.first():
                        m = self._finish(run, keep, keep_memo, item.n, item.stride)
                        if m is not None:
                            yield m
                elif item.kind == "pages":
                    yield from self._batch(item, keep)
                else:
                    m = self._finish(item, keep, keep_memo)
                    if m is not None:
                        yield m
        finally:
            self.stats.seconds = time.monotonic() - t0

    def _finish(self, run: Run, keep=None, memo=None, repeat: int = 1,
                stride: int = 0) -> Optional[Mapping]:
        key = None
        if keep is not None and run.kind == "page" and not self._va_labels:
            # A leaf's attributes follow from its context, its bits but the frame, and whether
            # its frame is in the source (not from its VA: PV32's VA-labelled area excepted), so
            # the filter's answer is kept per such key and a refused run is never built.
            rule = run.rule
            key = (id(run.ctx), rule.depth, run.raw & ~rule.leaf_frame_mask, run.rsvd,
                   run.and_ad, run.pa is None)
            hit = memo.get(key)
            if hit is not None and hit[0] is run.ctx:
                if not hit[1]:
                    return None
                key = None  # kept: build it, nothing more to ask
        if run.kind != "page":
            m = self._stop_record(run.kind, run.rule, run.ctx, run.va, run.index, run.table_pa,
                                  run.raw, run.rsvd, run.why)
        else:
            m = self._make_mapping(run.rule, run.ctx, run.va, run.index, run.table_pa, run.raw,
                                   run.rsvd, run.count, run.and_ad, run.pa)
        if repeat > 1:
            m.repeat, m.stride = repeat, stride
        if not run.contig:
            m.pa_contiguous = False
        if run.stage2 is not None:
            m.p2m = run.stage2
        if keep is not None and (key is not None or run.kind != "page" or self._va_labels):
            ok = bool(keep(m))
            if key is not None:
                if len(memo) > _CACHE_MAX:
                    memo.clear()
                memo[key] = (run.ctx, ok)  # holding the context keeps its id unique
            if not ok:
                return None
        return m

    def _batch(self, run: Run, keep) -> Iterator:
        """A run of leaves given one record each: a PageBatch, or (where a record's text names
        its own leaf: reserved or disallowed bits) one Mapping per page."""
        rule, ctx = run.rule, run.ctx
        indices, raws = run.leaves
        page = rule.page_size
        protos: Dict[int, Mapping] = {}
        first = {}
        for k, raw in enumerate(raws):
            ad = raw & A_D
            if ad not in first:
                first[ad] = k
                if len(first) == 4:
                    break
        simple = not run.rsvd
        for ad, k in first.items():
            index = indices[k]
            m = self._make_mapping(rule, ctx, run.va + (index - run.index) * page, index,
                                   run.table_pa, raws[k], run.rsvd, 1, ad,
                                   self._frame_to_pa(rule.frame(raws[k], True)))
            simple = simple and m.disallowed is ctx.disallowed
            protos[ad] = m
        if simple and keep is not None:
            answers = {ad: bool(keep(m)) for ad, m in protos.items()}
            if not any(answers.values()):
                return
            simple = all(answers.values())
        if not simple:
            for index, raw in zip(indices, raws):
                m = self._make_mapping(rule, ctx, run.va + (index - run.index) * page, index,
                                       run.table_pa, raw, run.rsvd, 1, raw & A_D,
                                       self._frame_to_pa(rule.frame(raw, True)))
                if keep is None or keep(m):
                    yield m
            return
        va0 = self.canonical(run.va) - run.index * page  # one table: one sign extension
        if rule.pse36_bits:
            pas = [rule.frame(r, True) for r in raws]
        else:
            fm = rule.leaf_frame_mask
            pas = [r & fm for r in raws]
        yield PageBatch(protos, [va0 + i * page for i in indices], pas, list(indices),
                        list(raws))

    def _check_budget(self, va_lin: int) -> None:
        if self.stats.entries > self.entry_budget:
            self.stats.budget_hit = (f"entry budget of {self.entry_budget} entries reached near "
                                     f"VA {self.canonical(va_lin):#x}")
            raise _BudgetHit()
        if time.monotonic() > self._deadline:
            self.stats.budget_hit = (f"time budget of {self.time_budget:g} s reached near "
                                     f"VA {self.canonical(va_lin):#x}")
            raise _BudgetHit()

    def _walk_table(self, table_pa: int, depth: int, base: int, ctx: Ctx, lo: int, hi: int):
        """Yield the runs and blocks of the table at ``table_pa`` (mapping ``base`` onward) that lie
        in ``[lo, hi)``, in VA order."""
        rule = self.rules[depth]
        dt = self._table(table_pa, depth)
        shift_ = rule.shift
        first = max(0, (lo - base) >> shift_)
        last = min((1 << rule.index_bits) - 1, (hi - 1 - base) >> shift_)
        self._check_budget(base)
        if np is not None:
            # Fast paths for the common case (a whole table, a PT of leaves only): each numpy
            # call costs about a microsecond whatever the table holds, and tables are many.
            if first == 0 and last == (1 << rule.index_bits) - 1:
                sel = _POSITIONS[:len(dt.index)]
            else:
                sel = np.flatnonzero((dt.index >= first) & (dt.index <= last))
            self.stats.entries += len(sel)
            if rule.last:  # a last-level table holds only leaves (decode_table)
                leaf_pos, other_pos = sel, []
            else:
                kinds = dt.kind[sel]
                leaf_pos = sel[kinds == KIND_LEAF]
                other_pos = sel[kinds != KIND_LEAF].tolist()
        else:
            n_all = len(dt.index)
            if first == 0 and last == (1 << rule.index_bits) - 1:
                sel = range(n_all)
            else:
                sel = [i for i, x in enumerate(dt.index) if first <= x <= last]
            self.stats.entries += len(sel)
            if rule.last:  # a last-level table holds only leaves (decode_table)
                leaf_pos, other_pos = list(sel), []
            else:
                kind = dt.kind
                leaf_pos = [i for i in sel if kind[i] == KIND_LEAF]
                other_pos = [i for i in sel if kind[i] != KIND_LEAF]
        # Emit leaves and subtrees interleaved in VA order: split leaf positions at subtrees.
        li = 0
        n_leaf = len(leaf_pos)
        span = rule.page_size
        p = 0
        n_other = len(other_pos)
        while p < n_other:
            pos = other_pos[p]
            p += 1
            index = int(dt.index[pos])
            if li < n_leaf:
                cut = _count_below(leaf_pos, pos, li)
                if cut > li:
                    yield from self._leaf_runs(rule, dt, leaf_pos[li:cut], table_pa, base, ctx)
                    li = cut
            raw = int(dt.raw[pos])
            rsvd = int(dt.rsvd[pos])
            va = base + (index << shift_)
            if dt.kind[pos] == KIND_RSVD_STOP:
                yield new_run("rsvd", rule, ctx, va, index, table_pa, raw, rsvd, 0, 0, None,
                              f"PS=1 in a {rule.name} entry: #PF with RSVD")
                continue
            child_pa = self._frame_to_pa(rule.frame(raw, False))
            if child_pa is None:
                yield new_run("not-in-dump", rule, ctx, va, index, table_pa, raw, rsvd, 0, 0,
                              None, f"next table (frame {rule.frame(raw, False) >> 12:#x}) not "
                                    f"in source")
                continue
            memo_here = (depth < self._memo_depth and self.memo is not None and lo <= va
                         and va + span <= hi)
            if memo_here:
                # Below the top table: a subtree another walk of this source has seen.
                child_ctx = self._child_ctx(ctx, rule, index, table_pa, raw, rsvd, va)
                hit = self._memo_replay(child_pa, depth + 1, va, child_ctx)
                if hit is not None:
                    yield from hit
                    continue
            read_before = self.stats.tables_read
            child = self._table(child_pa, depth + 1)
            if isinstance(child, XenpteError):
                yield new_run("unreadable", rule, ctx, va, index, table_pa, raw, rsvd, 0, 0,
                              None, f"next table unreadable: {child}")
                continue
            child_ctx = self._child_ctx(ctx, rule, index, table_pa, raw, rsvd, va)
            # The same table reached again from the next entries with the same context: a
            # repeated subtree (aliases of one table: Linux's espfix area, hostile storms).
            raws = [raw]
            if (not rsvd and p < n_other and lo <= va and va + span <= hi
                    and (not self._va_labels or child_ctx.xen_owned)):
                nomask = raw & ~_A
                while p < n_other:
                    q = other_pos[p]
                    qraw = int(dt.raw[q])
                    qindex = int(dt.index[q])
                    qva = base + (qindex << shift_)
                    if (qindex != index + len(raws) or (qraw & ~_A) != nomask
                            or dt.kind[q] != KIND_TABLE or dt.rsvd[q] or qva + span > hi
                            or (self._sign_bit and (qva ^ va) & self._sign_bit)):
                        break
                    qctx = self._child_ctx(ctx, rule, qindex, table_pa, qraw, 0, qva)
                    if not qctx.same_but_path(child_ctx):
                        break
                    raws.append(qraw)
                    p += 1
            if len(raws) == 1:
                if memo_here:
                    yield from self._memo_walk(child_pa, depth + 1, va, child_ctx, lo, hi,
                                               self.stats.tables_read - read_before)
                else:
                    yield from self._walk_table(child_pa, depth + 1, va, child_ctx, lo, hi)
            else:
                dim = Dim(depth, rule.name, table_pa, index, 1, tuple(raws), len(raws))
                yield from self._repeated(child_pa, depth + 1, va, child_ctx, lo, hi, dim, span)
        if li < n_leaf:
            yield from self._leaf_runs(rule, dt, leaf_pos[li:], table_pa, base, ctx)

    def _memo_replay(self, table_pa: int, depth: int, va: int, ctx: Ctx) -> Optional[List]:
        """The items of a subtree below the top table that a walk of this source has seen with
        the same context, as reached now; None when none has."""
        hit = self.memo.get((depth, table_pa, ctx.key, ctx.rsvd, ctx.notes, ctx.disallowed))
        if hit is None:
            return None
        base, items, leaves, _entries, unreadable, tables = hit
        stats = self.stats
        stats.tables_shared += tables
        self.memo.tables += tables
        stats.leaves += leaves
        stats.entries += len(items)
        stats.unreadable.extend(unreadable)
        self._check_budget(va)
        return rebase(items, va - base, ctx.path)

    def _memo_walk(self, table_pa: int, depth: int, va: int, ctx: Ctx, lo: int, hi: int,
                   own: int):
        """A subtree below the top table, walked and remembered for other walks of the source.

        :param own: 1 if the caller has just read the subtree's top table, else 0 (this walk had
            it already): counted with the subtree's tables either way, as a fresh walk would.
        """
        memo = self.memo
        key = (depth, table_pa, ctx.key, ctx.rsvd, ctx.notes, ctx.disallowed)
        stats = self.stats
        leaves0, entries0, unreadable0 = stats.leaves, stats.entries, len(stats.unreadable)
        tables0 = stats.tables - own
        items: Optional[List] = []
        for item in self._walk_table(table_pa, depth, va, ctx, lo, hi):
            if items is not None:
                items.append(item)
                if len(items) > memo.max_items:
                    items = None
            yield item
        if items is not None:
            memo.put(key, (va, items, stats.leaves - leaves0, stats.entries - entries0,
                           stats.unreadable[unreadable0:],
                           stats.tables - tables0), len(items))

    def _repeated(self, table_pa: int, depth: int, va: int, ctx: Ctx, lo: int, hi: int,
                  dim: Dim, span: int):
        """A subtree reached from ``dim.n`` consecutive entries: walked once, then given as a
        block of copies, or (when expanding, or when copies merge into each other) replayed
        shifted; a subtree too big to hold is walked again per copy."""
        stats = self.stats
        leaves0 = stats.leaves
        items: List = []
        walk = self._walk_table(table_pa, depth, va, ctx, lo, hi)
        for item in walk:
            items.append(item)
            if len(items) > _REPLAY_MAX:
                break
        else:
            walk = None
        if walk is not None:
            # Too big to replay: stream this copy, walk each other copy again.
            yield from items
            yield from walk
            for k in range(1, dim.n):
                ref = EntryRef(dim.level, dim.index0 + k, dim.table_pa, dim.raws[k])
                yield from self._walk_table(table_pa, depth, va + k * span,
                                            ctx.with_path(ctx.path[:-1] + (ref,)), lo, hi)
            return
        sub_leaves = stats.leaves - leaves0
        if not items:
            return
        n = dim.n
        if not self._expand:
            inner = items[0]
            if len(items) == 1 and type(inner) is Block and inner.n * inner.stride == span:
                # The subtree is itself copies that tile it (espfix's PT: one page every 64 KiB
                # over 2 MiB): one block of n * inner.n copies at the inner stride.
                stats.leaves += sub_leaves * (n - 1)
                yield Block(inner.runs, inner.stride, (dim,) + inner.dims)
                return
            flat = _flatten(items)
            if flat is not None:
                runs = fold_list(flat, self._phys)
                nxt = runs[0]._replace(va=runs[0].va + span)
                if merge(runs[-1], nxt, self._phys) is None:
                    stats.leaves += sub_leaves * (n - 1)
                    yield Block(runs, span, (dim,))
                    return
                items = runs
            else:  # inner blocks too big to flatten: walk each copy again
                yield from items
                for k in range(1, n):
                    ref = EntryRef(dim.level, dim.index0 + k, dim.table_pa, dim.raws[k])
                    yield from self._walk_table(table_pa, depth, va + k * span,
                                                ctx.with_path(ctx.path[:-1] + (ref,)), lo, hi)
                return
        elif self._coalesce:
            items = fold_list(items, self._phys)
        # Replay: copy k is copy 0 shifted (what a walk of it would give, without walking it).
        yield from items
        cost = sum(r.count if r.kind in ("page", "pages") else 1 for r in items) \
            if not self._coalesce else len(items)
        for k in range(1, n):
            stats.entries += cost
            stats.leaves += sub_leaves
            self._check_budget(va + k * span)
            yield from shift(items, k, (dim,), span)

    def _leaf_runs(self, rule: LevelRule, dt: DecodedTable, pos, table_pa: int, base: int,
                   ctx: Ctx):
        """Yield runs of leaves of one table, and blocks of equal runs at a constant stride."""
        n = len(pos)
        self.stats.leaves += n
        coalesce = self._coalesce
        phys = self._phys
        page = rule.page_size
        # What must be equal for two leaves to merge: all but the frame and A/D.
        keymask = ~(rule.leaf_frame_mask | A_D | pse36_mask(rule)) & 0xFFFFFFFFFFFFFFFF
        translate = self._translate is not None
        contig = None  # per run: frames contiguous (None: every run's are)
        if np is not None:
            if n == len(dt.index):  # every present entry (pos is sorted and distinct)
                idx, raws, rsv = dt.index, dt.raw, dt.rsvd
            else:
                idx, raws, rsv = dt.index[pos], dt.raw[pos], dt.rsvd[pos]
            if coalesce and n > 1 and not translate and not rule.pse36_bits:
                one = _one_run(raws, rsv, idx, keymask, rule.leaf_frame_mask, page, phys)
                if one is not None:  # a table of like leaves (a direct map's PT): one run
                    i0, r0 = int(idx[0]), int(raws[0])
                    yield new_run("page", rule, ctx, base + (i0 << rule.shift), i0, table_pa, r0,
                                  0, n, one[0], self._frame_to_pa(rule.frame(r0, True)), "",
                                  one[1])
                    return
            starts = None
            if coalesce and n > 1:
                brk = _run_starts(raws, rsv, idx, keymask)
                if phys and not translate:
                    frames = raws & np.uint64(rule.leaf_frame_mask)
                    brk[1:] |= frames[1:] != frames[:-1] + np.uint64(page)
                starts = np.flatnonzero(brk)
                ad = np.bitwise_and.reduceat(raws & np.uint64(A_D), starts).tolist()
                starts_l = starts.tolist()
                if not phys and not translate and len(starts_l) < n:
                    # Which runs have scattered frames (a range is shown only when contiguous).
                    frames = raws & np.uint64(rule.leaf_frame_mask)
                    if rule.pse36_bits:
                        frames |= ((raws >> np.uint64(13))
                                   & np.uint64((1 << rule.pse36_bits) - 1)) << np.uint64(32)
                    # gap[i]: leaf i continues a run but its frame does not follow leaf i-1's.
                    gap = (frames[1:] - frames[:-1]) != np.uint64(page)
                    gap &= ~brk[1:]
                    if gap.any():
                        gap = np.concatenate(([False], gap))
                        contig = (~np.logical_or.reduceat(gap, starts)).tolist()
            elif self._batches and n > 1:
                # Per-page records, made in bulk: leaves that differ only in frame and A/D.
                brk = _run_starts(raws, rsv, idx, keymask)
                starts_l = np.flatnonzero(brk).tolist()
                idx_l, raw_l = idx.tolist(), raws.tolist()
                shift_ = rule.shift
                rsv_l = rsv.tolist()
                for b, e in zip(starts_l, starts_l[1:] + [n]):
                    if e - b < _BATCH_MIN:  # too few to pay for a template: one run a page
                        for k in range(b, e):
                            i, r = idx_l[k], raw_l[k]
                            yield new_run("page", rule, ctx, base + (i << shift_), i, table_pa,
                                          r, rsv_l[k], 1, r & A_D, self._frame_to_pa(
                                              rule.frame(r, True)))
                        continue
                    i, r = idx_l[b], raw_l[b]
                    yield new_run("pages", rule, ctx, base + (i << shift_), i, table_pa, r,
                                  rsv_l[b], e - b, 0, None, "", True, (idx_l[b:e], raw_l[b:e]))
                return
            else:
                starts_l = list(range(n))
                ad = (raws & np.uint64(A_D)).tolist()
            if translate:
                idx_l, raw_l, rsv_l = idx.tolist(), raws.tolist(), rsv.tolist()
            else:
                # Only each run's first entry is needed: convert those, not the whole table.
                sel = slice(None) if starts is None else starts
                heads = zip(idx[sel].tolist(), raws[sel].tolist(), rsv[sel].tolist())
        else:
            # Without numpy: whole-list comprehensions and C-level set/slice work, not a Python
            # loop body per leaf (the pure path was ~1 us a leaf).
            if n == len(dt.index):
                idx_l, raw_l, rsv_l = dt.index, dt.raw, dt.rsvd
            else:
                idx_l = [dt.index[p] for p in pos]
                raw_l = [dt.raw[p] for p in pos]
                rsv_l = [dt.rsvd[p] for p in pos]
            frames = None
            if coalesce and not translate:
                if rule.pse36_bits:
                    frames = [rule.frame(r, True) for r in raw_l]
                else:
                    fm = rule.leaf_frame_mask
                    frames = [r & fm for r in raw_l]
            acc = [r & A_D for r in raw_l]
            if not coalesce:
                starts_l, ad = list(range(n)), acc
            else:
                keys = [r & keymask for r in raw_l]
                # Frames in arithmetic progression (C-level list compare): no gap anywhere.
                steady = frames is not None and n > 0 and frames == list(
                    range(frames[0], frames[0] + n * page, page))
                if (keys.count(keys[0]) == n and rsv_l.count(rsv_l[0]) == n
                        and idx_l[-1] - idx_l[0] == n - 1 and (not phys or steady)):
                    starts_l = []  # the common case, a table of like leaves: one run
                else:
                    starts_l = [i for i, k0, k1, s0, s1, x0, x1 in zip(
                        range(1, n), keys, keys[1:], rsv_l, rsv_l[1:], idx_l, idx_l[1:])
                        if k0 != k1 or s0 != s1 or x1 - x0 != 1]
                    if phys and frames is not None and not steady:
                        starts_l = sorted(set(starts_l).union(
                            i for i, f0, f1 in zip(range(1, n), frames, frames[1:])
                            if f1 - f0 != page))
                starts_l.insert(0, 0)
                ends = starts_l[1:] + [n]
                ad = [acc[b] if e - b == 1 else _and_all(set(acc[b:e]))
                      for b, e in zip(starts_l, ends)]
                if frames is not None and not phys and not steady and len(starts_l) < n:
                    # Which runs have scattered frames (a range is shown only when contiguous).
                    gaps = [i for i, f0, f1 in zip(range(1, n), frames, frames[1:])
                            if f1 - f0 != page]
                    if gaps:
                        contig = [bisect.bisect_right(gaps, b) == len(gaps)
                                  or gaps[bisect.bisect_right(gaps, b)] >= e
                                  for b, e in zip(starts_l, ends)]
            heads = ((idx_l[s], raw_l[s], rsv_l[s]) for s in starts_l)
        shift_ = rule.shift
        to_pa = self._frame_to_pa
        if contig is not None:
            runs = [new_run("page", rule, ctx, base + (i << shift_), i, table_pa, r, s, e - b,
                            a, to_pa(rule.frame(r, True)), "", c)
                    for (i, r, s), b, e, a, c in zip(heads, starts_l, starts_l[1:] + [n], ad,
                                                     contig)]
        elif translate:
            # PV: frames are MFNs; a run stays one record only where PFNs are contiguous too
            # (checked per page by the merge step). HVM/PVH: guest frames through the host p2m,
            # whose rights (of a large page: its first frame's) keep apart runs they differ in.
            stage2 = self._stage2
            runs = [new_run("page", rule, ctx, base + (i << shift_), i, table_pa, r, s, 1, r & A_D,
                            to_pa(rule.frame(r, True)), "", True, None,
                            stage2(rule.frame(r, True) >> 12) if stage2 is not None else None)
                    for i, r, s in zip(idx_l, raw_l, rsv_l)]
        else:
            ends = starts_l[1:] + [n]
            runs = [new_run("page", rule, ctx, base + (i << shift_), i, table_pa, r, s, e - b,
                            a, to_pa(rule.frame(r, True)))
                    for (i, r, s), b, e, a in zip(heads, starts_l, ends, ad)]
        if self._expand or len(runs) < 2:
            yield from runs
            return
        yield from _leaf_blocks(runs, table_pa)



_A = 0x20  # the accessed bit: entries that differ only in it still reach one subtree alike
# Fewest leaves given as one PageBatch (below, a template costs more than it saves).
_BATCH_MIN = 8
# Items of a repeated subtree held to replay it; a bigger subtree is walked again per copy.
_REPLAY_MAX = 4096


def _until_budget(items):
    """The walk's items until a budget stops it (the fold then still gives what it holds)."""
    try:
        yield from items
    except _BudgetHit:
        return


def _flatten(items) -> Optional[List[Run]]:
    """Runs of ``items`` with blocks expanded (each block lies between its neighbours), or None
    when that would be more than can be held."""
    out: List[Run] = []
    for it in items:
        if type(it) is Block:
            if len(out) + it.n * len(it.runs) > _REPLAY_MAX:
                return None
            out.extend(it.expand())
        else:
            out.append(it)
    return out


def _leaf_blocks(runs: List[Run], table_pa: int):
    """Runs of one table with runs of equal leaves at a constant index step (the step larger
    than the run, so copies do not touch) given as blocks: e.g. Linux's espfix PT, one stack page
    every 16th entry."""
    i, n = 0, len(runs)
    while i < n:
        r = runs[i]
        j = i + 1
        if j < n:
            step = runs[j].index - r.index
            if step > r.count:
                key = (r.raw, r.rsvd, r.count, r.and_ad, r.stage2)
                while (j < n and runs[j].index - runs[j - 1].index == step
                       and (runs[j].raw, runs[j].rsvd, runs[j].count, runs[j].and_ad,
                            runs[j].stage2) == key):
                    j += 1
        if j - i >= 2:
            rule = r.rule
            yield Block((r,), step * rule.page_size,
                        (Dim(-1, rule.name, table_pa, r.index, step, (), j - i),))
            i = j
        else:
            yield r
            i += 1


def _and_all(values) -> int:
    """The bits set in every one of ``values`` (a few distinct A/D combinations)."""
    out = A_D
    for v in values:
        out &= v
    return out


def _count_below(leaf_pos, pos, start: int) -> int:
    """Number of leading leaf positions (from ``start``) that come before ``pos``."""
    if np is not None and hasattr(leaf_pos, "searchsorted"):
        return int(leaf_pos.searchsorted(pos))
    i = start
    while i < len(leaf_pos) and leaf_pos[i] < pos:
        i += 1
    return i


def _one_run(raws, rsv, idx, keymask: int, frame_mask: int, page: int,
             phys: bool) -> Optional[Tuple[int, bool]]:
    """``(A/D bits set in every leaf, frames contiguous)`` when a table's leaves are one run
    (consecutive indices, no reserved bits, equal but for frame and A/D; with ``phys`` the frames
    contiguous too), else None: a handful of numpy calls where the general split takes many."""
    # count_nonzero, not .any()/.all()/np.diff: ~1 us a call where those cost 3-8 us.
    n = len(raws)
    if int(idx[n - 1]) - int(idx[0]) != n - 1 or np.count_nonzero(rsv):
        return None
    if np.count_nonzero((raws ^ raws[0]) & np.uint64(keymask)):
        return None
    frames = raws & np.uint64(frame_mask)
    steady = not np.count_nonzero(frames[1:] - frames[:-1] - np.uint64(page))
    if phys and not steady:
        return None
    return int(np.bitwise_and.reduce(raws & np.uint64(A_D))), steady


def _run_starts(raws, rsv, idx, keymask: int):
    """``brk[i]``: leaf i starts a run — its bits under ``keymask`` or its reserved-bit finding
    differ from leaf i-1's, or it is not the next index (numpy arrays of one table's leaves)."""
    brk = np.empty(len(raws), dtype=bool)
    brk[0] = True
    keys = raws & np.uint64(keymask)
    np.not_equal(keys[1:], keys[:-1], out=brk[1:])
    brk[1:] |= rsv[1:] != rsv[:-1]
    brk[1:] |= idx[1:] != idx[:-1] + 1
    return brk
