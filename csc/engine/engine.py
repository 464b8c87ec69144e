"""The batching generation engine: one per (model, adapter, device) per process.

Requests from any thread (dspy.Parallel, Module.batch, Evaluate, async calls) are put on a queue.
A single daemon worker takes a request, waits a few milliseconds for more (up to
``max_batch_size``), left-pads the prompts and decodes them together with a shared KV cache. Rows
that finish are dropped from the cache so the rest run faster. Each row keeps its own output plan,
sampling options and random generator, so batching changes throughput, not answers.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

from csc.engine.decoding import RowDecoder, Sampling, Vocabulary
from csc.engine.model_store import ModelSource, load_model
from csc.engine.structure import OutputPlan

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_BATCH_WAIT_MS = 15.0
MAX_GATHER_FACTOR = 8
MIN_SHARED_PREFIX = 16  # below this, a separate prefix pass costs more than it saves


@dataclass
class Generation:
    """What one request produced."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


@dataclass
class _Job:
    prompt_ids: list[int]
    plan: OutputPlan | None
    sampling: Sampling
    future: Future


def default_threads() -> int:
    """CPU threads for the engine: half the cores (at least one)."""
    return max(1, (os.cpu_count() or 2) // 2)


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


class Engine:
    """Weights, tokenizer and the batching worker of one model on one device."""

    def __init__(
        self,
        source: ModelSource,
        device: str,
        dtype: torch.dtype,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
        num_threads: int | None = None,
    ) -> None:
        self.source = source
        self.num_threads = num_threads
        self.device = device
        self.dtype = dtype
        self.max_batch_size = max(1, int(max_batch_size))
        self.batch_wait_s = max(0.0, float(batch_wait_ms)) / 1000.0
        self.model: Any = None
        self.tokenizer: Any = None
        self.vocab: Vocabulary | None = None
        self.load_seconds: float | None = None
        self.batches_run = 0
        self.requests_served = 0
        self.largest_batch = 0
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._load_lock = threading.Lock()
        self._worker: threading.Thread | None = None

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
                    # Process-wide in PyTorch. On a busy machine OpenMP threads spin-wait for each
                    # other; we measured a decode step 28x slower with 2 threads than with 1 on a
                    # loaded 2-core box, so the default leaves half the cores free.
                    torch.set_num_threads(threads)
            model, tokenizer = load_model(self.source, self.device, self.dtype)
            self.model, self.tokenizer = model, tokenizer
            self.vocab = Vocabulary(tokenizer, self._vocab_size(), self._stop_ids())
            self.load_seconds = time.perf_counter() - start
            worker = threading.Thread(target=self._run, name="csc-local-lm", daemon=True)
            worker.start()
            self._worker = worker
        return self

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
        """The id used for left padding (masked out, so any id works)."""
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id or 0)

    # ------------------------------------------------------------------ requests
    def encode_messages(self, messages: list[dict[str, Any]]) -> list[int]:
        """Prompt token ids of chat messages through the tokenizer's chat template."""
        self.load()
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def submit(
        self, prompt_ids: list[int], plan: OutputPlan | None, sampling: Sampling
    ) -> Future[Generation]:
        """Queue one request; the future resolves to a :class:`Generation` or its error."""
        self.load()
        future: Future[Generation] = Future()
        self._queue.put(_Job(prompt_ids, plan, sampling, future))
        return future

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            # Gather while requests keep arriving: callers released by the previous batch come
            # back a few ms apart (DSPy bookkeeping, chat templating), and a batch closed too
            # early makes the late ones wait a whole batch. The window restarts at each arrival,
            # capped at MAX_GATHER_FACTOR windows in all.
            start = time.monotonic()
            cap = start + self.batch_wait_s * MAX_GATHER_FACTOR
            deadline = start + self.batch_wait_s
            while len(batch) < self.max_batch_size:
                timeout = min(deadline, cap) - time.monotonic()
                try:
                    if timeout > 0:
                        job = self._queue.get(timeout=timeout)
                    else:
                        job = self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(job)
                deadline = time.monotonic() + self.batch_wait_s
            live = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                results = self.generate_batch(live)
            except BaseException as exc:  # every caller must hear about it, never hang
                logger.exception("local LM batch of %d failed", len(live))
                for job in live:
                    job.future.set_exception(exc)
                continue
            for job, result in zip(live, results):
                job.future.set_result(result)

    @torch.inference_mode()
    def generate_batch(self, jobs: list[_Job]) -> list[Generation]:
        """Decode a batch of requests together (left padding, shared KV cache)."""
        from transformers import DynamicCache

        assert self.vocab is not None
        self.batches_run += 1
        self.requests_served += len(jobs)
        self.largest_batch = max(self.largest_batch, len(jobs))
        rows = [RowDecoder(self.vocab, job.plan, job.sampling) for job in jobs]
        cache = DynamicCache()
        # DSPy prompts of one signature share their system message: prefill the common prefix once
        # and copy its KV cache to every row, then prefill only the per-row suffixes.
        shared = _common_prefix_length([job.prompt_ids for job in jobs]) if len(jobs) > 1 else 0
        if shared < MIN_SHARED_PREFIX:
            shared = 0
        shared = min(shared, min(len(job.prompt_ids) for job in jobs) - 1)  # keep >= 1 suffix token
        if shared > 0:
            prefix = torch.tensor([jobs[0].prompt_ids[:shared]], device=self.device)
            self.model(input_ids=prefix, past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache.batch_repeat_interleave(len(jobs))
        suffixes = [job.prompt_ids[shared:] for job in jobs]
        width = max(len(s) for s in suffixes)
        input_ids = torch.full((len(jobs), width), self.pad_id, dtype=torch.long)
        suffix_mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for i, suffix in enumerate(suffixes):
            input_ids[i, width - len(suffix) :] = torch.tensor(suffix, dtype=torch.long)
            suffix_mask[i, width - len(suffix) :] = 1
        positions = (shared + suffix_mask.cumsum(-1) - 1).clamp(min=0)
        attention = torch.cat([torch.ones((len(jobs), shared), dtype=torch.long), suffix_mask], 1)
        input_ids, attention, positions = (
            t.to(self.device) for t in (input_ids, attention, positions)
        )
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1, :].float().cpu()
        next_pos = positions[:, -1] + 1
        active = list(range(len(jobs)))  # row index of each batch position
        while active:
            tokens = [rows[r].step(logits[b]) for b, r in enumerate(active)]
            keep = [b for b, r in enumerate(active) if not rows[r].done]
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                attention, next_pos = attention[index], next_pos[index]
                active = [active[b] for b in keep]
                tokens = [tokens[b] for b in keep]
            attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=1)
            out = self.model(
                input_ids=torch.tensor(tokens, device=self.device).unsqueeze(1),
                attention_mask=attention,
                position_ids=next_pos.unsqueeze(1),
                past_key_values=cache,
                use_cache=True,
            )
            logits = out.logits[:, -1, :].float().cpu()
            next_pos = next_pos + 1
        return [
            Generation(
                text=row.text(),
                prompt_tokens=len(job.prompt_ids),
                completion_tokens=len(row.ids),
                finish_reason=row.finish_reason or "length",
            )
            for job, row in zip(jobs, rows)
        ]


def _common_prefix_length(prompts: list[list[int]]) -> int:
    first = prompts[0]
    n = min(len(p) for p in prompts)
    for i in range(n):
        token = first[i]
        if any(p[i] != token for p in prompts):
            return i
    return n


_ENGINES: dict[tuple[Any, ...], Engine] = {}
_ENGINES_LOCK = threading.Lock()


def shared_engine(
    source: ModelSource,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
    num_threads: int | None = None,
) -> Engine:
    """The process-wide engine for a source on a device (created on first request, not loaded).

    Batching options apply when the engine is created; later callers share it as it is.
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
                source, resolved_device, resolved_dtype, max_batch_size, batch_wait_ms, num_threads
            )
            _ENGINES[key] = engine
        return engine


def loaded_engines() -> list[Engine]:
    """The engines created in this process (for diagnostics and tests)."""
    with _ENGINES_LOCK:
        return list(_ENGINES.values())
