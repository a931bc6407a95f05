"""Say why an implementation's output is wrong, by testing a catalogue of likely mistakes.

Each hypothesis in difftest._catalogue computes a transformed reference in
float64 from the case's own inputs: conv2d with one argument, input or output
altered as the mistake would alter it. A hypothesis holds when the
implementation's output matches its reference within the bound that judged
the output. The first hypothesis that holds, in catalogue order, names the
diagnosis.

>>> import torch
>>> import difftest
>>> from difftest.diagnose import diagnose
>>> def swapped(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
...     return torch.nn.functional.conv2d(x, w, b, stride, padding, dilation, groups).transpose(-2, -1)
>>> impl = difftest.register("swapped_example", swapped)
>>> case = difftest.ConvCase(height=4, width=4, kernel_height=2, kernel_width=2, dtype="float64")
>>> context = difftest.CaseContext(case)
>>> outcome = difftest.evaluate(impl, case, context)
>>> diagnose(outcome, case, context, impl).id
'spatial_axes_swapped'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from difftest._catalogue import CATALOGUE, Probe
from difftest.case import ConvCase
from difftest.registry import Implementation
from difftest.runner import CaseContext, Outcome, evaluate

__all__ = ["DIAGNOSES", "DIAGNOSABLE_VERDICTS", "Diagnosis", "diagnose", "first_match", "refine",
           "describe_mismatches", "group_findings"]

# Every diagnosis id, in the order the hypotheses are tested.
DIAGNOSES = tuple(name for name, _ in CATALOGUE)

# Verdicts whose output a diagnosis can explain: wrong values or a wrong shape.
DIAGNOSABLE_VERDICTS = frozenset({"mismatch", "special_value_mismatch", "shape_mismatch"})

NO_MATCH = "no hypothesis in the catalogue explains the output"


@dataclass
class Diagnosis:
    """Why an output is wrong: the first hypothesis that holds, every one that holds, and where it differs.

    ``id`` is None when no hypothesis holds. ``summary`` is then NO_MATCH, and
    ``locations`` describes where the mismatches sit.
    """

    id: Optional[str]
    summary: str
    matches: list[str] = field(default_factory=list)
    locations: str = ""
    explanations: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "summary": self.summary, "matches": list(self.matches),
                "locations": self.locations, "explanations": dict(self.explanations)}


def diagnose(
    outcome: Outcome,
    case: ConvCase,
    context: CaseContext,
    implementation: Optional[Implementation] = None,
    caller: Any = None,
    *,
    among: Optional[list[str]] = None,
) -> Optional[Diagnosis]:
    """Test every hypothesis on a failing outcome; return None for a passing or undiagnosable one.

    ``implementation`` and ``caller`` let the hypotheses that call the
    implementation again (layout_dependent, batch_mixed) run; without them
    those are skipped. ``among`` restricts the test to these ids, for example
    to the ones that held on the unreduced inputs, and its order then ranks
    the matches in place of the catalogue's.
    """
    probe = _probe(outcome, case, context, implementation, caller)
    if probe is None:
        return None
    explanations: dict[str, str] = {}
    for name, hypothesis in CATALOGUE:
        if among is not None and name not in among:
            continue
        summary = hypothesis(probe)
        if summary is not None:
            explanations[name] = summary
    locations = describe_mismatches(outcome, case)
    if not explanations:
        return Diagnosis(None, NO_MATCH, [], locations, {})
    matches = list(explanations)
    if among is not None:
        matches.sort(key=among.index)
    return Diagnosis(matches[0], explanations[matches[0]], matches, locations, explanations)


def first_match(
    outcome: Outcome,
    context: CaseContext,
    implementation: Optional[Implementation] = None,
    caller: Any = None,
    *,
    until: Optional[str] = None,
    ignore: tuple[str, ...] = (),
) -> Optional[str]:
    """Return the id of the first hypothesis that holds, testing none past ``until`` and none in ``ignore``.

    Returns None when none holds.
    """
    probe = _probe(outcome, outcome.case, context, implementation, caller)
    if probe is None:
        return None
    for name, hypothesis in CATALOGUE:
        if name not in ignore and hypothesis(probe) is not None:
            return name
        if name == until:
            break
    return None


# Pairs of hypotheses that some cases cannot tell apart, each with a change to
# the case under which they predict different outputs. With stride (2, 1),
# ignoring the stride and applying the width's stride to both axes both give
# stride (1, 1). With stride (2, 3) they differ.
AMBIGUOUS: dict[tuple[str, str], dict[str, Any]] = {
    ("stride_axis_mixed", "stride_ignored"): {"stride": (2, 3)},
    ("dilation_axis_mixed", "dilation_ignored"): {"dilation": (2, 3)},
}

# Rows and columns added to the experiment's input, so that the output keeps
# several positions under the larger stride or dilation.
EXPERIMENT_MARGIN = 7


def refine(diagnosis: Optional[Diagnosis], outcome: Outcome, implementation: Implementation,
           caller: Any = None) -> Optional[Diagnosis]:
    """Settle a tie between two hypotheses that both hold, by running the implementation where they differ.

    Applies to the pairs in AMBIGUOUS. The experiment keeps the case's value
    kind and seed on a larger input. When exactly one of the pair holds
    there, it becomes the diagnosis. Otherwise the catalogue order is kept.
    """
    if diagnosis is None or len(diagnosis.matches) < 2:
        return diagnosis
    for pair, changes in AMBIGUOUS.items():
        if not set(pair) <= set(diagnosis.matches):
            continue
        case = outcome.case
        dilation = changes.get("dilation", case.dilation)
        experiment = case.replace(
            height=case.height + dilation[0] * (case.kernel_height - 1) + EXPERIMENT_MARGIN,
            width=case.width + dilation[1] * (case.kernel_width - 1) + EXPERIMENT_MARGIN,
            **changes,
        )
        if not experiment.is_valid():
            continue
        context = _nonzero_context(experiment)
        if context is None:
            continue
        trial = evaluate(implementation, context.case, context, caller=caller)
        settled = diagnose(trial, context.case, context, implementation, caller, among=list(pair))
        if settled is None or len(settled.matches) != 1 or settled.id == diagnosis.id:
            continue
        winner = settled.matches[0]
        matches = [winner] + [name for name in diagnosis.matches if name != winner]
        return dataclasses.replace(diagnosis, id=winner, summary=diagnosis.explanations[winner], matches=matches)
    return diagnosis


def _nonzero_context(case: ConvCase, tries: int = 4) -> Optional[CaseContext]:
    """Return the context of ``case`` or of one with a following seed whose truth is not all zero.

    A small weight drawn from small integers can be all zero, and an
    all-zero output cannot tell any two hypotheses apart.
    """
    for offset in range(tries):
        context = CaseContext(case.replace(seed=case.seed + offset))
        if bool(context.truth.ne(0).any()):
            return context
    return None


def _probe(outcome: Outcome, case: ConvCase, context: CaseContext, implementation: Optional[Implementation],
           caller: Any) -> Optional[Probe]:
    if outcome.passed or outcome.verdict not in DIAGNOSABLE_VERDICTS or outcome.output is None:
        return None
    return Probe.from_outcome(outcome, case, context, implementation, caller)


# Where the mismatches sit ---------------------------------------------------------------


def describe_mismatches(outcome: Outcome, case: ConvCase) -> str:
    """Return where the output differs: shapes, or the rows, columns, channels and batch items that mismatch."""
    if outcome.verdict == "shape_mismatch" and outcome.output is not None:
        return _shape_text(tuple(outcome.output.shape), tuple(case.output_shape))
    comparison = outcome.comparison
    if comparison is None or comparison.mismatch_mask is None or not comparison.mismatched:
        return ""
    mask = comparison.mismatch_mask
    if case.unbatched and mask.dim() == 3:
        mask = mask.unsqueeze(0)
    batch, channels, height, width = mask.shape
    parts = [f"{comparison.mismatched} / {comparison.total} elements ({100 * comparison.share:.3g}%) differ"]
    # An axis of size 1 tells nothing about where the mismatches sit.
    for name, size, others in (("rows", height, (0, 1, 3)), ("columns", width, (0, 1, 2)),
                               ("channels", channels, (0, 2, 3)), ("batch items", batch, (1, 2, 3))):
        if size > 1:
            parts.append(f"{name} {_span(mask.any(dim=others), size)}")
    return "; ".join(parts) + "; " + _border_text(mask)


def _span(present: torch.Tensor, size: int) -> str:
    """Return the indices where ``present`` is true, as 'all N' or ranges such as '0, 2-4'."""
    indices = [int(i) for i in torch.nonzero(present).flatten()]
    if len(indices) == size:
        return f"all {size}"
    ranges: list[str] = []
    start = previous = indices[0]
    for index in indices[1:] + [None]:  # type: ignore[list-item]
        if index is not None and index == previous + 1:
            previous = index
            continue
        ranges.append(str(start) if start == previous else f"{start}-{previous}")
        if index is not None:
            start = previous = index
    return ", ".join(ranges)


def _border_text(mask: torch.Tensor) -> str:
    height, width = mask.shape[-2:]
    if height <= 2 or width <= 2:
        return "the output has no interior (every position is on the border)"
    border = torch.zeros(height, width, dtype=torch.bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    on_border = int((mask & border).sum())
    inside = int((mask & ~border).sum())
    if inside == 0:
        return "only on the border (first or last row or column)"
    if on_border == 0:
        return "only in the interior, none on the border"
    return f"{on_border} on the border, {inside} in the interior"


def _shape_text(actual: tuple[int, ...], expected: tuple[int, ...]) -> str:
    text = f"output shape {actual}, expected {expected}"
    if len(actual) != len(expected):
        return text + f" ({len(actual)} dimensions instead of {len(expected)})"
    changes = []
    names = ("batch item", "channel", "row", "column")[-len(expected):]
    for name, got, wanted in zip(names, actual, expected):
        if got != wanted:
            count = abs(got - wanted)
            changes.append(f"{count} {name}{'s' if count > 1 else ''} {'more' if got > wanted else 'fewer'}")
    return text + (f": {', '.join(changes)}" if changes else "")


# Grouping reports of one mistake -------------------------------------------------------------


def group_findings(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group failure reports by implementation and diagnosis, so repeated reports of one mistake read as one.

    Reports without a diagnosis id are grouped by their verdict instead. Each
    finding contains the implementation, the diagnosis id (or None), its summary,
    the verdicts seen, how many reports it covers, their file names, and the
    smallest case among them (fewest input and weight elements) as the
    example. Findings come largest first, then by implementation name.
    """
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for report in reports:
        implementation = report.get("implementation") or {}
        diagnosis = report.get("diagnosis") or {}
        key_id = diagnosis.get("id") or f"verdict:{report.get('verdict', '')}"
        key = (implementation.get("name", ""), implementation.get("target", ""), key_id)
        groups.setdefault(key, []).append(report)

    findings = []
    for (name, target, key_id), members in groups.items():
        example = min(members, key=_case_size)
        diagnosis = example.get("diagnosis") or {}
        findings.append({
            "implementation": name,
            "target": target,
            "diagnosis": diagnosis.get("id"),
            "summary": diagnosis.get("summary") or example.get("detail", ""),
            "verdicts": sorted({member.get("verdict", "") for member in members}),
            "count": len(members),
            "open": sum(1 for member in members if member.get("status", "open") == "open"),
            "reports": sorted(_report_name(member) for member in members),
            "example": _report_name(example),
            "example_case": example.get("case_descriptor", ""),
            "example_call": example.get("case_call", ""),
        })
    findings.sort(key=lambda finding: (-finding["count"], finding["implementation"], finding["diagnosis"] or ""))
    return findings


def _case_size(report: dict[str, Any]) -> tuple[int, str]:
    try:
        case = ConvCase.from_dict(report["case"])
    except Exception:  # a malformed case sorts last rather than hiding the finding
        return (2**62, "")
    size = 1
    for extent in case.input_shape:
        size *= extent
    weight = 1
    for extent in case.weight_shape:
        weight *= extent
    return (size + weight, case.describe())


def _report_name(report: dict[str, Any]) -> str:
    """Return the report's file name: recorded, derived from its script's name, or its case descriptor."""
    for key in ("path", "_path"):
        if report.get(key):
            return str(report[key])
    script = report.get("script")
    if script:
        return str(script)[: -len(".py")] + ".json" if str(script).endswith(".py") else str(script)
    return str(report.get("case_descriptor", ""))
