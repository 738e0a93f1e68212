"""Hypothesis profiles for claim runs: ``quick`` (dev), ``ci`` (derandomized, the default), ``thorough``.

A profile fixes how many examples a claim gets and how the run is seeded.  Every run has a seed and the
report records it: ``ci`` uses a fixed seed (0) unless ``--seed`` is given; ``quick`` and ``thorough`` draw
a fresh one each run.  Each claim's Hypothesis seed is derived from (run seed, claim id) alone, so a claim
draws the same examples whether it runs alone, with others, or on any xdist worker.

All profiles: no example database (a saved failure would make runs depend on history), no per-example
deadline (simulators are slow; claims have a wall budget instead), ``print_blob`` for reproduction, one
bug per claim (``report_multiple_bugs=False``: the search stops at the first failure and shrinks it,
which keeps the outcome deterministic), and no ``explain`` phase (it traces every line, far too slow for
simulators).  A claim's ``max_examples`` is its count under ``ci``; other profiles scale it.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from hypothesis import HealthCheck, Phase, settings

from implreg.errors import ImplregError

__all__ = ["DEFAULT", "PROFILES", "Profile", "UnknownProfileError", "claim_seed", "get_profile"]

_PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
_SUPPRESS = (HealthCheck.too_slow, HealthCheck.differing_executors)


@dataclass(frozen=True)
class Profile:
    """How a run of claims is configured."""

    name: str
    max_examples: int           # examples per claim unless the claim states its own count
    scale: float                # a claim's own max_examples (stated for ci) is multiplied by this
    derandomize: bool
    default_seed: int | None    # None: draw a fresh seed per run (recorded in the report)
    description: str
    instance_scale: float = 1.0  # a pooled claim's own instance count (stated for ci) is multiplied by this

    def examples_for(self, claim_max_examples: int | None) -> int:
        if claim_max_examples is None:
            return self.max_examples
        return max(1, round(claim_max_examples * self.scale))

    def instances_for(self, claim_instances: int) -> int:
        """Distinct instances a pooled claim (``@claim(instances=…)``) checks under this profile."""
        return max(1, round(claim_instances * self.instance_scale))

    def resolve_seed(self, seed: int | None) -> int:
        if seed is not None:
            return int(seed)
        if self.default_seed is not None:
            return self.default_seed
        return secrets.randbelow(2**32)

    def settings(self, *, max_examples: int, parent: settings | None = None,
                 phases: tuple[Phase, ...] | None = None) -> settings:
        """Hypothesis settings for one claim run (``parent``: settings the claim applied itself)."""
        chosen = tuple(p for p in (phases or _PHASES) if p is not Phase.explain)
        suppress = set(_SUPPRESS) | set(parent.suppress_health_check if parent is not None else ())
        return settings(
            parent,
            max_examples=max_examples,
            derandomize=self.derandomize,
            database=None,
            deadline=None,
            print_blob=True,
            report_multiple_bugs=False,
            phases=chosen,
            suppress_health_check=sorted(suppress, key=lambda h: h.value),
        )


PROFILES: dict[str, Profile] = {
    "quick": Profile("quick", max_examples=10, scale=0.2, derandomize=False, default_seed=None,
                     description="development: few examples, fresh seed each run", instance_scale=0.1),
    "ci": Profile("ci", max_examples=50, scale=1.0, derandomize=True, default_seed=0,
                  description="CI: derandomized, fixed seed 0, moderate example counts"),
    "thorough": Profile("thorough", max_examples=500, scale=10.0, derandomize=False, default_seed=None,
                        description="many examples, fresh seed each run",
                        # 1e3 instances per pooled claim under ci become 1e5: sized for one GPU
                        instance_scale=100.0),
}
DEFAULT = "ci"


class UnknownProfileError(ImplregError, ValueError):
    """A profile name that is not one of PROFILES."""


def get_profile(name: str | None) -> Profile:
    """The profile called ``name`` (None → the default, ``ci``); unknown names list the known ones."""
    if name is None:
        name = DEFAULT
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(f"{p.name} ({p.description})" for p in PROFILES.values())
        raise UnknownProfileError(f"unknown profile {name!r}; known profiles: {known}") from None


def claim_seed(run_seed: int, claim_id: str) -> int:
    """The Hypothesis seed of one claim: a hash of (run seed, claim id), independent of run order."""
    digest = hashlib.sha256(f"{int(run_seed)}:{claim_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")
