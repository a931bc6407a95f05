"""The case model: one immutable description of a conv2d problem."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Union

from difftest.errors import UsageError

__all__ = [
    "ConvCase",
    "DTYPES",
    "LAYOUTS",
    "PADDING_MODES",
    "VALUE_KINDS",
    "output_size",
    "explicit_padding",
]

Padding = Union[tuple[int, int], str]

DTYPES = ("float32", "float64", "float16", "bfloat16")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

# Memory layouts of the input and the weight tensors handed to an implementation.
# "sliced" takes every other element of a larger tensor, "transposed" stores the
# spatial axes swapped and transposes them back, "expanded" broadcasts along the
# batch (input) or output-channel (weight) axis with stride 0.
LAYOUTS = ("contiguous", "channels_last", "sliced", "transposed", "expanded")

# How input values are made from the seed; see difftest.values.
VALUE_KINDS = (
    "integers",
    "ones",
    "uniform",
    "normal",
    "arange",
    "cancellation",
    "mixed_scales",
    "sparse",
    "special",
)


def _pair(name: str, value: Any) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return (int(value[0]), int(value[1]))
    raise UsageError(name, value, "expected an int or a pair of ints", f"pass {name}=(1, 1)")


def explicit_padding(
    padding: Padding, kernel: tuple[int, int], dilation: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Return (top, bottom, left, right) padding for any padding form.

    For ``'same'`` the total padding is ``dilation * (kernel - 1)``; when it is
    odd, torch puts the extra pixel at the bottom and right.
    """
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        total_h = dilation[0] * (kernel[0] - 1)
        total_w = dilation[1] * (kernel[1] - 1)
        return (total_h // 2, total_h - total_h // 2, total_w // 2, total_w - total_w // 2)
    ph, pw = padding  # type: ignore[misc]
    return (ph, ph, pw, pw)


def output_size(
    size: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: Padding,
    dilation: tuple[int, int],
) -> tuple[int, int]:
    """Return the (height, width) of the conv2d output; a value below 1 means invalid."""
    top, bottom, left, right = explicit_padding(padding, kernel, dilation)
    padded = (size[0] + top + bottom, size[1] + left + right)
    return tuple(  # type: ignore[return-value]
        (padded[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(2)
    )


@dataclass(frozen=True)
class ConvCase:
    """One conv2d problem: shapes, options, dtype, device, layout and input values.

    ``batch`` is the N of NCHW; with ``unbatched=True`` the input is the 3-D
    CHW tensor torch also accepts, and ``batch`` is 1. ``padding`` is a pair of
    ints or one of ``'valid'`` and ``'same'``. ``values`` names how input values
    are made and ``seed`` seeds that generator, so a case rebuilds the same
    tensors on every machine without Hypothesis.
    """

    batch: int = 1
    in_channels: int = 1
    out_channels: int = 1
    height: int = 1
    width: int = 1
    kernel_height: int = 1
    kernel_width: int = 1
    stride: tuple[int, int] = (1, 1)
    padding: Padding = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = False
    padding_mode: str = "zeros"
    dtype: str = "float32"
    device: str = "cpu"
    input_layout: str = "contiguous"
    weight_layout: str = "contiguous"
    unbatched: bool = False
    values: str = "integers"
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "stride", _pair("stride", self.stride))
        object.__setattr__(self, "dilation", _pair("dilation", self.dilation))
        if isinstance(self.padding, str):
            if self.padding not in ("valid", "same"):
                raise UsageError("padding", self.padding, "expected a pair of ints, 'valid' or 'same'")
        else:
            object.__setattr__(self, "padding", _pair("padding", self.padding))
        self._validate()

    def _validate(self) -> None:
        for name in ("batch", "in_channels", "out_channels", "height", "width",
                     "kernel_height", "kernel_width", "groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(name, value, "expected a positive int")
        if self.dtype not in DTYPES:
            raise UsageError("dtype", self.dtype, f"expected one of {', '.join(DTYPES)}")
        if self.padding_mode not in PADDING_MODES:
            raise UsageError("padding_mode", self.padding_mode,
                             f"expected one of {', '.join(PADDING_MODES)}")
        for name in ("input_layout", "weight_layout"):
            if getattr(self, name) not in LAYOUTS:
                raise UsageError(name, getattr(self, name), f"expected one of {', '.join(LAYOUTS)}")
        if self.values not in VALUE_KINDS:
            raise UsageError("values", self.values, f"expected one of {', '.join(VALUE_KINDS)}")
        if self.unbatched and self.batch != 1:
            raise UsageError("batch", self.batch, "an unbatched case has batch 1")

    # Derived quantities ---------------------------------------------------

    @property
    def kernel(self) -> tuple[int, int]:
        return (self.kernel_height, self.kernel_width)

    @property
    def input_shape(self) -> tuple[int, ...]:
        shape = (self.in_channels, self.height, self.width)
        return shape if self.unbatched else (self.batch, *shape)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel)

    @property
    def output_hw(self) -> tuple[int, int]:
        return output_size((self.height, self.width), self.kernel, self.stride,
                           self.padding, self.dilation)

    @property
    def output_shape(self) -> tuple[int, ...]:
        shape = (self.out_channels, *self.output_hw)
        return shape if self.unbatched else (self.batch, *shape)

    @property
    def reduction_length(self) -> int:
        """Terms summed per output element: in-channels per group times kernel area."""
        return (self.in_channels // self.groups) * self.kernel_height * self.kernel_width

    @property
    def padding_argument(self) -> int | tuple[int, int] | str:
        """The padding as passed to conv2d: an int where both axes agree."""
        if isinstance(self.padding, str):
            return self.padding
        if self.padding[0] == self.padding[1]:
            return self.padding[0]
        return self.padding

    def is_valid(self) -> bool:
        """Return whether torch's conv2d accepts this case."""
        if self.in_channels % self.groups or self.out_channels % self.groups:
            return False
        if any(s < 1 for s in self.stride) or any(d < 1 for d in self.dilation):
            return False
        if self.padding == "same" and self.stride != (1, 1):
            return False
        if not isinstance(self.padding, str) and min(self.padding) < 0:
            return False
        if self.padding_mode in ("reflect", "circular"):
            # F.pad needs reflect padding below the input size and circular
            # padding at most the input size, on each axis.
            top, bottom, left, right = explicit_padding(self.padding, self.kernel, self.dilation)
            slack = 0 if self.padding_mode == "reflect" else 1
            if max(top, bottom) >= self.height + slack or max(left, right) >= self.width + slack:
                return False
        return min(self.output_hw) >= 1

    def describe(self) -> str:
        """Return a short one-line descriptor, safe in file names."""
        padding = self.padding if isinstance(self.padding, str) else f"{self.padding[0]}x{self.padding[1]}"
        parts = [
            f"n{'u' if self.unbatched else self.batch}c{self.in_channels}h{self.height}w{self.width}",
            f"o{self.out_channels}k{self.kernel_height}x{self.kernel_width}",
            f"s{self.stride[0]}x{self.stride[1]}p{padding}d{self.dilation[0]}x{self.dilation[1]}g{self.groups}",
        ]
        if self.padding_mode != "zeros":
            parts.append(self.padding_mode)
        parts.append("bias" if self.bias else "nobias")
        parts.append(f"{self.dtype}-{self.device.replace(':', '')}")
        if self.input_layout != "contiguous" or self.weight_layout != "contiguous":
            parts.append(f"{self.input_layout}+{self.weight_layout}")
        parts.append(f"{self.values}{self.seed}")
        return "_".join(parts)

    def __str__(self) -> str:
        return self.describe()

    # Serialisation ----------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("stride", "dilation"):
            data[key] = list(data[key])
        if not isinstance(self.padding, str):
            data["padding"] = list(self.padding)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConvCase:
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UsageError("case", unknown[0], "unknown field", f"known fields: {', '.join(sorted(names))}")
        values = dict(data)
        for key in ("stride", "dilation", "padding"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> ConvCase:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> ConvCase:
        return dataclasses.replace(self, **changes)

    def as_call(self) -> str:
        """Return the case as a conv2d call one can paste, one argument per line."""
        lines = [
            "conv2d(",
            f"    input=<{self.dtype} {tuple(self.input_shape)} {self.input_layout} on {self.device}, values={self.values} seed={self.seed}>,",
            f"    weight=<{self.dtype} {tuple(self.weight_shape)} {self.weight_layout}>,",
            f"    bias={'<' + self.dtype + ' (' + str(self.out_channels) + ',)>' if self.bias else None},",
            f"    stride={self.stride},",
            f"    padding={self.padding_argument!r},",
            f"    dilation={self.dilation},",
            f"    groups={self.groups},",
        ]
        if self.padding_mode != "zeros":
            lines.append(f"    padding_mode={self.padding_mode!r},")
        lines.append(")")
        return "\n".join(lines)
