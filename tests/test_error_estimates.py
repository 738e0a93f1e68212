"""The torch solvers' error estimates against the mpmath reference, across the saddle escape (issue 13 §4).

The certification compares values with the solvers' error estimates, so each estimate it relies on is measured
here where the flow amplifies errors: the Razin–Cohen 2×2 problem from a 1e-3 balanced init (escape at
t ≈ 4–8 for depth 2, then ‖W‖ → ∞ slowly as ℓ → 0, amplifying perturbations ~e^{ct}).

* ``flow.solve(error="estimate")``: the integrator's summed local errors (no amplification).  It holds up to
  t = 50 (estimate/actual ≥ 55) but falls short after: measured at t = 80, 100, 150: 0.85×, 0.07×, 2.7e-4× the
  actual error (seed 7; seed 3: 7.8, 0.66, 2.6e-3).  Pinned below as a strict xfail: certification must not use it
  alone past an amplifying stretch.
* ``flow.solve(error="two-tolerance")``: holds everywhere measured, estimate/actual 170–730 at t = 8–150.
* ``flow.spectral.solve_balanced`` level errors (the hybrid solver; the claims combine them with a second run at
  100× looser tolerances, ``flow.two_tolerance_combine``): estimate/actual 6e4–3e6 at ℓ = 0.4 … 1e-2.

Oracle: ``implreg.matrix.reference`` at 30 digits from the same float64 factors, whose own error (≤ 1e-13 here, checked)
is added to the allowance.  For the hybrid solver the factors are balanced EXACTLY in float64 (W₂ = Y W₁ᵀ, Y a
rotation by 90°): the hybrid follows the balanced flow, and factors balanced only to rounding follow, under the
exact factor flow, a different trajectory past ℓ ≈ 5e-3 (measured: level 3e-3 reached at t = 261 instead of 386).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mpmath import mp

from implreg.matrix import flow
from implreg.matrix import reference as R
from implreg.matrix.factorization import balanced_init, balancedness_defect, with_det_sign
from implreg.matrix.flow.gradient_flow import TWO_TOL_FACTOR, two_tolerance_combine
from implreg.matrix.flow.spectral import solve_balanced
from implreg.matrix.problems import razin_cohen_2x2

#: float64 rounding of the reference's output when converted (≤ 1 ulp of entries ≤ ~20): below 4e-15.
OUTPUT_ROUNDING = 4e-15


def _balanced(depth: int, seed: int, scale: float = 1e-3) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    W0 = with_det_sign(scale * torch.randn(1, 2, 2, generator=g, dtype=torch.float64), +1)
    return balanced_init(W0, depth)


def _exactly_balanced(seed: int, scale: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth-2 factors with W₂ᵀW₂ = W₁W₁ᵀ exactly in float64: W₂ = Y W₁ᵀ, Y orthogonal with entries 0, ±1;
    det W = det Y · det(W₁)² > 0."""
    g = torch.Generator().manual_seed(seed)
    W1 = scale * torch.randn(1, 2, 2, generator=g, dtype=torch.float64)
    Y = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    return W1, Y @ W1.mT


def _reference_saves(factors, T):
    ref = R.solve(razin_cohen_2x2(1), [W[0] for W in factors], t_end=T[-1], dps=30, save_at=T, budget_s=60)
    states = [np.concatenate([R._mp_to_numpy(W).reshape(-1) for W in ref.save_factors[k]]) for k in range(len(T))]
    # save_errors bound ‖δW‖_F of the end-to-end matrix; the factor error is ≤ factor_error at the end only,
    # so bound every save's factor error by a separate solve to that time (cheap at 30 digits)
    errs = [float(R.solve(razin_cohen_2x2(1), [W[0] for W in factors], t_end=t, dps=30, budget_s=60).factor_error)
            for t in T]
    assert max(errs) < 1e-12, errs  # the oracle is far more accurate than the float64 solvers
    return np.stack(states), np.array(errs)


def _check(y: torch.Tensor, err: torch.Tensor, exact: np.ndarray, ref_err: np.ndarray, what: str) -> np.ndarray:
    actual = np.abs(y.numpy() - exact).max(-1)
    est = err.numpy()
    print(f"{what}: actual {np.array2string(actual, precision=2)}, estimate/actual "
          f"{np.array2string(est / actual, precision=3)}")
    assert (actual > 0).all()
    bad = actual > est + ref_err + OUTPUT_ROUNDING
    assert not bad.any(), f"{what}: actual error exceeds the estimate at save indices {np.flatnonzero(bad)}"
    return est / actual


@pytest.mark.parametrize(("depth", "seed", "T"), [(2, 7, (4.0, 8.0, 20.0, 50.0)), (3, 7, (10.0, 20.0, 40.0, 60.0))])
def test_summed_estimate_holds_through_the_escape(depth, seed, T):
    factors = _balanced(depth, seed)
    exact, ref_err = _reference_saves(factors, T)
    sol = flow.solve(razin_cohen_2x2(1), factors, t_max=T[-1], save_at=T, guard="none")
    _check(sol.result.save_y[0], sol.result.save_error[0], exact, ref_err, f"summed estimate, depth {depth}")


@pytest.mark.xfail(strict=True, reason="the summed local errors miss the flow's amplification: 0.07× the actual "
                                       "error at t = 100, 2.7e-4× at t = 150 (issue 13 §4)")
def test_summed_estimate_falls_short_in_the_slow_divergence():
    factors, T = _balanced(2, 7), (100.0, 150.0)
    exact, ref_err = _reference_saves(factors, T)
    sol = flow.solve(razin_cohen_2x2(1), factors, t_max=T[-1], save_at=T, guard="none")
    _check(sol.result.save_y[0], sol.result.save_error[0], exact, ref_err, "summed estimate, slow divergence")


@pytest.mark.parametrize("seed", [7, 3])
def test_two_tolerance_estimate_holds_through_the_slow_divergence(seed):
    factors, T = _balanced(2, seed), (8.0, 50.0, 80.0, 100.0, 150.0)
    exact, ref_err = _reference_saves(factors, T)
    sol = flow.solve(razin_cohen_2x2(1), factors, t_max=T[-1], save_at=T, guard="none", error="two-tolerance")
    ratio = _check(sol.result.save_y[0], sol.result.save_error[0], exact, ref_err, "two-tolerance estimate")
    # measured 170–730: far more pessimistic would make certified comparisons needlessly undecided
    assert ratio.max() < 1e5


def test_hybrid_solver_level_errors_hold_through_the_escape():
    levels = (0.4, 0.1, 3e-2, 1e-2)
    factors = _exactly_balanced(7)
    assert float(balancedness_defect(factors)[0]) == 0.0
    P = razin_cohen_2x2(1)
    kw = dict(loss_target=levels[-1], loss_levels=levels)
    sol = solve_balanced(P, factors, 2, **kw)
    loose = solve_balanced(P, factors, 2, rtol=TWO_TOL_FACTOR * 1e-9, atol=TWO_TOL_FACTOR * 1e-12, **kw)
    assert sol.ok.all() and bool(sol.switched[0]), sol.messages()  # the spectral phase is exercised
    exact, ref_err = [], []
    for lv in levels:  # one reference solve per level, so that each state comes with its own error estimate
        ref = R.solve(P, [W[0] for W in factors], t_end=1e4, loss_target=lv, dps=30, budget_s=60)
        with mp.workdps(30):
            exact.append(R._mp_to_numpy(ref.end_to_end).reshape(-1))
            ref_err.append(float(ref.error_estimate))
    exact, ref_err = np.stack(exact), np.array(ref_err)
    assert ref_err.max() < 1e-7, ref_err
    W = sol.level_end_to_end[0].flatten(-2)
    _check(W, sol.level_error[0], exact, ref_err, "hybrid level error")
    two = two_tolerance_combine(sol.level_error, sol.level_end_to_end.flatten(-2), loose.level_end_to_end.flatten(-2))
    _check(W, two[0], exact, ref_err, "hybrid two-tolerance level error")
