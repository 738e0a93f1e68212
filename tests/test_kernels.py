"""The fused kernels (implreg.matrix.flow.kernels): the arithmetic against independent computations, and the three
bit-identity properties the integrator relies on — batch position, tensor form vs column form, eager vs
compiled."""

from __future__ import annotations

import math
import warnings

import mpmath
import pytest
import torch

from implreg.errors import ImplregError
from implreg.matrix.factorization import FactorLayout, factor_grads, gaussian_init
from implreg.matrix.flow import DOPRI5, solve
from implreg.matrix.flow import kernels as K
from implreg.matrix.problems import completion, razin_cohen_2x2, sensing

f64 = torch.float64
CO = K.RKCoefficients.of(DOPRI5)

# (shapes of W_1 … W_N, kind, with det guard)
LAYOUTS = [
    (((2, 2), (2, 2), (2, 2)), "completion", True),
    (((2, 2), (2, 2), (2, 2)), "sensing", False),
    (((3, 2), (3, 3)), "completion", False),
    (((2, 3),), "sensing", False),
    (((3, 3), (3, 3)), "completion", True),
    (((4, 4), (4, 4)), "sensing", True),
    (((2, 2),), "completion", True),
]


def same(a, b) -> bool:
    """Bit-identical (signs of zero included), NaN equal to NaN whatever its sign bit (which x86 sets by operand
    order, and which no reader of a NaN looks at), None equal to None."""
    if a is None or b is None:
        return a is None and b is None
    if a.is_floating_point():
        number = ~(torch.isnan(a) | torch.isnan(b))
        if a.shape != b.shape or not torch.equal(torch.signbit(a[number]), torch.signbit(b[number])):
            return False
    return a.shape == b.shape and bool(torch.equal(torch.nan_to_num(a.double(), nan=7.0, posinf=8.0, neginf=9.0),
                                                   torch.nan_to_num(b.double(), nan=7.0, posinf=8.0, neginf=9.0)))


def step_inputs(n: int, shapes, kind: str, seed: int = 0, m: int = 3):
    """Random but sane inputs of ``dmf_step_kernel``: some rows reject, some end at t_max, some fire."""
    g = torch.Generator().manual_seed(seed)
    P = sum(a * b for a, b in shapes)
    d, e = shapes[-1][0], shapes[0][1]
    r = lambda *s: torch.rand(*s, generator=g, dtype=f64)  # noqa: E731
    y = 0.5 * torch.randn(n, P, generator=g, dtype=f64)
    k1 = torch.randn(n, P, generator=g, dtype=f64)
    t = r(n)
    h = 10.0 ** (-4 * r(n))  # 1e-4 … 1: a mix of accepted and rejected attempts
    tm = t + torch.where(r(n) < 0.3, 0.5 * h, torch.full((n,), math.inf, dtype=f64))
    ea = 1e-12 * r(n, P)
    if kind == "completion":
        p0 = (r(n, d, e) < 0.7).to(f64)
        p1 = torch.randn(n, d, e, generator=g, dtype=f64) * p0
    else:
        p0 = torch.randn(n, m, d, e, generator=g, dtype=f64)
        p1 = torch.randn(n, m, generator=g, dtype=f64)
    i64 = {"dtype": torch.int64}
    z = {"dtype": f64}
    return (t, y, k1, h, tm, ea, torch.zeros(n, **i64), torch.zeros(n, **i64), torch.randint(0, 6, (n,), **i64),
            r(n) < 0.9, torch.zeros(n, 2, dtype=torch.bool), torch.tensor(1e-6, **z), torch.tensor(1e-9, **z),
            torch.tensor(0.5, **z), torch.tensor([2.0, 0.1], **z), torch.tensor([0.5, 0.7], **z),
            torch.tensor(6), torch.tensor(1e3, **z), torch.tensor(16 * 2.0**-52, **z), K.root_table(10, f64, "cpu"),
            p0, p1)


def rows(args, idx):
    shared = set(K._STEP_SHARED)
    return tuple(a if (i in shared or a is None) else a[idx] for i, a in enumerate(args))


# ---------------------------------------------------------------------------------------------- primitives


def test_fsum_is_a_fixed_pairwise_order() -> None:
    x = torch.randn(5, 7, dtype=f64)
    c = [x[:, i] for i in range(7)]
    # 7 → (0+3, 1+4, 2+5, 6) → ((0+3)+(2+5), (1+4)+6) → …
    s = ((c[0] + c[3]) + (c[2] + c[5])) + ((c[1] + c[4]) + c[6])
    assert torch.equal(K.fsum(x), s)
    assert torch.equal(K.col_fsum(c), s)
    assert torch.equal(K.fsum(x.T, dim=0), s)


def test_mm_sums_in_order_and_matches_matmul() -> None:
    A, B = torch.randn(6, 3, 4, dtype=f64), torch.randn(6, 4, 2, dtype=f64)
    C = K.mm(A, B)
    ref = ((A[..., :, 0:1] * B[..., 0:1, :] + A[..., :, 1:2] * B[..., 1:2, :]) + A[..., :, 2:3] * B[..., 2:3, :]) \
        + A[..., :, 3:4] * B[..., 3:4, :]
    assert torch.equal(C, ref)
    torch.testing.assert_close(C, A @ B, rtol=1e-14, atol=1e-15)
    # k = 2: one addition at any size; the same bits alone and in a large batch
    A2, B2 = torch.randn(5000, 2, 2, dtype=f64), torch.randn(5000, 2, 2, dtype=f64)
    assert torch.equal(K.mm(A2, B2)[:100], K.mm(A2[:100], B2[:100]))


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_small_det_matches_linalg_and_column_form(k: int) -> None:
    W = torch.randn(50, k, k, dtype=f64)
    d = K.small_det(W)
    torch.testing.assert_close(d, torch.linalg.det(W), rtol=1e-12, atol=1e-13)
    cols = [[W[:, i, j] for j in range(k)] for i in range(k)]
    assert torch.equal(K.col_det(cols), d)


def test_inv_root_is_accurate_and_frexp_ladder_is_exact() -> None:
    x = torch.cat([torch.logspace(-17, 17, 3001, dtype=f64), torch.tensor([1.0, 0.5, 2.0**-60, 2.0**60], dtype=f64)])
    x = torch.cat([x, x * (1 + 2.0**-52), x * (1 - 2.0**-53)])
    f1, e1 = K.frexp_exact(x)
    f2, e2 = K.frexp_exact(x, ladder=True)
    assert torch.equal(f1, f2) and torch.equal(e1, e2)
    table = K.root_table(10, f64, "cpu")
    p = K.inv_root(x, 10, table)
    assert torch.equal(p, K.inv_root(x, 10, table, ladder=True))
    with mpmath.workdps(30):
        ref = torch.tensor([float(mpmath.mpf(v) ** (-mpmath.mpf(1) / 10)) for v in x.tolist()], dtype=f64)
    assert float(((p - ref).abs() / ref).max()) < 1e-14
    odd = K.inv_root(torch.tensor([float("nan"), 0.0, math.inf], dtype=f64), 10, table)
    # NaN read as 1, then clamped to [2^-60, 2^60]
    torch.testing.assert_close(odd, torch.tensor([1.0, 2.0**6, 2.0**-6], dtype=f64), rtol=1e-14, atol=0)


def test_tableau_coefficients() -> None:
    assert CO.fsal and CO.order == 5 and len(CO.c) == 7


# ---------------------------------------------------------------------------------------------- the DMF field


def layout_instances(shapes, kind: str, B: int, *, scale: float, observed: float, seeds=(1, 2)):
    """``(factors, problem)``: B Gaussian factorizations of ``shapes`` and a random completion (each entry
    observed with probability ``observed``) or sensing (3 measurements) problem."""
    dims = (shapes[0][1], *(a for a, _ in shapes))
    Ws = gaussian_init(B, dims, scale, generator=torch.Generator().manual_seed(seeds[0]))
    d, e = dims[-1], dims[0]
    g = torch.Generator().manual_seed(seeds[1])
    if kind == "completion":
        mask = (torch.rand(B, d, e, generator=g) < observed).to(f64)
        return Ws, completion(mask, torch.randn(B, d, e, generator=g, dtype=f64))
    return Ws, sensing(torch.randn(B, 3, d, e, generator=g, dtype=f64), torch.randn(B, 3, generator=g, dtype=f64))


@pytest.mark.parametrize("shapes,kind,_g", LAYOUTS)
def test_dmf_field_matches_factor_grads_and_loss(shapes, kind, _g) -> None:
    Ws, P = layout_instances(shapes, kind, 7, scale=0.7, observed=0.6)
    prm = (P.mask, P.target) if kind == "completion" else (P.A, P.y)
    layout = FactorLayout.of(Ws)
    f, f_aux = K.dmf_field(layout.shapes, kind)
    y = layout.pack(Ws)
    value, grads = factor_grads(P, Ws)
    dy, loss = f_aux(None, y, *prm)
    torch.testing.assert_close(dy, -layout.pack(grads), rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(loss, value, rtol=1e-13, atol=1e-15)
    assert torch.equal(f(None, y, *prm), dy)
    assert torch.equal(K.dmf_loss(layout.shapes, kind)(y, *prm), loss)


# ---------------------------------------------------------------------------------------------- bit identity


@pytest.mark.parametrize("shapes,kind,guard", LAYOUTS)
def test_step_tensor_form_equals_column_form(shapes, kind, guard) -> None:
    """The eager kernel (tensor form) and the compiled kernel's source (column form) give the same bits."""
    kern = K.dmf_step_kernel(CO, shapes, kind, guard, "test")
    args = step_inputs(40, shapes, kind)
    a, b = kern.fn(*args), kern.compiled_fn(*args)
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert same(x, y), f"result {i} differs"
    status = a[8]
    assert len(set(status.tolist())) >= 2  # the inputs exercise more than one outcome
    assert bool(torch.isfinite(a[0]).all())  # the committed state


@pytest.mark.parametrize("n", [1, 2, 7, 33, 100])
def test_step_is_row_wise(n: int) -> None:
    """Row i of a batch equals the same row alone (and at another position)."""
    shapes, kind = ((2, 2), (2, 2), (2, 2)), "completion"
    kern = K.dmf_step_kernel(CO, shapes, kind, True, "test")
    args = step_inputs(n, shapes, kind, seed=n)
    full = kern.fn(*args)
    for i in {0, n // 2, n - 1}:
        alone = kern.fn(*rows(args, [i]))
        perm = list(range(n))[::-1]
        moved = kern.fn(*rows(args, perm))
        for x, y, z in zip(full, alone, moved, strict=True):
            if x is None or x.ndim == 0:
                continue
            assert same(x[i : i + 1], y) and same(x[i : i + 1], z[n - 1 - i : n - i])


def _compiled_or_skip(kern, args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = kern(*args)
    if kern.failed is not None:
        pytest.skip(f"torch.compile unavailable here: {kern.failed[:200]}")
    assert kern.calls["compiled"] >= 1
    return out


def test_compiled_equals_eager(monkeypatch) -> None:
    """The compiled column-form kernel returns the eager kernel's bits, for a batch and for one row (padded)."""
    monkeypatch.setenv("IMPLREG_COMPILE", "always")
    shapes, kind = ((2, 2),), "completion"
    kern = K.dmf_step_kernel(CO, shapes, kind, True, "test_compiled")
    for n in (37, 1):
        args = step_inputs(n, shapes, kind, seed=3)
        got = _compiled_or_skip(kern, args)
        for i, (x, y) in enumerate(zip(got, kern.fn(*args), strict=True)):
            assert same(x, y), f"n={n}: result {i} differs"


def test_solve_compiled_equals_eager(monkeypatch) -> None:
    """A whole solve (events, levels, saves, guard) gives the same bits with the compiled kernel and without."""
    from implreg.matrix.factorization import balanced_init, with_det_sign

    g = torch.Generator().manual_seed(5)
    W0 = with_det_sign(0.3 * torch.randn(6, 2, 2, generator=g, dtype=f64), +1)
    fac = balanced_init(W0, 1)
    kw = dict(loss_target=1e-4, loss_levels=[0.1, 1e-3], save_at=[0.5, 1.0, 3.0], t_max=50.0)
    monkeypatch.setenv("IMPLREG_COMPILE", "never")
    a = solve(razin_cohen_2x2(6), fac, **kw).result
    monkeypatch.setenv("IMPLREG_COMPILE", "always")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = solve(razin_cohen_2x2(6), fac, **kw).result
    from implreg.matrix.flow.gradient_flow import _fused

    kern = _fused(FactorLayout.of(fac), "completion", True).step
    if kern.failed is not None:
        pytest.skip(f"torch.compile unavailable here: {kern.failed[:200]}")
    for name in ("t", "y", "status", "error", "n_steps", "n_rejected", "save_y", "level_t", "level_y"):
        assert same(getattr(a, name), getattr(b, name)), name


def test_compile_failure_falls_back_to_eager(monkeypatch) -> None:
    monkeypatch.setenv("IMPLREG_COMPILE", "always")

    def eager(y):
        return (y + 1,)

    def broken(y):
        raise RuntimeError("no compiler here")

    kern = K.CompiledKernel(eager, "broken", compiled_fn=broken)
    x = torch.ones(3, dtype=f64)
    with pytest.warns(RuntimeWarning, match="failed, using eager torch"):
        out = kern(x)
    assert torch.equal(out[0], x + 1) and kern.failed is not None
    assert torch.equal(kern(x)[0], x + 1) and kern.calls["eager"] == 2  # no second attempt


def test_compile_mode_parsing(monkeypatch) -> None:
    for v, m in [("0", "never"), ("never", "never"), ("1", "always"), ("ALWAYS", "always"), ("", "auto"),
                 ("auto", "auto")]:
        monkeypatch.setenv("IMPLREG_COMPILE", v)
        assert K.compile_mode() == m
    monkeypatch.setenv("IMPLREG_COMPILE", "sometimes")
    with pytest.raises(ImplregError, match="IMPLREG_COMPILE='sometimes' is not a compile mode"):
        K.compile_mode()
    monkeypatch.setenv("IMPLREG_COMPILE", "never")
    kern = K.CompiledKernel(lambda y: (y,), "x")
    assert not kern._want(10**6, torch.device("cpu"))
    monkeypatch.setenv("IMPLREG_COMPILE", "auto")
    assert not kern._want(10**6, torch.device("cuda")) and not kern._want(4, torch.device("cpu"))
    assert kern._want(10**6, torch.device("cpu"))


def test_compile_threshold_above_pool_size(monkeypatch) -> None:
    """By default a pooled claim's bodies (≤ IMPLREG_POOL_SIZE rows) never trigger a first compile; a bad
    threshold is an error naming the variable."""
    from implreg.harness.pooling import DEFAULT_POOL_SIZE

    monkeypatch.delenv("IMPLREG_COMPILE_MIN_BATCH", raising=False)
    assert K.min_batch() == K.DEFAULT_COMPILE_MIN_BATCH > DEFAULT_POOL_SIZE
    monkeypatch.setenv("IMPLREG_COMPILE", "auto")
    kern = K.CompiledKernel(lambda y: (y,), "x")
    assert not kern._want(DEFAULT_POOL_SIZE, torch.device("cpu")) and kern._want(4096, torch.device("cpu"))
    monkeypatch.setenv("IMPLREG_COMPILE_MIN_BATCH", "64")
    assert K.min_batch() == 64
    for bad in ("0", "many"):
        monkeypatch.setenv("IMPLREG_COMPILE_MIN_BATCH", bad)
        with pytest.raises(ImplregError, match="IMPLREG_COMPILE_MIN_BATCH must be a positive integer"):
            K.min_batch()


def test_batch_inner_layout() -> None:
    x = torch.randn(5, 3, 2, dtype=f64)
    y = K.batch_inner(x)
    assert torch.equal(x, y) and y.stride(0) == 1 and K.batch_inner(y) is y
