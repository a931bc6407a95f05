"""pytest plugin: fuzz conv2d implementations from pytest, with no test file of your own.

Installed with difftest (entry point ``pytest11``), the plugin stays idle until
an implementation is named::

    pytest --difftest-impl mypackage.conv:conv2d -n auto
    pytest --difftest-impl path/to/conv.py:conv2d --difftest-profile difftest-ci
    pytest --difftest-impl loop --difftest-impl unfold --difftest-dtype float64

It then adds test items of its own. First comes one ``difftest::replay[...]``
item per open saved report of those implementations. Then comes one
``difftest::fuzz[NAME-DTYPE-REGION]`` item per implementation, dtype and
region of the parameter space (see difftest.regions), so that pytest-xdist
spreads a campaign over all workers. A failing item prints the report text
and the report's path; a failure of a built-in that is known to be wrong is
reported as xfail. At the end of the session the controller writes
``SUMMARY.md`` into the report folder.

Every option has an ini key and an environment variable; the command line
wins over the environment, which wins over the ini file:

================================  ============================  ============================
command line                      ini key                       environment
================================  ============================  ============================
--difftest-impl SPEC              difftest_impl                 DIFFTEST_IMPL (a,b)
--difftest-max-examples N         difftest_max_examples         DIFFTEST_MAX_EXAMPLES
--difftest-seed S                 difftest_seed                 DIFFTEST_SEED
--difftest-profile NAME           difftest_profile              DIFFTEST_PROFILE
--difftest-report-dir DIR         difftest_report_dir           DIFFTEST_REPORT_DIR
--difftest-dtype DTYPE            difftest_dtype                DIFFTEST_DTYPE (a,b)
--difftest-region NAME            difftest_region               DIFFTEST_REGION (a,b)
--difftest-timeout SECONDS        difftest_timeout              DIFFTEST_TIMEOUT
--difftest-threads N              difftest_threads              DIFFTEST_THREADS
--difftest-max-elements N         difftest_max_elements         DIFFTEST_MAX_ELEMENTS
--difftest-memory-budget MIB      difftest_memory_budget        DIFFTEST_MEMORY_BUDGET
--difftest-max-shrink-timeouts N  difftest_max_shrink_timeouts  DIFFTEST_MAX_SHRINK_TIMEOUTS
--difftest-no-replay              difftest_no_replay            DIFFTEST_NO_REPLAY=1
--difftest-no-isolate             difftest_no_isolate           DIFFTEST_NO_ISOLATE=1
--difftest-no-invalid             difftest_no_invalid           DIFFTEST_NO_INVALID=1
--difftest-check-determinism      difftest_check_determinism    DIFFTEST_CHECK_DETERMINISM=1
================================  ============================  ============================

Bad values, implementations that cannot be loaded, the same implementation
named twice and report folders that cannot be written stop the run when
pytest starts, before any xdist worker does: one ``ERROR:`` line names the
option and the value, and pytest exits with its usage-error status (4).

An implementation that supports none of the ``--difftest-dtype`` dtypes, or
none of whose declared devices is present on this machine, gets no search
items, and a line of the terminal summary names it and the reason. Its saved
reports are still replayed unless the missing device is the reason. When
that leaves no implementation at all, the run stops with a usage error.

``--difftest-max-examples`` counts per item. A relative report folder is
taken relative to pytest's rootdir and created when missing. ``--difftest-seed`` makes every item
repeatable but, as Hypothesis's ``@seed`` does, turns the example database
off. In an xdist worker each item runs torch on one thread unless
``--difftest-threads`` says otherwise: with a thread per core in every
worker, the workers oversubscribe the cores and small convolutions slow
down. The invalid-call search (difftest.invalid) runs once per
implementation and dtype, in the first region item, unless
``--difftest-no-invalid`` turns it off. ``--difftest-memory-budget`` is in
MiB per worker: cases estimated to need more are skipped, and an isolated
call may grow its worker process by at most that much. Without it there is
no budget (``difftest fuzz`` defaults to half the physical memory instead).
``--difftest-check-determinism`` runs each case twice and reports answers
that change between calls as 'nondeterministic'.

A property test of your own takes the ``difftest_check`` fixture, which
evaluates one case and fails with the report text::

    from hypothesis import given, settings
    from strategies import conv_cases

    from mypackage.conv import conv2d

    @settings(deadline=None)
    @given(case=conv_cases(dtypes={"float32"}, allow_dilation=False))
    def test_conv2d_matches_torch(difftest_check, case):
        difftest_check(conv2d, case)

The plugin registers difftest's Hypothesis profiles when pytest starts, so
``pytest --hypothesis-profile difftest-ci`` applies one to such tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import pytest

import difftest.profiles  # noqa: F401  (registers the profiles before Hypothesis's plugin loads one)
from difftest.case import DTYPES, ConvCase
from difftest.errors import DifftestError, MemoryBudgetError, SupportsError, UsageError, WriteError
from difftest.fuzz import NarrowingGap
from difftest.isolation import MAX_TIMEOUT
from difftest.registry import Implementation

__all__ = ["DifftestFinding", "Checker", "PluginSettings", "settings_from_config", "difftest_check"]


@dataclass(frozen=True)
class _Option:
    """One plugin option: its command-line flag, ini key and environment variable derive from ``name``."""

    name: str
    kind: str  # "list", "int", "seconds", "mib", "str" or "flag"
    help: str
    metavar: str = ""

    @property
    def flag(self) -> str:
        return "--difftest-" + self.name.replace("_", "-")

    @property
    def ini(self) -> str:
        return "difftest_" + self.name

    @property
    def env(self) -> str:
        return "DIFFTEST_" + self.name.upper()


_OPTIONS = (
    _Option("impl", "list", "implementation to fuzz: a registered name, MODULE:FUNCTION or path/to/file.py:FUNCTION "
            "(repeatable)", "SPEC"),
    _Option("max_examples", "int", "examples per test item (default: the profile's)", "N"),
    _Option("seed", "int", "fix Hypothesis's random choices for every item", "S"),
    _Option("profile", "str", "Hypothesis settings profile: difftest-dev (default), difftest-ci, difftest-thorough "
            "or one the project registered", "NAME"),
    _Option("report_dir", "str", "folder for failure reports and SUMMARY.md (default: reports under the rootdir)",
            "DIR"),
    _Option("dtype", "list", f"only fuzz this dtype ({', '.join(DTYPES)}; repeatable)", "DTYPE"),
    _Option("region", "list", "only fuzz this region of the parameter space (repeatable; see difftest.regions)",
            "NAME"),
    _Option("timeout", "seconds", "time limit in seconds per call of an isolated implementation (default 60)",
            "SECONDS"),
    _Option("threads", "int", "torch intra-op threads while an item runs (default: 1 in an xdist worker, "
            "else unchanged)", "N"),
    _Option("max_elements", "int", "generate no case whose input, weight or output has more than N elements "
            "(default: no bound beyond the regions' size limits)", "N"),
    _Option("memory_budget", "mib", "MiB a case may use: cases estimated to need more are skipped, and an isolated "
            "call may grow its worker process by at most this much (default: no budget)", "MIB"),
    _Option("max_shrink_timeouts", "int", "stop shrinking a failure after N calls have timed out, each costing a "
            "full timeout, and report the smallest failure so far (default 8)", "N"),
    _Option("no_replay", "flag", "do not replay the open reports in the report folder"),
    _Option("no_isolate", "flag", "run implementations in the pytest process instead of a worker process"),
    _Option("no_invalid", "flag", "skip the search of invalid calls (by default each implementation must raise "
            "where torch's conv2d raises, and must not raise where torch returns a result)"),
    _Option("check_determinism", "flag", "run each case twice and report answers that differ by more than the "
            "bound"),
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

# The largest time limit an isolated call accepts.
_MAX_TIMEOUT = MAX_TIMEOUT

# torch.set_num_threads takes a C int and raises ValueError above this.
_MAX_THREADS = 2**31 - 1


@dataclass
class PluginSettings:
    """The plugin's options after merging the command line, the environment and the ini file."""

    impls: list[str] = field(default_factory=list)
    impl_source: str = "--difftest-impl"
    max_examples: Optional[int] = None
    seed: Optional[int] = None
    profile: str = "difftest-dev"
    report_dir: str = "reports"
    report_dir_given: bool = False
    report_dir_source: str = "--difftest-report-dir"
    dtype_source: str = "--difftest-dtype"
    dtypes: list[str] = field(default_factory=list)
    regions: list[str] = field(default_factory=list)
    timeout: float = 60.0
    threads: Optional[int] = None
    replay: bool = True
    isolate: Optional[bool] = None
    max_elements: Optional[int] = None
    # Bytes, converted from the option's MiB.
    memory_budget: Optional[int] = None
    max_shrink_timeouts: Optional[int] = None
    check_invalid: bool = True
    check_determinism: bool = False

    @property
    def active(self) -> bool:
        return bool(self.impls)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("difftest", "differential testing of conv2d implementations against torch")
    for option in _OPTIONS:
        help_text = f"{option.help} [ini {option.ini}, env {option.env}]"
        if option.kind == "flag":
            group.addoption(option.flag, action="store_true", default=None, dest=f"difftest_{option.name}",
                            help=help_text)
            parser.addini(option.ini, option.help, type="bool", default=False)
        elif option.kind == "list":
            group.addoption(option.flag, action="append", default=None, dest=f"difftest_{option.name}",
                            metavar=option.metavar, help=help_text)
            parser.addini(option.ini, option.help + " (one per line)", type="linelist", default=[])
        else:
            group.addoption(option.flag, default=None, dest=f"difftest_{option.name}", metavar=option.metavar,
                            help=help_text)
            parser.addini(option.ini, option.help, type="string", default="")


def _raw_value(config: pytest.Config, option: _Option) -> tuple[Any, str]:
    """Return the option's raw value and where it came from: command line, then environment, then ini."""
    value = config.getoption(f"difftest_{option.name}")
    if value is not None:
        return value, option.flag
    if os.environ.get(option.env) is not None:
        text = os.environ[option.env]
        if option.kind == "list":
            return [part for part in text.replace(",", " ").split() if part], option.env
        return text, option.env
    try:
        value = config.getini(option.ini)
    except (ValueError, pytest.UsageError) as error:
        # pytest parses a bool ini value itself. Its error (UsageError in
        # pytest 9.2, the parser's bare ValueError where pytest does not wrap
        # it) names neither the key nor the choices.
        raise pytest.UsageError(f"{option.ini} is invalid: {error}. use true or false") from None
    if value in ("", [], False, None):
        return None, option.ini
    return value, option.ini


def _convert(option: _Option, value: Any, source: str) -> Any:
    if value is None:
        return None
    try:
        if option.kind == "int":
            number = int(value)
            if number < (0 if option.name == "seed" else 1):
                raise ValueError
            if option.name == "threads" and number > _MAX_THREADS:
                raise ValueError
            return number
        if option.kind == "seconds":
            seconds = float(value)
            if not (math.isfinite(seconds) and 0 < seconds <= _MAX_TIMEOUT):
                raise ValueError
            return seconds
        if option.kind == "mib":
            # The isolation worker's limit is a whole number of bytes above 0.
            mebibytes = float(value)
            if not (math.isfinite(mebibytes) and int(mebibytes * 2**20) >= 1):
                raise ValueError
            return int(mebibytes * 2**20)
    except ValueError:
        raise pytest.UsageError(f"{source}={value!r} is invalid: expected {_expected(option)}") from None
    if option.kind == "flag" and isinstance(value, str):
        if value.strip().lower() not in _TRUE | _FALSE:
            raise pytest.UsageError(f"{source}={value!r} is invalid: expected 1 or 0")
        return value.strip().lower() in _TRUE
    return value


def _expected(option: _Option) -> str:
    """Return what a valid value of a numeric option is, for its error message."""
    if option.name == "seed":
        return "an integer of 0 or more"
    if option.name == "threads":
        return f"a positive integer of at most {_MAX_THREADS}"
    if option.kind == "seconds":
        return f"a number of seconds above 0 and at most {_MAX_TIMEOUT} (about 24 days)"
    if option.kind == "mib":
        return "a finite number of MiB of at least one byte"
    return "a positive integer"


def settings_from_config(config: pytest.Config) -> PluginSettings:
    """Merge the plugin's options (command line, then environment, then ini) and check them."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in _OPTIONS:
        raw, source = _raw_value(config, option)
        values[option.name] = _convert(option, raw, source)
        sources[option.name] = source

    if values["timeout"] is not None and values["no_isolate"]:
        # As on the command line: a time limit that cannot apply is an error, not a silent no-op.
        timeout, no_isolate = sources["timeout"], sources["no_isolate"]
        raise pytest.UsageError(f"{timeout}='{values['timeout']:g}' is invalid: {no_isolate} runs every "
                                "implementation in the pytest process, where a call cannot be stopped. drop "
                                f"{no_isolate} to run calls in a worker process that the time limit applies to, or "
                                f"drop {timeout}")

    settings = PluginSettings(impls=list(values["impl"] or []), impl_source=sources["impl"],
                              max_examples=values["max_examples"],
                              seed=values["seed"], dtypes=list(values["dtype"] or []),
                              regions=list(values["region"] or []), replay=not values["no_replay"],
                              isolate=False if values["no_isolate"] else None,
                              max_elements=values["max_elements"], memory_budget=values["memory_budget"],
                              max_shrink_timeouts=values["max_shrink_timeouts"],
                              check_invalid=not values["no_invalid"],
                              check_determinism=bool(values["check_determinism"]))
    if values["profile"]:
        settings.profile = values["profile"]
    if values["timeout"] is not None:
        settings.timeout = values["timeout"]
    settings.threads = values["threads"]
    if values["report_dir"]:
        settings.report_dir, settings.report_dir_given = values["report_dir"], True
    settings.report_dir_source = sources["report_dir"]
    settings.dtype_source = sources["dtype"]
    settings.report_dir = os.path.join(str(config.rootpath), os.path.expanduser(settings.report_dir))

    _check(settings, sources)
    return settings


def _check(settings: PluginSettings, sources: dict[str, str]) -> None:
    from difftest.profiles import get_profile
    from difftest.regions import REGIONS

    for dtype in settings.dtypes:
        if dtype not in DTYPES:
            raise pytest.UsageError(f"{sources['dtype']}={dtype!r} is invalid: expected one of {', '.join(DTYPES)}")
    for region in settings.regions:
        if region not in REGIONS:
            raise pytest.UsageError(f"{sources['region']}={region!r} is invalid: expected one of "
                                    f"{', '.join(REGIONS)}")
    try:
        get_profile(settings.profile)
    except DifftestError as error:
        raise _usage_error(sources["profile"], settings.profile, error) from None


def _usage_error(source: str, value: Any, error: DifftestError) -> pytest.UsageError:
    """Return pytest's usage error for a bad option value, naming the flag, ini key or variable it came from."""
    if isinstance(error, SupportsError):
        # The error is about the implementation's declaration, not about the option's value itself.
        return pytest.UsageError(f"{source}={value!r}: {error}")
    if isinstance(error, UsageError):
        fix = f". {error.fix}" if error.fix else ""
        return pytest.UsageError(f"{source}={value!r} is invalid: {error.reason}{fix}")
    return pytest.UsageError(f"{source}={value!r} is invalid: {error}")


_SETTINGS = pytest.StashKey[PluginSettings]()
_IMPLEMENTATIONS = pytest.StashKey["list[Implementation]"]()
_SKIPPED = pytest.StashKey["dict[str, NarrowingGap]"]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "difftest: a replay or search item added by the difftest plugin")
    settings = settings_from_config(config)
    config.stash[_SETTINGS] = settings
    # Every bad value must be found here, before pytest-xdist starts its
    # workers: the controller collects nothing under -n, and a worker's
    # usage error during collection reaches the user as "no tests ran" or
    # an internal error, without the message.
    if settings.active:
        specs = _load_implementations(settings)
        implementations = list(specs.values())
        config.stash[_IMPLEMENTATIONS] = implementations
        config.stash[_SKIPPED] = _skipped_implementations(settings, specs)
    _check_report_dir(settings)


def _check_report_dir(settings: PluginSettings) -> None:
    """Create the report folder of an active run and check that it is writable; raise pytest's usage error if not.

    The error shows the folder's full path, because a relative one is taken
    relative to the rootdir, not the working directory. An idle run (no
    implementation named) only rejects a path that exists and is not a
    folder, so that naming a folder in the ini file does not create it in
    every plain pytest run.
    """
    from difftest.reports import ensure_report_dir

    path = settings.report_dir
    if settings.active:
        try:
            ensure_report_dir(path)
        except DifftestError as error:
            raise _usage_error(settings.report_dir_source, path, error) from None
    elif settings.report_dir_given and os.path.exists(path) and not os.path.isdir(path):
        raise pytest.UsageError(f"{settings.report_dir_source}={path!r} is invalid: is a file, not a folder. "
                                "pass a folder you can write to")


def _load_implementations(settings: PluginSettings) -> dict[str, Implementation]:
    """Load every named implementation, keyed by its spec; raise pytest's usage error when two share a name.

    Two implementations of one name would give items of the same name, as
    would one spec given twice, so both are rejected as the command line
    rejects them.
    """
    source = settings.impl_source
    specs: dict[str, Implementation] = {}
    by_name: dict[str, str] = {}
    for spec in settings.impls:
        if spec in specs:
            raise pytest.UsageError(f"{source}={spec!r} is invalid: given more than once. pass each "
                                    "implementation once")
        implementation = _load(spec, settings)
        other = by_name.setdefault(implementation.name, spec)
        if other != spec:
            target = specs[other].target
            if target == implementation.target:
                raise pytest.UsageError(f"{source}={spec!r} is invalid: loads {target}, as {other!r} does. pass "
                                        "each implementation once")
            raise pytest.UsageError(
                f"{source}: {target} and {implementation.target} are both named "
                f"{implementation.name!r}, so their items would share names. Give one a "
                "difftest_supports = {'name': ...} declaration")
        specs[spec] = implementation
    return specs


def _skipped_implementations(settings: PluginSettings, specs: dict[str, Implementation]) -> dict[str, NarrowingGap]:
    """Find the implementations that the dtypes or this machine's devices leave nothing to search, keyed by name.

    Raise pytest's usage error when that is every implementation, as
    ``difftest fuzz`` does, because the run would otherwise collect nothing
    from them and exit without saying why.
    """
    from difftest.fuzz import narrowing_gap

    skipped: dict[str, NarrowingGap] = {}
    for implementation in specs.values():
        gap = narrowing_gap(implementation, {"dtypes": settings.dtypes})
        if gap is not None:
            skipped[implementation.name] = gap
    if skipped and len(skipped) == len(specs):
        raise _nothing_left(settings, specs, skipped)
    return skipped


def _nothing_left(settings: PluginSettings, specs: dict[str, Implementation],
                  skipped: dict[str, NarrowingGap]) -> pytest.UsageError:
    """Return the usage error for narrowing that leaves every implementation nothing to search.

    It names --difftest-dtype (or its ini key or variable) when the dtypes
    leave any implementation nothing, and else --difftest-impl, since no
    device option narrows the devices.
    """
    by_dtype = [name for name, skip in skipped.items() if skip.name == "dtypes"]
    if by_dtype:
        source, value = settings.dtype_source, ", ".join(dict.fromkeys(settings.dtypes))
        allowed = sorted({d for name in by_dtype for d in skipped[name].allowed}, key=DTYPES.index)
        fix = f"pick {source} from {', '.join(allowed)}"
    else:
        source, value = settings.impl_source, ", ".join(specs)
        fix = f"run on a machine with {' or '.join(sorted({d for s in skipped.values() for d in s.allowed}))}"
    if len(skipped) == 1:
        [(name, skip)] = skipped.items()
        return pytest.UsageError(f"{source}={value!r} is invalid: {name} {skip.reason()}. {fix}")
    reasons = ", and ".join(f"{name} {skip.reason()}" for name, skip in skipped.items())
    return pytest.UsageError(f"{source}={value!r} is invalid: it leaves no implementation to fuzz, because "
                             f"{reasons}. {fix}")


def _load(spec: str, settings: PluginSettings) -> Implementation:
    from difftest.registry import load

    try:
        implementation = load(spec)
    except DifftestError as error:
        raise _usage_error(settings.impl_source, spec, error) from None
    if settings.isolate is not None:
        implementation = dataclasses.replace(implementation, isolate=settings.isolate)
    return implementation


def pytest_report_header(config: pytest.Config) -> Optional[str]:
    settings = config.stash.get(_SETTINGS, None)
    if settings is None or not settings.active:
        return None
    examples = settings.max_examples if settings.max_examples is not None else "the profile's"
    return (f"difftest: {', '.join(settings.impls)}; profile {settings.profile}; {examples} examples per item; "
            f"reports in {settings.report_dir}")


# Collection -----------------------------------------------------------------------


class DifftestFinding(AssertionError):
    """A failure found by a difftest item or by difftest_check; its text is the report text."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class _Campaign(pytest.Collector):
    """The plugin's items: replays of open reports first, then one search per implementation, dtype and region."""

    def collect(self) -> Iterator[pytest.Item]:
        from difftest.campaign import open_reports
        from difftest.regions import REGIONS, region_strategy
        from difftest.reports import load_report

        settings = self.config.stash[_SETTINGS]
        implementations = self.config.stash[_IMPLEMENTATIONS]
        skipped = self.config.stash[_SKIPPED]
        by_target = {implementation.target: implementation for implementation in implementations}

        if settings.replay:
            # A report of an implementation whose devices are missing here could only fail on replay.
            replayable = [implementation for implementation in implementations
                          if implementation.name not in skipped or skipped[implementation.name].name != "devices"]
            for path in open_reports(settings.report_dir, replayable):
                implementation = by_target[load_report(path)["implementation"]["target"]]
                name = os.path.splitext(os.path.basename(path))[0]
                yield _ReplayItem.from_parent(self, name=f"replay[{name}]", report=path,
                                              implementation=implementation)

        regions = list(dict.fromkeys(settings.regions)) or list(REGIONS)
        for implementation in implementations:
            if implementation.name in skipped:
                continue
            dtypes = [d for d in DTYPES if d in implementation.supports.dtypes
                      and (not settings.dtypes or d in settings.dtypes)]
            for dtype in dtypes:
                first = True
                for region in regions:
                    strategy = region_strategy(region, implementation.supports)
                    if strategy is None:
                        continue
                    yield _FuzzItem.from_parent(self, name=f"fuzz[{implementation.name}-{dtype}-{region}]",
                                                implementation=implementation, dtype=dtype, region=region,
                                                strategy={**strategy, "dtypes": (dtype,)}, check_invalid=first)
                    first = False


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    # tryfirst, so that -k and --deselect, which run in later implementations
    # of this hook, see the plugin's items too.
    settings = config.stash[_SETTINGS]
    if not settings.active:
        return
    campaign = _Campaign.from_parent(session, name="difftest", nodeid="difftest")
    added = list(campaign.collect())
    # Report them as collected, so that the count pytest prints includes them.
    report = pytest.CollectReport(campaign.nodeid, "passed", None, added)
    config.hook.pytest_collectreport(report=report)
    items[:0] = added


class _DifftestItem(pytest.Item):
    def __init__(self, *, implementation: Implementation, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.implementation = implementation
        self.add_marker("difftest")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, DifftestFinding):
            return excinfo.value.text
        if isinstance(excinfo.value, WriteError):
            # A report folder that stopped being writable mid-run is the user's to fix, not a difftest bug.
            return f"difftest: {excinfo.value}"
        if isinstance(excinfo.value, MemoryBudgetError):
            # fuzz raises it when Hypothesis gives up because too many drawn cases were over the budget.
            # The error's own advice names the command line's options, so the text is rebuilt here.
            error = excinfo.value
            return (f"difftest: too many cases exceed the memory budget. The first, {error.case}, needs an estimated "
                    f"{error.needed} bytes, more than the budget of {error.budget} bytes. Lower "
                    "--difftest-max-elements or raise --difftest-memory-budget")
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Any, Optional[int], str]:
        return self.path, None, self.nodeid


class _ReplayItem(_DifftestItem):
    """Replay one saved report; it passes once the failure is fixed, and the report is marked 'fixed'."""

    def __init__(self, *, report: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.report = report

    def runtest(self) -> None:
        from difftest.replay import replay_path
        from difftest.reports import load_report
        from difftest.text import format_report

        result = replay_path(self.report)
        if result.status == "fixed":
            return
        if result.status == "invalid":
            raise DifftestFinding(f"cannot replay {self.report}: {result.error}")
        assert result.outcome is not None
        if self.implementation.expected_to_fail:
            pytest.xfail(f"known bad {self.implementation.name} still gives {result.outcome.verdict} "
                         f"({self.report})")
        text = format_report(load_report(self.report))
        raise DifftestFinding(f"{text}\nStill fails on replay: {result.outcome.verdict}: {result.outcome.detail}\n"
                              f"Report: {self.report}")


class _FuzzItem(_DifftestItem):
    """Search one region of one dtype for a case where the implementation disagrees with the truth."""

    def __init__(self, *, dtype: str, region: str, strategy: dict[str, Any], check_invalid: bool,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dtype = dtype
        self.region = region
        self.strategy = strategy
        self.check_invalid = check_invalid

    def runtest(self) -> None:
        from difftest.fuzz import FuzzOptions, _NamespacedDatabase, fuzz_implementation
        from difftest.profiles import example_database, max_examples_of
        from difftest.reports import load_report
        from difftest.text import format_report

        settings = self.config.stash[_SETTINGS]
        # Every item runs the same Hypothesis test function, so examples are
        # kept apart by dtype and region here, and by implementation in fuzz.
        # All workers share the one folder under the rootdir.
        database = example_database(settings.profile, str(self.config.rootpath))
        if database is not None:
            database = _NamespacedDatabase(database, f"{self.dtype}/{self.region}")
        strategy = dict(self.strategy)
        if settings.max_elements is not None:
            strategy["max_elements"] = settings.max_elements
        options = FuzzOptions(
            max_examples=max_examples_of(settings.profile, settings.max_examples),
            seed=settings.seed,
            report_dir=settings.report_dir,
            database=database,
            profile=settings.profile,
            timeout=settings.timeout,
            memory_budget=settings.memory_budget,
            check_determinism=settings.check_determinism,
            **({} if settings.max_shrink_timeouts is None else {"max_shrink_timeouts": settings.max_shrink_timeouts}),
            strategy=strategy,
            check_invalid=self.check_invalid and settings.check_invalid,
        )
        with _torch_threads(settings.threads or (1 if _in_worker(self.config) else None)):
            result = fuzz_implementation(self.implementation, options)
        self.user_properties.append(("examples", result.examples))
        if result.note:
            self.user_properties.append(("note", result.note))
        if not result.failed:
            return
        assert result.outcome is not None and result.report is not None
        if self.implementation.expected_to_fail:
            pytest.xfail(f"known bad {self.implementation.name}: {result.verdict} on "
                         f"{result.outcome.case.describe()} ({result.report})")
        text = format_report(load_report(result.report))
        # The note explains a search cut short, for example when shrinking
        # stopped on timeouts and the case may not be minimal.
        note = f"\nNote: {result.note}" if result.note else ""
        raise DifftestFinding(f"{text}{note}\nReport: {result.report}\nScript: {result.script}")


def _in_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


@contextlib.contextmanager
def _torch_threads(threads: Optional[int]) -> Iterator[None]:
    """Run torch with ``threads`` intra-op threads inside the block (None leaves the count alone)."""
    import torch

    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# The session's end -----------------------------------------------------------------


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    settings = config.stash.get(_SETTINGS, None)
    # Only the controller writes the page; xdist workers carry 'workerinput'.
    if settings is None or _in_worker(config):
        return
    if not (settings.active or (settings.report_dir_given and os.path.isdir(settings.report_dir))):
        return
    from difftest.campaign import write_summary

    try:
        config.stash[_SUMMARY] = write_summary(settings.report_dir)
    except WriteError as error:
        config.stash[_SUMMARY] = f"not written: {error}"


_SUMMARY = pytest.StashKey[str]()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    # In the summary rather than the header, which -q hides.
    skipped = config.stash.get(_SKIPPED, {})
    if skipped:
        reasons = ", ".join(f"{name} ({skip.reason()})" for name, skip in skipped.items())
        terminalreporter.write_line(f"difftest: no search items for {reasons}")
    path = config.stash.get(_SUMMARY, None)
    if path is not None:
        terminalreporter.write_line(f"difftest summary: {path}")


# A fixture for property tests of your own ------------------------------------------


class Checker:
    """Evaluate one case through an implementation and fail with the report text when it disagrees.

    ``implementation`` is a registered name, a ``MODULE:FUNCTION`` spec, an
    :class:`~difftest.Implementation`, or a plain function, which is registered
    under its own name and run in-process; ``supports`` adds to its
    declaration. The report of a failure is written once per Hypothesis
    failure, on the final replay of the shrunk example, so shrinking leaves
    no trail of intermediate reports.
    """

    def __init__(self, report_dir: Optional[str] = None) -> None:
        self.report_dir = report_dir
        self._implementations: dict[Any, Implementation] = {}

    def __call__(self, implementation: Any, case: ConvCase, *, check_determinism: bool = False,
                 **supports: Any) -> Any:
        __tracebackhide__ = True
        from difftest.reports import report_dict, write_report
        from difftest.runner import evaluate
        from difftest.text import format_report

        resolved = self._resolve(implementation, supports)
        outcome = evaluate(resolved, case, check_determinism=check_determinism)
        if outcome.passed:
            return outcome
        data = report_dict(outcome, resolved)
        where = ""
        if self.report_dir is not None and _final_run():
            json_path, _ = write_report(self.report_dir, data)
            where = f"\nReport: {json_path}"
        raise DifftestFinding(format_report(data) + where)

    def _resolve(self, implementation: Any, supports: dict[str, Any]) -> Implementation:
        from difftest.registry import declared_supports, load, register

        if isinstance(implementation, Implementation):
            return implementation
        key = (implementation if isinstance(implementation, str) else id(implementation),
               tuple(sorted(supports.items(), key=str)))
        if key not in self._implementations:
            if isinstance(implementation, str):
                resolved = load(implementation, **supports)
            elif callable(implementation):
                label = getattr(implementation, "__name__", "implementation")
                declared = {**declared_supports(implementation, label), **supports}
                declared.pop("isolate", None)
                name = declared.pop("name", None) or label
                resolved = register(name, implementation, **declared)
            else:
                raise TypeError(f"difftest_check: implementation={implementation!r} is not a registered name, "
                                "a MODULE:FUNCTION spec, an Implementation or a function")
            self._implementations[key] = resolved
        return self._implementations[key]


def _final_run() -> bool:
    """Return whether this call is the one whose failure Hypothesis reports (or runs outside Hypothesis)."""
    from hypothesis.control import current_build_context
    from hypothesis.errors import InvalidArgument

    try:
        return bool(current_build_context().is_final)
    except InvalidArgument:
        return True


@pytest.fixture(scope="session")
def difftest_check(pytestconfig: pytest.Config) -> Callable[..., Any]:
    """Return a :class:`Checker`: ``difftest_check(conv, case)`` fails with the report text when they disagree.

    Session-scoped, so Hypothesis's ``@given`` accepts it beside drawn arguments.
    Reports go to the plugin's report folder.
    """
    settings = pytestconfig.stash[_SETTINGS]
    return Checker(settings.report_dir)
