"""torch's own conv2d paths, wrapped so difftest can test torch against a float64 truth.

Each wrapper applies a non-zeros padding mode the way nn.Conv2d does (F.pad,
then an unpadded convolution) and otherwise passes the arguments to
torch.nn.functional.conv2d unchanged, so torch's own padding, stride,
dilation, groups and unbatched handling are what gets tested.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from difftest.builtins._common import HALF_DTYPES, pre_pad
from difftest.reference import mkldnn_flags

__all__ = ["conv2d_mkldnn", "conv2d_no_mkldnn", "conv2d_channels_last", "conv2d_half", "conv2d_compiled"]


def _conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: int,
    padding_mode: str,
    conv: Callable[..., torch.Tensor] = F.conv2d,
) -> torch.Tensor:
    input, padding = pre_pad(input, weight, stride, padding, dilation, padding_mode)
    return conv(input, weight, bias, stride, padding, dilation, groups)


def conv2d_mkldnn(
    input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride: Any = 1,
    padding: Any = 0, dilation: Any = 1, groups: int = 1, padding_mode: str = "zeros",
) -> torch.Tensor:
    """Run torch's conv2d with the oneDNN (mkldnn) backend enabled."""
    with mkldnn_flags(True):
        return _conv(input, weight, bias, stride, padding, dilation, groups, padding_mode)


def conv2d_no_mkldnn(
    input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride: Any = 1,
    padding: Any = 0, dilation: Any = 1, groups: int = 1, padding_mode: str = "zeros",
) -> torch.Tensor:
    """Run torch's conv2d with the oneDNN (mkldnn) backend disabled, so ATen's own kernels run."""
    with mkldnn_flags(False):
        return _conv(input, weight, bias, stride, padding, dilation, groups, padding_mode)


def conv2d_channels_last(
    input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride: Any = 1,
    padding: Any = 0, dilation: Any = 1, groups: int = 1, padding_mode: str = "zeros",
) -> torch.Tensor:
    """Run torch's conv2d on input and weight converted to the channels_last memory format."""
    unbatched = input.dim() == 3
    if unbatched:
        # channels_last is defined for 4-D tensors only.
        input = input.unsqueeze(0)
    input = input.contiguous(memory_format=torch.channels_last)
    weight = weight.contiguous(memory_format=torch.channels_last)
    output = _conv(input, weight, bias, stride, padding, dilation, groups, padding_mode)
    return output[0] if unbatched else output


def conv2d_half(
    input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride: Any = 1,
    padding: Any = 0, dilation: Any = 1, groups: int = 1, padding_mode: str = "zeros",
) -> torch.Tensor:
    """Run torch's conv2d on float16 or bfloat16 operands as given. Raises TypeError for other dtypes."""
    if input.dtype not in HALF_DTYPES:
        raise TypeError(f"input has dtype {input.dtype}: this implementation takes float16 or bfloat16 only")
    return _conv(input, weight, bias, stride, padding, dilation, groups, padding_mode)


# torch.compile(F.conv2d), built on the first call because compiling costs
# seconds. Measured with torch 2.13 on a 2-core CPU, the first call took
# about 10 s with an empty inductor cache. Each new combination of stride,
# padding, dilation, groups and dtype took about 1 to 3 s. After the first
# shape change the graph is recompiled with dynamic shapes, so later new
# shapes cost nothing. dynamic=True from the start was no faster, because
# stride and the other int arguments are specialised either way.
_compiled: Optional[Callable[..., torch.Tensor]] = None
_compiled_lock = threading.Lock()

# After recompile_limit graphs for one function (8 in torch 2.13), Dynamo
# silently runs it eagerly. A fuzzer passes many argument combinations, so the
# limits are raised and hitting them raises an error instead.
_RECOMPILE_LIMITS = {"recompile_limit": 1024, "accumulated_recompile_limit": 65536,
                     "fail_on_recompile_limit_hit": True}


def _compiled_conv2d() -> Callable[..., torch.Tensor]:
    """Return the compiled conv2d, compiling it on the first call."""
    global _compiled
    with _compiled_lock:
        if _compiled is None:
            def conv(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     stride: Any, padding: Any, dilation: Any, groups: int) -> torch.Tensor:
                return F.conv2d(input, weight, bias, stride, padding, dilation, groups)

            _compiled = torch.compile(conv)
        return _compiled


def conv2d_compiled(
    input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride: Any = 1,
    padding: Any = 0, dilation: Any = 1, groups: int = 1, padding_mode: str = "zeros",
) -> torch.Tensor:
    """Run torch.compile(F.conv2d), compiled on the first call. Compilation errors propagate to the caller."""
    import torch._dynamo.config

    with torch._dynamo.config.patch(**_RECOMPILE_LIMITS):
        return _conv(input, weight, bias, stride, padding, dilation, groups, padding_mode, conv=_compiled_conv2d())
