"""A campaign survives implementations that break the contract, and loses nothing it found.

Contract checks on in-process calls, determinism checks, size and memory
limits, reports that stay whole when a run is killed, and one-line errors for
bad input to difftest itself. Implementations that crash, hang or allocate
without bound are never called here; tests/test_isolation.py runs those in
worker processes.
"""

from __future__ import annotations

import glob
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Flaky, FlakyFailure

from difftest import ConvCase, Implementation, Supports, UsageError
from difftest._contract import contract_violation, snapshot
from difftest._memory import estimate_case_bytes
from difftest.cli import main
from difftest.errors import MemoryBudgetError
from difftest.fuzz import FuzzOptions, fuzz_implementation
from difftest.reference import truth
from difftest.registry import load
from difftest.replay import find_reports
from difftest.reports import load_report, report_dict, write_report
from difftest.runner import CaseContext, evaluate
from difftest.values import Inputs, literal_inputs, make_inputs
from strategies import conv_cases
from tests.wrong import broken

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ALL_PADDING_MODES = {"zeros", "reflect", "replicate", "circular"}


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return torch.nn.functional.conv2d(input, weight, bias, stride, padding, dilation, groups)


def mutate_expanded_input(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    # input.add_(1) raises on an expanded tensor. One batch item's view does
    # not, and writing it changes every item, because they share their memory.
    output = conv2d(input, weight, bias, stride, padding, dilation, groups)
    input.select(0, 0).add_(1)
    return output


def write_between_elements(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    # A sliced input uses every other element of its storage. This writes the
    # first unused one, which no element of the input shows.
    output = conv2d(input, weight, bias, stride, padding, dilation, groups)
    input.as_strided((1,), (1,), input.storage_offset() + 1).fill_(7)
    return output


def unsqueeze_input(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    output = conv2d(input, weight, bias, stride, padding, dilation, groups)
    input.unsqueeze_(0)
    return output


_CALLS = {"second_call_mutates": 0, "second_call_raises": 0}


def mutate_on_second_call(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    output = conv2d(input, weight, bias, stride, padding, dilation, groups)
    _CALLS["second_call_mutates"] += 1
    if _CALLS["second_call_mutates"] % 2 == 0:
        input.mul_(2)
    return output


def raise_on_second_call(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    _CALLS["second_call_raises"] += 1
    if _CALLS["second_call_raises"] % 2 == 0:
        raise RuntimeError("out of luck")
    return conv2d(input, weight, bias, stride, padding, dilation, groups)


_SEEN: set[tuple] = set()


def wrong_on_first_sight(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Return a wrong result the first time it sees a case and the right one on every later call."""
    output = conv2d(input, weight, bias, stride, padding, dilation, groups)
    key = (tuple(input.shape), tuple(weight.shape), stride, padding, dilation, groups,
           input.double().sum().item(), weight.double().sum().item())
    if key in _SEEN:
        return output
    _SEEN.add(key)
    return output + 1


def in_process(function, **supports) -> Implementation:
    return Implementation(function.__name__, function, Supports(**supports),
                          target=f"{function.__module__}:{function.__qualname__}", isolate=False)


PLAIN = ConvCase(batch=1, in_channels=2, out_channels=2, height=3, width=3, kernel_height=2, kernel_width=2,
                 dtype="float64")


# Contract checks on in-process calls -------------------------------------------------

def test_signed_zero_counts_as_mutation():
    inputs = Inputs(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 1, 1), None)
    before = snapshot(inputs)
    inputs.input.mul_(-1)
    assert torch.equal(inputs.input, torch.zeros(1, 1, 2, 2))
    assert contract_violation(inputs, before, torch.zeros(1, 1, 2, 2)) == ("mutates_input", "input was modified in place")


def test_nan_rewritten_unchanged_is_not_mutation():
    inputs = Inputs(torch.full((1, 1, 2, 2), math.nan), torch.ones(1, 1, 1, 1), None)
    before = snapshot(inputs)
    inputs.input.copy_(inputs.input.clone())
    assert contract_violation(inputs, before, torch.zeros(1, 1, 2, 2)) is None


def test_expanded_input_mutation_found():
    case = PLAIN.replace(batch=2, input_layout="expanded")
    outcome = evaluate(in_process(mutate_expanded_input), case)
    assert outcome.verdict == "mutates_input"
    assert outcome.detail == "input was modified in place"


def test_write_between_elements_found():
    case = PLAIN.replace(input_layout="sliced")
    outcome = evaluate(in_process(write_between_elements), case)
    assert outcome.verdict == "mutates_input"
    assert outcome.detail == "memory behind input, outside its elements, was modified in place"


def test_in_place_reshape_found():
    outcome = evaluate(in_process(unsqueeze_input), PLAIN)
    assert outcome.verdict == "mutates_input"
    assert outcome.detail == "input's shape, strides or storage were changed in place"


def test_alias_found_in_process():
    implementation = in_process(broken.output_aliases_input, **broken.output_aliases_input.difftest_supports)
    case = PLAIN.replace(kernel_height=1, kernel_width=1)
    outcome = evaluate(implementation, case)
    assert outcome.verdict == "output_aliases_input"
    assert outcome.detail == "the output shares memory with input, and input was modified in place"


def test_mutation_does_not_leak_into_next_implementation():
    case = PLAIN.replace(bias=True)
    context = CaseContext(case)
    fresh = make_inputs(case)
    expected_truth = context.truth.clone()

    first = evaluate(in_process(broken.mutates_input, **broken.mutates_input.difftest_supports), case, context)
    second = evaluate(in_process(conv2d), case, context)

    assert first.verdict == "mutates_input"
    assert second.verdict == "pass"
    assert torch.equal(context.inputs.input, fresh.input)
    assert torch.equal(context.truth, expected_truth)


def test_float64_mutation_leaves_truth_alone():
    case = PLAIN
    context = CaseContext(case)
    mutated = context.inputs.input
    evaluate(in_process(broken.mutates_input, **broken.mutates_input.difftest_supports), case, context)
    assert not torch.equal(mutated, make_inputs(case).input)
    assert torch.equal(context.truth, truth(case, make_inputs(case).float64()))


def test_second_call_mutation_found():
    _CALLS["second_call_mutates"] = 0
    outcome = evaluate(in_process(mutate_on_second_call), PLAIN, check_determinism=True)
    assert outcome.verdict == "mutates_input"
    assert outcome.detail == "on a second call: input was modified in place"


def test_second_call_exception_is_nondeterministic():
    _CALLS["second_call_raises"] = 0
    outcome = evaluate(in_process(raise_on_second_call), PLAIN, check_determinism=True)
    assert outcome.verdict == "nondeterministic"
    assert outcome.detail == ("a first call returned a result, a second call on the same case raised RuntimeError: "
                              "out of luck")


# Determinism ------------------------------------------------------------------------

def random_implementation() -> Implementation:
    return in_process(broken.random_answers, **broken.random_answers.difftest_supports)


def test_evaluate_finds_random_answers():
    # Each evaluation gets two right answers (pass), a wrong first answer
    # (mismatch) or a right then a wrong one (nondeterministic). A quarter of
    # them are the last kind, so 60 miss it with probability 0.75**60.
    verdicts = {evaluate(random_implementation(), PLAIN, check_determinism=True).verdict for _ in range(60)}
    assert "nondeterministic" in verdicts
    assert verdicts <= {"pass", "mismatch", "nondeterministic"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fuzz_reports_random_answers_nondeterministic(seed, tmp_path):
    options = FuzzOptions(max_examples=20, seed=seed, report_dir=str(tmp_path), check_determinism=True,
                          analyse=False, check_invalid=False)
    result = fuzz_implementation(random_implementation(), options)
    assert result.verdict == "nondeterministic"
    assert load_report(result.report)["verdict"] == "nondeterministic"


def test_flaky_failure_is_exception_group():
    # fuzz.py relies on this layout of Hypothesis's errors (checked with 6.170).
    assert issubclass(FlakyFailure, Flaky)
    assert issubclass(FlakyFailure, ExceptionGroup)


def test_flaky_failure_reported_nondeterministic(tmp_path):
    _SEEN.clear()
    options = FuzzOptions(max_examples=20, seed=0, report_dir=str(tmp_path), analyse=False, check_invalid=False)
    result = fuzz_implementation(in_process(wrong_on_first_sight), options)
    assert result.verdict == "nondeterministic"
    assert result.outcome.detail.startswith("failed once and passed on a later call of the same case (mismatch: ")


# Resource limits -------------------------------------------------------------------

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.integers(1, 2000))
def test_max_elements_bounds_every_tensor(data, max_elements):
    case = data.draw(conv_cases(supports=Supports(padding_modes=ALL_PADDING_MODES), max_elements=max_elements))
    assert case.is_valid()
    assert math.prod(case.input_shape) <= max_elements
    assert math.prod(case.weight_shape) <= max_elements
    assert math.prod(case.output_shape) <= max_elements


@settings(max_examples=100, deadline=None)
@given(st.data(), st.sampled_from(["reflect", "circular", "replicate"]))
def test_max_elements_with_same_padding_only(data, mode):
    strategy = conv_cases(supports=Supports(padding_modes=ALL_PADDING_MODES), max_elements=12,
                          padding_forms={"same"}, padding_modes={mode})
    case = data.draw(strategy)
    assert case.is_valid()
    assert max(math.prod(case.input_shape), math.prod(case.weight_shape), math.prod(case.output_shape)) <= 12


@settings(max_examples=50, deadline=None)
@given(conv_cases(max_elements=1))
def test_max_elements_one_gives_single_elements(case):
    assert math.prod(case.input_shape) == 1
    assert math.prod(case.weight_shape) == 1
    assert math.prod(case.output_shape) == 1


@pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
def test_max_elements_zero_rejected():
    with pytest.raises(UsageError) as error:
        conv_cases(max_elements=0).example()
    assert str(error.value) == "max_elements=0 is invalid: expected an int of at least 1"


BIG = ConvCase(batch=2, in_channels=4, out_channels=4, height=64, width=64, kernel_height=3, kernel_width=3)


def test_memory_budget_refuses_case():
    with pytest.raises(MemoryBudgetError) as error:
        CaseContext(BIG, memory_budget=2**20)
    assert str(error.value) == (
        "case n2c4h64w64_o4k3x3_s1x1p0x0d1x1g1_nobias_float32-cpu_integers0 needs an estimated 4.51 MiB for its "
        "inputs, float64 truth and bound, more than the memory budget of 1 MiB. lower --max-elements or raise "
        "--memory-budget")


def test_memory_budget_checked_before_inputs(monkeypatch):
    def fail(case):
        raise AssertionError("inputs were built for a case over the budget")

    monkeypatch.setattr("difftest.runner.make_inputs", fail)
    with pytest.raises(MemoryBudgetError):
        evaluate(in_process(conv2d), BIG, memory_budget=2**20)


def test_estimate_covers_built_tensors():
    context = CaseContext(BIG)
    tensors = [context.inputs.input, context.inputs.weight, context.inputs64.input, context.inputs64.weight,
               context.truth, context.magnitude]
    built = sum(tensor.untyped_storage().nbytes() for tensor in tensors)
    assert estimate_case_bytes(BIG) >= built
    assert estimate_case_bytes(BIG.replace(height=128)) > estimate_case_bytes(BIG)


def test_fuzz_skips_cases_over_budget(tmp_path):
    options = FuzzOptions(max_examples=30, seed=0, report_dir=str(tmp_path), memory_budget=20 * 2**10,
                          analyse=False, check_invalid=False)
    result = fuzz_implementation(in_process(conv2d), options)
    assert result.verdict == "pass"
    assert result.note.endswith("cases over the memory budget skipped")


def test_fuzz_with_every_case_over_budget_raises(tmp_path):
    options = FuzzOptions(max_examples=10, seed=0, report_dir=str(tmp_path), memory_budget=8,
                          analyse=False, check_invalid=False)
    with pytest.raises(MemoryBudgetError):
        fuzz_implementation(in_process(conv2d), options)


RECORDING_IMPLEMENTATION = '''
import torch

def conv(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    output = torch.nn.functional.conv2d(input, weight, bias, stride, padding, dilation, groups)
    with open({log!r}, "a") as log:
        log.write(f"{{input.numel()}} {{weight.numel()}} {{output.numel()}}\\n")
    return output
'''


def test_cli_max_elements_bounds_cases(tmp_path):
    log = tmp_path / "sizes.txt"
    source = tmp_path / "recording.py"
    source.write_text(RECORDING_IMPLEMENTATION.format(log=str(log)))
    status = main(["fuzz", "--impl", f"{source}:conv", "--no-isolate", "--max-elements", "40", "--max-examples",
                   "40", "--seed", "1", "--dtype", "float64", "--report-dir", str(tmp_path / "reports"),
                   "--no-replay", "--no-invalid"])
    counts = [int(value) for line in log.read_text().splitlines() for value in line.split()]
    assert status == 0
    assert len(counts) >= 3 * 40
    assert max(counts) <= 40


def test_cli_memory_budget_too_small(tmp_path, capsys):
    # 0.0001 MiB is 104 bytes, less than the smallest case needs.
    status = main(["fuzz", "--impl", "loop", "--memory-budget", "0.0001", "--max-examples", "5", "--seed", "0",
                   "--report-dir", str(tmp_path), "--no-replay"])
    line = capsys.readouterr().err.splitlines()[0]
    assert status == 2
    assert line.startswith("difftest fuzz: error: case ")
    assert line.endswith("more than the memory budget of 104 bytes. lower --max-elements or raise --memory-budget")


# Nothing lost ----------------------------------------------------------------------

def _write_reports(folder) -> list[str]:
    """Write two real failure reports for implementations that are safe to run in this process."""
    paths = []
    for function in (broken.same_even_kernel_rejected, broken.mutates_input):
        implementation = load(f"tests.wrong.broken:{function.__name__}")
        # evaluate calls in this process unless given an isolated caller.
        outcome = evaluate(implementation, ConvCase(**function.trigger))
        assert outcome.verdict == function.expected_verdict
        paths.append(write_report(str(folder), report_dict(outcome, implementation))[0])
    return paths


def test_torn_report_named_and_others_replay(tmp_path, capsys):
    good = _write_reports(tmp_path)
    torn = tmp_path / "torn.json"
    torn.write_text(open(good[0]).read()[:200])

    status = main(["replay", str(tmp_path)])

    lines = capsys.readouterr().out.splitlines()
    assert status == 2
    assert len(lines) == 3
    statuses = {line.split()[1]: line.split()[0] for line in lines}
    assert statuses == {good[0]: "reproduces", good[1]: "reproduces", str(torn): "invalid"}
    invalid_line = next(line for line in lines if line.startswith("invalid"))
    assert f"invalid report {torn}: field '(json)' is not valid JSON at line " in invalid_line


def test_edited_report_named_and_others_replay(tmp_path, capsys):
    good = _write_reports(tmp_path)
    edited = tmp_path / "edited.json"
    edited.write_text(open(good[1]).read().replace('"verdict": "mutates_input"', '"verdict": 3'))

    status = main(["replay", str(tmp_path)])

    lines = capsys.readouterr().out.splitlines()
    assert status == 2
    assert f"invalid     {edited}  invalid report {edited}: field 'verdict' has type int, expected str" in lines
    assert sum(line.startswith("reproduces") for line in lines) == 2


def swap_spatial_axes(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Transpose the output's spatial axes, wrong wherever the output is square and not symmetric."""
    return conv2d(input, weight, bias, stride, padding, dilation, groups).transpose(-1, -2).contiguous()


SQUARE = ConvCase(height=2, width=2, bias=True, dtype="float64")


def _literal_report(folder) -> str:
    """Write a mismatch report with literal inputs, as the reducer leaves them, and return its path."""
    implementation = in_process(swap_spatial_axes)
    outcome = evaluate(implementation, SQUARE)
    assert outcome.verdict == "mismatch"
    data = report_dict(outcome, implementation, inputs=literal_inputs(make_inputs(SQUARE)))
    return write_report(str(folder), data)[0]


def _edit(path, folder, name, change) -> str:
    """Copy the report at ``path`` into ``folder`` as ``name``, changed by ``change``; return the copy's path."""
    data = json.load(open(path))
    change(data)
    edited = os.path.join(str(folder), name)
    with open(edited, "w") as stream:
        json.dump(data, stream)
    return edited


EDITS = [
    ("verdict", lambda data: data.update(verdict="swapped"),
     "field 'verdict' is 'swapped', not a known verdict. use one of pass, mismatch, "),
    ("status", lambda data: data.update(status="closed"), "field 'status' is 'closed', expected 'open' or 'fixed'"),
    ("module", lambda data: data["implementation"].update(target="no_such_module_xyz:conv"),
     "field 'implementation.target' is 'no_such_module_xyz:conv', which does not load: module 'no_such_module_xyz' "
     "not found. make it importable here (install its package or add its folder to PYTHONPATH) or correct the "
     "target to MODULE:FUNCTION or path/to/file.py:FUNCTION"),
    ("function", lambda data: data["implementation"].update(target="math:pi"),
     "field 'implementation.target' is 'math:pi', which does not load: pi is a float, not a function. "),
    ("groups", lambda data: data["case"].update(groups=2),
     "field 'case' is not a call torch's conv2d accepts: torch raises RuntimeError: Given groups=2, "),
    ("channels", lambda data: data["case"].update(in_channels=3),
     "field 'inputs.input' has shape (1, 1, 2, 2), but the case needs (1, 3, 2, 2)"),
    ("weight", lambda data: data["inputs"].update(weight=[[[[1.0, 2.0]]]]),
     "field 'inputs.weight' has shape (1, 1, 1, 2), but the case needs (1, 1, 1, 1)"),
    ("bias", lambda data: data["inputs"].update(bias=None),
     "field 'inputs.bias' is missing: the case needs a list of shape (1,)"),
    ("padding", lambda data: data["case"].update(padding=[5, 5], padding_mode="reflect"),
     "field 'case' is not a call torch's conv2d accepts: torch raises RuntimeError: Argument #4: Padding size "
     "should be less than the corresponding input dimension"),
]


@pytest.mark.parametrize("name, change, message", EDITS, ids=[edit[0] for edit in EDITS])
def test_hand_edited_report_named_and_others_replay(name, change, message, tmp_path, capsys):
    original = _literal_report(tmp_path)
    good = _write_reports(tmp_path)
    edited = _edit(original, tmp_path, f"edited-{name}.json", change)
    before = open(edited).read()

    status = main(["replay", str(tmp_path)])

    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    invalid = [line for line in lines if line.startswith("invalid")]
    assert status == 2
    assert len(invalid) == 1
    assert invalid[0].startswith(f"invalid     {edited}  invalid report {edited}: {message}")
    assert "--impl" not in invalid[0]
    assert sum(line.startswith("reproduces") for line in lines) == 3, captured.out
    assert captured.err.splitlines() == [
        "difftest replay: error: 1 of 4 reports cannot be replayed (listed as invalid); correct the named fields "
        "or remove those files"]
    assert open(edited).read() == before
    assert {load_report(path)["status"] for path in [original, *good]} == {"open"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_report_for_absent_device_named(tmp_path, capsys):
    edited = _edit(_literal_report(tmp_path), tmp_path, "cuda.json", lambda data: data["case"].update(device="cuda"))
    assert main(["replay", edited]) == 2
    assert capsys.readouterr().out == (
        f"invalid     {edited}  invalid report {edited}: field 'case.device' is 'cuda', which this machine does not "
        "have. replay the report on a machine with that device\n")


def _now_correct(data) -> None:
    data["implementation"]["target"] = f"{__name__}:conv2d"


def test_replay_rewrites_summary(tmp_path, capsys):
    good = _write_reports(tmp_path)
    fixed = _edit(_literal_report(tmp_path), tmp_path, "now_correct.json", _now_correct)
    main(["summary", str(tmp_path)])
    assert "4 reports: 4 open, 0 fixed." in (tmp_path / "SUMMARY.md").read_text()

    assert main(["replay", str(tmp_path)]) == 1

    summary = (tmp_path / "SUMMARY.md").read_text()
    assert "4 reports: 3 open, 1 fixed." in summary
    assert f"| fixed | mismatch | " in summary
    assert load_report(fixed)["status"] == "fixed"
    assert {load_report(path)["status"] for path in good} == {"open"}


def test_replay_leaves_other_summary_alone(tmp_path, capsys):
    original = _literal_report(tmp_path)
    _edit(original, tmp_path, "now_correct.json", _now_correct)
    os.remove(original)
    assert main(["replay", str(tmp_path)]) == 0
    assert not (tmp_path / "SUMMARY.md").exists()

    (tmp_path / "SUMMARY.md").write_text("# Contents\n\n- [Intro](intro.md)\n")
    assert main(["replay", str(tmp_path)]) == 0
    assert (tmp_path / "SUMMARY.md").read_text() == "# Contents\n\n- [Intro](intro.md)\n"


def _deny_writes(monkeypatch) -> None:
    def deny(*arguments, **keywords):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("difftest._atomic.tempfile.mkstemp", deny)


def test_replay_unsaved_status_named(tmp_path, capsys, monkeypatch):
    original = _literal_report(tmp_path)
    fixed = _edit(original, tmp_path, "now_correct.json", _now_correct)
    before = open(fixed).read()
    _deny_writes(monkeypatch)

    status = main(["replay", str(tmp_path)])

    captured = capsys.readouterr()
    assert status == 2
    assert captured.out.splitlines() == [
        f"fixed       {fixed}  pass (status not saved: Permission denied)",
        f"reproduces  {original}  mismatch (status not saved: Permission denied)"]
    assert captured.err.splitlines() == [
        f"difftest replay: error: PATH='{tmp_path}' is invalid: saving now_correct.json in it failed (Permission "
        "denied). pass a folder you can write to, or make this one writable"]
    assert open(fixed).read() == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to a read-only folder")
def test_replay_read_only_folder_named(tmp_path, capsys):
    folder = tmp_path / "read_only"
    folder.mkdir()
    fixed = _edit(_literal_report(folder), folder, "now_correct.json", _now_correct)
    before = open(fixed).read()
    folder.chmod(0o500)
    try:
        status = main(["replay", str(folder)])
    finally:
        folder.chmod(0o755)
    assert status == 2
    assert capsys.readouterr().err.splitlines() == [
        f"difftest replay: error: PATH='{folder}' is invalid: saving now_correct.json in it failed (Permission "
        "denied). pass a folder you can write to, or make this one writable"]
    assert open(fixed).read() == before


def test_unwritable_folder_mid_run_keeps_findings(tmp_path, capsys, monkeypatch, caplog):
    # The folder passes the check at the start; every later write fails, as when a disk fills up mid-run.
    _deny_writes(monkeypatch)

    status = main(["fuzz", "--impl", "im2col", "--impl", "unfold_transposed", "--max-examples", "20", "--seed",
                   "1", "--no-invalid", "--no-replay", "--report-dir", str(tmp_path)])

    captured = capsys.readouterr()
    assert status == 2
    assert captured.out.splitlines()[2].split()[:4] == ["im2col", "20", "0", "pass"]
    (line,) = captured.err.splitlines()
    assert line.startswith(f"difftest fuzz: error: --report-dir='{tmp_path}' is invalid: saving unfold_transposed--")
    assert line.endswith("in it failed (Permission denied). pass a folder you can write to, or make this one "
                         "writable")
    (logged,) = [record.getMessage() for record in caplog.records if record.name == "difftest.reports"]
    assert logged.startswith(f"cannot write the report {tmp_path}{os.sep}unfold_transposed--mismatch--")
    assert json.loads(logged.split("its content follows:\n", 1)[1])["verdict"] == "mismatch"
    assert [name for name in os.listdir(tmp_path) if not name.endswith(".png")] == []


def test_temporary_files_not_replayed(tmp_path):
    good = _write_reports(tmp_path)
    (tmp_path / ".tmp-abc123report.json").write_text("{\"format\": ")
    assert find_reports([str(tmp_path)]) == sorted(good)


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(source, destination):
        raise KeyboardInterrupt

    monkeypatch.setattr("difftest._atomic.os.replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _write_reports(tmp_path)
    assert os.listdir(tmp_path) == []


def test_sigterm_handler_restored_after_main(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    main(["summary", str(tmp_path)])
    assert signal.getsignal(signal.SIGTERM) is before


FAILING = ["mutates_input", "same_even_kernel_rejected", "groups_not_implemented", "output_aliases_input",
           "random_answers"]


def _start_campaign(report_dir) -> subprocess.Popen:
    command = [sys.executable, "-m", "difftest.cli", "fuzz", "--no-isolate", "--no-replay", "--seed", "3",
               "--max-examples", "30", "--check-determinism", "--report-dir", str(report_dir)]
    for name in FAILING:
        command += ["--impl", f"tests.wrong.broken:{name}"]
    return subprocess.Popen(command, cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_first_report(report_dir, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if glob.glob(os.path.join(report_dir, "*.json")):
            return
        time.sleep(0.05)
    raise AssertionError(f"no report appeared; exit status {process.poll()}")


def _check_whole(report_dir) -> list[str]:
    found = find_reports([str(report_dir)])
    for path in found:
        data = load_report(path)
        assert os.path.exists(os.path.join(report_dir, data["script"])), path
    assert not any(os.path.basename(path).startswith(".tmp-") for path in found)
    return found


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stopped_campaign_leaves_whole_reports(signum, tmp_path):
    process = _start_campaign(tmp_path)
    try:
        _wait_for_first_report(str(tmp_path), process)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    found = _check_whole(tmp_path)
    assert process.returncode == 130, stderr[-3000:]
    assert "difftest: interrupted; reports written so far are complete" in stderr
    assert len(found) >= 1
    assert [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")] == []


def test_killed_campaign_leaves_whole_reports(tmp_path):
    process = _start_campaign(tmp_path)
    try:
        _wait_for_first_report(str(tmp_path), process)
        process.kill()
        process.communicate(timeout=120)
    finally:
        process.kill()
    found = _check_whole(tmp_path)
    assert process.returncode == -signal.SIGKILL
    assert len(found) >= 1


# One-line errors for bad input -----------------------------------------------------

BAD_IMPLEMENTATIONS = '''
def one_argument(input):
    return input


class Convolution:
    def __init__(self, input, weight):
        pass


NUMBER = 3
'''


@pytest.fixture
def bad_file(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(BAD_IMPLEMENTATIONS)
    return str(path)


@pytest.mark.parametrize("spec, message", [
    ("{file}:one_argument",
     "--impl='{file}:one_argument' is invalid: one_argument takes 1 positional argument, but an implementation "
     "takes at least 2 (input, weight). give it the signature of torch.nn.functional.conv2d: "
     "(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1)"),
    ("{file}:Convolution",
     "--impl='{file}:Convolution' is invalid: Convolution is a class, not a function. name a function with the "
     "calling convention of torch.nn.functional.conv2d"),
    ("{file}:NUMBER",
     "--impl='{file}:NUMBER' is invalid: NUMBER is an int, not a function. name a function with the calling "
     "convention of torch.nn.functional.conv2d"),
    ("{file}:missing",
     "--impl='{file}:missing' is invalid: {file} has no attribute 'missing'. check the function name after the "
     "colon"),
])
def test_bad_implementation_one_line(spec, message, bad_file, tmp_path, capsys):
    status = main(["fuzz", "--impl", spec.format(file=bad_file), "--report-dir", str(tmp_path / "reports")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.splitlines()[0] == "difftest fuzz: error: " + message.format(file=bad_file)
    assert "Traceback" not in err


@pytest.mark.parametrize("arguments, message", [
    (["--dtype", "float8"],
     "argument --dtype: invalid choice: 'float8' (choose from 'float32', 'float64', 'float16', 'bfloat16') "
     "(see difftest fuzz --help)"),
    (["--isolate", "--no-isolate"],
     "argument --no-isolate: not allowed with argument --isolate (see difftest fuzz --help)"),
    (["--max-elements", "0"],
     "argument --max-elements: invalid value '0': expected a positive integer (see difftest fuzz --help)"),
    (["--memory-budget", "0"],
     "argument --memory-budget: invalid value '0': expected a finite number of MiB above 0 "
     "(see difftest fuzz --help)"),
    (["--memory-budget", "inf"],
     "argument --memory-budget: invalid value 'inf': expected a finite number of MiB above 0 "
     "(see difftest fuzz --help)"),
    (["--memory-budget", "1e-9"],
     "argument --memory-budget: invalid value '1e-9': expected at least one byte (9.54e-07 MiB) "
     "(see difftest fuzz --help)"),
    (["--memory-budget", "lots"],
     "argument --memory-budget: invalid value 'lots': expected a number of MiB (see difftest fuzz --help)"),
    (["--timeout", "0"],
     "argument --timeout: invalid value '0': expected a finite number of seconds above 0 (see difftest fuzz --help)"),
    (["--timeout", "inf"],
     "argument --timeout: invalid value 'inf': expected a finite number of seconds above 0 (see difftest fuzz --help)"),
    (["--timeout", "1e7"],
     "argument --timeout: invalid value '1e7': expected at most 2147483 seconds (about 24 days) "
     "(see difftest fuzz --help)"),
])
def test_bad_option_one_line(arguments, message, tmp_path, capsys):
    status = main(["fuzz", *arguments, "--report-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.splitlines()[0] == "difftest fuzz: error: " + message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_absent_device_one_line(tmp_path, capsys):
    status = main(["fuzz", "--device", "cuda", "--impl", "loop", "--report-dir", str(tmp_path)])
    assert status == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        "difftest fuzz: error: --device='cuda' is invalid: not present on this machine. present: cpu")


def test_report_dir_is_file_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    status = main(["fuzz", "--impl", "loop", "--report-dir", str(blocker)])
    assert status == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        f"difftest fuzz: error: --report-dir='{blocker}' is invalid: is a file, not a folder. "
        "pass a folder you can write to")


def test_report_dir_under_file_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    status = main(["fuzz", "--impl", "loop", "--report-dir", str(blocker / "reports")])
    assert status == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        f"difftest fuzz: error: --report-dir='{blocker / 'reports'}' is invalid: cannot be created because "
        f"{blocker} is a file. pass a folder you can write to")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to a read-only folder")
def test_read_only_report_dir_one_line(tmp_path, capsys):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        status = main(["fuzz", "--impl", "loop", "--report-dir", str(folder)])
    finally:
        folder.chmod(0o755)
    assert status == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        f"difftest fuzz: error: --report-dir='{folder}' is invalid: is not writable (Permission denied). "
        "pass a folder you can write to")


def test_missing_report_path_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.json"
    status = main(["replay", str(missing)])
    assert status == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        f"difftest replay: error: PATH='{missing}' is invalid: not found. pass report files (*.json) or the "
        "folder holding them")


def test_isolated_caller_rejects_huge_timeout():
    from difftest.isolation import isolated_caller

    with pytest.raises(UsageError, match=r"timeout=10000000.0 is invalid: expected seconds above 0 and at most"):
        isolated_caller(timeout=1e7)


EXITS_ON_IMPORT = """
import sys

sys.exit(0)
"""

EXITS_WHEN_CALLED = """
import sys


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    sys.exit(0)
"""


def test_module_exiting_on_import_is_usage_error(tmp_path, capsys):
    module = tmp_path / "exits.py"
    module.write_text(EXITS_ON_IMPORT)
    status = main(["fuzz", "--impl", f"{module}:conv2d", "--report-dir", str(tmp_path / "reports")])
    assert status == 2
    assert capsys.readouterr().err.splitlines() == [
        f"difftest fuzz: error: --impl='{module}:conv2d' is invalid: importing {module} raised SystemExit: 0. "
        "fix the error in that file"]


def test_sys_exit_in_process_is_finding(tmp_path, capsys):
    module = tmp_path / "exits_when_called.py"
    module.write_text(EXITS_WHEN_CALLED)
    status = main(["fuzz", "--impl", f"{module}:conv2d", "--no-isolate", "--max-examples", "5", "--no-invalid",
                   "--report-dir", str(tmp_path / "reports")])
    output = capsys.readouterr().out
    assert status == 1
    assert "FAIL (exception)" in output
    assert "  raised SystemExit: 0" in output.splitlines()


SLOW = """
import time

import torch.nn.functional as F


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    if input.shape[-1] > 2:
        time.sleep(3)
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
"""


def test_timeout_report_replays_under_its_limit(tmp_path, capsys):
    module = tmp_path / "slow.py"
    module.write_text(SLOW)
    reports = tmp_path / "reports"
    status = main(["fuzz", "--impl", f"{module}:conv2d", "--timeout", "1", "--max-examples", "30", "--seed", "0",
                   "--no-invalid", "--report-dir", str(reports)])
    assert status == 1
    (report,) = glob.glob(str(reports / "*.json"))
    data = json.load(open(report))
    assert data["verdict"] == "timeout"
    assert data["timeout"] == 1.0
    capsys.readouterr()

    assert main(["replay", report]) == 1
    assert capsys.readouterr().out.startswith("reproduces")


def test_report_with_bad_timeout_rejected(tmp_path, capsys):
    module = tmp_path / "slow.py"
    module.write_text(SLOW)
    reports = tmp_path / "reports"
    main(["fuzz", "--impl", f"{module}:conv2d", "--timeout", "1", "--max-examples", "30", "--seed", "0",
          "--no-invalid", "--report-dir", str(reports)])
    (report,) = glob.glob(str(reports / "*.json"))
    data = json.load(open(report))
    data["timeout"] = "soon"
    with open(report, "w") as stream:
        json.dump(data, stream)
    capsys.readouterr()
    assert main(["replay", report]) == 2
    assert "field 'timeout' is 'soon', expected seconds above 0" in capsys.readouterr().out


PRINTS_AT_IMPORT = """
print("hello at import")

import torch.nn.functional as F


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
"""


def test_json_survives_print_at_import(tmp_path):
    module = tmp_path / "prints_at_import.py"
    module.write_text(PRINTS_AT_IMPORT)
    completed = subprocess.run([sys.executable, "-m", "difftest.cli", "fuzz", "--impl", f"{module}:conv2d", "--json",
                                "--max-examples", "5", "--no-invalid", "--report-dir", str(tmp_path / "reports")],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["implementations"][0]["verdict"] == "pass"
    assert "hello at import" in completed.stderr


def test_isolated_sys_exit_report_names_system_exit(tmp_path, capsys):
    from difftest.summary import _shown_path

    module = tmp_path / "exits_when_called.py"
    module.write_text(EXITS_WHEN_CALLED)
    reports = tmp_path / "reports"
    assert main(["fuzz", "--impl", f"{module}:conv2d", "--max-examples", "5", "--report-dir", str(reports)]) == 1
    output = capsys.readouterr().out
    [value] = [json.load(open(path)) for path in glob.glob(str(reports / "*--exception--*.json"))]
    assert value["exception"] == "SystemExit: 0"
    [invalid] = glob.glob(str(reports / "*--valid_input_rejected--*.json"))
    assert f"  also on an invalid call: valid_input_rejected, {_shown_path(invalid)}" in output.splitlines()


def test_ignored_interrupt_still_stops_run(monkeypatch, capsys):
    from difftest import cli

    def fuzz_whose_interrupt_was_ignored(arguments):
        # As when the KeyboardInterrupt is raised inside a garbage-collector callback, which Python ignores.
        cli._interrupted.append(signal.SIGINT)
        return 0

    monkeypatch.setattr(cli, "_fuzz", fuzz_whose_interrupt_was_ignored)
    assert main(["fuzz"]) == 130
    assert capsys.readouterr().err.strip() == "difftest: interrupted; reports written so far are complete"
    assert main(["list"]) == 0


def test_interrupt_turned_into_other_error_stops_run(monkeypatch, capsys):
    from difftest import cli

    def fuzz_whose_interrupt_became_an_assertion(arguments):
        # As when the signal lands before Hypothesis's engine starts, and
        # Hypothesis's own handler fails an assertion in its place.
        cli._interrupted.append(signal.SIGTERM)
        raise AssertionError

    monkeypatch.setattr(cli, "_fuzz", fuzz_whose_interrupt_became_an_assertion)
    assert main(["fuzz"]) == 130
    assert capsys.readouterr().err.strip() == "difftest: interrupted; reports written so far are complete"


def test_error_without_interrupt_is_raised(monkeypatch):
    from difftest import cli

    def failing_fuzz(arguments):
        raise AssertionError("a bug in difftest")

    monkeypatch.setattr(cli, "_fuzz", failing_fuzz)
    with pytest.raises(AssertionError, match="a bug in difftest"):
        main(["fuzz"])
