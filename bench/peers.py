"""W1's peers (issue 14): diffrax and torchode on the engine's instances, the same ODE and tolerances, one thread.

    pip install -c constraints/cpu.txt -e '.[bench]'      (or `nox -s bench`; pins in pyproject.toml)

diffrax: ``Dopri5`` under ``jax.jit(jax.vmap(diffeqsolve))``, float64, ``PIDController(rtol, atol)``, a terminal
``Event`` on ℓ − ε (downward crossing) whose time is located by ``optimistix.Newton``.  torchode: ``Dopri5`` on the
whole batch, float64, ``IntegralController(atol, rtol)`` (= diffrax's PID controller at its defaults, pcoeff 0,
icoeff 1), eager; it has no terminal events, so each instance runs to the stopping time the engine located.
Both integrate bench/ode.py's vector field, the expression the scipy baseline integrates.

Agreement on |W₁₁| at the stop is checked for every solve before any time is printed; a peer that disagrees
raises :class:`PeerDisagreement` instead of being timed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from bench import ode

# XLA's CPU backend otherwise runs Eigen's thread pool on every core; the engine and torchode run on one thread
# (bench/run.py sets torch's), so the peers are compared thread for thread.  Read when jax's backend starts, so it
# must be in the environment before jax is imported (issue 14 gives this exact value).
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

INSTALL_HINT = "pip install -c constraints/cpu.txt -e '.[bench]'  (or `nox -s bench`)"

# Which distributions each peer needs (import names).
REQUIRES = {"diffrax": ("jax", "jaxlib", "equinox", "optimistix", "diffrax"), "torchode": ("torchode",)}

# Agreement tolerance on |W₁₁| at the stop, relative (and on the located stopping time, for peers that locate
# it).  It is the tolerance to which bench/run.py already holds the engine to scipy's DOP853, for the same
# reason: every solver here controls its local error per step to rtol 1e-9 / atol 1e-12, and over the ~10⁴
# steps of a W1 run even a naive sum of local errors stays ≤ 10⁴ · 1e-9 = 1e-5 and in practice the solvers agree
# to ~1e-11 (issue 14), whereas integrating a different ODE, stopping at the wrong place (event sign or
# direction), a truncated or failed solve, or float32 arithmetic move |W₁₁| by far more.  This is an estimate,
# not a bound on either solver's global error: it gates the timings (a wrong answer is not timed), it is no
# verdict about the flow.
AGREE_RTOL = 1e-6

# diffrax: the integration window and step budget.  T_MAX is scipy's (bench/run.py: solve_ivp over (0, 1e7));
# MAX_STEPS is far above what W1 needs at rtol 1e-9 (≈ 10⁴ steps) and only bounds a runaway solve.
T_MAX = 1e7
MAX_STEPS = 1_000_000
# Newton on the event time: the located t is a root of ℓ(interpolant(t)) − ε to 1e-14 relative, far below
# AGREE_RTOL; Newton converges quadratically, so the tighter tolerance costs an iteration at most.
ROOT_RTOL, ROOT_ATOL = 1e-14, 1e-14


class PeerDisagreement(AssertionError):
    """A peer's answer differs from the engine's (or scipy's) by more than the agreement tolerance."""


@dataclass(frozen=True)
class Run:
    """One batched solve: per-instance stopping time ``t`` (B,), W₁₁ there (B,), whether each instance finished
    normally ``ok`` (B,), steps per instance (B,) if known, and the wall seconds of the whole batch."""

    t: np.ndarray
    W11: np.ndarray
    seconds: float
    ok: np.ndarray | None = None
    steps: np.ndarray | None = None


class Peer(Protocol):
    name: str
    label: str
    given_stop: bool  # True: no terminal events, runs each instance to the engine's located time

    def warmup(self, y0: np.ndarray, t_stop: np.ndarray) -> float:
        """Compile or otherwise prepare for batch shape ``y0.shape``; returns the seconds it took."""
        ...

    def solve(self, y0: np.ndarray, t_stop: np.ndarray) -> Run: ...


# =====================================================================================================
# availability
# =====================================================================================================
def missing() -> dict[str, list[str]]:
    """{peer: [modules not importable]} for each peer that cannot run here (find_spec: nothing is imported)."""
    out = {}
    for peer, mods in REQUIRES.items():
        gone = [m for m in mods if importlib.util.find_spec(m) is None]
        if gone:
            out[peer] = gone
    return out


def not_installed_line(gone: dict[str, list[str]]) -> str:
    """The one line W1 prints when peers are missing."""
    mods = sorted({m for ms in gone.values() for m in ms})
    return (f"  peers {', '.join(gone)} not installed (no module {', '.join(mods)}): {INSTALL_HINT}; "
            f"W1 goes on without them")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def one_thread_xla() -> str | None:
    """Put :data:`XLA_ONE_THREAD` into XLA_FLAGS (before jax starts); a warning if jax is already imported."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {XLA_ONE_THREAD}".strip()
    if "jax" in sys.modules:
        return "jax was imported before XLA_FLAGS was set: XLA may not be single-threaded"
    return None


def make(w, only: Sequence[str] | None = None) -> list[Peer]:
    """The installed peers for workload ``w`` (a bench.run.W1), diffrax first."""
    gone = missing()
    want = [p for p in REQUIRES if p not in gone and (only is None or p in only)]
    return [{"diffrax": DiffraxPeer, "torchode": TorchodePeer}[p](w) for p in want]


# =====================================================================================================
# the peers
# =====================================================================================================
class DiffraxPeer:
    """diffrax ``Dopri5``, ``jax.jit(jax.vmap(...))`` over the batch, x64, terminal event with Newton root find."""

    name = "diffrax"
    given_stop = False

    def __init__(self, w) -> None:
        self.note = one_thread_xla()
        import diffrax
        import jax
        import jax.numpy as jnp
        import optimistix as optx

        jax.config.update("jax_enable_x64", True)
        self._jax, self._jnp = jax, jnp
        self.depth = w.depth
        self.label = (f"diffrax {_version('diffrax')} Dopri5 (jax {_version('jax')}, vmap + jit, x64), "
                      f"PIDController, Event ℓ − ε ↓ located by optimistix.Newton")
        depth, eps = w.depth, w.loss_target
        mask, target = jnp.asarray(ode.MASK, dtype=jnp.float64), jnp.asarray(ode.TARGET, dtype=jnp.float64)

        def vf(t, y, args):
            return ode.rhs(y, depth, mask, target, jnp.concatenate)

        def cond(t, y, args, **kwargs):
            return ode.loss(ode.unpack(y, depth), mask, target) - eps

        term = diffrax.ODETerm(vf)
        solver = diffrax.Dopri5()
        controller = diffrax.PIDController(rtol=w.rtol, atol=w.atol)
        event = diffrax.Event(cond, root_finder=optx.Newton(rtol=ROOT_RTOL, atol=ROOT_ATOL), direction=False)

        def one(y0):
            sol = diffrax.diffeqsolve(term, solver, 0.0, T_MAX, None, y0, saveat=diffrax.SaveAt(t1=True),
                                      stepsize_controller=controller, event=event, max_steps=MAX_STEPS,
                                      throw=False)
            # is_event: the solve ended on the event (not at T_MAX, not at max_steps, not on a failure)
            return sol.ts[-1], sol.ys[-1], diffrax.is_event(sol.result), sol.stats["num_accepted_steps"]

        self._fn = jax.jit(jax.vmap(one))
        self._compiled: dict[int, Callable] = {}

    def warmup(self, y0: np.ndarray, t_stop: np.ndarray) -> float:
        t0 = time.perf_counter()
        self._compiled[y0.shape[0]] = self._fn.lower(self._jnp.asarray(y0, dtype=self._jnp.float64)).compile()
        return time.perf_counter() - t0

    def solve(self, y0: np.ndarray, t_stop: np.ndarray) -> Run:
        fn = self._compiled[y0.shape[0]]
        x = self._jax.block_until_ready(self._jnp.asarray(y0, dtype=self._jnp.float64))
        t0 = time.perf_counter()
        out = self._jax.block_until_ready(fn(x))
        dt = time.perf_counter() - t0
        t, y, ok, steps = (np.asarray(a) for a in out)
        return Run(t=t, W11=ode.end_to_end(y, self.depth)[..., 0, 0], seconds=dt, ok=ok, steps=steps)


class TorchodePeer:
    """torchode ``Dopri5`` on the whole batch (B, 4N), float64, eager, each instance to its given stopping time."""

    name = "torchode"
    given_stop = True

    def __init__(self, w) -> None:
        import torchode as to

        self._to = to
        self.depth = w.depth
        self.label = (f"torchode {_version('torchode')} Dopri5 (batched, eager, float64), IntegralController; "
                      f"NO terminal events: each instance runs to the engine's located stopping time")
        depth = w.depth
        mask = torch.tensor(ode.MASK, dtype=torch.float64)
        target = torch.tensor(ode.TARGET, dtype=torch.float64)

        def f(t, y):
            return ode.rhs(y, depth, mask, target, torch.cat)

        term = to.ODETerm(f)
        controller = to.IntegralController(atol=w.atol, rtol=w.rtol, term=term)
        self._solver = to.AutoDiffAdjoint(to.Dopri5(term=term), controller, max_steps=MAX_STEPS)

    def _solve(self, y0: np.ndarray, t_end: np.ndarray) -> Run:
        y = torch.as_tensor(y0, dtype=torch.float64)
        te = torch.as_tensor(t_end, dtype=torch.float64)
        problem = self._to.InitialValueProblem(y0=y, t_start=torch.zeros_like(te), t_end=te)
        t0 = time.perf_counter()
        with torch.no_grad():
            sol = self._solver.solve(problem)
        dt = time.perf_counter() - t0
        y_end = sol.ys[:, -1].numpy()
        return Run(t=sol.ts[:, -1].numpy(), W11=ode.end_to_end(y_end, self.depth)[..., 0, 0], seconds=dt,
                   ok=(sol.status == 0).numpy(), steps=sol.stats["n_accepted"].numpy())

    def warmup(self, y0: np.ndarray, t_stop: np.ndarray) -> float:
        # eager: nothing to compile; a short solve (1e-3 of the way) pays torch's first-call costs at this shape
        t0 = time.perf_counter()
        self._solve(y0, 1e-3 * np.asarray(t_stop, dtype=np.float64))
        return time.perf_counter() - t0

    def solve(self, y0: np.ndarray, t_stop: np.ndarray) -> Run:
        return self._solve(y0, np.asarray(t_stop, dtype=np.float64))


# =====================================================================================================
# agreement, timing, the table
# =====================================================================================================
def rel_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """| |a| − |b| | / |b|, elementwise (|W₁₁|: the sign of W₁₁ is not what W1 measures)."""
    a, b = np.abs(np.asarray(a, dtype=np.float64)), np.abs(np.asarray(b, dtype=np.float64))
    return np.abs(a - b) / b


def check_agreement(name: str, run: Run, ref: Run, ref_name: str = "the engine", *, check_time: bool = True,
                    tol: float = AGREE_RTOL, instances: Sequence[int] | None = None) -> dict[str, float]:
    """Raise :class:`PeerDisagreement` unless every instance of ``run`` finished and matches ``ref`` on |W₁₁|
    (and on the stopping time, if ``check_time``) to ``tol`` relative; else the largest differences.
    ``instances`` names the instances (default 0, 1, …) in the messages."""
    n = len(ref.W11)
    ids = list(range(n)) if instances is None else list(instances)
    if len(run.W11) != n:
        raise PeerDisagreement(f"{name}: {len(run.W11)} results for {n} instances")
    if run.ok is not None and not bool(np.all(run.ok)):
        bad = np.flatnonzero(~np.asarray(run.ok, dtype=bool))
        raise PeerDisagreement(f"{name} did not finish normally on {len(bad)} of {n} instances "
                               f"(first: {[ids[i] for i in bad[:5]]})")
    out = {"W11": float(np.max(rel_diff(run.W11, ref.W11)))}
    if check_time:
        out["t"] = float(np.max(rel_diff(run.t, ref.t)))
    for what, worst in out.items():
        if not math.isfinite(worst) or worst > tol:  # a NaN is a disagreement, not a pass
            d = rel_diff(run.W11 if what == "W11" else run.t, ref.W11 if what == "W11" else ref.t)
            i = int(np.nanargmax(np.where(np.isfinite(d), d, np.inf)))
            mine, theirs = (run.W11, ref.W11) if what == "W11" else (run.t, ref.t)
            raise PeerDisagreement(
                f"{name} disagrees with {ref_name} on {'|W11|' if what == 'W11' else 'the stopping time'} at "
                f"instance {ids[i]}: {float(mine[i])!r} vs {float(theirs[i])!r}, relative difference {worst:.3e} > "
                f"{tol:g}; not timed")
    return out


def timed(solve: Callable[[], Run], min_total_s: float = 0.5, max_reps: int = 3) -> Run:
    """``solve()`` once, and again up to ``max_reps`` times while the runs took < ``min_total_s`` together; the
    last run with the median seconds (short runs on a shared machine are noisy)."""
    runs = [solve()]
    while len(runs) < max_reps and sum(r.seconds for r in runs) < min_total_s:
        runs.append(solve())
    s = statistics.median(r.seconds for r in runs)
    last = runs[-1]
    return Run(t=last.t, W11=last.W11, seconds=s, ok=last.ok, steps=last.steps)


def fmt_s(s: float | None) -> str:
    """Three significant digits, in s or ms or µs; '—' for not run."""
    if s is None:
        return "—"
    for unit, k in (("s", 1.0), ("ms", 1e3), ("µs", 1e6)):
        if s * k >= 1 or unit == "µs":
            return f"{s * k:.3g} {unit}"
    raise AssertionError("unreachable")


@dataclass
class Row:
    """One batch size: per-instance seconds of the engine and of each peer (None: not run)."""

    B: int
    engine: float
    peers: dict[str, float | None]


def format_table(rows: Sequence[Row], names: Sequence[str]) -> list[str]:
    """Markdown table: B, per-instance time of the engine and each peer, and engine ÷ peer (> 1: engine slower)."""
    head = ["B", "engine", *names, *(f"engine ÷ {n}" for n in names)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r.B), fmt_s(r.engine)]
        cells += [fmt_s(r.peers.get(n)) for n in names]
        cells += [f"{r.engine / p:.3g}" if p else "—" for p in (r.peers.get(n) for n in names)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def packed(factors: Sequence[torch.Tensor], B: int) -> np.ndarray:
    """The first B instances' factors as the packed state (B, 4N), float64 numpy."""
    return ode.pack([W[:B].detach().to("cpu", torch.float64).numpy() for W in factors], np.concatenate)


def run_table(peers: Sequence[Peer], factors: Sequence[torch.Tensor], engine_solve: Callable[[int], Run],
              batches: Sequence[int], out: Callable[[str], None], scipy_W11: dict[int, float] | None = None,
              tol: float = AGREE_RTOL) -> list[Row]:
    """Time the engine and every peer at each B on the first B instances, check agreement, then print.

    ``engine_solve(B)`` solves the first B instances with the engine and returns its :class:`Run` (seconds for
    the batch).  Nothing is printed until every solve has passed :func:`check_agreement`.
    """
    names = [p.name for p in peers]
    worst: dict[str, dict[str, float]] = {n: {} for n in names}
    warm: dict[str, list[str]] = {n: [] for n in names}
    rows = []
    for B in batches:
        y0 = packed(factors, B)
        eng = engine_solve(B)
        per: dict[str, float | None] = {}
        for p in peers:
            warm[p.name].append(f"B = {B}: {fmt_s(p.warmup(y0, eng.t))}")
            run = timed(lambda p=p, y0=y0, ts=eng.t: p.solve(y0, ts))
            for k, v in check_agreement(p.name, run, eng, check_time=not p.given_stop, tol=tol).items():
                worst[p.name][k] = max(worst[p.name].get(k, 0.0), v)
            if scipy_W11:
                idx = [i for i in sorted(scipy_W11) if i < B]
                if idx:
                    ref = Run(t=eng.t[idx], W11=np.array([scipy_W11[i] for i in idx]), seconds=0.0)
                    sub = Run(t=run.t[idx], W11=run.W11[idx], seconds=0.0)
                    d = check_agreement(p.name, sub, ref, "scipy DOP853 (S)", check_time=False, tol=tol,
                                        instances=idx)
                    worst[p.name]["S"] = max(worst[p.name].get("S", 0.0), d["W11"])
            per[p.name] = run.seconds / B
        rows.append(Row(B=B, engine=eng.seconds / B, peers=per))

    # everything agreed: now the figures
    out(f"  peers (issue 14), same instances, same ODE (bench/ode.py), rtol/atol as above, one thread each "
        f"(XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, torch threads {torch.get_num_threads()}):")
    for p in peers:
        w = worst[p.name]
        vs_s = f", vs S {w['S']:.1e}" if "S" in w else ""
        t_part = f", stopping time {w['t']:.1e}" if "t" in w else " (stopping time given, not checked)"
        out(f"    {p.label}")
        out(f"      agreement (asserted ≤ {tol:g} relative, every instance): |W11| vs engine {w['W11']:.1e}"
            f"{vs_s}{t_part}")
        if getattr(p, "note", None):
            out(f"      note: {p.note}")
    for p in peers:
        out(f"    warm-up, excluded from the timings ({p.name}): {', '.join(warm[p.name])}")
    out("    per-instance wall time (batch time ÷ B); engine ÷ peer > 1 means the engine is slower:")
    for line in format_table(rows, names):
        out("    " + line)
    return rows
