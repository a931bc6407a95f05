"""Summaries of a campaign: the table the command line prints and its JSON form."""

from __future__ import annotations

import os
from typing import Any, Iterable

from difftest.fuzz import ImplementationResult

__all__ = ["render_table", "results_json"]


def _shown_path(path: str) -> str:
    """Return ``path`` relative to the current folder when it lies inside it, else absolute."""
    relative = os.path.relpath(path)
    return os.path.abspath(path) if relative.startswith(os.pardir) else relative


def _verdict_text(result: ImplementationResult) -> str:
    if result.skipped:
        return "skipped"
    if not result.failed:
        return "pass"
    return f"FAIL ({result.verdict})" + (", known bad" if result.expected_to_fail else "")


def render_table(results: Iterable[ImplementationResult]) -> str:
    """Return one row per implementation: examples searched, shrinking steps, verdict, seconds and report path."""
    results = list(results)
    rows = [("implementation", "examples", "shrinks", "verdict", "seconds", "report")]
    for result in results:
        report = _shown_path(result.report) if result.report else "-"
        rows.append((result.name, str(result.examples), str(result.shrink_steps), _verdict_text(result),
                     f"{result.seconds:.1f}", report))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for number, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    # Skipped implementations with the same reason share one line.
    skipped: dict[str, list[str]] = {}
    for result in results:
        if result.skipped:
            skipped.setdefault(result.note, []).append(result.name)
    for note, names in skipped.items():
        lines.append("")
        lines.append(f"skipped {', '.join(names)}: {note}")
    for result in results:
        if result.failed and result.outcome is not None:
            lines.append("")
            lines.append(f"{result.name}: shrunk to {result.outcome.case.describe()}")
            lines.append(f"  {result.detail}")
            diagnosis = (result.analysis or {}).get("diagnosis") or {}
            if diagnosis.get("summary"):
                lines.append(f"  diagnosis: {diagnosis['summary']}")
            if result.note:
                lines.append(f"  note: {result.note}")
            if result.invalid_report and result.invalid_report != result.report:
                lines.append(f"  also on an invalid call: {result.invalid_outcome.verdict}, "
                             f"{_shown_path(result.invalid_report)}")
            if result.outcome.reference_suspect:
                # torch is wrong too on this case, so torch's output is not the expected result there.
                lines.append(f"  reference suspect: {result.outcome.reference_suspect}")
    return "\n".join(lines)


def results_json(results: Iterable[ImplementationResult], replays: Iterable[Any] = ()) -> dict[str, Any]:
    """Return the campaign summary as plain data, with the run id, versions and the replayed reports."""
    from difftest.campaign import replays_json
    from difftest.reports import RUN_ID, versions

    items = []
    for result in results:
        items.append({
            "implementation": result.name,
            "examples": result.examples,
            "shrink_steps": result.shrink_steps,
            "verdict": result.verdict,
            "failed": result.failed,
            "expected_to_fail": result.expected_to_fail,
            "seconds": round(result.seconds, 3),
            "report": result.report,
            "script": result.script,
            "case": result.outcome.case.to_dict() if result.outcome else None,
            "detail": result.detail,
            "note": result.note,
        })
    replayed = replays_json(replays)
    return {"implementations": items, "failed": sum(item["failed"] for item in items), "run_id": RUN_ID,
            "versions": versions(), "replays": replayed,
            "reproduced": sum(replay["status"] == "reproduces" for replay in replayed)}
