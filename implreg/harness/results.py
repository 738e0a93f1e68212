"""Run results: per-claim record files, merging them, results.json, and atomic writes.

Each claim's record is written by whichever process ran it (any xdist worker) as its own JSON file in the
run directory, named by a hash of its pytest node id; collection errors become records too.  After the
run, ``merge`` reads every file and sorts the records into a fixed order, so nothing depends on which
worker ran what or when.  Wall-clock values sit only under keys named ``timing`` (``strip_timing``
removes them; what remains is identical across runs with the same seed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from implreg.harness.claims import VERDICTS

__all__ = [
    "SCHEMA",
    "atomic_write_text",
    "build_results",
    "environment",
    "expectation_mark",
    "load_results",
    "merge",
    "record_path",
    "save_results",
    "strip_timing",
    "write_record",
]

SCHEMA = "implreg-results/1"


def expectation_mark(record: dict[str, Any]) -> str:
    """The one glyph every terminal line puts before a verdict: ✓ it is the claim's expectation (a refuted
    control included), ~ it differs but the claim documents the deviation, ✗ it differs (the run fails)."""
    if record.get("matches_expect"):
        return "✓"
    return "~" if record.get("deviation_documented") else "✗"


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same directory and ``os.replace``.

    Readers see either the old file or the complete new one, never a partial write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates the file 0600; a report is meant to be read (and served) like any other file
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=True, default=str) + "\n"


def record_path(run_dir: str | os.PathLike[str], nodeid: str, prefix: str = "claim") -> Path:
    digest = hashlib.sha256(nodeid.encode()).hexdigest()[:20]
    return Path(run_dir) / f"{prefix}-{digest}.json"


def write_record(run_dir: str | os.PathLike[str], record: dict[str, Any], prefix: str = "claim") -> Path:
    """Write one record (a claim result or a collection error) as its own file in the run directory."""
    return atomic_write_text(record_path(run_dir, record["nodeid"], prefix), dumps(record))


def _sorted(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Report order: collection errors first, then sources by (year, key), claims by position in file."""
    year: dict[str, int] = {}
    for r in records:
        g = r.get("group") or ""
        year[g] = max(year.get(g, 0), (r.get("source") or {}).get("year") or 0)

    def key(r: dict[str, Any]) -> tuple:
        g = r.get("group") or ""
        collection = r.get("kind") == "collection-error"
        return (0 if collection else 1, year[g], g, r.get("file") or "", r.get("line") or 0,
                r.get("id") or "", r.get("nodeid") or "")

    return sorted(records, key=key)


def merge(run_dir: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All records in a run directory, in report order, and the per-process environment files."""
    run_dir = Path(run_dir)
    records = []
    for p in sorted(run_dir.glob("claim-*.json")) + sorted(run_dir.glob("collect-*.json")):
        records.append(json.loads(p.read_text(encoding="utf-8")))
    for p in sorted(run_dir.glob("started-*.json")):
        if not (run_dir / p.name.replace("started-", "claim-", 1)).exists():
            records.append(died_record(json.loads(p.read_text(encoding="utf-8"))))
    envs = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(run_dir.glob("env-*.json"))]
    return _sorted(records), envs


def died_record(meta: dict[str, Any]) -> dict[str, Any]:
    """The record of a claim whose process died while running it (it started but never finished)."""
    message = ("the process running this claim died before recording a result (a crash such as a "
               "segmentation fault or os._exit, or it was killed, e.g. out of memory)")
    return {
        **meta, "verdict": "error", "matches_expect": False, "problems": [],
        "explanation": f"The check crashed: {message}.",
        "counterexample": None, "error": {"type": "ProcessDied", "message": message, "traceback": None},
        "certification": None, "hypothesis": None, "statistics": None, "instances": 0,
        "evidence": {"series": [], "scalars": [], "tables": [], "notes": []},
        "reproduce": f"implreg verify {meta.get('file')} --id {meta.get('id')} --seed {meta.get('run_seed')} "
                     f"--profile {meta.get('profile')} -n 1",
        "timing": {"wall_s": 0.0},
    }


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Versions and machine facts that do not change between runs on the same machine."""
    from implreg import __version__

    versions = {"implreg": __version__, "python": platform.python_version()}
    for dist in ("torch", "hypothesis", "mpmath", "numpy", "scipy", "sympy", "pytest", "pytest-xdist"):
        versions[dist] = _version(dist)
    return {
        "versions": versions,
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu_count": os.cpu_count(),
    }


def process_environment() -> dict[str, Any]:
    """What a worker process knows after running claims: the torch device(s) and thread count."""
    info: dict[str, Any] = {"device": "cpu", "torch_threads": None, "steps": None}
    native = sys.modules.get("implreg.matrix.flow.native")  # imported by the simulators, not here
    if native is not None:
        info["steps"] = native.status()
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            info["torch_threads"] = int(torch.get_num_threads())
            if torch.cuda.is_available():
                info["device"] = f"cuda ({torch.cuda.get_device_name(0)})"
        except Exception:  # a broken CUDA setup must not break the report
            pass
    return info


def build_results(records: Iterable[dict[str, Any]], run: dict[str, Any],
                  envs: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """The results.json document: run header (with counts and overall pass/fail) and claim records."""
    records = list(records)
    counts = {v: 0 for v in VERDICTS}
    for r in records:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    mismatches = [r["id"] for r in records if not r.get("matches_expect") and not r.get("deviation_documented")]
    deviations = [r["id"] for r in records if r.get("deviation_documented")]
    # catalogue claims the harness refutes as stated (and still refutes in this run)
    findings = [r["id"] for r in records if r.get("finding") and r.get("matches_expect")]
    devices = sorted({e.get("device", "cpu") for e in envs}) or ["cpu"]
    threads = sorted({e.get("torch_threads") for e in envs if e.get("torch_threads")})
    steps = sorted({e["steps"] for e in envs if e.get("steps")})
    run = dict(run)
    run.update({
        "counts": counts,
        "claims": len(records),
        # problem instances checked in passing examples, summed over claims (issue 14: shown per claim and in all)
        "instances_total": sum(int(r.get("instances") or 0) for r in records),
        "mismatches": mismatches,
        "documented_deviations": deviations,
        "catalogue_findings": findings,
        # a run cut short (pytest interrupted or crashed: exit status other than 0/1) cannot pass
        "complete": run.get("pytest_exit") in (None, 0, 1),
        "passed": not mismatches and bool(records) and run.get("pytest_exit") in (None, 0, 1),
        "device": ", ".join(devices),
        "torch_threads": threads[0] if len(threads) == 1 else threads or None,
        # which step the float64 CPU simulators ran (the same bits either way; tests/test_native_steps.py)
        "steps": "; ".join(steps) or None,
    })
    return {"schema": SCHEMA, "run": run, "claims": records}


def save_results(path: str | os.PathLike[str], results: dict[str, Any]) -> Path:
    return atomic_write_text(path, dumps(results))


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not an implreg results file (schema {data.get('schema')!r}, "
                         f"expected {SCHEMA!r})" if isinstance(data, dict) else f"{path}: not a results file")
    return data


def strip_timing(obj: Any) -> Any:
    """A copy without any ``timing`` entries (what must be identical between runs with one seed)."""
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if k != "timing"}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj
