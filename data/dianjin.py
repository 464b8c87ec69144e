"""The released DianJin-CSC-Data format: a JSON list (or parquet table) of dialogue records.

A record is ``{"dialogue": [{"speaker": "客服", "strategy": "策略1 礼貌问候", "text": "..."},
{"speaker": "客户", "strategy": "", "text": "..."}], "source": "账户和交易管理"}``: 客服 is the
supporter, 客户 the customer, ``source`` the topic. Reading normalizes strategy labels to framework
codes; writing produces the official labels, so DianJin -> JSONL -> DianJin gives the same content.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from csc.data.errors import DataFormatError, RecordLocation, file_location
from csc.data.records import Container, container_for, iter_records, parquet_columns
from csc.data.turns import as_framework, make_turn
from csc.dialogue import Dialogue, Speaker
from csc.framework import Framework, FrameworkError

SUPPORTER = "客服"
CUSTOMER = "客户"
SPEAKERS = {SUPPORTER: Speaker.SUPPORTER, CUSTOMER: Speaker.CUSTOMER}
SPEAKER_LABELS = {Speaker.SUPPORTER: SUPPORTER, Speaker.CUSTOMER: CUSTOMER}

# How strategies are written: the official "策略5 情感管理", the English name, or the code.
LabelStyle = Literal["official", "name", "code"]
LABEL_STYLES: tuple[str, ...] = ("official", "name", "code")

_RECORD_KEYS = ("dialogue", "source", "id")
_TURN_KEYS = ("speaker", "strategy", "text")
# Rows per parquet row group written at once.
_PARQUET_WRITE_ROWS = 1000


def read_dianjin(
    path: str | Path,
    *,
    framework: Framework | str = "csc",
    allow_unlabelled: bool = False,
    container: Container | None = None,
) -> Iterator[Dialogue]:
    """Stream dialogues from a DianJin file (``.json`` list, ``.parquet``, or ``.jsonl`` records).

    Dialogue ids are the record's ``id`` when present, else ``<file stem>-<index>`` (0-based).
    Other record and turn fields are kept in ``metadata``. Raises :class:`DataFormatError`.
    """
    fw = as_framework(framework)
    path = Path(path)
    container = container or container_for(path)
    if container == "parquet" and path.is_file():
        columns = parquet_columns(path)
        if "dialogue" not in columns:
            raise file_location(path).error(
                f"parquet table has no 'dialogue' column (columns: {columns})",
                fix="DianJin parquet files have the columns 'dialogue' and 'source'; "
                "for our own dialogue files use the jsonl or hf format",
            )
    for index, (loc, record) in enumerate(iter_records(path, container)):
        yield parse_record(
            record, loc, fw, default_id=f"{path.stem}-{index}", allow_unlabelled=allow_unlabelled
        )


def parse_record(
    record: Any,
    loc: RecordLocation,
    framework: Framework,
    *,
    default_id: str,
    allow_unlabelled: bool = False,
) -> Dialogue:
    """One DianJin record as a checked :class:`Dialogue`."""
    if not isinstance(record, dict):
        raise loc.error(
            f"a record must be a JSON object, got {_kind(record)}",
            fix='each element of the list must look like {"dialogue": [...], "source": "..."}',
        )
    if "dialogue" not in record:
        raise loc.error(
            f"missing field (keys: {sorted(record)})",
            field="dialogue",
            fix="each record needs a 'dialogue' list of turns; is this the right format?",
        )
    raw_turns = record["dialogue"]
    if not isinstance(raw_turns, list) or not raw_turns:
        got = "an empty list" if raw_turns == [] else _kind(raw_turns)
        raise loc.error(
            f"must be a non-empty list of turns, got {got}",
            field="dialogue",
            fix="give the turns as a list of {speaker, strategy, text} objects, or drop the record",
        )
    turns = []
    for i, raw in enumerate(raw_turns):
        field = f"dialogue[{i}]"
        if not isinstance(raw, dict):
            raise loc.error(
                f"a turn must be an object, got {_kind(raw)}",
                field=field,
                fix='write the turn as {"speaker": "客服", "strategy": "...", "text": "..."}',
            )
        for key in ("speaker", "text"):
            if key not in raw:
                raise loc.error(
                    f"missing field (turn keys: {sorted(raw)})",
                    field=f"{field}.{key}",
                    fix=f"every turn needs '{key}'",
                )
        speaker = SPEAKERS.get(raw["speaker"]) if isinstance(raw["speaker"], str) else None
        if speaker is None:
            raise loc.error(
                f"unknown speaker {raw['speaker']!r}",
                field=f"{field}.speaker",
                fix=f"use {SUPPORTER!r} for the supporter and {CUSTOMER!r} for the customer",
            )
        extra = {k: v for k, v in raw.items() if k not in _TURN_KEYS}
        turns.append(
            make_turn(
                speaker,
                raw["text"],
                raw.get("strategy"),
                framework=framework,
                loc=loc,
                field=field,
                allow_unlabelled=allow_unlabelled,
                metadata=extra,
            )
        )
    topic = record.get("source")
    if topic is not None and not isinstance(topic, str):
        raise loc.error(
            f"must be a string or null, got {_kind(topic)}",
            field="source",
            fix="give the topic as text, e.g. '账户和交易管理'",
        )
    record_id = record.get("id")
    if record_id is not None and not isinstance(record_id, (str, int)):
        raise loc.error(
            f"must be a string, got {_kind(record_id)}", field="id", fix="use a text id or drop it"
        )
    extra = {k: v for k, v in record.items() if k not in _RECORD_KEYS}
    return Dialogue(
        id=default_id if record_id is None else str(record_id),
        topic=topic,
        turns=turns,
        metadata=extra,
    )


def to_record(
    dialogue: Dialogue,
    framework: Framework,
    *,
    labels: LabelStyle = "official",
    include_id: bool = False,
) -> dict[str, Any]:
    """A dialogue as a DianJin record (``dialogue``, ``source`` and, if asked, ``id``)."""
    turns = []
    for i, t in enumerate(dialogue.turns):
        try:
            strategy = "" if t.strategy is None else _label(framework, t.strategy, labels)
        except FrameworkError as exc:
            raise DataFormatError(
                f"dialogue {dialogue.id!r}, turns[{i}].strategy: {exc} — write with the "
                "framework the dialogue was made with (framework=... / --framework)",
                field=f"turns[{i}].strategy",
            ) from None
        turns.append({"speaker": SPEAKER_LABELS[t.speaker], "strategy": strategy, "text": t.text})
    record: dict[str, Any] = {"dialogue": turns, "source": dialogue.topic}
    return record | {"id": dialogue.id} if include_id else record


def _label(framework: Framework, code: str, style: LabelStyle) -> str:
    code = framework.normalize(code)
    if style == "official":
        return framework.official_label(code)
    return framework.strategy(code).name if style == "name" else code


def write_dianjin(
    dialogues: Iterable[Dialogue],
    path: str | Path,
    *,
    framework: Framework | str = "csc",
    labels: LabelStyle = "official",
    include_ids: bool = False,
) -> int:
    """Write dialogues as a DianJin ``.json`` list or ``.parquet`` table; returns the count.

    Streams: records are written one at a time (JSON) or in row groups (parquet), into a
    temporary file that replaces ``path`` only when everything was written.
    """
    if labels not in LABEL_STYLES:
        raise ValueError(f"labels must be one of {LABEL_STYLES}, got {labels!r}")
    fw = as_framework(framework)
    path = Path(path)
    records = (to_record(d, fw, labels=labels, include_id=include_ids) for d in dialogues)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if container_for(path) == "parquet":
            count = _write_parquet(records, tmp, include_ids)
        else:
            count = _write_json_list(records, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def _write_json_list(records: Iterable[dict[str, Any]], path: Path) -> int:
    # Same bytes as json.dump(all_records, indent=2, ensure_ascii=False), one record at a time.
    count = 0
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            text = json.dumps(record, ensure_ascii=False, indent=2).replace("\n", "\n  ")
            f.write(("[\n  " if count == 0 else ",\n  ") + text)
            count += 1
        f.write("\n]\n" if count else "[]\n")
    return count


def parquet_schema(include_ids: bool = False) -> Any:
    """The arrow schema of DianJin parquet files: ``dialogue`` (list of turns) and ``source``."""
    import pyarrow as pa

    turn = pa.struct([("speaker", pa.string()), ("strategy", pa.string()), ("text", pa.string())])
    fields = [("dialogue", pa.list_(turn)), ("source", pa.string())]
    if include_ids:
        fields.append(("id", pa.string()))
    return pa.schema(fields)


def _write_parquet(records: Iterable[dict[str, Any]], path: Path, include_ids: bool) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema(include_ids)
    count = 0
    records = iter(records)
    with pq.ParquetWriter(path, schema) as writer:
        while batch := list(islice(records, _PARQUET_WRITE_ROWS)):
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            count += len(batch)
    return count


_KINDS = {dict: "an object", list: "a list", type(None): "null", bool: "a boolean"}


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return f"a string ({value!r:.40})"
    return next((n for k, n in _KINDS.items() if isinstance(value, k)), f"a {type(value).__name__}")
