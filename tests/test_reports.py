"""Reports: content-derived names, whole writes, and rejection of torn or edited files."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest
import torch

from difftest.case import ConvCase
from difftest.errors import ReportError
from difftest.registry import register
from difftest.reports import load_report, report_dict, write_report
from difftest.runner import evaluate
from difftest.script import render_script
from difftest.values import literal_inputs, make_inputs

TESTS = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(TESTS)


def swapped(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Transpose the output's spatial axes when they are equal, a bug tests can rely on."""
    output = torch.nn.functional.conv2d(input, weight, bias, stride, padding, dilation, groups)
    return output.transpose(-1, -2).contiguous()


@pytest.fixture
def failing_report():
    implementation = register("swapped_for_reports", swapped, target=f"{__name__}:swapped")
    case = ConvCase(height=2, width=2)
    outcome = evaluate(implementation, case)
    assert outcome.verdict == "mismatch"
    return report_dict(outcome, implementation)


def test_report_has_stable_keys(failing_report):
    for key in ("format", "version", "status", "implementation", "case", "verdict", "comparison", "bound",
                "accuracy", "versions", "worker", "run_id", "exact"):
        assert key in failing_report
    assert failing_report["implementation"]["target"] == f"{__name__}:swapped"
    assert failing_report["comparison"]["greatest"]["index"] == [0, 0, 0, 1]
    assert failing_report["versions"]["torch"] == torch.__version__


def test_same_failure_gets_same_names(tmp_path, failing_report):
    first = write_report(str(tmp_path), failing_report)
    second = write_report(str(tmp_path), failing_report)
    assert first == second
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(path) for path in first)


def test_different_cases_get_different_names(tmp_path, failing_report):
    other = dict(failing_report, case=ConvCase(height=3, width=3).to_dict())
    assert write_report(str(tmp_path), failing_report)[0] != write_report(str(tmp_path), other)[0]


def test_written_report_loads(tmp_path, failing_report):
    json_path, script_path = write_report(str(tmp_path), failing_report)
    data = load_report(json_path)
    assert data["verdict"] == "mismatch"
    assert data["script"] == os.path.basename(script_path)
    assert os.access(script_path, os.X_OK)


def test_no_temporary_files_left(tmp_path, failing_report):
    write_report(str(tmp_path), failing_report)
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")]


def test_torn_report_rejected_with_file_and_field(tmp_path, failing_report):
    json_path, _ = write_report(str(tmp_path), failing_report)
    text = open(json_path).read()
    with open(json_path, "w") as stream:
        stream.write(text[: len(text) // 2])
    with pytest.raises(ReportError) as error:
        load_report(json_path)
    assert str(error.value).startswith(f"invalid report {json_path}: field '(json)' is not valid JSON")


@pytest.mark.parametrize(
    "edit, field, message",
    [
        (lambda data: data.pop("verdict"), "verdict", "is missing"),
        (lambda data: data.update(format="other"), "format", "is 'other', expected 'difftest-report'"),
        (lambda data: data["case"].update(dtype="float8"), "case", "is invalid: dtype='float8' is invalid"),
        (lambda data: data["implementation"].update(target=""), "implementation.target", "is missing or not a string"),
        (lambda data: data.update(version=99), "version", "is 99, newer than this difftest reads (1)"),
    ],
)
def test_edited_report_rejected(tmp_path, failing_report, edit, field, message):
    json_path, _ = write_report(str(tmp_path), failing_report)
    data = json.load(open(json_path))
    edit(data)
    json.dump(data, open(json_path, "w"))
    with pytest.raises(ReportError) as error:
        load_report(json_path)
    assert error.value.field == field
    assert str(error.value).startswith(f"invalid report {json_path}: field '{field}' {message}")


def test_missing_report_named(tmp_path):
    path = str(tmp_path / "absent.json")
    with pytest.raises(ReportError) as error:
        load_report(path)
    assert str(error.value) == f"invalid report {path}: field '(file)' cannot be read: file not found"


def test_report_error_pickles():
    import pickle

    error = ReportError("a.json", "case", "is invalid")
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error)


@pytest.fixture
def literal_report(failing_report):
    """A failing report with literal inputs, as the reducer writes them."""
    case = ConvCase(height=2, width=2, bias=True)
    implementation = register("swapped_with_bias", swapped, target=f"{__name__}:swapped")
    outcome = evaluate(implementation, case)
    assert outcome.verdict == "mismatch"
    return report_dict(outcome, implementation, inputs=literal_inputs(make_inputs(case)))


@pytest.mark.parametrize(
    "edit, field, message",
    [
        (lambda data: data.update(verdict="wrong_answer"), "verdict",
         "is 'wrong_answer', not a known verdict. use one of pass, mismatch, "),
        (lambda data: data.update(status="closed"), "status", "is 'closed', expected 'open' or 'fixed'"),
        (lambda data: data["implementation"].update(isolate="yes"), "implementation.isolate",
         "is 'yes', expected true or false"),
        (lambda data: data["case"].update(seed="7"), "case.seed", "is '7', expected an int of 0 or more"),
        (lambda data: data["case"].update(bias=1), "case.bias", "is 1, expected true or false"),
        (lambda data: data["case"].update(device="gpu"), "case.device",
         "is 'gpu', expected cpu, cuda or mps, with an optional :INDEX"),
        (lambda data: data["case"].update(groups=2), "case",
         "is not a call torch's conv2d accepts: torch raises RuntimeError: Given groups=2, "),
        (lambda data: data["case"].update(stride=[0, 1]), "case",
         "is not a call torch's conv2d accepts: torch raises RuntimeError: non-positive stride is not supported. "
         "restore the fields edited by hand"),
        (lambda data: data["case"].update(kernel_height=5), "case",
         "is not a call torch's conv2d accepts: torch raises RuntimeError: Calculated padded input size per channel: "
         "(2 x 2). Kernel size: (5 x 1). Kernel size can't be greater than actual input size. "
         "restore the fields edited by hand"),
    ],
)
def test_edited_field_rejected(tmp_path, failing_report, edit, field, message):
    json_path, _ = write_report(str(tmp_path), failing_report)
    data = json.load(open(json_path))
    edit(data)
    json.dump(data, open(json_path, "w"))
    with pytest.raises(ReportError) as error:
        load_report(json_path)
    assert error.value.field == field
    assert str(error.value).startswith(f"invalid report {json_path}: field '{field}' {message}")


@pytest.mark.parametrize(
    "edit, field, message",
    [
        (lambda inputs: inputs.update(input=[[[[1.0]]]]), "inputs.input",
         "has shape (1, 1, 1, 1), but the case needs (1, 1, 2, 2)"),
        (lambda inputs: inputs.update(weight=[[[[1.0, 2.0]]]]), "inputs.weight",
         "has shape (1, 1, 1, 2), but the case needs (1, 1, 1, 1)"),
        (lambda inputs: inputs.update(input=[[[[1.0, 2.0], [3.0]]]]), "inputs.input",
         "is ragged at [0, 0]: its lists have different lengths"),
        (lambda inputs: inputs.update(input=[[[[1.0, "nan"], [3.0, 4.0]]]]), "inputs.input",
         "contains 'nan' at [0, 0, 0, 1], expected finite numbers"),
        (lambda inputs: inputs.update(input=[[[[1.0, True], [3.0, 4.0]]]]), "inputs.input",
         "contains True at [0, 0, 0, 1], expected finite numbers"),
        (lambda inputs: inputs.pop("bias"), "inputs.bias", "is missing: the case needs a list of shape (1,)"),
        (lambda inputs: inputs.update(bias=[1.0, 2.0]), "inputs.bias", "has shape (2,), but the case needs (1,)"),
        (lambda inputs: inputs.update(scale=[1.0]), "inputs.scale",
         "is not a known field: expected input, weight and bias"),
    ],
)
def test_edited_literal_inputs_rejected(tmp_path, literal_report, edit, field, message):
    json_path, _ = write_report(str(tmp_path), literal_report)
    data = json.load(open(json_path))
    edit(data["inputs"])
    json.dump(data, open(json_path, "w"))
    with pytest.raises(ReportError) as error:
        load_report(json_path)
    assert error.value.field == field
    assert str(error.value) == f"invalid report {json_path}: field '{field}' {message}"


def test_literal_report_loads(tmp_path, literal_report):
    json_path, _ = write_report(str(tmp_path), literal_report)
    assert load_report(json_path)["inputs"]["bias"] == literal_report["inputs"]["bias"]


def test_bias_inputs_without_case_bias_rejected(tmp_path, literal_report):
    json_path, _ = write_report(str(tmp_path), literal_report)
    data = json.load(open(json_path))
    data["case"]["bias"] = False
    json.dump(data, open(json_path, "w"))
    with pytest.raises(ReportError) as error:
        load_report(json_path)
    assert str(error.value) == (f"invalid report {json_path}: field 'inputs.bias' is given, but the case has no bias "
                                "(case.bias is false)")


@pytest.mark.parametrize("folder", ["with space", "it's \"quoted\"", "$HOME;echo"])
def test_reproduce_command_quoted(tmp_path, failing_report, folder):
    report_dir = tmp_path / folder
    json_path, script_path = write_report(str(report_dir), failing_report)
    command = load_report(json_path)["reproduce"]
    assert shlex.split(command) == ["python", script_path]

    # Run it through a shell, with 'python' on PATH meaning this interpreter.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "python"
    shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    shim.chmod(0o755)
    environment = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                       PYTHONPATH=os.pathsep.join([TESTS, REPOSITORY]))
    completed = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120, env=environment)
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "swapped_for_reports: mismatch" in completed.stdout


def test_edited_script_exits_2(tmp_path, failing_report):
    data = dict(failing_report, verdict="wrong_answer")
    script = tmp_path / "edited.py"
    script.write_text(render_script(data))
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, REPOSITORY]))
    completed = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                               env=environment)
    assert completed.returncode == 2
    assert completed.stderr.startswith(f"error: invalid report {script}: field 'verdict' is 'wrong_answer', not a "
                                       "known verdict")
    assert "Traceback" not in completed.stderr


def test_script_without_difftest_exits_2(tmp_path, failing_report):
    script = tmp_path / "moved.py"
    script.write_text(render_script(failing_report))
    # -S leaves site-packages off sys.path, so difftest cannot be imported.
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    completed = subprocess.run([sys.executable, "-S", str(script)], capture_output=True, text=True, timeout=120,
                               env=environment, cwd=tmp_path)
    assert completed.returncode == 2
    assert completed.stderr.startswith("error: cannot import difftest (")
    assert "Traceback" not in completed.stderr
