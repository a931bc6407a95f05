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
itself rounded. eta covers underflow into the subnormal range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = [
    "UNIT_ROUNDOFF",
    "ACCUMULATION_DTYPE",
    "SIGNIFICAND_BITS",
    "UNDERFLOW",
    "FFT_ROUNDINGS_PER_LEVEL",
    "FFT_TRANSFORMS",
    "WINOGRAD_ROUNDINGS",
    "WINOGRAD_AMPLIFICATION",
    "Bound",
    "gamma",
    "elementwise_bound",
    "exact_bound",
    "normwise_bound",
    "normwise_scale",
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

# The smallest positive subnormal of each dtype (smallest normal times 2u):
# twice the largest absolute error of rounding into the subnormal range
# (torch.finfo gives the smallest normal).
UNDERFLOW = {name: float(torch.finfo(getattr(torch, name)).smallest_normal)
             * 2 * UNIT_ROUNDOFF[name] for name in UNIT_ROUNDOFF}

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
    the final rounding into the output dtype (0 when there is none).
    """

    values: torch.Tensor
    model: str
    unit_roundoff: float
    accumulation_dtype: str
    reduction_length: int
    factor: float
    terms: Optional[int] = None
    output_unit_roundoff: float = 0.0

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
        if self.factor != 1:
            text += f", widened {self.factor:g}x by the implementation's declaration"
        return text


def elementwise_bound(
    magnitude: torch.Tensor,
    truth: torch.Tensor,
    dtype: str,
    reduction_length: int,
    factor: float = 1.0,
    accumulation_dtype: str | None = None,
) -> Bound:
    """Return the per-element bound for an elementwise-stable summation.

    ``magnitude`` is conv(|x|, |w|) + |b| in float64; ``truth`` is the float64
    result on the same input values.
    """
    accumulation_dtype = accumulation_dtype or ACCUMULATION_DTYPE[dtype]
    u_acc = UNIT_ROUNDOFF[accumulation_dtype]
    terms = reduction_length + 1
    values = _rounding(magnitude, truth, dtype, accumulation_dtype, terms)
    return Bound(factor * values, "elementwise", u_acc, accumulation_dtype, reduction_length, factor, terms,
                 _output_unit_roundoff(dtype, accumulation_dtype))


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
) -> Bound:
    """Return a bound on each element scaled by a norm of the input planes its output plane reads.

    FFT and Winograd convolutions mix many inputs of a plane into every
    output, so their error is bounded relative to the planes' norms, not
    element by element. ``scale`` is :func:`normwise_scale` expanded to the
    output's shape and ``channels`` the in-channels per group;
    ``transform_size`` is the number of elements of the largest 2-D
    transform. Without ``scale``, the largest magnitude in each plane
    replaces it. That is smaller than the norm, so the bound is then tighter
    than the derivation allows.
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
    values = _rounding(torch.maximum(scale, finite), truth, dtype, accumulation_dtype, terms)
    return Bound(factor * values, "normwise", u_acc, accumulation_dtype, reduction_length, factor, terms,
                 _output_unit_roundoff(dtype, accumulation_dtype))


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


def _rounding(scale: torch.Tensor, truth: torch.Tensor, dtype: str, accumulation_dtype: str,
              terms: int) -> torch.Tensor:
    """Return (1 + u_out) (gamma(terms, u_acc) + gamma(terms, 2**-53)) scale + u_out |truth| + underflow.

    The sum computed in the accumulation dtype is off by at most the gamma
    terms. Rounding it once into a narrower output dtype adds u_out times
    |computed sum|, which is at most u_out (|truth| + that error).
    """
    u_out = _output_unit_roundoff(dtype, accumulation_dtype)
    accumulated = (gamma(terms, UNIT_ROUNDOFF[accumulation_dtype]) + gamma(terms, UNIT_ROUNDOFF["float64"])) * scale
    size = truth.abs()
    size = torch.where(torch.isfinite(size), size, torch.zeros_like(size))
    underflow = UNDERFLOW[dtype] + terms * UNDERFLOW[accumulation_dtype]
    return (1 + u_out) * accumulated + u_out * size + underflow
