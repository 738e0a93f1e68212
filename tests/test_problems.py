"""Tests of implreg.matrix.problems against explicit formulas (numpy loops), torch.autograd and exact rational
arithmetic.

Tolerances.  A loss is a sum of n squared residuals; each residual is one subtraction (completion) or an
inner product of length d·d' (sensing).  The classical bound for a sum/inner product of n terms is
|fl(Σ) − Σ| ≤ γ_n Σ|terms| with γ_n = n·u/(1 − n·u) ≈ n·u (Higham, *Accuracy and Stability*, §3.1); two
independent evaluations (module and reference) therefore differ by at most 2·γ_n·Σ|terms|, and we allow
exactly that (computed per instance below) rather than a fixed relative tolerance.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from implreg_test_helpers import exact_det

from implreg.errors import InvalidInputError
from implreg.matrix.problems import (
    Problem,
    completion,
    razin_cohen_2x2,
    razin_cohen_embedding,
    razin_cohen_perturbed,
    sensing,
)

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True, database=None)
U64 = float(np.finfo(np.float64).eps)


def gamma(n: int, u: float = U64) -> float:
    """γ_n = n·u / (1 − n·u) (Higham 2002, Lemma 3.1)."""
    return n * u / (1 - n * u)


@st.composite
def completion_data(draw, max_d: int = 4, max_batch: int = 3):
    """(mask, target, W) float64 numpy arrays of shape (B, d, d'); mask 0/1 drawn entrywise."""
    B = draw(st.integers(1, max_batch))
    d, e = draw(st.integers(1, max_d)), draw(st.integers(1, max_d))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mask = (rng.random((B, d, e)) < draw(st.floats(0.0, 1.0))).astype(np.float64)
    return mask, rng.standard_normal((B, d, e)) * 3, rng.standard_normal((B, d, e))


@st.composite
def sensing_data(draw, max_d: int = 4, max_m: int = 5, max_batch: int = 3):
    """(A (B, m, d, d'), y (B, m), W (B, d, d')) float64 numpy arrays."""
    B, m = draw(st.integers(1, max_batch)), draw(st.integers(1, max_m))
    d, e = draw(st.integers(1, max_d)), draw(st.integers(1, max_d))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return rng.standard_normal((B, m, d, e)), rng.standard_normal((B, m)), rng.standard_normal((B, d, e))


def t64(a) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------- completion


@SETTINGS
@given(data=completion_data())
def test_completion_loss_and_grad_match_explicit_loops(data) -> None:
    mask, target, W = data
    P = completion(t64(mask), t64(target))
    B, d, e = W.shape
    loss, grad = P.loss(t64(W)).numpy(), P.grad(t64(W)).numpy()
    for b in range(B):
        ref_loss, terms, ref_grad = 0.0, 0.0, np.zeros((d, e))
        for i in range(d):
            for j in range(e):
                if mask[b, i, j] == 1:
                    r = W[b, i, j] - target[b, i, j]
                    ref_loss += 0.5 * r * r
                    terms += 0.5 * r * r
                    ref_grad[i, j] = r
        # Each residual W_ij − b_ij is one correctly rounded subtraction in both computations: identical.
        np.testing.assert_array_equal(grad[b], ref_grad)
        # ½Σr² over ≤ d·d' terms, two summation orders: 2·γ_{n}·Σ|terms| (module docstring).
        assert abs(loss[b] - ref_loss) <= 2 * gamma(d * e + 2) * terms


def test_completion_ignores_target_off_the_mask() -> None:
    mask = t64([[1.0, 0.0], [0.0, 1.0]])
    W = t64([[[0.5, 7.0], [-3.0, 2.0]]])
    a = completion(mask, t64([[1.0, 100.0], [-100.0, 3.0]]))
    b = completion(mask, t64([[1.0, 0.0], [0.0, 3.0]]))
    assert torch.equal(a.loss(W), b.loss(W)) and torch.equal(a.grad(W), b.grad(W))
    assert a.loss(W).item() == 0.5 * (0.5 - 1.0) ** 2 + 0.5 * (2.0 - 3.0) ** 2


@SETTINGS
@given(data=completion_data())
def test_completion_grad_is_autograd_of_loss(data) -> None:
    mask, target, W = data
    P = completion(t64(mask), t64(target))
    Wt = t64(W).requires_grad_(True)
    P.loss(Wt).sum().backward()
    # ∂/∂W_ij of ½(W_ij − b_ij)² is the same single subtraction r_ij (times the exact 1/2·2): identical bits.
    torch.testing.assert_close(Wt.grad, P.grad(t64(W)), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- sensing


@SETTINGS
@given(data=sensing_data())
def test_sensing_loss_and_grad_match_explicit_loops(data) -> None:
    A, y, W = data
    P = sensing(t64(A), t64(y))
    B, m, d, e = A.shape
    loss, grad = P.loss(t64(W)).numpy(), P.grad(t64(W)).numpy()
    n = d * e
    for b in range(B):
        r = np.array([sum(A[b, k, i, j] * W[b, i, j] for i in range(d) for j in range(e)) - y[b, k]
                      for k in range(m)])
        r_abs = np.array([sum(abs(A[b, k, i, j] * W[b, i, j]) for i in range(d) for j in range(e)) + abs(y[b, k])
                          for k in range(m)])
        # Residual r_k = ⟨A_k, W⟩ − y_k: inner product of n terms plus one subtraction, two evaluation orders.
        dr = 2 * gamma(n + 1) * r_abs
        ref_loss = 0.5 * float(np.sum(r * r))
        # δ(½Σr²) ≤ Σ |r_k| δr_k + ½ Σ δr_k² (first order plus the square) + summation of m terms.
        tol_loss = float(np.sum(np.abs(r) * dr + 0.5 * dr * dr)) + 2 * gamma(m + 2) * ref_loss
        assert abs(loss[b] - ref_loss) <= tol_loss
        ref_grad = np.einsum("k,kij->ij", r, A[b])
        # ∇ = Σ_k r_k A_k: errors δr_k propagate as Σ_k δr_k |A_k|, plus a sum of m products.
        tol_grad = np.einsum("k,kij->ij", dr, np.abs(A[b])) + 2 * gamma(m + 1) * np.einsum(
            "k,kij->ij", np.abs(r), np.abs(A[b]))
        assert np.all(np.abs(grad[b] - ref_grad) <= tol_grad)


@SETTINGS
@given(data=sensing_data())
def test_sensing_grad_is_autograd_of_loss(data) -> None:
    A, y, W = data
    P = sensing(t64(A), t64(y))
    Wt = t64(W).requires_grad_(True)
    P.loss(Wt).sum().backward()
    r_abs = np.einsum("bkij,bij->bk", np.abs(A), np.abs(W)) + np.abs(y)
    n = A.shape[2] * A.shape[3] + A.shape[1] + 2
    # Both are Σ_k r_k A_k with r evaluated by possibly different kernels: 2·γ_n·Σ_k |r|_abs |A_k|.
    tol = 2 * gamma(n) * np.einsum("bk,bkij->bij", r_abs, np.abs(A))
    assert np.all(np.abs((Wt.grad - P.grad(t64(W))).numpy()) <= tol)


def test_completion_equals_sensing_with_indicator_measurements() -> None:
    """Completion is sensing with A_k = e_i e_jᵀ: same loss and gradient (exact: every inner product has one
    nonzero term, so no rounding beyond the one subtraction)."""
    rng = np.random.default_rng(5)
    mask = t64([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    target = t64(rng.standard_normal((2, 3)))
    idx = [(i, j) for i in range(2) for j in range(3) if mask[i, j] == 1]
    A = torch.zeros(len(idx), 2, 3, dtype=torch.float64)
    for k, (i, j) in enumerate(idx):
        A[k, i, j] = 1.0
    y = torch.stack([target[i, j] for i, j in idx])
    W = t64(rng.standard_normal((1, 2, 3)))
    Pc, Ps = completion(mask, target), sensing(A, y)
    torch.testing.assert_close(Pc.grad(W), Ps.grad(W), rtol=0, atol=0)
    # Losses sum the same squares, possibly in another order (5 terms): 2·γ_6 relative.
    torch.testing.assert_close(Pc.loss(W), Ps.loss(W), rtol=2 * gamma(6), atol=0)


# ---------------------------------------------------------------------------------------------- named problems


def zero_loss_completion(P: Problem, w: float) -> torch.Tensor:
    """The completion of P that agrees with every observation and has ``w`` at each unobserved entry."""
    return torch.where(P.mask.bool(), P.target, torch.full_like(P.target, w))


@given(w=st.floats(-1e6, 1e6, allow_nan=False))
@SETTINGS
def test_razin_cohen_2x2_every_completion_has_det_minus_one(w: float) -> None:
    P = razin_cohen_2x2()
    assert P.shape == (2, 2) and P.batch == 1
    np.testing.assert_array_equal(P.mask[0].numpy(), [[0, 1], [1, 1]])
    W = zero_loss_completion(P, w)
    np.testing.assert_array_equal(W[0].numpy(), [[w, 1.0], [1.0, 0.0]])
    assert P.loss(W).item() == 0.0 and exact_det(W[0].tolist()) == -1
    # and perturbing any observed entry makes the loss positive (the observations are what we think)
    for i, j in [(0, 1), (1, 0), (1, 1)]:
        V = W.clone()
        V[0, i, j] += 0.5
        assert P.loss(V).item() == 0.125


@given(w=st.floats(-1e3, 1e3, allow_nan=False), eps=st.floats(1e-6, 10.0))
@SETTINGS
def test_razin_cohen_perturbed_completions_have_det_eps_w_plus_one(w: float, eps: float) -> None:
    P = razin_cohen_perturbed(eps)
    W = zero_loss_completion(P, w)
    assert P.loss(W).item() == 0.0
    # exact rationals: the floats ε and w and the constants −2, 0.5 are all exactly representable
    assert exact_det(W[0].tolist()) == Fraction(eps) * Fraction(w) + 1


def test_razin_cohen_perturbed_accepts_a_batch_of_eps() -> None:
    eps = torch.tensor([0.1, 0.2, 3.0], dtype=torch.float64)
    P = razin_cohen_perturbed(eps)
    assert P.batch == 3
    np.testing.assert_array_equal(P.target[:, 1, 1].numpy(), eps.numpy())
    np.testing.assert_array_equal(P.target[:, 0, 1].numpy(), [-2.0] * 3)
    np.testing.assert_array_equal(P.target[:, 1, 0].numpy(), [0.5] * 3)


@pytest.mark.parametrize("eps", [0.0, -1.0, float("nan"), float("inf")])
def test_razin_cohen_perturbed_rejects_bad_eps(eps: float) -> None:
    with pytest.raises(InvalidInputError, match="ε > 0"):
        razin_cohen_perturbed(eps)


@given(d=st.integers(2, 6), w=st.floats(-1e3, 1e3, allow_nan=False))
@SETTINGS
def test_razin_cohen_embedding_every_completion_has_det_minus_one(d: int, w: float) -> None:
    P = razin_cohen_embedding(d)
    mask = np.ones((d, d))
    mask[0, 0] = 0
    np.testing.assert_array_equal(P.mask[0].numpy(), mask)
    W = zero_loss_completion(P, w)
    assert W[0, 0, 0].item() == w and P.loss(W).item() == 0.0
    assert exact_det(W[0].tolist()) == -1
    if d == 2:  # the 2×2 embedding is the Razin–Cohen problem itself
        P2 = razin_cohen_2x2()
        assert torch.equal(P.mask, P2.mask) and torch.equal(P.target, P2.target)


def test_razin_cohen_embedding_rejects_d_below_2() -> None:
    with pytest.raises(InvalidInputError, match="d ≥ 2"):
        razin_cohen_embedding(1)


def test_named_problems_take_batch_dtype_and_device() -> None:
    P = razin_cohen_2x2(4, dtype=torch.float32)
    assert P.batch == 4 and P.dtype == torch.float32 and P.device.type == "cpu"
    E = razin_cohen_embedding(3, batch=2, dtype=torch.float32)
    assert E.batch == 2 and E.shape == (3, 3) and E.dtype == torch.float32


# ---------------------------------------------------------------------------------------------- batch ops


def test_select_and_expand() -> None:
    rng = np.random.default_rng(0)
    P = sensing(t64(rng.standard_normal((4, 3, 2, 2))), t64(rng.standard_normal((4, 3))))
    sub = P.select([2, 0])
    assert torch.equal(sub.A, P.A[[2, 0]]) and torch.equal(sub.y, P.y[[2, 0]])
    sub = P.select(torch.tensor([True, False, False, True]))
    assert torch.equal(sub.y, P.y[[0, 3]])
    with pytest.raises(InvalidInputError, match="batch 1"):
        P.expand(3)
    one = P.select([1])
    big = one.expand(3)
    assert big.batch == 3 and all(torch.equal(big.A[i], P.A[1]) for i in range(3))
    big.A[0, 0, 0, 0] = 99.0  # copies, not views of one another or of the original
    assert big.A[1, 0, 0, 0].item() != 99.0 and one.A[0, 0, 0, 0].item() != 99.0


def test_to_changes_dtype_of_every_field() -> None:
    P = razin_cohen_2x2().to(dtype=torch.float32)
    assert P.mask.dtype == P.target.dtype == torch.float32 and P.dtype == torch.float32


# ---------------------------------------------------------------------------------------------- bad input


def test_completion_rejects_bad_input() -> None:
    m = torch.ones(2, 2)
    with pytest.raises(InvalidInputError, match="0 or 1"):
        completion(torch.full((2, 2), 0.5), torch.zeros(2, 2))
    with pytest.raises(InvalidInputError, match="does not match"):
        completion(m, torch.zeros(2, 3))
    with pytest.raises(InvalidInputError, match="NaN/Inf"):
        completion(m, torch.tensor([[0.0, float("nan")], [0.0, 0.0]]))
    with pytest.raises(InvalidInputError, match="floating"):
        completion(m, torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(InvalidInputError, match="dimensions"):
        completion(torch.ones(2), torch.zeros(2))
    with pytest.raises(InvalidInputError, match="batch"):
        completion(torch.ones(2, 2, 2), torch.zeros(3, 2, 2))


def test_sensing_rejects_bad_input() -> None:
    with pytest.raises(InvalidInputError, match="does not match"):
        sensing(torch.ones(1, 3, 2, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64))
    with pytest.raises(InvalidInputError, match="NaN/Inf"):
        sensing(torch.full((3, 2, 2), float("inf"), dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    with pytest.raises(InvalidInputError, match="dimensions"):
        sensing(torch.ones(2, 2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))


def test_check_matrix_names_the_problem() -> None:
    P = razin_cohen_2x2(3)
    P.check_matrix(torch.zeros(3, 2, 2, dtype=torch.float64))
    P.check_matrix(torch.zeros(1, 2, 2, dtype=torch.float64))
    with pytest.raises(InvalidInputError, match=r"razin-cohen-2x2.*\(3, 2, 2\)"):
        P.check_matrix(torch.zeros(3, 2, 3, dtype=torch.float64))
    with pytest.raises(InvalidInputError, match=r"shape \(2, 2, 2\)"):
        P.check_matrix(torch.zeros(2, 2, 2, dtype=torch.float64))
    W = torch.zeros(3, 2, 2, dtype=torch.float64)
    W[2, 0, 0] = float("nan")
    with pytest.raises(InvalidInputError, match=r"instances \[2\]"):
        P.check_matrix(W)


# ---------------------------------------------------------------------------------------------- robustness problem


def test_razin_cohen_observed_moves_the_unobserved_entry() -> None:
    """Hand-written targets: [[∗, z], [z′, ε]] with ∗ moved by row/column swaps."""
    from implreg.matrix.problems import razin_cohen_observed

    P = razin_cohen_observed([-2.0] * 4, [0.5] * 4, [0.1] * 4,
                             torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]]))
    want = [[[0, -2], [0.5, 0.1]], [[-2, 0], [0.1, 0.5]], [[0.5, 0.1], [0, -2]], [[0.1, 0.5], [-2, 0]]]
    assert torch.equal(P.target, torch.tensor(want, dtype=torch.float64))
    assert [tuple((P.mask[i] == 0).nonzero()[0].tolist()) for i in range(4)] == [(0, 0), (0, 1), (1, 0), (1, 1)]


@pytest.mark.parametrize("bad", [{"z": 0.0}, {"zp": float("nan")}, {"unobserved": (2, 0)}])
def test_razin_cohen_observed_rejects_bad_input(bad) -> None:
    from implreg.matrix.problems import razin_cohen_observed

    kw = {"z": 1.0, "zp": 1.0, "eps": 0.1, "unobserved": (0, 0)} | bad
    with pytest.raises(InvalidInputError):
        razin_cohen_observed(kw["z"], kw["zp"], kw["eps"], kw["unobserved"])


def test_perturbed_bounds_hold_on_random_matrices() -> None:
    """The claim-8 bounds against brute force: random W within the loss ball whose det has the theorem's sign
    (independent of the bounds' derivation: numpy det and SVD)."""
    import numpy as np

    from implreg.matrix.levels import perturbed_sigma_min_upper_bound, perturbed_w_lower_bound

    rng = np.random.default_rng(5)
    n = 0
    for _ in range(20000):
        z, zp = rng.choice([-1, 1], 2) * 10 ** rng.uniform(-1, 1, 2)
        eps = rng.choice([-1, 1]) * 10 ** rng.uniform(-3, 0.5)
        dl = rng.uniform(0, 0.999) * min(abs(z), abs(zp))
        r = rng.normal(size=3)
        r *= dl * rng.uniform() / np.linalg.norm(r)
        W = np.array([[rng.normal() * 10 ** rng.uniform(-2, 4), z + r[0]], [zp + r[1], eps + r[2]]])
        if np.sign(np.linalg.det(W)) != np.sign(z * zp):
            continue
        n += 1
        assert abs(W[0, 0]) >= perturbed_w_lower_bound(z, zp, eps, dl) * (1 - 1e-12)
        assert np.linalg.svd(W, compute_uv=False)[-1] <= perturbed_sigma_min_upper_bound(z, zp, eps, dl) * (1 + 1e-12)
    assert n > 1000


def test_perturbed_observations_det_sign_is_opposite_to_the_zero_completion() -> None:
    """det_sign = −sign det(target with ∗ = 0), in every frame (swaps multiply both by (−1)^(r+c))."""
    from hypothesis import given, settings

    from implreg.matrix.problems import razin_cohen_observed
    from implreg.strategies.matrix import perturbed_observations

    @settings(max_examples=50, deadline=None)
    @given(o=perturbed_observations())
    def check(o):
        P = razin_cohen_observed(o.z, o.zp, o.eps, o.unobserved)
        assert int(torch.sign(torch.linalg.det(P.target[0]))) == -o.det_sign

    check()
