"""Many integration steps per call on CPU: the fused deep-factorization step in C, four rows at a time.

Eager torch costs about 300 dispatched operations per step whatever the batch size (≈ 0.7–0.8 ms per step at
B = 1–64, measured), so a 2×2 depth-3 solve of ~8,500 steps costs seconds per instance, and the compiled torch
kernel needs a compile of 10–60 s first.  ``csrc/dmf_steps.c`` is the same step —
:func:`~implreg.matrix.flow.kernels.col_attempt` with the factorization field and guard,
:func:`~implreg.matrix.flow.kernels.inv_root` and :func:`~implreg.matrix.flow.kernels.rk_post` — written
operation for operation in C on blocks of four rows (one AVX2 register per quantity), and it loops over steps
until some row needs the host (an event, a level or save crossing, a finished row), so Python sees only those.

Bit-identical to the torch kernels: every operation is an exactly rounded IEEE double operation, in the same
order, compiled with ``-ffp-contract=off`` (no fused multiply-add) and without ``-ffast-math``; a vector lane
rounds exactly as the scalar operation.  The tests compare whole solves bit for bit against eager torch
(tests/test_native_steps.py), so which path runs a row never changes its result, and an instance solved alone
(Hypothesis shrinking) or in any batch still agrees.

The library is built with the system C compiler on first use (about 1 s) into a cache directory
(``IMPLREG_CACHE_DIR``, else ``$XDG_CACHE_HOME/implreg`` or ``~/.cache/implreg``) under a name that hashes the
source, the compiler and the flags, so a changed source is rebuilt and a stale library is never loaded.  Without
a compiler (or with ``IMPLREG_NATIVE=never``) the torch kernels run: same results, slower.  Float64 on CPU
only; other dtypes and devices use the torch kernels.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from implreg.errors import ImplregError
from implreg.matrix.flow.kernels import RKCoefficients, _root_poly, compile_mode

__all__ = ["NativeSteps", "gauss_jordan_inverse", "library", "native_mode", "serves", "status"]

SOURCE = Path(__file__).with_name("csrc") / "dmf_steps.c"
# -std=c99 (not gnu99): ISO mode, where GCC does not contract a·b + c into an FMA; -ffp-contract=off says so
# explicitly for compilers whose default differs (clang, GCC on aarch64).  No -ffast-math: no reassociation.
# -O2: -O3 and -O2 -funroll-loops measured no faster (1.7-1.8 ms per W1 instance at B = 256-4096 all three).
CFLAGS = ("-O2", "-std=c99", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared")

_MODES = {"auto": "auto", "": "auto", "1": "always", "true": "always", "always": "always", "0": "never",
          "false": "never", "never": "never"}
_MAX_FACTORS, _MAX_STAGES, _MAX_DIM = 16, 16, 4  # csrc/dmf_steps.c: MAXN, MAXS and its 4×4 scratch
# rows × steps per call: about a second of work, so Python (Ctrl-C included) gets control back regularly
_ROW_STEPS_PER_CALL = 1 << 20


def native_mode() -> str:
    """``IMPLREG_NATIVE``: ``auto`` (default: C steps for every float64 CPU batch, unless ``IMPLREG_COMPILE=always``
    asks for the compiled torch kernel), ``always`` (C steps even then), ``never`` (torch kernels only)."""
    raw = os.environ.get("IMPLREG_NATIVE", "auto")
    mode = _MODES.get(raw.strip().lower())
    if mode is None:
        raise ImplregError(f"IMPLREG_NATIVE={raw!r} is not a mode: use auto, always (or 1) or never (or 0)")
    return mode


def _cache_dir() -> Path:
    env = os.environ.get("IMPLREG_CACHE_DIR", "").strip()
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "implreg"


_LOCK = threading.Lock()
_LIB: dict[str, object] = {}  # "lib": ctypes.CDLL | None once tried, "why": the reason it is None


def _compiler() -> str | None:
    for name in (os.environ.get("CC", "").strip(), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build(cc: str, out: Path) -> None:
    """Compile into a temporary file beside ``out``, then rename: concurrent processes (pytest-xdist workers)
    never load a half-written library."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.stem + ".", suffix=".tmp.so", dir=out.parent)
    os.close(fd)
    try:
        for extra in ((), ("-DIMPLREG_NO_CLONES",)):  # a compiler without target_clones: one generic copy
            proc = subprocess.run([cc, *CFLAGS, *extra, "-o", tmp, str(SOURCE), "-lm"], capture_output=True,
                                  text=True, timeout=120, check=False)
            if proc.returncode == 0:
                break
        if proc.returncode != 0:
            raise OSError(f"{cc} failed: {(proc.stderr or proc.stdout).strip()[:400]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _library_path(cc: str) -> Path:
    """Where the library built by ``cc`` is cached: the name hashes the source, the compiler and the flags."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), cc, version, *CFLAGS]).encode()).hexdigest()
    return _cache_dir() / f"dmf_steps-{key[:16]}.so"


def library() -> ctypes.CDLL | None:
    """The compiled step library (built on first use), or None where it cannot be built (reason in
    :func:`unavailable_reason`); a build failure warns once and the torch kernels run instead."""
    with _LOCK:
        if "lib" in _LIB:
            return _LIB["lib"]  # type: ignore[return-value]
        lib, why = None, None
        cc = _compiler()
        if cc is None:
            why = "no C compiler (cc, gcc or clang) on PATH"
        else:
            try:
                path = _library_path(cc)
                if not path.exists():
                    _build(cc, path)
                try:
                    lib = ctypes.CDLL(str(path))
                except OSError:  # a damaged cached file (truncated copy, full disk): build it again, once
                    _build(cc, path)
                    lib = ctypes.CDLL(str(path))
                fn = lib.implreg_dmf_steps
                fn.restype = ctypes.c_int64
                fn.argtypes = [ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 37
                gj = lib.implreg_gauss_jordan
                gj.restype = ctypes.c_int64
                gj.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
            except (OSError, subprocess.SubprocessError) as exc:
                lib, why = None, f"{type(exc).__name__}: {exc}"
        if lib is None:
            warnings.warn(f"implreg: the C step library is unavailable ({why}); small batches run in eager torch "
                          "(same results, slower)", RuntimeWarning, stacklevel=2)
        _LIB["lib"], _LIB["why"] = lib, why
        return lib


def unavailable_reason() -> str | None:
    """Why :func:`library` returned None (None if it has not been tried or it loaded)."""
    return _LIB.get("why")  # type: ignore[return-value]


def serves(y: Tensor) -> bool:
    """Do the C steps run a batch like ``y`` (of a supported shape)?  Float64 on CPU and a loadable library, at
    any batch size: the lane-parallel C step beats the compiled torch kernel on CPU at every B measured
    (1.6–1.9 ms per instance at B = 256–4096 against 3.8 ms compiled, W1, one thread), and it needs no compile.
    In mode ``auto``, ``IMPLREG_COMPILE=always`` still asks for the compiled torch kernel and gets it; mode
    ``always`` keeps the C steps even then."""
    if y.dtype != torch.float64 or y.device.type != "cpu":
        return False
    mode = native_mode()
    if mode == "never" or (mode == "auto" and compile_mode() == "always"):
        return False
    return library() is not None


def gauss_jordan_inverse(M: Tensor) -> Tensor:
    """The inverse of each of a batch of small matrices (n, P, P), float64 on CPU, by the C library's Gauss–Jordan
    elimination: the same bits as ``implreg.matrix.flow.spectral._inverse`` in torch (which calls this where
    :func:`serves` says so)."""
    lib = library()
    assert lib is not None
    A = M.contiguous()
    out = torch.empty_like(A)
    rc = lib.implreg_gauss_jordan(A.shape[0], A.shape[-1], _ptr(A), _ptr(out))
    if rc < 0:
        raise ImplregError(f"the C step library rejected a batch of {tuple(A.shape)} matrices to invert (code {rc})")
    return out


def status() -> str | None:
    """What this process's simulators got, for the report: None if no float64 CPU solve has asked for the C steps
    yet, else "C step library" or the torch kernels with the reason."""
    if "lib" not in _LIB:
        return None
    why = unavailable_reason()
    return "C step library" if why is None else f"torch kernels (no C step library: {why})"


def _ptr(x: Tensor | None) -> int | None:
    return None if x is None else x.data_ptr()


class NativeSteps:
    """The fused step of ``dmf_step_kernel(co, shapes, kind, with_guard)`` run for many steps per call in C.

    Called with the step kernel's arguments, it returns ``(olds, results)``, row by row: ``results`` is the step
    kernel's tuple for the row's last step (the one where it needs attention, or the last of the call's quiet
    steps), and ``olds = (y, t, k1, h, err_acc)`` the state that step started from (what the integrator records
    to recompute the step's dense output; for a row that needs no attention, whose step is committed, the state
    after it).  Rows advance independently: a row that needs attention waits while the others go on, until a
    32nd of them wait (csrc/dmf_steps.c: PARK_SHARE), so one call may return rows at different step counts.
    """

    def __init__(self, co: RKCoefficients, shapes: Sequence[tuple[int, int]], kind: str, with_guard: bool):
        S = len(co.c)
        self.supported = (co.fsal and 1 <= len(shapes) <= _MAX_FACTORS and S <= _MAX_STAGES
                          and all(a <= _MAX_DIM and b <= _MAX_DIM for a, b in shapes)
                          and (not with_guard or all(a == b for a, b in shapes)))
        self.shapes = tuple(tuple(s) for s in shapes)
        self.kind = kind
        self.with_guard = with_guard
        A = [[co.a[i][j] if j < len(co.a[i]) else 0.0 for j in range(S)] for i in range(S)]
        poly = _root_poly(2 * co.order)
        self._coef = torch.tensor([x for row in A for x in row] + list(co.e) + list(poly), dtype=torch.float64)
        self._n_poly = len(poly)
        self._S = S
        self.calls = 0

    def wanted(self, n: int, y: Tensor) -> bool:
        """Run these ``n`` rows here?  A supported shape, and :func:`serves` ``y`` (any batch size)."""
        return self.supported and serves(y)

    def __call__(self, t, y, k1, h, tm, err_acc, steps, rej, attempts, active, lev_done, rtol, atol, target, lv,
                 saves, max_steps, limit, tiny_step, table, p0, p1, *, max_iter: int | None = None
                 ) -> tuple[tuple, tuple]:
        """``max_iter``: at most this many steps (default: about 2²⁰ row-steps per call)."""
        lib = library()
        assert lib is not None
        n, P = y.shape
        L = 0 if lv is None else int(lv.numel())
        T = 0 if saves is None else int(saves.numel())
        m = int(p1.shape[1]) if self.kind == "sensing" else 0
        ispec = [len(self.shapes), 0 if self.kind == "completion" else 1, m, P, L, T, int(target is not None),
                 int(self.with_guard), self._S, self._n_poly, int(max_steps)]
        for a, b in self.shapes:
            ispec += [a, b]
        ispec_t = torch.tensor(ispec, dtype=torch.int64)
        dspec = torch.tensor([float(rtol), float(atol), float(target) if target is not None else 0.0,
                              float(limit), float(tiny_step)], dtype=torch.float64)
        c = lambda x: x.contiguous()  # noqa: E731  (a compiled layout elsewhere is batch-innermost)
        # the state, evolved in place over the quiet steps (copies: the caller's tensors are not written)
        st = [c(x).clone() for x in (t, y, k1, h, err_acc, steps, rej, attempts)]
        ld = c(lev_done).clone() if L else None
        tm_c, act = c(tm), c(active)
        out_d = [torch.empty_like(x) for x in st]
        ld_o = torch.empty_like(ld) if L else None
        status = torch.empty(n, dtype=torch.int64)
        fired = torch.empty(n, dtype=torch.bool) if target is not None else None
        lev_new = torch.empty(n, L, dtype=torch.bool) if L else None
        save_in = torch.empty(n, T, dtype=torch.bool) if T else None
        record = torch.empty(n, dtype=torch.bool)
        attention = torch.empty(n, dtype=torch.bool)
        hs, y_new, acc_err = torch.empty(n, dtype=torch.float64), torch.empty_like(st[1]), torch.empty_like(st[1])
        p0c, p1c = c(p0), c(p1)
        lv_c = c(lv) if L else None
        sv_c = c(saves) if T else None
        tab = c(table)
        if max_iter is None:
            max_iter = max(1, _ROW_STEPS_PER_CALL // max(n, 1))
        self.calls += 1
        rc = lib.implreg_dmf_steps(
            n, max_iter, _ptr(ispec_t), _ptr(dspec), _ptr(self._coef), _ptr(p0c), _ptr(p1c), _ptr(lv_c),
            _ptr(sv_c), _ptr(tab), _ptr(act),
            *(_ptr(x) for x in st[:4]), _ptr(tm_c), _ptr(st[4]), *(_ptr(x) for x in st[5:]), _ptr(ld),
            *(_ptr(x) for x in out_d), _ptr(ld_o),
            _ptr(status), _ptr(fired), _ptr(lev_new), _ptr(save_in), _ptr(record), _ptr(attention),
            _ptr(hs), _ptr(y_new), _ptr(acc_err))
        if rc < 0:
            raise ImplregError(f"the C step library rejected its inputs (code {rc}): shapes {self.shapes}")
        t_o, y_o, k1_o, h_o, ea_o, steps_o, rej_o, att_o = out_d
        olds = (st[1], st[0], st[2], st[3], st[4])
        has_rec = target is not None or L or T
        results = (y_o, t_o, ea_o, k1_o, steps_o, rej_o, h_o, att_o, status, fired, lev_new,
                   ld_o if L else None, save_in, record if has_rec else None, attention, hs, y_new, acc_err,
                   bool(rc))
        return olds, results
