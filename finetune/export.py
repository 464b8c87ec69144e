"""Export dialogues as supervised fine-tuning data in the ``messages`` format.

Each supporter turn of a dialogue becomes one row per task:

* ``strategy`` — the messages the supporter's strategy predictor sends for the history before the
  turn, answered by the adapter-formatted gold strategy
  (``[[ ## strategy ## ]]\\nEM\\n\\n[[ ## completed ## ]]``);
* ``response`` — the messages the responder sends for that history and the *gold* strategy,
  answered by the adapter-formatted gold reply;
* ``joint`` — both kinds of rows, so one adapter serves both sub-programs.

Prompts come from :func:`csc.programs.supporter.strategy_prediction_messages` and
:func:`~csc.programs.supporter.response_generation_messages` on a zero-shot
:class:`~csc.programs.supporter.Supporter`, so training prompts are byte-identical to what
``csc evaluate --supporter finetuned:DIR`` sends. Dialogues (not turns) are split into
train/validation/test, seeded, so no conversation leaks across splits. The output folder is a
``datasets.DatasetDict`` saved with ``save_to_disk`` plus ``export.json`` (counts, hashes, options).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from csc.dialogue import Dialogue
from csc.framework import Framework, Language

Task = Literal["strategy", "response", "joint"]
TASKS: tuple[str, ...] = ("strategy", "response", "joint")
EXPORT_METADATA = "export.json"
SPLITS: tuple[str, ...] = ("train", "validation", "test")


class ExportError(ValueError):
    """The data cannot be exported (empty, unlabelled, bad fractions...)."""


@dataclass
class SplitCounts:
    """How many dialogues and rows (per task) went into one split."""

    dialogues: int = 0
    rows: int = 0
    strategy_rows: int = 0
    response_rows: int = 0


@dataclass
class ExportResult:
    """Where the export went and what it holds."""

    out_dir: Path
    counts: dict[str, SplitCounts]
    skipped_turns: int
    metadata: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- splitting
def split_dialogues(
    dialogues: Sequence[Dialogue],
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> dict[str, list[Dialogue]]:
    """Split whole dialogues into train/validation/test with a seeded shuffle.

    Uses the evaluation's own :func:`csc.eval.examples.split_dialogues`, so with the default
    fractions (0.8/0.1/0.1) the exported ``test`` split is exactly what
    ``csc evaluate --split test --seed S`` scores: the fine-tuned model never saw it.
    """
    from csc.eval.examples import split_dialogues as eval_split

    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ExportError(f"{name}={value}: must be in [0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise ExportError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction:.2f} leaves nothing to "
            "train on; lower them"
        )
    ids = [d.id for d in dialogues]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise ExportError(
            f"dialogue ids must be unique to split without leakage; repeated: {repeated[:5]}"
        )
    parts = eval_split(
        dialogues, (1.0 - val_fraction - test_fraction, val_fraction, test_fraction), seed=seed
    )
    if not parts.train:
        raise ExportError(
            f"{len(dialogues)} dialogue(s) are too few for val_fraction={val_fraction} and "
            f"test_fraction={test_fraction}; add data or lower the fractions"
        )
    return {"train": parts.train, "validation": parts.dev, "test": parts.test}


# ---------------------------------------------------------------------------- rows
class SFTRowBuilder:
    """Builds SFT rows with the supporter program's own prompts and the adapter's own targets."""

    def __init__(self, framework: Framework | str = "csc", language: Language = "en"):
        from csc.programs.supporter import Supporter

        self.framework = (
            framework if isinstance(framework, Framework) else Framework.load(framework)
        )
        self.language: Language = language
        # A zero-shot program: finetuned:DIR is evaluated with the same, demo-free program.
        self.program = Supporter(self.framework, language)

    def rows(self, dialogue: Dialogue, task: Task) -> tuple[list[dict[str, Any]], int]:
        """Rows for every labelled supporter turn of a dialogue, and how many turns were skipped.

        Histories come from :func:`csc.eval.examples.supporter_examples`, the examples the
        evaluation harness runs, so the reference-context prompts match exactly.
        """
        from csc.eval.examples import supporter_examples
        from csc.programs.supporter import (
            completion_content,
            response_generation_messages,
            strategy_prediction_messages,
        )

        out: list[dict[str, Any]] = []
        skipped = 0
        for example in supporter_examples([dialogue], language=self.language):
            if not example.strategy or not example.response.strip():
                skipped += 1  # an unlabelled or empty turn has no gold target
                continue
            code = self.framework.normalize(example.strategy)
            base = {"dialogue_id": dialogue.id, "turn": example.turn_index, "strategy": code}
            if task in ("strategy", "joint"):
                messages = strategy_prediction_messages(self.program, example.history)
                target = completion_content(self.program.strategist, {"strategy": code})
                out.append({**base, "task": "strategy", "messages": _with_answer(messages, target)})
            if task in ("response", "joint"):
                messages = response_generation_messages(self.program, example.history, code)
                target = completion_content(self.program.responder, {"response": example.response})
                out.append({**base, "task": "response", "messages": _with_answer(messages, target)})
        return out, skipped


def _with_answer(messages: list[dict[str, Any]], target: str) -> list[dict[str, str]]:
    # Only role/content survive: the Arrow schema must be the same for every row.
    rows = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
    return [*rows, {"role": "assistant", "content": target}]


# ---------------------------------------------------------------------------- export
def file_sha256(path: str | Path) -> str:
    """SHA-256 of a data file, or of every file in a dataset folder (sorted by path)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode())
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def export_sft(
    data: str | Path,
    out_dir: str | Path,
    *,
    format: str | None = None,
    framework: Framework | str = "csc",
    task: Task = "joint",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    language: Language | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> ExportResult:
    """Read a dialogue dataset and write a ``messages`` DatasetDict for SFT to ``out_dir``.

    ``format`` is any format :func:`csc.data.io.read_dialogues` reads (auto-detected by default);
    ``language`` defaults to the dialogues' language. Writes ``export.json`` with the counts per
    split, the data file's SHA-256, the framework and the options.
    """
    from datasets import Dataset, DatasetDict

    from csc.data.io import read_dialogues
    from csc.eval.examples import dialogue_language

    if task not in TASKS:
        raise ExportError(f"task {task!r}: choose one of {list(TASKS)}")
    fw = framework if isinstance(framework, Framework) else Framework.load(framework)
    dialogues = list(read_dialogues(data, format, framework=fw))
    if limit is not None:
        dialogues = dialogues[:limit]
    if not dialogues:
        raise ExportError(f"{data}: no dialogues to export")
    lang: Language = language or dialogue_language(dialogues)  # type: ignore[assignment]
    splits = split_dialogues(
        dialogues, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
    )
    builder = SFTRowBuilder(fw, lang)

    counts: dict[str, SplitCounts] = {}
    datasets: dict[str, Any] = {}
    skipped = 0
    total = sum(len(v) for v in splits.values())
    bar = _progress(total, "Exporting dialogues", progress)
    for split in SPLITS:
        rows: list[dict[str, Any]] = []
        for dialogue in splits[split]:
            new, n_skipped = builder.rows(dialogue, task)
            rows.extend(new)
            skipped += n_skipped
            bar.update(1)
        if not splits[split] and split != "train":
            continue
        counts[split] = SplitCounts(
            dialogues=len(splits[split]),
            rows=len(rows),
            strategy_rows=sum(r["task"] == "strategy" for r in rows),
            response_rows=sum(r["task"] == "response" for r in rows),
        )
        datasets[split] = Dataset.from_list(rows, features=_features()) if rows else None
    bar.close()
    if counts["train"].rows == 0:
        raise ExportError(
            f"{data}: the train split has no labelled supporter turns; SFT needs turns with a "
            "strategy label (relabel the data or check --framework)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dsd = DatasetDict({k: v for k, v in datasets.items() if v is not None})
    dsd.save_to_disk(str(out))
    metadata = {
        "data_file": str(Path(data).resolve()),
        "data_sha256": file_sha256(data),
        "format": format,
        "framework": fw.name,
        "framework_source": fw.source,
        "language": lang,
        "task": task,
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "limit": limit,
        "counts": {k: vars(v) for k, v in counts.items()},
        "skipped_turns": skipped,
        "split_dialogue_ids": {k: [d.id for d in v] for k, v in splits.items()},
        "prompts": "csc.programs.supporter zero-shot Supporter, ChatAdapter",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (out / EXPORT_METADATA).write_text(
        json.dumps(metadata, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    return ExportResult(out_dir=out, counts=counts, skipped_turns=skipped, metadata=metadata)


def write_split_dialogues(result: ExportResult, split: str, path: str | Path) -> int:
    """Write the dialogues of one split (e.g. ``test``) as JSONL, to evaluate on held-out data."""
    from csc.data.io import read_dialogues, write_dialogues

    meta = result.metadata
    wanted = set(meta["split_dialogue_ids"].get(split, []))
    if not wanted:
        raise ExportError(f"the export has no {split!r} split; set its fraction above 0")
    source = read_dialogues(meta["data_file"], meta["format"], framework=meta["framework_source"])
    return write_dialogues((d for d in source if d.id in wanted), path)


def _features() -> Any:
    from datasets import Features, List, Value

    return Features(
        {
            "dialogue_id": Value("string"),
            "turn": Value("int32"),
            "strategy": Value("string"),
            "task": Value("string"),
            "messages": List({"role": Value("string"), "content": Value("string")}),
        }
    )


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="dialogue", disable=not enabled)
