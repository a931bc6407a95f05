"""Replay saved reports: rebuild each case, run the implementation again and record whether it is fixed."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Any, Optional

from difftest.case import ConvCase
from difftest.errors import DifftestError, ReportError, UsageError
from difftest.invalid import InvalidCall, evaluate_invalid
from difftest.registry import Implementation, Supports, import_target
from difftest.reports import load_report, mark_status, report_dict
from difftest._memory import default_memory_budget
from difftest.runner import CaseContext, Outcome, caller_for, evaluate

__all__ = ["ReplayResult", "replay_data", "replay_path", "replay_paths", "find_reports"]


@dataclass
class ReplayResult:
    """The replay of one report file: 'reproduces', 'fixed' or 'invalid'."""

    path: str
    status: str
    outcome: Optional[Outcome] = None
    error: Optional[str] = None
    name: str = ""


def implementation_from_report(data: dict[str, Any]) -> Implementation:
    recorded = data["implementation"]
    function = import_target(recorded["target"])
    supports = dict(recorded.get("supports") or {})
    try:
        declared = Supports(**supports)
    except TypeError as error:
        raise ReportError(data.get("_path", "report"), "implementation.supports", f"is invalid: {error}") from None
    return Implementation(recorded["name"], function, declared, target=recorded["target"],
                          isolate=bool(recorded.get("isolate", False)))


# Seconds an isolated implementation may take per call during a replay, so a
# report of a hang is confirmed instead of hanging the replay.
REPLAY_TIMEOUT = 60.0


def replay_data(data: dict[str, Any]) -> tuple[Outcome, dict[str, Any]]:
    """Run a report's case again; return the outcome and a report of it."""
    implementation = implementation_from_report(data)
    # The same memory limit as a campaign's default, so replaying a report of
    # an unbounded allocation cannot take the machine down.
    caller = caller_for(implementation, REPLAY_TIMEOUT, default_memory_budget())
    if data.get("invalid_call") is not None:
        call = InvalidCall.from_dict(data["invalid_call"])
        invalid = evaluate_invalid(implementation, call, caller=caller)
        return invalid, report_dict(invalid, implementation, diagnosis=data.get("diagnosis"),
                                    reproduce=data.get("reproduce"))
    case = ConvCase.from_dict(data["case"])
    context = CaseContext(case, literal=data.get("inputs"))
    outcome = evaluate(implementation, case, context, caller=caller)
    fresh = report_dict(outcome, implementation, inputs=data.get("inputs"), diagnosis=data.get("diagnosis"),
                        reproduce=data.get("reproduce"))
    return outcome, fresh


def replay_path(path: str, *, update: bool = True) -> ReplayResult:
    """Replay one report file; with ``update`` mark it 'fixed' or 'open' in place."""
    try:
        data = load_report(path)
        outcome, _ = replay_data(data)
    except (DifftestError, ValueError) as error:
        return ReplayResult(path, "invalid", error=str(error))
    except Exception as error:
        # One report that breaks the replay must not stop the others.
        return ReplayResult(path, "invalid", error=f"replaying {path} failed: {type(error).__name__}: {error}")
    status = "fixed" if outcome.passed else "reproduces"
    if update:
        mark_status(path, data, "fixed" if outcome.passed else "open", outcome)
    return ReplayResult(path, status, outcome, name=data["implementation"]["name"])


def find_reports(paths: list[str]) -> list[str]:
    """Expand folders into the JSON reports they hold; raise UsageError for a path that does not exist."""
    found: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            # glob skips names that start with a dot, so the .tmp-* files a
            # killed run can leave behind (see difftest._atomic) are never read.
            found.extend(sorted(glob.glob(os.path.join(path, "*.json"))))
        elif os.path.exists(path):
            found.append(path)
        else:
            raise UsageError("PATH", path, "not found", "pass report files (*.json) or the folder holding them")
    return found


def replay_paths(paths: list[str], *, update: bool = True) -> list[ReplayResult]:
    return [replay_path(path, update=update) for path in find_reports(paths)]
