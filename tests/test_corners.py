"""Every corner of conv2d is searched: wrong corners are found, invalid calls are judged against torch.

The first part runs the default campaign of ``difftest fuzz`` (DEFAULT_MAX_EXAMPLES
examples, seed 0 only so that a failure repeats) on each deliberately wrong
implementation of tests/wrong/corners.py. The rest checks the invalid-call
strategy, the verdicts of difftest.invalid and the reports of an invalid-call
failure.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import hypothesis
import pytest
import torch.nn.functional as F
from hypothesis import Phase, given, settings

from difftest.case import ConvCase
from difftest.cli import DEFAULT_MAX_EXAMPLES, main
from difftest.fuzz import FuzzOptions, fuzz_implementation
from difftest.invalid import REASONS, InvalidCall, evaluate_invalid, format_invalid_report
from difftest.registry import Supports, get, register, unregister
from difftest.replay import replay_path
from difftest.reports import load_report
from difftest.runner import VERDICTS, evaluate
from strategies import invalid_conv_calls
from tests.wrong import corners

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")

ROOT = Path(__file__).resolve().parent.parent


# Wrong corners are found within the default budget ---------------------------------------------


@pytest.mark.parametrize("function", corners.IMPLEMENTATIONS, ids=lambda function: function.bug_class)
def test_corner_bug_found_within_default_budget(function):
    implementation = register(f"corner_{function.bug_class}", function, **function.difftest_supports)
    trigger = evaluate(implementation, ConvCase(**function.trigger))
    options = FuzzOptions(max_examples=DEFAULT_MAX_EXAMPLES, seed=0, write_reports=False, analyse=False,
                          check_invalid=False)
    result = fuzz_implementation(implementation, options)
    unregister(implementation.name)

    assert trigger.verdict == function.expected_verdict
    assert result.failed, f"{function.bug_class} not found in {result.examples} examples"
    shrunk = result.outcome.case
    assert shrunk.batch <= 2
    assert shrunk.in_channels <= 2
    assert shrunk.out_channels <= 2
    assert shrunk.height <= 3
    assert shrunk.width <= 3
    assert shrunk.kernel_height <= 2
    assert shrunk.kernel_width <= 2
    assert shrunk.values == "integers"
    assert shrunk.dtype == "float32"


# The invalid-call strategy -------------------------------------------------------------------------


def _torch_raises(call: InvalidCall) -> bool:
    try:
        call.torch_call(call.arguments())
    except Exception:  # any exception counts as torch rejecting the call
        return True
    return False


@settings(max_examples=400, database=None, deadline=None)
@given(invalid_conv_calls())
def test_torch_rejects_every_mistake_and_accepts_every_corner(call):
    assert _torch_raises(call) == (call.why != "accepted_corner"), call.as_call()


def test_every_reason_is_reached():
    counts = collections.Counter()

    @hypothesis.seed(1)
    @settings(max_examples=1000, database=None, deadline=None, phases=[Phase.generate])
    @given(invalid_conv_calls())
    def draw(call):
        counts[call.why] += 1
        if call.why == "accepted_corner":
            counts["empty batch"] += call.input_shape[0] == 0

    draw()
    reachable = [reason for reason in REASONS if reason != "device_mismatch"]
    assert [reason for reason in reachable if counts[reason] == 0] == []
    assert counts["empty batch"] > 0
    # One call in four only looks invalid.
    assert 150 < counts["accepted_corner"] < 350


def test_invalid_calls_respect_supports():
    supports = Supports(groups=False, stride=False, dilation=False, bias=False, dtypes={"float64"},
                        padding_forms={"valid"})
    excluded = {"groups_not_dividing_channels", "non_positive_stride", "same_padding_with_stride",
                "non_positive_dilation", "bias_length", "negative_padding"}

    @settings(max_examples=300, database=None, deadline=None)
    @given(invalid_conv_calls(supports=supports))
    def check(call):
        assert call.why not in excluded
        assert call.dtype == "float64"
        assert call.groups == 1 or call.why == "groups_not_dividing_channels"
        assert call.bias_shape is None

    check()


def _shrunk(strategy, is_failure):
    """Return the call Hypothesis shrinks to for a test that fails when ``is_failure`` holds."""
    seen = []

    @settings(database=None, max_examples=500, report_multiple_bugs=False)
    @given(strategy)
    def check(call):
        seen.append(call)
        assert not is_failure(call)

    with pytest.raises(AssertionError):
        check()
    return seen[-1]


@pytest.mark.parametrize("reason", [reason for reason in REASONS if reason != "device_mismatch"])
def test_each_reason_shrinks_to_a_plain_call(reason):
    call = _shrunk(invalid_conv_calls(), lambda call: call.why == reason)
    assert call.dtype == "float32"
    assert call.device == "cpu"
    assert call.seed == 0
    assert call.input_shape[0] <= 1
    assert call.groups <= 2
    assert sum(call.weight_shape) <= 6
    assert call.bias_shape in (None, (2,), (0,))


def test_mistake_shrinks_to_smallest_stride():
    call = _shrunk(invalid_conv_calls(), lambda call: call.why == "non_positive_stride")
    assert call == InvalidCall("non_positive_stride", (1, 1, 1, 1), (1, 1, 1, 1), stride=(0, 1))


def test_invalid_call_round_trip():
    call = InvalidCall("negative_padding", (2, 3, 5, 5), (4, 3, 3, 3), bias_shape=(4,), padding=(-1, 0),
                       dtype="float16", weight_dtype="float32", seed=9)
    again = InvalidCall.from_dict(json.loads(call.to_json()))
    assert again == call
    assert call.describe() == "invalid-negative_padding_i2x3x5x5_w4x3x3x3_b4_s1x1pm1x0d1x1g1_float16+float32-cpu"
    assert call.padding_argument == (-1, 0)


def test_invalid_call_rejects_unknown_reason():
    with pytest.raises(Exception, match="why='typo' is invalid"):
        InvalidCall("typo", (1, 1, 2, 2), (1, 1, 1, 1))


# Verdicts ----------------------------------------------------------------------------------------------


def _lenient(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Return an empty tensor wherever torch raises, as an implementation without argument checks might."""
    try:
        return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    except RuntimeError:
        return input.new_zeros(0)


def _clamping(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Accept a stride or dilation of zero or less by clamping it to 1, unlike torch."""
    def clamp(value):
        pair = (value, value) if isinstance(value, int) else tuple(value)
        return tuple(max(1, v) for v in pair)

    return F.conv2d(input, weight, bias, clamp(stride), padding, clamp(dilation), groups)


def _strict(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Reject an empty batch, which torch accepts."""
    if input.shape[0] == 0:
        raise ValueError("empty batch")
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups)


def test_torch_itself_agrees_with_torch():
    implementation = register("invalid_probe_torch", F.conv2d)
    calls = [InvalidCall("non_positive_stride", (1, 1, 4, 4), (1, 1, 3, 3), stride=(0, 1)),
             InvalidCall("accepted_corner", (0, 2, 4, 4), (3, 2, 3, 3))]
    outcomes = [evaluate_invalid(implementation, call) for call in calls]
    unregister(implementation.name)
    assert [outcome.verdict for outcome in outcomes] == ["pass", "pass"]
    assert outcomes[0].detail == "both raise: torch RuntimeError, implementation RuntimeError"
    assert outcomes[1].detail == "both return a result of shape (0, 3, 2, 2)"


def test_accepting_an_invalid_call_is_reported():
    implementation = register("invalid_probe_clamping", _clamping)
    outcome = evaluate_invalid(implementation, InvalidCall("non_positive_stride", (1, 1, 4, 4), (1, 1, 3, 3),
                                                           stride=(0, 1)))
    unregister(implementation.name)
    assert outcome.verdict == "invalid_input_accepted"
    assert outcome.detail == ("returned a result of shape (1, 1, 2, 2) where torch raises "
                              "RuntimeError: non-positive stride is not supported")
    assert outcome.exception is None


def test_rejecting_a_valid_call_is_reported():
    implementation = register("invalid_probe_strict", _strict)
    outcome = evaluate_invalid(implementation, InvalidCall("accepted_corner", (0, 1, 3, 3), (1, 1, 2, 2)))
    unregister(implementation.name)
    assert outcome.verdict == "valid_input_rejected"
    assert outcome.detail == "raised ValueError: empty batch where torch returns a result of shape (0, 1, 2, 2)"


def test_new_verdicts_are_listed():
    assert "invalid_input_accepted" in VERDICTS
    assert "valid_input_rejected" in VERDICTS


# Campaign, report, replay and script -------------------------------------------------------------------


def test_invalid_failure_found_shrunk_and_reported(tmp_path):
    implementation = register("invalid_probe_campaign", _lenient, target=f"{Path(__file__).resolve()}:_lenient")
    options = FuzzOptions(max_examples=30, seed=0, report_dir=str(tmp_path), analyse=False)
    result = fuzz_implementation(implementation, options)
    unregister(implementation.name)

    assert result.verdict == "invalid_input_accepted"
    assert result.invalid_outcome is result.outcome
    call = result.invalid_outcome.call
    assert call.why != "accepted_corner"
    assert call.input_shape == (1, 1, 1, 1)
    assert len(call.weight_shape) == 4
    assert call.weight_shape[0] * call.weight_shape[1] <= 2
    data = load_report(result.invalid_report)
    assert data["case"] is None
    assert InvalidCall.from_dict(data["invalid_call"]) == call
    assert data["torch_exception"].startswith("RuntimeError: ")
    assert format_invalid_report(data).splitlines()[0] == "invalid_probe_campaign: invalid_input_accepted"

    replayed = replay_path(result.invalid_report, update=False)
    assert replayed.status == "reproduces"
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = subprocess.run([sys.executable, result.invalid_script], capture_output=True, text=True, cwd=ROOT,
                            env=environment, timeout=120)
    assert script.returncode == 1, script.stderr
    assert "invalid_input_accepted" in script.stdout


def test_invalid_report_text():
    call = InvalidCall("non_positive_stride", (1, 1, 1, 1), (1, 1, 1, 1), stride=(0, 1))
    data = {"implementation": {"name": "mine"}, "verdict": "invalid_input_accepted",
            "detail": "returned a result", "invalid_call": call.to_dict(), "case_call": None,
            "torch_exception": "RuntimeError: non-positive stride is not supported", "exception": None,
            "reproduce": "python r.py"}
    assert format_invalid_report(data) == "\n".join([
        "mine: invalid_input_accepted",
        "  returned a result",
        call.as_call(),
        "dtype float32, device cpu, invalid because: a stride of zero or less",
        "torch: RuntimeError: non-positive stride is not supported",
        "implementation: returns a result",
        "Reproduce: python r.py",
    ])


def test_cli_no_invalid_skips_the_invalid_search(tmp_path, capsys):
    spec = f"{ROOT / 'tests' / 'test_corners.py'}:_lenient"
    arguments = ["fuzz", "--impl", spec, "--max-examples", "10", "--seed", "0", "--no-isolate"]
    skipped = main([*arguments, "--report-dir", str(tmp_path / "off"), "--no-invalid"])
    checked = main([*arguments, "--report-dir", str(tmp_path / "on")])
    capsys.readouterr()

    assert skipped == 0
    assert checked == 1
    assert list((tmp_path / "off").glob("*.json")) == []
    assert [path.name.split("--")[1] for path in (tmp_path / "on").glob("*.json")] == ["invalid_input_accepted"]


def test_correct_torch_paths_pass_invalid_calls():
    for name in ("torch_mkldnn", "torch_no_mkldnn"):
        options = FuzzOptions(max_examples=1, seed=0, write_reports=False, analyse=False, invalid_examples=150)
        result = fuzz_implementation(get(name), options)
        assert result.invalid_outcome is None, result.invalid_outcome.detail
        assert result.invalid_examples == 150
