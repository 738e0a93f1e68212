"""certify: decided only where the gap exceeds the error; exact comparison; escalation; non-finite inputs."""

import mpmath
import numpy as np
import pytest

from implreg import certify
from implreg.errors import InvalidInputError, NumericalError
from implreg.harness import recorder as _record


@pytest.fixture
def rec():
    r = _record.Recorder("test/certify")
    token = r.activate()
    r.begin_example(None)
    yield r
    r.deactivate(token)


def test_certified_true_false_and_undecided():
    certify.at_least(1.0, 0.5, error=0.1, what="v")          # gap 0.5 > 0.1: true
    with pytest.raises(AssertionError) as exc:
        certify.at_least(0.2, 0.5, error=0.1, what="det W(t)")  # −0.3, |gap| > error: false
    msg = str(exc.value)
    assert "det W(t)" in msg and "value = 0.2" in msg and "bound = 0.5" in msg and "error bound = 0.1" in msg
    with pytest.raises(certify.Undecided) as und:
        certify.at_least(0.45, 0.5, error=0.1, what="v")       # |gap| = 0.05 ≤ 0.1
    assert und.value.entries[0]["instance"] == []


def test_equality_with_zero_error_is_certified_but_not_with_positive_error():
    certify.at_least(3.0, 3.0, error=0.0, what="exact tie")
    certify.at_most(3.0, 3.0, what="exact tie")
    with pytest.raises(certify.Undecided):
        certify.at_least(3.0, 3.0, error=1e-300, what="tie within error")


def test_comparison_is_exact_not_rounded():
    # 0.1 + 0.2 = 0.30000000000000004 > 0.3 exactly: certified with zero error, both ways round
    certify.at_least(0.1 + 0.2, 0.3, what="sum")
    with pytest.raises(AssertionError):
        certify.at_most(0.1 + 0.2, 0.3, what="sum")
    # gap − error is below float resolution of the operands, but its sign is still decided exactly
    big = 2.0**53
    certify.at_least(big + 2.0, big, error=1.0, what="big")     # gap 2 > 1
    with pytest.raises(certify.Undecided):
        certify.at_least(big + 2.0, big, error=2.0, what="big")  # gap 2 = error: undecided


def test_batched_reports_first_offending_instance_and_count():
    value = np.array([[1.0, 2.0], [3.0, -4.0]])
    with pytest.raises(AssertionError) as exc:
        certify.at_least(value, np.zeros(2), error=np.array([0.1, 0.1]), what="σ")
    assert "instance (1, 1)" in str(exc.value) and "1 of 4 instance(s)" in str(exc.value)
    with pytest.raises(AssertionError) as exc:
        certify.at_most(np.array([0.0, 5.0, 0.0]), 1.0, error=1e-9, what="u")
    assert "instance 1" in str(exc.value)


def test_torch_tensors_of_any_shape():
    torch = pytest.importorskip("torch")
    v = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float32)
    certify.at_least(v, torch.zeros(2, 2, dtype=torch.float64), error=torch.tensor(1e-6), what="t")
    certify.that(v > 0, what="positive")
    with pytest.raises(AssertionError, match="positive is false at instance"):
        certify.that(torch.tensor([True, False]), what="positive")


def test_close():
    certify.close(1.0, 1.05, tol=0.1, error=0.01, what="a≈b")
    with pytest.raises(AssertionError, match="a≈b"):
        certify.close(1.0, 1.5, tol=0.1, error=0.01, what="a≈b")
    with pytest.raises(certify.Undecided):
        certify.close(1.0, 1.095, tol=0.1, error=0.01, what="a≈b")
    certify.close(np.array([1.0, -1.0]), np.array([1.0, -1.0]), tol=0.0, what="exact")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_is_never_certified(bad):
    for args in [(bad, 0.0, 0.0), (1.0, bad, 0.0), (1.0, 0.0, bad)]:
        with pytest.raises(NumericalError, match="loss level"):
            certify.at_least(args[0], args[1], error=args[2], what="loss level")
    with pytest.raises(NumericalError, match="instance 2"):
        certify.at_most(np.array([0.0, 0.0, bad]), 1.0, what="x")


def test_bad_inputs_are_named():
    with pytest.raises(InvalidInputError, match="negative error"):
        certify.at_least(1.0, 0.0, error=-1.0, what="x")
    with pytest.raises(InvalidInputError, match="do not broadcast"):
        certify.at_least(np.ones(3), np.ones(2), what="x")
    with pytest.raises(InvalidInputError, match="boolean"):
        certify.that(np.array([1.0, 2.0]), what="x")


def test_escalation_resolves_and_is_recorded(rec):
    value = np.array([1e-12, 5.0, 2e-12])
    calls = []

    def refine(mask, dps):
        calls.append((mask.copy(), dps))
        with mpmath.workdps(dps):
            return [mpmath.mpf(v) for v in value[mask]], 0, mpmath.mpf(10) ** (-dps)

    certify.at_least(value, 0.0, error=1e-9, what="det", escalate=certify.rising_precision(refine, dps=(30, 60)))
    assert len(calls) == 1 and calls[0][1] == 30
    assert calls[0][0].tolist() == [True, False, True]
    esc = rec.escalations[0]
    assert esc["what"] == "det" and esc["dps"] == 30 and esc["certified"] == 2 and esc["outcome"] == "certified"
    assert rec.escalation_count == 1 and rec.escalations_resolved == 2


def test_escalation_rises_then_gives_up(rec):
    seen = []

    def refine(mask, dps):
        seen.append(dps)
        return np.zeros(int(mask.sum())), 0.0, 1e-3   # never decides

    with pytest.raises(certify.Undecided):
        certify.at_least(0.0, 0.0, error=1.0, what="g", escalate=certify.rising_precision(refine, dps=(20, 40, 80)))
    assert seen == [20, 40, 80]
    assert [e["dps"] for e in rec.escalations] == [20, 40, 80]
    assert rec.undecided_count == 1 and rec.undecided[0]["escalation_rounds"] == 3


def test_escalation_can_refute(rec):
    def refine(mask):
        return certify.Refined(np.array([-1e-20]), 0.0, 1e-40, dps=50)

    with pytest.raises(AssertionError, match="after escalation at 50 digits"):
        certify.at_least(1e-15, 0.0, error=1e-12, what="det", escalate=refine)
    assert rec.escalations[0]["outcome"] == "refuted"


def test_escalate_with_wrong_shape_is_an_error():
    with pytest.raises(InvalidInputError, match="escalate returned value of shape"):
        certify.at_least(np.zeros(3), 0.0, error=1.0, what="x", escalate=lambda mask: (np.zeros(2), 0.0, 0.0))


def test_mpmath_values_compare_exactly():
    with mpmath.workdps(50):
        a = mpmath.mpf(1) + mpmath.mpf(10) ** -40
        certify.at_least([a], [mpmath.mpf(1)], error=mpmath.mpf(10) ** -45, what="mp")
        with pytest.raises(certify.Undecided):
            certify.at_least([a], [mpmath.mpf(1)], error=mpmath.mpf(10) ** -39, what="mp")


def test_largest_error_margin_ratio_is_recorded(rec):
    certify.at_least(np.array([1.0, 0.2]), 0.0, error=0.1, what="a")   # ratios 0.1, 0.5
    rec.end_example_valid()
    assert rec.max_ratio == pytest.approx(0.5) and rec.max_ratio_what == "a"
    assert rec.certified == 2 and rec.comparisons == 1


def test_a_comparison_without_what_is_named_by_its_source_text():
    """``certify(cmp)`` with no ``what=``: failures name the comparison as the author wrote it (one line or many),
    not the expression tree the certified values were built from."""
    import torch

    from implreg.numerics import Certified

    loss = Certified.exact(torch.tensor([[1.0, 0.75]], dtype=torch.float64))
    with pytest.raises(AssertionError, match=r"^loss\[:, 1\] <= 0\.5 \* loss\[:, 0\]: value ≤ bound is false"):
        certify(loss[:, 1] <= 0.5 * loss[:, 0])
    with pytest.raises(AssertionError, match=r"^loss\[:, 1\] <= 0\.25 \* loss\[:, 0\]: value"):
        certify(
            loss[:, 1]
            <= 0.25 * loss[:, 0]
        )
    with pytest.raises(AssertionError, match=r"^ℓ₁ ≤ ℓ₀/2: value"):  # an explicit what= wins
        certify(loss[:, 1] <= 0.5 * loss[:, 0], what="ℓ₁ ≤ ℓ₀/2")
    # no source to read (code made by exec): the expression tree names it, as before
    scope = {"certify": certify, "loss": loss}
    with pytest.raises(AssertionError, match=r"^indexing\(.*≤.*: value"):
        exec("certify(loss[:, 1] <= 0.5 * loss[:, 0])", scope)
