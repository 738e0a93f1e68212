"""Path-SGD and plain SGD on bias-free ReLU nets, batched over nets, with exact-rational and error-bounded steps.

Path-SGD (Neyshabur, Salakhutdinov & Srebro, NIPS 2015, arXiv 1506.02617, §4, eq. as reconstructed) is the
steepest-descent step w.r.t. the ℓ2 path regularizer, in its coordinate-wise approximation:

    w_e ← w_e − η (∂L/∂w_e) / γ_e(w),   γ_e(w) = ∂φ_2(w)² / ∂(w_e²) = γ_in(u) · γ_out(v)   for e = u → v,

where γ_in(u) = Σ_{paths input→u} Π w² (one forward pass of the all-ones input through the squared weights)
and γ_out(v) = Σ_{paths v→output} Π w² (one backward pass from the outputs).  Under a node rescaling ρ,
∂L/∂w̃_e and γ̃_e scale as 1/c and 1/c² for an edge into the rescaled unit (c and c² out of it), so
step(ρ(w)) = ρ(step(w)) exactly in real arithmetic; SGD's step is not equivariant.

The loss of every step is ``implreg.relu.network.loss`` (mse by default) on the given batch (full batch unless a
minibatch size is set).  γ_e = 0 (every path through e has a zero weight) forces ∂L/∂w_e = 0; the update is 0.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

from implreg.errors import InvalidInputError
from implreg.numerics import Certified
from implreg.relu.network import (
    SAFETY,
    ReluNet,
    _check_inputs,
    _forward,
    _loss,
    certified_weights,
    grad_error_bound,
    loss_and_grads,
    unit_roundoff,
)

__all__ = [
    "Fit",
    "Trajectory",
    "fit_to_zero_error",
    "path_sgd_scaling",
    "path_sgd_scaling_brute",
    "path_sgd_step",
    "path_sgd_step_exact",
    "rescaled_training_gaps",
    "sgd_step",
    "sgd_step_exact",
    "step_commutes_exactly",
    "step_error_bound",
    "train",
]


# ---------------------------------------------------------------------------------------------- scaling


def _in_out(net: ReluNet) -> tuple[list[Certified], list[Certified]]:
    """γ_in for layers 0 … d (B, n_k) and γ_out for layers 0 … d (B, n_k), from the squared exact weights."""
    sq = [W * W for W in certified_weights(net)]
    a = Certified.exact(torch.ones(net.batch, net.widths[0], dtype=net.dtype, device=net.device))
    gin = [a]
    for S in sq:
        a = (S @ a.unsqueeze(-1))[..., 0]
        gin.append(a)
    b = Certified.exact(torch.ones(net.batch, net.widths[-1], dtype=net.dtype, device=net.device))
    gout = [b]
    for S in reversed(sq):
        b = (b.unsqueeze(-2) @ S)[..., 0, :]
        gout.append(b)
    return gin, gout[::-1]


def path_sgd_scaling(net: ReluNet) -> tuple[Certified, ...]:
    """γ_e = γ_in(u)·γ_out(v) for every edge e = u → v, one (B, n_k, n_{k−1}) value per layer (two passes).

    γ_in(u) is the all-ones input propagated through the squared weights; γ_out(v) the all-ones output
    propagated backwards (Path-SGD §4, as reconstructed); γ_e = ∂φ_2²/∂(w_e²).  Certified (rational in the
    weights, so decided exactly where compared); the steps use ``.value``.
    """
    gin, gout = _in_out(net)
    return tuple(gout[k].unsqueeze(-1) * gin[k - 1].unsqueeze(-2) for k in range(1, net.depth + 1))


def path_sgd_scaling_brute(net: ReluNet, p: float = 2.0) -> tuple[Certified, ...]:
    """∂φ_p^p/∂(|w_e|^p) = Σ_{paths ∋ e} Π_{e' ≠ e} |w_e'|^p by enumerating all paths (small nets only)."""
    if net.num_paths > 200_000:
        raise InvalidInputError(f"brute-force enumeration of {net.num_paths} paths refused (limit 200000)")
    A = [W.abs() ** p if p != 1 else W.abs() for W in certified_weights(net)]
    widths = net.widths
    paths = torch.tensor(list(itertools.product(*(range(k) for k in widths))), device=net.device)
    factors = [A[k - 1][:, paths[:, k], paths[:, k - 1]] for k in range(1, net.depth + 1)]  # each (B, P)
    one = Certified.exact(torch.ones(net.batch, paths.shape[0], dtype=net.dtype, device=net.device))
    out = []
    for k in range(1, net.depth + 1):
        others = one
        for j, F in enumerate(factors, start=1):
            if j != k:
                others = others * F
        # Σ over the paths through each edge: a 0/1 incidence matrix (exact) times the path products
        edge = paths[:, k] * widths[k - 1] + paths[:, k - 1]
        inc = torch.nn.functional.one_hot(edge, widths[k] * widths[k - 1]).to(net.dtype).T  # (E, P)
        G = (Certified.exact(inc.expand(net.batch, *inc.shape)) @ others.unsqueeze(-1))[..., 0]
        out.append(G.reshape(net.batch, widths[k], widths[k - 1]))
    return tuple(out)


# ---------------------------------------------------------------------------------------------- steps


def _lr(lr: float | Tensor, net: ReluNet) -> Tensor:
    lr = torch.as_tensor(lr, dtype=net.dtype, device=net.device)
    return lr.expand(net.batch).view(net.batch, 1, 1)


def path_sgd_step(net: ReluNet, x: Tensor, y: Tensor, lr: float | Tensor, kind: str = "mse") -> ReluNet:
    """One Path-SGD step on (x, y): w_e ← w_e − η (∂L/∂w_e)/γ_e(w)  (Path-SGD §4, eq. as reconstructed)."""
    _, grads = loss_and_grads(net, x, y, kind)
    scal = [S.value for S in path_sgd_scaling(net)]
    eta = _lr(lr, net)
    ws = []
    for W, G, S in zip(net.weights, grads, scal, strict=True):
        upd = torch.where(S > 0, eta * G / torch.where(S > 0, S, torch.ones_like(S)), torch.zeros_like(G))
        ws.append(W - upd)
    return ReluNet(tuple(ws))


def sgd_step(net: ReluNet, x: Tensor, y: Tensor, lr: float | Tensor, kind: str = "mse") -> ReluNet:
    """One (stochastic) gradient-descent step w ← w − η ∇L(w) on (x, y)."""
    _, grads = loss_and_grads(net, x, y, kind)
    eta = _lr(lr, net)
    return ReluNet(tuple(W - eta * G for W, G in zip(net.weights, grads, strict=True)))


def step_error_bound(
    net: ReluNet, x: Tensor, y: Tensor, lr: float, method: str = "path-sgd", weight_rel_err: float = 0.0
) -> tuple[tuple[Tensor, ...], Tensor]:
    """Bounds on |step computed − step exact| per weight (mse loss), and the per-net mask-ambiguity flag.

    "Exact" is the step of the exact net w* (|w − w*| ≤ ε_w|w|) in real arithmetic, with the same η.  With
    t = η G/γ (Path-SGD) or t = η G (SGD), G the gradient (bound from ``relu.grad_error_bound``) and γ the
    scaling (its certified error, plus 2(d−1)ε_w relative for the weight perturbation: γ_e is a sum of
    products of d − 1 squared weights), first order:
        |t̂ − t| ≤ η(|Ĝ − G| + |Ĝ| Θ_γ)/γ̂ + 2u|t̂|   (two roundings: ×η, ÷γ),
        |ŵ' − w'| ≤ |t̂ − t| + ε_w|w| + u|ŵ'|          (w' = w − t, one rounding),   ×SAFETY.
    Void where ``ambiguous`` (a ReLU mask could differ from the exact one): decide those exactly.
    """
    if method not in ("path-sgd", "sgd"):
        raise InvalidInputError(f"method must be 'path-sgd' or 'sgd', got {method!r}")
    _, grads = loss_and_grads(net, x, y, "mse")
    gb, ambiguous = grad_error_bound(net, x, y, weight_rel_err)
    u = unit_roundoff(net.dtype)
    eta = abs(float(lr))
    new = path_sgd_step(net, x, y, lr) if method == "path-sgd" else sgd_step(net, x, y, lr)
    out = []
    if method == "path-sgd":
        cs = path_sgd_scaling(net)
        scal = [S.value for S in cs]
        sb = [S.error + SAFETY * 2 * (net.depth - 1) * weight_rel_err * S.value for S in cs]
        for W, G, eG, S, eS, Wn in zip(net.weights, grads, gb, scal, sb, new.weights, strict=True):
            pos = S > 0
            Ss = torch.where(pos, S, torch.ones_like(S))
            t = eta * G.abs() / Ss
            et = torch.where(pos, eta * (eG + G.abs() * eS / Ss) / Ss + 2 * u * t, torch.zeros_like(t))
            out.append(SAFETY * (et + weight_rel_err * W.abs() + u * Wn.abs()))
    else:
        for W, G, eG, Wn in zip(net.weights, grads, gb, new.weights, strict=True):
            et = eta * eG + u * eta * G.abs()
            out.append(SAFETY * (et + weight_rel_err * W.abs() + u * Wn.abs()))
    return tuple(out), ambiguous


# ---------------------------------------------------------------------------------------------- exact steps


def _exact_grads(weights: list[list[list[Fraction]]], x: list[list[Fraction]], y: list[list[Fraction]]):
    """Gradient of L = (1/2m) Σ_n ‖f(x_n) − y_n‖² in rationals, with σ'(0) = 0 (as ``relu.loss_and_grads``)."""
    m, d = len(x), len(weights)
    G = [[[Fraction(0)] * len(W[0]) for _ in W] for W in weights]
    for xn, yn in zip(x, y, strict=True):
        hs, zs = [list(xn)], []
        for k, W in enumerate(weights, start=1):
            z = [sum((w * h for w, h in zip(row, hs[-1], strict=True)), Fraction(0)) for row in W]
            zs.append(z)
            if k < d:
                hs.append([zi if zi > 0 else Fraction(0) for zi in z])
        delta = [(f - t) / m for f, t in zip(zs[-1], yn, strict=True)]
        for k in range(d, 0, -1):
            h = hs[k - 1]
            for i, di in enumerate(delta):
                if di:
                    row = G[k - 1][i]
                    for j, hj in enumerate(h):
                        row[j] += di * hj
            if k > 1:
                W = weights[k - 1]
                delta = [
                    sum((W[i][j] * delta[i] for i in range(len(W))), Fraction(0)) if zs[k - 2][j] > 0 else Fraction(0)
                    for j in range(len(W[0]))
                ]
    return G


def _exact_scaling(weights: list[list[list[Fraction]]]):
    sq = [[[w * w for w in row] for row in W] for W in weights]
    gin = [[Fraction(1)] * len(weights[0][0])]
    for S in sq:
        gin.append([sum((s * a for s, a in zip(row, gin[-1], strict=True)), Fraction(0)) for row in S])
    gout = [[Fraction(1)] * len(weights[-1])]
    for S in reversed(sq):
        b = gout[-1]
        gout.append([sum((S[i][j] * b[i] for i in range(len(S))), Fraction(0)) for j in range(len(S[0]))])
    gout = gout[::-1]
    return [[[gout[k][i] * gin[k - 1][j] for j in range(len(W[0]))] for i in range(len(W))]
            for k, W in enumerate(weights, start=1)]


def path_sgd_step_exact(weights, x, y, lr: Fraction):
    """One Path-SGD step in exact rational arithmetic (weights: [W_k as rows of Fractions]; x, y: rows)."""
    G = _exact_grads(weights, x, y)
    S = _exact_scaling(weights)
    return [[[w - (lr * g / s if s else Fraction(0)) for w, g, s in zip(rw, rg, rs, strict=True)]
             for rw, rg, rs in zip(W, Gk, Sk, strict=True)] for W, Gk, Sk in zip(weights, G, S, strict=True)]


def sgd_step_exact(weights, x, y, lr: Fraction):
    """One gradient step in exact rational arithmetic."""
    G = _exact_grads(weights, x, y)
    return [[[w - lr * g for w, g in zip(rw, rg, strict=True)] for rw, rg in zip(W, Gk, strict=True)]
            for W, Gk in zip(weights, G, strict=True)]


def step_commutes_exactly(net: ReluNet, scaling, x: Tensor, y: Tensor, lr: float, method: str = "path-sgd",
                          steps: int = 1) -> tuple[Tensor, Tensor]:
    """Per net (B,): whether ``steps`` exact steps from ρ_c(w) equal ρ_c of the steps from w (weights), and
    whether the two trajectories compute the same function on x after them — in rational arithmetic (every
    float64 is a dyadic rational; the factors c are taken exactly), mse loss, full batch."""
    from implreg.relu.capacity import (
        forward_fractions,
        rescale_fractions,
        rows_to_fractions,
        scaling_to_fractions,
        to_fractions,
    )

    step = {"path-sgd": path_sgd_step_exact, "sgd": sgd_step_exact}[method]
    xf, yf, eta = rows_to_fractions(x), rows_to_fractions(y), Fraction(lr)
    weights, functions = [], []
    for i in range(net.batch):
        a, cs = to_fractions(net, i), scaling_to_fractions(scaling, i)
        b = rescale_fractions(a, cs)
        for _ in range(steps):
            a, b = step(a, xf, yf, eta), step(b, xf, yf, eta)
        weights.append(rescale_fractions(a, cs) == b)
        functions.append(forward_fractions(a, xf) == forward_fractions(b, xf))
    return torch.tensor(weights), torch.tensor(functions)


def rescaled_training_gaps(net: ReluNet, scaling, x: Tensor, y: Tensor, lr: float, steps: int,
                           method: str = "path-sgd", cut: float = 1e3) -> Tensor:
    """max_x |f_t(w) − f_t(ρ(w))| along ``steps`` float64 steps from w and ρ(w), (B, T); the run stops early
    (T < steps) when a net diverges or the gap exceeds ``cut``."""
    from implreg.relu.network import rescale

    step = {"path-sgd": path_sgd_step, "sgd": sgd_step}[method]
    a, b, gaps = net, rescale(net, scaling), []
    for _ in range(steps):
        try:
            a, b = step(a, x, y, lr), step(b, x, y, lr)
        except InvalidInputError:  # NaN/Inf weights: diverged
            break
        gap = function_gap(a, b, x)
        if bool((gap > cut).any()):
            break
        gaps.append(gap)
    return torch.stack(gaps, dim=1) if gaps else torch.zeros(net.batch, 0, dtype=net.dtype)


# ---------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Trajectory:
    """Nets along a training run: ``nets[t]`` after t steps (t = 0 … steps, every ``record_every``-th kept),
    the training loss at each kept step (B, T) and the number of steps taken."""

    nets: tuple[ReluNet, ...]
    steps: tuple[int, ...]
    losses: Tensor

    @property
    def final(self) -> ReluNet:
        return self.nets[-1]


def train(
    net: ReluNet,
    x: Tensor,
    y: Tensor,
    *,
    method: str = "path-sgd",
    lr: float = 0.1,
    steps: int = 100,
    batch_size: int | None = None,
    kind: str = "mse",
    generator: torch.Generator | None = None,
    record_every: int = 1,
    until_loss: float | None = None,
) -> Trajectory:
    """Run ``steps`` steps of Path-SGD, SGD or Adam from ``net`` on (x, y).

    ``batch_size=None`` takes exact full-batch steps; otherwise each step uses the same random minibatch
    indices for every net of the batch (drawn from ``generator``), so two runs with equally seeded generators
    see the same minibatch sequence.  ``until_loss`` stops once every net's full training loss is below it.
    """
    if method not in ("path-sgd", "sgd", "adam"):
        raise InvalidInputError(f"method must be 'path-sgd', 'sgd' or 'adam', got {method!r}")
    x = _check_inputs(net, x)
    m = x.shape[1]
    nets, kept, losses = [net], [0], [_loss(net, x, y, kind)]
    cur = net
    if method == "adam":
        params = [W.detach().clone().requires_grad_(True) for W in net.weights]
        opt = torch.optim.Adam(params, lr=lr)
    for t in range(1, steps + 1):
        if batch_size is None or batch_size >= m:
            xb, yb = x, y
        else:
            gdev = generator.device if generator is not None else x.device
            idx = torch.randperm(m, generator=generator, device=gdev)[:batch_size].to(x.device)
            xb, yb = x[:, idx], _take_targets(y, idx, kind)
        if method == "path-sgd":
            cur = path_sgd_step(cur, xb, yb, lr, kind)
        elif method == "sgd":
            cur = sgd_step(cur, xb, yb, lr, kind)
        else:
            opt.zero_grad()
            with torch.enable_grad():
                _loss(ReluNet(tuple(params)), xb, yb, kind).sum().backward()
            opt.step()
            cur = ReluNet(tuple(p.detach().clone() for p in params))
        record = t % record_every == 0 or t == steps
        stop = False
        lv = None
        if until_loss is not None:
            lv = _loss(cur, x, y, kind)
            stop = bool((lv < until_loss).all())
        if record or stop:
            nets.append(cur)
            kept.append(t)
            losses.append(lv if lv is not None else _loss(cur, x, y, kind))
        if stop:
            break
    return Trajectory(tuple(nets), tuple(kept), torch.stack(losses, dim=1))


@dataclass(frozen=True)
class Fit:
    """Nets frozen at the first step where they met the stopping rule (``steps`` = −1: never met)."""

    net: ReluNet
    steps: Tensor
    converged: Tensor


def fit_to_zero_error(
    net: ReluNet,
    x: Tensor,
    y: Tensor,
    *,
    lr: float = 0.01,
    max_steps: int = 3000,
    stop_loss: float = 0.01,
) -> Fit:
    """Full-batch Adam on the cross-entropy until every net classifies all its training points correctly and
    has training loss < ``stop_loss`` (the stopping rule of the authors' code for Exploring,
    github.com/bneyshabur/generalization-bounds: cross-entropy < 0.01).  Each net is frozen (a snapshot is
    kept) at its own first step meeting the rule, so batch-mates never change its result; Adam's update is
    elementwise, so nets in a batch do not interact.  x is (m, D) or (B, m, D); y integer labels (m,) or (B, m).
    """
    x = _check_inputs(net, x)
    params = [W.detach().clone().requires_grad_(True) for W in net.weights]
    opt = torch.optim.Adam(params, lr=lr)
    done = torch.zeros(net.batch, dtype=torch.bool, device=net.device)
    steps = torch.full((net.batch,), -1, dtype=torch.int64, device=net.device)
    snap = [W.detach().clone() for W in params]
    for t in range(max_steps + 1):
        opt.zero_grad()
        with torch.enable_grad():
            cur = ReluNet(tuple(params))
            f = _forward(cur, x)
            y_ = y if y.ndim == 2 else y.unsqueeze(0).expand(net.batch, -1)
            lv = (torch.logsumexp(f, -1) - f.gather(-1, y_.unsqueeze(-1)).squeeze(-1)).mean(dim=1)
        with torch.no_grad():
            ok = (f.argmax(dim=-1) == y_).all(dim=1) & (lv < stop_loss) & ~done
            for sn, p in zip(snap, params, strict=True):
                sn[ok] = p.detach()[ok]
            steps[ok] = t
            done |= ok
        if bool(done.all()) or t == max_steps:
            break
        lv.sum().backward()
        opt.step()
    with torch.no_grad():  # nets that never met the rule keep their last weights (flagged by converged)
        for sn, p in zip(snap, params, strict=True):
            sn[~done] = p.detach()[~done]
    return Fit(ReluNet(tuple(snap)), steps, done)


def _take_targets(y: Tensor, idx: Tensor, kind: str) -> Tensor:
    """Targets of the minibatch ``idx``: y is (m,) or (B, m) for ce, (m, n_d) or (B, m, n_d) for mse."""
    batched = y.ndim == (2 if kind == "ce" else 3)
    return y[:, idx] if batched else y[idx]


def function_gap(a: ReluNet, b: ReluNet, x: Tensor) -> Tensor:
    """max_n ‖f_a(x_n) − f_b(x_n)‖_∞ per net, (B,): how far two nets are as functions on x."""
    return (_forward(a, x) - _forward(b, x)).abs().flatten(1).amax(dim=1)


def _is_power_of_two(c: float) -> bool:
    m, _ = math.frexp(abs(c))
    return c > 0 and m == 0.5


def fractions_of(rows: Sequence[Sequence[float]]) -> list[list[Fraction]]:
    """Rows of floats as exact rationals."""
    return [[Fraction(float(v)) for v in row] for row in rows]
