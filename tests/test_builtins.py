"""The built-in implementations against torch's conv2d on a table of cases.

Small integer values make float64 sums exact, so every exact built-in must
match torch bit for bit. FFT convolution rounds inside its transforms and is
compared with a tolerance instead. The reference applies non-zeros padding
modes through nn.Conv2d itself.
"""

from __future__ import annotations

import importlib
import shutil
from dataclasses import dataclass
from typing import Any, Optional

import pytest
import torch
import torch.nn.functional as F

import difftest.builtins as builtins
from difftest.builtins import _common
from difftest.registry import get

# Built-ins whose float64 results on small integers must equal torch's exactly.
EXACT_FLOAT64 = ("loop", "unfold", "im2col", "winograd", "einsum_strided",
                 "torch_mkldnn", "torch_no_mkldnn", "torch_channels_last")
# Compiling takes seconds per new argument combination; it gets its own test.
SLOW = ("torch_compile",)


@dataclass(frozen=True)
class Case:
    """One conv2d call: shapes, options and the memory layout of input and weight."""

    id: str
    input_shape: tuple[int, ...]
    weight_shape: tuple[int, int, int, int]
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1
    bias: bool = False
    padding_mode: str = "zeros"
    input_layout: str = "contiguous"
    weight_layout: str = "contiguous"


CASES = [
    Case("basic", (2, 3, 6, 7), (4, 3, 3, 3), padding=1, bias=True),
    Case("per_axis", (2, 4, 9, 11), (6, 4, 3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    Case("stride3_odd", (1, 2, 10, 8), (3, 2, 2, 3), stride=3),
    Case("groups2", (2, 4, 7, 6), (6, 2, 3, 3), padding=1, groups=2, bias=True),
    Case("depthwise", (2, 4, 8, 7), (8, 1, 3, 2), stride=(1, 2), padding=(2, 1), groups=4, bias=True),
    Case("kernel_1x1", (2, 3, 5, 4), (2, 3, 1, 1), bias=True),
    Case("kernel_is_input", (2, 2, 4, 5), (3, 2, 4, 5)),
    Case("same_even", (1, 2, 6, 7), (3, 2, 2, 4), padding="same", bias=True),
    Case("same_dilated", (2, 2, 7, 9), (2, 2, 2, 3), padding="same", dilation=(2, 3)),
    Case("same_odd_3x3", (1, 3, 5, 6), (2, 3, 3, 3), padding="same"),
    Case("valid", (2, 3, 7, 5), (4, 3, 3, 2), padding="valid", bias=True),
    Case("reflect", (2, 2, 6, 7), (3, 2, 3, 3), padding=(1, 2), padding_mode="reflect", bias=True),
    Case("replicate", (1, 2, 5, 6), (4, 2, 2, 3), stride=(1, 2), padding=2, padding_mode="replicate"),
    Case("circular", (2, 4, 5, 6), (4, 2, 3, 3), padding=(2, 1), groups=2, padding_mode="circular"),
    Case("reflect_same_even", (1, 2, 6, 5), (2, 2, 2, 4), padding="same", padding_mode="reflect"),
    Case("circular_dilated", (1, 2, 6, 7), (2, 2, 3, 2), padding=1, dilation=2, padding_mode="circular"),
    Case("unbatched", (3, 6, 7), (4, 3, 3, 2), padding=(1, 0), bias=True),
    Case("unbatched_reflect", (2, 5, 6), (2, 2, 3, 3), padding=1, padding_mode="reflect"),
    Case("sliced", (2, 3, 6, 8), (4, 3, 3, 3), padding=1, input_layout="sliced", weight_layout="sliced"),
    Case("offset", (2, 2, 5, 6), (3, 2, 3, 3), stride=2, input_layout="offset"),
    Case("transposed", (2, 3, 5, 8), (4, 3, 2, 3), padding=(0, 1), bias=True,
         input_layout="transposed", weight_layout="transposed"),
    Case("channels_last", (2, 4, 6, 5), (4, 2, 3, 3), padding=1, groups=2,
         input_layout="channels_last", weight_layout="channels_last"),
    Case("expanded", (3, 2, 6, 7), (4, 2, 3, 3), padding="same", padding_mode="replicate",
         input_layout="expanded", weight_layout="expanded"),
    Case("sliced_unbatched", (2, 7, 6), (3, 2, 3, 2), stride=2, padding=1, input_layout="sliced"),
]


def relayout(tensor: torch.Tensor, layout: str) -> torch.Tensor:
    """Return the values of ``tensor`` in the memory layout named ``layout``.

    ``expanded`` repeats the first entry along axis 0 with stride 0, so it
    changes the values; the others keep them.
    """
    if layout == "contiguous":
        return tensor.contiguous()
    if layout == "sliced":
        larger = tensor.new_zeros(*tensor.shape[:-1], 2 * tensor.shape[-1])
        larger[..., ::2] = tensor
        return larger[..., ::2]
    if layout == "offset":
        # A contiguous view that starts past the beginning of its storage.
        larger = tensor.new_zeros(tensor.shape[0] + 1, *tensor.shape[1:])
        larger[1:] = tensor
        return larger[1:]
    if layout == "transposed":
        return tensor.transpose(-2, -1).contiguous().transpose(-2, -1)
    if layout == "channels_last":
        return tensor.contiguous(memory_format=torch.channels_last)
    if layout == "expanded":
        return tensor[:1].expand(tensor.shape)
    raise AssertionError(f"unknown layout {layout}")


def make_tensors(
    case: Case, dtype: torch.dtype, values: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Return input, weight and bias of ``case``, integers in [-3, 3] or standard normal."""
    generator = torch.Generator().manual_seed(seed)

    def draw(shape: tuple[int, ...]) -> torch.Tensor:
        if values == "integers":
            return torch.randint(-3, 4, shape, generator=generator).to(dtype)
        return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)

    input = relayout(draw(case.input_shape), case.input_layout)
    weight = relayout(draw(case.weight_shape), case.weight_layout)
    bias = draw((case.weight_shape[0],)) if case.bias else None
    return input, weight, bias


def reference(case: Case, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Return torch's result on contiguous copies, through nn.Conv2d for non-zeros padding modes."""
    input, weight = input.contiguous(), weight.contiguous()
    if case.padding_mode == "zeros":
        return F.conv2d(input, weight, bias, case.stride, case.padding, case.dilation, case.groups)
    out_channels, group_channels, kh, kw = weight.shape
    module = torch.nn.Conv2d(group_channels * case.groups, out_channels, (kh, kw), case.stride, case.padding,
                             case.dilation, case.groups, bias is not None, case.padding_mode, dtype=weight.dtype)
    with torch.no_grad():
        module.weight.copy_(weight)
        if bias is not None:
            module.bias.copy_(bias)
        return module(input)


def run(name: str, case: Case, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return get(name).function(input, weight, bias, case.stride, case.padding, case.dilation, case.groups,
                              padding_mode=case.padding_mode)


def declares(name: str, dtype: str) -> bool:
    return dtype in get(name).supports.dtypes


FAST_CORRECT = [name for name in builtins.CORRECT if name not in SLOW]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_reference_accepts_case(case: Case) -> None:
    input, weight, bias = make_tensors(case, torch.float64, "integers", 0)
    assert reference(case, input, weight, bias).dim() == len(case.input_shape)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
@pytest.mark.parametrize("name", [n for n in FAST_CORRECT if n in EXACT_FLOAT64])
def test_float64_integers_exact(name: str, case: Case) -> None:
    input, weight, bias = make_tensors(case, torch.float64, "integers", seed=1)
    expected = reference(case, input, weight, bias)

    actual = run(name, case, input, weight, bias)

    assert actual.shape == expected.shape
    assert actual.dtype == torch.float64
    assert torch.equal(actual, expected), f"greatest difference {(actual - expected).abs().max().item()}"


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_fft_float64_integers_close(case: Case) -> None:
    input, weight, bias = make_tensors(case, torch.float64, "integers", seed=1)
    expected = reference(case, input, weight, bias)

    actual = run("fft", case, input, weight, bias)

    # Rounding in the float64 transforms stays far below 1e-9 at these sizes.
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
@pytest.mark.parametrize("name", [n for n in FAST_CORRECT if declares(n, "float32")])
def test_float32_random_close(name: str, case: Case) -> None:
    input, weight, bias = make_tensors(case, torch.float32, "normal", seed=2)
    expected = reference(case, input, weight, bias)

    actual = run(name, case, input, weight, bias)

    assert actual.dtype == torch.float32
    # 1e-5 is about 170 float32 unit roundoffs (2**-24), ample for sums of at most 40 products of unit-size terms.
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


HALF_CASES = [case for case in CASES if case.id in (
    "basic", "per_axis", "depthwise", "same_even", "reflect", "circular", "unbatched", "transposed", "expanded",
)]


@pytest.mark.parametrize("case", HALF_CASES, ids=lambda case: case.id)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", [n for n in FAST_CORRECT if declares(n, "float16") or declares(n, "bfloat16")])
def test_half_integers(name: str, dtype: torch.dtype, case: Case) -> None:
    if not declares(name, str(dtype).removeprefix("torch.")):
        pytest.skip(f"{name} does not declare {dtype}")
    input, weight, bias = make_tensors(case, dtype, "integers", seed=3)
    # Sums of at most 27 products of integers in [-3, 3], plus the bias, stay below 256 in
    # magnitude here, so both half dtypes hold the exact result.
    upcast = None if bias is None else bias.double()
    expected = reference(case, input.double(), weight.double(), upcast).to(dtype)

    actual = run(name, case, input, weight, bias)

    assert actual.dtype == dtype
    if name == "fft":
        # float32 transforms leave residues near 1e-6 where the exact output is 0.
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-3)
    else:
        assert torch.equal(actual, expected), f"greatest difference {(actual - expected).abs().max().item()}"


@pytest.mark.parametrize("case", HALF_CASES, ids=lambda case: case.id)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", [n for n in FAST_CORRECT if declares(n, "float16") or declares(n, "bfloat16")])
def test_half_random_close(name: str, dtype: torch.dtype, case: Case) -> None:
    if not declares(name, str(dtype).removeprefix("torch.")):
        pytest.skip(f"{name} does not declare {dtype}")
    input, weight, bias = make_tensors(case, dtype, "normal", seed=4)
    upcast = None if bias is None else bias.double()
    truth = reference(case, input.double(), weight.double(), upcast)

    actual = run(name, case, input, weight, bias)

    # A float32 sum rounded once to the output: about one unit roundoff
    # (2**-11 float16, 2**-8 bfloat16) of the result, plus slack for cancellation.
    rtol = {torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(actual.double(), truth, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("name", ["half_fp32_accumulate", "torch_half"])
def test_half_only_rejects_float32(name: str) -> None:
    case = CASES[0]
    input, weight, bias = make_tensors(case, torch.float32, "integers", 0)
    with pytest.raises(TypeError, match="float16 or bfloat16 only"):
        run(name, case, input, weight, bias)


def c_compiler_available() -> bool:
    return any(shutil.which(compiler) for compiler in ("g++", "c++", "clang++"))


@pytest.mark.skipif(not c_compiler_available(), reason="torch.compile's inductor backend needs a C++ compiler")
def test_torch_compile_one_case() -> None:
    case = next(case for case in CASES if case.id == "reflect")
    input, weight, bias = make_tensors(case, torch.float64, "integers", seed=5)
    expected = reference(case, input, weight, bias)

    actual = run("torch_compile", case, input, weight, bias)

    assert torch.equal(actual, expected)


# unfold_transposed orders its patches column by column and reads the product
# back row by row. Its output is therefore the true output transposed and
# reshaped to the true shape: bad == true.transpose(-2, -1).reshape(true.shape).


def unfold_transposed_pair(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    input, weight, bias = make_tensors(case, torch.float64, "integers", seed=6)
    return run("unfold_transposed", case, input, weight, bias), reference(case, input, weight, bias)


@pytest.mark.parametrize("case", [case for case in CASES if case.id in ("basic", "per_axis", "groups2", "reflect")],
                         ids=lambda case: case.id)
def test_unfold_transposed_differs_from_reference(case: Case) -> None:
    bad, expected = unfold_transposed_pair(case)

    assert expected.shape[-2] != expected.shape[-1]
    assert bad.shape == expected.shape
    assert not torch.equal(bad, expected)


@pytest.mark.parametrize("case", [case for case in CASES if case.id in ("basic", "per_axis", "groups2", "reflect")],
                         ids=lambda case: case.id)
def test_unfold_transposed_is_reshaped_transpose(case: Case) -> None:
    bad, expected = unfold_transposed_pair(case)

    assert torch.equal(bad, expected.transpose(-2, -1).reshape(expected.shape))


def test_unfold_transposed_square_output_is_transpose() -> None:
    bad, expected = unfold_transposed_pair(Case("square", (2, 3, 6, 6), (4, 3, 3, 3), padding=1))

    assert not torch.equal(bad, expected)
    assert torch.equal(bad, expected.transpose(-2, -1))


def test_unfold_transposed_single_row_output_is_correct() -> None:
    bad, expected = unfold_transposed_pair(Case("one_row", (2, 3, 3, 9), (4, 3, 3, 3)))

    assert expected.shape[-2] == 1
    assert torch.equal(bad, expected)


def test_unfold_transposed_swapped_input_gives_reference_reshaped() -> None:
    # Swapping H and W of input and weight makes the true output ref^T, so
    # the bad result is ref reshaped to the swapped shape.
    case = Case("swap", (2, 3, 7, 9), (4, 3, 3, 2), stride=(2, 1), padding=(1, 0), bias=True)
    input, weight, bias = make_tensors(case, torch.float64, "integers", seed=7)
    expected = reference(case, input, weight, bias)

    swapped = Case("swapped", (2, 3, 9, 7), (4, 3, 2, 3), stride=(1, 2), padding=(0, 1), bias=True)
    bad = run("unfold_transposed", swapped, input.transpose(-2, -1), weight.transpose(-2, -1), bias)

    batch, channels, height, width = expected.shape
    assert torch.equal(bad, expected.reshape(batch, channels, width, height))


@pytest.mark.parametrize("name", FAST_CORRECT)
def test_invalid_arguments_rejected(name: str) -> None:
    dtype = torch.float16 if not declares(name, "float32") else torch.float32
    input = torch.ones(1, 4, 5, 5, dtype=dtype)
    weight = torch.ones(2, 4, 3, 3, dtype=dtype)

    with pytest.raises(ValueError, match="supports it only at stride 1"):
        get(name).function(input, weight, None, 2, "same", padding_mode="reflect")
    with pytest.raises(ValueError, match="padding_mode='mirror' is invalid"):
        get(name).function(input, weight, None, 1, 1, padding_mode="mirror")


@pytest.mark.parametrize("name", [n for n in FAST_CORRECT if not n.startswith("torch_")])
def test_own_argument_checks(name: str) -> None:
    dtype = torch.float16 if not declares(name, "float32") else torch.float32
    input = torch.ones(1, 4, 5, 5, dtype=dtype)
    function = get(name).function

    with pytest.raises(ValueError, match="expected 4-D NCHW or 3-D CHW"):
        function(input[0, 0], torch.ones(2, 4, 3, 3, dtype=dtype))
    with pytest.raises(ValueError, match="but input has 4 channels"):
        function(input, torch.ones(2, 3, 3, 3, dtype=dtype))
    with pytest.raises(ValueError, match="not divisible by groups=2"):
        function(input, torch.ones(3, 2, 3, 3, dtype=dtype), groups=2)
    with pytest.raises(TypeError, match="weight has dtype"):
        function(input, torch.ones(2, 4, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="padding='full' is invalid"):
        function(input, torch.ones(2, 4, 3, 3, dtype=dtype), padding="full")
    with pytest.raises(ValueError, match="is empty because the dilated kernel"):
        function(input, torch.ones(2, 4, 3, 3, dtype=dtype), dilation=3)


def test_registered_names_and_targets() -> None:
    assert builtins.CORE == ("loop", "unfold_transposed", "unfold", "im2col")
    assert "unfold_transposed" not in builtins.CORRECT
    for name in (*builtins.CORRECT, "unfold_transposed"):
        implementation = get(name)
        module_name, function_name = implementation.target.split(":")
        target = getattr(importlib.import_module(module_name), function_name)
        assert target is implementation.function, name
        assert implementation.expected_to_fail == (name == "unfold_transposed"), name
        assert implementation.supports.padding_modes == {"zeros", "reflect", "replicate", "circular"}, name


def test_declared_dtypes_and_error_models() -> None:
    assert get("half_fp32_accumulate").supports.dtypes == {"float16", "bfloat16"}
    assert get("torch_half").supports.dtypes == {"float16", "bfloat16"}
    assert get("loop").supports.dtypes == {"float32", "float64"}
    assert get("fft").supports.error_model == "normwise"
    assert get("winograd").supports.error_model == "normwise"
    assert get("im2col").supports.error_model == "elementwise"
    assert "special" not in get("fft").supports.value_kinds
    assert "special" not in get("winograd").supports.value_kinds
    assert "special" in get("loop").supports.value_kinds


@pytest.mark.parametrize("name", ["fft", "winograd"])
def test_transforms_turn_infinity_into_nan(name: str) -> None:
    # This is why fft and winograd exclude special values: torch returns inf
    # everywhere here, but the transforms compute inf - inf.
    input = torch.ones(1, 1, 4, 4)
    input[0, 0, 1, 1] = float("inf")
    weight = torch.ones(1, 1, 3, 3)

    assert torch.isinf(F.conv2d(input, weight)).all()
    assert torch.isnan(get(name).function(input, weight)).any()


def test_all_lists_exports() -> None:
    for name in builtins.__all__:
        assert hasattr(builtins, name), name
    functions = {name for name in builtins.__all__ if name.startswith("conv2d_")}
    assert functions == {f"conv2d_{name}" for name in (*builtins.CORRECT, "unfold_transposed")}


def test_winograd_takes_fallback_path() -> None:
    # A 3x3 kernel at stride 2 is outside F(2x2, 3x3), so the im2col fallback computes it.
    case = Case("winograd_strided", (1, 2, 7, 8), (3, 2, 3, 3), stride=2, padding=1, bias=True)
    input, weight, bias = make_tensors(case, torch.float64, "integers", seed=8)

    assert torch.equal(run("winograd", case, input, weight, bias), reference(case, input, weight, bias))


def test_winograd_odd_output_tiles() -> None:
    # Outputs of 1x1 and 3x5 need a padded last tile in each direction.
    for shape in ((1, 2, 3, 3), (2, 2, 5, 7)):
        case = Case("odd", shape, (2, 2, 3, 3), bias=True)
        input, weight, bias = make_tensors(case, torch.float64, "integers", seed=9)
        assert torch.equal(run("winograd", case, input, weight, bias), reference(case, input, weight, bias))


def test_common_explicit_padding_same_even_kernel() -> None:
    arguments = _common.prepare(torch.ones(1, 1, 6, 6), torch.ones(1, 1, 2, 4), padding="same", dilation=(1, 3))
    # Totals 1 and 9: the odd pixel goes to the bottom and the right.
    assert arguments.padding == (0, 1, 4, 5)
    assert arguments.output_size == (6, 6)
