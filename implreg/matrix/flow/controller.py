"""Step-size control for the embedded Runge–Kutta integrator (Hairer, Nørsett & Wanner, *Solving ODEs I*, II.4).

The accept/reject decision and ``h ← h·clip(0.9·err^{−1/q}, 0.2, 10)`` are fused into the step kernel
(:func:`implreg.matrix.flow.kernels.rk_post`); this module holds what is evaluated eagerly: the factor ``err^{−1/q}``
and the starting step size.  Everything is row-wise, so an instance's steps do not depend on its batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from implreg.matrix.flow.kernels import ratio, rms

__all__ = ["initial_step", "positive_pow", "step_factor"]


def positive_pow(x: Tensor, p: float) -> Tensor:
    """x^p for x > 0 as exp(p·log x): torch.pow with a scalar exponent takes a vectorized path for the bulk
    of a tensor and scalar libm for the tail, which differ in the last bit, so results would depend on an
    instance's position in the batch; exp and log are evaluated identically at every position.  (Eager only:
    never inside a compiled kernel, whose vectorized and scalar exp need not agree.)"""
    return torch.exp(p * torch.log(x))


def step_factor(msq: Tensor, order: int) -> Tensor:
    """err^{−1/order} with err = √msq (the RMS scaled error), clipped below at 1e-10 so a zero error does not
    make the next step infinite (the kernel then caps the growth at 10×)."""
    return positive_pow(msq.clamp(min=1e-20), -0.5 / order)


def initial_step(f: Callable[..., Tensor], t: Tensor, y: Tensor, k1: Tensor, t_max: Tensor, *, rtol: float,
                 atol: float, order: int, params: tuple[Tensor, ...]) -> Tensor:
    """Per-instance starting step (HNW I, II.4 "starting step size"): h₀ = 0.01·‖y‖/‖f(y)‖, one explicit Euler
    probe for ‖f′‖, then h = min(100·h₀, (0.01/max(‖f‖, ‖f′‖))^{1/order}), in the scaled RMS norm."""
    sc = atol + rtol * y.abs()
    d0, d1 = rms(ratio(y, sc)), rms(ratio(k1, sc))
    ha = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    ha = torch.minimum(ha, t_max.clamp(min=1e-300))
    f1 = f(t + ha, y + ha.unsqueeze(-1) * k1, *params)
    d2 = rms(ratio(f1 - k1, sc)) / ha
    dm = torch.maximum(d1, d2)
    hb = torch.where(dm <= 1e-15, torch.maximum(torch.full_like(ha, 1e-6), ha * 1e-3),
                     positive_pow(0.01 / dm.clamp(min=1e-300), 1.0 / order))
    h = torch.minimum(100 * ha, hb)
    # a huge but finite field can make f1 (hence hb) non-finite: fall back to the first guess, or the step-size
    # control would shrink a NaN step for ever
    return torch.where(torch.isfinite(h) & (h > 0), h, ha)
