"""Offline fake LMs on DSPy's public custom-engine interface, for tests.

``ScriptedLM(respond)`` is a real ``dspy.LM`` whose engine (``dspy.LM(engine=...)``, the
interface DSPy 3.4 documents for custom LMs) answers every request with ``respond(messages)``:
a dict of output fields (written in ChatAdapter form), a raw string (to test unparseable
output), or an exception it raises (to test LM errors). No private DSPy hook is overridden, so
the fakes survive DSPy upgrades; calls go through DSPy's own request, usage and cache paths.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import dspy
from dspy.lm15 import Message, Request, Response, TextPart, Usage, response_to_events

Respond = Callable[[list[dict[str, Any]]], dict[str, Any] | str]
# (messages, answer text) -> (prompt tokens, cached prompt tokens, completion tokens)
Meter = Callable[[list[dict[str, Any]], str], tuple[int, int, int]]


def chat_answer(fields: dict[str, Any]) -> str:
    """Output fields as a ChatAdapter answer: one ``[[ ## name ## ]]`` section each."""
    sections = "".join(
        f"[[ ## {name} ## ]]\n{value if isinstance(value, str) else json.dumps(value)}\n\n"
        for name, value in fields.items()
    )
    return sections + "[[ ## completed ## ]]"


def request_messages(request: Request) -> list[dict[str, Any]]:
    """A request as OpenAI-style messages (system first), the form the scripts read."""
    messages = []
    if request.system is not None:
        system = request.system
        if not isinstance(system, str):
            system = "".join(part.text for part in system)
        messages.append({"role": "system", "content": system})
    messages.extend({"role": m.role, "content": m.text or ""} for m in request.messages)
    return messages


def fixed_usage(messages: list[dict[str, Any]], text: str) -> tuple[int, int, int]:
    """10 prompt tokens and 5 completion tokens per call."""
    return 10, 0, 5


class ScriptedEngine:
    """A DSPy engine (``complete(Request) -> Response``) answering with ``respond``."""

    def __init__(self, respond: Respond, meter: Meter = fixed_usage) -> None:
        self.respond = respond
        self.meter = meter

    def complete(self, request: Request) -> Response:
        messages = request_messages(request)
        out = self.respond(messages)
        text = out if isinstance(out, str) else chat_answer(out)
        prompt, cached, completion = self.meter(messages, text)
        return Response(
            id=None,
            model="scripted",
            message=Message.assistant([TextPart(text)]),
            finish_reason="stop",
            usage=Usage(
                input_tokens=prompt,
                output_tokens=completion,
                total_tokens=prompt + completion,
                cache_read_tokens=cached,
            ),
        )

    def stream(self, request: Request):
        return response_to_events(self.complete(request))

    def close(self) -> None:
        pass


class AsyncScriptedEngine:
    """The async counterpart DSPy asks for next to a custom engine."""

    def __init__(self, engine: ScriptedEngine) -> None:
        self.engine = engine

    async def complete(self, request: Request) -> Response:
        return self.engine.complete(request)

    async def stream(self, request: Request):
        for event in self.engine.stream(request):
            yield event

    async def aclose(self) -> None:
        pass


class ScriptedLM(dspy.LM):
    """A ``dspy.LM`` answering with ``respond(messages)`` (see the module docstring)."""

    def __init__(
        self,
        respond: Respond,
        *,
        model: str = "dummy",
        meter: Meter = fixed_usage,
        cache: bool = False,
    ) -> None:
        engine = ScriptedEngine(respond, meter)
        super().__init__(
            model, engine=engine, async_engine=AsyncScriptedEngine(engine), cache=cache
        )
