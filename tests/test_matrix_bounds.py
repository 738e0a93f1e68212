"""Tests of implreg.matrix.bounds: every bound contains the exact change under random and adversarial
perturbations within the stated entrywise error (exact change computed in float64 at ~1e-16, far below e)."""

from __future__ import annotations

import math

import pytest
import torch

from implreg.matrix import bounds as mb
from implreg.matrix import measures

E = 1e-6


def _perturbations(W: torch.Tensor, e: float, n: int = 200, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        yield (torch.rand(W.shape, generator=g, dtype=W.dtype) * 2 - 1) * e
    for s in (1.0, -1.0):  # corner perturbations
        yield torch.full_like(W, s * e)
        yield torch.sign(W) * s * e


@pytest.fixture
def W():
    g = torch.Generator().manual_seed(7)
    W = torch.randn(6, 2, 2, generator=g, dtype=torch.float64)
    W[0, 1, 1] = W[0, 0, 1] * W[0, 1, 0] / W[0, 0, 0]  # exactly-ish singular
    W[1] = 0.0
    return W


def test_product_error_bounds_the_product_change():
    g = torch.Generator().manual_seed(1)
    for dims in ((2, 2, 2), (3, 2, 4, 3), (2, 1, 2)):
        f = tuple(torch.randn(4, dims[j + 1], dims[j], generator=g, dtype=torch.float64) for j in range(len(dims) - 1))
        W = f[0]
        for Wj in f[1:]:
            W = Wj @ W
        b = mb.product_error(f, E)
        worst = torch.zeros(4, dtype=torch.float64)
        for k in range(100):
            fp = tuple(Wj + next(_perturbations(Wj, E, 1, seed=100 * k + j)) for j, Wj in enumerate(f))
            Wp = fp[0]
            for Wj in fp[1:]:
                Wp = Wj @ Wp
            worst = torch.maximum(worst, (Wp - W).abs().flatten(1).amax(-1))
        assert (worst <= b).all() and (b < 100 * E * 10).all()


def test_det2_error(W):
    b = mb.det2_error(W, E)
    d0 = torch.linalg.det(W)
    for P in _perturbations(W, E):
        assert ((torch.linalg.det(W + P) - d0).abs() <= b).all()


def test_completion_loss_error(W):
    mask = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    target = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)

    def loss(X):
        return 0.5 * (mask * (X - target)).pow(2).flatten(1).sum(-1)

    b = mb.completion_loss_error(mask, target, W, E)
    for P in _perturbations(W, E):
        assert ((loss(W + P) - loss(W)).abs() <= b).all()


@pytest.mark.parametrize("name", [*measures.NORMS, "schatten-0.1", "entrywise-0.3"])
def test_measure_error_and_interval_contain_every_perturbation(W, name):
    b = mb.measure_error(name, W, E)
    lo, hi = mb.measure_interval(name, W, E)
    v0 = mb._measure(name, W)
    assert torch.isfinite(b).all() and (lo <= v0).all() and (v0 <= hi).all()
    for P in _perturbations(W, E):
        v = mb._measure(name, W + P)
        assert ((v - v0).abs() <= b).all()
        assert ((lo <= v) & (v <= hi)).all()


def test_quasi_norm_interval_is_tight_near_a_zero_singular_value():
    W = torch.tensor([[[20.0, 1.0], [1.0, 0.05]]], dtype=torch.float64)  # σ_min ≈ 0
    lo, hi = mb.measure_interval("schatten-0.25", W, 1e-4)
    sym = mb.measure_error("schatten-0.25", W, 1e-4)
    assert float(lo[0]) > float(mb._measure("schatten-0.25", W)[0] - sym[0])
    # the external σ bounds tighten the interval further
    s = torch.linalg.svdvals(W)
    lo2, hi2 = mb.measure_interval("schatten-0.25", W, 1e-4, sv_lo=s * (1 - 1e-9), sv_hi=s * (1 + 1e-9))
    assert float(hi2[0] - lo2[0]) < float(hi[0] - lo[0]) / 10


def test_effective_rank_upper_bound(W):
    er, up = mb.effective_rank_2x2(W[2:], E)
    assert torch.allclose(er, measures.effective_rank(W[2:]).value, atol=1e-12)
    for P in _perturbations(W[2:], E):
        assert (measures.effective_rank(W[2:] + P).value <= up).all()
    assert (up <= 2 * (1 + 1e-13)).all() and not math.isnan(float(up.max()))


def test_exact_det_by_hand_and_against_a_permutation_expansion():
    from fractions import Fraction
    from itertools import permutations

    from implreg.matrix.bounds import exact_det

    assert exact_det([[0.5, 1], [1, 0]]) == -1
    assert exact_det([[1, 2], [2, 4]]) == 0  # singular: a zero pivot column
    assert exact_det([[0, 1], [1, 0]]) == -1  # needs a row swap
    M = [[Fraction(3, 7), 2.5, -1], [0.125, -4, 6], [1e-3, 2, Fraction(-5, 3)]]
    A = [[x if isinstance(x, Fraction) else Fraction(x) for x in r] for r in M]

    def sign(p):
        return (-1) ** sum(p[i] > p[j] for i in range(3) for j in range(i + 1, 3))

    want = sum(sign(p) * A[0][p[0]] * A[1][p[1]] * A[2][p[2]] for p in permutations(range(3)))
    assert exact_det(M) == want
