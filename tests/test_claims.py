"""The claim API, the registry, malformed claims, and the verdict rules on planted claims (in-process)."""

import ast
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from implreg import certify
from implreg.harness.claims import REGISTRY, Batch, Source, batches, claim, get_spec
from implreg.harness.profiles import PROFILES, UnknownProfileError, claim_seed, get_profile
from implreg.harness.results import strip_timing
from implreg.harness.verdict import run_claim

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from implreg_test_helpers import FIXTURES, SUITE, claims_of, load_module


@pytest.fixture(scope="module")
def planted():
    """Every planted claim run once under the ci profile: id → record."""
    with REGISTRY.isolated():
        module = load_module(SUITE / "planted.py")
        records = {cid: run_claim(spec, profile="ci") for cid, (_, spec) in claims_of(module).items()}
        yield module, records


# ---- verdict rules -------------------------------------------------------------------------------
def test_every_planted_claim_gets_its_verdict(planted):
    module, records = planted
    assert set(records) == set(module.PLANTED)
    got = {cid: r["verdict"] for cid, r in records.items()}
    assert got == module.PLANTED


def test_false_claim_is_refuted_with_minimal_shrunk_counterexample(planted):
    r = planted[1]["planted/false-ge10"]
    ce = r["counterexample"]
    assert r["verdict"] == "refuted" and r["matches_expect"]
    assert "Falsifying example: false_ge10(" in ce["falsifying_example"] and "x=0," in ce["falsifying_example"]
    assert ast.literal_eval(ce["arguments"]) == {"x": 0}          # the minimal counterexample
    assert "x: value ≥ bound is false: value = 0.0, bound = 10.0" in ce["message"]
    assert ce["reproduce_failure"].startswith("@reproduce_failure(")
    assert "--id planted/false-ge10 --seed 0 --profile ci" in ce["command"]


def test_batched_counterexample_shrinks_to_one_instance(planted):
    ce = planted[1]["planted/false-batched"]["counterexample"]
    args = ast.literal_eval(ce["arguments"])
    assert len(args["batch"]) == 1 and args["batch"][0] > 0.5


def test_undecidable_is_inconclusive_not_holds(planted):
    r = planted[1]["planted/undecidable"]
    assert r["verdict"] == "inconclusive" and not r["matches_expect"]
    assert r["certification"]["undecided_count"] > 0 and r["certification"]["escalation_count"] == 0
    assert r["counterexample"] is None
    assert "could not be decided" in r["explanation"]


def test_escalation_that_resolves_holds_and_is_recorded(planted):
    r = planted[1]["planted/escalation-resolves"]
    cert = r["certification"]
    assert r["verdict"] == "holds"
    assert cert["escalation_count"] > 0 and cert["undecided_count"] == 0
    assert {e["dps"] for e in cert["escalations"]} == {30}
    assert all(e["outcome"] == "certified" for e in cert["escalations"])
    assert r["instances"] > r["hypothesis"]["valid"]  # batches count their instances
    assert "escalation" in r["explanation"]


@pytest.mark.parametrize("cid, kind, text", [
    ("planted/crash", "ZeroDivisionError", "division by zero"),
    ("planted/returns-value", "ReturnedValue", "claim returned a value; claims must assert"),
    ("planted/nan", "NumericalError", "det W(t): value is not finite"),
    ("planted/no-valid-instances", "NoValidInstances", "produced no valid instances"),
])
def test_crashes_are_errors(planted, cid, kind, text):
    r = planted[1][cid]
    assert r["verdict"] == "error"
    assert r["error"]["type"] == kind
    assert text in r["error"]["message"] and text in r["explanation"]


def test_crash_keeps_its_shrunk_example(planted):
    ce = planted[1]["planted/nan"]["counterexample"]
    assert ast.literal_eval(ce["arguments"]) == {"x": 3}   # the smallest x that produces the NaN


def test_too_few_valid_examples_is_inconclusive(planted):
    r = planted[1]["planted/too-few-valid"]
    assert r["verdict"] == "inconclusive" and "Too few valid examples" in r["explanation"]


def test_negative_control_that_holds_is_a_mismatch(planted):
    r = planted[1]["planted/control-not-refuted"]
    assert r["verdict"] == "holds" and r["expect"] == "refuted" and r["matches_expect"] is False


def test_same_seed_same_record_and_seed_is_recorded(planted):
    _module, records = planted
    with REGISTRY.isolated():
        module2 = load_module(SUITE / "planted.py")
        specs = claims_of(module2)
        for cid in ("planted/false-ge10", "planted/true-square", "planted/escalation-resolves"):
            again = run_claim(specs[cid][1], profile="ci")
            a, b = strip_timing(records[cid]), strip_timing(again)
            a.pop("file"), b.pop("file"), a.pop("module"), b.pop("module")
            assert a == b
            assert again["hypothesis"]["seed"] == claim_seed(0, cid)


def test_direct_call_asserts_the_expectation():
    with REGISTRY.isolated():
        module = load_module(SUITE / "planted.py")
        module.false_ge10()  # expected refuted and refuted: passes
        with pytest.raises(AssertionError, match="could not be decided"):
            module.undecidable()


def test_assertion_inside_an_installed_library_is_an_error_not_a_refutation(tmp_path, monkeypatch):
    lib = tmp_path / "site-packages"
    lib.mkdir()
    (lib / "fakelib_implreg_test.py").write_text("def check(x):\n    assert x < 0, 'internal invariant'\n")
    monkeypatch.syspath_prepend(str(lib))
    import fakelib_implreg_test

    with REGISTRY.isolated():
        @claim("t/library-assert", statement="calls a library whose internal assert fails")
        @given(x=st.integers(0, 3))
        def lib_assert(x):
            fakelib_implreg_test.check(x)

        r = run_claim(get_spec(lib_assert))
    sys.modules.pop("fakelib_implreg_test", None)
    assert r["verdict"] == "error" and "assertion inside library code" in r["explanation"]


def test_numpy_testing_assertions_in_the_claim_are_refutations():
    import numpy as np

    with REGISTRY.isolated():
        @claim("t/np-assert", statement="x equals 1", expect="refuted")
        @given(x=st.floats(0, 1))
        def np_assert(x):
            np.testing.assert_allclose(x, 1.0)

        r = run_claim(get_spec(np_assert))
    assert r["verdict"] == "refuted"


def test_wall_budget_stops_generation_and_is_reported():
    with REGISTRY.isolated():
        module = load_module(FIXTURES / "budget.py")
        r = run_claim(get_spec(module.slow))
    assert r["verdict"] == "holds"
    assert r["hypothesis"]["budget_exhausted"] is True
    assert 1 <= r["hypothesis"]["valid"] < 1000  # the fixture asks for 1000 examples: fewer means the budget stopped it
    assert "wall budget" in r["explanation"]


# ---- malformed claims ----------------------------------------------------------------------------
def test_malformed_claims_are_errors_naming_claim_and_problem():
    with REGISTRY.isolated():
        module = load_module(SUITE / "malformed.py")
        by_fn = {name: run_claim(get_spec(getattr(module, name))) for name in
                 ("missing_id", "missing_statement", "bad_id", "bad_kind", "bad_expect", "no_given",
                  "dup_first", "dup_second")}
    assert all(r["verdict"] == "error" for r in by_fn.values())
    expl = {k: r["explanation"] for k, r in by_fn.items()}
    assert "missing_id" in expl["missing_id"] and "has no id" in expl["missing_id"]
    assert "'malformed/no-statement'" in expl["missing_statement"] and "has no statement" in expl["missing_statement"]
    assert "'Bad ID with spaces'" in expl["bad_id"] and "bad id format" in expl["bad_id"]
    assert "unknown kind 'hunch'" in expl["bad_kind"]
    assert "expect must be 'holds' or 'refuted', got 'maybe'" in expl["bad_expect"]
    assert "'malformed/no-given'" in expl["no_given"] and "has no @given" in expl["no_given"]
    # a duplicated id makes both definitions errors, each naming the other's location
    assert "duplicate claim id 'dup/same'" in expl["dup_first"] and "malformed.py:51" in expl["dup_first"]
    assert "duplicate claim id 'dup/same'" in expl["dup_second"] and "malformed.py:45" in expl["dup_second"]


def test_other_decoration_mistakes():
    with REGISTRY.isolated():
        @claim
        @given(x=st.integers())
        def bare(x):
            pass

        assert "must be called with an id" in get_spec(bare).problems[0]

        @claim("t/twice", statement="s")
        @claim("t/twice", statement="s")
        @given(x=st.integers())
        def twice(x):
            pass

        assert any("applied twice" in p for p in get_spec(twice).problems)

        @claim("t/inconclusive-expect", statement="s", expect="inconclusive")
        @given(x=st.integers())
        def inc(x):
            pass

        assert any("never expectations" in p for p in get_spec(inc).problems)


def test_registry_replaces_redefinition_of_the_same_function():
    with REGISTRY.isolated() as reg:
        for _ in range(2):
            exec(textwrap.dedent('''
                from hypothesis import given, strategies as st
                from implreg.harness.claims import claim
                @claim("t/same", statement="s")
                @given(x=st.integers())
                def same(x):
                    pass
            '''), {"__name__": "fake_module"})
        assert len(reg.get("t/same")) == 1


# ---- sources, batches, profiles ------------------------------------------------------------------
def test_source_references():
    src = Source(key="razin-cohen-2020", title="T", authors="N. Razin, N. Cohen", year=2020, arxiv="2005.06398")
    ref = src.at("Theorem 1", confirmed=False)
    d = ref.as_dict()
    assert d["locator"] == "Theorem 1" and d["confirmed"] is False and d["short"] == "Razin & Cohen 2020"
    assert d["link"] == "https://arxiv.org/abs/2005.06398"
    assert src.theorem(2).locator == "Theorem 2" and src.section("3.1").locator == "§3.1"
    assert Source(key="k", title="T", authors="A. One, B. Two, C. Three", year=1).short() == "One et al. 1"


def test_batches_helper():
    from hypothesis import find

    b = find(batches(st.integers(0, 9), max_size=5), lambda b: len(b) >= 3)
    assert isinstance(b, Batch) and len(b) == 3
    stacked = find(batches(st.integers(0, 9), max_size=4, stack=sum), lambda s: s >= 10)
    assert stacked == 10
    with pytest.raises(ValueError, match="min_size"):
        find(batches(st.integers(), min_size=0), lambda b: True)


def test_bad_sample_arguments_are_claim_errors_not_import_errors():
    from implreg.harness import stats
    from implreg.harness.claims import sample

    with REGISTRY.isolated():
        @claim("t/bad-sample", kind="empirical", statement="s")
        @sample(n=1, test="wilcoxon", x=st.floats(0, 1))
        def bad(x):
            return x, x

        @claim("t/no-draws", kind="empirical", statement="s")
        @sample(n=5, test=stats.paired())
        def no_draws():
            return 0.0, 1.0

        problems = get_spec(bad).problems
        assert any("n must be an integer ≥ 2" in p for p in problems)
        assert any("test must be a stats spec" in p for p in problems)
        assert any("parameter named rng" in p for p in get_spec(no_draws).problems)
        assert run_claim(get_spec(bad))["verdict"] == "error"


def test_profiles():
    assert set(PROFILES) == {"quick", "ci", "thorough"}
    assert get_profile(None).name == "ci" and get_profile("ci").resolve_seed(None) == 0
    with pytest.raises(UnknownProfileError, match="unknown profile 'fast'; known profiles: quick"):
        get_profile("fast")
    ci, quick, thorough = PROFILES["ci"], PROFILES["quick"], PROFILES["thorough"]
    assert (quick.examples_for(20), ci.examples_for(20), thorough.examples_for(20)) == (4, 20, 200)
    assert ci.settings(max_examples=7).derandomize and ci.settings(max_examples=7).database is None
    assert ci.settings(max_examples=7).deadline is None
    assert claim_seed(0, "a/b") == claim_seed(0, "a/b") != claim_seed(1, "a/b") != claim_seed(0, "a/c")


def test_certify_outside_a_claim_records_nothing_and_still_checks():
    certify.at_least(1.0, 0.0, what="x")
    with pytest.raises(certify.Undecided):
        certify.at_least(0.0, 0.0, error=1.0, what="x")


def test_documented_deviation_of_an_empirical_claim_is_reported_not_failed():
    """An empirical replication that disagrees with the paper keeps its verdict and expectation, is not a
    mismatch of the run, and carries the explanation; a non-empirical claim may not document a deviation."""
    from implreg.harness.results import build_results

    with REGISTRY.isolated():
        @claim("test/deviating-replication", kind="empirical", expect="holds", statement="x is always > 5.",
               deviation="The toy replication draws small x; the paper's effect needs larger x.")
        @given(st.integers(0, 10))
        def deviating(x):
            assert x > 5

        @claim("test/theorem-with-deviation", kind="theorem", expect="holds", statement="x ≥ 0.",
               deviation="not allowed for a theorem")
        @given(st.integers(0, 10))
        def theorem_dev(x):
            assert x >= 0

        r = run_claim(get_spec(deviating), profile="ci")
        assert r["verdict"] == "refuted" and not r["matches_expect"] and r["deviation_documented"]
        results = build_results([r], {"pytest_exit": 0})
        assert results["run"]["passed"] and results["run"]["documented_deviations"] == ["test/deviating-replication"]
        bad = run_claim(get_spec(theorem_dev), profile="ci")
        assert bad["verdict"] == "error"
        assert any("only empirical claims may document a deviation" in p for p in bad["problems"])


def test_catalogue_finding_is_a_refutation_shown_as_such_and_fails_when_it_stops_reproducing():
    """A claim the catalogue states as holding but the harness refutes as stated: expect='refuted' plus the
    evidence; the run passes while it is refuted, fails once it holds, and a finding needs expect='refuted'."""
    from implreg.harness.report.render import render_html
    from implreg.harness.results import build_results

    header = {"pytest_exit": 0, "profile": "ci", "seed": 0, "paths": ["x"], "workers": 1, "command": "implreg verify x",
              "versions": {"implreg": "0.1.0"}, "platform": "Linux", "cpu_count": 2,
              "timing": {"wall_s": 1.0, "started": "2024-01-01 00:00:00 UTC"}}
    with REGISTRY.isolated():
        @claim("test/false-as-stated", kind="proposition", expect="refuted", statement="x is always > 5.",
               finding="x = 0 is a counterexample: the catalogue forgot the hypothesis x > 5.")
        @given(st.integers(0, 10))
        def false_as_stated(x):
            assert x > 5

        @claim("test/finding-no-longer-reproduces", kind="proposition", expect="refuted", statement="x ≥ 0.",
               finding="was refuted once")
        @given(st.integers(0, 10))
        def now_holds(x):
            assert x >= 0

        @claim("test/finding-expecting-holds", expect="holds", statement="x ≥ 0.", finding="contradictory")
        @given(st.integers(0, 10))
        def contradictory(x):
            assert x >= 0

        r = run_claim(get_spec(false_as_stated), profile="ci")
        assert r["verdict"] == "refuted" and r["matches_expect"] and "forgot" in r["finding"]
        results = build_results([r], header)
        assert results["run"]["passed"] and results["run"]["catalogue_findings"] == ["test/false-as-stated"]
        html = render_html(results)
        assert "Catalogue finding." in html and "refutes it as stated" in html and "forgot the hypothesis" in html

        stale = run_claim(get_spec(now_holds), profile="ci")
        assert stale["verdict"] == "holds" and not stale["matches_expect"]
        results = build_results([stale], header)
        assert not results["run"]["passed"] and results["run"]["catalogue_findings"] == []
        assert "the finding did not reproduce" in render_html(results)

        bad = run_claim(get_spec(contradictory), profile="ci")
        assert bad["verdict"] == "error"
        assert any("give expect='refuted'" in p for p in bad["problems"])


def test_inconclusive_names_the_first_undecided_comparison_and_spots_equality():
    """A conjecture tight at some instances (|tr W| = ‖W‖_* for 1×1 W) is inconclusive, and the explanation shows
    the first undecided comparison and says it is an equality case, with what to do about it."""
    with REGISTRY.isolated():
        @claim("test/tight-at-d1", kind="conjecture", statement="|x| ≤ |x| + 0, certified with a positive error.")
        @given(st.floats(0.5, 2.0))
        def tight(x):
            certify.at_most(abs(x), abs(x), error=1e-12, what="|x| − |x|")

        r = run_claim(get_spec(tight), profile="ci")
    assert r["verdict"] == "inconclusive"
    assert "First: |x| − |x| at instance" in r["explanation"] and "equality case" in r["explanation"]
    assert "Certified.exact" in r["explanation"] and "error=0" in r["explanation"]


def test_inconclusive_equality_of_estimates_says_why_and_what_to_write_instead():
    """`a == b` of a simulator's estimate can never be certified: the verdict is inconclusive, and its explanation
    gives the reason and the close(a, b, tol) form (not the tie advice meant for exact operands)."""
    import numpy as np
    import torch
    from flint import arb

    from implreg.numerics import Certified, Refinement

    def refine(rows, prec):
        return Refinement(np.array([arb(0.25, 2.0**-prec)] * len(rows), dtype=object), False)

    with REGISTRY.isolated():
        @claim("test/equal-estimates", kind="conjecture", statement="an estimate equals its exact value.",
               max_examples=5)
        @given(st.integers(0, 3))
        def equal(_):
            x = Certified.measured(torch.tensor([0.25], dtype=torch.float64), 1e-9, rigorous=False, refine=refine,
                                   label="x(t)")
            certify(x == 0.25, what="x(t) = ¼")

        r = run_claim(get_spec(equal), profile="ci")
    assert r["verdict"] == "inconclusive"
    assert "Why: an equality of values that carry an error (x(t))" in r["explanation"]
    assert "close(a, b, tol)" in r["explanation"] and "equality case" not in r["explanation"]


def test_inconclusive_on_a_value_float64_never_had_prints_no_placeholder():
    """A comparison on a quantity whose float64 error is ∞ (a solver kept none; the leaf is 0 ± ∞) that no
    refinement decides: the explanation says 'unknown in float64', not 'value = 0.0'."""
    import torch

    from implreg.numerics import Certified

    with REGISTRY.isolated():
        @claim("test/unknown", kind="conjecture", statement="t ≥ 1.", max_examples=3)
        @given(st.integers(0, 3))
        def unknown(_):
            t = Certified.measured(torch.zeros(1, dtype=torch.float64), float("inf"), rigorous=False, label="t")
            certify(t >= 1.0, what="t ≥ 1")

        r = run_claim(get_spec(unknown), profile="ci")
    assert r["verdict"] == "inconclusive"
    assert "First: t ≥ 1 at instance [0]: unknown in float64 (error bound = inf)." in r["explanation"]
    assert "value = 0.0" not in r["explanation"]


def test_budget_bounds_shrinking_and_the_smallest_failure_found_is_still_reported():
    """A slow refuted claim: shrinking stops about one budget after the first failure, the verdict stays refuted
    with a replayable counterexample, and the explanation says it was cut."""
    import time as _time

    with REGISTRY.isolated():
        @claim("test/slow-refuted", kind="conjecture", statement="no list has 8 distinct values summing to ≥ 1000.",
               budget_s=1.0, max_examples=50)
        @given(st.lists(st.integers(0, 10**6), min_size=1, max_size=30))
        def slow(xs):
            if len(set(xs)) >= 8 and sum(xs) >= 1000:
                _time.sleep(0.1)  # only failing calls are slow: the first failure comes fast, shrinking is slow
                raise AssertionError("8 distinct values summing to ≥ 1000")

        t0 = _time.monotonic()
        r = run_claim(get_spec(slow), profile="ci")
        took = _time.monotonic() - t0
    assert r["verdict"] == "refuted" and "Falsifying example" in r["counterexample"]["falsifying_example"]
    assert r["hypothesis"]["shrink_cut"] > 0 and "Shrinking was cut short" in r["explanation"]
    # 1 s of shrinking after the first failure + the replay and the call in flight; unbounded, the ~108 failing
    # shrink calls take ≥ 10.8 s.  6 s leaves room for a loaded machine.
    assert took < 6.0, took


def test_target_scores_are_kept_apart_from_the_counterexample_notes():
    """certify steers Hypothesis with target(); its score lines go to target_scores, not to the notes a reader
    sees under the counterexample."""
    with REGISTRY.isolated():
        @claim("test/targeted", kind="conjecture", statement="y ≤ 2000 and x ≤ 900.")
        @given(st.integers(0, 1000), st.integers(0, 1000))
        def targeted(x, y):
            certify.at_most(float(y), 2000.0, error=1.0, what="y")
            certify.at_most(float(x), 900.0, error=1.0, what="x")

        r = run_claim(get_spec(targeted), profile="ci")
    ce = r["counterexample"]
    assert r["verdict"] == "refuted" and ce["target_scores"], ce
    assert all("(label=" in t for t in ce["target_scores"])
    assert not any("(label=" in n for n in ce["notes"])


def test_batches_draw_distinct_instances_even_in_the_first_example():
    """Hypothesis' first example is its simplest: a plain list of 8 would be 8 copies of one minimal instance.
    While generating, a batch that repeats an instance (by value when hashable, by repr otherwise) is rejected,
    so even a one-example claim tests a whole batch of distinct instances."""
    seen = []
    with REGISTRY.isolated():
        @claim("test/distinct", statement="batches hold distinct instances.", max_examples=1)
        @given(b=batches(st.tuples(st.integers(0, 10**6), st.floats(0.5, 2.0)), min_size=8, max_size=8),
               u=batches(st.lists(st.integers(0, 9), min_size=1, max_size=3), min_size=4, max_size=4))
        def distinct(b, u):
            seen.append((list(b), list(u)))
            assert len(set(b)) == 8 and len({repr(x) for x in u}) == 4

        r = run_claim(get_spec(distinct), profile="ci")
    assert r["verdict"] == "holds", r["explanation"]
    assert r["instances"] == 12 and len(seen) >= 1
    assert r["hypothesis"]["repeated_batches"] >= 1  # the simplest example was drawn and set aside


def test_a_batch_strategy_that_cannot_vary_is_reported_not_passed():
    """batches of a one-value strategy can only repeat: no valid example, and the message says why."""
    with REGISTRY.isolated():
        @claim("test/cannot-vary", statement="x = 1.")
        @given(b=batches(st.just(1), min_size=2, max_size=3))
        def cannot_vary(b):
            assert all(x == 1 for x in b)

        r = run_claim(get_spec(cannot_vary), profile="ci")
    assert r["verdict"] in ("error", "inconclusive")
    assert "repeated an instance" in r["explanation"], r["explanation"]


# ---- refutations for the stated reason (issue 13 §2) ----------------------------------------------
@pytest.fixture(scope="module")
def reasons():
    with REGISTRY.isolated():
        module = load_module(SUITE / "reasons.py")
        records = {cid: run_claim(spec, profile="ci") for cid, (_, spec) in claims_of(module).items()}
        yield module, records


def test_controls_are_refuted_only_for_the_stated_reason(reasons):
    module, records = reasons
    assert {cid: r["verdict"] for cid, r in records.items()} == module.PLANTED


def test_named_comparison_refutes_and_is_recorded(reasons):
    r = reasons[1]["reasons/control-named-comparison"]
    assert r["matches_expect"] and r["refuted_by"] == ["x ≥ 5"]
    assert r["refutation"] == {"failed_check": "x ≥ 5", "named": ["x ≥ 5"], "matches": True}
    assert r["counterexample"]["failed_check"] == "x ≥ 5"
    assert ast.literal_eval(r["counterexample"]["arguments"]) == {"x": 0}
    assert reasons[1]["reasons/control-regex"]["refutation"]["failed_check"] == "x ≥ 5 at level 0"


@pytest.mark.parametrize("cid, kind, text", [
    ("reasons/control-precondition", "PreconditionFailed", "the solver reached the requested loss"),
    ("reasons/holds-precondition", "PreconditionFailed", "x is not 7"),
    ("reasons/control-other-comparison", "WrongReason", "failed 'x ≤ 2 (a sanity bound)'"),
    ("reasons/control-plain-assert", "WrongReason", "failed 'the instance is large'"),
    ("reasons/finding-other-comparison", "WrongReason", "failed 'x ≥ 1'"),
])
def test_wrong_reasons_are_errors_that_fail_the_run(reasons, cid, kind, text):
    from implreg.harness.results import build_results

    r = reasons[1][cid]
    assert r["verdict"] == "error" and not r["matches_expect"]
    assert r["error"]["type"] == kind and text in r["explanation"]
    assert r["counterexample"] is not None      # the example that failed for the wrong reason is shown
    assert not build_results([r], {"pytest_exit": 0})["run"]["passed"]


def test_finding_refuted_by_another_comparison_is_not_a_finding(reasons):
    from implreg.harness.results import build_results

    r = reasons[1]["reasons/finding-other-comparison"]
    results = build_results([r], {"pytest_exit": 0})
    assert results["run"]["catalogue_findings"] == [] and results["run"]["mismatches"] == [r["id"]]


def test_discarded_preconditions_are_counted_with_their_reason(reasons):
    r = reasons[1]["reasons/discard-precondition"]
    assert r["verdict"] == "holds"
    assert r["hypothesis"]["discarded"] == {"x ≠ 0 (excluded by the statement)": 1}
    assert "discarded by require" in r["explanation"]


def test_control_without_refuted_by_is_warned_about(reasons):
    r = reasons[1]["reasons/control-unnamed"]
    assert r["verdict"] == "refuted" and any("names no refuted_by" in w for w in r["warnings"])
    assert reasons[1]["reasons/control-named-comparison"]["warnings"] == []


def test_refuted_by_is_validated():
    from implreg.harness import stats
    from implreg.harness.claims import sample

    with REGISTRY.isolated():
        @claim("t/refuted-by-on-holds", statement="s", refuted_by="x ≥ 5")
        @given(x=st.integers())
        def on_holds(x):
            pass

        @claim("t/refuted-by-empty", statement="s", expect="refuted", refuted_by="  ")
        @given(x=st.integers())
        def empty(x):
            pass

        @claim("t/stat-reason", kind="empirical", statement="s", expect="refuted", refuted_by="x ≥ 5")
        @sample(n=5, test=stats.paired(), x=st.floats(0, 1))
        def stat_reason(x):
            return x, x

        assert any("needs expect='refuted'" in p for p in get_spec(on_holds).problems)
        assert any("non-empty string" in p for p in get_spec(empty).problems)
        assert any("names the statistical reason" in p for p in get_spec(stat_reason).problems)


def test_require_rejects_non_boolean_conditions():
    from implreg.errors import InvalidInputError
    from implreg.harness.claims import require

    with pytest.raises(InvalidInputError, match="boolean"):
        require(1.0, what="x")
    with pytest.raises(InvalidInputError, match="what="):
        require(True, what="")
    from implreg.harness.claims import PreconditionFailed

    with pytest.raises(PreconditionFailed, match="instance 1"):
        require([True, False], what="converged")


# ---- layering (issue 11 item 6) ------------------------------------------------------------------
def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_claims_does_not_import_verdict_anywhere():
    """claims (decorator, registry, validation) sits below verdict (running a claim): no import of verdict,
    not even inside a function; verdict imports claims."""
    import implreg.harness.claims
    import implreg.harness.verdict

    claims_imports = _imports(Path(implreg.harness.claims.__file__))
    above = ("implreg.harness.verdict", "implreg.harness.plugin", "implreg.harness.results", "implreg.harness.cli",
             "implreg.harness.report")
    assert not any(m.startswith(above) for m in claims_imports)
    assert "implreg.harness.claims" in _imports(Path(implreg.harness.verdict.__file__))


def test_direct_call_works_when_only_claims_is_imported(tmp_path):
    """Calling a claim function directly binds the runner late, so a script importing only implreg.harness.claims
    works."""
    import subprocess

    script = tmp_path / "direct.py"
    script.write_text(textwrap.dedent('''
        import sys
        from hypothesis import given, strategies as st
        from implreg.harness.claims import claim
        @claim("t/direct", statement="x ≥ 0", expect="holds")
        @given(x=st.integers(0, 3))
        def direct(x):
            assert x >= 0
        assert "implreg.harness.verdict" not in sys.modules
        direct()
        print("ok")
    '''))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_refuted_by_and_basis_with_certified_values():
    """The certified-values seam (certify(a >= b)) raises from implreg.numerics: its failed comparison is named
    and matched like a legacy certify call, and the record says whether the verdict rests on rigorous bounds."""
    import torch

    from implreg.numerics import Certified

    def exact(x):
        return Certified.exact(torch.tensor([float(x)], dtype=torch.float64))

    with REGISTRY.isolated():
        @claim("t/certified-control", statement="x ≥ 5", expect="refuted", refuted_by="x ≥ 5")
        @given(x=st.integers(0, 10))
        def control(x):
            certify(exact(x) >= 1.0 if x > 100 else exact(x) >= 0.0, what="x ≥ 0")
            certify(exact(x) >= 5.0, what="x ≥ 5")

        @claim("t/certified-wrong-reason", statement="x ≥ 5", expect="refuted", refuted_by="x ≥ 5")
        @given(x=st.integers(0, 10))
        def wrong(x):
            certify(exact(x) >= 20.0, what="x ≥ 20")

        @claim("t/certified-holds", statement="x ≥ 0")
        @given(x=st.integers(0, 10))
        def holds(x):
            certify(exact(x) >= 0.0, what="x ≥ 0")

        r = run_claim(get_spec(control))
        assert r["verdict"] == "refuted" and r["refutation"]["failed_check"] == "x ≥ 5"
        w = run_claim(get_spec(wrong))
        assert w["verdict"] == "error" and w["error"]["type"] == "WrongReason" and "'x ≥ 20'" in w["explanation"]
        h = run_claim(get_spec(holds))
        assert h["verdict"] == "holds" and h["certification"]["basis"] == {"rigorous": 1}
        assert h["certification"]["basis_by_comparison"] == {"x ≥ 0": "rigorous"}
