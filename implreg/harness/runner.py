"""Run one collected claim into its record, whatever happens: the step shared by the pytest plugin (local and
xdist runs) and the cluster mode (``implreg.harness.cluster``), so that both write records of the same form.

``run_claim`` classifies everything a claim can do into a verdict; what is left is a failure of implreg itself
(or of the machinery around it: a worker that could not run the task at all), which must still leave an
``error`` record, never a missing claim and never ``holds``.
"""

from __future__ import annotations

import traceback
from typing import Any

from implreg.harness.claims import ClaimSpec

__all__ = ["claim_record", "error_record"]


def error_record(meta: dict[str, Any], *, kind: str, message: str, explanation: str, profile: str | None,
                 seed: int | None, tb: str | None = None, reproduce: str | None = None) -> dict[str, Any]:
    """An ``error`` record for a claim (its ``meta``data) that has no result of its own."""
    return {**meta, "verdict": "error", "matches_expect": meta.get("expect") == "error",
            "explanation": explanation, "problems": [], "counterexample": None,
            "error": {"type": kind, "message": message, "traceback": tb},
            "certification": None, "hypothesis": None, "statistics": None, "instances": 0,
            "evidence": {"series": [], "scalars": [], "tables": [], "notes": []},
            "profile": profile, "run_seed": seed, "reproduce": reproduce, "timing": {"wall_s": 0.0}}


def claim_record(spec: ClaimSpec, *, profile: Any, seed: int, nodeid: str, worker: str,
                 **run_kwargs: Any) -> dict[str, Any]:
    """``run_claim``'s record with the pytest node id and the process that ran it; a harness crash is ``error``.

    ``worker`` (which process ran it) depends on scheduling, so it is kept under ``timing`` with the other
    run-dependent values (``implreg.harness.results.strip_timing``).
    """
    from implreg.harness.verdict import run_claim

    try:
        record = run_claim(spec, profile=profile, seed=seed, **run_kwargs)
    except Exception as exc:  # a harness bug must still leave a record
        record = error_record(spec.metadata(), kind="InternalError", message=repr(exc),
                              explanation=f"implreg itself failed while running this claim: {exc!r}",
                              profile=profile.name, seed=seed, tb=traceback.format_exc())
    record["nodeid"] = nodeid
    record["timing"]["worker"] = worker
    return record
