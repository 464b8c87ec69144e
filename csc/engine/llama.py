"""A native PyTorch forward for plain Llama checkpoints (SmolLM2 among them).

The engine serves the embedded model through this module instead of transformers'
``LlamaForCausalLM``. The arithmetic is the same (float32 RMSNorm, rotary embeddings, grouped
attention, SwiGLU, in the same order of operations), so answers match transformers' to float32
rounding; what changes is what a process has to load. transformers' model classes pull in its
kernel hub, flash-attention and continuous-batching modules, ``torch._dynamo`` and
``torch.distributed.tensor`` on import: about 4-5 s of a 10-12 s warm load on this project's
2-core machine, for a 135M-parameter model whose weights read in 0.1 s. Here the weights are
read straight from ``model.safetensors`` and the whole model is about 200 lines.

Only what the engine needs is supported: a causal LM forward over a 2-D attention mask (1 where
a key may be read, left padding allowed), explicit positions, a key/value cache whose layers
have ``update(keys, values) -> (keys, values)``, ``logits_to_keep`` and per-row query lengths
(:data:`csc.engine.kernels.QUERY_LENGTHS`). Checkpoints it does not cover (other
architectures, RoPE scaling, biases, sharded or ``.bin`` weights, adapters) keep the transformers
path; :func:`native_config` says which. Set ``CSC_NATIVE_MODEL=0`` to use transformers for every
model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from csc.engine.kernels import GROUPED_ATTENTION, QUERY_LENGTHS, _grouped_sdpa
from csc.engine.quantized import QUANTIZED_STEP, DecodeStep, PromptAttention

NATIVE_ENV = "CSC_NATIVE_MODEL"
WEIGHTS_FILE = "model.safetensors"
KV_GROW = 64  # spare columns (tokens) a KV buffer gets when it is created or grows


def native_enabled() -> bool:
    """Whether the native forward may be used (``CSC_NATIVE_MODEL`` is not 0/false/no/off)."""
    return os.environ.get(NATIVE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


@dataclass
class LlamaConfig:
    """The fields of a Llama ``config.json`` the native forward reads."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    max_position_embeddings: int
    # Read by the engine as on a transformers config: the native forward always runs the
    # grouped attention (and so accepts per-row query lengths).
    _attn_implementation: str = GROUPED_ATTENTION


def native_config(folder: str | Path) -> tuple[LlamaConfig | None, str]:
    """The native config of a model folder, or ``(None, why not)`` when only transformers can
    load it."""
    folder = Path(folder)
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"no readable config.json ({exc})"
    if raw.get("model_type") != "llama" or raw.get("architectures") not in (
        None,
        ["LlamaForCausalLM"],
    ):
        return None, f"architecture {raw.get('architectures') or raw.get('model_type')}"
    if not (folder / WEIGHTS_FILE).exists():
        return None, f"no single {WEIGHTS_FILE}"
    if raw.get("hidden_act", "silu") != "silu":
        return None, f"activation {raw.get('hidden_act')}"
    if raw.get("attention_bias") or raw.get("mlp_bias") or raw.get("pretraining_tp", 1) != 1:
        return None, "biases or tensor-parallel weights"
    rope = raw.get("rope_parameters") or {}
    if raw.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        return None, "scaled rotary embeddings"
    theta = rope.get("rope_theta", raw.get("rope_theta", 10000.0))
    heads = int(raw["num_attention_heads"])
    hidden = int(raw["hidden_size"])
    return (
        LlamaConfig(
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(raw["intermediate_size"]),
            num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or hidden // heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
        ),
        "",
    )


# --------------------------------------------------------------------------- KV cache
class KVLayer:
    """One layer's keys and values [batch, kv heads, width, head dim] in a buffer with spare
    columns: feeding tokens writes them in place instead of concatenating the whole cache."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int | None = None):
        super().__init__()
        self.buf_k, self.buf_v = keys, values
        self.length = keys.shape[2] if length is None else length
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self._views()

    def _views(self) -> None:
        self.keys = self.buf_k[:, :, : self.length]
        self.values = self.buf_v[:, :, : self.length]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ):
        n = key_states.shape[-2]
        if self.length + n > self.buf_k.shape[2]:
            self.reserve(n)
        self.buf_k[:, :, self.length : self.length + n] = key_states
        self.buf_v[:, :, self.length : self.length + n] = value_states
        self.length += n
        self._views()
        return self.keys, self.values

    def reserve(self, n: int) -> None:
        """Make room for ``n`` more columns (written in place by a kernel, then ``advance``), in
        contiguous buffers (the kernels read them so)."""
        if self.length + n > self.buf_k.shape[2]:
            extra = max(KV_GROW, n, self.buf_k.shape[2] // 2)
            pad = (0, 0, 0, extra)
            self.buf_k = nn.functional.pad(self.buf_k[:, :, : self.length], pad)
            self.buf_v = nn.functional.pad(self.buf_v[:, :, : self.length], pad)
        elif not (self.buf_k.is_contiguous() and self.buf_v.is_contiguous()):
            self.buf_k, self.buf_v = self.buf_k.contiguous(), self.buf_v.contiguous()
        self._views()

    def advance(self, n: int) -> None:
        self.length += n
        self._views()


class KVCache:
    """The native forward's key/value cache: one :class:`KVLayer` per layer (empty until fed)."""

    def __init__(self, layers: list[Any] | None = None, num_layers: int = 0) -> None:
        self.layers: list[Any] = list(layers) if layers is not None else []
        self._num_layers = num_layers if layers is None else len(self.layers)

    def get_seq_length(self) -> int:
        return self.layers[0].length if self.layers else 0

    def layer(
        self, index: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed one layer's new keys and values; returns everything that layer may attend to."""
        if index < len(self.layers):
            return self.layers[index].update(keys, values)
        pad = (0, 0, 0, KV_GROW)
        self.layers.append(
            KVLayer(nn.functional.pad(keys, pad), nn.functional.pad(values, pad), keys.shape[2])
        )
        return self.layers[index].keys, self.layers[index].values

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every row ``repeats`` times (one prompt's cache shared by several options)."""
        self.layers = [
            KVLayer(
                layer.keys.repeat_interleave(repeats, dim=0),
                layer.values.repeat_interleave(repeats, dim=0),
            )
            for layer in self.layers
        ]


# --------------------------------------------------------------------------- the model
# Parameters are created empty on the meta device and take the checkpoint's tensors at load:
# initialising them (or building under ``torch.device("meta")``) would run PyTorch's Python
# decompositions of the random initialisers, whose import alone takes seconds.
def _empty(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape, device="meta"), requires_grad=False)


def _linear(in_features: int, out_features: int) -> nn.Linear:
    """A bias-free ``nn.Linear`` (the exact class, so the packed matmuls apply) left empty."""
    layer = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(layer)
    layer.in_features, layer.out_features = in_features, out_features
    layer.weight = _empty(out_features, in_features)
    layer.register_parameter("bias", None)
    return layer


class Embedding(nn.Module):
    def __init__(self, num: int, size: int) -> None:
        super().__init__()
        self.weight = _empty(num, size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.weight)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = _empty(size)
        self.variance_epsilon = eps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # One fused op; in float32 it gives transformers' LlamaRMSNorm bit for bit.
        return nn.functional.rms_norm(
            hidden, (hidden.shape[-1],), self.weight, self.variance_epsilon
        )


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    """Grouped-query attention with one projection for queries, keys and values."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        self.scaling = config.head_dim**-0.5
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        hidden = config.hidden_size
        self.qkv_proj = _linear(hidden, (self.heads + 2 * self.kv_heads) * self.head_dim)
        self.o_proj = _linear(self.heads * self.head_dim, hidden)

    def forward(
        self, hidden: torch.Tensor, step: _Step, cache: KVCache | None, index: int
    ) -> torch.Tensor:
        """``hidden`` holds the step's real tokens [tokens, hidden]; returns the same shape."""
        qkv = step.unpack(step.project(self.qkv_proj, hidden))  # [batch, width, features]
        batch, width = step.batch, step.width
        heads, kv = self.heads, self.kv_heads
        qkv = qkv.view(batch, width, heads + 2 * kv, self.head_dim).transpose(1, 2)
        qk = qkv[:, : heads + kv]
        qk = (qk * step.cos) + (_rotate_half(qk) * step.sin)  # queries and keys at once
        q, k, v = qk[:, :heads], qk[:, heads:], qkv[:, heads + kv :]
        if cache is not None:
            k, v = cache.layer(index, k, v)
        if step.prompt_attention is not None:
            assert cache is not None
            queries = step.pack(q.transpose(1, 2).reshape(batch, width, -1))
            attended = step.prompt_attention(
                queries.view(-1, heads, self.head_dim), cache.layers[index], self.scaling
            )
            return step.project(self.o_proj, attended)
        extra = {QUERY_LENGTHS: step.lengths} if step.lengths is not None else {}
        out, _ = _grouped_sdpa(self, q, k, v, step.mask, scaling=self.scaling, **extra)
        return step.project(self.o_proj, step.pack(out.reshape(batch, width, -1)))


class MLP(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.intermediate = config.intermediate_size
        self.gate_up_proj = _linear(config.hidden_size, 2 * config.intermediate_size)
        self.down_proj = _linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor, step: _Step) -> torch.Tensor:
        gate, up = step.project(self.gate_up_proj, x).split(self.intermediate, dim=-1)
        return step.project(self.down_proj, nn.functional.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaBody(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


@dataclass
class Output:
    logits: torch.Tensor
    past_key_values: KVCache | None


class _Step:
    """What every layer of one forward shares: the layout of its tokens, rotary factors, mask.

    Rows are left-padded to the step's width. Only real tokens go through the projections and
    the MLP, packed as [tokens, hidden] (a step where one row feeds 12 forced header tokens and
    two rows one token each multiplies 14 rows, not 36); attention and the cache see the padded
    [batch, width] layout the engine's masks describe.
    """

    def __init__(
        self,
        batch: int,
        width: int,
        real: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        lengths: list[int] | None,
        quantized: bool = False,
    ) -> None:
        self.batch, self.width, self.real = batch, width, real
        self.cos, self.sin, self.mask, self.lengths = cos, sin, mask, lengths
        self.quantized = quantized
        self.prompt_attention: PromptAttention | None = None  # int8 prompts: in the kernel

    def project(self, linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """``linear(x)``, through the matrix's GGUF blocks on a quantized step
        (:mod:`csc.engine.quantized`) when it has them."""
        blocks = getattr(linear, "quantized", None)
        # Prompt tokens go through the blocks too where they were bound for it (int8
        # activations), else through the float32 weights.
        if blocks is not None and (self.quantized or blocks.prefill):
            return blocks.matmul(x)
        return linear(x)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, width, features] -> [tokens, features] (real tokens only)."""
        flat = x.reshape(self.batch * self.width, x.shape[-1])
        return flat if self.real is None else flat.index_select(0, self.real)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """[tokens, features] -> [batch, width, features] (zeros at padding)."""
        if self.real is None:
            return x.view(self.batch, self.width, x.shape[-1])
        full = x.new_zeros((self.batch * self.width, x.shape[-1]))
        full.index_copy_(0, self.real, x)
        return full.view(self.batch, self.width, x.shape[-1])


def _inv_freq(config: LlamaConfig) -> torch.Tensor:
    dim = config.head_dim
    return 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))


class NativeLlamaForCausalLM(nn.Module):
    """Llama as a causal LM. Loaded from transformers' parameter names, with the query, key and
    value projections (and the MLP's gate and up projections) joined into one matrix each: a
    decode step then makes 121 matrix products instead of 211 (bit-identical results)."""

    generation_config: Any = None  # the folder's generation_config.json (eos ids), if any

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaBody(config)
        self.lm_head = _linear(config.hidden_size, config.vocab_size)
        self.register_buffer("inv_freq", _inv_freq(config), persistent=False)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def _rotary(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq.to(positions.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype).unsqueeze(1), emb.sin().to(dtype).unsqueeze(1)

    @property
    def _fusable(self) -> bool:
        """Every matrix has blocks and the sizes suit the fused kernels (multiples of 16)."""
        config = self.config
        return (
            config.hidden_size % 32 == 0
            and config.intermediate_size % 32 == 0
            and all(
                getattr(module, "quantized", None) is not None
                for layer in self.model.layers
                for module in (
                    layer.self_attn.qkv_proj,
                    layer.self_attn.o_proj,
                    layer.mlp.gate_up_proj,
                    layer.mlp.down_proj,
                )
            )
        )

    def _kernel_step(
        self,
        quantized: bool,
        cache: KVCache | None,
        attention_mask: torch.Tensor | None,
        real: torch.Tensor | None,
        batch: int,
        width: int,
        past: int,
        position_ids: torch.Tensor,
    ) -> DecodeStep | None:
        """A quantized step over a filled native cache, run layer by layer in the kernel
        library, if it applies (every matrix has its blocks, sizes the kernels take)."""
        blocks = getattr(self.lm_head, "quantized", None)
        config = self.config
        if (
            not quantized
            or blocks is None
            or not self._fusable
            or attention_mask is None
            or not isinstance(cache, KVCache)
            or len(cache.layers) != config.num_hidden_layers
            or config.head_dim % 16
            or config.head_dim > 256
            or position_ids.device.type != "cpu"
        ):
            return None
        return DecodeStep(
            blocks.lib,
            real,
            batch,
            width,
            past,
            position_ids,
            attention_mask,
            self.inv_freq,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
            config.head_dim**-0.5,
        )

    @staticmethod
    def _mask(
        attention_mask: torch.Tensor | None, batch: int, past: int, width: int, device: torch.device
    ) -> torch.Tensor | None:
        """[batch, 1, width, past + width] booleans: key readable and not in the future."""
        if attention_mask is None and past == 0:
            return None  # plain causal: SDPA's own flag
        total = past + width
        keys = (
            attention_mask.to(device=device, dtype=torch.bool)
            if attention_mask is not None
            else torch.ones((batch, total), dtype=torch.bool, device=device)
        )
        if width == 1:
            return keys[:, None, None, :]
        columns = torch.arange(total, device=device)
        queries = torch.arange(past, total, device=device)
        mask = keys[:, None, None, :] & (columns[None, :] <= queries[:, None])[None, None]
        # A padding query that may read nothing would give NaN; let it read everything (its
        # output is never used, as in transformers' SDPA masks).
        return mask | ~mask.any(dim=-1, keepdim=True)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = True,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> Output:
        batch, width = input_ids.shape
        cache = past_key_values
        if cache is None and use_cache:
            cache = KVCache()
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + width, device=input_ids.device)
            position_ids = position_ids.unsqueeze(0).expand(batch, -1)
        real = None
        if attention_mask is not None and width > 1:
            fed = attention_mask[:, -width:].reshape(-1).to(torch.bool)
            if not bool(fed.all()):
                real = fed.nonzero().squeeze(1)
        ids = input_ids.reshape(-1)
        hidden = self.model.embed_tokens(ids if real is None else ids.index_select(0, real))
        cos, sin = self._rotary(position_ids, hidden.dtype)
        quantized = bool(kwargs.get(QUANTIZED_STEP))
        kernel_step = self._kernel_step(
            quantized, cache, attention_mask, real, batch, width, past, position_ids
        )
        step = _Step(
            batch,
            width,
            real,
            cos,
            sin,
            None if kernel_step else self._mask(attention_mask, batch, past, width, hidden.device),
            kwargs.get(QUERY_LENGTHS),
            quantized,
        )
        if kernel_step is None and attention_mask is not None:
            blocks = getattr(self.model.layers[0].self_attn.qkv_proj, "quantized", None)
            if (
                blocks is not None
                and blocks.prefill  # int8 activations: each query's numbers must be its own
                and isinstance(cache, KVCache)
                and self.config.head_dim % 16 == 0
                and self.config.head_dim <= 256
                and hidden.device.type == "cpu"
            ):
                # (also for one new token: the last token of a prompt the prefix cache holds
                # is computed again, and must get the numbers a full prefill gave it)
                step.prompt_attention = PromptAttention(
                    blocks.lib, real, batch, width, past, attention_mask
                )
        if kernel_step is not None:  # a decode step on the blocks: each layer in C
            assert cache is not None
            hidden = hidden.contiguous()
            for index, layer in enumerate(self.model.layers):
                kernel_step.layer(layer, hidden, cache.layers[index])
        else:
            for index, layer in enumerate(self.model.layers):
                hidden = hidden + layer.self_attn(layer.input_layernorm(hidden), step, cache, index)
                hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden), step)
        if logits_to_keep == 1 and real is not None:
            # Rows are left-padded, so each row's last column is its last real token.
            last = torch.arange(1, batch + 1, device=hidden.device) * width - 1
            hidden = hidden.index_select(0, torch.searchsorted(real, last)).unsqueeze(1)
        else:
            hidden = step.unpack(hidden)
            if logits_to_keep:
                hidden = hidden[:, -logits_to_keep:]
        return Output(
            logits=step.project(self.lm_head, self.model.norm(hidden)), past_key_values=cache
        )


# transformers' names of the matrices each joined one is made of, in order.
_JOINED = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}


def _join(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """transformers' per-projection tensors -> the native model's joined ones."""
    state = dict(state)
    for i in range(layers):
        for joined, parts in _JOINED.items():
            names = [f"model.layers.{i}.{part}.weight" for part in parts]
            if all(name in state for name in names):
                state[f"model.layers.{i}.{joined}.weight"] = torch.cat(
                    [state.pop(name) for name in names]
                )
    return state


def load_native(
    folder: str | Path, config: LlamaConfig, device: str, dtype: torch.dtype
) -> NativeLlamaForCausalLM:
    """Build the model (parameters left empty on the meta device) and take the tensors of
    ``model.safetensors``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    state = _join(load_file(str(folder / WEIGHTS_FILE), device="cpu"), config.num_hidden_layers)
    if config.tie_word_embeddings or "lm_head.weight" not in state:
        state["lm_head.weight"] = state.get("model.embed_tokens.weight")
    model = NativeLlamaForCausalLM(config)
    expected = set(model.state_dict())
    missing = sorted(name for name in expected if state.get(name) is None)
    if missing:
        raise ValueError(
            f"{folder / WEIGHTS_FILE} lacks tensors of a Llama checkpoint for "
            f"{len(missing)} parameters (first: {missing[0]}); set {NATIVE_ENV}=0 to load it "
            "with transformers"
        )
    state = {name: state[name].to(dtype) for name in expected}
    model.load_state_dict(state, assign=True, strict=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    try:
        generation = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
        model.generation_config = SimpleNamespace(eos_token_id=generation.get("eos_token_id"))
    except (OSError, ValueError):
        pass  # no generation config: the tokenizer's eos token stops replies
    model.to(device)
    model.eval()
    return model
