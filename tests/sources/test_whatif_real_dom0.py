"""What-if scenarios on a real Xen 4.17 PV dom0 (the bundled sample: a trimmed QEMU dump of it).

Expected answers are counted straight from the raw entries, not through the walker's records:
bit 52 is Xen's on dom0's kernel L1 entries (xen-pte-abi.md §1.5), a 64-bit PV kernel runs at CPL3
so SMEP/SMAP/PKS cannot reach it (§4.4), and this release build sets no bit 62 (§1.3).
"""

import struct

import pytest

from gdb_xenpte.gdb_load import SAMPLE
from gdb_xenpte.session import Options
from gdb_xenpte.session import prepare
from gdb_xenpte.sources.open import open_dump
from gdb_xenpte.whatif import what_if

BASE = Options(xen="4.17", domain="pv64", io_capable=True)


@pytest.fixture(scope="module")
def dom0():
    src = open_dump(SAMPLE)
    yield prepare(src, BASE)
    src.close()


def _guest_leaves_with_bit(session, bit):
    """4 KiB leaves of guest-owned L4 slots whose raw entry has ``bit``, by reading every table."""
    src, count = session.source, 0
    l4 = struct.unpack("<512Q", src.read(session.cpu.cr3 & ~0xFFF, 4096))

    def table(e):
        return struct.unpack("<512Q", src.read(e & 0x000FFFFFFFFFF000, 4096))

    for i, e4 in enumerate(l4):
        if not e4 & 1 or 256 <= i <= 271:  # Xen's own slots hold no guest entries
            continue
        for e3 in table(e4):
            if e3 & 1 and not e3 & 0x80:
                for e2 in table(e3):
                    if e2 & 1 and not e2 & 0x80:
                        count += sum(1 for e1 in table(e2) if e1 & 1 and e1 >> bit & 1)
    return count


def test_no_guest_kernel_bit_unmarks_exactly_the_bit_52_leaves(dom0):
    r = what_if(dom0, "no-guest-kernel-bit", BASE)
    assert sum(c.count for c in r.changes) == _guest_leaves_with_bit(dom0, 52) > 60000
    assert not r.broken and all("no longer Xen's: _PAGE_GUEST_KERNEL" in c.what
                                for c in r.changes)


@pytest.mark.parametrize("scenario", ["smap", "smep", "pks", "xen=4.6"])
def test_cpl3_kernel_changes_nothing(dom0, scenario):
    """SMEP/SMAP/PKS are supervisor checks and Xen 4.6's PV64 CR4 differs only in them: the
    CPL3 dom0 kernel is unaffected — the 'nothing changes' answer on a real guest."""
    r = what_if(dom0, scenario, BASE)
    assert r.changes == [], r.headline()
    assert r.pages_seen > 390000 and r.mappings_seen > 60000  # pages and mappings counted apart


def test_pke_on_real_dom0(dom0):
    """PKE would make every U=1 page (all of dom0's) subject to PKRU; with no key bits set the
    keys stay 0, so nothing changes under the all-allowed PKRU."""
    assert _guest_leaves_with_bit(dom0, 59) == _guest_leaves_with_bit(dom0, 62) == 0
    r = what_if(dom0, "pke", BASE)
    assert r.changes == [] and any("PKRU unknown" in n for n in r.notes)
    r = what_if(dom0, "pke", BASE.with_(pkru=0b11))  # key 0 access-disabled
    assert r.broken and r.broken[0].after["verdicts"]["kernel_read"] == "fault:PKEY0-AD"


def test_debug_build_on_real_dom0(dom0):
    """A debug build adds bit 62 to the L1 disallow mask; dom0 sets no bit 62: nothing changes."""
    assert what_if(dom0, "debug", BASE).changes == []
