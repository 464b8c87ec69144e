"""The error every dialogue reader raises on malformed input, and where in a file it happened."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple


class Hint(NamedTuple):
    """One remedy that is an option: ``text (api / flag arg)``, e.g. ``", or allow unlabelled
    supporter turns (allow_unlabelled=True / --allow-unlabelled)"``.

    In the CLI only hints whose flag the running command has are shown, without the Python form,
    so an error never suggests a flag the command lacks.
    """

    flag: str
    text: str
    api: str
    arg: str = ""

    def render(self, flags: Collection[str] | None) -> str:
        if flags is None:
            return f"{self.text} ({self.api} / {self.flag}{self.arg})"
        return f"{self.text} ({self.flag}{self.arg})"


def available_flags() -> Collection[str] | None:
    """The option names of the running CLI command, or None outside the CLI (where hints show
    their Python form too). ``csc.cli`` replaces this function when it is imported."""
    return None


class DataFormatError(ValueError):
    """Input that does not match its dialogue format.

    The message names the file, the record (1-based; plus the line for line-based files), the
    field, what is wrong and what to do about it. The same parts are attributes, for programs.
    Remedies that are options (:class:`Hint`) are shown as the running command spells them.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        record: int | None = None,
        line: int | None = None,
        field: str | None = None,
        hints: Sequence[Hint] = (),
        fallback: str = "",
    ):
        super().__init__(message)
        self.base = message
        self.hints = tuple(hints)
        self.fallback = fallback  # said instead when no hint applies to the running command
        self.path = path
        self.record = record
        self.line = line
        self.field = field

    def message_for(self, flags: Collection[str] | None) -> str:
        """The message with the hints that ``flags`` allow (None: all, in Python and CLI form)."""
        shown = [h for h in self.hints if flags is None or h.flag in flags]
        text = self.base + "".join(h.render(flags) for h in shown)
        if self.hints and not shown and self.fallback:
            text += self.fallback
        return text

    def __str__(self) -> str:
        return self.message_for(available_flags())


@dataclass(frozen=True)
class RecordLocation:
    """Where a raw record came from: file, 1-based record number, and line (JSONL only)."""

    path: str
    record: int | None = None
    line: int | None = None

    def describe(self) -> str:
        """``data.jsonl: record 3 (line 4)``; just the file when no record is known."""
        if self.record is None:
            return self.path
        return f"{self.path}: record {self.record}" + (f" (line {self.line})" if self.line else "")

    def error(
        self,
        problem: str,
        *,
        field: str | None = None,
        fix: str = "",
        hints: Sequence[Hint] = (),
        fallback: str = "",
    ) -> DataFormatError:
        """A :class:`DataFormatError` for this record, naming the field and the fix.

        ``hints`` are further remedies through an option, appended to ``fix``; ``fallback`` is
        appended instead when the running command has none of their flags.
        """
        message = self.describe() + (f", field '{field}'" if field else "") + f": {problem}"
        if fix or hints or fallback:
            message += f" — {fix}"
        return DataFormatError(
            message,
            path=self.path,
            record=self.record,
            line=self.line,
            field=field,
            hints=hints,
            fallback=fallback,
        )


def file_location(path: str | Path) -> RecordLocation:
    """A location naming only the file, for errors about the file as a whole."""
    return RecordLocation(str(path))
