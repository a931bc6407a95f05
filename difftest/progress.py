"""A progress line for long campaigns: examples per second, failures so far and the time left.

The reporter plugs into :class:`difftest.FuzzOptions` as ``on_example`` and
into :func:`difftest.fuzz` as ``on_result``; library code never prints.

>>> import io
>>> reporter = ProgressReporter(io.StringIO(), implementations=2, max_examples=10, clock=lambda: 0.0)
>>> reporter.examples = reporter.current = 5
>>> reporter.status(now=2.0)
'difftest: 5 examples, 2.5/s, 0 failures, about 6s left (1/2 implementations)'
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Optional, TextIO

__all__ = ["ProgressReporter", "format_duration"]


def format_duration(seconds: float) -> str:
    """Return a duration as '42s', '3m05s' or '1h02m'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class ProgressReporter:
    """Write one progress line to ``stream``, at most once per ``interval`` seconds.

    Enabled by default only when ``stream`` is a terminal; there the line is
    redrawn in place with a carriage return, elsewhere each update is a line
    of its own. The budget is ``implementations`` times ``max_examples``; the
    time left is an estimate from the rate so far, and shrinking a failure
    adds examples the budget does not count.
    """

    def __init__(
        self,
        stream: Optional[TextIO] = None,
        *,
        implementations: int = 1,
        max_examples: int = 100,
        interval: float = 0.25,
        enabled: Optional[bool] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.implementations = max(1, implementations)
        self.max_examples = max_examples
        self.interval = interval
        self.enabled = self._is_terminal() if enabled is None else enabled
        self.clock = clock
        self.started = clock()
        self.examples = 0
        self.finished = 0
        self.current = 0
        self.failing: list[str] = []
        self._last = float("-inf")
        self._width = 0

    def _is_terminal(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def on_example(self, outcome: Any) -> None:
        """Count one evaluated example; pass as FuzzOptions.on_example."""
        self.examples += 1
        self.current += 1
        if not outcome.passed and outcome.implementation not in self.failing:
            self.failing.append(outcome.implementation)
        now = self.clock()
        if now - self._last >= self.interval:
            self._last = now
            self._write(self.status(now))

    def on_result(self, result: Any) -> None:
        """Close one implementation's search; pass as fuzz(on_result=...)."""
        self.finished += 1
        self.current = 0

    def status(self, now: Optional[float] = None) -> str:
        """Return the progress line as of ``now`` (default: the clock's time)."""
        now = self.clock() if now is None else now
        elapsed = max(now - self.started, 1e-9)
        rate = self.examples / elapsed
        failures = f"{len(self.failing)} failure{'s' if len(self.failing) != 1 else ''}"
        if self.failing:
            failures += f" ({', '.join(self.failing)})"
        budget = self.implementations * self.max_examples
        # Implementations that share a search count examples together, so
        # the examples run also bound what is done.
        done = max(self.finished * self.max_examples + min(self.current, self.max_examples),
                   min(self.examples, budget))
        remaining = max(0, budget - done)
        left = f"about {format_duration(remaining / rate)} left" if rate > 0 else "time left unknown"
        position = min(self.finished + 1, self.implementations)
        return (f"difftest: {self.examples} examples, {rate:.3g}/s, {failures}, {left} "
                f"({position}/{self.implementations} implementations)")

    def close(self) -> None:
        """End the progress line so that later output starts on a fresh line."""
        if self.enabled and self._width and self._is_terminal():
            self.stream.write("\n")
            self.stream.flush()
        self._width = 0

    def _write(self, line: str) -> None:
        if not self.enabled:
            return
        if self._is_terminal():
            # Pad with spaces so a shorter line fully covers the longer one before it.
            self.stream.write("\r" + line.ljust(self._width))
        else:
            self.stream.write(line + "\n")
        self._width = len(line)
        self.stream.flush()
