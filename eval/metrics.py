"""Evaluation metrics for supporters, reported as percentages like the CSC paper.

One import path for the three kinds: reply quality (:mod:`csc.eval.text_metrics`: BLEU, ROUGE-L,
BERTScore), strategy prediction (:mod:`csc.eval.strategy_metrics`) and their DSPy metric
adapters (:mod:`csc.eval.dspy_metrics`).
"""

from csc.eval.dspy_metrics import (
    bertscore_metric,
    bleu_metric,
    rouge_l_metric,
    strategy_accuracy_metric,
    strategy_adherence_metric,
    strategy_and_bertscore_metric,
    strategy_feedback_metric,
)
from csc.eval.strategy_metrics import StrategyScores, strategy_accuracy, strategy_scores
from csc.eval.text_metrics import (
    BertScorer,
    bertscore,
    corpus_bleu,
    corpus_bleu_orders,
    default_bertscore_model,
    detect_language,
    lcs_length,
    rouge_l,
    rouge_l_scores,
    rouge_tokens,
    sentence_bleu,
)

__all__ = [
    "BertScorer",
    "StrategyScores",
    "bertscore",
    "bertscore_metric",
    "bleu_metric",
    "corpus_bleu",
    "corpus_bleu_orders",
    "default_bertscore_model",
    "detect_language",
    "lcs_length",
    "rouge_l",
    "rouge_l_metric",
    "rouge_l_scores",
    "rouge_tokens",
    "sentence_bleu",
    "strategy_accuracy",
    "strategy_accuracy_metric",
    "strategy_adherence_metric",
    "strategy_and_bertscore_metric",
    "strategy_feedback_metric",
    "strategy_scores",
]
