"""A small correct conv2d and the declaration helper shared by the wrong implementations.

Most wrong implementations call this correct conv2d with one deliberate
mistake, so the mistake is the only way they differ from
``torch.nn.functional.conv2d``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
import torch.nn.functional as F

__all__ = [
    "Padding",
    "pair",
    "explicit_padding",
    "pad_input",
    "conv2d_explicit",
    "reference_conv2d",
    "batched",
    "declare",
    "PLAIN_1X1",
    "PLAIN_3X3",
]

Padding = tuple[int, int, int, int]

# The cases on which an implementation that is wrong only in a corner agrees
# with torch: batch 1, one channel, a 3x3 input, stride 1 and no padding.
PLAIN_1X1: dict[str, Any] = dict(height=3, width=3, kernel_height=1, kernel_width=1, dtype="float64")
PLAIN_3X3: dict[str, Any] = dict(height=3, width=3, kernel_height=3, kernel_width=3, dtype="float64")


def pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (int(first), int(second))


def explicit_padding(
    padding: int | tuple[int, int] | str, kernel: tuple[int, int], dilation: tuple[int, int]
) -> Padding:
    """Return (top, bottom, left, right) for any padding form torch accepts.

    For ``'same'`` torch pads ``dilation * (kernel - 1)`` in total on each axis
    and puts the odd pixel at the bottom and right.
    """
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        total_h = dilation[0] * (kernel[0] - 1)
        total_w = dilation[1] * (kernel[1] - 1)
        return (total_h // 2, total_h - total_h // 2, total_w // 2, total_w - total_w // 2)
    height, width = pair(padding)  # type: ignore[arg-type]
    return (height, height, width, width)


def pad_input(input: torch.Tensor, pads: Padding, padding_mode: str) -> torch.Tensor:
    """Pad a 4-D input by (top, bottom, left, right) as nn.Conv2d does for ``padding_mode``."""
    top, bottom, left, right = pads
    if not any(pads):
        return input
    mode = "constant" if padding_mode == "zeros" else padding_mode
    return F.pad(input, (left, right, top, bottom), mode=mode)


def conv2d_explicit(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Any,
    pads: Padding,
    dilation: Any,
    groups: int,
    padding_mode: str,
) -> torch.Tensor:
    """Return conv2d of a 4-D input padded by (top, bottom, left, right)."""
    padded = pad_input(input, pads, padding_mode)
    return F.conv2d(padded, weight, bias, pair(stride), 0, pair(dilation), groups)


def reference_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Return the correct conv2d of a 4-D input, with nn.Conv2d's padding modes."""
    dilation = pair(dilation)
    pads = explicit_padding(padding, (weight.shape[-2], weight.shape[-1]), dilation)
    return conv2d_explicit(input, weight, bias, stride, pads, dilation, groups, padding_mode)


def batched(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Let ``function``, written for 4-D NCHW input, also take 3-D CHW input as torch does."""

    @functools.wraps(function)
    def wrapper(input: torch.Tensor, weight: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if input.dim() == 3:
            return function(input.unsqueeze(0), weight, *args, **kwargs).squeeze(0)
        return function(input, weight, *args, **kwargs)

    return wrapper


def declare(
    *,
    bug_class: str,
    expected_diagnosis: str | None,
    expected_verdict: str,
    trigger: dict[str, Any],
    plain: dict[str, Any] | None,
    **supports: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Attach the bug's description and difftest's Supports declaration to a function.

    ``trigger`` is a case (keyword arguments of difftest.case.ConvCase) on
    which the bug shows, and ``plain`` one on which the function agrees with
    torch, or None where the function is wrong on every case.
    """

    def decorator(function: Callable[..., Any]) -> Callable[..., Any]:
        function.difftest_supports = dict(supports)  # type: ignore[attr-defined]
        function.bug_class = bug_class  # type: ignore[attr-defined]
        function.expected_diagnosis = expected_diagnosis  # type: ignore[attr-defined]
        function.expected_verdict = expected_verdict  # type: ignore[attr-defined]
        function.trigger = dict(trigger)  # type: ignore[attr-defined]
        function.plain = None if plain is None else dict(plain)  # type: ignore[attr-defined]
        return function

    return decorator
