"""Exceptions raised by difftest.

Every exception derives from :class:`DifftestError`. Each keeps its data as
attributes and pickles cleanly, because errors cross pytest-xdist workers and
isolation subprocesses.
"""

from __future__ import annotations

__all__ = [
    "DifftestError",
    "UsageError",
    "ReportError",
    "UnsupportedCaseError",
]


class DifftestError(Exception):
    """Root of every error difftest raises on purpose."""


class UsageError(DifftestError):
    """A value given to difftest is invalid.

    ``name`` and ``value`` identify the bad value and ``fix`` says what to do.
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
