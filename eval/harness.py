"""Evaluate a supporter program under the reference and the generated context.

* **Reference context**: the history of every example is the reference dialogue up to that turn.
* **Generated context**: the supporter is rolled through each dialogue; every earlier supporter
  turn in its history is its own generation (with its own predicted strategy), customer turns stay
  as in the reference. Dialogues run concurrently, turns within a dialogue sequentially.

Both settings score the same examples (every supporter turn, or the first ``limit`` in dialogue
order) with BLEU-2/4, ROUGE-L, BERTScore, strategy accuracy and macro-F1. Predictions are appended
to a cache file as they finish, so an interrupted run resumes where it stopped.

Python use::

    from csc.eval.harness import evaluate_supporter
    from csc.programs.supporter import Supporter
    with dspy.context(lm=build_lm("local")):
        result = evaluate_supporter(Supporter(), dialogues, context="both", limit=40)
    print(result.metrics["reference"]["acc"])
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dspy

from csc.choices import CONTEXT_NAMES, CONTEXTS, Context
from csc.data.jsonl import JsonlWriter, drop_torn_line
from csc.data.turns import as_framework
from csc.dialogue import Dialogue, Speaker, Turn
from csc.eval.examples import dialogue_language, supporter_examples
from csc.eval.metrics import bertscore, corpus_bleu_orders, rouge_l, strategy_scores
from csc.framework import Framework
from csc.lm import redact_secrets
from csc.programs.run_folder import in_shard, progress_bar, read_json_object, run_concurrently
from csc.signatures.supporter import PromptVariant
from csc.signatures.types import DialogueHistory
from csc.usage import reported_tokens, usage_of

__all__ = [
    "CONTEXTS",
    "ContextResult",
    "EvaluationResult",
    "PredictionRecord",
    "SeenDialoguesError",
    "SupporterSpec",
    "check_unseen",
    "evaluate_supporter",
    "finetuned_prompt_variant",
    "finetuned_training_ids",
    "score_records",
    "supporter_from_spec",
]


@dataclass
class PredictionRecord:
    """One scored supporter turn: what the reference says and what the program produced."""

    dialogue_id: str
    turn_index: int
    context: str
    gold_strategy: str | None
    predicted_strategy: str | None
    gold_response: str
    generated_response: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None
    cached_prompt_tokens: int = 0
    # True when the program's strategy output named no strategy and the framework's fallback
    # strategy was substituted (counted per run as ``strategy_fallbacks``).
    strategy_fallback: bool = False
    # True when the turn failed because the strategy output could not be parsed at all.
    strategy_unparsed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (one line of predictions.jsonl)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PredictionRecord:
        """Read a record back from its dict form."""
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__ if k in data})

    @classmethod
    def failed(
        cls, dialogue_id: str, index: int, context: str, gold: Turn, error: str, **more: Any
    ) -> PredictionRecord:
        """An error row for a turn: the gold side, no prediction, the error (secrets redacted)."""
        record = cls(dialogue_id, index, context, gold.strategy, None, gold.text, "", **more)
        record.error = redact_secrets(error)
        return record


@dataclass
class ContextResult:
    """The records and metrics of one context setting."""

    context: str
    records: list[PredictionRecord]
    metrics: dict[str, Any]
    strategy: dict[str, Any]
    seconds: float


@dataclass
class EvaluationResult:
    """Results per context (``reference`` / ``generated``) plus run information."""

    contexts: dict[str, ContextResult] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        """Context -> headline metrics (bleu2, bleu4, rougeL, bertscore, acc, macro_f1, ...)."""
        return {name: res.metrics for name, res in self.contexts.items()}

    @property
    def records(self) -> list[PredictionRecord]:
        """All prediction records, context by context."""
        return [r for res in self.contexts.values() for r in res.records]


def normalize_contexts(context: str | Sequence[str]) -> list[Context]:
    """``ref``/``gen``/``both`` (or full names, or a list) -> the list of contexts to run."""
    items = [context] if isinstance(context, str) else list(context)
    out: list[Context] = []
    for item in items:
        if item == "both":
            out.extend(CONTEXTS)
        elif item in CONTEXT_NAMES:
            out.append(CONTEXT_NAMES[item])
        else:
            raise ValueError(f"unknown context {item!r}; use ref, gen or both")
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------- caching
class _RecordCache:
    """Append-only JSONL of finished records, keyed by (dialogue id, turn index).

    A shard writes ``<context>.shard-I-of-N.jsonl`` beside ``<context>.jsonl`` (so shards can
    share one folder without sharing a file), and every cache reads all of them: an unsharded
    run over a folder holding every shard's file scores the union without an LM call.
    """

    def __init__(self, folder: Path | None, context: str, shard: tuple[int, int] | None = None):
        name = f"{context}.shard-{shard[0]}-of-{shard[1]}" if shard else context
        self.path = None if folder is None else folder / f"{name}.jsonl"
        self.lock = threading.Lock()
        self.done: dict[tuple[str, int], PredictionRecord] = {}
        self.writer: JsonlWriter | None = None
        paths = sorted(folder.glob(f"{context}.*jsonl")) if folder is not None else []
        for path in paths:
            if path.name != f"{context}.jsonl" and not path.name.startswith(f"{context}.shard-"):
                continue
            drop_torn_line(path)  # a line cut short by a kill: recompute that example
            for line in path.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                try:
                    rec = PredictionRecord.from_dict(json.loads(line))
                except (json.JSONDecodeError, TypeError):  # an edited line: recompute it
                    continue
                if rec.error is None:
                    self.done[(rec.dialogue_id, rec.turn_index)] = rec

    def get(self, dialogue_id: str, turn_index: int) -> PredictionRecord | None:
        return self.done.get((dialogue_id, turn_index))

    def add(self, record: PredictionRecord) -> None:
        if self.path is None or record.error is not None:
            return
        with self.lock:
            self.done[(record.dialogue_id, record.turn_index)] = record
            self.writer = self.writer or JsonlWriter(self.path).open()
        self.writer.write(record.to_dict())


# ---------------------------------------------------------------------------- running
def _run_turn(
    program: dspy.Module,
    history: DialogueHistory,
    dialogue_id: str,
    turn_index: int,
    context: str,
    gold: Turn,
) -> PredictionRecord:
    start = time.perf_counter()
    try:
        pred = program(history=history)
    except Exception as exc:  # kept as a row with its error, not lost
        signature = getattr(exc, "signature", None)
        unparsed = type(exc).__name__ == "AdapterParseError" and "strategy" in getattr(
            signature, "output_fields", {}
        )
        return PredictionRecord.failed(
            dialogue_id,
            turn_index,
            context,
            gold,
            f"{type(exc).__name__}: {exc}",
            latency_s=time.perf_counter() - start,
            strategy_unparsed=unparsed,
        )
    # Tokens as DSPy reported them per call: the reports the csc.usage meter adds up, so on a
    # fresh run their sum equals the run's lm_usage.
    usage = pred.get_lm_usage() if hasattr(pred, "get_lm_usage") else None
    u = reported_tokens((usage or {}).values())
    return PredictionRecord(
        dialogue_id,
        turn_index,
        context,
        gold.strategy,
        getattr(pred, "strategy", None),
        gold.text,
        str(getattr(pred, "response", "") or ""),
        u.prompt_tokens,
        u.completion_tokens,
        time.perf_counter() - start,
        cached_prompt_tokens=u.cached_prompt_tokens,
        strategy_fallback=bool(getattr(pred, "strategy_fallback", False)),
    )


def _run_all(
    items: Sequence[Any], work: Callable[[Any], Any], num_threads: int, progress: bool, unit: str
) -> dict[Any, Any]:
    """``work`` over ``items`` on ``num_threads`` threads: item -> result (or the exception)."""
    results: dict[Any, Any] = {}
    with progress_bar(progress and bool(items), len(items), unit, "evaluating") as bar:
        run_concurrently(items, work, results.__setitem__, concurrency=num_threads, bar=bar)
    return results


def _reference_context(
    program: dspy.Module,
    examples: list[dspy.Example],
    dialogues: dict[str, Dialogue],
    cache: _RecordCache,
    num_threads: int,
    progress: bool,
) -> list[PredictionRecord]:
    by_key = {(ex.dialogue_id, ex.turn_index): ex for ex in examples}
    todo = [key for key in by_key if cache.get(*key) is None]

    def run(key: tuple[str, int]) -> PredictionRecord:
        ex = by_key[key]
        gold = dialogues[ex.dialogue_id].turns[ex.turn_index]
        rec = _run_turn(program, ex.history, ex.dialogue_id, ex.turn_index, "reference", gold)
        cache.add(rec)
        return rec

    fresh = _run_all(todo, run, num_threads, progress, unit="turn")
    return [cache.get(*key) or fresh[key] for key in by_key]


def _generated_context(
    program: dspy.Module,
    examples: list[dspy.Example],
    dialogues: dict[str, Dialogue],
    cache: _RecordCache,
    language: str,
    num_threads: int,
    progress: bool,
) -> list[PredictionRecord]:
    wanted: dict[str, list[int]] = {}
    for ex in examples:
        wanted.setdefault(ex.dialogue_id, []).append(ex.turn_index)
    show = examples[0].history.show_strategies if examples else True

    def roll(dialogue_id: str) -> list[PredictionRecord]:
        dialogue = dialogues[dialogue_id]
        turns = list(dialogue.turns)
        out: list[PredictionRecord] = []
        for index in wanted[dialogue_id]:
            gold = dialogue.turns[index]
            rec = cache.get(dialogue_id, index)
            if rec is None:
                history = DialogueHistory.of(turns[:index], language=language, show_strategies=show)
                rec = _run_turn(program, history, dialogue_id, index, "generated", gold)
                cache.add(rec)
            out.append(rec)
            if rec.error is None:
                # The model's own reply (and strategy) is what later turns see.
                turns[index] = Turn(
                    speaker=Speaker.SUPPORTER,
                    text=rec.generated_response,
                    strategy=rec.predicted_strategy,
                )
        return out

    results = _run_all(list(wanted), roll, num_threads, progress, unit="dlg")
    records: list[PredictionRecord] = []
    for dialogue_id in wanted:
        res = results[dialogue_id]
        if isinstance(res, list):
            records.extend(res)
        else:  # the rollout itself failed: keep every turn as an error row
            gold, error = dialogues[dialogue_id].turns, f"rollout failed: {res}"
            records.extend(
                PredictionRecord.failed(dialogue_id, i, "generated", gold[i], error)
                for i in wanted[dialogue_id]
            )
    return records


# ---------------------------------------------------------------------------- scoring
def score_records(
    records: Sequence[PredictionRecord],
    *,
    framework: Framework | None = None,
    language: str | None = None,
    bleu_tokenize: str | None = None,
    bertscore_model: str | None = None,
    with_bertscore: bool = True,
    progress: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Headline metrics (percentages) and the strategy detail of a list of records."""
    hyps = [r.generated_response for r in records]
    refs = [r.gold_response for r in records]
    codes = framework.codes if framework else None
    strat = strategy_scores(
        [r.gold_strategy for r in records], [r.predicted_strategy for r in records], codes
    )
    bleu = corpus_bleu_orders(hyps, refs, (2, 4), language=language, tokenize=bleu_tokenize)
    metrics: dict[str, Any] = {
        "bleu2": bleu[2],
        "bleu4": bleu[4],
        "rougeL": rouge_l(hyps, refs, language=language),
        "bertscore": (
            bertscore(hyps, refs, model=bertscore_model, progress=progress)
            if with_bertscore
            else None
        ),
        "acc": strat.accuracy,
        "macro_f1": strat.macro_f1,
        "n_examples": len(records),
        "n_labelled": strat.n,
        "n_errors": sum(r.error is not None for r in records),
        # Outputs that named no strategy: substituted by the fallback strategy (scored as
        # predicted), or failed to parse at all (an error row, scored as wrong).
        "strategy_fallbacks": sum(bool(r.strategy_fallback) for r in records),
        "strategy_parse_errors": sum(bool(r.strategy_unparsed) for r in records),
        "prompt_tokens": sum(r.prompt_tokens or 0 for r in records),
        "cached_prompt_tokens": sum(r.cached_prompt_tokens or 0 for r in records),
        "completion_tokens": sum(r.completion_tokens or 0 for r in records),
        "mean_latency_s": (sum(r.latency_s or 0 for r in records) / len(records))
        if records
        else 0.0,
    }
    return metrics, strat.to_dict()


def evaluate_supporter(
    program: dspy.Module,
    dialogues: Iterable[Dialogue],
    *,
    context: str | Sequence[str] = "both",
    framework: Framework | str | None = None,
    language: str | None = None,
    limit: int | None = None,
    num_threads: int = 4,
    cache_dir: str | Path | None = None,
    bleu_tokenize: str | None = None,
    bertscore_model: str | None = None,
    with_bertscore: bool = True,
    progress: bool = True,
    on_context_done: Callable[[EvaluationResult], None] | None = None,
    shard: tuple[int, int] | None = None,
) -> EvaluationResult:
    """Run ``program`` on every supporter turn of ``dialogues`` and score it.

    Args:
        program: a module returning ``Prediction(strategy, response)`` for ``history=``.
        dialogues: the evaluation dialogues (gold strategies as framework codes).
        context: ``ref``, ``gen``, ``both`` (or ``reference`` / ``generated``).
        framework: orders the per-strategy scores (default: the program's framework).
        language: ``en`` / ``zh`` for histories and metric tokenization (detected if omitted).
        limit: only the first ``limit`` supporter turns in dialogue order (the same turns in
            both contexts).
        num_threads: concurrent requests (turns in ``ref``, dialogues in ``gen``).
        cache_dir: folder of the per-context resume caches (``<context>.jsonl``).
        bleu_tokenize: override sacrebleu's tokenizer (default ``zh`` or ``13a`` by language).
        bertscore_model: local model folder for BERTScore (default all-MiniLM-L6-v2).
        with_bertscore: set False to skip BERTScore (reported as None).
        progress: show progress bars.
        on_context_done: called with the results so far each time a context is scored (to
            write partial reports).
        shard: ``(I, N)``: only every N-th dialogue from the I-th (whole dialogues, so a
            generated-context rollout stays in one shard); its predictions go to a cache file
            of its own (see ``_RecordCache``).
    """
    dialogues = [d for pos, d in enumerate(dialogues) if in_shard(pos, shard)]
    ids = [d.id for d in dialogues]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"dialogue id {dup!r} occurs more than once; ids must be unique")
    fw = as_framework(framework or getattr(program, "framework", None))
    language = language or dialogue_language(dialogues)
    examples = supporter_examples(dialogues, language=language)[:limit]
    by_id = {d.id: d for d in dialogues}
    # Every LM the program can call; metered on the LM objects, so worker threads count too.
    lms = [dspy.settings.lm, *(p.lm for p in program.predictors() if p.lm is not None)]
    result = EvaluationResult(
        info={"language": language, "n_dialogues": len({e.dialogue_id for e in examples})}
    )
    for ctx in normalize_contexts(context):
        cache = _RecordCache(Path(cache_dir) if cache_dir else None, ctx, shard)
        n_cached = sum(cache.get(e.dialogue_id, e.turn_index) is not None for e in examples)
        usage_before = usage_of(*lms)
        start = time.perf_counter()
        # trace=None: DSPy's optimizer trace would keep the last 10,000 calls' inputs.
        with dspy.context(track_usage=True, trace=None):
            if ctx == "reference":
                records = _reference_context(program, examples, by_id, cache, num_threads, progress)
            else:
                records = _generated_context(
                    program, examples, by_id, cache, language, num_threads, progress
                )
        seconds = time.perf_counter() - start
        usage = usage_of(*lms) - usage_before
        metrics, strat = score_records(
            records,
            framework=fw,
            language=language,
            bleu_tokenize=bleu_tokenize,
            bertscore_model=bertscore_model,
            with_bertscore=with_bertscore,
            progress=progress,
        )
        metrics["seconds"] = seconds
        # Turns reused from an earlier, interrupted run: their time is not in ``seconds``.
        metrics["n_from_cache"] = n_cached
        # Every LM call this context made now (not those of turns resumed from the cache).
        metrics["lm_usage"] = usage.to_dict()
        result.contexts[ctx] = ContextResult(ctx, records, metrics, strat, seconds)
        if on_context_done:
            on_context_done(result)
    return result


# ---------------------------------------------------------------------------- supporter specs
@dataclass
class SupporterSpec:
    """A parsed ``--supporter`` value and the program it names.

    ``lm_spec`` is set when the spec brings its own LM (``finetuned:DIR``); it then overrides
    ``--lm``.
    """

    spec: str
    program: dspy.Module
    lm_spec: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # Dialogue ids the supporter was fine-tuned or compiled on, per its metadata, and where
    # that list came from (see :func:`check_unseen`).
    seen_ids: frozenset[str] = frozenset()
    seen_source: str = ""

    def lm_for(self, lm: Any) -> Any:
        """The :class:`~csc.lm.LMSpec` this supporter runs on, given ``--lm`` (a spec, a model
        string or None): its own LM with ``lm``'s sampling settings, or ``lm`` itself."""
        from csc.lm import LMSpec

        base = lm if isinstance(lm, LMSpec) else LMSpec(model=lm) if lm else LMSpec()
        if not self.lm_spec:
            return base
        return LMSpec(model=self.lm_spec, temperature=base.temperature, max_tokens=base.max_tokens)


def supporter_from_spec(
    spec: str, *, framework: Framework | str = "csc", language: str = "en"
) -> SupporterSpec:
    """Build the supporter a spec names.

    * ``zero-shot`` — :class:`~csc.programs.supporter.Supporter` with its default prompts;
    * ``direct`` — the :class:`~csc.programs.supporter.DirectSupporter` ablation;
    * ``optimized:PATH.json`` — a program saved by ``csc optimize`` (a compiled strategy
      predictor gets a zero-shot responder); framework and language come from its sidecar;
    * ``finetuned:DIR`` — the zero-shot supporter running on ``build_lm("finetuned:DIR")``, with
      the prompt variant it was trained on (``prompt`` in ``DIR/csc_finetune.json``).
    """
    from csc.optimizers.store import as_supporter, load_program
    from csc.programs.supporter import DirectSupporter, Supporter

    head, _, arg = spec.partition(":")
    if spec == "zero-shot":
        return SupporterSpec(spec, Supporter(framework, language))  # type: ignore[arg-type]
    if spec == "direct":
        return SupporterSpec(spec, DirectSupporter(framework, language))  # type: ignore[arg-type]
    if head == "optimized" and arg:
        program, meta = load_program(arg)
        # Train examples are compiled into demos; dev examples choose among candidates.
        seen = [*meta.get("train_dialogue_ids", []), *meta.get("dev_dialogue_ids", [])]
        return SupporterSpec(
            spec,
            as_supporter(program),
            metadata=meta,
            seen_ids=frozenset(seen),
            seen_source=f"{arg} (train and dev dialogues of `csc optimize`)",
        )
    if head == "finetuned" and arg:
        seen, source = finetuned_training_ids(arg)
        return SupporterSpec(
            spec,
            Supporter(framework, language, finetuned_prompt_variant(arg)),  # type: ignore[arg-type]
            lm_spec=spec,
            seen_ids=frozenset(seen),
            seen_source=source,
        )
    raise ValueError(
        f"unknown supporter {spec!r}: use zero-shot, direct, optimized:PATH.json "
        "(from `csc optimize`) or finetuned:DIR (from `csc finetune`)"
    )


def finetuned_prompt_variant(run_dir: str | Path) -> PromptVariant:
    """The supporter prompt variant a ``csc finetune run`` folder was trained on.

    Read from ``csc_finetune.json``; runs from before the variant was recorded, and folders
    without readable metadata, used the full prompt.
    """
    from csc.signatures.supporter import PROMPT_VARIANTS

    prompt = read_json_object(Path(run_dir) / "csc_finetune.json").get("prompt")
    return prompt if prompt in PROMPT_VARIANTS else "full"  # type: ignore[return-value]


def finetuned_training_ids(run_dir: str | Path) -> tuple[list[str], str]:
    """The dialogue ids a ``csc finetune run`` folder was trained on, and where they were read.

    From ``csc_finetune.json`` (``data.train_dialogue_ids``), else from the export folder it
    names (``splits.json`` or ``export.json``). Empty when none of these can be read.
    """
    from csc.eval.splits import SPLITS_FILE, DatasetSplits, SplitsError

    meta_path = Path(run_dir) / "csc_finetune.json"
    meta = read_json_object(meta_path)
    if not meta:
        return [], ""
    data = meta.get("data") or {}
    if isinstance(data.get("train_dialogue_ids"), list):
        return list(data["train_dialogue_ids"]), f"{meta_path} (train split of the fine-tuning)"
    export_dir = Path(str(data.get("dir") or ""))
    if data.get("dir") and (export_dir / SPLITS_FILE).is_file():
        try:
            splits = DatasetSplits.read(export_dir / SPLITS_FILE)
            return splits.parts["train"], f"{export_dir / SPLITS_FILE} (train split)"
        except SplitsError:
            pass
    export = read_json_object(export_dir / "export.json")
    try:
        ids = export["split_dialogue_ids"].get("train") or []
    except (KeyError, AttributeError):
        return [], ""
    return list(ids), f"{export_dir / 'export.json'} (train split)"


def spec_file(spec: str) -> Path | None:
    """The file that holds a supporter spec's program: ``P.json`` of ``optimized:P.json``,
    ``DIR/csc_finetune.json`` of ``finetuned:DIR``; None for the built-in supporters."""
    head, _, arg = spec.partition(":")
    file = {"optimized": Path(arg), "finetuned": Path(arg) / "csc_finetune.json"}.get(head)
    return file if arg and file is not None and file.is_file() else None


class SeenDialoguesError(ValueError):
    """The evaluation data holds dialogues the supporter was trained or compiled on."""


def check_unseen(supporter: SupporterSpec, dialogues: Sequence[Dialogue]) -> None:
    """Refuse to score a fine-tuned or optimized supporter on dialogues it has seen.

    Raises :class:`SeenDialoguesError` naming how many and which; the CLI's ``--allow-seen``
    skips this check.
    """
    if not supporter.seen_ids:
        return
    overlap = [d.id for d in dialogues if d.id in supporter.seen_ids]
    if overlap:
        raise SeenDialoguesError(
            f"{len(overlap)} of the {len(dialogues)} evaluation dialogues (e.g. "
            f"{', '.join(map(repr, overlap[:3]))}) are ones {supporter.spec} was trained or "
            f"compiled on, per {supporter.seen_source}; evaluate on held-out dialogues "
            "(--split test --splits SPLITS.json), or pass --allow-seen if these ids name "
            "different dialogues"
        )
