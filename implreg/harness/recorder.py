"""The per-claim run recorder: what certify, evidence and stats write while a claim runs.

One ``Recorder`` lives for one claim run and is reachable through a context variable while the claim's
Hypothesis test executes.  Outside a claim run ``current()`` is None and certify/evidence calls still
check (and raise) but record nothing.  Everything here is plain data in insertion order, so the same
seed gives the same record.
"""

from __future__ import annotations

import contextvars
import math
import time
from dataclasses import dataclass, field
from typing import Any

# The context variable lives in the bottom layer (implreg.numerics.recording) so that certified comparisons
# record without importing the harness; a Recorder registers itself there while its claim runs.
from implreg.numerics.recording import _CURRENT

#: Caps that keep a record (and the report) small however many examples a claim runs.
MAX_UNDECIDED = 20
MAX_ESCALATIONS = 50
MAX_SERIES_LINES = 40
MAX_SERIES_POINTS = 400
MAX_TABLE_ROWS = 200
MAX_NOTES = 20


def current() -> Recorder | None:
    """The recorder of the claim that is running in this context, or None."""
    return _CURRENT.get()


@dataclass
class Recorder:
    """Accumulates one claim run: counters, certification, escalations, evidence and observations."""

    claim_id: str
    t0: float = field(default_factory=time.monotonic)
    budget_s: float | None = None

    # example counters (our own, so they exist even when Hypothesis aborts early)
    calls: int = 0              # times the claim body was entered (the strategy produced a value)
    valid: int = 0              # bodies that completed
    rejected: int = 0           # bodies that called assume()/reject()
    undecided_examples: int = 0  # bodies discarded because a comparison stayed undecided
    failures: int = 0           # bodies that raised (assertion or crash), shrinking included
    instances: int = 0          # problem instances in valid examples (batches count their size)
    failure_seen: bool = False
    last_failure: BaseException | None = None
    last_failure_kwargs: str | None = None
    budget_exhausted: bool = False
    t_first_failure: float | None = None
    shrink_cut: int = 0         # shrink candidates skipped because the budget ran out while shrinking

    # certification
    comparisons: int = 0        # certify calls in valid examples
    certified: int = 0          # instance-comparisons certified (true) in valid examples
    max_ratio: float = 0.0      # largest error/margin among certified comparisons
    max_ratio_what: str | None = None
    # what each certified comparison rested on: "rigorous" (proven bounds) or "estimate" (an integrator's
    # error estimate somewhere in it); per ``what``, an estimate anywhere makes it "estimate".
    basis: dict[str, str] = field(default_factory=dict)
    undecided: list[dict[str, Any]] = field(default_factory=list)
    undecided_count: int = 0
    escalations: list[dict[str, Any]] = field(default_factory=list)
    escalation_count: int = 0
    escalations_resolved: int = 0

    # evidence
    series: dict[str, dict[str, Any]] = field(default_factory=dict)
    scalars: dict[str, dict[str, Any]] = field(default_factory=dict)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    # statistical claims
    observations: list[Any] = field(default_factory=list)

    # per-example scratch (reset by begin_example)
    _ex_targets: dict[str, float] = field(default_factory=dict)
    _ex_instances: int | None = None
    _ex_comparisons: int = 0
    _ex_certified: int = 0
    _ex_ratio: tuple[float, str | None] = (0.0, None)
    _ex_built: dict[int, Any] = field(default_factory=dict)   # comparisons made and not yet certified
    # solves whose unfinished final states were read before their `ok` was (id → (solution, what was read))
    _ex_unchecked: dict[int, tuple[Any, str]] = field(default_factory=dict)
    _pending_batch: tuple[Any, int] | None = None
    _pending_repeat: bool = False
    batch_repeats: bool = False  # the example being run has a batch that repeats an instance
    repeated_batches: int = 0    # examples rejected while generating because a batch repeated an instance

    # -- lifecycle --------------------------------------------------------------------------------
    def activate(self) -> contextvars.Token:
        return _CURRENT.set(self)

    @staticmethod
    def deactivate(token: contextvars.Token) -> None:
        _CURRENT.reset(token)

    def over_budget(self) -> bool:
        return self.budget_s is not None and time.monotonic() - self.t0 > self.budget_s

    def over_shrink_budget(self) -> bool:
        """Shrinking gets the claim's budget again, counted from the first failure (so a refuted claim takes
        at most about twice its budget, however slow its body)."""
        return (self.budget_s is not None and self.t_first_failure is not None
                and time.monotonic() - self.t_first_failure > self.budget_s)

    @property
    def recording_evidence(self) -> bool:
        """Evidence is kept from passing examples before the first failure (not from shrinking)."""
        return not self.failure_seen

    def begin_example(self, batch_size: int | None) -> None:
        self.calls += 1
        self._ex_targets = {}
        self._ex_instances = batch_size
        self._ex_comparisons = 0
        self._ex_certified = 0
        self._ex_ratio = (0.0, None)
        self._ex_built = {}
        self._ex_unchecked = {}

    def note_built(self, cmp: Any) -> None:
        self._ex_built[id(cmp)] = cmp

    def note_decided(self, cmp: Any) -> None:
        self._ex_built.pop(id(cmp), None)

    def note_unchecked(self, solution: Any, text: str) -> None:
        self._ex_unchecked.setdefault(id(solution), (solution, text))

    def note_checked(self, solution: Any) -> None:
        self._ex_unchecked.pop(id(solution), None)

    def unchecked(self) -> list[str]:
        """What the example read from solves that did not finish, never asking which instances did."""
        return [text for _, text in self._ex_unchecked.values()]

    def uncertified(self) -> list[str]:
        """The comparisons the example made and never handed to certify (each checks nothing on its own)."""
        return [c.text() for c in self._ex_built.values()]

    def end_example_valid(self) -> None:
        """The body completed: commit the example's certification counters and steer Hypothesis."""
        self.valid += 1
        self.instances += self._ex_instances or 1
        self.comparisons += self._ex_comparisons
        self.certified += self._ex_certified
        ratio, what = self._ex_ratio
        if what is not None and (self.max_ratio_what is None or ratio > self.max_ratio):
            self.max_ratio, self.max_ratio_what = ratio, what
        if self._ex_targets:
            from hypothesis import currently_in_test_context, target

            if currently_in_test_context():
                for label in sorted(self._ex_targets):
                    target(self._ex_targets[label], label=label)

    # -- certify hooks ----------------------------------------------------------------------------
    def note_certified(self, what: str, count: int, ratio: float | None, score: float | None,
                       basis: str | None = None) -> None:
        """``ratio``: the largest error/margin of the call (None for exact conditions); ``basis``: "rigorous" or
        "estimate" (None: not a numeric comparison, or a caller that does not say)."""
        if basis is not None and self.basis.get(what) != "estimate":
            self.basis[what] = basis
        self._ex_comparisons += 1
        self._ex_certified += count
        if ratio is not None and (self._ex_ratio[1] is None or ratio > self._ex_ratio[0]):
            self._ex_ratio = (ratio, what)
        if score is not None and math.isfinite(score):
            label = f"margin: {what}"
            self._ex_targets[label] = min(score, self._ex_targets.get(label, math.inf))

    def note_undecided(self, entries: list[dict[str, Any]]) -> None:
        self.undecided_count += len(entries)
        room = MAX_UNDECIDED - len(self.undecided)
        if room > 0:
            self.undecided.extend(entries[:room])

    def note_escalation(self, entry: dict[str, Any]) -> None:
        self.escalation_count += 1
        self.escalations_resolved += int(entry.get("resolved", 0))
        if len(self.escalations) < MAX_ESCALATIONS:
            self.escalations.append(entry)

    def note_batch(self, context: Any, size: int, repeated: bool = False) -> None:
        """Called at draw time by ``claims.batches``: the example drawn in ``context`` holds ``size`` instances
        (``repeated``: some instance occurs twice in one batch)."""
        if self._pending_batch is not None and self._pending_batch[0] is context:
            size += self._pending_batch[1]
            repeated = repeated or self._pending_repeat
        self._pending_batch = (context, size)
        self._pending_repeat = repeated

    def take_batch(self, context: Any) -> int | None:
        pending, self._pending_batch = self._pending_batch, None
        repeat, self._pending_repeat = self._pending_repeat, False
        self.batch_repeats = pending is not None and pending[0] is context and repeat
        if pending is not None and pending[0] is context:
            return pending[1]
        return None

    def set_instances(self, k: int) -> None:
        self._ex_instances = int(k)

    # -- merging (pooled groups run elsewhere: implreg.harness.pooling) ------------------------------------
    _SUMMED = ("calls", "valid", "rejected", "undecided_examples", "failures", "instances", "comparisons",
               "certified", "undecided_count", "escalation_count", "escalations_resolved", "repeated_batches")

    def state(self) -> dict[str, Any]:
        """What :meth:`absorb` needs of this recorder, as plain picklable data."""
        keep = (*self._SUMMED, "max_ratio", "max_ratio_what", "basis", "undecided", "escalations", "series",
                "scalars", "tables", "notes")
        return {k: getattr(self, k) for k in keep}

    def absorb(self, state: dict[str, Any]) -> None:
        """Add another recorder's :meth:`state` to this one, as if its bodies had run here after ours (the same
        caps on kept entries, evidence only while no failure has been seen)."""
        for k in self._SUMMED:
            setattr(self, k, getattr(self, k) + int(state[k]))
        if state["max_ratio_what"] is not None and (self.max_ratio_what is None
                                                    or state["max_ratio"] > self.max_ratio):
            self.max_ratio, self.max_ratio_what = state["max_ratio"], state["max_ratio_what"]
        for what, basis in state["basis"].items():
            if self.basis.get(what) != "estimate":
                self.basis[what] = basis
        self.undecided.extend(state["undecided"][: max(0, MAX_UNDECIDED - len(self.undecided))])
        self.escalations.extend(state["escalations"][: max(0, MAX_ESCALATIONS - len(self.escalations))])
        if not self.recording_evidence:
            return
        for name, plot in state["series"].items():
            mine = self.series.setdefault(name, {**plot, "lines": [], "dropped_lines": 0})
            room = max(0, MAX_SERIES_LINES - len(mine["lines"]))
            mine["lines"].extend(plot["lines"][:room])
            mine["dropped_lines"] += plot["dropped_lines"] + max(0, len(plot["lines"]) - room)
        for name, entry in state["scalars"].items():
            mine = self.scalars.setdefault(name, {**entry, "values": [], "nonfinite": 0})
            mine["nonfinite"] += entry["nonfinite"]
            mine["values"].extend(entry["values"][: max(0, 10_000 - len(mine["values"]))])
        for name, t in state["tables"].items():
            mine = self.tables.setdefault(name, {**t, "columns": [], "rows": [], "dropped_rows": 0})
            mine["columns"].extend(c for c in t["columns"] if c not in mine["columns"])
            room = max(0, MAX_TABLE_ROWS - len(mine["rows"]))
            mine["rows"].extend(t["rows"][:room])
            mine["dropped_rows"] += t["dropped_rows"] + max(0, len(t["rows"]) - room)
        for text in state["notes"]:
            if text not in self.notes and len(self.notes) < MAX_NOTES:
                self.notes.append(text)
