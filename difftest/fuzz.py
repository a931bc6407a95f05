"""A fuzzing campaign: one Hypothesis search and shrink per implementation."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import hypothesis
from hypothesis import HealthCheck, given
from hypothesis.database import ExampleDatabase
from hypothesis.errors import Flaky

from difftest.case import ConvCase
from difftest.registry import Implementation
from difftest.reports import report_dict, write_report
from difftest.runner import CaseContext, Outcome, caller_for, evaluate

__all__ = ["FuzzOptions", "ImplementationResult", "ImplementationFailure", "fuzz", "fuzz_implementation"]

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
    failure again, never the record: reports are). ``strategy`` holds keyword
    arguments for :func:`strategies.conv_cases`.
    """

    max_examples: int = 100
    seed: Optional[int] = None
    report_dir: str = "reports"
    database: Optional[ExampleDatabase] = None
    profile: Optional[str] = None
    check_determinism: bool = False
    timeout: Optional[float] = None
    strategy: dict[str, Any] = field(default_factory=dict)
    write_reports: bool = True
    on_example: Optional[Callable[[Outcome], None]] = None
    finish: Optional[Callable[[Outcome, Implementation, CaseContext], dict[str, Any]]] = None


@dataclass
class ImplementationResult:
    """What a campaign found for one implementation."""

    name: str
    examples: int = 0
    verdict: str = "pass"
    outcome: Optional[Outcome] = None
    report: Optional[str] = None
    script: Optional[str] = None
    seconds: float = 0.0
    expected_to_fail: bool = False
    note: str = ""
    analysis: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.verdict != "pass"

    @property
    def as_expected(self) -> bool:
        return self.failed == self.expected_to_fail


def _hypothesis_settings(options: FuzzOptions, implementation: Implementation) -> hypothesis.settings:
    parent = hypothesis.settings.get_profile(options.profile) if options.profile else hypothesis.settings()
    database = None
    if options.database is not None:
        database = _NamespacedDatabase(options.database, implementation.target or implementation.name)
    return hypothesis.settings(
        parent,
        max_examples=options.max_examples,
        database=database,
        deadline=None,
        derandomize=False,
        report_multiple_bugs=False,
        print_blob=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def fuzz_implementation(implementation: Implementation, options: FuzzOptions) -> ImplementationResult:
    """Search for a case where ``implementation`` disagrees with the truth, shrink it and report it."""
    from strategies import conv_cases

    result = ImplementationResult(implementation.name, expected_to_fail=implementation.expected_to_fail)
    strategy = conv_cases(supports=implementation.supports, **options.strategy)
    caller = caller_for(implementation, options.timeout)
    last_failure: list[Outcome] = []

    def check(case: ConvCase) -> None:
        result.examples += 1
        outcome = evaluate(implementation, case, check_determinism=options.check_determinism, caller=caller)
        if options.on_example is not None:
            options.on_example(outcome)
        if not outcome.passed:
            last_failure[:] = [outcome]
            raise ImplementationFailure(outcome)

    test = given(strategy)(check)
    test = _hypothesis_settings(options, implementation)(test)
    if options.seed is not None:
        test = hypothesis.seed(options.seed)(test)

    started = time.perf_counter()
    try:
        test()
    except ImplementationFailure as failure:
        result.outcome = failure.outcome
    except Flaky:
        # The same case passed once and failed once: the implementation answers differently on repeated calls.
        if last_failure:
            outcome = last_failure[0]
            outcome.detail = f"failed once and passed once on the same case ({outcome.verdict}: {outcome.detail})"
            outcome.verdict = "nondeterministic"
            result.outcome = outcome
    finally:
        result.seconds = time.perf_counter() - started

    if result.outcome is not None:
        result.verdict = result.outcome.verdict
        if options.write_reports:
            _write(result, implementation, options)
    return result


def _write(result: ImplementationResult, implementation: Implementation, options: FuzzOptions) -> None:
    outcome = result.outcome
    assert outcome is not None
    extra: dict[str, Any] = {}
    if options.finish is not None:
        context = CaseContext(outcome.case)
        extra = options.finish(outcome, implementation, context) or {}
        result.analysis = extra
    data = report_dict(outcome, implementation, **extra)
    data["examples"] = result.examples
    result.report, result.script = write_report(options.report_dir, data)
    logger.info("%s: %s, report %s", implementation.name, outcome.verdict, result.report)


def fuzz(implementations: Iterable[Implementation], options: FuzzOptions,
         on_result: Optional[Callable[[ImplementationResult], None]] = None) -> list[ImplementationResult]:
    """Fuzz each implementation in turn; one failing never stops the others."""
    results = []
    for implementation in implementations:
        result = fuzz_implementation(implementation, options)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results
