"""The conv_cases() strategy: valid conv2d cases, drawn jointly and valid by construction."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Optional

import torch
from hypothesis import strategies as st

from difftest.case import VALUE_KINDS, ConvCase
from difftest.errors import UsageError
from difftest.registry import Supports

__all__ = ["conv_cases", "available_devices", "check_narrowing", "value_kinds"]

# Orders in which sampled_from lists options: Hypothesis shrinks toward the
# first element, so the plainest value comes first.
_DTYPE_ORDER = ("float32", "float64", "float16", "bfloat16")
_PADDING_FORM_ORDER = ("int", "pair", "valid", "same")
_PADDING_MODE_ORDER = ("zeros", "reflect", "replicate", "circular")
_LAYOUT_ORDER = ("contiguous", "channels_last", "sliced", "transposed", "expanded")
_VALUE_ORDER = VALUE_KINDS  # "integers" first: exact sums by default.

# A long reduction has this many in-channels per group at most; with a 7x7
# kernel that is a reduction length of several thousand.
_LONG_CHANNELS = 96
_LONG_KERNEL = 7


def available_devices() -> tuple[str, ...]:
    """Return the devices present on this machine: the CPU, then CUDA and MPS when present."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return tuple(devices)


def _choices(name: str, requested: Optional[Iterable[str]], allowed: frozenset[str] | tuple[str, ...],
             order: tuple[str, ...]) -> list[str]:
    if isinstance(requested, str):
        requested = (requested,)
    requested_set = set(order) if requested is None else set(requested)
    unknown = sorted(requested_set - set(order))
    if unknown:
        raise UsageError(name, unknown[0], f"expected values from {', '.join(order)}")
    chosen = [value for value in order if value in requested_set and value in allowed]
    if not chosen and not allowed:
        raise UsageError(name, sorted(requested_set), "leaves nothing to generate: the implementation supports none "
                         f"of the {name} available here ({', '.join(order)})",
                         f"declare support for one of them, or run where a supported one is present")
    if not chosen:
        raise UsageError(name, sorted(requested_set),
                         f"leaves nothing to generate inside the supported {', '.join(sorted(allowed))}",
                         f"pick {name} from {', '.join(sorted(allowed))}")
    return chosen


def check_narrowing(supports: Optional[Supports] = None, *, dtypes: Optional[Iterable[str]] = None,
                    devices: Optional[Iterable[str]] = None) -> None:
    """Raise UsageError when ``dtypes`` or ``devices`` leave nothing inside ``supports`` on this machine.

    :func:`conv_cases` makes the same check only when it first draws, so a
    caller that fuzzes several implementations checks each one up front.
    """
    supports = supports or Supports()
    _choices("dtypes", dtypes, supports.dtypes, _DTYPE_ORDER)
    present = available_devices()
    _choices("devices", devices, supports.devices & set(present), present)


def _bounded(name: str, value: int, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise UsageError(name, value, f"expected an int of at least {minimum}")
    return value


def value_kinds(*, supports: Optional[Supports] = None, kinds: Optional[Iterable[str]] = None,
                allow_special: bool = True) -> st.SearchStrategy[str]:
    """Draw value kinds; shrinks toward exact small integers."""
    allowed = set(supports.value_kinds if supports else VALUE_KINDS)
    if not allow_special:
        allowed.discard("special")
    return st.sampled_from(_choices("values", kinds, frozenset(allowed), _VALUE_ORDER))


def _capped(value: int, cap: Optional[int]) -> int:
    """Return ``value`` lowered to ``cap`` (but at least 1); ``value`` itself without a cap."""
    return value if cap is None else max(1, min(value, cap))


def _quotient(limit: Optional[int], divisor: int) -> Optional[int]:
    return None if limit is None else limit // divisor


def _largest(low: int, high: int, fits: Callable[[int], bool]) -> int:
    """Return the largest value in [low, high] that fits, or ``low`` when none does.

    Every use passes a ``fits`` that is monotone (true up to some value, false
    above), so the whole range [low, result] fits.
    """
    for value in range(high, low, -1):
        if fits(value):
            return value
    return low


def _spans(kernel: tuple[int, int], dilation: list[int]) -> tuple[int, int]:
    """Return the dilated kernel's extent on each axis."""
    return (dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1)


def _same_padding(span: int) -> tuple[int, int]:
    # torch puts the odd pixel of 'same' padding after the input.
    total = span - 1
    return total // 2, total - total // 2


def _axis_padding(padding: Any, span: int, axis: int = 0) -> tuple[int, int]:
    if padding == "same":
        return _same_padding(span)
    if padding == "valid":
        return (0, 0)
    return (padding[axis], padding[axis])


def _smallest_size(span: int, before: int, after: int, mode: str) -> int:
    """Return the smallest input size on one axis for the dilated kernel's ``span`` and the padding."""
    smallest = max(1, span - before - after)
    if mode == "reflect":
        smallest = max(smallest, max(before, after) + 1)
    elif mode == "circular":
        smallest = max(smallest, max(before, after))
    return smallest


def _padded_minimum(span: int, before: int, after: int, mode: str) -> int:
    """Return the padded extent of the smallest input on one axis; it grows with span and padding."""
    return _smallest_size(span, before, after, mode) + before + after


def _pads_fit(area: Optional[int], spans: tuple[int, int], pads: tuple[tuple[int, int], tuple[int, int]],
              mode: str) -> bool:
    """Return whether the smallest input for this padding has a padded area of at most ``area``."""
    if area is None:
        return True
    return math.prod(_padded_minimum(spans[axis], *pads[axis], mode) for axis in range(2)) <= area


def _form_fits(area: Optional[int], form: str, modes: list[str], spans: tuple[int, int]) -> bool:
    """Return whether some case with this padding form fits ``area``.

    'int', 'pair' and 'valid' fit with no padding whatever the mode, where the
    smallest padded input is the dilated kernel itself. 'same' pads by the
    kernel's extent, so it needs a mode whose smallest padded input fits.
    """
    if form != "same":
        return _pads_fit(area, spans, ((0, 0), (0, 0)), "zeros")
    return any(_pads_fit(area, spans, (_same_padding(spans[0]), _same_padding(spans[1])), mode) for mode in modes)


@st.composite
def conv_cases(
    draw: Any,
    *,
    supports: Optional[Supports] = None,
    dtypes: Optional[Iterable[str]] = None,
    devices: Optional[Iterable[str]] = None,
    values: Optional[Iterable[str]] = None,
    layouts: Optional[Iterable[str]] = None,
    padding_forms: Optional[Iterable[str]] = None,
    padding_modes: Optional[Iterable[str]] = None,
    max_batch: int = 3,
    max_channels: int = 6,
    max_groups: int = 3,
    max_size: int = 10,
    max_kernel: int = 4,
    max_stride: int = 3,
    max_padding: int = 2,
    max_dilation: int = 3,
    max_elements: Optional[int] = None,
    allow_groups: bool = True,
    allow_bias: bool = True,
    allow_stride: bool = True,
    allow_dilation: bool = True,
    allow_unbatched: bool = True,
    allow_special: bool = True,
    allow_long_reductions: bool = True,
) -> ConvCase:
    """Draw a valid :class:`~difftest.ConvCase` for ``torch.nn.functional.conv2d``.

    Every option the case model has is drawn, jointly, so that the case is
    valid by construction: groups divide both channel counts, the padded input
    is at least as large as the dilated kernel, 'same' padding comes with
    stride 1, and reflect or circular padding stays below the input size.
    ``supports`` (an implementation's declaration) and the keyword arguments
    narrow the space; ``max_*`` bound the sizes. ``max_elements`` bounds the
    element count of the input, the weight and the output each: every draw is
    capped so that the rest of the case can still fit, so no case is filtered
    out. About one case in eight is a long reduction (many in-channels, a
    large kernel, a small image).

    NOTE: some bounds are loose. A long reduction goes past ``max_channels``
    and ``max_kernel`` (up to 96 in-channels and a 7x7 kernel). The input
    may be larger than ``max_size`` where the dilated kernel is (up to
    ``max_size + 2 * max_padding``), as in a 4x1 input for a 2x1 kernel
    with dilation 3 under ``max_size=3``. 'same' padding pads by what the
    dilated kernel needs, which may exceed ``max_padding``. ``max_batch``,
    ``max_groups``, ``max_stride``, ``max_dilation`` and ``max_elements``
    hold for every case.

    Shrinks toward batch 1, one channel, a 1x1 kernel, stride 1, no padding or
    dilation, groups 1, no bias, zeros padding, contiguous float32 on the CPU,
    and exact small-integer values with seed 0.
    """
    supports = supports or Supports()
    for name, bound in (("max_batch", max_batch), ("max_channels", max_channels), ("max_groups", max_groups),
                        ("max_size", max_size), ("max_kernel", max_kernel), ("max_stride", max_stride),
                        ("max_dilation", max_dilation)):
        _bounded(name, bound)
    _bounded("max_padding", max_padding, minimum=0)
    if max_elements is not None:
        _bounded("max_elements", max_elements)

    dtype = draw(st.sampled_from(_choices("dtypes", dtypes, supports.dtypes, _DTYPE_ORDER)))
    present = available_devices()
    device = draw(st.sampled_from(_choices("devices", devices, supports.devices & set(present), present)))

    long_reduction = allow_long_reductions and draw(st.integers(0, 7)) == 7
    channel_limit = _LONG_CHANNELS if long_reduction else max_channels
    kernel_limit = max(max_kernel, _LONG_KERNEL) if long_reduction else max_kernel

    groups = 1
    if allow_groups and supports.groups and max_groups > 1:
        groups = draw(st.integers(1, _capped(min(max_groups, channel_limit), max_elements)))
    per_group_in = draw(st.integers(1, _capped(max(1, channel_limit // groups), _quotient(max_elements, groups))))
    per_group_out = draw(st.integers(1, _capped(max(1, max_channels // groups),
                                                _quotient(max_elements, groups * per_group_in))))
    in_channels, out_channels = groups * per_group_in, groups * per_group_out
    # Input and output have at most (their channels) x (padded height x padded
    # width) elements per batch item, and the weight at most (out_channels x
    # per_group_in) x (kernel area), the kernel lying inside the padded input.
    # So a padded area of at most ``area`` keeps all three within max_elements.
    area = _quotient(max_elements, max(in_channels, out_channels * per_group_in))
    forms = _choices("padding_forms", padding_forms, supports.padding_forms, _PADDING_FORM_ORDER)
    modes = _choices("padding_modes", padding_modes, supports.padding_modes, _PADDING_MODE_ORDER)

    def completes(spans: tuple[int, int]) -> bool:
        return any(_form_fits(area, choice, modes, spans) for choice in forms)

    kernel_height = draw(st.integers(1, _largest(1, kernel_limit, lambda k: completes((k, 1)))))
    kernel_width = draw(st.integers(1, _largest(1, kernel_limit, lambda k: completes((kernel_height, k)))))
    kernel = (kernel_height, kernel_width)
    size_limit = max(max_size, kernel_limit) if long_reduction else max_size

    dilation = [1, 1]
    if allow_dilation and supports.dilation:
        for axis in range(2):
            # Keep the dilated kernel inside the largest input.
            most = 1 if kernel[axis] == 1 else max(1, min(max_dilation, (size_limit + 2 * max_padding - 1) // (kernel[axis] - 1)))
            trial = list(dilation)

            def dilation_fits(value: int) -> bool:
                trial[axis] = value
                return completes(_spans(kernel, trial))

            dilation[axis] = draw(st.integers(1, _largest(1, most, dilation_fits)))
    spans = _spans(kernel, dilation)

    form = draw(st.sampled_from([choice for choice in forms if _form_fits(area, choice, modes, spans)]))
    if form == "same":
        same_pads = (_same_padding(spans[0]), _same_padding(spans[1]))
        modes = [choice for choice in modes if _pads_fit(area, spans, same_pads, choice)]
    # Options that only apply to some forms are still drawn for every form and
    # then ignored, so that shrinking the form toward plain explicit padding
    # never changes which draws follow and the shrinker can always take the step.
    mode = draw(st.sampled_from(modes))
    if form == "valid":
        mode = "zeros"

    stride = [1, 1]
    if allow_stride and supports.stride:
        stride = [draw(st.integers(1, max_stride)), draw(st.integers(1, max_stride))]
    if form == "same":
        stride = [1, 1]

    # With max_elements the padding is capped so that the smallest input still
    # fits (an 'int' amount pads both axes).
    first_pads = (lambda p: ((p, p), (p, p))) if form == "int" else (lambda p: ((p, p), (0, 0)))
    first = draw(st.integers(0, _largest(0, max_padding, lambda p: _pads_fit(area, spans, first_pads(p), mode))))
    second = draw(st.integers(0, _largest(0, max_padding,
                                          lambda p: _pads_fit(area, spans, ((first, first), (p, p)), mode))))
    amounts = (first, second)
    if form == "int":
        padding: Any = (amounts[0], amounts[0])
    elif form == "pair":
        padding = amounts
    else:
        padding = form

    pads = [_axis_padding(padding, spans[axis], axis) for axis in range(2)]
    size: list[int] = []
    for axis in range(2):
        before, after = pads[axis]
        smallest = _smallest_size(spans[axis], before, after, mode)
        largest = max(smallest, size_limit)
        if area is not None:
            # The other axis at its smallest (for the height) or as drawn (for the width).
            other = _padded_minimum(spans[1], *pads[1], mode) if axis == 0 else size[0] + sum(pads[0])
            largest = max(smallest, min(largest, area // other - before - after))
        size.append(draw(st.integers(smallest, largest)))

    padded_area = (size[0] + sum(pads[0])) * (size[1] + sum(pads[1]))
    batch = draw(st.integers(1, _capped(max_batch, _quotient(max_elements, max(in_channels, out_channels) * padded_area))))
    unbatched = allow_unbatched and supports.unbatched and draw(st.integers(0, 5)) == 5
    if unbatched or long_reduction:
        batch = 1
    bias = allow_bias and supports.bias and draw(st.booleans())

    layout_choices = _choices("layouts", layouts, supports.layouts, _LAYOUT_ORDER)
    input_layout = draw(st.sampled_from(layout_choices))
    weight_layout = draw(st.sampled_from(layout_choices))
    kind = draw(value_kinds(supports=supports, kinds=values, allow_special=allow_special))
    seed = draw(st.integers(0, 2**32 - 1))

    return ConvCase(
        batch=batch,
        in_channels=in_channels,
        out_channels=out_channels,
        height=size[0],
        width=size[1],
        kernel_height=kernel[0],
        kernel_width=kernel[1],
        stride=tuple(stride),
        padding=padding,
        dilation=tuple(dilation),
        groups=groups,
        bias=bias,
        padding_mode=mode,
        dtype=dtype,
        device=device,
        input_layout=input_layout,
        weight_layout=weight_layout,
        unbatched=unbatched,
        values=kind,
        seed=seed,
    )
