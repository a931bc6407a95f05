"""FFT convolution: pointwise products of two-dimensional real FFTs."""

from __future__ import annotations

from typing import Any, Optional

import torch

from difftest.builtins._common import HALF_DTYPES, prepare

__all__ = ["conv2d"]


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Cross-correlate by multiplying rfft2(input) with the conjugate rfft2 of the dilated kernel.

    float16 and bfloat16 inputs are computed in float32 (torch.fft has no
    bfloat16 kernels) and rounded back at the end.
    """
    args = prepare(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    if args.input.dtype in HALF_DTYPES:
        args = args.cast(torch.float32)
    x = args.padded_input()
    batch, channels, height, width = x.shape

    # Dilate the kernel by placing its taps dilation apart in a zero kernel.
    w = args.grouped_weight()
    dilated = w.new_zeros(*w.shape[:3], *args.dilated_kernel)
    dilated[..., ::args.dilation[0], ::args.dilation[1]] = w

    # A transform of the padded input's own size suffices: the correlation at a
    # kept (valid) position n reads input indices n + m <= size - 1, so no
    # index wraps around. Conjugating the kernel's transform turns the
    # circular convolution into a correlation.
    size = (height, width)
    x_hat = torch.fft.rfft2(x.reshape(batch, args.groups, channels // args.groups, height, width), s=size)
    w_hat = torch.fft.rfft2(dilated, s=size).conj()
    product = torch.einsum("bgchw,gochw->bgohw", x_hat, w_hat)
    full = torch.fft.irfft2(product, s=size)

    valid_h = height - args.dilated_kernel[0] + 1
    valid_w = width - args.dilated_kernel[1] + 1
    output = full[..., :valid_h:args.stride[0], :valid_w:args.stride[1]]
    return args.finish(output.reshape(batch, -1, *args.output_size))
