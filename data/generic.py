"""Other annotated corpora, read through a small mapping (a YAML file or a dict).

A mapping says where a record's list of turns is, which turn fields hold the speaker, text and
strategy, which speaker values mean supporter and customer, optional id/topic/scenario fields, and
how labels map to the framework (``labels:`` first, then :meth:`Framework.normalize`). Field names
may be dotted paths into nested objects (ESConv keeps strategies in ``annotation.strategy``).
Fields a mapping does not use are kept in ``metadata``, never dropped. Example
(``data/mappings/esconv.yaml``, for the ``esc`` framework)::

    turns_field: dialog
    speaker_field: speaker
    text_field: content
    strategy_field: annotation.strategy
    supporter: [supporter, sys]
    customer: [seeker, usr]
    topic_field: problem_type
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from csc.data.errors import RecordLocation, file_location
from csc.data.records import Container, container_for, iter_records
from csc.data.turns import as_framework, make_turn
from csc.dialogue import Dialogue, Speaker
from csc.framework import Framework, FrameworkError

_MISSING = object()


class CorpusMapping(BaseModel):
    """How the records of another corpus map onto :class:`Dialogue` (see module docs)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "custom"
    description: str = ""
    framework: str | None = Field(
        None, description="framework the labels are meant for (a hint for error messages)"
    )
    container: Container | None = Field(
        None, description="json (a list), jsonl or parquet; default: from the file suffix"
    )
    turns_field: str
    speaker_field: str = "speaker"
    text_field: str = "text"
    strategy_field: str | None = Field(
        "strategy", description="null for a corpus without strategy labels"
    )
    supporter: list[str] = Field(min_length=1)
    customer: list[str] = Field(min_length=1)
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
            for key in ("supporter", "customer"):
                value = data.get(key)
                if isinstance(value, (str, int, bool)):
                    value = [value]
                if isinstance(value, list):
                    data[key] = [str(v) for v in value]
        return data

    @model_validator(mode="after")
    def _speakers_disjoint(self) -> CorpusMapping:
        both = set(self.supporter) & set(self.customer)
        if both:
            raise ValueError(f"speaker values {sorted(both)} are both supporter and customer")
        return self

    def speaker(self, value: Any) -> Speaker | None:
        """The speaker a raw speaker value means, or None when the mapping does not know it."""
        text = str(value) if isinstance(value, (str, int, bool)) else None
        if text in self.supporter:
            return Speaker.SUPPORTER
        if text in self.customer:
            return Speaker.CUSTOMER
        return None

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
                fix = f"map {raw!r} to a strategy of the {framework.name} framework"
                if self.framework_hint(framework):
                    fix = self.framework_hint(framework)
                raise file_location(self.source).error(
                    str(exc), field=f"labels.{raw}", fix=fix
                ) from None
        return resolved


def builtin_mapping_path(name: str) -> Path:
    """Path of a mapping YAML shipped with csc (``data/mappings/<name>.yaml``)."""
    return Path(str(resources.files("csc.data") / "mappings" / f"{name}.yaml"))


def load_mapping(mapping: CorpusMapping | dict[str, Any] | str | Path) -> CorpusMapping:
    """A mapping from a :class:`CorpusMapping`, a dict, a YAML path or a built-in name (``esconv``)."""
    if isinstance(mapping, CorpusMapping):
        return mapping
    source = "<dict>"
    if not isinstance(mapping, dict):
        path = Path(mapping)
        if not path.is_file() and builtin_mapping_path(str(mapping)).is_file():
            path = builtin_mapping_path(str(mapping))
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
    try:
        return CorpusMapping.model_validate({**mapping, "source": source})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        raise file_location(source).error(
            err["msg"].replace("Field required", "missing field"),
            field=field,
            fix="see docs/data-formats.md (generic mappings) and data/mappings/esconv.yaml",
        ) from None


def read_generic(
    path: str | Path,
    mapping: CorpusMapping | dict[str, Any] | str | Path,
    *,
    framework: Framework | str = "csc",
    allow_unlabelled: bool = False,
) -> Iterator[Dialogue]:
    """Stream dialogues from a JSON list, JSONL or parquet corpus described by ``mapping``.

    Ids are the ``id_field`` value, else ``<file stem>-<index>`` (0-based).
    """
    spec = load_mapping(mapping)
    fw = as_framework(framework)
    labels = spec.check_labels(fw)
    hint = spec.framework_hint(fw)
    unlabelled_ok = allow_unlabelled or spec.strategy_field is None
    path = Path(path)
    container = spec.container or container_for(path)
    for index, (loc, record) in enumerate(iter_records(path, container)):
        yield _parse(record, loc, spec, fw, labels, hint, f"{path.stem}-{index}", unlabelled_ok)


def _parse(
    record: Any,
    loc: RecordLocation,
    spec: CorpusMapping,
    framework: Framework,
    labels: dict[str, str],
    hint: str,
    default_id: str,
    allow_unlabelled: bool,
) -> Dialogue:
    if not isinstance(record, dict):
        raise loc.error(
            f"a record must be a JSON object, got {type(record).__name__}",
            fix=f"each record must be an object with a '{spec.turns_field}' list",
        )
    raw_turns = _get(record, spec.turns_field)
    if raw_turns is _MISSING:
        raise loc.error(
            f"missing field (keys: {sorted(record)})",
            field=spec.turns_field,
            fix="set turns_field in the mapping to the key that holds the list of turns",
        )
    if not isinstance(raw_turns, list) or not raw_turns:
        raise loc.error(
            "must be a non-empty list of turns",
            field=spec.turns_field,
            fix="give the turns as a list of objects, or drop the record",
        )
    turns = []
    for i, raw in enumerate(raw_turns):
        field = f"{spec.turns_field}[{i}]"
        if not isinstance(raw, dict):
            raise loc.error(
                f"a turn must be an object, got {type(raw).__name__}",
                field=field,
                fix=(
                    f"write the turn as an object with the mapping's fields "
                    f"({spec.speaker_field!r}, {spec.text_field!r})"
                ),
            )
        for key in (spec.speaker_field, spec.text_field):
            if _get(raw, key) is _MISSING:
                raise loc.error(
                    f"missing field (turn keys: {sorted(raw)})",
                    field=f"{field}.{key}",
                    fix="add it, or point the mapping's speaker_field/text_field at the right key",
                )
        value = _get(raw, spec.speaker_field)
        speaker = spec.speaker(value)
        if speaker is None:
            raise loc.error(
                f"unknown speaker {value!r} (supporter: {spec.supporter}, customer: {spec.customer})",
                field=f"{field}.{spec.speaker_field}",
                fix="add the value to the mapping's supporter: or customer: list",
            )
        label = None
        rest = raw
        if spec.strategy_field is not None:
            label = _get(raw, spec.strategy_field)
            label = None if label is _MISSING else label
            rest = _without(raw, spec.strategy_field)
        rest = {k: v for k, v in rest.items() if k not in (spec.speaker_field, spec.text_field)}
        turns.append(
            make_turn(
                speaker,
                _get(raw, spec.text_field),
                label,
                framework=framework,
                loc=loc,
                field=field,
                strategy_field=spec.strategy_field or "strategy",
                text_field=spec.text_field,
                allow_unlabelled=allow_unlabelled,
                labels=labels,
                hint=hint,
                metadata=rest,
            )
        )
    used = [spec.turns_field, spec.id_field, spec.topic_field, spec.scenario_field]
    metadata = record
    for key in used:
        if key:
            metadata = _without(metadata, key)
    record_id = _scalar(record, spec.id_field, loc)
    return Dialogue(
        id=default_id if record_id is None else record_id,
        topic=_scalar(record, spec.topic_field, loc),
        scenario=_scalar(record, spec.scenario_field, loc),
        turns=turns,
        metadata=metadata,
    )


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return _MISSING
        obj = obj[part]
    return obj


def _without(obj: dict[str, Any], dotted: str) -> dict[str, Any]:
    """A copy of ``obj`` without the dotted field; parents it leaves empty are removed too."""
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


def _scalar(record: dict[str, Any], field: str | None, loc: RecordLocation) -> str | None:
    if field is None:
        return None
    value = _get(record, field)
    if value is _MISSING or value is None:
        return None
    if isinstance(value, (dict, list)):
        raise loc.error(
            "expected a single value, got a nested object", field=field, fix="map a text field"
        )
    return str(value)
