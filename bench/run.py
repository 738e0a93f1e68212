"""Performance benchmark (issue 6): every comparison runs side by side in this process; nothing is cached.

    python -m bench.run [--device cpu|cuda] [--quick] [--threads N] [--skip-w2] [--skip-cluster] [--profile]

W1  Razin–Cohen divergence run: B instances of the 2×2 problem, depth 3, balanced init (end-to-end
    W(0) = 10⁻³·Z, Z i.i.d. N(0, 1), det W(0) > 0, Haar rotations between factors), gradient flow until
    ℓ ≤ 10⁻³ at rtol 1e-9, atol 1e-12, float64.  Baselines: S = scipy ``solve_ivp`` (DOP853, same tolerances
    and terminal event), one instance at a time; G = the authors' protocol, gradient descent (autograd +
    ``torch.optim.SGD``, lr 3e-3, float32) until ℓ ≤ 10⁻³, one instance at a time.  The engine's |W11| at the
    located stopping point must agree with S to 1e-6 relative (asserted before any speed is printed).
    Peers (issue 14, bench/peers.py; the pinned ``bench`` extra): diffrax Dopri5 (vmap + jit, x64, terminal
    event) and torchode Dopri5 (batched; no terminal events, so it runs to the engine's located stopping time)
    on the same instances at B ∈ {1, 16, 64, 4096}, agreement asserted before their table is printed.
W2  The claim suite: ``implreg verify theorems`` wall time, instances checked per second, and per-claim
    breakdown (from its results.json).
W3  The mpmath reference: cost per instance, depth 2 and 3, t = 10 and 50, at the escalation's precisions.
W4  ``implreg verify --cluster`` (issue 12, bench/cluster.py): instances per second on a local Dask cluster with 1 and
    2 workers, and their ratio; only where the ``cluster`` extra is installed (skipped with --quick, --skip-w2 and
    --skip-cluster).

Timings on a shared machine are noisy: the engine's batch-4096 run is repeated and interleaved with the
baseline runs, and medians are reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench import ode
from implreg.matrix.factorization import balanced_init, haar_orthogonal, with_det_sign
from implreg.matrix.problems import Problem, razin_cohen_2x2

F64 = torch.float64


# =====================================================================================================
# machine
# =====================================================================================================
def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
        "compile": os.environ.get("IMPLREG_COMPILE", "auto"),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, n: int = 1024, reps: int = 5) -> float:
    """The machine's float64 figure: GFLOP/s of an n×n matmul (median of ``reps``)."""
    a = torch.randn(n, n, dtype=F64, device=device)
    b = torch.randn(n, n, dtype=F64, device=device)
    a @ b
    ts = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        ts.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(ts) / 1e9


# =====================================================================================================
# W1: the instances, the engine, the baselines
# =====================================================================================================
@dataclass(frozen=True)
class W1:
    """The W1 workload; ``scale``/``depth``/``loss_target`` may be changed for smoke tests."""

    depth: int = 3
    scale: float = 1e-3
    loss_target: float = 1e-3
    rtol: float = 1e-9
    atol: float = 1e-12
    seed: int = 0
    lr: float = 3e-3  # baseline G


def w1_instances(batch: int, w: W1 = W1(), device: torch.device | str = "cpu") -> tuple[Problem, tuple]:
    """``batch`` instances; instance i is the same for every batch ≥ i + 1 (drawn in one stream)."""
    g = torch.Generator().manual_seed(w.seed)
    Z = torch.randn(batch, 2, 2, generator=g, dtype=F64)
    W0 = with_det_sign(w.scale * Z, +1)
    rots = [haar_orthogonal(batch, 2, generator=g) for _ in range(w.depth - 1)]
    factors = tuple(W.to(device) for W in balanced_init(W0, w.depth, rotations=rots))
    return razin_cohen_2x2(batch, device=device), factors


def engine_path(y: torch.Tensor) -> str:
    """Which step the engine runs on a batch like ``y``: the C steps or a torch kernel."""
    from implreg.matrix.flow import native
    from implreg.matrix.flow.kernels import compile_mode

    if native.serves(y):
        return "C step library, lane-parallel (implreg/matrix/flow/csrc/dmf_steps.c)"
    return f"torch step kernel, IMPLREG_COMPILE={compile_mode()}"


def engine(problem: Problem, factors: Sequence[torch.Tensor], w: W1, **kw):
    """``(solution, seconds)`` of the batched engine (``implreg.matrix.flow.solve``)."""
    from implreg.matrix.flow import solve

    dev = factors[0].device
    _sync(dev)
    t0 = time.perf_counter()
    sol = solve(problem, factors, loss_target=w.loss_target, rtol=w.rtol, atol=w.atol, **kw)
    _sync(dev)
    return sol, time.perf_counter() - t0


_MASK = ode.MASK
_TARGET = ode.TARGET


def scipy_one(factors: Sequence[np.ndarray], w: W1, rtol: float | None = None, atol: float | None = None) -> dict:
    """Baseline S for one instance, as a careful researcher writes it: the closed-form gradient in numpy
    (bench/ode.py, the same expression the peers integrate), ``solve_ivp(DOP853)`` with a terminal event ℓ − ε
    (direction −1, crossing located by scipy's root finder)."""
    from scipy.integrate import solve_ivp

    N = len(factors)

    def f(t, y):
        return ode.rhs(y, N, _MASK, _TARGET, np.concatenate)

    def event(t, y):
        return float(ode.loss(ode.unpack(y, N), _MASK, _TARGET)) - w.loss_target

    event.terminal = True
    event.direction = -1
    y0 = np.concatenate([np.asarray(W, dtype=np.float64).ravel() for W in factors])
    t0 = time.perf_counter()
    sol = solve_ivp(f, (0.0, 1e7), y0, method="DOP853", rtol=rtol or w.rtol, atol=atol or w.atol, events=event)
    dt = time.perf_counter() - t0
    if sol.status != 1 or not len(sol.t_events[0]):
        raise RuntimeError(f"scipy baseline did not reach the loss target: {sol.message}")
    W = ode.end_to_end(sol.y_events[0][0], N)
    return {"seconds": dt, "t": float(sol.t_events[0][0]), "W11": float(W[0, 0]), "nfev": int(sol.nfev),
            "steps": len(sol.t) - 1}


def gd_one(factors: Sequence[torch.Tensor], w: W1, max_iters: int = 2_000_000) -> dict:
    """Baseline G for one instance, the authors' protocol written plainly: float32 factors, autograd,
    ``torch.optim.SGD(lr)``, the loss checked every iteration; stops at ℓ ≤ ε or ``max_iters``."""
    Ws = [W.detach().to(dtype=torch.float32, device="cpu").clone().requires_grad_(True) for W in factors]
    mask = torch.tensor(_MASK, dtype=torch.float32)
    target = torch.tensor(_TARGET, dtype=torch.float32)
    opt = torch.optim.SGD(Ws, lr=w.lr)
    t0 = time.perf_counter()
    it, reached, W = 0, False, None
    for it in range(max_iters):  # noqa: B007
        W = Ws[0]
        for Wj in Ws[1:]:
            W = Wj @ W
        loss = 0.5 * ((mask * (W - target)) ** 2).sum()
        if loss.item() <= w.loss_target:
            reached = True
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    dt = time.perf_counter() - t0
    return {"seconds": dt, "iterations": it, "reached": reached, "W11": float(W.detach()[0, 0]),
            "seconds_per_iteration": dt / max(it, 1)}


def rel(a: float, b: float) -> float:
    return abs(abs(a) - abs(b)) / abs(b)


def w1_agreement(n: int = 32, w: W1 = W1(), device: torch.device | str = "cpu", *, sol=None) -> dict:
    """Engine vs baseline S on the first ``n`` instances: |W11| at the located stopping point, relative."""
    problem, factors = w1_instances(max(n, 1), w, device)
    if sol is None:
        sol, _ = engine(problem, factors, w)
    ok = sol.status[:n] == 2
    if not bool(ok.all()):
        raise AssertionError(f"engine did not reach the loss target on every instance: {sol.messages()[:3]}")
    e11 = sol.end_to_end[:n, 0, 0].cpu().tolist()
    s = [scipy_one([W[i].cpu().numpy() for W in factors], w) for i in range(n)]
    diffs = [rel(e, si["W11"]) for e, si in zip(e11, s, strict=True)]
    return {"rel_diff": diffs, "max_rel_diff": max(diffs), "scipy": s, "engine_W11": e11,
            "t_rel_diff": max(abs(float(sol.t[i]) - si["t"]) / si["t"] for i, si in enumerate(s))}


# ---- flop count ----------------------------------------------------------------------------------
def flops_per_attempt(w: W1 = W1()) -> int:
    """Floating-point operations per instance in one step attempt of the fused engine (stages, error norm,
    step-size factor, commit), counted by running the eager kernel on one instance under a dispatch mode."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from implreg.matrix.factorization import FactorLayout
    from implreg.matrix.flow.gradient_flow import _fused
    from implreg.matrix.flow.kernels import root_table

    aten = torch.ops.aten
    arith = {aten.add, aten.sub, aten.mul, aten.div, aten.neg, aten.abs, aten.maximum, aten.minimum,
             aten.clamp, aten.sqrt, aten.exp, aten.log, aten.rsub, aten.sum}

    class Count(TorchDispatchMode):
        flops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket in arith and isinstance(out, torch.Tensor) and out.is_floating_point():
                Count.flops += out.numel()
            return out

    problem, factors = w1_instances(1, w)
    layout = FactorLayout.of(factors)
    fz = _fused(layout, "completion", True)
    y = layout.pack(factors)
    z = dict(dtype=F64)
    t, ea = torch.zeros(1, **z), torch.zeros_like(y)
    h, tm = torch.full((1,), 1e-3, **z), torch.full((1,), math.inf, **z)
    prm = (problem.mask, problem.target)
    k1 = fz.f(t, y, *prm)
    i64 = dict(dtype=torch.int64)
    args = (t, y, k1, h, tm, ea, torch.zeros(1, **i64), torch.zeros(1, **i64), torch.zeros(1, **i64),
            torch.ones(1, dtype=torch.bool), None, torch.tensor(w.rtol, **z), torch.tensor(w.atol, **z),
            torch.tensor(w.loss_target, **z), None, None, torch.tensor(10**6), torch.tensor(1e100, **z),
            torch.tensor(1e-15, **z), root_table(10, F64, "cpu"), *prm)
    with Count():
        fz.step.fn(*args)
    return Count.flops


# =====================================================================================================
# W2, W3
# =====================================================================================================
def run_w2(timeout_s: float, report: str = "/tmp/bench-report.html") -> dict:
    """``implreg verify theorems --report REPORT`` in a subprocess; its wall time and results.json."""
    try:
        import implreg.harness.cli  # noqa: F401
    except Exception as exc:  # the CLI is being written concurrently
        return {"skipped": f"the implreg CLI is not importable ({type(exc).__name__}: {exc})"}
    if not Path("theorems").is_dir():
        return {"skipped": "no theorems/ directory under the working directory"}
    cmd = [sys.executable, "-m", "implreg.harness.cli", "verify", "theorems", "--report", report]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"skipped": f"`{' '.join(cmd[2:])}` did not finish within the benchmark's W2 budget "
                           f"of {timeout_s:.0f} s (run `nox -s verify` for the full figure)"}
    wall = time.perf_counter() - t0
    res_path = Path(report).with_name("results.json")
    out = {"wall_s": wall, "exit": proc.returncode, "command": " ".join(cmd[2:])}
    if res_path.exists() and res_path.stat().st_mtime >= time.time() - wall - 5:
        out["results"] = json.loads(res_path.read_text())
    else:
        out["stderr_tail"] = proc.stderr[-2000:]
    return out


def run_w3(depths: Sequence[int], horizons: Sequence[float], dps_list: Sequence[int], n: int,
           w: W1 = W1()) -> list[dict]:
    """Per-instance wall time of ``reference.solve`` (median over ``n`` W1-style instances)."""
    from implreg.matrix import reference

    rows = []
    for depth in depths:
        problem, factors = w1_instances(n, W1(depth=depth, scale=w.scale, seed=w.seed))
        for t_end in horizons:
            for dps in dps_list:
                ts = []
                for i in range(n):
                    t0 = time.perf_counter()
                    reference.solve(problem.select([i]), [W[i] for W in factors], t_end=t_end, dps=dps,
                                    budget_s=600.0)
                    ts.append(time.perf_counter() - t0)
                rows.append({"depth": depth, "t_end": t_end, "dps": dps, "median_s": statistics.median(ts),
                             "max_s": max(ts), "n": n})
    return rows


# =====================================================================================================
# the report
# =====================================================================================================
def _fmt_s(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


@dataclass
class Plan:
    batch: int = 4096
    scaling: tuple[int, ...] = (1, 64, 1024, 4096)
    n_scipy: int = 32
    n_gd: int = 2
    gd_max_iters: int = 2_000_000
    engine_reps: int = 2
    w3: dict = field(default_factory=lambda: {"depths": (2, 3), "horizons": (10.0, 50.0), "dps": (30, 60), "n": 3})
    w2: bool = True
    w2_timeout: float = 480.0
    peer_batches: tuple[int, ...] = (1, 16, 64, 4096)  # issue 14's table; sizes above ``batch`` are dropped
    cluster: bool = True  # W4, where the cluster extra is installed


QUICK = Plan(batch=64, scaling=(1, 16, 64), n_scipy=2, n_gd=1, gd_max_iters=20_000, engine_reps=1,
             w3={"depths": (2,), "horizons": (10.0,), "dps": (30,), "n": 1}, w2=False, peer_batches=(1, 16),
             cluster=False)


def w2_rate(results: dict, wall_s: float) -> str:
    """"N instances checked, R per second": the suite's instance count (results.json: run.instances_total, else
    the per-claim counts summed) over ``wall_s``, and over the claims' own wall time when results.json has it."""
    n = (results.get("run") or {}).get("instances_total")
    if n is None:
        n = sum(int(r.get("instances") or 0) for r in results.get("claims", []))
    line = f"{n} instances checked, {n / wall_s:.1f} per second of wall time"
    claims_wall = (results.get("run") or {}).get("wall_s")
    if claims_wall:
        line += f" ({n / claims_wall:.1f} per second of the claims' own {claims_wall:.0f} s)"
    return line


def w1_peers(plan: Plan, problem: Problem, factors: Sequence[torch.Tensor], w: W1, scipy_W11: dict[int, float],
             out=print) -> list | None:
    """W1's peer table (bench/peers.py), or one line saying how to install the peers; ``None`` if none ran."""
    from bench import peers as peer_mod

    gone = peer_mod.missing()
    if gone:
        out(peer_mod.not_installed_line(gone))
    batches = [B for B in plan.peer_batches if B <= factors[0].shape[0]]
    try:
        peers = peer_mod.make(w) if batches else []
    except ImportError as exc:  # installed but broken: say so, W1 still stands without the peers
        out(f"  peers could not be imported ({type(exc).__name__}: {exc}): {peer_mod.INSTALL_HINT}")
        return None
    if not peers:
        return None

    def engine_run(B: int):
        def once():
            solB, dt = engine(problem.select(list(range(B))), [W[:B] for W in factors], w)
            if not bool((solB.status == 2).all()):
                raise SystemExit(f"engine failed at B = {B}: {solB.messages()[:3]}")
            return peer_mod.Run(t=solB.t.cpu().numpy(), W11=solB.end_to_end[:, 0, 0].cpu().numpy(), seconds=dt,
                                steps=solB.n_steps.cpu().numpy())

        return peer_mod.timed(once)

    try:
        return peer_mod.run_table(peers, factors, engine_run, batches, out, scipy_W11=scipy_W11)
    except peer_mod.PeerDisagreement as exc:  # a wrong answer is an error, never a timing
        raise SystemExit(f"W1 peers: {exc}") from exc


def w4_cluster(plan: Plan, args: argparse.Namespace, out) -> list[dict] | None:
    """W4: ``implreg verify --cluster`` on a local Dask cluster, 1 then 2 workers (bench/cluster.py)."""
    import importlib.util

    from bench import cluster as bench_cluster

    out(f"\nW4  implreg verify --cluster: local Dask cluster, 1 → 2 workers ({', '.join(bench_cluster.DEFAULT_PATHS)})")
    if not plan.cluster:
        out("  skipped (" + ("--quick" if args.quick else "--skip-w2" if args.skip_w2 else "--skip-cluster") + ")")
        return None
    if importlib.util.find_spec("distributed") is None:
        out("  skipped: the cluster extra is not installed (pip install -e '.[cluster]')")
        return None
    runs = bench_cluster.scaling()  # asserts identical verdicts, instances, counterexamples before any rate
    for r in runs:
        out(f"  {r['workers']} worker{'s' if r['workers'] > 1 else ' '}: {r['instances']} instances in "
            f"{r['wall_s']:.1f} s = {r['rate']:.1f} instances/s; the tasks alone {r['tasks_wall_s']:.1f} s = "
            f"{r['tasks_rate']:.1f} instances/s (exit status {r['exit']}; verdicts, instances and "
            "counterexamples identical)")
        for d in r.get("other_differences", ()):
            out(f"    other record fields that differ from the 1-worker run: {d}")
    out(f"  RATIO  2 workers vs 1: {runs[-1]['rate'] / runs[0]['rate']:.2f}× whole run, "
        f"{runs[-1]['tasks_rate'] / runs[0]['tasks_rate']:.2f}× tasks alone  (ideal 2× on ≥ 2 free cores; "
        f"this machine has {os.cpu_count()})")
    return runs


def main(argv: Sequence[str] | None = None, *, plan: Plan | None = None, w: W1 | None = None) -> int:
    """Run the benchmark; ``plan`` and ``w`` override the sizes and the workload (tests use tiny ones)."""
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="torch device for the engine (cpu, cuda, cuda:1, …)")
    ap.add_argument("--quick", action="store_true", help="reduced run (< 1 min): small batches, W2 skipped")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: on a shared 2-core machine OpenMP spinning "
                         "costs more than it gains for these small kernels)")
    ap.add_argument("--skip-w2", action="store_true", help="skip the claim-suite runs (W2 and W4)")
    ap.add_argument("--skip-cluster", action="store_true", help="skip W4, the 1 → 2 worker Dask cluster scaling")
    ap.add_argument("--w2-timeout", type=float, default=None, help="seconds allowed for W2 (default 480)")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of 200 engine steps")
    args = ap.parse_args(argv)
    plan = plan or (QUICK if args.quick else Plan())
    if args.skip_w2:
        plan = dataclasses.replace(plan, w2=False, cluster=False)  # W4 runs claims too
    if args.skip_cluster:
        plan = dataclasses.replace(plan, cluster=False)
    if args.w2_timeout is not None:
        plan = dataclasses.replace(plan, w2_timeout=args.w2_timeout)
    torch.set_num_threads(max(1, args.threads))
    device = torch.device(args.device)
    w = w or W1()
    out = print
    t_bench = time.perf_counter()

    info = machine_info(device)
    out("implreg benchmark (issue 6)" + ("  [quick]" if args.quick else ""))
    for k, v in info.items():
        out(f"  {k:13s} {v}")
    peak = matmul_gflops(device)
    out(f"  machine       float64 matmul 1024³: {peak:.1f} GFLOP/s ({torch.get_num_threads()} thread(s))")

    # ---------------------------------------------------------------- W1
    out(f"\nW1  Razin–Cohen 2×2, depth {w.depth}, balanced init W(0) = {w.scale:g}·Z (det > 0), gradient flow "
        f"to ℓ ≤ {w.loss_target:g}, rtol {w.rtol:g}, atol {w.atol:g}, float64, device {device}")
    problem, factors = w1_instances(plan.batch, w, device)
    # build the C step library or compile the torch kernel (whichever this batch uses) outside the timed runs:
    # a short solve at the full batch triggers it
    tc = time.perf_counter()
    engine(problem, factors, w, max_steps=3)
    out(f"  warm-up ({engine_path(factors[0])}): {time.perf_counter() - tc:.1f} s")

    # engine reps at the full batch interleaved with the scipy subsample
    idx = list(range(plan.n_scipy))
    chunks = [idx[i :: plan.engine_reps] for i in range(plan.engine_reps)]
    eng_times, sol, scipy_runs = [], None, {}
    for rep in range(plan.engine_reps):
        sol, dt = engine(problem, factors, w)
        eng_times.append(dt)
        for i in chunks[rep]:
            scipy_runs[i] = scipy_one([W[i].cpu().numpy() for W in factors], w)
    s = [scipy_runs[i] for i in idx]

    # agreement first
    if not bool((sol.status == 2).all()):
        bad = [m for m, st in zip(sol.messages(), sol.status.tolist(), strict=True) if st != 2]
        raise SystemExit(f"engine failed on {len(bad)} instances: {bad[:3]}")
    e11 = sol.end_to_end[: plan.n_scipy, 0, 0].cpu().tolist()
    diffs = [rel(e, si["W11"]) for e, si in zip(e11, s, strict=True)]
    t_diffs = [abs(float(sol.t[i]) - si["t"]) / si["t"] for i, si in enumerate(s)]
    out(f"  agreement with S on {len(s)} instances: max rel. |W11| difference {max(diffs):.2e} "
        f"(median {statistics.median(diffs):.2e}), stopping time {max(t_diffs):.2e}; |W11| ≈ {abs(e11[0]):.4f} "
        f"at t ≈ {s[0]['t']:.1f}")
    assert max(diffs) <= 1e-6, f"engine and scipy disagree on |W11| by {max(diffs):.3e} > 1e-6"

    # baseline G
    gds = []
    for i in range(plan.n_gd):
        gds.append(gd_one([W[i] for W in factors], w, max_iters=plan.gd_max_iters))
    gd_note = ""
    gd_times = []
    for i, g in enumerate(gds):
        if g["reached"]:
            gd_times.append(g["seconds"])
            out(f"  G instance {i}: {g['iterations']} iterations, |W11| = {abs(g['W11']):.4f} "
                f"(flow: {abs(e11[i]):.4f}, rel. {rel(g['W11'], e11[i]):.1e}), {_fmt_s(g['seconds'])}")
        else:  # quick mode: extrapolate from the time per iteration to the iterations the flow time needs
            est_iters = s[i]["t"] / w.lr
            gd_times.append(g["seconds_per_iteration"] * est_iters)
            gd_note = f" (extrapolated: {g['iterations']} iterations run, ≈{est_iters:.0f} needed = t*/lr)"

    n_steps = sol.n_steps.to(torch.float64)
    steps_max = int(sol.n_steps.max())
    attempts = int((sol.n_steps + sol.result.n_rejected).sum())
    eng = statistics.median(eng_times)
    per_inst = eng / plan.batch
    S_mean = statistics.mean(si["seconds"] for si in s)
    S_med = statistics.median(si["seconds"] for si in s)
    G_mean = statistics.mean(gd_times)
    out(f"  engine B = {plan.batch}: {', '.join(_fmt_s(x) for x in eng_times)} (median {_fmt_s(eng)}); "
        f"steps per instance mean {float(n_steps.mean()):.0f}, max {steps_max}, rejected mean "
        f"{float(sol.result.n_rejected.double().mean()):.1f}")
    out(f"  per instance: engine {_fmt_s(per_inst)} | S (scipy DOP853, mean of {len(s)}; median "
        f"{_fmt_s(S_med)}; {statistics.mean(si['steps'] for si in s):.0f} steps) {_fmt_s(S_mean)} | "
        f"G (GD lr {w.lr:g} float32, {len(gd_times)} instance(s)) {_fmt_s(G_mean)}{gd_note}")
    rS, rG = S_mean / per_inst, G_mean / per_inst
    out(f"  RATIOS  engine vs S: {rS:.0f}×  (target ≥ 300×)   engine vs G: {rG:.0f}×  (target ≥ 1000×)")

    # scaling with the batch
    out("  time vs batch (same instances, one solve each):")
    for B in plan.scaling:
        if B == plan.batch:
            dt, solB = eng, sol
        else:
            solB, dt = engine(problem.select(list(range(B))), [W[:B] for W in factors], w)
        out(f"    B = {B:5d}: {_fmt_s(dt):>10s} total, {_fmt_s(dt / B):>10s} per instance, "
            f"{dt / int(solB.n_steps.max()) * 1e3:.3f} ms per step (max {int(solB.n_steps.max())} steps)")

    fl = flops_per_attempt(w)
    rate = fl * attempts / eng / 1e9
    out(f"  flops: {fl} per instance-attempt (eager kernel, counted), {attempts} attempts in the B = {plan.batch} "
        f"solve → {rate:.2f} GFLOP/s useful = {100 * rate / peak:.1f}% of the machine's matmul figure")

    w1_peers(plan, problem, factors, w, {i: si["W11"] for i, si in zip(idx, s, strict=True)}, out)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            engine(problem, factors, w, max_steps=200)
        out(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))

    # ---------------------------------------------------------------- W2
    out("\nW2  claim suite: implreg verify theorems")
    results = None
    if not plan.w2:
        out("  skipped (" + ("--quick" if args.quick else "--skip-w2") + ")")
    else:
        r2 = run_w2(plan.w2_timeout)
        if "skipped" in r2:
            out(f"  skipped: {r2['skipped']}")
        else:
            results = r2.get("results")
            rate = f"; {w2_rate(results, r2['wall_s'])}" if results else ""
            out(f"  wall time {r2['wall_s']:.1f} s (target ≤ 600 s), exit status {r2['exit']}{rate}")
            if results:
                rows = sorted(results["claims"], key=lambda r: -(r.get("timing") or {}).get("wall_s", 0.0))
                for r in rows:
                    c = r.get("certification") or {}
                    out(f"    {(r.get('timing') or {}).get('wall_s', 0.0):8.1f} s  {r['verdict']:12s} "
                        f"{r.get('instances') or 0:5d} inst  {c.get('escalation_count', 0):4d} esc  {r['id']}")
            else:
                out("  no results.json was written; stderr tail:\n" + r2.get("stderr_tail", ""))

    # ---------------------------------------------------------------- W3
    out("\nW3  mpmath reference (implreg.matrix.reference.solve), per instance, W1-style instances")
    try:
        for r in run_w3(plan.w3["depths"], plan.w3["horizons"], plan.w3["dps"], plan.w3["n"], w):
            out(f"  depth {r['depth']}, t = {r['t_end']:4.0f}, {r['dps']:3d} digits: median {_fmt_s(r['median_s'])} "
                f"(max {_fmt_s(r['max_s'])}, {r['n']} instance(s))")
    except Exception as exc:
        out(f"  skipped: {type(exc).__name__}: {exc}")
    if results:
        inst = sum(r.get("instances") or 0 for r in results["claims"])
        esc = sum((r.get("certification") or {}).get("escalation_count", 0) for r in results["claims"])
        out(f"  escalated in the suite: {esc} of {inst} instances ({100 * esc / max(inst, 1):.2f}%)")
    else:
        out("  escalated fraction in the suite: needs W2")

    w4_cluster(plan, args, out)

    out(f"\nbenchmark wall time {time.perf_counter() - t_bench:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
