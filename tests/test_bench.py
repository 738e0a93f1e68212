"""Smoke test of the benchmark (bench/run.py): its agreement checks and report run on tiny sizes.  Not timed."""

from __future__ import annotations

import math

import pytest

from bench import run as bench

TINY = bench.W1(depth=2, scale=0.3, loss_target=0.05)


def test_engine_agrees_with_scipy_on_tiny_instances() -> None:
    out = bench.w1_agreement(n=2, w=TINY)
    assert out["max_rel_diff"] <= 1e-6, out
    assert out["t_rel_diff"] <= 1e-6
    assert all(s["nfev"] > 0 and s["seconds"] > 0 for s in out["scipy"])


def test_gradient_descent_baseline_approximates_the_flow() -> None:
    _, factors = bench.w1_instances(1, TINY)
    g = bench.gd_one([W[0] for W in factors], TINY, max_iters=200_000)
    assert g["reached"] and g["iterations"] > 0
    s = bench.scipy_one([W[0].numpy() for W in factors], TINY)
    assert bench.rel(g["W11"], s["W11"]) < 1e-2  # lr 3e-3 float32 descent ≈ the flow
    assert abs(g["iterations"] * TINY.lr - s["t"]) / s["t"] < 0.05


def test_flop_count_is_positive() -> None:
    fl = bench.flops_per_attempt(TINY)
    assert 100 < fl < 10_000


def test_main_runs_end_to_end_on_tiny_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    plan = bench.Plan(batch=4, scaling=(1, 4), n_scipy=2, n_gd=1, gd_max_iters=500, engine_reps=1,
                      w3={"depths": (2,), "horizons": (1.0,), "dps": (20,), "n": 1}, w2=False)
    assert bench.main(["--skip-w2"], plan=plan, w=TINY) == 0
    out = capsys.readouterr().out
    assert "agreement with S on 2 instances" in out
    assert "RATIOS" in out and "extrapolated" in out
    assert "W3" in out and "depth 2, t =    1" in out
    assert not math.isnan(bench.matmul_gflops(__import__("torch").device("cpu"), n=64, reps=1))
