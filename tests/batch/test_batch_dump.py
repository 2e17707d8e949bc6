"""xen-pte-dump end to end: the real script, real gdb, several test dumps at once (one corrupt).

One run over the whole fleet (``-j 2``, ``--vcpu all``, ``--summary``) feeds most tests; smaller
runs cover CSV, --check, a timeout and a gdb that crashes.
"""

import collections
import os
import re
import stat

import pytest

from batchrun import read_jsonl, run_tool, validators
from fleet import write_fleet

ACCESS = ("kernel_read", "kernel_write", "kernel_exec", "user_read", "user_write", "user_exec")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    return write_fleet(tmp_path_factory.mktemp("fleet"))


@pytest.fixture(scope="module")
def fleet_run(fleet, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "fleet.jsonl"
    directory = fleet["hvm-a.elf"].parent
    res = run_tool("xen_pte_dump", "--core", f"{directory}/*", "--vcpu", "all", "-j", "2",
                   "-o", out, "--summary")
    return res, read_jsonl(out)


def _streams(records):
    """(target basename, vcpu) -> records, in file order."""
    out = collections.OrderedDict()
    for r in records:
        out.setdefault((os.path.basename(r["target"]), r["vcpu"]), []).append(r)
    return out


def test_corrupt_dump_is_an_error_record_and_the_exit_status(fleet_run):
    res, records = fleet_run
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    errors = [r for r in records if r["type"] == "error"]
    assert len(errors) == 1
    assert os.path.basename(errors[0]["target"]) == "corrupt.elf"
    assert "corrupt.elf" in errors[0]["message"] and "truncated or corrupt" in errors[0]["message"]
    assert re.search(r"xen-pte-dump: \S+corrupt.elf: .*truncated or corrupt", res.stderr)


def test_other_dumps_complete_and_validate(fleet_run):
    _res, records = fleet_run
    walk, _check = validators()
    streams = _streams(records)
    # hvm-a: vCPUs 0 and 1 share CR3 (one stream for both), vCPU 2 has its own.
    assert set(streams) == {("corrupt.elf", None), ("hvm-a.elf", 0), ("hvm-a.elf", 2),
                            ("hvm-b.kdump", 0), ("pv64.xc", 0)}
    assert [k[0] for k in streams] == sorted(k[0] for k in streams)  # target order kept
    for key, recs in streams.items():
        if key[0] == "corrupt.elf":
            continue
        assert [r["type"] for r in recs] == ["header"] + ["mapping"] * (len(recs) - 2) \
            + ["summary"], key
        for r in recs:
            walk.validate(r)
            assert list(r)[:2] == ["target", "vcpu"]  # the tags come first
        assert recs[-1]["counts"]["mappings"] == len(recs) - 2
    assert all(r["vcpus"] == [0, 1] for r in streams[("hvm-a.elf", 0)])
    assert "vcpus" not in streams[("hvm-a.elf", 2)][0]
    headers = {k: v[0] for k, v in streams.items() if v[0]["type"] == "header"}
    assert headers[("hvm-a.elf", 0)]["cr3"] != headers[("hvm-a.elf", 2)]["cr3"]
    assert headers[("pv64.xc", 0)]["domain"] == "pv64"


def _faulting(r) -> bool:
    """The one definition of "faulting" (issue 14): fault_class invalid or imposed; records from
    before fault_class: any access that does not say ok."""
    if "fault_class" in r:
        return r["fault_class"] in ("invalid", "imposed")
    return any(v != "ok" for v in r["verdicts"].values())


def _expected(recs):
    """Counts computed straight from one stream's JSONL (independently of scripts.records)."""
    maps = [r for r in recs if r["type"] == "mapping"]
    smx = lambda r: r.get("fault_class", "imposed") == "imposed" and any(  # noqa: E731
        "SMEP" in r["verdicts"].get(k, "") or "SMAP" in r["verdicts"].get(k, "")
        for k in ACCESS[:3])
    return {
        "mappings": len(maps),
        "faulting": sum(_faulting(r) for r in maps),
        "kernel SMEP/SMAP": sum(smx(r) for r in maps),
        "W+X": sum(r["effective"]["write"] and r["effective"]["exec"] for r in maps),
        "Xen bits": sum(len(r["xen_bits"]) for r in maps),
        "pkeys": sum(r["pkey"] not in (None, 0) for r in maps),
    }


def _table(lines, start):
    """Cells of the tabulate table whose header is ``lines[start]`` (columns from its rule)."""
    cuts = [m.span() for m in re.finditer(r"-+", lines[start + 1])]
    rows = []
    for line in lines[start + 2:]:
        if not line.strip():
            break
        rows.append([line[a:b if i + 1 < len(cuts) else None].strip()
                     for i, (a, b) in enumerate(cuts)])
    return rows


def test_summary_counts_equal_counts_from_the_jsonl(fleet_run, fleet):
    res, records = fleet_run
    lines = res.stdout.splitlines()
    streams = _streams(records)
    # The fleet overview: one row per run, then the total.
    at = lines.index("== fleet")
    head = lines[at + 1].split()
    rows = _table(lines, at + 1)
    assert rows[-1][0] == "fleet total" and "1 failed" in rows[-1][2]
    cols = ["mappings", "faulting", "kernel SMEP/SMAP", "W+X", "Xen bits", "pkeys"]
    total = collections.Counter()
    for row in rows[:-1]:
        key = (os.path.basename(row[0]), None if row[1] == "-" else int(row[1].split()[0]))
        if key[0] == "corrupt.elf":
            assert row[2] == "FAILED"
            continue
        want = _expected(streams[key])
        got = dict(zip(cols, (int(row[3 + i]) for i in range(len(cols)))))
        assert got == want, key
        total.update(want)
    assert dict(zip(cols, (int(rows[-1][3 + i]) for i in range(len(cols))))) == \
        {c: total[c] for c in cols}
    assert "disallowed" in " ".join(head)
    # PV disallow-mask violations: the engine's own walk says which mapping has one.
    from gdb_xenpte.session import prepare
    from gdb_xenpte.sources.open import open_dump
    with open_dump(str(fleet["pv64.xc"])) as src:
        engine = sum(bool(m.disallowed) for m in prepare(src).walker().iter_mappings())
    pv_row = next(r for r in rows if r[0].endswith("pv64.xc"))
    assert engine == 1 and int(pv_row[3 + len(cols)]) == engine
    # Per-target tables: every verdict count equals the JSONL's.
    at = next(i for i, ln in enumerate(lines) if ln.startswith("== ") and "hvm-b.kdump" in ln)
    detail = _table(lines, at + 1)
    got = {r[1]: int(r[2]) for r in detail if r[0] == "verdict"}
    want = collections.Counter(f"{k}={v}" for r in streams[("hvm-b.kdump", 0)]
                               if r["type"] == "mapping" for k, v in r["verdicts"].items())
    assert got == dict(want)


def test_csv(fleet, tmp_path):
    out = tmp_path / "fleet.csv"
    res = run_tool("xen_pte_dump", "--core", fleet["hvm-b.kdump"], fleet["corrupt.elf"],
                   "--format", "csv", "-o", out, "--quiet")
    assert res.returncode == 1 and res.stderr == ""  # --quiet: the error record says it all
    import csv
    rows = list(csv.DictReader(out.open()))
    assert [r["type"] for r in rows] == ["mapping"] * (len(rows) - 1) + ["error"]
    first = rows[0]
    assert first["va"] == "0x400000" and first["rights"] == "RWX U"
    assert first["kernel_exec"] == "fault:SMEP" and first["target"].endswith("hvm-b.kdump")
    assert "corrupt.elf" in rows[-1]["detail"]


def test_check_records_validate(fleet, tmp_path):
    out = tmp_path / "check.jsonl"
    res = run_tool("xen_pte_dump", "--core", fleet["pv64.xc"], fleet["hvm-a.elf"], "--check",
                   "-o", out, "-j", "1", "--summary")
    assert res.returncode == 0, res.stderr
    _walk, check = validators()
    recs = read_jsonl(out)
    for r in recs:
        check.validate(r)
    cats = collections.Counter(r["category"] for r in recs if r["type"] == "anomaly"
                               and r["target"].endswith("pv64.xc"))
    assert cats["pv-disallowed"] == 1
    assert re.search(r"anomaly\s+pv-disallowed\s+1\s+1", res.stdout)


def test_what_if_passes_through_to_xen_pte_check(fleet, tmp_path):
    out = tmp_path / "whatif.jsonl"
    res = run_tool("xen_pte_dump", "--core", fleet["pv64.xc"], "--what-if", "no-guest-kernel-bit",
                   "--what-if", "release", "-o", out, "--summary")
    assert res.returncode == 0, res.stderr
    _walk, check = validators()
    recs = read_jsonl(out)
    for r in recs:
        check.validate(r)
    heads = {r["scenario"]: r for r in recs if r["type"] == "what-if"}
    assert set(heads) == {"no-guest-kernel-bit", "release"}
    assert heads["release"]["changed"] == 0
    (change,) = [r for r in recs if r["type"] == "change"]
    assert change["scenario"] == "no-guest-kernel-bit" and change["va"] == "0xffffffff81000000"
    assert change["count"] == 4 and "_PAGE_GUEST_KERNEL" in " ".join(change["what"])
    assert re.search(r"what-if\s+no-guest-kernel-bit: changes\s+1\s+4", res.stdout)
    assert re.search(r"what-if\s+release: changes\s+0\s+0", res.stdout)


def test_bundled_real_sample(tmp_path):
    """The bundled Xen 4.17 dom0 dump: Xen bits and disallow violations counted as in the JSONL."""
    from batchrun import DATA
    out = tmp_path / "sample.jsonl"
    res = run_tool("xen_pte_dump", "--core", DATA / "sample-xen-dom0.elf", "--domain", "pv64",
                   "--xen", "4.17", "-o", out, "--summary")
    assert res.returncode == 0, res.stderr
    recs = read_jsonl(out)
    lines = res.stdout.splitlines()
    row = _table(lines, lines.index("== fleet") + 1)[0]
    want = _expected(recs)
    assert want["Xen bits"] > 100  # records: the espfix area is one record x65536 (issue 15)
    cols = ["mappings", "faulting", "kernel SMEP/SMAP", "W+X", "Xen bits", "pkeys", "disallowed"]
    want["disallowed"] = sum(bool(r.get("disallowed")) for r in recs if r["type"] == "mapping")
    assert dict(zip(cols, map(int, row[3:3 + len(cols)]))) == want


def test_bad_options_are_one_line(fleet):
    for args, text in ((["--core", fleet["pv64.xc"], "--bogus"], "unrecognized arguments: "
                        "--bogus"),
                       (["--core", "/nonexistent/*.elf"], "no file matches"),
                       (["--remote", "nohostport"], "expected HOST:PORT"),
                       (["--core", fleet["pv64.xc"], "--vcpu", "x"], "--vcpu x"),
                       (["--core", fleet["pv64.xc"], "--domid", "x"], "--domid x"),
                       (["--core", fleet["pv64.xc"], "--xen-syms", "/nonexistent/xen-syms"],
                        "--xen-syms: "),
                       (["--remote", "localhost:1", "--domid", "1", "--vcpu", "all"],
                        "for a live host give --vcpu M"),
                       ([], "no targets")):
        res = run_tool("xen_pte_dump", *args)
        assert res.returncode == 2 and len(res.stderr.splitlines()) == 1, (args, res.stderr)
        assert res.stderr.startswith("xen-pte-dump: ") and text in res.stderr


def test_domid_on_a_dump_that_is_no_xen_host_is_an_error_record(fleet, tmp_path):
    """--domid on a guest's own dump: one error record naming the dump, no traceback."""
    out = tmp_path / "d.jsonl"
    res = run_tool("xen_pte_dump", "--core", fleet["hvm-a.elf"], "--domid", "1", "-o", out)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    records = read_jsonl(out)
    assert [r["type"] for r in records] == ["error"]
    assert "hvm-a.elf" in records[0]["message"] and "--xen-syms" in records[0]["message"]


def test_timeout_is_an_error_record(fleet, tmp_path):
    out = tmp_path / "t.jsonl"
    res = run_tool("xen_pte_dump", "--core", fleet["pv64.xc"], "--timeout", "0.05", "-o", out)
    assert res.returncode == 1
    (rec,) = read_jsonl(out)
    assert rec["type"] == "error" and "timed out" in rec["message"]


def test_gdb_crash_is_an_error_record_and_the_run_goes_on(fleet, tmp_path):
    """A gdb that dies (SIGSEGV) on one target; the other target still completes."""
    fake = tmp_path / "gdb"
    starts = tmp_path / "starts"
    starts.mkdir()
    # The preflight gdb (the first start) works; the next start dies of SIGSEGV at once; later
    # ones work (mkdir is atomic: two workers starting together take different turns).
    # ulimit -c 0: the crash must not leave a core file in the working directory.
    fake.write_text("#!/bin/sh\nulimit -c 0\n"
                    f"if mkdir {starts}/first 2>/dev/null; then exec gdb \"$@\"; fi\n"
                    f"if mkdir {starts}/second 2>/dev/null; then exec gdb -iex "
                    "'python import os, signal; os.kill(os.getpid(), signal.SIGSEGV)' \"$@\"; fi\n"
                    "exec gdb \"$@\"\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    out = tmp_path / "crash.jsonl"
    res = run_tool("xen_pte_dump", "--core", fleet["pv64.xc"], fleet["hvm-b.kdump"], "-j", "2",
                   "--gdb", fake, "-o", out)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    streams = _streams(read_jsonl(out))
    errors = [k for k, recs in streams.items() if recs[0]["type"] == "error"]
    assert len(errors) == 1 and "gdb exited" in streams[errors[0]][0]["message"]
    (done,) = [recs for k, recs in streams.items() if k != errors[0]]
    assert [r["type"] for r in done[:2]] == ["header", "mapping"]
    assert done[-1]["type"] == "summary"
    assert [k[0] for k in streams] == ["pv64.xc", "hvm-b.kdump"]  # target order kept


def test_one_target_summary_is_printed_once(fleet):
    """Issue 14: one target's --summary showed its table twice (the target, then "fleet
    total"): with one run the fleet is that run, so its table appears once."""
    res = run_tool("xen_pte_dump", "--core", fleet["hvm-b.kdump"], "--summary")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert sum(1 for ln in lines if re.match(r"mappings\s+all\s", ln)) == 1
    assert not any("fleet total" in ln for ln in lines)
    (row,) = _table(lines, lines.index("== fleet") + 1)
    assert row[0].endswith("hvm-b.kdump") and row[2] == "ok"


def test_triage_groups_targets_by_what_they_show(fleet_run, fleet, tmp_path):
    """The triage names, per finding, exactly the targets whose records show it."""
    import json
    res, records = fleet_run
    lines = res.stdout.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("== triage: 4 targets"))
    rows = {r[0]: r for r in _table(lines, at + 1)}
    by_target = collections.defaultdict(list)
    for r in records:
        by_target[os.path.basename(r["target"])].append(r)
    def having(pred):
        return sorted(t for t, recs in by_target.items()
                      if any(r["type"] == "mapping" and pred(r) for r in recs))
    wx = having(lambda r: r["effective"]["write"] and r["effective"]["exec"]
                and r.get("kind", "page") == "page")
    assert rows["W+X"][1] == f"{len(wx)}/4"
    assert sorted(os.path.basename(n) for n in rows["W+X"][2].split(", ")) == wx
    assert rows["FAILED"][1] == "1/4" and rows["FAILED"][2].endswith("corrupt.elf")
    assert rows["disallowed"][2].endswith("pv64.xc")
    # The same as JSON, every name listed.
    out = tmp_path / "s.json"
    res = run_tool("xen_pte_dump", "--core", f"{fleet['hvm-a.elf'].parent}/*", "--vcpu", "all",
                   "--summary-json", out, "-j", "2", "--quiet")
    doc = json.loads(out.read_text())
    groups = {g["group"]: sorted(os.path.basename(t) for t in g["targets"])
              for g in doc["triage"]}
    assert groups["W+X"] == wx and groups["FAILED"] == ["corrupt.elf"]
    assert doc["targets"] == 4 and doc["failed"] == 1
    assert res.stdout == ""  # --summary-json alone prints no tables


def test_progress_bar_only_when_asked_or_on_a_terminal(fleet, tmp_path):
    """stderr here is a pipe: no bar unless --progress; the records are the same either way."""
    args = ["--core", fleet["hvm-b.kdump"], fleet["pv64.xc"], "-j", "1"]
    plain = run_tool("xen_pte_dump", *args, "-o", tmp_path / "a.jsonl")
    bar = run_tool("xen_pte_dump", *args, "-o", tmp_path / "b.jsonl", "--progress")
    assert plain.returncode == bar.returncode == 0
    assert plain.stderr == ""
    assert re.search(r"0/2 \[", bar.stderr) and "target/s" in bar.stderr, bar.stderr
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    quiet = run_tool("xen_pte_dump", *args, "-o", tmp_path / "c.jsonl", "--progress", "--quiet")
    assert quiet.stderr == ""
