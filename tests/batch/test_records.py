"""scripts.records without processes: the faulting rule follows the record's fault_class, and a
line that the json module cannot take (too deep) is one RecordError naming file and line."""

import pytest

from scripts.records import RecordError, Tally, parse_line


def _tally(*recs):
    t = Tally()
    for r in recs:
        t.add(r)
    return t


def test_faulting_counts_fault_class_invalid_or_imposed_only():
    smap = {"kernel_read": "fault:SMAP", "user_read": "ok"}
    recs = [{"type": "mapping", "count": n, "verdicts": smap, "fault_class": fc}
            for n, fc in ((1, "invalid"), (2, "imposed"), (4, "guest"), (8, "conditional"),
                          (16, "none"))]
    t = _tally(*recs)
    assert t.counts[("faulting", "any access")] == [2, 3]  # invalid + imposed, 1 + 2 pages
    assert {n: v for (w, n), v in t.counts.items() if w == "fault class"} == {
        "invalid": [1, 1], "imposed": [1, 2], "guest": [1, 4], "conditional": [1, 8],
        "none": [1, 16]}


def test_pf_loop_counts_imposed_kernel_smep_smap_only():
    """A guest's own SMAP on its user pages is the protection working; the #PF-loop pattern is
    a kernel access faulting under SMEP/SMAP that was imposed (or, for records from before
    fault_class, any kernel SMEP/SMAP fault)."""
    smap = {"kernel_read": "fault:SMAP[AC=0]", "kernel_exec": "fault:SMEP", "user_read": "ok"}
    nx = {"kernel_read": "ok", "kernel_exec": "fault:NX", "user_exec": "fault:SMEP?"}
    t = _tally({"type": "mapping", "count": 1, "verdicts": smap, "fault_class": "guest"},
               {"type": "mapping", "count": 2, "verdicts": smap, "fault_class": "imposed"},
               {"type": "mapping", "count": 4, "verdicts": smap},
               {"type": "mapping", "count": 8, "verdicts": nx, "fault_class": "imposed"})
    assert t.counts[("kernel SMEP/SMAP", "kernel access faults")] == [2, 6]


def test_faulting_without_fault_class_is_any_verdict_not_ok():
    t = _tally({"type": "mapping", "verdicts": {"kernel_read": "fault:SMAP"}},
               {"type": "mapping", "verdicts": {"kernel_read": "ok", "user_exec": "ok"}})
    assert t.get("faulting") == 1 and t.get("mappings") == 2


def test_deeply_nested_line_is_a_record_error():
    with pytest.raises(RecordError, match=r"^f.jsonl:3: .*nested too deeply"):
        parse_line("[" * 200_000, "f.jsonl", 3)


def test_repeat_record_counts_once_with_every_copys_pages():
    """As the walk's summary: mappings count records (a repeat record once), pages every copy."""
    t = _tally({"type": "mapping", "count": 2, "repeat": {"count": 3, "stride": 1 << 21},
                "verdicts": {"kernel_read": "fault:RO"}, "fault_class": "invalid"})
    assert t.counts[("mappings", "all")] == [1, 6]
    assert t.counts[("faulting", "any access")] == [1, 6]
