"""Our batched BERTScore against the bert_score package on small English and Chinese cases."""

from __future__ import annotations

import dspy
import pytest

from csc.eval.metrics import BertScorer, bertscore, default_bertscore_model

pytestmark = pytest.mark.slow  # loads MiniLM twice (ours and bert_score's)

CANDS = [
    "Thank you for waiting, I have checked your account.",
    "I am sorry to hear that your card was blocked.",
    "ok",
    "您好，请问有什么可以帮您？",
    "请您在手机银行中尝试解冻银行卡。",
]
REFS = [
    "Thanks for your patience, your account looks fine.",
    "Sorry about the blocked card, let me help you with it.",
    "Sure, goodbye and have a nice day!",
    "您好，很高兴为您服务。",
    "请在手机银行里解冻您的卡。",
]


def test_matches_bert_score_package():
    import bert_score

    _, _, expected = bert_score.score(
        CANDS, REFS, model_type=default_bertscore_model(), num_layers=6, batch_size=2
    )
    # Small batches force different padding than bert_score's; results must not change.
    ours = BertScorer(batch_size=2).score(CANDS, REFS)
    assert ours == pytest.approx(expected.tolist(), abs=1e-5)
    assert bertscore(CANDS, REFS) == pytest.approx(100 * float(expected.mean()), abs=1e-3)


def test_lower_layer_and_edge_cases():
    import bert_score

    _, _, expected = bert_score.score(
        CANDS[:2], REFS[:2], model_type=default_bertscore_model(), num_layers=3
    )
    scorer = BertScorer(num_layers=3)
    assert scorer.score(CANDS[:2], REFS[:2]) == pytest.approx(expected.tolist(), abs=1e-5)
    same = scorer.score(["identical reply"], ["identical reply"])
    assert same[0] == pytest.approx(1.0, abs=1e-5)
    assert scorer.score(["", "text"], ["text", ""]) == [0.0, 0.0]
    with pytest.raises(ValueError, match="num_layers"):
        BertScorer(num_layers=99)


def test_wrapper_in_evaluate():
    from csc.eval.metrics import bertscore_metric

    devset = [
        dspy.Example(history="x", response=r).with_inputs("history") for r in ["hello", "bye"]
    ]

    class Same(dspy.Module):
        def forward(self, history):
            return dspy.Prediction(response="hello")

    score = dspy.Evaluate(devset=devset, display_progress=False)(Same(), metric=bertscore_metric)
    first = bertscore_metric(devset[0], dspy.Prediction(response="hello"))
    second = bertscore_metric(devset[1], dspy.Prediction(response="hello"))
    assert first == pytest.approx(1.0, abs=1e-5)
    assert score.score == pytest.approx(100 * (first + second) / 2, abs=0.01)  # Evaluate rounds
