"""Options and helpers shared by several ``csc`` commands (LM flags, error reporting)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import typer

from csc.choices import EvalSplit
from csc.framework import Language
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
LangOption = typer.Option(None, "--lang", help="Default: detected from the data.")
DataFormatOption = typer.Option(
    None, "--from", help="Input format: dianjin, jsonl or hf (default: from the path)."
)
ContextOption = typer.Option("both", "--context", help="ref, gen or both.")
LimitOption = typer.Option(
    None, "--limit", min=1, help="Read only the first N dialogues of the data file."
)
SplitOption = typer.Option(
    None,
    "--split",
    help="test: the held-out dialogues (those of --splits, else the seeded split "
    "of --seed). Default: test with --splits, else all.",
)
SplitSeedOption = typer.Option(0, "--seed", help="Seed of the train/dev/test split.")
SplitsOption = typer.Option(
    None,
    "--splits",
    help="splits.json written by `csc finetune export` (or its folder): use exactly its test "
    "dialogues; the data must be the file it was made from.",
)
AllowSeenOption = typer.Option(
    False,
    "--allow-seen",
    help="Score a fine-tuned or optimized supporter even on dialogues its metadata says it "
    "was trained or compiled on.",
)


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


class EvaluationData(NamedTuple):
    """What ``csc evaluate`` / ``csc compare`` score: the dialogues and where they came from."""

    framework: Any
    dialogues: list[Any]
    language: str
    data_sha256: str
    split: str


def load_evaluation_dialogues(
    data: Path,
    data_format: str | None,
    framework: str,
    split: EvalSplit | None,
    seed: int,
    lang: Language | None,
    *,
    limit: int | None = None,
    splits: Path | None = None,
) -> EvaluationData:
    """Read the dialogues a command evaluates, before any LM is built.

    Shared by ``csc evaluate`` and ``csc compare`` so both select the same examples: the first
    ``limit`` dialogues of the file, and of those with ``split="test"`` the held-out ones,
    taken from a splits file (``csc finetune export`` writes one) or else from the seeded split
    that ``csc optimize`` and ``csc finetune export`` make of the same dialogues. Exits with a
    clear error on bad input: unreadable data, repeated dialogue ids, splits of other data.
    """
    from itertools import islice

    from csc.data.errors import DataFormatError
    from csc.data.io import read_dialogues
    from csc.eval.examples import dialogue_language, split_dialogues
    from csc.eval.splits import DatasetSplits, SplitsError, data_sha256
    from csc.framework import Framework, FrameworkError

    split = split or ("test" if splits is not None else "all")
    if not data.exists():
        fail(f"{data}: no such file or folder")
    if splits is not None and split != "test":
        fail("--splits selects held-out dialogues: use it with --split test")
    try:
        fw = Framework.load(framework)
        dialogues = list(islice(read_dialogues(data, data_format, framework=fw), limit))
    except (DataFormatError, FrameworkError) as exc:
        fail(str(exc))
    check_unique_ids(dialogues, data)
    sha = data_sha256(data)
    if split == "test":
        if splits is not None:
            try:
                parts = DatasetSplits.read(splits)
                parts.check_data(data, sha)
                dialogues = parts.select(dialogues, "test", complete=limit is None)
            except SplitsError as exc:
                fail(str(exc))
        else:
            dialogues = split_dialogues(dialogues, seed=seed).test
    if not dialogues:
        fail(f"{data}: no dialogues to evaluate")
    return EvaluationData(fw, dialogues, lang or dialogue_language(dialogues), sha, split)


def check_unique_ids(dialogues: list[Any], data: Path) -> None:
    """Exit with an error naming a repeated dialogue id (results are keyed by id)."""
    seen: dict[str, int] = {}
    for index, dialogue in enumerate(dialogues):
        if dialogue.id in seen:
            fail(
                f"{data}: dialogue id {dialogue.id!r} occurs more than once (records "
                f"{seen[dialogue.id] + 1} and {index + 1}); results are keyed by dialogue id, "
                "so give every dialogue its own id (`csc data validate` lists them all)"
            )
        seen[dialogue.id] = index
