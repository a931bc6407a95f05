"""The error bound that separates rounding from bugs.

The derivation is in docs/tolerance.md. In short, for an output element y_i
that sums n = reduction length products plus a bias, any summation order in
floating point with unit roundoff u gives

    |y_i - truth_i| <= (1 + u_out) (gamma(n + 1, u_acc) + gamma(n + 1, 2**-53)) M_i
                       + u_out |truth_i| + eta

where M_i = conv(|x|, |w|)_i + |b| is the magnitude of the terms summed,
gamma(k, u) = k u / (1 - k u), u_acc the unit roundoff of the precision the
sum is accumulated in, and u_out the unit roundoff of the output dtype when
the result is rounded into it once at the end (0 when the output dtype is the
accumulation dtype). The gamma(n + 1, 2**-53) term is the float64 truth's own
error, added so that float64 cases are not judged against a truth that is
itself rounded. eta covers gradual underflow into the subnormal range.

Flushing subnormals to zero is a legitimate floating-point mode (oneDNN's
bfloat16 kernels on CPU use it), so the bound also allows for it: what the
subnormal inputs contribute, one smallest normal number of the accumulation
dtype for each of n products or partial sums that may flush, and |truth_i|
where the output itself may flush. Each part is zero where it cannot occur.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

__all__ = [
    "UNIT_ROUNDOFF",
    "ACCUMULATION_DTYPE",
    "SIGNIFICAND_BITS",
    "SMALLEST_NORMAL",
    "UNDERFLOW",
    "FFT_ROUNDINGS_PER_LEVEL",
    "FFT_TRANSFORMS",
    "WINOGRAD_ROUNDINGS",
    "WINOGRAD_AMPLIFICATION",
    "Bound",
    "SubnormalTerms",
    "gamma",
    "elementwise_bound",
    "exact_bound",
    "normwise_bound",
    "normwise_scale",
    "subnormal_terms",
]

# The constants table ---------------------------------------------------------
# Every number the bounds use, with its source.

# Unit roundoff u = 2**-p for a significand of p bits, hidden bit included
# (IEEE 754-2008 binary64, binary32 and binary16; bfloat16 is binary32 with
# the significand cut to 8 bits).
UNIT_ROUNDOFF = {
    "float64": 2.0**-53,
    "float32": 2.0**-24,
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
}

# Significand bits p, hidden bit included: integers up to 2**p are exact.
# Same source as UNIT_ROUNDOFF.
SIGNIFICAND_BITS = {"float64": 53, "float32": 24, "float16": 11, "bfloat16": 8}

# Precision in which torch accumulates a convolution of each dtype. For float16
# and bfloat16 it is float32 on every CPU path of torch 2.13. at::opmath_type
# maps Half and BFloat16 to float (aten/src/ATen/OpMathType.h). The slow
# im2col path calls cpublas::gemm, whose reduced-precision kernels sum in
# opmath_t and write each result once (aten/src/ATen/native/cpu/BlasKernel.cpp).
# Its float16 entry otherwise widens the operands to float32 for SGEMM
# (aten/src/ATen/native/CPUBlas.cpp). oneDNN accumulates floating-point
# convolutions in f32 (oneDNN Developer Guide, "Data Types").
# benchmarks/bound_check.py checks every path; docs/tolerance.md has the details.
ACCUMULATION_DTYPE = {
    "float64": "float64",
    "float32": "float32",
    "float16": "float32",
    "bfloat16": "float32",
}

# The smallest positive normal number 2**(1 - bias) of each dtype (IEEE
# 754-2008 binary64, binary32 and binary16; bfloat16 keeps binary32's 8-bit
# exponent). torch.finfo(dtype).tiny is the same number. Nonzero values
# below it are subnormal, and a flush-to-zero mode replaces them with zero.
SMALLEST_NORMAL = {
    "float64": 2.0**-1022,
    "float32": 2.0**-126,
    "float16": 2.0**-14,
    "bfloat16": 2.0**-126,
}

# The smallest positive subnormal of each dtype (smallest normal times 2u):
# twice the largest absolute error of rounding into the subnormal range.
UNDERFLOW = {name: SMALLEST_NORMAL[name] * 2 * UNIT_ROUNDOFF[name] for name in UNIT_ROUNDOFF}

# Roundings per level of a radix-2 FFT, rounded up from the per-level error
# of a butterfly: a complex product with a twiddle factor (2 sqrt(2) u), the
# twiddle factor's own error (taken as 2 u) and one complex addition (u).
# The worst-case error of a Cooley-Tukey FFT grows with the number of levels,
# log2 of the length (Johnson and Frigo, "Numerical Accuracy in FFTs", in
# Burrus, Fast Fourier Transforms, section 10.8).
FFT_ROUNDINGS_PER_LEVEL = 8

# Transforms whose errors add up in an FFT convolution: the input's, the
# kernel's and the inverse.
FFT_TRANSFORMS = 3

# Roundings along one path of Winograd F(2x2, 3x3) beyond the channel sum.
# The input transform B^T d B sums 2 terms twice (2 roundings), the filter
# transform G g G^T sums 3 terms twice (4), the product rounds once and the
# output transform A^T m A sums 3 terms twice (4).
WINOGRAD_ROUNDINGS = 11

# Largest factor by which Winograd F(2x2, 3x3)'s transforms scale the terms:
# |A^T| (|G| |g| |G^T| * |B^T| |d| |B|) |A| <= 16 ||g||_1 ||d||_inf, from
# the matrices' entries (derived in docs/tolerance.md).
WINOGRAD_AMPLIFICATION = 16


def gamma(k: int, u: float) -> float:
    """Return gamma_k = k u / (1 - k u), the classic bound for k roundings."""
    ku = k * u
    if ku >= 1:
        return math.inf
    return ku / (1 - ku)


@dataclass(frozen=True)
class Bound:
    """Per-element error allowed, and where it came from.

    ``terms`` is the k of gamma(k, u) and ``output_unit_roundoff`` the u of
    the final rounding into the output dtype (0 when there is none). The last
    three fields describe the allowance for flushing subnormals to zero and
    are 0 where it does not apply: the greatest allowance for subnormal inputs
    read as zero, the number of products and partial sums allowed to flush
    (each by up to the accumulation dtype's smallest normal number), and the
    number of elements whose bound was raised to |truth| because the output
    may flush to zero there.
    """

    values: torch.Tensor
    model: str
    unit_roundoff: float
    accumulation_dtype: str
    reduction_length: int
    factor: float
    terms: Optional[int] = None
    output_unit_roundoff: float = 0.0
    subnormal_inputs: float = 0.0
    flushed_operations: int = 0
    flushed_outputs: int = 0
    # Elements where NaN is accepted as well as the truth's infinity, because
    # the infinity meets a subnormal that a flush-to-zero mode reads as zero.
    nan_allowed: Optional[torch.Tensor] = None

    def explain(self) -> str:
        if self.model == "exact":
            return "exact: every partial sum is an exactly representable integer, so any difference is a bug"
        terms = self.terms if self.terms is not None else self.reduction_length + 1
        count = f"{self.reduction_length}+1" if terms == self.reduction_length + 1 else str(terms)
        text = (f"{self.model} bound: gamma({count}) with u={self.unit_roundoff:.3g} "
                f"({self.accumulation_dtype} accumulation)")
        if self.model == "normwise":
            text += " times a norm of the input planes"
        if self.output_unit_roundoff:
            text += f", plus one rounding to the output (u={self.output_unit_roundoff:.3g}) times |truth|"
        text += self._explain_flushing()
        if self.factor != 1:
            text += f", widened {self.factor:g}x by the implementation's declaration"
        return text

    def _explain_flushing(self) -> str:
        parts = []
        if self.subnormal_inputs:
            parts.append(f"up to {self.subnormal_inputs:.3g} for subnormal inputs read as zero")
        if self.flushed_operations:
            smallest = SMALLEST_NORMAL[self.accumulation_dtype]
            parts.append(f"{self.flushed_operations} x {smallest:.3g} for products and partial sums "
                         f"flushed to zero in {self.accumulation_dtype}")
        if self.flushed_outputs:
            parts.append(f"|truth| at {self.flushed_outputs} elements that may flush to zero in the output dtype")
        if self.nan_allowed is not None:
            parts.append(f"NaN accepted at {int(self.nan_allowed.sum())} elements where an infinity meets a "
                         "subnormal read as zero")
        if not parts:
            return ""
        return ", plus " + " and ".join(parts)


@dataclass(frozen=True)
class SubnormalTerms:
    """The terms of one case that flushing subnormals to zero can change.

    ``lost`` is, for each output element, the sum of |x_k w_k| over the
    products with a subnormal factor, plus |b| where the bias is subnormal:
    the most that reading subnormal inputs as zero can change the element by.
    It is None when no input value is subnormal. ``smallest_term`` is a lower
    bound on every nonzero |x_k w_k| and |b| (infinite when there is none).
    ``nan_when_flushed`` marks the output elements that are NaN once the
    subnormal inputs read as zero but not in the truth: an infinity times a
    subnormal is infinite, and times zero it is NaN. It is None when there is
    no such element.
    """

    lost: Optional[torch.Tensor]
    smallest_term: float
    nan_when_flushed: Optional[torch.Tensor] = None


def subnormal_terms(
    input64: torch.Tensor,
    weight64: torch.Tensor,
    bias64: Optional[torch.Tensor],
    dtype: str,
    convolve: Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor],
) -> SubnormalTerms:
    """Find the subnormal input, weight and bias values of a case and the products they take part in.

    The tensors hold the case's values in float64, and ``dtype`` is the case's
    dtype, which decides what is subnormal. ``convolve(x, w, b)`` is the
    case's convolution with all its options. It runs only when some value is
    subnormal, so a case without subnormals costs a few tensor operations.
    """
    smallest = SMALLEST_NORMAL[dtype]
    smallest_value = _smallest_nonzero([t for t in (input64, weight64, bias64) if t is not None])
    # Every nonzero product is at least the square of the smallest nonzero
    # value, and the bias at least that value itself.
    smallest_term = min(smallest_value * smallest_value, smallest_value)
    if smallest_value >= smallest:
        return SubnormalTerms(None, smallest_term)

    # Non-finite values become 0: an element whose terms include one has a
    # non-finite truth, and there the bound is not used.
    x, w = _finite_magnitude(input64), _finite_magnitude(weight64)
    x_subnormal = torch.where(x < smallest, x, torch.zeros_like(x))
    # A zero bias rather than None where the case has one, so that
    # ``convolve`` receives the arguments it expects.
    b_subnormal = no_bias = None
    if bias64 is not None:
        b = _finite_magnitude(bias64)
        no_bias = torch.zeros_like(b)
        b_subnormal = torch.where(b < smallest, b, no_bias)

    # Each product with a subnormal factor is counted once: those with a
    # subnormal input, then those with a normal input and a subnormal weight.
    lost = convolve(x_subnormal, w, b_subnormal)
    w_subnormal = torch.where(w < smallest, w, torch.zeros_like(w))
    if bool(w_subnormal.any()):
        lost = lost + convolve(x - x_subnormal, w_subnormal, no_bias)
    return SubnormalTerms(lost, smallest_term, _nan_when_flushed(input64, weight64, bias64, smallest, convolve))


def _nan_when_flushed(input64: torch.Tensor, weight64: torch.Tensor, bias64: Optional[torch.Tensor],
                      smallest: float,
                      convolve: Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor],
                      ) -> Optional[torch.Tensor]:
    """Return where the convolution of the flushed values is NaN and the truth is not, or None when nowhere."""
    tensors = [t for t in (input64, weight64, bias64) if t is not None]
    if all(bool(torch.isfinite(t).all()) for t in tensors):
        # Without an infinity or a NaN in the inputs, flushing cannot make a NaN.
        return None

    def flushed(values: torch.Tensor) -> torch.Tensor:
        return torch.where(values.abs() < smallest, torch.zeros_like(values), values)

    bias = flushed(bias64) if bias64 is not None else None
    truth = convolve(input64, weight64, bias64)
    nan = torch.isnan(convolve(flushed(input64), flushed(weight64), bias)) & ~torch.isnan(truth)
    return nan if bool(nan.any()) else None


def elementwise_bound(
    magnitude: torch.Tensor,
    truth: torch.Tensor,
    dtype: str,
    reduction_length: int,
    factor: float = 1.0,
    accumulation_dtype: str | None = None,
    *,
    subnormals: Optional[SubnormalTerms] = None,
) -> Bound:
    """Return the per-element bound for an elementwise-stable summation.

    ``magnitude`` is conv(|x|, |w|) + |b| in float64; ``truth`` is the float64
    result on the same input values. ``subnormals`` (see
    :func:`subnormal_terms`) adds the allowance for flushing subnormals to
    zero. Without it, no input is taken to be subnormal and no product or
    partial sum to underflow.
    """
    accumulation_dtype = accumulation_dtype or ACCUMULATION_DTYPE[dtype]
    u_acc = UNIT_ROUNDOFF[accumulation_dtype]
    terms = reduction_length + 1
    # A binary tree of additions over n products and a bias flushes at most n
    # times (docs/tolerance.md, "Flushing subnormals to zero").
    values, flushing = _rounding(magnitude, truth, dtype, accumulation_dtype, terms, reduction_length, subnormals)
    return Bound(factor * values, "elementwise", u_acc, accumulation_dtype, reduction_length, factor, terms,
                 _output_unit_roundoff(dtype, accumulation_dtype), *flushing,
                 nan_allowed=subnormals.nan_when_flushed if subnormals is not None else None)


def exact_bound(truth: torch.Tensor, dtype: str, reduction_length: int) -> Bound:
    """Return a zero bound, for inputs whose every partial sum is exact in any order."""
    return Bound(torch.zeros_like(truth), "exact", UNIT_ROUNDOFF[ACCUMULATION_DTYPE[dtype]],
                 ACCUMULATION_DTYPE[dtype], reduction_length, 1.0)


def normwise_bound(
    magnitude: torch.Tensor,
    truth: torch.Tensor,
    dtype: str,
    reduction_length: int,
    transform_size: int,
    factor: float = 1.0,
    *,
    scale: Optional[torch.Tensor] = None,
    channels: Optional[int] = None,
    subnormals: Optional[SubnormalTerms] = None,
) -> Bound:
    """Return a bound on each element scaled by a norm of the input planes its output plane reads.

    FFT and Winograd convolutions mix many inputs of a plane into every
    output, so their error is bounded relative to the planes' norms, not
    element by element. ``scale`` is :func:`normwise_scale` expanded to the
    output's shape and ``channels`` the in-channels per group;
    ``transform_size`` is the number of elements of the largest 2-D
    transform. Without ``scale``, the largest magnitude in each plane
    replaces it. That is smaller than the norm, so the bound is then tighter
    than the derivation allows. ``subnormals`` is as for
    :func:`elementwise_bound`.
    """
    accumulation_dtype = ACCUMULATION_DTYPE[dtype]
    u_acc = UNIT_ROUNDOFF[accumulation_dtype]
    levels = max(1, math.ceil(math.log2(max(2, transform_size))))
    channel_terms = channels if channels is not None else reduction_length
    transform_terms = channel_terms + 1 + max(FFT_TRANSFORMS * FFT_ROUNDINGS_PER_LEVEL * levels, WINOGRAD_ROUNDINGS)
    # Never below the elementwise count: the scale is at least the magnitude,
    # so an implementation that sums directly for some cases stays covered.
    terms = max(transform_terms, reduction_length + 1)
    finite = torch.where(torch.isfinite(magnitude), magnitude, torch.zeros_like(magnitude))
    if scale is None:
        scale = finite.amax(dim=(-2, -1), keepdim=True).expand_as(magnitude)
    # NOTE: one flush per rounding counted in ``terms`` is an estimate for a
    # transform: the tree argument for direct sums does not cover the
    # transforms' intermediate values.
    values, flushing = _rounding(torch.maximum(scale, finite), truth, dtype, accumulation_dtype, terms, terms,
                                 subnormals)
    return Bound(factor * values, "normwise", u_acc, accumulation_dtype, reduction_length, factor, terms,
                 _output_unit_roundoff(dtype, accumulation_dtype), *flushing,
                 nan_allowed=subnormals.nan_when_flushed if subnormals is not None else None)


def normwise_scale(
    input64: torch.Tensor,
    weight64: torch.Tensor,
    bias64: Optional[torch.Tensor],
    groups: int,
    pads: tuple[int, int, int, int],
    padding_mode: str,
) -> torch.Tensor:
    """Return the norm an FFT or Winograd convolution's error scales with, per (batch, out-channel) plane.

    For each output plane (n, o) this is
    sum_c ||w[o, c]||_1 max(||x[n, c]||_2, WINOGRAD_AMPLIFICATION ||x[n, c]||_inf) + |b[o]|
    over the in-channels c of o's group, on the padded input: the FFT bound
    needs the 2-norm, the Winograd bound the largest element. Returns a float64
    (N, O, 1, 1) tensor, or (O, 1, 1) for 3-D input.
    """
    unbatched = input64.dim() == 3
    x = input64.unsqueeze(0) if unbatched else input64
    top, bottom, left, right = pads
    if any(pads) and padding_mode != "zeros":
        # Reflected, replicated or wrapped borders repeat input values, which the transform sums again.
        x = F.pad(x, (left, right, top, bottom), mode=padding_mode)
    x = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
    w = torch.where(torch.isfinite(weight64), weight64, torch.zeros_like(weight64))
    batch, in_channels = x.shape[:2]
    out_channels, per_group = w.shape[:2]
    if x.numel():
        x_norm = torch.maximum(x.flatten(2).norm(dim=2), WINOGRAD_AMPLIFICATION * x.abs().flatten(2).amax(dim=2))
    else:
        x_norm = torch.zeros(batch, in_channels, dtype=torch.float64)
    w_norm = w.abs().flatten(2).sum(dim=2)
    scale = torch.einsum("ngc,goc->ngo", x_norm.reshape(batch, groups, per_group),
                         w_norm.reshape(groups, out_channels // groups, per_group)).reshape(batch, out_channels)
    if bias64 is not None:
        scale = scale + torch.where(torch.isfinite(bias64), bias64.abs(), torch.zeros_like(bias64))
    scale = scale.reshape(batch, out_channels, 1, 1)
    return scale[0] if unbatched else scale


def _output_unit_roundoff(dtype: str, accumulation_dtype: str) -> float:
    return UNIT_ROUNDOFF[dtype] if dtype != accumulation_dtype else 0.0


def _smallest_nonzero(tensors: list[torch.Tensor]) -> float:
    """Return the smallest nonzero |value| in ``tensors``, infinite when every value is zero or NaN."""
    # One flat tensor and few operations: this runs on every example.
    magnitudes = torch.cat([t.reshape(-1) for t in tensors]).abs_()
    if not magnitudes.numel():
        return math.inf
    smallest = float(magnitudes.masked_fill_(magnitudes == 0, math.inf).min())
    if math.isnan(smallest):
        # torch.min returns NaN when any value is NaN, which only cases with NaN values reach.
        smallest = float(torch.where(magnitudes > 0, magnitudes, math.inf).min())
    return smallest


def _finite_magnitude(values: torch.Tensor) -> torch.Tensor:
    magnitudes = values.abs()
    return torch.where(torch.isfinite(magnitudes), magnitudes, torch.zeros_like(magnitudes))


def _can_underflow(subnormals: Optional[SubnormalTerms], accumulation_dtype: str) -> bool:
    """Return whether a product or partial sum can fall below the accumulation dtype's smallest normal number.

    With p significand bits, a float at or above 2**(p - 1) times the
    smallest normal number is a multiple of it. When every nonzero product
    and the bias are that large, every partial sum is a multiple of it too,
    so none is nonzero and below it.
    """
    if subnormals is None:
        return False
    threshold = SMALLEST_NORMAL[accumulation_dtype] * 2.0 ** (SIGNIFICAND_BITS[accumulation_dtype] - 1)
    return subnormals.smallest_term < threshold


def _rounding(scale: torch.Tensor, truth: torch.Tensor, dtype: str, accumulation_dtype: str, terms: int,
              flushes: int, subnormals: Optional[SubnormalTerms]) -> tuple[torch.Tensor, tuple[float, int, int]]:
    """Return the bound's values and its flushing allowance (subnormal inputs, flushed operations, flushed outputs).

    The values are (1 + u_out) E + u_out |truth| + underflow, with E the
    error of the sum in the accumulation dtype: (gamma(terms, u_acc) +
    gamma(terms, 2**-53)) scale, plus what flushing subnormals to zero may
    add. Rounding E's sum once into a narrower output dtype adds u_out times
    |computed sum|, which is at most u_out (|truth| + E). Where the computed
    sum may lie below the output dtype's smallest normal number, the output
    may be flushed to 0, and the bound there is at least |truth|.
    """
    u_out = _output_unit_roundoff(dtype, accumulation_dtype)
    accumulation_gamma = gamma(terms, UNIT_ROUNDOFF[accumulation_dtype])
    error = (accumulation_gamma + gamma(terms, UNIT_ROUNDOFF["float64"])) * scale
    subnormal_inputs = 0.0
    if subnormals is not None and subnormals.lost is not None:
        error = error + subnormals.lost
        finite_lost = subnormals.lost[torch.isfinite(subnormals.lost)]
        subnormal_inputs = float(finite_lost.max()) if finite_lost.numel() else 0.0
    flushed_operations = 0
    if _can_underflow(subnormals, accumulation_dtype):
        # Each flushed value is below the smallest normal number, and later
        # roundings scale it by at most 1 + gamma.
        flushed_operations = flushes
        error = error + flushes * SMALLEST_NORMAL[accumulation_dtype] * (1 + accumulation_gamma)

    size = truth.abs()
    size = torch.where(torch.isfinite(size), size, torch.zeros_like(size))
    underflow = UNDERFLOW[dtype] + terms * UNDERFLOW[accumulation_dtype]
    values = (1 + u_out) * error + u_out * size + underflow
    flushed_outputs = 0
    # Without underflow in the accumulation, every partial sum is 0 or at
    # least the accumulation dtype's smallest normal number. An output
    # dtype whose smallest normal number is no larger (bfloat16 in float32)
    # then never flushes.
    output_may_flush = SMALLEST_NORMAL[dtype] > SMALLEST_NORMAL[accumulation_dtype] or flushed_operations > 0
    if u_out and output_may_flush:
        # The computed sum is within E of the truth, so it can be below the
        # output's smallest normal number only where |truth| < that + E.
        flushable = (size < SMALLEST_NORMAL[dtype] + error) & (size > values)
        if bool(flushable.any()):
            flushed_outputs = int(flushable.sum())
            values = torch.where(flushable, size, values)
    return values, (subnormal_inputs, flushed_operations, flushed_outputs)
