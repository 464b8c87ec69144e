"""Export dialogues as supervised fine-tuning data in the ``messages`` format.

Each supporter turn of a dialogue becomes one row per task:

* ``strategy`` — the messages the supporter's strategy predictor sends for the history before the
  turn, answered by the adapter-formatted gold strategy
  (``[[ ## strategy ## ]]\\nEM\\n\\n[[ ## completed ## ]]``);
* ``response`` — the messages the responder sends for that history and the *gold* strategy,
  answered by the adapter-formatted gold reply;
* ``joint`` — both kinds of rows, so one adapter serves both sub-programs.

The targets are the dialogues' own (``targets="gold"``, the default) or, with ``teacher=SPEC``,
what a teacher supporter (``zero-shot``, ``optimized:P.json``... on any LM, e.g. a strong remote
model) answers for the same histories (``targets="teacher"``, or ``"both"``: gold rows plus
teacher rows) — DSPy's BootstrapFinetune idea with TRL as the trainer, see
:mod:`csc.finetune.teacher`. The teacher runs on the train split only; validation and test rows
keep gold targets. A teacher response row's prompt carries the teacher's strategy, the one its
reply was written for.

Prompts come from :func:`csc.programs.supporter.strategy_prediction_messages` and
:func:`~csc.programs.supporter.response_generation_messages` on a zero-shot
:class:`~csc.programs.supporter.Supporter` of the chosen prompt variant (``compact``, the default,
or ``full``; recorded in ``export.json`` and then in the adapter's metadata), so training prompts
are byte-identical to what ``csc evaluate --supporter finetuned:DIR`` sends. Dialogues (not turns) are split into
train/validation/test, seeded, so no conversation leaks across splits. The output folder is a
``datasets.DatasetDict`` saved with ``save_to_disk`` plus ``export.json`` (counts, hashes, options).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from csc.choices import PromptVariant, SftTargets, SftTask
from csc.data.turns import as_framework
from csc.dialogue import Dialogue
from csc.framework import Framework, Language
from csc.signatures.supporter import PROMPT_VARIANTS

if TYPE_CHECKING:
    from csc.finetune.teacher import TeacherOutputs

Task = SftTask
TASKS: tuple[Task, ...] = get_args(SftTask)
Targets = SftTargets
TARGETS: tuple[Targets, ...] = get_args(SftTargets)
EXPORT_METADATA = "export.json"
TEACHER_DIR = "teacher"  # the teacher's resumable outputs (csc.finetune.teacher)
SPLITS: tuple[str, ...] = ("train", "validation", "test")
# The prompt variant of exports that predate the choice (they have no "prompt" key).
LEGACY_PROMPT: PromptVariant = "full"


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
    # Train turns whose teacher strategy differs from the gold label, and how many of those
    # turns' teacher rows --drop-disagreeing left out (0 without a teacher).
    disagreeing_turns: int = 0
    dropped_disagreeing_turns: int = 0


# ---------------------------------------------------------------------------- rows
class SFTRowBuilder:
    """Builds SFT rows with the supporter program's own prompts and the adapter's own targets."""

    def __init__(
        self,
        framework: Framework | str = "csc",
        language: Language = "en",
        prompt: PromptVariant = "compact",
    ):
        from csc.programs.supporter import Supporter

        self.framework = as_framework(framework)
        self.language: Language = language
        # A zero-shot program: finetuned:DIR is evaluated with the same, demo-free program of
        # the same prompt variant.
        self.program = Supporter(self.framework, language, prompt)

    def rows(
        self,
        dialogue: Dialogue,
        task: Task,
        *,
        targets: Targets = "gold",
        teacher: TeacherOutputs | None = None,
        drop_disagreeing: bool = False,
    ) -> tuple[list[dict[str, Any]], TurnCounts]:
        """Rows for the supporter turns of a dialogue, and what happened to its turns.

        Gold rows come from every labelled turn (``targets`` gold or both); teacher rows from
        every turn ``teacher`` answered (``targets`` teacher or both; pass ``teacher=None`` for
        a held-out split, which then gets gold rows). Histories come from
        :func:`csc.eval.examples.supporter_examples`, the examples the evaluation harness runs,
        so the reference-context prompts match exactly.
        """
        from csc.eval.examples import supporter_examples

        out: list[dict[str, Any]] = []
        counts = TurnCounts()
        use_teacher = teacher is not None and targets != "gold"
        for example in supporter_examples([dialogue], language=self.language):
            gold = self.framework.normalize(example.strategy) if example.strategy else None
            has_gold = gold is not None and bool(example.response.strip())
            if not has_gold:
                counts.skipped += 1  # an unlabelled or empty turn has no gold target
            gold_rows: list[dict[str, Any]] = []
            if has_gold and (targets != "teacher" or not use_teacher):
                gold_rows = self._turn_rows(
                    dialogue.id, example, task, gold, example.response, gold, "gold"
                )
                out.extend(gold_rows)
            if not use_teacher:
                continue
            said = teacher.get(dialogue.id, example.turn_index)  # type: ignore[union-attr]
            if said is None:
                continue  # the teacher failed on this turn (counted by the teacher run)
            code, reply = said
            if gold is not None and code != gold:
                counts.disagreeing += 1
                if drop_disagreeing:
                    counts.dropped_disagreeing += 1
                    continue
            seen = [r["messages"] for r in gold_rows]
            for row in self._turn_rows(dialogue.id, example, task, code, reply, gold, "teacher"):
                if row["messages"] not in seen:  # with "both", an identical row is written once
                    out.append(row)
        return out, counts

    def _turn_rows(
        self,
        dialogue_id: str,
        example: Any,
        task: Task,
        code: str,
        reply: str,
        gold: str | None,
        source: str,
    ) -> list[dict[str, Any]]:
        """The strategy and/or response rows of one turn answered with ``code`` and ``reply``:
        the student's own prompts, the adapter-formatted answer."""
        from csc.programs.supporter import (
            completion_content,
            response_generation_messages,
            strategy_prediction_messages,
        )

        base = {
            "dialogue_id": dialogue_id,
            "turn": example.turn_index,
            "strategy": code,
            "gold_strategy": gold or "",
            "target_source": source,
        }
        rows = []
        if task in ("strategy", "joint"):
            messages = strategy_prediction_messages(self.program, example.history)
            target = completion_content(self.program.strategist, {"strategy": code})
            rows.append({**base, "task": "strategy", "messages": _with_answer(messages, target)})
        if task in ("response", "joint"):
            # The reply was written for ``code``: the prompt names that strategy.
            messages = response_generation_messages(self.program, example.history, code)
            target = completion_content(self.program.responder, {"response": reply})
            rows.append({**base, "task": "response", "messages": _with_answer(messages, target)})
        return rows


@dataclass
class TurnCounts:
    """What happened to the supporter turns of one dialogue while building its rows."""

    skipped: int = 0  # no gold label or an empty gold reply
    disagreeing: int = 0  # the teacher's strategy differs from the gold label
    dropped_disagreeing: int = 0  # ... and its teacher rows were left out


def _with_answer(messages: list[dict[str, Any]], target: str) -> list[dict[str, str]]:
    # Only role/content survive: the Arrow schema must be the same for every row.
    rows = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
    return [*rows, {"role": "assistant", "content": target}]


# ---------------------------------------------------------------------------- export
def check_output_folder(data: str | Path, out_dir: str | Path, overwrite: bool = False) -> None:
    """Refuse an ``--out`` that would destroy data: the input itself, a folder holding the input
    or inside an input dataset folder (always), an existing file, a non-empty folder (unless
    ``overwrite``), or with ``overwrite`` a non-empty folder that is not an earlier export. A
    folder holding only the teacher outputs of an interrupted export is resumed."""
    data_path = Path(data).resolve()
    out = Path(out_dir).resolve()
    if out == data_path:
        raise ExportError(f"--out {out_dir} is the input data {data}; choose another folder")
    if data_path.is_relative_to(out):
        raise ExportError(
            f"--out {out_dir} holds the input data {data}; writing the export there would "
            "replace it. Choose a new folder, e.g. --out runs/sft"
        )
    if data_path.is_dir() and out.is_relative_to(data_path):
        raise ExportError(
            f"--out {out_dir} is inside the input dataset folder {data}, which would then no "
            "longer load; choose a folder outside it"
        )
    if out.is_file():
        raise ExportError(f"--out {out_dir} is a file; give a folder for the exported dataset")
    if out.is_dir() and {p.name for p in out.iterdir()} == {TEACHER_DIR}:
        return  # an interrupted teacher export: resume from its teacher outputs
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"{out_dir}: already exists; pass --overwrite to replace it")
        if not ((out / EXPORT_METADATA).is_file() or (out / "dataset_dict.json").is_file()):
            raise ExportError(
                f"{out_dir}: not a folder written by `csc finetune export` (no "
                f"{EXPORT_METADATA}); refusing to replace it even with --overwrite. Choose a new "
                "folder"
            )


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
    splits: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    prompt: PromptVariant = "compact",
    targets: Targets | None = None,
    teacher: str | None = None,
    teacher_lm: Any = None,
    lm_factory: Any = None,
    concurrency: int = 4,
    drop_disagreeing: bool = False,
) -> ExportResult:
    """Read a dialogue dataset and write a ``messages`` DatasetDict for SFT to ``out_dir``.

    ``format`` is any format :func:`csc.data.io.read_dialogues` reads (auto-detected by default);
    ``language`` defaults to the dialogues' language; ``limit`` reads only the first N
    dialogues; ``prompt`` is the supporter's prompt variant (``compact``: the short student
    prompt, ``full``: the prompt with the framework's definitions). The split comes from ``splits`` (a ``splits.json`` of the same data) or is made
    with ``seed`` and the fractions; either way it is written to ``OUT/splits.json`` for
    ``csc evaluate``/``compare``/``optimize --splits``. Also writes ``export.json`` (counts per
    split, the data's SHA-256, the framework and the options).

    Streams: dialogues are read twice (ids, then rows) and rows go straight to Arrow files, so
    memory does not grow with the data. The input is hashed before anything is written, and the
    folder appears only once complete (an earlier export is replaced only with ``overwrite``).

    Teacher targets: ``teacher`` is a supporter spec (``zero-shot``, ``optimized:P.json``...)
    run on ``teacher_lm`` (an :class:`csc.lm.LMSpec` or model string; built with
    ``lm_factory``, default :func:`csc.lm.build_lm`) over the train dialogues only, with
    ``concurrency`` concurrent turns; its outputs are kept in ``OUT/teacher/`` so an
    interrupted export resumes. ``targets`` (default: ``teacher`` when a teacher is given,
    else ``gold``) picks the train rows' targets; ``drop_disagreeing`` leaves out the teacher
    rows of turns whose teacher strategy differs from the gold label (they are counted either
    way). ``export.json`` records the teacher spec, its LM (no keys), its program's hash, its
    outputs' agreement with the gold labels and the cost of making the data.
    """
    import os
    import shutil
    import time
    from itertools import islice

    from datasets.arrow_writer import ArrowWriter
    from tqdm.auto import tqdm

    from csc.data.io import read_dialogues
    from csc.eval.examples import dialogue_language
    from csc.eval.splits import SPLITS_FILE, DatasetSplits, SplitsError, data_sha256

    targets = targets or ("teacher" if teacher else "gold")
    for name, value, allowed in (
        ("task", task, TASKS),
        ("prompt", prompt, PROMPT_VARIANTS),
        ("targets", targets, TARGETS),
    ):
        if value not in allowed:
            raise ExportError(f"{name} {value!r}: choose one of {list(allowed)}")
    if targets == "gold" and teacher:
        raise ExportError(
            f"--teacher {teacher} with --targets gold: the teacher's outputs would not be used; "
            "pass --targets teacher or both, or leave out --teacher"
        )
    if targets != "gold" and not teacher:
        raise ExportError(
            f"--targets {targets} needs a teacher: pass --teacher SPEC (e.g. zero-shot or "
            "optimized:program.json) and its --teacher-lm"
        )
    if drop_disagreeing and not teacher:
        raise ExportError("--drop-disagreeing needs --teacher (it drops teacher rows)")
    started = time.perf_counter()
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ExportError(f"{name}={value}: must be in [0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise ExportError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction:.2f} leaves nothing to "
            "train on; lower them"
        )
    fw = as_framework(framework)
    data, out = Path(data), Path(out_dir)
    check_output_folder(data, out, overwrite)
    sha = data_sha256(data)  # before anything is written, wherever --out points

    def read() -> Any:
        return islice(read_dialogues(data, format, framework=fw), limit)

    # Pass 1: the ids (to split) and a sample of the text (to detect the language).
    ids: list[str] = []
    sample: list[Dialogue] = []
    for dialogue in read():
        ids.append(dialogue.id)
        if len(sample) < 200:
            sample.append(dialogue)
    if not ids:
        raise ExportError(f"{data}: no dialogues to export")
    lang: Language = language or dialogue_language(sample)  # type: ignore[assignment]
    del sample
    try:
        if splits is not None:
            parts = DatasetSplits.read(splits)
            parts.check_data(data, sha)
            listed = {i for name in SPLITS for i in parts.parts[name]}
            missing = listed - set(ids)
            if missing and limit is None:
                raise ExportError(
                    f"{splits}: {len(missing)} dialogue id(s) are not in {data}, e.g. "
                    f"{sorted(missing)[:3]}"
                )
        else:
            parts = DatasetSplits.make(
                ids,
                data_file=data,
                data_sha256=sha,
                val_fraction=val_fraction,
                test_fraction=test_fraction,
                seed=seed,
                limit=limit,
            )
    except SplitsError as exc:
        raise ExportError(str(exc)) from None
    part_of = {i: name for name in SPLITS for i in parts.parts[name]}
    del ids
    if not any(part_of.get(i) == "train" for i in part_of):
        raise ExportError(
            f"{len(part_of)} dialogue(s) are too few for val_fraction={val_fraction} and "
            f"test_fraction={test_fraction}; add data or lower the fractions"
        )

    teacher_run = None
    if teacher:
        # The teacher sees the train dialogues only: held-out targets stay gold, and a test
        # dialogue never reaches the teacher's LM.
        from csc.finetune.teacher import TeacherError, run_teacher

        train = [d for d in read() if part_of.get(d.id) == "train"]
        held_out = [i for i, name in part_of.items() if name != "train"]
        try:
            teacher_run = run_teacher(
                teacher,
                train,
                out,
                framework=fw,
                language=lang,
                data_sha256=sha,
                lm=teacher_lm,
                lm_factory=lm_factory,
                concurrency=concurrency,
                held_out_ids=held_out,
                progress=progress,
            )
        except TeacherError as exc:
            raise ExportError(str(exc)) from None
        del train

    # Pass 2: rows straight to one Arrow file per split, written where `save_to_disk` would
    # put them, in a staging folder next to --out. (Writing a Dataset and then calling
    # save_to_disk would copy every row through memory-mapped pages: RSS grows with the data.)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.export-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    final = staging / "dataset"
    builder = SFTRowBuilder(fw, lang, prompt)
    features = _features()
    for split in SPLITS:
        (final / split).mkdir(parents=True)
    writers = {s: ArrowWriter(features=features, path=str(final / s / _SHARD)) for s in SPLITS}
    counts = {split: SplitCounts() for split in SPLITS}
    skipped = disagreeing = dropped = 0
    bar = tqdm(
        total=len(part_of), desc="Exporting dialogues", unit="dialogue", disable=not progress
    )
    try:
        for dialogue in read():
            split = part_of.get(dialogue.id)
            if split is None:
                continue  # not in the given splits (made from fewer dialogues)
            rows, turn_counts = builder.rows(
                dialogue,
                task,
                targets=targets,
                teacher=teacher_run if split == "train" else None,
                drop_disagreeing=drop_disagreeing,
            )
            skipped += turn_counts.skipped
            disagreeing += turn_counts.disagreeing
            dropped += turn_counts.dropped_disagreeing
            c = counts[split]
            c.dialogues += 1
            for row in rows:
                writers[split].write(row)
                c.rows += 1
                c.strategy_rows += row["task"] == "strategy"
                c.response_rows += row["task"] == "response"
            bar.update(1)
        for writer in writers.values():
            writer.finalize()
        bar.close()
        if counts["train"].rows == 0 and targets == "teacher":
            raise ExportError(
                f"{data}: no train rows are left from the teacher's outputs "
                f"({dropped} disagreeing turn(s) dropped); keep them (no --drop-disagreeing) "
                "or use --targets both"
            )
        if counts["train"].rows == 0:
            raise ExportError(
                f"{data}: the train split has no labelled supporter turns; SFT needs turns "
                "with a strategy label (relabel the data or check --framework)"
            )
        kept = {s: c for s, c in counts.items() if s == "train" or c.dialogues}
        saved = [s for s, c in kept.items() if c.rows]
        for split in SPLITS:
            if split in saved:
                _write_split_metadata(final / split, features)
            else:
                shutil.rmtree(final / split)
        (final / "dataset_dict.json").write_text(json.dumps({"splits": saved}), "utf-8")
        parts.write(final / SPLITS_FILE)
        metadata = {
            "data_file": str(data.resolve()),
            "data_sha256": sha,
            "format": format,
            "framework": fw.name,
            "framework_source": fw.source,
            "language": lang,
            "task": task,
            "seed": parts.seed,
            "val_fraction": parts.fractions.get("validation", val_fraction),
            "test_fraction": parts.fractions.get("test", test_fraction),
            "limit": limit,
            "splits": SPLITS_FILE,
            "splits_from": str(splits) if splits is not None else None,
            "counts": {k: vars(v) for k, v in kept.items()},
            "skipped_turns": skipped,
            "split_dialogue_ids": {k: list(parts.parts[k]) for k in SPLITS},
            "prompt": prompt,
            "prompts": f"csc.programs.supporter zero-shot Supporter (prompt={prompt}), ChatAdapter",
            # Where the train rows' answers come from; validation and test rows are gold.
            "targets": targets,
            "teacher": teacher_run.metadata if teacher_run else None,
            "drop_disagreeing": drop_disagreeing,
            "disagreeing_turns": disagreeing,
            "dropped_disagreeing_turns": dropped,
            # The one-time cost of making this data (the teacher's calls; 0 for gold targets).
            "cost": _export_cost(teacher_run, time.perf_counter() - started),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (final / EXPORT_METADATA).write_text(
            json.dumps(metadata, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
        if (out / TEACHER_DIR).is_dir():
            # Teacher outputs (this teacher's and any earlier one's) survive the swap. Copied,
            # not moved: a crash before the swap still leaves them in OUT to resume from.
            shutil.copytree(out / TEACHER_DIR, final / TEACHER_DIR)
        # Swap the finished export in; an earlier one (allowed by --overwrite) goes last.
        old = out.parent / f".{out.name}.replaced-{os.getpid()}"
        if out.exists():
            os.replace(out, old)
        os.replace(final, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        bar.close()
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(out, kept, skipped, metadata, disagreeing, dropped)


def _export_cost(teacher_run: TeacherOutputs | None, seconds: float) -> dict[str, Any]:
    """Tokens and time spent making the data: the teacher's calls (summed over the runs that
    made its outputs) and this export's wall time."""
    meta = teacher_run.metadata if teacher_run else {}
    usage = meta.get("lm_usage") or {}
    return {
        "wall_time_s": round(seconds, 2),
        "teacher_wall_time_s": meta.get("wall_time_s", 0.0),
        "prompt_tokens": meta.get("prompt_tokens", 0),
        "completion_tokens": meta.get("completion_tokens", 0),
        "lm_calls_this_run": usage.get("calls", 0),
        # Turns answered by an earlier, interrupted run: their tokens are in the sums above,
        # their time is not in wall_time_s.
        "teacher_turns_from_earlier_runs": meta.get("turns_from_earlier_runs", 0),
        "cost_usd_this_run": usage.get("cost_usd", 0.0),
    }


def write_split_dialogues(result: ExportResult, split: str, path: str | Path) -> int:
    """Write the dialogues of one split (e.g. ``test``) as JSONL, to evaluate on held-out data."""
    from csc.data.io import read_dialogues, write_dialogues

    meta = result.metadata
    wanted = set(meta["split_dialogue_ids"].get(split, []))
    if not wanted:
        raise ExportError(f"the export has no {split!r} split; set its fraction above 0")
    target = Path(path).resolve()
    if target == Path(meta["data_file"]).resolve() or target.is_relative_to(
        result.out_dir.resolve()
    ):
        raise ExportError(
            f"{path}: would overwrite the input data or the export; choose another file"
        )
    source = read_dialogues(meta["data_file"], meta["format"], framework=meta["framework_source"])
    return write_dialogues((d for d in source if d.id in wanted), path)


_SHARD = "data-00000-of-00001.arrow"


def _write_split_metadata(split_dir: Path, features: Any) -> None:
    """``state.json`` and ``dataset_info.json`` as ``Dataset.save_to_disk`` writes them for one
    shard, so ``datasets.load_from_disk`` reads the folder (checked by the export tests)."""
    from dataclasses import asdict

    from datasets import DatasetInfo
    from datasets.fingerprint import generate_random_fingerprint

    state = {
        "_data_files": [{"filename": _SHARD}],
        "_fingerprint": generate_random_fingerprint(),
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    (split_dir / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), "utf-8")
    info = asdict(DatasetInfo(features=features))
    (split_dir / "dataset_info.json").write_text(
        json.dumps(info, indent=2, sort_keys=True), "utf-8"
    )


def _features() -> Any:
    from datasets import Features, List, Value

    return Features(
        {
            "dialogue_id": Value("string"),
            "turn": Value("int32"),
            "strategy": Value("string"),
            "gold_strategy": Value("string"),
            "target_source": Value("string"),
            "task": Value("string"),
            "messages": List({"role": Value("string"), "content": Value("string")}),
        }
    )
