"""Isolated calls: crashes, hangs, runaway allocations and contract violations become findings.

Every implementation that can crash, hang or exhaust memory runs only in an
isolation worker with a time and memory limit, never in the test process.
The implementations defined here are imported by the worker from this module.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from difftest import ConvCase, Implementation, Supports, UsageError
from difftest.case import LAYOUTS
from difftest.fuzz import FuzzOptions, fuzz
from difftest.isolation import close_all, isolated_caller
from difftest.registry import load
from difftest.replay import find_reports
from difftest.reports import load_report
from difftest.runner import CaseContext, caller_for, evaluate
from difftest.values import make_inputs
from tests.wrong import broken

# Memory a call may add to a worker's address space in these tests.
MEMORY_LIMIT = 256 * 2**20

WORKER_NAME = "difftest-isolation-worker"

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class LayoutSeen(Exception):
    """Carries the layout of the tensors a worker received back to the test."""


def describe_layout(tensor: torch.Tensor) -> str:
    return (f"shape={tuple(tensor.shape)} stride={tensor.stride()} offset={tensor.storage_offset()} "
            f"storage={tensor.untyped_storage().nbytes()}")


def report_layouts(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    raise LayoutSeen(f"input {describe_layout(input)}; weight {describe_layout(weight)}")


def raise_value_error(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    raise ValueError("rejected on purpose")


def raise_not_implemented(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    raise NotImplementedError("not written yet")


def raise_local_exception(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    class LocalError(Exception):
        pass

    raise LocalError("made inside the call")


def raise_keyboard_interrupt(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    raise KeyboardInterrupt


def call_sys_exit(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    sys.exit(4)


def exit_with_status_3(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    os._exit(3)


def abort(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    os.abort()


def return_generator(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return (value for value in ())


def mutate_expanded_input(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    # input.add_(1) raises on an expanded tensor. One batch item's view does
    # not, and writing it changes every item, because they share their memory.
    output = torch.nn.functional.conv2d(input, weight, bias, stride, padding, dilation, groups)
    input.select(0, 0).add_(1)
    return output


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return torch.nn.functional.conv2d(input, weight, bias, stride, padding, dilation, groups)


def isolated(function, **supports) -> Implementation:
    """Return ``function`` as an isolated implementation, imported by the worker from its module."""
    return Implementation(function.__name__, function, Supports(**supports),
                          target=f"{function.__module__}:{function.__qualname__}", isolate=True)


def broken_implementation(function) -> Implementation:
    return isolated(function, **function.difftest_supports)


def worker_processes() -> list[multiprocessing.Process]:
    return [process for process in multiprocessing.active_children() if process.name == WORKER_NAME]


@pytest.fixture
def caller():
    with isolated_caller(timeout=5, memory_limit=MEMORY_LIMIT) as worker_caller:
        yield worker_caller


PLAIN = ConvCase(batch=1, in_channels=2, out_channels=2, height=3, width=3, kernel_height=2, kernel_width=2,
                 dtype="float64")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_arrives_with_its_strides(layout, caller):
    case = ConvCase(batch=2, in_channels=3, out_channels=2, height=4, width=5, kernel_height=2, kernel_width=3,
                    dtype="float64", input_layout=layout, weight_layout=layout)
    context = CaseContext(case)
    expected = (f"input {describe_layout(context.inputs.input)}; "
                f"weight {describe_layout(context.inputs.weight)}")

    outcome = evaluate(isolated(report_layouts), case, context, caller=caller)

    assert outcome.verdict == "exception"
    assert outcome.detail == f"raised LayoutSeen: {expected}"


def test_expanded_input_has_stride_zero():
    case = PLAIN.replace(batch=3, input_layout="expanded", weight_layout="expanded")
    inputs = make_inputs(case)
    assert inputs.input.stride()[0] == 0
    assert inputs.weight.stride()[0] == 0


def test_exception_keeps_its_type(caller):
    outcome = evaluate(isolated(raise_value_error), PLAIN, caller=caller)
    assert outcome.verdict == "exception"
    assert outcome.detail == "raised ValueError: rejected on purpose"
    assert outcome.exception == "ValueError: rejected on purpose"


def test_not_implemented_keeps_its_verdict(caller):
    outcome = evaluate(isolated(raise_not_implemented), PLAIN, caller=caller)
    assert outcome.verdict == "not_implemented"
    assert outcome.detail == "raised NotImplementedError: not written yet"


def test_unpicklable_exception_keeps_its_name(caller):
    outcome = evaluate(isolated(raise_local_exception), PLAIN, caller=caller)
    assert outcome.verdict == "exception"
    assert outcome.detail == "raised test_isolation.raise_local_exception.<locals>.LocalError: made inside the call"


@pytest.mark.parametrize("function, kind", [(raise_keyboard_interrupt, "KeyboardInterrupt"),
                                             (call_sys_exit, "SystemExit")])
def test_base_exception_from_implementation_is_exception(function, kind, caller, capfd):
    outcome = evaluate(isolated(function), PLAIN, caller=caller)
    after = evaluate(isolated(conv2d), PLAIN, caller=caller)
    assert outcome.verdict == "exception"
    assert outcome.detail.startswith(f"raised {kind}")
    assert after.verdict == "pass"
    assert "Traceback" not in capfd.readouterr().err


def test_segfault_is_crash_and_reproducible(caller):
    implementation = broken_implementation(broken.segfault_when_batched)
    trigger = ConvCase(**broken.segfault_when_batched.trigger)

    first = evaluate(implementation, trigger, caller=caller)
    plain = evaluate(implementation, ConvCase(**broken.segfault_when_batched.plain), caller=caller)
    again = evaluate(implementation, trigger, caller=caller)

    assert first.verdict == "crash"
    assert first.detail == "worker process died with SIGSEGV"
    assert plain.verdict == "pass"
    assert again.verdict == "crash"
    assert again.detail == "worker process died with SIGSEGV"


def test_abort_is_crash(caller):
    outcome = evaluate(isolated(abort), PLAIN, caller=caller)
    assert outcome.verdict == "crash"
    assert outcome.detail == "worker process died with SIGABRT"


def test_exit_status_is_crash(caller):
    outcome = evaluate(isolated(exit_with_status_3), PLAIN, caller=caller)
    assert outcome.verdict == "crash"
    assert outcome.detail == "worker process exited with status 3"


def test_hang_is_timeout_and_worker_restarts():
    implementation = broken_implementation(broken.hang_when_tall)
    with isolated_caller(timeout=1, memory_limit=MEMORY_LIMIT) as caller:
        evaluate(implementation, ConvCase(**broken.hang_when_tall.plain), caller=caller)

        started = time.perf_counter()
        outcome = evaluate(implementation, ConvCase(**broken.hang_when_tall.trigger), caller=caller)
        seconds = time.perf_counter() - started

        after = evaluate(implementation, ConvCase(**broken.hang_when_tall.plain), caller=caller)
    assert outcome.verdict == "timeout"
    assert outcome.detail == "no result within 1 s"
    assert seconds < 10
    assert after.verdict == "pass"


def test_allocation_stops_at_memory_limit(caller):
    implementation = broken_implementation(broken.allocate_when_wide)
    outcome = evaluate(implementation, ConvCase(**broken.allocate_when_wide.trigger), caller=caller)
    after = evaluate(implementation, ConvCase(**broken.allocate_when_wide.plain), caller=caller)
    assert outcome.verdict == "crash"
    assert outcome.exception.startswith("MemoryError")
    assert outcome.detail.startswith(f"ran out of memory at the worker's limit of {MEMORY_LIMIT / 2**20:.4g} MiB ")
    assert outcome.detail.endswith("raise the memory budget (--memory-budget, or --difftest-memory-budget "
                                   "under pytest)")
    assert after.verdict == "pass"


def test_budget_too_small_names_the_limit():
    # A correct implementation needs more than a 1 MiB limit for its output,
    # and the finding names that limit instead of reporting a bare exception.
    implementation = isolated(conv2d)
    case = ConvCase(height=1024, width=1024, kernel_height=1, kernel_width=1, dtype="float64")
    with isolated_caller(timeout=60, memory_limit=2**20) as caller:
        outcome = evaluate(implementation, case, caller=caller)
    assert outcome.verdict == "crash"
    assert "can't allocate memory" in outcome.exception
    assert "limit of 1 MiB more per call" in outcome.detail


def test_mutation_found_in_worker(caller):
    implementation = broken_implementation(broken.mutates_input)
    case = ConvCase(**broken.mutates_input.trigger)
    context = CaseContext(case)

    outcome = evaluate(implementation, case, context, caller=caller)

    assert outcome.verdict == "mutates_input"
    assert outcome.detail == "input was modified in place"
    assert torch.equal(context.inputs.input, make_inputs(case).input)


def test_expanded_input_mutation_found_in_worker(caller):
    case = PLAIN.replace(batch=2, input_layout="expanded")
    outcome = evaluate(isolated(mutate_expanded_input), case, caller=caller)
    assert outcome.verdict == "mutates_input"
    assert outcome.detail == "input was modified in place"


def test_alias_found_in_worker(caller):
    implementation = broken_implementation(broken.output_aliases_input)
    case = ConvCase(**broken.output_aliases_input.trigger).replace(kernel_height=1, kernel_width=1)
    outcome = evaluate(implementation, case, caller=caller)
    assert outcome.verdict == "output_aliases_input"
    assert outcome.detail == "the output shares memory with input, and input was modified in place"


def test_unpicklable_output_is_wrong_type(caller):
    outcome = evaluate(isolated(return_generator), PLAIN, caller=caller)
    assert outcome.verdict == "wrong_type"
    assert outcome.detail.startswith("returned generator, expected torch.Tensor (it cannot be sent back from the "
                                     "worker process")


def test_correct_implementation_passes(caller):
    outcome = evaluate(isolated(conv2d), PLAIN.replace(input_layout="channels_last", bias=True), caller=caller)
    assert outcome.verdict == "pass"


MAIN_MESSAGE = ("implementation='conv2d' is invalid: is defined in __main__ (target '__main__:conv2d'), so a "
                "worker process cannot import it. define it at the top level of an importable module or file, "
                "or run it with isolate=False (--no-isolate)")


def test_main_module_function_rejected(caller):
    implementation = Implementation("conv2d", conv2d, target="__main__:conv2d", isolate=True)
    inputs = make_inputs(PLAIN)

    with pytest.raises(UsageError) as direct:
        caller(implementation, PLAIN, inputs)
    with pytest.raises(UsageError) as judged:
        evaluate(implementation, PLAIN, caller=caller)
    with pytest.raises(UsageError) as chosen:
        caller_for(implementation)

    assert str(direct.value) == MAIN_MESSAGE
    assert str(judged.value) == MAIN_MESSAGE
    assert str(chosen.value) == MAIN_MESSAGE


def test_local_function_rejected(caller):
    def local_conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        return conv2d(input, weight, bias, stride, padding, dilation, groups)

    implementation = isolated(local_conv2d)
    with pytest.raises(UsageError) as error:
        evaluate(implementation, PLAIN, caller=caller)
    assert str(error.value).startswith("implementation='local_conv2d' is invalid: is defined inside a function")


def test_unimportable_target_rejected(caller):
    implementation = Implementation("ghost", conv2d, target="no_such_module_xyz:conv2d", isolate=True)
    with pytest.raises(UsageError) as error:
        evaluate(implementation, PLAIN, caller=caller)
    assert str(error.value).startswith(
        "implementation='ghost' is invalid: cannot be imported in a worker process: --impl='no_such_module_xyz:conv2d' "
        "is invalid: module 'no_such_module_xyz' not found.")


def test_close_stops_worker():
    caller = isolated_caller(timeout=5)
    evaluate(isolated(conv2d), PLAIN, caller=caller)
    started = worker_processes()
    caller.close()
    assert len(started) >= 1
    assert not any(process.is_alive() for process in started)


def test_close_all_stops_every_worker():
    callers = [isolated_caller(timeout=5) for _ in range(2)]
    for caller in callers:
        evaluate(isolated(conv2d), PLAIN, caller=caller)
    started = worker_processes()
    close_all()
    assert len(started) >= 2
    assert not any(process.is_alive() for process in started)


def test_interrupt_kills_worker():
    implementation = broken_implementation(broken.hang_when_tall)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    caller = isolated_caller(timeout=None, memory_limit=MEMORY_LIMIT)
    evaluate(implementation, ConvCase(**broken.hang_when_tall.plain), caller=caller)
    started = worker_processes()
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        with pytest.raises(KeyboardInterrupt):
            evaluate(implementation, ConvCase(**broken.hang_when_tall.trigger), caller=caller)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert len(started) >= 1
    assert not any(process.is_alive() for process in started)
    caller.close()


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            state = next(line for line in status if line.startswith("State:"))
    except (FileNotFoundError, StopIteration):
        return True
    return state.split()[1] in ("Z", "X")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads process states from /proc")
def test_worker_exits_when_parent_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import multiprocessing, sys
        sys.path[:0] = [{REPOSITORY!r}]
        from difftest import ConvCase
        from difftest.isolation import isolated_caller
        from difftest.registry import load
        from difftest.runner import evaluate
        from tests.wrong import broken

        if __name__ == "__main__":
            implementation = load("tests.wrong.broken:hang_when_tall")
            caller = isolated_caller(timeout=None)
            evaluate(implementation, ConvCase(**broken.hang_when_tall.plain), caller=caller)
            print(*[p.pid for p in multiprocessing.active_children() if p.name == {WORKER_NAME!r}], flush=True)
            evaluate(implementation, ConvCase(**broken.hang_when_tall.trigger), caller=caller)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        worker_pids = [int(pid) for pid in parent.stdout.readline().split()]
    finally:
        parent.kill()
        parent.wait(30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not all(_gone(pid) for pid in worker_pids):
        time.sleep(0.2)
    assert len(worker_pids) == 1
    assert all(_gone(pid) for pid in worker_pids)


def test_campaign_reports_every_broken_implementation(tmp_path):
    implementations = [load(f"tests.wrong.broken:{function.__name__}") for function in broken.IMPLEMENTATIONS]
    options = FuzzOptions(max_examples=20, seed=7, report_dir=str(tmp_path), timeout=3.0,
                          memory_budget=MEMORY_LIMIT, check_determinism=True, analyse=False, check_invalid=False)

    started = time.perf_counter()
    results = fuzz(implementations, options)
    seconds = time.perf_counter() - started

    print(f"campaign over {len(implementations)} broken implementations took {seconds:.1f} s")
    verdicts = {result.name: result.verdict for result in results}
    expected = {function.__name__: function.expected_verdict for function in broken.IMPLEMENTATIONS}
    assert all(implementation.isolate for implementation in implementations)
    assert verdicts == expected
    for result in results:
        data = load_report(result.report)
        assert data["verdict"] == expected[result.name]
        assert data["implementation"]["isolate"] is True
    found = find_reports([str(tmp_path)])
    assert {result.report for result in results} <= set(found)
    for path in found:
        load_report(path)
    assert worker_processes() == []


def test_huge_memory_limit_sets_no_limit():
    with isolated_caller(timeout=30, memory_limit=2**70) as huge:
        outcome = evaluate(isolated(conv2d), PLAIN, caller=huge)
    assert outcome.verdict == "pass", outcome.detail


def test_shrink_stopped_by_timeouts_is_noted(tmp_path):
    implementation = broken_implementation(broken.hang_when_tall)
    options = FuzzOptions(max_examples=50, seed=0, timeout=0.5, max_shrink_timeouts=1, analyse=False,
                          check_invalid=False, report_dir=str(tmp_path))
    (result,) = fuzz([implementation], options)
    assert result.verdict == "timeout"
    # The limit stops new cases; cases that failed before still run again but count once.
    assert result.note == "shrinking stopped after 1 call timed out, so the case may not be minimal"


def test_invalid_call_search_stops_after_timeouts(tmp_path):
    source = tmp_path / "sleeper.py"
    source.write_text(textwrap.dedent("""
        import time

        def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
            time.sleep(600)
    """))
    implementation = load(f"{source}:conv2d")
    options = FuzzOptions(max_examples=5, seed=0, timeout=0.5, max_shrink_timeouts=1, analyse=False,
                          report_dir=str(tmp_path / "reports"))

    started = time.perf_counter()
    (result,) = fuzz([implementation], options)
    seconds = time.perf_counter() - started

    assert result.verdict == "timeout"
    assert result.invalid_outcome.verdict == "timeout"
    # The first call fails, one shrinking step times out, and Hypothesis replays the failure.
    assert result.invalid_examples <= 4
    assert seconds < 60
