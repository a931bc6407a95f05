"""Run one case through an implementation and judge it against the float64 truth."""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F

from difftest._contract import contract_violation, snapshot
from difftest._memory import check_memory_budget
from difftest.case import ConvCase, explicit_padding
from difftest.compare import (Comparison, check_metadata, compare_values, count_special_mismatches,
                              error_statistics, oracle_weakness)
from difftest.errors import UnsupportedCaseError, UsageError
from difftest.reference import conv2d_as_module, magnitude, reference, truth
from difftest.registry import Implementation
from difftest.tolerance import (Bound, SubnormalTerms, elementwise_bound, exact_bound, normwise_bound,
                                normwise_scale, subnormal_terms)
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
    "crash": "the process running it died (segmentation fault, abort), or ran out of memory",
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
    memory_budget: Optional[int] = None
    inputs: Inputs = field(init=False)
    inputs64: Inputs = field(init=False)
    truth: torch.Tensor = field(init=False)
    magnitude: torch.Tensor = field(init=False)
    _reference: Optional[torch.Tensor] = field(default=None, init=False)
    _reference_error: Optional[str] = field(default=None, init=False)
    _exact: Optional[bool] = field(default=None, init=False)
    _subnormals: Optional[SubnormalTerms] = field(default=None, init=False)
    _normwise_scale: Optional[torch.Tensor] = field(default=None, init=False)

    def __post_init__(self) -> None:
        # Refuse a case over the budget (bytes) before any of its tensors exists.
        check_memory_budget(self.case, self.memory_budget)
        self.reset_inputs()
        self.inputs64 = self.inputs.float64()
        self.truth = truth(self.case, self.inputs64)
        self.magnitude = magnitude(self.case, self.inputs64)

    def reset_inputs(self) -> None:
        """Build the inputs again, so that an implementation that changed them cannot affect the next one."""
        if self.literal is not None:
            self.inputs = inputs_from_literal(self.case, self.literal)
        else:
            self.inputs = make_inputs(self.case)

    @property
    def exact(self) -> bool:
        """Whether every partial sum is an exactly representable integer, so any difference is a bug."""
        if self._exact is None:
            tensors = [t for t in (self.inputs64.input, self.inputs64.weight, self.inputs64.bias) if t is not None]
            # One flat tensor: this runs on every example, and each tensor operation has a fixed cost.
            values = torch.cat([t.reshape(-1) for t in tensors])
            integral = bool(torch.isfinite(values).all()) and bool((values == values.round()).all())
            largest = float(self.magnitude.max()) if self.magnitude.numel() else 0.0
            self._exact = integral and largest <= exact_limit(self.case)
        return self._exact

    def reference(self) -> Optional[torch.Tensor]:
        """Return torch's own conv2d output on the case, or None where torch raised."""
        if self._reference is None and self._reference_error is None:
            # NOTE: torch runs in this process even for an isolated implementation, so a crash inside torch
            # ends the run. reference() avoids the crashes known on this torch (oneDNN bfloat16 on AMX CPUs).
            try:
                self._reference = reference(self.case, self.inputs).detach()
            except Exception as error:  # torch failing is reported, never fatal
                self._reference_error = f"{type(error).__name__}: {error}"
        return self._reference

    @property
    def subnormals(self) -> SubnormalTerms:
        """The case's subnormal values and what flushing them to zero can change, found once."""
        if self._subnormals is None:
            inputs = self.inputs64

            def convolve(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
                return conv2d_as_module(F.conv2d, self.case, x, w, b)

            self._subnormals = subnormal_terms(inputs.input, inputs.weight, inputs.bias, self.case.dtype, convolve)
        return self._subnormals

    @property
    def transform_size(self) -> int:
        """The element count of the largest 2-D transform a normwise bound allows for."""
        case = self.case
        pads = explicit_padding(case.padding, case.kernel, case.dilation)
        # A linear convolution by FFT needs a transform at least the padded
        # input's size. Rounding up to the next power of two can double it on
        # each axis, so allow that.
        return 4 * (case.height + pads[0] + pads[1]) * (case.width + pads[2] + pads[3])

    def normwise_scale(self) -> torch.Tensor:
        """Return :func:`difftest.tolerance.normwise_scale` of the case's inputs, computed once."""
        if self._normwise_scale is None:
            case = self.case
            pads = explicit_padding(case.padding, case.kernel, case.dilation)
            self._normwise_scale = normwise_scale(self.inputs64.input, self.inputs64.weight, self.inputs64.bias,
                                                  case.groups, pads, case.padding_mode)
        return self._normwise_scale

    def bound(self, implementation: Implementation) -> Bound:
        supports = implementation.supports
        if self.exact and supports.error_model == "elementwise" and supports.tolerance_factor == 1:
            return exact_bound(self.truth, self.case.dtype, self.case.reduction_length)
        if supports.error_model == "normwise":
            return self._normwise_bound(supports.tolerance_factor)
        return elementwise_bound(self.magnitude, self.truth, self.case.dtype, self.case.reduction_length,
                                 supports.tolerance_factor, subnormals=self.subnormals)

    def _normwise_bound(self, factor: float) -> Bound:
        case = self.case
        return normwise_bound(self.magnitude, self.truth, case.dtype, case.reduction_length, self.transform_size,
                              factor, scale=self.normwise_scale().expand_as(self.truth),
                              channels=case.in_channels // case.groups, subnormals=self.subnormals)


@dataclass
class Outcome:
    """The judged result of one implementation on one case."""

    implementation: str
    case: ConvCase
    verdict: str
    detail: str = ""
    comparison: Optional[Comparison] = None
    bound: Optional[Bound] = None
    exact: bool = False
    # Why the case is a weak oracle, set for value mismatches only.
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
        if mine is None or theirs is None or not math.isfinite(mine) or not math.isfinite(theirs):
            return None
        if theirs == 0:
            return None if mine == 0 else math.inf
        return mine / theirs

    def accuracy_text(self) -> str:
        ratio = self.accuracy_ratio()
        if ratio is None:
            theirs = self.torch_error.get("max_error")
            if self.implementation_error.get("max_error") == 0 and theirs == 0:
                return "both it and torch match the truth exactly"
            if theirs is not None and not math.isfinite(theirs):
                # A ratio against NaN or infinity would read as "more accurate" whatever the implementation did.
                return "torch's own error is not finite on this case, so no ratio is given"
            return ""
        if math.isinf(ratio):
            return "torch matches the truth exactly, the implementation does not"
        if ratio >= 1:
            return f"{ratio:.3g} times less accurate than torch"
        return f"{1 / ratio:.3g} times more accurate than torch" if ratio > 0 else "exact where torch is not"


def call_in_process(implementation: Implementation, case: ConvCase, inputs: Inputs) -> Any:
    return implementation.call(inputs.input, inputs.weight, inputs.bias, case)


def caller_for(implementation: Implementation, timeout: Optional[float] = None,
               memory_limit: Optional[int] = None) -> Any:
    """Return how to call ``implementation``: in a worker process when it is isolated, else in this one.

    ``timeout`` (seconds per call) and ``memory_limit`` (bytes a call may add
    to the worker's address space) apply to isolated calls only. Raises
    UsageError when an isolated implementation cannot be imported by a worker.
    The caller of an isolated implementation has a ``close()`` method that
    stops its worker.
    """
    if not implementation.isolate:
        return call_in_process
    from difftest.isolation import isolated_caller, require_importable

    require_importable(implementation)
    return isolated_caller(timeout=timeout, memory_limit=memory_limit)


def evaluate(
    implementation: Implementation,
    case: ConvCase,
    context: Optional[CaseContext] = None,
    *,
    check_determinism: bool = False,
    caller: Any = None,
    memory_budget: Optional[int] = None,
) -> Outcome:
    """Run ``case`` through ``implementation`` and return the judged outcome.

    Shape, dtype and device are checked before values. An exception raised by
    the implementation becomes its outcome, never an error of the run.
    ``caller`` replaces the in-process call, for example with an isolated one.
    A UsageError from ``caller`` (an isolated implementation that cannot be
    imported) is raised, not judged. ``memory_budget`` (bytes) applies when
    no ``context`` is given: see CaseContext. A case outside what the
    implementation declared raises UnsupportedCaseError.
    """
    outside = implementation.supports.rejects(case)
    if outside is not None:
        # A declaration is a promise of what to test, so a case outside it
        # is the caller's mistake, not a finding against the implementation.
        raise UnsupportedCaseError(implementation.name, f"{outside} lies outside what it declared")
    context = context or CaseContext(case, memory_budget=memory_budget)
    caller = caller or call_in_process
    inputs = context.inputs
    before = snapshot(inputs)
    bound = context.bound(implementation)
    outcome = Outcome(implementation.name, case, PASS, bound=bound, exact=context.exact)

    started = time.perf_counter()
    try:
        output = caller(implementation, case, inputs)
    except UsageError:
        # NOTE: an implementation that itself raises difftest's UsageError
        # also ends the run here instead of becoming an 'exception' finding.
        raise
    except NotImplementedError as error:
        outcome.verdict, outcome.exception = "not_implemented", exception_text(error)
        outcome.detail = f"raised NotImplementedError: {error}"
        return outcome
    except (Exception, SystemExit) as error:
        # SystemExit is the implementation calling sys.exit(), a finding like
        # any exception. KeyboardInterrupt still stops the run.
        verdict = getattr(error, "difftest_verdict", "exception")
        outcome.verdict = verdict
        outcome.exception = getattr(error, "difftest_exception", None) or exception_text(error)
        raised = getattr(error, "difftest_raised", type(error).__name__)
        outcome.detail = str(error) if verdict != "exception" else f"raised {raised}: {error}"
        return outcome
    finally:
        outcome.seconds = time.perf_counter() - started

    outcome.output = output.detach() if isinstance(output, torch.Tensor) else None
    violated = contract_violation(inputs, before, output)
    if violated:
        outcome.verdict, outcome.detail = violated
        context.reset_inputs()
        return outcome
    wrong = check_metadata(output, case)
    if wrong:
        outcome.verdict, outcome.detail = wrong
        return outcome

    comparison = compare_values(output, context.truth, bound)
    outcome.comparison = comparison
    outcome.implementation_error = comparison.error_statistics()
    torch_output = context.reference()
    if torch_output is not None and check_metadata(torch_output, case) is None:
        # Many implementations return torch's own values bit for bit, and then
        # torch's error is the implementation's.
        same = torch.equal(torch_output, output.detach())
        outcome.torch_error = (dict(outcome.implementation_error) if same
                               else error_statistics(torch_output, context.truth, bound))
        if outcome.torch_error["max_error_over_bound"] > 1:
            outcome.reference_suspect = (
                f"torch's own conv2d is {outcome.torch_error['max_error_over_bound']:.3g} times past the bound "
                "on this case")
        wrong_specials = comparison.special_mismatches if same else count_special_mismatches(torch_output,
                                                                                              context.truth, bound)
        if wrong_specials:
            outcome.reference_suspect = (
                f"torch's own conv2d has NaN or infinity where the truth differs in {wrong_specials} elements "
                "on this case")
    if not comparison.passed:
        # Only a failure is reported, so only a failure pays for this check
        # (call compare.oracle_weakness to judge a passing case).
        outcome.weak_oracle = oracle_weakness(context.truth, bound)
        outcome.verdict = "special_value_mismatch" if comparison.special_mismatches else "mismatch"
        outcome.detail = (f"{comparison.mismatched} / {comparison.total} elements "
                          f"({100 * comparison.share:.3g}%) outside the bound")
        return outcome

    if check_determinism:
        repeated = _second_call(implementation, case, context, caller, output, bound)
        if repeated is not None:
            outcome.verdict, outcome.detail = repeated
    return outcome


def _second_call(implementation: Implementation, case: ConvCase, context: CaseContext, caller: Any,
                 output: torch.Tensor, bound: Bound) -> Optional[tuple[str, str]]:
    """Call again on the same inputs; return (verdict, detail) when the result differs or the contract is broken."""
    inputs = context.inputs
    before = snapshot(inputs)
    try:
        again = caller(implementation, case, inputs)
    except UsageError:
        raise
    except (Exception, SystemExit) as error:
        verdict = getattr(error, "difftest_verdict", None)
        if verdict is not None and verdict not in ("crash", "timeout"):
            return verdict, f"on a second call: {error}"
        if verdict is None:
            what = f"raised {type(error).__name__}: {error}"
        else:
            what = f"failed ({verdict}): {error}"
        return "nondeterministic", f"a first call returned a result, a second call on the same case {what}"
    violated = contract_violation(inputs, before, again)
    if violated:
        context.reset_inputs()
        return violated[0], f"on a second call: {violated[1]}"
    if not isinstance(again, torch.Tensor) or again.shape != output.shape:
        shape = tuple(again.shape) if isinstance(again, torch.Tensor) else type(again).__name__
        return "nondeterministic", f"a second call returned {shape} where the first returned {tuple(output.shape)}"
    spread = compare_values(again, output.detach().to("cpu", torch.float64), bound)
    if spread.passed:
        return None
    return ("nondeterministic", f"a second call differs from the first in {spread.mismatched} elements; "
                                f"greatest difference {spread.greatest.error:.3g} at {spread.greatest.index}")


def exception_text(error: BaseException) -> str:
    """Return an exception as its report shows it: 'Type: message'."""
    raised = getattr(error, "difftest_raised", None)
    if raised is not None:
        # An exception the worker could not send back as itself (see difftest.isolation).
        return f"{raised}: {error}" if str(error) else raised
    lines = traceback.format_exception_only(type(error), error)
    return "".join(lines).strip()

