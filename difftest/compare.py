"""Judge an implementation's output against the float64 truth."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from difftest.case import ConvCase
from difftest.tolerance import Bound

__all__ = [
    "Comparison",
    "Position",
    "compare_values",
    "check_metadata",
    "count_special_mismatches",
    "error_statistics",
    "oracle_weakness",
]

# How many mismatched positions a comparison keeps, with actual and expected.
SHOWN_POSITIONS = 5

# A case is a weak oracle when fewer than this share of truth elements are
# nonzero, or when the bound exceeds this share of the typical |truth|.
WEAK_NONZERO_SHARE = 0.1
WEAK_BOUND_SHARE = 0.5


@dataclass(frozen=True)
class Position:
    """One output element: its NCHW index, actual, expected (truth) and the bound there."""

    index: tuple[int, ...]
    actual: float
    expected: float
    error: float
    bound: float

    def to_dict(self) -> dict[str, Any]:
        return {"index": list(self.index), "actual": _json_float(self.actual),
                "expected": _json_float(self.expected), "error": _json_float(self.error),
                "bound": _json_float(self.bound)}


@dataclass(frozen=True)
class Comparison:
    """The outcome of comparing one output with the truth."""

    passed: bool
    mismatched: int = 0
    total: int = 0
    greatest: Optional[Position] = None
    positions: tuple[Position, ...] = ()
    special_mismatches: int = 0
    error_norm: float = 0.0
    detail: str = ""
    mismatch_mask: Optional[torch.Tensor] = field(default=None, compare=False, repr=False)
    # Over the elements where the output and the truth are both finite.
    max_error: float = 0.0
    max_error_over_bound: float = 0.0

    @property
    def share(self) -> float:
        return self.mismatched / self.total if self.total else 0.0

    def error_statistics(self) -> dict[str, float]:
        """Return what :func:`error_statistics` returns for the same output, without computing it again."""
        return {"max_error": self.max_error, "max_error_over_bound": self.max_error_over_bound,
                "error_norm": self.error_norm}

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "mismatched": self.mismatched,
            "total": self.total,
            "mismatched_share": self.share,
            "special_mismatches": self.special_mismatches,
            "error_norm": _json_float(self.error_norm),
            "greatest": None if self.greatest is None else self.greatest.to_dict(),
            "positions": [p.to_dict() for p in self.positions],
            "detail": self.detail,
        }


def _json_float(value: float) -> Any:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _index(flat: int, shape: torch.Size) -> tuple[int, ...]:
    index = []
    for size in reversed(shape):
        index.append(flat % size)
        flat //= size
    return tuple(reversed(index))


def check_metadata(output: Any, case: ConvCase) -> Optional[tuple[str, str]]:
    """Return (verdict, detail) when the output's type, shape, dtype or device is wrong, else None."""
    if not isinstance(output, torch.Tensor):
        return "wrong_type", f"returned {type(output).__name__}, expected torch.Tensor"
    if tuple(output.shape) != tuple(case.output_shape):
        return "shape_mismatch", f"shape {tuple(output.shape)}, expected {tuple(case.output_shape)}"
    if str(output.dtype).removeprefix("torch.") != case.dtype:
        return "dtype_mismatch", f"dtype {str(output.dtype).removeprefix('torch.')}, expected {case.dtype}"
    if torch.device(output.device).type != torch.device(case.device).type:
        return "device_mismatch", f"device {output.device}, expected {case.device}"
    return None


def compare_values(actual: torch.Tensor, truth: torch.Tensor, bound: Bound) -> Comparison:
    """Compare ``actual`` with ``truth`` element by element against ``bound``.

    Where the truth is NaN the output must be NaN; where it is infinite the
    output must be the same infinity; where it is finite the output must be
    finite and within the bound.
    """
    actual64 = actual.detach().to("cpu", torch.float64)
    if torch.equal(actual64, truth):
        return _agreement(actual64, truth, bound)
    limit = torch.nan_to_num(bound.values, nan=math.inf, posinf=math.inf)
    difference = actual64 - truth
    if bool(torch.isfinite(difference).all()):
        # Both are finite everywhere (the usual case), so no special value can
        # disagree and the masks below reduce to one comparison.
        special_wrong = torch.zeros_like(truth, dtype=torch.bool)
        error = difference.abs()
        wrong = error > limit
    else:
        finite = torch.isfinite(truth)
        special_wrong = _special_wrong(actual64, truth, bound.nan_allowed)
        error = torch.where(finite & torch.isfinite(actual64), difference.abs(), torch.zeros_like(truth))
        wrong = special_wrong | (finite & ~special_wrong & (error > limit))

    total = truth.numel()
    mismatched = int(wrong.sum())
    # Rank by how far each element is past its bound, special values first.
    excess = torch.where(limit > 0, error / limit, torch.where(error > 0, math.inf, 0.0))
    if total == 0:
        return Comparison(True, 0, 0, error_norm=0.0)
    # The statistics ignore special values, so they are taken before those rank first.
    max_error, max_excess = float(error.max()), float(excess.max())
    excess = torch.where(special_wrong, torch.full_like(excess, math.inf), excess)
    norm = float(error.norm())

    if mismatched == 0:
        # Only the first element of the ranking below is kept: the greatest
        # excess, then the greatest error, then the lowest index (argmax
        # returns the first maximum), found without sorting.
        flat_excess = excess.reshape(-1)
        tied = flat_excess == flat_excess.max()
        shown = [int(torch.argmax(torch.where(tied, error.reshape(-1), -1.0)))]
    else:
        # Sort by error, then (stably) by excess over the bound, so that among
        # elements equally far past their bound the largest error comes first.
        by_error = torch.argsort(error.reshape(-1), descending=True, stable=True)
        order = by_error[torch.argsort(excess.reshape(-1)[by_error], descending=True, stable=True)]
        shown = [int(i) for i in order[: min(SHOWN_POSITIONS, mismatched)]]
    positions = tuple(_position(i, actual64, truth, error, limit, special_wrong) for i in shown)
    greatest = positions[0]
    detail = ""
    special_count = int(special_wrong.sum())
    if special_count:
        detail = f"{special_count} elements with NaN or infinity where the truth differs"
    return Comparison(
        passed=mismatched == 0,
        mismatched=mismatched,
        total=total,
        greatest=greatest,
        positions=positions if mismatched else (),
        special_mismatches=special_count,
        error_norm=norm,
        detail=detail,
        mismatch_mask=wrong,
        max_error=max_error,
        max_error_over_bound=max_excess,
    )


def _agreement(actual64: torch.Tensor, truth: torch.Tensor, bound: Bound) -> Comparison:
    """Return what the full comparison returns for an output equal to the truth, in a few tensor operations.

    Every error and every excess over the bound is 0 there, so the first
    element is the one the full ranking puts first. torch.equal is False
    wherever a NaN occurs, so NaN outputs always take the full comparison.
    """
    total = truth.numel()
    if total == 0:
        return Comparison(True, 0, 0, error_norm=0.0)
    limit = float(torch.nan_to_num(bound.values.reshape(-1)[0], nan=math.inf, posinf=math.inf))
    first = Position(_index(0, truth.shape), float(actual64.reshape(-1)[0]), float(truth.reshape(-1)[0]), 0.0, limit)
    return Comparison(passed=True, mismatched=0, total=total, greatest=first, error_norm=0.0,
                      mismatch_mask=torch.zeros_like(truth, dtype=torch.bool))


def _special_wrong(actual64: torch.Tensor, truth: torch.Tensor,
                   nan_allowed: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Return where NaN or infinity disagrees: NaN exactly where the truth has NaN, the same infinity where it has one.

    Where ``nan_allowed`` is set, NaN is also accepted for the truth's infinity (see Bound.nan_allowed).
    """
    truth_nan, actual_nan = torch.isnan(truth), torch.isnan(actual64)
    truth_inf, actual_inf = torch.isinf(truth), torch.isinf(actual64)
    finite = ~(truth_nan | truth_inf)
    wrong = (truth_nan != actual_nan) | (truth_inf & (actual64 != truth)) | (finite & actual_inf)
    if nan_allowed is not None:
        wrong = wrong & ~(nan_allowed & actual_nan)
    return wrong


def count_special_mismatches(actual: torch.Tensor, truth: torch.Tensor, bound: Optional[Bound] = None) -> int:
    """Return how many elements break the NaN and infinity rule of :func:`compare_values` (with ``bound``'s NaN allowance)."""
    if tuple(actual.shape) != tuple(truth.shape):
        return 0
    actual64 = actual.detach().to("cpu", torch.float64)
    if torch.equal(actual64, truth):
        return 0
    return int(_special_wrong(actual64, truth, bound.nan_allowed if bound is not None else None).sum())


def _position(flat: int, actual: torch.Tensor, truth: torch.Tensor, error: torch.Tensor, limit: torch.Tensor,
              special_wrong: torch.Tensor) -> Position:
    a = float(actual.reshape(-1)[flat])
    t = float(truth.reshape(-1)[flat])
    e = math.inf if bool(special_wrong.reshape(-1)[flat]) else float(error.reshape(-1)[flat])
    return Position(_index(flat, truth.shape), a, t, e, float(limit.reshape(-1)[flat]))


def error_statistics(actual: torch.Tensor, truth: torch.Tensor, bound: Bound) -> dict[str, float]:
    """Return the greatest error, the greatest error relative to the bound and the error norm."""
    actual64 = actual.detach().to("cpu", torch.float64)
    if torch.equal(actual64, truth):
        return {"max_error": 0.0, "max_error_over_bound": 0.0, "error_norm": 0.0}
    finite = torch.isfinite(truth) & torch.isfinite(actual64)
    error = torch.where(finite, (actual64 - truth).abs(), torch.zeros_like(truth))
    limit = torch.nan_to_num(bound.values, nan=math.inf, posinf=math.inf)
    ratio = torch.where(limit > 0, error / limit, torch.where(error > 0, math.inf, 0.0))
    return {
        "max_error": float(error.max()) if error.numel() else 0.0,
        "max_error_over_bound": float(ratio.max()) if ratio.numel() else 0.0,
        "error_norm": float(error.norm()) if error.numel() else 0.0,
    }


def oracle_weakness(truth: torch.Tensor, bound: Bound) -> Optional[str]:
    """Return why this case is a weak oracle, or None when it can catch plausible mistakes."""
    # This runs on every example, and boolean indexing costs more than the rest
    # together, so it is skipped where it would keep every element.
    mask = torch.isfinite(truth)
    everything = bool(mask.all())
    finite = truth.reshape(-1) if everything else truth[mask]
    limits = bound.values.reshape(-1) if everything else bound.values[mask]
    if finite.numel() == 0:
        return "no finite output element to compare"
    nonzero = finite != 0
    share = float(nonzero.float().mean())
    if share < WEAK_NONZERO_SHARE:
        return f"only {share:.0%} of the expected output is nonzero"
    if share < 1:
        finite, limits = finite[nonzero], limits[nonzero]
    typical = float(finite.abs().median())
    if limits.numel() and float(limits.median()) > WEAK_BOUND_SHARE * typical:
        return f"the bound ({float(limits.median()):.3g}) is above half the typical |output| ({typical:.3g})"
    return None
