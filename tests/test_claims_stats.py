"""Statistical claims: the named tests against scipy/closed forms, and @sample claims end to end."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as ss

from implreg import stats
from implreg.claims import REGISTRY
from implreg.results import strip_timing
from implreg.verdict import run_claim

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


def test_proportion_consistent_vs_significant():
    fair = [True] * 21 + [False] * 19
    r = stats.evaluate(stats.proportion(0.5, alpha=0.01), fair)
    assert r["holds"] and not r["significant"] and r["spec"]["holds_when"] == "consistent"
    assert r["p_value"] == pytest.approx(ss.binomtest(21, 40, 0.5).pvalue)
    biased = [True] * 35 + [False] * 5
    assert not stats.evaluate(stats.proportion(0.5, alpha=0.01), biased)["holds"]
    assert stats.evaluate(stats.proportion(0.5, alternative="greater", alpha=0.01), biased)["holds"]


def test_all_ties_never_support_a_directional_claim():
    r = stats.evaluate(stats.paired("wilcoxon", alternative="less"), [(1.0, 1.0)] * 10)
    assert r["p_value"] == 1.0 and not r["holds"]


def test_bad_specs_and_observations():
    with pytest.raises(ValueError):
        stats.paired("anova")
    with pytest.raises(ValueError):
        stats.paired(alternative="smaller")
    with pytest.raises(ValueError):
        stats.proportion(1.5)
    with pytest.raises(ValueError, match="NaN"):
        stats.evaluate(stats.paired(), [(1.0, float("nan"))] * 5)


@pytest.fixture(scope="module")
def statistical():
    with REGISTRY.isolated():
        module = load_module(SUITE / "statistical.py")
        specs = claims_of(module)
        yield specs, {cid: run_claim(spec) for cid, (_, spec) in specs.items()}


def test_sample_claims_verdicts(statistical):
    _, records = statistical
    assert {cid: r["verdict"] for cid, r in records.items()} == {
        "stat/shift-lowers": "holds",
        "stat/shift-raises-control": "refuted",
        "stat/coin-is-fair": "holds",
        "stat/hypothesis-draws-are-not-uniform": "refuted",
    }
    r = records["stat/shift-lowers"]
    s = r["statistics"]
    assert s["n"] == 24 and r["instances"] == 24 and len(s["pairs"]) == 24
    assert s["spec"]["test"] == "wilcoxon" and s["spec"]["alpha"] == 0.01 and "effect" in s
    assert r["hypothesis"]["phases"] == ["generate"]        # no shrinking of a statistical sample
    # the sample is a random draw, not n copies of Hypothesis' simplest example
    assert len({round(a, 12) for a, _ in s["pairs"]}) > 12
    refuted = records["stat/shift-raises-control"]
    assert refuted["matches_expect"] and "not significant" in refuted["explanation"]


def test_sample_is_a_function_of_the_seed(statistical):
    specs, records = statistical
    spec = specs["stat/shift-lowers"][1]
    assert strip_timing(run_claim(spec, seed=0)) == strip_timing(records["stat/shift-lowers"])
    other = run_claim(spec, seed=1)
    assert other["statistics"]["pairs"] != records["stat/shift-lowers"]["statistics"]["pairs"]
