"""Human-readable text of outcomes and reports, in one fixed order."""

from __future__ import annotations

import math
from typing import Any, Optional

__all__ = ["format_number", "format_report", "format_index"]


def format_number(value: Any) -> str:
    """Return a number with 4 significant digits; NaN and infinities by name."""
    if isinstance(value, str):
        return value
    if value is None:
        return "-"
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"


def format_index(index: Any, unbatched: bool = False) -> str:
    names = "CHW" if unbatched else "NCHW"
    return "[" + ", ".join(f"{name}={i}" for name, i in zip(names, index)) + "]"


def format_report(data: dict[str, Any]) -> str:
    """Return the text of a report: what failed, on which call, by how much, why, and how to reproduce it.

    The order is fixed: implementation and verdict; the case as a call; dtype
    and device; mismatched elements; the greatest error with its index and the
    bound there; a few mismatched positions; accuracy against torch; the
    diagnosis; the command that reproduces it.
    """
    case = data["case"]
    lines = [f"{data['implementation']['name']}: {data['verdict']}"]
    if data.get("detail"):
        lines.append(f"  {data['detail']}")
    lines.append(data.get("case_call") or str(case))
    lines.append(f"dtype {case['dtype']}, device {case['device']}, values {case['values']} (seed {case['seed']})")
    comparison: Optional[dict] = data.get("comparison")
    bound = data.get("bound") or {}
    if comparison and not comparison.get("passed", True):
        share = 100 * comparison["mismatched_share"]
        lines.append(f"Mismatched elements: {comparison['mismatched']} / {comparison['total']} ({share:.3g}%)")
        greatest = comparison.get("greatest")
        if greatest:
            lines.append(
                f"Greatest error: {format_number(greatest['error'])} at {format_index(greatest['index'], case.get('unbatched', False))}"
                f" (bound there {format_number(greatest['bound'])})")
        if bound:
            lines.append(f"Tolerance: {bound.get('explanation', '')}")
        positions = comparison.get("positions") or []
        if positions:
            lines.append("Mismatched positions (actual vs expected):")
            for position in positions:
                lines.append(f"  {format_index(position['index'], case.get('unbatched', False))}: "
                             f"{format_number(position['actual'])} vs {format_number(position['expected'])}")
    if data.get("exception"):
        lines.append(f"Exception: {data['exception']}")
    accuracy = data.get("accuracy") or {}
    if accuracy.get("summary"):
        mine = (accuracy.get("implementation") or {}).get("max_error")
        theirs = (accuracy.get("torch") or {}).get("max_error")
        lines.append(f"Accuracy: {accuracy['summary']} (greatest error {format_number(mine)} vs torch "
                     f"{format_number(theirs)})")
    if data.get("reference_suspect"):
        lines.append(f"Reference suspect: {data['reference_suspect']}")
    if data.get("weak_oracle"):
        lines.append(f"Weak oracle: {data['weak_oracle']}")
    diagnosis = data.get("diagnosis")
    if diagnosis:
        lines.append(f"Diagnosis: {diagnosis.get('summary', diagnosis)}")
    if data.get("reproduce"):
        lines.append(f"Reproduce: {data['reproduce']}")
    return "\n".join(lines)
