"""The command line: list, exit statuses and one-line usage errors."""

from __future__ import annotations

import pytest

from difftest.cli import main


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
