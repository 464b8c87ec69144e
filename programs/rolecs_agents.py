"""RoleCS's supporter agents as programs an optimizer can compile.

``csc optimize --program rolecs`` compiles the two agents that speak for the supporter in a
RoleCS dialogue, each against its own metric:

* :class:`SupporterAssistantAgent` — (scenario, history) -> the next strategy; scored by strategy
  accuracy against the gold next strategy of labelled dialogues;
* :class:`SupporterReplyAgent` — (scenario, history, strategy) -> the reply; scored by strategy
  adherence: an independent strategy labeler reads the reply and must name the strategy the reply
  was asked to carry out (:func:`csc.eval.dspy_metrics.strategy_adherence_metric`).

:class:`RoleCSAgents` holds both compiled predictors under the names :class:`~csc.programs.
rolecs.RoleCS` gives them (``supporter_assistant``, ``supporter``), so its saved JSON state loads
straight into a RoleCS program (``RoleCS(...).load("P.json")``, ``csc synthesize --program``).
It is also a supporter in its own right (history -> strategy, response), so ``optimized:P.json``
works wherever a supporter spec does (``csc evaluate``, ``csc compare``, an export teacher).

Examples come from labelled dialogues (:func:`rolecs_examples`): every supporter turn with a gold
strategy, its history, the dialogue's scenario (empty when the data has none, as in the shipped
samples and CSConv) and the gold reply.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import dspy

from csc.data.turns import as_framework
from csc.dialogue import Dialogue
from csc.framework import Framework, Language
from csc.programs.rolecs_policy import policy_definitions
from csc.programs.supporter import as_history
from csc.signatures.rolecs import rolecs_signatures
from csc.signatures.types import DialogueHistory, type_demo_histories

__all__ = [
    "RoleCSAgents",
    "SupporterAssistantAgent",
    "SupporterReplyAgent",
    "rolecs_examples",
]


def rolecs_examples(
    dialogues: Iterable[Dialogue], framework: Framework | str = "csc", language: str = "en"
) -> list[dspy.Example]:
    """One example per labelled supporter turn, in dialogue order.

    Fields: ``scenario`` (the dialogue's, or empty), ``history`` (the turns before it, with their
    strategy codes, as RoleCS shows them), ``strategy`` and ``stage`` (gold), ``reply`` (the gold
    reply), ``dialogue_id``, ``turn_index``. Inputs: ``scenario`` and ``history`` (the supporter
    assistant's); the reply agent adds ``strategy``.
    """
    fw = as_framework(framework)
    examples = []
    for dialogue in dialogues:
        for index, turn in enumerate(dialogue.turns):
            if not turn.is_supporter or not turn.strategy:
                continue
            examples.append(
                dspy.Example(
                    scenario=dialogue.scenario or "",
                    history=DialogueHistory.of(dialogue.turns[:index], language=language),
                    strategy=turn.strategy,
                    stage=fw.strategy(turn.strategy).stage or "",
                    reply=turn.text,
                    dialogue_id=dialogue.id,
                    turn_index=index,
                ).with_inputs("scenario", "history")
            )
    return examples


class _AgentModule(dspy.Module):
    """Framework and language bookkeeping, typed histories in loaded demos; one predictor per
    name in ``agents``, named as RoleCS names its agent of that signature."""

    agents: tuple[str, ...] = ()

    def __init__(self, framework: Framework | str = "csc", language: Language = "en") -> None:
        super().__init__()
        self.framework = as_framework(framework)
        self.language: Language = language
        signatures = rolecs_signatures(self.framework, language)
        for name in self.agents:
            setattr(self, name, dspy.Predict(getattr(signatures, name)))

    def load_state(self, state: dict, **kwargs: Any) -> None:
        """Load saved state, turning the JSON histories of saved demos back into typed ones."""
        super().load_state(state, **kwargs)
        type_demo_histories(self)

    def _assistant_inputs(self, scenario: str, history: Any) -> dict[str, Any]:
        return {
            "scenario": scenario,
            "history": as_history(history, self.language),
            "strategy_definitions": policy_definitions(self.framework, self.language),
            "feedback": "none",
        }

    def _reply_inputs(self, scenario: str, history: Any, strategy: str) -> dict[str, Any]:
        return {
            "scenario": scenario,
            "strategy": self.framework.render_strategy(strategy, self.language),
            "history": as_history(history, self.language),
        }


class SupporterAssistantAgent(_AgentModule):
    """RoleCS's supporter assistant alone: the next strategy code and its stage."""

    agents = ("supporter_assistant",)

    def forward(self, scenario: str, history: Any) -> dspy.Prediction:
        """``Prediction(strategy, stage)`` for the conversation so far."""
        out = self.supporter_assistant(**self._assistant_inputs(scenario, history))
        return dspy.Prediction(
            strategy=self.framework.normalize(str(out.strategy)), stage=str(out.stage)
        )


class SupporterReplyAgent(_AgentModule):
    """RoleCS's supporter alone: the reply carrying out a given strategy."""

    agents = ("supporter",)

    def forward(self, scenario: str, history: Any, strategy: str) -> dspy.Prediction:
        """``Prediction(strategy, response)``: the reply and the strategy it was asked to use."""
        code = self.framework.normalize(strategy)
        out = self.supporter(**self._reply_inputs(scenario, history, code))
        return dspy.Prediction(strategy=code, response=str(out.reply).strip())


class RoleCSAgents(_AgentModule):
    """The two RoleCS supporter agents, compiled or not: the program ``csc optimize --program
    rolecs`` saves and ``csc synthesize --program`` runs.

    As a supporter (``forward(history)``) it chooses the strategy with the supporter assistant
    and writes the reply with the supporter, with an empty scenario (a plain history has none).
    """

    kind = "rolecs"

    agents = ("supporter_assistant", "supporter")

    @classmethod
    def from_agents(
        cls, assistant: SupporterAssistantAgent, reply: SupporterReplyAgent
    ) -> RoleCSAgents:
        """One program holding the predictors of two (compiled) agents."""
        if len({(a.framework.name, a.language) for a in (assistant, reply)}) != 1:
            raise ValueError("both agents must use the same framework and language")
        program = cls(assistant.framework, assistant.language)
        program.supporter_assistant = assistant.supporter_assistant
        program.supporter = reply.supporter
        return program

    def forward(
        self, history: Any, strategy: str | None = None, scenario: str = ""
    ) -> dspy.Prediction:
        """``Prediction(strategy, response)``; a given ``strategy`` skips the choice."""
        if strategy is None:
            out = self.supporter_assistant(**self._assistant_inputs(scenario, history))
            strategy = str(out.strategy)
        code = self.framework.normalize(strategy)
        reply = self.supporter(**self._reply_inputs(scenario, history, code))
        return dspy.Prediction(
            strategy=code, response=str(reply.reply).strip(), strategy_fallback=False
        )


def tidy_agent_demos(program: dspy.Module, framework: Framework, language: str) -> None:
    """Keep only what each saved demo needs to be shown in a prompt.

    Demos of the supporter assistant drop ``strategy_definitions``: the definitions are the same
    in every call and already in the live input, and repeating them per demo would multiply the
    prompt (DSPy then marks the demo as having a field not supplied). Labelled demos of the
    supporter carry the strategy code; it becomes the definition the supporter is really given.
    Fields outside the signature (dialogue ids, the gold reply on assistant demos) are dropped.
    """
    for name, predictor in program.named_predictors():
        fields = set(predictor.signature.fields)
        if name.endswith("supporter_assistant"):
            fields.discard("strategy_definitions")
        tidy = []
        for demo in predictor.demos:
            data = dict(demo.items())
            if name.endswith("supporter") and "reply" in fields and "strategy" in data:
                code = str(data["strategy"])
                if code in framework.codes:
                    data["strategy"] = framework.render_strategy(code, language)
            if name.endswith("supporter_assistant"):
                data.setdefault("feedback", "none")
            tidy.append({k: v for k, v in data.items() if k in fields})
        predictor.demos = tidy
