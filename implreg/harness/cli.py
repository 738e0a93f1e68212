"""``implreg verify | list | report | new`` — run claims, list them, re-render a report, add a conjecture.

    implreg verify [PATHS...] [--profile P] [--seed S] [-k EXPR] [--id ID] [-n WORKERS] [--report PATH]
    implreg list [PATHS...] [--json]
    implreg report RESULTS.json [--out PATH]
    implreg new ID [--file PATH] [--statement TEXT]

``verify`` runs pytest with the implreg plugin in a subprocess (pytest-xdist with ``-n`` > 1), then merges
the per-claim record files from every worker, writes ``results.json`` and the HTML report (atomically)
and prints a summary table.  Exit status: 0 when every verdict equals its expectation, 1 when any
differs (or no claim was found), 2 for a usage error (unknown profile, missing path).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["finish_run", "format_table", "main"]

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


# ------------------------------------------------------------------------------------------------
# shared helpers
# ------------------------------------------------------------------------------------------------
def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _workers(value: str) -> int:
    if value == "auto":
        return _cpu_count()
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"-n expects a number of workers or 'auto', got {value!r}") from None
    if n < 1:
        raise UsageError(f"-n must be ≥ 1, got {n}")
    return n


def _plugin_args() -> list[str]:
    """Load the plugin explicitly unless its entry point is installed (avoids double registration)."""
    eps = metadata.entry_points(group="pytest11")
    if any(ep.value == "implreg.harness.plugin" for ep in eps):
        return []
    return ["-p", "implreg.harness.plugin"]


def _check_paths(paths: Sequence[str]) -> None:
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")


def _check_environment() -> None:
    """The IMPLREG_* settings every claim reads, checked once before any claim runs: a bad value is one usage
    error naming the variable, not the same error in every claim."""
    from implreg.errors import ImplregError
    from implreg.harness.pooling import pool_size
    from implreg.matrix.flow.kernels import compile_mode, min_batch
    from implreg.matrix.flow.native import native_mode

    for check in (pool_size, compile_mode, min_batch, native_mode):
        try:
            check()
        except ImplregError as exc:
            raise UsageError(str(exc)) from None


def _pytest_base(paths: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", *paths, *_plugin_args(), "--implreg-only", "--implreg-cli",
            "-p", "no:cacheprovider", "-p", "no:benchmark", "--no-header", "-q", "-rN", "--tb=no",
            "--continue-on-collection-errors", "-o", "console_output_style=classic"]


def format_table(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Summary table lines: verdict, expectation, id, instances in passing examples, escalations, time."""
    from implreg.harness.results import expectation_mark

    rows = list(rows)
    if not rows:
        return ["(no claims)"]
    idw = min(max(len(r["id"]) for r in rows), 70)
    head = f"  {'verdict':<13} {'expected':<9} {'id':<{idw}} {'passed':>9} {'escal.':>6} {'time':>8}"
    lines = [head, "  " + "─" * (len(head) - 2)]
    for r in rows:
        ok = ("  ◀ catalogue finding: refuted as stated" if r.get("finding") else "") if r.get("matches_expect") else (
            "  ◀ deviates from the paper (documented)" if r.get("deviation_documented") else "  ◀ MISMATCH")
        cid = r["id"] if len(r["id"]) <= idw else r["id"][: idw - 1] + "…"
        lines.append(
            f"  {expectation_mark(r)} {r['verdict']:<11} {r['expect']:<9} {cid:<{idw}} "
            f"{r.get('instances') or 0:>9} {r.get('escalations') or 0:>6} {r.get('wall_s') or 0:>7.1f}s{ok}"
        )
    return lines


def _table_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"id": r["id"], "verdict": r["verdict"], "expect": r["expect"], "matches_expect": r["matches_expect"],
             "deviation_documented": r.get("deviation_documented", False), "finding": bool(r.get("finding")),
             "instances": r.get("instances"),
             "escalations": (r.get("certification") or {}).get("escalation_count", 0),
             "wall_s": (r.get("timing") or {}).get("wall_s", 0.0)} for r in results["claims"]]


def finish_run(run_dir: str | os.PathLike[str], report: str | os.PathLike[str], *, profile: str, seed: int,
               paths: Sequence[str], workers: int, wall_s: float, command: str,
               started: str | None = None, pytest_exit: int | None = None,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge a run directory, write results.json beside the report and the HTML report (both atomic).

    ``extra``: further run-header entries (the cluster mode's ``cluster`` facts)."""
    from implreg.harness.report.render import write_report
    from implreg.harness.results import build_results, environment, merge, save_results

    records, envs = merge(run_dir)
    run = {
        "profile": profile,
        "seed": seed,
        "paths": list(paths),
        "workers": workers,
        "command": command,
        "pytest_exit": pytest_exit,
        **environment(),
        "timing": {"wall_s": round(wall_s, 3), "started": started or _now()},
        **(extra or {}),
    }
    results = build_results(records, run, envs)
    report = Path(report)
    save_results(report.with_name("results.json"), results)
    write_report(results, report)
    return results


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# ------------------------------------------------------------------------------------------------
# verify
# ------------------------------------------------------------------------------------------------
def cmd_verify(args: argparse.Namespace) -> int:
    from implreg.harness.profiles import UnknownProfileError, get_profile

    try:
        profile = get_profile(args.profile)
    except UnknownProfileError as exc:
        raise UsageError(str(exc)) from None
    paths = args.paths or ["theorems"]
    _check_paths(paths)
    _check_environment()
    seed = profile.resolve_seed(args.seed)
    report = Path(args.report)
    if args.cluster:
        results, wall, status = _verify_on_cluster(args, profile, seed, paths, report)
    else:
        results, wall, status = _verify_local(args, profile, seed, paths, report)
    return _summarize(results, report, wall, status)


def _verify_local(args: argparse.Namespace, profile: Any, seed: int, paths: Sequence[str],
                  report: Path) -> tuple[dict[str, Any], float, int]:
    """pytest with the implreg plugin (xdist with -n > 1); the run's results and pytest's exit status."""
    workers = _workers(args.workers)
    run_dir = tempfile.mkdtemp(prefix="implreg-run-")
    cmd = [*_pytest_base(paths), f"--implreg-profile={profile.name}", f"--implreg-seed={seed}",
           f"--implreg-run-dir={run_dir}"]
    if workers > 1:
        cmd += ["-n", str(workers), "--dist", "worksteal"]
    else:
        cmd += ["-p", "no:xdist"]
    if args.k:
        cmd += ["-k", args.k]
    for cid in args.id or ():
        cmd += ["--implreg-id", cid]
    started, t0 = _now(), time.time()
    print(f"implreg verify: {', '.join(paths)} · profile {profile.name} · seed {seed} · "
          f"{workers} worker{'s' if workers > 1 else ''}", flush=True)
    try:
        proc = subprocess.run(cmd, check=False)
        wall = time.time() - t0
        command = "implreg " + " ".join(_quote(a) for a in args.argv)
        results = finish_run(run_dir, report, profile=profile.name, seed=seed, paths=paths, workers=workers,
                             wall_s=wall, command=command, started=started, pytest_exit=proc.returncode)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return results, wall, proc.returncode


def _verify_on_cluster(args: argparse.Namespace, profile: Any, seed: int, paths: Sequence[str],
                       report: Path) -> tuple[dict[str, Any], float, int]:
    """The same claims as one Dask task each on the cluster at ``args.cluster`` (implreg.harness.cluster)."""
    from implreg.harness import cluster
    from implreg.harness.results import atomic_write_text, dumps, expectation_mark, write_record

    started, t0 = _now(), time.time()
    claims, collection_errors = collect_claims(paths, k=args.k, ids=args.id or ())
    try:
        client = cluster.connect(args.cluster)
    except ImportError as exc:
        raise UsageError(f"--cluster needs Dask distributed ({exc.name} is missing): "
                         "pip install 'implreg[cluster]'") from None
    except (OSError, TimeoutError) as exc:
        raise UsageError(f"cannot reach the cluster at {args.cluster}: {exc}") from None
    run_dir = tempfile.mkdtemp(prefix="implreg-run-")
    try:
        try:
            workers = cluster.wait_for_workers(client)
            code = cluster.implreg_digest()
            cluster.check_workers(client, code)
        except cluster.ClusterError as exc:
            raise UsageError(str(exc)) from None
        print(f"implreg verify: {', '.join(paths)} · profile {profile.name} · seed {seed} · cluster "
              f"{client.scheduler.address} ({workers} worker{'s' if workers > 1 else ''})", flush=True)
        tasks = cluster.tasks_from_collection(claims, profile=profile.name, seed=seed, code=code)
        done = [0]

        def progress(record: dict[str, Any]) -> None:
            done[0] += 1
            mark = expectation_mark(record)
            print(f"[{done[0]:>{len(str(len(tasks)))}}/{len(tasks)}] {mark} {record['verdict']:<12} {record['id']}"
                  f"  {record['timing'].get('wall_s', 0.0):.1f}s", flush=True)

        records, envs, info = cluster.run_on_cluster(client, tasks, retries=args.cluster_retries,
                                                     progress=progress)
        for r in [*records, *collection_errors]:
            write_record(run_dir, r, prefix="collect" if r.get("kind") == "collection-error" else "claim")
        for i, env in enumerate({dumps(e) for e in envs}):
            atomic_write_text(Path(run_dir) / f"env-cluster-{i}.json", env)
        wall = time.time() - t0
        command = "implreg " + " ".join(_quote(a) for a in args.argv)
        results = finish_run(run_dir, report, profile=profile.name, seed=seed, paths=paths, workers=workers,
                             wall_s=wall, command=command, started=started, extra={"cluster": info})
    finally:
        client.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    return results, wall, 0


def _summarize(results: dict[str, Any], report: Path, wall: float, status: int) -> int:
    """Print the verdict table and the overall outcome; the exit status of ``implreg verify``."""
    rows = _table_rows(results)
    print()
    for line in format_table(rows):
        print(line)
    counts = results["run"]["counts"]
    print()
    print("verdicts: " + ", ".join(f"{counts[v]} {v}" for v in counts if counts[v]) +
          f" · {results['run']['claims']} claim{'' if results['run']['claims'] == 1 else 's'}"
          f" · {results['run'].get('instances_total', 0)} instances checked · {wall:.1f}s")
    print(f"report:   {report}  (results: {report.with_name('results.json')})")
    if not results["claims"]:
        print(f"no claims were collected (pytest exit status {status}); nothing was verified",
              file=sys.stderr)
        return EXIT_MISMATCH
    if status not in (0, 1):
        print(f"the run did not complete (pytest exit status {status}); claims after the failure point "
              "have no verdict", file=sys.stderr)
    if results["run"]["passed"]:
        devs = results["run"].get("documented_deviations") or []
        extra = f" ({len(devs)} documented empirical deviation(s) from the papers: {', '.join(devs)})" if devs else ""
        head = "PASS: every verdict matches its expectation" + (" or documents its deviation" if devs else "")
        print(head + extra)
        finds = results["run"].get("catalogue_findings") or []
        if finds:
            print(f"{len(finds)} claim(s) from the catalogue are refuted as stated (see their findings in the report): "
                  + ", ".join(finds))
        return EXIT_OK
    print(f"FAIL: {len(results['run']['mismatches'])} verdict(s) differ from their expectation: "
          + ", ".join(results["run"]["mismatches"]))
    return EXIT_MISMATCH


def _quote(a: str) -> str:
    return a if re.fullmatch(r"[\w@%+=:,./-]+", a) else "'" + a.replace("'", "'\\''") + "'"


# ------------------------------------------------------------------------------------------------
# list
# ------------------------------------------------------------------------------------------------
def collect_claims(paths: Sequence[str], *, k: str | None = None,
                   ids: Sequence[str] = ()) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Claims (metadata and node ids) under paths via pytest collection, and the files that failed to import
    (their ``error`` records); ``k`` and ``ids`` select claims as ``implreg verify``'s ``-k`` and ``--id`` do."""
    from implreg.harness.results import merge

    _check_paths(paths)
    with tempfile.TemporaryDirectory(prefix="implreg-list-") as tmp:
        out = Path(tmp) / "claims.json"
        cmd = [*_pytest_base(paths), "--collect-only", "-p", "no:xdist", f"--implreg-list-out={out}",
               f"--implreg-run-dir={tmp}"]
        if k:
            cmd += ["-k", k]
        for cid in ids:
            cmd += ["--implreg-id", cid]
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if not out.exists():
            raise UsageError(f"collection failed (pytest exit status {proc.returncode}):\n{proc.stdout}{proc.stderr}")
        claims = json.loads(out.read_text())["claims"]
        errors, _ = merge(tmp)
    return claims, errors


def cmd_list(args: argparse.Namespace) -> int:
    claims, collection_errors = collect_claims(args.paths or ["theorems"])
    errors = [f"ERROR {r['file']}: {r['error']['message']}" for r in collection_errors]
    if args.json:
        print(json.dumps(claims, indent=1, ensure_ascii=False))
    else:
        idw = max([len(c["id"]) for c in claims] + [2])
        print(f"{'id':<{idw}}  {'kind':<11} {'expect':<8} source")
        for c in claims:
            src = c.get("source")
            cite = "—"
            if src:
                cite = src["short"] + (f", {src['locator']}" if src.get("locator") else "")
                if not src.get("confirmed", True):
                    cite += " (as reconstructed)"
            flag = "  [malformed: " + "; ".join(c["problems"]) + "]" if c.get("problems") else ""
            if c.get("refuted_by"):
                flag += "  [refuted by: " + " | ".join(c["refuted_by"]) + "]"
            flag += "".join(f"  [warning: {w}]" for w in c.get("warnings") or [])
            print(f"{c['id']:<{idw}}  {c['kind']:<11} {c['expect']:<8} {cite}{flag}")
        print(f"\n{len(claims)} claim(s)")
    for line in errors:
        print(line, file=sys.stderr)
    return EXIT_OK if not errors else EXIT_MISMATCH


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    from implreg.harness.report.render import write_report
    from implreg.harness.results import load_results

    src = Path(args.results)
    if not src.exists():
        raise UsageError(f"no such results file: {src}")
    try:
        results = load_results(src)
    except (ValueError, json.JSONDecodeError) as exc:
        raise UsageError(str(exc)) from None
    out = Path(args.out) if args.out else src.with_name("index.html")
    write_report(results, out)
    print(f"report: {out}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------
# new
# ------------------------------------------------------------------------------------------------
_TEMPLATE_HEAD = '''"""My conjectures: verify with `implreg verify {path}`."""

from hypothesis import given
from hypothesis import strategies as st

from implreg import certify
from implreg.harness import evidence
from implreg.harness.claims import claim
from implreg.numerics import Certified

# Write the mathematics: measures, flows and losses come back as certified values that carry their own error,
# and certify() decides each comparison (escalating where float64 cannot).  See docs/writing-conjectures.md.
'''

_TEMPLATE_CLAIM = '''

@claim("{cid}", kind="conjecture", expect="holds",
       statement="{statement}",
       latex=r"x^2 \\ge 0",
       hypotheses=["x real"])
@given(x=st.floats(-1e3, 1e3))
def {fname}(x):
    X = Certified.exact(x)                 # an exact input; arithmetic on it carries the rounding as error
    value = X * X
    evidence.scalar("x²", float(value))
    certify(value >= 0, what="x² ≥ 0")      # your conclusion here; > is strict, and a tie of exact values is
                                            # decided exactly (a simulated value: implreg.numerics.close)
'''


def cmd_new(args: argparse.Namespace) -> int:
    from implreg.harness.claims import ID_PATTERN

    cid = args.id
    if not ID_PATTERN.match(cid):
        raise UsageError(f"bad claim id {cid!r}: expected 'paper-key/slug' (lower case, digits, '.-_', one '/')")
    path = Path(args.file)
    fname = re.sub(r"\W+", "_", cid.split("/", 1)[1]).strip("_") or "conjecture"
    if fname[0].isdigit():
        fname = "c_" + fname
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if f'"{cid}"' in text:
        raise UsageError(f"{path} already has a claim {cid!r}")
    statement = (args.statement or "State your conjecture here in words.").replace('"', '\\"')
    if not text:
        text = _TEMPLATE_HEAD.format(path=path)
    text += _TEMPLATE_CLAIM.format(cid=cid, fname=fname, statement=statement)
    path.parent.mkdir(parents=True, exist_ok=True)
    from implreg.harness.results import atomic_write_text

    atomic_write_text(path, text)
    print(f"added claim {cid!r} to {path} (function {fname}); run: implreg verify {path}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="implreg", description="Verify claims about implicit regularization.")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("verify", help="run claims and write the report")
    v.add_argument("paths", nargs="*", help="claim files or folders (default: theorems/)")
    v.add_argument("--profile", default=None, help="quick | ci (default) | thorough")
    v.add_argument("--seed", type=int, default=None, help="run seed (default: the profile's)")
    v.add_argument("-k", default=None, help="pytest -k expression over claim ids and function names")
    v.add_argument("--id", action="append", help="run only the claim with this exact id (repeatable)")
    v.add_argument("-n", dest="workers", default="auto", help="parallel workers, or 'auto' (= cores)")
    v.add_argument("--report", default="reports/index.html", help="HTML report path (results.json beside)")
    v.add_argument("--cluster", default=os.environ.get("IMPLREG_CLUSTER") or None, metavar="ADDRESS",
                   help="run on the Dask scheduler at ADDRESS, e.g. tcp://host:8786 (env IMPLREG_CLUSTER; needs "
                        "the 'cluster' extra); -n is then the cluster's worker count")
    v.add_argument("--cluster-retries", type=int, default=2, metavar="N",
                   help="with --cluster: re-run a task that raised up to N times (a dead worker's tasks are "
                        "rescheduled by the scheduler's allowed-failures)")
    v.set_defaults(func=cmd_verify)

    ls = sub.add_parser("list", help="list claims: ids, sources, kinds, expectations")
    ls.add_argument("paths", nargs="*")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    r = sub.add_parser("report", help="re-render the HTML report from results.json")
    r.add_argument("results")
    r.add_argument("--out", default=None)
    r.set_defaults(func=cmd_report)

    n = sub.add_parser("new", help="add a conjecture (a claim template) to a file")
    n.add_argument("id", help="claim id 'key/slug', e.g. mine/rank-drops")
    n.add_argument("--file", default="my_conjectures.py")
    n.add_argument("--statement", default=None)
    n.set_defaults(func=cmd_new)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"implreg: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
