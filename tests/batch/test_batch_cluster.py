"""xen-pte-dump --scheduler: the same fleet on a real dask.distributed.LocalCluster (2 worker
processes) as on the local process pool.

* A mixed fleet — good dumps, a corrupt one, a live QEMU guest — gives the same records, byte
  for byte once sorted, on both; ``-o DIR/`` gives one file per target holding exactly its records.
* A worker killed (SIGKILL) while it reads a target: the scheduler runs the task again on another
  worker and the output has every record once — nothing lost, nothing twice.
* Ctrl-C: the tool exits at once, the cluster holds none of its tasks afterwards, and the walks
  that were under way on the workers stop.
"""

import collections
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from batchrun import ROOT, read_jsonl, run_tool
from fleet import write_fleet

if str(ROOT) not in sys.path:  # the workers import scripts.batch by this name
    sys.path.insert(0, str(ROOT))


def _cluster():
    from distributed import LocalCluster
    return LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                        dashboard_address=":0", silence_logs=logging.ERROR)


@pytest.fixture(scope="module")
def cluster():
    with _cluster() as c:
        yield c


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    return write_fleet(tmp_path_factory.mktemp("cluster-fleet"))


@pytest.fixture(scope="module")
def big_dumps(tmp_path_factory):
    """Dumps that take seconds to walk with --no-coalesce (40,000 records each)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_batch import make_dump
    d = tmp_path_factory.mktemp("big")
    paths = []
    for i in range(3):
        paths.append(d / f"big{i}.elf")
        make_dump(str(paths[-1]), 40_000, seed=i)
    return paths


def _sorted_lines(path):
    return sorted(path.read_text().splitlines())


@pytest.mark.live
def test_mixed_fleet_equals_the_local_pool(cluster, fleet, tmp_path):
    from tests.targets.oracle import build_guest
    from tests.targets.qemu import Qemu
    args = ["-kernel", str(build_guest("long")), "-append", "paging=4"]
    with Qemu(args, memory="32M", workdir=tmp_path / "guest") as vm:
        vm.wait_for_serial(r"^ORACLE: done", 60)  # then it halts: its tables stay as they are
        targets = ["--core", *(fleet[n] for n in ("hvm-a.elf", "corrupt.elf", "hvm-b.kdump",
                                                  "pv64.xc")),
                   "--remote", f"127.0.0.1:{vm.gdb_port}", "--vcpu", "all"]
        local, dask_out = tmp_path / "local.jsonl", tmp_path / "dask.jsonl"
        per_target = tmp_path / "per-target"
        per_target.mkdir()
        res_local = run_tool("xen_pte_dump", *targets, "-j", "2", "-o", local, "--summary")
        res_dask = run_tool("xen_pte_dump", *targets, "--scheduler", cluster.scheduler_address,
                            "-o", dask_out, "--summary")
        res_env = run_tool("xen_pte_dump", *targets, "-o", f"{per_target}/", "--quiet",
                           env={"DASK_SCHEDULER_ADDRESS": cluster.scheduler_address})
        assert "running" in vm.monitor("info status")  # every run let the guest go
    for res in (res_local, res_dask, res_env):
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr  # corrupt.elf
    assert _sorted_lines(dask_out) == _sorted_lines(local)
    recs = read_jsonl(local)
    kinds = collections.Counter((os.path.basename(r["target"]), r["type"]) for r in recs)
    assert kinds[("corrupt.elf", "error")] == 1
    assert kinds[(f"127.0.0.1:{vm.gdb_port}", "header")] == 1
    assert kinds[(f"127.0.0.1:{vm.gdb_port}", "mapping")] > 10
    # Streamed in target order, each target's records together.
    order = [r["target"] for r in read_jsonl(dask_out)]
    firsts = list(dict.fromkeys(order))
    assert order == sorted(order, key=firsts.index)
    assert [os.path.basename(t) for t in firsts] == ["hvm-a.elf", "corrupt.elf", "hvm-b.kdump",
                                                     "pv64.xc", f"127.0.0.1:{vm.gdb_port}"]
    # The summary tables do not depend on where the targets ran.
    assert res_dask.stdout == res_local.stdout
    # -o DIR/ (the scheduler from $DASK_SCHEDULER_ADDRESS): one file per target, its records.
    files = sorted(os.listdir(per_target))
    assert files == sorted(["hvm-a.elf.jsonl", "corrupt.elf.jsonl", "hvm-b.kdump.jsonl",
                            "pv64.xc.jsonl", f"127.0.0.1_{vm.gdb_port}.jsonl"])
    for name in files:
        got = (per_target / name).read_text().splitlines()
        target = json.loads(got[0])["target"]
        assert got == [ln for ln in local.read_text().splitlines()
                       if json.loads(ln)["target"] == target]


def _processing(client, prefix):
    """worker address -> keys of our tasks it is running (the scheduler's view)."""
    return {w: [k for k in keys if str(k).startswith(prefix)]
            for w, keys in client.processing().items()}


def _run_killing(client, cluster, targets, out, key_prefix):
    """Run xen-pte-dump on the cluster; SIGKILL the worker running ``key_prefix`` half a second
    into it. Return (the tool's CompletedProcess-like (returncode, stderr), the task key)."""
    tool = subprocess.Popen(
        [sys.executable, "-m", "scripts.xen_pte_dump", *map(str, targets), "--scheduler",
         cluster.scheduler_address, "-o", str(out), "--quiet"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        killed = None
        deadline = time.monotonic() + 120
        while killed is None and time.monotonic() < deadline and tool.poll() is None:
            for worker, keys in _processing(client, key_prefix).items():
                if keys:
                    time.sleep(0.5)  # well inside the walk (about 3 s)
                    pid = client.run(os.getpid, workers=[worker])[worker]
                    os.kill(pid, signal.SIGKILL)
                    killed = keys[0], pid
                    break
            time.sleep(0.05)
        assert killed is not None, f"never saw {key_prefix} running on a worker"
        _stdout, stderr = tool.communicate(timeout=300)
    finally:
        if tool.poll() is None:
            tool.kill()
    return tool.returncode, stderr, killed


def test_worker_killed_during_a_target_loses_and_repeats_nothing(big_dumps, fleet, tmp_path):
    from distributed import Client
    targets = ["--core", fleet["hvm-b.kdump"], *big_dumps, "--no-coalesce"]
    local = tmp_path / "local.jsonl"
    assert run_tool("xen_pte_dump", *targets, "-j", "2", "-o", local,
                    "--quiet").returncode == 0
    out = tmp_path / "dask.jsonl"
    with _cluster() as cluster, Client(cluster.scheduler_address) as client:
        code, stderr, (key, pid) = _run_killing(client, cluster, targets, out,
                                                "xen-pte-dump-1-big0")
        assert code == 0, stderr
        # The dead worker's task directory went with the task that ran again.
        import glob
        import tempfile
        assert not glob.glob(f"{tempfile.gettempdir()}/xen-pte-dump-task-{pid}-*")
        # The scheduler saw the worker die while it ran our task, and ran the task again.
        story = client.run_on_scheduler(
            lambda dask_scheduler, key=key: [(t.start, t.finish, t.stimulus_id)
                                             for t in dask_scheduler.story(key)])
        lost = [i for i, (a, b, why) in enumerate(story)
                if (a, b) == ("processing", "released") and "worker" in why]
        assert lost, story
        assert ("processing", "memory") in [(a, b) for a, b, _w in story[lost[0]:]], story
    got = out.read_text().splitlines()
    assert sorted(got) == _sorted_lines(local)
    assert len(got) == len(set(got))  # no record twice
    heads = collections.Counter(json.loads(ln)["target"] for ln in got
                                if '"type":"header"' in ln)
    assert set(heads.values()) == {1} and len(heads) == 4


def test_worker_deaths_past_the_retries_are_an_error_record(big_dumps, fleet, tmp_path):
    """allowed-failures 0: the first worker death fails the task (KilledWorker): that target gets
    one error record, the others all their records (or one error each), exit status 1."""
    import dask
    from distributed import Client
    targets = ["--core", fleet["hvm-b.kdump"], *big_dumps[:2], "--no-coalesce"]
    out = tmp_path / "dask.jsonl"
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = _cluster()
    with cluster, Client(cluster.scheduler_address) as client:
        code, stderr, _key = _run_killing(client, cluster, targets, out, "xen-pte-dump-1-big0")
    assert code == 1 and "Traceback" not in stderr, stderr
    recs = read_jsonl(out)
    by_target = collections.defaultdict(list)
    for r in recs:
        by_target[os.path.basename(r["target"])].append(r["type"])
    assert set(by_target) == {"hvm-b.kdump", "big0.elf", "big1.elf"}
    assert by_target["big0.elf"] == ["error"]
    big0 = next(r for r in recs if r["type"] == "error" and r["target"].endswith("big0.elf"))
    assert "workers died while reading this target" in big0["message"]
    # A task that was merely queued on that worker counts as one it killed, too (Dask's rule):
    # every target is whole — all its records, or exactly one error record.
    complete = 0
    for name, types in by_target.items():
        if types != ["error"]:
            assert types[0] == "header" and types[-1] == "summary" and "error" not in types
            complete += 1
    assert complete >= 1


def test_ctrl_c_cancels_the_clusters_tasks(big_dumps, tmp_path):
    from distributed import Client
    many = [str(big_dumps[i % 3]) for i in range(3)]
    links = []
    for i in range(8):  # eight distinct targets (the same path twice is one target)
        link = tmp_path / f"t{i}.elf"
        link.symlink_to(many[i % 3])
        links.append(str(link))
    with _cluster() as cluster, Client(cluster.scheduler_address) as client:
        tool = subprocess.Popen(
            [sys.executable, "-m", "scripts.xen_pte_dump", "--core", *links, "--no-coalesce",
             "--scheduler", cluster.scheduler_address, "-o", str(tmp_path / "out.jsonl")],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while not any(_processing(client, "xen-pte-dump-").values()):
                assert time.monotonic() < deadline and tool.poll() is None
                time.sleep(0.05)
            tool.send_signal(signal.SIGINT)
            _out, err = tool.communicate(timeout=30)
        finally:
            if tool.poll() is None:
                tool.kill()
        assert tool.returncode == 130 and err.strip() == "xen-pte-dump: interrupted", err

        def ours(dask_scheduler):
            return [str(k) for k in dask_scheduler.tasks if str(k).startswith("xen-pte-dump-")]
        deadline = time.monotonic() + 20
        while client.run_on_scheduler(ours):
            assert time.monotonic() < deadline, client.run_on_scheduler(ours)
            time.sleep(0.2)

        # The walks under way stop too (a worker's thread cannot be killed: the task asks):
        # their gdbs are gone, where a finished task would have kept its gdb for the next.
        def gdbs():
            import psutil
            return [p.pid for p in psutil.Process().children() if p.name() == "gdb"]
        deadline = time.monotonic() + 10
        while any(client.run(gdbs).values()):
            assert time.monotonic() < deadline, client.run(gdbs)
            time.sleep(0.2)
    assert not (tmp_path / "out.jsonl").exists()  # nothing half-written left behind
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]


def test_bad_or_unreachable_scheduler_is_one_line(fleet):
    from tests.targets.qemu import free_tcp_port
    for address, text in ((f"tcp://127.0.0.1:{free_tcp_port()}", "cannot reach the Dask scheduler"),
                          ("bogus://x", "unknown address scheme"),
                          ("tcp://", "expected tcp://HOST:PORT")):
        start = time.monotonic()
        res = run_tool("xen_pte_dump", "--core", fleet["hvm-b.kdump"], "--scheduler", address)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        (line,) = res.stderr.splitlines()
        assert line.startswith(f"xen-pte-dump: --scheduler {address}: ") and text in line
        assert time.monotonic() - start < 30
    # $DASK_SCHEDULER_ADDRESS is the default; --scheduler '' is the local pool whatever it says.
    env = {"DASK_SCHEDULER_ADDRESS": "bogus://x"}
    res = run_tool("xen_pte_dump", "--core", fleet["hvm-b.kdump"], env=env)
    assert res.returncode == 2 and "--scheduler bogus://x: unknown address scheme" in res.stderr
    res = run_tool("xen_pte_dump", "--core", fleet["hvm-b.kdump"], "--scheduler", "", env=env)
    assert res.returncode == 0 and '"type":"header"' in res.stdout, res.stderr


def test_two_runs_at_once_on_one_cluster_keep_their_own_results(cluster, big_dumps, tmp_path):
    """Dask keeps one result per task key: two runs of the same target with other options
    (another user of the cluster, say) must not be handed each other's records."""
    def start(out, *extra):
        return subprocess.Popen(
            [sys.executable, "-m", "scripts.xen_pte_dump", "--core", str(big_dumps[0]), *extra,
             "--scheduler", cluster.scheduler_address, "-o", str(out), "--quiet"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    every, coalesced = tmp_path / "every.jsonl", tmp_path / "coalesced.jsonl"
    tools = [start(every, "--no-coalesce"), start(coalesced)]
    for tool in tools:
        _out, err = tool.communicate(timeout=300)
        assert tool.returncode == 0, err
    count = lambda path: sum(r["type"] == "mapping" for r in read_jsonl(path))  # noqa: E731
    assert count(every) == 40_000 and count(coalesced) == 1
