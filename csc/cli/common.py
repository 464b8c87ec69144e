"""Options and helpers shared by several ``csc`` commands (LM flags, error reporting)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

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


def concurrency_option(default: int, help: str) -> Any:
    """``--concurrency`` / ``-c``: how many LM calls (or dialogues) run at once."""
    return typer.Option(default, "--concurrency", "-c", min=1, help=help)


def role_lm_option(role: str, what: str | None = None) -> Any:
    """``--lm-ROLE``: the LM of one role (``what``, default: the role's name), over ``--lm``."""
    return typer.Option(None, f"--lm-{role}", help=f"LM of the {what or role.replace('-', ' ')}.")


MaxTokensOption = typer.Option(
    None, "--max-tokens", min=1, help="Completion limit per LM call (overrides config)."
)

# Options shared by the commands that read a dialogue dataset.
DataOption = typer.Option(
    ..., "--data", help="Dialogues: JSONL, DianJin .json/.parquet, or an HF dataset folder."
)
FrameworkOption = typer.Option("csc", "--framework", help="csc, esc or a framework YAML.")
LangOption = typer.Option(None, "--lang", help="Default: detected from the data.")
DataFormatOption = typer.Option(
    None, "--from", help="Input format: dianjin, jsonl or hf (default: from the path)."
)
MappingOption = typer.Option(
    None,
    "--mapping",
    help="Mapping YAML for another corpus (or 'esconv'); implies the generic format.",
)
UnlabelledOption = typer.Option(
    False,
    "--allow-unlabelled",
    help="Accept supporter turns without a strategy label (default: an error).",
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


def fail(message: str, code: int = 1) -> NoReturn:
    """Print an error in red on stderr, on one line and without credentials, and exit."""
    from csc.lm import redact_secrets

    text = " ".join(redact_secrets(str(message)).split())
    if len(text) > 1500:  # a huge field quoted in a message: keep the file and the fix
        text = f"{text[:900]} [...] {text[-400:]}"
    typer.secho(f"error: {text}", fg="red", err=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    """A note or warning that does not stop the command: one yellow line on stderr."""
    typer.secho(message, fg="yellow", err=True)


@contextmanager
def user_errors(*types: type[BaseException], prefix: str = "") -> Iterator[None]:
    """Turn expected user-facing exceptions into a clean error message (after ``prefix``) and
    exit code 1."""
    try:
        yield
    except types as exc:
        fail(f"{prefix}{exc}")


def require_path(path: Path) -> None:
    """Exit with an error when a path the user gave does not exist."""
    if not path.exists():
        fail(f"{path}: no such file or folder")


def token_budgets(value: str, settings: LMSettings, roles: list[str], embedded: dict) -> dict:
    """Per-role ``max_tokens`` from ``--turn-tokens``: ``auto`` (the ``embedded`` budgets, for
    roles on an embedded LM only), ``none``, or one number (at least 16) for every role."""
    from csc.lm import split_scheme

    if value == "none":
        return {}
    if value == "auto":
        # Small embedded models fill every text field to the engine's bound; remote LMs
        # (possibly reasoning models) must not be cut short, so they get no limit.
        return {
            r: embedded[r]
            for r in roles
            if split_scheme(settings.spec_for(r).model)[0] in ("local", "finetuned")
        }
    try:
        cap = int(value)
    except ValueError:
        fail(f"--turn-tokens must be auto, none or a number, got {value!r}")
    if cap < 16:
        fail("--turn-tokens must be at least 16")
    return dict.fromkeys(roles, cap)


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
    require_path(data)
    if splits is not None and split != "test":
        fail("--splits selects held-out dialogues: use it with --split test")
    with user_errors(DataFormatError, FrameworkError):
        fw = Framework.load(framework)
        dialogues = list(islice(read_dialogues(data, data_format, framework=fw), limit))
    check_unique_ids(dialogues, data)
    sha = data_sha256(data)
    if split == "test":
        if splits is not None:
            with user_errors(SplitsError):
                parts = DatasetSplits.read(splits)
                parts.check_data(data, sha)
                dialogues = parts.select(dialogues, "test", complete=limit is None)
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
