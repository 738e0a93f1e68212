"""Certified views of flow outputs (``FlowSolution.certified``): exact fixed points, never-moving entries,
automatic escalation to the mpmath reference, and the certified error against the reference's actual error.

Independent references: the all-zero init is an exact stationary point of depth ≥ 2 gradient flow (every factor
gradient is a product containing another factor, 0); an unobserved entry of depth-1 completion never moves
(∂ℓ/∂W = mask ⊙ (W − b)); observed entries of depth-1 completion relax exactly as b + (w0 − b)e^{−t}; the 60-digit
mpmath reference for everything else (its error estimate is ~1e-40 here, far below what is compared).
"""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from implreg_test_helpers import draw_problem

from implreg import certify
from implreg.errors import NumericalError
from implreg.matrix import flow, reference
from implreg.matrix.factorization import balanced_init, gaussian_init, with_det_sign
from implreg.matrix.flow.integrate import IntegrationResult
from implreg.matrix.problems import razin_cohen_2x2
from implreg.numerics import Certified

F64 = torch.float64
PER_COMPONENT = "entry_error" in getattr(IntegrationResult, "__dataclass_fields__", {})


# ---------------------------------------------------------------------------------------------- fixed points


def test_zero_init_depth2_is_exact_and_refutes_strict_decrease() -> None:
    """'The loss strictly decreases along gradient flow (depth 2)' is false at the all-zero init, a stationary
    point: the solve returns the exact zeros with error exactly 0 (no det guard by default), and the strict
    comparison ℓ(1) < ℓ(½) is refuted by exact equality — no hand error term; the non-strict one holds."""
    P = razin_cohen_2x2(1)
    zero = (torch.zeros(1, 2, 2, dtype=F64), torch.zeros(1, 2, 2, dtype=F64))
    run = flow.solve(P, zero, t_max=1.0, save_at=[0.5, 1.0])
    assert run.ok.all() and torch.equal(run.result.y, torch.zeros_like(run.result.y))
    assert float(run.error[0]) == 0.0
    view = run.certified
    for W in (*view.factors, *view.save_factors):
        assert torch.equal(W.value, torch.zeros_like(W.value)) and float(W.error.abs().max()) == 0.0
    assert float(view.loss.value[0]) == 1.0  # ½·(1² + 1² + 0²)… = 1 for Razin–Cohen's observed entries
    loss_0 = P.loss(torch.zeros(1, 2, 2, dtype=F64))  # ℓ(W(0)), an exact float64 number
    with pytest.raises(AssertionError, match="strictly decreases"):
        certify(view.save_loss[:, 1] < view.save_loss[:, 0], what="loss strictly decreases on [½, 1]")
    with pytest.raises(AssertionError):
        certify(view.loss < loss_0, what="loss strictly decreases from t = 0")
    certify(view.loss <= loss_0, what="loss does not increase")  # the non-strict claim holds (equality)


@pytest.mark.skipif(not PER_COMPONENT, reason="needs per-component flow errors (branch speed)")
def test_never_moving_entry_holds_exactly() -> None:
    """W₁₁(t) = W₁₁(0) under depth-1 gradient flow on the Razin–Cohen problem: W₁₁ is unobserved, its derivative
    is exactly 0 on every step, so its certified error is exactly 0 and the equality holds decisively."""
    g = torch.Generator().manual_seed(3)
    W0 = torch.randn(4, 2, 2, generator=g, dtype=F64)
    run = flow.solve(razin_cohen_2x2(4), (W0,), t_max=1.0)
    w11 = run.certified.end_to_end[:, 0, 0]
    assert torch.equal(w11.value, W0[:, 0, 0]) and float(w11.error.abs().max()) == 0.0
    assert float(run.certified.end_to_end[:, 0, 1].error.min()) > 0  # the observed entries do move
    certify(w11 == W0[:, 0, 0], what="W11 never moves")


def test_unreached_level_is_never_certified() -> None:
    """A level the solve never crossed (t_max too short) is NaN in float64: its certified entries are 0 ± ∞, never
    passed silently.  Where the final loss is certainly above the level, no state exists there, and a comparison
    that uses it is an error that says so at once (no reference run); a comparison on the levels that were reached
    is unaffected; a level within the final loss's error stays undecided (for the reference to settle)."""
    g = torch.Generator().manual_seed(4)
    W0 = 0.3 * torch.randn(1, 2, 2, generator=g, dtype=F64)
    run = flow.solve(razin_cohen_2x2(1), (W0,), t_max=0.05, loss_levels=[1e-6])
    lvl = run.certified_view(total_budget_s=0.0).level_loss  # no reference allowed
    assert math.isinf(float(lvl.error[0, 0]))
    with pytest.raises(NumericalError, match=r"instance 0 never reached loss level\(s\) 1e-06: its flow stopped at "
                                             r"t_max, t = 0.05, with ℓ = .* raise t_max"):
        certify(lvl >= 0.0, what="loss at an unreached level")

    final = run.certified.loss
    reached = float(final.value[0]) * 2       # crossed before t_max
    near = float(final.value[0] - final.error[0] / 2)   # not crossed, but within the final loss's error
    run = flow.solve(razin_cohen_2x2(1), (W0,), t_max=0.05, loss_levels=[reached, near, 1e-6])
    view = run.certified_view(total_budget_s=0.0)
    certify(view.level_loss[:, 0] <= reached, what="the reached level")
    with pytest.raises(certify.Undecided):
        certify(view.level_loss[:, 1] >= 0.0, what="a level within the error")
    with pytest.raises(NumericalError, match="never reached loss level"):
        certify(view.level_end_to_end[:, 2, 0, 0] >= -10.0, what="W11 at 1e-6")


def test_a_level_below_the_loss_target_is_an_error_naming_it_in_both_solvers() -> None:
    """loss_levels below loss_target: the solve stops first.  Both the factor solver and the balanced (hybrid)
    solver say so in the comparison's error."""
    W0 = torch.tensor([[[0.05, 0.0], [0.0, 0.05]]], dtype=F64)
    runs = [flow.solve(razin_cohen_2x2(1), balanced_init(W0, 2), loss_levels=[0.1, 1e-4], loss_target=1e-2),
            flow.solve_balanced(razin_cohen_2x2(1), W0, 2, loss_levels=[0.1, 1e-4], loss_target=1e-2)]
    for run in runs:
        W = run.certified_view(total_budget_s=0.0).level_end_to_end
        certify(W[:, 0, 0, 0].abs() >= 0.0, what="at 0.1")
        with pytest.raises(NumericalError, match=r"never reached loss level\(s\) 0\.0001: its flow stopped at its "
                                                 "loss_target"):
            certify(W[:, 1, 0, 0].abs() >= 0.0, what="at 1e-4")


def test_a_save_time_after_the_flow_stopped_is_an_error_naming_it() -> None:
    """save_at beyond where the run stopped (its t_max, or its loss_target's crossing) has no state: a comparison
    on it is an error at once, in both solvers; the saves within the run are unaffected."""
    W0 = torch.tensor([[[0.05, 0.0], [0.0, 0.05]]], dtype=F64)
    runs = [flow.solve(razin_cohen_2x2(1), balanced_init(W0, 2), save_at=[1.0, 500.0], loss_target=1e-2),
            flow.solve_balanced(razin_cohen_2x2(1), W0, 2, save_at=[1.0, 500.0], t_max=100.0)]
    for run, stop in zip(runs, ("at its loss_target", "at t_max"), strict=True):
        W = run.certified_view(total_budget_s=0.0).save_end_to_end
        certify(W[:, 0, 0, 0].abs() >= 0.0, what="at t = 1")
        with pytest.raises(NumericalError, match=rf"instance 0 has no state at save time\(s\) 500: its flow stopped "
                                                 rf"{stop}, at t = "):
            certify(W[:, 1, 0, 0].abs() >= 0.0, what="at t = 500")


def test_absent_entries_behind_an_index_that_reshapes_the_batch() -> None:
    """A comparison whose rows are not the solve's (boolean-mask indexing flattens (1, T) to (K,)): an undecided
    entry that does not use an absent save stays undecided (the check used to index the leaf's mask with the
    comparison's rows: IndexError for K > 1 rows of a one-row solve); one that does is the absent-save error."""
    W0 = torch.tensor([[[0.3, 0.1], [0.0, 0.2]]], dtype=F64)
    run = flow.solve(razin_cohen_2x2(1), balanced_init(W0, 2), save_at=[1.0, 2.0, 3.0, 500.0], loss_target=1e-2)
    loss = run.certified_view(total_budget_s=0.0).save_loss            # (1, 4); t = 500 is after the stop
    early = torch.tensor([[True, True, True, False]])
    with pytest.raises(certify.Undecided):
        certify(loss[early] >= loss[early].value - 1e-18, what="a tight bound at three saves within the run")
    late = torch.tensor([[False, False, True, True]])
    with pytest.raises(NumericalError, match=r"instance 0 has no state at save time\(s\) 500"):
        certify(loss[late] >= loss[late].value - 1e-18, what="at t = 3 and t = 500")


def test_reference_budget_scales_with_rows() -> None:
    """A pooled body's view gets the reference budget of the unpooled examples it holds (60 s per 16 rows), so
    pooling alone cannot leave comparisons undecided; an explicit budget is kept as given."""
    from implreg.matrix.flow.certified import REF_BUDGET_ROWS, REF_TOTAL_BUDGET_S, view_budget_s

    assert view_budget_s(1) == view_budget_s(REF_BUDGET_ROWS) == REF_TOTAL_BUDGET_S
    assert view_budget_s(REF_BUDGET_ROWS + 1) == 2 * REF_TOTAL_BUDGET_S
    assert view_budget_s(1024) == 64 * REF_TOTAL_BUDGET_S
    W0 = 0.3 * torch.randn(40, 2, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    run = flow.solve(razin_cohen_2x2(40), (W0,), t_max=0.05)
    assert run.certified_view().runs.total_budget_s == 3 * REF_TOTAL_BUDGET_S
    assert run.certified_view(total_budget_s=5.0).runs.total_budget_s == 5.0


# ---------------------------------------------------------------------------------------------- escalation


def _relaxed(w0: float, b: float, t: float, dps: int = 60) -> mpmath.mpf:
    """Depth-1 completion: an observed entry relaxes exactly as b + (w0 − b)e^{−t}."""
    with mpmath.workdps(dps):
        return mpmath.mpf(b) + (mpmath.mpf(w0) - b) * mpmath.exp(-mpmath.mpf(t))


def test_escalation_decides_a_comparison_too_tight_for_float64() -> None:
    """W₁₂(1) against its exact value ∓ 1e-12: float64's error estimate (~1e-9) cannot decide either side; the
    leaf's refine re-solves with the reference, with no callback written here, and both directions decide."""
    W0 = torch.tensor([[[0.25, -0.375], [0.5, 0.125]]], dtype=F64)
    run = flow.solve(razin_cohen_2x2(1), (W0,), t_max=1.0, rtol=1e-9, atol=1e-12)
    exact = _relaxed(-0.375, 1.0, 1.0)
    w12 = run.certified.end_to_end[:, 0, 1]
    assert float(w12.error[0]) > 1e-12  # float64 alone cannot decide a 1e-12 margin
    below, above = float(exact - mpmath.mpf("1e-12")), float(exact + mpmath.mpf("1e-12"))
    certify(w12 > below, what="W12(1) above its exact value − 1e-12")
    certify(w12 < above, what="W12(1) below its exact value + 1e-12")
    with pytest.raises(AssertionError):
        certify(w12 < below, what="W12(1) below its exact value − 1e-12 (false)")
    assert run.certified.runs.cache, "the decision must have come from the reference"
    assert len({k[0] for k in run.certified.runs.cache}) == 1  # one row, shared by every comparison


def test_a_claim_run_solves_each_reference_instance_once_across_solves(monkeypatch) -> None:
    """Within one claim run (one recorder) a second solve of the same instance (a pooled bisection, a shrink
    replay) reuses the reference solution; another instance, or another claim run, solves its own; outside a
    claim run nothing is shared."""
    from implreg.harness import recorder as _record
    from implreg.matrix.flow import certified as fc

    calls = []
    real = reference.solve

    def counting(*a, **kw):
        calls.append(kw.get("dps"))
        return real(*a, **kw)

    monkeypatch.setattr(fc.reference, "solve", counting)
    W0 = torch.tensor([[[0.25, -0.375], [0.5, 0.125]]], dtype=F64)
    below = float(_relaxed(-0.375, 1.0, 1.0) - mpmath.mpf("1e-12"))

    def decide(W: torch.Tensor) -> None:
        run = flow.solve(razin_cohen_2x2(1), (W,), t_max=1.0)
        certify(run.certified.end_to_end[:, 0, 1] > below, what="W12(1) above its exact value − 1e-12")

    decide(W0)
    decide(W0)
    assert len(calls) == 2                       # outside a claim run: each solve pays its own reference
    for _ in range(2):                           # two claim runs
        rec = _record.Recorder("test/shared")
        token = rec.activate()
        try:
            calls.clear()
            decide(W0)
            decide(W0.clone())                   # the same instance in a new solve: no new reference run
            assert len(calls) == 1
            decide(torch.nextafter(W0, torch.ones_like(W0)))   # another instance, one ulp away: its own run
            assert len(calls) == 2
        finally:
            rec.deactivate(token)


def test_escalation_certifies_the_det_sign_float64_gets_wrong() -> None:
    """Depth-2 hard case (balanced init, det W(0) > 0): in exact arithmetic det W(t) > 0 for all t; float64
    without the det guard returns det W(60) of the wrong sign or within noise.  certify(det > 0) still holds:
    the reference (balanced factors at its precision) decides it."""
    g = torch.Generator().manual_seed(0)
    W0 = with_det_sign(1e-3 * torch.randn(1, 2, 2, generator=g, dtype=F64), +1)
    run = flow.solve(razin_cohen_2x2(1), balanced_init(W0, 2), t_max=60.0)
    det = run.certified.end_to_end.det()
    certify(det > 0, what="det W(60) > 0")


# ---------------------------------------------------------------------------------------------- honesty


@st.composite
def instances(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    depth = draw(st.integers(1, 3))
    problem, (d, e) = draw_problem(draw, g)
    # small inits go through the saddle escape (the flow amplifies earlier errors by ~1/scale^…)
    scale = draw(st.sampled_from([1e-2, 0.1, 0.5]))
    dims = (e, *([max(d, e)] * (depth - 1)), d)
    factors = gaussian_init(1, dims, scale, generator=g)
    t_end = draw(st.sampled_from([1.0, 5.0, 20.0]))
    return problem, factors, t_end


def _within(c: Certified, ref: list, what: str) -> float:
    """Assert |value − ref| ≤ error per entry; return the largest ratio actual/claimed."""
    v, e = c.value.flatten().tolist(), c.error.flatten().tolist()
    worst = 0.0
    for k, (vi, ei, ri) in enumerate(zip(v, e, ref, strict=True)):
        actual = abs(vi - float(ri))
        assert actual <= ei, f"{what}: entry {k}: actual error {actual:.3g} above the certified {ei:.3g} (value {vi!r})"
        if ei > 0:
            worst = max(worst, actual / ei)
    return worst


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inst=instances())
def test_certified_error_is_never_below_the_actual_error(inst) -> None:
    """Two-tolerance leaves, propagated by certified arithmetic to the end-to-end matrix and loss, against the
    reference at 40 digits (error ~1e-30): the certified error bounds the actual one per entry."""
    problem, factors, t_end = inst
    run = flow.solve(problem, factors, t_max=t_end, save_at=[t_end / 2], error="two-tolerance")
    assert run.ok.all()
    ref = reference.solve(problem, [W[0] for W in factors], t_end=t_end, dps=40, save_at=[t_end / 2], budget_s=60)
    view = run.certified
    with ref.workdps():
        flat = [v for Wj in ref.factors for v in (Wj[i, j] for i in range(Wj.rows) for j in range(Wj.cols))]
        i = 0
        for j, Fj in enumerate(view.factors, start=1):
            n = Fj.value.numel()
            _within(Fj, flat[i : i + n], f"W_{j}")
            i += n
        W = ref.end_to_end
        _within(view.end_to_end, [W[i, j] for i in range(W.rows) for j in range(W.cols)], "end-to-end")
        _within(view.loss, [ref.loss], "loss")
        Ws = ref.save_end_to_end[0]
        _within(view.save_end_to_end, [Ws[i, j] for i in range(Ws.rows) for j in range(Ws.cols)], "save")


def test_certified_error_covers_the_actual_error_across_the_saddle_escape() -> None:
    """Default path (``error="estimate"`` solve, then ``.certified``): Razin–Cohen 2×2, depth 2, init scale 1e-3,
    t = 100, so the run escapes the saddle at 0 (loss ≈ 1 → ≈ 1e-19) and the flow amplifies early errors.  The
    view's errors are the two-tolerance errors it forms itself (one loose solve), and they bound the actual error
    against the 40-digit reference, per entry, at the final time and at saves through the escape; they are never
    below the summed local estimate they extend."""
    B, saves = 3, [5.0, 10.0, 20.0]
    g = torch.Generator().manual_seed(5)
    factors = gaussian_init(B, (2, 2, 2), 1e-3, generator=g)
    problem = razin_cohen_2x2(B)
    run = flow.solve(problem, factors, t_max=100.0, save_at=saves)
    assert run.ok.all() and run.error_model == "estimate"
    assert float(run.save_loss[:, 0].min()) > 0.5 and float(run.loss.max()) < 1e-10  # it does escape
    view = run.certified
    P = run.result.y.shape[1]
    cert = torch.cat([F.error.flatten(1) for F in view.factors], 1)
    assert bool((cert >= run.result.entry_error).all()) and bool((cert > 0).all())
    for b in range(B):
        ref = reference.solve(problem.select([b]), [W[b] for W in factors], t_end=100.0, dps=40, save_at=saves,
                              budget_s=60)
        with ref.workdps():
            def flat(fs):
                return [v for Wj in fs for v in (Wj[i, j] for i in range(Wj.rows) for j in range(Wj.cols))]

            i = 0
            for j, Fj in enumerate(view.factors, start=1):
                n = Fj.value[b].numel()
                _within(Fj[b], flat(ref.factors)[i : i + n], f"W_{j}(100), instance {b}")
                i += n
            W = ref.end_to_end
            _within(view.end_to_end[b], [W[r, c] for r in range(2) for c in range(2)], f"W(100), instance {b}")
            _within(view.loss[b], [ref.loss], f"loss(100), instance {b}")
            for k in range(len(saves)):
                fs = [F[b, k] for F in view.save_factors]
                ys = flat(ref.save_factors[k])
                assert len(ys) == P
                i = 0
                for Fj in fs:
                    n = Fj.value.numel()
                    _within(Fj, ys[i : i + n], f"factors at t = {saves[k]}, instance {b}")
                    i += n


def test_balanced_view_uses_two_tolerance_errors_and_covers_the_reference() -> None:
    """``solve_balanced(...).certified``: per-entry errors ``e + e_loose + |W − W_loose|`` (a loose solve made by
    the view), never below the solver's own first-order bound, and covering the 40-digit reference's actual error
    (the reference starts from the same float64 balanced factors)."""
    from implreg.matrix.flow import solve_balanced

    g = torch.Generator().manual_seed(7)
    W0 = with_det_sign(0.05 * torch.randn(2, 2, 2, generator=g, dtype=F64), +1)
    problem = razin_cohen_2x2(2)
    sol = solve_balanced(problem, balanced_init(W0, 2), 2, t_max=20.0)
    assert sol.ok.all() and sol.entry_error is None
    view = sol.certified
    e = view.end_to_end.error
    assert bool((e >= sol.error.reshape(-1, 1, 1)).all())
    for b in range(2):
        ref = reference.solve(problem.select([b]), [W[b] for W in sol.init_factors], t_end=20.0, dps=40, budget_s=60)
        with ref.workdps():
            W = ref.end_to_end
            _within(view.end_to_end[b], [W[r, c] for r in range(2) for c in range(2)], f"balanced W(20), {b}")


# ---------------------------------------------------------------------------------------------- own ∩ reference


def test_a_refined_ball_is_the_reference_intersected_with_the_solvers_own() -> None:
    """``_intersect_own``: a reference ball wider than the solver's own enclosure shrinks to the overlap (both
    enclose the exact value), a narrower one stays as it is, an unknown own entry (error ∞, NaN) leaves it alone,
    and disjoint balls keep the reference's ball and report the disagreement."""
    import numpy as np
    from flint import arb

    from implreg.matrix.flow.certified import _intersect_own

    ref = np.array([arb(1, 1), arb("2.0 +/- 1e-9"), arb(5, 1), arb(7, 1)], dtype=object)
    own_v = torch.tensor([1.25, 2.0, 0.0, math.nan], dtype=F64)
    own_e = torch.tensor([0.5, 1.0, math.inf, 1.0], dtype=F64)
    out, ok = _intersect_own(ref, own_v, own_e)
    assert ok
    assert float(out[0].lower()) == pytest.approx(0.75) and float(out[0].upper()) == pytest.approx(1.75)
    # (arb stores radii rounded up to 30 bits: compare loosely)
    assert float(out[1].rad()) <= 1.01e-9 and all(float(out[k].rad()) == pytest.approx(1.0) for k in (2, 3))
    assert float(out[2].mid()) == 5 and float(out[3].mid()) == 7
    _, ok = _intersect_own(np.array([arb(1, 0.1)], dtype=object), torch.tensor([3.0], dtype=F64),
                           torch.tensor([0.5], dtype=F64))
    assert not ok


def test_a_lopsided_quasi_norm_enclosure_is_decided_on_refined_leaves() -> None:
    """End to end through the intersecting refiner: Schatten-¼ of a flow state with rtol 1e-6 is undecided in
    float64 against a bound just below σ₁ (σ_min^¼ carries the state's error to the ¼ power); the ball tier,
    re-evaluating the expression on the refined leaves (reference ∩ the solver's own balls), decides it."""
    from implreg.matrix import measures

    # depth 1: W₁₁ never moves and the observed entries relax as b + (w0 − b)e^{−t}; W₁₁ chosen so that W(1) is
    # rank one up to rounding (σ_min ~ 1e-16 ≪ the state's error ~1e-7)
    e1 = math.exp(-1.0)
    w12, w21, w22 = 1 - 1.375 * e1, 1 - 0.5 * e1, 0.125 * e1
    W0 = torch.tensor([[[w12 * w21 / w22, -0.375], [0.5, 0.125]]], dtype=F64)
    run = flow.solve(razin_cohen_2x2(1), (W0,), t_max=1.0, rtol=1e-6, atol=1e-9)
    W = run.certified.end_to_end
    n = measures.schatten(W, 0.25)
    s1 = measures.spectral(W)
    bound = float(s1.value[0]) * (1 - 1e-6)
    assert float(n.lo[0]) < bound  # float64 alone cannot decide it
    certify(n >= bound, what="Schatten-¼ ≥ just below σ₁")
    assert run.certified.runs.cache, "the decision must have come from the refined leaves"


def test_a_failed_integration_is_an_error_that_names_it_not_a_reference_run() -> None:
    """An instance whose float64 run stopped at max_steps (stiff: depth 4, every factor entry 15) has no state at
    t_max; a comparison that needs it raises NumericalError with the solver's message at once, instead of spending
    the mpmath reference's budget on the same stiffness (which took minutes per example); an instance that ran
    to t_max in the same batch is decided as usual."""
    from implreg.errors import NumericalError

    W = torch.stack([torch.full((2, 2), 15.0, dtype=torch.float64), 0.3 * torch.eye(2, dtype=torch.float64)])
    run = flow.solve(razin_cohen_2x2(2), (W, W, W, W), t_max=100.0, max_steps=20_000)
    assert [int(s) for s in run.result.status] == [3, 1]  # MAX_STEPS, REACHED_T_MAX
    loss = run.certified.loss
    certify(loss[1:] >= 0, what="the finished instance")  # decided (raises otherwise)
    with pytest.raises(NumericalError, match=r"instance 0: stopped after the maximum number of steps.*run\.ok"):
        certify(loss >= 0, what="ℓ ≥ 0")
    assert not run.certified.runs.cache  # no reference was run


#: Balanced factors (W_1, …, W_4) of one 4×4 embedding instance drawn by a pooled run of embedding-norms-diverge
#: (init scale 1e-3, det W(0) > 0), as drawn: the det guard depends on the factors, not only on W(0).
_EMBEDDING_DEPTH4_FACTORS = (
    (
        (-0.0009961576957389308, 0.020098612313178634, 0.09159086054017682, -0.03859725557825434),
        (-0.07516111914668536, 0.03337172100538161, 0.07456351018941057, -0.0007625299983893667),
        (-0.013390850678637663, 0.09204684089863738, 0.07242394633242707, 0.005751149135491095),
        (0.0019445708076627358, 0.0017775655139257557, 0.06217598589052239, 0.04811609713064579),
    ),
    (
        (-0.03203894092438657, 0.027624632681658063, -0.05260791907900242, -0.01615344807208384),
        (-0.05923023702460436, -0.033661629543536076, -0.006651598852664478, -0.05493032419188464),
        (-0.07001664358512177, -0.10043418567336414, -0.10102897177909792, -0.021914771524041365),
        (-0.029095280154353465, 0.01843672454134594, 0.03019187745398035, 0.04928916217519324),
    ),
    (
        (0.03671867065166255, -0.019991556951499012, -0.05951372673682914, -0.022976843658966423),
        (-0.017580035442500554, -0.03453792528480835, 0.02434064614031468, -0.04059033775540488),
        (-0.024017569440309305, 0.042187837154236324, -0.01336729512289488, -0.03567704445689524),
        (0.050832853927241954, 0.06580703859438587, 0.14616234493519145, -0.03284899916887473),
    ),
    (
        (0.017311792155810284, 0.028248342931454673, -0.008319845100380365, -0.13056213332282557),
        (0.037771747762314435, -0.03565458267060036, -0.04341474032997797, -0.07359819931306065),
        (0.057975577525922604, 0.022567836993220465, 0.009273397693416369, -0.001893280230471623),
        (-0.02702168522270046, 0.03410928161694604, -0.04204923210309901, 0.08300772903976203),
    ),
)


def test_loose_run_of_the_two_tolerance_error_runs_without_the_guard() -> None:
    """A 4×4 Razin–Cohen embedding instance at depth 4 (factors from a pooled run of embedding-norms-diverge, init
    scale 1e-3): the tight run passes every loss level at t ≈ 174 with the det guard holding, but a loose run (100×
    the tolerances) WITH the guard stops UNRESOLVED at t ≈ 41, its larger error estimate making det W unresolvable.
    The two-tolerance error's loose run therefore runs without the guard (and no further than the tight run got):
    every level keeps a finite error, small against |W₁₁|, instead of ∞ and a reference solve per level."""
    from implreg.matrix.flow.gradient_flow import TWO_TOL_FACTOR
    from implreg.matrix.flow.integrate import Status
    from implreg.matrix.problems import razin_cohen_embedding

    factors = tuple(torch.tensor(W, dtype=torch.float64).unsqueeze(0) for W in _EMBEDDING_DEPTH4_FACTORS)
    levels = [0.1, 3e-2, 1e-2, 5e-3, 3e-3]
    kw = {"loss_target": 3e-3, "loss_levels": levels, "guard": "det"}
    tight = flow.solve(razin_cohen_embedding(4, 1), factors, rtol=1e-9, atol=1e-12, **kw)
    assert int(tight.result.status[0]) == int(Status.REACHED_EVENT) and torch.isfinite(tight.level_t).all()
    guarded_loose = flow.solve(razin_cohen_embedding(4, 1), factors, rtol=TWO_TOL_FACTOR * 1e-9,
                               atol=TWO_TOL_FACTOR * 1e-12, **kw)
    assert int(guarded_loose.result.status[0]) == int(Status.UNRESOLVED)
    assert float(guarded_loose.result.t[0]) < float(tight.level_t[0, 0])  # before the first level
    two = tight.with_two_tolerance_error()
    err = two.result.level_error[0]
    W_levels = tight.certified.level_end_to_end
    assert torch.isfinite(err).all() and (W_levels.error[0, :, 0, 0] < 1e-3 * W_levels.value[0, :, 0, 0].abs()).all()
