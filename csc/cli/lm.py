"""``csc lm check``: make one real call to the configured LM."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from csc.cli import common
from csc.lm import ROLES, LMConfigError, build_lm


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Check and inspect language-model configuration.", no_args_is_help=True
    )
    app.add_typer(group, name="lm")

    @group.command("check", epilog="Example: csc lm check --lm openai/gpt-4o-mini")
    def check(
        lm: str = common.LMOption,
        api_base: str = common.ApiBaseOption,
        config: Path = common.ConfigOption,
        role: str = typer.Option(
            None, "--role", help=f"Check the LM of one role: {', '.join(ROLES)}."
        ),
        prompt: str = typer.Option(
            "Greet a customer who has just opened a support chat, in one sentence.",
            "--prompt",
            help="The message to send.",
        ),
        max_tokens: int = typer.Option(48, "--max-tokens", help="Completion length limit."),
    ) -> None:
        """Send one prompt to the LM and print the model, answer, latency and token usage."""
        settings = common.resolve_lm_settings(config, lm, api_base)
        spec = settings.spec_for(role)
        with common.user_errors(LMConfigError, FileNotFoundError):
            client = build_lm(spec.merged({"max_tokens": max_tokens}))
        start = time.perf_counter()
        try:
            outputs = client(prompt)
        except Exception as exc:
            common.fail(f"LM call to {spec.model} failed: {type(exc).__name__}: {exc}")
        latency = time.perf_counter() - start
        text = outputs[0] if outputs else ""
        if isinstance(text, dict):
            text = text.get("text", "")
        usage = (
            client.history[-1].get("usage") if getattr(client, "history", None) else None
        ) or {}
        typer.echo(f"model:      {spec.describe()}")
        typer.echo(f"answer:     {str(text).strip()}")
        typer.echo(f"latency:    {latency:.2f} s")
        typer.echo(
            f"tokens:     prompt {usage.get('prompt_tokens', '?')}, "
            f"completion {usage.get('completion_tokens', '?')}"
        )

    @group.command("show", epilog="Example: csc lm show --config csc.toml")
    def show(
        lm: str = common.LMOption,
        api_base: str = common.ApiBaseOption,
        config: Path = common.ConfigOption,
    ) -> None:
        """Print the effective LM of every role (no secrets)."""
        settings = common.resolve_lm_settings(config, lm, api_base)
        for role, model in settings.describe().items():
            typer.echo(f"{role:<20} {model}")
