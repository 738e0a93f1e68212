"""The fewer-dispatch forms in implreg.matrix.flow.spectral against their plain forms, bit for bit.

The plain forms below are the module's earlier code (one torch op per term, matrix products by ``@``): the fast
forms must give the same bits per row (so results, verdicts and the batch-independence contract are unchanged).
Signs of zero are not compared (``torch.equal`` treats −0 = 0); NaNs are compared as NaNs.
"""

from __future__ import annotations

import torch

from implreg.matrix.flow import spectral
from implreg.matrix.flow.spectral import (
    _ROS_A,
    _ROS_C,
    _ROS_GAMMA,
    _ROS_M,
    _TIME_SCALE,
    SpectralLayout,
    _e2e_2x2,
    _f_and_jacobian,
    _fd_jacobian,
    _inverse,
    rodas_step,
    rosenbrock,
    spectral_vector_field,
)
from implreg.matrix.problems import razin_cohen_2x2, sensing

F64 = torch.float64


def same(x: torch.Tensor, y: torch.Tensor) -> bool:
    return x.shape == y.shape and torch.equal(x.nan_to_num(12345.0), y.nan_to_num(12345.0))


def plain_inverse(M: torch.Tensor) -> torch.Tensor:
    n, P, _ = M.shape
    A = torch.cat([M, torch.eye(P, dtype=M.dtype).expand(n, P, P)], dim=-1)
    rows = torch.arange(n)
    for k in range(P):
        piv = A[:, k:, k].abs().argmax(-1) + k
        top, best = A[:, k, :].clone(), A[rows, piv, :]
        A[:, k, :] = best
        A[rows, piv, :] = torch.where((piv == k).unsqueeze(-1), best, top)
        A[:, k, :] = A[:, k, :] / A[:, k, k : k + 1]
        factor = A[:, :, k].clone()
        factor[:, k] = 0.0
        A = A - factor.unsqueeze(-1) * A[:, k, :].unsqueeze(-2)
    return A[:, :, P:]


def plain_rodas_step(f, y, fy, J, h, prm=()):
    eye = torch.eye(y.shape[-1], dtype=y.dtype)
    Minv = plain_inverse(eye / (_ROS_GAMMA * h)[:, None, None] - J)
    ih = (1.0 / h).unsqueeze(-1)
    K = []
    for i in range(6):
        yi, rhs = y, None
        for j, a in enumerate(_ROS_A[i]):
            yi = yi + a * K[j]
        for j, c in enumerate(_ROS_C[i]):
            rhs = c * K[j] if rhs is None else rhs + c * K[j]
        fi = fy if i == 0 else f(None, yi, *prm)
        K.append((Minv @ (fi if rhs is None else fi + ih * rhs).unsqueeze(-1)).squeeze(-1))
    y_new = y
    for j, m in enumerate(_ROS_M):
        y_new = y_new + m * K[j]
    return y_new, K[5]


def plain_e2e(layout: SpectralLayout, y: torch.Tensor) -> torch.Tensor:
    U, V, T, lam, _ = layout.unpack(y)
    k = layout.k
    Ut, Vt, ud, vd = U[..., :, :k], V[..., :, :k], U[..., :, k:], V[..., :, k:]
    return Ut @ T @ Vt.transpose(-1, -2) + torch.exp(lam)[..., None, None] * (ud @ vd.transpose(-1, -2))


def plain_field_2x2(problem, N: int, damping: float):
    layout = SpectralLayout(2)
    two_over_n, K_top = 2.0 / N, 2.0 * (N - 1) / N
    names = list(problem.tensors())

    def f(t, y, *pr):
        U, V, T, lam, _ = layout.unpack(y)
        W = plain_e2e(layout, y)
        g = U.transpose(-1, -2) @ type(problem)(problem.name, **dict(zip(names, pr, strict=True))).grad(W) @ V
        tt = T[:, 0, 0]
        p = torch.sign(tt)
        log_tau = torch.log(tt.abs())
        tau = torch.exp(log_tau)
        sig = torch.exp(lam)
        dT = -N * g[:, 0, 0] * torch.exp(K_top * log_tau)
        x, zz = p * g[:, 0, 1], g[:, 1, 0]
        den = -torch.exp(two_over_n * log_tau) * torch.expm1(two_over_n * (lam - log_tau))
        a = p * (sig * x + tau * zz) / den
        c = (tau * x + sig * zz) / den
        dlam = -N * torch.exp((1.0 - two_over_n) * lam) * g[:, 1, 1]

        def rot(X, v):
            XA = torch.stack([-X[:, :, 1] * v.unsqueeze(-1), X[:, :, 0] * v.unsqueeze(-1)], dim=-1)
            if damping:
                XA = XA - (0.5 * damping) * (X @ (X.transpose(-1, -2) @ X - torch.eye(2, dtype=y.dtype)))
            return XA

        return layout.pack(rot(U, a), rot(V, c), dT, dlam, torch.full_like(lam, _TIME_SCALE))

    return f


def spectral_states(n: int, gen: torch.Generator) -> torch.Tensor:
    """Near-orthogonal U, V (perturbed rotations), cores of either sign, λ below log|t|, times ≥ 0."""
    ang = 6.3 * torch.rand(2, n, generator=gen, dtype=F64)
    rot = torch.stack([torch.cos(ang), -torch.sin(ang), torch.sin(ang), torch.cos(ang)], dim=-1)  # (2, n, 4)
    uv = rot + 1e-7 * torch.randn(2, n, 4, generator=gen, dtype=F64)
    t = (0.5 + torch.rand(n, generator=gen, dtype=F64)) * torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    lam = -1.0 - 20.0 * torch.rand(n, generator=gen, dtype=F64)
    tau = 100.0 * torch.rand(n, generator=gen, dtype=F64) * _TIME_SCALE
    return torch.cat([uv[0], uv[1], t[:, None], lam[:, None], tau[:, None]], dim=-1)


def test_e2e_2x2_equals_matrix_products() -> None:
    gen = torch.Generator().manual_seed(0)
    lay = SpectralLayout(2)
    for n in (1, 3, 8, 17, 176):
        y = torch.randn(n, lay.size, generator=gen, dtype=F64) * torch.exp(
            8 * torch.randn(n, lay.size, generator=gen, dtype=F64))
        U, V, T, lam, _ = lay.unpack(y)
        assert same(_e2e_2x2(U, V, T, lam), plain_e2e(lay, y))
        assert same(spectral.to_end_to_end(lay, y), plain_e2e(lay, y))
        y3 = y.reshape(1, n, -1)
        assert same(spectral.to_end_to_end(lay, y3), plain_e2e(lay, y3))


def test_field_2x2_equals_plain_form() -> None:
    """Completion (Razin–Cohen) and sensing problems, depths 2 and 3, with and without damping, several batch
    sizes (the field is also called on the Jacobian's 2P·n perturbed rows)."""
    gen = torch.Generator().manual_seed(1)
    lay = SpectralLayout(2)
    for n in (1, 5, 16, 44):
        y = spectral_states(n, gen)
        problems = [razin_cohen_2x2(n).to(dtype=F64),
                    sensing(torch.randn(n, 3, 2, 2, generator=gen, dtype=F64),
                            torch.randn(n, 3, generator=gen, dtype=F64))]
        for problem in problems:
            pr = [problem.tensors()[k] for k in problem.tensors()]
            for N in (2, 3):
                for damping in (1.0, 0.0):
                    fast = spectral_vector_field(problem, N, lay, damping)
                    assert same(fast(None, y, *pr), plain_field_2x2(problem, N, damping)(None, y, *pr))
                    assert same(fast(None, y, *pr), fast(None, y.clone(), *[q.clone() for q in pr]))


def test_inverse_equals_plain_gauss_jordan() -> None:
    """Diagonally dominant matrices (no row swaps: the fast path skips them), general ones (swaps), and a batch
    mixing both (some rows swap at a column, others do not)."""
    gen = torch.Generator().manual_seed(2)
    P = 11
    dom = torch.eye(P, dtype=F64) * 50.0 + torch.randn(6, P, P, generator=gen, dtype=F64)
    gen_m = torch.randn(6, P, P, generator=gen, dtype=F64)
    for M in (dom, gen_m, torch.cat([dom, gen_m])[torch.randperm(12, generator=gen)]):
        assert same(_inverse(M), plain_inverse(M))
    sing = gen_m.clone()
    sing[:, :, 3] = 0.0  # singular: non-finite, the same non-finite values
    assert same(_inverse(sing), plain_inverse(sing))


def test_rodas_step_equals_term_by_term_sums() -> None:
    gen = torch.Generator().manual_seed(3)
    n, P = 7, 11
    A = torch.randn(n, P, P, generator=gen, dtype=F64)

    def f(t, y):
        return torch.tanh((A @ y.unsqueeze(-1)).squeeze(-1)) - y * y

    y = torch.randn(n, P, generator=gen, dtype=F64)
    J = torch.randn(n, P, P, generator=gen, dtype=F64)
    for h in (torch.full((n,), 1e-3, dtype=F64), torch.exp(torch.randn(n, generator=gen, dtype=F64))):
        a, b = rodas_step(f, y, f(None, y), J, h), plain_rodas_step(f, y, f(None, y), J, h)
        assert same(a[0], b[0]) and same(a[1], b[1])


def test_field_and_jacobian_in_one_call_equal_two_calls() -> None:
    """The accepted state's f and the next Jacobian come from one call of the field on n + 2Pn rows."""
    gen = torch.Generator().manual_seed(4)
    lay = SpectralLayout(2)
    for n in (1, 8, 13):
        y = spectral_states(n, gen)
        problem = razin_cohen_2x2(n).to(dtype=F64)
        pr = tuple(problem.tensors()[k] for k in problem.tensors())
        f = spectral_vector_field(problem, 2, lay)
        fy, J = _f_and_jacobian(f, y, pr)
        assert same(fy, f(None, y, *pr)) and same(J, _fd_jacobian(f, y, pr))


def test_rosenbrock_results_are_ordinary_tensors() -> None:
    """The integration runs under inference_mode; what it returns can be used like any tensor (in place too)."""
    def f(t, y):
        return -torch.stack([y[:, 0], 1e3 * (y[:, 1] - torch.cos(y[:, 0]))], dim=-1)

    def lev(y):
        return y[:, :1] - torch.tensor([0.5], dtype=F64)

    y0 = torch.tensor([[1.0, 0.0], [2.0, 1.0]], dtype=F64)
    r = rosenbrock(f, y0, t_max=3.0, levels=lev, n_levels=1)
    for name in ("t", "y", "status", "error", "level_t", "level_y", "level_error", "entry_error"):
        x = getattr(r, name)
        assert not x.is_inference()
        x.add_(0)
    assert torch.isfinite(r.level_t).all()
    assert torch.allclose(r.level_t[:, 0], torch.log(y0[:, 0] / 0.5), rtol=1e-6)
    assert not any(v.is_inference() for v in spectral._RODAS_ROWS[(F64, "cpu")])
