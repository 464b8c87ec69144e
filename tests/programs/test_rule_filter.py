"""The rule pre-filter: cleaning and each rule with its threshold."""

from __future__ import annotations

import pytest

from csc.dialogue import Dialogue, Speaker, Turn
from csc.programs.rule_filter import RuleFilterConfig, check_rules, clean_dialogue

S, C = Speaker.SUPPORTER, Speaker.CUSTOMER


def dlg(*turns: tuple[Speaker, str]) -> Dialogue:
    return Dialogue(id="d", turns=[Turn(speaker=s, text=t) for s, t in turns])


GOOD = [(C, "my order is late"), (S, "Let me check that."), (C, "thanks a lot"), (S, "Done.")]


def test_cleaning_merges_runs_and_removes_empty_and_system_turns():
    d = dlg(
        (S, "[系统消息] 已为您转接人工客服"),
        (S, "您好"),
        (S, "请问有什么可以帮您？"),
        (C, "\u200b"),
        (C, "我的订单没到"),
        (S, "Agent Mike has joined the chat"),
    )
    out = clean_dialogue(d, language="zh")
    assert [t.text for t in out.dialogue.turns] == ["您好，请问有什么可以帮您？", "我的订单没到"]
    assert (out.merged, out.empty_removed, out.system_removed) == (1, 1, 2)


def test_english_runs_join_with_a_space():
    out = clean_dialogue(dlg((C, "hi"), (C, "my card was charged twice")))
    assert out.dialogue.turns[0].text == "hi my card was charged twice"


def test_a_good_dialogue_passes():
    assert check_rules(dlg(*GOOD)) is None


def test_too_few_and_too_many_turns():
    assert check_rules(dlg(*GOOD[:2])) == "too_few_turns"
    assert check_rules(dlg(*(GOOD * 8))) == "too_many_turns"  # 32 turns
    assert check_rules(dlg(*(GOOD * 8)), RuleFilterConfig(max_turns=40)) is None


def test_supporter_heavy():
    # 2 x 1 customer <= 2 supporter turns
    assert (
        check_rules(dlg((S, "Hello."), (C, "my order is late"), (S, "Sorry."))) == "supporter_heavy"
    )
    assert (
        check_rules(
            dlg((S, "Hello."), (C, "my order is late"), (S, "Sorry.")),
            RuleFilterConfig(customer_ratio=3),
        )
        is None
    )


def test_short_customer_turns():
    d = dlg((C, "ok"), (S, "Hi."), (C, "yes"), (S, "How can I help?"), (C, "my order is late"))
    assert check_rules(d) == "short_customer_turns"  # 1 of 3 longer than 3 characters
    assert check_rules(d, RuleFilterConfig(min_long_customer_share=0.3)) is None
    assert check_rules(d, RuleFilterConfig(short_customer_chars=1)) is None


def test_long_utterance():
    d = dlg((C, "x" * 501), *GOOD[1:])
    assert check_rules(d) == "long_utterance"
    assert check_rules(d, RuleFilterConfig(max_utterance_chars=600)) is None


def test_thresholds_are_validated():
    with pytest.raises(ValueError):
        RuleFilterConfig(min_long_customer_share=1.5)
