"""Tests of implreg.tensor against explicit loops, autograd and known ranks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from implreg import tensor as T
from implreg.errors import InvalidInputError


def test_cp_tensor_matches_loops():
    g = torch.Generator().manual_seed(0)
    A, B, C = (torch.randn(2, n, 3, generator=g, dtype=torch.float64) for n in (2, 3, 4))
    X = T.cp_tensor(A, B, C)
    for b, i, j, k in itertools.product(range(2), range(2), range(3), range(4)):
        ref = sum(float(A[b, i, r] * B[b, j, r] * C[b, k, r]) for r in range(3))
        assert float(X[b, i, j, k]) == pytest.approx(ref, abs=1e-12)


def test_cp_descent_gradient_matches_autograd_and_loss_decreases():
    rng = np.random.default_rng(0)
    Y = torch.tensor(T.low_rank_tensor(rng, (3, 3, 3), 1)).unsqueeze(0)
    M = torch.tensor((rng.random((3, 3, 3)) < 0.6).astype(float)).unsqueeze(0)
    g = torch.Generator().manual_seed(1)
    # one step by hand vs autograd
    res0 = T.cp_descent(M, Y, rank=2, scale=0.3, lr=1e-3, loss_target=1e-30, max_steps=1, generator=g)
    g = torch.Generator().manual_seed(1)
    A = (0.3 * torch.randn(1, 3, 2, generator=g, dtype=torch.float64)).requires_grad_()
    B = (0.3 * torch.randn(1, 3, 2, generator=g, dtype=torch.float64)).requires_grad_()
    C = (0.3 * torch.randn(1, 3, 2, generator=g, dtype=torch.float64)).requires_grad_()
    loss = 0.5 * ((M * (T.cp_tensor(A, B, C) - Y)) ** 2).sum()
    loss.backward()
    assert torch.allclose(res0.A, (A - 1e-3 * A.grad).detach(), atol=1e-14)
    assert torch.allclose(res0.C, (C - 1e-3 * C.grad).detach(), atol=1e-14)
    # small steps: the loss goes down
    losses = []
    for steps in (1, 50, 500):
        r = T.cp_descent(M, Y, rank=2, scale=0.3, lr=1e-2, loss_target=1e-30, max_steps=steps,
                         generator=torch.Generator().manual_seed(1))
        losses.append(float(r.loss[0]))
    assert losses[0] > losses[1] > losses[2]


def test_cp_descent_stops_at_target_per_instance():
    rng = np.random.default_rng(2)
    Y = torch.tensor(np.stack([T.low_rank_tensor(rng, (3, 3, 3), 1) for _ in range(3)]))
    M = torch.ones_like(Y)
    r = T.cp_descent(M, Y, rank=3, scale=0.1, lr=0.05, loss_target=1e-3, max_steps=5_000,
                     generator=torch.Generator().manual_seed(0))
    assert torch.equal(r.converged, r.loss <= 1e-3)
    assert r.converged.any()
    for i in range(3):
        if r.converged[i]:  # frozen at the step where it reached the target: more steps change nothing
            assert int(r.steps[i]) < 5_000
            r2 = T.cp_descent(M, Y, rank=3, scale=0.1, lr=0.05, loss_target=1e-3, max_steps=int(r.steps[i]) + 50,
                              generator=torch.Generator().manual_seed(0))
            assert torch.equal(r2.A[i], r.A[i])
        else:
            assert int(r.steps[i]) == 5_000


def test_numerical_rank_of_known_tensors():
    rng = np.random.default_rng(3)
    assert T.numerical_rank(np.zeros((3, 3, 3)), 0.01) == 0
    assert T.numerical_rank(T.low_rank_tensor(rng, (4, 4, 4), 1), 0.01) == 1
    assert T.numerical_rank(T.low_rank_tensor(rng, (4, 4, 4), 2), 0.01) == 2
    # a generic 3×3×3 tensor is not rank ≤ 2
    assert T.numerical_rank(rng.standard_normal((3, 3, 3)), 0.01) >= 3
    with pytest.raises(InvalidInputError):
        T.numerical_rank(np.zeros((3, 3)), 0.1)
    with pytest.raises(InvalidInputError):
        T.numerical_rank(np.ones((2, 2, 2)), 1.5)


def test_low_rank_tensor_normalization_and_zero_filled():
    rng = np.random.default_rng(4)
    Y = T.low_rank_tensor(rng, (2, 3, 4), 2)
    assert np.linalg.norm(Y) == pytest.approx(np.sqrt(24))
    Yt = torch.tensor(Y)
    mask = torch.zeros_like(Yt)
    mask[0] = 1
    Z = T.zero_filled(mask, Yt)
    assert torch.equal(Z[0], Yt[0]) and (Z[1:] == 0).all()
