"""Argument normalisation shared by the built-in conv2d implementations.

Every built-in takes ``torch.nn.functional.conv2d``'s arguments plus
``nn.Conv2d``'s ``padding_mode``. :func:`prepare` turns them into a
:class:`ConvArguments` with a 4-D input, per-axis pairs and the explicit
(top, bottom, left, right) zero padding still to apply, so each
implementation only writes its own summation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F

from difftest.case import PADDING_MODES, explicit_padding

__all__ = [
    "ConvArguments",
    "HALF_DTYPES",
    "pair",
    "prepare",
    "pre_pad",
]

PaddingArgument = Union[int, tuple[int, int], str]

HALF_DTYPES = (torch.float16, torch.bfloat16)


def pair(name: str, value: Any) -> tuple[int, int]:
    """Return ``value`` as a (height, width) pair of ints; an int applies to both axes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"{name}={value!r} is invalid: expected an int or a pair of ints")


@dataclass(frozen=True)
class ConvArguments:
    """conv2d's arguments after normalisation.

    ``input`` is 4-D NCHW (a batch axis added for unbatched input) and already
    padded by ``padding_mode`` when that mode is not zeros, in which case
    ``padding`` is all zeros. ``padding`` is the (top, bottom, left, right)
    zero padding still to apply. ``result_dtype`` is the dtype of the
    caller's input, which :meth:`finish` casts the output back to.
    """

    input: torch.Tensor
    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]
    groups: int
    unbatched: bool
    result_dtype: torch.dtype
    # The caller's batch was empty; ``input`` then holds one item of zeros,
    # which :meth:`finish` drops again.
    empty_batch: bool = False

    @property
    def kernel(self) -> tuple[int, int]:
        return (self.weight.shape[2], self.weight.shape[3])

    @property
    def dilated_kernel(self) -> tuple[int, int]:
        """Extent of the kernel on the input, dilation included."""
        return tuple(self.dilation[i] * (self.kernel[i] - 1) + 1 for i in range(2))  # type: ignore[return-value]

    @property
    def output_size(self) -> tuple[int, int]:
        top, bottom, left, right = self.padding
        padded = (self.input.shape[2] + top + bottom, self.input.shape[3] + left + right)
        return tuple(  # type: ignore[return-value]
            (padded[i] - self.dilated_kernel[i]) // self.stride[i] + 1 for i in range(2)
        )

    def padded_input(self) -> torch.Tensor:
        """Return the input with the remaining zero padding applied."""
        if not any(self.padding):
            return self.input
        top, bottom, left, right = self.padding
        return F.pad(self.input, (left, right, top, bottom))

    def grouped_weight(self) -> torch.Tensor:
        """Return the weight as (groups, out_channels / groups, in_channels / groups, KH, KW)."""
        out_channels, group_channels, kh, kw = self.weight.shape
        return self.weight.reshape(self.groups, out_channels // self.groups, group_channels, kh, kw)

    def cast(self, dtype: torch.dtype) -> ConvArguments:
        """Return the arguments with input, weight and bias converted to ``dtype``.

        ``result_dtype`` stays the caller's dtype, so :meth:`finish` rounds back.
        """
        bias = None if self.bias is None else self.bias.to(dtype)
        return dataclasses.replace(self, input=self.input.to(dtype), weight=self.weight.to(dtype), bias=bias)

    def finish(self, output: torch.Tensor) -> torch.Tensor:
        """Add the bias to a (B, O, OH, OW) output, cast it to the caller's dtype and drop an added batch axis."""
        if self.bias is not None:
            output = output + self.bias.to(output.dtype).reshape(1, -1, 1, 1)
        output = output.to(self.result_dtype)
        if self.empty_batch:
            output = output[:0]
        return output[0] if self.unbatched else output


def prepare(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: Any = 1,
    padding: PaddingArgument = 0,
    dilation: Any = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> ConvArguments:
    """Check conv2d's arguments and return them normalised as :class:`ConvArguments`.

    Raises ValueError or TypeError where torch's conv2d would reject the call.
    """
    if input.dim() not in (3, 4):
        raise ValueError(f"input has shape {tuple(input.shape)}: expected 4-D NCHW or 3-D CHW")
    if weight.dim() != 4:
        raise ValueError(f"weight has shape {tuple(weight.shape)}: expected 4-D (out, in / groups, KH, KW)")
    for name, tensor in (("weight", weight), ("bias", bias)):
        if tensor is not None and tensor.dtype != input.dtype:
            raise TypeError(f"{name} has dtype {tensor.dtype} but input has {input.dtype}: pass tensors of one dtype")
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    # torch accepts an empty batch and returns an empty output. Computing one
    # item of zeros instead spares every implementation a zero-size axis.
    empty_batch = input.shape[0] == 0
    if empty_batch:
        input = input.new_zeros(1, *input.shape[1:])

    _check_channels(input, weight, bias, groups)
    stride = pair("stride", stride)
    dilation = pair("dilation", dilation)
    if min(stride) < 1 or min(dilation) < 1:
        raise ValueError(f"stride={stride} or dilation={dilation} is invalid: each value must be at least 1")
    kernel = (weight.shape[2], weight.shape[3])
    explicit = _explicit_padding(padding, kernel, stride, dilation)

    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode={padding_mode!r} is invalid: expected one of {', '.join(PADDING_MODES)}")
    if padding_mode != "zeros":
        # nn.Conv2d pads with F.pad in this mode and then convolves unpadded.
        top, bottom, left, right = explicit
        input = F.pad(input, (left, right, top, bottom), mode=padding_mode)
        explicit = (0, 0, 0, 0)

    arguments = ConvArguments(input, weight, bias, stride, explicit, dilation, groups, unbatched, input.dtype,
                              empty_batch)
    if min(arguments.output_size) < 1:
        raise ValueError(
            f"output size {arguments.output_size} is empty because the dilated kernel "
            f"{arguments.dilated_kernel} exceeds the padded input: use a smaller kernel or dilation, or more padding"
        )
    return arguments


def _check_channels(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], groups: int) -> None:
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups={groups!r} is invalid: expected a positive int")
    in_channels, out_channels = input.shape[1], weight.shape[0]
    if weight.shape[1] * groups != in_channels:
        raise ValueError(
            f"weight has {weight.shape[1]} input channels per group and groups={groups}, "
            f"but input has {in_channels} channels"
        )
    if out_channels % groups:
        raise ValueError(f"weight has {out_channels} output channels, not divisible by groups={groups}")
    if bias is not None and tuple(bias.shape) != (out_channels,):
        raise ValueError(f"bias has shape {tuple(bias.shape)}: expected ({out_channels},)")


def _explicit_padding(
    padding: PaddingArgument, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
) -> tuple[int, int, int, int]:
    if isinstance(padding, str):
        if padding not in ("valid", "same"):
            raise ValueError(f"padding={padding!r} is invalid: expected an int, a pair, 'valid' or 'same'")
        if padding == "same" and stride != (1, 1):
            raise ValueError(f"padding='same' is invalid with stride={stride}: torch supports it only at stride 1")
        return explicit_padding(padding, kernel, dilation)
    padding = pair("padding", padding)
    if min(padding) < 0:
        raise ValueError(f"padding={padding} is invalid: expected non-negative values")
    return explicit_padding(padding, kernel, dilation)


def pre_pad(
    input: torch.Tensor,
    weight: torch.Tensor,
    stride: Any,
    padding: PaddingArgument,
    dilation: Any,
    padding_mode: str,
) -> tuple[torch.Tensor, PaddingArgument]:
    """Apply a non-zeros ``padding_mode`` as nn.Conv2d does and return the input and the padding left for conv2d.

    For ``'zeros'`` both come back unchanged, so torch's own padding code runs.
    """
    if padding_mode == "zeros":
        return input, padding
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode={padding_mode!r} is invalid: expected one of {', '.join(PADDING_MODES)}")
    kernel = (weight.shape[2], weight.shape[3])
    top, bottom, left, right = _explicit_padding(padding, kernel, pair("stride", stride), pair("dilation", dilation))
    return F.pad(input, (left, right, top, bottom), mode=padding_mode), 0
