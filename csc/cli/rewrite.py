"""``csc rewrite``: raw support dialogues -> strategy-annotated ones (the CSConv pipeline)."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import typer

from csc.choices import OutputFormat
from csc.cli import common
from csc.framework import Language


def register(app: typer.Typer) -> None:
    """Add ``csc rewrite`` (and ``csc rewrite merge``) to the app."""

    rewrite_app = typer.Typer(add_completion=False)
    app.add_typer(rewrite_app, name="rewrite")

    @rewrite_app.command(
        "merge", epilog="Example: csc rewrite merge runs/rw0 runs/rw1 runs/rw2 --out runs/rw"
    )
    def merge(
        sources: list[Path] = typer.Argument(..., help="Run folders to combine (e.g. shards)."),
        out: Path = typer.Option(..., "--out", help="The combined run folder (new, or a merge)."),
    ) -> None:
        """Combine shard folders of one rewrite run (same file, flags and seed) into one.

        Each input record appears once and summary.json counts the combined folder; the result
        is an ordinary run folder that `csc rewrite --out OUT` with the same flags resumes.
        """
        from csc.programs.rewrite_run import RunConfigError, merge_rewrite_runs

        with common.user_errors(RunConfigError):
            summary = merge_rewrite_runs(out, sources)
        c, merged = summary["counts"], summary["merged"]
        typer.echo(
            f"merged {len(sources)} folder(s) (shards {', '.join(merged['shards'])}"
            f"{'' if merged['all_shards'] else '; NOT all shards of the run'}) -> {out}: "
            f"{c['kept']} kept, {c['rejected']} rejected, {c['dropped']} dropped, "
            f"{c['failed']} failed"
        )

    @rewrite_app.callback(
        invoke_without_command=True,
        epilog="Example: csc rewrite --data raw.json --mapping raw.yaml --lm local --out runs/rewrite",
    )
    def rewrite(
        ctx: typer.Context,
        data: Path | None = typer.Option(
            None, "--data", help="Raw dialogues (any format csc data reads). Required."
        ),
        out: Path | None = typer.Option(
            None, "--out", help="Run folder (created; re-run to resume). Required."
        ),
        from_format: str | None = typer.Option(
            None,
            "--from",
            help="Input format: dianjin, jsonl, hf or generic (default: from the path).",
        ),
        mapping: Path | None = common.MappingOption,
        to: OutputFormat = typer.Option(
            "jsonl",
            "--to",
            help="Also write kept dialogues as DianJin JSON (dianjin); jsonl is always written.",
        ),
        format_alias: OutputFormat | None = typer.Option(None, "--format", hidden=True),
        lang: Language | None = common.LangOption,
        framework: str = common.FrameworkOption,
        limit: int | None = common.LimitOption,
        concurrency: int = common.concurrency_option(4, "Dialogues processed at the same time."),
        shard: str | None = typer.Option(
            None,
            "--shard",
            help="Rewrite only shard I of N (I/N, 0-based: every N-th input record from I); N "
            "processes with the same flags together make the unsharded run. Combine with "
            "`csc rewrite merge`.",
        ),
        lm: str | None = common.LMOption,
        lm_prefilter: str | None = common.role_lm_option("prefilter", "LLM pre-filter"),
        lm_rewriter: str | None = common.role_lm_option("rewriter"),
        lm_judge: str | None = common.role_lm_option("judge", "post-filter judge"),
        lm_labeler: str | None = common.role_lm_option("labeler", "strategy labeler (utilization)"),
        api_base: str | None = common.ApiBaseOption,
        config: Path | None = common.ConfigOption,
        temperature: float = typer.Option(
            0.7, "--temperature", min=0.0, help="Sampling temperature."
        ),
        seed: int = typer.Option(0, "--seed", help="Run seed (sampling ids)."),
        recipe: Path | None = typer.Option(
            None,
            "--recipe",
            help="YAML with rule thresholds (keys: min_turns, max_turns, customer_ratio, "
            "short_customer_chars, min_long_customer_share, max_utterance_chars, "
            "system_patterns); flags win.",
        ),
        min_turns: int | None = typer.Option(
            None, "--min-turns", help="Rule: at least N turns (3)."
        ),
        max_turns: int | None = typer.Option(
            None, "--max-turns", help="Rule: at most N turns (30)."
        ),
        customer_ratio: float | None = typer.Option(
            None, "--customer-ratio", help="Rule: drop when R x customer <= supporter turns (2)."
        ),
        short_customer_chars: int | None = typer.Option(
            None, "--short-customer-chars", help="Rule: a customer turn of <= N chars is short (3)."
        ),
        min_long_customer_share: float | None = typer.Option(
            None,
            "--min-long-customer-share",
            help="Rule: drop when fewer customer turns than this share are long (0.7).",
        ),
        max_utterance_chars: int | None = typer.Option(
            None, "--max-utterance-chars", help="Rule: drop when a turn is longer (500)."
        ),
        min_utterances: int = typer.Option(
            10, "--min-utterances", min=1, help="Post-filter: at least N rewritten utterances."
        ),
        max_utterances: int = typer.Option(
            50, "--max-utterances", min=1, help="Post-filter: at most N rewritten utterances."
        ),
        no_redact: bool = typer.Option(
            False, "--no-redact", help="Send raw text to the LMs (PII redaction off)."
        ),
        no_prefilter: bool = typer.Option(False, "--no-prefilter", help="Skip the LLM pre-filter."),
        no_judge: bool = typer.Option(False, "--no-judge", help="Skip the post-filter judge."),
        no_utilization: bool = typer.Option(
            False, "--no-utilization", help="Skip labelling turns before/after (saves LM calls)."
        ),
        labeler: Path | None = typer.Option(
            None,
            "--labeler",
            help="A saved labeler program (csc optimize --program labeler) for utilization.",
        ),
        turn_tokens: str = typer.Option(
            "auto",
            "--turn-tokens",
            help="Completion-token limits per role: auto (embedded LMs only), none, or a number.",
        ),
        progress: bool = typer.Option(
            True, "--progress/--no-progress", help="Show a progress bar."
        ),
    ) -> None:
        """Rewrite raw support dialogues into strategy-annotated ones (CSConv pipeline).

        Stages: clean + rule pre-filter -> PII redaction -> LLM pre-filter -> rewriter ->
        post-filter (notes stripped, 10-50 utterances, LLM judge) -> utilization before/after.
        Results stream to OUT/dialogues.jsonl (rejected.jsonl, dropped.jsonl, failures.jsonl,
        summary.json); re-running the same command resumes. `--shard I/N` runs one of N
        shards; `csc rewrite merge DIR... --out OUT` combines them.
        """
        if ctx.invoked_subcommand is not None:
            return
        if data is None or out is None:
            common.fail("--data and --out are required: the raw dialogues and the run folder")
        import yaml

        from csc.data.errors import DataFormatError
        from csc.data.io import read_dialogues
        from csc.framework import Framework, FrameworkError
        from csc.lm import LMConfigError, lm_for_role, lm_name
        from csc.programs.rewrite import EMBEDDED_TOKEN_BUDGETS, REWRITE_ROLES, RewritePipeline
        from csc.programs.rewrite_run import (
            DIANJIN_FILE,
            RewriteConfig,
            RewriteRun,
            RunConfigError,
            read_run,
        )
        from csc.programs.rule_filter import RuleFilterConfig

        to = format_alias or to
        common.require_path(data)
        if min_utterances > max_utterances:
            common.fail("--min-utterances must not exceed --max-utterances")
        from csc.programs.run_folder import ShardError, parse_shard

        with common.user_errors(ShardError):
            shard_spec = parse_shard(shard)

        rule_values: dict = {}
        if recipe is not None:
            try:
                loaded = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError) as exc:
                common.fail(f"{recipe}: cannot read the recipe ({exc})")
            if not isinstance(loaded, dict):
                common.fail(f"{recipe}: a recipe must be a YAML mapping of rule thresholds")
            rule_values.update(loaded.get("rules", loaded))
        flags = {
            "min_turns": min_turns,
            "max_turns": max_turns,
            "customer_ratio": customer_ratio,
            "short_customer_chars": short_customer_chars,
            "min_long_customer_share": min_long_customer_share,
            "max_utterance_chars": max_utterance_chars,
        }
        rule_values.update({k: v for k, v in flags.items() if v is not None})
        try:
            rules = RuleFilterConfig(**rule_values)
        except Exception as exc:  # pydantic ValidationError: name the setting
            first = getattr(exc, "errors", lambda: [{}])()[0]
            name = ".".join(str(p) for p in first.get("loc", ())) or "rules"
            flag = "--" + name.replace("_", "-") if name in flags else name
            common.fail(f"rule setting {flag}: {first.get('msg', exc)}")

        with common.user_errors(FrameworkError):
            fw = Framework.load(framework)

        def dialogues():
            # Called inside the error handlers below: reading starts (and may fail) there.
            yield from islice(
                read_dialogues(
                    data, from_format, framework=fw, mapping=mapping, allow_unlabelled=True
                ),
                limit,
            )

        # Validate the whole input (up to --limit) before any LM call: a malformed record stops
        # the run with the same error as `csc data validate`, and the count sizes the bar.
        total = 0
        sample_texts: list[str] = []
        with common.user_errors(DataFormatError):
            for d in dialogues():
                total += 1
                if len(sample_texts) < 400:
                    sample_texts.extend(t.text for t in d.turns)
        if total == 0:
            common.fail(f"{data}: no dialogues to rewrite")
        from csc.eval.metrics import detect_language

        language = lang or detect_language(sample_texts)

        labeler_program = None
        if labeler is not None:
            from csc.optimizers.store import ProgramStoreError, load_program
            from csc.programs.supporter import StrategyLabeler

            with common.user_errors(ProgramStoreError):
                labeler_program, meta = load_program(labeler, framework=fw)
            if not isinstance(labeler_program, StrategyLabeler):
                common.fail(
                    f"{labeler}: a {meta['kind']} program, not a labeler; compile one with "
                    "csc optimize --program labeler"
                )
            if meta.get("language") != language:
                common.fail(
                    f"{labeler}: compiled for language {meta.get('language')!r}, data is {language!r}"
                )

        roles = {
            "prefilter": lm_prefilter,
            "rewriter": lm_rewriter,
            "judge": lm_judge,
            "labeler": lm_labeler,
        }
        settings = common.resolve_lm_settings(config, lm, api_base, temperature, roles)
        skipped = {"prefilter": no_prefilter, "judge": no_judge, "labeler": no_utilization}
        active = [r for r in REWRITE_ROLES if not skipped.get(r)]
        described = settings.describe()
        # What the run's config and its pipeline share.
        stages = dict(
            rules=rules,
            redact=not no_redact,
            prefilter=not no_prefilter,
            judge=not no_judge,
            utilization=not no_utilization,
            min_utterances=min_utterances,
            max_utterances=max_utterances,
            temperature=temperature,
            token_budgets=common.token_budgets(
                turn_tokens, settings, active, EMBEDDED_TOKEN_BUDGETS
            ),
        )
        run_config = RewriteConfig(
            data=str(data.resolve()),
            framework=fw.name,
            framework_digest=RewriteConfig.framework_digest_of(fw),
            language=language,
            seed=seed,
            lms={r: described.get(r, "") for r in active},
            labeler=str(labeler) if labeler else None,
            **stages,
        )
        cache: dict = {}
        errors = (LMConfigError, FileNotFoundError, ImportError)
        with common.user_errors(*errors, prefix="cannot build the LM: "):
            lms = {r: lm_for_role(settings, r, cache, connections=concurrency) for r in active}
        pipeline = RewritePipeline(fw, language, labeler=labeler_program, lms=lms, **stages)
        run = RewriteRun(out, run_config, pipeline, lm_names={r: lm_name(lms[r]) for r in active})
        if no_redact:
            common.warn(
                "warning: --no-redact: raw text, personal data included, goes to the LMs and "
                "the output files"
            )
        if shard_spec is not None:  # every N-th record from I
            total = len(range(shard_spec[0], total, shard_spec[1]))
        typer.echo(
            f"run {run.key} -> {out}  ({total} dialogues, {fw.name}, {language}, "
            f"concurrency {concurrency}{f', shard {shard}' if shard_spec else ''})"
        )
        # DataFormatError: the file changed since it was validated.
        with common.user_errors(RunConfigError, DataFormatError):
            summary = run.run(
                dialogues(),
                total=total,
                concurrency=concurrency,
                progress=progress,
                shard=shard_spec,
            )

        if to == "dianjin":
            from csc.data.io import write_dialogues

            write_dialogues(read_run(out, "kept"), out / DIANJIN_FILE, "dianjin", framework=fw)
        c = summary["counts"]
        typer.echo(
            f"in {c['in']}: dropped {c['dropped']} (rules {sum(c['dropped_by_rule'].values())}, "
            f"pre-filter {c['dropped_by_prefilter']}), rewritten {c['rewritten']}, rejected "
            f"{c['rejected']}, kept {c['kept']}, failed {c['failed']}"
        )
        u = summary["utilization"]
        before, after = u.get("before_all_rewritten"), u.get("after_kept")
        if before or after:
            fmt = lambda x: "-" if not x or x["share"] is None else f"{x['share']:.1%}"  # noqa: E731
            typer.echo(f"strategy utilization: before {fmt(before)} -> after (kept) {fmt(after)}")
        typer.echo(f"summary: {out / 'summary.json'}")
        if c["failed"]:
            typer.secho(
                f"{c['failed']} dialogue(s) failed; see {out / 'failures.jsonl'}. Re-run the same "
                "command to retry them.",
                fg="yellow",
            )
