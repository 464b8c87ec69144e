"""``csc synthesize --executor ray`` on a local Ray cluster against the fake OpenAI server: a
worker killed mid-run, then a re-run, and every dialogue is accounted for exactly once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_without_ray_the_command_says_how_to_install_it(tmp_path):
    # A `ray` that cannot be imported stands for Ray not being installed.
    (tmp_path / "ray.py").write_text("raise ImportError('no ray here')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    command = [sys.executable, "-m", "csc", "synthesize", "--out", str(tmp_path / "o")]
    proc = subprocess.run(
        [*command, "--executor", "ray", "--lm", "openai/x", "--api-base", "http://127.0.0.1:9/v1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1
    assert 'pip install "dspy-csc[ray]"' in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_a_killed_ray_worker_then_a_rerun_gives_every_dialogue_once(tmp_path):
    pytest.importorskip("ray")
    sys.path.insert(0, str(BENCHMARKS))
    from synthesis_scale import start_server

    server, port = start_server(latency=0.02, jitter=0.0, error_rate=0.0, turns=3)
    out = tmp_path / "run"
    # The local cluster's files go to a folder of this test (a short path: Ray's sockets
    # live there, and a Unix socket path holds at most 107 bytes).
    ray_tmp = tempfile.mkdtemp(prefix="csc-ray-", dir="/tmp")
    env = {
        **os.environ,
        "OPENAI_API_KEY": "EMPTY",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "RAY_TMPDIR": ray_tmp,
    }
    command = [
        sys.executable, "-m", "csc", "synthesize", "--out", str(out), "-n", "12", "-c", "4",
        "--lm", "openai/fake", "--api-base", f"http://127.0.0.1:{port}/v1", "--show", "0",
        "--executor", "ray",
    ]  # fmt: skip
    try:
        # Shard 0's worker exits after 2 dialogues, on every retry: that shard stops for good.
        first = subprocess.run(
            command,
            env={**env, "CSC_RAY_FAULT_EXIT_AFTER": "2"},
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
        assert "re-run the same command" in first.stderr
        done_first = ids(out / "dialogues.jsonl") + ids(out / "rejected.jsonl")
        assert 2 <= len(done_first) < 12
        summary = json.loads((out / "summary.json").read_text())
        assert summary["totals"]["missing"] == 12 - len(done_first)

        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
        assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    finally:
        server.stdin.close()
        server.wait(timeout=30)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    done = ids(out / "dialogues.jsonl") + ids(out / "rejected.jsonl")
    assert len(done) == len(set(done)) == 12
    assert set(done_first) <= set(done)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["totals"]["missing"] == 0 and summary["totals"]["invocations"] == 2
    this = summary["this_run"]
    assert this["already_done"] == len(done_first)
    assert this["lm_usage"]["calls"] > 0  # usage comes back with the records from the workers
