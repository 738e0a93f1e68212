"""Statistical claims: the named tests against scipy/closed forms, and @sample claims end to end."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as ss

from implreg.harness import stats
from implreg.harness.claims import REGISTRY
from implreg.harness.results import strip_timing
from implreg.harness.verdict import run_claim

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from implreg_test_helpers import SUITE, claims_of, load_module


def test_paired_wilcoxon_less():
    obs = [(x, x + 1.0 + 0.1 * i) for i, x in enumerate(np.linspace(0, 1, 12))]
    r = stats.evaluate(stats.paired("wilcoxon", alternative="less", alpha=0.01), obs)
    assert r["holds"] and r["significant"] and r["n"] == 12
    assert r["p_value"] == pytest.approx(ss.wilcoxon([a - b for a, b in obs], alternative="less").pvalue)
    assert r["effect"]["value"] == -1.0            # every pair has a < b
    assert r["summary"]["a_lt_b"] == 12


def test_sign_test_is_an_exact_binomial_on_signs():
    obs = [(0.0, 1.0)] * 9 + [(1.0, 0.0)] * 3 + [(0.5, 0.5)] * 2   # 9 less, 3 greater, 2 ties
    r = stats.evaluate(stats.paired("sign", alternative="less", alpha=0.05), obs)
    expect = sum(math.comb(12, k) for k in range(9, 13)) / 2**12    # P[Bin(12, ½) ≥ 9]
    assert r["p_value"] == pytest.approx(expect)
    assert r["effect"]["value"] == pytest.approx(9 / 12)
    assert r["holds"] is (expect < 0.05)


def test_two_sample_mann_whitney_and_effect():
    obs = [(float(i), float(i) + 10) for i in range(10)]
    r = stats.evaluate(stats.two_sample("mannwhitney", alternative="less", alpha=0.01), obs)
    assert r["holds"] and r["effect"]["value"] == 0.0   # P(a > b) = 0


def test_deprecated_consistent_proportion_still_works_but_is_flagged():
    fair = [True] * 21 + [False] * 19
    r = stats.evaluate(stats.proportion(0.5, alpha=0.01), fair)
    assert r["outcome"] == "holds" and not r["significant"] and r["spec"]["holds_when"] == "consistent"
    assert r["deprecated"] and "DEPRECATED" in r["sentence"]
    assert r["p_value"] == pytest.approx(ss.binomtest(21, 40, 0.5).pvalue)
    biased = [True] * 35 + [False] * 5   # significantly inconsistent with ½: a significant result may refute
    r = stats.evaluate(stats.proportion(0.5, alpha=0.01), biased)
    assert r["outcome"] == "refuted" and r["refuted_by"] == "inconsistent"
    assert stats.evaluate(stats.proportion(0.5, alternative="greater", alpha=0.01), biased)["outcome"] == "holds"


def test_not_significant_is_inconclusive_never_refuted():
    """No effect by construction (symmetric differences), no margin: inconclusive, in every test and direction."""
    obs = [(0.0, 1.0), (1.0, 0.0)] * 10
    for spec in (stats.paired("wilcoxon", alternative="less"), stats.paired("sign", alternative="greater"),
                 stats.paired("ttest", alternative="two-sided"), stats.two_sample(alternative="less"),
                 stats.proportion(0.5, alternative="greater", holds_when="significant")):
        data = [a < b for a, b in obs] if spec.family == "proportion" else obs
        r = stats.evaluate(spec, data)
        assert r["outcome"] == "inconclusive" and r["refuted_by"] is None, (spec, r["sentence"])
        assert "not significant is not refuted" in r["sentence"] or "inconclusive" in r["sentence"]


def test_opposite_direction_refutes():
    obs = [(x + 1.0, x) for x in np.linspace(0, 1, 15)]   # a > b in every pair; the claim says a < b
    for test in ("wilcoxon", "sign", "ttest"):
        r = stats.evaluate(stats.paired(test, alternative="less", alpha=0.01), obs)
        assert r["outcome"] == "refuted" and r["refuted_by"] == "opposite", test
    # the opposite p-value of the sign test is the exact binomial tail 2^-15
    r = stats.evaluate(stats.paired("sign", alternative="less", alpha=0.01), obs)
    assert r["p_opposite"] == pytest.approx(0.5**15)


def test_equivalence_margin_refutes_a_claimed_effect_of_that_size():
    """Differences spread symmetrically in [−0.1, 0.1]: a shift of 0.5 is excluded by the TOST (p-values against
    scipy on the shifted differences), a margin below the spread is not."""
    d = np.linspace(-0.1, 0.1, 21)
    obs = [(float(x), 0.0) for x in d]
    r = stats.evaluate(stats.paired("wilcoxon", alternative="less", alpha=0.01, equivalence_margin=0.5), obs)
    assert r["outcome"] == "refuted" and r["refuted_by"] == "equivalence"
    assert r["equivalence"]["p_lower"] == pytest.approx(ss.wilcoxon(d + 0.5, alternative="greater").pvalue)
    assert r["equivalence"]["p_upper"] == pytest.approx(ss.wilcoxon(d - 0.5, alternative="less").pvalue)
    r = stats.evaluate(stats.paired("ttest", alternative="less", alpha=0.01, equivalence_margin=0.5), obs)
    assert r["equivalence"]["p_value"] == pytest.approx(ss.ttest_1samp(d, -0.5, alternative="greater").pvalue)
    assert r["outcome"] == "refuted"
    small = stats.evaluate(stats.paired("wilcoxon", alternative="less", alpha=0.01, equivalence_margin=0.01), obs)
    assert small["outcome"] == "inconclusive"
    # significant in the stated direction, but shown smaller than the claimed size: refuted
    tiny = [(-0.01 + 1e-4 * i, 0.0) for i in range(30)]
    r = stats.evaluate(stats.paired("wilcoxon", alternative="less", alpha=0.01, equivalence_margin=0.5), tiny)
    assert r["significant"] and r["outcome"] == "refuted" and r["refuted_by"] == "equivalence"


def test_proportion_within_is_an_exact_binomial_tost():
    k, n = 1010, 2000
    obs = [True] * k + [False] * (n - k)
    r = stats.evaluate(stats.proportion(0.5, within=0.05, alpha=0.01), obs)
    lower = ss.binom.sf(k - 1, n, 0.45)   # P[Bin(n, 0.45) ≥ k]
    upper = ss.binom.cdf(k, n, 0.55)
    assert r["equivalence"]["p_lower"] == pytest.approx(lower) and r["equivalence"]["p_upper"] == pytest.approx(upper)
    assert r["outcome"] == "holds"
    # the same proportion at n = 100 cannot be shown within ±0.05: inconclusive, never refuted
    few = stats.evaluate(stats.proportion(0.5, within=0.05, alpha=0.01), [True] * 51 + [False] * 49)
    assert few["outcome"] == "inconclusive"
    # far outside: refuted by the exact one-sided test at α/2
    out = stats.evaluate(stats.proportion(0.5, within=0.05, alpha=0.01), [True] * 80 + [False] * 20)
    assert out["outcome"] == "refuted" and out["refuted_by"] == "outside"
    assert out["outside"]["p_above"] == pytest.approx(ss.binom.sf(79, 100, 0.55))


def test_power_of_the_proportion_tost_is_exact():
    """Power at P = ½ is the binomial mass of the counts where both one-sided exact tests reject, counted here
    by brute force from math.comb; n = 600, margin 0.05 (the old det-positive-probability-half setting)."""
    n, lo, hi, alpha = 600, 0.45, 0.55, 0.01
    region = [k for k in range(n + 1) if ss.binom.sf(k - 1, n, lo) < alpha and ss.binom.cdf(k, n, hi) < alpha]
    power = sum(math.comb(n, k) for k in region) / 2**n
    r = stats.evaluate(stats.proportion(0.5, within=0.05, alpha=alpha), [True] * 300 + [False] * 300)
    assert r["power"]["tost_power_at_zero"] == pytest.approx(power, rel=1e-9)
    assert power < 0.2   # why the claim must be restated: at n = 600 the margin ±0.05 is almost never shown
    need = r["power"]["mde"]
    assert stats._binom_tost_power(n, 0.5, need, alpha) >= 0.8 > stats._binom_tost_power(n, 0.5, 0.95 * need, alpha)


def test_smallest_detectable_effect():
    # sign test, exact: n = 30 non-tied pairs, α = 0.01 one-sided; brute force from math.comb
    n, alpha = 30, 0.01
    kc = next(k for k in range(n + 1) if sum(math.comb(n, j) for j in range(k, n + 1)) / 2**n <= alpha)
    def power(q):
        return sum(math.comb(n, j) * q**j * (1 - q) ** (n - j) for j in range(kc, n + 1))
    obs = [(0.0, 1.0)] * 15 + [(1.0, 0.0)] * 15
    q = stats.evaluate(stats.paired("sign", alternative="less", alpha=alpha), obs)["power"]["mde"]
    assert power(q) >= 0.8 - 1e-9 and power(q - 1e-6) < 0.8
    # Wilcoxon: Noether's normal approximation, r = 2 (z_{1−α} + z_{0.8}) / √(3n)
    r = stats.evaluate(stats.paired("wilcoxon", alternative="less", alpha=alpha), obs)["power"]
    assert r["mde"] == pytest.approx(2 * (ss.norm.ppf(1 - alpha) + ss.norm.ppf(0.8)) / math.sqrt(90))
    assert "normal approximation" in r["method"]
    # t-test: exact from the noncentral t (power 0.8 at the reported d_z)
    t = stats.evaluate(stats.paired("ttest", alternative="less", alpha=alpha), obs)["power"]["mde"]
    crit = ss.t.ppf(1 - alpha, n - 1)
    assert ss.nct.sf(crit, n - 1, t * math.sqrt(n)) == pytest.approx(0.8, abs=1e-9)
    # too few pairs to ever be significant: said so, not a number
    r = stats.evaluate(stats.paired("sign", alternative="less", alpha=alpha), [(0.0, 1.0)] * 5)
    assert r["power"]["mde"] is None and "no outcome at this n can be significant" in r["sentence"]


def test_all_ties_never_support_a_directional_claim():
    r = stats.evaluate(stats.paired("wilcoxon", alternative="less"), [(1.0, 1.0)] * 10)
    assert r["p_value"] == 1.0 and not r["holds"] and r["outcome"] == "inconclusive"


def test_bad_specs_and_observations():
    with pytest.raises(ValueError):
        stats.paired("anova")
    with pytest.raises(ValueError):
        stats.paired(alternative="smaller")
    with pytest.raises(ValueError):
        stats.proportion(1.5)
    with pytest.raises(ValueError, match="NaN"):
        stats.evaluate(stats.paired(), [(1.0, float("nan"))] * 5)
    with pytest.raises(ValueError, match="equivalence_margin must be a positive"):
        stats.paired(equivalence_margin=-1.0)
    with pytest.raises(ValueError, match="within"):
        stats.proportion(0.5, within=0.05, alternative="greater")
    with pytest.raises(ValueError, match="p − m"):
        stats.proportion(0.02, within=0.05)


@pytest.fixture(scope="module")
def statistical():
    with REGISTRY.isolated():
        module = load_module(SUITE / "statistical.py")
        specs = claims_of(module)
        yield specs, {cid: run_claim(spec) for cid, (_, spec) in specs.items()}, module.PLANTED


def test_sample_claims_verdicts(statistical):
    _, records, planted = statistical
    assert {cid: r["verdict"] for cid, r in records.items()} == planted
    r = records["stat/shift-lowers"]
    s = r["statistics"]
    assert s["n"] == 24 and r["instances"] == 24 and len(s["pairs"]) == 24
    assert s["spec"]["test"] == "wilcoxon" and s["spec"]["alpha"] == 0.01 and "effect" in s
    assert s["power"]["mde"] is not None and "Sensitivity" in r["explanation"]
    assert r["hypothesis"]["phases"] == ["generate"]        # no shrinking of a statistical sample
    # the sample is a random draw, not n copies of Hypothesis' simplest example
    assert len({round(a, 12) for a, _ in s["pairs"]}) > 12
    refuted = records["stat/shift-raises-control"]
    assert refuted["matches_expect"] and "significant in the opposite direction" in refuted["explanation"]
    assert refuted["refutation"] == {"failed_check": "opposite", "named": ["opposite"], "matches": True}


def test_newcomer_example_is_inconclusive_both_ways(statistical):
    """Issue 13 §3: two independent Gaussian 4×4 matrices' effective ranks, paired Wilcoxon "first < second",
    n = 30.  No effect by construction: inconclusive as a claim (a mismatch, not a refutation) and as a control
    (which therefore does NOT pass); with a stated margin of 0.5 the equivalence test refutes it."""
    _, records, _ = statistical
    for cid in ("stat/independent-eranks", "stat/independent-eranks-control"):
        r = records[cid]
        assert r["verdict"] == "inconclusive" and not r["matches_expect"], r["explanation"]
        assert "not significant is not refuted" in r["explanation"]
    margin = records["stat/independent-eranks-margin"]
    assert margin["verdict"] == "refuted" and margin["matches_expect"]
    assert margin["statistics"]["refuted_by"] == "equivalence"
    wrong = records["stat/wrong-statistical-reason"]
    assert wrong["verdict"] == "error" and wrong["error"]["type"] == "WrongReason"


def test_sample_is_a_function_of_the_seed(statistical):
    specs, records, _ = statistical
    spec = specs["stat/shift-lowers"][1]
    assert strip_timing(run_claim(spec, seed=0)) == strip_timing(records["stat/shift-lowers"])
    other = run_claim(spec, seed=1)
    assert other["statistics"]["pairs"] != records["stat/shift-lowers"]["statistics"]["pairs"]


def test_non_finite_observations_name_the_first_one_and_the_usual_cause():
    obs = [(1.0, 2.0), (float("nan"), 3.0), (2.0, 4.0), (1.5, float("inf"))]
    with pytest.raises(ValueError, match=r"2 of 4 observations contain NaN or ±inf; the first is number 1, "
                                         r"\(a, b\) = \(nan, 3\.0\) \(a simulator that did not reach"):
        stats.evaluate(stats.paired("wilcoxon", alternative="less"), obs)


def _brute_signed_rank(d, alternative):
    """P-value of the signed-rank statistic over all 2ⁿ sign flips, by enumeration (the definition)."""
    import itertools

    ranks = ss.rankdata(np.abs(d))
    obs = ranks[d > 0].sum()
    sums = np.array([ranks[np.array(s, dtype=bool)].sum() for s in itertools.product((0, 1), repeat=d.size)])
    p_le, p_ge = np.mean(sums <= obs + 1e-9), np.mean(sums >= obs - 1e-9)
    return {"less": p_le, "greater": p_ge, "two-sided": min(1.0, 2 * min(p_le, p_ge))}[alternative]


def test_wilcoxon_with_ties_is_exact_and_fast():
    """Tied |d| (discrete observations: test errors, counts): scipy runs a permutation test over all 2ⁿ sign flips
    for n ≤ 13 (0.45 s per call at n = 12, most of the Neyshabur claims' time) and the normal approximation above.
    The exact conditional distribution gives scipy's permutation p-value to the last bit, and the enumerated one
    where scipy approximates."""
    rng = np.random.default_rng(1)
    checked = 0
    while checked < 40:
        d = rng.integers(-4, 5, size=int(rng.integers(3, 14))).astype(float) * 0.25
        d = d[d != 0]
        if d.size < 2 or np.unique(np.abs(d)).size == d.size:
            continue
        for alt in ("less", "greater", "two-sided"):
            obs = [(float(x), 0.0) for x in d]
            r = stats.evaluate(stats.paired("wilcoxon", alternative=alt, alpha=0.01), obs)
            ref = ss.wilcoxon(d, alternative=alt)  # scipy's permutation method (n ≤ 13 with ties)
            assert r["p_value"] == ref.pvalue and r["statistic"] == ref.statistic
        checked += 1
    d = np.array([1, 1, 2, -2, 3, 3, 3, -4, 5, 5, 6, -6, 7, 8, 8, 9], dtype=float)  # n = 16: scipy approximates
    for alt in ("less", "greater", "two-sided"):
        r = stats.evaluate(stats.paired("wilcoxon", alternative=alt, alpha=0.01), [(float(x), 0.0) for x in d])
        assert r["p_value"] == pytest.approx(_brute_signed_rank(d, alt), rel=1e-12)
