"""RoleCS program: the agent loop, stop rules, policy enforcement, judge and failures."""

from __future__ import annotations

import dspy
import pytest
from rolecs_fakes import Script, ScriptedLM

from csc.data.profiles import CustomerProfile
from csc.dialogue import Speaker
from csc.framework import Framework
from csc.programs.rolecs import DialogueFailure, RoleCS, rollout_id
from csc.programs.rolecs_policy import StrategyPolicy
from csc.signatures.rolecs import rolecs_signatures

PROFILE = CustomerProfile(id="p1", description="You are a patient nurse who writes short messages.")


def synthesize(script: Script, framework: str = "csc", **kwargs):
    if framework != "csc":
        script.stage = Framework.load(framework).stages[0].code
    program = RoleCS(framework, max_utterances=kwargs.pop("max_utterances", 50))
    with dspy.context(lm=ScriptedLM(script)):
        return program(PROFILE, "Product consultation", dialogue_id="d1", **kwargs)


def test_full_dialogue_loop():
    pred = synthesize(Script(strategies=["GT", "IV", "PR", "PS", "AC"]))
    d = pred.dialogue
    fw = Framework.load("csc")
    assert d.alternates()
    assert [t.strategy for t in d.supporter_turns] == ["GT", "IV", "PR", "PS", "AC"]
    assert all(t.strategy in fw.codes for t in d.supporter_turns)
    assert all(t.metadata["direction"] == "Ask about the fee." for t in d.customer_turns)
    assert d.turns[0].speaker is Speaker.SUPPORTER
    assert d.scenario.startswith("A customer needs help")
    assert pred.goal == "get help" and d.metadata["goal"] == "get help"
    assert pred.end_reason == "closing" == d.metadata["end_reason"]
    assert d.metadata["policy_corrections"] == {} and d.metadata["policy_reasks"] == {}
    assert pred.passed is True and set(d.metadata["judge"]) == {
        "strategy_adherence",
        "unreasonable_demands",
        "natural_replies",
        "varied_expression",
        "role_consistency",
    }
    assert d.metadata["usage"]["supporter"]["calls"] == 5
    assert d.profile["id"] == "p1"


def test_stop_when_customer_finishes_appends_closing():
    pred = synthesize(Script(strategies=["GT", "IV", "PR", "PS", "RI", "FR"], finish_at=2))
    d = pred.dialogue
    assert pred.end_reason == "customer_finished"
    assert [t.strategy for t in d.supporter_turns] == ["GT", "IV", "AC"]
    assert d.turns[-2].metadata["finished"] is True
    assert d.turns[-1].metadata["forced"] == "closing"
    assert d.metadata["policy_corrections"] == {"closing": 1}
    assert d.alternates()


def test_stop_at_max_utterances_closes_within_limit():
    cycle = ["GT", "IV", "PR", "PS", "RI", "PR", "PS", "RI"]
    pred = synthesize(Script(strategies=cycle), max_utterances=8)
    d = pred.dialogue
    assert pred.end_reason == "max_utterances"
    assert len(d.turns) <= 8
    assert d.turns[-1].strategy == "AC" and d.turns[-1].is_supporter
    assert d.metadata["policy_corrections"] == {"closing": 1}


def test_opening_is_reasked_then_accepted():
    # Wrong first answer; after feedback the assistant picks the greeting.
    script = Script(strategies=lambda n, fb: "GT" if fb != "none" else ["PR", "IV", "PR", "AC"][n])
    pred = synthesize(script)
    d = pred.dialogue
    assert d.supporter_turns[0].strategy == "GT"
    assert d.metadata["policy_reasks"] == {"opening": 1}
    assert d.metadata["policy_corrections"] == {}
    assert "must use GT" in script.feedback[0]
    assert d.supporter_turns[0].metadata["policy"]["first_choice"] == "PR"


def test_opening_is_corrected_when_reask_fails():
    pred = synthesize(Script(strategies=["PR", "IV", "PS", "AC"]))
    d = pred.dialogue
    assert d.supporter_turns[0].strategy == "GT"
    assert d.metadata["policy_corrections"] == {"opening": 1}
    assert d.supporter_turns[0].metadata["policy"]["action"] == "corrected"


def test_verification_is_enforced_within_limit():
    # within = 3: the third supporter turn after the greeting must verify if nothing did.
    pred = synthesize(Script(strategies=["GT", "PR", "EM", "PS", "AC"]))
    codes = [t.strategy for t in pred.dialogue.supporter_turns]
    assert codes[:4] == ["GT", "PR", "EM", "IV"]
    assert pred.dialogue.metadata["policy_corrections"] == {"verification": 1}


def test_closing_before_verification_is_corrected():
    pred = synthesize(Script(strategies=["GT", "AC", "AC", "AC"]))
    codes = [t.strategy for t in pred.dialogue.supporter_turns]
    assert codes[:2] == ["GT", "IV"]
    assert pred.dialogue.metadata["policy_corrections"]["verification"] == 1


def test_repeat_more_than_twice_is_corrected():
    pred = synthesize(Script(strategies=["GT", "IV", "PR", "PR", "PR", "PS", "AC"]))
    codes = [t.strategy for t in pred.dialogue.supporter_turns]
    assert codes[2:4] == ["PR", "PR"] and codes[4] not in ("PR", "GT", "AC", "OT")
    assert pred.dialogue.metadata["policy_corrections"] == {"repeat": 1}
    assert pred.dialogue.supporter_turns[4].metadata["policy"]["violation"] == "repeat"


def test_framework_without_policy_skips_rules():
    # ESC has no policy: repeats are allowed and no closing turn is appended.
    pred = synthesize(Script(strategies=["QU"] * 10), framework="esc", max_utterances=6)
    d = pred.dialogue
    assert [t.strategy for t in d.supporter_turns] == ["QU", "QU", "QU"]
    assert len(d.turns) == 6 and pred.end_reason == "max_utterances"
    assert d.metadata["policy_corrections"] == {}


def test_judge_failure_marks_dialogue_rejected():
    pred = synthesize(Script(judge={"varied_expression": False}))
    assert pred.passed is False
    assert pred.dialogue.metadata["judge"]["varied_expression"]["pass"] is False
    assert pred.dialogue.metadata["passed"] is False


def test_lm_error_raises_dialogue_failure_with_partial_dialogue():
    def fail(role, messages):
        if role == "customer":
            raise RuntimeError("connection reset")

    with pytest.raises(DialogueFailure) as info:
        synthesize(Script(fail=fail))
    assert info.value.role == "customer"
    assert "connection reset" in str(info.value)
    assert len(info.value.partial.turns) == 1


def test_unparseable_output_keeps_raw_text():
    def fail(role, messages):
        return "I refuse to use your format" if role == "planner" else None

    with pytest.raises(DialogueFailure) as info:
        synthesize(Script(fail=fail))
    assert info.value.role == "planner"
    assert "I refuse to use your format" in (info.value.raw_output or "")


def test_each_role_uses_its_own_lm():
    main, customer_only = Script(), Script()
    program = RoleCS("csc", lms={"customer": ScriptedLM(customer_only)})
    with dspy.context(lm=ScriptedLM(main)):
        program(PROFILE, "Product consultation", dialogue_id="d1")
    assert set(customer_only.calls) == {"customer"}
    assert "customer" not in main.calls


def test_rollout_ids_are_diverse_and_reproducible():
    a = rollout_id(0, "d1", "supporter", 1)
    assert a == rollout_id(0, "d1", "supporter", 1)
    assert len({a, rollout_id(1, "d1", "supporter", 1), rollout_id(0, "d2", "supporter", 1)}) == 3


def test_policy_alternative_is_never_a_banned_strategy():
    policy = StrategyPolicy(Framework.load("csc"))
    assert policy.alternative("PR", ["GT", "IV", "PR", "PR"]) not in {"PR", "GT", "AC", "OT"}


def test_signatures_follow_framework_and_language():
    zh = rolecs_signatures("csc", "zh")
    assert "客服" in zh.supporter.instructions
    esc = rolecs_signatures("esc", "en").supporter_assistant
    assert set(esc.output_fields["strategy"].annotation.__args__) == set(
        Framework.load("esc").codes
    )


def test_chinese_dialogue_loop():
    program = RoleCS("csc", "zh")
    with dspy.context(lm=ScriptedLM(Script(strategies=["GT", "IV", "PR", "AC"]))):
        pred = program(PROFILE, "产品咨询", dialogue_id="zh1")
    assert [t.strategy for t in pred.dialogue.supporter_turns] == ["GT", "IV", "PR", "AC"]
    assert pred.dialogue.metadata["language"] == "zh"
    # The supporter assistant gets the Chinese definitions and policy, not the English ones.
    assert "对话规范：以 GT 开场" in program._definitions and "Policy:" not in program._definitions


def test_customer_goodbye_before_min_utterances_is_ignored():
    program = RoleCS("csc", min_utterances=6)
    script = Script(strategies=["GT", "IV", "PR", "PS", "RI", "FR"], finish_at=1)
    with dspy.context(lm=ScriptedLM(script)):
        d = program(PROFILE, "Product consultation", dialogue_id="m1").dialogue
    # Customer turns 1 and 2 (utterances 2 and 4) come too early; turn 3 (utterance 6) ends it.
    assert [t.metadata.get("finish_ignored", False) for t in d.customer_turns] == [
        True,
        True,
        False,
    ]
    assert d.metadata["end_reason"] == "customer_finished" and len(d.turns) == 7
