"""Tests of implreg.matrix.flow.spectral: balanced gradient flow in deflated spectral coordinates (hybrid solver).

Independent checks, never the module against itself:
* the spectral field against the end-to-end formula of Arora et al. (``factorization.end_to_end_velocity``,
  eigh-based fractional powers) and against central differences of numpy's SVD along that flow;
* RODAS4 (the stiff integrator) against closed-form solutions: order 4, embedded order 3, R(−∞) = 0;
* the hybrid solver against factor-coordinate gradient flow (``flow.solve``) where that is resolved, and
  against the mpmath reference (``implreg.matrix.reference``) past float64's determinant resolution;
* the Razin–Cohen hard case (depth 2, det W(0) > 0) to ℓ = 1e-4 against the claims' closed-form bounds.

Inits for comparisons with factor-coordinate flows are *exactly* balanced in float64: ``W_1 = A``,
``W_{j+1} = Y W_jᵀ`` with Y a signed permutation, so ``W_{j+1}ᵀW_{j+1} = W_jW_jᵀ`` holds without rounding.
(``balanced_init`` factors are balanced only to ~u‖W_j‖²; the exact factor flow from them stops following the
balanced dynamics once σ_min(W_j)² falls to that defect — measured from det W ≈ 1e-18 for init scale 1e-3 —,
so a reference run from them measures a different trajectory.)
"""

from __future__ import annotations

import itertools
import math

import mpmath
import numpy as np
import pytest
import torch

from implreg.errors import InvalidInputError, NumericalError
from implreg.matrix import flow, reference
from implreg.matrix.factorization import (
    balanced_init,
    end_to_end,
    end_to_end_velocity,
    haar_orthogonal,
    with_det_sign,
)
from implreg.matrix.flow import Status
from implreg.matrix.flow.spectral import (
    SpectralLayout,
    rodas_step,
    rosenbrock,
    solve_balanced,
    spectral_vector_field,
    to_end_to_end,
)
from implreg.matrix.problems import razin_cohen_2x2, razin_cohen_embedding, sensing

F64 = torch.float64
ROT90 = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=F64)  # det +1, signed permutation (exact)


def exactly_balanced(A: torch.Tensor, depth: int) -> tuple[torch.Tensor, ...]:
    """W_1 = A, W_{j+1} = Y W_jᵀ (Y a 90° rotation): balanced without rounding; det W = det(A)^depth."""
    Y = torch.eye(A.shape[-1], dtype=A.dtype)
    if A.shape[-1] == 2:
        Y = ROT90
    fs = [A.clone()]
    for _ in range(depth - 1):
        fs.append((Y @ fs[-1].transpose(-1, -2)).contiguous())
    return tuple(fs)


def random_state(n: int, d: int, gen: torch.Generator) -> tuple[SpectralLayout, torch.Tensor]:
    """Spectral states with orthogonal U, V, a well-separated top core and σ_min ∈ [1e-3, 1e-1]."""
    lay = SpectralLayout(d)
    k = d - 1
    U = haar_orthogonal(n, d, generator=gen, dtype=F64)
    V = haar_orthogonal(n, d, generator=gen, dtype=F64)
    tau = 1.0 + 2.0 * torch.rand(n, k, generator=gen, dtype=F64)
    P = haar_orthogonal(n, k, generator=gen, dtype=F64)
    Q = haar_orthogonal(n, k, generator=gen, dtype=F64)
    T = P @ torch.diag_embed(tau) @ Q.transpose(-1, -2)
    lam = math.log(1e-3) + math.log(100.0) * torch.rand(n, generator=gen, dtype=F64)
    return lay, lay.pack(U, V, T, lam, torch.zeros(n, dtype=F64))


def random_sensing(n: int, d: int, m: int, gen: torch.Generator):
    A = torch.randn(n, m, d, d, generator=gen, dtype=F64)
    y = torch.randn(n, m, generator=gen, dtype=F64)
    return sensing(A, y)


def params_of(problem) -> list[torch.Tensor]:
    return list(problem.tensors().values())


# ------------------------------------------------------------------------------------------- the field


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("depth", [2, 3, 4, 5])
def test_field_reconstructs_end_to_end_velocity(d: int, depth: int) -> None:
    """U̇Σ̃Vᵀ + UΣ̃̇Vᵀ + UΣ̃V̇ᵀ equals Ẇ = −Σ_j (WWᵀ)^{(j−1)/N}∇ℓ(WᵀW)^{(N−j)/N} (Arora et al. 2018, Thm 1)."""
    gen = torch.Generator().manual_seed(10 * d + depth)
    n = 16
    lay, y = random_state(n, d, gen)
    prob = random_sensing(n, d, 3, gen)
    for scalar in (True, False):
        dy = spectral_vector_field(prob, depth, lay, scalar_2x2=scalar)(None, y, *params_of(prob))
        U, V, T, lam, _ = lay.unpack(y)
        dU, dV, dT, dlam, _ = lay.unpack(dy)
        k = d - 1
        S = torch.zeros(n, d, d, dtype=F64)
        dS = torch.zeros(n, d, d, dtype=F64)
        S[:, :k, :k], S[:, k, k] = T, torch.exp(lam)
        dS[:, :k, :k], dS[:, k, k] = dT, torch.exp(lam) * dlam
        Vt = V.transpose(-1, -2)
        W_dot = dU @ S @ Vt + U @ dS @ Vt + U @ S @ dV.transpose(-1, -2)
        W = to_end_to_end(lay, y)
        expect = end_to_end_velocity(prob, W, depth)
        scale = expect.abs().amax((-1, -2), keepdim=True) + 1.0
        assert ((W_dot - expect).abs() / scale).max() < 1e-11


@pytest.mark.parametrize("depth", [2, 3, 5])
def test_field_matches_svd_finite_differences(depth: int) -> None:
    """d log σ_r/dt, U̇ and V̇ of the field equal central differences of numpy's SVD of W ± hẆ (d = 2)."""
    gen = torch.Generator().manual_seed(depth)
    n = 8
    lay, y = random_state(n, 2, gen)
    prob = razin_cohen_2x2(n)
    dy = spectral_vector_field(prob, depth, lay)(None, y, *params_of(prob))
    U, _V, T, _lam, _ = lay.unpack(y)
    dU, dV, dT, dlam, _ = lay.unpack(dy)
    W = to_end_to_end(lay, y).numpy()
    W_dot = end_to_end_velocity(prob, torch.from_numpy(W), depth).numpy()
    h = 1e-6
    for i in range(n):
        sides = []
        for sgn in (1.0, -1.0):
            Us, s, Vh = np.linalg.svd(W[i] + sgn * h * W_dot[i])
            Vs = Vh.T
            # orient the singular vectors like the state's (same column signs)
            for r in range(2):
                if Us[:, r] @ U[i, :, r].numpy() < 0:
                    Us[:, r] *= -1.0
                    Vs[:, r] *= -1.0
            sides.append((Us, np.log(s), Vs))
        fd_U = (sides[0][0] - sides[1][0]) / (2 * h)
        fd_V = (sides[0][2] - sides[1][2]) / (2 * h)
        fd_logs = (sides[0][1] - sides[1][1]) / (2 * h)
        t_top = float(T[i, 0, 0])
        assert abs(fd_logs[0] - float(dT[i, 0, 0]) / t_top) < 1e-6 * (1 + abs(fd_logs[0]))
        assert abs(fd_logs[1] - float(dlam[i])) < 1e-6 * (1 + abs(fd_logs[1]))
        # numpy's columns were oriented by U's, so Vs = V·diag(sign t, 1)
        got_V = dV[i].numpy() * np.array([math.copysign(1.0, t_top), 1.0])
        assert np.abs(fd_U - dU[i].numpy()).max() < 1e-6 * (1 + np.abs(fd_U).max())
        assert np.abs(fd_V - got_V).max() < 1e-6 * (1 + np.abs(fd_V).max())


# ------------------------------------------------------------------------------------------- RODAS4


def _f_nonstiff(t, y):
    """ẏ₁ = −y₁², ẏ₂ = −y₁y₂: y₁ = y₂ = 1/(1 + t) from (1, 1)."""
    return torch.stack([-y[:, 0] ** 2, -y[:, 0] * y[:, 1]], dim=-1)


def _jac_nonstiff(y):
    z = torch.zeros_like(y[:, 0])
    return torch.stack([torch.stack([-2 * y[:, 0], z], -1), torch.stack([-y[:, 1], -y[:, 0]], -1)], dim=-2)


def test_rodas_step_orders_and_l_stability() -> None:
    """Global error order 4 (ratio ≈ 16 per halving), embedded estimate O(h⁴) per step, R(−∞) = 0."""
    errs, ests = [], []
    for n in (10, 20, 40):
        h = torch.full((1,), 1.0 / n, dtype=F64)
        y = torch.ones(1, 2, dtype=F64)
        for i in range(n):
            y_new, e = rodas_step(_f_nonstiff, y, _f_nonstiff(None, y), _jac_nonstiff(y), h)
            if i == 0:
                ests.append(float(e.abs().max()))
            y = y_new
        errs.append(float((y - 0.5).abs().max()))
    for a, b in itertools.pairwise(errs):
        assert 12.0 < a / b < 20.0
    for a, b in itertools.pairwise(ests):
        assert 10.0 < a / b < 20.0
    # L-stability: ẏ = λy with hλ = −1e8 is damped to ~0 in one step
    lam = -1e8
    y = torch.ones(1, 1, dtype=F64)
    y1, _ = rodas_step(lambda t, y: lam * y, y, lam * y, torch.full((1, 1, 1), lam, dtype=F64),
                       torch.ones(1, dtype=F64))
    assert abs(float(y1)) < 1e-6


def test_rosenbrock_stiff_problem_events_and_levels() -> None:
    """ẏ = −1e6 (y − cos τ) − sin τ, τ̇ = 1 from (1, 0): y = cos τ; event y ≤ −½ at τ = 2π/3; level τ = 1.5."""
    stiff = 1e6

    def f(t, y):
        return torch.stack([-stiff * (y[:, 0] - torch.cos(y[:, 1])) - torch.sin(y[:, 1]),
                            torch.ones_like(y[:, 1])], dim=-1)

    y0 = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=F64)
    res = rosenbrock(f, y0, t_max=torch.tensor([2.0, 10.0], dtype=F64), rtol=1e-9, atol=1e-12,
                     event=lambda y: y[:, 0] + 0.5, levels=lambda y: (1.5 - y[:, 1:2]), n_levels=1)
    # instance 0 reaches t_max = 2 (cos 2 > −0.5), instance 1 the event cos τ = −0.5 at τ = 2π/3
    assert res.statuses() == [Status.REACHED_T_MAX, Status.REACHED_EVENT]
    assert abs(float(res.y[0, 0]) - math.cos(2.0)) < 1e-8
    assert abs(float(res.t[1]) - 2 * math.pi / 3) < 1e-7
    assert (res.level_t - 1.5).abs().max() < 1e-12
    assert (res.level_y[:, 0, 0] - math.cos(1.5)).abs().max() < 1e-9
    assert int(res.n_steps.max()) < 400  # explicit RK would need ~10⁶ steps (hλ ≤ 3.3)


# ------------------------------------------------------------------------------------------- hybrid solver


def test_phase_one_is_factor_coordinate_flow() -> None:
    """Before any switch the hybrid solver is factor-coordinate gradient flow: it agrees with flow.solve (which may
    run fused kernels with a different summation order) to rounding, and with the same number of steps."""
    gen = torch.Generator().manual_seed(5)
    B = 3
    W0 = with_det_sign(0.5 * torch.eye(2, dtype=F64) + 0.05 * torch.randn(B, 2, 2, generator=gen, dtype=F64), 1)
    fs = balanced_init(W0, 3)
    ours = solve_balanced(razin_cohen_2x2(B), fs, 3, t_max=0.5, save_at=[0.1, 0.3])
    ref = flow.solve(razin_cohen_2x2(B), fs, t_max=0.5, save_at=[0.1, 0.3])
    assert ours.ok.all() and not ours.switched.any()
    assert (ours.end_to_end - ref.end_to_end).abs().max() < 1e-13
    assert (ours.save_end_to_end - ref.save_end_to_end).abs().max() < 1e-13
    assert torch.equal(ours.n_steps_factor, ref.n_steps)
    assert (ours.det_sign == 1).all() and (ours.n_steps_spectral == 0).all()


@pytest.mark.parametrize(("depth", "scale", "target"), [(2, 0.3, 0.03), (3, 1.0, 1e-3), (4, 0.3, 1e-2)])
def test_agrees_with_factor_coordinates(depth: int, scale: float, target: float) -> None:
    """|W11| and the crossing times at loss levels agree with flow.solve within both error estimates: depth 2 up
    to where flow.solve's det guard may stop it, depths 3–4 beyond the switch (factor coordinates stay resolved
    there: σ_min decays only polynomially), depth 3 down to ℓ = 1e-3."""
    gen = torch.Generator().manual_seed(100 + depth)
    B = 2 if depth == 2 else 1
    A = with_det_sign(scale * torch.randn(B, 2, 2, generator=gen, dtype=F64), 1)
    fs = exactly_balanced(A, depth)
    levels = [x for x in (0.3, 0.1, 3e-2, 1e-2, 3e-3, 1e-3) if x >= target]
    a = flow.solve(razin_cohen_2x2(B), fs, loss_target=target, t_max=1e5, loss_levels=levels, guard="det")
    b = solve_balanced(razin_cohen_2x2(B), fs, depth, loss_target=target, t_max=1e5, loss_levels=levels)
    assert b.ok.all() and b.switched.all() and (b.det_sign == 1).all()
    seen = torch.isfinite(a.level_t)
    assert seen.sum() >= 2 * B if depth == 2 else seen.all()
    if depth > 2:
        assert a.ok.all() and (b.level_t[:, -1] > b.phase_switch_t).all()  # compared beyond the switch
    dW = (a.level_end_to_end[..., 0, 0].abs() - b.level_end_to_end[..., 0, 0].abs()).abs()
    # flow.solve's error bounds factor entries; |δW11| ≤ N·2·err·max(1, |W|) to first order (crude)
    a_err = a.level_error * depth * 2.0 * (1.0 + a.level_end_to_end.abs().amax((-1, -2)))
    assert (dW[seen] <= a_err[seen] + b.level_error[seen]).all()
    assert (dW[seen] < 1e-7).all()  # measured ~1e-10: far inside the (conservative) estimates
    assert ((a.level_t - b.level_t)[seen].abs() < 1e-6 * (1 + b.level_t[seen])).all()


def test_hard_case_depth2_det_positive_to_1e_4() -> None:
    """Razin–Cohen, depth 2, det W(0) > 0 (claims 1–3): det stays positive with a certified log|det|, the loss
    falls monotonically at save points, |W11| ≥ (1 − √(2ℓ))²/√(2ℓ) and σ_min ≤ |W22| + |W12W21|/|W11| at
    every loss level down to 1e-4, where factor coordinates stop unresolved near ℓ ≈ 0.03."""
    gen = torch.Generator().manual_seed(7)
    B = 2
    W0 = with_det_sign(1e-3 * torch.randn(B, 2, 2, generator=gen, dtype=F64), 1)
    plain = flow.solve(razin_cohen_2x2(B), balanced_init(W0, 2), loss_target=1e-3, t_max=1e5, guard="det")
    assert (plain.status == int(Status.UNRESOLVED)).all() and (plain.loss > 1e-2).all()
    levels = [0.3, 0.1, 1e-2, 1e-3, 1e-4]
    saves = [1.0, 5.0, 20.0, 100.0, 500.0, 2000.0, 1e4, 4e4]
    s = solve_balanced(razin_cohen_2x2(B), W0, 2, loss_target=1e-4, t_max=1e7, loss_levels=levels, save_at=saves,
                       rtol=1e-7, atol=1e-10)
    assert s.ok.all(), s.messages()
    assert (s.loss <= 1e-4 * (1 + 1e-9)).all()
    # det sign from the spectral state, certified at the switch and carried by log σ_min (never rounded to 0)
    assert (s.det_sign == 1).all() and (s.level_det_sign == 1).all()
    assert (s.log_abs_det < -2000).all()  # det W ≈ e^−2500, known to a relative 1e-5 of its logarithm
    assert (s.log_abs_det_error < 1e-5 * s.log_abs_det.abs()).all()
    lv = torch.tensor(levels, dtype=F64)
    assert torch.isfinite(s.level_t).all() and (s.level_t.diff(dim=-1) > 0).all()
    # claim 2: |W11| ≥ (1 − √(2ℓ))²/√(2ℓ) at every level (minus the error estimate)
    bound = (1 - torch.sqrt(2 * lv)) ** 2 / torch.sqrt(2 * lv)
    W = s.level_end_to_end
    assert (W[..., 0, 0].abs() + s.level_error >= bound).all()
    # claim 3: σ_min ≤ |W22| + |W12 W21|/|W11|
    rhs = W[..., 1, 1].abs() + (W[..., 0, 1] * W[..., 1, 0]).abs() / W[..., 0, 0].abs()
    assert (torch.exp(s.level_log_sigma[..., -1]) <= rhs * (1 + 1e-6)).all()
    # loss decreases at the recorded save points (those reached before ℓ = 1e-4)
    sl = s.save_loss
    for i in range(B):
        row = sl[i][torch.isfinite(sl[i])]
        assert row.numel() >= 5 and (row.diff() < 0).all()
    assert (s.save_det_sign[torch.isfinite(s.save_det_sign)] == 1).all()
    assert (s.drift < 1e-8).all()
    # the level states sit on their levels, also in the log σ phase with its long loose-tolerance steps (they
    # once fell back to the step's end, ℓ = 0.0976 for the level 0.1): ℓ ≤ level, and within 1e-6 relative
    # (the crossing is located to ~1e-12 in θ; 1e-6 leaves room for the step's own error at rtol 1e-7)
    lvl_loss = 0.5 * ((W[..., 0, 1] - 1) ** 2 + (W[..., 1, 0] - 1) ** 2 + W[..., 1, 1] ** 2)
    assert (lvl_loss <= lv * (1 + 1e-12)).all() and (lvl_loss >= lv * (1 - 1e-6)).all(), lvl_loss
    assert (s.loss >= 1e-4 * (1 - 1e-6)).all()  # the stopping state too


def test_matches_mpmath_reference_past_float64_det_resolution() -> None:
    """Against the independent mpmath Taylor integrator of the factor ODE (dps 50), from exactly balanced factors,
    at a horizon where det W ≈ 1e-20 (float64 factor coordinates have lost the sign there): |W11| and log det W
    agree within the sum of both error estimates."""
    gen = torch.Generator().manual_seed(11)
    B = 2
    A = 1e-2 * torch.randn(B, 2, 2, generator=gen, dtype=F64)
    fs = exactly_balanced(A, 2)
    t_end = 30.0
    s = solve_balanced(razin_cohen_2x2(B), fs, 2, t_max=t_end)
    assert s.ok.all() and (s.det_sign == 1).all()
    assert ((s.log_abs_det > -70) & (s.log_abs_det < -40)).all()  # det ≈ 1e-20 … 1e-30
    for i in range(B):
        r = reference.solve(razin_cohen_2x2(1), [W[i] for W in fs], t_end=t_end, dps=50, budget_s=60)
        with r.workdps():
            det = r.det()
            rel = r.det_error() / abs(det)
            assert det > 0 and rel < 1e-6
            d_logdet = abs(float(mpmath.log(det)) - float(s.log_abs_det[i]))
            d_w11 = abs(float(r.end_to_end[0, 0]) - float(s.end_to_end[i, 0, 0]))
            assert d_logdet <= float(s.log_abs_det_error[i]) + float(rel)
            assert d_w11 <= float(s.error[i]) + float(r.error_estimate)
            assert d_logdet < 1e-7 and d_w11 < 1e-8  # measured: ~1e-9 and ~1e-10


def test_embedding_3x3_agrees_with_factor_coordinates() -> None:
    """d = 3 (claim 9's embedding; the top core T is a general 2×2 block): agreement with flow.solve at save
    times on a horizon where factor coordinates are still resolved."""
    gen = torch.Generator().manual_seed(3)
    B = 1
    A = with_det_sign(0.3 * torch.randn(B, 3, 3, generator=gen, dtype=F64), 1)
    fs = tuple(W.contiguous() for W in (A, A.transpose(-1, -2)))  # W_2 = W_1ᵀ: exactly balanced, det > 0
    prob = razin_cohen_embedding(3, B)
    saves = [1.0, 2.0, 4.0]
    a = flow.solve(prob, fs, t_max=4.0, save_at=saves)
    b = solve_balanced(prob, fs, 2, t_max=4.0, save_at=saves)
    assert a.ok.all() and b.ok.all() and b.switched.all()
    assert (b.save_end_to_end - a.save_end_to_end).abs().max() < 1e-7
    assert (b.det_sign == 1).all()


def test_rosenbrock_and_dopri5_spectral_phases_agree() -> None:
    """The spectral ODE integrated by RODAS4 and by Dormand–Prince (integrate) agree within their estimates."""
    gen = torch.Generator().manual_seed(8)
    B = 2
    W0 = with_det_sign(1e-2 * torch.randn(B, 2, 2, generator=gen, dtype=F64), 1)
    kw = {"t_max": 25.0, "loss_levels": [0.1, 0.05]}
    a = solve_balanced(razin_cohen_2x2(B), W0, 2, method="rosenbrock", **kw)
    b = solve_balanced(razin_cohen_2x2(B), W0, 2, method="dopri5", **kw)
    assert a.ok.all() and b.ok.all()
    assert ((a.end_to_end - b.end_to_end).abs().amax((-1, -2)) <= a.error + b.error).all()
    assert ((a.log_abs_det - b.log_abs_det).abs() <= a.log_abs_det_error + b.log_abs_det_error).all()
    assert ((a.log_abs_det - b.log_abs_det).abs() < 1e-6).all()


def test_batch_independence_bit_identical() -> None:
    """Each instance's result is bit-identical alone, in the batch, and in a permuted batch (CPU)."""
    gen = torch.Generator().manual_seed(3)
    B = 5
    W0 = with_det_sign(1e-2 * torch.randn(B, 2, 2, generator=gen, dtype=F64), 1)
    t_max = torch.tensor([5.0, 7.0, 6.0, 8.0, 5.5], dtype=F64)
    kw = {"loss_levels": [0.3, 0.1], "save_at": [1.0, 3.0, 5.5]}
    full = solve_balanced(razin_cohen_2x2(B), W0, 2, t_max=t_max, **kw)
    names = ["t", "status", "error", "end_to_end", "log_sigma", "log_abs_det", "log_abs_det_error", "det_sign",
             "n_steps_factor", "n_steps_spectral", "phase_switch_t", "level_t", "level_end_to_end", "level_error",
             "level_log_sigma", "save_end_to_end", "save_log_sigma", "spectral_state"]

    def same(x: torch.Tensor, y: torch.Tensor) -> bool:
        return torch.equal(x.nan_to_num(12345.0), y.nan_to_num(12345.0))

    for i in (0, 4):
        one = solve_balanced(razin_cohen_2x2(1), W0[i : i + 1], 2, t_max=t_max[i : i + 1], **kw)
        assert [n for n in names if not same(getattr(one, n)[0], getattr(full, n)[i])] == []
    perm = torch.tensor([4, 2, 0, 3, 1])
    rev = solve_balanced(razin_cohen_2x2(B), W0[perm], 2, t_max=t_max[perm], **kw)
    assert [n for n in names if not same(getattr(rev, n), getattr(full, n)[perm])] == []


def test_switch_reasons_and_honest_failures() -> None:
    """Switch by the det margin (switch_ratio = 0); an impossible certification margin gives UNRESOLVED with a
    sentence saying so (never a sign decided by rounding); a closing gap stops the spectral phase."""
    gen = torch.Generator().manual_seed(7)
    W0 = with_det_sign(1e-3 * torch.randn(2, 2, 2, generator=gen, dtype=F64), 1)
    s = solve_balanced(razin_cohen_2x2(2), W0, 2, loss_target=0.05, t_max=1e5, switch_ratio=0.0)
    assert s.ok.all() and s.switched.all() and s.switch_reason == ["det", "det"]
    assert all("det W_j neared resolution" in m for m in s.messages())
    assert (s.switch_balancedness_defect < 1e-9).all()
    # switching (safety 10.001) where certification needs safety 10: the sign cannot be certified
    u = solve_balanced(razin_cohen_2x2(2), W0, 2, loss_target=1e-3, t_max=1e5, switch_ratio=0.0,
                       switch_safety=10.001)
    assert (u.status == int(Status.UNRESOLVED)).all() and not u.switched.any()
    assert u.unresolved_reason == ["uncertified", "uncertified"]
    assert all("could not be certified" in m for m in u.messages())
    # target W* = I: σ_min grows back to σ_max, so the gap closes and the spectral phase must stop
    from implreg.matrix.problems import completion

    prob = completion(torch.ones(2, 2, dtype=F64), torch.eye(2, dtype=F64))
    g = solve_balanced(prob, torch.diag(torch.tensor([1.0, 0.1], dtype=F64)).unsqueeze(0), 2, t_max=50.0,
                       switch_ratio=0.5)
    assert g.statuses() == [Status.UNRESOLVED] and g.unresolved_reason == ["gap"]
    assert "ill-conditioned" in g.messages()[0]
    with pytest.raises(NumericalError, match="gap limit"):
        g.raise_on_failure()


# ------------------------------------------------------------------------------------------- bad input


def test_refuses_unbalanced_factors_naming_the_defect() -> None:
    gen = torch.Generator().manual_seed(0)
    fs = tuple(0.1 * torch.randn(2, 2, 2, generator=gen, dtype=F64) for _ in range(2))
    with pytest.raises(InvalidInputError, match=r"not balanced.*defect.*instances \[0, 1\]"):
        solve_balanced(razin_cohen_2x2(2), fs, 2, t_max=1.0)


@pytest.mark.parametrize(
    ("args", "kwargs", "pattern"),
    [
        ((torch.zeros(1, 2, 3, dtype=F64), 2), {}, "square"),
        ((None, 3), {}, "depth is 3 but 2 factors"),
        ((torch.eye(2, dtype=F64).unsqueeze(0), 1), {}, "depth ≥ 2"),
        ((torch.eye(2, dtype=F64).unsqueeze(0), 2), {"switch_ratio": 1.5}, "switch_ratio"),
        ((torch.eye(2, dtype=F64).unsqueeze(0), 2), {"method": "euler"}, "method"),
        ((torch.eye(2, dtype=F64).unsqueeze(0), 2), {"t_max": math.inf}, "finite t_max or a loss_target"),
    ],
)
def test_bad_input_clear_errors(args, kwargs, pattern) -> None:
    W0_or_factors, depth = args
    if W0_or_factors is None:
        W0_or_factors = balanced_init(torch.eye(2, dtype=F64).unsqueeze(0), 2)
    kwargs = {"t_max": 1.0, **kwargs}
    with pytest.raises(InvalidInputError, match=pattern):
        solve_balanced(razin_cohen_2x2(1), W0_or_factors, depth, **kwargs)


def test_non_square_factors_refused() -> None:
    fs = (torch.ones(1, 3, 2, dtype=F64), torch.ones(1, 2, 3, dtype=F64))
    with pytest.raises(InvalidInputError, match="square"):
        solve_balanced(razin_cohen_2x2(1), fs, 2, t_max=1.0)


def test_end_to_end_of_state_roundtrip() -> None:
    """from the factors' spectral state, W is reproduced and σ_min carries the factors' determinants."""
    gen = torch.Generator().manual_seed(2)
    A = torch.randn(4, 2, 2, generator=gen, dtype=F64)
    fs = exactly_balanced(A, 3)
    from implreg.matrix.flow.spectral import from_factors

    lay, y, sign = from_factors(fs)
    W = end_to_end(fs)
    assert (to_end_to_end(lay, y) - W).abs().max() < 1e-13 * (1 + W.abs().max())
    assert torch.equal(sign, torch.sign(torch.linalg.det(W)))
