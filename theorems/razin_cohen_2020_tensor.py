"""Claim 10 of CLAIMS.md (Razin & Cohen 2020, §6): implicit regularization of CP tensor factorization toward low
tensor rank, an empirical claim over drawn problems (kept apart from the matrix claims of
``razin_cohen_2020.py``, whose source it shares)."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import strategies as st

from implreg import evidence, stats
from implreg import tensor as tens
from implreg.claims import claim, sample
from theorems.razin_cohen_2020 import RAZIN_COHEN_2020

# ---------------------------------------------------------------------------------------------- claim 10


TENSOR_SHAPE = (4, 4, 4)
TENSOR_N = 12
TENSOR_EPS = 0.02  # relative tolerance of the numerical tensor rank


def _tensor_runs(ranks, fractions, scales, rng):
    """Draw truths and masks with ``rng``, run CP gradient descent, return per-problem (learned, baseline,
    truth) tensors."""
    n = len(ranks)
    Ys, Ms = [], []
    for r, frac in zip(ranks, fractions, strict=True):
        Ys.append(tens.low_rank_tensor(rng, TENSOR_SHAPE, r))
        m = np.zeros(int(np.prod(TENSOR_SHAPE)))
        m[rng.choice(m.size, size=max(1, round(frac * m.size)), replace=False)] = 1.0
        Ms.append(m.reshape(TENSOR_SHAPE))
    Y, M = torch.tensor(np.stack(Ys)), torch.tensor(np.stack(Ms))
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    energy = 0.5 * (M * Y * Y).flatten(1).sum(-1)
    out = []
    for i in range(n):  # per problem: its own init scale
        res = tens.cp_descent(M[i : i + 1], Y[i : i + 1], rank=8, scale=float(scales[i]), lr=0.05,
                              loss_target=1e-6 * float(energy[i]), max_steps=20_000, generator=gen)
        out.append((res.tensor[0], tens.zero_filled(M[i], Y[i]), Y[i]))
    return out


_TENSOR_HYP = (f"order-3 tensors {TENSOR_SHAPE}", "truth: CP rank 1–2, i.i.d. N(0,1) factors",
               "observed fraction 0.4–0.7", "CP width 8, init N(0, s²), s ∈ [1e-3, 3e-2]",
               "gradient descent, step 0.05, until ℓ ≤ 1e-6·(observed energy) or 20 000 steps")


@claim(
    "razin-cohen-2020/tensor-lower-rank",
    source=RAZIN_COHEN_2020.at("§6 (tensor factorization experiment)", confirmed=False),
    kind="empirical",
    expect="holds",
    statement="Gradient descent on a CP factorization from small init, fit to a fraction of the entries of a "
              "low-rank order-3 tensor, reaches lower tensor rank than the 'linear' baseline (observed values, "
              "zeros elsewhere).  Tensor rank = numerical ε-rank (ε = 0.02, ALS with restarts, same procedure for "
              "both).  One-sided paired sign test at level 0.01 over 12 drawn problems.",
    hypotheses=_TENSOR_HYP,
    max_examples=1,
)
@sample(n=TENSOR_N, test=stats.paired("sign", alternative="less", alpha=0.01), batched=True,
        rank=st.integers(1, 2), fraction=st.floats(0.4, 0.7), scale=st.floats(-3, math.log10(3e-2)).map(
            lambda x: 10.0**x))
def tensor_lower_rank(rank, fraction, scale, rng):
    runs = _tensor_runs(rank, fraction, scale, rng)
    a = [tens.numerical_rank(learned, TENSOR_EPS) for learned, _, _ in runs]
    b = [tens.numerical_rank(base, TENSOR_EPS) for _, base, _ in runs]
    for r, x, y in zip(rank, a, b, strict=True):
        evidence.table("tensor ε-rank: CP gradient descent vs zero-filled baseline",
                       {"true rank": r, "CP descent": x, "zero-filled": y})
    for name, v in (("CP gradient descent", a), ("zero-filled baseline", b)):
        evidence.series("tensor ε-rank by problem", x=np.arange(len(v), dtype=float), y=np.asarray(v, dtype=float),
                        group=name, xlabel="problem", ylabel="ε-rank (ε = 0.02)", kind="scatter")
    return np.array(a, dtype=float), np.array(b, dtype=float)


@claim(
    "razin-cohen-2020/tensor-lower-error",
    source=RAZIN_COHEN_2020.at("§6 (tensor factorization experiment)", confirmed=False),
    kind="empirical",
    expect="holds",
    statement="Same setting as tensor-lower-rank: the CP gradient-descent solution has lower relative "
              "reconstruction error ‖T − T*‖_F/‖T*‖_F than the zero-filled baseline.  One-sided paired Wilcoxon "
              "signed-rank test at level 0.01 over 12 drawn problems.",
    hypotheses=_TENSOR_HYP,
    max_examples=1,
)
@sample(n=TENSOR_N, test=stats.paired("wilcoxon", alternative="less", alpha=0.01), batched=True,
        rank=st.integers(1, 2), fraction=st.floats(0.4, 0.7), scale=st.floats(-3, math.log10(3e-2)).map(
            lambda x: 10.0**x))
def tensor_lower_error(rank, fraction, scale, rng):
    runs = _tensor_runs(rank, fraction, scale, rng)

    def rel(T, Y):
        return float(torch.linalg.norm(T - Y) / torch.linalg.norm(Y))

    a = np.array([rel(learned, Y) for learned, _, Y in runs])
    b = np.array([rel(base, Y) for _, base, Y in runs])
    for name, v in (("CP gradient descent", a), ("zero-filled baseline", b)):
        evidence.series("tensor reconstruction error by problem", x=np.arange(len(v), dtype=float), y=v, group=name,
                        xlabel="problem", ylabel="‖T − T*‖_F / ‖T*‖_F", log_y=True, kind="scatter")
    return a, b
