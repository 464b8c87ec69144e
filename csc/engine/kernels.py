"""CPU kernels of the engine: grouped attention, packed matmuls (native or transformers model).

Both keep the model's arithmetic (float32 throughout) and change only how it is scheduled on
the CPU:

- :func:`use_grouped_attention` reads SmolLM2's grouped key/value heads in place instead of
  copying them once per query head.
- :func:`use_packed_linears` gives every ``nn.Linear`` a copy of its weight in MKL's packed GEMM
  layout for mid-sized inputs (a decode step that feeds forced header tokens, a short prefill),
  where MKL would otherwise re-pack the whole weight on every call.
"""

from __future__ import annotations

from typing import Any

import torch

GROUPED_ATTENTION = "csc_grouped_sdpa"
# Keyword argument of the model's forward (passed through to the attention function): how many
# of each row's query positions are real tokens, the rest being left padding.
QUERY_LENGTHS = "csc_query_lengths"
# Row counts served from packed weights: an input of M rows is zero-padded to the smallest
# bucket >= M. Below PACKED_MIN_ROWS MKL's own small-matrix path is as fast, and beyond the
# largest bucket (a long prefill) its packing cost is spread over enough rows to matter little.
PACKED_MIN_ROWS = 4
PACKED_BUCKETS = (16, 32, 64)


def _grouped_sdpa(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA that reads grouped key/value heads in place (``enable_gqa``), mask or not.

    transformers' "sdpa" copies every key/value head ``num_key_value_groups`` times whenever a
    mask is given and more than one token is fed (a prefill, forced header tokens), because its
    GPU kernels need that. The engine always passes a mask, and on the CPU the grouped kernel
    gives the same numbers without the copy: over a 1,400-token cache it is about 4x faster.
    With ``csc_query_lengths`` (:data:`QUERY_LENGTHS`) each row attends with its real queries
    only.
    """
    grouped = key.shape[1] != query.shape[1]
    lengths = kwargs.get(QUERY_LENGTHS)
    width = query.shape[2]
    if width == 1 and not dropout:
        return _one_query_attention(query, key, value, attention_mask, scaling), None
    if lengths is not None and attention_mask is not None:
        # Rows of a decode step are left-padded to the longest run of tokens fed; a row that
        # feeds one token attends with one query instead of `width` (the padded queries'
        # outputs are never read).
        out = query.new_zeros(query.shape)
        for b, n in enumerate(lengths):
            if n > 0:
                out[b : b + 1, :, width - n :] = torch.nn.functional.scaled_dot_product_attention(
                    query[b : b + 1, :, width - n :],
                    key[b : b + 1],
                    value[b : b + 1],
                    attn_mask=attention_mask[b : b + 1, :, width - n :],
                    dropout_p=dropout,
                    scale=scaling,
                    enable_gqa=grouped,
                )
        return out.transpose(1, 2).contiguous(), None
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=attention_mask is None and width > 1,
        enable_gqa=grouped,
    )
    return out.transpose(1, 2).contiguous(), None


def _one_query_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float | None,
) -> torch.Tensor:
    """Attention of one query per row (a decode step) as two batched matmuls.

    The query heads that share a key/value head become that head's rows, so keys and values
    are read once, in place. For one query PyTorch's CPU flash kernel is the slower choice:
    3 rows over 1,300 cached tokens took 0.73 ms per layer there and 0.45 ms here (0.29 and
    0.26 ms over 600 tokens). Returns [batch, 1, query heads, head dim].
    """
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    q = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(q, key.transpose(-1, -2)).mul_(scaling or dim**-0.5)
    if mask is not None:  # [batch, 1, 1, keys]: True (or 0.0) where a key may be read
        if mask.dtype == torch.bool:
            scores.masked_fill_(~mask, float("-inf"))
        else:
            scores.add_(mask)
    out = torch.matmul(torch.softmax(scores, dim=-1), value)
    return out.reshape(batch, 1, heads, dim)


def use_grouped_attention(model: Any) -> None:
    """Switch a transformers model on the CPU to :func:`_grouped_sdpa` (same masks as "sdpa")."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(GROUPED_ATTENTION, _grouped_sdpa)
    AttentionMaskInterface.register(GROUPED_ATTENTION, sdpa_mask)
    model.set_attn_implementation(GROUPED_ATTENTION)


# --------------------------------------------------------------------------- packed matmuls
# Packed copies cost the weight's size each; at most this much per model (SmolLM2-135M uses
# about 1.5 GiB with every bucket packed; a larger model packs its first buckets only).
PACKED_MAX_BYTES = 2 * 2**30


def packed_linears_available() -> bool:
    """Whether this PyTorch build has MKL's packed-GEMM linear ops (x86 builds do)."""
    try:
        return bool(torch.backends.mkl.is_available()) and all(
            hasattr(torch.ops.mkl, op) for op in ("_mkl_linear", "_mkl_reorder_linear_weight")
        )
    except (AttributeError, RuntimeError):  # a build without the mkl op namespace
        return False


class _PackBudget:
    """Bytes of packed weights one model may still create."""

    def __init__(self, max_bytes: int) -> None:
        self.left = max_bytes


class PackedLinear(torch.nn.Linear):
    """An ``nn.Linear`` that serves inputs of ``PACKED_MIN_ROWS`` to 64 rows from a copy of its
    weight in MKL's packed GEMM layout (one per row bucket, created on first use).

    On this project's 2-core CPU a forward of SmolLM2's 210 layer matrices at 16 rows took
    124 ms through ``F.linear`` (MKL re-packs the weight on each call) and 41 ms packed; at
    1-3 rows both take about 31 ms. The packs are inference-only: they are not updated if the
    weight changes.
    """

    _packs: dict[int, torch.Tensor]
    _budget: _PackBudget

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        rows = x.numel() // self.in_features if self.in_features else 0
        pack = None
        if PACKED_MIN_ROWS <= rows <= PACKED_BUCKETS[-1] and not torch.is_grad_enabled():
            bucket = next(b for b in PACKED_BUCKETS if b >= rows)
            pack = self._pack(bucket)
        if pack is None or x.dtype != self.weight.dtype:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        flat = x.reshape(rows, self.in_features)
        if rows < bucket:  # the pack serves exactly `bucket` rows: pad with zeros
            flat = torch.nn.functional.pad(flat, (0, 0, 0, bucket - rows))
        out = torch.ops.mkl._mkl_linear(flat.contiguous(), pack, self.weight, self.bias, bucket)
        return out[:rows].reshape(*x.shape[:-1], self.out_features)

    def _pack(self, bucket: int) -> torch.Tensor | None:
        pack = self._packs.get(bucket)
        if pack is None:
            size = self.weight.numel() * self.weight.element_size()
            if size > self._budget.left:
                return None
            self._budget.left -= size
            pack = torch.ops.mkl._mkl_reorder_linear_weight(self.weight.detach(), bucket)
            self._packs[bucket] = pack
        return pack


def use_packed_linears(model: Any, max_bytes: int = PACKED_MAX_BYTES) -> int:
    """Turn the float32 CPU ``nn.Linear`` layers of ``model`` into :class:`PackedLinear`
    (same weights, same module tree); returns how many were switched (0 where the build has
    no MKL packed GEMM)."""
    if not packed_linears_available():
        return 0
    budget = _PackBudget(max_bytes)
    switched = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (
            type(module) is torch.nn.Linear
            and weight is not None
            and weight.dtype == torch.float32
            and weight.device.type == "cpu"
        ):
            module.__class__ = PackedLinear
            module._packs = {}
            module._budget = budget
            switched += 1
    return switched
