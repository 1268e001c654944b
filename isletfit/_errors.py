"""The package's own error and warning types.

Every problem with a user's input (a file, an argument, a parameter) is raised as an
[`InputError`][isletfit.InputError] that names where the problem is (file, line, field) and
what was expected, so that a command-line user sees one clear sentence instead of a
traceback. `InputError` subclasses `ValueError`, so `except ValueError` also catches it.
"""

from __future__ import annotations

import os

__all__ = ["DataWarning", "InputError", "IsletfitError"]


class IsletfitError(Exception):
    """Base class of every error isletfit raises on purpose."""


class InputError(IsletfitError, ValueError):
    """A bad input: names the file, line and field, and says what was expected.

    Args:
        message: What is wrong, in one sentence.
        file: The file the problem is in, if any.
        line: The 1-based line number in that file, if known.
        field: The column, argument or parameter name at fault, if any.
        expected: What a valid value looks like.

    Examples:
        >>> err = InputError("not a number", file="p01.csv", line=7, field="glucose_mg_dl",
        ...                  expected="a glucose value in mg/dL, e.g. 112")
        >>> print(err)
        p01.csv, line 7, field 'glucose_mg_dl': not a number (expected a glucose value in mg/dL, e.g. 112)
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | os.PathLike | None = None,
        line: int | None = None,
        field: str | None = None,
        expected: str | None = None,
    ):
        self.message = message
        self.file = None if file is None else os.fspath(file)
        self.line = line
        self.field = field
        self.expected = expected
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.file is not None:
            where.append(self.file)
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        text = ", ".join(where)
        text = f"{text}: {self.message}" if text else self.message
        if self.expected:
            text += f" (expected {self.expected})"
        return text

    def __reduce__(self):
        return (
            _rebuild_input_error,
            (self.message, self.file, self.line, self.field, self.expected),
        )


def _rebuild_input_error(message, file, line, field, expected):
    return InputError(message, file=file, line=line, field=field, expected=expected)


class DataWarning(UserWarning):
    """A recoverable oddity in the input (a few bad rows dropped, duplicates removed)."""
