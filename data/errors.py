"""The error every dialogue reader raises on malformed input, and where in a file it happened."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class DataFormatError(ValueError):
    """Input that does not match its dialogue format.

    The message names the file, the record (1-based; plus the line for line-based files), the
    field, what is wrong and what to do about it. The same parts are attributes, for programs.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        record: int | None = None,
        line: int | None = None,
        field: str | None = None,
    ):
        super().__init__(message)
        self.path = path
        self.record = record
        self.line = line
        self.field = field


@dataclass(frozen=True)
class RecordLocation:
    """Where a raw record came from: file, 1-based record number, and line (JSONL only)."""

    path: str
    record: int | None = None
    line: int | None = None

    def describe(self) -> str:
        """``data.jsonl: record 3 (line 4)``; just the file when no record is known."""
        text = self.path
        if self.record is not None:
            text += f": record {self.record}"
            if self.line is not None:
                text += f" (line {self.line})"
        return text

    def error(self, problem: str, *, field: str | None = None, fix: str = "") -> DataFormatError:
        """A :class:`DataFormatError` for this record, naming the field and the fix."""
        message = self.describe()
        if field:
            message += f", field '{field}'"
        message += f": {problem}"
        if fix:
            message += f" — {fix}"
        return DataFormatError(
            message, path=self.path, record=self.record, line=self.line, field=field
        )


def file_location(path: str | Path) -> RecordLocation:
    """A location naming only the file, for errors about the file as a whole."""
    return RecordLocation(str(path))
