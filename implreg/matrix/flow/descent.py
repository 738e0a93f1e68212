"""Gradient descent with a fixed learning rate, ``W_j ← W_j − η ∂ℓ/∂W_j``, batched with compaction.

This is the papers' experimental protocol (e.g. Razin & Cohen 2020 use η = 3e-3 in float32), kept
separate from gradient flow: theorems speak about the flow, experiments about descent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from implreg.errors import InvalidInputError
from implreg.matrix.factorization import FactorLayout, Factors, check_factors, end_to_end, factor_grads
from implreg.matrix.flow.integrate import Status
from implreg.matrix.problems import Problem

__all__ = ["DescentSolution", "descend"]


@dataclass
class DescentSolution:
    """Final factors, loss, iteration counts and per-instance status of a batched descent run."""

    problem: Problem
    layout: FactorLayout
    y: Tensor  # (B, P) final packed factors
    iterations: Tensor  # (B,) steps taken
    status: Tensor  # (B,) Status codes: REACHED_EVENT (loss target), MAX_STEPS, DIVERGED
    record_every: int
    loss_history: Tensor  # (B, R) loss every `record_every` iterations (NaN after an instance stopped)

    @property
    def certified(self):
        """The run as certified values: the computed iterates are exact (the experiment IS the float64 run), the
        end-to-end product and loss carry rigorous rounding bounds
        (``implreg.matrix.flow.certified.certified_descent``)."""
        from implreg.matrix.flow.certified import certified_descent

        return certified_descent(self)

    @property
    def factors(self) -> Factors:
        return self.layout.unpack(self.y)

    @property
    def end_to_end(self) -> Tensor:
        return end_to_end(self.factors)

    @property
    def loss(self) -> Tensor:
        return self.problem.loss(self.end_to_end)


def descend(
    problem: Problem,
    factors: Sequence[Tensor],
    *,
    lr: float,
    max_iters: int,
    loss_target: float | None = None,
    record_every: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    divergence_limit: float = 1e30,
) -> DescentSolution:
    """Run ``W_j ← W_j − lr·∂ℓ/∂W_j`` on every instance until ``ℓ ≤ loss_target`` or ``max_iters``.

    The loss is tested before each step (so an instance that starts below the target takes 0 steps).
    Instances whose loss or factors become non-finite or exceed ``divergence_limit`` stop as DIVERGED.
    """
    check_factors(factors)
    if not (lr > 0 and math.isfinite(lr)):
        raise InvalidInputError(f"learning rate must be positive and finite, got {lr}")
    if max_iters < 0:
        raise InvalidInputError(f"max_iters must be ≥ 0, got {max_iters}")
    if loss_target is not None and not loss_target > 0:
        raise InvalidInputError(f"loss_target must be > 0, got {loss_target}")
    dev = torch.device(device) if device is not None else factors[0].device
    factors = tuple(W.to(dtype=dtype, device=dev) for W in factors)
    problem = problem.to(dtype=dtype, device=dev)
    layout = FactorLayout.of(factors)
    B = factors[0].shape[0]
    if problem.batch == 1 and B > 1:
        problem = problem.expand(B)
    if problem.batch != B:
        raise InvalidInputError(f"problem has batch {problem.batch} but the factors have batch {B}")
    if (layout.dims[-1], layout.dims[0]) != problem.shape:
        raise InvalidInputError(
            f"factors multiply to {layout.dims[-1]}×{layout.dims[0]} matrices, problem '{problem.name}' "
            f"is {problem.shape[0]}×{problem.shape[1]}"
        )
    R = (max_iters // record_every + 1) if record_every else 0
    hist = torch.full((B, R), float("nan"), dtype=dtype, device=dev)
    out_y = layout.pack(factors).clone()
    out_it = torch.zeros(B, dtype=torch.int64, device=dev)
    out_status = torch.full((B,), int(Status.MAX_STEPS), dtype=torch.int64, device=dev)
    idx = torch.arange(B, device=dev)
    y = out_y.clone()
    prob = problem
    target = -math.inf if loss_target is None else loss_target
    for it in range(max_iters + 1):
        value, grads = factor_grads(prob, layout.unpack(y))
        if R and it % record_every == 0:
            hist[idx, it // record_every] = value
        diverged = ~torch.isfinite(value) | ~(y.abs().amax(-1) < divergence_limit)
        reached = value <= target
        stop = diverged | reached | torch.tensor(it == max_iters, device=dev)
        if stop.any():
            gi = idx[stop]
            out_y[gi] = y[stop]
            out_it[gi] = it
            st = torch.where(reached[stop], int(Status.REACHED_EVENT), int(Status.MAX_STEPS))
            out_status[gi] = torch.where(diverged[stop], int(Status.DIVERGED), st)
            keep = ~stop
            idx, y, prob = idx[keep], y[keep], prob.select(keep)
            grads = tuple(g[keep] for g in grads)
            if idx.numel() == 0:
                break
        y = y - lr * layout.pack(grads)
    return DescentSolution(problem, layout, out_y, out_it, out_status, record_every, hist)
