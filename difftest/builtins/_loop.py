"""Direct convolution: one output position at a time."""

from __future__ import annotations

from typing import Any, Optional

import torch

from difftest.builtins._common import prepare

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
    """Sum input patch times filter at each output (row, column), vectorised over batch and channels."""
    args = prepare(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    x = args.padded_input()
    batch, channels, height, width = x.shape
    x = x.reshape(batch, args.groups, channels // args.groups, height, width)
    # (groups, out per group, in per group, KH, KW), broadcast against each patch.
    w = args.grouped_weight()
    (oh, ow), (sh, sw), (dh, dw) = args.output_size, args.stride, args.dilation
    extent_h, extent_w = args.dilated_kernel

    output = x.new_empty(batch, args.groups, w.shape[1], oh, ow)
    for row in range(oh):
        top = row * sh
        for col in range(ow):
            left = col * sw
            patch = x[:, :, :, top:top + extent_h:dh, left:left + extent_w:dw]
            output[:, :, :, row, col] = (patch.unsqueeze(2) * w).sum(dim=(3, 4, 5))

    return args.finish(output.reshape(batch, -1, oh, ow))
