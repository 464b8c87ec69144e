"""The native Llama forward gives transformers' numbers, and refuses what it does not cover."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from csc.engine.kernels import QUERY_LENGTHS, use_grouped_attention  # noqa: E402
from csc.engine.llama import (  # noqa: E402
    KVCache,
    NativeLlamaForCausalLM,
    load_native,
    native_config,
)

local_lm = pytest.mark.local_lm


def _save_tiny_llama(folder: Path, *, tie: bool = True, **overrides: object) -> object:
    settings: dict[str, object] = {
        "vocab_size": 97,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
    }
    config = transformers.LlamaConfig(
        **{**settings, **overrides}, tie_word_embeddings=tie, attn_implementation="sdpa"
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    return model


def _load(folder: Path) -> NativeLlamaForCausalLM:
    config, why = native_config(folder)
    assert config is not None, why
    return load_native(folder, config, "cpu", torch.float32)


@pytest.mark.parametrize("tie", [True, False])
@torch.inference_mode()
def test_native_forward_matches_transformers_on_the_engines_calls(
    tmp_path: Path, tie: bool
) -> None:
    """Padded prefill, a step of forced tokens with per-row lengths, a one-token decode step."""
    reference = _save_tiny_llama(tmp_path, tie=tie)
    use_grouped_attention(reference)
    native = _load(tmp_path)
    assert (native.lm_head.weight is native.model.embed_tokens.weight) == tie
    ids = torch.randint(3, 97, (3, 16))
    prompt_mask = torch.ones(3, 12, dtype=torch.long)
    prompt_mask[1, :5] = 0  # left padding, as the engine lays out rows
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    lengths = [4, 1, 2]
    step_mask = torch.zeros(3, 4, dtype=torch.long)
    for b, n in enumerate(lengths):
        step_mask[b, 4 - n :] = 1
    mask = torch.cat([prompt_mask, step_mask], 1)
    step_positions = positions[:, -1:] + step_mask.cumsum(-1).clamp(min=1)
    last = torch.randint(3, 97, (3, 1))

    def run(model: object, cache: object) -> list[torch.Tensor]:
        prefill = model(
            input_ids=ids[:, :12],
            attention_mask=prompt_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        ).logits
        step = model(
            input_ids=ids[:, 12:],
            attention_mask=mask,
            position_ids=step_positions,
            past_key_values=cache,
            use_cache=True,
            **{QUERY_LENGTHS: lengths},
        ).logits
        decode = model(
            input_ids=last,
            attention_mask=torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1),
            position_ids=step_positions[:, -1:] + 1,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits
        return [prefill, step, decode]

    expected = run(reference, transformers.DynamicCache())
    got = run(native, KVCache())
    real_prompt = prompt_mask.bool()
    assert torch.allclose(expected[0][real_prompt], got[0][real_prompt], atol=1e-5)
    for b, n in enumerate(lengths):
        real = slice(4 - n, 4)
        assert torch.allclose(expected[1][b, real], got[1][b, real], atol=1e-5)
    assert torch.allclose(expected[2], got[2], atol=1e-5)
    # Only each row's last token's logits (left-padded rows: the last column), as the engine asks.
    last = native(
        input_ids=ids[:, :12],
        attention_mask=prompt_mask,
        position_ids=positions,
        past_key_values=KVCache(),
        logits_to_keep=1,
    ).logits
    assert torch.allclose(expected[0][:, -1:], last, atol=1e-5)
    # No mask and no cache (the raw forward of the benchmark): plain causal attention.
    plain = native(input_ids=ids[:1], use_cache=False).logits
    assert torch.allclose(reference(input_ids=ids[:1]).logits, plain, atol=1e-5)


@torch.inference_mode()
def test_a_shared_prompt_cache_serves_several_continuations(tmp_path: Path) -> None:
    """``batch_repeat_interleave`` (used to score options) repeats the prompt's cache rows."""
    reference = _save_tiny_llama(tmp_path)
    native = _load(tmp_path)
    prompt = torch.randint(3, 97, (1, 9))
    options = torch.randint(3, 97, (3, 2))
    positions = torch.arange(9, 11).expand(3, -1)
    results = []
    for model, cache in ((reference, transformers.DynamicCache()), (native, KVCache())):
        model(input_ids=prompt, past_key_values=cache, use_cache=True)
        cache.batch_repeat_interleave(3)
        results.append(
            model(
                input_ids=options,
                attention_mask=torch.ones(3, 11, dtype=torch.long),
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            ).logits
        )
    assert torch.allclose(results[0], results[1], atol=1e-5)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"architectures": ["MistralForCausalLM"], "model_type": "mistral"}, "architecture"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "scaled rotary"),
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4}}, "scaled rotary"),
        ({"attention_bias": True}, "biases"),
        ({"hidden_act": "gelu"}, "activation"),
    ],
)
def test_checkpoints_the_native_forward_does_not_cover_are_left_to_transformers(
    tmp_path: Path, change: dict, reason: str
) -> None:
    _save_tiny_llama(tmp_path)
    assert native_config(tmp_path)[0] is not None
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    config, why = native_config(tmp_path)
    assert config is None and reason in why


def test_folder_without_single_safetensors_file_is_left_to_transformers(tmp_path: Path) -> None:
    _save_tiny_llama(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    config, why = native_config(tmp_path)
    assert config is None and "model.safetensors" in why


def test_missing_tensors_name_the_file_and_the_way_out(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    _save_tiny_llama(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(weights)
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, weights)
    config, _ = native_config(tmp_path)
    with pytest.raises(ValueError, match=r"model\.safetensors.*gate_up_proj.*CSC_NATIVE_MODEL=0"):
        load_native(tmp_path, config, "cpu", torch.float32)


@local_lm
def test_embedded_engine_loads_without_transformers_model_modules() -> None:
    """The embedded model runs natively: loading it imports none of transformers' modeling
    stack (kernel hub, flash attention, continuous batching), which cost seconds per process."""
    script = (
        "import sys, json\n"
        "from csc.engine import LocalLM\n"
        "engine = LocalLM(cache=False).batch_engine\n"
        "heavy = [m for m in ('transformers.modeling_utils', 'transformers.integrations.hub_kernels',"
        " 'torch._dynamo') if m in sys.modules]\n"
        "print(json.dumps({'native': engine.native, 'heavy': heavy}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"native": True, "heavy": []}


@local_lm
def test_native_and_transformers_engines_write_the_same_greedy_replies(monkeypatch) -> None:
    from csc.engine.decoding import Sampling
    from csc.engine.engine import Engine
    from csc.engine.model_store import ModelSource

    prompts = [
        [{"role": "user", "content": "Say hello to a customer."}],
        [{"role": "user", "content": "My order is late. What can you do?"}],
    ]
    replies = {}
    monkeypatch.setenv("CSC_QUANTIZED", "float")  # float32 activations, as transformers has
    for native in ("1", "0"):
        monkeypatch.setenv("CSC_NATIVE_MODEL", native)
        engine = Engine(ModelSource(None), "cpu", torch.float32).load()
        assert engine.native == (native == "1")
        futures = [
            engine.submit(engine.encode_messages(m), None, Sampling(max_tokens=24, temperature=0.0))
            for m in prompts
        ]
        replies[native] = [f.result(timeout=300).text for f in futures]
    assert replies["1"] == replies["0"]
