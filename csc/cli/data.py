"""``csc data convert`` and ``csc data validate``: move dialogues between formats and check them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from csc.cli import common
from csc.data.dianjin import LabelStyle

FORMAT_HELP = "dianjin (.json/.parquet, released format), jsonl (ours), hf (saved dataset folder)"


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group."""
    group = typer.Typer(
        help="Convert and validate dialogue datasets (DianJin, JSONL, Hugging Face, generic).",
        no_args_is_help=True,
    )
    app.add_typer(group, name="data")

    @group.command(
        "convert", epilog="Example: csc data convert data/samples/sample_zh.json sample_zh.jsonl"
    )
    def convert(
        source: Path = typer.Argument(..., help="Input file or dataset folder."),
        target: Path = typer.Argument(..., help="Output file or dataset folder."),
        from_format: str | None = typer.Option(
            None, "--from", help=f"Input format: {FORMAT_HELP}, generic. Default: from the path."
        ),
        to_format: str | None = typer.Option(
            None, "--to", help=f"Output format: {FORMAT_HELP}. Default: from the path."
        ),
        framework: str = common.FrameworkOption,
        mapping: Path | None = common.MappingOption,
        labels: LabelStyle = typer.Option(
            "official",
            "--labels",
            help="Strategy labels in dianjin output: official (策略5 情感管理), name or code.",
        ),
        with_ids: bool = typer.Option(
            False, "--with-ids", help="Add an 'id' field to dianjin output records."
        ),
        allow_unlabelled: bool = common.UnlabelledOption,
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Replace OUT if it already exists."
        ),
    ) -> None:
        """Convert dialogues from one format to another, streaming, with a progress bar."""
        from tqdm import tqdm

        from csc.data.hf import is_saved_dataset
        from csc.data.io import DataFormatError, detect_format, read_dialogues, write_dialogues
        from csc.framework import FrameworkError

        if source.resolve() == target.resolve():
            common.fail(f"{target}: input and output are the same path; choose another output")
        if target.exists() and not overwrite:
            common.fail(f"{target}: already exists; pass --overwrite to replace it")
        with common.user_errors(DataFormatError, FrameworkError):
            out_format = to_format or detect_format(target, for_writing=True)
        if target.is_dir() and out_format != "hf" and not is_saved_dataset(target):
            common.fail(
                f"{target}: is a folder; --overwrite replaces a file, not a folder — give a file "
                f"path for {out_format} output"
            )
        with common.user_errors(DataFormatError, FrameworkError), _writing(target):
            dialogues = read_dialogues(
                source,
                from_format,
                framework=framework,
                mapping=mapping,
                allow_unlabelled=allow_unlabelled,
            )
            # Progress goes to stderr and hides itself when stderr is not a terminal.
            bar = tqdm(dialogues, desc=f"converting {source.name}", unit=" dialogues", disable=None)
            with bar:
                count = write_dialogues(
                    bar,
                    target,
                    to_format,
                    framework=framework,
                    labels=labels,
                    include_ids=with_ids,
                )
        counts = getattr(dialogues, "counts", None)  # a generic mapping's drops and merges
        note = _counts_note(counts) if counts is not None else ""
        typer.echo(f"wrote {count} dialogues to {target}{f' ({note})' if note else ''}")

    @group.command("validate", epilog="Example: csc data validate data/samples/sample_zh.json")
    def validate(
        file: Path = typer.Argument(..., help="Dialogue file or dataset folder to check."),
        from_format: str | None = typer.Option(
            None, "--from", help=f"Input format: {FORMAT_HELP}, generic. Default: from the path."
        ),
        framework: str = common.FrameworkOption,
        mapping: Path | None = common.MappingOption,
        allow_unlabelled: bool = common.UnlabelledOption,
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Read every dialogue, stop at the first malformed record, and print a summary.

        Duplicate dialogue ids are reported too (evaluation and splits key dialogues by id).
        """
        from tqdm import tqdm

        from csc.data.io import DataFormatError, read_dialogues
        from csc.framework import Framework, FrameworkError

        with common.user_errors(DataFormatError, FrameworkError):
            fw = Framework.load(framework)
            dialogues = read_dialogues(
                file, from_format, framework=fw, mapping=mapping, allow_unlabelled=allow_unlabelled
            )
            bar = tqdm(dialogues, desc=f"checking {file.name}", unit=" dialogues", disable=None)
            with bar:
                summary = DataSummary.of(bar)
        if summary.dialogues == 0:
            common.fail(f"{file}: no dialogues found; is it empty?")
        if summary.duplicate_ids:
            common.fail(f"{file}: {summary.describe_duplicates()}")
        report = {"file": str(file), "framework": fw.name, "valid": True, **summary.to_dict(fw)}
        counts = getattr(dialogues, "counts", None)  # a generic mapping's drops and merges
        if counts is not None:
            report["mapping"] = counts.to_dict()
        if as_json:
            common.echo_json(report)
        else:
            _print_summary(report)


@contextmanager
def _writing(target: Path) -> Iterator[None]:
    """Turn a failed write (unwritable folder, a file where a folder should be) into one line."""
    try:
        yield
    except OSError as exc:
        where = exc.filename if exc.filename is not None else target
        common.fail(f"{target}: cannot write ({where}: {exc.strerror or exc})")


@dataclass
class DataSummary:
    """Counts over a stream of dialogues, gathered in one pass."""

    dialogues: int = 0
    turns: int = 0
    supporter_turns: int = 0
    customer_turns: int = 0
    unlabelled_supporter_turns: int = 0
    non_alternating: int = 0
    min_turns: int = 0
    max_turns: int = 0
    strategies: Counter[str] = field(default_factory=Counter)
    topics: Counter[str] = field(default_factory=Counter)
    # id -> 1-based record of its first use; evaluation and splits key dialogues by id.
    first_record: dict[str, int] = field(default_factory=dict)
    duplicate_ids: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def of(cls, dialogues: Iterable[Any]) -> DataSummary:
        """Summarize dialogues without keeping them."""
        s = cls()
        for d in dialogues:
            n = len(d.turns)
            s.min_turns = n if s.dialogues == 0 else min(s.min_turns, n)
            s.max_turns = max(s.max_turns, n)
            s.dialogues += 1
            s.turns += n
            first = s.first_record.setdefault(d.id, s.dialogues)
            if first != s.dialogues:
                s.duplicate_ids.setdefault(d.id, [first]).append(s.dialogues)
            supporter = [t for t in d.turns if t.is_supporter]
            s.supporter_turns += len(supporter)
            s.customer_turns += n - len(supporter)
            s.strategies.update(t.strategy for t in supporter if t.strategy)
            s.unlabelled_supporter_turns += sum(not t.strategy for t in supporter)
            s.non_alternating += not d.alternates()
            s.topics[d.topic or "(none)"] += 1
        return s

    def describe_duplicates(self, shown: int = 3) -> str:
        """One line naming the repeated dialogue ids and their records, and the fix."""
        items = list(self.duplicate_ids.items())
        parts = [
            f"{dialogue_id!r} (records {', '.join(map(str, records))})"
            for dialogue_id, records in items[:shown]
        ]
        more = f" and {len(items) - shown} more" if len(items) > shown else ""
        return (
            f"{len(items)} dialogue id(s) used more than once: {'; '.join(parts)}{more} — "
            "give every dialogue a unique id (evaluation and train/test splits key dialogues by id)"
        )

    def to_dict(self, framework: Any) -> dict[str, Any]:
        """Plain data for printing or JSON; strategies in framework order with names."""
        labelled = max(1, self.supporter_turns - self.unlabelled_supporter_turns)
        return {
            "dialogues": self.dialogues,
            "turns": self.turns,
            "supporter_turns": self.supporter_turns,
            "customer_turns": self.customer_turns,
            "unlabelled_supporter_turns": self.unlabelled_supporter_turns,
            "non_alternating_dialogues": self.non_alternating,
            "turns_per_dialogue": {
                "min": self.min_turns,
                "mean": round(self.turns / max(1, self.dialogues), 2),
                "max": self.max_turns,
            },
            "strategies": [
                {
                    "code": s.code,
                    "name": s.name,
                    "name_zh": s.name_zh,
                    "count": self.strategies[s.code],
                    "share": round(self.strategies[s.code] / labelled, 4),
                }
                for s in framework.strategies
            ],
            "topics": dict(self.topics.most_common()),
        }


def _print_summary(report: dict[str, Any]) -> None:
    per = report["turns_per_dialogue"]
    typer.secho(f"{report['file']}: valid ({report['framework']} framework)", fg="green", bold=True)
    for key in ["dialogues", "turns", "supporter_turns", "customer_turns"]:
        typer.echo(f"{key.replace('_', ' '):<28}{report[key]}")
    typer.echo(f"{'unlabelled supporter turns':<28}{report['unlabelled_supporter_turns']}")
    typer.echo(f"{'non-alternating dialogues':<28}{report['non_alternating_dialogues']}")
    typer.echo(f"{'turns per dialogue':<28}min {per['min']}, mean {per['mean']}, max {per['max']}")
    if "mapping" in report:
        typer.secho("\nread through the mapping", bold=True)
        m = report["mapping"]
        speakers = ", ".join(f"{k} {v}" for k, v in m["dropped_speakers"].items())
        for label, value in [
            ("rows (flat log)", m["rows"]),
            ("empty messages dropped", m["empty_messages_dropped"]),
            ("empty turns dropped", m["empty_turns_dropped"]),
            (
                "speaker turns dropped",
                m["speaker_turns_dropped"] and f"{m['speaker_turns_dropped']} ({speakers})",
            ),
            ("same-speaker turns merged", m["turns_merged"]),
            ("empty dialogues dropped", m["empty_dialogues_dropped"]),
        ]:
            typer.echo(f"  {label:<26}{value}")
    typer.secho("\nstrategies", bold=True)
    for s in report["strategies"]:
        typer.echo(
            f"  {s['code']:<4}{s['name']:<30}{s['name_zh']:<8}{s['count']:>8}  {s['share']:6.1%}"
        )
    typer.secho("\ntopics", bold=True)
    for topic, count in report["topics"].items():
        typer.echo(f"  {topic:<40}{count:>8}")


def _counts_note(counts: Any) -> str:
    """A generic mapping's drops and merges in a few words, for ``convert``'s last line."""
    counted = counts.to_dict().items()
    skip = ("rows", "dropped_speakers")
    return ", ".join(f"{n} {key.replace('_', ' ')}" for key, n in counted if n and key not in skip)
