"""Our own dialogue format: JSON Lines, exactly one ``Dialogue.model_dump_json()`` per line."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import ValidationError

from csc.data.errors import Hint, RecordLocation
from csc.data.records import iter_jsonl
from csc.data.turns import as_framework, check_dialogue
from csc.dialogue import Dialogue
from csc.framework import Framework


def read_jsonl(
    path: str | Path, *, framework: Framework | str = "csc", allow_unlabelled: bool = False
) -> Iterator[Dialogue]:
    """Stream dialogues from a JSONL file, line by line; strategies are checked and made codes.

    Raises :class:`DataFormatError` naming the line, record and field of the first bad record.
    """
    fw = as_framework(framework)
    for loc, obj in iter_jsonl(path):
        yield parse_dialogue(obj, loc, fw, allow_unlabelled=allow_unlabelled)


def parse_dialogue(
    obj: Any, loc: RecordLocation, framework: Framework, *, allow_unlabelled: bool = False
) -> Dialogue:
    """One JSON object in our format as a checked :class:`Dialogue`."""
    if not isinstance(obj, dict):
        raise loc.error(
            f"a record must be a JSON object, got {type(obj).__name__}",
            fix="each line must be one dialogue object as written by Dialogue.model_dump_json()",
        )
    try:
        dialogue = Dialogue.model_validate(obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = _field_path(err["loc"])
        problem = err["msg"].replace("Field required", "missing field")
        if err["type"] == "extra_forbidden":
            problem = "unknown field"
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise loc.error(
            problem + more,
            field=field,
            fix="records need 'id' and 'turns' of {speaker: supporter|customer, text, strategy}",
            hints=[
                Hint(
                    "--from",
                    "; if this is the released DianJin format, read it as dianjin",
                    "format='dianjin'",
                    " dianjin",
                )
            ],
        ) from None
    return check_dialogue(dialogue, framework, loc, allow_unlabelled=allow_unlabelled)


def _field_path(parts: tuple[Any, ...]) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(record)"


def write_jsonl(dialogues: Iterable[Dialogue], path: str | Path) -> int:
    """Write dialogues to a new JSONL file (replacing it); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    count = 0
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for dialogue in dialogues:
                f.write(dialogue.model_dump_json() + "\n")
                count += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return count


class JsonlWriter:
    """Append dialogues to a JSONL file one line at a time, durable after each ``write``.

    Every line is flushed and fsynced, so a process killed mid-run loses at most the dialogue it
    was writing. Opening in append mode repairs such a kill: a trailing partial line (no final
    newline) is cut off with a warning, so the file stays valid JSONL and the run can resume::

        with JsonlWriter("out/rolecs.jsonl") as out:
            for dialogue in simulate():
                out.write(dialogue)
    """

    def __init__(self, path: str | Path, append: bool = True):
        self.path = Path(path)
        self.append = append
        self.written = 0
        self._file: Any = None

    def open(self) -> JsonlWriter:
        """Open the file (also done by ``with``)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.append and self.path.exists():
            self._drop_partial_line()
        self._file = self.path.open("a" if self.append else "w", encoding="utf-8")
        return self

    def _drop_partial_line(self) -> None:
        with self.path.open("rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            # Walk back to the last newline; everything after it is an interrupted write.
            pos = size
            while pos > 0:
                step = min(65536, pos)
                f.seek(pos - step)
                chunk = f.read(step)
                cut = chunk.rfind(b"\n")
                if cut >= 0:
                    pos = pos - step + cut + 1
                    break
                pos -= step
            warnings.warn(
                f"{self.path}: dropped an incomplete last line ({size - pos} bytes) left by an "
                "interrupted write",
                stacklevel=3,
            )
            f.truncate(pos)

    def write(self, dialogue: Dialogue) -> None:
        """Append one dialogue as a line, then flush and fsync."""
        if self._file is None:
            raise RuntimeError("JsonlWriter is not open; use it as a context manager")
        self._file.write(dialogue.model_dump_json() + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.written += 1

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> JsonlWriter:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
