"""Wrong conv2d implementations that lose precision or return the wrong dtype.

Small integer-valued inputs stay exact in every one of them except
``float64_returned_as_float32``, whose output dtype is wrong, and
``odd_reduction_drops_last_term`` and ``fft_wraps_around``, which drop or
misplace whole terms. Each function takes conv2d's arguments plus nn.Conv2d's
``padding_mode`` keyword, and accepts 3-D (CHW) input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.wrong._common import (
    PLAIN_3X3,
    batched,
    declare,
    explicit_padding,
    pad_input,
    pair,
    reference_conv2d,
)

__all__ = [
    "float16_accumulation",
    "bfloat16_accumulation",
    "float64_computed_in_float32",
    "float64_returned_as_float32",
    "odd_reduction_drops_last_term",
    "fft_wraps_around",
    "IMPLEMENTATIONS",
]

ALL_PADDING_MODES = {"zeros", "reflect", "replicate", "circular"}

# A reduction long enough (8 channels x 3x3 kernel = 72 terms) and with
# non-integer values, so rounding in a narrow accumulator is far above the
# rounding of a float32 sum.
_ROUNDING_TRIGGER = dict(in_channels=8, out_channels=2, height=6, width=6, kernel_height=3, kernel_width=3,
                         dtype="float32", values="normal")


def _columns(input, weight, stride, padding, dilation, groups, padding_mode):
    """Return the im2col columns, the weight and the output size for a grouped matrix product.

    The columns are (N, groups, terms, positions) and the weight is
    (groups, out_channels / groups, terms), in the same term order.
    """
    stride, dilation = pair(stride), pair(dilation)
    kernel = (weight.shape[-2], weight.shape[-1])
    padded = pad_input(input, explicit_padding(padding, kernel, dilation), padding_mode)
    columns = F.unfold(padded, kernel, dilation=dilation, stride=stride)
    out_h = (padded.shape[-2] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    out_w = (padded.shape[-1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    batch = input.shape[0]
    columns = columns.reshape(batch, groups, -1, columns.shape[-1])
    weight = weight.reshape(groups, weight.shape[0] // groups, -1)
    return columns, weight, (out_h, out_w)


def _finish(sums, bias, size):
    """Reshape (N, groups, O/groups, positions) sums into NCHW and add the bias."""
    batch = sums.shape[0]
    output = sums.reshape(batch, -1, *size)
    if bias is not None:
        output = output + bias.reshape(1, -1, 1, 1)
    return output


def _narrow_accumulation(input, weight, bias, stride, padding, dilation, groups, padding_mode, accumulator):
    """Sum the products one term at a time, rounding the running sum to ``accumulator`` after each term.

    Products and each single addition are exact in the input dtype; only the
    running sum is narrowed, as in a kernel with a narrow accumulator.
    """
    columns, weight, size = _columns(input, weight, stride, padding, dilation, groups, padding_mode)
    terms = columns.shape[2]
    total = torch.zeros(columns.shape[0], columns.shape[1], weight.shape[1], columns.shape[3],
                        dtype=accumulator, device=input.device)
    for term in range(terms):
        product = weight[None, :, :, term, None] * columns[:, :, None, term, :]
        total = (total.to(input.dtype) + product).to(accumulator)
    return _finish(total.to(input.dtype), bias, size)


@declare(
    bug_class="float16_accumulation",
    expected_diagnosis="low_precision_accumulation",
    expected_verdict="mismatch",
    trigger=_ROUNDING_TRIGGER,
    plain=PLAIN_3X3,
    dtypes={"float32", "float64"},
    padding_modes=ALL_PADDING_MODES,
)
@batched
def float16_accumulation(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                         padding_mode="zeros"):
    """Accumulate the reduction in float16 for float32 and float64 input."""
    return _narrow_accumulation(input, weight, bias, stride, padding, dilation, groups, padding_mode,
                                torch.float16)


@declare(
    bug_class="bfloat16_accumulation",
    expected_diagnosis="low_precision_accumulation",
    expected_verdict="mismatch",
    trigger=_ROUNDING_TRIGGER,
    plain=PLAIN_3X3,
    dtypes={"float32", "float64"},
    padding_modes=ALL_PADDING_MODES,
)
@batched
def bfloat16_accumulation(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                          padding_mode="zeros"):
    """Accumulate the reduction in bfloat16 for float32 and float64 input."""
    return _narrow_accumulation(input, weight, bias, stride, padding, dilation, groups, padding_mode,
                                torch.bfloat16)


@declare(
    bug_class="float64_computed_in_float32",
    expected_diagnosis="low_precision_accumulation",
    expected_verdict="mismatch",
    trigger={**_ROUNDING_TRIGGER, "dtype": "float64"},
    plain=PLAIN_3X3,
    dtypes={"float32", "float64"},
    padding_modes=ALL_PADDING_MODES,
)
@batched
def float64_computed_in_float32(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                                padding_mode="zeros"):
    """Compute float64 input in float32 and cast the result back to float64."""
    if input.dtype != torch.float64:
        return reference_conv2d(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    bias = None if bias is None else bias.float()
    output = reference_conv2d(input.float(), weight.float(), bias, stride, padding, dilation, groups, padding_mode)
    return output.double()


@declare(
    bug_class="float64_returned_as_float32",
    expected_diagnosis=None,
    expected_verdict="dtype_mismatch",
    trigger=dict(height=3, width=3, dtype="float64"),
    plain={**PLAIN_3X3, "dtype": "float32"},
    dtypes={"float32", "float64"},
    padding_modes=ALL_PADDING_MODES,
)
@batched
def float64_returned_as_float32(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                                padding_mode="zeros"):
    """Return a float32 result for float64 input."""
    output = reference_conv2d(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    return output.to(torch.float32)


@declare(
    bug_class="odd_reduction_drops_last_term",
    expected_diagnosis=None,
    expected_verdict="mismatch",
    trigger=dict(height=3, width=3, kernel_height=3, kernel_width=3, dtype="float64"),
    # One channel and a 1x2 kernel make an even reduction of 2 terms.
    plain=dict(height=3, width=3, kernel_height=1, kernel_width=2, dtype="float64"),
    padding_modes=ALL_PADDING_MODES,
)
@batched
def odd_reduction_drops_last_term(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                                  padding_mode="zeros"):
    """Sum the reduction in pairs of terms and lose the unpaired last term when its length is odd.

    The reduction runs over (in_channels / groups) x kernel_height x
    kernel_width terms; the one dropped is the last input channel's
    bottom-right kernel tap.
    """
    columns, weight, size = _columns(input, weight, stride, padding, dilation, groups, padding_mode)
    paired = columns.shape[2] - columns.shape[2] % 2
    sums = torch.matmul(weight[:, :, :paired], columns[:, :, :paired, :])
    return _finish(sums, bias, size)


@declare(
    bug_class="fft_wraps_around",
    expected_diagnosis=None,
    expected_verdict="mismatch",
    trigger=dict(height=4, width=4, kernel_height=3, kernel_width=3, padding=(1, 1), dtype="float64"),
    plain=PLAIN_3X3,
    dtypes={"float32", "float64"},
    padding_modes=ALL_PADDING_MODES,
    error_model="normwise",
)
@batched
def fft_wraps_around(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """Cross-correlate through a 2-D FFT whose size is the unpadded input's, not the padded one's.

    Without padding the circular correlation equals the linear one on every
    output position. With padding the transform crops the padded input, and
    output positions near the bottom and right wrap around to the top and left.
    """
    stride, dilation = pair(stride), pair(dilation)
    batch, in_channels, height, width = input.shape
    out_channels, group_channels, kernel_h, kernel_w = weight.shape
    padded = pad_input(input, explicit_padding(padding, (kernel_h, kernel_w), dilation), padding_mode)

    # Dilate the kernel by inserting zeros between its taps.
    span_h = dilation[0] * (kernel_h - 1) + 1
    span_w = dilation[1] * (kernel_w - 1) + 1
    dilated = weight.new_zeros(out_channels, group_channels, span_h, span_w)
    dilated[..., :: dilation[0], :: dilation[1]] = weight

    # The bug: the size should be padded.shape[-2:].
    size = (max(height, span_h), max(width, span_w))
    signal = torch.fft.rfft2(padded, s=size)
    kernel = torch.fft.rfft2(dilated, s=size)
    signal = signal.reshape(batch, groups, group_channels, *signal.shape[-2:])
    kernel = kernel.reshape(groups, out_channels // groups, group_channels, *kernel.shape[-2:])
    spectrum = torch.einsum("ngcij,gocij->ngoij", signal, kernel.conj())
    correlation = torch.fft.irfft2(spectrum, s=size).reshape(batch, out_channels, *size)

    # Output position i reads correlation row i * stride, modulo the transform size.
    out_h = (padded.shape[-2] - span_h) // stride[0] + 1
    out_w = (padded.shape[-1] - span_w) // stride[1] + 1
    rows = (torch.arange(out_h, device=input.device) * stride[0]) % size[0]
    columns = (torch.arange(out_w, device=input.device) * stride[1]) % size[1]
    output = correlation[:, :, rows[:, None], columns[None, :]]
    if bias is not None:
        output = output + bias.reshape(1, -1, 1, 1)
    return output.to(input.dtype)


IMPLEMENTATIONS = [
    float16_accumulation,
    bfloat16_accumulation,
    float64_computed_in_float32,
    float64_returned_as_float32,
    odd_reduction_drops_last_term,
    fft_wraps_around,
]
