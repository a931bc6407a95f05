"""The steps around a campaign's search: replay saved failures first, and write the summary page last.

Saved reports are the record of every failure found; the Hypothesis example
database is only a cache. So each run first replays the open reports of the
implementations it fuzzes, and a report that now passes is marked 'fixed'
(kept, never deleted). After the run, ``SUMMARY.md`` in the report folder
lists every report of every worker, grouped by implementation and by
diagnosis, with links to the report, its script and its heatmap.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from typing import Any, Iterable, Optional

from difftest._atomic import write_atomic
from difftest.errors import ReportError, WriteError
from difftest.registry import Implementation
from difftest.replay import ReplayResult, find_reports, replay_path
from difftest.reports import load_report

__all__ = [
    "SUMMARY_NAME",
    "open_reports",
    "replay_open_reports",
    "render_replays",
    "replays_json",
    "load_reports",
    "group_reports",
    "render_summary",
    "write_summary",
    "has_summary",
]

SUMMARY_NAME = "SUMMARY.md"
_TITLE = "# difftest summary"

logger = logging.getLogger(__name__)


def open_reports(report_dir: str, implementations: Iterable[Implementation], *,
                 include_fixed: bool = False) -> list[str]:
    """Return the saved reports in ``report_dir`` that belong to ``implementations`` and are still open.

    A report belongs to an implementation when it records the same import
    target. Unreadable reports are logged and skipped, because a broken file
    must not stop the search; ``difftest replay`` names them.
    """
    if not os.path.isdir(report_dir):
        return []
    targets = {implementation.target for implementation in implementations}
    chosen = []
    for path in find_reports([report_dir]):
        try:
            data = load_report(path)
        except ReportError as error:
            logger.warning("skipping a report that cannot be replayed: %s", error)
            continue
        if data["implementation"]["target"] not in targets:
            continue
        if data["status"] == "fixed" and not include_fixed:
            continue
        chosen.append(path)
    return chosen


def replay_open_reports(report_dir: str, implementations: Iterable[Implementation]) -> list[ReplayResult]:
    """Replay the open reports of ``implementations``, marking each 'fixed' or leaving it 'open'."""
    results = []
    for path in open_reports(report_dir, list(implementations)):
        result = replay_path(path)
        logger.info("replayed %s: %s", path, result.status)
        results.append(result)
    return results


def render_replays(results: Iterable[ReplayResult]) -> str:
    """Return one line per replayed report: status, report path and verdict or error."""
    lines = []
    for result in results:
        if result.status == "invalid":
            what = result.error or ""
        else:
            what = result.outcome.verdict if result.outcome else ""
        if result.write_error is not None:
            what += f" (status not saved: {result.write_error.reason})"
        lines.append(f"replay {result.status:<10} {os.path.relpath(result.path)}  {what}".rstrip())
    return "\n".join(lines)


def replays_json(results: Iterable[ReplayResult]) -> list[dict[str, Any]]:
    return [{"path": result.path, "implementation": result.name, "status": result.status, "error": result.error,
             "verdict": result.outcome.verdict if result.outcome else None,
             "not_saved": str(result.write_error) if result.write_error is not None else None}
            for result in results]


def load_reports(report_dir: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Return the readable reports in ``report_dir`` (each with its file name under '_file') and the unreadable ones."""
    reports: list[dict[str, Any]] = []
    unreadable: dict[str, str] = {}
    if not os.path.isdir(report_dir):
        return reports, unreadable
    for path in find_reports([report_dir]):
        try:
            data = load_report(path)
        except ReportError as error:
            unreadable[os.path.basename(path)] = str(error)
            continue
        data["_file"] = os.path.basename(path)
        reports.append(data)
    return reports, unreadable


def _diagnosis_summary(data: dict[str, Any]) -> str:
    diagnosis = data.get("diagnosis")
    if isinstance(diagnosis, dict):
        return str(diagnosis.get("summary") or "")
    return str(diagnosis or "")


def group_reports(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group reports that describe the same finding, with difftest.diagnose.group_findings.

    Each group is a finding from group_findings (implementation, summary,
    verdicts, count, open) with 'members': the loaded reports it covers.
    """
    from difftest.diagnose import group_findings

    by_file = {data["_file"]: data for data in reports}
    groups = []
    for finding in group_findings(reports):
        members = [by_file[name] for name in finding["reports"] if name in by_file]
        groups.append({**finding, "members": members})
    return groups


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _links(data: dict[str, Any], report_dir: str) -> str:
    links = [f"[report]({data['_file']})"]
    if data.get("script"):
        links.append(f"[script]({data['script']})")
    heatmap = data.get("heatmap")
    if heatmap and os.path.exists(os.path.join(report_dir, heatmap)):
        links.append(f"[heatmap]({heatmap})")
    return " · ".join(links)


def render_summary(reports: list[dict[str, Any]], report_dir: str,
                   unreadable: Optional[dict[str, str]] = None) -> str:
    """Return the Markdown page for ``reports``: counts, a table per implementation, then the groups."""
    unreadable = unreadable or {}
    open_count = sum(1 for data in reports if data["status"] != "fixed")
    workers = sorted({str(data.get("worker", "main")) for data in reports})
    runs = sorted({str(data.get("run_id", "")) for data in reports if data.get("run_id")})
    lines = [_TITLE, ""]
    lines.append(f"{len(reports)} reports: {open_count} open, {len(reports) - open_count} fixed. "
                 f"Workers: {', '.join(workers) or '-'}. Runs: {', '.join(runs) or '-'}.")

    by_implementation: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for data in reports:
        by_implementation[data["implementation"]["name"]].append(data)
    lines += ["", "## By implementation"]
    for name in sorted(by_implementation):
        lines += ["", f"### {name}", "", "| status | verdict | case | diagnosis | worker | files |",
                  "|---|---|---|---|---|---|"]
        for data in sorted(by_implementation[name], key=lambda d: (d["status"], d["verdict"], d["_file"])):
            lines.append(f"| {data['status']} | {data['verdict']} | `{_cell(data.get('case_descriptor', ''))}` "
                         f"| {_cell(_diagnosis_summary(data) or '-')} | {_cell(data.get('worker', 'main'))} "
                         f"| {_links(data, report_dir)} |")

    lines += ["", "## By diagnosis"]
    for group in group_reports(reports):
        summary = group["summary"] or "no diagnosis"
        lines += ["", f"### {_cell(group['implementation'])}: {_cell(summary)}", "",
                  f"Verdicts {', '.join(group['verdicts'])}; {_count(group['count'], 'report')}, "
                  f"{group['open']} open.", ""]
        for data in group["members"]:
            lines.append(f"- {data['status']}: `{_cell(data.get('case_descriptor', ''))}` ({_links(data, report_dir)})")

    if unreadable:
        lines += ["", "## Unreadable reports", ""]
        for name, error in sorted(unreadable.items()):
            lines.append(f"- {name}: {_cell(error)}")
    return "\n".join(lines) + "\n"


def write_summary(report_dir: str) -> str:
    """Write ``SUMMARY.md`` for every report in ``report_dir``, whole or not at all; return its path.

    Raises WriteError when the folder cannot be created or written.
    """
    reports, unreadable = load_reports(report_dir)
    path = os.path.join(report_dir, SUMMARY_NAME)
    try:
        os.makedirs(report_dir, exist_ok=True)
    except OSError as error:
        raise WriteError(path, error.strerror or str(error)) from error
    write_atomic(path, render_summary(reports, report_dir, unreadable))
    return path


def has_summary(report_dir: str) -> bool:
    """Return whether ``report_dir`` contains a summary page that difftest wrote (it starts with its title)."""
    try:
        with open(os.path.join(report_dir, SUMMARY_NAME), encoding="utf-8") as stream:
            return stream.readline().rstrip("\n") == _TITLE
    except (OSError, UnicodeDecodeError):
        return False
