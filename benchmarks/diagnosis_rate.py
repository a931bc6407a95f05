"""Measure how often difftest names the right mistake on its own deliberately wrong set.

Every implementation in tests/wrong that has an expected diagnosis (the
crashing and hanging ones have none) is checked two ways:

- on its trigger case: the diagnosis of that one failing case;
- end to end: ``difftest.fuzz`` searches from scratch with each seed, shrinks
  the failure it finds and reduces its inputs, and the report's diagnosis is
  compared with the expected one.

Prints one row per implementation and the two rates. A row marks each seed
whose report names another diagnosis, or none.

    python benchmarks/diagnosis_rate.py [--seeds 3] [--max-examples 100] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from typing import Any, Callable, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from difftest import FuzzOptions, fuzz_implementation  # noqa: E402
from difftest.case import ConvCase  # noqa: E402
from difftest.diagnose import diagnose  # noqa: E402
from difftest.registry import Implementation, register, unregister  # noqa: E402
from difftest.runner import CaseContext, evaluate  # noqa: E402
from tests.wrong import ALL, broken  # noqa: E402

# The crashing, hanging and allocating functions must run in a worker, and none has a diagnosis.
DIAGNOSED = [function for function in ALL
             if function not in broken.IMPLEMENTATIONS and function.expected_diagnosis is not None]


def _implementation(function: Callable[..., Any]) -> Implementation:
    return register(f"rate_{function.bug_class}", function, **function.difftest_supports)


def trigger_diagnosis(implementation: Implementation, function: Callable[..., Any]) -> Optional[str]:
    """Return the diagnosis id of ``function``'s trigger case: None when nothing matched, 'passed' when it passed."""
    case = ConvCase(**function.trigger)
    context = CaseContext(case)
    outcome = evaluate(implementation, case, context)
    if outcome.passed:
        return "passed"
    diagnosis = diagnose(outcome, case, context, implementation)
    return None if diagnosis is None else diagnosis.id


def fuzzed_diagnosis(implementation: Implementation, seed: int, max_examples: int, folder: str) -> Optional[str]:
    """Return the diagnosis id of the failure one seeded campaign finds, shrinks and reduces.

    None means no hypothesis matched, and 'not found' that the search found no failure.
    """
    options = FuzzOptions(max_examples=max_examples, seed=seed, report_dir=folder, check_invalid=False)
    result = fuzz_implementation(implementation, options)
    if not result.failed:
        return "not found"
    return (result.analysis.get("diagnosis") or {}).get("id")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="campaigns per implementation (seeds 0 to N-1)")
    parser.add_argument("--max-examples", type=int, default=100, help="examples per campaign")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
    arguments = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Using padding='same'")

    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for function in DIAGNOSED:
            implementation = _implementation(function)
            try:
                trigger = trigger_diagnosis(implementation, function)
                fuzzed = [fuzzed_diagnosis(implementation, seed, arguments.max_examples, folder)
                          for seed in range(arguments.seeds)]
            finally:
                unregister(implementation.name)
            rows.append({"bug_class": function.bug_class, "expected": function.expected_diagnosis,
                         "trigger": trigger, "fuzzed": fuzzed})
    seconds = time.perf_counter() - started

    print(f"{'bug class':<34} {'expected':<26} {'trigger':<7} end to end")
    for row in rows:
        trigger_mark = "ok" if row["trigger"] == row["expected"] else str(row["trigger"])
        fuzzed_marks = ["ok" if got == row["expected"] else str(got) for got in row["fuzzed"]]
        print(f"{row['bug_class']:<34} {row['expected']:<26} {trigger_mark:<7} {', '.join(fuzzed_marks)}")

    trigger_right = sum(row["trigger"] == row["expected"] for row in rows)
    fuzzed_right = sum(got == row["expected"] for row in rows for got in row["fuzzed"])
    campaigns = sum(len(row["fuzzed"]) for row in rows)
    print()
    print(f"trigger cases: {trigger_right} of {len(rows)} named right")
    print(f"end to end:    {fuzzed_right} of {campaigns} campaigns named right "
          f"({arguments.seeds} seeds, {arguments.max_examples} examples each)")
    print(f"{seconds:.0f} s, torch {torch.__version__}, one intra-op thread")
    if arguments.json:
        with open(arguments.json, "w", encoding="utf-8") as stream:
            json.dump({"rows": rows, "seconds": seconds}, stream, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
