"""README's batch blocks run as written (issue 14): "Batch, many dumps" and "A fleet on a Dask
cluster", each line through bash in a directory holding the files it names.

``xen-pte-dump`` / ``xen-pte-diff`` on PATH are this checkout's (``python3 -m scripts...``), so the
test runs the code under test, not an installed copy. What a shared machine forces: the live
gdbstub and the Dask scheduler listen on free ports instead of 1234 / 8786 (``HOST`` is
127.0.0.1), and ``/shared/dumps`` is a directory of this test's.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from batchrun import ROOT, read_jsonl
from fleet import write_fleet

sys.path.insert(0, str(ROOT / "tests"))
from readme_examples import shell_lines  # noqa: E402


def _commands(title):
    """The block's shell commands, continuation lines joined."""
    out, pending = [], ""
    for line in shell_lines(title):
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        out.append(pending + line)
        pending = ""
    return out


@pytest.fixture
def shell(tmp_path):
    """Run one README line with bash in ``tmp_path/work``; our tools first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, module in (("xen-pte-dump", "xen_pte_dump"), ("xen-pte-diff", "xen_pte_diff")):
        path = bin_dir / tool
        path.write_text(f'#!/bin/sh\nexec {sys.executable} -m scripts.{module} "$@"\n')
        path.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHONPATH=str(ROOT))
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    work = tmp_path / "work"
    work.mkdir()

    def run(line, timeout=300):
        return subprocess.run(["bash", "-c", line], cwd=work, env=env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    run.work, run.env = work, env
    return run


@pytest.mark.live
def test_batch_block_as_written(shell, tmp_path):
    from tests.targets.oracle import build_guest
    from tests.targets.qemu import Qemu
    (tmp_path / "fleet").mkdir()
    fleet = write_fleet(tmp_path / "fleet")
    work = shell.work
    (work / "dumps").mkdir()
    shutil.copy(fleet["hvm-a.elf"], work / "dumps" / "hvm-a.elf")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_batch import make_dump
    make_dump(str(work / "dumps" / "small.elf"), 5)
    shutil.copy(fleet["pv64.xc"], work / "crash.core")
    for dump, name in ((fleet["hvm-a.elf"], "before.jsonl"), (fleet["hvm-b.kdump"], "after.jsonl")):
        assert shell(f"xen-pte-dump --core {dump} -o {name} --quiet").returncode == 0
    walk_all, check, live, diff = _commands("Batch, many dumps")

    res = shell(walk_all)
    assert res.returncode == 0, res.stderr
    targets = {os.path.basename(r["target"]) for r in read_jsonl(work / "walks.jsonl")}
    assert targets == {"hvm-a.elf", "small.elf"}
    assert "== triage: 2 targets" in res.stdout

    res = shell(check)
    assert res.returncode == 0, res.stderr
    assert re.search(r"what-if\s+xen=4\.6: changes\s+\d+", res.stdout), res.stdout

    args = ["-kernel", str(build_guest("long")), "-append", "paging=4"]
    with Qemu(args, memory="32M", workdir=tmp_path / "guest") as vm:
        vm.wait_for_serial(r"^ORACLE: done", 60)
        res = shell(live.replace("127.0.0.1:1234", f"127.0.0.1:{vm.gdb_port}"))
        assert "running" in vm.monitor("info status")
    assert res.returncode == 0, res.stderr
    rows = (work / "live.csv").read_text().splitlines()
    assert rows[0].startswith("type,target,vcpu,va") and rows[1].startswith("mapping,")

    res = shell(diff)
    assert res.returncode == 1, res.stderr  # differences, as diff(1)
    kinds = {json.loads(ln)["type"] for ln in res.stdout.splitlines()}
    assert {"added", "removed", "changed", "summary"} <= kinds


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the dask scheduler exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port} after {timeout} s")


def test_dask_cluster_block_as_written(shell, tmp_path):
    (tmp_path / "fleet").mkdir()
    fleet = write_fleet(tmp_path / "fleet")
    shared = tmp_path / "shared" / "dumps"
    shared.mkdir(parents=True)
    for name in ("hvm-a.elf", "hvm-b.kdump", "pv64.xc"):
        shutil.copy(fleet[name], shared / name)
    port = _free_port()
    here = {"tcp://HOST:8786": f"tcp://127.0.0.1:{port}", "/shared/dumps": str(shared)}

    def local(line):
        for a, b in here.items():
            line = line.replace(a, b)
        return line
    scheduler, worker, run, env_run = _commands("A fleet on a Dask cluster")
    assert scheduler.split("#")[0].split() == ["dask", "scheduler"]
    procs = []
    try:
        procs.append(subprocess.Popen(
            ["bash", "-c", f"exec {scheduler.split('#')[0]} --host 127.0.0.1 --port {port} "
                           "--dashboard-address :0"],
            cwd=shell.work, env=shell.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True))
        _wait_listening(port, procs[0])
        procs.append(subprocess.Popen(
            ["bash", "-c", "exec " + local(worker)], cwd=shell.work, env=shell.env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))

        res = shell(local(run))
        assert res.returncode == 0, res.stderr
        results = shell.work / "results"
        assert sorted(os.listdir(results)) == ["hvm-a.elf.jsonl", "hvm-b.kdump.jsonl",
                                               "pv64.xc.jsonl"]
        for name in os.listdir(results):
            recs = read_jsonl(results / name)
            assert {r["target"] for r in recs} == {str(shared / name[:-len(".jsonl")])}
            assert {r["type"] for r in recs} >= {"what-if"}
        doc = json.loads((shell.work / "triage.json").read_text())
        assert doc["targets"] == 3 and doc["failed"] == 0
        groups = {g["group"]: g["targets"] for g in doc["triage"]}
        assert str(shared / "pv64.xc") in groups["anomaly: pv-disallowed"]
        assert "== triage: 3 targets" in res.stdout

        res = shell(local(env_run))
        assert res.returncode == 0, res.stderr
        assert "== triage: 3 targets" in res.stdout
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
