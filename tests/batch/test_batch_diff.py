"""xen-pte-diff on two walks of different dumps (written by xen-pte-dump), and on odd input."""

import json

import pytest

from batchrun import read_jsonl, run_tool
from fleet import write_fleet


@pytest.fixture(scope="module")
def walks(tmp_path_factory):
    """hvm-a.elf vCPU 0 (A) and hvm-b.kdump (B): B adds 0x40c000, drops 0x404000 and makes
    0x408000 read-only."""
    d = tmp_path_factory.mktemp("diff")
    fleet = write_fleet(d)
    a, b = d / "a.jsonl", d / "b.jsonl"
    for dump, out in ((fleet["hvm-a.elf"], a), (fleet["hvm-b.kdump"], b)):
        res = run_tool("xen_pte_dump", "--core", dump, "-o", out, "--quiet")
        assert res.returncode == 0, res.stderr
    return a, b


def test_added_removed_changed(walks):
    a, b = walks
    res = run_tool("xen_pte_diff", a, b)
    assert res.returncode == 1, res.stderr  # differences, as diff(1)
    recs = [json.loads(ln) for ln in res.stdout.splitlines()]
    changes = {(r["type"], r["va"], r["size"]) for r in recs if r["type"] != "summary"}
    assert changes == {("removed", "0x404000", 4096), ("changed", "0x408000", 4096),
                       ("added", "0x40c000", 4096)}
    changed = next(r for r in recs if r["type"] == "changed")
    assert changed["before"]["rights"] == "RWX U" and changed["after"]["rights"] == "R-X U"
    assert changed["after"]["verdicts"]["user_write"] == "fault:RO"
    assert "user_write ok -> fault:RO" in changed["what"]
    assert "hvm-a.elf vCPU 0 vs " in changed["stream"]
    assert recs[-1] == {"type": "summary", "counts": {"added": 1, "removed": 1, "changed": 1},
                        "bytes": {"added": 4096, "removed": 4096, "changed": 4096},
                        "not_compared": 0}


def test_table(walks):
    a, b = walks
    res = run_tool("xen_pte_diff", a, b, "--table")
    assert res.returncode == 1
    lines = res.stdout.splitlines()
    assert lines[0].split()[:4] == ["stream", "change", "VA", "start"]
    rows = [ln.split() for ln in lines[2:-1]]
    assert [(r[-6], r[-5]) for r in rows if r[-6] in ("added", "removed")] == [
        ("removed", "0x404000"), ("added", "0x40c000")]
    assert "rights RWX U -> R-X U" in res.stdout
    assert lines[-1] == "1 added (4096 bytes), 1 removed (4096 bytes), 1 changed (4096 bytes)"


def test_same_walk_no_difference(walks):
    a, _b = walks
    res = run_tool("xen_pte_diff", a, a, "--table")
    assert res.returncode == 0 and res.stdout.startswith("no differences.")


def test_ranges_that_do_not_line_up(tmp_path):
    """A coalesced 3-page range on one side, three single pages (one different) on the other."""
    def rec(va, size, write=True):
        return json.dumps({"type": "mapping", "va": hex(va), "size": size, "pa": "0x0",
                           "effective": {"user": True, "write": write, "exec": False},
                           "verdicts": {"user_write": "ok" if write else "fault:RO"},
                           "xen_bits": [], "pkey": None, "page_size": 4096})
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(rec(0x1000, 0x3000) + "\n")
    b.write_text("\n".join([rec(0x1000, 0x1000), rec(0x2000, 0x1000, False),
                            rec(0x3000, 0x2000)]) + "\n")
    res = run_tool("xen_pte_diff", a, b)
    recs = [json.loads(ln) for ln in res.stdout.splitlines()]
    assert [(r["type"], r["va"], r["size"]) for r in recs[:-1]] == [
        ("changed", "0x2000", 0x1000), ("added", "0x4000", 0x1000)]


def test_bad_input_is_one_line(tmp_path, walks):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "header"}\nnot json\n')
    res = run_tool("xen_pte_diff", walks[0], bad)
    assert res.returncode == 2 and res.stderr.strip().startswith(f"xen-pte-diff: {bad}:2: not JSON")
    res = run_tool("xen_pte_diff", walks[0], tmp_path / "missing.jsonl")
    assert res.returncode == 2 and "No such file" in res.stderr and "Traceback" not in res.stderr
    unordered = tmp_path / "unordered.jsonl"
    lines = [json.loads(ln) for ln in walks[0].read_text().splitlines()]
    maps = [json.dumps(r) for r in lines if r["type"] == "mapping"]
    unordered.write_text("\n".join(maps[::-1]) + "\n")
    res = run_tool("xen_pte_diff", walks[0], unordered)
    assert res.returncode == 2 and "out of VA order" in res.stderr
    assert read_jsonl(walks[0])  # untouched
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"type": "summary"}\n')
    res = run_tool("xen_pte_diff", walks[0], empty)
    assert res.returncode == 2 and "no walk in it" in res.stderr
    check = tmp_path / "check.jsonl"
    check.write_text('{"type": "header"}\n{"type": "anomaly", "category": "wx"}\n')
    res = run_tool("xen_pte_diff", walks[0], check)
    assert res.returncode == 2 and f"{check}:2: 'anomaly' record" in res.stderr


def test_walk_that_matched_nothing(walks, tmp_path):
    """A filtered walk with no mappings left: everything in A was removed."""
    a, _b = walks
    nothing = tmp_path / "nothing.jsonl"
    header = next(ln for ln in a.read_text().splitlines() if '"header"' in ln)
    nothing.write_text(header + "\n")
    res = run_tool("xen_pte_diff", a, nothing)
    recs = [json.loads(ln) for ln in res.stdout.splitlines()]
    mappings = [json.loads(ln) for ln in a.read_text().splitlines() if '"mapping"' in ln]
    assert recs[-1]["counts"] == {"added": 0, "removed": len(mappings), "changed": 0}


def test_failed_walk_is_not_compared(walks, tmp_path):
    """B's dump could not be read (an error record): not "everything removed", and exit 2."""
    a, _b = walks
    failed = tmp_path / "failed.jsonl"
    failed.write_text(json.dumps({"type": "error", "target": "x.elf", "vcpu": None,
                                  "message": "x.elf: truncated"}) + "\n")
    res = run_tool("xen_pte_diff", a, failed)
    recs = [json.loads(ln) for ln in res.stdout.splitlines()]
    assert res.returncode == 2
    assert recs[0]["type"] == "not-compared" and recs[0]["side"] == "B"
    assert recs[0]["message"] == "x.elf: truncated"
    assert recs[-1]["not_compared"] == 1 and recs[-1]["counts"]["removed"] == 0
    res = run_tool("xen_pte_diff", a, failed, "--table")
    assert "B: x.elf: truncated" in res.stdout and "1 not compared" in res.stdout


def test_fault_class_change_is_a_change(walks, tmp_path):
    """Records carrying fault_class (issue 14): the same verdicts, but a fault the guest chose in
    A and one imposed on it in B, is a change; records without the field compare as before."""
    a, _b = walks
    lines = a.read_text().splitlines()
    def with_class(cls):
        out = []
        for ln in lines:
            rec = json.loads(ln)
            if rec["type"] == "mapping":
                rec["fault_class"] = cls if rec["va"] == "0x400000" else "none"
            out.append(json.dumps(rec))
        return "\n".join(out) + "\n"
    before, after = tmp_path / "guest.jsonl", tmp_path / "imposed.jsonl"
    before.write_text(with_class("guest"))
    after.write_text(with_class("imposed"))
    res = run_tool("xen_pte_diff", before, after)
    assert res.returncode == 1, res.stderr
    (change,) = [json.loads(ln) for ln in res.stdout.splitlines()][:-1]
    assert change["type"] == "changed" and change["va"] == "0x400000"
    assert change["what"] == ["fault class guest -> imposed"]
    assert change["after"]["fault_class"] == "imposed"


def test_repeat_records_are_their_copies(walks, tmp_path):
    """A mapping with ``repeat`` {count, stride} stands for count copies at va + k*stride (the
    walk's default for a subtree reached again): it equals the same copies written out one by
    one (``--expand``), and a change in one copy is reported at that copy only."""
    a, _b = walks
    recs = [json.loads(ln) for ln in a.read_text().splitlines()]
    head, maps, tail = recs[0], [r for r in recs if r["type"] == "mapping"], recs[-1]
    base = next(r for r in maps if r["va"] == "0x7f0000000000")  # the key-5 page, alone there
    others = [r for r in maps if r is not base]
    stride = 0x100000
    low = [r for r in others if int(r["va"], 16) < 0x7f0000000000]
    high = [r for r in others if int(r["va"], 16) > 0x7f0000000000]
    copies = [dict(base, va=hex(0x7f0000000000 + k * stride)) for k in range(3)]
    expanded = low + copies + high
    repeated = low + [dict(base, repeat={"count": 3, "stride": stride})] + high

    def write(name, maps_):
        path = tmp_path / name
        path.write_text("\n".join(json.dumps(r) for r in [head, *maps_, tail]) + "\n")
        return path
    rep, exp = write("repeat.jsonl", repeated), write("expanded.jsonl", expanded)
    res = run_tool("xen_pte_diff", rep, exp)
    assert res.returncode == 0, res.stdout + res.stderr
    changed = [dict(c) for c in copies]
    changed[1] = dict(changed[1], pkey=6)
    res = run_tool("xen_pte_diff", rep, write("changed.jsonl", low + changed + high))
    assert res.returncode == 1, res.stderr
    (diff,) = [json.loads(ln) for ln in res.stdout.splitlines()][:-1]
    assert (diff["type"], diff["va"], diff["size"]) == ("changed", hex(0x7f0000100000), 4096)
    assert diff["what"] == ["pkey 5 -> 6"]
