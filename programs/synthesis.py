"""The resumable RoleCS runner: a topic x profile grid, dialogues run concurrently, each finished
dialogue streamed to disk, failures recorded, and a summary at the end.

Run folder layout (``DIR``)::

    run.json           the run's configuration and its hash (the run key)
    dialogues.jsonl    kept dialogues (passed the judge, or all with the filter off)
    rejected.jsonl     dialogues the judge failed, with its scores and reasons
    failures.jsonl     dialogues whose LM calls failed or could not be parsed (error + raw output)
    summary.json       counts, tokens per role, wall time, LMs, seed, configuration hash
    stats.json         dataset statistics of the kept dialogues (csc.eval.stats)
    stats_all.json     the same over every finished dialogue, kept or rejected

Every dialogue has a key: a hash of the run configuration and its grid item (topic, profile,
replica). Re-running the same command skips keys already in ``dialogues.jsonl`` or
``rejected.jsonl`` and redoes the rest, including earlier failures; nothing is duplicated.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from csc.data.jsonl import JsonlWriter, drop_torn_line
from csc.data.profiles import CustomerProfile
from csc.data.topics import Topic
from csc.dialogue import Dialogue
from csc.framework import Framework, Language
from csc.lm import AGENT_ROLES, redact_secrets
from csc.programs.rolecs import DialogueFailure, RoleCS
from csc.usage import Usage, labelled_usage_of

KEPT_FILE = "dialogues.jsonl"
REJECTED_FILE = "rejected.jsonl"
FAILURES_FILE = "failures.jsonl"
RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"
STATS_FILE = "stats.json"
STATS_ALL_FILE = "stats_all.json"
DIANJIN_FILE = "dialogues.dianjin.json"


class RunConfigError(ValueError):
    """The output folder belongs to a run with a different configuration, or is unreadable."""


class SynthesisConfig(BaseModel):
    """Everything that decides which dialogues a run produces; its hash is the run key.

    The number of dialogues and the concurrency are not part of it: a larger ``--dialogues``
    extends the same run, and concurrency does not change results.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    framework: str
    framework_digest: str
    language: Language
    topics: list[Topic]
    profiles_digest: str
    profiles_count: int
    seed: int
    max_utterances: int
    temperature: float | None
    filter: bool
    lms: dict[str, str]
    token_budgets: dict[str, int] = {}
    min_utterances: int = 0
    # SHA-256 of the compiled supporter agents (`csc synthesize --program`); None: default prompts.
    program_sha256: str | None = None

    @classmethod
    def build(
        cls,
        *,
        framework: Framework,
        language: Language,
        topics: Sequence[Topic],
        profiles: Sequence[CustomerProfile],
        seed: int,
        max_utterances: int,
        temperature: float | None,
        filter: bool,
        lms: Mapping[str, str],
        token_budgets: Mapping[str, int] | None = None,
        min_utterances: int = 0,
        program_sha256: str | None = None,
    ) -> SynthesisConfig:
        """A configuration from its parts; the framework and profiles enter by content digest."""
        fw_digest = _digest(framework.to_dict())
        prof_digest = _digest([p.model_dump(exclude_none=True) for p in profiles])
        roles = {r: lms.get(r, lms.get("default", "")) for r in AGENT_ROLES}
        if not filter:
            roles.pop("judge")
        return cls(
            framework=framework.name,
            framework_digest=fw_digest,
            language=language,
            topics=list(topics),
            profiles_digest=prof_digest,
            profiles_count=len(profiles),
            seed=seed,
            max_utterances=max_utterances,
            temperature=temperature,
            filter=filter,
            lms=roles,
            token_budgets=dict(token_budgets or {}),
            min_utterances=min_utterances,
            program_sha256=program_sha256,
        )

    def digest(self) -> str:
        """The run key: a short hash of this configuration."""
        data = self.model_dump(mode="json")
        if data["program_sha256"] is None:
            del data["program_sha256"]  # runs with the default prompts keep their earlier keys
        return _digest(data)[:12]


def _digest(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class GridItem:
    """One dialogue to synthesize: a topic, a profile, a replica number and its key."""

    topic: Topic
    profile: CustomerProfile
    replica: int
    key: str


def plan_grid(
    topics: Sequence[Topic],
    profiles: Sequence[CustomerProfile],
    n: int | None,
    seed: int,
    run_key: str,
) -> list[GridItem]:
    """The first ``n`` items of the seeded shuffle of topic x profile (default: the whole grid).

    The order depends only on the seed, so a larger ``n`` extends a smaller one. Beyond the grid
    size, the grid is repeated with a new replica number (a different key, hence different
    sampling).
    """
    grid = [(t, p) for t in topics for p in profiles]
    if not grid:
        raise ValueError("the topic x profile grid is empty: give at least one topic and profile")
    random.Random(seed).shuffle(grid)
    n = len(grid) if n is None else n
    items = []
    for i in range(n):
        topic, profile = grid[i % len(grid)]
        replica = i // len(grid)
        key = _digest([run_key, topic.code, topic.name, profile.id, replica])[:16]
        items.append(GridItem(topic, profile, replica, key))
    return items


class ShardError(ValueError):
    """A ``--shard`` value that is not ``I/N`` with ``0 <= I < N``."""


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"1/3"`` -> ``(1, 3)``; None stays None; anything else is a :class:`ShardError`."""
    if text is None:
        return None
    index, sep, count = str(text).partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or n < 1 or not 0 <= i < n:
        raise ShardError(
            f"--shard must be I/N with 0 <= I < N (e.g. 0/4 for the first of four), got {text!r}"
        )
    return i, n


def shard_label(shard: tuple[int, int] | None) -> str | None:
    """``(1, 3)`` -> ``"1/3"``."""
    return None if shard is None else f"{shard[0]}/{shard[1]}"


def select_shard(items: Sequence[GridItem], shard: tuple[int, int] | None) -> list[GridItem]:
    """The grid items of one shard: every N-th item of the seeded grid, starting at I.

    Round-robin over the planned order keeps shards equal in size and stable when ``n`` grows
    (a larger run extends every shard), and the items' keys do not depend on the shard, so the
    union of shards 0..N-1 is exactly the unsharded run.
    """
    if shard is None:
        return list(items)
    i, n = shard
    return [item for pos, item in enumerate(items) if pos % n == i]


# ----------------------------------------------------------------------------- files


def _read_lines(path: Path) -> Iterator[dict[str, Any]]:
    """JSON objects of a JSONL file; a line that cannot be parsed is an error naming it."""
    if not path.exists():
        return
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise RunConfigError(
                    f"{path}:{lineno}: not valid JSON ({exc.msg}); the file was edited or "
                    "corrupted: remove that line and re-run to redo its dialogue"
                ) from None


def read_run_dialogues(out_dir: str | Path, which: str = "kept") -> list[Dialogue]:
    """The dialogues of a run folder: ``kept``, ``rejected`` or ``all``."""
    out = Path(out_dir)
    names = {"kept": [KEPT_FILE], "rejected": [REJECTED_FILE], "all": [KEPT_FILE, REJECTED_FILE]}
    result = []
    for name in names[which]:
        result.extend(Dialogue.model_validate(obj) for obj in _read_lines(out / name))
    return result


# ----------------------------------------------------------------------------- the run


@dataclass
class RunCounts:
    """What one invocation of a run did."""

    requested: int = 0
    already_done: int = 0
    kept: int = 0
    rejected: int = 0
    failed: int = 0
    tokens: dict[str, dict[str, int]] = field(default_factory=dict)

    def add_usage(self, usage: Mapping[str, Mapping[str, int]]) -> None:
        for role, u in usage.items():
            entry = self.tokens.setdefault(
                role, {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0}
            )
            for k in entry:
                entry[k] += int(u.get(k, 0))

    @property
    def total_tokens(self) -> int:
        return sum(u["prompt_tokens"] + u["completion_tokens"] for u in self.tokens.values())


class SynthesisRun:
    """A resumable RoleCS synthesis run writing into ``out_dir``.

    Args:
        out_dir: the run folder (created; must be empty or hold the same configuration).
        config: the run configuration (:meth:`SynthesisConfig.build`).
        framework: the strategy framework the configuration was built from.
        profiles: the profile pool (its digest must match ``config``).
        lms: LM per agent role (see :class:`~csc.programs.rolecs.RoleCS`).
        lm_names: printable model name per role, for the summary (no keys).
        program: compiled supporter agents to load into RoleCS (``csc optimize --program
            rolecs``); its SHA-256 must be ``config.program_sha256``.
    """

    def __init__(
        self,
        out_dir: str | Path,
        config: SynthesisConfig,
        framework: Framework,
        profiles: Sequence[CustomerProfile],
        lms: Mapping[str, Any] | None = None,
        lm_names: Mapping[str, str] | None = None,
        program: str | Path | None = None,
    ) -> None:
        self.out = Path(out_dir)
        self.config = config
        self.key = config.digest()
        self.profiles = list(profiles)
        self.framework = framework
        self.lms = dict(lms or {})
        self.lm_names = dict(lm_names or config.lms)
        self.program = RoleCS(
            framework,
            config.language,
            lms=self.lms,
            temperature=config.temperature,
            max_utterances=config.max_utterances,
            judge=config.filter,
            token_budgets=config.token_budgets,
            min_utterances=config.min_utterances,
        )
        self.program_path = program
        if program is not None:
            from csc.eval.splits import data_sha256

            if data_sha256(program) != config.program_sha256:
                raise RunConfigError(
                    f"{program}: its SHA-256 is not the program_sha256 of the configuration; "
                    "build the configuration with SynthesisConfig.build(program_sha256=...)"
                )
            self.program.load(str(program))
        elif config.program_sha256 is not None:
            raise RunConfigError("the configuration names a program; pass it as program=")

    # ------------------------------------------------------------------ folder
    def prepare(self, shard: tuple[int, int] | None = None) -> None:
        """Create the folder and write ``run.json``, or check it belongs to this configuration
        (and to the same shard: a shard folder resumes only as that shard)."""
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
            if existing.get("shard") != shard_label(shard):
                was = existing.get("shard") or "unsharded"
                raise RunConfigError(
                    f"{self.out} holds {'shard ' + was if existing.get('shard') else 'an unsharded run'}"
                    f", not {'shard ' + shard_label(shard) if shard else 'an unsharded run'}; "
                    f"re-run with {'--shard ' + was if existing.get('shard') else 'no --shard'} or "
                    "use another --out folder (combine shards with `csc synthesize merge`)"
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
                    "shard": shard_label(shard),
                    "config": self.config.model_dump(mode="json"),
                },
                ensure_ascii=False,
                indent=2,
            ),
            encoding="utf-8",
        )

    def done_keys(self) -> set[str]:
        """Keys of dialogues already written (kept or rejected), after repairing torn lines."""
        keys: set[str] = set()
        for name in (KEPT_FILE, REJECTED_FILE):
            path = self.out / name
            drop_torn_line(path)
            keys.update(obj["id"] for obj in _read_lines(path) if "id" in obj)
        return keys

    # ------------------------------------------------------------------ running
    def run(
        self,
        n: int | None = None,
        topics: Sequence[Topic] | None = None,
        *,
        concurrency: int = 1,
        progress: bool = True,
        on_update: Callable[[RunCounts], None] | None = None,
        shard: tuple[int, int] | None = None,
        keep_history: bool = True,
    ) -> dict[str, Any]:
        """Synthesize the first ``n`` grid items not yet done (only those of ``shard`` = (I, N)
        when given, see :func:`select_shard`); returns the summary (also written to
        ``summary.json``). ``keep_history=False`` runs without DSPy's call history (``csc
        synthesize`` does, for flat memory)."""
        import dspy

        start = time.perf_counter()
        cpu_start = time.process_time()
        self.prepare(shard)
        items = plan_grid(
            topics or self.config.topics, self.profiles, n, self.config.seed, self.key
        )
        planned = len(items)
        items = select_shard(items, shard)
        done = self.done_keys()
        todo = [item for item in items if item.key not in done]
        counts = RunCounts(requested=len(items), already_done=len(items) - len(todo))
        # The summary's usage comes from meters on the LM objects (csc.usage): per-dialogue
        # trackers would lose nothing here, but one source of truth keeps every command equal.
        lms = [*self.lms.values(), dspy.settings.lm]
        usage_before = labelled_usage_of(*lms)
        lock = threading.Lock()
        written: set[str] = set()

        bar = None
        if progress and todo:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc="dialogues", unit="dlg", dynamic_ncols=True)

        kept_writer = JsonlWriter(self.out / KEPT_FILE).open()
        rejected_writer = JsonlWriter(self.out / REJECTED_FILE).open()
        failures = JsonlWriter(self.out / FAILURES_FILE).open()

        utterances = [0]

        def on_turn(_turn: Any) -> None:
            with lock:
                utterances[0] += 1
                if bar is not None:
                    show_progress()

        def show_progress() -> None:
            bar.set_postfix(
                utterances=utterances[0],
                kept=counts.kept,
                rejected=counts.rejected,
                failed=counts.failed,
                tokens=counts.total_tokens,
                refresh=True,
            )

        def synthesize(item: GridItem) -> str:
            try:
                pred = self.program(
                    item.profile,
                    item.topic,
                    dialogue_id=item.key,
                    seed=self.config.seed,
                    on_turn=on_turn,
                )
                dialogue = pred.dialogue
                dialogue.metadata.update(
                    run=self.key,
                    topic_code=item.topic.code,
                    profile_id=item.profile.id,
                    replica=item.replica,
                )
                outcome = "kept" if (pred.passed is None or pred.passed) else "rejected"
                record = None
            except DialogueFailure as exc:
                outcome, dialogue = "failed", None
                record = self._failure_record(
                    item, exc.role, exc.cause, exc.raw_output, exc.partial
                )
            except Exception as exc:  # a bug or an unexpected library error: record, go on
                outcome, dialogue = "failed", None
                record = self._failure_record(item, "runner", exc, None, None)
            with lock:
                if item.key in written:  # never write a dialogue twice
                    return "duplicate"
                if dialogue is not None:
                    written.add(item.key)
                    (kept_writer if outcome == "kept" else rejected_writer).write(dialogue)
                    counts.add_usage(dialogue.metadata.get("usage", {}))
                else:
                    failures.write(record)
                    if record.get("usage"):
                        counts.add_usage(record["usage"])
                setattr(counts, outcome, getattr(counts, outcome) + 1)
                if bar is not None:
                    show_progress()
                    bar.update(1)
                if on_update is not None:
                    on_update(counts)
            return outcome

        try:
            if todo:
                from dspy.utils.parallelizer import ParallelExecutor

                # timeout=0 turns off straggler re-submission: a slow local dialogue is not a
                # straggler, and re-running it would waste the embedded engine's time.
                executor = ParallelExecutor(
                    num_threads=max(1, concurrency),
                    max_errors=len(todo) + 1,
                    disable_progress_bar=True,
                    timeout=0,
                )
                # keep_history=False: DSPy keeps up to 10,000 calls (prompts and answers) on the
                # LM, on every predictor and globally, so memory grows with the first ~600
                # dialogues; the usage meters (csc.usage) do not need it.
                with dspy.context(disable_history=not keep_history):
                    executor.execute(synthesize, todo)
        finally:
            if bar is not None:
                bar.close()
            kept_writer.close()
            rejected_writer.close()
            failures.close()

        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        usage_after = labelled_usage_of(*lms)
        role_usage = {
            label: after - usage_before.get(label, Usage()) for label, after in usage_after.items()
        }
        finished_keys = self.done_keys()  # once: per item it re-read the files (quadratic)
        missing = sum(1 for item in items if item.key not in finished_keys)
        summary = self._summary(
            counts, wall, concurrency, missing, role_usage, cpu, shard=shard, planned=planned
        )
        (self.out / SUMMARY_FILE).write_text(
            json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8"
        )
        return summary

    def _failure_record(
        self,
        item: GridItem,
        role: str,
        cause: BaseException,
        raw_output: str | None,
        partial: Dialogue | None,
    ) -> dict[str, Any]:
        return {
            "id": item.key,
            "run": self.key,
            "topic": item.topic.name,
            "profile_id": item.profile.id,
            "replica": item.replica,
            "role": role,
            "error_type": type(cause).__name__,
            "error": redact_secrets(str(cause))[:4000],
            "raw_output": raw_output,
            "partial_turns": len(partial.turns) if partial else 0,
            "partial": partial.model_dump(mode="json") if partial else None,
            "usage": partial.metadata.get("usage") if partial else None,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def _summary(
        self,
        counts: RunCounts,
        wall: float,
        concurrency: int,
        missing: int,
        role_usage: Mapping[str | None, Usage] | None = None,
        cpu: float | None = None,
        *,
        shard: tuple[int, int] | None = None,
        planned: int | None = None,
    ) -> dict[str, Any]:
        finished = counts.kept + counts.rejected
        role_usage = {k: v for k, v in (role_usage or {}).items() if v.calls or v.cached_calls}
        total = sum(role_usage.values(), Usage())
        if role_usage:
            total.cost_usd = (
                None if any(u.cost_usd is None for u in role_usage.values()) else total.cost_usd
            )
        this_run = {
            "shard": shard_label(shard),
            "dialogues": planned,
            "requested": counts.requested,
            "already_done": counts.already_done,
            "kept": counts.kept,
            "rejected": counts.rejected,
            "failed": counts.failed,
            # Every LM call of this invocation, per role and in total (csc.usage).
            "tokens": {str(role): u.to_dict() for role, u in role_usage.items()},
            "lm_usage": total.to_dict(),
            "wall_seconds": round(wall, 2),
            # CPU time of this process during the run (all threads): the driver's own cost.
            "cpu_seconds": round(cpu, 2) if cpu is not None else None,
            "dialogues_per_minute": round(finished / (wall / 60), 3) if wall > 0 else None,
            "concurrency": concurrency,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        invocations = [*previous_invocations(self.out), this_run]
        return {
            "config_hash": self.key,
            "shard": shard_label(shard),
            "framework": self.config.framework,
            "language": self.config.language,
            "seed": self.config.seed,
            "temperature": self.config.temperature,
            "max_utterances": self.config.max_utterances,
            "filter": self.config.filter,
            "concurrency": concurrency,
            "lms": {r: self.lm_names.get(r, "") for r in self.config.lms},
            # The compiled supporter agents the run used (None: the default prompts).
            "program": {"path": str(self.program_path), "sha256": self.config.program_sha256}
            if self.program_path is not None
            else None,
            "this_run": this_run,
            # The whole folder: every invocation (and, after a merge, every shard) so far.
            "invocations": invocations,
            "totals": {**folder_totals(self.out, invocations), "missing": missing},
            "files": {
                "kept": KEPT_FILE,
                "rejected": REJECTED_FILE,
                "failures": FAILURES_FILE,
                "stats": STATS_FILE,
                "stats_all": STATS_ALL_FILE,
            },
        }


def previous_invocations(out: str | Path) -> list[dict[str, Any]]:
    """The invocations recorded in ``out/summary.json`` (an older summary without the list
    counts as its one ``this_run``)."""
    path = Path(out) / SUMMARY_FILE
    if not path.exists():
        return []
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return []  # a summary is derived data: a damaged one is rebuilt from the next run
    if isinstance(old.get("invocations"), list):
        return list(old["invocations"])
    return [old["this_run"]] if isinstance(old.get("this_run"), dict) else []


def _sum_usage(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for entry in entries:
        for k, v in entry.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                total[k] = round(total.get(k, 0) + v, 6)
    if any(e.get("cost_usd") is None for e in entries if e):
        total["cost_usd"] = None  # one unpriced call makes the total unknown, not smaller
    return total


def folder_totals(out: str | Path, invocations: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts of the folder's files and the sums over its invocations."""
    out = Path(out)
    done = {obj.get("id") for name in (KEPT_FILE, REJECTED_FILE) for obj in _read_lines(out / name)}
    failed = {obj.get("id") for obj in _read_lines(out / FAILURES_FILE)} - done
    return {
        "kept": sum(1 for _ in _read_lines(out / KEPT_FILE)),
        "rejected": sum(1 for _ in _read_lines(out / REJECTED_FILE)),
        # Dialogues whose latest attempt failed and that no later attempt finished.
        "failed": len(failed),
        "invocations": len(invocations),
        "wall_seconds": round(sum(float(i.get("wall_seconds") or 0) for i in invocations), 2),
        "lm_usage": _sum_usage([i.get("lm_usage") or {} for i in invocations]),
    }


def merge_runs(out_dir: str | Path, sources: Sequence[str | Path]) -> dict[str, Any]:
    """Combine run folders of one configuration (typically shards ``0/N`` .. ``N-1/N``) into
    ``out_dir``, an unsharded run folder that a later ``csc synthesize`` resumes as usual.

    Every dialogue appears once (the first folder holding its id wins); a failure is kept only
    when no folder finished that dialogue. ``summary.json`` lists every invocation of every
    source. Returns the summary (statistics are written by the command).
    """
    out = Path(out_dir)
    runs = []
    for src in sources:
        src = Path(src)
        run_file = src / RUN_FILE
        if not run_file.exists():
            raise RunConfigError(f"{src} is not a synthesis run folder (no {RUN_FILE})")
        try:
            runs.append((src, json.loads(run_file.read_text(encoding="utf-8"))))
        except json.JSONDecodeError:
            raise RunConfigError(f"{run_file} is not valid JSON; restore it") from None
    if not runs:
        raise RunConfigError("give at least one run folder to merge")
    key = runs[0][1].get("config_hash")
    for src, info in runs[1:]:
        if info.get("config_hash") != key:
            raise RunConfigError(
                f"{src} holds run {info.get('config_hash')}, {runs[0][0]} holds run {key}: only "
                "folders of the same configuration (same flags and seed) can be merged"
            )
    if (out / RUN_FILE).exists():
        existing = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
        if existing.get("config_hash") != key or existing.get("shard"):
            raise RunConfigError(
                f"{out} holds another run ({existing.get('config_hash')}, shard "
                f"{existing.get('shard') or 'none'}); merge into a new folder"
            )
        runs.insert(0, (out, existing))
    elif out.exists() and any(out.iterdir()):
        raise RunConfigError(f"{out} is not empty and not a run folder; merge into a new folder")

    seen: set[str] = set()
    kept: list[str] = []
    rejected: list[str] = []
    failures: dict[str, str] = {}
    shards: dict[str, list[str]] = {}
    for src, info in runs:
        for name, bucket in ((KEPT_FILE, kept), (REJECTED_FILE, rejected)):
            path = src / name
            drop_torn_line(path)
            if not path.exists():
                continue
            with path.open(encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        dialogue_id = json.loads(line)["id"]
                    except (json.JSONDecodeError, KeyError):
                        raise RunConfigError(
                            f"{path}:{lineno}: not a dialogue record; remove that line and re-run"
                        ) from None
                    if dialogue_id not in seen:
                        seen.add(dialogue_id)
                        bucket.append(line if line.endswith("\n") else line + "\n")
        for record in _read_lines(src / FAILURES_FILE):
            failures[record.get("id", "")] = json.dumps(record, ensure_ascii=False) + "\n"
        if src != out:
            shards.setdefault(info.get("shard") or "unsharded", []).append(str(src))

    out.mkdir(parents=True, exist_ok=True)
    contents = {
        KEPT_FILE: kept,
        REJECTED_FILE: rejected,
        FAILURES_FILE: [line for i, line in failures.items() if i not in seen],
    }
    for name, lines in contents.items():
        tmp = out / (name + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            fh.writelines(lines)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out / name)  # atomic: a kill leaves the old file or the new one
    first = runs[0][1]
    (out / RUN_FILE).write_text(
        json.dumps(
            {
                "config_hash": key,
                "created": first.get("created"),
                "shard": None,
                "merged_from": sorted({str(src) for src, _ in runs if src != out}),
                "config": first.get("config"),
            },
            ensure_ascii=False,
            indent=2,
        ),
        encoding="utf-8",
    )
    invocations: list[dict[str, Any]] = []
    missing = 0
    old_summaries = []
    for src, _ in runs:
        path = src / SUMMARY_FILE
        old = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        old_summaries.append(old)
        for inv in previous_invocations(src):
            if inv not in invocations:
                invocations.append(inv)
        if src != out:
            missing += int((old.get("totals") or {}).get("missing") or 0)
    base = next((o for o in old_summaries if o), {})
    labels = sorted(shards)
    counts = [int(label.split("/")[1]) for label in labels if "/" in label]
    complete = bool(counts) and len(set(counts)) == 1 and len(labels) == counts[0]
    summary = {
        **{k: base.get(k) for k in ("framework", "language", "seed", "temperature")},
        **{k: base.get(k) for k in ("max_utterances", "filter", "lms", "program")},
        "config_hash": key,
        "shard": None,
        "merged": {
            "shards": labels,
            "sources": {label: shards[label] for label in labels},
            # True when shards 0..N-1 of one N are all present: the union is the whole run.
            "all_shards": complete,
        },
        "this_run": None,
        "invocations": invocations,
        "totals": {**folder_totals(out, invocations), "missing": missing},
        "files": {
            "kept": KEPT_FILE,
            "rejected": REJECTED_FILE,
            "failures": FAILURES_FILE,
            "stats": STATS_FILE,
            "stats_all": STATS_ALL_FILE,
        },
    }
    (out / SUMMARY_FILE).write_text(
        json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8"
    )
    return summary
