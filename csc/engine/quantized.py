"""The embedded model on its own GGUF blocks: decode steps, and prompts with int8 activations.

The embedded SmolLM2 ships as a GGUF file whose matrices are llama.cpp's Q4_1 blocks (and Q8_0
for the tied embedding). The engine's float32 weights are exactly those blocks de-quantised, so
the float32 model and the blocks are the same model. A decode step reads every weight once for
a handful of tokens: it is bound by memory bandwidth, and the blocks are a fifth of the bytes
(111 MB against 538 MB). So decode steps multiply through a small C kernel over the blocks
(``quantized.c``), each layer in four kernel calls (:meth:`DecodeStep.layer`): norm + q/k/v,
rotary + cache append + attention, output projection + residual, and the MLP.

Prefill is bound by arithmetic. On a CPU with AVX-512 VNNI the blocks multiply as llama.cpp
multiplies them: activations quantised per block of 32 to int8, exact integer block sums
(``csc_matmul_i8``), for prompt tokens and decode steps alike; prompt tokens attend in the
kernel too (:class:`PromptAttention`), so a token's numbers never depend on the batch or on the
prefix cache. That is another rounding of the same model (a mean KL of about 0.004 nats from
float32's next-token distribution), not the float32 model's answers.

- **Batch-invariant.** Each (token, output) is one sum in a fixed order, whatever else is in the
  step: a row decodes the same tokens alone or in a batch of 16.
- **Compiled once per machine** with the system C compiler (``$CC`` or ``cc``, ``-O3
  -march=native -fopenmp``) into the csc cache, at the first engine load (about 4 s).
  AVX-512 only. No compiler, a failed build or another CPU: the engine says why in its log and
  runs in float32 as before.
- ``CSC_QUANTIZED=float`` keeps float32 activations (decode on the blocks, prefill on the
  float32 weights: the float32 model's answers to summation order); ``CSC_QUANTIZED=0`` turns
  the blocks off. Models other than the embedded one (``local:``, ``finetuned:``) have no
  blocks and always run in float32.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("csc.engine")

QUANTIZED_ENV = "CSC_QUANTIZED"
# Keyword argument of the native forward: multiply through the blocks (decode steps).
QUANTIZED_STEP = "csc_quantized"
PACKED_FILE = "csc-quantized.safetensors"
PACKED_FORMAT = "1"
SOURCE = Path(__file__).with_name("quantized.c")
BLOCK = 32
# Bytes per block in the kernel's layout: GGUF's blocks with float16 scales widened to float32.
BLOCK_BYTES = {"Q4_1": 24, "Q8_0": 36}
_GGUF_BYTES = {"Q4_1": 20, "Q8_0": 34}
_KIND = {"Q4_1": 4, "Q8_0": 8}
# The same blocks laid out for int8 activations (AVX-512 VNNI): kernel kind, bytes per 16
# outputs x 32 inputs.
_I8_KIND = {"Q4_1": 5, "Q8_0": 9}
I8_BYTES = {"Q4_1": 384, "Q8_0": 576}


def quantized_mode() -> str:
    """What ``CSC_QUANTIZED`` asks for: ``"int8"`` (the default, ``1``: prompt tokens and
    decode steps multiply through the blocks with int8 activations, as llama.cpp does),
    ``"float"`` (decode steps through the blocks with float32 activations, prefill on the
    float32 weights: the float32 model's answers) or ``"off"`` (``0``)."""
    value = os.environ.get(QUANTIZED_ENV, "1").strip().lower()
    if value in ("0", "false", "no", "off"):
        return "off"
    if value == "float":
        return "float"
    if value in ("1", "true", "yes", "on", "int8", ""):
        return "int8"
    raise ValueError(
        f"{QUANTIZED_ENV}={value!r}: use 1 (the default: int8 activations on the GGUF blocks), "
        "float (float32 activations: the float32 model's answers) or 0 (no blocks)"
    )


def quantized_enabled() -> bool:
    """Whether decode steps may use the block kernel (``CSC_QUANTIZED`` is not 0/false/no/off)."""
    return quantized_mode() != "off"


# --------------------------------------------------------------------------- the kernel
_LIBRARY: tuple[Any, str] | None = None
_LIBRARY_LOCK = threading.Lock()


def _cpu_signature() -> str:
    """What ``-march=native`` compiles for: the CPU's flags (Linux), else the platform."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> str | None:
    name = os.environ.get("CC") or "cc"
    return shutil.which(name)


def kernel_library() -> tuple[Any, str]:
    """The compiled kernel (a ``ctypes.CDLL``) and ``""``, or ``(None, why not)``.

    Built once per machine and source into ``<csc cache>/kernels``; later processes load it.
    """
    global _LIBRARY
    with _LIBRARY_LOCK:
        if _LIBRARY is None:
            _LIBRARY = _load_library()
        return _LIBRARY


def _load_library() -> tuple[Any, str]:
    from csc.engine.model_store import cache_dir

    compiler = _compiler()
    if compiler is None:
        return None, f"no C compiler ({os.environ.get('CC') or 'cc'} not found; set CC)"
    flags = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
    try:
        version = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"C compiler {compiler} does not run ({exc})"
    key = hashlib.sha256(
        b"\0".join(
            part.encode()
            for part in (SOURCE.read_text(), version, " ".join(flags), _cpu_signature())
        )
    ).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"quantized-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            done = subprocess.run(
                [compiler, *flags, str(SOURCE), "-o", tmp],
                capture_output=True,
                text=True,
                timeout=300,
            )
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
                return None, f"building {SOURCE.name} with {compiler} failed: {last}"
            os.replace(tmp, target)  # atomic: concurrent builds leave one complete file
        except (OSError, subprocess.SubprocessError) as exc:
            return None, f"building {SOURCE.name} with {compiler} failed: {exc}"
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as exc:
        return None, f"loading {target} failed: {exc}"
    if not lib.csc_kernel_simd():
        return None, "this CPU has no AVX-512 (the kernel's only fast path)"
    pointer, number = ctypes.c_void_p, ctypes.c_int
    for name in ("csc_q4_1_matmul", "csc_q8_0_matmul"):
        fn = getattr(lib, name)
        fn.argtypes = [pointer, number, number, pointer, number, pointer, number]
        fn.restype = None
    lib.csc_decode_attention.argtypes = [
        pointer, number, number, number, number,  # qkv, T, H, KV, D
        pointer, pointer, pointer, pointer,  # rows, cols, positions, inv_freq
        pointer, pointer, number,  # key and value buffers, their capacity
        pointer, number, ctypes.c_float,  # mask, its width, scaling
        pointer, pointer, number,  # each row's first token and token count, rows
        pointer, pointer, number,  # scratch, out, threads
    ]  # fmt: skip
    lib.csc_decode_attention.restype = None
    real = ctypes.c_float
    lib.csc_rmsnorm_matmul.argtypes = [
        pointer, number, number, pointer, real, number, pointer, number, pointer, pointer, number
    ]  # fmt: skip
    lib.csc_matmul_add.argtypes = [
        pointer, number, number, number, pointer, number, pointer, pointer, number
    ]  # fmt: skip
    lib.csc_decode_mlp.argtypes = [
        pointer, number, number, pointer, real, number, pointer, number, number, pointer,
        pointer, pointer, pointer, pointer, number,
    ]  # fmt: skip
    for name in ("csc_rmsnorm_matmul", "csc_matmul_add", "csc_decode_mlp"):
        getattr(lib, name).restype = None
    lib.csc_prompt_attention.argtypes = [
        pointer, number, number, number, number,  # q, T, H, KV, D
        pointer, pointer,  # rows, cols
        pointer, pointer, number,  # key and value buffers, their capacity
        pointer, number, ctypes.c_float,  # mask, its width, scaling
        pointer, pointer, number,  # each row's first token and token count, rows
        pointer, number,  # out, threads
    ]  # fmt: skip
    lib.csc_prompt_attention.restype = None
    lib.csc_to_i8.argtypes = [number, pointer, number, number, pointer]
    lib.csc_to_i8.restype = None
    if lib.csc_kernel_vnni():
        lib.csc_matmul_i8.argtypes = [
            number, pointer, number, number, pointer, number, pointer, number
        ]  # fmt: skip
        lib.csc_matmul_i8.restype = None
    return lib, ""


# --------------------------------------------------------------------------- weights
class QuantizedWeight:
    """One matrix [out_features, in_features] as rows of blocks in the kernel's layout."""

    def __init__(self, blocks: torch.Tensor, kind: str, in_features: int) -> None:
        if kind not in BLOCK_BYTES:
            raise ValueError(f"unsupported block type {kind}")
        if in_features % BLOCK or blocks.shape[1] != in_features // BLOCK * BLOCK_BYTES[kind]:
            raise ValueError(
                f"{kind} blocks of shape {tuple(blocks.shape)} for {in_features} inputs"
            )
        self.blocks = blocks.contiguous()
        self.kind = kind
        self.in_features = in_features
        self.out_features = int(blocks.shape[0])
        self.lib: Any = None
        self._fn: Any = None
        self.i8: torch.Tensor | None = None  # the same blocks in the int8 prefill layout
        self.prefill = False  # prompt tokens multiply through these blocks too

    def bind(self, lib: Any, prefill: bool = False) -> QuantizedWeight:
        """Use ``lib``'s kernels. With ``prefill`` (where the CPU has AVX-512 VNNI), lay the
        blocks out for int8 activations (:meth:`matmul` then goes through them, for prompt
        tokens and decode steps alike)."""
        self.lib = lib
        self._fn = lib.csc_q4_1_matmul if self.kind == "Q4_1" else lib.csc_q8_0_matmul
        self.prefill = prefill and bool(lib.csc_kernel_vnni()) and self.out_features % 16 == 0
        self.i8 = None
        if self.prefill:
            groups, blocks = self.out_features // 16, self.in_features // BLOCK
            self.i8 = torch.empty(groups * blocks * I8_BYTES[self.kind], dtype=torch.uint8)
            lib.csc_to_i8(
                _KIND[self.kind], self.blocks.data_ptr(), self.out_features, self.in_features,
                self.i8.data_ptr(),
            )  # fmt: skip
        return self

    @property
    def kernel(self) -> tuple[int, int]:
        """(kind, pointer) for the fused decode kernels: the i8 layout where there is one."""
        if self.i8 is not None:
            return _I8_KIND[self.kind], self.i8.data_ptr()
        return _KIND[self.kind], self.blocks.data_ptr()

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T`` for float32 ``x`` [..., in_features]: with int8 activations where the
        blocks have the i8 layout (as llama.cpp multiplies them), else float32 activations."""
        flat = x.reshape(-1, self.in_features)
        if flat.dtype != torch.float32 or not flat.is_contiguous():
            flat = flat.float().contiguous()
        rows = flat.shape[0]
        out = torch.empty((rows, self.out_features), dtype=torch.float32)
        if rows and self.i8 is not None:
            self.lib.csc_matmul_i8(
                _I8_KIND[self.kind], flat.data_ptr(), rows, self.in_features,
                self.i8.data_ptr(), self.out_features, out.data_ptr(), torch.get_num_threads(),
            )  # fmt: skip
        elif rows:
            self._fn(
                flat.data_ptr(),
                rows,
                self.in_features,
                self.blocks.data_ptr(),
                self.out_features,
                out.data_ptr(),
                torch.get_num_threads(),
            )
        return out.view(*x.shape[:-1], self.out_features)

    def dequantize(self) -> torch.Tensor:
        """The float32 matrix these blocks stand for (as llama.cpp de-quantises them)."""
        nb = self.in_features // BLOCK
        blk = self.blocks.view(self.out_features, nb, BLOCK_BYTES[self.kind])
        d = blk[:, :, 0:4].contiguous().view(torch.float32)  # [N, nb, 1]
        if self.kind == "Q8_0":
            q = blk[:, :, 4:].contiguous().view(torch.int8).float()
            return (d * q).reshape(self.out_features, self.in_features)
        m = blk[:, :, 4:8].contiguous().view(torch.float32)
        nibbles = blk[:, :, 8:]
        q = torch.cat([(nibbles & 15).float(), (nibbles >> 4).float()], dim=2)
        return torch.addcmul(m, d, q).reshape(self.out_features, self.in_features)


def _widen(tensor: Any) -> tuple[torch.Tensor, str, int]:
    """A GGUF tensor's blocks [rows, blocks * bytes] in the kernel's layout."""
    kind = tensor.tensor_type.name
    if kind not in BLOCK_BYTES:
        raise ValueError(f"{tensor.name} is {kind}; the kernel reads Q4_1 and Q8_0 blocks")
    raw = np.asarray(tensor.data)
    rows, nb = raw.shape[0], raw.shape[1] // _GGUF_BYTES[kind]
    blk = raw.reshape(rows, nb, _GGUF_BYTES[kind])
    scales = [blk[:, :, 0:2]] if kind == "Q8_0" else [blk[:, :, 0:2], blk[:, :, 2:4]]
    parts = [
        np.ascontiguousarray(s)
        .view(np.float16)
        .astype(np.float32)
        .view(np.uint8)
        .reshape(rows, nb, 4)
        for s in scales
    ]
    body = blk[:, :, 2:] if kind == "Q8_0" else blk[:, :, 4:]
    packed = np.concatenate([*parts, body], axis=2).reshape(rows, nb * BLOCK_BYTES[kind])
    return torch.from_numpy(np.ascontiguousarray(packed)), kind, nb * BLOCK


def _unpermute(blocks: torch.Tensor, heads: int) -> torch.Tensor:
    """GGUF's query/key rows (llama.cpp's rotary layout) in Hugging Face's order."""
    rows = blocks.shape[0]
    return (
        blocks.reshape(heads, rows // heads // 2, 2, blocks.shape[1])
        .transpose(1, 2)
        .reshape(blocks.shape)
    )


def gguf_weights(gguf: Path, config: Any) -> dict[str, QuantizedWeight]:
    """The native model's matrices (joined q/k/v and gate/up, the tied head) as blocks."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf))
    tensors = {t.name: t for t in reader.tensors}

    def take(name: str, heads: int = 0) -> tuple[torch.Tensor, str, int]:
        if name not in tensors:
            raise ValueError(f"{gguf.name} has no tensor {name}")
        blocks, kind, width = _widen(tensors[name])
        return (_unpermute(blocks, heads) if heads else blocks), kind, width

    def joined(*parts: tuple[torch.Tensor, str, int]) -> QuantizedWeight:
        kinds = {kind for _, kind, _ in parts}
        if len(kinds) != 1:
            raise ValueError(f"mixed block types {sorted(kinds)} in one joined matrix")
        return QuantizedWeight(torch.cat([b for b, _, _ in parts]), kinds.pop(), parts[0][2])

    weights: dict[str, QuantizedWeight] = {}
    for i in range(config.num_hidden_layers):
        pre = f"model.layers.{i}."
        weights[pre + "self_attn.qkv_proj"] = joined(
            take(f"blk.{i}.attn_q.weight", config.num_attention_heads),
            take(f"blk.{i}.attn_k.weight", config.num_key_value_heads),
            take(f"blk.{i}.attn_v.weight"),
        )
        weights[pre + "self_attn.o_proj"] = joined(take(f"blk.{i}.attn_output.weight"))
        weights[pre + "mlp.gate_up_proj"] = joined(
            take(f"blk.{i}.ffn_gate.weight"), take(f"blk.{i}.ffn_up.weight")
        )
        weights[pre + "mlp.down_proj"] = joined(take(f"blk.{i}.ffn_down.weight"))
    head = "output.weight" if "output.weight" in tensors else "token_embd.weight"
    weights["lm_head"] = joined(take(head))
    return weights


def _mismatch(model: Any, weights: dict[str, QuantizedWeight]) -> str:
    """The first matrix whose blocks are not exactly the model's float32 weight, or ``""``."""
    modules = dict(model.named_modules())
    for name, weight in weights.items():
        module = modules.get(name)
        if module is None or tuple(module.weight.shape) != (
            weight.out_features,
            weight.in_features,
        ):
            return f"{name}: no matrix of shape {weight.out_features}x{weight.in_features}"
        if not torch.equal(weight.dequantize(), module.weight.detach().float()):
            return f"{name}: the blocks de-quantise to other numbers than the model's weights"
    return ""


def _packed_path(folder: Path) -> Path:
    return folder / PACKED_FILE


def _stamp(gguf: Path, folder: Path) -> dict[str, str]:
    """What the packed file was made from: a changed GGUF or model file means rebuild."""
    weights = folder / "model.safetensors"
    return {
        "format": PACKED_FORMAT,
        "gguf": f"{gguf.name}:{gguf.stat().st_size}",
        "weights": f"{weights.stat().st_size}:{weights.stat().st_mtime_ns}",
    }


def load_blocks(model: Any, gguf: Path, folder: Path) -> dict[str, QuantizedWeight]:
    """The blocks of ``model`` from ``folder``'s packed file, made (and checked bit for bit
    against the model's weights) from the GGUF file the first time."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    packed = _packed_path(folder)
    stamp = _stamp(gguf, folder)
    if packed.exists():
        try:
            with safe_open(str(packed), framework="pt") as handle:
                meta = handle.metadata() or {}
                if {k: meta.get(k) for k in stamp} == stamp:
                    return {
                        name: QuantizedWeight(
                            handle.get_tensor(name), meta[f"{name}.kind"], int(meta[f"{name}.in"])
                        )
                        for name in handle.keys()  # noqa: SIM118 (safe_open has no iterator)
                    }
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            logger.warning("%s is unreadable (%s): rebuilding it", packed, exc)
    weights = gguf_weights(gguf, model.config)
    why = _mismatch(model, weights)
    if why:
        raise ValueError(f"{gguf} does not match {folder}: {why}")
    meta = dict(stamp)
    for name, weight in weights.items():
        meta[f"{name}.kind"] = weight.kind
        meta[f"{name}.in"] = str(weight.in_features)
    fd, tmp = tempfile.mkstemp(suffix=".safetensors", dir=folder)
    os.close(fd)
    try:
        save_file({name: w.blocks for name, w in weights.items()}, tmp, metadata=meta)
        os.replace(tmp, packed)
    except OSError as exc:  # a read-only cache still serves this process
        logger.warning("could not save %s (%s)", packed, exc)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return weights


def attach(model: Any, gguf: Path, folder: Path) -> str:
    """Give each matrix of a native model its blocks (``module.quantized``), so forwards called
    with ``csc_quantized=True`` multiply through the kernel. Returns ``""`` or why not."""
    if not quantized_enabled():
        return f"{QUANTIZED_ENV}=0"
    lib, why = kernel_library()
    if lib is None:
        return why
    try:
        weights = load_blocks(model, gguf, folder)
    except (OSError, ValueError) as exc:
        return str(exc)
    prefill = quantized_mode() == "int8"
    modules = dict(model.named_modules())
    for name, weight in weights.items():
        modules[name].quantized = weight.bind(lib, prefill=prefill)
    return ""


# --------------------------------------------------------------------------- decode attention
class _TokenLayout:
    """Where a step's real tokens are, as the kernels read it: each token's batch row and
    cache column, the key mask as bytes, and each row's first token and token count (a row's
    tokens are consecutive)."""

    def __init__(
        self, real: torch.Tensor | None, batch: int, width: int, past: int,
        attention_mask: torch.Tensor,
    ) -> None:  # fmt: skip
        self.flat = torch.arange(batch * width) if real is None else real
        self.rows = (self.flat // width).to(torch.int32)
        self.cols = (self.flat % width + past).to(torch.int32)
        self.mask = attention_mask.to(torch.uint8).contiguous()
        _, counts = torch.unique_consecutive(self.rows, return_counts=True)
        self.group_count = counts.to(torch.int32)
        self.group_start = (torch.cumsum(counts, 0) - counts).to(torch.int32)

    def attend_groups(
        self, lib: Any, queries: torch.Tensor, heads: int, head_dim: int, layer: Any,
        scaling: float, starts: torch.Tensor, counts: torch.Tensor, out: torch.Tensor,
    ) -> None:  # fmt: skip
        """``csc_prompt_attention`` for the groups of consecutive tokens at ``starts`` /
        ``counts``: ``queries`` [tokens, heads * head dim] (rotated, contiguous) attend over
        ``layer``'s buffers (a :class:`csc.engine.llama.KVLayer` already holding this step's
        keys and values) into ``out``. Each query's numbers depend only on its own keys."""
        layer.reserve(0)  # the kernel reads the buffers as contiguous
        keys, values = layer.buf_k, layer.buf_v
        lib.csc_prompt_attention(
            queries.data_ptr(), queries.shape[0], heads, keys.shape[1], head_dim,
            self.rows.data_ptr(), self.cols.data_ptr(),
            keys.data_ptr(), values.data_ptr(), keys.shape[2],
            self.mask.data_ptr(), self.mask.shape[1], scaling,
            starts.data_ptr(), counts.data_ptr(), len(counts),
            out.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip


class DecodeStep(_TokenLayout):
    """One decode step of a native model on its blocks, each layer in four kernel calls
    (:meth:`layer`) instead of about 25 PyTorch operations.

    Built once per forward: which batch row, cache column and position each real token has,
    and the step's key mask as bytes. Each token attends to its row's readable columns up to
    its own, so a row's forced tokens see each other causally and left padding is never read.
    """

    def __init__(
        self,
        lib: Any,
        real: torch.Tensor | None,
        batch: int,
        width: int,
        past: int,
        positions: torch.Tensor,
        attention_mask: torch.Tensor,
        inv_freq: torch.Tensor,
        heads: int,
        kv_heads: int,
        head_dim: int,
        scaling: float,
    ) -> None:
        super().__init__(real, batch, width, past, attention_mask)
        self.positions = positions.reshape(-1).index_select(0, self.flat).to(torch.float32)
        # Rows feeding a run of several forced tokens: (first token, count). They attend in
        # csc_prompt_attention, which reads each key once for a tile of queries and gives
        # each query the numbers it would get alone.
        self.runs = [
            (start, count)
            for start, count in zip(self.group_start.tolist(), self.group_count.tolist())
            if count > 1
        ]
        self.run_start = torch.tensor([r[0] for r in self.runs], dtype=torch.int32)
        self.run_count = torch.tensor([r[1] for r in self.runs], dtype=torch.int32)
        self.inv_freq = inv_freq.float().contiguous()
        self.lib, self.width = lib, width
        self._buffers: dict[str, torch.Tensor] = {}
        self.heads, self.kv_heads, self.head_dim, self.scaling = heads, kv_heads, head_dim, scaling

    def _buffer(self, name: str, rows: int, columns: int) -> torch.Tensor:
        """A float32 scratch matrix of this step, made once and reused by every layer (the
        kernels write into it, so it is held here while they run)."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape != (rows, columns):
            buffer = self._buffers[name] = torch.empty((rows, columns), dtype=torch.float32)
        return buffer

    def layer(self, decoder: Any, hidden: torch.Tensor, kv: Any) -> None:
        """One decoder layer of the step on the residual stream ``hidden`` [tokens, hidden]
        (contiguous float32, updated in place) in four kernel calls: norm + q/k/v, attention,
        output projection + residual, and the MLP (norm, gate/up, SiLU, down, residual)."""
        attn, mlp = decoder.self_attn, decoder.mlp
        norm1, norm2 = decoder.input_layernorm, decoder.post_attention_layernorm
        qkv_w, o_w = attn.qkv_proj.quantized, attn.o_proj.quantized
        gu_w, down_w = mlp.gate_up_proj.quantized, mlp.down_proj.quantized
        tokens, size = hidden.shape
        threads = torch.get_num_threads()
        normed = self._buffer("normed", tokens, size)
        qkv = self._buffer("qkv", tokens, qkv_w.out_features)
        self.lib.csc_rmsnorm_matmul(
            hidden.data_ptr(), tokens, size, norm1.weight.data_ptr(), norm1.variance_epsilon,
            *qkv_w.kernel, qkv_w.out_features,
            normed.data_ptr(), qkv.data_ptr(), threads,
        )  # fmt: skip
        out = self.attend(qkv, kv)
        self.lib.csc_matmul_add(
            out.data_ptr(), tokens, o_w.in_features, *o_w.kernel,
            size, hidden.data_ptr(), normed.data_ptr(), threads,
        )  # fmt: skip
        inter = mlp.intermediate
        gate_up = self._buffer("gate_up", tokens, 2 * inter)
        act = self._buffer("act", tokens, inter)
        product = self._buffer("product", tokens, size)
        self.lib.csc_decode_mlp(
            hidden.data_ptr(), tokens, size, norm2.weight.data_ptr(), norm2.variance_epsilon,
            *gu_w.kernel, inter, *down_w.kernel, normed.data_ptr(), gate_up.data_ptr(), act.data_ptr(),
            product.data_ptr(), threads,
        )  # fmt: skip

    def attend(self, qkv: torch.Tensor, layer: Any) -> torch.Tensor:
        """``qkv`` [tokens, (heads + 2 kv heads) * head dim] -> attention output [tokens,
        heads * head dim]; ``layer`` (a :class:`csc.engine.llama.KVLayer`) gains the step's
        columns."""
        layer.reserve(self.width)
        qkv = qkv.contiguous()
        tokens = qkv.shape[0]
        out = self._buffer("attended", tokens, self.heads * self.head_dim)
        scratch = self._buffer("queries", tokens, self.heads * self.head_dim)
        self.lib.csc_decode_attention(
            qkv.data_ptr(), tokens, self.heads, self.kv_heads, self.head_dim,
            self.rows.data_ptr(), self.cols.data_ptr(), self.positions.data_ptr(),
            self.inv_freq.data_ptr(),
            layer.buf_k.data_ptr(), layer.buf_v.data_ptr(), layer.buf_k.shape[2],
            self.mask.data_ptr(), self.mask.shape[1], self.scaling,
            self.group_start.data_ptr(), self.group_count.data_ptr(), len(self.group_count),
            scratch.data_ptr(), out.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        layer.advance(self.width)
        if self.runs:
            self.attend_groups(
                self.lib, scratch, self.heads, self.head_dim, layer, self.scaling,
                self.run_start, self.run_count, out,
            )  # fmt: skip
        return out


class PromptAttention(_TokenLayout):
    """Attention of a step whose rows feed several tokens (prompt tokens), in the kernel
    (``csc_prompt_attention``): each query's numbers depend only on its own keys, so a prompt
    token gets the same attention output alone, batched, or over a prefix from the prefix
    cache. Used with int8 activations, which turn last-bit differences into other answers."""

    def __init__(
        self, lib: Any, real: torch.Tensor | None, batch: int, width: int, past: int,
        attention_mask: torch.Tensor,
    ) -> None:  # fmt: skip
        super().__init__(real, batch, width, past, attention_mask)
        self.lib = lib

    def __call__(self, queries: torch.Tensor, layer: Any, scaling: float) -> torch.Tensor:
        """``queries`` [tokens, heads, head dim] (rotated, the step's real tokens in order);
        ``layer`` a :class:`csc.engine.llama.KVLayer` already holding the step's keys and
        values. Returns [tokens, heads * head dim]."""
        tokens, heads, dim = queries.shape
        queries = queries.reshape(tokens, heads * dim).contiguous()
        out = torch.empty((tokens, heads * dim), dtype=torch.float32)
        self.attend_groups(
            self.lib, queries, heads, dim, layer, scaling, self.group_start, self.group_count, out
        )
        return out
