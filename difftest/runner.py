"""Run one case through an implementation and judge it against the float64 truth."""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from difftest.case import ConvCase
from difftest.compare import (Comparison, check_metadata, compare_values, error_statistics,
                              oracle_weakness)
from difftest.reference import magnitude, reference, truth
from difftest.registry import Implementation
from difftest.tolerance import Bound, elementwise_bound, exact_bound, normwise_bound
from difftest.values import Inputs, exact_limit, inputs_from_literal, make_inputs

__all__ = ["Outcome", "CaseContext", "evaluate", "caller_for", "call_in_process", "VERDICTS", "PASS"]

PASS = "pass"

# Every verdict an outcome can carry, with what it means.
VERDICTS = {
    "pass": "agrees with the float64 truth within the bound",
    "mismatch": "values outside the bound",
    "special_value_mismatch": "NaN or infinity where the truth has none, or missing where it has them",
    "shape_mismatch": "output shape differs from conv2d's",
    "dtype_mismatch": "output dtype differs from the input's",
    "device_mismatch": "output is on another device than the input",
    "wrong_type": "returned something other than a tensor",
    "exception": "raised an exception on a valid case",
    "not_implemented": "raised NotImplementedError on a case it declared supported",
    "crash": "the process running it died (segmentation fault, abort, out of memory)",
    "timeout": "did not return within the time limit",
    "mutates_input": "modified its input, weight or bias in place",
    "output_aliases_input": "returned a tensor sharing memory with an input",
    "nondeterministic": "two calls on the same case gave answers further apart than the bound",
    "invalid_input_accepted": "returned a result where torch raises",
    "valid_input_rejected": "raised where torch returns a result",
}


@dataclass
class CaseContext:
    """Inputs, truth and reference of one case, computed once and shared by every implementation."""

    case: ConvCase
    literal: Optional[dict] = None
    inputs: Inputs = field(init=False)
    inputs64: Inputs = field(init=False)
    truth: torch.Tensor = field(init=False)
    magnitude: torch.Tensor = field(init=False)
    _reference: Optional[torch.Tensor] = field(default=None, init=False)
    _reference_error: Optional[str] = field(default=None, init=False)
    _exact: Optional[bool] = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.literal is not None:
            self.inputs = inputs_from_literal(self.case, self.literal)
        else:
            self.inputs = make_inputs(self.case)
        self.inputs64 = self.inputs.float64()
        self.truth = truth(self.case, self.inputs64)
        self.magnitude = magnitude(self.case, self.inputs64)

    @property
    def exact(self) -> bool:
        """Whether every partial sum is an exactly representable integer, so any difference is a bug."""
        if self._exact is None:
            tensors = [t for t in (self.inputs64.input, self.inputs64.weight, self.inputs64.bias) if t is not None]
            integral = all(bool(torch.isfinite(t).all()) and bool((t == t.round()).all()) for t in tensors)
            largest = float(self.magnitude.max()) if self.magnitude.numel() else 0.0
            self._exact = integral and largest <= exact_limit(self.case)
        return self._exact

    def reference(self) -> Optional[torch.Tensor]:
        """Return torch's own conv2d output on the case, or None where torch raised."""
        if self._reference is None and self._reference_error is None:
            try:
                self._reference = reference(self.case, self.inputs).detach()
            except Exception as error:  # torch failing is reported, never fatal
                self._reference_error = f"{type(error).__name__}: {error}"
        return self._reference

    def bound(self, implementation: Implementation) -> Bound:
        supports = implementation.supports
        if self.exact and supports.error_model == "elementwise" and supports.tolerance_factor == 1:
            return exact_bound(self.truth, self.case.dtype, self.case.reduction_length)
        if supports.error_model == "normwise":
            transform = (self.case.height + self.case.kernel_height) * (self.case.width + self.case.kernel_width)
            return normwise_bound(self.magnitude, self.truth, self.case.dtype, self.case.reduction_length,
                                  transform, supports.tolerance_factor)
        return elementwise_bound(self.magnitude, self.truth, self.case.dtype, self.case.reduction_length,
                                 supports.tolerance_factor)


@dataclass
class Outcome:
    """What happened when one implementation ran one case."""

    implementation: str
    case: ConvCase
    verdict: str
    detail: str = ""
    comparison: Optional[Comparison] = None
    bound: Optional[Bound] = None
    exact: bool = False
    weak_oracle: Optional[str] = None
    implementation_error: dict[str, float] = field(default_factory=dict)
    torch_error: dict[str, float] = field(default_factory=dict)
    reference_suspect: Optional[str] = None
    exception: Optional[str] = None
    seconds: float = 0.0
    output: Optional[torch.Tensor] = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    def accuracy_ratio(self) -> Optional[float]:
        """Return the implementation's greatest error over torch's, or None where undefined."""
        mine = self.implementation_error.get("max_error")
        theirs = self.torch_error.get("max_error")
        if mine is None or theirs is None or not math.isfinite(mine):
            return None
        if theirs == 0:
            return None if mine == 0 else math.inf
        return mine / theirs

    def accuracy_text(self) -> str:
        ratio = self.accuracy_ratio()
        if ratio is None:
            if self.implementation_error.get("max_error") == 0 and self.torch_error.get("max_error") == 0:
                return "both it and torch match the truth exactly"
            return ""
        if math.isinf(ratio):
            return "torch matches the truth exactly, the implementation does not"
        if ratio >= 1:
            return f"{ratio:.3g} times less accurate than torch"
        return f"{1 / ratio:.3g} times more accurate than torch" if ratio > 0 else "exact where torch is not"


def call_in_process(implementation: Implementation, case: ConvCase, inputs: Inputs) -> Any:
    return implementation.call(inputs.input, inputs.weight, inputs.bias, case)


def caller_for(implementation: Implementation, timeout: Optional[float] = None) -> Any:
    """Return how to call ``implementation``: in a worker process when it is isolated, else in this one."""
    if not implementation.isolate:
        return call_in_process
    from difftest.isolation import isolated_caller

    return isolated_caller(timeout=timeout)


def evaluate(
    implementation: Implementation,
    case: ConvCase,
    context: Optional[CaseContext] = None,
    *,
    check_determinism: bool = False,
    caller: Any = None,
) -> Outcome:
    """Run ``case`` through ``implementation`` and return the judged outcome.

    Shape, dtype and device are checked before values. An exception raised by
    the implementation becomes its outcome, never an error of the run.
    ``caller`` replaces the in-process call, for example with an isolated one.
    """
    context = context or CaseContext(case)
    caller = caller or call_in_process
    inputs = context.inputs
    before = inputs.clone()
    bound = context.bound(implementation)
    outcome = Outcome(implementation.name, case, PASS, bound=bound, exact=context.exact)

    started = time.perf_counter()
    try:
        output = caller(implementation, case, inputs)
    except NotImplementedError as error:
        outcome.verdict, outcome.exception = "not_implemented", _exception_text(error)
        outcome.detail = f"raised NotImplementedError: {error}"
        return outcome
    except Exception as error:
        verdict = getattr(error, "difftest_verdict", "exception")
        outcome.verdict, outcome.exception = verdict, _exception_text(error)
        outcome.detail = str(error) if verdict != "exception" else f"raised {type(error).__name__}: {error}"
        return outcome
    finally:
        outcome.seconds = time.perf_counter() - started

    outcome.output = output.detach() if isinstance(output, torch.Tensor) else None
    violated = _contract_violation(inputs, before, output)
    if violated:
        outcome.verdict, outcome.detail = violated
        return outcome
    wrong = check_metadata(output, case)
    if wrong:
        outcome.verdict, outcome.detail = wrong
        return outcome

    comparison = compare_values(output, context.truth, bound)
    outcome.comparison = comparison
    outcome.implementation_error = error_statistics(output, context.truth, bound)
    torch_output = context.reference()
    if torch_output is not None and check_metadata(torch_output, case) is None:
        outcome.torch_error = error_statistics(torch_output, context.truth, bound)
        if outcome.torch_error["max_error_over_bound"] > 1:
            outcome.reference_suspect = (
                f"torch's own conv2d is {outcome.torch_error['max_error_over_bound']:.3g} times past the bound "
                "on this case")
    outcome.weak_oracle = oracle_weakness(context.truth, bound)
    if not comparison.passed:
        outcome.verdict = "special_value_mismatch" if comparison.special_mismatches else "mismatch"
        outcome.detail = (f"{comparison.mismatched} / {comparison.total} elements "
                          f"({100 * comparison.share:.3g}%) outside the bound")
        return outcome

    if check_determinism:
        again = caller(implementation, case, inputs)
        if isinstance(again, torch.Tensor) and again.shape == output.shape:
            spread = compare_values(again, output.detach().to("cpu", torch.float64), bound)
            if not spread.passed:
                outcome.verdict = "nondeterministic"
                outcome.detail = (f"a second call differs from the first in {spread.mismatched} elements; "
                                  f"greatest difference {spread.greatest.error:.3g} at {spread.greatest.index}")
    return outcome


def _exception_text(error: BaseException) -> str:
    lines = traceback.format_exception_only(type(error), error)
    return "".join(lines).strip()


def _contract_violation(inputs: Inputs, before: Inputs, output: Any) -> Optional[tuple[str, str]]:
    """Return (verdict, detail) when the call changed an input or returned an alias of one."""
    for name in ("input", "weight", "bias"):
        now, then = getattr(inputs, name), getattr(before, name)
        if now is None:
            continue
        if now.shape != then.shape or not torch.equal(_bits(now), _bits(then)):
            return "mutates_input", f"{name} was modified in place"
    if isinstance(output, torch.Tensor):
        for name in ("input", "weight", "bias"):
            tensor = getattr(inputs, name)
            if tensor is not None and _shares_memory(output, tensor):
                return "output_aliases_input", f"the output shares memory with {name}"
    return None


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    # Compare bit patterns, so NaN equals NaN and -0.0 differs from 0.0.
    view_dtype = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]
    return tensor.detach().contiguous().view(view_dtype)


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.device != b.device or a.numel() == 0 or b.numel() == 0:
        return False
    try:
        a_start = a.untyped_storage().data_ptr()
        b_start = b.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return False
    a_end = a_start + a.untyped_storage().nbytes()
    b_end = b_start + b.untyped_storage().nbytes()
    return a_start < b_end and b_start < a_end
