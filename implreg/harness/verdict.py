"""Run one claim under Hypothesis and classify the outcome into a verdict.

Verdicts (DESIGN.md):

- ``holds``: every example completed and every comparison was certified;
- ``refuted``: Hypothesis found an example whose *conclusion* fails (an ``AssertionError`` raised by
  certify or by the claim's own code), shrunk it, and we keep its "Falsifying example" text, the
  ``@reproduce_failure`` blob, the name of the failed comparison and an ``implreg verify`` command.  A claim
  that names ``refuted_by`` is refuted only when the counterexample failed that comparison; any other failing
  comparison is ``error`` (refuted for the wrong reason).  For a statistical claim: significant in the
  opposite direction, or an equivalence test shows no effect of the claimed size (``implreg.harness.stats``);
- ``inconclusive``: some comparison stayed undecided after escalation, too few valid examples, the
  claim's wall budget ran out before any example completed, or a statistical test was significant in
  neither direction ("not significant" is never "refuted");
- ``error``: the check itself crashed (any other exception, including an ``AssertionError`` raised inside
  library code rather than by the conclusion, NaN/∞ reaching certify, a claim that returns a value, a
  strategy that yields no valid instance, a malformed claim, a duplicate id, a flaky test, a failed
  ``require`` precondition, a refutation by another comparison than the one the claim names).

Precedence: error (crash) > refuted > inconclusive > holds.  A counterexample refutes a claim even if
other examples were undecided.

The record returned by ``run_claim`` is plain JSON-able data.  Wall-clock values live only under the
keys named ``timing`` so that two runs with the same seed give identical records once those are removed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import threading
import time
import traceback
import unittest
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import Phase, given, reject
from hypothesis import strategies as st
from hypothesis.errors import (
    DidNotReproduce,
    FailedHealthCheck,
    Flaky,
    Unsatisfiable,
    UnsatisfiedAssumption,
)
from hypothesis.statistics import collector

from implreg.certify import Undecided
from implreg.harness import recorder as _record
from implreg.harness.claims import REGISTRY, ClaimSpec, set_runner
from implreg.harness.pooling import MapGroups, Pooled, pool_size, run_pooled
from implreg.harness.profiles import Profile, claim_seed, get_profile
from implreg.preconditions import PreconditionFailed, tally

__all__ = ["BudgetExhausted", "ReturnedValue", "UncertifiedComparison", "UncheckedSolve", "check_completed",
           "failed_check", "run_claim"]

_MAX_REPR = 4000


class _Abort(unittest.SkipTest):
    """Stops the Hypothesis engine at once (it re-raises skip exceptions without shrinking)."""


class BudgetExhausted(_Abort):
    """The claim's wall budget ran out before a new example started."""


class ReturnedValue(_Abort):
    """The claim body returned a value instead of asserting."""


def returned_value(result: Any) -> ReturnedValue:
    return ReturnedValue("claim returned a value; claims must assert (use certify.* or assert): "
                         f"the body returned {_safe_repr(result, 200)}")


class UncertifiedComparison(_Abort):
    """The claim body made a comparison of certified values and never handed it to certify."""


class UncheckedSolve(_Abort):
    """The claim body used the final state of a solve that stopped early on some instances, never asking which."""


def check_completed(rec: _record.Recorder, result: Any) -> None:
    """After a body returned: it must not return a value, nor leave a comparison uncertified (which checks
    nothing: ``x >= 0`` on its own is an object, not an assertion)."""
    if result is not None:
        raise returned_value(result)
    left = rec.uncertified()
    if left:
        more = f" (and {len(left) - 1} more)" if len(left) > 1 else ""
        raise UncertifiedComparison(
            f"the claim made the comparison {left[0]}{more} and never certified it, so it checks nothing: "
            "wrap it in certify(...)")
    unchecked = rec.unchecked()
    if unchecked:
        more = f" (and {len(unchecked) - 1} more such solve(s))" if len(unchecked) > 1 else ""
        raise UncheckedSolve(unchecked[0] + more)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _safe_repr(obj: Any, limit: int = _MAX_REPR) -> str:
    try:
        text = repr(obj)
    except Exception as exc:  # a broken __repr__ must not break the verdict
        text = f"<unrepresentable {type(obj).__name__}: {exc}>"
    return text if len(text) <= limit else text[: limit - 20] + f" … [{len(text) - limit + 20} chars cut]"


def _notes(exc: BaseException) -> list[str]:
    return [str(n) for n in getattr(exc, "__notes__", [])]


def _trimmed_traceback(exc: BaseException, limit: int = 40) -> str:
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    text = "".join(lines)
    out = text.splitlines()
    if len(out) > limit:
        out = ["  …", *out[-limit:]]
    return "\n".join(out)


_HELPER_PARTS = (
    f"{os.sep}numpy{os.sep}testing{os.sep}",
    f"{os.sep}torch{os.sep}testing{os.sep}",
    f"{os.sep}unittest{os.sep}",
    f"{os.sep}_pytest{os.sep}",
    f"{os.sep}hypothesis{os.sep}",
)
_PKG_DIR = str(Path(__file__).resolve().parent.parent) + os.sep  # the implreg package (this file: harness/)
# where a conclusion's AssertionError is raised: the legacy certify functions, the statistics, and the
# certified-values seam's decision (implreg.numerics.compare; its escalation re-raises through compare)
_CONCLUSION_MODULES = {str(Path(_PKG_DIR, name).resolve()) for name in (
    "certify.py", "harness/stats.py", "numerics/compare.py", "numerics/escalate.py")}


def _is_conclusion_failure(exc: BaseException) -> tuple[bool, str | None]:
    """Whether an AssertionError states the claim's conclusion failing (not a library invariant).

    Walk outward from the raising frame, skipping assertion helpers (numpy.testing, torch.testing, …):
    the first remaining frame must be implreg.certify/stats or claim code (not the rest of implreg and
    not an installed library).  Returns (is_conclusion, "file:line" of the library frame otherwise).
    """
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        path = str(Path(frame.filename).resolve()) if frame.filename and not frame.filename.startswith("<") \
            else frame.filename
        if any(part in path for part in _HELPER_PARTS):
            continue
        if path in _CONCLUSION_MODULES:
            return True, None
        if path.startswith(_PKG_DIR) or f"{os.sep}site-packages{os.sep}" in path:
            return False, f"{frame.filename}:{frame.lineno}"
        return True, None
    return True, None


def failed_check(exc: BaseException) -> str | None:
    """The name of the check an ``AssertionError`` reports as failed: the ``what=`` of the certify call.

    Read from the exception when certify recorded it there (attribute ``what``), else from the innermost
    implreg certify/stats frame of its traceback (its local ``what``, or ``cmp.what``); for a plain ``assert``
    in claim code, the assertion's message (its first line), or None when it has none.
    """
    what = getattr(exc, "what", None)
    if isinstance(what, str):
        return what
    for frame, _ in reversed(list(traceback.walk_tb(exc.__traceback__))):
        path = frame.f_code.co_filename
        resolved = str(Path(path).resolve()) if path and not path.startswith("<") else path
        if resolved not in _CONCLUSION_MODULES:
            continue
        local = frame.f_locals.get("what")
        if isinstance(local, str):
            return local
        holder = frame.f_locals.get("cmp") or frame.f_locals.get("self")
        if isinstance(getattr(holder, "what", None), str):
            return holder.what
    text = str(exc).strip()
    return text.splitlines()[0] if text else None


#: Claims pinning Hypothesis' constant pool in this process now, and the getter to restore when the last is done.
_PINNED: dict[str, Any] = {"depth": 0, "getter": None}
_PIN_LOCK = threading.Lock()


@contextlib.contextmanager
def _pinned_constants() -> Iterator[None]:
    """Make Hypothesis ignore constants harvested from whatever local modules happen to be imported.

    Hypothesis (≥ 6.131) occasionally draws literals found in the source of *all* local modules loaded
    so far.  Which modules are loaded depends on run order and on which other claims ran first in the
    same worker, so the same seed could draw different examples alone, in a full run, or under xdist.
    Pinning the pool to empty makes a claim's examples a function of its seed only.  (Internal API:
    guarded, and a no-op on Hypothesis versions without it.)

    The pin is process-wide and counted: claims can overlap in one process (a cluster worker starts another
    claim's task while one waits for its groups), and the first to finish must not unpin the other.  Unpinned
    halfway, a pooled claim's replay drew other examples than its collection had (a one-worker Dask cluster:
    Hypothesis' invalid count 30 against 26 in the local run).
    """
    try:
        from hypothesis.internal.conjecture import providers
        from hypothesis.internal.constants_ast import Constants
    except ImportError:  # pragma: no cover
        yield
        return
    getter = getattr(providers, "_get_local_constants", None)
    cache = getattr(providers, "CONSTANTS_CACHE", None)
    if getter is None or cache is None:  # pragma: no cover
        yield
        return
    with _PIN_LOCK:
        if _PINNED["depth"] == 0:
            empty = Constants()
            _PINNED["getter"] = getter
            providers._get_local_constants = lambda: empty
            cache.cache.clear()
        _PINNED["depth"] += 1
    try:
        yield
    finally:
        with _PIN_LOCK:
            _PINNED["depth"] -= 1
            if _PINNED["depth"] == 0:
                providers._get_local_constants = _PINNED["getter"]
                cache.cache.clear()


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------
def instrument(orig: Any, rec: _record.Recorder) -> Any:
    """Wrap the claim body: count examples, catch undecided comparisons, enforce budget and returns."""

    @functools.wraps(orig)
    def body(*args: Any, **kwargs: Any) -> None:
        from hypothesis.control import current_build_context

        ctx = current_build_context()
        batch = rec.take_batch(ctx)
        if not rec.failure_seen and rec.over_budget():
            rec.budget_exhausted = True
            raise BudgetExhausted(f"wall budget of {rec.budget_s:g} s exhausted")
        if rec.batch_repeats and not rec.failure_seen:
            # generating (not shrinking): a batch that repeats an instance tests fewer instances than it
            # claims, and Hypothesis' simplest first example is exactly that; draw another
            rec.repeated_batches += 1
            reject()
        if rec.failure_seen and not ctx.is_final and rec.over_shrink_budget():
            # Shrinking past the budget: skip the candidate (Hypothesis sees an invalid example and stops
            # improving).  The final replay (is_final) still runs, so the smallest failure found is reported.
            rec.shrink_cut += 1
            reject()
        rec.begin_example(batch)
        try:
            result = orig(*args, **kwargs)
        except Undecided:
            rec.undecided_examples += 1
            reject()
        except UnsatisfiedAssumption:
            rec.rejected += 1
            raise
        except BaseException as exc:
            rec.failures += 1
            if rec.t_first_failure is None:
                rec.t_first_failure = time.monotonic()
            rec.failure_seen = True
            rec.last_failure = exc
            rec.last_failure_kwargs = _safe_repr(kwargs) if not args else _safe_repr((args, kwargs))
            raise
        check_completed(rec, result)
        rec.end_example_valid()

    body.__implreg_body__ = orig  # what a pooled group run in this process must call (pooling.check_group_task)
    return body


def _sample_test(spec: ClaimSpec, rec: _record.Recorder, seed: int) -> Any:
    """A one-example Hypothesis test that draws the whole statistical sample and records observations."""
    import numpy as np

    s = spec.sample
    assert s is not None
    state = {"first": True}

    def rngs(k: int) -> list[Any]:
        return [np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(k)]

    def draw_sample(sample: list[dict[str, Any]], nonce: int) -> None:
        # Hypothesis' very first example is the *simplest* one (every draw minimal), not a random
        # draw; a sample made of it would be n copies of the same degenerate problem.  Skip it.  (The
        # unused `nonce` keeps the search space from being exhausted by that one skipped example when
        # the strategies are trivial, e.g. a sample that only uses `rng`.)
        if state["first"]:
            state["first"] = False
            reject()
        rec.set_instances(len(sample))
        if s.batched:
            columns = {k: [row[k] for row in sample] for k in s.strategies}
            if s.rng:
                columns["rng"] = rngs(1)[0]
            out = s.fn(**columns)
            rec.observations = _observations_from_batched(out, len(sample))
        else:
            streams = rngs(len(sample)) if s.rng else [None] * len(sample)
            rec.observations = [s.fn(**row, **({"rng": g} if s.rng else {}))
                                for row, g in zip(sample, streams, strict=True)]

    draw_sample.__name__ = spec.function.rsplit(".", 1)[-1]
    draw_sample.__qualname__ = spec.function
    rows = st.lists(st.fixed_dictionaries(s.strategies), min_size=s.n, max_size=s.n)
    return given(sample=rows, nonce=st.integers(0, 2**62))(draw_sample)


def _observations_from_batched(out: Any, n: int) -> list[Any]:
    import numpy as np

    if isinstance(out, tuple) and len(out) == 2:
        a = np.asarray(_as_np(out[0]), dtype=float).reshape(-1)
        b = np.asarray(_as_np(out[1]), dtype=float).reshape(-1)
        if a.size != n or b.size != n:
            raise ValueError(f"batched sample function returned {a.size} and {b.size} observations, expected {n}")
        return list(zip(a.tolist(), b.tolist(), strict=True))
    arr = np.asarray(_as_np(out)).reshape(-1)
    if arr.size != n:
        raise ValueError(f"batched sample function returned {arr.size} observations, expected {n}")
    return arr.tolist()


def _as_np(x: Any) -> Any:
    if type(x).__module__.startswith("torch"):
        return x.detach().to("cpu").numpy()
    return x


def _phase_stats(stats: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    counts, durations = {}, {}
    for phase in ("explicit", "reuse", "generate", "target", "shrink"):
        d = stats.get(f"{phase}-phase")
        if not d:
            continue
        c = Counter(t["status"] for t in d.get("test-cases", []))
        counts[phase] = {"passing": c.get("valid", 0), "failing": c.get("interesting", 0),
                         "invalid": c.get("invalid", 0) + c.get("overrun", 0)}
        if phase == "shrink":
            counts[phase]["shrinks_successful"] = d.get("shrinks-successful", 0)
        durations[phase] = round(float(d.get("duration-seconds", 0.0)), 4)
    return counts, durations


def _relpath(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith(".." + os.sep + "..") else rel


def _base_record(spec: ClaimSpec, prof: Profile, run_seed: int) -> dict[str, Any]:
    rec = spec.metadata()
    rec.update({
        "nodeid": None,
        "verdict": None,
        "matches_expect": None,
        "explanation": "",
        "problems": [],
        "counterexample": None,
        "refutation": None,
        "error": None,
        "certification": None,
        "hypothesis": None,
        "statistics": None,
        "instances": 0,
        "evidence": {"series": [], "scalars": [], "tables": [], "notes": []},
        "profile": prof.name,
        "run_seed": run_seed,
        "reproduce": f"implreg verify {_relpath(spec.file)} --id {spec.id} --seed {run_seed} --profile {prof.name}",
        "timing": {"wall_s": 0.0, "phases": {}},
    })
    return rec


def _finish(record: dict[str, Any], verdict: str, explanation: str, t0: float) -> dict[str, Any]:
    record["verdict"] = verdict
    record["matches_expect"] = verdict == record["expect"]
    # An empirical replication that disagrees with the paper, with the disagreement explained by the claim's
    # author, is a finding to report, not a harness failure; an error or inconclusive outcome never is.
    record["deviation_documented"] = bool(
        record.get("deviation") and not record["matches_expect"] and verdict in ("holds", "refuted")
    )
    record["explanation"] = explanation
    record["timing"]["wall_s"] = round(time.perf_counter() - t0, 4)
    return record


def run_claim(spec: ClaimSpec, *, profile: Profile | str | None = None, seed: int | None = None,
              map_groups: MapGroups | None = None) -> dict[str, Any]:
    """Run a claim and return its record (verdict, explanation, counterexample, statistics, evidence).
    ``map_groups``: where a pooled claim's groups run (``implreg.harness.pooling.MapGroups``; default here, in
    order); the record is the same either way."""
    t0 = time.perf_counter()
    prof = profile if isinstance(profile, Profile) else get_profile(profile or os.environ.get("IMPLREG_PROFILE"))
    run_seed = prof.resolve_seed(seed)
    record = _base_record(spec, prof, run_seed)

    problems = list(spec.problems)
    dups = REGISTRY.duplicates(spec)
    if dups:
        where = ", ".join(d.where for d in dups)
        problems.append(f"duplicate claim id {spec.id!r} ({spec.where}): also defined at {where}; ids must be unique")
    if problems:
        record["problems"] = problems
        record["error"] = {"type": "MalformedClaim", "message": "; ".join(problems), "traceback": None}
        return _finish(record, "error", "The claim is malformed and was not run: " + "; ".join(problems), t0)

    rec = _record.Recorder(spec.id, budget_s=spec.budget_s)
    hseed = claim_seed(run_seed, spec.id)
    pooled: Pooled | None = None
    stats: dict[str, Any] = {}
    if spec.sample is not None:
        test = _sample_test(spec, rec, hseed)
        max_examples, phases = 1, (Phase.generate,)
        user_settings = None
    else:
        test = spec.test
        max_examples = prof.examples_for(spec.max_examples)
        phases = None
        # a @reproduce_failure blob replays its one example: run it normally (pooling would only collect it)
        if spec.instances is not None and getattr(test, "_hypothesis_internal_use_reproduce_failure", None) is None:
            # every example holds ≥ 1 instance, so this many examples always reach the target (a strategy with
            # fewer distinct examples ends generation earlier; the count says how many were checked)
            pooled = Pooled(target=prof.instances_for(spec.instances), pool_size=pool_size())
            max_examples = pooled.target
        user_settings = (test._hypothesis_internal_use_settings
                         if getattr(test, "_hypothesis_internal_settings_applied", False) else None)
    run_settings = prof.settings(max_examples=max_examples, parent=user_settings, phases=phases)

    handle = test.hypothesis
    orig_inner = handle.inner_test
    saved = (test._hypothesis_internal_use_settings, getattr(test, "_hypothesis_internal_use_seed", None))
    outcome: BaseException | None = None
    token = rec.activate()
    discards: dict[str, int] = {}
    try:
        test._hypothesis_internal_use_settings = run_settings
        test._hypothesis_internal_use_seed = hseed
        handle.inner_test = instrument(orig_inner, rec)
        with collector.with_value(stats.update), _pinned_constants(), tally() as counts:
            try:
                if pooled is not None:
                    run_pooled(test, handle, orig_inner, rec, counts, pooled, map_groups,
                               (spec.module, spec.file, spec.id))
                else:
                    test()
            finally:
                discards = dict(sorted(counts.items()))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # classified below
        outcome = exc
    finally:
        handle.inner_test = orig_inner
        test._hypothesis_internal_use_settings, test._hypothesis_internal_use_seed = saved
        rec.deactivate(token)

    counts, durations = _phase_stats(stats)
    record["timing"]["phases"] = durations
    record["hypothesis"] = {
        "seed": hseed,
        "max_examples": max_examples,
        "phases": [p.name for p in run_settings.phases],
        "calls": rec.calls,
        "valid": rec.valid,
        "rejected": rec.rejected,
        "discarded": discards,
        "undecided_examples": rec.undecided_examples,
        "failing": rec.failures,
        "by_phase": counts,
        "stopped_because": stats.get("stopped-because") or (pooled.stopped_because if pooled is not None else None),
        "budget_s": spec.budget_s,
        "budget_exhausted": rec.budget_exhausted,
        "shrink_cut": rec.shrink_cut,
        "repeated_batches": rec.repeated_batches,
    }
    record["instances"] = rec.instances
    if pooled is not None:
        record["pooling"] = pooled.as_dict()
    record["certification"] = {
        "comparisons": rec.comparisons,
        "certified": rec.certified,
        "max_error_margin_ratio": rec.max_ratio if rec.max_ratio_what is not None else None,
        "max_ratio_what": rec.max_ratio_what,
        "undecided": rec.undecided,
        "undecided_count": rec.undecided_count,
        "escalations": rec.escalations,
        "escalation_count": rec.escalation_count,
        "escalations_resolved": rec.escalations_resolved,
        # whether the certified comparisons rested on rigorous bounds or on estimates, where the recorder
        # keeps it (certify records a "basis" per comparison: "rigorous" | "estimate"); None when it does not
        "basis": _basis(rec),
        "basis_by_comparison": dict(sorted(getattr(rec, "basis", {}).items()))
        if isinstance(getattr(rec, "basis", None), dict) else None,
    }
    record["evidence"] = {
        "series": list(rec.series.values()),
        "scalars": [_scalar_summary(s) for s in rec.scalars.values()],
        "tables": list(rec.tables.values()),
        "notes": list(rec.notes),
    }
    verdict, explanation = _classify(spec, rec, outcome, record)
    return _finish(record, verdict, explanation, t0)


set_runner(run_claim)  # calling a claim function directly runs it through here (implreg.harness.claims.set_runner)


def _basis(rec: _record.Recorder) -> dict[str, int] | None:
    """Counts of certified comparisons (distinct ``what``) by basis, "rigorous" / "estimate", read from the
    recorder if it has them: ``Recorder.basis`` maps each comparison's ``what`` to its basis (an estimate anywhere
    in a comparison makes it "estimate"); a dict of counts or a list of records with a "basis" field also work."""
    raw = getattr(rec, "basis", None)
    if isinstance(raw, dict) and all(isinstance(v, str) for v in raw.values()):
        return dict(sorted(Counter(raw.values()).items())) if raw else None
    if isinstance(raw, dict):
        return {str(k): int(v) for k, v in sorted(raw.items())}
    if isinstance(raw, list):
        return dict(sorted(Counter(str(e.get("basis")) for e in raw if isinstance(e, dict)).items()))
    return None


def _scalar_summary(s: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    vals = np.asarray(s["values"], dtype=float)
    out = {"name": s["name"], "unit": s["unit"], "n": int(vals.size), "nonfinite": s["nonfinite"]}
    if vals.size:
        out.update(min=float(vals.min()), median=float(np.median(vals)), max=float(vals.max()))
    return out


_TARGET_NOTE = re.compile(r"^\s*[-+]?(?:\d[\d.eE+-]*|inf|nan)\s+\(label=.*\)\s*$", re.S)


def _counterexample(exc: BaseException, rec: _record.Recorder, record: dict[str, Any]) -> dict[str, Any]:
    notes = _notes(exc)
    # Hypothesis ≥ 6.16x says "Failing test case:" where older releases said "Falsifying example:";
    # normalize so reports read the same whichever Hypothesis is installed.
    notes = ["Falsifying example:" + n[len("Failing test case:"):] if n.startswith("Failing test case:") else n
             for n in notes]
    falsifying = next((n for n in notes if n.startswith("Falsifying")), None)
    blob_note = next((n for n in notes if "@reproduce_failure(" in n), None)
    blob = None
    if blob_note:
        m = re.search(r"(@reproduce_failure\(.*?\))", blob_note)
        blob = m.group(1) if m else None
    rest = [n for n in notes if n is not falsifying and n is not blob_note and n.strip()
            and not n.startswith(("Highest target score", "Highest target scores"))]
    # Hypothesis' target() scores (one note per label, "  -1  (label='margin: …')"): search guidance, kept apart
    # so the counterexample's own notes stay readable
    targets = [n.strip() for n in rest if _TARGET_NOTE.match(n)]
    other = [n for n in rest if not _TARGET_NOTE.match(n)]
    return {
        "exception": type(exc).__name__,
        "message": str(exc),
        "falsifying_example": falsifying,
        "arguments": rec.last_failure_kwargs if rec.last_failure is exc else None,
        "reproduce_failure": blob,
        "command": record["reproduce"],
        "notes": other,
        "target_scores": targets,
    }


def _classify(spec: ClaimSpec, rec: _record.Recorder, exc: BaseException | None,
              record: dict[str, Any]) -> tuple[str, str]:
    n_valid, n_inst = rec.valid, rec.instances

    def crash(kind: str, message: str) -> tuple[str, str]:
        record["error"] = {"type": kind, "message": message,
                           "traceback": _trimmed_traceback(exc) if exc is not None else None}
        return "error", f"The check crashed ({kind}): {message}"

    if isinstance(exc, (ReturnedValue, UncertifiedComparison, UncheckedSolve)):
        return crash(type(exc).__name__, str(exc))
    if isinstance(exc, DidNotReproduce):
        return crash("DidNotReproduce", str(exc))
    if isinstance(exc, Flaky):
        record["counterexample"] = _counterexample(exc, rec, record)
        return crash("Flaky", f"{type(exc).__name__}: {exc} — the claim gave different outcomes for the "
                              "same example (hidden state, caching, or nondeterministic numerics)")
    if isinstance(exc, PreconditionFailed):
        record["counterexample"] = _counterexample(exc, rec, record)
        record["counterexample"]["failed_check"] = exc.what
        record["refutation"] = {"failed_check": None, "named": spec.refuted_by_text, "precondition": exc.what}
        return crash("PreconditionFailed",
                     f"{exc} — a precondition of the check failed at the example below, so the claim's "
                     "conclusion was never tested there; a failed precondition is not a refutation, whatever the "
                     "claim expects.  Fix the check (solver, tolerance, instance domain) or, if the claim's "
                     "statement excludes such instances, use require(..., discard=True).")
    skipped = isinstance(exc, unittest.SkipTest) and not isinstance(exc, _Abort)
    if skipped or type(exc).__name__ == "Skipped":
        return "inconclusive", f"The claim was skipped: {exc}"
    if isinstance(exc, AssertionError):
        conclusion, where = _is_conclusion_failure(exc)
        record["counterexample"] = _counterexample(exc, rec, record)
        if not conclusion:
            return crash("AssertionError", f"an assertion inside library code failed at {where}: {exc}")
        failed = failed_check(exc)
        record["counterexample"]["failed_check"] = failed
        matches = spec.names_refutation(failed)
        record["refutation"] = {"failed_check": failed, "named": spec.refuted_by_text, "matches": matches}
        cut = (f" (Shrinking was cut short at the wall budget of {spec.budget_s:g} s after the first failure; "
               f"{rec.shrink_cut} candidate(s) skipped: the example is the smallest found by then.)"
               if rec.shrink_cut else "")
        if not matches:
            named = " or ".join(repr(w) for w in spec.refuted_by_text)
            got = repr(failed) if failed is not None else "a plain assert without a message"
            return crash("WrongReason",
                         f"refuted for the wrong reason: the counterexample below failed {got}, but the claim names "
                         f"{named} as the comparison that refutes it.  A claim refuted by another check (a sanity "
                         f"check, a solver's accuracy, a different inequality) proves nothing about its statement: "
                         f"{exc}{cut}")
        reason = f" (Refuting comparison: {failed}.)" if failed else ""
        return "refuted", ("Hypothesis found an instance that violates the conclusion and shrank it to the "
                           f"example below: {exc}{cut}{reason}")
    if isinstance(exc, FailedHealthCheck) and "filter_too_much" not in str(exc):
        # data_too_large, large_base_example, …: the strategy itself is unusable
        return crash("FailedHealthCheck", str(exc).split("\n\n")[0])
    decided_by_counters = exc is None or isinstance(exc, (BudgetExhausted, Unsatisfiable, FailedHealthCheck))
    if not decided_by_counters:
        record["counterexample"] = _counterexample(exc, rec, record) if rec.failure_seen else None
        return crash(type(exc).__name__, str(exc) or type(exc).__name__)

    budget_note = ""
    if rec.budget_exhausted:
        budget_note = (f" The wall budget of {spec.budget_s:g} s ran out after {n_valid} example(s); "
                       "no further examples were started.")
    if rec.undecided_count:
        first = ""
        if rec.undecided:
            u = rec.undecided[0]
            if u.get("error") == "inf":   # 0 ± ∞ placeholders: no float64 value worth printing
                first = (f" First: {u.get('what')} at instance {u.get('instance')}: unknown in float64 (error "
                         "bound = inf).")
            else:
                first = (f" First: {u.get('what')} at instance {u.get('instance')}: value = {u.get('value')}, "
                         f"bound = {u.get('bound')}, error bound = {u.get('error')}.")
            if u.get("hint"):
                first += f" Why: {u['hint']}."
            try:
                tie = float(u.get("gap")) == 0.0 and u.get("comparison_op") != "=="
            except (TypeError, ValueError):
                tie = False
            if tie:
                # exact operands would have been decided by the exact tier, so a side carries an error
                first += (" The value equals the bound: an equality case, and a side carries an error that no tier "
                          "removed.  If the tie is allowed, give exact sides (Certified.exact, or error=0 in "
                          "certify.at_least/at_most) and the exact tier decides it; otherwise exclude it in the "
                          "claim's hypotheses.")
        return "inconclusive", (
            f"{rec.undecided_count} comparison(s) could not be decided: |value − bound| stayed within the "
            f"error bound after {rec.escalation_count} escalation(s); no counterexample was found in "
            f"{n_valid} decided example(s).{first}{budget_note}")
    discarded = record["hypothesis"].get("discarded") or {}
    why_discarded = ("; discarded by require(..., discard=True): " +
                     ", ".join(f"{w!r} ({k}×)" for w, k in discarded.items())) if discarded else ""
    if n_valid == 0:
        if rec.budget_exhausted:
            return "inconclusive", f"No example completed within the wall budget of {spec.budget_s:g} s."
        what = ("the strategy" if rec.calls == 0 else
                f"the claim's assume()/reject() calls (all {rec.calls} drawn examples rejected{why_discarded})")
        if rec.repeated_batches:
            what = (f"the strategy ({rec.repeated_batches} example(s) rejected because a batch repeated an "
                    "instance: can its instances differ?)" if rec.calls == 0 else what)
        return crash("NoValidInstances", f"{what} produced no valid instances" +
                     (f": {str(exc).splitlines()[0]}" if exc is not None else ""))
    if isinstance(exc, (Unsatisfiable, FailedHealthCheck)):
        rep = (f" {rec.repeated_batches} more were rejected because a batch repeated an instance."
               if rec.repeated_batches else "")
        return "inconclusive", (f"Too few valid examples: only {n_valid} of {rec.calls} drawn examples were "
                                f"valid before Hypothesis gave up ({str(exc).splitlines()[0]}{why_discarded}).{rep}")

    if spec.sample is not None:
        from implreg.harness.stats import evaluate

        try:
            result = evaluate(spec.sample.test, rec.observations)
        except ValueError as err:
            return crash("BadObservations", str(err))
        record["statistics"] = result
        outcome = result["outcome"]
        if outcome == "refuted":
            record["refutation"] = {"failed_check": result["refuted_by"], "named": spec.refuted_by_text,
                                    "matches": spec.names_refutation(result["refuted_by"])}
            if not record["refutation"]["matches"]:
                named = " or ".join(repr(w) for w in spec.refuted_by_text)
                return crash("WrongReason", f"refuted for the wrong reason: the test refuted the claim by "
                                            f"{result['refuted_by']!r}, but the claim names {named}. "
                                            f"{result['sentence']}")
        return outcome, result["sentence"]

    ratio = (f"; the largest error/margin ratio was {rec.max_ratio:.3g} ({rec.max_ratio_what})"
             if rec.max_ratio_what is not None else "")
    esc = (f"; {rec.escalation_count} escalation(s) to higher precision resolved "
           f"{rec.escalations_resolved} instance(s)" if rec.escalation_count else "")
    dis = (f" {sum(discarded.values())} example(s) were discarded by require(..., discard=True)"
           f"{why_discarded.split(':', 1)[1]}." if discarded else "")
    return "holds", (f"All {n_valid} example(s) ({n_inst} instance(s)) satisfied the conclusion, with "
                     f"{rec.certified} certified comparison(s){ratio}{esc}.{budget_note}{dis}")


def describe_exception(exc: BaseException) -> str:  # used by the plugin for collection errors
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()

