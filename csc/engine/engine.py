"""The generation engine: one per (model, adapter, device) per process.

Requests from any thread (dspy.Parallel, Module.batch, Evaluate, async calls, ``csc serve``) are
put on a queue. A single daemon worker runs a **continuous batch**: between two decode steps it
admits the requests that have arrived, prefills them, and adds their rows to the running batch,
so a request never waits for a whole batch to finish. Finished rows leave at once.

Prefill reuses a **prefix cache** (:class:`PrefixCache`, a radix tree of token sequences with
their KV tensors, LRU-evicted under a memory bound): the system message of every signature, and
the dialogue history of the previous turn, are computed once and then only the new tokens of a
prompt are prefilled. Requests admitted together that share a prefix not cached yet are
prefilled in rounds (:meth:`Engine._next_round`), so the shared part is computed once.

Plain Llama checkpoints run on :mod:`csc.engine.llama`'s native forward, other models on
transformers'; :meth:`Engine.new_cache` gives the KV cache type each one takes.

Each row keeps its own output plan, sampling options and random generator, so batching and
caching change throughput, not answers.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from csc.engine.decoding import RowDecoder, Sampling, Vocabulary
from csc.engine.kernels import (
    GROUPED_ATTENTION,
    QUERY_LENGTHS,
    use_grouped_attention,
    use_packed_linears,
)
from csc.engine.llama import KV_GROW, KVCache, KVLayer, NativeLlamaForCausalLM
from csc.engine.model_store import ModelSource, embedded_gguf, load_model
from csc.engine.quantized import QUANTIZED_STEP, attach, quantized_enabled
from csc.engine.structure import OutputPlan, Text

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_BATCH_WAIT_MS = 15.0
DEFAULT_PREFIX_CACHE_MB = 1024.0
MAX_GATHER_FACTOR = 8
MIN_SHARED_PREFIX = 16  # below this, waiting for another request's prefill saves too little
_GROW = KV_GROW  # KV buffer growth step (tokens) of the running batch
# Prefill grouping: uncached parts up to PREFILL_SHORT tokens always share a forward (the
# weights' memory traffic dominates there); longer ones only with parts at most PREFILL_SPREAD
# times the group's shortest (padding is computed too).
PREFILL_SHORT = 64
PREFILL_SPREAD = 1.25


@dataclass
class Generation:
    """What one request produced."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    cached_tokens: int = 0  # prompt tokens served from the prefix cache


@dataclass
class _Job:
    prompt_ids: list[int]
    plan: OutputPlan | None
    sampling: Sampling
    future: Future
    on_text: Callable[[str], None] | None = None


@dataclass
class _Row:
    """A request in the running batch."""

    job: _Job
    decoder: RowDecoder
    cached_tokens: int
    pending: list[int] = field(default_factory=list)  # tokens to feed at the next step
    fed: list[int] = field(default_factory=list)  # answer tokens already in the KV cache
    sent: str = ""  # streamed text so far
    hold: int = field(default=0)  # characters held back from streaming (stop strings)


def busy_cores(interval: float = 0.25) -> float | None:
    """How many cores other processes keep busy right now: sampled from ``/proc/stat`` over
    ``interval`` seconds, less this process's own time (niced processes count as busy). None
    where there is no /proc/stat."""

    def snapshot() -> tuple[int, int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(x) for x in f.readline().split()[1:9]]
        with open("/proc/self/stat", encoding="ascii") as f:
            own = f.read().rsplit(")", 1)[1].split()  # utime, stime: fields 14, 15
        # idle + iowait, all, and this process's own time (its torch threads are not "others")
        return values[3] + values[4], sum(values), int(own[11]) + int(own[12])

    try:
        idle0, total0, own0 = snapshot()
        time.sleep(interval)
        idle1, total1, own1 = snapshot()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    cores = max(1, os.cpu_count() or 1)
    busy = (total1 - total0) - (idle1 - idle0) - (own1 - own0)
    return max(0.0, busy / (total1 - total0)) * cores


def default_threads() -> int:
    """CPU threads for the engine: every core the machine leaves free, at least one.

    On an idle machine all cores run fastest (SmolLM2 prefill about 470 tokens/s with 2 threads
    and 250 with 1 on the 2-core development machine). On a machine busy with other processes,
    PyTorch's OpenMP threads spin-wait for each other: with the load average at 8-9 on those 2
    cores, a decode step took 2.95 s with 2 threads and 0.52 s with 1. So the default counts the
    cores left free when the engine loads, sampled for a quarter of a second from ``/proc/stat``
    (a core counts as taken once half of it is busy). The 1-minute load average, the fallback
    where /proc/stat is missing, lags: a process that has just finished still holds it up.
    ``num_threads`` overrides it; ``benchmarks/local_lm.py --only threads`` measures both
    settings under a DSPy workload.
    """
    cores = max(1, os.cpu_count() or 1)
    busy = busy_cores()
    if busy is not None:
        return max(1, min(cores, int(cores + 0.5 - busy)))
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not available on this platform
        return cores
    return max(1, min(cores, int(cores + 1 - load)))


def resolve_device(device: str | None) -> str:
    """``device`` as given, else CUDA when available, else CPU."""
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(device: str, dtype: str | torch.dtype | None) -> torch.dtype:
    """``dtype`` as given; default bf16/fp16 on CUDA (as supported) and float32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype:
        value = getattr(torch, str(dtype).replace("torch.", ""), None)
        if not isinstance(value, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
        return value
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


# --------------------------------------------------------------------------- prefix cache
class _Node:
    __slots__ = ("children", "keys", "last_used", "parent", "tokens", "values")

    def __init__(
        self,
        tokens: tuple[int, ...],
        keys: torch.Tensor | None,
        values: torch.Tensor | None,
        parent: _Node | None,
    ) -> None:
        self.tokens = tokens  # the edge label: tokens this node adds to its parent's sequence
        self.keys = keys  # [layers, kv_heads, len(tokens), head_dim]
        self.values = values
        self.parent = parent
        self.children: dict[int, _Node] = {}
        self.last_used = 0.0

    @property
    def nbytes(self) -> int:
        if self.keys is None or self.values is None:
            return 0
        return self.keys.numel() * self.keys.element_size() * 2


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Sorted indices as half-open runs of consecutive ones: [0, 1, 3] -> [(0, 2), (3, 4)]."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _assemble(blocks: list[torch.Tensor], spare: int) -> tuple[torch.Tensor, int]:
    """Stack row blocks [rows, heads, columns, dim] into one buffer, each right-aligned to the
    widest, with ``spare`` empty columns after; returns (buffer, width)."""
    width = max(b.shape[2] for b in blocks)
    ref = blocks[0]
    rows = sum(b.shape[0] for b in blocks)
    buf = ref.new_empty((rows, ref.shape[1], width + spare, ref.shape[3]))
    at = 0
    for block in blocks:
        n, w = block.shape[0], block.shape[2]
        if w < width:
            buf[at : at + n, :, : width - w].zero_()
        buf[at : at + n, :, width - w : width].copy_(block)
        at += n
    return buf, width


def _cut_segments(segments: list[torch.Tensor], n: int) -> list[torch.Tensor]:
    """The first ``n`` columns (dim 2) of consecutive segments."""
    out: list[torch.Tensor] = []
    for seg in segments:
        if n <= 0:
            break
        out.append(seg[:, :, :n])
        n -= seg.shape[2]
    return out


def _common_length(a: tuple[int, ...] | list[int], b: list[int], start: int) -> int:
    n = min(len(a), len(b) - start)
    i = 0
    while i < n and a[i] == b[start + i]:
        i += 1
    return i


class PrefixCache:
    """KV tensors of prompt prefixes kept across requests: a radix tree over token ids.

    Like SGLang's radix cache: each edge holds the keys and values of its tokens for every
    layer, so any prompt that starts like an earlier one (the same system message, a history
    that grew by one turn) gets the longest cached prefix back. Least recently used leaves are
    evicted once the tensors exceed ``max_bytes``.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self.root = _Node((), None, None, None)
        self.bytes = 0
        self.lookups = 0
        self.hit_tokens = 0
        self.evictions = 0
        self._clock = 0.0
        self._lock = threading.Lock()

    def _tick(self) -> float:
        self._clock += 1.0
        return self._clock

    def match(self, ids: list[int]) -> tuple[int, torch.Tensor | None, torch.Tensor | None]:
        """(length, keys, values) of the longest cached prefix of ``ids`` (tensors [L, H, n, D])."""
        pos, keys, values = self.match_segments(ids)
        if not keys:
            return 0, None, None
        if len(keys) == 1:
            return pos, keys[0], values[0]
        return pos, torch.cat(keys, dim=2), torch.cat(values, dim=2)

    def match_segments(self, ids: list[int]) -> tuple[int, list[torch.Tensor], list[torch.Tensor]]:
        """Like :meth:`match`, but the tensors of each tree edge on the path, in order (views,
        not copies: the caller copies them once, into its own layout)."""
        with self._lock:
            self.lookups += 1
            node, pos = self.root, 0
            keys: list[torch.Tensor] = []
            values: list[torch.Tensor] = []
            now = self._tick()
            while pos < len(ids):
                child = node.children.get(ids[pos])
                if child is None:
                    break
                common = _common_length(child.tokens, ids, pos)
                child.last_used = now
                assert child.keys is not None and child.values is not None
                keys.append(child.keys[:, :, :common])
                values.append(child.values[:, :, :common])
                pos += common
                if common < len(child.tokens):
                    break
                node = child
            self.hit_tokens += pos
            return pos, keys, values

    def match_length(self, ids: list[int]) -> int:
        """How many leading tokens of ``ids`` are cached (no tensors, no statistics)."""
        with self._lock:
            node, pos = self.root, 0
            while pos < len(ids):
                child = node.children.get(ids[pos])
                if child is None:
                    break
                common = _common_length(child.tokens, ids, pos)
                pos += common
                if common < len(child.tokens):
                    break
                node = child
            return pos

    def insert(
        self, ids: list[int], keys: torch.Tensor, values: torch.Tensor, offset: int = 0
    ) -> None:
        """Remember the KV tensors of a token sequence: ``keys``/``values`` ([L, H, n, D]) hold
        tokens ``ids[offset:]``; ``ids[:offset]`` must be cached already (``match_length``)."""
        if self.max_bytes <= 0 or not ids:
            return
        with self._lock:
            node, pos = self.root, 0
            now = self._tick()
            while pos < len(ids):
                child = node.children.get(ids[pos])
                if child is None:
                    if pos < offset:  # the prefix was evicted meanwhile: nothing to attach to
                        break
                    leaf = _Node(
                        tuple(ids[pos:]),
                        keys[:, :, pos - offset :].clone(),
                        values[:, :, pos - offset :].clone(),
                        node,
                    )
                    leaf.last_used = now
                    node.children[ids[pos]] = leaf
                    self.bytes += leaf.nbytes
                    break
                common = _common_length(child.tokens, ids, pos)
                child.last_used = now
                if common < len(child.tokens):
                    self._split(child, common)
                pos += common
                node = child
            self._evict()

    def _split(self, node: _Node, at: int) -> None:
        """Cut ``node``'s edge after ``at`` tokens: the rest becomes its only child."""
        assert node.keys is not None and node.values is not None
        rest = _Node(
            node.tokens[at:],
            node.keys[:, :, at:].clone(),
            node.values[:, :, at:].clone(),
            node,
        )
        rest.children = node.children
        for grandchild in rest.children.values():
            grandchild.parent = rest
        rest.last_used = node.last_used
        node.tokens = node.tokens[:at]
        node.keys = node.keys[:, :, :at].clone()
        node.values = node.values[:, :, :at].clone()
        node.children = {rest.tokens[0]: rest}

    def _evict(self) -> None:
        while self.bytes > self.max_bytes:
            leaves = []
            stack = list(self.root.children.values())
            while stack:
                n = stack.pop()
                if n.children:
                    stack.extend(n.children.values())
                else:
                    leaves.append(n)
            if not leaves:
                break
            victim = min(leaves, key=lambda n: n.last_used)
            assert victim.parent is not None
            del victim.parent.children[victim.tokens[0]]
            self.bytes -= victim.nbytes
            self.evictions += 1

    @property
    def tokens(self) -> int:
        """Tokens held (sum of edge lengths)."""
        total, stack = 0, list(self.root.children.values())
        while stack:
            n = stack.pop()
            total += len(n.tokens)
            stack.extend(n.children.values())
        return total

    def clear(self) -> None:
        """Forget every cached prefix."""
        with self._lock:
            self.root = _Node((), None, None, None)
            self.bytes = 0


# --------------------------------------------------------------------------- batch KV storage
_BUFFER_LAYER: type | None = None


def _buffer_layer_class() -> type:
    """:class:`KVLayer` as a transformers cache layer (for models loaded through transformers)."""
    global _BUFFER_LAYER
    if _BUFFER_LAYER is None:
        from transformers.cache_utils import DynamicLayer

        class BufferLayer(KVLayer, DynamicLayer):
            """A cache layer over a preallocated buffer: a decode step writes one column in
            place instead of copying the whole cache (DynamicLayer concatenates every step)."""

        _BUFFER_LAYER = BufferLayer
    return _BUFFER_LAYER


class Engine:
    """Weights, tokenizer, prefix cache and the continuous-batching worker of one model."""

    def __init__(
        self,
        source: ModelSource,
        device: str,
        dtype: torch.dtype,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
        num_threads: int | None = None,
        prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB,
    ) -> None:
        self.source = source
        self.num_threads = num_threads
        self.device = device
        self.dtype = dtype
        self.max_batch_size = max(1, int(max_batch_size))
        self.batch_wait_s = max(0.0, float(batch_wait_ms)) / 1000.0
        self.prefix_cache = PrefixCache(int(max(0.0, float(prefix_cache_mb)) * 2**20))
        self.model: Any = None
        self.native = False  # the model runs on csc.engine.llama's forward, not transformers'
        # Decode steps multiply through the GGUF file's blocks (csc.engine.quantized); when not,
        # quantized_note says why.
        self.quantized = False
        self.quantized_note = "not loaded"
        # ...with int8 activations for prompt tokens and decode steps alike (CSC_QUANTIZED=1
        # on a CPU with AVX-512 VNNI); float32 activations otherwise.
        self.int8 = False
        self.tokenizer: Any = None
        self.vocab: Vocabulary | None = None
        self.load_seconds: float | None = None
        # Counters for benchmarks and diagnostics.
        self.batches_run = 0  # admissions (groups of requests prefilled together)
        self.requests_served = 0
        self.largest_batch = 0
        self.joined_running = 0  # requests admitted while other rows were decoding
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.prefill_tokens = 0  # prompt tokens actually computed
        self.prefill_seconds = 0.0
        self.decode_steps = 0
        self.decode_seconds = 0.0
        self._queue: queue.Queue[_Job | None] = queue.Queue()  # None: stop the worker
        self._stopping = False
        self._load_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._rows: list[_Row] = []
        self._cache: Any = None  # the running batch's KV cache
        self._mask: torch.Tensor | None = None  # [rows, width]
        self._positions: torch.Tensor | None = None  # [rows] position of each row's next token

    # ------------------------------------------------------------------ loading
    def load(self) -> Engine:
        """Load weights and tokenizer and start the worker (once; later calls return at once)."""
        if self._worker is not None:
            return self
        with self._load_lock:
            if self._worker is not None:
                return self
            start = time.perf_counter()
            if self.device == "cpu":
                threads = self.num_threads if self.num_threads is not None else default_threads()
                if threads > 0:
                    torch.set_num_threads(threads)  # process-wide in PyTorch
            model, tokenizer = load_model(self.source, self.device, self.dtype, native=True)
            self.native = isinstance(model, NativeLlamaForCausalLM)
            self._attach_blocks(model)
            if self.device == "cpu":
                if model.config._attn_implementation == "sdpa":
                    use_grouped_attention(model)
                use_packed_linears(model)
            self.model, self.tokenizer = model, tokenizer
            self.vocab = Vocabulary(tokenizer, self._vocab_size(), self._stop_ids())
            self.load_seconds = time.perf_counter() - start
            worker = threading.Thread(target=self._run, name="csc-local-lm", daemon=True)
            worker.start()
            self._worker = worker
            _STARTED.add(self)
        return self

    def _attach_blocks(self, model: Any) -> None:
        """Decode the embedded model through its GGUF blocks where the kernel is available."""
        if not self.native or self.source.base_dir is not None or self.source.adapter_dir:
            self.quantized_note = "only the embedded model's native forward has GGUF blocks"
        elif self.device != "cpu" or self.dtype != torch.float32:
            self.quantized_note = f"float32 CPU only (running {self.dtype} on {self.device})"
        else:
            why = attach(model, embedded_gguf(), self.source.resolve_base())
            self.quantized, self.quantized_note = not why, why
            self.int8 = not why and all(
                module.quantized.i8 is not None
                for module in model.modules()
                if getattr(module, "quantized", None) is not None
            )
            if why and quantized_enabled():  # not when turned off on purpose
                logger.warning("decode steps stay in float32: %s", why)

    def _vocab_size(self) -> int:
        emb = self.model.get_output_embeddings()
        if emb is not None and getattr(emb, "weight", None) is not None:
            return int(emb.weight.shape[0])
        return int(self.model.config.vocab_size)

    def _stop_ids(self) -> set[int]:
        ids: set[int] = set()
        eos = self.tokenizer.eos_token_id
        if eos is not None:
            ids.add(int(eos))
        gen = getattr(self.model, "generation_config", None)
        gen_eos = getattr(gen, "eos_token_id", None)
        if isinstance(gen_eos, int):
            ids.add(gen_eos)
        elif isinstance(gen_eos, list):
            ids.update(int(i) for i in gen_eos)
        for special in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
            tid = self.tokenizer.convert_tokens_to_ids(special)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id and tid >= 0:
                ids.add(tid)
        return ids

    @property
    def pad_id(self) -> int:
        """The id used for padding (masked out, so any id works)."""
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id or 0)

    @property
    def context_length(self) -> int:
        """The longest sequence (prompt + completion) the model's positions allow."""
        config = getattr(self.model, "config", None)
        return int(getattr(config, "max_position_embeddings", 0) or 8192)

    # ------------------------------------------------------------------ requests
    def encode_messages(self, messages: list[dict[str, Any]]) -> list[int]:
        """Prompt token ids of chat messages through the tokenizer's chat template."""
        self.load()
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def submit(
        self,
        prompt_ids: list[int],
        plan: OutputPlan | None,
        sampling: Sampling,
        on_text: Callable[[str], None] | None = None,
    ) -> Future[Generation]:
        """Queue one request; the future resolves to a :class:`Generation` or its error.

        ``on_text`` (optional) receives the answer's text as it is generated, piece by piece,
        from the worker thread.
        """
        self.load()
        if self._stopping:
            raise RuntimeError("this engine has been closed")
        future: Future[Generation] = Future()
        self._queue.put(_Job(list(prompt_ids), plan, sampling, future, on_text))
        return future

    # ------------------------------------------------------------------ worker
    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker: requests still queued or decoding fail with ``RuntimeError``.

        Called for every started engine at interpreter exit. A daemon worker still freeing
        tensors while Python finalises would otherwise be torn down inside PyTorch's C++ code,
        and the process would abort ("terminate called without an active exception").
        """
        worker = self._worker
        if worker is None or self._stopping:
            return
        self._stopping = True
        self._queue.put(None)
        if worker is not threading.current_thread():
            worker.join(timeout)

    def _run(self) -> None:
        jobs: list[_Job] = []
        while not self._stopping:
            jobs = self._take_jobs()
            if self._stopping:
                break
            try:
                if jobs:
                    self._admit(jobs)
                if self._rows:
                    start = time.perf_counter()
                    self._decode_step()
                    self.decode_seconds += time.perf_counter() - start
            except BaseException as exc:  # every caller must hear about it, never hang
                logger.exception("local LM step with %d rows failed", len(self._rows))
                for job in [*jobs, *(row.job for row in self._rows)]:
                    if not job.future.done():
                        job.future.set_exception(exc)
                self._reset_batch()
        stopped = RuntimeError("the local LM engine was closed before this request finished")
        pending = [*jobs, *(row.job for row in self._rows)]
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                pending.append(job)
        for job in pending:
            if not job.future.done():
                job.future.set_exception(stopped)
        self._reset_batch()

    def _take_jobs(self) -> list[_Job]:
        room = self.max_batch_size - len(self._rows)
        if room <= 0:
            return []
        jobs: list[_Job] = []
        if not self._rows:
            jobs.append(self._queue.get())  # idle: wait for work
            # Gather while requests keep arriving: callers released together come back a few ms
            # apart (DSPy bookkeeping, chat templating). The window restarts at each arrival,
            # capped at MAX_GATHER_FACTOR windows in all.
            start = time.monotonic()
            cap = start + self.batch_wait_s * MAX_GATHER_FACTOR
            deadline = start + self.batch_wait_s
            while len(jobs) < room:
                timeout = min(deadline, cap) - time.monotonic()
                try:
                    job = (
                        self._queue.get(timeout=timeout)
                        if timeout > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                jobs.append(job)
                deadline = time.monotonic() + self.batch_wait_s
        else:
            while len(jobs) < room:  # continuous batching: join between two decode steps
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self.joined_running += len(jobs)
        return [
            job for job in jobs if job is not None and job.future.set_running_or_notify_cancel()
        ]

    def _reset_batch(self) -> None:
        self._rows, self._cache, self._mask, self._positions = [], None, None, None

    # ------------------------------------------------------------------ prefill
    def _admit(self, jobs: list[_Job]) -> None:
        """Prefill new requests and add them to the running batch."""
        assert self.vocab is not None
        live: list[tuple[_Job, RowDecoder]] = []
        for job in jobs:
            try:
                if not job.prompt_ids:
                    raise ValueError("empty prompt")
                decoder = RowDecoder(
                    self.vocab, job.plan, job.sampling, prompt_text=self._guarded_prompt(job)
                )
            except Exception as exc:  # a bad request fails alone
                job.future.set_exception(exc)
                continue
            live.append((job, decoder))
        if not live:
            return
        self.batches_run += 1
        self.requests_served += len(live)
        pending = live
        while pending:
            ready, pending = self._next_round(pending)
            for group in self._prefill_groups(ready):
                self._admit_group(group)
        self.largest_batch = max(self.largest_batch, len(self._rows))

    def _guarded_prompt(self, job: _Job) -> str:
        """The prompt's text when a reply must not echo it (a transcript request), else ''."""
        assert self.vocab is not None
        if job.plan is None or not any(
            isinstance(seg, Text) and seg.speakers for seg in job.plan.segments
        ):
            return ""
        return self.vocab.tokenizer.decode(job.prompt_ids, skip_special_tokens=True)

    def _prefill_groups(
        self, live: list[tuple[_Job, RowDecoder]]
    ) -> list[list[tuple[_Job, RowDecoder]]]:
        """Split requests into prefill groups of similar uncached length.

        Rows of one forward are padded to its longest uncached part; grouping by length keeps
        that waste small, while short prompts still share one forward.
        """
        sized = sorted(
            live,
            key=lambda item: (
                len(item[0].prompt_ids) - self.prefix_cache.match_length(item[0].prompt_ids)
            ),
        )
        groups: list[list[tuple[_Job, RowDecoder]]] = []
        low = 0
        for item in sized:
            n = len(item[0].prompt_ids) - self.prefix_cache.match_length(item[0].prompt_ids)
            if groups and (n <= PREFILL_SHORT or n <= low * PREFILL_SPREAD):
                groups[-1].append(item)
            else:
                groups.append([item])
                low = n
        return groups

    def _admit_group(self, live: list[tuple[_Job, RowDecoder]]) -> None:
        start = time.perf_counter()
        keys, values, mask, positions, logits, cached = self._prefill(
            [job.prompt_ids for job, _ in live]
        )
        self.prefill_seconds += time.perf_counter() - start
        new_rows: list[_Row] = []
        keep: list[int] = []
        for b, (job, decoder) in enumerate(live):
            row = _Row(job, decoder, cached[b])
            row.hold = max((len(s) for s in job.sampling.stop), default=1) - 1
            self.prompt_tokens += len(job.prompt_ids)
            self.cached_tokens += cached[b]
            self._advance(row, logits[b])
            if decoder.done:
                self._finish(row)
            else:
                new_rows.append(row)
                keep.append(b)
        if not new_rows:
            return
        if len(keep) < len(live):
            index = torch.tensor(keep, device=mask.device)
            keys = [k.index_select(0, index) for k in keys]
            values = [v.index_select(0, index) for v in values]
            mask, positions = mask[index], positions[index]
        self._merge(new_rows, keys, values, mask, positions)

    def _next_round(
        self, live: list[tuple[_Job, RowDecoder]]
    ) -> tuple[list[tuple[_Job, RowDecoder]], list[tuple[_Job, RowDecoder]]]:
        """Split new requests into those prefilled now and those that wait for them.

        A request that shares at least ``MIN_SHARED_PREFIX`` uncached prompt tokens with one
        taken now (the same new system message, a dialogue history one turn shorter) waits:
        once the first is prefilled that part is in the prefix cache, so it is computed once,
        and no forward pass runs for the shared part alone. Longest prompts go first, since
        they hold the most of what shorter ones share.
        """
        if len(live) < 2 or self.prefix_cache.max_bytes <= 0:
            return live, []
        ready: list[tuple[_Job, RowDecoder]] = []
        later: list[tuple[_Job, RowDecoder]] = []
        for item in sorted(live, key=lambda item: -len(item[0].prompt_ids)):
            ids = item[0].prompt_ids
            cached = self.prefix_cache.match_length(ids)
            if any(
                min(_common_length(other.prompt_ids, ids, 0), len(ids) - 1) - cached
                >= MIN_SHARED_PREFIX
                for other, _ in ready
            ):
                later.append(item)
            else:
                ready.append(item)
        return ready, later

    @torch.inference_mode()
    def _prefill(
        self, prompts: list[list[int]], want_logits: bool = True
    ) -> tuple[
        list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, list[int]
    ]:
        """Run the uncached part of each prompt; store every prompt in the prefix cache.

        Returns per-layer keys and values [B, H, W, D], the attention mask [B, W], each row's
        next position, the last-token logits [B, V] and how many tokens came from the cache.
        A row is laid out ``[pad | cached prefix | pad | new tokens]``; the mask hides the pads.
        """
        matches = []
        for ids in prompts:
            n, ks, vs = self.prefix_cache.match_segments(ids)
            if n >= len(ids):  # the whole prompt is cached: recompute its last token for logits
                n = len(ids) - 1
                ks, vs = _cut_segments(ks, n), _cut_segments(vs, n)
            matches.append((n, ks, vs))
        batch = len(prompts)
        width_cached = max(n for n, _, _ in matches)
        suffixes = [ids[n:] for ids, (n, _, _) in zip(prompts, matches)]
        width_new = max(len(s) for s in suffixes)
        self.prefill_tokens += sum(len(s) for s in suffixes)
        mask = torch.zeros((batch, width_cached + width_new), dtype=torch.long)
        input_ids = torch.full((batch, width_new), self.pad_id, dtype=torch.long)
        positions = torch.zeros((batch, width_new), dtype=torch.long)
        for b, (suffix, (n, _, _)) in enumerate(zip(suffixes, matches)):
            mask[b, width_cached - n : width_cached] = 1
            mask[b, width_cached + width_new - len(suffix) :] = 1
            input_ids[b, width_new - len(suffix) :] = torch.tensor(suffix, dtype=torch.long)
            positions[b, width_new - len(suffix) :] = torch.arange(n, n + len(suffix))
        cache = self.new_cache()
        if width_cached > 0:
            ref = next(ks[0] for n, ks, _ in matches if n > 0)
            layers, heads, _, dim = ref.shape
            # The native model writes the new columns into spare room of the same buffer.
            spare = width_new if self.native else 0
            shape = (layers, batch, heads, width_cached + spare, dim)
            all_k = ref.new_zeros(shape)
            all_v = ref.new_zeros(shape)
            for b, (n, ks, vs) in enumerate(matches):
                at = width_cached - n  # copy the cached edges straight into the row
                for k, v in zip(ks, vs):
                    all_k[:, b, :, at : at + k.shape[2]] = k
                    all_v[:, b, :, at : at + v.shape[2]] = v
                    at += k.shape[2]
            pairs = [(all_k[i], all_v[i]) for i in range(layers)]
            cache = self.new_cache(pairs, width_cached)
        device = self.device
        out = self.model(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        keys = [layer.keys for layer in cache.layers]
        values = [layer.values for layer in cache.layers]
        # Remember every prompt: its columns are the unmasked ones, in order.
        for b, ids in enumerate(prompts):
            if self.prefix_cache.max_bytes <= 0:
                break
            known = self.prefix_cache.match_length(ids)  # copy only what the cache lacks
            if known >= len(ids):
                continue
            columns = mask[b].nonzero().squeeze(1)[known:].to(keys[0].device)
            k = torch.stack([layer[b].index_select(1, columns) for layer in keys])
            v = torch.stack([layer[b].index_select(1, columns) for layer in values])
            self.prefix_cache.insert(ids, k, v, offset=known)
        logits = out.logits[:, -1, :].float().cpu() if want_logits else torch.empty(0)
        next_positions = torch.tensor([len(ids) for ids in prompts], dtype=torch.long)
        cached = [n for n, _, _ in matches]
        return keys, values, mask.to(device), next_positions.to(device), logits, cached

    def _merge(
        self,
        rows: list[_Row],
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        mask: torch.Tensor,
        positions: torch.Tensor,
    ) -> None:
        """Add prefilled rows to the running batch (left-padding the narrower side)."""
        if not self._rows:
            blocks_k = [[k] for k in keys]
            blocks_v = [[v] for v in values]
            new_mask, new_positions = mask, positions
        else:
            old = self._cache.layers
            width = max(self._mask.shape[1], mask.shape[1])

            def left_pad(t: torch.Tensor) -> torch.Tensor:
                return torch.nn.functional.pad(t, (width - t.shape[-1], 0))

            blocks_k = [[layer.keys, k] for layer, k in zip(old, keys)]
            blocks_v = [[layer.values, v] for layer, v in zip(old, values)]
            new_mask = torch.cat([left_pad(self._mask), left_pad(mask)], 0)
            new_positions = torch.cat([self._positions, positions], 0)
        self._rows = self._rows + rows
        self._mask, self._positions = new_mask, new_positions
        self._cache = self._batch_cache(blocks_k, blocks_v)

    def new_cache(
        self,
        pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        length: int | None = None,
    ) -> Any:
        """A key/value cache for this engine's model: empty, or over per-layer buffers
        [batch, heads, width, dim] whose first ``length`` columns are filled (all by default)."""
        if self.native:
            if pairs is None:
                return KVCache()
            return KVCache([KVLayer(k, v, length) for k, v in pairs])
        from transformers import DynamicCache

        if pairs is None:
            return DynamicCache()
        if length is not None and length != pairs[0][0].shape[2]:
            pairs = [(k[:, :, :length], v[:, :, :length]) for k, v in pairs]
        return DynamicCache(ddp_cache_data=pairs)

    def _batch_cache(self, keys: list[list[torch.Tensor]], values: list[list[torch.Tensor]]) -> Any:
        """The running batch's cache, built from blocks of rows per layer (each block
        [rows, heads, columns, dim], right-aligned to the widest) plus room to decode into.

        Every column is written once: the blocks are copied straight into the new buffer and
        only the left padding of narrower blocks is zeroed (a padded key is masked, but must
        not be NaN: a zero attention weight times NaN is NaN).
        """
        layers = [(_assemble(k, _GROW), _assemble(v, _GROW)) for k, v in zip(keys, values)]
        if self.native:
            return KVCache([KVLayer(k, v, length) for (k, length), (v, _) in layers])
        from transformers import DynamicCache

        layer_class = _buffer_layer_class()
        cache = DynamicCache()
        cache.layers = [layer_class(k, v, length) for (k, length), (v, _) in layers]
        cache.layer_class_to_replicate = None
        return cache

    # ------------------------------------------------------------------ decode
    @torch.inference_mode()
    def _decode_step(self) -> None:
        assert self._mask is not None and self._positions is not None
        self.decode_steps += 1
        device = self.device
        rows = self._rows
        # Each row feeds its pending tokens: one sampled token, or a run of forced ones (section
        # headers) in a single step. Shorter rows are left-padded; the mask hides the padding.
        width = max(len(row.pending) for row in rows)
        tokens = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        new_mask = torch.zeros((len(rows), width), dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        lengths = torch.tensor([len(row.pending) for row in rows], dtype=torch.long)
        for b, row in enumerate(rows):
            n = len(row.pending)
            tokens[b, width - n :] = torch.tensor(row.pending, dtype=torch.long)
            new_mask[b, width - n :] = 1
        start = self._positions.cpu()
        offsets = (new_mask.cumsum(-1) - 1).clamp(min=0)
        positions = start.unsqueeze(1) + offsets
        self._mask = torch.cat([self._mask, new_mask.to(device)], dim=1)
        ragged = {}
        grouped = self.model.config._attn_implementation == GROUPED_ATTENTION
        if grouped and width > 1 and int(lengths.min()) < width:  # forced tokens in some rows
            ragged[QUERY_LENGTHS] = lengths.tolist()
        out = self.model(
            input_ids=tokens.to(device),
            attention_mask=self._mask,
            position_ids=positions.to(device),
            past_key_values=self._cache,
            use_cache=True,
            logits_to_keep=1,
            **ragged,
            **({QUANTIZED_STEP: True} if self.quantized else {}),
        )
        logits = out.logits[:, -1, :].float().cpu()
        self._positions = self._positions + lengths.to(self._positions.device)
        keep: list[int] = []
        for b, row in enumerate(rows):
            row.fed.extend(row.pending)
            try:
                self._advance(row, logits[b], b)
            except Exception as exc:  # a decoding error (grammar...) fails its own request
                row.job.future.set_exception(exc)
                continue
            if row.decoder.done:
                self._finish(row)
            else:
                keep.append(b)
        if len(keep) < len(rows):
            self._select(keep)

    def _advance(self, row: _Row, logits: torch.Tensor, b: int | None = None) -> None:
        """Choose a row's next token, then take every forced token after it at once.

        ``b`` is the row's index in the running batch (None while it is being admitted).
        """
        decoder = row.decoder
        chosen = decoder.step(logits)
        # Jump forward over forced text: it needs no logits, only its KV for what follows (and
        # none at all when the answer ends with it, e.g. "[[ ## completed ## ]]").
        while not decoder.done and decoder.forced_token() is not None:
            decoder.step(None)
        ids, fed = decoder.context, row.fed
        kept = _common_length(fed, ids, 0)
        if kept == len(fed):
            row.pending = ids[kept:]
        elif b is not None and kept > 0 and not decoder.done:
            # The decoder took back tokens the model has already read (an echoed opening, a
            # transcript line): forget them in the KV cache, so that what the model reads next
            # is exactly what the answer holds. The last kept token is fed again to get the
            # logits at that point (its old column is forgotten with the rest).
            self._forget(b, len(fed) - kept + 1)
            del fed[kept - 1 :]
            row.pending = ids[kept - 1 :]
        else:  # nothing left to rewind to (or the row is done): the model keeps what it read
            row.pending = [] if decoder.done else [chosen]
            row.fed = list(ids[:-1]) if ids and ids[-1] == chosen else list(ids)
        self._stream(row)

    def _forget(self, b: int, count: int) -> None:
        """Hide the last ``count`` tokens row ``b`` fed from attention, and rewind its position."""
        assert self._mask is not None and self._positions is not None
        columns = self._mask[b].nonzero().squeeze(1)[-count:]
        self._mask[b, columns] = 0
        self._positions[b] -= count

    def _select(self, keep: list[int]) -> None:
        """Keep only the rows ``keep`` and drop leading columns no remaining row uses."""
        if not keep:
            self._reset_batch()
            return
        assert self._mask is not None and self._positions is not None
        index = torch.tensor(keep, device=self._mask.device)
        mask = self._mask[index]
        used = mask.any(dim=0).nonzero()
        lead = int(used[0]) if len(used) else 0
        mask = mask[:, lead:]
        runs = _runs(keep)  # kept rows as slices: views, copied once into the new buffer
        keys = [[layer.keys[a:b, :, lead:] for a, b in runs] for layer in self._cache.layers]
        values = [[layer.values[a:b, :, lead:] for a, b in runs] for layer in self._cache.layers]
        self._rows = [self._rows[i] for i in keep]
        self._mask, self._positions = mask, self._positions[index]
        self._cache = self._batch_cache(keys, values)

    def _stream(self, row: _Row) -> None:
        if row.job.on_text is None:
            return
        # A guarded reply may still lose what it has written (an echo, a copy): it streams once
        # settled, so a streaming client never receives text the answer does not hold.
        text = row.decoder.settled_text()
        if not row.decoder.done:
            # Hold back what a stop string may still cut, and half-decoded characters.
            text = text[: max(0, len(text) - row.hold)] if row.hold else text
            text = text.rstrip("\ufffd")
        if len(text) > len(row.sent) and text.startswith(row.sent):
            try:
                row.job.on_text(text[len(row.sent) :])
            finally:
                row.sent = text

    def _finish(self, row: _Row) -> None:
        decoder = row.decoder
        row.job.future.set_result(
            Generation(
                text=decoder.text(),
                prompt_tokens=len(row.job.prompt_ids),
                completion_tokens=len(decoder.ids),
                finish_reason=decoder.finish_reason or "length",
                cached_tokens=row.cached_tokens,
            )
        )


_ENGINES: dict[tuple[Any, ...], Engine] = {}
_ENGINES_LOCK = threading.Lock()


def shared_engine(
    source: ModelSource,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
    num_threads: int | None = None,
    prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB,
) -> Engine:
    """The process-wide engine for a source on a device (created on first request, not loaded).

    Batching and cache options apply when the engine is created; later callers share it as it is.
    """
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(resolved_device, dtype)
    key = (
        source.base_dir or "<embedded>",
        source.adapter_dir,
        source.merge_adapter,
        resolved_device,
        str(resolved_dtype),
    )
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = Engine(
                source,
                resolved_device,
                resolved_dtype,
                max_batch_size,
                batch_wait_ms,
                num_threads,
                prefix_cache_mb,
            )
            _ENGINES[key] = engine
        return engine


_STARTED: weakref.WeakSet[Engine] = weakref.WeakSet()  # engines whose worker runs


@atexit.register
def _close_engines() -> None:
    for engine in list(_STARTED):
        engine.close()


def loaded_engines() -> list[Engine]:
    """The engines created in this process (for diagnostics and tests)."""
    with _ENGINES_LOCK:
        return list(_ENGINES.values())
