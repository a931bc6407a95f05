"""End to end: fuzz the built-ins, shrink the known-bad one, reproduce and replay its report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import difftest
from difftest.cli import main
from difftest.registry import get

CORRECT_CORE = ("loop", "unfold", "im2col")


def _fuzz(names, tmp_path, **options):
    settings = dict(max_examples=60, seed=1, report_dir=str(tmp_path / "reports"))
    settings.update(options)
    return difftest.fuzz([get(name) for name in names], difftest.FuzzOptions(**settings))


@pytest.fixture(scope="module")
def known_bad_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("known_bad")
    (result,) = _fuzz(["unfold_transposed"], folder)
    assert result.failed
    assert result.report is not None
    return result


def test_known_bad_shrinks_to_one_channel(known_bad_report):
    case = known_bad_report.outcome.case
    assert case.batch == 1
    assert case.in_channels == 1
    assert case.out_channels == 1
    assert case.groups == 1
    assert case.dtype == "float32"


def test_known_bad_report_contents(known_bad_report):
    data = json.load(open(known_bad_report.report))
    assert data["verdict"] == "mismatch"
    assert data["implementation"]["name"] == "unfold_transposed"
    assert data["implementation"]["target"] == "difftest.builtins._unfold:conv2d_transposed"
    assert data["comparison"]["mismatched"] >= 1
    assert len(data["comparison"]["greatest"]["index"]) == 4
    assert data["worker"] == os.environ.get("PYTEST_XDIST_WORKER", "main")
    for library in ("torch", "hypothesis", "difftest"):
        assert library in data["versions"]


def test_known_bad_script_exits_1(known_bad_report):
    completed = subprocess.run([sys.executable, known_bad_report.script], capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode == 1, completed.stderr
    assert "unfold_transposed: mismatch" in completed.stdout


def test_known_bad_replay_exits_1(known_bad_report, capsys):
    assert main(["replay", known_bad_report.report]) == 1
    assert capsys.readouterr().out.startswith("reproduces")


def test_fixed_report_replays_0(known_bad_report, tmp_path, capsys):
    """A report whose implementation now agrees with the truth is marked fixed, and its script exits 0."""
    data = json.load(open(known_bad_report.report))
    data["implementation"]["target"] = "difftest.builtins._unfold:conv2d"
    path = tmp_path / "now_fixed.json"
    path.write_text(json.dumps(data))
    assert main(["replay", str(path)]) == 0
    assert json.load(open(path))["status"] == "fixed"

    from difftest.script import render_script

    script = tmp_path / "now_fixed.py"
    script.write_text(render_script(data))
    completed = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    # The saved diagnosis described the failure, which is gone.
    assert "Diagnosis" not in completed.stdout
    assert completed.stdout.count("conv2d(") == 1


@pytest.mark.parametrize("name", CORRECT_CORE)
def test_correct_core_builtins_pass(name, tmp_path):
    (result,) = _fuzz([name], tmp_path, max_examples=200, seed=None)
    assert not result.failed, result.outcome and result.outcome.detail
    assert result.examples == 200


def test_one_failure_does_not_stop_others(tmp_path):
    results = _fuzz(["unfold_transposed", "im2col"], tmp_path, max_examples=30)
    assert [result.name for result in results] == ["unfold_transposed", "im2col"]
    assert results[0].failed
    assert not results[1].failed
    assert results[1].examples == 30


def test_cli_fuzz_summary_table(tmp_path, capsys):
    status = main(["fuzz", "--impl", "unfold_transposed", "--impl", "im2col", "--max-examples", "30",
                   "--seed", "3", "--report-dir", str(tmp_path)])
    output = capsys.readouterr().out
    assert status == 1
    lines = output.splitlines()
    assert lines[0].split() == ["implementation", "examples", "shrinks", "verdict", "seconds", "report"]
    assert any(line.startswith("unfold_transposed") and "FAIL (mismatch), known bad" in line for line in lines)
    assert any(line.startswith("im2col") and " pass " in line for line in lines)


def test_fixed_seed_repeats_run(tmp_path, capsys):
    def run(folder):
        main(["fuzz", "--impl", "unfold_transposed", "--max-examples", "40", "--seed", "7", "--json",
              "--report-dir", str(folder)])
        summary = json.loads(capsys.readouterr().out)
        (item,) = summary["implementations"]
        return item["examples"], item["case"]

    assert run(tmp_path / "a") == run(tmp_path / "b")


def test_known_bad_counts_search_and_shrinking_apart(known_bad_report):
    data = json.load(open(known_bad_report.report))
    assert 1 <= known_bad_report.examples <= 60
    assert known_bad_report.shrink_steps >= 1
    assert data["examples"] == known_bad_report.examples
    assert data["shrink_steps"] == known_bad_report.shrink_steps


def test_result_detail_matches_report(known_bad_report):
    data = json.load(open(known_bad_report.report))
    assert known_bad_report.detail == data["detail"]


def test_dtype_narrowing_skips_unsupporting_implementations(tmp_path):
    results = _fuzz(["loop", "half_fp32_accumulate"], tmp_path, max_examples=10, check_invalid=False,
                    strategy={"dtypes": ["float16"]})
    loop, half = results
    assert loop.verdict == "skipped"
    assert not loop.failed
    assert loop.examples == 0
    assert loop.note == "supports dtypes float32, float64 only, not float16"
    assert half.verdict == "pass"
    assert half.examples == 10


def test_dtype_narrowing_with_one_implementation_names_it(tmp_path):
    with pytest.raises(difftest.UsageError, match="dtypes='float16' is invalid: loop supports dtypes float32, float64"):
        _fuzz(["loop"], tmp_path, max_examples=10, strategy={"dtypes": ["float16"]})


def test_dtype_narrowing_supported_by_none(tmp_path):
    with pytest.raises(difftest.UsageError, match="no selected implementation supports it"):
        _fuzz(["loop", "im2col"], tmp_path, max_examples=10, strategy={"dtypes": ["float16"]})


def test_cli_names_dtype_option(tmp_path, capsys):
    status = main(["fuzz", "--impl", "loop", "--dtype", "float16", "--report-dir", str(tmp_path)])
    error = capsys.readouterr().err
    assert status == 2
    assert error.startswith("difftest fuzz: error: --dtype='float16' is invalid: loop supports dtypes")


def test_cli_table_lists_skipped(tmp_path, capsys):
    status = main(["fuzz", "--impl", "loop", "--impl", "half_fp32_accumulate", "--dtype", "float16",
                   "--max-examples", "5", "--no-invalid", "--report-dir", str(tmp_path)])
    output = capsys.readouterr().out
    assert status == 0
    assert any(line.startswith("loop") and " skipped " in line for line in output.splitlines())
    assert "skipped loop: supports dtypes float32, float64 only, not float16" in output


def test_table_names_suspect_reference(known_bad_report):
    from dataclasses import replace

    from difftest.summary import render_table

    outcome = replace(known_bad_report.outcome, reference_suspect="torch's own conv2d is 3 times past the bound")
    table = render_table([replace(known_bad_report, outcome=outcome)])
    assert "  reference suspect: torch's own conv2d is 3 times past the bound" in table.splitlines()


def _cuda_only(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return torch.nn.functional.conv2d(input, weight, bias, stride, padding, dilation, groups)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_absent_device_only_implementation_skipped(tmp_path):
    cuda_only = difftest.Implementation("cuda_only", _cuda_only, difftest.Supports(devices={"cuda"}))
    options = difftest.FuzzOptions(max_examples=5, seed=0, check_invalid=False, report_dir=str(tmp_path))
    skipped, loop = difftest.fuzz([cuda_only, get("loop")], options)
    assert skipped.verdict == "skipped"
    assert skipped.note == "supports devices cuda only, but this machine has only cpu"
    assert loop.verdict == "pass"
    with pytest.raises(difftest.UsageError, match="supports devices cuda only, and this machine has cpu"):
        difftest.fuzz([cuda_only], options)


def test_interrupt_prints_no_seed_hint(tmp_path, capsys):
    # On Ctrl-C Hypothesis suggests adding @seed to "this test", a test that
    # a user of the command line never wrote.
    def interrupt_after_five(outcome):
        if interrupt_after_five.calls == 5:
            raise KeyboardInterrupt
        interrupt_after_five.calls += 1

    interrupt_after_five.calls = 0
    with pytest.raises(KeyboardInterrupt):
        _fuzz(["loop"], tmp_path, seed=None, max_examples=100, on_example=interrupt_after_five)
    captured = capsys.readouterr()
    assert "@seed" not in captured.out
    assert "@seed" not in captured.err


def test_hypothesis_reporter_keeps_other_messages(capsys):
    from difftest.fuzz import _HypothesisMessages

    messages = _HypothesisMessages()
    messages("Trying example: check(case=...)")
    messages("You can reproduce this failure by adding @seed(12) to this test.")
    assert capsys.readouterr().out == "Trying example: check(case=...)\n"
    assert not messages.slow_shrinking

    messages("\nThis test function exited early because it took too long to shrink. If desired for debugging, "
             "you can reproduce this by adding @seed(12) to this test.")
    assert capsys.readouterr().out == ""
    assert messages.slow_shrinking


# One search shared by implementations of the same space -----------------------------

def _off_by_one(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return torch.nn.functional.conv2d(input, weight, bias, stride, padding, dilation, groups) + 1


def _off_by_two(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return torch.nn.functional.conv2d(input, weight, bias, stride, padding, dilation, groups) + 2


def _same_space(name, function):
    return difftest.Implementation(name, function, get("im2col").supports)


def test_shared_search_feeds_every_case_to_all(tmp_path):
    seen = {"unfold": [], "im2col": []}

    def record(outcome):
        seen[outcome.implementation].append(outcome.case)

    # Without a seed, separate searches would draw different cases.
    results = _fuzz(["unfold", "im2col"], tmp_path, max_examples=40, seed=None, on_example=record)
    assert [result.verdict for result in results] == ["pass", "pass"]
    assert len(seen["unfold"]) == 40
    assert seen["unfold"] == seen["im2col"]


def test_shared_search_shrinks_each_failure_alone(tmp_path):
    implementations = [_same_space("off_by_one", _off_by_one), _same_space("off_by_two", _off_by_two),
                       get("im2col")]
    options = difftest.FuzzOptions(max_examples=30, seed=2, report_dir=str(tmp_path), check_invalid=False,
                                   analyse=False)
    results = difftest.fuzz(implementations, options)
    assert [result.verdict for result in results] == ["mismatch", "mismatch", "pass"]
    # Both fail on the first case drawn. The first is shrunk in that search,
    # the second in the next one, and each ends at the plainest case.
    for result in results[:2]:
        case = result.outcome.case
        assert (case.batch, case.in_channels, case.out_channels, case.kernel) == (1, 1, 1, (1, 1)), result.name
        assert result.note == ""
    assert results[2].examples == 30


def test_shared_search_keeps_failure_it_did_not_shrink(tmp_path):
    # With one example each, the second failure has no budget left for a
    # search of its own, so it is reported as found, with a note.
    implementations = [_same_space("off_by_one", _off_by_one), _same_space("off_by_two", _off_by_two)]
    options = difftest.FuzzOptions(max_examples=1, seed=2, report_dir=str(tmp_path), check_invalid=False,
                                   analyse=False)
    first, second = difftest.fuzz(implementations, options)
    assert first.verdict == "mismatch"
    assert second.verdict == "mismatch"
    assert second.shrink_steps == 0
    assert second.note.startswith("found in a search that was shrinking another implementation's failure")
    assert os.path.exists(second.report)


def test_shared_search_repeats_with_seed(tmp_path):
    implementations = [_same_space("off_by_one", _off_by_one), get("unfold"), get("im2col")]
    runs = []
    for folder in ("first", "second"):
        options = difftest.FuzzOptions(max_examples=25, seed=9, report_dir=str(tmp_path / folder),
                                       check_invalid=False, analyse=False)
        runs.append([(result.verdict, result.examples, result.shrink_steps,
                      result.outcome.case if result.outcome else None)
                     for result in difftest.fuzz(implementations, options)])
    assert runs[0] == runs[1]


def test_suspect_reference_noted_when_passing(tmp_path, monkeypatch):
    import difftest.runner

    def off_reference(case, inputs):
        return torch.nn.functional.conv2d(inputs.input, inputs.weight, inputs.bias, case.stride, case.padding,
                                          case.dilation, case.groups) + 1

    # Stands in for a torch build whose conv2d is wrong: the implementation
    # below agrees with the truth, torch does not.
    monkeypatch.setattr(difftest.runner, "reference", off_reference)
    result, = _fuzz(["im2col"], tmp_path, max_examples=5, seed=1, check_invalid=False)
    assert result.verdict == "pass"
    assert result.note.startswith("the reference is suspect on n1c1h1w1")
    assert "while this implementation agrees with the float64 truth" in result.note
