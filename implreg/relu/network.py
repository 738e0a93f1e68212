"""Bias-free layered ReLU networks, batched over networks, and their node-rescaling symmetry.

A batch of B nets with widths ``(n_0, …, n_d)`` is a tuple of weights ``(W_1, …, W_d)``, ``W_k`` of shape
(B, n_k, n_{k−1}), computing (Neyshabur, Tomioka & Srebro 2015, §2; CLAIMS.md notation)

    f_w(x) = W_d σ(W_{d−1} ⋯ σ(W_1 x)),   σ(z) = max(z, 0).

Inputs are row-stacked: x of shape (m, n_0) (shared by every net) or (B, m, n_0); outputs (B, m, n_d).
Units of layer k = 1 … d−1 are *hidden*; layer d holds the outputs.  Unit v ∈ layer k has incoming weights
row v of W_k and outgoing weights column v of W_{k+1}.

Node rescaling ρ_{c,v} (Neyshabur, Salakhutdinov & Srebro 2015, §3): multiply the incoming weights of a hidden
unit v by c > 0 and its outgoing weights by 1/c.  Since σ(cz) = cσ(z) for c > 0, f_{ρ(w)} = f_w.  A general
rescaling is one positive factor per hidden unit, ``NodeScaling``; it maps W_k ↦ diag(c_k) W_k diag(c_{k−1})⁻¹
with c_0 = c_d = 1.  Whole-layer rescaling W_k ↦ a W_k, W_{k+1} ↦ W_{k+1}/a is the constant-factor case.

Floating point.  u = eps/2 is the unit roundoff (2⁻⁵³ in float64) and γ_n = n·u/(1 − n·u) (Higham, *Accuracy
and Stability of Numerical Algorithms*, 2nd ed., Lemma 3.1): for any summation order (BLAS blocking, FMA),
|fl(Σ_{j≤n} a_j b_j) − Σ a_j b_j| ≤ γ_n Σ |a_j||b_j|  (Higham eq. 3.5).  The ``*_error_bound`` functions
propagate this through the net (running error analysis, first order in u, then inflated by a factor
``SAFETY`` that dominates the neglected O(u²) terms for every size used here).  The model assumes no
underflow: bounds are +inf for nets (or inputs) with a nonzero entry of magnitude < ``UNDERFLOW_GUARD``
(2⁻⁶⁰; products of ≤ 16 such factors stay in float64's normal range), never silently wrong.

Certified values (one rule for the ReLU wing: ``forward``, ``loss`` and every measure in ``implreg.relu.capacity``
return an ``implreg.numerics.Certified``; ``.value`` is the float64 tensor they used to return).  A quantity
that a claim compares must carry its error and re-evaluate in ball or exact arithmetic, so that
``certify(path_norm(net, 1) >= path_norm(net, 2))`` is decided at every net, ties included; returning tensors
from the measures and Certified from a parallel family would leave two ways, one of them a trap
(``certify(a == b)`` on floats).  The weights a net stands for are exact leaves (``certified_weights``): its
float64 entries, or, for a net made by ``rescale``, the exact rescaling ρ_c(w) of the source net by the drawn
float factors — so ``path_norm(rescale(net, s)) == path_norm(net)`` is the exact statement, not one about
the rounded copy.  What training runs on (``loss_and_grads``, the steps in ``implreg.relu.pathsgd``, autograd) stays
float: the private kernels ``_forward``/``_loss`` and ``forward_pass``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from implreg.errors import InvalidInputError
from implreg.numerics import Certified, maximum
from implreg.numerics import cat as ccat

__all__ = [
    "SAFETY",
    "UNDERFLOW_GUARD",
    "ForwardPass",
    "NodeScaling",
    "ReluNet",
    "activate_unit",
    "cat",
    "certified_weights",
    "flatten",
    "forward",
    "forward_pass",
    "gamma",
    "grad_error_bound",
    "loss",
    "loss_and_grads",
    "random_net",
    "rescale",
    "rescale_layer",
    "rescale_node",
    "tiny_entries",
    "unflatten",
    "unit_roundoff",
]

SAFETY = 1.01
"""Multiplier on first-order rounding bounds: the neglected terms are O((n·u)²), relatively ≤ n·u ≪ 1e-2."""

UNDERFLOW_GUARD = 2.0**-60
"""Nonzero magnitudes below this void the rounding bounds (they become +inf): see the module docstring."""


def tiny_entries(*tensors: Tensor) -> Tensor:
    """(B,) True where some tensor (batch dim first) has a nonzero entry of magnitude < UNDERFLOW_GUARD."""
    out = None
    for t in tensors:
        bad = ((t != 0) & (t.abs() < UNDERFLOW_GUARD)).reshape(t.shape[0], -1).any(dim=1)
        out = bad if out is None else out | bad
    return out

_DTYPES = (torch.float32, torch.float64)


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = eps/2: |fl(a ∘ b) − a ∘ b| ≤ u|a ∘ b| for every correctly rounded operation (IEEE 754)."""
    return torch.finfo(dtype).eps / 2


def gamma(n: int | float, dtype: torch.dtype) -> float:
    """γ_n = n·u/(1 − n·u), the relative error bound of n successive roundings (Higham 2002, Lemma 3.1)."""
    u = unit_roundoff(dtype)
    if n * u >= 0.5:
        raise InvalidInputError(f"γ_n undefined for n·u ≥ 1/2 (n = {n}, dtype {dtype}): the net is too large")
    return n * u / (1 - n * u)


# ---------------------------------------------------------------------------------------------- the net


@dataclass(frozen=True)
class ReluNet:
    """A batch of B bias-free layered ReLU nets with common widths ``(n_0, …, n_d)``.

    ``weights[k−1]`` is W_k of shape (B, n_k, n_{k−1}); all weights share one dtype (float32/float64) and one
    device.  Construction validates shapes and finiteness and raises ``InvalidInputError`` naming the layer.
    ``exact`` (set by ``rescale``): the exact weights the float ones round, as certified expressions of the
    source net's leaves; None means the float weights are the net (see ``certified_weights``).
    """

    weights: tuple[Tensor, ...]
    exact: tuple[Certified, ...] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        ws = tuple(self.weights)
        object.__setattr__(self, "weights", ws)
        if len(ws) == 0:
            raise InvalidInputError("a ReLU net needs at least one weight matrix")
        B = None
        for k, W in enumerate(ws, start=1):
            if not isinstance(W, Tensor):
                raise InvalidInputError(f"W_{k} must be a torch.Tensor, got {type(W).__name__}")
            if W.ndim != 3:
                raise InvalidInputError(
                    f"W_{k} must have shape (B, n_{k}, n_{k - 1}), got {tuple(W.shape)}; add a batch dimension"
                )
            if W.dtype not in _DTYPES:
                raise InvalidInputError(f"W_{k} must be float32 or float64, got {W.dtype}")
            if W.dtype != ws[0].dtype or W.device != ws[0].device:
                raise InvalidInputError(f"W_{k} is {W.dtype} on {W.device}, W_1 is {ws[0].dtype} on {ws[0].device}")
            if B is None:
                B = W.shape[0]
            elif W.shape[0] != B:
                raise InvalidInputError(f"W_{k} has batch {W.shape[0]}, W_1 has batch {B}")
            if k > 1 and W.shape[2] != ws[k - 2].shape[1]:
                raise InvalidInputError(
                    f"W_{k} has {W.shape[2]} columns but layer {k - 1} has {ws[k - 2].shape[1]} units"
                )
            if min(W.shape) < 1:
                raise InvalidInputError(f"W_{k} has an empty dimension: {tuple(W.shape)}")
            if not bool(torch.isfinite(W).all()):
                raise InvalidInputError(f"W_{k} has NaN/Inf entries")

    # shape and type -----------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """d, the number of weight layers (d − 1 hidden layers)."""
        return len(self.weights)

    @property
    def widths(self) -> tuple[int, ...]:
        """(n_0, n_1, …, n_d): input dimension, hidden widths, number of outputs."""
        return (int(self.weights[0].shape[2]), *(int(W.shape[1]) for W in self.weights))

    @property
    def batch(self) -> int:
        return int(self.weights[0].shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.weights[0].dtype

    @property
    def device(self) -> torch.device:
        return self.weights[0].device

    @property
    def num_paths(self) -> int:
        """Number of input→output paths, Π_k n_k."""
        return math.prod(self.widths)

    @property
    def num_params(self) -> int:
        return sum(int(W.shape[1] * W.shape[2]) for W in self.weights)

    # views ----------------------------------------------------------------------------------------------
    def __getitem__(self, index: int | slice | Tensor) -> ReluNet:
        """The sub-batch ``index`` (an int keeps a batch dimension of 1)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        exact = None if self.exact is None else tuple(E[index] for E in self.exact)
        return ReluNet(tuple(W[index] for W in self.weights), exact)

    def to(self, *args, **kwargs) -> ReluNet:
        """Moved/cast float weights (a dtype change drops the exact provenance: the floats are the net)."""
        return ReluNet(tuple(W.to(*args, **kwargs) for W in self.weights))

    def map(self, fn) -> ReluNet:
        """Apply ``fn`` to every weight tensor (e.g. ``abs``): a new net of the same widths."""
        return ReluNet(tuple(fn(W) for W in self.weights))

    def __call__(self, x: Tensor) -> Certified:
        return forward(self, x)


def cat(nets: Sequence[ReluNet]) -> ReluNet:
    """Concatenate batches of nets with equal widths along the batch dimension."""
    if not nets:
        raise InvalidInputError("cat needs at least one net")
    if len({n.widths for n in nets}) != 1:
        raise InvalidInputError(f"cat needs equal widths, got {[n.widths for n in nets]}")
    exact = None
    if any(n.exact is not None for n in nets):
        exact = tuple(ccat(list(es), 0) for es in zip(*(certified_weights(n) for n in nets), strict=True))
    return ReluNet(tuple(torch.cat(ws, dim=0) for ws in zip(*(n.weights for n in nets), strict=True)), exact)


def certified_weights(net: ReluNet) -> tuple[Certified, ...]:
    """The exact weights of ``net`` as certified values: its float entries as exact leaves (every float is a
    dyadic rational), or, for a net made by ``rescale``, the exact ρ_c(w) of the source net (``net.exact``)."""
    if net.exact is not None:
        return net.exact
    return tuple(Certified.exact(W) for W in net.weights)


def random_net(
    widths: Sequence[int],
    batch: int = 1,
    *,
    generator: torch.Generator | None = None,
    scale: float = 1.0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> ReluNet:
    """B nets with i.i.d. Gaussian weights N(0, scale²·2/n_{k−1}) (He et al. 2015 initialization)."""
    widths = _check_widths(widths)
    if not (isinstance(batch, int) and batch >= 1):
        raise InvalidInputError(f"batch must be an integer ≥ 1, got {batch!r}")
    ws = []
    for k in range(1, len(widths)):
        std = scale * math.sqrt(2.0 / widths[k - 1])
        # draw on the generator's device (torch requires it), then move: the same seed gives the same nets
        # whatever the target device
        gen_device = generator.device if generator is not None else device
        W = torch.randn(batch, widths[k], widths[k - 1], generator=generator, dtype=dtype, device=gen_device)
        ws.append((std * W).to(device) if device is not None else std * W)
    return ReluNet(tuple(ws))


def _check_widths(widths: Sequence[int]) -> tuple[int, ...]:
    try:
        ws = tuple(int(n) for n in widths)
    except (TypeError, ValueError):
        raise InvalidInputError(f"widths must be a sequence of integers ≥ 1, got {widths!r}") from None
    if len(ws) < 2 or min(ws) < 1 or any(int(n) != n for n in widths):
        raise InvalidInputError(f"widths must be at least two integers ≥ 1 (n_0, …, n_d), got {widths!r}")
    return ws


# ---------------------------------------------------------------------------------------------- forward


@dataclass(frozen=True)
class ForwardPass:
    """Every intermediate of f_w on a batch of inputs.

    ``pre[k−1]`` = z_k = h_{k−1} W_kᵀ (B, m, n_k) for k = 1 … d (``pre[-1]`` is the output);
    ``post[k]`` = h_k = σ(z_k) for k = 1 … d−1 and ``post[0]`` = h_0 = x broadcast to (B, m, n_0).
    """

    pre: tuple[Tensor, ...]
    post: tuple[Tensor, ...]

    @property
    def output(self) -> Tensor:
        return self.pre[-1]


def _check_inputs(net: ReluNet, x: Tensor, name: str = "x") -> Tensor:
    if not isinstance(x, Tensor):
        raise InvalidInputError(f"{name} must be a torch.Tensor of shape (m, n_0) or (B, m, n_0)")
    n0 = net.widths[0]
    if x.ndim == 2:
        x = x.unsqueeze(0).expand(net.batch, *x.shape)
    if x.ndim != 3 or x.shape[0] != net.batch or x.shape[2] != n0:
        raise InvalidInputError(
            f"{name} must have shape (m, {n0}) or ({net.batch}, m, {n0}) for nets of widths {net.widths}, "
            f"got {tuple(x.shape)}"
        )
    if x.dtype != net.dtype or x.device != net.device:
        raise InvalidInputError(f"{name} is {x.dtype} on {x.device}, the nets are {net.dtype} on {net.device}")
    return x


def forward_pass(net: ReluNet, x: Tensor) -> ForwardPass:
    """All pre-activations z_k and activations h_k of f_w(x) (see ``ForwardPass``), batched over nets."""
    h = _check_inputs(net, x)
    pre, post = [], [h]
    for k, W in enumerate(net.weights, start=1):
        z = h @ W.transpose(-1, -2)
        pre.append(z)
        if k < net.depth:
            h = torch.relu(z)
            post.append(h)
    return ForwardPass(tuple(pre), tuple(post))


def forward(net: ReluNet, x: Tensor) -> Certified:
    """f_w(x) = W_d σ(W_{d−1} ⋯ σ(W_1 x)) for every net, certified: x (m, n_0) or (B, m, n_0) ↦ (B, m, n_d).

    Inputs are exact leaves, weights ``certified_weights(net)``; σ = max(·, 0).  ``.value`` is the float64 pass.
    """
    h = Certified.exact(_check_inputs(net, x))
    ws = certified_weights(net)
    for W in ws[:-1]:
        h = maximum(h @ W.mT, 0.0)
    return h @ ws[-1].mT


def _forward(net: ReluNet, x: Tensor) -> Tensor:
    """The float64 kernel of ``forward`` (training, autograd, sampling): no error propagation."""
    h = _check_inputs(net, x)
    for W in net.weights[:-1]:
        h = torch.relu(h @ W.transpose(-1, -2))
    return h @ net.weights[-1].transpose(-1, -2)


def _forward_error(net: ReluNet, fp: ForwardPass, weight_rel_err: float) -> tuple[Tensor, ...]:
    """Bounds E_k ≥ |ẑ_k − z_k| on the float pre-activations of ``forward_pass`` (running error analysis):
        E_k = SAFETY·((γ_{n_{k−1}} + ε_w) |ĥ_{k−1}| |W_k|ᵀ + E_{k−1} |W_k|ᵀ),   E_0 = 0   (Higham eq. 3.5),
    z_k for the exact net w* with |w − w*| ≤ ε_w|w|; σ is 1-Lipschitz.  Used by ``grad_error_bound``, which
    needs the per-layer bounds to certify the ReLU masks of a float gradient.
    """
    out = []
    E = torch.zeros_like(fp.post[0])
    tiny = tiny_entries(fp.post[0], *net.weights).view(-1, 1, 1)
    for k, W in enumerate(net.weights, start=1):
        g = gamma(net.widths[k - 1], net.dtype) + weight_rel_err
        A = W.abs().transpose(-1, -2)
        E = SAFETY * (g * (fp.post[k - 1].abs() @ A) + E @ A)
        out.append(torch.where(tiny, torch.full_like(E, math.inf), E))
    return tuple(out)


# ---------------------------------------------------------------------------------------------- losses


def _check_targets(net: ReluNet, y: Tensor, m: int, kind: str) -> Tensor:
    if not isinstance(y, Tensor):
        raise InvalidInputError("targets y must be a torch.Tensor")
    if kind == "ce":
        if y.dtype not in (torch.int64, torch.int32):
            raise InvalidInputError(f"cross-entropy targets must be integer class labels, got {y.dtype}")
        if y.ndim == 1:
            y = y.unsqueeze(0).expand(net.batch, m)
        if y.shape != (net.batch, m):
            raise InvalidInputError(f"labels must have shape ({m},) or ({net.batch}, {m}), got {tuple(y.shape)}")
        if bool(((y < 0) | (y >= net.widths[-1])).any()):
            raise InvalidInputError(f"labels must lie in 0 … {net.widths[-1] - 1} (one output per class)")
        return y.to(net.device)
    nd = net.widths[-1]
    if y.ndim == 2:
        y = y.unsqueeze(0).expand(net.batch, *y.shape)
    if y.shape != (net.batch, m, nd):
        raise InvalidInputError(f"regression targets must have shape ({m}, {nd}) or ({net.batch}, {m}, {nd}), "
                                f"got {tuple(y.shape)}")
    return y


def loss(net: ReluNet, x: Tensor, y: Tensor, kind: str = "mse") -> Certified:
    """Empirical loss per net, (B,), certified: ``mse`` L = (1/2m) Σ_n ‖f(x_n) − y_n‖², or ``ce`` (cross-entropy)
    L = (1/m) Σ_n [log Σ_j e^{f_j(x_n)} − f_{y_n}(x_n)]  (targets exact; the log-sum-exp is shifted by the float
    row max c, an exact identity log Σ e^{f_j} = c + log Σ e^{f_j − c})."""
    f = forward(net, x)
    m = f.shape[1]
    if kind == "mse":
        r = f - _check_targets(net, y, m, kind)
        return 0.5 * (r * r).sum(-1).sum(-1) / m
    if kind == "ce":
        y = _check_targets(net, y, m, kind)
        c = f.value.amax(dim=-1, keepdim=True)
        lse = (f - c).exp().sum(-1).log() + c.squeeze(-1)
        b = torch.arange(net.batch, device=net.device)[:, None]
        n = torch.arange(m, device=net.device)[None, :]
        return (lse - f[b, n, y]).sum(-1) / m
    raise InvalidInputError(f"loss kind must be 'mse' or 'ce', got {kind!r}")


def _loss(net: ReluNet, x: Tensor, y: Tensor, kind: str = "mse") -> Tensor:
    """The float64 kernel of ``loss`` (training, autograd)."""
    return _loss_from_output(net, _forward(net, x), y, kind)


def _loss_from_output(net: ReluNet, f: Tensor, y: Tensor, kind: str) -> Tensor:
    m = f.shape[1]
    if kind == "mse":
        y = _check_targets(net, y, m, kind)
        r = f - y
        return 0.5 * (r * r).sum(dim=(1, 2)) / m
    if kind == "ce":
        y = _check_targets(net, y, m, kind)
        lse = torch.logsumexp(f, dim=-1)
        return (lse - f.gather(-1, y.unsqueeze(-1)).squeeze(-1)).mean(dim=-1)
    raise InvalidInputError(f"loss kind must be 'mse' or 'ce', got {kind!r}")


def loss_and_grads(net: ReluNet, x: Tensor, y: Tensor, kind: str = "mse") -> tuple[Tensor, tuple[Tensor, ...]]:
    """Loss (B,) and ∂L/∂W_k for k = 1 … d by backpropagation in closed form (no autograd).

    δ_d = ∂L/∂f = (f − y)/m (mse) or (softmax(f) − e_y)/m (ce); δ_k = (δ_{k+1} W_{k+1}) ⊙ 1[z_k > 0];
    ∂L/∂W_k = Σ_n δ_k(x_n)ᵀ h_{k−1}(x_n)  (Rumelhart, Hinton & Williams 1986).  σ'(0) is taken as 0, the
    convention under which the gradient map commutes exactly with node rescaling (z ↦ cz keeps 1[z > 0]).
    """
    fp = forward_pass(net, x)
    return _backward(net, fp, y, kind)


def _delta_out(net: ReluNet, f: Tensor, y: Tensor, kind: str) -> Tensor:
    m = f.shape[1]
    if kind == "mse":
        y = _check_targets(net, y, m, kind)
        return (f - y) / m
    if kind == "ce":
        y = _check_targets(net, y, m, kind)
        p = torch.softmax(f, dim=-1)
        return (p - torch.nn.functional.one_hot(y, f.shape[-1]).to(f.dtype)) / m
    raise InvalidInputError(f"loss kind must be 'mse' or 'ce', got {kind!r}")


def _backward(net: ReluNet, fp: ForwardPass, y: Tensor, kind: str) -> tuple[Tensor, tuple[Tensor, ...]]:
    value = _loss_from_output(net, fp.output, y, kind)
    delta = _delta_out(net, fp.output, y, kind)
    grads: list[Tensor] = [None] * net.depth  # type: ignore[list-item]
    for k in range(net.depth, 0, -1):
        grads[k - 1] = delta.transpose(-1, -2) @ fp.post[k - 1]
        if k > 1:
            delta = (delta @ net.weights[k - 1]) * (fp.pre[k - 2] > 0).to(delta.dtype)
    return value, tuple(grads)


def grad_error_bound(
    net: ReluNet, x: Tensor, y: Tensor, weight_rel_err: float = 0.0
) -> tuple[tuple[Tensor, ...], Tensor]:
    """Bounds on |∂L/∂W_k computed − exact| for the mse loss, and a per-net flag of *undecidable* ReLU masks.

    Exact means: the gradient of the exact net w* with |w − w*| ≤ ε_w|w| (see ``_forward_error``), at
    exact inputs and targets.  Running error analysis, first order in u (u = unit roundoff), times SAFETY:
        |r̂ − r| ≤ E_d + u|r̂|  (r = f − y),   δ_d = r/m: e_d = (E_d + u|r̂|)/m + u|δ̂_d|,
        e_k = 1[ẑ_k > 0] ⊙ (e_{k+1} |W_{k+1}| + (γ_{n_{k+1}} + ε_w) |δ̂_{k+1}| |W_{k+1}|),
        |Ĝ_k − G_k| ≤ e_kᵀ|ĥ_{k−1}| + |δ̂_k|ᵀ E_{k−1} + γ_m |δ̂_k|ᵀ |ĥ_{k−1}|   (G_k = δ_kᵀ h_{k−1}).
    These hold only if every mask 1[z_k > 0] is the exact one, guaranteed where |ẑ_k| > E_k or E_k = 0
    (then ẑ_k = z_k).  ``ambiguous[b]`` is True when some pre-activation of net b has 0 < |ẑ| ≤ E or ẑ = 0
    with E > 0: there the float gradient may use the wrong mask and the bound is void (decide exactly).
    """
    fp = forward_pass(net, x)
    E = _forward_error(net, fp, weight_rel_err)
    u = unit_roundoff(net.dtype)
    m = fp.output.shape[1]
    d = net.depth
    y = _check_targets(net, y, m, "mse")
    r = fp.output - y
    delta = r / m
    e = SAFETY * ((E[-1] + u * r.abs()) / m + u * delta.abs())
    ambiguous = torch.zeros(net.batch, dtype=torch.bool, device=net.device)
    for k in range(1, d):
        z, Ez = fp.pre[k - 1], E[k - 1]
        amb = (Ez > 0) & (z.abs() <= Ez)
        ambiguous |= amb.flatten(1).any(dim=1)
    bounds: list[Tensor] = [None] * d  # type: ignore[list-item]
    gm = gamma(m, net.dtype)
    for k in range(d, 0, -1):
        h = fp.post[k - 1]
        Eh = E[k - 2] if k > 1 else torch.zeros_like(h)
        bounds[k - 1] = SAFETY * (
            e.transpose(-1, -2) @ h.abs() + delta.abs().transpose(-1, -2) @ Eh
            + gm * (delta.abs().transpose(-1, -2) @ h.abs())
        )
        if k > 1:
            W = net.weights[k - 1]
            g = gamma(net.widths[k], net.dtype) + weight_rel_err
            mask = (fp.pre[k - 2] > 0).to(delta.dtype)
            e = SAFETY * mask * (e @ W.abs() + g * (delta.abs() @ W.abs()))
            delta = (delta @ W) * mask
    return tuple(bounds), ambiguous


# ---------------------------------------------------------------------------------------------- flat view


def flatten(net: ReluNet) -> Tensor:
    """All weights of each net as one vector, (B, P), layer by layer, row-major."""
    return torch.cat([W.reshape(net.batch, -1) for W in net.weights], dim=1)


def unflatten(flat: Tensor, widths: Sequence[int]) -> ReluNet:
    """Inverse of ``flatten``: (B, P) ↦ ReluNet of the given widths (views into ``flat``, autograd-friendly)."""
    widths = _check_widths(widths)
    P = sum(widths[k] * widths[k - 1] for k in range(1, len(widths)))
    if flat.ndim != 2 or flat.shape[1] != P:
        raise InvalidInputError(f"flat weights must have shape (B, {P}) for widths {widths}, got {tuple(flat.shape)}")
    ws, i = [], 0
    for k in range(1, len(widths)):
        n = widths[k] * widths[k - 1]
        ws.append(flat[:, i : i + n].reshape(flat.shape[0], widths[k], widths[k - 1]))
        i += n
    return ReluNet(tuple(ws))


# ---------------------------------------------------------------------------------------------- rescaling


@dataclass(frozen=True)
class NodeScaling:
    """One factor per hidden unit: ``factors[k−1]`` of shape (B, n_k) for hidden layers k = 1 … d−1.

    Applied by ``rescale``: W_k ↦ diag(c_k) W_k diag(c_{k−1})⁻¹ (c_0 = c_d = 1).  Positive factors give
    function-preserving rescalings (Neyshabur, Salakhutdinov & Srebro 2015, §3); negative or zero factors are
    representable on purpose (negative controls) and flagged by ``is_positive``.
    """

    factors: tuple[Tensor, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "factors", tuple(self.factors))

    @staticmethod
    def identity(net: ReluNet) -> NodeScaling:
        return NodeScaling(tuple(torch.ones(net.batch, n, dtype=net.dtype, device=net.device)
                                 for n in net.widths[1:-1]))

    @staticmethod
    def single(net: ReluNet, layer: int, unit: int, c: float | Tensor) -> NodeScaling:
        """ρ_{c,v}: factor c at unit ``unit`` of hidden layer ``layer`` (1 … d−1), 1 elsewhere; c scalar or (B,)."""
        _check_hidden(net, layer, unit)
        fs = list(NodeScaling.identity(net).factors)
        c = torch.as_tensor(c, dtype=net.dtype, device=net.device).expand(net.batch)
        fs[layer - 1] = fs[layer - 1].clone()
        fs[layer - 1][:, unit] = c
        return NodeScaling(tuple(fs))

    @staticmethod
    def whole_layer(net: ReluNet, layer: int, c: float | Tensor) -> NodeScaling:
        """W_layer ↦ c·W_layer, W_{layer+1} ↦ W_{layer+1}/c: the same factor at every unit of a hidden layer."""
        _check_hidden(net, layer, 0)
        fs = list(NodeScaling.identity(net).factors)
        c = torch.as_tensor(c, dtype=net.dtype, device=net.device).expand(net.batch)
        fs[layer - 1] = c[:, None].expand_as(fs[layer - 1]).clone()
        return NodeScaling(tuple(fs))

    @staticmethod
    def from_layer_factors(net: ReluNet, a: Tensor) -> NodeScaling:
        """W_k ↦ a_k W_k for k < d and W_d ↦ W_d / Π_{k<d} a_k: cumulative factors C_k = Π_{j≤k} a_j per layer.

        ``a`` has shape (B, d−1) (or (d−1,)); the output layer absorbs the inverse product, so the result is
        a rescaling whatever the rounding of the products.
        """
        a = torch.as_tensor(a, dtype=net.dtype, device=net.device)
        if a.ndim == 1:
            a = a.expand(net.batch, -1)
        if a.shape != (net.batch, net.depth - 1):
            raise InvalidInputError(
                f"layer factors must have shape ({net.batch}, {net.depth - 1}), got {tuple(a.shape)}"
            )
        C = torch.cumprod(a, dim=1)
        return NodeScaling(tuple(C[:, k - 1 : k].expand(net.batch, n).clone()
                                 for k, n in enumerate(net.widths[1:-1], start=1)))

    @property
    def is_positive(self) -> Tensor:
        """(B,) True where every factor is > 0 (a function-preserving rescaling)."""
        if not self.factors:
            return torch.ones(0, dtype=torch.bool)
        return torch.stack([(c > 0).all(dim=1) for c in self.factors]).all(dim=0)

    def nearest_powers_of_two(self) -> NodeScaling:
        """Every factor c replaced by 2^round(log₂ c) (c > 0): rescalings by these are exact in floating point."""
        return NodeScaling(tuple(torch.exp2(torch.round(torch.log2(c))) for c in self.factors))

    def inverse(self) -> NodeScaling:
        return NodeScaling(tuple(1.0 / c for c in self.factors))

    def compose(self, other: NodeScaling) -> NodeScaling:
        """Factors of ``self ∘ other`` (apply ``other`` first): products per unit."""
        return NodeScaling(tuple(a * b for a, b in zip(self.factors, other.factors, strict=True)))

    def __call__(self, net: ReluNet) -> ReluNet:
        return rescale(net, self)


def _check_hidden(net: ReluNet, layer: int, unit: int) -> None:
    if net.depth < 2:
        raise InvalidInputError(f"nets of depth {net.depth} have no hidden units to rescale")
    if not (isinstance(layer, int) and 1 <= layer <= net.depth - 1):
        raise InvalidInputError(f"hidden layer must be in 1 … {net.depth - 1}, got {layer!r}")
    if not (isinstance(unit, int) and 0 <= unit < net.widths[layer]):
        raise InvalidInputError(f"unit must be in 0 … {net.widths[layer] - 1} for layer {layer}, got {unit!r}")


def rescale(net: ReluNet, scaling: NodeScaling) -> ReluNet:
    """ρ_c(w): W_k ↦ diag(c_k) W_k diag(c_{k−1})⁻¹ with c_0 = c_d = 1  (Neyshabur et al. 2015b, §3).

    The result's ``exact`` weights are ρ_c(w) itself (certified products of the source's exact weights and the
    float factors, taken as exact), which the certified quantities use.
    Each weight is multiplied by its head factor and then divided by its tail factor: at most two correctly
    rounded operations, so the result equals the exact rescaling up to relative error 2u per weight (≤ γ_2),
    and exactly when the factors are powers of two (no overflow or underflow).
    """
    fs = scaling.factors
    if len(fs) != net.depth - 1 or any(c.shape != (net.batch, n) for c, n in zip(fs, net.widths[1:-1], strict=True)):
        raise InvalidInputError(
            f"a NodeScaling for nets of widths {net.widths} and batch {net.batch} needs factors of shapes "
            f"{[(net.batch, n) for n in net.widths[1:-1]]}, got {[tuple(c.shape) for c in fs]}"
        )
    ws, exact = [], []
    for k, (W, E) in enumerate(zip(net.weights, certified_weights(net), strict=True), start=1):
        if k <= net.depth - 1:
            c = fs[k - 1].to(W)[:, :, None]
            W, E = W * c, E * c
        if k >= 2:
            c = fs[k - 2].to(W)[:, None, :]
            W, E = W / c, E / c
        ws.append(W)
        exact.append(E)
    return ReluNet(tuple(ws), tuple(exact))


def activate_unit(net: ReluNet, unit: int, x0: Tensor) -> ReluNet:
    """The nets with first-layer hidden unit ``unit`` active on the input x0 (n_0,): its incoming row r becomes
    −r where r·x0 < 0 and r + x0 where r·x0 = 0 (then r·x0 = ‖x0‖² > 0 for x0 ≠ 0); other weights unchanged."""
    _check_hidden(net, 1, unit)
    x0 = x0.to(net.weights[0])
    if x0.shape != (net.widths[0],) or not bool((x0 != 0).any()):
        raise InvalidInputError(f"x0 must be a nonzero input of shape ({net.widths[0]},), got {tuple(x0.shape)}")
    W1 = net.weights[0].clone()
    r = W1[:, unit]
    dot = (r @ x0)[:, None]
    W1[:, unit] = torch.where(dot < 0, -r, torch.where(dot == 0, r + x0, r))
    return ReluNet((W1, *net.weights[1:]))


def rescale_node(net: ReluNet, layer: int, unit: int, c: float | Tensor) -> ReluNet:
    """ρ_{c,v}(w) for the single hidden unit v = (layer, unit): incoming × c, outgoing ÷ c."""
    return rescale(net, NodeScaling.single(net, layer, unit, c))


def rescale_layer(net: ReluNet, layer: int, c: float | Tensor) -> ReluNet:
    """W_layer ↦ c·W_layer, W_{layer+1} ↦ W_{layer+1}/c (whole-layer rescaling of a hidden layer)."""
    return rescale(net, NodeScaling.whole_layer(net, layer, c))
