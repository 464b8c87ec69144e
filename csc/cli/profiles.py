"""``csc profiles``: generate a de-duplicated customer-profile pool, or show one."""

from __future__ import annotations

from pathlib import Path

import typer

from csc.cli import common
from csc.framework import Language


def register(app: typer.Typer) -> None:
    """Add the ``csc profiles`` group to the app."""
    group = typer.Typer(help="Customer profiles for RoleCS synthesis.", no_args_is_help=True)
    app.add_typer(group, name="profiles")

    @group.command(
        "generate", epilog="Example: csc profiles generate -n 20 --template --out profiles.jsonl"
    )
    def generate(
        n: int = typer.Option(
            50, "--profiles", "-n", min=1, help="Profiles to sample before de-duplication."
        ),
        out: Path = typer.Option(Path("profiles.jsonl"), "--out", help="Output JSONL file."),
        lm: str | None = common.LMOption,
        api_base: str | None = common.ApiBaseOption,
        config: Path | None = common.ConfigOption,
        seed: int = typer.Option(0, "--seed", help="Seed of the attribute sampling."),
        threshold: float = typer.Option(
            0.85, "--threshold", min=0.0, max=1.0, help="Drop profiles above this MiniLM cosine."
        ),
        language: Language = typer.Option("en", "--lang", help="Description language."),
        template: bool = typer.Option(
            False, "--template", help="Describe profiles with templates only (no LM calls)."
        ),
        temperature: float = typer.Option(0.7, "--temperature", help="LM sampling temperature."),
        concurrency: int = common.concurrency_option(8, "LM requests in flight at once."),
    ) -> None:
        """Sample diverse attribute combinations, have the LM describe each in the second person
        (template fallback for unusable answers), and drop near-duplicates.
        """
        import dspy
        from tqdm import tqdm

        from csc.data.profiles import (
            ProfileError,
            generate_profiles,
            max_pairwise_similarity,
            write_profiles,
        )
        from csc.lm import LMConfigError, lm_for_role, split_scheme
        from csc.programs.profiles import lm_describer

        describer = None
        client = None
        if not template:
            settings = common.resolve_lm_settings(config, lm, api_base, temperature)
            errors = (LMConfigError, FileNotFoundError, ImportError)
            with common.user_errors(*errors, prefix="cannot build the LM: "):
                client = lm_for_role(settings, "planner")
            # Small embedded models fill text to the engine's bound; 3 sentences need ~120 tokens.
            embedded = split_scheme(settings.spec_for("planner").model)[0] in ("local", "finetuned")
            describer = lm_describer(
                language, temperature=temperature, max_tokens=160 if embedded else None
            )
        with (
            tqdm(total=n, desc="profiles", unit="profile") as bar,
            common.user_errors(ProfileError),
            dspy.context(lm=client) if client is not None else dspy.context(),
        ):
            pool = generate_profiles(
                n,
                seed=seed,
                language=language,
                describer=describer,
                threshold=threshold,
                progress=bar.update,
                concurrency=concurrency,
            )
        write_profiles(pool.profiles, out)
        worst = max_pairwise_similarity(pool.profiles)
        typer.echo(
            f"wrote {len(pool.profiles)} profiles to {out}; dropped {len(pool.dropped)} "
            f"near-duplicates (cosine > {threshold}); descriptions: {pool.lm_descriptions} by the "
            f"LM, {pool.template_descriptions} by template; max pairwise cosine {worst:.3f}"
        )

    @group.command("show", epilog="Example: csc profiles show --lang zh --limit 3")
    def show(
        file: Path | None = typer.Argument(None, help="Profile JSONL (default: built-in pool)."),
        language: Language = typer.Option("en", "--lang", help="Built-in pool language."),
        limit: int = typer.Option(5, "--limit", help="How many to print."),
    ) -> None:
        """Print profiles of a pool (the built-in one by default)."""
        from csc.data.profiles import ProfileError, default_profiles, read_profiles

        with common.user_errors(ProfileError):
            pool = read_profiles(file) if file else default_profiles(language)
        typer.echo(f"{len(pool)} profiles" + (f" in {file}" if file else " (built-in)"))
        for p in pool[:limit]:
            typer.echo(f"- {p.id}: {p.description}")
