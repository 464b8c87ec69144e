"""Fixtures for fine-tuning tests: a tiny random causal LM and tokenizer built locally (no download)."""

from __future__ import annotations

from pathlib import Path

import pytest

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "Hello, thank you for contacting us. How can I help you today?",
    "My card was charged twice and I am really upset about it.",
    "I understand how frustrating that is; let me check the transaction for you.",
    "[[ ## strategy ## ]] EM PS ID GT IV RP PR RI FR RC AC OT [[ ## completed ## ]]",
    "[[ ## reply ## ]] Supporter Customer scenario history strategy definitions",
    "Please verify your phone number and the last four digits of your account.",
    "system user assistant You are a supporter. Respond with the corresponding output fields.",
]


def build_tiny_model(folder: Path) -> Path:
    """Save a 2-layer Llama with a small byte-level BPE tokenizer and a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    import torch

    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny random causal LM usable as ``local:<folder>``."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def tiny_recipe_dict(model_dir: Path, **trainer: object) -> dict:
    """A recipe for the tiny model that trains in a second on CPU."""
    return {
        "model": {"name": f"local:{model_dir}"},
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "data": {"loss": "completion"},
        "trainer": {
            "learning_rate": 1e-3,
            "max_steps": 2,
            "per_device_train_batch_size": 2,
            "logging_steps": 1,
            "save_steps": 1,
            "max_length": 4096,
            "activation_checkpointing": False,
            "dataloader_num_workers": 0,
            **trainer,
        },
    }
