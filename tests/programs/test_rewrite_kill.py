"""A real SIGKILL part-way through a rewrite run, then a re-run: every input dialogue is
accounted for exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path[:0] = [{here!r}, {here!r} + "/.."]
    from rewrite_fakes import FIXTURES, RewriteScript, lm
    from csc.data.io import read_dialogues
    from csc.framework import Framework
    from csc.programs.rewrite import RewritePipeline
    from csc.programs.rewrite_run import RewriteConfig, RewriteRun
    from csc.programs.rule_filter import RuleFilterConfig

    fw = Framework.load("csc")
    roles = ("prefilter", "rewriter", "judge", "labeler")
    raw = list(read_dialogues(FIXTURES / "raw_en.json", mapping=FIXTURES / "raw_en.mapping.yaml",
                              allow_unlabelled=True))
    # Four copies of the file: 20 dialogues, 12 of which reach the LMs.
    dialogues = [d.model_copy(update={{"id": f"{{d.id}}-{{i}}"}}) for i in range(4) for d in raw]
    config = RewriteConfig(data="raw_en.json x4", framework="csc",
        framework_digest=RewriteConfig.framework_digest_of(fw), language="en",
        rules=RuleFilterConfig(), redact=True, prefilter=True, judge=True, utilization=True,
        min_utterances=10, max_utterances=50, temperature=0.7, seed=0,
        lms=dict.fromkeys(roles, "scripted"))
    fake = lm(RewriteScript(turns=12, delay=float(sys.argv[2])))
    run = RewriteRun(sys.argv[1], config, RewritePipeline(fw, "en", lms=dict.fromkeys(roles, fake)))
    summary = run.run(dialogues, concurrency=2, progress=False)
    print(summary["counts"])
    """
)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.slow
def test_sigkill_then_rerun_accounts_for_every_dialogue_once(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(here=str(HERE)))
    out = tmp_path / "out"
    kept = out / "dialogues.jsonl"
    proc = subprocess.Popen([sys.executable, str(script), str(out), "0.05"], start_new_session=True)
    try:
        deadline = time.time() + 90
        while len(lines(kept)) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    first_kept = len(lines(kept))
    assert 2 <= first_kept < 12

    done = subprocess.run(
        [sys.executable, str(script), str(out), "0"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    c = summary["counts"]
    assert c["in"] == 20 and c["failed"] == 0
    assert c["in"] == c["dropped"] + c["rejected"] + c["kept"] + c["failed"]
    keys = [json.loads(x)["metadata"]["key"] for x in lines(kept)] + [
        json.loads(x)["key"] for x in lines(out / "dropped.jsonl")
    ]
    keys += [json.loads(x)["metadata"]["key"] for x in lines(out / "rejected.jsonl")]
    assert len(keys) == len(set(keys)) == 20
    assert summary["this_run"]["already_done"] >= first_kept
