"""Diagnosis: each deliberately wrong conv2d is named for its mistake, correct ones never are."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings

import difftest
from difftest import builtins
from difftest._catalogue import CATALOGUE, Probe
from difftest.analysis import analyse
from difftest.case import ConvCase
from difftest.diagnose import DIAGNOSES, describe_mismatches, diagnose, group_findings, refine
from difftest.heatmap import render_heatmap
from difftest.registry import Implementation, Supports, get, register, unregister
from difftest.reports import report_dict
from difftest.runner import CaseContext, Outcome, evaluate
from difftest.text import format_report
from strategies import conv_cases
from tests.wrong import ALL, DIAGNOSES as WRONG_SET_DIAGNOSES, broken, corners

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")

# The wrong implementations that are safe to call in this process.
SAFE = [function for function in ALL if function not in broken.IMPLEMENTATIONS]
DIAGNOSED = [function for function in SAFE if function.expected_diagnosis is not None]
UNDIAGNOSED = [function for function in SAFE
               if function.expected_diagnosis is None and function.expected_verdict in ("mismatch", "shape_mismatch")]

# Correct built-ins checked here; torch_compile is left out because compiling takes tens of seconds.
CORRECT_BUILTINS = [name for name in builtins.CORRECT if name != "torch_compile"]


def _bug_class(function: Callable[..., Any]) -> str:
    return getattr(function, "bug_class", function.__name__)


def _implementation(function: Callable[..., Any]) -> Implementation:
    return register(f"diagnose_{_bug_class(function)}", function, **getattr(function, "difftest_supports", {}))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Run torch on one thread: these tensors are tiny, and a thread pool on a busy machine slows them down."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _forget_registrations():
    before = set(difftest.registered())
    yield
    for name in set(difftest.registered()) - before:
        unregister(name)


def _failing(implementation: Implementation, **case_fields: Any) -> tuple[ConvCase, CaseContext, Outcome]:
    case = ConvCase(**case_fields)
    context = CaseContext(case)
    outcome = evaluate(implementation, case, context)
    assert not outcome.passed, f"{implementation.name} passed on {case.describe()}"
    return case, context, outcome


# The wrong set ---------------------------------------------------------------------------


def test_catalogue_matches_wrong_set_ids():
    assert set(DIAGNOSES) == set(WRONG_SET_DIAGNOSES)


def test_every_diagnosis_has_wrong_implementation():
    covered = {function.expected_diagnosis for function in SAFE}

    assert set(DIAGNOSES) <= covered


@pytest.mark.parametrize("function", DIAGNOSED, ids=_bug_class)
def test_trigger_gets_expected_diagnosis(function):
    implementation = _implementation(function)
    case, context, outcome = _failing(implementation, **function.trigger)

    diagnosis = diagnose(outcome, case, context, implementation)

    assert diagnosis is not None
    assert diagnosis.id == function.expected_diagnosis, diagnosis
    assert diagnosis.summary == diagnosis.explanations[diagnosis.id]
    assert diagnosis.matches[0] == diagnosis.id


@pytest.mark.parametrize("function", DIAGNOSED, ids=_bug_class)
def test_reduced_trigger_keeps_diagnosis(function, tmp_path):
    implementation = _implementation(function)
    case, context, outcome = _failing(implementation, **function.trigger)

    fields = analyse(outcome, implementation, context, str(tmp_path), draw=False)

    assert "analysis_error" not in fields
    assert fields["diagnosis"]["id"] == function.expected_diagnosis, fields["diagnosis"]
    if fields["inputs"] is not None:
        replayed = evaluate(implementation, case, CaseContext(case, literal=fields["inputs"]))
        assert replayed.verdict == outcome.verdict
        assert fields["verdict"] == outcome.verdict


@pytest.mark.parametrize("function", UNDIAGNOSED, ids=_bug_class)
def test_unexplained_mistake_gets_no_diagnosis(function, tmp_path):
    implementation = _implementation(function)
    case, context, outcome = _failing(implementation, **function.trigger)

    diagnosis = diagnose(outcome, case, context, implementation)
    fields = analyse(outcome, implementation, context, str(tmp_path), draw=False)

    assert diagnosis is not None
    assert diagnosis.id is None, diagnosis
    assert diagnosis.matches == []
    assert fields["diagnosis"]["id"] is None


def test_dtype_mismatch_is_not_diagnosed():
    from tests.wrong import precision

    implementation = _implementation(precision.float64_returned_as_float32)
    case, context, outcome = _failing(implementation, **precision.float64_returned_as_float32.trigger)

    assert outcome.verdict == "dtype_mismatch"
    assert diagnose(outcome, case, context, implementation) is None


# Mistakes outside the wrong set, written here ------------------------------------------------------


def kernel_flipped_left_right(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return F.conv2d(input, weight.flip(-1), bias, stride, padding, dilation, groups)


def bias_along_rows(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    output = F.conv2d(input, weight, None, stride, padding, dilation, groups)
    if bias is None:
        return output
    rows = torch.arange(output.shape[-2]) % bias.shape[0]
    return output + bias[rows].reshape(-1, 1)


def channels_reversed(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups).flip(-3)


def circular_width_zero_padded(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                               padding_mode="zeros"):
    """Wrap only the height in circular mode and pad the width with zeros (batched input only)."""
    if padding_mode != "circular":
        return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    pad_h, pad_w = padding if isinstance(padding, tuple) else (padding, padding)
    wrapped = F.pad(input, (0, 0, pad_h, pad_h), mode="circular")
    return F.conv2d(F.pad(wrapped, (pad_w, pad_w, 0, 0)), weight, bias, stride, 0, dilation, groups)


def one_element_off(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    output = F.conv2d(input, weight, bias, stride, padding, dilation, groups).clone()
    output.view(-1)[0] += 1
    return output


def extra_output_channel(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    output = F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    return torch.cat([output, output[:, :1]], dim=1)


LOCAL_CASES = [
    (kernel_flipped_left_right, dict(height=4, width=4, kernel_height=2, kernel_width=3, dtype="float64"),
     "kernel_flipped", "the kernel is flipped left to right"),
    (bias_along_rows, dict(out_channels=2, height=3, width=3, bias=True, dtype="float64"),
     "bias_wrong_axis", "the bias is indexed by output row (modulo out_channels) instead of by output channel"),
    (channels_reversed, dict(out_channels=3, height=3, width=3, dtype="float64"),
     "output_channels_permuted", "the output channels are permuted (channel 0 holds 2, 2 holds 0 of the reference)"),
    (circular_width_zero_padded, dict(height=3, width=3, kernel_height=3, kernel_width=3, padding=(1, 1),
                                      padding_mode="circular", dtype="float64"),
     "circular_wrong_axis", "circular padding wraps only the height; the width is padded with zeros"),
    (corners.stride_ignored, dict(height=7, width=7, stride=(2, 3), dtype="float64"),
     "stride_ignored", "the stride (2, 3) is ignored: the output is computed at stride 1"),
    (one_element_off, dict(height=3, width=3, kernel_height=2, kernel_width=2, dtype="float32"), None, None),
    # Sums past bfloat16's exact range make its bound loose, but one wrong element is no rounding pattern.
    (one_element_off, dict(in_channels=4, height=6, width=6, kernel_height=3, kernel_width=3, dtype="float32"),
     None, None),
    (extra_output_channel, dict(out_channels=2, height=3, width=3, dtype="float64"), None, None),
]


@pytest.mark.parametrize("function, fields, expected, summary", LOCAL_CASES,
                         ids=[f"{function.__name__}-{index}" for index, (function, *_) in enumerate(LOCAL_CASES)])
def test_local_mistake_diagnosis(function, fields, expected, summary):
    supports = {"padding_modes": {"zeros", "circular"}} if "padding_mode" in fields else {}
    implementation = register(f"diagnose_{function.__name__}", function, **supports)
    case, context, outcome = _failing(implementation, **fields)

    diagnosis = refine(diagnose(outcome, case, context, implementation), outcome, implementation)

    assert diagnosis is not None
    assert diagnosis.id == expected, diagnosis
    if summary is not None:
        assert diagnosis.summary == summary


def test_refine_settles_stride_tie():
    implementation = _implementation(corners.stride_ignored)
    case, context, outcome = _failing(implementation, height=2, width=1, stride=(2, 1), dtype="float64")

    tied = diagnose(outcome, case, context, implementation)
    settled = refine(tied, outcome, implementation)

    assert tied.id == "stride_axis_mixed"
    assert "stride_ignored" in tied.matches
    assert settled.id == "stride_ignored"
    assert settled.matches[:2] == ["stride_ignored", "stride_axis_mixed"]


def test_refine_keeps_axis_mixed_when_right():
    implementation = _implementation(corners.stride_axis_mixed)
    case, context, outcome = _failing(implementation, **corners.stride_axis_mixed.trigger)

    settled = refine(diagnose(outcome, case, context, implementation), outcome, implementation)

    assert settled.id == "stride_axis_mixed"


# The known-bad built-in ------------------------------------------------------------------------


def test_unfold_transposed_diagnosed_with_tiny_inputs(tmp_path):
    implementation = get("unfold_transposed")
    case, context, outcome = _failing(implementation, in_channels=2, out_channels=2, height=4, width=5,
                                      kernel_height=2, kernel_width=2, dtype="float64")

    fields = analyse(outcome, implementation, context, str(tmp_path), draw=False)

    assert fields["diagnosis"]["id"] == "spatial_axes_swapped"
    assert fields["diagnosis"]["summary"] == "output equals the reference with H and W swapped"
    inputs = fields["inputs"]
    assert inputs is not None
    nonzero = {name: int(torch.tensor(inputs[name]).count_nonzero()) for name in ("input", "weight")}
    assert 1 <= nonzero["input"] <= 2
    assert 1 <= nonzero["weight"] <= 2


# Correct implementations ------------------------------------------------------------------------------

# These hypotheses presuppose a failure. Each explains a wrong output by what
# is still right (a looser bound, a contiguous copy, one batch item alone), so
# a correct output matches them trivially. diagnose() never runs them there.
PRESUPPOSE_FAILURE = {"low_precision_accumulation", "layout_dependent", "batch_mixed"}


def _hypotheses_matching(outcome, case, context, implementation):
    """Return the ids of the hypotheses that explain ``outcome``'s output, run even though it passed."""
    probe = Probe.from_outcome(outcome, case, context, implementation)
    assert probe is not None
    return [name for name, hypothesis in CATALOGUE
            if name not in PRESUPPOSE_FAILURE and hypothesis(probe) is not None]


def test_passing_outcome_is_not_diagnosed():
    implementation = register("diagnose_torch_conv2d", F.conv2d)
    case = ConvCase(height=4, width=4, kernel_height=2, kernel_width=2)
    context = CaseContext(case)
    outcome = evaluate(implementation, case, context)

    assert outcome.passed
    assert diagnose(outcome, case, context, implementation) is None


@settings(max_examples=15, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_cases(supports=Supports(dtypes={"float32", "float64"}, devices={"cpu"}), allow_long_reductions=False))
def test_torch_conv2d_never_diagnosed(case):
    implementation = register("diagnose_torch_conv2d_property", F.conv2d)
    context = CaseContext(case)
    outcome = evaluate(implementation, case, context)

    assert outcome.passed, outcome.detail
    assert diagnose(outcome, case, context, implementation) is None
    assert _hypotheses_matching(outcome, case, context, implementation) == []


@pytest.mark.parametrize("name", CORRECT_BUILTINS)
def test_correct_builtin_never_diagnosed(name):
    implementation = get(name)
    dtype = sorted(implementation.supports.dtypes)[0]
    checked = 0
    for function in SAFE:
        case = ConvCase(**{**function.trigger, "dtype": dtype})
        if implementation.supports.rejects(case) is not None:
            continue
        context = CaseContext(case)
        outcome = evaluate(implementation, case, context)
        assert outcome.passed, f"{name} on {case.describe()}: {outcome.detail}"
        assert diagnose(outcome, case, context, implementation) is None
        assert _hypotheses_matching(outcome, case, context, implementation) == [], case.describe()
        checked += 1
    assert checked >= 10


def test_fuzzing_correct_implementation_writes_nothing(tmp_path):
    implementation = register("diagnose_torch_conv2d_fuzzed", F.conv2d)

    result = difftest.fuzz_implementation(implementation, difftest.FuzzOptions(
        max_examples=15, seed=3, report_dir=str(tmp_path)))

    assert not result.failed
    assert result.analysis == {}
    assert list(tmp_path.iterdir()) == []


# Where the mismatches sit --------------------------------------------------------------------------


def test_locations_of_border_mismatches():
    implementation = _implementation(corners.circular_height_zero_padded)
    case, _, outcome = _failing(implementation, **corners.circular_height_zero_padded.trigger)

    assert describe_mismatches(outcome, case) == (
        "6 / 9 elements (66.7%) differ; rows 0, 2; columns all 3; only on the border (first or last row or column)")


def test_locations_of_wrong_shape():
    implementation = _implementation(corners.padding_one_side)
    case, _, outcome = _failing(implementation, **corners.padding_one_side.trigger)

    assert describe_mismatches(outcome, case) == (
        "output shape (1, 1, 2, 2), expected (1, 1, 3, 3): 1 row fewer, 1 column fewer")


def test_no_match_reports_locations():
    implementation = register("diagnose_one_element_off", one_element_off)
    case, context, outcome = _failing(implementation, batch=2, out_channels=2, height=4, width=4,
                                      dtype="float64")

    diagnosis = diagnose(outcome, case, context, implementation)

    assert diagnosis.id is None
    assert diagnosis.summary == "no hypothesis in the catalogue explains the output"
    assert diagnosis.locations == ("1 / 64 elements (1.56%) differ; rows 0; columns 0; channels 0; batch items 0; "
                                   "only on the border (first or last row or column)")


# Reports, text and pictures --------------------------------------------------------------------------


def _report(function: Callable[..., Any], tmp_path, reduce: bool = False, **case_fields: Any) -> dict[str, Any]:
    """Return the JSON report of a failing case, analysed in full or only diagnosed."""
    implementation = _implementation(function)
    case, context, outcome = _failing(implementation, **case_fields)
    if reduce:
        fields = analyse(outcome, implementation, context, str(tmp_path), draw=False)
    else:
        fields = {"diagnosis": diagnose(outcome, case, context, implementation).to_dict()}
    return json.loads(json.dumps(report_dict(outcome, implementation, **fields), default=str))


def test_group_findings_merges_one_mistake(tmp_path):
    swapped = [_report(corners.output_transposed_when_square, tmp_path, height=size, width=size, kernel_height=2,
                       kernel_width=2, dtype="float64", seed=seed)
               for size, seed in ((4, 0), (3, 1), (5, 2))]
    missing = _report(corners.bias_missing, tmp_path, **corners.bias_missing.trigger)
    unexplained = [_report(one_element_off, tmp_path, height=3, width=3, dtype="float64", seed=seed)
                   for seed in (0, 1)]

    findings = group_findings(swapped + [missing] + unexplained)

    assert [(f["implementation"], f["diagnosis"], f["count"]) for f in findings] == [
        ("diagnose_output_transposed_when_square", "spatial_axes_swapped", 3),
        ("diagnose_one_element_off", None, 2),
        ("diagnose_bias_missing", "bias_missing", 1),
    ]
    assert "h3w3" in findings[0]["example_case"]
    assert findings[0]["summary"] == "output equals the reference with H and W swapped"
    assert findings[1]["verdicts"] == ["mismatch"]


def test_format_report_prints_diagnosis_and_values(tmp_path):
    data = _report(corners.output_transposed_when_square, tmp_path, reduce=True, height=3, width=3,
                   kernel_height=2, kernel_width=2, dtype="float64")

    text = format_report(data).splitlines()

    assert "Diagnosis: output equals the reference with H and W swapped" in text
    assert any(line.startswith("  Where: 2 / 4 elements (50%) differ") for line in text)
    assert "Output values (actual | expected):" in text
    assert "  [N=0, C=0]" in text
    assert any(line.startswith("Inputs (reduced, every other element is 0): input[") for line in text)


def test_format_report_side_by_side_layout():
    data = {"implementation": {"name": "example"}, "verdict": "mismatch", "case": ConvCase().to_dict(),
            "inputs": {"input": [[[[0.0, 1.0], [0.0, 0.0]]]], "weight": [[[[-1.0]]]], "bias": None},
            "side_by_side": {"actual": [[[[0.0, -1.0], [0.0, 0.0]]]], "expected": [[[[0.0, 0.0], [-1.0, 0.0]]]],
                             "actual_shape": [1, 1, 2, 2], "expected_shape": [1, 1, 2, 2]}}

    lines = format_report(data).splitlines()

    assert "Inputs (reduced, every other element is 0): input[0, 0, 0, 1] = 1, weight[0, 0, 0, 0] = -1" in lines
    start = lines.index("Output values (actual | expected):")
    assert lines[start + 1:start + 4] == ["  [N=0, C=0]", "     0 -1 |  0  0", "     0  0 | -1  0"]


def test_heatmap_written_atomically(tmp_path):
    pytest.importorskip("matplotlib")
    implementation = _implementation(corners.circular_height_zero_padded)
    _, context, outcome = _failing(implementation, **corners.circular_height_zero_padded.trigger)

    name = render_heatmap(outcome, context, str(tmp_path / "report.png"))

    assert name == "report.png"
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [path.name for path in tmp_path.iterdir()] == ["report.png"]


def test_heatmap_skipped_without_matplotlib(tmp_path, monkeypatch, caplog):
    from difftest import heatmap

    implementation = _implementation(corners.bias_missing)
    _, context, outcome = _failing(implementation, **corners.bias_missing.trigger)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    monkeypatch.setattr(heatmap, "_missing_logged", False)

    with caplog.at_level(logging.INFO, logger="difftest.heatmap"):
        first = render_heatmap(outcome, context, str(tmp_path / "a.png"))
        second = render_heatmap(outcome, context, str(tmp_path / "b.png"))

    assert first is None
    assert second is None
    assert list(tmp_path.iterdir()) == []
    assert [record.message for record in caplog.records].count(
        "matplotlib is not installed, so reports get no error heatmap (install difftest[plot] to draw them)") == 1


def test_heatmap_skipped_for_wrong_shape(tmp_path):
    implementation = _implementation(corners.stride_ignored)
    _, context, outcome = _failing(implementation, **corners.stride_ignored.trigger)

    assert render_heatmap(outcome, context, str(tmp_path / "shape.png")) is None


# The campaign end to end -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzzed_known_bad(tmp_path_factory):
    folder = tmp_path_factory.mktemp("diagnosed")
    result = difftest.fuzz_implementation(get("unfold_transposed"), difftest.FuzzOptions(
        max_examples=50, seed=1, report_dir=str(folder)))
    assert result.failed
    return result


def test_fuzz_report_has_diagnosis_and_tiny_inputs(fuzzed_known_bad):
    data = json.loads(open(fuzzed_known_bad.report).read())

    assert data["diagnosis"]["id"] == "spatial_axes_swapped"
    inputs = data["inputs"]
    assert inputs is not None
    elements = sum(torch.tensor(inputs[name]).numel() for name in ("input", "weight"))
    nonzero = sum(int(torch.tensor(inputs[name]).count_nonzero()) for name in ("input", "weight"))
    assert elements <= 256
    assert nonzero <= 4
    assert data["side_by_side"] is not None


def test_fuzz_heatmap_beside_report(fuzzed_known_bad):
    pytest.importorskip("matplotlib")
    data = json.loads(open(fuzzed_known_bad.report).read())

    assert data["heatmap"] == fuzzed_known_bad.report.rsplit("/", 1)[-1].replace(".json", ".png")
    assert open(fuzzed_known_bad.report.replace(".json", ".png"), "rb").read(4) == b"\x89PNG"


def test_fuzz_script_with_literal_inputs_exits_1(fuzzed_known_bad):
    completed = subprocess.run([sys.executable, fuzzed_known_bad.script], capture_output=True, text=True,
                               timeout=120)

    assert completed.returncode == 1, completed.stderr
    assert "Diagnosis: output equals the reference with H and W swapped" in completed.stdout


def test_fuzz_without_analysis_leaves_fields_empty(tmp_path):
    result = difftest.fuzz_implementation(get("unfold_transposed"), difftest.FuzzOptions(
        max_examples=10, seed=1, report_dir=str(tmp_path), analyse=False))
    data = json.loads(open(result.report).read())

    assert data["inputs"] is None
    assert data["diagnosis"] is None
    assert not list(tmp_path.glob("*.png"))


def test_isolated_implementation_analysed_in_worker(tmp_path):
    implementation = difftest.load("tests.wrong.corners:batch_mixed")
    case = ConvCase(**corners.batch_mixed.trigger)
    context = CaseContext(case)
    outcome = evaluate(implementation, case, context)

    fields = analyse(outcome, implementation, context, str(tmp_path), draw=False)

    assert implementation.isolate
    assert fields["diagnosis"]["id"] == "batch_mixed"
    assert fields["inputs"] is not None


def test_diagnosis_rate_script_counts_triggers(capsys):
    # With --seeds 0 the script runs no fuzz campaign, only the trigger cases.
    from benchmarks import diagnosis_rate

    assert diagnosis_rate.main(["--seeds", "0"]) == 0
    output = capsys.readouterr().out
    assert f"trigger cases: {len(DIAGNOSED)} of {len(DIAGNOSED)} named right" in output
    assert "end to end:    0 of 0 campaigns" in output
