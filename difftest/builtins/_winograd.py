"""Winograd F(2x2, 3x3) convolution, with im2col for every other case."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from difftest.builtins._common import HALF_DTYPES, ConvArguments, prepare
from difftest.builtins._im2col import im2col_product

__all__ = ["conv2d"]

# Transforms of F(2, 3) (Lavin and Gray, "Fast Algorithms for Convolutional
# Neural Networks", 2016): output tile = A^T [(G g G^T) * (B^T d B)] A for a
# 3x3 filter g and a 4x4 input tile d; this form computes a correlation.
INPUT_TRANSFORM = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))  # B^T
FILTER_TRANSFORM = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))  # G
OUTPUT_TRANSFORM = ((1, 1, 1, 0), (0, 1, -1, -1))  # A^T


def _winograd_product(args: ConvArguments) -> torch.Tensor:
    """Return the (B, O, OH, OW) convolution without bias for a 3x3 kernel, stride 1, dilation 1."""
    x = args.padded_input()
    batch, channels, height, width = x.shape
    oh, ow = args.output_size
    tiles_h, tiles_w = (oh + 1) // 2, (ow + 1) // 2
    # Zero-pad so the last tile is whole; its extra outputs are cropped below.
    x = F.pad(x, (0, 2 * tiles_w + 2 - width, 0, 2 * tiles_h + 2 - height))

    def matrix(rows: tuple[tuple[float, ...], ...]) -> torch.Tensor:
        return torch.tensor(rows, dtype=x.dtype, device=x.device)

    b_t, g, a_t = matrix(INPUT_TRANSFORM), matrix(FILTER_TRANSFORM), matrix(OUTPUT_TRANSFORM)

    # 4x4 input tiles two apart: (B, G, C/G, TH, TW, 4, 4).
    tiles = x.unfold(2, 4, 2).unfold(3, 4, 2)
    tiles = tiles.reshape(batch, args.groups, channels // args.groups, tiles_h, tiles_w, 4, 4)
    v = b_t @ tiles @ b_t.T
    u = g @ args.grouped_weight() @ g.T
    m = torch.einsum("bgcyxij,gocij->bgoyxij", v, u)
    y = a_t @ m @ a_t.T

    # (B, G, O/G, TH, TW, 2, 2) -> (B, O, 2 TH, 2 TW), then crop the padded tile.
    y = y.permute(0, 1, 2, 3, 5, 4, 6).reshape(batch, -1, 2 * tiles_h, 2 * tiles_w)
    return y[..., :oh, :ow]


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
    """Convolve 3x3 kernels at stride 1 and dilation 1 by Winograd F(2x2, 3x3), anything else by im2col.

    float16 and bfloat16 inputs are computed in float32 and rounded back at the end.
    """
    args = prepare(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    if args.input.dtype in HALF_DTYPES:
        args = args.cast(torch.float32)
    if args.kernel == (3, 3) and args.stride == (1, 1) and args.dilation == (1, 1):
        return args.finish(_winograd_product(args))
    return args.finish(im2col_product(args))
