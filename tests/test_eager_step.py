"""The eager step's fewer-dispatch forms (implreg.matrix.flow.kernels) against the plain term-by-term arithmetic
they replace: same bits (values and signs of zero), for every row, batch size and tableau shape."""

from __future__ import annotations

import math
from fractions import Fraction as F

import pytest
import torch

from implreg.matrix.flow import DOPRI5, solve
from implreg.matrix.flow import kernels as K
from implreg.matrix.flow.tableau import ButcherTableau
from implreg.matrix.problems import razin_cohen_2x2

f64 = torch.float64

# Cash & Karp (1990): not FSAL, and zero weights in b and e, so the accumulator has a solution row and its
# row ranges are split (dense output: the trivial first-order extension, only to satisfy the tableau's checks).
_CK_B = (F(37, 378), F(0), F(250, 621), F(125, 594), F(0), F(512, 1771))
_CK_B4 = (F(2825, 27648), F(0), F(18575, 48384), F(13525, 55296), F(277, 14336), F(1, 4))
CASH_KARP = ButcherTableau(
    name="Cash–Karp 5(4)", order=5,
    c=(F(0), F(1, 5), F(3, 10), F(3, 5), F(1), F(7, 8)),
    a=((), (F(1, 5),), (F(3, 40), F(9, 40)), (F(3, 10), F(-9, 10), F(6, 5)),
       (F(-11, 54), F(5, 2), F(-70, 27), F(35, 27)),
       (F(1631, 55296), F(175, 512), F(575, 13824), F(44275, 110592), F(253, 4096))),
    b=_CK_B, e=tuple(b - c for b, c in zip(_CK_B, _CK_B4, strict=True)), dense=tuple((b,) for b in _CK_B),
    fsal=False,
)


def same(a, b) -> bool:
    """Bit-identical including the sign of zero; NaN equal to NaN; None equal to None."""
    if a is None or b is None:
        return a is None and b is None
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.is_floating_point():
        return bool(torch.equal(a, b))
    return bool(torch.equal(torch.nan_to_num(a, nan=7.0), torch.nan_to_num(b, nan=7.0))
                and torch.equal(torch.signbit(a), torch.signbit(b)))


def reference_attempt(co, f, f_aux, guard, t, y, k1, h, tm, err_acc, rtol, atol, *prm):
    """``rk_attempt`` written term by term: each stage ``y + Σ_j (h·a_ij) k_j`` in j order, zero weights skipped,
    the error ``h·Σ_j e_j k_j`` (the arithmetic of the kernels before the stacked accumulator)."""
    u = torch.finfo(y.dtype).eps
    last = h >= tm - t
    hs = torch.where(last, tm - t, h)
    hcol = hs.unsqueeze(-1)

    def combine(weights, K_):
        out = y
        for w, k in zip(weights, K_, strict=False):
            if w != 0.0:
                out = out + (hcol * w) * k
        return out

    K_, aux, yi, S = [k1], None, y, len(co.c)
    for i in range(1, S):
        yi = combine(co.a[i], K_)
        ti = t + co.c[i] * hs
        if i == S - 1 and co.fsal and f_aux is not None:
            k, aux = f_aux(ti, yi, *prm)
        else:
            k = f(ti, yi, *prm)
        K_.append(k)
    y_new = yi if co.fsal else combine(co.b, K_)
    e_sum = None
    for w, k in zip(co.e, K_, strict=True):
        if w != 0.0:
            e_sum = w * k if e_sum is None else e_sum + w * k
    e_loc = hcol * e_sum
    q = K.ratio(e_loc, atol + rtol * torch.maximum(y.abs(), y_new.abs()))
    msq = K.fsum(q * q) * (1.0 / q.shape[-1])
    ya = y_new.abs()
    ymax = ya.amax(-1)
    finite = torch.isfinite(msq) & torch.isfinite(ymax)
    acc_err = err_acc + torch.where(K._moved(K_), e_loc.abs() + u * ya, 0.0)
    t_new = torch.where(last, tm, t + hs)
    bad = guard(y_new, acc_err.amax(-1), *prm) if guard is not None else None
    return hs, last, t_new, torch.stack(K_, dim=1), y_new, msq, finite, acc_err, ymax, aux, bad


def _inputs(n: int, P: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n, P, generator=g, dtype=f64)
    y[:, 0] = 0.0  # a component that never moves (its field is 0 below): error exactly 0, y unchanged
    y[: n // 2, 1] = -0.0
    t = torch.rand(n, generator=g, dtype=f64)
    h = 10.0 ** (-3 * torch.rand(n, generator=g, dtype=f64))
    tm = t + torch.where(torch.rand(n, generator=g, dtype=f64) < 0.3, 0.5 * h, torch.full((n,), math.inf, dtype=f64))
    ea = 1e-12 * torch.rand(n, P, generator=g, dtype=f64)
    A = torch.randn(P, P, generator=g, dtype=f64) / P
    A[0] = 0.0
    A[1] = 0.0
    return t, y, h, tm, ea, A


@pytest.mark.parametrize("tableau", [DOPRI5, CASH_KARP], ids=["dopri5", "cash-karp"])
@pytest.mark.parametrize("autonomous", [True, False])
@pytest.mark.parametrize("n", [1, 6, 33])
@pytest.mark.parametrize("inference", [False, True], ids=["fresh-buffers", "workspace"])
def test_stacked_accumulator_equals_term_by_term(tableau, autonomous, n, inference) -> None:
    """rk_attempt's one-accumulator form gives the term-by-term sums' bits, every output, with and without
    FSAL, zero weights, stage times and the auxiliary output; under inference_mode (the eager step kernel) it
    reuses per-batch-size buffers, and a later call does not change an earlier call's results."""
    co = K.RKCoefficients.of(tableau)
    P = 5
    t, y, h, tm, ea, A = _inputs(n, P, seed=n)

    def f(tt, yy, M):  # non-linear and (unless autonomous) time-dependent; rows 0 and 1 of M are 0
        out = K.mm(M, (yy * yy.abs()).unsqueeze(-1)).squeeze(-1)
        return out if autonomous else out * (1.0 + tt.unsqueeze(-1))

    def f_aux(tt, yy, M):
        k = f(tt, yy, M)
        return k, K.fsum(k * k)

    if autonomous:
        f.autonomous = True  # type: ignore[attr-defined]
    k1 = f(t, y, A.expand(n, P, P))
    rt, at = torch.tensor(1e-6, dtype=f64), torch.tensor(1e-9, dtype=f64)
    guard = lambda yy, e, M: yy.abs().amax(-1) > 2.0  # noqa: E731
    args = (t, y, k1, h, tm, ea, rt, at, A.expand(n, P, P))
    want = reference_attempt(co, f, f_aux, guard, *args)
    with torch.inference_mode(inference):
        got = K.rk_attempt(co, f, f_aux, guard, *args)
        kept = [x.clone() if isinstance(x, torch.Tensor) else x for x in got]
        other = K.rk_attempt(co, f, f_aux, guard, t, 2 * y, 2 * k1, h, tm, ea, rt, at, A.expand(n, P, P))
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert same(a, b), f"output {i} differs"
        assert same(a, kept[i]), f"output {i} was overwritten by the next call"
    assert not same(other[4], got[4])
    # components whose field is 0 do not move: no error added, y_new = y (as values: y + (±0) may flip a −0)
    assert torch.equal(got[7][:, :2], ea[:, :2]) and torch.equal(got[4][:, :2], y[:, :2])
    last_only = K.rk_attempt(co, f, f_aux, guard, *args, all_stages=False)
    assert same(last_only[3], got[3][:, -1])


@pytest.mark.parametrize("N", [1, 2, 3, 4, 5])
def test_square2_field_equals_general_form(N: int) -> None:
    """The 2×2 completion field in fewer dispatches gives the general form's bits (gradient and loss), with
    masked entries, exact zeros and entries equal to the target."""
    g = torch.Generator().manual_seed(N)
    n = 29
    y = torch.randn(n, 4 * N, generator=g, dtype=f64)
    y[::3, 1] = 0.0
    y[1::4, 2] = -0.0
    mask = (torch.rand(n, 2, 2, generator=g) < 0.7).to(f64)
    target = torch.randn(n, 2, 2, generator=g, dtype=f64) * mask
    fast = K._square2_field(N)
    slow = K._dmf_both(((2, 2),) * N, "completion")
    for want_loss in (False, True):
        a, b = fast(y, mask, target, want_loss), slow(y, mask, target, want_loss)
        assert same(a[0], b[0]) and same(a[1], b[1])
    # the field dmf_field hands out uses the fast form, and knows that it does not read t
    f, f_aux = K.dmf_field(((2, 2),) * N, "completion")
    assert f.autonomous and f_aux.autonomous
    assert same(f(torch.zeros(n, dtype=f64), y, mask, target), slow(y, mask, target, False)[0])


def test_inv_root_eager_and_ladder_agree_on_special_values() -> None:
    """The eager inv_root (nan_to_num, frexp) and the compiled one (where, ladder) read NaN as 1 and clamp ±∞,
    zeros and negatives alike."""
    x = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0, -5.0, 1e-300, 1e300, 2.0**-61, 2.0**61, 3.3],
                     dtype=f64)
    table = K.root_table(10, f64, "cpu")
    assert same(K.inv_root(x, 10, table), K.inv_root(x, 10, table, ladder=True))


def test_eager_solve_returns_ordinary_tensors() -> None:
    """The eager kernel runs under inference_mode, but nothing of it leaks into the result: every tensor can
    be modified in place and used with autograd."""
    from implreg.matrix.factorization import balanced_init, with_det_sign

    g = torch.Generator().manual_seed(2)
    fac = balanced_init(with_det_sign(0.3 * torch.randn(3, 2, 2, generator=g, dtype=f64), +1), 2)
    sol = solve(razin_cohen_2x2(3), fac, loss_target=1e-3, loss_levels=[0.1], save_at=[0.5])
    for name, v in vars(sol.result).items():
        if isinstance(v, torch.Tensor):
            assert not v.is_inference(), name
    sol.result.y.add_(0.0)
    w = sol.result.y.clone().requires_grad_(True)
    (w * w).sum().backward()


def _slice_fsum(x: torch.Tensor) -> torch.Tensor:
    """fsum's pairing written with slices (the form before the unbind halvings)."""
    while x.shape[-1] > 1:
        m, half = x.shape[-1], x.shape[-1] // 2
        s = x[..., :half] + x[..., half : 2 * half]
        x = torch.cat([s, x[..., 2 * half :]], dim=-1) if m % 2 else s
    return x[..., 0]


@pytest.mark.parametrize("m", [*range(1, 14), 24, 37])
def test_fsum_halvings_keep_the_pairing_and_signs_of_zero(m: int) -> None:
    """fsum by unbind halvings has the slice form's bits, −0 + −0 = −0 included, in both layouts."""
    g = torch.Generator().manual_seed(m)
    scale = torch.pow(10.0, torch.randint(-150, 150, (300, m), generator=g).to(f64))
    x = torch.randn(300, m, generator=g, dtype=f64) * scale
    x[::7] = 0.0
    x[1::11, 0] = math.inf
    x[2::13, -1] = math.nan
    x[3::5, m // 2] = 5e-324
    want = _slice_fsum(x)
    assert same(K.fsum(x), want)
    assert bool(torch.signbit(K.fsum(torch.full((3, m), -0.0, dtype=f64))).all())  # −0 + −0 + … stays −0
    assert same(K.fsum(x.T.contiguous().T), want)  # the batch-innermost layout too
    assert same(K.fsum(x.T, dim=0), want)


@pytest.mark.parametrize("n", [3, 3000])
def test_mm_two_term_products_are_one_addition_at_any_batch_size(n: int) -> None:
    """k = 2 products are ``a·b + c·d`` (the column form's operation) whatever the batch size: a reduction
    kernel would start from +0 and return +0 for −0 + −0, and only below some size."""
    g = torch.Generator().manual_seed(n)
    A, B = torch.randn(n, 2, 2, generator=g, dtype=f64), torch.randn(n, 2, 2, generator=g, dtype=f64)
    A[0] = torch.tensor([[-0.0, 0.0], [1.0, -0.0]])
    B[0] = torch.tensor([[1.0, -1.0], [-1.0, 2.0]])  # row 0 of A·B: (−0·1 + 0·(−1), −0·(−1) + 0·2) = (−0, +0)
    C = K.mm(A, B)
    cols = K.col_mm([[A[:, i, j] for j in range(2)] for i in range(2)],
                    [[B[:, i, j] for j in range(2)] for i in range(2)])
    assert same(C, torch.stack([torch.stack(r, -1) for r in cols], -2))
    assert same(C[0, 0], torch.tensor([-0.0, 0.0], dtype=f64))
