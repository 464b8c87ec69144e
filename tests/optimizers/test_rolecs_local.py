"""`csc optimize --program rolecs` then `csc synthesize --program` on the embedded model, through
the real CLI (slow: a few minutes on 2 CPU cores; CI runs it). A private DSPy cache makes the LM
really run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from csc.eval.splits import data_sha256

pytestmark = [pytest.mark.slow, pytest.mark.local_lm]

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "samples" / "sample_en.json"


def csc(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DSPY_CACHEDIR": str(cache), "CSC_CONFIG": "", "NO_COLOR": "1"}
    env.pop("CSC_LM", None)
    proc = subprocess.run(
        [sys.executable, "-m", "csc", *args], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, f"csc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_optimized_rolecs_agents_synthesize_offline(tmp_path: Path) -> None:
    cache, program = tmp_path / "cache", tmp_path / "rolecs.json"
    out = csc(
        "optimize",
        "--program",
        "rolecs",
        "--train",
        str(SAMPLE),
        "--lm",
        "local",
        "--max-train",
        "2",
        "--max-dev",
        "1",
        "--max-tokens",
        "48",
        "--concurrency",
        "2",
        "--out",
        str(program),
        cache=cache,
    ).stdout
    assert "supporter_assistant dev acc" in out and "supporter dev adherence" in out
    meta = json.loads(program.with_name("rolecs.meta.json").read_text())
    assert meta["kind"] == "rolecs" and meta["lm_calls"] > 0
    assert all(agent["lm_usage"]["calls"] > 0 for agent in meta["agents"].values())
    run = tmp_path / "syn"
    csc(
        "synthesize",
        "--program",
        str(program),
        "--lm",
        "local",
        "-n",
        "1",
        "--max-utterances",
        "4",
        "--no-filter",
        "--show",
        "0",
        "--out",
        str(run),
        cache=cache,
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["program"] == {"path": str(program), "sha256": data_sha256(program)}
    dialogue = json.loads((run / "dialogues.jsonl").read_text().splitlines()[0])
    assert dialogue["turns"][0]["strategy"] == "GT" and dialogue["turns"][-1]["strategy"] == "AC"
