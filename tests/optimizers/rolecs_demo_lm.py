"""A fake model for RoleCS's supporter agents and the strategy labeler that knows only its demos.

It runs offline through DSPy's public engine interface (``dspy.LM(engine=...)``):

* the supporter assistant copies the strategy of the demo whose last history line matches the
  question's (digits generalized), and answers ``OT`` when no demo does;
* the supporter copies the reply of the demo asked for the same strategy, and otherwise writes a
  reply that carries out no strategy;
* the strategy labeler reads the ``(code XX)`` marker the test dialogues' replies carry, ``OT``
  without one.

So the zero-shot agents score 0 on both metrics, and every point gained by compiling comes from
the demos the optimizer chose. Every request is kept in ``requests`` as (system, messages).
"""

from __future__ import annotations

import re
from typing import Any

import dspy
from scripted_lm import ScriptedEngine

from csc.dialogue import Dialogue, Speaker, Turn

NO_STRATEGY_REPLY = "Thank you for your message."


def field_value(text: str, name: str) -> str | None:
    """An input or output field's value in a ChatAdapter message."""
    m = re.search(rf"\[\[ ## {name} ## \]\]\n(.*?)(?=\n\n\[\[ ## |\n\nRespond|\Z)", text, re.S)
    return m.group(1).strip() if m else None


def _last_line(history: str) -> str:
    lines = history.strip().splitlines()
    return re.sub(r"\d+", "#", lines[-1]) if lines else ""


def _code(strategy_field: str | None) -> str:
    return (strategy_field or "").split(" ", 1)[0]


class _RecordingEngine(ScriptedEngine):
    """A scripted engine that keeps every request as (system, [(role, text), ...])."""

    def __init__(self) -> None:
        super().__init__(self._record, meter=lambda messages, text: (10, 0, 2))
        self.requests: list[tuple[str, list[tuple[str, str]]]] = []

    def _record(self, messages: list[dict[str, Any]]) -> dict[str, str]:
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
        rest = [(m["role"], m["content"]) for m in messages[1 if system else 0 :]]
        self.requests.append((system, rest))
        return self.answer(system, rest)

    def answer(self, system: str, messages: list[tuple[str, str]]) -> dict[str, str]:
        raise NotImplementedError


class AgentDemoFollower(_RecordingEngine):
    """Engine of the demo-following model."""

    def answer(self, system: str, messages: list[tuple[str, str]]) -> dict[str, str]:
        question = messages[-1][1]
        pairs = list(zip(messages[:-1:2], messages[1:-1:2]))
        if "expert annotator" in system:
            marker = re.search(r"\(code (\w+)\)", field_value(question, "response") or "")
            answers = {"strategy": marker.group(1) if marker else "OT"}
        elif "You coach a customer-support agent" in system:
            want = _last_line(field_value(question, "history") or "")
            strategy = next(
                (
                    field_value(reply, "strategy")
                    for (_, shown), (_, reply) in pairs
                    if _last_line(field_value(shown, "history") or "") == want
                ),
                "OT",
            )
            answers = {"stage": "connecting", "strategy": strategy}
        elif "You are a professional customer-support agent" in system:
            want = _code(field_value(question, "strategy"))
            reply = next(
                (
                    field_value(answer, "reply")
                    for (_, shown), (_, answer) in pairs
                    if _code(field_value(shown, "strategy")) == want
                ),
                NO_STRATEGY_REPLY,
            )
            answers = {"reply": reply}
        else:
            raise AssertionError(f"unexpected prompt: {system[:200]}")
        return answers


def agent_demo_lm() -> tuple[dspy.LM, AgentDemoFollower]:
    """The fake LM and its engine (whose ``requests`` record every prompt)."""
    engine = AgentDemoFollower()
    return dspy.LM("fake/agent-demo-follower", engine=engine, cache=False), engine


def labelled_dialogues(n: int) -> list[Dialogue]:
    """``n`` bank dialogues differing only in a card number; every reply names its strategy."""
    s, c = Speaker.SUPPORTER, Speaker.CUSTOMER
    return [
        Dialogue(
            id=f"d{i}",
            topic="Account and transaction management",
            turns=[
                Turn(speaker=s, text="Hello, welcome to the bank (code GT).", strategy="GT"),
                Turn(speaker=c, text=f"My card {i} was blocked."),
                Turn(speaker=s, text="Please confirm your card number (code IV).", strategy="IV"),
                Turn(speaker=c, text=f"It is card {i}."),
                Turn(speaker=s, text="I have unblocked your card now (code RI).", strategy="RI"),
                Turn(speaker=c, text="Thanks a lot!"),
                Turn(speaker=s, text="You are welcome, goodbye (code AC).", strategy="AC"),
            ],
        )
        for i in range(n)
    ]


class RoleCSRecorder(_RecordingEngine):
    """Engine of a scripted RoleCS cast that records every prompt: the supporter assistant answers
    GT, IV, PR, then AC by the number of supporter turns so far; the customer never ends."""

    STRATEGIES = ("GT", "IV", "PR", "AC")

    def answer(self, system: str, messages: list[tuple[str, str]]) -> dict[str, str]:
        history = field_value(messages[-1][1], "history") or ""
        n_support = len(re.findall(r"^Supporter", history, re.M))
        if "You plan a realistic" in system:
            answers = {"scenario": "A customer lost a card.", "goal": "block the card"}
        elif "You coach a customer-support agent" in system:
            code = self.STRATEGIES[min(n_support, len(self.STRATEGIES) - 1)]
            answers = {"stage": "connecting", "strategy": code}
        elif "You are a professional customer-support agent" in system:
            answers = {"reply": f"Supporter reply number {n_support + 1}."}
        elif "You direct a simulated customer" in system:
            answers = {"direction": "Ask what happens next."}
        elif "You play the customer" in system:
            answers = {"utterance": "What happens next?", "finished": "false", "reason": "waiting"}
        else:
            raise AssertionError(f"unexpected prompt: {system[:200]}")
        return answers


def rolecs_recorder_lm() -> tuple[dspy.LM, RoleCSRecorder]:
    """The scripted RoleCS LM and its engine (whose ``requests`` record every prompt)."""
    engine = RoleCSRecorder()
    return dspy.LM("fake/rolecs-recorder", engine=engine, cache=False), engine
