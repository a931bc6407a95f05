"""Implementations registered by installed packages through an entry-point group.

A package declares, in its pyproject.toml::

    [project.entry-points."difftest.implementations"]
    my_conv = "my_package.conv:conv2d"

and ``difftest list`` shows ``my_conv`` with no configuration. The function may
carry a ``difftest_supports`` dict, as for ``--impl``.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from difftest.errors import UsageError

__all__ = ["GROUP", "load_entry_points", "entry_point_errors"]

GROUP = "difftest.implementations"

logger = logging.getLogger(__name__)

_loaded = False
_errors: dict[str, str] = {}


def load_entry_points() -> None:
    """Register every implementation the installed packages declare, once per process.

    A broken entry point is logged and listed by :func:`entry_point_errors`;
    it never stops the others from loading.
    """
    global _loaded
    if _loaded:
        return
    _loaded = True
    from difftest.registry import declared_supports, register

    for entry_point in entry_points(group=GROUP):
        try:
            function = entry_point.load()
            declared = declared_supports(function, entry_point.name)
            declared.pop("name", None)
            isolate = declared.pop("isolate", True)
            register(entry_point.name, function, target=entry_point.value, isolate=isolate, **declared)
        except (Exception, UsageError) as error:
            _errors[entry_point.name] = f"{type(error).__name__}: {error}"
            logger.warning("entry point %s = %s failed to load: %s", entry_point.name, entry_point.value, error)


def entry_point_errors() -> dict[str, str]:
    """Return the entry points that failed to load, with their errors."""
    return dict(_errors)
