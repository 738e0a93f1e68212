"""Claims: the ``@claim`` decorator, sources, the registry, and the batching helper.

A claim is one decorated function; nothing else registers it::

    RAZIN_COHEN_2020 = Source(key="razin-cohen-2020", title="Implicit Regularization in Deep Learning May "
                              "Not Be Explainable by Norms", authors="N. Razin, N. Cohen", year=2020,
                              arxiv="2005.06398")

    @claim("razin-cohen-2020/det-sign-preserved", source=RAZIN_COHEN_2020.at("Theorem 1", confirmed=False),
           kind="theorem", expect="holds",
           statement="Under balanced initialization with det W(0) > 0, det W(t) > 0 for all t.",
           latex=r"\\det W(0) > 0 \\;\\Rightarrow\\; \\det W(t) > 0 \\quad \\forall t \\ge 0")
    @given(batch=batches(balanced_2x2(), max_size=64))
    def det_sign_preserved(batch): ...

The decorated object is itself a test: pytest (with the implreg plugin) collects it from any file, runs
its Hypothesis test, turns the outcome into a verdict (``implreg.harness.verdict``) and passes iff the verdict
equals ``expect``.  A malformed claim (missing id or statement, bad id, unknown kind or expectation, no
``@given``/``@sample``, a duplicate id) does not raise at import: it is collected like any claim and its
run records the ``error`` verdict with a message naming the claim and the problem, so other claims still
run and the report still appears.

Statistical claims use ``@sample`` instead of ``@given`` (see ``implreg.harness.stats``)::

    @claim("arora-2019/depth-lowers-rank", ..., kind="empirical")
    @sample(n=24, test=stats.paired("wilcoxon", alternative="less", alpha=0.01), problem=completion_problems())
    def depth_lowers_rank(problem):
        return effective_rank(solve(problem, depth=3)), effective_rank(solve(problem, depth=1))

Refutations for the stated reason: a negative control (``expect="refuted"``) or a catalogue finding names the
comparison that must fail, ``refuted_by="det W(t) ≥ 0 at the save times"`` (the ``what=`` of the certify call,
or the message of a plain ``assert``); a counterexample that fails any other check, or a precondition stated
with ``require`` (``implreg.preconditions``), makes the verdict ``error``, never ``refuted``.  A control
without ``refuted_by`` still runs (any failing comparison refutes it) but ``implreg list`` and the report warn.

This module declares claims; running one is ``implreg.harness.verdict``'s job.  Calling a claim function directly
runs it through the runner registered with ``set_runner`` (``implreg.harness.verdict`` registers itself when
imported; without it the default runner is bound late by name), so this module never imports the layer
above it.

Batching: Hypothesis runs one example at a time, the simulators are batched.  Draw a *batch* per example
with ``batches(instance_strategy, max_size=64)`` (a list of 1..64 instances, optionally stacked by
``stack=``); shrinking then reduces a failure to a single instance, and the report counts instances.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from hypothesis import is_hypothesis_test
from hypothesis import strategies as st

from implreg.preconditions import PreconditionFailed, require

__all__ = [
    "EXPECTATIONS",
    "KINDS",
    "REGISTRY",
    "STATISTICAL_REASONS",
    "VERDICTS",
    "Batch",
    "ClaimSpec",
    "PreconditionFailed",
    "Source",
    "SourceRef",
    "batches",
    "claim",
    "get_spec",
    "require",
    "sample",
    "set_runner",
]

VERDICTS = ("holds", "refuted", "inconclusive", "error")
EXPECTATIONS = ("holds", "refuted")
KINDS = ("theorem", "proposition", "lemma", "corollary", "identity", "empirical", "conjecture")
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*$")
#: What a statistical claim may name in ``refuted_by`` (``implreg.harness.stats``): significant in the opposite
#: direction, an equivalence test showing no effect of the claimed size, a proportion shown outside its
#: stated interval, or (deprecated ``holds_when="consistent"``) data inconsistent with H₀.
STATISTICAL_REASONS = ("opposite", "equivalence", "outside", "inconsistent")


# ------------------------------------------------------------------------------------------------
# sources
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """A paper (or other source) that claims are taken from."""

    key: str
    title: str
    authors: str
    year: int
    arxiv: str | None = None
    url: str | None = None
    venue: str | None = None

    def at(self, locator: str, *, confirmed: bool = True) -> SourceRef:
        """A place in the source, e.g. ``at("Theorem 1", confirmed=False)`` (rendered "as reconstructed")."""
        return SourceRef(self, str(locator), bool(confirmed))

    def theorem(self, n: int | str, *, confirmed: bool = True) -> SourceRef:
        return self.at(f"Theorem {n}", confirmed=confirmed)

    def lemma(self, n: int | str, *, confirmed: bool = True) -> SourceRef:
        return self.at(f"Lemma {n}", confirmed=confirmed)

    def proposition(self, n: int | str, *, confirmed: bool = True) -> SourceRef:
        return self.at(f"Proposition {n}", confirmed=confirmed)

    def corollary(self, n: int | str, *, confirmed: bool = True) -> SourceRef:
        return self.at(f"Corollary {n}", confirmed=confirmed)

    def section(self, s: int | str, *, confirmed: bool = True) -> SourceRef:
        return self.at(f"§{s}", confirmed=confirmed)

    @property
    def link(self) -> str | None:
        if self.url:
            return self.url
        return f"https://arxiv.org/abs/{self.arxiv}" if self.arxiv else None

    def short(self) -> str:
        names = [a.strip().split()[-1] for a in re.split(r",| and ", self.authors) if a.strip()]
        who = names[0] if len(names) == 1 else f"{names[0]} & {names[1]}" if len(names) == 2 else \
            f"{names[0]} et al."
        return f"{who} {self.year}"

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "authors": self.authors, "year": self.year,
                "arxiv": self.arxiv, "url": self.url, "venue": self.venue, "link": self.link,
                "short": self.short()}


@dataclass(frozen=True)
class SourceRef:
    """A source plus where in it the claim is stated, and whether that location was confirmed."""

    source: Source
    locator: str | None = None
    confirmed: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {**self.source.as_dict(), "locator": self.locator, "confirmed": self.confirmed}


# ------------------------------------------------------------------------------------------------
# claim metadata and registry
# ------------------------------------------------------------------------------------------------
@dataclass
class ClaimSpec:
    """Everything known about one claim before it runs."""

    id: str
    function: str                 # qualified name of the decorated function
    module: str
    file: str
    line: int
    source: SourceRef | None = None
    kind: str = "theorem"
    expect: str = "holds"
    statement: str = ""
    latex: str | None = None
    hypotheses: tuple[str, ...] = ()
    budget_s: float | None = None
    max_examples: int | None = None
    instances: int | None = None                # pooled runs: distinct instances to check under ci
    deviation: str | None = None                # empirical only: documented disagreement with the paper
    finding: str | None = None                  # the catalogue states this as holding; refuted as stated
    refuted_by: tuple[str | re.Pattern[str], ...] = ()  # the comparison(s) a refutation must fail
    test: Callable[..., Any] | None = None     # the @given test, or the sampler built by @sample
    sample: SampleSpec | None = None
    problems: list[str] = field(default_factory=list)   # malformations: each makes the verdict `error`
    warnings: list[str] = field(default_factory=list)   # weaknesses that do not stop the run (report, list)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def names_refutation(self, failed: str | None) -> bool:
        """Whether a counterexample that failed the check named ``failed`` refutes this claim for its stated
        reason: always when the claim names none; else ``failed`` must equal one of ``refuted_by`` (whitespace
        normalized) or fully match one given as a compiled regular expression."""
        if not self.refuted_by:
            return True
        if failed is None:
            return False
        got = " ".join(failed.split())
        for want in self.refuted_by:
            if isinstance(want, re.Pattern):
                if want.fullmatch(failed) or want.fullmatch(got):
                    return True
            elif " ".join(want.split()) == got:
                return True
        return False

    @property
    def refuted_by_text(self) -> list[str]:
        return [f"re:{w.pattern}" if isinstance(w, re.Pattern) else w for w in self.refuted_by]

    @property
    def group(self) -> str:
        """Grouping key for the report: the source key, else the id's paper part."""
        if self.source is not None:
            return self.source.source.key
        return self.id.split("/", 1)[0] if "/" in self.id else "(no source)"

    def metadata(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "function": self.function,
            "module": self.module,
            "file": self.file,
            "line": self.line,
            "group": self.group,
            "source": self.source.as_dict() if self.source is not None else None,
            "kind": self.kind,
            "expect": self.expect,
            "deviation": self.deviation,
            "finding": self.finding,
            "refuted_by": self.refuted_by_text,
            "warnings": list(self.warnings),
            "statement": self.statement,
            "latex": self.latex,
            "hypotheses": list(self.hypotheses),
            "budget_s": self.budget_s,
            "max_examples": self.max_examples,
            "instances": self.instances,
            "statistical": self.sample is not None,
        }


class Registry:
    """All claims defined in this process, by id.  Redefining the same function replaces it."""

    def __init__(self) -> None:
        self._by_id: dict[str, list[ClaimSpec]] = {}

    def add(self, spec: ClaimSpec) -> None:
        entries = self._by_id.setdefault(spec.id, [])
        for i, other in enumerate(entries):
            if (other.file, other.function) == (spec.file, spec.function):
                entries[i] = spec  # a re-import of the same module
                return
        entries.append(spec)

    def duplicates(self, spec: ClaimSpec) -> list[ClaimSpec]:
        """Other claims with the same id (defined anywhere in this process)."""
        return [s for s in self._by_id.get(spec.id, []) if s is not spec]

    def __iter__(self) -> Iterator[ClaimSpec]:
        for entries in self._by_id.values():
            yield from entries

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_id.values())

    def get(self, claim_id: str) -> list[ClaimSpec]:
        return list(self._by_id.get(claim_id, []))

    @contextmanager
    def isolated(self) -> Iterator[Registry]:
        """Run with an empty registry and restore the previous one afterwards (for tests)."""
        saved, self._by_id = self._by_id, {}
        try:
            yield self
        finally:
            self._by_id = saved


REGISTRY = Registry()


def get_spec(obj: Any) -> ClaimSpec | None:
    """The ClaimSpec of a claim function, or None for anything else."""
    spec = getattr(obj, "__implreg_claim__", None)
    return spec if isinstance(spec, ClaimSpec) else None


# ------------------------------------------------------------------------------------------------
# the decorator
# ------------------------------------------------------------------------------------------------
def _origin(fn: Any) -> tuple[str, str, str, int]:
    target = inspect.unwrap(getattr(getattr(fn, "hypothesis", None), "inner_test", fn))
    name = getattr(target, "__qualname__", getattr(target, "__name__", repr(fn)))
    module = getattr(fn, "__module__", "?") or "?"
    try:
        file = inspect.getsourcefile(target) or "?"
        line = inspect.getsourcelines(target)[1]
    except (TypeError, OSError):
        file, line = "?", 0
    return name, module, file, line


def claim(id: str | None = None, *, source: Source | SourceRef | None = None, kind: str = "theorem",
          expect: str = "holds", statement: str | None = None, latex: str | None = None,
          hypotheses: Sequence[str] = (), budget_s: float | None = None,
          max_examples: int | None = None,
          instances: int | None = None,
          deviation: str | None = None,
          finding: str | None = None,
          refuted_by: str | re.Pattern[str] | Sequence[str | re.Pattern[str]] | None = None,
          ) -> Callable[[Callable[..., Any]], Callable[[], None]]:
    """Declare a claim: a Hypothesis test (``@given`` or ``@sample`` below this) plus what it states.

    ``id`` is "paper-key/slug" (stable; lower case, digits, ``.-_``); ``source`` a ``Source`` or
    ``Source.at(...)``; ``kind`` one of KINDS; ``expect`` "holds" or "refuted" (a known-false negative
    control); ``statement`` in words, optionally with ``$...$`` math; ``latex`` the formal statement;
    ``hypotheses`` the conditions drawn instances satisfy by construction; ``budget_s`` a wall budget for
    the whole claim (no new examples are started after it; the report says so); ``max_examples`` the
    claim's example count under the ``ci`` profile (other profiles scale it).

    ``instances``: check at least this many distinct instances under ``ci`` (``quick`` and ``thorough`` scale
    it), in a pooled run: Hypothesis' examples are generated first, then checked a few large batches at a time,
    and a failure is shrunk as usual (``implreg.harness.pooling``).  For claims whose strategies draw
    ``batches`` and whose body treats each instance on its own (as the simulators do), so that merging
    examples changes nothing but the speed; ``max_examples`` is then ignored.

    ``deviation`` (empirical claims only): an explanation, written after looking at the result, of why this
    toy replication disagrees with the paper.  ``expect`` stays what the paper reports and the verdict is
    still shown as differing from it; the run does not fail on it, and the report prints the explanation
    beside the verdict.  If the deviation stops reproducing, the report says so.

    ``finding`` (any kind, with ``expect="refuted"``): the claim catalogue states this claim as holding, and the
    harness found it false *as stated*; the string gives the evidence (e.g. the certificate and the shrunk
    counterexample).  The statement and hypotheses stay the catalogue's: the claim is not weakened to pass.
    The report flags it as a catalogue finding, and the run fails if the refutation stops reproducing.

    ``refuted_by`` (with ``expect="refuted"``): the comparison that must fail, i.e. the ``what=`` of the certify
    call (or the message of a plain ``assert``); a string (compared with whitespace normalized), a compiled
    ``re`` pattern (full match), or a sequence of them.  A counterexample that fails anything else, or a
    ``require`` precondition, gives the verdict ``error`` ("refuted for the wrong reason").  For a statistical
    claim name the statistical reason instead: one of STATISTICAL_REASONS.  Optional (for now): a
    non-statistical control or finding without it gets a warning in ``implreg list`` and in the report.
    """
    if callable(id) and not isinstance(id, str):
        # used bare, as @claim: record the mistake on the function itself
        return _make(id, None, {}, ["@claim must be called with an id: @claim('paper-key/slug', statement=...)"])
    meta = dict(source=source, kind=kind, expect=expect, statement=statement, latex=latex,
                hypotheses=hypotheses, budget_s=budget_s, max_examples=max_examples, instances=instances,
                deviation=deviation,
                finding=finding, refuted_by=refuted_by)

    def decorate(fn: Callable[..., Any]) -> Callable[[], None]:
        return _make(fn, id, meta, [])

    return decorate


def _make(fn: Any, claim_id: Any, meta: dict[str, Any], problems: list[str]) -> Callable[[], None]:
    name, module, file, line = _origin(fn)
    problems = list(problems)
    where = f"{name} ({file}:{line})"
    if claim_id is None or (isinstance(claim_id, str) and not claim_id.strip()):
        if not problems:
            problems.append(f"claim {where} has no id: give @claim('paper-key/slug', ...)")
        shown = f"(no id) {module}.{name}"
    elif not isinstance(claim_id, str):
        problems.append(f"claim {where}: id must be a string 'paper-key/slug', got {claim_id!r}")
        shown = f"(bad id) {module}.{name}"
    else:
        shown = claim_id
        if not ID_PATTERN.match(claim_id):
            problems.append(
                f"claim {claim_id!r} ({file}:{line}): bad id format; expected 'paper-key/slug' "
                "(lower-case letters, digits, '.', '-', '_', exactly one '/')"
            )
    statement = meta.get("statement")
    if meta and (statement is None or not str(statement).strip()):
        problems.append(f"claim {shown!r} ({file}:{line}) has no statement: give statement='...' in words")
    kind = meta.get("kind", "theorem")
    if kind not in KINDS:
        problems.append(f"claim {shown!r}: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    expect = meta.get("expect", "holds")
    if expect not in EXPECTATIONS:
        why = (" (inconclusive and error are outcomes, never expectations)" if expect in VERDICTS else "")
        problems.append(f"claim {shown!r}: expect must be 'holds' or 'refuted', got {expect!r}{why}")
    source = meta.get("source")
    if isinstance(source, Source):
        source = SourceRef(source)
    elif source is not None and not isinstance(source, SourceRef):
        problems.append(f"claim {shown!r}: source must be a Source or Source.at(...), got {type(source).__name__}")
        source = None
    hyps = meta.get("hypotheses") or ()
    if isinstance(hyps, str):
        hyps = (hyps,)
    budget = meta.get("budget_s")
    if budget is not None and not (isinstance(budget, (int, float)) and budget > 0):
        problems.append(f"claim {shown!r}: budget_s must be a positive number of seconds, got {budget!r}")
        budget = None
    max_ex = meta.get("max_examples")
    if max_ex is not None and not (isinstance(max_ex, int) and max_ex >= 1):
        problems.append(f"claim {shown!r}: max_examples must be a positive integer, got {max_ex!r}")
        max_ex = None
    n_inst = meta.get("instances")
    if n_inst is not None and not (isinstance(n_inst, int) and not isinstance(n_inst, bool) and n_inst >= 1):
        problems.append(f"claim {shown!r}: instances must be a positive integer, got {n_inst!r}")
        n_inst = None
    if n_inst is not None and getattr(fn, "__implreg_sample__", None) is not None:
        problems.append(f"claim {shown!r}: instances= pools the examples of a @given claim; a @sample claim "
                        "states its sample size in @sample(n, …)")
        n_inst = None
    deviation = meta.get("deviation")
    if deviation is not None and (not isinstance(deviation, str) or not deviation.strip()):
        problems.append(f"claim {shown!r}: deviation must be a non-empty explanation, got {deviation!r}")
        deviation = None
    if deviation is not None and kind != "empirical":
        problems.append(f"claim {shown!r}: only empirical claims may document a deviation from the paper; "
                        f"a {kind} that fails its expectation is a bug to fix or, if the catalogue is wrong, a "
                        "refutation to report with expect='refuted' and finding='...'")
        deviation = None
    finding = meta.get("finding")
    if finding is not None and (not isinstance(finding, str) or not finding.strip()):
        problems.append(f"claim {shown!r}: finding must be a non-empty explanation, got {finding!r}")
        finding = None
    if finding is not None and expect != "refuted":
        problems.append(f"claim {shown!r}: a finding records a catalogue claim the harness refutes as stated; "
                        f"give expect='refuted' with it (got expect={expect!r})")
        finding = None
    sample_spec = getattr(fn, "__implreg_sample__", None)
    refuted_by, warnings = _refuted_by(meta.get("refuted_by"), shown, expect, sample_spec is not None, finding,
                                       problems)
    if sample_spec is not None:
        problems.extend(f"claim {shown!r}: {p}" for p in sample_spec.problems)
    if sample_spec is None and not is_hypothesis_test(fn):
        problems.append(
            f"claim {shown!r} ({file}:{line}) has no @given: put @given(...) (or @sample(...) for a "
            "statistical claim) between @claim and the function"
        )
    if get_spec(fn) is not None:
        problems.append(f"claim {shown!r}: @claim applied twice")

    spec = ClaimSpec(
        id=shown, function=name, module=module, file=file, line=line, source=source,
        kind=kind if kind in KINDS else str(kind), expect=str(expect),
        statement=str(statement or ""), latex=latex_or_none(meta.get("latex")),
        hypotheses=tuple(str(h) for h in hyps), budget_s=budget, max_examples=max_ex, instances=n_inst,
        deviation=deviation,
        finding=finding, refuted_by=refuted_by, test=fn if callable(fn) else None, sample=sample_spec,
        problems=problems, warnings=warnings,
    )
    REGISTRY.add(spec)

    def run_claim() -> None:
        # Called directly (not through the pytest plugin): run under the default profile and fail
        # unless the verdict matches the expectation.
        record = _runner()(spec)
        if record["verdict"] != spec.expect and not record.get("deviation_documented"):
            raise AssertionError(record["explanation"])

    run_claim.__name__ = getattr(fn, "__name__", "claim")
    run_claim.__qualname__ = name
    run_claim.__module__ = module
    run_claim.__doc__ = getattr(fn, "__doc__", None)
    run_claim.__implreg_claim__ = spec  # type: ignore[attr-defined]
    return run_claim


def _refuted_by(value: Any, shown: str, expect: Any, statistical: bool, finding: Any,
                problems: list[str]) -> tuple[tuple[str | re.Pattern[str], ...], list[str]]:
    """Validate ``refuted_by``; return it as a tuple and the claim's warnings (appends malformations)."""
    warnings: list[str] = []
    if value is None:
        if expect == "refuted" and not statistical:
            role = "catalogue finding" if finding else "negative control"
            warnings.append(
                f"{role} {shown!r} names no refuted_by: any failing comparison (or plain assert) counts as its "
                "refutation; name the comparison that must fail, refuted_by='<the what= of that certify call, or "
                "its source text, e.g. 'loss[:, 1] <= loss[:, 0]', where it has no what=>'")
        return (), warnings
    items = [value] if isinstance(value, (str, re.Pattern)) else value
    try:
        items = list(items)
    except TypeError:
        items = [value]
    bad = [w for w in items if not (isinstance(w, re.Pattern) or (isinstance(w, str) and w.strip()))]
    if bad or not items:
        problems.append(f"claim {shown!r}: refuted_by must be a non-empty string, a compiled re pattern, or a "
                        f"sequence of them, got {value!r}")
        return (), warnings
    if expect != "refuted":
        problems.append(f"claim {shown!r}: refuted_by names the comparison a refutation must fail; it needs "
                        f"expect='refuted' (got expect={expect!r})")
        return (), warnings
    if statistical:
        unknown = [w for w in items if not isinstance(w, str) or w not in STATISTICAL_REASONS]
        if unknown:
            problems.append(f"claim {shown!r}: a statistical claim's refuted_by names the statistical reason, one "
                            f"of {', '.join(STATISTICAL_REASONS)}; got {unknown!r}")
            return (), warnings
    return tuple(items), warnings


# ------------------------------------------------------------------------------------------------
# the runner (dependency inversion: implreg.harness.verdict registers itself; claims never imports it)
# ------------------------------------------------------------------------------------------------
_RUNNER: list[Callable[[ClaimSpec], dict[str, Any]]] = []
_DEFAULT_RUNNER = ("implreg.harness.verdict", "run_claim")


def set_runner(runner: Callable[[ClaimSpec], dict[str, Any]]) -> None:
    """Register what runs a claim to its record when a claim function is called directly."""
    _RUNNER[:] = [runner]


def _runner() -> Callable[[ClaimSpec], dict[str, Any]]:
    if not _RUNNER:
        # bound late by name (like a plugin entry point), so that this module does not depend on the layer above
        module, name = _DEFAULT_RUNNER
        importlib.import_module(module)  # registers itself through set_runner
        if not _RUNNER:
            set_runner(getattr(importlib.import_module(module), name))
    return _RUNNER[0]


def latex_or_none(x: Any) -> str | None:
    return None if x is None or not str(x).strip() else str(x)


# ------------------------------------------------------------------------------------------------
# batching
# ------------------------------------------------------------------------------------------------
class Batch(list):
    """A list of instances drawn as one Hypothesis example (see ``batches``).  ``key``: what the instances share
    beyond themselves (e.g. the depth and shape a strategy drew for the whole batch); pooled runs merge only
    batches with equal keys (``implreg.harness.pooling``)."""

    key: Any = None


def _note_batch(size: int, repeated: bool = False) -> None:
    from hypothesis.control import current_build_context

    from implreg.harness import recorder as _record

    rec = _record.current()
    if rec is None:
        return
    try:
        ctx = current_build_context()
    except Exception:  # not inside a Hypothesis test: nothing to count
        return
    rec.note_batch(ctx, size, repeated)


def instance_key(item: Any) -> Any:
    """Identity of a drawn instance for ``batches``' distinctness: the value itself when hashable (frozen
    dataclasses, tuples, numbers), else its repr (tensors hash by identity, which would make every draw
    distinct)."""
    try:
        hash(item)
    except TypeError:
        return repr(item)
    if isinstance(item, (list, dict, set)) or type(item).__hash__ is object.__hash__:
        return repr(item)
    return item


def batches(instance: st.SearchStrategy[Any], *, max_size: int = 64, min_size: int = 1,
            stack: Callable[[list[Any]], Any] | None = None) -> st.SearchStrategy[Any]:
    """A batch of ``min_size..max_size`` independently drawn instances, as one Hypothesis example.

    While examples are generated, a batch that repeats an instance is rejected (Hypothesis' first example is
    its simplest, where every element of a list is the same minimal draw: a batch of 8 would test one
    instance 8 times).  While a failure shrinks, repeats are allowed, so shrinking stays as fast as for a
    plain list.

    The value is a ``Batch`` (a list), or ``stack(list)`` if ``stack`` is given (e.g. a function that
    concatenates problems along the batch dimension).  Shrinking deletes instances, so a failure shrinks
    to a single instance; the harness counts the instances for the report.  Hypothesis draws lists of
    about 6 elements on average with min_size=1; raise ``min_size`` for bigger batches (at the cost of
    shrinking only down to that many).
    """

    def finish(items: list[Any]) -> Any:
        _note_batch(len(items), len({instance_key(x) for x in items}) < len(items))
        return Batch(items) if stack is None else stack(list(items))

    def build() -> st.SearchStrategy[Any]:
        # validated when first drawn (like Hypothesis' own strategies), so a bad size is the claim's
        # `error`, not an import failure of the whole file
        if not (isinstance(min_size, int) and isinstance(max_size, int) and 1 <= min_size <= max_size):
            raise ValueError(f"batches: need integers 1 ≤ min_size ≤ max_size, got {min_size!r}, {max_size!r}")
        return st.lists(instance, min_size=min_size, max_size=max_size).map(finish)

    return st.deferred(build)


# ------------------------------------------------------------------------------------------------
# statistical claims
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleSpec:
    """How a statistical claim draws its sample and which test decides it."""

    n: int
    test: Any                    # implreg.harness.stats.TestSpec
    strategies: dict[str, st.SearchStrategy[Any]]
    batched: bool
    fn: Callable[..., Any]
    rng: bool = False            # the function takes a numpy Generator named `rng`
    problems: tuple[str, ...] = ()


def sample(n: int, test: Any, *, batched: bool = False,
           **strategies: st.SearchStrategy[Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Draw a sample of ``n`` problems and decide the claim by a named statistical ``test``.

    The function is called once per drawn problem (keyword arguments drawn from ``strategies``) and
    returns its observation — a pair ``(a, b)`` for ``stats.paired``/``stats.two_sample``, a bool for
    ``stats.proportion``.  With ``batched=True`` it is called once with lists of ``n`` values per keyword
    and returns arrays of observations.

    Which distribution?  Values from Hypothesis strategies follow Hypothesis' *generation* distribution,
    which deliberately over-weights boundaries, small and "nasty" values (ideal for finding
    counterexamples, wrong for estimating a probability).  When the claim is about a stated distribution
    ("entries i.i.d. N(0, 1)", "u uniform on [0, 1]"), give the function a parameter named ``rng``: it
    receives a ``numpy.random.Generator`` (one independent stream per problem, or one for the batch),
    seeded from the claim's seed, to draw from that distribution explicitly.

    The whole sample is one Hypothesis example, generated without shrinking (shrinking a statistical
    sample is meaningless) from the claim's seed, so the same seed gives the same sample.  The test decides
    in three outcomes (``implreg.harness.stats``): holds (significant in the stated direction), refuted (significant
    in the opposite direction, or an equivalence test shows no effect of the claimed size), else inconclusive.
    """
    from implreg.harness.stats import TestSpec

    problems = []  # reported by @claim as `error` (never raised: other claims in the file must still run)
    if not isinstance(n, int) or n < 2:
        problems.append(f"@sample: n must be an integer ≥ 2, got {n!r}")
    if not isinstance(test, TestSpec):
        problems.append("@sample: test must be a stats spec, e.g. stats.paired('wilcoxon', alternative='less')")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        takes_rng = "rng" in inspect.signature(fn).parameters
        found = list(problems)
        if not strategies and not takes_rng:
            found.append("@sample: give keyword strategies (problem=...) or a function parameter named rng")
        spec = SampleSpec(n=n if isinstance(n, int) and n >= 2 else 2, test=test, strategies=dict(strategies),
                          batched=batched, fn=fn, rng=takes_rng, problems=tuple(found))

        @functools.wraps(fn)
        def holder(*args: Any, **kwargs: Any) -> Any:  # calling it directly evaluates one observation
            return fn(*args, **kwargs)

        holder.__implreg_sample__ = spec  # type: ignore[attr-defined]
        return holder

    return decorate
