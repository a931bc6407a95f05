"""Each deliberately wrong conv2d is wrong on its trigger case and correct outside its corner.

Values are small nonzero integers in float64, so a correct implementation
agrees with nn.Conv2d exactly. Cases with ``values != 'integers'`` check
rounding against a float64 reference instead. The implementations that crash,
hang or exhaust memory run only in child processes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F

from difftest.case import ConvCase
from difftest.registry import Supports, register, unregister
from tests.wrong import ALL, DIAGNOSES, VERDICTS, broken, by_bug_class, corners, precision

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")

ROOT = Path(__file__).resolve().parent.parent

# Run only in a child process: they kill, block or exhaust the process that calls them.
DANGEROUS = {"segfault", "hang", "unbounded_allocation"}
SAFE = [function for function in ALL if function.bug_class not in DANGEROUS]

# Cases outside each bug's corner, beside its plain case, on which it must agree with torch.
ALSO_CORRECT: list[tuple[str, dict[str, Any]]] = [
    ("padding_one_side", dict(height=4, width=4, stride=(2, 2))),
    ("padding_shifted", dict(height=3, width=3, kernel_height=2, kernel_width=2, padding="same")),
    ("padding_axis_mixed", dict(height=3, width=3, kernel_height=3, kernel_width=3, padding=(1, 1))),
    ("same_padding_wrong_side", dict(height=3, width=3, kernel_height=3, kernel_width=3, padding="same")),
    ("circular_height_zero_padded", dict(height=3, width=3, kernel_height=3, kernel_width=3, padding=(1, 1),
                                         padding_mode="reflect")),
    ("circular_height_zero_padded", dict(height=3, width=3, kernel_height=3, kernel_width=3, padding=(0, 1),
                                         padding_mode="circular")),
    ("stride_axis_mixed", dict(height=5, width=5, stride=(2, 2))),
    ("dilation_axis_mixed", dict(height=5, width=5, kernel_height=2, kernel_width=2, dilation=(2, 2))),
    ("dilation_ignored_when_strided", dict(height=5, width=5, kernel_height=2, kernel_width=2, dilation=(2, 2))),
    ("output_size_ceil", dict(height=5, width=5, stride=(2, 2))),
    ("groups_rotated", dict(in_channels=2, out_channels=2, height=3, width=3)),
    ("depthwise_groups_ignored", dict(in_channels=4, out_channels=4, height=3, width=3, groups=2)),
    ("noncontiguous_read_as_contiguous", dict(in_channels=2, height=3, width=3)),
    ("channels_last_misread", dict(height=3, width=3, input_layout="channels_last")),
    ("channels_last_misread", dict(in_channels=2, height=3, width=3, input_layout="sliced")),
    ("output_transposed_when_square", dict(height=4, width=5, kernel_height=2, kernel_width=2)),
    ("batch_rolled", dict(height=3, width=3, unbatched=True)),
    ("float16_accumulation", dict(in_channels=8, out_channels=2, height=6, width=6, kernel_height=3,
                                  kernel_width=3, dtype="float32")),
    ("bfloat16_accumulation", dict(in_channels=2, height=4, width=4, kernel_height=3, kernel_width=3,
                                   dtype="float32")),
    ("float64_computed_in_float32", dict(in_channels=8, height=4, width=4, kernel_height=3, kernel_width=3)),
    ("odd_reduction_drops_last_term", dict(in_channels=2, height=3, width=3, kernel_height=3, kernel_width=3)),
    ("fft_wraps_around", dict(in_channels=2, out_channels=2, height=6, width=6, kernel_height=2, kernel_width=2,
                              stride=(2, 1), dilation=(1, 2), groups=2, bias=True)),
    ("output_aliases_input", dict(out_channels=2, height=3, width=3)),
]


# Building tensors and the reference -----------------------------------------------


def _integers(shape: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """Return nonzero integers in [-3, 3], so no product vanishes by chance."""
    magnitude = torch.randint(1, 4, shape, generator=generator)
    sign = torch.randint(0, 2, shape, generator=generator) * 2 - 1
    return (magnitude * sign).to(dtype)


def _values(case: ConvCase, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    dtype = getattr(torch, case.dtype)
    if case.values == "integers":
        return _integers(shape, dtype, generator)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)


def _with_layout(tensor: torch.Tensor, layout: str) -> torch.Tensor:
    """Return ``tensor``'s values stored in ``layout``; "expanded" repeats the first item along dim 0."""
    if layout == "contiguous":
        return tensor
    if tensor.dim() == 3:
        return _with_layout(tensor.unsqueeze(0), layout).squeeze(0)
    if layout == "channels_last":
        return tensor.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":
        larger = torch.zeros(*tensor.shape[:2], 2 * tensor.shape[2], 2 * tensor.shape[3], dtype=tensor.dtype)
        larger[..., ::2, ::2] = tensor
        return larger[..., ::2, ::2]
    if layout == "transposed":
        return tensor.transpose(-2, -1).contiguous().transpose(-2, -1)
    if layout == "expanded":
        return tensor[:1].expand_as(tensor)
    raise AssertionError(f"unknown layout {layout}")


def _tensors(case: ConvCase) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    generator = torch.Generator().manual_seed(case.seed)
    input = _with_layout(_values(case, case.input_shape, generator), case.input_layout)
    weight = _with_layout(_values(case, case.weight_shape, generator), case.weight_layout)
    bias = _values(case, (case.out_channels,), generator) if case.bias else None
    return input, weight, bias


def _expected(case: ConvCase, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Return nn.Conv2d's output for the case, in the input's dtype."""
    module = torch.nn.Conv2d(
        case.in_channels, case.out_channels, case.kernel, stride=case.stride, padding=case.padding_argument,
        dilation=case.dilation, groups=case.groups, bias=case.bias, padding_mode=case.padding_mode,
        dtype=input.dtype,
    )
    with torch.no_grad():
        module.weight.copy_(weight)
        if bias is not None:
            module.bias.copy_(bias)
        return module(input)


def _call(function: Callable[..., Any], case: ConvCase, input: torch.Tensor, weight: torch.Tensor,
          bias: torch.Tensor | None) -> torch.Tensor:
    keywords = {} if case.padding_mode == "zeros" else {"padding_mode": case.padding_mode}
    return function(input, weight, bias, case.stride, case.padding_argument, case.dilation, case.groups,
                    **keywords)


def _agrees(function: Callable[..., Any], output: torch.Tensor, expected: torch.Tensor) -> bool:
    """Return whether ``output`` equals ``expected``: exactly, or to 1e-9 for FFT-style (normwise) ones."""
    if output.shape != expected.shape or output.dtype != expected.dtype:
        return False
    if function.difftest_supports.get("error_model") == "normwise":
        return torch.allclose(output, expected, rtol=0, atol=1e-9)
    return torch.equal(output, expected)


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _ids(functions: list[Callable[..., Any]]) -> list[str]:
    return [function.bug_class for function in functions]


# The package's lists and declarations -------------------------------------------


def test_all_is_every_module_list():
    expected = [*corners.IMPLEMENTATIONS, *precision.IMPLEMENTATIONS, *broken.IMPLEMENTATIONS]

    assert ALL == expected


@pytest.mark.parametrize("module", [corners, precision, broken], ids=lambda module: module.__name__)
def test_module_all_names_implementations(module):
    names = [function.__name__ for function in module.IMPLEMENTATIONS]
    extra = {"IMPLEMENTATIONS", "ALLOCATION_CAP_BYTES"}

    assert [name for name in module.__all__ if name not in extra] == names
    for name in module.__all__:
        assert hasattr(module, name), name


def test_bug_classes_are_unique():
    classes = _ids(ALL)

    assert len(classes) == len(set(classes))


def test_by_bug_class_finds_each():
    for function in ALL:
        assert by_bug_class(function.bug_class) is function


def test_by_bug_class_unknown_name():
    with pytest.raises(LookupError, match="no wrong implementation has bug_class 'missing'"):
        by_bug_class("missing")


@pytest.mark.parametrize("function", ALL, ids=_ids(ALL))
def test_declaration_is_valid(function):
    supports = Supports(**function.difftest_supports)
    trigger = ConvCase(**function.trigger)

    assert function.expected_diagnosis is None or function.expected_diagnosis in DIAGNOSES
    assert function.expected_verdict in VERDICTS
    assert trigger.is_valid()
    assert supports.rejects(trigger) is None
    if function.plain is not None:
        plain = ConvCase(**function.plain)
        assert plain.is_valid()
        assert supports.rejects(plain) is None


@pytest.mark.parametrize("function", ALL, ids=_ids(ALL))
def test_registry_accepts_declaration(function):
    name = f"wrong-{function.bug_class}"
    try:
        implementation = register(name, function, **function.difftest_supports)
        assert implementation.supports == Supports(**function.difftest_supports)
    finally:
        unregister(name)


# Wrong on the trigger case --------------------------------------------------------


def _check_mismatch(function, case, input, weight, bias):
    expected = _expected(case, input, weight, bias)
    output = _call(function, case, input, weight, bias)

    assert output.shape == expected.shape
    assert output.dtype == expected.dtype
    if case.values == "integers":
        assert not _agrees(function, output, expected)
        return

    # Rounding bugs: the error against a float64 reference must far exceed
    # the error of torch's own conv2d in the same dtype.
    exact = F.conv2d(input.double(), weight.double(), None if bias is None else bias.double(), case.stride,
                     case.padding_argument, case.dilation, case.groups)
    honest_error = (expected.double() - exact).abs().max().item()
    wrong_error = (output.double() - exact).abs().max().item()
    assert wrong_error > 16 * honest_error + 1e-12, (wrong_error, honest_error)


def _check_shape_mismatch(function, case, input, weight, bias):
    expected = _expected(case, input, weight, bias)
    output = _call(function, case, input, weight, bias)

    assert output.shape != expected.shape


def _check_dtype_mismatch(function, case, input, weight, bias):
    expected = _expected(case, input, weight, bias)
    output = _call(function, case, input, weight, bias)

    assert output.shape == expected.shape
    assert output.dtype != expected.dtype


def _check_exception(function, case, input, weight, bias):
    _expected(case, input, weight, bias)  # torch accepts the case

    with pytest.raises((NotImplementedError, ValueError)):
        _call(function, case, input, weight, bias)


def _check_mutates_input(function, case, input, weight, bias):
    expected = _expected(case, input, weight, bias)
    before = input.clone()
    output = _call(function, case, input, weight, bias)

    assert torch.equal(output, expected)
    assert not torch.equal(input, before)


def _check_output_aliases_input(function, case, input, weight, bias):
    expected = _expected(case, input, weight, bias)
    output = _call(function, case, input, weight, bias)

    assert torch.equal(output, expected)
    assert _shares_memory(output, input)


def _check_nondeterministic(function, case, input, weight, bias):
    expected = _expected(case, input, weight, bias)
    outcomes = {_agrees(function, _call(function, case, input, weight, bias), expected) for _ in range(40)}

    # Each call is correct with probability 1/2, so this fails once in 2**39 runs.
    assert outcomes == {True, False}


CHECKS = {
    "mismatch": _check_mismatch,
    "shape_mismatch": _check_shape_mismatch,
    "dtype_mismatch": _check_dtype_mismatch,
    "exception": _check_exception,
    "not_implemented": _check_exception,
    "mutates_input": _check_mutates_input,
    "output_aliases_input": _check_output_aliases_input,
    "nondeterministic": _check_nondeterministic,
}


@pytest.mark.parametrize("function", SAFE, ids=_ids(SAFE))
def test_trigger_shows_bug(function):
    case = ConvCase(**function.trigger)
    input, weight, bias = _tensors(case)

    CHECKS[function.expected_verdict](function, case, input, weight, bias)


# Correct outside the corner -----------------------------------------------------------


def _check_correct(function, case):
    input, weight, bias = _tensors(case)
    expected = _expected(case, input, weight, bias)
    before = input.clone()
    output = _call(function, case, input, weight, bias)

    assert _agrees(function, output, expected), (output, expected)
    assert torch.equal(input, before)
    assert not _shares_memory(output, input)


WITH_PLAIN = [function for function in SAFE if function.plain is not None]


@pytest.mark.parametrize("function", WITH_PLAIN, ids=_ids(WITH_PLAIN))
def test_plain_case_agrees(function):
    _check_correct(function, ConvCase(**function.plain))


@pytest.mark.parametrize("function", WITH_PLAIN, ids=_ids(WITH_PLAIN))
def test_unbatched_plain_case_agrees(function):
    _check_correct(function, ConvCase(**function.plain, unbatched=True))


@pytest.mark.parametrize("bug_class, case", ALSO_CORRECT, ids=[bug_class for bug_class, _ in ALSO_CORRECT])
def test_correct_outside_corner(bug_class, case):
    function = by_bug_class(bug_class)
    case = ConvCase(**{"dtype": "float64", **case})

    assert Supports(**function.difftest_supports).rejects(case) is None
    _check_correct(function, case)


def test_wrong_everywhere_ones_have_no_plain_case():
    for function in ALL:
        if function.plain is None:
            assert function.expected_verdict in {"mutates_input", "nondeterministic"}, function.bug_class


# Crash, hang and memory exhaustion, in child processes ----------------------------

# The child runs the plain case, reports it, then runs the trigger case, under
# a memory limit when one is given.
CHILD = r"""
import json
import resource
import sys

import torch

from difftest.case import ConvCase
from tests.wrong import by_bug_class

function = by_bug_class(sys.argv[1])


def run(fields):
    case = ConvCase(**fields)
    dtype = getattr(torch, case.dtype)
    input = torch.ones(case.input_shape, dtype=dtype)
    weight = torch.ones(case.weight_shape, dtype=dtype)
    function(input, weight, None, case.stride, case.padding_argument, case.dilation, case.groups)


# A crash must leave no core file behind.
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
run(json.loads(sys.argv[2]))
print("plain ok", flush=True)
limit = int(sys.argv[4])
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
run(json.loads(sys.argv[3]))
print("trigger returned", flush=True)
"""

# Limits for a child: the whole run, and how long a hang must last after the plain case.
CHILD_DEADLINE_SECONDS = 120
HANG_SECONDS = 2
MEMORY_LIMIT_BYTES = 2 * 1024**3


def _start_child(bug_class: str, memory_limit: int = 0) -> tuple[subprocess.Popen, str]:
    """Start a child on the implementation's plain and trigger cases; return it and its first output line."""
    function = by_bug_class(bug_class)
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, bug_class, json.dumps(function.plain), json.dumps(function.trigger),
         str(memory_limit)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # Kill the child if it blocks before its first line, so the test cannot hang.
    guard = threading.Timer(CHILD_DEADLINE_SECONDS, process.kill)
    guard.start()
    try:
        first_line = process.stdout.readline()
    finally:
        guard.cancel()
    if first_line != "plain ok\n":
        process.kill()
        _, error = process.communicate()
        pytest.fail(f"{bug_class} failed on its plain case: {error}")
    return process, first_line


def _finish_child(process: subprocess.Popen) -> tuple[str, str]:
    try:
        return process.communicate(timeout=CHILD_DEADLINE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise


@pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")
def test_segfault_kills_child_only_when_batched():
    process, _ = _start_child("segfault")
    output, _ = _finish_child(process)

    assert process.returncode == -signal.SIGSEGV
    assert "trigger returned" not in output


def test_hang_blocks_child_only_when_tall():
    process, _ = _start_child("hang")
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=HANG_SECONDS)
    finally:
        process.kill()
        process.communicate()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is enforced on Linux")
def test_allocation_hits_memory_limit_only_when_wide():
    process, _ = _start_child("unbounded_allocation", memory_limit=MEMORY_LIMIT_BYTES)
    output, error = _finish_child(process)

    assert process.returncode == 1
    assert "MemoryError" in error
    assert "safety cap" not in error
    assert "trigger returned" not in output
