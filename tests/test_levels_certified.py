"""Tests of the certified pieces of ``implreg.matrix.levels`` and ``implreg.matrix.inits``.

- ``certified_det`` against det W computed independently: the mpmath reference's factors at the same loss level
  (product form, 30–60 digits), and float64 det of the solver's own end-to-end matrix where that resolves it;
  a negative det must be certified negative (the comparison can fail);
- the hybrid solver's carried sign past its switch: exactly the solver's sign, marked as an estimate, and
  confirmed by ``reference_dets_past_switch`` (an independent mpmath solve, product form);
- ``erank_upper_bound`` on certified input against its float64 value and hand values;
- the matrix layer imports no strategies (``stack_factors``, ``is_balanced`` are duck-typed).

Reference solves: depth 2–3, init scale 0.2–0.3, levels ≥ 1e-2 (≤ 1 s each, measured).
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from mpmath import mp

from implreg.matrix import reference
from implreg.matrix.inits import is_balanced, stack_factors
from implreg.matrix.levels import (
    certified_det,
    erank_upper_bound,
    flow_to_levels,
    reference_agreement,
    reference_dets_past_switch,
    reference_factor_dets,
)
from implreg.matrix.problems import razin_cohen_2x2
from implreg.numerics import Certified, certify
from implreg.strategies.matrix import BalancedInit

F64 = torch.float64


def _gaussian(seed: int) -> tuple[tuple[float, float], tuple[float, float]]:
    z = np.random.default_rng(seed).standard_normal((2, 2))
    return (float(z[0, 0]), float(z[0, 1])), (float(z[1, 0]), float(z[1, 1]))


def _balanced(depth: int, sigma: tuple[float, float], seed: int, sign: int = 1) -> BalancedInit:
    """A 2×2 balanced init with det W(0) of the given sign (U's first column negated where needed)."""
    zu, zv = _gaussian(seed), _gaussian(seed + 1000)
    zr = tuple(_gaussian(seed + 2000 + j) for j in range(depth - 1))
    init = BalancedInit(depth, sigma, zu, zv, zr)
    return init if init.det_sign == sign else BalancedInit(depth, sigma, zu, zv, zr, flip_u=True)


def _mp_det(W) -> mp.mpf:
    return W[0, 0] * W[1, 1] - W[0, 1] * W[1, 0]


# ---------------------------------------------------------------------------------------------- factor solver


LEVELS3 = (0.4, 0.1, 3e-2)


@pytest.fixture(scope="module")
def depth3():
    inits = [_balanced(3, (0.3, 0.1), 21), _balanced(3, (0.25, 0.2), 22, sign=-1)]
    return inits, flow_to_levels(razin_cohen_2x2(2), inits, LEVELS3, save_at=(1.0, 5.0))


def test_certified_det_of_the_factor_solver_encloses_the_reference_det(depth3):
    """|det_certified − det_ref| ≤ its error + the reference's (30 digits, factors balanced at that precision):
    the reference shares no code with the solver beyond the problem data.  det_ref from the reference's end-to-end
    matrix, so the product form Π det W_j of certified_det is checked against an independent formula too."""
    inits, sol = depth3
    det, _ = certified_det(sol)
    assert det.shape == (2, len(LEVELS3)) and not det.rigorous
    for i, init in enumerate(inits):
        ref = reference.solve(razin_cohen_2x2(), init.factors_mp(30), t_end=1e6, dps=30, loss_target=min(LEVELS3),
                              loss_levels=list(LEVELS3), budget_s=20.0)
        with ref.workdps():
            for k in range(len(LEVELS3)):
                W = ref.level_end_to_end[k]
                e = 2 * ref.level_errors[k]  # the located crossing's time shift: 2× (as implreg.matrix.flow.certified)
                d_ref, d_err = _mp_det(W), e * sum(abs(W[r, c]) for r in range(2) for c in range(2)) + 2 * e * e
                gap = abs(float(det.value[i, k]) - float(d_ref))
                assert gap <= float(det.error[i, k]) + float(d_err), (i, k, gap, float(det.error[i, k]))
                # informative: the certified error resolves the sign (|det| ≥ 1e-4 at these levels)
                assert float(det.error[i, k]) < 1e-3 * abs(float(d_ref))


def test_certified_det_signs_are_certified_and_a_wrong_sign_is_refuted(depth3):
    """Instance 0 has det W(0) > 0, instance 1 det W(0) < 0: balanced flow keeps both signs, and claiming det > 0
    for both must be certified FALSE (not undecided) at instance 1."""
    _, sol = depth3
    det, save_det = certified_det(sol)
    certify(det[0] > 0)
    certify(det[1] < 0)
    certify(save_det[0] > 0)
    with pytest.raises(AssertionError, match="instance"):
        certify(det > 0, what="det W > 0 for both")
    # the product form agrees with float64 det of the solver's own end-to-end matrices (well resolved here)
    want = torch.linalg.det(sol.level_end_to_end)
    assert torch.allclose(det.value, want, rtol=1e-8, atol=0)


# ---------------------------------------------------------------------------------------------- hybrid solver


LEVELS2 = (0.4, 0.1, 1e-2)


def test_hybrid_det_past_the_switch_is_the_carried_sign_and_the_reference_agrees():
    """Depth 2, balanced: before the switch certified_det is det of the certified end-to-end matrix; at and past it
    the solver's carried sign, value ±1 with error 0, not rigorous.  The reference (product form at 60 digits,
    started from factors balanced at that precision) decides det W > 0 at the levels past the switch."""
    inits = [_balanced(2, (0.3, 0.1), 31), _balanced(2, (0.2, 0.12), 32)]
    sol = flow_to_levels(razin_cohen_2x2(2), inits, LEVELS2)
    det, _ = certified_det(sol)
    past = sol.level_t >= sol.phase_switch_t.unsqueeze(-1)
    assert past.any() and (~past).any(), sol.messages()  # both paths are exercised
    assert torch.equal(det.value[past], sol.level_det_sign[past]) and bool((det.error[past] == 0).all())
    assert not det.rigorous
    before = sol.certified.level_end_to_end.det()
    assert torch.equal(det.value[~past], before.value[~past])
    certify(det > 0)
    ref, rows = reference_dets_past_switch(sol, inits)
    assert ref.shape == (int(past.sum()),) and not ref.rigorous
    assert [r["instance"] for r in rows] == [i for i in range(2) if bool(past[i].any())]
    assert all(r["digits"] == 60 for r in rows)  # resolved at the first precision
    certify(ref > 0)  # det W > 0 beyond the reference's error estimate
    # the same numbers as reference_factor_dets itself, where the check could go wrong (the level selection)
    i = rows[0]["instance"]
    got = reference_factor_dets(razin_cohen_2x2(), inits[i].factors_mp(60), rows[0]["levels"], dps=60)
    assert [float(d) for d, _ in got] == rows[0]["det W"]
    assert rows[0]["levels"] == [x for k, x in enumerate(sorted(LEVELS2, reverse=True)) if bool(past[i, k])]


def test_hybrid_det_refutes_the_wrong_sign():
    sol = flow_to_levels(razin_cohen_2x2(), [_balanced(2, (0.3, 0.1), 31, sign=-1)], LEVELS2)
    det, _ = certified_det(sol)
    certify(det < 0)
    with pytest.raises(AssertionError):
        certify(det > 0)


# ---------------------------------------------------------------------------------------------- erank bound


def test_erank_upper_bound_on_certified_input_encloses_its_float_value():
    levels = torch.tensor([0.4, 5e-2, 3e-2, 1e-2, 1e-3], dtype=F64)
    flt = erank_upper_bound(levels)
    cert = erank_upper_bound(Certified.exact(levels))
    assert isinstance(flt, torch.Tensor) and isinstance(cert, Certified)
    assert bool(((cert.lo <= flt) & (flt <= cert.hi)).all())
    # hand values: q = ½ (g ≥ f) gives exactly 2 at ℓ = 0.4 and 0.05; below, the bound falls towards 1
    assert flt[0] == pytest.approx(2.0, abs=1e-15) and flt[1] == pytest.approx(2.0, abs=1e-15)
    assert bool((flt[2:].diff() < 0).all()) and 1 < float(flt[-1]) < 1.1
    # at ℓ = 1e-2: δ = √0.02, f = (1 − δ)²/δ, g = δ(1 + (1 + δ)²/(1 − δ)²), q = g/(f + g), exp(H(q))
    d = math.sqrt(0.02)
    f, g = (1 - d) ** 2 / d, d * (1 + (1 + d) ** 2 / (1 - d) ** 2)
    q = g / (f + g)
    assert float(flt[3]) == pytest.approx(math.exp(-q * math.log(q) - (1 - q) * math.log(1 - q)), rel=1e-13)


# ---------------------------------------------------------------------------------------------- layering


def test_the_matrix_layer_imports_no_strategies():
    code = ("import sys, implreg.matrix.levels, implreg.matrix.inits; "
            "bad = [m for m in sys.modules if m.startswith('implreg.strategies') or m == 'hypothesis']; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


class _Duck:
    """An init that is no strategies class: depth, factors(dtype) and a ``balanced`` flag."""

    depth, balanced = 2, True

    def __init__(self, scale: float):
        self.scale = scale

    def factors(self, dtype=F64):
        return (self.scale * torch.eye(2, dtype=dtype).unsqueeze(0), self.scale * torch.eye(2, dtype=dtype)[None])


def test_stack_factors_and_is_balanced_are_duck_typed():
    fs = stack_factors([_Duck(1.0), _Duck(2.0)])
    assert [W.shape for W in fs] == [(2, 2, 2), (2, 2, 2)] and float(fs[1][1, 0, 0]) == 2.0
    assert is_balanced(_Duck(1.0)) and is_balanced(_balanced(2, (0.3, 0.1), 1)) and not is_balanced(object())


@pytest.mark.parametrize("depth", [2, 3])
def test_reference_agreement_rows_compare_the_simulator_with_the_reference(depth):
    """The evidence rows of claim 2: |ΔW| within the sum of the two estimates, at the stated levels; against the
    reference run from another init (σ₂ = 0.03, not 0.02) the ratio exceeds 1 (the comparison is not vacuous)."""
    init = _balanced(depth, (0.05, 0.02), seed=depth)
    sol = flow_to_levels(razin_cohen_2x2(), [init], (0.2, 0.05))
    rows = reference_agreement(sol, init, dps=30)
    assert [r["loss level"] for r in rows] == [0.2, 0.05]
    for r in rows:
        assert r["max |W_sim − W_ref|"] <= r["simulator error estimate"] + r["reference error estimate"]
        assert r["ratio |Δ| / (sum of estimates)"] < 1
    other = _balanced(depth, (0.05, 0.03), seed=depth)  # the reference on a different init
    assert max(r["ratio |Δ| / (sum of estimates)"] for r in reference_agreement(sol, other, dps=30)) > 1


def test_the_embedding_bound_is_positive_exactly_below_its_threshold():
    """δ = √(2ℓ) < 2^{1/d} − 1, i.e. ℓ < 0.03378 (d = 3) and ℓ < 0.01790 (d = 4), decided on the exact levels."""
    from implreg.matrix.levels import embedding_bound_positive

    levels = (0.1, 0.034, 0.0337, 0.018, 0.0178, 1e-3)
    assert embedding_bound_positive(levels, 3).tolist() == [False, False, True, True, True, True]
    assert embedding_bound_positive(levels, 4).tolist() == [False, False, False, False, True, True]


def test_level_values_are_the_exact_levels_per_instance() -> None:
    """``level_values``: the levels themselves, exact (error 0), one row per instance, for both solvers (depth 2:
    the hybrid balanced solver, depth 3: the factor solver)."""
    from implreg.matrix.levels import level_values

    levels = (0.1, 3e-2)
    for depth in (2, 3):
        inits = [_balanced(depth, (0.3, 0.1), seed) for seed in (3, 4, 5)]
        sol = flow_to_levels(razin_cohen_2x2(3), inits, levels)
        v = level_values(sol)
        assert v.value.shape == sol.level_t.shape == (3, 2)
        assert torch.equal(v.value, torch.tensor(levels, dtype=torch.float64).expand(3, 2))
        assert torch.equal(v.error, torch.zeros(3, 2, dtype=torch.float64))
