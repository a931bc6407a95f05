"""Convolution from Tensor.unfold patches and one matrix product per group.

``unfold_transposed`` is wrong on purpose: it orders the patches column by
column but reads the product back row by row, so it returns the true output
with its spatial axes swapped (exactly: ``true.transpose(-2, -1)`` reshaped to
the true output shape). It is correct only when the output has one row or one
column. It shows what a finding looks like; ``unfold`` is the fixed version.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from difftest.builtins._common import ConvArguments, prepare

__all__ = ["conv2d", "conv2d_transposed"]


def _patches(args: ConvArguments) -> torch.Tensor:
    """Return the padded input's patches as (B, C, OH, OW, KH, KW)."""
    extent_h, extent_w = args.dilated_kernel
    patches = args.padded_input().unfold(2, extent_h, args.stride[0]).unfold(3, extent_w, args.stride[1])
    # Each window spans the dilated kernel; keep every dilation-th element of it.
    return patches[..., ::args.dilation[0], ::args.dilation[1]]


def _grouped_product(args: ConvArguments, patches: torch.Tensor) -> torch.Tensor:
    """Multiply (B, L, C, KH, KW) patches by the weight; return (B, L, O)."""
    batch, positions = patches.shape[:2]
    # (B, G, L, C/G * KH * KW) times (G, C/G * KH * KW, O/G) gives (B, G, L, O/G).
    grouped = patches.reshape(batch, positions, args.groups, -1).transpose(1, 2)
    w = args.grouped_weight()
    w = w.reshape(args.groups, w.shape[1], -1).transpose(1, 2)
    return torch.matmul(grouped, w).transpose(1, 2).reshape(batch, positions, -1)


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
    """Multiply row-major (B, L, C, KH, KW) unfold patches by the flattened weight."""
    args = prepare(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    patches = _patches(args)
    batch, channels, oh, ow, kh, kw = patches.shape

    patches = patches.reshape(batch, channels, oh * ow, kh, kw).permute(0, 2, 1, 3, 4)
    output = _grouped_product(args, patches)

    return args.finish(output.reshape(batch, oh, ow, -1).permute(0, 3, 1, 2))


def conv2d_transposed(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Known-bad: like :func:`conv2d`, but the patches come out column-major, swapping the spatial axes."""
    args = prepare(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    patches = _patches(args)
    batch, channels, oh, ow, kh, kw = patches.shape

    # The bug: transpose(1, 3) orders the positions as (OW, OH) ...
    patches = patches.transpose(1, 3).reshape(batch, oh * ow, channels, kh, kw)
    output = _grouped_product(args, patches)

    # ... and this reshape reads them back as (OH, OW).
    return args.finish(output.reshape(batch, oh, ow, -1).permute(0, 3, 1, 2))
