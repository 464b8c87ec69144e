"""Streaming raw records out of files: a JSON list, JSON Lines, or a parquet table.

Every format reader sits on these generators, so no reader ever holds a whole file in memory:
JSON lists are parsed incrementally with ijson, JSONL line by line, parquet by record batches.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from csc.data.errors import RecordLocation, file_location

Container = Literal["json", "jsonl", "parquet"]

# Rows per parquet record batch: small enough to keep memory flat, big enough to be fast.
PARQUET_BATCH_ROWS = 512


_SUFFIXES: dict[str, Container] = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_SUFFIXES |= {".parquet": "parquet", ".pq": "parquet"}


def container_for(path: str | Path) -> Container | None:
    """The container a file suffix implies (``.json``, ``.jsonl``/``.ndjson``, ``.parquet``)."""
    return _SUFFIXES.get(Path(path).suffix.lower())


def iter_records(
    path: str | Path, container: Container | None = None
) -> Iterator[tuple[RecordLocation, Any]]:
    """Yield ``(location, record)`` for every record of a file, one at a time.

    ``container`` defaults to what the suffix implies. Records are returned as parsed (they may
    not be objects); callers check their shape and raise with the location.
    """
    path = Path(path)
    container = container or container_for(path)
    if not path.is_file():
        raise file_location(path).error(
            "no such file", fix="check the path (a folder is only valid for the hf format)"
        )
    readers = {"json": iter_json_list, "jsonl": iter_jsonl, "parquet": iter_parquet}
    if container not in readers:
        raise file_location(path).error(
            f"cannot tell the container from the suffix {path.suffix!r}",
            fix="use .json (a JSON list), .jsonl (one JSON object per line) or .parquet",
        )
    yield from readers[container](path)


def iter_jsonl(path: str | Path) -> Iterator[tuple[RecordLocation, Any]]:
    """Records of a JSON Lines file; blank lines are skipped and not counted as records."""
    path = Path(path)
    record = 0
    # Read bytes and decode line by line, so a non-UTF-8 byte is reported with its line.
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RecordLocation(str(path), record + 1, line_no).error(
                    f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
                    fix="save the file as UTF-8 (e.g. iconv -f GB18030 -t UTF-8)",
                ) from None
            if not line.strip():
                continue
            record += 1
            loc = RecordLocation(str(path), record, line_no)
            try:
                obj = json.loads(line)
            except RecursionError:
                raise loc.error(
                    "JSON nested too deeply", fix="each line must be one dialogue object"
                ) from None
            except json.JSONDecodeError as exc:
                raise loc.error(
                    f"not valid JSON ({exc.msg} at column {exc.colno})",
                    fix="each line must be one complete JSON object; fix or remove this line",
                ) from None
            yield loc, obj


def iter_json_list(path: str | Path) -> Iterator[tuple[RecordLocation, Any]]:
    """Elements of a top-level JSON list, parsed incrementally with ijson."""
    import ijson

    path = Path(path)
    with path.open("rb") as f:
        first = _first_significant_byte(f)
        if first != b"[":
            found = "an empty file" if first == b"" else f"{first.decode(errors='replace')!r}"
            raise file_location(path).error(
                f"expected a JSON list of records ('['), found {found}",
                fix="a .json file must hold one list of records; for one JSON object per line "
                "name the file .jsonl or pass the jsonl format",
            )
        f.seek(0)
        if f.read(3) != b"\xef\xbb\xbf":  # skip a UTF-8 byte-order mark, which ijson rejects
            f.seek(0)
        record = 0
        try:
            for obj in _list_items(ijson.basic_parse(f, use_float=True), path):
                record += 1
                yield RecordLocation(str(path), record), obj
        except ijson.JSONError as exc:
            loc = RecordLocation(str(path), record + 1)
            raise loc.error(
                f"not valid JSON ({one_line(exc)})",
                fix="the file is truncated or corrupt at this record; re-download or repair it",
            ) from None
        except UnicodeDecodeError as exc:
            raise RecordLocation(str(path), record + 1).error(
                f"not UTF-8 (byte 0x{exc.object[exc.start]:02x})",
                fix="save the file as UTF-8 (e.g. iconv -f GB18030 -t UTF-8)",
            ) from None


# Deeper nesting than any dialogue record needs; a hostile file nested 100,000 deep would
# otherwise take minutes (ijson's item prefixes grow with the depth).
MAX_JSON_DEPTH = 64


def _list_items(events: Iterator[tuple[str, Any]], path: Path) -> Iterator[Any]:
    """The elements of the top-level JSON list, built from ijson's basic events with a depth
    limit (the caller has checked that the file starts with ``[``)."""
    stack: list[Any] = []  # containers under construction, outermost first
    keys: list[Any] = []  # the pending key of each map in ``stack``
    record = 0
    next(events, None)  # the opening '[' of the list
    for event, value in events:
        if event == "start_map" or event == "start_array":
            if len(stack) >= MAX_JSON_DEPTH:
                raise RecordLocation(str(path), record + 1).error(
                    f"nested more than {MAX_JSON_DEPTH} levels deep",
                    fix="a record is an object of turns; fix or remove this record",
                )
            stack.append({} if event == "start_map" else [])
            keys.append(None)
            continue
        if event == "map_key":
            keys[-1] = value
            continue
        if event == "end_map" or event == "end_array":
            if not stack:
                return  # the end of the top-level list
            value = stack.pop()
            keys.pop()
        if stack:
            parent = stack[-1]
            if isinstance(parent, list):
                parent.append(value)
            else:
                parent[keys[-1]] = value
        else:
            record += 1
            yield value


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (parsers put excerpts of the input on further lines)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _first_significant_byte(f: Any) -> bytes:
    head = f.read(4096).lstrip(b"\xef\xbb\xbf").lstrip()
    while not head:
        chunk = f.read(4096)
        if not chunk:
            return b""
        head = chunk.lstrip()
    return head[:1]


def iter_parquet(path: str | Path) -> Iterator[tuple[RecordLocation, Any]]:
    """Rows of a parquet file as dicts, read by record batches."""
    import pyarrow as pa

    path = Path(path)
    table = _open_parquet(path)
    record = 0
    with table:
        try:
            for batch in table.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                for row in batch.to_pylist():
                    record += 1
                    yield RecordLocation(str(path), record), row
        except (pa.ArrowException, OSError) as exc:
            raise RecordLocation(str(path), record + 1).error(
                f"unreadable parquet data ({one_line(exc)})",
                fix="the file is truncated or corrupt; re-download or re-export it",
            ) from None


def _open_parquet(path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise file_location(path).error(
            f"not a readable parquet file ({one_line(exc)})",
            fix="re-download or re-export the file",
        ) from None


def parquet_columns(path: str | Path) -> list[str]:
    """Column names of a parquet file (reads only the footer)."""
    with _open_parquet(Path(path)) as table:
        return list(table.schema_arrow.names)
