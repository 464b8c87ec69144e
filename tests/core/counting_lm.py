"""A fake LM whose usage depends on each request, as a real server's does (for usage tests)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from dspy.clients.engines.dummy_engine import AsyncDummyEngine, DummyEngine
from dspy.utils.dummies import DummyLM


def supporter_answer(messages: list[dict[str, Any]]) -> str:
    """Answer any supporter signature: both output fields; the adapter keeps the ones it asked for."""
    history = messages[-1]["content"]
    code = ("EM", "PS", "ID", "GT")[len(history) % 4]
    return f"[[ ## strategy ## ]]\n{code}\n\n[[ ## response ## ]]\nI understand.\n\n[[ ## completed ## ]]"


class _CountingEngine(DummyEngine):
    def _complete_messages(self, messages):
        from dspy.lm15 import Message, Response, TextPart, Usage

        owner = self.owner
        out = owner.respond(messages)
        text = out if isinstance(out, str) else owner._format_answer_fields(out)
        if owner.delay:
            time.sleep(owner.delay)  # let worker threads overlap
        prompt = sum(len(str(m.get("content", "")).split()) for m in messages)
        # The system message plays the part of a server's cached prefix.
        cached = len(str(messages[0].get("content", "")).split()) if len(messages) > 1 else 0
        completion = len(text.split())
        with owner.lock:
            owner.served += 1
        return Response(
            id=None,
            model="counting",
            message=Message.assistant([TextPart(text)]),
            finish_reason="stop",
            usage=Usage(
                input_tokens=prompt,
                output_tokens=completion,
                total_tokens=prompt + completion,
                cache_read_tokens=cached,
            ),
        )


class CountingLM(DummyLM):
    """Answers with ``respond(messages)``; reports prompt tokens = words in the messages, cached
    prompt tokens = words in the system message, completion tokens = words in the answer."""

    def __init__(
        self,
        respond: Callable[[list[dict[str, Any]]], dict[str, Any] | str] = supporter_answer,
        delay: float = 0.0,
        cache: bool = False,
    ):
        super().__init__([])
        self.respond = respond
        self.delay = delay
        self.cache = cache
        self.lock = threading.Lock()
        self.served = 0
        self._engine_spec = _CountingEngine(self)
        self._async_engine_spec = AsyncDummyEngine(self._engine_spec)


def history_usage(lm: Any) -> dict[str, int]:
    """Sum of the usage DSPy recorded for each individual call in ``lm.history``."""
    total = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cached_prompt_tokens": 0}
    for entry in lm.history:
        usage = entry.get("usage") or {}
        if not usage:
            continue
        total["calls"] += 1
        total["prompt_tokens"] += int(usage.get("prompt_tokens") or 0)
        total["completion_tokens"] += int(usage.get("completion_tokens") or 0)
        details = usage.get("prompt_tokens_details") or {}
        total["cached_prompt_tokens"] += int(details.get("cached_tokens") or 0)
    return total
