"""Tests of the mpmath reference integrator (implreg.matrix.reference) against closed forms and independent
computations.

Oracles: exact solutions of linear flows (depth 1 completion; depth 1 sensing via mpmath's matrix exponential of
the augmented system), the logistic closed form of the scalar depth-2 flow, mpmath's own Taylor integrator
``odefun`` (generic, written by others), conserved quantities (balancedness), and the reference itself at
another precision (which must lie within the claimed error).  No comparison with the torch simulator here.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from mpmath import mp, mpf

from implreg.errors import BudgetExceededError, InvalidInputError, NumericalError
from implreg.matrix import reference as R
from implreg.matrix.problems import razin_cohen_2x2

RC = {"mask": [[0.0, 1.0], [1.0, 1.0]], "target": [[0.0, 1.0], [1.0, 0.0]]}  # Razin–Cohen 2×2


def mpm(a) -> mp.matrix:
    return mp.matrix(np.asarray(a, dtype=float).tolist())


def fro(A, B) -> mpf:
    return mp.norm(A - B)


def positive_det_init(seed: int, scale: float = 1e-2) -> np.ndarray:
    W0 = scale * np.random.default_rng(seed).normal(size=(2, 2))
    if np.linalg.det(W0) < 0:
        W0[0] *= -1
    return W0


# ------------------------------------------------------------------------------------------------------
# closed forms
# ------------------------------------------------------------------------------------------------------
def test_depth1_completion_matches_closed_form():
    """N = 1: observed W_ij(t) = b_ij + (W_ij(0) − b_ij) e^{−t}; unobserved entries stay constant."""
    rng = np.random.default_rng(0)
    mask = (rng.random((2, 3)) < 0.6).astype(float)
    mask[0, 0], mask[1, 2] = 1.0, 0.0
    target, W0 = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    sol = R.solve({"mask": mask, "target": target}, [W0], t_end=3.0, dps=30)
    assert sol.status == "reached_t_end" and sol.dps == 30
    assert sol.error_estimate < mpf("1e-22")
    with mp.workdps(40):
        for i in range(2):
            for j in range(3):
                w0, b = mpf(W0[i, j]), mpf(target[i, j])
                exact = b + (w0 - b) * mp.exp(-3) if mask[i, j] else w0
                assert abs(sol.end_to_end[i, j] - exact) <= sol.error_estimate
        assert sol.t_end == 3


def test_depth1_sensing_matches_matrix_exponential():
    """N = 1 sensing: vec W' = −Aᵀ(A vec W − y); z = (vec W, 1) solves z' = [[−AᵀA, Aᵀy], [0, 0]] z."""
    rng = np.random.default_rng(1)
    A, y, W0 = rng.normal(size=(3, 2, 2)), rng.normal(size=3), rng.normal(size=(2, 2))
    sol = R.solve({"A": A, "y": y}, [W0], t_end=2.0, dps=30)
    with mp.workdps(50):
        Am = mp.matrix([[mpf(v) for v in a.ravel()] for a in A])
        M = mp.zeros(5, 5)
        G, g = Am.T * Am, Am.T * mpm(y.reshape(3, 1))
        for i in range(4):
            M[i, 4] = g[i]
            for j in range(4):
                M[i, j] = -G[i, j]
        z = mp.expm(2 * M) * mp.matrix([*[mpf(v) for v in W0.ravel()], 1])
        exact = mp.matrix([[z[0], z[1]], [z[2], z[3]]])
        assert sol.error_estimate < mpf("1e-22")
        assert fro(sol.end_to_end, exact) <= sol.error_estimate


def _scalar_u(x0: mpf, y: mpf, t) -> mpf:
    """Depth 2, w1 = w2 = x: x' = −x(x² − y), so u = x² is logistic: u = y / (1 + (y/x0² − 1) e^{−2yt})."""
    return y / (1 + (y / x0**2 - 1) * mp.exp(-2 * y * t))


@pytest.mark.parametrize("dps", [30, 60])
def test_scalar_depth2_matches_logistic_closed_form(dps):
    x0, y = 0.125, 2.0
    sol = R.solve({"mask": [[1.0]], "target": [[y]]}, [[[x0]], [[x0]]], t_end=5.0, dps=dps, save_at=[2.5, 0.0, 5.0])
    assert sol.error_estimate < mpf(10) ** (-(dps - 8))
    with mp.workdps(dps + 10):
        exact = _scalar_u(mpf(x0), mpf(y), 5)
        assert abs(sol.end_to_end[0, 0] - exact) <= sol.error_estimate
        assert abs(sol.factors[0][0, 0] - sol.factors[1][0, 0]) <= sol.factor_error  # symmetry is kept
        for ts, W, err in zip(sol.save_times, sol.save_end_to_end, sol.save_errors, strict=True):
            assert abs(W[0, 0] - _scalar_u(mpf(x0), mpf(y), ts)) <= err
        assert abs(sol.save_end_to_end[1][0, 0] - mpf(x0) ** 2) <= sol.save_errors[1]


def test_loss_target_and_levels_located_at_closed_form_times():
    """ℓ = ½(u − y)² = L at t* = ln((y − δ) c / δ) / (2y), δ = √(2L), c = y/x0² − 1 (scalar depth 2)."""
    x0, y = 0.125, 2.0
    levels = [1.5, 1e-3, 1e-9, 1e-30]  # ℓ(0) ≈ 1.98; 1e-30 is not reached before the target
    sol = R.solve(
        {"mask": [[1.0]], "target": [[y]]}, [[[x0]], [[x0]]], t_end=50.0, dps=30, loss_target=1e-12, loss_levels=levels
    )
    assert sol.status == "reached_loss"
    with mp.workdps(40):

        def t_star(L):
            d, c = mp.sqrt(2 * mpf(L)), mpf(y) / mpf(x0) ** 2 - 1
            return mp.log((mpf(y) - d) * c / d) / (2 * mpf(y))

        assert abs(sol.t_end - t_star(1e-12)) <= mpf("1e-20")
        assert abs(sol.loss - mpf(1e-12)) <= sol.loss_error + mpf("1e-25")
        hits = zip(levels[:3], sol.level_times, sol.level_time_errors, sol.level_end_to_end, strict=False)
        for L, t, terr, W in hits:
            assert abs(t - t_star(L)) <= max(terr, mpf("1e-24")) and terr < mpf("1e-18")
            assert abs((W[0, 0] - y) ** 2 / 2 - mpf(L)) <= mpf(L) * mpf("1e-18")
        assert sol.level_times[3] is None and sol.level_end_to_end[3] is None


def test_levels_already_met_at_start_and_target_at_start():
    sol = R.solve(RC, [np.eye(2), np.array([[0.0, 1.0], [1.0, 0.0]])], t_end=1.0, loss_levels=[10.0], loss_target=5.0)
    # W(0) = [[0,1],[1,0]] solves the problem: ℓ(0) = 0 ≤ every level
    assert sol.status == "reached_loss" and sol.t_end == 0 and sol.level_times == [0] and sol.n_steps == 0


# ------------------------------------------------------------------------------------------------------
# independent integrators and invariants
# ------------------------------------------------------------------------------------------------------
def _field_mp(A, y, shapes):
    """The flow's vector field written directly in mpmath matrices (for mp.odefun)."""

    def f(t, v):
        Ws, i = [], 0
        for a, b in shapes:
            Ws.append(mp.matrix([[v[i + r * b + c] for c in range(b)] for r in range(a)]))
            i += a * b
        W = Ws[1] * Ws[0]
        r = [mp.fsum(A[k][p, q] * W[p, q] for p in range(W.rows) for q in range(W.cols)) - y[k] for k in range(len(A))]
        G = mp.zeros(W.rows, W.cols)
        for k in range(len(A)):
            G += r[k] * A[k]
        g1, g2 = -(Ws[1].T * G), -(G * Ws[0].T)
        return [g1[p, q] for p in range(g1.rows) for q in range(g1.cols)] + [
            g2[p, q] for p in range(g2.rows) for q in range(g2.cols)
        ]

    return f


def test_agrees_with_mpmath_odefun_on_rectangular_sensing():
    rng = np.random.default_rng(2)
    A, y = rng.normal(size=(2, 1, 3)), rng.normal(size=2)  # W = W_2 W_1 is 1×3, hidden width 2
    W1, W2 = 0.5 * rng.normal(size=(2, 3)), 0.5 * rng.normal(size=(1, 2))
    sol = R.solve({"A": A, "y": y}, [W1, W2], t_end=0.5, dps=30)
    with mp.workdps(20):  # odefun: generic Taylor method, accurate to about the working precision
        v0 = [*[mpf(v) for v in W1.ravel()], *[mpf(v) for v in W2.ravel()]]
        f = mp.odefun(_field_mp([mpm(a) for a in A], [mpf(v) for v in y], [(2, 3), (1, 2)]), 0, v0)
        v = f(mpf("0.5"))
    with mp.workdps(30):
        ref = mp.matrix([v[6:8]]) * mp.matrix([v[0:3], v[3:6]])
        assert sol.error_estimate < mpf("1e-24")
        assert fro(sol.end_to_end, ref) <= mpf("1e-18")  # odefun's accuracy, not ours, limits this


def test_balancedness_is_conserved_for_unbalanced_init():
    """W_{j+1}ᵀW_{j+1} − W_j W_jᵀ is invariant under gradient flow, whatever the init (Arora et al. 2018)."""
    rng = np.random.default_rng(4)
    dims = (3, 4, 2, 2)  # d_0 = 3 columns, hidden widths 4 and 2, d_N = 2 rows
    Ws = [0.7 * rng.normal(size=(dims[j + 1], dims[j])) for j in range(3)]
    mask = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    sol = R.solve({"mask": mask, "target": rng.normal(size=(2, 3))}, Ws, t_end=5.0, dps=30)
    assert sol.loss < mpf("0.5")  # it did move
    with mp.workdps(40):
        W0 = [mpm(W) for W in Ws]
        for j in range(2):
            D0 = W0[j + 1].T * W0[j + 1] - W0[j] * W0[j].T
            D = sol.factors[j + 1].T * sol.factors[j + 1] - sol.factors[j] * sol.factors[j].T
            norm = max(mp.norm(W) for W in sol.factors)
            assert fro(D, D0) <= 2 * norm * sol.factor_error + mpf("1e-25")


# ------------------------------------------------------------------------------------------------------
# the claimed error bounds the actual error
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("problem", "dims", "scale", "t_end"),
    [
        (RC, (2, 2, 2), 1e-3, 20.0),  # saddle escape from small unbalanced init: errors grow ~e^t
        (RC, (2, 3, 2, 2), 0.3, 10.0),  # depth 3, wider hidden layer
        ("sensing", (3, 2, 2), 0.5, 5.0),  # rectangular sensing
    ],
)
def test_error_estimate_bounds_difference_to_higher_precision(problem, dims, scale, t_end):
    rng = np.random.default_rng(5)
    if problem == "sensing":
        problem = {"A": rng.normal(size=(4, 2, 3)), "y": rng.normal(size=4)}
    Ws = [scale * rng.normal(size=(dims[j + 1], dims[j])) for j in range(len(dims) - 1)]
    lo = R.solve(problem, Ws, t_end=t_end, dps=30)
    hi = R.solve(problem, Ws, t_end=t_end, dps=60)
    assert hi.error_estimate < mpf("1e-45") and lo.error_estimate < mpf("1e-14")
    with mp.workdps(60):
        assert fro(lo.end_to_end, hi.end_to_end) <= lo.error_estimate + hi.error_estimate
        assert abs(lo.loss - hi.loss) <= lo.loss_error + hi.loss_error
        for a, b in zip(lo.factors, hi.factors, strict=True):
            assert fro(a, b) <= lo.factor_error + hi.factor_error


def test_tolerance_controls_accuracy_at_fixed_precision():
    x0, y = 0.125, 2.0
    prob, fac = {"mask": [[1.0]], "target": [[y]]}, [[[x0]], [[x0]]]
    loose = R.solve(prob, fac, t_end=5.0, dps=40, tol=mpf("1e-12"))
    tight = R.solve(prob, fac, t_end=5.0, dps=40)
    assert loose.order < tight.order
    with mp.workdps(50):
        exact = _scalar_u(mpf(x0), mpf(y), 5)
        err_loose = abs(loose.end_to_end[0, 0] - exact)
        assert err_loose <= loose.error_estimate < mpf("1e-9")
        assert abs(tight.end_to_end[0, 0] - exact) <= tight.error_estimate < mpf("1e-30")


# ------------------------------------------------------------------------------------------------------
# the hard case: Razin–Cohen 2×2, depth 2, balanced init with det W(0) > 0
# ------------------------------------------------------------------------------------------------------
def test_hard_case_keeps_det_sign_far_below_float64_resolution():
    """det W(t) > 0 in exact arithmetic; at t = 70 it is ~1e-18, below float64's reach.  At 60 digits the
    reference certifies the sign (det − det_error > 0); its claimed error at 30 digits does not (the error
    estimate carries a ~1e10 amplification through the saddle escape), which is what escalation is for."""
    W0 = positive_det_init(seed=3)
    sol = R.solve(razin_cohen_2x2(), R.balanced_factors(W0, 2, dps=60), t_end=70.0, dps=60)
    det, det_err = sol.det(), sol.det_error()
    assert 0 < det < mpf("1e-16")
    assert det_err < det * mpf("1e-20")
    with sol.workdps():  # det W = det W_1 · det W_2, computed independently from the factors
        assert abs(mp.det(sol.factors[0]) * mp.det(sol.factors[1]) - det) <= det_err


def test_hard_case_loss_keeps_decreasing():
    W0 = positive_det_init(seed=3)
    times = [float(t) for t in np.linspace(0.0, 70.0, 29)]
    sol = R.solve(razin_cohen_2x2(), R.balanced_factors(W0, 2, dps=60), t_end=70.0, dps=60, save_at=times)
    losses = sol.save_loss
    assert all(a > b for a, b in itertools.pairwise(losses))
    # the (1,1) entry grows without bound: |W11| ≥ (1 − √(2ℓ))² / √(2ℓ) whenever ℓ < ½ (Razin & Cohen 2020)
    with sol.workdps():
        for W, L in zip(sol.save_end_to_end, losses, strict=True):
            if L < 0.5:
                assert abs(W[0, 0]) >= (1 - mp.sqrt(2 * L)) ** 2 / mp.sqrt(2 * L)


def test_hard_case_resolved_by_escalation():
    W0 = positive_det_init(seed=3)
    res = R.solve_until_resolved(
        razin_cohen_2x2(),
        lambda dps: R.balanced_factors(W0, 2, dps=dps),
        quantity=R.ReferenceSolution.det,
        quantity_error=R.ReferenceSolution.det_error,
        require_sign=True,
        t_end=70.0,
        budget_s=60.0,
    )
    assert res.value > res.error > 0 and res.solution.dps in (60, 120)
    assert res.agreement <= res.history[-2][2] + res.error
    assert [h[0] for h in res.history] == [30, 60, 120][: len(res.history)]


def test_float64_rounded_balance_is_not_enough():
    """The exact flow of factors balanced only to ~1e-17 (the size of float64 rounding) loses the det sign: here
    det W(100) ≈ −1e-16 where the exactly balanced flow has det W(100) ≈ +6e-22.  The reference reproduces the
    sign loss at every precision, so escalation must rebuild balanced factors at high precision."""
    W0 = positive_det_init(seed=3)
    exact = R.balanced_factors(W0, 2, dps=60)
    with mp.workdps(60):
        W1 = exact[0].copy()
        W1[1, 1] += mpf("1e-17")
    for dps in (45, 60):
        sol = R.solve(razin_cohen_2x2(), [W1, exact[1]], t_end=100.0, dps=dps)
        assert sol.det() + sol.det_error() < 0
    sol = R.solve(razin_cohen_2x2(), exact, t_end=100.0, dps=60)
    assert sol.det() - sol.det_error() > 0


# ------------------------------------------------------------------------------------------------------
# escalation driver, budget, input forms, bad input
# ------------------------------------------------------------------------------------------------------
def test_solve_until_resolved_agrees_and_stops_at_second_precision():
    W0 = positive_det_init(seed=1, scale=0.3)
    res = R.solve_until_resolved(RC, R.balanced_factors(W0, 3, dps=30), quantity=lambda s: s.loss, t_end=3.0)
    assert res.solution.dps == 60 and len(res.history) == 2
    assert res.agreement <= res.history[0][2] + res.history[1][2]


def test_solve_until_resolved_raises_when_schedule_ends_unresolved():
    with pytest.raises(BudgetExceededError, match="schedule"):
        R.solve_until_resolved(RC, [np.eye(2)], quantity=lambda s: s.dps, t_end=0.1, dps_schedule=(20, 25))


def test_budget_exceeded_names_budget_time_and_instance():
    W0 = positive_det_init(seed=0)
    with pytest.raises(BudgetExceededError, match=r"budget of 0\.001 s.*t = .*of t_end = 50.*razin-cohen"):
        R.solve(razin_cohen_2x2(), R.balanced_factors(W0, 2, dps=30), t_end=50.0, budget_s=1e-3)
    with pytest.raises(BudgetExceededError, match=r"solve_until_resolved ran out of its 0\.001 s budget"):
        R.solve_until_resolved(RC, [np.eye(2), np.eye(2)], quantity=lambda s: s.loss, t_end=50.0, budget_s=1e-3)


def test_blow_up_raises_numerical_error_naming_the_time(monkeypatch):
    monkeypatch.setattr(R, "_BLOWUP", 10)  # W(t) → 20 in the depth-1 problem below
    with pytest.raises(NumericalError, match=r"blew up .* at t = "):
        R.solve({"mask": [[1.0]], "target": [[20.0]]}, [[[0.0]]], t_end=10.0)


def test_input_forms_give_identical_results():
    rng = np.random.default_rng(6)
    W1, W2 = rng.normal(size=(2, 2)), rng.normal(size=(2, 2))
    sols = [
        R.solve(razin_cohen_2x2(), [torch.tensor(W1)[None], torch.tensor(W2)[None]], t_end=1.0),
        R.solve({k: torch.tensor(v) for k, v in RC.items()}, [torch.tensor(W1), torch.tensor(W2)], t_end=1.0),
        R.solve(RC, [mpm(W1), mpm(W2)], t_end=1.0),
    ]
    for s in sols[1:]:
        assert s.end_to_end == sols[0].end_to_end and s.n_steps == sols[0].n_steps
    out = sols[0].to_torch(torch.float32)
    assert out["end_to_end"].dtype == torch.float32 and out["end_to_end"].shape == (2, 2)
    arr = sols[0].to_numpy()
    assert len(arr["factors"]) == 2 and abs(arr["loss"] - float(sols[0].loss)) <= 1e-15
    assert "integrated up to t_end" in sols[0].describe()


def test_precision_is_local():
    before = mp.dps
    sol = R.solve(RC, [np.eye(2), np.eye(2)], t_end=1.0, dps=45)
    assert mp.dps == before and sol.dps == 45
    assert sol.end_to_end[0, 0]._mpf_[3] > 120  # the mantissa carries ~45 digits (≈ 150 bits), not 53 bits


def test_balanced_factors_are_balanced_to_high_precision():
    W0 = np.random.default_rng(7).normal(size=(2, 3))
    fac = R.balanced_factors(W0, 3, dps=50, width=3)
    with mp.workdps(60):
        assert [(F.rows, F.cols) for F in fac] == [(3, 3), (3, 3), (2, 3)]
        assert fro(fac[2] * fac[1] * fac[0], mpm(W0)) < mpf("1e-55")
        for j in range(2):
            assert mp.norm(fac[j + 1].T * fac[j + 1] - fac[j] * fac[j].T) < mpf("1e-55")


GOOD = [np.eye(2), np.eye(2)]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"factors": [np.eye(3), np.eye(3)]}, "product"),
        ({"factors": [np.eye(2), np.ones((2, 3))]}, "columns"),
        ({"factors": [np.eye(2), np.array([[np.nan, 0.0], [0.0, 1.0]])]}, "NaN"),
        ({"factors": [np.eye(2), np.array([[np.inf, 0.0], [0.0, 1.0]])]}, "NaN/Inf"),
        ({"factors": []}, "non-empty"),
        ({"factors": [np.ones((1, 2, 2, 2))]}, "dimensions"),
        ({"t_end": -1.0}, "t_end must be ≥ 0"),
        ({"t_end": float("nan")}, "t_end must be finite"),
        ({"dps": 10}, "dps must be ≥ 15"),
        ({"tol": 0.0}, "tol must lie"),
        ({"tol": 1e-40}, "tol must lie"),
        ({"loss_target": -1.0}, "loss_target"),
        ({"loss_levels": [0.1, -0.1]}, "loss levels"),
        ({"save_at": [0.5, 2.0]}, "save_at"),
        ({"budget_s": 0}, "budget_s"),
        ({"problem": {"mask": [[0.5, 1.0], [1.0, 1.0]], "target": [[0.0, 1.0], [1.0, 0.0]]}}, "0 or 1"),
        ({"problem": {"mask": [[1.0, 1.0]], "target": [[0.0], [1.0]]}}, "does not match"),
        ({"problem": {"mask": [[1.0]]}}, "completion"),
        ({"problem": {"A": np.ones((2, 2, 2)), "y": np.ones(3)}}, "does not match"),
        ({"problem": razin_cohen_2x2(batch=2)}, "batch 2"),
        ({"problem": "razin-cohen"}, "Problem or a dict"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(kwargs, match):
    args = {"problem": RC, "factors": GOOD, "t_end": 1.0} | kwargs
    problem, factors = args.pop("problem"), args.pop("factors")
    with pytest.raises(InvalidInputError, match=match):
        R.solve(problem, factors, **args)


def test_bad_escalation_input():
    with pytest.raises(InvalidInputError, match="at least two"):
        R.solve_until_resolved(RC, GOOD, quantity=lambda s: s.loss, t_end=1.0, dps_schedule=(30,))
    with pytest.raises(InvalidInputError, match="increasing"):
        R.solve_until_resolved(RC, GOOD, quantity=lambda s: s.loss, t_end=1.0, dps_schedule=(60, 30))
    with pytest.raises(InvalidInputError, match="depth"):
        R.balanced_factors(np.eye(2), 0)
