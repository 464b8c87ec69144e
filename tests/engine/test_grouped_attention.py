"""The engine's grouped-query attention gives transformers' "sdpa" numbers without the copies."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from csc.engine.kernels import (  # noqa: E402
    GROUPED_ATTENTION,
    QUERY_LENGTHS,
    use_grouped_attention,
)


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
    ids = torch.randint(3, 97, (3, 21))
    mask = torch.ones(3, 21, dtype=torch.long)
    mask[0, :6] = 0  # a left-padded row, as the engine lays batches out
    positions = (mask.cumsum(-1) - 1).clamp(min=0)

    def run() -> tuple[torch.Tensor, ...]:
        cache = transformers.DynamicCache()
        prefill = model(
            input_ids=ids[:, :17],
            attention_mask=mask[:, :17],
            position_ids=positions[:, :17],
            past_key_values=cache,
            use_cache=True,
        ).logits
        step = model(  # three tokens at once, as forced header tokens are fed
            input_ids=ids[:, 17:20],
            attention_mask=mask[:, :20],
            position_ids=positions[:, 17:20],
            past_key_values=cache,
            use_cache=True,
        ).logits
        decode = model(  # one token per row: the one-query path
            input_ids=ids[:, 20:],
            attention_mask=mask,
            position_ids=positions[:, 20:],
            past_key_values=cache,
            use_cache=True,
        ).logits
        return prefill, step, decode

    expected = run()
    use_grouped_attention(model)
    assert model.config._attn_implementation == GROUPED_ATTENTION
    got = run()
    for a, b in zip(expected, got):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


@torch.inference_mode()
def test_rows_feeding_fewer_tokens_attend_with_their_real_queries_only() -> None:
    """A decode step where one row feeds 4 forced tokens and the others 1 (left-padded): with
    the per-row query lengths, every real position gets the same logits as without them."""
    model = _tiny_gqa_llama()
    use_grouped_attention(model)
    ids = torch.randint(3, 97, (3, 16))
    prompt_mask = torch.ones(3, 12, dtype=torch.long)
    prompt_mask[1, :5] = 0
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    lengths = [4, 1, 1]
    step_mask = torch.zeros(3, 4, dtype=torch.long)
    for b, n in enumerate(lengths):
        step_mask[b, 4 - n :] = 1
    mask = torch.cat([prompt_mask, step_mask], 1)
    step_positions = positions[:, -1:] + (step_mask.cumsum(-1)).clamp(min=1)

    def run(**extra: object) -> torch.Tensor:
        cache = transformers.DynamicCache()
        model(
            input_ids=ids[:, :12],
            attention_mask=prompt_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
        return model(
            input_ids=ids[:, 12:],
            attention_mask=mask,
            position_ids=step_positions,
            past_key_values=cache,
            use_cache=True,
            **extra,
        ).logits

    full, ragged = run(), run(**{QUERY_LENGTHS: lengths})
    for b, n in enumerate(lengths):
        real = slice(4 - n, 4)
        assert torch.allclose(full[b, real], ragged[b, real], atol=1e-5)
