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
from dataclasses import dataclass, field, replace
from functools import lru_cache
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
_OUTPUT_FIELDS_HEADER = "Your output fields are:"
# "1. `response` (str): The supporter's next reply (1-2 sentences)." The type may itself hold
# parentheses (Literal[...]), so the description starts after the first "): ".
_FIELD_LINE = re.compile(r"^\d+\. `(?P<name>\w+)` \(.*?\): (?P<desc>.*)$")

# Bumped whenever a rule here or in decoding.py changes what an answer can be; LocalLM puts it in
# its cache key so cached answers from older rules are not served.
DECODING_RULES_VERSION = 5

# Token reserves used when sharing the max_tokens budget between segments.
JSON_RESERVE = 96
NUMBER_RESERVE = 12


@dataclass(frozen=True)
class Fixed:
    """Literal text the model is forced to emit (section headers, the completion marker)."""

    text: str


@dataclass(frozen=True)
class Choice:
    """Exactly one of a closed set of strings (Literal / enum values, True/False).

    ``calibratable`` marks a Literal / Enum field (not ``bool``), the outputs contextual
    calibration applies to. ``prior``, when set, holds each option's probability on a
    content-free input (see :mod:`csc.engine.calibration`); the decoder then picks by
    ``p(option | input) / prior(option)`` instead of ``p(option | input)``.
    """

    options: tuple[str, ...]
    calibratable: bool = False
    prior: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Text:
    """Free text of a ``str`` field: ends at end-of-turn, at ``[[`` or when its budget is spent.

    ``max_sentences`` (from the field's description, e.g. "1-2 sentences") ends the field after
    that many sentences. ``speakers`` are the speaker names of a transcript among the inputs
    (e.g. ``Supporter``, ``Customer``, ``客服``): a line in that format ends the field, and a
    value that opens with one (or with meta-text such as "My next response will be:") loses
    that opening (see :class:`ReplyGuard`).
    """

    field: str = ""
    max_sentences: int | None = None
    speakers: tuple[str, ...] = ()


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
    description: str = ""


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
    descriptions = output_field_descriptions(system)
    return [
        replace(_field_spec(name, system), description=descriptions.get(name, "")) for name in names
    ]


def output_field_descriptions(system: str) -> dict[str, str]:
    """``{name: description}`` of the output fields a ChatAdapter system message lists.

    DSPy renders them as "Your output fields are:" followed by "1. `name` (type): description".
    """
    _head, sep, tail = system.partition(_OUTPUT_FIELDS_HEADER)
    if not sep:
        return {}
    out: dict[str, str] = {}
    for line in tail.splitlines():
        match = _FIELD_LINE.match(line)
        if match is None:
            if out:  # the list ended
                break
            continue
        out[match.group("name")] = match.group("desc").strip()
    return out


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


def chat_adapter_plan(
    fields: Sequence[FieldSpec], max_string_chars: int = 400, speakers: Sequence[str] = ()
) -> OutputPlan:
    """Segments for ChatAdapter output: each field's header and value, then the completion marker.

    ``speakers`` are the transcript speaker names found among the inputs (see
    :func:`transcript_speakers`); free-text values may not continue that transcript.
    """
    segments: list[Segment] = []
    pending = ""
    for i, spec in enumerate(fields):
        pending += ("\n\n" if i else "") + f"[[ ## {spec.name} ## ]]\n"
        segments.append(Fixed(pending))
        pending = ""
        segments.append(_value_segment(spec, max_string_chars, tuple(speakers)))
    segments.append(Fixed("\n\n[[ ## completed ## ]]"))
    return OutputPlan("chat_adapter", tuple(segments), tuple(fields))


def _value_segment(
    spec: FieldSpec, max_string_chars: int, speakers: tuple[str, ...] = ()
) -> Segment:
    if spec.kind in ("choice", "bool") and spec.options:
        return Choice(spec.options, calibratable=spec.kind == "choice")
    if spec.kind == "int":
        return Grammar("regex", r"-?(0|[1-9][0-9]{0,17})", NUMBER_RESERVE)
    if spec.kind == "float":
        return Grammar("regex", r"-?(0|[1-9][0-9]{0,15})(\.[0-9]{1,8})?", NUMBER_RESERVE)
    if spec.kind == "json":
        if spec.schema is None:
            return Grammar("json_object", "")
        bounded = bound_strings(spec.schema, max_string_chars)
        return Grammar("json_schema", json.dumps(bounded, sort_keys=True))
    if writes_transcript(spec):
        speakers = ()
    return Text(spec.name, max_sentences=sentence_limit(spec.description), speakers=speakers)


# ---------------------------------------------------------------------------- reply length
_NUMBER_WORDS = {
    "a": 1, "one": 1, "single": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "一": 1, "两": 2, "二": 2, "三": 3, "四": 4, "五": 5, "六": 6,
}  # fmt: skip
_N = r"(\d+|a single|one|two|three|four|five|six)"
_EN_SENTENCES = re.compile(
    rf"\b{_N}(?:\s*(?:-|–|to|or)\s*{_N})?(?:\s+[a-z]+){{0,2}}?\s+sentences?\b", re.I
)
_ZH_N = r"(\d+|[一两二三四五六])"
_ZH_SENTENCES = re.compile(rf"{_ZH_N}(?:\s*(?:-|–|~|～|到|至)\s*{_ZH_N})?\s*句")


def sentence_limit(description: str) -> int | None:
    """The most sentences a field's description allows ("1-2 sentences" -> 2,
    "one colloquial sentence" -> 1, "1-2 句话" -> 2, "一句话" -> 1); None if it names none.

    A range wins over a single count, so "下一句回复（1-2 句话）" ("the next reply, 1-2
    sentences") reads 2.
    """
    text = description or ""
    singles: list[int] = []
    for pattern in (_EN_SENTENCES, _ZH_SENTENCES):
        for match in pattern.finditer(text):
            if pattern is _ZH_SENTENCES and text[max(0, match.start() - 1) : match.start()] in (
                "下",
                "上",
                "这",
                "那",
                "每",
            ):
                continue  # 下一句 = "the next utterance", not a count
            values = [_number(g) for g in match.groups() if g]
            if not values or any(v is None for v in values):
                continue
            counts = [v for v in values if v is not None]
            if len(counts) == 2:
                return max(counts)
            singles.append(counts[0])
    return singles[0] if singles else None


def _number(text: str) -> int | None:
    text = text.lower().replace("a single", "single")
    if text.isdigit():
        return int(text) or None
    return _NUMBER_WORDS.get(text)


# ---------------------------------------------------------------------------- transcripts
# Speaker names a small model falls back to when it continues a transcript, whatever the
# history's own names are; kept short because they only count at the start of a line/reply.
DEFAULT_SPEAKERS = (
    "Supporter", "Customer", "Agent", "Assistant", "User", "Seeker", "System",
    "客服", "客户", "用户", "助手", "坐席",
)  # fmt: skip
# "Supporter [GT]: hello", "Customer: hi", "客服 [EM]：您好": a name, an optional bracketed tag,
# a colon. Names are short and colon-free; tags are what DialogueHistory renders.
_TRANSCRIPT_LINE = re.compile(
    r"^(?P<name>[^\s:：\[\]【】#`{}][^:：\[\]【】\n{}]{0,23}?)\s*"
    r"(?:[\[【][^\]】\n]{0,40}[\]】])?\s*[:：]\s*\S"
)
_REMINDER_START = "\n\nRespond with the corresponding output fields"
# Input fields that hold a conversation even before it has a first line.
HISTORY_FIELD_NAMES = frozenset(
    {"history", "dialogue", "conversation", "transcript", "chat_history", "dialogue_history"}
)
_TRANSCRIPT_WORDS = ("dialogue", "transcript", "conversation", "对话", "会话")
_INPUT_SECTION = re.compile(r"\[\[ ## (\w+) ## \]\]\n(.*?)(?=\n\n\[\[ ## \w+ ## \]\]|\Z)", re.S)


def transcript_speakers(messages: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """Speaker names of the transcripts among a ChatAdapter request's input values.

    An input value is a transcript when its first line and most of its lines read
    ``Name[ [tag]]: text`` with a handful of distinct names (DSPy demos included); an input
    named like a history (``history``, ``dialogue``, ...) counts even while it is still empty.
    Returns the names found plus :data:`DEFAULT_SPEAKERS`, or ``()`` when no input is one.
    """
    names: dict[str, None] = {}
    has_transcript = False
    for message in messages:
        if message.get("role") != "user":
            continue
        for name, value in _INPUT_SECTION.findall(message_text(message)):
            value = value.split(_REMINDER_START, 1)[0]
            named = name.lower() in HISTORY_FIELD_NAMES
            has_transcript = has_transcript or named
            lines = [line for line in value.splitlines() if line.strip()]
            found = [m for m in map(_TRANSCRIPT_LINE.match, lines) if m]
            speakers = {m.group("name").strip() for m in found}
            # One "Name: text" line is too little to call any value a transcript ("EM: ...").
            if (
                lines
                and _TRANSCRIPT_LINE.match(lines[0])
                and len(found) >= 0.6 * len(lines)
                and (len(found) >= 2 or named)
                and len(speakers) <= 4
            ):
                has_transcript = True
                names.update(dict.fromkeys(sorted(speakers)))
    if not has_transcript:
        return ()
    return tuple(dict.fromkeys([*names, *DEFAULT_SPEAKERS]))


def writes_transcript(spec: FieldSpec) -> bool:
    """Whether an output field is itself a dialogue (its name or description says so), so
    speaker lines are its content rather than a runaway continuation."""
    text = f"{spec.name} {spec.description}".lower()
    return any(word in text for word in _TRANSCRIPT_WORDS)


# "fields", "interactions", "objective": DSPy's own prompt ("Your output fields are:", "In
# adhering to this structure, your objective is:"), which small models echo.
_META_WORDS = r"(?:response|reply|answer|utterance|fields?|interactions|objective)"
_ZH_META_WORDS = r"(?:回复|回答|答复|回应)"
# A sentence about the task rather than a reply in it ("Your next reply will be in 1 sentence",
# "The conversation so far is: ...", "your input fields are"), with or without a colon.
_TASK_TALK = (
    r"\b(?:next (?:reply|response|utterance|message)|(?:input|output) fields?"
    r"|your objective|the conversation so far)\b"
    r"|下一句回复|下一轮回复|输入字段|输出字段|目前为止的对话"
)


@dataclass(frozen=True)
class ReplyGuard:
    """Patterns that tell a free-text value has turned into transcript or meta-text.

    * ``opening`` matches a value that *starts* with a speaker label (``Supporter [IV]:``) or
      with meta-text ending in a colon (``My next response will be:``, ``Response:``,
      ``回复：``): the decoder drops that opening and lets the model write the value itself.
    * ``line`` matches a later line (or sentence) that starts with a speaker label or such
      meta-text: the value ends before it.
    """

    opening: re.Pattern[str]
    line: re.Pattern[str]
    # A sentence (at the start of the value or after a sentence end) that talks about the task.
    task_talk: re.Pattern[str] = re.compile(
        rf"(?:^|(?<=[.!?。！？…])|(?<=\n))\s*[^\n.!?。！？]{{0,80}}?(?:{_TASK_TALK})", re.I
    )

    @classmethod
    @lru_cache(maxsize=64)
    def build(cls, speakers: tuple[str, ...], field_name: str = "") -> ReplyGuard:
        """The guard for a transcript with ``speakers`` and the output field ``field_name``."""
        names = sorted({s for s in speakers if s}, key=len, reverse=True)
        label_alternatives = [re.escape(n) for n in names]
        if field_name:
            label_alternatives.append(re.escape(field_name))
        label = rf"(?:{'|'.join(label_alternatives)})\s*(?:[\[【(（][^\]】)）\n]{{0,40}}[\]】)）])?\s*[:：]"
        meta = (
            rf"[^\n.!?。！？:：]{{0,60}}?\b{_META_WORDS}\b[^\n.!?。！？:：]{{0,40}}[:：]"
            rf"|[^\n。！？:：]{{0,20}}{_ZH_META_WORDS}[^\n。！？:：]{{0,10}}[:：]"
        )
        # An echoed list item ("1. `response` (str): ...") counts as meta-text too.
        # A bare strategy tag ("1. [GT]: ...", "1. [Version 2,3] In action: ...") is a
        # transcript label without its name.
        tag = r"[\[【][^\]】\n]{1,40}[\]】][^\n.!?。！？:：]{0,24}[:：]"
        # Any short label closed by a colon before the first clause ends ("AC（感谢与告别）：",
        # "Agent reply:"), the way a strategy code or a role is written in the prompt.
        short = r"[^\n.!?。！？:：,，;；]{1,24}[:：]"
        opening = re.compile(
            rf"^\s*(?:\d{{1,2}}[.)]\s*|[-*•]\s+)?(?:{label}|{tag}|{meta}|{short})", re.I
        )
        # A new line that opens with a few words and a strategy tag ("No [GT]: ...") is a turn
        # of a transcript whose speaker name the model made up.
        named_tag = rf"(?<=\n)[ \t]*[^\n.!?。！？:：\[【]{{0,24}}{tag}"
        line = re.compile(
            rf"(?:(?<=\n)|(?<=[.!?。！？…]))[ \t\n]*(?:{label}|{meta})|{named_tag}", re.I
        )
        return cls(opening, line)


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
    return chat_adapter_plan(fields, max_string_chars, transcript_speakers(messages))
