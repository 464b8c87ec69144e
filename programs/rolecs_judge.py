"""The RoleCS quality filter: an LM judge of finished synthetic dialogues."""

from __future__ import annotations

from typing import Any

import dspy

from csc.data.turns import as_framework
from csc.dialogue import Dialogue
from csc.framework import Framework, Language
from csc.signatures.rolecs import JUDGE_CRITERIA, rolecs_signatures
from csc.signatures.types import DialogueHistory


class RoleCSJudge(dspy.Module):
    """The RoleCS quality filter: an LM judge scores a finished dialogue on five binary criteria
    (strategy adherence, spotting unreasonable demands, natural replies, varied expression, role
    consistency); a dialogue passes only with all five."""

    def __init__(self, framework: Framework | str = "csc", language: Language = "en") -> None:
        super().__init__()
        self.framework = as_framework(framework)
        self.language = language
        self.judge = dspy.Predict(rolecs_signatures(self.framework, language).judge)

    def forward(self, dialogue: Dialogue, config: dict[str, Any] | None = None) -> dspy.Prediction:
        """Score ``dialogue``; returns ``criteria`` ({name: {"pass", "reason"}}) and ``passed``."""
        pred = self.judge(
            scenario=dialogue.scenario or "",
            dialogue=DialogueHistory.of(dialogue.turns, language=self.language),
            strategy_definitions=self.framework.render(self.language, with_rules=False),
            config=config or {},
        )
        return verdicts(pred, JUDGE_CRITERIA)


def verdicts(pred: dspy.Prediction, names: tuple[str, ...]) -> dspy.Prediction:
    """A judge's answer as ``criteria`` ({name: {"pass", "reason"}}) and ``passed`` (all pass)."""
    criteria = {
        c: {"pass": bool(getattr(pred, c)), "reason": str(getattr(pred, f"{c}_reason"))}
        for c in names
    }
    return dspy.Prediction(criteria=criteria, passed=all(v["pass"] for v in criteria.values()))
