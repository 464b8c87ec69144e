"""Our own dialogue format: JSON Lines, exactly one ``Dialogue.model_dump_json()`` per line."""

from __future__ import annotations

import json
import os
import threading
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

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
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        field = path.lstrip(".") or "(record)"
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


def drop_torn_line(path: str | Path) -> int:
    """Cut an incomplete last line (no final newline) left by a process killed mid-write.

    Every append-only JSONL file of csc (run outputs, failure logs, resume caches, training logs)
    is repaired this way before it is read or appended to, so it stays valid JSONL and the work of
    that line is redone. Warns and returns the number of bytes cut (0 when the file is whole or
    missing).
    """
    path = Path(path)
    if not path.is_file():
        return 0
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        # Walk back to the last newline; everything after it is an interrupted write.
        pos = size
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            cut = f.read(step).rfind(b"\n")
            if cut >= 0:
                pos = pos - step + cut + 1
                break
            pos -= step
        f.truncate(pos)
    warnings.warn(
        f"{path}: dropped an incomplete last line ({size - pos} bytes) left by an interrupted "
        "write; its work will be redone",
        stacklevel=2,
    )
    return size - pos


class JsonlWriter:
    """Append records to a JSONL file one line at a time, durable after each ``write``.

    A record is a :class:`Dialogue` (or any pydantic model) or a JSON-ready dict. Every line is
    flushed and fsynced, so a process killed mid-run loses at most the record it was writing.
    Opening in append mode repairs such a kill with :func:`drop_torn_line`, so the file stays
    valid JSONL and the run can resume::

        with JsonlWriter("out/rolecs.jsonl") as out:
            for dialogue in simulate():
                out.write(dialogue)
    """

    def __init__(self, path: str | Path, append: bool = True):
        self.path = Path(path)
        self.append = append
        self.written = 0
        self._file: Any = None
        self._lock = threading.Lock()

    def open(self) -> JsonlWriter:
        """Open the file (also done by ``with``)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.append:
            drop_torn_line(self.path)
        self._file = self.path.open("a" if self.append else "w", encoding="utf-8")
        return self

    def write(self, record: BaseModel | dict[str, Any]) -> None:
        """Append one record as a line, then flush and fsync (safe from several threads)."""
        if self._file is None:
            raise RuntimeError("JsonlWriter is not open; use it as a context manager")
        if isinstance(record, BaseModel):
            line = record.model_dump_json()
        else:
            line = json.dumps(record, ensure_ascii=False, default=str)
        with self._lock:
            self._file.write(line + "\n")
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

    def __exit__(self, *exc_info: object) -> None:
        self.close()
