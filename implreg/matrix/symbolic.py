"""Symbolic (sympy) derivations and identities behind the matrix-factorization claims.

Each function proves one identity by exact symbolic computation and returns a :class:`Proof`: what was shown,
the simplified residual (0 when the identity holds), and the few intermediate expressions a reader needs.
Results are cached (they depend only on their arguments).

- :func:`completion_det` — every completion [[w, 1], [1, 0]] of the Razin–Cohen problem has det −1.
- :func:`completion_norms` — over those completions every Schatten-p (p > 0), entrywise-p norm, Frobenius,
  nuclear (√(w² + 4)) and spectral norm is minimized at the bounded completion w = 0.
- :func:`embedding_det` — the d×d embedding's completions (free (1,1) entry) have det −1.
- :func:`perturbed_det` — the perturbed problem's completions have det εw + 1.
- :func:`balancedness_conservation` — d/dt(W_{j+1}ᵀW_{j+1} − W_jW_jᵀ) = 0 under gradient flow for any loss.
- :func:`end_to_end_rule` — at a balanced point, Ẇ = −Σ_j (WWᵀ)^{(j−1)/N}∇ℓ(WᵀW)^{(N−j)/N} (Arora et al. 2018).
- :func:`singular_value_rule` — at a balanced point, σ̇_r = −N σ_r^{2−2/N}⟨∇ℓ, u_r v_rᵀ⟩ (Arora et al. 2019).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import sympy as sp

__all__ = [
    "Proof",
    "balancedness_conservation",
    "completion_det",
    "completion_norms",
    "embedding_det",
    "end_to_end_rule",
    "perturbed_det",
    "singular_value_rule",
]


@dataclass(frozen=True)
class Proof:
    """Outcome of a symbolic derivation: ``holds`` iff every residual simplified to exactly 0."""

    statement: str
    holds: bool
    residual: str
    details: dict[str, str] = field(default_factory=dict)

    def note(self) -> str:
        return f"symbolic proof (sympy {sp.__version__}): {self.statement} — residual simplifies to {self.residual}"


def _zero(expr: Any) -> bool:
    if isinstance(expr, sp.MatrixBase):
        return all(_zero(e) for e in expr)
    return sp.simplify(sp.cancel(sp.expand(expr))) == 0


def _residual_text(expr: Any) -> str:
    if isinstance(expr, sp.MatrixBase):
        return str(expr.applyfunc(lambda e: sp.simplify(sp.cancel(sp.expand(e)))).tolist())
    return str(sp.simplify(expr))


# ---------------------------------------------------------------------------------------------- Razin–Cohen


W_SYM = sp.Symbol("w", real=True)


@functools.cache
def completion_det() -> Proof:
    """det [[w, 1], [1, 0]] = −1 for every real w (so every completion has rank 2)."""
    M = sp.Matrix([[W_SYM, 1], [1, 0]])
    res = sp.expand(M.det() + 1)
    return Proof("det [[w, 1], [1, 0]] = −1 for all real w", res == 0, str(res), {"det": str(M.det())})


@functools.cache
def completion_singular_values() -> tuple[sp.Expr, sp.Expr]:
    """(σ₁, σ₂) of [[w, 1], [1, 0]] = ((√(w² + 4) + |w|)/2, (√(w² + 4) − |w|)/2)."""
    r = sp.sqrt(W_SYM**2 + 4)
    return (r + sp.Abs(W_SYM)) / 2, (r - sp.Abs(W_SYM)) / 2


@functools.cache
def completion_norms() -> Proof:
    """Over the completions [[w, 1], [1, 0]]: nuclear norm √(w² + 4) with minimum 2 at w = 0, and every other
    listed norm and quasi-norm minimized at w = 0 as well.

    Derivation: the matrix is symmetric with eigenvalues λ± = (w ± √(w² + 4))/2, λ+λ− = −1 < 0, so σ = |λ±|,
    ‖·‖_* = |λ+| + |λ−| = λ+ − λ− = √(w² + 4), convex with derivative w/√(w² + 4): unique minimum 2 at w = 0.
    σ₁σ₂ = 1, so Σσ^p = σ₁^p + σ₁^{−p} ≥ 2 (AM–GM) with equality iff σ₁ = 1 iff w = 0 (any p > 0); the spectral
    norm σ₁ ≥ 1 = σ₁(w = 0); Frobenius √(w² + 2) and entrywise (|w|^p + 2)^{1/p} are increasing in |w|.
    """
    M = sp.Matrix([[W_SYM, 1], [1, 0]])
    lam = sorted(M.eigenvals().keys(), key=lambda e: sp.sympify(e).subs(W_SYM, 1))
    lm, lp = lam
    checks = {}
    checks["product λ+λ− + 1"] = sp.simplify(lp * lm + 1)
    nuc = sp.simplify(lp - lm)
    checks["λ+ − λ− − √(w²+4)"] = sp.simplify(nuc - sp.sqrt(W_SYM**2 + 4))
    dn = sp.diff(sp.sqrt(W_SYM**2 + 4), W_SYM)
    crit = sp.solve(sp.Eq(dn, 0), W_SYM)
    d2 = sp.simplify(sp.diff(sp.sqrt(W_SYM**2 + 4), W_SYM, 2))
    checks["critical points − [0]"] = sp.Integer(0) if crit == [0] else sp.Integer(1)
    checks["value at 0 − 2"] = sp.sqrt(W_SYM**2 + 4).subs(W_SYM, 0) - 2
    checks["convexity: d²/dw² ≤ 0 somewhere"] = sp.Integer(0) if d2.is_positive else sp.Integer(1)
    s1, s2 = completion_singular_values()
    checks["σ₁σ₂ − 1"] = sp.simplify(sp.expand(s1 * s2) - 1)
    checks["σ₁ + σ₂ − √(w²+4)"] = sp.simplify(s1 + s2 - sp.sqrt(W_SYM**2 + 4))
    # σ^p + σ^{−p} − 2 = (σ^{p/2} − σ^{−p/2})² ≥ 0, zero iff σ = 1
    x, p = sp.symbols("x p", positive=True)
    checks["AM–GM: x^p + x^−p − 2 − (x^{p/2} − x^{−p/2})²"] = sp.simplify(
        sp.expand(x**p + x ** (-p) - 2 - (x ** (p / 2) - x ** (-p / 2)) ** 2))
    checks["σ₁(0) − 1"] = sp.simplify(s1.subs(W_SYM, 0) - 1)
    checks["d/d|w| of σ₁ ≤ 0 somewhere"] = sp.Integer(0) if sp.diff(
        (sp.sqrt(x**2 + 4) + x) / 2, x).is_positive else sp.Integer(1)
    bad = {k: v for k, v in checks.items() if v != 0}
    return Proof("every norm and quasi-norm of the completions [[w,1],[1,0]] is minimized at w = 0; "
                 "nuclear norm √(w²+4), minimum 2", not bad, str(bad or 0),
                 {"nuclear": str(sp.sqrt(W_SYM**2 + 4)), "critical points": str(crit), "d²/dw²": str(d2)})


@functools.cache
def embedding_det(d: int) -> Proof:
    """The d×d embedding target (M₁₂ = M₂₁ = 1, M_ii = 1 for i ≥ 3, zeros elsewhere, (1,1) free = w) has det −1."""
    M = sp.zeros(d, d)
    M[0, 0] = W_SYM
    M[0, 1] = M[1, 0] = 1
    for i in range(2, d):
        M[i, i] = 1
    res = sp.expand(M.det() + 1)
    return Proof(f"det of every completion of the {d}×{d} embedding is −1", res == 0, str(res),
                 {"det": str(sp.expand(M.det()))})


EPS_SYM = sp.Symbol("epsilon", positive=True)


@functools.cache
def perturbed_det() -> Proof:
    """det [[w, −2], [½, ε]] = εw + 1: completions with det < 0 are exactly those with w < −1/ε."""
    M = sp.Matrix([[W_SYM, -2], [sp.Rational(1, 2), EPS_SYM]])
    res = sp.expand(M.det() - (EPS_SYM * W_SYM + 1))
    root = sp.solve(sp.Eq(M.det(), 0), W_SYM)
    return Proof("det [[w, −2], [1/2, ε]] = εw + 1 (zero at w = −1/ε)", res == 0 and root == [-1 / EPS_SYM],
                 str(res), {"det": str(sp.expand(M.det())), "root": str(root)})


# ---------------------------------------------------------------------------------------------- Arora et al.


def _symbolic_matrix(name: str, rows: int, cols: int) -> sp.Matrix:
    return sp.Matrix(rows, cols, lambda i, j: sp.Symbol(f"{name}_{i}{j}", real=True))


def _chain(mats: list[sp.Matrix], size: int) -> sp.Matrix:
    out = sp.eye(size)
    for M in mats:
        out = M * out
    return out


def _factor_velocities(Ws: list[sp.Matrix], G: sp.Matrix) -> list[sp.Matrix]:
    """Ẇ_j = −(W_N⋯W_{j+1})ᵀ G (W_{j−1}⋯W_1)ᵀ for symbolic factors and a symbolic gradient G = ∇ℓ(W)."""
    N = len(Ws)
    out = []
    for j in range(N):
        above = _chain(Ws[j + 1:], Ws[j].rows)  # W_N ⋯ W_{j+1}
        below = _chain(Ws[:j], Ws[0].cols)  # W_{j−1} ⋯ W_1
        out.append(-(above.T * G * below.T))
    return out


@functools.cache
def balancedness_conservation(dims: tuple[int, ...]) -> Proof:
    """For factors of widths ``dims`` = (d_0, …, d_N) with symbolic entries and a symbolic gradient G (so for
    *every* differentiable loss), d/dt (W_{j+1}ᵀW_{j+1} − W_jW_jᵀ) = 0 under Ẇ_j = −∂ℓ/∂W_j."""
    N = len(dims) - 1
    Ws = [_symbolic_matrix(f"W{j + 1}", dims[j + 1], dims[j]) for j in range(N)]
    G = _symbolic_matrix("G", dims[-1], dims[0])
    V = _factor_velocities(Ws, G)
    residuals = []
    for j in range(N - 1):
        d = (V[j + 1].T * Ws[j + 1] + Ws[j + 1].T * V[j + 1]) - (V[j] * Ws[j].T + Ws[j] * V[j].T)
        residuals.append(d.applyfunc(sp.expand))
    ok = all(all(e == 0 for e in r) for r in residuals)
    return Proof(f"d/dt(W_(j+1)ᵀW_(j+1) − W_jW_jᵀ) = 0 for factors of widths {dims} and any loss gradient",
                 ok, "0" if ok else str([r.tolist() for r in residuals]))


def _rotation(name: str, reflect: bool = False) -> tuple[sp.Matrix, tuple[sp.Symbol, sp.Symbol]]:
    """A generic element of O(2): [[c, −s], [s, c]] (times diag(1, −1) if ``reflect``) with symbols c, s; identities
    are then proved modulo c² + s² − 1 (see :func:`_on_orthogonal_group`)."""
    c, s = sp.symbols(f"c_{name} s_{name}", real=True)
    R = sp.Matrix([[c, -s], [s, c]])
    return (R * sp.diag(1, -1) if reflect else R), (c, s)


def _on_orthogonal_group(expr: sp.Expr, pairs: list[tuple[sp.Symbol, sp.Symbol]]) -> sp.Expr:
    """Normal form of a polynomial modulo the ideal (c² + s² − 1 for every pair): zero iff the polynomial
    vanishes on the product of circles (the generators have pairwise disjoint leading terms s², so they are a
    Gröbner basis and division by them gives the unique normal form)."""
    expr = sp.expand(expr)
    if expr == 0:
        return expr
    gens = sorted(expr.free_symbols | {x for p in pairs for x in p}, key=str)
    rels = [s**2 + c**2 - 1 for c, s in pairs]
    _, rem = sp.reduced(expr, rels, *gens, order="lex")
    return sp.expand(rem)


def _balanced_point(depth: int, reflect_u: bool = False, unbalance: int = 1):
    """Symbolic balanced 2×2 factors W_1 = R_1 A Vᵀ, W_j = R_j A R_{j−1}ᵀ, W_N = U A R_{N−1}ᵀ with A = diag(a₁, a₂)
    = S^{1/N} (a_i > 0 symbols) and generic rotations; returns (Ws, U, V, a, pairs).  ``unbalance`` = c ≠ 1 scales
    W_1 by c and W_2 by 1/c (same product, no longer balanced) — a negative control for the tests."""
    a = sp.symbols("a1 a2", positive=True)
    A = sp.diag(*a)
    U, pu = _rotation("u", reflect_u)
    V, pv = _rotation("v")
    rots = [_rotation(f"r{j}") for j in range(1, depth)]
    R = [m for m, _ in rots]
    pairs = [pu, pv, *(p for _, p in rots)]
    if depth == 1:
        return [U * A * V.T], U, V, a, pairs
    Ws = [R[0] * A * V.T]
    for j in range(1, depth - 1):
        Ws.append(R[j] * A * R[j - 1].T)
    Ws.append(U * A * R[-1].T)
    if unbalance != 1:
        Ws[0] = Ws[0] * unbalance
        Ws[1] = Ws[1] / unbalance
    return Ws, U, V, a, pairs


@functools.cache
def end_to_end_rule(depth: int, unbalance: int = 1) -> Proof:
    """At a symbolic balanced 2×2 point of depth N (any singular values, any rotations, any gradient G):
    Σ_j (W_N⋯W_{j+1}) Ẇ_j (W_{j−1}⋯W_1) = −Σ_j (WWᵀ)^{(j−1)/N} G (WᵀW)^{(N−j)/N}, with the fractional powers
    (WWᵀ)^{k/N} = U S^{2k/N} Uᵀ, (WᵀW)^{k/N} = V S^{2k/N} Vᵀ of the PSD matrices."""
    N = depth
    Ws, U, V, a, pairs = _balanced_point(N, unbalance=unbalance)
    G = _symbolic_matrix("G", 2, 2)
    Vel = _factor_velocities(Ws, G)
    lhs = sp.zeros(2, 2)
    for j in range(N):
        lhs += _chain(Ws[j + 1:], 2) * Vel[j] * _chain(Ws[:j], 2)
    rhs = sp.zeros(2, 2)
    for j in range(1, N + 1):
        left = U * sp.diag(*(x ** (2 * (j - 1)) for x in a)) * U.T
        right = V * sp.diag(*(x ** (2 * (N - j)) for x in a)) * V.T
        rhs += -(left * G * right)
    res = (lhs - rhs).applyfunc(lambda e: _on_orthogonal_group(e, pairs))
    ok = all(e == 0 for e in res)
    return Proof(f"end-to-end rule Ẇ = −Σ_j (WWᵀ)^((j−1)/N) ∇ℓ (WᵀW)^((N−j)/N) at a balanced 2×2 point, N = {N}",
                 ok, "0" if ok else str(res.tolist()))


@functools.cache
def singular_value_rule(depth: int, unbalance: int = 1) -> Proof:
    """At a symbolic balanced 2×2 point: u_rᵀ Ẇ v_r = −N σ_r^{2−2/N} u_rᵀ G v_r for r = 1, 2, with Ẇ formed from
    the factor velocities and σ_r = a_r^N (so σ_r^{2−2/N} = a_r^{2N−2}); u_r, v_r the columns of U, V.
    (For distinct σ_r, u_rᵀẆv_r is dσ_r/dt by first-order perturbation theory of the SVD.)"""
    N = depth
    Ws, U, V, a, pairs = _balanced_point(N, unbalance=unbalance)
    G = _symbolic_matrix("G", 2, 2)
    Vel = _factor_velocities(Ws, G)
    Wdot = sp.zeros(2, 2)
    for j in range(N):
        Wdot += _chain(Ws[j + 1:], 2) * Vel[j] * _chain(Ws[:j], 2)
    res = []
    for r in range(2):
        u, v = U[:, r], V[:, r]
        lhs = (u.T * Wdot * v)[0, 0]
        rhs = -N * a[r] ** (2 * N - 2) * (u.T * G * v)[0, 0]
        res.append(_on_orthogonal_group(lhs - rhs, pairs))
    ok = all(e == 0 for e in res)
    return Proof(f"σ̇_r = −N σ_r^(2−2/N) ⟨∇ℓ, u_r v_rᵀ⟩ at a balanced 2×2 point, N = {N}", ok,
                 "0" if ok else str(res))
