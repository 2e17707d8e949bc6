"""A live Xen host under QEMU's gdbstub, and a QEMU dump of it: domains, vCPUs and ``--domid``.

One machine per session (tests/targets/xen_live.py): the crash target's Xen build (DWARF) with
dom0 and two 64-bit PV domUs, one paused, one spinning in user mode, each holding a marker page.
Before gdb stops anything, dom0 recorded ``xenctx -a`` (each domU's CR3 as Xen holds it),
``xen-mfndump dump-p2m`` (PFN -> MFN) and ``xl debug-keys q`` (vCPU -> pCPU). Then, with the
host stopped under gdb:

* ``xen-domains --xen-syms xen-syms`` lists dom0 and both domUs, each domU's vCPU CR3 equal to
  xenctx's, on the pCPU debug-key q named, the paused one paused; the pCPU that runs or holds a
  vCPU (CR3 = its ``v->arch.cr3``) gives it its hardware CR4 as observed; the same answers through
  the ``/proc`` fast path and through PhyMemMode, and with xen-syms loaded as gdb's symbol file;
* ``xen-pte-walk --domid N`` reaches each domU's marker VA at the machine frame its p2m gives,
  and the page there is the marker that domU wrote (read back through QEMU's monitor);
* ``xen_phys_start`` (no crash notes here) is derived from a CPU's CR3 and the derivation is
  stated; a xen-syms that is not the running Xen's, and ``--domid`` on the host without any,
  are one-line errors;
* QEMU's ``dump-guest-memory`` of the same stopped host gives the same domains and walks with
  ``--core`` (and its ``-z`` kdump-compressed copy the same domains);
* ``xen-pte-check --domid`` finds no pf-loop in a 64-bit PV domain, and the batch tool
  (``xen-pte-dump --remote --domid N``) walks each domU from xenctx's CR3 to its marker's MFN.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import pytest

from readme_examples import gdb_lines
from targets.gdb import GdbError, GdbMi
from targets.livewalk import load_extension
from targets.xen_crash import marker_page
from targets.xen_live import boot_live_host

pytestmark = [pytest.mark.live, pytest.mark.slow]

README_BLOCK = "Every domain of a Xen host"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class HostCapture:
    """What one stop of the live host gave (command outputs as JSON records or error lines)."""

    domains: List[dict]
    key_q: Dict[int, dict]
    xen_syms: str
    regs: List[Dict[str, int]] = field(default_factory=list)  # per pCPU: cr3, cr4 from gdb
    live: List[dict] = field(default_factory=list)            # xen-domains, /proc fast path
    phymem: List[dict] = field(default_factory=list)          # xen-domains, PhyMemMode
    symfile: List[dict] = field(default_factory=list)         # xen-syms as gdb's symbol file
    walks: Dict[str, Dict[int, List[dict]]] = field(default_factory=dict)  # source -> domid ->
    pages: Dict[int, bytes] = field(default_factory=dict)     # domid -> page at the marker MFN
    dump: List[dict] = field(default_factory=list)            # xen-domains --core host.elf
    kdump: List[dict] = field(default_factory=list)           # xen-domains --core host.kdump
    errors: Dict[str, str] = field(default_factory=dict)
    text: str = ""                                            # xen-domains, live, as text
    cr4_text: str = ""                                        # xen-cr4 --domid (running domU)
    readme: Dict[str, str] = field(default_factory=dict)      # README line -> output
    seconds: Dict[str, float] = field(default_factory=dict)
    check: Dict[int, List[dict]] = field(default_factory=dict)  # domid -> xen-pte-check --json
    batch: List[dict] = field(default_factory=list)           # xen-pte-dump --remote --domid
    batch_rc: int = -1
    batch_err: str = ""


def _records(text: str) -> List[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _error(gdb: GdbMi, command: str) -> str:
    try:
        out = gdb.cli(command)
    except GdbError as err:
        return str(err).split(": ", 1)[1] if ": " in str(err) else str(err)
    raise AssertionError(f"{command} did not fail: {out[-500:]}")


def _page(vm, maddr: int) -> bytes:
    """4 KiB at a machine address, read by QEMU's monitor (``xp``), not by gdb_xenpte."""
    out = vm.monitor(f"xp /512gx {maddr:#x}")
    words = [w for line in out.splitlines() if ":" in line
             for w in line.split(":", 1)[1].split() if w.startswith("0x")]
    return b"".join(int(w, 16).to_bytes(8, "little") for w in words)


def _other_build(syms: str, out: Path) -> Path:
    """A copy of ``syms`` whose GNU build-id differs in its last byte: another build's xen-syms
    as far as any check can tell, with the same symbols."""
    from elftools.elf.elffile import ELFFile

    with open(syms, "rb") as f:
        (desc,) = [n["n_desc"] for s in ELFFile(f).iter_sections()
                   if s.name == ".note.gnu.build-id" for n in s.iter_notes()]
    data = bytearray(Path(syms).read_bytes())
    at = data.find(bytes.fromhex(desc))
    assert at > 0 and data.find(bytes.fromhex(desc), at + 1) < 0
    data[at + len(desc) // 2 - 1] ^= 0xFF
    out.write_bytes(bytes(data))
    return out


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> HostCapture:
    workdir = tmp_path_factory.mktemp("xenlive")
    t0 = time.monotonic()
    with boot_live_host(workdir) as live:
        syms = str(live.xen_syms)
        cap = HostCapture(live.domains, live.key_q, syms, seconds=dict(live.seconds))
        vm = live.guest.vm
        with GdbMi(vm.gdb_port, timeout=300) as gdb:
            t1 = time.monotonic()
            load_extension(gdb)
            for th in (1, 2):
                gdb.cli(f"thread {th}")
                cap.regs.append({r: gdb.evaluate(f"${r}") for r in ("cr3", "cr4", "cs")})
            cap.live = _records(gdb.cli(f"xen-domains --xen-syms {syms} --json"))
            cap.walks["live"] = {
                d["domid"]: _records(gdb.cli(f"xen-pte-walk --xen-syms {syms} --domid "
                                             f"{d['domid']} --json {d['marker']['va']:#x}"))
                for d in live.domains}
            running = next(d for d in live.domains if d["state"] == "running")
            cap.cr4_text = gdb.cli(f"xen-cr4 --xen-syms {syms} --domid {running['domid']}")
            cap.check = {
                d["domid"]: _records(gdb.cli(f"xen-pte-check --xen-syms {syms} --domid "
                                             f"{d['domid']} --json"))
                for d in live.domains}
            cap.seconds["live_commands"] = time.monotonic() - t1
            gdb.cli("set xen-pte fast-path off")
            t2 = time.monotonic()
            cap.phymem = _records(gdb.cli(f"xen-domains --xen-syms {syms} --json"))
            cap.walks["phymem"] = {
                d["domid"]: _records(gdb.cli(f"xen-pte-walk --xen-syms {syms} --domid "
                                             f"{d['domid']} --json {d['marker']['va']:#x}"))
                for d in live.domains}
            cap.seconds["phymem_commands"] = time.monotonic() - t2
            gdb.cli("set xen-pte fast-path on")
            for d in live.domains:
                cap.pages[d["domid"]] = _page(vm, d["marker"]["mfn"] << 12)
            # bad input, live: no xen-syms; the xen-syms of another build (ours with one byte
            # of its build-id changed); a domain that does not exist
            cap.errors["no syms"] = _error(gdb, "xen-pte-walk --domid 1 0")
            other = _other_build(syms, workdir / "other-xen-syms")
            cap.errors["other syms"] = _error(gdb, f"xen-domains --xen-syms {other}")
            other.unlink()
            cap.errors["no domain"] = _error(gdb, f"xen-pte-walk --xen-syms {syms} --domid 77 0")
            cap.errors["no vcpu"] = _error(gdb, f"xen-pte-walk --xen-syms {syms} --domid 2 "
                                                "--vcpu 1 0")
            cap.errors["direct map"] = _error(gdb, f"xen-pte-walk --xen-syms {syms} --domid 1 "
                                                   "--direct-map 0xffff888000000000 0")
            # the same stopped host, dumped by QEMU
            t3 = time.monotonic()
            elf = workdir / "host.elf"
            vm.monitor(f"dump-guest-memory {elf}", timeout=300)
            cap.seconds["dump_guest_memory"] = time.monotonic() - t3
            t4 = time.monotonic()
            kdump = workdir / "host.kdump"
            vm.monitor(f"dump-guest-memory -z {kdump}", timeout=300)
            cap.seconds["dump_guest_memory_z"] = time.monotonic() - t4
            for name, path in (("dump", elf), ("kdump", kdump)):
                setattr(cap, name, _records(gdb.cli(f"xen-domains --core {path} --xen-syms "
                                                    f"{syms} --json")))
                cap.walks[name] = {
                    d["domid"]: _records(gdb.cli(f"xen-pte-walk --core {path} --xen-syms {syms} "
                                                 f"--domid {d['domid']} --json "
                                                 f"{d['marker']['va']:#x}"))
                    for d in live.domains}
            cap.text = gdb.cli(f"xen-domains --xen-syms {syms}")
            # the README's block as written, in a folder holding xen-syms; QEMU resolves the
            # dump's relative name in its own folder, so the monitor line gets it absolute
            readme = workdir / "readme"
            readme.mkdir()
            (readme / "xen-syms").symlink_to(syms)
            gdb.cli(f"cd {readme}")
            for line in gdb_lines(README_BLOCK):
                run = re.sub(r"^(monitor dump-guest-memory )(\S+)$",
                             lambda m: m.group(1) + str(readme / m.group(2)), line)
                try:
                    cap.readme[line] = gdb.cli(run, timeout=300)
                except GdbError as err:
                    cap.readme[line] = f"ERROR: {err}"
            # xen-syms as gdb's symbol file (the README loaded it): no --xen-syms needed
            cap.symfile = _records(gdb.cli("xen-domains --json"))
        # The batch tool on the live host (gdb above has detached): every domU's vCPU 0 at
        # its marker page, one run each, the guest stopped only while it is read.
        t5 = time.monotonic()
        out = workdir / "batch.jsonl"
        for d in live.domains:
            va = d["marker"]["va"]
            res = subprocess.run(
                [sys.executable, "-m", "scripts.xen_pte_dump", "--remote",
                 f"127.0.0.1:{vm.gdb_port}", "--domid", str(d["domid"]), "--xen-syms", syms,
                 "-o", str(out), "--", hex(va), hex(va + 4096)],
                cwd=ROOT, capture_output=True, text=True, timeout=300)
            cap.batch_rc = max(cap.batch_rc, res.returncode)
            cap.batch_err += res.stderr
            if out.exists():
                cap.batch += _records(out.read_text())
                out.unlink()
        cap.seconds["xen_pte_dump_remote"] = time.monotonic() - t5
        shutil.rmtree(readme)
        for path in (elf, kdump):
            path.unlink()
    cap.seconds["total"] = time.monotonic() - t0
    print(cap.text)
    print("xen live host seconds: " + json.dumps({k: round(v, 1) for k, v in
                                                   cap.seconds.items()}))
    return cap


def _vcpus(records: List[dict]) -> Dict[int, dict]:
    return {r["domid"]: r for r in records if r["type"] == "vcpu" and r["vcpu"] == 0}


def _strip(records: List[dict]) -> List[dict]:
    """The records without what names the source (the answers must not depend on it)."""
    return [{k: v for k, v in r.items() if k not in ("source", "origin", "notes")}
            for r in records if r["type"] in ("vcpu", "domain")]


def test_live_xen_domains_lists_dom0_and_the_domus_with_xenctx_cr3(host):
    vcpus = _vcpus(host.live)
    assert set(vcpus) == {0} | {d["domid"] for d in host.domains}, host.live
    assert vcpus[0]["kind"] == "pv64" and vcpus[0]["pcpu"] == host.key_q[0]["vcpus"][0]["pcpu"]
    for dom in host.domains:
        rec = vcpus[dom["domid"]]
        assert rec["kind"] == "pv64" and int(rec["cr3"], 16) == dom["cr3"], (rec, dom)
        assert int(rec["cr4"], 16) == dom["xenctx"]["cr4"]  # the guest-visible CR4
        assert rec["pcpu"] == dom["pcpu"]
        assert rec["paused"] == (dom["state"] == "paused")


def test_the_pcpu_running_or_holding_a_vcpu_gives_its_hardware_cr4(host):
    """Each pCPU's CR3 (read by gdb) is the arch.cr3 of the vCPU it runs or holds (dom0's on
    pCPU 0, idle or not: Xen switches lazily; the spinning domU's on pCPU 1); that vCPU's
    hw_cr4 is the pCPU's CR4, said to be observed."""
    host_rec = next(r for r in host.live if r["type"] == "host")
    pcpus = {r["pcpu"]: r for r in host.live if r["type"] == "pcpu"}
    assert [int(pcpus[i]["cr3"], 16) for i in (0, 1)] == [r["cr3"] for r in host.regs]
    assert host_rec["crashed_pcpu"] is None
    observed = [v for v in _vcpus(host.live).values() if v["hw_cr4"] is not None]
    assert observed, "no vCPU got an observed CR4"
    for v in observed:
        regs = host.regs[v["pcpu"]]
        assert int(v["hw_cr4"], 16) == regs["cr4"] and int(v["hw_cr3"], 16) == regs["cr3"]
        assert "pCPU" in v["hw_cr4_origin"] and "arch.cr3" in v["hw_cr4_origin"]
    # dom0 (pinned alone to pCPU 0: it runs there, or pCPU 0 idles holding it) and the spinning
    # domU (always runnable on pCPU 1, where the paused one never runs again) are observed; the
    # paused domU is not on any pCPU.
    vcpus = _vcpus(host.live)
    (running,) = [d for d in host.domains if d["state"] == "running"]
    (paused,) = [d for d in host.domains if d["state"] == "paused"]
    assert int(vcpus[0]["hw_cr4"], 16) == host.regs[0]["cr4"]
    assert int(vcpus[running["domid"]]["hw_cr4"], 16) == host.regs[running["pcpu"]]["cr4"]
    assert vcpus[paused["domid"]]["hw_cr4"] is None
    assert pcpus[0]["cr3_tables"].startswith("d0v0 ")
    assert pcpus[running["pcpu"]]["cr3_tables"].startswith(f"d{running['domid']}v0 ")


def test_xen_phys_start_is_derived_from_a_cpu_cr3_and_says_so(host):
    notes = next(r for r in host.live if r["type"] == "host")["notes"]
    assert any(re.match(r"xen_phys_start 0x[0-9a-f]+ found by walking idle_pg_table's VA "
                        r"through CPU \d's CR3", n) for n in notes), notes
    assert any("matches: build-id" in n for n in notes), notes


def test_phymem_mode_symbol_file_and_dump_agree_with_the_fast_path(host):
    fast = _strip(host.live)
    assert _strip(host.phymem) == fast
    assert _strip(host.symfile) == fast
    # the dump: the same domains and vCPUs; nothing runs in a dump, so the same records
    assert _strip(host.dump) == fast
    assert _strip(host.kdump) == fast


@pytest.mark.parametrize("source", ["live", "phymem", "dump", "kdump"])
def test_domid_walk_reaches_each_marker_at_its_p2m_mfn(host, source):
    vcpus = _vcpus(host.live)
    for dom in host.domains:
        records = host.walks[source][dom["domid"]]
        assert len(records) >= 3, records
        header, mapping = records[0], records[2]
        assert f"domain {dom['domid']} vCPU 0 of" in header["source"]
        assert int(header["cr3"], 16) == dom["cr3"] and header["domain"] == "pv64"
        assert int(mapping["pa"], 16) == dom["marker"]["mfn"] << 12, (source, mapping)
        assert host.pages[dom["domid"]] == marker_page(dom["tag"])
        hw_cr4 = vcpus[dom["domid"]]["hw_cr4"]
        if hw_cr4 is not None:  # observed: the walk runs with the pCPU's CR4 as it is
            assert header["effective_cr4"] == hw_cr4, (source, header)


def test_xen_cr4_of_a_live_domain_is_its_pcpus(host):
    """xen-cr4 --domid on the running domU: the CR4 explained is the one its pCPU runs it with."""
    (running,) = [d for d in host.domains if d["state"] == "running"]
    rec = _vcpus(host.live)[running["domid"]]
    assert rec["hw_cr4"] is not None and rec["hw_cr4"] in host.cr4_text, host.cr4_text
    assert f"domain {running['domid']} vCPU 0" in host.cr4_text


def test_bad_input_is_one_line(host):
    assert re.fullmatch(r"xen-pte-walk: --domid needs the running Xen's xen-syms \(--xen-syms "
                        r"FILE, or gdb's symbol file\) on QEMU gdbstub 127\.0\.0\.1:\d+: it has "
                        r"no Xen crash notes", host.errors["no syms"]), host.errors["no syms"]
    other = host.errors["other syms"]
    assert re.fullmatch(r"xen-domains: xen-syms \S+other-xen-syms is not the Xen running in "
                        r"QEMU gdbstub \S+: its build-id note at VA 0x[0-9a-f]+ \(machine "
                        r"address 0x[0-9a-f]+\) reads [0-9a-f]{40} there, the file has "
                        r"[0-9a-f]{40}", other), other
    ids = re.findall(r"[0-9a-f]{40}", other)
    assert ids[0] != ids[1]
    assert re.fullmatch(r"xen-pte-walk: no domain 77 on QEMU gdbstub 127\.0\.0\.1:\d+ \(domains: "
                        r"0, 1, 2\)", host.errors["no domain"]), host.errors["no domain"]
    assert host.errors["no vcpu"] == "xen-pte-walk: domain 2 has no vCPU 1 (vCPUs: 0)"
    assert host.errors["direct map"] == (
        "xen-pte-walk: --domid reads Xen's structures in machine memory: not with --direct-map "
        "(the live target's physical reads are needed)")
    assert all("\n" not in e for e in host.errors.values())


def test_readme_block_runs_as_written(host):
    """README's live-host block: domain 2 (the running domU, created second) and its marker VA
    0x404000 (marker.c's page, the same in every run); the live and the dump walk both end at the
    marker's machine frame."""
    lines = gdb_lines(README_BLOCK)
    assert len(host.readme) == len(lines) == 6, host.readme
    errors = {ln: out for ln, out in host.readme.items() if out.startswith("ERROR")}
    assert not errors, errors
    (dom,) = [d for d in host.domains if d["domid"] == 2]
    assert dom["marker"]["va"] == 0x404000
    maddr = f"{dom['marker']['mfn'] << 12:#x}"
    walks = [out for ln, out in host.readme.items() if ln.startswith("xen-pte-walk")]
    assert len(walks) == 2 and all(maddr in out and "domain 2 vCPU 0" in out for out in walks), \
        walks
    listings = [out for ln, out in host.readme.items() if ln.startswith("xen-domains")]
    assert len(listings) == 2 and all(re.search(r"^\s*2\s+0\s+pv64\s", out, re.M)
                                      for out in listings), listings


def test_check_of_a_live_pv64_domain_finds_no_pf_loop(host):
    """xen-pte-check --domid on the live host: each domU as Xen runs it (a 64-bit PV kernel at
    CPL3, so no SMEP/SMAP fault can bind it): a header naming the domain, no pf-loop finding."""
    for d in host.domains:
        records = host.check[d["domid"]]
        assert records and records[0]["type"] == "header", records[:2]
        assert f"domain {d['domid']} vCPU 0 of" in records[0]["source"]
        assert records[0]["domain"] == "pv64" and records[-1]["type"] == "summary"
        assert not [r for r in records if r.get("category") == "pf-loop"]


def test_xen_pte_dump_on_the_live_host_walks_each_domain(host):
    """xen-pte-dump --remote --domid N: one run per domU, tagged with its domid, from the CR3
    xenctx printed, mapping the marker page at the machine frame its p2m gives."""
    assert host.batch_rc == 0 and "Traceback" not in host.batch_err, host.batch_err
    for d in host.domains:
        mine = [r for r in host.batch if r.get("domid") == d["domid"]]
        head = next(r for r in mine if r["type"] == "header")
        assert int(head["cr3"], 16) == d["cr3"]  # xenctx -a, before gdb stopped anything
        pages = [r for r in mine if r["type"] == "mapping"]
        assert [(int(r["va"], 16), int(r["pa"], 16)) for r in pages] == \
            [(d["marker"]["va"], d["marker"]["mfn"] << 12)]
