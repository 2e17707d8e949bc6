"""The page-table walker: single-address traces and whole-space (or ranged) walks.

One loop serves every paging mode: it follows the mode's table of levels (:mod:`gdb_xenpte.arch`)
and the per-level entry rules (:mod:`gdb_xenpte.decode`). Each table page is read once per walk and
decoded once (a last-level table evicted from the bounded cache of decoded PTs is decoded again
from its bytes); a table reached again (the kernel half shared by processes, Xen's linear slot, a
self-map) reuses that decoding — its mappings are still produced for every VA that reaches them,
never dropped. A caller-set budget of entries and seconds bounds hostile tables; a walk that hits it
says so in :attr:`Walker.stats`.

Failure modes: a table that cannot be read (outside RAM, not in the dump) becomes a record of kind
``"unreadable"``/``"not-in-dump"`` for the entry that referenced it, and the walk goes on. Only a
bad root (CR3 unreadable) is an error, raised as :class:`~gdb_xenpte.errors.SourceError`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from .arch import CR4, MODES
from .cpu import CpuState, paging_mode
from .decode import (KIND_LEAF, KIND_RSVD_STOP, KIND_TABLE, DecodedTable, LevelRule, bits_text,
                     decode_table, explain_entry, level_rules, memory_type, np)
from .errors import OptionError, SourceError, UnreadableMemory, XenpteError
from .model import Effective, EntryRef, Mapping, Step, Trace, Verdict

__all__ = ["DEFAULT_ENTRY_BUDGET", "DEFAULT_TIME_BUDGET", "WalkStats", "Walker", "cr3_root"]

DEFAULT_ENTRY_BUDGET = 50_000_000
DEFAULT_TIME_BUDGET = 300.0

_A_D = 0x60
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
    :param entries: present entries examined, counted against the entry budget.
    :param leaves: leaf entries (pages) produced.
    :param unreadable: ``(table address, reason)`` for each table that could not be read.
    :param budget_hit: None, or why the walk stopped early and where.
    """

    tables_read: int = 0
    entries: int = 0
    leaves: int = 0
    unreadable: List[Tuple[int, str]] = field(default_factory=list)
    budget_hit: Optional[str] = None
    seconds: float = 0.0



class _BudgetHit(Exception):
    pass


@dataclass(frozen=True)
class _Ctx:
    """Rights and remarks accumulated from the levels above an entry."""

    user: bool
    write: bool
    nx: bool
    rsvd: Tuple[str, ...]
    path: Tuple[EntryRef, ...]
    notes: Tuple[str, ...]
    disallowed: Tuple[str, ...] = ()
    xen_owned: bool = False  # below a Xen-owned entry: the PV ABI (bits, masks) does not apply


class Walker:
    """Walk one address space.

    :param source: a :class:`~gdb_xenpte.sources.base.PhysSource`.
    :param cpu: registers and CPU properties; ``cpu.cr4`` must be the CR4 the hardware runs the
        guest with (for Xen PV: the effective CR4 from :mod:`gdb_xenpte.xen`).
    :param mode: a key of :data:`~gdb_xenpte.arch.MODES` to override the mode the registers select
        (e.g. ``"pv32"`` to walk a 32-bit PV guest's own tables from its L3).
    :param root: override the top table's physical/machine address (default: from CR3).
    :param domain: optional Xen view of the domain with ``xen_bits(raw, level, leaf)`` and
        ``xen_area(level, index, va, span)`` and ``disallowed(raw, level)`` (see
        :class:`gdb_xenpte.xenview.XenView`), for Xen annotations.
    :param judge: optional :class:`~gdb_xenpte.verdicts.Judge`; mappings then carry verdicts.
    :param entry_budget: stop after this many present entries (hostile/aliased tables).
    :param time_budget: stop after this many seconds.
    :raises OptionError: if the registers select no paging mode.
    """

    def __init__(self, source, cpu: CpuState, *, mode: Optional[str] = None,
                 root: Optional[int] = None, domain=None, judge=None,
                 entry_budget: int = DEFAULT_ENTRY_BUDGET,
                 time_budget: float = DEFAULT_TIME_BUDGET):
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
        self.domain = domain
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
        self._va_mask = (1 << self.mode.va_bits) - 1
        # For canonical(), called once per record: the sign bit (0 where the mode has no canonical
        # form, e.g. 32-bit VAs) and the bits it extends into.
        self._sign_bit = 1 << (self.mode.va_bits - 1) if self.mode.canonical else 0
        self._sign_ext = ~self._va_mask & 0xFFFFFFFFFFFFFFFF
        self._root_error: Optional[str] = None
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

    def _child_ctx(self, ctx: _Ctx, rule: LevelRule, index: int, table_pa: int, raw: int,
                   rsvd: int, va: int = 0) -> _Ctx:
        user, write, nx = ctx.user, ctx.write, ctx.nx
        if rule.has_rights:
            user = user and bool(raw & 4)
            write = write and bool(raw & 2)
        if rule.has_xd and raw >> 63:
            nx = True
        rs = ctx.rsvd
        if rsvd:
            rs = rs + (f"{rule.name}[{index}]: {bits_text(rsvd)} reserved",)
        notes = ctx.notes
        dis = ctx.disallowed
        owned = ctx.xen_owned
        if self.domain is not None and not owned:
            label = self.domain.xen_area(rule.name, index, va, rule.page_size)
            if label:
                notes = notes + (label,)
                owned = True
            else:
                dis = dis + _disallowed_texts(self.domain, rule, index, raw)
        return _Ctx(user, write, nx, rs, ctx.path + (EntryRef(rule.name, index, table_pa, raw),),
                    notes, dis, owned)

    def _attrs(self, rule: LevelRule, raw: int, ctx_key: tuple, rsvd_here: int):
        """Derived attributes of a leaf, cached by everything they depend on."""
        key = (rule.depth, raw & ~(rule.leaf_frame_mask | _A_D), ctx_key, rsvd_here)
        hit = self._attr_cache.get(key)
        if hit is not None:
            return hit
        user, write, nx, has_rsvd, xen_owned = ctx_key
        if rule.has_rights:
            user = user and bool(raw & 4)
            write = write and bool(raw & 2)
        if rule.has_xd and raw >> 63:
            nx = True
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
        if self.domain is not None and not xen_owned:
            xen_bits = tuple(self.domain.xen_bits(raw, rule.name, True))
            dis = tuple((bit, name) for bit, name in self.domain.disallowed(raw, rule.name))
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

    def _make_mapping(self, rule: LevelRule, ctx: _Ctx, va_lin: int, index: int, table_pa: int,
                      raw: int, rsvd: int, count: int, and_ad: int, pa: Optional[int],
                      notes: Tuple[str, ...] = ()) -> Mapping:
        owned = ctx.xen_owned
        if self.domain is not None and not owned:
            # A leaf can be Xen's too (the compat M2P superpages in a PV32 guest's top L2).
            label = self.domain.xen_area(rule.name, index, va_lin, rule.page_size)
            if label:
                owned, notes = True, (label,) + notes
        ctx_key = (ctx.user, ctx.write, ctx.nx, bool(ctx.rsvd), owned)
        eff, flags_by_ad, pkey, xen_bits, mt, verdicts, dis = self._attrs(rule, raw, ctx_key,
                                                                          rsvd)
        rs = ctx.rsvd
        if rsvd:
            rs = rs + (f"{rule.name}[{index}]: {bits_text(rsvd)} reserved",)
        if pa is None:
            notes = notes + ("frame not in source",)
        disallowed = ctx.disallowed
        if dis:  # rare: skip building an empty tuple per record
            disallowed = disallowed + tuple(f"{rule.name}[{index}]: bit {b} ({n})" for b, n in dis)
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

    def _stop_record(self, kind: str, rule: LevelRule, ctx: _Ctx, va_lin: int, index: int,
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
        ctx = _Ctx(True, True, False, (), (), ())
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
            if self.domain is not None and raw & 1 and not ctx.xen_owned:
                leaf_now = rule.is_leaf(raw)
                bits = bits + tuple((name, 1, meaning) for name, meaning in
                                    self.domain.explain_bits(raw, rule.name, leaf_now))
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
                                       raw & _A_D, pa)
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
                      phys: bool = False) -> Iterator[Mapping]:
        """Yield mappings in VA order over ``[start, end)`` (canonical VAs; end exclusive).

        :param coalesce: merge VA-contiguous leaves of one level with equal attributes (rights,
            key, Xen bits, memory type, software bits); A and D are kept only if set on every page.
        :param phys: also require PA contiguity when merging.
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
        t0 = time.monotonic()
        self._deadline = t0 + self.time_budget
        root_ctx = _Ctx(True, True, False, (), (), ())
        pending = None
        try:
            if self._root_error:
                raise SourceError(self.source.name, self._root_error)
            top = self._table(self.root, 0)
            if isinstance(top, XenpteError):
                raise SourceError(self.source.name,
                                  f"the top-level table (CR3 {self.cpu.cr3:#x}) cannot be read: "
                                  f"{getattr(top, 'detail', top)}")
            for rec in self._walk_table(self.root, 0, 0, root_ctx, lo, hi, coalesce, phys):
                if pending is None:
                    pending = rec
                    continue
                merged = _merge(pending, rec, phys) if coalesce else None
                if merged is not None:
                    pending = merged
                else:
                    yield self._finish(pending)
                    pending = rec
        except _BudgetHit:
            pass
        finally:
            self.stats.seconds = time.monotonic() - t0
        if pending is not None:
            yield self._finish(pending)

    def _finish(self, rec) -> Mapping:
        if rec[0] == "rec":
            return rec[1]
        _, rule, ctx, _ck, va, index, table_pa, raw, rsvd, count, and_ad, pa = rec
        return self._make_mapping(rule, ctx, va, index, table_pa, raw, rsvd, count, and_ad, pa)

    def _check_budget(self, va_lin: int) -> None:
        if self.stats.entries > self.entry_budget:
            self.stats.budget_hit = (f"entry budget of {self.entry_budget} entries reached near "
                                     f"VA {self.canonical(va_lin):#x}")
            raise _BudgetHit()
        if time.monotonic() > self._deadline:
            self.stats.budget_hit = (f"time budget of {self.time_budget:g} s reached near "
                                     f"VA {self.canonical(va_lin):#x}")
            raise _BudgetHit()

    def _walk_table(self, table_pa: int, depth: int, base: int, ctx: _Ctx, lo: int, hi: int,
                    coalesce: bool, phys: bool):
        rule = self.rules[depth]
        dt = self._table(table_pa, depth)
        shift = rule.shift
        first = max(0, (lo - base) >> shift)
        last = min((1 << rule.index_bits) - 1, (hi - 1 - base) >> shift)
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
                leaf_pos, other_pos = sel, ()
            else:
                kinds = dt.kind[sel]
                leaf_pos = sel[kinds == KIND_LEAF]
                other_pos = sel[kinds != KIND_LEAF].tolist()
        else:
            sel = [i for i, x in enumerate(dt.index) if first <= x <= last]
            self.stats.entries += len(sel)
            leaf_pos = [i for i in sel if dt.kind[i] == KIND_LEAF]
            other_pos = [i for i in sel if dt.kind[i] != KIND_LEAF]
        # Emit leaves and subtrees interleaved in VA order: split leaf positions at subtrees.
        li = 0
        n_leaf = len(leaf_pos)
        for pos in other_pos:
            index = int(dt.index[pos])
            if li < n_leaf:
                cut = _count_below(leaf_pos, pos, li)
                if cut > li:
                    yield from self._leaf_runs(rule, dt, leaf_pos[li:cut], table_pa, base, ctx,
                                               coalesce, phys)
                    li = cut
            raw = int(dt.raw[pos])
            rsvd = int(dt.rsvd[pos])
            va = base + (index << shift)
            if dt.kind[pos] == KIND_RSVD_STOP:
                yield ("rec", self._stop_record("rsvd", rule, ctx, va, index, table_pa, raw, rsvd,
                                                f"PS=1 in a {rule.name} entry: #PF with RSVD"))
                continue
            child_ctx = self._child_ctx(ctx, rule, index, table_pa, raw, rsvd, va)
            child_pa = self._frame_to_pa(rule.frame(raw, False))
            if child_pa is None:
                yield ("rec", self._stop_record(
                    "not-in-dump", rule, ctx, va, index, table_pa, raw, rsvd,
                    f"next table (frame {rule.frame(raw, False) >> 12:#x}) not in source"))
                continue
            child = self._table(child_pa, depth + 1)
            if isinstance(child, XenpteError):
                yield ("rec", self._stop_record("unreadable", rule, ctx, va, index, table_pa, raw,
                                                rsvd, f"next table unreadable: {child}"))
                continue
            yield from self._walk_table(child_pa, depth + 1, va, child_ctx, lo, hi, coalesce,
                                        phys)
        if li < n_leaf:
            yield from self._leaf_runs(rule, dt, leaf_pos[li:], table_pa, base, ctx, coalesce,
                                       phys)

    def _leaf_runs(self, rule: LevelRule, dt: DecodedTable, pos, table_pa: int, base: int,
                   ctx: _Ctx, coalesce: bool, phys: bool):
        """Yield runs of leaves of one table: ``("run", ...)`` tuples merged by the caller."""
        n = len(pos)
        self.stats.leaves += n
        ctx_key = (ctx.user, ctx.write, ctx.nx, bool(ctx.rsvd), ctx.xen_owned)
        page = rule.page_size
        # What must be equal for two leaves to merge: all but the frame and A/D.
        keymask = ~(rule.leaf_frame_mask | _A_D | _pse36_mask(rule)) & 0xFFFFFFFFFFFFFFFF
        translate = self._translate is not None
        if np is not None:
            if n == len(dt.index):  # every present entry (pos is sorted and distinct)
                idx, raws, rsv = dt.index, dt.raw, dt.rsvd
            else:
                idx, raws, rsv = dt.index[pos], dt.raw[pos], dt.rsvd[pos]
            starts = None
            if coalesce and n > 1:
                # brk[i]: leaf i starts a run (differs from leaf i-1, or is not next to it).
                brk = np.empty(n, dtype=bool)
                brk[0] = True
                keys = raws & np.uint64(keymask)
                np.not_equal(keys[1:], keys[:-1], out=brk[1:])
                brk[1:] |= rsv[1:] != rsv[:-1]
                brk[1:] |= idx[1:] != idx[:-1] + 1
                if phys and not translate:
                    frames = raws & np.uint64(rule.leaf_frame_mask)
                    brk[1:] |= frames[1:] != frames[:-1] + np.uint64(page)
                starts = np.flatnonzero(brk)
                ad = np.bitwise_and.reduceat(raws & np.uint64(_A_D), starts).tolist()
                starts_l = starts.tolist()
            else:
                starts_l = list(range(n))
                ad = (raws & np.uint64(_A_D)).tolist()
            if translate:
                idx_l, raw_l, rsv_l = idx.tolist(), raws.tolist(), rsv.tolist()
            else:
                # Only each run's first entry is needed: convert those, not the whole table.
                sel = slice(None) if starts is None else starts
                heads = zip(idx[sel].tolist(), raws[sel].tolist(), rsv[sel].tolist())
        else:
            idx_l = [dt.index[p] for p in pos]
            raw_l = [dt.raw[p] for p in pos]
            rsv_l = [dt.rsvd[p] for p in pos]
            starts_l, ad = [], []
            prev = None
            for i in range(n):
                r = raw_l[i]
                k = (r & keymask, rsv_l[i])
                cont = (coalesce and prev is not None and k == prev[0]
                        and idx_l[i] == idx_l[i - 1] + 1
                        and (not phys or translate
                             or rule.frame(r, True) == rule.frame(raw_l[i - 1], True) + page))
                if cont:
                    ad[-1] &= r & _A_D
                else:
                    starts_l.append(i)
                    ad.append(r & _A_D)
                prev = (k,)
            heads = ((idx_l[s], raw_l[s], rsv_l[s]) for s in starts_l)
        if not translate:
            yield from self._runs(rule, ctx, ctx_key, base, table_pa, heads, starts_l, n, ad)
            return
        # PV: frames are MFNs; a run stays one record only where PFNs are contiguous too (checked
        # lazily, per page, by the merge step).
        for s, e in zip(starts_l, starts_l[1:] + [n]):
            for k in range(s, e):
                r = raw_l[k]
                yield ("run", rule, ctx, ctx_key, base + (idx_l[k] << rule.shift), idx_l[k],
                       table_pa, r, rsv_l[k], 1, r & _A_D, self._frame_to_pa(rule.frame(r, True)))

    def _runs(self, rule: LevelRule, ctx: _Ctx, ctx_key: tuple, base: int, table_pa: int, heads,
              starts: List[int], n: int, ad: List[int]):
        """Yield one ``("run", ...)`` tuple per run from its first entry's (index, raw, rsvd)."""
        ends = starts[1:] + [n]
        for (index, raw, rsvd), s, e, and_ad in zip(heads, starts, ends, ad):
            yield ("run", rule, ctx, ctx_key, base + (index << rule.shift), index, table_pa, raw,
                   rsvd, e - s, and_ad, self._frame_to_pa(rule.frame(raw, True)))


def _disallowed_texts(domain, rule: LevelRule, index: int, raw: int) -> Tuple[str, ...]:
    return tuple(f"{rule.name}[{index}]: bit {bit} ({name})"
                 for bit, name in domain.disallowed(raw, rule.name))


def _pse36_mask(rule: LevelRule) -> int:
    return ((1 << rule.pse36_bits) - 1) << 13 if rule.pse36_bits else 0


def _count_below(leaf_pos, pos, start: int) -> int:
    """Number of leading leaf positions (from ``start``) that come before ``pos``."""
    if np is not None and hasattr(leaf_pos, "searchsorted"):
        return int(leaf_pos.searchsorted(pos))
    i = start
    while i < len(leaf_pos) and leaf_pos[i] < pos:
        i += 1
    return i


def _merge(a, b, phys: bool):
    """Merge run ``b`` into pending run ``a`` when contiguous with equal attributes, else None."""
    if a[0] != "run" or b[0] != "run":
        return None
    _, rule, ctx, ctx_key, va, index, table_pa, raw, rsvd, count, and_ad, pa = a
    _, rule2, _c2, ctx_key2, va2, _i2, _t2, raw2, rsvd2, count2, and_ad2, pa2 = b
    if rule2 is not rule or ctx_key2 != ctx_key or bool(rsvd2) != bool(rsvd):
        return None
    if va2 != va + count * rule.page_size:
        return None
    mask = ~(rule.leaf_frame_mask | _A_D | _pse36_mask(rule))
    if ((raw2 & mask) != (raw & mask) or ctx.notes != _c2.notes or ctx.rsvd != _c2.rsvd
            or ctx.disallowed != _c2.disallowed):
        return None
    if (pa is None) != (pa2 is None):
        return None
    if phys and pa is not None and pa2 != pa + count * rule.page_size:
        return None
    if rsvd2 != rsvd:
        return None
    return ("run", rule, ctx, ctx_key, va, index, table_pa, raw, rsvd, count + count2,
            and_ad & and_ad2, pa)

