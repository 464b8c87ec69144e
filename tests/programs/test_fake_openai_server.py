"""The benchmark's fake LM server answers every RoleCS role in a form DSPy parses."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import dspy

from csc.framework import Framework
from csc.signatures.rolecs import rolecs_signatures

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "fake_openai_server.py"
spec = importlib.util.spec_from_file_location("fake_openai_server", PATH)
fake = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fake)

FW = Framework.load("csc")
SIGS = rolecs_signatures(FW, "en")
ROLES = {
    "planner": SIGS.planner,
    "supporter_assistant": SIGS.supporter_assistant,
    "supporter": SIGS.supporter,
    "customer_assistant": SIGS.customer_assistant,
    "customer": SIGS.customer,
    "judge": SIGS.judge,
}


def test_every_role_is_recognized_and_parsed():
    adapter = dspy.ChatAdapter()
    rng = random.Random(0)
    for role, sig in ROLES.items():
        inputs = {name: "Supporter [GT]: hello\nCustomer: hi" for name in sig.input_fields}
        messages = adapter.format(sig, demos=[], inputs=inputs)
        got_role, text = fake.answer(messages, turns=4, rng=rng)
        assert got_role == role
        parsed = adapter.parse(sig, text)
        assert set(parsed) == set(sig.output_fields)
        if role == "supporter_assistant":
            assert parsed["strategy"] == "IV"  # second supporter turn follows the csc policy
        if role == "judge":
            assert all(parsed[c] is True for c in ("strategy_adherence", "role_consistency"))


def test_answers_vary():
    adapter = dspy.ChatAdapter()
    messages = adapter.format(
        SIGS.supporter, demos=[], inputs=dict.fromkeys(SIGS.supporter.input_fields, "x")
    )
    rng = random.Random(1)
    texts = {fake.answer(messages, 4, rng)[1] for _ in range(20)}
    assert len(texts) > 15
