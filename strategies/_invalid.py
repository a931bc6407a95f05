"""The invalid_conv_calls() strategy: conv2d calls that are invalid, or only look invalid."""

from __future__ import annotations

from typing import Any, Iterable, Optional

from hypothesis import strategies as st

from difftest.invalid import REASONS, InvalidCall
from difftest.registry import Supports
from strategies._cases import _choices, available_devices

__all__ = ["invalid_conv_calls"]

# Orders in which sampled_from lists options; Hypothesis shrinks toward the first.
_DTYPE_ORDER = ("float32", "float64", "float16", "bfloat16")
_REASON_ORDER = tuple(REASONS)

# Ways a call can look invalid while torch accepts it.
_ACCEPTED_CORNERS = ("empty_batch", "kernel_fills_input", "stride_beyond_input", "padding_beyond_kernel")


def _allowed_reasons(supports: Supports, devices: tuple[str, ...], explicit_padding: bool) -> list[str]:
    """Return the reasons an implementation with ``supports`` can be asked about, in shrinking order."""
    excluded = set()
    if not supports.groups:
        excluded.add("groups_not_dividing_channels")
    if not supports.stride:
        excluded.update({"non_positive_stride", "same_padding_with_stride"})
    if "same" not in supports.padding_forms:
        excluded.add("same_padding_with_stride")
    if not supports.dilation:
        excluded.add("non_positive_dilation")
    if not explicit_padding:
        excluded.add("negative_padding")
    if not supports.bias:
        excluded.add("bias_length")
    if len(devices) < 2:
        excluded.add("device_mismatch")
    return [reason for reason in _REASON_ORDER if reason not in excluded]


@st.composite
def invalid_conv_calls(
    draw: Any,
    *,
    supports: Optional[Supports] = None,
    dtypes: Optional[Iterable[str]] = None,
    devices: Optional[Iterable[str]] = None,
    reasons: Optional[Iterable[str]] = None,
) -> InvalidCall:
    """Draw an :class:`~difftest.invalid.InvalidCall`: one mistake in an otherwise small, plain conv2d call.

    The mistakes are those of :data:`difftest.invalid.REASONS`. A kernel is
    larger than the padded input, groups do not divide the channels, the
    in-channels do not match, a stride or dilation is zero or less, a padding
    is negative, or 'same' padding comes with a stride above 1. Or a weight
    is not 4-D, an input is neither 3-D nor 4-D, dtypes or devices differ, or
    the bias has the wrong length. One call in four only looks invalid: an
    empty batch, a kernel exactly as large as the padded input, a stride
    beyond the input, or padding beyond the kernel. Torch decides whether a call
    is invalid, and the strategy only makes it likely. ``supports``
    keeps the draws inside an implementation's declaration: no mistakes in
    options it does not take, and only its dtypes for the input.

    Shrinks toward the first reason, batch 1, one channel, small sizes,
    float32 on the CPU and seed 0.
    """
    supports = supports or Supports()
    present = available_devices()
    device_choices = _choices("devices", devices, supports.devices & set(present), present)
    explicit_forms = [form for form in ("int", "pair") if form in supports.padding_forms]
    allowed = _allowed_reasons(supports, tuple(device_choices), bool(explicit_forms))
    if reasons is not None:
        requested = [reasons] if isinstance(reasons, str) else list(reasons)
        allowed = _choices("reasons", requested, frozenset(allowed), _REASON_ORDER)

    # One call in four only looks invalid, so that an implementation that
    # rejects what torch accepts is found as often as one that accepts too much.
    # Every branch draws the same choices in the same order, so that shrinking
    # can move from one reason to a plainer one.
    rejected = [reason for reason in allowed if reason != "accepted_corner"] or ["accepted_corner"]
    looks_invalid = draw(st.integers(0, 3)) != 3
    why = draw(st.sampled_from(rejected))
    if "accepted_corner" in allowed and (not looks_invalid or why == "accepted_corner"):
        why = "accepted_corner"
    dtype = draw(st.sampled_from(_choices("dtypes", dtypes, supports.dtypes, _DTYPE_ORDER)))
    device = draw(st.sampled_from(device_choices))
    seed = draw(st.integers(0, 2**32 - 1))

    batch = draw(st.integers(1, 2))
    groups = draw(st.integers(1, 2)) if supports.groups else 1
    in_channels = groups * draw(st.integers(1, 3))
    out_channels = groups * draw(st.integers(1, 3))
    kernel = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    size = [draw(st.integers(kernel[0], kernel[0] + 4)), draw(st.integers(kernel[1], kernel[1] + 4))]
    bias = supports.bias and draw(st.booleans())
    # The mistake's own choices are an axis, two small amounts, an index into
    # a list of options and a flag. Each mistake reads the ones it needs.
    choices = dict(axis=draw(st.integers(0, 1)), small=draw(st.integers(0, 2)), extra=draw(st.integers(0, 2)),
                   pick=draw(st.integers(0, 5)), flag=draw(st.booleans()))

    base = dict(batch=batch, groups=groups, in_channels=in_channels, out_channels=out_channels, kernel=kernel,
                size=size, bias=bias, dtype=dtype, device=device, devices=device_choices,
                explicit_forms=explicit_forms, **choices)
    call: dict[str, Any] = dict(why=why, dtype=dtype, device=device, seed=seed, groups=groups)
    call.update(_MISTAKES[why](supports, base))
    return InvalidCall(**call)


def _shapes(base: dict[str, Any], *, batch: Optional[int] = None, in_channels: Optional[int] = None,
            out_channels: Optional[int] = None, weight_in: Optional[int] = None,
            kernel: Optional[list[int]] = None, size: Optional[list[int]] = None) -> dict[str, Any]:
    """Return input, weight and bias shapes of the base call with any part replaced."""
    batch = base["batch"] if batch is None else batch
    in_channels = in_channels or base["in_channels"]
    out_channels = out_channels or base["out_channels"]
    kernel = kernel or base["kernel"]
    size = size or base["size"]
    weight_in = weight_in if weight_in is not None else in_channels // base["groups"]
    return dict(input_shape=(batch, in_channels, *size), weight_shape=(out_channels, weight_in, *kernel),
                bias_shape=(out_channels,) if base["bias"] else None)


def _pick(options: list[Any], base: dict[str, Any]) -> Any:
    return options[base["pick"] % len(options)]


def _kernel_larger_than_input(supports: Supports, base: dict[str, Any]) -> dict[str, Any]:
    axis = base["axis"]
    padding = base["small"] % 2 if base["explicit_forms"] else 0
    dilation = [1, 1]
    if supports.dilation:
        dilation[axis] = 1 + base["extra"] % 2
    kernel = list(base["kernel"])
    # The smallest kernel whose dilated extent exceeds the padded input.
    smallest = (base["size"][axis] + 2 * padding - 1) // dilation[axis] + 2
    kernel[axis] = smallest + base["pick"] % 3
    return dict(**_shapes(base, kernel=kernel), padding=(padding, padding), dilation=tuple(dilation))


def _groups_not_dividing_channels(supports: Supports, base: dict[str, Any]) -> dict[str, Any]:
    groups = 2 + base["small"] % 2
    remainder = 1 + base["extra"] % (groups - 1)
    divisible = groups * (1 + base["pick"] % 2)
    if base["flag"]:
        in_channels, out_channels = divisible, divisible + remainder
    else:
        in_channels, out_channels = divisible + remainder, divisible
    return dict(**_shapes(base, in_channels=in_channels, out_channels=out_channels,
                          weight_in=max(1, in_channels // groups)), groups=groups)


def _in_channels_mismatch(supports: Supports, base: dict[str, Any]) -> dict[str, Any]:
    right = base["in_channels"] // base["groups"]
    return _shapes(base, weight_in=_pick([value for value in (right + 1, right - 1, right + 2) if value >= 1], base))


def _non_positive_stride(supports: Supports, base: dict[str, Any]) -> dict[str, Any]:
    stride = [1 + base["extra"] % 2, 1 + base["extra"] % 2]
    stride[base["axis"]] = -base["small"]
    return dict(**_shapes(base), stride=tuple(stride))


def _negative_padding(supports: Supports, base: dict[str, Any]) -> dict[str, Any]:
    amount = -(1 + base["small"] % 2)
    if "pair" not in base["explicit_forms"]:
        return dict(**_shapes(base), padding=(amount, amount))
    padding = [base["extra"] % 2, base["extra"] % 2]
    padding[base["axis"]] = amount
    return dict(**_shapes(base), padding=tuple(padding))


def _non_positive_dilation(supports: Supports, base: dict[str, Any]) -> dict[str, Any]:
    dilation = [1, 1]
    dilation[base["axis"]] = -(base["small"] % 2)
    return dict(**_shapes(base), dilation=tuple(dilation))


def _same_padding_with_stride(supports: Supports, base: dict[str, Any]) -> dict[str, Any]:
    stride = [1, 1]
    stride[base["axis"]] = 2 + base["small"] % 2
    return dict(**_shapes(base), padding="same", stride=tuple(stride))


def _weight_rank(supports: Supports, base: dict[str, Any]) -> dict[str, Any]:
    shapes = _shapes(base)
    weight = shapes["weight_shape"]
    shapes["weight_shape"] = _pick([weight[:3], (*weight, 1), weight[:2]], base)
    return shapes


def _input_rank(supports: Supports, base: dict[str, Any]) -> dict[str, Any]:
    shapes = _shapes(base)
    input_shape = shapes["input_shape"]
    shapes["input_shape"] = _pick([(1, *input_shape), input_shape[2:]], base)
    return shapes


def _dtype_mismatch(supports: Supports, base: dict[str, Any]) -> dict[str, Any]:
    return dict(**_shapes(base), weight_dtype=_pick([dtype for dtype in _DTYPE_ORDER if dtype != base["dtype"]], base))


def _device_mismatch(supports: Supports, base: dict[str, Any]) -> dict[str, Any]:
    return dict(**_shapes(base), weight_device=_pick([device for device in base["devices"]
                                                      if device != base["device"]], base))


def _bias_length(supports: Supports, base: dict[str, Any]) -> dict[str, Any]:
    shapes = _shapes(base)
    out_channels = base["out_channels"]
    shapes["bias_shape"] = (_pick([length for length in (out_channels + 1, out_channels - 1, 0) if length >= 0],
                                  base),)
    return shapes


def _accepted_corner(supports: Supports, base: dict[str, Any]) -> dict[str, Any]:
    corners = [corner for corner in _ACCEPTED_CORNERS
               if (corner != "stride_beyond_input" or supports.stride)
               and (corner != "padding_beyond_kernel" or base["explicit_forms"])]
    corner = _pick(corners, base)
    if corner == "empty_batch":
        return _shapes(base, batch=0)
    if corner == "kernel_fills_input":
        return _shapes(base, kernel=list(base["size"]))
    if corner == "stride_beyond_input":
        return dict(**_shapes(base), stride=(base["size"][0] + base["small"], base["size"][1] + base["extra"]))
    padding = max(base["kernel"]) + base["small"]
    if "pair" in base["explicit_forms"] and base["flag"]:
        return dict(**_shapes(base), padding=(padding, base["extra"] % (padding + 1)))
    return dict(**_shapes(base), padding=(padding, padding))


_MISTAKES = {
    "kernel_larger_than_input": _kernel_larger_than_input,
    "groups_not_dividing_channels": _groups_not_dividing_channels,
    "in_channels_mismatch": _in_channels_mismatch,
    "non_positive_stride": _non_positive_stride,
    "negative_padding": _negative_padding,
    "non_positive_dilation": _non_positive_dilation,
    "same_padding_with_stride": _same_padding_with_stride,
    "weight_rank": _weight_rank,
    "input_rank": _input_rank,
    "dtype_mismatch": _dtype_mismatch,
    "device_mismatch": _device_mismatch,
    "bias_length": _bias_length,
    "accepted_corner": _accepted_corner,
}
