"""im2col convolution: torch.nn.functional.unfold and a matrix product."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from difftest.builtins._common import ConvArguments, prepare

__all__ = ["conv2d", "im2col_product"]


def im2col_product(args: ConvArguments) -> torch.Tensor:
    """Return the (B, O, OH, OW) convolution of ``args`` without bias, in the input's dtype."""
    top, bottom, left, right = args.padding
    x = args.input
    # F.unfold pads both sides of an axis alike; the extra bottom and right
    # pixel of 'same' with an even dilated kernel is added here first.
    symmetric = (min(top, bottom), min(left, right))
    if (top, left) != (bottom, right):
        x = F.pad(x, (left - symmetric[1], right - symmetric[1], top - symmetric[0], bottom - symmetric[0]))

    columns = F.unfold(x, args.kernel, dilation=args.dilation, padding=symmetric, stride=args.stride)
    batch, rows, positions = columns.shape
    # Rows are ordered (channel, kernel row, kernel column), so each group's rows are contiguous.
    columns = columns.reshape(batch, args.groups, rows // args.groups, positions)
    w = args.grouped_weight()
    w = w.reshape(args.groups, w.shape[1], -1)
    output = torch.matmul(w, columns)

    return output.reshape(batch, -1, *args.output_size)


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
    """Multiply the weight, as a (O, C*KH*KW) matrix per group, by the im2col columns of the input."""
    args = prepare(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    return args.finish(im2col_product(args))
