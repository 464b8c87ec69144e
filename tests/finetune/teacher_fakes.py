"""A deterministic fake teacher LM: its strategy depends on the prompt, its reply on the strategy
it was asked to carry out, and it reports usage, so tests can tell its outputs from the gold ones
and check the cost figures."""

from __future__ import annotations

import re
import threading
import zlib
from typing import Any

from dspy.clients.engines.dummy_engine import AsyncDummyEngine, DummyEngine
from dspy.utils.dummies import DummyLM

CODES = ("GT", "EM", "PS", "ID", "AC")
_ASKED_STRATEGY = re.compile(r"\[\[ ## strategy ## \]\]\n(\w+)")


def teacher_answer(messages: list[dict[str, Any]]) -> str:
    """The strategy (a function of the whole prompt) or the reply (naming its strategy)."""
    last = str(messages[-1]["content"])
    if "starting with the field `[[ ## strategy ## ]]`" in last:
        code = CODES[zlib.crc32(last.encode()) % len(CODES)]
        return f"[[ ## strategy ## ]]\n{code}\n\n[[ ## completed ## ]]"
    asked = _ASKED_STRATEGY.search(last)
    tag = zlib.crc32(last.encode()) % 1000
    reply = f"Teacher reply carrying out {asked.group(1) if asked else '?'} (#{tag})."
    return f"[[ ## response ## ]]\n{reply}\n\n[[ ## completed ## ]]"


class _Engine(DummyEngine):
    def _complete_messages(self, messages):  # type: ignore[no-untyped-def]
        from dspy.lm15 import Message, Response, TextPart, Usage

        owner = self.owner
        with owner.lock:
            owner.served += 1
            if owner.fail_after is not None and owner.served > owner.fail_after:
                raise RuntimeError("teacher server went away")
        text = teacher_answer(messages)
        prompt = sum(len(str(m.get("content", "")).split()) for m in messages)
        completion = len(text.split())
        return Response(
            id=None,
            model="fake-teacher",
            message=Message.assistant([TextPart(text)]),
            finish_reason="stop",
            usage=Usage(
                input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion
            ),
        )


class FakeTeacherLM(DummyLM):
    """Answers every supporter prompt with :func:`teacher_answer`; ``fail_after=N`` makes every
    call after the N-th raise, as a server that goes away mid-run."""

    def __init__(self, fail_after: int | None = None):
        super().__init__([])
        self.model = "fake-teacher"
        self.fail_after = fail_after
        self.lock = threading.Lock()
        self.served = 0
        self._engine_spec = _Engine(self)
        self._async_engine_spec = AsyncDummyEngine(self._engine_spec)
