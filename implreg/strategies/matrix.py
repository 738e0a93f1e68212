"""Hypothesis strategies for deep matrix factorization: valid instances by construction.

    balanced_inits(depth=3, shape=(2, 2), det_sign=+1, scale=(1e-3, 1e-1))   → BalancedInit
    gaussian_inits(dims=(2, 2, 2), scale=(1e-3, 1e-1), det_sign=+1)           → GaussianInit
    singular_values(k, scale=..., ratio=...)                                  → tuple of σ (descending)
    haar_seeds()                                                              → a seed for a Haar rotation
    low_rank_completions(d=..., rank=..., fraction=...)                       → LowRankCompletion
    perturbation_eps(lo, hi)                                                  → ε for razin_cohen_perturbed
    same_depth_batches(depth, instance, max_size)                             → a Batch of one depth

A balanced init is *built*, never filtered: singular values σ are drawn (log-uniform scale, log-uniform
ratios σ_r/σ_1), the orthogonal matrices U, V, R_1 … R_{N−1} are Haar draws (QR of a Gaussian matrix with the
signs of diag R fixed; the Gaussian comes from a drawn seed, so the rotation is exactly Haar-distributed given
the seed and the shrunk counterexample is the seed-0 rotation), and the factors follow CLAIMS.md's recipe
``W_1 = R_1 S^{1/N} Vᵀ``, ``W_j = R_j S^{1/N} R_{j−1}ᵀ``, ``W_N = U S^{1/N} R_{N−1}ᵀ``, which is balanced
(``W_{j+1}ᵀW_{j+1} = W_jW_jᵀ``) for every choice.  A determinant sign is imposed by negating the first column of
U (a measure-preserving map of the Haar measure that flips det U).

Every instance stores the Gaussian matrices it was built from, so (i) its ``repr`` is a Python expression that
rebuilds it exactly (Hypothesis prints it for a falsifying example), and (ii) the same factors can be formed at
any precision (``factors_mp(dps)``): the QR is recomputed in mpmath, so the mpmath reference starts from factors
that are balanced to ``dps`` digits, not to float64 rounding (which matters: a float64-rounded balanced init is
unbalanced by ~1e-17, and at depth 2 that is enough for the *exact* flow from the rounded factors to flip det W).

Strategies cannot call ``hypothesis.target`` (only test bodies can); claims steer toward small margins through
``implreg.certify`` (which targets the smallest relative margin of every comparison) and their own ``target``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hypothesis import strategies as st

from implreg.errors import InvalidInputError
from implreg.matrix.inits import stack_factors
from implreg.matrix.problems import Problem, completion, razin_cohen_perturbed, stack_problems

__all__ = [
    "BalancedInit",
    "GaussianInit",
    "LinearProblem",
    "LowRankCompletion",
    "PerturbedObservations",
    "balanced_inits",
    "depth_batches",
    "factorizations",
    "gaussian_inits",
    "haar_seeds",
    "linear_flow_batches",
    "linear_flow_families",
    "linear_problems",
    "low_rank_completions",
    "orthogonal_from_gaussian",
    "perturbation_eps",
    "perturbed_observations",
    "perturbed_problems",
    "same_depth_batches",
    "singular_values",
    "stack_end_to_end_batch",
    "stack_factors",
    "stack_linear_batch",
    "stack_problems",
]

Matrix = tuple[tuple[float, ...], ...]


# ---------------------------------------------------------------------------------------------- helpers


def _as_matrix(a: np.ndarray) -> Matrix:
    return tuple(tuple(float(x) for x in row) for row in np.asarray(a, dtype=np.float64))


def _gaussian(seed: int, rows: int, cols: int) -> Matrix:
    """A rows×cols standard Gaussian matrix from numpy's PCG64 stream ``seed`` (stored explicitly afterwards)."""
    return _as_matrix(np.random.default_rng(int(seed)).standard_normal((rows, cols)))


def orthogonal_from_gaussian(z: Matrix | np.ndarray) -> np.ndarray:
    """Q of ``Z = QR`` with diag(R) ≥ 0 (float64): Haar-distributed when Z is Gaussian (Mezzadri 2007, §5).

    Householder QR returns an orthogonal Q for *any* Z (a singular Z included); columns whose R_ii is 0 keep
    their sign, so Q is orthogonal by construction.
    """
    Z = np.asarray(z, dtype=np.float64)
    Q, R = np.linalg.qr(Z)
    s = np.where(np.diag(R) < 0, -1.0, 1.0)
    return Q * s[None, :]


def _orthogonal_mp(z: Matrix, dps: int) -> Any:
    """The same Q at ``dps`` digits (mpmath Householder QR of the same Z, same sign convention)."""
    from mpmath import mp

    with mp.workdps(dps):
        Z = mp.matrix([[mp.mpf(x) for x in row] for row in z])
        Q, R = mp.qr(Z)
        n = Z.rows
        for c in range(n):
            if R[c, c] < 0:
                for r in range(n):
                    Q[r, c] = -Q[r, c]
        return Q


def _lift(x: Any) -> st.SearchStrategy[Any]:
    return x if isinstance(x, st.SearchStrategy) else st.just(x)


def _reused(factory: Callable[..., st.SearchStrategy[Any]]) -> Callable[..., st.SearchStrategy[Any]]:
    """A strategy factory that returns the same strategy for the same (hashable) arguments.  Why: building a
    ``@st.composite`` strategy makes Hypothesis read its function's source (≈ 1.4 ms), and claims build these
    inside ``flatmap`` on every draw (perturbed-robustness: 6,088 builds, 8.5 of its 44 s, profiled).  Strategies
    are immutable, so a reused one draws exactly what a new one would; unhashable arguments build a new one."""
    cache: dict[Any, st.SearchStrategy[Any]] = {}

    @functools.wraps(factory)
    def build(*args: Any, **kwargs: Any) -> st.SearchStrategy[Any]:
        try:
            key = (args, tuple(sorted(kwargs.items())))
            hash(key)
        except TypeError:
            return factory(*args, **kwargs)
        if key not in cache:
            cache[key] = factory(*args, **kwargs)
        return cache[key]

    return build


def _log_uniform(lo: float, hi: float) -> st.SearchStrategy[float]:
    """x = 10^e with e drawn in [log10 lo, log10 hi] (shrinks towards lo's exponent end of the range)."""
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise InvalidInputError(f"need 0 < lo ≤ hi < ∞ for a log-uniform range, got ({lo}, {hi})")
    if lo == hi:
        return st.just(float(lo))
    a, b = math.log10(lo), math.log10(hi)
    return st.floats(a, b, allow_nan=False, allow_infinity=False).map(lambda e: float(min(max(10.0**e, lo), hi)))


def _int_range(x: int | tuple[int, int] | st.SearchStrategy[int]) -> st.SearchStrategy[int]:
    """An int, an inclusive (lo, hi) range, or a strategy → a strategy."""
    if isinstance(x, st.SearchStrategy):
        return x
    if isinstance(x, tuple):
        return st.integers(int(x[0]), int(x[1]))
    return st.just(int(x))


def _pair(x: float | tuple[float, float]) -> tuple[float, float]:
    if isinstance(x, (int, float)):
        return float(x), float(x)
    lo, hi = x
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------------- balanced


@dataclass(frozen=True)
class BalancedInit:
    """A balanced init of depth N for d×d' end-to-end matrices, from its singular values and rotations.

    ``sigma``: singular values of W(0) (k = min(d, d'), descending, > 0); ``zu`` (d×d), ``zv`` (d'×d') and
    ``zr`` (N−1 of h×h) are the Gaussian matrices whose QR gives U, V and the hidden rotations R_j;
    ``flip_u`` negates U's first column (the det-sign control).  ``width`` h ≥ k (default k).
    """

    depth: int
    sigma: tuple[float, ...]
    zu: Matrix
    zv: Matrix
    zr: tuple[Matrix, ...] = ()
    flip_u: bool = False
    width: int | None = None
    #: balanced by construction (``implreg.matrix.inits.is_balanced``: the solvers pick the balanced flow)
    balanced = True

    def __post_init__(self) -> None:
        d, e, k, h = self.d, self.e, self.k, self.h
        if self.depth < 1:
            raise InvalidInputError(f"depth must be ≥ 1, got {self.depth}")
        if len(self.sigma) != k or any(not (s > 0 and math.isfinite(s)) for s in self.sigma):
            raise InvalidInputError(f"need {k} positive finite singular values, got {self.sigma}")
        if list(self.sigma) != sorted(self.sigma, reverse=True):
            raise InvalidInputError(f"singular values must be descending, got {self.sigma}")
        if h < k:
            raise InvalidInputError(f"width {h} is below min(d, d') = {k}")
        if len(self.zr) != self.depth - 1 or any(len(z) != h or len(z[0]) != h for z in self.zr):
            raise InvalidInputError(f"depth {self.depth} needs {self.depth - 1} hidden {h}×{h} Gaussians")
        if len(self.zv) != e or len(self.zv[0]) != e or len(self.zu[0]) != d:
            raise InvalidInputError("zu must be d×d and zv d'×d'")

    # -- shape ------------------------------------------------------------------------------------
    @property
    def d(self) -> int:
        return len(self.zu)

    @property
    def e(self) -> int:
        return len(self.zv)

    @property
    def k(self) -> int:
        return min(self.d, self.e)

    @property
    def h(self) -> int:
        return self.k if self.width is None else int(self.width)

    @property
    def dims(self) -> tuple[int, ...]:
        return (self.e, *([self.h] * (self.depth - 1)), self.d)

    # -- float64 ----------------------------------------------------------------------------------
    def rotations(self) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """(U, V, [R_1 … R_{N−1}]) in float64."""
        U = orthogonal_from_gaussian(self.zu)
        if self.flip_u:
            U = U.copy()
            U[:, 0] = -U[:, 0]
        return U, orthogonal_from_gaussian(self.zv), [orthogonal_from_gaussian(z) for z in self.zr]

    @property
    def det_sign(self) -> int:
        """sign det W(0) (square only): det U · det V (the σ are positive)."""
        if self.d != self.e:
            raise InvalidInputError("a determinant sign needs a square end-to-end matrix")
        U, V, _ = self.rotations()
        return int(np.sign(np.linalg.det(U) * np.linalg.det(V)))

    def W0(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """W(0) = U S Vᵀ, shape (d, d')."""
        U, V, _ = self.rotations()
        k = self.k
        return torch.as_tensor((U[:, :k] * np.asarray(self.sigma)[None, :]) @ V[:, :k].T, dtype=dtype)

    def factors(self, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
        """(W_1, …, W_N), each with a batch axis of 1, balanced to float64 rounding."""
        U, V, R = self.rotations()
        N, k, h, d, e = self.depth, self.k, self.h, self.d, self.e
        s = np.exp(np.log(np.asarray(self.sigma)) / N)
        s_pad = np.concatenate([s, np.zeros(h - k)])
        if N == 1:
            mats = [(U[:, :k] * np.asarray(self.sigma)[None, :]) @ V[:, :k].T]
        else:
            first = np.zeros((h, e))
            first[:k] = s[:, None] * V[:, :k].T
            last = np.zeros((d, h))
            last[:, :k] = U[:, :k] * s[None, :]
            mats = [R[0] @ first]
            for j in range(1, N - 1):
                mats.append(R[j] @ (s_pad[:, None] * R[j - 1].T))
            mats.append(last @ R[-1].T)
        return tuple(torch.as_tensor(m, dtype=dtype).unsqueeze(0).contiguous() for m in mats)

    # -- arbitrary precision ------------------------------------------------------------------------
    def factors_mp(self, dps: int) -> list[Any]:
        """The same factors as mpmath matrices at ``dps`` digits, balanced to that precision."""
        from mpmath import mp

        with mp.workdps(dps + 10):
            U = _orthogonal_mp(self.zu, dps + 10)
            V = _orthogonal_mp(self.zv, dps + 10)
            R = [_orthogonal_mp(z, dps + 10) for z in self.zr]
            if self.flip_u:
                for r in range(self.d):
                    U[r, 0] = -U[r, 0]
            N, k, h, d, e = self.depth, self.k, self.h, self.d, self.e
            s = [mp.root(mp.mpf(x), N) for x in self.sigma]
            if N == 1:
                return [mp.matrix([[mp.fsum(U[i, r] * mp.mpf(self.sigma[r]) * V[j, r] for r in range(k))
                                    for j in range(e)] for i in range(d)])]
            first = mp.matrix(h, e)
            for r in range(k):
                for j in range(e):
                    first[r, j] = s[r] * V[j, r]
            last = mp.matrix(d, h)
            for i in range(d):
                for r in range(k):
                    last[i, r] = U[i, r] * s[r]
            S = mp.diag([*s, *([mp.mpf(0)] * (h - k))])
            mats = [R[0] * first]
            for j in range(1, N - 1):
                mats.append(R[j] * S * R[j - 1].T)
            mats.append(last * R[-1].T)
            return mats

    def __repr__(self) -> str:
        w = "" if self.width is None else f", width={self.width}"
        return (f"BalancedInit(depth={self.depth}, sigma={self.sigma!r}, zu={self.zu!r}, zv={self.zv!r}, "
                f"zr={self.zr!r}, flip_u={self.flip_u!r}{w})")


@_reused
def singular_values(k: int, *, scale: float | tuple[float, float] = (1e-3, 1e-1),
                    ratio: float | tuple[float, float] = (1e-2, 1.0)) -> st.SearchStrategy[tuple[float, ...]]:
    """k singular values, descending: σ_1 log-uniform in ``scale``, σ_r = σ_1·ρ_r with ρ_r log-uniform in
    ``ratio`` (sorted), so the condition number is at most 1/min(ratio)."""
    lo, hi = _pair(scale)
    rlo, rhi = _pair(ratio)
    if not (0 < rlo <= rhi <= 1):
        raise InvalidInputError(f"ratio range must lie in (0, 1], got {ratio}")

    first, ratios = _log_uniform(lo, hi), _log_uniform(rlo, rhi)  # built once, drawn from many times

    @st.composite
    def draw(draw_) -> tuple[float, ...]:
        s1 = draw_(first)
        rest = sorted((draw_(ratios) for _ in range(k - 1)), reverse=True)
        return (s1, *(s1 * r for r in rest))

    return draw()


def haar_seeds() -> st.SearchStrategy[int]:
    """A seed for one Gaussian matrix (hence one Haar rotation); shrinks towards 0."""
    return st.integers(0, 2**32 - 1)


@_reused
def balanced_inits(*, depth: int | st.SearchStrategy[int] = (2, 5),
                   shape: tuple[int, int] | st.SearchStrategy[tuple[int, int]] = (2, 2),
                   width: int | None = None, det_sign: int | None = None,
                   scale: float | tuple[float, float] = (1e-3, 1e-1),
                   ratio: float | tuple[float, float] = (1e-2, 1.0)) -> st.SearchStrategy[BalancedInit]:
    """A balanced init (see the module docstring): depth N, W(0) of ``shape`` with singular values from
    :func:`singular_values` (``scale``, ``ratio``), Haar U, V, R_j, and det W(0) of sign ``det_sign``
    (square shapes; None leaves the drawn sign)."""
    if det_sign not in (None, 1, -1):
        raise InvalidInputError(f"det_sign must be +1, −1 or None, got {det_sign}")
    depth = _int_range(depth)

    depth_s, shape_s, seeds = _lift(depth), _lift(shape), haar_seeds()

    @st.composite
    def draw(draw_) -> BalancedInit:
        N = draw_(depth_s)
        d, e = draw_(shape_s)
        k = min(d, e)
        h = k if width is None else int(width)
        sig = draw_(singular_values(k, scale=scale, ratio=ratio))  # built once per k (@_reused)
        zu = _gaussian(draw_(seeds), d, d)
        zv = _gaussian(draw_(seeds), e, e)
        zr = tuple(_gaussian(draw_(seeds), h, h) for _ in range(N - 1))
        init = BalancedInit(N, tuple(sig), zu, zv, zr, False, width)
        if det_sign is not None:
            if d != e:
                raise InvalidInputError(f"det_sign needs a square shape, got {(d, e)}")
            if init.det_sign != det_sign:
                init = BalancedInit(N, tuple(sig), zu, zv, zr, True, width)
        return init

    return draw()


# ---------------------------------------------------------------------------------------------- gaussian


@dataclass(frozen=True)
class GaussianInit:
    """Independent factors with i.i.d. N(0, scale²) entries (unbalanced); ``z`` holds the N(0, 1) draws of
    W_1 … W_N, ``flip`` negates the first row of W_N (the det-sign control: measure-preserving, flips det W)."""

    scale: float
    z: tuple[Matrix, ...]
    flip: bool = False
    balanced = False  # independent factors (``implreg.matrix.inits.is_balanced``)

    @property
    def depth(self) -> int:
        return len(self.z)

    @property
    def dims(self) -> tuple[int, ...]:
        return (len(self.z[0][0]), *(len(m) for m in self.z))

    def factors(self, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
        mats = [self.scale * np.asarray(m, dtype=np.float64) for m in self.z]
        if self.flip:
            mats[-1] = mats[-1].copy()
            mats[-1][0] = -mats[-1][0]
        return tuple(torch.as_tensor(m, dtype=dtype).unsqueeze(0).contiguous() for m in mats)

    def factors_mp(self, dps: int) -> list[Any]:
        from mpmath import mp

        with mp.workdps(dps):
            return [mp.matrix(W[0].tolist()) for W in self.factors()]

    def W0(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        W = self.factors(dtype)
        out = W[0][0]
        for Wj in W[1:]:
            out = Wj[0] @ out
        return out

    @property
    def det_sign(self) -> int:
        """sign det(W_N⋯W_1) of the exact product of the (float64) factors, in rational arithmetic."""
        return _exact_det_sign([W[0].tolist() for W in self.factors()])

    def __repr__(self) -> str:
        return f"GaussianInit(scale={self.scale!r}, z={self.z!r}, flip={self.flip!r})"


def _exact_det_sign(mats: list[list[list[float]]]) -> int:
    """Sign of det(M_N⋯M_1) computed exactly over the rationals (the factors' floats are exact dyadics)."""
    from fractions import Fraction

    P = [[Fraction(x) for x in row] for row in mats[0]]
    for Mj in mats[1:]:
        A = [[Fraction(x) for x in row] for row in Mj]
        P = [[sum((A[i][k] * P[k][j] for k in range(len(P))), Fraction(0)) for j in range(len(P[0]))]
             for i in range(len(A))]
    n, sign = len(P), 1
    for c in range(n):
        p = next((r for r in range(c, n) if P[r][c] != 0), None)
        if p is None:
            return 0
        if p != c:
            P[c], P[p] = P[p], P[c]
            sign = -sign
        if P[c][c] < 0:
            sign = -sign
        for r in range(c + 1, n):
            f = P[r][c] / P[c][c]
            P[r] = [a - f * b for a, b in zip(P[r], P[c], strict=True)]
    return sign


@_reused
def gaussian_inits(*, dims: Sequence[int] | st.SearchStrategy[Sequence[int]] = (2, 2, 2),
                   scale: float | tuple[float, float] = (1e-3, 1e-1),
                   det_sign: int | None = None) -> st.SearchStrategy[GaussianInit]:
    """i.i.d. Gaussian factors of widths ``dims = (d_0, …, d_N)`` at a log-uniform ``scale``; the entries come
    from a drawn seed (exactly Gaussian given the seed).  ``det_sign`` (square end-to-end) negates the first
    row of W_N where needed, judged by the exact (rational) determinant of the product of the float factors; a
    singular draw (probability 0) is kept as drawn for ``det_sign=None`` and replaced by the next seed otherwise
    (a deterministic, not a filtering, step)."""
    if det_sign not in (None, 1, -1):
        raise InvalidInputError(f"det_sign must be +1, −1 or None, got {det_sign}")
    dims_s, scale_s = _lift(dims), _log_uniform(*_pair(scale))  # built once, drawn from many times

    @st.composite
    def draw(draw_) -> GaussianInit:
        ds = tuple(int(x) for x in draw_(dims_s))
        s = draw_(scale_s)
        seed = draw_(st.integers(0, 2**32 - 1))
        while True:
            rng = np.random.default_rng(seed)
            z = tuple(_as_matrix(rng.standard_normal((ds[j + 1], ds[j]))) for j in range(len(ds) - 1))
            init = GaussianInit(s, z, False)
            if det_sign is None:
                return init
            if ds[0] != ds[-1] or min(ds) < ds[0]:
                raise InvalidInputError(f"det_sign needs a square end-to-end matrix without a bottleneck (a hidden "
                                        f"width below d makes det W = 0), got dims {ds}")
            sg = init.det_sign
            if sg != 0:
                return init if sg == det_sign else GaussianInit(s, z, True)
            seed += 1

    return draw()


def same_depth_batches(depth: st.SearchStrategy[int], instance: Callable[[int], st.SearchStrategy[Any]], *,
                       max_size: int = 16, min_size: int = 1) -> st.SearchStrategy[Any]:
    """Draw a depth, then a ``claims.batches`` batch of ``instance(depth)`` (one batched solve per example)."""
    from implreg.harness.claims import batches

    def keyed(N: int) -> st.SearchStrategy[Any]:
        def tag(batch: Any) -> Any:
            batch.key = N  # pooled runs merge batches of one depth only
            return batch
        return batches(instance(N), max_size=max_size, min_size=min_size).map(tag)

    return depth.flatmap(keyed)


def depth_batches(depths: Sequence[int], instance: Callable[[int], st.SearchStrategy[Any]], *,
                  max_size: int = 12, min_size: int = 1) -> st.SearchStrategy[dict[int, Any]]:
    """One ``claims.batches`` batch per depth in ``depths`` (a dict depth → Batch): one example covers every
    depth with one batched solve each; shrinking shortens every batch (down to ``min_size``)."""
    from implreg.harness.claims import batches

    return st.fixed_dictionaries({int(N): batches(instance(int(N)), max_size=max_size, min_size=min_size)
                                  for N in depths})


# ---------------------------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class LowRankCompletion:
    """Completion of a rank-r truth ``M = A Bᵀ`` (d×d') from the entries where ``mask`` is 1."""

    truth: Matrix
    mask: Matrix
    rank: int
    init_scale: float = 1e-3

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.truth), len(self.truth[0])

    @property
    def observed(self) -> int:
        return int(np.asarray(self.mask).sum())

    def problem(self, dtype: torch.dtype = torch.float64) -> Problem:
        return completion(torch.as_tensor(self.mask, dtype=dtype), torch.as_tensor(self.truth, dtype=dtype),
                          name=f"low-rank-completion-{self.shape[0]}x{self.shape[1]}-r{self.rank}")

    def truth_tensor(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return torch.as_tensor(self.truth, dtype=dtype)

    def __repr__(self) -> str:
        return (f"LowRankCompletion(truth={self.truth!r}, mask={self.mask!r}, rank={self.rank!r}, "
                f"init_scale={self.init_scale!r})")


@_reused
def low_rank_completions(*, d: int | tuple[int, int] | st.SearchStrategy[int] = (4, 6),
                         rank: int | tuple[int, int] | st.SearchStrategy[int] = (1, 2),
                         fraction: float | tuple[float, float] = (0.35, 0.6),
                         init_scale: float | tuple[float, float] = (1e-4, 1e-3),
                         ) -> st.SearchStrategy[LowRankCompletion]:
    """A d×d completion problem with a rank-r truth M = ABᵀ/‖ABᵀ‖_F·d (A, B Gaussian from a drawn seed; rank
    exactly r almost surely, checked) observed on ⌈fraction·d²⌉ entries that include a random permutation
    (so every row and every column is observed at least once), plus the init scale for the claim's solves."""
    flo, fhi = _pair(fraction)
    if not (0 < flo <= fhi <= 1):
        raise InvalidInputError(f"observation fraction must lie in (0, 1], got {fraction}")
    slo, shi = _pair(init_scale)
    d, rank = _int_range(d), _int_range(rank)
    scale_s = _log_uniform(slo, shi)  # built once, drawn from many times

    @st.composite
    def draw(draw_) -> LowRankCompletion:
        n = draw_(_lift(d))
        r = min(draw_(_lift(rank)), n)
        frac = draw_(st.floats(flo, fhi)) if flo < fhi else flo
        scale = draw_(scale_s)
        seed = draw_(st.integers(0, 2**32 - 1))
        rng = np.random.default_rng(seed)
        while True:
            A, B = rng.standard_normal((n, r)), rng.standard_normal((n, r))
            M = A @ B.T
            sv = np.linalg.svd(M, compute_uv=False)
            if sv[r - 1] > 1e-6 * sv[0]:  # rank exactly r (fails with probability 0)
                break
        M = M / np.linalg.norm(M) * n
        m = max(n, math.ceil(frac * n * n))
        mask = np.zeros((n, n))
        mask[np.arange(n), rng.permutation(n)] = 1.0
        rest = np.flatnonzero(mask.ravel() == 0)
        mask.ravel()[rng.choice(rest, size=m - n, replace=False)] = 1.0
        return LowRankCompletion(_as_matrix(M), _as_matrix(mask), r, scale)

    return draw()


def perturbation_eps(lo: float = 0.05, hi: float = 0.5) -> st.SearchStrategy[float]:
    """ε > 0 for :func:`implreg.matrix.problems.razin_cohen_perturbed`, log-uniform in [lo, hi]."""
    if not (0 < lo <= hi):
        raise InvalidInputError(f"need 0 < lo ≤ hi, got ({lo}, {hi})")
    return _log_uniform(lo, hi)


@dataclass(frozen=True)
class PerturbedObservations:
    """Razin & Cohen's robustness problem ``[[∗, z], [z′, ε]]`` with ∗ moved to ``unobserved`` = (r, c)
    (``implreg.matrix.problems.razin_cohen_observed``); ``det_sign`` is the sign det W(0) must have for the theorem,
    (−1)^(r+c)·sign(z z′) (the row/column swaps multiply det by (−1)^(r+c))."""

    z: float
    zp: float
    eps: float
    unobserved: tuple[int, int] = (0, 0)

    @property
    def det_sign(self) -> int:
        s = 1 if self.z * self.zp > 0 else -1
        return s * (-1) ** (self.unobserved[0] + self.unobserved[1])


#: The authors' experiments (Razin & Cohen 2020, robustness): z = −2, z′ = ½, ε ∈ {½, 0.1, 0.05, 0.01}.
AUTHORS_PERTURBATIONS = tuple((-2.0, 0.5, e) for e in (0.5, 0.1, 0.05, 0.01))


def perturbed_observations(*, z: tuple[float, float] = (0.25, 4.0), eps: tuple[float, float] = (0.01, 0.5),
                           authors: bool = True) -> st.SearchStrategy[PerturbedObservations]:
    """z, z′ with |z|, |z′| log-uniform in ``z`` and a drawn sign, ε with |ε| log-uniform in ``eps`` and a drawn
    sign, ∗ at a drawn position; with ``authors`` the authors' four (z, z′, ε) come first (shrinks to them)."""
    def signed(lo: float, hi: float) -> st.SearchStrategy[float]:
        return st.tuples(st.sampled_from((1.0, -1.0)), _log_uniform(lo, hi)).map(lambda t: t[0] * t[1])

    drawn = st.tuples(signed(*z), signed(*z), signed(*eps))
    values = st.one_of(st.sampled_from(AUTHORS_PERTURBATIONS), drawn) if authors else drawn
    pos = st.tuples(st.integers(0, 1), st.integers(0, 1))
    return st.builds(lambda v, p: PerturbedObservations(*v, p), values, pos)


def perturbed_problems(eps: Sequence[float], dtype: torch.dtype = torch.float64) -> Problem:
    """The perturbed Razin–Cohen problems for a batch of ε (a thin wrapper, for symmetry with the strategies)."""
    return razin_cohen_perturbed(torch.as_tensor(list(eps), dtype=dtype))


@dataclass(frozen=True)
class LinearProblem:
    """A random completion (Bernoulli(½) mask, at least one observed entry per row, N(0, 1) targets) or sensing
    (m Gaussian measurements A_k with entries N(0, 1/(dd')), y N(0, 1)) problem of ``shape``, from ``seed``
    (numpy PCG64; the tensors are rebuilt from the seed, so the repr reproduces the instance)."""

    kind: str
    shape: tuple[int, int]
    seed: int
    m: int = 0

    def problem(self, dtype: torch.dtype = torch.float64, *, padded: bool = False) -> Problem:
        """The problem; ``padded`` gives a sensing problem with d·d′ measurements, the m drawn ones then zero ones
        (A_k = 0, y_k = 0: a residual of exactly 0, so the same loss and gradient), so that sensing problems
        with different m stack; a completion problem is the same either way."""
        from implreg.matrix.problems import sensing

        rng = np.random.default_rng(self.seed)
        d, e = self.shape
        if self.kind == "completion":
            mask = (rng.random((d, e)) < 0.5).astype(float)
            mask[np.arange(d), rng.integers(0, e, d)] = 1.0
            target = rng.standard_normal((d, e))
            return completion(torch.as_tensor(mask, dtype=dtype), torch.as_tensor(target, dtype=dtype),
                              name=f"random-completion-{d}x{e}")
        A = rng.standard_normal((self.m, d, e)) / math.sqrt(d * e)
        y = rng.standard_normal(self.m)
        if padded:
            A = np.concatenate([A, np.zeros((d * e - self.m, d, e))])
            y = np.concatenate([y, np.zeros(d * e - self.m)])
        return sensing(torch.as_tensor(A, dtype=dtype), torch.as_tensor(y, dtype=dtype), name=f"random-sensing-{d}x{e}")


def linear_problems(shape: tuple[int, int] | st.SearchStrategy[tuple[int, int]] = (2, 2),
                    kinds: Sequence[str] = ("completion", "sensing")) -> st.SearchStrategy[LinearProblem]:
    """A random completion or sensing problem of ``shape`` (sensing with 1 … d·d' measurements)."""

    @st.composite
    def draw(draw_) -> LinearProblem:
        d, e = draw_(_lift(shape))
        kind = draw_(st.sampled_from(list(kinds)))
        m = draw_(st.integers(1, d * e)) if kind == "sensing" else 0
        return LinearProblem(kind, (d, e), draw_(st.integers(0, 2**32 - 1)), m)

    return draw()


def linear_flow_batches(instance: Callable[[int, tuple[int, int], int], st.SearchStrategy[Any]], *,
                        depths: tuple[int, int], shapes: Sequence[tuple[int, int]],
                        kinds: Sequence[str] = ("completion", "sensing"), max_width: int = 3,
                        max_size: int = 8) -> st.SearchStrategy[Any]:
    """One problem family and factorization per example: a depth N, a shape (d, d′), a kind (with m measurements
    for sensing) and a hidden width h ∈ [min(d, d′), max_width], then a ``claims.batches`` batch of
    (:class:`LinearProblem`, ``instance(N, (d, d′), h)``) pairs, which :func:`stack_linear_batch` stacks for one
    batched solve."""
    from implreg.harness.claims import batches

    @st.composite
    def draw(draw_) -> Any:
        N, shape = draw_(st.integers(*depths)), draw_(st.sampled_from(list(shapes)))
        kind = draw_(st.sampled_from(list(kinds)))
        m = draw_(st.integers(1, shape[0] * shape[1])) if kind == "sensing" else 0
        h = draw_(st.integers(min(shape), max(max_width, min(shape))))
        problem = st.integers(0, 2**32 - 1).map(lambda seed: LinearProblem(kind, shape, seed, m))
        batch = draw_(batches(st.tuples(problem, instance(N, shape, h)), max_size=max_size))
        batch.key = (N, shape, kind, m, h)  # what the batch shares: pooled runs merge batches of one family
        return batch

    return draw()


def linear_flow_families(instance: Callable[[int, tuple[int, int], int], st.SearchStrategy[Any]], *,
                         depths: tuple[int, int], shapes: Sequence[tuple[int, int]],
                         kinds: Sequence[str] = ("completion", "sensing"), max_width: int = 3,
                         max_size: int = 8) -> st.SearchStrategy[Any]:
    """Like :func:`linear_flow_batches`, but only the shape (d, d′) and the kind are shared by a batch: each
    instance draws its own depth N, hidden width h ∈ [min(d, d′), max_width] and (sensing) m.  A pooled run then
    merges a claim's instances into one group per shape and kind (8 families, not ~140), for bodies that solve
    the whole group at once (an ODE in W alone) and split it by :func:`factorizations` where the factors must
    stack."""
    from implreg.harness.claims import batches

    @st.composite
    def one(draw_, shape: tuple[int, int], kind: str) -> tuple[LinearProblem, Any]:
        N = draw_(st.integers(*depths))
        m = draw_(st.integers(1, shape[0] * shape[1])) if kind == "sensing" else 0
        h = draw_(st.integers(min(shape), max(max_width, min(shape))))
        return LinearProblem(kind, shape, draw_(st.integers(0, 2**32 - 1)), m), draw_(instance(N, shape, h))

    @st.composite
    def draw(draw_) -> Any:
        shape, kind = draw_(st.sampled_from(list(shapes))), draw_(st.sampled_from(list(kinds)))
        batch = draw_(batches(one(shape, kind), max_size=max_size))
        batch.key = (shape, kind)  # what the batch shares: pooled runs merge batches of one family
        return batch

    return draw()


def factorizations(batch: Sequence[tuple[LinearProblem, Any]]
                   ) -> list[tuple[torch.Tensor, Problem, list[torch.Tensor]]]:
    """A :func:`linear_flow_families` batch split into sub-batches whose factors stack (one depth, one list of
    widths, one m): ``[(rows, problem, factors)]``, ``rows`` the batch positions (ascending) of each."""
    shapes: dict[tuple, list[int]] = {}
    factors = [init.factors(torch.float64) for _, init in batch]
    for i, ((p, _), f) in enumerate(zip(batch, factors, strict=True)):
        shapes.setdefault((p.m, tuple(tuple(w.shape[1:]) for w in f)), []).append(i)
    return [(torch.tensor(rows), stack_problems([batch[i][0].problem() for i in rows]),
             [torch.cat([factors[i][j] for i in rows]) for j in range(len(factors[rows[0]]))])
            for rows in shapes.values()]


def stack_end_to_end_batch(batch: Sequence[tuple[LinearProblem, Any]]) -> tuple[Problem, torch.Tensor, torch.Tensor]:
    """The end-to-end view of a :func:`linear_flow_families` batch: its problems (sensing ones ``padded``, so that
    every m stacks), W(0) = W_N(0)⋯W_1(0) (B, d, d′) and the depths N (B,)."""
    from implreg.matrix.factorization import end_to_end

    factors = [init.factors(torch.float64) for _, init in batch]
    W0, depth = torch.cat([end_to_end(f) for f in factors]), torch.tensor([len(f) for f in factors])
    return stack_problems([p.problem(padded=True) for p, _ in batch]), W0, depth


def stack_linear_batch(batch: Sequence[tuple[LinearProblem, Any]]) -> tuple[Problem, list[torch.Tensor]]:
    """The problems and the factors of a :func:`linear_flow_batches` batch, stacked along the batch axis."""
    return stack_problems([p.problem() for p, _ in batch]), stack_factors([i for _, i in batch])
