"""Run every correct built-in on many drawn cases and count failures.

Each implementation gets N cases (default 5000) drawn by strategies.conv_cases
within what it declares it supports: every dtype, value kind, layout and
option, about one case in eight a long reduction. Unlike ``difftest fuzz`` the
run does not stop at the first failure, so the count of failures is a rate.
Prints one row per implementation: examples, failures, the greatest error over
the bound, how many cases were long reductions or weak oracles, and seconds.

    python benchmarks/long_run.py [--examples 5000] [--seed 0] [--impl NAME ...] [--json PATH]

CPU-heavy: run it with ``nice`` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field

import hypothesis
from hypothesis import HealthCheck, Phase, given

from difftest.registry import Implementation, get
from difftest.compare import oracle_weakness
from difftest.runner import CaseContext, caller_for, evaluate

# A reduction at least this long counts as long in the summary.
LONG_REDUCTION = 1000

# Failures kept per implementation, with their case, for the report.
KEPT_FAILURES = 5


@dataclass
class RunResult:
    """What the long run saw for one implementation."""

    name: str
    examples: int = 0
    failures: int = 0
    long_reductions: int = 0
    weak_oracles: int = 0
    reference_suspects: int = 0
    worst_ratio: float = 0.0
    seconds: float = 0.0
    by_dtype: dict[str, int] = field(default_factory=dict)
    failed_cases: list[str] = field(default_factory=list)
    # Failures counted by "verdict dtype value-kind".
    failure_kinds: dict[str, int] = field(default_factory=dict)


def run_implementation(implementation: Implementation, examples: int, seed: int) -> RunResult:
    """Evaluate ``examples`` drawn cases on ``implementation`` without stopping at failures."""
    from strategies import conv_cases

    result = RunResult(implementation.name)
    caller = caller_for(implementation)

    def check(case) -> None:
        context = CaseContext(case)
        outcome = evaluate(implementation, case, context, caller=caller)
        result.examples += 1
        result.by_dtype[case.dtype] = result.by_dtype.get(case.dtype, 0) + 1
        if case.reduction_length >= LONG_REDUCTION:
            result.long_reductions += 1
        if outcome.bound is not None and oracle_weakness(context.truth, outcome.bound):
            result.weak_oracles += 1
        if outcome.reference_suspect:
            result.reference_suspects += 1
        ratio = outcome.implementation_error.get("max_error_over_bound", 0.0)
        if not outcome.exact and not math.isnan(ratio) and not math.isinf(ratio):
            result.worst_ratio = max(result.worst_ratio, ratio)
        if not outcome.passed:
            result.failures += 1
            kind = f"{outcome.verdict} {case.dtype} {case.values}"
            result.failure_kinds[kind] = result.failure_kinds.get(kind, 0) + 1
            if len(result.failed_cases) < KEPT_FAILURES:
                note = f" [{outcome.reference_suspect}]" if outcome.reference_suspect else ""
                result.failed_cases.append(f"{outcome.verdict} on {case.describe()}: {outcome.detail}{note}")

    settings = hypothesis.settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
                                   suppress_health_check=list(HealthCheck))
    test = hypothesis.seed(seed)(settings(given(conv_cases(supports=implementation.supports))(check)))
    started = time.perf_counter()
    test()
    result.seconds = time.perf_counter() - started
    return result


def main() -> int:
    from difftest import builtins

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=5000, metavar="N", help="cases per implementation")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed (default 0)")
    parser.add_argument("--impl", action="append", default=None, metavar="NAME",
                        help="built-in to run (repeatable; default every correct built-in)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    arguments = parser.parse_args()
    warnings.filterwarnings("ignore")

    names = arguments.impl or list(builtins.CORRECT)
    header = f"{'implementation':<22}{'examples':>9}{'failures':>9}{'worst':>9}{'long':>6}{'weak':>6}{'suspect':>8}{'seconds':>9}"
    print(header, flush=True)
    results = []
    for name in names:
        result = run_implementation(get(name), arguments.examples, arguments.seed)
        results.append(result)
        print(f"{result.name:<22}{result.examples:>9}{result.failures:>9}{result.worst_ratio:>9.3g}"
              f"{result.long_reductions:>6}{result.weak_oracles:>6}{result.reference_suspects:>8}"
              f"{result.seconds:>9.0f}", flush=True)
        for kind, count in sorted(result.failure_kinds.items()):
            print(f"    {count} x {kind}", flush=True)
        for line in result.failed_cases:
            print(f"    {line}", flush=True)
    if arguments.json:
        with open(arguments.json, "w", encoding="utf-8") as stream:
            json.dump([asdict(result) for result in results], stream, indent=2)
    return 1 if any(result.failures for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
