"""Tests of implreg.matrix.measures against independent computations: mpmath at 50 digits, numpy, closed forms.

Tolerances.  Only the module's float64 rounding is tested: the mpmath reference computes the singular values
of the *same* float64 matrix to 50 digits.  LAPACK's SVD is backward stable: σ̂_r = σ_r(W + δW) with
‖δW‖_2 ≤ c(n)·eps·‖W‖_2, so by Weyl |σ̂_r − σ_r| ≤ c(n)·eps·‖W‖_2; c(n) is ~10 for n ≤ 8 in practice.
We allow ETA = 1e-12 ≈ 4500·eps per singular value, relative to ‖W‖_2, and propagate that to each measure
through its (first-order) condition number below, doubled.  Entrywise measures need no SVD: their only error
is summation rounding, ≲ (n + 3)·eps relative before the 1/p-th root, far below 1e-12·max(1, 1/p).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import mpmath
import numpy as np
import pytest
import torch
from flint import fmpq
from hypothesis import given, settings
from hypothesis import strategies as st

from implreg import certify
from implreg.errors import InvalidInputError
from implreg.matrix import measures as _measures
from implreg.numerics import Certified


class _Values:
    """``implreg.matrix.measures`` with every measure's result read as its float64 value (``.value``): the tests below
    check the values against independent references; the certified bounds are tested in
    test_measures_certified.py.  Error-bound functions and registries pass through (registry entries wrapped)."""

    def __getattr__(self, name: str):
        obj = getattr(_measures, name)
        if name in ("NORMS", "MEASURES"):
            return {k: _value_of(f) for k, f in obj.items()}
        return _value_of(obj) if callable(obj) else obj


def _value_of(fn):
    def call(*a, **kw):
        out = fn(*a, **kw)
        return out.value if isinstance(out, Certified) else out

    return call


M = _Values()

ETA = 1e-12  # allowed |σ̂_r − σ_r| / ‖W‖_2, see the module docstring
DPS = 50
SETTINGS = settings(max_examples=40, deadline=None)

# Parametric names checked beyond the NORMS registry: every p regime (quasi, 1, between, 2, above, ∞).
EXTRA_NAMES = ("schatten-0.1", "schatten-1", "schatten-2", "schatten-inf", "entrywise-0.3", "entrywise-1.5",
               "entrywise-2", "entrywise-4")
ALL_NAMES = (*M.MEASURES, *EXTRA_NAMES)


# ---------------------------------------------------------------------------------------------- references


def _measure(name: str):
    """Module function for a name (test-side parser, independent of the module's own)."""
    if name in M.MEASURES:
        return M.MEASURES[name]
    kind, p = name.split("-")
    fn = M.schatten if kind == "schatten" else M.entrywise
    return lambda W: fn(W, float(p))


def mp_svals(A: np.ndarray) -> list:
    """Singular values of the float64 matrix A, exactly converted, to 50 digits (descending)."""
    with mpmath.workdps(DPS):
        S = mpmath.svd_r(mpmath.matrix(A.tolist()), compute_uv=False)
        return sorted((abs(S[i]) for i in range(S.rows)), reverse=True)


def _pnorm(xs: Sequence, p: float):
    """(Σ |x|^p)^(1/p) in mpmath; max |x| for p = ∞."""
    if math.isinf(p):
        return max(abs(x) for x in xs)
    return mpmath.fsum(mpmath.power(abs(x), p) for x in xs) ** (mpmath.mpf(1) / p)


def mp_measure(name: str, A: np.ndarray, svals: list | None = None):
    """Reference value of the named measure for one float64 matrix A, at 50 digits (an mpf)."""
    with mpmath.workdps(DPS):
        s = mp_svals(A) if svals is None else svals
        entries = [mpmath.mpf(float(x)) for x in A.ravel()]
        if name == "frobenius":
            return _pnorm(entries, 2)
        if name == "nuclear":
            return mpmath.fsum(s)
        if name == "spectral":
            return s[0]
        if name == "sigma-min":
            return s[-1]
        if name == "effective-rank":
            total = mpmath.fsum(s)
            probs = [x / total for x in s if x > 0]
            return mpmath.exp(-mpmath.fsum(q * mpmath.log(q) for q in probs))
        kind, p = name.split("-")
        return _pnorm(s if kind == "schatten" else entries, float(p))


def tolerance(name: str, A: np.ndarray, s: list) -> float:
    """Allowed |module − reference| for one matrix: ETA per singular value pushed through the measure."""
    k = len(s)
    top = float(s[0])
    dsig = ETA * top  # |σ̂_r − σ_r| ≤ dsig for every r
    if name in ("spectral", "sigma-min"):
        return dsig
    if name == "nuclear":
        return k * dsig
    if name == "frobenius":
        return 1e-12 * math.sqrt(float(mpmath.fsum(x * x for x in A.ravel().tolist())))
    if name == "effective-rank":
        # H = −Σ q log q, q_r = σ_r/Σσ: |δq_r| ≤ (1 + k q_r)·dsig/Σσ and |δH| ≤ Σ |1 + log q_r|·|δq_r|;
        # δ erank = erank·δH to first order.
        total = float(mpmath.fsum(s))
        qs = [float(x) / total for x in s]
        dH = sum(abs(1 + math.log(q)) * (1 + k * q) * dsig / total for q in qs)
        return 2 * float(mp_measure(name, A, s)) * dH
    kind, p_str = name.split("-")
    p = float(p_str)
    value = float(mp_measure(name, A, s))
    if kind == "entrywise":
        return 1e-12 * max(1.0, 1.0 / p) * value + 1e-300
    if p >= 1:
        # ‖·‖_p is a norm on σ: |‖σ̂‖_p − ‖σ‖_p| ≤ ‖σ̂ − σ‖_p ≤ k^(1/p)·dsig ≤ k·dsig.
        return k * dsig + 1e-14 * value
    # Quasi-norm N = S^(1/p), S = Σσ^p: δN/N = Σ σ_r^(p−1) δσ_r / S, unbounded as σ_r → 0.
    S = sum(float(x) ** p for x in s)
    return 2 * value * dsig * sum(float(x) ** (p - 1) for x in s) / S + 1e-14 * value


# ---------------------------------------------------------------------------------------------- strategies


def haar(rng: np.random.Generator, n: int) -> np.ndarray:
    """Haar-distributed orthogonal n×n matrix (QR of a Gaussian with the sign of diag R fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


@st.composite
def batches(draw, max_d: int = 5, max_batch: int = 4, log10_cond: float = 3.0) -> np.ndarray:
    """(B, d, d') float64 batch W_i = U_i diag(σ_i) V_iᵀ with Haar U_i, V_i, σ_i ∈ scale·[10^−cond, 1]."""
    B = draw(st.integers(1, max_batch))
    d, dp = draw(st.integers(1, max_d)), draw(st.integers(1, max_d))
    k = min(d, dp)
    log_sig = draw(st.lists(st.lists(st.floats(-log10_cond, 0.0), min_size=k, max_size=k),
                            min_size=B, max_size=B))
    log2_scale = draw(st.integers(-40, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    out = np.empty((B, d, dp))
    for i in range(B):
        U, V = haar(rng, d)[:, :k], haar(rng, dp)[:, :k]
        out[i] = (U * (2.0**log2_scale * 10.0 ** np.array(log_sig[i]))) @ V.T
    return out


def within(got: torch.Tensor, ref: np.ndarray, atol: np.ndarray) -> None:
    """Elementwise |got − ref| ≤ atol with a per-instance (broadcast) tolerance."""
    err = np.abs(got.numpy() - ref)
    assert np.all(err <= atol), f"errors {err} exceed tolerances {atol}"


def as_torch(A: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(A)).to(dtype)


# ---------------------------------------------------------------------------------------------- vs mpmath


@SETTINGS
@given(A=batches(), name=st.sampled_from(ALL_NAMES))
def test_measure_matches_mpmath(A: np.ndarray, name: str) -> None:
    got = _measure(name)(as_torch(A))
    assert got.shape == (A.shape[0],) and got.dtype == torch.float64
    for i in range(A.shape[0]):
        s = mp_svals(A[i])
        ref = float(mp_measure(name, A[i], s))
        assert abs(got[i].item() - ref) <= tolerance(name, A[i], s), (name, i, got[i].item(), ref)


@SETTINGS
@given(A=batches())
def test_singular_values_match_mpmath(A: np.ndarray) -> None:
    got = M.singular_values(as_torch(A))
    assert got.shape == (A.shape[0], min(A.shape[1:]))
    for i in range(A.shape[0]):
        s = [float(x) for x in mp_svals(A[i])]
        np.testing.assert_allclose(got[i].numpy(), s, rtol=0, atol=ETA * s[0])
        assert bool((got[i][:-1] >= got[i][1:]).all()), "singular values must be descending"


@SETTINGS
@given(A=batches(), data=st.data())
def test_distance_to_rank_matches_mpmath(A: np.ndarray, data: st.DataObject) -> None:
    kmax = min(A.shape[1:])
    k = data.draw(st.integers(0, kmax), label="k")
    got = M.distance_to_rank(as_torch(A), k)
    for i in range(A.shape[0]):
        s = mp_svals(A[i])
        with mpmath.workdps(DPS):
            ref = float(mpmath.sqrt(mpmath.fsum(x * x for x in s[k:])))
        # ‖σ̂_tail − σ_tail‖_2 ≤ √(kmax)·ETA·‖W‖_2.
        assert abs(got[i].item() - ref) <= math.sqrt(kmax) * ETA * float(s[0]) + 1e-14 * ref


# ---------------------------------------------------------------------------------------------- vs numpy


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 7, 3), (5, 3, 7), (4, 8, 8), (3, 1, 6), (2, 6, 1)])
def test_norms_match_numpy_on_gaussian_matrices(shape: tuple[int, int, int]) -> None:
    A = np.random.default_rng(sum(shape)).standard_normal(shape)
    W = as_torch(A)
    s = np.linalg.svd(A, compute_uv=False)  # numpy's own LAPACK call: same backward error bound, so 2·ETA
    top = s[:, 0]
    k = s.shape[1]
    within(M.singular_values(W), s, 2 * ETA * top[:, None])
    np.testing.assert_allclose(M.frobenius(W).numpy(), np.linalg.norm(A, "fro", axis=(1, 2)), rtol=1e-13)
    within(M.nuclear(W), np.linalg.norm(A, "nuc", axis=(1, 2)), 2 * k * ETA * top)
    within(M.spectral(W), np.linalg.norm(A, 2, axis=(1, 2)), 2 * ETA * top)
    within(M.sigma_min(W), s[:, -1], 2 * ETA * top)
    within(M.schatten(W, 3), (s**3).sum(1) ** (1 / 3), 2 * k * ETA * top)
    for p in (0.5, 1.0, 3.0):
        ref = (np.abs(A) ** p).sum(axis=(1, 2)) ** (1 / p)
        np.testing.assert_allclose(M.entrywise(W, p).numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(M.entrywise(W, math.inf).numpy(), np.abs(A).max(axis=(1, 2)), rtol=0)
    q = s / s.sum(1, keepdims=True)
    np.testing.assert_allclose(M.effective_rank(W).numpy(), np.exp(-(q * np.log(q)).sum(1)), rtol=1e-10)
    for j in range(k + 1):
        ref = np.sqrt((s[:, j:] ** 2).sum(1))
        within(M.distance_to_rank(W, j), ref, 2 * math.sqrt(k) * ETA * top)


def test_float32_input_is_converted_exactly() -> None:
    """A float32 W is exact input: its values convert to float64 exactly, so the measures are float64-accurate
    for those values (certified values are float64)."""
    A = np.random.default_rng(3).standard_normal((3, 4, 5))
    W = as_torch(A, torch.float32)
    A32 = W.double().numpy()  # the float32 values, exactly, as the reference input
    for name in ("frobenius", "nuclear", "spectral", "schatten-1.5", "entrywise-1", "effective-rank"):
        got = _measure(name)(W)
        assert got.dtype == torch.float64 and got.device == W.device
        for i in range(3):
            s = mp_svals(A32[i])
            assert abs(got[i].item() - float(mp_measure(name, A32[i], s))) <= tolerance(name, A32[i], s), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda_and_stays_there() -> None:
    W = torch.randn(3, 4, 2, dtype=torch.float64, device="cuda")
    for name, fn in M.MEASURES.items():
        out = fn(W)
        assert out.device == W.device and out.dtype == torch.float64, name
        torch.testing.assert_close(out.cpu(), fn(W.cpu()), rtol=1e-10, atol=1e-12)
    assert M.norm_error_bound("frobenius", W, 1e-3).device == W.device


# ---------------------------------------------------------------------------------------------- closed forms


def _rect_diag(values: Sequence[float], d: int, dp: int) -> torch.Tensor:
    W = torch.zeros(1, d, dp, dtype=torch.float64)
    for i, v in enumerate(values):
        W[0, i, i] = v
    return W


@pytest.mark.parametrize(("values", "d", "dp"), [([4.0, -1.0, 0.0], 3, 3), ([3.0, 2.0], 2, 5),
                                                 ([-2.0, 2.0, 1.0], 4, 3), ([5.0], 1, 1), ([0.0, 7.0], 2, 2)])
def test_diagonal_closed_forms(values: list[float], d: int, dp: int) -> None:
    W = _rect_diag(values, d, dp)
    a = sorted((abs(v) for v in values), reverse=True)
    a += [0.0] * (min(d, dp) - len(a))
    pos = [x for x in a if x > 0]
    # σ of a diagonal matrix are |w_ii|, exact in LAPACK up to an ulp; each measure adds a few roundings.
    close = dict(rel=1e-15, abs=0)
    exact = torch.tensor(a, dtype=torch.float64)
    torch.testing.assert_close(M.singular_values(W)[0], exact, rtol=4e-16, atol=0)
    assert M.frobenius(W).item() == pytest.approx(math.sqrt(sum(x * x for x in a)), **close)
    assert M.nuclear(W).item() == pytest.approx(sum(a), **close)
    assert M.spectral(W).item() == pytest.approx(a[0], **close)
    assert M.sigma_min(W).item() == pytest.approx(a[-1], **close)
    for p in (0.5, 2.0, 3.0):
        assert M.schatten(W, p).item() == pytest.approx(sum(x**p for x in pos) ** (1 / p), rel=1e-15)
        assert M.entrywise(W, p).item() == pytest.approx(sum(x**p for x in pos) ** (1 / p), rel=1e-15)
    q = [x / sum(pos) for x in pos]
    assert M.effective_rank(W).item() == pytest.approx(math.exp(-sum(x * math.log(x) for x in q)), rel=1e-15)
    for k in range(len(a) + 1):
        assert M.distance_to_rank(W, k).item() == pytest.approx(math.sqrt(sum(x * x for x in a[k:])), **close)


def test_schatten_half_of_diag_4_1_0_is_9() -> None:
    # (√4 + √1 + √0)² = 9, and the exact zero singular value must not contribute.
    assert M.schatten(_rect_diag([4.0, 1.0, 0.0], 3, 3), 0.5).item() == pytest.approx(9.0, rel=1e-15)


@pytest.mark.parametrize("shape", [(2, 5, 4), (1, 1, 3), (3, 6, 1)])
def test_rank_one_closed_forms(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(7)
    B, d, dp = shape
    u, v = rng.standard_normal((B, d, 1)), rng.standard_normal((B, 1, dp))
    W = as_torch(u @ v)
    norm = np.linalg.norm(u[:, :, 0], axis=1) * np.linalg.norm(v[:, 0, :], axis=1)  # ‖uvᵀ‖ = ‖u‖‖v‖ for all
    for fn in (M.frobenius, M.nuclear, M.spectral):
        np.testing.assert_allclose(fn(W).numpy(), norm, rtol=1e-13)
    # rounding leaves σ_2.. ≈ 1e-16·‖W‖; they enter the entropy as −q log q ≈ 4e-15 each.
    np.testing.assert_allclose(M.effective_rank(W).numpy(), 1.0, rtol=1e-12)
    assert bool((M.distance_to_rank(W, 1) <= 1e-13 * torch.from_numpy(norm)).all())
    np.testing.assert_allclose(M.distance_to_rank(W, 0).numpy(), norm, rtol=1e-13)


@pytest.mark.parametrize("d", [1, 2, 5, 8])
def test_identity_and_orthogonal_closed_forms(d: int) -> None:
    rng = np.random.default_rng(d)
    Q = np.stack([np.eye(d), haar(rng, d), 3.0 * haar(rng, d)])
    c = np.array([1.0, 1.0, 3.0])  # all singular values equal c
    W = as_torch(Q)
    tol = dict(rtol=1e-13)  # ‖QᵀQ − I‖ ~ d·eps from QR, plus the SVD's own ~10·eps
    np.testing.assert_allclose(M.effective_rank(W).numpy(), d, **tol)
    np.testing.assert_allclose(M.spectral(W).numpy(), c, **tol)
    np.testing.assert_allclose(M.sigma_min(W).numpy(), c, **tol)
    np.testing.assert_allclose(M.nuclear(W).numpy(), c * d, **tol)
    np.testing.assert_allclose(M.frobenius(W).numpy(), c * math.sqrt(d), **tol)
    for p in (0.25, 0.5, 1.5, 3.0):
        np.testing.assert_allclose(M.schatten(W, p).numpy(), c * d ** (1 / p), rtol=1e-12)
    for k in range(d + 1):
        np.testing.assert_allclose(M.distance_to_rank(W, k).numpy(), c * math.sqrt(d - k), atol=1e-13)


@pytest.mark.parametrize("c", [1e-300, 1e-150, 1e150, 1e300])
def test_extreme_scales_do_not_overflow_or_underflow(c: float) -> None:
    W = c * torch.eye(3, dtype=torch.float64)[None]  # every (quasi-)norm of c·I_3 is c·3^(1/p)
    assert M.frobenius(W).item() == pytest.approx(c * math.sqrt(3), rel=1e-15)
    for p in (0.25, 0.5, 2.0, 3.0):
        assert M.schatten(W, p).item() == pytest.approx(c * 3 ** (1 / p), rel=1e-13)
        assert M.entrywise(W, p).item() == pytest.approx(c * 3 ** (1 / p), rel=1e-13)
    assert M.distance_to_rank(W, 1).item() == pytest.approx(c * math.sqrt(2), rel=1e-15)
    assert M.effective_rank(W).item() == pytest.approx(3.0, rel=1e-15)


def test_tiny_p_falls_back_to_log_space() -> None:
    # ‖1e-300·I_3‖_{S_p} at p = 1e-3 is 1e-300·3^1000 ≈ 1.3e177: 3^1000 alone overflows float64.
    W = 1e-300 * torch.eye(3, dtype=torch.float64)[None]
    with mpmath.workdps(DPS):
        ref = float(mpmath.mpf(1e-300) * mpmath.mpf(3) ** 1000)
    # log-space evaluation: relative error ≈ eps·(|log 1e-300| + 1000·log 3) ≈ 1.7e3·eps ≈ 4e-13.
    assert M.schatten(W, 1e-3).item() == pytest.approx(ref, rel=1e-11)
    assert M.entrywise(W, 1e-3).item() == pytest.approx(ref, rel=1e-11)
    assert M.schatten(torch.eye(3, dtype=torch.float64)[None], 1e-3).item() == math.inf  # truly 3^1000


def test_zero_matrix() -> None:
    W = torch.zeros(2, 3, 4, dtype=torch.float64)
    for name, fn in M.NORMS.items():
        assert bool((fn(W) == 0).all()), name
    assert bool((M.sigma_min(W) == 0).all()) and bool((M.distance_to_rank(W, 0) == 0).all())
    assert bool(torch.isnan(M.effective_rank(W)).all())  # documented choice: NaN, per instance


# ---------------------------------------------------------------------------------------------- properties


@SETTINGS
@given(A=batches(log10_cond=2.0), p=st.floats(0.05, 8.0), q=st.floats(0.05, 8.0))
def test_schatten_is_monotone_decreasing_in_p(A: np.ndarray, p: float, q: float) -> None:
    # ‖σ‖_p ≥ ‖σ‖_q for p ≤ q (ℓ_p nesting), hence quasi-norms (p < 1) ≥ nuclear ≥ … ≥ spectral.
    p, q = min(p, q), max(p, q)
    W = as_torch(A)
    slack = 1 + 1e-10  # both sides carry the rounding bounded in `tolerance`, < 1e-10 relative here
    assert bool((M.schatten(W, p) * slack >= M.schatten(W, q)).all())
    if p < 1:
        assert bool((M.schatten(W, p) * slack >= M.nuclear(W)).all())


@SETTINGS
@given(A=batches())
def test_p2_entrywise_and_schatten_equal_frobenius(A: np.ndarray) -> None:
    W = as_torch(A)
    fro = np.linalg.norm(A, "fro", axis=(1, 2))
    # entrywise: summation rounding only; schatten: Σσ̂² with |σ̂ − σ| ≤ ETA·σ_1 ≤ ETA·‖W‖_F per value.
    np.testing.assert_allclose(M.frobenius(W).numpy(), fro, rtol=1e-13)
    np.testing.assert_allclose(M.entrywise(W, 2).numpy(), fro, rtol=1e-13)
    np.testing.assert_allclose(M.schatten(W, 2).numpy(), fro, rtol=2 * ETA * min(A.shape[1:]))


@SETTINGS
@given(A=batches())
def test_norm_inequalities_and_effective_rank_range(A: np.ndarray) -> None:
    W = as_torch(A)
    k = min(A.shape[1:])
    s2, fro, nuc = M.spectral(W), M.frobenius(W), M.nuclear(W)
    r = 1 + 1e-11
    assert bool((s2 <= fro * r).all() and (fro <= nuc * r).all() and (nuc <= math.sqrt(k) * fro * r).all())
    erank = M.effective_rank(W)
    assert bool((erank >= 1 - 1e-12).all() and (erank <= k * r).all())


# ---------------------------------------------------------------------------------------------- error bounds


HADAMARD_4 = np.kron([[1.0, 1.0], [1.0, -1.0]], [[1.0, 1.0], [1.0, -1.0]])


def _dyadic(x: np.ndarray, bits: int) -> np.ndarray:
    return np.round(x * 2.0**bits) / 2.0**bits


@st.composite
def perturbations(draw) -> tuple[np.ndarray, np.ndarray, float]:
    """(W, E, e) with |E_ij| ≤ e and W + E exact in float64; E uniform, random signs or adversarial."""
    B = draw(st.integers(1, 3))
    d, dp = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kinds = ["uniform", "signs", "sign-of-W", "rank-one-signs", "flat-rank-one", "hadamard"]
    kind = draw(st.sampled_from(kinds))
    e = 2.0 ** -draw(st.integers(1, 20))
    W = _dyadic(rng.standard_normal((B, d, dp)), 20)  # entries k·2^-20, |w| < 2^4
    if kind == "uniform":
        E = rng.uniform(-e, e, (B, d, dp))
    elif kind == "signs":
        E = e * rng.choice([-1.0, 1.0], (B, d, dp))
    elif kind == "sign-of-W":  # grows every entry's magnitude: worst case for entrywise norms
        E = e * np.where(W >= 0, 1.0, -1.0)
    elif kind == "hadamard":  # E ∝ W, so every norm moves by exactly ‖E‖; attains the Schatten p ≤ 2 bounds
        H = HADAMARD_4[:d, :dp]  # when square (d = d' ∈ {1, 2, 4}: all singular values equal √d)
        W = rng.integers(1, 8, (B, 1, 1)) * H
        E = e * np.broadcast_to(H, W.shape)
    else:  # e·s tᵀ with sign vectors s, t: ‖E‖_2 = √(d d')·e, Weyl's bound attained to first order
        s, t = rng.choice([-1.0, 1.0], (B, d, 1)), rng.choice([-1.0, 1.0], (B, 1, dp))
        E = e * s @ t
        if kind == "flat-rank-one":  # W aligned with E: ‖W + E‖_2 − ‖W‖_2 = √(d d')·e exactly
            W = rng.integers(1, 8, (B, 1, 1)) * s @ t
    E = _dyadic(E, 40)  # multiples of 2^-40 with |E| ≤ e (e is a power of two ≥ 2^-20, so rounding keeps it)
    assert np.all(np.abs(E) <= e)
    return W, E, e


@SETTINGS
@given(case=perturbations(), name=st.sampled_from(ALL_NAMES))
def test_error_bound_holds_against_50_digit_reference(case: tuple, name: str) -> None:
    W, E, e = case
    W2 = W + E  # exact: both are multiples of 2^-40 below 2^5 in magnitude (≤ 45 significant bits)
    bound = M.norm_error_bound(name, as_torch(W), e)
    assert bound.shape == (W.shape[0],) and bound.dtype == torch.float64
    for i in range(W.shape[0]):
        if math.isinf(bound[i].item()):
            continue
        with mpmath.workdps(DPS):
            change = abs(mp_measure(name, W2[i]) - mp_measure(name, W[i]))
        assert change <= bound[i].item(), (name, float(change), bound[i].item())


@SETTINGS
@given(case=perturbations())
def test_singular_value_error_bound_holds(case: tuple) -> None:
    W, E, e = case
    bound = M.singular_value_error_bound(as_torch(W), torch.full((W.shape[0],), e, dtype=torch.float64))
    for i in range(W.shape[0]):
        with mpmath.workdps(DPS):
            worst = max(abs(a - b) for a, b in zip(mp_svals(W[i] + E[i]), mp_svals(W[i]), strict=True))
        assert worst <= bound[i].item()


def test_error_bounds_are_attained_by_adversarial_perturbations() -> None:
    # Not loose: for W = c·s tᵀ and E = e·s tᵀ (s, t sign vectors), spectral, Frobenius and nuclear norms
    # all move by exactly √(d d')·e, which equals the spectral/Frobenius bounds; ℓ_1/ℓ_∞ move by n·e and e.
    e = 2.0**-10
    s, t = np.array([[1.0], [-1.0], [1.0]]), np.array([[1.0, 1.0, -1.0, 1.0, -1.0]])
    W, E = 4.0 * s @ t, e * s @ t
    Wt = as_torch(W[None])
    for name in ("spectral", "frobenius", "entrywise-1", "entrywise-inf", "singular"):
        if name == "singular":
            bound = M.singular_value_error_bound(Wt, e).item()
            change = float(mp_svals(W + E)[0] - mp_svals(W)[0])
        else:
            bound = M.norm_error_bound(name, Wt, e).item()
            change = float(mp_measure(name, W + E) - mp_measure(name, W))
        assert change <= bound <= change * (1 + 1e-14), name
    # W = 3H, E = eH with H the 4×4 Hadamard matrix (σ_r(H) = 2 for all r): E ∝ W, so every Schatten norm
    # moves by ‖E‖_{S_p} = 4^(1/p)·2e = k^(1/p − 1/2)·√n·e, exactly the bound for 1 ≤ p ≤ 2.
    W, E = 3.0 * HADAMARD_4, e * HADAMARD_4
    for name in ("nuclear", "schatten-1", "schatten-1.5", "schatten-2"):
        bound = M.norm_error_bound(name, as_torch(W[None]), e).item()
        change = float(mp_measure(name, W + E) - mp_measure(name, W))
        assert change <= bound <= change * (1 + 1e-14), name


def _exact_coefficient(name: str, d: int, dp: int):
    """The bound's coefficient c (bound = c·e) at 50 digits, from the inequalities in the module docstring."""
    n, k = mpmath.mpf(d * dp), mpmath.mpf(min(d, dp))
    if name in ("frobenius", "spectral", "sigma-min", "singular"):
        return mpmath.sqrt(n)
    if name == "nuclear":
        return mpmath.sqrt(k * n)
    kind, p_str = name.split("-")
    p = mpmath.inf if p_str == "inf" else mpmath.mpf(p_str)
    if kind == "schatten":
        return k ** max(0, 1 / p - mpmath.mpf(1) / 2) * mpmath.sqrt(n)
    return 1 if p == mpmath.inf else n ** (1 / p)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["frobenius", "spectral", "sigma-min", "nuclear", "singular", "schatten-1",
                          "schatten-1.5", "schatten-3", "schatten-inf", "entrywise-1", "entrywise-1.5",
                          "entrywise-inf"]),
    d=st.integers(1, 7), dp=st.integers(1, 7), dtype=st.sampled_from([torch.float32, torch.float64]),
    e=st.floats(1e-30, 1e30), e_as_tensor=st.booleans(),
)
def test_bounds_are_rounded_upward(name: str, d: int, dp: int, dtype: torch.dtype, e: float,
                                   e_as_tensor: bool) -> None:
    # The float result must be ≥ the exact real c·e even after narrowing a float64 e to float32.
    W = torch.ones(2, d, dp, dtype=dtype)
    e_arg = torch.tensor([e, e], dtype=torch.float64) if e_as_tensor else e
    if name == "singular":
        bound = M.singular_value_error_bound(W, e_arg)
    else:
        bound = M.norm_error_bound(name, W, e_arg)
    assert bound.dtype == dtype
    with mpmath.workdps(DPS):
        exact = _exact_coefficient(name, d, dp) * mpmath.mpf(e)
        for b in bound.tolist():
            assert mpmath.mpf(b) >= exact
            assert mpmath.mpf(b) <= exact * (1 + 16 * torch.finfo(dtype).eps)  # and only just above it


def test_bound_survives_underflow_when_narrowing_to_float32() -> None:
    # e = 1e-50 is 0 in float32; the bound must stay > 0 (a float32 bound of 0 would claim "no change").
    bound = M.norm_error_bound("frobenius", torch.ones(1, 2, 2), torch.tensor([1e-50], dtype=torch.float64))
    assert bound.dtype == torch.float32 and bound.item() >= 2e-50
    assert M.norm_error_bound("frobenius", torch.ones(1, 2, 2), 1e300).item() == math.inf  # overflow: +inf


def test_error_bound_names_cover_every_registered_measure() -> None:
    W = torch.randn(2, 3, 4, dtype=torch.float64)
    quasi_or_erank = {"schatten-0.25", "schatten-0.5", "schatten-0.75", "entrywise-0.5", "effective-rank"}
    for name in M.MEASURES:
        bound = M.norm_error_bound(name, W, 1e-6)
        assert bound.shape == (2,)
        if name in quasi_or_erank:
            assert bool(torch.isinf(bound).all()), name  # no Lipschitz bound: callers must escalate
        else:
            assert bool(torch.isfinite(bound).all() and (bound > 0).all()), name
    assert bool((M.norm_error_bound("frobenius", W, 0.0) == 0).all())
    assert bool(torch.isinf(M.norm_error_bound("frobenius", W, math.inf)).all())


# ---------------------------------------------------------------------------------------------- batching


def _zoo() -> torch.Tensor:
    """37 instances mixing ordinary, zero, huge, tiny and rank-one ones (masking must not leak; B ≥ 2·SIMD
    width so that vectorized bodies and scalar tails of CPU kernels both occur)."""
    rng = np.random.default_rng(11)
    A = rng.standard_normal((37, 4, 3))
    A[1] = 0.0
    A[2] *= 1e250
    A[3] *= 1e-250
    A[4] = np.outer(rng.standard_normal(4), rng.standard_normal(3))
    return as_torch(A)


def _batched(name: str):
    """Function of (W, rows) for the batch-independence test; ``rows`` selects the per-instance e."""
    e_all = torch.arange(37, dtype=torch.float64) * 1e-3
    if name == "singular-values":
        return lambda W, rows: M.singular_values(W)
    if name.startswith("distance-to-rank-"):
        return lambda W, rows: M.distance_to_rank(W, int(name[-1]))
    if name == "bound-frobenius":
        return lambda W, rows: M.norm_error_bound("frobenius", W, e_all[rows])
    if name == "bound-singular":
        return lambda W, rows: M.singular_value_error_bound(W, e_all[rows])
    fn = _measure(name)
    return lambda W, rows: fn(W)


@pytest.mark.parametrize("name", [*ALL_NAMES, "singular-values", "distance-to-rank-0", "distance-to-rank-2",
                                  "bound-frobenius", "bound-singular"])
def test_batch_independence(name: str) -> None:
    fn = _batched(name)
    W = _zoo()
    together = fn(W, slice(None))
    for i in range(W.shape[0]):
        alone = fn(W[i : i + 1], slice(i, i + 1))[0]
        both_nan = bool(alone.isnan().all() and together[i].isnan().all())
        assert torch.equal(alone, together[i]) or both_nan, (name, i)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_memory_layout_does_not_change_results(name: str) -> None:
    W = _zoo()
    ref = _measure(name)(W).nan_to_num(-1.0)  # the zero instance's effective rank is NaN
    transposed_memory = W.mT.contiguous().mT  # same values, column-major storage
    strided = torch.stack([W, W], dim=1)[:, 0]  # non-contiguous batch dimension
    for other in (transposed_memory, strided):
        assert torch.equal(_measure(name)(other).nan_to_num(-1.0), ref), name


def test_empty_batch() -> None:
    W = torch.zeros(0, 3, 2, dtype=torch.float64)
    for name, fn in M.MEASURES.items():
        assert fn(W).shape == (0,), name


# ---------------------------------------------------------------------------------------------- bad input


GOOD = torch.ones(2, 3, 4, dtype=torch.float64)


def _with(value: float) -> torch.Tensor:
    W = GOOD.clone()
    W[1, 2, 0] = value
    return W


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: M.frobenius(torch.ones(3, 4)), r"shape \(B, d, d'\) .*got shape \(3, 4\) \(ndim 2\)"),
        (lambda: M.spectral(torch.ones(2, 0, 3)), r"d ≥ 1 and d' ≥ 1"),
        (lambda: M.spectral(np.ones((2, 3, 3))), r"must be a torch.Tensor"),
        (lambda: M.nuclear(torch.ones(2, 3, 3, dtype=torch.int64)), r"float32 or float64, got torch.int64"),
        (lambda: M.nuclear(torch.ones(2, 3, 3, dtype=torch.float16)), r"float32 or float64"),
        (lambda: M.nuclear(torch.ones(2, 3, 3, dtype=torch.complex128)), r"float32 or float64"),
        (lambda: M.effective_rank(_with(math.nan)), r"NaN/Inf entries \(instances \[1\]\)"),
        (lambda: M.sigma_min(_with(math.inf)), r"NaN/Inf entries \(instances \[1\]\)"),
        (lambda: M.schatten(GOOD, 0), r"p must be > 0"),
        (lambda: M.schatten(GOOD, -1.0), r"p must be > 0"),
        (lambda: M.entrywise(GOOD, math.nan), r"p must be > 0"),
        (lambda: M.entrywise(GOOD, -math.inf), r"p must be > 0"),
        (lambda: M.schatten(GOOD, "2"), r"p must be a real number"),
        (lambda: M.schatten(GOOD, True), r"p must be a real number"),
        (lambda: M.distance_to_rank(GOOD, -1), r"rank k must be in 0 … min\(d, d'\) = 3 .* got -1"),
        (lambda: M.distance_to_rank(GOOD, 4), r"rank k must be in 0 … min\(d, d'\) = 3 .* got 4"),
        (lambda: M.distance_to_rank(GOOD, 1.5), r"rank k must be an integer"),
        (lambda: M.distance_to_rank(GOOD, True), r"rank k must be an integer"),
        (lambda: M.singular_value_error_bound(GOOD, -1e-3), r"e must be ≥ 0"),
        (lambda: M.singular_value_error_bound(GOOD, math.nan), r"e must be ≥ 0 and not NaN"),
        (lambda: M.norm_error_bound("frobenius", GOOD, torch.ones(3)), r"shape \(B,\) = \(2,\), got \(3,\)"),
        (lambda: M.norm_error_bound("frobenius", GOOD, "1e-3"), r"e must be a float or a \(B,\) tensor"),
        (lambda: M.norm_error_bound("frobenious", GOOD, 1e-3), r"unknown measure 'frobenious'; known: frob"),
        (lambda: M.norm_error_bound("schatten-0", GOOD, 1e-3), r"schatten-0 must be > 0"),
        (lambda: M.norm_error_bound(2, GOOD, 1e-3), r"measure name must be a string"),
        (lambda: M.norm_error_bound("frobenius", torch.ones(3, 4), 1e-3), r"ndim 2"),
    ],
)
def test_bad_input_raises_with_helpful_message(call, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        call()


def test_invalid_input_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        M.schatten(GOOD, 0)


# ---------------------------------------------------------------------------------------------- certified values
# Measures as certified values: the bound is never below the actual error (against python-flint / mpmath at 60
# digits), on drawn inputs with the edge cases (zeros, equal singular values, rank deficiency, tiny and huge
# magnitudes, inputs that carry their own error), and the equality cases of norm inequalities decide exactly.
# Reference: singular values of the SAME float64 matrix (converted exactly) at 60 digits by mpmath, entries summed
# in flint's exact rationals; for a Certified input W ± e, the measure of corners W + E with |E_ij| = e.

CDPS = 60  # digits of the certified-bound references below
CNAMES = ("frobenius", "nuclear", "spectral", "sigma-min", "effective-rank", "schatten-0.5", "schatten-3",
         "entrywise-0.5", "entrywise-1", "entrywise-inf", "distance-1")


def _cfn(name: str):
    if name in _measures.MEASURES:
        return _measures.MEASURES[name]
    if name.startswith("distance-"):
        return lambda W: _measures.distance_to_rank(W, int(name[-1]))
    kind, p = name.split("-")
    f = _measures.schatten if kind == "schatten" else _measures.entrywise
    return lambda W: f(W, math.inf if p == "inf" else float(p))


def _c_svals(A: np.ndarray) -> list:
    with mpmath.workdps(CDPS):
        S = mpmath.svd_r(mpmath.matrix(A.tolist()), compute_uv=False)
        return sorted((abs(S[i]) for i in range(S.rows)), reverse=True)


def _c_ref(name: str, A: np.ndarray):
    """The measure of the float64 matrix A at 60 digits (an mpf), or None where undefined (erank of 0)."""
    with mpmath.workdps(CDPS):
        s = _c_svals(A)
        ent = [abs(fmpq(*float(x).as_integer_ratio())) for x in A.ravel()]
        if name == "frobenius":
            f2 = sum((x * x for x in ent), fmpq(0))
            return mpmath.sqrt(mpmath.mpf(int(f2.p)) / int(f2.q))
        if name == "nuclear":
            return mpmath.fsum(s)
        if name == "spectral":
            return s[0]
        if name == "sigma-min":
            return s[-1]
        if name == "distance-1":
            return mpmath.sqrt(mpmath.fsum(x * x for x in s[1:]))
        if name == "effective-rank":
            tot = mpmath.fsum(s)
            if tot == 0:
                return None
            q = [x / tot for x in s if x > 0]
            return mpmath.exp(-mpmath.fsum(x * mpmath.log(x) for x in q))
        kind, p = name.split("-")
        xs = s if kind == "schatten" else [mpmath.mpf(int(x.p)) / int(x.q) for x in ent]
        if p == "inf":
            return max(xs)
        p = mpmath.mpf(p)
        return mpmath.fsum(x**p for x in xs if x > 0) ** (1 / p)


@st.composite
def edge_matrices(draw):
    """(B, d, d') float64 with the edge cases: zeros, rank deficiency, equal singular values, tiny/huge scales."""
    B, d, e = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["gauss", "zero", "rank1", "orthogonal", "diag-repeated", "integer"]))
    k = min(d, e)
    if kind == "gauss":
        A = rng.standard_normal((B, d, e))
    elif kind == "zero":
        A = np.zeros((B, d, e))
    elif kind == "rank1":
        A = rng.integers(-4, 5, (B, d, 1)) * rng.integers(-4, 5, (B, 1, e)).astype(float)
    elif kind == "orthogonal":  # all singular values equal
        q, _ = np.linalg.qr(rng.standard_normal((max(d, e), max(d, e))))
        A = np.broadcast_to(q[:d, :e], (B, d, e)).copy()
    elif kind == "diag-repeated":
        A = np.zeros((B, d, e))
        for i in range(k):
            A[:, i, i] = 2.0 if i < 2 else 0.0
    else:
        A = rng.integers(-3, 4, (B, d, e)).astype(float)
    scale = 2.0 ** draw(st.sampled_from([-900, -60, 0, 60, 900]))
    return A * scale


@settings(max_examples=60, deadline=None)
@given(A=edge_matrices(), name=st.sampled_from(CNAMES))
def test_certified_bound_covers_the_exact_value(A: np.ndarray, name: str) -> None:
    out = _cfn(name)(torch.from_numpy(A))
    assert isinstance(out, Certified) and out.shape == (A.shape[0],)
    for i in range(A.shape[0]):
        ref = _c_ref(name, A[i])
        v, e = float(out.value[i]), float(out.error[i])
        if ref is None:
            assert not math.isfinite(v) or math.isinf(e)  # undefined: never a finite certified number
            continue
        with mpmath.workdps(CDPS):
            assert abs(mpmath.mpf(v) - ref) <= mpmath.mpf(e), (name, v, e, float(ref))


@settings(max_examples=30, deadline=None)
@given(A=edge_matrices(), name=st.sampled_from(CNAMES), data=st.data())
def test_certified_input_error_is_carried(A: np.ndarray, name: str, data) -> None:
    """W ± e (a Certified input): the bound covers the measure of every corner W + E, |E_ij| = e."""
    e = 2.0 ** data.draw(st.integers(-30, -5)) * max(1.0, float(np.abs(A).max()))
    W = Certified.measured(torch.from_numpy(A), torch.full(A.shape, e, dtype=torch.float64), rigorous=True)
    out = _cfn(name)(W)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    for _ in range(3):
        E = e * rng.choice([-1.0, 1.0], A.shape)
        # A + E is rounded in float64; a corner that rounding pushed outside the ball |E_ij| ≤ e is not an input
        # the bound speaks about (seen: A = 2.18e17, e = A/32, the sum rounded 3 units past e; and A = 1e-19,
        # e = 2⁻¹⁰, where A + E rounds up by an ulp of e).  Tested in exact rationals: a float difference
        # (A + E) − A is itself rounded when A ≪ e.
        from fractions import Fraction

        moved = np.vectorize(lambda s, a: abs(Fraction(float(s)) - Fraction(float(a))) <= Fraction(e), otypes=[bool])
        inside = np.all(moved(A + E, A), axis=(1, 2))
        for i in range(A.shape[0]):
            if not inside[i]:
                continue
            ref = _c_ref(name, A[i] + E[i])
            if ref is None or math.isinf(float(out.error[i])):
                continue
            with mpmath.workdps(CDPS):
                assert abs(mpmath.mpf(float(out.value[i])) - ref) <= mpmath.mpf(float(out.error[i])), name


# ---------------------------------------------------------------------------------------------- decisions


def test_nuclear_at_least_frobenius_decides_random_and_rank_one() -> None:
    """‖W‖_* ≥ ‖W‖_F: decided by the float tier for random W (σ_2 ≫ the error), and at EXACT rank one (integer
    u, dyadic v: every product u_i v_j is exact in float64) by the exact tier, where ‖W‖_* = ‖W‖_F = ‖W‖_2; the
    strict ``>`` is refuted there by exact equality."""
    g = torch.Generator().manual_seed(1)
    W = torch.randn(5, 3, 4, generator=g, dtype=torch.float64)
    certify(_measures.nuclear(W) >= _measures.frobenius(W), what="‖W‖_* ≥ ‖W‖_F (random)")
    u = torch.randint(-4, 5, (4, 3, 1), generator=g).double() + 0.5
    v = torch.randint(-4, 5, (4, 1, 2), generator=g).double() * 0.25 + 0.125
    R = u @ v  # exactly rank one
    certify(_measures.nuclear(R) >= _measures.frobenius(R), what="‖W‖_* ≥ ‖W‖_F (rank one, equality)")
    certify(_measures.nuclear(R) >= _measures.spectral(R), what="‖W‖_* ≥ ‖W‖_2 (rank one, equality)")
    with pytest.raises(AssertionError, match="exactly equal"):
        certify(_measures.nuclear(R) > _measures.frobenius(R), what="‖W‖_* > ‖W‖_F is false at rank one")


def test_ball_svd_enclosure_contains_the_singular_values() -> None:
    """balls.svd_enclosure (the ball tier's svdvals) encloses mpmath's 80-digit singular values, and stays finite
    where the residual A − ÛΣ̂V̂ᵀ has entries whose balls straddle 0 (exactly rank-deficient and float rank-one
    matrices; once every enclosure was NaN there, from √ of a sum of squared balls straddling 0)."""
    import mpmath
    from flint import arb

    from implreg.numerics import balls

    g = torch.Generator().manual_seed(4)
    cases = [torch.randn(3, 2, generator=g, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64),
             torch.randn(3, 1, generator=g, dtype=torch.float64) @ torch.randn(1, 3, generator=g, dtype=torch.float64),
             torch.tensor([[1e-300, 0.0], [0.0, 1e300]], dtype=torch.float64), torch.eye(3, dtype=torch.float64)]
    for M in cases:
        A = np.array([[arb(float(x)) for x in row] for row in M.tolist()], dtype=object)
        got = balls.svd_enclosure(A, 128)
        with mpmath.workdps(80):
            exact = sorted((abs(x) for x in mpmath.svd_r(mpmath.matrix(M.tolist()), compute_uv=False)), reverse=True)
        for ball, sv in zip(got, exact, strict=True):
            assert ball.is_finite(), f"svd_enclosure gave {ball} for {M.tolist()}"
            assert ball.lower() <= arb(mpmath.nstr(sv, 60)) <= ball.upper(), (ball, sv, M.tolist())


def test_nuclear_at_least_frobenius_near_rank_one_escalates() -> None:
    """A float product u@vᵀ is rank one only up to rounding (σ₂ ∈ {0, ~1e-17}): the ball tier separates σ₂ from 0
    or proves it 0, so ‖W‖_* ≥ ‖W‖_F is decided."""
    g = torch.Generator().manual_seed(1)
    u = torch.randn(4, 3, 1, generator=g, dtype=torch.float64)
    v = torch.randn(4, 1, 2, generator=g, dtype=torch.float64)
    R = u @ v  # rounded products: rank one only up to rounding (σ_2 ∈ {0, ~1e-17} exactly)
    certify(_measures.nuclear(R) >= _measures.frobenius(R), what="‖W‖_* ≥ ‖W‖_F (float rank one)")


def test_factor_norms_bound_the_nuclear_norm_at_rank_one() -> None:
    """‖U‖_F‖V‖_F ≥ ‖UVᵀ‖_*: equality at rank one (U, V single columns), decided exactly."""
    g = torch.Generator().manual_seed(2)
    U = torch.randint(-3, 4, (4, 3, 1), generator=g).double() + 0.5
    V = torch.randint(-3, 4, (4, 2, 1), generator=g).double() - 0.25
    certify(_measures.frobenius(U) * _measures.frobenius(V) >= _measures.nuclear(U @ V.mT), what="‖U‖_F‖V‖_F ≥ ‖UVᵀ‖_*")
    g2 = torch.Generator().manual_seed(3)
    U2, V2 = torch.randn(3, 3, 2, generator=g2, dtype=torch.float64), torch.randn(3, 4, 2, generator=g2,
                                                                                    dtype=torch.float64)
    certify(_measures.frobenius(U2) * _measures.frobenius(V2) >= _measures.nuclear(U2 @ V2.mT),
            what="‖U‖_F‖V‖_F ≥ ‖UVᵀ‖_* (rank 2)")


def test_zero_matrix_measures_are_exactly_zero() -> None:
    Z = torch.zeros(2, 3, 2, dtype=torch.float64)
    for name in ("frobenius", "nuclear", "spectral", "sigma-min", "entrywise-1", "schatten-0.5"):
        out = _cfn(name)(Z)
        certify(out == 0.0, what=f"{name}(0) = 0")
    assert bool(torch.isnan(_measures.effective_rank(Z).value).all())


def test_measures_take_extra_batch_dimensions() -> None:
    """(B, K, d, d') — a flow's states at K loss levels — is measured per matrix, with the leading shape kept,
    bit-identical to measuring the flattened (B·K, d, d') batch; fewer than 3 dimensions is an error that says so."""
    g = torch.Generator().manual_seed(5)
    W = Certified.measured(torch.randn(3, 4, 2, 3, generator=g, dtype=torch.float64),
                           torch.full((3, 4, 2, 3), 1e-12, dtype=torch.float64), rigorous=True)
    flat = W.reshape(12, 2, 3)
    for name, f in [("nuclear", _measures.nuclear), ("frobenius", _measures.frobenius),
                    ("spectral", _measures.spectral), ("sigma_min", _measures.sigma_min),
                    ("effective_rank", _measures.effective_rank), ("singular_values", _measures.singular_values),
                    ("schatten-0.5", lambda X: _measures.schatten(X, 0.5)),
                    ("entrywise-1", lambda X: _measures.entrywise(X, 1)),
                    ("distance_to_rank-1", lambda X: _measures.distance_to_rank(X, 1))]:
        a, b = f(W), f(flat)
        assert tuple(a.shape[:2]) == (3, 4), name
        assert torch.equal(a.value.reshape(b.value.shape), b.value), name
        assert torch.equal(a.error.reshape(b.error.shape), b.error), name
    with pytest.raises(InvalidInputError, match="add a batch dimension"):
        _measures.nuclear(torch.zeros(2, 2, dtype=torch.float64))
