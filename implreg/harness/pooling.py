"""Pooled claim runs: a claim's Hypothesis examples checked in a few large batched bodies (issue 14).

A claim declared with ``@claim(..., instances=N)`` is run in three steps:

1. **collect** — Hypothesis generates the claim's examples exactly as in a normal run (same seed, same order),
   but the body is not called: each example's arguments are kept until they hold N distinct instances.
2. **pool** — examples whose arguments agree outside their ``Batch``es (the same depth, shape, …: the same
   *signature*) are merged, their batches concatenated in generation order, into groups of at most
   ``pool_size()`` instances, and the body runs once per group.  An instance already checked in an earlier
   example of the same signature is dropped (its result would be the same bits).  The simulators are row-wise
   (an instance's result has the same bits alone or in any batch: ``tests/test_flow_batching.py``), so a
   merged body computes for every instance exactly what the example's own body computes.
3. **shrink** — if a group fails, it is bisected to the first failing example; Hypothesis then runs again with
   the same seed, passes over the examples before that one without calling the body (generation does not
   depend on the body, so the same examples come in the same order), and runs the failing one for real: it
   fails, and Hypothesis shrinks it as in a normal run, to one instance with the usual ``@reproduce_failure``
   line.

A group that is rejected (``require(…, discard=True)``/``assume``) is split in halves down to single examples,
which are then counted as a normal run counts them; the recorder is restored before each retry, so nothing is
counted twice.  A group with an undecided comparison is not split: the comparison makes the verdict inconclusive
whichever example holds it (a later failure still refutes), so its examples are discarded as undecided.  If a
group fails but neither half does (a body that is not row-wise), the replay runs every example of that group
normally from its first one.  Instances are counted once each; the record's ``pooling`` entry says how many
examples, groups and bodies there were.
"""

from __future__ import annotations

import copy
import functools
import os
import time
import unittest
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import reject
from hypothesis.errors import UnsatisfiedAssumption

from implreg.certify import Undecided
from implreg.errors import ImplregError
from implreg.harness import recorder as _record
from implreg.harness.claims import Batch

__all__ = ["Example", "Group", "GroupOutcome", "GroupTask", "MapGroups", "Pooled", "check_group_task", "merge_groups",
           "pool_size", "run_pooled"]

#: ``map_groups(fn, items)``: ``[fn(x) for x in items]``, in order, wherever it likes (a cluster:
#: ``implreg.harness.cluster``); ``fn`` is a top-level function and ``items`` are picklable.
MapGroups = Callable[[Callable[[Any], Any], Sequence[Any]], Sequence[Any]]

#: Instances per pooled body unless ``IMPLREG_POOL_SIZE`` says otherwise.  1024 keeps a depth-sweep claim's
#: per-depth batches at ≈ 256 rows, where the eager integrator's cost per instance is within 1.6× of B = 1024
#: (measured 2026-12-05: 12.7 vs 7.7 ms per instance at depth 3), and a group's memory is a few MB.
DEFAULT_POOL_SIZE = 1024


def pool_size() -> int:
    """``IMPLREG_POOL_SIZE`` (instances per pooled body; default :data:`DEFAULT_POOL_SIZE`)."""
    raw = os.environ.get("IMPLREG_POOL_SIZE", "").strip()
    if not raw:
        return DEFAULT_POOL_SIZE
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ImplregError(f"IMPLREG_POOL_SIZE must be a positive integer, got {raw!r}")
    return n


class _Collected(unittest.SkipTest):
    """Raised inside the collect pass once enough instances are held: stops Hypothesis' generation."""


@dataclass
class Example:
    """One generated example: its position among the wrapper's calls, its arguments, and its instances."""

    call: int
    kwargs: dict[str, Any]
    size: int


@dataclass
class Group:
    """Examples with one signature, merged: ``kwargs`` has each batch concatenated (repeats dropped)."""

    examples: list[Example]
    kwargs: dict[str, Any]
    size: int


# ---------------------------------------------------------------------------------------------- merging
def _ident(x: Any) -> tuple[str, str]:
    """Identity for merging and repeats: type and repr (equality would identify 0.0 with −0.0 and 1 with 1.0,
    which a body may tell apart)."""
    return type(x).__qualname__, repr(x)


def _split(value: Any, path: tuple = ()) -> tuple[Any, list[tuple[tuple, Batch]]]:
    """(signature, [(path, batch)]): the value with every ``Batch`` replaced by a placeholder naming its path and
    key, and the batches themselves.  Two examples merge iff their signatures are equal."""
    if isinstance(value, Batch):
        return ("batch", path, _ident(value.key)), [(path, value)]
    if isinstance(value, dict):
        sig, found = [], []
        # in a canonical key order: Hypothesis' fixed_dictionaries draws its keys in varying order
        for k, v in sorted(value.items(), key=lambda kv: _ident(kv[0])):
            s, f = _split(v, (*path, k))
            sig.append((_ident(k), s))
            found.extend(f)
        return ("dict", tuple(sig)), found
    if type(value) in (list, tuple):
        sig, found = [], []
        for i, v in enumerate(value):
            s, f = _split(v, (*path, i))
            sig.append(s)
            found.extend(f)
        return (type(value).__name__, tuple(sig)), found
    return ("value", _ident(value)), []


def _rebuild(value: Any, batches: dict[tuple, Batch], path: tuple = ()) -> Any:
    if isinstance(value, Batch):
        return batches[path]
    if isinstance(value, dict):
        return {k: _rebuild(v, batches, (*path, k)) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_rebuild(v, batches, (*path, i)) for i, v in enumerate(value))
    return value


def merge_groups(examples: list[Example], limit: int) -> list[Group]:
    """Merge ``examples`` (in order) into groups of one signature and at most ``limit`` instances (an example
    larger than ``limit`` is a group of its own).  An instance that an earlier example of the same signature
    already holds is dropped from the later one; an example left without instances is dropped."""
    groups: list[Group] = []
    open_: dict[Any, Group] = {}
    for ex, sig in _deduplicated(examples):
        g = open_.get(sig)
        if g is not None and g.size + ex.size > limit:
            g = None
        if g is None:
            g = open_[sig] = Group([], ex.kwargs, 0)
            groups.append(g)
        g.examples.append(ex)
        g.size += ex.size
    for g in groups:
        g.kwargs = _concatenated(g.examples)
    return groups


def _deduplicated(examples: list[Example]) -> Iterator[tuple[Example, Any]]:
    """Each example with the instances that no earlier example of its signature holds (``size`` counts only
    those), and its signature.  A batch left empty keeps its first instance, a repeat not counted again (a body
    may index every batch); an example with no new instance at all is dropped."""
    seen: dict[Any, set] = {}
    for ex in examples:
        sig, found = _split(ex.kwargs)
        if not found:
            yield ex, ("unpooled", ex.call)  # nothing to pool: a group of its own
            continue
        keys = seen.setdefault(sig, set())
        fresh: dict[tuple, Batch] = {}
        new = 0
        for path, batch in found:
            items = []
            for item in batch:
                key = (path, _ident(item))
                if key not in keys:
                    keys.add(key)
                    items.append(item)
            new += len(items)
            fresh[path] = _like(batch, items or list(batch[:1]))
        if new:
            yield Example(ex.call, _rebuild(ex.kwargs, fresh), new), sig


def _like(batch: Batch, items: list[Any]) -> Batch:
    out = Batch(items)
    out.key = batch.key
    return out


def _concatenated(examples: list[Example]) -> dict[str, Any]:
    """The examples' arguments (one signature) with each batch the concatenation of theirs, in order."""
    first = examples[0].kwargs
    if len(examples) == 1:
        return first
    parts = [dict(_split(ex.kwargs)[1]) for ex in examples]
    merged = {path: _like(b, [item for p in parts for item in p[path]]) for path, b in parts[0].items()}
    return _rebuild(first, merged)


def _regroup(examples: list[Example]) -> Group:
    """Examples of one group (already deduplicated) as one group."""
    return Group(list(examples), _concatenated(examples), sum(ex.size for ex in examples))


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class Pooled:
    """What a pooled run did (the record's ``pooling`` entry)."""

    target: int
    pool_size: int
    examples: int = 0
    groups: int = 0
    bodies: int = 0
    splits: int = 0
    failing_example: int | None = None
    interaction: bool = False
    collected: int = 0   # distinct instances held when the collect pass ended

    @property
    def stopped_because(self) -> str | None:
        """Why generation stopped, where the pooled run stopped it (Hypothesis' own reason otherwise)."""
        if self.target and self.collected >= self.target:
            return f"{self.collected} distinct instances collected (target {self.target})"
        return None

    def as_dict(self) -> dict[str, Any]:
        return {"target_instances": self.target, "pool_size": self.pool_size, "examples": self.examples,
                "groups": self.groups, "bodies": self.bodies, "splits": self.splits,
                "failing_example": self.failing_example, "not_row_wise": self.interaction,
                "collected_instances": self.collected}


class _Snapshot:
    """The recorder's counters and evidence, and the discard tally, as they were before a trial body."""

    def __init__(self, rec: _record.Recorder, tally: MutableMapping[str, int]):
        keep = {k: v for k, v in vars(rec).items() if k not in ("t0", "budget_s")}
        self.state = copy.deepcopy(keep)
        self.tally = dict(tally)

    def restore(self, rec: _record.Recorder, tally: MutableMapping[str, int]) -> None:
        for k, v in copy.deepcopy(self.state).items():
            setattr(rec, k, v)
        tally.clear()
        tally.update(self.tally)


def run_pooled(test: Callable[[], None], handle: Any, orig: Callable[..., Any], rec: _record.Recorder,
               tally: MutableMapping[str, int], info: Pooled, map_groups: MapGroups | None = None,
               where: tuple[str, str, str] = ("", "", "")) -> None:
    """Run the @given ``test`` pooled (module docstring); with ``map_groups``, the groups' bodies run through it
    (``where``: the claim's module, file and id, from which a worker imports it).  ``handle.inner_test`` is
    replaced for each pass and left as the caller set it.  Raises what a normal run raises."""
    examples, info.collected = _collect(test, handle, rec, info.target)
    info.examples = len(examples)
    groups = merge_groups(examples, info.pool_size)
    info.groups = len(groups)
    first_fail: int | None = None
    if map_groups is None:
        for g in groups:
            first_fail = _check(g, orig, rec, tally, info)
            if first_fail is not None:
                break
    else:  # every group at once, elsewhere; merged here in order, up to the first failing group
        tasks = [GroupTask(where[0], where[1], where[2], g, rec.budget_s) for g in groups]
        for out in map_groups(check_group_task, tasks):
            rec.absorb(out.state)
            for what, k in out.tally.items():
                tally[what] = tally.get(what, 0) + k
            info.bodies += out.bodies
            info.splits += out.splits
            info.interaction |= out.interaction
            if out.failing is not None:
                first_fail = out.failing
                break
    if first_fail is None:
        return
    info.failing_example = first_fail
    _replay(test, handle, orig, rec, first_fail)


@dataclass
class GroupTask:
    """One group's bodies, to run on any worker that can import the claim."""

    module: str
    file: str
    claim_id: str
    group: Group
    budget_s: float | None


@dataclass
class GroupOutcome:
    """What running a :class:`GroupTask` found: the first failing example's call number (or None), the worker's
    recorder state and discard tally, and its body and split counts."""

    failing: int | None
    state: dict[str, Any]
    tally: dict[str, int]
    bodies: int
    splits: int
    interaction: bool


def check_group_task(task: GroupTask) -> GroupOutcome:
    """Run one group as :func:`run_pooled` does, in a fresh recorder (for ``map_groups``; top level, picklable)."""
    from implreg.preconditions import tally as tally_

    spec = _load_claim(task.module, task.file, task.claim_id)
    body = spec.test.hypothesis.inner_test
    # in the driver's own process the claim's inner test is the driver's wrapper: run the claim's body
    body = getattr(body, "__implreg_body__", body)
    rec = _record.Recorder(task.claim_id, budget_s=task.budget_s)
    info = Pooled(target=0, pool_size=0)
    token = rec.activate()
    try:
        with tally_() as counts:
            failing = _check(task.group, body, rec, counts, info)
    finally:
        rec.deactivate(token)
    return GroupOutcome(failing, rec.state(), dict(counts), info.bodies, info.splits, info.interaction)


def _load_claim(module: str, file: str, claim_id: str) -> Any:
    """The claim ``claim_id`` of ``module`` (imported by name, else from ``file``)."""
    import importlib
    import importlib.util
    import sys

    from implreg.harness.claims import REGISTRY

    found = REGISTRY.get(claim_id)
    if not found:
        try:
            importlib.import_module(module)
        except ImportError:
            spec = importlib.util.spec_from_file_location(module, file)
            if spec is None or spec.loader is None:
                raise ImplregError(f"cannot import the claim file {file}") from None
            mod = importlib.util.module_from_spec(spec)
            sys.modules[module] = mod
            spec.loader.exec_module(mod)
        found = REGISTRY.get(claim_id)
    if not found:
        raise ImplregError(f"claim {claim_id!r} is not defined in {file}")
    return found[0]


def _collect(test: Callable[[], None], handle: Any, rec: _record.Recorder,
             target: int) -> tuple[list[Example], int]:
    """The examples Hypothesis generates (the body not called) until they hold ``target`` distinct instances or
    generation ends, and how many distinct instances they hold."""
    from hypothesis.control import current_build_context

    examples: list[Example] = []
    seen: dict[Any, set] = {}
    state = {"calls": 0, "distinct": 0}

    @functools.wraps(handle.inner_test)
    def collect(*args: Any, **kwargs: Any) -> None:
        batch = rec.take_batch(current_build_context())
        call = state["calls"]
        state["calls"] += 1
        if rec.batch_repeats:  # the normal run rejects it too (verdict.instrument): same generation
            rec.repeated_batches += 1
            reject()
        if args:
            raise ImplregError("a pooled claim (instances=…) takes its drawn values as keyword arguments")
        examples.append(Example(call, dict(kwargs), batch or 1))
        sig, found = _split(kwargs)
        keys = seen.setdefault(sig, set())
        if not found:
            state["distinct"] += 1
        for path, b in found:
            for item in b:
                key = (path, _ident(item))
                if key not in keys:
                    keys.add(key)
                    state["distinct"] += 1
        if state["distinct"] >= target:
            raise _Collected(f"{state['distinct']} instances collected")

    collect.__implreg_body__ = getattr(handle.inner_test, "__implreg_body__", handle.inner_test)
    handle.inner_test = collect
    try:
        test()
    except _Collected:
        pass
    return examples, state["distinct"]


def _check(group: Group, orig: Callable[..., Any], rec: _record.Recorder, tally: MutableMapping[str, int],
           info: Pooled) -> int | None:
    """Run the body on ``group``; return the call number of the first failing example, else None (counted)."""
    from implreg.harness.verdict import BudgetExhausted, check_completed  # the normal run's exceptions

    if rec.over_budget():
        rec.budget_exhausted = True
        raise BudgetExhausted(f"wall budget of {rec.budget_s:g} s exhausted")
    single = len(group.examples) == 1
    snap = _Snapshot(rec, tally)
    rec.begin_example(group.size)
    info.bodies += 1
    try:
        result = orig(**group.kwargs)
    except (KeyboardInterrupt, SystemExit, _Collected):
        raise
    except unittest.SkipTest:
        raise
    except Undecided:
        # an undecided comparison makes the verdict inconclusive whichever example holds it (unless a later one
        # fails), so the group is not split to find it: its examples are discarded as undecided, as a normal
        # run discards each such example, and their instances are not counted as checked
        rec.undecided_examples += len(group.examples)
        return None
    except UnsatisfiedAssumption:
        if single:
            rec.rejected += 1
            return None
        snap.restore(rec, tally)
        info.splits += 1
        for half in _halves(group):
            bad = _check(half, orig, rec, tally, info)
            if bad is not None:
                return bad
        return None
    except BaseException:
        snap.restore(rec, tally)  # the replay runs the failing example again, with its evidence
        if single:
            return group.examples[0].call
        return _bisect(group, orig, rec, tally, info)
    check_completed(rec, result)
    rec.end_example_valid()
    rec.valid += len(group.examples) - 1
    return None


def _bisect(group: Group, orig: Callable[..., Any], rec: _record.Recorder, tally: MutableMapping[str, int],
            info: Pooled) -> int:
    """The first failing example of a failing ``group``: halves are tried in order, each counted afresh."""
    info.splits += 1
    for half in _halves(group):
        snap = _Snapshot(rec, tally)  # a probe: what it counts is undone (the replay counts the failure)
        bad = _check(half, orig, rec, tally, info)
        snap.restore(rec, tally)
        if bad is not None:
            return bad
    # neither half fails alone: the body is not row-wise in this group; replay it example by example
    info.interaction = True
    return group.examples[0].call


def _halves(group: Group) -> Iterator[Group]:
    k = len(group.examples) // 2
    yield _regroup(group.examples[:k])
    yield _regroup(group.examples[k:])


def _replay(test: Callable[[], None], handle: Any, orig: Callable[..., Any], rec: _record.Recorder,
            first_fail: int) -> None:
    """Run Hypothesis again from the start: the examples before call ``first_fail`` pass without a body, the
    rest run normally (the failing one fails, and Hypothesis shrinks it)."""
    from hypothesis.control import current_build_context

    from implreg.harness.verdict import instrument  # the normal run's body wrapper

    body = instrument(orig, rec)
    state = {"calls": 0}
    rec.t0 = time.monotonic()  # the claim's budget again for the replay: its first body is the failing one

    @functools.wraps(orig)
    def replay(*args: Any, **kwargs: Any) -> None:
        call = state["calls"]
        state["calls"] += 1
        if call < first_fail and not rec.failure_seen:
            rec.take_batch(current_build_context())
            if rec.batch_repeats:
                reject()
            return None
        return body(*args, **kwargs)

    replay.__implreg_body__ = orig
    handle.inner_test = replay
    test()
