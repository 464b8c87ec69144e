"""``csc serve``: OpenAI-style errors offline (fake engine), and the LiteLLM path against a real
``csc serve`` process (started by a fixture, marked slow/local_lm: they run in CI)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from csc.engine.engine import Generation
from csc.engine.local_lm import ContextLengthError
from csc.engine.server import ChatServer

MODEL = "local/smollm2-135m-instruct"
KEY = "test-key-123"


def post(url: str, body: bytes | dict, key: str | None = KEY) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get(url: str, key: str | None = KEY) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# --------------------------------------------------------------------------- offline: fake engine
class FakeEngine:
    """Answers "ok" (or fails as told) without a model."""

    def __init__(self) -> None:
        self.fail_with: Exception | None = None

    def submit(self, request: Any, on_text: Any = None) -> tuple[Future, list[int]]:
        if self.fail_with is not None:
            raise self.fail_with
        future: Future = Future()
        future.set_result(Generation("ok", 5, 1, "stop", cached_tokens=3))
        return future, [1, 2, 3, 4, 5]


@pytest.fixture()
def fake_server() -> Iterator[tuple[ChatServer, FakeEngine]]:
    engine = FakeEngine()
    server = ChatServer(("127.0.0.1", 0), engine, MODEL, api_key=KEY)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, engine
    server.shutdown()
    server.server_close()


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}


def test_answer_has_openai_shape_and_usage(fake_server) -> None:
    server, _ = fake_server
    status, body = post(f"{server.url}/chat/completions", chat(n=2))
    assert status == 200 and body["object"] == "chat.completion"
    assert [c["message"]["content"] for c in body["choices"]] == ["ok", "ok"]
    assert body["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 3},
    }
    status, models = get(f"{server.url}/models")
    assert status == 200 and models["data"][0]["id"] == MODEL


def test_a_burst_of_concurrent_clients_is_all_answered(fake_server) -> None:
    from concurrent.futures import ThreadPoolExecutor

    server, _ = fake_server
    with ThreadPoolExecutor(max_workers=64) as pool:
        statuses = list(
            pool.map(lambda _: post(f"{server.url}/chat/completions", chat())[0], range(64))
        )
    assert statuses == [200] * 64


@pytest.mark.parametrize(
    ("body", "key", "status", "code"),
    [
        (b"{not json", KEY, 400, None),
        (chat(model="gpt-4o"), KEY, 404, "model_not_found"),
        (chat(), None, 401, "invalid_api_key"),
        (chat(), "wrong", 401, "invalid_api_key"),
        (chat(frobnicate=1), KEY, 400, None),
        (chat(n=0), KEY, 400, None),
        (b"[1, 2]", KEY, 400, None),
    ],
)
def test_bad_requests_get_openai_error_objects(fake_server, body, key, status, code) -> None:
    server, _ = fake_server
    got, answer = post(f"{server.url}/chat/completions", body, key=key)
    assert got == status
    error = answer["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    assert "Traceback" not in error["message"] and "\n" not in error["message"]


def test_too_many_tokens_and_server_faults_are_error_objects(fake_server) -> None:
    server, engine = fake_server
    engine.fail_with = ContextLengthError("the prompt has 9000 tokens")
    status, body = post(f"{server.url}/chat/completions", chat(max_tokens=10))
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    engine.fail_with = RuntimeError("secret internals\n  File x.py")
    status, body = post(f"{server.url}/chat/completions", chat())
    assert status == 500 and body["error"]["type"] == "server_error"
    assert "secret internals" not in body["error"]["message"]
    status, body = get(f"{server.url}/nowhere")
    assert status == 404 and body["error"]["code"] == "unknown_url"


# --------------------------------------------------------------------------- a real `csc serve`
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(port: int, quiet: bool = True) -> subprocess.Popen:
    env = {**os.environ, "CSC_TEST_SERVE_KEY": KEY}
    command = [sys.executable, "-m", "csc", "serve", "--port", str(port)]
    command += ["--api-key-env", "CSC_TEST_SERVE_KEY"] + (["--quiet"] if quiet else [])
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"csc serve exited: {process.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("csc serve did not become healthy")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    """A `csc serve` process on a free port; yields its base URL (http://127.0.0.1:PORT)."""
    from csc.engine import ModelNotFoundError, model_store

    try:
        model_store.embedded_gguf()
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))
    port = free_port()
    process = start_serve(port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url
    finally:
        stop(process)


def remote_lm(url: str, **kwargs: Any) -> Any:
    from csc.lm import LMSpec, build_lm

    os.environ["CSC_TEST_SERVE_KEY"] = KEY
    spec = LMSpec(
        model=f"openai/{MODEL}", api_base=f"{url}/v1", api_key_env="CSC_TEST_SERVE_KEY", **kwargs
    )
    return build_lm(spec)


@pytest.mark.slow
@pytest.mark.local_lm
def test_litellm_path_runs_a_csc_program_against_csc_serve(served: str) -> None:
    import dspy

    from csc.framework import Framework

    framework = Framework.load("csc")
    sig = dspy.Signature(
        {
            "history": (str, dspy.InputField()),
            "strategy": (framework.strategy_literal, dspy.OutputField()),
        },
        "Choose the next support strategy.",
    )
    lm = remote_lm(served, max_tokens=24)
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
        pred = dspy.Predict(sig)(history=f"Customer: my card is blocked ({time.time()})")
    assert pred.strategy in framework.codes
    usage = lm.history[-1]["usage"]
    assert usage["prompt_tokens"] > 50 and usage["completion_tokens"] > 0


@pytest.mark.slow
@pytest.mark.local_lm
def test_served_response_format_is_constrained(served: str) -> None:
    schema = {
        "type": "object",
        "properties": {"polite": {"type": "boolean"}, "reason": {"type": "string"}},
        "required": ["polite", "reason"],
    }
    body = chat(
        messages=[{"role": "user", "content": "Is 'thanks for waiting' polite? Answer in JSON."}],
        max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "V", "schema": schema}},
    )
    status, answer = post(f"{served}/v1/chat/completions", body)
    assert status == 200
    value = json.loads(answer["choices"][0]["message"]["content"])
    assert isinstance(value["polite"], bool) and isinstance(value["reason"], str)
    status, answer = post(f"{served}/v1/chat/completions", chat(max_tokens=100_000))
    assert status == 400 and answer["error"]["code"] == "context_length_exceeded"


def dialogue_ids(out: Any) -> list[str]:
    ids = []
    for name in ("dialogues.jsonl", "rejected.jsonl"):
        path = out / name
        if path.exists():
            ids += [json.loads(line)["id"] for line in path.read_text().splitlines() if line]
    return ids


@pytest.mark.slow
@pytest.mark.local_lm
def test_killing_csc_serve_mid_run_then_rerun_resumes_cleanly(tmp_path) -> None:
    from csc.engine import ModelNotFoundError, model_store

    try:
        model_store.embedded_gguf()
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out = tmp_path / "out"
    env = {**os.environ, "DSPY_CACHEDIR": str(tmp_path / "dspy-cache"), "CSC_TEST_SERVE_KEY": KEY}
    command = [sys.executable, "-m", "csc", "synthesize", "--dialogues", "2", "--concurrency", "2"]
    command += ["--max-utterances", "3", "--lm", f"openai/{MODEL}", "--api-base", f"{url}/v1"]
    command += ["--out", str(out)]
    env["OPENAI_API_KEY"] = KEY  # what the LiteLLM path sends as its bearer token

    server = start_serve(port, quiet=False)  # its access log says when the run is under way
    answered = threading.Event()

    def watch(stream: Any) -> None:
        for line in iter(stream.readline, b""):
            if b"POST /v1/chat/completions" in line and b'" 200 ' in line:
                answered.set()

    try:
        wait_healthy(url, server)
        threading.Thread(target=watch, args=(server.stderr,), daemon=True).start()
        client = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        # Kill on the first answer: a dialogue needs many calls, so both are still in flight
        # (a fixed sleep stopped working once the engine answered a whole run within it).
        assert answered.wait(timeout=600), "csc serve answered no chat request"
        server.kill()  # SIGKILL: no goodbye to the clients
        server.wait(timeout=30)
        first_output, _ = client.communicate(timeout=900)
        first = dialogue_ids(out)
        assert (out / "failures.jsonl").exists(), first_output.decode()[-2000:]
        assert len(first) < 2  # the dialogues in flight failed and were not written
        server = start_serve(port)
        wait_healthy(url, server)
        rerun = subprocess.run(command, env=env, capture_output=True, timeout=3600)
        assert rerun.returncode == 0, rerun.stdout.decode()[-2000:] + rerun.stderr.decode()[-2000:]
    finally:
        stop(server)
    final = dialogue_ids(out)
    assert sorted(set(final)) == sorted(final) and len(final) == 2  # nothing lost, nothing twice
    assert set(first) <= set(final)
