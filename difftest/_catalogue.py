"""The catalogue of mistakes a diagnosis tests, most specific first.

Each hypothesis builds one or more transformed references: conv2d in float64
on the case's own input values with one argument, input or output altered the
way the mistake would alter it. The hypothesis holds when the implementation's
output matches a transformed reference within the same kind of bound that
judged it. A reference that does not differ from the true one is not tested,
so a hypothesis never claims a case it cannot tell apart.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F

from difftest.case import ConvCase, explicit_padding
from difftest.compare import compare_values
from difftest.registry import Implementation
from difftest.runner import CaseContext, Outcome, evaluate
from difftest.tolerance import (ACCUMULATION_DTYPE, SIGNIFICAND_BITS, Bound, SubnormalTerms, elementwise_bound,
                                exact_bound, normwise_bound, subnormal_terms)
from difftest.values import exact_limit, literal_inputs, Inputs

__all__ = ["CATALOGUE", "Probe", "convolve"]

Pads = tuple[int, int, int, int]
Transform = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]

# Permutation hypotheses pair every slice with every other one; past this
# many batch items or channels they are skipped to keep a diagnosis fast.
MAX_PERMUTED = 16

# output_channels_mixed fits one matrix that mixes the reference's channels
# at every position and batch item. The fit decides nothing unless each of
# its unknowns rests on at least this many positions where the reference is
# nonzero...
MIXING_ROWS_PER_UNKNOWN = 2

# ...and no position has a leverage (the share its own value has in its
# fitted value) above this. Past 1/2, one position could steer the fit to
# match a wrong value there that has nothing to do with mixing.
MAX_MIXING_LEVERAGE = 0.5

# Cases with fewer positions than that are run again with up to this many
# following seeds, when the implementation can be called again.
MAX_MIXING_DRAWS = 16

# Singular values below this share of the largest count as zero: a channel
# that is a linear combination of others adds no unknown to the fit.
MIXING_RANK_TOLERANCE = 1e-9

# A summary leaves out shares below this fraction of the largest one.
MIXING_TEXT_SHARE = 5e-4

# The fitted shares are first rounded to whole numbers, then to 64ths, and
# tried as they are last. Rounded shares keep integer references exact.
MIXING_GRIDS = (1.0, 64.0)

# output_scaled needs this many nonzero reference elements, all scaled by the same factor.
MIN_SCALED_ELEMENTS = 3

# Accumulation precisions tried by low_precision_accumulation, widest first.
NARROWER_ACCUMULATION = ("float32", "float16", "bfloat16")

# low_precision_accumulation needs at least this share of the elements that a
# narrower accumulator rounds to mismatch. A judgement call: on real-valued
# inputs the deliberately wrong accumulators mismatch in over 90% of them.
ROUNDING_SHARE = 0.25


def convolve(
    case: ConvCase,
    x: torch.Tensor,
    w: torch.Tensor,
    b: Optional[torch.Tensor],
    *,
    pads: Optional[Pads] = None,
    stride: Optional[tuple[int, int]] = None,
    dilation: Optional[tuple[int, int]] = None,
    groups: Optional[int] = None,
    mode: Optional[str] = None,
) -> torch.Tensor:
    """Return conv2d of a 4-D input as nn.Conv2d computes it, with any option replaced.

    ``pads`` is (top, bottom, left, right); without it the padding follows the
    case's padding and the (possibly replaced) dilation, as 'same' does.
    """
    stride = stride or case.stride
    dilation = dilation or case.dilation
    groups = groups or case.groups
    mode = mode or case.padding_mode
    if pads is None:
        pads = explicit_padding(case.padding, case.kernel, dilation)
    return F.conv2d(_pad(x, pads, mode), w, b, stride, 0, dilation, groups)


def _pad(x: torch.Tensor, pads: Pads, mode: str) -> torch.Tensor:
    top, bottom, left, right = pads
    if not any(pads):
        return x
    return F.pad(x, (left, right, top, bottom), mode="constant" if mode == "zeros" else mode)


@dataclass
class Probe:
    """One failing outcome in the form the hypotheses test: 4-D float64 tensors on the CPU.

    ``output`` is None when the implementation returned no tensor of four
    dimensions; ``implementation`` and ``caller`` are None when the
    implementation cannot be called again.
    """

    case: ConvCase
    context: CaseContext
    outcome: Outcome
    output: Optional[torch.Tensor]
    truth: torch.Tensor
    magnitude: torch.Tensor
    bound: Bound
    x: torch.Tensor
    w: torch.Tensor
    b: Optional[torch.Tensor]
    implementation: Optional[Implementation] = None
    caller: Any = None

    @classmethod
    def from_outcome(cls, outcome: Outcome, case: ConvCase, context: CaseContext,
                     implementation: Optional[Implementation] = None, caller: Any = None) -> Optional[Probe]:
        """Build the probe of an outcome that returned a tensor, or return None where no bound can judge it.

        An output that is not 4-D (3-D for an unbatched case) becomes None.
        """
        if outcome.output is None:
            return None

        def four_d(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.unsqueeze(0) if case.unbatched and tensor.dim() == 3 else tensor

        output: Optional[torch.Tensor] = four_d(outcome.output.detach().to("cpu", torch.float64))
        if output is not None and output.dim() != 4:
            output = None
        bound = outcome.bound
        if bound is None:
            if implementation is None:
                return None
            bound = context.bound(implementation)
        inputs = context.inputs64
        return cls(
            case=case,
            context=context,
            outcome=outcome,
            output=output,
            truth=four_d(context.truth),
            magnitude=four_d(context.magnitude),
            bound=dataclasses.replace(bound, values=four_d(bound.values)),
            x=four_d(inputs.input),
            w=inputs.weight,
            b=inputs.bias,
            implementation=implementation,
            caller=caller,
        )

    @property
    def same_shape(self) -> bool:
        return self.output is not None and self.output.shape == self.truth.shape

    def explains(self, transform: Transform, reduction_length: Optional[int] = None) -> bool:
        """Return whether the output matches the transformed reference where that differs from the truth."""
        if self.output is None:
            return False
        try:
            values = transform(self.x, self.w, self.b)
            magnitude = transform(self.x.abs(), self.w.abs(), None if self.b is None else self.b.abs())
            subnormals = self.subnormals_for(transform)
        except (RuntimeError, ValueError, IndexError):
            # The altered arguments are invalid for this case (a kernel larger
            # than the input, reflect padding past the border): not testable.
            return False
        if values.shape == self.truth.shape and compare_values(values, self.truth, self.bound).passed:
            return False
        if values.shape != self.output.shape:
            return False
        if values.shape != self.truth.shape and not bool(values.ne(0).any()):
            # Only the shape would match: all-zero values cannot confirm where the mistake moves them.
            return False
        bound = self.bound_for(values, magnitude, reduction_length or self.case.reduction_length, subnormals)
        return compare_values(self.output, values, bound).passed

    def subnormals_for(self, transform: Transform) -> SubnormalTerms:
        """Return the flushing terms of a transformed reference, reusing the case's when no value is subnormal."""
        subnormals = self.context.subnormals
        if subnormals.lost is None:
            return subnormals
        return subnormal_terms(self.x, self.w, self.b, self.case.dtype, transform)

    def bound_for(self, values: torch.Tensor, magnitude: torch.Tensor, reduction_length: int,
                  subnormals: Optional[SubnormalTerms] = None, scale: Optional[torch.Tensor] = None) -> Bound:
        """Return a bound of the outcome's kind for a transformed reference.

        ``scale`` replaces the case's norm in a normwise bound, for a
        reference whose planes sum several of the case's planes.
        """
        dtype = self.case.dtype
        finite = magnitude[torch.isfinite(magnitude)]
        largest = float(finite.max()) if finite.numel() else 0.0
        if self.bound.model == "exact" and largest <= exact_limit(self.case):
            return exact_bound(values, dtype, reduction_length)
        if self.bound.model == "normwise":
            return normwise_bound(magnitude, values, dtype, reduction_length, self.context.transform_size,
                                  self.bound.factor, scale=self._normwise_scale(values) if scale is None else scale,
                                  channels=self.case.in_channels // self.case.groups, subnormals=subnormals)
        accumulation = self.bound.accumulation_dtype or ACCUMULATION_DTYPE[dtype]
        return elementwise_bound(magnitude, values, dtype, reduction_length, self.bound.factor,
                                 accumulation_dtype=accumulation, subnormals=subnormals)

    def _normwise_scale(self, values: torch.Tensor) -> Optional[torch.Tensor]:
        """Return the norm that judged the outcome, expanded to ``values``, or None where the planes differ.

        NOTE: the norm is the case's, not one recomputed for the altered
        arguments. With zero padding and the same channels per output the
        two are equal. Other padding modes and regrouped channels may change it.
        """
        scale = self.context.normwise_scale()
        if scale.dim() == 3:
            scale = scale.unsqueeze(0)
        if scale.shape[:2] != values.shape[:2]:
            return None
        return scale.expand_as(values)

    def conv(self, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], **changes: Any) -> torch.Tensor:
        return convolve(self.case, x, w, b, **changes)

    def pads(self, dilation: Optional[tuple[int, int]] = None) -> Pads:
        return explicit_padding(self.case.padding, self.case.kernel, dilation or self.case.dilation)

    def first(self, variants: Iterator[tuple[str, Transform]], reduction_length: Optional[int] = None
              ) -> Optional[str]:
        """Return the summary of the first variant that explains the output, or None."""
        for summary, transform in variants:
            if self.explains(transform, reduction_length):
                return summary
        return None


Hypothesis = Callable[[Probe], Optional[str]]


# Padding ---------------------------------------------------------------------------


def _same_padding_wrong_side(p: Probe) -> Optional[str]:
    if p.case.padding != "same" or not p.same_shape:
        return None
    top, bottom, left, right = p.pads()
    if top == bottom and left == right:
        return None

    def variants() -> Iterator[tuple[str, Transform]]:
        where = "at the top and left instead of the bottom and right"
        yield (f"the odd pixel of 'same' padding sits {where}",
               lambda x, w, b: p.conv(x, w, b, pads=(bottom, top, right, left)))
        if top != bottom and left != right:
            yield ("the odd pixel of 'same' padding sits at the top instead of the bottom",
                   lambda x, w, b: p.conv(x, w, b, pads=(bottom, top, left, right)))
            yield ("the odd pixel of 'same' padding sits at the left instead of the right",
                   lambda x, w, b: p.conv(x, w, b, pads=(top, bottom, right, left)))

    return p.first(variants())


def _circular_wrong_axis(p: Probe) -> Optional[str]:
    if p.case.padding_mode != "circular":
        return None
    top, bottom, left, right = p.pads()

    def wrap_width_only(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        padded = _pad(_pad(x, (0, 0, left, right), "circular"), (top, bottom, 0, 0), "zeros")
        return F.conv2d(padded, w, b, p.case.stride, 0, p.case.dilation, p.case.groups)

    def wrap_height_only(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        padded = _pad(_pad(x, (top, bottom, 0, 0), "circular"), (0, 0, left, right), "zeros")
        return F.conv2d(padded, w, b, p.case.stride, 0, p.case.dilation, p.case.groups)

    variants = []
    if top or bottom:
        variants.append(("circular padding wraps only the width; the height is padded with zeros",
                         wrap_width_only))
    if left or right:
        variants.append(("circular padding wraps only the height; the width is padded with zeros",
                         wrap_height_only))
    return p.first(iter(variants))


def _padding_axis_mixed(p: Probe) -> Optional[str]:
    top, bottom, left, right = p.pads()
    if (top, bottom) == (left, right):
        return None
    variants = [
        ("the height's padding is applied to both axes", (top, bottom, top, bottom)),
        ("the width's padding is applied to both axes", (left, right, left, right)),
        ("the height's and the width's padding are swapped", (left, right, top, bottom)),
    ]
    return p.first((summary, _with_pads(p, pads)) for summary, pads in variants)


def _with_pads(p: Probe, pads: Pads) -> Transform:
    return lambda x, w, b: p.conv(x, w, b, pads=pads)


def _padding_one_side(p: Probe) -> Optional[str]:
    top, bottom, left, right = p.pads()
    if not any((top, bottom, left, right)):
        return None
    variants = [
        ("padding is applied only at the top and left", (top, 0, left, 0)),
        ("padding is applied only at the bottom and right", (0, bottom, 0, right)),
    ]
    return p.first((summary, _with_pads(p, pads)) for summary, pads in variants if pads != (top, bottom, left, right))


def _padding_shifted(p: Probe) -> Optional[str]:
    pads = p.pads()
    top, bottom, left, right = pads
    if not any(pads) or not p.same_shape:
        return None
    candidates: list[tuple[str, Pads]] = []
    for shift_h, shift_w in itertools.product((0, 1, -1), repeat=2):
        moved = (top + shift_h, bottom - shift_h, left + shift_w, right - shift_w)
        if (shift_h, shift_w) != (0, 0) and min(moved) >= 0:
            candidates.append((f"the padding is shifted by one pixel ({_pads_text(moved)} instead of "
                               f"{_pads_text(pads)})", moved))
    for moved, side in (((top + bottom, 0, left + right, 0), "top and left"),
                        ((0, top + bottom, 0, left + right), "bottom and right")):
        if moved != pads and all(moved != other for _, other in candidates):
            candidates.append((f"all padding sits at the {side} ({_pads_text(moved)} instead of "
                               f"{_pads_text(pads)})", moved))
    return p.first((summary, _with_pads(p, moved)) for summary, moved in candidates)


def _pads_text(pads: Pads) -> str:
    return "top {}, bottom {}, left {}, right {}".format(*pads)


# Stride and dilation ---------------------------------------------------------------


def _stride_axis_mixed(p: Probe) -> Optional[str]:
    height, width = p.case.stride
    if height == width:
        return None
    variants = [
        (f"the height's stride {height} is applied to both axes", (height, height)),
        (f"the width's stride {width} is applied to both axes", (width, width)),
        ("the height's and the width's strides are swapped", (width, height)),
    ]
    return p.first((summary, _with_stride(p, stride)) for summary, stride in variants)


def _with_stride(p: Probe, stride: tuple[int, int]) -> Transform:
    return lambda x, w, b: p.conv(x, w, b, stride=stride)


def _dilation_axis_mixed(p: Probe) -> Optional[str]:
    height, width = p.case.dilation
    if height == width:
        return None
    variants = [
        (f"the height's dilation {height} is applied to both axes", (height, height)),
        (f"the width's dilation {width} is applied to both axes", (width, width)),
        ("the height's and the width's dilations are swapped", (width, height)),
    ]
    return p.first((summary, _with_dilation(p, dilation)) for summary, dilation in variants)


def _with_dilation(p: Probe, dilation: tuple[int, int], pads: Optional[Pads] = None) -> Transform:
    return lambda x, w, b: p.conv(x, w, b, dilation=dilation, pads=pads)


def _stride_ignored(p: Probe) -> Optional[str]:
    height, width = p.case.stride
    if (height, width) == (1, 1):
        return None
    out_h, out_w = p.truth.shape[-2:]

    def cropped(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        return p.conv(x, w, b, stride=(1, 1))[..., :out_h, :out_w]

    variants: list[tuple[str, Transform]] = [
        (f"the stride {p.case.stride} is ignored: the output is computed at stride 1", _with_stride(p, (1, 1))),
    ]
    if height > 1 and width > 1:
        variants.append((f"the height's stride {height} is ignored", _with_stride(p, (1, width))))
        variants.append((f"the width's stride {width} is ignored", _with_stride(p, (height, 1))))
    variants.append(("the output is computed at stride 1 and cropped to the strided output's size", cropped))
    return p.first(iter(variants))


def _dilation_ignored(p: Probe) -> Optional[str]:
    height, width = p.case.dilation
    if (height, width) == (1, 1):
        return None
    pads = p.pads()
    out_h, out_w = p.truth.shape[-2:]

    def cropped(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        return p.conv(x, w, b, dilation=(1, 1), pads=pads)[..., :out_h, :out_w]

    variants: list[tuple[str, Transform]] = [
        (f"the dilation {p.case.dilation} is ignored: the kernel taps are adjacent", _with_dilation(p, (1, 1))),
    ]
    if p.case.padding == "same":
        variants.append(("the dilation is ignored for the kernel taps but not for the 'same' padding",
                         _with_dilation(p, (1, 1), pads)))
    if height > 1 and width > 1:
        variants.append((f"the height's dilation {height} is ignored", _with_dilation(p, (1, width))))
        variants.append((f"the width's dilation {width} is ignored", _with_dilation(p, (height, 1))))
    variants.append(("the kernel taps are read without dilation and the output cropped to the dilated size",
                     cropped))
    return p.first(iter(variants))


# Kernel and spatial axes -----------------------------------------------------------


def _spatial_axes_swapped(p: Probe) -> Optional[str]:
    if p.output is None or p.truth.shape[-2] * p.truth.shape[-1] < 2:
        return None

    def read_back(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        result = p.conv(x, w, b)
        return result.transpose(-2, -1).reshape(result.shape)

    def transposed(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        return p.conv(x, w, b).transpose(-2, -1)

    square = p.truth.shape[-2] == p.truth.shape[-1]
    variants = [("output equals the reference with H and W swapped", transposed if square else read_back)]
    if not square:
        variants.append(("output equals the reference with H and W swapped (its shape too)", transposed))
    return p.first(iter(variants))


def _kernel_flipped(p: Probe) -> Optional[str]:
    variants = [
        ("the kernel is rotated by 180 degrees: a true convolution instead of a cross-correlation", (-2, -1)),
        ("the kernel is flipped upside down", (-2,)),
        ("the kernel is flipped left to right", (-1,)),
    ]
    return p.first((summary, _with_flip(p, dims)) for summary, dims in variants)


def _with_flip(p: Probe, dims: tuple[int, ...]) -> Transform:
    return lambda x, w, b: p.conv(x, w.flip(dims), b)


# Groups ----------------------------------------------------------------------------


def _groups_misassigned(p: Probe) -> Optional[str]:
    groups = p.case.groups
    if groups < 2:
        return None

    def filters_rolled(shift: int) -> Transform:
        def transform(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
            by_group = w.reshape(groups, w.shape[0] // groups, *w.shape[1:])
            return p.conv(x, by_group.roll(shift, dims=0).reshape(w.shape), b)
        return transform

    def inputs_rolled(shift: int) -> Transform:
        def transform(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
            by_group = x.reshape(x.shape[0], groups, x.shape[1] // groups, *x.shape[2:])
            return p.conv(by_group.roll(shift, dims=1).reshape(x.shape), w, b)
        return transform

    variants = [
        ("each group's filters are applied to the next group's input channels", filters_rolled(1)),
        ("each group's filters are applied to the previous group's input channels", filters_rolled(-1)),
        ("each group reads the input channels of the previous group", inputs_rolled(1)),
        ("each group reads the input channels of the next group", inputs_rolled(-1)),
    ]
    return p.first(iter(variants))


def _groups_ignored(p: Probe) -> Optional[str]:
    groups = p.case.groups
    if groups < 2:
        return None

    def every_channel(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        return p.conv(x, w.repeat(1, groups, 1, 1), b, groups=1)

    summary = f"groups={groups} is ignored: every filter sums over all input channels"
    return p.first(iter([(summary, every_channel)]), reduction_length=p.case.reduction_length * groups)


# Bias ------------------------------------------------------------------------------


def _bias_wrong_axis(p: Probe) -> Optional[str]:
    if p.b is None:
        return None

    def along(axis: int) -> Transform:
        def transform(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
            assert b is not None
            result = p.conv(x, w, None)
            index = torch.arange(result.shape[axis]) % b.shape[0]
            shape = [1, 1, 1, 1]
            shape[axis] = -1
            return result + b[index].reshape(shape)
        return transform

    variants = [
        ("the bias is indexed by output column (modulo out_channels) instead of by output channel", along(3)),
        ("the bias is indexed by output row (modulo out_channels) instead of by output channel", along(2)),
    ]
    return p.first(iter(variants))


def _bias_doubled(p: Probe) -> Optional[str]:
    if p.b is None:
        return None
    return p.first(iter([("the bias is added twice", lambda x, w, b: p.conv(x, w, None if b is None else 2 * b))]))


def _bias_missing(p: Probe) -> Optional[str]:
    if p.b is None:
        return None
    return p.first(iter([("the bias is not added", lambda x, w, b: p.conv(x, w, None))]))


# Output channels and batch ---------------------------------------------------------------


def _output_channels_permuted(p: Probe) -> Optional[str]:
    permutation = _permutation(p, 1)
    if permutation is None:
        return None
    moved = [f"{j} holds {k}" for j, k in enumerate(permutation) if j != k]
    shown = ", ".join(moved[:4]) + (", ..." if len(moved) > 4 else "")
    return f"the output channels are permuted (channel {shown} of the reference)"


def _batch_permuted(p: Probe) -> Optional[str]:
    if p.case.unbatched:
        return None
    permutation = _permutation(p, 0)
    if permutation is None:
        return None
    moved = [f"{j} holds {k}" for j, k in enumerate(permutation) if j != k]
    shown = ", ".join(moved[:4]) + (", ..." if len(moved) > 4 else "")
    return f"the batch items are permuted (item {shown} of the reference)"


def _permutation(p: Probe, axis: int) -> Optional[list[int]]:
    """Return how the output's slices along ``axis`` permute the truth's, or None where they do not."""
    if not p.same_shape:
        return None
    assert p.output is not None
    size = p.truth.shape[axis]
    if size < 2 or size > MAX_PERMUTED:
        return None
    fits = []
    for j in range(size):
        actual = p.output.select(axis, j)
        fits.append([k for k in range(size)
                     if compare_values(actual, p.truth.select(axis, k),
                                       dataclasses.replace(p.bound, values=p.bound.values.select(axis, k))).passed])
    permutation = _perfect_matching(fits)
    if permutation is None or permutation == list(range(size)):
        return None
    permuted = p.truth.index_select(axis, torch.tensor(permutation))
    if compare_values(permuted, p.truth, p.bound).passed:
        return None
    return permutation


def _perfect_matching(fits: list[list[int]]) -> Optional[list[int]]:
    """Return a permutation with permutation[j] in fits[j] for every j, or None (augmenting paths)."""
    owner: dict[int, int] = {}

    def assign(j: int, seen: set[int]) -> bool:
        for k in fits[j]:
            if k in seen:
                continue
            seen.add(k)
            if k not in owner or assign(owner[k], seen):
                owner[k] = j
                return True
        return False

    for j in range(len(fits)):
        if not assign(j, set()):
            return None
    permutation = [0] * len(fits)
    for k, j in owner.items():
        permutation[j] = k
    return permutation


def _output_channels_mixed(p: Probe) -> Optional[str]:
    if not p.same_shape or p.truth.shape[1] < 2:
        return None
    assert p.output is not None
    if not bool(torch.isfinite(p.output).all()) or not bool(torch.isfinite(p.truth).all()):
        return None
    probes = [p]
    draws = _redraws(p)
    # The channels may be mixed after the bias is added, or before it (as
    # when a filter reads another filter's weights).
    for before_bias in (False, True) if p.b is not None else (False,):
        fit = _mixing_fit(probes, before_bias)
        while fit is not None and not fit.pinned:
            draw = next(draws, None)
            if draw is None:
                fit = None
                break
            probes.append(draw)
            fit = _mixing_fit(probes, before_bias)
        if fit is not None:
            summary = _mixing_summary(probes, fit, before_bias)
            if summary is not None:
                return summary
    return None


@dataclass
class _MixingFit:
    """The least-squares mixing matrix of a set of probes, and whether their positions pin it down.

    ``matrix[k, j]`` is the share of reference channel j in output channel k.
    """

    matrix: torch.Tensor
    pinned: bool


def _mixed_channels(p: Probe, before_bias: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the channels a mixing combines and their magnitudes: the truth's, or the bias-free convolution's."""
    if before_bias:
        return p.conv(p.x, p.w, None), p.conv(p.x.abs(), p.w.abs(), None)
    return p.truth, p.magnitude


def _rows(tensor: torch.Tensor) -> torch.Tensor:
    """Return an NCHW tensor as one row per batch item and position, one column per channel."""
    return tensor.permute(0, 2, 3, 1).reshape(-1, tensor.shape[1])


def _mix(tensor: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    return torch.einsum("kj,njhw->nkhw", matrix, tensor)


def _bias_plane(p: Probe) -> torch.Tensor:
    assert p.b is not None
    return p.b.reshape(1, -1, 1, 1)


def _mixing_fit(probes: list[Probe], before_bias: bool) -> Optional[_MixingFit]:
    """Fit output = matrix x channels over every position of every probe; None where the channels are all zero.

    The fit solves for the difference from the identity with the
    pseudo-inverse, so a channel that is zero everywhere keeps its own share
    of 1 instead of an arbitrary one.
    """
    design_parts, target_parts = [], []
    for q in probes:
        assert q.output is not None
        channels, _ = _mixed_channels(q, before_bias)
        target = q.output - _bias_plane(q) if before_bias else q.output
        design_parts.append(_rows(channels))
        target_parts.append(_rows(target))
    design = torch.cat(design_parts)
    target = torch.cat(target_parts)
    # Each position is scaled to unit norm, as the elementwise bound judges
    # each relative to its own magnitude. Positions where every channel is
    # zero constrain nothing and are left out.
    norms = design.norm(dim=1, keepdim=True)
    nonzero = norms.squeeze(1) > 0
    if not bool(nonzero.any()):
        return None
    design = design[nonzero] / norms[nonzero]
    target = target[nonzero] / norms[nonzero]
    left, singular, right = torch.linalg.svd(design, full_matrices=False)
    significant = singular > singular[0] * MIXING_RANK_TOLERANCE
    left, singular, right = left[:, significant], singular[significant], right[significant]
    difference = right.T @ ((left.T @ (target - design)) / singular.unsqueeze(1))
    matrix = torch.eye(design.shape[1], dtype=design.dtype) + difference.T

    rank = int(significant.sum())
    leverage = float(left.square().sum(dim=1).max())
    # Where some channels are linear combinations of the others, many
    # matrices give the same mixture, and the fitted one would be arbitrary.
    full_rank = rank == design.shape[1]
    pinned = full_rank and design.shape[0] >= MIXING_ROWS_PER_UNKNOWN * rank and leverage <= MAX_MIXING_LEVERAGE
    return _MixingFit(matrix, pinned)


def _redraws(p: Probe) -> Iterator[Probe]:
    """Yield probes of the same case with the following seeds, while the implementation returns a full output."""
    if p.implementation is None:
        return
    for offset in range(1, MAX_MIXING_DRAWS + 1):
        case = p.case.replace(seed=p.case.seed + offset)
        context = CaseContext(case)
        outcome = evaluate(p.implementation, case, context, caller=p.caller)
        if outcome.verdict not in ("pass", "mismatch"):
            return
        draw = Probe.from_outcome(outcome, case, context, p.implementation, p.caller)
        if draw is None or not draw.same_shape:
            return
        yield draw


def _mixing_matches(probes: list[Probe], matrix: torch.Tensor, before_bias: bool) -> bool:
    """Return whether every probe's output matches its channels mixed by ``matrix`` within the bound."""
    for q in probes:
        assert q.output is not None
        channels, magnitude = _mixed_channels(q, before_bias)
        values = _mix(channels, matrix)
        magnitude = _mix(magnitude, matrix.abs())
        scale = q._normwise_scale(values)
        if scale is not None:
            scale = _mix(scale, matrix.abs())
        if before_bias:
            values = values + _bias_plane(q)
            magnitude = magnitude + _bias_plane(q).abs()

        def transform(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor],
                      q: Probe = q) -> torch.Tensor:
            # Called on magnitudes only, so the shares are taken as magnitudes too.
            if before_bias:
                mixed = _mix(q.conv(x, w, None), matrix.abs())
                return mixed if b is None else mixed + b.reshape(1, -1, 1, 1)
            return _mix(q.conv(x, w, b), matrix.abs())

        # Each mixed element adds up to out_channels channel sums.
        reduction_length = q.case.reduction_length + q.case.out_channels
        bound = q.bound_for(values, magnitude, reduction_length, q.subnormals_for(transform), scale)
        if not compare_values(q.output, values, bound).passed:
            return False
    return True


def _mixing_summary(probes: list[Probe], fit: _MixingFit, before_bias: bool) -> Optional[str]:
    """Return the summary of a mixing that explains every probe, or None where none does or it only scales or permutes."""
    p = probes[0]
    channels, _ = _mixed_channels(p, before_bias)
    own = _rows(channels)
    target = _rows(p.output - _bias_plane(p) if before_bias else p.output)
    # The best fit of each output channel to its own reference channel alone.
    energy = own.square().sum(dim=0)
    scales = torch.where(energy > 0, (own * target).sum(dim=0) / energy.clamp_min(torch.finfo(torch.float64).tiny),
                         torch.ones_like(energy))
    for candidate in _rounded(torch.diag(scales)):
        if _mixing_matches(probes, candidate, before_bias):
            return None

    for matrix in _rounded(fit.matrix):
        if not _mixing_matches(probes, matrix, before_bias):
            continue
        if _is_permutation(matrix) or bool((matrix - torch.diag(torch.diagonal(matrix))).eq(0).all()):
            return None
        values = _mix(channels, matrix) + (_bias_plane(p) if before_bias else 0)
        if compare_values(values, p.truth, p.bound).passed:
            return None
        return _mixing_text(matrix, before_bias)
    return None


def _rounded(matrix: torch.Tensor) -> list[torch.Tensor]:
    """Return ``matrix`` rounded to each grid of MIXING_GRIDS, then as it is, without repeats."""
    candidates: list[torch.Tensor] = []
    for grid in MIXING_GRIDS:
        candidates.append(torch.round(matrix * grid) / grid)
    candidates.append(matrix)
    unique: list[torch.Tensor] = []
    for candidate in candidates:
        if not any(torch.equal(candidate, seen) for seen in unique):
            unique.append(candidate)
    return unique


def _is_permutation(matrix: torch.Tensor) -> bool:
    ones = matrix.eq(1)
    return (bool(ones.sum(dim=0).eq(1).all()) and bool(ones.sum(dim=1).eq(1).all())
            and bool((matrix.eq(0) | ones).all()))


def _mixing_text(matrix: torch.Tensor, before_bias: bool) -> str:
    # A share this far below the largest is left out: a fit to float32
    # outputs is only accurate to about 1e-7.
    negligible = MIXING_TEXT_SHARE * float(matrix.abs().max())
    parts = []
    for k in range(matrix.shape[0]):
        others = [f"{float(matrix[k, j]):.3g} x channel {j}" for j in range(matrix.shape[1])
                  if j != k and abs(float(matrix[k, j])) > negligible]
        if not others:
            continue
        own = float(matrix[k, k])
        mixed = " and ".join(others)
        if own == 1:
            parts.append(f"output channel {k} contains {mixed} as well as its own result")
        elif abs(own) <= negligible:
            parts.append(f"output channel {k} holds {mixed} instead of its own result")
        else:
            parts.append(f"output channel {k} holds {own:.3g} x its own result and {mixed}")
    listed = "; ".join(parts[:3]) + ("; ..." if len(parts) > 3 else "")
    where = " before the bias is added" if before_bias else ""
    return f"the output channels are mixed{where}: {listed} (channels of the reference)"


def _output_scaled(p: Probe) -> Optional[str]:
    if not p.same_shape:
        return None
    # Any single value is some multiple of the reference, so a factor means
    # something only where it holds for several nonzero elements. A small
    # case is run again with other seeds until there are enough.
    probes, outputs, truths = [p], [], []
    draws = _redraws(p)
    while True:
        q = probes[-1]
        assert q.output is not None
        finite = torch.isfinite(q.output) & torch.isfinite(q.truth)
        outputs.append(q.output[finite])
        truths.append(q.truth[finite])
        if sum(int(t.ne(0).sum()) for t in truths) >= MIN_SCALED_ELEMENTS:
            break
        draw = next(draws, None)
        if draw is None:
            return None
        probes.append(draw)

    truth, output = torch.cat(truths), torch.cat(outputs)
    fitted = float((output * truth).sum()) / float(truth.square().sum())
    # A negative factor would turn the magnitudes that set the bound negative too.
    # NOTE: so a sign error (factor -1) is left to the mismatch locations.
    for factor in _rounded(torch.tensor(fitted, dtype=torch.float64)):
        value = float(factor)
        if value <= 0 or value == 1:
            continue
        if all(_scaled_by(q, value) for q in probes):
            return f"the output is {value:.4g} times the reference"
    return None


def _scaled_by(p: Probe, factor: float) -> bool:
    """Return whether ``p``'s output is ``factor`` times its reference; a zero reference must give a zero output."""
    assert p.output is not None
    if not bool(p.truth.ne(0).any()):
        return compare_values(p.output, p.truth, p.bound).passed
    return p.explains(lambda x, w, b: factor * p.conv(x, w, b))


def _output_shape_off_by_one(p: Probe) -> Optional[str]:
    if p.output is None or p.same_shape or p.output.shape[:2] != p.truth.shape[:2]:
        return None
    differences = [p.output.shape[axis] - p.truth.shape[axis] for axis in (2, 3)]
    if any(abs(d) > 1 for d in differences) or not any(differences):
        return None
    rows = min(p.output.shape[2], p.truth.shape[2])
    columns = min(p.output.shape[3], p.truth.shape[3])
    for anchor in ("start", "end"):
        actual = _corner(p.output, rows, columns, anchor)
        expected = _corner(p.truth, rows, columns, anchor)
        bound = dataclasses.replace(p.bound, values=_corner(p.bound.values, rows, columns, anchor))
        if bool(expected.ne(0).any()) and compare_values(actual, expected, bound).passed:
            return (f"the output is {tuple(p.output.shape[2:])} instead of {tuple(p.truth.shape[2:])} "
                    f"({_size_change(differences)}) and the overlapping values agree")
    return None


def _corner(tensor: torch.Tensor, rows: int, columns: int, anchor: str) -> torch.Tensor:
    if anchor == "start":
        return tensor[..., :rows, :columns]
    return tensor[..., tensor.shape[-2] - rows:, tensor.shape[-1] - columns:]


def _size_change(differences: list[int]) -> str:
    parts = []
    for difference, unit in zip(differences, ("row", "column")):
        if difference:
            parts.append(f"one {unit} {'more' if difference > 0 else 'fewer'}")
    return " and ".join(parts)


# Calling the implementation again ------------------------------------------------------------


def _layout_dependent(p: Probe) -> Optional[str]:
    case = p.case
    if p.implementation is None or (case.input_layout, case.weight_layout) == ("contiguous", "contiguous"):
        return None
    plain = case.replace(input_layout="contiguous", weight_layout="contiguous")
    literal = literal_inputs(p.context.inputs)
    outcome = evaluate(p.implementation, plain, CaseContext(plain, literal=literal), caller=p.caller)
    if not outcome.passed:
        return None
    layouts = [f"{name} {layout}" for name, layout in (("input", case.input_layout), ("weight", case.weight_layout))
               if layout != "contiguous"]
    return (f"the result depends on memory layout: correct on contiguous copies of the same values, "
            f"wrong with {' and '.join(layouts)}")


def _batch_mixed(p: Probe) -> Optional[str]:
    case = p.case
    if p.implementation is None or case.unbatched or case.batch < 2:
        return None
    single = case.replace(batch=1)
    inputs = p.context.inputs64
    for item in range(case.batch):
        literal = literal_inputs(Inputs(inputs.input[item:item + 1], inputs.weight, inputs.bias))
        outcome = evaluate(p.implementation, single, CaseContext(single, literal=literal), caller=p.caller)
        if not outcome.passed:
            return None
    return ("each batch item alone is computed correctly, but not in a batch of "
            f"{case.batch}: one item's result depends on the others")


# Precision ---------------------------------------------------------------------------------------------


def _low_precision_accumulation(p: Probe) -> Optional[str]:
    comparison = p.outcome.comparison
    if not p.same_shape or comparison is None or comparison.special_mismatches or comparison.mismatch_mask is None:
        return None
    assert p.output is not None
    mismatched = int(comparison.mismatch_mask.sum())
    right = p.bound.accumulation_dtype or ACCUMULATION_DTYPE[p.case.dtype]
    for narrower in NARROWER_ACCUMULATION:
        if SIGNIFICAND_BITS[narrower] >= SIGNIFICAND_BITS[right]:
            continue
        bound = elementwise_bound(p.magnitude, p.truth, p.case.dtype, p.case.reduction_length, p.bound.factor,
                                  accumulation_dtype=narrower, subnormals=p.context.subnormals)
        rounds = p.magnitude > 0
        if p.bound.model == "exact":
            # Integer sums whose terms add up to at most 2**p stay exact in a
            # format with p significand bits, so a narrower accumulator cannot
            # err there. Past 2**(p + 1) the spacing of the format is 4 or
            # more, and nearly every integer sum is rounded.
            exact_range = 2.0 ** SIGNIFICAND_BITS[narrower]
            bound = dataclasses.replace(bound, values=torch.where(p.magnitude > exact_range, bound.values,
                                                                  torch.zeros_like(bound.values)))
            rounds = p.magnitude > 2 * exact_range
        # Rounding in a narrow accumulator touches most of the sums it rounds.
        # A few wrong elements among many right ones point to another mistake
        # that merely fits the loose worst-case bound.
        if mismatched < ROUNDING_SHARE * int(rounds.sum()):
            continue
        if compare_values(p.output, p.truth, bound).passed:
            return (f"the error fits the bound for {narrower} accumulation (u={bound.unit_roundoff:.3g}) "
                    f"but not for {right}")
    return None


# The catalogue, most specific first: when several hypotheses hold, the first
# one names the diagnosis. A hypothesis tied to one option (same padding,
# circular mode, one axis) comes before a broader one that the same output may
# also satisfy (stride ignored, shape off by one, lower precision).
CATALOGUE: tuple[tuple[str, Hypothesis], ...] = (
    ("same_padding_wrong_side", _same_padding_wrong_side),
    ("circular_wrong_axis", _circular_wrong_axis),
    ("padding_axis_mixed", _padding_axis_mixed),
    ("stride_axis_mixed", _stride_axis_mixed),
    ("dilation_axis_mixed", _dilation_axis_mixed),
    ("padding_one_side", _padding_one_side),
    ("padding_shifted", _padding_shifted),
    ("spatial_axes_swapped", _spatial_axes_swapped),
    ("kernel_flipped", _kernel_flipped),
    ("groups_misassigned", _groups_misassigned),
    ("groups_ignored", _groups_ignored),
    ("bias_wrong_axis", _bias_wrong_axis),
    ("bias_doubled", _bias_doubled),
    ("bias_missing", _bias_missing),
    ("stride_ignored", _stride_ignored),
    ("dilation_ignored", _dilation_ignored),
    ("output_channels_permuted", _output_channels_permuted),
    ("batch_permuted", _batch_permuted),
    ("output_channels_mixed", _output_channels_mixed),
    ("output_scaled", _output_scaled),
    ("output_shape_off_by_one", _output_shape_off_by_one),
    ("layout_dependent", _layout_dependent),
    ("batch_mixed", _batch_mixed),
    ("low_precision_accumulation", _low_precision_accumulation),
)
