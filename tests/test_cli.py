"""The command line: list, exit statuses, one-line usage errors and output that machines read."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from difftest.case import ConvCase
from difftest.cli import main
from difftest.registry import load, registered
from difftest.reports import report_dict, write_report
from difftest.runner import evaluate


def _error_line(capsys):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["fuzz", "--impl", "no_such_module_xyz:conv"],
         "difftest fuzz: error: --impl='no_such_module_xyz:conv' is invalid: module 'no_such_module_xyz' not "
         "found. install the package, add its folder to PYTHONPATH or pass path/to/file.py:FUNCTION"),
        (["fuzz", "--impl", "missing/conv.py:conv"],
         "difftest fuzz: error: --impl='missing/conv.py:conv' is invalid: file missing/conv.py not found. "
         "check the path before the colon"),
        (["fuzz", "--impl", "math:no_such_function"],
         "difftest fuzz: error: --impl='math:no_such_function' is invalid: math has no attribute "
         "'no_such_function'. check the function name after the colon"),
        (["fuzz", "--impl", "math:pi"],
         "difftest fuzz: error: --impl='math:pi' is invalid: pi is a float, not a function. name a function "
         "with the calling convention of torch.nn.functional.conv2d"),
        (["fuzz", "--max-examples", "0"],
         "difftest fuzz: error: argument --max-examples: invalid value '0': expected a positive integer "
         "(see difftest fuzz --help)"),
        (["fuzz", "--max-shrink-timeouts", "0"],
         "difftest fuzz: error: argument --max-shrink-timeouts: invalid value '0': expected a positive integer "
         "(see difftest fuzz --help)"),
        (["fuzz", "--seed", "x"],
         "difftest fuzz: error: argument --seed: invalid value 'x': expected an integer seed "
         "(see difftest fuzz --help)"),
        (["fuzz", "--device", "tpu"],
         "difftest fuzz: error: --device='tpu' is invalid: unknown device. pass cpu, cuda or mps"),
        (["replay", "no/such/report.json"],
         "difftest replay: error: PATH='no/such/report.json' is invalid: not found. pass report files (*.json) "
         "or the folder holding them"),
    ],
)
def test_usage_error_is_one_line(arguments, message, capsys, tmp_path):
    assert main(arguments + (["--report-dir", str(tmp_path)] if arguments[0] == "fuzz" else [])) == 2
    assert _error_line(capsys) == message


def test_unknown_registered_name(capsys):
    assert main(["fuzz", "--impl", "no_such_name"]) == 2
    line = _error_line(capsys)
    assert line.startswith("difftest fuzz: error: --impl='no_such_name' is invalid: no implementation of that "
                           "name is registered. choose from ")
    assert "unfold_transposed" in line


def test_file_in_place_of_report_dir(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["fuzz", "--report-dir", str(blocker / "reports"), "--impl", "loop"]) == 2
    assert _error_line(capsys).startswith(f"difftest fuzz: error: --report-dir='{blocker / 'reports'}' is invalid")


def test_unreadable_report_exit_2(capsys, tmp_path):
    path = tmp_path / "torn.json"
    path.write_text("{\"format\": ")
    assert main(["replay", str(path)]) == 2
    output = capsys.readouterr().out
    assert output.startswith(f"invalid     {path}  invalid report {path}: field '(json)' is not valid JSON")


def test_list_shows_builtins(capsys):
    assert main(["list"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    for name in ("loop", "unfold_transposed", "unfold", "im2col"):
        assert name in names


def test_file_implementation_fuzzed(tmp_path, capsys):
    source = tmp_path / "mine.py"
    source.write_text(
        "import torch.nn.functional as F\n"
        "def conv(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):\n"
        "    return F.conv2d(input, weight, bias, stride, padding, dilation, groups)\n"
        "conv.difftest_supports = {'isolate': False, 'dtypes': {'float64'}}\n")
    status = main(["fuzz", "--impl", f"{source}:conv", "--max-examples", "20", "--report-dir",
                   str(tmp_path / "reports")])
    output = capsys.readouterr().out
    assert status == 0, output
    assert any(line.startswith("conv ") and " pass" in line for line in output.splitlines())


def test_two_implementations_same_name_rejected(tmp_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "conv.py").write_text(
            "import torch.nn.functional as F\n"
            "def conv(input, weight):\n"
            "    return F.conv2d(input, weight)\n")
    first, second = tmp_path / "a" / "conv.py", tmp_path / "b" / "conv.py"
    assert main(["fuzz", "--impl", f"{first}:conv", "--impl", f"{second}:conv", "--report-dir",
                 str(tmp_path / "reports")]) == 2
    assert _error_line(capsys) == (
        f"difftest fuzz: error: --impl='{second}:conv' is invalid: has the name 'conv' of --impl {first}:conv. "
        "give one a name of its own: set {'name': ...} in its difftest_supports dict")


def test_function_without_padding_gets_no_padding(tmp_path, capsys):
    source = tmp_path / "two.py"
    source.write_text(
        "import torch.nn.functional as F\n"
        "def two(input, weight):\n"
        "    return F.conv2d(input, weight)\n"
        # torch's own bfloat16 path flushes subnormals, which the bound rejects.
        "two.difftest_supports = {'isolate': False, 'dtypes': {'float32', 'float64', 'float16'}}\n")
    status = main(["fuzz", "--impl", f"{source}:two", "--max-examples", "40", "--no-invalid", "--report-dir",
                   str(tmp_path / "reports")])
    assert status == 0, capsys.readouterr().out


# Report folders that cannot be written -----------------------------------------------

UNWRITABLE = "/proc/self"


@pytest.mark.skipif(not os.path.isdir(UNWRITABLE), reason="needs Linux's /proc, where no file can be created")
def test_summary_into_proc_one_line(capsys):
    assert main(["summary", UNWRITABLE]) == 2
    assert _error_line(capsys) == (
        "difftest summary: error: DIR='/proc/self' is invalid: saving SUMMARY.md in it failed (No such file or "
        "directory). pass a folder you can write to, or make this one writable")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to a read-only folder")
def test_summary_read_only_folder_one_line(tmp_path, capsys):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        status = main(["summary", str(folder)])
    finally:
        folder.chmod(0o755)
    assert status == 2
    assert _error_line(capsys) == (
        f"difftest summary: error: DIR='{folder}' is invalid: saving SUMMARY.md in it failed (Permission denied). "
        "pass a folder you can write to, or make this one writable")


def test_summary_denied_write_one_line(tmp_path, capsys, monkeypatch):
    def deny(*arguments, **keywords):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("difftest._atomic.tempfile.mkstemp", deny)
    assert main(["summary", str(tmp_path)]) == 2
    assert _error_line(capsys) == (
        f"difftest summary: error: DIR='{tmp_path}' is invalid: saving SUMMARY.md in it failed (Permission denied). "
        "pass a folder you can write to, or make this one writable")
    assert os.listdir(tmp_path) == []


def test_summary_of_file_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["summary", str(blocker)]) == 2
    assert _error_line(capsys) == (
        f"difftest summary: error: DIR='{blocker}' is invalid: is not a folder. pass the report folder of a campaign")


def test_summary_missing_parent_one_line(tmp_path, capsys):
    missing = tmp_path / "no" / "such"
    assert main(["summary", str(missing)]) == 2
    assert _error_line(capsys) == (
        f"difftest summary: error: DIR='{missing}' is invalid: not found. pass the report folder of a campaign")


@pytest.mark.skipif(not os.path.isdir(UNWRITABLE), reason="needs Linux's /proc, where no file can be created")
def test_fuzz_into_proc_one_line(capsys):
    assert main(["fuzz", "--impl", "loop", "--report-dir", UNWRITABLE]) == 2
    assert _error_line(capsys) == (
        "difftest fuzz: error: --report-dir='/proc/self' is invalid: is not writable (No such file or directory). "
        "pass a folder you can write to")


def test_fuzz_missing_parents_created(tmp_path, capsys):
    folder = tmp_path / "a" / "b" / "reports"
    assert main(["fuzz", "--impl", "loop", "--max-examples", "3", "--no-invalid", "--no-replay", "--seed", "0",
                 "--report-dir", str(folder)]) == 0
    assert (folder / "SUMMARY.md").is_file()


# --json output -----------------------------------------------------------------------

PRINTING_IMPLEMENTATION = '''
import os
import torch.nn.functional as F


def conv(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    print("printed by the implementation")
    os.write(1, b"written to descriptor 1 by the implementation\\n")
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups)


conv.difftest_supports = {"dtypes": {"float64"}}
'''

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("isolation", ["--isolate", "--no-isolate"])
def test_fuzz_json_stdout_holds_only_json(isolation, tmp_path):
    source = tmp_path / "printing.py"
    source.write_text(PRINTING_IMPLEMENTATION)
    completed = subprocess.run(
        [sys.executable, "-m", "difftest.cli", "fuzz", "--impl", f"{source}:conv", isolation, "--json",
         "--max-examples", "5", "--seed", "0", "--no-invalid", "--report-dir", str(tmp_path / "reports")],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads(completed.stdout)
    assert [item["implementation"] for item in summary["implementations"]] == ["conv"]
    assert summary["implementations"][0]["verdict"] == "pass"
    assert "printed by the implementation" in completed.stderr
    assert "written to descriptor 1 by the implementation" in completed.stderr


def test_replay_json_stdout_holds_only_json(tmp_path):
    source = tmp_path / "printing.py"
    source.write_text(PRINTING_IMPLEMENTATION)
    implementation = load(f"{source}:conv", isolate=False)
    outcome = evaluate(implementation, ConvCase(dtype="float64"))
    data = report_dict(outcome, implementation)
    data["verdict"] = "mismatch"
    json_path, _ = write_report(str(tmp_path / "reports"), data)
    completed = subprocess.run([sys.executable, "-m", "difftest.cli", "replay", "--json", json_path],
                               cwd=REPOSITORY, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    (result,) = json.loads(completed.stdout)
    assert result["status"] == "fixed"
    assert "written to descriptor 1 by the implementation" in completed.stderr


def test_json_output_restores_stdout(tmp_path, capfd):
    source = tmp_path / "printing.py"
    source.write_text(PRINTING_IMPLEMENTATION)
    assert main(["fuzz", "--impl", f"{source}:conv", "--no-isolate", "--json", "--max-examples", "3", "--seed",
                 "0", "--no-invalid", "--report-dir", str(tmp_path / "reports")]) == 0
    print("after the run")
    captured = capfd.readouterr()
    assert json.loads(captured.out.rsplit("after the run", 1)[0])["failed"] == 0
    assert captured.out.endswith("after the run\n")
    assert "written to descriptor 1 by the implementation" in captured.err


# --timeout -------------------------------------------------------------------------

def test_timeout_without_isolation_rejected(tmp_path, capsys):
    assert main(["fuzz", "--impl", "loop", "--no-isolate", "--timeout", "5", "--report-dir", str(tmp_path)]) == 2
    assert _error_line(capsys) == (
        "difftest fuzz: error: --timeout=5.0 is invalid: --no-isolate runs every implementation in this process, "
        "where a call cannot be stopped. drop --no-isolate to run calls in a worker process that the time limit "
        "applies to, or drop --timeout")


def test_timeout_on_in_process_builtin_warns(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="difftest.cli"):
        assert main(["fuzz", "--impl", "loop", "--timeout", "5", "--max-examples", "2", "--no-invalid",
                     "--no-replay", "--seed", "0", "--report-dir", str(tmp_path)]) == 0
    assert [record.getMessage() for record in caplog.records if record.name == "difftest.cli"] == [
        "--timeout 5 does not apply to implementations run in this process (loop); pass --isolate to time them"]


def test_max_shrink_timeouts_option(tmp_path, capsys):
    # Each timed-out call costs the full --timeout, so one allowed timeout
    # stops the shrinker early, and the summary notes the case may not be minimal.
    assert main(["fuzz", "--impl", "tests.wrong.broken:hang_when_tall", "--timeout", "0.5",
                 "--max-shrink-timeouts", "1", "--max-examples", "50", "--seed", "0", "--no-invalid",
                 "--no-replay", "--report-dir", str(tmp_path), "--json"]) == 1
    (result,) = json.loads(capsys.readouterr().out)["implementations"]
    assert result["verdict"] == "timeout"
    assert "shrinking stopped after" in result["note"]


def test_max_shrink_timeouts_default_matches_fuzz_options():
    from difftest.cli import DEFAULT_SHRINK_TIMEOUTS
    from difftest.fuzz import FuzzOptions

    assert FuzzOptions().max_shrink_timeouts == DEFAULT_SHRINK_TIMEOUTS


# list ------------------------------------------------------------------------------

def test_list_columns_fit_longest_target(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0]
    target_start, supports_start = header.index("target"), header.index("supports")
    assert header[:target_start].split() == ["name"]
    implementations = registered()
    rows = [line for line in lines[2:] if line.split()[0] in implementations]
    assert len(rows) == len(implementations)
    for line in rows:
        name = line[:target_start].strip()
        assert line[target_start:supports_start].strip() == implementations[name].target
        assert line[supports_start - 2:supports_start] == "  "
        assert line[supports_start:].startswith("dtypes=")
    longest = max(len(implementation.target) for implementation in implementations.values())
    assert supports_start - target_start == longest + 2


def test_replay_help_states_exit_statuses(capsys):
    assert main(["replay", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert ("Exit status: 2 when any report is invalid or a folder cannot be written, else 1 when any failure still "
            "reproduces, else 0.") in text
    assert "the other reports still replay" in text


def test_replay_script_path_points_to_report(tmp_path, capsys):
    report = tmp_path / "impl--mismatch--0123456789.json"
    report.write_text("{}")
    script = tmp_path / "impl--mismatch--0123456789.py"
    script.write_text("")
    assert main(["replay", str(script)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"difftest replay: error: PATH='{script}' is invalid: is a reproduction script, not a report. "
        f"pass {report}, or run the script itself with python")
