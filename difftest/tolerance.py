"""The error bound that separates rounding from bugs.

The derivation is in docs/tolerance.md. In short, for an output element y_i
that sums n = reduction length products plus a bias, any summation order in
floating point with unit roundoff u gives

    |y_i - truth_i| <= gamma(n + 1, u_acc) * M_i + u_out * |truth_i| + eta_out

where M_i = conv(|x|, |w|)_i + |b| is the magnitude of the terms summed,
gamma(k, u) = k u / (1 - k u), u_acc the unit roundoff of the precision the
sum is accumulated in, and u_out the unit roundoff of the output dtype (the
final rounding). eta_out covers underflow into the output's subnormal range.
The truth is computed in float64 and carries its own error of
gamma(n + 1, 2**-53) * M_i, which is added so float64 cases are not judged
against a truth that is itself rounded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "UNIT_ROUNDOFF",
    "ACCUMULATION_DTYPE",
    "SIGNIFICAND_BITS",
    "Bound",
    "gamma",
    "elementwise_bound",
    "exact_bound",
    "normwise_bound",
]

# Unit roundoff u = 2**-p for a significand of p bits (IEEE 754-2008 binary64,
# binary32, binary16; bfloat16 has 8 significand bits including the hidden bit).
UNIT_ROUNDOFF = {
    "float64": 2.0**-53,
    "float32": 2.0**-24,
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
}

# Significand bits p, hidden bit included: integers up to 2**p are exact.
SIGNIFICAND_BITS = {"float64": 53, "float32": 24, "float16": 11, "bfloat16": 8}

# Precision in which torch accumulates a convolution of each dtype. torch's CPU
# and CUDA convolutions of float16 and bfloat16 accumulate in float32
# (at::opmath_type in ATen's OpMathType.h maps Half and BFloat16 to float).
ACCUMULATION_DTYPE = {
    "float64": "float64",
    "float32": "float32",
    "float16": "float32",
    "bfloat16": "float32",
}

# The smallest positive subnormal of each dtype (smallest normal times 2u):
# twice the largest absolute error of rounding into the subnormal range.
UNDERFLOW = {name: float(torch.finfo(getattr(torch, name)).smallest_normal)
             * 2 * UNIT_ROUNDOFF[name] for name in UNIT_ROUNDOFF}

# Normwise algorithms (FFT, Winograd) spread rounding across all outputs; their
# error grows with the transform length, modelled as this many extra terms per
# doubling of the transform size. An estimate that the normwise built-ins meet
# with a wide margin, not a proven constant.
NORMWISE_TERMS_PER_LEVEL = 8


def gamma(k: int, u: float) -> float:
    """Return gamma_k = k u / (1 - k u), the classic bound for k roundings."""
    ku = k * u
    if ku >= 1:
        return math.inf
    return ku / (1 - ku)


@dataclass(frozen=True)
class Bound:
    """Per-element error allowed, and where it came from."""

    values: torch.Tensor
    model: str
    unit_roundoff: float
    accumulation_dtype: str
    reduction_length: int
    factor: float

    def explain(self) -> str:
        if self.model == "exact":
            return "exact: every partial sum is an exactly representable integer, so any difference is a bug"
        text = (f"{self.model} bound: gamma({self.reduction_length}+1) with u={self.unit_roundoff:.3g} "
                f"({self.accumulation_dtype} accumulation)")
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
    values = (gamma(terms, u_acc) + gamma(terms, UNIT_ROUNDOFF["float64"])) * magnitude
    values = values + _final_rounding(truth, dtype, accumulation_dtype, terms)
    return Bound(factor * values, "elementwise", u_acc, accumulation_dtype, reduction_length, factor)


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
) -> Bound:
    """Return a bound on each element scaled by the largest magnitude in its output channel plane.

    FFT and Winograd convolutions mix every input of a plane into every
    output, so their error is bounded relative to the plane's norm, not
    element by element.
    """
    accumulation_dtype = ACCUMULATION_DTYPE[dtype]
    u_acc = UNIT_ROUNDOFF[accumulation_dtype]
    levels = max(1, math.ceil(math.log2(max(2, transform_size))))
    terms = reduction_length + 1 + NORMWISE_TERMS_PER_LEVEL * levels
    finite = torch.where(torch.isfinite(magnitude), magnitude, torch.zeros_like(magnitude))
    plane = finite.amax(dim=(-2, -1), keepdim=True).expand_as(magnitude)
    values = (gamma(terms, u_acc) + gamma(terms, UNIT_ROUNDOFF["float64"])) * torch.maximum(plane, magnitude)
    values = values + _final_rounding(truth, dtype, accumulation_dtype, terms)
    return Bound(factor * values, "normwise", u_acc, accumulation_dtype, reduction_length, factor)


def _final_rounding(truth: torch.Tensor, dtype: str, accumulation_dtype: str, terms: int) -> torch.Tensor:
    """Return the error of rounding the result to the output dtype, underflow included."""
    rounding = truth.abs()
    rounding = torch.where(torch.isfinite(rounding), rounding, torch.zeros_like(rounding))
    rounding = rounding * UNIT_ROUNDOFF[dtype] if dtype != accumulation_dtype else rounding * 0
    return rounding + UNDERFLOW[dtype] + terms * UNDERFLOW[accumulation_dtype]
