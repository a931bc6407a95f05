"""Half-precision convolution that accumulates in float32."""

from __future__ import annotations

from typing import Any, Optional

import torch

from difftest.builtins._common import HALF_DTYPES, prepare
from difftest.builtins._im2col import im2col_product

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
    """Upcast float16 or bfloat16 operands to float32, convolve by im2col there and round the result once.

    Raises TypeError for any other dtype.
    """
    if input.dtype not in HALF_DTYPES:
        raise TypeError(f"input has dtype {input.dtype}: this implementation takes float16 or bfloat16 only")
    args = prepare(input, weight, bias, stride, padding, dilation, groups, padding_mode).cast(torch.float32)
    return args.finish(im2col_product(args))
