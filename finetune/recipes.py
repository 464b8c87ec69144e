"""Training recipes: YAML files with ``model``, ``lora``, ``data`` and ``trainer`` sections.

A recipe is read into TRL's own :class:`trl.SFTConfig` and PEFT's :class:`peft.LoraConfig` (the
alignment-handbook habit), so every option those classes document can be set in YAML and nothing
is re-invented here. Example (the shipped default, ``smollm2-135m-lora``)::

    prompt: compact            # compact (student prompt) | full; must match the export
    model:
      name: local              # LM spec (local, local:<path>) or a Hugging Face model folder
      dtype: auto              # auto | float32 | bfloat16 | float16
    lora:                      # any peft.LoraConfig field
      r: 16
      lora_alpha: 32
      target_modules: all-linear
    data:
      loss: completion         # completion (assistant reply only) | assistant | full
    trainer:                   # any trl.SFTConfig field
      learning_rate: 2.0e-4
      max_steps: 60
    devices:                   # optional per-device overrides of the trainer section
      cpu: {per_device_train_batch_size: 4}
      cuda: {per_device_train_batch_size: 16}

Unknown keys are errors that name the recipe file, the section and the valid keys.
"""

from __future__ import annotations

import dataclasses
import difflib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from csc.choices import PromptVariant

DEFAULT_RECIPE = "smollm2-135m-lora"

# Keys the trainer section may not set: the training script owns where outputs go.
_RESERVED_TRAINER_KEYS = {"output_dir"}


class RecipeError(ValueError):
    """A recipe file is missing, malformed or names an unknown option."""


class ModelSection(BaseModel):
    """Which base model to fine-tune and in which precision to load it."""

    model_config = ConfigDict(extra="forbid")

    name: str = "local"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False


class DataSection(BaseModel):
    """How exported SFT rows become training sequences."""

    model_config = ConfigDict(extra="forbid")

    # completion: the last (assistant) message is the completion, loss on it only; works with
    # every chat template. assistant: TRL's assistant_only_loss, needs {% generation %} markers.
    # full: loss on the whole sequence (prompt included).
    loss: Literal["completion", "assistant", "full"] = "completion"
    # Keep only rows of one task from a joint export (None: every row).
    task: Literal["strategy", "response"] | None = None
    max_train_rows: int | None = Field(default=None, ge=1)
    max_eval_rows: int | None = Field(default=None, ge=1)


class Recipe(BaseModel):
    """A parsed and validated training recipe.

    ``prompt`` is the supporter prompt variant the student is trained on and later runs with
    (:mod:`csc.signatures.supporter`): ``compact`` (short instructions, no framework definitions)
    or ``full``; training refuses an export made with the other variant. ``None`` trains on
    whichever variant the export has.
    """

    model_config = ConfigDict(extra="forbid")

    prompt: PromptVariant | None = None
    model: ModelSection = Field(default_factory=ModelSection)
    lora: dict[str, Any] = Field(default_factory=dict)
    data: DataSection = Field(default_factory=DataSection)
    trainer: dict[str, Any] = Field(default_factory=dict)
    devices: dict[Literal["cpu", "cuda"], dict[str, Any]] = Field(default_factory=dict)
    source: str = "<dict>"

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, name_or_path: str | Path = DEFAULT_RECIPE) -> Recipe:
        """Load a shipped recipe by name (``smollm2-135m-lora``) or any recipe YAML file."""
        path = resolve_recipe_path(name_or_path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise RecipeError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise RecipeError(
                f"{path}: expected a mapping with prompt, model, lora, data, trainer sections"
            )
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> Recipe:
        """Validate a recipe mapping; every key is checked against PEFT and TRL's own fields."""
        known = {"prompt", "model", "lora", "data", "trainer", "devices"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecipeError(
                f"{source}: unknown section(s) {unknown}; a recipe has the sections {sorted(known)}"
            )
        try:
            recipe = cls.model_validate({**data, "source": source})
        except ValidationError as exc:
            parts = [f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in exc.errors()]
            raise RecipeError(f"{source}: invalid recipe: {'; '.join(parts)}") from None
        _check_keys(
            recipe.lora, _dataclass_fields("peft", "LoraConfig"), source, "lora", "LoraConfig"
        )
        sft_fields = _dataclass_fields("trl", "SFTConfig")
        for section, values in [("trainer", recipe.trainer)] + [
            (f"devices.{d}", v) for d, v in recipe.devices.items()
        ]:
            _check_keys(values, sft_fields, source, section, "SFTConfig")
            reserved = sorted(_RESERVED_TRAINER_KEYS & set(values))
            if reserved:
                raise RecipeError(
                    f"{source}: {section}.{reserved[0]} is set by `csc finetune --out`; "
                    "remove it from the recipe"
                )
        return recipe

    def to_dict(self) -> dict[str, Any]:
        """The recipe contents as written (for metadata), without the source path."""
        return self.model_dump(mode="json", exclude={"source"})

    # ------------------------------------------------------------------ config objects
    def lora_config(self) -> Any:
        """PEFT ``LoraConfig`` for this recipe (task type causal LM unless the recipe says else)."""
        from peft import LoraConfig

        try:
            return LoraConfig(**{"task_type": "CAUSAL_LM", **self.lora})
        except (TypeError, ValueError) as exc:
            raise RecipeError(f"{self.source}: lora: {exc}") from None

    def trainer_kwargs(self, device: str) -> dict[str, Any]:
        """The trainer section with the overrides for ``device`` (``cpu`` or ``cuda``) on top."""
        return {**self.trainer, **self.devices.get(device, {})}  # type: ignore[call-overload]


def _dataclass_fields(module: str, name: str) -> set[str]:
    import importlib

    cls = getattr(importlib.import_module(module), name)
    return {f.name for f in dataclasses.fields(cls) if f.init}


def _check_keys(
    values: dict[str, Any], valid: set[str], source: str, section: str, what: str
) -> None:
    for key in values:
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise RecipeError(
                f"{source}: {section}.{key} is not a {what} option{hint} "
                f"(see the {what} documentation for the valid keys)"
            )


def recipes_dir() -> Path:
    """Folder of the recipes shipped with csc."""
    return Path(str(resources.files("csc.finetune") / "recipes"))


def builtin_recipes() -> list[str]:
    """Names of the shipped recipes."""
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file path from a path or the name of a shipped recipe."""
    for path in (Path(name_or_path), recipes_dir() / f"{name_or_path}.yaml"):
        if path.is_file():
            return path
    raise RecipeError(
        f"recipe {str(name_or_path)!r} not found: give a recipe YAML path or one of the shipped "
        f"recipes {builtin_recipes()}"
    )
