"""The comparison's own error statistics against the stand-alone computation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from difftest.case import ConvCase
from difftest.compare import compare_values, count_special_mismatches, error_statistics
from difftest.runner import Outcome
from difftest.tolerance import Bound

SPECIAL = (math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-300)


@st.composite
def outputs(draw):
    """Draw (actual, truth, bound) of one shape, with special values and bounds of 0 and infinity."""
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=4, max_size=4)))
    count = math.prod(shape)
    finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
    values = st.one_of(finite, st.sampled_from(SPECIAL))
    truth = torch.tensor(draw(st.lists(values, min_size=count, max_size=count)), dtype=torch.float64).reshape(shape)
    noise = torch.tensor(draw(st.lists(values, min_size=count, max_size=count)), dtype=torch.float64).reshape(shape)
    # Some outputs equal the truth, which takes the comparison's fast path.
    actual = truth.clone() if draw(st.booleans()) else truth + noise
    limits = st.one_of(st.floats(0, 1e3, allow_nan=False), st.sampled_from((0.0, math.inf)))
    bound = torch.tensor(draw(st.lists(limits, min_size=count, max_size=count)), dtype=torch.float64).reshape(shape)
    return actual.float(), truth, Bound(bound, "elementwise", 2.0**-24, "float32", 1, 1.0)


def same(left: float, right: float) -> bool:
    return (math.isnan(left) and math.isnan(right)) or left == right


@given(outputs())
def test_comparison_statistics_match_error_statistics(drawn):
    actual, truth, bound = drawn
    comparison = compare_values(actual, truth, bound)
    expected = error_statistics(actual, truth, bound)
    for key, value in comparison.error_statistics().items():
        assert same(value, expected[key]), (key, value, expected[key])


@given(outputs())
def test_comparison_special_count_matches(drawn):
    actual, truth, bound = drawn
    assert compare_values(actual, truth, bound).special_mismatches == count_special_mismatches(actual, truth)


@pytest.mark.parametrize("mine, theirs, text", [
    (2.0, 1.0, "2 times less accurate than torch"),
    (1.0, 4.0, "4 times more accurate than torch"),
    (0.0, 0.0, "both it and torch match the truth exactly"),
    (1.0, 0.0, "torch matches the truth exactly, the implementation does not"),
    (1.0, math.nan, "torch's own error is not finite on this case, so no ratio is given"),
    (1.0, math.inf, "torch's own error is not finite on this case, so no ratio is given"),
])
def test_accuracy_text_against_torch(mine, theirs, text):
    outcome = Outcome("conv", ConvCase(), "mismatch", implementation_error={"max_error": mine},
                      torch_error={"max_error": theirs})
    assert outcome.accuracy_text() == text
