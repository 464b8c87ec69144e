"""Issue #8 item 6: a planted API key (in the environment and in the server URL) appears in no
output, error, log, cache, report or saved file of a real run against a local fake server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import pytest

KEY = "sk-PLANTED-41c7d09e8b2a"
PASSWORD = "pw-PLANTED-93b1e6f2"
SAMPLE = Path(str(resources.files("csc.data") / "samples" / "sample_en.json"))


class _FakeOpenAI(BaseHTTPRequestHandler):
    """Answers every chat completion with all the fields the supporter asks for."""

    seen_auth: list[str] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        _FakeOpenAI.seen_auth.append(self.headers.get("Authorization", ""))
        content = (
            "[[ ## strategy ## ]]\nEM\n\n[[ ## response ## ]]\nI am sorry; let me check that "
            "for you.\n\n[[ ## completed ## ]]"
        )
        body = json.dumps(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "served",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def _scan(root: Path) -> list[str]:
    leaks = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if KEY.encode() in data or PASSWORD.encode() in data:
                leaks.append(str(path.relative_to(root)))
    return leaks


@pytest.mark.slow  # three CLI processes, ~15 s each
def test_a_run_writes_the_key_nowhere(tmp_path, fake_server) -> None:
    home = tmp_path / "home"
    home.mkdir()
    # No retries: the failing calls below should fail at once.
    (tmp_path / "csc.toml").write_text("[lm]\noptions = { num_retries = 0 }\n", "utf-8")
    env = {
        **os.environ,
        "HOME": str(home),
        "DSPY_CACHEDIR": str(home / "dspy_cache"),
        "OPENAI_API_KEY": KEY,
        "CSC_CONFIG": "",
        "CSC_LM": "",
        "NO_COLOR": "1",
    }
    out = tmp_path / "eval_out"
    base_args = [
        sys.executable, "-m", "csc", "evaluate", "--data", str(SAMPLE), "--lm", "openai/served",
        "--context", "ref", "--limit", "3", "--no-bertscore",
    ]  # fmt: skip
    # A URL with a password: DSPy's client cannot use it, and each failed turn is kept as a
    # row with its error, which must not carry the password.
    pw_base = f"http://user:{PASSWORD}@127.0.0.1:{fake_server}/v1"
    proc = subprocess.run(
        [*base_args, "--api-base", pw_base, "--out", str(tmp_path / "eval_pw")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = (tmp_path / "eval_pw" / "predictions.jsonl").read_text("utf-8")
    assert '"error": "' in rows and ":***@" in rows
    assert KEY not in proc.stdout + proc.stderr and PASSWORD not in proc.stdout + proc.stderr
    assert _scan(tmp_path) == []

    api_base = f"http://127.0.0.1:{fake_server}/v1"
    proc = subprocess.run(
        [*base_args, "--api-base", api_base, "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any(KEY in auth for auth in _FakeOpenAI.seen_auth), (
        _FakeOpenAI.seen_auth,
        proc.stdout,
        proc.stderr[-2000:],
    )
    assert (out / "metrics.json").exists()
    written = json.dumps(json.loads((out / "metrics.json").read_text("utf-8")))
    assert "127.0.0.1" in written or "openai/served" in written  # the report names the LM
    assert KEY not in proc.stdout + proc.stderr and PASSWORD not in proc.stdout + proc.stderr
    assert _scan(tmp_path) == []

    # A failing run: its error must not echo the key either (the server refuses the port).
    proc = subprocess.run(
        [sys.executable, "-m", "csc", "lm", "check", "--lm", "openai/served", "--api-base",
         f"http://user:{PASSWORD}@127.0.0.1:9/v1?api_key={KEY}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    assert KEY not in proc.stdout + proc.stderr and PASSWORD not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert _scan(tmp_path) == []


def test_redaction_covers_urls_runtime_secrets_and_key_variables(monkeypatch) -> None:
    from csc.lm import LMSpec, build_lm, redact_secrets

    monkeypatch.setenv("MY_PROVIDER_TOKEN", KEY)
    monkeypatch.setenv("SERVER_SECRET_NAME_ONLY", "x")  # short values are left alone
    build_lm(LMSpec(model="openai/x", api_base=f"http://u:{PASSWORD}@h:1/v1"))
    text = f"failed to connect to u:{PASSWORD}@h:1 with {KEY}; see https://a:b@c/?token={KEY}"
    clean = redact_secrets(text)
    assert KEY not in clean and PASSWORD not in clean
    assert "u:***@h:1" in clean and "https://a:***@c/?token=***" in clean


def test_api_base_may_name_its_password_as_an_environment_variable(monkeypatch) -> None:
    from csc.lm import LMConfigError, LMSettings, LMSpec, build_lm, literal_url_secrets

    reference = "http://user:${CSC_TEST_PW}@127.0.0.1:9/v1"
    monkeypatch.setenv("CSC_TEST_PW", PASSWORD)
    lm = build_lm(LMSpec(model="openai/served", api_base=reference))
    assert lm.kwargs["api_base"] == f"http://user:{PASSWORD}@127.0.0.1:9/v1"
    settings = LMSettings(default=LMSpec(model="openai/x", api_base=reference))
    assert PASSWORD not in settings.model_dump_json()  # what a Ray recipe carries
    assert literal_url_secrets(settings) == []
    written = LMSettings(
        default=LMSpec(model="openai/x", api_base=f"http://user:{PASSWORD}@h/v1"),
        roles={"judge": LMSpec(model="openai/y", api_base=["http://h/v1?api_key=abc123"])},
    )
    assert literal_url_secrets(written) == ["http://h/v1?api_key=***", "http://user:***@h/v1"]
    monkeypatch.delenv("CSC_TEST_PW")
    with pytest.raises(LMConfigError, match=r"refers to \$\{CSC_TEST_PW\}, which is not set"):
        build_lm(LMSpec(model="openai/served", api_base=reference))


def test_ray_executor_refuses_a_password_written_into_api_base(tmp_path) -> None:
    """The recipe every Ray worker receives holds the LM settings: a password written into
    --api-base would travel with it (and into Ray's task records)."""
    pytest.importorskip("ray")
    env = {**os.environ, "CSC_CONFIG": "", "CSC_LM": "", "NO_COLOR": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "csc", "synthesize", "--out", str(tmp_path / "o"), "-n", "1",
         "--executor", "ray", "--lm", "openai/x",
         "--api-base", f"http://user:{PASSWORD}@127.0.0.1:9/v1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "${CSC_API_PASSWORD}" in proc.stderr and "http://user:***@127.0.0.1:9/v1" in proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
