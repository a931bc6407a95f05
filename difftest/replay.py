"""Replay saved reports: rebuild each case, run the implementation again and record whether it is fixed.

A report that cannot be replayed (torn, edited by hand into something
invalid, naming an implementation that does not import here) gives a
ReportError naming the file and the field, and never stops the replay of the
other reports.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Any, Optional

from difftest.case import ConvCase
from difftest.errors import DifftestError, MemoryBudgetError, ReportError, UsageError, WriteError
from difftest.errors import _byte_count as byte_count
from difftest.invalid import InvalidCall, evaluate_invalid
from difftest.registry import Implementation, Supports, import_target
from difftest.reports import check_report, load_report, mark_status, report_dict
from difftest._memory import default_memory_budget
from difftest.runner import CaseContext, Outcome, caller_for, evaluate

__all__ = ["ReplayResult", "replay_data", "replay_path", "replay_paths", "find_reports"]

# Shown in place of a file name for a report that was not read from a file.
_NO_PATH = "(report)"

# The fix offered for an implementation target that does not import.
_TARGET_FIX = ("make it importable here (install its package or add its folder to PYTHONPATH) "
               "or correct the target to MODULE:FUNCTION or path/to/file.py:FUNCTION")


@dataclass
class ReplayResult:
    """The replay of one report file: 'reproduces', 'fixed' or 'invalid'.

    ``write_error`` is the error that kept the new status from being saved in
    the file. The status is then the replay's, not the file's.
    """

    path: str
    status: str
    outcome: Optional[Outcome] = None
    error: Optional[str] = None
    name: str = ""
    write_error: Optional[WriteError] = None


def implementation_from_report(data: dict[str, Any], path: str = _NO_PATH) -> Implementation:
    """Import the implementation a report names; raise ReportError naming ``path`` and the field at fault."""
    recorded = data["implementation"]
    target = recorded["target"]
    try:
        function = import_target(target)
    except UsageError as error:
        raise ReportError(path, "implementation.target", f"is {target!r}, which does not load: {error.reason}. "
                          f"{_TARGET_FIX}") from None
    try:
        declared = Supports(**dict(recorded.get("supports") or {}))
    except (TypeError, UsageError) as error:
        raise ReportError(path, "implementation.supports", f"is invalid: {error}") from None
    return Implementation(recorded["name"], function, declared, target=target,
                          isolate=bool(recorded.get("isolate", False)))


# Seconds an isolated implementation may take per call during a replay, so a
# report of a hang is confirmed instead of hanging the replay.
REPLAY_TIMEOUT = 60.0


def _timeout(data: dict[str, Any], label: str) -> float:
    """Return the time limit per call the report was found under, or REPLAY_TIMEOUT for a report without one.

    A hang found with a short limit is a hang again only under that limit.
    """
    from difftest.isolation import MAX_TIMEOUT

    recorded = data.get("timeout")
    if recorded is None:
        return REPLAY_TIMEOUT
    if isinstance(recorded, bool) or not isinstance(recorded, (int, float)) or not 0 < recorded <= MAX_TIMEOUT:
        raise ReportError(label, "timeout", f"is {recorded!r}, expected seconds above 0 and at most {MAX_TIMEOUT} "
                                            "or null")
    return float(recorded)


def replay_data(data: dict[str, Any], path: Optional[str] = None) -> tuple[Outcome, dict[str, Any]]:
    """Run a report's case again; return the outcome and a report of it.

    ``path`` names the report in errors: every problem with the report is a
    ReportError naming it and the field at fault, never a raw error of torch.
    """
    label = path or _NO_PATH
    check_report(data, label)
    implementation = implementation_from_report(data, label)
    _check_device(data, label)
    try:
        # The same memory limit as a campaign's default, so replaying a report
        # of an unbounded allocation cannot take the machine down.
        caller = caller_for(implementation, _timeout(data, label), default_memory_budget())
        if data.get("invalid_call") is not None:
            call = InvalidCall.from_dict(data["invalid_call"])
            invalid = evaluate_invalid(implementation, call, caller=caller)
            return invalid, report_dict(invalid, implementation, diagnosis=_diagnosis(invalid, data),
                                        reproduce=data.get("reproduce"))
        case = ConvCase.from_dict(data["case"])
        context = _context(case, data.get("inputs"), label)
        outcome = evaluate(implementation, case, context, caller=caller)
    except UsageError as error:
        # Raised by an isolated caller whose worker process cannot import the target.
        raise ReportError(label, "implementation.target", f"is {implementation.target!r}, which a worker process "
                          f"cannot import: {error.reason}. {_TARGET_FIX}") from None
    fresh = report_dict(outcome, implementation, inputs=data.get("inputs"), diagnosis=_diagnosis(outcome, data),
                        reproduce=data.get("reproduce"), timeout=data.get("timeout"))
    return outcome, fresh


def _diagnosis(outcome: Any, data: dict[str, Any]) -> Optional[dict[str, Any]]:
    """Return the saved report's diagnosis while the failure persists; a passing replay has none."""
    return None if outcome.passed else data.get("diagnosis")


def _check_device(data: dict[str, Any], path: str) -> None:
    from strategies import available_devices

    field = "invalid_call" if data.get("invalid_call") is not None else "case"
    device = data[field].get("device", "cpu")
    if isinstance(device, str) and device.split(":")[0] not in available_devices():
        raise ReportError(path, f"{field}.device", f"is {device!r}, which this machine does not have. "
                          "replay the report on a machine with that device")


def _context(case: ConvCase, literal: Optional[dict[str, Any]], path: str) -> CaseContext:
    """Build the case's inputs and float64 truth; raise ReportError where torch rejects the report's fields."""
    try:
        return CaseContext(case, literal=literal, memory_budget=default_memory_budget())
    except MemoryBudgetError as error:
        raise ReportError(path, "case", f"needs an estimated {byte_count(error.needed)}, more than the memory "
                          f"budget of {byte_count(error.budget)} (half the physical memory). replay it on a machine "
                          "with more memory") from None
    except DifftestError:
        raise
    except Exception as error:  # torch's error, which names no field of the report
        field = "inputs" if literal is not None else "case"
        lines = str(error).strip().splitlines()
        raise ReportError(path, field, f"makes torch raise {type(error).__name__}: "
                          f"{lines[0] if lines else ''}. restore the fields edited by hand") from None


def replay_path(path: str, *, update: bool = True) -> ReplayResult:
    """Replay one report file; with ``update`` mark it 'fixed' or 'open' in place.

    A report that cannot be replayed gives status 'invalid' and the reason in
    ``error``. A file that cannot be rewritten keeps its old status, and the
    reason is in ``write_error``.
    """
    try:
        data = load_report(path)
        outcome, _ = replay_data(data, path)
    except DifftestError as error:
        return ReplayResult(path, "invalid", error=str(error))
    except Exception as error:
        # One report that breaks the replay must not stop the others.
        return ReplayResult(path, "invalid", error=f"invalid report {path}: replaying it failed with "
                                                   f"{type(error).__name__}: {error}")
    result = ReplayResult(path, "fixed" if outcome.passed else "reproduces", outcome,
                          name=data["implementation"]["name"])
    if update:
        try:
            mark_status(path, data, "fixed" if outcome.passed else "open", outcome)
        except WriteError as error:
            result.write_error = error
    return result


def find_reports(paths: list[str]) -> list[str]:
    """Expand folders into the JSON reports they hold; raise UsageError for a path that does not exist."""
    found: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            # glob skips names that start with a dot, so the .tmp-* files a
            # killed run can leave behind (see difftest._atomic) are never read.
            found.extend(sorted(glob.glob(os.path.join(path, "*.json"))))
        elif path.endswith(".py") and os.path.isfile(path[: -len(".py")] + ".json"):
            # The reproduction script next to a report: the report is what replays.
            raise UsageError("PATH", path, "is a reproduction script, not a report",
                             f"pass {path[: -len('.py')]}.json, or run the script itself with python")
        elif os.path.exists(path):
            found.append(path)
        else:
            raise UsageError("PATH", path, "not found", "pass report files (*.json) or the folder holding them")
    return found


def replay_paths(paths: list[str], *, update: bool = True) -> list[ReplayResult]:
    return [replay_path(path, update=update) for path in find_reports(paths)]
