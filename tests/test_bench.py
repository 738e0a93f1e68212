"""Smoke test of the benchmark (bench/run.py, bench/peers.py): its agreement checks and report run on tiny sizes,
the peers' agreement gate and table with fakes (the real peers only where the bench extra is installed).  Not timed."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from bench import ode
from bench import peers as peer_mod
from bench import run as bench
from implreg.matrix.problems import razin_cohen_2x2

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


# ---- W1 peers (bench/peers.py, issue 14) --------------------------------------------------------------------

def test_ode_is_the_engines_problem_and_its_field_is_minus_the_gradient() -> None:
    p = razin_cohen_2x2(1)
    assert np.array_equal(p.mask.reshape(2, 2).numpy(), ode.MASK)
    assert np.array_equal(p.target.reshape(2, 2).numpy(), ode.TARGET)
    # independent computation: autograd of ℓ, against the closed-form field, batched torch and per-instance numpy;
    # the same products in another order or another library agree to rounding (1e-13 relative on entries ~1)
    _, factors = bench.w1_instances(3, bench.W1(depth=3, scale=0.7))
    y = peer_mod.packed(factors, 3)
    yt = torch.tensor(y, requires_grad=True)
    mask, target = torch.tensor(ode.MASK), torch.tensor(ode.TARGET)
    ode.loss(ode.unpack(yt, 3), mask, target).sum().backward()
    f_torch = ode.rhs(torch.tensor(y), 3, mask, target, torch.cat)
    torch.testing.assert_close(f_torch, -yt.grad, rtol=1e-13, atol=1e-15)
    f_np = np.stack([ode.rhs(y[i], 3, ode.MASK, ode.TARGET, np.concatenate) for i in range(3)])
    np.testing.assert_allclose(f_np, f_torch.numpy(), rtol=1e-13, atol=1e-15)
    # numpy's and torch's 2×2 matmuls may round differently (FMA or not): a few ulp, hence 1e-14
    np.testing.assert_allclose(ode.end_to_end(y, 3), (factors[2] @ factors[1] @ factors[0]).numpy(), rtol=1e-14)


def _run(W11, t=None, seconds=1.0, ok=None) -> peer_mod.Run:
    W11 = np.asarray(W11, dtype=float)
    return peer_mod.Run(t=np.ones_like(W11) if t is None else np.asarray(t, dtype=float), W11=W11,
                        seconds=seconds, ok=None if ok is None else np.asarray(ok))


def test_agreement_check_passes_within_tolerance_and_raises_otherwise() -> None:
    ref = _run([2.0, -3.0])
    d = peer_mod.check_agreement("p", _run([2.0 * (1 + 1e-9), 3.0]), ref)  # |W11|: the sign is not compared
    assert d["W11"] == pytest.approx(1e-9, rel=1e-6) and d["t"] == 0.0
    with pytest.raises(peer_mod.PeerDisagreement, match=r"p disagrees with the engine on \|W11\| at instance 1"):
        peer_mod.check_agreement("p", _run([2.0, 3.0 * (1 + 1e-5)]), ref)
    with pytest.raises(peer_mod.PeerDisagreement, match="stopping time"):
        peer_mod.check_agreement("p", _run([2.0, 3.0], t=[1.0, 1.01]), ref)
    peer_mod.check_agreement("p", _run([2.0, 3.0], t=[1.0, 1.01]), ref, check_time=False)  # a given stop
    with pytest.raises(peer_mod.PeerDisagreement, match="disagrees"):  # NaN is not agreement
        peer_mod.check_agreement("p", _run([2.0, float("nan")]), ref)
    with pytest.raises(peer_mod.PeerDisagreement, match="did not finish normally on 1 of 2"):
        peer_mod.check_agreement("p", _run([2.0, 3.0], ok=[True, False]), ref)


class FakePeer:
    """Answers ``W11 = (i + 1)·(1 + err)`` for instance i at the given stop, in ``per_instance`` seconds each."""

    given_stop = True

    def __init__(self, name: str, err: float, per_instance: float) -> None:
        self.name, self.label, self.err, self.per_instance = name, f"fake {name}", err, per_instance
        self.note = None

    def warmup(self, y0: np.ndarray, t_stop: np.ndarray) -> float:
        return 0.25

    def solve(self, y0: np.ndarray, t_stop: np.ndarray) -> peer_mod.Run:
        B = y0.shape[0]
        return _run((np.arange(B) + 1.0) * (1 + self.err), t=t_stop, seconds=self.per_instance * B)


def _fake_engine(B: int) -> peer_mod.Run:
    return _run(np.arange(B) + 1.0, t=np.full(B, 7.0), seconds=0.2 * B)


def test_peer_table_prints_times_and_ratios_only_after_agreement() -> None:
    _, factors = bench.w1_instances(4, TINY)
    lines: list[str] = []
    peers = [FakePeer("fast", 1e-12, 0.1), FakePeer("slow", 0.0, 0.8)]
    rows = peer_mod.run_table(peers, factors, _fake_engine, [1, 4], lines.append, scipy_W11={0: 1.0, 3: -4.0})
    assert [(r.B, r.engine, r.peers) for r in rows] == [
        (1, pytest.approx(0.2), {"fast": pytest.approx(0.1), "slow": pytest.approx(0.8)}),
        (4, pytest.approx(0.2), {"fast": pytest.approx(0.1), "slow": pytest.approx(0.8)})]
    text = "\n".join(lines)
    assert "| B | engine | fast | slow | engine ÷ fast | engine ÷ slow |" in text
    assert "| 1 | 200 ms | 100 ms | 800 ms | 2 | 0.25 |" in text and "| 4 | 200 ms |" in text
    assert "warm-up, excluded from the timings (fast): B = 1: 250 ms, B = 4: 250 ms" in text
    assert "vs S 1.0e-12" in text and "stopping time given, not checked" in text
    # a peer that disagrees (on any B, against the engine or scipy) is an error, and no time was printed
    for others, bad, scipy, msg in (
            (peers, FakePeer("bad", 1e-4, 0.1), None, "bad disagrees with the engine on |W11| at instance 0"),
            ([], FakePeer("bad", 0.0, 0.1), {0: 1.0, 3: 4.1}, "bad disagrees with scipy DOP853 (S) on |W11| at "
                                                                "instance 3: 4.0 vs 4.1")):
        lines.clear()
        with pytest.raises(peer_mod.PeerDisagreement, match=re.escape(msg)):
            peer_mod.run_table([*others, bad], factors, _fake_engine, [1, 4], lines.append, scipy_W11=scipy)
        assert lines == []


def test_table_and_seconds_formatting() -> None:
    assert [peer_mod.fmt_s(x) for x in (2.345, 0.0844, 5.1e-5, None)] == ["2.35 s", "84.4 ms", "51 µs", "—"]
    lines = peer_mod.format_table([peer_mod.Row(B=64, engine=0.0257, peers={"d": 0.00706, "t": None})], ["d", "t"])
    assert lines == ["| B | engine | d | t | engine ÷ d | engine ÷ t |", "|---|---|---|---|---|---|",
                     "| 64 | 25.7 ms | 7.06 ms | — | 3.64 | — |"]


def test_w1_goes_on_with_one_line_when_the_peers_are_not_installed(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(peer_mod, "missing", lambda: {"diffrax": ["jax", "diffrax"], "torchode": ["torchode"]})
    plan = bench.Plan(batch=2, scaling=(2,), n_scipy=1, n_gd=1, gd_max_iters=50, engine_reps=1,
                      w3={"depths": (2,), "horizons": (1.0,), "dps": (20,), "n": 1}, w2=False, peer_batches=(1, 2))
    assert bench.main(["--skip-w2"], plan=plan, w=TINY) == 0
    out = capsys.readouterr().out
    hits = [line for line in out.splitlines() if "not installed" in line]
    assert len(hits) == 1 and "diffrax, torchode" in hits[0] and "pip install -c constraints/cpu.txt" in hits[0]
    assert "engine ÷" not in out and "W3" in out  # no table, and the benchmark carried on


def test_a_disagreeing_peer_stops_w1_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peer_mod, "missing", dict)
    monkeypatch.setattr(peer_mod, "make", lambda w: [FakePeer("bad", 0.5, 0.1)])
    problem, factors = bench.w1_instances(2, TINY)
    with pytest.raises(SystemExit, match="W1 peers: bad disagrees with the engine"):
        bench.w1_peers(bench.Plan(peer_batches=(2,)), problem, factors, TINY, {}, out=print)


def test_w2_prints_instances_per_second() -> None:
    res = {"run": {"instances_total": 3940, "wall_s": 242.0}, "claims": []}
    assert bench.w2_rate(res, 275.0) == ("3940 instances checked, 14.3 per second of wall time "
                                         "(16.3 per second of the claims' own 242 s)")
    assert bench.w2_rate({"claims": [{"instances": 10}, {"instances": None}]}, 2.0) == \
        "10 instances checked, 5.0 per second of wall time"


PEERS_INSTALLED = not peer_mod.missing()


@pytest.mark.skipif(not PEERS_INSTALLED, reason="the peers (jax, diffrax, torchode) are not installed: "
                    "pip install -c constraints/cpu.txt -e '.[bench]'")
def test_real_peers_agree_with_the_engine_at_tiny_batches() -> None:
    problem, factors = bench.w1_instances(3, TINY)
    lines: list[str] = []
    s = {0: bench.scipy_one([W[0].numpy() for W in factors], TINY)["W11"]}
    rows = bench.w1_peers(bench.Plan(peer_batches=(1, 3)), problem, factors, TINY, s, out=lines.append)
    assert rows is not None and [r.B for r in rows] == [1, 3]
    assert all(r.peers["diffrax"] > 0 and r.peers["torchode"] > 0 for r in rows)
    text = "\n".join(lines)
    assert "diffrax 0.7.2 Dopri5" in text and "NO terminal events" in text and "| 3 |" in text
