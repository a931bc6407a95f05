"""Deliberately wrong conv2d implementations, one per class of bug.

difftest's own tests use them to show that it finds, shrinks and diagnoses
each class of bug. Every function carries:

- ``difftest_supports``: keyword arguments for difftest's Supports, the space
  in which the bug is reachable and everything else is correct;
- ``bug_class``: a short id of the bug, unique within this package;
- ``expected_diagnosis``: the diagnosis id from DIAGNOSES a diagnosis engine
  should name, or None where none fits;
- ``expected_verdict``: the verdict from VERDICTS the harness should report on
  the trigger case;
- ``trigger``: keyword arguments of difftest.case.ConvCase for a case on which
  the bug shows;
- ``plain``: ConvCase keyword arguments for a case on which the function agrees
  with torch, or None where it is wrong on every case.

The functions in ``broken`` that crash, hang or exhaust memory must only be
called in a separate process with a timeout and a memory limit.
"""

from __future__ import annotations

from typing import Any, Callable

from tests.wrong import broken, corners, precision

__all__ = [
    "ALL",
    "DIAGNOSES",
    "VERDICTS",
    "by_bug_class",
    "broken",
    "corners",
    "precision",
]

# Diagnosis ids a diagnosis engine can name for a wrong output.
DIAGNOSES = (
    "spatial_axes_swapped",
    "kernel_flipped",
    "padding_one_side",
    "padding_shifted",
    "padding_axis_mixed",
    "stride_axis_mixed",
    "dilation_axis_mixed",
    "stride_ignored",
    "dilation_ignored",
    "groups_ignored",
    "groups_misassigned",
    "bias_missing",
    "bias_doubled",
    "bias_wrong_axis",
    "output_channels_permuted",
    "output_channels_mixed",
    "output_scaled",
    "batch_permuted",
    "batch_mixed",
    "output_shape_off_by_one",
    "low_precision_accumulation",
    "layout_dependent",
    "same_padding_wrong_side",
    "circular_wrong_axis",
)

# Verdicts the harness reports for one call of an implementation.
VERDICTS = (
    "mismatch",
    "shape_mismatch",
    "dtype_mismatch",
    "exception",
    "not_implemented",
    "crash",
    "timeout",
    "mutates_input",
    "output_aliases_input",
    "nondeterministic",
)

ALL: list[Callable[..., Any]] = [*corners.IMPLEMENTATIONS, *precision.IMPLEMENTATIONS, *broken.IMPLEMENTATIONS]


def by_bug_class(name: str) -> Callable[..., Any]:
    """Return the wrong implementation whose ``bug_class`` is ``name``.

    Raises LookupError naming the known classes when there is none.
    """
    for function in ALL:
        if function.bug_class == name:  # type: ignore[attr-defined]
            return function
    known = ", ".join(sorted(function.bug_class for function in ALL))  # type: ignore[attr-defined]
    raise LookupError(f"no wrong implementation has bug_class {name!r}; known classes: {known}")
