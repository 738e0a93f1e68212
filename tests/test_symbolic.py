"""Tests of implreg.matrix.symbolic: each proof holds, fails where it must (negative controls), and agrees with an
independent numeric evaluation (numpy / torch closed-form gradients)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from implreg.matrix import factorization as fz
from implreg.matrix import symbolic as sym
from implreg.matrix.problems import razin_cohen_embedding, sensing


def test_completion_det_and_norms():
    assert sym.completion_det().holds
    p = sym.completion_norms()
    assert p.holds, p.residual
    assert "sqrt(w**2 + 4)" in p.details["nuclear"]
    assert p.details["critical points"] == "[0]"


@settings(max_examples=50, deadline=None, database=None)
@given(w=st.floats(-1e3, 1e3, allow_nan=False))
def test_completion_norm_formulas_match_numpy(w):
    M = np.array([[w, 1.0], [1.0, 0.0]])
    s = np.linalg.svd(M, compute_uv=False)
    s1, s2 = (float(e.subs(sym.W_SYM, w)) for e in sym.completion_singular_values())
    assert s1 == pytest.approx(s[0], rel=1e-12, abs=1e-12)
    assert s2 == pytest.approx(s[1], rel=1e-9, abs=1e-12)
    assert s.sum() == pytest.approx(math.sqrt(w * w + 4), rel=1e-12)
    assert s.sum() >= 2 - 1e-12
    assert np.linalg.det(M) == pytest.approx(-1.0, abs=1e-12 * max(1, abs(w)))


@pytest.mark.parametrize("d", [2, 3, 4, 5])
def test_embedding_det(d):
    assert sym.embedding_det(d).holds
    P = razin_cohen_embedding(d)
    for w in (-3.0, 0.0, 7.5):
        M = P.target[0].clone()
        M[0, 0] = w
        assert float(torch.linalg.det(M)) == pytest.approx(-1.0, abs=1e-12)


def test_perturbed_det():
    p = sym.perturbed_det()
    assert p.holds
    for eps, w in ((0.1, -3.0), (0.5, 2.0)):
        M = np.array([[w, -2.0], [0.5, eps]])
        assert np.linalg.det(M) == pytest.approx(eps * w + 1)


@pytest.mark.parametrize("dims", [(1, 1, 1), (2, 2, 2), (2, 3, 1), (3, 2, 2, 3)])
def test_balancedness_conservation_symbolic_and_numeric(dims):
    assert sym.balancedness_conservation(dims).holds
    # numeric: d/dt (W_{j+1}ᵀW_{j+1} − W_jW_jᵀ) with the closed-form gradients at random factors and a sensing loss
    g = torch.Generator().manual_seed(0)
    f = fz.gaussian_init(1, dims, 1.0, generator=g)
    A = torch.randn(1, 3, dims[-1], dims[0], generator=g, dtype=torch.float64)
    P = sensing(A, torch.randn(1, 3, generator=g, dtype=torch.float64))
    _, G = fz.factor_grads(P, f)
    V = [-x for x in G]
    for j in range(len(f) - 1):
        D = (V[j + 1].transpose(-1, -2) @ f[j + 1] + f[j + 1].transpose(-1, -2) @ V[j + 1]
             - V[j] @ f[j].transpose(-1, -2) - f[j] @ V[j].transpose(-1, -2))
        assert float(D.abs().max()) < 1e-12


@pytest.mark.parametrize("depth", [2, 3])
def test_end_to_end_rule_holds_balanced_and_fails_unbalanced(depth):
    assert sym.end_to_end_rule(depth).holds
    assert not sym.end_to_end_rule(depth, unbalance=2).holds  # the identity really needs balancedness


@pytest.mark.parametrize("depth", [2, 3])
def test_singular_value_rule_holds_balanced_and_fails_unbalanced(depth):
    assert sym.singular_value_rule(depth).holds
    assert not sym.singular_value_rule(depth, unbalance=2).holds


def test_end_to_end_rule_numerically():
    """Σ_j (W_N⋯W_{j+1})Ẇ_j(W_{j−1}⋯W_1) from closed-form factor gradients = factorization.end_to_end_velocity."""
    g = torch.Generator().manual_seed(3)
    W0 = torch.randn(2, 3, 3, generator=g, dtype=torch.float64)
    A = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64)
    P = sensing(A, torch.randn(2, 4, generator=g, dtype=torch.float64))
    for N in (2, 3, 4):
        f = fz.balanced_init(W0, N)
        _, G = fz.factor_grads(P, f)
        Wdot = torch.zeros_like(W0)
        for j in range(N):
            term = -G[j]
            if j + 1 < N:
                term = fz.end_to_end(f[j + 1:]) @ term
            if j > 0:
                term = term @ fz.end_to_end(f[:j])
            Wdot = Wdot + term
        assert torch.allclose(Wdot, fz.end_to_end_velocity(P, fz.end_to_end(f), N), atol=1e-10, rtol=1e-9)


def test_proof_note_mentions_sympy():
    assert "symbolic proof (sympy" in sym.completion_det().note()
