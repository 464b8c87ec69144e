"""A fake LM whose usage depends on each request, as a real server's does (for usage tests)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from scripted_lm import ScriptedLM


def supporter_answer(messages: list[dict[str, Any]]) -> str:
    """Answer any supporter signature: both output fields; the adapter keeps the ones it asked for."""
    history = messages[-1]["content"]
    code = ("EM", "PS", "ID", "GT")[len(history) % 4]
    return f"[[ ## strategy ## ]]\n{code}\n\n[[ ## response ## ]]\nI understand.\n\n[[ ## completed ## ]]"


def word_usage(messages: list[dict[str, Any]], text: str) -> tuple[int, int, int]:
    """Prompt tokens = words in the messages, cached = words in the system message (it plays
    the part of a server's cached prefix), completion = words in the answer."""
    prompt = sum(len(str(m.get("content", "")).split()) for m in messages)
    cached = len(str(messages[0].get("content", "")).split()) if len(messages) > 1 else 0
    return prompt, cached, len(text.split())


class CountingLM(ScriptedLM):
    """Answers with ``respond(messages)``; reports usage by :func:`word_usage`, as a real server
    reports usage that depends on each request. ``delay`` lets worker threads overlap."""

    def __init__(
        self,
        respond: Callable[[list[dict[str, Any]]], dict[str, Any] | str] = supporter_answer,
        delay: float = 0.0,
        cache: bool = False,
    ):
        self.lock = threading.Lock()
        self.served = 0

        def serve(messages: list[dict[str, Any]]) -> dict[str, Any] | str:
            if delay:
                time.sleep(delay)
            with self.lock:
                self.served += 1
            return respond(messages)

        super().__init__(serve, model="dummy", meter=word_usage, cache=cache)


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
