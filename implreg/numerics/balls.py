"""The ball tier: a ``Certified`` graph re-evaluated in Arb ball arithmetic (python-flint) at a precision.

Why Arb: it is the reference implementation of rigorous ball arithmetic (every result encloses the exact
one, rounding included), so no hand-written rounding analysis is needed at this tier.  Exact leaves become
exact balls (a float64 is a dyadic rational, ``arb(float)`` is exact); measured leaves become value ± error,
or the enclosures their ``refine(rows, prec_bits)`` returns; results that are representable come out exact
(radius 0), which decides many equality cases already.
"""

from __future__ import annotations

from typing import Any

import mpmath
import numpy as np
from flint import arb, ctx

from implreg.errors import InvalidInputError
from implreg.numerics.certified import Certified, Refinement

_to_arb = np.frompyfunc(lambda v: arb(float(v)), 1, 1)


def _ball(mid: float, rad: float) -> arb:
    if rad == 0:
        return arb(mid)
    if not np.isfinite(rad):
        return arb(mid, float("inf"))
    return arb(mid, rad)


_to_ball = np.frompyfunc(_ball, 2, 1)


def _powr(x: arb, p: float) -> arb:
    """x^p on x ≥ 0 (of max(x, 0), as the float tier)."""
    xp = x.nonnegative_part()
    if xp.is_zero():
        return arb(0) if p > 0 else arb.nan()
    if xp > 0:
        return xp ** arb(p)
    if p < 0:
        return arb.nan()
    return arb(0).union(xp.upper() ** arb(p))


def _xlogx(x: arb) -> arb:
    """x log x on x ≥ 0 (0 log 0 = 0): the product where the ball is away from 0, else an enclosure of
    {p log p : 0 ≤ p ≤ x⁺}, which is [x⁺ log x⁺, 0] for x⁺ ≤ 1/e and contains −1/e beyond."""
    xp = x.nonnegative_part()
    if xp > 0:
        return xp * xp.log()
    hi = xp.upper()
    if not hi.is_finite():
        return arb.nan()
    if hi.is_zero():
        return arb(0)
    out = arb(0).union(hi * hi.log())
    return out if hi * arb(1).exp() <= 1 else out.union(-arb(1).exp() ** -1)


_UNARY = {
    "neg": np.frompyfunc(lambda x: -x, 1, 1),
    "abs": np.frompyfunc(abs, 1, 1),
    "sqrt": np.frompyfunc(lambda x: x.nonnegative_part().sqrt(), 1, 1),
    "exp": np.frompyfunc(lambda x: x.exp(), 1, 1),
    "log": np.frompyfunc(lambda x: x.log(), 1, 1),
    "xlogx": np.frompyfunc(_xlogx, 1, 1),
}
_MAX2 = np.frompyfunc(lambda a, b: a.max(b), 2, 1)
_MIN2 = np.frompyfunc(lambda a, b: a.min(b), 2, 1)
_SQUARE = np.frompyfunc(lambda a: a**2, 1, 1)


class ArbBackend:
    """Arb arithmetic at ``ctx.prec`` (set by the caller); measured leaves through their refine."""

    def __init__(self, prec: int, refined: dict, exhausted: set, notes: list, refine: bool = True,
                 fill_absent: bool = False):
        self.prec = prec
        self.refine = refine          # False: the leaves' own enclosures (and earlier refinements) only
        self.fill_absent = fill_absent  # True: absent entries (Certified.measured(absent=…)) as an exact 0
        self.filled: list[tuple[Certified, int]] = []   # (leaf, row) whose absent entries were filled
        self.refined = refined        # id(leaf) → {row: object array of that row's balls} (latest refinement)
        self.exhausted = exhausted    # ids of leaves whose refine returned None
        self.notes = notes
        self.rigorous = True          # False once an estimate enclosure was used
        self.refinable_left = False   # some leaf could still be refined at a higher precision
        self.asked: set = set()

    # -- leaves ----------------------------------------------------------------------------------------
    def exact_leaf(self, vals: np.ndarray) -> np.ndarray:
        return _to_arb(vals).astype(object) if vals.ndim else np.array(arb(float(vals)), dtype=object)

    def measured_leaf(self, c: Certified, rows) -> np.ndarray:
        v = c.value.detach().to("cpu").numpy()
        e = c.error.detach().to("cpu").numpy()
        zero_dim = c.ndim == 0
        if zero_dim:
            v, e = v.reshape(1), e.reshape(1)
        idx = np.arange(v.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
        out = _to_ball(v[idx], e[idx]).astype(object) if v.size else np.empty((0,), dtype=object)
        if self.fill_absent and c._p.get("absent") is not None:
            mask = c._p["absent"][0].reshape(v.shape)[idx]
            out[mask] = arb(0)
            self.filled += [(c, int(r)) for r, m in zip(idx, mask.reshape(len(idx), -1).any(-1), strict=True) if m]
        refine = c._p.get("refine")
        cache = self.refined.setdefault(id(c), {})
        if (self.refine and refine is not None and id(c) not in self.exhausted
                and (id(c), self.prec) not in self.asked):
            self.asked.add((id(c), self.prec))
            ref = refine([int(i) for i in idx], self.prec)
            if ref is None:
                self.exhausted.add(id(c))
            else:
                self._check(ref, c, len(idx))
                for j, r in enumerate(idx):
                    cache[int(r)] = (np.asarray(ref.mid, dtype=object)[j], ref.rigorous)
                if ref.note:
                    self.notes.append(ref.note)
                self.refinable_left = True
        leaf_rig = True
        for j, r in enumerate(idx):
            got = cache.get(int(r))
            if got is not None:
                out[j] = got[0]
                leaf_rig_r = got[1]
            else:
                leaf_rig_r = c.rigorous
            leaf_rig = leaf_rig and leaf_rig_r
        if not leaf_rig:
            self.rigorous = False
        return out.reshape(()) if zero_dim else out

    @staticmethod
    def _check(ref: Refinement, c: Certified, k: int) -> None:
        mid = np.asarray(ref.mid, dtype=object)
        want = (k, *tuple(c.shape)[1:]) if c.ndim else (1,)
        if not isinstance(ref, Refinement) or mid.shape != want:
            label = c.label or "measured value"
            raise InvalidInputError(
                f"refine of {label!r} returned {type(ref).__name__} with shape {getattr(mid, 'shape', None)}; "
                f"expected a Refinement with mid of shape {want}")

    # -- operations ------------------------------------------------------------------------------------
    def unary(self, op: str, x: np.ndarray, p: dict) -> np.ndarray:
        if op == "powr":
            f = np.frompyfunc(lambda t: _powr(t, p["p"]), 1, 1)
            return np.asarray(f(x), dtype=object)
        return np.asarray(_UNARY[op](x), dtype=object)

    def binary(self, op: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if op == "add":
            r = x + y
        elif op == "sub":
            r = x - y
        elif op == "mul":
            r = x * y
        elif op == "square":
            r = _SQUARE(x)
        elif op == "div":
            r = x / y
        elif op == "min2":
            r = _MIN2(x, y)
        else:
            r = _MAX2(x, y)
        return np.asarray(r, dtype=object)

    def reduce(self, op: str, x: np.ndarray, dims: tuple[int, ...], keep: bool) -> np.ndarray:
        if op == "sum":
            out = x
            for d in sorted(dims, reverse=True):
                out = np.add.reduce(out, axis=d, keepdims=True) if out.shape[d] else _zeros_like_axis(out, d)
        else:
            f = _MAX2 if op == "amax" else _MIN2
            out = x
            for d in sorted(dims, reverse=True):
                out = f.reduce(out, axis=d, keepdims=True)
        out = np.asarray(out, dtype=object)
        if not keep:
            out = out.reshape([s for i, s in enumerate(out.shape) if i not in dims])
        return out

    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.asarray(np.matmul(a, b), dtype=object)

    def svdvals(self, W: np.ndarray) -> np.ndarray:
        lead, (m, n) = W.shape[:-2], W.shape[-2:]
        flat = W.reshape(-1, m, n)
        out = np.empty((flat.shape[0], min(m, n)), dtype=object)
        for i in range(flat.shape[0]):
            out[i] = svd_enclosure(flat[i], self.prec)
        return out.reshape(*lead, min(m, n))


def _zeros_like_axis(x: np.ndarray, d: int) -> np.ndarray:
    shape = list(x.shape)
    shape[d] = 1
    out = np.empty(shape, dtype=object)
    out.fill(arb(0))
    return out


def _from_mpf(v: Any) -> arb:
    with ctx.workprec(max(mpmath.mp.prec, 53) + 64):
        return +arb(v)


def svd_enclosure(A: np.ndarray, prec: int) -> list[arb]:
    """Balls enclosing σ_1 ≥ … ≥ σ_k of every matrix in the ball matrix A (m×n object array of arb).

    Same a-posteriori bound as the float tier (``linalg.svdvals``): an mpmath SVD Û, Σ̂, V̂ of A's midpoint at
    this precision, then in Arb r ≥ ‖A − ÛΣ̂V̂ᵀ‖_F over the whole ball A, α ≥ ‖ÛᵀÛ − I‖_F, β ≥ ‖V̂V̂ᵀ − I‖_F, and
    σ_i(A) ∈ [σ̂_i√((1−α)(1−β)) − r, σ̂_i√((1+α)(1+β)) + r] ∩ [0, ∞) (σ̂ sorted decreasingly).
    """
    m, n = A.shape
    k = min(m, n)
    with mpmath.workprec(prec + 32):
        M = mpmath.matrix(m, n)
        for i in range(m):
            for j in range(n):
                M[i, j] = mpmath.mpf(A[i, j].mid())
        try:
            U, S, V = mpmath.svd_r(M, compute_uv=True)
        except (ZeroDivisionError, ValueError):
            return [arb.nan()] * k
        Ua = np.array([[_from_mpf(U[i, j]) for j in range(k)] for i in range(m)], dtype=object)
        Sa = [_from_mpf(abs(S[j])) for j in range(k)]
        Va = np.array([[_from_mpf(V[i, j]) for j in range(n)] for i in range(k)], dtype=object)
    Sd = np.empty((k, k), dtype=object)
    Sd.fill(arb(0))
    for j in range(k):
        Sd[j, j] = Sa[j]
    Rm = A - np.matmul(np.matmul(Ua, Sd), Va)
    r = _frob_upper(Rm)
    eye_k = np.empty((k, k), dtype=object)
    eye_k.fill(arb(0))
    for j in range(k):
        eye_k[j, j] = arb(1)
    alpha = _frob_upper(np.matmul(Ua.T, Ua) - eye_k)
    beta = _frob_upper(np.matmul(Va, Va.T) - eye_k)
    if not (alpha < 1 and beta < 1):
        return [arb.nan()] * k
    lo_f = ((1 - alpha) * (1 - beta)).sqrt()
    hi_f = ((1 + alpha) * (1 + beta)).sqrt()
    out = []
    for s in sorted(Sa, key=lambda t: float(t.mid()), reverse=True):
        lo = (s * lo_f - r).lower()
        hi = (s * hi_f + r).upper()
        if not lo > 0:
            lo = arb(0)
        out.append(lo.union(hi))
    return out


def _frob_upper(X: np.ndarray) -> arb:
    """An exact arb ≥ the Frobenius norm of every matrix in the ball matrix X: √(Σ sup|x|²), rounded up.

    Squaring the sup of |x| (an exact number) rather than the ball x keeps every term's enclosure positive: x**2 of
    a ball that straddles 0 (a residual entry, typically) is a ball around ~0 whose sum straddles 0, and its sqrt is
    NaN."""
    s = arb(0)
    for v in X.flat:
        s += abs(v).upper() ** 2
    return s.sqrt().upper()
