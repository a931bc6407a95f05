"""Wrong conv2d implementations whose bug lives in one corner of conv2d's options.

Each function is correct outside its corner, so a test that finds it shows
that difftest reaches that corner. Every function takes conv2d's arguments
plus nn.Conv2d's ``padding_mode`` keyword, and accepts 3-D (CHW) input.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from tests.wrong._common import (
    PLAIN_1X1,
    PLAIN_3X3,
    batched,
    conv2d_explicit,
    declare,
    explicit_padding,
    pad_input,
    pair,
    reference_conv2d,
)

__all__ = [
    "padding_one_side",
    "padding_shifted",
    "padding_axis_mixed",
    "stride_axis_mixed",
    "dilation_axis_mixed",
    "dilation_ignored_when_strided",
    "stride_ignored",
    "dilation_ignored",
    "groups_rotated",
    "depthwise_groups_ignored",
    "noncontiguous_read_as_contiguous",
    "channels_last_misread",
    "same_padding_wrong_side",
    "circular_height_zero_padded",
    "kernel_flipped",
    "output_transposed_when_square",
    "output_channels_rolled",
    "next_output_channel_added",
    "divided_by_kernel_area",
    "batch_rolled",
    "batch_mixed",
    "bias_missing",
    "bias_doubled",
    "bias_along_width",
    "output_size_ceil",
    "IMPLEMENTATIONS",
]

ALL_PADDING_MODES = {"zeros", "reflect", "replicate", "circular"}


def _pads(weight: torch.Tensor, padding: Any, dilation: Any) -> tuple[int, int, int, int]:
    return explicit_padding(padding, (weight.shape[-2], weight.shape[-1]), pair(dilation))


# Padding ------------------------------------------------------------------


@declare(
    bug_class="padding_one_side",
    expected_diagnosis="padding_one_side",
    expected_verdict="shape_mismatch",
    trigger=dict(height=3, width=3, kernel_height=3, kernel_width=3, padding=(1, 1), dtype="float64"),
    plain=PLAIN_3X3,
    padding_modes={"zeros"},
)
@batched
def padding_one_side(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """Pad only the top and left borders, so the output loses rows and columns at the end."""
    top, _, left, _ = _pads(weight, padding, dilation)
    return conv2d_explicit(input, weight, bias, stride, (top, 0, left, 0), dilation, groups, padding_mode)


@declare(
    bug_class="padding_shifted",
    expected_diagnosis="padding_shifted",
    expected_verdict="mismatch",
    trigger=dict(height=3, width=3, kernel_height=3, kernel_width=3, padding=(1, 1), dtype="float64"),
    plain=PLAIN_3X3,
    padding_modes={"zeros"},
)
@batched
def padding_shifted(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """Move one pixel of padding from bottom to top and from right to left.

    Only an axis padded on both sides is shifted, so the padding stays valid
    and the output keeps its shape.
    """
    top, bottom, left, right = _pads(weight, padding, dilation)
    if top > 0 and bottom > 0:
        top, bottom = top + 1, bottom - 1
    if left > 0 and right > 0:
        left, right = left + 1, right - 1
    return conv2d_explicit(input, weight, bias, stride, (top, bottom, left, right), dilation, groups, padding_mode)


@declare(
    bug_class="padding_axis_mixed",
    expected_diagnosis="padding_axis_mixed",
    expected_verdict="shape_mismatch",
    trigger=dict(height=3, width=3, kernel_height=3, kernel_width=3, padding=(1, 0), dtype="float64"),
    plain=PLAIN_3X3,
    padding_modes={"zeros"},
)
@batched
def padding_axis_mixed(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """Pad the width by the height's padding, which is correct only when both axes get the same padding."""
    top, bottom, _, _ = _pads(weight, padding, dilation)
    return conv2d_explicit(input, weight, bias, stride, (top, bottom, top, bottom), dilation, groups, padding_mode)


@declare(
    bug_class="same_padding_wrong_side",
    expected_diagnosis="same_padding_wrong_side",
    expected_verdict="mismatch",
    trigger=dict(height=3, width=3, kernel_height=2, kernel_width=2, padding="same", dtype="float64"),
    plain=PLAIN_3X3,
    padding_modes={"zeros"},
)
@batched
def same_padding_wrong_side(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                            padding_mode="zeros"):
    """Put the odd pixel of ``'same'`` padding at the top and left instead of the bottom and right."""
    top, bottom, left, right = _pads(weight, padding, dilation)
    if padding == "same":
        top, bottom, left, right = bottom, top, right, left
    return conv2d_explicit(input, weight, bias, stride, (top, bottom, left, right), dilation, groups, padding_mode)


@declare(
    bug_class="circular_height_zero_padded",
    expected_diagnosis="circular_wrong_axis",
    expected_verdict="mismatch",
    trigger=dict(height=3, width=3, kernel_height=3, kernel_width=3, padding=(1, 1), padding_mode="circular",
                 dtype="float64"),
    plain=PLAIN_3X3,
    padding_modes=ALL_PADDING_MODES,
)
@batched
def circular_height_zero_padded(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                                padding_mode="zeros"):
    """Wrap only the width in circular mode and pad the height with zeros."""
    top, bottom, left, right = _pads(weight, padding, dilation)
    if padding_mode != "circular":
        return conv2d_explicit(input, weight, bias, stride, (top, bottom, left, right), dilation, groups,
                               padding_mode)
    wrapped = pad_input(input, (0, 0, left, right), "circular")
    padded = pad_input(wrapped, (top, bottom, 0, 0), "zeros")
    return F.conv2d(padded, weight, bias, pair(stride), 0, pair(dilation), groups)


# Stride and dilation --------------------------------------------------------


@declare(
    bug_class="stride_axis_mixed",
    expected_diagnosis="stride_axis_mixed",
    expected_verdict="shape_mismatch",
    trigger=dict(height=4, width=4, stride=(1, 2), dtype="float64"),
    plain=PLAIN_3X3,
    padding_modes=ALL_PADDING_MODES,
)
@batched
def stride_axis_mixed(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """Use the height's stride on both axes."""
    stride_h, _ = pair(stride)
    return reference_conv2d(input, weight, bias, (stride_h, stride_h), padding, dilation, groups, padding_mode)


@declare(
    bug_class="dilation_axis_mixed",
    expected_diagnosis="dilation_axis_mixed",
    expected_verdict="shape_mismatch",
    trigger=dict(height=5, width=5, kernel_height=2, kernel_width=2, dilation=(1, 2), dtype="float64"),
    plain=PLAIN_3X3,
    padding_modes=ALL_PADDING_MODES,
)
@batched
def dilation_axis_mixed(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """Use the height's dilation on both axes, for the padding as well as the kernel."""
    dilation_h, _ = pair(dilation)
    return reference_conv2d(input, weight, bias, stride, padding, (dilation_h, dilation_h), groups, padding_mode)


@declare(
    bug_class="dilation_ignored_when_strided",
    expected_diagnosis="dilation_ignored",
    expected_verdict="mismatch",
    trigger=dict(height=5, width=5, kernel_height=2, kernel_width=2, stride=(2, 2), dilation=(2, 2),
                 dtype="float64"),
    plain=PLAIN_3X3,
    padding_modes=ALL_PADDING_MODES,
)
@batched
def dilation_ignored_when_strided(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                                  padding_mode="zeros"):
    """Read the input without dilation whenever a stride is above 1, keeping the output's shape.

    The output size and the padding are computed with the dilation. Only the
    input positions of the kernel taps are wrong, so the shape is correct and
    the values differ.
    """
    stride, dilation = pair(stride), pair(dilation)
    pads = _pads(weight, padding, dilation)
    correct = conv2d_explicit(input, weight, bias, stride, pads, dilation, groups, padding_mode)
    if max(stride) == 1:
        return correct
    undilated = conv2d_explicit(input, weight, bias, stride, pads, 1, groups, padding_mode)
    return undilated[..., : correct.shape[-2], : correct.shape[-1]]


@declare(
    bug_class="stride_ignored",
    expected_diagnosis="stride_ignored",
    expected_verdict="shape_mismatch",
    trigger=dict(height=4, width=4, stride=(2, 2), dtype="float64"),
    plain=PLAIN_3X3,
    padding_modes=ALL_PADDING_MODES,
)
@batched
def stride_ignored(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """Convolve with stride 1 whatever stride is passed."""
    return reference_conv2d(input, weight, bias, 1, padding, dilation, groups, padding_mode)


@declare(
    bug_class="dilation_ignored",
    expected_diagnosis="dilation_ignored",
    expected_verdict="shape_mismatch",
    trigger=dict(height=5, width=5, kernel_height=2, kernel_width=2, dilation=(2, 2), dtype="float64"),
    plain=PLAIN_3X3,
    padding_modes=ALL_PADDING_MODES,
)
@batched
def dilation_ignored(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """Convolve with dilation 1 whatever dilation is passed.

    With ``padding='same'`` the padding follows the ignored dilation too, so
    the shape is correct and only the values differ.
    """
    return reference_conv2d(input, weight, bias, stride, padding, 1, groups, padding_mode)


@declare(
    bug_class="output_size_ceil",
    expected_diagnosis="output_shape_off_by_one",
    expected_verdict="shape_mismatch",
    trigger=dict(height=4, width=4, stride=(2, 2), dtype="float64"),
    plain=PLAIN_3X3,
    padding_modes=ALL_PADDING_MODES,
)
@batched
def output_size_ceil(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """Round the output size up instead of down, adding a row or column when the stride leaves a remainder.

    The extra row and column read zeros beyond the padded input, as pooling
    with ``ceil_mode=True`` would.
    """
    stride, dilation = pair(stride), pair(dilation)
    pads = _pads(weight, padding, dilation)
    padded = pad_input(input, pads, padding_mode)
    extra = []
    for axis in range(2):
        span = dilation[axis] * (weight.shape[2 + axis] - 1) + 1
        remainder = (padded.shape[2 + axis] - span) % stride[axis]
        extra.append((stride[axis] - remainder) % stride[axis])
    padded = pad_input(padded, (0, extra[0], 0, extra[1]), "zeros")
    return F.conv2d(padded, weight, bias, stride, 0, dilation, groups)


# Groups -----------------------------------------------------------------------


@declare(
    bug_class="groups_rotated",
    expected_diagnosis="groups_misassigned",
    expected_verdict="mismatch",
    trigger=dict(in_channels=2, out_channels=2, height=3, width=3, groups=2, dtype="float64"),
    plain=PLAIN_3X3,
    padding_modes=ALL_PADDING_MODES,
)
@batched
def groups_rotated(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """Apply each group's filters to the next group's input channels."""
    out_channels = weight.shape[0]
    by_group = weight.reshape(groups, out_channels // groups, *weight.shape[1:])
    rotated = by_group.roll(1, dims=0).reshape(weight.shape)
    return reference_conv2d(input, rotated, bias, stride, padding, dilation, groups, padding_mode)


@declare(
    bug_class="depthwise_groups_ignored",
    expected_diagnosis="groups_ignored",
    expected_verdict="mismatch",
    trigger=dict(in_channels=2, out_channels=2, height=3, width=3, groups=2, dtype="float64"),
    plain=PLAIN_3X3,
    padding_modes=ALL_PADDING_MODES,
)
@batched
def depthwise_groups_ignored(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                             padding_mode="zeros"):
    """Sum over every input channel in a depthwise convolution (groups equal to in_channels).

    Each filter is applied to all input channels, so the output keeps its
    shape. Other group counts are computed correctly.
    """
    in_channels = input.shape[1]
    if groups > 1 and groups == in_channels:
        weight = weight.expand(-1, in_channels, -1, -1)
        groups = 1
    return reference_conv2d(input, weight, bias, stride, padding, dilation, groups, padding_mode)


# Memory layout ------------------------------------------------------------------


def _contiguous_strides(shape: torch.Size) -> tuple[int, ...]:
    strides = []
    step = 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


@declare(
    bug_class="noncontiguous_read_as_contiguous",
    expected_diagnosis="layout_dependent",
    expected_verdict="mismatch",
    trigger=dict(in_channels=2, height=3, width=3, input_layout="channels_last", dtype="float64"),
    plain=PLAIN_3X3,
    padding_modes=ALL_PADDING_MODES,
    # NOTE: an expanded input has less storage than its shape, so reading it
    # as contiguous raises instead of returning wrong values.
    layouts={"contiguous", "channels_last", "sliced", "transposed"},
)
@batched
def noncontiguous_read_as_contiguous(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                                     padding_mode="zeros"):
    """Read the input's storage as if it were contiguous NCHW, whatever its strides."""
    misread = torch.as_strided(input, input.shape, _contiguous_strides(input.shape))
    return reference_conv2d(misread, weight, bias, stride, padding, dilation, groups, padding_mode)


@declare(
    bug_class="channels_last_misread",
    expected_diagnosis="layout_dependent",
    expected_verdict="mismatch",
    trigger=dict(in_channels=2, height=3, width=3, input_layout="channels_last", dtype="float64"),
    plain=PLAIN_3X3,
    padding_modes=ALL_PADDING_MODES,
)
@batched
def channels_last_misread(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                          padding_mode="zeros"):
    """Reshape a channels_last input's NHWC data straight into NCHW.

    Correct for one input channel, where both orders store the same sequence.
    """
    if not input.is_contiguous() and input.is_contiguous(memory_format=torch.channels_last):
        input = input.permute(0, 2, 3, 1).reshape(input.shape)
    return reference_conv2d(input, weight, bias, stride, padding, dilation, groups, padding_mode)


# Kernel and spatial axes ---------------------------------------------------------


@declare(
    bug_class="kernel_flipped",
    expected_diagnosis="kernel_flipped",
    expected_verdict="mismatch",
    trigger=dict(height=3, width=3, kernel_height=2, kernel_width=2, dtype="float64"),
    plain=PLAIN_1X1,
    padding_modes=ALL_PADDING_MODES,
)
@batched
def kernel_flipped(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """Compute a true convolution (kernel rotated by 180 degrees) instead of a cross-correlation."""
    return reference_conv2d(input, weight.flip(-2, -1), bias, stride, padding, dilation, groups, padding_mode)


def _swapped_padding(padding: Any) -> Any:
    if isinstance(padding, str) or isinstance(padding, int):
        return padding
    height, width = padding
    return (width, height)


@declare(
    bug_class="output_transposed_when_square",
    expected_diagnosis="spatial_axes_swapped",
    expected_verdict="mismatch",
    trigger=dict(height=4, width=4, kernel_height=2, kernel_width=2, dtype="float64"),
    plain=PLAIN_3X3,
    padding_modes=ALL_PADDING_MODES,
)
@batched
def output_transposed_when_square(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                                  padding_mode="zeros"):
    """Convolve the spatially transposed problem and transpose back only when the output is not square.

    A square output of more than one element comes back with height and
    width swapped. A non-square output is correct.
    """
    stride_h, stride_w = pair(stride)
    dilation_h, dilation_w = pair(dilation)
    transposed = reference_conv2d(
        input.transpose(2, 3), weight.transpose(2, 3), bias, (stride_w, stride_h), _swapped_padding(padding),
        (dilation_w, dilation_h), groups, padding_mode,
    )
    if transposed.shape[-2] != transposed.shape[-1]:
        return transposed.transpose(2, 3)
    return transposed


# Output channels and batch -----------------------------------------------------


@declare(
    bug_class="output_channels_rolled",
    expected_diagnosis="output_channels_permuted",
    expected_verdict="mismatch",
    trigger=dict(out_channels=2, height=3, width=3, dtype="float64"),
    plain=PLAIN_3X3,
    padding_modes=ALL_PADDING_MODES,
)
@batched
def output_channels_rolled(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                           padding_mode="zeros"):
    """Write output channel c to channel c + 1, the last one wrapping to the first."""
    output = reference_conv2d(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    return output.roll(1, dims=1)


@declare(
    bug_class="next_output_channel_added",
    expected_diagnosis="output_channels_mixed",
    expected_verdict="mismatch",
    # 16 positions for 3 channels, so the mixing matrix is fitted from the case alone.
    trigger=dict(out_channels=3, height=4, width=4, dtype="float64"),
    plain=PLAIN_3X3,
    padding_modes=ALL_PADDING_MODES,
)
@batched
def next_output_channel_added(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                              padding_mode="zeros"):
    """Add output channel c + 1 into channel c, as an off-by-one in a channel loop's accumulator would.

    The last channel keeps its own result, and one output channel is correct.
    """
    output = reference_conv2d(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    mixed = output.clone()
    mixed[:, :-1] += output[:, 1:]
    return mixed


@declare(
    bug_class="divided_by_kernel_area",
    expected_diagnosis="output_scaled",
    expected_verdict="mismatch",
    trigger=dict(height=3, width=3, kernel_height=2, kernel_width=2, dtype="float64"),
    plain=PLAIN_1X1,
    padding_modes=ALL_PADDING_MODES,
)
@batched
def divided_by_kernel_area(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                           padding_mode="zeros"):
    """Divide the result by the kernel area, as a convolution adapted from average pooling would."""
    output = reference_conv2d(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    return output / (weight.shape[-2] * weight.shape[-1])


@declare(
    bug_class="batch_rolled",
    expected_diagnosis="batch_permuted",
    expected_verdict="mismatch",
    trigger=dict(batch=2, height=3, width=3, dtype="float64"),
    plain=PLAIN_3X3,
    padding_modes=ALL_PADDING_MODES,
)
@batched
def batch_rolled(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """Write batch item n to item n + 1, the last one wrapping to the first."""
    output = reference_conv2d(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    return output.roll(1, dims=0)


@declare(
    bug_class="batch_mixed",
    expected_diagnosis="batch_mixed",
    expected_verdict="mismatch",
    trigger=dict(batch=2, height=3, width=3, dtype="float64"),
    plain=PLAIN_3X3,
    padding_modes=ALL_PADDING_MODES,
)
@batched
def batch_mixed(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """Add an eighth of the previous batch item to each item's input.

    The share is a power of two, so with integer-valued input the error is
    exact and never lost to rounding.
    """
    if input.shape[0] > 1:
        input = input + input.roll(1, dims=0) / 8
    return reference_conv2d(input, weight, bias, stride, padding, dilation, groups, padding_mode)


# Bias -------------------------------------------------------------------------------


@declare(
    bug_class="bias_missing",
    expected_diagnosis="bias_missing",
    expected_verdict="mismatch",
    trigger=dict(height=3, width=3, bias=True, dtype="float64"),
    plain=PLAIN_3X3,
    padding_modes=ALL_PADDING_MODES,
)
@batched
def bias_missing(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """Drop the bias."""
    return reference_conv2d(input, weight, None, stride, padding, dilation, groups, padding_mode)


@declare(
    bug_class="bias_doubled",
    expected_diagnosis="bias_doubled",
    expected_verdict="mismatch",
    trigger=dict(height=3, width=3, bias=True, dtype="float64"),
    plain=PLAIN_3X3,
    padding_modes=ALL_PADDING_MODES,
)
@batched
def bias_doubled(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """Add the bias twice."""
    output = reference_conv2d(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    if bias is None:
        return output
    return output + bias.reshape(1, -1, 1, 1)


@declare(
    bug_class="bias_along_width",
    expected_diagnosis="bias_wrong_axis",
    expected_verdict="mismatch",
    trigger=dict(out_channels=2, height=3, width=3, bias=True, dtype="float64"),
    plain={**PLAIN_3X3, "bias": True},
    padding_modes=ALL_PADDING_MODES,
)
@batched
def bias_along_width(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """Index the bias by output column (modulo out_channels) instead of by output channel.

    Correct for one output channel, and wrong for more whenever the bias values differ.
    """
    output = reference_conv2d(input, weight, None, stride, padding, dilation, groups, padding_mode)
    if bias is None:
        return output
    columns = torch.arange(output.shape[-1], device=bias.device) % bias.shape[0]
    return output + bias[columns].reshape(1, 1, 1, -1)


IMPLEMENTATIONS = [
    padding_one_side,
    padding_shifted,
    padding_axis_mixed,
    stride_axis_mixed,
    dilation_axis_mixed,
    dilation_ignored_when_strided,
    stride_ignored,
    dilation_ignored,
    groups_rotated,
    depthwise_groups_ignored,
    noncontiguous_read_as_contiguous,
    channels_last_misread,
    same_padding_wrong_side,
    circular_height_zero_padded,
    kernel_flipped,
    output_transposed_when_square,
    output_channels_rolled,
    next_output_channel_added,
    divided_by_kernel_area,
    batch_rolled,
    batch_mixed,
    bias_missing,
    bias_doubled,
    bias_along_width,
    output_size_ceil,
]
