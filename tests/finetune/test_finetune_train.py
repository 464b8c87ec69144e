"""Training: two LoRA steps on a tiny random model, resume, metadata, loading through the engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_recipe_dict
from datasets import Dataset, DatasetDict

from csc.finetune.recipes import Recipe
from csc.finetune.train import (
    ADAPTER_DIR,
    METADATA_FILE,
    TRAIN_LOG,
    FinetuneError,
    load_sft_data,
    merge_adapter,
    train,
)


def _row(i: int, task: str) -> dict:
    answer = (
        "[[ ## strategy ## ]]\nEM\n\n[[ ## completed ## ]]\n"
        if task == "strategy"
        else "[[ ## response ## ]]\nI understand how frustrating that is.\n\n[[ ## completed ## ]]\n"
    )
    return {
        "dialogue_id": f"d{i}",
        "turn": 3,
        "strategy": "EM",
        "task": task,
        "messages": [
            {"role": "system", "content": "You are a supporter. Respond with the output fields."},
            {"role": "user", "content": f"[[ ## history ## ]]\nCustomer: charged twice {i}"},
            {"role": "assistant", "content": answer},
        ],
    }


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sft")
    rows = [_row(i, t) for i in range(4) for t in ("strategy", "response")]
    DatasetDict(train=Dataset.from_list(rows), validation=Dataset.from_list(rows[:2])).save_to_disk(
        str(out)
    )
    (out / "export.json").write_text(
        json.dumps(
            {
                "framework": "csc",
                "task": "joint",
                "data_sha256": "ab" * 32,
                "split_dialogue_ids": {"train": ["d0", "d1"], "validation": ["d2"], "test": []},
            }
        )
    )
    return out


def test_completion_rows_mask_the_prompt(sft_dir: Path, tiny_model_dir: Path) -> None:
    recipe = Recipe.from_dict(tiny_recipe_dict(tiny_model_dir))
    train_ds, _val_ds, meta = load_sft_data(sft_dir, recipe)
    assert train_ds.column_names == ["prompt", "completion"]
    assert [m["role"] for m in train_ds[0]["completion"]] == ["assistant"]
    assert train_ds[0]["prompt"][-1]["role"] == "user"
    assert meta["framework"] == "csc"
    only = Recipe.from_dict({**tiny_recipe_dict(tiny_model_dir), "data": {"task": "strategy"}})
    assert len(load_sft_data(sft_dir, only)[0]) == 4


@pytest.mark.slow
def test_two_steps_write_adapter_log_and_metadata(
    sft_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    recipe = Recipe.from_dict(tiny_recipe_dict(tiny_model_dir), source="tiny.yaml")
    out = tmp_path / "run"
    result = train(sft_dir, recipe, out, max_steps=2, device="cpu")
    assert result.steps == 2
    assert (out / ADAPTER_DIR / "adapter_config.json").is_file()
    assert (out / ADAPTER_DIR / "adapter_model.safetensors").is_file()
    meta = json.loads((out / METADATA_FILE).read_text())
    assert meta["base_model"] == f"local:{tiny_model_dir.resolve()}"
    assert meta["adapter_dir"] == "adapter"
    assert meta["framework"] == "csc" and meta["task"] == "joint"
    assert meta["data"]["source_sha256"] == "ab" * 32 and len(meta["data"]["export_sha256"]) == 64
    assert meta["recipe"]["lora"]["r"] == 4 and meta["steps"] == 2
    # What it was trained on, so `csc evaluate` can refuse to score it there.
    assert meta["data"]["train_dialogue_ids"] == ["d0", "d1"]
    assert meta["precision"] == "fp32" and meta["device"].startswith("cpu")
    assert meta["steps_per_second"] > 0 and meta["wall_time_s"] > 0
    losses = [json.loads(line) for line in (out / TRAIN_LOG).read_text().splitlines()]
    assert [r["step"] for r in losses if "loss" in r] == [1, 2]
    assert all(r["loss"] > 0 for r in losses if "loss" in r)

    # A second run into the same folder needs --resume; with it, training continues.
    with pytest.raises(FinetuneError, match="--resume"):
        train(sft_dir, recipe, out, max_steps=3, device="cpu")
    resumed = train(sft_dir, recipe, out, max_steps=3, device="cpu", resume=True)
    assert resumed.steps == 3
    meta = json.loads((out / METADATA_FILE).read_text())
    assert meta["steps"] == 3 and meta["steps_this_run"] == 1
    assert meta["resumed_from"].endswith("checkpoint-2")
    steps = [json.loads(line)["step"] for line in (out / TRAIN_LOG).read_text().splitlines()]
    assert [s for s in steps if s] == sorted(s for s in steps if s)
    # Resuming a checkpoint that already reached max_steps only writes the adapter again.
    again = train(sft_dir, recipe, out, max_steps=3, device="cpu", resume=True)
    assert again.steps == 3
    assert json.loads((out / METADATA_FILE).read_text())["steps_this_run"] == 0


@pytest.mark.slow
def test_trained_adapter_generates_through_the_engine(
    sft_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from csc.engine import LocalLM
    from csc.lm import build_lm

    out = tmp_path / "run"
    train(sft_dir, Recipe.from_dict(tiny_recipe_dict(tiny_model_dir)), out, device="cpu")
    for lm in (
        build_lm(f"finetuned:{out}", max_tokens=8, cache=False),
        LocalLM.from_finetuned(out, merge_adapter=True, max_tokens=8, cache=False),
    ):
        outputs = lm("Customer: charged twice")
        assert isinstance(outputs, list) and len(outputs) == 1
        text = outputs[0]["text"] if isinstance(outputs[0], dict) else outputs[0]
        assert isinstance(text, str)
        assert lm.history[-1]["usage"]["completion_tokens"] >= 1
    # `csc finetune merge`: a standalone folder that loads as local:<folder>.
    merged = merge_adapter(out, tmp_path / "merged")
    assert (merged / "config.json").is_file()
    lm = build_lm(f"local:{merged}", max_tokens=4, cache=False)
    assert len(lm("hello")) == 1


def test_resume_without_checkpoint_and_bad_folders_are_clear(
    sft_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    recipe = Recipe.from_dict(tiny_recipe_dict(tiny_model_dir))
    with pytest.raises(FinetuneError, match="no checkpoint"):
        train(sft_dir, recipe, tmp_path / "fresh", resume=True, device="cpu")
    with pytest.raises(FinetuneError, match="csc finetune export"):
        train(tmp_path / "missing", recipe, tmp_path / "o", device="cpu")
    bad = Recipe.from_dict({**tiny_recipe_dict(tiny_model_dir), "model": {"name": "/nope"}})
    with pytest.raises(FinetuneError, match="model folder"):
        train(sft_dir, bad, tmp_path / "o2", device="cpu")


@pytest.mark.slow
def test_loss_covers_only_the_assistant_reply(
    sft_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The tokenized rows TRL trains on mask everything but the assistant target."""
    from trl import SFTTrainer

    from csc.finetune.train import build_sft_config, load_model_and_tokenizer

    recipe = Recipe.from_dict(tiny_recipe_dict(tiny_model_dir))
    train_ds, _, _ = load_sft_data(sft_dir, recipe)
    model, tokenizer, _ = load_model_and_tokenizer(recipe, "cpu")
    trainer = SFTTrainer(
        model=model,
        args=build_sft_config(recipe, tmp_path, "cpu"),
        train_dataset=train_ds,
        processing_class=tokenizer,
        peft_config=recipe.lora_config(),
    )
    row = trainer.train_dataset[0]
    # TRL turns the completion mask into labels: -100 wherever no loss is taken.
    trained = [t for t, label in zip(row["input_ids"], row["labels"]) if label != -100]
    text = tokenizer.decode(trained)
    target = train_ds[0]["completion"][0]["content"]
    assert text.startswith(target) and text.strip().endswith("<|im_end|>")
    prompt = tokenizer.decode(
        [t for t, label in zip(row["input_ids"], row["labels"]) if label == -100]
    )
    assert "charged twice" in prompt and target not in prompt


@pytest.mark.slow
def test_training_prompts_are_the_prompts_the_engine_serves(
    sft_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """One loader for training and serving (#11): the prompt tokens TRL trains on are the tokens
    the engine prompts with, also for a model folder without a chat template (both get ChatML)."""
    import shutil

    import torch
    from trl import SFTTrainer

    from csc.engine.engine import Engine
    from csc.engine.model_store import local_source
    from csc.finetune.train import build_sft_config, load_model_and_tokenizer

    bare = shutil.copytree(tiny_model_dir, tmp_path / "bare")
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    tok_config = json.loads((bare / "tokenizer_config.json").read_text())
    tok_config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(tok_config))
    recipe = Recipe.from_dict(tiny_recipe_dict(bare))
    train_ds, _, _ = load_sft_data(sft_dir, recipe)
    model, tokenizer, _ = load_model_and_tokenizer(recipe, "cpu")
    trainer = SFTTrainer(
        model=model,
        args=build_sft_config(recipe, tmp_path / "run", "cpu"),
        train_dataset=train_ds,
        processing_class=tokenizer,
    )
    engine = Engine(local_source(bare), "cpu", torch.float32)
    for row, shaped in zip(trainer.train_dataset, train_ds):
        trained_prompt = [t for t, label in zip(row["input_ids"], row["labels"]) if label == -100]
        assert engine.encode_messages(shaped["prompt"]) == trained_prompt
    assert "<|im_start|>assistant" in tokenizer.decode(trained_prompt)


def test_recipe_prompt_must_match_the_export(sft_dir: Path, tiny_model_dir: Path) -> None:
    from csc.finetune.train import export_prompt_variant

    # An export without a recorded variant (made before the choice existed) used the full one.
    meta = json.loads((sft_dir / "export.json").read_text())
    any_variant = Recipe.from_dict(tiny_recipe_dict(tiny_model_dir))
    assert export_prompt_variant(sft_dir, meta, any_variant) == "full"
    compact = Recipe.from_dict(
        {**tiny_recipe_dict(tiny_model_dir), "prompt": "compact"}, source="tiny.yaml"
    )
    assert export_prompt_variant(sft_dir, {**meta, "prompt": "compact"}, compact) == "compact"
    with pytest.raises(FinetuneError, match=r"full prompt, but tiny\.yaml .*--prompt compact"):
        train(sft_dir, compact, sft_dir.parent / "never", device="cpu")
