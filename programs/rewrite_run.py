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
redoes the rest (earlier failures included); nothing is written twice. The file-writing helpers
are the RoleCS runner's (:mod:`csc.programs.synthesis`).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from csc.data.jsonl import JsonlWriter, drop_torn_line
from csc.dialogue import Dialogue
from csc.framework import Framework, Language
from csc.programs.rewrite import RewriteFailure, RewritePipeline
from csc.programs.rule_filter import RULES, RuleFilterConfig
from csc.programs.synthesis import (
    RunConfigError,
    _digest,
    _read_lines,
)

__all__ = ["RewriteConfig", "RewriteRun", "RunConfigError"]

KEPT_FILE = "dialogues.jsonl"
REJECTED_FILE = "rejected.jsonl"
DROPPED_FILE = "dropped.jsonl"
FAILURES_FILE = "failures.jsonl"
RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"
DIANJIN_FILE = "dialogues.dianjin.json"
CHUNK = 64  # dialogues read ahead per batch: memory stays flat on large files


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
        return _digest(self.model_dump(mode="json"))[:12]

    @staticmethod
    def framework_digest_of(framework: Framework) -> str:
        """The content digest of a framework (so an edited YAML is a different run)."""
        return _digest(framework.to_dict())


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

    # ------------------------------------------------------------------ folder
    def prepare(self) -> None:
        """Create the folder and write ``run.json``, or check it belongs to this configuration."""
        self.out.mkdir(parents=True, exist_ok=True)
        run_file = self.out / RUN_FILE
        if run_file.exists():
            try:
                existing = json.loads(run_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                raise RunConfigError(
                    f"{run_file} is not valid JSON; restore it or use a new --out folder"
                ) from None
            if existing.get("config_hash") != self.key:
                old = existing.get("config", {})
                new = self.config.model_dump(mode="json")
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise RunConfigError(
                    f"{self.out} holds run {existing.get('config_hash')} made with a different "
                    f"configuration (differs in: {', '.join(diff) or 'unknown'}); use another "
                    "--out folder, or delete this one to start over"
                )
            return
        if any(self.out.glob("*.jsonl")):
            raise RunConfigError(
                f"{self.out} already holds .jsonl files but no {RUN_FILE}; use an empty --out folder"
            )
        run_file.write_text(
            json.dumps(
                {
                    "config_hash": self.key,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "config": self.config.model_dump(mode="json"),
                },
                ensure_ascii=False,
                indent=2,
            ),
            encoding="utf-8",
        )

    def item_key(self, index: int, dialogue_id: str) -> str:
        """The key of the ``index``-th input dialogue (0-based)."""
        return _digest([self.key, index, dialogue_id])[:16]

    def done_keys(self) -> set[str]:
        """Keys of dialogues already finished (kept, rejected or dropped), after repairing torn
        last lines left by a kill."""
        keys: set[str] = set()
        for name in (KEPT_FILE, REJECTED_FILE, DROPPED_FILE):
            path = self.out / name
            drop_torn_line(path)
            for obj in _read_lines(path):
                key = obj.get("key") or (obj.get("metadata") or {}).get("key")
                if key:
                    keys.add(key)
        return keys

    # ------------------------------------------------------------------ running
    def run(
        self,
        dialogues: Iterable[Dialogue],
        *,
        total: int | None = None,
        concurrency: int = 1,
        progress: bool = True,
        on_update: Callable[[Counter[str]], None] | None = None,
    ) -> dict[str, Any]:
        """Rewrite every dialogue of ``dialogues`` not yet done (streamed in chunks); returns the
        summary (also written to ``summary.json``). ``total`` sizes the progress bar."""
        import dspy
        from dspy.utils.parallelizer import ParallelExecutor

        start = time.perf_counter()
        self.prepare()
        done = self.done_keys()
        counts: Counter[str] = Counter()
        lock = threading.Lock()
        written: set[str] = set()
        seen_keys: list[str] = []

        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, desc="dialogues", unit="dlg", dynamic_ncols=True)

        kept = JsonlWriter(self.out / KEPT_FILE).open()
        rejected = JsonlWriter(self.out / REJECTED_FILE).open()
        dropped = JsonlWriter(self.out / DROPPED_FILE).open()
        failures = JsonlWriter(self.out / FAILURES_FILE).open()

        def process(item: _Item) -> str:
            record: dict[str, Any] | None = None
            dialogue = None
            try:
                pred = self.pipeline(item.dialogue, key=item.key, seed=self.config.seed)
                outcome = pred.outcome
                if outcome == "dropped":
                    record = {
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
                else:
                    dialogue = pred.dialogue
                    dialogue.metadata.update(key=item.key, index=item.index, run=self.key)
            except RewriteFailure as exc:
                outcome = "failed"
                record = self._failure(item, exc.role, exc.cause, exc.raw_output, exc.usage)
            except Exception as exc:  # a bug or an unexpected library error: record, go on
                outcome = "failed"
                record = self._failure(item, "runner", exc, None, None)
            with lock:
                if item.key in written:
                    return "duplicate"
                written.add(item.key)
                if outcome == "kept":
                    kept.write(dialogue)
                elif outcome == "rejected":
                    rejected.write(dialogue)
                elif outcome == "dropped":
                    dropped.write(record)
                else:
                    failures.write(record)
                counts[outcome] += 1
                if bar is not None:
                    bar.set_postfix(
                        kept=counts["kept"],
                        rejected=counts["rejected"],
                        dropped=counts["dropped"],
                        failed=counts["failed"],
                        refresh=False,
                    )
                    bar.update(1)
                if on_update is not None:
                    on_update(counts)
            return outcome

        try:
            executor_args = dict(
                num_threads=max(1, concurrency),
                disable_progress_bar=True,
                timeout=0,  # no straggler re-submission: a slow local LM is not a straggler
            )
            for chunk in _chunks(self._items(dialogues, seen_keys), CHUNK):
                todo = [item for item in chunk if item.key not in done]
                counts["already_done"] += len(chunk) - len(todo)
                if bar is not None and len(chunk) > len(todo):
                    bar.update(len(chunk) - len(todo))
                if not todo:
                    continue
                executor = ParallelExecutor(max_errors=len(todo) + 1, **executor_args)
                with dspy.context():
                    executor.execute(process, todo)
        finally:
            if bar is not None:
                bar.close()
            kept.close()
            rejected.close()
            dropped.close()
            failures.close()

        wall = time.perf_counter() - start
        summary = self.summary(seen_keys, counts, wall, concurrency)
        (self.out / SUMMARY_FILE).write_text(
            json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8"
        )
        return summary

    def _items(self, dialogues: Iterable[Dialogue], seen: list[str]) -> Iterator[_Item]:
        for index, dialogue in enumerate(dialogues):
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
            "role": role,
            "error_type": type(cause).__name__,
            "error": str(cause)[:4000],
            "raw_output": raw_output,
            "usage": dict(usage or {}),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    # ------------------------------------------------------------------ summary
    def summary(
        self, keys: list[str], counts: Counter[str], wall: float, concurrency: int
    ) -> dict[str, Any]:
        """Per-stage counts over the input dialogues ``keys`` (from the files, so a resumed run
        reports the whole run), utilization before/after, tokens per role."""
        wanted = set(keys)
        kept = [o for o in _read_lines(self.out / KEPT_FILE) if o["metadata"].get("key") in wanted]
        rejected = [
            o for o in _read_lines(self.out / REJECTED_FILE) if o["metadata"].get("key") in wanted
        ]
        dropped = [o for o in _read_lines(self.out / DROPPED_FILE) if o.get("key") in wanted]
        failure_records = list(_read_lines(self.out / FAILURES_FILE))
        finished = {o["metadata"]["key"] for o in kept + rejected} | {o["key"] for o in dropped}
        failed_keys = wanted - finished
        by_rule = Counter(o["rule"] for o in dropped if o.get("stage") == "rules")
        by_prefilter = sum(1 for o in dropped if o.get("stage") == "prefilter")

        tokens: dict[str, dict[str, int]] = {}

        def add(usage: Mapping[str, Any] | None) -> None:
            for role, u in (usage or {}).items():
                entry = tokens.setdefault(
                    role, {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0}
                )
                for k in entry:
                    entry[k] += int(u.get(k, 0) or 0)

        for o in kept + rejected:
            add(o["metadata"].get("usage"))
        for o in dropped:
            add(o.get("usage"))
        for o in failure_records:  # every attempt's tokens were spent, retried or not
            if o.get("key") in wanted:
                add(o.get("usage"))

        redaction: Counter[str] = Counter()
        cleaning: Counter[str] = Counter()
        for o in kept + rejected:
            redaction.update(o["metadata"].get("redaction") or {})
            cleaning.update(o["metadata"].get("cleaning") or {})
        for o in dropped:
            redaction.update(o.get("redaction") or {})
            cleaning.update(o.get("cleaning") or {})

        n_in = len(wanted)
        result: dict[str, Any] = {
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
                "in": n_in,
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
            "this_run": {
                "processed": sum(counts[k] for k in ("kept", "rejected", "dropped", "failed")),
                "already_done": counts["already_done"],
                "kept": counts["kept"],
                "rejected": counts["rejected"],
                "dropped": counts["dropped"],
                "failed": counts["failed"],
                "wall_seconds": round(wall, 2),
            },
            "files": {
                "kept": KEPT_FILE,
                "rejected": REJECTED_FILE,
                "dropped": DROPPED_FILE,
                "failures": FAILURES_FILE,
            },
        }
        return result


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


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def read_run(out_dir: str | Path, which: str = "kept") -> list[Dialogue]:
    """The dialogues of a rewrite run folder: ``kept``, ``rejected`` or ``all``."""
    out = Path(out_dir)
    names = {"kept": [KEPT_FILE], "rejected": [REJECTED_FILE], "all": [KEPT_FILE, REJECTED_FILE]}
    return [Dialogue.model_validate(o) for n in names[which] for o in _read_lines(out / n)]
