"""Dataset statistics against hand-computed values on a small fixture."""

from __future__ import annotations

import json

import pytest

from csc.dialogue import Dialogue, Speaker, Turn
from csc.eval.stats import (
    content_units,
    dialogue_stats,
    distinct_n,
    render_stats,
    self_bleu,
    stage_order_violations,
)
from csc.framework import Framework

FW = Framework.load("csc")


def S(text, code):
    return Turn(speaker=Speaker.SUPPORTER, text=text, strategy=code)


def C(text):
    return Turn(speaker=Speaker.CUSTOMER, text=text)


def judge(**fails):
    names = [
        "strategy_adherence",
        "unreasonable_demands",
        "natural_replies",
        "varied_expression",
        "role_consistency",
    ]
    return {n: {"pass": n not in fails, "reason": "r"} for n in names}


D1 = Dialogue(
    id="d1",
    turns=[
        S("hello there", "GT"),
        C("my card is blocked"),
        S("sorry about the card", "EM"),
        C("thanks"),
        S("please verify identity", "IV"),
        C("ok"),
        S("goodbye", "AC"),
    ],
    profile={"description": "You are a nurse whose card is blocked at the hospital."},
    metadata={
        "policy_corrections": {"closing": 1},
        "policy_reasks": {"opening": 1},
        "judge": judge(),
    },
)
D2 = Dialogue(
    id="d2",
    turns=[
        S("hello there", "GT"),
        C("loan rates for farmers"),
        S("other things", "OT"),
        C("bye"),
        S("goodbye", "AC"),
    ],
    profile={"description": "You are a farmer asking about loan rates."},
    metadata={"policy_corrections": {}, "judge": judge(natural_replies=True)},
)


def test_stats_match_hand_computed_values():
    st = dialogue_stats([D1, D2], FW)
    assert st["dialogues"] == 2
    assert st["utterances"] == {"total": 12, "mean": 6.0, "min": 5, "max": 7}
    assert st["supporter_turns"] == 7
    dist = st["strategy_distribution"]
    assert dist["GT"] == {"count": 2, "share": pytest.approx(2 / 7)}
    assert dist["AC"]["count"] == 2 and dist["PS"]["count"] == 0
    # 6 of 7 supporter turns use a strategy other than the fallback OT.
    assert st["strategy_utilization"] == pytest.approx(6 / 7)
    # D1: GT(0) EM(1) IV(0) AC(4): one backward step (EM -> IV); D2: OT skipped, none.
    assert st["stage_order_violations"] == {
        "total": 1,
        "per_dialogue": 0.5,
        "dialogues_with_any": 1,
    }
    assert st["policy"] == {
        "corrections": {"closing": 1},
        "reasks": {"opening": 1},
        "dialogues_corrected": 1,
    }
    # D2 fails natural_replies: per-criterion and all-five pass rates.
    fr = st["filter_pass_rate"]
    assert fr["judged"] == 2 and fr["natural_replies"] == 0.5 and fr["role_consistency"] == 1.0
    assert fr["all"] == 0.5
    json.dumps(st)  # JSON-ready


def test_diversity_hand_computed():
    texts = ["hello there", "hello there", "goodbye"]
    # unigrams: hello there hello there goodbye -> 3 distinct / 5; bigrams: 1 distinct / 2.
    assert distinct_n(texts, 1) == pytest.approx(3 / 5)
    assert distinct_n(texts, 2) == pytest.approx(1 / 2)
    assert self_bleu(["a b c d e", "a b c d e"]) == pytest.approx(100.0)
    assert self_bleu(["only one"]) is None
    st = dialogue_stats([D1, D2], FW)
    sup = [t.text for d in (D1, D2) for t in d.supporter_turns]
    assert st["diversity"]["distinct_1"] == pytest.approx(distinct_n(sup, 1))


def test_persona_fidelity_prefers_own_profile():
    st = dialogue_stats([D1, D2], FW)
    pf = st["persona_fidelity"]
    # D1 customer units {card, blocked, thanks}: card+blocked in own profile (2/3), 0 in D2's.
    # D2 customer units {loan, rates, farmers, bye}: loan+rates in own (2/4), 0 in D1's.
    assert pf["own_profile_overlap"] == pytest.approx((2 / 3 + 2 / 4) / 2)
    assert pf["other_profile_overlap"] == 0.0
    assert pf["own_higher_share"] == 1.0


def test_chinese_units_are_character_bigrams():
    assert content_units("银行卡") == {"银行", "行卡"}


def test_stage_order_skips_any_stage_strategies():
    d = Dialogue(id="x", turns=[S("a", "PS"), C("b"), S("c", "OT"), C("d"), S("e", "PR")])
    assert stage_order_violations(d, FW) == 1


def test_render_table_and_empty_input():
    st = dialogue_stats([], FW)
    assert st["dialogues"] == 0 and st["filter_pass_rate"] is None
    assert render_stats(dialogue_stats([D1, D2], FW)).row_count > 5


def test_cli_stats_json(tmp_path):
    from typer.testing import CliRunner

    from csc.cli import app

    path = tmp_path / "d.jsonl"
    path.write_text("".join(d.model_dump_json() + "\n" for d in (D1, D2)))
    result = CliRunner().invoke(app, ["stats", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["strategy_utilization"] == pytest.approx(6 / 7)
    table = CliRunner().invoke(app, ["stats", str(path)])
    assert "strategy utilization" in table.output


def test_self_bleu_equals_sacrebleu_against_all_others():
    # The linear-time self-BLEU must give sacrebleu's sentence BLEU against every other text,
    # duplicates and Chinese included.
    import random

    import sacrebleu

    rng = random.Random(1)
    words = ["a", "b", "c", "d", "e", "f", "g", "the", "cat", "sat", "on", "mat"]
    for trial in range(12):
        n = rng.randint(2, 30)
        if trial % 4 == 3:
            texts = [
                "".join(rng.choice("你好我们的账户问题谢谢") for _ in range(9)) for _ in range(n)
            ]
        else:
            texts = [" ".join(rng.choices(words, k=rng.randint(1, 12))) for _ in range(n)]
            texts += texts[:2]
        tok = "zh" if trial % 4 == 3 else "13a"
        want = sum(
            sacrebleu.sentence_bleu(t, texts[:i] + texts[i + 1 :], tokenize=tok).score
            for i, t in enumerate(texts)
        ) / len(texts)
        assert self_bleu(texts, sample=10**6) == pytest.approx(want, abs=1e-9)


def test_statistics_stream_once_and_say_what_they_sampled(monkeypatch):
    import csc.eval.stats as stats

    def stream():
        for i in range(20):
            yield D1.model_copy(update={"id": f"a{i}"})
            yield D2.model_copy(update={"id": f"b{i}"})

    small = dialogue_stats((d for d in stream()), FW)  # a generator: read in one pass
    assert small["dialogues"] == 40 and small["sampling"]["sampled"] is False
    exact = dialogue_stats(list(stream()), FW)
    assert small == exact

    monkeypatch.setattr(stats, "DIVERSITY_SAMPLE", 20)
    monkeypatch.setattr(stats, "SELF_BLEU_SAMPLE", 5)
    monkeypatch.setattr(stats, "PERSONA_SAMPLE", 10)
    st = dialogue_stats(stream(), FW)
    sm = st["sampling"]
    assert sm["sampled"] is True and sm["distinct_n_turns"] == 20
    assert sm["supporter_turns"] == st["supporter_turns"] > 20
    assert sm["self_bleu_hypotheses"] == 5 and sm["self_bleu_references"] == 19
    assert sm["persona_dialogues"] == 10 and sm["dialogues_with_profile"] == 40
    assert st["strategy_distribution"] == exact["strategy_distribution"]  # counts stay exact
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render_stats(st))
    assert "sampled (seeded)" in console.export_text()
