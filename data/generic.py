"""Other corpora and raw support logs, read through a small mapping (a YAML file or a dict).

A mapping says where a record's list of turns is (or, for a flat log with one row per message,
which column groups and orders the rows), which fields hold the speaker, text and strategy, which
speaker values mean supporter and customer, and how labels map to the framework. Field names may
be dotted paths into nested objects; fields a mapping does not use are kept in ``metadata``.
Rough logs are read as they are (list-valued text, empty turns, system lines, same-speaker runs),
and everything dropped or merged is counted in :class:`MappingCounts` (``reader.counts``), which
``csc data validate`` prints. docs/data-formats.md describes every key, with examples;
``data/mappings/esconv.yaml`` is a complete mapping.
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import difflib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from itertools import combinations, groupby
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from csc.data.errors import RecordLocation, file_location
from csc.data.records import container_for, iter_records
from csc.data.turns import as_framework, make_turn
from csc.dialogue import Dialogue, Speaker, Turn
from csc.framework import Framework, FrameworkError

_MISSING = object()

MappingContainer = Literal["json", "jsonl", "parquet", "csv"]

MAPPING_FIX = "see docs/data-formats.md (generic mappings) and data/mappings/esconv.yaml"


class CorpusMapping(BaseModel):
    """How the records of another corpus map onto :class:`Dialogue` (see module docs)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "custom"
    description: str = ""
    framework: str | None = None  # framework the labels are meant for (a hint for error messages)
    # json (a list), jsonl, parquet or csv; default: from the file suffix
    container: MappingContainer | None = None
    turns_field: str | None = None  # where a record's list of turns is
    group_by: str | None = None  # flat logs: the field holding the conversation id of each row
    order_by: list[str] = []  # flat logs: fields ordering a conversation's rows
    grouped: bool = True  # flat logs: rows of a conversation are contiguous (streams)
    csv_delimiter: str = Field(",", min_length=1, max_length=1)
    speaker_field: str = "speaker"
    text_field: str = "text"
    strategy_field: str | None = "strategy"  # null for a corpus without strategy labels
    supporter: list[str] = Field(min_length=1)
    customer: list[str] = Field(min_length=1)
    drop: list[str] = []  # speaker values whose turns are dropped (counted)
    text_join: str | None = None  # separator joining list-valued text (and merged turns)
    # drop empty turns instead of failing; default: true with text_join
    drop_empty: bool | None = None
    merge_consecutive: bool = False
    id_field: str | None = None
    topic_field: str | None = None
    scenario_field: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    source: str = Field("<dict>", exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _speakers_as_text(cls, data: Any) -> Any:
        # YAML turns 0/1 or yes/no into numbers and booleans; speaker values compare as text.
        if isinstance(data, dict):
            data = dict(data)
            for key in ("supporter", "customer", "drop"):
                value = data.get(key)
                if isinstance(value, (str, int, bool)):
                    value = [value]
                if isinstance(value, list):
                    data[key] = [str(v) for v in value]
            if isinstance(data.get("order_by"), str):
                data["order_by"] = [data["order_by"]]
        return data

    @model_validator(mode="after")
    def _consistent(self) -> CorpusMapping:
        sides = {"supporter": self.supporter, "customer": self.customer, "drop": self.drop}
        for a, b in combinations(sides, 2):
            if both := set(sides[a]) & set(sides[b]):
                raise ValueError(f"speaker values {sorted(both)} are both {a} and {b}")
        if (self.turns_field is None) == (self.group_by is None):
            raise ValueError(
                "give either turns_field (records holding a list of turns) or group_by "
                "(a flat log, one row per message), not both or neither"
            )
        if self.group_by is None and self.order_by:
            raise ValueError("order_by orders the rows of a flat log; it needs group_by")
        if self.group_by is not None and self.id_field is not None:
            raise ValueError("in a flat log the group_by value is the dialogue id; remove id_field")
        return self

    @property
    def is_flat(self) -> bool:
        """True for a flat log (one row per message, grouped by ``group_by``)."""
        return self.group_by is not None

    @property
    def drops_empty(self) -> bool:
        """Whether empty turns are dropped (``drop_empty``, by default on with ``text_join``)."""
        return self.drop_empty if self.drop_empty is not None else self.text_join is not None

    def speaker(self, value: Any) -> Speaker | None:
        """The speaker a raw speaker value means, or None when the mapping does not know it."""
        text = _speaker_text(value)
        sides = {Speaker.SUPPORTER: self.supporter, Speaker.CUSTOMER: self.customer}
        return next((speaker for speaker, values in sides.items() if text in values), None)

    def is_dropped(self, value: Any) -> bool:
        """True when the raw speaker value is one of the ``drop:`` values."""
        return _speaker_text(value) in self.drop

    def framework_hint(self, framework: Framework) -> str:
        """Advice when the mapping was written for another framework than the one in use."""
        if self.framework and self.framework != framework.name:
            return (
                f"this mapping is meant for the {self.framework!r} framework "
                f"(framework={self.framework!r} / --framework {self.framework})"
            )
        return ""

    def check_labels(self, framework: Framework) -> dict[str, str]:
        """The ``labels:`` table resolved to codes; raises naming the mapping and the label."""
        resolved = {}
        for raw, target in self.labels.items():
            try:
                resolved[raw] = framework.normalize(target)
            except FrameworkError as exc:
                fix = self.framework_hint(framework) or (
                    f"map {raw!r} to a strategy of the {framework.name} framework"
                )
                raise file_location(self.source).error(
                    str(exc), field=f"labels.{raw}", fix=fix
                ) from None
        return resolved


def _speaker_text(value: Any) -> str | None:
    return str(value) if isinstance(value, (str, int, bool)) else None


@dataclass
class MappingCounts:
    """What a mapping dropped or merged while reading; nothing is dropped without a count."""

    rows: int = 0  # read from a flat log (0 for records holding turn lists)
    empty_messages: int = 0  # empty or whitespace-only (list items, or a turn's whole text)
    empty_turns: int = 0  # turns dropped because no text was left
    dropped_speakers: Counter[str] = field(default_factory=Counter)  # per drop: speaker value
    merged_turns: int = 0  # into the previous turn of the same speaker (a run of 3 counts 2)
    empty_dialogues: int = 0  # dialogues dropped because no turn was left

    @property
    def dropped_speaker_turns(self) -> int:
        """Turns dropped for their speaker, all values together."""
        return sum(self.dropped_speakers.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain data for printing or JSON."""
        return {
            "rows": self.rows,
            "empty_messages_dropped": self.empty_messages,
            "empty_turns_dropped": self.empty_turns,
            "speaker_turns_dropped": self.dropped_speaker_turns,
            "dropped_speakers": dict(self.dropped_speakers.most_common()),
            "turns_merged": self.merged_turns,
            "empty_dialogues_dropped": self.empty_dialogues,
        }


MAPPING_KEYS = tuple(k for k in CorpusMapping.model_fields if k != "source")


def load_mapping(mapping: CorpusMapping | dict[str, Any] | str | Path) -> CorpusMapping:
    """A mapping from a :class:`CorpusMapping`, a dict, a YAML path or a built-in name (``esconv``)."""
    if isinstance(mapping, CorpusMapping):
        return mapping
    source = "<dict>"
    if not isinstance(mapping, dict):
        path = Path(mapping)
        shipped = Path(str(resources.files("csc.data") / "mappings" / f"{mapping}.yaml"))
        if not path.is_file() and shipped.is_file():
            path = shipped
        if not path.is_file():
            raise file_location(path).error(
                "mapping not found", fix="give the path of a mapping YAML file, or 'esconv'"
            )
        source = str(path)
        try:
            mapping = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise file_location(path).error(f"not valid YAML ({exc})", fix="fix the YAML") from None
        if not isinstance(mapping, dict):
            raise file_location(path).error(
                "a mapping must be a YAML mapping", fix="see data/mappings/esconv.yaml"
            )
    for key in mapping:
        if key not in MAPPING_KEYS:
            close = difflib.get_close_matches(str(key), MAPPING_KEYS, n=1)
            fix = f"did you mean {close[0]!r}? " if close else ""
            raise file_location(source).error(
                f"unknown mapping key {str(key)!r}",
                fix=f"{fix}known keys: {', '.join(MAPPING_KEYS)}; {MAPPING_FIX}",
            )
    try:
        return CorpusMapping.model_validate({**mapping, "source": source})
    except ValidationError as exc:
        err = exc.errors()[0]
        field_name = ".".join(str(p) for p in err["loc"]) or None
        message = err["msg"].replace("Field required", "missing field")
        raise file_location(source).error(
            message.removeprefix("Value error, "), field=field_name, fix=MAPPING_FIX
        ) from None


class GenericReader(Iterator[Dialogue]):
    """Stream dialogues from a corpus or flat log (JSON list, JSONL, parquet, CSV) via ``mapping``.

    Ids are the ``id_field`` (or ``group_by``) value, else ``<file stem>-<index>`` (0-based).
    ``counts`` (:class:`MappingCounts`) fill in as the iterator is consumed. The mapping is
    loaded and the file opened on the first ``next()``, so a bad mapping or file raises
    :class:`DataFormatError` then, as from any other reader.
    """

    def __init__(
        self,
        path: str | Path,
        mapping: CorpusMapping | dict[str, Any] | str | Path,
        *,
        framework: Framework | str = "csc",
        allow_unlabelled: bool = False,
    ):
        self.path = Path(path)
        self.counts = MappingCounts()
        self._mapping = mapping
        self._framework = framework
        self._allow_unlabelled = allow_unlabelled
        self._dialogues = self._read()

    def __next__(self) -> Dialogue:
        return next(self._dialogues)

    def __iter__(self) -> GenericReader:
        return self

    def close(self) -> None:
        """Stop reading early: close the file and remove any temporary spill file."""
        self._dialogues.close()

    def _read(self) -> Iterator[Dialogue]:
        spec = load_mapping(self._mapping)
        fw = as_framework(self._framework)
        turns = _TurnReader(
            spec,
            fw,
            spec.check_labels(fw),
            spec.framework_hint(fw),
            self._allow_unlabelled or spec.strategy_field is None,
            self.counts,
        )
        csv_file = self.path.suffix.lower() in (".csv", ".tsv")
        container = spec.container or ("csv" if csv_file else container_for(self.path))
        if container == "csv":
            records = _iter_csv(self.path, spec.csv_delimiter)
        else:
            records = iter_records(self.path, container)
        if not spec.is_flat:
            if container == "csv":
                raise file_location(self.path).error(
                    "a CSV file holds one row per message, not records with a list of turns",
                    fix="describe it as a flat log (group_by: and order_by: instead of turns_field)",
                )
            dialogues = (
                _nested_dialogue(record, loc, spec, turns, f"{self.path.stem}-{index}")
                for index, (loc, record) in enumerate(records)
            )
        else:
            rows = _counted(records, self.counts)
            grouped = _contiguous_groups if spec.grouped else _gathered_groups
            dialogues = (
                _flat_dialogue(key, members, spec, turns, container == "csv")
                for key, members in grouped(rows, spec)
            )
        for dialogue in dialogues:
            if dialogue is None:
                self.counts.empty_dialogues += 1
            else:
                yield dialogue


read_generic = GenericReader


@dataclass
class _TurnReader:
    """Turns from raw turn objects (nested records) or rows (flat logs), with the drop rules."""

    spec: CorpusMapping
    framework: Framework
    labels: dict[str, str]
    hint: str
    allow_unlabelled: bool
    counts: MappingCounts

    def turn(
        self, raw: Any, loc: RecordLocation, at: str, skip: tuple[str, ...] = ()
    ) -> Turn | None:
        """One checked turn, or None when the drop rules drop it (counted).

        ``at`` is the turn's field path (``dialog[3]``; empty for a flat row), ``skip`` the row
        fields that belong to the dialogue rather than the turn (flat logs).
        """
        spec = self.spec
        if not isinstance(raw, dict):
            raise loc.error(
                f"a turn must be an object, got {type(raw).__name__}",
                field=at or None,
                fix=(
                    f"write the turn as an object with the mapping's fields "
                    f"({spec.speaker_field!r}, {spec.text_field!r})"
                ),
            )
        value = _get(raw, spec.speaker_field)
        if value is _MISSING:
            raise _missing(loc, raw, at, spec.speaker_field, "speaker_field")
        if spec.is_dropped(value):
            self.counts.dropped_speakers[str(value)] += 1
            return None
        speaker = spec.speaker(value)
        if speaker is None:
            known = f"supporter: {spec.supporter}, customer: {spec.customer}"
            if spec.drop:
                known += f", drop: {spec.drop}"
            raise loc.error(
                f"unknown speaker {value!r} ({known})",
                field=_sub(at, spec.speaker_field),
                fix="add the value to the mapping's supporter:, customer: or drop: list",
            )
        text = _get(raw, spec.text_field)
        if text is _MISSING:
            raise _missing(loc, raw, at, spec.text_field, "text_field")
        text = self._text(text, loc, _sub(at, spec.text_field))
        if text is None:
            self.counts.empty_turns += 1
            return None
        label = None
        if spec.strategy_field is not None:
            label = _get(raw, spec.strategy_field)
            if label is _MISSING:
                if speaker is Speaker.SUPPORTER and not self.allow_unlabelled:
                    # A misspelt strategy_field looks like an unlabelled corpus; say what it is.
                    also = (
                        " (for a corpus without labels set strategy_field: null, or allow "
                        "unlabelled supporter turns with --allow-unlabelled)"
                    )
                    raise _missing(loc, raw, at, spec.strategy_field, "strategy_field", also)
                label = None
        used = (spec.strategy_field, spec.speaker_field, spec.text_field, *skip)
        # One copy for the top-level fields; dotted paths into nested objects one by one.
        rest = {k: v for k, v in raw.items() if k not in used}
        for key in used:
            if key is not None and key not in raw and "." in key:
                rest = _without(rest, key)
        return make_turn(
            speaker,
            text,
            label,
            framework=self.framework,
            loc=loc,
            field=at,
            strategy_field=spec.strategy_field or "strategy",
            text_field=spec.text_field,
            allow_unlabelled=self.allow_unlabelled,
            labels=self.labels,
            hint=self.hint,
            metadata=rest,
        )

    def _text(self, value: Any, loc: RecordLocation, at: str) -> Any:
        """The turn text: lists joined without their empty messages; None drops the turn."""
        spec = self.spec
        if isinstance(value, list):
            if spec.text_join is None:
                raise loc.error(
                    f"text is a list of {len(value)} messages",
                    field=at,
                    fix='set text_join: "\\n" in the mapping to join them into one turn',
                )
            parts = []
            for i, item in enumerate(value):
                if item is None or (isinstance(item, str) and not item.strip()):
                    self.counts.empty_messages += 1
                    continue
                if not isinstance(item, str):
                    raise loc.error(
                        f"a message must be a string, got {type(item).__name__}",
                        field=f"{at}[{i}]",
                        fix="give each message as a JSON string",
                    )
                parts.append(item)
            if parts:
                return spec.text_join.join(parts)
            if spec.drops_empty:
                return None
            raise loc.error(
                "no non-empty message in the list",
                field=at,
                fix="fill in the utterance, or set drop_empty: true to drop such turns",
            )
        if value is None or (isinstance(value, str) and not value.strip()):
            if spec.drops_empty:
                self.counts.empty_messages += 1
                return None
            raise loc.error(
                "empty text",
                field=at,
                fix="fill in the utterance, or set drop_empty: true in the mapping to drop "
                "empty turns",
            )
        return value  # make_turn rejects anything else with the usual message

    def merged(self, turns: list[tuple[Turn, RecordLocation, str]]) -> list[Turn]:
        """Turns with same-speaker runs merged when the mapping asks for it (counted)."""
        if not self.spec.merge_consecutive:
            return [t for t, _, _ in turns]
        sep = self.spec.text_join if self.spec.text_join is not None else "\n"
        out: list[Turn] = []
        for turn, loc, at in turns:
            if not out or out[-1].speaker is not turn.speaker:
                out.append(turn)
                continue
            prev = out[-1]
            if prev.strategy and turn.strategy and prev.strategy != turn.strategy:
                raise loc.error(
                    f"merge_consecutive would merge turns labelled {prev.strategy} and "
                    f"{turn.strategy} into one",
                    field=_sub(at, self.spec.strategy_field or "strategy"),
                    fix="merge_consecutive is meant for unlabelled logs; remove it from the "
                    "mapping to keep both turns",
                )
            out[-1] = Turn(
                speaker=prev.speaker,
                text=prev.text + sep + turn.text,
                strategy=prev.strategy or turn.strategy,
                # The run's first turn describes it (e.g. when it started); later keys are added.
                metadata=prev.metadata
                | {k: v for k, v in turn.metadata.items() if k not in prev.metadata},
            )
            self.counts.merged_turns += 1
        return out


def _nested_dialogue(
    record: Any, loc: RecordLocation, spec: CorpusMapping, reader: _TurnReader, default_id: str
) -> Dialogue | None:
    turns_field = spec.turns_field or ""
    if not isinstance(record, dict):
        raise loc.error(
            f"a record must be a JSON object, got {type(record).__name__}",
            fix=f"each record must be an object with a '{turns_field}' list",
        )
    raw_turns = _get(record, turns_field)
    if raw_turns is _MISSING:
        raise loc.error(
            f"missing field (keys: {sorted(record)})",
            field=turns_field,
            fix="set turns_field in the mapping to the key that holds the list of turns",
        )
    if not isinstance(raw_turns, list) or not raw_turns:
        raise loc.error(
            "must be a non-empty list of turns",
            field=turns_field,
            fix="give the turns as a list of objects, or drop the record",
        )
    turns = []
    for i, raw in enumerate(raw_turns):
        at = f"{turns_field}[{i}]"
        turn = reader.turn(raw, loc, at)
        if turn is not None:
            turns.append((turn, loc, at))
    if not turns:
        return None
    metadata = record
    for key in (turns_field, spec.id_field, spec.topic_field, spec.scenario_field):
        if key:
            metadata = _without(metadata, key)
    record_id = _scalar(record, spec.id_field, loc)
    return Dialogue(
        id=default_id if record_id is None else record_id,
        topic=_scalar(record, spec.topic_field, loc),
        scenario=_scalar(record, spec.scenario_field, loc),
        turns=reader.merged(turns),
        metadata=metadata,
    )


Rows = Iterator[tuple[RecordLocation, Any]]
Group = tuple[str, list[tuple[RecordLocation, dict[str, Any]]]]


def _counted(rows: Rows, counts: MappingCounts) -> Rows:
    for loc, row in rows:
        counts.rows += 1
        yield loc, row


def _group_key(loc: RecordLocation, row: Any, spec: CorpusMapping) -> str:
    group_by = spec.group_by or ""
    if not isinstance(row, dict):
        raise loc.error(
            f"a row must be an object, got {type(row).__name__}",
            fix=f"each row must be one message with a '{group_by}' field",
        )
    key = _get(row, group_by)
    if key is _MISSING:
        raise loc.error(
            f"missing field (row keys: {sorted(row)})",
            field=group_by,
            fix="set group_by in the mapping to the field holding the conversation id",
        )
    if key is None or isinstance(key, (dict, list)) or not str(key).strip():
        raise loc.error(
            f"a conversation id must be a non-empty value, got {key!r}",
            field=group_by,
            fix="fill in the conversation id, or remove the row",
        )
    return str(key)


def _contiguous_groups(rows: Rows, spec: CorpusMapping) -> Iterator[Group]:
    """Groups of a log whose rows are already grouped: one conversation in memory at a time."""
    finished: set[str] = set()
    for key, group in groupby(rows, key=lambda item: _group_key(*item, spec)):
        members = list(group)
        if key in finished:
            raise members[0][0].error(
                f"rows of conversation {key!r} are not contiguous (it appeared earlier, "
                "before other conversations)",
                field=spec.group_by,
                fix=f"sort the log by {spec.group_by!r}, or set grouped: false in the mapping "
                "(gathers all rows in memory first)",
            )
        finished.add(key)
        yield key, members


def _gathered_groups(rows: Rows, spec: CorpusMapping) -> Iterator[Group]:
    """Groups of a log in any row order (``grouped: false``), in order of their first rows.

    Rows are spilled to a temporary SQLite file and read back one conversation at a time, so
    memory stays flat whatever the size of the log; the cost is disk space (in ``$TMPDIR``).
    """
    import sqlite3
    import tempfile

    with tempfile.TemporaryDirectory(prefix="csc-flat-log-") as tmp:
        db = sqlite3.connect(Path(tmp) / "rows.sqlite")
        try:
            db.execute("CREATE TABLE conv (id INTEGER PRIMARY KEY, key TEXT UNIQUE)")
            db.execute("CREATE TABLE row (key TEXT, path TEXT, record INT, line INT, data TEXT)")
            batch: list[tuple[str, str, int | None, int | None, str]] = []
            for loc, row in rows:
                key = _group_key(loc, row, spec)
                data = json.dumps(_plain_row(row, False, set()), ensure_ascii=False, default=str)
                batch.append((key, loc.path, loc.record, loc.line, data))
                if len(batch) >= 10_000:
                    _spill(db, batch)
            _spill(db, batch)
            db.execute("CREATE INDEX row_key ON row (key, record)")
            cursor = db.execute(
                "SELECT row.key, path, record, line, data FROM conv JOIN row ON row.key = conv.key "
                "ORDER BY conv.id, row.record"
            )
            for key, group in groupby(cursor, key=lambda found: found[0]):
                members = [(RecordLocation(*found[1:4]), json.loads(found[4])) for found in group]
                yield key, members
        finally:
            db.close()


def _spill(db: Any, batch: list[tuple[str, str, int | None, int | None, str]]) -> None:
    db.executemany("INSERT OR IGNORE INTO conv (key) VALUES (?)", [(b[0],) for b in batch])
    db.executemany("INSERT INTO row VALUES (?, ?, ?, ?, ?)", batch)
    batch.clear()


def _flat_dialogue(
    key: str,
    members: list[tuple[RecordLocation, dict[str, Any]]],
    spec: CorpusMapping,
    reader: _TurnReader,
    from_csv: bool,
) -> Dialogue | None:
    if spec.order_by:
        members = sorted(members, key=_order_keys(members, spec.order_by))
    dialogue_fields = tuple(
        f for f in (spec.group_by, spec.topic_field, spec.scenario_field) if f is not None
    )
    # CSV has no null: an empty cell is None, kept for mapped fields but left out of metadata.
    keep = {spec.speaker_field, spec.text_field, spec.strategy_field, *dialogue_fields}
    topic = scenario = None
    turns = []
    for loc, row in members:
        row = _plain_row(row, from_csv, keep)
        topic = topic if topic is not None else _scalar(row, spec.topic_field, loc)
        scenario = scenario if scenario is not None else _scalar(row, spec.scenario_field, loc)
        turn = reader.turn(row, loc, "", skip=dialogue_fields)
        if turn is not None:
            turns.append((turn, loc, ""))
    if not turns:
        return None
    return Dialogue(id=key, topic=topic, scenario=scenario, turns=reader.merged(turns))


def _plain_row(row: dict[str, Any], from_csv: bool, keep: set[str | None]) -> dict[str, Any]:
    """Row values as JSON-ready data: timestamps as ISO text; CSV's empty cells left out."""
    return {
        k: v.isoformat() if isinstance(v, (dt.datetime, dt.date, dt.time)) else v
        for k, v in row.items()
        if not (v is None and from_csv and k not in keep)
    }


def _order_keys(members: list[tuple[RecordLocation, dict[str, Any]]], fields: list[str]) -> Any:
    """A sort key for a conversation's rows: numbers as numbers if every value is one, else text."""
    columns = []
    for name in fields:
        values = []
        for loc, row in members:
            value = _get(row, name)
            if value is _MISSING or value is None:
                raise loc.error(
                    "missing value to order the conversation by",
                    field=name,
                    fix="fill in the field on every row, or change order_by in the mapping",
                )
            values.append(value)
        numbers = [_as_number(v) for v in values]
        if all(n is not None for n in numbers):
            columns.append(numbers)
        elif all(isinstance(v, (dt.datetime, dt.date)) for v in values):
            columns.append(values)
        else:
            columns.append([v.isoformat() if hasattr(v, "isoformat") else str(v) for v in values])
    keys = {id(row): tuple(col[i] for col in columns) for i, (_, row) in enumerate(members)}
    return lambda member: keys[id(member[1])]


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _iter_csv(path: Path, delimiter: str) -> Rows:
    """Rows of a CSV file (header first) as dicts; an empty cell is None. Streams line by line."""
    if not path.is_file():
        raise file_location(path).error("no such file", fix="check the path")
    if path.suffix.lower() == ".tsv" and delimiter == ",":
        delimiter = "\t"
    record = 0
    line = 1
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                return
            if len(set(header)) != len(header) or not all(h.strip() for h in header):
                raise file_location(path).error(
                    f"the header row needs distinct, non-empty column names, got {header}",
                    fix="name every column once in the first line",
                )
            line = reader.line_num + 1
            for cells in reader:
                start, line = line, reader.line_num + 1
                if not cells:  # a blank line
                    continue
                record += 1
                loc = RecordLocation(str(path), record, start)
                if len(cells) != len(header):
                    raise loc.error(
                        f"{len(cells)} cells, but the header has {len(header)} columns",
                        fix="quote cells that contain the delimiter or line breaks",
                    )
                yield loc, {h: (c if c != "" else None) for h, c in zip(header, cells)}
    except csv.Error as exc:
        raise RecordLocation(str(path), record + 1, line).error(
            f"not valid CSV ({exc})", fix="repair the file or re-export it"
        ) from None
    except UnicodeDecodeError as exc:
        # Text is decoded in chunks, so find the line that really holds the bad bytes.
        with path.open("rb") as f:
            bad_line = next((n for n, raw in enumerate(f, 1) if not _decodes(raw)), line)
        raise file_location(path).error(
            f"not UTF-8 (byte {exc.object[exc.start : exc.start + 1]!r} on line {bad_line})",
            fix="re-export the log as UTF-8",
        ) from None


def _decodes(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _missing(
    loc: RecordLocation, raw: dict[str, Any], at: str, key: str, setting: str, also: str = ""
) -> Exception:
    return loc.error(
        f"missing field (turn keys: {sorted(raw)})",
        field=_sub(at, key),
        fix=f"add it, or point the mapping's {setting} at the right key{also}",
    )


def _sub(at: str, key: str) -> str:
    return f"{at}.{key}" if at else key


def _get(obj: Any, dotted: str) -> Any:
    if isinstance(obj, dict) and dotted in obj:  # a flat column may itself contain dots
        return obj[dotted]
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return _MISSING
        obj = obj[part]
    return obj


def _without(obj: dict[str, Any], dotted: str) -> dict[str, Any]:
    """A copy of ``obj`` without the dotted field; parents it leaves empty are removed too."""
    if dotted in obj:
        return {k: v for k, v in obj.items() if k != dotted}
    head, _, tail = dotted.partition(".")
    if head not in obj:
        return obj
    if tail and not isinstance(obj[head], dict):
        return obj
    out = copy.copy(obj)
    if tail:
        inner = _without(obj[head], tail)
        if inner:
            out[head] = inner
            return out
    del out[head]
    return out


def _scalar(record: dict[str, Any], name: str | None, loc: RecordLocation) -> str | None:
    if name is None:
        return None
    value = _get(record, name)
    if value is _MISSING or value is None:
        return None
    if isinstance(value, (dict, list)):
        raise loc.error(
            "expected a single value, got a nested object", field=name, fix="map a text field"
        )
    return str(value)
