"""pytest plugin: collect claims from any file, run them into verdicts, record results from every worker.

Loaded through the ``pytest11`` entry point; inert for ordinary test suites (it imports nothing heavy
and only acts on functions decorated with ``@claim``).  ``implreg verify`` drives it; plain pytest works
too::

    pytest theorems/my_file.py --implreg-report reports/index.html

- Claims are collected by decoration, not by name: any function carrying ``@claim`` in a collected
  module becomes a test.  With ``--implreg-only`` (what ``implreg verify`` passes) every ``*.py`` file
  under the given folders is collected, whatever its name, and non-claim tests are deselected.
- A claim test runs its Hypothesis test, records its verdict and passes iff the verdict equals ``expect``.
- Each record is written as its own JSON file into the run directory by the process that ran it
  (any xdist worker), and a module that fails to import becomes an ``error`` record; merging the files
  after the run (``implreg.harness.results.merge``) therefore loses nothing.
- The controller prints one progress line per claim (n of m, verdict, verdicts so far).
"""

from __future__ import annotations

import fnmatch
import os
import re
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

_KEY = "implreg"
_IGNORED_FILES = {"conftest.py", "__init__.py", "setup.py", "noxfile.py", "__main__.py"}
_COLORS = {"holds": {"green": True}, "refuted": {"red": True}, "inconclusive": {"yellow": True},
           "error": {"purple": True}}


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("implreg", "implreg claims")
    g.addoption("--implreg-profile", default=None, help="claim profile: quick | ci (default) | thorough")
    g.addoption("--implreg-seed", type=int, default=None, help="run seed (default: the profile's)")
    g.addoption("--implreg-run-dir", default=None, help="directory for per-claim record files")
    g.addoption("--implreg-report", default=None, help="write the HTML report here (results.json beside it)")
    g.addoption("--implreg-only", action="store_true", default=False,
                help="collect every *.py under the given folders; run claims only")
    g.addoption("--implreg-id", action="append", default=[], help="run only the claim with this exact id")
    g.addoption("--implreg-cli", action="store_true", default=False, help=argparse_suppress())
    g.addoption("--implreg-list-out", default=None, help=argparse_suppress())


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


class _State:
    """Per-session plugin state (on the config object)."""

    def __init__(self, config: pytest.Config):
        from implreg.harness.profiles import UnknownProfileError, get_profile

        self.config = config
        workerinput = getattr(config, "workerinput", None)
        self.is_worker = workerinput is not None
        self.own_run_dir = False
        name = config.getoption("implreg_profile") or os.environ.get("IMPLREG_PROFILE")
        try:
            self.profile = get_profile(name)
        except UnknownProfileError as exc:
            raise pytest.UsageError(str(exc)) from None
        if self.is_worker:
            self.seed = workerinput.get("implreg_seed")
            self.run_dir = workerinput.get("implreg_run_dir")
        else:
            self.seed = self.profile.resolve_seed(config.getoption("implreg_seed"))
            self.run_dir = config.getoption("implreg_run_dir")
            self.own_run_dir = self.run_dir is None and bool(config.getoption("implreg_report"))
            if self.own_run_dir:
                self.run_dir = tempfile.mkdtemp(prefix="implreg-run-")
        if self.run_dir:
            Path(self.run_dir).mkdir(parents=True, exist_ok=True)
        self.only = config.getoption("implreg_only")
        self.ids = set(config.getoption("implreg_id") or ())
        self.total: int | None = None
        self.done = 0
        self.verdicts: Counter[str] = Counter()
        self.summaries: list[dict[str, Any]] = []
        self.ran_claims = False
        self.t0 = time.time()


def _state(config: pytest.Config) -> _State:
    return config.stash[_STATE_KEY]


_STATE_KEY = pytest.StashKey[_State]()


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("implreg_only"):
        # a claim file that fails to import is recorded as an error; the other files still run
        config.option.continue_on_collection_errors = True
    config.stash[_STATE_KEY] = _State(config)
    _CONFIG["config"] = config
    _one_thread_per_worker()
    config.addinivalue_line("markers", "implreg_claim: a claim collected by the implreg plugin")


def _one_thread_per_worker() -> None:
    """In an xdist worker, torch gets one intra-op thread (override with IMPLREG_TORCH_THREADS).

    The simulators work on batches of tiny matrices, where threads only add overhead, and the workers
    already occupy every core: with 2 threads per worker on a 2-core machine torch.linalg.det took ~10 ms
    per call against 0.014 ms with 1 (measured here).
    """
    import os

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    import torch

    torch.set_num_threads(int(os.environ.get("IMPLREG_TORCH_THREADS", "1")))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller → worker: share the resolved seed and the run directory."""
    st = _state(node.config)
    node.workerinput["implreg_seed"] = st.seed
    node.workerinput["implreg_run_dir"] = st.run_dir


# ------------------------------------------------------------------------------------------------
# collection
# ------------------------------------------------------------------------------------------------
def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """With --implreg-only, collect every .py under the given folders (pytest already takes test_*.py)."""
    config = parent.config
    if not config.getoption("implreg_only") or file_path.suffix != ".py" or file_path.name in _IGNORED_FILES:
        return None
    if parent.session.isinitpath(file_path):
        return None  # an explicitly named file: pytest collects it already
    patterns = config.getini("python_files")
    if any(fnmatch.fnmatch(file_path.name, pat) for pat in patterns):
        return None  # matches python_files: pytest collects it already
    return pytest.Module.from_parent(parent, path=file_path)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> Any:
    from implreg.harness.claims import get_spec

    spec = get_spec(obj)
    if spec is None:
        return None
    module = getattr(collector, "module", None)
    if module is not None and spec.module != module.__name__:
        return []  # imported from another module: collected where it is defined
    item = pytest.Function.from_parent(collector, name=name, callobj=obj)
    item.add_marker(pytest.mark.implreg_claim)
    item.extra_keyword_matches.add(spec.id)
    return [item]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from implreg.harness.claims import get_spec

    st = _state(config)
    if st.only or st.ids:
        keep, drop = [], []
        for item in items:
            spec = get_spec(getattr(item, "obj", None))
            ok = spec is not None and (not st.ids or spec.id in st.ids)
            (keep if ok else drop).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep
    # under xdist, each worker's first share is long claims (implreg.harness.scheduling); every worker collects
    # the same items and computes the same order, as xdist requires
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if workers > 1:
        from implreg.harness.scheduling import long_first_order

        specs = [get_spec(getattr(item, "obj", None)) for item in items]
        order = long_first_order([s is not None and s.instances is not None for s in specs], workers)
        items[:] = [items[k] for k in order]


def pytest_collection_finish(session: pytest.Session) -> None:
    from implreg.harness.claims import get_spec

    st = _state(session.config)
    claims = [i for i in session.items if get_spec(getattr(i, "obj", None)) is not None]
    if not st.is_worker:
        st.total = len(claims)
    out = session.config.getoption("implreg_list_out")
    if out:
        from implreg.harness.claims import REGISTRY
        from implreg.harness.results import atomic_write_text, dumps

        rows = []
        for item in claims:
            spec = get_spec(item.obj)
            problems = list(spec.problems)
            dups = REGISTRY.duplicates(spec)
            if dups:
                problems.append(f"duplicate id, also at {', '.join(d.where for d in dups)}")
            rows.append({**spec.metadata(), "nodeid": item.nodeid, "problems": problems})
        atomic_write_text(out, dumps({"claims": rows}))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    st = _state(node.config)
    st.total = max(st.total or 0, len(ids))


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """A module that fails to import (syntax error, bad import, …) becomes an `error` record."""
    if not report.failed:
        return
    config = _CONFIG.get("config")
    if config is None:
        return
    st = _state(config)
    if not st.run_dir:
        return
    from implreg.harness.results import write_record

    path = report.fspath or report.nodeid
    message = str(report.longreprtext or report.longrepr).strip()
    write_record(st.run_dir, _collection_error_record(report.nodeid, str(path), message), prefix="collect")


_SHADOWED = re.compile(r"imported module '([^']+)' has this __file__ attribute:\s*(\S+)\s*which is not the same")


def _collection_problem(message: str) -> str:
    """The one line that says what went wrong; for pytest's "import file mismatch", which module took the name."""
    m = _SHADOWED.search(message)
    if m:
        name, taken_by = m.groups()
        return (f"the file's module name {name!r} is already taken by {taken_by}, which Python imports instead "
                f"(a file named like a standard-library or installed module, or a second {name}.py elsewhere in "
                f"the run); rename the file, e.g. my_{name}.py")
    lines = [ln for ln in message.splitlines() if ln.strip()]
    return lines[-1].removeprefix("E").strip() if lines else "collection failed"


def _collection_error_record(nodeid: str, path: str, message: str) -> dict[str, Any]:
    short = _collection_problem(message)
    return {
        "id": f"collection-error:{nodeid}", "nodeid": nodeid, "function": None, "module": None, "file": path,
        "line": 0, "group": "(collection errors)", "source": None, "kind": "collection-error",
        "expect": "holds", "statement": f"The file {path} could be imported and its claims collected.",
        "latex": None, "hypotheses": [], "budget_s": None, "max_examples": None, "statistical": False,
        "verdict": "error", "matches_expect": False,
        "explanation": f"The file could not be collected, so none of its claims ran: {short}",
        "problems": [short], "counterexample": None,
        "error": {"type": "CollectionError", "message": short, "traceback": message[-6000:]},
        "certification": None, "hypothesis": None, "statistics": None, "instances": 0,
        "evidence": {"series": [], "scalars": [], "tables": [], "notes": []},
        "profile": None, "run_seed": None, "reproduce": f"implreg verify {path}", "timing": {"wall_s": 0.0},
    }


_CONFIG: dict[str, pytest.Config] = {}


def pytest_unconfigure(config: pytest.Config) -> None:
    if _CONFIG.get("config") is config:
        del _CONFIG["config"]


# ------------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------------
@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    from implreg.harness.claims import get_spec

    spec = get_spec(pyfuncitem.obj)
    if spec is None:
        return None
    st = _state(pyfuncitem.config)
    record = _run(spec, st, pyfuncitem.nodeid)
    summary = {k: record.get(k) for k in ("id", "verdict", "expect", "matches_expect", "deviation_documented",
                                          "instances", "group")}
    summary["wall_s"] = record["timing"]["wall_s"]
    summary["escalations"] = (record.get("certification") or {}).get("escalation_count", 0)
    pyfuncitem.user_properties.append((_KEY, summary))
    if record["verdict"] != spec.expect and not record.get("deviation_documented"):
        pytest.fail(f"[{spec.id}] expected {spec.expect}, got {record['verdict']}: {record['explanation']}",
                    pytrace=False)
    return True


def _run(spec: Any, st: _State, nodeid: str) -> dict[str, Any]:
    from implreg.harness.runner import claim_record

    st.ran_claims = True
    if st.run_dir:
        # a marker first: if this process dies inside the claim, the merge turns it into an `error` record
        from implreg.harness.results import write_record

        write_record(st.run_dir, {**spec.metadata(), "nodeid": nodeid, "profile": st.profile.name,
                                  "run_seed": st.seed}, prefix="started")
    record = claim_record(spec, profile=st.profile, seed=st.seed, nodeid=nodeid,
                          worker=os.environ.get("PYTEST_XDIST_WORKER", "main"))
    if st.run_dir:
        from implreg.harness.results import write_record

        write_record(st.run_dir, record)
    return record


# ------------------------------------------------------------------------------------------------
# progress and summary (controller only)
# ------------------------------------------------------------------------------------------------
def _summary_of(report: pytest.TestReport) -> dict[str, Any] | None:
    for key, value in getattr(report, "user_properties", ()):
        if key == _KEY:
            return value
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    if _summary_of(report) is not None and report.when == "call" and config.getoption("implreg_only"):
        return report.outcome, "", ""  # the progress line replaces pytest's dot
    return None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    config = _CONFIG.get("config")
    if config is None or report.when != "call":
        return
    st = _state(config)
    if st.is_worker:
        return
    summary = _summary_of(report)
    if summary is None:
        return
    st.done += 1
    st.verdicts[summary["verdict"]] += 1
    st.summaries.append(summary)
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is None:
        return
    total = st.total or st.done
    width = len(str(total))
    from implreg.harness.results import expectation_mark

    mark = expectation_mark(summary)
    so_far = " · ".join(f"{st.verdicts[v]} {v}" for v in ("holds", "refuted", "inconclusive", "error")
                        if st.verdicts[v])
    tr.ensure_newline()
    tr.write(f"[{st.done:>{width}}/{total}] {mark} ")
    tr.write(f"{summary['verdict']:<12}", bold=True, **_COLORS.get(summary["verdict"], {}))
    expect = "" if summary["matches_expect"] else f"  (expected {summary['expect']}" + (
        "; the deviation is documented)" if summary.get("deviation_documented") else ")")
    tr.write(f" {summary['id']}{expect}  {summary['wall_s']:.1f}s  [{so_far}]")
    tr.line("")


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    st = _state(config)
    if st.is_worker or config.getoption("implreg_cli") or not st.summaries:
        return
    from implreg.harness.cli import format_table

    terminalreporter.write_sep("=", "implreg verdicts")
    for line in format_table(st.summaries):
        terminalreporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session) -> None:
    st = _state(session.config)
    if st.run_dir and (st.is_worker or st.ran_claims):
        from implreg.harness.results import atomic_write_text, dumps, process_environment

        wid = getattr(session.config, "workerinput", {}).get("workerid", "main")
        atomic_write_text(Path(st.run_dir) / f"env-{wid}.json", dumps(process_environment()))
    report = session.config.getoption("implreg_report")
    if report and not st.is_worker and st.run_dir and not session.config.getoption("implreg_cli"):
        from implreg.harness.cli import finish_run

        exit_status = int(session.exitstatus)
        finish_run(st.run_dir, report, profile=st.profile.name, seed=st.seed,
                   paths=[str(a) for a in session.config.args], workers=_workers(session.config),
                   wall_s=time.time() - st.t0, command="pytest " + " ".join(session.config.invocation_params.args),
                   pytest_exit=exit_status)
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(f"implreg report: {report} (results.json beside it)")
        if st.own_run_dir:
            import shutil

            shutil.rmtree(st.run_dir, ignore_errors=True)


def _workers(config: pytest.Config) -> int:
    n = getattr(config.option, "numprocesses", None)
    try:
        return int(n) if n else 1
    except (TypeError, ValueError):
        return 1
