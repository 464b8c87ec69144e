"""``csc synthesize``: run RoleCS over a topic x profile grid into a resumable run folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from csc.choices import Executor, OutputFormat
from csc.cli import common
from csc.framework import Language


def register(app: typer.Typer) -> None:
    """Add ``csc synthesize`` to the app."""

    synth_app = typer.Typer(add_completion=False)
    app.add_typer(synth_app, name="synthesize")

    @synth_app.command(
        "merge", epilog="Example: csc synthesize merge runs/s0 runs/s1 runs/s2 --out runs/all"
    )
    def merge(
        sources: list[Path] = typer.Argument(..., help="Run folders to combine (e.g. shards)."),
        out: Path = typer.Option(..., "--out", help="The combined run folder (new, or a merge)."),
        framework: str | None = typer.Option(
            None, "--framework", help="Framework YAML, when the run used one (default: by name)."
        ),
    ) -> None:
        """Combine shard folders of one run (same flags and seed) into one run folder.

        Each dialogue appears once; summary.json lists every invocation of every shard, and
        stats.json / stats_all.json are computed over the combined dialogues. The result is an
        ordinary run folder: `csc synthesize --out OUT` with the same flags resumes it.
        """
        from rich.console import Console

        from csc.framework import Framework, FrameworkError
        from csc.programs.synthesis import RunConfigError, merge_runs

        with common.user_errors(RunConfigError):
            summary = merge_runs(out, sources)
        run_info = json.loads((out / "run.json").read_text(encoding="utf-8"))
        config = run_info.get("config") or {}
        try:
            fw = Framework.load(framework or config.get("framework", "csc"))
        except FrameworkError as exc:
            common.fail(f"{exc}; pass the run's framework YAML with --framework")
        from csc.programs.run_folder import digest

        if config.get("framework_digest") and digest(fw.to_dict()) != config["framework_digest"]:
            common.fail(
                f"framework {fw.name!r} differs from the one the run used; pass the run's "
                "framework YAML with --framework"
            )
        _write_stats(out, fw, not config.get("filter", True), int(config.get("seed", 0)))
        totals, merged = summary["totals"], summary["merged"]
        Console().print(
            f"merged {len(sources)} folder(s) (shards {', '.join(merged['shards'])}"
            f"{'' if merged['all_shards'] else '; NOT all shards of the run'}) -> {out}: "
            f"{totals['kept']} kept, {totals['rejected']} rejected, {totals['failed']} failed, "
            f"{totals['missing']} missing; {totals['invocations']} invocation(s)."
        )

    @synth_app.callback(
        invoke_without_command=True,
        epilog="Example: csc synthesize -n 3 --lm local --max-utterances 12 --out runs/syn",
    )
    def synthesize(
        ctx: typer.Context,
        out: Path | None = typer.Option(
            None, "--out", help="Run folder (created; re-run to resume). Required."
        ),
        dialogues: int | None = typer.Option(
            None, "--dialogues", "-n", help="How many dialogues (default: the whole grid)."
        ),
        profiles: Path | None = typer.Option(
            None, "--profiles", help="Profile pool JSONL (default: the built-in pool)."
        ),
        topics: list[str] | None = typer.Option(
            None,
            "--topics",
            help="Topics: built-in codes/names, comma-separated or repeated, a topics .yaml/.txt "
            "file, or free text (default: the 7 built-in topics).",
        ),
        language: Language = typer.Option("en", "--lang", help="Dialogue language."),
        framework: str = common.FrameworkOption,
        lm: str | None = common.LMOption,
        lm_planner: str | None = common.role_lm_option("planner"),
        lm_supporter_assistant: str | None = common.role_lm_option("supporter-assistant"),
        lm_supporter: str | None = common.role_lm_option("supporter"),
        lm_customer_assistant: str | None = common.role_lm_option("customer-assistant"),
        lm_customer: str | None = common.role_lm_option("customer"),
        lm_judge: str | None = common.role_lm_option("judge", "quality judge"),
        api_base: list[str] | None = typer.Option(
            None,
            "--api-base",
            help="Base URL of an OpenAI-compatible server (vLLM, SGLang, Ollama); repeat it for "
            "several servers of the same model, balanced with retry on another one.",
        ),
        config: Path | None = common.ConfigOption,
        concurrency: int = common.concurrency_option(4, "Dialogues synthesized at the same time."),
        seed: int = typer.Option(0, "--seed", help="Run seed: grid order and sampling ids."),
        max_utterances: int = typer.Option(
            50, "--max-utterances", min=3, help="Utterance limit per dialogue (closing included)."
        ),
        min_utterances: int = typer.Option(
            6,
            "--min-utterances",
            min=0,
            help="Ignore a customer's goodbye before this many utterances (0: off).",
        ),
        temperature: float = typer.Option(
            0.7, "--temperature", min=0.0, help="Sampling temperature of every agent."
        ),
        no_filter: bool = typer.Option(
            False,
            "--no-filter",
            help="Skip the quality judge: every finished dialogue goes to dialogues.jsonl.",
        ),
        format: OutputFormat = typer.Option(
            "jsonl",
            "--to",
            help="Output format: jsonl (always written), or dianjin to also write DianJin JSON.",
        ),
        show: int = typer.Option(1, "--show", min=0, help="Print this many finished dialogues."),
        shard: str | None = typer.Option(
            None,
            "--shard",
            help="Run only shard I of N (I/N, 0-based) of the grid; N processes or machines with "
            "the same flags and seed together make the unsharded run. Combine with "
            "`csc synthesize merge`.",
        ),
        executor: Executor = typer.Option(
            "local",
            "--executor",
            help="Where dialogues run: local (threads in this process) or ray (the grid's shards "
            "as Ray tasks; results are written here). Ray: pip install 'dspy-csc[ray]'.",
        ),
        ray_address: str | None = typer.Option(
            None,
            "--ray-address",
            help="With --executor ray: the cluster to use (e.g. 10.0.0.1:6379 from `ray start "
            "--head`; default: a local one for the length of the run).",
        ),
        lm_cache: bool = typer.Option(
            False,
            "--lm-cache",
            help="Keep DSPy's response cache for remote LMs (off by default: every synthesis call "
            "is unique, and the cache's disk writes cost time on each call).",
        ),
        turn_tokens: str = typer.Option(
            "auto",
            "--turn-tokens",
            help="Completion-token limits per role: auto (limits for embedded local/finetuned "
            "LMs only), none, or a number that caps every role.",
        ),
        program: Path | None = typer.Option(
            None,
            "--program",
            help="Compiled supporter agents (PROGRAM.json from `csc optimize --program rolecs`) "
            "to run instead of the default prompts; its path and sha256 go to summary.json.",
        ),
    ) -> None:
        """Synthesize strategy-labelled support dialogues with the five RoleCS agents.

        Finished dialogues stream to OUT/dialogues.jsonl (judge-rejected ones to
        OUT/rejected.jsonl, failures to OUT/failures.jsonl); re-running the same command resumes.
        `--shard I/N` runs one of N shards; `csc synthesize merge DIR... --out OUT` combines them.
        `--program P.json` runs the supporter agents compiled by `csc optimize --program rolecs`.
        """
        if ctx.invoked_subcommand is not None:
            return
        if out is None:
            common.fail("--out is required: the run folder (created; re-run the command to resume)")
        from rich.console import Console
        from rich.markup import escape

        from csc.data.profiles import ProfileError, default_profiles, read_profiles
        from csc.data.topics import TopicError, resolve_topics
        from csc.eval.stats import render_stats
        from csc.framework import Framework, FrameworkError
        from csc.lm import AGENT_ROLES, LMConfigError, lm_for_role, lm_name
        from csc.programs.ray_executor import RayUnavailableError, import_ray
        from csc.programs.rolecs import EMBEDDED_TOKEN_BUDGETS
        from csc.programs.synthesis import (
            DIANJIN_FILE,
            RunConfigError,
            ShardError,
            SynthesisConfig,
            SynthesisRun,
            parse_shard,
        )

        if dialogues is not None and dialogues < 1:
            common.fail("--dialogues must be at least 1")
        with common.user_errors(ShardError):
            shard_spec = parse_shard(shard)
        if executor == "ray":
            with common.user_errors(RayUnavailableError):
                import_ray()
        elif ray_address:
            common.fail("--ray-address goes with --executor ray")
        with common.user_errors(FrameworkError, ProfileError, TopicError):
            fw = Framework.load(framework)
            pool = read_profiles(profiles) if profiles else default_profiles(language)
            chosen_topics = resolve_topics(topics)
        roles = {
            "planner": lm_planner,
            "supporter_assistant": lm_supporter_assistant,
            "supporter": lm_supporter,
            "customer_assistant": lm_customer_assistant,
            "customer": lm_customer,
            "judge": lm_judge,
        }
        bases = list(api_base or [])
        settings = common.resolve_lm_settings(
            config, lm, bases[0] if len(bases) == 1 else (bases or None), temperature, roles
        )
        described = settings.describe()
        active_roles = [r for r in AGENT_ROLES if r != "judge" or not no_filter]
        budgets = common.token_budgets(turn_tokens, settings, active_roles, EMBEDDED_TOKEN_BUDGETS)
        program_sha256 = _check_program(program, fw, language) if program else None
        run_config = SynthesisConfig.build(
            framework=fw,
            language=language,
            topics=chosen_topics,
            profiles=pool,
            seed=seed,
            max_utterances=max_utterances,
            temperature=temperature,
            filter=not no_filter,
            # The run key names the models, not the endpoints serving them: shards on machines
            # that reach the same model through different servers still make one run.
            lms={role: model.split(" @ ", 1)[0] for role, model in described.items()},
            token_budgets=budgets,
            min_utterances=min(min_utterances, max_utterances),
            program_sha256=program_sha256,
        )
        console = Console()
        cache: dict = {}
        errors = (LMConfigError, FileNotFoundError, ImportError)
        with common.user_errors(*errors, prefix="cannot build the LM: "):
            lms = {
                r: lm_for_role(settings, r, cache, connections=concurrency) for r in active_roles
            }
        names = {role: lm_name(lms[role]) for role in active_roles}
        from csc.throughput import (
            memoize_model_metadata,
            reuse_type_adapters,
            without_response_cache,
        )

        # CSC_THROUGHPUT_FIXES=0 (benchmarks/synthesis_scale.py --baseline) measures without them.
        if os.environ.get("CSC_THROUGHPUT_FIXES", "1") != "0":
            memoize_model_metadata()
            reuse_type_adapters()
        if not lm_cache:
            for role_lm in lms.values():
                without_response_cache(role_lm)
        errors = (RunConfigError, ValueError, KeyError)
        with common.user_errors(
            *errors, prefix=f"--program {program}: cannot load it into RoleCS: "
        ):
            run = SynthesisRun(out, run_config, fw, pool, lms=lms, lm_names=names, program=program)
        ray_note = f", on Ray at {ray_address}" if ray_address else ", on Ray"
        console.print(
            f"run {run.key} -> {out}  ({fw.name}, {language}, {len(chosen_topics)} topics x "
            f"{len(pool)} profiles, seed {seed}, concurrency {concurrency}"
            + (f", shard {shard}" if shard_spec else "")
            + (f", program {program}" if program else "")
            + (ray_note if executor == "ray" else "")
            + ")"
        )
        outcomes = None
        if executor == "ray":
            from csc.lm import literal_url_secrets
            from csc.programs.ray_executor import ray_outcomes

            written = literal_url_secrets(settings)
            if written:
                common.fail(
                    "--executor ray sends the LM settings to every Ray worker, and "
                    f"{', '.join(written)} holds a password or key written out. Write it as a "
                    "reference to an environment variable the workers have, in single quotes: "
                    "--api-base 'http://user:${CSC_API_PASSWORD}@host/v1', and export "
                    "CSC_API_PASSWORD here and on the workers"
                )

            # What a worker needs to rebuild the run: no key travels (LMSettings names the
            # variables that hold them; each worker reads its own environment).
            recipe = {
                "config": run_config.model_dump(mode="json"),
                "framework": fw.to_dict(),
                "profiles": [p.model_dump(mode="json", exclude_none=True) for p in pool],
                "lm_settings": settings.model_dump(mode="json"),
                "roles": active_roles,
                "program": Path(program).read_bytes() if program else None,
            }
            outcomes = ray_outcomes(recipe, address=ray_address)
        # RayUnavailableError: the cluster cannot be reached.
        with common.user_errors(RunConfigError, RayUnavailableError):
            summary = run.run(
                dialogues,
                concurrency=concurrency,
                shard=shard_spec,
                keep_history=False,
                outcomes=outcomes,
            )

        stats, stats_all = _write_stats(out, fw, no_filter, seed)
        n_kept, n_judged = stats["dialogues"], stats_all["dialogues"]
        if format == "dianjin":
            from csc.data.io import write_dialogues

            write_dialogues(
                _run_dialogues(out, "kept"), out / DIANJIN_FILE, "dianjin", framework=fw
            )

        this = summary["this_run"]
        console.print(
            f"done: {this['kept']} kept, {this['rejected']} rejected, {this['failed']} failed, "
            f"{this['already_done']} already done; {this['wall_seconds']:.0f} s "
            f"({this['dialogues_per_minute'] or 0:.2f} dialogues/min). In {out}: "
            f"{summary['totals']['kept']} kept, {summary['totals']['rejected']} rejected, "
            f"{summary['totals']['missing']} still missing."
        )
        from csc.usage import Usage, format_usage

        console.print(format_usage(Usage.from_dict(this["lm_usage"])), markup=False)
        if this["failed"]:
            console.print(
                f"[yellow]{this['failed']} dialogue(s) failed; see {out / 'failures.jsonl'}. "
                "Re-run the same command to retry them.[/yellow]"
            )
        if n_kept or not n_judged:
            console.print(render_stats(stats, title=f"Statistics of {out / 'dialogues.jsonl'}"))
        else:
            title = f"Statistics of all {n_judged} finished dialogues (none kept)"
            console.print(render_stats(stats_all, title=title))
        from itertools import islice

        status = "kept" if n_kept else "rejected"
        for d in islice(_run_dialogues(out, "kept" if n_kept else "all"), show):
            console.rule(f"{d.id} ({status}) - {d.topic}")
            if d.scenario:
                console.print(f"[dim]scenario: {escape(d.scenario)}[/dim]")
            for t in d.turns:
                who = "Supporter" if t.is_supporter else "Customer"
                tag = f" [{t.strategy}]" if t.strategy else ""
                console.print(f"[bold]{who}{escape(tag)}:[/bold] {escape(t.text)}", highlight=False)


def _check_program(path: Path, fw, language: str) -> str:
    """The SHA-256 of a saved RoleCS agents program, after checking it fits the run."""
    from csc.eval.splits import data_sha256
    from csc.optimizers.store import ProgramStoreError, read_metadata

    with common.user_errors(ProgramStoreError):
        meta = read_metadata(path)
    if meta["kind"] != "rolecs":
        common.fail(
            f"--program {path}: a {meta['kind']} program; csc synthesize runs the RoleCS "
            "supporter agents: compile them with `csc optimize --program rolecs`"
        )
    framework = str(meta.get("framework"))
    if framework not in (fw.name, fw.source):
        common.fail(
            f"--program {path}: compiled for framework {framework!r}, the run uses {fw.name!r}; "
            "pass the same --framework"
        )
    if meta.get("language") != language:
        common.fail(
            f"--program {path}: compiled for --lang {meta.get('language')}, the run uses "
            f"--lang {language}; pass the same --lang"
        )
    return data_sha256(path)


def _run_dialogues(out: Path, which: str):
    """The run folder's dialogues, read lazily: ``kept`` or ``all`` (kept, then rejected)."""
    from csc.dialogue import Dialogue
    from csc.programs.run_folder import read_records
    from csc.programs.synthesis import KEPT_FILE, REJECTED_FILE

    for name in [KEPT_FILE] if which == "kept" else [KEPT_FILE, REJECTED_FILE]:
        for obj in read_records(out / name):
            yield Dialogue.model_validate(obj)


def _write_stats(out: Path, fw, no_filter: bool, seed: int):
    """Write stats.json (kept) and stats_all.json (kept + rejected) of a run folder in streaming
    passes (memory does not grow with the run); returns (stats, stats_all)."""
    from csc.eval.stats import dialogue_stats
    from csc.programs.synthesis import STATS_ALL_FILE, STATS_FILE

    def judged():
        return None if no_filter else _run_dialogues(out, "all")

    # stats_all: the same statistics over every finished dialogue, kept or rejected: with a weak
    # judge (or LM) few pass the filter, and the rejected ones still say what the agents produce.
    results = []
    for which, name in (("kept", STATS_FILE), ("all", STATS_ALL_FILE)):
        stats = dialogue_stats(_run_dialogues(out, which), fw, judged=judged(), seed=seed)
        (out / name).write_text(json.dumps(stats, ensure_ascii=False, indent=2), "utf-8")
        results.append(stats)
    return tuple(results)
