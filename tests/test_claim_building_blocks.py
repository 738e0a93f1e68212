"""Library pieces the flow claims are built from (issue 11: bookkeeping out of ``theorems/``).

- ``measures.norm_at_least``: decides a Schatten-¼ bound where the quasi-norm itself cannot be certified (σ_min's
  enclosure [0, e]), refutes a false bound, and names an unknown norm;
- ``levels.embedding_w11_lower_bound``: against brute force over random d×d states satisfying its hypotheses;
- ``levels.robustness_bounds``: the unobserved entry at each position, and where δ < min(|z|, |z′|);
- ``harness.flow_evidence``: records only inside a claim run, with the expected plots and table.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from implreg.errors import InvalidInputError
from implreg.harness import flow_evidence as fe
from implreg.harness import recorder
from implreg.matrix import levels, measures
from implreg.numerics import Certified, Undecided, certify

F64 = torch.float64


def _near_rank_one(e: float) -> Certified:
    """diag(2, 1e-30) known to ±e per entry: σ_min's enclosure is [0, ≈e]."""
    W = torch.tensor([[[2.0, 0.0], [0.0, 1e-30]]], dtype=F64)
    return Certified.measured(W, torch.full_like(W, e), rigorous=True)


def test_norm_at_least_decides_a_schatten_quarter_bound_the_quasi_norm_cannot():
    W = _near_rank_one(2e-3)
    with pytest.raises(Undecided):  # the quasi-norm's 4th power loses its lower end σ₁
        certify(measures.NORMS["schatten-0.25"](W) >= 1.9)
    certify(measures.norm_at_least("schatten-0.25", W, 1.9))
    certify(measures.norm_at_least("frobenius", W, 1.9))
    with pytest.raises(AssertionError):  # a false bound is refuted, not undecided
        certify(measures.norm_at_least("schatten-0.25", W, 10.0), what="‖W‖_¼ ≥ 10")


def test_norm_increases_decides_where_the_quasi_norms_cannot(monkeypatch):
    """Two states near rank 1 with σ_min ∈ [0, 2e] (Weyl): ‖W‖_¼ rises from 2 to 2.3.  In float64 the quasi-norms'
    own comparison is undecided (each is (σ₁^¼ ± (2e)^¼)⁴: 1.19 + 0.038 against 1.23 − 0.038) and needs Arb; the
    sums of σ_r^¼ as enclosures decide it in float64 (1.19 + 0.038 < 1.23); a fall is refuted."""
    from implreg.numerics import escalate

    rounds = []
    real = escalate.run
    monkeypatch.setattr(escalate, "run", lambda *a, **k: rounds.append(1) or real(*a, **k))
    e = 1e-6
    W = torch.tensor([[[[2.0, 0.0], [0.0, 1e-30]], [[2.3, 0.0], [0.0, 1e-30]]]], dtype=F64)
    up = Certified.measured(W, torch.full_like(W, e), rigorous=True)
    n = measures.NORMS["schatten-0.25"](up)
    certify(n[:, 1:] >= n[:, :-1])
    assert rounds, "the quasi-norms' comparison should have needed escalation"
    rounds.clear()
    certify(measures.norm_increases("schatten-0.25", up))
    certify(measures.norm_increases("frobenius", up))
    assert not rounds, "norm_increases should decide in float64"
    down = Certified.measured(W.flip(1), torch.full_like(W, e), rigorous=True)
    with pytest.raises(AssertionError):
        certify(measures.norm_increases("schatten-0.25", down), what="‖W‖_¼ increases")
    with pytest.raises(InvalidInputError, match="unknown norm"):
        measures.norm_increases("schatten-7", up)


def test_norm_at_least_names_an_unknown_norm():
    with pytest.raises(InvalidInputError, match="unknown norm 'schatten-7'"):
        measures.norm_at_least("schatten-7", _near_rank_one(0.0), 1.0)


@settings(max_examples=200, deadline=None)
@given(d=st.sampled_from([3, 4]), seed=st.integers(0, 2**32 - 1), log_l=st.floats(-6.0, math.log10(0.017)))
def test_embedding_bound_holds_on_random_states_with_positive_det(d, seed, log_l):
    """States W of loss ℓ (observed residuals E with ½‖E‖² = ℓ) and det W > 0: |W₁₁| ≥ the bound, brute force."""
    rng = np.random.default_rng(seed)
    M = np.zeros((d, d))
    M[0, 1] = M[1, 0] = 1.0
    M[range(2, d), range(2, d)] = 1.0
    E = rng.standard_normal((d, d))
    E[0, 0] = 0.0
    ell = 10.0**log_l
    W = M + E * math.sqrt(2 * ell) / np.linalg.norm(E)
    # det W = W₁₁·minor + rest: pick W₁₁ with det W > 0 (the smallest such |W₁₁| and a random larger one)
    minor = np.linalg.det(W[1:, 1:])
    W[0, 0] = 0.0
    rest = np.linalg.det(W)
    w_min = -rest / minor
    bound = levels.embedding_w11_lower_bound(ell, d)
    assert bound > 0
    for w in (w_min * (1 + 1e-9), w_min * (1 + rng.uniform(0, 10))):
        W[0, 0] = w
        assert np.linalg.det(W) > 0
        assert abs(w) >= bound * (1 - 1e-12)


def test_embedding_bound_is_positive_only_below_its_threshold():
    for d in (3, 4):
        delta0 = 2 ** (1 / d) - 1
        assert levels.embedding_w11_lower_bound(0.5 * (0.99 * delta0) ** 2, d) > 0
        assert levels.embedding_w11_lower_bound(0.5 * (1.01 * delta0) ** 2, d) < 0


def test_robustness_bounds_pick_the_unobserved_entry_and_the_usable_states():
    W = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]], dtype=F64)
    W = Certified.exact(torch.stack([W, W], dim=1))  # (B=2, K=2, 2, 2)
    at = torch.tensor([[0, 0], [1, 0]])
    z, zp, eps = (torch.tensor(v, dtype=F64) for v in ([2.0, 0.5], [1.0, 1.0], [0.1, 0.1]))
    loss = Certified.exact(torch.tensor([[0.01, 0.6], [0.01, 0.1]], dtype=F64))  # δ = 0.14, 1.1; 0.14, 0.45
    b = levels.robustness_bounds(W, loss, z, zp, eps, at)
    assert b.w.value.tolist() == [[1.0, 1.0], [7.0, 7.0]]
    assert b.usable.tolist() == [[True, False], [True, True]]
    d = math.sqrt(0.02)
    want = (2.0 - d) * (1.0 - d) / (0.1 + d)
    assert b.w_bound.value[0, 0].item() == pytest.approx(want, rel=1e-14)
    assert b.sigma_min.value.shape == (2, 2)


def test_flow_evidence_records_only_inside_a_claim_run():
    loss = Certified.exact(torch.tensor([[0.1, 0.01]], dtype=F64))
    fe.vs_loss("x", loss, torch.ones(1, 2), "g", "y")  # outside a run: a no-op
    assert not fe.recording()
    rec = recorder.Recorder(claim_id="test/flow-evidence")
    token = rec.activate()
    try:
        assert fe.recording()
        unknown = Certified.measured(loss.value, torch.tensor([[0.0, math.inf]], dtype=F64), rigorous=False)
        fe.vs_loss("y vs loss", unknown, torch.ones(1, 2), "g", "y")
        fe.bound_curve("y vs loss", lambda x: 1 / x, 1e-3, 0.1, "bound", n=7)
    finally:
        recorder.Recorder.deactivate(token)
    xs = [line["x"] for line in rec.series["y vs loss"]["lines"]]
    assert xs[0] == [pytest.approx(0.1)]  # the unreached state is dropped, never a point at ℓ = 0.01
    assert len(xs[1]) == 7 and xs[1][0] == pytest.approx(1e-3)
