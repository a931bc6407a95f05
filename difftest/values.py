"""Input tensors of a case, rebuilt exactly from its value kind and seed.

Values are drawn with a ``torch.Generator`` seeded by the case's seed, in
float64 on the CPU, then rounded to the case's dtype, laid out in memory as the
case says and moved to its device. Nothing reads torch's global RNG, so a case
rebuilds the same tensors in any process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from difftest.case import ConvCase, explicit_padding
from difftest.tolerance import ACCUMULATION_DTYPE, SIGNIFICAND_BITS

__all__ = [
    "Inputs",
    "make_inputs",
    "make_values",
    "apply_layout",
    "exact_limit",
    "inputs_from_literal",
    "literal_inputs",
    "EXACT_KINDS",
]

# Value kinds for which every partial sum is an exactly representable integer,
# so any correct summation order gives the truth exactly.
EXACT_KINDS = frozenset({"integers", "ones"})

# Largest magnitudes used by the real-valued kinds, per dtype, so that no
# product or sum overflows (float16's largest finite value is 65504).
_SCALE = {"float64": 1e4, "float32": 1e4, "float16": 1e1, "bfloat16": 1e4}

# Share of a dtype's largest finite value that the magnitude of the terms of
# one output may reach (see _fit_range).
_RANGE_SHARE = 1 / 8


@dataclass(frozen=True)
class Inputs:
    """The input, weight and optional bias of one case, in the case's dtype, layout and device."""

    input: torch.Tensor
    weight: torch.Tensor
    bias: Optional[torch.Tensor]

    def float64(self) -> "Inputs":
        """Return copies of the values in contiguous float64 on the CPU, for the truth.

        They are always copies, even of float64 CPU inputs, so an
        implementation that writes to its input cannot change the truth.
        """
        def widen(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            if t is None:
                return None
            return t.detach().to("cpu", torch.float64, memory_format=torch.contiguous_format, copy=True)
        return Inputs(widen(self.input), widen(self.weight), widen(self.bias))  # type: ignore[arg-type]

    def clone(self) -> "Inputs":
        """Return copies that keep each tensor's strides, so contract checks can compare later."""
        def copy(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if t is None else t.clone(memory_format=torch.preserve_format)
        return Inputs(copy(self.input), copy(self.weight), copy(self.bias))  # type: ignore[arg-type]


def exact_limit(case: ConvCase) -> int:
    """Return 2**p for the narrowest precision the sum passes through.

    Integers of magnitude up to 2**p are exact in a format with p significand
    bits, and so is every partial sum whose terms' magnitudes add up to at most
    that.
    """
    bits = min(SIGNIFICAND_BITS[case.dtype], SIGNIFICAND_BITS[ACCUMULATION_DTYPE[case.dtype]])
    return 2**bits


def make_values(case: ConvCase) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Return contiguous float64 CPU values of (input, weight, bias) for ``case``."""
    generator = torch.Generator().manual_seed(case.seed)
    input_shape = _value_shape(case.input_shape, case.input_layout)
    weight_shape = _value_shape(case.weight_shape, case.weight_layout)
    bias_shape = (case.out_channels,)
    kind = case.values

    if kind == "integers":
        return _integers(case, input_shape, weight_shape, generator)

    if kind == "ones":
        return (torch.ones(input_shape, dtype=torch.float64), torch.ones(weight_shape, dtype=torch.float64),
                torch.ones(bias_shape, dtype=torch.float64) if case.bias else None)

    scale = _SCALE[case.dtype]
    x = _real(kind, input_shape, generator, scale, case, channel_axis=-3)
    w = _real("normal" if kind in ("arange", "cancellation") else kind, weight_shape, generator, 1.0, case,
              channel_axis=1, weight=True)
    b = torch.randn(bias_shape, generator=generator, dtype=torch.float64) if case.bias else None
    if kind != "special":
        x = _fit_range(case, x, w, b)
    return x, w, b


def _fit_range(case: ConvCase, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
    """Scale the input down by a power of two until no partial sum in any order can overflow the dtype.

    Every partial sum is at most the magnitude conv(|x|, |w|) + |b| in absolute
    value; keeping that below _RANGE_SHARE of the dtype's largest finite value
    leaves room for rounding. A power of two keeps the values' significands.
    """
    limit = _RANGE_SHARE * float(torch.finfo(getattr(torch, case.dtype)).max)
    bias = float(b.abs().max()) if b is not None and b.numel() else 0.0
    cheap = case.reduction_length * float(x.abs().max()) * float(w.abs().max()) + bias if x.numel() else 0.0
    if cheap <= limit:
        return x
    largest = _largest_sum(case, x, w, b)
    while largest > limit and float(x.abs().max()) > 0:
        # The input's share of the magnitude scales with x; the bias keeps
        # its share, so a second step is needed only when the bias is large.
        x = x * 2.0 ** -math.ceil(math.log2(largest / limit))
        largest = _largest_sum(case, x, w, b)
    return x


def _value_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    # An expanded tensor repeats one slice along its first axis with stride 0,
    # so only that slice has values of its own.
    if layout == "expanded":
        return (1, *shape[1:])
    return shape


def _integers(case: ConvCase, input_shape: tuple[int, ...], weight_shape: tuple[int, ...],
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Draw small integers whose partial sums all stay exactly representable.

    With n terms per output and values in [-a, a], the terms' magnitudes add up
    to at most (n + 1) a**2 (the bias counted as one term); a is chosen so that
    stays under exact_limit(case). Where even a = 1 is too large, a share of the
    elements is set to zero, halved until the largest sum fits.
    """
    limit = exact_limit(case)
    terms = case.reduction_length + 1
    amplitude = max(1, min(8, math.isqrt(limit // terms)))

    def draw(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(-amplitude, amplitude + 1, shape, generator=generator).to(torch.float64)

    x, w = draw(input_shape), draw(weight_shape)
    b = draw((case.out_channels,)) if case.bias else None
    density = 1.0
    while _largest_sum(case, x, w, b) > limit:
        density /= 2
        x = x * (torch.rand(x.shape, generator=generator, dtype=torch.float64) < density)
        w = w * (torch.rand(w.shape, generator=generator, dtype=torch.float64) < density)
        if b is not None:
            b = b.clamp(-1, 1)
    return x, w, b


def _largest_sum(case: ConvCase, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> float:
    from difftest.reference import magnitude  # circular at import time

    inputs = Inputs(apply_layout(x, case.input_layout, case.input_shape),
                    apply_layout(w, case.weight_layout, case.weight_shape), b)
    return float(magnitude(case, inputs.float64()).max()) if x.numel() else 0.0


def _real(kind: str, shape: tuple[int, ...], generator: torch.Generator, scale: float, case: ConvCase,
          channel_axis: int, weight: bool = False) -> torch.Tensor:
    if kind == "uniform":
        return torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1
    if kind == "normal":
        return torch.randn(shape, generator=generator, dtype=torch.float64)
    if kind == "arange":
        # Large values like the classic arange sanity check, kept below the
        # dtype's exact-integer range so that the input itself is exact.
        count = math.prod(shape)
        values = torch.arange(count, dtype=torch.float64) % (2.0 ** SIGNIFICAND_BITS[case.dtype])
        return values.reshape(shape)
    if kind == "cancellation":
        # Large terms of both signs around a small remainder, so that the sum is
        # much smaller than the terms (the bound scales with the terms).
        signs = torch.randint(0, 2, shape, generator=generator).to(torch.float64) * 2 - 1
        return signs * scale + torch.randn(shape, generator=generator, dtype=torch.float64)
    if kind == "mixed_scales":
        channels = shape[channel_axis]
        exponents = torch.randint(-3, 4, (channels,), generator=generator).to(torch.float64)
        if case.dtype == "float16":
            exponents = exponents.clamp(-1, 1)
        view = [1] * len(shape)
        view[channel_axis] = channels
        return torch.randn(shape, generator=generator, dtype=torch.float64) * (10.0 ** exponents).reshape(view)
    if kind == "sparse":
        # About 90% zeros, but dense enough that about three outputs in four
        # sum a nonzero product, so that the case still tests something: a
        # product is nonzero with probability density**2, and each output
        # sums reduction_length of them.
        density = max(0.1, math.sqrt(1 - 0.25 ** (1 / case.reduction_length)))
        values = torch.randn(shape, generator=generator, dtype=torch.float64)
        return values * (torch.rand(shape, generator=generator, dtype=torch.float64) < density)
    if kind == "special":
        return _special(shape, generator, case, weight)
    raise ValueError(f"unknown value kind {kind!r}")


def _special(shape: tuple[int, ...], generator: torch.Generator, case: ConvCase, weight: bool) -> torch.Tensor:
    """Normal values with NaN, +-inf, -0.0 and subnormals in random places.

    -0.0 and subnormals replace one element in 16. NaN and infinities are
    rarer, so that most outputs stay finite and the values around them are
    still checked. The input gets one per four output windows on average (a
    window reads reduction_length input elements), rounded up or down at
    random. The weight gets one in half of the cases, and none when its
    values are shared by every output channel (the expanded layout), because a
    non-finite weight makes its whole output channel non-finite. Nor does it
    get one when the input is padded with zeros: whether a non-finite weight
    times a padded zero is NaN depends on whether an implementation multiplies
    the padding or skips it, and torch does both (oneDNN skips it, the im2col
    path multiplies it), so the expected value there is not defined.
    """
    values = torch.randn(shape, generator=generator, dtype=torch.float64)
    flat = values.reshape(-1)
    if flat.numel() == 0:
        return values
    tiny = float(torch.finfo(getattr(torch, case.dtype)).smallest_normal) / 4
    finite = torch.tensor([-0.0, tiny, -tiny], dtype=torch.float64)
    non_finite = torch.tensor([math.nan, math.inf, -math.inf], dtype=torch.float64)
    coin = float(torch.rand((), generator=generator, dtype=torch.float64))
    if weight:
        zero_padded = case.padding_mode == "zeros" and any(explicit_padding(case.padding, case.kernel, case.dilation))
        non_finite_count = int(coin < 0.5 and shape[0] > 1 and not zero_padded)
    else:
        non_finite_count = math.floor(flat.numel() / (4 * case.reduction_length) + coin)
    finite_count = max(1, flat.numel() // 16)

    positions = torch.randperm(flat.numel(), generator=generator)
    for chosen, pool in ((positions[:finite_count], finite),
                         (positions[finite_count:finite_count + non_finite_count], non_finite)):
        flat[chosen] = pool[torch.randint(0, len(pool), (len(chosen),), generator=generator)]
    return values


def apply_layout(values: torch.Tensor, layout: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Return ``values`` with the given logical ``shape`` stored in the given memory layout."""
    if layout == "contiguous":
        return values.contiguous()
    if layout == "expanded":
        return values.expand(shape)
    if layout == "channels_last":
        if values.dim() == 4:
            return values.contiguous(memory_format=torch.channels_last)
        # A 3-D CHW tensor stored as HWC.
        return values.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    if layout == "sliced":
        # Every other element along the last axis of a tensor twice as wide.
        wide = torch.zeros((*values.shape[:-1], 2 * values.shape[-1]), dtype=values.dtype, device=values.device)
        wide[..., ::2] = values
        return wide[..., ::2]
    if layout == "transposed":
        return values.transpose(-1, -2).contiguous().transpose(-1, -2)
    raise ValueError(f"unknown layout {layout!r}")


def make_inputs(case: ConvCase) -> Inputs:
    """Return the input, weight and bias of ``case``, as an implementation receives them."""
    x, w, b = make_values(case)
    dtype = getattr(torch, case.dtype)

    def place(values: torch.Tensor, layout: str, shape: tuple[int, ...]) -> torch.Tensor:
        converted = values.to(dtype=dtype, device=case.device)
        return apply_layout(converted, layout, shape)

    return Inputs(
        place(x, case.input_layout, case.input_shape),
        place(w, case.weight_layout, case.weight_shape),
        None if b is None else b.to(dtype=dtype, device=case.device),
    )


def inputs_from_literal(case: ConvCase, literal: dict) -> Inputs:
    """Return inputs from values written out in a report, in the case's dtype, layout and device.

    ``literal`` holds nested lists under 'input', 'weight' and, with a bias,
    'bias'; their shapes must match the case.
    """
    dtype = getattr(torch, case.dtype)

    def place(name: str, shape: tuple[int, ...], layout: str) -> torch.Tensor:
        values = torch.tensor(literal[name], dtype=torch.float64)
        if tuple(values.shape) != tuple(shape):
            raise ValueError(f"inputs.{name} has shape {tuple(values.shape)}, expected {tuple(shape)}")
        return apply_layout(values.to(dtype=dtype, device=case.device), layout, shape) \
            if layout != "expanded" else values.to(dtype=dtype, device=case.device).contiguous()

    bias = None
    if case.bias:
        bias = torch.tensor(literal["bias"], dtype=torch.float64).to(dtype=dtype, device=case.device)
    return Inputs(place("input", case.input_shape, case.input_layout),
                  place("weight", case.weight_shape, case.weight_layout), bias)


def literal_inputs(inputs: Inputs) -> dict:
    """Return the inputs as nested lists, for writing into a report."""
    def plain(tensor: Optional[torch.Tensor]) -> Optional[list]:
        return None if tensor is None else tensor.detach().to("cpu", torch.float64).tolist()
    return {"input": plain(inputs.input), "weight": plain(inputs.weight), "bias": plain(inputs.bias)}
