"""xen-pte-dump on a Dask cluster: each target one task on the cluster's workers.

``xen-pte-dump --scheduler ADDRESS`` (or ``$DASK_SCHEDULER_ADDRESS``) connects a
``distributed.Client`` and submits :func:`run_task` once per target. A worker runs the same
:func:`~scripts.batch.run_target` as a local pool worker (its own gdb, kept from one target to the
next, one per worker thread), into a temporary directory of its own, and hands back the target's
tagged JSON Lines *inside* the result (zlib-compressed), so that nothing depends on a file system
shared with the client. A result is one value: the client writes a target's records only once it
has all of them, so a task that is run again (its worker died: the scheduler reschedules it, up to
``distributed.scheduler.allowed-failures`` times) can never leave records twice or half-written.

Memory stays bounded whatever the number of targets: at most ``window`` targets are in flight or
waiting for an earlier one (records go out in target order), and xen-pte-dump keeps a result that
must wait in a file, not in memory.

Workers need gdb and this package (``pip install .[cluster]``); start them with::

    dask scheduler                       # prints tcp://HOST:8786
    dask worker tcp://HOST:8786 --nworkers 4 --nthreads 1

Failure modes: :class:`~scripts.cli.UsageError` when the scheduler cannot be reached or dask is
not installed; a task that fails on the cluster (``KilledWorker`` once retries are spent, a worker
without the package) becomes an error for that target — never an exception out of here.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import uuid
import zlib
from typing import Iterator, List, Optional

from .batch import Job, Run, TargetResult, release_session, run_target
from .cli import UsageError

__all__ = ["ENV", "cluster_results", "connect", "preflight_task", "run_task", "task_key"]

ENV = "DASK_SCHEDULER_ADDRESS"


TASK_PREFIX = "xen-pte-dump-task-"


def run_task(job: Job) -> TargetResult:
    """The task: read one target on a worker; its records come back inside the result."""
    _sweep_dead_workers()
    workdir = tempfile.mkdtemp(prefix=f"{TASK_PREFIX}{os.getpid()}-")
    try:
        res = run_target(dataclasses.replace(job, workdir=workdir, tag=True), _cancel_check())
        for run in res.runs:
            if run.path is not None:
                with open(run.path, "rb") as fh:
                    run.data = zlib.compress(fh.read(), 1)
                run.path = None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return res


def _sweep_dead_workers() -> None:
    """Remove task directories of worker processes that died mid-task (killed, OOM): their
    files were never handed back and nobody else will remove them."""
    tmp = tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(tmp) if n.startswith(TASK_PREFIX)]
    except OSError:
        return
    for name in names:
        pid = name[len(TASK_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
        except OSError:  # alive (another user's): not ours to touch
            pass


def _cancel_check():
    """A callable telling whether this task was cancelled on the cluster (Ctrl-C on the client):
    the worker thread cannot be killed, so the walk asks and stops (detaching a live guest)."""
    try:
        from distributed import get_worker
        worker = get_worker()
        key = worker.get_current_task()
    except (ImportError, ValueError):  # not on a Dask worker
        return None

    def cancelled() -> bool:
        ts = worker.state.tasks.get(key)
        return ts is None or ts.state in ("cancelled", "released", "forgotten")
    return cancelled


def preflight_task(gdb: str, command: str, options: List[str]) -> Optional[str]:
    """On a worker: can it run gdb with the extension, and are the options good? (the error)

    The gdb started here stays as the worker thread's kept session: the first target there
    does not start another.
    """
    from .batch import Job, Target, _session
    from .mi import GdbFailure
    try:
        session = _session(Job(Target("core", ""), command, (), None, "", -1, gdb=gdb), None)
        if any("$" in o for o in options):
            return None
        return session.check_options(command, ["--json", *options])
    except GdbFailure as failure:
        release_session()
        return f"on the cluster's worker: {failure}"


def task_key(job: Job, run: str) -> str:
    """The task's name on the dashboard (and in tests): the target's index and label, and the
    run's own token — Dask takes one key for one result, so two runs (other options, other
    users of the cluster) must never share a key."""
    return f"xen-pte-dump-{job.index}-{os.path.basename(job.target.label)[:60]}-{run}"


def connect(address: str):
    """A ``distributed.Client`` for ``address``.

    :raises UsageError: dask missing, or no scheduler answers there.
    """
    try:
        from distributed import Client
    except ImportError:
        raise UsageError(f"--scheduler {address}: dask.distributed is not installed "
                         "(pip install 'gdb_xenpte[cluster]')") from None
    from distributed.comm.addressing import parse_address
    from distributed.comm.registry import get_backend
    try:  # before any Client exists: a half-made one times out again when collected
        scheme, location = parse_address(address)
        get_backend(scheme)
    except ValueError as err:
        raise UsageError(f"--scheduler {address}: {_one_line(err)}") from None
    if not location:
        raise UsageError(f"--scheduler {address}: expected tcp://HOST:PORT")
    try:
        return Client(address, timeout="10s", set_as_default=False)
    except (OSError, TimeoutError) as err:
        raise UsageError(f"--scheduler {address}: cannot reach the Dask scheduler "
                         f"({_one_line(err)})") from None
    except ValueError as err:  # a malformed address
        raise UsageError(f"--scheduler {address}: {_one_line(err)}") from None


def cluster_results(client, jobs: List[Job], window: Optional[int] = None,
                    ordered: bool = True) -> Iterator[TargetResult]:
    """Results as they complete, at most ``window`` targets ahead of the next one in order.

    ``ordered``: the window counts from the first target not yet handed back in index order
    (the caller writes in order and holds what arrives early); otherwise it counts results not
    yet handed back. On exit — done, an error or Ctrl-C — every task still pending is
    cancelled on the cluster.
    """
    from distributed import as_completed
    if window is None:
        threads = sum(client.nthreads().values()) or 1
        window = max(8, 4 * threads)
    pending = iter(jobs)
    futures = {}
    done_index = set()
    next_out = 0
    stream = as_completed(loop=client.loop)
    run = uuid.uuid4().hex[:12]

    def top_up():
        nonlocal next_out
        while next_out in done_index:
            next_out += 1
        limit = (next_out if ordered else len(done_index)) + window
        while len(futures) + len(done_index) < limit:
            job = next(pending, None)
            if job is None:
                return
            fut = client.submit(run_task, job, key=task_key(job, run), pure=False)
            futures[fut.key] = (fut, job)
            stream.add(fut)

    try:
        top_up()
        while futures:
            fut = next(stream)
            _fut, job = futures.pop(fut.key)
            try:
                res = fut.result()
            except BaseException as err:  # noqa: BLE001 — KilledWorker, a worker's import error
                if isinstance(err, KeyboardInterrupt):
                    raise
                res = TargetResult(job.target, [Run(None, [], None, _task_error(err))], 0.0)
            fut.release()
            done_index.add(job.index)
            top_up()
            yield res
    finally:
        if futures:
            client.cancel([f for f, _j in futures.values()], force=True)


def _task_error(err: BaseException) -> str:
    name = type(err).__name__
    if name == "KilledWorker":
        return ("the cluster's workers died while reading this target, on every try "
                "(distributed.scheduler.allowed-failures)")
    if name == "CancelledError":
        return "cancelled on the cluster"
    return f"task failed on the cluster: {name}: {_one_line(err)}"


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
