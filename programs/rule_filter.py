"""The CSConv rule pre-filter: plain-code checks on raw dialogues, before any LM sees them.

First the turns are cleaned: text is NFC-normalized and stripped of zero-width characters,
turns left empty are removed, system lines (transfer notices, "agent joined", bot prompts; see
:data:`DEFAULT_SYSTEM_PATTERNS`) are removed, and consecutive utterances of the same speaker are
merged into one. Then the paper's rules, each threshold a field of :class:`RuleFilterConfig`:

==========================  ==================================================================
rule                        drops a dialogue when
==========================  ==================================================================
``too_few_turns``           it has fewer than ``min_turns`` (3) turns
``too_many_turns``          it has more than ``max_turns`` (30) turns
``supporter_heavy``         ``customer_ratio`` (2) x customer utterances <= supporter utterances
``short_customer_turns``    fewer than ``min_long_customer_share`` (70%) of customer utterances
                            are longer than ``short_customer_chars`` (3) characters
``long_utterance``          any utterance is longer than ``max_utterance_chars`` (500)
==========================  ==================================================================

The first rule that fires is recorded as the reason.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from csc.dialogue import Dialogue, Turn

__all__ = [
    "DEFAULT_SYSTEM_PATTERNS",
    "RULES",
    "CleanedDialogue",
    "RuleFilterConfig",
    "check_rules",
    "clean_dialogue",
]

RULES: tuple[str, ...] = (
    "too_few_turns",
    "too_many_turns",
    "supporter_heavy",
    "short_customer_turns",
    "long_utterance",
)
"""The rules, in the order they are checked."""

DEFAULT_SYSTEM_PATTERNS: tuple[str, ...] = (
    r"^\s*[\[【(（]?\s*(系统消息|系统提示|系统通知|自动回复|system( message)?|auto[- ]?reply)\s*[\]】)）:：]",
    r"(已为您转接|正在为您转接|转接(至|到)?人工|进入会话|离开会话|结束了会话|会话已结束|正在输入|已接入)",
    r"\b(has joined|has left|joined the (chat|conversation)|left the (chat|conversation)|"
    r"transferred (you )?to|is typing|chat (has )?ended|connecting you to)\b",
)
"""Regular expressions (case-insensitive) that mark a whole turn as a system line."""

_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")


class RuleFilterConfig(BaseModel):
    """Thresholds of the rule pre-filter (defaults: the CSConv paper's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_turns: int = Field(3, ge=1, description="keep dialogues with at least this many turns")
    max_turns: int = Field(30, ge=1, description="... and at most this many")
    customer_ratio: float = Field(
        2.0, ge=0, description="drop when ratio x customer utterances <= supporter utterances"
    )
    short_customer_chars: int = Field(
        3, ge=0, description="a customer utterance is short at this many characters or fewer"
    )
    min_long_customer_share: float = Field(
        0.7, ge=0, le=1, description="drop when fewer customer utterances than this are long"
    )
    max_utterance_chars: int = Field(500, ge=1, description="drop when any utterance is longer")
    merge_consecutive: bool = True
    system_patterns: tuple[str, ...] = DEFAULT_SYSTEM_PATTERNS


@dataclass
class CleanedDialogue:
    """A dialogue after cleaning, with what cleaning removed or merged."""

    dialogue: Dialogue
    empty_removed: int = 0
    system_removed: int = 0
    merged: int = 0


def _normalize(text: str) -> str:
    return _ZERO_WIDTH.sub("", unicodedata.normalize("NFC", text)).strip()


def clean_dialogue(
    dialogue: Dialogue, config: RuleFilterConfig | None = None, *, language: str = "en"
) -> CleanedDialogue:
    """Normalize text, remove empty and system turns, merge same-speaker runs (joined by a space
    in English, by nothing after Chinese sentence-final punctuation, else by ``，``)."""
    config = config or RuleFilterConfig()
    system = [re.compile(p, re.I) for p in config.system_patterns]
    out = CleanedDialogue(dialogue)
    turns: list[Turn] = []
    for turn in dialogue.turns:
        text = _normalize(turn.text)
        if not text:
            out.empty_removed += 1
            continue
        if any(p.search(text) for p in system):
            out.system_removed += 1
            continue
        if config.merge_consecutive and turns and turns[-1].speaker == turn.speaker:
            prev = turns[-1]
            turns[-1] = prev.model_copy(update={"text": _join(prev.text, text, language)})
            out.merged += 1
            continue
        turns.append(turn.model_copy(update={"text": text}))
    out.dialogue = dialogue.model_copy(update={"turns": turns})
    return out


def _join(a: str, b: str, language: str) -> str:
    if language == "zh":
        return a + ("" if a[-1] in "。！？!?…~～，,；;" else "，") + b
    return f"{a} {b}"


def check_rules(dialogue: Dialogue, config: RuleFilterConfig | None = None) -> str | None:
    """The first rule (of :data:`RULES`) that drops ``dialogue``, or None when it passes."""
    config = config or RuleFilterConfig()
    turns: Sequence[Turn] = dialogue.turns
    if len(turns) < config.min_turns:
        return "too_few_turns"
    if len(turns) > config.max_turns:
        return "too_many_turns"
    customer = [t for t in turns if not t.is_supporter]
    supporter = len(turns) - len(customer)
    if config.customer_ratio * len(customer) <= supporter:
        return "supporter_heavy"
    long_ones = sum(1 for t in customer if len(t.text) > config.short_customer_chars)
    if customer and long_ones < config.min_long_customer_share * len(customer):
        return "short_customer_turns"
    if any(len(t.text) > config.max_utterance_chars for t in turns):
        return "long_utterance"
    return None
