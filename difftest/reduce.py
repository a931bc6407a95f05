"""Reduce a failing case's input values to a few small integers that still fail.

Hypothesis shrinks the case (its shapes and options) but not the values in
the tensors, which come from a seed. This module takes the shrunk case's
inputs and greedily sets as many input, weight and bias elements as it can to
zero, then the remaining ones to small integers (1, -1, 2, ...). It keeps each
change only while the implementation still fails with the same verdict. Where
the mistake allows, a single nonzero input element and a single nonzero
weight element remain, small enough to follow by hand.

Zeroing works on chunks of elements first and halves the chunks when a whole
chunk cannot go (as delta debugging does), so a large tensor costs a number
of evaluations that grows with the elements kept and only logarithmically
with its size. The work
is bounded by an evaluation count and a time limit.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from difftest.registry import Implementation
from difftest.runner import CaseContext, Outcome, call_in_process, evaluate

__all__ = ["Reduction", "reduce_inputs", "REDUCIBLE_VERDICTS", "MAX_LITERAL_ELEMENTS"]

logger = logging.getLogger(__name__)

# Verdicts that depend on the output's values or shape. The others (crash,
# timeout, exception, nondeterministic, ...) are not reduced, because
# repeating them is slow or their cause is not in the values.
REDUCIBLE_VERDICTS = frozenset({"mismatch", "special_value_mismatch", "shape_mismatch"})

# Inputs are written into a report literally only up to this many elements
# (input, weight and bias together); larger cases keep their seed.
MAX_LITERAL_ELEMENTS = 256

MAX_EVALUATIONS = 300
MAX_SECONDS = 20.0

# Replacement values, simplest first.
SMALL_INTEGERS = (1.0, -1.0, 2.0, -2.0, 3.0, -3.0)

TENSOR_NAMES = ("input", "weight", "bias")

# The reduction keeps a change only while this returns True for the new outcome and its context.
Keep = Callable[[Outcome, CaseContext], bool]


@dataclass
class Reduction:
    """The result of reducing one failing case's input values.

    ``literal`` contains the reduced values as nested lists (the report's
    "inputs" field), or None where the inputs stay seed-based; ``outcome`` and
    ``context`` are the evaluation on the reduced values. ``note`` says what
    happened, in one line.
    """

    literal: Optional[dict[str, Any]] = None
    outcome: Optional[Outcome] = None
    context: Optional[CaseContext] = None
    evaluations: int = 0
    elements: int = 0
    nonzero: dict[str, int] = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"literal": self.literal is not None, "evaluations": self.evaluations, "elements": self.elements,
                "nonzero": dict(self.nonzero), "note": self.note}


def reduce_inputs(
    implementation: Implementation,
    outcome: Outcome,
    context: CaseContext,
    *,
    caller: Any = None,
    keep: Optional[Keep] = None,
    max_evaluations: int = MAX_EVALUATIONS,
    max_seconds: float = MAX_SECONDS,
    max_elements: int = MAX_LITERAL_ELEMENTS,
) -> Reduction:
    """Reduce the input values of a failing outcome; return the reduced literal inputs, or why there are none.

    A change is kept when the implementation, called through ``caller``,
    still gives the outcome's verdict on the changed values and ``keep`` (if
    given) accepts the new outcome, for example because the same diagnosis
    still holds. The search stops after ``max_evaluations`` evaluations or
    ``max_seconds`` seconds, keeping the reduction reached by then.
    """
    inputs = context.inputs64
    tensors = {"input": inputs.input, "weight": inputs.weight, "bias": inputs.bias}
    elements = sum(t.numel() for t in tensors.values() if t is not None)
    if outcome.passed or outcome.verdict not in REDUCIBLE_VERDICTS:
        return Reduction(elements=elements, note=f"{outcome.verdict} outcomes are not reduced")
    if elements > max_elements:
        return Reduction(elements=elements, note=f"the inputs have {elements} elements, more than "
                         f"{max_elements}: kept the seed-based inputs")

    search = _Search(implementation, outcome, caller or call_in_process, keep, max_evaluations, max_seconds,
                     tensors)
    if not search.reproduces():
        return Reduction(evaluations=search.evaluations, elements=elements,
                         note="the failure does not reproduce from the same values written literally: "
                              "kept the seed-based inputs")
    _zero_elements(search)
    _small_integers(search)

    nonzero = {name: int(torch.count_nonzero(t)) for name, t in search.tensors.items() if t is not None}
    finite = all(bool(torch.isfinite(t).all()) for t in search.tensors.values() if t is not None)
    note = (f"reduced in {search.evaluations} evaluations to "
            + ", ".join(f"{count} nonzero {name} element{'s' if count != 1 else ''}"
                        for name, count in nonzero.items()))
    if search.exhausted():
        note += f" (stopped at the budget of {max_evaluations} evaluations or {max_seconds:g} s)"
    if not finite:
        # NOTE: reports store non-finite floats as the strings 'nan', 'inf'
        # and '-inf', which inputs_from_literal does not read back, so such
        # values stay seed-based.
        return Reduction(evaluations=search.evaluations, elements=elements, nonzero=nonzero,
                         note=note + "; NaN or infinity remain, so the seed-based inputs are kept")
    logger.debug("%s: %s", implementation.name, note)
    return Reduction(search.literal(), search.outcome, search.context, search.evaluations, elements, nonzero, note)


class _Search:
    """The current reduced values and the budget left; every trial goes through try_change."""

    def __init__(self, implementation: Implementation, outcome: Outcome, caller: Any, keep: Optional[Keep],
                 max_evaluations: int, max_seconds: float, tensors: dict[str, Optional[torch.Tensor]]) -> None:
        self.implementation = implementation
        self.case = outcome.case
        self.verdict = outcome.verdict
        self.caller = caller
        self.keep = keep
        self.max_evaluations = max_evaluations
        self.deadline = time.monotonic() + max_seconds
        self.tensors = {name: None if t is None else t.detach().clone().contiguous() for name, t in tensors.items()}
        self.evaluations = 0
        self.outcome: Optional[Outcome] = None
        self.context: Optional[CaseContext] = None

    def exhausted(self) -> bool:
        return self.evaluations >= self.max_evaluations or time.monotonic() >= self.deadline

    def literal(self, tensors: Optional[dict[str, Optional[torch.Tensor]]] = None) -> dict[str, Any]:
        tensors = tensors or self.tensors
        return {name: None if t is None else t.tolist() for name, t in tensors.items()}

    def reproduces(self) -> bool:
        return self._accept(dict(self.tensors))

    def try_change(self, name: str, indices: list[int], values: torch.Tensor | float) -> bool:
        """Set the flat ``indices`` of one tensor to ``values``; keep the change if the failure persists."""
        if self.exhausted():
            return False
        changed = self.tensors[name]
        assert changed is not None
        changed = changed.clone()
        changed.view(-1)[torch.tensor(indices, dtype=torch.long)] = values
        return self._accept({**self.tensors, name: changed})

    def _accept(self, tensors: dict[str, Optional[torch.Tensor]]) -> bool:
        self.evaluations += 1
        context = CaseContext(self.case, literal=self.literal(tensors))
        outcome = evaluate(self.implementation, self.case, context, caller=self.caller)
        if outcome.verdict != self.verdict:
            return False
        if self.keep is not None and not self.keep(outcome, context):
            return False
        self.tensors, self.outcome, self.context = tensors, outcome, context
        return True


def _zero_elements(search: _Search) -> None:
    """Zero bias, input and weight elements in rounds until a round zeroes nothing."""
    for _ in range(3):
        changed = False
        for name in ("bias", "input", "weight"):
            changed = _zero_tensor(search, name) or changed
        if not changed or search.exhausted():
            return


def _zero_tensor(search: _Search, name: str) -> bool:
    """Zero as many nonzero elements of one tensor as possible, in halving chunks."""
    tensor = search.tensors[name]
    if tensor is None:
        return False
    remaining = [int(i) for i in torch.nonzero(tensor.reshape(-1) != 0).flatten()]
    chunks = 1
    changed = False
    while remaining and not search.exhausted():
        size = math.ceil(len(remaining) / chunks)
        progress = False
        for start in range(0, len(remaining), size):
            chunk = remaining[start:start + size]
            if search.try_change(name, chunk, 0.0):
                progress = changed = True
        if progress:
            tensor = search.tensors[name]
            assert tensor is not None
            remaining = [i for i in remaining if tensor.reshape(-1)[i] != 0]
        elif size == 1:
            break
        else:
            chunks *= 2
    return changed


def _small_integers(search: _Search) -> None:
    """Replace each remaining nonzero element by the simplest small integer that keeps the failure."""
    for name in TENSOR_NAMES:
        tensor = search.tensors[name]
        if tensor is None or search.exhausted():
            continue
        remaining = [int(i) for i in torch.nonzero(tensor.reshape(-1) != 0).flatten()]
        if not remaining:
            continue
        # One trial with every element at its sign often succeeds and saves one trial per element.
        values = tensor.reshape(-1)[remaining]
        signs = torch.where(values < 0, -1.0, 1.0).to(values.dtype)
        if not torch.equal(signs, values):
            search.try_change(name, remaining, signs)
        for index in remaining:
            current = float(search.tensors[name].reshape(-1)[index])  # type: ignore[union-attr]
            for candidate in SMALL_INTEGERS:
                if _simpler(candidate, current) and search.try_change(name, [index], candidate):
                    break
            if search.exhausted():
                return


def _simpler(candidate: float, current: float) -> bool:
    """Return whether ``candidate`` is a simpler value than ``current``: smaller, or positive at equal size."""
    if not math.isfinite(current) or current != round(current):
        return True
    if abs(candidate) != abs(current):
        return abs(candidate) < abs(current)
    return candidate > 0 > current
