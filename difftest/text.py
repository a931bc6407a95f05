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
    diagnosis with where the mismatches sit; a small output's values, actual
    beside expected; the command that reproduces it. Reduced literal inputs
    are listed after the dtype line. An invalid-call report has its own text
    (difftest.invalid.format_invalid_report).
    """
    if data.get("invalid_call") is not None:
        from difftest.invalid import format_invalid_report

        return format_invalid_report(data)
    case = data["case"]
    lines = [f"{data['implementation']['name']}: {data['verdict']}"]
    if data.get("detail"):
        lines.append(f"  {data['detail']}")
    lines.append(data.get("case_call") or str(case))
    lines.append(f"dtype {case['dtype']}, device {case['device']}, values {case['values']} (seed {case['seed']})")
    if data.get("inputs"):
        lines.append(_inputs_line(data["inputs"]))
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
        if isinstance(diagnosis, dict) and diagnosis.get("locations"):
            lines.append(f"  Where: {diagnosis['locations']}")
    if data.get("side_by_side"):
        lines.extend(_side_by_side_lines(data["side_by_side"], case.get("unbatched", False)))
    if data.get("reproduce"):
        lines.append(f"Reproduce: {data['reproduce']}")
    return "\n".join(lines)


# Reduced inputs and small outputs -------------------------------------------------

# Reduced inputs with up to this many nonzero elements are listed one by one.
LISTED_NONZERO = 8


def _elements(nested: Any, index: tuple[int, ...] = ()) -> list[tuple[tuple[int, ...], Any]]:
    """Return (index, value) for every element of nested lists."""
    if not isinstance(nested, list):
        return [(index, nested)]
    found = []
    for position, item in enumerate(nested):
        found.extend(_elements(item, index + (position,)))
    return found


def _inputs_line(inputs: dict[str, Any]) -> str:
    nonzero = []
    total = 0
    for name in ("input", "weight", "bias"):
        elements = _elements(inputs.get(name)) if inputs.get(name) is not None else []
        total += len(elements)
        nonzero.extend((name, index, value) for index, value in elements if value != 0)
    if len(nonzero) > LISTED_NONZERO:
        return f"Inputs: reduced literal values in the report ({len(nonzero)} of {total} elements nonzero)"
    listed = ", ".join(f"{name}[{', '.join(map(str, index))}] = {format_number(value)}"
                       for name, index, value in nonzero)
    return f"Inputs (reduced, every other element is 0): {listed or 'all zero'}"


def _planes(nested: Any, index: tuple[int, ...] = ()) -> list[tuple[tuple[int, ...], list]]:
    """Return the 2-D planes (rows of values) of nested lists, each with its leading index."""
    if not isinstance(nested, list):
        return [(index, [[nested]])]
    if not nested or not isinstance(nested[0], list):
        return [(index, [nested])]
    if not nested[0] or not isinstance(nested[0][0], list):
        return [(index, nested)]
    planes = []
    for position, item in enumerate(nested):
        planes.extend(_planes(item, index + (position,)))
    return planes


def _plane_rows(plane: list) -> list[list[str]]:
    return [[format_number(value) for value in row] for row in plane]


def _side_by_side_lines(side: dict[str, Any], unbatched: bool) -> list[str]:
    """Return a small output's planes row by row, actual beside expected where the shapes agree."""
    actual, expected = _planes(side["actual"]), _planes(side["expected"])
    if side.get("actual_shape") != side.get("expected_shape"):
        lines = []
        for title, planes in (("Actual output", actual), ("Expected output", expected)):
            lines.append(f"{title}:")
            for index, plane in planes:
                lines.append(f"  {format_index(index, unbatched)}")
                lines.extend("    " + "  ".join(row) for row in _plane_rows(plane))
        return lines
    lines = ["Output values (actual | expected):"]
    for (index, mine), (_, theirs) in zip(actual, expected):
        mine_rows, their_rows = _plane_rows(mine), _plane_rows(theirs)
        width = max([len(text) for row in mine_rows + their_rows for text in row] or [1])
        lines.append(f"  {format_index(index, unbatched)}")
        for mine_row, their_row in zip(mine_rows, their_rows):
            lines.append("    " + " ".join(text.rjust(width) for text in mine_row) + " | "
                         + " ".join(text.rjust(width) for text in their_row))
    return lines
