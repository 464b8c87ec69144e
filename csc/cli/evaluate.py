"""``csc evaluate``: score a supporter under the reference and generated context."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import typer

from csc.choices import EvalSplit
from csc.cli import common
from csc.framework import Language


def register(app: typer.Typer) -> None:
    @app.command(
        "evaluate",
        epilog="Example: csc evaluate --data data/samples/sample_en.json --split test",
    )
    def evaluate(
        data: Path = common.DataOption,
        supporter: str = typer.Option(
            "zero-shot",
            "--supporter",
            help="zero-shot | direct (no-strategy ablation) | optimized:PATH.json | finetuned:DIR.",
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
        num_threads: int = common.concurrency_option(
            4, "Concurrent requests (turns in ref, dialogues in gen)."
        ),
        bertscore_model: str | None = typer.Option(
            None,
            "--bertscore-model",
            help="Local model folder for BERTScore (default: offline all-MiniLM-L6-v2).",
        ),
        no_bertscore: bool = typer.Option(False, "--no-bertscore", help="Skip BERTScore."),
        bleu_tokenize: str | None = typer.Option(
            None, "--bleu-tokenize", help="sacrebleu tokenizer (default: zh or 13a by language)."
        ),
        max_tokens: int | None = common.MaxTokensOption,
        out: Path = typer.Option(Path("eval_out"), "--out", help="Output folder."),
        shard: str | None = typer.Option(
            None,
            "--shard",
            help="Evaluate only shard I of N (I/N, 0-based: every N-th dialogue from I). Shards "
            "may share one --out (each caches its own file); the same command without --shard "
            "then scores all of them from the cache, with no LM call.",
        ),
    ) -> None:
        """Evaluate a supporter: BLEU-2/4, ROUGE-L, BERTScore, strategy ACC and macro-F1.

        Writes metrics.json, predictions.jsonl, report.md and PNG plots to --out. Finished
        predictions are cached under OUT/cache, so re-running the same command resumes.
        """
        import dspy

        from csc.eval.harness import (
            SeenDialoguesError,
            check_unseen,
            evaluate_supporter,
            normalize_contexts,
            supporter_from_spec,
        )
        from csc.eval.report import write_report
        from csc.eval.splits import data_sha256
        from csc.framework import FrameworkError
        from csc.lm import LMConfigError, build_lm, lm_name
        from csc.optimizers.store import ProgramStoreError
        from csc.programs.run_folder import ShardError, parse_shard, shard_label

        with common.user_errors(ValueError, ShardError):
            contexts = normalize_contexts(context)
            shard_spec = parse_shard(shard)
        fw, dialogues, language, sha, split = common.load_evaluation_dialogues(
            data, data_format, framework, split, seed, lang, limit=limit, splits=splits
        )

        with common.user_errors(ValueError, ProgramStoreError, FrameworkError):
            chosen = supporter_from_spec(supporter, framework=fw, language=language)
        if not allow_seen:
            with common.user_errors(SeenDialoguesError):
                check_unseen(chosen, dialogues)
        program = chosen.program
        if getattr(program, "framework", fw) != fw and chosen.metadata:
            common.warn(
                f"note: {supporter} was compiled for framework "
                f"{chosen.metadata.get('framework')!r}; using it"
            )
        settings = common.resolve_lm_settings(config, chosen.lm_spec or lm, api_base)
        spec = settings.spec_for("supporter").merged({"max_tokens": max_tokens})
        errors = (LMConfigError, FileNotFoundError, OSError)
        with common.user_errors(*errors, prefix=f"cannot build the LM {spec.model!r}: "):
            client = build_lm(spec, connections=num_threads)

        # Caches are keyed by everything that changes predictions, so a different run in the
        # same --out never reuses them.
        key_parts = {
            "supporter": supporter,
            "program": data_sha256(Path(supporter.split(":", 1)[1]))
            if supporter.startswith("optimized:")
            else None,
            "lm": spec.model_dump(exclude={"api_key_env"}),
            "data": sha,
            "framework": fw.to_dict(),
            "language": language,
            "split": split,
            "seed": seed,
        }
        key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
        cache_dir = out / "cache" / key
        typer.echo(
            f"evaluating {supporter} on {data} ({len(dialogues)} dialogues, {language}) with "
            f"{lm_name(client)}; contexts: {', '.join(contexts)}"
        )
        from csc.eval.text_metrics import default_bertscore_model

        info = {
            "supporter": supporter,
            "supporter_metadata": chosen.metadata or None,
            "lm": spec.describe(),
            "data": str(data),
            "data_sha256": sha,
            "framework": fw.name,
            "split": split,
            "splits": str(splits) if splits is not None else None,
            "seed": seed,
            "limit": limit,
            "selection": (
                f"every supporter turn of {len(dialogues)} dialogues"
                + (f" (of the first {limit} in the file)" if limit else "")
                + (f", split {split}" if split != "all" else "")
            ),
            "num_threads": num_threads,
            "shard": shard_label(shard_spec),
            "bertscore_model": None
            if no_bertscore
            else f"{bertscore_model or default_bertscore_model()}",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        start = time.perf_counter()

        def write_partial(partial) -> None:  # type: ignore[no-untyped-def]
            # Each finished context is written at once, so a long generated-context run
            # leaves the reference-context results on disk.
            info["seconds"] = round(time.perf_counter() - start, 2)
            info["contexts_done"] = list(partial.contexts)
            write_report(partial, out, info)

        # RuntimeError: e.g. the BERTScore model cannot be loaded.
        with dspy.context(lm=client), common.user_errors(RuntimeError):
            result = evaluate_supporter(
                program,
                dialogues,
                context=contexts,
                framework=fw,
                language=language,
                num_threads=num_threads,
                cache_dir=cache_dir,
                bleu_tokenize=bleu_tokenize,
                bertscore_model=bertscore_model,
                with_bertscore=not no_bertscore,
                on_context_done=write_partial,
                shard=shard_spec,
            )
        info["seconds"] = round(time.perf_counter() - start, 2)
        files = write_report(result, out, info)
        _print_table(result)
        typer.echo(f"wrote {', '.join(str(p) for p in files.values())}")


def _print_table(result) -> None:  # type: ignore[no-untyped-def]
    from rich.console import Console
    from rich.table import Table

    from csc.usage import Usage, format_usage

    table = Table(title="Supporter evaluation (%)")
    cols = ["bleu2", "bleu4", "rougeL", "bertscore", "acc", "macro_f1"]
    cols += ["strategy_fallbacks", "strategy_parse_errors", "n_examples"]
    headers = {"strategy_fallbacks": "fallbacks", "strategy_parse_errors": "unparsed"}
    table.add_column("context")
    for col in cols:
        table.add_column(headers.get(col, col), justify="right")
    for name, metrics in result.metrics.items():
        table.add_row(name, *(_cell(metrics.get(col)) for col in cols))
    Console().print(table)
    for name, res in result.contexts.items():
        typer.echo(f"{name}: {format_usage(Usage.from_dict(res.metrics.get('lm_usage') or {}))}")


def _cell(value: object) -> str:
    return "n/a" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)
