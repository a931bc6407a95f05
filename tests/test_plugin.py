"""The pytest plugin, replay of saved reports, profiles, progress, the summary page and entry points.

The plugin runs are real pytest runs in a subprocess (pytester), with
pytest-xdist where a test passes -n, on a small implementation file written
into the test's folder. The faulty implementation is wrong only when
groups > 1, so the 'grouped' region finds it and the 'plain' region cannot.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis.database import DirectoryBasedExampleDatabase

from difftest import _entry_points
from difftest.campaign import SUMMARY_NAME, open_reports, render_summary, write_summary
from difftest.case import ConvCase
from difftest.cli import main
from difftest.errors import UsageError
from difftest.fuzz import FuzzOptions, _hypothesis_settings
from difftest.profiles import PROFILES, example_database, get_profile
from difftest.progress import ProgressReporter, format_duration
from difftest.pytest_plugin import settings_from_config
from difftest.regions import REGIONS, region_strategy
from difftest.registry import Supports, get, load, register, unregister
from difftest.reports import load_report, mark_status, report_dict, write_report
from difftest.runner import evaluate
from strategies import available_devices

IMPLEMENTATIONS = '''
import torch.nn.functional as F


def good_conv(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups)


def grouped_off_by_one(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    output = F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    return output + 1 if groups > 1 else output


good_conv.difftest_supports = {"isolate": False, "dtypes": {"float32"}}
grouped_off_by_one.difftest_supports = {"isolate": False, "dtypes": {"float32"}}
'''

# The same function once its bug is fixed.
FIXED = IMPLEMENTATIONS.replace("output + 1 if groups > 1 else output", "output")

# Implementations that need one of the newer options to pass or to fail.
MORE_IMPLEMENTATIONS = '''
import time

import torch.nn.functional as F


def lenient_conv(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    # Right wherever torch returns, but returns zeros where torch raises.
    try:
        return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    except Exception:
        return input.new_zeros(1)


_previous = []


def second_call_differs(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    # Off by one only when called again on the very same input tensor.
    output = F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    repeated = bool(_previous) and _previous[0] is input
    _previous[:] = [input]
    return output + 1 if repeated else output


def big_inputs_off(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    output = F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    return output + 1 if max(input.numel(), weight.numel()) > 64 else output


def half_conv(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups)


def cuda_conv(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups)


def sleeps_when_wide(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    if input.shape[-1] > 2:
        time.sleep(60)
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups)


lenient_conv.difftest_supports = {"isolate": False, "dtypes": {"float32", "float64"}}
sleeps_when_wide.difftest_supports = {"dtypes": {"float32"}}
second_call_differs.difftest_supports = {"isolate": False, "dtypes": {"float32"}}
big_inputs_off.difftest_supports = {"isolate": False, "dtypes": {"float32"}}
half_conv.difftest_supports = {"isolate": False, "dtypes": {"float16"}}
cuda_conv.difftest_supports = {"isolate": False, "devices": {"cuda"}}
'''

BASE = ["-p", "no:cacheprovider", "--difftest-dtype", "float32"]
# A fixed seed makes a run repeatable but, as with Hypothesis's @seed, turns the example database off.
QUICK = [*BASE, "--difftest-seed", "0"]


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(userconv=IMPLEMENTATIONS, moreconv=MORE_IMPLEMENTATIONS)
    return pytester


def _reports(folder: Path) -> list[dict]:
    return [load_report(str(path)) for path in sorted(folder.glob("*.json"))]


# The plugin in pytest runs -----------------------------------------------------------


def test_plugin_fuzzes_with_xdist(project):
    result = project.runpytest_subprocess(
        *QUICK, "-n", "2", "--difftest-max-examples", "10",
        "--difftest-impl", "userconv.py:good_conv", "--difftest-impl", "userconv.py:grouped_off_by_one",
        "--difftest-impl", "unfold_transposed", "--difftest-region", "plain", "--difftest-region", "grouped")

    result.stdout.fnmatch_lines([
        "*2 workers [[]6 items[]]*",
        "*_ difftest::fuzz[[]grouped_off_by_one-float32-grouped[]] _*",
        "grouped_off_by_one: mismatch",
        "Mismatched elements: * / * (*%)",
        "Report: *grouped_off_by_one--mismatch--*.json",
        "Script: *grouped_off_by_one--mismatch--*.py",
        "difftest summary: *SUMMARY.md",
    ])
    result.assert_outcomes(passed=3, failed=1, xfailed=2)
    reports = _reports(project.path / "reports")
    assert {data["implementation"]["name"] for data in reports} == {"grouped_off_by_one", "unfold_transposed"}
    assert {data["worker"] for data in reports} <= {"gw0", "gw1"}
    assert (project.path / "reports" / SUMMARY_NAME).is_file()


def test_plugin_replays_after_database_deleted(project):
    arguments = [*BASE, "--difftest-max-examples", "15", "--difftest-impl", "userconv.py:grouped_off_by_one"]
    first = project.runpytest_subprocess(*arguments, "--difftest-region", "grouped")
    first.assert_outcomes(failed=1)
    [report] = list((project.path / "reports").glob("*.json"))
    assert any((project.path / ".hypothesis" / "examples").iterdir())
    shutil.rmtree(project.path / ".hypothesis")

    # The plain region cannot find the bug, so only the replay can fail.
    second = project.runpytest_subprocess(*arguments, "--difftest-region", "plain", "-v")
    second.stdout.fnmatch_lines([
        f"*difftest::replay[[]{report.stem}[]] FAILED*",
        "*difftest::fuzz[[]grouped_off_by_one-float32-plain[]] PASSED*",
        "Still fails on replay: mismatch: *",
    ])
    second.assert_outcomes(failed=1, passed=1)
    listed = project.runpytest_subprocess(*arguments, "--difftest-region", "plain", "--difftest-no-replay",
                                          "--co", "-q")
    assert "difftest::replay" not in listed.stdout.str()

    project.makepyfile(userconv=FIXED)
    third = project.runpytest_subprocess(*arguments, "--difftest-region", "plain", "-v")
    third.stdout.fnmatch_lines([f"*difftest::replay[[]{report.stem}[]] PASSED*"])
    third.assert_outcomes(passed=2)
    assert load_report(str(report))["status"] == "fixed"

    fourth = project.runpytest_subprocess(*arguments, "--difftest-region", "plain", "-v")
    assert "difftest::replay" not in fourth.stdout.str()
    fourth.assert_outcomes(passed=1)


def test_plugin_idle_without_implementation(pytester):
    pytester.makepyfile(test_one="def test_one():\n    assert True\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "difftest:" not in result.stdout.str()
    assert "difftest summary" not in result.stdout.str()
    assert not (pytester.path / "reports").exists()


def test_plugin_rejects_bad_option(pytester):
    result = pytester.runpytest("--difftest-impl", "loop", "--difftest-region", "nowhere")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --difftest-region='nowhere' is invalid: expected one of plain, *"])


# A declaration of the wrong type, loaded through --difftest-impl.
BAD_DECLARATION = '''
import torch.nn.functional as F


def string_groups(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups)


string_groups.difftest_supports = {"groups": "no"}
'''

TIMEOUT_RANGE = "expected a number of seconds above 0 and at most 2147483 (about 24 days)"

# Command-line arguments, ini file text, environment and the one line pytest must print.
USAGE_ERRORS = {
    "missing_file": (
        ["--difftest-impl", "nosuch.py:f"], "", {},
        "ERROR: --difftest-impl='nosuch.py:f' is invalid: file nosuch.py not found. check the path before the colon"),
    "bad_declaration": (
        ["--difftest-impl", "badconv.py:string_groups"], "", {},
        "ERROR: --difftest-impl='badconv.py:string_groups': implementation 'string_groups': groups='no' is "
        "invalid: expected a bool, got str. use True or False"),
    "same_name": (
        ["--difftest-impl", "userconv.py:good_conv", "--difftest-impl", "other/userconv.py:good_conv"], "", {},
        "ERROR: --difftest-impl: {path}/userconv.py:good_conv and {path}/other/userconv.py:good_conv are both "
        "named 'good_conv', so their items would share names. Give one a difftest_supports = {{'name': ...}} "
        "declaration"),
    "report_dir_file": (
        ["--difftest-impl", "loop", "--difftest-report-dir", "somefile"], "", {},
        "ERROR: --difftest-report-dir='{path}/somefile' is invalid: is a file, not a folder. pass a folder you can "
        "write to"),
    "report_dir_under_file": (
        ["--difftest-impl", "loop", "--difftest-report-dir", "somefile/reports"], "", {},
        "ERROR: --difftest-report-dir='{path}/somefile/reports' is invalid: cannot be created because "
        "{path}/somefile is a file. pass a folder you can write to"),
    "report_dir_env": (
        ["--difftest-impl", "loop"], "", {"DIFFTEST_REPORT_DIR": "somefile"},
        "ERROR: DIFFTEST_REPORT_DIR='{path}/somefile' is invalid: is a file, not a folder. pass a folder you can "
        "write to"),
    "report_dir_idle": (
        [], "difftest_report_dir = somefile\n", {},
        "ERROR: difftest_report_dir='{path}/somefile' is invalid: is a file, not a folder. pass a folder you can "
        "write to"),
    "timeout_infinite": (
        ["--difftest-impl", "loop", "--difftest-timeout", "inf"], "", {},
        f"ERROR: --difftest-timeout='inf' is invalid: {TIMEOUT_RANGE}"),
    "timeout_overflow": (
        ["--difftest-impl", "loop"], "", {"DIFFTEST_TIMEOUT": "1e7"},
        f"ERROR: DIFFTEST_TIMEOUT='1e7' is invalid: {TIMEOUT_RANGE}"),
    "timeout_nan_ini": (
        ["--difftest-impl", "loop"], "difftest_timeout = nan\n", {},
        f"ERROR: difftest_timeout='nan' is invalid: {TIMEOUT_RANGE}"),
    "timeout_without_isolation": (
        ["--difftest-impl", "loop", "--difftest-timeout", "3", "--difftest-no-isolate"], "", {},
        "ERROR: --difftest-timeout='3' is invalid: --difftest-no-isolate runs every implementation in the pytest "
        "process, where a call cannot be stopped. drop --difftest-no-isolate to run calls in a worker process that "
        "the time limit applies to, or drop --difftest-timeout"),
    "timeout_without_isolation_env": (
        ["--difftest-impl", "loop"], "", {"DIFFTEST_TIMEOUT": "2.5", "DIFFTEST_NO_ISOLATE": "1"},
        "ERROR: DIFFTEST_TIMEOUT='2.5' is invalid: DIFFTEST_NO_ISOLATE runs every implementation in the pytest "
        "process, where a call cannot be stopped. drop DIFFTEST_NO_ISOLATE to run calls in a worker process that "
        "the time limit applies to, or drop DIFFTEST_TIMEOUT"),
    "threads_overflow": (
        ["--difftest-impl", "loop", "--difftest-threads", "2147483648"], "", {},
        "ERROR: --difftest-threads='2147483648' is invalid: expected a positive integer of at most 2147483647"),
    "flag_ini": (
        ["--difftest-impl", "loop"], "difftest_no_replay = maybe\n", {},
        "ERROR: difftest_no_replay is invalid: invalid truth value 'maybe'. use true or false"),
    "max_elements_zero": (
        ["--difftest-impl", "loop", "--difftest-max-elements", "0"], "", {},
        "ERROR: --difftest-max-elements='0' is invalid: expected a positive integer"),
    "max_shrink_timeouts_zero_env": (
        ["--difftest-impl", "loop"], "", {"DIFFTEST_MAX_SHRINK_TIMEOUTS": "0"},
        "ERROR: DIFFTEST_MAX_SHRINK_TIMEOUTS='0' is invalid: expected a positive integer"),
    "memory_budget_negative": (
        ["--difftest-impl", "loop"], "", {"DIFFTEST_MEMORY_BUDGET": "-1"},
        "ERROR: DIFFTEST_MEMORY_BUDGET='-1' is invalid: expected a finite number of MiB of at least one byte"),
    "memory_budget_infinite_ini": (
        ["--difftest-impl", "loop"], "difftest_memory_budget = inf\n", {},
        "ERROR: difftest_memory_budget='inf' is invalid: expected a finite number of MiB of at least one byte"),
    "memory_budget_text": (
        ["--difftest-impl", "loop", "--difftest-memory-budget", "lots"], "", {},
        "ERROR: --difftest-memory-budget='lots' is invalid: expected a finite number of MiB of at least one byte"),
    "no_invalid_env": (
        ["--difftest-impl", "loop"], "", {"DIFFTEST_NO_INVALID": "maybe"},
        "ERROR: DIFFTEST_NO_INVALID='maybe' is invalid: expected 1 or 0"),
    "check_determinism_ini": (
        ["--difftest-impl", "loop"], "difftest_check_determinism = maybe\n", {},
        "ERROR: difftest_check_determinism is invalid: invalid truth value 'maybe'. use true or false"),
    "dtype_outside_one": (
        ["--difftest-impl", "loop", "--difftest-dtype", "float16"], "", {},
        "ERROR: --difftest-dtype='float16' is invalid: loop supports dtypes float32, float64 only, not float16. "
        "pick --difftest-dtype from float32, float64"),
    "dtype_outside_all": (
        ["--difftest-impl", "loop", "--difftest-impl", "moreconv.py:lenient_conv"], "",
        {"DIFFTEST_DTYPE": "float16,bfloat16"},
        "ERROR: DIFFTEST_DTYPE='float16, bfloat16' is invalid: it leaves no implementation to fuzz, because loop "
        "supports dtypes float32, float64 only, not float16, bfloat16, and lenient_conv supports dtypes float32, "
        "float64 only, not float16, bfloat16. pick DIFFTEST_DTYPE from float32, float64"),
    "device_missing": (
        ["--difftest-impl", "moreconv.py:cuda_conv"], "", {},
        "ERROR: --difftest-impl='moreconv.py:cuda_conv' is invalid: cuda_conv supports devices cuda only, but this "
        "machine has only cpu. run on a machine with cuda"),
    "spec_twice": (
        ["--difftest-impl", "loop", "--difftest-impl", "loop"], "", {},
        "ERROR: --difftest-impl='loop' is invalid: given more than once. pass each implementation once"),
    "spec_twice_env": (
        [], "", {"DIFFTEST_IMPL": "userconv.py:good_conv,userconv.py:good_conv"},
        "ERROR: DIFFTEST_IMPL='userconv.py:good_conv' is invalid: given more than once. pass each implementation "
        "once"),
}

# Cases whose message assumes a machine without CUDA.
NEEDS_NO_CUDA = ("device_missing",)


# Every case runs under xdist, where the controller must reject the value before workers start.
# A few run serially as well.
SERIAL = ("missing_file", "bad_declaration", "report_dir_file", "flag_ini", "dtype_outside_one", "spec_twice")


@pytest.mark.parametrize("workers, name", [
    *((["-n", "2"], name) for name in USAGE_ERRORS),
    *(([], name) for name in SERIAL),
], ids=[*(f"xdist-{name}" for name in USAGE_ERRORS), *(f"serial-{name}" for name in SERIAL)])
def test_plugin_usage_error_one_line(project, monkeypatch, workers, name):
    arguments, ini, environment, message = USAGE_ERRORS[name]
    if name in NEEDS_NO_CUDA and "cuda" in available_devices():
        pytest.skip("this machine has CUDA, so an implementation for CUDA only runs here")
    project.makepyfile(badconv=BAD_DECLARATION)
    (project.path / "other").mkdir()
    (project.path / "other" / "userconv.py").write_text(IMPLEMENTATIONS)
    (project.path / "somefile").write_text("")
    if ini:
        project.makeini("[pytest]\n" + ini)
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)

    result = project.runpytest_subprocess("-p", "no:cacheprovider", *workers, *arguments)

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert [line for line in result.errlines if line] == [message.format(path=project.path)]
    output = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in output
    assert "INTERNALERROR" not in output
    # The controller rejects the value before pytest-xdist starts a worker.
    assert "workers" not in output
    assert not (project.path / "reports").exists()


def test_plugin_no_invalid_option(project):
    arguments = ["-p", "no:cacheprovider", "--difftest-seed", "0", "--difftest-region", "plain",
                 "--difftest-max-examples", "10", "--difftest-impl", "moreconv.py:lenient_conv"]
    searched = project.runpytest_subprocess(*arguments)
    searched.assert_outcomes(failed=2)
    # Count whole lines: pytest shows the full message again in its short summary
    # when it believes it runs under CI, and truncates it otherwise.
    assert searched.stdout.lines.count("lenient_conv: invalid_input_accepted") == 2

    skipped = project.runpytest_subprocess(*arguments, "-n", "2", "--difftest-no-replay", "--difftest-no-invalid")
    skipped.assert_outcomes(passed=2)


def test_plugin_max_elements_option(project):
    arguments = [*QUICK, "--difftest-region", "plain", "--difftest-max-examples", "20", "--difftest-no-invalid",
                 "--difftest-no-replay", "--difftest-impl", "moreconv.py:big_inputs_off"]
    unbounded = project.runpytest_subprocess(*arguments)
    unbounded.assert_outcomes(failed=1)
    unbounded.stdout.fnmatch_lines(["big_inputs_off: mismatch"])

    bounded = project.runpytest_subprocess(*arguments, "--difftest-max-elements", "64")
    bounded.assert_outcomes(passed=1)


def test_plugin_check_determinism_option(project):
    arguments = [*QUICK, "--difftest-region", "plain", "--difftest-max-examples", "10", "--difftest-no-invalid",
                 "--difftest-impl", "moreconv.py:second_call_differs"]
    once = project.runpytest_subprocess(*arguments)
    once.assert_outcomes(passed=1)

    twice = project.runpytest_subprocess(*arguments, "--difftest-check-determinism")
    twice.assert_outcomes(failed=1)
    twice.stdout.fnmatch_lines(["second_call_differs: nondeterministic"])


def test_plugin_max_shrink_timeouts_option(project):
    result = project.runpytest_subprocess(*QUICK, "--difftest-region", "plain", "--difftest-max-examples", "30",
                                          "--difftest-no-invalid", "--difftest-no-replay", "--difftest-timeout",
                                          "0.5", "--difftest-max-shrink-timeouts", "1",
                                          "--difftest-impl", "moreconv.py:sleeps_when_wide")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["sleeps_when_wide: timeout",
                                 "Note: shrinking stopped after 1 call timed out, so the case may not be minimal"])


def test_plugin_memory_budget_too_small(project):
    result = project.runpytest_subprocess(*QUICK, "--difftest-region", "plain", "--difftest-max-examples", "5",
                                          "--difftest-impl", "userconv.py:good_conv",
                                          "--difftest-memory-budget", "0.001")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "difftest: too many cases exceed the memory budget. The first, *, needs an estimated * bytes, more than the "
        "budget of 1048 bytes. Lower --difftest-max-elements or raise --difftest-memory-budget"])
    assert "Traceback" not in result.stdout.str()


def test_new_option_precedence(pytester, monkeypatch):
    pytester.makeini("[pytest]\ndifftest_max_elements = 100\ndifftest_memory_budget = 2\n"
                     "difftest_check_determinism = true\ndifftest_max_shrink_timeouts = 3\n")
    monkeypatch.setenv("DIFFTEST_NO_INVALID", "1")
    monkeypatch.setenv("DIFFTEST_MAX_ELEMENTS", "50")
    settings = settings_from_config(pytester.parseconfigure("--difftest-memory-budget", "0.5"))
    assert settings.max_elements == 50
    assert settings.max_shrink_timeouts == 3
    assert settings.memory_budget == 2**19
    assert settings.check_invalid is False
    assert settings.check_determinism is True

    monkeypatch.setenv("DIFFTEST_CHECK_DETERMINISM", "0")
    monkeypatch.delenv("DIFFTEST_NO_INVALID")
    settings = settings_from_config(pytester.parseconfigure())
    assert settings.memory_budget == 2 * 2**20
    assert settings.check_invalid is True
    assert settings.check_determinism is False


def test_plugin_notes_skipped_dtype(project):
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--co", "-q", "--difftest-dtype", "float16",
                                          "--difftest-region", "plain", "--difftest-impl", "loop",
                                          "--difftest-impl", "moreconv.py:half_conv")
    assert result.ret == pytest.ExitCode.OK
    assert "difftest: no search items for loop (supports dtypes float32, float64 only, not float16)" in (
        result.stdout.lines)
    assert "difftest::fuzz[half_conv-float16-plain]" in result.stdout.lines
    assert not any("loop" in line for line in result.stdout.lines if line.startswith("difftest::"))


def test_plugin_notes_missing_device(project):
    if "cuda" in available_devices():
        pytest.skip("this machine has CUDA, so an implementation for CUDA only runs here")
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--difftest-seed", "0",
                                          "--difftest-region", "plain", "--difftest-max-examples", "2",
                                          "--difftest-impl", "moreconv.py:cuda_conv",
                                          "--difftest-impl", "userconv.py:good_conv")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "difftest: no search items for cuda_conv (supports devices cuda only, but this machine has only cpu)"])
    assert "cuda_conv-" not in result.stdout.str()


def test_plugin_creates_report_dir_parents(project):
    result = project.runpytest_subprocess(*QUICK, "-n", "2", "--difftest-impl", "userconv.py:good_conv",
                                          "--difftest-region", "plain", "--difftest-max-examples", "2",
                                          "--difftest-report-dir", "new/deeper/reports")
    result.assert_outcomes(passed=1)
    assert (project.path / "new" / "deeper" / "reports" / SUMMARY_NAME).is_file()


def test_plugin_rejects_unwritable_report_dir(project):
    locked = project.path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        try:
            (locked / "probe").write_text("")
        except PermissionError:
            pass
        else:
            pytest.skip("this user can write into a folder of mode 500 (root can), so nothing to reject")
        result = project.runpytest_subprocess(*BASE, "-n", "2", "--difftest-impl", "userconv.py:good_conv",
                                              "--difftest-report-dir", "locked")
    finally:
        locked.chmod(0o700)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert [line for line in result.errlines if line] == [
        f"ERROR: --difftest-report-dir='{locked}' is invalid: is not writable (Permission denied). pass a folder "
        "you can write to"]


# A conftest that makes every write into the report folder fail, as a full disk would mid-run.
FULL_DISK = '''
import sys

import difftest.campaign
import difftest.fuzz
from difftest.errors import WriteError


def _fail(folder, *args, **kwargs):
    raise WriteError(f"{folder}/report.json", "No space left on device")


# The package exports the function fuzz under the module's name, so the module comes from sys.modules.
sys.modules["difftest.fuzz"].write_report = _fail
difftest.campaign.write_summary = _fail
'''


def test_plugin_write_error_one_line(project):
    project.makeconftest(FULL_DISK)
    result = project.runpytest_subprocess(*QUICK, "--difftest-impl", "userconv.py:grouped_off_by_one",
                                          "--difftest-region", "grouped")
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert f"difftest: cannot write {project.path}/reports/report.json: No space left on device" in output
    assert f"difftest summary: not written: cannot write {project.path}/reports/report.json" in output
    assert "Traceback" not in output
    assert "INTERNALERROR" not in output


def test_option_precedence(pytester, monkeypatch):
    pytester.makeini("[pytest]\ndifftest_max_examples = 7\ndifftest_seed = 3\ndifftest_profile = difftest-ci\n"
                     "difftest_region =\n    plain\n    grouped\n")
    monkeypatch.setenv("DIFFTEST_MAX_EXAMPLES", "9")
    monkeypatch.setenv("DIFFTEST_DTYPE", "float32,float64")
    config = pytester.parseconfigure("--difftest-max-examples", "11")
    settings = settings_from_config(config)
    assert settings.max_examples == 11
    assert settings.seed == 3
    assert settings.profile == "difftest-ci"
    assert settings.regions == ["plain", "grouped"]
    assert settings.dtypes == ["float32", "float64"]
    assert settings.report_dir == str(pytester.path / "reports")

    monkeypatch.delenv("DIFFTEST_MAX_EXAMPLES")
    assert settings_from_config(pytester.parseconfigure()).max_examples == 7


def test_difftest_check_fixture(pytester):
    pytester.makepyfile(userconv=IMPLEMENTATIONS, test_mine='''
        from hypothesis import given, settings
        from strategies import conv_cases

        from userconv import good_conv, grouped_off_by_one

        @settings(max_examples=15, database=None, deadline=None)
        @given(case=conv_cases(dtypes={"float32"}, allow_long_reductions=False))
        def test_good(difftest_check, case):
            difftest_check(good_conv, case)

        @settings(max_examples=30, deadline=None, derandomize=True)
        @given(case=conv_cases(dtypes={"float32"}, allow_long_reductions=False))
        def test_faulty(difftest_check, case):
            difftest_check(grouped_off_by_one, case)
    ''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*grouped_off_by_one: mismatch*", "*Report: *grouped_off_by_one--mismatch--*"])
    # One report for the shrunk failure, none for the steps of shrinking.
    assert len(list((pytester.path / "reports").glob("*.json"))) == 1


# Replay through the command line ---------------------------------------------------


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "userconv.py").write_text(IMPLEMENTATIONS)
    yield tmp_path
    for name in ("good_conv", "grouped_off_by_one"):
        unregister(name)


def test_cli_replays_after_database_deleted(in_tmp, capsys):
    spec = "userconv.py:grouped_off_by_one"
    assert main(["fuzz", "--impl", spec, "--max-examples", "30", "--report-dir", "reports"]) == 1
    [report] = list((in_tmp / "reports").glob("*.json"))
    assert any((in_tmp / ".hypothesis" / "examples").iterdir())
    shutil.rmtree(in_tmp / ".hypothesis")
    capsys.readouterr()

    # One example cannot find the bug; the saved report still does.
    assert main(["fuzz", "--impl", spec, "--max-examples", "1", "--seed", "0", "--report-dir", "reports"]) == 1
    output = capsys.readouterr().out
    assert f"replay reproduces reports/{report.name}  mismatch" in output
    assert "grouped_off_by_one  1 " in output

    (in_tmp / "userconv.py").write_text(FIXED)
    assert main(["fuzz", "--impl", spec, "--max-examples", "1", "--seed", "0", "--report-dir", "reports",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [(r["status"], r["implementation"]) for r in summary["replays"]] == [("fixed", "grouped_off_by_one")]
    assert summary["reproduced"] == 0
    assert summary["run_id"]
    assert set(summary["versions"]) >= {"difftest", "torch", "hypothesis"}
    assert load_report(str(report))["status"] == "fixed"

    # A fixed report is kept but no longer replayed.
    assert main(["fuzz", "--impl", spec, "--max-examples", "1", "--report-dir", "reports"]) == 0
    assert "replay" not in capsys.readouterr().out
    assert report.exists()


def test_cli_no_replay(in_tmp, capsys):
    spec = "userconv.py:grouped_off_by_one"
    assert main(["fuzz", "--impl", spec, "--max-examples", "30", "--seed", "0"]) == 1
    capsys.readouterr()
    assert main(["fuzz", "--impl", spec, "--max-examples", "1", "--seed", "0", "--no-replay"]) == 0
    assert "replay" not in capsys.readouterr().out


def test_replay_only_fuzzed_implementations(in_tmp):
    assert main(["fuzz", "--impl", "userconv.py:grouped_off_by_one", "--max-examples", "30", "--seed", "0"]) == 1
    faulty = load("userconv.py:grouped_off_by_one")
    good = load("userconv.py:good_conv")
    assert len(open_reports("reports", [faulty])) == 1
    assert open_reports("reports", [good]) == []


def test_ci_profile_repeats_exactly(in_tmp, capsys):
    runs = []
    for folder in ("first", "second"):
        code = main(["fuzz", "--impl", "userconv.py:grouped_off_by_one", "--profile", "difftest-ci",
                     "--max-examples", "30", "--report-dir", folder, "--json"])
        assert code == 1
        runs.append(json.loads(capsys.readouterr().out)["implementations"])
    assert runs[0][0]["case"] == runs[1][0]["case"]
    assert runs[0][0]["examples"] == runs[1][0]["examples"]
    assert not (in_tmp / ".hypothesis" / "examples").exists()


# Profiles and regions ----------------------------------------------------------------


def test_profiles_registered():
    dev, ci, thorough = (get_profile(name) for name in ("difftest-dev", "difftest-ci", "difftest-thorough"))
    assert set(PROFILES) == {"difftest-dev", "difftest-ci", "difftest-thorough"}
    assert (dev.max_examples, ci.max_examples, thorough.max_examples) == (100, 300, 2000)
    assert ci.derandomize and ci.database is None and ci.print_blob
    assert not dev.derandomize and not thorough.derandomize
    assert dev.deadline is None and ci.deadline is None and thorough.deadline is None


def test_unknown_profile_rejected():
    with pytest.raises(UsageError, match="no Hypothesis settings profile of that name"):
        get_profile("no-such-profile")


def test_fuzz_settings_follow_profile(tmp_path):
    ci = _hypothesis_settings(FuzzOptions(profile="difftest-ci", max_examples=5), "loop")
    assert (ci.derandomize, ci.database, ci.print_blob, ci.max_examples) == (True, None, True, 5)
    database = example_database("difftest-dev", str(tmp_path))
    assert isinstance(database, DirectoryBasedExampleDatabase)
    dev = _hypothesis_settings(FuzzOptions(profile="difftest-dev", database=database), "loop")
    assert not dev.derandomize and dev.database is not None
    plain = _hypothesis_settings(FuzzOptions(), "loop")
    assert (plain.derandomize, plain.database, plain.print_blob) == (False, None, False)


def test_regions_respect_supports():
    for name in REGIONS:
        assert region_strategy(name) is not None, name
    narrow = Supports(groups=False, stride=False, dilation=False, layouts={"contiguous"},
                      padding_forms={"int"})
    assert [name for name in REGIONS if region_strategy(name, narrow) is not None] == [
        "plain", "long_reductions", "mixed"]
    assert region_strategy("plain", narrow)["padding_forms"] == ("int",)
    with pytest.raises(UsageError, match="unknown region"):
        region_strategy("everywhere")


# Progress -----------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _outcome(name: str, passed: bool = True) -> SimpleNamespace:
    return SimpleNamespace(implementation=name, passed=passed)


def test_progress_line_text():
    clock = _Clock()
    stream = io.StringIO()
    reporter = ProgressReporter(stream, implementations=2, max_examples=50, enabled=True, clock=clock)
    for step in range(20):
        clock.now = 0.1 * (step + 1)
        reporter.on_example(_outcome("loop", passed=step != 19))
    assert reporter.status(now=2.0) == (
        "difftest: 20 examples, 10/s, 1 failure (loop), about 8s left (1/2 implementations)")
    reporter.on_result(None)
    assert reporter.status(now=4.0) == (
        "difftest: 20 examples, 5/s, 1 failure (loop), about 10s left (2/2 implementations)")


def test_progress_rate_limited():
    clock = _Clock()
    stream = io.StringIO()
    reporter = ProgressReporter(stream, max_examples=100, interval=0.25, enabled=True, clock=clock)
    for step in range(100):
        clock.now = 0.01 * step
        reporter.on_example(_outcome("loop"))
    # Calls at 0.0, 0.25, 0.5 and 0.75 s write; a stream that is not a terminal gets whole lines.
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("difftest: 1 examples, ")


def test_progress_silent_when_not_terminal():
    stream = io.StringIO()
    reporter = ProgressReporter(stream, clock=_Clock())
    reporter.on_example(_outcome("loop"))
    reporter.close()
    assert stream.getvalue() == ""


def test_progress_redraws_on_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    clock = _Clock()
    stream = Terminal()
    reporter = ProgressReporter(stream, max_examples=10, clock=clock)
    reporter.on_example(_outcome("loop"))
    clock.now = 1.0
    reporter.on_example(_outcome("loop", passed=False))
    reporter.close()
    text = stream.getvalue()
    assert text.count("\r") == 2
    assert text.endswith("\n")
    assert "1 failure (loop)" in text


def test_format_duration():
    assert [format_duration(s) for s in (0.4, 42, 185, 3720)] == ["0s", "42s", "3m05s", "1h02m"]


# The summary page ---------------------------------------------------------------------


def _write_failure(folder: Path, name: str, case: ConvCase, **extra) -> Path:
    def shifted(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        import torch.nn.functional as F

        return F.conv2d(input, weight, bias, stride, padding, dilation, groups) + 1

    implementation = register(name, shifted, dtypes={"float32"})
    try:
        outcome = evaluate(implementation, case)
        assert not outcome.passed
        json_path, _ = write_report(str(folder), report_dict(outcome, implementation, **extra))
    finally:
        unregister(name)
    return Path(json_path)


def test_summary_page(tmp_path, capsys):
    first = _write_failure(tmp_path, "shift_a", ConvCase(height=3, width=3), heatmap="shift_a.png",
                           diagnosis={"summary": "every output off by one"}, worker="gw0")
    (tmp_path / "shift_a.png").write_bytes(b"\x89PNG")
    second = _write_failure(tmp_path, "shift_b", ConvCase(height=4, width=4), worker="gw1")
    mark_status(str(second), load_report(str(second)), "fixed")
    (tmp_path / "torn.json").write_text("{")

    path = write_summary(str(tmp_path))
    text = Path(path).read_text()
    assert path == str(tmp_path / SUMMARY_NAME)
    assert text.startswith("# difftest summary\n\n2 reports: 1 open, 1 fixed. Workers: gw0, gw1. ")
    assert "### shift_a" in text and "### shift_b" in text
    assert f"[report]({first.name}) · [script]({first.stem}.py) · [heatmap](shift_a.png)" in text
    assert f"[report]({second.name}) · [script]({second.stem}.py) |" in text
    assert "| open | mismatch | `" in text and "| every output off by one | gw0 |" in text
    assert "### shift_a: every output off by one\n\nVerdicts mismatch; 1 report, 1 open." in text
    assert "- torn.json: invalid report" in text

    # The command rewrites the page from whatever the folder holds now.
    second.unlink()
    assert main(["summary", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == path
    assert "shift_b" not in Path(path).read_text()


def test_summary_groups_same_finding(tmp_path):
    for height in (3, 4):
        _write_failure(tmp_path, "shift", ConvCase(height=height, width=3))
    reports = [load_report(str(p)) | {"_file": p.name} for p in sorted(tmp_path.glob("*.json"))]
    text = render_summary(reports, str(tmp_path))
    diagnosis_part = text.split("## By diagnosis")[1]
    assert diagnosis_part.count("\n### ") == 1
    assert "Verdicts mismatch; 2 reports, 2 open." in diagnosis_part
    assert diagnosis_part.count("\n- open: ") == 2


# Entry points ---------------------------------------------------------------------------


def test_list_shows_entry_point_implementation(tmp_path, monkeypatch, capsys):
    site = tmp_path / "site"
    package = site / "difftest_demo_plugin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent('''
        import torch.nn.functional as F

        def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
            return F.conv2d(input, weight, bias, stride, padding, dilation, groups)

        conv2d.difftest_supports = {"dtypes": {"float64"}}

        def listed(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
            return F.conv2d(input, weight, bias, stride, padding, dilation, groups)

        listed.difftest_supports = ["float64"]
    '''))
    metadata = site / "difftest_demo_plugin-1.0.dist-info"
    metadata.mkdir()
    (metadata / "METADATA").write_text("Metadata-Version: 2.1\nName: difftest-demo-plugin\nVersion: 1.0\n")
    (metadata / "entry_points.txt").write_text(
        "[difftest.implementations]\ndemo_conv = difftest_demo_plugin:conv2d\n"
        "demo_broken = difftest_demo_missing:conv2d\n"
        "demo_listed = difftest_demo_plugin:listed\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(_entry_points, "_loaded", False)
    monkeypatch.setattr(_entry_points, "_errors", {})
    try:
        assert main(["list"]) == 0
        lines = capsys.readouterr().out.splitlines()
    finally:
        unregister("demo_conv")
        sys.modules.pop("difftest_demo_plugin", None)
    [demo] = [line for line in lines if line.startswith("demo_conv ")]
    assert "difftest_demo_plugin:conv2d" in demo and "dtypes=float64" in demo
    [broken] = [line for line in lines if line.startswith("demo_broken ")]
    assert "entry point failed to load: ModuleNotFoundError" in broken
    [listed] = [line for line in lines if line.startswith("demo_listed ")]
    assert "entry point failed to load: SupportsError: implementation 'demo_listed'" in listed
    assert "expected a dict, got list" in listed
