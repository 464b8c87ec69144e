"""The resumable ``csc rewrite`` runner: raw dialogues from a file through :class:`RewritePipeline`,
concurrent, streamed to disk, with a summary.

Run folder layout (``DIR``)::

    run.json                the run's configuration and its hash (the run key)
    dialogues.jsonl         kept dialogues (passed every filter), strategy-labelled
    rejected.jsonl          rewritten dialogues the post-filter rejected, with its reasons
    dropped.jsonl           dialogues dropped by a rule or the LLM pre-filter: id, stage, rule or
                            reason (no text)
    failures.jsonl          dialogues whose LM calls failed or could not be parsed (error + raw
                            LM output; inputs were redacted before the call)
    summary.json            counts per stage, utilization before/after, tokens per role
    dialogues.dianjin.json  kept dialogues in the released DianJin format (``--to dianjin``)

Every input dialogue has a key: a hash of the run key, its position in the file and its id.
A re-run skips keys already in ``dialogues.jsonl``, ``rejected.jsonl`` or ``dropped.jsonl`` and
redoes the rest (earlier failures included); nothing is written twice. The runner and the folder
bookkeeping are the ones every run shares (:mod:`csc.programs.run_folder`).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from csc.dialogue import Dialogue
from csc.framework import Framework, Language
from csc.programs.rewrite import RewriteFailure, RewritePipeline
from csc.programs.rule_filter import RULES, RuleFilterConfig
from csc.programs.run_folder import (
    DIANJIN_FILE,
    FAILURES_FILE,
    KEPT_FILE,
    REJECTED_FILE,
    RUN_FILE,
    SUMMARY_FILE,
    RunConfigError,
    RunFolder,
    digest,
    failure_fields,
    in_shard,
    merge_folders,
    now,
    previous_invocations,
    progress_bar,
    read_records,
    read_run_dialogues,
    result_logs,
    run_concurrently,
    shard_label,
    write_json,
)
from csc.usage import add_role_usage

__all__ = [
    "DIANJIN_FILE",
    "RewriteConfig",
    "RewriteRun",
    "RunConfigError",
    "merge_rewrite_runs",
    "read_run",
]

DROPPED_FILE = "dropped.jsonl"
_OUTCOMES = ("kept", "rejected", "dropped", "failed")  # what happens to an input dialogue
_FILES = dict(zip(_OUTCOMES, (KEPT_FILE, REJECTED_FILE, DROPPED_FILE, FAILURES_FILE)))


class RewriteConfig(BaseModel):
    """Everything that decides what a rewrite run produces; its hash is the run key.

    The input file enters by path and ``--limit`` is not part of it: a larger limit extends the
    same run. Concurrency does not change results.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str
    framework: str
    framework_digest: str
    language: Language
    rules: RuleFilterConfig
    redact: bool
    prefilter: bool
    judge: bool
    utilization: bool
    min_utterances: int
    max_utterances: int
    temperature: float | None
    seed: int
    lms: dict[str, str]
    labeler: str | None = None
    token_budgets: dict[str, int] = {}

    def digest(self) -> str:
        """The run key: a short hash of this configuration."""
        return digest(self.model_dump(mode="json"))[:12]

    @staticmethod
    def framework_digest_of(framework: Framework) -> str:
        """The content digest of a framework (so an edited YAML is a different run)."""
        return digest(framework.to_dict())


@dataclass
class _Item:
    index: int
    dialogue: Dialogue
    key: str


class RewriteRun:
    """A resumable rewrite run writing into ``out_dir``.

    Args:
        out_dir: the run folder (created; must be empty or hold the same configuration).
        config: the run configuration.
        pipeline: the :class:`RewritePipeline` built from it (with its LMs).
        lm_names: printable model name per role, for the summary (no keys).
    """

    def __init__(
        self,
        out_dir: str | Path,
        config: RewriteConfig,
        pipeline: RewritePipeline,
        lm_names: Mapping[str, str] | None = None,
    ) -> None:
        self.out = Path(out_dir)
        self.config = config
        self.key = config.digest()
        self.pipeline = pipeline
        self.lm_names = dict(lm_names or config.lms)

    def folder(self, shard: tuple[int, int] | None = None) -> RunFolder:
        """The run folder (``run.json`` bookkeeping) of this run, as ``shard``."""
        return RunFolder(self.out, self.key, self.config.model_dump(mode="json"), shard)

    def item_key(self, index: int, dialogue_id: str) -> str:
        """The key of the ``index``-th input dialogue (0-based)."""
        return digest([self.key, index, dialogue_id])[:16]

    def done_keys(self) -> set[str]:
        """Keys of dialogues already finished (kept, rejected or dropped), after repairing torn
        last lines left by a kill."""
        return self.folder().done_keys((KEPT_FILE, REJECTED_FILE, DROPPED_FILE), record_key)

    # ------------------------------------------------------------------ running
    def process(self, item: _Item) -> tuple[str, dict[str, Any] | Dialogue]:
        """One input dialogue through the pipeline: ``(outcome, what to write)``; never raises
        for an LM or parsing failure."""
        try:
            pred = self.pipeline(item.dialogue, key=item.key, seed=self.config.seed)
        except RewriteFailure as exc:
            return "failed", self._failure(item, exc.role, exc.cause, exc.raw_output, exc.usage)
        except Exception as exc:  # a bug or an unexpected library error: record, go on
            return "failed", self._failure(item, "runner", exc, None, None)
        if pred.outcome != "dropped":
            dialogue = pred.dialogue
            dialogue.metadata.update(key=item.key, index=item.index, run=self.key)
            return pred.outcome, dialogue
        return "dropped", {
            "key": item.key,
            "id": item.dialogue.id,
            "index": item.index,
            "stage": pred.stage,
            "rule" if pred.stage == "rules" else "reason": pred.reason,
            **({"prefilter": pred.prefilter} if pred.stage == "prefilter" else {}),
            "cleaning": pred.cleaning,
            "redaction": pred.redaction,
            "usage": pred.usage,
        }

    def run(
        self,
        dialogues: Iterable[Dialogue],
        *,
        total: int | None = None,
        concurrency: int = 1,
        progress: bool = True,
        shard: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        """Rewrite every dialogue of ``dialogues`` not yet done (streamed), or only those of
        ``shard`` = (I, N) (every N-th input record from I); returns the summary (also written
        to ``summary.json``). ``total`` sizes the progress bar."""
        import dspy

        start = time.perf_counter()
        folder = self.folder(shard)
        folder.prepare()
        done = self.done_keys()
        counts: Counter[str] = Counter()
        seen_keys: list[str] = []
        bar = progress_bar(progress, total)

        def todo() -> Iterator[_Item]:
            for item in self._items(dialogues, seen_keys, shard):
                if item.key in done:
                    counts["already_done"] += 1
                    bar.update(1)
                else:
                    yield item

        def write(item: _Item, result: Any) -> None:
            if isinstance(result, BaseException):  # only a bug in process() gets here
                result = ("failed", self._failure(item, "runner", result, None, None))
            outcome, record = result
            if item.key in done:
                return  # never write an item twice
            done.add(item.key)
            files[outcome].write(record)
            counts[outcome] += 1
            bar.set_postfix({k: counts[k] for k in _OUTCOMES}, refresh=False)

        # trace=None: DSPy's optimizer trace would keep the last 10,000 calls' inputs.
        with result_logs(self.out, _FILES, bar) as files, dspy.context(trace=None):
            run_concurrently(todo(), self.process, write, concurrency=concurrency, bar=bar)

        wall = time.perf_counter() - start
        summary = self.summary(seen_keys, counts, wall, concurrency, shard)
        write_json(self.out / SUMMARY_FILE, summary)
        return summary

    def _items(
        self, dialogues: Iterable[Dialogue], seen: list[str], shard: tuple[int, int] | None
    ) -> Iterator[_Item]:
        for index, dialogue in enumerate(dialogues):
            if not in_shard(index, shard):
                continue
            key = self.item_key(index, dialogue.id)
            seen.append(key)
            yield _Item(index, dialogue, key)

    def _failure(
        self,
        item: _Item,
        role: str,
        cause: BaseException,
        raw_output: str | None,
        usage: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        return {
            "key": item.key,
            "id": item.dialogue.id,
            "index": item.index,
            "run": self.key,
            **failure_fields(role, cause, raw_output),
            "usage": dict(usage or {}),
        }

    # ------------------------------------------------------------------ summary
    def summary(
        self,
        keys: list[str],
        counts: Counter[str],
        wall: float,
        concurrency: int,
        shard: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        """Per-stage counts over the input dialogues ``keys`` (from the files, so a resumed run
        reports the whole run), utilization before/after, tokens per role."""
        wanted = set(keys)
        kept = [o for o in read_records(self.out / KEPT_FILE) if o["metadata"].get("key") in wanted]
        rejected = [
            o for o in read_records(self.out / REJECTED_FILE) if o["metadata"].get("key") in wanted
        ]
        dropped = [o for o in read_records(self.out / DROPPED_FILE) if o.get("key") in wanted]
        finished = {o["metadata"]["key"] for o in kept + rejected} | {o["key"] for o in dropped}
        failed_keys = wanted - finished
        by_rule = Counter(o["rule"] for o in dropped if o.get("stage") == "rules")
        by_prefilter = sum(1 for o in dropped if o.get("stage") == "prefilter")
        # What the pipeline recorded per input: a dialogue's metadata or a dropped record.
        records = [o["metadata"] for o in kept + rejected] + dropped
        failures = [o for o in read_records(self.out / FAILURES_FILE) if o.get("key") in wanted]
        tokens: dict[str, dict[str, int]] = {}
        for o in records + failures:  # every attempt's tokens were spent, retried or not
            for role, u in (o.get("usage") or {}).items():
                add_role_usage(tokens, role, [u], calls=int(u.get("calls") or 0))
        redaction: Counter[str] = Counter()
        cleaning: Counter[str] = Counter()
        for o in records:
            redaction.update(o.get("redaction") or {})
            cleaning.update(o.get("cleaning") or {})

        this_run = {
            "shard": shard_label(shard),
            "processed": sum(counts[k] for k in _OUTCOMES),
            "already_done": counts["already_done"],
            **{k: counts[k] for k in _OUTCOMES},
            "wall_seconds": round(wall, 2),
            "finished_at": now(),
        }
        return {
            "config_hash": self.key,
            "data": self.config.data,
            "framework": self.config.framework,
            "language": self.config.language,
            "seed": self.config.seed,
            "temperature": self.config.temperature,
            "concurrency": concurrency,
            "lms": {r: self.lm_names.get(r, "") for r in self.config.lms},
            "labeler": self.config.labeler or "zero-shot",
            "counts": {
                "in": len(wanted),
                "dropped": len(dropped),
                "dropped_by_rule": {r: by_rule.get(r, 0) for r in RULES},
                "dropped_by_prefilter": by_prefilter,
                "rewritten": len(kept) + len(rejected),
                "rejected": len(rejected),
                "kept": len(kept),
                "failed": len(failed_keys),
            },
            "accounting": "in = dropped + rejected + kept + failed",
            "rejected_by": dict(
                Counter(
                    p.split(":")[0]
                    for o in rejected
                    for p in o["metadata"].get("postfilter", {}).get("problems", [])
                )
            ),
            "utilization": _utilization(kept, rejected),
            "redaction": dict(sorted(redaction.items())) if self.config.redact else "off",
            "cleaning": dict(cleaning),
            "tokens": tokens,
            "shard": shard_label(shard),
            "this_run": this_run,
            # Every invocation of this folder (and, after a merge, of every shard).
            "invocations": [*previous_invocations(self.out), this_run],
            "files": {("failures" if k == "failed" else k): f for k, f in _FILES.items()},
        }


def _utilization(kept: list[dict], rejected: list[dict]) -> dict[str, Any]:
    """Shares of supporter turns using a defined strategy (not the fallback)."""

    def share(records: list[dict], part: str) -> dict[str, Any] | None:
        turns = using = 0
        for o in records:
            u = (o["metadata"].get("utilization") or {}).get(part)
            if u:
                turns += u["turns"]
                using += u.get("using", u.get("agree", 0))
        return {"turns": turns, "share": using / turns if turns else None} if turns else None

    return {
        "before_all_rewritten": share(kept + rejected, "before"),
        "before_kept": share(kept, "before"),
        "after_kept": share(kept, "after"),
        "rewriter_labels_kept": share(kept, "rewriter"),
        "labeler_agrees_with_rewriter": share(kept, "adherence"),
    }


def record_key(record: Mapping[str, Any]) -> str | None:
    """The item key of a result record: a dialogue's ``metadata.key`` or a record's ``key``."""
    return record.get("key") or (record.get("metadata") or {}).get("key")


def merge_rewrite_runs(out_dir: str | Path, sources: Sequence[str | Path]) -> dict[str, Any]:
    """Combine rewrite run folders of one configuration (the shards ``0/N`` .. ``N-1/N`` of
    one input file) into ``out_dir``, an unsharded run folder that ``csc rewrite`` resumes.

    Every input record appears once; ``summary.json`` counts the combined folder and lists
    every invocation of every source.
    """
    files = (KEPT_FILE, REJECTED_FILE, DROPPED_FILE)
    parts = merge_folders(out_dir, sources, files, FAILURES_FILE, record_key, "rewrite run")
    out = Path(out_dir)
    config = RewriteConfig.model_validate(json.loads((out / RUN_FILE).read_text("utf-8"))["config"])
    run = RewriteRun(out, config, pipeline=None, lm_names=parts["base"].get("lms"))  # type: ignore[arg-type]
    keys = [
        k for name in (*files, FAILURES_FILE) for k in map(record_key, read_records(out / name))
    ]
    wall = sum(float(i.get("wall_seconds") or 0) for i in parts["invocations"])
    summary = run.summary(
        list(dict.fromkeys(keys)), Counter(), wall, parts["base"].get("concurrency", 1)
    )
    summary.update(merged=parts["merged"], invocations=parts["invocations"])
    write_json(out / SUMMARY_FILE, summary)
    return summary


read_run = read_run_dialogues
