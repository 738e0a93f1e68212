"""`implreg verify --cluster`: the same claims on a real Dask LocalCluster (2 single-threaded worker processes).

Checked against the local run with the same seed: identical records (timing aside), a worker killed mid-claim
loses nothing (its task is rescheduled and the retry is reported), a claim that kills every worker it runs on is
`error` with the reason, and a counterexample found on a worker is reproduced locally by its record's command.
The claims are tiny files written here (not the heavy suite): CI runs this on 2 cores.
"""

import json
import math
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from implreg.harness import cluster as harness_cluster
from implreg.harness.cli import main
from implreg.harness.results import strip_timing

pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parents[1]

IDENTITIES = '''
from hypothesis import given
from hypothesis import strategies as st

from implreg import certify
from implreg.harness.claims import claim


@claim("cl/square-nonneg", kind="lemma", statement="x² ≥ 0 for integers.")
@given(x=st.integers(-1000, 1000))
def square_nonneg(x):
    certify.that(x * x >= 0, what="x² ≥ 0")


@claim("cl/abs-triangle", kind="lemma", statement="|x + y| ≤ |x| + |y| for integers.")
@given(x=st.integers(-1000, 1000), y=st.integers(-1000, 1000))
def abs_triangle(x, y):
    certify.that(abs(x + y) <= abs(x) + abs(y), what="|x + y| ≤ |x| + |y|")


@claim("cl/control-ge10", kind="conjecture", expect="refuted", refuted_by="x ≥ 10",
       statement="Every integer in [0, 1000] is at least 10 (false: the shrunk counterexample is x = 0).")
@given(x=st.integers(0, 1000))
def control_ge10(x):
    certify.at_least(float(x), 10.0, error=0.0, what="x ≥ 10")
'''

# the first attempt kills its worker process (as a segfault or the OOM killer would); the retry finds the marker
DIES_ONCE = '''
import os
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from implreg import certify
from implreg.harness.claims import claim

MARKER = Path(__file__).with_suffix(".died")


@claim("cl/survives-a-dead-worker", kind="lemma", statement="x² ≥ 0, the first attempt's worker dies.")
@given(x=st.integers(-100, 100))
def survives(x):
    if not MARKER.exists():
        MARKER.write_text("the first attempt died here")
        os._exit(17)
    certify.that(x * x >= 0, what="x² ≥ 0")


@claim("cl/always-dies", kind="lemma", statement="Its worker dies on every attempt.")
@given(x=st.integers(0, 3))
def always_dies(x):
    os._exit(18)
'''


# pooled claims (@claim(instances=N)): examples collected by the driver, checked in merged groups (pooling.py)
POOLED = '''
import torch
from hypothesis import given, strategies as st

from implreg import certify
from implreg.harness.claims import batches, claim
from implreg.numerics import Certified


@claim("pooled/square", statement="x² ≥ 0", instances=300)
@given(b=batches(st.floats(-1e3, 1e3, allow_nan=False), max_size=16))
def square(b):
    x = torch.tensor(b, dtype=torch.float64)
    certify(Certified.exact(x * x) >= 0, what="x² ≥ 0")


@claim("pooled/small", statement="x < 900", instances=300, expect="refuted", refuted_by="x < 900")
@given(b=batches(st.floats(-1e3, 1e3, allow_nan=False), max_size=16))
def small(b):
    x = torch.tensor(b, dtype=torch.float64)
    certify(Certified.exact(x) < 900, what="x < 900")
'''


@pytest.fixture(scope="module")
def _local_cluster():
    import dask
    from distributed import LocalCluster

    # two deaths of a task's worker are tolerated, the third is KilledWorker: the scheduler's own rule
    with dask.config.set({"distributed.scheduler.allowed-failures": 2}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                         memory_limit=None) as lc:
        yield lc


@pytest.fixture
def cluster(_local_cluster):
    """The module's two-worker cluster, with both workers up: a test that kills a worker leaves its nanny to
    start a new one, which on a loaded machine (two test workers and another job on 2 cores) took longer than
    the next tests; with one worker the claim's own task and its groups share it, and what these tests check
    (a group dying on a worker other than the claim's, two workers named) cannot happen."""
    return _both_workers_up(_local_cluster)


def _both_workers_up(lc):
    from distributed import Client

    with Client(lc.scheduler_address) as client:
        client.wait_for_workers(2, timeout=120)
    return lc


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def _verify(*args, report):
    assert main(["verify", *map(str, args), "--report", str(report)]) in (0, 1)
    return json.loads(report.with_name("results.json").read_text())


@pytest.fixture(scope="module")
def identity_runs(_local_cluster, tmp_path_factory):
    cluster = _both_workers_up(_local_cluster)
    tmp = tmp_path_factory.mktemp("identities")
    path = _write(tmp, "cluster_identities.py", IDENTITIES)
    local = _verify(path, "-n", "1", report=tmp / "local" / "index.html")
    remote = _verify(path, "--cluster", cluster.scheduler_address, report=tmp / "cluster" / "index.html")
    return local, remote, tmp


def test_cluster_run_equals_local_run(identity_runs, cluster):
    local, remote, tmp = identity_runs
    verdicts = {r["id"]: (r["verdict"], r["instances"]) for r in remote["claims"]}
    assert {k: v[0] for k, v in verdicts.items()} == {
        "cl/square-nonneg": "holds", "cl/abs-triangle": "holds", "cl/control-ge10": "refuted"}
    assert verdicts["cl/square-nonneg"][1] > 0 and verdicts["cl/abs-triangle"][1] > 0
    # every field of every record, counterexamples and reproduce commands included, is the local run's
    assert strip_timing(remote["claims"]) == strip_timing(local["claims"])
    for k in ("counts", "claims", "instances_total", "passed", "mismatches"):
        assert remote["run"][k] == local["run"][k], k
    assert remote["run"]["passed"] is True
    info = remote["run"]["cluster"]
    assert info["address"] == cluster.scheduler_address and info["workers"] == 2
    assert info["retries"] == 0 and info["claims_not_run"] == []
    assert {r["timing"]["worker"] for r in remote["claims"]} <= set(cluster.scheduler_info["workers"])
    assert "cluster" in (tmp / "cluster" / "index.html").read_text()


def test_counterexample_found_on_a_worker_reproduces_locally(identity_runs, tmp_path):
    _, remote, _ = identity_runs
    rec = next(r for r in remote["claims"] if r["id"] == "cl/control-ge10")
    ce = rec["counterexample"]
    assert ce["reproduce_failure"].startswith("@reproduce_failure(") and "x=0" in ce["falsifying_example"]
    # the record's one-line command, run on this machine without a cluster
    argv = shlex.split(rec["reproduce"])
    assert argv[:2] == ["implreg", "verify"] and "--cluster" not in argv
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "IMPLREG_"))}
    proc = subprocess.run([sys.executable, "-m", "implreg.harness.cli", *argv[1:], "-n", "1",
                           "--report", str(tmp_path / "index.html")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    again = json.loads((tmp_path / "results.json").read_text())["claims"]
    assert [r["id"] for r in again] == ["cl/control-ge10"]
    assert again[0]["verdict"] == "refuted"
    assert again[0]["counterexample"] == ce  # same shrunk example, same blob, same command


def test_a_dead_workers_claim_is_retried_and_nothing_is_lost(cluster, tmp_path, monkeypatch):
    path = _write(tmp_path, "cluster_dies_once.py", DIES_ONCE)
    # the cluster named by the environment instead of --cluster
    monkeypatch.setenv("IMPLREG_CLUSTER", cluster.scheduler_address)
    remote = _verify(path, "--id", "cl/survives-a-dead-worker", report=tmp_path / "cluster" / "index.html")
    monkeypatch.delenv("IMPLREG_CLUSTER")
    assert remote["run"]["cluster"]["address"] == cluster.scheduler_address
    assert path.with_suffix(".died").exists()  # the first attempt did kill its worker
    local = _verify(path, "--id", "cl/survives-a-dead-worker", "-n", "1", report=tmp_path / "local" / "index.html")
    assert strip_timing(remote["claims"]) == strip_timing(local["claims"])
    (rec,) = remote["claims"]
    assert rec["verdict"] == "holds" and rec["instances"] > 0
    assert rec["timing"]["retries"] >= 1 and remote["run"]["cluster"]["retries"] >= 1
    html = (tmp_path / "cluster" / "index.html").read_text()
    assert "retried" in html


def test_a_claim_that_cannot_be_run_is_an_error_with_the_reason(cluster, tmp_path):
    # other ids than DIES_ONCE's: a worker process keeps the claims it imported, and ids must be unique
    path = _write(tmp_path, "cluster_always_dies.py", DIES_ONCE.replace('"cl/', '"dies/'))
    remote = _verify(path, "--id", "dies/always-dies", "--cluster", cluster.scheduler_address,
                     report=tmp_path / "index.html")
    (rec,) = remote["claims"]
    assert rec["verdict"] == "error" and rec["error"]["type"] == "ClusterTaskFailed"
    assert "died" in rec["explanation"] and "3 attempts" in rec["explanation"]
    assert rec["reproduce"].startswith("implreg verify ") and "--id dies/always-dies" in rec["reproduce"]
    assert remote["run"]["passed"] is False and remote["run"]["cluster"]["claims_not_run"] == ["dies/always-dies"]


def test_an_edited_claim_file_is_run_as_edited_on_a_long_lived_cluster(cluster, tmp_path):
    text = IDENTITIES.replace('"cl/', '"edit/')
    path = _write(tmp_path, "cluster_edited.py", text)
    first = _verify(path, "--id", "edit/square-nonneg", "--cluster", cluster.scheduler_address,
                    report=tmp_path / "a" / "index.html")
    assert first["claims"][0]["verdict"] == "holds"
    # the workers imported the file above; the same file now states something false
    _write(tmp_path, "cluster_edited.py", text.replace('x * x >= 0, what="x² ≥ 0"', 'x * x >= 1, what="x² ≥ 1"'))
    second = _verify(path, "--id", "edit/square-nonneg", "--cluster", cluster.scheduler_address,
                     report=tmp_path / "b" / "index.html")
    assert second["claims"][0]["verdict"] == "refuted"
    assert "x=0" in second["claims"][0]["counterexample"]["falsifying_example"]


def test_map_groups_over_the_cluster_keeps_order_and_reports_failures(cluster):
    from distributed import Client

    from implreg.harness.cluster import ClusterError, ClusterMap

    with Client(cluster.scheduler_address) as client:
        cmap = ClusterMap(client, retries=1)
        assert cmap(math.sqrt, [float(i * i) for i in range(7)]) == [float(i) for i in range(7)]
        assert cmap.retries_total == 0
        with pytest.raises(ClusterError, match=r"group 3 of 3 could not be run.*ValueError"):
            cmap(math.sqrt, [1.0, 4.0, -1.0])
        assert cmap.retries_total == 1  # the failing group was re-run once (retries=1) before giving up


def test_a_pooled_claim_on_the_cluster_gives_the_local_record(cluster, tmp_path, monkeypatch):
    # 64 instances per group: several groups per claim, so there is something to spread; the workers get the
    # client's value with each task (cluster.FORWARDED_ENV), the local run's pytest inherits it
    monkeypatch.setenv("IMPLREG_POOL_SIZE", "64")
    path = _write(tmp_path, "cluster_pooled.py", POOLED)
    local = _verify(path, "-n", "1", report=tmp_path / "local" / "index.html")
    remote = _verify(path, "--cluster", cluster.scheduler_address, report=tmp_path / "cluster" / "index.html")
    verdicts = {r["id"]: (r["verdict"], r["instances"]) for r in remote["claims"]}
    assert verdicts["pooled/square"][0] == "holds" and verdicts["pooled/square"][1] >= 300
    assert verdicts["pooled/small"][0] == "refuted"
    assert strip_timing(remote["claims"]) == strip_timing(local["claims"])
    assert all(r["pooling"]["groups"] > 1 for r in remote["claims"])



# a pooled claim whose first merged body on the worker without the claim's task kills that worker process; the
# body only runs in group tasks (the driver collects the examples without calling it)
POOLED_DIES_ONCE = '''
import os
from pathlib import Path

import torch
from hypothesis import given, strategies as st

from implreg import certify
from implreg.harness.claims import batches, claim
from implreg.numerics import Certified

MARKER = Path(__file__).with_suffix(".died")


@claim("pooled-dies/square", statement="x² ≥ 0; the first group's worker dies", instances=300)
@given(b=batches(st.floats(-1e3, 1e3, allow_nan=False), max_size=16))
def square(b):
    from distributed import get_worker

    # only on a worker that does not hold the claim's own task (seceded while it waits for its groups: a
    # long-running task), so that what dies is a group alone
    if not MARKER.exists() and not get_worker().state.long_running:
        MARKER.write_text("a group's first attempt died here")
        os._exit(19)
    x = torch.tensor(b, dtype=torch.float64)
    certify(Certified.exact(x * x) >= 0, what="x² ≥ 0")
'''


def test_a_killed_workers_group_is_run_again_and_no_instance_is_lost(cluster, tmp_path, monkeypatch):
    """Issue 12: a worker that dies in the middle of one of a claim's batches loses none of its instances: the
    batch is run again elsewhere, the record equals the local run's, instances included, and the re-run is
    counted in the record (``timing.group_retries``), the run header and the report."""
    monkeypatch.setenv("IMPLREG_POOL_SIZE", "64")
    path = _write(tmp_path, "cluster_pooled_dies.py", POOLED_DIES_ONCE)
    remote = _verify(path, "--cluster", cluster.scheduler_address, report=tmp_path / "cluster" / "index.html")
    assert path.with_suffix(".died").exists()  # a body did kill its worker
    local = _verify(path, "-n", "1", report=tmp_path / "local" / "index.html")
    (rec,) = remote["claims"]
    assert rec["verdict"] == "holds" and rec["instances"] >= 300 and rec["pooling"]["groups"] > 1
    assert strip_timing(remote["claims"]) == strip_timing(local["claims"])
    assert rec["timing"]["group_retries"] >= 1  # the group was run again, not the whole claim
    assert remote["run"]["cluster"]["retries"] >= 1
    assert "retried" in (tmp_path / "cluster" / "index.html").read_text()

def _map_on_a_worker(items):
    from implreg.harness.cluster import WorkerMap

    wmap = WorkerMap(retries=0)
    return wmap(math.sqrt, items), wmap.groups


def test_a_task_maps_its_groups_over_the_cluster_without_deadlock(cluster):
    from distributed import Client

    # two drivers at once on two single-threaded workers: each waits for groups that need a worker's thread
    with Client(cluster.scheduler_address) as client:
        futs = [client.submit(_map_on_a_worker, [float(i * i) for i in range(k, k + 5)], pure=False)
                for k in (0, 10)]
        got = client.gather(futs, errors="raise")
    assert got == [([float(i) for i in range(5)], 5), ([float(i) for i in range(10, 15)], 5)]


def test_without_cluster_dask_is_not_imported(tmp_path):
    path = _write(tmp_path, "no_cluster_claims.py", IDENTITIES)
    code = textwrap.dedent(f"""
        import sys
        import implreg.harness.cli, implreg.harness.plugin, implreg.harness.verdict, implreg.harness.runner
        from implreg.harness.cli import main
        rc = main(["verify", {str(path)!r}, "--id", "cl/square-nonneg", "-n", "1",
                   "--report", {str(tmp_path / "index.html")!r}])
        assert rc == 0, rc
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("dask", "distributed"))
        assert not loaded, loaded
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "IMPLREG_"))}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_worker_drops_hypothesis_false_random_warning_only():
    """Dask's event-loop thread moves the global ``random`` state while Hypothesis draws on the task thread; the
    worker drops that one false warning (once, however many tasks), and nothing else."""
    import warnings as w

    from hypothesis.errors import HypothesisDeprecationWarning

    with w.catch_warnings(record=True) as seen:
        w.simplefilter("always")
        harness_cluster._quiet_dask_random()
        harness_cluster._quiet_dask_random()
        mine = [f for f in w.filters if f[2] is HypothesisDeprecationWarning and f[0] == "ignore"]
        assert len(mine) == 1
        w.warn("Do not use the `random` module inside strategies; instead …", HypothesisDeprecationWarning,
               stacklevel=1)
        w.warn("some other deprecation", HypothesisDeprecationWarning, stacklevel=1)
    assert [str(x.message) for x in seen] == ["some other deprecation"]


def _pretend_loaded(code):
    """Run on a worker: make it look as if it had loaded implreg ``code`` (None: what it really loaded)."""
    from implreg.harness import cluster as c

    if not hasattr(c, "_REAL_LOADED_CODE"):
        c._REAL_LOADED_CODE = c._LOADED_CODE
    c._LOADED_CODE = c._REAL_LOADED_CODE if code is None else code


def test_workers_that_loaded_another_implreg_are_refused_by_name(cluster, tmp_path, capsys):
    """A long-lived worker keeps the implreg it imported: after implreg changes (or on another checkout) the run is
    refused up front, naming the worker and what to do; nothing is restarted behind the user's back."""
    from distributed import Client

    path = _write(tmp_path, "cluster_stale.py", IDENTITIES.replace('"cl/', '"stale/'))
    with Client(cluster.scheduler_address) as client:
        (stale, fresh) = sorted(client.scheduler_info()["workers"])
        client.run(_pretend_loaded, "0" * 64, workers=[stale])
        try:
            rc = main(["verify", str(path), "--cluster", cluster.scheduler_address,
                       "--report", str(tmp_path / "index.html")])
            err = capsys.readouterr().err
            assert rc == 2, err
            # its files are this client's: it loaded them before they changed
            assert f"1 of 2 workers cannot run this implreg: worker {stale} loaded implreg 000000000000" in err
            assert "it is stale, restart it" in err and "dask worker" in err and fresh not in err
            assert "Traceback" not in err and not (tmp_path / "index.html").exists()
            # a task that reaches a stale worker anyway (one that joined after the check) refuses to run there
            task = harness_cluster.tasks_from_collection(
                [{"nodeid": f"{path}::square_nonneg", "id": "stale/square-nonneg", "file": str(path)}],
                profile="ci", seed=0)[0]
            fut = client.submit(harness_cluster.run_claim_task, task, 0, workers=[stale], pure=False)
            with pytest.raises(harness_cluster.ClusterError, match=f"worker {stale} loaded implreg 000000000000"):
                fut.result()
        finally:
            client.run(_pretend_loaded, None, workers=[stale])


def test_the_implreg_digest_follows_the_files_not_their_place(tmp_path):
    for root in (tmp_path / "a", tmp_path / "b"):
        (root / "sub" / "__pycache__").mkdir(parents=True)
        (root / "sub" / "m.py").write_text("x = 1\n")
        (root / "sub" / "__pycache__" / "m.cpython-311.pyc").write_bytes(bytes([len(str(root))]))
    a, b = harness_cluster.implreg_digest(tmp_path / "a"), harness_cluster.implreg_digest(tmp_path / "b")
    assert a == b  # same files elsewhere, byte code aside
    (tmp_path / "b" / "sub" / "m.py").write_text("x = 2\n")
    assert harness_cluster.implreg_digest(tmp_path / "b") != a
    # a stale worker (its disk now has the client's code) is told to restart; a foreign one to install this one
    have = {"loaded": "1" * 64, "disk": "2" * 64}
    assert "stale, restart it" in harness_cluster._stale_reason("tcp://w", have, "2" * 64)
    assert "another checkout" in harness_cluster._stale_reason("tcp://w", have, "3" * 64)
    assert harness_cluster._stale_reason("tcp://w", have, "1" * 64) is None


def test_overlapping_claims_in_one_process_keep_the_constant_pool_pinned():
    """Two claims in one process (a cluster worker runs another claim's task while one waits for its groups): the
    first to finish must leave Hypothesis' constant pool pinned for the other, and the last restores it."""
    import threading

    from hypothesis.internal.conjecture import providers

    from implreg.harness.verdict import _pinned_constants

    original = providers._get_local_constants
    inside, release = threading.Event(), threading.Event()

    def other_claim():
        with _pinned_constants():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=other_claim)
    t.start()
    inside.wait(10)
    with _pinned_constants():
        pinned = providers._get_local_constants
        assert pinned is not original
    assert providers._get_local_constants is pinned  # the other claim still runs: still pinned
    release.set()
    t.join(10)
    assert providers._get_local_constants is original


def test_a_one_worker_cluster_gives_the_local_record(tmp_path, monkeypatch):
    """With one worker, a claim's task and its groups, and the next claim's task, share one process: the pooled
    records still equal the local run's, Hypothesis' statistics included (they differed while one claim's end
    unpinned the other's constant pool)."""
    import dask
    from distributed import LocalCluster

    monkeypatch.setenv("IMPLREG_POOL_SIZE", "64")
    path = _write(tmp_path, "cluster_pooled_one.py", POOLED.replace('"pooled/', '"one/'))
    local = _verify(path, "-n", "1", report=tmp_path / "local" / "index.html")
    with dask.config.set({"distributed.scheduler.allowed-failures": 2}), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                         memory_limit=None) as lc:
        remote = _verify(path, "--cluster", lc.scheduler_address, report=tmp_path / "cluster" / "index.html")
    assert [r["verdict"] for r in remote["claims"]] == ["holds", "refuted"]
    assert strip_timing(remote["claims"]) == strip_timing(local["claims"])
