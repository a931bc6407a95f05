"""A fuzzing campaign: Hypothesis searches that feed each case to every implementation of the same space."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import hypothesis
import hypothesis.reporting
import torch
from hypothesis import HealthCheck, given
from hypothesis.database import ExampleDatabase
from hypothesis.errors import FailedHealthCheck, Flaky, Unsatisfiable

from difftest._contract import tensor_bits
from difftest.case import DTYPES, ConvCase
from difftest.errors import MemoryBudgetError, UsageError
from difftest.registry import Implementation
from difftest.reports import report_dict, write_report
from difftest.runner import CaseContext, Outcome, caller_for, evaluate

__all__ = ["FuzzOptions", "ImplementationResult", "ImplementationFailure", "NarrowingGap", "fuzz",
           "fuzz_implementation", "narrowing_gap"]

logger = logging.getLogger(__name__)


class ImplementationFailure(AssertionError):
    """Raised inside the Hypothesis test so that Hypothesis shrinks the failing case."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        super().__init__(f"{outcome.implementation}: {outcome.verdict} on {outcome.case.describe()}: {outcome.detail}")

    def __reduce__(self) -> Any:
        return (ImplementationFailure, (self.outcome,))


class _NamespacedDatabase(ExampleDatabase):
    """An example database that keeps each implementation's examples under its own key prefix.

    Every implementation runs the same test function, whose Hypothesis key is
    therefore the same; the prefix keeps one implementation's failing examples
    from being replayed as another's.
    """

    def __init__(self, inner: ExampleDatabase, prefix: str) -> None:
        super().__init__()
        self.inner = inner
        self.prefix = prefix.encode() + b"\0"

    def save(self, key: bytes, value: bytes) -> None:
        self.inner.save(self.prefix + key, value)

    def fetch(self, key: bytes) -> Iterable[bytes]:
        return self.inner.fetch(self.prefix + key)

    def delete(self, key: bytes, value: bytes) -> None:
        self.inner.delete(self.prefix + key, value)

    def move(self, src: bytes, dest: bytes, value: bytes) -> None:
        self.inner.move(self.prefix + src, self.prefix + dest, value)


@dataclass
class FuzzOptions:
    """How a campaign runs.

    ``max_examples`` is per implementation. ``seed`` fixes Hypothesis's
    random choices, so the same options give the same run. ``database`` is
    the Hypothesis example database (a cache that speeds up finding a known
    failure again, never the record: reports are). ``profile`` names a
    Hypothesis settings profile (see difftest.profiles) whose derandomize,
    print_blob and database apply; ``max_examples`` and an explicit
    ``database`` still take precedence. ``strategy`` contains keyword
    arguments for :func:`strategies.conv_cases`. ``timeout`` (seconds per
    call) applies to isolated implementations. ``memory_budget`` (bytes)
    skips cases whose inputs, truth and bound are estimated to need more, and
    limits how much an isolated call may add to its worker's address space.
    With ``check_determinism`` each case runs twice, and a shrunk failure is
    run again a few times: an answer that changes is 'nondeterministic'.
    ``max_shrink_timeouts`` bounds how many calls may time out while a
    failure is shrunk, each costing a full ``timeout``; past it the shrinker
    tries no new case and the smallest failure so far is reported (None: no
    bound beyond Hypothesis's own five minutes of shrinking).
    """

    max_examples: int = 100
    seed: Optional[int] = None
    report_dir: str = "reports"
    database: Optional[ExampleDatabase] = None
    profile: Optional[str] = None
    check_determinism: bool = False
    timeout: Optional[float] = None
    memory_budget: Optional[int] = None
    max_shrink_timeouts: Optional[int] = 8
    strategy: dict[str, Any] = field(default_factory=dict)
    write_reports: bool = True
    on_example: Optional[Callable[[Outcome], None]] = None
    finish: Optional[Callable[[Outcome, Implementation, CaseContext], dict[str, Any]]] = None
    # Reduce, diagnose and draw each failure before its report is written (difftest.analysis).
    analyse: bool = True
    # Also search invalid calls (strategies.invalid_conv_calls): where torch raises, the
    # implementation must raise. invalid_examples defaults to half of max_examples, at least 20.
    check_invalid: bool = True
    invalid_examples: Optional[int] = None


@dataclass
class ImplementationResult:
    """The result of a campaign for one implementation: examples run, verdict and report.

    ``examples`` counts the cases searched up to and including the first
    failure, and ``shrink_steps`` the cases run after it while Hypothesis
    shrank that failure. The verdict 'skipped' means the campaign's narrowing
    (such as its dtypes) left nothing this implementation supports, and
    ``note`` gives the reason.
    """

    name: str
    examples: int = 0
    shrink_steps: int = 0
    verdict: str = "pass"
    outcome: Optional[Outcome] = None
    report: Optional[str] = None
    script: Optional[str] = None
    # The search's wall time, or in a shared search the time in this implementation's own calls and checks.
    seconds: float = 0.0
    expected_to_fail: bool = False
    note: str = ""
    analysis: dict[str, Any] = field(default_factory=dict)
    # The invalid-call search: calls tried and its shrunk failure, with its own report.
    invalid_examples: int = 0
    invalid_outcome: Optional[Outcome] = None
    invalid_report: Optional[str] = None
    invalid_script: Optional[str] = None

    @property
    def failed(self) -> bool:
        return self.verdict not in ("pass", "skipped")

    @property
    def skipped(self) -> bool:
        return self.verdict == "skipped"

    @property
    def as_expected(self) -> bool:
        return self.skipped or self.failed == self.expected_to_fail

    @property
    def detail(self) -> str:
        """Return the failure's detail as its report states it: on the reduced inputs when there are some."""
        reduced = (self.analysis or {}).get("detail")
        if reduced:
            return str(reduced)
        return self.outcome.detail if self.outcome is not None else ""


class _HypothesisMessages:
    """A Hypothesis reporter that passes its messages on, except the hint to add ``@seed``.

    The hint names a decorator of a test the user never wrote, for example
    after Ctrl-C. ``--seed`` repeats a run instead. A hint that shrinking was
    too slow sets ``slow_shrinking``, which the run's note reports.
    """

    def __init__(self) -> None:
        self.slow_shrinking = False

    def __call__(self, value: object) -> None:
        text = str(value)
        if "@seed(" not in text:
            hypothesis.reporting.default(value)
        elif "too long to shrink" in text:
            self.slow_shrinking = True


def _hypothesis_settings(options: FuzzOptions, namespace: str) -> hypothesis.settings:
    """Return the settings of one search; ``namespace`` keeps its examples apart in the database."""
    # A named profile decides derandomize, print_blob and the database. Without
    # one they are fixed here, so that the loaded Hypothesis profile (which is
    # 'ci' on a CI machine) does not change how a campaign searches.
    if options.profile:
        from difftest.profiles import get_profile

        parent = get_profile(options.profile)
        derandomize, print_blob = parent.derandomize, parent.print_blob
        inner = options.database if options.database is not None else parent.database
    else:
        parent = hypothesis.settings()
        derandomize, print_blob, inner = False, False, options.database
    database = None
    # Hypothesis rejects a database together with derandomize=True.
    if inner is not None and not derandomize:
        database = _NamespacedDatabase(inner, namespace)
    return hypothesis.settings(
        parent,
        max_examples=options.max_examples,
        database=database,
        deadline=None,
        derandomize=derandomize,
        report_multiple_bugs=False,
        print_blob=print_blob,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


class _ShrinkTimeouts:
    """The calls that timed out while a failure was shrunk, and whether the shrinker may try another case.

    Each timed-out call costs a full ``timeout``, so past ``limit`` of them
    (None: no limit) only cases that failed before run again. A case counts
    once, however often Hypothesis replays it.
    """

    def __init__(self, limit: Optional[int]) -> None:
        self.limit = limit
        self.failed: set[Any] = set()
        self.count = 0

    @property
    def exhausted(self) -> bool:
        return self.limit is not None and self.count >= self.limit

    def blocks(self, case: Any) -> bool:
        """Return whether ``case`` is a new shrinking step after the limit was reached."""
        return bool(self.failed) and case not in self.failed and self.exhausted

    def record(self, case: Any, verdict: str) -> None:
        """Record a failing call of ``case``."""
        if self.failed and case not in self.failed and verdict == "timeout":
            self.count += 1
        self.failed.add(case)


def _namespace(implementation: Implementation) -> str:
    return implementation.target or implementation.name


class _Search:
    """One implementation's part of a campaign: its caller, counts and failure while Hypothesis searches."""

    def __init__(self, implementation: Implementation, options: FuzzOptions) -> None:
        self.implementation = implementation
        self.options = options
        self.result = ImplementationResult(implementation.name, expected_to_fail=implementation.expected_to_fail)
        self.caller = caller_for(implementation, options.timeout, options.memory_budget)
        self.timeouts = _ShrinkTimeouts(options.max_shrink_timeouts)
        self.last_failure: list[Outcome] = []
        self.over_budget: list[MemoryBudgetError] = []
        self.slow_shrinking = False
        # A failure seen in a shared search while another implementation's was being shrunk.
        self.unshrunk: Optional[Outcome] = None
        # The first passing case on which torch's own result was outside the bound.
        self.reference_suspect: Optional[Outcome] = None

    @property
    def budget_left(self) -> int:
        return self.options.max_examples - self.result.examples

    def out_of_shrink_time(self, case: ConvCase) -> bool:
        """Return whether ``case`` is a new shrinking step after too many calls timed out."""
        return self.timeouts.blocks(case)

    def skip(self, error: MemoryBudgetError) -> None:
        if not self.over_budget:
            logger.warning("%s: skipping cases over the memory budget, first: %s", self.implementation.name, error)
        self.over_budget.append(error)

    def run(self, case: ConvCase, context: Optional[CaseContext] = None) -> Outcome:
        """Evaluate ``case`` and count it; a case over the memory budget is rejected."""
        started = time.perf_counter()
        try:
            outcome = evaluate(self.implementation, case, context, check_determinism=self.options.check_determinism,
                               caller=self.caller, memory_budget=self.options.memory_budget)
        except MemoryBudgetError as error:
            self.skip(error)
            hypothesis.reject()
        finally:
            self.result.seconds += time.perf_counter() - started
        if self.timeouts.failed:
            self.result.shrink_steps += 1
        else:
            self.result.examples += 1
        if outcome.passed and outcome.reference_suspect and self.reference_suspect is None:
            self.reference_suspect = outcome
        if self.options.on_example is not None:
            self.options.on_example(outcome)
        return outcome

    def fail(self, outcome: Outcome) -> ImplementationFailure:
        """Record a failure of this implementation's search and return the exception that makes Hypothesis shrink it."""
        self.timeouts.record(outcome.case, outcome.verdict)
        self.last_failure[:] = [outcome]
        return ImplementationFailure(outcome)

    def settle(self, error: BaseException) -> None:
        """Keep the shrunk failure that a search of this implementation ended with."""
        if isinstance(error, ImplementationFailure):
            self.result.outcome = _confirm(self.implementation, error.outcome, self.options, self.caller)
            return
        # The same case failed once and passed on a later call, so the
        # implementation returns different results on repeated calls. In
        # Hypothesis 6.170 this is a FlakyFailure, an ExceptionGroup containing
        # the failure.
        outcome = _flaky_outcome(error, self.last_failure)
        if outcome is None:
            raise error
        self.result.outcome = outcome

    def close(self) -> None:
        close = getattr(self.caller, "close", None)
        if close is not None:
            close()

    def finish(self) -> ImplementationResult:
        """Add the notes, write the report and search invalid calls; return the result."""
        result = self.result
        if result.outcome is None and self.unshrunk is not None:
            result.outcome = self.unshrunk
            _add_note(result, "found in a search that was shrinking another implementation's failure, and not "
                              "found again within the budget, so the case is not shrunk")
        if self.over_budget:
            _add_note(result, f"{len(self.over_budget)} cases over the memory budget skipped")
        if self.timeouts.exhausted:
            calls = "call" if self.timeouts.count == 1 else "calls"
            _add_note(result, f"shrinking stopped after {self.timeouts.count} {calls} timed out, so the case may "
                              "not be minimal")
        elif self.slow_shrinking:
            _add_note(result, "shrinking stopped at Hypothesis's time limit, so the case may not be minimal")
        suspect = self.reference_suspect
        if suspect is not None:
            # No report is written for a passing case, so this note is the only place it shows.
            _add_note(result, f"the reference is suspect on {suspect.case.describe()}: {suspect.reference_suspect}, "
                              "while this implementation agrees with the float64 truth")

        if result.outcome is not None:
            result.verdict = result.outcome.verdict
            if self.options.write_reports:
                _write(result, self.implementation, self.options)
        if self.options.check_invalid:
            _search_invalid_calls(self.implementation, self.options, result)
        return result


def _add_note(result: ImplementationResult, note: str) -> None:
    result.note = f"{result.note}; {note}" if result.note else note


def fuzz_implementation(implementation: Implementation, options: FuzzOptions) -> ImplementationResult:
    """Search for a case where ``implementation`` disagrees with the truth, shrink it and report it."""
    from strategies import conv_cases

    strategy = conv_cases(supports=implementation.supports, **options.strategy)
    search = _Search(implementation, options)

    def check(case: ConvCase) -> None:
        if search.out_of_shrink_time(case):
            # Out of shrinking time: only cases that failed before (such as
            # the one Hypothesis finally replays) run again.
            hypothesis.reject()
        outcome = search.run(case)
        if not outcome.passed:
            raise search.fail(outcome)

    test = given(strategy)(check)
    test = _hypothesis_settings(options, _namespace(implementation))(test)
    if options.seed is not None:
        test = hypothesis.seed(options.seed)(test)

    started = time.perf_counter()
    try:
        _run_search(test, [search], lambda: search)
    finally:
        search.result.seconds = time.perf_counter() - started
        search.close()
    return search.finish()


def _run_search(test: Callable[[], None], searches: list[_Search], shrunk: Callable[[], Optional[_Search]]) -> None:
    """Run a Hypothesis test over ``searches``; ``shrunk()`` names the one whose failure it shrank, if any."""
    messages = _HypothesisMessages()
    try:
        with hypothesis.reporting.with_reporter(messages):
            test()
    except (ImplementationFailure, Flaky) as error:
        target = shrunk()
        if target is None:
            raise
        target.settle(error)
    except (Unsatisfiable, FailedHealthCheck):
        # Every case drawn was over the memory budget. Report that instead of
        # Hypothesis's message about a strategy that draws nothing valid.
        over_budget = next((search.over_budget[0] for search in searches if search.over_budget), None)
        if over_budget is None:
            raise
        raise over_budget from None
    target = shrunk()
    if target is not None and messages.slow_shrinking:
        target.slow_shrinking = True


def _generation_key(supports: Any) -> Any:
    """Return the part of a declaration that decides which cases are drawn: the bound's settings left out."""
    return dataclasses.replace(supports, error_model="elementwise", tolerance_factor=1.0)


def _fuzz_shared(implementations: list[Implementation], options: FuzzOptions,
                 on_result: Optional[Callable[[ImplementationResult], None]] = None) -> list[ImplementationResult]:
    """Fuzz implementations that declare the same space with one search, so every example feeds them all.

    Each case is drawn once, its inputs and float64 truth computed once, and
    every implementation that has budget left is run on it. The first
    implementation to fail is shrunk on its own: from then on the search runs
    only that implementation, so its failure cannot turn into another's. The
    others go on in a new search with the examples they have left.
    """
    from strategies import conv_cases

    strategy = conv_cases(supports=implementations[0].supports, **options.strategy)
    searches = [_Search(implementation, options) for implementation in implementations]
    namespace = "+".join(_namespace(implementation) for implementation in implementations)
    pending = list(searches)
    try:
        for round_index in itertools.count():
            if not any(search.budget_left > 0 for search in pending):
                break
            target = _shared_round(pending, strategy, options, namespace, round_index)
            if target is None:
                break
            pending.remove(target)
    finally:
        for search in searches:
            search.close()

    # Each result is passed on as soon as it is final, so that an error
    # writing a later report does not hide the results before it.
    results = []
    for search in searches:
        result = search.finish()
        if on_result is not None:
            on_result(result)
        results.append(result)
    return results


def _shared_round(pending: list[_Search], strategy: Any, options: FuzzOptions, namespace: str,
                  round_index: int) -> Optional[_Search]:
    """Run one shared search over ``pending``; return the implementation whose failure it shrank, if any."""
    shrinking: list[_Search] = []

    def check(case: ConvCase) -> None:
        failing = shrink_step(case) if shrinking else search_step(case)
        if failing is not None:
            # One raise statement: Hypothesis distinguishes failures by where
            # they are raised, and a search and its shrinking must agree.
            raise failing

    def shrink_step(case: ConvCase) -> Optional[ImplementationFailure]:
        search = shrinking[0]
        if search.out_of_shrink_time(case):
            hypothesis.reject()
        outcome = search.run(case)
        return None if outcome.passed else search.fail(outcome)

    def search_step(case: ConvCase) -> Optional[ImplementationFailure]:
        running = [search for search in pending if search.budget_left > 0]
        if not running:
            return None
        try:
            context = CaseContext(case, memory_budget=options.memory_budget)
        except MemoryBudgetError as error:
            for search in running:
                search.skip(error)
            hypothesis.reject()
        failing = []
        for search in running:
            outcome = search.run(case, context)
            if not outcome.passed:
                failing.append((search, outcome))
        if not failing:
            return None
        first, outcome = failing[0]
        for other, other_outcome in failing[1:]:
            # Kept in case the next search does not find this failure again.
            other.unshrunk = other.unshrunk or other_outcome
        shrinking.append(first)
        return first.fail(outcome)

    budget = max(search.budget_left for search in pending)
    # Each round keeps its examples under a key of its own, so a later round
    # does not replay, and then drop, the failure an earlier round saved.
    settings = hypothesis.settings(_hypothesis_settings(options, f"{namespace}#{round_index}"),
                                   max_examples=budget)
    test = settings(given(strategy)(check))
    if options.seed is not None:
        # Each round draws new cases, and the same seed still gives the same campaign.
        test = hypothesis.seed(options.seed + round_index)(test)

    _run_search(test, pending, lambda: shrinking[0] if shrinking else None)
    return shrinking[0] if shrinking else None


def _search_invalid_calls(implementation: Implementation, options: FuzzOptions, result: ImplementationResult) -> None:
    """Search invalid calls for one on which the implementation and torch disagree about raising; report it.

    A failure here becomes the result's outcome only when the value search
    passed, so a value failure stays the headline; its report is written
    either way.
    """
    from difftest.invalid import InvalidCall, evaluate_invalid
    from strategies import invalid_conv_calls

    narrowing = {key: value for key, value in options.strategy.items() if key in ("dtypes", "devices")}
    strategy = invalid_conv_calls(supports=implementation.supports, **narrowing)
    caller = caller_for(implementation, options.timeout, options.memory_budget)

    timeouts = _ShrinkTimeouts(options.max_shrink_timeouts)

    def check(call: InvalidCall) -> None:
        if timeouts.blocks(call):
            hypothesis.reject()
        result.invalid_examples += 1
        outcome = evaluate_invalid(implementation, call, caller=caller)
        if not outcome.passed:
            timeouts.record(call, outcome.verdict)
            raise ImplementationFailure(outcome)

    examples = options.invalid_examples or max(20, options.max_examples // 2)
    settings = hypothesis.settings(_hypothesis_settings(options, _namespace(implementation)), max_examples=examples)
    test = settings(given(strategy)(check))
    if options.seed is not None:
        test = hypothesis.seed(options.seed)(test)

    started = time.perf_counter()
    try:
        with hypothesis.reporting.with_reporter(_HypothesisMessages()):
            test()
    except ImplementationFailure as failure:
        result.invalid_outcome = failure.outcome
    finally:
        result.seconds += time.perf_counter() - started
        close = getattr(caller, "close", None)
        if close is not None:
            close()

    outcome = result.invalid_outcome
    if outcome is None:
        return
    if options.write_reports:
        data = report_dict(outcome, implementation)
        data["examples"] = result.invalid_examples
        data["timeout"] = options.timeout if implementation.isolate else None
        result.invalid_report, result.invalid_script = write_report(options.report_dir, data)
        logger.info("%s: %s on an invalid call, report %s", implementation.name, outcome.verdict,
                    result.invalid_report)
    if result.outcome is None:
        result.outcome = outcome
        result.verdict = outcome.verdict
        result.report, result.script = result.invalid_report, result.invalid_script


# Extra runs of a shrunk failure with check_determinism, to tell a wrong
# result from one that changes between calls.
_CONFIRM_RUNS = 3


def _flaky_outcome(flaky: Flaky, last_failure: list[Outcome]) -> Optional[Outcome]:
    """Return the failure Hypothesis could not reproduce, marked 'nondeterministic', or None without one."""
    outcome = None
    pending: list[BaseException] = [flaky]
    while pending and outcome is None:
        error = pending.pop()
        if isinstance(error, ImplementationFailure):
            outcome = error.outcome
        pending.extend(getattr(error, "exceptions", ()))
    if outcome is None and last_failure:
        outcome = last_failure[0]
    if outcome is None:
        return None
    outcome.detail = f"failed once and passed on a later call of the same case ({outcome.verdict}: {outcome.detail})"
    outcome.verdict = "nondeterministic"
    return outcome


def _confirm(implementation: Implementation, outcome: Outcome, options: FuzzOptions, caller: Any) -> Outcome:
    """Run a shrunk failure again; return it as 'nondeterministic' when a run gives another verdict or output."""
    if not options.check_determinism or outcome.verdict in ("crash", "timeout", "nondeterministic"):
        return outcome
    for _ in range(_CONFIRM_RUNS):
        again = evaluate(implementation, outcome.case, caller=caller, memory_budget=options.memory_budget)
        if again.verdict != outcome.verdict:
            outcome.detail = (f"the same case gave {outcome.verdict} ({outcome.detail}) and then {again.verdict}"
                              + (f" ({again.detail})" if again.detail else ""))
            outcome.verdict = "nondeterministic"
            return outcome
        if _outputs_differ(outcome.output, again.output):
            outcome.detail = f"the same case gave two different outputs, the first with {outcome.detail}"
            outcome.verdict = "nondeterministic"
            return outcome
    return outcome


def _outputs_differ(first: Any, second: Any) -> bool:
    if not isinstance(first, torch.Tensor) or not isinstance(second, torch.Tensor):
        return False
    if first.shape != second.shape or first.dtype != second.dtype or first.device != second.device:
        return True
    return not torch.equal(tensor_bits(first), tensor_bits(second))


def _write(result: ImplementationResult, implementation: Implementation, options: FuzzOptions) -> None:
    outcome = result.outcome
    assert outcome is not None
    extra: dict[str, Any] = {}
    context: Optional[CaseContext] = None
    if options.analyse:
        from difftest.analysis import analyse

        context = CaseContext(outcome.case)
        extra = analyse(outcome, implementation, context, options.report_dir, timeout=options.timeout,
                        memory_limit=options.memory_budget)
        result.analysis = extra
    if options.finish is not None:
        context = context or CaseContext(outcome.case)
        extra = {**extra, **(options.finish(outcome, implementation, context) or {})}
        result.analysis = extra
    data = report_dict(outcome, implementation, **extra)
    data["examples"] = result.examples
    data["shrink_steps"] = result.shrink_steps
    # Replay uses the same time limit, so a hang is not marked fixed under a longer one.
    data["timeout"] = options.timeout if implementation.isolate else None
    result.report, result.script = write_report(options.report_dir, data)
    logger.info("%s: %s, report %s", implementation.name, outcome.verdict, result.report)


def fuzz(implementations: Iterable[Implementation], options: FuzzOptions,
         on_result: Optional[Callable[[ImplementationResult], None]] = None) -> list[ImplementationResult]:
    """Fuzz the implementations; one failing never stops the others.

    Implementations that declare the same space (the same Supports, apart
    from the bound's error model and factor) share one search. Each case
    drawn feeds them all and its float64 truth is computed once, and each
    failure is still shrunk on its own. Results come back in the order given, and
    ``on_result`` is called as each implementation finishes.

    With several implementations, one that supports none of the dtypes or
    devices ``options.strategy`` narrows to is skipped with a note, so that
    ``--dtype float16`` fuzzes the built-ins that compute in float16. When
    that leaves none, the narrowing is a usage error.
    """
    implementations = list(implementations)
    outside = {implementation.name: narrowing_gap(implementation, options.strategy)
               for implementation in implementations}
    if implementations and all(outside.values()):
        first = outside[implementations[0].name]
        assert first is not None
        if len(implementations) == 1 and not first.requested_by_campaign:
            raise UsageError("implementation", implementations[0].name,
                             f"{first.supported()}, and this machine has {', '.join(first.requested)}",
                             f"run it where one of those {first.name} is present, or declare the {first.name} it "
                             "runs on in its difftest_supports")
        if len(implementations) == 1:
            raise UsageError(first.name, ", ".join(first.requested), f"{implementations[0].name} {first.supported()}",
                             f"pick {first.name} from {', '.join(first.allowed)}")
        raise UsageError(first.name, ", ".join(first.requested), "no selected implementation supports it",
                         f"pick {first.name} that one of {', '.join(outside)} supports")

    results: dict[int, ImplementationResult] = {}
    groups: dict[Any, list[int]] = {}
    for index, implementation in enumerate(implementations):
        narrowing = outside[implementation.name]
        if narrowing is None:
            groups.setdefault(_generation_key(implementation.supports), []).append(index)
            continue
        results[index] = ImplementationResult(implementation.name, verdict="skipped",
                                              expected_to_fail=implementation.expected_to_fail,
                                              note=narrowing.reason())
        if on_result is not None:
            on_result(results[index])

    for indices in groups.values():
        members = [implementations[index] for index in indices]
        if len(members) == 1:
            finished = [fuzz_implementation(members[0], options)]
            if on_result is not None:
                on_result(finished[0])
        else:
            finished = _fuzz_shared(members, options, on_result)
        for index, result in zip(indices, finished):
            results[index] = result
    return [results[index] for index in range(len(implementations))]


@dataclass(frozen=True)
class NarrowingGap:
    """A narrowing of a campaign (``name`` is 'dtypes' or 'devices') that leaves an implementation nothing."""

    name: str
    requested: tuple[str, ...]
    allowed: tuple[str, ...]
    # False when nothing was requested, so the request is every device present.
    requested_by_campaign: bool = True

    def supported(self) -> str:
        return f"supports {self.name} {', '.join(self.allowed) or 'none'} only"

    def reason(self) -> str:
        """Return why the implementation gets nothing, as 'supports dtypes float32 only, not float16'."""
        if self.requested_by_campaign:
            return f"{self.supported()}, not {', '.join(self.requested)}"
        return f"{self.supported()}, but this machine has only {', '.join(self.requested)}"


def narrowing_gap(implementation: Implementation, strategy: dict[str, Any]) -> Optional[NarrowingGap]:
    """Return the gap when the dtypes or devices in ``strategy`` (conv_cases arguments) leave ``implementation`` nothing.

    Without a 'devices' entry, the devices present on this machine are the
    request. Dtypes are listed in difftest.case.DTYPES order, devices sorted.
    """
    from strategies import available_devices, check_narrowing

    narrowing = {key: value for key, value in strategy.items() if key in ("dtypes", "devices") and value}
    try:
        check_narrowing(implementation.supports, **narrowing)
    except UsageError as error:
        if error.name not in ("dtypes", "devices"):
            raise
        requested = narrowing.get(error.name, available_devices())
        requested = (requested,) if isinstance(requested, str) else tuple(requested)
        supports = implementation.supports
        if error.name == "dtypes":
            allowed = tuple(dtype for dtype in DTYPES if dtype in supports.dtypes)
        else:
            allowed = tuple(sorted(supports.devices))
        return NarrowingGap(error.name, tuple(dict.fromkeys(requested)), allowed, error.name in narrowing)
    return None
