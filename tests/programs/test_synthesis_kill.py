"""A real SIGKILL part-way through a run, then a re-run: every dialogue exactly once."""

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
    import sys, time
    sys.path[:0] = [{here!r}, {here!r} + "/.."]
    from rolecs_fakes import Script, ScriptedLM
    from csc.data.profiles import CustomerProfile
    from csc.data.topics import resolve_topics
    from csc.framework import Framework
    from csc.programs.synthesis import SynthesisConfig, SynthesisRun

    delay = float(sys.argv[2])
    class Slow(Script):
        def __call__(self, messages):
            time.sleep(delay)
            return super().__call__(messages)

    fw = Framework.load("csc")
    profiles = [CustomerProfile(id=f"p{{i}}", description=f"You are customer {{i}}.") for i in range(4)]
    topics = resolve_topics(["product,account"])
    config = SynthesisConfig.build(framework=fw, language="en", topics=topics, profiles=profiles,
        seed=0, max_utterances=8, temperature=0.7, filter=True, lms={{"default": "scripted"}})
    lm = ScriptedLM(Slow())
    roles = ("planner", "supporter_assistant", "supporter", "customer_assistant", "customer", "judge")
    run = SynthesisRun(sys.argv[1], config, fw, profiles, lms=dict.fromkeys(roles, lm))
    run.run(8, concurrency=2, progress=False)
    """
)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.slow
def test_sigkill_then_rerun_gives_every_dialogue_once(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(here=str(HERE)))
    out = tmp_path / "out"
    kept = out / "dialogues.jsonl"
    proc = subprocess.Popen([sys.executable, str(script), str(out), "0.02"], start_new_session=True)
    try:
        deadline = time.time() + 60
        while len(lines(kept)) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    before = [json.loads(x)["id"] for x in lines(kept) if x.strip().endswith("}")]
    assert 2 <= len(before) < 8

    subprocess.run([sys.executable, str(script), str(out), "0"], check=True, timeout=120)
    after = [json.loads(x)["id"] for x in lines(kept)]
    assert len(after) == len(set(after)) == 8
    assert set(before) <= set(after)
