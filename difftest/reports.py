"""Failure reports: a JSON record and a standalone reproduction script per shrunk failure.

Files are written whole (temporary name, then rename) under names derived
from their content, so parallel workers never overwrite each other and a run
killed at any moment leaves only whole reports behind.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import os
import platform
import re
import shlex
import tempfile
import uuid
from typing import Any, Optional

import torch

from difftest._atomic import write_atomic
from difftest.case import ConvCase
from difftest.errors import ReportError, UsageError, WriteError
from difftest.invalid import InvalidCall, InvalidOutcome, invalid_report_fields
from difftest.registry import Implementation
from difftest.runner import VERDICTS, Outcome

__all__ = [
    "FORMAT",
    "VERSION",
    "RUN_ID",
    "worker_id",
    "versions",
    "report_dict",
    "write_report",
    "load_report",
    "check_report",
    "STATUSES",
    "ensure_report_dir",
    "report_paths",
]

logger = logging.getLogger(__name__)

FORMAT = "difftest-report"
VERSION = 1

# Identifies the run that wrote a report; pytest-xdist workers of one run share
# the controller's testrunuid when there is one.
RUN_ID = os.environ.get("PYTEST_XDIST_TESTRUNUID") or uuid.uuid4().hex[:12]

# Fields a report must have, with their JSON types, checked on load.
REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "version": int,
    "implementation": dict,
    "case": dict,
    "verdict": str,
    "status": str,
}


# A report is 'open' until a replay finds the implementation agrees with the truth, then 'fixed'.
STATUSES = ("open", "fixed")


def worker_id() -> str:
    """Return the pytest-xdist worker id (gw0, gw1, ...) or 'main' outside xdist."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def versions() -> dict[str, str]:
    import hypothesis

    from difftest import __version__

    return {
        "difftest": __version__,
        "torch": torch.__version__,
        "hypothesis": hypothesis.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def ensure_report_dir(path: str) -> str:
    """Create the report folder if needed and check it is writable; raise UsageError if not."""
    blocker = _file_in_the_way(path)
    if blocker == os.path.abspath(path):
        raise UsageError("--report-dir", path, "is a file, not a folder", "pass a folder you can write to")
    if blocker is not None:
        raise UsageError("--report-dir", path, f"cannot be created because {blocker} is a file",
                         "pass a folder you can write to")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise UsageError("--report-dir", path, f"cannot be created ({error.strerror})",
                         "pass a folder you can write to") from None
    # A trial file is more reliable than os.access, which returns true for
    # root everywhere. TemporaryFile has no name on Linux (O_TMPFILE), so a run
    # killed here leaves nothing behind.
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise UsageError("--report-dir", path, f"is not writable ({error.strerror})",
                         "pass a folder you can write to") from None
    return path


def _file_in_the_way(path: str) -> Optional[str]:
    """Return ``path`` or its nearest existing parent when that is not a folder, else None."""
    current = os.path.abspath(path)
    while not os.path.exists(current):
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent
    return None if os.path.isdir(current) else current


def report_dict(outcome: Outcome, implementation: Implementation, **extra: Any) -> dict[str, Any]:
    """Return the JSON-ready report of one failing outcome."""
    comparison = outcome.comparison.to_dict() if outcome.comparison else None
    bound = None
    if outcome.bound is not None:
        bound = {
            "model": outcome.bound.model,
            "unit_roundoff": outcome.bound.unit_roundoff,
            "accumulation_dtype": outcome.bound.accumulation_dtype,
            "reduction_length": outcome.bound.reduction_length,
            "factor": outcome.bound.factor,
            "explanation": outcome.bound.explain(),
        }
    data: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "status": "open",
        "implementation": {
            "name": implementation.name,
            "target": implementation.target,
            "isolate": implementation.isolate,
            "supports": implementation.supports.to_dict(),
        },
        "case": outcome.case.to_dict(),
        "case_descriptor": outcome.case.describe(),
        "case_call": outcome.case.as_call(),
        "verdict": outcome.verdict,
        "detail": outcome.detail,
        "exception": outcome.exception,
        "exact": outcome.exact,
        "comparison": comparison,
        "bound": bound,
        "accuracy": {
            "implementation": outcome.implementation_error,
            "torch": outcome.torch_error,
            "ratio": outcome.accuracy_ratio(),
            "summary": outcome.accuracy_text(),
        },
        "reference_suspect": outcome.reference_suspect,
        "weak_oracle": outcome.weak_oracle,
        "inputs": None,
        "diagnosis": None,
        "run_id": RUN_ID,
        "worker": worker_id(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    if isinstance(outcome, InvalidOutcome):
        data.update(invalid_report_fields(outcome))
    data.update(extra)
    return data


def _content_name(data: dict[str, Any]) -> str:
    """Return a file stem derived from what failed, where and how, never from when."""
    key = json.dumps({"target": data["implementation"]["target"], "case": data["case"],
                      "verdict": data["verdict"], "inputs": data.get("inputs"),
                      "invalid_call": data.get("invalid_call")}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    name = data["implementation"]["name"]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return f"{safe}--{data['verdict']}--{digest}"


def report_paths(report_dir: str, data: dict[str, Any]) -> tuple[str, str]:
    stem = _content_name(data)
    return os.path.join(report_dir, stem + ".json"), os.path.join(report_dir, stem + ".py")


def write_report(report_dir: str, data: dict[str, Any]) -> tuple[str, str]:
    """Write the JSON report and its reproduction script; return both paths.

    The script is written first, so a JSON report never points at a missing
    script. Writing the same failure twice gives the same names and the same
    content, so two workers that find it do not collide. When the folder
    cannot be written, the report is logged as an error before UsageError or
    WriteError is raised, so the failure found is not lost with the file.
    """
    from difftest.script import render_script

    json_path, script_path = report_paths(report_dir, data)
    data = plain(data)
    data["script"] = os.path.basename(script_path)
    # Quoted, so that a report folder with spaces or quotes in its path still gives a command that runs.
    data["reproduce"] = f"python {shlex.quote(script_path)}"
    text = json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n"
    try:
        ensure_report_dir(report_dir)
        write_atomic(script_path, render_script(data), mode=0o755)
        write_atomic(json_path, text)
    except (UsageError, WriteError) as error:
        logger.error("cannot write the report %s (%s); its content follows:\n%s", json_path, error, text)
        raise
    return json_path, script_path


def plain(value: Any) -> Any:
    """Return ``value`` as plain JSON data: non-finite floats become the strings 'nan', 'inf', '-inf'."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted(plain(item) for item in value)
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, torch.Tensor):
        return plain(value.tolist())
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float):
        return repr(value)
    raise TypeError(f"cannot store {type(value).__name__} in a report")


def load_report(path: str) -> dict[str, Any]:
    """Read and check a saved report; raise ReportError naming the file and the bad field."""
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except FileNotFoundError:
        raise ReportError(path, "(file)", "cannot be read: file not found") from None
    except IsADirectoryError:
        raise ReportError(path, "(file)", "cannot be read: it is a folder") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ReportError(path, "(file)", f"cannot be read: {error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ReportError(path, "(json)", f"is not valid JSON at line {error.lineno} column {error.colno}: "
                          f"{error.msg}") from None
    check_report(data, path)
    return data


def check_report(data: Any, path: str) -> None:
    """Check the fields of a report read from ``path``; raise ReportError naming the file and the first bad field.

    Reports are often edited by hand, so every field a replay reads is
    checked here: the verdict and status are known words, the case is a call
    torch's conv2d accepts, and literal inputs have the case's shapes. Whether
    the implementation imports and the device exists is checked when the
    report is replayed (difftest.replay), because a report stays readable on a
    machine without them.
    """
    if not isinstance(data, dict):
        raise ReportError(path, "(json)", "is not a JSON object")
    invalid_call = data.get("invalid_call")
    for field, kind in REQUIRED_FIELDS.items():
        if field not in data:
            raise ReportError(path, field, "is missing")
        if field == "case" and invalid_call is not None:
            # An invalid-call report has no valid case; its call is checked below.
            continue
        if not isinstance(data[field], kind):
            raise ReportError(path, field, f"has type {type(data[field]).__name__}, expected {getattr(kind, '__name__', kind)}")
    if data["format"] != FORMAT:
        raise ReportError(path, "format", f"is {data['format']!r}, expected {FORMAT!r}")
    if data["version"] > VERSION:
        raise ReportError(path, "version", f"is {data['version']}, newer than this difftest reads ({VERSION})")
    if data["verdict"] not in VERDICTS:
        raise ReportError(path, "verdict", f"is {data['verdict']!r}, not a known verdict. use one of "
                          f"{', '.join(VERDICTS)}")
    if data["status"] not in STATUSES:
        raise ReportError(path, "status", f"is {data['status']!r}, expected {' or '.join(map(repr, STATUSES))}")
    _check_implementation(data["implementation"], path)
    if invalid_call is not None:
        try:
            InvalidCall.from_dict(invalid_call)
        except (UsageError, TypeError, ValueError, AttributeError) as error:
            raise ReportError(path, "invalid_call", f"is invalid: {error}") from None
        return
    case = _check_case(data["case"], path)
    inputs = data.get("inputs")
    if inputs is not None:
        _check_inputs(inputs, case, path)


def _check_implementation(recorded: dict[str, Any], path: str) -> None:
    for field in ("name", "target"):
        if not isinstance(recorded.get(field), str) or not recorded[field]:
            raise ReportError(path, f"implementation.{field}", "is missing or not a string")
    if not isinstance(recorded.get("isolate", False), bool):
        raise ReportError(path, "implementation.isolate", f"is {recorded['isolate']!r}, expected true or false")
    if not isinstance(recorded.get("supports") or {}, dict):
        raise ReportError(path, "implementation.supports", f"has type {type(recorded['supports']).__name__}, "
                          "expected an object")


_DEVICE = re.compile(r"(cpu|cuda|mps)(:[0-9]+)?")


def _check_case(fields: dict[str, Any], path: str) -> ConvCase:
    """Return the report's case; raise ReportError where a field is invalid or torch's conv2d rejects the call."""
    try:
        case = ConvCase.from_dict(fields)
    except (UsageError, TypeError, ValueError) as error:
        raise ReportError(path, "case", f"is invalid: {error}") from None
    # ConvCase leaves these unchecked, and a wrong one reaches torch as a raw error.
    if not isinstance(case.seed, int) or isinstance(case.seed, bool) or case.seed < 0:
        raise ReportError(path, "case.seed", f"is {case.seed!r}, expected an int of 0 or more")
    for name in ("bias", "unbatched"):
        if not isinstance(getattr(case, name), bool):
            raise ReportError(path, f"case.{name}", f"is {getattr(case, name)!r}, expected true or false")
    if not isinstance(case.device, str) or not _DEVICE.fullmatch(case.device):
        raise ReportError(path, "case.device", f"is {case.device!r}, expected cpu, cuda or mps, "
                          "with an optional :INDEX")
    if not case.is_valid():
        raise ReportError(path, "case", f"is not a call torch's conv2d accepts: {_rejection(case)}. "
                          "restore the fields edited by hand")
    return case


def _rejection(case: ConvCase) -> str:
    """Return why torch's conv2d rejects ``case``, in torch's words when running it on the case raises."""
    from difftest._memory import default_memory_budget, estimate_case_bytes
    from difftest.reference import reference
    from difftest.values import make_inputs

    budget = default_memory_budget()
    try:
        too_large = budget is not None and estimate_case_bytes(case) > budget
    except ArithmeticError:
        # A stride of 0 leaves the output size undefined, and torch's own error reports that.
        too_large = False
    if case.device != "cpu" or too_large:
        return "ConvCase.is_valid is false"
    try:
        reference(case, make_inputs(case))
    except Exception as error:  # any error of torch is the reason sought
        return f"torch raises {type(error).__name__}: {_first_line(error)}"
    return "ConvCase.is_valid is false"


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _check_inputs(inputs: Any, case: ConvCase, path: str) -> None:
    """Check that literal inputs hold finite numbers in the shapes of the case's input, weight and bias."""
    if not isinstance(inputs, dict):
        raise ReportError(path, "inputs", f"has type {type(inputs).__name__}, expected an object with the lists "
                          "'input' and 'weight'")
    unknown = sorted(set(inputs) - {"input", "weight", "bias"})
    if unknown:
        raise ReportError(path, f"inputs.{unknown[0]}", "is not a known field: expected input, weight and bias")
    expected = {"input": tuple(case.input_shape), "weight": tuple(case.weight_shape)}
    if case.bias:
        expected["bias"] = (case.out_channels,)
    elif inputs.get("bias") is not None:
        raise ReportError(path, "inputs.bias", "is given, but the case has no bias (case.bias is false)")
    for name, shape in expected.items():
        values = inputs.get(name)
        if values is None:
            raise ReportError(path, f"inputs.{name}", f"is missing: the case needs a list of shape {shape}")
        found = _literal_shape(values, f"inputs.{name}", (), path)
        if found != shape:
            raise ReportError(path, f"inputs.{name}", f"has shape {found}, but the case needs {shape}")


def _literal_shape(values: Any, field: str, index: tuple[int, ...], path: str) -> tuple[int, ...]:
    """Return the shape of nested lists of finite numbers; raise ReportError at a ragged list or a bad element."""
    where = f" at {list(index)}" if index else ""
    if isinstance(values, list):
        shapes = [_literal_shape(item, field, index + (position,), path) for position, item in enumerate(values)]
        if any(shape != shapes[0] for shape in shapes):
            raise ReportError(path, field, f"is ragged{where}: its lists have different lengths")
        return (len(values), *(shapes[0] if shapes else ()))
    number = isinstance(values, (int, float)) and not isinstance(values, bool)
    if not number or not math.isfinite(values):
        raise ReportError(path, field, f"contains {values!r}{where}, expected finite numbers")
    return ()


def mark_status(path: str, data: dict[str, Any], status: str, outcome: Optional[Outcome] = None) -> None:
    """Rewrite a report with a new status ('open' or 'fixed'), whole or not at all."""
    data = plain(data)
    previous = data.get("status")
    data["status"] = status
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if status == "fixed" and previous != "fixed":
        data["fixed_at"] = stamp
    if status == "open" and previous == "fixed":
        data.pop("fixed_at", None)
        data["reopened_at"] = stamp
    data["last_replayed"] = stamp
    if outcome is not None:
        data["last_replay_verdict"] = outcome.verdict
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")
