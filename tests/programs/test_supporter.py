"""Supporter programs: per-framework signatures, languages, and exported prompts."""

from __future__ import annotations

import threading
import typing

import dspy
import pytest
from scripted_lm import ScriptedLM

from csc.dialogue import Speaker, Turn
from csc.framework import Framework
from csc.programs.supporter import (
    DirectSupporter,
    StrategyPredictor,
    Supporter,
    completion_content,
    response_generation_messages,
    strategy_prediction_messages,
)
from csc.signatures.supporter import (
    StrategyPrediction,
    response_generation_signature,
    strategy_prediction_signature,
)

HISTORY = [
    Turn(speaker=Speaker.SUPPORTER, text="Hello, how can I help?", strategy="GT"),
    Turn(speaker=Speaker.CUSTOMER, text="My card is blocked and I am furious!"),
]


class RecordingLM(ScriptedLM):
    """Scripted answers (in order) that also records the messages of every call."""

    def __init__(self, answers):
        self.queue = list(answers)
        self.calls: list[list[dict]] = []
        self.lock = threading.Lock()

        def respond(messages):
            with self.lock:
                self.calls.append(messages)
                return self.queue.pop(0)

        super().__init__(respond)


def _literal_codes(signature) -> tuple[str, ...]:
    return typing.get_args(signature.output_fields["strategy"].annotation)


def test_signatures_follow_the_framework():
    esc = Framework.load("esc")
    assert _literal_codes(StrategyPrediction) == Framework.load("csc").codes
    sig = strategy_prediction_signature(esc, "en")
    assert _literal_codes(sig) == esc.codes
    for s in esc.strategies:  # definitions of that framework, not CSC's
        assert s.definition in sig.instructions
    assert "Identity Verification" not in sig.instructions


def test_chinese_signatures_and_history():
    sig = strategy_prediction_signature(Framework.load("csc"), "zh")
    assert "客服质检" in sig.instructions and "情感管理" in sig.instructions
    program = Supporter(language="zh")
    messages = response_generation_messages(program, HISTORY, "EM")
    user = messages[-1]["content"]
    assert "客服 [GT]: Hello" in user and "客户: My card" in user
    assert Framework.load("csc").strategy("EM").definition_zh in user
    with pytest.raises(ValueError, match="'en' or 'zh'"):
        response_generation_signature("fr")


def test_supporter_predicts_then_responds_with_the_definition():
    lm = RecordingLM([{"strategy": "EM"}, {"response": "I am so sorry, let me fix this now."}])
    program = Supporter()
    with dspy.context(lm=lm):
        pred = program(history=HISTORY)
    assert pred.strategy == "EM"
    assert pred.response == "I am so sorry, let me fix this now."
    strategy_call, response_call = lm.calls
    assert "[[ ## strategy_definition ## ]]" in response_call[-1]["content"]
    assert Framework.load("csc").strategy("EM").rule in response_call[-1]["content"]
    # The exported prompts are exactly what the program sent.
    assert strategy_prediction_messages(program, HISTORY) == strategy_call
    assert response_generation_messages(program, HISTORY, "EM") == response_call


def test_given_strategy_skips_prediction_and_is_normalized():
    lm = RecordingLM([{"response": "Let me explain the fee policy."}])
    with dspy.context(lm=lm):
        pred = Supporter()(history=HISTORY, strategy="Information Delivery")
    assert pred.strategy == "ID" and len(lm.calls) == 1


def test_strategy_predictor_and_direct_supporter_prompts():
    lm = RecordingLM([{"strategy": "AR"}, {"response": "Sorry!"}, {"strategy": "EM"}])
    predictor, direct = StrategyPredictor("esc"), DirectSupporter()
    with dspy.context(lm=lm):
        assert predictor(history=HISTORY).strategy == "AR"  # an ESC code
        assert direct(history=HISTORY).strategy == "EM"
    assert strategy_prediction_messages(predictor, HISTORY) == lm.calls[0]
    assert response_generation_messages(direct, HISTORY) == lm.calls[1]
    with pytest.raises(ValueError, match="needs the strategy"):
        response_generation_messages(Supporter(), HISTORY)


def test_completion_content_is_what_the_adapter_parses():
    program = Supporter()
    text = completion_content(program.strategist, {"strategy": "EM"})
    parsed = dspy.ChatAdapter().parse(program.strategist.signature, text)
    assert parsed == {"strategy": "EM"}


def test_saved_demos_render_like_live_histories(tmp_path):
    program = StrategyPredictor()
    demo = dspy.Example(history=program_history(), strategy="EM").with_inputs("history")
    program.strategist.demos = [demo]
    live = strategy_prediction_messages(program, HISTORY)
    program.save(str(tmp_path / "p.json"))
    loaded = StrategyPredictor()
    loaded.load(str(tmp_path / "p.json"))
    assert strategy_prediction_messages(loaded, HISTORY) == live


def program_history():
    from csc.signatures.types import DialogueHistory

    return DialogueHistory.of(HISTORY)


# ---------------------------------------------------------------------------- compact variant
@pytest.mark.parametrize("language", ["en", "zh"])
def test_compact_signatures_keep_inputs_and_typed_codes_but_drop_the_framework(language):
    csc = Framework.load("csc")
    full = strategy_prediction_signature(csc, language, "full")
    compact = strategy_prediction_signature(csc, language, "compact")
    # Same inputs, same Literal of codes: constrained decoding still yields a valid code.
    assert list(compact.input_fields) == list(full.input_fields) == ["history"]
    assert _literal_codes(compact) == _literal_codes(full) == csc.codes
    for strategy in csc.strategies:
        assert strategy.definition not in compact.instructions
        assert strategy.definition_zh not in compact.instructions
        assert strategy.name not in compact.instructions
        assert strategy.name_zh not in compact.instructions
    assert len(compact.instructions) < len(full.instructions) / 10
    responder = response_generation_signature(language, "compact")
    assert list(responder.input_fields) == ["history", "strategy"]
    assert list(responder.output_fields) == ["response"]


def test_compact_programs_send_their_compact_prompts_and_return_the_same_predictions():
    lm = RecordingLM(
        [
            {"strategy": "EM"},
            {"response": "I am so sorry, let me fix this now."},
            {"response": "Sorry!"},
            {"strategy": "EM"},
            {"strategy": "PR"},
        ]
    )
    supporter = Supporter(prompt="compact")
    direct = DirectSupporter(prompt="compact")
    predictor = StrategyPredictor(prompt="compact")
    with dspy.context(lm=lm):
        pred = supporter(history=HISTORY)
        assert direct(history=HISTORY).strategy == "EM"
        assert predictor(history=HISTORY).strategy == "PR"
    assert (pred.strategy, pred.response) == ("EM", "I am so sorry, let me fix this now.")
    strategy_call, response_call = lm.calls[:2]
    assert strategy_prediction_messages(supporter, HISTORY) == strategy_call
    assert response_generation_messages(supporter, HISTORY, "EM") == response_call
    assert response_generation_messages(direct, HISTORY) == lm.calls[2]
    assert strategy_prediction_messages(predictor, HISTORY) == lm.calls[4]
    sent = "".join(m["content"] for call in lm.calls for m in call)
    assert "strategy_definition" not in sent and "Emotion Management" not in sent
    # The prompt is shorter than the full one, and the variant is on the program.
    full = strategy_prediction_messages(Supporter(), HISTORY)
    assert len(strategy_call[0]["content"]) * 3 < len(full[0]["content"])
    assert (supporter.prompt, direct.prompt, predictor.prompt) == ("compact",) * 3
    with pytest.raises(ValueError, match="unknown prompt variant"):
        Supporter(prompt="tiny")
