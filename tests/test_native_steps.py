"""The C step library (implreg.matrix.flow.native): the same bits as the torch step kernel, one step at a time
and over whole solves (events, levels, saves, t_max, max_steps, the det guard, every layout the fused kernels
take), row-wise, and a clean fallback where it cannot be built."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from test_kernels import CO, LAYOUTS, layout_instances, same, step_inputs

from implreg.errors import ImplregError
from implreg.matrix.factorization import FactorLayout, balanced_init, with_det_sign
from implreg.matrix.flow import kernels as K
from implreg.matrix.flow import native, solve
from implreg.matrix.flow.gradient_flow import _fused
from implreg.matrix.problems import razin_cohen_2x2

f64 = torch.float64
pytestmark = pytest.mark.skipif(native.library() is None, reason="no C compiler here: the torch path is tested")

RESULT_FIELDS = ("t", "y", "status", "error", "entry_error", "n_steps", "n_rejected", "save_y", "save_error",
                 "level_t", "level_y", "level_error")


#: Every 2×2 layout the library has a constant-shape copy of (csrc/dmf_steps.c: pick_step) beyond LAYOUTS' depth 3
SQUARE_2X2 = [(((2, 2),) * n, kind, guard) for n, kind, guard in
              ((2, "completion", False), (2, "sensing", True), (4, "completion", True), (4, "sensing", False))]


@pytest.mark.parametrize("shapes,kind,guard", LAYOUTS + SQUARE_2X2)
def test_one_step_equals_the_torch_kernel(shapes, kind, guard) -> None:
    """One step in C returns the eager kernel's results bit for bit (rows frozen by ``active`` are skipped in
    C, so their step size and attempted state are not compared: the integrator never reads them)."""
    kern = K.dmf_step_kernel(CO, shapes, kind, guard, "test")
    nat = native.NativeSteps(CO, shapes, kind, guard)
    args = step_inputs(60, shapes, kind, seed=11)
    want = kern.fn(*args)
    olds, got = nat(*args, max_iter=1)
    active = args[9]
    for i, (x, y) in enumerate(zip(want[:-1], got[:-1], strict=True)):
        if i in (6, 15, 16, 17):  # h, hs, y_new, acc_err: attempted values, read only for active rows
            x, y = x[active], y[active]
        assert same(x, y), f"result {i} differs"
    assert bool(want[-1]) == got[-1]
    # a row that needs the host returns the state its step started from (the input); any other row's step is
    # committed, so both are the state after it (the integrator reads olds of recorded rows only)
    att = got[14]
    assert bool(att.any()) and not bool(att.all())
    for x, y, after in zip(olds, (args[1], args[0], args[2], args[3], args[5]), (got[0], got[1], got[3], got[6],
                                                                                 got[2]), strict=True):
        assert same(x[att], y[att])
        assert same(x[~att], after[~att])
    assert len(set(want[8].tolist())) >= 2


def _solve_both(monkeypatch, problem, factors, **kw):
    monkeypatch.setenv("IMPLREG_COMPILE", "never")
    monkeypatch.setenv("IMPLREG_NATIVE", "never")
    a = solve(problem, factors, **kw)
    monkeypatch.setenv("IMPLREG_NATIVE", "auto")
    kind = "completion" if problem.is_completion else "sensing"
    nat = _fused(FactorLayout.of(factors), kind, kw.get("guard") == "det").native
    before = nat.calls
    b = solve(problem, factors, **kw)
    assert nat.calls > before, "the C steps did not run"
    for name in RESULT_FIELDS:
        assert same(getattr(a.result, name), getattr(b.result, name)), name
    return a, b


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_solve_equals_torch_razin_cohen(monkeypatch, depth: int) -> None:
    """Events, loss levels, saves, t_max and the det guard, at every depth of the Razin–Cohen problem."""
    g = torch.Generator().manual_seed(depth)
    B = 9
    W0 = with_det_sign(0.3 * torch.randn(B, 2, 2, generator=g, dtype=f64), +1)
    fac = balanced_init(W0, depth)
    a, _ = _solve_both(monkeypatch, razin_cohen_2x2(B), fac, loss_target=1e-4, loss_levels=[0.1, 1e-2, 1e-3],
                       save_at=[0.5, 1.0, 3.0], t_max=40.0, guard="det")
    assert len(set(a.status.tolist())) >= 1 and bool(torch.isfinite(a.result.level_t).any())


@pytest.mark.parametrize("shapes,kind,guard", LAYOUTS + SQUARE_2X2)
def test_solve_equals_torch_every_layout(monkeypatch, shapes, kind, guard) -> None:
    """Rectangular and square factorizations, completion and sensing, t_max and max_steps stops."""
    Ws, problem = layout_instances(shapes, kind, 6, scale=0.6, observed=0.7, seeds=(3, 4))
    for kw in (dict(t_max=5.0, save_at=[0.25, 2.0], loss_levels=[1e-1, 1e-3]), dict(t_max=1e3, max_steps=40)):
        _solve_both(monkeypatch, problem, Ws, guard="det" if guard else "none", **kw)


def test_row_alone_equals_row_in_batch(monkeypatch) -> None:
    """An instance solved alone (as Hypothesis shrinking does) gets the bits it gets inside a batch."""
    monkeypatch.setenv("IMPLREG_NATIVE", "always")
    g = torch.Generator().manual_seed(8)
    W0 = with_det_sign(1e-2 * torch.randn(12, 2, 2, generator=g, dtype=f64), +1)
    fac = balanced_init(W0, 3)
    full = solve(razin_cohen_2x2(12), fac, loss_target=1e-3, loss_levels=[1e-2])
    for i in (0, 5, 11):
        one = solve(razin_cohen_2x2(1), [W[i : i + 1] for W in fac], loss_target=1e-3, loss_levels=[1e-2])
        for name in ("t", "y", "error", "n_steps", "level_y"):
            assert same(getattr(full.result, name)[i : i + 1], getattr(one.result, name)), name


def test_mode_parsing(monkeypatch) -> None:
    for raw, mode in [("", "auto"), ("auto", "auto"), ("1", "always"), ("ALWAYS", "always"), ("0", "never"),
                      ("never", "never")]:
        monkeypatch.setenv("IMPLREG_NATIVE", raw)
        assert native.native_mode() == mode
    monkeypatch.setenv("IMPLREG_NATIVE", "sometimes")
    with pytest.raises(ImplregError, match="IMPLREG_NATIVE"):
        native.native_mode()


def test_no_compiler_falls_back_to_torch_with_a_warning(monkeypatch, tmp_path) -> None:
    """Without a C compiler the torch kernels run (same bits) and one warning says why."""
    g = torch.Generator().manual_seed(2)
    fac = balanced_init(with_det_sign(0.2 * torch.randn(3, 2, 2, generator=g, dtype=f64), +1), 2)
    want = solve(razin_cohen_2x2(3), fac, loss_target=1e-3)
    monkeypatch.setattr(native, "_LIB", {})
    monkeypatch.setattr(native, "_compiler", lambda: None)
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        got = solve(razin_cohen_2x2(3), fac, loss_target=1e-3)
    assert native.unavailable_reason() is not None
    for name in ("t", "y", "error", "n_steps"):
        assert same(getattr(want.result, name), getattr(got.result, name))


def test_library_is_built_once_into_the_cache(monkeypatch, tmp_path) -> None:
    """A fresh cache directory gets one library named by the hash of source, compiler and flags; a second
    load reuses it."""
    monkeypatch.setenv("IMPLREG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_LIB", {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.library() is not None
    built = list(tmp_path.glob("dmf_steps-*.so"))
    assert len(built) == 1 and not list(tmp_path.glob("*.tmp*"))
    mtime = built[0].stat().st_mtime_ns
    monkeypatch.setattr(native, "_LIB", {})
    assert native.library() is not None and built[0].stat().st_mtime_ns == mtime


def test_c_serves_every_batch_size_unless_the_compiled_kernel_is_asked_for(monkeypatch) -> None:
    """In mode ``auto`` the C steps run a batch at or above the compile threshold too (they beat the compiled
    kernel on CPU and need no compile); ``IMPLREG_COMPILE=always`` asks for the compiled kernel and gets it, and
    ``IMPLREG_NATIVE=always`` keeps C even then.  (A stand-in for the compiled kernel: the eager one, counted.)"""
    g = torch.Generator().manual_seed(6)
    fac = balanced_init(with_det_sign(0.2 * torch.randn(4, 2, 2, generator=g, dtype=f64), +1), 3)
    fz = _fused(FactorLayout.of(fac), "completion", False)
    used = []
    monkeypatch.setattr(fz.step, "_compiled", lambda *a: used.append(1) or fz.step.fn(*a))
    monkeypatch.setenv("IMPLREG_COMPILE_MIN_BATCH", "2")  # these 4 rows are a "large" batch
    runs = {}
    for compile_, native_, path in [("auto", "auto", "c"), ("always", "auto", "compiled"),
                                    ("always", "always", "c")]:
        monkeypatch.setenv("IMPLREG_COMPILE", compile_)
        monkeypatch.setenv("IMPLREG_NATIVE", native_)
        before, used[:] = fz.native.calls, []
        runs[compile_, native_] = solve(razin_cohen_2x2(4), fac, loss_target=1e-3)
        assert (fz.native.calls > before and not used) if path == "c" else (fz.native.calls == before and used)
    want = runs["auto", "auto"]
    for got in runs.values():
        for name in ("t", "y", "error", "n_steps"):
            assert same(getattr(want.result, name), getattr(got.result, name))


@pytest.mark.parametrize("shapes,kind,guard", LAYOUTS[:3])
def test_one_step_with_non_finite_and_extreme_rows(shapes, kind, guard) -> None:
    """Rows whose state is NaN, ±inf, huge (the error norm overflows) or whose error is below 2⁻⁶⁰ (the step
    factor's clamps): the lane-wise finiteness test and ``inv_root`` give the eager kernel's bits."""
    kern = K.dmf_step_kernel(CO, shapes, kind, guard, "test")
    nat = native.NativeSteps(CO, shapes, kind, guard)
    args = list(step_inputs(13, shapes, kind, seed=5))
    y, k1, h = args[1].clone(), args[2].clone(), args[3].clone()
    y[0, 0], y[1, -1], y[2, 0], y[3] = math.nan, math.inf, -math.inf, 1e300
    k1[4], h[4] = 0.0, 1e-30  # no motion: the error estimate is 0, below the clamp
    k1[5], h[5] = 1e-200, 1e-200
    args[1], args[2], args[3] = y, k1, h
    args[9] = torch.ones(13, dtype=torch.bool)
    want = kern.fn(*args)
    _, got = nat(*args, max_iter=1)
    for i, (x, z) in enumerate(zip(want[:-1], got[:-1], strict=True)):
        assert same(x, z), f"result {i} differs"


def test_a_damaged_cached_library_is_rebuilt(monkeypatch, tmp_path) -> None:
    """A cached file that does not load (a truncated copy) is built again instead of leaving eager torch on.
    (Built anew by rename, so a library another process has loaded is never written in place.)"""
    monkeypatch.setenv("IMPLREG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_LIB", {})
    path = native._library_path(native._compiler())
    path.write_bytes(b"not a shared library")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.library() is not None
    assert path.stat().st_size > 1000


@pytest.mark.parametrize("shapes,kind,guard", [LAYOUTS[0], LAYOUTS[1], SQUARE_2X2[0]])
def test_the_generic_copy_gives_the_same_bits(monkeypatch, tmp_path, shapes, kind, guard) -> None:
    """The library holds one copy of the block step per instruction set (AVX2 and the x86-64 baseline), picked
    at load time, and constant-shape copies for 2×2 factors; this machine runs one of each, so the generic copy
    (as a compiler without ``target_clones`` builds it, with no constant-shape copies) is built alone here and
    compared with eager torch too, on layouts that the usual library serves from a constant-shape copy."""
    monkeypatch.setenv("IMPLREG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_LIB", {})
    monkeypatch.setattr(native, "CFLAGS", (*native.CFLAGS, "-DIMPLREG_NO_CLONES", "-DIMPLREG_GENERIC_ONLY"))
    assert native.library() is not None
    args = step_inputs(23, shapes, kind, seed=2)
    want = K.dmf_step_kernel(CO, shapes, kind, guard, "test").fn(*args)
    _, got = native.NativeSteps(CO, shapes, kind, guard)(*args, max_iter=1)
    active = args[9]
    for i, (x, y) in enumerate(zip(want[:-1], got[:-1], strict=True)):
        if i in (6, 15, 16, 17):
            x, y = x[active], y[active]
        assert same(x, y), f"result {i} differs"
    monkeypatch.setattr(native, "_LIB", {})  # the next test loads the usual library again


def test_the_report_says_which_step_ran() -> None:
    """The run header's environment names the step the simulators used in this process."""
    from implreg.harness.results import build_results, process_environment

    native.library()
    env = process_environment()
    assert env["steps"] == "C step library"
    assert build_results([], {}, [env])["run"]["steps"] == "C step library"


@pytest.mark.parametrize("P", [1, 2, 3, 5, 8, 12])
def test_the_rosenbrock_inverse_in_c_gives_the_torch_bits(P) -> None:
    """spectral._inverse runs the C Gauss–Jordan on float64 CPU batches: the same bits as its torch form on
    random matrices, on integer ones (pivot ties, exact zeros), singular ones (a zero column: ±inf and NaN), and
    ones holding NaN and ±inf (the pivot search takes a NaN as the largest, as torch.argmax does)."""
    from implreg.matrix.flow.spectral import _inverse, _inverse_torch

    gen = torch.Generator().manual_seed(P)
    M = torch.randn(4, 40, P, P, generator=gen, dtype=f64)
    M[1] = (3 * M[1]).round()
    M[2, ::3, :, 0] = 0.0
    M[3, ::5, 0, 0] = math.nan
    M[3, 1::7, -1, -1] = -math.inf
    M[3, 2::9] = 0.0
    M = M.reshape(-1, P, P)
    want = _inverse_torch(M)
    assert same(native.gauss_jordan_inverse(M), want)
    assert same(_inverse(M), want)
    assert bool(torch.isfinite(want).any()) and bool((~torch.isfinite(want)).any())
    assert _inverse(M[:0]).shape == (0, P, P)


def test_a_balanced_solve_is_bit_identical_with_and_without_the_c_inverse(monkeypatch) -> None:
    """The hybrid solver's Rosenbrock phase (depth 2 past its switch: det W near 0) gives the same bits whether
    its inverses run in C or in torch."""
    from implreg.matrix.flow import spectral
    from implreg.matrix.flow.spectral import solve_balanced

    gen = torch.Generator().manual_seed(7)
    W0 = with_det_sign(1e-2 * torch.randn(3, 2, 2, generator=gen, dtype=f64), 1)
    kw = dict(loss_target=1e-3, t_max=1e5, loss_levels=[1e-1, 1e-2], save_at=[1.0, 50.0])
    calls = []
    real = native.gauss_jordan_inverse
    monkeypatch.setattr(native, "gauss_jordan_inverse", lambda M: calls.append(1) or real(M))
    a = solve_balanced(razin_cohen_2x2(3), balanced_init(W0, 2), 2, **kw)
    assert calls, "the C inverse did not run"
    monkeypatch.setattr(spectral, "_inverse", spectral._inverse_torch)
    b = solve_balanced(razin_cohen_2x2(3), balanced_init(W0, 2), 2, **kw)
    for name in ("t", "end_to_end", "status", "error", "level_t", "level_end_to_end", "save_end_to_end"):
        assert same(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("max_iter", [1, 5])
def test_a_call_with_every_row_frozen_returns_them_unchanged(max_iter) -> None:
    """No active row (every row frozen by ``active``): the call still steps once, so every row comes back as the
    eager kernel returns a frozen row, its state unchanged and nothing needing attention."""
    shapes, kind, guard = LAYOUTS[0]
    args = list(step_inputs(9, shapes, kind, seed=5))
    args[9] = torch.zeros_like(args[9])
    want = K.dmf_step_kernel(CO, shapes, kind, guard, "test").fn(*args)
    olds, got = native.NativeSteps(CO, shapes, kind, guard)(*args, max_iter=max_iter)
    for i in (0, 1, 2, 3, 4, 5, 7, 8, 14):  # y, t, err_acc, k1, steps, rej, attempts, status, attention
        assert same(want[i], got[i]), f"result {i} differs"
    assert not bool(got[14].any()) and not got[-1]
    assert same(got[0], args[1]) and same(olds[0], args[1])
