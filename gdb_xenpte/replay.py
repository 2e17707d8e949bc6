"""The walker's intermediate shapes: runs of leaves, repeated subtrees, and the fold that merges them.

A walk produces, in VA order, :class:`Run` items (one or more equal leaves of one table, or a
present entry the walk cannot follow) and :class:`Block` items (a subtree reached again at VAs in
arithmetic progression: its runs once, with the number of copies and the stride). :func:`fold`
merges VA-contiguous runs with equal attributes (coalescing) and decides, at each block's edges,
whether a copy must be peeled off because it merges with a neighbour; what it yields is exactly
today's coalesced output once every block is expanded (:meth:`Block.copy`).

Nothing here reads memory or judges rights: runs carry the walker's context (:class:`Ctx`), and the
walker turns them into :class:`~gdb_xenpte.model.Mapping` records at the end.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

from .decode import LevelRule
from .model import EntryRef

__all__ = ["A_D", "Block", "Ctx", "Dim", "Run", "SubtreeMemo", "fold", "fold_list", "merge", "new_run",
           "pse36_mask", "rebase", "shift"]

A_D = 0x60  # accessed and dirty: never part of what must be equal for leaves to merge


class Ctx:
    """Rights and remarks accumulated from the levels above an entry.

    :param path: the entries from the top table down to (and including) the entry that references
        the current table.
    :attr key: what a leaf's derived attributes depend on besides its own bits (rights so far,
        whether a reserved bit was seen, whether the subtree is Xen's).
    """

    __slots__ = ("user", "write", "nx", "rsvd", "path", "notes", "disallowed", "xen_owned", "key")

    def __init__(self, user: bool, write: bool, nx: bool, rsvd: Tuple[str, ...] = (),
                 path: Tuple[EntryRef, ...] = (), notes: Tuple[str, ...] = (),
                 disallowed: Tuple[str, ...] = (), xen_owned: bool = False):
        self.user, self.write, self.nx = user, write, nx
        self.rsvd, self.path, self.notes = rsvd, path, notes
        self.disallowed, self.xen_owned = disallowed, xen_owned
        self.key = (user, write, nx, bool(rsvd), xen_owned)

    def with_path(self, path: Tuple[EntryRef, ...]) -> "Ctx":
        """The same context reached through other entries."""
        return Ctx(self.user, self.write, self.nx, self.rsvd, path, self.notes, self.disallowed,
                   self.xen_owned)

    def same_but_path(self, other: "Ctx") -> bool:
        """Everything a mapping shows from the levels above is equal (the path may differ)."""
        return (self.key == other.key and self.rsvd == other.rsvd and self.notes == other.notes
                and self.disallowed == other.disallowed)


class Run(NamedTuple):
    """Leaves ``index .. index + count - 1`` of one table with equal attributes, or (``kind`` other
    than ``"page"``) one present entry the walk could not follow.

    :param kind: ``"page"``, or ``"rsvd"``/``"unreadable"``/``"not-in-dump"`` (see
        :class:`~gdb_xenpte.model.Mapping`).
    :param ctx: the context of the table holding the entries.
    :param va: linear (not yet canonical) address of the first leaf.
    :param raw: the first leaf's raw entry; ``rsvd`` its reserved bits.
    :param and_ad: the A and D bits set in every leaf of the run.
    :param pa: the first frame in the source's space (None: not in the source).
    :param why: for a non-page run, why the walk stopped there.
    :param contig: the run's frames are contiguous (coalescing without ``phys`` also merges
        pages whose frames are scattered).
    :param leaves: kind ``"pages"`` (a run of leaves to be given one record each, encoded in
        bulk): ``(indices, raws)`` of its leaves.
    :param stage2: the host p2m's rights for the run's guest frames
        (:class:`~gdb_xenpte.model.Stage2`; HVM/PVH through a host p2m), else None. Runs with
        different p2m rights do not merge.
    """

    kind: str
    rule: LevelRule
    ctx: Ctx
    va: int
    index: int
    table_pa: int
    raw: int
    rsvd: int
    count: int
    and_ad: int
    pa: Optional[int]
    why: str = ""
    contig: bool = True
    leaves: Optional[tuple] = None
    stage2: Optional[object] = None


_tuple_new = tuple.__new__


def new_run(kind, rule, ctx, va, index, table_pa, raw, rsvd, count, and_ad, pa, why="",
            contig=True, leaves=None, stage2=None):
    """``Run(...)`` without NamedTuple's Python-level ``__new__`` (made once per run)."""
    return _tuple_new(Run, (kind, rule, ctx, va, index, table_pa, raw, rsvd, count, and_ad, pa,
                            why, contig, leaves, stage2))


class Dim(NamedTuple):
    """One axis along which a block's copies differ: the entry at ``depth`` (``-1``: the leaf
    itself) has index ``index0 + digit * step`` in the table at ``table_pa``.

    :param raws: for a table entry, the raw value per digit (they may differ in the A bit);
        empty for a leaf axis (the leaves are equal).
    """

    depth: int
    level: str
    table_pa: int
    index0: int
    step: int
    raws: Tuple[int, ...]
    n: int


class Block:
    """Copies ``start .. start + n - 1`` of a subtree whose runs are ``runs`` (copy 0); copy ``k``
    lies ``k * stride`` bytes above copy 0 with the same frames, rights and verdicts.

    ``dims`` (outermost first) say how a copy's path differs, so that a copy can be expanded into
    exactly the runs a walk of it would give.
    """

    __slots__ = ("runs", "stride", "dims", "start", "n")

    def __init__(self, runs: Sequence[Run], stride: int, dims: Tuple[Dim, ...], start: int = 0,
                 n: Optional[int] = None):
        self.runs = tuple(runs)
        self.stride = stride
        self.dims = dims
        self.start = start
        total = 1
        for d in dims:
            total *= d.n
        self.n = total - start if n is None else n

    def copy(self, k: int) -> List[Run]:
        """The runs of copy ``k`` (0: this block's first)."""
        return shift(self.runs, self.start + k, self.dims, self.stride)

    def first(self) -> List[Run]:
        """The runs of this block's first copy."""
        return self.copy(0) if self.start else list(self.runs)

    def drop_first(self) -> "Block":
        """This block without its first copy."""
        return Block(self.runs, self.stride, self.dims, self.start + 1, self.n - 1)

    def drop_last(self) -> "Block":
        """This block without its last copy."""
        return Block(self.runs, self.stride, self.dims, self.start, self.n - 1)

    def expand(self) -> Iterator[Run]:
        """The runs of every copy, in VA order."""
        for k in range(self.n):
            yield from self.copy(k)

    def pages(self) -> int:
        """4 KiB-or-larger pages in one copy."""
        return sum(r.count for r in self.runs if r.kind in ("page", "pages"))


Item = Union[Run, Block]


def shift(runs: Sequence[Run], k: int, dims: Tuple[Dim, ...], stride: int) -> List[Run]:
    """The runs of copy ``k``: addresses moved by ``k * stride``, the varying entries on the path
    (and a leaf axis's index) set to copy ``k``'s."""
    if k == 0:
        return list(runs)
    digits = []
    rem = k
    for d in reversed(dims):
        rem, digit = divmod(rem, d.n)
        digits.append(digit)
    digits.reverse()
    delta = k * stride
    index_delta = 0
    paths = []  # (depth, EntryRef) to set in each run's path
    for d, digit in zip(dims, digits):
        if d.depth < 0:
            index_delta += digit * d.step
        else:
            paths.append((d.depth, EntryRef(d.level, d.index0 + digit * d.step, d.table_pa,
                                            d.raws[digit])))
    memo = {}
    out = []
    for r in runs:
        ctx = r.ctx
        if paths:
            new = memo.get(id(ctx))
            if new is None:
                path = list(ctx.path)
                for depth, ref in paths:
                    path[depth] = ref
                new = memo[id(ctx)] = ctx.with_path(tuple(path))
            ctx = new
        out.append(_tuple_new(Run, (r.kind, r.rule, ctx, r.va + delta, r.index + index_delta,
                                    r.table_pa, r.raw, r.rsvd, r.count, r.and_ad, r.pa, r.why,
                                    r.contig, r.leaves, r.stage2)))
    return out


def pse36_mask(rule: LevelRule) -> int:
    """Bits 20:13 of a 32-bit 4-MiB page that hold frame bits above 31 (PSE-36), else 0."""
    return ((1 << rule.pse36_bits) - 1) << 13 if rule.pse36_bits else 0


def merge(a: Run, b: Run, phys: bool) -> Optional[Run]:
    """``b`` merged into ``a`` when it continues ``a`` with equal attributes, else None.

    Equal: level, rights and context, the leaf's bits except frame and A/D, reserved bits; the
    merged run keeps A and D only where every page has them. With ``phys`` the frames must be
    contiguous too.
    """
    if a.kind != "page" or b.kind != "page":
        return None
    rule = a.rule
    if b.rule is not rule or a.ctx.key != b.ctx.key or a.rsvd != b.rsvd:
        return None
    count = a.count
    if b.va != a.va + count * rule.page_size:
        return None
    mask = ~(rule.leaf_frame_mask | A_D | pse36_mask(rule))
    if (b.raw & mask) != (a.raw & mask):
        return None
    ca, cb = a.ctx, b.ctx
    if ca is not cb and (ca.notes != cb.notes or ca.rsvd != cb.rsvd
                         or ca.disallowed != cb.disallowed):
        return None
    pa = a.pa
    if (pa is None) != (b.pa is None) or a.stage2 != b.stage2:
        return None
    contig = a.contig and b.contig and (pa is None or b.pa == pa + count * rule.page_size)
    if phys and not contig:
        return None
    return _tuple_new(Run, (a.kind, rule, ca, a.va, a.index, a.table_pa, a.raw, a.rsvd,
                            count + b.count, a.and_ad & b.and_ad, pa, a.why, contig, None,
                            a.stage2))


def fold_list(runs: Iterable[Run], phys: bool) -> List[Run]:
    """Runs (no blocks) merged left to right."""
    out: List[Run] = []
    for r in runs:
        if out:
            m = merge(out[-1], r, phys)
            if m is not None:
                out[-1] = m
                continue
        out.append(r)
    return out


def _last(item: Item) -> Run:
    return item if type(item) is not Block else item.copy(item.n - 1)[-1]


def _first(item: Item) -> Run:
    return item if type(item) is not Block else item.first()[0]


def fold(items: Iterable[Item], coalesce: bool, phys: bool) -> Iterator[Item]:
    """Merge runs as coalescing does and yield finished items: runs, and blocks whose copies
    merge with nothing outside them.

    Expanding every block yielded gives exactly the runs a plain left-to-right merge of the fully
    expanded input gives: merging depends only on each pair of neighbours, a block's own copies
    are known not to merge with each other, and where a block's first (last) copy merges with the
    item before (after) it, that copy is peeled off and merged as plain runs.
    """
    if not coalesce:
        for it in items:
            if type(it) is Block:
                yield from it.expand()
            else:
                yield it
        return
    pending: Optional[Item] = None
    queue: deque = deque()
    for it in items:
        if type(it) is not Block and pending is not None and type(pending) is not Block:
            m = merge(pending, it, phys)  # the common case: two runs
            if m is None:
                yield pending
                pending = it
            else:
                pending = m
            continue
        queue.append(it)
        while queue:
            x = queue.popleft()
            if pending is None:
                pending = x
                continue
            m = merge(_last(pending), _first(x), phys)
            if m is None:
                yield pending
                pending = x
                continue
            if type(pending) is Block:
                # Its last copy continues into x: peel that copy, then look at x again.
                last = pending.copy(pending.n - 1)
                rest = pending.drop_last()
                if rest.n >= 2:
                    yield rest
                else:
                    yield from rest.expand()
                yield from last[:-1]
                pending = last[-1]
                queue.appendleft(x)
                continue
            if type(x) is Block:
                # x's first copy continues the pending run: peel it into plain runs.
                head = x.first()
                rest = x.drop_first()
                tail = [rest] if rest.n >= 2 else list(rest.expand())
                queue.extendleft(reversed(head + tail))
                continue
            pending = m
    if pending is not None:
        yield pending


def rebase(items: Sequence[Item], delta: int, prefix: Tuple[EntryRef, ...]) -> List[Item]:
    """Items of a subtree walked once, as reached again ``delta`` bytes higher through the
    entries ``prefix`` (the path down to, and including, the entry referencing the subtree)."""
    keep = len(prefix)
    memo = {}

    def ctx_of(ctx: Ctx) -> Ctx:
        new = memo.get(id(ctx))
        if new is None:
            new = memo[id(ctx)] = ctx.with_path(prefix + ctx.path[keep:])
        return new

    def run_of(r: Run) -> Run:
        return r._replace(ctx=ctx_of(r.ctx), va=r.va + delta)

    out: List[Item] = []
    for it in items:
        if type(it) is Block:
            out.append(Block([run_of(r) for r in it.runs], it.stride, it.dims, it.start, it.n))
        else:
            out.append(run_of(it))
    return out


class SubtreeMemo:
    """What walks of one unchanging source learnt about its subtrees, kept across walks.

    The top table of each CR3 is the process's own, but the tables below the kernel's entries are
    shared by every process: a walk of another vCPU (``--vcpu all``) replays those subtrees'
    items (:func:`rebase`) instead of reading and walking them again. Only for sources that cannot
    change between walks (dump files): a live guest's tables can.

    Bounded: subtrees with at most ``max_items`` items each, ``max_total`` items in all.

    :attr hits: subtrees replayed from the memo; :attr tables: the tables below them.
    """

    def __init__(self, max_items: int = 4096, max_total: int = 1 << 20):
        self.max_items = max_items
        self.max_total = max_total
        self.owner: Optional[tuple] = None
        self.entries: dict = {}
        self.total = 0
        self.hits = 0
        self.tables = 0

    def bind(self, owner: tuple) -> None:
        """Use the memo for walks described by ``owner`` (source, rules, Xen view, options);
        anything learnt under another owner is dropped."""
        if owner != self.owner:
            self.owner = owner
            self.entries.clear()
            self.total = 0

    def get(self, key):
        hit = self.entries.get(key)
        if hit is not None:
            self.hits += 1
        return hit

    def put(self, key, value, items: int) -> None:
        if self.total + items > self.max_total:
            self.entries.clear()
            self.total = 0
        self.entries[key] = value
        self.total += items
