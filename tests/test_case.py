"""Unit tests of the case model."""

from __future__ import annotations

import pickle

import pytest

from difftest.case import ConvCase, explicit_padding, output_size
from difftest.errors import UsageError


def test_defaults_are_plainest_case():
    case = ConvCase()
    assert case.input_shape == (1, 1, 1, 1)
    assert case.weight_shape == (1, 1, 1, 1)
    assert case.output_shape == (1, 1, 1, 1)
    assert case.reduction_length == 1
    assert case.is_valid()


def test_json_round_trip_keeps_every_field():
    case = ConvCase(batch=2, in_channels=4, out_channels=6, height=7, width=5, kernel_height=3,
                    kernel_width=2, stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2, bias=True,
                    padding_mode="reflect", dtype="bfloat16", input_layout="sliced",
                    weight_layout="channels_last", values="normal", seed=12345)
    again = ConvCase.from_json(case.to_json())
    assert again == case
    assert again.describe() == case.describe()


def test_json_round_trip_string_padding():
    case = ConvCase(height=4, width=4, kernel_height=2, kernel_width=2, padding="same")
    assert ConvCase.from_json(case.to_json()).padding == "same"


def test_case_pickles():
    case = ConvCase(unbatched=True, in_channels=3, height=4, width=4)
    assert pickle.loads(pickle.dumps(case)) == case


def test_unbatched_shapes():
    case = ConvCase(unbatched=True, in_channels=3, out_channels=2, height=4, width=5, kernel_height=3,
                    kernel_width=3)
    assert case.input_shape == (3, 4, 5)
    assert case.output_shape == (2, 2, 3)


def test_descriptor_is_one_line_and_file_safe():
    case = ConvCase(padding="same", kernel_height=2, kernel_width=2, height=3, width=3, device="cuda:0")
    text = case.describe()
    assert "\n" not in text
    assert not set(text) & set("/\\: ")


def test_descriptor_format():
    case = ConvCase(batch=64, in_channels=3, out_channels=8, height=32, width=32, kernel_height=5,
                    kernel_width=5, values="arange", seed=1)
    assert case.describe() == "n64c3h32w32_o8k5x5_s1x1p0x0d1x1g1_nobias_float32-cpu_arange1"


def test_same_padding_puts_extra_pixel_bottom_right():
    assert explicit_padding("same", (4, 2), (1, 3)) == (1, 2, 1, 2)
    assert explicit_padding("valid", (4, 2), (1, 1)) == (0, 0, 0, 0)
    assert explicit_padding((2, 1), (3, 3), (1, 1)) == (2, 2, 1, 1)


def test_output_size_formula():
    assert output_size((7, 9), (3, 2), (2, 3), (1, 0), (1, 2)) == (4, 3)
    assert output_size((5, 5), (4, 4), (1, 1), "same", (1, 1)) == (5, 5)


@pytest.mark.parametrize(
    "changes",
    [
        {"groups": 2, "in_channels": 3, "out_channels": 2},
        {"kernel_height": 3, "height": 2},
        {"padding": "same", "stride": (2, 1), "height": 3, "width": 3},
        {"padding_mode": "reflect", "padding": (2, 0), "height": 2, "width": 3},
    ],
)
def test_invalid_cases_detected(changes):
    assert not ConvCase(**changes).is_valid()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("dtype", "float8", "dtype='float8' is invalid: expected one of float32, float64, float16, bfloat16"),
        ("batch", 0, "batch=0 is invalid: expected a positive int"),
        ("padding", "full", "padding='full' is invalid: expected a pair of ints, 'valid' or 'same'"),
        ("stride", (1, 2, 3), "stride=(1, 2, 3) is invalid: expected an int or a pair of ints. pass stride=(1, 1)"),
    ],
)
def test_bad_field_named_in_error(field, value, message):
    with pytest.raises(UsageError) as error:
        ConvCase(**{field: value})
    assert str(error.value) == message


def test_unknown_json_field_rejected():
    with pytest.raises(UsageError, match="unknown field"):
        ConvCase.from_dict({"batch": 1, "colour": "red"})


def test_as_call_lists_one_argument_per_line():
    text = ConvCase(bias=True, padding_mode="circular", padding=(1, 1)).as_call()
    lines = text.splitlines()
    assert lines[0] == "conv2d("
    assert lines[-1] == ")"
    assert "    padding=1," in lines
    assert "    padding_mode='circular'," in lines
