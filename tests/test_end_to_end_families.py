"""Instances of several depths, widths and measurement counts in one end-to-end solve (issue 14, target 3):
``factorization.end_to_end_velocity`` and ``dynamics.solve_end_to_end`` with per-row depths give every row the bits
it has alone; padded sensing problems have the same loss and gradient; ``linear_flow_families`` batches share only
shape and kind, and ``factorizations`` splits them into stackable sub-batches; a wrong end-to-end rule checked this
way is refuted by the comparison, shrunk to one instance."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

from implreg import certify, flow
from implreg.errors import InvalidInputError
from implreg.harness.claims import REGISTRY, claim
from implreg.harness.verdict import run_claim
from implreg.matrix import dynamics
from implreg.matrix.factorization import end_to_end, end_to_end_velocity
from implreg.matrix.problems import stack_problems
from implreg.strategies.matrix import (
    LinearProblem,
    balanced_inits,
    factorizations,
    linear_flow_families,
    stack_end_to_end_batch,
)

SHAPES = [(2, 2), (2, 3), (3, 2), (3, 3)]


@pytest.mark.parametrize("kind,m", [("completion", 0), ("sensing", 3)])
@pytest.mark.parametrize("shape", SHAPES)
def test_per_row_depths_give_each_row_its_own_bits(kind, m, shape):
    B = 9
    P = stack_problems([LinearProblem(kind, shape, s, m).problem() for s in range(B)])
    g = torch.Generator().manual_seed(1)
    W = torch.randn(B, *shape, dtype=torch.float64, generator=g)
    W[0] = 0.0  # every eigenvalue 0: exponent 0 must still give the identity
    W[1] = torch.outer(torch.randn(shape[0], dtype=torch.float64, generator=g),
                       torch.randn(shape[1], dtype=torch.float64, generator=g))  # rank one
    depth = torch.tensor([1, 2, 3, 4, 5, 2, 3, 4, 7])
    mixed = end_to_end_velocity(P, W, depth)
    for i in range(B):
        assert torch.equal(end_to_end_velocity(P.select([i]), W[i:i + 1], int(depth[i])), mixed[i:i + 1]), i


def test_a_mixed_depth_solve_gives_each_instance_its_solo_bits_and_errors():
    shape, B = (2, 3), 6
    P = stack_problems([LinearProblem("completion", shape, s).problem() for s in range(B)])
    W0 = 0.5 * torch.randn(B, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    depth = torch.tensor([2, 3, 4, 2, 4, 3])
    saves = (0.5, 1.0)
    mixed = dynamics.solve_end_to_end(P, W0, depth, t_max=1.0, save_at=saves)
    for i in range(B):
        alone = dynamics.solve_end_to_end(P.select([i]), W0[i:i + 1], int(depth[i]), t_max=1.0, save_at=saves)
        assert torch.equal(alone.value, mixed.value[i:i + 1]) and torch.equal(alone.error, mixed.error[i:i + 1])


def test_a_malformed_depth_tensor_is_named():
    P = stack_problems([LinearProblem("completion", (2, 2), s).problem() for s in range(2)])
    W0 = torch.ones(2, 2, 2, dtype=torch.float64)
    with pytest.raises(InvalidInputError, match="depth must be an int or a"):
        dynamics.solve_end_to_end(P, W0, torch.tensor([2, 3, 4]), t_max=1.0, save_at=(1.0,))
    with pytest.raises(InvalidInputError, match="depths ≥ 1"):
        dynamics.solve_end_to_end(P, W0, torch.tensor([2, 0]), t_max=1.0, save_at=(1.0,))
    with pytest.raises(InvalidInputError, match="integer tensor"):
        dynamics.solve_end_to_end(P, W0, torch.tensor([2.0, 2.5]), t_max=1.0, save_at=(1.0,))


@pytest.mark.parametrize("m", [1, 4, 9])
def test_padded_sensing_has_the_same_loss_and_gradient(m):
    lp = LinearProblem("sensing", (3, 3), 11, m)
    plain, padded = lp.problem(), lp.problem(padded=True)
    assert padded.A.shape == (1, 9, 3, 3) and torch.equal(padded.A[:, :m], plain.A)
    W = torch.randn(4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(m))
    r = padded.expand(4).residual(W)
    assert torch.all(r[:, m:] == 0)  # the zero measurements' residuals are exactly 0
    torch.testing.assert_close(padded.expand(4).loss(W), plain.expand(4).loss(W), rtol=1e-15, atol=0)
    torch.testing.assert_close(padded.expand(4).grad(W), plain.expand(4).grad(W), rtol=1e-15, atol=1e-16)
    assert LinearProblem("completion", (2, 3), 5).problem(padded=True).tensors().keys() == {"mask", "target"}


def _families(max_size=8):
    return linear_flow_families(lambda N, shape, h: balanced_inits(depth=N, shape=shape, width=h, scale=(0.3, 1.5)),
                                depths=(2, 4), shapes=SHAPES, max_size=max_size)


@settings(max_examples=30, deadline=None)
@given(batch=_families())
def test_families_share_shape_and_kind_and_split_into_stackable_factorizations(batch):
    (shape, kind) = batch.key
    assert all(p.shape == shape and p.kind == kind for p, _ in batch)
    parts = factorizations(batch)
    rows = torch.cat([r for r, _, _ in parts])
    assert sorted(rows.tolist()) == list(range(len(batch)))  # every instance in exactly one sub-batch
    for r, P, factors in parts:
        assert r.tolist() == sorted(r.tolist()) and P.batch == len(r) == factors[0].shape[0]
        assert len({len(batch[i][1].factors(torch.float64)) for i in r.tolist()}) == 1
        alone = [end_to_end(batch[i][1].factors(torch.float64)) for i in r.tolist()]
        assert torch.equal(end_to_end(factors), torch.cat(alone))
    P, W0, depth = stack_end_to_end_batch(batch)
    assert P.batch == W0.shape[0] == len(depth) == len(batch) and W0.shape[1:] == shape
    assert depth.tolist() == [len(init.factors(torch.float64)) for _, init in batch]


def test_families_mix_depths_and_widths_within_a_batch():
    seen = set()

    @settings(max_examples=60, deadline=None)
    @given(batch=_families(max_size=16))
    def look(batch):
        seen.add(len({(len(i.factors(torch.float64)), i.factors(torch.float64)[0].shape[1]) for _, i in batch}) > 1)

    look()
    assert True in seen


def test_a_wrong_end_to_end_rule_is_refuted_by_the_comparison_and_shrunk_to_one_instance():
    """The control: the end-to-end ODE at depth N + 1 (a wrong rule) against the factorized flow at depth N,
    checked as arora-2018/end-to-end-simulation checks the right one."""
    saves = (0.5, 2.0)

    def define():
        @claim("e2e-families/wrong-depth", statement="the end-to-end ODE at depth N + 1 matches the factorized flow",
               instances=40, expect="refuted", refuted_by="W_factorized(t) = W_end-to-end(t) at depth N + 1")
        @given(batch=linear_flow_families(
            lambda N, shape, h: balanced_inits(depth=N, shape=shape, width=h, scale=(0.3, 1.5)),
            depths=(2, 3), shapes=[(2, 2)], kinds=("completion",)))
        def wrong(batch):
            P, W0, depth = stack_end_to_end_batch(batch)
            W_e = dynamics.solve_end_to_end(P, W0, depth + 1, t_max=saves[-1], save_at=saves)
            for rows, P_f, factors in factorizations(batch):
                sol = flow.solve(P_f, factors, t_max=saves[-1], save_at=saves, rtol=1e-10, atol=1e-13)
                sol.raise_on_failure()
                certify.close(sol.certified.save_end_to_end, W_e[rows], tol=1e-5,
                              what="W_factorized(t) = W_end-to-end(t) at depth N + 1")

    with REGISTRY.isolated() as reg:
        define()
        r = run_claim(next(iter(reg)), profile="ci")
    assert r["verdict"] == "refuted" and r["matches_expect"] and r["refutation"]["matches"]
    args = r["counterexample"]["arguments"]
    assert args.count("LinearProblem(") == 1 and args.count("BalancedInit(") == 1, args  # one instance
    assert r["counterexample"]["reproduce_failure"].startswith("@reproduce_failure(")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device available")
def test_a_mixed_depth_solve_runs_on_cuda_and_agrees_with_cpu():
    shape, B = (3, 2), 4
    P = stack_problems([LinearProblem("sensing", shape, s, 2 + s).problem(padded=True) for s in range(B)])
    W0 = 0.5 * torch.randn(B, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    depth = torch.tensor([2, 3, 4, 3])
    cpu = dynamics.solve_end_to_end(P, W0, depth, t_max=1.0, save_at=(1.0,))
    Pc = type(P)(P.name, **{k: v.cuda() for k, v in P.tensors().items()})
    gpu = dynamics.solve_end_to_end(Pc, W0.cuda(), depth, t_max=1.0, save_at=(1.0,))
    assert gpu.value.device.type == "cuda"
    assert bool(((gpu.value.cpu() - cpu.value).abs() <= cpu.error + gpu.error.cpu()).all())
