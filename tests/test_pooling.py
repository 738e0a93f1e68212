"""Pooled claim runs (``@claim(instances=N)``, implreg.harness.pooling): the same verdicts as a normal run, at
least N distinct instances, failures shrunk to one instance, rejections and undecided groups counted right."""

import ast

import pytest
import torch
from hypothesis import given, reproduce_failure
from hypothesis import strategies as st

from implreg import certify
from implreg.harness.claims import REGISTRY, Batch, batches, claim, require
from implreg.harness.pooling import Example, merge_groups, pool_size
from implreg.harness.profiles import PROFILES
from implreg.harness.verdict import run_claim
from implreg.numerics import Certified

FLOATS = st.floats(-1e3, 1e3, allow_nan=False)


def _only_spec(reg):
    specs = list(reg)
    assert len(specs) == 1
    return specs[0]


def run_one(define, profile="ci"):
    with REGISTRY.isolated() as reg:
        define()
        return run_claim(_only_spec(reg), profile=profile)


# ---- merging --------------------------------------------------------------------------------------------
def _ex(call, **kw):
    return Example(call, kw, sum(len(v) for v in kw.values() if isinstance(v, Batch)))


def _b(*items, key=None):
    b = Batch(items)
    b.key = key
    return b


def test_examples_of_one_signature_merge_in_order_and_repeats_are_dropped():
    groups = merge_groups([_ex(0, b=_b(1, 2), n=3), _ex(1, b=_b(2, 5), n=3), _ex(2, b=_b(7), n=4),
                           _ex(3, b=_b(1, 2), n=3)], limit=100)
    assert [[e.call for e in g.examples] for g in groups] == [[0, 1], [2]]  # example 3 holds only repeats
    assert groups[0].kwargs == {"b": [1, 2, 5], "n": 3} and groups[0].size == 3
    assert groups[1].kwargs == {"b": [7], "n": 4}


def test_batches_merge_only_with_equal_keys_and_groups_respect_the_limit():
    groups = merge_groups([_ex(0, b=_b(1, key=2)), _ex(1, b=_b(2, key=3)), _ex(2, b=_b(3, key=2))], limit=100)
    assert [[e.call for e in g.examples] for g in groups] == [[0, 2], [1]]
    groups = merge_groups([_ex(i, b=_b(10 * i, 10 * i + 1)) for i in range(5)], limit=4)
    assert [g.size for g in groups] == [4, 4, 2]


def test_dict_keys_in_any_order_merge_and_zero_signs_are_told_apart():
    a = _ex(0, d={2: _b(1), 3: _b(2)})
    b = _ex(1, d={3: _b(4), 2: _b(3)})  # fixed_dictionaries draws its keys in varying order
    (g,) = merge_groups([a, b], limit=100)
    assert g.kwargs == {"d": {2: [1, 3], 3: [2, 4]}}
    groups = merge_groups([_ex(0, b=_b(1), s=0.0), _ex(1, b=_b(2), s=-0.0)], limit=100)
    assert len(groups) == 2  # 0.0 == -0.0, but a body may tell them apart: never merged
    (g,) = merge_groups([_ex(0, b=_b(0.0)), _ex(1, b=_b(-0.0))], limit=100)
    assert g.size == 2


def test_a_batch_emptied_by_repeats_keeps_one_uncounted_instance():
    (g,) = merge_groups([_ex(0, d={2: _b(1), 3: _b(2)}), _ex(1, d={2: _b(1), 3: _b(5)})], limit=100)
    assert [e.size for e in g.examples] == [2, 1] and g.size == 3


def test_pool_size_is_validated(monkeypatch):
    monkeypatch.setenv("IMPLREG_POOL_SIZE", "0")
    with pytest.raises(Exception, match="IMPLREG_POOL_SIZE must be a positive integer"):
        pool_size()
    monkeypatch.setenv("IMPLREG_POOL_SIZE", "64")
    assert pool_size() == 64


# ---- pooled runs ------------------------------------------------------------------------------------------
def test_a_comparison_never_certified_is_an_error_pooled_or_not():
    """`x >= 0` on its own is an object, not an assertion: a body that makes one and never certifies it would
    pass every example while checking nothing.  It is an error naming the comparison, pooled or not; a body that
    certifies every comparison it makes is unaffected."""
    def define(instances):
        pooled = {"instances": instances} if instances else {}
        @claim(f"pool/forgot-{instances or 0}", statement="x² ≥ 0, forgotten", **pooled)
        @given(b=batches(FLOATS, max_size=16))
        def forgot(b):
            x = Certified.exact(torch.tensor(b, dtype=torch.float64))
            certify(x * x >= 0, what="x² ≥ 0")
            x * x + 1 > 0    # noqa: B015 — the mistake under test

    for instances in (None, 200):
        r = run_one(lambda i=instances: define(i))
        assert r["verdict"] == "error", r["explanation"]
        assert r["error"]["type"] == "UncertifiedComparison"
        assert "made the comparison" in r["explanation"] and "> 0.0 and never certified it" in r["explanation"]


def test_pooled_claim_checks_the_target_count_in_few_bodies():
    def define():
        @claim("pool/square", statement="x² ≥ 0", instances=400)
        @given(b=batches(FLOATS, max_size=16))
        def square(b):
            x = torch.tensor(b, dtype=torch.float64)
            certify(Certified.exact(x * x) >= 0, what="x² ≥ 0")

    r = run_one(define)
    assert r["verdict"] == "holds"
    assert r["instances"] >= 400
    p = r["pooling"]
    assert p["target_instances"] == 400 and p["bodies"] == p["groups"] == 1 and p["examples"] > 20
    assert f"({r['instances']} instance(s))" in r["explanation"]
    # generation stopped because the target was reached (not "Hypothesis gave up early"), and the report says so
    assert p["collected_instances"] >= 400
    assert r["hypothesis"]["stopped_because"] == f"{p['collected_instances']} distinct instances collected (target 400)"
    from implreg.harness.report.render import render_html
    from implreg.harness.results import build_results

    run = {"profile": "ci", "seed": 0, "paths": ["x"], "workers": 1, "command": "implreg verify x",
           "versions": {"implreg": "0.1.0", "torch": "x"}, "platform": "Linux", "cpu_count": 2,
           "timing": {"wall_s": 1.0, "started": "-"}}
    html = render_html(build_results([r], run, [{"device": "cpu", "torch_threads": 1}]))
    assert f"valid of {p['examples']} examples, checked in 1 pooled body" in html
    assert "distinct instances collected (target 400)" in html


def test_pooled_and_normal_runs_see_the_same_examples():
    """Generation does not depend on the body: the pooled run's bodies hold exactly the instances of the first
    examples of a normal run with the same id (so the same seed) and the same example limit."""
    seen = {"normal": [], "pooled": []}

    def define(mode, **kw):
        def go():
            @claim("pool/seen", statement="records its instances", **kw)
            @given(b=batches(st.integers(0, 10**9), max_size=8))
            def body(b):
                seen[mode].append(list(b))
                certify.that(True, what="nothing")
        return go

    pooled = run_one(define("pooled", instances=200))
    run_one(define("normal", max_examples=200))
    first = seen["normal"][: pooled["pooling"]["examples"]]
    assert {x for b in first for x in b} == {x for b in seen["pooled"] for x in b}
    assert len({x for b in seen["pooled"] for x in b}) == pooled["instances"] >= 200


def test_pooled_failure_shrinks_to_one_instance_with_a_reproduction():
    def define():
        @claim("pool/small", statement="x < 900", instances=400, expect="refuted", refuted_by="x < 900")
        @given(b=batches(FLOATS, max_size=16))
        def small(b):
            x = torch.tensor(b, dtype=torch.float64)
            certify(Certified.exact(x) < 900, what="x < 900")

    r = run_one(define)
    assert r["verdict"] == "refuted" and r["matches_expect"]
    ce = r["counterexample"]
    assert len(ast.literal_eval(ce["arguments"])["b"]) == 1          # shrunk to one instance
    assert ast.literal_eval(ce["arguments"])["b"][0] >= 900
    assert "Falsifying example: small(" in ce["falsifying_example"]
    assert ce["reproduce_failure"].startswith("@reproduce_failure(") and r["refutation"]["matches"]
    assert r["pooling"]["failing_example"] is not None and r["pooling"]["splits"] >= 1

    version, blob = ast.literal_eval(ce["reproduce_failure"][len("@reproduce_failure"):])

    def again():
        @claim("pool/small-again", statement="x < 900", instances=400, expect="refuted", refuted_by="x < 900")
        @reproduce_failure(version, blob)
        @given(b=batches(FLOATS, max_size=16))
        def small(b):
            x = torch.tensor(b, dtype=torch.float64)
            certify(Certified.exact(x) < 900, what="x < 900")

    r2 = run_one(again)  # the blob replays the one example, with no pooling
    assert r2["verdict"] == "refuted" and "pooling" not in r2
    assert ast.literal_eval(r2["counterexample"]["arguments"]) == ast.literal_eval(ce["arguments"])


def test_discarded_examples_are_split_out_and_the_rest_counted():
    def define():
        @claim("pool/discard", statement="odd numbers are odd", instances=300)
        @given(b=batches(st.integers(0, 10**6), max_size=8))
        def odd(b):
            require(all(x % 7 for x in b), "no multiple of 7", discard=True)
            certify.that(all(x % 7 != 0 for x in b), what="x mod 7 ≠ 0")

    r = run_one(define)
    assert r["verdict"] == "holds"
    assert r["hypothesis"]["rejected"] >= 1 and r["pooling"]["splits"] >= 1
    assert r["hypothesis"]["discarded"] == {"no multiple of 7": r["hypothesis"]["rejected"]}
    assert r["instances"] > 0


def test_an_undecided_group_makes_the_claim_inconclusive():
    def define():
        @claim("pool/undecided", statement="x ≥ x (with an error)", instances=200)
        @given(b=batches(FLOATS, max_size=8))
        def und(b):
            x = torch.tensor(b, dtype=torch.float64)
            certify(Certified.measured(x, torch.full_like(x, 1.0), rigorous=True) >= x, what="x ≥ x")

    r = run_one(define)
    assert r["verdict"] == "inconclusive"
    assert r["hypothesis"]["undecided_examples"] >= 1 and r["certification"]["undecided_count"] >= 1


def test_a_body_that_is_not_row_wise_is_replayed_example_by_example():
    def define():
        @claim("pool/size", statement="a batch holds < 40 instances", instances=200)
        @given(b=batches(st.integers(0, 10**9), max_size=8))
        def size(b):
            certify.that(len(b) < 40, what="fewer than 40")

    r = run_one(define)
    assert r["pooling"]["not_row_wise"] is True
    assert r["verdict"] == "holds"  # every real example holds < 40 instances


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_malformed_instances_is_an_error(bad):
    def define():
        @claim("pool/bad", statement="s", instances=bad)
        @given(x=st.integers())
        def f(x):
            pass

    r = run_one(define)
    assert r["verdict"] == "error" and "instances must be a positive integer" in r["explanation"]


def test_profiles_scale_the_instance_count():
    assert PROFILES["ci"].instances_for(1000) == 1000
    assert PROFILES["quick"].instances_for(1000) == 100
    assert PROFILES["thorough"].instances_for(1000) == 100_000


# ---- map_groups: the groups run elsewhere, the record is the same -----------------------------------------------
CLAIMS_FILE = '''
import torch
from hypothesis import given, strategies as st
from implreg import certify, evidence
from implreg.harness.claims import batches, claim
from implreg.numerics import Certified

@claim("mapped/square", statement="x² ≥ 0", instances=300)
@given(b=batches(st.floats(-1e3, 1e3, allow_nan=False), max_size=16))
def square(b):
    x = torch.tensor(b, dtype=torch.float64)
    evidence.scalar("x", x)
    certify(Certified.exact(x * x) >= 0, what="x² ≥ 0")

@claim("mapped/small", statement="x < 900", instances=300, expect="refuted", refuted_by="x < 900")
@given(b=batches(st.floats(-1e3, 1e3, allow_nan=False), max_size=16))
def small(b):
    x = torch.tensor(b, dtype=torch.float64)
    certify(Certified.exact(x) < 900, what="x < 900")
'''


def test_groups_mapped_through_another_process_give_the_same_record(tmp_path, monkeypatch):
    import multiprocessing
    import pickle
    import sys
    from concurrent.futures import ProcessPoolExecutor

    from implreg.harness.results import strip_timing

    path = tmp_path / "mapped_claims.py"
    path.write_text(CLAIMS_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("IMPLREG_POOL_SIZE", "64")  # several groups, so the map has work to spread
    calls = []

    def map_groups(fn, items):
        calls.append(len(items))
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
            return list(ex.map(fn, [pickle.loads(pickle.dumps(x)) for x in items]))

    with REGISTRY.isolated() as reg:
        import importlib
        sys.modules.pop("mapped_claims", None)
        importlib.import_module("mapped_claims")
        specs = {s.id: s for s in reg}
        for cid in ("mapped/square", "mapped/small"):
            local = strip_timing(run_claim(specs[cid], profile="ci"))
            mapped = strip_timing(run_claim(specs[cid], profile="ci", map_groups=map_groups))
            assert mapped == local, cid
        sys.modules.pop("mapped_claims", None)
    assert len(calls) == 2 and min(calls) > 1


def test_a_control_names_its_comparison_by_source_text_without_what():
    """``refuted_by=`` matches a comparison that has no ``what=`` by its source text, pooled or not."""
    def define():
        @claim("pool/small-src", statement="x < 900", instances=300, expect="refuted", refuted_by="x < 900")
        @given(b=batches(st.floats(-1e3, 1e3, allow_nan=False), max_size=16))
        def small(b):
            x = Certified.exact(torch.tensor(b, dtype=torch.float64))
            certify(x < 900)

    r = run_one(define)
    assert r["verdict"] == "refuted" and r["matches_expect"] and not r["warnings"]
    assert r["refutation"]["failed_check"] == "x < 900" and r["refutation"]["matches"]
