"""``reference._taylor`` (exact ``fmpz_mat`` Cauchy products) against the pre-change per-entry implementation.

The reference integrator is the project's trusted oracle, so its speed-up must not move a single bit: every
integer ``_taylor`` returns is an exact sum rounded once, ``(tot + half) >> F`` or ``_round_div(−H·tot, den)``,
and whatever the order of summation the exact sums are the same integers.  Oracle: verbatim copies of the
pre-change ``_taylor`` (below), compared integer for integer on random factors (negative and
zero entries included), depths 1–4, square and rectangular factors, completion and sensing losses, 30 and 60
digits, several step sizes; and whole ``solve`` runs with the oracle patched in, compared field by field.
"""

from __future__ import annotations

import math
import random
import zlib
from operator import mul
from typing import Any

import numpy as np
import pytest
from mpmath import mp

from implreg.matrix import reference as R
from implreg.matrix.problems import razin_cohen_2x2, razin_cohen_embedding
from implreg.matrix.reference import Matrix, Series, _FixedProblem, _round_div


# ------------------------------------------------------------------------------------------------------
# The pre-change implementation, kept verbatim as the oracle (only the name changed: _taylor → oracle_taylor):
# per entry, a Python dot product of coefficient lists for every (row, inner, column) triple, one rounding per
# entry and order.
# ------------------------------------------------------------------------------------------------------
def oracle_taylor(fp: _FixedProblem, X: list[Matrix], H: int, p: int) -> list[Series]:
    """Coefficients 0..p of θ(t_n + H s) in s (fixed point), for factors X = (W_1, …, W_N) at t_n."""
    F = fp.F
    half = 1 << (F - 1)
    N = len(X)
    S: list[Series] = [[[[v] for v in row] for row in Xj] for Xj in X]
    rows = [len(Xj) for Xj in X]  # d_j
    cols = [len(Xj[0]) for Xj in X]  # d_{j-1}
    d0 = cols[0]
    pre: list[Series] = [S[0]] + [[[[] for _ in range(d0)] for _ in range(rows[j])] for j in range(1, N)]
    dN = rows[-1]
    L: list[Series] = [[[[] for _ in range(d0)] for _ in range(rows[j])] for j in range(N)]
    two_f = 2 * F
    for k in range(p):
        # prefix products P_j = W_j P_{j-1}, coefficient k
        for j in range(1, N):
            A, B, C = S[j], pre[j - 1], pre[j]
            inner = cols[j]
            for a in range(rows[j]):
                Aa, Ca = A[a], C[a]
                for c in range(d0):
                    tot = 0
                    for b in range(inner):
                        tot += sum(map(mul, Aa[b], reversed(B[b][c])))
                    Ca[c].append((tot + half) >> F)
        W = pre[N - 1]
        G = fp.grad_coefficient([[W[a][c][k] for c in range(d0)] for a in range(dN)], k == 0)
        LN = L[N - 1]
        for a in range(dN):
            for c in range(d0):
                LN[a][c].append(G[a][c])
        # top-down L_{j-1} = W_jᵀ L_j, coefficient k
        for j in range(N - 1, 0, -1):
            A, B, C = S[j], L[j], L[j - 1]
            for a in range(cols[j]):
                Ca = C[a]
                for c in range(d0):
                    tot = 0
                    for b in range(rows[j]):
                        tot += sum(map(mul, A[b][a], reversed(B[b][c])))
                    Ca[c].append((tot + half) >> F)
        # next coefficients W_j^{[k+1]} = −H (L_j P_{j−1}ᵀ)^{[k]} / (k+1); top factor first, because
        # P_0 = W_1 is S[0] itself and must not grow before it is used at this order
        den1 = (k + 1) << F
        den2 = (k + 1) << two_f
        for j in range(N - 1, -1, -1):
            Sj = S[j]
            if j == 0:
                L0 = L[0]
                for a in range(rows[0]):
                    for c in range(d0):
                        Sj[a][c].append(_round_div(-H * L0[a][c][k], den1))
                continue
            Lj, P = L[j], pre[j - 1]
            for a in range(rows[j]):
                La = Lj[a]
                for c in range(cols[j]):
                    Pc = P[c]
                    tot = 0
                    for b in range(d0):
                        tot += sum(map(mul, La[b], reversed(Pc[b])))
                    Sj[a][c].append(_round_div(-H * tot, den2))
    return S


# ------------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------------
def _F(dps: int) -> int:
    return math.ceil(dps * math.log2(10)) + R._GUARD_BITS


def _random_factors(rng: random.Random, dims: tuple[int, ...], F: int, bits: int = 2) -> list[Matrix]:
    """W_1 … W_N with W_j of shape (dims[j], dims[j−1]): fixed-point entries up to 2^bits in size, ~1/5 of them 0."""
    top = 1 << (F + bits)

    def entry() -> int:
        return 0 if rng.random() < 0.2 else rng.randint(-top, top)

    return [[[entry() for _ in range(dims[j - 1])] for _ in range(dims[j])] for j in range(1, len(dims))]


def _completion(rng: random.Random, d: int, e: int, F: int) -> _FixedProblem:
    mask = (np.array([[rng.random() for _ in range(e)] for _ in range(d)]) < 0.7).astype(float)
    mask[0, 0] = 1.0
    target = np.array([[rng.uniform(-2, 2) for _ in range(e)] for _ in range(d)])
    return R._fixed_problem({"mask": mask, "target": target}, F)[0]


def _sensing(rng: random.Random, d: int, e: int, F: int) -> _FixedProblem:
    A = np.array([[[rng.gauss(0, 1) for _ in range(e)] for _ in range(d)] for _ in range(3)])
    A[0, 0, :] = 0.0  # zero entries in the measurements too
    y = np.array([rng.gauss(0, 1) for _ in range(3)])
    return R._fixed_problem({"A": A, "y": y}, F)[0]


# dims = (d_0, d_1, …, d_N): W_j is d_j × d_{j−1}; the problem is d_N × d_0
SHAPES = [
    (3, 3),
    (2, 3),
    (3, 3, 3),
    (4, 4, 4),
    (2, 3, 2),
    (3, 2, 3),
    (4, 4, 4, 4),
    (2, 3, 4, 2),
    (3, 3, 3, 3, 3),
    (2, 3, 2, 3, 2),
]


@pytest.mark.parametrize("kind", ["completion", "sensing"])
@pytest.mark.parametrize("dims", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dps", [30, 60])
def test_taylor_matches_the_per_entry_oracle(kind: str, dims: tuple[int, ...], dps: int) -> None:
    rng = random.Random(zlib.crc32(repr((kind, dims, dps)).encode()))
    F = _F(dps)
    make = _completion if kind == "completion" else _sensing
    fp = make(rng, dims[-1], dims[0], F)
    X = _random_factors(rng, dims, F)
    p = 14 if len(dims) > 3 else 20
    for H in (1 << F, 1 << (F - 5), rng.randint(1, 1 << (F + 2))):
        assert R._taylor(fp, X, H, p) == oracle_taylor(fp, X, H, p)


@pytest.mark.parametrize("dps", [30, 60])
def test_taylor_matches_at_the_solver_order_on_the_embedding_problem(dps: int) -> None:
    """The order ``solve`` uses (33 at 30 digits, 68 at 60), factors near a realistic state (entries ~1e-1)."""
    rng = random.Random(dps)
    F = _F(dps)
    fp = R._fixed_problem(razin_cohen_embedding(3), F)[0]
    X = _random_factors(rng, (3, 3, 3), F, bits=-3)
    p = max(12, math.ceil(0.5 * (dps - 5) * math.log(10)) + 4)
    H = rng.randint(1 << (F - 2), 1 << (F + 1))
    assert R._taylor(fp, X, H, p) == oracle_taylor(fp, X, H, p)


def test_taylor_extreme_entries() -> None:
    """All-zero factors, a single nonzero entry, and entries far above 1 (near the blow-up guard)."""
    F = _F(30)
    fp = R._fixed_problem(razin_cohen_2x2(), F)[0]
    zeros = [[[0, 0], [0, 0]], [[0, 0], [0, 0]]]
    single = [[[0, 0], [0, -(1 << F)]], [[0, 0], [0, 0]]]
    big = [[[(1 << (F + 60)) + 1, -(1 << (F + 50))], [0, 7]], [[-3, 1 << (F + 40)], [1 << F, -(1 << (F + 55))]]]
    for X in (zeros, single, big):
        for H in (1, 1 << F, 1 << (F + 3)):
            assert R._taylor(fp, X, H, 16) == oracle_taylor(fp, X, H, 16)


# ------------------------------------------------------------------------------------------------------
# Whole solves: identical to the last bit with the oracle patched in
# ------------------------------------------------------------------------------------------------------
def _fingerprint(sol: R.ReferenceSolution) -> dict:
    """Every number a solution carries (mpf/mp.matrix as exact (sign, man, exp) tuples), wall time excluded."""

    def fx(v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, list):
            return [fx(w) for w in v]
        if isinstance(v, mp.matrix):
            return [[fx(v[i, j]) for j in range(v.cols)] for i in range(v.rows)]
        if isinstance(v, mp.mpf):
            return v._mpf_
        return v

    names = [
        "t_end", "factors", "end_to_end", "loss", "order", "error_estimate", "factor_error", "loss_error",
        "status", "n_steps", "level_times", "level_time_errors", "level_end_to_end", "level_factors",
        "level_factor_errors", "level_errors", "save_times", "save_end_to_end", "save_factors", "save_loss",
        "save_errors", "save_factor_errors",
    ]
    return {n: fx(getattr(sol, n)) for n in names}


def _positive_det(d: int, seed: int, scale: float) -> np.ndarray:
    W0 = scale * np.random.default_rng(seed).normal(size=(d, d))
    if np.linalg.det(W0) < 0:
        W0[0] *= -1
    return W0


CASES = [  # (problem, depth, d, init scale, t_end, dps); each stops at loss_target by a located crossing
    ("embedding-3", 3, 3, 0.3, 40.0, 30),
    ("2x2", 2, 2, 1e-2, 80.0, 30),
    ("2x2", 3, 2, 0.3, 40.0, 60),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-N{c[1]}-dps{c[5]}")
def test_solve_is_bit_identical_with_the_oracle(case: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    name, depth, d, scale, t_end, dps = case
    problem = razin_cohen_embedding(d) if name.startswith("embedding") else razin_cohen_2x2()
    factors = R.balanced_factors(_positive_det(d, 5, scale), depth, dps=dps)
    kwargs = dict(
        t_end=t_end, dps=dps, loss_levels=(0.3, 0.1, 3e-2, 1e-2), loss_target=1e-2,
        save_at=(0.1 * t_end, 0.5 * t_end), budget_s=120.0,
    )
    new = R.solve(problem, factors, **kwargs)
    monkeypatch.setattr(R, "_taylor", oracle_taylor)
    old = R.solve(problem, factors, **kwargs)
    assert new.status == R.Status.REACHED_LOSS and all(t is not None for t in new.level_times)
    assert _fingerprint(new) == _fingerprint(old)
