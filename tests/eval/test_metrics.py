"""Metrics against independently computed values on small cases (English and Chinese)."""

from __future__ import annotations

import math
import random
from collections import Counter

import dspy
import pytest

from csc.eval.metrics import (
    bleu_metric,
    corpus_bleu,
    detect_language,
    lcs_length,
    rouge_l,
    rouge_l_metric,
    rouge_l_scores,
    strategy_accuracy,
    strategy_accuracy_metric,
    strategy_and_bertscore_metric,
    strategy_feedback_metric,
    strategy_scores,
)
from csc.framework import Framework


def reference_bleu(hyps: list[list[str]], refs: list[list[str]], max_order: int) -> float:
    """Papineni et al. corpus BLEU from its definition (clipped counts, brevity penalty)."""
    matches, totals = [0] * max_order, [0] * max_order
    hyp_len = ref_len = 0
    for h, r in zip(hyps, refs):
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, max_order + 1):
            hc = Counter(tuple(h[i : i + n]) for i in range(len(h) - n + 1))
            rc = Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))
            matches[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    if min(matches) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_order
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * bp * math.exp(log_p)


EN_HYPS = [
    "thank you for waiting i have checked your account",
    "please restart the app and try the transfer again",
    "we are sorry for the trouble with your card",
]
EN_REFS = [
    "thank you for your patience i have checked your account now",
    "please restart the app and then try again",
    "i am sorry for the trouble with your card today",
]
ZH_HYPS = ["感谢您的耐心等待我已经查询了您的账户", "请您重新启动应用后再试一次转账"]
ZH_REFS = ["感谢您耐心等待我已为您查询账户", "请重新启动应用然后再试一次"]


@pytest.mark.parametrize("order", [2, 4])
def test_bleu_matches_definition_english(order):
    expected = reference_bleu([h.split() for h in EN_HYPS], [r.split() for r in EN_REFS], order)
    assert corpus_bleu(EN_HYPS, EN_REFS, order) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("order", [2, 4])
def test_bleu_chinese_is_character_level(order):
    expected = reference_bleu([list(h) for h in ZH_HYPS], [list(r) for r in ZH_REFS], order)
    assert corpus_bleu(ZH_HYPS, ZH_REFS, order) == pytest.approx(expected, abs=1e-6)
    # With the English tokenizer each sentence is one "word": a different, much lower score.
    assert corpus_bleu(ZH_HYPS, ZH_REFS, order, tokenize="13a") < expected


def test_bleu2_exceeds_bleu4_and_identity_is_100():
    assert corpus_bleu(EN_HYPS, EN_REFS, 2) > corpus_bleu(EN_HYPS, EN_REFS, 4)
    assert corpus_bleu(EN_REFS, EN_REFS, 4) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="must pair up"):
        corpus_bleu(EN_HYPS, EN_REFS[:2])


def test_language_detection():
    assert detect_language(ZH_REFS) == "zh"
    assert detect_language(EN_REFS) == "en"
    assert detect_language(["[Bank name] 的客服很高兴为您服务"]) == "zh"
    assert detect_language([]) == "en"


def _dp_lcs(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a, 1):
        for j, y in enumerate(b, 1):
            table[i][j] = (
                table[i - 1][j - 1] + 1 if x == y else max(table[i - 1][j], table[i][j - 1])
            )
    return table[-1][-1]


def test_bit_parallel_lcs_equals_dynamic_programming():
    rng = random.Random(7)
    for _ in range(300):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 70))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 70))]
        assert lcs_length(a, b) == _dp_lcs(a, b)


@pytest.mark.slow  # imports rouge_score (and nltk): seconds
def test_rouge_l_english_matches_rouge_score():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    hyps = [*EN_HYPS, "Hello!! How can I help?", ""]
    refs = [*EN_REFS, "hello, how may I help you", "anything"]
    expected = [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)]
    assert rouge_l_scores(hyps, refs, language="en") == pytest.approx(expected)
    assert rouge_l(hyps, refs, language="en") == pytest.approx(100 * sum(expected) / 5)


@pytest.mark.slow  # imports rouge_score (and nltk): seconds
def test_rouge_l_chinese_by_characters():
    # LCS of 我的银行卡被冻结了 / 银行卡已冻结 is 银行卡冻结 (5): P = 5/9, R = 5/6.
    p, r = 5 / 9, 5 / 6
    assert rouge_l_scores(["我的银行卡被冻结了"], ["银行卡已冻结"]) == pytest.approx(
        [2 * p * r / (p + r)]
    )
    # rouge-score's own tokenizer drops Chinese entirely, which is why we use characters.
    from rouge_score import rouge_scorer

    assert rouge_scorer.RougeScorer(["rougeL"]).score("银行卡", "银行卡")["rougeL"].fmeasure == 0


def test_strategy_scores_on_hand_made_predictions():
    gold = ["GT", "IV", "EM", "EM", "PS", "PS", None]
    pred = ["GT", "EM", "EM", "PS", "PS", None, "AC"]
    s = strategy_scores(gold, pred, Framework.load("csc").codes)
    assert s.n == 6  # the unlabelled turn is skipped
    assert s.accuracy == pytest.approx(100 * 3 / 6)
    assert strategy_accuracy(gold, pred) == pytest.approx(50.0)
    # GT: P=R=1; IV: P=0 (never predicted), R=0; EM: P=1/2, R=1/2; PS: P=1/2, R=1/2.
    f1 = {"GT": 1.0, "IV": 0.0, "EM": 0.5, "PS": 0.5}
    assert {c: v["f1"] / 100 for c, v in s.per_strategy.items()} == pytest.approx(f1)
    assert s.macro_f1 == pytest.approx(100 * sum(f1.values()) / 4)
    assert s.labels == ["GT", "IV", "EM", "PS", "-"]  # framework order, then "missing"
    assert s.confusion[s.labels.index("PS")][s.labels.index("-")] == 1
    assert sum(map(sum, s.confusion)) == 6


def test_dspy_metric_shapes():
    ex = dspy.Example(history=None, strategy="EM", response="sorry for the wait").with_inputs(
        "history"
    )
    right = dspy.Prediction(strategy="EM", response="sorry for the wait")
    wrong = dspy.Prediction(strategy="PS", response="please restart it")
    assert strategy_accuracy_metric(ex, right) == 1.0
    assert strategy_accuracy_metric(ex, wrong, trace=[]) is False
    assert strategy_accuracy_metric(ex, right, trace=[]) is True
    assert rouge_l_metric(ex, right) == pytest.approx(1.0)
    assert rouge_l_metric(ex, wrong) == 0.0
    assert bleu_metric(ex, right) == pytest.approx(1.0)


def test_metrics_with_dspy_evaluate():
    class Echo(dspy.Module):
        def forward(self, history):
            return dspy.Prediction(strategy=history, response="hello there")

    devset = [
        dspy.Example(history=h, strategy=g, response="hello there").with_inputs("history")
        for h, g in [("GT", "GT"), ("EM", "PS"), ("PS", "PS"), ("AC", "AC")]
    ]
    evaluate = dspy.Evaluate(devset=devset, num_threads=2, display_progress=False)
    assert evaluate(Echo(), metric=strategy_accuracy_metric).score == pytest.approx(75.0)
    assert evaluate(Echo(), metric=rouge_l_metric).score == pytest.approx(100.0)


def test_gepa_feedback_names_both_strategies_and_rules():
    fw = Framework.load("csc")
    metric = strategy_feedback_metric(fw, "en")
    ex = dspy.Example(strategy="EM", response="I understand how upsetting this is.")
    out = metric(ex, dspy.Prediction(strategy="RP"), None, "strategist", None)
    assert out.score == 0.0
    assert "predicted RP" in out.feedback and "chose EM" in out.feedback
    assert fw.strategy("EM").rule in out.feedback and fw.strategy("RP").rule in out.feedback
    ok = metric(ex, dspy.Prediction(strategy="EM"), None, None, None)
    assert ok.score == 1.0 and ok.feedback.startswith("Correct")
    zh = strategy_feedback_metric(fw, "zh")(ex, dspy.Prediction(strategy="XX"))
    assert "情感管理" in zh.feedback and "not a strategy" in zh.feedback


def test_combined_metric_bootstraps_on_strategy_only():
    metric = strategy_and_bertscore_metric(0.5)
    ex = dspy.Example(strategy="EM", response="sorry")
    assert metric(ex, dspy.Prediction(strategy="EM", response="anything"), trace=[]) is True
    assert metric(ex, dspy.Prediction(strategy="PS", response="sorry"), trace=[]) is False
    with pytest.raises(ValueError):
        strategy_and_bertscore_metric(1.5)


@pytest.mark.slow  # imports rouge_score (and nltk): seconds
def test_english_rouge_tokens_follow_rouge_score():
    from rouge_score import tokenize

    from csc.eval.metrics import rouge_tokens

    for text in [*EN_HYPS, "Hello!! How can I help? It's 5pm—OK", "Café résumé 3.5%", ""]:
        assert rouge_tokens(text, "en") == tokenize.tokenize(text, None)


@pytest.mark.parametrize(("hyps", "refs"), [(EN_HYPS, EN_REFS), (ZH_HYPS, ZH_REFS)])
def test_bleu_orders_in_one_pass_equal_separate_calls(hyps, refs):
    from csc.eval.metrics import corpus_bleu_orders

    both = corpus_bleu_orders(hyps, refs, (2, 4))
    assert both[2] == pytest.approx(corpus_bleu(hyps, refs, 2), abs=1e-9)
    assert both[4] == pytest.approx(corpus_bleu(hyps, refs, 4), abs=1e-9)
    assert both[2] > 0
