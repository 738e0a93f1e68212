"""Tests of implreg.matrix.flow.descend (fixed-step gradient descent) against hand-written numpy descent.

Reference: W_j ← W_j − η·∂ℓ/∂W_j with the gradient written out in numpy (the closed form checked against
autograd in test_factorization).  Tolerances: one step differs from the reference only by the rounding of the
gradient chain, |δG_j| ≤ 2γ_n·envelope (Higham 2002, §3), times η; over k steps of a map with Lipschitz
constant ≤ 1 + η·L those differences add up at most k-fold (we use the measured-free bound k·(1 + ηL)^k·δ).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from implreg.errors import InvalidInputError
from implreg.matrix.factorization import balanced_init, gaussian_init
from implreg.matrix.flow import Status, descend
from implreg.matrix.problems import Problem, completion, razin_cohen_2x2, sensing

f64 = torch.float64
U64 = float(np.finfo(np.float64).eps)
SETTINGS = settings(max_examples=15, deadline=None, derandomize=True, database=None)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                  reason="no CUDA device available"))]


def np_loss_grads(P: Problem, Ws: list[np.ndarray]):
    """(loss (B,), [∂ℓ/∂W_j]) in numpy, batched: (W_N⋯W_{j+1})ᵀ ∇ℓ(W) (W_{j−1}⋯W_1)ᵀ."""
    W = Ws[0]
    for M in Ws[1:]:
        W = M @ W
    if P.is_completion:
        r = P.mask.numpy() * (W - P.target.numpy())
        G = r
        loss = 0.5 * (r * r).reshape(len(r), -1).sum(-1)
    else:
        A = P.A.numpy()
        r = np.einsum("bkij,bij->bk", A, W) - P.y.numpy()
        G = np.einsum("bk,bkij->bij", r, A)
        loss = 0.5 * (r * r).sum(-1)
    grads = []
    B, d, e = W.shape
    for j in range(len(Ws)):
        left = np.broadcast_to(np.eye(d), (B, d, d))
        for M in Ws[:j:-1]:
            left = left @ M
        right = np.broadcast_to(np.eye(e), (B, e, e))
        for M in Ws[:j]:
            right = M @ right
        grads.append(np.swapaxes(left, -1, -2) @ G @ np.swapaxes(right, -1, -2))
    return loss, grads


def np_descend(P: Problem, Ws: list[np.ndarray], lr: float, k: int):
    """k steps of numpy gradient descent; returns factors and the loss before each step (k + 1 values)."""
    losses = []
    for _ in range(k):
        loss, grads = np_loss_grads(P, Ws)
        losses.append(loss)
        Ws = [W - lr * G for W, G in zip(Ws, grads, strict=True)]
    losses.append(np_loss_grads(P, Ws)[0])
    return Ws, np.stack(losses, axis=1)


@st.composite
def descent_cases(draw):
    depth = draw(st.integers(1, 4))
    dims = draw(st.lists(st.integers(1, 3), min_size=depth + 1, max_size=depth + 1))
    B = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    d, e = dims[-1], dims[0]
    if draw(st.booleans()):
        mask = torch.from_numpy((rng.random((B, d, e)) < 0.7) * 1.0)
        P = completion(mask, torch.from_numpy(rng.standard_normal((B, d, e))))
    else:
        m = int(rng.integers(1, 4))
        P = sensing(torch.from_numpy(rng.standard_normal((B, m, d, e))), torch.from_numpy(rng.standard_normal((B, m))))
    factors = [0.5 * rng.standard_normal((B, dims[j + 1], dims[j])) for j in range(depth)]
    return P, factors


def envelope_scale(P: Problem, Ws: list[np.ndarray]) -> float:
    """A scalar bound on the gradient-chain envelope: Π‖W_j‖_F·(Π‖W_j‖_F + ‖b‖)·‖A‖² (entrywise ≤ this)."""
    prod = math.prod(float(np.linalg.norm(W)) for W in Ws)
    others = max(1.0, max(float(np.linalg.norm(W)) for W in Ws)) ** len(Ws)
    if P.is_completion:
        return others * (prod + float(np.linalg.norm(P.target.numpy())))
    A = float(np.linalg.norm(P.A.numpy()))
    return others * A * (A * prod + float(np.linalg.norm(P.y.numpy())))


@SETTINGS
@given(case=descent_cases())
def test_one_step_is_w_minus_lr_grad(case) -> None:
    P, Ws = case
    lr = 0.05
    sol = descend(P, [torch.from_numpy(W) for W in Ws], lr=lr, max_iters=1)
    ref, _ = np_descend(P, Ws, lr, 1)
    assert sol.iterations.tolist() == [1] * len(Ws[0]) and sol.status.tolist() == [int(Status.MAX_STEPS)] * len(Ws[0])
    n = 2 * len(Ws) * 3 + 9 + 3 + 4  # chain length: 2N products of width ≤ 3, d·d' ≤ 9, m ≤ 3, slack
    tol = lr * 2 * n * U64 * envelope_scale(P, Ws) + 2 * U64 * max(float(np.abs(W).max()) for W in Ws)
    for got, want in zip(sol.factors, ref, strict=True):
        assert np.abs(got.numpy() - want).max() <= tol


@SETTINGS
@given(case=descent_cases())
def test_several_steps_and_loss_history(case) -> None:
    P, Ws = case
    lr, k = 0.02, 6
    sol = descend(P, [torch.from_numpy(W) for W in Ws], lr=lr, max_iters=k, record_every=2)
    ref, losses = np_descend(P, Ws, lr, k)
    # Step-map Lipschitz constant ≤ 1 + lr·L with L ≲ the envelope; per-step rounding δ as in the one-step test:
    # after k steps ≤ k·(1 + lr·L)^k·δ.
    env = envelope_scale(P, Ws)
    delta = lr * 2 * 40 * U64 * env + 2 * U64 * max(1.0, max(float(np.abs(W).max()) for W in Ws))
    tol = k * (1 + lr * env) ** k * delta
    for got, want in zip(sol.factors, ref, strict=True):
        assert np.abs(got.numpy() - want).max() <= tol
    # loss recorded at iterations 0, 2, 4, 6
    np.testing.assert_allclose(sol.loss_history.numpy(), losses[:, ::2], rtol=1e-10, atol=1e-12 * (1 + env * env))


def test_loss_target_stops_at_the_first_iterate_below() -> None:
    """Depth-1 completion descent contracts residuals by (1 − η) per step: ℓ_k = ℓ0(1 − η)^{2k}, so the first k
    with ℓ_k ≤ ε is ⌈ln(ε/ℓ0) / (2 ln(1 − η))⌉.  ε sits midway (geometrically) between two iterates."""
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(4, 3, 3, generator=g) < 0.6).to(f64)
    mask[:, 0, 0] = 1
    P = completion(mask, torch.randn(4, 3, 3, generator=g, dtype=f64))
    W0 = torch.randn(4, 3, 3, generator=g, dtype=f64)
    L0 = P.loss(W0)
    lr = 0.1
    k_star = torch.tensor([7, 12, 3, 20])
    eps_each = L0 * (1 - lr) ** (2 * k_star - 1.0)  # between ℓ_{k*−1} and ℓ_{k*}
    for i in range(4):
        sol = descend(P.select([i]), (W0[i : i + 1],), lr=lr, max_iters=100, loss_target=float(eps_each[i]))
        assert sol.status.tolist() == [int(Status.REACHED_EVENT)] and sol.iterations.item() == int(k_star[i])
        assert sol.loss.item() <= eps_each[i].item()
    # already below the target: 0 iterations
    sol = descend(P, (W0,), lr=lr, max_iters=10, loss_target=float(L0.max()) * 2)
    assert sol.iterations.tolist() == [0] * 4 and torch.equal(sol.factors[0], W0)


def test_huge_learning_rate_diverges() -> None:
    P = razin_cohen_2x2(2)
    fac = balanced_init(torch.tensor([[[1.0, 0.5], [0.2, 1.0]], [[2.0, 0.0], [0.0, 1.0]]], dtype=f64), 3)
    sol = descend(P, fac, lr=50.0, max_iters=1000)
    assert sol.status.tolist() == [int(Status.DIVERGED)] * 2
    assert torch.all(sol.iterations < 1000)
    assert Status.DIVERGED.message.startswith("diverged")


@pytest.mark.parametrize("device", DEVICES)
def test_float32_descent_tracks_float64(device: str) -> None:
    """float32 descent on a contracting depth-2 problem: each step adds ≈ eps₃₂·|W| rounding that the
    contraction keeps bounded, so |W₃₂ − W₆₄| ≲ k·eps₃₂·max|W|·c; c = 10 covers the gradient chain."""
    fac = gaussian_init(3, (3, 4, 3), 0.5, generator=torch.Generator().manual_seed(1))
    P = completion(torch.ones(3, 3, 3, dtype=f64), torch.randn(3, 3, 3, dtype=f64,
                                                             generator=torch.Generator().manual_seed(2)))
    k = 200
    s64 = descend(P, fac, lr=0.05, max_iters=k)
    s32 = descend(P, fac, lr=0.05, max_iters=k, dtype=torch.float32, device=device)
    assert s32.y.dtype == torch.float32 and s32.y.device.type == device
    eps32 = float(torch.finfo(torch.float32).eps)
    wmax = float(s64.y.abs().max())
    assert float((s32.y.cpu().double() - s64.y).abs().max()) <= 10 * k * eps32 * wmax
    assert torch.all(s32.loss.cpu() < P.loss(torch.zeros(3, 3, 3, dtype=f64)))  # it did learn


# ---------------------------------------------------------------------------------------------- batch independence


def descent_pool():
    g = torch.Generator().manual_seed(7)
    B = 6
    mask = (torch.rand(B, 2, 3, generator=g) < 0.7).to(f64)
    P = completion(mask, torch.randn(B, 2, 3, generator=g, dtype=f64))
    fac = gaussian_init(B, (3, 3, 2, 2), 0.7, generator=g)
    fac = tuple(f.clone() for f in fac)
    fac[0][5] *= 40.0  # instance 5 diverges at lr 0.05
    for f in fac:
        f[4] *= 0.01  # instance 4 starts near the saddle at 0: still there after 60 iterations (MAX_STEPS)
    return P, fac


POOL = descent_pool()
_SOLO: dict = {}


def pool_descend(rows: list[int]):
    P, fac = POOL
    i = torch.tensor(rows)
    return descend(P.select(i), tuple(f[i] for f in fac), lr=0.05, max_iters=60, loss_target=0.05, record_every=7)


def solo(i: int):
    if i not in _SOLO:
        _SOLO[i] = pool_descend([i])
    return _SOLO[i]


def test_descent_pool_covers_every_ending() -> None:
    ends = {int(solo(i).status[0]) for i in range(6)}
    assert ends == {int(Status.REACHED_EVENT), int(Status.MAX_STEPS), int(Status.DIVERGED)}, ends


@SETTINGS
@given(rows=st.lists(st.integers(0, 5), min_size=1, max_size=8))
def test_descent_batch_independence_bit_identical(rows: list[int]) -> None:
    sol = pool_descend(rows)
    for pos, i in enumerate(rows):
        ref = solo(i)
        assert torch.equal(sol.y[pos], ref.y[0]) or (torch.isnan(sol.y[pos]).any() and torch.equal(
            torch.nan_to_num(sol.y[pos]), torch.nan_to_num(ref.y[0])))
        assert sol.iterations[pos] == ref.iterations[0] and sol.status[pos] == ref.status[0]
        h, hr = sol.loss_history[pos], ref.loss_history[0]
        assert torch.equal(torch.nan_to_num(h, nan=-1.0, posinf=-2.0), torch.nan_to_num(hr, nan=-1.0, posinf=-2.0))


# ---------------------------------------------------------------------------------------------- bad input


def test_descend_rejects_bad_input() -> None:
    P = razin_cohen_2x2()
    good = (torch.eye(2, dtype=f64).unsqueeze(0),)
    cases = [
        (P, good, dict(lr=0.0, max_iters=1), "learning rate must be positive"),
        (P, good, dict(lr=-0.1, max_iters=1), "learning rate must be positive"),
        (P, good, dict(lr=math.inf, max_iters=1), "learning rate must be positive and finite"),
        (P, good, dict(lr=float("nan"), max_iters=1), "learning rate"),
        (P, good, dict(lr=0.1, max_iters=-1), "max_iters"),
        (P, good, dict(lr=0.1, max_iters=1, loss_target=0.0), "loss_target must be > 0"),
        (P, (torch.full((1, 2, 2), float("nan"), dtype=f64),), dict(lr=0.1, max_iters=1), "W_1 has NaN/Inf"),
        (razin_cohen_2x2(3), (torch.ones(2, 2, 2, dtype=f64),), dict(lr=0.1, max_iters=1),
         "problem has batch 3.*batch 2"),
        (P, (torch.ones(1, 2, 2, dtype=f64), torch.ones(1, 2, 3, dtype=f64)), dict(lr=0.1, max_iters=1),
         "W_2 has 3 columns but W_1 has 2 rows"),
    ]
    for prob, fac, kw, msg in cases:
        with pytest.raises(InvalidInputError, match=msg):
            descend(prob, fac, **kw)


@pytest.mark.parametrize("shape", [(1, 1, 2), (1, 3, 3), (1, 2, 1)])
def test_descend_rejects_factors_of_the_wrong_shape(shape: tuple[int, int, int]) -> None:
    with pytest.raises(InvalidInputError, match="problem 'razin-cohen-2x2'"):
        descend(razin_cohen_2x2(), (torch.ones(*shape, dtype=f64),), lr=0.1, max_iters=2)
