"""``implreg.matrix.dynamics`` against independent computations.

References: autograd and forward-mode derivatives (torch.func) for ∇ℓ and Ẇ; 50-digit mpmath for the enclosures of
certified values; finite differences of singular values for σ̇_r; the eigendecomposition form of the end-to-end rule
(``factorization.end_to_end_velocity``) at balanced points; the closed form b + (W₀ − b)e^{−t} of depth-1 flow on a
fully observed completion; and checks that must fail (an unbalanced point, a kicked trajectory).
"""

from __future__ import annotations

import dataclasses
import math

import mpmath
import pytest
import torch

from implreg import certify
from implreg.matrix import dynamics, flow
from implreg.matrix.factorization import balanced_init, end_to_end_velocity, gaussian_init
from implreg.matrix.problems import completion
from implreg.strategies.matrix import LinearProblem, stack_problems

F64 = torch.float64


def _problems(kind: str, B: int, shape: tuple[int, int] = (2, 3)):
    return stack_problems([LinearProblem(kind, shape, seed, 3 if kind == "sensing" else 0).problem()
                           for seed in range(B)])


def _mp_loss_grad(problem, b: int, W: list[list[float]]) -> list[list[mpmath.mpf]]:
    """∇ℓ at one instance in 50-digit arithmetic, straight from the definition ℓ = ½ Σ_k (⟨A_k, W⟩ − y_k)²."""
    d, e = problem.shape
    with mpmath.workdps(50):
        if problem.is_completion:
            m, t = problem.mask[b].tolist(), problem.target[b].tolist()
            return [[m[i][j] * (mpmath.mpf(W[i][j]) - t[i][j]) for j in range(e)] for i in range(d)]
        A, y = problem.A[b].tolist(), problem.y[b].tolist()
        r = [mpmath.fsum(mpmath.mpf(A[k][i][j]) * W[i][j] for i in range(d) for j in range(e)) - y[k]
             for k in range(len(y))]
        return [[mpmath.fsum(r[k] * A[k][i][j] for k in range(len(y))) for j in range(e)] for i in range(d)]


@pytest.mark.parametrize("kind", ["completion", "sensing"])
def test_loss_gradient_encloses_the_exact_gradient(kind: str) -> None:
    """Certified ∇ℓ(W) of exact W (B, T, d, d') encloses the 50-digit gradient entrywise, and matches autograd."""
    P = _problems(kind, 3)
    W = torch.randn(3, 2, 2, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    G = dynamics.loss_gradient(P, W)
    assert G.shape == W.shape and G.rigorous
    Wg = W.clone().requires_grad_(True)
    loss = sum(P.loss(Wg[:, t]).sum() for t in range(2))
    (auto,) = torch.autograd.grad(loss, Wg)
    torch.testing.assert_close(G.value, auto, rtol=1e-13, atol=1e-14)
    for b in range(3):
        for t in range(2):
            exact = _mp_loss_grad(P, b, W[b, t].tolist())
            for i in range(2):
                for j in range(3):
                    assert abs(exact[i][j] - G.value[b, t, i, j].item()) <= G.error[b, t, i, j].item()


@pytest.mark.parametrize("kind", ["completion", "sensing"])
def test_loss_encloses_the_exact_loss(kind: str) -> None:
    """Certified ℓ(W) of exact W (B, T, d, d') encloses the 50-digit loss, is rigorous, and matches Problem.loss."""
    P = _problems(kind, 3)
    W = torch.randn(3, 2, 2, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    L = dynamics.loss(P, W)
    assert L.shape == (3, 2) and L.rigorous
    torch.testing.assert_close(L.value, torch.stack([P.loss(W[:, t]) for t in range(2)], 1), rtol=1e-14, atol=0)
    for b in range(3):
        for t in range(2):
            Wbt = W[b, t].tolist()
            with mpmath.workdps(50):
                if kind == "completion":
                    m, tg = P.mask[b].tolist(), P.target[b].tolist()
                    r = [m[i][j] * (mpmath.mpf(Wbt[i][j]) - tg[i][j]) for i in range(2) for j in range(3)]
                else:
                    A, y = P.A[b].tolist(), P.y[b].tolist()
                    r = [mpmath.fsum(mpmath.mpf(A[k][i][j]) * Wbt[i][j] for i in range(2) for j in range(3)) - y[k]
                         for k in range(len(y))]
                exact = mpmath.fsum(x * x for x in r) / 2
            assert abs(exact - L.value[b, t].item()) <= L.error[b, t].item()


def test_balancedness_vanishes_at_balanced_init_and_encloses_the_exact_gram_difference() -> None:
    """D_j = 0 at a balanced init (up to its float64 rounding, ≤ 1e-14 here); at Gaussian factors the certified
    D_j encloses the 50-digit value."""
    W0 = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    for D in dynamics.balancedness(balanced_init(W0, 3)):
        certify.close(D, 0.0, tol=1e-14 * (1 + W0.abs().amax().item()) ** 2, what="D_j = 0 at a balanced init")
    fs = gaussian_init(2, (3, 2, 4), 0.7, generator=torch.Generator().manual_seed(3))
    (D,) = dynamics.balancedness(fs)
    with mpmath.workdps(50):
        for b in range(2):
            W1, W2 = mpmath.matrix(fs[0][b].tolist()), mpmath.matrix(fs[1][b].tolist())
            exact = W2.T * W2 - W1 * W1.T
            for i in range(2):
                for j in range(2):
                    assert abs(exact[i, j] - D.value[b, i, j].item()) <= D.error[b, i, j].item()


@pytest.mark.parametrize("kind", ["completion", "sensing"])
def test_end_to_end_rate_is_the_chain_rule(kind: str) -> None:
    """Ẇ equals the forward-mode derivative of W_N⋯W_1 along the factor velocities −∂ℓ/∂W_j (autograd), both in
    float64 from the same inputs: agreement to 1e-12 relative (a few hundred ulps of O(N) products)."""
    P = _problems(kind, 2)
    fs = gaussian_init(2, (3, 2, 3, 2), 0.8, generator=torch.Generator().manual_seed(4))
    leaves = [W.clone().requires_grad_(True) for W in fs]
    W = leaves[2] @ leaves[1] @ leaves[0]
    grads = torch.autograd.grad(P.loss(W).sum(), leaves)
    _, tangent = torch.func.jvp(lambda *f: f[2] @ f[1] @ f[0], tuple(fs), tuple(-g for g in grads))
    rate = dynamics.end_to_end_rate(P, fs)
    scale = tangent.abs().amax().item()
    assert (rate.value - tangent).abs().amax().item() <= 1e-12 * scale
    assert rate.error.amax().item() <= 1e-12 * scale


def test_end_to_end_rate_at_balanced_points_is_arora_rule() -> None:
    """At a balanced point, Ẇ from the factor velocities equals −Σ_j (WWᵀ)^{(j−1)/N} ∇ℓ (WᵀW)^{(N−j)/N} (Arora et
    al. 2018, Thm 1) computed by eigendecompositions: 1e-10 relative (the fractional powers' eigh rounding); at an
    unbalanced point the two differ by O(1)."""
    P = _problems("sensing", 3, (3, 3))
    W0 = torch.randn(3, 3, 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    rule = end_to_end_velocity(P, W0, 3)
    rate = dynamics.end_to_end_rate(P, balanced_init(W0, 3))
    assert (rate.value - rule).abs().amax().item() <= 1e-10 * rule.abs().amax().item()
    fs = gaussian_init(3, (3, 3, 3, 3), 1.0, generator=torch.Generator().manual_seed(6))
    off = dynamics.end_to_end_rate(P, fs).value - end_to_end_velocity(P, fs[2] @ fs[1] @ fs[0], 3)
    assert off.abs().amax().item() > 1e-2


def test_singular_value_rates_are_derivatives_of_the_singular_values() -> None:
    """u_rᵀẆv_r = dσ_r(W + hẆ)/dh at h = 0 for simple σ_r: central differences with h = 1e-5 (error O(h²) ≈ 1e-9
    relative here, far below the 1e-6 compared)."""
    W = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(7), dtype=F64)
    Wdot = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(8), dtype=F64)
    assert dynamics.simple_singular_values(W, 1e-2).all()
    h = 1e-5
    fd = (torch.linalg.svdvals(W + h * Wdot) - torch.linalg.svdvals(W - h * Wdot)) / (2 * h)
    rates = dynamics.singular_value_rates(W, Wdot)
    torch.testing.assert_close(rates.value, fd, rtol=1e-6, atol=1e-6)


def test_singular_value_rule_holds_at_balanced_points_and_is_refuted_off_them() -> None:
    """Arora et al. 2019, Thm 3 at exact balanced factors: certified to 1e-10 relative; at unbalanced Gaussian
    factors of depth 3 the same comparison is certified false (the check can fail)."""
    P = _problems("completion", 4, (3, 3))
    W0 = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(9), dtype=F64)

    def check(fs, N):
        W = dynamics.end_to_end(fs)
        rate, rule = dynamics.singular_value_rates(W, dynamics.end_to_end_rate(P, fs)), \
            dynamics.singular_value_rule(P, W, N)
        simple = dynamics.simple_singular_values(W, 1e-3)
        tol = 1e-10 * (rate.value.abs() + rule.value.abs()).amax(-1, keepdim=True).expand_as(rate.value)
        certify.close(rate[simple], rule[simple], tol=tol[simple], what="σ̇_r = −N σ_r^(2−2/N)⟨∇ℓ, u_r v_rᵀ⟩")

    for N in (1, 2, 3):
        check(balanced_init(W0, N), N)
    with pytest.raises(AssertionError, match="σ̇_r"):
        check(gaussian_init(4, (3, 3, 3, 3), 1.0, generator=torch.Generator().manual_seed(10)), 3)


def test_simple_singular_values_masks() -> None:
    """Closed forms: diag(3, 2, 2) has one simple σ; diag(1, ½, 0) two (σ = 0 is not apart from 0)."""
    W = torch.stack([torch.diag(torch.tensor(v, dtype=F64)) for v in ([3.0, 2.0, 2.0], [1.0, 0.5, 0.0])])
    assert dynamics.simple_singular_values(W, 1e-3).tolist() == [[True, False, False], [True, True, False]]
    assert dynamics.simple_singular_values(W, 0.6).tolist() == [[False, False, False], [False, False, False]]


def test_balancedness_drift_is_within_its_allowance_and_sees_a_kick() -> None:
    """Along a solve (unbalanced depth-3 completion) the drift is within the allowance; a 1e-7 kick to one factor
    entry from the 5th save on (a defect the integrator did not report) is certified as too much drift."""
    P = _problems("completion", 3, (2, 2))
    fs = gaussian_init(3, (2, 3, 3, 2), 0.6, generator=torch.Generator().manual_seed(11))
    sol = flow.solve(P, fs, t_max=4.0, save_at=[0.5 * k for k in range(1, 9)])
    sol.raise_on_failure()
    pairs = dynamics.balancedness_drift(sol)
    assert len(pairs) == 2
    for drift, allowed in pairs:
        assert drift.shape == allowed.shape == (3, 8) and not allowed.rigorous
        certify(drift <= allowed, what="drift within the allowance")
    y = sol.result.save_y.clone()
    y[:, 4:, 0] += 1e-7
    kicked = dataclasses.replace(sol, result=dataclasses.replace(sol.result, save_y=y))
    drift, allowed = dynamics.balancedness_drift(kicked)[0]
    with pytest.raises(AssertionError, match="kicked"):
        certify(drift <= allowed, what="kicked drift within the allowance")


def test_solve_end_to_end_depth1_encloses_the_closed_form() -> None:
    """Depth 1, every entry observed: Ẇ = −(W − b), so W(t) = b + (W₀ − b)e^{−t}; the certified solution (an
    estimate) encloses it with error ≤ 1e-7 (the |tight − loose| term of the loose run at rtol 1e-8 dominates).  A
    save after t_max is never reached: 0 ± ∞."""
    g = torch.Generator().manual_seed(12)
    b, W0 = torch.randn(2, 2, 3, generator=g, dtype=F64), torch.randn(2, 2, 3, generator=g, dtype=F64)
    P = completion(torch.ones(2, 2, 3, dtype=F64), b)
    W = dynamics.solve_end_to_end(P, W0, 1, t_max=2.0, save_at=[0.5, 2.0])
    assert W.shape == (2, 2, 2, 3) and not W.rigorous
    for k, t in enumerate((0.5, 2.0)):
        exact = b + (W0 - b) * math.exp(-t)
        assert ((W.value[:, k] - exact).abs() <= W.error[:, k]).all()
        assert W.error[:, k].amax().item() <= 1e-7
    short = dynamics.solve_end_to_end(P, W0, 1, t_max=1.0, save_at=[0.5, 2.0])
    assert torch.isinf(short.error[:, 1]).all() and torch.isfinite(short.error[:, 0]).all()


def test_solve_across_depths_shapes_and_depth_one() -> None:
    """(B, K, d, d') solutions; the depth-1 column is flow.solve's depth-1 solution; each reaches the target."""
    g = torch.Generator().manual_seed(13)
    P = completion(torch.ones(2, 2, 2, dtype=F64), torch.randn(2, 2, 2, generator=g, dtype=F64))
    W0 = 1e-2 * torch.randn(2, 2, 2, generator=g, dtype=F64)
    W = dynamics.solve_across_depths(P, W0, (1, 2), loss_target=1e-6)
    assert W.shape == (2, 2, 2, 2)
    ref = flow.solve(P, (W0,), loss_target=1e-6, t_max=1e5).end_to_end
    assert torch.equal(W[:, 0], ref)
    for k in range(2):
        assert (P.loss(W[:, k]) <= 1e-6 * (1 + 1e-6)).all()


def test_depth_sweep_is_reproducible_per_problem_and_recovers_an_observed_truth() -> None:
    """One W(0) per problem, seeded by its repr: the same problem gives the same row in any set; a fully observed
    rank-1 truth is recovered at every depth (ℓ ≤ 1e-6: relative error ≤ √(2ℓ)/‖M‖_F = 4.7e-4; effective rank ≈ 1;
    a tighter target costs minutes at depth 2, where the unobserved-free directions decay only like 1/t)."""
    from hypothesis import find

    from implreg.strategies.matrix import low_rank_completions

    p = find(low_rank_completions(d=3, rank=1, fraction=(0.99, 1.0), init_scale=1e-3), lambda p: True)
    erank, error = dynamics.depth_sweep([p], (1, 2), loss_target=1e-6)
    assert erank.shape == error.shape == (1, 2)
    assert float(error.max()) <= 4.8e-4 and float(erank.max()) < 1.05
    again, _ = dynamics.depth_sweep((p, p), (1, 2), loss_target=1e-6)
    assert torch.equal(again[0], erank[0]) and torch.equal(again[1], erank[0])


def _near_rank_deficient() -> tuple:
    """A 2×2 completion whose depth-2 balanced flow nears rank deficiency (σ_min(W(0)) = 1e-3): the end-to-end
    ODE's loose run wanders there (the end-to-end claim at 1,000 instances met the same at σ_min(W(10)) = 5e-8)."""
    from implreg.matrix.factorization import end_to_end
    from implreg.strategies.matrix import BalancedInit, stack_linear_batch

    init = BalancedInit(depth=2, sigma=(1.0, 1e-3),
                        zu=((2.299116474294362, -0.9020611855305841), (-0.5415346011073109, -0.06851531446436128)),
                        zv=((0.17752685844397367, 0.04641418407589614), (1.1353707063664398, 1.7698647460878612)),
                        zr=(((-0.13214543161149211, -1.119091204521394, -0.24564496147596243),
                             (1.4052979959960032, 1.4434828625392826, 1.8490887771805977),
                             (0.18214475190696913, -0.2246791544930039, 0.4294987230217361)),), width=3)
    P, factors = stack_linear_batch([(LinearProblem("completion", (2, 2), 16504), init)])
    return P, end_to_end(factors)


def test_an_undecided_end_to_end_comparison_is_decided_by_tighter_re_solves() -> None:
    from flint import arb

    from implreg.numerics import Certified, close

    P, W0 = _near_rank_deficient()
    saves = [1.5, 3.0]
    W = dynamics.solve_end_to_end(P, W0, 2, t_max=3.0, save_at=saves, rtol=1e-10)
    ref = dynamics.solve_end_to_end(P, W0, 2, t_max=3.0, save_at=saves, rtol=1e-12)
    assert float(W.error[0, -1].max()) > 1e-6 > 1e-7 > float(ref.error[0, -1].max())
    # the first round's re-solve (rtol 1e-11) is tighter, and its balls hold the rtol 1e-12 solution
    ball = W._p["refine"]([0], 64)
    assert "re-solved at rtol 1e-11" in ball.note and not ball.rigorous
    for i, b in enumerate(ball.mid.reshape(-1)):
        assert b.rad() < 2e-7 and b.overlaps(arb(float(ref.value.reshape(-1)[i]), float(ref.error.reshape(-1)[i])))
    # so a comparison that float64 leaves undecided at tol 1e-6 is decided (it raised Undecided before)
    certify(close(W, Certified.exact(ref.value), tol=1e-6), what="W(rtol 1e-10) = W(rtol 1e-12)")
    # the rounds stop at the floor: 1e-11, 1e-12, then nothing more to try
    steps = [dynamics.end_to_end_refinement_rtol(1e-10, b) for b in (64, 128, 256, 1024)]
    assert steps[0] == pytest.approx(1e-11, rel=1e-12) and steps[1] == 1e-12 and steps[2:] == [None, None]
    assert dynamics.end_to_end_refinement_rtol(1e-12, 64) is None  # already at the floor
