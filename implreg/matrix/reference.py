"""High-precision reference integrator for gradient flow on deep matrix factorization (the trusted oracle).

``dW_j/dt = −(W_N⋯W_{j+1})ᵀ ∇ℓ(W) (W_{j−1}⋯W_1)ᵀ``,  ``W = W_N⋯W_1``,  ``∇ℓ(W) = Σ_k r_k A_k``
(Arora et al. 2018, eq. 4), integrated for ONE instance at a chosen number of decimal digits.

Method — a Taylor series method of high order, written for this vector field alone (it shares no code with
the torch simulator; only the problem definition, a mask/target or A/y, is taken from ``implreg.matrix.problems``):

* The vector field is a polynomial in the factor entries, so the Taylor coefficients of the solution follow
  exactly from Cauchy products of power series (automatic differentiation of power series): with prefix
  products ``P_j = W_j⋯W_1``, top-down products ``L_{j−1} = W_jᵀ L_j`` (``L_N = ∇ℓ(W)``) and
  ``W_j^{[k+1]} = −(L_j P_{j−1}ᵀ)^{[k]} / (k+1)``, every order costs O(k) small matrix products; order p
  costs O(p²) of them.  The series is computed in the scaled variable ``s = (t − t_n)/h`` so that its
  coefficients are those of the step actually taken.
* Arithmetic is binary fixed point on integers: a number is ``n · 2^−F`` with ``F = ⌈dps·log2 10⌉ + 24``
  guard bits; a whole Cauchy-product entry is summed exactly and rounded once (``(tot + half) >> F``, or
  ``_round_div`` where the 1/(k+1) of the next coefficient enters).  Inside ``_taylor`` each series is a list of
  exact ``flint.fmpz_mat`` coefficients, so coefficient k of a product is k + 1 small matrix products summed in
  C (FLINT) instead of d³ Python-level dot products; the exact sums, hence all rounded integers, are those of
  the former per-entry Python code (kept verbatim as the oracle of tests/test_reference_taylor_speed.py).  Dense
  output and step control work on the coefficients as Python ints.  Fixed point is ~5× faster than ``mpf``
  arithmetic (``fdot``); inputs convert exactly (a float64 is a dyadic rational) up to the last of F bits,
  outputs are ``mpf`` made under ``mp.workdps(dps)``.
* Order ``p = ⌈½ ln(1/tol)⌉ + 4`` (the cost-optimal order of a Taylor method; Jorba & Zou 2005), so the
  step is ≈ e⁻² × the radius of convergence.  Step control is genuine and needs no rejected steps: after
  the coefficients ``b_k`` are computed for a trial step, the local error is estimated by the last two terms
  ``‖b_{p−1}‖σ^{p−1} + ‖b_p‖σ^p`` (which over-estimates the neglected tail ``Σ_{k>p}`` by about e⁴ when the
  coefficients decay like the radius of convergence dictates); if it exceeds ``tol · max(1, ‖θ‖∞)`` the
  step is shortened by σ < 1 by rescaling the same coefficients ``b_k ← b_k σ^k`` (exact for a power series).
* Global error: local errors are propagated along the trajectory by the variational equation
  ``δθ' = −∇²L(θ(t)) δθ`` (each step's transition matrix ``exp(−h ∇²L(θ_mid))``, Hessian in float64 by exact
  linearization): ``E(t) = ‖Φ(t,0)‖ δθ_0 + Σ_m ‖Φ(t, t_{m+1})‖ ‖ε_m‖`` with the products formed, not their
  norms multiplied.  It is first order in the error and takes the worst direction for every local error, so it
  is pessimistic where the flow amplifies some directions strongly: across the saddle escape from a 1e-2 init
  ``‖Φ(100, 0)‖ ≈ 1e10`` (measured: perturbing the init by 1e-30 moves θ(80) by ~1e-20), while the actual
  truncation errors are not in those directions — at 30 digits the Razin–Cohen hard case claims ~1e-15 at
  t = 100 where the difference to a 60-digit run is ~1e-28.  Honest (tests: never below the difference to a
  run at another precision or to closed forms), not tight; escalation (``solve_until_resolved``) absorbs it.
* Dense output: inside a step the series is the solution (to the same error), so ``save_at`` points and
  loss-level crossings are evaluated on it; a crossing ``ℓ(θ(s)) = level`` is located on ``[0, 1]`` by the
  Illinois variant of regula falsi with bisection safeguard, to the last bit of s.

Why not ``mpmath.odefun``: it is also a Taylor method, but generic (it re-derives coefficients by repeated
evaluation) — about 0.4 s per unit time for a depth-2 2×2 instance at 30 digits, ~20 s for t = 50.

Measured on one CPU core (Razin–Cohen 2×2, balanced init from a 1e-2-scale W(0) with det > 0): depth 2 at
30 digits: t = 10: 0.1 s, t = 50: 0.15 s, t = 100: 0.3 s; at 60 digits 0.4 s, 0.6 s, 0.8 s.  Depth 3 at 30
digits: 0.2 s, 0.5–0.8 s, 0.9 s; at 60 digits 0.9–1.5 s, 1.5–2.3 s, 2.4 s.

``fmpz_mat`` series against the former per-entry Python-int ``_taylor`` (bit-identical results; CPU seconds on one
core with ``OMP_NUM_THREADS=1``, best of two alternating runs; balanced init from a 1e-2-scale W(0) with
det > 0, loss levels 0.1 … 3e-3, loss_target 3e-3, t_end 300 at 30 digits / 150 at 60): Razin–Cohen embedding
d = 4: depth 2 2.59 → 1.14 s (2.3×), depth 3 6.08 → 2.62 s (2.3×), depth 4 (t_end 150) 8.84 → 3.62 s (2.4×),
depth 2 at 60 digits 4.41 → 1.78 s (2.5×); d = 3: depth 2 1.24 → 0.69 s (1.8×), depth 3 2.90 → 1.50 s (1.9×),
depth 4 3.89 → 2.04 s (1.9×), depth 3 at 60 digits 8.37 → 4.32 s (1.9×); 2×2 (t_end 100): depth 2 0.15 → 0.13 s,
depth 3 0.54 → 0.46 s, at 60 digits 0.60 → 0.59 s and 1.63 → 1.27 s.  What remains is python-flint's fixed cost
per call and per entry, not arithmetic: a 4×4 (3×3) product ≈ 0.7 (0.45) µs, a matrix sum ≈ 0.6 (0.4) µs,
reading, rounding and rebuilding an entry ≈ 0.5 µs (there is no entrywise floor on ``fmpz_mat``), so small
factors gain least.  Separately, numpy's multi-threaded OpenBLAS made the ledger's eigh of the ~48×48 Hessian
cost 3–13 ms instead of 0.2 ms per step on a busy 2-core machine (more than ``_taylor`` at depth 2); run with
``OMP_NUM_THREADS=1`` (as the noxfile does).

The depth-2 hard case (det W(0) > 0, balanced): det W(t) decays like e^{−ct} (≈ 6e-16 at t = 50, 6e-22 at
t = 100 for one such init) and stays positive; at 60 digits the reference certifies the sign
(det ± det_error ≈ 6e-22 ± 4e-46 at t = 100).  Caveat that matters more than the integrator: factors that are
balanced only to float64 rounding (imbalance ~1e-17) are a *different* initial condition, whose exact flow
does lose the sign (at t ≈ 60–100); the reference faithfully reproduces that.  Build balanced factors at the
reference's precision with ``balanced_factors`` (see its docstring).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import reduce
from operator import add, mul
from typing import Any

import numpy as np
from flint import fmpz, fmpz_mat
from mpmath import mp, mpf

from implreg.errors import BudgetExceededError, InvalidInputError, NumericalError
from implreg.matrix.problems import Problem

__all__ = ["ReferenceSolution", "Resolved", "Status", "balanced_factors", "solve", "solve_until_resolved"]

_GUARD_BITS = 24
_BLOWUP = 10**30  # |entry| above this is treated as a blow-up
_GROWTH = 8.0  # at most this factor of step growth per step
_SAFETY = 0.85  # shortened steps aim at this fraction of the tolerated step


class Status(StrEnum):
    """How a reference solve ended (the value is the stable code; ``describe`` reads as a sentence)."""

    REACHED_T_END = "reached_t_end"
    REACHED_LOSS = "reached_loss"

    def describe(self) -> str:
        return {"reached_t_end": "integrated up to t_end", "reached_loss": "stopped where ℓ reached loss_target"}[
            self.value
        ]


# ======================================================================================================
# Fixed-point helpers (a number is an int n standing for n · 2^-F)
# ======================================================================================================
def _round_div(n: int, d: int) -> int:
    """round(n / d) for d > 0 (half up)."""
    return (2 * n + d) // (2 * d)


def _round_shift(n: int, s: int) -> int:
    """round(n / 2^s)."""
    if s <= 0:
        return n << -s
    return (n + (1 << (s - 1))) >> s


def _to_fixed(x: Any, F: int, what: str) -> int:
    """Exact (to the last of F bits) fixed-point image of a real scalar: int, float, numpy scalar or mpf."""
    if isinstance(x, bool | np.bool_):
        x = int(x)
    if isinstance(x, int | np.integer):
        return int(x) << F
    if isinstance(x, float | np.floating):
        x = float(x)
        if not math.isfinite(x):
            raise InvalidInputError(f"{what} has NaN/Inf entries")
        num, den = x.as_integer_ratio()
        return _round_div(num << F, den)
    if isinstance(x, mpf):
        if not mp.isfinite(x):
            raise InvalidInputError(f"{what} has NaN/Inf entries")
        sign, man, exp, _ = x._mpf_
        v = -man if sign else man
        return _round_shift(v, -(exp + F))
    raise InvalidInputError(f"{what} has an entry of unsupported type {type(x).__name__} (need a real number)")


def _log2(n: int) -> float:
    """log2 |n| for a nonzero int of any size."""
    return math.log2(abs(n))


def _pow2_fixed(x: float, F: int) -> int:
    """round(2^x · 2^F) for a float x (any size), without float overflow or underflow."""
    e = F + x
    if e < -1:
        return 0
    ip = math.floor(e)
    return _round_shift(int(2.0 ** (e - ip) * 2**60), 60 - ip)


# ======================================================================================================
# Input conversion
# ======================================================================================================
def _nested(x: Any, ndim: int, what: str) -> list:
    """A real array-like (torch / numpy / mpmath matrix / nested lists) as nested Python lists of scalars,
    with one leading batch axis of size 1 removed if present."""
    try:
        import torch  # local: torch is only needed to recognise tensors

        if isinstance(x, torch.Tensor):
            if x.is_complex():
                raise InvalidInputError(f"{what} must be real, got dtype {x.dtype}")
            x = x.detach().to("cpu")
            x = x.numpy() if x.dtype in (torch.float64, torch.int64, torch.int32) else x.double().numpy()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(x, mp.matrix):
        x = [[x[i, j] for j in range(x.cols)] for i in range(x.rows)]
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            x = x.tolist()
        elif np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer):
            if x.dtype.itemsize > 8 and np.issubdtype(x.dtype, np.floating):
                raise InvalidInputError(f"{what}: extended-precision float arrays are not supported; pass mpf")
            x = x.tolist()
        else:
            raise InvalidInputError(f"{what} must be a real array, got dtype {x.dtype}")
    shape = _shape_of(x, what)
    if len(shape) == ndim + 1 and shape[0] == 1:
        x, shape = x[0], shape[1:]
    if len(shape) != ndim:
        raise InvalidInputError(f"{what} must have {ndim} dimensions (one instance, no batch), got shape {shape}")
    return x


def _shape_of(x: Any, what: str) -> tuple[int, ...]:
    if isinstance(x, list | tuple):
        if len(x) == 0:
            return (0,)
        subs = [_shape_of(e, what) for e in x]
        if any(s != subs[0] for s in subs):
            raise InvalidInputError(f"{what} is ragged (rows of different shapes)")
        return (len(x), *subs[0])
    return ()


def _map_fixed(x: list, F: int, what: str) -> list:
    if isinstance(x, list | tuple):
        return [_map_fixed(e, F, what) for e in x]
    return _to_fixed(x, F, what)


@dataclass(frozen=True)
class _FixedProblem:
    """The problem's loss in fixed point: completion (observed entries) or sensing (A, y)."""

    shape: tuple[int, int]
    kind: str  # "completion" | "sensing"
    F: int
    observed: tuple[tuple[int, int, int], ...] = ()  # (i, j, b_ij)
    A: tuple[tuple[int, ...], ...] = ()  # each A_k flattened row-major
    y: tuple[int, ...] = ()

    def residuals(self, W: list[list[int]]) -> list[int]:
        if self.kind == "completion":
            return [W[i][j] - b for i, j, b in self.observed]
        flat = [v for row in W for v in row]
        return [_round_shift(sum(map(mul, a, flat)), self.F) - yk for a, yk in zip(self.A, self.y, strict=True)]

    def loss(self, W: list[list[int]]) -> int:
        r = self.residuals(W)
        return _round_shift(sum(v * v for v in r), self.F + 1)

    def grad_coefficient(self, Wk: list[list[int]], first: bool) -> list[list[int]]:
        """Coefficient k of the series of ∇ℓ(W(s)) from coefficient k of W (the map is affine)."""
        d, e = self.shape
        G = [[0] * e for _ in range(d)]
        if self.kind == "completion":
            for i, j, b in self.observed:
                G[i][j] = Wk[i][j] - b if first else Wk[i][j]
            return G
        flat = [v for row in Wk for v in row]
        r = [_round_shift(sum(map(mul, a, flat)), self.F) for a in self.A]
        if first:
            r = [rk - yk for rk, yk in zip(r, self.y, strict=True)]
        for i in range(d):
            for j in range(e):
                G[i][j] = _round_shift(sum(rk * a[i * e + j] for rk, a in zip(r, self.A, strict=True)), self.F)
        return G

    def as_float(self) -> dict[str, np.ndarray]:
        one = 1 << self.F
        d, e = self.shape
        if self.kind == "completion":
            mask, target = np.zeros((d, e)), np.zeros((d, e))
            for i, j, b in self.observed:
                mask[i, j], target[i, j] = 1.0, b / one
            return {"mask": mask, "target": target}
        A = np.array([[v / one for v in a] for a in self.A]).reshape(len(self.A), d, e)
        return {"A": A, "y": np.array([v / one for v in self.y])}


def _fixed_problem(problem: Any, F: int) -> tuple[_FixedProblem, str]:
    if isinstance(problem, Problem):
        if problem.batch != 1:
            raise InvalidInputError(
                f"the reference solves one instance; problem '{problem.name}' has batch {problem.batch} "
                "(use problem.select([i]))"
            )
        name, tensors = problem.name, problem.tensors()
    elif isinstance(problem, dict):
        name, tensors = None, problem
    else:
        raise InvalidInputError(
            f"problem must be an implreg.matrix.problems.Problem or a dict of tensors, got {type(problem).__name__}"
        )
    keys = set(tensors)
    if keys == {"mask", "target"}:
        mask = _nested(tensors["mask"], 2, "mask")
        target = _nested(tensors["target"], 2, "target")
        ms, ts = _shape_of(mask, "mask"), _shape_of(target, "target")
        if ms != ts or 0 in ms:
            raise InvalidInputError(f"mask shape {ms} does not match target shape {ts} (or is empty)")
        observed = []
        for i, (mrow, trow) in enumerate(zip(mask, target, strict=True)):
            for j, (m, b) in enumerate(zip(mrow, trow, strict=True)):
                mv = _to_fixed(m, 0, "mask")
                bv = _to_fixed(b, F, "target")
                if _to_fixed(m, 8, "mask") not in (0, 1 << 8):
                    raise InvalidInputError(f"mask entries must be 0 or 1, got {m} at ({i}, {j})")
                if mv == 1:
                    observed.append((i, j, bv))
        fp = _FixedProblem(shape=(ms[0], ms[1]), kind="completion", F=F, observed=tuple(observed))
        return fp, name or "completion"
    if keys == {"A", "y"}:
        A = _nested(tensors["A"], 3, "A")
        y = _nested(tensors["y"], 1, "y")
        As, ys = _shape_of(A, "A"), _shape_of(y, "y")
        if As[0] != ys[0] or 0 in As:
            raise InvalidInputError(f"A shape {As} does not match y shape {ys} (need A (m, d, d'), y (m,))")
        Af = tuple(tuple(v for row in _map_fixed(a, F, "A") for v in row) for a in A)
        fp = _FixedProblem(shape=(As[1], As[2]), kind="sensing", F=F, A=Af, y=tuple(_map_fixed(y, F, "y")))
        return fp, name or "sensing"
    raise InvalidInputError(
        f"problem tensors must be {{'mask', 'target'}} (completion) or {{'A', 'y'}} (sensing), got {sorted(keys)}"
    )


# ======================================================================================================
# The vector field: Taylor coefficients by Cauchy products, and float64 linearization for error propagation
# ======================================================================================================
Matrix = list[list[int]]
Series = list[list[list[int]]]  # entry (a, b) -> coefficients [c_0, c_1, ...]


def _series_coeff(A: list[Any], B: list[Any]) -> Any:
    """Coefficient k of the product of two matrix series: ``Σ_{i=0..k} A^{[i]} B^{[k−i]}``, exact (fmpz_mat)."""
    return reduce(add, map(mul, A, reversed(B)))


def _taylor(fp: _FixedProblem, X: list[Matrix], H: int, p: int) -> list[Series]:
    """Coefficients 0..p of θ(t_n + H s) in s (fixed point), for factors X = (W_1, …, W_N) at t_n.

    Every series is held as one exact ``fmpz_mat`` per coefficient, so a Cauchy-product coefficient is k + 1
    small matrix products summed in C; each coefficient is rounded once, entry by entry, as before.
    """
    F = fp.F
    N = len(X)
    rows = [len(Xj) for Xj in X]  # d_j
    cols = [len(Xj[0]) for Xj in X]  # d_{j-1}
    d0, dN = cols[0], rows[-1]
    half = fmpz(1 << (F - 1))
    # constant matrices of `half` (P_j and L_j both have d0 columns): (T + half) >> F rounds T / 2^F
    halves = {r: fmpz_mat(r, d0, [half] * (r * d0)) for r in {*rows, *cols}}
    neg_2h = fmpz(-2 * H)
    completion = fp.kind == "completion"
    if completion:  # ∇ℓ's coefficient is the masked coefficient of W (minus the target at k = 0)
        observed = [False] * (dN * d0)
        target = [0] * (dN * d0)
        for i, j, b in fp.observed:
            observed[i * d0 + j], target[i * d0 + j] = True, b

    S: list[list[Any]] = [[fmpz_mat(Xj)] for Xj in X]  # S[j][k]: coefficient k of W_{j+1}
    St: list[list[Any]] = [[Sj[0].transpose()] for Sj in S]
    pre: list[list[Any]] = [S[0]] + [[] for _ in range(1, N)]  # pre[j][k]: coefficient k of W_{j+1}⋯W_1
    pre_t: list[list[Any]] = [St[0]] + [[] for _ in range(1, N)]
    L: list[list[Any]] = [[] for _ in range(N)]
    flat: list[list[list]] = [[[v for row in Xj for v in row]] for Xj in X]  # S[j][k] entries, row-major
    for k in range(p):
        # prefix products P_j = W_j P_{j-1}, coefficient k
        top: list = flat[0][k]
        for j in range(1, N):
            top = [v >> F for v in (_series_coeff(S[j], pre[j - 1]) + halves[rows[j]]).entries()]
            P = fmpz_mat(rows[j], d0, top)
            pre[j].append(P)
            pre_t[j].append(P.transpose())
        if completion:
            g = [v if o else 0 for v, o in zip(top, observed, strict=True)]
            if k == 0:
                g = [v - b for v, b in zip(g, target, strict=True)]
            G = fmpz_mat(dN, d0, g)
        else:
            Wk = [[int(v) for v in top[a * d0 : (a + 1) * d0]] for a in range(dN)]
            G = fmpz_mat(fp.grad_coefficient(Wk, k == 0))
        L[N - 1].append(G)
        # top-down L_{j-1} = W_jᵀ L_j, coefficient k
        for j in range(N - 1, 0, -1):
            c = cols[j]
            e = [v >> F for v in (_series_coeff(St[j], L[j]) + halves[c]).entries()]
            L[j - 1].append(fmpz_mat(c, d0, e))
        # next coefficients W_j^{[k+1]} = −H (L_j P_{j−1}ᵀ)^{[k]} / (k+1): round_div(−H·tot, (k+1)·2^{2F}), and
        # round_div(−H·L_0, (k+1)·2^F) for j = 0, as (−2H·tot + den) // (2·den).  All are formed before any is
        # appended, because P_0 = W_1 is S[0] itself and must not grow before it is used at this order.
        den1, den2 = fmpz((k + 1) << F), fmpz((k + 1) << (2 * F))
        twice1, twice2 = 2 * den1, 2 * den2
        new = [[(v + den1) // twice1 for v in (L[0][k] * neg_2h).entries()]]
        for j in range(1, N):
            tot = _series_coeff(L[j], pre_t[j - 1]) * neg_2h
            new.append([(v + den2) // twice2 for v in tot.entries()])
        for j, e in enumerate(new):
            M = fmpz_mat(rows[j], cols[j], e)
            S[j].append(M)
            St[j].append(M.transpose())
            flat[j].append(e)
    out: list[Series] = []
    for j in range(N):
        by_entry = list(zip(*flat[j], strict=True))  # per entry (row-major), its coefficients 0..p
        c = cols[j]
        out.append([[list(map(int, by_entry[a * c + b])) for b in range(c)] for a in range(rows[j])])
    return out


def _coeff_norm(S: list[Series], k: int) -> int:
    return max(abs(c[k]) for Sj in S for row in Sj for c in row)


def _rescale(S: list[Series], sigma: int, F: int) -> None:
    """b_k ← b_k σ^k in place (σ in fixed point, ≤ 1).

    The powers σ^k are kept in floating form (F + 64 significant bits and a binary exponent): in fixed point
    they would underflow to a few significant bits while b_k (computed for the longer trial step) is large.
    """
    width = F + 64
    powers = [(1, 0)]  # σ^k = m · 2^−e
    m, e = 1, 0
    for _ in range(max(len(c) for Sj in S for row in Sj for c in row) - 1):
        m, e = m * sigma, e + F
        extra = m.bit_length() - width
        if extra > 0:
            m, e = _round_shift(m, extra), e - extra
        powers.append((m, e))
    for Sj in S:
        for row in Sj:
            for c in row:
                for k in range(1, len(c)):
                    m, e = powers[k]
                    c[k] = _round_shift(c[k] * m, e)


def _evaluate(S: list[Series], s: int, F: int) -> list[Matrix]:
    """The factors at s ∈ [0, 1] (fixed point) by Horner's rule."""
    one = 1 << F
    if s == one:
        return [[[sum(c) for c in row] for row in Sj] for Sj in S]
    out = []
    for Sj in S:
        M = []
        for row in Sj:
            r = []
            for c in row:
                acc = 0
                for v in reversed(c):
                    acc = _round_shift(acc * s, F) + v
                r.append(acc)
            M.append(r)
        out.append(M)
    return out


def _matmul(A: Matrix, B: Matrix, F: int) -> Matrix:
    Bt = list(zip(*B, strict=True))
    return [[_round_shift(sum(map(mul, a, b)), F) for b in Bt] for a in A]


def _product(X: list[Matrix], F: int) -> Matrix:
    W = X[0]
    for Wj in X[1:]:
        W = _matmul(Wj, W, F)
    return W


def _np_grads(prob: dict[str, np.ndarray], Ws: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
    """Float64 loss and ∂ℓ/∂W_j (used only for error propagation, never for the trajectory)."""
    pre = [Ws[0]]
    for Wj in Ws[1:]:
        pre.append(Wj @ pre[-1])
    W = pre[-1]
    if "mask" in prob:
        r = prob["mask"] * (W - prob["target"])
        G, value = r, 0.5 * float((r * r).sum())
    else:
        r = np.einsum("kij,ij->k", prob["A"], W) - prob["y"]
        G, value = np.einsum("k,kij->ij", r, prob["A"]), 0.5 * float(r @ r)
    N = len(Ws)
    grads: list[np.ndarray] = [None] * N  # type: ignore[list-item]
    left = G
    for j in range(N - 1, -1, -1):
        grads[j] = left if j == 0 else left @ pre[j - 1].T
        if j > 0:
            left = Ws[j].T @ left
    return value, grads


def _np_hessian(prob: dict[str, np.ndarray], Ws: list[np.ndarray]) -> np.ndarray:
    """∇²L(θ) in float64 by exact linearization of the gradient along every coordinate direction."""
    shapes = [W.shape for W in Ws]
    sizes = [a * b for a, b in shapes]
    P = sum(sizes)
    eye = np.eye(P)
    Vs, i = [], 0
    for (a, b), n in zip(shapes, sizes, strict=True):
        Vs.append(eye[:, i : i + n].reshape(P, a, b))
        i += n
    pre, dpre = [Ws[0]], [Vs[0]]
    for Wj, Vj in zip(Ws[1:], Vs[1:], strict=True):
        dpre.append(Vj @ pre[-1] + Wj @ dpre[-1])
        pre.append(Wj @ pre[-1])
    W, dW = pre[-1], dpre[-1]
    if "mask" in prob:
        G, dG = prob["mask"] * (W - prob["target"]), prob["mask"] * dW
    else:
        A = prob["A"]
        r = np.einsum("kij,ij->k", A, W) - prob["y"]
        G = np.einsum("k,kij->ij", r, A)
        dG = np.einsum("pk,kij->pij", np.einsum("kij,pij->pk", A, dW), A)
    N = len(Ws)
    cols = [None] * N
    left, dleft = G, dG
    for j in range(N - 1, -1, -1):
        if j == 0:
            cols[j] = dleft
        else:
            cols[j] = dleft @ pre[j - 1].T + left @ np.swapaxes(dpre[j - 1], -1, -2)
            dleft = np.swapaxes(Vs[j], -1, -2) @ left + Ws[j].T @ dleft
            left = Ws[j].T @ left
    H = np.concatenate([c.reshape(P, -1) for c in cols], axis=1)
    return 0.5 * (H + H.T)


def _coeff_norm2(S: list[Series], k: int) -> mpf:
    """‖b_k‖₂ over all factor entries, in fixed-point units (as an mpf: no overflow)."""
    return mpf(math.isqrt(sum(c[k] * c[k] for Sj in S for row in Sj for c in row)) + 1)


def _norm2(M: np.ndarray) -> float:
    return float(np.linalg.svd(M, compute_uv=False)[0])


class _ErrorLedger:
    """First-order global error of the trajectory, in ‖·‖₂ over all factor entries.

    The error after step n is ``δθ ≈ Φ(t, 0) δθ_0 + Σ_m Φ(t, t_{m+1}) ε_m`` with ε_m the local error of step m
    and Φ the transition matrix of the variational equation ``δθ' = −∇²L(θ(t)) δθ``; each step's Φ is taken
    as ``exp(−h ∇²L(θ(t_m + h/2)))`` (midpoint rule; the Hessian is symmetric, so via its eigenpairs).
    The estimate is ``‖Φ(t,0)‖ ‖δθ_0‖ + Σ_m ‖Φ(t, t_{m+1})‖ ‖ε_m‖``: the actual directions of growth, not a
    product of per-step norms (which during slow divergence overestimates by many orders of magnitude).
    """

    def __init__(self, initial: mpf) -> None:
        self.initial = initial
        self.steps: list[tuple[np.ndarray, np.ndarray, float, mpf]] = []  # (λ, V, h, ‖ε‖)

    def add(self, prob: dict[str, np.ndarray], X_mid: list[Matrix], F: int, h: float, local: mpf) -> bool:
        one = 1 << F
        Ws = [np.array([[v / one for v in row] for row in Xj]) for Xj in X_mid]
        H = _np_hessian(prob, Ws)
        if not np.isfinite(H).all():
            return False
        lam, V = np.linalg.eigh(H)
        self.steps.append((lam, V, h, local))
        return True

    def at(self, n: int, s: int, F: int) -> mpf:
        """Error estimate at fraction s (fixed point, 0 ≤ s ≤ 1) of step n (s = 0: at the start of step n)."""
        if s > 0:
            lam, V, h, local = self.steps[n]
            M = (V * np.exp(-(s / (1 << F)) * h * lam)) @ V.T
            total = local
        else:
            M, total = None, mpf(0)
        for m in range(n - 1, -1, -1):
            lam, V, h, local = self.steps[m]
            total += local * (1.0 if M is None else _norm2(M))
            Phi = (V * np.exp(-h * lam)) @ V.T
            M = Phi if M is None else M @ Phi
            if not np.isfinite(M).all():
                return mp.inf
        return total + self.initial * (1.0 if M is None else _norm2(M))


# ======================================================================================================
# Event location
# ======================================================================================================
def _locate(g: Callable[[int], int], lo: int, hi: int, g_lo: int, g_hi: int) -> int:
    """Smallest-bracket root of g on [lo, hi] (g(lo) > 0 ≥ g(hi)), Illinois regula falsi with bisection
    safeguard; returns the right end of the final bracket (so that g there is ≤ 0)."""
    side = 0
    width = hi - lo
    while hi - lo > 1:
        x = lo + _round_div((hi - lo) * g_lo, g_lo - g_hi) if g_lo != g_hi else (lo + hi) // 2
        x = min(max(x, lo + 1), hi - 1)
        gx = g(x)
        if gx > 0:
            lo, g_lo = x, gx
            if side == -1:
                g_hi //= 2
            side = -1
        else:
            hi, g_hi = x, gx
            if gx == 0:
                return x
            if side == 1:
                g_lo //= 2
            side = 1
        if 2 * (hi - lo) > width:  # too slow: bisect once
            m = (lo + hi) // 2
            gm = g(m)
            if gm > 0:
                lo, g_lo = m, gm
            else:
                hi, g_hi = m, gm
                if gm == 0:
                    return m
            side = 0
        width = hi - lo
    return hi


def _crossing(fp: _FixedProblem, S: list[Series], level: int, loss0: int, loss1: int) -> int:
    """s ∈ (0, 1] where ℓ(θ(s)) first reaches ``level`` inside a step (ℓ(0) = loss0 > level ≥ ℓ(1) = loss1)."""
    F = fp.F

    def g(s: int) -> int:
        return fp.loss(_product(_evaluate(S, s, F), F)) - level

    return _locate(g, 0, 1 << F, loss0 - level, loss1 - level)


# ======================================================================================================
# The solution
# ======================================================================================================
@dataclass
class ReferenceSolution:
    """One reference trajectory's end state and events, in mpmath numbers at ``dps`` digits.

    Errors are estimates of the distance to the exact flow: ``factor_error`` of ‖θ − θ_exact‖₂ over all factor
    entries, ``error_estimate`` of ‖W − W_exact‖_F for the end-to-end matrix (hence of every entry),
    ``loss_error`` of |ℓ − ℓ_exact|.  Compute with the numbers inside ``with sol.workdps():``.
    """

    t_end: mpf
    factors: list  # list[mp.matrix], W_1 … W_N
    end_to_end: Any  # mp.matrix
    loss: mpf
    dps: int
    tol: mpf
    order: int
    error_estimate: mpf
    factor_error: mpf
    loss_error: mpf
    status: Status
    n_steps: int
    wall_time_s: float
    label: str
    loss_levels: list[mpf] = field(default_factory=list)
    level_times: list[mpf | None] = field(default_factory=list)
    level_time_errors: list[mpf | None] = field(default_factory=list)
    level_end_to_end: list[Any] = field(default_factory=list)
    level_factors: list[Any] = field(default_factory=list)
    save_times: list[mpf] = field(default_factory=list)
    save_end_to_end: list[Any] = field(default_factory=list)
    save_factors: list[Any] = field(default_factory=list)
    save_loss: list[mpf | None] = field(default_factory=list)
    save_errors: list[mpf | None] = field(default_factory=list)
    # the estimates behind the records above, per level / save (None where not reached): ‖δθ‖₂ over the
    # factor entries (so a bound on each entry's error) at the recorded state, and ‖δW‖_F at each level
    level_factor_errors: list[mpf | None] = field(default_factory=list)
    level_errors: list[mpf | None] = field(default_factory=list)
    save_factor_errors: list[mpf | None] = field(default_factory=list)

    def workdps(self) -> contextlib.AbstractContextManager:
        """``mp.workdps(self.dps)``: compute with the solution's numbers at the precision they were made at."""
        return mp.workdps(self.dps)

    @property
    def depth(self) -> int:
        return len(self.factors)

    def det(self) -> mpf:
        """det W (square end-to-end matrices only), at the solution's precision."""
        W = self.end_to_end
        if W.rows != W.cols:
            raise InvalidInputError(f"det needs a square end-to-end matrix, got {W.rows}×{W.cols}")
        with self.workdps():
            return mp.det(W)

    def det_error(self) -> mpf:
        """Bound on |det W − det W_exact| for ‖δW‖₂ ≤ δ = error_estimate: Σ_{k≥1} δ^k e_{d−k}(σ(W))
        (Ipsen & Rehman 2008, perturbation bounds for determinants), with e_i the elementary symmetric
        polynomials of the singular values."""
        W = self.end_to_end
        if W.rows != W.cols:
            raise InvalidInputError(f"det needs a square end-to-end matrix, got {W.rows}×{W.cols}")
        sv = np.linalg.svd(self.to_numpy()["end_to_end"], compute_uv=False)
        slack = 1e-14 * float(sv[0]) if len(sv) else 0.0  # float64 SVD error, absolute
        with mp.workprec(64):
            e = [mpf(1)]  # e[i]: elementary symmetric polynomial of degree i of the singular values
            for s in sv:
                s = mpf(float(s) * (1 + 1e-14) + slack)
                e = [e[0], *(e[i] + s * e[i - 1] for i in range(1, len(e))), s * e[-1]]
            n = len(sv)
            return mp.fsum(self.error_estimate**k * e[n - k] for k in range(1, n + 1))

    def to_numpy(self) -> dict[str, Any]:
        """Float64 copies: ``{"t_end", "loss", "error_estimate", "factors": [arrays], "end_to_end": array}``."""
        return {
            "t_end": float(self.t_end),
            "loss": float(self.loss),
            "error_estimate": float(self.error_estimate),
            "factors": [_mp_to_numpy(Wj) for Wj in self.factors],
            "end_to_end": _mp_to_numpy(self.end_to_end),
        }

    def to_torch(self, dtype: Any = None, device: Any = "cpu") -> dict[str, Any]:
        """As ``to_numpy`` but with torch tensors (default float64) for the matrices."""
        import torch

        dtype = torch.float64 if dtype is None else dtype
        out = self.to_numpy()
        out["factors"] = [torch.as_tensor(a, dtype=dtype, device=device) for a in out["factors"]]
        out["end_to_end"] = torch.as_tensor(out["end_to_end"], dtype=dtype, device=device)
        return out

    def describe(self) -> str:
        return (
            f"reference [{self.label}]: {self.status.describe()} at t = {mp.nstr(self.t_end, 12)}, "
            f"ℓ = {mp.nstr(self.loss, 6)}, {self.n_steps} steps of order {self.order} at {self.dps} digits, "
            f"‖δW‖ ≈ {mp.nstr(self.error_estimate, 3)}, {self.wall_time_s:.2f} s"
        )


def _mp_to_numpy(M: Any) -> np.ndarray:
    return np.array([[float(M[i, j]) for j in range(M.cols)] for i in range(M.rows)])


@dataclass(frozen=True)
class Resolved:
    """Outcome of ``solve_until_resolved``: the highest-precision solution, the quantity there, its claimed
    error, and ``agreement`` = |q(dps_i) − q(dps_{i−1})| between the last two precisions."""

    solution: ReferenceSolution
    value: mpf
    error: mpf
    agreement: mpf
    history: list[tuple[int, mpf, mpf]]  # (dps, value, claimed error) per precision tried


# ======================================================================================================
# The solver
# ======================================================================================================
def _as_real(x: Any, what: str) -> mpf:
    try:
        v = mpf(x) if not isinstance(x, mpf) else x
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{what} must be a real number, got {x!r}") from exc
    if not mp.isfinite(v):
        raise InvalidInputError(f"{what} must be finite, got {x!r}")
    return v


def solve(
    problem: Problem | dict[str, Any],
    factors: Sequence[Any],
    *,
    t_end: float,
    dps: int = 30,
    loss_target: float | None = None,
    loss_levels: Sequence[float] = (),
    save_at: Sequence[float] = (),
    tol: Any = None,
    budget_s: float = 30.0,
    label: str | None = None,
) -> ReferenceSolution:
    """Gradient flow ``dW_j/dt = −∂ℓ(W_N⋯W_1)/∂W_j`` of ONE instance from ``factors`` = (W_1, …, W_N) to ``t_end``
    (or to where ℓ first reaches ``loss_target``) with local error ≤ ``tol·max(1, ‖θ‖∞)`` per step at ``dps``
    digits (default tol 10^−(dps−5)).

    ``problem``: a batch-1 ``Problem`` or ``{"mask", "target"}`` / ``{"A", "y"}`` for one instance.  Factor W_j has
    shape (d_j, d_{j−1}); a leading batch axis of size 1 is accepted.  ``loss_levels``: record the state where ℓ
    first reaches each level; ``save_at``: record the state at these times (``None`` where not reached).
    Raises ``InvalidInputError`` on bad input, ``NumericalError`` when the state blows up,
    ``BudgetExceededError`` past ``budget_s`` seconds of wall clock.
    """
    t_start_wall = time.perf_counter()
    # ---- validate scalars --------------------------------------------------------------------------
    if isinstance(dps, bool) or not isinstance(dps, int | np.integer):
        raise InvalidInputError(f"dps must be an integer, got {dps!r}")
    dps = int(dps)
    if dps < 15:
        raise InvalidInputError(f"dps must be ≥ 15 (the reference is meant to beat float64), got {dps}")
    if not (isinstance(budget_s, int | float) and budget_s > 0):
        raise InvalidInputError(f"budget_s must be a positive number of seconds, got {budget_s!r}")
    with mp.workdps(dps):
        t_end_m = _as_real(t_end, "t_end")
        if t_end_m < 0:
            raise InvalidInputError(f"t_end must be ≥ 0, got {t_end}")
        tol_m = mpf(10) ** (-(dps - 5)) if tol is None else _as_real(tol, "tol")
        if not (mpf(10) ** (-dps) <= tol_m < 1):
            raise InvalidInputError(
                f"tol must lie in [10^-{dps}, 1) at {dps} digits, got {mp.nstr(tol_m, 5)} (raise dps for a smaller tol)"
            )
        if loss_target is not None:
            target_m = _as_real(loss_target, "loss_target")
            if target_m < 0:
                raise InvalidInputError(f"loss_target must be ≥ 0, got {loss_target}")
        levels_m = [_as_real(v, "loss level") for v in loss_levels]
        if any(v < 0 for v in levels_m):
            raise InvalidInputError(f"loss levels must be ≥ 0, got {list(loss_levels)}")
        saves_m = [_as_real(v, "save_at time") for v in save_at]
        if any(v < 0 or v > t_end_m for v in saves_m):
            raise InvalidInputError(f"save_at times must lie in [0, t_end = {t_end}], got {list(save_at)}")

    F = math.ceil(dps * math.log2(10)) + _GUARD_BITS
    one = 1 << F
    fp, pname = _fixed_problem(problem, F)
    # ---- factors -----------------------------------------------------------------------------------
    if isinstance(factors, (str, bytes)) or not isinstance(factors, Sequence) or len(factors) == 0:
        raise InvalidInputError("factors must be a non-empty sequence (W_1, …, W_N)")
    X: list[Matrix] = []
    for j, Wj in enumerate(factors, start=1):
        nested = _nested(Wj, 2, f"factor W_{j}")
        shape = _shape_of(nested, f"factor W_{j}")
        if 0 in shape:
            raise InvalidInputError(f"factor W_{j} is empty, shape {shape}")
        if j > 1 and shape[1] != len(X[-1]):
            raise InvalidInputError(f"factor W_{j} has {shape[1]} columns but W_{j - 1} has {len(X[-1])} rows")
        X.append(_map_fixed(nested, F, f"factor W_{j}"))
    d, e = fp.shape
    if len(X[-1]) != d or len(X[0][0]) != e:
        raise InvalidInputError(
            f"the product W_N⋯W_1 would be {len(X[-1])}×{len(X[0][0])}; problem '{pname}' is {d}×{e}"
        )
    N = len(X)
    P = sum(len(Xj) * len(Xj[0]) for Xj in X)
    dims = (e, *(len(Xj) for Xj in X))
    if label is None:
        digest = hashlib.sha1(repr((fp, X)).encode()).hexdigest()[:10]
        label = f"{pname} {d}×{e}, depth {N}, dims {dims}, instance {digest}"

    # ---- integration state -------------------------------------------------------------------------
    with mp.workprec(64):
        log2_tol = float(mp.log(tol_m, 2))
    order = max(12, math.ceil(0.5 * -float(mp.log(tol_m))) + 4)
    prob_f = fp.as_float()
    T_end = _to_fixed(t_end_m, F, "t_end")
    t = 0
    ledger = _ErrorLedger(mpf(2) ** (-F) * math.sqrt(P))  # initial error: rounding the input to F bits
    rounding = mpf(2) ** (-F) * 64 * order * math.sqrt(P)  # per step, a generous bound on rounding
    loss_now = fp.loss(_product(X, F))
    levels_fixed = [_to_fixed(v, F, "loss level") for v in levels_m]
    target_fixed = None if loss_target is None else _to_fixed(target_m, F, "loss_target")
    # a record is (t, factors, (step index n, fraction s of step n)) for the error ledger
    level_hits: list[tuple[int, list[Matrix], tuple[int, int]] | None] = [None] * len(levels_fixed)
    save_order = sorted(range(len(saves_m)), key=lambda i: saves_m[i])
    saves_fixed = [_to_fixed(v, F, "save_at time") for v in saves_m]
    save_hits: list[tuple[int, list[Matrix], tuple[int, int]] | None] = [None] * len(saves_fixed)
    next_save = 0
    status = Status.REACHED_T_END
    h_pred = min(one, T_end)
    where = (0, 0)  # ledger position of the current state

    for i, lv in enumerate(levels_fixed):
        if loss_now <= lv:
            level_hits[i] = (0, X, where)
    stop = target_fixed is not None and loss_now <= target_fixed
    if stop:
        status = Status.REACHED_LOSS
    while next_save < len(save_order) and saves_fixed[save_order[next_save]] <= 0:
        save_hits[save_order[next_save]] = (0, X, where)
        next_save += 1

    while not stop and t < T_end:
        n = len(ledger.steps)
        elapsed = time.perf_counter() - t_start_wall
        if elapsed > budget_s:
            raise BudgetExceededError(
                f"reference solve exceeded its wall-clock budget of {budget_s:g} s: reached "
                f"t = {t / one:.6g} of t_end = {float(t_end_m):g} after {n} steps ({elapsed:.2f} s, "
                f"dps {dps}) on [{label}]"
            )
        H = min(h_pred, T_end - t)
        S = _taylor(fp, X, H, order)
        # ---- step control: shorten by σ < 1 (rescaling the same series) if the tail exceeds tol --------
        scale = max(one, max(abs(v) for Xj in X for row in Xj for v in row))
        lt_fixed = log2_tol + _log2(scale)  # log2 of the tolerated error, in fixed-point units
        n1, n2 = _coeff_norm(S, order - 1), _coeff_norm(S, order)
        log_sig = math.inf  # log2 of the largest σ with ‖b_{p−1}‖σ^{p−1} + ‖b_p‖σ^p ≤ tolerated error
        for nk, k in ((n1, order - 1), (n2, order)):
            if nk > 0:
                log_sig = min(log_sig, (lt_fixed - 1 - _log2(nk)) / k)
        if log_sig >= 0:  # the trial step is accurate enough: take it, and grow the next one
            h_used = H
            grow = min(_GROWTH, max(1.0, _SAFETY * 2.0 ** min(log_sig, 10)))
            h_pred = max(H, (H * int(grow * 2**20)) >> 20)
        else:  # shorten the step: the same series, rescaled
            sigma = _pow2_fixed(log_sig + math.log2(_SAFETY), F)
            h_used = _round_shift(H * sigma, F)
            if sigma <= 0 or h_used <= 0:
                raise NumericalError(
                    f"reference step size underflowed at t = {t / one:.6g} (the solution is near a "
                    f"singularity) on [{label}]"
                )
            _rescale(S, sigma, F)
            h_pred = h_used
        local = (_coeff_norm2(S, order - 1) + _coeff_norm2(S, order)) * mpf(2) ** (-F) + rounding
        X_new = _evaluate(S, one, F)
        big = max(abs(v) for Xj in X_new for row in Xj for v in row)
        if big > _BLOWUP * one:  # (ints: no float overflow at any precision)
            raise NumericalError(
                f"reference state blew up (max |entry| ≈ {big / one:.3g}) at t = {(t + h_used) / one:.6g} "
                f"on [{label}]"
            )
        if not ledger.add(prob_f, _evaluate(S, one >> 1, F), F, h_used / one, local):
            raise NumericalError(f"reference Hessian is not finite near t = {t / one:.6g} on [{label}]")
        loss_new = fp.loss(_product(X_new, F))

        # ---- events inside (t, t + h] ----------------------------------------------------------------
        s_stop = one
        hit_target = target_fixed is not None and loss_new <= target_fixed
        if hit_target:
            s_stop = _crossing(fp, S, target_fixed, loss_now, loss_new)
        for i, lv in enumerate(levels_fixed):
            if level_hits[i] is None and loss_new <= lv:
                s_i = _crossing(fp, S, lv, loss_now, loss_new)
                if s_i <= s_stop:
                    level_hits[i] = (t + _round_shift(h_used * s_i, F), _evaluate(S, s_i, F), (n, s_i))
        t_stop = t + _round_shift(h_used * s_stop, F)
        while next_save < len(save_order) and saves_fixed[save_order[next_save]] <= t_stop:
            i = save_order[next_save]
            s_i = min(_round_div((saves_fixed[i] - t) << F, h_used), one)
            save_hits[i] = (saves_fixed[i], _evaluate(S, s_i, F), (n, s_i))
            next_save += 1
        if hit_target:
            X, t, where = _evaluate(S, s_stop, F), t_stop, (n, s_stop)
            status = Status.REACHED_LOSS
            stop = True
        else:
            X, t, where, loss_now = X_new, t + h_used, (n, one), loss_new
    n_steps = len(ledger.steps)

    # ---- assemble the result at dps digits ---------------------------------------------------------
    with mp.workdps(dps):

        def to_mp(M: Matrix) -> Any:
            return mp.matrix([[mpf((v, -F)) for v in row] for row in M])

        a_norm2 = 1.0 if fp.kind == "completion" else float(sum((A * A).sum() for A in prob_f["A"]))

        def errors(Xs: list[Matrix], Eth: mpf) -> tuple[mpf, mpf]:
            """(‖δW‖_F, |δℓ|) from ‖δθ‖₂ ≤ Eth: ‖δW‖_F ≤ Σ_j Π_{i≠j} ‖W_i‖₂ ‖δθ‖₂ (first order), and
            |δℓ| ≤ ‖∇ℓ(W)‖_F ‖δW‖_F + ½ ‖𝒜‖² ‖δW‖_F² (ℓ is quadratic in W)."""
            Ws = [np.array([[v / one for v in row] for row in Xj]) for Xj in Xs]
            norms = [float(np.linalg.norm(Wj, 2)) for Wj in Ws]
            dW = Eth * mp.fsum(math.prod(norms[:j] + norms[j + 1 :]) for j in range(len(Ws)))
            W = Ws[0]
            for Wj in Ws[1:]:
                W = Wj @ W
            if fp.kind == "completion":
                G = prob_f["mask"] * (W - prob_f["target"])
            else:
                G = np.einsum("k,kij->ij", np.einsum("kij,ij->k", prob_f["A"], W) - prob_f["y"], prob_f["A"])
            return dW, float(np.linalg.norm(G)) * dW + 0.5 * a_norm2 * dW**2

        def state(Xs: list[Matrix]) -> tuple[list, Any, mpf]:
            W = _product(Xs, F)
            return [to_mp(Xj) for Xj in Xs], to_mp(W), mpf((fp.loss(W), -F))

        fac, W_mp, loss_mp = state(X)
        E = ledger.at(*where, F)
        err_W, err_loss = errors(X, E)
        sol = ReferenceSolution(
            t_end=mpf((t, -F)), factors=fac, end_to_end=W_mp, loss=loss_mp, dps=dps, tol=tol_m, order=order,
            error_estimate=err_W, factor_error=+E, loss_error=err_loss, status=status, n_steps=n_steps,
            wall_time_s=0.0, label=label, loss_levels=levels_m, save_times=saves_m,
        )
        for hit in level_hits:
            if hit is None:
                sol.level_times.append(None)
                sol.level_time_errors.append(None)
                sol.level_end_to_end.append(None)
                sol.level_factors.append(None)
                sol.level_factor_errors.append(None)
                sol.level_errors.append(None)
                continue
            th, Xh, wh = hit
            Eh = ledger.at(*wh, F)
            fac_h, W_h, _ = state(Xh)
            # time error ≈ |δℓ| / |dℓ/dt| = ‖∇L‖ δθ / ‖∇L‖² = δθ / ‖∇L‖
            Ws = [np.array([[v / one for v in row] for row in Xj]) for Xj in Xh]
            _, grads = _np_grads(prob_f, Ws)
            gnorm = math.sqrt(sum(float((g * g).sum()) for g in grads))
            sol.level_times.append(mpf((th, -F)))
            sol.level_time_errors.append(Eh / gnorm if gnorm > 0 else mp.inf)
            sol.level_end_to_end.append(W_h)
            sol.level_factors.append(fac_h)
            sol.level_factor_errors.append(+Eh)
            sol.level_errors.append(errors(Xh, Eh)[0])
        for hit in save_hits:
            if hit is None:
                sol.save_end_to_end.append(None)
                sol.save_factors.append(None)
                sol.save_loss.append(None)
                sol.save_errors.append(None)
                sol.save_factor_errors.append(None)
                continue
            _, Xh, wh = hit
            Eh = ledger.at(*wh, F)
            fac_h, W_h, loss_h = state(Xh)
            sol.save_end_to_end.append(W_h)
            sol.save_factors.append(fac_h)
            sol.save_loss.append(loss_h)
            sol.save_errors.append(errors(Xh, Eh)[0])
            sol.save_factor_errors.append(+Eh)
    sol.wall_time_s = time.perf_counter() - t_start_wall
    return sol


def balanced_factors(W0: Any, depth: int, *, dps: int = 60, width: int | None = None) -> list:
    """Balanced factors of ``W0`` made in mpmath: from ``W0 = U S Vᵀ``, ``W_1 = S^{1/N} Vᵀ``, ``W_j = S^{1/N}``,
    ``W_N = U S^{1/N}`` (Arora et al. 2018, Procedure 1 with identity rotations), so that
    ``W_{j+1}ᵀW_{j+1} = W_j W_jᵀ`` holds to ~10^−(dps+10), not just to float64 rounding.

    Why it matters: under balanced init with det W(0) > 0 the exact flow keeps det W > 0, but det W decays like
    e^{−ct}; an imbalance δ (≈ 1e−17 for factors rounded to float64) is enough for the EXACT flow of the rounded
    factors to lose the sign at t ≈ 40–60 (Razin–Cohen 2×2, depth 2).  A reference run from float64-balanced
    factors faithfully reproduces that sign loss; to check the theorem, build the factors here at the
    reference's precision (``solve_until_resolved`` accepts ``factors=lambda dps: balanced_factors(W0, N, dps=dps)``).
    ``W0``: (d, d') real array-like (one instance; a leading batch axis of size 1 is accepted).
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise InvalidInputError(f"depth must be an integer ≥ 1, got {depth!r}")
    if isinstance(dps, bool) or not isinstance(dps, int) or dps < 15:
        raise InvalidInputError(f"dps must be an integer ≥ 15, got {dps!r}")
    rows = _nested(W0, 2, "W0")
    d, e = _shape_of(rows, "W0")
    with mp.workdps(dps + 10):
        A = mp.matrix([[_as_real(v, "W0 entry") for v in row] for row in rows])
        if depth == 1:
            return [A]
        k = min(d, e)
        h = k if width is None else int(width)
        if h < k:
            raise InvalidInputError(f"balanced factors need hidden width ≥ min(d, d') = {k}, got {h}")
        U, S, V = mp.svd_r(A, full_matrices=False)  # A = U diag(S) V, V (k, e) with orthonormal rows
        r = [S[i] ** (mpf(1) / depth) for i in range(k)]
        first = mp.matrix(h, e)
        last = mp.matrix(d, h)
        middle = mp.matrix(h, h)
        for i in range(k):
            middle[i, i] = r[i]
            for c in range(e):
                first[i, c] = r[i] * V[i, c]
            for a in range(d):
                last[a, i] = U[a, i] * r[i]
        return [first, *(middle.copy() for _ in range(depth - 2)), last]


def solve_until_resolved(
    problem: Problem | dict[str, Any],
    factors: Sequence[Any] | Callable[[int], Sequence[Any]],
    *,
    quantity: Callable[[ReferenceSolution], Any],
    t_end: float,
    dps_schedule: Sequence[int] = (30, 60, 120, 240),
    budget_s: float = 120.0,
    quantity_error: Callable[[ReferenceSolution], Any] | None = None,
    require_sign: bool = False,
    **solve_kwargs: Any,
) -> Resolved:
    """Solve at rising precision until two consecutive precisions agree on ``quantity(sol)``:
    ``factors`` may be a callable ``dps -> factors`` (e.g. ``balanced_factors`` at each precision).

    ``|q_i − q_{i−1}| ≤ err_{i−1} + err_i``, with ``err = quantity_error(sol)`` (default ``sol.error_estimate``,
    right for quantities 1-Lipschitz in the end-to-end entries; pass ``ReferenceSolution.det_error`` for det).
    With ``require_sign`` the last value must also be further from 0 than its error (its sign is certified).

    ``quantity`` and ``quantity_error`` are called inside ``mp.workdps(sol.dps)``.  The wall-clock budget is
    shared by all precisions; ``BudgetExceededError`` when it runs out or the schedule ends unresolved.
    """
    if len(dps_schedule) < 2:
        raise InvalidInputError(f"dps_schedule needs at least two precisions, got {list(dps_schedule)}")
    if list(dps_schedule) != sorted(set(dps_schedule)):
        raise InvalidInputError(f"dps_schedule must be strictly increasing, got {list(dps_schedule)}")
    if not (isinstance(budget_s, int | float) and budget_s > 0):
        raise InvalidInputError(f"budget_s must be a positive number of seconds, got {budget_s!r}")
    err_of = quantity_error or (lambda s: s.error_estimate)
    start = time.perf_counter()
    history: list[tuple[int, mpf, mpf]] = []

    def summary() -> str:
        return ", ".join(f"dps {p}: {mp.nstr(v, 8)} ± {mp.nstr(er, 3)}" for p, v, er in history) or "none finished"

    prev: tuple[mpf, mpf] | None = None
    for dps in dps_schedule:
        remaining = budget_s - (time.perf_counter() - start)
        if remaining <= 0:
            raise BudgetExceededError(
                f"solve_until_resolved ran out of its {budget_s:g} s budget before dps {dps} ({summary()})"
            )
        try:
            init = factors(dps) if callable(factors) else factors
            sol = solve(problem, init, t_end=t_end, dps=dps, budget_s=remaining, **solve_kwargs)
        except BudgetExceededError as exc:
            raise BudgetExceededError(
                f"solve_until_resolved ran out of its {budget_s:g} s budget at dps {dps} ({summary()}): {exc}"
            ) from exc
        with mp.workdps(dps):
            value, err = mpf(quantity(sol)), abs(mpf(err_of(sol)))
            history.append((dps, value, err))
            if prev is not None:
                agreement = abs(value - prev[0])
                agree = agreement <= prev[1] + err
                if agree and (not require_sign or abs(value) > err):
                    return Resolved(solution=sol, value=value, error=err, agreement=agreement, history=history)
            prev = (value, err)
    raise BudgetExceededError(
        f"solve_until_resolved: the precision schedule {list(dps_schedule)} ended without "
        f"{'a certified sign and ' if require_sign else ''}agreement ({summary()})"
    )
