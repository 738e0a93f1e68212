"""Tests of implreg.matrix.factorization against torch.autograd, numpy, exact rationals and distributional facts.

Tolerances come from the standard rounding bound for products and sums (Higham, *Accuracy and Stability of
Numerical Algorithms*, 2002, §3): a computed product of matrices satisfies |fl(A_1⋯A_k) − A_1⋯A_k| ≤
γ_n·|A_1|⋯|A_k| entrywise, with n the total length of the inner products along the chain and
γ_n = n·u/(1 − n·u).  Two different evaluations of the same quantity (the module's and autograd's or
numpy's) differ by at most twice that.  We compute the |A_1|⋯|A_k| envelopes explicitly per instance, so the
tolerances are neither guessed nor fixed: they scale with the data exactly as rounding does.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from implreg_test_helpers import exact_det
from scipy import stats

from implreg.errors import InvalidInputError
from implreg.matrix.factorization import (
    FactorLayout,
    balanced_init,
    balancedness_defect,
    check_factors,
    end_to_end,
    end_to_end_velocity,
    factor_grads,
    gaussian_init,
    haar_orthogonal,
    loss,
    negate_row,
    with_det_sign,
)
from implreg.matrix.problems import Problem, completion, sensing

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None)
U64 = float(np.finfo(np.float64).eps)


def gamma(n: int, u: float = U64) -> float:
    """γ_n = n·u / (1 − n·u) (Higham 2002, Lemma 3.1)."""
    return n * u / (1 - n * u)


def haar_np(rng: np.random.Generator, n: int) -> np.ndarray:
    """Haar orthogonal n×n in numpy (Mezzadri 2007: QR of a Gaussian, columns scaled by sign diag R)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


# ---------------------------------------------------------------------------------------------- strategies


@st.composite
def factor_problems(draw, max_depth: int = 4, max_d: int = 4, max_batch: int = 3):
    """(problem, numpy factors [W_1..W_N] each (B, d_j, d_{j−1}), kind) with non-square shapes and widths."""
    N = draw(st.integers(1, max_depth), label="depth")
    dims = draw(st.lists(st.integers(1, max_d), min_size=N + 1, max_size=N + 1), label="dims")
    B = draw(st.integers(1, max_batch))
    kind = draw(st.sampled_from(["completion", "sensing"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = 2.0 ** draw(st.integers(-3, 2))
    factors = [scale * rng.standard_normal((B, dims[j + 1], dims[j])) for j in range(N)]
    d, e = dims[-1], dims[0]
    if kind == "completion":
        mask = (rng.random((B, d, e)) < 0.7).astype(np.float64)
        P = completion(torch.from_numpy(mask), torch.from_numpy(rng.standard_normal((B, d, e))))
    else:
        m = int(rng.integers(1, 5))
        P = sensing(torch.from_numpy(rng.standard_normal((B, m, d, e))), torch.from_numpy(rng.standard_normal((B, m))))
    return P, factors, kind


def abs_chain(mats: list[np.ndarray], d: int) -> np.ndarray:
    """|A_k|⋯|A_1| for a list [A_1, …, A_k] of (B, ·, ·) arrays (identity of size d when empty)."""
    if not mats:
        return np.broadcast_to(np.eye(d), (1, d, d))
    out = np.abs(mats[0])
    for M in mats[1:]:
        out = np.abs(M) @ out
    return out


def grad_envelope(P: Problem, factors: list[np.ndarray]) -> list[np.ndarray]:
    """Per factor the rounding envelope (|W_N|⋯|W_{j+1}|)ᵀ |∇ℓ|_env (|W_{j−1}|⋯|W_1|)ᵀ."""
    Wabs = abs_chain(factors, 0)
    if P.is_completion:
        G_env = P.mask.numpy() * (Wabs + np.abs(P.target.numpy()))
    else:
        A = P.A.numpy()
        r_env = np.einsum("bkij,bij->bk", np.abs(A), Wabs) + np.abs(P.y.numpy())
        G_env = np.einsum("bk,bkij->bij", r_env, np.abs(A))
    N = len(factors)
    out = []
    for j in range(N):  # 0-based: factor W_{j+1}
        left = abs_chain(factors[j + 1:], G_env.shape[1])  # |W_N|⋯|W_{j+2}|
        right = abs_chain(factors[:j], factors[0].shape[2])  # |W_j|⋯|W_1|
        out.append(np.swapaxes(left, -1, -2) @ G_env @ np.swapaxes(right, -1, -2))
    return out


# ---------------------------------------------------------------------------------------------- gradients


@SETTINGS
@given(case=factor_problems())
def test_factor_grads_match_autograd(case) -> None:
    """∂ℓ/∂W_j in closed form (Arora et al. 2018, eq. 4) equals torch.autograd on ℓ(W_N⋯W_1), depths 1–4."""
    P, factors, _ = case
    Ws = [torch.from_numpy(W).requires_grad_(True) for W in factors]
    value = P.loss(end_to_end(Ws))
    value.sum().backward()
    got_value, grads = factor_grads(P, [torch.from_numpy(W) for W in factors])
    N = len(factors)
    dims = [factors[0].shape[2]] + [W.shape[1] for W in factors]
    m = 1 if P.is_completion else P.A.shape[1]
    # Total inner-product length along the chain: forward product (≤ N·max d), residual (d·d' for sensing,
    # plus one subtraction), ∑_k r_k A_k (m terms), backward products (≤ N·max d).  Two evaluations: ×2.
    n = 2 * N * max(dims) + dims[0] * dims[-1] + m + 4
    for j, (G, env) in enumerate(zip(grads, grad_envelope(P, factors), strict=True)):
        assert G.shape == factors[j].shape
        err = np.abs(G.numpy() - Ws[j].grad.numpy())
        assert np.all(err <= 2 * gamma(n) * env + 1e-300), f"W_{j + 1}: max err {err.max()}, env {env.max()}"
    # the loss value: ½Σr² of residuals whose envelope is bounded as above
    r_env = (P.mask.numpy() * (abs_chain(factors, 0) + np.abs(P.target.numpy()))).reshape(len(factors[0]), -1) \
        if P.is_completion else (np.einsum("bkij,bij->bk", np.abs(P.A.numpy()), abs_chain(factors, 0))
                                 + np.abs(P.y.numpy()))
    tol = 2 * gamma(n) * np.sum(r_env * r_env, axis=-1) * 2
    assert np.all(np.abs(got_value.numpy() - value.detach().numpy()) <= tol)


@SETTINGS
@given(case=factor_problems())
def test_end_to_end_and_loss_match_numpy(case) -> None:
    P, factors, _ = case
    W = end_to_end([torch.from_numpy(F) for F in factors])
    ref = factors[0]
    for F in factors[1:]:
        ref = F @ ref
    n = sum(F.shape[2] for F in factors)  # total inner-product length of the chain
    assert np.all(np.abs(W.numpy() - ref) <= 2 * gamma(n) * abs_chain(factors, 0) + 1e-300)
    # loss(problem, factors) is the problem's loss of that product (same tensor ops, so bitwise)
    assert torch.equal(loss(P, [torch.from_numpy(F) for F in factors]), P.loss(W))


@SETTINGS
@given(case=factor_problems(max_depth=3))
def test_factor_grads_match_central_differences(case) -> None:
    """Directional derivative check: ⟨∇_θ ℓ, δ⟩ equals (ℓ(θ + hδ) − ℓ(θ − hδ)) / 2h up to O(h²) (independent of
    any gradient code).  Central difference with h = 1e-4 in float64: truncation ≈ h²·|ℓ'''|/6 and rounding
    ≈ u·|ℓ|/h; we allow 1e-5 relative to the scale Σ|G_j|·|δ_j| + ℓ, ~100× both terms for these sizes."""
    P, factors, _ = case
    rng = np.random.default_rng(0)
    Ws = [torch.from_numpy(F) for F in factors]
    deltas = [torch.from_numpy(rng.standard_normal(F.shape)) for F in factors]
    value, grads = factor_grads(P, Ws)
    h = 1e-4
    plus = loss(P, [W + h * D for W, D in zip(Ws, deltas, strict=True)])
    minus = loss(P, [W - h * D for W, D in zip(Ws, deltas, strict=True)])
    fd = (plus - minus) / (2 * h)
    an = sum((G * D).flatten(1).sum(-1) for G, D in zip(grads, deltas, strict=True))
    scale = sum((G.abs() * D.abs()).flatten(1).sum(-1) for G, D in zip(grads, deltas, strict=True)) + value + 1
    assert torch.all((fd - an).abs() <= 1e-5 * scale)


# ---------------------------------------------------------------------------------------------- end-to-end dynamics


def chain_rule_velocity(P: Problem, factors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Ẇ = Σ_j (W_N⋯W_{j+1}) Ẇ_j (W_{j−1}⋯W_1) with Ẇ_j = −∂ℓ/∂W_j from autograd (independent reference)."""
    Ws = [F.clone().requires_grad_(True) for F in factors]
    P.loss(end_to_end(Ws)).sum().backward()
    B, d, e = Ws[-1].shape[0], Ws[-1].shape[1], Ws[0].shape[2]
    out = torch.zeros(B, d, e, dtype=torch.float64)
    for j in range(len(Ws)):
        left = torch.eye(d, dtype=torch.float64).expand(B, d, d)
        for k in range(len(Ws) - 1, j, -1):
            left = left @ factors[k]
        right = torch.eye(e, dtype=torch.float64).expand(B, e, e)
        for k in range(j):
            right = factors[k] @ right
        out = out - left @ Ws[j].grad @ right
    return out


def well_conditioned(rng: np.random.Generator, B: int, d: int, e: int) -> torch.Tensor:
    """U diag(σ) Vᵀ with Haar U, V and σ ∈ [0.5, 2] (condition number ≤ 4)."""
    k = min(d, e)
    out = np.empty((B, d, e))
    for b in range(B):
        out[b] = (haar_np(rng, d)[:, :k] * rng.uniform(0.5, 2.0, k)) @ haar_np(rng, e)[:, :k].T
    return torch.from_numpy(out)


# The formula raises the PSD matrices WWᵀ, WᵀW to fractional powers through eigh.  For a well-conditioned
# square W the eigenvalues are ≥ 0.25, eigh's absolute eigenvalue error is ≲ n·u·‖M‖ and the fractional
# power's relative error is ≲ n·u·κ(M) ≤ 4·2.2e-16·16 ≈ 1.4e-14 per term, times N ≤ 5 terms: 1e-12 relative
# leaves a ≥ 10× margin (measured: ≤ 3e-15).
VELOCITY_RTOL = 1e-12


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("shape", [(2, 2, 2), (3, 3, 5), (1, 1, 2)])
def test_end_to_end_velocity_matches_chain_rule_square(depth: int, shape: tuple[int, int, int]) -> None:
    """Arora et al. (2018) Theorem 1 on balanced factors of a full-rank square W (widths ≥ d)."""
    d, _, width = shape
    rng = np.random.default_rng(depth * 10 + d)
    W0 = well_conditioned(rng, 3, d, d)
    rots = [haar_orthogonal(3, width, generator=torch.Generator().manual_seed(j)) for j in range(depth - 1)]
    factors = balanced_init(W0, depth, width=width, rotations=rots if depth > 1 else None)
    mask = torch.from_numpy((rng.random((3, d, d)) < 0.7) * 1.0)
    P = completion(mask, torch.from_numpy(rng.standard_normal((3, d, d))))
    ref = chain_rule_velocity(P, factors)
    got = end_to_end_velocity(P, end_to_end(factors), depth)
    scale = ref.abs().flatten(1).amax(-1).clamp(min=1e-300)
    assert torch.all((got - ref).abs().flatten(1).amax(-1) <= VELOCITY_RTOL * scale)


@pytest.mark.parametrize("depth", [3, 4, 5])
def test_end_to_end_velocity_matches_chain_rule_non_square(depth: int) -> None:
    """Same check for W of shape 2×3 and 3×1 (rank-deficient Gram matrices).  Measured relative errors: 7e-7
    (N = 3), 2.5e-5 (N = 4), 8e-5 (N = 5); a correct implementation (eigenvalues below n·u·λ_max set to 0)
    has the same O(1e-15) error as the square case."""
    rng = np.random.default_rng(depth)
    for d, e in [(2, 3), (3, 1)]:
        W0 = well_conditioned(rng, 2, d, e)
        factors = balanced_init(W0, depth, width=max(d, e))
        P = completion(torch.ones(2, d, e, dtype=torch.float64), torch.from_numpy(rng.standard_normal((2, d, e))))
        ref = chain_rule_velocity(P, factors)
        got = end_to_end_velocity(P, end_to_end(factors), depth)
        scale = ref.abs().flatten(1).amax(-1)
        assert torch.all((got - ref).abs().flatten(1).amax(-1) <= VELOCITY_RTOL * scale), (d, e)


# ---------------------------------------------------------------------------------------------- balanced init


@st.composite
def balanced_cases(draw):
    """(W0 (B, d, d') by construction U diag(σ) Vᵀ, possibly rank-deficient; depth 1–5; width ≥ min(d, d');
    rotations: None or Haar)."""
    d, e = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    k = min(d, e)
    B = draw(st.integers(1, 3))
    depth = draw(st.integers(1, 5))
    width = draw(st.integers(k, k + 2))
    rank = draw(st.integers(max(0, k - 1), k))  # rank k or k − 1 (then width > rank)
    log2_scale = draw(st.integers(-12, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    W0 = np.empty((B, d, e))
    for b in range(B):
        s = np.where(np.arange(k) < rank, rng.uniform(0.1, 3.0, k), 0.0) * 2.0**log2_scale
        W0[b] = (haar_np(rng, d)[:, :k] * s) @ haar_np(rng, e)[:, :k].T
    use_rot = draw(st.booleans())
    rots = None
    if use_rot and depth > 1:
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        rots = [haar_orthogonal(B, width, generator=g) for _ in range(depth - 1)]
    return torch.from_numpy(W0), depth, width, rots


@SETTINGS
@given(case=balanced_cases())
def test_balanced_init_product_and_balancedness(case) -> None:
    W0, depth, width, rots = case
    factors = balanced_init(W0, depth, width=width, rotations=rots)
    B, d, e = W0.shape
    assert len(factors) == depth
    expected_dims = [e] + [width] * (depth - 1) + [d] if depth > 1 else [e, d]
    assert [tuple(F.shape) for F in factors] == [(B, expected_dims[j + 1], expected_dims[j]) for j in range(depth)]
    Fs = [F.numpy() for F in factors]
    prod = Fs[0]
    for F in Fs[1:]:
        prod = F @ prod
    norm = np.linalg.norm(W0.numpy(), 2, axis=(1, 2))  # ‖W0‖₂ per instance
    h = max(width, d, e)
    # ‖W0 − U S Vᵀ‖ ≤ p(n)·u·‖W0‖ (LAPACK SVD is backward stable; p(n) ≈ 10·n is generous for n ≤ 4);
    # σ^{1/N} = exp(log σ / N): ≤ 3u relative per factor, 3N·u in all; forming N factors (each up to two
    # products with the rotations) and the product chain: γ_{3N·h}·Π‖W_j‖₂ = γ_{3N·h}·‖W0‖₂ (balanced factors
    # have ‖W_j‖₂ = σ_max^{1/N}).  Entrywise ≤ spectral norm, so this bounds every entry.
    tol = (10 * h + 3 * depth + 3 * depth * h) * U64 * norm + 1e-300
    err = np.abs(prod - W0.numpy()).reshape(B, -1).max(-1)
    assert np.all(err <= tol), (err, tol)
    # Balancedness W_{j+1}ᵀW_{j+1} = W_j W_jᵀ computed in numpy (independent of balancedness_defect):
    # both sides ≈ R diag(s²) Rᵀ with ‖·‖₂ = σ_max^{2/N}; each side's rounding is ≲ γ_{3h}·σ_max^{2/N}
    # per entry (the σ^{1/N} error enters both sides alike), Frobenius over h² entries: ×h.
    for Fa, Fb in itertools.pairwise(Fs):
        D = np.swapaxes(Fb, -1, -2) @ Fb - Fa @ np.swapaxes(Fa, -1, -2)
        dtol = 2 * h * (gamma(3 * h) + 10 * h * U64) * norm ** (2 / depth) + 1e-300
        assert np.all(np.linalg.norm(D, "fro", axis=(1, 2)) <= dtol)
    defect = balancedness_defect(factors).numpy()
    assert np.all(defect <= 2 * h * (gamma(3 * h) + 10 * h * U64) * norm ** (2 / depth) + 1e-300)


def test_balancedness_defect_matches_numpy_on_unbalanced_factors() -> None:
    rng = np.random.default_rng(1)
    Fs = [rng.standard_normal((3, 2, 4)), rng.standard_normal((3, 5, 2)), rng.standard_normal((3, 3, 5))]
    ref = np.max([np.linalg.norm(np.swapaxes(b, -1, -2) @ b - a @ np.swapaxes(a, -1, -2), "fro", axis=(1, 2))
                  for a, b in itertools.pairwise(Fs)], axis=0)
    got = balancedness_defect([torch.from_numpy(F) for F in Fs]).numpy()
    # Gram matrices of 2–5-vectors and a Frobenius norm: ≤ γ_{10} relative to the Gram envelope (~10): 1e-13.
    np.testing.assert_allclose(got, ref, rtol=1e-13)
    assert np.all(got > 0.1)
    assert torch.equal(balancedness_defect([torch.from_numpy(Fs[0])]), torch.zeros(3, dtype=torch.float64))


def test_balanced_init_rejects_bad_input() -> None:
    W0 = torch.ones(1, 2, 3, dtype=torch.float64)
    with pytest.raises(InvalidInputError, match="depth"):
        balanced_init(W0, 0)
    with pytest.raises(InvalidInputError, match="width"):
        balanced_init(W0, 2, width=1)
    with pytest.raises(InvalidInputError, match="rotations"):
        balanced_init(W0, 3, rotations=[torch.eye(2, dtype=torch.float64).expand(1, 2, 2)])
    with pytest.raises(InvalidInputError, match="NaN"):
        balanced_init(torch.full((1, 2, 2), float("nan"), dtype=torch.float64), 2)
    with pytest.raises(InvalidInputError, match="shape"):
        balanced_init(torch.ones(2, 2, dtype=torch.float64), 2)


# ---------------------------------------------------------------------------------------------- det sign


@SETTINGS
@given(d=st.integers(1, 4), B=st.integers(1, 4), sign=st.sampled_from([1, -1]), seed=st.integers(0, 2**32 - 1))
def test_with_det_sign_gives_the_requested_sign(d: int, B: int, sign: int, seed: int) -> None:
    W0 = torch.from_numpy(np.random.default_rng(seed).standard_normal((B, d, d)))
    W = with_det_sign(W0, sign)
    for b in range(B):
        assert np.sign(float(exact_det(W[b].tolist()))) == sign
        assert torch.equal(W[b].abs(), W0[b].abs())  # only signs change
        assert torch.equal(W[b, 1:], W0[b, 1:])  # and only in the first row


def test_with_det_sign_and_negate_row_errors_and_flags() -> None:
    with pytest.raises(InvalidInputError, match="singular"):
        with_det_sign(torch.zeros(1, 2, 2, dtype=torch.float64), 1)
    with pytest.raises(InvalidInputError, match="square"):
        with_det_sign(torch.ones(1, 2, 3, dtype=torch.float64), 1)
    with pytest.raises(InvalidInputError, match=r"\+1 or −1"):
        with_det_sign(torch.eye(2, dtype=torch.float64).unsqueeze(0), 0)
    W = torch.arange(12, dtype=torch.float64).reshape(3, 2, 2) + 1
    out = negate_row(W, torch.tensor([True, False, True]), row=1)
    assert torch.equal(out[1], W[1]) and torch.equal(out[0, 1], -W[0, 1]) and torch.equal(out[0, 0], W[0, 0])
    assert torch.equal(negate_row(W), torch.stack([torch.stack([-w[0], w[1]]) for w in W]))


# ---------------------------------------------------------------------------------------------- random inits


def test_gaussian_init_shapes_and_scale() -> None:
    dims, scale, B = (5, 3, 4, 2), 0.37, 400
    factors = gaussian_init(B, dims, scale, generator=torch.Generator().manual_seed(0))
    assert [tuple(F.shape) for F in factors] == [(B, 3, 5), (B, 4, 3), (B, 2, 4)]
    x = torch.cat([F.flatten() for F in factors]).numpy()
    n = x.size  # 400 · 35 = 14000 i.i.d. N(0, scale²) entries
    # sample std has relative standard error 1/√(2n) ≈ 0.6%; mean has standard error scale/√n: 5σ bounds.
    assert abs(x.std() / scale - 1) <= 5 / math.sqrt(2 * n)
    assert abs(x.mean()) <= 5 * scale / math.sqrt(n)
    # Normality (fixed seed, so deterministic): KS against N(0, scale²); 1e-3 only flags a broken sampler.
    assert stats.kstest(x / scale, "norm").pvalue > 1e-3
    again = gaussian_init(B, dims, scale, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(factors, again, strict=True))
    f32 = gaussian_init(2, (2, 2), 1.0, dtype=torch.float32)
    assert f32[0].dtype == torch.float32


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan")])
def test_gaussian_init_rejects_bad_scale(scale: float) -> None:
    with pytest.raises(InvalidInputError, match="scale"):
        gaussian_init(1, (2, 2), scale)


def test_gaussian_init_rejects_bad_dims() -> None:
    with pytest.raises(InvalidInputError, match="dims"):
        gaussian_init(1, (2, 0, 2), 1.0)
    with pytest.raises(InvalidInputError, match="dims"):
        gaussian_init(1, (2,), 1.0)


@pytest.mark.parametrize("n", [1, 2, 3, 6])
def test_haar_orthogonal_is_orthogonal(n: int) -> None:
    Q = haar_orthogonal(50, n, generator=torch.Generator().manual_seed(n))
    eye = torch.eye(n, dtype=torch.float64)
    # Householder QR: ‖QᵀQ − I‖ ≤ c·n·u with c small (Higham 2002, Thm 19.4); 10·n·u per entry.
    assert torch.all((Q.transpose(-1, -2) @ Q - eye).abs() <= 10 * n * U64)
    assert torch.all((Q @ Q.transpose(-1, -2) - eye).abs() <= 10 * n * U64)


def test_haar_orthogonal_is_haar_distributed() -> None:
    """Under Haar measure on O(3) the first column is uniform on S², so Q₁₁ ~ Uniform(−1, 1) (Archimedes);
    on O(2) the rotation angle is uniform and det = ±1 equally often.  A QR without the sign fix fails both
    (LAPACK makes R₁₁ < 0 when Z₁₁ > 0, so Q₁₁ ≤ 0 always).  Fixed seeds: deterministic; p > 1e-3."""
    Q3 = haar_orthogonal(4000, 3, generator=torch.Generator().manual_seed(1))
    assert stats.kstest(Q3[:, 0, 0].numpy(), stats.uniform(loc=-1, scale=2).cdf).pvalue > 1e-3
    Q2 = haar_orthogonal(4000, 2, generator=torch.Generator().manual_seed(2))
    angle = torch.atan2(Q2[:, 1, 0], Q2[:, 0, 0]).numpy()
    assert stats.kstest(angle, stats.uniform(loc=-math.pi, scale=2 * math.pi).cdf).pvalue > 1e-3
    n_pos = int((torch.linalg.det(Q2) > 0).sum())
    assert stats.binomtest(n_pos, 4000, 0.5).pvalue > 1e-3


# ---------------------------------------------------------------------------------------------- layout


@given(dims=st.lists(st.integers(1, 5), min_size=2, max_size=6), B=st.integers(1, 3))
@SETTINGS
def test_layout_pack_unpack_round_trip(dims: list[int], B: int) -> None:
    factors = gaussian_init(B, dims, 1.0, generator=torch.Generator().manual_seed(sum(dims)))
    layout = FactorLayout.of(factors)
    assert layout.dims == tuple(dims) and layout.depth == len(dims) - 1
    assert layout.size == sum(dims[j] * dims[j + 1] for j in range(len(dims) - 1))
    y = layout.pack(factors)
    assert y.shape == (B, layout.size)
    back = layout.unpack(y)
    assert all(torch.equal(a, b) for a, b in zip(factors, back, strict=True))
    # unpack works on extra leading dimensions too (saved states (B, T, P))
    yy = torch.stack([y, 2 * y], dim=1)
    assert torch.equal(layout.unpack(yy)[-1][:, 1], 2 * factors[-1])


def test_layout_and_check_factors_errors() -> None:
    with pytest.raises(InvalidInputError, match="dims"):
        FactorLayout((3,))
    with pytest.raises(InvalidInputError, match="dims"):
        FactorLayout((3, 0, 2))
    z = torch.zeros
    with pytest.raises(InvalidInputError, match="at least one"):
        check_factors([])
    with pytest.raises(InvalidInputError, match=r"W_1 must be \(B, rows, cols\)"):
        check_factors([z(2, 2)])
    with pytest.raises(InvalidInputError, match="W_2 has batch 3"):
        check_factors([z(2, 2, 2), z(3, 2, 2)])
    with pytest.raises(InvalidInputError, match="W_2 has 3 columns but W_1 has 2 rows"):
        check_factors([z(1, 2, 2), z(1, 2, 3)])
    with pytest.raises(InvalidInputError, match="W_2 has NaN"):
        check_factors([z(1, 2, 2), torch.full((1, 2, 2), float("inf"))])
