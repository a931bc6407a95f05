"""Property tests of the conv_cases() strategy."""

from __future__ import annotations

import collections

import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from difftest.case import ConvCase
from difftest.errors import UsageError
from difftest.registry import Supports
from strategies import conv_cases


@settings(max_examples=3000, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_cases(supports=Supports(padding_modes={"zeros", "reflect", "replicate", "circular"})))
def test_drawn_cases_are_valid(case):
    assert case.is_valid(), case
    assert case.in_channels % case.groups == 0
    assert case.out_channels % case.groups == 0
    assert min(case.output_hw) >= 1


@settings(max_examples=300, database=None)
@given(conv_cases(supports=Supports(padding_modes={"zeros", "reflect", "replicate", "circular"})))
def test_torch_accepts_drawn_cases(case):
    import torch.nn.functional as F

    from difftest.reference import conv2d_as_module
    from difftest.values import make_inputs

    inputs = make_inputs(case)
    output = conv2d_as_module(F.conv2d, case, inputs.input, inputs.weight, inputs.bias)
    assert tuple(output.shape) == case.output_shape


@settings(max_examples=300, database=None)
@given(conv_cases(dtypes={"float64"}, allow_groups=False, max_size=5, max_kernel=2, max_batch=2,
                  allow_long_reductions=False))
def test_narrowing_arguments_respected(case):
    assert case.dtype == "float64"
    assert case.groups == 1
    assert max(case.height, case.width) <= 5 or min(case.output_hw) >= 1
    assert max(case.kernel_height, case.kernel_width) <= 2
    assert case.batch <= 2


@settings(max_examples=300, database=None)
@given(st.data())
def test_supports_declaration_respected(data):
    supports = Supports(dtypes={"float32"}, stride=False, dilation=False, groups=False, bias=False,
                        padding_forms={"int"}, layouts={"contiguous"}, unbatched=False)
    case = data.draw(conv_cases(supports=supports))
    assert supports.rejects(case) is None, supports.rejects(case)


def _shrunk(strategy, is_failure):
    """Return the case Hypothesis shrinks to for a test that fails when ``is_failure`` holds."""
    seen = []

    @settings(database=None, max_examples=500, report_multiple_bugs=False)
    @given(strategy)
    def check(case):
        seen.append(case)
        assert not is_failure(case)

    with pytest.raises(AssertionError):
        check()
    return seen[-1]


def test_shrinks_to_plainest_case():
    assert _shrunk(conv_cases(), lambda case: True) == ConvCase()


def test_shrinks_toward_plain_values_of_each_dimension():
    found = _shrunk(conv_cases(), lambda case: case.reduction_length >= 4)
    assert (found.batch, found.unbatched, found.groups) == (1, False, 1)
    assert found.dtype == "float32"
    assert found.device == "cpu"
    assert found.stride == (1, 1)
    assert found.padding == (0, 0)
    assert found.padding_mode == "zeros"
    assert found.dilation == (1, 1)
    assert (found.input_layout, found.weight_layout) == ("contiguous", "contiguous")
    assert found.bias is False
    assert found.values == "integers"
    assert found.seed == 0


def test_shrinks_away_from_padding_form():
    supports = Supports(padding_modes={"zeros", "reflect", "replicate", "circular"})
    found = _shrunk(conv_cases(supports=supports), lambda case: case.height >= 3)
    assert found.padding == (0, 0)
    assert found.padding_mode == "zeros"
    assert found.height == 3
    assert found.width == 1


def test_corners_are_reached():
    counts = collections.Counter()
    supports = Supports(padding_modes={"zeros", "reflect", "replicate", "circular"})

    @settings(max_examples=2000, database=None)
    @given(conv_cases(supports=supports))
    def collect(case):
        counts["grouped"] += case.groups > 1
        counts["depthwise"] += case.groups > 1 and case.in_channels == case.groups
        counts["non-square kernel"] += case.kernel_height != case.kernel_width
        counts["per-axis stride"] += case.stride[0] != case.stride[1]
        counts["per-axis dilation"] += case.dilation[0] != case.dilation[1]
        counts["same"] += case.padding == "same"
        counts["valid"] += case.padding == "valid"
        counts["padding mode"] += case.padding_mode != "zeros"
        counts["unbatched"] += case.unbatched
        counts["channels_last"] += case.input_layout == "channels_last"
        counts["expanded weight"] += case.weight_layout == "expanded"
        counts["bias"] += case.bias
        counts["long reduction"] += case.reduction_length >= 1000
        for dtype in ("float16", "bfloat16", "float64"):
            counts[dtype] += case.dtype == dtype

    collect()
    missing = [corner for corner in ("grouped", "depthwise", "non-square kernel", "per-axis stride",
                                     "per-axis dilation", "same", "valid", "padding mode", "unbatched",
                                     "channels_last", "expanded weight", "bias", "long reduction",
                                     "float16", "bfloat16", "float64") if counts[corner] == 0]
    assert missing == []


def test_empty_narrowing_named_in_error():
    with pytest.raises(UsageError) as error:
        find(conv_cases(supports=Supports(dtypes={"float32"}), dtypes={"float64"}), lambda case: True)
    assert "dtypes=['float64'] is invalid" in str(error.value)


def test_unknown_dtype_named_in_error():
    with pytest.raises(UsageError, match="dtypes='float8' is invalid"):
        find(conv_cases(dtypes={"float8"}), lambda case: True)
