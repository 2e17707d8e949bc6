"""Property test: the fast walker agrees with the simple reference walker on random tables.

Random tables in every mode: a small pool of table pages whose entries point at each other
(including cycles, i.e. self-maps and shared subtrees), random flags, PS bits, software bits, XD and
reserved bits. Run with numpy and with the pure-Python decoder.
"""

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gdb_xenpte.decode as decode_mod
import gdb_xenpte.walk as walk_mod
from gdb_xenpte.arch import CR4, EFER
from gdb_xenpte.cpu import CpuState
from gdb_xenpte.sources.memory import MemorySource
from gdb_xenpte.walk import Walker
from reference_walker import MODES, leaves

POOL = 6
BASE = 0x100000


def random_image(seed: int, mode: str):
    rnd = random.Random(seed)
    esize, levels, _, _ = MODES[mode]
    pages = {}
    pool = [BASE + i * 4096 for i in range(POOL)]
    for addr in pool:
        page = bytearray(4096)
        n = 4096 // esize
        for _ in range(rnd.randint(0, 6)):
            i = rnd.randrange(4 if (mode == "pae" and addr == pool[0]) else n)
            target = rnd.choice(pool)
            flags = rnd.getrandbits(12) | 1
            if esize == 8:
                high = 0
                if rnd.random() < 0.3:
                    high |= rnd.getrandbits(11) << 52  # software bits / pkeys
                if rnd.random() < 0.3:
                    high |= 1 << 63
                if rnd.random() < 0.1:
                    high |= 1 << rnd.randrange(36, 52)  # maybe above MAXPHYADDR
                if rnd.random() < 0.1:
                    high |= 1 << rnd.randrange(13, 21)  # low reserved bits of large pages
                value = target | flags | high
            else:
                value = target | flags
                if rnd.random() < 0.2:
                    value |= rnd.getrandbits(8) << 13  # PSE-36 bits
            page[i * esize:(i + 1) * esize] = value.to_bytes(esize, "little")
        pages[addr] = bytes(page)
    return pages, pool[0]


CASES = st.tuples(st.integers(0, 2**32), st.sampled_from(sorted(MODES)),
                  st.booleans(), st.sampled_from([36, 40, 46, 52]), st.booleans())


def _compare(seed, mode, nxe, m, pse):
    pages, root = random_image(seed, mode)
    src = MemorySource(pages)
    expect = leaves(src, mode, root, cr4_pse=pse, nxe=nxe, m=m)
    cr4 = {"32bit": CR4.PSE if pse else 0, "pae": CR4.PAE, "4level": CR4.PAE,
           "5level": CR4.PAE | CR4.LA57}[mode]
    efer = (EFER.NXE if nxe else 0) | (EFER.LMA | EFER.LME if mode in ("4level", "5level") else 0)
    cpu = CpuState(cr3=root, cr4=cr4, efer=efer, maxphyaddr=m)
    w = Walker(src, cpu, entry_budget=10**7)
    got = [(x.va, x.pa, x.page_size, x.effective.user, x.effective.write, x.effective.exec,
            bool(x.rsvd)) for x in w.iter_mappings(coalesce=False) if x.kind == "page"]
    assert got == expect
    # Coalescing only merges: the leaf count is preserved.
    assert sum(x.count for x in w.iter_mappings() if x.kind == "page") == len(expect)
    # Each page is read once (PAE's 32-byte PDPT read is a table of its own).
    assert w.stats.tables_read - len(w.stats.unreadable) <= POOL + (mode == "pae")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CASES)
def test_fast_walker_matches_reference(case):
    _compare(*case)


@pytest.fixture
def no_numpy(monkeypatch):
    monkeypatch.setattr(decode_mod, "np", None)
    monkeypatch.setattr(walk_mod, "np", None)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(CASES)
def test_pure_python_walker_matches_reference(no_numpy, case):
    _compare(*case)


def _three_pts(leaf):
    """A 4-level space of one PD over three PTs whose entries ``leaf(t, i)`` gives (None: a
    hole), called in order; the pages and the root."""
    pml4, pdpt, pd = BASE, BASE + 0x1000, BASE + 0x2000
    pages = {pml4: (pdpt | 0x7).to_bytes(8, "little") + bytes(4088),
             pdpt: (pd | 0x7).to_bytes(8, "little") + bytes(4088)}
    pd_page = bytearray(4096)
    for t in range(3):
        pt = BASE + 0x3000 + t * 0x1000
        pd_page[t * 8:t * 8 + 8] = (pt | 0x7).to_bytes(8, "little")
        page = bytearray(4096)
        for i in range(512):
            value = leaf(t, i)
            if value is not None:
                page[i * 8:i * 8 + 8] = value.to_bytes(8, "little")
        pages[pt] = bytes(page)
    pages[pd] = bytes(pd_page)
    return pages, pml4


def _dense_image(seed: int):
    """A 4-level space whose PTs hold long runs of like leaves: mostly consecutive frames with
    some gaps, A/D varying, now and then a flag change or a hole (what coalescing works on)."""
    rnd = random.Random(seed)
    state = {"frame": 0, "flags": 0x3}

    def leaf(t, i):
        if i == 0:
            state["frame"], state["flags"] = rnd.randrange(0x1000, 0x9000) << 12, 0x3
        if rnd.random() < 0.03:
            return None  # a hole
        if rnd.random() < 0.03:
            state["flags"] = rnd.choice([0x3, 0x7, 0x1, 0x5]) | rnd.choice([0, 1 << 63])
        state["frame"] += 4096 if rnd.random() > 0.05 else rnd.randrange(2, 9) * 4096
        return state["frame"] | state["flags"] | rnd.choice([0, 0x20, 0x60])
    return _three_pts(leaf)


def _coalesced(pages, root, phys):
    cpu = CpuState(cr3=root, cr4=CR4.PAE, efer=EFER.NXE | EFER.LMA | EFER.LME, maxphyaddr=46)
    w = Walker(MemorySource(pages), cpu)
    return [(x.va, x.pa, x.size, x.count, x.pa_contiguous, sorted(x.flags), x.effective.rwx())
            for x in w.iter_mappings(phys=phys)]


@pytest.mark.parametrize("phys", [False, True], ids=["va", "phys"])
@pytest.mark.parametrize("seed", range(12))
def test_pure_python_coalescing_equals_numpys(monkeypatch, seed, phys):
    """The pure-Python decoder coalesces exactly as the numpy one: the same runs, the same
    A/D kept, the same scattered-frame verdicts, with and without --phys."""
    pages, root = _dense_image(seed)
    fast = _coalesced(pages, root, phys)
    monkeypatch.setattr(decode_mod, "np", None)
    monkeypatch.setattr(walk_mod, "np", None)
    assert _coalesced(pages, root, phys) == fast
    assert len(fast) > 3 and any(not c for *_r, c, _f, _e in fast) != phys


def _full_pts():
    """Three full PTs: like leaves on contiguous frames (A/D mixed), the same with one frame out
    of step (scattered), and one flag change at entry 100 (two runs): a direct map's shapes."""
    def leaf(t, i):
        frame = 0x1000000 * (t + 1) + i * 4096 + (0x8000 if t == 1 and i >= 300 else 0)
        # PT 1 read-only: no record merges across tables (coalescing does, where it can).
        return frame | (0x1 if t == 1 else 0x3) | (0x20 if i % 3 == 1 else 0x60) | (
            1 << 63 if t == 2 and i >= 100 else 0)
    return _three_pts(leaf)


@pytest.mark.parametrize("phys", [False, True], ids=["va", "phys"])
def test_full_tables_coalesce_as_the_rule_says(monkeypatch, phys):
    """The fast path for a table of like leaves gives what the rule says, numpy and pure alike:
    one record per run of equal leaves, A/D only where every page has them, pa_contiguous false
    for scattered frames (with --phys: split where the frames jump instead)."""
    pages, root = _full_pts()
    want = [(0, 0x1000000, 512, True, True),
            (512, 0x2000000, 300, True, True) if phys else (512, 0x2000000, 512, False, True),
            (1024, 0x3000000, 100, True, True), (1124, 0x3000000 + 100 * 4096, 412, True, False)]
    if phys:
        want.insert(2, (812, 0x2000000 + 300 * 4096 + 0x8000, 212, True, True))
    want = [(page * 4096, pa, count * 4096, count, contig) + (exec_,)
            for page, pa, count, contig, exec_ in want]
    for numpy_on in (True, False):
        if not numpy_on:
            monkeypatch.setattr(decode_mod, "np", None)
            monkeypatch.setattr(walk_mod, "np", None)
        got = _coalesced(pages, root, phys)
        assert [(va, pa, size, count, contig, eff[2] == "X")
                for va, pa, size, count, contig, _flags, eff in got] == want, numpy_on
        assert all("A" in flags and "D" not in flags for *_r, flags, _e in got)  # A in every page
