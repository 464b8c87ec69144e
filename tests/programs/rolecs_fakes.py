"""A scripted fake LM for RoleCS tests: answers each agent's signature from a script, offline."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

from scripted_lm import ScriptedLM as ScriptedLM  # re-exported for the RoleCS tests

ROLE_MARKERS = {
    "planner": "You plan a realistic",
    "supporter_assistant": "You coach a customer-support agent",
    "supporter": "You are a professional customer-support agent",
    "customer_assistant": "You direct a simulated customer",
    "customer": "You play the customer",
    "judge": "You review a synthetic",
    "profile_describer": "Turn a structured customer profile",
}
ZH_MARKERS = {
    "planner": "你策划一段真实的客服对话",
    "supporter_assistant": "你是客服人员的教练",
    "supporter": "你是一名专业客服",
    "customer_assistant": "你在指导一位模拟客户",
    "customer": "你扮演画像中描述的客户",
    "judge": "你负责审核一段合成的客服对话",
}


def role_of(messages: list[dict[str, Any]]) -> str:
    """Which RoleCS agent a prompt is for, from its instructions."""
    system = messages[0]["content"]
    for markers in (ROLE_MARKERS, ZH_MARKERS):
        for role, marker in markers.items():
            if marker in system:
                return role
    raise AssertionError(f"unknown prompt: {system[:200]}")


def field(messages: list[dict[str, Any]], name: str) -> str:
    """An input field's value in the last user message."""
    text = messages[-1]["content"]
    m = re.search(rf"\[\[ ## {name} ## \]\]\n(.*?)(?=\n\n\[\[ ## |\n\nRespond with|\Z)", text, re.S)
    return m.group(1).strip() if m else ""


class Script:
    """Per-role scripted answers for a RoleCS dialogue.

    ``strategies``: the supporter assistant's answers in order (cycled per dialogue by the number
    of supporter turns in the history plus the re-ask attempt). ``finish_at``: the customer turn
    (1-based) at which the customer ends the dialogue (None: never). ``judge``: criterion -> pass.
    """

    def __init__(
        self,
        strategies: list[str] | Callable[[int, str], str] = ("GT", "IV", "PR", "PS", "AC"),
        finish_at: int | None = None,
        judge: dict[str, bool] | Callable[[str], dict[str, bool]] | None = None,
        fail: Callable[[str, list[dict[str, Any]]], Any] | None = None,
        stage: str = "connecting",
    ) -> None:
        self.strategies = strategies
        self.finish_at = finish_at
        self.judge = judge or {}
        self.fail = fail
        self.stage = stage
        self.calls: list[str] = []
        self.feedback: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, messages: list[dict[str, Any]]) -> dict[str, Any] | str:
        role = role_of(messages)
        with self.lock:
            self.calls.append(role)
        if self.fail is not None:
            out = self.fail(role, messages)
            if out is not None:
                return out
        history = field(messages, "history") or field(messages, "dialogue")
        n_support = len(re.findall(r"^(?:Supporter|客服)", history, re.M))
        n_customer = len(re.findall(r"^(?:Customer|客户)", history, re.M))
        if role == "planner":
            topic = field(messages, "topic")
            return {"scenario": f"A customer needs help with {topic}.", "goal": "get help"}
        if role == "supporter_assistant":
            feedback = field(messages, "feedback")
            if feedback != "none":
                with self.lock:
                    self.feedback.append(feedback)
            if callable(self.strategies):
                code = self.strategies(n_support, feedback)
            else:
                code = self.strategies[min(n_support, len(self.strategies) - 1)]
            return {"stage": self.stage, "strategy": code}
        if role == "supporter":
            return {"reply": f"Supporter reply number {n_support + 1} about the issue."}
        if role == "customer_assistant":
            return {"direction": "Ask about the fee."}
        if role == "customer":
            done = self.finish_at is not None and n_customer + 1 >= self.finish_at
            return {
                "utterance": f"Customer message {n_customer + 1}, please help.",
                "finished": done,
                "reason": "said goodbye" if done else "still waiting",
            }
        if role == "judge":
            verdict = self.judge(history) if callable(self.judge) else self.judge
            out: dict[str, Any] = {}
            for c in (
                "strategy_adherence",
                "unreasonable_demands",
                "natural_replies",
                "varied_expression",
                "role_consistency",
            ):
                out[f"{c}_reason"] = f"{c} looks fine"
                out[c] = verdict.get(c, True)
            return out
        if role == "profile_describer":
            return {"description": "You are a patient customer who writes short messages."}
        raise AssertionError(role)
