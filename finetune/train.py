"""LoRA supervised fine-tuning of a supporter with TRL, driven by a YAML recipe.

The script stays thin: the recipe is read into TRL's ``SFTConfig`` and PEFT's ``LoraConfig``
(:mod:`csc.finetune.recipes`), the exported ``messages`` dataset (:mod:`csc.finetune.export`) is
handed to ``SFTTrainer``, and the output folder gets the layout ``finetuned:<dir>`` loads::

    <out>/adapter/             PEFT LoRA adapter (+ tokenizer)
    <out>/checkpoints/         Trainer checkpoints (``--resume`` continues from the last one)
    <out>/train_log.jsonl      one JSON object per logging step (loss, learning rate, ...)
    <out>/csc_finetune.json    metadata: base_model, adapter_dir, prompt, data hash, recipe, steps, ...

``prompt`` is the supporter prompt variant (``compact`` or ``full``) the rows were exported with;
``finetuned:<dir>`` runs the supporter with that variant, so it sees the prompts it learned.

Run it through ``csc finetune run``; for several GPUs, the same command under accelerate::

    accelerate launch --config_file finetune/recipes/accelerate/multi_gpu.yaml \\
        -m csc finetune run --data sft/ --recipe smollm2-135m-lora --out runs/ft
"""

from __future__ import annotations

import contextlib
import json
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from csc.choices import Device
from csc.data.jsonl import JsonlWriter, drop_torn_line
from csc.engine.model_store import FINETUNE_METADATA
from csc.eval.splits import data_sha256
from csc.finetune.recipes import Recipe, RecipeError
from csc.finetune.sft_data import (
    FinetuneError,
    drop_overlong,
    export_prompt_variant,
    load_sft_data,
)

METADATA_FILE = FINETUNE_METADATA
ADAPTER_DIR = "adapter"
TRAIN_LOG = "train_log.jsonl"
CHECKPOINT_DIR = "checkpoints"


@dataclass
class FinetuneResult:
    """What a training run produced and how fast it ran."""

    out_dir: Path
    adapter_dir: Path
    steps: int
    wall_time_s: float
    steps_per_second: float
    device: str
    train_rows: int
    final_loss: float | None
    metadata: dict[str, Any] = field(default_factory=dict)
    # CPU seconds of this process (all threads) spent in training: on a shared machine a fairer
    # measure of the work per step than wall time.
    cpu_time_s: float | None = None


# ---------------------------------------------------------------------------- base model
def load_model_and_tokenizer(recipe: Recipe, device: str) -> tuple[Any, Any, str]:
    """The base causal LM (not yet wrapped in LoRA), its tokenizer and its LM spec.

    Loaded by the engine's own loader (:func:`csc.engine.model_store.load_model`): the same
    weights and the same chat template as ``finetuned:<dir>`` serves, so the prompts trained on
    are the prompts seen at inference. The weights stay on the CPU; the Trainer places them.
    """
    import torch

    from csc.engine.model_store import ModelNotFoundError, base_source, load_model

    try:
        source = base_source(recipe.model.name)
    except ModelNotFoundError as exc:
        raise FinetuneError(f"model {recipe.model.name!r}: {exc}") from None
    dtype_name = recipe.model.dtype
    if dtype_name == "auto":
        # fp32 on CPU (no fast bf16 kernels on most CPUs); bf16 on GPUs that support it.
        bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
        dtype_name = "bfloat16" if bf16 else "float32"
    model, tokenizer = load_model(
        source,
        "cpu",
        getattr(torch, dtype_name),
        trust_remote_code=recipe.model.trust_remote_code,
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, source.base_spec


# ---------------------------------------------------------------------------- config
def pick_device(device: Device = "auto") -> str:
    """``cpu`` or ``cuda``: ``auto`` picks CUDA when a GPU is visible."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise FinetuneError("--device cuda: no CUDA GPU is visible; use --device cpu or auto")
    return device


def build_sft_config(
    recipe: Recipe, out_dir: Path, device: str, max_steps: int | None = None
) -> Any:
    """TRL ``SFTConfig`` from the recipe's trainer section, with device-dependent precision."""
    import torch
    from trl import SFTConfig

    kwargs = recipe.trainer_kwargs(device)
    if max_steps is not None:
        kwargs["max_steps"] = max_steps
    if device == "cpu":
        # TRL defaults to bf16; on CPUs without bf16 kernels that is ~20x slower than fp32.
        kwargs.update(use_cpu=True, bf16=False, fp16=False)
    else:
        kwargs.setdefault("bf16", torch.cuda.is_bf16_supported())
        if not kwargs["bf16"]:
            kwargs.setdefault("fp16", False)
    # completion / assistant: loss on the reply only, by TRL's flag of that name; full: all.
    loss = recipe.data.loss
    kwargs["assistant_only_loss" if loss == "assistant" else "completion_only_loss"] = (
        loss != "full"
    )
    kwargs.setdefault("report_to", "none")
    try:
        return SFTConfig(output_dir=str(out_dir / CHECKPOINT_DIR), **kwargs)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"{recipe.source}: trainer: {exc}") from None


# ---------------------------------------------------------------------------- training
def train(
    data_dir: str | Path,
    recipe: Recipe | str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    max_steps: int | None = None,
    device: Device = "auto",
) -> FinetuneResult:
    """Fine-tune the recipe's base model with LoRA on an exported SFT dataset.

    Writes the adapter, the training log and ``csc_finetune.json`` to ``out_dir`` (see the module
    docstring). ``resume`` continues from the last checkpoint in ``out_dir/checkpoints``.
    """
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTTrainer

    if not isinstance(recipe, Recipe):
        recipe = Recipe.load(recipe)
    out_dir = Path(out_dir)
    device = pick_device(device)
    checkpoint = None
    if resume:
        ckpt_dir = out_dir / CHECKPOINT_DIR
        checkpoint = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
        if checkpoint is None:
            raise FinetuneError(
                f"--resume: no checkpoint in {ckpt_dir}; run without --resume to start training"
            )
    elif (out_dir / METADATA_FILE).exists() or (out_dir / CHECKPOINT_DIR).exists():
        raise FinetuneError(
            f"{out_dir} already holds a training run; pass --resume to continue it or choose "
            "another --out"
        )

    config = build_sft_config(recipe, out_dir, device, max_steps)
    train_ds, val_ds, export_meta = load_sft_data(data_dir, recipe)
    prompt = export_prompt_variant(data_dir, export_meta, recipe)
    model, tokenizer, base_spec = load_model_and_tokenizer(recipe, device)
    train_ds, dropped = drop_overlong(train_ds, tokenizer, config.max_length)
    val_ds, _ = drop_overlong(val_ds, tokenizer, config.max_length)
    if len(train_ds) == 0:
        raise FinetuneError(
            f"{data_dir}: every train row is longer than trainer.max_length={config.max_length} "
            f"tokens; raise max_length in {recipe.source}"
        )
    use_eval = val_ds is not None and str(config.eval_strategy) not in ("no", "IntervalStrategy.NO")

    out_dir.mkdir(parents=True, exist_ok=True)
    start_step = _checkpoint_step(checkpoint)
    log = TrainLogCallback(out_dir / TRAIN_LOG, resume_step=start_step)
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=train_ds,
        eval_dataset=val_ds if use_eval else None,
        processing_class=tokenizer,
        peft_config=recipe.lora_config(),
        callbacks=[log],
    )
    started = time.perf_counter()
    cpu_started = time.process_time()
    if checkpoint and config.max_steps > 0 and start_step >= config.max_steps:
        # The checkpoint already reached max_steps (a run killed before it wrote the adapter):
        # Trainer.train would take one more step, so load the checkpoint's weights instead.
        trainer._load_from_checkpoint(checkpoint)
        trainer.state.global_step = start_step
    else:
        trainer.train(resume_from_checkpoint=checkpoint)
    wall = time.perf_counter() - started
    cpu_time = time.process_time() - cpu_started
    steps = trainer.state.global_step
    run_steps = max(steps - start_step, 0)
    eval_loss = trainer.evaluate().get("eval_loss") if use_eval else None

    adapter_dir = out_dir / ADAPTER_DIR
    metadata: dict[str, Any] = {}
    if trainer.is_world_process_zero():
        trainer.model.save_pretrained(str(adapter_dir))
        tokenizer.save_pretrained(str(adapter_dir))
        metadata = {
            "base_model": base_spec,
            "adapter_dir": ADAPTER_DIR,
            # The supporter prompt variant finetuned:DIR must run with (the trained-on prompts).
            "prompt": prompt,
            "task": export_meta.get("task", recipe.data.task),
            "framework": export_meta.get("framework"),
            "data": {
                "dir": str(Path(data_dir).resolve()),
                "source_file": export_meta.get("data_file"),
                "source_sha256": export_meta.get("data_sha256"),
                "export_sha256": data_sha256(data_dir),
                "train_rows": len(train_ds),
                "validation_rows": len(val_ds) if val_ds is not None else 0,
                "dropped_overlong_rows": dropped,
                # `csc evaluate` refuses to score this adapter on these dialogues.
                "train_dialogue_ids": (export_meta.get("split_dialogue_ids") or {}).get("train"),
                # Where the targets came from (gold | teacher | both) and what making them
                # cost; `csc compare` shows both. Exports from before teachers were gold.
                "targets": export_meta.get("targets", "gold"),
                "teacher": _teacher_summary(export_meta.get("teacher")),
                "export_cost": export_meta.get("cost"),
            },
            "recipe_source": recipe.source,
            "recipe": recipe.to_dict(),
            "steps": steps,
            "steps_this_run": run_steps,
            "resumed_from": checkpoint,
            "wall_time_s": round(wall, 2),
            "cpu_time_s": round(cpu_time, 2),
            "steps_per_second": round(run_steps / wall, 4) if wall > 0 else None,
            "device": _device_description(device, trainer.args.world_size),
            "precision": "bf16" if config.bf16 else ("fp16" if config.fp16 else "fp32"),
            "final_loss": log.last_loss,
            "eval_loss": eval_loss,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
        }
        (out_dir / METADATA_FILE).write_text(
            json.dumps(metadata, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
    return FinetuneResult(
        out_dir=out_dir,
        adapter_dir=adapter_dir,
        steps=steps,
        wall_time_s=wall,
        steps_per_second=run_steps / wall if wall > 0 else 0.0,
        device=device,
        train_rows=len(train_ds),
        final_loss=log.last_loss,
        metadata=metadata,
        cpu_time_s=cpu_time,
    )


def _teacher_summary(teacher: dict[str, Any] | None) -> dict[str, Any] | None:
    """The export's teacher, as the adapter's metadata keeps it: spec, LM, program, agreement."""
    if not teacher:
        return None
    keep = ("spec", "lm", "program", "agreement", "prompt_tokens", "completion_tokens")
    return {k: teacher.get(k) for k in keep}


def _checkpoint_step(checkpoint: str | None) -> int:
    step = Path(checkpoint or "").name.rsplit("-", 1)[-1]
    return int(step) if step.isdigit() else 0


def _device_description(device: str, world_size: int) -> str:
    if device == "cuda":
        import torch

        name = torch.cuda.get_device_name(0)
        return f"cuda: {world_size} x {name}" if world_size > 1 else f"cuda: {name}"
    import os

    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "transformers", "trl", "peft", "datasets", "dspy"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


def _trainer_callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


class TrainLogCallback(_trainer_callback_base()):  # type: ignore[misc]
    """Appends every Trainer log record (loss per step, learning rate...) to a JSONL file.

    On resume, records after the checkpoint's step are dropped first, so the log has one line
    per logged step even when a run was interrupted.
    """

    def __init__(self, path: Path, resume_step: int = 0):
        self.path = path
        self.last_loss: float | None = None
        if path.exists():
            drop_torn_line(path)  # a line cut short by a kill would not parse
            kept = [
                line
                for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and resume_step and json.loads(line).get("step", 0) <= resume_step
            ]
            path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any):
        """Write one JSON line per log event (main process only)."""
        if not state.is_world_process_zero or not logs:
            return
        if "loss" in logs:
            self.last_loss = float(logs["loss"])
        with JsonlWriter(self.path) as log:
            log.write({"step": state.global_step, "epoch": state.epoch, **logs})


# ---------------------------------------------------------------------------- merging
def merge_adapter(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Merge a run's LoRA adapter into its base model and save a standalone model folder.

    The folder loads as ``local:<out_dir>`` and can be served by vLLM / SGLang. (To merge in
    memory only, pass ``merge_adapter=True`` to ``LocalLM.from_finetuned``.)
    """
    import torch

    from csc.engine.model_store import ModelNotFoundError, finetuned_source, load_model

    try:
        source = finetuned_source(run_dir, merge_adapter=True)
    except ModelNotFoundError as exc:
        raise FinetuneError(f"--run {run_dir}: {exc}") from None
    merged, tokenizer = load_model(source, "cpu", torch.float32)
    out = Path(out_dir)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
