"""``csc rewrite --lm local`` end to end on the raw zh and en fixtures (embedded SmolLM2): the
output validates, every kept supporter turn has a strategy, speakers alternate, counts add up,
and no PII value of the raw input appears in any output file."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "programs"))
from rewrite_fakes import FIXTURES, PII_VALUES

pytestmark = [pytest.mark.slow, pytest.mark.local_lm]


def csc(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DSPY_CACHEDIR": str(cache), "CSC_CONFIG": "", "NO_COLOR": "1"}
    env.pop("CSC_LM", None)
    proc = subprocess.run(
        [sys.executable, "-m", "csc", *args], capture_output=True, text=True, env=env, timeout=1500
    )
    assert proc.returncode == 0, f"csc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.parametrize(
    ("lang", "extra"),
    [
        ("en", ["--no-prefilter", "--no-judge"]),  # the labeler runs: utilization before/after
        ("zh", ["--no-utilization", "--to", "dianjin"]),  # pre-filter and judge run
    ],
)
def test_rewrite_raw_fixture_with_the_embedded_model(tmp_path, lang, extra):
    out = tmp_path / "run"
    args = [
        "rewrite",
        "--data",
        str(FIXTURES / f"raw_{lang}.json"),
        "--mapping",
        str(FIXTURES / f"raw_{lang}.mapping.yaml"),
        "--out",
        str(out),
        "--lm",
        "local",
        "--limit",
        "3",
        "--concurrency",
        "2",
        "--min-utterances",
        "2",
        "--no-progress",
        *extra,
    ]
    first = csc(*args, cache=tmp_path / "cache")
    summary = json.loads((out / "summary.json").read_text())
    c = summary["counts"]
    assert c["in"] == 3
    assert c["in"] == c["dropped"] + c["rejected"] + c["kept"] + c["failed"], first.stdout
    assert c["rewritten"] + c["failed"] >= 1 or c["dropped_by_prefilter"] >= 1
    assert summary["tokens"], "LM calls were counted"
    for path in out.iterdir():
        text = path.read_text(encoding="utf-8")
        for value in PII_VALUES:
            assert value not in text, (path.name, value)
    kept = [json.loads(x) for x in (out / "dialogues.jsonl").read_text().splitlines()]
    for d in kept:
        speakers = [t["speaker"] for t in d["turns"]]
        assert all(a != b for a, b in itertools.pairwise(speakers))
        assert all(t["strategy"] for t in d["turns"] if t["speaker"] == "supporter")
    if kept:
        csc("data", "validate", str(out / "dialogues.jsonl"), cache=tmp_path / "cache")
    if "dianjin" in extra:
        assert len(json.loads((out / "dialogues.dianjin.json").read_text())) == len(kept)
    # A re-run resumes: nothing is redone except failures, nothing is duplicated.
    csc(*args, cache=tmp_path / "cache")
    again = json.loads((out / "summary.json").read_text())
    assert again["this_run"]["already_done"] == 3 - c["failed"]
    assert again["counts"]["kept"] >= c["kept"]
