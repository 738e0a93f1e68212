"""Tests of implreg.strategies.matrix: every drawn instance satisfies its stated hypotheses, checked by
independent computations (numpy SVD and QR, mpmath, exact rationals), never by the strategy's own output."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from implreg_test_helpers import exact_det
from mpmath import mp

from implreg.errors import InvalidInputError
from implreg.matrix import factorization as fz
from implreg.strategies import matrix as M

SETTINGS = settings(max_examples=40, deadline=None, database=None)


@SETTINGS
@given(M.balanced_inits(depth=st.integers(1, 5), shape=st.sampled_from([(2, 2), (3, 3), (2, 3), (3, 2)]),
                        scale=(1e-3, 10.0)))
def test_balanced_inits_are_balanced_and_multiply_to_W0(init):
    f = init.factors()
    scale = max(float(torch.linalg.matrix_norm(W).max()) for W in f) ** 2
    assert float(fz.balancedness_defect(f)[0]) <= 1e-13 * max(scale, 1e-300)
    W = fz.end_to_end(f)[0].numpy()
    U, V, _ = init.rotations()
    k = init.k
    W0 = (U[:, :k] * np.asarray(init.sigma)) @ V[:, :k].T
    assert np.allclose(W, W0, rtol=0, atol=1e-13 * init.sigma[0])
    # the drawn singular values are those of W(0) (numpy's SVD, independent of the construction)
    assert np.allclose(np.linalg.svd(W0, compute_uv=False), init.sigma, rtol=1e-12, atol=0)


@SETTINGS
@given(M.balanced_inits(depth=st.integers(2, 4), width=3, shape=(2, 3)))
def test_balanced_inits_with_wider_hidden_layers(init):
    f = init.factors()
    assert f[0].shape[1:] == (3, 3) and f[-1].shape[1:] == (2, 3)
    assert float(fz.balancedness_defect(f)[0]) <= 1e-13


@SETTINGS
@given(st.sampled_from([1, -1]).flatmap(lambda s: st.tuples(st.just(s), M.balanced_inits(
    depth=st.integers(1, 4), shape=st.sampled_from([(2, 2), (3, 3)]), det_sign=s))))
def test_balanced_inits_have_the_requested_det_sign(case):
    sign, init = case
    W = fz.end_to_end(init.factors())[0].tolist()
    det = exact_det(W)  # exact rational det of the float64 product (W(0) is well conditioned: ratio ≥ 1e-2)
    assert (det > 0) == (sign > 0) and det != 0
    assert init.det_sign == sign


@settings(max_examples=10, deadline=None, database=None)
@given(M.balanced_inits(depth=st.integers(1, 4), shape=(2, 2)))
def test_factors_mp_are_balanced_to_their_precision_and_match_float64(init):
    dps = 40
    fm = init.factors_mp(dps)
    ff = [W[0].numpy() for W in init.factors()]
    with mp.workdps(dps):
        for j in range(len(fm) - 1):
            D = fm[j + 1].T * fm[j + 1] - fm[j] * fm[j].T
            assert mp.mnorm(D, "f") < mp.mpf(10) ** (-dps + 5) * (1 + mp.mnorm(fm[j], "f") ** 2)
        for Wm, Wf in zip(fm, ff, strict=True):
            diff = max(abs(float(Wm[r, c]) - Wf[r, c]) for r in range(Wm.rows) for c in range(Wm.cols))
            assert diff <= 1e-14 * max(1.0, float(np.abs(Wf).max()))


@SETTINGS
@given(M.balanced_inits(depth=st.integers(1, 4), shape=(2, 2)))
def test_repr_rebuilds_the_instance(init):
    again = eval(repr(init), {"BalancedInit": M.BalancedInit})
    assert again == init
    assert all(torch.equal(a, b) for a, b in zip(again.factors(), init.factors(), strict=True))


def test_orthogonal_from_gaussian_is_orthogonal_even_for_singular_input():
    for Z in (np.zeros((3, 3)), np.ones((3, 3)), np.random.default_rng(0).standard_normal((4, 4))):
        Q = M.orthogonal_from_gaussian(Z)
        assert np.allclose(Q.T @ Q, np.eye(Q.shape[0]), atol=1e-14)


def test_haar_rotation_is_uniform_on_o2():
    """Haar measure on O(2): the angle of the first column is uniform and det = ±1 equally often."""
    rng = np.random.default_rng(1)
    angles, dets = [], []
    for _ in range(4000):
        Q = M.orthogonal_from_gaussian(rng.standard_normal((2, 2)))
        angles.append(math.atan2(Q[1, 0], Q[0, 0]))
        dets.append(np.linalg.det(Q))
    from scipy import stats

    assert stats.kstest((np.asarray(angles) + math.pi) / (2 * math.pi), "uniform").pvalue > 1e-3
    assert abs(np.mean(np.asarray(dets) > 0) - 0.5) < 0.05


def _exact_product(mats: list[list[list[float]]]) -> list[list[Fraction]]:
    P = [[Fraction(x) for x in row] for row in mats[0]]
    for Mj in mats[1:]:
        A = [[Fraction(x) for x in row] for row in Mj]
        P = [[sum((A[i][k] * P[k][j] for k in range(len(P))), Fraction(0)) for j in range(len(P[0]))]
             for i in range(len(A))]
    return P


@SETTINGS
@given(st.sampled_from([1, -1, None]).flatmap(lambda s: st.tuples(st.just(s), M.gaussian_inits(
    dims=st.integers(1, 3).flatmap(lambda d: st.lists(st.integers(d, 3), min_size=0, max_size=3).map(
        lambda h: (d, *h, d))), det_sign=s))))
def test_gaussian_inits_det_sign_and_flip(case):
    sign, init = case
    f = init.factors()
    assert all(torch.isfinite(W).all() for W in f)
    det = exact_det(_exact_product([W[0].tolist() for W in f]))
    if sign is not None:
        assert (det > 0) == (sign > 0) and det != 0
    unflipped = M.GaussianInit(init.scale, init.z, False).factors()
    for a, b in zip(f, unflipped, strict=True):
        assert torch.equal(a.abs(), b.abs())
    assert eval(repr(init), {"GaussianInit": M.GaussianInit}) == init


@SETTINGS
@given(M.low_rank_completions(d=(3, 7), rank=(1, 3), fraction=(0.2, 0.9)))
def test_low_rank_completions_have_the_drawn_rank_and_coverage(case):
    T = np.asarray(case.truth)
    s = np.linalg.svd(T, compute_uv=False)
    r = case.rank
    assert s[r - 1] > 1e-8 * s[0] and (r == len(s) or s[r] < 1e-10 * s[0])
    assert abs(np.linalg.norm(T) - T.shape[0]) < 1e-10 * T.shape[0]
    mask = np.asarray(case.mask)
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert (mask.sum(0) >= 1).all() and (mask.sum(1) >= 1).all()
    P = case.problem()
    assert torch.equal(P.mask[0], torch.as_tensor(mask))
    assert eval(repr(case), {"LowRankCompletion": M.LowRankCompletion}) == case


@SETTINGS
@given(M.linear_problems(shape=st.sampled_from([(2, 2), (2, 3)])))
def test_linear_problems_are_deterministic_and_well_formed(spec):
    P1, P2 = spec.problem(), spec.problem()
    assert P1.shape == spec.shape and P1.batch == 1
    for k, v in P1.tensors().items():
        assert torch.equal(v, P2.tensors()[k])
    if spec.kind == "completion":
        assert (P1.mask[0].sum(-1) >= 1).all()
    else:
        assert P1.A.shape[1] == spec.m


@settings(max_examples=5, deadline=None, database=None)
@given(M.depth_batches((2, 3), lambda N: M.balanced_inits(depth=N), max_size=4))
def test_depth_batches_give_one_depth_per_batch(by_depth):
    assert set(by_depth) == {2, 3}
    for N, batch in by_depth.items():
        assert 1 <= len(batch) <= 4 and {b.depth for b in batch} == {N}
        assert [W.shape[0] for W in M.stack_factors(batch)] == [len(batch)] * N


def test_stacking_refuses_mixed_instances():
    a = M.BalancedInit(2, (1.0, 0.5), ((1.0, 0.0), (0.0, 1.0)), ((1.0, 0.0), (0.0, 1.0)),
                       (((1.0, 0.0), (0.0, 1.0)),))
    b = M.BalancedInit(1, (1.0, 0.5), ((1.0, 0.0), (0.0, 1.0)), ((1.0, 0.0), (0.0, 1.0)))
    with pytest.raises(InvalidInputError):
        M.stack_factors([a, b])
    with pytest.raises(InvalidInputError):
        M.stack_problems([M.LinearProblem("completion", (2, 2), 0).problem(),
                          M.LinearProblem("completion", (2, 3), 0).problem()])


def test_bad_arguments_give_clear_errors():
    with pytest.raises(InvalidInputError, match="descending"):
        M.BalancedInit(1, (0.5, 1.0), ((1.0, 0.0), (0.0, 1.0)), ((1.0, 0.0), (0.0, 1.0)))
    with pytest.raises(InvalidInputError, match="det_sign"):
        M.balanced_inits(det_sign=2)
    with pytest.raises(InvalidInputError):
        M.perturbation_eps(0.0, 1.0)
    with pytest.raises(InvalidInputError, match="bottleneck"):
        given(M.gaussian_inits(dims=(2, 1, 2), det_sign=1))(lambda init: None)()


def test_linear_flow_batches_share_depth_shape_kind_and_width_and_stack():
    from hypothesis import given, settings

    from implreg.strategies.matrix import balanced_inits, linear_flow_batches, stack_linear_batch

    seen = []

    @settings(max_examples=15, deadline=None)
    @given(linear_flow_batches(lambda N, shape, h: balanced_inits(depth=N, shape=shape, width=h, scale=(0.3, 1.0)),
                               depths=(2, 3), shapes=((2, 3), (3, 3))))
    def check(batch):
        kinds = {p.kind for p, _ in batch}
        assert len(kinds) == 1 and len({p.shape for p, _ in batch}) == 1 and len({p.m for p, _ in batch}) == 1
        P, factors = stack_linear_batch(batch)
        assert P.batch == len(batch) and len(factors) == batch[0][1].depth
        assert factors[0].shape[0] == len(batch) and min(P.shape) <= factors[0].shape[1] <= 3
        seen.append(P.shape)

    check()
    assert seen


def test_strategy_factories_reuse_what_they_built():
    """Claims build strategies inside flatmap on every draw; the same arguments give the same (immutable)
    strategy, so Hypothesis does not re-read a composite's source each time; other or unhashable arguments
    still build their own."""
    from implreg.strategies.matrix import balanced_inits, gaussian_inits, singular_values

    a = balanced_inits(depth=3, det_sign=1, scale=(0.1, 1.0))
    assert balanced_inits(depth=3, det_sign=1, scale=(0.1, 1.0)) is a
    assert balanced_inits(depth=3, det_sign=-1, scale=(0.1, 1.0)) is not a
    assert singular_values(2) is singular_values(2)
    g = gaussian_inits(dims=[2, 3, 2])  # a list: unhashable, built anew (and still valid)
    assert g is not gaussian_inits(dims=[2, 3, 2]) and g.example().dims == (2, 3, 2)
    with pytest.raises(InvalidInputError, match="det_sign"):
        balanced_inits(det_sign=2)  # a malformed call is refused every time, never cached
    with pytest.raises(InvalidInputError, match="det_sign"):
        balanced_inits(det_sign=2)
