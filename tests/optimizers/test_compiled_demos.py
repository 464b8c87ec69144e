"""Compiling changes what the program predicts: a fake model that learns only from demos.

The model runs offline through DSPy's public engine interface (``dspy.LM(engine=...)``): it
answers a strategy by copying the demo whose last history line matches the question's, and
``OT`` when no demo does, so a program without demos scores 0 and every point gained after
compiling comes from the demos the optimizer chose.
"""

from __future__ import annotations

import re

import dspy
import pytest
from dspy.lm15 import Message, Response, TextPart, Usage

from csc.dialogue import Dialogue, Speaker, Turn
from csc.eval.examples import split_dialogues, supporter_examples
from csc.eval.metrics import strategy_accuracy_metric
from csc.optimizers import optimize_program
from csc.programs.supporter import StrategyPredictor

INSTRUCTION = "Copy the strategy of the example whose last turn matches."


def _field(text: str, name: str) -> str | None:
    m = re.search(rf"\[\[ ## {name} ## \]\]\n(.*?)(?=\n\n|\Z)", text, re.S)
    return m.group(1).strip() if m else None


def _last_line(history: str) -> str:
    # Dialogues differ only by a card number: the model generalizes over digits.
    return re.sub(r"\d+", "#", history.strip().splitlines()[-1]) if history.strip() else ""


class DemoFollower:
    """Engine (``complete(Request) -> Response``) of a model that knows only its demos."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, list[tuple[str, str]]]] = []

    def complete(self, request):  # type: ignore[no-untyped-def]
        system = (
            request.system
            if isinstance(request.system, str)
            else "".join(p.text for p in request.system or [])
        )
        messages = [(m.role, m.text or "") for m in request.messages]
        self.requests.append((system, messages))
        outputs = re.findall(r"^\d+\. `(\w+)`", system.split("Your output fields are:")[1], re.M)
        answers = {name: INSTRUCTION for name in outputs}  # e.g. MIPROv2's proposer fields
        if "strategy" in outputs:
            question = _last_line(_field(messages[-1][1], "history") or "")
            answers["strategy"] = next(
                (
                    _field(reply, "strategy")
                    for (_, shown), (_, reply) in zip(messages[:-1:2], messages[1:-1:2])
                    if _last_line(_field(shown, "history") or "") == question
                ),
                "OT",
            )
        text = "\n\n".join(f"[[ ## {k} ## ]]\n{v}" for k, v in answers.items())
        return Response(
            id=None,
            model="demo-follower",
            message=Message.assistant([TextPart(text + "\n\n[[ ## completed ## ]]")]),
            finish_reason="stop",
            usage=Usage(input_tokens=10, output_tokens=2, total_tokens=12),
        )


def demo_follower_lm() -> tuple[dspy.LM, DemoFollower]:
    engine = DemoFollower()
    return dspy.LM("fake/demo-follower", engine=engine, cache=False), engine


def _dialogues(n: int) -> list[Dialogue]:
    s, c = Speaker.SUPPORTER, Speaker.CUSTOMER
    return [
        Dialogue(
            id=f"d{i}",
            turns=[
                Turn(speaker=s, text="Hello, how can I help you today?", strategy="GT"),
                Turn(speaker=c, text=f"My card number {i} was blocked."),
                Turn(speaker=s, text="Please try unlocking it in the app.", strategy="PS"),
                Turn(speaker=c, text="That is really annoying!"),
                Turn(speaker=s, text="I understand, sorry for the trouble.", strategy="EM"),
            ],
        )
        for i in range(n)
    ]


def _examples(n: int) -> tuple[list[dspy.Example], list[dspy.Example]]:
    parts = split_dialogues(_dialogues(n), seed=0)
    return supporter_examples(parts.train), supporter_examples(parts.dev)


def test_bootstrapped_demos_raise_the_dev_score():
    train, dev = _examples(10)
    lm, engine = demo_follower_lm()
    result = optimize_program("strategy", train, dev, optimizer="bootstrap", lm=lm)
    demos = result.program.strategist.demos
    taught = {d["strategy"] for d in demos}
    assert result.dev_before == 0.0  # no demos: the model answers OT
    assert demos and taught <= {"GT", "PS", "EM"}
    # Exactly the dev turns whose kind a demo shows are right after compiling.
    expected = 100 * sum(ex.strategy in taught for ex in dev) / len(dev)
    assert result.dev_after == pytest.approx(expected, abs=0.01) and result.dev_after > 0  # rounded
    with dspy.context(lm=lm):
        predicted = [result.program(**ex.inputs()).strategy for ex in dev]
    assert predicted == [ex.strategy if ex.strategy in taught else "OT" for ex in dev]
    # The demos reached the model as conversation turns before the question.
    assert any(len(messages) > 1 for _, messages in engine.requests)


def test_mipro_compiles_a_tiny_task_offline():
    train, dev = _examples(6)
    lm, engine = demo_follower_lm()
    teleprompter = dspy.MIPROv2(
        metric=strategy_accuracy_metric,
        prompt_model=lm,
        task_model=lm,
        auto=None,
        num_candidates=2,
        max_bootstrapped_demos=2,
        max_labeled_demos=2,
        num_threads=1,
        seed=0,
        verbose=False,
    )
    with dspy.context(lm=lm):
        compiled = teleprompter.compile(
            StrategyPredictor(), trainset=train, valset=dev, num_trials=4, minibatch=False
        )
        score = dspy.Evaluate(devset=dev, metric=strategy_accuracy_metric)(compiled).score
    # The proposer asked the model for instructions, and the search kept the best candidate:
    # a program with demos, which beats the zero-shot program's 0.
    assert any("proposed_instruction" in system for system, _ in engine.requests)
    instruction = compiled.strategist.signature.instructions
    assert instruction == INSTRUCTION or "customer-support quality coach" in instruction
    assert compiled.strategist.demos and score == pytest.approx(compiled.score) and score > 0
