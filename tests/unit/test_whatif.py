"""What-if scenarios on builder-made PV32/PV64/HVM tables with known answers (issue 8).

Expected answers come from the Xen facts (xen-pte-abi.md §1.3-1.5, §3, §4.3) and SDM §4.6, e.g. a
ring-1 kernel under SMAP faults on every user page it reads without AC.
"""

import pytest

from builder import BIT52, BIT62, NX, P, RW, US, A, Builder
from gdb_xenpte.errors import OptionError
from gdb_xenpte.session import Options, prepare
from gdb_xenpte.whatif import parse_scenario, what_if
from test_seed_scenarios import pv32_guest, pv64_guest, source


def run(b, domain, scenario, **opts):
    base = Options(**opts)
    s = prepare(source(b, domain, 0x660 if domain != "hvm" else 0x20, guest_view=domain != "hvm"),
                base)
    return what_if(s, scenario, base)


def test_pv32_smap_scenario_finds_the_fault_loop_candidates():
    r = run(pv32_guest(), "pv32", "smap", xen="4.17", ac=0)
    assert [(c.va, c.count) for c in r.broken] == [(0x08048000, 1)]
    (c,) = r.changes
    assert c.before["verdicts"]["kernel_read"] == "ok"
    assert c.after["verdicts"]["kernel_read"] == "fault:SMAP"
    assert r.headline().startswith("smap: this change breaks 1 page in 1 range; first: "
                                   "0x8048000 (breaks kernel_read (ok -> fault:SMAP)")


def test_pv32_under_xen_4_6_breaks_kernel_access_to_user_pages():
    r = run(pv32_guest(), "pv32", "xen=4.6", xen="4.17", ac=0)
    (c,) = r.broken
    assert c.after["verdicts"]["kernel_exec"] == "fault:SMEP"
    r = run(pv32_guest(), "pv32", "xen=4.17", xen="4.6", ac=0)  # and the other way round
    assert r.fixed and not r.broken


def test_pv64_smap_changes_nothing():
    """The PV64 kernel runs at CPL3: SMAP cannot reach it — the 'nothing changes' answer."""
    r = run(pv64_guest(), "pv64", "smap", xen="4.17", ac=0)
    assert r.changes == [] and r.headline().startswith("smap: nothing changes for this guest")
    assert any("CPL3" in n for n in r.notes)


def test_pke_on_pv64_debug_grant_mapping_key_comes_from_xen_bit_62():
    b = pv64_guest()
    b.map(0xFFFFC90000001000, 0x8000, flags=P | RW | US | A, extra=BIT62 | NX)
    r = run(b, "pv64", "pke", xen="4.17", xen_debug=True)
    (c,) = [c for c in r.changes if c.va == 0xFFFFC90000001000]
    assert c.after["key"] == 8 and c.before["key"] is None
    assert any("Xen's bit 62" in w for w in c.what)
    assert not r.broken  # PKRU unknown: all keys allowed, said in the notes
    assert any("PKRU unknown" in n for n in r.notes)


def test_pke_with_restrictive_pkru_breaks_the_kernel_of_a_pv64_guest():
    """Every PV64 page is U=1 and the kernel runs at CPL3, so under PKE its data accesses to a
    key-8 page obey PKRU.AD8."""
    b = pv64_guest()
    b.map(0xFFFFC90000001000, 0x8000, flags=P | RW | US | A, extra=BIT62 | NX)
    r = run(b, "pv64", "pke", xen="4.17", xen_debug=True, pkru=1 << 16)
    (c,) = r.broken
    assert c.after["verdicts"]["kernel_read"] == "fault:PKEY8-AD"


def test_no_guest_kernel_bit_unmarks_kernel_pages():
    r = run(pv64_guest(), "pv64", "no-guest-kernel-bit", xen="4.17")
    vas = sorted(c.va for c in r.changes)
    assert vas == [0xFFFF888000001000, 0xFFFFFFFF81000000]
    assert all("no longer Xen's: _PAGE_GUEST_KERNEL" in c.what for c in r.changes)
    assert not r.broken and any("guest that set bit 52" in n for n in r.notes)


def test_release_vs_debug():
    b = Builder("4level", upper=P | RW | US | A)
    b.map(0x1000, 0x5000, flags=P | RW | US | A, extra=BIT62)
    r = run(b, "pv64", "release", xen="4.17", xen_debug=True)
    (c,) = r.changes
    assert c.before["xen_bits"] == ["_PAGE_GNTTAB"] and c.after["xen_bits"] == []
    assert c.before["disallowed"] and not c.after["disallowed"]


def test_hvm_pke_with_pkru():
    b = Builder("4level")
    b.map(0x7000, 0x9000, flags=P | RW | US | A, pkey=5)
    b.map(0x8000, 0x9000, flags=P | RW | US | A, pkey=0)
    r = run(b, "hvm", "pke", xen="4.17", pkru=1 << 10, ac=1)
    (c,) = r.broken
    assert c.va == 0x7000 and c.after["verdicts"]["user_read"] == "fault:PKEY5-AD"


def test_unknown_scenario():
    with pytest.raises(OptionError, match="unknown what-if scenario 'la57'"):
        parse_scenario("la57")
