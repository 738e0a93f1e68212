"""The spectral phase's default integrator, ``method="auto"`` (``explicit_then_stiff``):
Dormand–Prince for a per-instance allowance of attempts, then RODAS4 from the last accepted state.

* the merged result is one integration: times, levels and errors continue across the switch, and it agrees with
  RODAS4 and Dormand–Prince run throughout, within their error estimates;
* on a stiff linear problem with a closed form, the switch happens and the state is right;
* the allowance is per instance, so an instance's bits are the same alone or in a batch whose other rows switch
  at other times (or never);
* bad input (``save_at``, which the stiff part cannot record) gets a clear error.
"""

from __future__ import annotations

import pytest
import torch

from implreg.errors import InvalidInputError
from implreg.matrix.factorization import with_det_sign
from implreg.matrix.flow import Status, spectral
from implreg.matrix.flow.spectral import explicit_steps_for, explicit_then_stiff, solve_balanced
from implreg.matrix.problems import razin_cohen_2x2

F64 = torch.float64


def test_allowance_in_rodas_steps_worth() -> None:
    # 500 RODAS4 steps of 2P + 6 field evaluations each, in 6-evaluation Dormand–Prince attempts
    assert explicit_steps_for(11) == 2333 and explicit_steps_for(43) == 7666


def test_stiff_linear_problem_switches_and_matches_closed_form() -> None:
    """ẏ = −diag(1, 10⁴) y: Dormand–Prince is stability-limited (h ≲ 3.3e-4) and uses up a 200-attempt allowance
    long before t = 5; RODAS4 finishes.  The level y₀ ≤ e^{−k} is crossed at t = k, before (k = 0.02) and after
    (k = 2) the switch.  Errors: the state's actual error must not exceed its estimate by more than the factor 20
    the integrator tests allow (tests/test_integrate.py)."""
    rates = torch.tensor([1.0, 1e4], dtype=F64)

    def f(t, y):
        return -rates * y

    def levels(y):
        return torch.stack([y[:, 0] - torch.exp(torch.tensor(-0.02, dtype=F64)),
                            y[:, 0] - torch.exp(torch.tensor(-2.0, dtype=F64))], dim=-1)

    y0 = torch.tensor([[1.0, 1.0]], dtype=F64)
    r = explicit_then_stiff(f, y0, t_max=5.0, rtol=1e-9, atol=1e-12, levels=levels, n_levels=2, explicit_steps=200)
    assert r.meta["switched_to_stiff"] == 1 and int(r.status[0]) == int(Status.REACHED_T_MAX)
    assert float(r.t[0]) == 5.0 and int(r.n_steps[0]) > 0
    exact = torch.exp(-rates * 5.0)
    assert abs(float(r.y[0, 0] - exact[0])) <= 20 * float(r.error[0]) + 1e-15
    assert abs(float(r.level_t[0, 0]) - 0.02) < 1e-6 and abs(float(r.level_t[0, 1]) - 2.0) < 1e-6
    # the second level lies past the switch: its error includes the first part's
    assert float(r.level_error[0, 1]) >= float(r.level_error[0, 0]) > 0


def _instances(B: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return with_det_sign(1e-2 * torch.randn(B, 2, 2, generator=gen, dtype=F64), 1)


def test_switch_mid_run_agrees_with_each_method_throughout(monkeypatch: pytest.MonkeyPatch) -> None:
    """An allowance of 10 RODAS4 steps' worth (46 attempts at d = 2) makes every instance switch mid-run; levels on
    both sides of the switch, the final state and log|det| agree with RODAS4 and Dormand–Prince throughout."""
    monkeypatch.setattr(spectral, "EXPLICIT_ALLOWANCE", 10)
    B = 3
    W0 = _instances(B, 8)
    kw = {"t_max": 40.0, "loss_levels": [0.3, 0.1, 0.05, 0.02]}
    auto = solve_balanced(razin_cohen_2x2(B), W0, 2, **kw)
    assert auto.ok.all(), auto.messages()
    assert (auto.n_steps_spectral > explicit_steps_for(spectral.SpectralLayout(2).size)).all()
    for method in ("rosenbrock", "dopri5"):
        other = solve_balanced(razin_cohen_2x2(B), W0, 2, method=method, **kw)
        assert other.ok.all()
        assert ((auto.end_to_end - other.end_to_end).abs().amax((-1, -2)) <= auto.error + other.error).all()
        assert ((auto.log_abs_det - other.log_abs_det).abs() <= auto.log_abs_det_error
                + other.log_abs_det_error).all()
        reached = torch.isfinite(other.level_t)
        assert torch.equal(reached, torch.isfinite(auto.level_t))
        assert ((auto.level_t - other.level_t).abs()[reached] < 1e-6 * other.level_t[reached]).all()


def test_auto_bits_alone_equal_bits_in_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows that switch at different attempts (or not at all: different t_max) give each row its solo bits."""
    monkeypatch.setattr(spectral, "EXPLICIT_ALLOWANCE", 20)
    B = 4
    W0 = _instances(B, 3)
    t_max = torch.tensor([3.0, 30.0, 12.0, 40.0], dtype=F64)
    kw = {"loss_levels": [0.3, 0.1, 0.05]}
    full = solve_balanced(razin_cohen_2x2(B), W0, 2, t_max=t_max, **kw)
    allowance = explicit_steps_for(spectral.SpectralLayout(2).size)
    assert int(full.n_steps_spectral[0]) < allowance < int(full.n_steps_spectral[1:].min())  # one row never switches
    names = ["t", "status", "error", "end_to_end", "log_abs_det", "log_abs_det_error", "n_steps_spectral",
             "level_t", "level_end_to_end", "level_error", "spectral_state"]

    def same(x: torch.Tensor, y: torch.Tensor) -> bool:
        return torch.equal(x.nan_to_num(12345.0), y.nan_to_num(12345.0))

    for i in range(B):
        one = solve_balanced(razin_cohen_2x2(1), W0[i : i + 1], 2, t_max=t_max[i : i + 1], **kw)
        assert [n for n in names if not same(getattr(one, n)[0], getattr(full, n)[i])] == []


def test_save_at_refused() -> None:
    with pytest.raises(InvalidInputError, match="save_at"):
        explicit_then_stiff(lambda t, y: -y, torch.ones(1, 1, dtype=F64), t_max=1.0, save_at=[0.5])


def test_guard_sees_the_error_accumulated_across_the_switch() -> None:
    """The guard judges the error since the phase began: after the switch it is shown the first part's error plus
    the second's, never the second's alone (which would start again from 0)."""
    from implreg.matrix.flow import integrate

    rates = torch.tensor([1.0, 1e4], dtype=F64)
    y0 = torch.tensor([[1.0, 1.0]], dtype=F64)
    seen: list[float] = []

    def guard(y, err):
        seen.extend(err.tolist())
        return torch.zeros_like(err, dtype=torch.bool)

    def f(t, y):
        return -rates * y

    first = integrate(f, y0, t_max=5.0, rtol=1e-9, atol=1e-12, max_steps=200, guard=guard)
    n_first, e_first = len(seen), float(first.error[0])
    seen.clear()
    r = explicit_then_stiff(f, y0, t_max=5.0, rtol=1e-9, atol=1e-12, explicit_steps=200, guard=guard)
    assert r.meta["switched_to_stiff"] == 1 and len(seen) > n_first
    after = seen[n_first:]
    assert e_first > 0 and min(after) >= e_first
