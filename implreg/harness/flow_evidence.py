"""Evidence for gradient-flow claims: quantities against the loss, bound curves, the simulator against the reference.

Plot plumbing that every flow claim repeats, kept out of ``theorems/`` so that a claim reads like its statement.
Everything here records only while a claim's evidence is being kept (not while Hypothesis shrinks), like
:mod:`implreg.harness.evidence` itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from implreg.harness import evidence
from implreg.harness.evidence import recording
from implreg.matrix import levels
from implreg.matrix.flow.spectral import solve_balanced
from implreg.matrix.problems import razin_cohen_2x2
from implreg.numerics import Certified

__all__ = ["bound_curve", "depth_sweep", "det_vs_balanced_flow", "recording", "reference_agreement", "vs_loss"]


def vs_loss(title: str, loss: Certified, y: Tensor, group: str, ylabel: str, log_y: bool = True) -> None:
    """Plot ``y`` (B, K) against the states' loss (B, K); states never reached (loss error ∞) become gaps."""
    x = torch.where(torch.isfinite(loss.error), loss.value, torch.full_like(loss.value, math.nan))
    evidence.series(title, x=x, y=y, group=group, xlabel="loss ℓ", ylabel=ylabel, log_x=True, log_y=log_y)


def bound_curve(title: str, bound: Callable[[Tensor], Any], lo: float, hi: float, group: str, n: int = 50,
                log_x: bool = True) -> None:
    """Add the curve ``bound(x)`` for x on a (log-)spaced grid of [lo, hi] to the plot ``title``."""
    grid = (torch.logspace(math.log10(lo), math.log10(hi), n, dtype=torch.float64) if log_x
            else torch.linspace(lo, hi, n, dtype=torch.float64))
    y = bound(grid)
    evidence.series(title, x=grid, y=y.value if isinstance(y, Certified) else y, group=group)


def reference_agreement(sol: Any, init: Any, group: str) -> None:
    """Table and plot of the simulator against the mpmath reference on ``sol``'s first instance
    (:func:`implreg.matrix.levels.reference_agreement`, ≈ 1 s a depth): |ΔW| beside both error estimates."""
    if not recording():
        return
    for row in levels.reference_agreement(sol, init):
        evidence.table("simulator vs mpmath reference (first instance of each depth, 30 digits)",
                       {"group": group, **row})
        evidence.series("simulator vs mpmath reference: |ΔW| / (sum of error estimates)", x=[row["loss level"]],
                        y=[row["ratio |Δ| / (sum of estimates)"]], group=group, xlabel="loss level ℓ",
                        ylabel="ratio", log_x=True, log_y=True, kind="scatter")


def det_vs_balanced_flow(inits: Any, t: Tensor, det: Tensor) -> None:
    """Plot det W(t) (B, T) of depth-2 flows from unbalanced ``inits`` on the Razin–Cohen problem beside the balanced
    flow from the same W(0) (``solve_balanced``, whose det keeps its sign)."""
    if not recording():
        return
    title = "det W(t): unbalanced vs balanced init with the same W(0)"
    evidence.series(title, x=t, y=det, group="unbalanced (Gaussian)", xlabel="t", ylabel="det W(t)", symlog_y=True)
    W0 = torch.stack([i.W0() for i in inits])
    bal = solve_balanced(razin_cohen_2x2(W0.shape[0]), W0, 2, t_max=float(t.max()), save_at=t.tolist())
    det_bal = bal.save_det_sign * torch.exp(bal.save_log_sigma.sum(-1))
    evidence.series(title, x=t, y=det_bal, group="balanced (same W(0))")


def depth_sweep(problems: Any, erank: Tensor, error: Tensor, depths: Any) -> None:
    """Plots (per problem, and the median effective rank) and the table of a depth sweep
    (:func:`implreg.matrix.dynamics.depth_sweep`: ``erank`` and ``error`` (n, len(depths)))."""
    x = torch.tensor(depths, dtype=torch.float64)
    for y, name in ((erank, "effective rank"), (error, "‖W − M‖_F / ‖M‖_F")):
        evidence.series(f"{name} vs depth", x=x.expand_as(y), y=y, group="problems", xlabel="depth N", ylabel=name,
                        kind="scatter")
    evidence.series("effective rank vs depth", x=x, y=erank.median(0).values, group="median")
    evidence.table("depth experiment", [{"rank": p.rank, "observed": p.observed, **{
        f"{name} N={N}": float(y[i, k]) for name, y in (("erank", erank), ("error", error))
        for k, N in enumerate(depths)}} for i, p in enumerate(problems)])
