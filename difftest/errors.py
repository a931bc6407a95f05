"""Exceptions raised by difftest.

Every exception derives from :class:`DifftestError`. Each keeps its data as
attributes and pickles cleanly, because errors cross pytest-xdist workers and
isolation subprocesses.
"""

from __future__ import annotations

import os

__all__ = [
    "DifftestError",
    "UsageError",
    "SupportsError",
    "ReportError",
    "UnsupportedCaseError",
    "MemoryBudgetError",
    "WriteError",
]


class DifftestError(Exception):
    """Root of every error difftest raises on purpose."""


class UsageError(DifftestError):
    """A value given to difftest is invalid.

    ``name`` and ``value`` identify the bad value and ``fix`` tells the user what to do next.
    The message is one line: ``name=value is invalid: reason. fix``.
    """

    def __init__(self, name: str, value: object, reason: str, fix: str = "") -> None:
        self.name = name
        self.value = value
        self.reason = reason
        self.fix = fix
        super().__init__(name, value, reason, fix)

    def __str__(self) -> str:
        message = f"{self.name}={self.value!r} is invalid: {self.reason}"
        if self.fix:
            message += f". {self.fix}"
        return message


class SupportsError(UsageError):
    """An invalid entry in an implementation's declaration (``difftest_supports`` or a keyword of ``register``).

    ``implementation`` is the implementation's name and ``name`` the declaration key.
    The message is one line: ``implementation 'conv': groups='no' is invalid: reason. fix``.
    """

    def __init__(self, implementation: str, name: str, value: object, reason: str, fix: str = "") -> None:
        super().__init__(name, value, reason, fix)
        self.implementation = implementation
        # Exception pickling calls the class with ``args``, so they follow this signature.
        self.args = (implementation, name, value, reason, fix)

    def __str__(self) -> str:
        return f"implementation {self.implementation!r}: {super().__str__()}"


class ReportError(DifftestError):
    """A saved report cannot be read: the file is torn, edited or of another format."""

    def __init__(self, path: str, field: str, reason: str) -> None:
        self.path = path
        self.field = field
        self.reason = reason
        super().__init__(path, field, reason)

    def __str__(self) -> str:
        return f"invalid report {self.path}: field {self.field!r} {self.reason}"


class UnsupportedCaseError(DifftestError):
    """A case lies outside what an implementation declared it supports."""

    def __init__(self, implementation: str, reason: str) -> None:
        self.implementation = implementation
        self.reason = reason
        super().__init__(implementation, reason)

    def __str__(self) -> str:
        return f"implementation {self.implementation!r} does not support this case: {self.reason}"


class MemoryBudgetError(DifftestError):
    """A case would need more memory than the budget allows for its inputs, float64 truth and bound.

    ``needed`` is an estimate in bytes (see difftest._memory), ``budget`` the
    limit in bytes. The case is refused before any of its tensors is built.
    """

    def __init__(self, case: str, needed: int, budget: int) -> None:
        self.case = case
        self.needed = needed
        self.budget = budget
        super().__init__(case, needed, budget)

    def __str__(self) -> str:
        return (f"case {self.case} needs an estimated {_byte_count(self.needed)} for its inputs, float64 truth and "
                f"bound, more than the memory budget of {_byte_count(self.budget)}. "
                "lower --max-elements or raise --memory-budget")


class WriteError(DifftestError):
    """A file cannot be written: its folder is missing, read-only, full or not a folder.

    ``path`` is the file, ``folder`` the folder it was to go into and
    ``reason`` the operating system's message (such as 'Permission denied').
    Callers that know which option named the folder turn this into a UsageError.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(path, reason)

    @property
    def folder(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.reason}. make {self.folder} writable or write elsewhere"


def _byte_count(count: int) -> str:
    """Return a byte count with a binary unit and three significant digits, such as '1.5 GiB'."""
    if count < 1024:
        return f"{count} bytes"
    value = count / 1024
    for unit in ("KiB", "MiB"):
        if value < 1000:
            return f"{value:.3g} {unit}"
        value /= 1024
    return f"{value:.3g} GiB" if value < 1000 else f"{value:.0f} GiB"
