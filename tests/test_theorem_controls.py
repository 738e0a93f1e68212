"""Every deterministic negative control in ``theorems/`` names the comparison that must refute it.

A control (``expect="refuted"``) without ``refuted_by=`` passes on *any* failed comparison, so a broken
precondition or a different comparison would pass it for the wrong reason (issue 13 §2).  Statistical controls
are refuted by their test's opposite-direction or equivalence outcome and carry no ``refuted_by``.
"""

from __future__ import annotations

import importlib
import pkgutil

import theorems
from implreg.harness.claims import get_spec


def _theorem_specs() -> list:
    specs = []
    for mod in pkgutil.iter_modules(theorems.__path__):
        if mod.name.startswith("_"):
            continue
        m = importlib.import_module(f"theorems.{mod.name}")
        specs += [s for s in (get_spec(v) for v in vars(m).values()) if s is not None and s.module == m.__name__]
    return specs


def test_the_suite_is_found():
    assert len(_theorem_specs()) >= 50


def test_every_deterministic_control_names_its_refuting_comparison():
    missing = [s.id for s in _theorem_specs() if s.expect == "refuted" and s.sample is None and not s.refuted_by]
    assert not missing, f"controls without refuted_by=: {missing}"
