"""Typed field values shared by csc signatures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import dspy
from pydantic import Field

from csc.dialogue import Speaker, Turn

# Chinese descriptions of a judge's per-criterion fields (RoleCS judge, rewrite post-filter).
ZH_REASON = "一句话理由"
ZH_VERDICT = "通过为 true，不通过为 false"

_SPEAKER_NAMES = {
    "en": {Speaker.SUPPORTER: "Supporter", Speaker.CUSTOMER: "Customer"},
    "zh": {Speaker.SUPPORTER: "客服", Speaker.CUSTOMER: "客户"},
}


class DialogueHistory(dspy.Type):
    """The conversation so far, as a typed list of turns.

    Renders compactly for prompts, one turn per line: ``Supporter [GT]: Hello ...`` /
    ``Customer: ...`` (``客服``/``客户`` when ``language="zh"``). Supporter turns show their
    strategy code when ``show_strategies`` is on, so a model sees the strategy sequence so far.
    """

    turns: list[Turn] = Field(default_factory=list)
    language: str = "en"
    show_strategies: bool = True

    @classmethod
    def of(
        cls, turns: Sequence[Turn], language: str = "en", show_strategies: bool = True
    ) -> DialogueHistory:
        """Build a history from turns (a copy of the list is kept)."""
        return cls(turns=list(turns), language=language, show_strategies=show_strategies)

    def format(self) -> str:
        names = _SPEAKER_NAMES.get(self.language, _SPEAKER_NAMES["en"])
        if not self.turns:
            return (
                "(对话尚未开始)"
                if self.language == "zh"
                else "(the conversation has not started yet)"
            )
        lines = []
        for turn in self.turns:
            name = names[turn.speaker]
            tag = f" [{turn.strategy}]" if self.show_strategies and turn.strategy else ""
            lines.append(f"{name}{tag}: {turn.text}")
        return "\n".join(lines)

    def __len__(self) -> int:
        return len(self.turns)


def type_demo_histories(module: dspy.Module) -> None:
    """Turn the JSON histories of a loaded program's demos back into :class:`DialogueHistory`
    values, so a demo renders like a live history (``program.load`` reads them as dicts)."""
    for _, predictor in module.named_predictors():
        for demo in predictor.demos:
            value = demo.get("history") if hasattr(demo, "get") else None
            if isinstance(value, dict):
                demo["history"] = DialogueHistory.model_validate(value)


def localized(
    template: type[dspy.Signature],
    instructions: str | None = None,
    descs: Mapping[str, str] | None = None,
) -> type[dspy.Signature]:
    """A signature class template in another language (or prompt variant): the same fields and
    types, with other ``instructions`` and the field descriptions ``descs`` (field name ->
    description; names the template lacks are skipped). Every csc signature is written as a
    class (its docstring the English prompt) and localized this way.
    """
    sig = template if instructions is None else template.with_instructions(instructions)
    for field, desc in (descs or {}).items():
        if field in sig.fields:
            sig = sig.with_updated_fields(field, desc=desc)
    return sig


def zh_judge_descs(criteria: Sequence[str]) -> dict[str, str]:
    """Chinese descriptions of a judge's ``<criterion>_reason`` and ``<criterion>`` fields."""
    return {f: d for c in criteria for f, d in ((f"{c}_reason", ZH_REASON), (c, ZH_VERDICT))}
