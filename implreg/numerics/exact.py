"""The exact tier: a ``Certified`` graph of exact leaves evaluated in exact arithmetic, to decide equality.

Numbers are flint ``fmpq`` (exact rationals; every float64 is one) while the graph stays rational, and sympy
expressions once a square root (or power, exp, log) of a non-square appears.  Singular values are exact for
matrices of rank ≤ 2: σ² are the roots of t² − ‖W‖_F²·t + e₂ with e₂ = (‖W‖_F⁴ − ‖WᵀW‖_F²)/2 (the sum of the
squared 2×2 minors, Cauchy–Binet), the other singular values are 0.  ``sign`` decides whether an exact
number is 0 with sympy's ``minimal_polynomial`` (exact algebraic arithmetic, not a numerical zero test).
"""

from __future__ import annotations

import numpy as np
import sympy
from flint import fmpq, fmpq_mat

from implreg.numerics.certified import Certified


class NotExact(Exception):
    """The graph has a measured leaf, or an operation with no exact form here (e.g. σ of rank ≥ 3)."""


def _q(v: float) -> fmpq:
    n, d = float(v).as_integer_ratio()
    return fmpq(n, d)


def _sym(x):
    if isinstance(x, fmpq):
        return sympy.Rational(int(x.p), int(x.q))
    return x


def _both(a, b):
    if isinstance(a, fmpq) and isinstance(b, fmpq):
        return a, b
    return _sym(a), _sym(b)


def _add(a, b):
    a, b = _both(a, b)
    return a + b


def _sub(a, b):
    a, b = _both(a, b)
    return a - b


def _mul(a, b):
    a, b = _both(a, b)
    return a * b


def _div(a, b):
    a, b = _both(a, b)
    if b == 0:
        raise NotExact("division by an exact zero")
    return a / b


def _sqrt(a):
    if isinstance(a, fmpq):
        if a <= 0:
            return fmpq(0)
        p, q = int(a.p), int(a.q)
        rp, rq = _isqrt(p), _isqrt(q)
        if rp * rp == p and rq * rq == q:
            return fmpq(rp, rq)
        return sympy.sqrt(sympy.Rational(p, q))
    return sympy.sqrt(sympy.Max(a, 0))


#: Largest root degree q of x^(a/q) the tier evaluates: sympy extracts perfect powers by factoring, and
#: minimal_polynomial's degree grows with q.  A float exponent such as fl(1/3) = 6004799503160661/2⁵⁴ stays an
#: unevaluated power (``where`` often builds one on a branch it then discards); deciding with it is undecidable
#: here (``is_zero`` returns None) — evaluating it took sympy minutes (tests/test_capacity.py, seed 1).
MAX_ROOT_DEGREE = 64


def _powr(a, p: float):
    """max(a, 0)^p with p taken exactly (a dyadic rational)."""
    e = sympy.Rational(*p.as_integer_ratio())
    b = sympy.Max(_sym(a), 0)
    if e.q <= MAX_ROOT_DEGREE or b.is_zero or b == 1:
        return b**e
    return sympy.Pow(b, e, evaluate=False)


def _huge_root(v) -> bool:
    return any(isinstance(x, sympy.Pow) and x.exp.is_Rational and x.exp.q > MAX_ROOT_DEGREE for x in
               sympy.preorder_traversal(v))


def _isqrt(n: int) -> int:
    import math
    return math.isqrt(n)


def _abs(a):
    return abs(a) if isinstance(a, fmpq) else sympy.Abs(a)


def _min2(a, b):
    if isinstance(a, fmpq) and isinstance(b, fmpq):
        return a if a <= b else b
    return sympy.Min(_sym(a), _sym(b))


def _max2(a, b):
    if isinstance(a, fmpq) and isinstance(b, fmpq):
        return a if a >= b else b
    return sympy.Max(_sym(a), _sym(b))


_F = {name: np.frompyfunc(f, 2, 1) for name, f in
      {"add": _add, "sub": _sub, "mul": _mul, "div": _div, "min2": _min2, "max2": _max2}.items()}
_NEG = np.frompyfunc(lambda a: -a, 1, 1)
_ABS = np.frompyfunc(_abs, 1, 1)
_SQRT = np.frompyfunc(_sqrt, 1, 1)
_EXP = np.frompyfunc(lambda a: sympy.exp(_sym(a)), 1, 1)
_LOG = np.frompyfunc(lambda a: sympy.log(_sym(a)), 1, 1)
_XLOGX = np.frompyfunc(lambda a: sympy.Integer(0) if _sym(a) == 0 else _sym(a) * sympy.log(_sym(a)), 1, 1)
_TO_Q = np.frompyfunc(_q, 1, 1)


class ExactBackend:
    """Exact rationals / algebraic numbers (see the module docstring)."""

    def exact_leaf(self, vals: np.ndarray) -> np.ndarray:
        return np.asarray(_TO_Q(vals), dtype=object) if vals.ndim else np.array(_q(vals), dtype=object)

    def measured_leaf(self, c: Certified, rows) -> np.ndarray:
        raise NotExact(f"measured value {c.label!r} has no exact value")

    def unary(self, op: str, x: np.ndarray, p: dict) -> np.ndarray:
        if op == "neg":
            r = _NEG(x)
        elif op == "abs":
            r = _ABS(x)
        elif op == "sqrt":
            r = _SQRT(x)
        elif op == "exp":
            r = _EXP(x)
        elif op == "log":
            r = _LOG(x)
        elif op == "xlogx":
            r = _XLOGX(x)
        else:  # powr
            r = np.frompyfunc(lambda a: _powr(a, float(p["p"])), 1, 1)(x)
        return np.asarray(r, dtype=object)

    def binary(self, op: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if op == "square":
            return np.asarray(_F["mul"](x, x), dtype=object)
        return np.asarray(_F[op](x, y), dtype=object)

    def reduce(self, op: str, x: np.ndarray, dims: tuple[int, ...], keep: bool) -> np.ndarray:
        f = {"sum": _F["add"], "amax": _F["max2"], "amin": _F["min2"]}[op]
        out = x
        for d in sorted(dims, reverse=True):
            if out.shape[d] == 0:
                shape = list(out.shape)
                shape[d] = 1
                out = np.full(shape, fmpq(0), dtype=object)
            else:
                out = f.reduce(out, axis=d, keepdims=True)
        out = np.asarray(out, dtype=object)
        if not keep:
            out = out.reshape([s for i, s in enumerate(out.shape) if i not in dims])
        return out

    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        va, vb = a.ndim == 1, b.ndim == 1
        A = a[None, :] if va else a
        B = b[:, None] if vb else b
        prod = _F["mul"](A[..., :, :, None], B[..., None, :, :])
        out = _F["add"].reduce(np.asarray(prod, dtype=object), axis=-2)
        out = np.asarray(out, dtype=object)
        if va:
            out = out[..., 0, :]
        if vb:
            out = out[..., 0]
        return out

    def svdvals(self, W: np.ndarray) -> np.ndarray:
        lead, (m, n) = W.shape[:-2], W.shape[-2:]
        k = min(m, n)
        flat = W.reshape(-1, m, n)
        out = np.empty((flat.shape[0], k), dtype=object)
        for i in range(flat.shape[0]):
            out[i] = exact_singular_values(flat[i])
        return out.reshape(*lead, k)


def exact_singular_values(A: np.ndarray) -> list:
    """σ_1 ≥ … ≥ σ_k of a rational matrix of rank ≤ 2, exactly (module docstring); NotExact otherwise."""
    m, n = A.shape
    k = min(m, n)
    if not all(isinstance(v, fmpq) for v in A.flat):
        raise NotExact("singular values of an irrational matrix")
    rank = fmpq_mat(m, n, list(A.flat)).rank()
    zero = fmpq(0)
    if rank == 0:
        return [zero] * k
    f2 = sum((v * v for v in A.flat), fmpq(0))
    if rank == 1:
        return [_sqrt(f2)] + [zero] * (k - 1)
    if rank > 2:
        raise NotExact(f"exact singular values of a rank-{rank} matrix")
    G = [[sum((A[r, i] * A[r, j] for r in range(m)), fmpq(0)) for j in range(n)] for i in range(n)]
    g2 = sum((G[i][j] * G[i][j] for i in range(n) for j in range(n)), fmpq(0))
    e2 = (f2 * f2 - g2) / 2
    disc = _sym(f2 * f2 - 4 * e2)
    F2 = _sym(f2)
    s1 = sympy.sqrt((F2 + sympy.sqrt(disc)) / 2)
    s2 = sympy.sqrt((F2 - sympy.sqrt(disc)) / 2)
    return [s1, s2] + [zero] * (k - 2)


_X = sympy.Symbol("x")


def is_zero(v) -> bool | None:
    """Whether the exact number v is 0 (True/False), or None when that cannot be decided exactly here."""
    if isinstance(v, fmpq):
        return v == 0
    v = sympy.nsimplify(v) if not isinstance(v, sympy.Basic) else v
    if v.is_zero is not None and v.is_Rational:
        return bool(v.is_zero)
    if v == 0:
        return True
    if v.count_ops() > 4000 or _huge_root(v):
        return None
    try:
        poly = sympy.minimal_polynomial(v, _X)
    except (NotImplementedError, sympy.polys.polyerrors.NotAlgebraic, ValueError, TypeError):
        return None
    return bool(poly == _X)


def exact_sign(v) -> int | None:
    """Sign of a rational v; for an algebraic v only 0 is decided here (None: nonzero or unknown)."""
    if isinstance(v, fmpq):
        return (v > 0) - (v < 0)
    z = is_zero(v)
    if z:
        return 0
    if isinstance(v, sympy.Basic) and v.is_Rational:
        return int(sympy.sign(v))
    return None
