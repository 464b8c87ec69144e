"""Strategy-prediction metrics: accuracy, macro-F1, per-strategy precision / recall / F1 and the
confusion matrix, as percentages."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from csc.eval.text_metrics import check_pairs


@dataclass
class StrategyScores:
    """Strategy-prediction scores (percentages) with per-strategy detail and a confusion matrix.

    ``confusion[i][j]`` counts examples with gold ``labels[i]`` predicted as ``labels[j]``; a
    missing or invalid prediction is the column ``"-"`` (present only when it occurs).
    """

    accuracy: float
    macro_f1: float
    n: int
    labels: list[str]
    per_strategy: dict[str, dict[str, float]] = field(default_factory=dict)
    confusion: list[list[int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def strategy_accuracy(gold: Sequence[str | None], predicted: Sequence[str | None]) -> float:
    """Share (0-100) of labelled examples whose predicted strategy equals the gold one."""
    return strategy_scores(gold, predicted).accuracy


def strategy_scores(
    gold: Sequence[str | None],
    predicted: Sequence[str | None],
    labels: Sequence[str] | None = None,
) -> StrategyScores:
    """Accuracy, macro-F1 and per-strategy precision/recall/F1 over labelled examples.

    Examples without a gold strategy are skipped. Macro-F1 averages over the strategies that
    occur in the gold or the predicted labels (as scikit-learn does by default); ``labels`` (e.g.
    the framework codes) only fixes their order.
    """
    check_pairs(predicted, gold)
    pairs = [(g, p or "-") for g, p in zip(gold, predicted) if g]
    seen = {g for g, _ in pairs} | {p for _, p in pairs if p != "-"}
    order = list(labels or [])
    ordered = [c for c in order if c in seen] + sorted(seen - set(order))
    per: dict[str, dict[str, float]] = {}
    gold_count = Counter(g for g, _ in pairs)
    pred_count = Counter(p for _, p in pairs)
    hits = Counter(g for g, p in pairs if g == p)
    for code in ordered:
        tp = hits[code]
        precision = tp / pred_count[code] if pred_count[code] else 0.0
        recall = tp / gold_count[code] if gold_count[code] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per[code] = {
            "precision": 100.0 * precision,
            "recall": 100.0 * recall,
            "f1": 100.0 * f1,
            "support": gold_count[code],
            "predicted": pred_count[code],
        }
    columns = ordered + (["-"] if pred_count["-"] else [])
    col = {c: j for j, c in enumerate(columns)}
    row = {c: i for i, c in enumerate(ordered)}
    confusion = [[0] * len(columns) for _ in ordered]
    for g, p in pairs:
        confusion[row[g]][col[p]] += 1
    n = len(pairs)
    return StrategyScores(
        accuracy=100.0 * sum(hits.values()) / n if n else 0.0,
        macro_f1=sum(v["f1"] for v in per.values()) / len(per) if per else 0.0,
        n=n,
        labels=columns,
        per_strategy=per,
        confusion=confusion,
    )
