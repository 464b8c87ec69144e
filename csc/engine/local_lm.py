"""``LocalLM``: a DSPy LM served in-process by the batching engine.

Usage::

    import dspy
    from csc.engine import LocalLM

    dspy.configure(lm=LocalLM())                      # embedded SmolLM2-135M-Instruct
    dspy.configure(lm=LocalLM("path/to/hf-folder"))   # any causal-LM folder
    lm = LocalLM.from_finetuned("runs/lora-1")        # base + LoRA adapter from `csc finetune`

Answers come back OpenAI-shaped (``choices[i].message.content``, ``finish_reason``, ``usage``,
``model``), so DSPy history, ``dspy.settings.track_usage`` and ``lm.history[-1]["usage"]`` work
as with ``dspy.LM``. DSPy's ChatAdapter and JSON outputs are enforced by constrained decoding.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import Sequence
from typing import Any

import dspy
from pydantic import BaseModel, Field

from csc.engine.calibration import calibrate_plan
from csc.engine.decoding import Sampling
from csc.engine.engine import (
    DEFAULT_BATCH_WAIT_MS,
    DEFAULT_MAX_BATCH_SIZE,
    Engine,
    Generation,
    shared_engine,
)
from csc.engine.model_store import ModelSource, finetuned_source, local_source
from csc.engine.structure import (
    DECODING_RULES_VERSION,
    OutputPlan,
    message_text,
    plan_for_request,
)

DEFAULT_MAX_TOKENS = 512
# Sampling options the engine understands; anything else in a request is ignored (with the same
# leniency as LiteLLM's drop_params) but still part of the cache key.
SUPPORTED_PARAMS = {
    "temperature",
    "max_tokens",
    "max_completion_tokens",
    "top_p",
    "seed",
    "stop",
    "n",
    "response_format",
    "rollout_id",
    "calibrate_choices",
}
# Contextual calibration of Literal choices (csc.engine.calibration); see docs/engine.md for
# the measurement behind the default.
DEFAULT_CALIBRATE_CHOICES = False


class ChatMessage(BaseModel):
    """The assistant message of one choice."""

    role: str = "assistant"
    content: str | None = None


class ChatChoice(BaseModel):
    """One completion."""

    index: int = 0
    message: ChatMessage
    finish_reason: str = "stop"


class ChatUsage(BaseModel):
    """Token counts of one call."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatCompletion(BaseModel):
    """An OpenAI-style chat completion, as ``dspy.LM`` providers return it."""

    id: str = Field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    object: str = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: ChatUsage | dict[str, int] = Field(default_factory=ChatUsage)
    cache_hit: bool = False


class LocalLM(dspy.BaseLM):
    """A Hugging Face causal LM run in-process, batched across threads, with constrained outputs.

    Args:
        model_path: a Hugging Face model folder; None for the embedded SmolLM2-135M-Instruct.
        temperature: default sampling temperature (0 = greedy, deterministic).
        max_tokens: default completion length limit.
        cache: use DSPy's request cache, like ``dspy.LM`` (key: model, messages, sampling
            options including ``rollout_id``).
        device: ``cpu``, ``cuda``, ``cuda:1``...; default CUDA when available.
        dtype: ``float32`` / ``bfloat16`` / ``float16``; default float32 on CPU, bf16/fp16 on CUDA.
        max_batch_size: most requests decoded together (engine option, first LM wins).
        batch_wait_ms: how long the worker waits to gather a batch (engine option).
        max_string_chars: length bound for strings inside JSON outputs.
        num_threads: CPU threads for torch (engine option; default half the cores, 0 leaves
            torch's own setting). PyTorch's setting is process-wide.
        repetition_penalty: penalty on tokens a request already generated (1.0 turns it off);
            the default keeps the 135M model from looping on one phrase.
        calibrate_choices: contextual calibration of Literal / Enum outputs (divide each
            option's probability by its probability on a content-free input); counters the
            small model's bias towards one label.
        **kwargs: further default request options (``top_p``, ``seed``, ``stop``,
            ``multiline_text=True`` to let free-text fields span several paragraphs...).
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
        source: ModelSource | None = None,
        repetition_penalty: float = 1.15,
        calibrate_choices: bool = DEFAULT_CALIBRATE_CHOICES,
        **kwargs: Any,
    ) -> None:
        self.source = source or local_source(model_path)
        self.model_path = None if model_path is None else str(model_path)
        self.device = device
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        self.batch_wait_ms = batch_wait_ms
        self.max_string_chars = max_string_chars
        self.num_threads = num_threads
        super().__init__(
            model=self.source.name,
            model_type="chat",
            temperature=temperature,
            max_tokens=max_tokens,
            cache=cache,
            repetition_penalty=repetition_penalty,
            calibrate_choices=calibrate_choices,
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

    # ------------------------------------------------------------------ engine
    @property
    def engine(self) -> Engine:
        """The shared engine of this LM's model (loaded on first access)."""
        return shared_engine(
            self.source,
            self.device,
            self.dtype,
            self.max_batch_size,
            self.batch_wait_ms,
            self.num_threads,
        ).load()

    @property
    def supported_params(self) -> set[str]:
        """Options the engine honours; ``response_format`` makes JSONAdapter send schemas."""
        return set(SUPPORTED_PARAMS)

    @property
    def supports_response_schema(self) -> bool:
        """JSON schemas are enforced by grammar-constrained decoding."""
        return True

    def dump_state(self) -> dict[str, Any]:
        """State to rebuild this LM (``model_path`` or the fine-tuned folder, options)."""
        state = super().dump_state()
        state.pop("model", None)
        state.pop("model_type", None)
        state.pop("num_retries", None)
        state.update(
            model_path=self.model_path,
            device=self.device,
            dtype=self.dtype,
            max_batch_size=self.max_batch_size,
            batch_wait_ms=self.batch_wait_ms,
            max_string_chars=self.max_string_chars,
            num_threads=self.num_threads,
        )
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

    # ------------------------------------------------------------------ calls
    def forward(
        self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> ChatCompletion:
        """Generate a completion (blocking); returns an OpenAI-shaped response."""
        request, cache_key = self._request(prompt, messages, kwargs)
        if cache_key is not None and (hit := self._cache_get(cache_key)) is not None:
            return hit
        futures = self._submit(request)
        response = self._response([f.result() for f in futures])
        if cache_key is not None:
            dspy.cache.put(cache_key, response.model_dump(mode="json"))
        return response

    async def aforward(
        self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> ChatCompletion:
        """Async :meth:`forward`: the request joins the same batches as threaded calls."""
        request, cache_key = self._request(prompt, messages, kwargs)
        if cache_key is not None and (hit := self._cache_get(cache_key)) is not None:
            return hit
        futures = await asyncio.to_thread(self._submit, request)
        results = [await asyncio.wrap_future(f) for f in futures]
        response = self._response(results)
        if cache_key is not None:
            dspy.cache.put(cache_key, response.model_dump(mode="json"))
        return response

    def _request(
        self, prompt: str | None, messages: list[dict[str, Any]] | None, kwargs: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        # DSPy's legacy execution path passes only the call's own kwargs: merge the defaults here.
        options = {**self.kwargs, **kwargs}
        use_cache = options.pop("cache", self.cache)
        if messages is None:
            messages = [{"role": "user", "content": prompt or ""}]
        messages = [{"role": m.get("role", "user"), "content": message_text(m)} for m in messages]
        options = {k: v for k, v in options.items() if v is not None}
        request = {"messages": messages, **options}
        if not use_cache:
            return request, None
        key = {
            "_fn_identifier": "csc.engine.LocalLM.forward",
            "model": self.model,
            # Two folders may share a name: the key names the weights, not only the label.
            "weights": [self.source.base_dir, self.source.adapter_dir, self.source.merge_adapter],
            # Answers change when the decoding rules do: entries from older rules are not reused.
            "decoding": DECODING_RULES_VERSION,
            **request,
        }
        return request, key

    def _cache_get(self, key: dict[str, Any]) -> ChatCompletion | None:
        record = dspy.cache.get(key)
        if record is None:
            return None
        if isinstance(record, BaseModel):
            record = record.model_dump(mode="json")
        response = ChatCompletion.model_validate(record)
        # As with dspy.LM: a cache hit costs nothing and is marked as such.
        response.usage = {}
        response.cache_hit = True
        return response

    def _submit(self, request: dict[str, Any]) -> list[Any]:
        engine = self.engine
        messages = request["messages"]
        plan: OutputPlan | None = plan_for_request(
            messages, request.get("response_format"), max_string_chars=self.max_string_chars
        )
        if plan is not None and request.get("calibrate_choices"):
            plan = calibrate_plan(engine, messages, plan)  # hook: csc.engine.calibration
        prompt_ids = engine.encode_messages(messages)
        n = int(request.get("n") or 1)
        futures = []
        for i in range(n):
            futures.append(engine.submit(prompt_ids, plan, self._sampling(request, i)))
        return futures

    def _sampling(self, request: dict[str, Any], index: int) -> Sampling:
        temperature = float(request.get("temperature") or 0.0)
        max_tokens = request.get("max_tokens") or request.get("max_completion_tokens")
        stop = request.get("stop") or ()
        if isinstance(stop, str):
            stop = (stop,)
        seed = None
        if temperature > 0:
            seed = _row_seed(request.get("seed"), request.get("rollout_id"), index)
        return Sampling(
            max_tokens=int(max_tokens or DEFAULT_MAX_TOKENS),
            temperature=temperature,
            top_p=float(request.get("top_p") or 1.0),
            seed=seed,
            stop=tuple(str(s) for s in stop),
            repetition_penalty=float(request.get("repetition_penalty") or 1.0),
            multiline_text=bool(request.get("multiline_text", False)),
        )

    def _response(self, results: Sequence[Generation]) -> ChatCompletion:
        prompt_tokens = results[0].prompt_tokens if results else 0
        completion_tokens = sum(r.completion_tokens for r in results)
        return ChatCompletion(
            model=self.model,
            choices=[
                ChatChoice(
                    index=i,
                    message=ChatMessage(content=r.text),
                    finish_reason=r.finish_reason,
                )
                for i, r in enumerate(results)
            ],
            usage=ChatUsage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
        )


def _row_seed(seed: Any, rollout_id: Any, index: int) -> int | None:
    """A generator seed from (seed, rollout_id, choice index); None (random) if neither is set."""
    if seed is None and rollout_id is None:
        return None
    text = f"{seed}|{rollout_id}|{index}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 2
