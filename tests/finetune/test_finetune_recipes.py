"""Recipes: shipped recipes parse into TRL/PEFT configs; unknown keys are clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from csc.finetune.recipes import DEFAULT_RECIPE, Recipe, RecipeError, builtin_recipes
from csc.finetune.train import build_sft_config


def test_default_recipe_reads_into_lora_and_sft_configs(tmp_path: Path) -> None:
    assert DEFAULT_RECIPE in builtin_recipes()
    recipe = Recipe.load(DEFAULT_RECIPE)
    assert recipe.model.name == "local"
    lora = recipe.lora_config()
    assert lora.r == 16 and lora.task_type == "CAUSAL_LM"
    config = build_sft_config(recipe, tmp_path, "cpu", max_steps=2)
    assert config.max_steps == 2
    assert config.use_cpu and not config.bf16 and not config.fp16
    assert config.completion_only_loss is True
    # devices.cpu overrides the trainer section
    assert (
        config.per_device_train_batch_size == recipe.devices["cpu"]["per_device_train_batch_size"]
    )
    assert config.output_dir == str(tmp_path / "checkpoints")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"trainer": {"learnig_rate": 1e-4}}, r"r\.yaml: trainer\.learnig_rate .*learning_rate"),
        ({"lora": {"rank": 8}}, r"r\.yaml: lora\.rank is not a LoraConfig option"),
        ({"optimizer": {}}, r"r\.yaml: unknown section"),
        ({"model": {"nme": "local"}}, r"r\.yaml: invalid recipe: model\.nme"),
        ({"trainer": {"output_dir": "x"}}, r"set by `csc finetune --out`"),
        ({"devices": {"cpu": {"batch": 2}}}, r"devices\.cpu\.batch"),
        ({"data": {"loss": "prompt"}}, r"data\.loss"),
    ],
)
def test_unknown_or_bad_keys_name_the_file_and_key(data: dict, match: str) -> None:
    with pytest.raises(RecipeError, match=match):
        Recipe.from_dict(data, source="r.yaml")


def test_recipe_file_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="not found"):
        Recipe.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora: {r: 8}\ntrainer: {max_step: 3}\n")
    with pytest.raises(RecipeError, match=rf"{bad}: trainer\.max_step .*max_steps"):
        Recipe.load(bad)


def test_recipe_prompt_variant() -> None:
    # The shipped recipes train small students on the compact prompt.
    for name in builtin_recipes():
        assert Recipe.load(name).prompt == "compact"
    assert Recipe.from_dict({}).prompt is None  # None: whatever the export used
    assert Recipe.from_dict({"prompt": "full"}).to_dict()["prompt"] == "full"
    with pytest.raises(RecipeError, match=r"r\.yaml: invalid recipe: prompt"):
        Recipe.from_dict({"prompt": "short"}, source="r.yaml")
