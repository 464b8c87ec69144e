"""What shape an answer must take, derived from the request alone.

The engine only sees chat messages and sampling options, not the DSPy signature. This module
recovers the expected output structure from what DSPy itself rendered:

* a ``response_format`` (JSONAdapter, or a caller's JSON schema / pydantic model) -> one JSON
  value following that schema;
* DSPy's ChatAdapter prompt -> the ``[[ ## field ## ]]`` sections of the output fields, in order,
  then ``[[ ## completed ## ]]``. The field order comes from the adapter's closing reminder in the
  last user message ("Respond with the corresponding output fields, starting with the field ..."),
  the value constraint of each field from the note the adapter writes next to it in the system
  message ("must exactly match (no extra characters) one of: ...", "must be True or False", "must
  adhere to the JSON schema: ...");
* anything else -> free text (no plan).

The result is an :class:`OutputPlan`: a flat list of segments that the decoder walks through.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# How DSPy's ChatAdapter phrases its requirements (dspy/adapters/chat_adapter.py and
# dspy/adapters/utils.py:translate_field_type). Kept in one place so a DSPy wording change shows
# up as one failing unit test.
_REMINDER = re.compile(
    r"Respond with the corresponding output fields, starting with the field (?P<fields>.*?),"
    r" and then ending with the marker for `\[\[ ## completed ## \]\]`",
    re.S,
)
_REMINDER_FIELD = re.compile(r"`\[\[ ## (\w+) ## \]\]`")
_NOTE_PREFIX = "# note: the value you produce "
_LITERAL_NOTE = "must exactly match (no extra characters) one of: "
_ENUM_NOTE = "must be one of: "
_SCHEMA_NOTE = "must adhere to the JSON schema: "

# Token reserves used when sharing the max_tokens budget between segments.
JSON_RESERVE = 96
NUMBER_RESERVE = 12


@dataclass(frozen=True)
class Fixed:
    """Literal text the model is forced to emit (section headers, the completion marker)."""

    text: str


@dataclass(frozen=True)
class Choice:
    """Exactly one of a closed set of strings (Literal / enum values, True/False)."""

    options: tuple[str, ...]


@dataclass(frozen=True)
class Text:
    """Free text of a ``str`` field: ends at end-of-turn, at ``[[`` or when its budget is spent."""

    field: str = ""


@dataclass(frozen=True)
class Grammar:
    """A value constrained by a compiled grammar: a JSON schema, any JSON, or a regex."""

    kind: str  # "json_schema" | "json_object" | "regex"
    spec: str  # JSON-encoded schema, or the regex; "" for json_object
    reserve: int = JSON_RESERVE


Segment = Fixed | Choice | Text | Grammar


@dataclass(frozen=True)
class FieldSpec:
    """One output field as recovered from a ChatAdapter prompt."""

    name: str
    kind: str  # "str" | "choice" | "bool" | "int" | "float" | "json"
    options: tuple[str, ...] = ()
    schema: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class OutputPlan:
    """The segments an answer is made of, in order; ``kind`` says where the plan came from."""

    kind: str  # "chat_adapter" | "json"
    segments: tuple[Segment, ...]
    fields: tuple[FieldSpec, ...] = field(default=())


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a chat message whose content is a string or a list of OpenAI content parts."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if isinstance(part, Mapping) and part.get("type") in ("text", "input_text"):
            parts.append(str(part.get("text", "")))
        elif isinstance(part, str):
            parts.append(part)
    return "\n".join(parts)


def chat_adapter_fields(messages: Sequence[Mapping[str, Any]]) -> list[FieldSpec] | None:
    """The output fields a DSPy ChatAdapter prompt asks for, or None if it is not one."""
    user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    if user is None:
        return None
    match = _REMINDER.search(message_text(user))
    if match is None:
        return None
    names = _REMINDER_FIELD.findall(match.group("fields"))
    if not names:
        return None
    system = "\n".join(message_text(m) for m in messages if m.get("role") == "system")
    return [_field_spec(name, system) for name in names]


def _field_spec(name: str, system: str) -> FieldSpec:
    # The structure block renders an output field as "[[ ## name ## ]]\n{name}<8 spaces># note: ..."
    # (no note for str fields); input fields share the syntax but never carry a value note.
    pattern = re.compile(
        r"^\[\[ ## " + re.escape(name) + r" ## \]\]\n\{" + re.escape(name) + r"\}(?P<rest>.*)$",
        re.M,
    )
    match = pattern.search(system)
    rest = match.group("rest").strip() if match else ""
    if not rest.startswith(_NOTE_PREFIX):
        return FieldSpec(name, "str")
    note = rest[len(_NOTE_PREFIX) :].strip()
    if note == "must be True or False":
        return FieldSpec(name, "bool", ("True", "False"))
    if note == "must be a single int value":
        return FieldSpec(name, "int")
    if note == "must be a single float value":
        return FieldSpec(name, "float")
    if note.startswith(_LITERAL_NOTE):
        return FieldSpec(name, "choice", _split_options(note[len(_LITERAL_NOTE) :]))
    if note.startswith(_ENUM_NOTE):
        return FieldSpec(name, "choice", _split_options(note[len(_ENUM_NOTE) :]))
    if note.startswith(_SCHEMA_NOTE):
        try:
            schema = json.loads(note[len(_SCHEMA_NOTE) :])
        except json.JSONDecodeError:
            return FieldSpec(name, "json", schema=None)
        return FieldSpec(name, "json", schema=schema)
    return FieldSpec(name, "str")


def _split_options(text: str) -> tuple[str, ...]:
    options = tuple(dict.fromkeys(o.strip() for o in text.split("; ") if o.strip()))
    return options


def chat_adapter_plan(fields: Sequence[FieldSpec], max_string_chars: int = 400) -> OutputPlan:
    """Segments for ChatAdapter output: each field's header and value, then the completion marker."""
    segments: list[Segment] = []
    pending = ""
    for i, spec in enumerate(fields):
        pending += ("\n\n" if i else "") + f"[[ ## {spec.name} ## ]]\n"
        segments.append(Fixed(pending))
        pending = ""
        segments.append(_value_segment(spec, max_string_chars))
    segments.append(Fixed("\n\n[[ ## completed ## ]]"))
    return OutputPlan("chat_adapter", tuple(segments), tuple(fields))


def _value_segment(spec: FieldSpec, max_string_chars: int) -> Segment:
    if spec.kind in ("choice", "bool") and spec.options:
        return Choice(spec.options)
    if spec.kind == "int":
        return Grammar("regex", r"-?(0|[1-9][0-9]{0,17})", NUMBER_RESERVE)
    if spec.kind == "float":
        return Grammar("regex", r"-?(0|[1-9][0-9]{0,15})(\.[0-9]{1,8})?", NUMBER_RESERVE)
    if spec.kind == "json":
        if spec.schema is None:
            return Grammar("json_object", "")
        bounded = bound_strings(spec.schema, max_string_chars)
        return Grammar("json_schema", json.dumps(bounded, sort_keys=True))
    return Text(spec.name)


def bound_strings(schema: Any, max_chars: int) -> Any:
    """A copy of a JSON schema whose unbounded strings get ``maxLength`` (keeps answers finite)."""
    if isinstance(schema, list):
        return [bound_strings(s, max_chars) for s in schema]
    if not isinstance(schema, Mapping):
        return schema
    out = {k: bound_strings(v, max_chars) for k, v in schema.items()}
    if out.get("type") == "string" and "maxLength" not in out and "enum" not in out:
        out["maxLength"] = max_chars
    return out


def response_format_plan(response_format: Any, max_string_chars: int = 400) -> OutputPlan | None:
    """A plan for an OpenAI-style ``response_format`` or a pydantic model class; None for text."""
    if response_format is None:
        return None
    schema: Any = None
    if isinstance(response_format, type) and hasattr(response_format, "model_json_schema"):
        schema = response_format.model_json_schema()
    elif isinstance(response_format, Mapping):
        kind = response_format.get("type")
        if kind == "json_object":
            return OutputPlan("json", (Grammar("json_object", ""),))
        if kind == "json_schema":
            inner = response_format.get("json_schema") or {}
            schema = inner.get("schema") if isinstance(inner, Mapping) else None
        elif kind == "text":
            return None
        elif "properties" in response_format or "$schema" in response_format:
            schema = response_format  # a bare JSON schema
    if schema is None:
        raise ValueError(
            f"unsupported response_format {response_format!r}; pass a pydantic model, "
            '{"type": "json_object"} or {"type": "json_schema", "json_schema": {"schema": ...}}'
        )
    bounded = bound_strings(schema, max_string_chars)
    return OutputPlan("json", (Grammar("json_schema", json.dumps(bounded, sort_keys=True)),))


def plan_for_request(
    messages: Sequence[Mapping[str, Any]],
    response_format: Any = None,
    *,
    max_string_chars: int = 400,
) -> OutputPlan | None:
    """The output plan for one request: JSON if a response_format is given, ChatAdapter sections
    if the prompt is a DSPy ChatAdapter prompt, otherwise None (free text)."""
    if response_format is not None:
        return response_format_plan(response_format, max_string_chars)
    fields = chat_adapter_fields(messages)
    if fields is None:
        return None
    return chat_adapter_plan(fields, max_string_chars)
