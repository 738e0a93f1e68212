"""Linear-measurement problems on matrices: matrix completion and matrix sensing, batched.

Every problem is ``ℓ(W) = ½ Σ_k (⟨A_k, W⟩ − y_k)²`` over a batch of instances (batch dimension first).
Completion is the special case where each ``A_k`` is an indicator ``e_i e_jᵀ``; it is stored as a mask and a
target matrix because that is both cheaper and exact (no multiply-by-zero of unobserved entries).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from implreg.errors import InvalidInputError

__all__ = [
    "Problem",
    "completion",
    "razin_cohen_2x2",
    "razin_cohen_embedding",
    "razin_cohen_observed",
    "razin_cohen_perturbed",
    "sensing",
    "stack_problems",
]


@dataclass(frozen=True)
class Problem:
    """A batch of B matrix problems of shape (d, d'), loss ``ℓ(W) = ½ Σ_k (⟨A_k, W⟩ − y_k)²``.

    Completion: ``mask`` (B, d, d') of 0/1 and ``target`` (B, d, d') (entries off the mask are ignored).
    Sensing: ``A`` (B, m, d, d') and ``y`` (B, m).  Exactly one of the two pairs is set.
    """

    name: str
    mask: Tensor | None = None
    target: Tensor | None = None
    A: Tensor | None = None
    y: Tensor | None = None

    # ---- shape and layout -------------------------------------------------------------------------
    @property
    def is_completion(self) -> bool:
        return self.mask is not None

    @property
    def batch(self) -> int:
        return int((self.mask if self.is_completion else self.A).shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        t = self.mask if self.is_completion else self.A
        return int(t.shape[-2]), int(t.shape[-1])

    @property
    def dtype(self) -> torch.dtype:
        return (self.target if self.is_completion else self.y).dtype

    @property
    def device(self) -> torch.device:
        return (self.target if self.is_completion else self.y).device

    def tensors(self) -> dict[str, Tensor]:
        """The defining tensors by field name (for serialization and for the mpmath reference)."""
        names = ("mask", "target") if self.is_completion else ("A", "y")
        return {n: getattr(self, n) for n in names}

    # ---- batch manipulation -----------------------------------------------------------------------
    def select(self, index: Tensor | slice | list[int]) -> Problem:
        """The sub-batch at ``index`` (used for batch compaction; keeps order)."""
        return Problem(self.name, **{k: v[index] for k, v in self.tensors().items()})

    def expand(self, batch: int) -> Problem:
        """Repeat a single-instance problem ``batch`` times (the copies are identical, not views)."""
        if self.batch != 1:
            raise InvalidInputError(f"expand() needs a problem with batch 1, got batch {self.batch}")
        return Problem(
            self.name,
            **{k: v.expand(batch, *v.shape[1:]).contiguous() for k, v in self.tensors().items()},
        )

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Problem:
        return Problem(self.name, **{k: v.to(dtype=dtype, device=device) for k, v in self.tensors().items()})

    # ---- the loss ---------------------------------------------------------------------------------
    def residual(self, W: Tensor) -> Tensor:
        """Residuals: completion ``mask ⊙ (W − target)`` (B, d, d'); sensing ``⟨A_k, W⟩ − y_k`` (B, m)."""
        if self.is_completion:
            return self.mask * (W - self.target)
        return torch.einsum("bkij,bij->bk", self.A, W) - self.y

    def loss(self, W: Tensor) -> Tensor:
        """``ℓ(W) = ½ Σ residual²``, shape (B,)."""
        r = self.residual(W)
        return 0.5 * (r * r).flatten(1).sum(-1)

    def grad(self, W: Tensor) -> Tensor:
        """``∇ℓ(W) = Σ_k r_k A_k`` (completion: the masked residual itself), shape (B, d, d')."""
        r = self.residual(W)
        if self.is_completion:
            return r
        return torch.einsum("bk,bkij->bij", r, self.A)

    def check_matrix(self, W: Tensor, what: str = "W") -> None:
        """Raise a clear error when ``W`` does not fit this problem (shape, batch, dtype, finiteness)."""
        d, e = self.shape
        if W.ndim != 3 or tuple(W.shape[1:]) != (d, e) or W.shape[0] not in (1, self.batch):
            raise InvalidInputError(
                f"{what} has shape {tuple(W.shape)}; problem '{self.name}' needs ({self.batch}, {d}, {e})"
            )
        if not torch.isfinite(W).all():
            bad = (~torch.isfinite(W)).flatten(1).any(-1).nonzero().flatten().tolist()
            raise InvalidInputError(f"{what} has NaN/Inf entries in instances {bad[:10]}")


def _as_batched(t: Tensor, ndim: int, what: str) -> Tensor:
    if t.ndim == ndim - 1:
        t = t.unsqueeze(0)
    if t.ndim != ndim:
        raise InvalidInputError(f"{what} must have {ndim - 1} or {ndim} dimensions, got shape {tuple(t.shape)}")
    return t


def completion(mask: Tensor, target: Tensor, name: str = "completion") -> Problem:
    """Matrix completion ``ℓ(W) = ½ Σ_{(i,j)∈Ω} (W_ij − b_ij)²`` with Ω = {mask = 1}, b = target."""
    mask = _as_batched(torch.as_tensor(mask), 3, "mask")
    target = _as_batched(torch.as_tensor(target), 3, "target")
    if not target.is_floating_point():
        raise InvalidInputError(f"target must be a floating tensor, got {target.dtype}")
    mask = mask.to(dtype=target.dtype, device=target.device)
    if mask.shape[1:] != target.shape[1:]:
        raise InvalidInputError(f"mask shape {tuple(mask.shape)} does not match target {tuple(target.shape)}")
    if mask.shape[0] != target.shape[0]:
        b = max(mask.shape[0], target.shape[0])
        if min(mask.shape[0], target.shape[0]) != 1:
            raise InvalidInputError(f"mask batch {mask.shape[0]} and target batch {target.shape[0]} differ")
        mask, target = mask.expand(b, *mask.shape[1:]), target.expand(b, *target.shape[1:])
    if not ((mask == 0) | (mask == 1)).all():
        raise InvalidInputError("mask entries must be 0 or 1")
    if not torch.isfinite(target).all():
        raise InvalidInputError("target has NaN/Inf entries")
    return Problem(name, mask=mask.contiguous(), target=(target * mask).contiguous())


def sensing(A: Tensor, y: Tensor, name: str = "sensing") -> Problem:
    """Matrix sensing ``ℓ(W) = ½ Σ_k (⟨A_k, W⟩ − y_k)²`` with A (B, m, d, d'), y (B, m)."""
    A = _as_batched(torch.as_tensor(A), 4, "A")
    y = _as_batched(torch.as_tensor(y), 2, "y")
    if A.shape[:2] != y.shape[:2]:
        raise InvalidInputError(f"A shape {tuple(A.shape)} does not match y shape {tuple(y.shape)}")
    if not (torch.isfinite(A).all() and torch.isfinite(y).all()):
        raise InvalidInputError("A or y has NaN/Inf entries")
    return Problem(name, A=A.to(y.dtype).contiguous(), y=y.contiguous())


def razin_cohen_2x2(
    batch: int = 1, *, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
) -> Problem:
    """Razin & Cohen (2020) §3 problem P: Ω = {(1,2),(2,1),(2,2)}, b12 = b21 = 1, b22 = 0.

    Every completion is [[w, 1], [1, 0]] with det −1.
    """
    mask = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=dtype, device=device)
    target = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=dtype, device=device)
    return completion(mask, target, name="razin-cohen-2x2").expand(batch)


def razin_cohen_perturbed(
    eps: float | Tensor, *, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
) -> Problem:
    """Perturbed problem (Razin & Cohen's code): b12 = −2, b21 = 0.5, b22 = ε > 0; completions have det εw + 1.

    ``eps`` may be a float or a (B,) tensor of per-instance ε.
    """
    eps_t = torch.as_tensor(eps, dtype=dtype, device=device).reshape(-1)
    if not torch.isfinite(eps_t).all() or (eps_t <= 0).any():
        raise InvalidInputError(f"razin_cohen_perturbed needs ε > 0, got {eps_t.tolist()}")
    B = eps_t.shape[0]
    mask = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=dtype, device=device).expand(B, 2, 2)
    target = torch.zeros(B, 2, 2, dtype=dtype, device=device)
    target[:, 0, 1] = -2.0
    target[:, 1, 0] = 0.5
    target[:, 1, 1] = eps_t
    return completion(mask, target, name="razin-cohen-perturbed")


def razin_cohen_embedding(
    d: int, batch: int = 1, *, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
) -> Problem:
    """d×d embedding: every entry but (1,1) observed; M12 = M21 = 1, M_ii = 1 for i ≥ 3, zeros elsewhere.

    Every completion has det −1 (expand along the first row: the (1,1) cofactor is 0).
    """
    if d < 2:
        raise InvalidInputError(f"razin_cohen_embedding needs d ≥ 2, got {d}")
    mask = torch.ones(d, d, dtype=dtype, device=device)
    mask[0, 0] = 0.0
    target = torch.zeros(d, d, dtype=dtype, device=device)
    target[0, 1] = target[1, 0] = 1.0
    for i in range(2, d):
        target[i, i] = 1.0
    return completion(mask, target, name=f"razin-cohen-embedding-{d}").expand(batch)


def razin_cohen_observed(z: float | Tensor, zp: float | Tensor, eps: float | Tensor,
                         unobserved: tuple[int, int] | Tensor = (0, 0), *, dtype: torch.dtype = torch.float64,
                         device: torch.device | str = "cpu") -> Problem:
    """Razin & Cohen's robustness problem: observations ``[[∗, z], [z′, ε]]`` with the unobserved entry ∗ moved to
    ``unobserved`` = (r, c) by swapping rows (r = 1) and columns (c = 1): target[i][j] = M[i ⊕ r][j ⊕ c].

    z, z′ ≠ 0 and ε are floats or (B,) tensors (one instance each); ``unobserved`` a pair or a (B, 2) tensor.
    The swaps multiply det by (−1)^(r+c), so the robustness theorem's sign condition reads
    sign det W(0) = (−1)^(r+c)·sign(z z′) in this frame.
    """
    vals = [torch.as_tensor(x, dtype=dtype, device=device).reshape(-1) for x in (z, zp, eps)]
    B = max(v.shape[0] for v in vals)
    z_t, zp_t, e_t = (v.expand(B) if v.shape[0] == 1 else v for v in vals)
    if any(v.shape[0] != B for v in (z_t, zp_t, e_t)):
        raise InvalidInputError(f"z, z′, ε batch sizes differ: {[v.shape[0] for v in vals]}")
    if not all(torch.isfinite(v).all() for v in (z_t, zp_t, e_t)) or (z_t == 0).any() or (zp_t == 0).any():
        raise InvalidInputError("razin_cohen_observed needs finite z, z′, ε with z, z′ ≠ 0")
    pos = torch.as_tensor(unobserved, dtype=torch.int64, device=device).reshape(-1, 2).expand(B, 2)
    if not ((pos == 0) | (pos == 1)).all():
        raise InvalidInputError(f"unobserved must be (r, c) with r, c ∈ {{0, 1}}, got {pos.tolist()}")
    canon = torch.zeros(B, 2, 2, dtype=dtype, device=device)
    canon[:, 0, 1], canon[:, 1, 0], canon[:, 1, 1] = z_t, zp_t, e_t
    i = torch.arange(2, device=device)
    rows = i[None, :] ^ pos[:, :1]                        # (B, 2): source row of each target row
    cols = i[None, :] ^ pos[:, 1:]
    target = canon[torch.arange(B, device=device)[:, None, None], rows[:, :, None], cols[:, None, :]]
    mask = torch.ones(B, 2, 2, dtype=dtype, device=device)
    mask[torch.arange(B, device=device), pos[:, 0], pos[:, 1]] = 0.0
    return completion(mask, target, name="razin-cohen-observed")


def stack_problems(problems: Sequence[Problem], name: str | None = None) -> Problem:
    """Concatenate problems of one kind and shape along the batch axis."""
    if not problems:
        raise InvalidInputError("stack_problems needs at least one problem")
    keys = list(problems[0].tensors())
    if any(list(p.tensors()) != keys or p.shape != problems[0].shape for p in problems):
        raise InvalidInputError("only problems of one kind (completion/sensing) and shape can be stacked")
    return Problem(name or problems[0].name, **{k: torch.cat([p.tensors()[k] for p in problems]) for k in keys})
