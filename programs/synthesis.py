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

import random
import resource
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from csc.data.profiles import CustomerProfile
from csc.data.topics import Topic
from csc.dialogue import Dialogue
from csc.framework import Framework, Language
from csc.lm import AGENT_ROLES
from csc.programs.rolecs import DialogueFailure, RoleCS
from csc.programs.run_folder import (
    DIANJIN_FILE,
    FAILURES_FILE,
    KEPT_FILE,
    REJECTED_FILE,
    SUMMARY_FILE,
    RunConfigError,
    RunFolder,
    ShardError,
    digest,
    failure_fields,
    in_shard,
    merge_folders,
    now,
    parse_shard,
    previous_invocations,
    progress_bar,
    read_records,
    read_run_dialogues,
    result_logs,
    run_concurrently,
    shard_label,
    write_json,
)
from csc.usage import Usage, labelled_usage_of, reported_tokens

__all__ = [
    "DIANJIN_FILE",
    "GridItem",
    "RunConfigError",
    "ShardError",
    "SynthesisConfig",
    "SynthesisRun",
    "merge_runs",
    "parse_shard",
    "plan_grid",
    "read_run_dialogues",
    "select_shard",
]

STATS_FILE = "stats.json"
STATS_ALL_FILE = "stats_all.json"


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
        roles = {r: lms.get(r, lms.get("default", "")) for r in AGENT_ROLES}
        if not filter:
            roles.pop("judge")
        return cls(
            framework=framework.name,
            framework_digest=digest(framework.to_dict()),
            language=language,
            topics=list(topics),
            profiles_digest=digest([p.model_dump(exclude_none=True) for p in profiles]),
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
        return digest(data)[:12]


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
        key = digest([run_key, topic.code, topic.name, profile.id, replica])[:16]
        items.append(GridItem(topic, profile, replica, key))
    return items


# ----------------------------------------------------------------------------- the run


def select_shard(items: Sequence[GridItem], shard: tuple[int, int] | None) -> list[GridItem]:
    """The grid items of one shard: every N-th item of the seeded grid, starting at I
    (see :func:`~csc.programs.run_folder.in_shard`)."""
    return [item for pos, item in enumerate(items) if in_shard(pos, shard)]


# The ``files`` entry of a synthesis summary.
OUTPUT_FILES = {
    "kept": KEPT_FILE,
    "rejected": REJECTED_FILE,
    "failures": FAILURES_FILE,
    "stats": STATS_FILE,
    "stats_all": STATS_ALL_FILE,
}


@dataclass
class RunCounts:
    """What one invocation of a run did."""

    requested: int = 0
    already_done: int = 0
    kept: int = 0
    rejected: int = 0
    failed: int = 0
    tokens: int = 0
    usage: dict[str, Usage] = field(default_factory=dict)  # per role, from the records


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

    def folder(self, shard: tuple[int, int] | None = None) -> RunFolder:
        """The run folder (``run.json`` bookkeeping) of this run, as ``shard``."""
        return RunFolder(self.out, self.key, self.config.model_dump(mode="json"), shard)

    def done_keys(self) -> set[str]:
        """Keys of dialogues already written (kept or rejected), after repairing torn lines."""
        return self.folder().done_keys((KEPT_FILE, REJECTED_FILE), lambda obj: obj.get("id"))

    def plan(self, n: int | None = None, shard: tuple[int, int] | None = None) -> list[GridItem]:
        """The grid items of the first ``n`` dialogues that belong to ``shard``."""
        items = plan_grid(self.config.topics, self.profiles, n, self.config.seed, self.key)
        return select_shard(items, shard)

    def synthesize(self, item: GridItem, on_turn: Any = None) -> tuple[str, dict[str, Any]]:
        """One dialogue: ``("kept" | "rejected", dialogue record)`` or ``("failed", failure
        record)``; never raises for an LM or parsing failure."""
        try:
            pred = self.program(
                item.profile,
                item.topic,
                dialogue_id=item.key,
                seed=self.config.seed,
                on_turn=on_turn,
            )
        except DialogueFailure as exc:
            return "failed", self._failure_record(
                item, exc.role, exc.cause, exc.raw_output, exc.partial
            )
        except Exception as exc:  # a bug or an unexpected library error: record, go on
            return "failed", self._failure_record(item, "runner", exc, None, None)
        dialogue = pred.dialogue
        dialogue.metadata.update(
            run=self.key,
            topic_code=item.topic.code,
            profile_id=item.profile.id,
            replica=item.replica,
        )
        outcome = "kept" if (pred.passed is None or pred.passed) else "rejected"
        return outcome, dialogue.model_dump(mode="json")

    # ------------------------------------------------------------------ running
    def run(
        self,
        n: int | None = None,
        *,
        concurrency: int = 1,
        progress: bool = True,
        shard: tuple[int, int] | None = None,
        keep_history: bool = True,
        outcomes: Any = None,
    ) -> dict[str, Any]:
        """Synthesize the first ``n`` grid items not yet done (only those of ``shard`` = (I, N)
        when given, see :func:`select_shard`); returns the summary (also written to
        ``summary.json``). ``keep_history=False`` runs without DSPy's call history (``csc
        synthesize`` does, for flat memory). ``outcomes`` replaces the local thread pool: a
        callable ``(todo, concurrency) -> iterable of (item, (outcome, record))`` (the Ray
        executor); the records are written here either way."""
        import dspy

        start = time.perf_counter()
        cpu_start = time.process_time()
        folder = self.folder(shard)
        folder.prepare()
        items = self.plan(n, shard)
        planned = n if n is not None else len(self.config.topics) * len(self.profiles)
        done = self.done_keys()
        todo = [item for item in items if item.key not in done]
        counts = RunCounts(requested=len(items), already_done=len(items) - len(todo))
        # The summary's usage comes from meters on the LM objects (csc.usage): one source of
        # truth keeps every command equal.
        lms = [*self.lms.values(), dspy.settings.lm]
        usage_before = labelled_usage_of(*lms)
        bar = progress_bar(progress and bool(todo), len(todo))
        utterances = [0]

        def show_progress() -> None:
            shown = ("kept", "rejected", "failed", "tokens")
            bar.set_postfix({"utterances": utterances[0], **{k: getattr(counts, k) for k in shown}})

        def on_turn(_turn: Any) -> None:
            utterances[0] += 1  # a progress figure: a lost update under threads is harmless
            show_progress()

        def write(item: GridItem, result: Any) -> None:
            if isinstance(result, BaseException):  # only a bug in synthesize() gets here
                result = ("failed", self._failure_record(item, "runner", result, None, None))
            outcome, record = result
            if outcome != "failed" and item.key in done:
                return  # never write a dialogue twice (a re-delivered task)
            if outcome != "failed":
                done.add(item.key)
            files[outcome].write(record)
            usage = (record.get("metadata") or {}).get("usage") or record.get("usage") or {}
            for role, u in usage.items():
                add = reported_tokens([u])
                add.calls, add.cost_usd = int(u.get("calls", 0)), None
                counts.usage[role] = counts.usage.get(role, Usage()) + add
                counts.tokens += add.total_tokens
            setattr(counts, outcome, getattr(counts, outcome) + 1)
            show_progress()

        names = {"kept": KEPT_FILE, "rejected": REJECTED_FILE, "failed": FAILURES_FILE}
        # keep_history=False: DSPy keeps up to 10,000 calls (prompts and answers) on the LM, on
        # every predictor and globally, so memory grows with the first ~600 dialogues; the
        # usage meters (csc.usage) do not need it. trace=None: DSPy's trace (for optimizers)
        # keeps the last 10,000 predictor calls with their inputs, i.e. whole histories.
        with (
            result_logs(self.out, names, bar) as files,
            dspy.context(disable_history=not keep_history, trace=None),
        ):
            if outcomes is not None:
                for item, result in outcomes(todo, concurrency):
                    write(item, result)
                    bar.update(1)
            else:
                work = lambda item: self.synthesize(item, on_turn)  # noqa: E731
                run_concurrently(todo, work, write, concurrency=concurrency, bar=bar)

        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        role_usage = {
            label: after - usage_before.get(label, Usage())
            for label, after in labelled_usage_of(*lms).items()
        }
        if outcomes is not None:  # the calls ran elsewhere: add up what the records say
            role_usage = counts.usage
        finished_keys = self.done_keys()  # once: per item it re-read the files (quadratic)
        missing = sum(1 for item in items if item.key not in finished_keys)
        summary = self._summary(
            counts, wall, concurrency, missing, role_usage, cpu, shard=shard, planned=planned
        )
        write_json(self.out / SUMMARY_FILE, summary)
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
            **failure_fields(role, cause, raw_output),
            "partial_turns": len(partial.turns) if partial else 0,
            "partial": partial.model_dump(mode="json") if partial else None,
            "usage": partial.metadata.get("usage") if partial else None,
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
        total = sum(role_usage.values(), Usage())  # one unpriced role makes the cost None
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
            # The process's peak memory so far (before the statistics written after the run).
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "dialogues_per_minute": round(finished / (wall / 60), 3) if wall > 0 else None,
            "concurrency": concurrency,
            "finished_at": now(),
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
            "files": dict(OUTPUT_FILES),
        }


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
    done = {
        obj.get("id") for name in (KEPT_FILE, REJECTED_FILE) for obj in read_records(out / name)
    }
    failed = {obj.get("id") for obj in read_records(out / FAILURES_FILE)} - done
    return {
        "kept": sum(1 for _ in read_records(out / KEPT_FILE)),
        "rejected": sum(1 for _ in read_records(out / REJECTED_FILE)),
        # Dialogues whose latest attempt failed and that no later attempt finished.
        "failed": len(failed),
        "invocations": len(invocations),
        "wall_seconds": round(sum(float(i.get("wall_seconds") or 0) for i in invocations), 2),
        "lm_usage": _sum_usage([i.get("lm_usage") or {} for i in invocations]),
    }


def merge_runs(out_dir: str | Path, sources: Sequence[str | Path]) -> dict[str, Any]:
    """Combine synthesis run folders of one configuration (typically shards ``0/N`` ..
    ``N-1/N``) into ``out_dir``, an unsharded run folder that ``csc synthesize`` resumes.

    Every dialogue appears once; a failure is kept only when no folder finished that dialogue.
    ``summary.json`` lists every invocation of every source. Returns the summary (statistics
    are written by the command).
    """
    parts = merge_folders(
        out_dir,
        sources,
        (KEPT_FILE, REJECTED_FILE),
        FAILURES_FILE,
        lambda r: r.get("id"),
        "synthesis run",
    )
    base = parts["base"]
    summary = {
        **{k: base.get(k) for k in ("framework", "language", "seed", "temperature")},
        **{k: base.get(k) for k in ("max_utterances", "filter", "lms", "program")},
        "config_hash": parts["config_hash"],
        "shard": None,
        "merged": parts["merged"],
        "this_run": None,
        "invocations": parts["invocations"],
        "totals": {**folder_totals(out_dir, parts["invocations"]), "missing": parts["missing"]},
        "files": dict(OUTPUT_FILES),
    }
    write_json(Path(out_dir) / SUMMARY_FILE, summary)
    return summary
