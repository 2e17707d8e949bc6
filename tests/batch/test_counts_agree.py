"""Issue 14: one definition of "faulting" (a fault beyond the guest's own choices: fault_class
invalid or imposed), and the same counts from the walk's summary, xen-pte-dump's summary and its
CSV for the same input.

The input has faults of both kinds: a 4-level image walked as a 32-bit PV kernel on Xen 4.6,
which runs its ring-1 kernel with Xen's SMEP/SMAP (imposed: the user pages fault for it), and as
a native kernel that chose SMEP/SMAP itself (the same faults, its own: not "faulting").
"""

import csv
import io
import json

import pytest

from batchrun import run_tool
from builder import A, NX, P, RW, US, Builder
from tests.gdb.gdbrun import run_gdb

CASES = {"imposed": "--domain pv32 --xen 4.6 --cr4 0x660", "chosen": "--cr4 0x3006a0"}


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    b = Builder("4level")
    b.map(0x400000, 0x200000, flags=P | RW | US | A)
    b.map(0x401000, 0x201000, flags=P | RW | US | A)
    b.map(0x7F0000000000, 0x400000, flags=P | RW | US | NX | A)
    b.map(0xFFFFFFFF81000000, 0x300000, flags=P | RW | A)
    # One PT reached from four consecutive PD entries: a user page every 2 MiB, one walk record
    # with "repeat" {count: 4} (issue 15) that every count must take as four copies.
    b.map(0x40000000, 0x202000, flags=P | RW | US | A)
    table, index = b.slot(0x40000000, "pd")
    for k in range(1, 4):
        b._put(table, index + k, b._get(table, index))
    img = bytearray(0x800000)
    for addr, page in b.image().items():
        img[addr:addr + 4096] = page
    path = tmp_path_factory.mktemp("counts") / "guest.raw"
    path.write_bytes(bytes(img))
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_walk_dump_and_csv_count_the_same(image, tmp_path, case):
    opts = CASES[case] + " --cr3 0x100000 --efer 0xd01 --cr0 0x80010033"
    walk = run_gdb(f"xen-pte-walk --json --raw {image}@0 {opts}").ok().json_lines()
    counts = walk[-1]["counts"]
    # (A PV32 walk keeps guest subtrees expanded: Xen's areas are labelled per VA there.)
    copies = [r["repeat"]["count"] for r in walk if "repeat" in r]
    assert copies == ([] if case == "imposed" else [4])
    faulting_records = [r for r in walk if r.get("type") == "mapping"
                        and r["fault_class"] in ("invalid", "imposed")]
    assert counts["faulting"] == len(faulting_records)
    if case == "imposed":
        assert counts["faulting"] == 6 and counts["fault_classes"]["imposed"] == 6
    else:
        assert counts["faulting"] == 0 and counts["fault_classes"]["guest"] == 3
    summary = tmp_path / "summary.json"
    res = run_tool("xen_pte_dump", "--raw", f"{image}@0", *opts.split(), "--summary-json",
                   summary, "-o", tmp_path / "walk.jsonl", "--quiet")
    assert res.returncode == 0, res.stderr
    fleet = json.loads(summary.read_text())["fleet"]
    rows = {(c["what"], c["name"]): c for c in fleet["counts"]}
    assert rows[("mappings", "all")]["records"] == counts["mappings"]
    assert rows[("mappings", "all")]["pages"] == counts["pages"]
    assert fleet["overview"]["faulting"] == counts["faulting"]
    for name, n in counts["fault_classes"].items():
        assert rows.get(("fault class", name), {"records": 0})["records"] == n, name
    res = run_tool("xen_pte_dump", "--raw", f"{image}@0", *opts.split(), "--format", "csv",
                   "-o", tmp_path / "walk.csv", "--quiet")
    assert res.returncode == 0, res.stderr
    table = list(csv.DictReader(io.StringIO((tmp_path / "walk.csv").read_text())))
    maps = [r for r in table if r.get("type", "mapping") == "mapping"]
    assert len(maps) == counts["mappings"]
    assert sum(r["fault_class"] in ("invalid", "imposed") for r in maps) == counts["faulting"]
