"""Shared test configuration.

The pytester fixture runs pytest on generated projects. The project's own
property tests run without a deadline: conv2d calls on a loaded two-core CI
machine take hundreds of milliseconds now and then, and a deadline there
would report the machine's load, not a bug.
"""

from __future__ import annotations

from hypothesis import settings

pytest_plugins = ["pytester"]

settings.register_profile("difftest-tests", deadline=None)
settings.load_profile("difftest-tests")
