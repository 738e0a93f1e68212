"""Sessions: ``nox -s verify`` (the claim suite and its HTML report), ``nox -s tests``, ``lint``, ``bench``.

Every session runs in a virtualenv made from the interpreter that runs nox, so it works with any Python ≥ 3.11
(the README's and pyproject's promise) and never skips: an older Python is an error with a message.
CPU machines install torch through ``constraints/cpu.txt`` (the ``+cpu`` build), so a fresh install never pulls a
multi-GB CUDA build; set ``IMPLREG_TORCH=skip`` to keep whatever torch the venv already has (e.g. a CUDA build).
"""

from __future__ import annotations

import os
import sys

import nox
from nox.command import CommandFailed

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["verify"]
# a session whose interpreter cannot be found fails instead of being "skipped" with exit status 0
nox.options.error_on_missing_interpreters = True

MIN_PYTHON = (3, 11)
if sys.version_info < MIN_PYTHON:
    raise SystemExit(f"implreg needs Python ≥ {'.'.join(map(str, MIN_PYTHON))}; nox runs on "
                     f"{sys.version.split()[0]} ({sys.executable}). Run nox with a newer Python, "
                     f"e.g. `python3.12 -m nox`.")

# python=None: the session's virtualenv is made from sys.executable, the interpreter running nox
PYTHON = None
CPU = "constraints/cpu.txt"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"

# The suite and the tests run one pytest-xdist worker per core on batches of tiny matrices: intra-op threads
# only oversubscribe the cores (batched LAPACK calls were measured to stall, 8 ms vs 0.03 ms, when they do).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

_NO_CPU_TORCH = """no CPU build of torch 2.13.0 could be installed for Python {py} on {plat}.
PyPI's torch wheel for this platform is the CUDA build (it pulls cuda-toolkit and nvidia-* packages, several GB),
so constraints/cpu.txt asks for torch==2.13.0+cpu, which comes from the PyTorch CPU index ({index}); that index
could not be reached or has no wheel for this Python.  Do one of:
  - make the index reachable (or mirror it) and run nox again;
  - run nox with a Python that has a local CPU wheel (on the project's machines: `python3.11 -m nox`);
  - install the torch you want (CPU or CUDA) into .nox/{session}/ yourself and run with IMPLREG_TORCH=skip."""

_CHECK_CPU = ("import sys, torch; cuda = torch.version.cuda; "
              "sys.exit(f'torch {torch.__version__} is a CUDA build (CUDA {cuda}), not the CPU build' if cuda else 0)")


def _install(session: nox.Session, extras: str = "") -> None:
    """torch (the CPU build, unless IMPLREG_TORCH=skip), then implreg with ``extras``."""
    if os.environ.get("IMPLREG_TORCH", "") == "skip":
        session.install("-e", f".{extras}")  # no constraint: keep the venv's torch, whatever build it is
        return
    try:
        session.install("-c", CPU, "torch")
    except CommandFailed:
        session.log(f"torch==2.13.0+cpu is not available locally; trying the PyTorch CPU index {TORCH_CPU_INDEX}")
        try:
            session.install("-c", CPU, "--extra-index-url", TORCH_CPU_INDEX, "torch")
        except CommandFailed:
            session.error(_NO_CPU_TORCH.format(py=sys.version.split()[0], plat=sys.platform, index=TORCH_CPU_INDEX,
                                               session=session.name))
    session.run("python", "-c", _CHECK_CPU, silent=True)
    session.install("-c", CPU, "-e", f".{extras}")


@nox.session(python=PYTHON)
def verify(session: nox.Session) -> None:
    """Run every claim under theorems/ and write reports/index.html and reports/results.json.  With
    ``-- … --cluster ADDRESS`` (or ``IMPLREG_CLUSTER`` set) it installs the ``cluster`` extra (Dask) too; a plain
    run stays without it."""
    args = session.posargs or ["theorems", "--report", "reports/index.html"]
    on_cluster = any(a == "--cluster" or a.startswith("--cluster=") for a in args) or bool(
        os.environ.get("IMPLREG_CLUSTER"))
    _install(session, "[cluster]" if on_cluster else "")
    session.run("implreg", "verify", *args, env=ONE_THREAD)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The library's own tests (tests/), in parallel, plus ruff; with the ``cluster`` extra, so that the Dask
    cluster tests (tests/test_cluster.py, a 2-worker LocalCluster) run in CI too."""
    _install(session, "[dev,cluster]")
    session.run("ruff", "check", "implreg", "theorems", "tests", "noxfile.py", "bench")
    session.run("pytest", "-n", os.environ.get("IMPLREG_WORKERS", "2"), "tests", *session.posargs, env=ONE_THREAD)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The performance benchmark (issue 6): prints ratios against baselines run in the same process, and against
    the peers diffrax and torchode (the pinned ``bench`` extra); with the ``cluster`` extra too, so that W4 (the
    1 → 2 worker scaling of ``implreg verify --cluster``, issue 12) runs instead of printing "skipped"."""
    _install(session, "[bench,cluster]")
    session.run("python", "-m", "bench.run", *session.posargs)
