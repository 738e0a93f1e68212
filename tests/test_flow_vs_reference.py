"""The torch simulator against the independent mpmath reference: agreement measured, not assumed.

For drawn instances (depth 1–4, balanced and unbalanced, completion and sensing, short horizons) the
difference between the float64 end state and the 30-digit reference must be within the simulator's own
error estimate (plus the reference's, which is ~1e-20 here and negligible).  The ratio actual/estimate is
collected and its maximum reported, so a regression that makes the estimate optimistic shows up.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from implreg_test_helpers import draw_problem

from implreg.matrix import flow, reference
from implreg.matrix.factorization import balanced_init, gaussian_init, haar_orthogonal
from implreg.matrix.problems import razin_cohen_2x2

RATIOS: list[float] = []


@st.composite
def instances(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    depth = draw(st.integers(1, 4))
    problem, (d, e) = draw_problem(draw, g)
    scale = draw(st.sampled_from([1e-2, 0.1, 0.5]))
    if draw(st.booleans()) and d == e:
        W0 = scale * torch.randn(1, d, e, generator=g, dtype=torch.float64)
        rot = [haar_orthogonal(1, d, generator=g) for _ in range(depth - 1)]
        factors = balanced_init(W0, depth, rotations=rot if depth > 1 else None)
    else:
        dims = (e, *([max(d, e)] * (depth - 1)), d)
        factors = gaussian_init(1, dims, scale, generator=g)
    t_end = draw(st.sampled_from([1.0, 3.0, 5.0]))
    return problem, factors, t_end


# Each example costs one reference solve (0.1–1 s at 30 digits); 12 examples keep the test under ~15 s.
@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_simulator_agrees_with_reference_within_its_error_estimate(inst):
    problem, factors, t_end = inst
    sol = flow.solve(problem, factors, t_max=t_end, rtol=1e-10, atol=1e-13, guard="none")
    assert sol.ok.all(), sol.messages()
    ref = reference.solve(problem, [W[0] for W in factors], t_end=t_end, dps=30, budget_s=60)
    exact = [np.array(reference._mp_to_numpy(W), dtype=np.float64) for W in ref.factors]
    # max-abs difference over every factor entry, the quantity sol.error estimates
    actual = max(float(np.abs(W[0].numpy() - X).max()) for W, X in zip(sol.factors, exact, strict=True))
    estimate = float(sol.error[0])
    ref_err = float(ref.factor_error)
    # The float64 rounding of the reference's own output (≤ 1 ulp of entries ≤ ~10) is below 4e-15;
    # allow it on top of the two estimates.
    RATIOS.append(actual / max(estimate, 1e-300))
    assert actual <= estimate + ref_err + 4e-15, (
        f"simulator error {actual:.3e} exceeds its estimate {estimate:.3e} (reference error {ref_err:.1e})"
    )


def test_reference_agreement_ratio_is_reported():
    """Runs after the property test in the same worker when collected in file order; otherwise skips."""
    if not RATIOS:
        pytest.skip("the agreement property test ran in another worker; nothing to summarize here")
    print(f"max actual/estimated error over {len(RATIOS)} instances: {max(RATIOS):.3g}")
    assert max(RATIOS) <= 1.0


@pytest.mark.parametrize("depth", [2, 3])
def test_error_estimate_honest_across_the_saddle_escape(depth):
    """Long horizon through the escape from a 1e-3 init, where the flow amplifies perturbations (~1e10 in
    some directions): measured ratios actual/estimate were ≤ 0.1 (depth 2, t = 60) and ≤ 1e-3 (depth 3)."""
    from implreg.matrix.factorization import with_det_sign

    g = torch.Generator().manual_seed(7)
    W0 = with_det_sign(1e-3 * torch.randn(1, 2, 2, generator=g, dtype=torch.float64), +1)
    factors = balanced_init(W0, depth)
    sol = flow.solve(razin_cohen_2x2(1), factors, t_max=60.0, rtol=1e-9, atol=1e-12, guard="none")
    ref = reference.solve(razin_cohen_2x2(1), [W[0] for W in factors], t_end=60.0, dps=30, budget_s=60)
    exact = [np.array(reference._mp_to_numpy(W), dtype=np.float64) for W in ref.factors]
    actual = max(float(np.abs(W[0].numpy() - X).max()) for W, X in zip(sol.factors, exact, strict=True))
    assert actual <= float(sol.error[0]) + float(ref.factor_error) + 4e-15
