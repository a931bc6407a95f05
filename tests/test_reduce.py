"""Input reduction: fewer, smaller nonzero values that still fail the same way."""

from __future__ import annotations

import json
import math
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F

import difftest
from difftest.case import ConvCase
from difftest.diagnose import first_match
from difftest.reduce import MAX_LITERAL_ELEMENTS, reduce_inputs
from difftest.registry import Implementation, get, register, unregister
from difftest.reports import plain
from difftest.runner import CaseContext, Outcome, evaluate
from tests.wrong import corners, precision


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Run torch on one thread: these tensors are tiny, and a thread pool on a busy machine slows them down."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _forget_registrations():
    before = set(difftest.registered())
    yield
    for name in set(difftest.registered()) - before:
        unregister(name)


def _implementation(function: Callable[..., Any]) -> Implementation:
    name = getattr(function, "bug_class", function.__name__)
    return register(f"reduce_{name}", function, **getattr(function, "difftest_supports", {}))


def _failing(implementation: Implementation, **case_fields: Any) -> tuple[ConvCase, CaseContext, Outcome]:
    case = ConvCase(**case_fields)
    context = CaseContext(case)
    outcome = evaluate(implementation, case, context)
    assert not outcome.passed, f"{implementation.name} passed on {case.describe()}"
    return case, context, outcome


def _nonzero(literal: dict[str, Any]) -> dict[str, int]:
    return {name: int(torch.tensor(values).count_nonzero()) for name, values in literal.items() if values is not None}


def _keeps(diagnosis_id: str, implementation: Implementation) -> Callable[[Outcome, CaseContext], bool]:
    return lambda outcome, context: first_match(outcome, context, implementation, until=diagnosis_id) == diagnosis_id


def test_known_bad_reduces_to_single_elements():
    implementation = get("unfold_transposed")
    case, context, outcome = _failing(implementation, in_channels=3, out_channels=2, height=5, width=6,
                                      kernel_height=3, kernel_width=2, dtype="float64")

    reduction = reduce_inputs(implementation, outcome, context, keep=_keeps("spatial_axes_swapped", implementation))

    assert reduction.literal is not None
    assert _nonzero(reduction.literal) == {"input": 1, "weight": 1}
    values = [value for name in ("input", "weight") for value in torch.tensor(reduction.literal[name]).flatten().tolist()
              if value != 0]
    assert all(value in (1.0, -1.0, 2.0, -2.0, 3.0, -3.0) for value in values)
    assert reduction.outcome.verdict == "mismatch"
    assert reduction.note.startswith(f"reduced in {reduction.evaluations} evaluations to 1 nonzero input element")


def test_reduced_literal_replays_after_json():
    implementation = get("unfold_transposed")
    case, context, outcome = _failing(implementation, in_channels=2, height=4, width=5, kernel_height=2,
                                      kernel_width=2)
    reduction = reduce_inputs(implementation, outcome, context)

    stored = json.loads(json.dumps(plain(reduction.literal)))
    replayed = evaluate(implementation, case, CaseContext(case, literal=stored))

    assert replayed.verdict == "mismatch"
    assert replayed.comparison.mismatched == reduction.outcome.comparison.mismatched


def test_literal_shapes_match_case():
    implementation = _implementation(corners.bias_doubled)
    case, context, outcome = _failing(implementation, in_channels=2, out_channels=3, height=3, width=4,
                                      kernel_height=2, kernel_width=2, bias=True, dtype="float64")

    reduction = reduce_inputs(implementation, outcome, context)

    assert list(torch.tensor(reduction.literal["input"]).shape) == list(case.input_shape)
    assert list(torch.tensor(reduction.literal["weight"]).shape) == list(case.weight_shape)
    assert list(torch.tensor(reduction.literal["bias"]).shape) == [case.out_channels]


def test_bias_bug_keeps_one_bias_of_one():
    implementation = _implementation(corners.bias_doubled)
    _, context, outcome = _failing(implementation, **{**corners.bias_doubled.trigger, "in_channels": 2,
                                                      "out_channels": 2})

    reduction = reduce_inputs(implementation, outcome, context)

    assert _nonzero(reduction.literal) == {"input": 0, "weight": 0, "bias": 1}
    assert sorted(reduction.literal["bias"]) == [0.0, 1.0]


def test_shape_bug_without_keep_zeroes_everything():
    implementation = _implementation(corners.stride_ignored)
    _, context, outcome = _failing(implementation, **corners.stride_ignored.trigger)

    reduction = reduce_inputs(implementation, outcome, context)

    assert reduction.outcome.verdict == "shape_mismatch"
    assert _nonzero(reduction.literal) == {"input": 0, "weight": 0}


def test_shape_bug_with_keep_stays_informative():
    implementation = _implementation(corners.stride_ignored)
    _, context, outcome = _failing(implementation, **corners.stride_ignored.trigger)

    reduction = reduce_inputs(implementation, outcome, context, keep=_keeps("stride_ignored", implementation))

    assert _nonzero(reduction.literal) == {"input": 1, "weight": 1}


def test_keep_predicate_is_respected():
    implementation = get("unfold_transposed")
    _, context, outcome = _failing(implementation, height=4, width=4, kernel_height=2, kernel_width=2)

    def keep(new_outcome: Outcome, new_context: CaseContext) -> bool:
        return int(new_context.inputs64.input.count_nonzero()) >= 3

    reduction = reduce_inputs(implementation, outcome, context, keep=keep)

    assert _nonzero(reduction.literal)["input"] == 3


def test_layout_kept_through_reduction():
    implementation = _implementation(corners.channels_last_misread)
    case, context, outcome = _failing(implementation, **corners.channels_last_misread.trigger)

    reduction = reduce_inputs(implementation, outcome, context)

    assert reduction.outcome.verdict == "mismatch"
    assert reduction.context.inputs.input.is_contiguous(memory_format=torch.channels_last)
    assert not reduction.context.inputs.input.is_contiguous()
    assert sum(_nonzero(reduction.literal).values()) <= 3


def test_budget_stops_reduction():
    implementation = get("unfold_transposed")
    _, context, outcome = _failing(implementation, in_channels=2, height=5, width=5, kernel_height=2,
                                   kernel_width=2)

    reduction = reduce_inputs(implementation, outcome, context, max_evaluations=4)

    assert reduction.evaluations == 4
    assert "stopped at the budget of 4 evaluations" in reduction.note
    assert reduction.literal is not None
    assert reduction.outcome.verdict == "mismatch"


def test_large_inputs_stay_seed_based():
    implementation = get("unfold_transposed")
    _, context, outcome = _failing(implementation, in_channels=4, height=8, width=9, kernel_height=2,
                                   kernel_width=2)

    reduction = reduce_inputs(implementation, outcome, context)

    assert reduction.literal is None
    assert reduction.evaluations == 0
    assert reduction.note == (f"the inputs have {reduction.elements} elements, more than {MAX_LITERAL_ELEMENTS}: "
                              "kept the seed-based inputs")


def test_dtype_mismatch_not_reduced():
    implementation = _implementation(precision.float64_returned_as_float32)
    _, context, outcome = _failing(implementation, **precision.float64_returned_as_float32.trigger)

    reduction = reduce_inputs(implementation, outcome, context)

    assert reduction.literal is None
    assert reduction.note == "dtype_mismatch outcomes are not reduced"


def test_passing_outcome_not_reduced():
    implementation = register("reduce_torch_conv2d", F.conv2d)
    case = ConvCase(height=3, width=3)
    context = CaseContext(case)
    outcome = evaluate(implementation, case, context)

    reduction = reduce_inputs(implementation, outcome, context)

    assert outcome.passed
    assert reduction.literal is None
    assert reduction.note == "pass outcomes are not reduced"


def hides_non_finite(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return torch.nan_to_num(F.conv2d(input, weight, bias, stride, padding, dilation, groups), nan=0.0,
                            posinf=0.0, neginf=0.0)


def test_non_finite_values_stay_seed_based():
    implementation = register("reduce_hides_non_finite", hides_non_finite)
    for seed in range(50):
        case = ConvCase(height=4, width=4, kernel_height=2, kernel_width=2, dtype="float64", values="special",
                        seed=seed)
        context = CaseContext(case)
        outcome = evaluate(implementation, case, context)
        if not outcome.passed:
            break
    else:
        pytest.fail("no seed in 0..49 puts a NaN or infinity into the output")

    reduction = reduce_inputs(implementation, outcome, context)

    assert outcome.verdict == "special_value_mismatch"
    assert reduction.literal is None
    assert reduction.note.endswith("NaN or infinity remain, so the seed-based inputs are kept")
    assert sum(reduction.nonzero.values()) >= 1


def test_precision_bug_keeps_non_integers():
    implementation = _implementation(precision.float16_accumulation)
    case, context, outcome = _failing(implementation, in_channels=4, out_channels=1, height=4, width=4,
                                      kernel_height=3, kernel_width=3, values="normal", dtype="float32")

    reduction = reduce_inputs(implementation, outcome, context,
                              keep=_keeps("low_precision_accumulation", implementation))

    assert reduction.literal is not None
    assert reduction.outcome.verdict == "mismatch"
    remaining = [value for name in ("input", "weight")
                 for value in torch.tensor(reduction.literal[name]).flatten().tolist() if value != 0]
    # Small integers sum exactly in float16 too, so a value that needs rounding must remain.
    assert any(not math.isclose(value, round(value)) for value in remaining)
    assert len(remaining) < 10
