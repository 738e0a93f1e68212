"""Fused, row-wise arithmetic for the batched integrator: fixed-order sums, small-matrix products, the RK attempt.

Everything here is written with elementwise ``+ − × ÷ √``, ``abs``, ``max``/``min`` and ``where`` only, in an
order fixed by the Python code (no BLAS, no ``sum``/``mean`` kernels, whose reduction order torch may choose,
no ``exp``/``log``/``pow``).  IEEE arithmetic rounds each of those operations exactly, so the result for one row
does not depend on the row's position in the batch, on the batch size, on SIMD width or on whether the code
runs eagerly or as one ``torch.compile``'d kernel (inductor compiles with ``-ffp-contract=off`` and without
reassociation on CPU).  The tests check all three: batch position, batch size, eager vs compiled.

That last property is what makes compilation safe to switch on and off: :class:`CompiledKernel` runs the
compiled kernel for large batches (where it is up to ~10× faster than eager torch) and plain eager torch for
small ones or where compilation is unavailable, and the answers are the same bits either way.

Eager torch costs ~2 µs per dispatched op whatever the batch size, so below the compile threshold a step's time
is its op count (about 300 for a depth-3 2×2 step).  The eager forms are therefore written for few dispatches
without changing any row's operations: every RK sum is a row of one accumulator that takes each new stage in one
multiply and one add (:class:`_StagePlan`), whose buffers are reused per batch size under ``inference_mode``;
two-term sums are an unbind and an add, never a reduction kernel (:func:`_pair_sum`); the 2×2 field stacks its
independent products (:func:`_square2_field`).  Each is tested bit for bit against the plain form
(tests/test_eager_step.py).

Small-matrix products are the "broadcast" form ``C = Σ_k A[:, :, k] ⊗ B[:, k, :]`` summed over k in order
(one multiply and k−1 adds on (n, a, k, b) tensors), which is both cheap in eager mode and fusable.
"""

from __future__ import annotations

import os
import threading
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from implreg.errors import ImplregError
from implreg.matrix.flow.tableau import ButcherTableau

__all__ = [
    "CompiledKernel",
    "RKCoefficients",
    "batch_inner",
    "col_attempt",
    "compile_mode",
    "dense_coefficients",
    "dense_eval",
    "dmf_attempt_kernel",
    "dmf_field",
    "dmf_guard",
    "dmf_loss",
    "dmf_step_kernel",
    "frexp_exact",
    "fsum",
    "inv_root",
    "mm",
    "ratio",
    "rk_attempt",
    "rk_post",
    "rms",
    "root_table",
    "small_det",
]


# ---------------------------------------------------------------------------------------------------------
# primitives
# ---------------------------------------------------------------------------------------------------------
def fsum(x: Tensor, dim: int = -1) -> Tensor:
    """Σ over ``dim`` in a fixed pairwise order (halves added elementwise, repeatedly): row-wise and identical
    in eager and compiled code, unlike ``x.sum(dim)`` whose reduction order is the kernel's choice (and which,
    starting from +0, turns −0 + −0 into +0).  Each halving is one view, one unbind and one add."""
    x = x.movedim(dim, -1) if dim not in (-1, x.ndim - 1) else x
    while x.shape[-1] > 1:
        m = x.shape[-1]
        half = m // 2
        if m <= 3:  # the last one or two additions, without a final slice
            return _pair_sum(x, -1) if m == 2 else (x[..., 0] + x[..., 1]) + x[..., 2]
        s = _pair_sum(x[..., : 2 * half].unflatten(-1, (2, half)), -2)  # x_i + x_{half+i}
        x = torch.cat([s, x[..., 2 * half :]], dim=-1) if m % 2 else s
    return x[..., 0]


def _pair_sum(x: Tensor, dim: int) -> Tensor:
    """``x[0] + x[1]`` along a size-2 ``dim``: one IEEE addition (so the bits of the column form's a + b, signs
    of zero included) in two cheap dispatches, where ``x.sum(dim)`` launches a reduction (4–45 µs at n = 16–256
    against 3–5 µs)."""
    u, v = x.unbind(dim)
    return u + v


def mm(A: Tensor, B: Tensor) -> Tensor:
    """Batched ``A @ B`` for small matrices, ``C_ij = ((A_i0 B_0j + A_i1 B_1j) + A_i2 B_2j) + …`` in that order."""
    prod = A.unsqueeze(-1) * B.unsqueeze(-3)  # (..., a, k, b)
    if A.shape[-1] == 2:
        return _pair_sum(prod, -2)
    out = prod[..., 0, :]
    for i in range(1, A.shape[-1]):
        out = out + prod[..., i, :]
    return out


def small_det(W: Tensor) -> Tensor:
    """det of (..., k, k) matrices for k ≤ 4 by cofactor expansion along the first row (fixed order)."""
    k = W.shape[-1]
    if k == 1:
        return W[..., 0, 0]
    if k == 2:
        return W[..., 0, 0] * W[..., 1, 1] - W[..., 0, 1] * W[..., 1, 0]
    if k > 4:
        raise ValueError(f"small_det handles k ≤ 4, got {k}")
    out = None
    rest = W[..., 1:, :]
    for j in range(k):
        minor = torch.cat([rest[..., :j], rest[..., j + 1 :]], dim=-1)
        term = W[..., 0, j] * small_det(minor)
        out = term if out is None else (out - term if j % 2 else out + term)
    return out


# ---------------------------------------------------------------------------------------------------------
# the Runge–Kutta attempt
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RKCoefficients:
    """A tableau's coefficients as Python floats (constants in compiled code)."""

    a: tuple[tuple[float, ...], ...]
    c: tuple[float, ...]
    b: tuple[float, ...]
    e: tuple[float, ...]
    dense: tuple[tuple[float, ...], ...]
    order: int
    fsal: bool

    @classmethod
    def of(cls, tab: ButcherTableau) -> RKCoefficients:
        fl = lambda xs: tuple(float(x) for x in xs)  # noqa: E731
        a = tuple(fl(row) for row in tab.a)
        b = fl(tab.b)
        # FSAL: the last stage is evaluated at y + h Σ b_j k_j, so its input is the new state itself
        fsal = bool(tab.fsal) and a[-1] == b[: len(a[-1])] and all(x == 0.0 for x in b[len(a[-1]) :])
        return cls(a=a, c=fl(tab.c), b=b, e=fl(tab.e), dense=tuple(fl(row) for row in tab.dense),
                   order=int(tab.order), fsal=fsal)


@dataclass(frozen=True)
class _StagePlan:
    """The RK sums of :func:`rk_attempt` as rows of one accumulator (R, n, P): stage inputs 2 … S, then the
    solution ``y + Σ (h·b_j) k_j`` (without FSAL), then the error sum ``Σ e_j k_j``.  ``runs[j]`` lists the
    contiguous row ranges that take a term of ``k_j`` (non-zero weight), so each new stage is added to every
    sum that needs it in one multiply and one add per range, in j order.  Per row that is the sum
    ``((y + (h·w_0) k_0) + (h·w_1) k_1) + …`` term by term, skipping zero weights (the error sum starts at
    0 and is not scaled by h), so the bits do not depend on the batch, and it takes a handful of dispatches
    instead of one multiply-add per term (tests/test_kernels.py checks it against the term-by-term form)."""

    weights: tuple[tuple[float, ...], ...]  # (S, R): weight of k_j in row r (0 where the row has no such term)
    scaled: tuple[bool, ...]                # (R,): is the row's weight multiplied by h (stage and solution rows)
    runs: tuple[tuple[tuple[int, int], ...], ...]  # per j: (r0, r1) ranges
    sol_row: int                            # the row holding y_new
    err_row: int

    @classmethod
    def of(cls, co: RKCoefficients) -> _StagePlan:
        S = len(co.c)
        rows = [tuple(co.a[i]) for i in range(1, S)]
        if not co.fsal:
            rows.append(tuple(co.b))
        rows.append(tuple(co.e))
        R = len(rows)
        w = tuple(tuple(float(r[j]) if j < len(r) else 0.0 for r in rows) for j in range(S))
        runs = []
        for j in range(S):
            need = [r for r in range(R) if w[j][r] != 0.0]
            rr: list[tuple[int, int]] = []
            for r in need:
                if rr and rr[-1][1] == r:
                    rr[-1] = (rr[-1][0], r + 1)
                else:
                    rr.append((r, r + 1))
            runs.append(tuple(rr))
        return cls(weights=w, scaled=tuple([True] * (R - 1) + [False]), runs=tuple(runs),
                   sol_row=S - 2 if co.fsal else R - 2, err_row=R - 1)

    def tensors(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(W (S, R, 1, 1), unscaled (1, R, 1, 1) bool)``, cached per dtype and device."""
        key = (id(self), dtype, device)  # plans live as long as the process (_PLANS): ids are not reused
        if key not in _PLAN_TENSORS:
            W = torch.tensor(self.weights, dtype=dtype, device=device)[:, :, None, None]
            un = torch.tensor([not s for s in self.scaled], device=device)[None, :, None, None]
            _PLAN_TENSORS[key] = (W, un)
        return _PLAN_TENSORS[key]


_PLAN_TENSORS: dict[tuple, tuple[Tensor, Tensor]] = {}
_PLANS: dict[RKCoefficients, _StagePlan] = {}
_PLAN_OF: dict[int, tuple[RKCoefficients, _StagePlan]] = {}  # by id: hashing the coefficients costs ~1 µs a step


def _plan(co: RKCoefficients) -> _StagePlan:
    hit = _PLAN_OF.get(id(co))
    if hit is not None and hit[0] is co:
        return hit[1]
    if co not in _PLANS:
        _PLANS[co] = _StagePlan.of(co)
    if len(_PLAN_OF) >= 64:  # each solve may make its own (equal) coefficients object
        _PLAN_OF.clear()
    _PLAN_OF[id(co)] = (co, _PLANS[co])  # keeps co alive, so its id stays its own
    return _PLANS[co]


class _Workspace:
    """The accumulator and coefficient buffers of :func:`rk_attempt` for one batch size, with the views a step
    uses (row ranges per stage, single rows), made once."""

    def __init__(self, plan: _StagePlan, S: int, n: int, P: int, dtype: torch.dtype, device: torch.device):
        R = len(plan.scaled)
        self.C = torch.empty((S, R, n, 1), dtype=dtype, device=device)
        acc = torch.empty((R, n, P), dtype=dtype, device=device)
        self.head, self.err, self.rows = acc[: plan.err_row], acc[plan.err_row], acc.unbind(0)
        self.runs = [[(acc[r0:r1], self.C[j, r0:r1]) for r0, r1 in plan.runs[j]] for j in range(S)]


_WORKSPACES = threading.local()  # per thread: two threads never share a buffer


def _workspace(plan: _StagePlan, S: int, n: int, P: int, dtype: torch.dtype, device: torch.device) -> _Workspace:
    cache = getattr(_WORKSPACES, "cache", None)
    if cache is None:
        cache = _WORKSPACES.cache = {}
    key = (id(plan), n, P, dtype, device)
    if key not in cache:
        if len(cache) >= 16:  # batch sizes change as instances finish: keep only recent ones
            cache.clear()
        cache[key] = _Workspace(plan, S, n, P, dtype, device)
    return cache[key]


def ratio(x: Tensor, scale: Tensor) -> Tensor:
    """``x / scale`` with 0/0 read as 0 (a zero component with atol = 0 must not make the error norm NaN)."""
    return torch.where(x == 0, torch.zeros_like(x), x / scale)


def rms(x: Tensor) -> Tensor:
    """Root mean square over the last dimension, with a fixed summation order."""
    return torch.sqrt(fsum(x * x) * (1.0 / x.shape[-1]))


def rk_attempt(
    co: RKCoefficients,
    f: Callable[..., Tensor],
    f_aux: Callable[..., tuple[Tensor, Tensor]] | None,
    guard: Callable[..., Tensor] | None,
    t: Tensor, y: Tensor, k1: Tensor, h: Tensor, tm: Tensor, err_acc: Tensor, rtol: Tensor, atol: Tensor,
    *prm: Tensor,
    all_stages: bool = True,
) -> tuple:
    """One embedded RK attempt for every row: stages, new state, error norm and the per-step bookkeeping that
    needs no transcendental functions.  Pure and row-wise, so it can be run eagerly or compiled.  The stage,
    solution and error sums are the rows of one accumulator (:class:`_StagePlan`); under ``inference_mode`` (the
    eager step kernel) its buffers are kept per batch size, and no result aliases them.  A field marked
    ``f.autonomous = True`` is not given the stage times (it gets t).

    Returns ``(hs, last, t_new, K (n, S, P), y_new, msq, finite, acc_err, ymax, aux, bad)``: the step taken
    (clipped to ``tm``), whether it ends at ``tm``, the new time, the stages (only the last one, (n, P), with
    ``all_stages=False``: the dense output is rarely needed and can be recomputed), the new state, the squared
    RMS error norm ``mean((e_loc / (atol + rtol·max(|y|, |y_new|)))²)`` (squared: eager torch's √ is not
    correctly rounded on every CPU while compiled code's is, so no √ is taken inside a kernel), whether the
    attempt is finite, the accumulated per-component error estimate ``err_acc + |e_loc| + u·|y_new|`` (n, P) (the
    increment is exactly 0 for a component whose stage derivatives are all exactly 0: it did not move), ``max|y_new|``,
    the field's auxiliary output at y_new (FSAL with ``f_aux`` only, else None) and the guard's verdict at y_new
    given ``max_i acc_err_i`` (None without a guard).
    """
    u = torch.finfo(y.dtype).eps
    plan = _plan(co)
    rest = tm - t
    last = h >= rest
    hs = torch.where(last, rest, h)
    hcol = hs.unsqueeze(-1)
    # C[j, r] = h·w_jr (rows scaled by h) or w_jr (the error row)
    Wt, unscaled = plan.tensors(y.dtype, y.device)
    S = len(co.c)
    if torch.is_inference_mode_enabled():
        # the eager step kernel (CompiledKernel runs it under inference_mode): buffers and their row views
        # made once per batch size, so a stage costs two dispatches (y_new is copied out: results never alias)
        ws = _workspace(plan, S, y.shape[0], y.shape[1], y.dtype, y.device)
        torch.where(unscaled, Wt, Wt * hcol, out=ws.C)
        rows, runs = ws.rows, ws.runs
        ws.head.copy_(y)  # the stage and solution sums start at y, the error sum at 0
        ws.err.zero_()
    else:
        C = torch.where(unscaled, Wt, Wt * hcol)  # (S, R, n, 1)
        acc = torch.empty((C.shape[1], *y.shape), dtype=y.dtype, device=y.device)
        acc[: plan.err_row].copy_(y)
        acc[plan.err_row].zero_()
        rows = acc.unbind(0)
        runs = [[(acc[r0:r1], C[j, r0:r1]) for r0, r1 in plan.runs[j]] for j in range(S)]
    # the field of a deep factorization does not read t: skip the stage times (compiled code drops them anyway)
    t_stage = None if getattr(f, "autonomous", False) else t + torch.tensor(co.c, dtype=t.dtype, device=t.device
                                                                          ).unsqueeze(-1) * hs
    K = [k1]
    aux = None
    for i in range(1, S):
        for rows_j, c_j in runs[i - 1]:
            rows_j.add_(c_j * K[i - 1])
        yi = rows[i - 1]
        ti = t if t_stage is None else t_stage[i]
        if i == S - 1 and co.fsal and f_aux is not None:
            k, aux = f_aux(ti, yi, *prm)
        else:
            k = f(ti, yi, *prm)
        K.append(k)
    for rows_j, c_j in runs[S - 1]:
        rows_j.add_(c_j * K[S - 1])
    y_new = rows[plan.sol_row]
    if torch.is_inference_mode_enabled():
        y_new = y_new.clone()
    e_loc = hcol * rows[plan.err_row]
    ya = y_new.abs()
    scale = atol + rtol * torch.maximum(y.abs(), ya)
    q = torch.where(e_loc == 0, 0.0, e_loc / scale)  # ratio(): 0/0 read as 0
    msq = fsum(q * q) * (1.0 / q.shape[-1])
    ymax = ya.amax(-1)
    finite = torch.isfinite(msq) & torch.isfinite(ymax)
    Ks = torch.stack(K, dim=1)  # (n, S, P)
    moved = (Ks != 0).any(1)  # see _moved
    acc_err = err_acc + torch.where(moved, e_loc.abs() + u * ya, 0.0)
    t_new = torch.where(last, tm, t + hs)
    bad = guard(y_new, acc_err.amax(-1), *prm) if guard is not None else None
    Ko = Ks if all_stages else K[-1]
    return hs, last, t_new, Ko, y_new, msq, finite, acc_err, ymax, aux, bad


def _moved(K: Sequence[Tensor]) -> Tensor:
    """Per component: is some stage derivative k_{j,i} non-zero?  Where none is, ``y_i + h·Σ_j b_j k_{j,i}``
    is y_i exactly (every term is ±0), so the step adds neither local error nor rounding to that component."""
    out = K[0] != 0
    for k in K[1:]:
        out = out | (k != 0)
    return out


def dense_coefficients(co: RKCoefficients, hb: Tensor, K: Tensor) -> list[Tensor]:
    """Coefficients ``C_m = h Σ_i d_im k_i`` (m = 1 … M) of the continuous extension
    ``y(t + θh) = y + Σ_m θ^m C_m``; K is (n, S, P), hb (n,)."""
    M = len(co.dense[0])
    hcol = hb.unsqueeze(-1)
    out = []
    for m in range(M):
        acc = None
        for i in range(len(co.dense)):
            d = co.dense[i][m]
            if d != 0.0:
                acc = d * K[:, i] if acc is None else acc + d * K[:, i]
        out.append(hcol * acc if acc is not None else torch.zeros_like(K[:, 0]))
    return out


def dense_eval(yb: Tensor, C: Sequence[Tensor], theta: Tensor) -> Tensor:
    """``y + θ(C_1 + θ(C_2 + θ(…)))`` (Horner), θ (n,)."""
    th = theta.unsqueeze(-1)
    acc = C[-1]
    for Cm in reversed(C[:-1]):
        acc = Cm + th * acc
    return yb + th * acc


# ---------------------------------------------------------------------------------------------------------
# deep matrix factorization: field, loss and det guard for small matrices
# ---------------------------------------------------------------------------------------------------------
def _unpack(y: Tensor, shapes: Sequence[tuple[int, int]]) -> list[Tensor]:
    out, i = [], 0
    for a, b in shapes:
        out.append(y[..., i : i + a * b].reshape(*y.shape[:-1], a, b))
        i += a * b
    return out


def _residual(kind: str, W: Tensor, p0: Tensor, p1: Tensor) -> Tensor:
    if kind == "completion":  # p0 = mask, p1 = target
        return p0 * (W - p1)
    # sensing: p0 = A (n, m, d, d'), p1 = y (n, m): r_k = Σ_ij A_kij W_ij − y_k
    return fsum((p0 * W.unsqueeze(-3)).flatten(-2)) - p1


def _prefix(Ws: Sequence[Tensor]) -> list[Tensor]:
    pre = [Ws[0]]
    for Wj in Ws[1:]:
        pre.append(mm(Wj, pre[-1]))
    return pre


def dmf_loss(shapes: Sequence[tuple[int, int]], kind: str) -> Callable[..., Tensor]:
    """``ℓ(W_N⋯W_1) = ½ Σ r²`` of packed factors (n, P), fixed order; ``kind`` 'completion' or 'sensing'."""
    shapes = tuple(shapes)

    def loss(y: Tensor, p0: Tensor, p1: Tensor) -> Tensor:
        r = _residual(kind, _prefix(_unpack(y, shapes))[-1], p0, p1)
        return 0.5 * fsum((r * r).flatten(1))

    return loss


def dmf_field(shapes: Sequence[tuple[int, int]], kind: str) -> tuple[Callable[..., Tensor], Callable[..., tuple]]:
    """Gradient-flow field of a deep matrix factorization, ``−∂ℓ/∂W_j = −(W_N⋯W_{j+1})ᵀ ∇ℓ(W) (W_{j−1}⋯W_1)ᵀ``
    (Arora et al. 2018, eq. 4), on packed factors (n, P) with the problem's two tensors as parameters.

    Returns ``(f, f_aux)``: ``f(t, y, p0, p1) -> dy`` and ``f_aux(t, y, p0, p1) -> (dy, ℓ(y))`` — the loss comes
    for free from the residual the gradient needs, so the stopping event is never recomputed.
    """
    shapes = tuple(shapes)
    if kind == "completion" and len({*shapes}) == 1 and shapes[0] == (2, 2):
        both = _square2_field(len(shapes))  # the same arithmetic in fewer dispatches (N factors of size 2×2)
    else:
        both = _dmf_both(shapes, kind)

    def f(t: Tensor, y: Tensor, p0: Tensor, p1: Tensor) -> Tensor:
        return both(y, p0, p1, False)[0]

    def f_aux(t: Tensor, y: Tensor, p0: Tensor, p1: Tensor) -> tuple[Tensor, Tensor]:
        return both(y, p0, p1, True)  # type: ignore[return-value]

    f.autonomous = f_aux.autonomous = True  # type: ignore[attr-defined]  # t is not read: rk_attempt skips it
    return f, f_aux


def _dmf_both(shapes: tuple[tuple[int, int], ...], kind: str) -> Callable[..., tuple[Tensor, Tensor | None]]:
    """:func:`dmf_field`'s arithmetic for any shapes: ``both(y, p0, p1, want_loss) -> (dy, ℓ or None)``."""
    N = len(shapes)

    def both(y: Tensor, p0: Tensor, p1: Tensor, want_loss: bool) -> tuple[Tensor, Tensor | None]:
        Ws = _unpack(y, shapes)
        pre = _prefix(Ws)
        r = _residual(kind, pre[-1], p0, p1)
        if kind == "completion":
            negG = -r
        else:
            negG = fsum(-r.unsqueeze(-1).unsqueeze(-1) * p0, dim=-3)  # −Σ_k r_k A_k
        grads: list[Tensor] = [None] * N  # type: ignore[list-item]
        left = negG  # −(W_N ⋯ W_{j+1})ᵀ ∇ℓ, from the top down
        for j in range(N, 0, -1):
            grads[j - 1] = left if j == 1 else mm(left, pre[j - 2].mT)
            if j > 1:
                left = mm(Ws[j - 1].mT, left)
        dy = torch.cat([g.flatten(-2) for g in grads], dim=-1)
        loss = 0.5 * fsum((r * r).flatten(1)) if want_loss else None
        return dy, loss

    return both


def _square2_field(N: int) -> Callable[..., tuple[Tensor, Tensor | None]]:
    """:func:`dmf_field`'s ``both`` for N factors of size 2×2 (completion), with the same operations on the same
    operands (so the same bits) in fewer dispatches: one view gives every ``W_j[..., None]``; a product of 2×2
    matrices is one multiply and one addition (:func:`_pair_sum`, as in :func:`mm`); the N − 1 products
    ``grad_j = left_j · pre_{j−2}ᵀ`` are independent, so they are done as one stacked product."""

    def both(y: Tensor, p0: Tensor, p1: Tensor, want_loss: bool) -> tuple[Tensor, Tensor | None]:
        n = y.shape[0]
        Wl = y.reshape(n, N, 2, 2, 1).unbind(1)  # W_j[..., None], views
        pre_r = [Wl[0].reshape(n, 1, 2, 2)]  # the prefix products W_j ⋯ W_1 as right operands (…, 1, k, b)
        for j in range(1, N):  # W_{j+1}·pre: Σ_k W_ik pre_kb
            pre = _pair_sum(Wl[j] * pre_r[-1], -2)
            if j < N - 1:
                pre_r.append(pre.unsqueeze(-3))
        if N == 1:
            pre = Wl[0].reshape(n, 2, 2)
        r = p0 * (pre - p1)
        left = -r
        left_r = []  # −(W_N ⋯ W_{j+1})ᵀ ∇ℓ for j = N, …, 2 as left operands (…, i, 1, k)
        for j in range(N - 1, 0, -1):  # W_{j+1}ᵀ·left: Σ_k W_ki left_kb
            left_r.append(left.unsqueeze(-2))
            left = _pair_sum(Wl[j] * left_r[-1], -3)
        if N == 1:
            dy = left.reshape(n, 4)
        else:
            # grad_j = left_j · pre_{j−2}ᵀ (Σ_k left_ik pre_jk) for j = 2 … N, as one stacked product
            L = torch.stack(left_r[::-1], 1)  # (n, N − 1, 2, 1, 2)
            Pm = torch.stack(pre_r, 1)  # (n, N − 1, 1, 2, 2)
            G = _pair_sum(L * Pm, -1)
            dy = torch.cat([left.reshape(n, 4), G.reshape(n, 4 * (N - 1))], dim=-1)
        loss = 0.5 * fsum((r * r).reshape(n, 4)) if want_loss else None
        return dy, loss

    return both


def dmf_guard(shapes: Sequence[tuple[int, int]], safety: float = 10.0) -> Callable[..., Tensor]:
    """The determinant-resolution guard of ``gradient_flow.det_guard`` for square factors of size ≤ 4, in
    fixed-order arithmetic without square roots: trips where
    ``det(W_j)² ≤ 2·(safety·k)²·(k·e²/r²_min + u²)·Π_i ‖row_i(W_j)‖²``."""
    shapes = tuple(shapes)

    # consecutive factors of one size are evaluated together, as one (n, g, k, k) view of the state: the same
    # arithmetic per factor (so the same bits as one at a time and as the column form), fewer dispatches
    groups: list[tuple[int, int, int]] = []  # (offset, count, k)
    off = 0
    for a, _b in shapes:
        if groups and groups[-1][2] == a:
            groups[-1] = (groups[-1][0], groups[-1][1] + 1, a)
        else:
            groups.append((off, 1, a))
        off += a * a

    def guard(y: Tensor, err: Tensor, *_: Tensor) -> Tensor:
        u = torch.finfo(y.dtype).eps
        tiny = torch.finfo(y.dtype).tiny
        bad = None
        e2 = (err * err).unsqueeze(-1)
        for o, g, k in groups:
            W = y[..., o : o + g * k * k].reshape(*y.shape[:-1], g, k, k)
            R = fsum(W * W)  # (n, g, k) squared row norms
            had = R[..., 0]
            for i in range(1, k):
                had = had * R[..., i]
            rmin = R.amin(-1).clamp(min=tiny)
            tau2 = (2.0 * (safety * k) ** 2) * ((k * e2) / rmin + u * u) * had
            det = small_det(W)
            b = (det * det <= tau2).any(-1)
            bad = b if bad is None else bad | b
        return bad

    return guard


# ---------------------------------------------------------------------------------------------------------
# the same arithmetic on columns: every matrix entry a (n,) tensor, for the compiled kernel
# ---------------------------------------------------------------------------------------------------------
# Inductor turns (n, a, b) tensors with a, b ≤ 4 into many short masked vector loops, but a graph of (n,)
# columns into a few long loops vectorized along the batch.  The functions below mirror the tensor forms above
# operation by operation (same pairings in every sum, same operand order), so both give the same bits; the
# tests compare them on random inputs and on whole solves.
Cols = list[Tensor]
ColMat = list[list[Tensor]]


def col_fsum(xs: Sequence[Tensor]) -> Tensor:
    """:func:`fsum` over a list: the same pairwise order (s_i = x_i + x_{m/2+i}, an odd last one carried)."""
    xs = list(xs)
    while len(xs) > 1:
        m = len(xs)
        half = m // 2
        s = [xs[i] + xs[half + i] for i in range(half)]
        xs = s + xs[2 * half :] if m % 2 else s
    return xs[0]


def col_max(xs: Sequence[Tensor]) -> Tensor:
    """``amax`` over a list (max is exact, so any order agrees with the tensor form; NaN propagates)."""
    out = xs[0]
    for x in xs[1:]:
        out = torch.maximum(out, x)
    return out


def col_min(xs: Sequence[Tensor]) -> Tensor:
    out = xs[0]
    for x in xs[1:]:
        out = torch.minimum(out, x)
    return out


def col_mm(A: ColMat, B: ColMat) -> ColMat:
    """:func:`mm` on nested lists."""
    k = len(B)
    out = []
    for i in range(len(A)):
        row = []
        for j in range(len(B[0])):
            acc = A[i][0] * B[0][j]
            for q in range(1, k):
                acc = acc + A[i][q] * B[q][j]
            row.append(acc)
        out.append(row)
    return out


def _colT(A: ColMat) -> ColMat:
    return [list(r) for r in zip(*A, strict=True)]


def col_det(W: ColMat) -> Tensor:
    """:func:`small_det` on nested lists."""
    k = len(W)
    if k == 1:
        return W[0][0]
    if k == 2:
        return W[0][0] * W[1][1] - W[0][1] * W[1][0]
    out = None
    for j in range(k):
        minor = [r[:j] + r[j + 1 :] for r in W[1:]]
        term = W[0][j] * col_det(minor)
        out = term if out is None else (out - term if j % 2 else out + term)
    return out


def _col_unpack(ys: Cols, shapes: Sequence[tuple[int, int]]) -> list[ColMat]:
    out, i = [], 0
    for a, b in shapes:
        out.append([[ys[i + r * b + c] for c in range(b)] for r in range(a)])
        i += a * b
    return out


def _col_params(kind: str, p0: Tensor, p1: Tensor) -> tuple:
    if kind == "completion":
        d, e = p0.shape[-2:]
        return ([[p0[:, i, j] for j in range(e)] for i in range(d)],
                [[p1[:, i, j] for j in range(e)] for i in range(d)])
    m, d, e = p0.shape[-3:]
    A = [[[p0[:, k, i, j] for j in range(e)] for i in range(d)] for k in range(m)]
    return A, [p1[:, k] for k in range(m)]


def col_dmf(shapes: Sequence[tuple[int, int]], kind: str):
    """:func:`dmf_field`'s arithmetic on columns: ``both(ys, P0, P1, want_loss) -> (dy columns, loss)``."""
    shapes = tuple(shapes)
    N = len(shapes)

    def both(ys: Cols, P0, P1, want_loss: bool) -> tuple[Cols, Tensor | None]:
        Ws = _col_unpack(ys, shapes)
        pre = [Ws[0]]
        for Wj in Ws[1:]:
            pre.append(col_mm(Wj, pre[-1]))
        W = pre[-1]
        d, e = len(W), len(W[0])
        if kind == "completion":
            r = [[P0[i][j] * (W[i][j] - P1[i][j]) for j in range(e)] for i in range(d)]
            negG = [[-r[i][j] for j in range(e)] for i in range(d)]
            rflat = [r[i][j] for i in range(d) for j in range(e)]
        else:
            m = len(P1)
            rflat = [col_fsum([P0[k][i][j] * W[i][j] for i in range(d) for j in range(e)]) - P1[k] for k in range(m)]
            negr = [-x for x in rflat]
            negG = [[col_fsum([negr[k] * P0[k][i][j] for k in range(m)]) for j in range(e)] for i in range(d)]
        grads: list[ColMat] = [None] * N  # type: ignore[list-item]
        left = negG
        for j in range(N, 0, -1):
            grads[j - 1] = left if j == 1 else col_mm(left, _colT(pre[j - 2]))
            if j > 1:
                left = col_mm(_colT(Ws[j - 1]), left)
        dy = [x for g in grads for row in g for x in row]
        loss = 0.5 * col_fsum([x * x for x in rflat]) if want_loss else None
        return dy, loss

    return both


def col_guard(shapes: Sequence[tuple[int, int]], safety: float = 10.0):
    """:func:`dmf_guard`'s arithmetic on columns: ``guard(ys, err) -> (n,) bool``."""
    shapes = tuple(shapes)

    def guard(ys: Cols, err: Tensor) -> Tensor:
        u = torch.finfo(err.dtype).eps
        tiny = torch.finfo(err.dtype).tiny
        bad = None
        for W in _col_unpack(ys, shapes):
            k = len(W)
            R = [col_fsum([x * x for x in row]) for row in W]
            had = R[0]
            for i in range(1, k):
                had = had * R[i]
            rmin = col_min(R).clamp(min=tiny)
            tau2 = (2.0 * (safety * k) ** 2) * ((k * (err * err)) / rmin + u * u) * had
            det = col_det(W)
            b = det * det <= tau2
            bad = b if bad is None else bad | b
        return bad

    return guard


def col_attempt(co: RKCoefficients, shapes: Sequence[tuple[int, int]], kind: str, with_guard: bool):
    """:func:`rk_attempt` with the deep-factorization field and guard, in column form (same signature)."""
    both = col_dmf(shapes, kind)
    gfn = col_guard(shapes) if with_guard else None
    S = len(co.c)

    def attempt(t, y, k1, h, tm, err_acc, rtol, atol, p0, p1):
        u = torch.finfo(y.dtype).eps
        P = y.shape[1]
        P0, P1 = _col_params(kind, p0, p1)
        ys, k1s = [y[:, p] for p in range(P)], [k1[:, p] for p in range(P)]
        last = h >= tm - t
        hs = torch.where(last, tm - t, h)
        K = [k1s]
        aux = None
        yi = ys
        for i in range(1, S):
            yi = []
            for p in range(P):
                out = ys[p]
                for w, k in zip(co.a[i], K, strict=False):
                    if w != 0.0:
                        out = out + (hs * w) * k[p]
                yi.append(out)
            want = i == S - 1 and co.fsal
            k, loss = both(yi, P0, P1, want)
            if want:
                aux = loss
            K.append(k)
        if co.fsal:
            y_new = yi
        else:
            y_new = []
            for p in range(P):
                out = ys[p]
                for w, k in zip(co.b, K, strict=False):
                    if w != 0.0:
                        out = out + (hs * w) * k[p]
                y_new.append(out)
        e_loc = []
        for p in range(P):
            e_sum = None
            for w, k in zip(co.e, K, strict=True):
                if w != 0.0:
                    e_sum = w * k[p] if e_sum is None else e_sum + w * k[p]
            e_loc.append(hs * e_sum)
        q = [ratio(e_loc[p], atol + rtol * torch.maximum(ys[p].abs(), y_new[p].abs())) for p in range(P)]
        msq = col_fsum([x * x for x in q]) * (1.0 / P)
        ya = [x.abs() for x in y_new]
        ymax = col_max(ya)
        finite = torch.isfinite(msq) & torch.isfinite(ymax)
        acc = [err_acc[:, p] + torch.where(_moved([k[p] for k in K]), e_loc[p].abs() + u * ya[p], 0.0)
               for p in range(P)]
        t_new = torch.where(last, tm, t + hs)
        bad = gfn(y_new, col_max(acc)) if gfn is not None else None
        # (n, P) results written as (P, n) and viewed transposed: each column is a contiguous row, so the
        # whole attempt vectorizes along the batch
        return (hs, last, t_new, torch.stack(K[-1]).T, torch.stack(y_new).T, msq, finite, torch.stack(acc).T, ymax,
                aux, bad)

    return attempt


# ---------------------------------------------------------------------------------------------------------
# compilation with a bit-identical eager fallback
# ---------------------------------------------------------------------------------------------------------
_COMPILE_MODES = {"auto": "auto", "1": "always", "true": "always", "always": "always", "0": "never", "false": "never",
                  "never": "never"}

#: Default of ``IMPLREG_COMPILE_MIN_BATCH``.  Above the pooled claims' body size (``implreg.harness.pooling``,
#: 1024 instances, so at most 1024 rows per solve), so ``nox -s verify`` never waits for a first compile (46 s
#: idle, 497 s on a loaded 2-core machine for a 1,000-row depth-3 body, measured 2026-12-05), while the
#: benchmark's B = 4096 still runs compiled.  Eager costs ≈ 1.6× per instance at B ≈ 1000 (12.7 vs 7.7 ms at
#: depth 3): about 5 s per body, against a compile of 46–500 s.
DEFAULT_COMPILE_MIN_BATCH = 2048


def compile_mode() -> str:
    """``IMPLREG_COMPILE``: ``auto`` (default: compile on CPU once a batch reaches ``IMPLREG_COMPILE_MIN_BATCH``,
    default :data:`DEFAULT_COMPILE_MIN_BATCH`, then use the compiled kernel for every batch size),
    ``1``/``always`` (every call, any device), ``0``/``never``."""
    raw = os.environ.get("IMPLREG_COMPILE", "auto")
    mode = _COMPILE_MODES.get(raw.strip().lower() or "auto")
    if mode is None:
        raise ImplregError(f"IMPLREG_COMPILE={raw!r} is not a compile mode: use auto, always (or 1) or never (or 0)")
    return mode


def min_batch() -> int:
    """``IMPLREG_COMPILE_MIN_BATCH`` (rows; default :data:`DEFAULT_COMPILE_MIN_BATCH`)."""
    raw = os.environ.get("IMPLREG_COMPILE_MIN_BATCH", "").strip()
    if not raw:
        return DEFAULT_COMPILE_MIN_BATCH
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ImplregError(f"IMPLREG_COMPILE_MIN_BATCH must be a positive integer (rows), got {raw!r}")
    return n


def batch_inner(x: Tensor) -> Tensor:
    """``x`` (batch first) with the batch dimension innermost in memory (stride 1), so every entry across the
    batch is one contiguous vector: the layout compiled column kernels read and write.  No copy if it already
    is."""
    if x.ndim < 2 or x.stride(0) == 1:
        return x
    return x.movedim(0, -1).contiguous().movedim(-1, 0)


def _fresh(fn: Callable, name: str) -> Callable:
    """A copy of ``fn`` with its own code object, so dynamo keeps a separate cache (and recompile budget) per
    kernel instead of counting every kernel as a recompilation of one function."""
    code = fn.__code__.replace(co_name=name)
    g = types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    g.__kwdefaults__ = fn.__kwdefaults__
    return g


class CompiledKernel:
    """A pure row-wise tensor function run eagerly or compiled (``torch.compile(dynamic=True, fullgraph=True)``).

    ``compiled_fn`` (default ``fn``) is what gets compiled: a formulation of the same arithmetic that compiles to
    better code (e.g. the column form of this module); ``compiled_post`` maps its results to ``fn``'s, and the
    two must agree bit for bit.
    Every tensor argument with at least one dimension is batch-first except those listed in ``shared``, and so
    is every result with a dimension; ``batch_arg`` names an argument whose first dimension is the batch.
    The function must be written with the primitives of this module (exactly rounded elementwise operations),
    so both paths return identical bits and the choice may depend on the batch size.  On CPU (mode ``auto``) the
    kernel is compiled the first time a batch of at least ``IMPLREG_COMPILE_MIN_BATCH`` rows (default 2048)
    arrives; from then on the compiled version serves every batch (a 1-row batch is padded to 2 rows to avoid a separate
    specialization).  On other devices it compiles only in mode ``always`` and then for every call, because
    GPU code generators may contract a·b + c into an FMA, which eager kernels do not.  Any compilation error
    disables compilation for this kernel with a warning and the eager result is returned.
    """

    def __init__(self, fn: Callable, name: str, batch_arg: int = 0, compiled_fn: Callable | None = None,
                 compiled_post: Callable[[tuple], tuple] | None = None, shared: Sequence[int] = ()):
        self.shared = frozenset(shared)  # indices of arguments that are not batch-first
        self.fn = fn
        self.compiled_fn = compiled_fn if compiled_fn is not None else fn
        self.compiled_post = compiled_post
        self.name = name
        self.batch_arg = batch_arg
        self._compiled: Callable | None = None
        self.failed: str | None = None
        self.calls = {"eager": 0, "compiled": 0}

    def _want(self, n: int, device: torch.device) -> bool:
        mode = compile_mode()
        if self.failed is not None or mode == "never":
            return False
        if mode == "always":
            return True
        if device.type != "cpu":
            return False
        return self._compiled is not None or n >= min_batch()

    def __call__(self, *args: Tensor | None) -> tuple:
        y = args[self.batch_arg]
        n = int(y.shape[0])
        if n >= 1 and self._want(n, y.device):
            try:
                out = self._call_compiled(n, args)
                self.calls["compiled"] += 1
                return self.compiled_post(out) if self.compiled_post is not None else out
            except Exception as exc:  # compilation unavailable (no compiler, unsupported op, …)
                self.failed = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"implreg: torch.compile of kernel {self.name!r} failed, using eager torch "
                              f"(same results, slower): {self.failed[:300]}", RuntimeWarning, stacklevel=2)
        self.calls["eager"] += 1
        # no autograd bookkeeping (a pure function of tensors that need no gradient): the same kernels, ~20%
        # less dispatch overhead per op, which is most of the cost of a small eager batch
        with torch.inference_mode():
            return self.fn(*args)

    def prepare(self, x: Tensor) -> Tensor:
        """The layout in which to keep a batch-first argument between calls: batch innermost where this batch
        will be compiled (so compiled calls need no copies), as it is where it will run eagerly (the eager
        kernels' buffers are batch-first, and mixing the two layouts costs ~6% at B = 64)."""
        return batch_inner(x) if self._want(int(x.shape[0]), x.device) else x

    def _call_compiled(self, n: int, args: tuple) -> tuple:
        if self._compiled is None:
            fn = _fresh(self.compiled_fn, f"implreg_{self.name}")
            # one fused loop over the batch: every intermediate stays in registers (inductor's default caps a
            # fusion group at 64 nodes, which splits an RK attempt into several loops over ~100 stored buffers)
            self._compiled = torch.compile(fn, dynamic=True, fullgraph=True, options={"max_fusion_size": 4096})
        batch = [isinstance(a, Tensor) and a.ndim > 0 and i not in self.shared for i, a in enumerate(args)]
        if n == 1:  # every result with a dimension is batch-first
            args = tuple(torch.cat([a, a]) if b else a for a, b in zip(args, batch, strict=True))
        args = tuple(batch_inner(a) if b else a for a, b in zip(args, batch, strict=True))
        # Python floats in the kernel (tableau coefficients, tolerances of the guard) are constants, not inputs
        with torch._dynamo.config.patch(specialize_float=True):
            out = self._compiled(*args)
        if n == 1:
            out = tuple(o[:1] if isinstance(o, Tensor) and o.ndim > 0 else o for o in out)
        return out


def dmf_attempt_kernel(co: RKCoefficients, shapes: Sequence[tuple[int, int]], kind: str, with_guard: bool,
                       name: str) -> CompiledKernel:
    """The RK attempt for gradient flow on a deep matrix factorization of small matrices: eager in tensor form
    (:func:`rk_attempt` with :func:`dmf_field`, :func:`dmf_guard`), compiled in column form
    (:func:`col_attempt`) — the same bits either way."""
    f, f_aux = dmf_field(shapes, kind)
    g = dmf_guard(shapes) if with_guard else None

    def attempt(t, y, k1, h, tm, err_acc, rtol, atol, p0, p1):
        return rk_attempt(co, f, f_aux, g, t, y, k1, h, tm, err_acc, rtol, atol, p0, p1, all_stages=False)

    return CompiledKernel(attempt, name, batch_arg=1, compiled_fn=col_attempt(co, shapes, kind, with_guard))


# ---------------------------------------------------------------------------------------------------------
# after the attempt: step-size update, acceptance, commit, statuses (all exact operations)
# ---------------------------------------------------------------------------------------------------------
# Status codes (integrate.Status); repeated here so this module does not import the integrator.
_T_MAX, _EVENT, _MAX_STEPS, _DIVERGED, _TOO_SMALL, _UNRESOLVED = 1, 2, 3, 4, 5, 6


def rk_post(
    p: Tensor, hs: Tensor, last: Tensor, t_new: Tensor, k_last: Tensor, y_new: Tensor, msq: Tensor,
    finite: Tensor, acc_err: Tensor, ymax: Tensor, bad: Tensor | None,
    y: Tensor, t: Tensor, err_acc: Tensor, k1: Tensor, steps: Tensor, rej: Tensor, attempts: Tensor,
    active: Tensor, g_new: Tensor | None, g_lv: Tensor | None, lev_done: Tensor | None,
    saves: Tensor | None, max_steps: Tensor, limit: Tensor, tiny_step: Tensor,
) -> tuple:
    """Everything of an integration step after the attempt, for all rows at once: acceptance (``msq ≤ 1``
    among active rows), the step-size factor ``clip(0.9·p, 0.2, 10)`` with ``p = err^(−1/order)`` computed by
    the caller (no transcendental functions in here), the commit of accepted rows, and each row's status:
    step too small, stopping event, divergence (``max|y_new| ≥ limit``), final time, guard (``bad``, also on
    the final step), max steps.  Run eagerly: compiled (tried) it is no faster, its operations being few and
    memory-bound.

    Returns ``(y, t, err_acc, k1, steps, rej, h, attempts, status, fired, lev_new, lev_done, save_in,
    record, attention)``: the committed state, the new step size, the status (0 = running), the masks of rows
    whose event fired / levels crossed / saves fall in the step, ``record`` (rows whose dense output is
    needed) and ``attention`` (rows that need the host: record or finished).
    """
    accept = finite & (msq <= 1.0) & active
    fac = torch.where(finite, (0.9 * p).clamp(0.2, 10.0), 0.25)
    fac = torch.where(accept, fac, fac.clamp(max=1.0))
    h = hs * fac
    rejected = active & ~accept
    too_small = rejected & (h <= tiny_step * t.abs().clamp(min=1.0))
    attempts = attempts + active  # int + bool: counts stay int64
    acol = accept.unsqueeze(-1)
    t_old = t
    y = torch.where(acol, y_new, y)
    t = torch.where(accept, t_new, t)
    err_acc = torch.where(acol, acc_err, err_acc)
    k1 = torch.where(acol, k_last, k1)
    steps = steps + accept
    rej = rej + rejected
    status = torch.where(too_small, _TOO_SMALL, 0)
    ok = accept
    fired = None
    if g_new is not None:
        fired = accept & (g_new <= 0)
        ok = ok & ~fired
        status = torch.where(fired, _EVENT, status)
    big = ok & ~(ymax < limit)
    status = torch.where(big, _DIVERGED, status)
    ok = ok & ~big
    status = torch.where(ok & last, _T_MAX, status)
    if bad is not None:
        status = torch.where(ok & bad, _UNRESOLVED, status)
    status = torch.where((status == 0) & active & (attempts >= max_steps), _MAX_STEPS, status)
    record = fired
    lev_new = None
    if g_lv is not None:
        lev_new = acol & (g_lv <= 0) & ~lev_done
        lev_done = lev_done | lev_new
        record = lev_new.any(-1) if record is None else record | lev_new.any(-1)
    save_in = None
    if saves is not None:
        save_in = acol & (saves > t_old.unsqueeze(-1)) & (saves <= t_new.unsqueeze(-1))
        record = save_in.any(-1) if record is None else record | save_in.any(-1)
    attention = status != 0 if record is None else (status != 0) | record
    return (y, t, err_acc, k1, steps, rej, h, attempts, status, fired, lev_new, lev_done, save_in, record,
            attention)



# ---------------------------------------------------------------------------------------------------------
# the whole step in one kernel
# ---------------------------------------------------------------------------------------------------------
def root_table(m: int, dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """``2^(−e/m)`` for e = −64 … 63 (index e + 64): the exponent part of :func:`inv_root`."""
    return torch.tensor([2.0 ** (-e / m) for e in range(-64, 64)], dtype=dtype, device=device)


def frexp_exact(x: Tensor, ladder: bool = False) -> tuple[Tensor, Tensor]:
    """``x = f·2^e`` with f ∈ [½, 1) and e an integer-valued float, for x in [2⁻⁶⁰, 2⁶⁰].  ``ladder=False`` uses
    ``torch.frexp`` (eager); ``ladder=True`` gets the same two numbers by comparisons with 2^j and an exact
    power-of-two scaling (compiled code: inductor's vectorized frexp does not compile in torch 2.13; the
    comparisons all read x itself, so the expression does not grow with their number)."""
    if not ladder:
        f, e = torch.frexp(x)
        return f, e.to(x.dtype)
    e = (x >= 2.0**-60).to(x.dtype)
    for j in range(-59, 61):
        e = e + (x >= 2.0**j).to(x.dtype)
    e = e - 60.0  # = ⌊log2 x⌋ + 1
    scale = torch.tensor([2.0 ** -k for k in range(-64, 64)], dtype=x.dtype, device=x.device)
    return x * scale[(e + 64.0).clamp(0.0, 127.0).to(torch.int64)], e


_ROOT_POLY: dict[int, tuple[float, ...]] = {}


def _root_poly(m: int) -> tuple[float, ...]:
    """Monomial coefficients (in u = 4(f − ¾), f ∈ [½, 1]) of the degree-18 Chebyshev interpolant of
    f^(−1/m): relative error ≈ 3·10⁻¹⁶ on [½, 1]."""
    if m not in _ROOT_POLY:
        import numpy as np

        cheb = np.polynomial.Chebyshev.interpolate(lambda u: (0.75 + 0.25 * u) ** (-1.0 / m), 18)
        _ROOT_POLY[m] = tuple(float(c) for c in np.polynomial.chebyshev.cheb2poly(cheb.coef))
    return _ROOT_POLY[m]


def inv_root(x: Tensor, m: int, table: Tensor, ladder: bool = False, coeffs: Sequence[float] | None = None) -> Tensor:
    """``x^(−1/m)`` for x > 0 without exp/log (x clamped to [2⁻⁶⁰, 2⁶⁰], NaN read as 1): x = f·2^e exactly
    (:func:`frexp_exact`), ``2^(−e/m)`` from :func:`root_table`, ``f^(−1/m)`` for f ∈ [½, 1) by a polynomial
    (Horner; relative error ~10⁻¹⁵).  Exact operations and table lookups only, so eager and compiled code agree
    bit for bit (``torch.exp``/``log`` do not: vectorized and libm versions differ in the last bit).  (Horner
    rather than Newton steps: an expression that reuses its previous value several times makes inductor's
    compile time grow exponentially with the number of steps.)"""
    if ladder:
        x = torch.where(x == x, x, torch.ones_like(x)).clamp(min=2.0**-60, max=2.0**60)
        f, e = frexp_exact(x, ladder)
        index = (e + 64.0).clamp(0.0, 127.0).to(torch.int64)
    else:  # the same numbers in fewer eager dispatches (±inf → ±max → clamped as ±inf would be)
        f, ei = torch.frexp(torch.nan_to_num(x, nan=1.0).clamp(min=2.0**-60, max=2.0**60))
        index = (ei + 64).clamp(0, 127)
    u = (f - 0.75) * 4.0
    c = _root_poly(m) if coeffs is None else coeffs
    acc = u * c[-1] + c[-2]
    for ck in reversed(c[:-2]):
        acc = acc * u + ck
    return acc * table[index]


def _fused_step(co: RKCoefficients, attempt: Callable[..., tuple], ladder: bool) -> Callable[..., tuple]:
    m = 2 * co.order  # the factor is err^(−1/order) = msq^(−1/(2·order))
    coeffs = _root_poly(m)  # computed here, outside any traced code

    def step(t, y, k1, h, tm, err_acc, steps, rej, attempts, active, lev_done, rtol, atol, target, lv, saves,
             max_steps, limit, tiny_step, table, p0, p1):
        hs, last, t_new, k_last, y_new, msq, finite, acc_err, ymax, aux, bad = attempt(
            t, y, k1, h, tm, err_acc, rtol, atol, p0, p1)
        p = inv_root(msq, m, table, ladder, coeffs)
        g_new = aux - target if target is not None else None
        g_lv = aux.unsqueeze(-1) - lv if lv is not None else None
        post = rk_post(p, hs, last, t_new, k_last, y_new, msq, finite, acc_err, ymax, bad, y, t, err_acc, k1,
                       steps, rej, attempts, active, g_new, g_lv, lev_done, saves, max_steps, limit, tiny_step)
        return (*post, hs, y_new, acc_err, post[-1].any())

    return step


# indices of step() arguments that are not batch-first
_STEP_SHARED = (11, 12, 13, 14, 15, 16, 17, 18, 19)


def dmf_step_kernel(co: RKCoefficients, shapes: Sequence[tuple[int, int]], kind: str, with_guard: bool,
                    name: str) -> CompiledKernel:
    """One whole integration step of gradient flow on a small deep matrix factorization — the RK attempt, the
    step-size factor (:func:`inv_root`), the loss events, acceptance, commit and statuses (:func:`rk_post`) —
    as a :class:`CompiledKernel`: eager in tensor form, compiled in column form, the same bits either way.

    ``step(t, y, k1, h, tm, err_acc, steps, rej, attempts, active, lev_done, rtol, atol, target, lv, saves,
    max_steps, limit, tiny_step, table, p0, p1)`` returns :func:`rk_post`'s results followed by ``(hs, y_new,
    acc_err, any_attention)``; events are ``ℓ − target`` and levels ``ℓ − lv`` from the loss the last stage
    computes (None to disable).
    """
    f, f_aux = dmf_field(shapes, kind)
    g = dmf_guard(shapes) if with_guard else None

    def attempt(t, y, k1, h, tm, err_acc, rtol, atol, p0, p1):
        return rk_attempt(co, f, f_aux, g, t, y, k1, h, tm, err_acc, rtol, atol, p0, p1, all_stages=False)

    return CompiledKernel(_fused_step(co, attempt, ladder=False), name, batch_arg=1,
                          compiled_fn=_fused_step(co, col_attempt(co, shapes, kind, with_guard), ladder=True),
                          shared=_STEP_SHARED)
