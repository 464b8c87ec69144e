"""``LocalLM``: a ``dspy.LM`` whose engine is the in-process batching engine.

Usage::

    import dspy
    from csc.engine import LocalLM

    dspy.configure(lm=LocalLM())                      # embedded SmolLM2-135M-Instruct
    dspy.configure(lm=LocalLM("path/to/hf-folder"))   # any causal-LM folder
    lm = LocalLM.from_finetuned("runs/lora-1")        # base + LoRA adapter from `csc finetune`

``LocalLM`` is a plain ``dspy.LM`` built with ``engine=LocalEngine(...)`` and
``async_engine=AsyncLocalEngine(...)``: DSPy's canonical request/response contract
(``complete(Request) -> Response`` and ``stream(Request)``). DSPy itself owns the response cache,
retries, ``n`` fan-out, history, callbacks and usage accounting; the engine answers one request
at a time, batched with every other request in flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import queue
import threading
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import dspy
from dspy.clients.engines.base import validate_request
from dspy.lm15 import (
    Message,
    Request,
    Response,
    StreamDeltaEvent,
    StreamEndEvent,
    StreamStartEvent,
    TextDelta,
    TextPart,
    Usage,
)

from csc.engine.calibration import calibrate_plan
from csc.engine.decoding import Sampling
from csc.engine.engine import (
    DEFAULT_BATCH_WAIT_MS,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_PREFIX_CACHE_MB,
    Engine,
    Generation,
    shared_engine,
)
from csc.engine.model_store import ModelSource, finetuned_source, local_source
from csc.engine.structure import DECODING_RULES_VERSION, OutputPlan, plan_for_request

DEFAULT_MAX_TOKENS = 512
# Per-request options the engine honours (what DSPy's adapters may send).
SUPPORTED_PARAMS = frozenset(
    {
        "temperature",
        "max_tokens",
        "max_completion_tokens",
        "top_p",
        "seed",
        "stop",
        "response_format",
    }
)
# How many distinct requests the per-request sample counter remembers (see LocalEngine.seed_for).
_SEEN_REQUESTS = 100_000
# Contextual calibration of Literal choices (csc.engine.calibration): measured in docs/engine.md,
# where it did not help the embedded model, so it is off unless asked for.
DEFAULT_CALIBRATE_CHOICES = False


class ContextLengthError(ValueError):
    """A request needs more tokens (prompt + max_tokens) than the model's context holds."""


@dataclass(eq=False)
class LocalEngine:
    """DSPy engine (``complete(Request) -> Response``) over the shared in-process :class:`Engine`.

    Engine-level options (``device``, ``dtype``, batching, threads, prefix cache) select and
    configure the process-wide engine of the model; ``repetition_penalty``, ``multiline_text``
    and ``max_string_chars`` shape every answer of this LM.
    """

    supports_function_calling: ClassVar[bool] = False
    supports_reasoning: ClassVar[bool] = False
    # JSON schemas are enforced by grammar-constrained decoding.
    supports_response_schema: ClassVar[bool] = True
    supported_params: ClassVar[frozenset[str]] = SUPPORTED_PARAMS

    source: ModelSource
    device: str | None = None
    dtype: str | None = None
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS
    num_threads: int | None = None
    prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB
    max_string_chars: int = 400
    repetition_penalty: float = 1.15
    multiline_text: bool = False
    calibrate_choices: bool = DEFAULT_CALIBRATE_CHOICES

    def __post_init__(self) -> None:
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._seen_lock = threading.Lock()

    def __deepcopy__(self, memo: dict[int, Any]) -> LocalEngine:
        # Copies of a program (optimizers deepcopy them) share the engine, like a connection.
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_seen_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._seen_lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        """The shared engine of this model (loaded on first access)."""
        return shared_engine(
            self.source,
            self.device,
            self.dtype,
            self.max_batch_size,
            self.batch_wait_ms,
            self.num_threads,
            self.prefix_cache_mb,
        ).load()

    def options(self) -> dict[str, Any]:
        """Constructor options (for ``LocalLM.dump_state``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "source"}

    # ------------------------------------------------------------------ DSPy engine contract
    def complete(self, request: Request) -> Response:
        """Answer one canonical request (blocking; batched with concurrent requests)."""
        future, prompt_ids = self.submit(request)
        return self.response(request, future.result(), len(prompt_ids))

    def stream(self, request: Request) -> Iterator[Any]:
        """Answer one request as lm15 stream events: start, text deltas, end (with usage)."""
        deltas: queue.Queue[str | None] = queue.Queue()
        future, _ = self.submit(request, on_text=deltas.put)
        future.add_done_callback(lambda _: deltas.put(None))
        yield StreamStartEvent(id=f"chatcmpl-{uuid.uuid4().hex}", model=request.model)
        while (piece := deltas.get()) is not None:
            yield StreamDeltaEvent(TextDelta(text=piece))
        result = future.result()
        yield StreamEndEvent(finish_reason=_finish(result), usage=_usage(result))

    def close(self) -> None:
        """Nothing to release: the engine is shared by every LM of the model in this process."""

    # ------------------------------------------------------------------ building blocks
    def submit(self, request: Request, on_text: Any = None) -> tuple[Future[Generation], list[int]]:
        """Queue a canonical request on the engine; returns its future and prompt ids."""
        validate_request(request)
        if request.tools:
            raise ValueError(
                "the local engine does not call tools; use a ChatAdapter or JSONAdapter"
            )
        messages = request_messages(request)
        config = request.config
        plan: OutputPlan | None = plan_for_request(
            messages,
            openai_response_format(config.response_format),
            max_string_chars=self.max_string_chars,
        )
        engine = self.engine
        if plan is not None and self.calibrate_choices:
            plan = calibrate_plan(engine, messages, plan)  # csc.engine.calibration
        prompt_ids = engine.encode_messages(messages)
        max_tokens = int(config.max_tokens or DEFAULT_MAX_TOKENS)
        if len(prompt_ids) + max_tokens > engine.context_length:
            raise ContextLengthError(
                f"the prompt has {len(prompt_ids)} tokens and max_tokens is {max_tokens}, more "
                f"than the model's {engine.context_length}-token context; shorten the messages "
                "or lower max_tokens"
            )
        sampling = Sampling(
            max_tokens=max_tokens,
            temperature=float(config.temperature or 0.0),
            top_p=float(config.top_p if config.top_p is not None else 1.0),
            seed=self.seed_for(request, prompt_ids) if (config.temperature or 0) > 0 else None,
            stop=tuple(config.stop),
            repetition_penalty=float(self.repetition_penalty),
            multiline_text=bool(self.multiline_text),
        )
        return engine.submit(prompt_ids, plan, sampling, on_text=on_text), prompt_ids

    def seed_for(self, request: Request, prompt_ids: list[int]) -> int:
        """The sampling seed of a request: (seed, prompt, options, how often it was asked).

        DSPy strips ``rollout_id`` before the engine sees a request; it reaches the engine again
        only when the rollout is new to DSPy's cache (or ``n`` > 1 asks for several samples).
        So the k-th identical request in this process gets sample k: a request and its seed
        fix the answer whatever else shares the batch or sits in the prefix cache, and repeated
        asks still get different samples. Without a ``seed`` the default seed is 0.
        """
        config = request.config
        identity = repr(
            (
                config.seed,
                prompt_ids,
                config.temperature,
                config.top_p,
                config.max_tokens,
                config.stop,
                config.response_format,
            )
        )
        key = hashlib.sha256(identity.encode()).hexdigest()
        with self._seen_lock:
            index = self._seen.pop(key, 0)
            self._seen[key] = index + 1
            while len(self._seen) > _SEEN_REQUESTS:
                self._seen.popitem(last=False)
        text = f"{config.seed or 0}|{key}|{index}"
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 2

    def response(self, request: Request, result: Generation, prompt_tokens: int) -> Response:
        """The canonical response of a finished generation."""
        return Response(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            model=request.model,
            message=Message.assistant(TextPart(result.text)),
            finish_reason=_finish(result),
            usage=_usage(result),
        )


class AsyncLocalEngine:
    """The async twin of :class:`LocalEngine` (``await complete``); shares its batches."""

    def __init__(self, sync: LocalEngine) -> None:
        self.sync = sync

    supports_function_calling = False
    supports_reasoning = False
    supports_response_schema = True
    supported_params = SUPPORTED_PARAMS

    def __deepcopy__(self, memo: dict[int, Any]) -> AsyncLocalEngine:
        return self

    async def complete(self, request: Request) -> Response:
        """Answer one canonical request without blocking the event loop."""
        future, prompt_ids = await asyncio.to_thread(self.sync.submit, request)
        result = await asyncio.wrap_future(future)
        return self.sync.response(request, result, len(prompt_ids))

    async def stream(self, request: Request) -> AsyncIterator[Any]:
        """Async stream of lm15 events (start, text deltas, end)."""
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[str | None] = asyncio.Queue()

        def push(piece: str | None) -> None:
            loop.call_soon_threadsafe(deltas.put_nowait, piece)

        future, _ = await asyncio.to_thread(self.sync.submit, request, push)
        future.add_done_callback(lambda _: push(None))
        yield StreamStartEvent(id=f"chatcmpl-{uuid.uuid4().hex}", model=request.model)
        while (piece := await deltas.get()) is not None:
            yield StreamDeltaEvent(TextDelta(text=piece))
        result = await asyncio.wrap_future(future)
        yield StreamEndEvent(finish_reason=_finish(result), usage=_usage(result))

    async def aclose(self) -> None:
        """Nothing to release (the engine is shared)."""


class LocalLM(dspy.LM):
    """A Hugging Face causal LM run in-process, batched across threads, with constrained outputs.

    Args:
        model_path: a Hugging Face model folder; None for the embedded SmolLM2-135M-Instruct.
        temperature: default sampling temperature (0 = greedy, deterministic).
        max_tokens: default completion length limit.
        cache: DSPy's response cache (key: model, weights, messages, options, ``rollout_id``).
        device: ``cpu``, ``cuda``, ``cuda:1``...; default CUDA when available.
        dtype: ``float32`` / ``bfloat16`` / ``float16``; default float32 on CPU, bf16/fp16 on CUDA.
        max_batch_size: most requests decoded together (engine option, first LM wins).
        batch_wait_ms: how long an idle worker waits to gather a batch (engine option).
        num_threads: CPU threads for torch (engine option; default: the cores the machine's
            load leaves free, see ``engine.default_threads``; 0 leaves torch's own setting).
            PyTorch's setting is process-wide.
        prefix_cache_mb: memory bound of the KV cache of prompt prefixes kept across requests
            (engine option; 0 turns it off).
        max_string_chars: length bound for strings inside JSON outputs.
        repetition_penalty: penalty on tokens a request already generated (1.0 turns it off);
            the default keeps the 135M model from looping on one phrase.
        multiline_text: let ChatAdapter ``str`` fields span several paragraphs.
        calibrate_choices: contextual calibration of Literal / Enum outputs (divide each
            option's probability by its probability on content-free inputs); off by default,
            see docs/engine.md.
        num_retries: DSPy's retries of failed calls (local failures are not transient: 0).
        **kwargs: further default request options (``top_p``, ``seed``, ``stop``...).
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        temperature: float = 0.0,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        cache: bool = True,
        device: str | None = None,
        dtype: str | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
        max_string_chars: int = 400,
        num_threads: int | None = None,
        prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB,
        source: ModelSource | None = None,
        repetition_penalty: float = 1.15,
        multiline_text: bool = False,
        calibrate_choices: bool = DEFAULT_CALIBRATE_CHOICES,
        num_retries: int = 0,
        **kwargs: Any,
    ) -> None:
        self.source = source or local_source(model_path)
        self.model_path = None if model_path is None else str(model_path)
        local_engine = LocalEngine(
            self.source,
            device=device,
            dtype=dtype,
            max_batch_size=max_batch_size,
            batch_wait_ms=batch_wait_ms,
            num_threads=num_threads,
            prefix_cache_mb=prefix_cache_mb,
            max_string_chars=max_string_chars,
            repetition_penalty=repetition_penalty,
            multiline_text=multiline_text,
            calibrate_choices=calibrate_choices,
        )
        # DSPy keys its response cache on the request options, and the engine ignores
        # `metadata`: it carries what else decides an answer (which weights, since two folders
        # may share a name; the decoding options of this LM).
        kwargs.setdefault("metadata", {"csc_answer": _answer_id(local_engine)})
        super().__init__(
            model=self.source.name,
            model_type="chat",
            temperature=temperature,
            max_tokens=max_tokens,
            cache=cache,
            num_retries=num_retries,
            engine=local_engine,
            async_engine=AsyncLocalEngine(local_engine),
            **kwargs,
        )

    @classmethod
    def from_finetuned(
        cls, run_dir: str | os.PathLike[str], merge_adapter: bool = False, **kwargs: Any
    ) -> LocalLM:
        """The LM of a ``csc finetune`` output folder: its base model plus its LoRA adapter.

        ``merge_adapter=True`` merges the adapter into the weights (faster decoding).
        """
        source = finetuned_source(run_dir, merge_adapter=merge_adapter)
        lm = cls(source=source, **kwargs)
        lm.model_path = str(run_dir)
        return lm

    @property
    def local_engine(self) -> LocalEngine:
        """The DSPy-facing engine of this LM."""
        return self._engine_spec

    @property
    def batch_engine(self) -> Engine:
        """The shared batching engine of this LM's model (weights, worker, prefix cache)."""
        return self._engine_spec.engine

    def dump_state(self) -> dict[str, Any]:
        """State to rebuild this LM (``model_path`` or the fine-tuned folder, options)."""
        state = dspy.BaseLM.dump_state(self)
        for key in ("model", "model_type", "num_retries", "metadata"):
            state.pop(key, None)
        state.update(model_path=self.model_path, **self._engine_spec.options())
        if self.source.adapter_dir:
            state["finetuned"] = True
            state["merge_adapter"] = self.source.merge_adapter
        return state

    @classmethod
    def load_state(cls, state: dict[str, Any], **_: Any) -> LocalLM:
        """Rebuild an LM from :meth:`dump_state` output."""
        state = {k: v for k, v in state.items() if k != "_dspy_lm_class"}
        if state.pop("finetuned", False):
            run_dir = state.pop("model_path")
            return cls.from_finetuned(run_dir, **state)
        state.pop("merge_adapter", None)
        return cls(**state)


def request_messages(request: Request) -> list[dict[str, str]]:
    """The chat messages (role, text) of a canonical request, system message first."""
    messages: list[dict[str, str]] = []
    if request.system is not None:
        system = request.system
        if not isinstance(system, str):
            system = "".join(getattr(part, "text", "") or "" for part in system)
        messages.append({"role": "system", "content": system})
    for message in request.messages:
        role = "system" if message.role == "developer" else message.role
        messages.append({"role": role, "content": message.text or ""})
    return messages


def openai_response_format(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """A canonical ``response_format`` in the OpenAI shape the output planner reads."""
    if not response_format or response_format.get("type") != "json_schema":
        return response_format
    inner = {"schema": response_format.get("schema") or {}}
    if response_format.get("name"):
        inner["name"] = response_format["name"]
    return {"type": "json_schema", "json_schema": inner}


def _finish(result: Generation) -> str:
    return "length" if result.finish_reason == "length" else "stop"


def _usage(result: Generation) -> Usage:
    # cache_read_tokens becomes usage["prompt_tokens_details"]["cached_tokens"] in DSPy.
    return Usage(
        input_tokens=result.prompt_tokens,
        output_tokens=result.completion_tokens,
        cache_read_tokens=result.cached_tokens,
    )


def _answer_id(engine: LocalEngine) -> str:
    source = engine.source
    text = repr(
        (
            source.base_dir,
            source.adapter_dir,
            source.merge_adapter,
            engine.max_string_chars,
            engine.repetition_penalty,
            engine.multiline_text,
            engine.calibrate_choices,
            DECODING_RULES_VERSION,  # answers change when the decoding rules do
        )
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]
