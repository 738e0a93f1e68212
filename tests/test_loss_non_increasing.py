"""arora-2018/loss-non-increasing at 1,000 instances: the check stops at the loss floor (saves after it are not made
and are not compared), and the same check in the wrong direction is refuted by its comparison, shrunk to one
instance."""

from __future__ import annotations

import torch
from hypothesis import given

from implreg import certify, flow
from implreg.harness.claims import REGISTRY, claim
from implreg.harness.verdict import run_claim
from implreg.strategies.matrix import LinearProblem, stack_linear_batch
from theorems.arora_2018 import LOSS_FLOOR, SAVE_T, _cases


def test_saves_after_the_floor_are_not_made():
    """A depth-2 completion from W_1 = W_2 = 2I converges fast (rate ≈ 2σ(W) = 8 per unit time): ℓ = 1e-10 is
    reached before t = 10, so the later saves are NaN (the claim's `saved` mask drops them), the earlier ones are
    finite and above the floor."""
    P, factors = stack_linear_batch([(LinearProblem("completion", (2, 2), 7), _TwoI())])
    sol = flow.solve(P, factors, t_max=max(SAVE_T), save_at=SAVE_T, loss_target=LOSS_FLOOR)
    sol.raise_on_failure()
    saved = sol.saved[0]
    assert 0 < int(saved.sum()) < len(SAVE_T) and bool(saved[: int(saved.sum())].all())
    assert bool((sol.save_loss[0][saved] > LOSS_FLOOR).all()) and float(sol.loss[0]) <= LOSS_FLOOR * (1 + 1e-6)


class _TwoI:
    """Depth 2 from W_1 = W_2 = 2I (an init object: ``factors(dtype)``)."""

    def factors(self, dtype=torch.float64):
        return [2 * torch.eye(2, dtype=dtype).unsqueeze(0) for _ in range(2)]


def test_the_loss_never_decreasing_is_refuted_by_its_comparison_and_shrunk():
    """The control: the claim's body with the comparison reversed (ℓ(t_k) ≤ ℓ(t_{k+1}): the loss never decreases)."""
    def define():
        @claim("loss-control/never-decreases", statement="the loss never decreases along gradient flow",
               instances=60, expect="refuted", refuted_by="ℓ(t_k) ≤ ℓ(t_{k+1})")
        @given(batch=_cases(balanced=True, depths=(1, 3), kinds=("completion",)))
        def never_decreases(batch):
            P, factors = stack_linear_batch(batch)
            sol = flow.solve(P, factors, t_max=max(SAVE_T), save_at=SAVE_T, loss_target=LOSS_FLOOR)
            sol.raise_on_failure()
            loss = sol.certified.save_loss
            pairs = sol.saved[:, :-1] & sol.saved[:, 1:]
            certify(loss[:, :-1][pairs] <= loss[:, 1:][pairs], what="ℓ(t_k) ≤ ℓ(t_{k+1})")

    with REGISTRY.isolated() as reg:
        define()
        r = run_claim(next(iter(reg)), profile="ci")
    assert r["verdict"] == "refuted" and r["matches_expect"] and r["refutation"]["matches"]
    args = r["counterexample"]["arguments"]
    assert args.count("LinearProblem(") == 1, args  # one instance
    assert r["counterexample"]["reproduce_failure"].startswith("@reproduce_failure(")
