"""``csc compare``: evaluate several supporters on the same examples; one table and one chart."""

from __future__ import annotations

from pathlib import Path

import typer

from csc.choices import EvalSplit
from csc.cli import common
from csc.framework import Language


def register(app: typer.Typer) -> None:
    """Add the ``compare`` command."""

    @app.command(
        "compare",
        epilog="Example: csc compare --data t.jsonl --supporter a=zero-shot --supporter b=direct",
    )
    def compare(
        data: Path = common.DataOption,
        supporter: list[str] = typer.Option(
            ...,
            "--supporter",
            help="NAME=SPEC, repeatable; SPEC is zero-shot | direct | optimized:PATH.json | "
            "finetuned:DIR (e.g. --supporter ft=finetuned:runs/ft).",
        ),
        lm: str | None = common.LMOption,
        api_base: str | None = common.ApiBaseOption,
        config: Path | None = common.ConfigOption,
        framework: str = common.FrameworkOption,
        lang: Language | None = common.LangOption,
        data_format: str | None = common.DataFormatOption,
        context: str = common.ContextOption,
        limit: int | None = common.LimitOption,
        split: EvalSplit | None = common.SplitOption,
        splits: Path | None = common.SplitsOption,
        seed: int = common.SplitSeedOption,
        allow_seen: bool = common.AllowSeenOption,
        max_tokens: int | None = common.MaxTokensOption,
        num_threads: int = common.concurrency_option(4, "Concurrent requests per supporter."),
        no_bertscore: bool = typer.Option(False, "--no-bertscore", help="Skip BERTScore."),
        bertscore_model: str | None = typer.Option(
            None, "--bertscore-model", help="Local model folder for BERTScore."
        ),
        out: Path = typer.Option(Path("compare_out"), "--out", help="Output folder."),
    ) -> None:
        """Compare supporters on the same examples: quality metrics and cost in one table.

        Reports B-2, B-4, R-L, BS, ACC, macro-F1, mean tokens and latency per supporter turn for
        each supporter and context, where its knowledge came from (none, prompt demos, gold SFT,
        teacher SFT) and the tokens and seconds it took to make (optimization, or data export
        plus training); writes compare.md, compare.csv, compare.json, compare.png.
        """
        from csc.eval.compare import (
            CompareError,
            compare_supporters,
            markdown_table,
            parse_supporter_args,
            write_comparison,
        )
        from csc.eval.harness import normalize_contexts
        from csc.eval.report import write_report
        from csc.lm import LMConfigError
        from csc.optimizers.store import ProgramStoreError

        with common.user_errors(ValueError, CompareError):
            normalize_contexts(context)
            supporters = parse_supporter_args(supporter)
        fw, dialogues, language, _, split = common.load_evaluation_dialogues(
            data, data_format, framework, split, seed, lang, limit=limit, splits=splits
        )
        settings = common.resolve_lm_settings(config, lm, api_base)
        base = settings.spec_for("supporter").merged({"max_tokens": max_tokens})

        def save_each(name: str, spec: str, result: object) -> None:
            # Each supporter's full report (predictions, per-strategy scores) next to the table.
            write_report(result, out / "supporters" / name, {"supporter": spec, "data": str(data)})

        typer.echo(
            f"comparing {', '.join(supporters)} on {data} ({len(dialogues)} dialogues, "
            f"{language}, split {split}); default LM {base.model}"
        )
        with common.user_errors(ValueError, ProgramStoreError, LMConfigError, FileNotFoundError):
            comparison = compare_supporters(
                dialogues,
                supporters,
                lm=base,
                context=context,
                framework=fw,
                language=language,
                num_threads=num_threads,
                allow_seen=allow_seen,
                cache_dir=out / "cache",
                with_bertscore=not no_bertscore,
                bertscore_model=bertscore_model,
                on_result=save_each,
            )
        splits_name = str(splits) if splits else None
        comparison.info.update(
            data=str(data), split=split, splits=splits_name, seed=seed, limit=limit
        )
        files = write_comparison(comparison, out)
        typer.echo(markdown_table(comparison))
        from csc.usage import Usage, format_usage

        for name in supporters:
            rows = [r for r in comparison.rows if r.supporter == name and r.lm_usage]
            spent = sum((Usage.from_dict(r.lm_usage) for r in rows), Usage())
            typer.echo(f"{name}: {format_usage(spent)}")
        typer.echo(f"wrote {', '.join(str(p) for p in files.values())}")
