"""The ``difftest`` command line: fuzz, list, replay and summary.

Exit status: 0 when everything passed, 1 when a failure was found or a saved
failure still reproduces, 2 for a usage error (one line naming the bad value).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import threading
from typing import Any, Iterator, Optional, Sequence

from difftest.case import DTYPES
from difftest.errors import DifftestError, UsageError, WriteError
from difftest.isolation import MAX_TIMEOUT

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

DEFAULT_MAX_EXAMPLES = 100
DEFAULT_REPORT_DIR = "reports"
DEFAULT_TIMEOUT = 60.0
DEFAULT_PROFILE = "difftest-dev"
# FuzzOptions.max_shrink_timeouts's default, kept here so --help needs no torch import.
DEFAULT_SHRINK_TIMEOUTS = 8

logger = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit with status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a positive integer")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected an integer seed") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a seed of 0 or more")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a number of seconds") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a finite number of seconds above 0")
    if value > MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected at most {MAX_TIMEOUT} seconds "
                                         "(about 24 days)")
    return value


def _megabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a number of MiB") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a finite number of MiB above 0")
    if value * 2**20 < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected at least one byte ({2**-20:.3g} MiB)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="difftest", description="Differential testing of conv2d implementations against torch.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (repeat for debug output)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    fuzz = commands.add_parser("fuzz", help="search for cases where implementations disagree with the truth")
    fuzz.add_argument("--impl", action="append", metavar="SPEC", default=[],
                      help="implementation to fuzz: a registered name, MODULE:FUNCTION or path/to/file.py:FUNCTION "
                           "(repeatable; default: the built-ins)")
    fuzz.add_argument("--max-examples", type=_positive_int, default=None, metavar="N",
                      help="examples per implementation (default: the profile's, 100 for difftest-dev)")
    fuzz.add_argument("--seed", type=_seed, default=None, metavar="S",
                      help="fix Hypothesis's random choices so the same command gives the same run")
    fuzz.add_argument("--report-dir", default=DEFAULT_REPORT_DIR, metavar="DIR",
                      help=f"folder for failure reports (default {DEFAULT_REPORT_DIR})")
    fuzz.add_argument("--dtype", action="append", choices=DTYPES, default=None,
                      help="only generate this dtype (repeatable)")
    fuzz.add_argument("--device", action="append", default=None, metavar="DEVICE",
                      help="only generate this device: cpu, cuda or mps (repeatable)")
    fuzz.add_argument("--timeout", type=_positive_float, default=None, metavar="SECONDS",
                      help=f"time limit in seconds per call of an implementation run in a worker process "
                           f"(default {DEFAULT_TIMEOUT:g}). A call in this process cannot be stopped, so "
                           "--timeout with --no-isolate is an error")
    fuzz.add_argument("--max-elements", type=_positive_int, default=None, metavar="N",
                      help="generate no case whose input, weight or output has more than N elements "
                           "(default: no bound beyond the strategy's size limits)")
    fuzz.add_argument("--memory-budget", type=_megabytes, default=None, metavar="MB",
                      help="MiB a case may use: cases whose inputs, float64 truth and bound are estimated to need "
                           "more are skipped, and an isolated call may grow its worker's address space by at most "
                           "this much (default: half the physical memory)")
    fuzz.add_argument("--max-shrink-timeouts", type=_positive_int, default=None, metavar="N",
                      help="stop shrinking a failure after N calls have timed out, each costing a full --timeout, "
                           f"and report the smallest failure so far (default {DEFAULT_SHRINK_TIMEOUTS})")
    isolation = fuzz.add_mutually_exclusive_group()
    isolation.add_argument("--isolate", dest="isolate", action="store_true", default=None,
                           help="run every implementation in a worker process")
    isolation.add_argument("--no-isolate", dest="isolate", action="store_false",
                           help="run every implementation in this process")
    fuzz.add_argument("--check-determinism", action="store_true",
                      help="run each case twice and report answers that differ by more than the bound")
    fuzz.add_argument("--no-invalid", dest="check_invalid", action="store_false",
                      help="skip the search of invalid calls (by default each implementation must raise where "
                           "torch's conv2d raises, and must not raise where torch returns a result)")
    fuzz.add_argument("--json", action="store_true",
                      help="print a machine-readable summary instead of the table. Everything else the run "
                           "writes to standard output, implementations included, goes to standard error")
    fuzz.add_argument("--profile", default=None, metavar="NAME",
                      help=f"Hypothesis settings profile: difftest-dev, difftest-ci (derandomized, repeatable), "
                           f"difftest-thorough, or one your project registered (default {DEFAULT_PROFILE})")
    fuzz.add_argument("--no-replay", dest="replay", action="store_false",
                      help="do not replay the open reports in --report-dir before searching")
    fuzz.add_argument("--progress", action="store_true",
                      help="print progress to stderr even when it is not a terminal")

    commands.add_parser("list", help="list the registered implementations and what they support")

    summary = commands.add_parser("summary", help="rewrite the Markdown summary page (SUMMARY.md) of a report folder")
    summary.add_argument("report_dir", nargs="?", default=DEFAULT_REPORT_DIR, metavar="DIR",
                         help=f"report folder (default {DEFAULT_REPORT_DIR})")

    replay = commands.add_parser(
        "replay", help="re-run saved reports and mark fixed ones",
        description="Re-run saved reports. A report that now passes is marked 'fixed' and one that fails again "
                    "is marked 'open'. The SUMMARY.md that difftest wrote in a report's folder is rewritten. "
                    "A report that cannot be replayed (torn, or edited into an unknown verdict or status, a "
                    "target that does not import, a case torch rejects, literal inputs of the wrong shape) is "
                    "listed as invalid with its file and field, and the other reports still replay. Exit status: "
                    "2 when any report is invalid or a folder cannot be written, else 1 when any failure still "
                    "reproduces, else 0.")
    replay.add_argument("paths", nargs="+", metavar="PATH", help="report files (*.json) or folders holding them")
    replay.add_argument("--json", action="store_true",
                        help="print a machine-readable summary. Everything else the replay writes to standard "
                             "output, implementations included, goes to standard error")
    return parser


def _implementations(specs: list[str], isolate: Optional[bool]) -> list[Any]:
    from difftest import builtins
    from difftest.registry import get, load

    if specs:
        chosen = [load(spec) for spec in specs]
    else:
        chosen = [get(name) for name in builtins.DEFAULT]
    if isolate is not None:
        chosen = [dataclasses.replace(implementation, isolate=isolate) for implementation in chosen]
    seen: dict[str, Any] = {}
    for spec, implementation in zip(specs, chosen):
        name = implementation.name
        if name in seen and seen[name][1].target == implementation.target:
            raise UsageError("--impl", spec, "is given twice", "pass each implementation once")
        if name in seen:
            raise UsageError("--impl", spec, f"has the name {name!r} of --impl {seen[name][0]}",
                             "give one a name of its own: set {'name': ...} in its difftest_supports dict")
        seen[name] = (spec, implementation)
    return chosen


def _fuzz(arguments: argparse.Namespace) -> int:
    from difftest.campaign import replay_open_reports, write_summary
    from difftest._memory import default_memory_budget
    from difftest.fuzz import FuzzOptions, fuzz
    from difftest.profiles import example_database, max_examples_of
    from difftest.progress import ProgressReporter
    from difftest.reports import ensure_report_dir
    from strategies import available_devices

    ensure_report_dir(arguments.report_dir)
    if arguments.device:
        present = available_devices()
        for device in arguments.device:
            if device.split(":")[0] not in ("cpu", "cuda", "mps"):
                raise UsageError("--device", device, "unknown device", "pass cpu, cuda or mps")
            if device.split(":")[0] not in present:
                raise UsageError("--device", device, "not present on this machine",
                                 f"present: {', '.join(present)}")
    # Importing a module runs its top level, which may print too.
    with _stdout_to_stderr(arguments.json):
        implementations = _implementations(arguments.impl, arguments.isolate)
    timeout = _timeout(arguments, implementations)
    strategy: dict[str, Any] = {}
    if arguments.dtype:
        strategy["dtypes"] = arguments.dtype
    if arguments.device:
        strategy["devices"] = arguments.device
    if arguments.max_elements is not None:
        strategy["max_elements"] = arguments.max_elements
    if arguments.memory_budget is not None:
        memory_budget: Optional[int] = int(arguments.memory_budget * 2**20)
    else:
        memory_budget = default_memory_budget()
    profile = arguments.profile or DEFAULT_PROFILE
    max_examples = max_examples_of(profile, arguments.max_examples)
    progress = ProgressReporter(sys.stderr, implementations=len(implementations), max_examples=max_examples,
                                enabled=True if arguments.progress else None)
    finished: list[Any] = []

    def on_result(result: Any) -> None:
        finished.append(result)
        progress.on_result(result)

    options = FuzzOptions(
        max_examples=max_examples,
        seed=arguments.seed,
        report_dir=arguments.report_dir,
        database=example_database(profile, os.getcwd()),
        profile=profile,
        check_determinism=arguments.check_determinism,
        check_invalid=arguments.check_invalid,
        timeout=timeout,
        memory_budget=memory_budget,
        max_shrink_timeouts=arguments.max_shrink_timeouts or DEFAULT_SHRINK_TIMEOUTS,
        strategy=strategy,
        on_example=_checking_interrupts(progress.on_example),
    )

    replays: list[Any] = []
    try:
        with _stdout_to_stderr(arguments.json):
            # Saved failures come first: a bug once found is checked on every
            # run, even after the Hypothesis example database has been deleted.
            if arguments.replay:
                replays = replay_open_reports(arguments.report_dir, implementations)
            unsaved = [replay.write_error for replay in replays if replay.write_error is not None]
            if unsaved:
                raise unsaved[0]
            try:
                fuzz(implementations, options, on_result=on_result)
            except UsageError as error:
                raise _as_option(error) from None
            finally:
                progress.close()
            summary_path = write_summary(arguments.report_dir)
    except (DifftestError, OSError) as error:
        if isinstance(error, OSError) and not _inside(error.filename, arguments.report_dir):
            raise
        # What was found before the error is printed, and its reports are on disk.
        if replays or finished:
            _print_campaign(arguments, replays, finished, None)
        if isinstance(error, (WriteError, OSError)):
            raise _unwritable("--report-dir", arguments.report_dir, error) from None
        raise

    _print_campaign(arguments, replays, finished, summary_path)
    reproduced = any(replay.status == "reproduces" for replay in replays)
    return EXIT_FAILURE if reproduced or any(result.failed for result in finished) else EXIT_OK


# Options whose values reach the strategy under another name.
_STRATEGY_OPTIONS = {"dtypes": "--dtype", "devices": "--device"}


def _as_option(error: UsageError) -> UsageError:
    """Return ``error`` naming the command-line option behind a strategy argument, such as --dtype for dtypes."""
    option = _STRATEGY_OPTIONS.get(error.name)
    if option is None:
        return error
    return UsageError(option, error.value, error.reason, error.fix.replace(f"pick {error.name} ", f"pass {option} "))


def _checking_interrupts(on_example: Any) -> Any:
    """Return ``on_example`` preceded by a check for a signal whose KeyboardInterrupt was ignored."""
    def checked(outcome: Any) -> None:
        check_interrupted()
        on_example(outcome)
    return checked


def _timeout(arguments: argparse.Namespace, implementations: list[Any]) -> float:
    """Return the time limit per isolated call; raise UsageError where --timeout cannot apply."""
    if arguments.timeout is None:
        return DEFAULT_TIMEOUT
    if arguments.isolate is False:
        raise UsageError("--timeout", arguments.timeout,
                         "--no-isolate runs every implementation in this process, where a call cannot be stopped",
                         "drop --no-isolate to run calls in a worker process that the time limit applies to, "
                         "or drop --timeout")
    in_process = [implementation.name for implementation in implementations if not implementation.isolate]
    if in_process:
        logger.warning("--timeout %g does not apply to implementations run in this process (%s); pass --isolate "
                       "to time them", arguments.timeout, ", ".join(in_process))
    return arguments.timeout


def _print_campaign(arguments: argparse.Namespace, replays: list[Any], results: list[Any],
                    summary_path: Optional[str]) -> None:
    from difftest.campaign import render_replays
    from difftest.summary import render_table, results_json

    if arguments.json:
        print(json.dumps(results_json(results, replays=replays), indent=2, sort_keys=True))
        return
    if replays:
        print(render_replays(replays))
        print()
    if results:
        print(render_table(results))
    if summary_path is not None:
        print(f"\nsummary: {summary_path}")


def _unwritable(option: str, folder: str, error: WriteError | OSError) -> UsageError:
    """Return the usage error for a report folder the operating system would not let difftest write into."""
    if isinstance(error, WriteError):
        file_name, reason = os.path.basename(error.path), error.reason
    else:
        # A writer other than difftest._atomic, such as the heatmap's, names a temporary file, so no name is shown.
        file_name, reason = "a file", error.strerror or str(error)
    return UsageError(option, folder, f"saving {file_name} in it failed ({reason})",
                      "pass a folder you can write to, or make this one writable")


def _inside(path: Any, folder: str) -> bool:
    """Return whether ``path`` (an OSError's filename, which may be None or bytes) lies in ``folder``."""
    if not isinstance(path, str):
        return False
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(folder)]) == os.path.abspath(folder)


def _summary(arguments: argparse.Namespace) -> int:
    from difftest.campaign import write_summary

    if not os.path.isdir(arguments.report_dir):
        reason = "is not a folder" if os.path.exists(arguments.report_dir) else "not found"
        raise UsageError("DIR", arguments.report_dir, reason, "pass the report folder of a campaign")
    try:
        path = write_summary(arguments.report_dir)
    except WriteError as error:
        raise _unwritable("DIR", arguments.report_dir, error) from None
    print(path)
    return EXIT_OK


def _list(arguments: argparse.Namespace) -> int:
    from difftest._entry_points import entry_point_errors
    from difftest.registry import registered

    rows = [("name", "target", "supports")]
    for name, implementation in sorted(registered().items()):
        supports = implementation.supports
        flags = [f"dtypes={','.join(sorted(supports.dtypes))}"]
        for option in ("stride", "dilation", "groups", "bias"):
            if not getattr(supports, option):
                flags.append(f"no {option}")
        if supports.padding_modes != {"zeros"}:
            flags.append("padding modes")
        if supports.error_model != "elementwise":
            flags.append(f"{supports.error_model} error")
        if implementation.expected_to_fail:
            flags.append("known bad")
        rows.append((name, implementation.target or "-", "; ".join(flags)))
    for name, error in sorted(entry_point_errors().items()):
        rows.append((name, "-", f"entry point failed to load: {error}"))
    print(_columns(rows))
    return EXIT_OK


def _columns(rows: list[tuple[str, ...]]) -> str:
    """Return rows as text columns as wide as their longest cell, two spaces apart, a rule under the first."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _replay(arguments: argparse.Namespace) -> int:
    from difftest.replay import find_reports, replay_path

    paths = find_reports(arguments.paths)
    if not paths:
        raise UsageError("PATH", " ".join(arguments.paths), "holds no report files (*.json)",
                         "pass report files or the folder holding them")
    with _stdout_to_stderr(arguments.json):
        results = [replay_path(path) for path in paths]
        unwritable = _rewrite_summaries(results)

    if arguments.json:
        print(json.dumps([{"path": result.path, "status": result.status, "error": result.error,
                           "verdict": result.outcome.verdict if result.outcome else None,
                           "not_saved": str(result.write_error) if result.write_error is not None else None}
                          for result in results], indent=2))
    else:
        for result in results:
            if result.status == "invalid":
                what = result.error
            elif result.outcome is not None:
                what = result.outcome.verdict
            else:
                what = ""
            if result.write_error is not None:
                what += f" (status not saved: {result.write_error.reason})"
            print(f"{result.status:<11} {result.path}  {what}")

    invalid = sum(result.status == "invalid" for result in results)
    for folder, error in unwritable.items():
        _print_error("replay", _unwritable("PATH", folder, error))
    if invalid:
        _print_error("replay", f"{invalid} of {len(results)} reports cannot be replayed (listed as invalid); "
                               "correct the named fields or remove those files")
    if invalid or unwritable:
        return EXIT_USAGE
    return EXIT_FAILURE if any(result.status == "reproduces" for result in results) else EXIT_OK


def _rewrite_summaries(results: list[Any]) -> dict[str, WriteError]:
    """Rewrite the summary page of each folder whose reports were replayed; return the folders that cannot be written.

    Only a SUMMARY.md that difftest wrote is rewritten, so that replaying a
    report copied next to a document of that name leaves the document alone.
    """
    from difftest.campaign import has_summary, write_summary

    unwritable: dict[str, WriteError] = {}
    for result in results:
        if result.write_error is not None:
            unwritable.setdefault(os.path.dirname(result.path) or os.curdir, result.write_error)
    touched = {os.path.dirname(result.path) or os.curdir for result in results if result.status != "invalid"}
    for folder in sorted(touched - set(unwritable)):
        if not has_summary(folder):
            continue
        try:
            write_summary(folder)
        except WriteError as error:
            unwritable[folder] = error
    return unwritable


def _print_error(command: str, error: Any) -> None:
    print(f"difftest {command}: error: {error}", file=sys.stderr)


@contextlib.contextmanager
def _stdout_to_stderr(enabled: bool) -> Iterator[None]:
    """Send everything written to standard output in the block to standard error, when ``enabled``.

    Python's sys.stdout is swapped, and file descriptor 1 is pointed at file
    descriptor 2 (os.dup2), so that output written straight to the descriptor
    (C code, os.write, worker processes started in the block) moves too.
    Both are restored afterwards, so a machine-readable result printed then is
    the only thing on standard output.

    NOTE: an isolation worker is forked from multiprocessing's fork server, and
    inherits the fork server's descriptor 1. A fork server started before the
    block, by an earlier run in the same Python process, still writes to the
    real standard output.
    """
    if not enabled:
        yield
        return
    original = sys.stdout
    if original is not None:
        original.flush()
    saved = _point_stdout_at_stderr()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        # Flush what was written through handles kept from before the block,
        # and C's stdio buffers, while descriptor 1 still points at stderr.
        if original is not None:
            original.flush()
        sys.stderr.flush()
        _flush_c_streams()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def _point_stdout_at_stderr() -> Optional[int]:
    """Point file descriptor 1 at descriptor 2; return a copy of the old descriptor 1, or None if there is none."""
    try:
        saved = os.dup(1)
    except OSError:
        # A daemon may have no descriptor 1. Python's stream is still swapped.
        return None
    try:
        os.dup2(2, 1)
    except OSError:
        os.close(saved)
        return None
    return saved


def _flush_c_streams() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):
        # Windows has no C library to load by that name. Python's own streams were flushed above.
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    try:
        arguments = parser.parse_args(argv)
    except SystemExit as exit:
        # argparse has printed the usage error or the help text already.
        return exit.code if isinstance(exit.code, int) else EXIT_USAGE
    logging.basicConfig(level=logging.WARNING - 10 * min(arguments.verbose, 2),
                        format="%(levelname)s %(name)s: %(message)s")
    handlers = {"fuzz": _fuzz, "list": _list, "replay": _replay, "summary": _summary}
    _interrupted.clear()
    previous = _interrupt_on_signals()
    try:
        status = handlers[arguments.command](arguments)
        if _interrupted:
            # The KeyboardInterrupt was raised where Python ignores exceptions
            # (a garbage-collector callback, say), so the run went on.
            raise KeyboardInterrupt
        return status
    except DifftestError as error:
        print(f"difftest {arguments.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyboardInterrupt, Exception) as error:
        # A KeyboardInterrupt that lands inside a library's own error
        # handling can come out as another exception. Hypothesis, stopped
        # before its engine starts, fails an assertion of its own instead.
        if not isinstance(error, KeyboardInterrupt) and not _interrupted:
            raise
        print("difftest: interrupted; reports written so far are complete", file=sys.stderr)
        return 130
    finally:
        _stop_workers()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# The signals received during this run, kept because a KeyboardInterrupt
# raised inside a garbage-collector callback or a __del__ method is ignored.
_interrupted: list[int] = []


def _raise_interrupt(signum: int, frame: Any) -> None:
    _interrupted.append(signum)
    raise KeyboardInterrupt(f"received signal {signal.Signals(signum).name}")


def check_interrupted() -> None:
    """Raise KeyboardInterrupt again when a signal arrived and its first one was ignored."""
    if _interrupted:
        raise KeyboardInterrupt(f"received signal {signal.Signals(_interrupted[0]).name}")


def _interrupt_on_signals() -> dict[int, Any]:
    """Make SIGINT and SIGTERM (a CI timeout, ``kill``) stop the run, so cleanup runs; return the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, _raise_interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}


def _stop_workers() -> None:
    # Isolation workers would otherwise live until the interpreter exits.
    if "difftest.isolation" in sys.modules:
        sys.modules["difftest.isolation"].close_all()


if __name__ == "__main__":
    sys.exit(main())
