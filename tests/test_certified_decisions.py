"""certify(cmp): strict, non-strict and exact-equality decisions, escalation through refine, Undecided
messages, non-finite operands, and what the recorder is told."""

import math

import numpy as np
import pytest
import torch
from flint import arb

from implreg import certify
from implreg import numerics as nx
from implreg.errors import InvalidInputError, NumericalError
from implreg.harness import recorder as _record
from implreg.numerics import Certified, Refinement

F64 = torch.float64


@pytest.fixture
def rec():
    r = _record.Recorder("test/certified")
    token = r.activate()
    r.begin_example(None)
    yield r
    r.deactivate(token)


def ex(*vals):
    return Certified.exact(torch.tensor(vals, dtype=F64))


def test_equal_values_hold_non_strictly_and_refute_strictly():
    x = ex(0.1, -2.5, 0.0)
    certify(x >= x)
    certify(x <= x)
    certify(x == x)
    with pytest.raises(AssertionError, match="exactly equal") as info:
        certify(x > x, what="x > x")
    # the message gives the exact zero gap, not a float error bound that could not have decided it
    assert "the gap is exactly 0" in str(info.value) and "error bound" not in str(info.value)


def test_strict_inequality_decided_by_the_float_tier(rec):
    x = ex(0.1, 1e300, -1e-300)
    certify(x + 1.0 > x, what="x + 1 > x")        # 1e300 + 1 rounds to 1e300: the ball tier decides it
    assert rec.basis["x + 1 > x"] == "rigorous"
    with pytest.raises(AssertionError, match="instance 0"):
        certify(x < x - 1.0, what="x < x − 1")


def test_associativity_is_decided_exactly_for_dyadic_inputs():
    a, b, c = ex(0.1, 3.0, 1e-300), ex(0.7, 1 / 3, 1e300), ex(1e-8, 0.2, 5e-324)
    certify((a * b) * c == a * (b * c))
    certify((a + b) + c == a + (b + c))
    with pytest.raises(AssertionError, match="exactly equal"):   # in floats the two sums differ by an ulp
        certify((ex(0.1) + 0.2) + 0.3 > ex(0.1) + (ex(0.2) + 0.3))


def test_path_norms_at_a_single_path_are_equal():
    """φ₁(w) = Π_l ‖w_l‖ and φ₂(w) = (Π_l w_l²)^(1/2) coincide on a one-path net (widths 1)."""
    w = [ex(0.3, -1.7, 1e-3), ex(-2.0, 0.1, 7.5), ex(0.6, 3.3, -0.2)]
    phi1 = w[0].square().sqrt() * w[1].square().sqrt() * w[2].square().sqrt()
    phi2 = (w[0].square() * w[1].square() * w[2].square()).sqrt()
    certify(phi1 >= phi2, what="φ₁ ≥ φ₂")
    with pytest.raises(AssertionError, match="exactly equal"):
        certify(phi1 > phi2, what="φ₁ > φ₂")


def test_frobenius_product_vs_nuclear_norm_at_rank_one():
    g = torch.Generator().manual_seed(3)
    U = Certified.exact(torch.randn(5, 3, 1, generator=g, dtype=F64))
    V = Certified.exact(torch.randn(5, 4, 1, generator=g, dtype=F64))
    lhs = U.square().sum((1, 2)).sqrt() * V.square().sum((1, 2)).sqrt()
    nuc = nx.svdvals(U @ V.mT).sum(-1)
    certify(lhs >= nuc, what="‖U‖‖V‖ ≥ ‖UVᵀ‖_*")
    with pytest.raises(AssertionError, match="exactly equal"):
        certify(lhs > nuc, what="strict")


def test_rank_two_nuclear_norm_closed_form():
    """σ₁ + σ₂ = √(‖W‖_F² + 2|det W|) for 2×2 W, decided exactly (no numerical zero test)."""
    W = Certified.exact(torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.5, -1.0], [2.0, 0.25]]], dtype=F64))
    lhs = nx.svdvals(W).sum(-1)
    rhs = (W.square().sum((1, 2)) + 2 * W.det().abs()).sqrt()
    certify(lhs == rhs)


def test_not_equal_holds_where_the_sides_differ_and_is_refuted_only_by_an_exact_tie():
    """a != b is |a − b| > 0: certified where an enclosure excludes 0 (√2² ≠ 3 through rounding), refuted only
    where the two sides are exactly equal (√2² = 2, decided exactly), and never a bool of its own."""
    x, y = ex(1.0, 2.0), ex(1.5, 2.0)
    certify(x[:1] != y[:1], what="1 ≠ 1.5")
    with pytest.raises(AssertionError, match=r"value ≠ bound is false: .*\(the two sides are exactly equal\)") as info:
        certify(x != y, what="x ≠ y")
    assert "instance 1" in str(info.value) and "1 of 2 instance(s)" in str(info.value)
    two = ex(2.0).sqrt() ** 2
    certify(two != 3.0, what="√2² ≠ 3")
    with pytest.raises(AssertionError, match="decided exactly"):
        certify(two != 2.0, what="√2² ≠ 2")
    with pytest.raises(InvalidInputError, match="certify"):
        bool(x != y)
    with pytest.raises(InvalidInputError, match=r"chained comparisons \(0 <= x <= 1\).*certify\(x >= 0\)"):
        certify(0 <= x <= 3)   # Python asks bool(0 <= x) first


def test_escalation_through_refine_decides_and_is_recorded(rec):
    value = torch.tensor([1e-12, 5.0, 2e-12], dtype=F64)
    calls = []

    def refine(rows, prec):
        calls.append((list(rows), prec))
        return Refinement(np.array([arb(float(value[r]), 2.0**-prec) for r in rows], dtype=object), True,
                          note=f"reference at {prec} bits")

    det = Certified.measured(value, 1e-9, rigorous=False, refine=refine, label="det W(t)")
    certify(det > 0, what="det > 0")
    assert calls[0] == ([0, 2], 64)               # only the undecided rows are asked
    esc = rec.escalations[0]
    assert esc["what"] == "det > 0" and esc["certified"] == 2 and esc["outcome"] == "certified"
    assert esc["prec_bits"] == 64 and esc["tier"] == "ball" and "reference at 64 bits" in esc["note"]
    assert rec.basis["det > 0"] == "estimate"     # instance 1 was decided on the integrator's estimate
    certify(det[[0, 2]] > 0, what="escalated")
    assert rec.basis["escalated"] == "rigorous"   # every instance was decided on the rigorous refinement


def test_arb_on_the_unrefined_leaves_comes_before_any_refinement(rec):
    """x^¼ + 1 ≥ 0.99 with x = 1e-30 ± 1e-3: undecided in float64 (1 ± 0.18), certain in Arb ([1, 1.18]), so the
    expensive refine (a reference solve) is never called, and the round says what decided it."""
    calls = []

    def refine(rows, prec):
        calls.append(prec)
        return None

    x = Certified.measured(torch.tensor([1e-30, 4.0], dtype=F64), 1e-3, rigorous=True, refine=refine, label="x")
    certify(x**0.25 + 1.0 >= 0.99, what="x^¼ + 1 ≥ 0.99")
    assert calls == []
    esc = rec.escalations[0]
    assert esc["certified"] == 1 and esc["prec_bits"] == 64 and "before any refinement" in esc["note"]
    assert rec.basis["x^¼ + 1 ≥ 0.99"] == "rigorous"


def test_escalation_refutes_with_a_tighter_ball(rec):
    def refine(rows, prec):
        return Refinement(np.array([arb(-1e-20, 1e-30)] * len(rows), dtype=object), False)

    x = Certified.measured(torch.tensor([1e-15], dtype=F64), 1e-12, rigorous=False, refine=refine, label="x")
    with pytest.raises(AssertionError, match="ball arithmetic at 64 bits") as info:
        certify(x >= 0, what="x ≥ 0")
    assert rec.escalations[0]["outcome"] == "refuted"
    assert "refined, value − bound ∈ [-1.0000e-20" in str(info.value)   # the enclosure that decided it

    # a solver that kept no error (0 ± ∞ in float64): the message gives the refined difference, not 0 and 0
    t = Certified.measured(torch.zeros(1, dtype=F64), math.inf, rigorous=False, label="t₃",
                           refine=lambda rows, prec: Refinement(np.array([arb(31.36, 1e-6)] * len(rows)), False))
    with pytest.raises(AssertionError) as info:
        certify(t > ex(71.26), what="t₃ > t₂")
    msg = str(info.value)
    assert "value − bound ∈ [-39.900" in msg and "float64 alone could not tell" in msg and "value = 0.0" not in msg


def test_refine_that_gives_up_leaves_it_undecided(rec):
    asked = []

    def refine(rows, prec):
        asked.append(prec)
        return None

    x = Certified.measured(torch.tensor([0.0], dtype=F64), 1e-3, rigorous=False, refine=refine, label="W11(t)")
    with pytest.raises(certify.Undecided) as info:
        certify(x >= 0, what="W11 ≥ 0")
    assert asked == [64]
    assert "can never be decided" in str(info.value) and "W11(t)" in str(info.value)
    assert rec.undecided_count == 1 and rec.undecided[0]["instance"] == [0]


def test_equality_of_refinable_values_is_refuted_or_left_after_one_refined_round(rec):
    """a == b where a carries an error: a refinement can refute it (a difference above the reference's error) but
    never certify it (its ball never shrinks to exactly 0), so escalation stops after the first refined round
    instead of re-solving at every precision, and the Undecided says to state a tolerance with close()."""
    asked = []

    def refine(rows, prec):
        asked.append(prec)
        return Refinement(np.array([arb(float(value[r]), 2.0**-prec) for r in rows], dtype=object), False)

    value = torch.tensor([0.5, 0.5], dtype=F64)
    x = Certified.measured(value, 1e-9, rigorous=False, refine=refine, label="W11(t)")
    with pytest.raises(certify.Undecided) as info:
        certify(x == ex(0.5, 0.5), what="W11 = ½")
    assert asked == [64]
    assert "can be refuted but never certified" in str(info.value) and "close(a, b, tol)" in str(info.value)
    entry = rec.undecided[0]
    assert entry["never"] and entry["comparison_op"] == "==" and "close(a, b, tol)" in entry["hint"]

    # the same round refutes a difference that the float tier's error hid (1e-12 < 1e-9)
    value = torch.tensor([0.5 + 1e-12], dtype=F64)
    y = Certified.measured(value, 1e-9, rigorous=False, refine=refine, label="W11(t)")
    asked.clear()
    with pytest.raises(AssertionError, match="ball arithmetic at 64 bits"):
        certify(y == 0.5, what="W11 = ½")
    assert asked == [64]


def test_close_below_the_error_says_it_can_never_be_decided():
    a = Certified.measured(torch.tensor([1.0, 2.0], dtype=F64), 1.2e-8, rigorous=False, label="W11(t)")
    b = ex(1.0, 2.0)
    with pytest.raises(certify.Undecided) as info:
        certify(nx.close(a, b, 1e-9), what="W11(t) = W11(0)")
    msg = str(info.value)
    assert "W11(t) = W11(0)" in msg and "instance 0" in msg and "1.2e-08" in msg
    assert "can never be decided" in msg and "loosen tol" in msg and "tighter solver tolerance" in msg
    certify(nx.close(a, b, 1e-7))                    # tol above the error: decided


def test_non_finite_operands_raise_numerical_error_naming_the_comparison():
    x = ex(1.0, 0.0)
    with pytest.raises(NumericalError, match="loss level"):
        certify(x / ex(0.0, 1.0) >= 0, what="loss level")
    with pytest.raises(NumericalError, match="instance 1"):
        certify(ex(1.0, -1.0).sqrt() >= 0, what="sqrt")


def test_float64_overflow_of_finite_leaves_is_decided_in_balls_and_true_infinities_still_raise():
    """(1e200)² overflows float64 but is finite: the ball tier decides it (a diverged descent's loss of 1e320 is
    above its initial loss, a refutation, not a crash).  1/0, log 0 and √−1 stay errors naming the comparison."""
    x = ex(1e200, 1.0)
    certify(x * x > 0.5, what="x² > ½")
    certify(ex(800.0).exp() > 1e300, what="e⁸⁰⁰ > 1e300")
    with pytest.raises(AssertionError, match="overflowed float64") as info:
        certify(x * x < 2.0, what="x² < 2")
    assert "instance 0" in str(info.value) and "1 of 2 instance(s)" in str(info.value)

    asked = []

    def refine(rows, prec):
        asked.append(prec)
        return None

    big = Certified.measured(torch.tensor([1e200], dtype=F64), 1e185, rigorous=False, refine=refine, label="y")
    certify(big * big > ex(1e300) * ex(1e99), what="y² > 1e399")   # on the leaf's own enclosure: no reference
    assert asked == []

    for bad, what in ((1.0 / ex(1.0, 0.0), "1/x"), (ex(1.0, 0.0).log(), "log x"), (ex(1.0, -1.0).sqrt(), "√x"),
                      (x * x - x * x, "x² − x²")):
        with pytest.raises(NumericalError, match="is not finite at instance"):
            certify(bad >= 0, what=what)


def test_comparisons_are_not_bools_and_bad_inputs_are_named():
    x = ex(1.0)
    with pytest.raises(InvalidInputError, match="certify"):
        bool(x >= 0)
    with pytest.raises(InvalidInputError, match=r"certify\.that"):
        certify(True)
    with pytest.raises(InvalidInputError, match="broadcast"):
        certify(ex(1.0, 2.0) >= ex(1.0, 2.0, 3.0))
    with pytest.raises(InvalidInputError, match="refine"):
        bad = Certified.measured(torch.zeros(2, dtype=F64), 1.0, rigorous=True,
                                 refine=lambda rows, prec: Refinement(np.zeros(5, dtype=object), True))
        certify(bad > 0)


def test_legacy_functions_accept_certified_operands():
    x = Certified.measured(torch.tensor([1.0, 2.0], dtype=F64), 0.1, rigorous=True)
    certify.at_least(x, 0.5)
    with pytest.raises(certify.Undecided):
        certify.at_least(x, 0.5, error=0.5)          # the extra error= adds to the operands' own error
    with pytest.raises(AssertionError):
        certify.at_most(x, 0.5)
    certify.close(x, ex(1.0, 2.0), tol=0.2)


def test_estimate_basis_is_recorded(rec):
    x = Certified.measured(torch.tensor([1.0], dtype=F64), 1e-6, rigorous=False)
    certify(x >= 0.5, what="estimate")
    assert rec.basis["estimate"] == "estimate"


def test_batched_rows_only_the_undecided_are_re_evaluated():
    seen = []

    def refine(rows, prec):
        seen.append(tuple(rows))
        return Refinement(np.array([[arb(1.0), arb(1.0)] for _ in rows], dtype=object), True)

    x = Certified.measured(torch.tensor([[1.0, 1.0], [3.0, 3.0], [1.0, 1.0]], dtype=F64), 1.5, rigorous=True,
                           refine=refine)
    lim = torch.tensor([0.0, 1.0], dtype=F64)      # broadcasts along the batch: not row-selected
    certify(x[:, :] * 2.0 >= lim)
    assert seen == [(0, 1, 2)] or seen == [(0, 2)]


def test_a_float_exponent_with_a_huge_denominator_stays_unevaluated_in_the_exact_tier():
    """fl(1/3) = 6004799503160661/2⁵⁴: sympy's evaluation of x^fl(1/3) factors x and took minutes (a `where`
    branch that is then discarded built it); the tier keeps it unevaluated and decides the selected branch."""
    from flint import fmpq

    from implreg.numerics import certify as decide
    from implreg.numerics.exact import _powr, is_zero
    from implreg.relu.capacity import rpow

    x = Certified.exact(torch.tensor([3.0 * 2.0**40, 7.0 * 2.0**-40], dtype=torch.float64))
    decide(rpow(rpow(x, 3.0), 1.0, 3.0) == x, "(x³)^(1/3) = x exactly")  # the where's other branch: x³^fl(1/3)
    assert is_zero(_powr(fmpq(3), 1 / 3) - 1) is None  # undecidable here, and said so (not a hang, not a guess)
    # the base that hung (a cube of a 104-bit integer over 2^222, from tests/test_capacity.py at seed 1)
    n = 2431243011214126530540676350795689540070723129850704971760539495003230714836301546139679825027
    assert is_zero(_powr(fmpq(n, 2**222), 1 / 3)) is None


def test_an_entropy_term_near_zero_is_re_evaluated_from_the_refined_enclosure(rec):
    """erank(W) with σ_min below the float error: each p log p with p's enclosure reaching 0 is the interval
    [p⁺ log p⁺, 0] in float64, and the ball tier re-evaluates it from p's refined enclosure (it was a fixed
    interval before, so 'erank drops along the flow' stayed undecided at every precision)."""
    from implreg.matrix.measures import effective_rank
    from implreg.numerics.ops import xlogx

    true = torch.tensor([[[2.0, 0.0], [0.0, 6e-6]], [[7.0, 0.0], [0.0, 4.5e-6]]], dtype=F64)

    def refine(rows, prec):
        return Refinement(np.array([[[arb(float(v), 2.0**-prec) for v in r] for r in true[i]] for i in rows],
                                   dtype=object), False)

    W = Certified.measured(true, 3e-5, rigorous=False, refine=refine, label="W at the levels")
    e = effective_rank(W[None])[0]          # (2,): σ_min/Σσ = 3e-6 and 6.4e-7, both within the float error
    assert float(e.error.min()) > 1e-5
    certify(e[1] < e[0], what="erank drops")
    esc = rec.escalations[-1]
    assert esc["certified"] == 1 and esc["prec_bits"] == 64

    # the float tier's interval, and the exact tier's 0·log 0 = 0
    p = xlogx(Certified.measured(torch.tensor([1e-310, 0.5], dtype=F64), torch.tensor([1e-300, 0.0], dtype=F64),
                                 rigorous=True))
    assert float(p.value[0]) <= 0 and float(p.value[0] - p.error[0]) <= -1e-300 * 690
    assert float(p.value[1] - p.error[1]) <= 0.5 * math.log(0.5) <= float(p.value[1] + p.error[1])
    certify(xlogx(ex(0.0, 1.0)) == 0.0, what="0 log 0 = 1 log 1 = 0")
    # an enclosure reaching 0 and above 1: [−1/e, 1.1 log 1.1] (a probability never exceeds 1, but the op is general)
    wide = xlogx(Certified.measured(torch.tensor([0.5], dtype=F64), 0.6, rigorous=True))
    assert float(wide.value[0] - wide.error[0]) <= -math.exp(-1) and float(wide.value[0] + wide.error[0]) >= 0.1048
