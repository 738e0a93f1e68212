"""A claim that uses the raw final state of a solve that stopped early on some instances, and never asks which
(``run.ok``), is an error naming the solve (``implreg.harness.verdict.UncheckedSolve``): the state there is where
the integrator stopped, and a statistic or comparison drawn from it would pass silently.  Asking first or
afterwards, or using the certified view, is unaffected."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from implreg import certify, flow
from implreg.harness import stats
from implreg.harness.claims import REGISTRY, batches, claim, require, sample
from implreg.harness.verdict import run_claim
from implreg.matrix.factorization import balanced_init
from implreg.matrix.problems import razin_cohen_2x2
from implreg.numerics import Certified

SCALES = st.floats(1e-2, 1e-1)


def _solve(scales, max_steps):
    """Depth-3 balanced flows on the Razin–Cohen 2×2 problem towards ℓ = 1e-2 (hundreds of steps: 10 stop early)."""
    W0 = torch.stack([torch.tensor([[s, 0.2 * s], [0.1 * s, 2 * s]], dtype=torch.float64) for s in scales])
    return flow.solve(razin_cohen_2x2(len(scales)), balanced_init(W0, depth=3), loss_target=1e-2, t_max=1e4,
                      max_steps=max_steps)


def _run(define):
    with REGISTRY.isolated() as reg:
        define()
        (spec,) = list(reg)
        return run_claim(spec, profile="quick")


def _defines(use, max_steps, instances=None):
    def define():
        pooled = {"instances": instances} if instances else {}

        @claim(f"unchecked/{use.__name__}-{max_steps}-{instances or 0}", statement="the loss fell", **pooled)
        @given(b=batches(SCALES, min_size=1, max_size=4))
        def body(b):
            use(_solve(list(b), max_steps))

    return define


def raw_loss(run):
    certify(Certified.exact(run.loss) <= 1.0, what="ℓ ≤ 1")


def ok_rows_afterwards(run):
    W = run.end_to_end  # read first, restricted to the finished rows below
    certify(Certified.exact(W[run.ok]).abs().sum() >= 0, what="Σ|W| ≥ 0")


def raise_first(run):
    run.raise_on_failure()
    certify(Certified.exact(run.loss) <= 1.0, what="ℓ ≤ 1")


def test_raw_final_state_of_an_unfinished_solve_without_checking_is_an_error():
    for instances in (None, 60):
        r = _run(_defines(raw_loss, 10, instances))
        assert r["verdict"] == "error", r["explanation"]
        assert r["error"]["type"] == "UncheckedSolve"
        msg = r["explanation"]
        assert "flow.solve did not finish" in msg and "maximum number of steps" in msg
        assert "final `loss`" in msg and "run.ok" in msg and "max_steps" in msg


def test_finished_solves_and_checked_reads_are_unaffected():
    assert _run(_defines(raw_loss, 200_000))["verdict"] == "holds"  # every instance finished
    assert _run(_defines(ok_rows_afterwards, 10))["verdict"] == "holds"  # ok read after the state: still asked
    r = _run(_defines(raise_first, 10))  # asked, and the solver's own error is the verdict
    assert r["verdict"] == "error" and r["error"]["type"] == "NumericalError", r["explanation"]


def test_the_certified_view_needs_no_check():
    def define():
        @claim("unchecked/certified-view", statement="ℓ ≤ 1")
        @given(s=SCALES)
        def body(s):
            certify(_solve([s], 10).certified.loss <= 1.0, what="ℓ ≤ 1")

    r = _run(define)
    # the view refuses the unfinished instance with the solver's message, not with UncheckedSolve
    assert r["verdict"] == "error" and r["error"]["type"] != "UncheckedSolve", r["explanation"]
    assert "maximum number of steps" in r["explanation"]


def test_a_statistical_claim_on_unfinished_solves_is_an_error():
    def define():
        @claim("unchecked/stats", kind="empirical", statement="ℓ < 0.5 more often than not")
        @sample(n=6, test=stats.proportion(0.5, alternative="greater"), s=SCALES)
        def body(s):
            return bool(_solve([s], 10).loss[0] < 0.5)

    r = _run(define)
    assert r["verdict"] == "error" and r["error"]["type"] == "UncheckedSolve", r["explanation"]


def test_outside_a_claim_the_raw_state_reads_as_before():
    run = _solve([0.05], 10)
    assert not bool(run.ok[0]) and torch.isfinite(run.end_to_end).all()


def test_a_precondition_on_ok_counts_as_asking():
    def define():
        @claim("unchecked/require", statement="ℓ ≤ 1 where finished")
        @given(s=SCALES)
        def body(s):
            run = _solve([s], 200_000)
            require(run.ok.all(), "the flow finished")
            certify(Certified.exact(run.loss) <= 1.0, what="ℓ ≤ 1")

    assert _run(define)["verdict"] == "holds"
