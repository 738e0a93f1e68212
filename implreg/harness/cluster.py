"""``implreg verify --cluster ADDRESS``: run the claims on an existing Dask distributed cluster.

Why Dask distributed (issue 12): its wheels are pure Python (dask + distributed, about 2 MB, seconds to install
on a CPU CI machine); ``LocalCluster`` starts real worker processes in-process for the tests; a two-machine
cluster is started with the engine's own commands (``dask scheduler`` on one, ``dask worker tcp://HOST:8786`` on
each); dask-cuda gives one worker per GPU (each with its own ``CUDA_VISIBLE_DEVICES``).  Ray is the usual engine
of GPU clusters, but its wheels are hundreds of MB and a Ray head is heavy for CI.  We build no scheduler, queue or
wire protocol of our own: Dask schedules, retries and moves the data.

What runs where:

- the client (this process) collects the claims exactly as the local run does (pytest collection through the
  implreg plugin: file, node id, claim id, ``-k``/``--id`` filters, collection errors);
- each claim is one Dask task (the level pytest-xdist distributes locally): the worker imports the claim files
  the way pytest does (``_pytest.pathlib.import_path``, so module names and ids are the same), and calls
  ``implreg.harness.runner.claim_record`` — the same ``run_claim`` as the local run, with the run's profile and
  seed, so verdicts, instance counts, counterexamples, ``@reproduce_failure`` blobs and ``reproduce`` commands
  are those of a local run;
- a pooled claim (``@claim(..., instances=N)``) runs its driver in its task, and ``WorkerMap`` spreads its groups
  over the cluster as tasks of their own through ``run_claim(map_groups=...)`` (``SPREAD_GROUPS``); the driver
  merges their recorders in group order, so the record is the local run's;
- the records are written into a run directory and merged by the same ``cli.finish_run`` (results.json and the
  HTML report), so the outputs are identical in form.

Faults.  A task whose worker dies is rescheduled by Dask on another worker (``distributed.scheduler.
allowed-failures``, default 3 deaths per task, then ``KilledWorker``); a task that raises is re-run up to
``retries`` times (Dask's ``retries=``).  The number of times each claim's task was rescheduled or re-run is read
from the scheduler and kept in the record (``timing.retries``: it depends on scheduling, not on the claim, so it
sits with the other run-dependent values) and in the run header (``cluster.retries``).  A claim whose task cannot
be run is an ``error`` record that says why; it is never lost and never ``holds``.

This module is imported only with ``--cluster``; without it nothing here (or in dask) is imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ClaimTask", "ClusterError", "ClusterMap", "WorkerMap", "check_workers", "connect", "implreg_digest",
           "run_claim_task", "run_on_cluster"]

# Dask re-runs a task that *raised* this many more times (retries=); worker deaths are counted separately by the
# scheduler's allowed-failures.  Two: a transient failure (a worker's disk or memory) is retried, a claim file that
# cannot be imported on any worker is not retried for long.
DEFAULT_RETRIES = 2


# Environment variables that change what a claim checks, so the worker must see the client's values: the pooled
# body size (IMPLREG_POOL_SIZE, implreg.harness.pooling) decides how examples are grouped.  Variables that only
# change speed (IMPLREG_COMPILE, IMPLREG_TORCH_THREADS) stay the worker's own: they suit its machine.
FORWARDED_ENV = ("IMPLREG_POOL_SIZE",)


# whether a pooled claim's groups are spread over the cluster as tasks of their own (see run_claim_task)
SPREAD_GROUPS = True


class ClusterError(RuntimeError):
    """A task could not be run on the cluster (after its retries)."""


@dataclass(frozen=True)
class ClaimTask:
    """What a worker needs to run one collected claim (plain, picklable data)."""

    nodeid: str
    claim_id: str
    file: str                   # absolute path on the client
    relfile: str                # the same file relative to the client's working directory
    cwd: str                    # the client's working directory (reproduce commands are relative to it)
    files: tuple[str, ...]      # every collected claim file: imported first, as every pytest process does
    digests: dict[str, str]     # sha256 of each file's bytes on the client: the worker must run the same text
    profile: str
    seed: int
    meta: dict[str, Any]        # the collected metadata (statement, expectation, …), for an error record
    env: dict[str, str | None]  # the client's values of FORWARDED_ENV (None: unset), in force during the task
    code: str = ""              # implreg_digest() on the client: the worker must have loaded the same implreg


def connect(address: str, timeout_s: float = 30.0) -> Any:
    """A Dask client for the scheduler at ``address`` (``tcp://host:8786``, or a ``LocalCluster``'s address)."""
    from distributed import Client

    return Client(address, timeout=timeout_s)


# ------------------------------------------------------------------------------------------------
# on the worker
# ------------------------------------------------------------------------------------------------
def _resolve(task: ClaimTask, path: str) -> Path:
    """The claim file on this machine: the client's absolute path (shared file system, a LocalCluster), else the
    same path relative to the worker's working directory (each machine has the same checkout)."""
    p = Path(path)
    if p.exists():
        return p
    rel = Path(os.path.relpath(path, task.cwd))
    if rel.exists():
        return rel.resolve()
    raise FileNotFoundError(f"claim file {path} is not on this worker (neither at that path nor at {rel} relative "
                            f"to the worker's directory {os.getcwd()}): start the worker in a checkout of the "
                            "same project")


def _import(path: Path) -> Any:
    from _pytest.pathlib import ImportMode, import_path

    # prepend mode: what `implreg verify` gives pytest by default, so a file gets the same module name here
    return import_path(path, mode=ImportMode.prepend, root=path.parent, consider_namespace_packages=False)


def _digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def implreg_digest(root: str | Path | None = None) -> str:
    """sha256 of the implreg package's source tree as it is on disk now: every file under ``root`` (default: the
    installed package) but byte code, by path relative to ``root`` and content, so two checkouts of the same
    commit agree wherever they sit."""
    base = Path(root) if root is not None else Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted(p for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        rel = f.relative_to(base).as_posix().encode()
        h.update(len(rel).to_bytes(8, "little") + rel)
        data = f.read_bytes()
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


# The implreg this process loaded: taken when this module is first imported, which on a worker is when it unpickles
# its first implreg task (implreg itself is imported in the same breath).  Python does not reload a changed
# module, so a long-lived worker keeps running the implreg of that moment; a client whose implreg differs must not
# use it (issue 12: it would give verdicts of the old code under the new code's name).
_LOADED_CODE = implreg_digest()


def worker_code() -> dict[str, str]:
    """This process's implreg: the digest it loaded and the one now on its disk (``client.run`` target)."""
    return {"loaded": _LOADED_CODE, "disk": implreg_digest()}


def _stale_reason(address: str, have: dict[str, str], want: str) -> str | None:
    """Why the worker at ``address`` (``worker_code()`` there) cannot run for a client whose implreg is ``want``;
    None if it can."""
    if have["loaded"] == want:
        return None
    if have["disk"] == want:
        return (f"worker {address} loaded implreg {have['loaded'][:12]} before its files changed to this client's "
                f"{want[:12]}: it is stale, restart it")
    return (f"worker {address} runs implreg {have['loaded'][:12]}, this client {want[:12]} (its disk has "
            f"{have['disk'][:12]}): it is another checkout or version; install this one there and restart it")


def check_code(task_code: str) -> None:
    """On a worker, before any task: refuse to run for a client whose implreg is not the one loaded here."""
    if not task_code or task_code == _LOADED_CODE:
        return
    from distributed import get_worker

    why = _stale_reason(get_worker().address, worker_code(), task_code)
    if why is not None:
        raise ClusterError(why)


def check_workers(client: Any, want: str) -> None:
    """On the client, before submitting: every worker must have loaded the client's implreg (``ClusterError``
    listing the ones that have not, with what to do)."""
    found = client.run(worker_code)
    bad = [why for addr, have in sorted(found.items()) if (why := _stale_reason(addr, have, want)) is not None]
    if bad:
        raise ClusterError(f"{len(bad)} of {len(found)} workers cannot run this implreg: " + "; ".join(bad)
                           + ".  Python does not reload a changed package, so workers must be restarted after "
                           "implreg changes (stop and start `dask worker`, or `Client(ADDRESS).restart()`); "
                           "claim files are re-read per run and need no restart.")


def _checked(fn: Callable[[Any], Any], item: Any, code: str) -> Any:
    """``fn(item)`` on a worker that has loaded implreg ``code`` (a pooled claim's group task)."""
    check_code(code)
    return fn(item)


# sha256 of each claim file as this worker process imported it: a long-lived worker keeps modules in sys.modules,
# so a file edited since (the next run of a conjecture being written) must be imported again, not reused
_IMPORTED: dict[str, str] = {}


def _import_current(task: ClaimTask, client_path: str) -> Any:
    """Import a claim file on this worker, checked to be the client's text and re-imported if it changed."""
    path = _resolve(task, client_path)
    have = _digest(path)
    want = task.digests.get(client_path)
    if want is not None and have != want:
        raise ClusterError(f"{path} on this worker differs from {client_path} on the client (sha256 {have[:12]} vs "
                           f"{want[:12]}): the worker's checkout is not the client's")
    key = str(path.resolve())
    if _IMPORTED.get(key, have) != have:
        for name, mod in list(sys.modules.items()):
            if getattr(mod, "__file__", None) and Path(mod.__file__).resolve() == path.resolve():
                del sys.modules[name]
    module = _import(path)
    _IMPORTED[key] = have
    return module


@contextlib.contextmanager
def _environ(values: dict[str, str | None]) -> Iterator[None]:
    """The client's values of ``FORWARDED_ENV`` for the duration of a task (the worker's own restored after)."""
    saved = {k: os.environ.get(k) for k in values}

    def put(vals: dict[str, str | None]) -> None:
        for k, v in vals.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    put(values)
    try:
        yield
    finally:
        put(saved)


def _one_torch_thread() -> None:
    # as in an xdist worker (plugin._one_thread_per_worker): worker processes already occupy the cores
    torch = sys.modules.get("torch")
    if torch is None:
        import torch
    torch.set_num_threads(int(os.environ.get("IMPLREG_TORCH_THREADS", "1")))


def _accepts_map_groups() -> bool:
    import inspect

    from implreg.harness.verdict import run_claim

    return "map_groups" in inspect.signature(run_claim).parameters


_RANDOM_NOTE = "Do not use the `random` module inside strategies"


def _quiet_dask_random() -> None:
    """Drop Hypothesis' "Do not use the `random` module inside strategies" on a worker.  Dask's event-loop thread
    draws from the global ``random`` (distributed.worker_state_machine picks a peer to fetch from with
    ``random.choice``) while Hypothesis draws an example in the task's thread; Hypothesis sees the global state
    change during the draw and blames the strategy, which did nothing (seen on every ReLU claim of W4, 2026-12-06).
    A strategy that really uses ``random`` still warns in a local run."""
    from hypothesis.errors import HypothesisDeprecationWarning

    # idempotent: filterwarnings replaces an identical filter instead of adding a second one
    warnings.filterwarnings("ignore", message=_RANDOM_NOTE, category=HypothesisDeprecationWarning)


def run_claim_task(task: ClaimTask, retries: int = DEFAULT_RETRIES) -> dict[str, Any]:
    """Run one claim on a worker: its record and the worker's environment (device, torch threads).

    A pooled claim (``@claim(..., instances=N)``) runs its driver here and its groups as tasks of their own over
    the whole cluster (``WorkerMap``): the driver is what decides the verdict and is the same code as on a laptop,
    and the groups are where the time goes.  Their re-runs are added to the claim's retries."""
    from distributed import get_worker

    from implreg.harness.claims import get_spec
    from implreg.harness.profiles import get_profile
    from implreg.harness.results import process_environment
    from implreg.harness.runner import claim_record

    check_code(task.code)
    _one_torch_thread()
    _quiet_dask_random()
    if os.path.isdir(task.cwd):
        # reproduce commands are written relative to the working directory, as on the client
        os.chdir(task.cwd)
    for other in task.files:
        # a worker imports every collected file, as each pytest process does, so that a duplicate claim id in
        # another file is found here too; a file that fails to import is the collection's error record
        try:
            _import_current(task, other)
        except Exception:  # recorded as a collection error by the client
            continue
    module = _import_current(task, task.file)
    name = task.nodeid.rsplit("::", 1)[-1]
    spec = get_spec(getattr(module, name, None))
    if spec is None or spec.id != task.claim_id:
        raise ClusterError(f"{task.nodeid}: no claim {task.claim_id!r} in {module.__file__} on this worker "
                           "(a different version of the file?)")
    wmap = WorkerMap(retries, code=task.code)
    # A group may land in the driver's own worker process (on a thread, while the driver waits): the group task
    # calls the claim's body (``__implreg_body__``), not the wrapper the driver has installed meanwhile.
    kwargs = {"map_groups": wmap} if SPREAD_GROUPS and _accepts_map_groups() else {}
    with _environ(task.env):
        record = claim_record(spec, profile=get_profile(task.profile), seed=task.seed, nodeid=task.nodeid,
                              worker=get_worker().address, **kwargs)
    if wmap.groups:
        record["timing"]["groups"] = wmap.groups
        record["timing"]["group_retries"] = wmap.retries_total
    return {"record": record, "env": process_environment()}


# ------------------------------------------------------------------------------------------------
# on the client
# ------------------------------------------------------------------------------------------------
def _attempts(dask_scheduler: Any, keys: Sequence[str], retries: int) -> dict[str, int]:
    """Per task key: how often the scheduler re-ran it (it raised) or rescheduled it (its worker died)."""
    out = {}
    for k in keys:
        ts = dask_scheduler.tasks.get(k)
        if ts is not None:
            out[k] = int(ts.suspicious) + max(0, retries - int(ts.retries))
    return out


def _retry_counts(client: Any, keys: Sequence[str], retries: int) -> dict[str, int]:
    try:
        return client.run_on_scheduler(_attempts, keys=list(keys), retries=retries)
    except Exception:  # a scheduler that refuses run_on_scheduler: the counts are unknown, not zero
        return {}


def _describe(exc: BaseException) -> str:
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        return (f"every worker that ran it died ({exc.allowed_failures + 1} attempts, the scheduler's "
                f"allowed-failures): {exc}")
    return f"{type(exc).__name__}: {exc}"


class ClusterMap:
    """``map_groups(fn, items) -> list`` over a Dask client: one task per item, re-run up to ``retries`` times,
    results in the order of ``items``; ``retries_total`` counts the re-runs and reschedulings (for the report).

    Raises ``ClusterError`` naming the first item that could not be run: a caller never gets a partial list.
    """

    def __init__(self, client: Any, retries: int = DEFAULT_RETRIES, prefix: str = "implreg-group", code: str = ""):
        self.client = client
        self.retries = retries
        self.prefix = prefix
        self.code = code  # the client's implreg_digest(): each task checks its worker loaded it ("": no check)
        self.retries_total = 0
        self.calls = 0

    def __call__(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        from distributed import wait

        items = list(items)
        self.calls += 1
        # unique per call: Dask shares the result of equal keys, and other runs may use the same cluster
        tag = f"{self.prefix}-{uuid.uuid4().hex}"
        futures = [self.client.submit(_checked, fn, item, self.code, key=f"{tag}-{i}", retries=self.retries,
                                      pure=False) for i, item in enumerate(items)]
        try:
            wait(futures)
            self.retries_total += sum(_retry_counts(self.client, [f.key for f in futures], self.retries).values())
            out = []
            for i, fut in enumerate(futures):
                if fut.status != "finished":
                    exc = fut.exception() if fut.status == "error" else None
                    raise ClusterError(f"group {i + 1} of {len(items)} could not be run on the cluster: "
                                       + (_describe(exc) if exc is not None else f"task {fut.status}"))
                out.append(fut.result())
            return out
        finally:
            for fut in futures:
                fut.release()


class WorkerMap:
    """``map_groups`` for a task already running on a worker (a pooled claim's driver): each call spreads the
    groups over the cluster through the worker's own client (``distributed.worker_client``), which takes this
    task's thread out of the worker's pool while it waits, so that single-threaded workers cannot deadlock and
    no core runs two things at once.  Outside a call nothing is seceded: a claim that never maps runs as before.
    """

    def __init__(self, retries: int = DEFAULT_RETRIES, code: str = ""):
        self.retries = retries
        self.code = code
        self.retries_total = 0
        self.groups = 0

    def __call__(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        from distributed import worker_client

        items = list(items)
        with worker_client() as client:
            cmap = ClusterMap(client, self.retries, code=self.code)
            try:
                return cmap(fn, items)
            finally:
                self.retries_total += cmap.retries_total
                self.groups += len(items)


def run_on_cluster(client: Any, tasks: Sequence[ClaimTask], *, retries: int = DEFAULT_RETRIES,
                   progress: Callable[[dict[str, Any]], None] | None = None
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Run ``tasks`` as one Dask task each: their records (one per task, in task order), the workers'
    environments, and the cluster facts for the run header (address, workers, retries, claims not run)."""
    from distributed import as_completed

    from implreg.harness.runner import error_record

    workers = len(client.scheduler_info()["workers"])
    t0 = time.perf_counter()
    run = uuid.uuid4().hex  # keys unique to this run: Dask shares the result of equal keys between clients
    futures = [client.submit(run_claim_task, t, retries, key=f"implreg-claim-{run}-{i}-{t.claim_id}",
                             retries=retries, pure=False) for i, t in enumerate(tasks)]
    index = {f.key: i for i, f in enumerate(futures)}
    outcomes: list[dict[str, Any] | BaseException | None] = [None] * len(tasks)
    try:
        for fut in as_completed(futures):
            i = index[fut.key]
            try:
                outcomes[i] = fut.result()
            except Exception as exc:  # recorded as the claim's error below
                outcomes[i] = exc
            if progress is not None and isinstance(outcomes[i], dict):
                progress(outcomes[i]["record"])
        tasks_wall_s = time.perf_counter() - t0
        counts = _retry_counts(client, list(index), retries)
    finally:
        for fut in futures:
            fut.release()
    records, envs, unrun = [], [], []
    for t, fut, out in zip(tasks, futures, outcomes, strict=True):
        if isinstance(out, dict):
            record, env = out["record"], out["env"]
            envs.append(env)
        else:
            why = _describe(out) if out is not None else "the cluster returned no result"
            record = error_record(
                t.meta, kind="ClusterTaskFailed", message=why, profile=t.profile, seed=t.seed,
                explanation=f"The claim could not be run on the cluster: {why}. It has no verdict of its own.",
                reproduce=f"implreg verify {t.relfile} --id {t.claim_id} --seed {t.seed} --profile {t.profile} -n 1")
            record["nodeid"] = t.nodeid
            unrun.append(t.claim_id)
            if progress is not None:
                progress(record)
        retried = counts.get(fut.key)
        if retried is not None:
            retried += int(record["timing"].get("group_retries") or 0)
        record["timing"]["retries"] = retried
        records.append(record)
    known = [r["timing"]["retries"] for r in records if r["timing"]["retries"] is not None]
    info = {"address": str(client.scheduler.address), "workers": workers,
            "retries": sum(known), "retries_known": len(known) == len(tasks), "claims_not_run": unrun,
            # from the first submission to the last result: the claims' share of the run's wall time
            "timing": {"tasks_wall_s": round(tasks_wall_s, 3)}}
    return records, envs, info


def tasks_from_collection(claims: Sequence[dict[str, Any]], *, profile: str, seed: int,
                          code: str | None = None) -> list[ClaimTask]:
    """One task per collected claim row (``cli.collect_claims``), in collection order; ``code`` the client's
    :func:`implreg_digest` where the caller has it already."""
    cwd = os.getcwd()
    files = tuple(dict.fromkeys(str(Path(c["file"]).resolve()) for c in claims))
    digests = {f: _digest(f) for f in files}
    env = {k: os.environ.get(k) for k in FORWARDED_ENV}
    code = implreg_digest() if code is None else code
    out = []
    for c in claims:
        meta = {k: v for k, v in c.items() if k not in ("nodeid", "problems")}
        f = str(Path(c["file"]).resolve())
        out.append(ClaimTask(nodeid=c["nodeid"], claim_id=c["id"], file=f, relfile=os.path.relpath(f, cwd),
                             cwd=cwd, files=files, digests=digests, profile=profile, seed=seed,
                             meta=meta, env=env, code=code))
    return out


def wait_for_workers(client: Any, n: int = 1, timeout_s: float = 60.0) -> int:
    """Wait until the cluster has ``n`` workers (a cluster with none would queue the tasks forever)."""
    t0 = time.time()
    try:
        client.wait_for_workers(n, timeout=timeout_s)
    except Exception as exc:
        raise ClusterError(f"the cluster at {client.scheduler.address} has no worker after "
                           f"{time.time() - t0:.0f} s; start one with `dask worker {client.scheduler.address}`"
                           ) from exc
    return len(client.scheduler_info()["workers"])
