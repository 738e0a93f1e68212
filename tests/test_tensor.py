"""Tests of implreg.matrix.tensor against explicit loops, autograd, known ranks and the certified rank brackets."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from implreg.errors import InvalidInputError
from implreg.matrix import tensor as T


def _factors(seed: int, dims: tuple[int, ...], R: int, n: int = 2, scale: float = 1.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(n, d, R, generator=g, dtype=torch.float64) for d in dims]


@pytest.mark.parametrize("dims", [(2, 3, 4), (2, 3, 2, 3)])
def test_cp_tensor_matches_loops(dims):
    fs = _factors(0, dims, 3)
    X = T.cp_tensor(*fs)
    for idx in itertools.product(range(2), *(range(d) for d in dims)):
        b, rest = idx[0], idx[1:]
        ref = sum(float(np.prod([float(F[b, i, r]) for F, i in zip(fs, rest, strict=True)])) for r in range(3))
        assert float(X[idx]) == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("dims", [(3, 3, 3), (3, 2, 3, 2)])
def test_cp_descent_step_matches_autograd_and_loss_decreases(dims):
    rng = np.random.default_rng(0)
    Y = torch.tensor(T.low_rank_tensor(rng, dims, 1)).unsqueeze(0)
    M = torch.tensor((rng.random(dims) < 0.6).astype(float)).unsqueeze(0)
    res = T.cp_descent(M, Y, rank=2, scale=0.3, lr=1e-3, loss_target=1e-30, max_steps=1,
                       generator=torch.Generator().manual_seed(1))
    fs = [F.requires_grad_() for F in _factors(1, dims, 2, n=1, scale=0.3)]
    loss = 0.5 * ((M * (T.cp_tensor(*fs) - Y)) ** 2).sum()
    loss.backward()
    for got, F in zip(res.factors, fs, strict=True):
        assert torch.allclose(got, (F - 1e-3 * F.grad).detach(), atol=1e-14)
    losses = [float(T.cp_descent(M, Y, rank=2, scale=0.3, lr=1e-2, loss_target=1e-30, max_steps=s,
                                 generator=torch.Generator().manual_seed(1)).loss[0]) for s in (1, 50, 500)]
    assert losses[0] > losses[1] > losses[2]


def test_cp_descent_stops_at_target_per_instance_with_per_instance_scales():
    rng = np.random.default_rng(2)
    Y = torch.tensor(np.stack([T.low_rank_tensor(rng, (3, 3, 3), 1) for _ in range(3)]))
    M = torch.ones_like(Y)
    kw = {"rank": 3, "scale": torch.tensor([0.1, 0.2, 0.05], dtype=torch.float64), "lr": 0.05, "loss_target": 1e-3,
          "generator": None}
    r = T.cp_descent(M, Y, max_steps=5_000, **{**kw, "generator": torch.Generator().manual_seed(0)})
    assert torch.equal(r.converged, r.loss <= 1e-3)
    assert r.converged.any()
    for i in range(3):
        if r.converged[i]:  # frozen at the step where it reached the target: more steps change nothing
            assert int(r.steps[i]) < 5_000
            again = {**kw, "generator": torch.Generator().manual_seed(0)}
            r2 = T.cp_descent(M, Y, max_steps=int(r.steps[i]) + 50, **again)
            assert torch.equal(r2.factors[0][i], r.factors[0][i])
        else:
            assert int(r.steps[i]) == 5_000


def test_cp_descent_divergence_is_a_clear_error():
    rng = np.random.default_rng(5)
    Y = torch.tensor(T.low_rank_tensor(rng, (3, 3, 3), 1)).unsqueeze(0)
    with pytest.raises(InvalidInputError, match="diverged"):
        T.cp_descent(torch.ones_like(Y), Y, rank=2, scale=1.0, lr=50.0, loss_target=1e-9, max_steps=200,
                     generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("shape", [(4, 4, 4), (3, 3, 3, 3)])
def test_rank_brackets_of_known_tensors(shape):
    rng = np.random.default_rng(3)
    assert T.rank_lower_bound(np.zeros(shape), 0.01) == 0 == T.numerical_rank(np.zeros(shape), 0.01)
    for k in (1, 2):
        X = T.low_rank_tensor(rng, shape, k)
        # a rank-k tensor: the lower bound never exceeds k, and ALS finds the witness at k
        assert T.rank_lower_bound(X, 1e-6) == k  # generic factors: every unfolding has rank exactly k
        assert T.rank_upper_bound(X, 1e-6, max_rank=4) == k
    G = rng.standard_normal(shape)
    half = len(shape) // 2  # the balanced unfolding of a generic tensor has full rank
    assert T.rank_lower_bound(G, 0.01) == min(int(np.prod(shape[:half])), int(np.prod(shape[half:])))
    with pytest.raises(InvalidInputError):
        T.numerical_rank(np.zeros((3, 3)), 0.1)
    with pytest.raises(InvalidInputError):
        T.rank_lower_bound(np.ones((2, 2, 2)), 1.5)
    with pytest.raises(InvalidInputError, match="non-finite"):
        T.rank_lower_bound(np.full((2, 2, 2), np.nan), 0.1)


def test_rank_lower_bound_is_exact_arithmetic_at_the_eps_boundary():
    # diag(1, δ) ⊗ e₁: the mode-1 unfolding has singular values 1, δ, so dist to rank 1 is exactly δ/‖T‖ relative.
    X = np.zeros((2, 2, 2))
    X[0, 0, 0], X[1, 1, 0] = 1.0, 2.0**-10
    rel = 2.0**-10 / np.sqrt(1 + 2.0**-20)
    assert T.rank_lower_bound(X, rel * (1 + 1e-9)) == 1  # rank 1 within ε: not excluded
    assert T.rank_lower_bound(X, rel * (1 - 1e-9)) == 2  # just outside: rank 1 excluded, rigorously


def test_rank_order_decides_only_disjoint_brackets():
    rng = np.random.default_rng(4)
    one, two = T.low_rank_tensor(rng, (4, 4, 4), 1), T.low_rank_tensor(rng, (4, 4, 4), 2)
    o = T.rank_order(one, two, 1e-6)
    assert (o.sign, o.first, o.second) == (-1, (1, 1), (2, None))
    assert T.rank_order(two, one, 1e-6).sign == 1
    assert T.rank_order(two, T.low_rank_tensor(rng, (4, 4, 4), 2), 1e-6).sign == 0  # equal ranks: a tie


def test_low_rank_tensor_normalization_and_zero_filled():
    rng = np.random.default_rng(4)
    Y = T.low_rank_tensor(rng, (2, 3, 4), 2)
    assert np.linalg.norm(Y) == pytest.approx(np.sqrt(24))
    assert np.linalg.norm(T.low_rank_tensor(rng, (2, 3, 4, 2), 1, norm=1.0)) == pytest.approx(1.0)
    Yt = torch.tensor(Y)
    mask = torch.zeros_like(Yt)
    mask[0] = 1
    Z = T.zero_filled(mask, Yt)
    assert torch.equal(Z[0], Yt[0]) and (Z[1:] == 0).all()


def test_rank_order_paired_values_and_brackets_as_text():
    """The sign test's observation is the pair of bracket ends that decided the order; a tie pairs equal values."""
    assert T.RankOrder(-1, (1, 1), (3, None)).paired_values() == (1, 3)
    assert T.RankOrder(1, (4, None), (1, 2)).paired_values() == (4, 2)
    assert T.RankOrder(0, (2, None), (2, None)).paired_values() == (2, 2)
    assert [T.RankOrder.describe(b) for b in ((1, 1), (3, None), (2, 5))] == ["= 1", "≥ 3", "2–5"]
