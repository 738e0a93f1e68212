"""CP tensor factorization: gradient descent from small init, the zero-filled baseline, and bounds on the tensor
rank of the result (Razin & Cohen 2020 §6, CLAIMS.md claim 10).

Tensors of any order N ≥ 3, batch first: a CP factorization of width R is a tuple of N factors, factor m of shape
(n, I_m, R), and ``T_{i₁…i_N} = Σ_r Π_m F^{(m)}_{i_m r}``; the completion loss is ``½ Σ_Ω (T − Y)²``.

- :func:`cp_tensor` — the tensor of a CP factorization.
- :func:`cp_descent` — batched gradient descent on the factors from i.i.d. N(0, scale²) entries.
- :func:`zero_filled` — the "linear" baseline: observed values, zeros elsewhere.
- :func:`rank_upper_bound` — the smallest k for which alternating least squares *exhibits* a rank-k CP tensor
  within relative Frobenius distance ε (a witness, re-checked: an upper bound on the ε-rank).
- :func:`rank_lower_bound` — the largest unfolding's matrix ε-rank, certified (Eckart–Young on rigorous singular
  values): a rank-k CP tensor has every unfolding of rank ≤ k, so this is a lower bound on the CP ε-rank.

Together they bracket the CP ε-rank, the smallest k with min_{rank S ≤ k} ‖T − S‖_F ≤ ε‖T‖_F (the paper's "CP
rank" with ε = 1e-6 on unit-norm tensors).
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from implreg.errors import InvalidInputError

__all__ = ["CPDescent", "RankOrder", "cp_descent", "cp_tensor", "low_rank_tensor", "numerical_rank",
           "rank_lower_bound", "rank_order", "rank_upper_bound", "zero_filled"]

_IDX = string.ascii_lowercase  # einsum letters for tensor modes; "n" (batch) and "r" (CP column) are reserved
_MODES = [c for c in _IDX if c not in "nr"]


def _check_factors(factors: tuple[Tensor, ...]) -> None:
    if len(factors) < 2 or any(F.ndim != 3 for F in factors) or len({F.shape[-1] for F in factors}) != 1 \
            or len({F.shape[0] for F in factors}) != 1:
        raise InvalidInputError("CP factors must be N ≥ 2 tensors (n, I_m, R) with a common n and R, got "
                                f"{[tuple(F.shape) for F in factors]}")


def cp_tensor(*factors: Tensor) -> Tensor:
    """``T_{i₁…i_N} = Σ_r Π_m F^{(m)}_{i_m r}`` for batched factors (n, I_m, R) → (n, I₁, …, I_N)."""
    _check_factors(factors)
    modes = _MODES[: len(factors)]
    spec = ",".join(f"n{m}r" for m in modes) + "->n" + "".join(modes)
    return torch.einsum(spec, *factors)


def _mode_gradient(R: Tensor, factors: tuple[Tensor, ...], m: int) -> Tensor:
    """∂ℓ/∂F^{(m)}_{i r} = Σ_{other indices} R_{…i…} Π_{m' ≠ m} F^{(m')}_{i_{m'} r}."""
    modes = _MODES[: len(factors)]
    others = [k for k in range(len(factors)) if k != m]
    spec = "n" + "".join(modes) + "," + ",".join(f"n{modes[k]}r" for k in others) + f"->n{modes[m]}r"
    return torch.einsum(spec, R, *(factors[k] for k in others))


def zero_filled(mask: Tensor, target: Tensor) -> Tensor:
    """The baseline completion: observed values where ``mask`` is 1, zeros elsewhere."""
    return mask * target


def low_rank_tensor(rng: np.random.Generator, shape: tuple[int, ...], rank: int, *, norm: float | None = None
                    ) -> np.ndarray:
    """A rank-``rank`` CP tensor with i.i.d. N(0, 1) factors, scaled to ‖T‖_F = ``norm`` (default √(Π I_m):
    entries of order 1)."""
    if len(shape) < 2 or rank < 1:
        raise InvalidInputError(f"need an order ≥ 2 shape and rank ≥ 1, got shape {shape}, rank {rank}")
    fs = [rng.standard_normal((n, rank)) for n in shape]
    modes = _MODES[: len(shape)]
    T = np.einsum(",".join(f"{m}r" for m in modes) + "->" + "".join(modes), *fs)
    target = math.sqrt(T.size) if norm is None else float(norm)
    return T / np.linalg.norm(T) * target


@dataclass
class CPDescent:
    """Result of :func:`cp_descent` for a batch: factors, observed loss, steps taken, status."""

    factors: tuple[Tensor, ...]
    loss: Tensor  # (n,) final ½ Σ_Ω residual²
    steps: Tensor  # (n,) steps taken (until the loss target or max_steps)
    converged: Tensor  # (n,) bool: reached the loss target

    @property
    def tensor(self) -> Tensor:
        return cp_tensor(*self.factors)


def cp_descent(mask: Tensor, target: Tensor, *, rank: int, scale: float | Tensor, lr: float,
               loss_target: float | Tensor, max_steps: int = 50_000, generator: torch.Generator | None = None
               ) -> CPDescent:
    """Gradient descent ``θ ← θ − lr·∇ℓ(θ)`` on CP factors of width ``rank`` from i.i.d. N(0, scale²) init, per
    instance until ``ℓ ≤ loss_target`` (then frozen) or ``max_steps``.  ``mask``, ``target``: (n, I₁, …, I_N);
    ``scale`` and ``loss_target`` may be per instance, shape (n,).

    ∂ℓ/∂F^{(m)}_{i r} = Σ R Π_{m' ≠ m} F^{(m')} with R = mask ⊙ (T − Y).
    """
    if mask.shape != target.shape or mask.ndim < 4:
        raise InvalidInputError(f"mask and target must be (n, I₁, …, I_N), N ≥ 3, of one shape, got {mask.shape}, "
                                f"{target.shape}")
    n, dims = mask.shape[0], mask.shape[1:]
    z = {"dtype": target.dtype, "device": target.device}
    s = torch.as_tensor(scale, **z).expand(n)
    tgt = torch.as_tensor(loss_target, **z).expand(n)
    if not (bool((s > 0).all()) and lr > 0 and bool((tgt > 0).all()) and rank >= 1):
        raise InvalidInputError("cp_descent needs rank ≥ 1 and positive scale, lr and loss_target")
    factors = tuple(s[:, None, None] * torch.randn(n, d, rank, generator=generator, dtype=z["dtype"]).to(z["device"])
                    for d in dims)
    steps = torch.zeros(n, dtype=torch.int64, device=target.device)
    active = torch.ones(n, dtype=torch.bool, device=target.device)
    for _ in range(max_steps):
        R = mask * (cp_tensor(*factors) - target)
        loss = 0.5 * (R * R).flatten(1).sum(-1)
        active = active & (loss > tgt) & torch.isfinite(loss)
        if not bool(active.any()):
            break
        m = active.to(target.dtype)[:, None, None]
        grads = [_mode_gradient(R, factors, k) for k in range(len(factors))]
        factors = tuple(F - lr * m * g for F, g in zip(factors, grads, strict=True))
        steps = steps + active.to(steps.dtype)
    R = mask * (cp_tensor(*factors) - target)
    loss = 0.5 * (R * R).flatten(1).sum(-1)
    if not bool(torch.isfinite(loss).all()):
        bad = int((~torch.isfinite(loss)).nonzero()[0, 0])
        raise InvalidInputError(f"cp_descent diverged (non-finite loss) at instance {bad}: lower lr (now {lr})")
    return CPDescent(factors, loss, steps, loss <= tgt)


# ---------------------------------------------------------------------------------------------- rank bounds


def _unfold(T: np.ndarray, m: int) -> np.ndarray:
    return np.moveaxis(T, m, 0).reshape(T.shape[m], -1)


def _khatri_rao(mats: list[np.ndarray]) -> np.ndarray:
    """Column-wise Kronecker product, rows in C order of the matrices' row indices (matches :func:`_unfold`)."""
    out = mats[0]
    for M in mats[1:]:
        out = np.einsum("xr,yr->xyr", out, M).reshape(-1, out.shape[1])
    return out


def _cp_full(fs: list[np.ndarray]) -> np.ndarray:
    modes = _MODES[: len(fs)]
    return np.einsum(",".join(f"{m}r" for m in modes) + "->" + "".join(modes), *fs)


def _als_fit(T: np.ndarray, k: int, rng: np.random.Generator, iters: int, eps: float) -> float:
    """Relative Frobenius error of the best rank-k CP fit that alternating least squares finds from one random
    start (the error of an explicit rank-k tensor, so ``error ≤ ε`` is a witness that the ε-rank is ≤ k)."""
    N, norm = T.ndim, float(np.linalg.norm(T))
    fs = [rng.standard_normal((n, k)) for n in T.shape]
    unf = [_unfold(T, m) for m in range(N)]
    best = math.inf
    for _ in range(iters):
        for m in range(N):
            kr = _khatri_rao([fs[j] for j in range(N) if j != m])
            fs[m] = np.linalg.lstsq(kr, unf[m].T, rcond=None)[0].T
        best = min(best, float(np.linalg.norm(_cp_full(fs) - T)) / norm)
        if best <= eps / 2:  # well inside: the witness is found
            break
    return best


#: Float64 evaluation of a witness's relative error ‖S − T‖/‖T‖ (a few hundred additions of O(1)-relative terms)
#: is off by at most ~1e-13 relative; a witness counts only if its computed error is below ε by more than that.
_WITNESS_SLACK = 1e-12


def rank_upper_bound(T: np.ndarray | Tensor, eps: float, *, max_rank: int, min_rank: int = 1, restarts: int = 4,
                     iters: int = 300, seed: int = 0) -> int:
    """Upper bound on the CP ε-rank: the smallest k ≤ ``max_rank`` for which ALS (``restarts`` random starts,
    ``iters`` sweeps) finds a rank-k tensor S with ‖T − S‖_F ≤ ε‖T‖_F; ``max_rank + 1`` ("more") if none does.
    ALS can miss the best rank-k fit, so the bound may exceed the ε-rank — never undercut it.  ``min_rank``: start
    the search there (e.g. at a proved lower bound: no smaller witness exists)."""
    Tn = _as_np(T, eps)
    if np.linalg.norm(Tn) == 0:
        return 0
    rng = np.random.default_rng(seed)
    for k in range(max(1, min_rank), max_rank + 1):
        if any(_als_fit(Tn, k, rng, iters, eps) <= eps - _WITNESS_SLACK for _ in range(restarts)):
            return k
    return max_rank + 1


def rank_lower_bound(T: np.ndarray | Tensor, eps: float) -> int:
    """Lower bound on the CP ε-rank, rigorous: the largest, over the unfoldings T_(m) and the balanced unfolding
    (first ⌊N/2⌋ modes as rows), of the smallest k with dist(T_(m), rank ≤ k) ≤ ε‖T‖_F, where a k counts as
    excluded only when the certified distance (Eckart–Young on ball-arithmetic singular values) exceeds the
    certified ε‖T‖_F.  A rank-k CP tensor has every unfolding of rank ≤ k, and unfolding preserves ‖·‖_F."""
    from implreg.matrix import measures
    from implreg.numerics import Certified

    Tn = _as_np(T, eps)
    if np.linalg.norm(Tn) == 0:
        return 0
    N = Tn.ndim
    mats = [_unfold(Tn, m) for m in range(N)] + [Tn.reshape(int(np.prod(Tn.shape[: N // 2])), -1)]
    best = 0
    for M in mats:
        Mc = Certified.exact(torch.from_numpy(np.ascontiguousarray(M))[None])
        budget = measures.frobenius(Mc) * eps  # rigorous ε‖T‖_F
        hi = float((budget.value + budget.error)[0])
        for k in range(best, min(M.shape)):
            d = measures.distance_to_rank(Mc, k)
            if float((d.value - d.error)[0]) <= hi:  # rank ≤ k not excluded for this unfolding
                break
            best = k + 1
    return best


@dataclass(frozen=True)
class RankOrder:
    """Certified order of two CP ε-ranks: ``sign`` −1 (rank T₁ < rank T₂ proved), +1 (>), 0 (the brackets
    overlap); ``first`` and ``second`` are the brackets (lower, upper) that decided it (upper None: not computed)."""

    sign: int
    first: tuple[int, int | None]
    second: tuple[int, int | None]

    def paired_values(self) -> tuple[int, int]:
        """The two bracket ends that decided the order, as a paired observation (rank T₁, rank T₂) for a sign test:
        T₁'s upper and T₂'s lower end where rank T₁ < rank T₂ was proved, the reverse for >, a tie otherwise."""
        (l1, u1), (l2, u2) = self.first, self.second
        if self.sign < 0:
            return int(u1), l2
        return (l1, int(u2)) if self.sign > 0 else (l1, l1)

    @staticmethod
    def describe(bracket: tuple[int, int | None]) -> str:
        """A bracket as text: "= k", "≥ k" (no upper end computed) or "k–K"."""
        lo, up = bracket
        return f"= {lo}" if up == lo else f"≥ {lo}" if up is None else f"{lo}–{up}"


def rank_order(T1: np.ndarray | Tensor, T2: np.ndarray | Tensor, eps: float, *, restarts: int = 4,
               iters: int = 300, seed: int = 0) -> RankOrder:
    """Compare the CP ε-ranks of T₁ and T₂ from brackets: rank T₁ < rank T₂ is proved when an ALS witness puts
    T₁'s at ≤ k and the certified unfoldings put T₂'s at ≥ k + 1 (and symmetrically).  Upper bounds are searched
    only as far as they could decide (ALS at large k is the expensive part)."""
    lo1, lo2 = rank_lower_bound(T1, eps), rank_lower_bound(T2, eps)
    kw = {"restarts": restarts, "iters": iters, "seed": seed}

    def witness(T: np.ndarray | Tensor, lo: int, below: int) -> int | None:  # a rank < below, or None
        if below <= lo:
            return None
        k = rank_upper_bound(T, eps, max_rank=below - 1, min_rank=lo, **kw)
        return k if k < below else None

    up1 = witness(T1, lo1, lo2)
    if up1 is not None:
        return RankOrder(-1, (lo1, up1), (lo2, None))
    up2 = witness(T2, lo2, lo1)
    if up2 is not None:
        return RankOrder(1, (lo1, None), (lo2, up2))
    return RankOrder(0, (lo1, None), (lo2, None))


def numerical_rank(T: np.ndarray | Tensor, eps: float, *, max_rank: int | None = None, restarts: int = 4,
                   iters: int = 300, seed: int = 0) -> int:
    """The ALS ε-rank (:func:`rank_upper_bound`) with the default ``max_rank`` Π I_m / max I_m, the generic bound
    on the rank of a tensor of that shape."""
    Tn = _as_np(T, eps)
    if max_rank is None:
        max_rank = Tn.size // max(Tn.shape)
    return rank_upper_bound(Tn, eps, max_rank=max_rank, restarts=restarts, iters=iters, seed=seed)


def _as_np(T: np.ndarray | Tensor, eps: float) -> np.ndarray:
    Tn = T.detach().cpu().double().numpy() if isinstance(T, Tensor) else np.asarray(T, dtype=np.float64)
    if Tn.ndim < 3:
        raise InvalidInputError(f"a tensor rank needs an order ≥ 3 tensor, got shape {Tn.shape}")
    if not 0 < eps < 1:
        raise InvalidInputError(f"eps must lie in (0, 1), got {eps}")
    if not np.isfinite(Tn).all():
        raise InvalidInputError("the tensor has non-finite entries")
    return Tn
