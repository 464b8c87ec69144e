"""Options and helpers shared by several ``csc`` commands (LM flags, error reporting)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from csc.lm import LMConfigError, LMSettings, load_lm_settings

LM_HELP = (
    "LM spec: 'local' (embedded SmolLM2), 'local:PATH', 'finetuned:DIR', or a LiteLLM model "
    "string such as openai/gpt-4o-mini (overrides csc.toml and $CSC_LM)."
)
LMOption = typer.Option(None, "--lm", help=LM_HELP)
ApiBaseOption = typer.Option(
    None, "--api-base", help="Base URL of an OpenAI-compatible server (vLLM, SGLang, Ollama)."
)
ConfigOption = typer.Option(
    None,
    "--config",
    # "\\[" keeps rich markup from reading "[lm]" as a style tag and dropping it from --help.
    help="csc.toml / csc.yaml with an \\[lm] section (default: ./csc.toml, $CSC_CONFIG).",
)

# Options shared by the commands that read an evaluation dataset (evaluate, compare).
FrameworkOption = typer.Option("csc", "--framework", help="csc, esc or a framework YAML.")
LangOption = typer.Option(None, "--lang", help="en or zh (default: detected from the data).")
DataFormatOption = typer.Option(
    None, "--from", help="Input format: dianjin, jsonl or hf (default: from the path)."
)
ContextOption = typer.Option("both", "--context", help="ref, gen or both.")
LimitOption = typer.Option(
    None, "--limit", min=1, help="Only the first N supporter turns, in dialogue order."
)
SplitOption = typer.Option(
    "all", "--split", help="all, or test: the seeded held-out dialogues (see --seed)."
)
SplitSeedOption = typer.Option(0, "--seed", help="Seed of the train/dev/test split.")


def resolve_lm_settings(
    config: Path | None = None,
    lm: str | None = None,
    api_base: str | None = None,
    temperature: float | None = None,
    roles: dict[str, str | None] | None = None,
) -> LMSettings:
    """LM settings from the config file, the environment and CLI flags; exits with a clear error."""
    try:
        return load_lm_settings(
            config,
            overrides={"model": lm, "api_base": api_base, "temperature": temperature},
            role_overrides=roles,
        )
    except LMConfigError as exc:
        fail(str(exc))
        raise AssertionError from None  # unreachable


def fail(message: str, code: int = 1) -> None:
    """Print an error in red on stderr, on one line and without credentials, and exit."""
    from csc.lm import redact_secrets

    text = " ".join(redact_secrets(str(message)).split())
    if len(text) > 1500:  # a huge field quoted in a message: keep the file and the fix
        text = f"{text[:900]} [...] {text[-400:]}"
    typer.secho(f"error: {text}", fg="red", err=True)
    raise typer.Exit(code)


@contextmanager
def user_errors(*types: type[BaseException]) -> Iterator[None]:
    """Turn expected user-facing exceptions into a clean error message and exit code 1."""
    try:
        yield
    except types as exc:
        fail(str(exc))


def echo_json(data: Any) -> None:
    import json

    typer.echo(json.dumps(data, ensure_ascii=False, indent=2))


def load_evaluation_dialogues(
    data: Path,
    data_format: str | None,
    framework: str,
    split: str,
    seed: int,
    lang: str | None,
) -> tuple[Any, list[Any], str]:
    """Read the dialogues a command evaluates: ``(framework, dialogues, language)``.

    Shared by ``csc evaluate`` and ``csc compare`` so both select the same examples: the whole
    file, or with ``split="test"`` the seeded held-out dialogues that ``csc optimize`` and
    ``csc finetune export`` leave out. Exits with a clear error on bad input.
    """
    from csc.data.errors import DataFormatError
    from csc.data.io import read_dialogues
    from csc.eval.examples import dialogue_language, split_dialogues
    from csc.framework import Framework, FrameworkError

    if split not in ("all", "test"):
        fail("--split must be all or test")
    if lang not in (None, "en", "zh"):
        fail("--lang must be en or zh")
    if not data.exists():
        fail(f"{data}: no such file or folder")
    try:
        fw = Framework.load(framework)
        dialogues = list(read_dialogues(data, data_format, framework=fw))
    except (DataFormatError, FrameworkError) as exc:
        fail(str(exc))
    if split == "test":
        dialogues = split_dialogues(dialogues, seed=seed).test
    if not dialogues:
        fail(f"{data}: no dialogues to evaluate")
    return fw, dialogues, lang or dialogue_language(dialogues)
