"""Hypothesis settings profiles for difftest campaigns: difftest-dev, difftest-ci and difftest-thorough.

The names carry a ``difftest-`` prefix so that they never replace a
project's own ``dev`` or ``ci`` profile. ``difftest fuzz --profile NAME``,
``pytest --difftest-profile NAME`` and :class:`difftest.FuzzOptions` take
them; a property test of your own can load one too::

    from hypothesis import settings
    import difftest.profiles  # registers the profiles

    settings.load_profile("difftest-ci")

Every profile turns the deadline off, because one long reduction can take
longer than Hypothesis's 200 ms default without being slow per element.

difftest-ci uses ``derandomize=True`` and no example database, so the same
code and command find the same examples on every run. A database would make
a run depend on what earlier runs stored, and a CI machine usually starts
without one anyway. Failures found before are not lost: the saved reports
are replayed at the start of every run.
"""

from __future__ import annotations

import os
from typing import Optional

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase
from hypothesis.errors import InvalidArgument

from difftest.errors import UsageError

__all__ = ["PROFILES", "DEFAULT_MAX_EXAMPLES", "register_profiles", "get_profile", "max_examples_of",
           "example_database"]

# Examples per implementation when neither the command line nor a profile sets them.
DEFAULT_MAX_EXAMPLES = 100

# Health checks that misfire on conv cases: drawing a long-reduction case is
# slow by design and its choice sequence is long.
_SUPPRESSED = (HealthCheck.too_slow, HealthCheck.data_too_large)

# Profile name -> (what it is for, settings). database=None means no example
# database; leaving it out keeps Hypothesis's default folder .hypothesis/examples.
PROFILES: dict[str, tuple[str, dict]] = {
    "difftest-dev": (
        "quick local runs: 100 examples, random, remembers failing examples in .hypothesis/",
        dict(max_examples=DEFAULT_MAX_EXAMPLES, deadline=None, derandomize=False, print_blob=False,
             suppress_health_check=_SUPPRESSED),
    ),
    "difftest-ci": (
        "repeatable runs: 300 examples, derandomized, no example database, prints reproduction blobs",
        dict(max_examples=300, deadline=None, derandomize=True, database=None, print_blob=True,
             suppress_health_check=_SUPPRESSED),
    ),
    "difftest-thorough": (
        "long searches: 2000 examples, random, remembers failing examples in .hypothesis/",
        dict(max_examples=2000, deadline=None, derandomize=False, print_blob=True,
             suppress_health_check=_SUPPRESSED),
    ),
}


def register_profiles() -> None:
    """Register the difftest profiles with Hypothesis; calling it again changes nothing."""
    for name, (_, options) in PROFILES.items():
        settings.register_profile(name, **options)


def get_profile(name: str) -> settings:
    """Return the Hypothesis settings profile ``name``: one of difftest's, or one the project registered.

    Raises UsageError naming the known profiles when ``name`` is not registered.
    """
    register_profiles()
    try:
        return settings.get_profile(name)
    except InvalidArgument:
        raise UsageError("--profile", name, "no Hypothesis settings profile of that name is registered",
                         f"choose from {', '.join(PROFILES)} or register it with "
                         "hypothesis.settings.register_profile") from None


def max_examples_of(profile: str | None, requested: int | None = None) -> int:
    """Return the examples per implementation: ``requested`` if given, else the profile's, else the default."""
    if requested is not None:
        return requested
    if profile:
        return get_profile(profile).max_examples
    return DEFAULT_MAX_EXAMPLES



def example_database(profile: str, folder: str) -> Optional[ExampleDatabase]:
    """Return the example database a campaign under ``profile`` uses, or None for none.

    difftest's own profiles store examples in ``folder/.hypothesis/examples``,
    a folder named here rather than Hypothesis's default, which is fixed to
    the working folder at the time Hypothesis was imported. Processes that
    pass the same folder share the database: Hypothesis writes each entry to
    a temporary file and renames it, so parallel workers do not tear entries.
    A derandomized profile gets none, since Hypothesis rejects the pair. A
    profile the project registered keeps its own database.
    """
    chosen = get_profile(profile)
    if chosen.derandomize:
        return None
    if profile in PROFILES:
        if "database" in PROFILES[profile][1]:
            return PROFILES[profile][1]["database"]
        return DirectoryBasedExampleDatabase(os.path.join(os.path.abspath(folder), ".hypothesis", "examples"))
    return chosen.database


register_profiles()
