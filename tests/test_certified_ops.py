"""Certified arithmetic: every float-tier error bound covers the actual error, measured exactly.

The exact result is computed independently of implreg.numerics: flint ``fmpq`` (exact rationals) for the
rational operations, flint ``arb`` at 300 bits for sqrt/exp/log/pow, ``fmpq_mat.det`` for det and mpmath at
400 bits for singular values.  Measured inputs are checked at their perturbed endpoints x̂ + t·e, t ∈ {−1, 0, 1}
(the exact input may be any of them).  Drawn inputs include zeros, 1e-300, 1e300 and subnormals.
"""

import math

import mpmath
import numpy as np
import pytest
import torch
from flint import arb, ctx, fmpq, fmpq_mat
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from implreg import numerics as nx
from implreg.errors import InvalidInputError
from implreg.numerics import Certified

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EDGES = [0.0, 1.0, -1.0, 0.1, -0.3, 1e-300, -1e-300, 1e300, -1e300, 5e-324, 2.0**-1022, 3.0, 1e-8, 1e8]
floats = st.one_of(st.sampled_from(EDGES), st.floats(-1e6, 1e6, allow_nan=False),
                   st.floats(allow_nan=False, allow_infinity=False))
ts = st.sampled_from([-1, 0, 1])


def q(v: float) -> fmpq:
    n, d = float(v).as_integer_ratio()
    return fmpq(n, d)


@st.composite
def leaf(draw, n: int):
    """(Certified, values, errors, perturbation t): exact, or measured with error 0, tiny, or ∝ |value|."""
    vals = [draw(floats) for _ in range(n)]
    kind = draw(st.sampled_from(["exact", "measured"]))
    if kind == "exact":
        return Certified.exact(torch.tensor(vals, dtype=torch.float64)), vals, [0.0] * n, [0] * n
    errs = [draw(st.sampled_from([0.0, 5e-324, 1e-300, abs(v) * 2.0**-20, abs(v) * 0.5, 1e-3])) for v in vals]
    t = [draw(ts) for _ in range(n)]
    c = Certified.measured(torch.tensor(vals, dtype=torch.float64), torch.tensor(errs, dtype=torch.float64),
                           rigorous=True)
    return c, vals, errs, t


def truth(vals, errs, t):
    return [q(v) + tt * q(e) for v, e, tt in zip(vals, errs, t, strict=True)]


def check_bound(out: Certified, exact_vals):
    """|exact − value| ≤ error for every entry with a finite value and error."""
    for v, e, x in zip(out.value.flatten().tolist(), out.error.flatten().tolist(), exact_vals, strict=True):
        assert e >= 0
        if not (math.isfinite(v) and math.isfinite(e)) or x is None:
            continue
        if isinstance(x, fmpq):
            assert abs(x - q(v)) <= q(e), (v, e, x)
        else:
            # the subtraction exactly (up to x's own radius): a double spans 2⁻¹⁰⁷⁴…2¹⁰²⁴, so 2,200 bits hold
            # x̂ − v for any double v; at x's 300 bits a bound tight to 1e-190 relative would round to "maybe"
            with ctx.workprec(2200):
                assert abs(x - arb(v)) <= arb(e), (v, e, x)


N = 3


@SETTINGS
@given(leaf(N), leaf(N), st.sampled_from(["add", "sub", "mul", "div"]))
def test_rational_binary_ops(a, b, op):
    (ca, va, ea, ta), (cb, vb, eb, tb) = a, b
    out = {"add": ca + cb, "sub": ca - cb, "mul": ca * cb, "div": ca / cb}[op]
    xa, xb = truth(va, ea, ta), truth(vb, eb, tb)
    if op == "div":
        exact = [x / y if y != 0 else None for x, y in zip(xa, xb, strict=True)]
    else:
        exact = [{"add": x + y, "sub": x - y, "mul": x * y}[op] for x, y in zip(xa, xb, strict=True)]
    check_bound(out, exact)


@SETTINGS
@given(leaf(N), st.sampled_from(["neg", "abs", "square", "pow3", "pow-2", "min", "max"]), leaf(N))
def test_unary_and_selection_ops(a, op, b):
    (ca, va, ea, ta), (cb, vb, eb, tb) = a, b
    xa, xb = truth(va, ea, ta), truth(vb, eb, tb)
    if op == "neg":
        out, exact = -ca, [-x for x in xa]
    elif op == "abs":
        out, exact = abs(ca), [abs(x) for x in xa]
    elif op == "square":
        out, exact = ca.square(), [x * x for x in xa]
    elif op == "pow3":
        out, exact = ca**3, [x**3 for x in xa]
    elif op == "pow-2":
        out, exact = ca**-2, [1 / (x * x) if x != 0 else None for x in xa]
    elif op == "min":
        out, exact = nx.minimum(ca, cb), [min(x, y) for x, y in zip(xa, xb, strict=True)]
    else:
        out, exact = nx.maximum(ca, cb), [max(x, y) for x, y in zip(xa, xb, strict=True)]
    check_bound(out, exact)


@pytest.mark.parametrize("p", [0.25, 0.5, 1.7])
def test_enclosure_centered_power_keeps_lower_end_zero(p):
    """x = 1e-8 ± 1e-3 reaches below 0: x^p ∈ [0, F⁺] must come back as a ball whose lower end is exactly 0,
    not a few ulps below (the drawn input that once failed the property test above)."""
    x = Certified.measured(torch.tensor([1e-8, 0.0, 5e-324], dtype=torch.float64),
                           torch.tensor([1e-3, 1e-3, 1e-300], dtype=torch.float64), rigorous=True)
    out = nx.ops.power(x, p, center="enclosure")
    assert bool((out.value - out.error >= 0).all())
    with ctx.workprec(300):
        top = [(arb(float(v)) + arb(float(e))) ** arb(p) for v, e in zip(x.value, x.error, strict=True)]
    for t, v, e in zip(top, out.value.tolist(), out.error.tolist(), strict=True):
        assert arb(v) + arb(e) >= t  # the upper end still covers (x̂ + e)^p, the largest value in the ball


@SETTINGS
@given(leaf(N), st.sampled_from(["sqrt", "exp", "log", "pow0.5", "pow1.7", "pow-0.3", "pow0.25c", "pow1.7c"]))
def test_transcendental_ops(a, op):
    ca, va, ea, ta = a
    if op in ("sqrt", "log") or op.startswith("pow"):
        # domain x ≥ 0 (x > 0 for log and negative powers): use |value| and keep the enclosure in the domain
        va = [abs(v) for v in va]
        shrink = 1.0 if op not in ("log", "pow-0.3") else 0.5
        ea = [min(e, abs(v) * shrink) for v, e in zip(va, ea, strict=True)]
        ca = (Certified.measured(torch.tensor(va, dtype=torch.float64), torch.tensor(ea, dtype=torch.float64),
                                 rigorous=True) if any(ea) else Certified.exact(torch.tensor(va, dtype=torch.float64)))
    xa = truth(va, ea, ta)
    with ctx.workprec(300):
        xs = [arb(x) for x in xa]
        if op == "sqrt":
            out, exact = ca.sqrt(), [x.nonnegative_part().sqrt() for x in xs]
        elif op == "exp":
            assume(all(v < 700 for v in va))
            out, exact = ca.exp(), [x.exp() for x in xs]
        elif op == "log":
            out, exact = ca.log(), [x.log() if x > 0 else None for x in xs]
        else:
            centered = op.endswith("c")  # center="enclosure": the ball is [F⁻, F⁺] itself, no wider
            p = float(op[3:].rstrip("c"))
            out = nx.ops.power(ca, p, center="enclosure") if centered else ca**p
            exact = [(x ** arb(p)) if x > 0 else (arb(0) if p > 0 else None) for x in xs]
            if centered:
                assert bool((out.error <= (ca**p).error * (1 + 1e-12) + 1e-300).all())
                # x^p ≥ 0 keeps its lower end at 0 exactly where the enclosure reaches 0
                fin = torch.isfinite(out.error)  # (1e300)^1.7 overflows: value and error +inf
                assert bool((out.value - out.error >= 0)[fin].all())
        check_bound(out, exact)


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 5), st.data())
def test_reductions(rows, cols, data):
    c, v, e, t = data.draw(leaf(rows * cols))
    c = c.reshape(rows, cols)
    x = np.array(truth(v, e, t), dtype=object).reshape(rows, cols)
    check_bound(c.sum(-1), [sum(r, fmpq(0)) for r in x])
    check_bound(c.sum(), [sum(x.flat, fmpq(0))])
    check_bound(c.mean(0), [sum(x[:, j], fmpq(0)) / rows for j in range(cols)])
    check_bound(c.amax(-1), [max(r) for r in x])
    check_bound(c.amin(0), [min(x[:, j]) for j in range(cols)])
    check_bound(c[..., 0], list(x[:, 0]))
    check_bound(c.mT.flatten(), list(x.T.flat))


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.data())
def test_matmul(m, k, n, data):
    ca, va, ea, ta = data.draw(leaf(m * k))
    cb, vb, eb, tb = data.draw(leaf(k * n))
    out = ca.reshape(1, m, k) @ cb.reshape(1, k, n)
    A = np.array(truth(va, ea, ta), dtype=object).reshape(m, k)
    B = np.array(truth(vb, eb, tb), dtype=object).reshape(k, n)
    exact = [sum((A[i, j] * B[j, c] for j in range(k)), fmpq(0)) for i in range(m) for c in range(n)]
    check_bound(out, exact)


@SETTINGS
@given(st.integers(1, 4), st.data())
def test_det(n, data):
    c, v, e, t = data.draw(leaf(n * n))
    out = c.reshape(1, n, n).det()
    exact = fmpq_mat(n, n, truth(v, e, t)).det()
    check_bound(out, [exact])


def test_det_matches_lapack_on_random_matrices():
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 4):
        A = torch.randn(20, n, n, generator=g, dtype=torch.float64)
        d = Certified.exact(A).det()
        assert torch.allclose(d.value, torch.linalg.det(A), rtol=1e-12, atol=1e-12)


def _sigma_mp(M: np.ndarray) -> list:
    with mpmath.workprec(400):
        A = mpmath.matrix([[mpmath.mpf(int(x.p)) / int(x.q) for x in row] for row in M])
        return [mpmath.mpf(s) for s in sorted(mpmath.svd_r(A, compute_uv=False), reverse=True)]


@st.composite
def matrices(draw):
    m, n = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kind = draw(st.sampled_from(["random", "orthogonal", "rank1", "zero", "edge"]))
    scale = draw(st.sampled_from([1.0, 2.0**-997, 2.0**995, 3.0]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**30)))
    if kind == "random":
        W = torch.randn(m, n, generator=g, dtype=torch.float64)
    elif kind == "orthogonal":   # exactly orthogonal: a signed permutation, all singular values equal
        n = m
        P = torch.eye(m, dtype=torch.float64)[torch.randperm(m, generator=g)]
        W = P * torch.where(torch.rand(m, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    elif kind == "rank1":
        W = torch.randn(m, 1, generator=g, dtype=torch.float64) @ torch.randn(1, n, generator=g, dtype=torch.float64)
    elif kind == "zero":
        W = torch.zeros(m, n, dtype=torch.float64)
    else:
        W = torch.tensor([[draw(st.sampled_from(EDGES[:8])) for _ in range(n)] for _ in range(m)], dtype=torch.float64)
        scale = 1.0
    W = W * scale
    err = draw(st.sampled_from([0.0, 2.0**-30, 1e-300]))
    E = torch.full_like(W, err) * W.abs().amax().clamp(min=1e-300) if err else torch.zeros_like(W)
    T = torch.tensor([[draw(ts) for _ in range(W.shape[1])] for _ in range(W.shape[0])], dtype=torch.float64)
    return W, E, T


@SETTINGS
@given(matrices())
def test_svdvals_bound_covers_the_exact_singular_values(mat):
    W, E, T = mat
    c = Certified.measured(W[None], E[None], rigorous=True) if bool((E > 0).any()) else Certified.exact(W[None])
    out = nx.svdvals(c)
    m, n = W.shape
    M = np.array([[q(W[i, j].item()) + int(T[i, j].item()) * q(E[i, j].item()) for j in range(n)]
                  for i in range(m)], dtype=object)
    exact = _sigma_mp(M)
    for v, e, s in zip(out.value[0].tolist(), out.error[0].tolist(), exact, strict=True):
        assert math.isfinite(e)
        with mpmath.workprec(400):
            assert abs(s - mpmath.mpf(v)) <= mpmath.mpf(e), (v, e, s)


def test_svdvals_bound_is_tight_for_well_conditioned_matrices():
    W = torch.randn(50, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = nx.svdvals(Certified.exact(W))
    # an a-posteriori bound of a backward-stable SVD: a few hundred ulps of ‖W‖ at most (not a loose 1e-8)
    assert float((out.error / W.flatten(1).abs().amax(-1)[:, None]).max()) < 1e-13


def test_rigorous_flag_propagates():
    a = Certified.exact(torch.ones(2, dtype=torch.float64))
    b = Certified.measured(torch.ones(2, dtype=torch.float64), 1e-9, rigorous=False)
    assert (a + a).rigorous and not (a * b).rigorous and not nx.svdvals((a * b).reshape(1, 2, 1)).rigorous
    assert nx.where(torch.tensor([True, False]), a, a).rigorous


def test_lo_hi_enclose_and_reading():
    c = Certified.measured(torch.tensor([0.1, -3.0], dtype=torch.float64), torch.tensor([1e-17, 0.5]),
                           rigorous=True)
    assert q(c.lo[0].item()) <= q(0.1) - q(1e-17) and q(c.hi[0].item()) >= q(0.1) + q(1e-17)
    assert c.shape == (2,) and c.ndim == 1 and len(c) == 2 and float(c[1]) == -3.0
    with pytest.raises(InvalidInputError, match="index one entry"):
        float(c)
