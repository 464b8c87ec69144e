"""Shaping an exported SFT dataset (:mod:`csc.finetune.export`) into what TRL trains on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from csc.finetune.recipes import Recipe


class FinetuneError(RuntimeError):
    """Training cannot start or continue (bad data folder, model, resume state...)."""


def load_sft_data(data_dir: str | Path, recipe: Recipe) -> tuple[Any, Any, dict[str, Any]]:
    """Train and validation splits of an exported dataset, shaped for the recipe's loss.

    Returns (train, validation or None, export metadata). With ``loss: completion`` every
    ``messages`` row becomes a conversational prompt/completion pair: the last assistant message
    is the completion, so TRL masks the prompt (``completion_only_loss``) for any chat template.
    """
    from datasets import DatasetDict, load_from_disk

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FinetuneError(
            f"{data_dir}: no such folder; create it with `csc finetune export --data FILE --out {data_dir}`"
        )
    try:
        dsd = load_from_disk(str(data_dir))
    except (FileNotFoundError, ValueError) as exc:
        raise FinetuneError(
            f"{data_dir}: not a dataset saved by `csc finetune export` (save_to_disk): {exc}"
        ) from None
    if not isinstance(dsd, DatasetDict) or "train" not in dsd:
        raise FinetuneError(f"{data_dir}: expected a DatasetDict with a 'train' split")
    meta_path = data_dir / "export.json"
    export_meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}

    def shape(ds: Any, limit: int | None) -> Any:
        if "messages" not in ds.column_names:
            raise FinetuneError(
                f"{data_dir}: rows need a 'messages' column (got {ds.column_names})"
            )
        if recipe.data.task is not None and "task" in ds.column_names:
            ds = ds.filter(lambda row: row["task"] == recipe.data.task)
        if limit is not None and len(ds) > limit:
            ds = ds.select(range(limit))
        if recipe.data.loss == "completion":
            ds = ds.map(_to_prompt_completion, remove_columns=ds.column_names)
        else:
            ds = ds.select_columns(["messages"])
        return ds

    train = shape(dsd["train"], recipe.data.max_train_rows)
    if len(train) == 0:
        raise FinetuneError(f"{data_dir}: the train split has no rows for this recipe")
    val = dsd.get("validation")
    val = shape(val, recipe.data.max_eval_rows) if val is not None and len(val) else None
    return train, val, export_meta


def export_prompt_variant(data_dir: str | Path, export_meta: dict[str, Any], recipe: Recipe) -> str:
    """The prompt variant of an export, checked against the one the recipe asks for.

    Exports made before the variant was recorded used the full prompt.
    """
    from csc.finetune.export import LEGACY_PROMPT

    exported = str(export_meta.get("prompt") or LEGACY_PROMPT)
    if recipe.prompt is not None and recipe.prompt != exported:
        raise FinetuneError(
            f"{data_dir}: exported with the {exported} prompt, but {recipe.source} trains "
            f"`prompt: {recipe.prompt}`; re-export with `csc finetune export --prompt "
            f"{recipe.prompt}` or set `prompt: {exported}` in the recipe"
        )
    return exported


def _to_prompt_completion(row: dict[str, Any]) -> dict[str, Any]:
    messages = row["messages"]
    if not messages or messages[-1]["role"] != "assistant":
        raise FinetuneError("every SFT row must end with the assistant message to learn")
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def drop_overlong(ds: Any, tokenizer: Any, max_length: int | None) -> tuple[Any, int]:
    """Drop rows longer than max_length: TRL truncates the end, which would cut the target."""
    if ds is None or max_length is None:
        return ds, 0

    def length(row: dict[str, Any]) -> dict[str, int]:
        messages = row["messages"] if "messages" in row else row["prompt"] + row["completion"]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        return {"_len": len(tokenizer(text, add_special_tokens=False)["input_ids"])}

    with_len = ds.map(length)
    kept = with_len.filter(lambda row: row["_len"] <= max_length).remove_columns("_len")
    return kept, len(ds) - len(kept)
