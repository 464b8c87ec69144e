"""``csc serve``: the embedded engine behind an OpenAI-compatible HTTP server.

Endpoints: ``POST /v1/chat/completions`` (also streamed, ``"stream": true``), ``GET /v1/models``
and ``GET /health``. Requests are read with DSPy's own OpenAI-chat reader
(``dspy.lm15.request_from_openai_chat``) and answered by :class:`~csc.engine.LocalEngine`, so
``response_format`` gets the same constrained decoding as in-process calls, and every HTTP
request joins the same continuous batch and prefix cache. Several ``csc`` processes can share
one loaded model this way (``--lm openai/<model> --api-base http://127.0.0.1:PORT/v1``).

Errors are OpenAI-style objects (``{"error": {"message", "type", "param", "code"}}``) with the
matching HTTP status; a server fault is reported as a 500 with the exception's type only, never
a traceback.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from csc.engine.local_lm import ContextLengthError, LocalEngine

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 2**20


class APIError(Exception):
    """An error answered to the client as an OpenAI-style error object."""

    def __init__(
        self,
        status: HTTPStatus,
        message: str,
        kind: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = (
            status,
            message,
            kind,
            code,
            param,
        )

    def body(self) -> dict[str, Any]:
        """The JSON error object."""
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


class ChatServer(ThreadingHTTPServer):
    """An HTTP server answering OpenAI chat requests with one :class:`LocalEngine`."""

    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default listen backlog is 5: a burst of clients got connection resets.
    request_queue_size = 256

    def __init__(
        self,
        address: tuple[str, int],
        engine: LocalEngine,
        model_name: str,
        api_key: str | None = None,
        default_max_tokens: int = 512,
    ) -> None:
        super().__init__(address, ChatHandler)
        self.engine = engine
        self.model_name = model_name
        self.api_key = api_key or None
        self.default_max_tokens = default_max_tokens
        self.created = int(time.time())
        self.requests_served = 0
        self._count_lock = threading.Lock()

    @property
    def url(self) -> str:
        """The base URL clients use (``.../v1``)."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    # ------------------------------------------------------------------ requests
    def chat_request(self, body: Any) -> tuple[Any, int, bool, bool]:
        """(canonical request, n, stream, include_usage) of a chat-completions body."""
        from dspy.lm15 import request_from_openai_chat

        if not isinstance(body, dict):
            raise APIError(HTTPStatus.BAD_REQUEST, "the request body must be a JSON object")
        model = body.get("model")
        if model != self.model_name:
            raise APIError(
                HTTPStatus.NOT_FOUND,
                f"the model {model!r} does not exist; this server serves {self.model_name!r}",
                code="model_not_found",
                param="model",
            )
        body = dict(body)
        n = body.pop("n", None)
        n = 1 if n is None else n
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 16:
            raise APIError(HTTPStatus.BAD_REQUEST, "n must be an integer from 1 to 16", param="n")
        stream = bool(body.get("stream", False))
        options = body.get("stream_options") or {}
        include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
        if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
            body["max_tokens"] = self.default_max_tokens
        try:
            request = request_from_openai_chat(body)
        except Exception as exc:  # lm15 names the offending key or value
            raise APIError(HTTPStatus.BAD_REQUEST, _one_line(exc)) from None
        return request, n, stream, include_usage

    def complete(self, request: Any, n: int) -> dict[str, Any]:
        """A ``chat.completion`` object with ``n`` choices."""
        results = [self._generate(request) for _ in range(n)]
        prompt = results[0].prompt_tokens
        completion = sum(r.completion_tokens for r in results)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": r.text},
                    "finish_reason": _finish(r.finish_reason),
                    "logprobs": None,
                }
                for i, r in enumerate(results)
            ],
            "usage": _usage(prompt, completion, results[0].cached_tokens),
        }

    def _generate(self, request: Any) -> Any:
        try:
            future, _ = self.engine.submit(request)
        except ContextLengthError as exc:
            raise APIError(
                HTTPStatus.BAD_REQUEST,
                str(exc),
                code="context_length_exceeded",
                param="messages",
            ) from None
        except ValueError as exc:
            raise APIError(HTTPStatus.BAD_REQUEST, _one_line(exc)) from None
        result = future.result()
        with self._count_lock:
            self.requests_served += 1
        return result

    def models(self) -> dict[str, Any]:
        """The ``/v1/models`` list."""
        return {
            "object": "list",
            "data": [
                {
                    "id": self.model_name,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "csc",
                }
            ],
        }


class ChatHandler(BaseHTTPRequestHandler):
    """One HTTP request (a thread of :class:`ChatServer`)."""

    server: ChatServer
    protocol_version = "HTTP/1.1"
    server_version = "csc-serve"

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("%s " + format, self.address_string(), *args)

    # ------------------------------------------------------------------ routing
    def do_GET(self) -> None:
        """``/health`` and ``/v1/models``."""
        self._handle(self._get)

    def do_POST(self) -> None:
        """``/v1/chat/completions``."""
        self._handle(self._post)

    def _handle(self, route: Any) -> None:
        try:
            route()
        except APIError as exc:
            self._json(exc.status, exc.body())
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away
        except Exception as exc:
            logger.exception("csc serve: request failed")
            error = APIError(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                f"the server failed to answer ({type(exc).__name__})",
                kind="server_error",
            )
            with contextlib.suppress(OSError):
                self._json(error.status, error.body())

    def _get(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path == "/health":
            self._json(HTTPStatus.OK, {"status": "ok", "model": self.server.model_name})
            return
        self._authorize()
        if path == "/v1/models":
            self._json(HTTPStatus.OK, self.server.models())
        elif path.startswith("/v1/models/"):
            name = path[len("/v1/models/") :]
            if name != self.server.model_name:
                raise APIError(
                    HTTPStatus.NOT_FOUND,
                    f"the model {name!r} does not exist",
                    code="model_not_found",
                )
            self._json(HTTPStatus.OK, self.server.models()["data"][0])
        else:
            raise APIError(HTTPStatus.NOT_FOUND, f"no route GET {path}", code="unknown_url")

    def _post(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        body = self._body()  # read it even when refusing, so the connection stays usable
        if path != "/v1/chat/completions":
            raise APIError(HTTPStatus.NOT_FOUND, f"no route POST {path}", code="unknown_url")
        self._authorize()
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise APIError(
                HTTPStatus.BAD_REQUEST, f"the body is not valid JSON: {_one_line(exc)}"
            ) from None
        request, n, stream, include_usage = self.server.chat_request(payload)
        if stream:
            self._stream(request, include_usage)
        else:
            self._json(HTTPStatus.OK, self.server.complete(request, n))

    # ------------------------------------------------------------------ helpers
    def _authorize(self) -> None:
        key = self.server.api_key
        if key is None:
            return
        header = self.headers.get("Authorization", "")
        given = header[len("Bearer ") :] if header.startswith("Bearer ") else ""
        if not given or not hmac.compare_digest(given.encode(), key.encode()):
            raise APIError(
                HTTPStatus.UNAUTHORIZED,
                "missing or wrong API key; send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
            )

    def _body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise APIError(HTTPStatus.BAD_REQUEST, "invalid Content-Length") from None
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise APIError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the body has {length} bytes, more than {MAX_BODY_BYTES}",
            )
        return self.rfile.read(length) if length > 0 else b""

    def _json(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, request: Any, include_usage: bool) -> None:
        server = self.server
        try:
            events = server.engine.stream(request)
            first = next(events)  # submits: a bad request fails before the 200 goes out
        except ContextLengthError as exc:
            raise APIError(
                HTTPStatus.BAD_REQUEST, str(exc), code="context_length_exceeded", param="messages"
            ) from None
        except ValueError as exc:
            raise APIError(HTTPStatus.BAD_REQUEST, _one_line(exc)) from None
        ident = first.id or f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.close_connection = True  # the stream ends when the connection closes
        self.end_headers()

        def chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> None:
            body: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": server.model_name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
                if usage is None
                else [],
            }
            if usage is not None:
                body["usage"] = usage
            self.wfile.write(f"data: {json.dumps(body)}\n\n".encode())
            self.wfile.flush()

        chunk({"role": "assistant", "content": ""})
        for event in events:
            if event.type == "delta":
                chunk({"content": event.delta.text})
            elif event.type == "end":
                chunk({}, _finish(event.finish_reason or "stop"))
                if include_usage and event.usage is not None:
                    u = event.usage
                    chunk({}, usage=_usage(u.input_tokens, u.output_tokens, u.cache_read_tokens))
        with server._count_lock:
            server.requests_served += 1
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _usage(prompt: int, completion: int, cached: int | None) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached or 0},
    }


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def make_server(
    lm: Any,
    host: str = "127.0.0.1",
    port: int = 8400,
    api_key: str | None = None,
    model_name: str | None = None,
) -> ChatServer:
    """A :class:`ChatServer` for a :class:`~csc.engine.LocalLM` (its engine loaded now)."""
    engine = lm.local_engine
    _ = engine.engine  # load the weights before accepting requests
    default_max_tokens = int(lm.kwargs.get("max_tokens") or 512)
    return ChatServer((host, port), engine, model_name or lm.model, api_key, default_max_tokens)
