"""Explain a failing outcome for its report: reduced inputs, a diagnosis, values side by side and a heatmap.

The fuzzing campaign calls :func:`analyse` on each shrunk failure before it
writes the report, and merges the fields it returns into the report.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from difftest.case import ConvCase
from difftest.diagnose import Diagnosis, diagnose, first_match, refine
from difftest.heatmap import heatmap_path, render_heatmap
from difftest.reduce import MAX_EVALUATIONS, MAX_SECONDS, Reduction, reduce_inputs
from difftest.registry import Implementation
from difftest.reports import ensure_report_dir, report_dict, report_paths
from difftest.runner import CaseContext, Outcome, caller_for

__all__ = ["analyse", "side_by_side", "SIDE_BY_SIDE_ELEMENTS"]

logger = logging.getLogger(__name__)

# Outputs of at most this many elements are written out in full, actual beside expected.
SIDE_BY_SIDE_ELEMENTS = 64

# Report fields that describe one evaluation. When the report stores reduced
# inputs, these describe the evaluation on them, so that the report and its
# reproduction script show the same numbers.
OUTCOME_FIELDS = ("verdict", "detail", "exception", "exact", "comparison", "bound", "accuracy",
                  "reference_suspect", "weak_oracle")


def analyse(
    outcome: Outcome,
    implementation: Implementation,
    context: CaseContext,
    report_dir: str,
    *,
    caller: Any = None,
    timeout: Optional[float] = None,
    memory_limit: Optional[int] = None,
    max_evaluations: int = MAX_EVALUATIONS,
    max_seconds: float = MAX_SECONDS,
    draw: bool = True,
) -> dict[str, Any]:
    """Reduce, diagnose and draw a failing outcome; return the extra report fields.

    The diagnosis is first made on the case's own inputs, with ties between
    hypotheses settled by :func:`difftest.diagnose.refine`. The reduction then
    keeps only changes under which the same hypothesis still comes first, and
    the diagnosis reported is the one on the reduced inputs, limited to the
    hypotheses that held on both.

    Returns the fields "inputs" (literal reduced inputs or None),
    "diagnosis" (Diagnosis.to_dict() or None), "side_by_side" (actual and
    expected values of a small output, or None), "heatmap" (the PNG's file
    name in ``report_dir``, or None) and "reduction" (what the reduction
    did). With literal inputs they also contain the evaluation fields
    (OUTCOME_FIELDS) on those inputs. Without ``caller``, calls go through
    ``caller_for(implementation, timeout, memory_limit)``, whose worker
    process (for an isolated implementation) is stopped at the end. An error
    inside the analysis is logged and leaves the fields gathered so far, so
    that the report is still written.
    """
    fields: dict[str, Any] = {"inputs": None, "diagnosis": None, "side_by_side": None, "heatmap": None}
    if outcome.passed or not isinstance(outcome.case, ConvCase):
        # Invalid calls (difftest.invalid) have no values to reduce or explain.
        return fields
    own_caller = caller is None
    try:
        if own_caller:
            caller = caller_for(implementation, timeout, memory_limit)
        _analyse(outcome, implementation, context, report_dir, fields, caller, max_evaluations, max_seconds, draw)
    except Exception as error:  # the report matters more than its analysis
        logger.exception("%s: analysing the %s on %s failed", implementation.name, outcome.verdict,
                         outcome.case.describe())
        fields["analysis_error"] = f"{type(error).__name__}: {error}"
    finally:
        close = getattr(caller, "close", None) if own_caller else None
        if close is not None:
            close()
    return fields


def _analyse(outcome: Outcome, implementation: Implementation, context: CaseContext, report_dir: str,
             fields: dict[str, Any], caller: Any, max_evaluations: int, max_seconds: float, draw: bool) -> None:
    original = refine(diagnose(outcome, outcome.case, context, implementation, caller), outcome, implementation,
                      caller)
    fields["diagnosis"] = None if original is None else original.to_dict()

    keep = None
    if original is not None and original.id is not None:
        keep = _same_first_match(original, implementation, caller)
    reduction = reduce_inputs(implementation, outcome, context, caller=caller, keep=keep,
                              max_evaluations=max_evaluations, max_seconds=max_seconds)
    fields["reduction"] = reduction.to_dict()

    final_outcome, final_context = outcome, context
    if reduction.literal is not None and reduction.outcome is not None and reduction.context is not None:
        final_outcome, final_context = reduction.outcome, reduction.context
        fields["inputs"] = reduction.literal
        fields["reduction"]["original_detail"] = outcome.detail
        data = report_dict(final_outcome, implementation)
        fields.update({name: data[name] for name in OUTCOME_FIELDS})
        fields["diagnosis"] = _reduced_diagnosis(original, reduction, implementation, caller)

    fields["side_by_side"] = side_by_side(final_outcome, final_context)
    if draw:
        json_path, _ = report_paths(report_dir, report_dict(outcome, implementation, **fields))
        ensure_report_dir(report_dir)
        fields["heatmap"] = render_heatmap(final_outcome, final_context, heatmap_path(json_path))


def _same_first_match(original: Diagnosis, implementation: Implementation, caller: Any) -> Any:
    """Return whether the original diagnosis still comes first, ahead of every hypothesis that failed originally.

    Hypotheses that held on the original inputs too but ranked after the
    diagnosis (refine may have moved it past one of them) are not tested.
    """
    assert original.id is not None
    diagnosis_id = original.id
    tied = tuple(name for name in original.matches if name != diagnosis_id)

    def keep(outcome: Outcome, context: CaseContext) -> bool:
        return first_match(outcome, context, implementation, caller, until=diagnosis_id,
                           ignore=tied) == diagnosis_id
    return keep


def _reduced_diagnosis(original: Optional[Diagnosis], reduction: Reduction, implementation: Implementation,
                       caller: Any) -> Optional[dict[str, Any]]:
    assert reduction.outcome is not None and reduction.context is not None
    among = [] if original is None else original.matches
    reduced = diagnose(reduction.outcome, reduction.outcome.case, reduction.context, implementation, caller,
                       among=among)
    return None if reduced is None else reduced.to_dict()


def side_by_side(outcome: Outcome, context: CaseContext) -> Optional[dict[str, Any]]:
    """Return the actual and expected outputs as nested lists when both are small, else None.

    The expected values are the float64 truth; with a wrong shape each side
    keeps its own shape.
    """
    if outcome.output is None:
        return None
    actual = outcome.output.detach().to("cpu")
    expected = context.truth
    if actual.numel() > SIDE_BY_SIDE_ELEMENTS or expected.numel() > SIDE_BY_SIDE_ELEMENTS:
        return None
    return {"actual": actual.double().tolist(), "expected": expected.tolist(),
            "actual_shape": list(actual.shape), "expected_shape": list(expected.shape)}
