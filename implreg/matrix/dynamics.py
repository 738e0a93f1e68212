"""Deep matrix factorization dynamics as certified values (Arora, Cohen & Hazan 2018; Arora, Cohen, Hu & Luo 2019).

``W = W_N ⋯ W_1`` under gradient flow ``Ẇ_j = −∂ℓ/∂W_j``.  Factors and end-to-end matrices may have any batch
shape (B, …, a, b) and be plain tensors (exact inputs: a float64 is a dyadic rational) or ``Certified`` values;
results are ``Certified`` (but for a mask and the depth sweep's plain states), their rounding and the inputs'
errors carried by certified arithmetic, so claims hand them to ``certify`` directly:

* :func:`loss` and :func:`loss_gradient` — ℓ(W) and ∇ℓ(W);
* :func:`balancedness` and :func:`balancedness_drift` — D_j = W_{j+1}ᵀW_{j+1} − W_jW_jᵀ, conserved by the flow,
  and its drift along a solve against the drift the integrator's local errors allow;
* :func:`end_to_end` and :func:`end_to_end_rate` — W and Ẇ formed from the factor velocities (any init);
* :func:`solve_across_depths` — solutions from one end-to-end init at several depths (Arora et al. 2019, §5), and
  :func:`depth_sweep` — their effective ranks and reconstruction errors over a set of completion problems;
* :func:`solve_end_to_end` — W(t) from the end-to-end ODE of balanced init (Arora et al. 2018, Theorem 1);
* :func:`singular_value_rates` and :func:`singular_value_rule` — u_rᵀẆv_r and −N σ_r^{2−2/N} ⟨∇ℓ, u_r v_rᵀ⟩
  (Arora et al. 2019, Theorem 3), at the :func:`simple_singular_values`.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from implreg.errors import InvalidInputError
from implreg.matrix.factorization import balanced_init, end_to_end_velocity
from implreg.matrix.flow.certified import certified_loss
from implreg.matrix.flow.gradient_flow import TWO_TOL_FACTOR, FlowSolution, solve, two_tolerance_combine_entries
from implreg.matrix.flow.integrate import integrate
from implreg.matrix.measures import effective_rank, frobenius, singular_values
from implreg.matrix.problems import Problem, stack_problems
from implreg.numerics import Certified, Refinement, lift
from implreg.numerics.balls import _to_ball as to_ball  # value ± error → Arb balls, as measured leaves get them

__all__ = [
    "balancedness",
    "balancedness_drift",
    "depth_sweep",
    "end_to_end",
    "end_to_end_rate",
    "loss",
    "loss_gradient",
    "simple_singular_values",
    "singular_value_rates",
    "singular_value_rule",
    "solve_across_depths",
    "solve_end_to_end",
]

Matrix = Tensor | Certified


def _batched(problem: Problem, name: str, extra: int, tail: int) -> Tensor:
    """A problem tensor (B, *tail dims) reshaped to (B, 1 × extra, *tail dims) to broadcast over W's extra dims."""
    t = getattr(problem, name)
    return t.reshape(t.shape[0], *([1] * extra), *t.shape[t.ndim - tail:])


def loss(problem: Problem, W: Matrix) -> Certified:
    """ℓ(W) = ½ Σ_k (⟨A_k, W⟩ − y_k)² (completion: ½‖mask ⊙ (W − b)‖²) of matrices W (B, …, d, d') → (B, …), by
    certified arithmetic: a plain W is exact, a certified one (a simulator's ``W(t)``) carries its error."""
    return certified_loss(problem, lift(W))


def loss_gradient(problem: Problem, W: Matrix) -> Certified:
    """∇ℓ(W) = Σ_k (⟨A_k, W⟩ − y_k) A_k (completion: mask ⊙ (W − b)) of matrices W (B, …, d, d'), the
    problem's B instances broadcast over the middle dimensions (the problem's tensors are exact)."""
    W = lift(W)
    extra = W.ndim - 3
    if problem.is_completion:
        return (W - _batched(problem, "target", extra, 2)) * _batched(problem, "mask", extra, 2)
    A = _batched(problem, "A", extra, 3)                              # (B, 1…, K, d, d')
    r = (W.unsqueeze(-3) * A).flatten(-2).sum(-1) - _batched(problem, "y", extra, 1)
    return (r.unsqueeze(-1).unsqueeze(-1) * A).sum(-3)


def _product(factors: Sequence[Certified]) -> Certified | None:
    """W_k ⋯ W_1 of factors (W_1, …, W_k), None for an empty list (the identity)."""
    out = None
    for Wj in factors:
        out = Wj if out is None else Wj @ out
    return out


def end_to_end(factors: Sequence[Matrix]) -> Certified:
    """W = W_N ⋯ W_1 of factors (B, …, a_j, b_j), the rounding of the products carried."""
    if not factors:
        raise InvalidInputError("end_to_end needs at least one factor")
    return _product([lift(W) for W in factors])


def balancedness(factors: Sequence[Matrix]) -> tuple[Certified, ...]:
    """D_j = W_{j+1}ᵀW_{j+1} − W_jW_jᵀ for j = 1 … N−1, each (B, …, a_j, a_j).  Gradient flow keeps every D_j
    constant, for any loss and any init (Arora et al. 2018, proof of Theorem 1); balanced init is D_j = 0."""
    fs = [lift(W) for W in factors]
    return tuple(Wn.mT @ Wn - Wj @ Wj.mT for Wj, Wn in itertools.pairwise(fs))


def balancedness_drift(sol: FlowSolution) -> list[tuple[Certified, Certified]]:
    """Per j = 1 … N−1: ``(drift, allowed)`` at the solve's save times, each (B, T).

    ``drift`` = ‖D_j(θ̂(t)) − D_j(θ_0)‖_F of the computed states θ̂(t) taken as exact numbers (rounding carried,
    rigorous).  ``allowed`` is the drift that the integrator's local errors explain if D_j is exactly conserved
    (an estimate): with ε_m = θ_{m+1} − φ_h(θ_m) the local error of step m and φ_h the exact flow map, D_j(φ_h θ_m) =
    D_j(θ_m), so D_j(θ_n) − D_j(θ_0) = Σ_m [D_j(φ_hθ_m + ε_m) − D_j(φ_hθ_m)]; D_j is quadratic, so each term is
    ≤ 2‖W_{j+1}‖₂‖ε_{m,j+1}‖_F + 2‖W_j‖₂‖ε_{m,j}‖_F + ‖ε_m‖², ‖ε_{m,j}‖_F ≤ √|W_j|·‖ε_m‖_∞.  Summed, with
    E(t) = Σ_m ‖ε_m‖_∞ (the solver's ``save_error``: its summed local error estimates, an estimate of E):
        allowed = 2(max_{s≤t}‖W_{j+1}‖₂√|W_{j+1}| + max_{s≤t}‖W_j‖₂√|W_j|)·E + (|W_{j+1}| + |W_j|)·E²,
    |W| the number of entries, the maxima taken over the save times ≤ t (save densely: that is part of the
    estimate).  Earlier defects are not amplified by the flow (each stays in D_j once), which is why this is far
    tighter than the two-tolerance error of the states (measured 1e-10 against 1e-5 at rtol 1e-9).  A save at
    t = 0 compares 0 with 0 and is undecidable: save at t > 0 only.
    """
    if sol.init is None:
        raise InvalidInputError("balancedness_drift needs the solve's initial factors (sol.init)")
    states = sol.layout.unpack(sol.result.save_y)                    # (B, T, a_j, b_j)
    init = [W.unsqueeze(1) for W in sol.layout.unpack(sol.init)]      # (B, 1, a_j, b_j)
    E = sol.result.save_error                                         # (B, T)
    out = []
    for j, (D_t, D_0) in enumerate(zip(balancedness(states), balancedness(init), strict=True)):
        gain, size = torch.zeros_like(E), 0
        for W in states[j:j + 2]:
            n = W.shape[-2] * W.shape[-1]
            gain = gain + torch.cummax(torch.linalg.matrix_norm(W, ord=2), dim=1).values * math.sqrt(n)
            size += n
        allowed = 2 * gain * E + size * E * E
        out.append((frobenius(D_t - D_0), Certified.measured(allowed, 0.0, rigorous=False,
                                                             label=f"drift of D_{j + 1} the local errors allow")))
    return out


def end_to_end_rate(problem: Problem, factors: Sequence[Matrix]) -> Certified:
    """Ẇ = Σ_j W_{N:j+1} Ẇ_j W_{j−1:1} with Ẇ_j = −W_{N:j+1}ᵀ ∇ℓ(W) W_{j−1:1}ᵀ (the chain rule, Arora et al. 2018,
    eq. 4), for factors of any init; (B, …, d, d')."""
    fs = [lift(W) for W in factors]
    G = loss_gradient(problem, _product(fs))
    out = None
    for j in range(len(fs)):
        above, below = _product(fs[j + 1:]), _product(fs[:j])
        term = G if above is None else (above @ above.mT) @ G
        term = term if below is None else term @ (below.mT @ below)
        out = term if out is None else out + term
    return -out


def _svd_directions(W: Certified) -> tuple[Certified, Certified]:
    """The float64 singular vectors (U, V) of W's value, as exact inputs (their own rounding is NOT carried)."""
    U, _, Vh = torch.linalg.svd(W.value, full_matrices=False)
    return Certified.exact(U), Certified.exact(Vh.mT)


def _diagonal_of(M: Certified) -> Certified:
    k = min(M.shape[-2], M.shape[-1])
    idx = torch.arange(k, device=M.device)
    return M[..., idx, idx]


def simple_singular_values(W: Matrix, rel_gap: float) -> Tensor:
    """Boolean mask (B, …, k): σ_r(W) apart from the other singular values and from 0 by more than rel_gap·σ_1,
    where σ_r is simple and the float64 singular vectors err by ≲ u‖W‖/gap (Wedin 1972)."""
    S = torch.linalg.svdvals(lift(W).value)
    steps = S[..., :-1] - S[..., 1:]
    below = torch.cat([steps, S[..., -1:]], dim=-1)
    above = torch.cat([torch.full_like(S[..., :1], math.inf), steps], dim=-1)
    return torch.minimum(below, above) > rel_gap * S[..., :1]


def singular_value_rates(W: Matrix, W_dot: Matrix) -> Certified:
    """u_rᵀẆv_r (B, …, k) with (u_r, v_r) the float64 singular vectors of W's value (taken as exact): the rate
    σ̇_r of a simple singular value when (u_r, v_r) are W's exact singular vectors (Stewart & Sun 1990, IV.2)."""
    W, W_dot = lift(W), lift(W_dot)
    U, V = _svd_directions(W)
    return _diagonal_of(U.mT @ W_dot @ V)


def singular_value_rule(problem: Problem, W: Matrix, depth: int) -> Certified:
    """−N σ_r^{2−2/N} ⟨∇ℓ(W), u_r v_rᵀ⟩ (B, …, k) (Arora et al. 2019, Theorem 3: σ̇_r under balanced init), σ_r
    certified, (u_r, v_r) as in :func:`singular_value_rates`."""
    W = lift(W)
    U, V = _svd_directions(W)
    projected = _diagonal_of(U.mT @ loss_gradient(problem, W) @ V)
    return -depth * singular_values(W) ** (2 - 2 / depth) * projected


def solve_across_depths(problem: Problem, W0: Tensor, depths: Sequence[int], *, loss_target: float,
                        t_max: float = 1e5, rtol: float = 1e-9, atol: float = 1e-12) -> Tensor:
    """End-to-end solutions (B, K, d, d'), K = len(depths): per depth N, gradient flow (``flow.solve``) from the
    balanced factors of the same W0 (B, d, d') (``factorization.balanced_init``, identity rotations) until
    ℓ ≤ loss_target or t_max; only depth changes (the protocol of Arora et al. 2019, §5).  Raises where a solve
    fails.  Plain float64 states: for experiments whose statistics use values, not certified comparisons."""
    out = []
    for N in depths:
        sol = solve(problem, balanced_init(W0, N), loss_target=loss_target, t_max=t_max, rtol=rtol, atol=atol)
        sol.raise_on_failure()
        out.append(sol.end_to_end)
    return torch.stack(out, dim=1)


def depth_sweep(problems: Sequence[Any], depths: Sequence[int], *, loss_target: float) -> tuple[Tensor, Tensor]:
    """Effective rank and relative error ‖W − M‖_F/‖M‖_F (n, len(depths)) of the solutions of low-rank completion
    problems (each with ``shape``, ``init_scale``, ``problem()``, ``truth_tensor()``) at every depth, all depths from
    one W(0) per problem: a Gaussian direction seeded by the problem's repr (so a replay reproduces it), scaled to
    ‖W(0)‖_F = init_scale (:func:`solve_across_depths`, the protocol of Arora et al. 2019, §5)."""
    erank, error = (torch.full((len(problems), len(depths)), math.nan, dtype=torch.float64) for _ in range(2))
    for shape in sorted({p.shape for p in problems}):
        idx = [i for i, p in enumerate(problems) if p.shape == shape]
        group = [problems[i] for i in idx]
        Z = torch.stack([torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(
            int.from_bytes(hashlib.sha256(repr(p).encode()).digest()[:4], "big"))) for p in group])
        scale = torch.tensor([p.init_scale for p in group], dtype=torch.float64)[:, None, None]
        W = solve_across_depths(stack_problems([p.problem() for p in group]), scale * Z / torch.linalg.matrix_norm(
            Z)[:, None, None], depths, loss_target=loss_target)
        M = torch.stack([p.truth_tensor() for p in group]).unsqueeze(1)
        erank[idx] = effective_rank(W).value
        error[idx] = torch.linalg.matrix_norm(W - M) / torch.linalg.matrix_norm(M)
    return erank, error


def solve_end_to_end(problem: Problem, W0: Tensor, depth: int | Tensor, *, t_max: float, save_at: Sequence[float],
                     rtol: float = 1e-10, atol: float = 1e-13, max_steps: int = 100_000) -> Certified:
    """W(t) at the times ``save_at`` (B, T, d, d') from the end-to-end ODE of balanced init,
    Ẇ = −Σ_{j=1}^{N} (WWᵀ)^{(j−1)/N} ∇ℓ(W) (WᵀW)^{(N−j)/N} (Arora et al. 2018, Theorem 1), W(0) = W0 (B, d, d'),
    ``depth`` one N or a (B,) tensor of per-instance depths (instances of several depths in one solve: each row
    has the bits it has alone).

    Dormand–Prince at (rtol, atol) and at ``TWO_TOL_FACTOR``× both; the per-entry error is the two-tolerance
    estimate e_tight + e_loose + |W_tight − W_loose| (as ``flow.solve``'s certified view; ``rigorous=False``).
    A save not reached is 0 ± ∞.  An undecided comparison re-solves its rows at tighter tolerances
    (:func:`end_to_end_refinement_rtol`): there is no high-precision reference for this ODE.
    """
    d, e = problem.shape
    names = list(problem.tensors())
    per_row = isinstance(depth, Tensor)
    if per_row and (depth.shape != (W0.shape[0],) or depth.is_floating_point() or depth.is_complex()
                    or bool((depth < 1).any())):
        raise InvalidInputError(f"depth must be an int or a (B,) = ({W0.shape[0]},) integer tensor of depths ≥ 1, "
                                f"got {depth.dtype} of shape {tuple(depth.shape)}")
    depth = depth.to(W0.device) if per_row else depth

    def field(t: Tensor, y: Tensor, *data: Tensor) -> Tensor:
        # the per-row depths travel as the last parameter, so batch compaction keeps them with their rows
        N = data[-1] if per_row else depth
        p = Problem(problem.name, **dict(zip(names, data[:len(names)], strict=True)))
        return end_to_end_velocity(p, y.reshape(-1, d, e), N).reshape(y.shape[0], -1)

    def solve_rows(prob: Problem, W: Tensor, r: float, a: float, N: Tensor | None) -> tuple[Tensor, Tensor]:
        params = [*prob.tensors().values(), *([N] if per_row else [])]

        def run(scale: float):
            return integrate(field, W.reshape(W.shape[0], -1), t_max=t_max, save_at=save_at, rtol=scale * r,
                             atol=scale * a, max_steps=max_steps, params=params)

        tight, loose = run(1.0), run(TWO_TOL_FACTOR)
        err = two_tolerance_combine_entries(tight.save_entry_error + torch.nan_to_num(loose.save_entry_error),
                                            tight.save_y, loose.save_y)
        y = tight.save_y
        missing = ~torch.isfinite(y) | ~torch.isfinite(err)
        shape = (*y.shape[:2], d, e)
        return (torch.where(missing, 0.0, y).reshape(shape), torch.where(missing, math.inf, err).reshape(shape))

    made: dict[tuple[tuple[int, ...], float], Refinement] = {}  # every comparison of W asks the same re-solve

    def refine(rows: list[int], prec_bits: int) -> Refinement | None:
        r = end_to_end_refinement_rtol(rtol, prec_bits)
        if r is None:
            return None
        key = (tuple(int(i) for i in rows), r)
        if key not in made:
            idx = torch.as_tensor(rows, dtype=torch.long, device=W0.device)
            v, err = solve_rows(problem.select(idx), W0[idx], r, atol * r / rtol, depth[idx] if per_row else None)
            balls = to_ball(v.detach().cpu().numpy(), err.detach().cpu().numpy()).astype(object)
            made[key] = Refinement(balls, rigorous=False, note=f"end-to-end ODE re-solved at rtol {r:g} "
                                   "(two-tolerance error estimate, not rigorous)")
        return made[key]

    value, err = solve_rows(problem, W0, rtol, atol, depth if per_row else None)
    return Certified.measured(value, err, rigorous=False, refine=refine, label="end-to-end ODE solution W(t)")


#: Re-solves of the end-to-end ODE stop at this rtol: its loose run (``TWO_TOL_FACTOR``× looser) is then at 1e-10,
#: and Dormand–Prince's error control still has ~4,500 ulps of slack at 1e-12 (its rounding is a few ulps).
END_TO_END_RTOL_FLOOR = 1e-12


def end_to_end_refinement_rtol(rtol: float, prec_bits: int) -> float | None:
    """The rtol of the re-solve asked by an escalation round at ``prec_bits`` (64, 128, 256, …): 10× tighter per
    round, never below :data:`END_TO_END_RTOL_FLOOR`; None once a round has solved at the floor, or where that
    brings less than 2× (float64 can do no more: the comparison stays undecided).  Why re-solving helps: near a
    rank-deficient W(t) the fractional powers make the ODE stiff and the LOOSE run wanders (measured: a 2×2
    completion at depth 2 with σ_min(W(10)) = 5e-8: error estimate 1.7 at rtol 1e-10 where the factorized flow's
    W(10) differs by 5e-8; 9e-8 at 1e-11, 1.3e-8 at 1e-12).  Each re-solve is bounded by the solve's
    ``max_steps``, as the solve itself is."""
    rounds = max(1, round(math.log2(max(prec_bits, 64) / 64)) + 1)
    if rtol / 10.0 ** (rounds - 1) <= END_TO_END_RTOL_FLOOR:
        return None  # an earlier round solved at the floor already
    r = max(rtol / 10.0**rounds, END_TO_END_RTOL_FLOOR)
    return r if r <= rtol / 2 else None

