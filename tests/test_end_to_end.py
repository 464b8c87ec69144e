"""End to end on the embedded model through the real CLI: the entry points users run.

Slow (a few minutes on 2 CPU cores) and marked so; CI runs them. Each uses a private DSPy cache so
that the LM really runs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from csc.framework import Framework

pytestmark = [pytest.mark.slow, pytest.mark.local_lm]

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "samples" / "sample_en.json"


def csc(*args: str, cache: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "DSPY_CACHEDIR": str(cache), "CSC_CONFIG": "", "NO_COLOR": "1"}
    env.pop("CSC_LM", None)
    proc = subprocess.run(
        [sys.executable, "-m", "csc", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"csc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.jsonl"))
    }


def test_lm_check_answers_offline(tmp_path: Path) -> None:
    out = csc("lm", "check", "--lm", "local", "--max-tokens", "16", cache=tmp_path / "c").stdout
    assert "model:      local" in out and "tokens:     prompt" in out


def test_synthesize_small_run_then_resume_changes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = (
        "synthesize",
        "--dialogues",
        "2",
        "--concurrency",
        "2",
        "--max-utterances",
        "6",
        "--lm",
        "local",
        "--out",
        str(out),
    )
    csc(*args, cache=tmp_path / "c1")
    fw = Framework.load("csc")
    dialogues = [
        json.loads(line)
        for name in ("dialogues.jsonl", "rejected.jsonl")
        for line in (out / name).read_text().splitlines()
    ]
    failures = (
        (out / "failures.jsonl").read_text().splitlines()
        if (out / "failures.jsonl").exists()
        else []
    )
    # Two requested: both finish (kept, or rejected by the judge) and none fails.
    assert not failures, failures
    assert len(dialogues) == 2
    for d in dialogues:
        turns = d["turns"]
        assert turns[0]["speaker"] == "supporter" and turns[0]["strategy"] == "GT"
        assert all(a["speaker"] != b["speaker"] for a, b in itertools.pairwise(turns))
        assert all(t["strategy"] in fw.codes for t in turns if t["speaker"] == "supporter")
    summary = json.loads((out / "summary.json").read_text())
    run = summary["this_run"]
    assert (run["requested"], run["kept"] + run["rejected"], run["failed"]) == (2, 2, 0)
    assert summary["totals"]["kept"] + summary["totals"]["rejected"] == 2
    assert (out / "stats.json").exists() and (out / "stats_all.json").exists()
    before = digest(out)
    # Same command again: resumes, finds everything done, and changes no dialogue file.
    csc(*args, cache=tmp_path / "c2")
    assert digest(out) == before


def test_evaluate_both_contexts_recomputes_from_predictions(tmp_path: Path) -> None:
    import sacrebleu

    from csc.data.io import read_dialogues, write_dialogues

    # The first sample dialogue cut after its fourth supporter turn: 4 examples per context.
    first = next(iter(read_dialogues(SAMPLE)))
    fourth = [i for i, t in enumerate(first.turns) if t.is_supporter][3]
    data = tmp_path / "four_turns.jsonl"
    write_dialogues([first.model_copy(update={"turns": first.turns[: fourth + 1]})], data)
    out = tmp_path / "eval"
    csc(
        "evaluate",
        "--data",
        str(data),
        "--supporter",
        "zero-shot",
        "--lm",
        "local",
        "--context",
        "both",
        "--limit",
        "1",
        "--max-tokens",
        "48",
        "--no-bertscore",
        "--out",
        str(out),
        cache=tmp_path / "c",
    )
    metrics = json.loads((out / "metrics.json").read_text())
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    for key in ("reference", "generated"):
        ctx = metrics["contexts"][key]
        mine = [r for r in rows if r["context"] == key]
        assert ctx["n_examples"] == len(mine) == 4
        # The run's usage meter and the per-turn records agree (issue #17).
        assert ctx["lm_usage"]["prompt_tokens"] == ctx["prompt_tokens"] > 0
        assert ctx["lm_usage"]["calls"] + ctx["lm_usage"]["cached_calls"] == 8
        acc = 100 * sum(r["gold_strategy"] == r["predicted_strategy"] for r in mine) / len(mine)
        assert ctx["acc"] == pytest.approx(acc, abs=1e-6)
        bleu4 = sacrebleu.corpus_bleu(
            [r["generated_response"] for r in mine],
            [[r["gold_response"] for r in mine]],
            tokenize="13a",
        ).score
        assert ctx["bleu4"] == pytest.approx(bleu4, abs=0.01)
