"""Balanced gradient flow in deflated spectral coordinates, for trajectories whose determinant decays below float64.

Under balanced init the end-to-end matrix ``W = W_N⋯W_1`` obeys (Arora, Cohen, Hazan 2018, Theorem 1)
``Ẇ = −Σ_{j=1}^N (WWᵀ)^{(j−1)/N} ∇ℓ(W) (WᵀW)^{(N−j)/N}``.  For square d×d ``W`` we write

    W = U · blockdiag(T, e^λ) · Vᵀ,      U, V orthogonal d×d,  T (d−1)×(d−1),  λ = log σ_min(W),

so the smallest singular value is carried by its logarithm (full relative precision however small it gets)
and the rest by a general matrix T (no SVD of the top block, so repeated top singular values — e.g. the
identity block of the Razin–Cohen d×d embedding — do no harm).  With ``g = Uᵀ∇ℓ(W)V``, ``M = UᵀẆV`` and the
gauge ``U̇ = UA``, ``V̇ = VC`` (A, C antisymmetric, zero on the top block), writing ``T = P diag(τ) Qᵀ``:

* ``Ṫ = M_tt = −P [(Pᵀ g_tt Q) ∘ K(τ, τ)] Qᵀ``,  ``K(x, y) = Σ_j x^{2(j−1)/N} y^{2(N−j)/N}``;
* ``λ̇ = M_dd / σ = −N e^{(1−2/N)λ} g_dd``  (bounded for N = 2: why λ is the well-conditioned coordinate);
* ``A_td = P a'``, ``C_td = Q c'`` with ``x = Pᵀ g_td``, ``z = Qᵀ g_dtᵀ`` and
  ``a' = (σ x + τ z) / (τ^{2/N} − σ^{2/N})``, ``c' = (τ x + σ z) / (τ^{2/N} − σ^{2/N})``.

These follow from ``M = AΣ̃ − Σ̃C + Σ̃̇`` (Σ̃ the block core): the (t, d) and (d, t) blocks give
``[σI, −T; −Tᵀ, σI][a; c] = [M_td; M_dtᵀ]``, solved by ``a = −(TTᵀ − σ²)⁻¹(σM_td + TM_dtᵀ)``, and the
geometric sum ``K(τ, σ) = (τ² − σ²)/(τ^{2/N} − σ^{2/N})`` cancels the ``τ² − σ²`` (for d = 2 these are the
textbook singular-vector derivatives ``A_12 = (σ_2 M_12 + σ_1 M_21)/(σ_2² − σ_1²)`` etc.).  The only
denominator is the gap ``τ_min^{2/N} − σ^{2/N}``, so the coordinates are used only while ``σ/τ_min`` is small.

Orthogonality of U and V: neither integrator used here has a post-step hook (re-orthonormalizing after each
accepted step would need one in :func:`implreg.matrix.flow.integrate`), and angles exist only for d = 2, so the field
carries a stabilization term ``U̇ = UA − ½γ U(UᵀU − I)``: it vanishes on the orthogonal group (the exact
solution is unchanged) and makes ``E = UᵀU − I`` obey ``Ė = AᵀE + EA − γE + O(E²)`` — the first part preserves
‖E‖_F (A antisymmetric) — so rounding and truncation drift decay at rate γ instead of accumulating.  The drift
is measured at every accepted step (guard: above ``drift_limit`` the instance stops UNRESOLVED) and at every
reported state, and enters the error estimate as a lower bound on the state error (‖δU‖ ≥ ½‖UᵀU − I‖).

:func:`solve_balanced` is a hybrid: phase 1 integrates factor coordinates (the field and det guard of
:func:`implreg.matrix.flow.solve`, through the public :func:`implreg.matrix.flow.integrate`, so that the switch can be
a guard)
until the instance is done or ``σ_min/σ_max < switch_ratio`` or ``|det W_j|`` comes within a factor
``switch_safety/10`` of the det guard's resolution threshold; such instances continue from that accepted state
in spectral coordinates.  At the switch the det sign is certified (the
standard det guard must not trip there) and ``λ = Σ_j log|det W_j| − log|det T|`` is formed from the factors'
determinants, which keep relative precision ``u·cond(W_j) = u·cond(W)^{1/N}``, not ``u·cond(W)``.  Late in
the flow the spectral field is stiff, so phase 2 (``method="auto"``, the default: :func:`explicit_then_stiff`) runs
Dormand–Prince for a per-instance allowance of steps and continues with RODAS4 (:func:`rosenbrock`, below) where the
allowance runs out; ``"rosenbrock"`` and ``"dopri5"`` run one of them throughout.

What is computed is the *balanced* flow of the end-to-end matrix of the given factors.  Factors balanced only
to rounding (``balanced_init`` in float64: defect ~u‖W_j‖²) follow, under the exact factor flow, a slightly
unbalanced trajectory whose det departs from the balanced one once σ_min(W_j)² falls to that defect (measured
for init scale 1e-3 at depth 2: from det W ≈ 1e-18, t ≈ 30–60, after which the exact factor flow's det can grow
again); a high-precision reference started from such factors measures that other trajectory.  Exactly
balanced float64 factors exist: ``W_{j+1} = Y W_jᵀ`` with Y a signed permutation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from implreg.errors import InvalidInputError, NumericalError
from implreg.matrix.factorization import (
    FactorLayout,
    Factors,
    balanced_init,
    balancedness_defect,
    check_factors,
    end_to_end,
    factor_grads,
)
from implreg.matrix.flow.gradient_flow import TWO_TOL_FACTOR, det_guard, two_tolerance_combine_entries
from implreg.matrix.flow.integrate import IntegrationResult, Status, check_state_and_tolerances, integrate
from implreg.matrix.problems import Problem

__all__ = [
    "EXPLICIT_ALLOWANCE",
    "BalancedFlowSolution",
    "SpectralLayout",
    "explicit_steps_for",
    "explicit_then_stiff",
    "from_factors",
    "rodas_step",
    "rosenbrock",
    "solve_balanced",
    "spectral_vector_field",
    "to_end_to_end",
]

# The absolute time rides along in the spectral state (scaled by an exact power of two so that its rounding
# term u·|τ| does not dominate the integrator's error estimate) so that per-instance save times after
# per-instance switch times can be located as level crossings.
_TIME_SCALE = 2.0**-30


# ------------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class SpectralLayout:
    """Packing of the spectral state (U, V, T, λ, τ) of d×d matrices into a flat (B, P) vector.

    ``U, V`` (d×d, orthogonal), ``T`` ((d−1)×(d−1) top core), ``λ = log σ_min``, ``τ = t·2^−30`` (time).
    """

    d: int

    def __post_init__(self) -> None:
        if self.d < 2:
            raise InvalidInputError(f"spectral coordinates need d ≥ 2, got d = {self.d}")

    @property
    def k(self) -> int:
        return self.d - 1

    @property
    def size(self) -> int:
        return 2 * self.d * self.d + self.k * self.k + 2

    def pack(self, U: Tensor, V: Tensor, T: Tensor, lam: Tensor, tau: Tensor) -> Tensor:
        n = U.shape[0]
        return torch.cat([U.reshape(n, -1), V.reshape(n, -1), T.reshape(n, -1), lam.reshape(n, 1),
                          tau.reshape(n, 1)], dim=-1)

    def unpack(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        d, k = self.d, self.k
        lead = y.shape[:-1]
        i = 0
        U = y[..., i : i + d * d].reshape(*lead, d, d)
        i += d * d
        V = y[..., i : i + d * d].reshape(*lead, d, d)
        i += d * d
        T = y[..., i : i + k * k].reshape(*lead, k, k)
        i += k * k
        return U, V, T, y[..., i], y[..., i + 1]


# ------------------------------------------------------------------------------------------- algebra


def _core_svd(T: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``T = P diag(τ) Qᵀ`` with τ > 0 descending; closed form (sign, |T|, 1) for 1×1 cores."""
    if T.shape[-1] == 1:
        return torch.sign(T), T.abs().squeeze(-1), torch.ones_like(T)
    P, tau, Qh = torch.linalg.svd(T)
    return P, tau, Qh.transpose(-1, -2)


def _ksum(log_x: Tensor, log_y: Tensor, N: int) -> Tensor:
    """``K(x, y) = Σ_{j=1}^N x^{2(j−1)/N} y^{2(N−j)/N}`` from logs, as exp(p·log) (row-wise exact)."""
    # the sum starts from its first term, not from zeros: the same bits (0 + x = x for x = e^… > 0) without
    # torch.broadcast_shapes, whose Python implementation cost ~15% of the field at the stages' batch sizes
    out = torch.exp(0.0 * log_x + (2.0 * (N - 1) / N) * log_y)  # j = 1
    for j in range(2, N + 1):
        out = out + torch.exp((2.0 * (j - 1) / N) * log_x + (2.0 * (N - j) / N) * log_y)
    return out


def to_end_to_end(layout: SpectralLayout, y: Tensor) -> Tensor:
    """``W = U blockdiag(T, e^λ) Vᵀ`` for spectral states y (…, P)."""
    U, V, T, lam, _ = layout.unpack(y)
    if layout.d == 2:
        return _e2e_2x2(U, V, T, lam)
    k = layout.k
    Ut, Vt = U[..., :, :k], V[..., :, :k]
    ud, vd = U[..., :, k:], V[..., :, k:]
    return Ut @ T @ Vt.transpose(-1, -2) + torch.exp(lam)[..., None, None] * (ud @ vd.transpose(-1, -2))


def _e2e_2x2(U: Tensor, V: Tensor, T: Tensor, lam: Tensor) -> Tensor:
    """:func:`to_end_to_end` for d = 2: ``(u₁ t) v₁ᵀ + e^λ (u₂ v₂ᵀ)`` as broadcast products, the same roundings as
    the matrix products with inner dimension 1 (one product each), in fewer dispatches."""
    top = (U[..., :, :1] * T) * V[..., None, :, 0]
    return top + torch.exp(lam)[..., None, None] * (U[..., :, 1:] * V[..., None, :, 1])


def _problem_factory(problem: Problem):
    names = list(problem.tensors())

    last: list = [(), None]  # the tensors of the last call and their Problem (integrators pass the same ones)

    def prob(*pr: Tensor) -> Problem:
        if len(pr) == len(last[0]) and all(a is b for a, b in zip(pr, last[0], strict=True)):
            return last[1]
        made = Problem(problem.name, **dict(zip(names, pr, strict=True)))
        last[0], last[1] = pr, made
        return made

    return prob, [problem.tensors()[n] for n in names]


def spectral_vector_field(
    problem: Problem, depth: int, layout: SpectralLayout, damping: float = 1.0, *, scalar_2x2: bool = True
):
    """The field ``f(t, y, *problem tensors)`` of the spectral state (see the module docstring).

    ``damping`` is γ in the orthogonality stabilization ``U̇ = UA − ½γU(UᵀU − I)`` (same for V); ``γh`` must
    stay inside the integrator's stability region, which the step control takes care of.  For d = 2 the same
    formulas are written with scalars (``scalar_2x2``; half the torch calls — the field's cost is per call).
    """
    N, d, k = int(depth), layout.d, layout.k
    prob, _ = _problem_factory(problem)
    two_over_n = 2.0 / N
    if d == 2 and scalar_2x2:
        return _field_2x2(prob, N, layout, damping)

    def f(t: Tensor, y: Tensor, *pr: Tensor) -> Tensor:
        U, V, T, lam, _ = layout.unpack(y)
        W = to_end_to_end(layout, y)
        g = U.transpose(-1, -2) @ prob(*pr).grad(W) @ V
        P, tau, Q = _core_svd(T)
        log_tau = torch.log(tau)  # (n, k)
        sig = torch.exp(lam)  # (n,)
        # top block: Ṫ = −P [(Pᵀ g_tt Q) ∘ K(τ, τ)] Qᵀ
        g_tt = P.transpose(-1, -2) @ g[:, :k, :k] @ Q
        dT = -(P @ (g_tt * _ksum(log_tau.unsqueeze(-1), log_tau.unsqueeze(-2), N)) @ Q.transpose(-1, -2))
        # coupling of the top block with the smallest singular value
        x = (P.transpose(-1, -2) @ g[:, :k, k:]).squeeze(-1)  # (n, k)
        z = (Q.transpose(-1, -2) @ g[:, k:, :k].transpose(-1, -2)).squeeze(-1)  # (n, k)
        # τ^{2/N} − σ^{2/N} = τ^{2/N} (1 − e^{(2/N)(λ − log τ)}), by expm1 for full relative precision
        den = -torch.exp(two_over_n * log_tau) * torch.expm1(two_over_n * (lam.unsqueeze(-1) - log_tau))
        s1 = sig.unsqueeze(-1)
        a = (P @ ((s1 * x + tau * z) / den).unsqueeze(-1)).squeeze(-1)  # (n, k) = A[:k, k]
        c = (Q @ ((tau * x + s1 * z) / den).unsqueeze(-1)).squeeze(-1)  # (n, k) = C[:k, k]
        dlam = -N * torch.exp((1.0 - two_over_n) * lam) * g[:, k, k]
        eye = torch.eye(d, dtype=y.dtype, device=y.device)

        def rot(X: Tensor, v: Tensor) -> Tensor:
            """X·A with A = [[0, v], [−vᵀ, 0]], minus the stabilization ½γ X(XᵀX − I)."""
            XA = torch.cat([-X[:, :, k:] * v.unsqueeze(-2), X[:, :, :k] @ v.unsqueeze(-1)], dim=-1)
            if damping:
                XA = XA - (0.5 * damping) * (X @ (X.transpose(-1, -2) @ X - eye))
            return XA

        dtau = torch.full_like(lam, _TIME_SCALE)
        return layout.pack(rot(U, a), rot(V, c), dT, dlam, dtau)

    return f


# below this many rows the batch-first form is faster (fewer dispatches, ~90 vs ~140 µs per call), above it the
# batch-last one (contiguous inner loops: 3 vs 7.5 ms at 23,552 rows); measured on one core, crossing near 250
_COLUMNS_MIN_ROWS = 256


def _field_2x2(prob, N: int, layout: SpectralLayout, damping: float):
    """d = 2 case of :func:`spectral_vector_field`: T = (t) is 1×1, P = sign t, τ = |t|, Q = 1.

    Two forms with the same bits per row (:func:`_field_2x2_rows`, :func:`_field_2x2_columns`), picked by the
    number of rows (the stages call the field on the active batch, the Jacobian on 2P + 1 times as many)."""
    rows = _field_2x2_rows(prob, N, layout, damping)
    columns = _field_2x2_columns(prob, N, layout, damping)

    def f(t: Tensor, y: Tensor, *pr: Tensor) -> Tensor:
        return (columns if y.shape[0] >= _COLUMNS_MIN_ROWS else rows)(t, y, *pr)

    return f


def _field_2x2_rows(prob, N: int, layout: SpectralLayout, damping: float):
    """:func:`_field_2x2` with the batch first, for small batches.

    Written for few dispatches with each row's operations unchanged: W from broadcast products (:func:`_e2e_2x2`),
    e^λ formed once, and U and V rotated together as one (n, 2, 2, 2) batch (the state stores them adjacently)."""
    two_over_n = 2.0 / N
    K_top = 2.0 * (N - 1) / N
    consts: dict = {}

    def f(t: Tensor, y: Tensor, *pr: Tensor) -> Tensor:
        n = y.shape[0]
        key = (n, y.dtype, y.device)
        if key not in consts:
            # the rotation's signs (X·A = [−x₂v, x₁v] = flip(X)·[−v, v], negation exact) and the time's rate
            with torch.inference_mode(False):  # cached: ordinary tensors even when first made inside rosenbrock
                consts[key] = (torch.tensor([-1.0, 1.0], dtype=y.dtype, device=y.device),
                               torch.eye(2, dtype=y.dtype, device=y.device),
                               torch.full((n,), _TIME_SCALE, dtype=y.dtype, device=y.device))
        sgn, eye, dtau = consts[key]
        UV = y[:, :8].reshape(n, 2, 2, 2)  # [U, V]
        U, V = UV.unbind(1)
        tt = y[:, 8]
        lam = y[:, 9]
        sig = torch.exp(lam)
        W = (U[:, :, :1] * tt[:, None, None]) * V[:, None, :, 0] + sig[:, None, None] * (U[:, :, 1:] * V[:, None, :, 1])
        g = torch.bmm(torch.bmm(U.transpose(-1, -2), prob(*pr).grad(W)), V)  # = Uᵀ∇ℓV (what @ calls, less dispatch)
        p = torch.sign(tt)
        log_tau = torch.log(tt.abs())
        tau = torch.exp(log_tau)
        g00, g01, g10, g11 = g.reshape(n, 4).unbind(-1)
        dT = -N * g00 * torch.exp(K_top * log_tau)  # −P (Pᵀ g_tt Q · N τ^{2(N−1)/N}) Qᵀ, P² = Q = 1
        x, zz = p * g01, g10
        den = -torch.exp(two_over_n * log_tau) * torch.expm1(two_over_n * (lam - log_tau))
        a = p * (sig * x + tau * zz) / den
        c = (tau * x + sig * zz) / den
        dlam = -N * torch.exp((1.0 - two_over_n) * lam) * g11
        # X·A for X = U, V with A = [[0, v], [−v, 0]] (v = a, c), minus ½γ X(XᵀX − I)
        XA = UV.flip(-1) * (torch.stack([a, c], dim=-1)[:, :, None, None] * sgn)
        if damping:
            X = UV.reshape(2 * n, 2, 2)  # U and V as one batch of 2n (the copy @ would make)
            XA = XA - (0.5 * damping) * torch.bmm(X, torch.bmm(X.transpose(-1, -2), X) - eye).reshape(n, 2, 2, 2)
        return torch.cat([XA.reshape(n, 8), torch.stack([dT, dlam, dtau], dim=-1)], dim=-1)

    return f


def _field_2x2_columns(prob, N: int, layout: SpectralLayout, damping: float):
    """:func:`_field_2x2` with the batch last, for large batches.

    Written with the batch last: the state's columns as a (P, n) array, U and V as (2, 2, n), so that every op
    runs over contiguous instances (with the batch first, broadcasts over inner dimensions of size 2 and
    torch.bmm of 2×2 matrices cost ~10× more per row at the Jacobian's 2P·n rows), in few dispatches (the
    small batches of the stages pay per op).  Each row's operations are those of the matrix form: a 2×2
    product entry is ``(a₀b₀ + 0) + a₁b₁`` (what torch.bmm's small-matrix kernel computes: its sum starts at
    +0), e^λ is formed once, and ``X·A = [−x₂v, x₁v]`` multiplies by ``−v`` formed as ``v·(−1)``."""
    two_over_n = 2.0 / N
    K_top = 2.0 * (N - 1) / N
    half_damping = 0.5 * damping
    consts: dict = {}

    def mm(X: Tensor, Y: Tensor) -> Tensor:
        """2×2 products over the batch, X (…, 2, 2, n) · Y (…, 2, 2, n), rounded as torch.bmm rounds them."""
        return (X[..., :, 0:1, :] * Y[..., 0:1, :, :] + 0.0) + X[..., :, 1:2, :] * Y[..., 1:2, :, :]

    def f(t: Tensor, y: Tensor, *pr: Tensor) -> Tensor:
        n = y.shape[0]
        key = (y.dtype, y.device)
        if key not in consts:
            with torch.inference_mode(False):  # cached: an ordinary tensor even when first made inside rosenbrock
                consts[key] = torch.eye(2, dtype=y.dtype, device=y.device).unsqueeze(-1)
        eye = consts[key]
        c = y.T.contiguous()  # (P, n): the state's columns
        UV = c[:8].view(2, 2, 2, n)  # [U, V] with the batch last
        U, V = UV[0], UV[1]
        tt, lam = c[8], c[9]
        sig = torch.exp(lam)
        # W_ij = (u_i0 t) v_j0 + e^λ (u_i1 v_j1); (n, 2, 2) contiguous for the problem's gradient
        W = (U[:, 0:1, :] * tt) * V[None, :, 0, :] + sig * (U[:, 1:2, :] * V[None, :, 1, :])
        G = prob(*pr).grad(W.permute(2, 0, 1).contiguous()).permute(1, 2, 0)
        g = mm(mm(U.transpose(0, 1), G), V)  # Uᵀ∇ℓV
        g00, g01, g10, g11 = g.reshape(4, n).unbind(0)
        p = torch.sign(tt)
        log_tau = torch.log(tt.abs())
        tau = torch.exp(log_tau)
        dT = -N * g00 * torch.exp(K_top * log_tau)  # −P (Pᵀ g_tt Q · N τ^{2(N−1)/N}) Qᵀ, P² = Q = 1
        x, zz = p * g01, g10
        den = -torch.exp(two_over_n * log_tau) * torch.expm1(two_over_n * (lam - log_tau))
        a = p * (sig * x + tau * zz) / den
        cc = (tau * x + sig * zz) / den
        dlam = -N * torch.exp((1.0 - two_over_n) * lam) * g11
        out = torch.empty((layout.size, n), dtype=y.dtype, device=y.device)
        XA = out[:8].view(2, 2, 2, n)
        # X·A for X = U, V with A = [[0, v], [−v, 0]] (v = a, c): [[−x01 v, x00 v], [−x11 v, x10 v]]
        v = torch.stack([a, cc]).unsqueeze(1)  # (2, 1, n)
        XA[:, :, 0, :] = UV[:, :, 1, :] * (v * -1.0)
        XA[:, :, 1, :] = UV[:, :, 0, :] * v
        if damping:  # − ½γ X(XᵀX − I)
            XA -= half_damping * mm(UV, mm(UV.transpose(1, 2), UV) - eye)
        out[8] = dT
        out[9] = dlam
        out[10] = _TIME_SCALE
        return out.T.contiguous()

    return f


def from_factors(factors: Sequence[Tensor], t: Tensor | None = None) -> tuple[SpectralLayout, Tensor, Tensor]:
    """Spectral state of the end-to-end matrix of square factors; returns ``(layout, y, det_sign)``.

    U, V and the top singular values come from the SVD of ``W = W_N⋯W_1``; ``λ = Σ_j log|det W_j| −
    Σ_{r<d} log σ_r(W)``, so σ_min keeps the relative precision of the factors' determinants; the last column of
    V is oriented so that ``det U · det V = Π_j sign det W_j``.
    """
    W = end_to_end(factors)
    n, d, _ = W.shape
    layout = SpectralLayout(d)
    k = layout.k
    sign = torch.ones(n, dtype=W.dtype, device=W.device)
    logdet = torch.zeros(n, dtype=W.dtype, device=W.device)
    for Wj in factors:
        sj, lj = torch.linalg.slogdet(Wj)
        sign, logdet = sign * sj, logdet + lj
    U, S, Vh = torch.linalg.svd(W)
    V = Vh.transpose(-1, -2).clone()
    T = torch.diag_embed(S[:, :k])
    lam = logdet - torch.log(S[:, :k]).sum(-1)
    flip = torch.linalg.det(U) * torch.linalg.det(V) * sign < 0
    V[:, :, k] = torch.where(flip.unsqueeze(-1), -V[:, :, k], V[:, :, k])
    tau = (torch.zeros(n, dtype=W.dtype, device=W.device) if t is None else t) * _TIME_SCALE
    return layout, layout.pack(U, V, T, lam, tau), sign


# ------------------------------------------------------------------------------------------- stiff integrator

# RODAS4 (Hairer & Wanner, Solving ODEs II, §IV.7; coefficients of rodas.f, METH = 1): the 6-stage Rosenbrock
# method of order 4 with embedded order 3, L-stable and stiffly accurate (the last two stages reproduce the
# solution, so the error estimate is the last stage).  For autonomous ẏ = f(y):
#   (I/(γh) − J) k_i = f(y + Σ_{j<i} a_ij k_j) + Σ_{j<i} (c_ij/h) k_j,   y⁺ = y + Σ m_j k_j,   err = k_6.
# Why: late in the flow the spectral field is stiff (fast rate ≈ N σ_max^{2−2/N}, slow rate ≈ 1/t; ratio ~10⁷
# at ℓ = 1e-4), so explicit Dormand–Prince needs ~10⁶ stability-limited steps where this needs ~10³; an
# A-stable but not stiffly accurate pair (Kaps–Rentrop) suffers order reduction on this problem (tried: 20×
# more steps).  Order, embedded order and R(−∞) = 0 are checked in the tests.
_ROS_GAMMA = 0.25
_A5 = (1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950)
_ROS_A = (
    (),
    (1.544,),
    (0.9466785280815826, 0.2557011698983284),
    (3.314825187068521, 2.896124015972201, 0.9986419139977817),
    _A5,
    (*_A5, 1.0),
)
_ROS_C = (
    (),
    (-5.6688,),
    (-2.430093356833875, -0.2063599157091915),
    (-0.1073529058151375, -9.594562251023355, -20.47028614809616),
    (7.496443313967647, -10.24680431464352, -33.99990352819905, 11.70890893206160),
    (8.083246795921522, -7.981132988064893, -31.52159432874371, 16.31930543123136, -6.058818238834054),
)
_ROS_M = (*_A5, 1.0, 1.0)


def _fd_jacobian(f, y: Tensor, prm: tuple[Tensor, ...]) -> Tensor:
    """Central-difference Jacobian (n, P, P) in ONE batched call of f on 2P perturbed copies of every row.

    Steps ``δ_i = u^{1/3} max(|y_i|, 1)`` made exactly representable, so the truncation and rounding errors
    are both O(u^{2/3}) relative (≈ 4e-11).
    """
    Y, delta = _fd_points(y)
    pr = tuple(q.repeat_interleave(2 * y.shape[1], dim=0) for q in prm)
    return _fd_assemble(f(None, Y, *pr), delta)


def _f_and_jacobian(f, y: Tensor, prm: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
    """``f(y)`` and :func:`_fd_jacobian` at y in one call of f on the n + 2Pn rows (f is row-wise: the same
    numbers as two calls)."""
    n, P = y.shape
    Y, delta = _fd_points(y)
    pr = tuple(torch.cat([q, q.repeat_interleave(2 * P, dim=0)]) for q in prm)
    F = f(None, torch.cat([y, Y]), *pr)
    return F[:n], _fd_assemble(F[n:], delta)


def _fd_points(y: Tensor) -> tuple[Tensor, Tensor]:
    """The 2P perturbed copies ``y ± δ_i e_i`` of every row, (n·2P, P), and the steps δ (n, P)."""
    n, P = y.shape
    u = torch.finfo(y.dtype).eps
    delta = (u ** (1.0 / 3.0)) * y.abs().clamp(min=1.0)
    delta = (y + delta) - y  # exactly representable
    E = torch.diag_embed(delta)  # (n, P, P): row i perturbs component i
    return torch.cat([y.unsqueeze(1) + E, y.unsqueeze(1) - E], dim=1).reshape(n * 2 * P, P), delta


def _fd_assemble(F: Tensor, delta: Tensor) -> Tensor:
    """Central differences ``(f(y + δ_i e_i) − f(y − δ_i e_i)) / 2δ_i`` as the Jacobian (n, P, P)."""
    n, P = delta.shape
    F = F.reshape(n, 2, P, P)  # [n, ±, i (perturbed), component]
    return ((F[:, 0] - F[:, 1]) / (2.0 * delta.unsqueeze(-1))).transpose(-1, -2)


def _hermite(y0: Tensor, f0: Tensor, y1: Tensor, f1: Tensor, h: Tensor, theta: Tensor) -> Tensor:
    """Cubic Hermite interpolant through (y0, f0) and (y1, f1) over a step h at θ ∈ [0, 1] (error O(h⁴))."""
    th = theta.unsqueeze(-1)
    th2 = th * th
    th3 = th2 * th
    hh = h.unsqueeze(-1)
    th3x2, th2x3 = 2 * th3, 3 * th2  # each used twice
    return ((th3x2 - th2x3 + 1) * y0 + (th3 - 2 * th2 + th) * hh * f0 + (th2x3 - th3x2) * y1
            + (th3 - th2) * hh * f1)


def _inverse(M: Tensor) -> Tensor:
    """Inverse of a batch of small matrices (n, P, P) by Gauss–Jordan elimination with partial pivoting: in the C
    step library for float64 CPU batches (``native.gauss_jordan_inverse``), else in elementwise torch operations
    (:func:`_inverse_torch`); the same operations in the same order either way, so the same bits.

    Why not LAPACK (torch.linalg.inv_ex): batched LAPACK calls parallelize over the batch, and on a busy CPU the
    parallel region waits for descheduled workers (measured 8 ms vs 0.03 ms for 64 inverses of 11×11 on two
    loaded cores — CI's situation with two test workers); elementwise ops on tensors this small stay on one
    thread.  Row-wise arithmetic, so bit-identical per instance (also on CUDA, unlike batched cuSOLVER).
    Per column: the pivot row swapped in (the old row k written to row piv, a no-op copy where piv = k), scaled
    by its pivot, and subtracted from every other row (the pivot row's multiplier is 0).
    """
    from implreg.matrix.flow import native

    if native.serves(M) and M.shape[0]:  # the same operations in C (float64 CPU): one call, not 12 per column
        return native.gauss_jordan_inverse(M)
    return _inverse_torch(M)


def _inverse_torch(M: Tensor) -> Tensor:
    """:func:`_inverse` in elementwise torch operations (any dtype and device)."""
    n, P, _ = M.shape
    A = torch.cat([M, torch.eye(P, dtype=M.dtype, device=M.device).expand(n, P, P)], dim=-1)
    rows = torch.arange(n, device=M.device)
    off = _off_diagonal(P, M.device)
    for k in range(P):
        rel = A[:, k:, k].abs().argmax(-1)
        if bool(rel.any()):  # some pivot lies below row k: swap (where piv = k, top is row k itself)
            piv = rel + k
            top, best = A[:, k, :].clone(), A[rows, piv, :]
            A[rows, piv, :] = top
        else:
            best = A[:, k, :]
        prow = best / best[:, k : k + 1]
        A[:, k, :] = prow
        factor = torch.where(off[k], A[:, :, k], 0.0)
        A -= factor.unsqueeze(-1) * prow.unsqueeze(-2)
    return A[:, :, P:]


_OFF_DIAGONAL: dict = {}


def _off_diagonal(P: int, device: torch.device) -> Tensor:
    """(P, P) bool, row k false at k: the rows that column k's elimination changes."""
    key = (P, str(device))
    if key not in _OFF_DIAGONAL:
        with torch.inference_mode(False):  # cached: an ordinary tensor even when first made inside rosenbrock
            _OFF_DIAGONAL[key] = ~torch.eye(P, dtype=torch.bool, device=device)
    return _OFF_DIAGONAL[key]


def _rodas_rows(dtype: torch.dtype, device: torch.device) -> list[Tensor]:
    """Coefficient columns of :func:`rodas_step`'s accumulator: for stage j, the multipliers of K_j in the rows
    2j … 10, shape (11 − 2j, 1, 1).  Row 2(i−1) sums y + Σ_j a_ij K_j (stage i's argument), row 2(i−1)+1 sums
    Σ_j c_ij K_j (stage i's right-hand side), row 10 sums y + Σ_j m_j K_j (the new state)."""
    key = (dtype, str(device))
    if key not in _RODAS_ROWS:
        C = [[0.0] * 6 for _ in range(11)]
        for i in range(1, 6):
            for j, a in enumerate(_ROS_A[i]):
                C[2 * (i - 1)][j] = a
            for j, c in enumerate(_ROS_C[i]):
                C[2 * (i - 1) + 1][j] = c
        for j, m in enumerate(_ROS_M):
            C[10][j] = m
        with torch.inference_mode(False):  # cached: an ordinary tensor even when first made inside rosenbrock
            Ct = torch.tensor(C, dtype=dtype, device=device)
            _RODAS_ROWS[key] = [Ct[2 * j :, j].reshape(-1, 1, 1).clone() for j in range(6)]
    return _RODAS_ROWS[key]


_RODAS_ROWS: dict = {}


def rodas_step(f, y: Tensor, fy: Tensor, J: Tensor, h: Tensor, prm: tuple[Tensor, ...] = ()) -> tuple[Tensor, Tensor]:
    """One RODAS4 step of size h (n,) from y (n, P) with ``fy = f(y)`` and Jacobian J (n, P, P).

    Returns ``(y⁺, err)`` with err = k_6 the embedded (order 3) error estimate.  One explicit inverse of
    ``I/(γh) − J`` per step (:func:`_inverse`), then six matrix-vector products; the matrix is well conditioned
    (cond ≲ 1 + γh‖J‖), and a singular one gives non-finite stages, hence a rejected step.

    The sums ``y + Σ_{j<i} a_ij K_j``, ``Σ_{j<i} c_ij K_j`` and ``y + Σ_j m_j K_j`` are the rows of one accumulator
    (:func:`_rodas_rows`) that takes each new stage in one multiply and one add, in the order j = 0, 1, …, as the
    term-by-term sums do (the c-sums start at −0, the identity of addition, so their first term is kept exactly).
    """
    n, P = y.shape
    eye = torch.eye(P, dtype=y.dtype, device=y.device)
    Minv = _inverse(eye / (_ROS_GAMMA * h)[:, None, None] - J)
    ih = (1.0 / h).unsqueeze(-1)
    coef = _rodas_rows(y.dtype, y.device)
    acc = torch.empty((11, n, P), dtype=y.dtype, device=y.device)
    acc[0::2] = y
    acc[1::2] = -0.0
    k_j = torch.bmm(Minv, fy.unsqueeze(-1)).squeeze(-1)
    for j in range(1, 6):
        acc[2 * (j - 1) :] += coef[j - 1] * k_j
        fi = f(None, acc[2 * (j - 1)], *prm)
        k_j = torch.bmm(Minv, (fi + ih * acc[2 * (j - 1) + 1]).unsqueeze(-1)).squeeze(-1)
    acc[10] += coef[5][0] * k_j
    return acc[10], k_j


@torch.no_grad()
def rosenbrock(
    f, y0: Tensor, *, t_max: float | Tensor, rtol: float = 1e-9, atol: float = 1e-12, event=None, levels=None,
    n_levels: int = 0, guard=None, params: Sequence[Tensor] = (), max_steps: int = 100_000,
    divergence_limit: float = 1e100, bisection_iters: int = 60,
) -> IntegrationResult:
    """Batched adaptive Rosenbrock integration (RODAS4, see above) of a stiff autonomous ``ẏ = f(y)``.

    Same contract as :func:`implreg.matrix.flow.integrate` (per-instance step control, events located by bisection,
    first crossings of ``levels``, ``guard`` → UNRESOLVED, batch compaction, row-wise arithmetic so results are
    bit-identical alone or in any batch), without ``save_at`` (use a time component and a level).  The Jacobian
    is a central difference (:func:`_fd_jacobian`) at every accepted state.  Crossings are bracketed on the
    cubic Hermite interpolant and the state there is a fresh RODAS step from the step's start (see crossing()).
    Step control: RMS of ``err_i/(atol + rtol·max(|y_i|, |y⁺_i|))``, ``h ← h·clip(0.9·err^{−1/4}, 0.2, 5)``.
    Error estimate: ``Σ_steps (max_i |err_i| + u·max_i |y_i|)``, as in ``integrate``.

    The integration runs under ``torch.inference_mode`` (fewer dispatch layers per op, the same kernels and bits);
    its results are copied out of it, so they are ordinary tensors.
    """
    with torch.inference_mode():
        out = _rosenbrock(f, y0, t_max=t_max, rtol=rtol, atol=atol, event=event, levels=levels, n_levels=n_levels,
                          guard=guard, params=params, max_steps=max_steps, divergence_limit=divergence_limit,
                          bisection_iters=bisection_iters)
    z = {"dtype": y0.dtype, "device": y0.device}
    B, P = y0.shape
    return IntegrationResult(
        **{k: v.clone() for k, v in out.items()},
        save_t=torch.zeros(0, **z), save_y=torch.zeros(B, 0, P, **z), save_error=torch.zeros(B, 0, **z),
        meta={"method": "RODAS4", "rtol": rtol, "atol": atol, "dtype": str(y0.dtype), "device": str(y0.device)},
    )


def _rosenbrock(
    f, y0: Tensor, *, t_max: float | Tensor, rtol: float, atol: float, event, levels, n_levels: int, guard,
    params: Sequence[Tensor], max_steps: int, divergence_limit: float, bisection_iters: int,
) -> dict[str, Tensor]:
    """:func:`rosenbrock`'s integration (its outputs by name)."""
    check_state_and_tolerances(y0, rtol, atol, max_steps)
    B, P = y0.shape
    dtype, device = y0.dtype, y0.device
    z = {"dtype": dtype, "device": device}
    u = torch.finfo(dtype).eps
    nan = math.nan
    L = int(n_levels)
    tmax = torch.as_tensor(t_max, **z).expand(B).clone()
    if torch.isnan(tmax).any() or (tmax < 0).any():
        raise InvalidInputError(f"t_max must be ≥ 0, got {t_max}")
    if torch.isinf(tmax).any() and event is None:
        raise InvalidInputError("t_max = inf needs a stopping event (e.g. a loss target)")
    out_t, out_y = torch.zeros(B, **z), y0.clone()
    out_status = torch.zeros(B, dtype=torch.int64, device=device)
    out_err = torch.zeros(B, **z)
    out_steps = torch.zeros(B, dtype=torch.int64, device=device)
    out_rej = torch.zeros(B, dtype=torch.int64, device=device)
    level_t = torch.full((B, L), nan, **z)
    level_y = torch.full((B, L, P), nan, **z)
    level_err = torch.full((B, L), nan, **z)
    unresolved_t = torch.full((B,), nan, **z)
    lev_done = torch.zeros(B, L, dtype=torch.bool, device=device)

    idx = torch.arange(B, device=device)
    y, t, tm = y0.clone(), torch.zeros(B, **z), tmax
    err_acc = torch.zeros(B, **z)
    steps = torch.zeros(B, dtype=torch.int64, device=device)
    rej = torch.zeros(B, dtype=torch.int64, device=device)
    attempts = torch.zeros(B, dtype=torch.int64, device=device)
    prm = tuple(torch.as_tensor(q, device=device) for q in params)
    if any(q.shape[0] != B for q in prm):
        raise InvalidInputError(f"every entry of params must have batch {B} first")
    fy = f(t, y, *prm)
    if levels is not None:
        hit = levels(y, *prm) <= 0
        level_t[hit] = 0.0
        level_y[hit] = y.unsqueeze(1).expand(B, L, P)[hit]
        level_err[hit] = 0.0
        lev_done = hit.clone()
    sc = atol + rtol * y.abs()
    d0 = torch.sqrt(((y / sc) ** 2).mean(-1))
    d1 = torch.sqrt(((fy / sc) ** 2).mean(-1))
    h = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 1e-3 * d0 / d1.clamp(min=1e-300))
    done0 = tm <= 0
    if event is not None:
        fired0 = event(y, *prm) <= 0
        done0 = done0 | fired0
        out_status[done0] = torch.where(fired0, int(Status.REACHED_EVENT), int(Status.REACHED_T_MAX))[done0]
    else:
        out_status[done0] = int(Status.REACHED_T_MAX)
    keep = ~done0
    idx, y, t, tm, h, err_acc, steps, rej, attempts, fy = (
        v[keep] for v in (idx, y, t, tm, h, err_acc, steps, rej, attempts, fy))
    prm = tuple(q[keep] for q in prm)
    J = _fd_jacobian(f, y, prm) if idx.numel() else torch.zeros(0, P, P, **z)

    def step_of(rows: Tensor, hs: Tensor, y_new: Tensor, f_new: Tensor) -> tuple[Tensor, ...]:
        """What :func:`crossing` needs of the attempted step of ``rows`` (copies): y, f(y), y⁺, f(y⁺), h, J, and the
        accumulated error before and after the step."""
        return y[rows], fy[rows], y_new[rows], f_new[rows], hs[rows], J[rows], err_acc[rows], acc_err[rows]

    def crossing(fn, step: tuple[Tensor, ...], pr: tuple) -> tuple[Tensor, ...]:
        """First crossing of fn ≤ 0 inside the ``step`` of some rows (fn(y) > 0 ≥ fn(y⁺)); row-wise, so level
        crossings, which do not change the integration, are located all at once after it (one batch instead of one
        per step that crosses a level, the same numbers).  θ is first estimated by
        bisection of the Hermite interpolant, then refined on states made by fresh RODAS steps of size θh from
        the step's start (so the reported state has the method's accuracy): g(θ) = fn(step(θh)) is kept
        bracketed (g(0) > 0 ≥ g(1), the step's end) and each iterate is a Newton step (interpolant slope) when it
        stays inside the bracket, else a regula-falsi step, else the bracket's midpoint.  (Newton alone is not
        enough: with the long steps of loose tolerances the interpolant's slope can be poor, and a failed
        refinement would fall back to the step's end, a state well past the level.)  The reported state is on
        the fn ≤ 0 side (the earliest such θ tried).  Returns (θ, y(θ), its error)."""
        ya, fa, yb, fb, hb, Jr, ea, eb = step
        lo, hi = torch.zeros_like(hb), torch.ones_like(hb)
        for _ in range(bisection_iters):
            mid = 0.5 * (lo + hi)
            below = fn(_hermite(ya, fa, yb, fb, hb, mid), *pr) <= 0
            hi = torch.where(below, mid, hi)
            lo = torch.where(below, lo, mid)
        theta = hi
        dth = 1e-6
        slope = (fn(_hermite(ya, fa, yb, fb, hb, (theta + dth).clamp(max=1.0)), *pr)
                 - fn(_hermite(ya, fa, yb, fb, hb, (theta - dth).clamp(min=0.0)), *pr)) / (
                     (theta + dth).clamp(max=1.0) - (theta - dth).clamp(min=0.0))
        best_t, best_y, best_e = torch.ones_like(hb), yb, torch.zeros_like(hb)
        b_lo, b_hi = torch.zeros_like(hb), torch.ones_like(hb)  # bracket on the fresh-step function
        g_lo, g_hi = fn(ya, *pr), fn(yb, *pr)
        for _ in range(12):
            y_th, e_th = rodas_step(f, ya, fa, Jr, theta * hb, pr)
            g = fn(y_th, *pr)
            below = g <= 0
            take = below & (theta < best_t)
            best_t = torch.where(take, theta, best_t)
            best_y = torch.where(take.unsqueeze(-1), y_th, best_y)
            best_e = torch.where(take, e_th.abs().amax(-1), best_e)
            up_hi = below & (theta < b_hi)
            up_lo = (~below) & (theta > b_lo)
            b_hi, g_hi = torch.where(up_hi, theta, b_hi), torch.where(up_hi, g, g_hi)
            b_lo, g_lo = torch.where(up_lo, theta, b_lo), torch.where(up_lo, g, g_lo)
            # aim just past the root when still above it, just short of it when below
            newton = theta - g / slope * torch.where(g > 0, 1.0 + 1e-6, 1.0 - 1e-6)
            secant = b_lo + g_lo * (b_hi - b_lo) / (g_lo - g_hi)
            inside_n = torch.isfinite(newton) & (newton > b_lo) & (newton < b_hi)
            inside_s = torch.isfinite(secant) & (secant > b_lo) & (secant < b_hi)
            theta_next = torch.where(inside_n, newton, torch.where(inside_s, secant, 0.5 * (b_lo + b_hi)))
            # θ repeats: the next iterate would evaluate the same state, update nothing (every update above needs
            # a strict improvement on what this θ already set) and give the same θ again — so would all later ones
            if bool((theta_next == theta).all()):
                break
            theta = theta_next
        e_out = ea + torch.where(best_t < 1, best_e, eb - ea) \
            + u * best_y.abs().amax(-1)
        return best_t, best_y, e_out

    pending: list = []  # level crossings to locate: (global rows, level columns, t, step_of(...), params)
    while idx.numel():
        last = h >= tm - t
        hs = torch.where(last, tm - t, h)
        y_new, e_loc = rodas_step(f, y, fy, J, hs, prm)
        scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
        err = torch.sqrt(((e_loc / scale) ** 2).mean(-1))
        finite = torch.isfinite(err) & torch.isfinite(y_new).all(-1)
        accept = finite & (err <= 1.0)
        attempts = attempts + 1
        fac = torch.where(finite, (0.9 * torch.exp(-0.25 * torch.log(err.clamp(min=1e-10)))).clamp(0.2, 5.0),
                          torch.full_like(err, 0.25))
        fac = torch.where(accept, fac, fac.clamp(max=1.0))
        h_next = hs * fac
        t_new = torch.where(last, tm, t + hs)
        status = torch.zeros_like(steps)
        status = torch.where((~accept) & (h_next <= 16 * u * t.abs().clamp(min=1.0)), int(Status.STEP_TOO_SMALL),
                             status)
        acc_err = err_acc + e_loc.abs().amax(-1) + u * y_new.abs().amax(-1)
        n_acc = int(accept.sum())
        if n_acc:
            ai = accept.nonzero().flatten()
            if n_acc == accept.shape[0]:  # every row accepted (the usual case): the rows themselves, not copies
                def pick(v: Tensor) -> Tensor:
                    return v
                pa = prm
                f_new, J_acc = _f_and_jacobian(f, y_new, pa)
            else:
                def pick(v: Tensor, ai: Tensor = ai) -> Tensor:
                    return v[ai]
                pa = tuple(q[ai] for q in prm)
                f_acc, J_acc = _f_and_jacobian(f, y_new[ai], pa)
                f_new = fy.clone()
                f_new[ai] = f_acc
            ya = pick(y_new)
            if levels is not None:
                fresh = (levels(ya, *pa) <= 0) & ~lev_done[pick(idx)]
                if fresh.any():
                    r, c = fresh.nonzero(as_tuple=True)
                    rows = ai[r]
                    pending.append((idx[rows], c, t[rows], step_of(rows, hs, y_new, f_new),
                                    tuple(q[rows] for q in prm)))
                    lev_done[idx[rows], c] = True
            if event is not None:
                fired = event(ya, *pa) <= 0
                if fired.any():
                    rows = ai[fired]
                    pr = tuple(q[rows] for q in prm)
                    theta, y_th, e_th = crossing(event, step_of(rows, hs, y_new, f_new), pr)
                    y_new[rows] = y_th
                    t_new[rows] = t[rows] + theta * hs[rows]
                    acc_err[rows] = e_th
                    status[rows] = int(Status.REACHED_EVENT)
                    ya = pick(y_new)
            big = ~(ya.abs().amax(-1) < divergence_limit)
            status[ai[big]] = int(Status.DIVERGED)
            status = torch.where(accept & last & (status == 0), int(Status.REACHED_T_MAX), status)
            if guard is not None:
                bad = guard(ya, pick(acc_err), *pa) & (pick(status) == 0)
                if bad.any():
                    rows = ai[bad]
                    status[rows] = int(Status.UNRESOLVED)
                    unresolved_t[idx[rows]] = t_new[rows]
            # the new Jacobian where the state moved (rows that stop here are dropped below)
            if n_acc == accept.shape[0]:
                J = J_acc
            else:
                J[ai] = J_acc
        else:
            f_new = fy
        y = torch.where(accept.unsqueeze(-1), y_new, y)
        t = torch.where(accept, t_new, t)
        fy = torch.where(accept.unsqueeze(-1), f_new, fy)
        err_acc = torch.where(accept, acc_err, err_acc)
        steps = steps + accept.to(steps.dtype)
        rej = rej + (~accept).to(rej.dtype)
        h = h_next
        status = torch.where((status == 0) & (attempts >= max_steps), int(Status.MAX_STEPS), status)
        fin = status != 0
        if fin.any():
            fi = fin.nonzero().flatten()
            gi = idx[fi]
            out_t[gi], out_y[gi], out_status[gi] = t[fi], y[fi], status[fi]
            out_err[gi], out_steps[gi], out_rej[gi] = err_acc[fi], steps[fi], rej[fi]
            keep = (~fin).nonzero().flatten()
            idx, y, t, tm, h, err_acc, steps, rej, attempts, fy, J, accept = (
                v[keep] for v in (idx, y, t, tm, h, err_acc, steps, rej, attempts, fy, J, accept))
            prm = tuple(q[keep] for q in prm)

    if pending:  # the level crossings met during the integration, located together
        gi, c, t0, *parts = (torch.cat(v) for v in zip(*((a, b, d, *st) for a, b, d, st, _ in pending), strict=True))
        pr = tuple(torch.cat(v) for v in zip(*(p for *_, p in pending), strict=True))

        def g_col(yy: Tensor, *pr: Tensor) -> Tensor:
            return levels(yy, *pr).gather(-1, c.unsqueeze(-1)).squeeze(-1)

        theta, y_th, e_th = crossing(g_col, tuple(parts), pr)
        level_t[gi, c] = t0 + theta * parts[4]
        level_y[gi, c] = y_th
        level_err[gi, c] = e_th

    return {"t": out_t, "y": out_y, "status": out_status, "error": out_err, "n_steps": out_steps,
            "n_rejected": out_rej, "level_t": level_t, "level_y": level_y, "level_error": level_err,
            "unresolved_t": unresolved_t}


#: The explicit allowance of method "auto", in RODAS4 steps' worth of field evaluations per instance.  A RODAS4 step
#: costs 2P + 6 field evaluations (the finite-difference Jacobian and five stages; P = 11 at d = 2, 43 at d = 4), a
#: Dormand–Prince step 6, so an instance gets 500·(2P + 6)/6 Dormand–Prince attempts (2,333 at d = 2, 7,666 at
#: d = 4) before it continues with RODAS4.  Where the field is not stiff enough to matter, Dormand–Prince finishes
#: inside it and is the cheaper method (measured, depth 2 to ℓ = 3e-3: the 4×4 Razin–Cohen embedding, 170
#: instances, t ≈ 385, ≤ 2,900 steps: 21 s against 175 s with RODAS4, level times equal to 2e-12 relative; the
#: 2×2 problem ≤ 2,750 steps).  Where it is stiff (the 2×2 problem to ℓ = 1e-3 at t ≈ 1,900: 12,100 Dormand–Prince
#: steps against 3,570 RODAS4 ones) at most 500 RODAS4 steps' worth is spent first.  Per instance, never per batch,
#: so the choice (hence every bit) is the same alone or in any batch.
EXPLICIT_ALLOWANCE = 500


def explicit_steps_for(P: int) -> int:
    """Dormand–Prince attempts per instance before method "auto" switches to RODAS4 (EXPLICIT_ALLOWANCE)."""
    return EXPLICIT_ALLOWANCE * (2 * P + 6) // 6


def explicit_then_stiff(f, y0: Tensor, *, t_max: float | Tensor, max_steps: int = 100_000,
                        explicit_steps: int | None = None, levels=None, n_levels: int = 0,
                        params: Sequence[Tensor] = (), **kw) -> IntegrationResult:
    """Dormand–Prince (:func:`implreg.matrix.flow.integrate`), then RODAS4 (:func:`rosenbrock`) from the last
    accepted state of the instances that used ``explicit_steps`` attempts (default :func:`explicit_steps_for`),
    merged as one integration: times, levels and the unresolved time continue from that state, and the error
    estimates add (each part's sum of local errors; the second starts from the first's state).  Both parts are
    error-controlled to the same tolerances; the switch only changes the cost.  Row-wise (the allowance is per
    instance), so bit-identical alone or in any batch.  ``max_steps`` applies to each part; no ``save_at`` (use a
    time component and a level)."""
    if "save_at" in kw:
        raise InvalidInputError("explicit_then_stiff records levels, not save_at: use a time component and a level")
    if explicit_steps is None:
        explicit_steps = explicit_steps_for(y0.shape[-1])
    first = integrate(f, y0, t_max=t_max, max_steps=min(explicit_steps, max_steps), levels=levels,
                      n_levels=n_levels, params=params, **kw)
    stiff = first.status == int(Status.MAX_STEPS)
    if explicit_steps >= max_steps or not bool(stiff.any()):
        return first
    si = stiff.nonzero().flatten()
    t0 = first.t[si]
    tm = torch.as_tensor(t_max, dtype=y0.dtype, device=y0.device).expand(y0.shape[0])[si] - t0
    guard = kw.pop("guard", None)
    if guard is not None:
        # the guard judges the error accumulated since the phase began: the first part's error rides along as the
        # last parameter (compacted with the rows), and the other functions never see it
        def strip(fn):
            return None if fn is None else (lambda *a: fn(*a[:-1]))

        f, levels, kw["event"] = strip(f), strip(levels), strip(kw.get("event"))
        kw["guard"] = lambda y, err, *pr: guard(y, err + pr[-1], *pr[:-1])
        params = [*params, first.error]
    second = rosenbrock(f, first.y[si], t_max=tm, max_steps=max_steps, levels=levels, n_levels=n_levels,
                        params=[q[si] for q in params], **kw)
    out = {k: getattr(first, k).clone() for k in ("t", "y", "status", "error", "n_steps", "n_rejected", "level_t",
                                                   "level_y", "level_error", "unresolved_t", "entry_error",
                                                   "level_entry_error")}
    ee0 = first.entry_error[si]
    out["t"][si] = t0 + second.t
    out["y"][si] = second.y
    out["status"][si] = second.status
    out["entry_error"][si] = ee0 + second.entry_error
    out["error"][si] = out["entry_error"][si].amax(-1)
    out["n_steps"][si] += second.n_steps
    out["n_rejected"][si] += second.n_rejected
    out["unresolved_t"][si] = t0 + second.unresolved_t
    if n_levels:
        # levels crossed before the switch keep their record (the second part reports them at its start)
        fresh = torch.isnan(first.level_t[si]) & torch.isfinite(second.level_t)
        out["level_t"][si] = torch.where(fresh, t0.unsqueeze(-1) + second.level_t, first.level_t[si])
        out["level_y"][si] = torch.where(fresh.unsqueeze(-1), second.level_y, first.level_y[si])
        lee = ee0.unsqueeze(1) + second.level_entry_error
        out["level_entry_error"][si] = torch.where(fresh.unsqueeze(-1), lee, first.level_entry_error[si])
        out["level_error"][si] = torch.where(fresh, lee.amax(-1), first.level_error[si])
    meta = {**first.meta, "method": "DOPRI5, then RODAS4 past the explicit allowance",
            "explicit_steps": explicit_steps, "switched_to_stiff": int(si.numel())}
    return IntegrationResult(**out, save_t=first.save_t, save_y=first.save_y, save_error=first.save_error,
                             save_entry_error=first.save_entry_error, meta=meta)


# ------------------------------------------------------------------------------------------- spectra and errors


def _finite_rows(x: Tensor) -> Tensor:
    return torch.isfinite(x.flatten(1)).all(-1)


def _factor_spectrum(factors: Factors, err: Tensor) -> dict[str, Tensor]:
    """log σ (desc), log|det|, det sign, and error bounds for end-to-end matrices given by factors.

    ``err`` bounds each factor entry's error.  ‖δW‖_2 ≤ Σ_j Π_{i≠j}‖W_i‖_2 · d·err (first order);
    |δ log|det W_j|| ≤ ‖W_j⁻¹‖_F (d·err + u‖W_j‖_F) (first order plus LU rounding); the smallest log σ is
    ``log|det W| − Σ_{r<d} log σ_r`` and inherits the det's error plus the top σ's relative errors.
    Rows with non-finite entries come back NaN.
    """
    W = end_to_end(factors)
    n, d, _ = W.shape
    z = {"dtype": W.dtype, "device": W.device}
    u = torch.finfo(W.dtype).eps
    out = {key: torch.full((n,), math.nan, **z)
           for key in ("log_abs_det", "det_sign", "error", "log_abs_det_error", "log_sigma_min_error")}
    out["log_sigma"] = torch.full((n, d), math.nan, **z)
    ok = _finite_rows(W) & torch.isfinite(err)
    for Wj in factors:
        ok = ok & _finite_rows(Wj)
    if not ok.any():
        return out
    fs = [Wj[ok] for Wj in factors]
    Wo, e = W[ok], err[ok]
    sv = torch.linalg.svdvals(Wo)
    sign = torch.ones_like(e)
    logdet = torch.zeros_like(e)
    logdet_err = torch.zeros_like(e)
    norms = []
    for Wj in fs:
        sj, lj = torch.linalg.slogdet(Wj)
        sign, logdet = sign * sj, logdet + lj
        svj = torch.linalg.svdvals(Wj)
        norms.append(svj[:, 0])
        inv_f = torch.sqrt((1.0 / (svj * svj)).sum(-1))
        logdet_err = logdet_err + inv_f * (d * e + u * torch.linalg.matrix_norm(Wj))
    werr = torch.zeros_like(e)
    for j in range(len(fs)):
        prod = torch.ones_like(e)
        for i, nm in enumerate(norms):
            if i != j:
                prod = prod * nm
        werr = werr + prod * d * e
    werr = werr + d * u * sv[:, 0]  # rounding of the product itself
    log_sv = torch.log(sv)
    top_rel = (werr + d * u * sv[:, 0]).unsqueeze(-1) / sv[:, :-1]
    log_sigma = torch.cat([log_sv[:, :-1], (logdet - log_sv[:, :-1].sum(-1)).unsqueeze(-1)], dim=-1)
    out["log_sigma"][ok] = log_sigma
    out["log_abs_det"][ok] = logdet
    out["det_sign"][ok] = sign
    out["error"][ok] = werr
    out["log_abs_det_error"][ok] = logdet_err
    out["log_sigma_min_error"][ok] = logdet_err + top_rel.sum(-1)
    return out


def _spectral_spectrum(layout: SpectralLayout, y: Tensor, err: Tensor, base: dict[str, Tensor]) -> dict[str, Tensor]:
    """log σ, log|det|, det sign and error bounds for spectral states y (n, P) with integrator error ``err``.

    ``base`` holds the errors carried over from the switch (``error``, ``log_abs_det_error``,
    ``log_sigma_min_error``), added without amplification (the integrator's convention).  The state error is
    ``e = max(err, ½ drift)``; then ‖δW‖_2 ≤ e (2d‖W‖_2 + k + σ), |δλ| ≤ e, |δ log|det T|| ≤ ‖T⁻¹‖_F·k·e,
    |δ log|det U|| ≤ ‖U⁻¹‖_F·d·e.
    """
    n = y.shape[0]
    d, k = layout.d, layout.k
    z = {"dtype": y.dtype, "device": y.device}
    out = {key: torch.full((n,), math.nan, **z)
           for key in ("log_abs_det", "det_sign", "error", "log_abs_det_error", "log_sigma_min_error", "drift")}
    out["log_sigma"] = torch.full((n, d), math.nan, **z)
    ok = _finite_rows(y) & torch.isfinite(err)
    if not ok.any():
        return out
    yo, eo = y[ok], err[ok]
    U, V, T, lam, _ = layout.unpack(yo)
    eye = torch.eye(d, **z)
    drift = torch.maximum(torch.linalg.matrix_norm(U.transpose(-1, -2) @ U - eye),
                          torch.linalg.matrix_norm(V.transpose(-1, -2) @ V - eye))
    e = torch.maximum(eo, 0.5 * drift)
    su, lu = torch.linalg.slogdet(U)
    sv, lv = torch.linalg.slogdet(V)
    st, lt = torch.linalg.slogdet(T)
    tau = torch.linalg.svdvals(T)
    sig = torch.exp(lam)
    w2 = torch.maximum(tau[:, 0], sig)
    inv_t = torch.sqrt((1.0 / (tau * tau)).sum(-1))
    out["log_sigma"][ok] = torch.cat([torch.log(tau), lam.unsqueeze(-1)], dim=-1)
    out["log_abs_det"][ok] = lu + lv + lt + lam
    out["det_sign"][ok] = su * sv * st
    out["drift"][ok] = drift
    out["error"][ok] = base["error"][ok] + e * (2 * d * w2 + k + sig)
    out["log_abs_det_error"][ok] = base["log_abs_det_error"][ok] + e * (1 + inv_t * k + 2 * math.sqrt(d) * d)
    out["log_sigma_min_error"][ok] = base["log_sigma_min_error"][ok] + e
    return out


# ------------------------------------------------------------------------------------------- solution


_UNRESOLVED_REASONS = {
    "uncertified": "the det sign could not be certified at the switch to spectral coordinates "
    "(|det W_j| was already within the det guard's resolution)",
    "gap": "the smallest singular value came within the gap limit of the others: spectral coordinates are "
    "ill-conditioned there",
    "drift": "U or V drifted from orthogonality beyond the drift limit",
    "core": "a second singular value approached float64 resolution (the top core T lost its relative precision)",
}


@dataclass
class BalancedFlowSolution:
    """Hybrid (factor → spectral) balanced gradient-flow solution for a batch; reads like a FlowSolution.

    Times, states at loss levels and save times, statuses and error estimates are per instance (batch first).
    ``error`` bounds the absolute error of the end-to-end entries; log σ and log|det| carry their own bounds.
    Spectral quantities of instances that never switched are computed from their factors.
    """

    problem: Problem
    depth: int
    t: Tensor  # (B,)
    status: Tensor  # (B,) int64 Status codes
    error: Tensor  # (B,) absolute error bound of the end-to-end entries (first order, unamplified)
    end_to_end: Tensor  # (B, d, d)
    log_sigma: Tensor  # (B, d) descending
    log_abs_det: Tensor  # (B,)
    log_abs_det_error: Tensor  # (B,)
    log_sigma_min_error: Tensor  # (B,) bound on |δ log σ_min|
    det_sign: Tensor  # (B,) ±1
    n_steps_factor: Tensor  # (B,) accepted steps in factor coordinates
    n_steps_spectral: Tensor  # (B,) accepted steps in spectral coordinates
    n_rejected: Tensor  # (B,)
    phase_switch_t: Tensor  # (B,) time of the switch to spectral coordinates (NaN: never switched)
    switch_reason: list[str]  # per instance: "", "ratio" or "det"
    switch_balancedness_defect: Tensor  # (B,) max_j ‖W_{j+1}ᵀW_{j+1} − W_jW_jᵀ‖_F at the switch (NaN: no switch)
    unresolved_reason: list[str]  # per instance: "" or a key of the reasons above, or "guard" (factor phase)
    loss_levels: Tensor  # (L,)
    level_t: Tensor  # (B, L)
    level_end_to_end: Tensor  # (B, L, d, d)
    level_error: Tensor  # (B, L)
    level_log_sigma: Tensor  # (B, L, d)
    level_log_abs_det: Tensor  # (B, L)
    level_det_sign: Tensor  # (B, L)
    save_t: Tensor  # (T,)
    save_end_to_end: Tensor  # (B, T, d, d)
    save_error: Tensor  # (B, T)
    save_log_sigma: Tensor  # (B, T, d)
    save_det_sign: Tensor  # (B, T)
    spectral_state: Tensor  # (B, P) final spectral state (NaN rows: never switched)
    layout: SpectralLayout
    drift: Tensor  # (B,) ‖UᵀU − I‖_F ∨ ‖VᵀV − I‖_F at the final state (NaN: never switched)
    meta: dict = field(default_factory=dict)
    init_factors: tuple | None = None  # the balanced factors it started from (the certified view's reference init)
    loss_target: float | None = None
    t_max: Tensor | None = None  # (B,)
    # per-entry two-tolerance errors (B, d, d), (B, L, d, d), (B, T, d, d); None until formed
    entry_error: Tensor | None = None
    level_entry_error: Tensor | None = None
    save_entry_error: Tensor | None = None
    _view: object = field(default=None, init=False, repr=False, compare=False)

    @property
    def saved(self) -> Tensor:
        """(B, T) whether each save was made (False for save times after an instance stopped, whose states are NaN)."""
        return torch.isfinite(self.save_end_to_end).flatten(-2).all(-1)

    @property
    def certified(self):
        """End-to-end matrices, losses and times as certified values whose leaves escalate to the mpmath
        reference (balanced factors at its precision) by themselves; see ``implreg.matrix.flow.certified``.

        The leaves' errors are the two-tolerance errors ``error + error_loose + |W − W_loose|`` per entry
        (:meth:`with_two_tolerance_error`), never the first-order unamplified ``error`` alone, which misses the
        flow's amplification of earlier errors (as the factor solver's summed estimate does across a saddle
        escape).  Making the view costs one loose solve (``TWO_TOL_FACTOR``× the tolerances)."""
        if self._view is None:
            self._view = self.certified_view()
        return self._view

    def certified_view(self, **kw):
        """A fresh certified view; ``kw`` as :func:`implreg.matrix.flow.certified.certified_balanced_flow`."""
        from implreg.matrix.flow.certified import certified_balanced_flow

        return certified_balanced_flow(self.with_two_tolerance_error(), **kw)

    def with_two_tolerance_error(self) -> BalancedFlowSolution:
        """This solution with per-entry two-tolerance errors ``e + e_loose + |W − W_loose|`` (as
        ``flow.gradient_flow.two_tolerance_error``): ``solve_balanced`` re-run at ``TWO_TOL_FACTOR``×
        the tolerances from the same balanced factors, t_max, loss target, levels and saves (other settings from
        ``meta``).  +∞ where the two runs are not comparable (a different final status or time, a state the
        loose run never reached)."""
        if self.entry_error is not None:
            return self
        if self.init_factors is None:
            raise InvalidInputError("this BalancedFlowSolution does not carry its initial factors: its "
                                    "two-tolerance error (and certified view) cannot be formed")
        m = self.meta
        W = self.end_to_end
        loose = solve_balanced(
            self.problem, self.init_factors, self.depth, t_max=self.t_max, loss_target=self.loss_target,
            loss_levels=self.loss_levels.tolist(), save_at=self.save_t, rtol=TWO_TOL_FACTOR * m["rtol"],
            atol=TWO_TOL_FACTOR * m["atol"], max_steps=m.get("max_steps", 200_000), switch_ratio=m["switch_ratio"],
            switch_safety=m["switch_safety"], gap_limit=m["gap_limit"], drift_limit=m["drift_limit"],
            damping=m["damping"], balance_rtol=m.get("balance_rtol", 1e-12), method=m.get("method", "rosenbrock"),
            dtype=W.dtype, device=W.device)

        def entries(e: Tensor, el: Tensor, Wt: Tensor, Wl: Tensor) -> Tensor:
            """e + e_loose (…) broadcast over the entries, plus |W − W_loose| (as ``two_tolerance_error``)."""
            y, yl = Wt.flatten(-2), Wl.flatten(-2)
            both = (e + torch.nan_to_num(el, nan=0.0)).unsqueeze(-1).expand_as(y)
            return two_tolerance_combine_entries(both, y, yl).reshape(Wt.shape)

        same = (self.status == loose.status) & ((self.t == loose.t) | (self.status == int(Status.REACHED_EVENT)))
        final = torch.where((same & self.ok).reshape(-1, 1, 1),
                            entries(self.error, loose.error, W, loose.end_to_end), torch.full_like(W, math.inf))
        return dataclasses.replace(
            self, entry_error=final,
            level_entry_error=entries(self.level_error, loose.level_error, self.level_end_to_end,
                                      loose.level_end_to_end),
            save_entry_error=entries(self.save_error, loose.save_error, self.save_end_to_end, loose.save_end_to_end),
            meta={**m, "error_model": f"two-tolerance (loose run at {TWO_TOL_FACTOR:g}× the tolerances)"})

    @property
    def n_steps(self) -> Tensor:
        return self.n_steps_factor + self.n_steps_spectral

    @property
    def loss(self) -> Tensor:
        return self.problem.loss(self.end_to_end)

    @property
    def log_sigma_min(self) -> Tensor:
        return self.log_sigma[:, -1]

    @property
    def switched(self) -> Tensor:
        return torch.isfinite(self.phase_switch_t)

    @property
    def ok(self) -> Tensor:
        """(B,) bool: instances that reached their final time or loss target (results to trust)."""
        s = self.status
        return (s == int(Status.REACHED_T_MAX)) | (s == int(Status.REACHED_EVENT))

    @property
    def save_loss(self) -> Tensor:
        W = self.save_end_to_end
        B, T = W.shape[:2]
        index = torch.arange(B, device=W.device).repeat_interleave(T)
        return self.problem.select(index).loss(W.reshape(B * T, *W.shape[2:])).reshape(B, T)

    def statuses(self) -> list[Status]:
        return [Status(int(s)) for s in self.status.tolist()]

    def messages(self) -> list[str]:
        """One sentence per instance: what happened, when, in which coordinates."""
        out = []
        for i, s in enumerate(self.statuses()):
            msg = f"instance {i}: {s.message}"
            reason = self.unresolved_reason[i]
            if s == Status.UNRESOLVED and reason in _UNRESOLVED_REASONS:
                msg = f"instance {i}: numerically unresolved: {_UNRESOLVED_REASONS[reason]}"
            msg += f" at t = {float(self.t[i]):.6g} after {int(self.n_steps_factor[i])} factor-coordinate"
            msg += f" + {int(self.n_steps_spectral[i])} spectral steps"
            if math.isfinite(float(self.phase_switch_t[i])):
                why = {"ratio": "σ_min/σ_max fell below switch_ratio", "det": "det W_j neared resolution"}
                msg += (f" (switched to spectral coordinates at t = {float(self.phase_switch_t[i]):.6g}: "
                        f"{why.get(self.switch_reason[i], self.switch_reason[i])})")
            out.append(msg)
        return out

    def raise_on_failure(self) -> None:
        """Raise NumericalError naming every instance that did not reach its final time or loss target."""
        bad = [m for m, ok in zip(self.messages(), self.ok.tolist(), strict=True) if not ok]
        if bad:
            raise NumericalError("balanced gradient flow failed: " + "; ".join(bad[:5]))


# ------------------------------------------------------------------------------------------- solver


def _prepare(problem: Problem, W0_or_factors, depth: int, dtype, device, balance_rtol: float):
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 2:
        raise InvalidInputError(
            f"solve_balanced needs an integer depth ≥ 2, got {depth!r} (at depth 1 det W may cross 0 in finite "
            f"time and log σ_min cannot follow it: use implreg.matrix.flow.solve)"
        )
    if isinstance(W0_or_factors, Tensor):
        W0 = W0_or_factors
        if W0.ndim == 2:
            W0 = W0.unsqueeze(0)
        if W0.ndim != 3 or W0.shape[-1] != W0.shape[-2]:
            raise InvalidInputError(
                f"solve_balanced needs square d×d end-to-end matrices (B, d, d), got shape {tuple(W0.shape)}"
            )
        dev = torch.device(device) if device is not None else W0.device
        factors = balanced_init(W0.to(dtype=dtype, device=dev), depth)
    else:
        factors = tuple(W0_or_factors)
        check_factors(factors)
        if len(factors) != depth:
            raise InvalidInputError(f"depth is {depth} but {len(factors)} factors were given")
        dev = torch.device(device) if device is not None else factors[0].device
        factors = tuple(W.to(dtype=dtype, device=dev) for W in factors)
    layout = FactorLayout.of(factors)
    if not all(a == b for a, b in layout.shapes) or len(set(layout.dims)) != 1:
        raise InvalidInputError(
            f"solve_balanced needs square factors of one size d×d (spectral coordinates of a square W), "
            f"got factor shapes {layout.shapes}"
        )
    if layout.dims[0] < 2:
        raise InvalidInputError("solve_balanced needs d ≥ 2 (a 1×1 W has no singular-value gap to exploit)")
    B = factors[0].shape[0]
    problem = problem.to(dtype=dtype, device=dev)
    if problem.batch == 1 and B > 1:
        problem = problem.expand(B)
    if problem.batch != B:
        raise InvalidInputError(f"problem has batch {problem.batch} but the factors have batch {B}")
    if problem.shape != (layout.dims[-1], layout.dims[0]):
        raise InvalidInputError(
            f"factors multiply to {layout.dims[-1]}×{layout.dims[0]} matrices, problem '{problem.name}' "
            f"is {problem.shape[0]}×{problem.shape[1]}"
        )
    # balancedness: the end-to-end dynamics (and hence the spectral phase) hold only for balanced factors
    defect = balancedness_defect(factors)
    scale = torch.stack([torch.linalg.matrix_norm(W) ** 2 for W in factors]).amax(0)
    bad = ~(defect <= balance_rtol * scale)
    if bad.any():
        idx = bad.nonzero().flatten().tolist()
        worst = float((defect / scale)[bad].max())
        raise InvalidInputError(
            f"the factors are not balanced: the balancedness defect max_j ‖W_(j+1)ᵀW_(j+1) − W_jW_jᵀ‖_F is "
            f"{worst:.3g}·max_j‖W_j‖_F² in instances {idx[:10]} (allowed: balance_rtol = {balance_rtol:g}); "
            f"the end-to-end dynamics hold only for balanced factors — build them with balanced_init(W0, depth)"
        )
    return problem, factors, layout, dev


def _merge(first: Tensor, second: Tensor, use_second: Tensor) -> Tensor:
    m = use_second.reshape(*use_second.shape, *([1] * (first.ndim - use_second.ndim)))
    return torch.where(m, second, first)


@torch.no_grad()
def solve_balanced(
    problem: Problem,
    W0_or_factors: Tensor | Sequence[Tensor],
    depth: int,
    *,
    t_max: float | Tensor = math.inf,
    loss_target: float | None = None,
    loss_levels: Sequence[float] = (),
    save_at: Sequence[float] | Tensor | None = None,
    rtol: float = 1e-9,
    atol: float = 1e-12,
    max_steps: int = 200_000,
    switch_ratio: float = 1e-3,
    switch_safety: float = 1e4,
    gap_limit: float = 0.5,
    drift_limit: float = 1e-6,
    damping: float = 1.0,
    balance_rtol: float = 1e-12,
    method: str = "auto",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> BalancedFlowSolution:
    """Balanced gradient flow on square deep matrix factorizations, certified past float64's det resolution.

    ``Ẇ = −Σ_j (WWᵀ)^{(j−1)/N}∇ℓ(W)(WᵀW)^{(N−j)/N}`` (Arora, Cohen, Hazan 2018, Thm 1) in factor coordinates,
    then, per instance, in the spectral coordinates ``W = U blockdiag(T, e^λ) Vᵀ`` of the module docstring.

    ``W0_or_factors``: end-to-end matrices (B, d, d) (balanced factors are built by ``balanced_init``) or
    balanced factors (W_1, …, W_N), all d×d (unbalanced ones are refused: defect > ``balance_rtol·‖W_j‖_F²``).
    Phase 1 is factor-coordinate gradient flow (field and det guard of ``flow.solve``, Dormand–Prince) until
    ``σ_min/σ_max < switch_ratio`` or ``|det W_j| ≤ (switch_safety/10)·τ_j`` (τ_j the det guard's threshold);
    the standard det guard must hold at that state (else UNRESOLVED: the sign is not certified).  Phase 2's
    integrator is ``method`` ("auto": Dormand–Prince, then RODAS4 past :func:`explicit_steps_for` attempts per
    instance; "rosenbrock"; "dopri5").  Phase 2 stops
    an instance UNRESOLVED if ``σ_min/τ_min > gap_limit``, ‖UᵀU − I‖ > ``drift_limit`` or the top core loses
    float64 resolution.  ``max_steps`` applies to each phase.  Errors are first-order and not amplified by the
    flow (the integrator's convention): compare two tolerances, or the mpmath reference, for more.
    """
    if method not in ("auto", "rosenbrock", "dopri5"):
        raise InvalidInputError("method (the spectral phase's integrator) must be 'auto', 'rosenbrock' or "
                                f"'dopri5', got {method!r}")
    if not (0.0 <= switch_ratio < 1.0):
        raise InvalidInputError(f"switch_ratio must lie in [0, 1), got {switch_ratio}")
    if not (switch_safety > 10.0):
        raise InvalidInputError(f"switch_safety must exceed the det guard's safety 10, got {switch_safety}")
    if not (0.0 < gap_limit < 1.0):
        raise InvalidInputError(f"gap_limit must lie in (0, 1), got {gap_limit}")
    if not (drift_limit > 0 and damping >= 0):
        raise InvalidInputError(f"need drift_limit > 0 and damping ≥ 0, got {drift_limit}, {damping}")
    if loss_target is not None and not (loss_target > 0 and math.isfinite(loss_target)):
        raise InvalidInputError(f"loss_target must be a positive finite number, got {loss_target}")
    if math.isinf(float(torch.as_tensor(t_max).max())) and loss_target is None:
        raise InvalidInputError("give a finite t_max or a loss_target: gradient flow runs forever otherwise")
    problem, factors, flayout, dev = _prepare(problem, W0_or_factors, depth, dtype, device, balance_rtol)
    N, B, d = depth, factors[0].shape[0], flayout.dims[0]
    z = {"dtype": dtype, "device": dev}
    u = torch.finfo(dtype).eps
    lv = torch.as_tensor(list(loss_levels), **z).reshape(-1)
    if lv.numel() and (not torch.isfinite(lv).all() or (lv <= 0).any()):
        raise InvalidInputError(f"loss levels must be positive and finite, got {list(loss_levels)}")
    L = lv.numel()
    saves = torch.as_tensor([] if save_at is None else save_at, **z).reshape(-1)
    S_ = saves.numel()
    tmax = torch.as_tensor(t_max, **z).expand(B).clone()
    prob, params = _problem_factory(problem)

    # ---- phase 1: factor coordinates ------------------------------------------------------------------
    def f1(t: Tensor, y: Tensor, *pr: Tensor) -> Tensor:
        _, grads = factor_grads(prob(*pr), flayout.unpack(y))
        return -flayout.pack(grads)

    def loss1(y: Tensor, *pr: Tensor) -> Tensor:
        return prob(*pr).loss(end_to_end(flayout.unpack(y)))

    near_det = det_guard(flayout, safety=switch_safety)
    certify = det_guard(flayout)

    def ratio_low(y: Tensor) -> Tensor:
        sv = torch.linalg.svdvals(end_to_end(flayout.unpack(y)))
        return sv[:, -1] < switch_ratio * sv[:, 0]

    def switch1(y: Tensor, err: Tensor, *pr: Tensor) -> Tensor:
        return near_det(y, err) | ratio_low(y)

    event1 = (lambda y, *pr: loss1(y, *pr) - loss_target) if loss_target is not None else None
    levels1 = (lambda y, *pr: loss1(y, *pr).unsqueeze(-1) - lv) if L else None
    r1 = integrate(f1, flayout.pack(factors), t_max=tmax, rtol=rtol, atol=atol, event=event1, levels=levels1,
                   n_levels=L, save_at=saves, guard=switch1, params=params, max_steps=max_steps)

    # ---- outputs from phase 1 ---------------------------------------------------------------------
    f_end = flayout.unpack(r1.y)
    spec = _factor_spectrum(f_end, r1.error)
    t_out, status, n_rej = r1.t.clone(), r1.status.clone(), r1.n_rejected.clone()
    W_out, err_out = end_to_end(f_end), spec["error"]
    log_sigma, log_det, log_det_err, det_sign = (spec["log_sigma"], spec["log_abs_det"],
                                                 spec["log_abs_det_error"], spec["det_sign"])
    lsm_err = spec["log_sigma_min_error"]
    lev_f = flayout.unpack(r1.level_y.reshape(B * L, flayout.size))
    lspec = _factor_spectrum(lev_f, r1.level_error.reshape(B * L))
    level_t = r1.level_t.clone()
    level_W = end_to_end(lev_f).reshape(B, L, d, d)
    level_err = lspec["error"].reshape(B, L)
    level_ls = lspec["log_sigma"].reshape(B, L, d)
    level_ld = lspec["log_abs_det"].reshape(B, L)
    level_sg = lspec["det_sign"].reshape(B, L)
    sv_f = flayout.unpack(r1.save_y.reshape(B * S_, flayout.size))
    sspec = _factor_spectrum(sv_f, r1.save_error.reshape(B * S_))
    save_W = end_to_end(sv_f).reshape(B, S_, d, d)
    save_err = sspec["error"].reshape(B, S_)
    save_ls = sspec["log_sigma"].reshape(B, S_, d)
    save_sg = sspec["det_sign"].reshape(B, S_)
    n2 = torch.zeros(B, dtype=torch.int64, device=dev)
    switch_t = torch.full((B,), math.nan, **z)
    switch_defect = torch.full((B,), math.nan, **z)
    reasons_switch = [""] * B
    reasons_unres = ["guard" if s == int(Status.UNRESOLVED) else "" for s in r1.status.tolist()]
    slayout = SpectralLayout(d)
    spectral_y = torch.full((B, slayout.size), math.nan, **z)
    drift_out = torch.full((B,), math.nan, **z)

    # ---- the switch ---------------------------------------------------------------------------------
    tripped = r1.status == int(Status.UNRESOLVED)
    if tripped.any():
        ti = tripped.nonzero().flatten()
        fs = tuple(Wj[ti] for Wj in f_end)
        e1 = r1.error[ti]
        y1 = r1.y[ti]
        why_ratio = ratio_low(y1)
        for i, r in zip(ti.tolist(), why_ratio.tolist(), strict=True):
            reasons_switch[i] = "ratio" if r else "det"
        certified = ~certify(y1, e1)
        defect = balancedness_defect(fs)
        switch_defect[ti] = defect
        # a defect beyond what the state error explains is itself a lower bound on that error
        fmax = torch.stack([torch.linalg.matrix_norm(Wj, ord=2) for Wj in fs]).amax(0)
        e1_eff = torch.maximum(e1, defect / (2.0 * fmax))
        base = _factor_spectrum(fs, e1_eff)
        for i, c in zip(ti.tolist(), certified.tolist(), strict=True):
            if not c:
                reasons_unres[i] = "uncertified"
        go = ti[certified]
        if go.numel():
            sel = certified.nonzero().flatten()
            fs_go = tuple(Wj[sel] for Wj in fs)
            switch_t[go] = r1.t[go]
            _, y0, _ = from_factors(fs_go, r1.t[go])
            # errors carried over from the switch (per instance, added to every later estimate)
            Tcore = slayout.unpack(y0)[2]
            inv_t = torch.sqrt((1.0 / torch.linalg.svdvals(Tcore) ** 2).sum(-1))
            carry = {
                "error": base["error"][sel],
                "log_abs_det_error": base["log_abs_det_error"][sel],
                "log_sigma_min_error": base["log_abs_det_error"][sel] + inv_t * (slayout.k * base["error"][sel]
                                                                                + d * u * Tcore.abs().amax((-1, -2))),
            }
            pr2 = [q[go] for q in params]
            f2 = spectral_vector_field(problem, N, slayout, damping)
            eye = torch.eye(d, **z)

            def loss2(y: Tensor, *pr: Tensor) -> Tensor:
                return prob(*pr).loss(to_end_to_end(slayout, y))

            def guard2(y: Tensor, err: Tensor, *pr: Tensor) -> Tensor:
                U, V, T, lam, _ = slayout.unpack(y)
                tau = torch.linalg.svdvals(T)
                gap = lam - torch.log(tau[:, -1]) > math.log(gap_limit)
                drift = torch.maximum(torch.linalg.matrix_norm(U.transpose(-1, -2) @ U - eye),
                                      torch.linalg.matrix_norm(V.transpose(-1, -2) @ V - eye)) > drift_limit
                # k ≥ 2: a second singular value (in the top core) must keep ~1 significant digit
                core = (tau[:, -1] <= 10.0 * (d * u * tau[:, 0] + err)) & (slayout.k > 1)
                return gap | drift | core

            def levels2(y: Tensor, *pr: Tensor) -> Tensor:
                cols = []
                if L:
                    cols.append(loss2(y, *pr).unsqueeze(-1) - lv)
                if S_:
                    cols.append(saves * _TIME_SCALE - slayout.unpack(y)[4].unsqueeze(-1))
                return torch.cat(cols, dim=-1)

            event2 = (lambda y, *pr: loss2(y, *pr) - loss_target) if loss_target is not None else None
            stepper = {"rosenbrock": rosenbrock, "dopri5": integrate, "auto": explicit_then_stiff}[method]
            r2 = stepper(f2, y0, t_max=tmax[go] - r1.t[go], rtol=rtol, atol=atol, event=event2,
                         levels=levels2 if (L + S_) else None, n_levels=L + S_, guard=guard2,
                         params=pr2, max_steps=max_steps)
            out = {
                "t": t_out, "status": status, "n_rej": n_rej, "W": W_out, "err": err_out, "ls": log_sigma,
                "ld": log_det, "lde": log_det_err, "lsme": lsm_err, "sg": det_sign, "n2": n2, "level_t": level_t,
                "level_W": level_W, "level_err": level_err, "level_ls": level_ls, "level_ld": level_ld,
                "level_sg": level_sg, "save_W": save_W, "save_err": save_err, "save_ls": save_ls,
                "save_sg": save_sg, "spectral_y": spectral_y, "drift": drift_out,
            }
            _write_phase2(r2, go, r1.t[go], slayout, carry, L, S_, saves, out)
            # reasons for phase-2 unresolved instances (re-evaluate the guard's parts at the final state)
            un = (r2.status == int(Status.UNRESOLVED)).nonzero().flatten()
            for r in un.tolist():
                yr = r2.y[r : r + 1]
                _, _, T, lam, _ = slayout.unpack(yr)
                tau = torch.linalg.svdvals(T)
                if float(lam[0] - torch.log(tau[0, -1])) > math.log(gap_limit):
                    why = "gap"
                elif float(drift_out[go[r]]) > drift_limit:
                    why = "drift"
                else:
                    why = "core"
                reasons_unres[int(go[r])] = why
            for i in go.tolist():
                if status[i] != int(Status.UNRESOLVED):
                    reasons_unres[i] = ""
    # instances that tripped the switch but could not be certified keep UNRESOLVED from phase 1

    return BalancedFlowSolution(
        problem=problem, depth=N, t=t_out, status=status, error=err_out, end_to_end=W_out, log_sigma=log_sigma,
        log_abs_det=log_det, log_abs_det_error=log_det_err, log_sigma_min_error=lsm_err, det_sign=det_sign,
        n_steps_factor=r1.n_steps.clone(),
        n_steps_spectral=n2, n_rejected=n_rej, phase_switch_t=switch_t, switch_reason=reasons_switch,
        switch_balancedness_defect=switch_defect, unresolved_reason=reasons_unres, loss_levels=lv,
        level_t=level_t, level_end_to_end=level_W, level_error=level_err, level_log_sigma=level_ls,
        level_log_abs_det=level_ld, level_det_sign=level_sg, save_t=saves, save_end_to_end=save_W,
        save_error=save_err, save_log_sigma=save_ls, save_det_sign=save_sg, spectral_state=spectral_y,
        layout=slayout, drift=drift_out,
        meta={"rtol": rtol, "atol": atol, "switch_ratio": switch_ratio, "switch_safety": switch_safety,
              "gap_limit": gap_limit, "drift_limit": drift_limit, "damping": damping, "depth": N,
              "dtype": str(dtype), "device": str(dev), "problem": problem.name, "max_steps": max_steps,
              "balance_rtol": balance_rtol, "method": method},
        init_factors=tuple(W.clone() for W in factors), loss_target=loss_target, t_max=tmax,
    )


def _write_phase2(r2: IntegrationResult, go: Tensor, t0: Tensor, layout: SpectralLayout, carry: dict[str, Tensor],
                  L: int, S_: int, saves: Tensor, out: dict[str, Tensor]) -> None:
    """Write the spectral phase's results for instances ``go`` into the full-batch outputs (in place)."""
    n = go.numel()
    d = layout.d
    out["t"][go] = t0 + r2.t
    out["status"][go] = r2.status
    out["n_rej"][go] = out["n_rej"][go] + r2.n_rejected
    out["n2"][go] = r2.n_steps
    sp = _spectral_spectrum(layout, r2.y, r2.error, carry)
    out["W"][go] = to_end_to_end(layout, r2.y)
    out["err"][go] = sp["error"]
    out["ls"][go], out["ld"][go], out["lde"][go], out["sg"][go] = (
        sp["log_sigma"], sp["log_abs_det"], sp["log_abs_det_error"], sp["det_sign"])
    out["lsme"][go] = sp["log_sigma_min_error"]
    out["spectral_y"][go] = r2.y
    out["drift"][go] = sp["drift"]
    if L + S_ == 0:
        return
    P = layout.size
    rep = {key: v.repeat_interleave(L + S_) for key, v in carry.items()}
    ly = r2.level_y.reshape(n * (L + S_), P)
    lsp = _spectral_spectrum(layout, ly, r2.level_error.reshape(-1), rep)
    lW = to_end_to_end(layout, ly).reshape(n, L + S_, d, d)
    lerr = lsp["error"].reshape(n, L + S_)
    lls = lsp["log_sigma"].reshape(n, L + S_, d)
    lld = lsp["log_abs_det"].reshape(n, L + S_)
    lsg = lsp["det_sign"].reshape(n, L + S_)
    if L:
        # levels already crossed in phase 1 keep their phase-1 record
        fresh = torch.isnan(out["level_t"][go]) & torch.isfinite(r2.level_t[:, :L])
        out["level_t"][go] = torch.where(fresh, t0.unsqueeze(-1) + r2.level_t[:, :L], out["level_t"][go])
        out["level_W"][go] = _merge(out["level_W"][go], lW[:, :L], fresh)
        out["level_err"][go] = _merge(out["level_err"][go], lerr[:, :L], fresh)
        out["level_ls"][go] = _merge(out["level_ls"][go], lls[:, :L], fresh)
        out["level_ld"][go] = _merge(out["level_ld"][go], lld[:, :L], fresh)
        out["level_sg"][go] = _merge(out["level_sg"][go], lsg[:, :L], fresh)
    if S_:
        after = saves.unsqueeze(0) > t0.unsqueeze(-1)  # saves at or before the switch were taken in phase 1
        hit = after & torch.isfinite(r2.level_t[:, L:])
        # a save at the final time (t_max) can miss its crossing by the rounding of the time component: take the
        # final state there
        t_end = (t0 + r2.t).unsqueeze(-1)
        at_end = after & ~hit & (saves <= t_end) & (t_end - saves <= 1e-9 * t_end.clamp(min=1.0))
        if at_end.any():
            r, c = at_end.nonzero(as_tuple=True)
            lW[r, L + c], lerr[r, L + c] = out["W"][go][r], out["err"][go][r]
            lls[r, L + c], lsg[r, L + c] = out["ls"][go][r], out["sg"][go][r]
            hit = hit | at_end
        missed = after & ~hit
        out["save_W"][go] = torch.where(missed[..., None, None], math.nan, _merge(out["save_W"][go], lW[:, L:], hit))
        out["save_err"][go] = torch.where(hit, lerr[:, L:], torch.where(after, math.nan, out["save_err"][go]))
        out["save_ls"][go] = torch.where(hit.unsqueeze(-1), lls[:, L:],
                                         torch.where(after.unsqueeze(-1), math.nan, out["save_ls"][go]))
        out["save_sg"][go] = torch.where(hit, lsg[:, L:], torch.where(after, math.nan, out["save_sg"][go]))
