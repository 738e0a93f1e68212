"""Tests of ``theorems/_factorization.py``, the shared plumbing of the matrix-factorization claims.

Every helper is checked against an independent computation, never against its own output:

- the 2×2 algebra (``w11_lower_bound``, its error propagation ``w11_bound_error``, ``mp_det2_error``) against
  hand-worked closed forms, matrices built to satisfy the hypotheses, and adversarial perturbations evaluated in
  exact rational or 50-digit arithmetic;
- ``fill_missing`` and ``certify_levels`` against what certify must do with computed and missing entries:
  refute, pass, or stay undecided — a missing entry is never silently passed — and escalate to a real
  mpmath reference solve when one is given;
- ``solve_levels`` against ``implreg.reference.solve`` run to the same loss levels from the same inits;
- ``ReferenceLevels.state``'s cache and budgets, by counting the reference solves it starts.

Reference solves are kept short (depth 2–3, init scale 0.1–0.3, loss levels ≥ 1e-2, 30 digits — 60 where the
depth-2 det must be resolved: 0.02–0.6 s each, measured).
"""

from __future__ import annotations

import itertools
import math
import re
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mpmath import mp

from implreg import certify, reference
from implreg import matrix_bounds as mb
from implreg.problems import razin_cohen_2x2
from implreg.strategies.matrix import BalancedInit
from theorems import _factorization as fz

F64 = torch.float64
U = mb.U64  # 2^-52, an over-estimate of the unit roundoff
SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None)
#: The Razin–Cohen problem's data (observed entries (1,2), (2,1), (2,2); targets 1, 1, 0).
MASK = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=F64)
TARGET = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=F64)


def _gaussian(seed: int) -> tuple[tuple[float, float], tuple[float, float]]:
    z = np.random.default_rng(seed).standard_normal((2, 2))
    return (float(z[0, 0]), float(z[0, 1])), (float(z[1, 0]), float(z[1, 1]))


def _balanced(depth: int, sigma: tuple[float, float], seed: int) -> BalancedInit:
    """A 2×2 balanced init with det W(0) > 0, built explicitly (U, V, R_j from fixed Gaussian seeds; U's first
    column negated when the drawn det is negative, as ``balanced_inits(det_sign=+1)`` does)."""
    zu, zv = _gaussian(seed), _gaussian(seed + 1000)
    zr = tuple(_gaussian(seed + 2000 + j) for j in range(depth - 1))
    init = BalancedInit(depth, sigma, zu, zv, zr)
    if init.det_sign < 0:
        init = BalancedInit(depth, sigma, zu, zv, zr, flip_u=True)
    return init


def _mp_product(mats):
    W = mats[0]
    for Wj in mats[1:]:
        W = Wj * W
    return W


def _to_torch(W) -> torch.Tensor:
    return torch.tensor([[float(W[r, c]) for c in range(W.cols)] for r in range(W.rows)], dtype=F64)


def _det_mp(fetch, ik):
    """det W of a reference state in mpmath, with mp_det2_error (what the det claims escalate with)."""
    state = fetch(*ik)
    if state is None:
        return None
    W, e = state
    return fz.mp_det2(W), mp.mpf(0), fz.mp_det2_error(W, e)


def _det_f64(W: torch.Tensor, e: torch.Tensor):
    """The float64 route (``q``): det of the rounded reference state with det2_error."""
    return torch.linalg.det(W)[0], torch.zeros(()), mb.det2_error(W, e)[0]


# ================================================================================= 1. w11_lower_bound

#: (ℓ, f(ℓ)) worked by hand: δ = √(2ℓ) is a short fraction and f = (1 − δ)²/δ = 1/δ − 2 + δ.
CLOSED_FORM = [
    ("0.5", "0"),            # δ = 1: f = 0 (the bound is vacuous at ℓ = ½)
    ("0.125", "0.5"),        # δ = 1/2: 2 − 2 + 1/2
    ("0.03125", "2.25"),     # δ = 1/4: 4 − 2 + 1/4
    ("0.02", "3.2"),         # δ = 1/5: 5 − 2 + 1/5
    ("0.0002", "48.02"),     # δ = 1/50: 50 − 2 + 1/50
    ("5e-9", "9998.0001"),   # δ = 1e-4: 1e4 − 2 + 1e-4
]


@pytest.mark.parametrize(("loss", "expected"), CLOSED_FORM)
def test_w11_lower_bound_matches_the_closed_form_on_floats_arrays_tensors_and_mpf(loss, expected):
    want = float(expected)
    # float64: ≤ 6 roundings (ℓ itself, √, 1 − δ, square, ÷, and the expected value's decimal), each ≤ u/2,
    # amplified by f's condition number in δ, (1 + δ)/(1 − δ) ≤ 3 for δ ≤ ½: ≤ 9u ≈ 2e-15; 1e-14 leaves room.
    # (At ℓ = ½ every step is exact, so f = 0 exactly, which rel= demands.)
    rel = 1e-14
    assert fz.w11_lower_bound(float(loss), math.sqrt) == pytest.approx(want, rel=rel, abs=0)
    arr = fz.w11_lower_bound(np.array([float(loss)] * 3), np.sqrt)
    assert arr.shape == (3,) and np.allclose(arr, want, rtol=rel, atol=0)
    t = fz.w11_lower_bound(torch.full((2, 3), float(loss), dtype=F64), torch.sqrt)
    assert t.shape == (2, 3) and t.dtype == F64
    assert torch.allclose(t, torch.full_like(t, want), rtol=rel, atol=0)
    with mp.workdps(50):
        got = fz.w11_lower_bound(mp.mpf(loss), mp.sqrt)  # ℓ as the exact decimal, not its float
        # 50 digits: five roundings of ≤ 1e-50 relative each, condition number ≤ 3: 1e-45 is ample.
        assert abs(got - mp.mpf(expected)) <= mp.mpf("1e-45") * max(1, abs(mp.mpf(expected)))


@SETTINGS
@given(log_loss=st.floats(-8.0, math.log10(0.4999)), theta=st.floats(0.0, 2 * math.pi),
       phi=st.floats(0.0, 1.5707), neg_c=st.booleans(), log_t=st.floats(-12.0, 3.0))
def test_w11_lower_bound_is_a_lower_bound_where_det_is_positive_and_loss_below_half(log_loss, theta, phi, neg_c,
                                                                                 log_t):
    """Build W with ℓ(W) = ℓ and det W > 0 by construction: (W₁₂ − 1, W₂₁ − 1, W₂₂) = √(2ℓ)·(unit vector with
    W₂₂ ≠ 0), W₁₁ = (1 + t)·W₁₂W₂₁/W₂₂ (then det W = t·W₁₂W₂₁ > 0).  Everything at 50 digits."""
    with mp.workdps(50):
        r = mp.sqrt(2 * mp.mpf(10.0**log_loss))
        a = r * mp.sin(phi) * mp.cos(theta)
        b = r * mp.sin(phi) * mp.sin(theta)
        c = (-1 if neg_c else 1) * r * mp.cos(phi)  # |c| ≥ r·cos(1.5707) ≈ 1e-4·r > 0
        W12, W21 = 1 + a, 1 + b
        W11 = (1 + mp.mpf(10.0**log_t)) * W12 * W21 / c
        W = mp.matrix([[W11, W12], [W21, c]])
        ell = fz.loss_2x2(W)
        assert fz.mp_det2(W) > 0 and ell < mp.mpf(1) / 2  # the hypotheses (true by construction)
        assert abs(W[0, 0]) >= fz.w11_lower_bound(ell, mp.sqrt)


@pytest.mark.parametrize("delta", ["1e-2", "1e-4", "1e-6"])
def test_w11_lower_bound_is_nearly_attained(delta):
    """W = [[(1 + 1e-12)/δ, 1], [1, δ]]: ℓ = δ²/2, det W = 1e-12 > 0, |W₁₁| = (1 + 1e-12)/δ while f = (1 − δ)²/δ.
    The ratio (1 + 1e-12)/(1 − δ)² ≤ 1 + 3δ (δ ≤ 1e-2), so a bound larger than f by more than 3δ relative would
    be refuted by this matrix: the lower-bound property above is not satisfied by a weak formula only."""
    with mp.workdps(50):
        d = mp.mpf(delta)
        W = mp.matrix([[(1 + mp.mpf("1e-12")) / d, 1], [1, d]])
        ell = fz.loss_2x2(W)
        f = fz.w11_lower_bound(ell, mp.sqrt)
        assert fz.mp_det2(W) > 0 and abs(ell - d * d / 2) <= mp.mpf("1e-45")
        assert f <= W[0, 0] <= f * (1 + 3 * d)


def test_loss_2x2_is_the_problems_loss():
    """loss_2x2 against the problem's own loss on single 2×2 tensors, and a hand value on an mp.matrix."""
    W = torch.randn(20, 2, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    want = razin_cohen_2x2(20).loss(W)
    # two float64 evaluations of half a sum of three squares: each within ~4u relative; 1e-14 is generous.
    for i in range(20):
        assert float(fz.loss_2x2(W[i])) == pytest.approx(float(want[i]), rel=1e-14, abs=0)
    with mp.workdps(30):
        assert fz.loss_2x2(mp.matrix([[7, 3], [-1, mp.mpf("0.5")]])) == mp.mpf("4.125")  # (4 + 4 + ¼)/2


def test_loss_2x2_on_a_batch_as_its_docstring_promises():
    """A batch (..., 2, 2) gives one loss per matrix; the problem's loss is the independent oracle.  (It once
    read W[0, 1], which on a batch is a row of the first instance.)"""
    W = torch.randn(5, 2, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    got = fz.loss_2x2(W)
    # float rounding only (see above): 1e-14 relative.
    assert got.shape == (5,) and torch.allclose(got, razin_cohen_2x2(5).loss(W), rtol=1e-14, atol=0)


# ================================================================================= 2. w11_bound_error


def _f(x):
    """f(ℓ) = 1/δ − 2 + δ, δ = √(2ℓ) (the expanded form, at the current mp precision)."""
    d = mp.sqrt(2 * x)
    return 1 / d - 2 + d


@SETTINGS
@given(log_loss=st.floats(-8.0, math.log10(0.49)), log_rel=st.floats(-16.0, math.log10(0.99)),
       inner=st.lists(st.floats(-1.0, 1.0), min_size=6, max_size=6))
def test_w11_bound_error_is_sound(log_loss, log_rel, inner):
    """|f(ℓ') − f(ℓ)| ≤ w11_bound_error(ℓ, e) for ℓ' in [ℓ − e, ℓ + e]: both endpoints, drawn interior points,
    and ℓ' = ½ when the interval holds it (f is not monotone there: f(½) = 0 is the farthest from f(ℓ)).
    ℓ ∈ (1e-8, 0.49), e from 1e-16·ℓ (float rounding of ℓ) to 0.99·ℓ; f in mpmath at 50 digits from the
    float64 inputs taken exactly, so no tolerance is needed."""
    loss = 10.0**log_loss
    loss_err = loss * 10.0**log_rel
    bound = fz.w11_bound_error(torch.tensor(loss, dtype=F64), torch.tensor(loss_err, dtype=F64))
    assert bound.shape == () and math.isfinite(float(bound))
    with mp.workdps(50):
        ell, e = mp.mpf(loss), mp.mpf(loss_err)
        points = [ell - e, ell + e, *(ell + mp.mpf(s) * e for s in inner)]
        if ell - e <= 0.5 <= ell + e:
            points.append(mp.mpf(0.5))
        f0 = _f(ell)
        worst = max(abs(_f(p) - f0) for p in points)
        assert worst <= mp.mpf(float(bound)), (loss, loss_err, float(bound), mp.nstr(worst, 17))


def test_w11_bound_error_broadcasts_and_is_not_vacuous():
    """On a (15, 4) grid (ℓ ∈ [1e-8, 0.1], e/ℓ ∈ {1e-16, 1e-10, 1e-4, 1e-2}) in one broadcast call: sound at
    ℓ − e, and at most twice the actual change there plus twice the rounding allowance 1e-15/δ_lo.

    Why 2: at ℓ' = ℓ − e the change is exactly (δ − δ_lo)(1/(δδ_lo) − 1) while the bound's main term is
    (δ − δ_lo)/δ_lo² (as 2e/(δ_lo + δ) = δ − δ_lo), a ratio δ/(δ_lo(1 − δδ_lo)) ≤ 1.005/(1 − 0.2) < 1.3 for
    ℓ ≤ 0.1 and e ≤ 1e-2·ℓ; 2 leaves room for the (1 + 1e-12) factor and float rounding."""
    loss = torch.logspace(-8, -1, 15, dtype=F64)[:, None]
    rel = torch.tensor([1e-16, 1e-10, 1e-4, 1e-2], dtype=F64)
    loss_err = loss * rel
    bound = fz.w11_bound_error(loss, loss_err)
    assert bound.shape == (15, 4)
    with mp.workdps(50):
        for i, j in itertools.product(range(15), range(4)):
            ell, e = mp.mpf(float(loss[i, 0])), mp.mpf(float(loss_err[i, j]))
            change = _f(ell - e) - _f(ell)
            b = mp.mpf(float(bound[i, j]))
            allowance = mp.mpf("1e-15") / mp.sqrt(2 * (ell - e))
            assert change <= b <= 2 * change + 2 * allowance, (float(ell), float(e), float(b), float(change))


# ================================================================================= 3. mp_det2_error


@SETTINGS
@given(w=st.lists(st.floats(-10.0, 10.0), min_size=4, max_size=4), log_e=st.floats(-20.0, 0.0),
       inner=st.lists(st.floats(-1.0, 1.0), min_size=4, max_size=4))
def test_mp_det2_error_bounds_every_perturbation_and_is_attained_up_to_e_squared(w, log_e, inner):
    """|det(W + E) − det W| ≤ mp_det2_error(W, e) for |E_ij| ≤ e, over all 16 corners E = e·(±1) and one drawn
    interior E, in exact rational arithmetic (the helper only adds, multiplies and takes |·|, so it runs on
    Fractions; equality cases such as W = 0 are then decided exactly).  The corner whose signs follow the
    cofactors reaches e·Σ|W_ij| − 2e², so the bound (e·Σ|W_ij| + 2e²) is tight to 4e².  On mp.matrix (the
    claims' use) it agrees with the exact value to 50-digit rounding."""
    e = 10.0**log_e
    W = np.array([[Fraction(w[0]), Fraction(w[1])], [Fraction(w[2]), Fraction(w[3])]], dtype=object)
    E = Fraction(e)
    bound = fz.mp_det2_error(W, E)
    d0 = fz.mp_det2(W)
    corners = [abs(fz.mp_det2(W + E * np.array(s, dtype=object).reshape(2, 2)) - d0)
               for s in itertools.product((-1, 1), repeat=4)]
    interior = abs(fz.mp_det2(W + E * np.array([Fraction(x) for x in inner], dtype=object).reshape(2, 2)) - d0)
    assert max(corners) <= bound and interior <= bound
    assert max(corners) >= bound - 4 * E * E
    with mp.workdps(50):
        got = fz.mp_det2_error(mp.matrix([[w[0], w[1]], [w[2], w[3]]]), mp.mpf(e))
        exact = mp.mpf(bound.numerator) / bound.denominator
        # 50 digits: ≤ 8 roundings of a sum of non-negative terms (no cancellation), each ≤ 1e-50 relative.
        assert abs(got - exact) <= mp.mpf("1e-48") * exact


# ================================================================================= 4. fill_missing


def test_fill_missing_keeps_computed_entries_and_makes_the_rest_undecidable():
    nan, inf = math.nan, math.inf
    value = torch.tensor([[1.5, nan], [4.0, inf]], dtype=F64)  # solvers leave NaN where a level was not reached
    bound = torch.tensor([[0.5, nan], [3.0, -7.0]], dtype=F64)
    error = torch.tensor([[1e-9, nan], [0.0, 2.0]], dtype=F64)
    ok = torch.tensor([[True, False], [True, False]])
    before = [x.clone() for x in (value, bound, error)]
    v, b, e = fz.fill_missing(value, bound, error, ok)
    for new, old in zip((v, b, e), (value, bound, error), strict=True):
        assert torch.equal(new[ok], old[ok])  # computed entries untouched, bit for bit
    assert (v[~ok] == 0).all() and (b[~ok] == 0).all() and (e[~ok] == 1).all()
    for x, y in zip((value, bound, error), before, strict=True):
        assert torch.equal(x.nan_to_num(), y.nan_to_num())  # inputs not modified
    # 0 vs 0 ± 1 is neither certified nor refuted in either direction: exactly the blanks stay undecided
    # (the computed entries 1.5 ≥ 0.5 and 4 ≥ 3 are certified; at_most(b, v) is the same comparison from below)
    for fn, x, y in ((certify.at_least, v, b), (certify.at_most, b, v)):
        with pytest.raises(certify.Undecided) as info:
            fn(x, y, error=e, what="x")
        assert [en["instance"] for en in info.value.entries] == [[0, 1], [1, 1]]


# ================================================================================= 5. certify_levels


def _levels_case():
    """A (B = 2, L = 3) comparison ``value ≥ 0``: instance 0 reached two levels, instance 1 one."""
    value = torch.tensor([[1.0, 0.5, math.nan], [2.0, math.nan, math.nan]], dtype=F64)
    reached = torch.isfinite(value)
    return value, torch.zeros_like(value), torch.full_like(value, 1e-3), reached


def test_certify_levels_passes_when_every_entry_is_reached_and_true():
    value, bound, error, _ = _levels_case()
    value = value.nan_to_num(3.0)
    fz.certify_levels("≥", value, bound, error, torch.ones_like(value, dtype=torch.bool), what="x ≥ 0")
    fz.certify_levels("≤", -value, bound, error, torch.ones_like(value, dtype=torch.bool), what="−x ≤ 0")


def test_certify_levels_refutes_with_a_violating_reached_entry():
    value, bound, error, reached = _levels_case()
    value[1, 0] = -1.0
    with pytest.raises(AssertionError, match=re.escape("x ≥ 0: value ≥ bound is false: value = -1.0")):
        fz.certify_levels("≥", value, bound, error, reached, what="x ≥ 0")
    with pytest.raises(AssertionError, match=re.escape("−x ≤ 0: value ≤ bound is false: value = 1.0")):
        fz.certify_levels("≤", -value, bound, error, reached, what="−x ≤ 0")
    # a refutation is not hidden by the undecided entries beside it, nor by a reference (it is never asked)
    ref = fz.ReferenceLevels(lambda i: razin_cohen_2x2(), [], [0.4], total_budget_s=0.0)
    with pytest.raises(AssertionError):
        fz.certify_levels("≥", value, bound, error, reached, what="x ≥ 0", ref=ref, mp_quantity=_det_mp)
    assert ref.cache == {} and ref.notes == []


@pytest.mark.parametrize("garbage", [math.nan, -1e300, 1e300, 0.0])
def test_certify_levels_leaves_unreached_entries_undecided_without_a_reference(garbage):
    """Whatever value sits at an unreached entry (NaN, a violation, a pass), it is neither refuted nor passed:
    certify raises Undecided naming exactly the unreached entries (positions in the (i, k) row-major order)."""
    value, bound, error, reached = _levels_case()
    value[~reached] = garbage
    bound[~reached] = garbage
    with pytest.raises(certify.Undecided) as info:
        fz.certify_levels("≥", value, bound, error, reached, what="x ≥ 0")
    assert [en["instance"] for en in info.value.entries] == [[2], [4], [5]]
    with pytest.raises(certify.Undecided):
        fz.certify_levels("≤", -value, bound, error, reached, what="−x ≤ 0")


def test_certify_levels_consider_restricts_the_comparison():
    value, bound, error, reached = _levels_case()
    value[0, 0] = -1.0  # a violation outside `consider` is not looked at
    consider = reached.clone()
    consider[0, 0] = False
    fz.certify_levels("≥", value, bound, error, reached, what="x ≥ 0", consider=consider)
    consider[1, 1] = True  # an unreached entry inside `consider` is undecided again
    with pytest.raises(certify.Undecided) as info:
        fz.certify_levels("≥", value, bound, error, reached, what="x ≥ 0", consider=consider)
    assert [en["instance"] for en in info.value.entries] == [[2]]  # (1, 1) is the 3rd considered pair


INIT2 = _balanced(2, (0.3, 0.1), 11)


def test_certify_levels_escalates_an_unreached_entry_to_the_reference():
    """Level 0.3 marked unreached: its det is decided by a real 30-digit reference solve (det W > 0 there:
    ≥ is certified and ≤ refuted, so the reference's answer — not a default — is what decides), only that entry
    is escalated, and the second comparison reuses the cached state."""
    levels = (0.4, 0.3)
    run = fz.solve_levels(razin_cohen_2x2(), [INIT2], levels)
    assert run.reached.all()
    det = run.det_sign * torch.exp(run.log_abs_det)
    reached = run.reached.clone()
    reached[0, 1] = False
    det[0, 1] = math.nan
    err = mb.det2_error(run.W, run.err)
    ref = fz.ReferenceLevels(lambda i: razin_cohen_2x2(), [INIT2], run.levels.tolist())
    fz.certify_levels("≥", det, torch.zeros_like(det), err, reached, what="det W ≥ 0", ref=ref, mp_quantity=_det_mp)
    assert list(ref.cache) == [(0, 1, fz.REF_DPS[0])] and ref.cache[(0, 1, fz.REF_DPS[0])] is not None
    spent = ref.spent_s
    # ≤ on the unreached entry alone (the reached one would refute it before any escalation): the reference
    # refutes it, so escalation hands back the reference's value, not a pass
    only = ~reached
    with pytest.raises(AssertionError, match=r"det W ≤ 0: .* \(after escalation at 30 digits\)"):
        fz.certify_levels("≤", det, torch.zeros_like(det), err, reached, what="det W ≤ 0", ref=ref,
                          mp_quantity=_det_mp, consider=only)
    assert ref.spent_s == spent and len(ref.cache) == 1
    # the float64 route (q): the same state rounded to float64, det with det2_error
    fz.certify_levels("≥", det, torch.zeros_like(det), err, reached, what="det W ≥ 0 (f64)", ref=ref, q=_det_f64)
    with pytest.raises(AssertionError, match=r"\(after escalation at 30 digits\)"):
        fz.certify_levels("≤", det, torch.zeros_like(det), err, reached, what="det W ≤ 0 (f64)", ref=ref, q=_det_f64,
                          consider=only)
    assert ref.spent_s == spent and ref.notes == []


def test_certify_levels_stays_undecided_when_the_reference_budget_is_spent():
    value, bound, error, reached = _levels_case()
    ref = fz.ReferenceLevels(lambda i: razin_cohen_2x2(), [INIT2, INIT2], [0.4, 0.3, 0.2], total_budget_s=0.0)
    with pytest.raises(certify.Undecided) as info:
        fz.certify_levels("≥", value, bound, error, reached, what="x ≥ 0", ref=ref, mp_quantity=_det_mp)
    assert [en["instance"] for en in info.value.entries] == [[2], [4], [5]]
    assert ref.cache == {} and ref.notes and all("budget" in n for n in ref.notes)


# ================================================================================= 6. solve_levels

#: Agreement with the reference: |W − W_ref| ≤ SAFETY·(err + err_ref + 4u·max|W_ref|).  ``err`` is an estimate,
#: not a rigorous bound: the integrator's summed local error estimates (which miss the flow's amplification,
#: implreg.flow's docstring), plus |W_tight − W_loose| against a run at 100× the tolerances (solve_levels'
#: two-tolerance model).  Comparing at a loss level adds the shift of the located crossing along the trajectory:
#: a state off by err moves ℓ by ~‖∇ℓ‖·err, hence the crossing by ~err·‖∇ℓ‖‖Ẇ‖/|⟨∇ℓ, Ẇ⟩| = err/cos∠(∇ℓ, Ẇ) —
#: about one more err for these well-conditioned balanced inits.  SAFETY = 4 covers both with room.  (Measured
#: here: |W − W_ref| ≤ 0.004·(err + err_ref); the ratio is printed with -s.)
SAFETY = 4.0
INITS3 = [_balanced(3, (0.3, 0.1), 21), _balanced(3, (0.25, 0.2), 22)]
INITS2 = [_balanced(2, (0.3, 0.1), 31), _balanced(2, (0.2, 0.12), 32)]
LEVELS3 = (0.2, 0.4, 0.1)  # deliberately unsorted: solve_levels sorts them descending
LEVELS2 = (0.1, 0.4, 1e-2)


@pytest.fixture(scope="module")
def runs():
    return {3: fz.solve_levels(razin_cohen_2x2(), INITS3, LEVELS3),
            2: fz.solve_levels(razin_cohen_2x2(len(INITS2)), INITS2, LEVELS2)}


def test_inits_have_positive_det():
    for init in INITS2 + INITS3:
        with mp.workdps(30):
            assert fz.mp_det2(_mp_product(init.factors_mp(30))) > 0


@pytest.mark.parametrize("depth", [3, 2])
def test_solve_levels_states_sit_at_their_levels(runs, depth):
    run = runs[depth]
    lv = sorted(LEVELS3 if depth == 3 else LEVELS2, reverse=True)
    assert run.levels.tolist() == lv and run.depth == depth and run.B == 2
    assert ("hybrid" in run.solver) == (depth == 2)
    assert run.W.shape == (2, 3, 2, 2) and run.err.shape == (2, 3) and run.reached.all(), run.status
    assert (run.err > 0).all() and torch.isfinite(run.err).all()
    # ℓ(W_k) = level_k up to the loss's error bound at W_k, which includes the rounding of evaluating ℓ:
    loss = razin_cohen_2x2(6).loss(run.W.reshape(6, 2, 2)).reshape(2, 3)
    gap = (loss - run.levels).abs()
    assert (gap <= mb.completion_loss_error(MASK, TARGET, run.W, run.err)).all(), gap
    # … and in fact to float64 rounding: the crossing is located by bisection of the solver's own float64 loss to
    # 2^-60 of a step, so fl(ℓ(W_k)) misses level_k only by rounding — forming W (≤ 2·N·u·‖W‖ per entry, ‖W‖ ≤ 3
    # here, times |∂ℓ/∂W| ≤ ‖r‖ ≤ 1) and evaluating ℓ (≤ 5u): ≤ 40u ≈ 1e-14 for N ≤ 3.  A state recorded for the
    # wrong level (they are ≥ 9e-3 apart) or off its crossing fails this.
    assert (gap <= 1e-14).all(), gap


@pytest.mark.parametrize("depth", [3, 2])
def test_solve_levels_error_estimates_are_informative(runs, depth):
    """err must be an estimate of a 1e-9-tolerance solve, not a vacuous number: the two-tolerance model's
    |W_tight − W_loose| is about the error of the 100×-looser run (rtol 1e-7), measured ≤ 1e-6 at depth 3 (and the
    actual |W − W_ref| ≤ 1e-9 at both depths, see below).  1e-4 is 100× that; above it, the claims' comparisons at
    these levels (|W₁₁| vs f(ℓ), entry norms between levels 9e-3 apart) stop being decidable from err."""
    run = runs[depth]
    assert (run.err <= 1e-4).all(), run.err


@pytest.mark.parametrize("depth", [3, 2])
def test_solve_levels_agrees_with_the_reference_and_keeps_det_positive(runs, depth):
    run = runs[depth]
    inits = INITS3 if depth == 3 else INITS2
    # depth 2 at ℓ = 1e-2: det W ≈ 2e-19 < the 30-digit reference's det error (~2e-16, an honest but pessimistic
    # estimate); at 60 digits its det error is ~1e-48 and the sign is certified (0.05–0.6 s per solve).
    dps = 30 if depth == 3 else 60
    ratios = []
    for i, init in enumerate(inits):
        for k, level in enumerate(run.levels.tolist()):
            ref = reference.solve(razin_cohen_2x2(), init.factors_mp(dps), t_end=1e6, dps=dps, loss_target=level,
                                  budget_s=20.0)
            with ref.workdps():
                W_ref, e_ref = _to_torch(ref.end_to_end), float(ref.error_estimate)
                ref_det, ref_det_err = fz.mp_det2(ref.end_to_end), fz.mp_det2_error(ref.end_to_end, ref.error_estimate)
                assert ref_det > ref_det_err  # the exact flow keeps det W > 0 (Razin & Cohen, Thm 1)
            diff = float((run.W[i, k] - W_ref).abs().max())
            allowed = float(run.err[i, k]) + e_ref + 4 * U * float(W_ref.abs().max())
            ratios.append(diff / allowed)
            assert diff <= SAFETY * allowed, (depth, i, level, diff, allowed)
    print(f"depth {depth}: max |W − W_ref| / (err + err_ref) = {max(ratios):.3g}")
    if depth == 2:
        assert (run.det_sign == 1).all()  # the hybrid solver's certified sign
        sol = run.extra["solution"]
        # the deepest level lies past the switch to log σ coordinates, so that path is exercised too
        assert (sol.phase_switch_t < run.t[:, -1]).any(), sol.messages()
    else:
        certify.at_least(torch.linalg.det(run.W), 0.0, error=mb.det2_error(run.W, run.err), what="det W (depth 3)")


# ================================================================================= 7. ReferenceLevels.state


class _Counting:
    """problem_of that counts its calls: one call per reference solve started."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, i: int):
        self.calls.append(i)
        return razin_cohen_2x2()


INITS_REF = [_balanced(2, (0.3, 0.1), 41), _balanced(2, (0.25, 0.15), 42)]


def test_reference_state_is_cached_per_instance_level_and_precision():
    problem_of = _Counting()
    ref = fz.ReferenceLevels(problem_of, INITS_REF, [0.4, 0.3])
    s = ref.state(0, 0, 30)
    assert s is not None and problem_of.calls == [0] and ref.spent_s > 0
    W, e = s
    with mp.workdps(30):
        # it is the state at ℓ = 0.4 of instance 0 (loss within the reference's own error of the level)
        assert abs(fz.loss_2x2(W) - mp.mpf(0.4)) <= 10 * e + mp.mpf("1e-25")
    spent = ref.spent_s
    assert ref.state(0, 0, 30) is s and problem_of.calls == [0] and ref.spent_s == spent  # cache hit
    s_other = ref.state(0, 1, 30)  # another level: a new solve, a different state
    s_inst = ref.state(1, 0, 30)  # another instance (the index reaches problem_of and the init)
    s_dps = ref.state(0, 0, 40)  # another precision: a new solve of the same state
    assert problem_of.calls == [0, 0, 1, 0] and len(ref.cache) == 4
    with mp.workdps(40):
        gap_level = max(abs(s_other[0][r, c] - W[r, c]) for r in range(2) for c in range(2))
        gap_inst = max(abs(s_inst[0][r, c] - W[r, c]) for r in range(2) for c in range(2))
        gap_dps = max(abs(s_dps[0][r, c] - W[r, c]) for r in range(2) for c in range(2))
        # two precisions of one state agree within their error estimates; other levels/instances do not
        assert gap_dps <= e + s_dps[1]
        assert gap_level > 1e-3 and gap_inst > 1e-3
    assert ref.notes == []


def test_reference_state_respects_the_total_budget():
    problem_of = _Counting()
    ref = fz.ReferenceLevels(problem_of, INITS_REF, [0.4], total_budget_s=0.0)
    assert ref.state(0, 0, 30) is None and ref.state(1, 0, 30) is None
    assert problem_of.calls == [] and ref.cache == {} and len(ref.notes) == 2
    assert "budget of 0 s spent" in ref.notes[0] and "instance 0, level 0" in ref.notes[0]
    # a budget smaller than one solve: the first solve runs (nothing spent yet), later new keys do not,
    # cached keys still answer
    ref = fz.ReferenceLevels(problem_of, INITS_REF, [0.4], total_budget_s=1e-9)
    s = ref.state(0, 0, 30)
    assert s is not None and problem_of.calls == [0]
    assert ref.state(1, 0, 30) is None and problem_of.calls == [0] and len(ref.notes) == 1
    assert ref.state(0, 0, 30) is s


def test_reference_state_records_a_failed_solve_once():
    """A solve past its own wall budget (budget_s) is cached as None with a note, and not retried."""
    problem_of = _Counting()
    ref = fz.ReferenceLevels(problem_of, INITS_REF, [0.4], budget_s=1e-9)
    assert ref.state(0, 0, 30) is None and ref.state(0, 0, 30) is None
    assert problem_of.calls == [0] and ref.cache == {(0, 0, 30): None}
    assert len(ref.notes) == 1 and "reference at 30 digits for instance 0" in ref.notes[0]


def test_save_time_escalation_decides_an_undecided_save_state_from_the_reference():
    """An entry given as undecidable (0 vs 0 ± 1) at a save time is decided by the reference's state there:
    det W(t) ≥ 0 is certified (balanced init, det W(0) > 0) and det W(t) ≤ 0 refuted; only the needed
    instance is solved, and only up to its latest undecided save time."""
    inits = INITS_REF
    save_t = (0.5, 1.0, 2.0)
    calls = []

    def problem_of(i):
        calls.append(i)
        return razin_cohen_2x2()

    pairs = [(0, 0), (1, 1)]

    def quantity(W, e):
        return fz.mp_det2(W), mp.mpf(0), fz.mp_det2_error(W, e)

    esc = fz.save_time_escalation(problem_of, inits, save_t, pairs, quantity)
    value, err = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])  # entry 0 undecided, entry 1 certified
    certify.at_least(value, 0.0, error=err, what="det W(t) ≥ 0", escalate=esc)
    assert calls == [0]  # instance 1 was decided by its float value: never solved
    esc2 = fz.save_time_escalation(lambda i: razin_cohen_2x2(), inits, save_t, pairs, quantity)
    with pytest.raises(AssertionError, match="det W"):
        certify.at_most(torch.tensor([0.0, 0.0]), 0.0, error=torch.tensor([1.0, 1.0]), what="det W(t) ≤ 0",
                        escalate=esc2)
