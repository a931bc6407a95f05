"""Convolution as an einsum over a strided window view of the input."""

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
    """Contract a (B, G, C/G, OH, OW, KH, KW) as_strided window view with the weight by torch.einsum."""
    args = prepare(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    # as_strided indexes storage directly, so the strides below hold only for
    # a contiguous tensor; contiguous() also materialises expanded inputs.
    x = args.padded_input().contiguous()
    batch, channels, _, _ = x.shape
    batch_step, channel_step, row_step, col_step = x.stride()
    (oh, ow), (kh, kw) = args.output_size, args.kernel
    (sh, sw), (dh, dw) = args.stride, args.dilation

    windows = torch.as_strided(
        x,
        size=(batch, args.groups, channels // args.groups, oh, ow, kh, kw),
        stride=(batch_step, channel_step * (channels // args.groups), channel_step,
                row_step * sh, col_step * sw, row_step * dh, col_step * dw),
        storage_offset=x.storage_offset(),
    )
    output = torch.einsum("bgcyxij,gocij->bgoyx", windows, args.grouped_weight())

    return args.finish(output.reshape(batch, -1, oh, ow))
