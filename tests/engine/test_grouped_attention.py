"""The engine's grouped-query attention gives transformers' "sdpa" numbers without the copies."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from csc.engine.kernels import GROUPED_ATTENTION, use_grouped_attention  # noqa: E402


def _tiny_gqa_llama() -> object:
    config = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # two query heads per key/value head
        max_position_embeddings=128,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


@torch.inference_mode()
def test_grouped_attention_matches_sdpa_on_padded_batches_with_a_cache() -> None:
    model = _tiny_gqa_llama()
    ids = torch.randint(3, 97, (3, 20))
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[0, :6] = 0  # a left-padded row, as the engine lays batches out
    positions = (mask.cumsum(-1) - 1).clamp(min=0)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        cache = transformers.DynamicCache()
        prefill = model(
            input_ids=ids[:, :17],
            attention_mask=mask[:, :17],
            position_ids=positions[:, :17],
            past_key_values=cache,
            use_cache=True,
        ).logits
        step = model(  # three tokens at once, as forced header tokens are fed
            input_ids=ids[:, 17:],
            attention_mask=mask,
            position_ids=positions[:, 17:],
            past_key_values=cache,
            use_cache=True,
        ).logits
        return prefill, step

    expected = run()
    use_grouped_attention(model)
    assert model.config._attn_implementation == GROUPED_ATTENTION
    got = run()
    for a, b in zip(expected, got):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
