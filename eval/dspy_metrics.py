"""DSPy metric adapters ``metric(example, pred, trace=None)`` over the reply and strategy metrics:
a float when evaluating, a bool while bootstrapping (``trace`` is not None), and the GEPA feedback
metric."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from csc.eval.text_metrics import bertscore_scorer, rouge_l_scores, sentence_bleu


def _text(obj: Any, name: str) -> str:
    value = getattr(obj, name, None) if not isinstance(obj, dict) else obj.get(name)
    return "" if value is None else str(value)


def strategy_accuracy_metric(example: Any, pred: Any, trace: Any = None) -> float | bool:
    """DSPy metric: does the predicted strategy equal the gold ``example.strategy``?"""
    gold = _text(example, "strategy")
    match = bool(gold) and _text(pred, "strategy") == gold
    return match if trace is not None else float(match)


def bleu_metric(example: Any, pred: Any, trace: Any = None) -> float | bool:
    """DSPy metric: sentence BLEU-4 of ``pred.response`` against ``example.response`` (0-1)."""
    score = sentence_bleu(_text(pred, "response"), _text(example, "response")) / 100.0
    return score > 0 if trace is not None else score


def rouge_l_metric(example: Any, pred: Any, trace: Any = None) -> float | bool:
    """DSPy metric: ROUGE-L F1 of ``pred.response`` against ``example.response`` (0-1)."""
    score = rouge_l_scores([_text(pred, "response")], [_text(example, "response")])[0]
    return score > 0 if trace is not None else score


def bertscore_metric(example: Any, pred: Any, trace: Any = None) -> float | bool:
    """DSPy metric: BERTScore F1 (default offline model) of the reply (0-1).

    While bootstrapping (``trace`` set) a reply passes at F1 >= 0.5.
    """
    score = bertscore_scorer().score([_text(pred, "response")], [_text(example, "response")])
    return score[0] >= 0.5 if trace is not None else score[0]


def strategy_and_bertscore_metric(
    strategy_weight: float = 0.5, *, model: str | None = None
) -> Callable[..., float | bool]:
    """DSPy metric combining strategy accuracy and reply BERTScore F1 (0-1).

    ``score = w * [strategy correct] + (1 - w) * BERTScore F1``. While bootstrapping only
    demos with the correct strategy pass, so demos teach the strategy policy first.
    """
    if not 0.0 <= strategy_weight <= 1.0:
        raise ValueError("strategy_weight must be between 0 and 1")

    def metric(example: Any, pred: Any, trace: Any = None) -> float | bool:
        correct = bool(strategy_accuracy_metric(example, pred))
        if trace is not None:
            return correct
        bs = bertscore_scorer(model).score([_text(pred, "response")], [_text(example, "response")])
        return strategy_weight * correct + (1 - strategy_weight) * bs[0]

    metric.__name__ = "strategy_and_bertscore"
    return metric


def strategy_feedback_metric(
    framework: Any, language: str = "en", base: Callable[..., float | bool] | None = None
) -> Callable[..., Any]:
    """GEPA metric: the score of ``base`` (strategy accuracy) plus textual feedback.

    The feedback names the gold and the predicted strategy and quotes both definitions and
    distinguishing rules, so GEPA's reflection LM learns why they differ. Returns
    ``dspy.Prediction(score=..., feedback=...)``.
    """
    import dspy

    base = base or strategy_accuracy_metric

    def metric(
        gold: Any,
        pred: Any,
        trace: Any = None,
        pred_name: str | None = None,
        pred_trace: Any = None,
    ) -> Any:
        score = float(base(gold, pred))
        want, got = _text(gold, "strategy"), _text(pred, "strategy")
        if want == got:
            feedback = f"Correct: the gold strategy is {want}. " + _describe(
                framework, want, language
            )
        else:
            feedback = (
                f"Wrong strategy: predicted {got or 'nothing'}, but the expert chose {want}.\n"
                f"Gold: {_describe(framework, want, language)}\n"
                f"Predicted: {_describe(framework, got, language)}\n"
                "Look at the last customer turn and the strategies already used, and apply the "
                "distinguishing rules above."
            )
        if hasattr(pred, "response") and hasattr(gold, "response"):
            feedback += f"\nReference reply: {_text(gold, 'response')}"
        return dspy.Prediction(score=score, feedback=feedback)

    metric.__name__ = "strategy_feedback"
    return metric


def _describe(framework: Any, code: str, language: str) -> str:
    try:
        return framework.render_strategy(framework.normalize(code), language)
    except (ValueError, KeyError):
        return f"{code!r} is not a strategy of the {framework.name} framework."


def strategy_adherence_metric(
    labeler: Any,
    *,
    lm: Any = None,
    framework: Any = None,
    language: str = "en",
    feedback: bool = False,
) -> Callable[..., Any]:
    """DSPy metric for a reply written to carry out a given strategy: does an independent
    strategy labeler, reading the history and ``pred.response``, name ``example.strategy``?

    ``labeler`` is a :class:`~csc.programs.supporter.StrategyLabeler` (zero-shot or compiled)
    run on ``lm`` (default: the LM of the current context). Its call is kept out of the
    optimizer's trace, so it never becomes a demo of the program being compiled. With
    ``feedback`` the metric returns ``dspy.Prediction(score, feedback)`` for GEPA, naming the
    strategy asked for and the one the labeler read, with both definitions (``framework``).
    """
    import dspy

    if feedback and framework is None:
        raise ValueError("strategy_adherence_metric(feedback=True) needs the framework")

    def label(example: Any, pred: Any) -> str:
        with dspy.context(trace=None, **({} if lm is None else {"lm": lm})):
            return str(labeler(history=example.history, response=_text(pred, "response")).strategy)

    def metric(
        example: Any,
        pred: Any,
        trace: Any = None,
        pred_name: str | None = None,
        pred_trace: Any = None,
    ) -> Any:
        asked, read = _text(example, "strategy"), label(example, pred)
        match = bool(asked) and read == asked
        if not feedback:
            return match if trace is not None else float(match)
        if match:
            text = f"Adherent: the reply reads as {asked}, the strategy it was asked to use."
        else:
            text = (
                f"Not adherent: the reply was asked to carry out {asked}, but an independent "
                f"labeler reads it as {read or 'nothing'}.\n"
                f"Asked: {_describe(framework, asked, language)}\n"
                f"Read as: {_describe(framework, read, language)}\n"
                "Write the reply so that it does what the asked strategy defines and nothing that "
                "belongs to another strategy."
            )
        return dspy.Prediction(score=float(match), feedback=text)

    metric.__name__ = "strategy_adherence_feedback" if feedback else "strategy_adherence"
    return metric
