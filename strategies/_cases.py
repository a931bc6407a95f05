"""The conv_cases() strategy: valid conv2d cases, drawn jointly and valid by construction."""

from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
from hypothesis import strategies as st

from difftest.case import DTYPES, LAYOUTS, PADDING_MODES, VALUE_KINDS, ConvCase
from difftest.errors import UsageError
from difftest.registry import PADDING_FORMS, Supports

__all__ = ["conv_cases", "available_devices", "value_kinds"]

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
    if not chosen:
        raise UsageError(name, sorted(requested_set),
                         f"leaves nothing to generate inside the supported {', '.join(sorted(allowed))}",
                         f"pick {name} from {', '.join(sorted(allowed))}")
    return chosen


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
    narrow the space; ``max_*`` bound the sizes. About one case in eight is a
    long reduction (many in-channels, a large kernel, a small image).

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

    dtype = draw(st.sampled_from(_choices("dtypes", dtypes, supports.dtypes, _DTYPE_ORDER)))
    present = available_devices()
    device = draw(st.sampled_from(_choices("devices", devices, supports.devices & set(present), present)))

    long_reduction = allow_long_reductions and draw(st.integers(0, 7)) == 7
    channel_limit = _LONG_CHANNELS if long_reduction else max_channels
    kernel_limit = max(max_kernel, _LONG_KERNEL) if long_reduction else max_kernel

    groups = 1
    if allow_groups and supports.groups and max_groups > 1:
        groups = draw(st.integers(1, min(max_groups, channel_limit)))
    per_group_in = draw(st.integers(1, max(1, channel_limit // groups)))
    per_group_out = draw(st.integers(1, max(1, max_channels // groups)))

    kernel = (draw(st.integers(1, kernel_limit)), draw(st.integers(1, kernel_limit)))
    size_limit = max(max_size, kernel_limit) if long_reduction else max_size

    dilation = [1, 1]
    if allow_dilation and supports.dilation:
        for axis in range(2):
            # Keep the dilated kernel inside the largest input.
            most = 1 if kernel[axis] == 1 else max(1, min(max_dilation, (size_limit + 2 * max_padding - 1) // (kernel[axis] - 1)))
            dilation[axis] = draw(st.integers(1, most))

    forms = _choices("padding_forms", padding_forms, supports.padding_forms, _PADDING_FORM_ORDER)
    form = draw(st.sampled_from(forms))
    modes = _choices("padding_modes", padding_modes, supports.padding_modes, _PADDING_MODE_ORDER)
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

    amounts = (draw(st.integers(0, max_padding)), draw(st.integers(0, max_padding)))
    if form == "int":
        padding: Any = (amounts[0], amounts[0])
    elif form == "pair":
        padding = amounts
    else:
        padding = form

    size = []
    for axis in range(2):
        span = dilation[axis] * (kernel[axis] - 1) + 1
        if padding == "same":
            total = span - 1
            before, after = total // 2, total - total // 2
        elif padding == "valid":
            before = after = 0
        else:
            before = after = padding[axis]
        smallest = max(1, span - before - after)
        if mode == "reflect":
            smallest = max(smallest, max(before, after) + 1)
        elif mode == "circular":
            smallest = max(smallest, max(before, after))
        size.append(draw(st.integers(smallest, max(smallest, size_limit))))

    batch = draw(st.integers(1, max_batch))
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
        in_channels=groups * per_group_in,
        out_channels=groups * per_group_out,
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
