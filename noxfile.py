"""Sessions: ``nox -s verify`` (the claim suite and its HTML report), ``nox -s tests``, ``lint``, ``bench``.

CPU machines install torch through ``constraints/cpu.txt`` so a fresh install never pulls a multi-GB CUDA
build; set ``IMPLREG_TORCH=skip`` to keep whatever torch the venv already has (e.g. a CUDA build).
"""

from __future__ import annotations

import os

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["verify"]

PYTHON = "3.11"


# The suite and the tests run one pytest-xdist worker per core on batches of tiny matrices: intra-op threads
# only oversubscribe the cores (batched LAPACK calls were measured to stall, 8 ms vs 0.03 ms, when they do).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _install(session: nox.Session, extras: str = "") -> None:
    if os.environ.get("IMPLREG_TORCH", "") != "skip":
        session.install("-c", "constraints/cpu.txt", "torch")
    session.install("-c", "constraints/cpu.txt", "-e", f".{extras}")


@nox.session(python=PYTHON)
def verify(session: nox.Session) -> None:
    """Run every claim under theorems/ and write reports/index.html and reports/results.json."""
    _install(session)
    args = session.posargs or ["theorems", "--report", "reports/index.html"]
    session.run("implreg", "verify", *args, env=ONE_THREAD)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The library's own tests (tests/), in parallel, plus ruff."""
    _install(session, "[dev]")
    session.run("ruff", "check", "implreg", "theorems", "tests", "noxfile.py", "bench")
    session.run("pytest", "-n", os.environ.get("IMPLREG_WORKERS", "2"), "tests", *session.posargs, env=ONE_THREAD)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The performance benchmark (issue 6): prints ratios against baselines run in the same process."""
    _install(session)
    session.run("python", "-m", "bench.run", *session.posargs)
