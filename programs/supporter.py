"""Supporter programs: predict the next strategy, then reply with it (and the no-strategy ablation).

* :class:`StrategyPredictor` — history -> strategy code (the sub-program ``csc optimize --program
  strategy`` compiles).
* :class:`Supporter` — predicts the strategy with its ``strategist``, then writes the reply with its
  ``responder`` given that strategy and its definition; returns ``Prediction(strategy, response)``.
* :class:`DirectSupporter` — the ablation: replies directly, and the strategy its reply carries out
  is labelled afterwards by a separate ``labeler``.

All of them work with any framework and language, and with either prompt variant (``prompt=
"full"``, the default, or ``"compact"``, the short student prompt of a fine-tuned supporter; see
:mod:`csc.signatures.supporter`). The prompt-export helpers
(:func:`strategy_prediction_messages`, :func:`response_generation_messages`,
:func:`completion_content`) return exactly the chat messages the sub-programs send, so a
fine-tuning exporter trains on the prompts used at inference time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dspy

from csc.data.turns import as_framework
from csc.dialogue import Turn
from csc.framework import Framework, Language
from csc.signatures.supporter import (
    PromptVariant,
    check_prompt_variant,
    direct_response_signature,
    response_generation_signature,
    strategy_labeling_signature,
    strategy_prediction_signature,
)
from csc.signatures.types import DialogueHistory, type_demo_histories

__all__ = [
    "DirectSupporter",
    "StrategyLabeler",
    "StrategyPredictor",
    "Supporter",
    "completion_content",
    "response_generation_messages",
    "strategy_prediction_messages",
]

HistoryLike = DialogueHistory | Sequence[Turn]


def as_history(history: HistoryLike | Mapping[str, Any], language: Language) -> DialogueHistory:
    """A :class:`DialogueHistory` from a history, a list of turns or its JSON form."""
    if isinstance(history, DialogueHistory):
        return history
    if isinstance(history, Mapping):  # the serialized form saved in few-shot demos
        return DialogueHistory.model_validate(history)
    return DialogueHistory.of(list(history), language=language)


class _SupporterModule(dspy.Module):
    """Shared behaviour: framework/language/prompt bookkeeping and JSON-safe loading of demos."""

    kind: str = ""

    def __init__(
        self,
        framework: Framework | str = "csc",
        language: Language = "en",
        prompt: PromptVariant = "full",
    ):
        super().__init__()
        self.framework = as_framework(framework)
        self.language: Language = language
        self.prompt: PromptVariant = check_prompt_variant(prompt)
        self._add_predictors()

    def _add_predictors(self) -> None:
        """Create the module's predictors (after framework, language and prompt are set)."""

    def load_state(self, state: dict, **kwargs: Any) -> None:
        """Load saved state, turning the JSON histories of saved demos back into typed histories."""
        super().load_state(state, **kwargs)
        type_demo_histories(self)

    def _code(self, raw: Any) -> tuple[str, bool]:
        """The strategy code of a model output and whether it is a substitute: the fallback
        strategy when the output names none (reported per run as ``strategy_fallbacks``)."""
        try:
            return self.framework.normalize(str(raw)), False
        except ValueError:
            fallback = self.framework.fallback
            # Literal-typed outputs are already valid codes; this only guards hand-made LMs
            # and sub-programs, and is counted so that it never passes silently.
            return (fallback.code if fallback else self.framework.codes[0]), True


class StrategyPredictor(_SupporterModule):
    """Predicts the code of the strategy the supporter should use next."""

    kind = "strategy"

    def _add_predictors(self) -> None:
        self.strategist = dspy.Predict(
            strategy_prediction_signature(self.framework, self.language, self.prompt)
        )

    def forward(self, history: HistoryLike) -> dspy.Prediction:
        """Return ``Prediction(strategy=code)`` for the conversation so far."""
        out = self.strategist(history=as_history(history, self.language))
        code, substituted = self._code(out.strategy)
        return dspy.Prediction(strategy=code, strategy_fallback=substituted)


class Supporter(_SupporterModule):
    """Strategy-aligned supporter: predict the next strategy, then reply carrying it out."""

    kind = "supporter"

    def _add_predictors(self) -> None:
        self.strategist = dspy.Predict(
            strategy_prediction_signature(self.framework, self.language, self.prompt)
        )
        self.responder = dspy.Predict(response_generation_signature(self.language, self.prompt))

    def responder_inputs(self, history: DialogueHistory, code: str) -> dict[str, Any]:
        """The responder's inputs for a history and strategy code: the full prompt adds the
        strategy's definition, the compact one only names the code."""
        inputs: dict[str, Any] = {"history": history, "strategy": code}
        if "strategy_definition" in self.responder.signature.input_fields:
            inputs["strategy_definition"] = self.framework.render_strategy(code, self.language)
        return inputs

    def forward(self, history: HistoryLike, strategy: str | None = None) -> dspy.Prediction:
        """Return ``Prediction(strategy, response)``; a given ``strategy`` skips the prediction."""
        hist = as_history(history, self.language)
        substituted = False
        if strategy is None:
            strategy, substituted = self._code(self.strategist(history=hist).strategy)
        else:
            strategy = self.framework.normalize(strategy)
        out = self.responder(**self.responder_inputs(hist, strategy))
        return dspy.Prediction(
            strategy=strategy, response=str(out.response).strip(), strategy_fallback=substituted
        )


class DirectSupporter(_SupporterModule):
    """Ablation without explicit strategy prediction: reply first, label the strategy afterwards."""

    kind = "direct"

    def _add_predictors(self) -> None:
        self.responder = dspy.Predict(direct_response_signature(self.language, self.prompt))
        self.labeler = dspy.Predict(
            strategy_labeling_signature(self.framework, self.language, self.prompt)
        )

    def forward(self, history: HistoryLike) -> dspy.Prediction:
        """Return ``Prediction(strategy, response)``, the strategy labelled from the reply."""
        hist = as_history(history, self.language)
        response = str(self.responder(history=hist).response).strip()
        label = self.labeler(history=hist, response=response).strategy
        code, substituted = self._code(label)
        return dspy.Prediction(strategy=code, response=response, strategy_fallback=substituted)


class StrategyLabeler(_SupporterModule):
    """Labels a supporter reply, given the conversation before it, with the strategy it carries
    out (history + reply -> strategy). ``csc rewrite`` uses it to measure strategy utilization
    and adherence; ``csc optimize --program labeler`` compiles it against strategy accuracy."""

    kind = "labeler"

    def __init__(self, framework: Framework | str = "csc", language: Language = "en"):
        super().__init__(framework, language)

    def _add_predictors(self) -> None:
        self.labeler = dspy.Predict(strategy_labeling_signature(self.framework, self.language))

    def forward(
        self, history: HistoryLike, response: str, config: dict[str, Any] | None = None
    ) -> dspy.Prediction:
        """Return ``Prediction(strategy=code)`` for ``response`` after ``history``; ``config``
        (rollout id, temperature, max_tokens) goes with the LM call."""
        out = self.labeler(
            history=as_history(history, self.language), response=response, config=config or {}
        )
        code, substituted = self._code(out.strategy)
        return dspy.Prediction(strategy=code, strategy_fallback=substituted)


# ---------------------------------------------------------------------------- prompt export
def _adapter() -> dspy.Adapter:
    return dspy.settings.adapter or dspy.ChatAdapter()


def _messages(predictor: dspy.Predict, inputs: dict[str, Any]) -> list[dict[str, Any]]:
    demos = [dict(d) if isinstance(d, Mapping) else d.toDict() for d in predictor.demos]
    return _adapter().format(predictor.signature, demos, inputs)


def strategy_prediction_messages(
    program: StrategyPredictor | Supporter, history: HistoryLike
) -> list[dict[str, Any]]:
    """The chat messages ``program.strategist`` sends for this history (demos included)."""
    return _messages(program.strategist, {"history": as_history(history, program.language)})


def response_generation_messages(
    program: Supporter | DirectSupporter, history: HistoryLike, strategy: str | None = None
) -> list[dict[str, Any]]:
    """The chat messages ``program.responder`` sends for this history (and strategy)."""
    hist = as_history(history, program.language)
    if isinstance(program, DirectSupporter):
        return _messages(program.responder, {"history": hist})
    if strategy is None:
        raise ValueError("response_generation_messages needs the strategy the reply carries out")
    code = program.framework.normalize(strategy)
    return _messages(program.responder, program.responder_inputs(hist, code))


def completion_content(predictor: dspy.Predict, outputs: Mapping[str, Any]) -> str:
    """The assistant message content the adapter expects for these outputs (an SFT target)."""
    return _adapter().format_assistant_message_content(predictor.signature, dict(outputs))
