"""A fake OpenAI-compatible chat server for load benchmarks (no LM inside).

It answers ``POST /v1/chat/completions`` for every RoleCS role with a valid, varied DSPy
ChatAdapter answer after a fixed latency, so the ideal throughput of a synthesis run is known.
The answer is built from the prompt itself: the output fields (and their ``Literal`` choices) are
read from the system message, and the supporter assistant follows the ``csc`` policy by counting
the supporter turns already in the history, so every dialogue has the same number of LM calls
(``--turns`` supporter turns) and a benchmark's ideal rate is exact.

Run: ``python benchmarks/fake_openai_server.py --port 0 --latency 1.0 [--jitter 0.5]
[--error-rate 0.02]``; it prints ``PORT <n>`` on its first line, serves until stdin closes, its
parent dies, it has been idle for ``--idle-exit`` seconds, or ``--max-seconds`` have passed.
``GET /stats`` returns the calls per role and the injected errors as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import time
from collections import Counter

_FIELD_LINE = re.compile(r"^\d+\. `(\w+)` \(([^)]*\)?)\)", re.M)
_LITERAL = re.compile(r"Literal\[(.*)\]")
# The csc framework's policy, as the fake supporter assistant follows it.
_MIDDLE = ["EM", "PS", "ID", "RI", "FR", "RC", "PR", "RP", "OT"]
_STAGE = {"GT": "connecting", "IV": "identifying", "AC": "maintaining"}
_WORDS = """
    order refund card account delivery invoice password plan upgrade charge
    parcel balance transfer booking ticket warranty router signal address payment
""".split()  # noqa: SIM905

ROLE_BY_FIELDS = {
    ("goal", "scenario"): "planner",
    ("stage", "strategy"): "supporter_assistant",
    ("reply",): "supporter",
    ("direction",): "customer_assistant",
    ("finished", "reason", "utterance"): "customer",
}


def output_fields(system: str) -> list[tuple[str, str]]:
    """(name, type) of the output fields listed in a ChatAdapter system message."""
    _, _, rest = system.partition("Your output fields are:")
    rest = rest.split("All interactions will be structured", 1)[0]
    return [(m.group(1), m.group(2)) for m in _FIELD_LINE.finditer(rest)]


def role_of(fields: list[tuple[str, str]]) -> str:
    """The RoleCS role a request is for, from its output field names."""
    names = tuple(sorted(n for n, _ in fields))
    return "judge" if "strategy_adherence" in names else ROLE_BY_FIELDS.get(names, "other")


def _sentence(rng: random.Random, lead: str) -> str:
    words = rng.sample(_WORDS, 4)
    return f"{lead} the {words[0]} and the {words[1]}, about my {words[2]} ({words[3]} #{rng.randrange(10_000)})."


def answer(messages: list[dict], turns: int, rng: random.Random) -> tuple[str, str]:
    """(role, ChatAdapter-formatted answer) for one chat request."""
    system = next((m["content"] for m in messages if m.get("role") == "system"), "")
    user = messages[-1].get("content", "") if messages else ""
    if isinstance(user, list):  # content parts
        user = " ".join(p.get("text", "") for p in user if isinstance(p, dict))
    fields = output_fields(system)
    role = role_of(fields)
    history = user.rsplit("[[ ## history ## ]]", 1)[-1].split("[[ ##", 1)[0]
    history = history.rsplit("[[ ## dialogue ## ]]", 1)[-1]
    supporter_turns = len(re.findall(r"^Supporter\b", history, re.M))
    values: dict[str, str] = {}
    for name, type_ in fields:
        lit = _LITERAL.search(type_)
        if role == "supporter_assistant" and name == "strategy":
            k = supporter_turns
            late = "AC" if k >= turns - 1 else _MIDDLE[(k - 2) % len(_MIDDLE)]
            values[name] = {0: "GT", 1: "IV"}.get(k, late)
        elif role == "supporter_assistant" and name == "stage":
            values[name] = (
                ""  # set from the strategy below (the runner takes it from the framework)
            )
        elif lit:
            choices = [c.strip().strip("'\"") for c in lit.group(1).split(",")]
            values[name] = rng.choice(choices)
        elif type_.startswith("bool"):
            values[name] = "True" if role == "judge" else "False"
        else:
            values[name] = _sentence(
                rng,
                {"reply": "I can help with", "utterance": "Please check"}.get(name, "It concerns"),
            )
    if role == "supporter_assistant" and "stage" in values:
        values["stage"] = _STAGE.get(values.get("strategy", ""), "exploring")
    text = "".join(f"[[ ## {k} ## ]]\n{v}\n\n" for k, v in values.items()) + "[[ ## completed ## ]]"
    return role, text


class FakeServer:
    """The asyncio HTTP/1.1 server (keep-alive, Content-Length bodies only)."""

    def __init__(
        self, latency: float, jitter: float, error_rate: float, turns: int, seed: int
    ) -> None:
        self.latency, self.jitter, self.error_rate, self.turns = latency, jitter, error_rate, turns
        self.rng = random.Random(seed)
        self.calls: Counter[str] = Counter()
        self.errors: Counter[int] = Counter()
        self.in_flight = 0
        self.peak_in_flight = 0
        self.last_request = time.monotonic()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {
                    k.lower(): v.strip()
                    for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
                }
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                self.last_request = time.monotonic()
                status, payload = await self.route(method, path, body)
                data = json.dumps(payload).encode()
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n".encode()
                    + data
                )
                await writer.drain()
        # CancelledError: the server is shutting down: drop the connection quietly.
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def route(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        if method == "GET" and path.rstrip("/").endswith("/stats"):
            return 200, {
                "calls": dict(self.calls),
                "errors": {str(k): v for k, v in self.errors.items()},
                "peak_in_flight": self.peak_in_flight,
            }
        if method == "GET" and path.rstrip("/").endswith("/models"):
            return 200, {"object": "list", "data": [{"id": "fake", "object": "model"}]}
        if not path.rstrip("/").endswith("/chat/completions"):
            return 404, {"error": {"message": f"no route {path}"}}
        request = json.loads(body or b"{}")
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            delay = self.latency + (
                self.rng.uniform(-self.jitter, self.jitter) if self.jitter else 0
            )
            await asyncio.sleep(max(0.0, delay))
            if self.error_rate and self.rng.random() < self.error_rate:
                code = self.rng.choice((500, 429))
                self.errors[code] += 1
                return code, {
                    "error": {"message": "injected error", "type": "server_error", "code": code}
                }
            role, text = answer(request.get("messages", []), self.turns, self.rng)
            self.calls[role] += 1
            prompt = sum(len(str(m.get("content", ""))) for m in request.get("messages", [])) // 4
            message = {"role": "assistant", "content": text}
            return 200, {
                "id": f"chatcmpl-{self.rng.getrandbits(48):x}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": request.get("model", "fake"),
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": len(text) // 4,
                    "total_tokens": prompt + len(text) // 4,
                },
            }
        finally:
            self.in_flight -= 1


async def serve(args: argparse.Namespace) -> None:
    fake = FakeServer(args.latency, args.jitter, args.error_rate, args.turns, args.seed)
    server = await asyncio.start_server(fake.handle, "127.0.0.1", args.port, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    parent = os.getppid()
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    stdin_closed = asyncio.Event()
    if args.stop_on_stdin_eof:
        loop.add_reader(
            sys.stdin.fileno(),
            lambda: stdin_closed.set() if not os.read(sys.stdin.fileno(), 1024) else None,
        )
    async with server:
        while True:  # bounded: every exit condition is checked once a second
            await asyncio.sleep(1.0)
            now = time.monotonic()
            idle = now - fake.last_request > args.idle_exit or now - started > args.max_seconds
            if idle or stdin_closed.is_set() or os.getppid() != parent:
                break


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency", type=float, default=1.0, help="seconds per answer (mean)")
    p.add_argument("--jitter", type=float, default=0.0, help="uniform +- seconds around --latency")
    p.add_argument("--error-rate", type=float, default=0.0, help="share of 500/429 answers")
    p.add_argument("--turns", type=int, default=4, help="supporter turns per dialogue")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--idle-exit", type=float, default=300.0)
    p.add_argument("--max-seconds", type=float, default=7200.0)
    p.add_argument("--stop-on-stdin-eof", action="store_true")
    asyncio.run(serve(p.parse_args()))


if __name__ == "__main__":
    main()
