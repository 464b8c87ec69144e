"""Save and load compiled supporter programs: JSON state plus a metadata sidecar.

``save_program(program, "p.json", metadata)`` writes ``p.json`` (``program.save``: JSON state
only, never a pickle) and ``p.meta.json`` (program kind, framework, language, optimizer, LMs,
scores). ``load_program("p.json")`` rebuilds the right module from the sidecar and calls
``program.load``. Saved state is checked for secrets before it is written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import dspy

from csc.framework import Framework
from csc.programs.rolecs_agents import RoleCSAgents
from csc.programs.supporter import DirectSupporter, StrategyLabeler, StrategyPredictor, Supporter

__all__ = ["PROGRAM_KINDS", "ProgramStoreError", "load_program", "save_program", "sidecar_path"]

PROGRAM_KINDS: dict[str, type[dspy.Module]] = {
    "strategy": StrategyPredictor,
    "supporter": Supporter,
    "direct": DirectSupporter,
    "labeler": StrategyLabeler,
    "rolecs": RoleCSAgents,
}
# Keys whose values must never reach a saved program (LiteLLM / provider credentials).
_SECRET_KEY = re.compile(
    r"^(.*api[_-]?key|.*secret.*|password|authorization|((access|auth|bearer|api)[_-]?)?token)$",
    re.I,
)


class ProgramStoreError(ValueError):
    """A saved program or its sidecar is missing, malformed or unsafe."""


def sidecar_path(path: str | Path) -> Path:
    """``program.json`` -> ``program.meta.json``."""
    path = Path(path)
    return path.with_name(path.stem + ".meta.json")


def _find_secrets(obj: Any, where: str = "") -> list[str]:
    found: list[str] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            here = f"{where}.{key}" if where else str(key)
            if _SECRET_KEY.search(str(key)) and value not in (None, "", "EMPTY"):
                found.append(here)
            found.extend(_find_secrets(value, here))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            found.extend(_find_secrets(value, f"{where}[{i}]"))
    return found


def save_program(program: dspy.Module, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Save ``program``'s JSON state to ``path`` and ``metadata`` to the sidecar.

    ``metadata`` must hold ``kind`` (a key of :data:`PROGRAM_KINDS`), ``framework`` and
    ``language``.
    Raises :class:`ProgramStoreError` when the state would contain a credential.
    """
    path = Path(path)
    if path.suffix != ".json":
        raise ProgramStoreError(f"{path}: save compiled programs as .json (JSON state only)")
    missing = [k for k in ("kind", "framework", "language") if k not in metadata]
    if missing:
        raise ProgramStoreError(f"metadata for {path} lacks {missing}")
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    state = json.loads(path.read_text(encoding="utf-8"))
    leaks = _find_secrets(state) + _find_secrets(metadata)
    if leaks:
        path.unlink()
        raise ProgramStoreError(
            f"refusing to save {path}: credentials found at {leaks}; keep API keys in "
            "environment variables (api_key_env), not on LM objects attached to predictors"
        )
    sidecar_path(path).write_text(
        json.dumps(metadata, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The sidecar metadata of a saved program."""
    meta_path = sidecar_path(path)
    if not Path(path).is_file():
        raise ProgramStoreError(f"{path}: no such program file (write one with `csc optimize`)")
    if not meta_path.is_file():
        raise ProgramStoreError(
            f"{meta_path}: sidecar missing; it records the program kind, framework and language "
            f"of {path}. Re-run `csc optimize` or write it with csc.optimizers.store.save_program"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ProgramStoreError(f"{meta_path}: not valid JSON: {exc}") from None
    if meta.get("kind") not in PROGRAM_KINDS:
        raise ProgramStoreError(
            f"{meta_path}: 'kind' is {meta.get('kind')!r}; expected one of {list(PROGRAM_KINDS)}"
        )
    return meta


def load_program(
    path: str | Path, *, framework: Framework | str | None = None
) -> tuple[dspy.Module, dict[str, Any]]:
    """Rebuild a saved program from its sidecar and load its JSON state.

    ``framework`` overrides the sidecar's framework name (e.g. a framework YAML that moved).
    """
    meta = read_metadata(path)
    cls = PROGRAM_KINDS[meta["kind"]]
    program = cls(framework or meta["framework"], meta["language"])
    try:
        program.load(str(path))
    except (KeyError, ValueError, json.JSONDecodeError) as exc:
        raise ProgramStoreError(
            f"{path}: does not match a {meta['kind']} program of framework "
            f"{meta['framework']!r}: {type(exc).__name__}: {exc}"
        ) from None
    return program, meta


def as_supporter(program: dspy.Module) -> dspy.Module:
    """A full supporter from a saved program: a compiled strategy predictor gets a zero-shot
    responder of the same framework and language; RoleCS agents (``rolecs``) choose the strategy
    with the supporter assistant and reply with the supporter."""
    if isinstance(program, StrategyPredictor):
        supporter = Supporter(program.framework, program.language)
        supporter.strategist = program.strategist
        return supporter
    return program
