"""The dialogue data model shared by every stage: turns, dialogues, speakers."""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Speaker(str, Enum):
    """Who says a turn."""

    SUPPORTER = "supporter"
    CUSTOMER = "customer"

    def __str__(self) -> str:
        return self.value


class Turn(BaseModel):
    """One utterance. Supporter turns carry a strategy code of the dialogue's framework."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False)

    speaker: Speaker
    text: str
    strategy: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def is_supporter(self) -> bool:
        return self.speaker is Speaker.SUPPORTER


class Dialogue(BaseModel):
    """A support conversation with its topic and optional scenario, profile and metadata."""

    model_config = ConfigDict(extra="forbid")

    id: str
    topic: str | None = None
    turns: list[Turn] = Field(default_factory=list)
    scenario: str | None = None
    profile: str | dict[str, Any] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def supporter_turns(self) -> list[Turn]:
        return [t for t in self.turns if t.speaker is Speaker.SUPPORTER]

    @property
    def customer_turns(self) -> list[Turn]:
        return [t for t in self.turns if t.speaker is Speaker.CUSTOMER]

    def alternates(self) -> bool:
        """True when no speaker has two consecutive turns."""
        return all(a.speaker != b.speaker for a, b in zip(self.turns, self.turns[1:]))

    def strategies(self) -> list[str]:
        """Strategy codes of the supporter turns, in order (unlabelled turns skipped)."""
        return [t.strategy for t in self.turns if t.is_supporter and t.strategy]
