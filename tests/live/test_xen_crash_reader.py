"""Our reader on a genuine Xen 4.17 kexec crash dump (``xl debug-keys C`` -> crash kernel -> ``dd``
of /proc/vmcore) and its makedumpfile copy, checked against what Xen's own tools said before the
crash (the ``xen_crash`` fixture's manifest, tests/targets/xen_crash.py):

* every pCPU is read from the crash notes and walked with their CR3/CR4: each pCPU's L4 maps Xen's
  image (Xen's L4 slots are in every L4) at ``xen_phys_start`` + its offset, as CRASH_INFO says;
  the pCPU running the "running" domU saved the CR3/CR4 that ``xl debug-keys d`` printed for it;
* ``xen-domains`` lists dom0 and every domU, each vCPU's CR3 equal to what ``xenctx -a`` printed;
  the crashed pCPU is the one Xen's crash path took;
* ``--domid N`` walks each domU's marker VA to the machine frame its p2m gives (``xen-mfndump``),
  and the bytes there are the marker the domU wrote; with ``XENPTE_XENCRASH_PVH=1`` the artefact
  also has a PVH domU, whose guest-physical tables are walked through its host p2m (NPT) to the
  machine frame holding its marker.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from tests.gdb.gdbrun import run_gdb
from gdb_xenpte.session import Options, prepare
from gdb_xenpte.sources.open import open_dump
from gdb_xenpte.xen_host import DomainVcpuSource, open_host

pytestmark = [pytest.mark.live, pytest.mark.slow]

FILES = ("vmcore_elf", "vmcore_kdump")


@pytest.fixture(params=FILES, ids=["elf", "makedumpfile"])
def dump(xen_crash, request):
    return xen_crash[request.param]


def _walk_domain(dom):
    """The session's domain type for a domU's walk: PVH is walked as the HVM container it is."""
    return "hvm" if dom["kind"] in ("hvm", "pvh") else dom["kind"]


def _domus(xen_crash):
    return [d for d in xen_crash["domains"] if d["domid"] != 0]


def test_every_pcpu_walked_with_its_crash_note_registers(xen_crash, dump):
    with open_dump(dump) as src:
        pcpus = src.vcpus()
        assert [p.index for p in pcpus] == list(range(xen_crash["pcpus"]))
        start = src.host.info.xen_phys_start
        syms = open_host(src, xen_crash["xen_syms"])
        image_va = syms.layout.symbol("_start")
        image_base = syms.xen_virt_start
        for p in pcpus:
            assert p.online and p.cr3 and p.cr4 and f"pCPU {p.index}" in p.origin
            s = prepare(src, Options(vcpu=p.index))
            # The notes' values, observed, not the policy's: CR3 and the hardware CR4 as saved.
            assert s.cpu.cr3 == p.cr3 and s.state.cr4_read == p.cr4 == s.effective_cr4
            m = s.walker().trace(image_va).mapping
            assert m is not None and m.pa == start + image_va - image_base
        seen = {d["pcpu"]: d for d in xen_crash["debug_key_d"]}
        running = next(d for d in _domus(xen_crash) if d["state"] == "running")
        key_d = next(d for d in seen.values() if d["domid"] == running["domid"])
        # That pCPU ran the running domU to the end: the CR4 'xl debug-keys d' printed and one of
        # the domU's own L4s (kernel or user: it may have entered its kernel since).
        saved = pcpus[key_d["pcpu"]]
        assert saved.cr4 == key_d["cr4"] and saved.cr3 >> 12 in running["pinned_l4_mfns"]


def test_xen_domains_lists_every_domain_with_xenctx_cr3(xen_crash, dump):
    res = run_gdb(f"xen-domains --core {dump} --xen-syms {xen_crash['xen_syms']} --json",
                  timeout=300)
    records = res.json_lines()
    assert records, res.stderr
    host = records[0]
    assert host["type"] == "host" and host["crashed_pcpu"] == xen_crash["crashed_pcpu"]
    vcpus = {(r["domid"], r["vcpu"]): r for r in records if r["type"] == "vcpu"}
    # The running domU's pCPU had that domU's kernel or user L4 loaded when the crash came.
    pcpus = {r["pcpu"]: r for r in records if r["type"] == "pcpu"}
    running = next(d for d in _domus(xen_crash) if d["state"] == "running")
    key_d = next(d for d in xen_crash["debug_key_d"] if d["domid"] == running["domid"])
    assert pcpus[key_d["pcpu"]]["cr3_tables"] in (f"d{running['domid']}v0 user L4",
                                                  f"d{running['domid']}v0 kernel L4")
    assert {d for d, _v in vcpus} == {d["domid"] for d in xen_crash["domains"]}
    for dom in xen_crash["domains"]:
        for v in dom["vcpus"]:
            rec = vcpus[(dom["domid"], v["vcpu"])]
            assert rec["kind"] == dom["kind"] and rec["pcpu"] == v["pcpu"]
            if "cr3" in v:  # domUs: xenctx -a
                assert int(rec["cr3"], 16) == v["cr3"] and int(rec["cr4"], 16) == v["cr4"]
            assert (rec["state"] == "paused") == (dom["state"] == "paused")


def test_domid_reaches_each_marker_at_its_p2m_mfn(xen_crash, dump):
    for dom in _domus(xen_crash):
        marker = dom["marker"]
        res = run_gdb(f"xen-pte-walk --core {dump} --xen-syms {xen_crash['xen_syms']} "
                      f"--domid {dom['domid']} --json {marker['va']:#x}", timeout=300)
        records = res.json_lines()
        assert records, res.stderr
        header, trace, mapping = records[0], records[1], records[2]
        # PVH (opt-in: XENPTE_XENCRASH_PVH=1): an HVM container whose guest-physical tables
        # are walked through the domain's host p2m (NPT under QEMU TCG).
        assert header["domain"] == _walk_domain(dom) and trace["type"] == "trace"
        assert f"domain {dom['domid']} vCPU 0 of" in header["source"]
        assert int(mapping["pa"], 16) == marker["mfn"] << 12 == marker["maddr"]
        if dom["state"] == "paused" and dom["kind"] == "pv64":
            # Not running: the hardware CR4 is derived, from Xen's own CR4 as the dump shows it
            # (mmu_cr4_features), so SMEP/SMAP are those every pCPU ran with.
            assert header["provenance"]["xen_cr4"].startswith("observed: Xen's mmu_cr4_features")
            smx = 0x300000
            with open_dump(dump) as src:
                assert {p.cr4 & smx for p in src.vcpus()} == {int(header["effective_cr4"], 16)
                                                              & smx}
        with open_dump(dump) as src:
            data = src.read(marker["maddr"], 4096)
        assert hashlib.sha256(data).hexdigest() == marker["sha256"]
        assert data == Path(marker["file"]).read_bytes()


def test_engine_domid_view_matches_the_command(xen_crash, dump):
    """The engine path the command uses: DomainVcpuSource over the host dump."""
    with open_dump(dump) as src:
        host = open_host(src, xen_crash["xen_syms"])
        for dom in _domus(xen_crash):
            d, v = host.find(dom["domid"], 0)
            s = prepare(DomainVcpuSource(host, d, v), Options(vcpu=0))
            m = s.walker().trace(dom["marker"]["va"]).mapping
            assert m.pa == dom["marker"]["maddr"] and s.domain == _walk_domain(dom)


def test_xen_pte_dump_vcpu_all_walks_every_pcpu(xen_crash, dump, tmp_path):
    """``xen-pte-dump --vcpu all`` on the host dump: one walk per pCPU (distinct CR3), each with
    the CR3/CR4 the pCPU saved."""
    from tests.batch.batchrun import read_jsonl, run_tool
    out = tmp_path / "host.jsonl"
    res = run_tool("xen_pte_dump", "--core", dump, "--vcpu", "all", "-o", out, timeout=600)
    assert res.returncode == 0, res.stderr
    headers = [r for r in read_jsonl(out) if r["type"] == "header"]
    with open_dump(dump) as src:
        expected = {p.index: (hex(p.cr3), hex(p.cr4)) for p in src.vcpus()}
    walked = {h["vcpu"]: (h["cr3"], h["effective_cr4"]) for h in headers}
    assert len({cr3 for cr3, _ in expected.values()}) == len(headers)
    assert all(walked[i] == expected[i] for i in walked)


def test_xen_pte_dump_with_xen_syms_walks_every_domain_vcpu(xen_crash, dump, tmp_path):
    """``xen-pte-dump --vcpu all --xen-syms``: the pCPUs, then every domain's every vCPU as Xen
    recorded it (one run per distinct recorded CR3/CR4); a pCPU holding a PV vCPU's kernel L4 is
    walked once, as that vCPU. Each domU run starts from xenctx's CR3 and maps its marker at
    the machine frame its p2m gives."""
    from tests.batch.batchrun import read_jsonl, run_tool
    out, summary = tmp_path / "host.jsonl", tmp_path / "summary.json"
    res = run_tool("xen_pte_dump", "--core", dump, "--vcpu", "all", "--xen-syms",
                   xen_crash["xen_syms"], "-o", out, "--summary-json", summary, timeout=900)
    assert res.returncode == 0, res.stderr
    records = read_jsonl(out)
    runs = json.loads(summary.read_text())["runs"]
    walked = {(r.get("domid"), v) for r in runs if "skipped" not in r
              for v in (r["vcpus"] or [r["vcpu"]])}
    skipped = {(r.get("domid"), r["vcpu"]): r["skipped"] for r in runs if "skipped" in r}
    for dom in xen_crash["domains"]:  # every vCPU of every domain is accounted for
        for v in dom["vcpus"]:
            assert (dom["domid"], v["vcpu"]) in walked or (dom["domid"], v["vcpu"]) in skipped
    with open_dump(dump) as src:
        for p in src.vcpus():  # every pCPU: walked, or walked as the vCPU it was running
            why = skipped.get((None, p.index))
            if why is not None:
                d, v = re.fullmatch(r".*walked as d(\d+)v(\d+)", why).groups()
                assert (int(d), int(v)) in walked, why
            else:
                assert (None, p.index) in walked
    headers = {(r.get("domid"), r["vcpu"]): r for r in records if r["type"] == "header"}
    for dom in _domus(xen_crash):
        head = headers[(dom["domid"], 0)]
        assert head["domain"] == _walk_domain(dom)
        if "cr3" in dom["vcpus"][0]:  # xenctx -a, before the crash
            assert int(head["cr3"], 16) == dom["vcpus"][0]["cr3"]
    # Each domU's marker page, one record per page (its coalesced run may be "scattered").
    pages = tmp_path / "markers.jsonl"
    for dom in _domus(xen_crash):
        va = dom["marker"]["va"]
        res = run_tool("xen_pte_dump", "--core", dump, "--vcpu", "all", "--xen-syms",
                       xen_crash["xen_syms"], "--no-coalesce", "-o", pages, "--", hex(va),
                       hex(va + 4096), timeout=900)
        assert res.returncode == 0, res.stderr
        hits = [r for r in read_jsonl(pages) if r["type"] == "mapping"
                and r.get("domid") == dom["domid"] and r["vcpu"] == 0]
        assert [(int(r["va"], 16), int(r["pa"], 16)) for r in hits] == \
            [(va, dom["marker"]["maddr"])]


def test_readme_reading_a_host_dump(xen_crash, tmp_path):
    """README's "Reading a host dump" block as written, in a directory holding ``vmcore`` and
    ``xen-syms`` (domain 1 is a domU of this dump)."""
    import os
    import subprocess
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from readme_examples import gdb_lines, shell_lines
    (tmp_path / "vmcore").symlink_to(xen_crash["vmcore_elf"])
    (tmp_path / "xen-syms").symlink_to(xen_crash["xen_syms"])
    assert 1 in {d["domid"] for d in _domus(xen_crash)}
    res = run_gdb(f"cd {tmp_path}", *gdb_lines("Reading a host dump"), timeout=300).ok()
    assert "d1v0" in res.stdout or "   1 " in res.stdout, res.stdout
    assert "domain 1 vCPU 0 of" in res.stdout, res.stdout
    root = Path(__file__).resolve().parents[2]
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "xen-pte-dump").write_text(f'#!/bin/sh\nexec {sys.executable} -m scripts.xen_pte_dump '
                                       '"$@"\n')
    (shim / "xen-pte-dump").chmod(0o755)
    env = dict(os.environ, PATH=f"{shim}:{os.environ['PATH']}", PYTHONPATH=str(root))
    for line in shell_lines("Reading a host dump"):
        done = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, text=True,
                              capture_output=True, timeout=900, stdin=subprocess.DEVNULL)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert "d1v0" in done.stdout  # the summary names the domain's run
    heads = [json.loads(ln) for ln in (tmp_path / "host.jsonl").read_text().splitlines()
             if '"header"' in ln]
    assert {h.get("domid") for h in heads} >= {None} | {d["domid"] for d in xen_crash["domains"]}


def test_gdb_symbol_file_stands_in_for_xen_syms(xen_crash):
    """With the crashed Xen's xen-syms loaded in gdb (``file xen-syms``), --xen-syms may go."""
    dump = xen_crash["vmcore_elf"]
    res = run_gdb(f"file {xen_crash['xen_syms']}", f"xen-domains --core {dump} --json",
                  timeout=300)
    records = res.json_lines()
    assert records and records[0]["layout"] == f"xen-syms {xen_crash['xen_syms']}", res.stderr
    assert {r["domid"] for r in records if r["type"] == "vcpu"} == \
        {d["domid"] for d in xen_crash["domains"]}


def test_pvh_marker_through_the_host_p2m(xen_crash, dump):
    """xen-pte-p2m on the PVH domU (opt-in artefact): the marker's guest frame is backed by the
    machine frame holding the marker, as RAM (p2m_ram_rw) the p2m lets the guest read and write;
    every guest table frame is backed too."""
    pvh = [d for d in _domus(xen_crash) if d["kind"] == "pvh"]
    if not pvh:
        pytest.skip("no PVH domU in this artefact: set XENPTE_XENCRASH_PVH=1")
    for dom in pvh:
        marker = dom["marker"]
        res = run_gdb(f"xen-pte-p2m --core {dump} --xen-syms {xen_crash['xen_syms']} "
                      f"--domid {dom['domid']} --json {marker['va']:#x}", timeout=300)
        records = res.json_lines()
        assert records, res.stderr
        p2m = [r for r in records if r["type"] == "p2m"]
        data = next(r for r in p2m if r["role"] == "data")
        assert int(data["gfn"], 16) == marker["pfn"] and int(data["mfn"], 16) == marker["mfn"]
        assert data["p2m_type"] == "p2m_ram_rw" and data["rights"].startswith("RW")
        assert [r["role"] for r in p2m[:-1]] == ["pml4 table", "pdpt table", "pd table",
                                                 "pt table"]
        assert all(r["mfn"] is not None for r in p2m)
        assert records[-1]["type"] == "p2m_combined" and records[-1]["rights"].startswith("RW")
        # A walk of the marker's page carries the same p2m rights and type (issue 16).
        walk = run_gdb(f"xen-pte-walk --core {dump} --xen-syms {xen_crash['xen_syms']} "
                       f"--domid {dom['domid']} --json {marker['va']:#x} "
                       f"{marker['va'] + 4096:#x}", timeout=300).json_lines()
        pages = [r for r in walk if r["type"] == "mapping"]
        assert [r["p2m"] for r in pages] == [{"rights": data["rights"],
                                              "type": data["p2m_type"]}]


def test_p2m_trace_of_a_pv_domain_is_one_line(xen_crash):
    dom = _domus(xen_crash)[0]
    assert dom["kind"] == "pv64"
    res = run_gdb(f"xen-pte-p2m --core {xen_crash['vmcore_elf']} --xen-syms "
                  f"{xen_crash['xen_syms']} --domid {dom['domid']} 0x404000", timeout=300)
    errors = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert errors == [f"xen-pte-p2m: domain {dom['domid']} is pv64: xen-pte-p2m traces HVM/PVH "
                      "guests (PV tables hold machine frames already: use xen-pte-walk "
                      "--domid)"], res.stderr
