"""Faster forms of implreg.matrix.flow.spectral at large batches against the forms they replace, bit for bit.

The old forms below are the module's code before the change (kept verbatim): the new forms must give the same
bits per row, signs of zero included (compared as int64 bit patterns), so results, error estimates and the
batch-independence contract are unchanged.  A NaN must stay a NaN in the same place; its sign bit is not
compared (x86 gives the "default NaN" −NaN from invalid operations and vectorized and scalar torch kernels
propagate NaN operands differently; no result reads a NaN's sign).  Inputs mix ordinary states with special
values (±0, ±inf, NaN, huge and tiny entries) so that every branch of IEEE arithmetic the rows can meet is
exercised.
"""

from __future__ import annotations

import torch
from torch import Tensor

from implreg.matrix.flow.spectral import (
    _TIME_SCALE,
    SpectralLayout,
    _field_2x2_columns,
    _problem_factory,
    spectral_vector_field,
)
from implreg.matrix.problems import razin_cohen_2x2, sensing

F64 = torch.float64


def bits(x: Tensor) -> Tensor:
    """The int64 bit patterns, every NaN made the same NaN (see the module docstring)."""
    return torch.where(torch.isnan(x), float("nan"), x).contiguous().view(torch.int64)


def same_bits(x: Tensor, y: Tensor) -> bool:
    """Equal shapes and equal bit patterns (−0 ≠ +0; NaN only where the other has NaN)."""
    return x.shape == y.shape and torch.equal(bits(x), bits(y))


# ------------------------------------------------------------------ old forms (verbatim from before the change)


def old_field_2x2(prob, N: int, layout: SpectralLayout, damping: float):
    """d = 2 case of :func:`spectral_vector_field`: T = (t) is 1×1, P = sign t, τ = |t|, Q = 1.

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


# ------------------------------------------------------------------ inputs


def spectral_states(n: int, gen: torch.Generator, special: float = 0.1) -> Tensor:
    """Near-orthogonal U, V, cores of either sign, λ below log|t|, times ≥ 0; a fraction ``special`` of the
    entries replaced by ±0, ±inf, NaN, huge or tiny values."""
    ang = 6.3 * torch.rand(2, n, generator=gen, dtype=F64)
    rot = torch.stack([torch.cos(ang), -torch.sin(ang), torch.sin(ang), torch.cos(ang)], dim=-1)
    uv = rot + 1e-7 * torch.randn(2, n, 4, generator=gen, dtype=F64)
    t = (0.5 + torch.rand(n, generator=gen, dtype=F64)) * torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    lam = -1.0 - 20.0 * torch.rand(n, generator=gen, dtype=F64)
    tau = 100.0 * torch.rand(n, generator=gen, dtype=F64) * _TIME_SCALE
    y = torch.cat([uv[0], uv[1], t[:, None], lam[:, None], tau[:, None]], dim=-1)
    vals = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e300, -1e-300, 5e-324, 1.0, -1.0],
                        dtype=F64)
    pick = torch.rand(y.shape, generator=gen) < special
    repl = vals[torch.randint(len(vals), y.shape, generator=gen)]
    return torch.where(pick, repl, y)


def problems(n: int, gen: torch.Generator) -> list:
    return [razin_cohen_2x2(n).to(dtype=F64),
            sensing(torch.randn(n, 3, 2, 2, generator=gen, dtype=F64), torch.randn(n, 3, generator=gen, dtype=F64))]


# ------------------------------------------------------------------ tests


def test_field_2x2_columns_equal_old_form() -> None:
    """The d = 2 field with the batch last against the broadcast/bmm form (used below 256 rows), directly and
    through spectral_vector_field: completion and sensing, depths 2–4, with and without damping, batches from 1
    to beyond the switch between the forms, ordinary and special states, zero cores."""
    gen = torch.Generator().manual_seed(11)
    lay = SpectralLayout(2)
    for n in (1, 7, 255, 256, 2300):
        for special in (0.0, 0.05, 0.5):
            y = spectral_states(n, gen, special)
            if n > 1:
                y[0, 8] = 0.0  # a zero core (log τ = −inf)
                y[1, :8] = 0.0  # U = V = 0: products of zeros, −0 signs
                y[1, 0] = -0.0
            for problem in problems(n, gen):
                prob, pr = _problem_factory(problem)
                for N in (2, 3, 4):
                    for damping in (1.0, 0.0, 0.37):
                        old = old_field_2x2(prob, N, lay, damping)(None, y, *pr)
                        for new in (spectral_vector_field(problem, N, lay, damping)(None, y, *pr),
                                    _field_2x2_columns(prob, N, lay, damping)(None, y, *pr)):
                            assert same_bits(new, old), (n, special, N, damping)
                            assert new.is_contiguous()


def test_field_2x2_columns_row_independent() -> None:
    """Each row's value does not depend on the batch around it (alone, in a batch, on a strided input)."""
    gen = torch.Generator().manual_seed(12)
    lay = SpectralLayout(2)
    n = 300  # the Jacobian-sized form; single rows use the batch-first one
    y = spectral_states(n, gen, 0.05)
    problem = razin_cohen_2x2(n).to(dtype=F64)
    _, pr = _problem_factory(problem)
    f = spectral_vector_field(problem, 2, lay)
    full = f(None, y, *pr)
    for i in (0, 17, 299):
        assert same_bits(f(None, y[i : i + 1], *[q[i : i + 1] for q in pr]), full[i : i + 1])
    wide = torch.cat([y, y], dim=-1)[:, :11]  # a non-contiguous state
    assert same_bits(f(None, wide, *pr), full)

