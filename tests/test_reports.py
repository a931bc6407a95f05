"""Reports: content-derived names, whole writes, and rejection of torn or edited files."""

from __future__ import annotations

import json
import os

import pytest
import torch

from difftest.case import ConvCase
from difftest.errors import ReportError
from difftest.registry import register
from difftest.reports import load_report, report_dict, write_report
from difftest.runner import evaluate


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
