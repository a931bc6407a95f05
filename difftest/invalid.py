"""Invalid conv2d calls, judged by what torch does with them.

An :class:`InvalidCall` describes one call of conv2d that is invalid or only
looks invalid: the shapes, dtypes and devices of its tensors and its stride,
padding, dilation and groups, stored as given (a stride of 0 stays 0). The
oracle is ``torch.nn.functional.conv2d`` itself: where torch raises, the
implementation must raise too (any exception type), and where torch returns
a result, the implementation must return one of the same shape.

>>> import torch
>>> from difftest import register
>>> from difftest.invalid import InvalidCall, evaluate_invalid
>>> call = InvalidCall("non_positive_stride", (1, 1, 4, 4), (1, 1, 3, 3), stride=(0, 1))
>>> evaluate_invalid(register("torch_itself", torch.nn.functional.conv2d), call).verdict
'pass'
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F

from difftest.case import DTYPES
from difftest.errors import UsageError
from difftest.reference import crash_free_backend, quiet_same_padding
from difftest.registry import Implementation
from difftest.runner import PASS, Outcome, call_in_process, exception_text
from difftest.values import Inputs

__all__ = [
    "InvalidCall",
    "InvalidOutcome",
    "REASONS",
    "evaluate_invalid",
    "invalid_report_fields",
    "format_invalid_report",
]

# The mistakes an invalid call can make, each with the sentence reports show.
REASONS = {
    "kernel_larger_than_input": "the dilated kernel is larger than the padded input",
    "groups_not_dividing_channels": "groups does not divide the input or output channels",
    "in_channels_mismatch": "the weight's in-channels times groups differ from the input's channels",
    "non_positive_stride": "a stride of zero or less",
    "negative_padding": "a negative padding",
    "non_positive_dilation": "a dilation of zero or less",
    "same_padding_with_stride": "padding='same' with a stride above 1",
    "weight_rank": "a weight that is not 4-D",
    "input_rank": "an input that is neither 3-D nor 4-D",
    "dtype_mismatch": "input and weight of different dtypes",
    "device_mismatch": "input and weight on different devices",
    "bias_length": "a bias whose length differs from the output channels",
    "accepted_corner": "a call that looks invalid but that torch accepts",
}

Padding = Union[int, tuple[int, ...], str]


def _ints(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    raise UsageError(name, value, "expected an int or a sequence of ints")


@dataclass(frozen=True)
class InvalidCall:
    """One conv2d call, described by its tensors' shapes, dtypes and devices and its other arguments as given.

    ``why`` is one of :data:`REASONS`. ``weight_dtype`` and ``weight_device``
    default to the input's; the bias has the weight's dtype and device.
    ``seed`` fills the tensors with reproducible values. The attributes
    ``stride``, ``padding_argument``, ``dilation``, ``groups`` and
    ``padding_mode`` are what :meth:`difftest.registry.Implementation.call`
    reads from a case, so a call can be run through any caller.
    """

    why: str
    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    bias_shape: Optional[tuple[int, ...]] = None
    stride: tuple[int, ...] = (1, 1)
    padding: Padding = (0, 0)
    dilation: tuple[int, ...] = (1, 1)
    groups: int = 1
    dtype: str = "float32"
    weight_dtype: Optional[str] = None
    device: str = "cpu"
    weight_device: Optional[str] = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.why not in REASONS:
            raise UsageError("why", self.why, f"expected one of {', '.join(REASONS)}")
        for name in ("input_shape", "weight_shape", "stride", "dilation"):
            object.__setattr__(self, name, _ints(name, getattr(self, name)))
        if self.bias_shape is not None:
            object.__setattr__(self, "bias_shape", _ints("bias_shape", self.bias_shape))
        if not isinstance(self.padding, str):
            object.__setattr__(self, "padding", _ints("padding", self.padding))
        for name in ("dtype", "weight_dtype"):
            value = getattr(self, name)
            if value is not None and value not in DTYPES:
                raise UsageError(name, value, f"expected one of {', '.join(DTYPES)}")
        if any(size < 0 for shape in (self.input_shape, self.weight_shape, self.bias_shape or ())
               for size in shape):
            raise UsageError("shape", (self.input_shape, self.weight_shape, self.bias_shape),
                             "sizes must be 0 or more")

    # What Implementation.call reads from a case --------------------------------

    @property
    def padding_argument(self) -> Padding:
        """The padding as passed to conv2d: a string, or an int where both axes agree."""
        if isinstance(self.padding, str):
            return self.padding
        if len(self.padding) == 2 and self.padding[0] == self.padding[1]:
            return self.padding[0]
        return self.padding

    @property
    def padding_mode(self) -> str:
        return "zeros"

    # Arguments -------------------------------------------------------------------

    def arguments(self) -> Inputs:
        """Return the call's input, weight and bias, filled with values from ``seed``."""
        generator = torch.Generator().manual_seed(self.seed)

        def tensor(shape: tuple[int, ...], dtype: str, device: str) -> torch.Tensor:
            values = torch.randn(shape, generator=generator, dtype=torch.float64)
            return values.to(dtype=getattr(torch, dtype), device=device)

        weight_dtype = self.weight_dtype or self.dtype
        weight_device = self.weight_device or self.device
        input = tensor(self.input_shape, self.dtype, self.device)
        weight = tensor(self.weight_shape, weight_dtype, weight_device)
        bias = None if self.bias_shape is None else tensor(self.bias_shape, weight_dtype, weight_device)
        return Inputs(input, weight, bias)

    def torch_call(self, inputs: Inputs) -> torch.Tensor:
        """Return torch.nn.functional.conv2d on ``inputs`` with this call's arguments; raises where torch does."""
        with quiet_same_padding(), crash_free_backend(self.dtype, self.device):
            return F.conv2d(inputs.input, inputs.weight, inputs.bias, self.stride, self.padding_argument,
                            self.dilation, self.groups)

    # Text and serialisation ----------------------------------------------------

    def describe(self) -> str:
        """Return a short one-line descriptor, safe in file names."""
        def dims(shape: tuple[int, ...]) -> str:
            return "x".join(str(size) for size in shape)

        padding = self.padding if isinstance(self.padding, str) else dims(self.padding).replace("-", "m")
        parts = [f"invalid-{self.why}", f"i{dims(self.input_shape)}", f"w{dims(self.weight_shape)}"]
        if self.bias_shape is not None:
            parts.append(f"b{dims(self.bias_shape)}")
        parts.append(f"s{dims(self.stride)}p{padding}d{dims(self.dilation)}g{self.groups}".replace("-", "m"))
        dtypes = self.dtype if not self.weight_dtype or self.weight_dtype == self.dtype else \
            f"{self.dtype}+{self.weight_dtype}"
        devices = self.device if not self.weight_device or self.weight_device == self.device else \
            f"{self.device}+{self.weight_device}"
        parts.append(f"{dtypes}-{devices.replace(':', '')}")
        return "_".join(parts)

    def __str__(self) -> str:
        return self.describe()

    def as_call(self) -> str:
        """Return the call as conv2d source one can read, one argument per line."""
        weight_dtype = self.weight_dtype or self.dtype
        weight_device = self.weight_device or self.device
        bias = "None" if self.bias_shape is None else f"<{weight_dtype} {self.bias_shape} on {weight_device}>"
        return "\n".join([
            "conv2d(",
            f"    input=<{self.dtype} {self.input_shape} on {self.device}, seed={self.seed}>,",
            f"    weight=<{weight_dtype} {self.weight_shape} on {weight_device}>,",
            f"    bias={bias},",
            f"    stride={self.stride},",
            f"    padding={self.padding_argument!r},",
            f"    dilation={self.dilation},",
            f"    groups={self.groups},",
            f")  # {REASONS[self.why]}",
        ])

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InvalidCall:
        names = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UsageError("invalid_call", unknown[0], "unknown field", f"known fields: {', '.join(sorted(names))}")
        values = {key: tuple(value) if isinstance(value, list) else value for key, value in data.items()}
        return cls(**values)


@dataclass
class InvalidOutcome(Outcome):
    """The result of running one :class:`InvalidCall` through torch and one implementation.

    It is an :class:`~difftest.runner.Outcome` whose ``case`` is the invalid
    call, so campaign summaries read it like any other outcome.
    ``exception`` is the implementation's exception and ``torch_exception``
    torch's, each as ``Type: message``, or None where that side returned.
    """

    torch_exception: Optional[str] = None
    torch_shape: Optional[tuple[int, ...]] = field(default=None, repr=False)

    @property
    def call(self) -> InvalidCall:
        return self.case  # type: ignore[return-value]


def evaluate_invalid(implementation: Implementation, call: InvalidCall, *, caller: Any = None) -> InvalidOutcome:
    """Run ``call`` through torch and through ``implementation`` and judge whether they agree to raise.

    Verdicts: 'pass' when both raise or both return results of the same shape;
    'invalid_input_accepted' when torch raises and the implementation returns;
    'valid_input_rejected' when torch returns and the implementation raises;
    'shape_mismatch' when both return, with different shapes. A caller that
    raises with a ``difftest_verdict`` (a crash or a timeout in a worker
    process) gives that verdict. ``caller`` is ``caller(implementation, call,
    inputs)`` as for :func:`difftest.runner.evaluate`; by default the call
    runs in this process.
    """
    caller = caller or call_in_process
    outcome = InvalidOutcome(implementation.name, call, PASS)  # type: ignore[arg-type]

    torch_output = None
    try:
        torch_output = call.torch_call(call.arguments())
    except Exception as error:  # torch rejecting the call is the expected case, not an error of the run
        outcome.torch_exception = exception_text(error)
    else:
        outcome.torch_shape = tuple(torch_output.shape)

    started = time.perf_counter()
    try:
        output = caller(implementation, call, call.arguments())
    except (Exception, SystemExit) as error:
        verdict = getattr(error, "difftest_verdict", None)
        outcome.exception = exception_text(error)
        if verdict is not None:
            # A crash, a timeout or a broken contract in a worker process.
            outcome.verdict, outcome.detail = verdict, str(error)
        elif outcome.torch_exception is None:
            outcome.verdict = "valid_input_rejected"
            outcome.detail = (f"raised {outcome.exception.splitlines()[-1]} where torch returns a result of shape "
                              f"{outcome.torch_shape}")
        else:
            outcome.detail = f"both raise: torch {_type_name(outcome.torch_exception)}, " \
                             f"implementation {_type_name(outcome.exception)}"
        return outcome
    finally:
        outcome.seconds = time.perf_counter() - started

    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
    if outcome.torch_exception is not None:
        outcome.verdict = "invalid_input_accepted"
        returned = f"a result of shape {shape}" if shape is not None else f"a {type(output).__name__}"
        outcome.detail = f"returned {returned} where torch raises {outcome.torch_exception.splitlines()[-1]}"
    elif shape != outcome.torch_shape:
        outcome.verdict = "shape_mismatch" if shape is not None else "wrong_type"
        outcome.detail = f"returned shape {shape}, torch returns {outcome.torch_shape}" if shape is not None else \
            f"returned {type(output).__name__}, expected torch.Tensor"
    else:
        outcome.detail = f"both return a result of shape {shape}"
    return outcome


def _type_name(text: Optional[str]) -> str:
    return (text or "").split(":", 1)[0]


def invalid_report_fields(outcome: InvalidOutcome) -> dict[str, Any]:
    """Return the report fields of an invalid-call outcome that differ from a value failure's.

    The call is stored under 'invalid_call'; 'case' is None because there is
    no valid ConvCase to rebuild.
    """
    return {
        "case": None,
        "invalid_call": outcome.call.to_dict(),
        "torch_exception": outcome.torch_exception,
        "torch_shape": None if outcome.torch_shape is None else list(outcome.torch_shape),
        "comparison": None,
        "bound": None,
    }


def format_invalid_report(data: dict[str, Any]) -> str:
    """Return the text of an invalid-call report, in the order of difftest.text.format_report."""
    call = InvalidCall.from_dict(data["invalid_call"])
    lines = [f"{data['implementation']['name']}: {data['verdict']}"]
    if data.get("detail"):
        lines.append(f"  {data['detail']}")
    lines.append(data.get("case_call") or call.as_call())
    lines.append(f"dtype {call.dtype}, device {call.device}, invalid because: {REASONS[call.why]}")
    shape = data.get("torch_shape")
    returned = "returns a result" + (f" of shape {tuple(shape)}" if shape is not None else "")
    lines.append(f"torch: {data.get('torch_exception') or returned}")
    lines.append(f"implementation: {data.get('exception') or 'returns a result'}")
    if data.get("reproduce"):
        lines.append(f"Reproduce: {data['reproduce']}")
    return "\n".join(lines)
