"""Validated turns: the checks every reader applies, whatever the file format.

Rules (documented in docs/data-formats.md):
- a turn's text is a non-empty string;
- a supporter turn's strategy label must name a strategy of the framework and is stored as its
  code; a supporter turn without a label is an error unless ``allow_unlabelled`` is set (the
  released data label every supporter turn; unlabelled corpora, such as raw dialogues to rewrite,
  opt in);
- a customer turn carries no strategy (missing, null or "").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from csc.data.errors import Hint, RecordLocation
from csc.dialogue import Dialogue, Speaker, Turn
from csc.framework import Framework, FrameworkError


def is_unlabelled(label: Any) -> bool:
    """True for the values that mean "no strategy": missing/None or an empty string."""
    return label is None or (isinstance(label, str) and not label.strip())


def strategy_code(
    label: Any,
    framework: Framework,
    loc: RecordLocation,
    field: str,
    *,
    labels: Mapping[str, str] | None = None,
    hint: str = "",
) -> str:
    """The framework code for a label, via an explicit ``labels`` table first, then normalize."""
    if not isinstance(label, str):
        raise loc.error(
            f"strategy label must be a string, got {type(label).__name__} {label!r}",
            field=field,
            fix="write the label as text, e.g. the official '策略1 礼貌问候' or the code",
        )
    try:
        return framework.normalize((labels or {}).get(label, label))
    except FrameworkError as exc:
        fix = "use one of the valid labels above"
        fix += ", or add the label to the mapping's labels: table" if labels is not None else ""
        fix += f"; {hint}" if hint else ""
        raise loc.error(str(exc), field=field, fix=fix) from None


def check_text(text: Any, loc: RecordLocation, field: str) -> str:
    """The turn text, which must be a non-empty string."""
    if not isinstance(text, str):
        raise loc.error(
            f"text must be a string, got {type(text).__name__}",
            field=field,
            fix="give the utterance as a JSON string",
        )
    if not text.strip():
        raise loc.error("empty text", field=field, fix="fill in the utterance or remove the turn")
    return text


def make_turn(
    speaker: Speaker,
    text: Any,
    label: Any,
    *,
    framework: Framework,
    loc: RecordLocation,
    field: str,
    strategy_field: str = "strategy",
    text_field: str = "text",
    allow_unlabelled: bool = False,
    labels: Mapping[str, str] | None = None,
    hint: str = "",
    metadata: dict[str, Any] | None = None,
) -> Turn:
    """A checked :class:`Turn` from raw values; ``field`` is the turn's path, e.g. ``dialogue[3]``.

    An empty ``field`` (a flat log's row) names the text and strategy fields alone.
    """
    text_at = f"{field}.{text_field}" if field else text_field
    strategy_at = f"{field}.{strategy_field}" if field else strategy_field
    text = check_text(text, loc, text_at)
    strategy: str | None = None
    if speaker is Speaker.CUSTOMER:
        if not is_unlabelled(label):
            raise loc.error(
                f"a customer turn carries no strategy, found {label!r}",
                field=strategy_at,
                fix='leave the customer\'s strategy empty (""), or check that the speaker is right',
            )
    elif is_unlabelled(label):
        if not allow_unlabelled:
            fb = framework.fallback
            raise loc.error(
                "supporter turn without a strategy label",
                field=strategy_at,
                fix="label it (the framework's fallback strategy is "
                f"{f'{fb.code} ({fb.name})' if fb else 'none'})",
                hints=[
                    Hint(
                        "--allow-unlabelled",
                        ", or allow unlabelled supporter turns",
                        "allow_unlabelled=True",
                    )
                ],
            )
    else:
        strategy = strategy_code(label, framework, loc, strategy_at, labels=labels, hint=hint)
    return Turn(speaker=speaker, text=text, strategy=strategy, metadata=metadata or {})


def check_dialogue(
    dialogue: Dialogue,
    framework: Framework,
    loc: RecordLocation,
    *,
    allow_unlabelled: bool = False,
    turns_field: str = "turns",
) -> Dialogue:
    """Apply the turn rules to an already-parsed dialogue; strategies become codes."""
    if not dialogue.turns:
        raise loc.error(
            "a dialogue needs at least one turn", field=turns_field, fix="add turns or drop it"
        )
    turns = [
        make_turn(
            t.speaker,
            t.text,
            t.strategy,
            framework=framework,
            loc=loc,
            field=f"{turns_field}[{i}]",
            allow_unlabelled=allow_unlabelled,
            metadata=t.metadata,
        )
        for i, t in enumerate(dialogue.turns)
    ]
    return dialogue.model_copy(update={"turns": turns})


def as_framework(framework: Framework | str | Any) -> Framework:
    """A :class:`Framework` from a Framework, a built-in name (``csc``, ``esc``) or a YAML path."""
    return framework if isinstance(framework, Framework) else Framework.load(framework)
