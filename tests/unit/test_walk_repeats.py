"""Repeat records and subtree replay (issue 15), honest PA ranges (issue 14), walk bounds (issue 19).

A subtree reached again at VAs in arithmetic progression is one record with ``repeat`` copies;
nothing is dropped: expanding every record's copies gives exactly the records of a walk without
repeats, and that walk (copies replayed from one walk of the subtree) gives exactly the records
of a walk that walks every copy.
"""

import random
import struct
from pathlib import Path

import pytest

import gdb_xenpte.decode as decode_mod
import gdb_xenpte.walk as walk_mod
from gdb_xenpte import render
from gdb_xenpte.arch import CR4, EFER
from gdb_xenpte.cpu import CpuState
from gdb_xenpte.replay import SubtreeMemo
from gdb_xenpte.sources.memory import MemorySource
from gdb_xenpte.verdicts import Judge
from gdb_xenpte.walk import Walker

P, RW, US, A, D, PS, G = 1, 2, 4, 0x20, 0x40, 0x80, 0x100
NX = 1 << 63
LM = EFER.LME | EFER.LMA | EFER.NXE
SAMPLE = Path(__file__).resolve().parents[2] / "gdb_xenpte" / "data" / "sample-xen-dom0.elf"


def _page(entries):
    buf = bytearray(4096)
    for i, raw in entries:
        struct.pack_into("<Q", buf, 8 * i, raw)
    return bytes(buf)


def _walker(pages, cr3, **kw):
    cpu = CpuState(cr3=cr3, cr4=CR4.PAE | CR4.SMEP | CR4.SMAP, efer=LM, ac=0)
    return Walker(MemorySource(pages), cpu, judge=Judge(cpu.cr0, cpu.cr4, 0, ac=0), **kw)


def _fields(m):
    """Everything a record says except its path (copies share copy 0's)."""
    rec = render.mapping_record(m)
    rec.pop("entries")
    rec.pop("repeat", None)
    return rec


def _expanded(records):
    """Every copy of every record, as plain records in VA order."""
    out = [(c.va, _fields(c)) for m in records for c in m.copies()]
    out.sort(key=lambda x: x[0])
    return [f for _, f in out]


def _json(records):
    return [render.mapping_json(m) for m in records]


def espfix_like(copies_per_pt=32, pds=4):
    """Linux's espfix shape: one page mapped every 16th PT entry (every 64 KiB); the PT reached
    from all 512 entries of a PD, the PD from ``pds`` PDPT entries, under PML4[510]."""
    pml4, pdpt, pd, pt, stack = 0x100000, 0x101000, 0x102000, 0x103000, 0x200000
    pages = {
        pt: _page([(3 + 16 * k, stack | P | A | NX) for k in range(copies_per_pt)]),
        pd: _page([(i, pt | P | RW | A) for i in range(512)]),
        pdpt: _page([(328 + i, pd | P | RW | A) for i in range(pds)]),
        pml4: _page([(0, 0x104000 | P | RW | US | A), (510, pdpt | P | RW | A)]),
        0x104000: _page([(0, 0x105000 | P | RW | US | A)]),
        0x105000: _page([(0, 0x106000 | P | RW | US | A)]),
        0x106000: _page([(i, (0x300000 + 0x1000 * i) | P | RW | US | A) for i in range(8)]),
    }
    return pages, pml4


def test_espfix_area_is_one_record_that_expands_to_every_copy():
    pages, cr3 = espfix_like()
    w = _walker(pages, cr3)
    recs = list(w.iter_mappings(repeats=True))
    rep = [m for m in recs if m.repeat > 1]
    assert len(rep) == 1
    m = rep[0]
    assert (m.va, m.pa, m.count, m.repeat, m.stride) == (
        0xFFFFFF0000000000 + (328 << 30) + 0x3000, 0x200000, 1, 32 * 512 * 4, 0x10000)
    # entries describe copy 0: PDPT[328], PD[0], PT[3].
    assert [(e.level, e.index) for e in m.entries] == [("pml4", 510), ("pdpt", 328), ("pd", 0),
                                                       ("pt", 3)]
    assert w.stats.leaves == 8 + 32 * 512 * 4  # every copy counted
    plain = list(w.iter_mappings())
    assert len(plain) == 1 + 32 * 512 * 4
    assert _expanded(recs) == _expanded(plain)
    rec = render.mapping_record(m)
    assert rec["repeat"] == {"count": 65536, "stride": 65536}
    assert render.dumps(rec) == render.mapping_json(m)
    row = next(ln for ln in render.mapping_table(recs) if ln.startswith("0xffffff52"))
    assert "4K x65536 every 64K (Linux espfix area)" in row
    counter = render.RecordCounter()
    for r in recs:
        counter.add(r)
    assert (counter.mappings, counter.pages) == (2, 8 + 65536)


def test_replayed_copies_are_what_walking_each_copy_gives(monkeypatch):
    """Replay (one walk of a subtree, shifted) against walking every copy (replay disabled)."""
    _assert_replay_is_walking_each_copy(*espfix_like(copies_per_pt=5, pds=3), monkeypatch)


def _assert_replay_is_walking_each_copy(pages, cr3, monkeypatch):
    for kw in ({}, {"coalesce": False}, {"phys": True}):
        replayed = _json(_walker(pages, cr3).iter_mappings(**kw))
        monkeypatch.setattr(walk_mod, "_REPLAY_MAX", 0)
        walked = _json(_walker(pages, cr3).iter_mappings(**kw))
        monkeypatch.undo()
        assert replayed == walked, kw


def random_aliases(seed):
    """PTs with random leaves (equal flags often, frames contiguous or not, one frame repeated at
    a stride), PD entries pointing at them in runs of consecutive entries, PDPT entries pointing
    at PDs in runs too: repeats, copies that merge into each other and into their neighbours."""
    rnd = random.Random(seed)
    pages = {}
    nxt = [0x1000000]

    def alloc(entries):
        addr = nxt[0]
        nxt[0] += 0x1000
        pages[addr] = _page(entries)
        return addr

    flags = [P | RW | A, P | RW | A | D, P | A | NX, P | RW | US | A]
    pts = []
    for _ in range(4):
        kind = rnd.randrange(4)
        f = rnd.choice(flags)
        if kind == 0:  # full, contiguous frames: copies merge into each other
            ents = [(i, (0x40000000 + i * 4096) | f) for i in range(512)]
        elif kind == 1:  # one frame every `step` entries
            step = rnd.choice([2, 16, 64])
            ents = [(i, 0x5000000 | f) for i in range(rnd.randrange(step), 512, step)]
        elif kind == 2:  # random sparse leaves, scattered frames
            ents = [(i, (rnd.randrange(1 << 20) << 12) | rnd.choice(flags))
                    for i in sorted(rnd.sample(range(512), rnd.randrange(1, 20)))]
        else:  # a tail that continues into the next copy's head
            ents = [(i, (0x6000000 + i * 4096) | f) for i in list(range(3)) + list(range(500, 512))]
        pts.append(alloc(ents))
    pds = []
    for _ in range(3):
        ents, i = [], rnd.randrange(3)
        while i < 24:
            n = rnd.choice([1, 2, 5, 12])
            t = rnd.choice(pts)
            up = rnd.choice([P | RW | A, P | RW | US | A, P | RW])
            for k in range(i, min(24, i + n)):
                ents.append((k, t | up | (A if rnd.random() < 0.2 else 0)))
            i += n + rnd.choice([0, 0, 1, 7])
        if rnd.random() < 0.3:  # a 2 MiB page among them
            ents = [e for e in ents if e[0] != 10] + [(10, 0x80000000 | P | RW | PS | A)]
        pds.append(alloc(sorted(ents)))
    pdpt = alloc([(i, rnd.choice(pds) | P | RW | US | A) for i in range(rnd.randrange(1, 4))]
                 + [(10 + i, pds[0] | P | RW | US | A) for i in range(rnd.randrange(3))])
    pml4 = alloc([(0, pdpt | P | RW | US | A), (1, pdpt | P | RW | US | A),
                  (300, pdpt | P | RW | A)])
    return pages, pml4


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("phys", [False, True])
def test_random_aliases_expand_to_the_plain_walk(seed, phys):
    pages, cr3 = random_aliases(seed)
    w = _walker(pages, cr3)
    plain = list(w.iter_mappings(phys=phys))
    plain_leaves = w.stats.leaves
    recs = list(w.iter_mappings(phys=phys, repeats=True))
    assert w.stats.leaves == plain_leaves
    assert _expanded(recs) == _expanded(plain)
    assert len(recs) <= len(plain)
    # Records come in VA order of their first copy.
    assert [m.va for m in recs] == sorted(m.va for m in recs)


@pytest.mark.parametrize("seed", range(4))
def test_random_aliases_replay_matches_walking_each_copy(seed, monkeypatch):
    _assert_replay_is_walking_each_copy(*random_aliases(seed), monkeypatch)


def test_pure_python_decoder_gives_the_same_repeats(monkeypatch):
    pages, cr3 = random_aliases(3)
    want = _json(_walker(pages, cr3).iter_mappings(repeats=True))
    monkeypatch.setattr(decode_mod, "np", None)
    monkeypatch.setattr(walk_mod, "np", None)
    assert _json(_walker(pages, cr3).iter_mappings(repeats=True)) == want


@pytest.mark.parametrize("seed", range(4))
def test_pa_range_only_when_frames_are_contiguous(seed):
    """Issue 14: a coalesced run says whether its frames are contiguous, page by page."""
    pages, cr3 = random_aliases(seed)
    w = _walker(pages, cr3)
    per_page = {m.va: m.pa for m in w.iter_mappings(coalesce=False)}
    recs = list(w.iter_mappings())
    for m in recs:
        if m.kind != "page":
            continue
        truth = all(per_page[m.va + i * m.page_size] == m.pa + i * m.page_size
                    for i in range(m.count))
        assert m.pa_contiguous == truth, hex(m.va)
        cell = render.mapping_table([m])[2].split()[1]
        if m.count > 1:
            assert cell == (f"{m.pa:#x}-{m.pa + m.size - 1:#x}" if truth else f"{m.pa:#x}")
        if not truth:
            assert render.mapping_record(m)["pa_contiguous"] is False


def test_sample_walk_expands_to_the_plain_walk():
    from gdb_xenpte.session import Options, prepare
    from gdb_xenpte.sources.qemu_elf import QemuElfSource
    with QemuElfSource(str(SAMPLE)) as source:
        w = prepare(source, Options(domain="pv64", xen="4.17")).walker()
        plain = list(w.iter_mappings())
        recs = list(w.iter_mappings(repeats=True))
    assert _expanded(recs) == _expanded(plain)
    espfix = [m for m in recs if m.repeat > 1 and m.entries[0].index == 510]
    assert len(espfix) == 1 and espfix[0].repeat * espfix[0].count == sum(
        m.count for m in plain if m.entries[0].index == 510 and m.pa == espfix[0].pa)
    assert len(recs) * 100 < len(plain)


def test_filter_refuses_runs_before_they_become_records():
    """Issue 19: a filter that matches little costs little per leaf; it is asked per table and
    distinct leaf bits, and what it refuses is never built."""
    pages, cr3 = espfix_like()
    w = _walker(pages, cr3)
    asked = []

    def keep(m):
        asked.append(m)
        return m.effective.user

    every = list(w.iter_mappings(coalesce=False))
    kept = list(w.iter_mappings(coalesce=False, keep=keep))
    assert _json(kept) == _json([m for m in every if m.effective.user])
    assert len(kept) == 8 and len(asked) * 16 < len(every)


def test_memo_shares_subtrees_across_walks_of_one_source():
    """--vcpu all: every CR3 has its own top table over one kernel half."""
    pages, cr3 = espfix_like(copies_per_pt=4, pds=2)
    top = pages[cr3]
    cr3s = []
    for p in range(4):
        addr = 0x900000 + p * 0x1000
        pages[addr] = bytes(top)
        cr3s.append(addr)
    src = MemorySource(pages)
    cpu = lambda c: CpuState(cr3=c, cr4=CR4.PAE, efer=LM)
    want = [_json(Walker(src, cpu(c)).iter_mappings(repeats=True)) for c in cr3s]
    memo = SubtreeMemo()
    walkers = [Walker(src, cpu(c), memo=memo) for c in cr3s]
    got = [_json(w.iter_mappings(repeats=True)) for w in walkers]
    assert got == want
    assert memo.hits >= 2 * (len(cr3s) - 1)
    assert sum(w.stats.tables_read for w in walkers[1:]) == len(cr3s) - 1  # own top table only
    assert walkers[-1].stats.leaves == walkers[0].stats.leaves


def test_memo_shares_the_level_below_a_subtree_too_big_to_hold():
    """A kernel half bigger than a remembered subtree may be (a 16 GiB direct map: 8,192 PT
    runs under one PDPT) is still shared, one level down: its PDs are remembered each."""
    from builder import Builder
    b = Builder("4level")
    base = 0xFFFF888000000000
    for pd in range(3):  # three PDs, each with two PTs of 4 KiB pages of their own rights
        for pt in range(2):
            va = base + (pd << 30) + (pt << 21)
            for k in range(4):
                b.map(va + k * 0x2000, 0x40000000 + (pd << 24) + (pt << 20) + k * 0x1000,
                      flags=P | RW | (US if k % 2 else 0))
    pages = b.image()
    cr3s = [b.root]
    for p in range(1, 3):  # two more top tables over the same kernel half
        pages[0x900000 + p * 0x1000] = pages[b.root]
        cr3s.append(0x900000 + p * 0x1000)
    src = MemorySource(pages)
    cpu = lambda c: CpuState(cr3=c, cr4=CR4.PAE, efer=LM)
    want = [_json(Walker(src, cpu(c)).iter_mappings()) for c in cr3s]
    memo = SubtreeMemo(max_items=20)  # the PDPT's subtree (24 runs) is too big, a PD's (8) not
    walkers = [Walker(src, cpu(c), memo=memo) for c in cr3s]
    assert [_json(w.iter_mappings()) for w in walkers] == want
    # Later walks read their top table and the PDPT; the three PDs' subtrees are replayed.
    assert [w.stats.tables_read for w in walkers[1:]] == [2, 2]
    assert [w.stats.tables_shared for w in walkers[1:]] == [9, 9]  # 3 PDs + 6 PTs each
    assert memo.hits == 6


def test_no_coalesce_over_a_self_map_of_every_entry_stops_at_the_budget():
    """Issue 19: one page whose 512 entries all point at itself (512**4 aliases)."""
    pages = {0x100000: _page([(i, 0x100000 | P | RW) for i in range(512)])}
    w = Walker(MemorySource(pages), CpuState(cr3=0x100000, cr4=CR4.PAE, efer=LM),
               entry_budget=100_000)
    n = sum(1 for _ in w.iter_mappings(coalesce=False))
    assert w.stats.budget_hit.startswith("entry budget of 100000 entries reached near VA 0x")
    assert 0 < n <= 100_000 + 512
    # Coalesced, the same space is one run of 512**4 pages, within the same budget.
    recs = list(w.iter_mappings())
    assert w.stats.budget_hit is None and [(m.va, m.count) for m in recs] == [(0, 512 ** 4)]
    assert not recs[0].pa_contiguous  # one frame 512**4 times


def test_copies_that_continue_their_neighbours_are_peeled_off():
    """A block's first copy continuing the run before it (and its last copy continuing into the
    run after it) merges with that run, as in the plain walk; the other copies stay one record."""
    f = P | RW | A
    pml4, pdpt, pd, full, ends, heads = 0x100000, 0x101000, 0x102000, 0x103000, 0x104000, 0x105000
    pages = {
        full: _page([(i, (0x400000 + i * 4096) | f) for i in range(512)]),
        heads: _page([(0, 0x900000 | f), (1, 0x901000 | f)]),  # a run at the start of each copy
        ends: _page([(510, 0x800000 | f), (511, 0x801000 | f)]),  # a run at the end of each copy
        # PD: full, heads x3 (copy 0 continues `full`), ends x3 (last copy runs into `full`),
        # full.
        pd: _page([(0, full | f)] + [(i, heads | f) for i in (1, 2, 3)]
                  + [(i, ends | f) for i in (4, 5, 6)] + [(7, full | f)]),
        pdpt: _page([(0, pd | f)]),
        pml4: _page([(0, pdpt | f)]),
    }
    w = _walker(pages, pml4)
    plain = list(w.iter_mappings())
    recs = list(w.iter_mappings(repeats=True))
    assert _expanded(recs) == _expanded(plain)
    got = [(m.va, m.count, m.repeat, m.stride) for m in recs]
    assert got == [
        (0, 514, 1, 0),                             # full + heads copy 0
        (4 << 20, 2, 2, 2 << 20),                   # heads copies 1, 2
        ((8 << 20) + (510 << 12), 2, 2, 2 << 20),   # ends copies 0, 1
        ((12 << 20) + (510 << 12), 514, 1, 0),      # ends copy 2 + full
    ]
    assert not recs[0].pa_contiguous and recs[1].pa_contiguous


def test_table_streams_rows_once_its_widths_are_known():
    """Issue 15: the first rows reach the pager while the walk goes on."""
    recs = list(_walker(*random_aliases(1)).iter_mappings(repeats=True))
    full = render.mapping_table(recs)
    whole = render.TableStream(first=len(recs) + 1)
    assert [ln for m in recs for ln in whole.add(m)] == [] and whole.finish() == full
    stream = render.TableStream(first=10)
    out = []
    for i, m in enumerate(recs):
        got = stream.add(m)
        assert len(got) == (12 if i == 9 else 0 if i < 9 else 1)  # heading + rule + 10 rows
        out += got
    out += stream.finish()
    assert out[:12] == render.mapping_table(recs[:10])
    assert out[0].split() == full[0].split()  # the rule under the headings is as wide as chunk 1's
    assert [ln.split() for ln in out[2:]] == [ln.split() for ln in full[2:]]


def _batched(it, limit=None):
    from gdb_xenpte.model import PageBatch
    out, c = [], render.RecordCounter()
    for m in it:
        left = None if limit is None else limit - c.mappings
        if left == 0:
            break
        if isinstance(m, PageBatch):
            out += render.batch_lines(m, left)
            c.add_batch(m, left)
        else:
            out.append(render.mapping_json(m))
            c.add(m)
    return out, (c.mappings, c.pages, c.bytes, c.faulting)


@pytest.mark.parametrize("seed", range(4))
def test_page_batches_encode_the_per_page_records_byte_for_byte(seed):
    """Issue 15: per-page JSON made in bulk (one template per run of leaves) is the same bytes
    and the same counts as one record at a time, also cut by a limit."""
    pages, cr3 = random_aliases(seed)
    one_by_one = _batched(_walker(pages, cr3).iter_mappings(coalesce=False))
    assert _batched(_walker(pages, cr3).iter_mappings(coalesce=False, batches=True)) == one_by_one
    cut = _batched(_walker(pages, cr3).iter_mappings(coalesce=False, batches=True), limit=777)
    assert cut[0] == one_by_one[0][:777] and cut[1][0] == min(777, one_by_one[1][0])
